//! The `.prof` file: cProfile's marshalled pstats dict, then perfkit's trailer.
//!
//! The dict comes first and is exactly what `cProfile.Profile.dump_stats`
//! writes, so `pstats.Stats(path)`, snakeviz and every other pstats reader
//! load the file unchanged (`marshal.load` reads one object and ignores what
//! follows). The trailer carries the exact [`CallTree`], which the dict cannot
//! express (it only keeps caller→callee pairs):
//!
//! | bytes | content |
//! |---|---|
//! | 8 | start magic `PERFKIT\x1a` |
//! | 4 | trailer format version, u32 little-endian (currently 1) |
//! | 8 | payload length `n`, u64 little-endian |
//! | n | payload: the [`CallTree`] encoded with postcard |
//! | 4 | CRC-32 (IEEE) of the version, length and payload bytes, u32 little-endian |
//! | 8 | end magic `\x1aTIKFREP` |
//!
//! A file without a trailer is a foreign cProfile file: its tree is inferred
//! ([`StatsTable::infer_tree`]). A trailer that is present but inconsistent is
//! an error, never a silent fallback to the inferred tree.

use std::path::Path;

use rustc_hash::FxHashMap;

use crate::marshal::{self, RefSlot, Value};
use crate::stats::{EdgeStats, FuncStats, StatsTable};
use crate::tree::{CallTree, FuncKey};
use crate::Error;

/// A profile as read from a file: the pstats table as stored, and the call
/// tree (exact from perfkit's trailer, or inferred; see [`crate::Meta::exact`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub stats: StatsTable,
    pub tree: CallTree,
}

pub const START_MAGIC: [u8; 8] = *b"PERFKIT\x1a";
pub const END_MAGIC: [u8; 8] = *b"\x1aTIKFREP";
/// Bump whenever the encoding of [`CallTree`] changes: postcard is not
/// self-describing, so an old reader must refuse a new payload.
pub const TRAILER_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8;
const FOOTER_LEN: usize = 4 + 8;

/// The `.prof` bytes for a tree: its pstats dict ([`CallTree::to_stats`])
/// followed by the trailer.
pub fn to_bytes(tree: &CallTree) -> Vec<u8> {
    let mut out = stats_to_marshal(&tree.to_stats());
    append_trailer(&mut out, tree);
    out
}

/// The `.prof` bytes for a profile whose table is kept as it is (for
/// instance one read from a foreign file) rather than derived from the tree.
pub fn profile_to_bytes(profile: &Profile) -> Vec<u8> {
    table_and_tree_to_bytes(&profile.stats, &profile.tree)
}

fn table_and_tree_to_bytes(stats: &StatsTable, tree: &CallTree) -> Vec<u8> {
    let mut out = stats_to_marshal(stats);
    append_trailer(&mut out, tree);
    out
}

/// Writes [`to_bytes`] to `path` atomically: a crash leaves either the old
/// file or the new one, never a partial file.
pub fn write_file(path: &Path, tree: &CallTree) -> Result<(), Error> {
    crate::write_atomic(path, &to_bytes(tree))
}

/// Writes [`profile_to_bytes`] to `path` atomically: for a profile read from
/// a foreign file this keeps its table as it was instead of deriving one from
/// the inferred tree.
pub fn write_profile(path: &Path, profile: &Profile) -> Result<(), Error> {
    write_table_and_tree(path, &profile.stats, &profile.tree)
}

/// [`write_profile`] of a table and a tree held apart.
pub fn write_table_and_tree(path: &Path, stats: &StatsTable, tree: &CallTree) -> Result<(), Error> {
    crate::write_atomic(path, &table_and_tree_to_bytes(stats, tree))
}

/// Reads a `.prof` file; errors name the file.
pub fn read_file(path: &Path) -> Result<Profile, Error> {
    let bytes = crate::read_bytes(path)?;
    from_bytes(&bytes).map_err(|e| e.in_file(path))
}

/// The marshalled pstats dict alone, as `dump_stats` writes it:
/// `{(file, line, name): (cc, nc, tt, ct, {caller: (nc, cc, tt, ct)})}`.
/// Each key tuple and each string is stored once and referenced after.
pub fn stats_to_marshal(stats: &StatsTable) -> Vec<u8> {
    let mut w = marshal::Writer::new();
    let mut keys: FxHashMap<&FuncKey, RefSlot> = FxHashMap::default();
    fn key<'a>(
        w: &mut marshal::Writer,
        k: &'a FuncKey,
        keys: &mut FxHashMap<&'a FuncKey, RefSlot>,
    ) {
        if let Some(&slot) = keys.get(k) {
            w.reference(slot);
            return;
        }
        let slot = w.tuple(3, true);
        w.str(&k.file);
        w.int(k.line as i128);
        w.str(&k.name);
        if let Some(slot) = slot {
            keys.insert(k, slot);
        }
    }
    w.dict();
    for e in &stats.entries {
        key(&mut w, &e.func, &mut keys);
        w.tuple(5, false);
        w.int(e.cc as i128);
        w.int(e.nc as i128);
        w.float(e.tt);
        w.float(e.ct);
        w.dict();
        for (caller, edge) in &e.callers {
            key(&mut w, caller, &mut keys);
            if edge.count_only {
                w.int(edge.nc as i128); // (as the pure-Python `profile` module wrote it)
                continue;
            }
            w.tuple(4, false);
            w.int(edge.nc as i128);
            w.int(edge.cc as i128);
            w.float(edge.tt);
            w.float(edge.ct);
        }
        w.dict_end();
    }
    w.dict_end();
    w.finish()
}

/// The trailer alone: a tree sent to another process of the same perfkit
/// (a pool's worker sends its tree to the caller), read by [`tree_from_trailer`].
pub fn tree_to_trailer(tree: &CallTree) -> Vec<u8> {
    let mut out = Vec::new();
    append_trailer(&mut out, tree);
    out
}

/// The tree of [`tree_to_trailer`]'s bytes, checked as a file's trailer is.
pub fn tree_from_trailer(bytes: &[u8]) -> Result<CallTree, Error> {
    read_trailer(bytes)
}

fn append_trailer(out: &mut Vec<u8>, tree: &CallTree) {
    // Serializing plain structs into a Vec cannot fail.
    let payload = postcard::to_allocvec(tree).unwrap_or_default();
    out.extend_from_slice(&START_MAGIC);
    let checked_from = out.len();
    out.extend_from_slice(&TRAILER_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out[checked_from..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&END_MAGIC);
}

/// Parses a `.prof` file (perfkit's or any cProfile/pstats dump).
pub fn from_bytes(bytes: &[u8]) -> Result<Profile, Error> {
    let Some(&first) = bytes.first() else {
        return Err(Error::NotProfile(
            "expected a marshalled pstats dict, found an empty file".into(),
        ));
    };
    if matches!(
        crate::sniff(bytes),
        Some(crate::Format::Speedscope | crate::Format::Collapsed)
    ) {
        return Err(Error::NotProfile(
            "expected a marshalled pstats dict, found text (speedscope JSON or collapsed stacks? `load` reads those)".into(),
        ));
    }
    if first & !marshal::FLAG_REF != b'{' {
        let found = match marshal::type_code_name(first) {
            Some(kind) => format!(
                "marshal data holding {kind} ({})",
                crate::describe_bytes(bytes)
            ),
            None => crate::describe_bytes(bytes),
        };
        return Err(Error::NotProfile(format!(
            "expected a marshalled pstats dict, found {found}"
        )));
    }
    let (value, used) = marshal::read(bytes).map_err(|e| match e {
        marshal::Error::Truncated { inside, .. } => Error::Truncated(format!(
            "the pstats dict ends inside {inside} at byte {} (file cut short?)",
            bytes.len()
        )),
        marshal::Error::Bad { .. } => Error::Damaged(format!("in the pstats dict: {e}")),
        marshal::Error::Unsupported { .. } => {
            Error::NotProfile(format!("expected a pstats dict: {e}"))
        }
        marshal::Error::Limit { .. } => Error::TooLarge(e.to_string()),
    })?;
    // Keys are copied into every caller entry, so the table may be larger
    // than the file; bound it to a generous multiple of the input.
    let mut budget = bytes.len().saturating_mul(64).saturating_add(1 << 20);
    let stats = stats_from_value(&value, &mut budget)?;
    let rest = &bytes[used..];
    let tree = if rest.is_empty() {
        stats.infer_tree()
    } else {
        // Reported, not read around: a damaged file is not quietly shown as
        // an approximation. But the table before it is intact, and says so.
        read_trailer(rest).map_err(|e| {
            let hint = "; the pstats table before it is intact (pstats.Stats reads it)";
            match e {
                Error::Damaged(m) => Error::Damaged(m + hint),
                Error::Truncated(m) => Error::Truncated(m + hint),
                Error::Unsupported(m) => Error::Unsupported(m + hint),
                other => other,
            }
        })?
    };
    Ok(Profile { stats, tree })
}

fn read_trailer(rest: &[u8]) -> Result<CallTree, Error> {
    let magic_len = rest.len().min(START_MAGIC.len());
    if rest[..magic_len] != START_MAGIC[..magic_len] {
        return Err(Error::Damaged(format!(
            "{} unexpected bytes after the pstats dict, not a perfkit trailer ({})",
            rest.len(),
            crate::describe_bytes(rest)
        )));
    }
    if rest.len() < HEADER_LEN {
        return Err(Error::Truncated(format!(
            "the perfkit trailer ends after {} of its {HEADER_LEN} header bytes (file cut short?)",
            rest.len()
        )));
    }
    let version = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
    if version != TRAILER_VERSION {
        return Err(Error::Unsupported(format!(
            "perfkit trailer version {version}, this perfkit reads version {TRAILER_VERSION} (written by a newer perfkit?)"
        )));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&rest[12..20]);
    let payload_len = u64::from_le_bytes(len_bytes);
    let needed = (HEADER_LEN + FOOTER_LEN) as u64 + payload_len.min(u64::MAX / 2);
    let have = rest.len() as u64;
    if have < needed {
        return Err(Error::Truncated(format!(
            "the perfkit trailer announces {payload_len} payload bytes but the file ends {} bytes early (file cut short?)",
            needed - have
        )));
    }
    if have > needed {
        return Err(Error::Damaged(format!(
            "{} unexpected bytes after the perfkit trailer",
            have - needed
        )));
    }
    let payload_end = HEADER_LEN + payload_len as usize;
    let payload = &rest[HEADER_LEN..payload_end];
    let stored = u32::from_le_bytes([
        rest[payload_end],
        rest[payload_end + 1],
        rest[payload_end + 2],
        rest[payload_end + 3],
    ]);
    if rest[payload_end + 4..] != END_MAGIC {
        return Err(Error::Damaged(
            "the perfkit trailer's end marker is wrong".into(),
        ));
    }
    let computed = crc32fast::hash(&rest[START_MAGIC.len()..payload_end]);
    if stored != computed {
        return Err(Error::Damaged(format!(
            "the perfkit trailer's checksum does not match (stored 0x{stored:08x}, computed 0x{computed:08x})"
        )));
    }
    let (tree, unread) = postcard::take_from_bytes::<CallTree>(payload).map_err(|e| {
        Error::Damaged(format!(
            "cannot decode the perfkit trailer's call tree: {e}"
        ))
    })?;
    if !unread.is_empty() {
        return Err(Error::Damaged(format!(
            "{} stray bytes at the end of the perfkit trailer's call tree",
            unread.len()
        )));
    }
    tree.validate().map_err(|e| {
        Error::Damaged(format!(
            "the perfkit trailer's call tree is inconsistent: {e}"
        ))
    })?;
    Ok(tree)
}

/// A short description of a value for "found …" messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Tuple(items) => format!("a tuple of {} items", items.len()),
        Value::List(items) => format!("a list of {} items", items.len()),
        Value::Dict(items) => format!("a dict of {} items", items.len()),
        Value::Int(_) | Value::BigInt { .. } => match v.as_i128() {
            Some(i) => format!("the int {i}"),
            None => "an int of more than 38 digits".into(),
        },
        Value::Float(f) => format!("the float {f}"),
        other => {
            let name = other.type_name();
            let article = if name.starts_with(['a', 'e', 'i', 'o', 'u', 'E']) {
                "an"
            } else {
                "a"
            };
            format!("{article} {name}")
        }
    }
}

fn shape(message: String) -> Error {
    Error::NotProfile(format!(
        "the marshalled dict is not pstats data: {}",
        one_line(&message)
    ))
}

/// Longest message `one_line` keeps, in chars.
const MAX_MESSAGE_CHARS: usize = 300;

/// `message` as one printable line: its parts read from the file (function
/// names, which a damaged file may fill with any bytes) have their control
/// characters escaped, and a long one is cut short.
fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS + 8));
    let mut chars = 0;
    for c in message.chars() {
        if chars >= MAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            let escaped = c.escape_default();
            chars += escaped.len();
            out.extend(escaped);
        } else {
            chars += 1;
            out.push(c);
        }
    }
    out
}

fn take_budget(budget: &mut usize, key: &FuncKey) -> Result<(), Error> {
    let cost = key.file.len() + key.name.len() + 32;
    if cost > *budget {
        return Err(Error::TooLarge(
            "function names repeat more often than a pstats file of this size allows".into(),
        ));
    }
    *budget -= cost;
    Ok(())
}

fn func_key(v: &Value, what: &dyn Fn() -> String, budget: &mut usize) -> Result<FuncKey, Error> {
    let fail = || {
        shape(format!(
            "{} is {}, expected a (file, line, name) tuple",
            what(),
            describe(v)
        ))
    };
    let Value::Tuple(items) = v else {
        return Err(fail());
    };
    let [Value::Str(file), line, Value::Str(name)] = items.as_slice() else {
        return Err(fail());
    };
    let line = match line.as_i128() {
        Some(l) => u32::try_from(l).map_err(|_| {
            shape(format!(
                "{} has the line number {l}, which perfkit cannot hold (0 to {})",
                what(),
                u32::MAX
            ))
        })?,
        None => return Err(fail()),
    };
    let key = FuncKey {
        file: file.to_string(),
        line,
        name: name.to_string(),
    };
    take_budget(budget, &key)?;
    Ok(key)
}

fn count(v: &Value, what: &dyn Fn() -> String) -> Result<u64, Error> {
    let n = match v {
        Value::Bool(b) => Some(*b as i128),
        other => other.as_i128(),
    };
    n.and_then(|n| u64::try_from(n).ok()).ok_or_else(|| {
        shape(format!(
            "{} is {}, expected a call count",
            what(),
            describe(v)
        ))
    })
}

fn time(v: &Value, what: &dyn Fn() -> String) -> Result<f64, Error> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Bool(b) => Ok(*b as u8 as f64),
        Value::Int(i) => Ok(*i as f64),
        other => other.as_i128().map(|i| i as f64).ok_or_else(|| {
            shape(format!(
                "{} is {}, expected a time in seconds",
                what(),
                describe(v)
            ))
        }),
    }
}

/// Converts a pstats dict, keeping Python's dict semantics: a key repeated
/// later keeps its first position and takes the last value.
pub(crate) fn stats_from_value(value: &Value, budget: &mut usize) -> Result<StatsTable, Error> {
    let Value::Dict(items) = value else {
        return Err(Error::NotProfile(format!(
            "expected a marshalled pstats dict, found marshal data holding {}",
            describe(value)
        )));
    };
    let mut entries: Vec<FuncStats> = Vec::with_capacity(items.len());
    let mut index: FxHashMap<FuncKey, usize> = FxHashMap::default();
    for (i, (k, v)) in items.iter().enumerate() {
        let func = func_key(k, &|| format!("key {i}"), budget)?;
        let label = || format!("the value of {}", func.std_string());
        let (cc, nc, tt, ct, callers) = match v {
            Value::Tuple(t) if t.len() == 5 => (&t[0], &t[1], &t[2], &t[3], &t[4]),
            other => {
                return Err(shape(format!(
                    "{} is {}, expected (cc, nc, tt, ct, callers)",
                    label(),
                    describe(other)
                )));
            }
        };
        let Value::Dict(caller_items) = callers else {
            return Err(shape(format!(
                "the callers of {} are {}, expected a dict",
                func.std_string(),
                describe(callers)
            )));
        };
        let mut row = FuncStats {
            func: func.clone(),
            cc: count(cc, &|| format!("cc of {}", func.std_string()))?,
            nc: count(nc, &|| format!("nc of {}", func.std_string()))?,
            tt: time(tt, &|| format!("tt of {}", func.std_string()))?,
            ct: time(ct, &|| format!("ct of {}", func.std_string()))?,
            callers: Vec::with_capacity(caller_items.len()),
        };
        let mut caller_index: FxHashMap<FuncKey, usize> = FxHashMap::default();
        for (j, (ck, cv)) in caller_items.iter().enumerate() {
            let caller = func_key(
                ck,
                &|| format!("caller {j} of {}", func.std_string()),
                budget,
            )?;
            let what = || format!("the edge {} -> {}", caller.std_string(), func.std_string());
            let edge = match cv {
                Value::Tuple(t) if t.len() == 4 => EdgeStats {
                    nc: count(&t[0], &|| format!("nc of {}", what()))?,
                    cc: count(&t[1], &|| format!("cc of {}", what()))?,
                    tt: time(&t[2], &|| format!("tt of {}", what()))?,
                    ct: time(&t[3], &|| format!("ct of {}", what()))?,
                    count_only: false,
                },
                // The pure-Python `profile` module stores only a call count.
                Value::Int(_) | Value::BigInt { .. } => {
                    let n = count(cv, &what)?;
                    EdgeStats {
                        nc: n,
                        cc: n,
                        tt: 0.0,
                        ct: 0.0,
                        count_only: true,
                    }
                }
                other => {
                    return Err(shape(format!(
                        "{} is {}, expected (nc, cc, tt, ct)",
                        what(),
                        describe(other)
                    )))
                }
            };
            match caller_index.get(&caller) {
                Some(&at) => row.callers[at].1 = edge,
                None => {
                    caller_index.insert(caller.clone(), row.callers.len());
                    row.callers.push((caller, edge));
                }
            }
        }
        match index.get(&func) {
            Some(&at) => entries[at] = row,
            None => {
                index.insert(func, entries.len());
                entries.push(row);
            }
        }
    }
    Ok(StatsTable { entries })
}
