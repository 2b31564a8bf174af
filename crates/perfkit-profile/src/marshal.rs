//! A bounded reader and a small writer for Python's `marshal` format.
//!
//! The reader understands what CPython 3.9–3.13 write (format versions 0–5):
//! every plain type, `FLAG_REF` and `r` back-references. Input is untrusted, so
//! nesting depth, lengths and the number of objects (back-references that
//! copy a shared object count its whole size again) are limited by
//! [`Limits`]: no allocation is larger than what the remaining input could
//! encode, and the reader never panics.
//!
//! The writer covers what a pstats dict needs (dict, tuple, str, int, float)
//! plus the other plain types, and can share repeated objects through
//! `FLAG_REF` so that long file names are stored once.

use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashMap;

/// A decoded marshal object. Shared objects are copied, except strings,
/// whose text is shared through the `Arc`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    StopIteration,
    Ellipsis,
    Bool(bool),
    Int(i64),
    /// An int outside `i64`: sign and magnitude in CPython's 15-bit digits,
    /// least significant first.
    BigInt {
        negative: bool,
        digits: Vec<u16>,
    },
    Float(f64),
    Complex(f64, f64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Entries in file order; a key repeated later would overwrite the value
    /// in Python but keep its first position.
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    FrozenSet(Vec<Value>),
}

impl Value {
    /// The Python type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::StopIteration => "StopIteration",
            Value::Ellipsis => "Ellipsis",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt { .. } => "int",
            Value::Float(_) => "float",
            Value::Complex(..) => "complex",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::FrozenSet(_) => "frozenset",
        }
    }

    /// The value as an `i128`, when it is an int that fits.
    pub fn as_i128(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i as i128),
            Value::BigInt { negative, digits } => {
                let mut v: i128 = 0;
                for &d in digits.iter().rev() {
                    v = v.checked_mul(1 << 15)?.checked_add(d as i128)?;
                }
                Some(if *negative { -v } else { v })
            }
            _ => None,
        }
    }

    pub fn str(s: &str) -> Value {
        Value::Str(Arc::from(s))
    }

    /// An int of any `i128` value, as [`Value::Int`] when it fits.
    pub fn int(v: i128) -> Value {
        if let Ok(small) = i64::try_from(v) {
            return Value::Int(small);
        }
        let mut digits = Vec::new();
        let mut m = v.unsigned_abs();
        while m > 0 {
            digits.push((m & 0x7fff) as u16);
            m >>= 15;
        }
        Value::BigInt {
            negative: v < 0,
            digits,
        }
    }
}

/// Why marshal data could not be read. `offset` is where the reader was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The input ended inside an object (`inside` says which kind).
    Truncated { inside: &'static str, offset: usize },
    /// The bytes cannot be marshal data.
    Bad { message: String, offset: usize },
    /// Valid marshal data that this reader refuses (slice objects, …).
    Unsupported { message: String, offset: usize },
    /// The data nests deeper or expands to more objects than [`Limits`] allow.
    Limit { message: String, offset: usize },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated { inside, offset } => {
                write!(f, "input ends inside {inside} at byte {offset}")
            }
            Error::Bad { message, offset } => {
                write!(f, "bad marshal data at byte {offset}: {message}")
            }
            Error::Unsupported { message, offset } => {
                write!(f, "unsupported marshal data at byte {offset}: {message}")
            }
            Error::Limit { message, offset } => write!(
                f,
                "marshal data at byte {offset} exceeds a limit: {message}"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Bounds on what one read may build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Containers inside containers. pstats dicts need 4.
    pub max_depth: usize,
    /// Objects built, each copy made by a back-reference counted again.
    pub max_objects: usize,
}

impl Limits {
    /// Every object takes at least one byte, so honest data never builds more
    /// objects than it has bytes; the slack lets back-references share small
    /// tuples. Memory stays proportional to the input.
    pub fn for_input(len: usize) -> Limits {
        Limits {
            max_depth: 64,
            max_objects: len.saturating_mul(2).saturating_add(4096),
        }
    }
}

pub const FLAG_REF: u8 = 0x80;

/// A type code's name, for messages; `None` when it is no marshal type.
pub fn type_code_name(code: u8) -> Option<&'static str> {
    Some(match code & !FLAG_REF {
        b'0' => "a NULL marker",
        b'N' => "None",
        b'F' | b'T' => "a bool",
        b'S' => "StopIteration",
        b'.' => "Ellipsis",
        b'i' | b'I' | b'l' => "an int",
        b'f' | b'g' => "a float",
        b'x' | b'y' => "a complex",
        b's' => "a bytes object",
        b't' | b'u' | b'a' | b'A' | b'z' | b'Z' => "a string",
        b'r' => "a back-reference",
        b'(' | b')' => "a tuple",
        b'[' => "a list",
        b'{' => "a dict",
        b'c' => "a code object",
        b'<' => "a set",
        b'>' => "a frozenset",
        b':' => "a slice",
        b'?' => "an unknown object",
        _ => return None,
    })
}

/// Reads one object from the start of `bytes`, returning it and the number
/// of bytes it took. Whatever follows is left alone, as `marshal.load` does.
pub fn read(bytes: &[u8]) -> Result<(Value, usize), Error> {
    read_with_limits(bytes, Limits::for_input(bytes.len()))
}

/// [`read`] with explicit limits.
pub fn read_with_limits(bytes: &[u8], limits: Limits) -> Result<(Value, usize), Error> {
    let mut r = Reader {
        bytes,
        pos: 0,
        refs: Vec::new(),
        objects: 0,
        limits,
        code_layout: None,
    };
    let value = r.object(0)?;
    Ok((value, r.pos))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Objects flagged for sharing, with the number of objects each holds;
    /// `None` while a container is still being read.
    refs: Vec<Option<(Value, usize)>>,
    objects: usize,
    limits: Limits,
    /// The code objects' layout once one was read: 3.11+'s (true) or older.
    code_layout: Option<bool>,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, inside: &'static str) -> Result<&[u8], Error> {
        if n > self.remaining() {
            return Err(Error::Truncated {
                inside,
                offset: self.bytes.len(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn byte(&mut self, inside: &'static str) -> Result<u8, Error> {
        Ok(self.take(1, inside)?[0])
    }

    fn i32(&mut self, inside: &'static str) -> Result<i32, Error> {
        let b = self.take(4, inside)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self, inside: &'static str) -> Result<f64, Error> {
        let b = self.take(8, inside)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }

    fn bad(&self, at: usize, message: impl Into<String>) -> Error {
        Error::Bad {
            message: message.into(),
            offset: at,
        }
    }

    /// A length prefix, checked against what is left: each of `n` items needs
    /// at least `min_item` bytes.
    fn length(&mut self, at: usize, inside: &'static str, min_item: usize) -> Result<usize, Error> {
        let n = self.i32(inside)?;
        if n < 0 {
            return Err(self.bad(at, format!("negative length {n} for {inside}")));
        }
        let n = n as usize;
        if n.saturating_mul(min_item) > self.remaining() {
            return Err(Error::Truncated {
                inside,
                offset: self.bytes.len(),
            });
        }
        Ok(n)
    }

    fn count(&mut self, n: usize, at: usize) -> Result<(), Error> {
        self.objects = self.objects.saturating_add(n);
        if self.objects > self.limits.max_objects {
            return Err(Error::Limit {
                message: format!(
                    "more than {} objects (shared references copied too often?)",
                    self.limits.max_objects
                ),
                offset: at,
            });
        }
        Ok(())
    }

    fn text(&mut self, n: usize, latin1: bool) -> Result<Value, Error> {
        let raw = self.take(n, "a string")?;
        let s: String = if latin1 {
            raw.iter().map(|&b| b as char).collect()
        } else {
            // CPython writes lone surrogates with "surrogatepass"; they have
            // no Rust equivalent and become U+FFFD.
            String::from_utf8_lossy(raw).into_owned()
        };
        Ok(Value::Str(Arc::from(s)))
    }

    fn float_text(&mut self) -> Result<f64, Error> {
        let at = self.pos;
        let n = self.byte("a float")? as usize;
        let raw = self.take(n, "a float")?;
        let parsed = std::str::from_utf8(raw)
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok());
        parsed.ok_or_else(|| {
            let shown = String::from_utf8_lossy(&self.bytes[at + 1..at + 1 + n]).into_owned();
            self.bad(at, format!("float text {shown:?} is not a number"))
        })
    }

    fn items(&mut self, n: usize, depth: usize) -> Result<Vec<Value>, Error> {
        let mut v = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            v.push(self.object(depth + 1)?);
        }
        Ok(v)
    }

    /// A code object's fields, read past, as Python's repr names it (without
    /// its address): `<code object f, file "x.py", line 3>`. `modern`: the
    /// layout of 3.11 and later (5 ints, 8 objects, an int, 2 objects), else
    /// of 3.8-3.10 (6 ints, 8 objects, an int, 1 object).
    fn code_label(&mut self, depth: usize, modern: bool) -> Result<String, Error> {
        let at = self.pos;
        let inside = "a code object";
        for _ in 0..(if modern { 5 } else { 6 }) {
            self.i32(inside)?;
        }
        let fields = self.items(8, depth)?;
        let (file, name) = if modern {
            (&fields[5], &fields[6])
        } else {
            (&fields[6], &fields[7])
        };
        let (Value::Str(file), Value::Str(name)) = (file, name) else {
            return Err(self.bad(at, "a code object without a file and a name"));
        };
        let (file, name) = (file.clone(), name.clone());
        let line = self.i32(inside)?;
        self.items(if modern { 2 } else { 1 }, depth)?;
        Ok(format!(
            "<code object {name}, file \"{file}\", line {line}>"
        ))
    }

    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        let at = self.pos;
        if depth > self.limits.max_depth {
            return Err(Error::Limit {
                message: format!("nested deeper than {}", self.limits.max_depth),
                offset: at,
            });
        }
        let code = self.byte("an object")?;
        let flag = code & FLAG_REF != 0;
        let ty = code & !FLAG_REF;
        self.count(1, at)?;

        // Singletons and markers never take a reference slot in CPython, even flagged.
        match ty {
            b'N' => return Ok(Value::None),
            b'T' => return Ok(Value::Bool(true)),
            b'F' => return Ok(Value::Bool(false)),
            b'S' => return Ok(Value::StopIteration),
            b'.' => return Ok(Value::Ellipsis),
            b'0' => return Err(self.bad(at, "NULL object outside a dict")),
            b'r' => {
                let n = self.i32("a back-reference")?;
                let slot = usize::try_from(n).ok().and_then(|i| self.refs.get(i));
                return match slot {
                    Some(Some((v, size))) => {
                        let (v, size) = (v.clone(), *size);
                        self.count(size.saturating_sub(1), at)?;
                        Ok(v)
                    }
                    Some(None) => Err(self.bad(
                        at,
                        format!("reference {n} points into the object that contains it"),
                    )),
                    None => Err(self.bad(at, format!("reference {n} to an object not read yet"))),
                };
            }
            _ => {}
        }

        let slot = if flag {
            self.refs.push(None);
            Some(self.refs.len() - 1)
        } else {
            None
        };
        let objects_before = self.objects;

        let value = match ty {
            b'i' => Value::Int(self.i32("an int")? as i64),
            b'I' => {
                let b = self.take(8, "an int")?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Value::Int(i64::from_le_bytes(a))
            }
            b'l' => {
                let n = self.i32("an int")?;
                let size = n.unsigned_abs() as usize;
                if size.saturating_mul(2) > self.remaining() {
                    return Err(Error::Truncated {
                        inside: "an int",
                        offset: self.bytes.len(),
                    });
                }
                let mut digits = Vec::with_capacity(size);
                for _ in 0..size {
                    let b = self.take(2, "an int")?;
                    let d = u16::from_le_bytes([b[0], b[1]]);
                    if d > 0x7fff {
                        return Err(self.bad(at, "digit out of range in long"));
                    }
                    digits.push(d);
                }
                if digits.last() == Some(&0) {
                    return Err(self.bad(at, "unnormalized long data"));
                }
                let v = Value::BigInt {
                    negative: n < 0,
                    digits,
                };
                match v.as_i128().and_then(|i| i64::try_from(i).ok()) {
                    Some(i) => Value::Int(i),
                    None => v,
                }
            }
            b'g' => Value::Float(self.f64("a float")?),
            b'f' => Value::Float(self.float_text()?),
            b'y' => {
                let re = self.f64("a complex")?;
                Value::Complex(re, self.f64("a complex")?)
            }
            b'x' => {
                let re = self.float_text()?;
                Value::Complex(re, self.float_text()?)
            }
            b's' => {
                let n = self.length(at, "a bytes object", 1)?;
                Value::Bytes(Arc::from(self.take(n, "a bytes object")?))
            }
            b'u' | b't' => {
                let n = self.length(at, "a string", 1)?;
                self.text(n, false)?
            }
            b'a' | b'A' => {
                let n = self.length(at, "a string", 1)?;
                self.text(n, true)?
            }
            b'z' | b'Z' => {
                let n = self.byte("a string")? as usize;
                self.text(n, true)?
            }
            b'(' => {
                let n = self.length(at, "a tuple", 1)?;
                Value::Tuple(self.items(n, depth)?)
            }
            b')' => {
                let n = self.byte("a tuple")? as usize;
                Value::Tuple(self.items(n, depth)?)
            }
            b'[' => {
                let n = self.length(at, "a list", 1)?;
                Value::List(self.items(n, depth)?)
            }
            b'<' => {
                let n = self.length(at, "a set", 1)?;
                Value::Set(self.items(n, depth)?)
            }
            b'>' => {
                let n = self.length(at, "a frozenset", 1)?;
                Value::FrozenSet(self.items(n, depth)?)
            }
            b'{' => {
                let mut entries = Vec::new();
                loop {
                    if self.remaining() == 0 {
                        return Err(Error::Truncated {
                            inside: "a dict",
                            offset: self.bytes.len(),
                        });
                    }
                    if self.bytes[self.pos] & !FLAG_REF == b'0' {
                        self.pos += 1;
                        break;
                    }
                    let key = self.object(depth + 1)?;
                    let value = self.object(depth + 1)?;
                    entries.push((key, value));
                }
                Value::Dict(entries)
            }
            b'c' => {
                // A code object: the pure-Python `profile` module names the
                // profiled command's code in one key (`python -m profile -o`).
                // Read for a label only. Its layout changed in 3.11 and the
                // file does not say which Python wrote it: the newer is tried
                // first, then the older.
                // The first code object decides the layout for the others (a
                // file is one Python's): each is read once, and the retry
                // counts against the object limit too.
                let label = match self.code_layout {
                    Some(modern) => self.code_label(depth, modern)?,
                    None => {
                        let (start, refs) = (self.pos, self.refs.len());
                        self.code_layout = Some(true);
                        match self.code_label(depth, true) {
                            Ok(label) => label,
                            Err(newer) => {
                                self.pos = start;
                                self.refs.truncate(refs);
                                self.code_layout = Some(false);
                                let older = self.code_label(depth, false);
                                if older.is_err() {
                                    self.code_layout = None;
                                }
                                older.map_err(|_| newer)?
                            }
                        }
                    }
                };
                Value::Str(Arc::from(label))
            }
            b':' => {
                return Err(Error::Unsupported {
                    message: "slice objects are not read".into(),
                    offset: at,
                })
            }
            b'?' => return Err(self.bad(at, "unknown object type '?'")),
            other => return Err(self.bad(at, format!("unknown type code 0x{other:02x}"))),
        };

        if let Some(i) = slot {
            let size = self.objects - objects_before + 1;
            self.refs[i] = Some((value.clone(), size));
        }
        Ok(value)
    }
}

/// Builds marshal bytes that `marshal.loads` reads back (format version 4).
///
/// Containers are written as a header followed by their items, so the caller
/// streams a structure of any size without building a [`Value`] first.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
    next_ref: u32,
    strings: FxHashMap<Arc<str>, u32>,
}

/// A slot for an object written with [`FLAG_REF`], to be referred to later
/// with [`Writer::reference`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefSlot(u32);

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn code(&mut self, ty: u8, shared: bool) -> Option<RefSlot> {
        if shared {
            self.buf.push(ty | FLAG_REF);
            let slot = RefSlot(self.next_ref);
            self.next_ref += 1;
            Some(slot)
        } else {
            self.buf.push(ty);
            None
        }
    }

    fn len32(&mut self, n: usize) {
        // Python cannot read longer containers either.
        let n = i32::try_from(n).expect("marshal container longer than 2**31-1 items");
        self.buf.extend_from_slice(&n.to_le_bytes());
    }

    pub fn none(&mut self) {
        self.buf.push(b'N');
    }

    pub fn bool(&mut self, v: bool) {
        self.buf.push(if v { b'T' } else { b'F' });
    }

    /// An int of any `i128` value; beyond 32 bits it takes CPython's
    /// 15-bit-digit long form.
    pub fn int(&mut self, v: i128) {
        if let Ok(small) = i32::try_from(v) {
            self.buf.push(b'i');
            self.buf.extend_from_slice(&small.to_le_bytes());
            return;
        }
        let mut digits = Vec::new();
        let mut m = v.unsigned_abs();
        while m > 0 {
            digits.push((m & 0x7fff) as u16);
            m >>= 15;
        }
        self.long_digits(v < 0, &digits);
    }

    fn long_digits(&mut self, negative: bool, digits: &[u16]) {
        self.buf.push(b'l');
        let n = digits.len() as i32;
        self.buf
            .extend_from_slice(&(if negative { -n } else { n }).to_le_bytes());
        for d in digits {
            self.buf.extend_from_slice(&d.to_le_bytes());
        }
    }

    pub fn float(&mut self, v: f64) {
        self.buf.push(b'g');
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn complex(&mut self, re: f64, im: f64) {
        self.buf.push(b'y');
        self.buf.extend_from_slice(&re.to_le_bytes());
        self.buf.extend_from_slice(&im.to_le_bytes());
    }

    /// A string; each distinct text is written once and referenced after.
    pub fn str(&mut self, s: &str) {
        if let Some(&i) = self.strings.get(s) {
            self.buf.push(b'r');
            self.buf.extend_from_slice(&i.to_le_bytes());
            return;
        }
        let slot = if s.is_ascii() {
            if s.len() < 256 {
                let slot = self.code(b'z', true);
                self.buf.push(s.len() as u8);
                slot
            } else {
                let slot = self.code(b'a', true);
                self.len32(s.len());
                slot
            }
        } else {
            let slot = self.code(b'u', true);
            self.len32(s.len());
            slot
        };
        self.buf.extend_from_slice(s.as_bytes());
        if let Some(RefSlot(i)) = slot {
            self.strings.insert(Arc::from(s), i);
        }
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.push(b's');
        self.len32(b.len());
        self.buf.extend_from_slice(b);
    }

    /// Starts a tuple of `n` items; with `shared`, returns the slot that
    /// [`Writer::reference`] repeats it by.
    pub fn tuple(&mut self, n: usize, shared: bool) -> Option<RefSlot> {
        if n < 256 {
            let slot = self.code(b')', shared);
            self.buf.push(n as u8);
            slot
        } else {
            let slot = self.code(b'(', shared);
            self.len32(n);
            slot
        }
    }

    pub fn list(&mut self, n: usize) {
        self.buf.push(b'[');
        self.len32(n);
    }

    pub fn set(&mut self, n: usize, frozen: bool) {
        self.buf.push(if frozen { b'>' } else { b'<' });
        self.len32(n);
    }

    /// Starts a dict: write key, value, key, value, … then [`Writer::dict_end`].
    pub fn dict(&mut self) {
        self.buf.push(b'{');
    }

    pub fn dict_end(&mut self) {
        self.buf.push(b'0');
    }

    /// Repeats an object written earlier with a slot.
    pub fn reference(&mut self, slot: RefSlot) {
        self.buf.push(b'r');
        self.buf.extend_from_slice(&slot.0.to_le_bytes());
    }

    /// Writes a whole [`Value`].
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::None => self.none(),
            Value::StopIteration => self.buf.push(b'S'),
            Value::Ellipsis => self.buf.push(b'.'),
            Value::Bool(b) => self.bool(*b),
            Value::Int(i) => self.int(*i as i128),
            Value::BigInt { negative, digits } => {
                let mut d: &[u16] = digits;
                while let Some((0, rest)) = d.split_last() {
                    d = rest;
                }
                self.long_digits(*negative && !d.is_empty(), d);
            }
            Value::Float(f) => self.float(*f),
            Value::Complex(re, im) => self.complex(*re, *im),
            Value::Str(s) => self.str(s),
            Value::Bytes(b) => self.bytes(b),
            Value::Tuple(items) => {
                self.tuple(items.len(), false);
                items.iter().for_each(|i| self.value(i));
            }
            Value::List(items) => {
                self.list(items.len());
                items.iter().for_each(|i| self.value(i));
            }
            Value::Set(items) | Value::FrozenSet(items) => {
                self.set(items.len(), matches!(v, Value::FrozenSet(_)));
                items.iter().for_each(|i| self.value(i));
            }
            Value::Dict(entries) => {
                self.dict();
                for (k, v) in entries {
                    self.value(k);
                    self.value(v);
                }
                self.dict_end();
            }
        }
    }
}

/// Marshal bytes for one value.
pub fn write(value: &Value) -> Vec<u8> {
    let mut w = Writer::new();
    w.value(value);
    w.finish()
}
