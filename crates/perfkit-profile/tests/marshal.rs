//! The marshal reader and writer.

mod common;

use std::sync::Arc;

use perfkit_profile::marshal::{self, Limits, Value, Writer};
use proptest::prelude::*;

fn s(text: &str) -> Value {
    Value::str(text)
}

fn sample() -> Value {
    Value::Dict(vec![
        (
            Value::Tuple(vec![s("a.py"), Value::Int(3), s("f")]),
            Value::Tuple(vec![
                Value::Int(1),
                Value::Int(3_000_000_000),
                Value::Float(0.125),
                Value::Float(-1.5e-9),
                Value::Dict(vec![(
                    Value::Tuple(vec![s("~"), Value::Int(0), s("<built-in method x>")]),
                    Value::Int(-7),
                )]),
            ]),
        ),
        (Value::Int(i64::MIN), Value::int(-(1i128 << 100))),
        (s("ünïcode"), s(&"long".repeat(100))),
        (
            Value::None,
            Value::List(vec![
                Value::Bool(true),
                Value::Bool(false),
                Value::Ellipsis,
                Value::StopIteration,
                Value::Bytes(Arc::from(&b"\x00\xff"[..])),
                Value::Complex(1.0, -2.0),
                Value::Set(vec![Value::Int(1)]),
                Value::FrozenSet(vec![]),
                Value::Tuple(vec![Value::Int(0); 300]),
            ]),
        ),
    ])
}

#[test]
fn writer_output_reads_back() {
    let v = sample();
    let bytes = marshal::write(&v);
    let (back, used) = marshal::read(&bytes).unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(back, v);
}

#[test]
fn trailing_bytes_are_left_alone() {
    let mut bytes = marshal::write(&Value::Int(5));
    bytes.extend_from_slice(b"anything");
    assert_eq!(marshal::read(&bytes).unwrap(), (Value::Int(5), 5));
}

#[test]
fn shared_strings_and_references() {
    let mut w = Writer::new();
    w.tuple(4, false);
    w.str("same");
    w.str("same");
    let slot = w.tuple(2, true).unwrap();
    w.int(1);
    w.str("same");
    w.reference(slot);
    let bytes = w.finish();
    // The second "same" is a 5-byte back-reference, not the text again.
    assert_eq!(bytes.windows(4).filter(|x| x == b"same").count(), 1);
    let (v, _) = marshal::read(&bytes).unwrap();
    let pair = Value::Tuple(vec![Value::Int(1), s("same")]);
    assert_eq!(
        v,
        Value::Tuple(vec![s("same"), s("same"), pair.clone(), pair])
    );
}

#[test]
fn reads_what_cpython_wrote() {
    // marshal.dumps((1, 2**40, -3.5, 'x'*300, 'é', b'b', None, {1: [True]}, frozenset(), 1e100), 4)
    // from CPython 3.11: FLAG_REF ints and strings, 'r' back-references,
    // an interned ASCII string and a small tuple.
    let head = "290ae901000000ec03000000000000000004e70000000000000cc0c12c010000";
    let tail = "f502000000c3a9f301000000624e7b72000000005b0100000054303e00000000e77dc39425ad49b254";
    let hex = |h: &str| -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut full = hex(head);
    full.extend(std::iter::repeat_n(b'x', 300));
    full.extend(hex(tail));
    let (v, used) = marshal::read(&full).unwrap();
    assert_eq!(used, full.len());
    let Value::Tuple(items) = v else {
        panic!("{v:?}")
    };
    assert_eq!(items[0], Value::Int(1));
    assert_eq!(items[1], Value::Int(1 << 40));
    assert_eq!(items[2], Value::Float(-3.5));
    assert_eq!(items[3], s(&"x".repeat(300)));
    assert_eq!(items[4], s("é"));
    assert_eq!(items[5], Value::Bytes(Arc::from(&b"b"[..])));
    assert_eq!(items[6], Value::None);
    // 'r' 0 refers to the first flagged object, the tuple's 1.
    assert_eq!(
        items[7],
        Value::Dict(vec![(Value::Int(1), Value::List(vec![Value::Bool(true)]))])
    );
    assert_eq!(items[8], Value::FrozenSet(vec![]));
    assert_eq!(items[9], Value::Float(1e100));
}

#[test]
fn old_formats_and_long_ints() {
    // Version 0/1 style: 'f' text floats, 'I' 64-bit ints, 't' interned strings.
    let mut b = vec![b'(', 4, 0, 0, 0, b'f', 4];
    b.extend_from_slice(b"-1.5");
    b.push(b'I');
    b.extend_from_slice(&(-5_000_000_000i64).to_le_bytes());
    b.extend_from_slice(&[b't', 2, 0, 0, 0, b'h', b'i']);
    // 'l' with two 15-bit digits: 1 + 2 * 32768 = 65537, negative.
    b.extend_from_slice(&[b'l', 0xfe, 0xff, 0xff, 0xff, 1, 0, 2, 0]);
    let (v, _) = marshal::read(&b).unwrap();
    assert_eq!(
        v,
        Value::Tuple(vec![
            Value::Float(-1.5),
            Value::Int(-5_000_000_000),
            s("hi"),
            Value::Int(-65537)
        ])
    );
    // An unnormalized long is refused, as CPython does.
    assert!(marshal::read(&[b'l', 1, 0, 0, 0, 0, 0])
        .unwrap_err()
        .to_string()
        .contains("unnormalized"));
    // Big ints beyond i64 survive a round trip.
    let big = Value::int(1i128 << 90);
    assert_eq!(big.as_i128(), Some(1i128 << 90));
    assert_eq!(marshal::read(&marshal::write(&big)).unwrap().0, big);
}

#[test]
fn errors_say_what_is_wrong() {
    let err = marshal::read(&[b'u', 10, 0, 0, 0, b'a']).unwrap_err();
    assert!(
        matches!(
            err,
            marshal::Error::Truncated {
                inside: "a string",
                ..
            }
        ),
        "{err}"
    );
    let err = marshal::read(&[0x01]).unwrap_err().to_string();
    assert!(err.contains("unknown type code 0x01"), "{err}");
    let err = marshal::read(&[b'r', 0, 0, 0, 0]).unwrap_err().to_string();
    assert!(err.contains("reference 0"), "{err}");
    let err = marshal::read(b"c").unwrap_err().to_string();
    assert!(err.contains("inside a code object"), "{err}");
    let err = marshal::read(b":").unwrap_err().to_string();
    assert!(err.contains("slice objects"), "{err}");
    // A container that refers to itself.
    let err = marshal::read(&[b'[' | 0x80, 1, 0, 0, 0, b'r', 0, 0, 0, 0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("contains it"), "{err}");
    assert!(matches!(
        marshal::read(&[]).unwrap_err(),
        marshal::Error::Truncated { .. }
    ));
}

#[test]
fn lengths_never_outrun_the_input() {
    // A list claiming 2**31-1 items in 5 bytes: refused before allocating.
    let err = marshal::read(&[b'[', 0xff, 0xff, 0xff, 0x7f]).unwrap_err();
    assert!(matches!(err, marshal::Error::Truncated { .. }));
    let err = marshal::read(&[b'u', 0xff, 0xff, 0xff, 0x7f]).unwrap_err();
    assert!(matches!(err, marshal::Error::Truncated { .. }));
    let err = marshal::read(&[b'l', 0xff, 0xff, 0xff, 0x7f]).unwrap_err();
    assert!(matches!(err, marshal::Error::Truncated { .. }));
}

#[test]
fn depth_is_limited() {
    let mut deep = [b')', 1].repeat(100);
    deep.push(b'N');
    let err = marshal::read(&deep).unwrap_err();
    assert!(matches!(err, marshal::Error::Limit { .. }), "{err}");
    let mut ok = [b')', 1].repeat(60);
    ok.push(b'N');
    assert!(marshal::read(&ok).is_ok());
}

#[test]
fn reference_bombs_are_limited() {
    // Each level is a 2-tuple of back-references to the previous level:
    // 40 levels would expand to 2**40 objects.
    let mut b = vec![b'(', 41, 0, 0, 0, b')' | 0x80, 0];
    for level in 0..40u32 {
        b.extend_from_slice(&[b')' | 0x80, 2, b'r']);
        b.extend_from_slice(&level.to_le_bytes());
        b.push(b'r');
        b.extend_from_slice(&level.to_le_bytes());
    }
    let start = std::time::Instant::now();
    let err = marshal::read(&b).unwrap_err();
    assert!(matches!(err, marshal::Error::Limit { .. }), "{err}");
    assert!(start.elapsed().as_secs() < 5);
    // With a generous explicit limit a few levels are fine.
    let small = &b[..5 + 2 + 3 * 12];
    let mut small = small.to_vec();
    small[1] = 4;
    let (v, _) = marshal::read_with_limits(
        &small,
        Limits {
            max_depth: 64,
            max_objects: 1000,
        },
    )
    .unwrap();
    let Value::Tuple(levels) = v else { panic!() };
    assert_eq!(levels.len(), 4);
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(pos, kind, byte) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let at = pos % bytes.len();
        match kind % 4 {
            0 => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            2 => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let start = std::time::Instant::now();
        let _ = marshal::read(&bytes);
        prop_assert!(start.elapsed().as_secs() < 5);
    }

    #[test]
    fn marshal_shaped_bytes_never_panic(
        bytes in proptest::collection::vec(
            prop_oneof![
                Just(b'(' ), Just(b')'), Just(b'{'), Just(b'0'), Just(b'r'), Just(b'i'), Just(b'l'), Just(b'u'),
                Just(b'z'), Just(b'g'), Just(b'N'), Just(0x80u8 | b')'), Just(0u8), Just(1u8), Just(2u8), any::<u8>()
            ],
            0..256,
        )
    ) {
        let _ = marshal::read(&bytes);
    }

    #[test]
    fn mutated_valid_data_never_panics(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let bytes = mutate(marshal::write(&sample()), &edits);
        let start = std::time::Instant::now();
        let _ = marshal::read(&bytes);
        prop_assert!(start.elapsed().as_secs() < 5);
    }

    #[test]
    fn ints_and_floats_round_trip(i in any::<i64>(), u in any::<u64>(), f in any::<f64>()) {
        let v = Value::Tuple(vec![Value::Int(i), Value::int(u as i128), Value::Float(f)]);
        let (back, _) = marshal::read(&marshal::write(&v)).unwrap();
        let Value::Tuple(items) = back else { panic!() };
        prop_assert_eq!(&items[0], &Value::Int(i));
        prop_assert_eq!(items[1].as_i128(), Some(u as i128));
        let Value::Float(g) = items[2] else { panic!() };
        prop_assert_eq!(g.to_bits(), f.to_bits());
    }
}

/// A code object nested `depth` deep in its constants, in the layout of
/// 3.11+ (`modern`) or of 3.8–3.10, as `marshal.dumps` writes them.
fn code_object(depth: usize, modern: bool) -> Vec<u8> {
    fn bytes_obj(b: &mut Vec<u8>, data: &[u8]) {
        b.push(b's');
        b.extend((data.len() as i32).to_le_bytes());
        b.extend(data);
    }
    fn str_obj(b: &mut Vec<u8>, s: &str) {
        b.push(b'z');
        b.push(s.len() as u8);
        b.extend(s.as_bytes());
    }
    fn empty_tuple(b: &mut Vec<u8>) {
        b.extend([b')', 0]);
    }
    let mut b = vec![b'c'];
    for _ in 0..(if modern { 5 } else { 6 }) {
        b.extend(0i32.to_le_bytes());
    }
    bytes_obj(&mut b, b"\x97\x00");
    b.extend([b')', 1]);
    if depth > 0 {
        b.extend(code_object(depth - 1, modern));
    } else {
        b.push(b'N');
    }
    empty_tuple(&mut b); // names
    empty_tuple(&mut b); // localsplusnames / varnames
    if modern {
        bytes_obj(&mut b, b""); // localspluskinds
    } else {
        empty_tuple(&mut b); // freevars
        empty_tuple(&mut b); // cellvars
    }
    str_obj(&mut b, "f.py");
    str_obj(&mut b, &format!("f{depth}"));
    if modern {
        str_obj(&mut b, "qualname");
    }
    b.extend(7i32.to_le_bytes()); // firstlineno
    bytes_obj(&mut b, b""); // linetable (lnotab)
    if modern {
        bytes_obj(&mut b, b""); // exceptiontable
    }
    b
}

#[test]
fn code_objects_are_read_as_their_label_in_either_layout_once_each() {
    for modern in [true, false] {
        // Deep enough that reading each nested one in both layouts (as the
        // first version did for older files) would never end.
        let (value, read) = marshal::read(&code_object(30, modern)).unwrap();
        assert_eq!(
            value,
            marshal::Value::Str("<code object f30, file \"f.py\", line 7>".into()),
            "modern={modern}"
        );
        assert_eq!(read, code_object(30, modern).len());
    }
}

#[test]
fn a_code_object_read_in_neither_layout_fails_without_trying_both_at_every_level() {
    // helper-48: each nested code object was read in the newer layout, then
    // the older, with the object budget reset between: 2^depth steps.
    // "z\x02ab" is a string to one layout and part of an int to the other.
    fn blob(depth: usize) -> Vec<u8> {
        let mut b = vec![b'c'];
        b.extend([0u8; 20]);
        if depth == 0 {
            b.push(0xff); // (neither layout's)
        } else {
            b.extend(b"z\x02ab");
            b.extend(blob(depth - 1));
        }
        b
    }
    let mut data = vec![b'{'];
    data.extend(blob(40));
    data.extend(b"N0");
    assert!(marshal::read(&data).is_err());
}
