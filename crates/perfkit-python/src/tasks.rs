//! The hot loop of a perfkit.Parallel worker, and the packed form of plain values.
//!
//! Owns running one batch's tasks (calling each, noting in the shared status
//! word which one runs so that the parent can name it if the process dies)
//! and packing lists of plain ints or floats into raw 8-byte values for the
//! pipe, both ways. Batching, framing and error reports stay in Python
//! (`_worker.py`, `parallel.py`); this module only makes the per-task work
//! cheap: 100,000 tiny tasks must cost little more than 100,000 calls.

use std::sync::atomic::{AtomicI64, Ordering};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::pool_room;

/// Batches of at most this many tasks make allocator room before each task,
/// larger ones before their first (see `pool_room`).
const SMALL_BATCH: usize = 4;

// Batch modes, as in perfkit/_pool_common.py.
pub(crate) const ARGS_ONLY: u8 = 0;
pub(crate) const FULL: u8 = 1;
pub(crate) const SINGLE: u8 = 2;
pub(crate) const SINGLE_PACKED: u8 = 3;

/// Runs a batch's tasks in order: `mode` SINGLE gives `items` as `[x, …]`
/// for `functions[0]`, ARGS_ONLY as `[args, …]`, FULL as
/// `[(function index, args, kwargs), …]`. Before each task its index
/// (`first` + position) goes into `status[0]` (a worker's shared status
/// word; None in a thread of the caller's process). Returns `(results, None,
/// None)`, or at the first task that raises `(results so far, its index, the
/// exception)` (with its traceback; BaseException included, as the worker
/// must report a task's SystemExit rather than die of it).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn run_tasks<'py>(
    py: Python<'py>,
    functions: &Bound<'py, PyTuple>,
    mode: u8,
    items: &Bound<'py, PyList>,
    status: Option<PyBuffer<i64>>,
    first: i64,
) -> PyResult<(Bound<'py, PyList>, Option<i64>, Option<Py<PyAny>>)> {
    let unshared = AtomicI64::new(0);
    let status_word = match &status {
        Some(status) => status_word(status)?,
        None => &unshared,
    };
    let results = PyList::empty(py);
    let one_function = match mode {
        SINGLE | ARGS_ONLY => Some(functions.get_item(0)?),
        FULL => None,
        _ => {
            return Err(PyValueError::new_err(format!(
                "run_tasks: unknown mode {mode}"
            )))
        }
    };
    // Items are read by index each time: a task may (perversely) change the list.
    let mut position = 0usize;
    while position < items.len() {
        let index = first + position as i64;
        status_word.store(index, Ordering::Relaxed);
        let item = items.get_item(position)?;
        // Tasks of a batch this small run long enough (batches hold ~2 ms
        // of work) for the room to matter more than its ~0.4 µs.
        if position == 0 || items.len() <= SMALL_BATCH {
            pool_room::make_room(py);
        }
        let outcome = match mode {
            SINGLE => call_one(one_function.as_ref().unwrap(), &item),
            ARGS_ONLY => {
                let args = item.cast::<PyTuple>()?;
                one_function.as_ref().unwrap().call1(args)
            }
            _ => {
                let task = item.cast::<PyTuple>()?;
                let slot: usize = task.get_item(0)?.extract()?;
                let function = functions.get_item(slot)?;
                let args = task.get_item(1)?;
                let args = args.cast::<PyTuple>()?;
                let kwargs = task.get_item(2)?;
                let kwargs = kwargs.cast::<PyDict>()?;
                if kwargs.is_empty() {
                    function.call1(args)
                } else {
                    function.call(args, Some(kwargs))
                }
            }
        };
        match outcome {
            Ok(result) => results.append(result)?,
            Err(err) => return Ok((results, Some(index), Some(err.into_value(py).into_any()))),
        }
        position += 1;
    }
    Ok((results, None, None))
}

/// `run_tasks` for a SINGLE_PACKED batch: `functions[0]` on each packed
/// value. Each value is made, passed and freed in turn, and the results are
/// packed as they come while they are plain values of one kind: returns
/// `((tag, bytes), None, None)`, or `(results, None, None)` as a list once
/// one is not, or `(None, index, exception)` at the first task that raises.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn run_packed<'py>(
    py: Python<'py>,
    function: &Bound<'py, PyAny>,
    tag: &str,
    data: &[u8],
    status: PyBuffer<i64>,
    first: i64,
) -> PyResult<(Option<Bound<'py, PyAny>>, Option<i64>, Option<Py<PyAny>>)> {
    let status_word = status_word(&status)?;
    let tag = Tag::parse(tag)?;
    if !data.len().is_multiple_of(8) {
        return Err(PyValueError::new_err(
            "run_packed: length is not a multiple of 8",
        ));
    }
    let mut packer = Some(Packer::default());
    let mut results: Vec<Bound<'py, PyAny>> = Vec::new();
    for (position, word) in data.chunks_exact(8).enumerate() {
        let index = first + position as i64;
        status_word.store(index, Ordering::Relaxed);
        if position == 0 {
            pool_room::make_room(py);
        }
        let value = tag.value(py, u64::from_ne_bytes(word.try_into().unwrap()))?;
        let result = match call_one(function, &value) {
            Ok(result) => result,
            Err(err) => return Ok((None, Some(index), Some(err.into_value(py).into_any()))),
        };
        if let Some(p) = packer.as_mut() {
            if p.push(&result) {
                continue;
            }
            results = p.values(py)?;
            packer = None;
        }
        results.push(result);
    }
    match packer {
        Some(p) => match p.into_bytes(py)? {
            Some(packed) => Ok((Some(packed.into_pyobject(py)?.into_any()), None, None)),
            None => Ok((Some(PyList::empty(py).into_any()), None, None)),
        },
        None => Ok((Some(PyList::new(py, results)?.into_any()), None, None)),
    }
}

/// The shared status word in `status` (a writable buffer of at least one int64).
fn status_word(status: &PyBuffer<i64>) -> PyResult<&AtomicI64> {
    if status.readonly() || status.item_count() < 1 {
        return Err(PyValueError::new_err(
            "the status must be a writable int64 buffer",
        ));
    }
    // SAFETY: the buffer is writable and holds at least one i64, aligned
    // (PyBuffer checks alignment), alive while `status` is borrowed. The
    // parent reads it from another process, hence an atomic.
    Ok(unsafe { &*(status.buf_ptr() as *const AtomicI64) })
}

/// `function(x)` through vectorcall (no argument tuple).
fn call_one<'py>(
    function: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: both pointers are live references held by the caller; the
    // result is a new reference or NULL with an exception set.
    unsafe {
        let raw = ffi::PyObject_CallOneArg(function.as_ptr(), x.as_ptr());
        Bound::from_owned_ptr_or_err(function.py(), raw)
    }
}

/// The packed form of a list whose items are all exact ints within 64 bits
/// (`("q", bytes)`) or all exact floats (`("d", bytes)`), native byte order;
/// None for anything else (bool, int subclasses, mixed or empty lists), which
/// then travels pickled. Packing loses nothing: an exact int or float is its value.
#[pyfunction]
fn pack_values<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyList>,
) -> PyResult<Option<(&'static str, Bound<'py, PyBytes>)>> {
    let mut packer = Packer::default();
    for v in values.iter() {
        if !packer.push(&v) {
            return Ok(None);
        }
    }
    packer.into_bytes(py)
}

/// The list `pack_values` packed.
#[pyfunction]
fn unpack_values<'py>(py: Python<'py>, tag: &str, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
    if !data.len().is_multiple_of(8) {
        return Err(PyValueError::new_err(
            "unpack_values: length is not a multiple of 8",
        ));
    }
    let tag = Tag::parse(tag)?;
    let words = data
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()));
    PyList::new(
        py,
        words
            .map(|w| tag.value(py, w))
            .collect::<PyResult<Vec<_>>>()?,
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum Tag {
    #[default]
    Empty,
    Int,
    Float,
}

impl Tag {
    fn parse(tag: &str) -> PyResult<Tag> {
        match tag {
            "q" => Ok(Tag::Int),
            "d" => Ok(Tag::Float),
            _ => Err(PyValueError::new_err(format!(
                "unknown packed-values tag {tag:?}"
            ))),
        }
    }

    fn value<'py>(self, py: Python<'py>, word: u64) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Tag::Float => f64::from_bits(word).into_pyobject(py)?.into_any(),
            _ => (word as i64).into_pyobject(py)?.into_any(),
        })
    }
}

/// Plain values packed as they come (the form `pack_values` makes), so
/// that the objects can be freed at once.
#[derive(Default)]
pub(crate) struct Packer {
    tag: Tag,
    words: Vec<u64>,
}

impl Packer {
    /// Adds `v` if it fits (an exact int within 64 bits, or an exact float,
    /// the same kind as those before); false (and nothing added) if not.
    pub(crate) fn push(&mut self, v: &Bound<'_, PyAny>) -> bool {
        // SAFETY: a Bound is a live object.
        unsafe { self.push_ptr(v.as_ptr()) }
    }

    /// `push` for a borrowed pointer.
    ///
    /// # Safety
    /// `p` must point to a live object, with the GIL held.
    pub(crate) unsafe fn push_ptr(&mut self, p: *mut ffi::PyObject) -> bool {
        // SAFETY: exact-type checks, then reads of an exact int (overflow
        // reported in `overflow`) or of an exact float.
        unsafe {
            if ffi::PyLong_CheckExact(p) != 0 && self.tag != Tag::Float {
                let mut overflow = 0;
                let x = ffi::PyLong_AsLongLongAndOverflow(p, &mut overflow);
                if overflow != 0 {
                    return false;
                }
                self.tag = Tag::Int;
                self.words.push(x as u64);
            } else if ffi::PyFloat_CheckExact(p) != 0 && self.tag != Tag::Int {
                self.tag = Tag::Float;
                self.words.push(ffi::PyFloat_AS_DOUBLE(p).to_bits());
            } else {
                return false;
            }
        }
        true
    }

    /// The values as objects again.
    pub(crate) fn values<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        self.words.iter().map(|&w| self.tag.value(py, w)).collect()
    }

    /// `(tag, bytes)`, or None if nothing was packed.
    pub(crate) fn into_bytes<'py>(
        self,
        py: Python<'py>,
    ) -> PyResult<Option<(&'static str, Bound<'py, PyBytes>)>> {
        let tag = match self.tag {
            Tag::Empty => return Ok(None),
            Tag::Int => "q",
            Tag::Float => "d",
        };
        let bytes = PyBytes::new_with(py, self.words.len() * 8, |out| {
            for (chunk, w) in out.chunks_exact_mut(8).zip(&self.words) {
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            Ok(())
        })?;
        Ok(Some((tag, bytes)))
    }
}

/// Whether `needle` occurs in `haystack`. A batch's pickle is searched for
/// a `__main__` global after it is made, and holds its small arrays' bytes
/// in band: hundreds of KiB per batch of DataFrames, which Python's own
/// search scans at ~4 GB/s (a tenth of the parent's time in a groupby call)
/// and memchr's vectorized one several times faster.
#[pyfunction]
fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(contains_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(run_tasks, m)?)?;
    m.add_function(wrap_pyfunction!(run_packed, m)?)?;
    m.add_function(wrap_pyfunction!(pack_values, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_values, m)?)?;
    Ok(())
}
