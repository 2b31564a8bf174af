//! The page (served, or exported with its data embedded) and the flame-graph SVG.

use perfkit_profile::CallTree;

use crate::api::Viewer;

const PAGE: &str = include_str!("assets/index.html");
const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// Frames narrower than this share of the whole are left out of an export.
pub const EXPORT_MIN_FRACTION: f64 = 1.0 / 50_000.0;
/// At most this many frames per view go into an export.
pub const EXPORT_MAX_NODES: usize = 200_000;

/// The page with its style and script inline; with `data`, the JSON the
/// page would otherwise fetch (then it needs no server).
pub fn page(data: Option<&str>) -> String {
    let data = match data {
        // Inside <script>, "<" could close the element: JSON allows it escaped.
        Some(d) => d.replace('<', "\\u003c"),
        None => String::new(),
    };
    // One pass over the template, each marker filled once: what goes in (a
    // profile's names, in the data) may hold a marker's text, which must stay text.
    let mut out = String::with_capacity(PAGE.len() + STYLE.len() + data.len() + SCRIPT.len());
    let mut rest = PAGE;
    for (marker, text) in [
        ("/*STYLE*/", STYLE),
        ("/*DATA*/", data.as_str()),
        ("/*SCRIPT*/", SCRIPT),
    ] {
        let at = rest
            .find(marker)
            .expect("index.html holds each marker once, in this order");
        out.push_str(&rest[..at]);
        out.push_str(text);
        rest = &rest[at + marker.len()..];
    }
    out.push_str(rest);
    out
}

/// One self-contained HTML file: the page and the profile's data.
pub fn html(viewer: &Viewer) -> String {
    page(Some(
        &viewer.embedded_json(EXPORT_MIN_FRACTION, EXPORT_MAX_NODES),
    ))
}

/// The page (`page`'s output) inline in a notebook's output, where no
/// server can be reached (remote Jupyter, Colab, VS Code): an `<iframe>`
/// holding it in `srcdoc`. Sandboxed to its scripts: the page needs nothing
/// else, and a profile read from someone else's file gets no access to the
/// notebook it is shown in.
pub fn iframe(page: &str) -> String {
    let mut out = String::with_capacity(page.len() + page.len() / 8 + 160);
    out.push_str(
        r#"<iframe sandbox="allow-scripts" title="perfkit profile" style="width: 100%; height: 820px; border: 1px solid #8886;" srcdoc=""#,
    );
    for c in page.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out.push_str(r#""></iframe>"#);
    out
}

/// A flame graph of the whole profile (threads side by side), as SVG.
pub fn flamegraph_svg(tree: &CallTree, title: &str) -> Result<Vec<u8>, String> {
    let text = perfkit_profile::collapsed::write_bounded(tree)?;
    if text.trim().is_empty() {
        return Err("the profile records no time, so there is nothing to draw".into());
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "µs".to_string();
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut options, text.lines(), &mut out)
        .map_err(|e| format!("cannot draw the flame graph: {e}"))?;
    Ok(out)
}
