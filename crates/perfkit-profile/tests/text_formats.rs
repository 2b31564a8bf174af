//! Collapsed stacks and speedscope JSON.

mod common;

use common::Builder;
use perfkit_profile::{collapsed, speedscope, CallTree, FuncKey};
use proptest::prelude::*;

/// (path of function names, calls, own, total) for every node, sorted.
fn paths(tree: &CallTree) -> Vec<(String, Vec<String>, u64, u64, u64)> {
    let mut out = Vec::new();
    for t in &tree.threads {
        for (i, n) in t.nodes.iter().enumerate().skip(1) {
            let mut names = Vec::new();
            let mut at = i;
            while at != 0 {
                names.push(tree.funcs[t.nodes[at].func as usize].std_string());
                at = t.nodes[at].parent as usize;
            }
            names.reverse();
            out.push((t.name.clone(), names, n.calls, n.own_ns, n.total_ns));
        }
    }
    out.sort();
    out
}

fn small_tree() -> CallTree {
    let mut b = Builder::new();
    let module = b.func("/app/main.py", 1, "<module>");
    let f = b.func("/app/lib.py", 12, "compute");
    let len = b.builtin("<built-in method builtins.len>");
    let plain = b.func("", 0, "plain label");
    let t = b.thread("MainThread", 1, 1);
    let m = b.node(t, 0, module, 1, 1_400, 10_000);
    let c = b.node(t, m, f, 3, 6_000, 8_600);
    b.node(t, c, len, 5, 2_600, 2_600);
    b.node(t, c, f, 1, 0, 0);
    b.node(t, m, plain, 1, 300, 300);
    b.tree
}

#[test]
fn collapsed_writes_py_spy_frames() {
    let text = collapsed::write(&small_tree());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "<module> (/app/main.py:1) 1",
            "<module> (/app/main.py:1);compute (/app/lib.py:12) 6",
            "<module> (/app/main.py:1);compute (/app/lib.py:12);<built-in method builtins.len> 3",
            // 300 ns rounds to 0 µs: left out, as is the node with no own time.
        ]
    );
}

#[test]
fn collapsed_round_trip() {
    let tree = common::rich_tree();
    let text = collapsed::write(&tree);
    // Several threads: every line starts with the thread.
    assert!(text
        .lines()
        .all(|l| l.starts_with("thread MainThread;") || l.starts_with("thread Worker-1;")));
    let back = collapsed::read(&text).unwrap();
    back.validate().unwrap();
    assert!(back.meta.exact);
    assert_eq!(
        back.threads
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["MainThread", "Worker-1"]
    );
    // Function keys survive, built-ins included.
    for key in &back.funcs {
        assert!(tree.funcs.contains(key), "{key:?}");
    }
    assert!(back
        .funcs
        .contains(&FuncKey::builtin("<built-in method builtins.len>")));
    // Writing what was read gives the same text.
    assert_eq!(collapsed::write(&back), text);
    // Own time is in µs, calls unknown, totals rebuilt from own times.
    for t in &back.threads {
        for n in t.nodes.iter().skip(1) {
            assert_eq!(n.calls, 0);
            assert_eq!(n.own_ns % 1000, 0);
            assert!(n.total_ns >= n.own_ns);
        }
    }
}

#[test]
fn collapsed_reads_py_spy_output() {
    let text = "\
thread (0x7F12AB): MainThread;<module> (prog.py:3);work (prog.py:10) 7
thread (0x7F12AB): MainThread;<module> (prog.py:3) 2
thread (0x7F12AC): Worker;run (threading.py:990);busy (prog.py) 5
";
    let tree = collapsed::read(text).unwrap();
    assert_eq!(tree.threads.len(), 2);
    assert_eq!(tree.threads[0].name, "MainThread");
    assert_eq!(tree.threads[0].thread_id, 0x7F12AB);
    assert_eq!(tree.threads[1].name, "Worker");
    assert!(tree.funcs.contains(&FuncKey::new("prog.py", 10, "work")));
    // Without a line number (py-spy --nolineno), the line is 0.
    assert!(tree.funcs.contains(&FuncKey::new("prog.py", 0, "busy")));
    let module = &tree.threads[0].nodes[1];
    assert_eq!((module.own_ns, module.total_ns), (2_000, 9_000));
    // Plain flamegraph.pl lines.
    let tree = collapsed::read("main;a;b 3\nmain;a 1\r\n\nmain;c 2.6\n").unwrap();
    assert_eq!(tree.threads.len(), 1);
    assert_eq!(tree.funcs[0], FuncKey::new("", 0, "main"));
    assert_eq!(tree.threads[0].nodes[1].total_ns, 7_000);
}

#[test]
fn collapsed_errors_name_the_line() {
    let err = collapsed::read("a;b 1\na;b\n").unwrap_err().to_string();
    assert!(err.starts_with("collapsed stacks, line 2:"), "{err}");
    let err = collapsed::read("a;b 1\n\na;b -3\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("collapsed stacks, line 3:") && err.contains("\"-3\""),
        "{err}"
    );
    assert!(collapsed::read("").is_err());
    assert!(collapsed::read(" 5").is_err());
}

#[test]
fn speedscope_round_trip() {
    let tree = common::rich_tree();
    let json = speedscope::write(&tree);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["$schema"],
        "https://www.speedscope.app/file-format-schema.json"
    );
    assert_eq!(v["profiles"][0]["type"], "evented");
    // One open and one close per node: the file grows with the tree, not
    // with nodes × depth (a sampled profile's full stack per node).
    let nodes: usize = tree.threads.iter().map(|t| t.nodes.len() - 1).sum();
    let events: usize = v["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["events"].as_array().unwrap().len())
        .sum();
    assert_eq!(events, 2 * nodes);
    // Read back, a node's calls are unknown (0), not the one open per node.
    let back_calls: u64 = speedscope::read(&json)
        .unwrap()
        .threads
        .iter()
        .flat_map(|t| t.nodes.iter().map(|n| n.calls))
        .sum();
    assert_eq!(back_calls, 0);
    assert_eq!(v["profiles"][0]["unit"], "nanoseconds");
    assert_eq!(v["profiles"][1]["name"], "Worker-1");
    // Built-ins carry only a name.
    let frames = v["shared"]["frames"].as_array().unwrap();
    let len = frames
        .iter()
        .find(|f| f["name"] == "<built-in method builtins.len>")
        .unwrap();
    assert!(len.get("file").is_none());
    let back = speedscope::read(&json).unwrap();
    back.validate().unwrap();
    // Every node with own time comes back with it; totals are rebuilt.
    let want: Vec<_> = paths(&tree)
        .into_iter()
        .filter(|p| p.3 > 0)
        .map(|(t, p, _, own, _)| (t, p, own))
        .collect();
    let got: Vec<_> = paths(&back)
        .into_iter()
        .filter(|p| p.3 > 0)
        .map(|(t, p, _, own, _)| (t, p, own))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn speedscope_reads_pyinstrument_evented() {
    // Shaped like pyinstrument's speedscope renderer output (unit seconds).
    let json = r#"{"$schema": "https://www.speedscope.app/file-format-schema.json", "name": "CPU profile",
      "activeProfileIndex": null, "exporter": "pyinstrument",
      "profiles": [{"type": "evented", "name": "CPU profile", "unit": "seconds", "startValue": 0.0, "endValue": 0.5,
        "events": [
          {"type": "O", "at": 0.0, "frame": 0},
          {"type": "O", "at": 0.1, "frame": 1},
          {"type": "C", "at": 0.3, "frame": 1},
          {"type": "O", "at": 0.3, "frame": 1},
          {"type": "C", "at": 0.35, "frame": 1},
          {"type": "O", "at": 0.4, "frame": 2}
        ]}],
      "shared": {"frames": [
        {"name": "<module>", "file": "prog.py", "line": 1},
        {"name": "work", "file": "prog.py", "line": 5},
        {"name": "<built-in method time.sleep>", "file": null, "line": null}
      ]}}"#;
    let tree = speedscope::read(json).unwrap();
    tree.validate().unwrap();
    assert_eq!(tree.meta.recorder, "pyinstrument");
    let t = &tree.threads[0];
    // <module>: one call of 0.5 s (closed at endValue), children 0.25 s + 0.1 s.
    assert_eq!(
        (t.nodes[1].calls, t.nodes[1].total_ns, t.nodes[1].own_ns),
        (1, 500_000_000, 150_000_000)
    );
    // work: two calls, 0.2 s + 0.05 s.
    assert_eq!((t.nodes[2].calls, t.nodes[2].total_ns), (2, 250_000_000));
    assert_eq!(
        tree.funcs[2],
        FuncKey::builtin("<built-in method time.sleep>")
    );
    let stats = tree.to_stats();
    assert_eq!(stats.total_calls(), 4);
}

#[test]
fn speedscope_reads_py_spy_sampled() {
    let json = r#"{"$schema":"https://www.speedscope.app/file-format-schema.json","profiles":[{"type":"sampled","name":"Thread 1 \"MainThread\"","unit":"seconds","startValue":0.0,"endValue":0.03,"samples":[[0,1],[0,1],[0]],"weights":[0.01,0.01,0.01]}],"shared":{"frames":[{"name":"<module>","file":"x.py","line":1,"col":null},{"name":"f","file":"x.py","line":4,"col":null}]},"activeProfileIndex":null,"exporter":"py-spy@0.4.0","name":"py-spy profile"}"#;
    let tree = speedscope::read(json).unwrap();
    let t = &tree.threads[0];
    assert_eq!(t.name, "Thread 1 \"MainThread\"");
    assert_eq!(
        (t.nodes[1].own_ns, t.nodes[1].total_ns),
        (10_000_000, 30_000_000)
    );
    assert_eq!(t.nodes[2].own_ns, 20_000_000);
}

#[test]
fn writers_survive_malformed_trees() {
    let mut tree = small_tree();
    tree.threads[0].nodes[2].func = 99;
    tree.threads[0].nodes.push(perfkit_profile::Node {
        func: 0,
        parent: 50,
        calls: 1,
        own_ns: 5_000,
        total_ns: 5_000,
    });
    let text = collapsed::write(&tree);
    // The subtree under the unknown function is left out, the rest stays.
    assert_eq!(text.lines().count(), 1, "{text}");
    let back = speedscope::read(&speedscope::write(&tree)).unwrap();
    assert_eq!(
        back.threads[0].nodes.len(),
        3,
        "root, <module> and the plain label"
    );
}

#[test]
fn speedscope_errors_are_one_line() {
    for (json, want) in [
        ("{", "invalid speedscope JSON"),
        (r#"{"profiles": []}"#, "no profiles"),
        (
            r#"{"profiles": [{"type": "sampled", "samples": [[3]], "weights": [1]}]}"#,
            "frame 3",
        ),
        (r#"{"profiles": [{"type": "other"}]}"#, "type \"other\""),
        (
            r#"{"shared":{"frames":[{"name":"a"},{"name":"b"}]},"profiles":[{"type":"evented","events":[{"type":"O","at":0,"frame":0},{"type":"C","at":1,"frame":1}]}]}"#,
            "innermost",
        ),
        (
            r#"{"profiles": [{"type": "sampled", "samples": [[]], "weights": [1, 2]}]}"#,
            "1 samples but 2 weights",
        ),
    ] {
        let msg = speedscope::read(json).unwrap_err().to_string();
        assert!(
            msg.starts_with("speedscope profile:") && msg.contains(want) && !msg.contains('\n'),
            "{msg}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn collapsed_random_text_never_panics(text in "[a-z;:() 0-9.\n\u{e9}]{0,300}") {
        if let Ok(tree) = collapsed::read(&text) {
            tree.validate().unwrap();
        }
    }

    #[test]
    fn collapsed_mutations_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<char>()), 1..6)) {
        let mut chars: Vec<char> = collapsed::write(&common::rich_tree()).chars().collect();
        for (pos, c) in edits {
            let at = pos % chars.len().max(1);
            if pos % 2 == 0 && !chars.is_empty() { chars[at] = c } else { chars.insert(at.min(chars.len()), c) }
        }
        let text: String = chars.into_iter().collect();
        if let Ok(tree) = collapsed::read(&text) {
            tree.validate().unwrap();
        }
    }

    #[test]
    fn speedscope_mutations_never_panic(edits in proptest::collection::vec((any::<usize>(), prop_oneof![any::<char>(), Just('1'), Just('-'), Just('"'), Just(']')]), 1..6)) {
        let mut chars: Vec<char> = speedscope::write(&common::rich_tree()).chars().collect();
        for (pos, c) in edits {
            let at = pos % chars.len().max(1);
            if pos % 3 == 0 && !chars.is_empty() { chars.remove(at); } else if pos % 3 == 1 { chars[at] = c } else { chars.insert(at, c) }
        }
        let text: String = chars.into_iter().collect();
        let start = std::time::Instant::now();
        if let Ok(tree) = speedscope::read(&text) {
            tree.validate().unwrap();
        }
        prop_assert!(start.elapsed().as_secs() < 5);
    }

    #[test]
    fn speedscope_random_text_never_panics(text in "\\PC{0,200}") {
        let _ = speedscope::read(&text);
    }
}

#[test]
fn a_sample_without_frames_is_skipped_not_the_whole_file() {
    // py-spy's `record -f raw` writes ` 1` for a sample caught outside any
    // Python frame; the file was refused as "not a profile".
    let text = " 1\n<module> (spin.py:6);b (spin.py:5);a (spin.py:3) 24\n<module> (spin.py:6) 3\n";
    let profile = perfkit_profile::from_any_bytes(text.as_bytes()).unwrap();
    let a = profile
        .stats
        .entries
        .iter()
        .find(|e| e.func.name == "a")
        .unwrap();
    assert!((a.tt - 24e-6).abs() < 1e-12, "{}", a.tt);
    assert_eq!(collapsed::write(&profile.tree).lines().count(), 2);
}
