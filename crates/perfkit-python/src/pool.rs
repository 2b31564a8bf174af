//! Bindings to perfkit-pool: `perfkit._native.WorkerPool`, driven by
//! `perfkit.parallel`. Translates bytes, buffers and events; every wait and
//! every copy into shared memory runs with the GIL released.

use std::os::fd::IntoRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use perfkit_pool::remote;
use perfkit_pool::{shm, Event, Job, Pool, ReplyBuffers, WorkerCommand};

use crate::tasks::{Packer, ARGS_ONLY, SINGLE, SINGLE_PACKED};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

/// How often a wait wakes up to let Python run signal handlers (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(20);

/// A raw view of a Python buffer, handed to a GIL-free closure.
struct RawSlice(*const u8, usize);
// SAFETY: the PyBuffer it comes from is held (and the exporter kept alive) by
// the caller for the whole closure; the bytes are only read.
unsafe impl Send for RawSlice {}

#[pyclass(module = "perfkit._native", frozen, weakref)]
pub struct WorkerPool {
    /// Cloned out of the lock before any wait: a thread waiting for events
    /// must not hold it while it takes the GIL back (another thread, holding
    /// the GIL, may be waiting for the lock).
    inner: Mutex<Option<Arc<Pool>>>,
    function: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    size: usize,
    /// The process that started the pool. In a child forked from it the
    /// workers and threads are the parent's: nothing here may touch them
    /// (stop, kill, or wait for threads that do not exist in the child).
    owner: u32,
}

impl WorkerPool {
    fn pool(&self) -> PyResult<Arc<Pool>> {
        if std::process::id() != self.owner {
            return Err(PyRuntimeError::new_err(format!(
                "this worker pool belongs to process {} (this is a child forked from it)",
                self.owner
            )));
        }
        match self.inner.lock().unwrap().as_ref() {
            Some(p) => Ok(p.clone()),
            None => Err(PyRuntimeError::new_err("this worker pool was shut down")),
        }
    }

    /// The pool, taken out to be stopped; None if it was, or in a forked
    /// child (where it is left as it is: see `owner`).
    fn take_own(&self) -> Option<Arc<Pool>> {
        // (Asked before the lock: a thread of the parent may have held it at the fork.)
        if std::process::id() != self.owner {
            return None;
        }
        self.inner.lock().unwrap().take()
    }

    fn with_pool<R>(&self, f: impl FnOnce(&Pool) -> R) -> PyResult<R> {
        let pool = self.pool()?;
        Ok(f(&pool))
    }
}

#[pymethods]
impl WorkerPool {
    /// Starts `n_workers` processes running `program args…` with `env` added.
    /// `copy_results`: large result buffers are copied straight out of the
    /// workers where the kernel allows it, else they come in segments.
    #[new]
    #[pyo3(signature = (n_workers, program, args, env, copy_results=true))]
    fn new(
        py: Python<'_>,
        n_workers: usize,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        copy_results: bool,
    ) -> PyResult<Self> {
        let command = WorkerCommand {
            program: program.into_os_string(),
            args: args.into_iter().map(Into::into).collect(),
            env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            copy_results,
        };
        let pool = py.detach(|| Pool::start(n_workers, command)).map_err(|e| {
            PyOSError::new_err(format!("could not start {n_workers} worker processes: {e}"))
        })?;
        let size = pool.size();
        Ok(WorkerPool {
            inner: Mutex::new(Some(Arc::new(pool))),
            function: Mutex::new(None),
            size,
            owner: std::process::id(),
        })
    }

    #[getter]
    fn size(&self) -> usize {
        self.size
    }

    #[getter]
    fn alive(&self) -> bool {
        std::process::id() == self.owner && self.inner.lock().unwrap().is_some()
    }

    /// The segment-name prefix of this pool's shared memory (`perfkit-<pid>-`).
    #[getter]
    fn segment_prefix(&self) -> String {
        shm::pool_prefix(std::process::id())
    }

    fn pids(&self) -> PyResult<Vec<i32>> {
        self.with_pool(|p| p.pids())
    }

    /// Sets the pickled function(s) of call `call` (sent to each worker once)
    /// and drops the shared-memory segments the previous call left unused.
    fn begin_call(&self, call: u64, function: &[u8]) -> PyResult<()> {
        *self.function.lock().unwrap() = Some((call, Arc::new(function.to_vec())));
        self.with_pool(|p| p.begin_call())
    }

    /// Queues one batch. `buffers` (out-of-band pickle buffers) are copied
    /// into one shared-memory segment, GIL released; or, with `remote`, only
    /// their addresses are sent and the worker copies them out of this process
    /// (the caller keeps them alive and unchanged until the reply).
    fn submit(
        &self,
        py: Python<'_>,
        call: u64,
        batch: u64,
        payload: &[u8],
        buffers: Vec<PyBuffer<u8>>,
        remote: bool,
    ) -> PyResult<()> {
        let function = match self.function.lock().unwrap().as_ref() {
            Some((c, f)) if *c == call => f.clone(),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "submit: call {call} was not begun"
                )))
            }
        };
        let mut slices = Vec::with_capacity(buffers.len());
        let mut total = 0usize;
        for b in &buffers {
            if !b.is_c_contiguous() {
                return Err(PyValueError::new_err(
                    "submit: out-of-band buffers must be contiguous",
                ));
            }
            total = total.div_ceil(shm::ALIGN as usize) * shm::ALIGN as usize + b.len_bytes();
            slices.push(RawSlice(b.buf_ptr() as *const u8, b.len_bytes()));
        }
        let payload = payload.to_vec();
        let mut remote_spans = Vec::new();
        let segment = if remote {
            remote_spans = slices.iter().map(|s| (s.0 as u64, s.1 as u64)).collect();
            None
        } else if slices.is_empty() {
            None
        } else {
            let mut seg = self.with_pool(|p| p.segment(total))?.map_err(|e| {
                PyOSError::new_err(format!(
                    "could not allocate {total} bytes of shared memory: {e}"
                ))
            })?;
            let spans = py
                .detach(move || {
                    // SAFETY: see RawSlice; `buffers` outlives this closure.
                    let views: Vec<&[u8]> = slices
                        .iter()
                        .map(|s| unsafe { std::slice::from_raw_parts(s.0, s.1) })
                        .collect();
                    seg.write(&views).map(|spans| (seg, spans))
                })
                .map_err(|e| PyOSError::new_err(format!("could not write shared memory: {e}")))?;
            Some(spans)
        };
        drop(buffers);
        let job = Job {
            call,
            batch,
            function,
            payload,
            segment,
            remote: remote_spans,
        };
        self.with_pool(|p| p.submit(job))
    }

    /// Waits up to `timeout` seconds (None: forever) for the next event,
    /// running signal handlers meanwhile (so Ctrl-C raises here). Returns None
    /// on timeout, else a tuple:
    /// ("reply", call, batch, is_error, payload, segment, spans, pid), the
    /// segment a descriptor to map, a list of `CopiedBuffer`s (one per
    /// span), or None
    /// ("died", call, batch, pid, reason, task)
    /// ("failed", call, batch, message): this process could not run the batch
    #[pyo3(signature = (timeout=None))]
    fn next_event<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        // (A timeout too long for an Instant is none.)
        let deadline = timeout
            .and_then(|t| Duration::try_from_secs_f64(t.max(0.0)).ok())
            .and_then(|d| Instant::now().checked_add(d));
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(SIGNAL_POLL),
                None => SIGNAL_POLL,
            };
            let pool = self.pool()?;
            let event = py.detach(|| pool.next_event(slice));
            if let Some(ev) = event {
                return Ok(Some(event_tuple(py, ev)?));
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// Drops the queued batches of `call`; returns how many.
    fn cancel(&self, call: u64) -> PyResult<usize> {
        self.with_pool(|p| p.cancel(call))
    }

    /// Kills the workers running batches of `call`; returns [(batch, pid)].
    fn kill_busy(&self, call: u64) -> PyResult<Vec<(u64, i32)>> {
        self.with_pool(|p| p.kill_busy(call))
    }

    /// The batches of `call` that workers are running: [(batch, seconds running)].
    fn running(&self, call: u64) -> PyResult<Vec<(u64, f64)>> {
        self.with_pool(|p| p.running(call))
    }

    fn pending(&self) -> PyResult<usize> {
        self.with_pool(|p| p.pending())
    }

    /// Kills every worker now and removes the pool's shared memory.
    fn terminate(&self, py: Python<'_>) {
        if let Some(p) = self.take_own() {
            py.detach(|| p.terminate());
        }
    }

    /// Lets the workers finish and exit (killed after a short grace period).
    fn close(&self, py: Python<'_>) {
        if let Some(p) = self.take_own() {
            py.detach(|| p.close());
        }
    }

    /// At the end of the process: idle workers exit on end of file (their
    /// output flushed, their atexit handlers run); busy ones are killed.
    fn close_at_exit(&self, py: Python<'_>) {
        if let Some(p) = self.take_own() {
            py.detach(|| p.close_idle_kill_busy());
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // (Dropping the pool stops it: not in a forked child, see `owner`.
        // `get_mut`: no lock, which a thread of the parent may have held.)
        if std::process::id() != self.owner {
            let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
            std::mem::forget(inner.take());
        }
    }
}

fn event_tuple<'py>(py: Python<'py>, ev: Event) -> PyResult<Bound<'py, PyTuple>> {
    match ev {
        Event::Reply(r) => {
            let (segment, spans): (Option<Py<PyAny>>, _) = match r.segment {
                Some((ReplyBuffers::Segment(file), spans)) => (
                    Some(file.into_raw_fd().into_pyobject(py)?.into_any().unbind()),
                    spans,
                ),
                Some((ReplyBuffers::Copied(buffers), spans)) => {
                    let buffers = buffers
                        .into_iter()
                        .map(|buffer| Py::new(py, CopiedBuffer { buffer }))
                        .collect::<PyResult<Vec<_>>>()?;
                    (Some(PyList::new(py, buffers)?.into_any().unbind()), spans)
                }
                None => (None, Vec::new()),
            };
            (
                "reply",
                r.call,
                r.batch,
                r.is_error,
                PyBytes::new(py, &r.payload),
                segment,
                spans,
                r.pid,
            )
                .into_pyobject(py)
        }
        Event::WorkerDied {
            call,
            batch,
            pid,
            reason,
            task,
        } => ("died", call, batch, pid, reason, task).into_pyobject(py),
        Event::Failed {
            call,
            batch,
            message,
        } => ("failed", call, batch, message).into_pyobject(py),
    }
}

/// Draws up to `n` tasks for one batch (`head`, a task the caller drew
/// already, then the rest from `iterator`), encoding them on the way when
/// every one is `(function, args, {})` with this very function: returns
/// `(None, 3, (tag, bytes))` when every args tuple holds one plain int (or
/// every one a plain float; see `tasks::Packer`), `(None, 2, [x, …])` when
/// every args tuple holds one value, `(None, 0, [args, …])` otherwise, or
/// `(tasks, None, None)` (the tasks as drawn) when the batch needs the
/// general encoding. An empty iterator gives `([], None, None)`. With
/// `pack=False` (tasks run in this process) single values stay a list. No
/// list of the caller's task tuples is made: each is freed as soon as its
/// arguments are taken.
#[pyfunction]
#[pyo3(signature = (iterator, n, function, head=None, pack=true))]
#[allow(clippy::type_complexity)]
fn draw_uniform_batch<'py>(
    py: Python<'py>,
    iterator: &Bound<'py, PyAny>,
    n: usize,
    function: &Bound<'py, PyAny>,
    head: Option<Bound<'py, PyAny>>,
    pack: bool,
) -> PyResult<(
    Option<Bound<'py, PyList>>,
    Option<u8>,
    Option<Bound<'py, PyAny>>,
)> {
    let mut iterator = iterator.cast::<pyo3::types::PyIterator>()?.clone();
    // Plain single values are packed as drawn, and their task tuples and
    // objects freed at once: a batch of live objects would cost more to
    // allocate than the caller's generator costs to run.
    let mut drawn_args = if pack {
        DrawnArgs::Packed(Packer::default())
    } else {
        DrawnArgs::Singles(Vec::new())
    };
    let mut drawn = 0usize;
    let mut head = head;
    // The first task that does not fit (then every task is kept as drawn).
    let mut misfit: Option<Bound<'py, PyAny>> = None;
    while drawn < n {
        let item = match head.take() {
            Some(task) => task,
            None => {
                // SAFETY: a live iterator; a new reference, or NULL at its end or on error.
                let raw = unsafe { ffi::PyIter_Next(iterator.as_ptr()) };
                if raw.is_null() {
                    match PyErr::take(py) {
                        Some(err) => return Err(err),
                        None => break,
                    }
                }
                // SAFETY: `raw` is a new reference (checked non-NULL).
                unsafe { Bound::from_owned_ptr(py, raw) }
            }
        };
        drawn += 1;
        if let DrawnArgs::Packed(packer) = &mut drawn_args {
            // The usual task, checked and packed without a reference count
            // or bounds check (this loop runs once per task of the caller's).
            // SAFETY: `item` is alive while its borrowed parts are read.
            if unsafe { packed_single(item.as_ptr(), function.as_ptr(), packer) } {
                continue;
            }
        }
        let Some(args) = uniform_args(&item, function)? else {
            misfit = Some(item);
            break;
        };
        drawn_args = drawn_args.with(py, args)?;
    }
    if let Some(first_misfit) = misfit {
        // Rebuild the tasks drawn so far (same function, same args, an empty
        // dict each) and take the rest of the batch as it comes.
        let tasks = PyList::empty(py);
        for args in drawn_args.into_tuples(py)? {
            tasks.append((function, args, PyDict::new(py)))?;
        }
        tasks.append(first_misfit)?;
        while drawn < n {
            let Some(item) = iterator.next() else { break };
            tasks.append(item?)?;
            drawn += 1;
        }
        return Ok((Some(tasks), None, None));
    }
    if drawn == 0 {
        return Ok((Some(PyList::empty(py)), None, None));
    }
    match drawn_args {
        // Not empty: every task drawn went into the packer.
        DrawnArgs::Packed(packer) => match packer.into_bytes(py)? {
            Some(packed) => Ok((
                None,
                Some(SINGLE_PACKED),
                Some(packed.into_pyobject(py)?.into_any()),
            )),
            None => Ok((Some(PyList::empty(py)), None, None)),
        },
        DrawnArgs::Singles(values) => Ok((
            None,
            Some(SINGLE),
            Some(PyList::new(py, values)?.into_any()),
        )),
        DrawnArgs::Tuples(tuples) => Ok((
            None,
            Some(ARGS_ONLY),
            Some(PyList::new(py, tuples)?.into_any()),
        )),
    }
}

/// The args of a batch's tasks so far, in the most compact form that holds them all.
enum DrawnArgs<'py> {
    /// One plain int (or float) each.
    Packed(Packer),
    /// One value each.
    Singles(Vec<Bound<'py, PyAny>>),
    /// Any args tuples.
    Tuples(Vec<Bound<'py, PyTuple>>),
}

impl<'py> DrawnArgs<'py> {
    /// These args and one more task's.
    fn with(self, py: Python<'py>, args: Bound<'py, PyTuple>) -> PyResult<Self> {
        if args.len() != 1 {
            let mut tuples = self.into_tuples(py)?;
            tuples.push(args);
            return Ok(DrawnArgs::Tuples(tuples));
        }
        Ok(match self {
            DrawnArgs::Packed(mut packer) => {
                let value = args.get_borrowed_item(0)?;
                if packer.push(&value) {
                    DrawnArgs::Packed(packer)
                } else {
                    let mut values = packer.values(py)?;
                    values.push(value.to_owned());
                    DrawnArgs::Singles(values)
                }
            }
            DrawnArgs::Singles(mut values) => {
                values.push(args.get_item(0)?);
                DrawnArgs::Singles(values)
            }
            DrawnArgs::Tuples(mut tuples) => {
                tuples.push(args);
                DrawnArgs::Tuples(tuples)
            }
        })
    }

    /// Every task's args tuple.
    fn into_tuples(self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        match self {
            DrawnArgs::Packed(packer) => packer
                .values(py)?
                .into_iter()
                .map(|v| PyTuple::new(py, [v]))
                .collect(),
            DrawnArgs::Singles(values) => {
                values.into_iter().map(|v| PyTuple::new(py, [v])).collect()
            }
            DrawnArgs::Tuples(tuples) => Ok(tuples),
        }
    }
}

/// Whether `task` is `(function, (x,), {})` with this very function (by
/// identity) and `x` went into `packer`.
///
/// # Safety
/// `task` and `function` must be live objects, with the GIL held.
unsafe fn packed_single(
    task: *mut ffi::PyObject,
    function: *mut ffi::PyObject,
    packer: &mut Packer,
) -> bool {
    // SAFETY: each item is read only after the check that makes the read valid
    // (exact tuple of the right size, exact dict).
    unsafe {
        if ffi::PyTuple_CheckExact(task) == 0 || ffi::PyTuple_GET_SIZE(task) != 3 {
            return false;
        }
        if ffi::PyTuple_GET_ITEM(task, 0) != function {
            return false;
        }
        let kwargs = ffi::PyTuple_GET_ITEM(task, 2);
        if ffi::PyDict_CheckExact(kwargs) == 0 || (*(kwargs as *mut ffi::PyDictObject)).ma_used != 0
        {
            return false;
        }
        let args = ffi::PyTuple_GET_ITEM(task, 1);
        if ffi::PyTuple_CheckExact(args) == 0 || ffi::PyTuple_GET_SIZE(args) != 1 {
            return false;
        }
        packer.push_ptr(ffi::PyTuple_GET_ITEM(args, 0))
    }
}

/// The args tuple of `task` if it is `(function, args, {})` with this function.
fn uniform_args<'py>(
    task: &Bound<'py, PyAny>,
    function: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let Ok(t) = task.cast::<PyTuple>() else {
        return Ok(None);
    };
    if t.len() != 3 {
        return Ok(None);
    }
    let f = t.get_borrowed_item(0)?;
    if !f.is(function) && !f.eq(function)? {
        return Ok(None);
    }
    match t.get_borrowed_item(2)?.cast::<PyDict>() {
        Ok(k) if k.is_empty() => {}
        _ => return Ok(None),
    }
    match t.get_borrowed_item(1)?.cast::<PyTuple>() {
        Ok(a) => Ok(Some(a.to_owned())),
        Err(_) => Ok(None),
    }
}

/// `(address, length)` of an object's buffer (for `read_process_memory` in another process).
#[pyfunction]
fn buffer_address(buffer: PyBuffer<u8>) -> (u64, u64) {
    (buffer.buf_ptr() as u64, buffer.len_bytes() as u64)
}

/// Copies `length` bytes at `address` in process `pid` into `into` (any
/// writable contiguous buffer of exactly that length, reused by the caller)
/// or into a new bytearray, and returns it (process_vm_readv: one copy, no
/// shared file). OSError if the kernel refuses (another user, Yama ptrace
/// restrictions) or the range is not mapped.
#[pyfunction]
#[pyo3(signature = (pid, address, length, into=None))]
fn read_process_memory(
    py: Python<'_>,
    pid: i32,
    address: u64,
    length: usize,
    into: Option<Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let target: Bound<'_, PyAny> = match into {
        Some(existing) => existing,
        None => {
            // SAFETY: a NULL source asks CPython for an uninitialized bytearray of `length` bytes.
            let raw = unsafe {
                pyo3::ffi::PyByteArray_FromStringAndSize(
                    std::ptr::null(),
                    length as pyo3::ffi::Py_ssize_t,
                )
            };
            // SAFETY: raw is a new reference or NULL with an exception set.
            unsafe { Bound::from_owned_ptr_or_err(py, raw)? }
        }
    };
    // Held until the copy is done: the export keeps the memory where it is.
    let buffer = PyBuffer::<u8>::get(&target)?;
    if buffer.readonly() || !buffer.is_c_contiguous() || buffer.len_bytes() != length {
        return Err(PyValueError::new_err(format!(
            "read_process_memory: `into` must be a writable contiguous buffer of {length} bytes"
        )));
    }
    let dst = RawSlice(buffer.buf_ptr() as *const u8, length);
    let result = py.detach(move || {
        let raw = dst; // the whole RawSlice (Send), not its pointer field
                       // SAFETY: a writable buffer of `length` bytes whose export we hold
                       // until the copy is done; nothing else writes it meanwhile.
        let dst = unsafe { std::slice::from_raw_parts_mut(raw.0 as *mut u8, raw.1) };
        remote::read_into(pid, address, dst)
    });
    drop(buffer);
    result.map_err(|e| {
        PyOSError::new_err(format!(
            "could not read {length} bytes from process {pid}: {e}"
        ))
    })?;
    Ok(target.unbind())
}

/// With `enabled`, names this process as its own ptracer
/// (`prctl(PR_SET_PTRACER, getpid())`): under Yama's `ptrace_scope` 1, which
/// lets a process be read only by its ancestors, this lets its descendants
/// (the pool's workers) read it too. Without, withdraws that (`0`). OSError
/// where the kernel has no Yama (EINVAL) or refuses.
#[pyfunction]
fn set_self_ptracer(enabled: bool) -> PyResult<()> {
    // SAFETY: getpid cannot fail.
    let tracer = if enabled {
        unsafe { libc::getpid() }
    } else {
        0
    };
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_PTRACER, tracer as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(PyOSError::new_err(format!(
            "could not {} this process's workers read its memory (prctl PR_SET_PTRACER): {}",
            if enabled { "let" } else { "stop letting" },
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// In a worker: the death of its parent kills its process group, what its
/// tasks started with it.
#[pyfunction]
fn kill_group_when_parent_dies() -> PyResult<()> {
    perfkit_pool::in_worker::kill_group_when_parent_dies()
        .map_err(|e| PyOSError::new_err(format!("sigaction (parent-death signal): {e}")))
}

/// One of a reply's large buffers, copied out of the worker into this
/// process's heap: a writable buffer that a result's array views (so it is
/// an ordinary writable array), freed when the last view of it goes.
#[pyclass(module = "perfkit._native", frozen)]
pub struct CopiedBuffer {
    buffer: remote::CopiedBuffer,
}

#[pymethods]
impl CopiedBuffer {
    fn __len__(&self) -> usize {
        self.buffer.len()
    }

    /// # Safety
    /// Called by CPython with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let buffer = &slf.get().buffer;
        // SAFETY: the buffer lives as long as `slf`, which the view holds a
        // reference to (PyBuffer_FillInfo sets view->obj); writable by design.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                buffer.as_ptr().cast(),
                buffer.len() as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}

/// Names of this process's leftover segments (leak checks in tests).
#[pyfunction]
fn shm_segments() -> Vec<String> {
    shm::list_prefix(&shm::pool_prefix(std::process::id()))
}

/// Where segments live (/dev/shm on Linux).
#[pyfunction]
fn shm_dir() -> PathBuf {
    shm::shm_dir()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<WorkerPool>()?;
    m.add_class::<CopiedBuffer>()?;
    m.add_function(wrap_pyfunction!(draw_uniform_batch, m)?)?;
    m.add_function(wrap_pyfunction!(shm_segments, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_address, m)?)?;
    m.add_function(wrap_pyfunction!(set_self_ptracer, m)?)?;
    m.add_function(wrap_pyfunction!(kill_group_when_parent_dies, m)?)?;
    m.add_function(wrap_pyfunction!(read_process_memory, m)?)?;
    m.add_function(wrap_pyfunction!(shm_dir, m)?)?;
    Ok(())
}
