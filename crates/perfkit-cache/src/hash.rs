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
/// A value of one of the plain types most cached calls take as arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
}

/// Marks a [`scalars_hash`] input: a pickle stream (what [`content_hash`]
/// hashes in the same position) starts with 0x80, never with this.
const SCALARS_TAG: &[u8] = b"perfkit-scalars-1";

/// Hash of `prefix` and a sequence of plain values, without pickling them:
/// the fast path of a cache key. Each value is hashed with its type, so
/// `1`, `1.0`, `True` and `"1"` differ, as their pickles do; floats by
/// their bits (`0.0` and `-0.0` differ, a NaN equals itself).
pub fn scalars_hash(prefix: &[u8], values: &[Scalar<'_>]) -> u128 {
    let mut h = ContentHasher::new();
    h.part(prefix);
    h.part(SCALARS_TAG);
    h.part_len(values.len() as u64);
    for v in values {
        match *v {
            Scalar::None => h.part(b"N"),
            Scalar::Bool(b) => h.part(if b { b"T" } else { b"F" }),
            Scalar::Int(i) => {
                h.part(b"i");
                h.part(&i.to_le_bytes());
            }
            Scalar::Float(f) => {
                h.part(b"f");
                h.part(&f.to_bits().to_le_bytes());
            }
            Scalar::Str(s) => {
                h.part(b"s");
                h.part(s.as_bytes());
            }
            Scalar::Bytes(b) => {
                h.part(b"b");
                h.part(b);
            }
        }
    }
    h.finish()
}

pub fn hex128(v: u128) -> String {
    format!("{v:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_differ_by_type_value_and_position() {
        use Scalar::*;
        let cases: Vec<Vec<Scalar>> = vec![
            vec![Int(1)],
            vec![Float(1.0)],
            vec![Bool(true)],
            vec![Str("1")],
            vec![Bytes(b"1")],
            vec![None],
            vec![Float(0.0)],
            vec![Float(-0.0)],
            vec![Int(1), Int(2)],
            vec![Int(2), Int(1)],
            vec![Str("a"), Str("bc")],
            vec![Str("ab"), Str("c")],
            vec![],
        ];
        let hashes: Vec<u128> = cases.iter().map(|c| scalars_hash(b"f", c)).collect();
        for i in 0..hashes.len() {
            for j in 0..i {
                assert_ne!(hashes[i], hashes[j], "{:?} vs {:?}", cases[i], cases[j]);
            }
        }
        assert_ne!(scalars_hash(b"f", &[Int(1)]), scalars_hash(b"g", &[Int(1)]));
        let nan = [Float(f64::NAN)];
        assert_eq!(scalars_hash(b"f", &nan), scalars_hash(b"f", &nan));
    }

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
