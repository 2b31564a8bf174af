//! perfkit's cache engine: content hashing and the on-disk store behind
//! `perfkit.Memory`.
//!
//! It owns: the content hash (xxh3-128 over a pickle stream and its
//! out-of-band buffers, [`hash`]), the entry file format with its checksums
//! ([`entry`]), and the store's directory operations — atomic publish of an
//! entry, atomic removal, listing and eviction ([`store`]), and the
//! write-behind queue that publishes small entries off the caller's path
//! ([`writer`]).
//!
//! It must not know Python: no pickling, no function introspection, no
//! argument binding (that is `python/perfkit/memory.py`). Everything here is
//! plain bytes and paths, so `cargo test` runs without an interpreter.

pub mod entry;
pub mod error;
pub mod hash;
pub mod store;
pub mod writer;

pub use entry::{
    check_key, encode_entry, head_of_encoded, metadata_key, open_entry, read_entry,
    read_entry_head, read_small_entry, write_encoded, write_encoded_below, write_entry, EntryHead,
    EntryReader, Layout, ReadOutcome,
};
pub use error::CacheError;
pub use hash::{content_hash, hex128, scalars_hash, ContentHasher, Scalar};
pub use store::{list_entries, reduce_size, remove_atomically, EntryInfo, Limits};

/// A fresh, empty directory for one test, removed when dropped (every
/// `cargo test` run left its entries, some of a megabyte, in the temp
/// directory). `module` and `name` say whose it is.
#[cfg(test)]
pub(crate) fn test_dir(module: &str, name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("perfkit-{module}-test-{name}-"))
        .tempdir()
        .unwrap()
}
