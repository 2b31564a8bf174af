//! Write-behind for small entries: a miss hands its encoded entry to one
//! background thread and returns; the thread publishes entries in order, each
//! with the same temporary-file-and-rename as a direct write.
//!
//! Why: creating and renaming a file costs tens of microseconds on common
//! file systems, several times everything else a miss does. Until an entry
//! is on disk, this process reads it from memory ([`WriteBehind::get`]);
//! other processes see it once it is published (meanwhile it is a miss for
//! them, as any entry still being written is). A crash loses queued entries
//! (they are recomputed next time) and never publishes a partial one.
//! The queue is bounded ([`MAX_QUEUED_BYTES`], [`MAX_QUEUED_ENTRIES`]): a
//! submitter waits for room. Failures (disk full, read-only location) are kept for the
//! submitter to report ([`WriteBehind::take_failures`]).
//!
//! The thread ends when idle for a moment and starts again on demand.
//! After `fork(2)` the child must call [`reset_after_fork`]: the parent's
//! thread does not exist there, and its lock may have been held.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::entry::write_encoded;
use crate::error::CacheError;

/// Bytes of encoded entries queued at most; beyond, a submitter waits.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Entries queued at most: bounds the wait at exit (a flush) to a fraction of
/// a second on a disk that takes ~100 µs per file.
pub const MAX_QUEUED_ENTRIES: usize = 4096;
/// The writer thread ends after this long without work.
const IDLE_EXIT: Duration = Duration::from_millis(200);
/// Failures kept for reporting at most (the oldest are dropped).
const MAX_FAILURES: usize = 64;

/// A write that failed in the background.
#[derive(Debug)]
pub struct WriteFailure {
    /// What the submitter named the entry by (e.g. the cached function).
    pub label: Arc<str>,
    pub error: CacheError,
}

struct Pending {
    bytes: Arc<Vec<u8>>,
    label: Arc<str>,
    /// Waiting in `order` (false while the writer has it in hand).
    queued: bool,
}

#[derive(Default)]
struct State {
    order: VecDeque<PathBuf>,
    /// Every entry not yet on disk, queued or being written, by path.
    pending: HashMap<PathBuf, Pending>,
    writing: Option<PathBuf>,
    queued_bytes: usize,
    failures: VecDeque<WriteFailure>,
    writer_started: bool,
    /// The writer sleeps for want of work: a submit must wake it (else it will
    /// find the new entry by itself, and waking it would cost a system call).
    writer_idle: bool,
    /// Callers sleep until something is written (wait_for, flush, a full queue).
    waiters: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// The queue of entries waiting to be written, and its writer thread.
pub struct WriteBehind {
    shared: Arc<Shared>,
}

impl Default for WriteBehind {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteBehind {
    pub fn new() -> Self {
        WriteBehind {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps until the writer (or a forget) reports progress.
    fn wait<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.waiters += 1;
        let mut st = self
            .shared
            .changed
            .wait(st)
            .unwrap_or_else(|e| e.into_inner());
        st.waiters -= 1;
        st
    }

    /// Whether [`submit`](Self::submit) of `len` bytes would wait for room.
    pub fn would_wait(&self, len: usize) -> bool {
        self.lock().is_full(len)
    }

    /// Queues `bytes` (an entry encoded by [`crate::entry::encode_entry`]) to
    /// be published at `path`, replacing any entry queued there. Waits while
    /// the queue is full. Without a writer thread (it could not be started),
    /// writes it before returning.
    pub fn submit(&self, path: PathBuf, bytes: Vec<u8>, label: &str) {
        let len = bytes.len();
        let mut st = self.lock();
        while st.is_full(len) {
            st = self.wait(st);
        }
        if !st.writer_started {
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("perfkit-cache-writer".into())
                .spawn(move || run_writer(&shared));
            if spawned.is_err() {
                drop(st);
                if let Err(error) = write_encoded(&path, &bytes, false) {
                    self.lock().record(label.into(), error);
                }
                return;
            }
            st.writer_started = true;
        }
        let bytes = Arc::new(bytes);
        let label: Arc<str> = label.into();
        match st.pending.get_mut(&path) {
            Some(p) if p.queued => {
                let old = std::mem::replace(&mut p.bytes, bytes);
                p.label = label;
                st.queued_bytes = st.queued_bytes - old.len() + len;
            }
            _ => {
                // New, or the writer holds an older version: queue this one after it.
                st.pending.insert(
                    path.clone(),
                    Pending {
                        bytes,
                        label,
                        queued: true,
                    },
                );
                st.order.push_back(path);
                st.queued_bytes += len;
            }
        }
        let wake = st.writer_idle;
        drop(st);
        if wake {
            self.shared.changed.notify_all();
        }
    }

    /// The encoded entry waiting to be written at `path`, if any.
    pub fn get(&self, path: &Path) -> Option<Arc<Vec<u8>>> {
        let st = self.lock();
        if st.pending.is_empty() {
            return None;
        }
        st.pending.get(path).map(|p| Arc::clone(&p.bytes))
    }

    /// Whether nothing is waiting to be written.
    pub fn is_idle(&self) -> bool {
        self.lock().pending.is_empty()
    }

    /// Waits until the entry at `path` (if queued) is on disk, or failed.
    pub fn wait_for(&self, path: &Path) {
        let mut st = self.lock();
        while st.pending.contains_key(path) {
            st = self.wait(st);
        }
    }

    /// Waits until every queued entry is on disk (or failed: see
    /// [`take_failures`](Self::take_failures)).
    pub fn flush(&self) {
        let mut st = self.lock();
        while !st.pending.is_empty() {
            st = self.wait(st);
        }
    }

    /// Drops the queued entries at or under `prefix` (a file or a directory
    /// about to be removed) and waits for one being written there, so that
    /// nothing is published under `prefix` after this returns.
    pub fn forget_under(&self, prefix: &Path) {
        let mut st = self.lock();
        let mut freed = 0;
        st.pending.retain(|path, p| {
            let keep = !(p.queued && path.starts_with(prefix));
            if !keep {
                freed += p.bytes.len();
            }
            keep
        });
        st.queued_bytes -= freed;
        while st.writing.as_deref().is_some_and(|w| w.starts_with(prefix)) {
            st = self.wait(st);
        }
        let wake = st.waiters > 0; // a submitter may wait for the room just freed
        drop(st);
        if wake {
            self.shared.changed.notify_all();
        }
    }

    /// The failures since the last call (usually none).
    pub fn take_failures(&self) -> Vec<WriteFailure> {
        let mut st = self.lock();
        if st.failures.is_empty() {
            return Vec::new();
        }
        st.failures.drain(..).collect()
    }
}

impl State {
    fn is_full(&self, len: usize) -> bool {
        self.pending.len() >= MAX_QUEUED_ENTRIES
            || (self.queued_bytes > 0 && self.queued_bytes + len > MAX_QUEUED_BYTES)
    }

    fn record(&mut self, label: Arc<str>, error: CacheError) {
        if self.failures.len() == MAX_FAILURES {
            self.failures.pop_front();
        }
        self.failures.push_back(WriteFailure { label, error });
    }
}

fn run_writer(shared: &Shared) {
    let lock = || shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let mut st = lock();
    loop {
        let Some(path) = st.order.pop_front() else {
            st.writer_idle = true;
            let (guard, timeout) = shared
                .changed
                .wait_timeout(st, IDLE_EXIT)
                .unwrap_or_else(|e| e.into_inner());
            st = guard;
            st.writer_idle = false;
            if timeout.timed_out() && st.order.is_empty() {
                // Idle: end the thread (the next submit starts one), so that a process
                // that forks later is not multi-threaded because of us.
                st.writer_started = false;
                return;
            }
            continue;
        };
        let Some(p) = st.pending.get_mut(&path).filter(|p| p.queued) else {
            continue; // forgotten, or a duplicate of an entry already written
        };
        p.queued = false;
        let (bytes, label) = (Arc::clone(&p.bytes), Arc::clone(&p.label));
        st.queued_bytes -= bytes.len();
        st.writing = Some(path.clone());
        drop(st);
        let result = write_encoded(&path, &bytes, false);
        st = lock();
        st.writing = None;
        if st
            .pending
            .get(&path)
            .is_some_and(|p| Arc::ptr_eq(&p.bytes, &bytes))
        {
            st.pending.remove(&path);
        }
        if let Err(error) = result {
            st.record(label, error);
        }
        if st.waiters > 0 {
            shared.changed.notify_all();
        }
    }
}

static GLOBAL: Mutex<Option<Arc<WriteBehind>>> = Mutex::new(None);

/// This process's queue.
pub fn global() -> Arc<WriteBehind> {
    let mut g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
    Arc::clone(g.get_or_insert_with(|| Arc::new(WriteBehind::new())))
}

/// To be called in the child after `fork(2)`: gives it a new, empty queue.
/// The parent's is leaked untouched (its thread does not exist in the child,
/// and its lock may have been held at the fork); the parent writes its entries.
pub fn reset_after_fork() {
    let mut g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(old) = g.take() {
        std::mem::forget(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{encode_entry, read_entry, ReadOutcome};
    use std::fs;

    fn tmpdir(name: &str) -> PathBuf {
        crate::test_dir("writer", name)
    }

    fn encoded(path: &Path, value: &[u8]) -> Vec<u8> {
        encode_entry(path, 0, "{}", value, &[]).unwrap()
    }

    #[test]
    fn queued_entries_are_served_then_published_in_full() {
        let d = tmpdir("publish");
        let wb = WriteBehind::new();
        let paths: Vec<PathBuf> = (0..200).map(|i| d.join(format!("e{i}.pkc"))).collect();
        for (i, p) in paths.iter().enumerate() {
            let bytes = encoded(p, format!("value {i}").as_bytes());
            wb.submit(p.clone(), bytes.clone(), "f");
            // Readable at once, from memory or (already written) from disk.
            let from_queue = wb.get(p);
            let on_disk = || match read_entry(p).unwrap() {
                ReadOutcome::Found((_, b)) => b,
                other => panic!("{other:?}"),
            };
            assert_eq!(
                from_queue.map(|b| b.to_vec()).unwrap_or_else(on_disk),
                bytes
            );
        }
        wb.flush();
        assert!(wb.is_idle() && wb.take_failures().is_empty());
        for (i, p) in paths.iter().enumerate() {
            let ReadOutcome::Found((layout, b)) = read_entry(p).unwrap() else {
                panic!("entry {i} not published");
            };
            let (s0, sl) = (layout.stream.0 as usize, layout.stream.1 as usize);
            assert_eq!(&b[s0..s0 + sl], format!("value {i}").as_bytes());
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_writer_ends_when_idle_and_starts_again() {
        let d = tmpdir("idle");
        let wb = WriteBehind::new();
        let p = d.join("a.pkc");
        wb.submit(p.clone(), encoded(&p, b"a"), "f");
        wb.flush();
        std::thread::sleep(IDLE_EXIT * 3);
        assert!(!wb.lock().writer_started, "the idle writer did not end");
        let q = d.join("b.pkc");
        wb.submit(q.clone(), encoded(&q, b"b"), "f");
        wb.flush();
        assert!(q.exists() && wb.take_failures().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_queue_is_bounded_and_loses_nothing() {
        let d = tmpdir("bounded");
        let wb = WriteBehind::new();
        let n = MAX_QUEUED_ENTRIES + 500;
        for i in 0..n {
            let p = d.join(format!("e{i}.pkc"));
            wb.submit(p.clone(), encoded(&p, b"x"), "f");
            assert!(wb.lock().pending.len() <= MAX_QUEUED_ENTRIES);
        }
        wb.flush();
        assert_eq!(fs::read_dir(&d).unwrap().count(), n);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_resubmitted_entry_ends_with_the_last_value() {
        let d = tmpdir("resubmit");
        let wb = WriteBehind::new();
        let p = d.join("same.pkc");
        for i in 0..500 {
            wb.submit(p.clone(), encoded(&p, format!("v{i}").as_bytes()), "f");
        }
        wb.flush();
        let ReadOutcome::Found((layout, b)) = read_entry(&p).unwrap() else {
            panic!("not published");
        };
        let (s0, sl) = (layout.stream.0 as usize, layout.stream.1 as usize);
        assert_eq!(&b[s0..s0 + sl], b"v499");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn forgotten_entries_are_never_published() {
        let d = tmpdir("forget");
        let wb = WriteBehind::new();
        let sub = d.join("func");
        for i in 0..300 {
            let p = sub.join(format!("e{i}.pkc"));
            wb.submit(p.clone(), encoded(&p, b"x"), "f");
        }
        wb.forget_under(&sub);
        // Whatever was published before is removed now; nothing may appear afterwards.
        let _ = fs::remove_dir_all(&sub);
        wb.flush();
        assert!(!sub.exists(), "an entry was published after forget_under");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failures_are_kept_for_the_submitter() {
        let d = tmpdir("fail");
        let blocker = d.join("not-a-dir");
        fs::write(&blocker, b"a file where a directory should be").unwrap();
        let wb = WriteBehind::new();
        let p = blocker.join("e.pkc");
        wb.submit(p.clone(), encoded(&p, b"x"), "my_func");
        wb.flush();
        let failures = wb.take_failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(&*failures[0].label, "my_func");
        assert!(failures[0].error.to_string().contains("not-a-dir"));
        assert!(wb.take_failures().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }
}
