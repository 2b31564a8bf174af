//! perfkit's profile data model and file formats.
//!
//! Owns [`CallTree`] (interned functions, one tree of call paths per thread)
//! and every reader and writer of profile files: pstats/`.prof` (marshal,
//! with perfkit's exact-tree trailer), collapsed stacks and speedscope JSON.
//! It also derives the pstats function table from a tree ([`stats`]), infers
//! an approximate tree from a foreign pstats table, and prints the table as
//! pstats' `print_stats` does ([`table`]), and compares two profiles ([`diff`]).
//! [`load`] reads any of the formats.
//! Every other part of perfkit (CLI, viewer, bindings) goes through here and
//! never parses a file on its own. Pure Rust: it must not depend on Python.

use std::io::Write as _;
use std::path::{Path, PathBuf};

pub mod collapsed;
pub mod diff;
pub mod marshal;
pub mod prof;
pub mod speedscope;
pub mod stats;
pub mod sum;
pub mod table;
pub mod tree;

pub use prof::Profile;
pub use stats::{EdgeStats, FuncStats, StatsTable};
pub use sum::TreeSum;
pub use table::{Restriction, SortKey};
pub use tree::{
    CallTree, Children, Clock, FuncId, FuncKey, Meta, Node, NodeId, ThreadTree, Visit, Walk,
    ROOT_FUNC,
};

/// Everything that can go wrong reading or writing a profile. Each message is
/// one line that says what is wrong (and, through [`Error::InFile`], where).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error; `action` is e.g. "cannot read".
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not any profile format perfkit knows.
    #[error("not a profile file: {0}")]
    NotProfile(String),
    /// The data stops before its end: a partial copy or an interrupted write.
    #[error("truncated profile: {0}")]
    Truncated(String),
    /// The data is inconsistent: corrupted bytes or a broken perfkit trailer.
    #[error("damaged profile: {0}")]
    Damaged(String),
    /// Valid data this version of perfkit cannot use.
    #[error("unsupported profile: {0}")]
    Unsupported(String),
    /// The data would expand beyond the reader's memory bounds.
    #[error("profile too large: {0}")]
    TooLarge(String),
    /// A collapsed-stacks text with a line that does not parse.
    #[error("collapsed stacks, line {line}: {message}")]
    Collapsed { line: usize, message: String },
    /// A speedscope JSON document that does not parse or is inconsistent.
    #[error("speedscope profile: {0}")]
    Speedscope(String),
    /// A bad argument to a report (unknown sort key, …).
    #[error("{0}")]
    InvalidArgument(String),
    /// Another error, about the file at `path`, with what the user can do.
    #[error("{}: {source}{}", path.display(), source.what_to_do())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// This error, said about the file at `path`.
    /// What the user can do about an error in a file's contents, as the end
    /// of its one line.
    fn what_to_do(&self) -> &'static str {
        match self {
            Error::NotProfile(_) => {
                " (perfkit reads pstats .prof files from cProfile, profile or perfkit record, \
                 collapsed stacks and speedscope JSON)"
            }
            Error::Truncated(m) | Error::Damaged(m) if m.contains("pstats.Stats reads it") => "",
            Error::Truncated(_) => {
                " (a partial copy, or a program that did not finish writing it: copy it again \
                 or record the profile again)"
            }
            Error::Damaged(_) => " (the file is corrupted: record the profile again)",
            _ => "",
        }
    }

    pub fn in_file(self, path: &Path) -> Error {
        match self {
            Error::Io { .. } | Error::InFile { .. } => self,
            other => Error::InFile {
                path: path.to_path_buf(),
                source: Box::new(other),
            },
        }
    }
}

/// The formats [`load`] recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A marshalled pstats dict (cProfile's `dump_stats`, perfkit's `.prof`).
    Prof,
    /// Collapsed stacks (`frame;frame;frame weight` lines).
    Collapsed,
    /// speedscope JSON.
    Speedscope,
}

/// Guesses the format of a profile from its first bytes; `None` when it is
/// none of them.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    let first = *bytes.first()?;
    if first & !marshal::FLAG_REF == b'{' {
        // JSON also opens with '{', but continues with a quote, a brace or
        // whitespace, none of which is a marshal type code.
        let second = bytes.get(1).copied().unwrap_or(0);
        let json = first == b'{' && matches!(second, b'"' | b'}' | b' ' | b'\t' | b'\r' | b'\n');
        return Some(if json {
            Format::Speedscope
        } else {
            Format::Prof
        });
    }
    // A byte that is not UTF-8 is looked past (as U+FFFD) to tell the
    // format, so that the reader reports it as what it is, not "not a profile".
    let lossy = String::from_utf8_lossy(bytes);
    let text = lossy.trim_start_matches('\u{feff}').trim_start();
    if text.starts_with('{') {
        return Some(Format::Speedscope);
    }
    // (Lines of a weight alone, samples without frames, say nothing.)
    let first_line = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim().bytes().all(|b| b.is_ascii_digit()))?;
    if collapsed::looks_like(first_line) {
        return Some(Format::Collapsed);
    }
    None
}

/// How much of a pipe or device is read before its format is looked at.
const SNIFF_BYTES: usize = 1 << 16;

/// Reads a profile in any known format, detected from its content: a
/// pstats/`.prof` file, collapsed stacks or speedscope JSON. For the text
/// formats, [`Profile::stats`] is derived from the tree.
pub fn load(path: &Path) -> Result<Profile, Error> {
    let bytes = read_bytes(path)?;
    from_any_bytes(&bytes).map_err(|e| e.in_file(path))
}

/// [`load`] for bytes already in memory.
pub fn from_any_bytes(bytes: &[u8]) -> Result<Profile, Error> {
    if bytes.is_empty() {
        return Err(Error::NotProfile("the file is empty (0 bytes)".into()));
    }
    let from_tree = |tree: CallTree| Profile {
        stats: tree.to_stats(),
        tree,
    };
    match sniff(bytes) {
        Some(Format::Prof) => prof::from_bytes(bytes),
        Some(Format::Speedscope) => {
            let text = utf8(bytes)?;
            speedscope::read(text).map(from_tree).or_else(|err| {
                // Collapsed stacks whose first frame happens to open with a brace.
                match text.lines().next() {
                    Some(line) if collapsed::looks_like(line) => {
                        collapsed::read(text).map(from_tree)
                    }
                    _ => Err(err),
                }
            })
        }
        Some(Format::Collapsed) => collapsed::read(utf8(bytes)?).map(from_tree),
        None => Err(not_profile(bytes)),
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::Unsupported(format!(
            "text that is not UTF-8: byte 0x{:02x} at offset {at}, line {line}; \
             perfkit reads UTF-8 text (convert the file, e.g. with iconv -t UTF-8)",
            bytes[at]
        ))
    })
}

/// Reads a whole file, with one-line errors that name it.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, Error> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        action: "cannot read",
        path: path.into(),
        source,
    })?;
    if meta.is_dir() {
        // The system's own error for it, as `open()` then `read()` gives it.
        return Err(Error::Io {
            action: "cannot read",
            path: path.into(),
            source: std::io::Error::from_raw_os_error(libc::EISDIR),
        });
    }
    let io = |source| Error::Io {
        action: "cannot read",
        path: path.into(),
        source,
    };
    if meta.is_file() {
        return std::fs::read(path).map_err(io);
    }
    // A pipe or a device has no size to trust: read it in bounded steps, and
    // stop at once when it opens like no profile (`/dev/zero` read on until
    // memory ran out, helper-50).
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => return Ok(bytes),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        let before = bytes.len();
        if bytes.try_reserve(n).is_err() {
            return Err(Error::TooLarge(format!(
                "out of memory after {} MB from this pipe or device",
                before >> 20
            ))
            .in_file(path));
        }
        bytes.extend_from_slice(&chunk[..n]);
        // Looked at once its first bytes are in: an endless stream of text
        // (`yes`) or noise (/dev/urandom) is no profile either.
        let looked = (before == 0 && !could_open_a_profile(&bytes))
            || (before < SNIFF_BYTES
                && bytes.len() >= SNIFF_BYTES
                && bytes.contains(&b'\n')
                && sniff(&bytes).is_none());
        if looked {
            return Err(not_profile(&bytes).in_file(path));
        }
        if bytes.len() as u64 > MAX_STREAM_BYTES {
            return Err(Error::TooLarge(format!(
                "more than {} GB came from this pipe or device without an end",
                MAX_STREAM_BYTES >> 30
            ))
            .in_file(path));
        }
    }
}

/// The most read from a pipe or a device.
const MAX_STREAM_BYTES: u64 = 2 << 30;

/// Whether a file's first bytes can start any format [`load`] reads.
fn could_open_a_profile(head: &[u8]) -> bool {
    match head.first() {
        None => true,
        Some(&b) if b & !marshal::FLAG_REF == b'{' => true,
        // Text (collapsed stacks, JSON), possibly after a byte-order mark.
        Some(&b) => b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r'),
    }
}

/// The first few bytes in hex, for "found …" messages.
/// A file none of the readers takes, described by its first bytes. A pickle
/// is named as one: `perfkit.load` is also joblib's name for reading what
/// `joblib.dump` wrote, and a user coming from joblib may call it on one.
fn not_profile(bytes: &[u8]) -> Error {
    let pickle = if matches!(bytes, [0x80, 2..=5, ..]) {
        ": a Python pickle, as pickle.dump and joblib.dump write (read it with pickle.load or \
         joblib.load)"
    } else {
        ""
    };
    Error::NotProfile(format!(
        "expected a pstats/.prof file, collapsed stacks or speedscope JSON, found {}{pickle}",
        describe_bytes(bytes)
    ))
}

pub(crate) fn describe_bytes(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(8).map(|b| format!("0x{b:02x}")).collect();
    let more = if bytes.len() > 8 { " …" } else { "" };
    if shown.is_empty() {
        "no bytes".into()
    } else {
        format!("bytes {}{more}", shown.join(" "))
    }
}

fn write_in_place(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |action: &'static str| {
        let p = path.to_path_buf();
        move |source| Error::Io {
            action,
            path: p,
            source,
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io("cannot open"))?;
    f.write_all(bytes).map_err(io("cannot write"))
}

/// Whether this process may write to `path` (access(2) with W_OK).
fn may_write(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// `/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N` and the like: an open
/// descriptor of this process, written into even when it is a regular file
/// (the shell's `> out.txt`), since replacing that file would leave the
/// descriptor writing into a file that is gone.
fn names_a_descriptor(path: &Path) -> bool {
    let s = path.as_os_str().as_encoded_bytes();
    ["/dev/stdout", "/dev/stderr", "/dev/stdin", "/dev/fd/"]
        .iter()
        .any(|p| s.starts_with(p.as_bytes()))
        || (s.starts_with(b"/proc/") && s.windows(4).any(|w| w == b"/fd/"))
}

/// Where a write to `path` lands when it does not exist yet: the end of its
/// chain of symbolic links, if it is a link to nowhere (`open` creates that
/// file), else `path` itself.
fn dangling_link_target(path: &Path) -> PathBuf {
    let mut at = path.to_path_buf();
    // The kernel's own limit on links followed in one lookup.
    for _ in 0..40 {
        match std::fs::read_link(&at) {
            Ok(target) => {
                at = match at.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                }
            }
            Err(_) => return at,
        }
    }
    path.to_path_buf()
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or
/// the new one: a temporary file next to it, flushed to disk, then renamed
/// over it.
///
/// As `open(path, "wb")` would, a symbolic link is written through (the
/// file it names is replaced, not the link), and what is not a regular file
/// (a FIFO, a terminal, `/dev/null`, `/dev/stdout`) is written into, since
/// it cannot be replaced; so is an open descriptor named as a file
/// (`/dev/stdout` redirected to a file: the shell's descriptor keeps it).
/// An existing file in a directory that cannot take the temporary file
/// (read-only for this user) is written into as well, as `open()` would.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io {
            action,
            path: p,
            source,
        }
    };
    let resolved;
    let path = match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(Error::Io {
                action: "cannot write",
                path: path.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::EISDIR),
            })
        }
        Ok(meta) if !meta.is_file() || names_a_descriptor(path) => {
            return write_in_place(path, bytes);
        }
        Ok(_) => {
            resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            let dir = resolved.parent().unwrap_or(Path::new("/"));
            if !may_write(dir) && may_write(&resolved) {
                return write_in_place(&resolved, bytes);
            }
            &resolved
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::Io {
                action: "cannot write",
                path: path.to_path_buf(),
                source: e,
            })
        }
        Err(_) => {
            resolved = dangling_link_target(path);
            &resolved
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        // "" or a directory ("..", "/"): the errors `open(path, "wb")` gives.
        let errno = if path.as_os_str().is_empty() {
            libc::ENOENT
        } else {
            libc::EISDIR
        };
        return Err(Error::Io {
            action: "cannot write",
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(errno),
        });
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.{}.{stamp}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        // Where the kernel offers it, the data goes into an unnamed file that
        // vanishes with the process if it is killed while writing; it gets a
        // name only once complete, just before the rename.
        #[cfg(target_os = "linux")]
        if let Some(f) = unnamed_file(&dir) {
            let mut f = f;
            f.write_all(bytes).map_err(io("cannot write", path))?;
            f.sync_all().map_err(io("cannot flush", path))?;
            let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
            let link = |to: &Path| -> std::io::Result<()> {
                let from = std::ffi::CString::new(proc_path.as_str())?;
                let to = std::ffi::CString::new(to.as_os_str().as_encoded_bytes())?;
                // SAFETY: both arguments are valid NUL-terminated paths.
                let r = unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        from.as_ptr(),
                        libc::AT_FDCWD,
                        to.as_ptr(),
                        libc::AT_SYMLINK_FOLLOW,
                    )
                };
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            // A new file is linked straight under its name; an existing one is
            // replaced by a rename, the only moment a temporary name exists.
            match link(path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if link(&tmp).is_ok() {
                        return std::fs::rename(&tmp, path).map_err(io("cannot replace", path));
                    }
                }
                Err(_) => {}
            }
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io("cannot create", path))?;
        f.write_all(bytes).map_err(io("cannot write", path))?;
        f.sync_all().map_err(io("cannot flush", path))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io("cannot replace", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename itself is durable only once the directory is flushed; not
    // every platform or file system allows that, and the data is safe anyway.
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An anonymous file in `dir` (Linux `O_TMPFILE`), or None where the file
/// system does not support it.
#[cfg(target_os = "linux")]
fn unnamed_file(dir: &Path) -> Option<std::fs::File> {
    use std::os::fd::FromRawFd;
    let dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `dir` is a valid NUL-terminated path; the flags create no name.
    let fd = unsafe {
        libc::open(
            dir.as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            0o666,
        )
    };
    // SAFETY: a non-negative fd was just opened and is owned by nobody else.
    (fd >= 0).then(|| unsafe { std::fs::File::from_raw_fd(fd) })
}
