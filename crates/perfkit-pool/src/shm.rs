//! Shared-memory segments carrying the large out-of-band buffers of a
//! pickle-5 payload, so arrays cross processes with one copy in and none out
//! (the receiver maps the segment). (Where the kernel allows it, the workers
//! instead copy the parent's buffers directly; see `Job::remote`.)
//!
//! Parent → worker: `MappedSegment`s, anonymous memory files (memfd) that
//! never appear in /dev/shm, mapped once in the parent and reused batch after
//! batch (a fresh tmpfs page costs ~10× its copy); the worker opens them as
//! `/proc/<parent>/fd/<n>` (described as `memfd:<pid>:<fd>`). They vanish
//! with the parent, whatever kills it.
//!
//! Worker → parent: the worker's own memfds, opened by the parent through
//! /proc (the worker keeps them open until its next frame) — or, on systems
//! without memfd, named files in /dev/shm. Naming is what makes their cleanup
//! total: every named segment of a pool starts with `perfkit-<parent pid>-`,
//! a worker's with `r<worker pid>-`; the parent unlinks one as soon as it has
//! opened it, and sweeps a dead worker's prefix and the pool's at shutdown.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Buffers start on this boundary inside a segment (vector loads, numpy's alignment).
pub const ALIGN: u64 = 64;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where segments live: /dev/shm when the system has it, else the temp directory.
pub fn shm_dir() -> PathBuf {
    let dev_shm = PathBuf::from("/dev/shm");
    if dev_shm.is_dir() {
        dev_shm
    } else {
        std::env::temp_dir()
    }
}

/// The prefix of every segment made for the pool of process `pid`.
pub fn pool_prefix(pid: u32) -> String {
    format!("perfkit-{pid}-")
}

/// A segment's name and the (offset, length) of each buffer in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSpec {
    pub name: String,
    pub spans: Vec<(u64, u64)>,
}

impl SegmentSpec {
    /// `name\toffset:len\toffset:len…` (what `perfkit._worker` parses).
    pub fn encode(&self) -> Vec<u8> {
        let mut s = self.name.clone();
        for (off, len) in &self.spans {
            s.push('\t');
            s.push_str(&format!("{off}:{len}"));
        }
        s.into_bytes()
    }

    pub fn decode(meta: &[u8]) -> io::Result<Option<SegmentSpec>> {
        if meta.is_empty() {
            return Ok(None);
        }
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed segment description");
        let text = std::str::from_utf8(meta).map_err(|_| bad())?;
        let mut parts = text.split('\t');
        let name = parts.next().ok_or_else(bad)?.to_string();
        let memfd =
            name.starts_with("memfd:") && name[6..].split(':').all(|p| p.parse::<u32>().is_ok());
        // Buffers left in a process's memory (crate::remote), by address.
        let in_place = name.starts_with("vm:") && name[3..].parse::<u32>().is_ok();
        if !memfd
            && !in_place
            && (name.is_empty() || name.contains('/') || !name.starts_with("perfkit-"))
        {
            return Err(bad());
        }
        let mut spans = Vec::new();
        for p in parts {
            let (o, l) = p.split_once(':').ok_or_else(bad)?;
            spans.push((o.parse().map_err(|_| bad())?, l.parse().map_err(|_| bad())?));
        }
        Ok(Some(SegmentSpec { name, spans }))
    }
}

/// An anonymous shared-memory file mapped read-write in this process.
pub struct MappedSegment {
    fd: std::os::fd::OwnedFd,
    ptr: *mut u8,
    capacity: usize,
}

// SAFETY: the mapping belongs to this struct alone; it is written only through
// `&mut self` and unmapped in Drop.
unsafe impl Send for MappedSegment {}

impl MappedSegment {
    pub fn create(capacity: usize) -> io::Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let capacity = capacity.max(4096);
        // SAFETY: valid NUL-terminated name; the result is checked.
        let raw = unsafe { libc::memfd_create(c"perfkit-segment".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: syscalls on our own descriptor; results checked.
        let ptr = unsafe {
            if libc::ftruncate(fd.as_raw_fd(), capacity as libc::off_t) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::mmap(
                std::ptr::null_mut(),
                capacity,
                libc::PROT_READ | libc::PROT_WRITE,
                // Allocate and map every page in one call rather than one
                // fault per page on first write (a shared mapping: no copies).
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedSegment {
            fd,
            ptr: ptr.cast(),
            capacity,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How a worker finds it: `memfd:<pid>:<fd>` (opened as `/proc/<pid>/fd/<fd>`).
    pub fn name(&self) -> String {
        use std::os::fd::AsRawFd;
        format!("memfd:{}:{}", std::process::id(), self.fd.as_raw_fd())
    }

    /// Copies `bufs` in back to back (aligned); returns their spans.
    pub fn write(&mut self, bufs: &[&[u8]]) -> io::Result<Vec<(u64, u64)>> {
        let mut spans = Vec::with_capacity(bufs.len());
        let mut end = 0usize;
        for b in bufs {
            let off = end.div_ceil(ALIGN as usize) * ALIGN as usize;
            spans.push((off as u64, b.len() as u64));
            end = off + b.len();
        }
        if end > self.capacity {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "segment too small",
            ));
        }
        for (b, (off, _)) in bufs.iter().zip(&spans) {
            // SAFETY: off + len <= capacity (checked above); the source is a
            // separate buffer, so the ranges cannot overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(b.as_ptr(), self.ptr.add(*off as usize), b.len())
            };
        }
        Ok(spans)
    }

    /// Describes the segment and its spans for a frame's meta section.
    pub fn describe(&self, spans: &[(u64, u64)]) -> Vec<u8> {
        SegmentSpec {
            name: self.name(),
            spans: spans.to_vec(),
        }
        .encode()
    }

    /// The bytes at `off..off+len` (tests).
    pub fn read(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.capacity);
        // SAFETY: in bounds (asserted), mapping alive while &self is.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) }
    }
}

impl Drop for MappedSegment {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping exactly once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.capacity);
        }
    }
}

/// Large segments are made in multiples of this (small ones in powers of two),
/// so that batches of slightly different sizes share segments.
const SIZE_STEP: usize = 16 << 20;

fn size_class(size: usize) -> usize {
    if size < SIZE_STEP {
        size.max(4096).next_power_of_two()
    } else {
        size.div_ceil(SIZE_STEP) * SIZE_STEP
    }
}

/// Free parent segments kept for reuse, bounded in total size. Each new call
/// drops the ones the previous call did not use, so an idle pool holds only
/// what its last call needed.
pub struct SegmentCache {
    /// Free segments, each with whether it was used since the last `drop_unused`.
    free: std::sync::Mutex<Vec<(MappedSegment, bool)>>,
    max_free_bytes: usize,
}

impl SegmentCache {
    pub fn new(max_free_bytes: usize) -> Self {
        SegmentCache {
            free: std::sync::Mutex::new(Vec::new()),
            max_free_bytes,
        }
    }

    /// A segment of at least `size` bytes: the smallest free one that fits
    /// without wasting more than half of it, else a new one.
    pub fn take(&self, size: usize) -> io::Result<MappedSegment> {
        let mut free = self.free.lock().unwrap();
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| s.capacity >= size && s.capacity <= 2 * size + SIZE_STEP)
            .min_by_key(|(_, (s, _))| s.capacity)
            .map(|(i, _)| i);
        if let Some(i) = best {
            return Ok(free.swap_remove(i).0);
        }
        drop(free);
        MappedSegment::create(size_class(size))
    }

    /// Returns a segment for reuse (dropped if the cache is full).
    pub fn give_back(&self, seg: MappedSegment) {
        let mut free = self.free.lock().unwrap();
        let held: usize = free.iter().map(|(s, _)| s.capacity).sum();
        if held + seg.capacity <= self.max_free_bytes {
            free.push((seg, true));
        }
    }

    /// Drops the free segments not given back since the last call of this
    /// (called as each call begins).
    pub fn drop_unused(&self) {
        let mut free = self.free.lock().unwrap();
        free.retain(|(_, used)| *used);
        for (_, used) in free.iter_mut() {
            *used = false;
        }
    }

    pub fn clear(&self) {
        self.free.lock().unwrap().clear();
    }

    pub fn free_count(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

/// A fresh name for a parent-made segment.
pub fn new_parent_name(prefix: &str) -> String {
    format!("{prefix}a{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Creates segment `name` holding `bufs` back to back (aligned). On any
/// failure the half-written file is removed.
pub fn write_segment(name: &str, bufs: &[&[u8]]) -> io::Result<SegmentSpec> {
    let path = shm_dir().join(name);
    let mut spans = Vec::with_capacity(bufs.len());
    let mut end = 0u64;
    for b in bufs {
        let off = end.div_ceil(ALIGN) * ALIGN;
        spans.push((off, b.len() as u64));
        end = off + b.len() as u64;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let written = (|| {
        file.set_len(end)?;
        for (b, (off, _)) in bufs.iter().zip(&spans) {
            file.write_all_at(b, *off)?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(SegmentSpec {
        name: name.to_string(),
        spans,
    })
}

/// Opens a segment a worker describes: `memfd:<pid>:<fd>` through /proc
/// (the worker keeps that descriptor open until its next task), or a named
/// file, unlinked at once.
pub fn open_segment(name: &str) -> io::Result<File> {
    if let Some(rest) = name.strip_prefix("memfd:") {
        let (pid, fd) = rest
            .split_once(':')
            .and_then(|(p, f)| Some((p.parse::<u32>().ok()?, f.parse::<u32>().ok()?)))
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "malformed memfd segment name")
            })?;
        return File::open(format!("/proc/{pid}/fd/{fd}"));
    }
    open_and_unlink(name)
}

/// Opens a segment and unlinks it at once: from here the open file is its only
/// reference, and the memory goes when the last mapping does.
pub fn open_and_unlink(name: &str) -> io::Result<File> {
    if name.contains('/') || !name.starts_with("perfkit-") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a perfkit segment name",
        ));
    }
    let path = shm_dir().join(name);
    let f = File::open(&path)?;
    let _ = fs::remove_file(&path);
    Ok(f)
}

/// Removes a segment; a missing one is fine (the receiver already took it).
pub fn unlink(name: &str) {
    let _ = fs::remove_file(shm_dir().join(name));
}

/// Removes every segment whose name starts with `prefix`; returns how many.
pub fn remove_prefix(prefix: &str) -> usize {
    let Ok(entries) = fs::read_dir(shm_dir()) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) && fs::remove_file(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// Names of existing segments with this prefix (tests and leak checks).
pub fn list_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(shm_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn write_open_unlink() {
        let prefix = format!("perfkit-test{}-", std::process::id());
        let name = new_parent_name(&prefix);
        let spec = write_segment(&name, &[b"abc", &[7u8; 100]]).unwrap();
        assert_eq!(spec.spans, vec![(0, 3), (64, 100)]);
        assert_eq!(SegmentSpec::decode(&spec.encode()).unwrap().unwrap(), spec);
        let mut f = open_and_unlink(&name).unwrap();
        assert!(
            list_prefix(&prefix).is_empty(),
            "opened segment must be unlinked"
        );
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        assert_eq!(&all[..3], b"abc");
        assert_eq!(&all[64..], &[7u8; 100][..]);
    }

    #[test]
    fn segments_unused_through_a_call_are_dropped_at_the_next() {
        let cache = SegmentCache::new(64 << 20);
        cache.give_back(MappedSegment::create(1 << 20).unwrap());
        cache.give_back(MappedSegment::create(4 << 20).unwrap());
        cache.drop_unused(); // a call begins: both were used in the last one
        assert_eq!(cache.free_count(), 2);
        let seg = cache.take(1 << 20).unwrap(); // this call uses one of them
        cache.give_back(seg);
        cache.drop_unused(); // the next call begins: the 4 MB one sat idle
        assert_eq!(cache.free_count(), 1);
        assert_eq!(cache.take(1 << 20).unwrap().capacity(), 1 << 20);
        cache.drop_unused();
        cache.drop_unused();
        assert_eq!(cache.free_count(), 0);
    }

    #[test]
    fn mapped_segments_are_reused_and_described() {
        let cache = SegmentCache::new(64 << 20);
        let mut seg = cache.take(3000).unwrap();
        assert_eq!(seg.capacity(), 4096);
        let spans = seg.write(&[b"hello", b"world"]).unwrap();
        assert_eq!(spans, vec![(0, 5), (64, 5)]);
        assert_eq!(seg.read(64, 5), b"world");
        let spec = SegmentSpec::decode(&seg.describe(&spans)).unwrap().unwrap();
        assert!(spec.name.starts_with("memfd:"));
        // Another process (here: this one) reaches it through /proc.
        let (_, rest) = spec.name.split_once(':').unwrap();
        let (pid, fd) = rest.split_once(':').unwrap();
        let bytes = std::fs::read(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(&bytes[64..69], b"world");
        let mut again = Vec::new();
        open_segment(&spec.name)
            .unwrap()
            .read_to_end(&mut again)
            .unwrap();
        assert_eq!(again, bytes);
        let name = seg.name();
        cache.give_back(seg);
        let again = cache.take(4000).unwrap();
        assert_eq!(again.name(), name, "a fitting free segment is reused");
        assert!(again.capacity() >= 4000);
        assert!(cache.take(40 << 20).is_ok_and(|s| s.capacity() == 48 << 20));
        assert_eq!(size_class(5000), 8192);
        assert!(SegmentCache::new(0)
            .take(10)
            .unwrap()
            .write(&[&[0u8; 5000]])
            .is_err());
    }

    #[test]
    fn prefix_sweep_and_bad_names() {
        let prefix = format!("perfkit-sweep{}-", std::process::id());
        write_segment(&format!("{prefix}x1"), &[b"1"]).unwrap();
        write_segment(&format!("{prefix}x2"), &[b"2"]).unwrap();
        assert_eq!(remove_prefix(&prefix), 2);
        assert!(list_prefix(&prefix).is_empty());
        assert!(open_and_unlink("../etc/passwd").is_err());
        assert!(open_segment("memfd:1:x").is_err());
        assert!(SegmentSpec::decode(b"/tmp/x\t0:1").is_err());
        assert!(SegmentSpec::decode(b"perfkit-1-a\t0").is_err());
        assert!(SegmentSpec::decode(b"memfd:1:/x").is_err());
        assert_eq!(SegmentSpec::decode(b"").unwrap(), None);
    }
}
