//! joblib's `delayed`: `delayed(f)(*args, **kwargs)` returns the task
//! `(f, args, kwargs)`.
//!
//! User code calls these once per task (`delayed(f)(x) for x in …`), so
//! 100,000 tiny tasks must not cost more to describe than to run. Hence a
//! hand-made type rather than a `#[pyclass]`: PyO3 calls a pyclass through
//! `tp_call` and its generic argument parsing, while this type has
//! vectorcall, so describing a task costs what building the tuple inline in
//! Python costs (measured: 10.1 against 12.3 ms per 100,000). `delayed`
//! itself is a METH_O function for the same reason. This module owns only the
//! wrapper and the reuse of the last one; what a task means is parallel.py's.

use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;

/// The instance layout of `perfkit._native.Delayed`.
#[repr(C)]
struct DelayedObject {
    ob_base: ffi::PyObject,
    /// The wrapped callable (a strong reference; NULL only while being cleared).
    function: *mut ffi::PyObject,
    vectorcall: Option<ffi::vectorcallfunc>,
}

/// The `Delayed` type, made once when the module is imported.
static DELAYED_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(null_mut());

/// A strong reference to the wrapper of the last plain function given to
/// `delayed`, handed out again for the same function: `delayed(f)(x) for x
/// in …` then makes no wrapper per task. Only plain functions (`def`,
/// lambda) are kept, never bound methods or other callables (which could
/// hold a large object alive), and `Parallel` forgets it at the end of each
/// call (`delayed_forget`).
struct Kept(*mut ffi::PyObject);
// SAFETY: the pointer is only read or replaced under the mutex, with the GIL held.
unsafe impl Send for Kept {}
static LAST_DELAYED: Mutex<Kept> = Mutex::new(Kept(null_mut()));

fn last_delayed() -> std::sync::MutexGuard<'static, Kept> {
    // A panic cannot happen while the lock is held; take it back if it ever did.
    LAST_DELAYED.lock().unwrap_or_else(|e| e.into_inner())
}

/// `wrapper(*args, **kwargs)`: the task `(function, args, kwargs)`, with a new
/// dict each time (as joblib's), so that tasks never share mutable state.
unsafe extern "C" fn delayed_vectorcall(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with `callable` a live Delayed object and
    // `args` holding nargs positional values followed by one value per name
    // in `kwnames` (a tuple of str, or NULL); every reference is borrowed.
    unsafe {
        let function = (*(callable as *mut DelayedObject)).function;
        if function.is_null() {
            ffi::PyErr_SetString(
                ffi::PyExc_TypeError,
                c"this delayed() wrapper is empty".as_ptr(),
            );
            return null_mut();
        }
        let nargs = ffi::PyVectorcall_NARGS(nargsf);
        let positional = ffi::PyTuple_New(nargs);
        if positional.is_null() {
            return null_mut();
        }
        for i in 0..nargs {
            let value = *args.offset(i);
            ffi::Py_INCREF(value);
            ffi::PyTuple_SET_ITEM(positional, i, value);
        }
        let keywords = ffi::PyDict_New();
        if keywords.is_null() {
            ffi::Py_DECREF(positional);
            return null_mut();
        }
        if !kwnames.is_null() {
            for j in 0..ffi::PyTuple_GET_SIZE(kwnames) {
                let name = ffi::PyTuple_GET_ITEM(kwnames, j);
                if ffi::PyDict_SetItem(keywords, name, *args.offset(nargs + j)) < 0 {
                    ffi::Py_DECREF(positional);
                    ffi::Py_DECREF(keywords);
                    return null_mut();
                }
            }
        }
        let task = ffi::PyTuple_New(3);
        if task.is_null() {
            ffi::Py_DECREF(positional);
            ffi::Py_DECREF(keywords);
            return null_mut();
        }
        ffi::Py_INCREF(function);
        ffi::PyTuple_SET_ITEM(task, 0, function);
        ffi::PyTuple_SET_ITEM(task, 1, positional);
        ffi::PyTuple_SET_ITEM(task, 2, keywords);
        task
    }
}

unsafe extern "C" fn delayed_traverse(
    slf: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: `slf` is a live Delayed object; a heap type's instances also
    // visit their type (Python 3.9+).
    unsafe {
        let function = (*(slf as *mut DelayedObject)).function;
        if !function.is_null() {
            let r = visit(function, arg);
            if r != 0 {
                return r;
            }
        }
        visit(ffi::Py_TYPE(slf) as *mut ffi::PyObject, arg)
    }
}

unsafe extern "C" fn delayed_clear(slf: *mut ffi::PyObject) -> c_int {
    // SAFETY: `slf` is a live Delayed object; the field is set to NULL before
    // the reference is dropped (the drop may run arbitrary code).
    unsafe {
        let this = slf as *mut DelayedObject;
        let function = (*this).function;
        (*this).function = null_mut();
        ffi::Py_XDECREF(function);
    }
    0
}

unsafe extern "C" fn delayed_dealloc(slf: *mut ffi::PyObject) {
    // SAFETY: called once, when the last reference to `slf` goes; instances
    // of a heap type hold a reference to it, released last.
    unsafe {
        let tp = ffi::Py_TYPE(slf);
        ffi::PyObject_GC_UnTrack(slf as *mut c_void);
        delayed_clear(slf);
        ffi::PyObject_GC_Del(slf as *mut c_void);
        ffi::Py_DECREF(tp as *mut ffi::PyObject);
    }
}

unsafe extern "C" fn delayed_repr(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: `slf` is a live Delayed object; %R takes a live object.
    unsafe {
        let function = (*(slf as *mut DelayedObject)).function;
        if function.is_null() {
            return ffi::PyUnicode_FromString(c"delayed(<empty>)".as_ptr());
        }
        ffi::PyUnicode_FromFormat(c"delayed(%R)".as_ptr(), function)
    }
}

/// Attribute lookup: the attributes `functools.wraps` copies (`__name__`,
/// `__qualname__`, `__doc__`, `__module__`) come from the wrapped function,
/// as on joblib's wrapper (code that logs `task.__name__` must work on
/// both). A callable without a name (`functools.partial`, an instance) gets
/// the names joblib's wrapper keeps then; the rest as usual.
unsafe extern "C" fn delayed_getattro(
    slf: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: `slf` is a live Delayed object and `name` a live object (a str
    // when it is one of ours, checked before it is compared); the function is
    // held by a reference of our own while its attribute is looked up.
    unsafe {
        let function = (*(slf as *mut DelayedObject)).function;
        if function.is_null() || ffi::PyUnicode_Check(name) == 0 {
            return ffi::PyObject_GenericGetAttr(slf, name);
        }
        let is =
            |attr: &std::ffi::CStr| ffi::PyUnicode_CompareWithASCIIString(name, attr.as_ptr()) == 0;
        let fallback = if is(c"__name__") {
            Some(c"delayed_function")
        } else if is(c"__qualname__") {
            Some(c"delayed.<locals>.delayed_function")
        } else if is(c"__doc__") || is(c"__module__") {
            None
        } else {
            return ffi::PyObject_GenericGetAttr(slf, name);
        };
        ffi::Py_INCREF(function);
        let value = ffi::PyObject_GetAttr(function, name);
        ffi::Py_DECREF(function);
        if !value.is_null() || ffi::PyErr_ExceptionMatches(ffi::PyExc_AttributeError) == 0 {
            return value;
        }
        ffi::PyErr_Clear();
        match fallback {
            Some(text) => ffi::PyUnicode_FromString(text.as_ptr()),
            None => ffi::PyObject_GenericGetAttr(slf, name),
        }
    }
}

/// A new wrapper of `function` (a new reference, or NULL with an exception set).
unsafe fn new_delayed(function: *mut ffi::PyObject) -> *mut ffi::PyObject {
    let tp = DELAYED_TYPE.load(Ordering::Acquire);
    // SAFETY: the type was made at import (before `delayed` can be called);
    // GenericAlloc zeroes the instance (and tracks it: the NULL field is
    // fine for traverse) and takes a reference to the heap type.
    unsafe {
        let obj = ffi::PyType_GenericAlloc(tp, 0);
        if obj.is_null() {
            return null_mut();
        }
        let this = obj as *mut DelayedObject;
        ffi::Py_INCREF(function);
        (*this).function = function;
        (*this).vectorcall = Some(delayed_vectorcall);
        obj
    }
}

/// `delayed(function)` (METH_O): the wrapper; the kept one for the same plain function.
unsafe extern "C" fn delayed_function(
    _module: *mut ffi::PyObject,
    function: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: `function` is a borrowed live object; Kept holds a strong
    // reference to a Delayed object, read and replaced under the lock.
    unsafe {
        let plain = ffi::PyFunction_Check(function) != 0;
        if plain {
            let kept = last_delayed();
            if !kept.0.is_null() && (*(kept.0 as *mut DelayedObject)).function == function {
                ffi::Py_INCREF(kept.0);
                return kept.0;
            }
        } else if ffi::PyCallable_Check(function) == 0 {
            ffi::PyErr_Format(
                ffi::PyExc_TypeError,
                c"delayed() needs a callable, got %.200s".as_ptr(),
                (*ffi::Py_TYPE(function)).tp_name,
            );
            return null_mut();
        }
        let wrapper = new_delayed(function);
        if wrapper.is_null() || !plain {
            return wrapper;
        }
        ffi::Py_INCREF(wrapper);
        let previous = std::mem::replace(&mut last_delayed().0, wrapper);
        // Released after the lock: its destructor may run code that calls `delayed`.
        ffi::Py_XDECREF(previous);
        wrapper
    }
}

/// Forgets the wrapper `delayed` keeps for reuse (so that it holds nothing alive).
#[pyfunction]
fn delayed_forget() {
    let previous = std::mem::replace(&mut last_delayed().0, null_mut());
    // SAFETY: `previous` was a strong reference owned by Kept; the GIL is held
    // (a #[pyfunction] runs attached).
    unsafe { ffi::Py_XDECREF(previous) };
}

/// Static C descriptions handed to CPython (which keeps pointers to them).
struct Descriptions {
    function: ffi::PyMethodDef,
}
// SAFETY: written once before use and never changed; CPython only reads them.
unsafe impl Sync for Descriptions {}

static DESCRIPTIONS: Descriptions = Descriptions {
    function: ffi::PyMethodDef {
        ml_name: c"delayed".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: delayed_function,
        },
        ml_flags: ffi::METH_O,
        ml_doc: c"delayed(function)\n--\n\nWraps `function` so that calling the wrapper returns the task \
(function, args, kwargs), as joblib.delayed does.\nThe same wrapper is handed out again for the same plain \
function until the end of the current Parallel call."
            .as_ptr(),
    },
};

fn make_type(py: Python<'_>) -> PyResult<*mut ffi::PyTypeObject> {
    // CPython copies the members into the type; the rest is read during the call.
    let members = [
        ffi::PyMemberDef {
            name: c"__wrapped__".as_ptr(),
            type_code: ffi::Py_T_OBJECT_EX,
            offset: std::mem::offset_of!(DelayedObject, function) as ffi::Py_ssize_t,
            flags: ffi::Py_READONLY,
            doc: c"The wrapped function (as functools.wraps exposes it).".as_ptr(),
        },
        ffi::PyMemberDef {
            name: c"__vectorcalloffset__".as_ptr(),
            type_code: ffi::Py_T_PYSSIZET,
            offset: std::mem::offset_of!(DelayedObject, vectorcall) as ffi::Py_ssize_t,
            flags: ffi::Py_READONLY,
            doc: std::ptr::null(),
        },
        ffi::PyMemberDef::default(),
    ];
    let slot = |slot, pfunc: *mut c_void| ffi::PyType_Slot { slot, pfunc };
    let mut slots = [
        slot(ffi::Py_tp_dealloc, delayed_dealloc as *mut c_void),
        slot(ffi::Py_tp_traverse, delayed_traverse as *mut c_void),
        slot(ffi::Py_tp_clear, delayed_clear as *mut c_void),
        slot(ffi::Py_tp_call, ffi::PyVectorcall_Call as *mut c_void),
        slot(ffi::Py_tp_repr, delayed_repr as *mut c_void),
        slot(ffi::Py_tp_getattro, delayed_getattro as *mut c_void),
        slot(ffi::Py_tp_members, members.as_ptr() as *mut c_void),
        slot(
            ffi::Py_tp_doc,
            c"What delayed(f) returns: calling it gives the task (f, args, kwargs).".as_ptr()
                as *mut c_void,
        ),
        ffi::PyType_Slot::default(),
    ];
    let mut spec = ffi::PyType_Spec {
        name: c"perfkit._native.Delayed".as_ptr(),
        basicsize: std::mem::size_of::<DelayedObject>() as c_int,
        itemsize: 0,
        flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_HAVE_GC | ffi::Py_TPFLAGS_HAVE_VECTORCALL)
            as std::ffi::c_uint,
        slots: slots.as_mut_ptr(),
    };
    // SAFETY: the spec and its arrays are valid for the duration of the call.
    let tp = unsafe { ffi::PyType_FromSpec(&mut spec) };
    if tp.is_null() {
        return Err(PyErr::fetch(py));
    }
    let tp = tp as *mut ffi::PyTypeObject;
    // Wrappers come only from `delayed` (Python could otherwise make one with
    // no function: DISALLOW_INSTANTIATION does this from 3.10).
    // SAFETY: the type is new and not yet visible to any other code.
    unsafe {
        (*tp).tp_new = None;
        ffi::PyType_Modified(tp);
    }
    Ok(tp)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    if DELAYED_TYPE.load(Ordering::Acquire).is_null() {
        let tp = make_type(py)?;
        // The type lives as long as the process (a strong reference kept here).
        DELAYED_TYPE.store(tp, Ordering::Release);
    }
    let tp = DELAYED_TYPE.load(Ordering::Acquire);
    // SAFETY: `tp` is a live type object (kept alive by the reference above).
    let tp_obj = unsafe { Bound::from_borrowed_ptr(py, tp as *mut ffi::PyObject) };
    m.add("Delayed", tp_obj)?;
    let module_name = m.name()?;
    // SAFETY: the method description is static; module and name are live.
    let function = unsafe {
        let raw = ffi::PyCFunction_NewEx(
            &DESCRIPTIONS.function as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
            m.as_ptr(),
            module_name.as_ptr(),
        );
        Bound::from_owned_ptr_or_err(py, raw)
    }
    .map_err(|e| PyRuntimeError::new_err(format!("could not make delayed(): {e}")))?;
    m.add("delayed", function)?;
    m.add_function(wrap_pyfunction!(delayed_forget, m)?)?;
    Ok(())
}
