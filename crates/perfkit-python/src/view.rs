//! Bindings to perfkit-view: loading the files for the viewer, and serving
//! them with the GIL released while Ctrl-C stays responsive.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use perfkit_view::{Server, Viewer};

use crate::cli::note;
use pyo3::prelude::*;

pub(crate) fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}

fn label(path: &Path) -> String {
    path.display().to_string()
}

/// Loads one file (its view) or two (the second compared with the first).
pub(crate) fn load_viewer(files: &[PathBuf]) -> Result<Viewer, String> {
    let load = |p: &Path| perfkit_profile::load(p).map_err(|e| e.to_string());
    match files {
        [one] => Ok(Viewer::single(label(one), load(one)?)),
        [before, after] => Ok(Viewer::diff(
            label(before),
            load(before)?,
            label(after),
            load(after)?,
        )),
        _ => Err("give one profile to view, or two to compare (before after)".into()),
    }
}

/// Serves the viewer until Ctrl-C; returns the exit code (130 after Ctrl-C).
pub(crate) fn serve(
    py: Python<'_>,
    files: &[PathBuf],
    host: &str,
    port: u16,
    open_browser: bool,
) -> Result<i32, String> {
    let viewer = py.detach(|| {
        let viewer = load_viewer(files)?;
        viewer.prepare();
        Ok::<_, String>(viewer)
    })?;
    // Ctrl-C while the files were read: stop before serving them.
    if py.check_signals().is_err() {
        note(format_args!("perfkit: viewer stopped"));
        return Ok(130);
    }
    let server = Server::start(Arc::new(viewer), host, port)?;
    let url = server.url();
    if !perfkit_view::server::is_loopback(server.addr().ip()) {
        note(format_args!(
            "perfkit: warning: listening on {} — anyone who can reach this address can read the profile",
            server.addr()
        ));
    }
    let shown: Vec<String> = files.iter().map(|f| label(f)).collect();
    // (A stdout that cannot be written loses the line; the viewer still serves.)
    let _ = writeln!(
        std::io::stdout().lock(),
        "perfkit: viewing {} at {url} (press Ctrl-C to stop)",
        shown.join(" → ")
    );
    let _ = py
        .import("sys")
        .and_then(|sys| sys.getattr("stdout"))
        .and_then(|out| out.call_method0("flush"));
    if open_browser {
        // Python's webbrowser knows the platform's ways to open a page.
        let opened = py
            .import("webbrowser")
            .and_then(|wb| wb.call_method1("open", (url.as_str(),)));
        match opened {
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) => {
                py.detach(|| server.stop());
                note(format_args!("perfkit: viewer stopped"));
                return Ok(130);
            }
            Ok(r) if r.is_truthy().unwrap_or(false) => {}
            _ => note(format_args!(
                "perfkit: could not open a browser; open {url} yourself"
            )),
        }
    }
    // The server answers on its own threads; this thread only waits, without
    // the GIL, and looks at Python's signal flags between naps.
    loop {
        py.detach(|| std::thread::sleep(Duration::from_millis(150)));
        if py.check_signals().is_err() {
            break;
        }
    }
    py.detach(|| server.stop());
    note(format_args!("perfkit: viewer stopped"));
    Ok(130)
}
