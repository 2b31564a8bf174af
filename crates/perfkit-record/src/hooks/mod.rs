//! Installing and removing the hooks, per interpreter version and mode:
//!
//! | | full mode | Python frames only |
//! |---|---|---|
//! | 3.9–3.11 | C profile hook on every thread (`profile_hook`) | PEP 523 (`eval_frame`) |
//! | 3.12+ | PEP 523 for Python frames + `sys.monitoring` CALL/C_RETURN/C_RAISE for C calls | PEP 523 |
//!
//! On 3.12+ the PY_START/PY_RETURN family of `sys.monitoring` events is what
//! makes cProfile cost what it does; the frame-evaluation hook sees the same
//! Python calls while leaving the specializing interpreter on.

mod eval_frame;
#[cfg(Py_3_12)]
mod monitoring;
#[cfg(not(Py_3_12))]
mod profile_hook;
mod threads;

use crate::session::{Mode, StartError};
use pyo3::ffi;
use pyo3::prelude::*;

/// The `sys.monitoring` tool id cProfile uses; we take it too, so that the
/// two can never record at once without an error.
#[cfg(Py_3_12)]
pub(crate) const PROFILER_TOOL_ID: u8 = 2;
/// The tool id of a session that yields (see `Session::set_yields`): one no
/// tool is assigned, so that cProfile can start beside it.
#[cfg(Py_3_12)]
pub(crate) const YIELDING_TOOL_ID: u8 = 4;
/// The tool id the session recording now holds (set at enable, GIL held).
#[cfg(Py_3_12)]
pub(crate) static mut TOOL_ID: u8 = PROFILER_TOOL_ID;

fn uses_eval_frame(mode: Mode) -> bool {
    cfg!(Py_3_12) || mode == Mode::PythonFrames
}

/// Refuses to start while another profiler or frame-evaluation hook runs.
pub(crate) fn check_free(py: Python<'_>, mode: Mode) -> Result<(), StartError> {
    let sys = py.import("sys")?;
    // Full mode before 3.12 replaces every thread's profile function.
    #[cfg(not(Py_3_12))]
    if mode == Mode::Full {
        // SAFETY: GIL held (we have `py`).
        if let Some(other) = unsafe { profile_hook::foreign_profiler(py) } {
            return Err(StartError::Busy(format!(
                "another profiler is active: {other}; perfkit would take its profile hook away \
                 (sys.setprofile's, which cProfile, yappi and pyinstrument use too): stop it first"
            )));
        }
    }
    let other = sys.call_method0("getprofile")?;
    if !other.is_none() {
        return Err(StartError::Busy(format!(
            "another profiler is active in this thread (sys.getprofile() is {}); disable it first",
            other.repr()?
        )));
    }
    #[cfg(Py_3_12)]
    {
        // SAFETY: GIL held (we have `py`); written only at enable.
        let id = unsafe { TOOL_ID };
        let tool = sys.getattr("monitoring")?.call_method1("get_tool", (id,))?;
        if !tool.is_none() {
            // (Named as the holder registered itself: cProfile, line_profiler, …)
            return Err(StartError::Busy(format!(
                "sys.monitoring's tool id {id} (the profiler's) is held by {}; stop that tool first",
                tool.repr()?
            )));
        }
    }
    if uses_eval_frame(mode) && !eval_frame::is_default() {
        return Err(StartError::Busy(
            "another frame-evaluation hook (PEP 523) is installed, e.g. by a debugger or torch.compile; \
             perfkit cannot record alongside it"
                .into(),
        ));
    }
    Ok(())
}

/// # Safety
/// GIL held; the session globals are set.
pub(crate) unsafe fn install(py: Python<'_>, mode: Mode) -> Result<(), StartError> {
    threads::install(py, mode)?;
    #[cfg(Py_3_12)]
    {
        let claim = monitoring::claim(py);
        if let Err(e) = claim {
            threads::uninstall(py);
            return Err(e.into());
        }
        let events = match mode {
            Mode::Full => monitoring::install_c_calls(py),
            #[cfg(Py_3_13)]
            Mode::PythonFrames => monitoring::install_call_guard(py),
            #[cfg(not(Py_3_13))]
            Mode::PythonFrames => Ok(()),
        };
        {
            if let Err(e) = events {
                monitoring::release(py, false);
                threads::uninstall(py);
                return Err(e.into());
            }
        }
    }
    #[cfg(not(Py_3_12))]
    if mode == Mode::Full {
        profile_hook::install_all_threads();
    }
    if uses_eval_frame(mode) {
        eval_frame::install();
    }
    Ok(())
}

/// # Safety
/// GIL held; `install` succeeded for this mode.
pub(crate) unsafe fn uninstall(py: Python<'_>, mode: Mode) {
    if uses_eval_frame(mode) {
        eval_frame::uninstall();
    }
    #[cfg(not(Py_3_12))]
    if mode == Mode::Full {
        profile_hook::uninstall_all_threads();
    }
    #[cfg(Py_3_12)]
    {
        monitoring::release(py, mode == Mode::Full);
    }
    threads::uninstall(py);
    // Whatever a removal could not do must not leave an exception behind.
    if !ffi::PyErr_Occurred().is_null() {
        ffi::PyErr_Clear();
    }
}
