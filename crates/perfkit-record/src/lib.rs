//! perfkit's profiler engine.
//!
//! Owns the hooks into CPython and the per-thread recorders that turn their
//! events into a [`perfkit_profile::CallTree`]: the C-level profile hook
//! (3.9–3.11, full mode), `sys.monitoring` callbacks for C calls (3.12+,
//! full mode) and the PEP 523 frame-evaluation hook (Python frames, every
//! version; also the Python half of full mode on 3.12+). It talks to the
//! interpreter through pyo3's ffi and reads interpreter internals through
//! [`frames`], one path per version. It must not format, parse or write
//! files: that is `perfkit-profile`'s job.
//!
//! Every entry point here runs with the GIL held; that is what makes the
//! process-wide state in [`session`] sound.

pub mod clock;
mod frames;
mod hooks;
mod names;
mod recorder;
pub mod session;
mod stack;

pub use clock::ClockKind;
pub use session::{adopt, recording_now, CallMark, Mode, Session, StartError};
