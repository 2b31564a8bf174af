//! Bindings to perfkit-cache: content hashing of pickle streams and their
//! out-of-band buffers (read in place through the buffer protocol, with the
//! GIL released for large ones), and the entry store. Python
//! (`perfkit/memory.py`) does the pickling and the joblib-compatible API.

use std::ffi::{c_void, CStr, OsStr};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use perfkit_cache::entry::{self, ReadOutcome};
use perfkit_cache::{hash, store, writer, CacheError};
use pyo3::exceptions::{PyBufferError, PyOSError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Below this many bytes, releasing and re-taking the GIL costs more than it frees.
const DETACH_MIN: usize = 1 << 20;
/// Entries up to this size are read by one call into a scratch buffer, then copied.
const SMALL_ENTRY_MAX: usize = (64 << 10) - 1;
/// Entries up to this size may be written in the background (larger ones cost
/// more to copy than the file creation saves, and would crowd the queue).
const WRITE_BEHIND_MAX: usize = 1 << 20;

/// Contiguous buffer-protocol views of Python objects (PickleBuffer, bytes,
/// memoryview, numpy arrays), held until drop so the memory stays valid.
struct Views {
    // Boxed: a Py_buffer must stay at the address it was filled at, and a Vec moves its items.
    #[allow(clippy::vec_box)]
    views: Vec<Box<ffi::Py_buffer>>,
}

impl Views {
    fn of(objs: &Bound<'_, PyAny>) -> PyResult<Views> {
        let mut views = Views { views: Vec::new() };
        for obj in objs.try_iter()? {
            let obj = obj?;
            let mut view: Box<ffi::Py_buffer> = Box::new(ffi::Py_buffer::new());
            // SAFETY: `obj` is a live object and `view` a writable Py_buffer; on success the view
            // is released exactly once, in Drop.
            let rc =
                unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_FULL_RO) };
            if rc != 0 {
                return Err(PyErr::fetch(obj.py()));
            }
            // SAFETY: `view` was filled by PyObject_GetBuffer above.
            let contiguous = unsafe { ffi::PyBuffer_IsContiguous(&*view, b'A' as c_char) } != 0;
            views.views.push(view);
            if !contiguous {
                return Err(PyBufferError::new_err("buffer is not contiguous"));
            }
        }
        Ok(views)
    }

    fn slices(&self) -> Vec<&[u8]> {
        self.views
            .iter()
            .map(|v| {
                if v.len <= 0 || v.buf.is_null() {
                    &[][..]
                } else {
                    // SAFETY: a contiguous exported buffer spans `len` bytes from `buf`, and stays
                    // valid (not freed or resized) while the view is held, i.e. as long as `self`.
                    unsafe { std::slice::from_raw_parts(v.buf as *const u8, v.len as usize) }
                }
            })
            .collect()
    }
}

impl Drop for Views {
    fn drop(&mut self) {
        for v in &mut self.views {
            // SAFETY: each view was filled by PyObject_GetBuffer; Views is only created and dropped
            // while attached to the interpreter.
            unsafe { ffi::PyBuffer_Release(&mut **v) };
        }
    }
}

fn os_error(e: CacheError) -> PyErr {
    match e.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, e.to_string())),
        None => PyOSError::new_err(e.to_string()),
    }
}

/// xxh3-128 (32 hex digits) of `prefix`, a pickle stream and its out-of-band buffers.
#[pyfunction]
fn cache_hash(
    py: Python<'_>,
    prefix: &[u8],
    stream: &[u8],
    buffers: &Bound<'_, PyAny>,
) -> PyResult<String> {
    let views = Views::of(buffers)?;
    let slices = views.slices();
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let digest = if total >= DETACH_MIN {
        py.detach(|| hash::content_hash(prefix, stream, &slices))
    } else {
        hash::content_hash(prefix, stream, &slices)
    };
    Ok(hash::hex128(digest))
}

/// The cache key of `values` (a call's bound arguments) when every one is of
/// a plain type (None, bool, int in 64 bits, float, str, bytes): hashed
/// directly, without pickling. None otherwise: the caller pickles them.
#[pyfunction]
fn cache_key_of_scalars(prefix: &[u8], values: &Bound<'_, PyTuple>) -> PyResult<Option<String>> {
    let items: Vec<Bound<'_, PyAny>> = values.iter().collect();
    let mut scalars = Vec::with_capacity(items.len());
    for v in &items {
        // Exact types only: a subclass (IntEnum, a str subclass, ...) may pickle differently.
        let s = if v.is_none() {
            hash::Scalar::None
        } else if v.is_exact_instance_of::<PyBool>() {
            hash::Scalar::Bool(v.is_truthy()?)
        } else if v.is_exact_instance_of::<PyInt>() {
            match v.extract::<i64>() {
                Ok(i) => hash::Scalar::Int(i),
                Err(_) => return Ok(None),
            }
        } else if v.is_exact_instance_of::<PyFloat>() {
            hash::Scalar::Float(v.cast::<PyFloat>()?.value())
        } else if v.is_exact_instance_of::<PyString>() {
            match v.cast::<PyString>()?.to_str() {
                Ok(s) => hash::Scalar::Str(s),
                Err(_) => return Ok(None), // lone surrogates: not UTF-8
            }
        } else if v.is_exact_instance_of::<PyBytes>() {
            hash::Scalar::Bytes(v.cast::<PyBytes>()?.as_bytes())
        } else {
            return Ok(None);
        };
        scalars.push(s);
    }
    Ok(Some(hash::hex128(hash::scalars_hash(prefix, &scalars))))
}

fn ranges<'py>(py: Python<'py>, layout: &entry::Layout) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, layout.buffers.iter().map(|&(o, l)| (o, l)))
}

/// A writable buffer-protocol view of a Python object, released on drop.
struct WritableView {
    view: Box<ffi::Py_buffer>,
}

impl WritableView {
    fn of(obj: &Bound<'_, PyAny>, len: usize) -> PyResult<WritableView> {
        let mut view: Box<ffi::Py_buffer> = Box::new(ffi::Py_buffer::new());
        // SAFETY: `obj` is live and `view` writable; on success it is released once, in Drop.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_WRITABLE) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        let out = WritableView { view };
        if out.view.len as usize != len || out.view.buf.is_null() {
            return Err(PyBufferError::new_err(format!(
                "the allocator returned {} bytes, {len} were asked for",
                out.view.len
            )));
        }
        Ok(out)
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: a PyBUF_WRITABLE simple (C-contiguous) view spans `len` writable bytes from
        // `buf`, valid while the view is held (as long as `self`).
        unsafe { std::slice::from_raw_parts_mut(self.view.buf as *mut u8, self.view.len as usize) }
    }
}

impl Drop for WritableView {
    fn drop(&mut self) {
        // SAFETY: filled by PyObject_GetBuffer; dropped while attached to the interpreter.
        unsafe { ffi::PyBuffer_Release(&mut *self.view) };
    }
}

/// `cache_load`'s answer for a verified entry: (bytes holder, stream offset,
/// stream length, buffer ranges).
fn loaded(holder: Bound<'_, PyAny>, layout: &entry::Layout) -> PyResult<Py<PyAny>> {
    let py = holder.py();
    let t = PyTuple::new(
        py,
        [
            holder,
            layout.stream.0.into_pyobject(py)?.into_any(),
            layout.stream.1.into_pyobject(py)?.into_any(),
            ranges(py, layout)?.into_any(),
        ],
    )?;
    Ok(t.into_any().unbind())
}

/// `cache_load`'s answer for a small verified entry held in memory: the
/// pickle stream alone (bytes) when it has no out-of-band buffers (most
/// hits: nothing else to build), else as `loaded`.
fn loaded_small(py: Python<'_>, bytes: &[u8], layout: &entry::Layout) -> PyResult<Py<PyAny>> {
    if layout.buffers.is_empty() {
        let (s0, sl) = (layout.stream.0 as usize, layout.stream.1 as usize);
        return Ok(PyBytes::new(py, &bytes[s0..s0 + sl]).into_any().unbind());
    }
    loaded(PyByteArray::new(py, bytes).into_any(), layout)
}

/// Reads and verifies a whole entry. Returns None (no entry), a str (the
/// entry is corrupt: why), the pickle stream (bytes: a small entry without
/// out-of-band buffers), or (buffer, stream_offset, stream_length,
/// [(buffer_offset, buffer_length), ...]) with the file's bytes. The buffer is
/// a bytearray, or for entries of at least 1 MiB, `alloc(n)` when given (a
/// writable n-byte buffer, e.g. numpy.empty(n, uint8), whose allocator maps
/// large blocks with huge pages: far fewer page faults than a bytearray).
/// The result is memory the caller owns, whatever later happens to the file.
/// `key`: the call's key, which the entry's metadata must name (an entry of
/// another call at this path is corrupt: see `entry::check_key`).
#[pyfunction]
#[pyo3(signature = (entry, alloc=None, key=None))]
fn cache_load(
    py: Python<'_>,
    entry: &str,
    alloc: Option<&Bound<'_, PyAny>>,
    key: Option<&str>,
) -> PyResult<Py<PyAny>> {
    let corrupt = |reason: String| Ok(reason.into_pyobject(py)?.into_any().unbind());
    let check_key = |layout: &entry::Layout, bytes: &[u8]| match key {
        Some(key) => layout.check_key(bytes, key),
        None => Ok(()),
    };
    if let Some(bytes) = writer::global().get(Path::new(entry)) {
        // Not written yet: the queued bytes are what the file will hold.
        return match entry::verify_complete(&bytes) {
            Ok(layout) => match check_key(&layout, &bytes) {
                Ok(()) => loaded_small(py, &bytes, &layout),
                Err(reason) => corrupt(reason),
            },
            Err(reason) => corrupt(reason),
        };
    }
    // Most hits are small: open and read, nothing else.
    match entry::read_small_entry(Path::new(entry), SMALL_ENTRY_MAX).map_err(os_error)? {
        ReadOutcome::Missing => return Ok(py.None()),
        ReadOutcome::Corrupt(reason) => return corrupt(reason),
        ReadOutcome::Found(Some(whole)) => {
            let (layout, bytes) = &*whole;
            return match check_key(layout, bytes) {
                Ok(()) => loaded_small(py, bytes, layout),
                Err(reason) => corrupt(reason),
            };
        }
        ReadOutcome::Found(None) => {} // larger: read below, into memory sized for it
    }
    let reader = match entry::open_entry(Path::new(entry)).map_err(os_error)? {
        ReadOutcome::Found(r) => r,
        ReadOutcome::Missing => return Ok(py.None()),
        ReadOutcome::Corrupt(reason) => return corrupt(reason),
    };
    // Not an entry (however large the file), or not one of this length: no allocation.
    if let Some(reason) = reader.check_head().map_err(os_error)? {
        return corrupt(reason);
    }
    let len = reader.len() as usize;
    let (holder, outcome) = match alloc {
        Some(alloc) if len >= DETACH_MIN => {
            let holder = alloc.call1((len,))?;
            let mut view = WritableView::of(&holder, len)?;
            let dest = view.as_mut_slice();
            let outcome = py.detach(|| reader.read_into(dest)).map_err(os_error)?;
            let outcome = keyed(outcome, dest, key);
            drop(view);
            (holder, outcome)
        }
        _ => {
            // SAFETY: a NULL source asks CPython for an uninitialised bytearray of `len` bytes
            // (no zero-filling of what the read overwrites anyway).
            let array: Bound<'_, PyByteArray> = unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyByteArray_FromStringAndSize(std::ptr::null(), len as isize),
                )?
                .cast_into_unchecked()
            };
            // SAFETY: the bytearray was just created, nobody else references it, and it is not
            // resized while `dest` lives; its storage holds `len` bytes.
            let dest: &mut [u8] = unsafe {
                std::slice::from_raw_parts_mut(
                    ffi::PyByteArray_AsString(array.as_ptr()) as *mut u8,
                    len,
                )
            };
            let outcome = if len >= DETACH_MIN {
                py.detach(|| reader.read_into(dest))
            } else {
                reader.read_into(dest)
            }
            .map_err(os_error)?;
            (array.into_any(), keyed(outcome, dest, key))
        }
    };
    match outcome {
        ReadOutcome::Found(layout) => loaded(holder, &layout),
        ReadOutcome::Corrupt(reason) => corrupt(reason),
        ReadOutcome::Missing => Ok(py.None()),
    }
}

/// A whole entry read into `bytes`, refused (corrupt) when its metadata does
/// not name `key`.
fn keyed(
    outcome: ReadOutcome<entry::Layout>,
    bytes: &[u8],
    key: Option<&str>,
) -> ReadOutcome<entry::Layout> {
    match (outcome, key) {
        (ReadOutcome::Found(layout), Some(key)) => match layout.check_key(bytes, key) {
            Ok(()) => ReadOutcome::Found(layout),
            Err(reason) => ReadOutcome::Corrupt(reason),
        },
        (outcome, _) => outcome,
    }
}

/// Reads and verifies an entry's metadata, header and pickle stream only (for
/// mmap_mode). Returns None, a str (corrupt: why), or (stream bytes,
/// [(buffer_offset, buffer_length), ...], metadata JSON bytes), and with
/// `keep_open` a fourth item: a descriptor of the file read, the caller's to
/// map and close (the entry's name may meanwhile be another version's).
/// `touch`: count this read as a use of the entry (eviction is least recently used first).
/// `key`: the call's key, which the entry's metadata must name (else it is corrupt).
#[pyfunction]
#[pyo3(signature = (entry, touch=true, writable=false, keep_open=false, key=None))]
fn cache_load_head(
    py: Python<'_>,
    entry: &str,
    touch: bool,
    writable: bool,
    keep_open: bool,
    key: Option<&str>,
) -> PyResult<Py<PyAny>> {
    use std::os::fd::IntoRawFd;
    wait_for_write(py, entry);
    match entry::read_entry_head(Path::new(entry), touch, writable, key).map_err(os_error)? {
        ReadOutcome::Found(head) => {
            let mut items = vec![
                PyBytes::new(py, &head.stream).into_any(),
                ranges(py, &head.layout)?.into_any(),
                PyBytes::new(py, &head.metadata).into_any(),
            ];
            if keep_open {
                let fd = head.file.map(|f| f.into_raw_fd());
                items.push(fd.into_pyobject(py)?.into_any());
            }
            Ok(PyTuple::new(py, items)?.into_any().unbind())
        }
        ReadOutcome::Missing => Ok(py.None()),
        ReadOutcome::Corrupt(reason) => Ok(reason.into_pyobject(py)?.into_any().unbind()),
    }
}

/// Writes an entry (one-line metadata JSON, pickle stream, buffers) and
/// publishes it atomically, replacing any previous one. Returns its size in bytes.
#[pyfunction]
#[pyo3(signature = (entry, flags, metadata_json, stream, buffers, durable=false))]
fn cache_store(
    py: Python<'_>,
    entry: &str,
    flags: u32,
    metadata_json: &str,
    stream: &[u8],
    buffers: &Bound<'_, PyAny>,
    durable: bool,
) -> PyResult<u64> {
    let views = Views::of(buffers)?;
    let slices = views.slices();
    let total: usize = stream.len() + slices.iter().map(|s| s.len()).sum::<usize>();
    let path = Path::new(entry);
    let write = || entry::write_entry(path, flags, metadata_json, stream, &slices, durable);
    if total >= DETACH_MIN {
        py.detach(write)
    } else {
        write()
    }
    .map_err(os_error)
}

/// Writes an entry like `cache_store`, but in the background when it is
/// small (see perfkit_cache::writer): this process reads it from memory until
/// it is on disk. `root` is the cache's location (absolute): the background
/// writer never creates it again once removed. Returns the failures of
/// earlier background writes, as [(label, errno or None, message)], or None
/// (the usual case).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cache_store_later(
    py: Python<'_>,
    entry: &str,
    flags: u32,
    metadata_json: &str,
    stream: &[u8],
    buffers: &Bound<'_, PyAny>,
    label: &str,
    root: &str,
) -> PyResult<Option<Vec<Failure>>> {
    let views = Views::of(buffers)?;
    let slices = views.slices();
    let total: usize = stream.len() + slices.iter().map(|s| s.len()).sum::<usize>();
    let path = Path::new(entry);
    let wb = writer::global();
    if total > WRITE_BEHIND_MAX {
        let write = || entry::write_entry(path, flags, metadata_json, stream, &slices, false);
        py.detach(write).map_err(os_error)?;
    } else {
        let bytes =
            entry::encode_entry(path, flags, metadata_json, stream, &slices).map_err(os_error)?;
        drop(views);
        watch_removals();
        let root = Path::new(root);
        if wb.would_wait(bytes.len()) {
            py.detach(|| wb.submit(path.to_path_buf(), bytes, label, root));
        } else {
            wb.submit(path.to_path_buf(), bytes, label, root);
        }
    }
    Ok(failures(wb.take_failures()))
}

extern "C" {
    fn PySys_AddAuditHook(
        hook: unsafe extern "C" fn(*const c_char, *mut ffi::PyObject, *mut c_void) -> c_int,
        user_data: *mut c_void,
    ) -> c_int;
}

static WATCHING_REMOVALS: AtomicBool = AtomicBool::new(false);

/// Installs (once, at the first write left to the background writer) the
/// audit hook that tells the writer of directories about to be removed.
fn watch_removals() {
    if WATCHING_REMOVALS.load(Ordering::Relaxed) || WATCHING_REMOVALS.swap(true, Ordering::Relaxed)
    {
        return;
    }
    // SAFETY: called with the GIL held (from a #[pyfunction]); the hook is a
    // plain function that lives as long as the process.
    unsafe {
        if PySys_AddAuditHook(on_audit_event, std::ptr::null_mut()) != 0 {
            // Another audit hook refused ours: removals are then not watched.
            ffi::PyErr_Clear();
        }
    }
}

/// The audit hook: `shutil.rmtree(path)` (also `TemporaryDirectory`'s
/// cleanup) and `os.rmdir(path)` announce a removal before it starts. For
/// rmtree the background writer drops what it has queued under `path` and
/// waits for a write in progress there, so that the removal does not meet
/// files written meanwhile (`Directory not empty`) nor a location written
/// again after it; for rmdir, which removes only an empty directory, it
/// writes them first (a removal that fails then loses nothing). Every audited event of the process comes here: anything else
/// costs a comparison of its name.
unsafe extern "C" fn on_audit_event(
    event: *const c_char,
    args: *mut ffi::PyObject,
    _data: *mut c_void,
) -> c_int {
    // SAFETY: the interpreter passes a NUL-terminated event name and a tuple
    // of arguments, with the GIL held.
    let name = CStr::from_ptr(event).to_bytes();
    let is_rmdir = match name {
        b"shutil.rmtree" => false,
        b"os.rmdir" => true,
        _ => return 0,
    };
    if let Some(path) = removed_path(args, is_rmdir) {
        // shutil.rmtree refuses a symbolic link (it raises after the event):
        // nothing will be removed, so nothing queued is dropped.
        let refused = !is_rmdir && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink());
        if !refused {
            writer::global().removing(&path, !is_rmdir);
        }
    }
    0
}

/// The absolute path an rmtree/rmdir audit event names: (path[, dir_fd]).
/// None if it cannot be told (or, for `os.rmdir`, for one relative to a
/// directory descriptor: `shutil.rmtree`'s own, announced by its event).
/// Leaves no Python exception set.
unsafe fn removed_path(args: *mut ffi::PyObject, is_rmdir: bool) -> Option<PathBuf> {
    if ffi::PyTuple_Check(args) == 0 || ffi::PyTuple_Size(args) < 1 {
        return None;
    }
    let dir_fd = if ffi::PyTuple_Size(args) >= 2 {
        let fd = ffi::PyTuple_GetItem(args, 1);
        if fd.is_null() || fd == ffi::Py_None() {
            None
        } else {
            let fd = ffi::PyLong_AsLong(fd);
            if fd == -1 && !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
                return None;
            }
            Some(fd)
        }
    } else {
        None
    };
    let given = fs_path(ffi::PyTuple_GetItem(args, 0))?;
    let base = if given.is_absolute() {
        PathBuf::from("/")
    } else {
        match dir_fd {
            None => std::env::current_dir().ok()?,
            Some(_) if is_rmdir => return None,
            Some(fd) => std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?,
        }
    };
    Some(writer::absolute_path(&given, &base))
}

/// `os.fspath(obj)` as a path (str encoded as the file system encodes it).
unsafe fn fs_path(obj: *mut ffi::PyObject) -> Option<PathBuf> {
    if obj.is_null() {
        ffi::PyErr_Clear();
        return None;
    }
    let path = ffi::PyOS_FSPath(obj);
    if path.is_null() {
        ffi::PyErr_Clear();
        return None;
    }
    let bytes = if ffi::PyUnicode_Check(path) != 0 {
        let encoded = ffi::PyUnicode_EncodeFSDefault(path);
        ffi::Py_DECREF(path);
        if encoded.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        encoded
    } else {
        path
    };
    let mut data: *mut c_char = std::ptr::null_mut();
    let mut len: ffi::Py_ssize_t = 0;
    let out = if ffi::PyBytes_AsStringAndSize(bytes, &mut data, &mut len) == 0 {
        let raw = std::slice::from_raw_parts(data as *const u8, len as usize);
        Some(PathBuf::from(OsStr::from_bytes(raw)))
    } else {
        ffi::PyErr_Clear();
        None
    };
    ffi::Py_DECREF(bytes);
    out
}

/// A failed background write for Python: (label, errno or None, message).
type Failure = (String, Option<i32>, String);

/// Failed background writes, for Python.
fn failures(list: Vec<writer::WriteFailure>) -> Option<Vec<Failure>> {
    if list.is_empty() {
        return None;
    }
    Some(
        list.into_iter()
            .map(|f| {
                (
                    f.label.to_string(),
                    f.error.raw_os_error(),
                    f.error.to_string(),
                )
            })
            .collect(),
    )
}

fn wait_for_write(py: Python<'_>, entry: &str) {
    let wb = writer::global();
    if wb.get(Path::new(entry)).is_some() {
        py.detach(|| wb.wait_for(Path::new(entry)));
    }
}

fn flush_writes(py: Python<'_>) {
    let wb = writer::global();
    if !wb.is_idle() {
        py.detach(|| wb.flush());
    }
}

/// Waits until the entry at `entry`, if queued by `cache_store_later`, is on disk.
#[pyfunction]
fn cache_wait(py: Python<'_>, entry: &str) {
    wait_for_write(py, entry);
}

/// Waits until every entry queued by `cache_store_later` is on disk; returns
/// the failures as [(label, errno or None, message)], or None.
#[pyfunction]
fn cache_flush(py: Python<'_>) -> Option<Vec<Failure>> {
    flush_writes(py);
    failures(writer::global().take_failures())
}

/// For os.register_at_fork(after_in_child=...): the child starts with an empty write queue.
#[pyfunction]
fn cache_after_fork() {
    writer::reset_after_fork();
}

/// Removes an entry or a directory tree atomically (and drops the entries
/// queued under it). False if it did not exist.
#[pyfunction]
fn cache_remove(py: Python<'_>, path: &str) -> PyResult<bool> {
    let wb = writer::global();
    py.detach(|| {
        wb.forget_under(Path::new(path));
        store::remove_atomically(Path::new(path))
    })
    .map_err(os_error)
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Every entry under `root`, least recently used first: [(path, bytes, last_access_epoch_seconds)].
#[pyfunction]
fn cache_entries(py: Python<'_>, root: &str) -> Vec<(String, u64, f64)> {
    flush_writes(py);
    py.detach(|| {
        store::list_entries(Path::new(root))
            .into_iter()
            .map(|e| {
                (
                    e.path.to_string_lossy().into_owned(),
                    e.size,
                    epoch_secs(e.last_access),
                )
            })
            .collect()
    })
}

/// Evicts least recently used entries until the store fits; returns the removed paths.
#[pyfunction]
#[pyo3(signature = (root, bytes_limit=None, items_limit=None, age_limit=None))]
fn cache_reduce_size(
    py: Python<'_>,
    root: &str,
    bytes_limit: Option<u64>,
    items_limit: Option<u64>,
    age_limit: Option<f64>,
) -> PyResult<Vec<String>> {
    let limits = store::Limits {
        bytes: bytes_limit,
        items: items_limit,
        age: age_limit.map(|s| Duration::from_secs_f64(s.max(0.0))),
    };
    flush_writes(py);
    let removed = py
        .detach(|| store::reduce_size(Path::new(root), limits, SystemTime::now()))
        .map_err(os_error)?;
    Ok(removed
        .into_iter()
        .map(|e| e.path.to_string_lossy().into_owned())
        .collect())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cache_hash, m)?)?;
    m.add_function(wrap_pyfunction!(cache_key_of_scalars, m)?)?;
    m.add_function(wrap_pyfunction!(cache_load, m)?)?;
    m.add_function(wrap_pyfunction!(cache_load_head, m)?)?;
    m.add_function(wrap_pyfunction!(cache_store, m)?)?;
    m.add_function(wrap_pyfunction!(cache_store_later, m)?)?;
    m.add_function(wrap_pyfunction!(cache_wait, m)?)?;
    m.add_function(wrap_pyfunction!(cache_flush, m)?)?;
    m.add_function(wrap_pyfunction!(cache_after_fork, m)?)?;
    m.add_function(wrap_pyfunction!(cache_remove, m)?)?;
    m.add_function(wrap_pyfunction!(cache_entries, m)?)?;
    m.add_function(wrap_pyfunction!(cache_reduce_size, m)?)?;
    Ok(())
}
