//! The C-level profile hook (`PyEval_SetProfile`), cProfile's own mechanism
//! on 3.9–3.11: full mode there. Hooks are per thread, so it is set on every
//! thread that exists at enable, and on new ones by `threads`.

use crate::frames::{self, _PyEval_SetProfile, CFunction};
use crate::session::{intern_cfunction, intern_code, now, recorder, this_thread_left_out};
use pyo3::ffi;
use pyo3::types::PyAnyMethods;
use std::ffi::{c_char, c_void, CStr};
use std::ptr;
use std::sync::Mutex;

extern "C" {
    fn PySys_AddAuditHook(
        hook: unsafe extern "C" fn(*const c_char, *mut ffi::PyObject, *mut c_void) -> libc::c_int,
        user_data: *mut c_void,
    ) -> libc::c_int;
}

/// Threads (by `PyThreadState_GetID`) whose profile function is ours now.
/// Only touched with the GIL held; the lock is uncontended.
static HOOKED_THREADS: Mutex<Vec<i64>> = Mutex::new(Vec::new());

fn hooked_threads() -> std::sync::MutexGuard<'static, Vec<i64>> {
    HOOKED_THREADS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Set while perfkit itself changes a profile function, so that the audit
/// hook lets our own calls through.
static mut SETTING_OURS: bool = false;
static mut AUDIT_HOOK_ADDED: bool = false;

/// Before 3.12, `sys.setprofile` and `cProfile.Profile.enable` simply replace
/// a thread's profile function: started while perfkit records, cProfile would
/// silently take perfkit's hook away and both profiles would be wrong. Every
/// replacement passes the `sys.setprofile` audit event, so a process-wide
/// audit hook (they cannot be removed; ours is inert without a session)
/// refuses it with a clear error in the threads perfkit is watching.
unsafe extern "C" fn refuse_foreign_setprofile(
    event: *const c_char,
    _args: *mut ffi::PyObject,
    _data: *mut c_void,
) -> libc::c_int {
    // SAFETY: the interpreter passes a NUL-terminated event name; the GIL is held.
    if SETTING_OURS || CStr::from_ptr(event).to_bytes() != b"sys.setprofile" {
        return 0;
    }
    let id = ffi::PyThreadState_GetID(ffi::PyThreadState_Get());
    // (A thread the recording leaves out, a Jupyter kernel's, keeps our hook
    // only because enable hooks every thread: its own profiler may take it.)
    if !hooked_threads().contains(&id) || in_thread_bootstrap() || this_thread_left_out() {
        return 0;
    }
    // A session that yields (a pool worker's) stops, and the new profiler starts.
    if crate::session::give_way(pyo3::Python::assume_attached()) {
        return 0;
    }
    ffi::PyErr_SetString(
        ffi::PyExc_RuntimeError,
        c"perfkit is profiling this thread; a second profiler (cProfile, sys.setprofile) would take its hook away. Disable perfkit's profiler first".as_ptr(),
    );
    -1
}

/// Whether the caller is `threading`'s thread bootstrap, which sets the
/// thread-start profile hook (perfkit's own, while it records) as its thread's
/// profile function. A thread started just before enable reaches it with our
/// C hook already set (enable hooks every thread); refused, the thread died
/// before running its target.
unsafe fn in_thread_bootstrap() -> bool {
    let frame = ffi::PyEval_GetFrame();
    if frame.is_null() {
        return false;
    }
    let code = ffi::PyFrame_GetCode(frame);
    let name = ffi::PyObject_GetAttrString(code as *mut ffi::PyObject, c"co_name".as_ptr());
    ffi::Py_DECREF(code as *mut ffi::PyObject);
    if name.is_null() {
        ffi::PyErr_Clear();
        return false;
    }
    let is = ffi::PyUnicode_CompareWithASCIIString(name, c"_bootstrap_inner".as_ptr()) == 0;
    ffi::Py_DECREF(name);
    is
}

/// Runs `f`, which sets a profile function of ours, past the audit guard.
unsafe fn setting_ours(f: impl FnOnce()) {
    SETTING_OURS = true;
    f();
    SETTING_OURS = false;
}

unsafe extern "C" fn callback(
    _obj: *mut ffi::PyObject,
    frame: *mut ffi::PyFrameObject,
    what: libc::c_int,
    arg: *mut ffi::PyObject,
) -> libc::c_int {
    let rec = recorder();
    if rec.is_null() {
        return 0;
    }
    match what {
        ffi::PyTrace_CALL => {
            let code = frames::code_of_frame_object(frame);
            let node = (*rec).child(code as usize, || intern_code(code));
            (*rec).enter(node, now());
        }
        ffi::PyTrace_RETURN => (*rec).exit(now()),
        ffi::PyTrace_C_CALL if frames::is_cfunction(arg) => {
            let key = (*(arg as *mut CFunction)).m_ml as usize;
            let node = (*rec).child(key, || intern_cfunction(key, arg));
            (*rec).enter(node, now());
        }
        ffi::PyTrace_C_RETURN | ffi::PyTrace_C_EXCEPTION if frames::is_cfunction(arg) => {
            let t = now();
            (*rec).exit_c((*(arg as *mut CFunction)).m_ml as usize, t);
        }
        _ => {}
    }
    0
}

/// Feeds an event given as a Python-level profile function sees it
/// (`frame, "call", arg`) to [`callback`].
pub(super) unsafe fn dispatch_python_event(
    frame: *mut ffi::PyObject,
    event: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
) {
    if ffi::PyFrame_Check(frame) == 0 || ffi::PyUnicode_Check(event) == 0 {
        return;
    }
    let mut len: ffi::Py_ssize_t = 0;
    let p = ffi::PyUnicode_AsUTF8AndSize(event, &mut len);
    if p.is_null() {
        ffi::PyErr_Clear();
        return;
    }
    let what = match std::slice::from_raw_parts(p as *const u8, len as usize) {
        b"call" => ffi::PyTrace_CALL,
        b"return" => ffi::PyTrace_RETURN,
        b"c_call" => ffi::PyTrace_C_CALL,
        b"c_return" => ffi::PyTrace_C_RETURN,
        b"c_exception" => ffi::PyTrace_C_EXCEPTION,
        _ => return,
    };
    callback(ptr::null_mut(), frame as *mut ffi::PyFrameObject, what, arg);
}

unsafe fn for_each_thread(mut f: impl FnMut(*mut ffi::PyThreadState)) {
    let interp = ffi::PyInterpreterState_Get();
    let mut ts = ffi::PyInterpreterState_ThreadHead(interp);
    while !ts.is_null() {
        f(ts);
        ts = ffi::PyThreadState_Next(ts);
    }
}

/// Another tool's profile function, set in some thread now: what full mode
/// would take away (`install_all_threads` replaces every thread's). Read at
/// the C level: yappi sets its hook with no object, so `sys.getprofile()`
/// is None while it profiles, and cProfile running in another thread is not
/// this thread's `sys.getprofile()`. Returns how to name it in an error.
pub(super) unsafe fn foreign_profiler(py: pyo3::Python<'_>) -> Option<String> {
    let mut found = None;
    for_each_thread(|ts| {
        if found.is_some() {
            return;
        }
        let (func, obj) = frames::profile_func_of(ts);
        let Some(func) = func else { return };
        if func as usize == callback as *const () as usize {
            return;
        }
        let what = if obj.is_null() {
            format!("a C profile function from {}", library_of(func as usize))
        } else {
            let obj = pyo3::Bound::from_borrowed_ptr(py, obj);
            obj.repr()
                .map(|r| r.to_string())
                .unwrap_or_else(|_| "an object".into())
        };
        let thread = if ts == ffi::PyThreadState_Get() {
            "this thread"
        } else {
            "another thread"
        };
        found = Some(format!("{what}, in {thread}"));
    });
    if !ffi::PyErr_Occurred().is_null() {
        ffi::PyErr_Clear();
    }
    found
}

/// The file of the shared library that holds code address `addr` (yappi's
/// extension module, say), as the loader knows it.
fn library_of(addr: usize) -> String {
    #[cfg(unix)]
    // SAFETY: dladdr only reads the loader's tables; dli_fname, when set, is a
    // NUL-terminated path that lives as long as the library stays loaded.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(addr as *const c_void, &mut info) != 0 && !info.dli_fname.is_null() {
            let path = CStr::from_ptr(info.dli_fname).to_string_lossy();
            return std::path::Path::new(&*path)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.into_owned());
        }
    }
    format!("address {addr:#x}")
}

pub(super) unsafe fn install_all_threads() {
    if !AUDIT_HOOK_ADDED {
        AUDIT_HOOK_ADDED = true;
        if PySys_AddAuditHook(refuse_foreign_setprofile, ptr::null_mut()) != 0 {
            // Another audit hook refused ours: record anyway, unguarded.
            ffi::PyErr_Clear();
        }
    }
    let mut hooked = hooked_threads();
    setting_ours(|| {
        for_each_thread(|ts| {
            if _PyEval_SetProfile(ts, Some(callback), ptr::null_mut()) == 0 {
                hooked.push(ffi::PyThreadState_GetID(ts));
            }
        })
    });
}

pub(super) unsafe fn install_this_thread() {
    let mut hooked = hooked_threads();
    setting_ours(|| {
        ffi::PyEval_SetProfile(Some(callback), ptr::null_mut());
        hooked.push(ffi::PyThreadState_GetID(ffi::PyThreadState_Get()));
    });
}

pub(super) unsafe fn uninstall_all_threads() {
    hooked_threads().clear();
    for_each_thread(|ts| {
        _PyEval_SetProfile(ts, None, ptr::null_mut());
    });
}
