//! perfkit's profile viewer.
//!
//! Owns what turns a loaded profile into something to look at: the JSON API
//! (call-tree slices laid out and culled for the current zoom, the pstats
//! table with its caller/callee edges, the diff of two runs) computed from
//! perfkit-profile's [`CallTree`](perfkit_profile::CallTree), the local HTTP
//! server that answers it (hyper on a small tokio runtime of its own, which
//! bounds what one client may cost: head size, time to send it, unread
//! answers, open connections), the self-contained HTML export (the same page
//! with the data embedded) and the flame-graph SVG. The front end (plain
//! HTML/JS/CSS, drawn on canvas) is embedded at compile time.
//!
//! It must not parse profile files itself (that is perfkit-profile's job),
//! must not depend on Python, and no request it answers may reach the file
//! system: only the embedded page and the API routes exist.

pub mod api;
pub mod export;
pub mod server;

pub use api::{Reply, Viewer};
pub use server::Server;
