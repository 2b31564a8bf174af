//! `CallTree::to_stats` against counts worked out by hand and against real
//! cProfile output; `infer_tree` and `merged`.

mod common;

use common::Builder;
use perfkit_profile::{prof, CallTree, EdgeStats, FuncKey, FuncStats, Node, StatsTable};

fn row<'a>(stats: &'a StatsTable, name: &str) -> &'a FuncStats {
    stats
        .entries
        .iter()
        .find(|e| e.func.name == name)
        .unwrap_or_else(|| panic!("no row for {name}"))
}

fn edge(stats: &StatsTable, caller: &str, callee: &str) -> EdgeStats {
    row(stats, callee)
        .callers
        .iter()
        .find(|(k, _)| k.name == caller)
        .unwrap_or_else(|| panic!("no edge {caller} -> {callee}"))
        .1
}

/// Counts and times in ns, for exact comparison.
fn counts(e: &FuncStats) -> (u64, u64, u64, u64) {
    (
        e.cc,
        e.nc,
        (e.tt * 1e9).round() as u64,
        (e.ct * 1e9).round() as u64,
    )
}

fn edge_counts(e: EdgeStats) -> (u64, u64, u64, u64) {
    (
        e.nc,
        e.cc,
        (e.tt * 1e9).round() as u64,
        (e.ct * 1e9).round() as u64,
    )
}

#[test]
fn direct_recursion() {
    // main -> f(1 call) -> f(2 calls) -> f(4 calls)
    let mut b = Builder::new();
    let (main, f) = (b.func("m.py", 1, "main"), b.func("m.py", 5, "f"));
    let t = b.thread("MainThread", 1, 1);
    let m = b.node(t, 0, main, 1, 10, 100);
    let f1 = b.node(t, m, f, 1, 20, 90);
    let f2 = b.node(t, f1, f, 2, 30, 70);
    b.node(t, f2, f, 4, 40, 40);
    let s = b.tree.to_stats();

    // Rows in preorder of first appearance.
    assert_eq!(
        s.entries
            .iter()
            .map(|e| e.func.name.as_str())
            .collect::<Vec<_>>(),
        ["main", "f"]
    );
    // f: 7 calls, only the outermost is primitive and adds cumulative time.
    assert_eq!(counts(row(&s, "f")), (1, 7, 90, 90));
    assert_eq!(counts(row(&s, "main")), (1, 1, 10, 100));
    assert!(
        row(&s, "main").callers.is_empty(),
        "children of the root have no caller"
    );
    // main->f: one call, not recursive.
    assert_eq!(edge_counts(edge(&s, "main", "f")), (1, 1, 20, 90));
    // f->f: f2 is the first f->f on its path (its parent's edge is main->f),
    // so its 2 calls are primitive for the pair with 70 ns; f3 sits under
    // f2's f->f, so its 4 calls only add nc and tt.
    assert_eq!(edge_counts(edge(&s, "f", "f")), (6, 2, 70, 70));
    assert_eq!(row(&s, "f").tt, 90e-9);
}

#[test]
fn mutual_recursion() {
    // a -> b -> a -> b, as ping/pong in recursive.py
    let mut b = Builder::new();
    let (fa, fb) = (b.func("m.py", 1, "a"), b.func("m.py", 2, "b"));
    let t = b.thread("MainThread", 1, 1);
    let a1 = b.node(t, 0, fa, 1, 5, 100);
    let b1 = b.node(t, a1, fb, 1, 10, 95);
    let a2 = b.node(t, b1, fa, 1, 20, 85);
    b.node(t, a2, fb, 1, 65, 65);
    let s = b.tree.to_stats();
    // Each function runs twice, the inner run recursive.
    assert_eq!(counts(row(&s, "a")), (1, 2, 25, 100));
    assert_eq!(counts(row(&s, "b")), (1, 2, 75, 95));
    // a->b happens twice; the second is under the first.
    assert_eq!(edge_counts(edge(&s, "a", "b")), (2, 1, 75, 95));
    // b->a happens once (a1 has no caller).
    assert_eq!(edge_counts(edge(&s, "b", "a")), (1, 1, 20, 85));
    assert_eq!(row(&s, "a").callers.len(), 1);
}

#[test]
fn same_edge_at_several_depths() {
    let mut b = Builder::new();
    let main = b.func("m.py", 1, "main");
    let (x, y, g) = (
        b.func("m.py", 2, "x"),
        b.func("m.py", 3, "y"),
        b.func("m.py", 4, "g"),
    );
    let t = b.thread("MainThread", 1, 1);
    let m = b.node(t, 0, main, 1, 1, 200);
    // main -> x -> g and main -> y -> x -> g: side by side, never nested.
    let x1 = b.node(t, m, x, 2, 5, 30);
    b.node(t, x1, g, 4, 25, 25);
    let y1 = b.node(t, m, y, 1, 3, 69);
    let x2 = b.node(t, y1, x, 3, 6, 66);
    b.node(t, x2, g, 5, 60, 60);
    let s = b.tree.to_stats();
    assert_eq!(counts(row(&s, "g")), (9, 9, 85, 85));
    assert_eq!(counts(row(&s, "x")), (5, 5, 11, 96));
    assert_eq!(edge_counts(edge(&s, "x", "g")), (9, 9, 85, 85));
    assert_eq!(edge_counts(edge(&s, "main", "x")), (2, 2, 5, 30));
    assert_eq!(edge_counts(edge(&s, "y", "x")), (3, 3, 6, 66));
    // Callers in order of first appearance.
    let callers: Vec<&str> = row(&s, "x")
        .callers
        .iter()
        .map(|(k, _)| k.name.as_str())
        .collect();
    assert_eq!(callers, ["main", "y"]);

    // Now nested: main -> x -> g -> x -> g.
    let mut b = Builder::new();
    let main = b.func("m.py", 1, "main");
    let (x, g) = (b.func("m.py", 2, "x"), b.func("m.py", 4, "g"));
    let t = b.thread("MainThread", 1, 1);
    let m = b.node(t, 0, main, 1, 0, 50);
    let x1 = b.node(t, m, x, 1, 5, 50);
    let g1 = b.node(t, x1, g, 1, 5, 45);
    let x2 = b.node(t, g1, x, 1, 10, 40);
    b.node(t, x2, g, 1, 30, 30);
    let s = b.tree.to_stats();
    assert_eq!(counts(row(&s, "x")), (1, 2, 15, 50));
    assert_eq!(counts(row(&s, "g")), (1, 2, 35, 45));
    // The inner x->g runs inside the outer x->g: recursive for the pair.
    assert_eq!(edge_counts(edge(&s, "x", "g")), (2, 1, 35, 45));
    assert_eq!(edge_counts(edge(&s, "g", "x")), (1, 1, 10, 40));
    assert_eq!(edge_counts(edge(&s, "main", "x")), (1, 1, 5, 50));
}

#[test]
fn threads_add_up_and_duplicate_keys_fold() {
    let mut b = Builder::new();
    let f = b.func("m.py", 1, "f");
    let g = b.func("m.py", 2, "g");
    // The same function interned twice by a recorder.
    let f_again = b.func("m.py", 1, "f");
    let t1 = b.thread("MainThread", 1, 1);
    let n = b.node(t1, 0, f, 2, 10, 30);
    b.node(t1, n, g, 3, 20, 20);
    let t2 = b.thread("Worker", 2, 1);
    let n = b.node(t2, 0, f_again, 1, 5, 9);
    b.node(t2, n, g, 1, 4, 4);
    let s = b.tree.to_stats();
    assert_eq!(s.entries.len(), 2);
    assert_eq!(counts(row(&s, "f")), (3, 3, 15, 39));
    assert_eq!(counts(row(&s, "g")), (4, 4, 24, 24));
    assert_eq!(edge_counts(edge(&s, "f", "g")), (4, 4, 24, 24));
    assert_eq!(row(&s, "g").callers.len(), 1);
    assert_eq!(s.total_calls(), 7);
}

#[test]
fn nodes_without_calls_still_count_as_ancestors() {
    // An unfinished outer call (0 calls) of f with a finished recursive call inside.
    let mut b = Builder::new();
    let f = b.func("m.py", 1, "f");
    let t = b.thread("MainThread", 1, 1);
    let n = b.node(t, 0, f, 0, 7, 15);
    b.node(t, n, f, 4, 8, 8);
    let s = b.tree.to_stats();
    // nc counts the 4 inner calls, none primitive; the outer node's 15 ns is
    // the only cumulative time (added because no f is above it).
    assert_eq!(counts(row(&s, "f")), (0, 4, 15, 15));
    assert_eq!(edge_counts(edge(&s, "f", "f")), (4, 4, 8, 8));
}

#[test]
fn malformed_nodes_are_skipped_not_fatal() {
    let mut b = Builder::new();
    let f = b.func("m.py", 1, "f");
    let t = b.thread("MainThread", 1, 1);
    let n = b.node(t, 0, f, 1, 1, 1);
    // Unknown function and a forward parent link.
    b.node(t, n, 99, 5, 5, 5);
    b.tree.threads[t].nodes.push(Node {
        func: f,
        parent: 10,
        calls: 9,
        own_ns: 9,
        total_ns: 9,
    });
    assert!(b.tree.validate().is_err());
    let s = b.tree.to_stats();
    assert_eq!(counts(row(&s, "f")), (1, 1, 1, 1));
    assert_eq!(s.entries.len(), 1);
    let _ = b.tree.merged();
}

/// The call structure of tests/fixtures/recursive.py, as a tree; the times
/// are made up, the counts are what the program does.
fn recursive_py_tree() -> CallTree {
    let mut b = Builder::new();
    let exec = b.builtin("<built-in method builtins.exec>");
    let module = b.func("recursive.py", 1, "<module>");
    let main = b.func("recursive.py", 16, "main");
    let fib = b.func("recursive.py", 2, "fib");
    let ping = b.func("recursive.py", 6, "ping");
    let pong = b.func("recursive.py", 11, "pong");
    let sorted = b.builtin("<built-in method builtins.sorted>");
    let len = b.builtin("<built-in method builtins.len>");
    let disable = b.builtin("<method 'disable' of '_lsprof.Profiler' objects>");
    let t = b.thread("MainThread", 1, 1);
    let e = b.node(t, 0, exec, 1, 1, 1);
    let m = b.node(t, e, module, 1, 1, 1);
    let mn = b.node(t, m, main, 1, 1, 1);
    // fib(8) expands to a tree of 67 calls; every call is its own path node
    // here (the recorder would merge equal paths, which to_stats must not notice).
    let mut stack = vec![(mn, 8u32)];
    while let Some((parent, n)) = stack.pop() {
        let node = b.node(t, parent, fib, 1, 1, 1);
        if n >= 2 {
            stack.push((node, n - 1));
            stack.push((node, n - 2));
        }
    }
    let mut parent = mn;
    for (i, n) in (0..=5).rev().enumerate() {
        let _ = n;
        parent = b.node(t, parent, if i % 2 == 0 { ping } else { pong }, 1, 1, 1);
    }
    b.node(t, mn, sorted, 1, 1, 1);
    b.node(t, mn, len, 1, 1, 1);
    b.node(t, 0, disable, 1, 1, 1);
    b.tree
}

#[test]
fn counts_match_real_cprofile() {
    let ours = recursive_py_tree().to_stats();
    for file in ["recursive_py311.prof", "recursive_py313.prof"] {
        let real = prof::read_file(&common::fixture(file)).unwrap().stats;
        assert_eq!(real.entries.len(), ours.entries.len(), "{file}");
        for r in &real.entries {
            let o = ours
                .get(&r.func)
                .unwrap_or_else(|| panic!("{file}: missing {:?}", r.func));
            assert_eq!(
                (o.cc, o.nc),
                (r.cc, r.nc),
                "{file}: {}",
                r.func.std_string()
            );
            let mut rc: Vec<(FuncKey, u64, u64)> = r
                .callers
                .iter()
                .map(|(k, e)| (k.clone(), e.nc, e.cc))
                .collect();
            let mut oc: Vec<(FuncKey, u64, u64)> = o
                .callers
                .iter()
                .map(|(k, e)| (k.clone(), e.nc, e.cc))
                .collect();
            rc.sort();
            oc.sort();
            assert_eq!(oc, rc, "{file}: callers of {}", r.func.std_string());
        }
    }
    // The facts themselves, so a wrong fixture cannot hide a wrong rule.
    let fib = ours.entries.iter().find(|e| e.func.name == "fib").unwrap();
    assert_eq!((fib.cc, fib.nc), (1, 67));
    assert_eq!(edge_counts(edge(&ours, "fib", "fib")).0, 66);
    assert_eq!(edge(&ours, "fib", "fib").cc, 2);
    assert_eq!(
        (
            edge(&ours, "pong", "ping").nc,
            edge(&ours, "pong", "ping").cc
        ),
        (2, 1)
    );
}

#[test]
fn seconds_are_ns_over_1e9() {
    let mut b = Builder::new();
    let f = b.func("m.py", 1, "f");
    let t = b.thread("MainThread", 1, 1);
    b.node(t, 0, f, 1, 123_456_789, 987_654_321);
    let s = b.tree.to_stats();
    assert_eq!(s.entries[0].tt, 123_456_789f64 / 1e9);
    assert_eq!(s.entries[0].ct, 987_654_321f64 / 1e9);
}

#[test]
fn inferred_tree_of_a_foreign_file() {
    let profile = prof::read_file(&common::fixture("recursive_py311.prof")).unwrap();
    let tree = &profile.tree;
    assert!(!tree.meta.exact);
    assert_eq!(tree.threads.len(), 1);
    assert_eq!(tree.threads[0].name, "MainThread");
    tree.validate().unwrap();
    // Every function of the table appears, and the roots are exec and the
    // profiler's disable(), the two functions called from the top.
    assert_eq!(tree.funcs.len(), profile.stats.entries.len());
    let t = &tree.threads[0];
    let mut roots: Vec<String> = t
        .nodes
        .iter()
        .skip(1)
        .filter(|n| n.parent == 0)
        .map(|n| tree.funcs[n.func as usize].name.clone())
        .collect();
    roots.sort();
    assert_eq!(
        roots,
        [
            "<built-in method builtins.exec>",
            "<method 'disable' of '_lsprof.Profiler' objects>"
        ]
    );
    // Recursion folds into one node per path: fib appears once, under main.
    let fib_nodes: Vec<&Node> = t
        .nodes
        .iter()
        .filter(|n| n.func != u32::MAX && tree.funcs[n.func as usize].name == "fib")
        .collect();
    assert_eq!(fib_nodes.len(), 1);
    // The tree's own times and calls add up to the table's.
    let again = tree.to_stats();
    let (tt_file, tt_tree) = (profile.stats.total_tt(), again.total_tt());
    assert!((tt_file - tt_tree).abs() < 1e-8, "{tt_file} vs {tt_tree}");
    let fib = again.entries.iter().find(|e| e.func.name == "fib").unwrap();
    assert_eq!(fib.nc, 67);
    // No child outlasts its parent.
    for n in t.nodes.iter().skip(1) {
        if n.parent != 0 {
            assert!(n.total_ns <= t.nodes[n.parent as usize].total_ns);
        }
        assert!(n.own_ns <= n.total_ns);
    }
}

#[test]
fn inferring_a_cycle_without_entry_terminates() {
    // a <-> b with no top-level caller: a profile enabled mid-recursion.
    let key = |n: &str| FuncKey::new("m.py", 1, n);
    let e = EdgeStats {
        nc: 5,
        cc: 5,
        tt: 1.0,
        ct: 2.0,
        count_only: false,
    };
    let stats = StatsTable {
        entries: vec![
            FuncStats {
                func: key("a"),
                cc: 5,
                nc: 5,
                tt: 1.0,
                ct: 2.0,
                callers: vec![(key("b"), e)],
            },
            FuncStats {
                func: key("b"),
                cc: 5,
                nc: 5,
                tt: 1.0,
                ct: 2.0,
                callers: vec![(key("a"), e)],
            },
        ],
    };
    let tree = stats.infer_tree();
    tree.validate().unwrap();
    // a is picked as the root of the unreachable cycle; b hangs below it; a is not repeated.
    assert_eq!(tree.threads[0].nodes.len(), 3);
}

#[test]
fn inferring_a_dense_graph_is_bounded() {
    // 40 functions all calling each other: the number of distinct paths is
    // astronomical, the node budget is not.
    let n = 40;
    let key = |i: usize| FuncKey::new("m.py", i as u32, format!("f{i}"));
    let entries = (0..n)
        .map(|i| FuncStats {
            func: key(i),
            cc: 10,
            nc: 10,
            tt: 1.0,
            ct: 100.0,
            callers: (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    (
                        key(j),
                        EdgeStats {
                            nc: 1,
                            cc: 1,
                            tt: 1.0,
                            ct: 50.0,
                            count_only: false,
                        },
                    )
                })
                .collect(),
        })
        .collect();
    let start = std::time::Instant::now();
    let tree = StatsTable { entries }.infer_tree();
    tree.validate().unwrap();
    assert!(tree.threads[0].nodes.len() <= 2_000_001);
    assert!(start.elapsed().as_secs() < 60);
}

#[test]
fn merged_sums_threads_by_path() {
    let tree = common::rich_tree();
    let merged = tree.merged();
    assert_eq!(merged.threads.len(), 1);
    merged.validate().unwrap();
    let t = &merged.threads[0];
    // "work" is a child of main in one thread and of the root in the other:
    // two different paths.
    let work = tree.funcs.iter().position(|k| k.name == "work").unwrap() as u32;
    assert_eq!(t.nodes.iter().filter(|n| n.func == work).count(), 2);
    // Totals are preserved: the merged tree derives the same table.
    let (a, b) = (tree.to_stats(), merged.to_stats());
    assert_eq!(a.total_calls(), b.total_calls());
    assert_eq!(a.primitive_calls(), b.primitive_calls());
    assert_eq!(a.entries.len(), b.entries.len());
    // Merging a thread with itself doubles every node.
    let mut twice = tree.clone();
    twice.threads = vec![tree.threads[0].clone(), tree.threads[0].clone()];
    let m = twice.merged();
    assert_eq!(m.threads[0].nodes.len(), tree.threads[0].nodes.len());
    assert_eq!(
        m.threads[0].nodes[1].calls,
        2 * tree.threads[0].nodes[1].calls
    );
}

#[test]
fn adding_tables_saturates_counts_instead_of_wrapping() {
    let key = FuncKey::new("m.py", 1, "f");
    let row = FuncStats {
        func: key.clone(),
        cc: u64::MAX - 1,
        nc: u64::MAX - 1,
        tt: 1.0,
        ct: 1.0,
        callers: vec![(
            key.clone(),
            EdgeStats {
                nc: u64::MAX - 1,
                cc: u64::MAX - 1,
                tt: 1.0,
                ct: 1.0,
                count_only: false,
            },
        )],
    };
    let mut table = StatsTable {
        entries: vec![row.clone()],
    };
    table.add(&StatsTable { entries: vec![row] });
    let e = &table.entries[0];
    assert_eq!((e.cc, e.nc), (u64::MAX, u64::MAX));
    assert_eq!((e.callers[0].1.nc, e.callers[0].1.cc), (u64::MAX, u64::MAX));
    assert_eq!(e.tt, 2.0);
}
