//! perfkit's parallel engine: a pool of worker processes kept alive across
//! calls, the wire format between parent and workers, the shared-memory
//! segments and process-to-process copies that carry large buffers, and
//! supervision (a dead worker is noticed at once, named by signal and task,
//! and replaced).
//!
//! `in_worker` is the one part that runs inside a worker: what the worker
//! sets up in itself so that it cannot outlive its parent.
//!
//! It owns processes, pipes, segments and threads; it knows nothing about
//! Python objects or pickling (payloads are opaque bytes), so everything here
//! is testable with `cargo test` and a shell script standing in for a worker.
//! It must not hold a lock while doing I/O, and must never leave a segment or
//! a child process behind on any path it controls.

pub mod frame;
pub mod in_worker;
pub mod pool;
pub mod remote;
pub mod shm;
pub mod worker;

pub use frame::{Frame, FrameKind};
pub use pool::{Event, Job, Pool, Reply, ReplyBuffers};
pub use shm::SegmentSpec;
pub use worker::WorkerCommand;
