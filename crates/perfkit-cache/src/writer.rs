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
//!
//! Each entry is queued with its root, the cache's location: the writer
//! creates the directories below it as needed, never the root itself, so
//! that a location removed while entries were queued for it (a temporary
//! directory cleaned up) does not come back; such entries are dropped, and
//! the next submit under that root writes at once, creating it again (as a
//! direct store does). [`WriteBehind::removing`] is told of a removal about
//! to start (`shutil.rmtree`, through the Python side's audit hook): it
//! drops the entries queued under the path and waits for one being written
//! there, so the removal does not race the writer.

use std::collections::{HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::entry::{write_encoded, write_encoded_below};
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
    /// The directory it is written below (never created by the writer).
    root: Arc<Path>,
    /// Waiting in `order` (false while the writer has it in hand).
    queued: bool,
    /// When it took its place in `order` (a count of submits): a flush waits
    /// for the entries queued before it began, and only those.
    seq: u64,
}

/// A root entries were submitted under.
struct Root {
    /// The root with its symbolic links resolved (when it could be): a
    /// removal may name it so.
    canonical: Option<PathBuf>,
    /// It was removed, or is about to be: the next submit under it writes
    /// at once, creating it again, rather than queue an entry the writer
    /// would drop.
    recreate: bool,
}

#[derive(Default)]
struct State {
    order: VecDeque<PathBuf>,
    /// Every entry not yet on disk, queued or being written, by path.
    pending: HashMap<PathBuf, Pending>,
    writing: Option<PathBuf>,
    /// The `seq` of the entry being written.
    writing_seq: Option<u64>,
    /// Submits that took a place in `order` so far: the next one's `seq`.
    next_seq: u64,
    queued_bytes: usize,
    failures: VecDeque<WriteFailure>,
    writer_started: bool,
    /// The writer sleeps for want of work: a submit must wake it (else it will
    /// find the new entry by itself, and waking it would cost a system call).
    writer_idle: bool,
    /// Callers sleep until something is written (wait_for, flush, a full queue).
    waiters: usize,
    /// Every root submitted under (a few: one per cache location).
    roots: HashMap<Arc<Path>, Root>,
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
    /// be published at `path`, below `root` (an existing directory: the
    /// cache's location), replacing any entry queued there. Waits while the
    /// queue is full. Without a writer thread (it could not be started), or
    /// when `root` was removed since the last submit under it, writes it
    /// before returning (creating `root` again, as a direct store does).
    pub fn submit(&self, path: PathBuf, bytes: Vec<u8>, label: &str, root: &Path) {
        let len = bytes.len();
        let mut st = self.lock();
        while st.is_full(len) {
            st = self.wait(st);
        }
        let root = match st.roots.get_key_value(root) {
            Some((root, known)) if !known.recreate => Arc::clone(root),
            Some(_) => {
                // Removed since: written at once, re-creating it (after any
                // older version of this entry, which must not replace it).
                self.forget(st, std::slice::from_ref(&path));
                let result = write_encoded(&path, &bytes, false);
                let mut st = self.lock();
                if let Some(known) = st.roots.get_mut(root) {
                    known.recreate = false;
                }
                if let Err(error) = result {
                    st.record(label.into(), error);
                }
                return;
            }
            None => {
                let root: Arc<Path> = root.into();
                let canonical = std::fs::canonicalize(&root).ok();
                st.roots.insert(
                    Arc::clone(&root),
                    Root {
                        canonical,
                        recreate: false,
                    },
                );
                root
            }
        };
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
                p.root = root;
                st.queued_bytes = st.queued_bytes - old.len() + len;
            }
            _ => {
                // New, or the writer holds an older version: queue this one after it.
                let seq = st.next_seq;
                st.next_seq += 1;
                st.pending.insert(
                    path.clone(),
                    Pending {
                        bytes,
                        label,
                        root,
                        queued: true,
                        seq,
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

    /// Waits until every entry queued before this call is on disk (or
    /// failed: see [`take_failures`](Self::take_failures)); a later version
    /// of one replaces it, and is written in its place. Not for those queued
    /// meanwhile: other threads that keep storing (a program's daemon
    /// threads, at exit) would never let the queue be empty.
    pub fn flush(&self) {
        let mut st = self.lock();
        let end = st.next_seq;
        while st.writing_seq.is_some_and(|seq| seq < end)
            || st.pending.values().any(|p| p.seq < end)
        {
            st = self.wait(st);
        }
    }

    /// Drops the queued entries at or under `prefix` (a file or a directory
    /// about to be removed) and waits for one being written there, so that
    /// nothing is published under `prefix` after this returns.
    pub fn forget_under(&self, prefix: &Path) {
        let st = self.lock();
        self.forget(st, &[prefix.to_path_buf()]);
    }

    /// `path` (absolute) is about to be removed. With `whole_tree`, with
    /// everything under it (`shutil.rmtree`): drops the entries queued under it and waits for
    /// one being written there, as [`forget_under`](Self::forget_under), and
    /// marks the roots at or under it to be created again by their next
    /// submit. `path` may name a root through a symbolic link, or the other
    /// way round: it is also compared with each root's canonical path.
    /// Cheap when no root is at, under or above `path`.
    ///
    /// Not `whole_tree` (`os.rmdir`, which removes only an empty directory
    /// and fails on any other): the entries queued under `path` are written
    /// first instead, so that the removal fails, or not, as it would have
    /// once they were written, and a failing one loses nothing (helper-56:
    /// `os.removedirs` meeting a non-empty parent lost the queued results).
    pub fn removing(&self, path: &Path, whole_tree: bool) {
        let path = lexically_normal(path);
        let mut canonical: Option<Option<PathBuf>> = None; // resolved on demand
        let mut st = self.lock();
        if st.roots.is_empty() {
            return;
        }
        // For each root concerned, the prefix its entries are removed under (as they are named).
        let mut prefixes = Vec::new();
        for (root, known) in st.roots.iter_mut() {
            if root.starts_with(&path) {
                known.recreate |= whole_tree;
                prefixes.push(root.to_path_buf());
                continue;
            }
            if path.starts_with(root) {
                prefixes.push(path.clone());
                continue;
            }
            let Some(root_canonical) = &known.canonical else {
                continue;
            };
            let Some(path_canonical) =
                canonical.get_or_insert_with(|| std::fs::canonicalize(&path).ok())
            else {
                continue;
            };
            if root_canonical.starts_with(&*path_canonical) {
                known.recreate |= whole_tree;
                prefixes.push(root.to_path_buf());
            } else if let Ok(rest) = path_canonical.strip_prefix(root_canonical) {
                prefixes.push(root.join(rest));
            }
        }
        if prefixes.is_empty() {
            return;
        }
        if whole_tree {
            self.forget(st, &prefixes);
        } else {
            self.settle(st, &prefixes);
        }
    }

    /// Waits until nothing is queued or being written under any of `prefixes`.
    fn settle<'a>(&'a self, mut st: MutexGuard<'a, State>, prefixes: &[PathBuf]) {
        let under = |path: &Path| prefixes.iter().any(|prefix| path.starts_with(prefix));
        while st.pending.iter().any(|(path, p)| p.queued && under(path))
            || st.writing.as_deref().is_some_and(&under)
        {
            st = self.wait(st);
        }
    }

    /// Drops the queued entries under any of `prefixes` and waits for one
    /// being written there.
    fn forget<'a>(&'a self, mut st: MutexGuard<'a, State>, prefixes: &[PathBuf]) {
        let under = |path: &Path| prefixes.iter().any(|prefix| path.starts_with(prefix));
        let mut freed = 0;
        st.pending.retain(|path, p| {
            let keep = !(p.queued && under(path));
            if !keep {
                freed += p.bytes.len();
            }
            keep
        });
        st.queued_bytes -= freed;
        while st.writing.as_deref().is_some_and(&under) {
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
        let (bytes, label, root, seq) = (
            Arc::clone(&p.bytes),
            Arc::clone(&p.label),
            Arc::clone(&p.root),
            p.seq,
        );
        st.queued_bytes -= bytes.len();
        st.writing = Some(path.clone());
        st.writing_seq = Some(seq);
        drop(st);
        let result = write_encoded_below(&root, &path, &bytes);
        st = lock();
        st.writing = None;
        st.writing_seq = None;
        if let Ok(None) = result {
            // Removed meanwhile: dropped. If its root is gone, it is not
            // re-created here (the next submit under it does).
            if !root.is_dir() {
                if let Some(known) = st.roots.get_mut(&root) {
                    known.recreate = true;
                }
            }
        }
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

/// `path` made absolute (against `cwd` when relative) and lexically normal,
/// as Python's `os.path.abspath` makes it: `.` and `..` resolved by name
/// (not through symbolic links), no repeated or trailing separators.
pub fn absolute_path(path: &Path, cwd: &Path) -> PathBuf {
    if path.is_absolute() {
        lexically_normal(path)
    } else {
        lexically_normal(&cwd.join(path))
    }
}

fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
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

    fn tmpdir(name: &str) -> tempfile::TempDir {
        crate::test_dir("writer", name)
    }

    fn encoded(path: &Path, value: &[u8]) -> Vec<u8> {
        encode_entry(path, 0, "{}", value, &[]).unwrap()
    }

    #[test]
    fn queued_entries_are_served_then_published_in_full() {
        let dir = tmpdir("publish");
        let d = dir.path();
        let wb = WriteBehind::new();
        let paths: Vec<PathBuf> = (0..200).map(|i| d.join(format!("e{i}.pkc"))).collect();
        for (i, p) in paths.iter().enumerate() {
            let bytes = encoded(p, format!("value {i}").as_bytes());
            wb.submit(p.clone(), bytes.clone(), "f", d);
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
    }

    #[test]
    fn the_writer_ends_when_idle_and_starts_again() {
        let dir = tmpdir("idle");
        let d = dir.path();
        let wb = WriteBehind::new();
        let p = d.join("a.pkc");
        wb.submit(p.clone(), encoded(&p, b"a"), "f", d);
        wb.flush();
        std::thread::sleep(IDLE_EXIT * 3);
        assert!(!wb.lock().writer_started, "the idle writer did not end");
        let q = d.join("b.pkc");
        wb.submit(q.clone(), encoded(&q, b"b"), "f", d);
        wb.flush();
        assert!(q.exists() && wb.take_failures().is_empty());
    }

    #[test]
    fn the_queue_is_bounded_and_loses_nothing() {
        let dir = tmpdir("bounded");
        let d = dir.path();
        let wb = WriteBehind::new();
        let n = MAX_QUEUED_ENTRIES + 500;
        for i in 0..n {
            let p = d.join(format!("e{i}.pkc"));
            wb.submit(p.clone(), encoded(&p, b"x"), "f", d);
            assert!(wb.lock().pending.len() <= MAX_QUEUED_ENTRIES);
        }
        wb.flush();
        assert_eq!(fs::read_dir(d).unwrap().count(), n);
    }

    #[test]
    fn a_flush_returns_while_other_threads_keep_submitting() {
        // A flush waits for what was queued when it began, not for the queue
        // to be empty: threads that keep storing (a program's daemon threads
        // at exit) never let it be, and the flush at exit never returned.
        let dir = tmpdir("flush-busy");
        let d = dir.path();
        let wb = Arc::new(WriteBehind::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let before = d.join("before.pkc");
        wb.submit(before.clone(), encoded(&before, b"queued before"), "f", d);
        let submitters: Vec<_> = (0..2)
            .map(|t| {
                let (wb, stop, d) = (Arc::clone(&wb), Arc::clone(&stop), d.to_path_buf());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let p = d.join(format!("t{t}-{i}.pkc"));
                        wb.submit(p.clone(), encoded(&p, b"x"), "f", &d);
                        i += 1;
                    }
                })
            })
            .collect();
        // The submitters have filled the queue: from here on it is never empty.
        while wb.lock().pending.len() < MAX_QUEUED_ENTRIES / 2 {
            std::thread::yield_now();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let flusher = Arc::clone(&wb);
        std::thread::spawn(move || {
            flusher.flush();
            let _ = tx.send(());
        });
        let flushed = rx.recv_timeout(Duration::from_secs(30));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in submitters {
            s.join().unwrap();
        }
        assert!(
            flushed.is_ok(),
            "the flush waited for the other threads to stop"
        );
        assert!(
            before.exists(),
            "an entry queued before the flush was not written by it"
        );
        wb.flush();
    }

    #[test]
    fn a_resubmitted_entry_ends_with_the_last_value() {
        let dir = tmpdir("resubmit");
        let d = dir.path();
        let wb = WriteBehind::new();
        let p = d.join("same.pkc");
        for i in 0..500 {
            wb.submit(p.clone(), encoded(&p, format!("v{i}").as_bytes()), "f", d);
        }
        wb.flush();
        let ReadOutcome::Found((layout, b)) = read_entry(&p).unwrap() else {
            panic!("not published");
        };
        let (s0, sl) = (layout.stream.0 as usize, layout.stream.1 as usize);
        assert_eq!(&b[s0..s0 + sl], b"v499");
    }

    #[test]
    fn forgotten_entries_are_never_published() {
        let dir = tmpdir("forget");
        let d = dir.path();
        let wb = WriteBehind::new();
        let sub = d.join("func");
        for i in 0..300 {
            let p = sub.join(format!("e{i}.pkc"));
            wb.submit(p.clone(), encoded(&p, b"x"), "f", d);
        }
        wb.forget_under(&sub);
        // Whatever was published before is removed now; nothing may appear afterwards.
        let _ = fs::remove_dir_all(&sub);
        wb.flush();
        assert!(!sub.exists(), "an entry was published after forget_under");
    }

    #[test]
    fn failures_are_kept_for_the_submitter() {
        let dir = tmpdir("fail");
        let d = dir.path();
        let blocker = d.join("not-a-dir");
        fs::write(&blocker, b"a file where a directory should be").unwrap();
        let wb = WriteBehind::new();
        let p = blocker.join("e.pkc");
        wb.submit(p.clone(), encoded(&p, b"x"), "my_func", d);
        wb.flush();
        let failures = wb.take_failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(&*failures[0].label, "my_func");
        assert!(failures[0].error.to_string().contains("not-a-dir"));
        assert!(wb.take_failures().is_empty());
    }

    #[test]
    fn a_removed_root_is_not_created_again_and_its_next_submit_creates_it() {
        let dir = tmpdir("root-gone");
        let d = dir.path();
        let root = d.join("location"); // not there: as if removed before the writer came
        let wb = WriteBehind::new();
        let p = root.join("perfkit/func/code/00/e.pkc");
        wb.submit(p.clone(), encoded(&p, b"x"), "f", &root);
        wb.flush();
        assert!(!root.exists(), "the writer created a removed root again");
        let failures = wb.take_failures();
        assert!(
            failures.is_empty(),
            "a dropped entry is not a failure: {failures:?}"
        );
        // The program goes on using the location: the next entry creates it, at once.
        let p = root.join("perfkit/func/code/00/again.pkc");
        wb.submit(p.clone(), encoded(&p, b"again"), "f", &root);
        assert!(
            p.exists(),
            "the next submit under a removed root was not written at once"
        );
        let q = root.join("perfkit/func/code/00/later.pkc");
        wb.submit(q.clone(), encoded(&q, b"later"), "f", &root);
        wb.flush();
        assert!(q.exists() && wb.take_failures().is_empty());
    }

    #[test]
    fn a_root_removed_while_entries_are_queued_stays_removed() {
        let dir = tmpdir("root-removed");
        let d = dir.path();
        let root = d.join("location");
        for round in 0..5 {
            fs::create_dir(&root).unwrap();
            let wb = WriteBehind::new();
            for i in 0..500 {
                let p = root.join(format!("perfkit/func/code/{:02x}/e{i}.pkc", i % 16));
                wb.submit(p.clone(), encoded(&p, b"x"), "f", &root);
            }
            // Removed behind the writer's back (no `removing`): it may put a file
            // in a directory being emptied, so the removal is tried until it holds.
            loop {
                match fs::remove_dir_all(&root) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => continue,
                }
            }
            wb.flush();
            assert!(
                !root.exists(),
                "round {round}: the writer created the removed root again"
            );
            let failures = wb.take_failures();
            assert!(failures.is_empty(), "round {round}: {failures:?}");
        }
    }

    #[test]
    fn directories_below_the_root_are_created_again() {
        let dir = tmpdir("below-root");
        let d = dir.path();
        let root = d.join("location");
        fs::create_dir(&root).unwrap();
        let wb = WriteBehind::new();
        let p = root.join("perfkit/func/code/ab/e.pkc");
        wb.submit(p.clone(), encoded(&p, b"x"), "f", &root);
        wb.flush();
        assert!(p.exists() && wb.take_failures().is_empty());
        fs::remove_dir_all(root.join("perfkit")).unwrap(); // (as Memory.clear() does)
        wb.submit(p.clone(), encoded(&p, b"y"), "f", &root);
        wb.flush();
        assert!(p.exists() && wb.take_failures().is_empty());
    }

    #[test]
    fn removing_a_path_drops_what_is_queued_under_it_and_nothing_comes_back() {
        let dir = tmpdir("removing");
        let d = dir.path();
        let (a, b) = (d.join("tmp-a/location"), d.join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(d.join("tmp-a"), &link).unwrap();
        for (k, (removed, root)) in [
            (d.join("tmp-a"), a.clone()),                // an ancestor of the root
            (a.clone(), a.clone()),                      // the root
            (a.join("perfkit/f1"), a.clone()),           // a directory below it
            (link.join("location"), a.clone()),          // the root by another name
            (d.join("tmp-a/x/../location/"), a.clone()), // the root, named with ".."
        ]
        .into_iter()
        .enumerate()
        {
            fs::create_dir_all(&root).unwrap();
            let wb = WriteBehind::new();
            let other = b.join(format!("perfkit/f/code/00/{k}.pkc"));
            wb.submit(other.clone(), encoded(&other, b"x"), "f", &b);
            for i in 0..300 {
                let p = root.join(format!("perfkit/f{}/code/{:02x}/e{i}.pkc", i % 2, i % 7));
                wb.submit(p.clone(), encoded(&p, b"x"), "f", &root);
            }
            wb.removing(&absolute_path(&removed, d), true);
            // Nothing is written under it from here on: the removal succeeds at once.
            let removed = absolute_path(&removed, d);
            match fs::remove_dir_all(&removed) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("case {k}: {e}"),
                _ => {} // (a directory below the root may not be there yet)
            }
            wb.flush();
            assert!(
                !removed.exists(),
                "case {k}: an entry was published under a removed path"
            );
            assert!(wb.take_failures().is_empty(), "case {k}");
            assert!(
                other.exists(),
                "case {k}: an entry of another location was dropped"
            );
            fs::create_dir_all(&a).unwrap();
        }
    }

    #[test]
    fn paths_are_made_absolute_as_pythons_abspath_makes_them() {
        let cwd = Path::new("/home/me/work");
        for (given, want) in [
            ("cache", "/home/me/work/cache"),
            ("./cache/", "/home/me/work/cache"),
            ("../x//y/./z", "/home/me/x/y/z"),
            ("/a/b/../../..", "/"),
            ("/tmp/d/", "/tmp/d"),
        ] {
            assert_eq!(
                absolute_path(Path::new(given), cwd),
                Path::new(want),
                "{given}"
            );
        }
    }
}
