//! `Session` (a recording in progress) and `Recording` (a CallTree in hand).

use crate::ProfileError;
use perfkit_profile::{CallTree, FuncKey, StatsTable};
use perfkit_record::{CallMark, ClockKind, Mode, StartError};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use std::path::PathBuf;

/// A file the system refused (missing, a directory, no permission, disk
/// full) is Python's OSError subclass for it, as `open()` raises and as
/// cProfile's `dump_stats` and pstats do; anything about the bytes is a
/// ProfileError.
pub(crate) fn profile_error(e: perfkit_profile::Error) -> PyErr {
    match &e {
        perfkit_profile::Error::Io {
            action,
            path,
            source,
        } => match source.raw_os_error().or_else(|| errno_of(source.kind())) {
            Some(errno) => {
                // Python's own layout: "[Errno 2] cannot read: No such file or directory: 'x.prof'".
                let text = source.to_string();
                let reason = text
                    .strip_suffix(&format!(" (os error {errno})"))
                    .unwrap_or(&text);
                PyOSError::new_err((
                    errno,
                    format!("{action}: {reason}"),
                    path.display().to_string(),
                ))
            }
            // A path the system was never asked about (a NUL in it, no file
            // name): a ValueError, as Python's own checks raise.
            None if source.kind() == std::io::ErrorKind::InvalidInput => {
                ProfileError::new_err(e.to_string())
            }
            None => PyOSError::new_err(e.to_string()),
        },
        _ => ProfileError::new_err(e.to_string()),
    }
}

/// The errno Python would have seen for an error Rust made up without one.
fn errno_of(kind: std::io::ErrorKind) -> Option<i32> {
    use std::io::ErrorKind::*;
    Some(match kind {
        NotFound => libc::ENOENT,
        PermissionDenied => libc::EACCES,
        IsADirectory => libc::EISDIR,
        NotADirectory => libc::ENOTDIR,
        AlreadyExists => libc::EEXIST,
        _ => return None,
    })
}

/// A recording that hooks into the interpreter while enabled.
#[pyclass(module = "perfkit._native")]
pub struct Session {
    inner: perfkit_record::Session,
    /// Files whose functions are the profiler's own API (perfkit/profiler.py).
    hidden_files: Vec<String>,
    /// C functions left out as the profiler's own, by name (a pool worker's
    /// loop, which is not its tasks').
    hidden_builtins: Vec<String>,
}

#[pymethods]
impl Session {
    #[new]
    /// `yields`: stop recording when another profiler starts, rather than
    /// make it fail (a pool worker's recording for its caller). `workers`:
    /// whether a `perfkit.Parallel` call's worker processes record for it
    /// too ([`recording_now`]).
    #[pyo3(signature = (builtins = true, clock = "wall", hidden_files = Vec::new(), hidden_builtins = Vec::new(), yields = false, workers = true))]
    fn new(
        builtins: bool,
        clock: &str,
        hidden_files: Vec<String>,
        hidden_builtins: Vec<String>,
        yields: bool,
        workers: bool,
    ) -> PyResult<Self> {
        let clock = ClockKind::parse(clock).ok_or_else(|| {
            PyValueError::new_err(format!("clock must be 'wall' or 'cpu', not {clock:?}"))
        })?;
        let mode = if builtins {
            Mode::Full
        } else {
            Mode::PythonFrames
        };
        let mut inner = perfkit_record::Session::new(mode, clock);
        inner.set_yields(yields);
        inner.set_workers(workers);
        Ok(Session {
            inner,
            hidden_files,
            hidden_builtins,
        })
    }

    /// Starts recording; `left_out`: idents of running threads not to record.
    #[pyo3(signature = (left_out = Vec::new()))]
    fn enable(&mut self, py: Python<'_>, left_out: Vec<u64>) -> PyResult<()> {
        self.inner.enable(py, &left_out).map_err(|e| match e {
            StartError::Busy(msg) => PyRuntimeError::new_err(msg),
            StartError::Python(e) => e,
        })
    }

    fn disable(&mut self, py: Python<'_>) {
        self.inner.disable(py);
    }

    fn clear(&mut self, py: Python<'_>) {
        self.inner.clear(py);
    }

    /// Stops recording the calling thread until the next disable; the others go on.
    fn leave_this_thread(&mut self) {
        self.inner.leave_this_thread();
    }

    #[getter]
    fn enabled(&self) -> bool {
        self.inner.is_enabled()
    }

    #[getter]
    fn builtins(&self) -> bool {
        self.inner.mode() == Mode::Full
    }

    /// The tree recorded so far, as a `Recording`.
    fn recording(&mut self, py: Python<'_>) -> Recording {
        Recording {
            tree: self.tree(py),
            table: None,
            label: "recorded profile".into(),
        }
    }

    /// The tree recorded so far, as bytes for [`adopt_worker_tree`] in the
    /// process this one works for.
    fn tree_bytes<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes = perfkit_profile::prof::tree_to_trailer(&self.tree(py));
        PyBytes::new(py, &bytes)
    }

    /// Marks the Python function calling this, in the calling thread, to
    /// take the calls below it from later ([`Self::take_calls_below`]); None
    /// when this session is not recording there or did not see that call
    /// start. (A dask worker's one recording for its caller, from which each
    /// batch takes its own thread's calls.)
    fn mark_current_call(&mut self, py: Python<'_>) -> Option<(u64, u64, u32)> {
        self.inner.mark_current_call(py).map(|m| m.to_parts())
    }

    /// The calls recorded below the marked call since the last take there, as
    /// bytes for [`adopt_dask_tree`] (one thread, named `name`), taken out of
    /// this session; None for a mark not of this session.
    fn take_calls_below<'py>(
        &mut self,
        py: Python<'py>,
        mark: (u64, u64, u32),
        name: &str,
    ) -> Option<Bound<'py, PyBytes>> {
        let mark = CallMark::from_parts(mark.0, mark.1, mark.2);
        let hidden = hidden_by(&self.hidden_files, &self.hidden_builtins);
        let tree = self
            .inner
            .take_calls_below(mark, name, &recorder_name(py), &hidden)?;
        let bytes = perfkit_profile::prof::tree_to_trailer(&tree);
        Some(PyBytes::new(py, &bytes))
    }
}

impl Session {
    fn tree(&mut self, py: Python<'_>) -> CallTree {
        self.inner.name_live_threads(py);
        let hidden = hidden_by(&self.hidden_files, &self.hidden_builtins);
        self.inner.tree(&recorder_name(py), &hidden)
    }
}

/// Whether a function is left out as the profiler's own (or a worker's loop).
fn hidden_by<'a>(
    hidden_files: &'a [String],
    hidden_builtins: &'a [String],
) -> impl Fn(&FuncKey) -> bool + 'a {
    move |k: &FuncKey| {
        if k.is_builtin() {
            is_profilers_own_builtin(&k.name) || hidden_builtins.contains(&k.name)
        } else {
            hidden_files.contains(&k.file)
        }
    }
}

fn recorder_name(py: Python<'_>) -> String {
    let v = py.version_info();
    format!(
        "perfkit {} / CPython {}.{}.{}",
        crate::VERSION,
        v.major,
        v.minor,
        v.patch
    )
}

/// A call tree in hand: recorded here or read from a file.
#[pyclass(module = "perfkit._native", frozen)]
pub struct Recording {
    pub(crate) tree: CallTree,
    /// The table a file held, kept as it was: a foreign file's tree is
    /// inferred, and a table derived from it would not be the file's
    /// (helper-50: fib's 36 primitive calls came back as 2,220).
    table: Option<StatsTable>,
    /// What the viewer's page calls it: the file it was read from, as
    /// `perfkit export` names it.
    label: String,
}

/// `(name, thread_id, pid, [(func, parent, calls, own_ns, total_ns)])`.
type ThreadRows = (String, u64, u32, Vec<(u32, u32, u64, u64, u64)>);

fn key_tuple<'py>(py: Python<'py>, k: &FuncKey) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            k.file.as_str().into_pyobject(py)?.into_any(),
            k.line.into_pyobject(py)?.into_any(),
            k.name.as_str().into_pyobject(py)?.into_any(),
        ],
    )
}

#[pymethods]
impl Recording {
    /// The pstats dictionary: `{(file, line, name): (cc, nc, tt, ct, {caller: (nc, cc, tt, ct)})}`.
    fn stats_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let derived;
        let table = match &self.table {
            Some(table) => table,
            None => {
                derived = self.tree.to_stats();
                &derived
            }
        };
        let out = PyDict::new(py);
        for e in &table.entries {
            let callers = PyDict::new(py);
            for (caller, s) in &e.callers {
                let key = key_tuple(py, caller)?;
                if s.count_only {
                    // The pure-Python `profile` module's callers hold a count alone.
                    callers.set_item(key, s.nc)?;
                } else {
                    callers.set_item(key, (s.nc, s.cc, s.tt, s.ct))?;
                }
            }
            out.set_item(key_tuple(py, &e.func)?, (e.cc, e.nc, e.tt, e.ct, callers))?;
        }
        Ok(out)
    }

    /// What `pstats.Stats(recording)` calls first, as on a `cProfile.Profile`:
    /// the table is ready, nothing to do.
    fn create_stats(&self) {}

    /// The pstats dictionary (`stats_dict()`), under the name
    /// `pstats.Stats(recording)` reads, as it reads a `cProfile.Profile`'s.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.stats_dict(py)
    }

    /// `pstats.Stats` empties a profiler's `stats` once it has read them; a
    /// recording keeps its tree, and its table stays readable.
    #[setter]
    fn set_stats(&self, _value: Bound<'_, PyAny>) {}

    /// The viewer's page with this profile in it, as `perfkit export x.html`
    /// writes it (works from disk, no server); `iframe=True`: that page
    /// inside an `<iframe srcdoc>`, to show in a notebook's output.
    #[pyo3(signature = (label = None, iframe = false))]
    fn to_html(&self, py: Python<'_>, label: Option<String>, iframe: bool) -> String {
        py.detach(|| {
            let profile = perfkit_profile::Profile {
                stats: self.table.clone().unwrap_or_else(|| self.tree.to_stats()),
                tree: self.tree.clone(),
            };
            let label = label.unwrap_or_else(|| self.label.clone());
            let page = perfkit_view::export::html(&perfkit_view::Viewer::single(label, profile));
            if iframe {
                perfkit_view::export::iframe(&page)
            } else {
                page
            }
        })
    }

    /// Jupyter's rich display: the viewer, inline.
    fn _repr_html_(&self, py: Python<'_>) -> String {
        self.to_html(py, None, true)
    }

    /// Writes a `.prof` file (pstats-compatible, with the exact tree), atomically.
    fn dump(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| match &self.table {
            Some(table) => perfkit_profile::prof::write_table_and_tree(&path, table, &self.tree),
            None => perfkit_profile::prof::write_file(&path, &self.tree),
        })
        .map_err(profile_error)
    }

    /// Each thread as `(name, thread_id, pid, nodes)` with nodes as
    /// `(func_index, parent_index, calls, own_ns, total_ns)`.
    fn threads(&self) -> Vec<ThreadRows> {
        self.tree
            .threads
            .iter()
            .map(|t| {
                let nodes = t
                    .nodes
                    .iter()
                    .map(|n| (n.func, n.parent, n.calls, n.own_ns, n.total_ns))
                    .collect();
                (t.name.clone(), t.thread_id, t.pid, nodes)
            })
            .collect()
    }

    /// The function table: `(file, line, name)` per function index.
    fn funcs(&self) -> Vec<(String, u32, String)> {
        self.tree
            .funcs
            .iter()
            .map(|k| (k.file.clone(), k.line, k.name.clone()))
            .collect()
    }

    /// Whether every call path was recorded (False for a tree inferred from a cProfile file).
    #[getter]
    fn exact(&self) -> bool {
        self.tree.meta.exact
    }

    #[getter]
    fn duration(&self) -> f64 {
        self.tree.meta.duration_ns as f64 / 1e9
    }

    fn __repr__(&self) -> String {
        let nodes: usize = self.tree.threads.iter().map(|t| t.nodes.len() - 1).sum();
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!(
            "<perfkit Recording: {}, {}, {}{}>",
            count(self.tree.funcs.len(), "function"),
            count(nodes, "call path"),
            count(self.tree.threads.len(), "thread"),
            if self.tree.meta.exact {
                ""
            } else {
                ", approximate"
            }
        )
    }
}

/// Takes `lock` (perfkit.profile's lock on its count of calls in flight).
/// Called from here rather than from Python, the lock's own methods make no
/// call event: a recording running in this thread or another would show
/// them as the program's calls. This function itself is one of the
/// profiler's own, left out of profiles as the session's methods are.
#[pyfunction]
pub fn acquire_unrecorded(lock: &Bound<'_, PyAny>) -> PyResult<()> {
    lock.call_method0("acquire").map(drop)
}

/// Releases `lock`, as [`acquire_unrecorded`] takes it.
#[pyfunction]
pub fn release_unrecorded(lock: &Bound<'_, PyAny>) -> PyResult<()> {
    lock.call_method0("release").map(drop)
}

/// `(builtins, clock)` of the profiler recording in this process now, or
/// None (none records, or the one recording leaves its workers out): what a
/// `perfkit.Parallel` call asks its workers to record with.
#[pyfunction]
pub fn recording_now(py: Python<'_>) -> Option<(bool, &'static str)> {
    perfkit_record::recording_now(py).map(|(mode, clock)| (mode == Mode::Full, clock.name()))
}

/// What ends a worker's reply that carries its call tree for the batch
/// after the reply's pickle: the tree ([`Session::tree_bytes`]), its length
/// (8 bytes, little-endian), then this mark, which a pickle (ending with its
/// STOP opcode, ".") never ends with.
pub const WORKER_TREE_MARK: &[u8; 8] = b"\x1aPKTREE\x01";

/// Takes the call tree a worker process put at the end of a reply
/// (`WORKER_TREE_MARK`) into the profiler recording here, its threads named
/// after the worker, and returns the length of the reply's pickle before it
/// (the whole payload when it carries no tree). A tree that cannot be read
/// is left out with a warning: the call's results matter more. One of the
/// profiler's own functions, left out of profiles.
#[pyfunction]
pub fn adopt_worker_tree(py: Python<'_>, payload: PyBuffer<u8>, pid: u32) -> PyResult<usize> {
    if !payload.is_c_contiguous() {
        return Err(PyValueError::new_err("a reply payload must be contiguous"));
    }
    // SAFETY: the buffer is C-contiguous (checked above), `len_bytes` long,
    // and `payload` holds it (the exporter cannot free or resize it) until
    // this function returns; it is only read.
    let bytes =
        unsafe { std::slice::from_raw_parts(payload.buf_ptr() as *const u8, payload.len_bytes()) };
    let len = bytes.len();
    let tail = WORKER_TREE_MARK.len() + 8;
    if len < tail || &bytes[len - WORKER_TREE_MARK.len()..] != WORKER_TREE_MARK {
        return Ok(len);
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&bytes[len - tail..len - WORKER_TREE_MARK.len()]);
    let Some(start) = (len - tail).checked_sub(u64::from_le_bytes(size) as usize) else {
        return Ok(len);
    };
    match perfkit_profile::prof::tree_from_trailer(&bytes[start..len - tail]) {
        Ok(mut tree) => {
            for thread in &mut tree.threads {
                thread.name = if thread.name == "MainThread" {
                    format!("worker process {}", thread.pid)
                } else {
                    format!("worker process {}: {}", thread.pid, thread.name)
                };
            }
            perfkit_record::adopt(py, &tree);
        }
        Err(e) => warn_unreadable_tree(py, &format!("worker process {pid}"), e)?,
    }
    Ok(start)
}

/// The warning for a batch's tree that `who` sent and that cannot be read:
/// the call's results matter more, so it is left out, not raised.
fn warn_unreadable_tree(py: Python<'_>, who: &str, e: impl std::fmt::Display) -> PyResult<()> {
    let message = format!(
        "perfkit.Parallel: the profile of a batch that {who} recorded could not be read, \
         and is left out of the profile ({e})"
    );
    let category = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
    PyErr::warn(
        py,
        &category,
        &std::ffi::CString::new(message).unwrap_or_default(),
        1,
    )
}

/// Takes a batch's call tree that a dask worker process sent
/// ([`Session::take_calls_below`]) into the profiler recording here, all of
/// that process's threads summed into one (a worker's batches, whichever of
/// its threads ran them, as one thread per worker process, as the processes
/// backend's). Returns whether it was taken: False when nothing records here
/// (or not on that clock and mode). A tree that cannot be read is left out
/// with a warning. One of the profiler's own functions, left out of profiles.
#[pyfunction]
pub fn adopt_dask_tree(py: Python<'_>, tree: &[u8]) -> PyResult<bool> {
    match perfkit_profile::prof::tree_from_trailer(tree) {
        Ok(mut tree) => {
            for thread in &mut tree.threads {
                thread.thread_id = 0;
            }
            Ok(perfkit_record::adopt(py, &tree))
        }
        Err(e) => {
            warn_unreadable_tree(py, "a dask worker", e)?;
            Ok(false)
        }
    }
}

/// Whether a C function's name is one of the profiler's own: the session's
/// methods (enable/disable) and the lock functions above. perfkit's other
/// natives (a Parallel call's waits, a cache's reads) are the profiled
/// program's time, as cProfile shows them.
fn is_profilers_own_builtin(name: &str) -> bool {
    name.contains("'perfkit._native.Session'")
        || name.ends_with("perfkit._native.acquire_unrecorded>")
        || name.ends_with("perfkit._native.release_unrecorded>")
        || name.ends_with("perfkit._native.adopt_worker_tree>")
        || name.ends_with("perfkit._native.adopt_dask_tree>")
}

/// Reads any supported profile file (perfkit/cProfile `.prof`, collapsed stacks, speedscope).
#[pyfunction]
pub fn load(py: Python<'_>, path: PathBuf) -> PyResult<Recording> {
    let profile = py
        .detach(|| perfkit_profile::load(&path))
        .map_err(profile_error)?;
    Ok(Recording {
        tree: profile.tree,
        table: Some(profile.stats),
        label: path.display().to_string(),
    })
}
