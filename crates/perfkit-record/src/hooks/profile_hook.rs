//! The C-level profile hook (`PyEval_SetProfile`), cProfile's own mechanism
//! on 3.9–3.11: full mode there. Hooks are per thread, so it is set on every
//! thread that exists at enable, and on new ones by `threads`.

use crate::frames::{self, _PyEval_SetProfile, CFunction};
use crate::session::{intern_cfunction, intern_code, now, recorder};
use pyo3::ffi;
use std::ptr;

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

unsafe fn for_each_thread(f: impl Fn(*mut ffi::PyThreadState)) {
    let interp = ffi::PyInterpreterState_Get();
    let mut ts = ffi::PyInterpreterState_ThreadHead(interp);
    while !ts.is_null() {
        f(ts);
        ts = ffi::PyThreadState_Next(ts);
    }
}

pub(super) unsafe fn install_all_threads() {
    for_each_thread(|ts| {
        _PyEval_SetProfile(ts, Some(callback), ptr::null_mut());
    });
}

pub(super) unsafe fn install_this_thread() {
    ffi::PyEval_SetProfile(Some(callback), ptr::null_mut());
}

pub(super) unsafe fn uninstall_all_threads() {
    for_each_thread(|ts| {
        _PyEval_SetProfile(ts, None, ptr::null_mut());
    });
}
