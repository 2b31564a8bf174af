//! One cache entry on disk: a directory `<key>/` holding `output.pkc` (the
//! pickled result and its out-of-band buffers, with checksums) and
//! `metadata.json` (for people: function, arguments, duration, sizes).
//!
//! An entry is written into a temporary sibling directory and published by
//! one `rename(2)` of that directory, so a reader sees either no entry or a
//! complete one, never a partial one. Crash safety does not rely on `fsync`
//! (optional, `durable`): a process killed mid-write leaves only a `.tmp-*`
//! directory that is never read; a machine crash that loses unsynced data
//! leaves a published entry whose length or checksum no longer matches, and
//! that is detected on read and reported as [`ReadOutcome::Corrupt`].
//!
//! `output.pkc` layout (little-endian):
//!
//! ```text
//!  0  magic  "PKCENT01"            8
//!  8  flags u32, buffer count u32  8
//! 16  stream length u64            8
//! 24  total file length u64        8
//! 32  head checksum u128          16   xxh3-128 of bytes 0..32 + table + stream
//! 48  body checksum u128          16   xxh3-128 of the buffers' bytes, in order
//! 64  table: (offset u64, length u64) per buffer
//!     pickle stream
//!     buffers, each at a 64-byte-aligned offset (so they can be memory-mapped)
//! ```

use std::fs::{self, File, FileTimes};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use xxhash_rust::xxh3::Xxh3Default;

use crate::error::CacheError;

pub const OUTPUT_FILE: &str = "output.pkc";
pub const METADATA_FILE: &str = "metadata.json";
/// Prefix of the directories an entry is written into before it is published.
pub const TMP_PREFIX: &str = ".tmp-";
const MAGIC: &[u8; 8] = b"PKCENT01";
const HEADER_LEN: u64 = 64;
const ALIGN: u64 = 64;
/// Files up to this size are assembled in memory and written with one call.
const ONE_WRITE_MAX: u64 = 1 << 20;
const CHUNK: usize = 4 << 20;

/// Test hook: when this variable names a file, the writer creates that file
/// after writing the first half of `output.pkc` and then waits forever, so a
/// test can SIGKILL the process at a known point of the write.
pub const PAUSE_HOOK_ENV: &str = "PERFKIT_CACHE_TEST_PAUSE_MID_WRITE";

/// Where the parts of an entry file are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub flags: u32,
    /// (offset, length) of the pickle stream.
    pub stream: (u64, u64),
    /// (offset, length) of each out-of-band buffer.
    pub buffers: Vec<(u64, u64)>,
    pub total_len: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome<T> {
    /// No entry at this key.
    Missing,
    /// An entry exists but cannot be trusted (the reason says why).
    Corrupt(String),
    Found(T),
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(ALIGN) * ALIGN
}

impl Layout {
    fn plan(flags: u32, stream_len: u64, buffer_lens: &[u64]) -> Layout {
        let table_end = HEADER_LEN + 16 * buffer_lens.len() as u64;
        let mut pos = table_end + stream_len;
        let mut buffers = Vec::with_capacity(buffer_lens.len());
        for &len in buffer_lens {
            pos = align_up(pos);
            buffers.push((pos, len));
            pos += len;
        }
        Layout {
            flags,
            stream: (table_end, stream_len),
            buffers,
            total_len: pos,
        }
    }

    /// Bytes 0..32 of the header followed by the table (what the head checksum covers with the stream).
    fn header_and_table(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.stream.0 as usize);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&(self.buffers.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.stream.1.to_le_bytes());
        v.extend_from_slice(&self.total_len.to_le_bytes());
        v.extend_from_slice(&[0u8; 32]); // checksums, filled in by `seal`
        for &(off, len) in &self.buffers {
            v.extend_from_slice(&off.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
        }
        v
    }

    /// Parses and bounds-checks a header and its table (`head` holds at least the first 64 bytes).
    fn parse(head: &[u8], file_len: u64) -> Result<(Layout, u128, u128), String> {
        if head.len() < HEADER_LEN as usize {
            return Err(format!("file too short ({file_len} bytes)"));
        }
        if &head[0..8] != MAGIC {
            return Err("not a perfkit cache entry (bad magic)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().unwrap());
        let u128_at = |o: usize| u128::from_le_bytes(head[o..o + 16].try_into().unwrap());
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
            .and_then(|t| t.checked_add(HEADER_LEN))
            .filter(|&t| t <= file_len)
            .ok_or("buffer table runs past the end of the file")?;
        if (head.len() as u64) < table_end {
            // The caller reads the table once it knows its size.
            return Ok((
                Layout {
                    flags,
                    stream: (table_end, stream_len),
                    buffers: Vec::new(),
                    total_len,
                },
                0,
                0,
            ));
        }
        let stream_end = table_end
            .checked_add(stream_len)
            .filter(|&e| e <= file_len)
            .ok_or("pickle stream runs past the end of the file")?;
        let mut buffers = Vec::with_capacity(n as usize);
        let mut min_off = stream_end;
        for i in 0..n as usize {
            let off = u64_at(64 + 16 * i);
            let len = u64_at(64 + 16 * i + 8);
            let end = off.checked_add(len).filter(|&e| e <= file_len);
            if off < min_off || end.is_none() {
                return Err(format!("buffer {i} lies outside the file"));
            }
            min_off = end.unwrap();
            buffers.push((off, len));
        }
        Ok((
            Layout {
                flags,
                stream: (table_end, stream_len),
                buffers,
                total_len,
            },
            u128_at(32),
            u128_at(48),
        ))
    }
}

fn head_checksum(header_and_table: &[u8], stream: &[u8]) -> u128 {
    let mut h = Xxh3Default::new();
    h.update(&header_and_table[..32]);
    h.update(&header_and_table[HEADER_LEN as usize..]);
    h.update(stream);
    h.digest128()
}

fn seal(header_and_table: &mut [u8], head: u128, body: u128) {
    header_and_table[32..48].copy_from_slice(&head.to_le_bytes());
    header_and_table[48..64].copy_from_slice(&body.to_le_bytes());
}

/// What [`write_entry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// False when another writer published the same entry first (ours was discarded).
    pub published: bool,
    /// Size of `output.pkc` in bytes.
    pub output_len: u64,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_dir_for(entry_dir: &Path) -> PathBuf {
    let name = entry_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!("{TMP_PREFIX}{name}-{}-{n}-{nanos:x}", std::process::id());
    entry_dir.with_file_name(tmp)
}

fn pause_hook() {
    if let Some(marker) = std::env::var_os(PAUSE_HOOK_ENV) {
        let _ = fs::write(&marker, b"paused mid-write\n");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Writes `output.pkc` (stream + buffers, checksummed) and `metadata.json`
/// into a temporary directory next to `entry_dir`, then publishes it with
/// one atomic rename. Parent directories are created as needed. When the
/// entry already exists (another process was faster) ours is discarded.
pub fn write_entry(
    entry_dir: &Path,
    flags: u32,
    stream: &[u8],
    buffers: &[&[u8]],
    metadata_json: &str,
    durable: bool,
) -> Result<WriteOutcome, CacheError> {
    let tmp = tmp_dir_for(entry_dir);
    match fs::create_dir(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = entry_dir.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(parent).map_err(|e| CacheError::io("create the cache directory", parent, e))?;
            fs::create_dir(&tmp).map_err(|e| CacheError::io("create", &tmp, e))?;
        }
        Err(e) => return Err(CacheError::io("create", &tmp, e)),
    }
    let result = write_into(&tmp, entry_dir, flags, stream, buffers, metadata_json, durable);
    if !matches!(result, Ok(WriteOutcome { published: true, .. })) {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn write_into(
    tmp: &Path,
    entry_dir: &Path,
    flags: u32,
    stream: &[u8],
    buffers: &[&[u8]],
    metadata_json: &str,
    durable: bool,
) -> Result<WriteOutcome, CacheError> {
    let out_path = tmp.join(OUTPUT_FILE);
    let lens: Vec<u64> = buffers.iter().map(|b| b.len() as u64).collect();
    let layout = Layout::plan(flags, stream.len() as u64, &lens);
    let mut head = layout.header_and_table();
    let head_ck = head_checksum(&head, stream);
    let werr = |e| CacheError::io("write", &out_path, e);
    let mut file = File::create(&out_path).map_err(werr)?;

    if layout.total_len <= ONE_WRITE_MAX && std::env::var_os(PAUSE_HOOK_ENV).is_none() {
        let mut body = Xxh3Default::new();
        let mut all = Vec::with_capacity(layout.total_len as usize);
        all.extend_from_slice(&head);
        all.extend_from_slice(stream);
        for (b, &(off, _)) in buffers.iter().zip(&layout.buffers) {
            all.resize(off as usize, 0);
            all.extend_from_slice(b);
            body.update(b);
        }
        seal(&mut all[..HEADER_LEN as usize], head_ck, body.digest128());
        file.write_all(&all).map_err(werr)?;
    } else {
        // Large: stream it, hashing each chunk right before writing it (while it is in cache),
        // then fill in the header's checksums.
        file.write_all(&head).map_err(werr)?;
        file.write_all(stream).map_err(werr)?;
        let mut pos = layout.stream.0 + layout.stream.1;
        let mut body = Xxh3Default::new();
        let zeros = [0u8; ALIGN as usize];
        let half = layout.total_len / 2;
        let mut paused = false;
        for (b, &(off, _)) in buffers.iter().zip(&layout.buffers) {
            file.write_all(&zeros[..(off - pos) as usize]).map_err(werr)?;
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
        seal(&mut head, head_ck, body.digest128());
        file.write_all_at(&head[..HEADER_LEN as usize], 0).map_err(werr)?;
    }
    if durable {
        file.sync_all().map_err(werr)?;
    }
    drop(file);

    let meta_path = tmp.join(METADATA_FILE);
    fs::write(&meta_path, metadata_json).map_err(|e| CacheError::io("write", &meta_path, e))?;
    if durable {
        File::open(&meta_path)
            .and_then(|f| f.sync_all())
            .map_err(|e| CacheError::io("sync", &meta_path, e))?;
    }

    match fs::rename(tmp, entry_dir) {
        Ok(()) => {
            if durable {
                if let Some(parent) = entry_dir.parent() {
                    File::open(parent)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| CacheError::io("sync", parent, e))?;
                }
            }
            Ok(WriteOutcome {
                published: true,
                output_len: layout.total_len,
            })
        }
        // Another writer published this entry first: theirs is as good as ours.
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty || e.kind() == io::ErrorKind::AlreadyExists => {
            Ok(WriteOutcome {
                published: false,
                output_len: layout.total_len,
            })
        }
        Err(e) => Err(CacheError::io("publish the entry at", entry_dir, e)),
    }
}

/// An entry opened for reading: the file is open and its length known, so the
/// caller can allocate the destination (e.g. a Python bytearray) before
/// [`EntryReader::read_into`] reads and verifies it.
pub struct EntryReader {
    file: File,
    path: PathBuf,
    len: u64,
}

/// Opens `entry_dir/output.pkc`. `Missing` when there is no entry;
/// `Corrupt` when the entry lacks its metadata.
pub fn open_entry(entry_dir: &Path) -> Result<ReadOutcome<EntryReader>, CacheError> {
    let path = entry_dir.join(OUTPUT_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            return Ok(match entry_dir.symlink_metadata() {
                // The directory is there but its output is not: damaged.
                Ok(m) if m.is_dir() => ReadOutcome::Corrupt(format!("{OUTPUT_FILE} is missing")),
                _ => ReadOutcome::Missing,
            });
        }
        Err(e) => return Err(CacheError::io("open", &path, e)),
    };
    let len = file.metadata().map_err(|e| CacheError::io("stat", &path, e))?.len();
    match entry_dir.join(METADATA_FILE).symlink_metadata() {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(ReadOutcome::Corrupt(format!("{METADATA_FILE} is missing")))
        }
        Err(e) => return Err(CacheError::io("stat", entry_dir.join(METADATA_FILE), e)),
    }
    Ok(ReadOutcome::Found(EntryReader { file, path, len }))
}

impl EntryReader {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the whole file into `dest` (exactly `len()` bytes), verifies
    /// both checksums and marks the entry as just used (its access time, which
    /// eviction orders by).
    pub fn read_into(mut self, dest: &mut [u8]) -> Result<ReadOutcome<Layout>, CacheError> {
        assert_eq!(dest.len() as u64, self.len, "destination must hold the whole entry");
        let rerr = |e| CacheError::io("read", self.path.clone(), e);
        let mut filled = 0;
        while filled < dest.len() {
            match self.file.read(&mut dest[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(rerr(e)),
            }
        }
        if filled < dest.len() {
            return Ok(ReadOutcome::Corrupt(format!(
                "file shrank while being read ({filled} of {} bytes)",
                dest.len()
            )));
        }
        let (layout, head_ck, body_ck) = match Layout::parse(dest, self.len) {
            Ok(v) => v,
            Err(reason) => return Ok(ReadOutcome::Corrupt(reason)),
        };
        let (s0, sl) = (layout.stream.0 as usize, layout.stream.1 as usize);
        if head_checksum(&dest[..s0], &dest[s0..s0 + sl]) != head_ck {
            return Ok(ReadOutcome::Corrupt("checksum mismatch in the header or pickle stream".into()));
        }
        let mut body = Xxh3Default::new();
        let mut gap_start = s0 + sl;
        for &(off, len) in &layout.buffers {
            // Alignment padding is not checksummed but must be zeros: every flipped bit is caught.
            if dest[gap_start..off as usize].iter().any(|&b| b != 0) {
                return Ok(ReadOutcome::Corrupt("non-zero bytes in alignment padding".into()));
            }
            body.update(&dest[off as usize..(off + len) as usize]);
            gap_start = (off + len) as usize;
        }
        if body.digest128() != body_ck {
            return Ok(ReadOutcome::Corrupt("checksum mismatch in the data buffers".into()));
        }
        touch(&self.file);
        Ok(ReadOutcome::Found(layout))
    }
}

/// Marks an entry as just used. Best effort: a read-only location still serves hits.
fn touch(file: &File) {
    let _ = file.set_times(FileTimes::new().set_accessed(SystemTime::now()));
}

/// What a memory-mapping reader needs: the layout and the pickle stream.
#[derive(Debug)]
pub struct EntryHead {
    pub layout: Layout,
    pub stream: Vec<u8>,
    pub output_path: PathBuf,
}

/// Reads and verifies only the header, table and pickle stream (for
/// `mmap_mode`: the buffers are mapped, not read, so their checksum is not
/// verified; their extent is, through the file length).
pub fn read_entry_head(entry_dir: &Path) -> Result<ReadOutcome<EntryHead>, CacheError> {
    let reader = match open_entry(entry_dir)? {
        ReadOutcome::Found(r) => r,
        ReadOutcome::Missing => return Ok(ReadOutcome::Missing),
        ReadOutcome::Corrupt(c) => return Ok(ReadOutcome::Corrupt(c)),
    };
    let rerr = |e| CacheError::io("read", reader.path.clone(), e);
    let mut head = vec![0u8; HEADER_LEN.min(reader.len) as usize];
    reader.file.read_exact_at(&mut head, 0).map_err(rerr)?;
    let (first, _, _) = match Layout::parse(&head, reader.len) {
        Ok(v) => v,
        Err(reason) => return Ok(ReadOutcome::Corrupt(reason)),
    };
    let table_end = first.stream.0;
    head.resize(table_end as usize, 0);
    reader.file.read_exact_at(&mut head[HEADER_LEN as usize..], HEADER_LEN).map_err(rerr)?;
    let (layout, head_ck, _) = match Layout::parse(&head, reader.len) {
        Ok(v) => v,
        Err(reason) => return Ok(ReadOutcome::Corrupt(reason)),
    };
    let mut stream = vec![0u8; layout.stream.1 as usize];
    reader.file.read_exact_at(&mut stream, layout.stream.0).map_err(rerr)?;
    if head_checksum(&head, &stream) != head_ck {
        return Ok(ReadOutcome::Corrupt("checksum mismatch in the header or pickle stream".into()));
    }
    touch(&reader.file);
    Ok(ReadOutcome::Found(EntryHead {
        layout,
        stream,
        output_path: reader.path,
    }))
}

/// Reads a whole entry into a new `Vec` (convenience for Rust callers and tests).
pub fn read_entry(entry_dir: &Path) -> Result<ReadOutcome<(Layout, Vec<u8>)>, CacheError> {
    match open_entry(entry_dir)? {
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

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("perfkit-cache-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn roundtrip(name: &str, stream: &[u8], buffers: &[&[u8]]) {
        let d = tmpdir(name);
        let entry = d.join("f").join("abc");
        let w = write_entry(&entry, 0, stream, buffers, "{}", false).unwrap();
        assert!(w.published);
        let ReadOutcome::Found((layout, bytes)) = read_entry(&entry).unwrap() else {
            panic!("entry not found")
        };
        let (s0, sl) = layout.stream;
        assert_eq!(&bytes[s0 as usize..(s0 + sl) as usize], stream);
        assert_eq!(layout.buffers.len(), buffers.len());
        for (&(off, len), b) in layout.buffers.iter().zip(buffers) {
            assert_eq!(off % ALIGN, 0);
            assert_eq!(&bytes[off as usize..(off + len) as usize], *b);
        }
        let ReadOutcome::Found(head) = read_entry_head(&entry).unwrap() else { panic!() };
        assert_eq!(head.stream, stream);
        assert_eq!(head.layout, layout);
        // Nothing temporary is left behind.
        let names: Vec<_> = fs::read_dir(d.join("f")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("abc")]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn roundtrip_small_and_large() {
        roundtrip("small", b"pickle", &[]);
        roundtrip("bufs", b"p", &[b"abc", b"", b"0123456789"]);
        let big: Vec<u8> = (0..(3 * ONE_WRITE_MAX as u32)).map(|i| (i % 253) as u8).collect();
        roundtrip("large", b"stream", &[&big, b"tail"]);
    }

    #[test]
    fn missing_entry() {
        let d = tmpdir("missing");
        assert!(matches!(read_entry(&d.join("nope")).unwrap(), ReadOutcome::Missing));
        assert!(matches!(read_entry_head(&d.join("a/b/c")).unwrap(), ReadOutcome::Missing));
    }

    #[test]
    fn second_writer_loses_quietly() {
        let d = tmpdir("race");
        let entry = d.join("k");
        assert!(write_entry(&entry, 0, b"first", &[], "{}", true).unwrap().published);
        assert!(!write_entry(&entry, 0, b"second", &[], "{}", false).unwrap().published);
        let ReadOutcome::Found((l, bytes)) = read_entry(&entry).unwrap() else { panic!() };
        assert_eq!(&bytes[l.stream.0 as usize..], b"first");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
    }

    fn corrupt_with(name: &str, damage: impl Fn(&Path)) -> String {
        let d = tmpdir(name);
        let entry = d.join("k");
        write_entry(&entry, 0, b"the stream", &[&[7u8; 1000]], "{}", false).unwrap();
        damage(&entry);
        match read_entry(&entry).unwrap() {
            ReadOutcome::Corrupt(reason) => {
                // The mmap reader must not accept it either, unless only buffer bytes changed.
                reason
            }
            other => panic!("{name}: damage not detected: {other:?}"),
        }
    }

    #[test]
    fn corruption_is_detected() {
        let out = |e: &Path| e.join(OUTPUT_FILE);
        let r = corrupt_with("trunc", |e| {
            let f = fs::OpenOptions::new().write(true).open(out(e)).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len - 10).unwrap();
        });
        assert!(r.contains("truncated"), "{r}");
        for pos in [0usize, 9, 20, 40, 70, 90, 200, 1000] {
            let r = corrupt_with(&format!("flip{pos}"), |e| {
                let mut b = fs::read(out(e)).unwrap();
                b[pos] ^= 0x10;
                fs::write(out(e), b).unwrap();
            });
            assert!(!r.is_empty());
        }
        let r = corrupt_with("nometa", |e| fs::remove_file(e.join(METADATA_FILE)).unwrap());
        assert!(r.contains("metadata.json"), "{r}");
        let r = corrupt_with("nooutput", |e| fs::remove_file(out(e)).unwrap());
        assert!(r.contains("output.pkc"), "{r}");
        let r = corrupt_with("empty", |e| fs::write(out(e), b"").unwrap());
        assert!(r.contains("short") || r.contains("truncated"), "{r}");
        let r = corrupt_with("garbage", |e| fs::write(out(e), vec![0xABu8; 500]).unwrap());
        assert!(r.contains("magic"), "{r}");
    }

    #[test]
    fn head_reader_checks_stream_and_length() {
        let d = tmpdir("head");
        let entry = d.join("k");
        write_entry(&entry, 0, b"the stream", &[&[7u8; 1000]], "{}", false).unwrap();
        let mut b = fs::read(entry.join(OUTPUT_FILE)).unwrap();
        b[64 + 16 + 2] ^= 1; // inside the stream
        fs::write(entry.join(OUTPUT_FILE), &b).unwrap();
        assert!(matches!(read_entry_head(&entry).unwrap(), ReadOutcome::Corrupt(_)));
        b.truncate(b.len() - 1);
        fs::write(entry.join(OUTPUT_FILE), &b).unwrap();
        assert!(matches!(read_entry_head(&entry).unwrap(), ReadOutcome::Corrupt(_)));
    }

    #[test]
    fn unwritable_location_is_an_error_naming_the_path() {
        let d = tmpdir("unwritable");
        let blocker = d.join("file");
        fs::write(&blocker, b"x").unwrap();
        let err = write_entry(&blocker.join("sub").join("k"), 0, b"s", &[], "{}", false).unwrap_err();
        assert!(err.to_string().contains("file"), "{err}");
    }
}
