//! Comparing two profiles: call trees matched path by path, and function
//! tables matched function by function. Functions are matched by their
//! [`FuncKey`], so the two profiles may intern them in different orders;
//! those left over are matched by file name and function name (see
//! [`match_functions`]), so that an edit that moves lines, or a path spelt
//! differently, does not make every function of a file "new" and "gone".

use rustc_hash::FxHashMap;

use crate::stats::StatsTable;
use crate::tree::{CallTree, FuncId, FuncKey, Node, NodeId, ThreadTree, ROOT_FUNC};

/// Two trees laid over each other: every call path of either run, once.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeDiff {
    /// The union of both runs' call paths (all threads merged) with the
    /// `after` run's calls and times; paths only in `before` have zeros.
    pub after: CallTree,
    /// For each node of `after.threads[0]`, the same path's calls and times
    /// in the `before` run (zeros when the path is new).
    pub before: Vec<Node>,
}

fn zero_node(func: FuncId, parent: NodeId) -> Node {
    Node {
        func,
        parent,
        calls: 0,
        own_ns: 0,
        total_ns: 0,
    }
}

/// For the functions of `before` that `after` has under another key, that
/// key. First keys that agree exactly. Then files: a file of `before` and
/// one of `after` correspond when each is the other's unique best match by
/// trailing path components, and they share at least two (`pkg_a/utils.py`)
/// or one is the whole of the other's tail (`prog.py`, `/src/prog.py`); so
/// `pkg_a/utils.py` never stands for `pkg_b/utils.py`. Within corresponding
/// files, functions of one name pair in line order where both runs have as
/// many (one `helper`, or three `__init__`); the rest stay new and gone.
/// Addresses in a name (`... at 0x7f...`) do not count: they differ from run to run.
pub fn match_functions<'a>(
    before: impl IntoIterator<Item = &'a FuncKey>,
    after: impl IntoIterator<Item = &'a FuncKey>,
) -> FxHashMap<FuncKey, FuncKey> {
    let after: Vec<&FuncKey> = after.into_iter().collect();
    let before: Vec<&FuncKey> = before.into_iter().collect();
    let in_after: rustc_hash::FxHashSet<&FuncKey> = after.iter().copied().collect();
    let in_before: rustc_hash::FxHashSet<&FuncKey> = before.iter().copied().collect();
    let gone: Vec<&FuncKey> = before
        .iter()
        .copied()
        .filter(|k| !in_after.contains(k))
        .collect();
    let new: Vec<&FuncKey> = after
        .iter()
        .copied()
        .filter(|k| !in_before.contains(k))
        .collect();
    let by_file = |keys: &[&'a FuncKey]| {
        let mut m: FxHashMap<&'a str, Vec<&'a FuncKey>> = FxHashMap::default();
        for &k in keys {
            m.entry(k.file.as_str()).or_default().push(k);
        }
        m
    };
    let (gone_in, new_in) = (by_file(&gone), by_file(&new));
    let sorted_files = |m: &FxHashMap<&'a str, Vec<&'a FuncKey>>| {
        let mut f: Vec<&'a str> = m.keys().copied().collect();
        f.sort_unstable();
        f
    };
    let (gone_files, new_files) = (sorted_files(&gone_in), sorted_files(&new_in));
    // Each file's unique best counterpart on the other side, if any.
    let best = |file: &str, others: &[&'a str]| -> Option<&'a str> {
        let mut found: Option<&'a str> = None;
        let mut top = 0;
        let mut tie = false;
        for &other in others {
            let shared = shared_tail(file, other);
            if shared > top {
                (found, top, tie) = (Some(other), shared, false);
            } else if shared == top && shared > 0 {
                tie = true;
            }
        }
        found.filter(|&other| !tie && corresponds(file, other, top))
    };
    let mut map = FxHashMap::default();
    for &file in &gone_files {
        let Some(counterpart) = best(file, &new_files) else {
            continue;
        };
        if best(counterpart, &gone_files) != Some(file) {
            continue;
        }
        let mut by_name: FxHashMap<String, (Vec<&FuncKey>, Vec<&FuncKey>)> = FxHashMap::default();
        for &k in &gone_in[file] {
            by_name
                .entry(without_addresses(&k.name))
                .or_default()
                .0
                .push(k);
        }
        for &k in &new_in[counterpart] {
            by_name
                .entry(without_addresses(&k.name))
                .or_default()
                .1
                .push(k);
        }
        for (mut b, mut a) in by_name.into_values() {
            if b.len() != a.len() {
                continue;
            }
            b.sort_by_key(|k| (k.line, addresses(&k.name)));
            a.sort_by_key(|k| (k.line, addresses(&k.name)));
            for (b, a) in b.into_iter().zip(a) {
                map.insert(b.clone(), a.clone());
            }
        }
    }
    map
}

/// A name without the addresses in it: cProfile names some built-ins by
/// an object's address (`<built-in method __new__ of type object at
/// 0x7f8c0ea5ea00>`, `<function FrozenList.__getitem__ at 0x7f…>`), which
/// moves from run to run.
fn without_addresses(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find(" at 0x") {
        let start = at + " at 0x".len();
        let digits = rest[start..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len() - start);
        out.push_str(&rest[..start]);
        if digits == 0 {
            rest = &rest[start..];
            continue;
        }
        out.push('…');
        rest = &rest[start + digits..];
    }
    out.push_str(rest);
    out
}

/// The addresses in a name, in order: functions named alike but for them
/// pair in address order (a binary's objects move together, keeping it).
fn addresses(name: &str) -> Vec<u64> {
    name.split(" at 0x")
        .skip(1)
        .map(|s| {
            let end = s.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(s.len());
            u64::from_str_radix(&s[..end], 16).unwrap_or(0)
        })
        .collect()
}

/// How many trailing path components `a` and `b` share.
fn shared_tail(a: &str, b: &str) -> usize {
    a.rsplit('/')
        .zip(b.rsplit('/'))
        .take_while(|(x, y)| x == y && !x.is_empty())
        .count()
}

/// Whether two files sharing `shared` trailing components are one file:
/// the same path, or at least two components alike, or one path the whole
/// of the other's tail (a relative path and its absolute spelling).
fn corresponds(a: &str, b: &str, shared: usize) -> bool {
    let parts = |p: &str| p.split('/').filter(|c| !c.is_empty()).count();
    a == b || shared >= 2 || (shared >= 1 && (parts(a) == shared || parts(b) == shared))
}

/// Lays `after` over `before` path by path (threads merged first).
/// Malformed nodes (parent not before them, unknown function) are dropped
/// with their descendants.
pub fn diff_trees(before: &CallTree, after: &CallTree) -> TreeDiff {
    let mut funcs: Vec<FuncKey> = Vec::new();
    let mut func_ids: FxHashMap<FuncKey, FuncId> = FxHashMap::default();
    let mut union = ThreadTree::new("all threads", 0, 0);
    let mut before_values: Vec<Node> = vec![zero_node(ROOT_FUNC, 0)];
    let mut index: FxHashMap<(NodeId, FuncId), NodeId> = FxHashMap::default();
    let renamed = match_functions(&before.funcs, &after.funcs);

    for (side, tree) in [(1u8, after), (0u8, before)] {
        let merged = tree.merged();
        let local: Vec<FuncId> = merged
            .funcs
            .iter()
            .map(|key| {
                let key = renamed.get(key).unwrap_or(key);
                let next = funcs.len() as FuncId;
                *func_ids.entry(key.clone()).or_insert_with(|| {
                    funcs.push(key.clone());
                    next
                })
            })
            .collect();
        for thread in &merged.threads {
            const UNPLACED: NodeId = NodeId::MAX;
            let mut map = vec![UNPLACED; thread.nodes.len()];
            if let Some(first) = map.first_mut() {
                *first = 0;
            }
            for (i, node) in thread.nodes.iter().enumerate().skip(1) {
                let parent = node.parent as usize;
                if parent >= i || map[parent] == UNPLACED || node.func as usize >= local.len() {
                    continue;
                }
                let key = (map[parent], local[node.func as usize]);
                let id = *index.entry(key).or_insert_with(|| {
                    union.nodes.push(zero_node(key.1, key.0));
                    before_values.push(zero_node(key.1, key.0));
                    (union.nodes.len() - 1) as NodeId
                });
                let slot = if side == 1 {
                    &mut union.nodes[id as usize]
                } else {
                    &mut before_values[id as usize]
                };
                slot.calls = slot.calls.saturating_add(node.calls);
                slot.own_ns = slot.own_ns.saturating_add(node.own_ns);
                slot.total_ns = slot.total_ns.saturating_add(node.total_ns);
                map[i] = id;
            }
        }
    }
    TreeDiff {
        after: CallTree {
            funcs,
            threads: vec![union],
            meta: after.meta.clone(),
        },
        before: before_values,
    }
}

/// One function's row in both runs (zeros where it is missing).
#[derive(Clone, Debug, PartialEq)]
pub struct FuncDelta {
    pub func: FuncKey,
    pub before_nc: u64,
    pub after_nc: u64,
    /// Own time in seconds.
    pub before_tt: f64,
    pub after_tt: f64,
    /// Cumulative time in seconds.
    pub before_ct: f64,
    pub after_ct: f64,
}

impl FuncDelta {
    /// Change in own time, in seconds (positive: slower).
    pub fn tt_delta(&self) -> f64 {
        self.after_tt - self.before_tt
    }
    /// Change in cumulative time, in seconds (positive: slower).
    pub fn ct_delta(&self) -> f64 {
        self.after_ct - self.before_ct
    }
}

/// Every function of either table, with its values in both, ordered from
/// the largest regression in own time to the largest improvement.
pub fn diff_stats(before: &StatsTable, after: &StatsTable) -> Vec<FuncDelta> {
    let mut rows: Vec<FuncDelta> = Vec::new();
    let mut row_of: FxHashMap<&FuncKey, usize> = FxHashMap::default();
    let renamed = match_functions(
        before.entries.iter().map(|e| &e.func),
        after.entries.iter().map(|e| &e.func),
    );
    for (side, table) in [(1u8, after), (0u8, before)] {
        for e in &table.entries {
            let key = renamed.get(&e.func).unwrap_or(&e.func);
            let i = *row_of.entry(key).or_insert_with(|| {
                rows.push(FuncDelta {
                    func: key.clone(),
                    before_nc: 0,
                    after_nc: 0,
                    before_tt: 0.0,
                    after_tt: 0.0,
                    before_ct: 0.0,
                    after_ct: 0.0,
                });
                rows.len() - 1
            });
            let r = &mut rows[i];
            if side == 1 {
                r.after_nc = r.after_nc.saturating_add(e.nc);
                r.after_tt += e.tt;
                r.after_ct += e.ct;
            } else {
                r.before_nc = r.before_nc.saturating_add(e.nc);
                r.before_tt += e.tt;
                r.before_ct += e.ct;
            }
        }
    }
    // A total order, NaN last: a file's NaN or infinite times made the
    // comparison inconsistent, and the sort panicked (helper-50).
    rows.sort_by(|a, b| {
        let (x, y) = (a.tt_delta(), b.tt_delta());
        x.is_nan()
            .cmp(&y.is_nan())
            .then_with(|| y.total_cmp(&x))
            .then_with(|| a.func.cmp(&b.func))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(paths: &[(&[&str], u64)]) -> CallTree {
        let mut t = CallTree::default();
        let mut thread = ThreadTree::new("MainThread", 1, 1);
        let mut ids: FxHashMap<String, FuncId> = FxHashMap::default();
        for (path, own) in paths {
            let mut parent = 0;
            for (depth, name) in path.iter().enumerate() {
                let f = *ids.entry(name.to_string()).or_insert_with(|| {
                    t.funcs.push(FuncKey::new("m.py", 1, *name));
                    (t.funcs.len() - 1) as FuncId
                });
                let found = (1..thread.nodes.len())
                    .find(|&i| thread.nodes[i].parent == parent && thread.nodes[i].func == f);
                let id = match found {
                    Some(i) => i as NodeId,
                    None => {
                        thread.nodes.push(zero_node(f, parent));
                        (thread.nodes.len() - 1) as NodeId
                    }
                };
                let n = &mut thread.nodes[id as usize];
                n.total_ns += own;
                if depth + 1 == path.len() {
                    n.own_ns += own;
                    n.calls += 1;
                }
                parent = id;
            }
        }
        t.threads.push(thread);
        t
    }

    #[test]
    fn paths_are_matched_by_function_key_not_id() {
        let before = tree(&[(&["main", "a"], 10), (&["main", "gone"], 5)]);
        let after = tree(&[(&["main", "new"], 7), (&["main", "a"], 30)]);
        let d = diff_trees(&before, &after);
        let t = &d.after.threads[0];
        let find = |name: &str| {
            (1..t.nodes.len())
                .find(|&i| d.after.funcs[t.nodes[i].func as usize].name == name)
                .unwrap()
        };
        assert_eq!(t.nodes.len(), 5);
        let a = find("a");
        assert_eq!((t.nodes[a].total_ns, d.before[a].total_ns), (30, 10));
        let gone = find("gone");
        assert_eq!((t.nodes[gone].total_ns, d.before[gone].total_ns), (0, 5));
        let new = find("new");
        assert_eq!((t.nodes[new].total_ns, d.before[new].total_ns), (7, 0));
        let main = find("main");
        assert_eq!((t.nodes[main].total_ns, d.before[main].total_ns), (37, 15));
    }

    #[test]
    fn moved_lines_and_respelt_paths_still_match() {
        // helper-37: five lines added at the top, and the path spelt another
        // way, made every function of the file "new" and "gone".
        let key = |file: &str, line, name: &str| FuncKey::new(file, line, name);
        let mut before = tree(&[(&["main", "helper"], 10), (&["main", "__init__"], 4)]);
        before.funcs = vec![
            key("prog.py", 20, "main"),
            key("prog.py", 3, "helper"),
            key("prog.py", 8, "__init__"),
        ];
        before.funcs.push(key("prog.py", 12, "__init__")); // a second class's, not called
        let mut after = tree(&[(&["main", "helper"], 30), (&["main", "__init__"], 4)]);
        after.funcs = vec![
            key("/src/prog.py", 25, "main"),
            key("/src/prog.py", 8, "helper"),
            key("/src/prog.py", 13, "__init__"),
        ];
        after.funcs.push(key("/src/prog.py", 17, "__init__"));
        let d = diff_trees(&before, &after);
        let t = &d.after.threads[0];
        assert_eq!(t.nodes.len(), 4, "main, helper and __init__ once each");
        let helper = (1..t.nodes.len())
            .find(|&i| d.after.funcs[t.nodes[i].func as usize].name == "helper")
            .unwrap();
        assert_eq!(
            (t.nodes[helper].total_ns, d.before[helper].total_ns),
            (30, 10)
        );
        assert_eq!(d.after.funcs[t.nodes[helper].func as usize].line, 8); // shown as after has it
        let rows = diff_stats(&before.to_stats(), &after.to_stats());
        assert_eq!(rows.len(), 3);
        assert!(
            rows.iter().all(|r| r.before_ct > 0.0 && r.after_ct > 0.0),
            "{rows:?}"
        );
        // A group whose counts differ is left alone: one `f` before, two after.
        let m = match_functions(
            &[key("a.py", 1, "f")],
            &[key("a.py", 5, "f"), key("a.py", 9, "f")],
        );
        assert!(m.is_empty());
        // helper-38: one checkout moved and lines added; each package's
        // `helper` stays its own, though their lines now sort the other way.
        let m = match_functions(
            &[
                key("/b/pkg_a/utils.py", 10, "helper"),
                key("/b/pkg_b/utils.py", 20, "helper"),
            ],
            &[
                key("/a/pkg_a/utils.py", 30, "helper"),
                key("/a/pkg_b/utils.py", 25, "helper"),
            ],
        );
        assert_eq!(
            m[&key("/b/pkg_a/utils.py", 10, "helper")].file,
            "/a/pkg_a/utils.py"
        );
        assert_eq!(
            m[&key("/b/pkg_b/utils.py", 20, "helper")].file,
            "/a/pkg_b/utils.py"
        );
        // ... and one package's function is not another's that replaced it.
        let m = match_functions(
            &[key("/c1/pkg_a/utils.py", 1, "helper")],
            &[key("/c2/pkg_b/utils.py", 1, "helper")],
        );
        assert!(m.is_empty(), "{m:?}");
        let m = match_functions(
            &[key("/p/a/__init__.py", 1, "<module>")],
            &[key("/p/b/__init__.py", 1, "<module>")],
        );
        assert!(m.is_empty(), "{m:?}");
    }

    #[test]
    fn builtins_named_by_address_match_across_runs() {
        // A real pandas run against another: cProfile names some built-ins
        // by an address ("__new__ of type object at 0x7f8c0ea5ea00") that
        // moves from run to run, so the same function was listed as a
        // regression (new) and as an improvement (gone).
        let key = |name: &str| FuncKey::new("~", 0, name);
        let m = match_functions(
            &[
                key("<built-in method __new__ of type object at 0x7f8c0ea5ea00>"),
                key("<function FrozenList.__getitem__ at 0x7f8c0444fa60>"),
                key("<method 'append' of 'list' objects>"),
            ],
            &[
                key("<built-in method __new__ of type object at 0x7fa9b485ea00>"),
                key("<function FrozenList.__getitem__ at 0x7fa9aa1e7a60>"),
                key("<method 'append' of 'list' objects>"),
            ],
        );
        let pairs = [
            (
                "<built-in method __new__ of type object at 0x7f8c0ea5ea00>",
                "<built-in method __new__ of type object at 0x7fa9b485ea00>",
            ),
            (
                "<function FrozenList.__getitem__ at 0x7f8c0444fa60>",
                "<function FrozenList.__getitem__ at 0x7fa9aa1e7a60>",
            ),
        ];
        for (before, after) in pairs {
            assert_eq!(m[&key(before)].name, after);
        }
        // Several of one name pair in address order (a binary's objects move together).
        let m = match_functions(
            &[
                key("<built-in method __new__ of type object at 0x7f0000002000>"),
                key("<built-in method __new__ of type object at 0x7f0000001000>"),
            ],
            &[
                key("<built-in method __new__ of type object at 0x7e0000001000>"),
                key("<built-in method __new__ of type object at 0x7e0000002000>"),
            ],
        );
        for (before, after) in [
            ("0x7f0000001000", "0x7e0000001000"),
            ("0x7f0000002000", "0x7e0000002000"),
        ] {
            let name = |a: &str| format!("<built-in method __new__ of type object at {a}>");
            assert_eq!(m[&key(&name(before))].name, name(after));
        }
        let before = StatsTable {
            entries: vec![crate::FuncStats {
                func: key("<built-in method __new__ of type object at 0x7f8c0ea5ea00>"),
                cc: 2,
                nc: 2,
                tt: 1.0,
                ct: 1.0,
                callers: Vec::new(),
            }],
        };
        let mut after = before.clone();
        after.entries[0].func = key("<built-in method __new__ of type object at 0x7fa9b485ea00>");
        after.entries[0].tt = 3.0;
        let rows = diff_stats(&before, &after);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].before_tt, rows[0].after_tt), (1.0, 3.0));
    }

    #[test]
    fn stats_diff_orders_regressions_first() {
        let before = tree(&[(&["main", "a"], 10), (&["main", "b"], 50)]).to_stats();
        let after = tree(&[(&["main", "a"], 40), (&["main", "b"], 20)]).to_stats();
        let rows = diff_stats(&before, &after);
        assert_eq!(rows.first().unwrap().func.name, "a");
        assert_eq!(rows.last().unwrap().func.name, "b");
        assert!((rows[0].tt_delta() - 30e-9).abs() < 1e-15);
    }

    #[test]
    fn stats_diff_sorts_nan_times_last_without_panicking() {
        let table = |seed: u64| {
            let mut t = StatsTable::default();
            for i in 0..200u64 {
                let v = (i * 7919 + seed * 104_729) % 13;
                t.entries.push(crate::FuncStats {
                    func: FuncKey::new("m.py", i as u32 + 1, format!("f{i}")),
                    cc: 1,
                    nc: 1,
                    tt: match v {
                        0 => f64::NAN,
                        1 => f64::INFINITY,
                        _ => v as f64,
                    },
                    ct: 1.0,
                    callers: Vec::new(),
                });
            }
            t
        };
        let rows = diff_stats(&table(1), &table(2));
        assert_eq!(rows.len(), 200);
        let first_nan = rows.iter().position(|r| r.tt_delta().is_nan()).unwrap();
        assert!(rows[first_nan..].iter().all(|r| r.tt_delta().is_nan()));
        assert!(rows[..first_nan]
            .windows(2)
            .all(|w| w[0].tt_delta() >= w[1].tt_delta()));
    }
}
