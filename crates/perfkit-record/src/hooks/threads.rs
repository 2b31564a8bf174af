//! Threads started while profiling: `threading.setprofile` is the one hook
//! the threading module calls in each new thread, right after registering
//! it in `threading._active`. Ours ([`thread_started`]) runs on that thread's
//! first event: it names the thread's recorder, then either installs the C
//! profile hook in that thread (3.9–3.11 full mode, where hooks are
//! per-thread) or removes itself (every other case, where our hooks already
//! see all threads).

use crate::session::{Mode, ACTIVE};
use pyo3::ffi;
use pyo3::prelude::*;
use std::ptr;

static mut SAVED_HOOK: *mut ffi::PyObject = ptr::null_mut();
/// The hook handed to `threading.setprofile` (null until first installed).
pub(super) static mut REGISTRAR: *mut ffi::PyObject = ptr::null_mut();
#[cfg(not(Py_3_12))]
static mut INSTALL_PROFILE_HOOK: bool = false;

static mut REGISTRAR_DEF: ffi::PyMethodDef = ffi::PyMethodDef {
    ml_name: c"_perfkit_thread_started".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: thread_started,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: ptr::null(),
};

unsafe extern "C" fn thread_started(
    _slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    // This thread's recorder is named here, first: recorders of earlier
    // threads that had the same ident (ended) are not this thread.
    if !ACTIVE.is_null() {
        let ident = ffi::PyThread_get_thread_ident() as u64;
        if let Some(name) = thread_name(py, ident) {
            crate::session::name_this_thread(&name);
        }
    }
    #[cfg(not(Py_3_12))]
    if INSTALL_PROFILE_HOOK && !ACTIVE.is_null() {
        super::profile_hook::install_this_thread();
        // The event that woke us is the thread's first under our hook: pass it on.
        if nargs == 3 {
            super::profile_hook::dispatch_python_event(*args, *args.add(1), *args.add(2));
        }
    } else {
        ffi::PyEval_SetProfile(None, ptr::null_mut());
    }
    #[cfg(Py_3_12)]
    {
        let _ = (args, nargs);
        ffi::PyEval_SetProfile(None, ptr::null_mut());
    }
    if !ffi::PyErr_Occurred().is_null() {
        ffi::PyErr_Clear();
    }
    ffi::Py_INCREF(ffi::Py_None());
    ffi::Py_None()
}

/// `threading._active[ident]._name`, read without running Python code (no
/// `current_thread()`, no `name` property) so that no frame of ours is recorded.
pub(crate) fn thread_name(py: Python<'_>, ident: u64) -> Option<String> {
    let threading = py.import("threading").ok()?;
    let active = threading.getattr("_active").ok()?;
    let thread = active.get_item(ident).ok()?;
    thread.getattr("_name").ok()?.extract::<String>().ok()
}

pub(super) unsafe fn install(py: Python<'_>, mode: Mode) -> PyResult<()> {
    #[cfg(not(Py_3_12))]
    {
        INSTALL_PROFILE_HOOK = mode == Mode::Full;
    }
    #[cfg(Py_3_12)]
    let _ = mode;
    let threading = py.import("threading")?;
    let saved = threading.getattr("_profile_hook")?;
    if REGISTRAR.is_null() {
        REGISTRAR =
            ffi::PyCFunction_NewEx(&raw mut REGISTRAR_DEF, ptr::null_mut(), ptr::null_mut());
        if REGISTRAR.is_null() {
            return Err(PyErr::fetch(py));
        }
    }
    threading.call_method1("setprofile", (Bound::from_borrowed_ptr(py, REGISTRAR),))?;
    SAVED_HOOK = saved.into_ptr();
    Ok(())
}

pub(super) unsafe fn uninstall(py: Python<'_>) {
    let saved = if SAVED_HOOK.is_null() {
        py.None().into_bound(py)
    } else {
        Bound::from_owned_ptr(py, SAVED_HOOK)
    };
    SAVED_HOOK = ptr::null_mut();
    if let Ok(threading) = py.import("threading") {
        // Unless the program set a hook of its own meanwhile (threading.setprofile): that one stays.
        let ours = threading
            .getattr("_profile_hook")
            .is_ok_and(|hook| hook.as_ptr() == REGISTRAR);
        if ours {
            let _ = threading.setattr("_profile_hook", saved);
        }
    }
}
