//! The `perfkit._native` extension module: bindings to the Rust crates and
//! the `perfkit` command line. It translates types and errors: recording
//! lives in `perfkit-record`, files and tables in `perfkit-profile`, the
//! worker pool in `perfkit-pool`. The one exception is perfkit.Parallel's
//! per-task work on Python objects (`delayed`, drawing a batch from the
//! caller's generator, a worker's task loop, packed values: `delayed.rs`,
//! `pool.rs`, `tasks.rs`), which needs the C API and so cannot live in the
//! Python-free pool crate.

mod cache;
mod cli;
mod delayed;
mod pool;
mod pool_room;
mod profiler;
mod tasks;
mod view;

use pyo3::prelude::*;

pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

// Named after the package that exports it, so that pickle finds the class:
// a worker's task that raises it must be able to send it back.
pyo3::create_exception!(
    perfkit,
    ProfileError,
    pyo3::exceptions::PyValueError,
    "A profile's bytes could not be read or written (a file the system refuses is an OSError)."
);

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", VERSION)?;
    m.add("ProfileError", m.py().get_type::<ProfileError>())?;
    m.add_class::<profiler::Session>()?;
    m.add_class::<profiler::Recording>()?;
    m.add_function(wrap_pyfunction!(profiler::load, m)?)?;
    m.add_function(wrap_pyfunction!(profiler::acquire_unrecorded, m)?)?;
    m.add_function(wrap_pyfunction!(profiler::release_unrecorded, m)?)?;
    m.add_function(wrap_pyfunction!(profiler::recording_now, m)?)?;
    m.add_function(wrap_pyfunction!(profiler::adopt_worker_tree, m)?)?;
    m.add_function(wrap_pyfunction!(profiler::adopt_dask_tree, m)?)?;
    m.add(
        "WORKER_TREE_MARK",
        pyo3::types::PyBytes::new(m.py(), profiler::WORKER_TREE_MARK),
    )?;
    m.add_function(wrap_pyfunction!(cli::cli_main, m)?)?;
    view::register(m)?;
    delayed::register(m)?;
    pool::register(m)?;
    tasks::register(m)?;
    pool_room::register(m)?;
    cache::register(m)?;
    Ok(())
}
