//! The `perfkit._native` extension module: bindings to the Rust crates and
//! the `perfkit` command line. It translates types and errors and holds no
//! logic of its own: recording lives in `perfkit-record`, files and tables
//! in `perfkit-profile`.

mod cache;
mod cli;
mod delayed;
mod pool;
mod profiler;
mod tasks;
mod view;

use pyo3::prelude::*;

pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

pyo3::create_exception!(
    _native,
    ProfileError,
    pyo3::exceptions::PyValueError,
    "A profile file could not be read or written."
);

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", VERSION)?;
    m.add("ProfileError", m.py().get_type::<ProfileError>())?;
    m.add_class::<profiler::Session>()?;
    m.add_class::<profiler::Recording>()?;
    m.add_function(wrap_pyfunction!(profiler::load, m)?)?;
    m.add_function(wrap_pyfunction!(cli::cli_main, m)?)?;
    view::register(m)?;
    delayed::register(m)?;
    pool::register(m)?;
    tasks::register(m)?;
    cache::register(m)?;
    Ok(())
}
