//! Errors of the store: every one names the path and what was being done.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file-system operation failed (read-only location, disk full, ...).
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CacheError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CacheError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The kind of the underlying I/O error.
    pub fn kind(&self) -> Option<io::ErrorKind> {
        match self {
            CacheError::Io { source, .. } => Some(source.kind()),
        }
    }

    /// The OS error number, when there is one (for the Python side's OSError).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            CacheError::Io { source, .. } => source.raw_os_error(),
        }
    }
}

/// Whether `e` says the path (or a directory on the way) is not there: an
/// entry or folder that another process removed, not a failure.
pub(crate) fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}
