//! `sys.monitoring` (PEP 669, 3.12+): C calls in full mode, through native
//! callbacks for CALL, C_RETURN and C_RAISE, named and keyed exactly as
//! cProfile's own callbacks do (Modules/_lsprof.c, `get_cfunc_from_callable`).
//! Python calls come from the frame-evaluation hook instead.

use super::TOOL_ID;
use crate::frames::{self, CFunction};
use crate::session::{intern_cfunction, now, recorder};
use pyo3::ffi;
use pyo3::prelude::*;
use std::ptr;

static mut MISSING: *mut ffi::PyObject = ptr::null_mut();
#[cfg(Py_3_13)]
static mut DISABLE: *mut ffi::PyObject = ptr::null_mut();

static mut CALL_DEF: ffi::PyMethodDef = ffi::PyMethodDef {
    ml_name: c"_perfkit_call".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: on_call,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: ptr::null(),
};
#[cfg(Py_3_13)]
static mut GUARD_DEF: ffi::PyMethodDef = ffi::PyMethodDef {
    ml_name: c"_perfkit_call_guard".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: on_call_guard,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: ptr::null(),
};
static mut RETURN_DEF: ffi::PyMethodDef = ffi::PyMethodDef {
    ml_name: c"_perfkit_c_return".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: on_c_return,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: ptr::null(),
};

/// The `PyMethodDef` address that keys a called C function, or 0 when the
/// callable is not one: a built-in function, or a method descriptor called
/// with a `self` of its type (cProfile binds those and profiles the result).
#[inline(always)]
unsafe fn c_key(callable: *mut ffi::PyObject, arg0: *mut ffi::PyObject) -> usize {
    let ty = ffi::Py_TYPE(callable);
    if ty == &raw mut ffi::PyFunction_Type {
        return 0;
    }
    if ty == &raw mut ffi::PyMethodDescr_Type {
        let descr = callable as *mut ffi::PyMethodDescrObject;
        if arg0 == MISSING || ffi::PyObject_TypeCheck(arg0, (*descr).d_common.d_type) == 0 {
            return 0;
        }
        return (*descr).d_method as usize;
    }
    if frames::is_cfunction(callable) {
        // threading's `sys.setprofile(hook)` at the start of each new thread,
        // with perfkit's hook (which names the thread): perfkit's own call,
        // not the program's, and cProfile has no such row.
        if arg0 == super::threads::REGISTRAR {
            return 0;
        }
        return (*(callable as *mut CFunction)).m_ml as usize;
    }
    0
}

#[cold]
unsafe fn intern_callable(
    key: usize,
    callable: *mut ffi::PyObject,
    arg0: *mut ffi::PyObject,
) -> (u32, u8) {
    if ffi::Py_TYPE(callable) != &raw mut ffi::PyMethodDescr_Type {
        return intern_cfunction(key, callable);
    }
    let descr_get = (*ffi::Py_TYPE(callable))
        .tp_descr_get
        .expect("method descriptors bind");
    let bound = descr_get(callable, arg0, ffi::Py_TYPE(arg0) as *mut ffi::PyObject);
    if bound.is_null() {
        ffi::PyErr_Clear();
        return intern_cfunction(key, callable);
    }
    let out = intern_cfunction(key, bound);
    ffi::Py_DECREF(bound);
    out
}

#[inline(always)]
unsafe fn none() -> *mut ffi::PyObject {
    let none = ffi::Py_None();
    ffi::Py_INCREF(none);
    none
}

unsafe extern "C" fn on_call(
    _slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    if nargs >= 4 {
        let (callable, arg0) = (*args.add(2), *args.add(3));
        let key = c_key(callable, arg0);
        if key != 0 {
            let rec = recorder();
            if !rec.is_null() {
                let node = (*rec).child(key, || intern_callable(key, callable, arg0));
                (*rec).enter(node, now());
            }
        }
    }
    none()
}

/// Keeps a call site instrumented while it calls classes (see
/// [`install_call_guard`]); any other site is switched off for good with
/// `sys.monitoring.DISABLE`, so that it specializes and runs at full speed.
#[cfg(Py_3_13)]
unsafe extern "C" fn on_call_guard(
    _slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    if nargs >= 3 && ffi::PyType_Check(*args.add(2)) == 0 && !DISABLE.is_null() {
        ffi::Py_INCREF(DISABLE);
        return DISABLE;
    }
    none()
}

unsafe extern "C" fn on_c_return(
    _slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    if nargs >= 4 {
        let t = now();
        let key = c_key(*args.add(2), *args.add(3));
        if key != 0 {
            let rec = recorder();
            if !rec.is_null() {
                (*rec).exit_c(key, t);
            }
        }
    }
    none()
}

fn monitoring(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("sys")?.getattr("monitoring")
}

/// Takes cProfile's tool id, so that cProfile cannot start while we record.
pub(super) unsafe fn claim(py: Python<'_>) -> PyResult<()> {
    let m = monitoring(py)?;
    m.call_method1("use_tool_id", (TOOL_ID, "perfkit"))?;
    if MISSING.is_null() {
        MISSING = m.getattr("MISSING")?.into_ptr();
    }
    Ok(())
}

/// Registers `callbacks` (event name, method) and turns those events on.
unsafe fn register(py: Python<'_>, callbacks: &[(&str, *mut ffi::PyMethodDef)]) -> PyResult<()> {
    let m = monitoring(py)?;
    let events = m.getattr("events")?;
    let mut all = 0i64;
    for &(event, def) in callbacks {
        let func = ffi::PyCFunction_NewEx(def, ptr::null_mut(), ptr::null_mut());
        if func.is_null() {
            return Err(PyErr::fetch(py));
        }
        let func = Bound::from_owned_ptr(py, func);
        let id: i64 = events.getattr(event)?.extract()?;
        m.call_method1("register_callback", (TOOL_ID, id, &func))?;
        all |= id;
    }
    m.call_method1("set_events", (TOOL_ID, all))?;
    Ok(())
}

/// Whether a Python-frames session on 3.13 may have disabled CALL sites
/// (see [`install_call_guard`]); GIL held for every use.
static mut SITES_DISABLED: bool = false;

pub(super) unsafe fn install_c_calls(py: Python<'_>) -> PyResult<()> {
    register(
        py,
        &[
            ("CALL", &raw mut CALL_DEF),
            ("C_RETURN", &raw mut RETURN_DEF),
            ("C_RAISE", &raw mut RETURN_DEF),
        ],
    )
}

/// Python-frames mode on 3.13: the specialized CALL_ALLOC_AND_ENTER_INIT
/// (`SomeClass(...)`) pushes the `__init__` frame without asking the
/// frame-evaluation hook, so those calls would go unseen. Instrumented CALL
/// instructions are never specialized, so a CALL callback keeps class calls
/// on the path the hook sees. Sites whose first callable is not a class are
/// disabled at once: paying for every call would double the mode's cost. (A
/// site that first calls a function and later a class can then miss that
/// `__init__`; such polymorphic sites are rare, and full mode sees them.)
#[cfg(Py_3_13)]
pub(super) unsafe fn install_call_guard(py: Python<'_>) -> PyResult<()> {
    let m = monitoring(py)?;
    if DISABLE.is_null() {
        DISABLE = m.getattr("DISABLE")?.into_ptr();
    }
    // Sites disabled in an earlier session must see classes again.
    m.call_method0("restart_events")?;
    SITES_DISABLED = true;
    register(py, &[("CALL", &raw mut GUARD_DEF)])
}

/// Removes our callbacks and frees the tool id; safe to call in any state.
/// If another tool took the id while we recorded (VizTracer frees it, whoever
/// holds it, and takes it), its events and callbacks are its own now: they
/// stay, and in full mode (`c_calls`) the user is told that C calls are
/// missing from the profile.
pub(super) unsafe fn release(py: Python<'_>, c_calls: bool) {
    let Ok(m) = monitoring(py) else { return };
    let id = TOOL_ID;
    let holder = m
        .call_method1("get_tool", (id,))
        .ok()
        .filter(|t| !t.is_none());
    let ours = holder
        .as_ref()
        .is_some_and(|t| t.extract::<String>().ok().as_deref() == Some("perfkit"));
    if !ours {
        // Freed (by another tool, which may have used it and stopped since) or taken.
        let who = holder
            .as_ref()
            .and_then(|t| t.repr().ok())
            .map(|r| r.to_string())
            .unwrap_or_else(|| "another tool".into());
        let msg = format!(
            "perfkit: {who} took sys.monitoring's profiler slot (tool id {id}) while perfkit recorded, \
             so the C calls made since are missing from this profile (its Python calls are all there); \
             run the two one after the other"
        );
        if let Some(msg) = std::ffi::CString::new(msg).ok().filter(|_| c_calls) {
            if ffi::PyErr_WarnEx(ffi::PyExc_RuntimeWarning, msg.as_ptr(), 1) != 0 {
                ffi::PyErr_Clear();
            }
        }
        if holder.is_some() {
            // The other tool's events and callbacks now: they stay.
            if SITES_DISABLED {
                let _ = m.call_method0("restart_events");
                SITES_DISABLED = false;
            }
            return;
        }
    }
    let _ = m.call_method1("set_events", (TOOL_ID, 0));
    if SITES_DISABLED {
        // The sites the guard disabled stay disabled for this tool id (which
        // is cProfile's): a later full session, or cProfile, would miss every
        // C call made there.
        let _ = m.call_method0("restart_events");
        SITES_DISABLED = false;
    }
    if let Ok(events) = m.getattr("events") {
        for name in ["CALL", "C_RETURN", "C_RAISE"] {
            if let Ok(e) = events.getattr(name) {
                let _ = m.call_method1("register_callback", (TOOL_ID, e, py.None()));
            }
        }
    }
    if let Ok(tool) = m.call_method1("get_tool", (TOOL_ID,)) {
        if tool.extract::<String>().ok().as_deref() == Some("perfkit") {
            let _ = m.call_method1("free_tool_id", (TOOL_ID,));
        }
    }
}
