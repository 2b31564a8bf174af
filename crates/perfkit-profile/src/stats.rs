//! The pstats function table: what cProfile's `create_stats` leaves in
//! `Profile.stats`, derived from (or, for foreign files, turned into) a [`CallTree`].

use rustc_hash::FxHashMap;

use crate::tree::{
    CallTree, Clock, FuncId, FuncKey, Meta, Node, NodeId, ThreadTree, Visit, Walk, ROOT_FUNC,
};

/// One row of the pstats dict. pstats stores it as `(cc, nc, tt, ct, callers)`.
#[derive(Clone, Debug, PartialEq)]
pub struct FuncStats {
    pub func: FuncKey,
    /// Primitive calls: calls made while the function was not already running.
    pub cc: u64,
    /// All calls, recursive ones included.
    pub nc: u64,
    /// Own time in seconds, callees excluded.
    pub tt: f64,
    /// Cumulative time in seconds, counted for primitive calls only.
    pub ct: f64,
    /// Who called this function, in dict order.
    pub callers: Vec<(FuncKey, EdgeStats)>,
}

/// Calls from one caller to one callee. pstats stores it as `(nc, cc, tt, ct)`,
/// note: `nc` first, unlike [`FuncStats`].
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct EdgeStats {
    pub nc: u64,
    pub cc: u64,
    /// The callee's own time during these calls.
    pub tt: f64,
    /// The callee's cumulative time during the calls that were not recursive
    /// for this caller→callee pair.
    pub ct: f64,
    /// Only the call count is known: the pure-Python `profile` module stores
    /// an edge as a bare int (`nc`, `cc` both that count; `tt`, `ct` 0), and
    /// pstats prints such edges their own way.
    pub count_only: bool,
}

impl EdgeStats {
    /// The edge's cumulative time, or for a count-only edge the callee's
    /// (`callee_ct` over its `callee_cc` primitive calls, the ones its
    /// cumulative time is counted over) in proportion to these calls.
    pub fn ct_or_share(&self, callee_ct: f64, callee_cc: u64) -> f64 {
        if self.count_only && callee_cc > 0 {
            callee_ct * self.nc.min(callee_cc) as f64 / callee_cc as f64
        } else {
            self.ct
        }
    }
}

/// The pstats dict as an ordered table; order is the dict's iteration order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StatsTable {
    pub entries: Vec<FuncStats>,
}

impl StatsTable {
    /// Sum of `nc` over all functions: pstats' "N function calls".
    pub fn total_calls(&self) -> u128 {
        self.entries.iter().map(|e| e.nc as u128).sum()
    }

    /// Sum of `cc` over all functions: pstats' "(M primitive calls)".
    pub fn primitive_calls(&self) -> u128 {
        self.entries.iter().map(|e| e.cc as u128).sum()
    }

    /// Sum of own times, added in dict order exactly as pstats does, so the
    /// printed total rounds the same way.
    pub fn total_tt(&self) -> f64 {
        self.entries.iter().fold(0.0, |sum, e| sum + e.tt)
    }

    /// The row of `func`, if any.
    pub fn get(&self, func: &FuncKey) -> Option<&FuncStats> {
        self.entries.iter().find(|e| &e.func == func)
    }

    /// pstats' `Stats.add`: `other`'s rows summed into this table's, those
    /// new here appended in `other`'s order (`add_func_stats`, `add_callers`).
    pub fn add(&mut self, other: &StatsTable) {
        let mut at: FxHashMap<FuncKey, usize> = FxHashMap::default();
        for (i, e) in self.entries.iter().enumerate() {
            at.entry(e.func.clone()).or_insert(i);
        }
        for e in &other.entries {
            match at.get(&e.func) {
                Some(&i) => self.entries[i].absorb(e),
                None => {
                    at.insert(e.func.clone(), self.entries.len());
                    self.entries.push(e.clone());
                }
            }
        }
    }

    /// pstats' `strip_dirs`: each file reduced to its base name, rows that
    /// then share a key summed (as [`add`](Self::add) sums them). Within one
    /// row's callers a later caller replaces an earlier one of the same
    /// stripped key, as in pstats.
    pub fn strip_dirs(&self) -> StatsTable {
        let stripped = StatsTable {
            entries: self
                .entries
                .iter()
                .map(|e| {
                    let mut callers: Vec<(FuncKey, EdgeStats)> =
                        Vec::with_capacity(e.callers.len());
                    let mut caller_at: FxHashMap<FuncKey, usize> = FxHashMap::default();
                    for (caller, edge) in &e.callers {
                        let caller = caller.strip_dir();
                        match caller_at.get(&caller) {
                            Some(&i) => callers[i].1 = *edge,
                            None => {
                                caller_at.insert(caller.clone(), callers.len());
                                callers.push((caller, *edge));
                            }
                        }
                    }
                    FuncStats {
                        func: e.func.strip_dir(),
                        cc: e.cc,
                        nc: e.nc,
                        tt: e.tt,
                        ct: e.ct,
                        callers,
                    }
                })
                .collect(),
        };
        let mut out = StatsTable::default();
        out.add(&stripped);
        out
    }
}

impl FuncStats {
    /// pstats' `add_func_stats(self, source)`: counts and times summed;
    /// callers merged by `add_callers` (this row's order, then new ones).
    fn absorb(&mut self, source: &FuncStats) {
        // Saturating: counts past 2^64 (only a crafted file has them) stop
        // there rather than wrap to small numbers (or panic in a debug build).
        self.cc = self.cc.saturating_add(source.cc);
        self.nc = self.nc.saturating_add(source.nc);
        self.tt += source.tt;
        self.ct += source.ct;
        for (caller, edge) in &source.callers {
            match self.callers.iter_mut().find(|(k, _)| k == caller) {
                Some((_, mine)) => {
                    mine.nc = mine.nc.saturating_add(edge.nc);
                    mine.cc = mine.cc.saturating_add(edge.cc);
                    mine.tt += edge.tt;
                    mine.ct += edge.ct;
                    mine.count_only &= edge.count_only;
                }
                None => self.callers.push((caller.clone(), *edge)),
            }
        }
    }
}

fn seconds(ns: u128) -> f64 {
    ns as f64 / 1e9
}

#[derive(Default, Clone, Copy)]
struct Acc {
    cc: u64,
    nc: u64,
    tt: u128,
    ct: u128,
}

impl Acc {
    fn add(&mut self, node: &Node, primitive: bool) {
        self.nc = self.nc.saturating_add(node.calls);
        self.tt += node.own_ns as u128;
        if primitive {
            self.cc = self.cc.saturating_add(node.calls);
            self.ct += node.total_ns as u128;
        }
    }
}

const NOT_SEEN: u32 = u32::MAX;

impl CallTree {
    /// The table cProfile (`Modules/_lsprof.c` and `cProfile.snapshot_stats`)
    /// would have produced for the calls this tree records.
    ///
    /// cProfile keeps a recursion level per function and per caller→callee
    /// pair; a call counts as primitive, and adds its cumulative time, only
    /// when that level was zero. In a tree that level is the number of
    /// ancestors with the same function (or the same pair), which one walk
    /// per thread tracks with counters for the current path.
    ///
    /// Rows come in order of first appearance in preorder (threads in order,
    /// children by index); callers likewise. Functions are keyed by
    /// [`FuncKey`], so duplicate entries in [`CallTree::funcs`] fold together.
    pub fn to_stats(&self) -> StatsTable {
        table_of(&self.funcs, &self.threads)
    }
}

/// A function list with each function's canonical id (see [`CallTree`]'s
/// tables), shared by many threads' tables: one copy, hashed once.
pub struct SharedFuncs {
    funcs: Vec<FuncKey>,
    canon: Vec<FuncId>,
}

impl SharedFuncs {
    pub fn new(funcs: Vec<FuncKey>) -> SharedFuncs {
        let canon = crate::tree::canonical_ids(&funcs);
        SharedFuncs { funcs, canon }
    }

    /// [`CallTree::to_stats`] of some threads over this list.
    pub fn table_of(&self, threads: &[ThreadTree]) -> StatsTable {
        table_with(&self.funcs, &self.canon, threads)
    }
}

/// [`CallTree::to_stats`] of some threads over a function list.
pub fn table_of(funcs: &[FuncKey], threads: &[ThreadTree]) -> StatsTable {
    table_with(funcs, &crate::tree::canonical_ids(funcs), threads)
}

fn table_with(funcs: &[FuncKey], canon: &[FuncId], threads: &[ThreadTree]) -> StatsTable {
    let nfuncs = funcs.len();
    let mut row_of = vec![NOT_SEEN; nfuncs];
    let mut rows: Vec<(FuncId, Acc)> = Vec::new();
    let mut on_path = vec![0u32; nfuncs];

    let mut edge_of: FxHashMap<(FuncId, FuncId), u32> = FxHashMap::default();
    let mut edges: Vec<(FuncId, FuncId, Acc)> = Vec::new();
    let mut edge_on_path: Vec<u32> = Vec::new();

    for thread in threads {
        let children = thread.children();
        // Per node: its canonical function and its edge index, valid only
        // while the node is on the path.
        let mut func_at = vec![ROOT_FUNC; thread.nodes.len()];
        let mut edge_at = vec![NOT_SEEN; thread.nodes.len()];
        let mut skip_depth: Option<usize> = None;
        let mut walk = Walk::new(&children);
        while let Some(visit) = walk.next() {
            match visit {
                Visit::Enter(id) => {
                    if skip_depth.is_some() {
                        continue;
                    }
                    let node = &thread.nodes[id as usize];
                    let Some(&f) = canon.get(node.func as usize) else {
                        // An unknown function: leave its whole subtree out.
                        skip_depth = Some(walk.depth());
                        continue;
                    };
                    func_at[id as usize] = f;
                    let fi = f as usize;
                    if row_of[fi] == NOT_SEEN {
                        row_of[fi] = rows.len() as u32;
                        rows.push((f, Acc::default()));
                    }
                    rows[row_of[fi] as usize].1.add(node, on_path[fi] == 0);
                    on_path[fi] += 1;

                    let g = func_at[node.parent as usize];
                    if node.parent != 0 && g != ROOT_FUNC {
                        let e = *edge_of.entry((g, f)).or_insert_with(|| {
                            edges.push((g, f, Acc::default()));
                            edge_on_path.push(0);
                            (edges.len() - 1) as u32
                        });
                        edges[e as usize].2.add(node, edge_on_path[e as usize] == 0);
                        edge_on_path[e as usize] += 1;
                        edge_at[id as usize] = e;
                    }
                }
                Visit::Leave(id) => {
                    if let Some(depth) = skip_depth {
                        // `depth()` counts the node being left.
                        if walk.depth() + 1 == depth {
                            skip_depth = None;
                        }
                        continue;
                    }
                    let f = func_at[id as usize];
                    on_path[f as usize] -= 1;
                    let e = edge_at[id as usize];
                    if e != NOT_SEEN {
                        edge_on_path[e as usize] -= 1;
                    }
                }
            }
        }
    }

    let mut callers: Vec<Vec<(FuncKey, EdgeStats)>> = vec![Vec::new(); rows.len()];
    for (g, f, acc) in &edges {
        callers[row_of[*f as usize] as usize].push((
            funcs[*g as usize].clone(),
            EdgeStats {
                nc: acc.nc,
                cc: acc.cc,
                tt: seconds(acc.tt),
                ct: seconds(acc.ct),
                count_only: false,
            },
        ));
    }
    let entries = rows
        .into_iter()
        .zip(callers)
        .map(|((f, acc), callers)| FuncStats {
            func: funcs[f as usize].clone(),
            cc: acc.cc,
            nc: acc.nc,
            tt: seconds(acc.tt),
            ct: seconds(acc.ct),
            callers,
        })
        .collect();
    StatsTable { entries }
}

/// Limits of [`StatsTable::infer_tree`].
const INFER_MAX_NODES: usize = 2_000_000;
/// Nodes allowed per function and edge of the table, so that a small (or
/// corrupted) table with a dense call graph cannot spend the whole budget.
const INFER_NODES_PER_ITEM: usize = 1_000;
const INFER_MAX_DEPTH: usize = 256;
/// Steps (callees looked at, ancestors marked) the expansion may take in all:
/// a table with many paths into a function of many callees cost nodes x
/// callees, minutes for a 1 MB file (helper-50).
const INFER_MAX_WORK: usize = 50_000_000;
/// Children whose estimated time is below this share of the roots' time are
/// not expanded: they are invisible in any view and would multiply the paths.
const INFER_MIN_SHARE: f64 = 1e-6;

fn to_ns(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1e9).round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

fn scaled(value: f64, scale: f64) -> f64 {
    let v = value * scale;
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

impl StatsTable {
    /// An approximate call tree for a table that came without one (a foreign
    /// cProfile file): `meta.exact` is false.
    ///
    /// Roots are the functions with calls no caller accounts for (cProfile's
    /// top-level calls) or with no caller at all, plus, for call graphs
    /// entered in the middle of a cycle, the first function of each part not
    /// reachable from them. Below a node of `f` with total time `T`, each
    /// callee `c` gets `T / ct(f)` of the `f→c` edge's calls and cumulative
    /// time. A function is never expanded below itself: recursion folds into
    /// the outermost node. Finally each function's `tt` and `nc` are shared
    /// out over its nodes in proportion to their totals and calls, so the
    /// tree's own times and call counts add up to the table's.
    /// Expansion is breadth-first, so when the node budget runs out every
    /// branch is cut at a similar depth.
    pub fn infer_tree(&self) -> CallTree {
        let mut id_of: FxHashMap<&FuncKey, FuncId> = FxHashMap::default();
        for e in &self.entries {
            let next = id_of.len() as FuncId;
            id_of.entry(&e.func).or_insert(next);
        }
        let nfuncs = id_of.len();
        // A table built in code may repeat a key; its first row stands for
        // the function.
        let mut row: Vec<&FuncStats> = Vec::with_capacity(nfuncs);
        let mut funcs: Vec<FuncKey> = Vec::with_capacity(nfuncs);
        for e in &self.entries {
            if id_of[&e.func] as usize == row.len() {
                row.push(e);
                funcs.push(e.func.clone());
            }
        }

        let mut callees: Vec<Vec<(FuncId, EdgeStats)>> = vec![Vec::new(); nfuncs];
        let mut has_caller = vec![false; nfuncs];
        // cProfile counts every call of f either under a caller pair or, when
        // nothing profiled was running, as a top-level call; the difference
        // finds the functions called from the top of the stack.
        let mut top_calls: Vec<u64> = row.iter().map(|e| e.nc).collect();
        for (c, e) in row.iter().enumerate() {
            for (caller, edge) in &e.callers {
                let g = id_of.get(caller).copied();
                // A caller never called itself (the pure-Python `profile`
                // module's `profiler` frame: no calls, no time) does not hold
                // its callees: they are top-level calls.
                if g.is_some_and(|g| row[g as usize].nc == 0) {
                    continue;
                }
                top_calls[c] = top_calls[c].saturating_sub(edge.nc);
                if let Some(g) = g {
                    if g as usize != c {
                        callees[g as usize].push((c as FuncId, *edge));
                        has_caller[c] = true;
                    }
                }
            }
        }

        // Roots with their calls and total time.
        let mut roots: Vec<(FuncId, u64, f64)> = Vec::new();
        let mut reached = vec![false; nfuncs];
        let mut queue: Vec<FuncId> = Vec::new();
        let mut reach_from = |start: FuncId, reached: &mut Vec<bool>| {
            reached[start as usize] = true;
            queue.push(start);
            while let Some(f) = queue.pop() {
                for &(c, _) in &callees[f as usize] {
                    if !reached[c as usize] {
                        reached[c as usize] = true;
                        queue.push(c);
                    }
                }
            }
        };
        for (f, e) in row.iter().enumerate() {
            if !has_caller[f] {
                roots.push((f as FuncId, e.nc, e.ct));
            } else if top_calls[f] > 0 {
                // Top-level calls are primitive: they get their share of ct.
                let share = if e.cc > 0 {
                    (top_calls[f] as f64 / e.cc as f64).min(1.0)
                } else {
                    1.0
                };
                roots.push((f as FuncId, top_calls[f], scaled(e.ct, share)));
            } else {
                continue;
            }
            reach_from(f as FuncId, &mut reached);
        }
        for (f, e) in row.iter().enumerate() {
            if !reached[f] {
                roots.push((f as FuncId, e.nc, e.ct));
                reach_from(f as FuncId, &mut reached);
            }
        }

        let grand: f64 = roots.iter().map(|&(_, _, ct)| scaled(ct, 1.0)).sum();
        let min_ns = to_ns(grand * INFER_MIN_SHARE);

        let mut thread = ThreadTree::new("MainThread", 0, 0);
        let mut depth: Vec<u32> = vec![0];
        // Per node: the factor that turns its function's table values into
        // this node's share of them.
        let mut scale: Vec<f64> = vec![0.0];
        let edge_count: usize = callees.iter().map(Vec::len).sum();
        let max_nodes = (nfuncs + edge_count)
            .saturating_mul(INFER_NODES_PER_ITEM)
            .saturating_add(10_000)
            .min(INFER_MAX_NODES);
        for &(f, calls, ct) in roots.iter().take(max_nodes) {
            let e = row[f as usize];
            let share = if e.ct > 0.0 { ct / e.ct } else { 1.0 };
            thread.nodes.push(Node {
                func: f,
                parent: 0,
                calls,
                own_ns: to_ns(scaled(e.tt, share)),
                total_ns: to_ns(ct),
            });
            depth.push(1);
            scale.push(share);
        }

        // Each function's callees by their time, largest first: below a
        // node, the callees too small to draw are a tail that is never looked at.
        let edge_time = |f: usize, k: usize| {
            let (c, edge) = callees[f][k];
            let callee = row[c as usize];
            scaled(edge.ct_or_share(callee.ct, callee.cc), 1.0)
        };
        let by_time: Vec<Vec<u32>> = (0..nfuncs)
            .map(|f| {
                let mut order: Vec<u32> = (0..callees[f].len() as u32).collect();
                order.sort_by(|&a, &b| {
                    edge_time(f, b as usize).total_cmp(&edge_time(f, a as usize))
                });
                order
            })
            .collect();

        // Marks the functions on the path of the node being expanded.
        let mut mark = vec![NOT_SEEN; nfuncs];
        let mut next = 1usize;
        let mut work = 0usize;
        let mut kept: Vec<u32> = Vec::new();
        while next < thread.nodes.len() && thread.nodes.len() < max_nodes && work < INFER_MAX_WORK {
            let id = next;
            next += 1;
            if depth[id] as usize >= INFER_MAX_DEPTH {
                continue;
            }
            let mut at = id;
            while at != 0 {
                mark[thread.nodes[at].func as usize] = id as u32;
                at = thread.nodes[at].parent as usize;
            }
            work += depth[id] as usize;
            let f = thread.nodes[id].func as usize;
            let s = scale[id];
            // A call cannot outlast its caller; capping also keeps odd
            // tables from growing times down the tree.
            let cap = thread.nodes[id].total_ns as f64 / 1e9;
            let total_of = |k: usize| scaled(edge_time(f, k), s).min(cap);
            kept.clear();
            for &k in &by_time[f] {
                work += 1;
                if to_ns(total_of(k as usize)) < min_ns {
                    break;
                }
                kept.push(k);
            }
            // Children in the table's order, as before the time order.
            kept.sort_unstable();
            for &k in &kept {
                let (c, edge) = callees[f][k as usize];
                if mark[c as usize] == id as u32 {
                    continue;
                }
                let callee = row[c as usize];
                let total = total_of(k as usize);
                let total_ns = to_ns(total);
                let calls = scaled(edge.nc as f64, s).round().min(u64::MAX as f64) as u64;
                if total_ns == 0 && calls == 0 {
                    continue;
                }
                let share = if callee.ct > 0.0 && callee.ct.is_finite() {
                    total / callee.ct
                } else if callee.nc > 0 {
                    calls as f64 / callee.nc as f64
                } else {
                    0.0
                };
                if thread.nodes.len() >= max_nodes {
                    break;
                }
                thread.nodes.push(Node {
                    func: c,
                    parent: id as NodeId,
                    calls,
                    own_ns: to_ns(scaled(callee.tt, share)),
                    total_ns,
                });
                depth.push(depth[id] + 1);
                scale.push(share);
            }
        }

        // Paths overlap where recursion runs through other functions, so the
        // scaled shares of a function can add up to more than its row; share
        // its own time and calls out by each node's part of the sum instead.
        let mut total_sum = vec![0u128; nfuncs];
        let mut calls_sum = vec![0u128; nfuncs];
        for n in thread.nodes.iter().skip(1) {
            total_sum[n.func as usize] += n.total_ns as u128;
            calls_sum[n.func as usize] += n.calls as u128;
        }
        for n in thread.nodes.iter_mut().skip(1) {
            let (f, e) = (n.func as usize, row[n.func as usize]);
            if total_sum[f] > 0 {
                let part = n.total_ns as f64 / total_sum[f] as f64;
                n.own_ns = to_ns(scaled(e.tt, part)).min(n.total_ns);
            }
            if calls_sum[f] > 0 {
                let part = n.calls as f64 / calls_sum[f] as f64;
                n.calls = scaled(e.nc as f64, part).round().min(u64::MAX as f64) as u64;
            }
        }

        let builtins = funcs.iter().any(FuncKey::is_builtin);
        CallTree {
            funcs,
            threads: vec![thread],
            meta: Meta {
                exact: false,
                clock: Clock::Wall,
                builtins,
                recorder: "cProfile (tree inferred from caller/callee pairs)".into(),
                duration_ns: 0,
                started_unix: 0.0,
            },
        }
    }
}
