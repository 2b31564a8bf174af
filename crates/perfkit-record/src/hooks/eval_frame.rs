//! The PEP 523 frame-evaluation hook: every evaluation of a Python frame
//! (a call, or a generator's resumption) passes through [`eval_frame`],
//! which times it around the interpreter's own evaluator. Unlike a profile
//! or trace function it leaves the specializing interpreter on.
//!
//! The price is that each Python call becomes a C call, which the plain
//! interpreter (3.11+) would have run inside its own loop: [`evaluate`]
//! gives back the C recursion budget such an entry costs on 3.12+, so a
//! recursion runs as deep as it does unprofiled, and the C stack itself is
//! guarded instead ([`crate::stack`]).

use crate::frames::{self, _PyEval_EvalFrameDefault, EvalFrame};
use crate::recorder::FLAG_GENERATOR;
use crate::session::{self, intern_code, now, recorder};
use crate::stack;
use pyo3::ffi;

unsafe extern "C" fn eval_frame(
    tstate: *mut ffi::PyThreadState,
    frame: *mut EvalFrame,
    throwflag: libc::c_int,
) -> *mut ffi::PyObject {
    let rec = recorder();
    if rec.is_null() || frames::is_tracing(tstate) {
        // Not recorded, but still a C call per Python call: guarded all the same.
        if stack::is_below(stack::this_thread_guard()) {
            return refuse_deeper(tstate, frame);
        }
        return evaluate(tstate, frame, throwflag);
    }
    if frames::at_recursion_limit(tstate) {
        return evaluate(tstate, frame, throwflag);
    }
    if stack::is_below((*rec).stack_guard) {
        return refuse_deeper(tstate, frame);
    }
    #[cfg(Py_3_12)]
    {
        let top = (*rec).top_frame();
        if top != 0 && frames::has_returned(tstate, top as *mut EvalFrame) {
            (*rec).end_returned(top, now());
        }
    }
    let code = frames::code_of_eval_frame(frame);
    if code.is_null() {
        return evaluate(tstate, frame, throwflag);
    }
    let node = (*rec).child(code as usize, || intern_code(code));
    if (*rec).flags(node) & FLAG_GENERATOR != 0 && !frames::is_generator_resume(frame) {
        return evaluate(tstate, frame, throwflag);
    }
    let gen = session::GEN;
    let depth = (*rec).enter_frame(node, now(), frame as usize);
    let result = evaluate(tstate, frame, throwflag);
    let t = now();
    // A disable (and maybe a new enable) inside this frame flushed or replaced
    // the recorder's stack: this frame's return then belongs to no one.
    if session::GEN == gen {
        (*rec).exit_to(depth, t);
    }
    result
}

/// The interpreter's evaluator, entered as the plain interpreter would have
/// run the call: on 3.12+ without spending the C recursion budget, which
/// would otherwise end a recursion of ~750 Python calls (3.12) or ~5,000
/// (3.13) that runs unprofiled.
#[inline(always)]
unsafe fn evaluate(
    tstate: *mut ffi::PyThreadState,
    frame: *mut EvalFrame,
    throwflag: libc::c_int,
) -> *mut ffi::PyObject {
    #[cfg(Py_3_12)]
    {
        let budget = frames::c_recursion_remaining(tstate);
        *budget += frames::EVAL_C_STACK_UNITS;
        let result = _PyEval_EvalFrameDefault(tstate, frame, throwflag);
        *budget -= frames::EVAL_C_STACK_UNITS;
        result
    }
    #[cfg(not(Py_3_12))]
    _PyEval_EvalFrameDefault(tstate, frame, throwflag)
}

/// Ends a call that would take the thread's C stack past its guard: a
/// RecursionError raised inside the frame (as `generator.throw` does into
/// a frame not yet run), so the interpreter unwinds and frees it as it does
/// any failed frame.
#[cold]
#[inline(never)]
unsafe fn refuse_deeper(
    tstate: *mut ffi::PyThreadState,
    frame: *mut EvalFrame,
) -> *mut ffi::PyObject {
    ffi::PyErr_SetString(
        ffi::PyExc_RecursionError,
        c"maximum recursion depth exceeded while profiling: under perfkit each Python call also uses C stack, and this thread's is three-quarters full (raise it with `ulimit -s` or threading.stack_size(), or profile a shallower run)".as_ptr(),
    );
    _PyEval_EvalFrameDefault(tstate, frame, 1)
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
