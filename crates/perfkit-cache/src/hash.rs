//! The content hash: xxh3-128 over a pickle stream and its out-of-band
//! buffers, each part prefixed by its length so that moving bytes from one
//! part to the next changes the hash.

use xxhash_rust::xxh3::Xxh3Default;

/// Bumped whenever the hashed byte layout changes, so old keys never match.
const HASH_LAYOUT_VERSION: &[u8] = b"perfkit-hash-1";

/// Streaming xxh3-128 with length-prefixed parts.
pub struct ContentHasher {
    state: Xxh3Default,
}

impl Default for ContentHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ContentHasher {
    pub fn new() -> Self {
        let mut state = Xxh3Default::new();
        state.update(HASH_LAYOUT_VERSION);
        ContentHasher { state }
    }

    /// Adds one part: its length, then its bytes.
    pub fn part(&mut self, bytes: &[u8]) {
        self.state.update(&(bytes.len() as u64).to_le_bytes());
        self.state.update(bytes);
    }

    /// Adds the length of a part whose bytes follow in several `chunk` calls.
    pub fn part_len(&mut self, len: u64) {
        self.state.update(&len.to_le_bytes());
    }

    pub fn chunk(&mut self, bytes: &[u8]) {
        self.state.update(bytes);
    }

    pub fn finish(&self) -> u128 {
        self.state.digest128()
    }
}

/// The hash of a prefix (e.g. a function's identity), a pickle stream and its buffers.
pub fn content_hash(prefix: &[u8], stream: &[u8], buffers: &[&[u8]]) -> u128 {
    let mut h = ContentHasher::new();
    h.part(prefix);
    h.part(stream);
    h.part_len(buffers.len() as u64);
    for b in buffers {
        h.part(b);
    }
    h.finish()
}

/// 32 lowercase hex digits.
pub fn hex128(v: u128) -> String {
    format!("{v:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_value() {
        // Keys on disk depend on this: a change must be deliberate (bump HASH_LAYOUT_VERSION).
        let a = hex128(content_hash(b"f", b"stream", &[b"buf"]));
        assert_eq!(a, hex128(content_hash(b"f", b"stream", &[b"buf"])));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn parts_are_delimited() {
        let a = content_hash(b"", b"ab", &[b"c"]);
        let b = content_hash(b"", b"a", &[b"bc"]);
        let c = content_hash(b"", b"abc", &[]);
        let d = content_hash(b"ab", b"", &[b"c"]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_ne!(a, d);
    }

    #[test]
    fn streaming_equals_one_shot() {
        let big: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let one = content_hash(b"p", b"s", &[&big]);
        let mut h = ContentHasher::new();
        h.part(b"p");
        h.part(b"s");
        h.part_len(1);
        h.part_len(big.len() as u64);
        for c in big.chunks(4096) {
            h.chunk(c);
        }
        assert_eq!(one, h.finish());
    }

    #[test]
    fn one_bit_changes_hash() {
        let mut big = vec![0u8; 1 << 20];
        let a = content_hash(b"", b"", &[&big]);
        big[123_456] ^= 1;
        assert_ne!(a, content_hash(b"", b"", &[&big]));
    }
}
