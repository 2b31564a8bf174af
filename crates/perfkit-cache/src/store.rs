//! The store's directory operations: listing entries, atomic removal and
//! eviction (least recently used first).
//!
//! Removal unlinks an entry file (atomic), and renames a directory to a
//! `.trash-*` sibling before deleting it, so a concurrent reader sees an
//! entry complete or not at all, never half-deleted.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::entry::{ENTRY_EXT, TMP_PREFIX};
use crate::error::{is_missing, CacheError};

const TRASH_PREFIX: &str = ".trash-";
/// A `.tmp-*` directory older than this belongs to a writer that died.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);
const MAX_DEPTH: usize = 8;
/// How many times a renamed-away tree that a late writer put a file in is
/// removed again (1 + 2 + ... + 12 ms of waiting at most).
const TRASH_RETRIES: u64 = 12;

static TRASH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes an entry file or a directory tree so that nobody sees it half-removed
/// (a file is unlinked; a directory is renamed away, then deleted). Returns
/// false when it did not exist.
pub fn remove_atomically(path: &Path) -> Result<bool, CacheError> {
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if is_missing(&e) => return Ok(false),
        Err(e) => return Err(CacheError::io("remove", path, e)),
    };
    if !meta.is_dir() {
        return match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io("remove", path, e)),
        };
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = TRASH_COUNTER.fetch_add(1, Ordering::Relaxed);
    let trash = path.with_file_name(format!(
        "{TRASH_PREFIX}{name}-{}-{n}-{nanos:x}",
        std::process::id()
    ));
    match fs::rename(path, &trash) {
        Ok(()) => {}
        Err(e) if is_missing(&e) => return Ok(false),
        Err(e) => return Err(CacheError::io("remove", path, e)),
    }
    remove_trash(&trash)?;
    Ok(true)
}

/// Deletes a directory tree renamed away by [`remove_atomically`]. Another
/// process's writer whose path lookup passed the directory before the rename
/// may still create a file in it (one per writer, within microseconds), and
/// the removal then meets a directory that is not empty: it is tried again,
/// a few times, before giving up.
fn remove_trash(trash: &Path) -> Result<(), CacheError> {
    let mut attempt: u64 = 0;
    loop {
        match fs::remove_dir_all(trash) {
            Ok(()) => return Ok(()),
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && attempt < TRASH_RETRIES => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(attempt));
            }
            Err(e) => return Err(CacheError::io("remove", trash, e)),
        }
    }
}

/// One published entry, as eviction sees it.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    pub path: PathBuf,
    pub size: u64,
    /// When it was last read or written (its modification time, which hits refresh).
    pub last_access: SystemTime,
}

fn time_of(secs: i64, nanos: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

fn walk(dir: &Path, depth: usize, now: SystemTime, out: &mut Vec<EntryInfo>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        let Ok(ft) = ent.file_type() else { continue };
        let path = ent.path();
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if ft.is_dir() {
            if name.starts_with(TRASH_PREFIX) {
                // Left by a remover that died between rename and delete.
                let _ = fs::remove_dir_all(&path);
            } else if depth < MAX_DEPTH {
                walk(&path, depth + 1, now, out);
            }
            continue;
        }
        let Ok(m) = ent.metadata() else { continue };
        if name.starts_with(TMP_PREFIX) {
            let age = now
                .duration_since(time_of(m.mtime(), m.mtime_nsec()))
                .unwrap_or_default();
            if age > STALE_TMP_AGE {
                let _ = fs::remove_file(&path);
            }
        } else if ft.is_file()
            && !name.starts_with('.')
            && path.extension().is_some_and(|e| e == ENTRY_EXT)
        {
            out.push(EntryInfo {
                path,
                size: m.len(),
                last_access: time_of(m.mtime(), m.mtime_nsec()),
            });
        }
    }
}

/// Every published entry under `root`, least recently used first. Also
/// deletes leftovers of dead processes (old `.tmp-*`, any `.trash-*`).
pub fn list_entries(root: &Path) -> Vec<EntryInfo> {
    let mut out = Vec::new();
    walk(root, 0, SystemTime::now(), &mut out);
    out.sort_by(|a, b| {
        a.last_access
            .cmp(&b.last_access)
            .then_with(|| a.path.cmp(&b.path))
    });
    out
}

/// Limits for [`reduce_size`]; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub bytes: Option<u64>,
    pub items: Option<u64>,
    pub age: Option<Duration>,
}

/// Removes entries until the store fits `limits`: first every entry not used
/// within `age`, then least recently used ones until both the count and the
/// total size fit. Returns the removed entries.
pub fn reduce_size(
    root: &Path,
    limits: Limits,
    now: SystemTime,
) -> Result<Vec<EntryInfo>, CacheError> {
    let entries = list_entries(root);
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    let mut count = entries.len() as u64;
    let mut removed = Vec::new();
    for e in entries {
        let too_old = limits
            .age
            .is_some_and(|age| now.duration_since(e.last_access).unwrap_or_default() > age);
        let too_many = limits.items.is_some_and(|n| count > n);
        let too_big = limits.bytes.is_some_and(|b| total > b);
        if !(too_old || too_many || too_big) {
            // Entries are ordered by last use: the rest are newer, so they are
            // not too old either; count and size already fit.
            break;
        }
        if remove_atomically(&e.path)? {
            total -= e.size;
            count -= 1;
            removed.push(e);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::write_entry;
    use std::fs::{File, FileTimes};

    fn tmpdir(name: &str) -> tempfile::TempDir {
        crate::test_dir("store", name)
    }

    fn make(root: &Path, key: &str, size: usize, used_secs_ago: u64) -> PathBuf {
        let entry = root
            .join("mod")
            .join("func")
            .join("code")
            .join(format!("{key}.pkc"));
        write_entry(&entry, 0, "{}", &vec![1u8; size], &[], false).unwrap();
        let t = SystemTime::now() - Duration::from_secs(used_secs_ago);
        File::options()
            .write(true)
            .open(&entry)
            .unwrap()
            .set_times(FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
        entry
    }

    fn keys(root: &Path) -> Vec<String> {
        list_entries(root)
            .iter()
            .map(|e| e.path.file_stem().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn lists_lru_first_and_skips_tmp() {
        let dir = tmpdir("list");
        let d = dir.path();
        make(d, "b", 10, 100);
        make(d, "a", 10, 10);
        make(d, "c", 10, 1000);
        fs::write(d.join("mod/func/code/.tmp-x.pkc-1-2-3"), b"partial").unwrap();
        fs::write(d.join("mod/func/code/func_code.py"), b"def f(): pass").unwrap();
        assert_eq!(keys(d), ["c", "b", "a"]);
    }

    #[test]
    fn reduce_by_items_bytes_and_age() {
        let dir = tmpdir("reduce");
        let d = dir.path();
        for (i, k) in ["e1", "e2", "e3", "e4", "e5"].iter().enumerate() {
            make(d, k, 1000, 1000 - 100 * i as u64);
        }
        let now = SystemTime::now();
        let removed = reduce_size(
            d,
            Limits {
                items: Some(4),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(keys(d), ["e2", "e3", "e4", "e5"]);
        let one = list_entries(d)[0].size;
        let removed = reduce_size(
            d,
            Limits {
                bytes: Some(2 * one + 1),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(removed.len(), 2);
        assert_eq!(keys(d), ["e4", "e5"]);
        let removed = reduce_size(
            d,
            Limits {
                age: Some(Duration::from_secs(650)),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(keys(d), ["e5"]);
        assert!(reduce_size(d, Limits::default(), now).unwrap().is_empty());
        // Nothing else left behind.
        assert_eq!(fs::read_dir(d.join("mod/func/code")).unwrap().count(), 1);
        // A dead remover's trash is cleaned up by the next listing.
        fs::create_dir_all(d.join("mod/.trash-func-1-2-3/code")).unwrap();
        list_entries(d);
        assert!(!d.join("mod/.trash-func-1-2-3").exists());
    }

    #[test]
    fn remove_missing_is_not_an_error() {
        let dir = tmpdir("rm");
        let d = dir.path();
        assert!(!remove_atomically(&d.join("nothing")).unwrap());
        let e = make(d, "k", 1, 0);
        assert!(remove_atomically(&e).unwrap());
        assert!(!e.exists());
        make(d, "k2", 1, 0);
        assert!(remove_atomically(&d.join("mod")).unwrap());
        assert_eq!(fs::read_dir(d).unwrap().count(), 0);
    }
}
