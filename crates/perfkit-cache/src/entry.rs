//! One cache entry on disk: a single file `<key>.pkc` whose first line is the
//! entry's metadata as JSON (function, arguments, duration, sizes: `head -1`
//! shows it to a person) followed by the pickled result and its out-of-band
//! buffers, all under checksums.
//!
//! An entry is written to a temporary sibling file and published by one
//! `rename(2)`, so a reader sees either no entry or a complete one, never a
//! partial one; concurrent writers of the same entry simply replace each
//! other's identical file (an open reader keeps the inode it opened). Crash
//! safety does not rely on `fsync` (optional: `durable`): a process killed
//! mid-write leaves only a `.tmp-*` file that is never read; a machine crash
//! that loses unsynced data leaves a published entry whose length or
//! checksum no longer matches, which is detected on read and reported as
//! [`ReadOutcome::Corrupt`]. One file per entry keeps both a hit (open, read,
//! close) and a miss (create, write, rename) to the fewest system calls.
//! An entry's modification time is its last use (a hit refreshes it).
//!
//! Layout (integers little-endian; M = length of the metadata line with its `\n`):
//!
//! ```text
//!  0     metadata JSON, one line, then '\n'
//!  M+ 0  magic "PKCENT02"            8
//!  M+ 8  flags u32, buffer count u32  8
//!  M+16  stream length u64            8
//!  M+24  total file length u64        8
//!  M+32  head checksum u128          16   xxh3-128 of the metadata line, bytes M..M+32, table, stream
//!  M+48  body checksum u128          16   xxh3-128 of the buffers' bytes, in order
//!  M+64  table: (offset u64, length u64) per buffer (offsets from the start of the file)
//!        pickle stream
//!        buffers, each at a 64-byte-aligned file offset (so they can be memory-mapped),
//!        zeros in between
//! ```

use std::collections::HashMap;
use std::fs::{self, File, FileTimes};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use xxhash_rust::xxh3::Xxh3Default;

use crate::error::{is_missing, CacheError};

/// File name extension of a published entry.
pub const ENTRY_EXT: &str = "pkc";
/// Prefix of the files an entry is written to before it is published.
pub const TMP_PREFIX: &str = ".tmp-";
const MAGIC: &[u8; 8] = b"PKCENT02";
/// Header flag: the buffers were mapped writable (`mmap_mode="r+"`) and may
/// have been changed in place, as the caller may: their checksum no longer
/// describes them and is not checked (the head still is).
pub const FLAG_BUFFERS_WRITABLE: u32 = 1 << 31;
const HEADER_LEN: u64 = 64;
const ALIGN: u64 = 64;
/// The metadata line is searched for this far; longer metadata is refused when writing.
pub const MAX_METADATA_LEN: usize = 1 << 20;
/// Files up to this size are assembled in memory and written with one call.
const ONE_WRITE_MAX: u64 = 1 << 20;
const CHUNK: usize = 4 << 20;
/// Size of the bounce buffer entries below `PIPELINE_MIN` are read through.
const BOUNCE: usize = 256 << 10;
/// How much of an entry is read first, straight into place: the whole of a small one.
const PREFIX_READ: usize = 64 << 10;
/// From this size on, a read goes straight into place and is checksummed by a
/// second thread as it goes.
const PIPELINE_MIN: usize = 16 << 20;
/// The pipelined read reads this much at a time, and the checksumming thread
/// lags at most `PIPELINE_CHUNKS` of them behind (16 MiB: still in cache).
const PIPELINE_CHUNK: usize = 4 << 20;
const PIPELINE_CHUNKS: usize = 4;
/// A hit refreshes the entry's access time (what eviction orders by) only when
/// it is older than this: most hits of a hot entry then cost no extra system call.
const TOUCH_GRANULARITY: Duration = Duration::from_secs(1);

/// Test hook: when this variable names a file, the writer creates that file
/// after writing the first half of the entry and then waits forever, so a
/// test can SIGKILL the process at a known point of the write.
pub const PAUSE_HOOK_ENV: &str = "PERFKIT_CACHE_TEST_PAUSE_MID_WRITE";

/// Where the parts of an entry file are (offsets from the start of the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub flags: u32,
    /// (offset, length) of the metadata JSON (without its newline).
    pub metadata: (u64, u64),
    /// (offset, length) of the value of the metadata's top-level `"key"`
    /// field (see [`metadata_key`]), found once when the layout is parsed so
    /// that each hit compares it with [`Layout::check_key`] without a scan.
    pub key: Option<(u64, u64)>,
    /// (offset, length) of the pickle stream.
    pub stream: (u64, u64),
    /// (offset, length) of each out-of-band buffer.
    pub buffers: Vec<(u64, u64)>,
    pub total_len: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome<T> {
    /// No entry at this path.
    Missing,
    /// An entry exists but cannot be trusted (the reason says why).
    Corrupt(String),
    Found(T),
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(ALIGN) * ALIGN
}

impl Layout {
    fn plan(flags: u32, metadata: &[u8], stream_len: u64, buffer_lens: &[u64]) -> Layout {
        let meta_len = metadata.len() as u64;
        let header = meta_len + 1;
        let table_end = header + HEADER_LEN + 16 * buffer_lens.len() as u64;
        let mut pos = table_end + stream_len;
        let mut buffers = Vec::with_capacity(buffer_lens.len());
        for &len in buffer_lens {
            pos = align_up(pos);
            buffers.push((pos, len));
            pos += len;
        }
        Layout {
            flags,
            metadata: (0, meta_len),
            key: key_range(metadata),
            stream: (table_end, stream_len),
            buffers,
            total_len: pos,
        }
    }

    /// Checks that the metadata in `bytes` (the entry's file from its start)
    /// names `expected` as its key: an entry of another call put at this
    /// call's path (a link to it, a copy of it) is a valid entry, checksums
    /// and all, but not this call's result.
    pub fn check_key(&self, bytes: &[u8], expected: &str) -> Result<(), String> {
        let found = self
            .key
            .and_then(|(o, l)| bytes.get(o as usize..(o + l) as usize));
        key_verdict(found, expected)
    }

    fn header_offset(&self) -> u64 {
        self.metadata.1 + 1
    }

    /// The metadata line, the header (checksums zeroed, filled in by `seal`) and the table.
    fn encode_prefix(&self, metadata: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.stream.0 as usize);
        v.extend_from_slice(metadata);
        v.push(b'\n');
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&(self.buffers.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.stream.1.to_le_bytes());
        v.extend_from_slice(&self.total_len.to_le_bytes());
        v.extend_from_slice(&[0u8; 32]);
        for &(off, len) in &self.buffers {
            v.extend_from_slice(&off.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
        }
        v
    }
}

/// Parses and bounds-checks the prefix of an entry file: `prefix` holds the
/// file from its start through at least the header. Returns the layout (its
/// `buffers` empty when `prefix` does not reach the end of the table: read
/// `stream.0` bytes and parse again) and the two checksums.
fn parse_prefix(prefix: &[u8], file_len: u64) -> Result<(Layout, u128, u128), String> {
    let Some(nl) = prefix.iter().position(|&b| b == b'\n') else {
        return Err(if (prefix.len() as u64) < file_len {
            "metadata line too long".into()
        } else {
            "no metadata line (truncated, or not a perfkit cache entry)".into()
        });
    };
    let h = nl + 1;
    if prefix.len() < h + HEADER_LEN as usize {
        return Err(format!("file too short ({file_len} bytes)"));
    }
    let hd = &prefix[h..];
    if &hd[0..8] != MAGIC {
        return Err("not a perfkit cache entry (bad magic after the metadata line)".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(hd[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(hd[o..o + 8].try_into().unwrap());
    let u128_at = |o: usize| u128::from_le_bytes(hd[o..o + 16].try_into().unwrap());
    let flags = u32_at(8);
    let n = u32_at(12) as u64;
    let stream_len = u64_at(16);
    let total_len = u64_at(24);
    if total_len != file_len {
        return Err(format!(
            "length {file_len} bytes, header says {total_len} (truncated or overwritten)"
        ));
    }
    let table_end = n
        .checked_mul(16)
        .and_then(|t| t.checked_add(h as u64 + HEADER_LEN))
        .filter(|&t| t <= file_len)
        .ok_or("buffer table runs past the end of the file")?;
    let stream_end = table_end
        .checked_add(stream_len)
        .filter(|&e| e <= file_len)
        .ok_or("pickle stream runs past the end of the file")?;
    let mut layout = Layout {
        flags,
        metadata: (0, nl as u64),
        key: key_range(&prefix[..nl]),
        stream: (table_end, stream_len),
        buffers: Vec::new(),
        total_len,
    };
    if (prefix.len() as u64) < table_end {
        return Ok((layout, 0, 0));
    }
    let mut min_off = stream_end;
    for i in 0..n as usize {
        let off = u64_at(64 + 16 * i);
        let len = u64_at(64 + 16 * i + 8);
        match off.checked_add(len).filter(|&e| e <= file_len) {
            Some(end) if off >= min_off => {
                min_off = end;
                layout.buffers.push((off, len));
            }
            _ => return Err(format!("buffer {i} lies outside the file")),
        }
    }
    Ok((layout, u128_at(32), u128_at(48)))
}

/// Covers the metadata line, the header's first 32 bytes, the table and the stream.
fn head_checksum(prefix: &[u8], header_offset: usize, stream: &[u8]) -> u128 {
    let mut h = Xxh3Default::new();
    h.update(&prefix[..header_offset + 32]);
    h.update(&prefix[header_offset + HEADER_LEN as usize..]);
    h.update(stream);
    h.digest128()
}

fn seal(prefix: &mut [u8], header_offset: usize, head: u128, body: u128) {
    prefix[header_offset + 32..header_offset + 48].copy_from_slice(&head.to_le_bytes());
    prefix[header_offset + 48..header_offset + 64].copy_from_slice(&body.to_le_bytes());
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_path_for(entry: &Path) -> PathBuf {
    let name = entry
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    entry.with_file_name(format!(
        "{TMP_PREFIX}{name}-{}-{n}-{nanos:x}",
        std::process::id()
    ))
}

fn pause_hook() {
    if let Some(marker) = std::env::var_os(PAUSE_HOOK_ENV) {
        let _ = fs::write(&marker, b"paused mid-write\n");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Writes an entry (metadata line, stream, buffers, checksums) to a
/// temporary file next to `entry` and publishes it with one atomic rename,
/// replacing any previous entry at that path. Parent directories are created
/// as needed. Returns the entry's size in bytes.
pub fn write_entry(
    entry: &Path,
    flags: u32,
    metadata_json: &str,
    stream: &[u8],
    buffers: &[&[u8]],
    durable: bool,
) -> Result<u64, CacheError> {
    let layout = plan_entry(entry, flags, metadata_json, stream, buffers)?;
    if layout.total_len <= ONE_WRITE_MAX {
        let bytes = assemble(&layout, metadata_json.as_bytes(), stream, buffers);
        return write_encoded(entry, &bytes, durable);
    }
    publish(entry, durable, |file, tmp| {
        write_streamed(
            file,
            tmp,
            &layout,
            metadata_json.as_bytes(),
            stream,
            buffers,
        )
    })
}

/// An entry encoded in memory, byte for byte the file [`write_entry`] would
/// write: for small entries, written with one call or queued for
/// [`crate::writer::WriteBehind`]. `entry` only names the entry in errors.
pub fn encode_entry(
    entry: &Path,
    flags: u32,
    metadata_json: &str,
    stream: &[u8],
    buffers: &[&[u8]],
) -> Result<Vec<u8>, CacheError> {
    let layout = plan_entry(entry, flags, metadata_json, stream, buffers)?;
    Ok(assemble(&layout, metadata_json.as_bytes(), stream, buffers))
}

/// Publishes an entry encoded by [`encode_entry`] (temporary file, one
/// write, atomic rename). Returns its size in bytes.
pub fn write_encoded(entry: &Path, bytes: &[u8], durable: bool) -> Result<u64, CacheError> {
    publish(entry, durable, |file, tmp| fill_encoded(file, tmp, bytes))
}

/// [`write_encoded`] for an entry under `root`, a directory that must still
/// exist: the directories between `root` and the entry are created as
/// needed, `root` itself never is. `Ok(None)` when `root` is gone, or a
/// directory on the way vanished while the entry was written (removed
/// since the entry was queued, or being removed: nothing is written,
/// nothing re-created, and it is not a failure).
pub fn write_encoded_below(
    root: &Path,
    entry: &Path,
    bytes: &[u8],
) -> Result<Option<u64>, CacheError> {
    match publish_in(entry, false, Some(root), |file, tmp| {
        fill_encoded(file, tmp, bytes)
    }) {
        Ok(len) => Ok(Some(len)),
        Err(e) if e.kind() == Some(io::ErrorKind::NotFound) || !root.is_dir() => Ok(None),
        Err(e) => Err(e),
    }
}

fn fill_encoded(file: &mut File, tmp: &Path, bytes: &[u8]) -> Result<u64, CacheError> {
    let werr = |e| CacheError::io("write", tmp, e);
    if std::env::var_os(PAUSE_HOOK_ENV).is_some() {
        let half = bytes.len() / 2;
        file.write_all(&bytes[..half]).map_err(werr)?;
        pause_hook();
        file.write_all(&bytes[half..]).map_err(werr)?;
    } else {
        file.write_all(bytes).map_err(werr)?;
    }
    Ok(bytes.len() as u64)
}

/// Creates the directories from `root` (exclusive: it must exist) down to
/// `dir`, one `mkdir` each, so that a `root` removed meanwhile is not created
/// again (the `mkdir` below it fails instead).
fn create_dirs_below(root: &Path, dir: &Path) -> io::Result<()> {
    let rest = dir.strip_prefix(root).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not below {}", dir.display(), root.display()),
        )
    })?;
    let mut at = root.to_path_buf();
    for part in rest.components() {
        at.push(part);
        match fs::create_dir(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where each part of an entry goes; an error if the metadata is not one
/// line of at most `MAX_METADATA_LEN` bytes.
fn plan_entry(
    entry: &Path,
    flags: u32,
    metadata_json: &str,
    stream: &[u8],
    buffers: &[&[u8]],
) -> Result<Layout, CacheError> {
    if metadata_json.contains('\n') || metadata_json.len() > MAX_METADATA_LEN {
        return Err(CacheError::io(
            "write (metadata must be one line of at most 1 MiB)",
            entry,
            io::Error::from(io::ErrorKind::InvalidInput),
        ));
    }
    let lens: Vec<u64> = buffers.iter().map(|b| b.len() as u64).collect();
    Ok(Layout::plan(
        flags,
        metadata_json.as_bytes(),
        stream.len() as u64,
        &lens,
    ))
}

/// Creates a temporary sibling of `entry` (and the directories on the way),
/// lets `fill` write it, then publishes it by renaming it over `entry`; on
/// any failure the temporary file is removed, so nothing partial remains.
fn publish(
    entry: &Path,
    durable: bool,
    fill: impl FnOnce(&mut File, &Path) -> Result<u64, CacheError>,
) -> Result<u64, CacheError> {
    publish_in(entry, durable, None, fill)
}

/// [`publish`], creating missing directories only below `root` when given
/// (else every missing one).
fn publish_in(
    entry: &Path,
    durable: bool,
    root: Option<&Path>,
    fill: impl FnOnce(&mut File, &Path) -> Result<u64, CacheError>,
) -> Result<u64, CacheError> {
    let tmp = tmp_path_for(entry);
    let mut file = match File::create(&tmp) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = entry.parent().unwrap_or(Path::new("."));
            match root {
                Some(root) => create_dirs_below(root, parent),
                None => fs::create_dir_all(parent),
            }
            .map_err(|e| CacheError::io("create the cache directory", parent, e))?;
            File::create(&tmp).map_err(|e| CacheError::io("create", &tmp, e))?
        }
        Err(e) => return Err(CacheError::io("create", &tmp, e)),
    };
    let result = fill(&mut file, &tmp).and_then(|len| {
        if durable {
            file.sync_all()
                .map_err(|e| CacheError::io("write", &tmp, e))?;
        }
        drop(file);
        fs::rename(&tmp, entry).map_err(|e| CacheError::io("publish the entry at", entry, e))?;
        if durable {
            if let Some(parent) = entry.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| CacheError::io("sync", parent, e))?;
            }
        }
        Ok(len)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The whole file of a small entry, checksums sealed.
fn assemble(layout: &Layout, metadata: &[u8], stream: &[u8], buffers: &[&[u8]]) -> Vec<u8> {
    let h = layout.header_offset() as usize;
    let prefix = layout.encode_prefix(metadata);
    let head_ck = head_checksum(&prefix, h, stream);
    let mut body = Xxh3Default::new();
    let mut all = prefix;
    all.reserve(layout.total_len as usize - all.len());
    all.extend_from_slice(stream);
    for (b, &(off, _)) in buffers.iter().zip(&layout.buffers) {
        all.resize(off as usize, 0);
        all.extend_from_slice(b);
        body.update(b);
    }
    seal(&mut all, h, head_ck, body.digest128());
    all
}

/// A large entry: streamed, each chunk hashed right before it is written
/// (while it is in cache), then the header's checksums filled in.
fn write_streamed(
    file: &mut File,
    path: &Path,
    layout: &Layout,
    metadata: &[u8],
    stream: &[u8],
    buffers: &[&[u8]],
) -> Result<u64, CacheError> {
    let h = layout.header_offset() as usize;
    let mut prefix = layout.encode_prefix(metadata);
    let head_ck = head_checksum(&prefix, h, stream);
    let werr = |e| CacheError::io("write", path, e);
    file.write_all(&prefix).map_err(werr)?;
    file.write_all(stream).map_err(werr)?;
    let mut pos = layout.stream.0 + layout.stream.1;
    let mut body = Xxh3Default::new();
    let zeros = [0u8; ALIGN as usize];
    let half = layout.total_len / 2;
    let mut paused = false;
    for (b, &(off, _)) in buffers.iter().zip(&layout.buffers) {
        file.write_all(&zeros[..(off - pos) as usize])
            .map_err(werr)?;
        pos = off;
        for c in b.chunks(CHUNK) {
            if !paused && pos >= half {
                paused = true;
                pause_hook();
            }
            body.update(c);
            file.write_all(c).map_err(werr)?;
            pos += c.len() as u64;
        }
    }
    if !paused {
        pause_hook();
    }
    seal(&mut prefix, h, head_ck, body.digest128());
    file.write_all_at(&prefix[h..h + HEADER_LEN as usize], h as u64)
        .map_err(werr)?;
    Ok(layout.total_len)
}

/// An entry opened for reading: the file is open and its length known, so the
/// caller can allocate the destination (e.g. a Python bytearray) before
/// [`EntryReader::read_into`] reads and verifies it.
pub struct EntryReader {
    file: File,
    path: PathBuf,
    len: u64,
    /// The file's modification time, which records its last use (see `touch`).
    last_used: Option<SystemTime>,
}

/// Opens an entry file; `Missing` when there is none.
pub fn open_entry(entry: &Path) -> Result<ReadOutcome<EntryReader>, CacheError> {
    open_entry_for(entry, false)
}

/// [`open_entry`], for writing too when `write` (an "r+" mapping's file).
fn open_entry_for(entry: &Path, write: bool) -> Result<ReadOutcome<EntryReader>, CacheError> {
    let (file, meta) = match open_regular(entry, write)? {
        ReadOutcome::Found(v) => v,
        ReadOutcome::Missing => return Ok(ReadOutcome::Missing),
        ReadOutcome::Corrupt(c) => return Ok(ReadOutcome::Corrupt(c)),
    };
    Ok(ReadOutcome::Found(EntryReader {
        file,
        path: entry.to_path_buf(),
        len: meta.len(),
        last_used: meta.modified().ok(),
    }))
}

/// Opens the file at an entry's path (for writing too when `write`) and
/// makes sure it is a regular file, without blocking on one that is not: a
/// FIFO put in an entry's place would block a plain `open` until some writer
/// opened it (forever), and a device (`/dev/zero`) would never end. The file
/// is opened `O_NONBLOCK`, checked with `fstat`, then set back to blocking.
/// Anything but a regular file is `Corrupt` (a damaged entry). A symbolic
/// link is followed: what it leads to is checked like any entry.
fn open_regular(
    entry: &Path,
    write: bool,
) -> Result<ReadOutcome<(File, fs::Metadata)>, CacheError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = match fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(entry)
    {
        Ok(f) => f,
        Err(e) if is_missing(&e) => return Ok(ReadOutcome::Missing),
        // A socket (ENXIO), or a directory opened for writing (EISDIR).
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO | libc::EISDIR)) => {
            return Ok(ReadOutcome::Corrupt(format!("not a regular file ({e})")))
        }
        Err(e) => return Err(CacheError::io("open", entry, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| CacheError::io("stat", entry, e))?;
    if !meta.file_type().is_file() {
        return Ok(ReadOutcome::Corrupt(format!(
            "not a regular file but {}",
            file_kind(&meta.file_type())
        )));
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns; no memory is passed.
    let cleared = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(CacheError::io("open", entry, io::Error::last_os_error()));
    }
    Ok(ReadOutcome::Found((file, meta)))
}

fn file_kind(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

impl EntryReader {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the entry's head before its whole length is allocated for
    /// [`EntryReader::read_into`]: reads (`pread`: the file position stays
    /// where it is) the metadata line, at most [`MAX_METADATA_LEN`] bytes,
    /// and the header, and checks that the header describes a file of this
    /// length. `Some(reason)` when it does not: a file that is not an entry
    /// (however large) costs one short read, not an allocation of its size.
    pub fn check_head(&self) -> Result<Option<String>, CacheError> {
        let bound = (MAX_METADATA_LEN + 1 + HEADER_LEN as usize).min(self.len as usize);
        let mut prefix = vec![0u8; bound.min(PREFIX_READ)];
        let mut n = self.pread_fill(&mut prefix, 0)?;
        if n == prefix.len() && n < bound && !prefix.contains(&b'\n') {
            prefix.resize(bound, 0);
            n += self.pread_fill(&mut prefix[n..], n as u64)?;
        }
        Ok(parse_prefix(&prefix[..n], self.len).err())
    }

    /// Fills `buf` from offset `at` (fewer bytes only at the end of the file).
    fn pread_fill(&self, buf: &mut [u8], at: u64) -> Result<usize, CacheError> {
        let mut n = 0;
        while n < buf.len() {
            match self.file.read_at(&mut buf[n..], at + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CacheError::io("read", self.path.clone(), e)),
            }
        }
        Ok(n)
    }

    /// Marks the entry as just used (eviction is least recently used first) by
    /// setting its modification time: unlike the access time, no kernel mount
    /// option (relatime, noatime) changes it behind our back, and entries are
    /// never modified in place. Best effort: a read-only location still serves hits.
    fn touch(&self) {
        let now = SystemTime::now();
        let recent = self
            .last_used
            .is_some_and(|a| now.duration_since(a).unwrap_or_default() < TOUCH_GRANULARITY);
        if !recent {
            let _ = self.file.set_times(FileTimes::new().set_modified(now));
        }
    }

    /// Reads the whole file into `dest` (exactly `len()` bytes), verifies
    /// both checksums and the padding, and marks the entry as just used.
    pub fn read_into(mut self, dest: &mut [u8]) -> Result<ReadOutcome<Layout>, CacheError> {
        assert_eq!(
            dest.len() as u64,
            self.len,
            "destination must hold the whole entry"
        );
        let len = dest.len();
        // 1. The prefix (metadata line, header, table, stream), read straight into `dest`.
        let mut filled = self.read_direct(dest, 0, len.min(PREFIX_READ))?;
        if filled == len.min(PREFIX_READ) && !dest[..filled].contains(&b'\n') {
            // A metadata line longer than the first read (it may be up to MAX_METADATA_LEN).
            let bound = (MAX_METADATA_LEN + 1 + HEADER_LEN as usize).min(len);
            filled = self.read_direct(dest, filled, bound)?;
        }
        let (layout, head_ck, body_ck) = match parse_prefix(&dest[..filled], self.len) {
            Ok((layout, _, _))
                if layout.buffers.is_empty() && (filled as u64) < layout.stream.0 =>
            {
                // A long buffer table: read through the stream's end and parse again.
                let stream_end = (layout.stream.0 + layout.stream.1) as usize;
                filled = self.read_direct(dest, filled, stream_end)?;
                match parse_prefix(&dest[..filled], self.len) {
                    Ok(v) => v,
                    Err(reason) => return Ok(ReadOutcome::Corrupt(reason)),
                }
            }
            Ok(v) => v,
            Err(reason) => return Ok(ReadOutcome::Corrupt(reason)),
        };
        let (s0, sl) = (layout.stream.0 as usize, layout.stream.1 as usize);
        if filled < s0 + sl {
            filled = self.read_direct(dest, filled, s0 + sl)?;
        }
        if filled < s0 + sl {
            return Ok(ReadOutcome::Corrupt(format!(
                "file shrank while being read ({filled} of {len} bytes)"
            )));
        }
        if head_checksum(
            &dest[..s0],
            layout.header_offset() as usize,
            &dest[s0..s0 + sl],
        ) != head_ck
        {
            return Ok(ReadOutcome::Corrupt(
                "checksum mismatch in the metadata, header or pickle stream".into(),
            ));
        }
        // 2. The buffers, verified as they arrive (while in cache).
        let mut verifier = BodyVerifier::new(&layout.buffers, (s0 + sl) as u64);
        verifier.feed(&dest[s0 + sl..filled]);
        let rest = &mut dest[filled..];
        if rest.len() >= PIPELINE_MIN {
            // Large: this thread reads straight into place (the destination is
            // the caller's, e.g. numpy's allocation, which asks for huge pages:
            // the kernel's copy faults it in cheaply), while a second thread
            // checksums each chunk right behind the read, while it is in cache.
            // The checksum then costs (almost) nothing on top of the read when a
            // second CPU is free; a read through a bounce buffer copied into
            // place by the checksumming thread cost a third more (measured).
            let (got, v) = std::thread::scope(|scope| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<&[u8]>(PIPELINE_CHUNKS);
                let checker = scope.spawn(move || {
                    for chunk in rx {
                        verifier.feed(chunk);
                    }
                    verifier
                });
                let mut got = 0;
                let mut result = Ok(());
                for chunk in rest.chunks_mut(PIPELINE_CHUNK) {
                    let want = chunk.len();
                    match self.read_direct(chunk, 0, want) {
                        Ok(n) => {
                            got += n;
                            let chunk: &[u8] = chunk;
                            let _ = tx.send(&chunk[..n]);
                            if n < want {
                                break;
                            }
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                drop(tx);
                let verifier = checker.join().expect("checksum thread panicked");
                result.map(|()| (got, verifier))
            })?;
            filled += got;
            verifier = v;
        } else {
            // Smaller: read through a small bounce buffer that stays mapped, then
            // copied: reading straight into freshly allocated memory without huge
            // pages (a bytearray) makes the kernel fault its pages in one by one
            // during the copy-out, which costs several times the extra memcpy
            // (measured 3-5x on the CI machines).
            let mut bounce = vec![0u8; BOUNCE.min(rest.len())];
            for chunk in rest.chunks_mut(BOUNCE) {
                let n = self.read_via(&mut bounce, chunk)?;
                verifier.feed(&chunk[..n]);
                filled += n;
                if n < chunk.len() {
                    break;
                }
            }
        }
        if filled < len {
            return Ok(ReadOutcome::Corrupt(format!(
                "file shrank while being read ({filled} of {len} bytes)"
            )));
        }
        if !verifier.padding_ok {
            return Ok(ReadOutcome::Corrupt(
                "non-zero bytes in alignment padding".into(),
            ));
        }
        if verifier.hasher.digest128() != body_ck && layout.flags & FLAG_BUFFERS_WRITABLE == 0 {
            return Ok(ReadOutcome::Corrupt(
                "checksum mismatch in the data buffers".into(),
            ));
        }
        self.touch();
        Ok(ReadOutcome::Found(layout))
    }

    /// Fills `chunk` through `bounce` (see `read_into`); returns the bytes read (fewer only at end of file).
    fn read_via(&mut self, bounce: &mut [u8], chunk: &mut [u8]) -> Result<usize, CacheError> {
        let mut n = 0;
        while n < chunk.len() {
            let want = bounce.len().min(chunk.len() - n);
            match self.file.read(&mut bounce[..want]) {
                Ok(0) => break,
                Ok(k) => {
                    chunk[n..n + k].copy_from_slice(&bounce[..k]);
                    n += k;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CacheError::io("read", self.path.clone(), e)),
            }
        }
        Ok(n)
    }

    /// Reads into `dest[from..to]` directly; returns how far it got (less only at end of file).
    fn read_direct(
        &mut self,
        dest: &mut [u8],
        from: usize,
        to: usize,
    ) -> Result<usize, CacheError> {
        let mut filled = from;
        while filled < to {
            match self.file.read(&mut dest[filled..to]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CacheError::io("read", self.path.clone(), e)),
            }
        }
        Ok(filled)
    }
}

/// Checks the bytes after the stream as they are read, in file order: buffer
/// bytes go into the body checksum, alignment padding must be zeros.
struct BodyVerifier<'a> {
    buffers: &'a [(u64, u64)],
    next: usize,
    pos: u64,
    hasher: Xxh3Default,
    padding_ok: bool,
}

impl<'a> BodyVerifier<'a> {
    fn new(buffers: &'a [(u64, u64)], start: u64) -> Self {
        BodyVerifier {
            buffers,
            next: 0,
            pos: start,
            hasher: Xxh3Default::new(),
            padding_ok: true,
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            // Skip buffers already complete (including empty ones).
            while self.next < self.buffers.len()
                && self.pos >= self.buffers[self.next].0 + self.buffers[self.next].1
            {
                self.next += 1;
            }
            let (take, in_buffer) = match self.buffers.get(self.next) {
                Some(&(off, _)) if self.pos < off => ((off - self.pos) as usize, false),
                Some(&(off, len)) => ((off + len - self.pos) as usize, true),
                None => (data.len(), false),
            };
            let (part, rest) = data.split_at(take.min(data.len()));
            if in_buffer {
                self.hasher.update(part);
            } else if part.iter().any(|&b| b != 0) {
                self.padding_ok = false;
            }
            self.pos += part.len() as u64;
            data = rest;
        }
    }
}

/// An entry read whole: its layout and its bytes.
pub type WholeEntry = (Layout, Vec<u8>);

/// The fast path of a hit. A small entry this process read within
/// `TOUCH_GRANULARITY` is served from memory after one `stat` shows its file
/// unchanged (same inode, size and times: a replaced, removed or damaged file
/// fails this and is read again); otherwise the file is opened and read with
/// one call, verified, and marked as used. Returns `Found(None)` when the
/// entry is larger than `max` bytes: read it with [`open_entry`] then.
pub fn read_small_entry(
    entry: &Path,
    max: usize,
) -> Result<ReadOutcome<Option<Arc<WholeEntry>>>, CacheError> {
    let now = Instant::now();
    if let Some(recent) = RecentReads::get(entry, now) {
        match fs::metadata(entry) {
            Ok(m) if FileId::of(&m) == recent.id => {
                return Ok(ReadOutcome::Found(Some(recent.entry)))
            }
            Err(e) if is_missing(&e) => {
                RecentReads::forget(entry);
                return Ok(ReadOutcome::Missing);
            }
            _ => RecentReads::forget(entry), // changed: read it again
        }
    }
    let (file, whole) = match read_small_file(entry, max)? {
        ReadOutcome::Found(Some(v)) => v,
        ReadOutcome::Found(None) => return Ok(ReadOutcome::Found(None)),
        ReadOutcome::Missing => return Ok(ReadOutcome::Missing),
        ReadOutcome::Corrupt(reason) => return Ok(ReadOutcome::Corrupt(reason)),
    };
    let whole = Arc::new(whole);
    // A use of the entry, for eviction (best effort: a read-only location still serves hits).
    let _ = file.set_times(FileTimes::new().set_modified(SystemTime::now()));
    // Not an entry whose buffers are written in place through an "r+"
    // mapping: a second write to a page already dirty changes neither its
    // size nor its times, so a kept copy could not tell it is stale.
    if whole.0.flags & FLAG_BUFFERS_WRITABLE == 0 {
        if let Ok(m) = file.metadata() {
            RecentReads::put(entry, FileId::of(&m), Arc::clone(&whole), now);
        }
    }
    Ok(ReadOutcome::Found(Some(whole)))
}

/// Opens an entry and reads it whole with one call (into a reused scratch buffer).
fn read_small_file(
    entry: &Path,
    max: usize,
) -> Result<ReadOutcome<Option<(File, WholeEntry)>>, CacheError> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut file = match open_regular(entry, false)? {
        ReadOutcome::Found((f, _)) => f,
        ReadOutcome::Missing => return Ok(ReadOutcome::Missing),
        ReadOutcome::Corrupt(c) => return Ok(ReadOutcome::Corrupt(c)),
    };
    SCRATCH.with_borrow_mut(|buf| {
        // One byte more than `max`: a full buffer means "larger than max".
        if buf.len() != max + 1 {
            *buf = vec![0u8; max + 1];
        }
        let mut n = 0;
        loop {
            match file.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    if n == buf.len() {
                        return Ok(ReadOutcome::Found(None));
                    }
                    // A short read of a regular file is its end; check that against the header
                    // (one more read only if the header says the file is longer).
                    if parse_prefix(&buf[..n], n as u64).is_ok() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CacheError::io("read", entry, e)),
            }
        }
        let bytes = buf[..n].to_vec();
        Ok(match verify_complete(&bytes) {
            Ok(layout) => ReadOutcome::Found(Some((file, (layout, bytes)))),
            Err(reason) => ReadOutcome::Corrupt(reason),
        })
    })
}

/// What identifies one version of a file: a rename over it changes the inode,
/// a write in place the size or the times.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(m: &fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

#[derive(Clone)]
struct RecentRead {
    id: FileId,
    entry: Arc<WholeEntry>,
    read_at: Instant,
}

/// Small entries this process read (and marked as used) lately, bounded in
/// count and bytes.
struct RecentReads;

const RECENT_MAX_ENTRIES: usize = 128;
const RECENT_MAX_BYTES: usize = 8 << 20;

static RECENT: Mutex<Option<HashMap<PathBuf, RecentRead>>> = Mutex::new(None);

impl RecentReads {
    fn get(entry: &Path, now: Instant) -> Option<RecentRead> {
        let guard = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        let r = guard.as_ref()?.get(entry)?;
        // Past the granularity the entry is read again, which also marks it as used.
        (now.duration_since(r.read_at) < TOUCH_GRANULARITY).then(|| r.clone())
    }

    fn forget(entry: &Path) {
        let mut guard = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = guard.as_mut() {
            map.remove(entry);
        }
    }

    fn put(entry: &Path, id: FileId, whole: Arc<WholeEntry>, now: Instant) {
        let mut guard = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        let map = guard.get_or_insert_with(HashMap::new);
        map.remove(entry);
        let bytes = |m: &HashMap<PathBuf, RecentRead>| -> usize {
            m.values().map(|r| r.entry.1.len()).sum()
        };
        while !map.is_empty()
            && (map.len() >= RECENT_MAX_ENTRIES || bytes(map) + whole.1.len() > RECENT_MAX_BYTES)
        {
            let oldest = map
                .iter()
                .min_by_key(|(_, r)| r.read_at)
                .map(|(p, _)| p.clone());
            if let Some(p) = oldest {
                map.remove(&p);
            }
        }
        map.insert(
            entry.to_path_buf(),
            RecentRead {
                id,
                entry: whole,
                read_at: now,
            },
        );
    }
}

/// Verifies a whole entry held in memory (a small entry read whole, one
/// queued for the background writer): length, checksums, padding; the error
/// says what is wrong.
pub fn verify_complete(bytes: &[u8]) -> Result<Layout, String> {
    let (layout, head_ck, body_ck) = parse_prefix(bytes, bytes.len() as u64)?;
    let (s0, sl) = (layout.stream.0 as usize, layout.stream.1 as usize);
    if head_checksum(
        &bytes[..s0],
        layout.header_offset() as usize,
        &bytes[s0..s0 + sl],
    ) != head_ck
    {
        return Err("checksum mismatch in the metadata, header or pickle stream".into());
    }
    let mut verifier = BodyVerifier::new(&layout.buffers, (s0 + sl) as u64);
    verifier.feed(&bytes[s0 + sl..]);
    if !verifier.padding_ok {
        return Err("non-zero bytes in alignment padding".into());
    }
    if verifier.hasher.digest128() != body_ck && layout.flags & FLAG_BUFFERS_WRITABLE == 0 {
        return Err("checksum mismatch in the data buffers".into());
    }
    Ok(layout)
}

/// The value of the top-level `"key"` field of an entry's metadata line (the
/// call's argument hash, which also names the entry's file), or None when it
/// has none. A small scanner, not a JSON parser: it follows strings (and
/// their escapes) and nesting, so that a `"key"` inside the arguments'
/// object is not taken for it; the value is returned as written (a key is
/// plain hex digits, never escaped).
pub fn metadata_key(metadata: &[u8]) -> Option<&[u8]> {
    let n = metadata.len();
    let skip_ws = |mut i: usize| {
        while i < n && matches!(metadata[i], b' ' | b'\t' | b'\r' | b'\n') {
            i += 1;
        }
        i
    };
    // The end (index of the closing quote) of the string whose opening quote is at `i`.
    let string_end = |i: usize| {
        let mut j = i + 1;
        while j < n {
            match metadata[j] {
                b'"' => return Some(j),
                b'\\' => j += 2,
                _ => j += 1,
            }
        }
        None
    };
    let mut i = skip_ws(0);
    if metadata.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut depth = 1usize;
    let mut name_next = true; // at depth 1, the next string is a field's name
    while i < n {
        match metadata[i] {
            b'"' => {
                let end = string_end(i)?;
                let is_key_name = depth == 1 && name_next && &metadata[i + 1..end] == b"key";
                let was_name = depth == 1 && name_next;
                i = end + 1;
                if was_name {
                    name_next = false;
                    i = skip_ws(i);
                    if metadata.get(i) != Some(&b':') {
                        return None;
                    }
                    i = skip_ws(i + 1);
                    if is_key_name {
                        if metadata.get(i) != Some(&b'"') {
                            return None;
                        }
                        let end = string_end(i)?;
                        return Some(&metadata[i + 1..end]);
                    }
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            b',' if depth == 1 => name_next = true,
            _ => {}
        }
        i += 1;
    }
    None
}

/// (offset, length) in `metadata` of [`metadata_key`]'s value.
fn key_range(metadata: &[u8]) -> Option<(u64, u64)> {
    let k = metadata_key(metadata)?;
    let offset = k.as_ptr() as usize - metadata.as_ptr() as usize;
    Some((offset as u64, k.len() as u64))
}

/// Checks that an entry's metadata names `expected` as its key (see
/// [`Layout::check_key`], which does not scan the metadata again).
pub fn check_key(metadata: &[u8], expected: &str) -> Result<(), String> {
    key_verdict(metadata_key(metadata), expected)
}

fn key_verdict(found: Option<&[u8]>, expected: &str) -> Result<(), String> {
    match found {
        Some(k) if k == expected.as_bytes() => Ok(()),
        Some(k) => Err(format!(
            "it is another call's entry: its key is {}, this call's is {expected}",
            String::from_utf8_lossy(&k[..k.len().min(64)])
        )),
        None => Err("its metadata names no key: not this call's entry".into()),
    }
}

/// What a memory-mapping reader needs: the layout and the pickle stream.
#[derive(Debug)]
pub struct EntryHead {
    pub layout: Layout,
    pub metadata: Vec<u8>,
    pub stream: Vec<u8>,
    /// The file this head was read from (open for writing too when it was
    /// asked for writable), for the caller to map its buffers from: opened
    /// again by name, it could be a newer version of the entry, whose
    /// buffers are elsewhere. None for an entry read from memory.
    pub file: Option<File>,
}

/// Reads and verifies the metadata, header, table and pickle stream only (for
/// `mmap_mode`: the buffers are mapped, not read, so their checksum is not
/// verified; their extent is, through the file length). `touch`: count this
/// read as a use of the entry. `writable`: the buffers are about to be
/// mapped writable, so the entry is marked [`FLAG_BUFFERS_WRITABLE`] (once:
/// rewritten as a new file, see inside). `key`: the call's key, which the
/// metadata must name (see [`check_key`]), checked before the entry is
/// touched or marked.
pub fn read_entry_head(
    entry: &Path,
    touch: bool,
    writable: bool,
    key: Option<&str>,
) -> Result<ReadOutcome<EntryHead>, CacheError> {
    let reader = match open_entry_for(entry, writable)? {
        ReadOutcome::Found(r) => r,
        ReadOutcome::Missing => return Ok(ReadOutcome::Missing),
        ReadOutcome::Corrupt(c) => return Ok(ReadOutcome::Corrupt(c)),
    };
    let rerr = |e| CacheError::io("read", reader.path.clone(), e);
    let first = (MAX_METADATA_LEN as u64 + 1 + HEADER_LEN).min(reader.len) as usize;
    let mut prefix = vec![0u8; first.min(64 << 10)];
    reader.file.read_exact_at(&mut prefix, 0).map_err(rerr)?;
    if !prefix.contains(&b'\n') && prefix.len() < first {
        prefix.resize(first, 0);
        reader.file.read_exact_at(&mut prefix, 0).map_err(rerr)?;
    }
    let (layout, _, _) = match parse_prefix(&prefix, reader.len) {
        Ok(v) => v,
        Err(reason) => return Ok(ReadOutcome::Corrupt(reason)),
    };
    // Read exactly metadata + header + table + stream (the parse bounds-checked them).
    let stream_end = (layout.stream.0 + layout.stream.1) as usize;
    prefix.resize(stream_end, 0);
    reader.file.read_exact_at(&mut prefix, 0).map_err(rerr)?;
    let (layout, head_ck, _) = match parse_prefix(&prefix, reader.len) {
        Ok(v) => v,
        Err(reason) => return Ok(ReadOutcome::Corrupt(reason)),
    };
    let s0 = layout.stream.0 as usize;
    if head_checksum(
        &prefix[..s0],
        layout.header_offset() as usize,
        &prefix[s0..],
    ) != head_ck
    {
        return Ok(ReadOutcome::Corrupt(
            "checksum mismatch in the metadata, header or pickle stream".into(),
        ));
    }
    if let Some(key) = key {
        if let Err(reason) = layout.check_key(&prefix, key) {
            return Ok(ReadOutcome::Corrupt(reason));
        }
    }
    if touch {
        reader.touch();
    }
    let mut layout = layout;
    let mut file = reader.file;
    if writable && layout.flags & FLAG_BUFFERS_WRITABLE == 0 {
        // The flagged entry is a new file, a copy published by rename, as
        // every write of the store is: readers see the old file or the new
        // one, never a half-rewritten header, and results already mapped
        // from the old file (mmap_mode "r" or "c") keep the values they had
        // when the caller then writes into the new one.
        let h = layout.header_offset() as usize;
        layout.flags |= FLAG_BUFFERS_WRITABLE;
        prefix[h + 8..h + 12].copy_from_slice(&layout.flags.to_le_bytes());
        let head = head_checksum(&prefix[..s0], h, &prefix[s0..]);
        prefix[h + 32..h + 48].copy_from_slice(&head.to_le_bytes());
        let tmp = tmp_path_for(entry);
        let published = (|| {
            // A copy of the file read (not of whatever is at `entry` by now).
            let mut copy = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            io::copy(&mut (&file).take(reader.len), &mut copy)?;
            copy.write_all_at(&prefix[h + 8..h + 48], (h + 8) as u64)?;
            fs::rename(&tmp, entry)?;
            Ok::<File, io::Error>(copy)
        })();
        match published {
            Ok(copy) => file = copy,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(CacheError::io("mark writable", entry.to_path_buf(), e));
            }
        }
    }
    let stream = prefix[s0..].to_vec();
    prefix.truncate(layout.metadata.1 as usize);
    Ok(ReadOutcome::Found(EntryHead {
        layout,
        metadata: prefix,
        stream,
        file: Some(file),
    }))
}

/// The head of an entry held in memory (e.g. one not yet written by
/// [`crate::writer::WriteBehind`]), verified as [`verify_complete`] does.
pub fn head_of_encoded(bytes: &[u8]) -> Result<EntryHead, String> {
    let layout = verify_complete(bytes)?;
    let (s0, sl) = (layout.stream.0 as usize, layout.stream.1 as usize);
    Ok(EntryHead {
        metadata: bytes[..layout.metadata.1 as usize].to_vec(),
        stream: bytes[s0..s0 + sl].to_vec(),
        layout,
        file: None,
    })
}

/// Reads a whole entry into a new `Vec` (for Rust callers and tests).
pub fn read_entry(entry: &Path) -> Result<ReadOutcome<(Layout, Vec<u8>)>, CacheError> {
    match open_entry(entry)? {
        ReadOutcome::Found(reader) => {
            let mut buf = vec![0u8; reader.len() as usize];
            Ok(match reader.read_into(&mut buf)? {
                ReadOutcome::Found(layout) => ReadOutcome::Found((layout, buf)),
                ReadOutcome::Corrupt(c) => ReadOutcome::Corrupt(c),
                ReadOutcome::Missing => ReadOutcome::Missing,
            })
        }
        ReadOutcome::Missing => Ok(ReadOutcome::Missing),
        ReadOutcome::Corrupt(c) => Ok(ReadOutcome::Corrupt(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> tempfile::TempDir {
        crate::test_dir("cache", name)
    }

    const META: &str = r#"{"function": "m.f", "input_args": {"x": "1"}}"#;

    fn roundtrip(name: &str, stream: &[u8], buffers: &[&[u8]]) {
        let dir = tmpdir(name);
        let d = dir.path();
        let entry = d.join("f").join("abc.pkc");
        let len = write_entry(&entry, 0, META, stream, buffers, false).unwrap();
        assert_eq!(len, fs::metadata(&entry).unwrap().len());
        let ReadOutcome::Found((layout, bytes)) = read_entry(&entry).unwrap() else {
            panic!("entry not found")
        };
        // A person reads the metadata with `head -1`.
        assert!(bytes.starts_with(format!("{META}\n").as_bytes()));
        let (s0, sl) = layout.stream;
        assert_eq!(&bytes[s0 as usize..(s0 + sl) as usize], stream);
        assert_eq!(layout.buffers.len(), buffers.len());
        for (&(off, len), b) in layout.buffers.iter().zip(buffers) {
            assert_eq!(off % ALIGN, 0);
            assert_eq!(&bytes[off as usize..(off + len) as usize], *b);
        }
        match read_small_entry(&entry, 1 << 16).unwrap() {
            ReadOutcome::Found(Some(small)) => {
                assert!(bytes.len() <= 1 << 16);
                assert_eq!(*small, (layout.clone(), bytes.clone()));
            }
            ReadOutcome::Found(None) => assert!(bytes.len() > 1 << 16),
            other => panic!("{other:?}"),
        }
        let ReadOutcome::Found(head) = read_entry_head(&entry, true, false, None).unwrap() else {
            panic!()
        };
        assert_eq!(head.stream, stream);
        assert_eq!(head.metadata, META.as_bytes());
        assert_eq!(head.layout, layout);
        // Nothing temporary is left behind.
        let names: Vec<_> = fs::read_dir(d.join("f"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("abc.pkc")]);
    }

    #[test]
    fn roundtrip_small_and_large() {
        roundtrip("small", b"pickle", &[]);
        roundtrip("bufs", b"p", &[b"abc", b"", b"0123456789"]);
        let big: Vec<u8> = (0..(3 * ONE_WRITE_MAX as u32))
            .map(|i| (i % 253) as u8)
            .collect();
        roundtrip("large", b"stream", &[&big, b"tail"]);
        // A buffer table longer than the first read (64 KiB): 5000 rows of 16 bytes.
        let many: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize])
            .collect();
        let refs: Vec<&[u8]> = many.iter().map(|v| v.as_slice()).collect();
        roundtrip("manybufs", b"s", &refs);
    }

    #[test]
    fn damage_deep_in_a_large_entry_is_detected() {
        damage_deep(5 * BOUNCE + 17); // read and checksummed in one thread
        damage_deep(PIPELINE_MIN + 3 * BOUNCE + 5); // checksummed by a second thread
    }

    fn damage_deep(size: usize) {
        let dir = tmpdir(&format!("deep{size}"));
        let d = dir.path();
        let entry = d.join("k.pkc");
        let big: Vec<u8> = (0..size as u32).map(|i| (i % 249) as u8).collect();
        write_entry(&entry, 0, META, b"s", &[b"x", &big, b"tail"], false).unwrap();
        let good = fs::read(&entry).unwrap();
        for pos in [
            good.len() / 2,
            good.len() - 3,
            good.len() - 100,
            3 * BOUNCE + 1,
        ] {
            let mut b = good.clone();
            b[pos] ^= 0x80;
            fs::write(&entry, &b).unwrap();
            assert!(
                matches!(read_entry(&entry).unwrap(), ReadOutcome::Corrupt(_)),
                "flip at {pos} not detected"
            );
        }
        fs::write(&entry, &good).unwrap();
        assert!(matches!(read_entry(&entry).unwrap(), ReadOutcome::Found(_)));
    }

    #[test]
    fn missing_entry() {
        let dir = tmpdir("missing");
        let d = dir.path();
        assert!(matches!(
            read_entry(&d.join("nope.pkc")).unwrap(),
            ReadOutcome::Missing
        ));
        assert!(matches!(
            read_entry_head(&d.join("a/b/c.pkc"), false, false, None).unwrap(),
            ReadOutcome::Missing
        ));
    }

    #[test]
    fn rewrite_replaces() {
        let dir = tmpdir("replace");
        let d = dir.path();
        let entry = d.join("k.pkc");
        write_entry(&entry, 0, META, b"first", &[], true).unwrap();
        write_entry(&entry, 0, META, b"second", &[], false).unwrap();
        let ReadOutcome::Found((l, bytes)) = read_entry(&entry).unwrap() else {
            panic!()
        };
        assert_eq!(&bytes[l.stream.0 as usize..], b"second");
        assert_eq!(fs::read_dir(d).unwrap().count(), 1);
    }

    fn corrupt_with(name: &str, damage: impl Fn(&Path)) -> String {
        let dir = tmpdir(name);
        let d = dir.path();
        let entry = d.join("k.pkc");
        write_entry(&entry, 0, META, b"the stream", &[&[7u8; 1000]], false).unwrap();
        damage(&entry);
        if !matches!(
            read_small_entry(&entry, 1 << 16).unwrap(),
            ReadOutcome::Corrupt(_)
        ) {
            panic!("{name}: damage not detected by the small-entry reader");
        }
        match read_entry(&entry).unwrap() {
            ReadOutcome::Corrupt(reason) => reason,
            other => panic!("{name}: damage not detected: {other:?}"),
        }
    }

    #[test]
    fn corruption_is_detected() {
        let r = corrupt_with("trunc", |e| {
            let f = fs::OpenOptions::new().write(true).open(e).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len - 10).unwrap();
        });
        assert!(r.contains("truncated"), "{r}");
        let len = {
            let dir = tmpdir("len");
            let d = dir.path();
            let e = d.join("k.pkc");
            write_entry(&e, 0, META, b"the stream", &[&[7u8; 1000]], false).unwrap();
            fs::metadata(e).unwrap().len() as usize
        };
        // Every byte of the file matters: flip one bit at each position.
        for pos in 0..len {
            let r = corrupt_with(&format!("flip{pos}"), |e| {
                let mut b = fs::read(e).unwrap();
                b[pos] ^= 0x10;
                fs::write(e, b).unwrap();
            });
            assert!(!r.is_empty());
        }
        let r = corrupt_with("nometa", |e| {
            let b = fs::read(e).unwrap();
            let nl = b.iter().position(|&c| c == b'\n').unwrap();
            fs::write(e, &b[nl + 1..]).unwrap();
        });
        assert!(r.contains("metadata") || r.contains("magic"), "{r}");
        let r = corrupt_with("empty", |e| fs::write(e, b"").unwrap());
        assert!(r.contains("no metadata line"), "{r}");
        let r = corrupt_with("garbage", |e| fs::write(e, vec![b'\n'; 500]).unwrap());
        assert!(r.contains("magic"), "{r}");
    }

    #[test]
    fn head_reader_checks_metadata_stream_and_length() {
        let dir = tmpdir("head");
        let d = dir.path();
        let entry = d.join("k.pkc");
        write_entry(&entry, 0, META, b"the stream", &[&[7u8; 1000]], false).unwrap();
        let good = fs::read(&entry).unwrap();
        for pos in [3, META.len() + 1 + 64 + 16 + 2] {
            let mut b = good.clone();
            b[pos] ^= 1; // in the metadata, in the stream
            fs::write(&entry, &b).unwrap();
            assert!(
                matches!(
                    read_entry_head(&entry, true, false, None).unwrap(),
                    ReadOutcome::Corrupt(_)
                ),
                "{pos}"
            );
        }
        let mut b = good.clone();
        b.truncate(b.len() - 1);
        fs::write(&entry, &b).unwrap();
        assert!(matches!(
            read_entry_head(&entry, true, false, None).unwrap(),
            ReadOutcome::Corrupt(_)
        ));
    }

    #[test]
    fn buffers_mapped_writable_may_change_without_the_entry_turning_corrupt() {
        let dir = tmpdir("writable");
        let d = dir.path();
        let entry = d.join("k.pkc");
        write_entry(&entry, 1, META, b"the stream", &[&[7u8; 1000]], false).unwrap();
        let buffer_at = |e: &Path| match read_entry(e).unwrap() {
            ReadOutcome::Found((layout, _)) => layout.buffers[0].0 as usize,
            ReadOutcome::Corrupt(c) => panic!("{c}"),
            ReadOutcome::Missing => panic!("missing"),
        };
        let at = buffer_at(&entry);
        let change_buffer = |e: &Path| {
            let mut b = fs::read(e).unwrap();
            b[at + 10] = 42;
            fs::write(e, &b).unwrap();
        };
        // Read-only heads leave the entry as it was: a changed buffer is damage.
        let ReadOutcome::Found(head) = read_entry_head(&entry, true, false, None).unwrap() else {
            panic!()
        };
        assert_eq!(head.layout.flags, 1);
        let original = fs::read(&entry).unwrap();
        change_buffer(&entry);
        assert!(matches!(
            read_entry(&entry).unwrap(),
            ReadOutcome::Corrupt(_)
        ));
        // Marked writable (mmap_mode r+): the change is the caller's, and stands.
        fs::write(&entry, &original).unwrap();
        let ReadOutcome::Found(head) = read_entry_head(&entry, true, true, None).unwrap() else {
            panic!()
        };
        assert_eq!(head.layout.flags, 1 | FLAG_BUFFERS_WRITABLE);
        change_buffer(&entry);
        let ReadOutcome::Found((layout, bytes)) = read_entry(&entry).unwrap() else {
            panic!("a changed buffer of an entry mapped writable was refused")
        };
        assert_eq!(layout.flags, 1 | FLAG_BUFFERS_WRITABLE);
        assert_eq!(bytes[at + 10], 42);
        assert!(verify_complete(&bytes).is_ok());
        // The head stays checked.
        let mut b = bytes.clone();
        b[3] ^= 1;
        fs::write(&entry, &b).unwrap();
        assert!(matches!(
            read_entry(&entry).unwrap(),
            ReadOutcome::Corrupt(_)
        ));
    }

    fn unit<T>(o: ReadOutcome<T>) -> ReadOutcome<()> {
        match o {
            ReadOutcome::Missing => ReadOutcome::Missing,
            ReadOutcome::Corrupt(c) => ReadOutcome::Corrupt(c),
            ReadOutcome::Found(_) => ReadOutcome::Found(()),
        }
    }

    #[test]
    fn metadata_key_is_the_top_level_field_only() {
        let k =
            |m: &str| metadata_key(m.as_bytes()).map(|v| String::from_utf8(v.to_vec()).unwrap());
        let written = r#"{"duration": 0.5, "time": 1.0, "function": "m.f", "key": "ab12", "input_args": {"key": "'x'"}, "output_bytes": 3, "compressed": false}"#;
        assert_eq!(k(written).as_deref(), Some("ab12"));
        // Whatever the order, and whatever the strings before it hold.
        let tricky = r#"{"say \"key": "no", "input_args": {"key": "'no'", "y": "[{\"key\": \"no\"}"}, "function": "key\": \"no", "list": ["key", {"key": "no"}], "key" : "cd34"}"#;
        assert_eq!(k(tricky).as_deref(), Some("cd34"));
        assert_eq!(k(r#"{"input_args": {"key": "'x'"}}"#), None);
        assert_eq!(k(r#"{"key": 12}"#), None);
        assert_eq!(k(r#"["key", "ab12"]"#), None);
        assert_eq!(k(r#"{"key": "ab1"#), None); // cut short
        assert_eq!(k(""), None);
        assert!(check_key(written.as_bytes(), "ab12").is_ok());
        let other = check_key(written.as_bytes(), "ffff").unwrap_err();
        assert!(
            other.contains("another call's entry") && other.contains("ab12"),
            "{other}"
        );
        assert!(check_key(b"{}", "ab12").unwrap_err().contains("no key"));
    }

    #[test]
    fn a_head_read_for_a_key_refuses_another_calls_entry_before_touching_or_marking_it() {
        let dir = tmpdir("headkey");
        let d = dir.path();
        let entry = d.join("k.pkc");
        let meta = r#"{"function": "m.f", "key": "0123abcd", "input_args": {}}"#;
        write_entry(&entry, 0, meta, b"stream", &[&[3u8; 1000]], false).unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        File::options()
            .write(true)
            .open(&entry)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let before = fs::read(&entry).unwrap();
        for writable in [false, true] {
            match read_entry_head(&entry, true, writable, Some("99999999")).unwrap() {
                ReadOutcome::Corrupt(reason) => {
                    assert!(reason.contains("another call's entry"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(fs::read(&entry).unwrap(), before, "not marked writable");
        assert_eq!(
            fs::metadata(&entry).unwrap().modified().unwrap(),
            old,
            "not touched"
        );
        assert!(matches!(
            read_entry_head(&entry, false, false, Some("0123abcd")).unwrap(),
            ReadOutcome::Found(_)
        ));
        // A whole read's layout locates the key once; each check compares it.
        let ReadOutcome::Found((layout, bytes)) = read_entry(&entry).unwrap() else {
            panic!()
        };
        let (o, l) = layout.key.unwrap();
        assert_eq!(&bytes[o as usize..(o + l) as usize], b"0123abcd");
        assert!(layout.check_key(&bytes, "0123abcd").is_ok());
        assert!(layout.check_key(&bytes, "0123abce").is_err());
        let planned = plan_entry(&entry, 0, meta, b"stream", &[&[3u8; 1000]]).unwrap();
        assert_eq!(planned, layout);
    }

    #[test]
    fn metadata_longer_than_the_first_read_is_read_whole() {
        let dir = tmpdir("longmeta");
        let d = dir.path();
        let entry = d.join("k.pkc");
        let meta = format!(
            r#"{{"function": "m.f", "input_args": {{"x": "{}"}}}}"#,
            "y".repeat(200_000)
        );
        let data = vec![5u8; 300_000];
        write_entry(&entry, 0, &meta, b"stream", &[&data], false).unwrap();
        let ReadOutcome::Found((layout, bytes)) = read_entry(&entry).unwrap() else {
            panic!("an entry with 200 kB of metadata was refused")
        };
        assert_eq!(layout.metadata.1 as usize, meta.len());
        assert_eq!(&bytes[layout.buffers[0].0 as usize..], &data[..]);
        let ReadOutcome::Found(reader) = open_entry(&entry).unwrap() else {
            panic!()
        };
        assert_eq!(reader.check_head().unwrap(), None);
    }

    #[test]
    fn check_head_refuses_what_is_not_an_entry_of_this_length_without_reading_it() {
        let dir = tmpdir("checkhead");
        let d = dir.path();
        let entry = d.join("k.pkc");
        write_entry(&entry, 0, META, b"stream", &[&[1u8; 100_000]], false).unwrap();
        let head_of = |e: &Path| match open_entry(e).unwrap() {
            ReadOutcome::Found(reader) => reader.check_head().unwrap(),
            _ => panic!(),
        };
        assert_eq!(head_of(&entry), None);
        let good = fs::read(&entry).unwrap();
        let mut longer = good.clone();
        longer.extend_from_slice(&[0u8; 4096]);
        fs::write(&entry, &longer).unwrap();
        assert!(head_of(&entry).unwrap().contains("header says"));
        // A large file that is not an entry at all (sparse: nothing is read past its start).
        let f = File::create(&entry).unwrap();
        f.set_len(64 << 30).unwrap();
        drop(f);
        assert!(head_of(&entry).unwrap().contains("metadata line"));
        fs::write(&entry, vec![b'x'; 3 << 20]).unwrap(); // no newline within the bound
        assert!(head_of(&entry).unwrap().contains("metadata line too long"));
    }

    /// Runs `f` on another thread; panics if it does not return within 10 s
    /// (a reader blocked on a FIFO would hang the test run instead of failing it).
    fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("blocked on a file that is not a regular file")
    }

    #[test]
    fn a_fifo_device_or_directory_in_an_entrys_place_is_corrupt_without_blocking() {
        let dir = tmpdir("special");
        let d = dir.path();
        let fifo = d.join("fifo.pkc");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        let zero = d.join("zero.pkc");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let dir = d.join("dir.pkc");
        fs::create_dir(&dir).unwrap();
        for (path, kind) in [(fifo, "a FIFO"), (zero, "a character device"), (dir, "")] {
            let p = path.clone();
            let outcomes = within_10s(move || {
                [
                    unit(read_small_entry(&p, 1 << 16).unwrap()),
                    unit(read_entry(&p).unwrap()),
                    unit(read_entry_head(&p, true, false, None).unwrap()),
                    unit(read_entry_head(&p, true, true, None).unwrap()),
                ]
            });
            for outcome in outcomes {
                match outcome {
                    ReadOutcome::Corrupt(reason) => {
                        assert!(reason.contains("not a regular file"), "{reason}");
                        assert!(reason.contains(kind), "{reason}");
                    }
                    other => panic!("{}: {other:?}", path.display()),
                }
            }
        }
    }

    #[test]
    fn bad_metadata_and_unwritable_location_are_errors_naming_the_path() {
        let dir = tmpdir("unwritable");
        let d = dir.path();
        let blocker = d.join("file");
        fs::write(&blocker, b"x").unwrap();
        let err = write_entry(
            &blocker.join("sub").join("k.pkc"),
            0,
            META,
            b"s",
            &[],
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("file"), "{err}");
        let err = write_entry(&d.join("k.pkc"), 0, "two\nlines", b"s", &[], false).unwrap_err();
        assert!(err.to_string().contains("one line"), "{err}");
        assert_eq!(
            fs::read_dir(d).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
