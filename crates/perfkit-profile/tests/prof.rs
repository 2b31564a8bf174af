//! The .prof file: round trips, the trailer, damaged and foreign input, and
//! `load`'s format detection.

mod common;

use std::path::Path;

use perfkit_profile::prof::{self, END_MAGIC, START_MAGIC, TRAILER_VERSION};
use perfkit_profile::{load, marshal, CallTree, Error, FuncKey, Node, ThreadTree};
use proptest::prelude::*;

/// A fresh directory for one test, removed when dropped.
fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("perfkit-profile-test-{name}-"))
        .tempdir()
        .unwrap()
}

/// Where the marshalled dict ends in a perfkit file.
fn dict_len(bytes: &[u8]) -> usize {
    marshal::read(bytes).unwrap().1
}

#[test]
fn round_trip_is_exact() {
    let tree = common::rich_tree();
    let bytes = prof::to_bytes(&tree);
    let profile = prof::from_bytes(&bytes).unwrap();
    assert_eq!(profile.tree, tree);
    assert_eq!(profile.stats, tree.to_stats());
    assert!(profile.tree.meta.exact);
}

#[test]
fn fixture_written_by_an_earlier_version_still_reads() {
    let profile = prof::read_file(&common::fixture("perfkit_tree.prof")).unwrap();
    assert_eq!(profile.tree, common::rich_tree());
}

#[test]
fn trailer_layout() {
    let tree = common::rich_tree();
    let bytes = prof::to_bytes(&tree);
    let n = dict_len(&bytes);
    let trailer = &bytes[n..];
    assert_eq!(&trailer[..8], &START_MAGIC);
    assert_eq!(
        u32::from_le_bytes(trailer[8..12].try_into().unwrap()),
        TRAILER_VERSION
    );
    let len = u64::from_le_bytes(trailer[12..20].try_into().unwrap()) as usize;
    assert_eq!(trailer.len(), 8 + 4 + 8 + len + 4 + 8);
    let crc = u32::from_le_bytes(trailer[20 + len..24 + len].try_into().unwrap());
    assert_eq!(crc, crc32fast::hash(&trailer[8..20 + len]));
    assert_eq!(&trailer[trailer.len() - 8..], &END_MAGIC);
    // The payload is the postcard encoding of the tree.
    assert_eq!(
        postcard::from_bytes::<CallTree>(&trailer[20..20 + len]).unwrap(),
        tree
    );
}

#[test]
fn the_dict_is_what_dump_stats_writes() {
    // {(file, line, name): (cc, nc, tt, ct, {caller: (nc, cc, tt, ct)})}
    let tree = common::rich_tree();
    let bytes = prof::to_bytes(&tree);
    let (value, _) = marshal::read(&bytes).unwrap();
    let marshal::Value::Dict(items) = value else {
        panic!()
    };
    let stats = tree.to_stats();
    assert_eq!(items.len(), stats.entries.len());
    for ((k, v), e) in items.iter().zip(&stats.entries) {
        assert_eq!(
            k,
            &marshal::Value::Tuple(vec![
                marshal::Value::str(&e.func.file),
                marshal::Value::Int(e.func.line as i64),
                marshal::Value::str(&e.func.name)
            ])
        );
        let marshal::Value::Tuple(t) = v else {
            panic!()
        };
        assert_eq!(t[0].as_i128(), Some(e.cc as i128));
        assert_eq!(t[1].as_i128(), Some(e.nc as i128));
        assert_eq!(t[2], marshal::Value::Float(e.tt));
        assert_eq!(t[3], marshal::Value::Float(e.ct));
        let marshal::Value::Dict(callers) = &t[4] else {
            panic!()
        };
        for ((ck, cv), (key, edge)) in callers.iter().zip(&e.callers) {
            let marshal::Value::Tuple(kt) = ck else {
                panic!()
            };
            assert_eq!(kt[2], marshal::Value::str(&key.name));
            let marshal::Value::Tuple(c) = cv else {
                panic!()
            };
            // nc first in caller values.
            assert_eq!(
                (c[0].as_i128(), c[1].as_i128()),
                (Some(edge.nc as i128), Some(edge.cc as i128))
            );
            assert_eq!(
                (&c[2], &c[3]),
                (
                    &marshal::Value::Float(edge.tt),
                    &marshal::Value::Float(edge.ct)
                )
            );
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = prof::to_bytes(&common::rich_tree());
    let dict_end = dict_len(&bytes);
    for cut in 0..bytes.len() {
        match prof::from_bytes(&bytes[..cut]) {
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "{msg}");
                if cut > 0 && cut != dict_end {
                    assert!(msg.starts_with("truncated profile:"), "cut at {cut}: {msg}");
                }
            }
            // Cut exactly after the dict, what is left is a valid cProfile file.
            Ok(p) => {
                assert_eq!(cut, dict_end);
                assert!(!p.tree.meta.exact);
            }
        }
    }
}

#[test]
fn a_damaged_trailer_is_an_error_not_a_fallback() {
    let bytes = prof::to_bytes(&common::rich_tree());
    let n = dict_len(&bytes);
    // A flipped bit in the payload: the checksum catches it.
    let mut b = bytes.clone();
    b[n + 30] ^= 0x10;
    let msg = prof::from_bytes(&b).unwrap_err().to_string();
    assert!(
        msg.starts_with("damaged profile:") && msg.contains("checksum"),
        "{msg}"
    );
    // ... and says where the data still is (pstats reads the dict before it).
    assert!(msg.ends_with("the pstats table before it is intact (pstats.Stats reads it)"));
    // A wrong end marker.
    let mut b = bytes.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    let msg = prof::from_bytes(&b).unwrap_err().to_string();
    assert!(
        msg.starts_with("damaged profile:") && msg.contains("end marker"),
        "{msg}"
    );
    // Extra bytes after the trailer.
    let mut b = bytes.clone();
    b.push(0);
    assert!(prof::from_bytes(&b)
        .unwrap_err()
        .to_string()
        .starts_with("damaged profile:"));
    // Garbage instead of a trailer.
    let mut b = bytes[..n].to_vec();
    b.extend_from_slice(b"garbage!garbage!");
    let msg = prof::from_bytes(&b).unwrap_err().to_string();
    assert!(
        msg.starts_with("damaged profile:") && msg.contains("not a perfkit trailer"),
        "{msg}"
    );
    // A newer trailer version.
    let mut b = bytes.clone();
    b[n + 8] = 99;
    let msg = prof::from_bytes(&b).unwrap_err().to_string();
    assert!(
        msg.starts_with("unsupported profile:") && msg.contains("version 99"),
        "{msg}"
    );
}

#[test]
fn a_valid_checksum_over_an_invalid_tree_is_rejected() {
    let mut tree = common::rich_tree();
    tree.threads[0].nodes[3].parent = 50;
    let bytes = prof::to_bytes(&tree);
    let msg = prof::from_bytes(&bytes).unwrap_err().to_string();
    assert!(
        msg.starts_with("damaged profile:") && msg.contains("inconsistent"),
        "{msg}"
    );
}

#[test]
fn foreign_files_get_an_inferred_tree() {
    for file in ["recursive_py311.prof", "recursive_py313.prof"] {
        let bytes = std::fs::read(common::fixture(file)).unwrap();
        let p = prof::from_bytes(&bytes).unwrap();
        assert!(!p.tree.meta.exact);
        assert_eq!(p.stats.entries.len(), 9);
        // The real dict order is kept.
        let fib = p
            .stats
            .get(&FuncKey::new("recursive.py", 2, "fib"))
            .unwrap();
        assert_eq!((fib.cc, fib.nc), (1, 67));
        // Re-written with perfkit, the table stays and the tree is added.
        let again = prof::from_bytes(&prof::profile_to_bytes(&p)).unwrap();
        assert_eq!(again, p);
        let tmp = temp_dir(&format!("rewrite-{file}"));
        let dir = tmp.path();
        prof::write_profile(&dir.join("x.prof"), &p).unwrap();
        assert_eq!(prof::read_file(&dir.join("x.prof")).unwrap(), p);
    }
}

#[test]
fn wrong_shapes_are_named() {
    let cases: Vec<(marshal::Value, &str)> = vec![
        (
            marshal::Value::List(vec![]),
            "found marshal data holding a list",
        ),
        (
            marshal::Value::Dict(vec![(marshal::Value::Int(1), marshal::Value::None)]),
            "key 0 is the int 1",
        ),
        (
            marshal::Value::Dict(vec![(
                marshal::Value::Tuple(vec![
                    marshal::Value::str("f"),
                    marshal::Value::Int(1),
                    marshal::Value::str("g"),
                ]),
                marshal::Value::Tuple(vec![marshal::Value::Int(1)]),
            )]),
            "f:1(g) is a tuple of 1 items, expected (cc, nc, tt, ct, callers)",
        ),
        (
            marshal::Value::Dict(vec![(
                marshal::Value::Tuple(vec![
                    marshal::Value::str("f"),
                    marshal::Value::Int(-3),
                    marshal::Value::str("g"),
                ]),
                marshal::Value::None,
            )]),
            "key 0 has the line number -3, which perfkit cannot hold",
        ),
    ];
    for (value, want) in cases {
        let bytes = marshal::write(&value);
        let msg = prof::from_bytes(&bytes).unwrap_err().to_string();
        assert!(msg.contains(want), "{msg}");
        assert!(!msg.contains('\n'));
    }
    let msg = prof::from_bytes(b"\x89PNG\r\n\x1a\n....")
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "not a profile file: expected a marshalled pstats dict, found bytes 0x89 0x50 0x4e 0x47 0x0d 0x0a 0x1a 0x0a …");
}

#[test]
fn write_file_is_atomic_and_replaces() {
    let tmp = temp_dir("atomic");
    let dir = tmp.path();
    let path = dir.join("out.prof");
    std::fs::write(&path, b"old contents").unwrap();
    let tree = common::rich_tree();
    prof::write_file(&path, &tree).unwrap();
    assert_eq!(prof::read_file(&path).unwrap().tree, tree);
    // Nothing but the target is left in the directory.
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["out.prof"]);
    // A target in a missing directory fails with a one-line error naming it.
    let msg = prof::write_file(&dir.join("missing/x.prof"), &tree)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("missing") && !msg.contains('\n'), "{msg}");
}

#[test]
fn write_file_goes_through_links_and_into_what_it_cannot_replace() {
    let tmp = temp_dir("through");
    let dir = tmp.path();
    let tree = common::rich_tree();
    // A link to a file: the file is replaced, the link stays a link.
    let target = dir.join("target.prof");
    std::fs::write(&target, b"old").unwrap();
    let link = dir.join("link.prof");
    std::os::unix::fs::symlink("target.prof", &link).unwrap();
    prof::write_file(&link, &tree).unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(prof::read_file(&target).unwrap().tree, tree);
    // A link to nowhere: the file it names is created, as open() does.
    let dangling = dir.join("dangling.prof");
    std::os::unix::fs::symlink("made.prof", &dangling).unwrap();
    prof::write_file(&dangling, &tree).unwrap();
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(prof::read_file(&dir.join("made.prof")).unwrap().tree, tree);
    // A FIFO is written into and stays a FIFO.
    let fifo = dir.join("pipe");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    prof::write_file(&fifo, &tree).unwrap();
    assert_eq!(reader.join().unwrap(), prof::to_bytes(&tree));
    use std::os::unix::fs::FileTypeExt as _;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // A directory is refused by name, as open() refuses it; a loop of links too.
    let msg = prof::write_file(dir, &tree).unwrap_err().to_string();
    assert!(msg.contains("Is a directory"), "{msg}");
    std::os::unix::fs::symlink("loop2", dir.join("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", dir.join("loop2")).unwrap();
    let msg = prof::write_file(&dir.join("loop1"), &tree)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("symbolic links"), "{msg}");
    assert!(std::fs::symlink_metadata(dir.join("loop1"))
        .unwrap()
        .file_type()
        .is_symlink());
    let names: std::collections::BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "dangling.prof",
            "link.prof",
            "loop1",
            "loop2",
            "made.prof",
            "pipe",
            "target.prof"
        ]
        .map(String::from)
        .into()
    );
}

fn load_err(path: &Path) -> String {
    let msg = load(path).unwrap_err().to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    msg
}

#[test]
fn load_errors_name_the_file() {
    let tmp = temp_dir("errors");
    let dir = tmp.path();
    let msg = load_err(&dir.join("nope.prof"));
    assert!(
        msg.starts_with("cannot read") && msg.contains("No such file"),
        "{msg}"
    );
    let msg = load_err(dir);
    assert!(msg.to_lowercase().contains("is a directory"), "{msg}");
    let empty = dir.join("empty.prof");
    std::fs::write(&empty, b"").unwrap();
    assert!(load_err(&empty).contains("empty"));
    let random = dir.join("random.bin");
    std::fs::write(&random, [0x13u8, 0x37, 0xff, 0x00, 0x42]).unwrap();
    let msg = load_err(&random);
    assert!(
        msg.contains("not a profile file") && msg.contains("0x13 0x37"),
        "{msg}"
    );
    let truncated = dir.join("cut.prof");
    let bytes = prof::to_bytes(&common::rich_tree());
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    assert!(load_err(&truncated).contains("truncated profile"));
    let text = dir.join("notes.txt");
    std::fs::write(&text, "hello world\n").unwrap();
    assert!(load_err(&text).contains("not a profile file"));
}

#[test]
fn load_sniffs_every_format() {
    let tmp = temp_dir("sniff");
    let dir = tmp.path();
    let tree = common::rich_tree();
    let prof_path = dir.join("a.prof");
    prof::write_file(&prof_path, &tree).unwrap();
    assert_eq!(load(&prof_path).unwrap().tree, tree);
    let folded = dir.join("a.txt");
    std::fs::write(&folded, perfkit_profile::collapsed::write(&tree)).unwrap();
    let p = load(&folded).unwrap();
    assert_eq!(p.tree.threads.len(), 2);
    assert_eq!(p.stats, p.tree.to_stats());
    let json = dir.join("a.json");
    std::fs::write(&json, perfkit_profile::speedscope::write(&tree)).unwrap();
    assert_eq!(load(&json).unwrap().tree.threads.len(), 2);
    let foreign = load(&common::fixture("recursive_py313.prof")).unwrap();
    assert!(!foreign.tree.meta.exact);
}

/// A chain of `depth` nested calls (f0 -> f1 -> … with 7 functions, so
/// recursion is everywhere).
fn deep_tree(depth: usize) -> CallTree {
    let funcs: Vec<FuncKey> = (0..7)
        .map(|i| FuncKey::new("deep.py", i, format!("f{i}")))
        .collect();
    let mut t = ThreadTree::new("MainThread", 1, 1);
    for i in 0..depth {
        t.nodes.push(Node {
            func: (i % 7) as u32,
            parent: i as u32,
            calls: 1,
            own_ns: 1,
            total_ns: (depth - i) as u64,
        });
    }
    CallTree {
        funcs,
        threads: vec![t],
        meta: Default::default(),
    }
}

#[test]
fn ten_thousand_deep() {
    let tree = deep_tree(10_000);
    let stats = tree.to_stats();
    // Only the first node of each function is primitive.
    assert_eq!(stats.total_calls(), 10_000);
    assert_eq!(stats.primitive_calls(), 7);
    let back = prof::from_bytes(&prof::to_bytes(&tree)).unwrap();
    assert_eq!(back.tree, tree);
    assert_eq!(back.stats, stats);
    let merged = tree.merged();
    assert_eq!(merged, tree);
}

#[test]
fn a_million_nodes() {
    // A wide and moderately deep tree: node i hangs below node i / 3.
    let funcs: Vec<FuncKey> = (0..1000)
        .map(|i| FuncKey::new("big.py", i, format!("f{i}")))
        .collect();
    let mut t = ThreadTree::new("MainThread", 1, 1);
    for i in 1..1_000_000u32 {
        t.nodes.push(Node {
            func: (i as u64 * 7919 % 1000) as u32,
            parent: i / 3,
            calls: 1 + (i as u64 % 5),
            own_ns: 1000,
            total_ns: 2000,
        });
    }
    let tree = CallTree {
        funcs,
        threads: vec![t],
        meta: Default::default(),
    };
    let stats = tree.to_stats();
    assert_eq!(stats.entries.len(), 1000);
    assert_eq!(
        stats.total_calls(),
        tree.threads[0]
            .nodes
            .iter()
            .skip(1)
            .map(|n| n.calls as u128)
            .sum::<u128>()
    );
    let bytes = prof::to_bytes(&tree);
    let back = prof::from_bytes(&bytes).unwrap();
    assert_eq!(back.tree, tree);
    assert_eq!(back.stats, stats);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = prof::from_bytes(&bytes);
        let _ = perfkit_profile::from_any_bytes(&bytes);
    }

    #[test]
    fn mutated_files_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6), foreign in any::<bool>()) {
        let base = if foreign {
            std::fs::read(common::fixture("recursive_py311.prof")).unwrap()
        } else {
            prof::to_bytes(&common::rich_tree())
        };
        let mut bytes = base;
        for (pos, kind, byte) in edits {
            if bytes.is_empty() { break; }
            let at = pos % bytes.len();
            match kind % 4 {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 => { bytes.remove(at); }
                _ => bytes[at] ^= 1 << (byte % 8),
            }
        }
        let start = std::time::Instant::now();
        if let Err(e) = prof::from_bytes(&bytes) {
            let msg = e.to_string();
            prop_assert!(!msg.contains('\n'));
            prop_assert!(matches!(e, Error::NotProfile(_) | Error::Truncated(_) | Error::Damaged(_) | Error::Unsupported(_) | Error::TooLarge(_)));
        }
        prop_assert!(start.elapsed().as_secs() < 10);
    }
}

#[test]
fn a_damaged_name_in_an_error_stays_on_one_line() {
    // Found by mutated_files_never_panic: one inserted byte made a value the
    // wrong type, and the message quoted the function's name as read,
    // control characters (a newline among them) and all.
    let mut bytes = prof::to_bytes(&common::rich_tree());
    let at = 5480853373246735854usize % bytes.len();
    bytes.insert(at, 220);
    let msg = prof::from_bytes(&bytes).err().unwrap().to_string();
    assert!(!msg.chars().any(char::is_control), "{msg:?}");
    assert!(msg.contains("\\n"), "{msg:?}"); // the newline, escaped
    assert!(msg.chars().count() < 400, "{msg:?}");
}
