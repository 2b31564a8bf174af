//! Reading interpreter frames: the one place that knows CPython's private
//! frame layouts, with one path per version. The structs mirror
//! `Include/internal/pycore_frame.h` (3.11–3.13) and
//! `Include/cpython/frameobject.h` (3.9–3.10) up to the last field we read;
//! the fields after it are never touched, so their changes cannot hurt us.

use pyo3::ffi;

/// What the frame-evaluation hook receives (PEP 523): a frame object before
/// 3.11, an interpreter frame from 3.11 on.
#[cfg(not(Py_3_11))]
pub type EvalFrame = ffi::PyFrameObject;
#[cfg(Py_3_11)]
pub type EvalFrame = ffi::_PyInterpreterFrame;

#[cfg(not(Py_3_11))]
#[repr(C)]
struct FrameObject {
    ob_base: ffi::PyVarObject,
    f_back: *mut ffi::PyObject,
    f_code: *mut ffi::PyObject,
}

#[cfg(all(Py_3_11, not(Py_3_12)))]
#[repr(C)]
struct FrameObject {
    ob_base: ffi::PyObject,
    f_back: *mut ffi::PyObject,
    f_frame: *mut InterpreterFrame,
}

#[cfg(all(Py_3_11, not(Py_3_12)))]
#[repr(C)]
struct InterpreterFrame {
    f_func: *mut ffi::PyObject,
    f_globals: *mut ffi::PyObject,
    f_builtins: *mut ffi::PyObject,
    f_locals: *mut ffi::PyObject,
    f_code: *mut ffi::PyObject,
    frame_obj: *mut ffi::PyObject,
    previous: *mut InterpreterFrame,
    prev_instr: *mut u16,
    stacktop: libc::c_int,
    is_entry: bool,
    owner: libc::c_char,
}

#[cfg(Py_3_12)]
#[repr(C)]
struct InterpreterFrame {
    /// `f_code` on 3.12, `f_executable` (a code object here) on 3.13.
    f_code: *mut ffi::PyObject,
    previous: *mut InterpreterFrame,
    f_funcobj: *mut ffi::PyObject,
    f_globals: *mut ffi::PyObject,
    f_builtins: *mut ffi::PyObject,
    f_locals: *mut ffi::PyObject,
    frame_obj: *mut ffi::PyObject,
    instr: *mut u16,
    stacktop: libc::c_int,
    return_offset: u16,
    owner: libc::c_char,
}

/// `FRAME_OWNED_BY_GENERATOR` in every version that has owners (3.11+).
#[cfg(Py_3_11)]
const FRAME_OWNED_BY_GENERATOR: libc::c_char = 1;

/// The code object of a frame object, as the profile hook receives it (borrowed).
///
/// # Safety
/// `frame` must be a live frame object and the GIL held.
#[cfg(not(Py_3_12))]
#[inline(always)]
pub unsafe fn code_of_frame_object(frame: *mut ffi::PyFrameObject) -> *mut ffi::PyObject {
    let f = frame as *mut FrameObject;
    #[cfg(not(Py_3_11))]
    {
        (*f).f_code
    }
    #[cfg(Py_3_11)]
    {
        (*(*f).f_frame).f_code
    }
}

/// The code object of the frame the evaluation hook is about to run (borrowed),
/// or null when the frame runs something other than a code object.
///
/// # Safety
/// `frame` must be the frame passed to the evaluation hook, with the GIL held.
#[inline(always)]
pub unsafe fn code_of_eval_frame(frame: *mut EvalFrame) -> *mut ffi::PyObject {
    #[cfg(not(Py_3_11))]
    {
        code_of_frame_object(frame)
    }
    #[cfg(Py_3_11)]
    {
        let code = (*(frame as *mut InterpreterFrame)).f_code;
        // 3.13's f_executable may in principle hold a non-code object.
        if ffi::PyCode_Check(code) != 0 {
            code
        } else {
            std::ptr::null_mut()
        }
    }
}

/// Whether this evaluation resumes a suspended generator or coroutine (a
/// call, as cProfile counts it) rather than the evaluation that merely
/// creates it. From 3.11 a generator function's call runs its frame up to
/// RETURN_GENERATOR, which no profiler reports as a call; before 3.11 that
/// evaluation does not happen at all.
///
/// # Safety
/// As [`code_of_eval_frame`].
#[inline(always)]
pub unsafe fn is_generator_resume(frame: *mut EvalFrame) -> bool {
    #[cfg(not(Py_3_11))]
    {
        let _ = frame;
        true
    }
    #[cfg(Py_3_11)]
    {
        (*(frame as *mut InterpreterFrame)).owner == FRAME_OWNED_BY_GENERATOR
    }
}

/// `PyThreadState` (`Include/cpython/pystate.h`) up to `tracing`.
#[cfg(not(Py_3_10))]
#[repr(C)]
struct ThreadState {
    prev: *mut ffi::PyThreadState,
    next: *mut ffi::PyThreadState,
    interp: *mut ffi::PyInterpreterState,
    frame: *mut ffi::PyFrameObject,
    recursion_depth: libc::c_int,
    overflowed: libc::c_char,
    recursion_critical: libc::c_char,
    stackcheck_counter: libc::c_int,
    tracing: libc::c_int,
    use_tracing: libc::c_int,
    c_profilefunc: Option<ffi::Py_tracefunc>,
    c_tracefunc: Option<ffi::Py_tracefunc>,
    c_profileobj: *mut ffi::PyObject,
}

#[cfg(all(Py_3_10, not(Py_3_11)))]
#[repr(C)]
struct ThreadState {
    prev: *mut ffi::PyThreadState,
    next: *mut ffi::PyThreadState,
    interp: *mut ffi::PyInterpreterState,
    frame: *mut ffi::PyFrameObject,
    recursion_depth: libc::c_int,
    recursion_headroom: libc::c_int,
    stackcheck_counter: libc::c_int,
    tracing: libc::c_int,
    cframe: *mut libc::c_void,
    c_profilefunc: Option<ffi::Py_tracefunc>,
    c_tracefunc: Option<ffi::Py_tracefunc>,
    c_profileobj: *mut ffi::PyObject,
}

#[cfg(all(Py_3_11, not(Py_3_12)))]
#[repr(C)]
struct ThreadState {
    prev: *mut ffi::PyThreadState,
    next: *mut ffi::PyThreadState,
    interp: *mut ffi::PyInterpreterState,
    initialized: libc::c_int,
    is_static: libc::c_int,
    recursion_remaining: libc::c_int,
    recursion_limit: libc::c_int,
    recursion_headroom: libc::c_int,
    tracing: libc::c_int,
    tracing_what: libc::c_int,
    cframe: *mut libc::c_void,
    c_profilefunc: Option<ffi::Py_tracefunc>,
    c_tracefunc: Option<ffi::Py_tracefunc>,
    c_profileobj: *mut ffi::PyObject,
}

#[cfg(all(Py_3_12, not(Py_3_13)))]
#[repr(C)]
struct ThreadState {
    prev: *mut ffi::PyThreadState,
    next: *mut ffi::PyThreadState,
    interp: *mut ffi::PyInterpreterState,
    status: libc::c_uint,
    py_recursion_remaining: libc::c_int,
    py_recursion_limit: libc::c_int,
    c_recursion_remaining: libc::c_int,
    recursion_headroom: libc::c_int,
    tracing: libc::c_int,
    what_event: libc::c_int,
    cframe: *mut CFrame,
}

/// `_PyCFrame` (3.12): the thread's link to the frame it runs.
#[cfg(all(Py_3_12, not(Py_3_13)))]
#[repr(C)]
struct CFrame {
    current_frame: *mut InterpreterFrame,
}

#[cfg(Py_3_13)]
#[repr(C)]
struct ThreadState {
    prev: *mut ffi::PyThreadState,
    next: *mut ffi::PyThreadState,
    interp: *mut ffi::PyInterpreterState,
    eval_breaker: libc::uintptr_t,
    status: libc::c_uint,
    whence: libc::c_int,
    state: libc::c_int,
    py_recursion_remaining: libc::c_int,
    py_recursion_limit: libc::c_int,
    c_recursion_remaining: libc::c_int,
    recursion_headroom: libc::c_int,
    tracing: libc::c_int,
    what_event: libc::c_int,
    current_frame: *mut InterpreterFrame,
}

/// Whether the thread is inside a trace, profile or `sys.monitoring`
/// callback (a debugger's or coverage's tracer, or our own C-call events
/// naming a function): what runs there is the tool's, and cProfile never
/// sees it, since the interpreter sends no events while `tracing` is set.
///
/// # Safety
/// `tstate` must be the current thread state, GIL held.
#[inline(always)]
pub unsafe fn is_tracing(tstate: *mut ffi::PyThreadState) -> bool {
    (*(tstate as *mut ThreadState)).tracing > 0
}

/// The C profile function set in `tstate` (`PyEval_SetProfile`), if any,
/// and the object it was set with (null for a tool that sets none, as yappi
/// does, so that `sys.getprofile()` is None while it profiles).
///
/// # Safety
/// GIL held; `tstate` a live thread state of this interpreter.
#[cfg(not(Py_3_12))]
pub unsafe fn profile_func_of(
    tstate: *mut ffi::PyThreadState,
) -> (Option<ffi::Py_tracefunc>, *mut ffi::PyObject) {
    let ts = tstate as *mut ThreadState;
    ((*ts).c_profilefunc, (*ts).c_profileobj)
}

/// Whether `frame`, which the hook is still evaluating, has already
/// returned and is being freed: its return made the thread's current frame
/// the evaluator's entry shim that `frame->previous` points to, and that is
/// where code run by freeing its locals (a `__del__`, a weakref callback, a
/// generator's `finally`) is called from. cProfile's return event came
/// before that code; the hook's own return comes after it.
///
/// # Safety
/// `tstate` current, GIL held; `frame` a frame this thread's hook is evaluating.
#[cfg(Py_3_12)]
#[inline(always)]
pub unsafe fn has_returned(tstate: *mut ffi::PyThreadState, frame: *mut EvalFrame) -> bool {
    let ts = tstate as *mut ThreadState;
    #[cfg(not(Py_3_13))]
    let current = (*(*ts).cframe).current_frame;
    #[cfg(Py_3_13)]
    let current = (*ts).current_frame;
    let frame = frame as *mut InterpreterFrame;
    current != frame && current == (*frame).previous
}

/// Whether the interpreter will refuse to run the frame it is about to
/// evaluate because the Python recursion limit is reached (and no
/// RecursionError is being handled, which grants headroom): cProfile never
/// sees such a frame start, so it is not a call.
///
/// # Safety
/// `tstate` current, GIL held.
#[inline(always)]
pub unsafe fn at_recursion_limit(tstate: *mut ffi::PyThreadState) -> bool {
    let ts = tstate as *mut ThreadState;
    #[cfg(not(Py_3_11))]
    {
        // The evaluator counts the frame in, then compares with the limit.
        if (*ts).recursion_depth < ffi::Py_GetRecursionLimit() {
            return false;
        }
        #[cfg(not(Py_3_10))]
        return (*ts).overflowed == 0 && (*ts).recursion_critical == 0;
        #[cfg(Py_3_10)]
        return (*ts).recursion_headroom == 0;
    }
    #[cfg(all(Py_3_11, not(Py_3_12)))]
    let remaining = (*ts).recursion_remaining;
    #[cfg(Py_3_12)]
    let remaining = (*ts).py_recursion_remaining;
    #[cfg(Py_3_11)]
    return remaining <= 0 && (*ts).recursion_headroom == 0;
}

/// What one entry into `_PyEval_EvalFrameDefault` takes from a thread's C
/// recursion budget (`PY_EVAL_C_STACK_UNITS`, `Include/internal/pycore_ceval.h`).
#[cfg(Py_3_12)]
pub const EVAL_C_STACK_UNITS: libc::c_int = 2;

/// The thread's C recursion budget (`c_recursion_remaining`), which 3.12+
/// spends on each entry into the evaluator but not on the Python calls it
/// inlines.
///
/// # Safety
/// `tstate` must be the current thread state, GIL held.
#[cfg(Py_3_12)]
#[inline(always)]
pub unsafe fn c_recursion_remaining(tstate: *mut ffi::PyThreadState) -> *mut libc::c_int {
    &raw mut (*(tstate as *mut ThreadState)).c_recursion_remaining
}

extern "C" {
    /// The interpreter's own frame evaluator, exported on every supported version.
    pub fn _PyEval_EvalFrameDefault(
        tstate: *mut ffi::PyThreadState,
        frame: *mut EvalFrame,
        throwflag: libc::c_int,
    ) -> *mut ffi::PyObject;

    /// Exported by CPython (Objects/typeobject.c) on every supported version;
    /// cProfile uses it to name built-in methods.
    pub fn _PyType_Lookup(
        ty: *mut ffi::PyTypeObject,
        name: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;

    /// Present since 3.9 (Python/ceval.c): sets the profile function of any thread.
    #[cfg(not(Py_3_12))]
    pub fn _PyEval_SetProfile(
        tstate: *mut ffi::PyThreadState,
        func: Option<ffi::Py_tracefunc>,
        arg: *mut ffi::PyObject,
    ) -> libc::c_int;
}

/// The layout of a built-in function object (`PyCFunctionObject`, the same
/// on 3.9–3.13) up to the fields cProfile reads.
#[repr(C)]
pub struct CFunction {
    pub ob_base: ffi::PyObject,
    pub m_ml: *mut ffi::PyMethodDef,
    pub m_self: *mut ffi::PyObject,
    pub m_module: *mut ffi::PyObject,
}

/// `PyCFunction_Check`, with the exact-type tests first: this runs on every call event.
///
/// # Safety
/// `obj` must be a live object, GIL held.
#[inline(always)]
pub unsafe fn is_cfunction(obj: *mut ffi::PyObject) -> bool {
    let ty = ffi::Py_TYPE(obj);
    ty == &raw mut ffi::PyCFunction_Type
        || ty == &raw mut ffi::PyCMethod_Type
        || (ty != &raw mut ffi::PyFunction_Type
            && ffi::PyType_IsSubtype(ty, &raw mut ffi::PyCFunction_Type) != 0)
}
