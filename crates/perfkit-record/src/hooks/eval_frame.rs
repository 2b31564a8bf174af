//! The PEP 523 frame-evaluation hook: every evaluation of a Python frame
//! (a call, or a generator's resumption) passes through [`eval_frame`],
//! which times it around the interpreter's own evaluator. Unlike a profile
//! or trace function it leaves the specializing interpreter on.

use crate::frames::{self, _PyEval_EvalFrameDefault, EvalFrame};
use crate::recorder::FLAG_GENERATOR;
use crate::session::{self, intern_code, now, recorder};
use pyo3::ffi;

unsafe extern "C" fn eval_frame(
    tstate: *mut ffi::PyThreadState,
    frame: *mut EvalFrame,
    throwflag: libc::c_int,
) -> *mut ffi::PyObject {
    let rec = recorder();
    if rec.is_null() {
        return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
    }
    let code = frames::code_of_eval_frame(frame);
    if code.is_null() {
        return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
    }
    let node = (*rec).child(code as usize, || intern_code(code));
    if (*rec).flags(node) & FLAG_GENERATOR != 0 && !frames::is_generator_resume(frame) {
        return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
    }
    let gen = session::GEN;
    let depth = (*rec).enter(node, now());
    let result = _PyEval_EvalFrameDefault(tstate, frame, throwflag);
    let t = now();
    // A disable (and maybe a new enable) inside this frame flushed or replaced
    // the recorder's stack: this frame's return then belongs to no one.
    if session::GEN == gen {
        (*rec).exit_to(depth, t);
    }
    result
}

fn interp() -> *mut ffi::PyInterpreterState {
    // SAFETY: called with the GIL held, so there is a current interpreter.
    unsafe { ffi::PyInterpreterState_Get() }
}

pub(super) fn is_default() -> bool {
    // SAFETY: GIL held by every caller.
    unsafe {
        let current = ffi::_PyInterpreterState_GetEvalFrameFunc(interp());
        #[cfg(not(Py_3_11))]
        let current = current.map(|f| f as usize).unwrap_or(0);
        #[cfg(Py_3_11)]
        let current = current as usize;
        current == _PyEval_EvalFrameDefault as *const () as usize || current == 0
    }
}

pub(super) unsafe fn install() {
    ffi::_PyInterpreterState_SetEvalFrameFunc(interp(), Some(eval_frame));
}

pub(super) unsafe fn uninstall() {
    // Setting the default evaluator back lets the interpreter inline Python calls again.
    ffi::_PyInterpreterState_SetEvalFrameFunc(interp(), Some(_PyEval_EvalFrameDefault));
}
