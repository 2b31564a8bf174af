//! Bindings to perfkit-pool: `perfkit._native.WorkerPool`, driven by
//! `perfkit.parallel`. Translates bytes, buffers and events; every wait and
//! every copy into shared memory runs with the GIL released.

use std::os::fd::IntoRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use perfkit_pool::{shm, Event, Job, Pool, WorkerCommand};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyTuple};

/// How often a wait wakes up to let Python run signal handlers (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(20);

/// A raw view of a Python buffer, handed to a GIL-free closure.
struct RawSlice(*const u8, usize);
// SAFETY: the PyBuffer it comes from is held (and the exporter kept alive) by
// the caller for the whole closure; the bytes are only read.
unsafe impl Send for RawSlice {}

#[pyclass(module = "perfkit._native", frozen)]
pub struct WorkerPool {
    inner: Mutex<Option<Pool>>,
    function: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    size: usize,
}

impl WorkerPool {
    fn with_pool<R>(&self, f: impl FnOnce(&Pool) -> R) -> PyResult<R> {
        let guard = self.inner.lock().unwrap();
        match guard.as_ref() {
            Some(p) => Ok(f(p)),
            None => Err(PyRuntimeError::new_err("this worker pool was shut down")),
        }
    }
}

#[pymethods]
impl WorkerPool {
    /// Starts `n_workers` processes running `program args…` with `env` added.
    #[new]
    fn new(
        py: Python<'_>,
        n_workers: usize,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> PyResult<Self> {
        let command = WorkerCommand {
            program: program.into_os_string(),
            args: args.into_iter().map(Into::into).collect(),
            env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        };
        let pool = py.detach(|| Pool::start(n_workers, command)).map_err(|e| {
            PyOSError::new_err(format!("could not start {n_workers} worker processes: {e}"))
        })?;
        let size = pool.size();
        Ok(WorkerPool {
            inner: Mutex::new(Some(pool)),
            function: Mutex::new(None),
            size,
        })
    }

    #[getter]
    fn size(&self) -> usize {
        self.size
    }

    #[getter]
    fn alive(&self) -> bool {
        self.inner.lock().unwrap().is_some()
    }

    /// The segment-name prefix of this pool's shared memory (`perfkit-<pid>-`).
    #[getter]
    fn segment_prefix(&self) -> String {
        shm::pool_prefix(std::process::id())
    }

    fn pids(&self) -> PyResult<Vec<i32>> {
        self.with_pool(|p| p.pids())
    }

    /// Sets the pickled function(s) of call `call` (sent to each worker once).
    fn begin_call(&self, call: u64, function: &[u8]) {
        *self.function.lock().unwrap() = Some((call, Arc::new(function.to_vec())));
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
        let guard = self.inner.lock().unwrap();
        match guard.as_ref() {
            Some(p) => {
                p.submit(job);
                Ok(())
            }
            None => Err(PyRuntimeError::new_err("this worker pool was shut down")),
        }
    }

    /// Waits up to `timeout` seconds (None: forever) for the next event,
    /// running signal handlers meanwhile (so Ctrl-C raises here). Returns None
    /// on timeout, else a tuple:
    /// ("reply", call, batch, is_error, payload, segment_fd | None, spans, pid)
    /// ("died", call, batch, pid, reason, task)
    /// ("spawn_failed", call, batch, message)
    #[pyo3(signature = (timeout=None))]
    fn next_event<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(SIGNAL_POLL),
                None => SIGNAL_POLL,
            };
            let event = {
                let guard = self.inner.lock().unwrap();
                let Some(pool) = guard.as_ref() else {
                    return Err(PyRuntimeError::new_err("this worker pool was shut down"));
                };
                py.detach(|| pool.next_event(slice))
            };
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

    fn pending(&self) -> PyResult<usize> {
        self.with_pool(|p| p.pending())
    }

    /// Kills every worker now and removes the pool's shared memory.
    fn terminate(&self, py: Python<'_>) {
        let pool = self.inner.lock().unwrap().take();
        if let Some(mut p) = pool {
            py.detach(|| p.terminate());
        }
    }

    /// Lets the workers finish and exit (killed after a short grace period).
    fn close(&self, py: Python<'_>) {
        let pool = self.inner.lock().unwrap().take();
        if let Some(mut p) = pool {
            py.detach(|| p.close());
        }
    }
}

fn event_tuple<'py>(py: Python<'py>, ev: Event) -> PyResult<Bound<'py, PyTuple>> {
    match ev {
        Event::Reply(r) => {
            let (fd, spans) = match r.segment {
                Some((file, spans)) => (Some(file.into_raw_fd()), spans),
                None => (None, Vec::new()),
            };
            (
                "reply",
                r.call,
                r.batch,
                r.is_error,
                PyBytes::new(py, &r.payload),
                fd,
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
        Event::SpawnFailed {
            call,
            batch,
            message,
        } => ("spawn_failed", call, batch, message).into_pyobject(py),
    }
}

/// What `delayed(f)` returns: calling it gives the task `(f, args, kwargs)`
/// (joblib's format). In Rust because user code builds one per task: 100,000
/// tiny tasks must not cost more to describe than to run.
#[pyclass(module = "perfkit._native", frozen, name = "Delayed")]
pub struct Delayed {
    function: Py<PyAny>,
}

/// The wrapper of the last plain function given to `delayed`, handed out
/// again for the same function: `delayed(f)(x) for x in …` then makes no
/// wrapper per task (that was half the cost of describing a tiny task).
/// Only plain functions (`def`, lambda) are kept, never bound methods or
/// other callables (which could hold a large object alive), and
/// `Parallel` forgets it at the end of each call.
static LAST_DELAYED: Mutex<Option<Py<Delayed>>> = Mutex::new(None);

/// `delayed(f)`: a wrapper whose call returns the task `(f, args, kwargs)`.
#[pyfunction]
fn delayed<'py>(py: Python<'py>, function: Bound<'py, PyAny>) -> PyResult<Bound<'py, Delayed>> {
    let plain = function.is_instance_of::<pyo3::types::PyFunction>();
    if plain {
        if let Some(last) = LAST_DELAYED.lock().unwrap().as_ref() {
            if last.get().function.is(&function) {
                return Ok(last.bind(py).clone());
            }
        }
    } else if !function.is_callable() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "delayed() needs a callable, got {}",
            function.get_type().name()?
        )));
    }
    let wrapper = Bound::new(
        py,
        Delayed {
            function: function.unbind(),
        },
    )?;
    if plain {
        // The previous wrapper is dropped after the lock is released (its
        // destructor may run Python code that calls `delayed`).
        let previous = LAST_DELAYED
            .lock()
            .unwrap()
            .replace(wrapper.clone().unbind());
        drop(previous);
    }
    Ok(wrapper)
}

/// Forgets the wrapper `delayed` keeps for reuse (so that it holds nothing alive).
#[pyfunction]
fn delayed_forget() {
    let previous = LAST_DELAYED.lock().unwrap().take();
    drop(previous);
}

#[pymethods]
impl Delayed {
    #[new]
    fn new(function: Bound<'_, PyAny>) -> PyResult<Self> {
        if !function.is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "delayed() needs a callable, got {}",
                function.get_type().name()?
            )));
        }
        Ok(Delayed {
            function: function.unbind(),
        })
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        args: Bound<'py, PyTuple>,
        kwargs: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let kwargs = match kwargs {
            Some(k) => k,
            None => PyDict::new(py),
        };
        PyTuple::new(
            py,
            [
                self.function.bind(py).clone(),
                args.into_any(),
                kwargs.into_any(),
            ],
        )
    }

    /// The wrapped function (as functools.wraps would expose it).
    #[getter]
    fn __wrapped__(&self, py: Python<'_>) -> Py<PyAny> {
        self.function.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("delayed({})", self.function.bind(py).repr()?))
    }
}

/// One pass over a batch of tasks: if every item is `(function, args, {})`
/// with this very function, returns `(2, [x, …])` when every args tuple holds
/// one value, else `(0, [args, …])`; returns None when the batch needs the
/// general encoding (other functions, kwargs, or malformed items).
#[pyfunction]
fn encode_uniform_batch<'py>(
    py: Python<'py>,
    tasks: &Bound<'py, PyList>,
    function: &Bound<'py, PyAny>,
) -> PyResult<Option<(u8, Bound<'py, PyList>)>> {
    let n = tasks.len();
    let mut args_all: Vec<Bound<'py, PyAny>> = Vec::with_capacity(n);
    let mut all_single = true;
    for item in tasks.iter() {
        let Ok(t) = item.cast::<PyTuple>() else {
            return Ok(None);
        };
        if t.len() != 3 {
            return Ok(None);
        }
        let f = t.get_item(0)?;
        if !f.is(function) && !f.eq(function)? {
            return Ok(None);
        }
        match t.get_item(2)?.cast::<PyDict>() {
            Ok(k) if k.is_empty() => {}
            _ => return Ok(None),
        }
        let args = t.get_item(1)?;
        let Ok(a) = args.cast::<PyTuple>() else {
            return Ok(None);
        };
        all_single &= a.len() == 1;
        args_all.push(args);
    }
    if all_single {
        let singles: Vec<Bound<'py, PyAny>> = args_all
            .iter()
            .map(|a| a.cast::<PyTuple>().unwrap().get_item(0))
            .collect::<PyResult<_>>()?;
        Ok(Some((2, PyList::new(py, singles)?)))
    } else {
        Ok(Some((0, PyList::new(py, args_all)?)))
    }
}

/// Draws up to `n` tasks from `iterator` for one batch, encoding them on the
/// way when every one is `(function, args, {})` with this very function:
/// returns `(None, 2, [x, …])` when every args tuple holds one value,
/// `(None, 0, [args, …])` otherwise, or `(tasks, None, None)` (the tasks as
/// drawn) when the batch needs the general encoding. An empty iterator
/// gives `([], None, None)`. (islice + list + encode_uniform_batch in one
/// pass, without a list of the caller's task tuples: they are freed as soon
/// as their arguments are taken.)
#[pyfunction]
#[allow(clippy::type_complexity)]
fn draw_uniform_batch<'py>(
    py: Python<'py>,
    iterator: &Bound<'py, PyAny>,
    n: usize,
    function: &Bound<'py, PyAny>,
) -> PyResult<(
    Option<Bound<'py, PyList>>,
    Option<u8>,
    Option<Bound<'py, PyList>>,
)> {
    let mut iterator = iterator.cast::<pyo3::types::PyIterator>()?.clone();
    let mut args_all: Vec<Bound<'py, PyAny>> = Vec::with_capacity(n.min(1 << 16));
    let mut all_single = true;
    let mut drawn = 0usize;
    // The first task that does not fit (then every task is kept as drawn).
    let mut misfit: Option<Bound<'py, PyAny>> = None;
    while drawn < n {
        let Some(item) = iterator.next() else { break };
        let item = item?;
        drawn += 1;
        if let Some(args) = uniform_args(&item, function)? {
            all_single &= args.len() == 1;
            args_all.push(args.into_any());
        } else {
            misfit = Some(item);
            break;
        }
    }
    if let Some(first_misfit) = misfit {
        // Rebuild the tasks drawn so far (same function, same args, an empty
        // dict each) and take the rest of the batch as it comes.
        let tasks = PyList::empty(py);
        for args in args_all {
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
    if args_all.is_empty() {
        return Ok((Some(PyList::empty(py)), None, None));
    }
    if all_single {
        let singles = PyList::new(
            py,
            args_all.iter().map(|a| {
                // SAFETY: every entry is a tuple of length 1 (checked above).
                unsafe { a.cast_unchecked::<PyTuple>().get_borrowed_item_unchecked(0) }
            }),
        )?;
        Ok((None, Some(2), Some(singles)))
    } else {
        Ok((None, Some(0), Some(PyList::new(py, args_all)?)))
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

/// Copies `length` bytes at `address` in process `pid` into `into` (a
/// bytearray of exactly that length, reused by the caller) or into a new
/// bytearray (process_vm_readv: one copy, no shared file). OSError if the
/// kernel refuses (another user, Yama ptrace restrictions) or the range is not mapped.
#[pyfunction]
#[pyo3(signature = (pid, address, length, into=None))]
fn read_process_memory(
    py: Python<'_>,
    pid: i32,
    address: u64,
    length: usize,
    into: Option<Bound<'_, PyByteArray>>,
) -> PyResult<Py<PyAny>> {
    let array: Bound<'_, PyAny> = match into {
        Some(existing) => {
            if existing.len() != length {
                return Err(PyValueError::new_err(
                    "read_process_memory: `into` has the wrong length",
                ));
            }
            existing.into_any()
        }
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
    // SAFETY: the bytearray owns `length` writable bytes; nothing else runs
    // Python code while we hold it (the worker is single-threaded).
    let dst = unsafe { pyo3::ffi::PyByteArray_AsString(array.as_ptr()) } as usize;
    let result = py.detach(move || {
        let mut done = 0usize;
        while done < length {
            let local = libc::iovec {
                iov_base: (dst + done) as *mut libc::c_void,
                iov_len: length - done,
            };
            let remote = libc::iovec {
                iov_base: (address as usize + done) as *mut libc::c_void,
                iov_len: length - done,
            };
            // SAFETY: `local` is our own writable buffer of the stated length;
            // the kernel validates the remote range and fails with EFAULT if it is not mapped.
            let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
            if n <= 0 {
                return Err(std::io::Error::last_os_error());
            }
            done += n as usize;
        }
        Ok(())
    });
    result.map_err(|e| {
        PyOSError::new_err(format!(
            "could not read {length} bytes from process {pid}: {e}"
        ))
    })?;
    Ok(array.unbind())
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
    m.add_class::<Delayed>()?;
    m.add_function(wrap_pyfunction!(delayed, m)?)?;
    m.add_function(wrap_pyfunction!(delayed_forget, m)?)?;
    m.add_function(wrap_pyfunction!(encode_uniform_batch, m)?)?;
    m.add_function(wrap_pyfunction!(draw_uniform_batch, m)?)?;
    m.add_function(wrap_pyfunction!(shm_segments, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_address, m)?)?;
    m.add_function(wrap_pyfunction!(read_process_memory, m)?)?;
    m.add_function(wrap_pyfunction!(shm_dir, m)?)?;
    Ok(())
}
