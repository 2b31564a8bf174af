//! Naming functions exactly as cProfile does, so that pstats keys match:
//! Python functions by their code object, C functions by `normalizeUserObj`
//! in CPython's Modules/_lsprof.c.

use crate::frames::{_PyType_Lookup, CFunction};
use perfkit_profile::FuncKey;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyModule, PyString};
use std::ffi::CStr;

/// `(co_filename, co_firstlineno, co_name)` of a code object.
pub(crate) fn code_key(code: &Bound<'_, PyAny>) -> FuncKey {
    let get_str = |attr: &str| {
        code.getattr(attr)
            .and_then(|v| match v.extract::<String>() {
                Ok(s) => Ok(s),
                // A lone surrogate: a path that is not UTF-8 on disk, which
                // Python decodes with surrogateescape. Written the way
                // marshal writes it ("surrogatepass") and read back as
                // perfkit reads a cProfile file holding it, so the rest of the
                // name is kept and both profilers' files name it alike.
                Err(_) => v
                    .call_method1("encode", ("utf-8", "surrogatepass"))
                    .and_then(|b| b.extract::<Vec<u8>>())
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
            })
            .unwrap_or_else(|_| "?".to_owned())
    };
    let line = code
        .getattr("co_firstlineno")
        .and_then(|v| v.extract::<u32>())
        .unwrap_or(0);
    FuncKey::new(get_str("co_filename"), line, get_str("co_name"))
}

/// Whether a code object is a generator, coroutine or async generator.
pub(crate) fn code_is_generator(code: &Bound<'_, PyAny>) -> bool {
    let flags = code
        .getattr("co_flags")
        .and_then(|v| v.extract::<i32>())
        .unwrap_or(0);
    flags & (ffi::CO_GENERATOR | ffi::CO_COROUTINE | ffi::CO_ASYNC_GENERATOR) != 0
}

/// cProfile's name for a built-in function or method: `<built-in method
/// builtins.len>`, `<method 'append' of 'list' objects>`, `<math.sqrt>`.
///
/// # Safety
/// `func` must be a live `PyCFunctionObject` (or subtype).
pub(crate) unsafe fn cfunction_key(py: Python<'_>, func: *mut ffi::PyObject) -> FuncKey {
    let f = func as *mut CFunction;
    let ml = (*f).m_ml;
    let ml_name = if ml.is_null() || (*ml).ml_name.is_null() {
        "?".to_owned()
    } else {
        CStr::from_ptr((*ml).ml_name).to_string_lossy().into_owned()
    };
    let module_name = |module: *mut ffi::PyObject| -> Option<String> {
        if module.is_null() {
            return None;
        }
        let module = Bound::from_borrowed_ptr(py, module);
        if let Ok(s) = module.cast::<PyString>() {
            return s.to_str().ok().map(str::to_owned);
        }
        if let Ok(m) = module.cast::<PyModule>() {
            return m
                .name()
                .ok()
                .and_then(|n| n.to_str().ok().map(str::to_owned));
        }
        None
    };
    let self_ = (*f).m_self;
    let name = if self_.is_null() {
        match module_name((*f).m_module) {
            Some(m) if m != "builtins" => format!("<{m}.{ml_name}>"),
            _ => format!("<{ml_name}>"),
        }
    } else {
        let method_repr = PyString::new(py, &ml_name).into_ptr();
        let found = _PyType_Lookup(ffi::Py_TYPE(self_), method_repr);
        ffi::Py_DECREF(method_repr);
        let repr = if found.is_null() {
            None
        } else {
            Bound::from_borrowed_ptr(py, found)
                .repr()
                .ok()
                .map(|r| r.to_string())
        };
        match repr {
            Some(r) => r,
            None => {
                // Only a str m_module counts here, as in _lsprof.c.
                let module = (*f).m_module;
                if !module.is_null() && ffi::PyUnicode_Check(module) != 0 {
                    let m = module_name(module).unwrap_or_default();
                    format!("<built-in method {m}.{ml_name}>")
                } else {
                    format!("<built-in method {ml_name}>")
                }
            }
        }
    };
    FuncKey::builtin(name)
}
