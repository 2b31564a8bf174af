//! The viewer's data: views of a loaded profile (or of two, compared) and
//! the JSON answers the page asks for.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use perfkit_profile::diff::{diff_stats, diff_trees, FuncDelta};
use perfkit_profile::stats::SharedFuncs;
use perfkit_profile::{
    CallTree, Children, FuncId, FuncKey, Node, NodeId, Profile, StatsTable, ThreadTree,
};
use rustc_hash::FxHashMap;
use serde_json::json;

/// The page asks for at most this many frames at once; beyond it the
/// deepest levels are left out (the page zooms to see them).
pub const MAX_SLICE_NODES: usize = 120_000;
/// Frames narrower than this share of the slice's root are not sent by
/// default (well under a pixel on any screen).
pub const DEFAULT_MIN_FRACTION: f64 = 1.0 / 4000.0;
/// Default depth of a slice below its root.
pub const DEFAULT_SLICE_DEPTH: u32 = 400;
/// The deepest slice laid out, asked for or exported.
pub const MAX_SLICE_DEPTH: u32 = 100_000;

/// One tree the page can show: all threads merged, one thread, or a diff.
pub struct View {
    pub name: String,
    thread: ThreadTree,
    children: Children,
    /// The `before` run's values per node, for a diff.
    before: Option<Vec<Node>>,
    /// The pstats table of this view (the file's own for the whole profile).
    stats: OnceLock<StatsTable>,
    /// The profile's function list, shared by every thread's view, from
    /// which a single thread's lazy table is derived.
    stats_source: Option<Arc<SharedFuncs>>,
    /// Callers and callees per function, indexed on first use.
    edges: OnceLock<EdgeIndex>,
}

#[derive(Default)]
struct EdgeIndex {
    callers: FxHashMap<i64, Vec<(i64, perfkit_profile::EdgeStats)>>,
    callees: FxHashMap<i64, Vec<(i64, perfkit_profile::EdgeStats)>>,
}

impl View {
    fn new(name: String, thread: ThreadTree, before: Option<Vec<Node>>) -> View {
        let children = thread.children();
        View {
            name,
            thread,
            children,
            before,
            stats: OnceLock::new(),
            stats_source: None,
            edges: OnceLock::new(),
        }
    }

    fn stats(&self) -> &StatsTable {
        self.stats.get_or_init(|| match &self.stats_source {
            Some(funcs) => funcs.table_of(std::slice::from_ref(&self.thread)),
            None => StatsTable::default(),
        })
    }

    /// Total time of a node; for the root, of its children (a root stands
    /// for no call and usually carries no time of its own).
    fn total(&self, id: NodeId) -> u64 {
        if id == 0 {
            self.children
                .of(0)
                .iter()
                .map(|&c| self.thread.nodes[c as usize].total_ns)
                .fold(0u64, u64::saturating_add)
        } else {
            self.thread.nodes[id as usize].total_ns
        }
    }

    fn before_total(&self, id: NodeId) -> u64 {
        match &self.before {
            None => 0,
            Some(b) if id == 0 => self
                .children
                .of(0)
                .iter()
                .map(|&c| b[c as usize].total_ns)
                .fold(0u64, u64::saturating_add),
            Some(b) => b[id as usize].total_ns,
        }
    }
}

/// A loaded profile (or two, compared) and the answers about it.
pub struct Viewer {
    /// What the page calls the input: the file names it was given.
    pub files: Vec<String>,
    funcs: Vec<FuncKey>,
    /// Per function id, the first id with an equal key (the table's row).
    canonical: Vec<FuncId>,
    func_ids: FxHashMap<FuncKey, FuncId>,
    pub views: Vec<View>,
    exact: bool,
    clock: &'static str,
    recorder: String,
    diff_rows: Option<Vec<FuncDelta>>,
    /// Rendered answers that do not depend on parameters.
    cache: Mutex<HashMap<String, String>>,
}

/// An answer: HTTP status, content type and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    fn json(body: String) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            body,
        }
    }
    fn error(status: u16, message: &str) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: json!({ "error": message }).to_string(),
        }
    }
}

impl Viewer {
    /// A viewer for one profile.
    pub fn single(label: String, profile: Profile) -> Viewer {
        let Profile { stats, tree } = profile;
        let mut viewer = Viewer::empty(vec![label], &tree);
        viewer.funcs = tree.funcs.clone();
        let several = tree.threads.len() > 1;
        let mut views = Vec::new();
        if several {
            let merged = tree.merged();
            if let Some(all) = merged.threads.into_iter().next() {
                views.push(View::new("all threads".into(), all, None));
            }
        } else if tree.threads.is_empty() {
            views.push(View::new(
                "(empty profile)".into(),
                ThreadTree::new("", 0, 0),
                None,
            ));
        }
        let several_processes = tree.threads.windows(2).any(|w| w[0].pid != w[1].pid);
        // One list for all: a copy per thread made a profile of 200 threads
        // over 20,000 functions take half a gigabyte (helper-49).
        let shared_funcs = Arc::new(SharedFuncs::new(tree.funcs.clone()));
        for thread in &tree.threads {
            let mut name = if thread.name.is_empty() {
                format!("thread {}", thread.thread_id)
            } else {
                thread.name.clone()
            };
            // (not twice: a pool worker's thread is named "worker process PID")
            if several_processes && !name.contains(&format!("process {}", thread.pid)) {
                name = format!("{name} (pid {})", thread.pid);
            }
            let mut view = View::new(name, thread.clone(), None);
            if several {
                view.stats_source = Some(Arc::clone(&shared_funcs));
            }
            views.push(view);
        }
        // The whole profile's table is the file's own, exactly as pstats reads it.
        viewer.add_table_keys(&stats);
        let _ = views[0].stats.set(stats);
        viewer.views = views;
        viewer.finish_ids();
        viewer
    }

    /// A viewer comparing `after` with `before`.
    pub fn diff(
        before_label: String,
        before: Profile,
        after_label: String,
        after: Profile,
    ) -> Viewer {
        let d = diff_trees(&before.tree, &after.tree);
        let mut viewer = Viewer::empty(vec![before_label, after_label], &after.tree);
        viewer.exact = before.tree.meta.exact && after.tree.meta.exact;
        viewer.funcs = d.after.funcs.clone();
        viewer.add_table_keys(&after.stats);
        viewer.add_table_keys(&before.stats);
        viewer.diff_rows = Some(diff_stats(&before.stats, &after.stats));
        let thread = d
            .after
            .threads
            .into_iter()
            .next()
            .unwrap_or_else(|| ThreadTree::new("", 0, 0));
        let view = View::new("diff".into(), thread, Some(d.before));
        let _ = view.stats.set(after.stats);
        viewer.views = vec![view];
        viewer.finish_ids();
        viewer
    }

    fn empty(files: Vec<String>, tree: &CallTree) -> Viewer {
        Viewer {
            files,
            funcs: Vec::new(),
            canonical: Vec::new(),
            func_ids: FxHashMap::default(),
            views: Vec::new(),
            exact: tree.meta.exact,
            clock: match tree.meta.clock {
                perfkit_profile::Clock::Wall => "wall",
                perfkit_profile::Clock::Cpu => "cpu",
            },
            recorder: tree.meta.recorder.clone(),
            diff_rows: None,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Makes sure every key of a table has a function id.
    /// A table's functions and their callers: a file may name a caller that
    /// has no row of its own (a filtered or foreign dump), which must still
    /// be labelled by its name.
    fn add_table_keys(&mut self, stats: &StatsTable) {
        self.add_keys(stats.entries.iter().flat_map(|e| {
            std::iter::once(&e.func).chain(e.callers.iter().map(|(caller, _)| caller))
        }));
    }

    fn add_keys<'a>(&mut self, keys: impl Iterator<Item = &'a FuncKey>) {
        let mut known: rustc_hash::FxHashSet<&FuncKey> = self.funcs.iter().collect();
        let mut extra = Vec::new();
        for k in keys {
            if known.insert(k) {
                extra.push(k.clone());
            }
        }
        self.funcs.extend(extra);
    }

    fn finish_ids(&mut self) {
        let mut ids: FxHashMap<FuncKey, FuncId> = FxHashMap::default();
        self.canonical = self
            .funcs
            .iter()
            .enumerate()
            .map(|(i, k)| *ids.entry(k.clone()).or_insert(i as FuncId))
            .collect();
        self.func_ids = ids;
    }

    fn canon(&self, func: FuncId) -> i64 {
        self.canonical.get(func as usize).map_or(-1, |&c| c as i64)
    }

    fn key_id(&self, key: &FuncKey) -> i64 {
        self.func_ids.get(key).map_or(-1, |&c| c as i64)
    }

    /// Answers one request: `path_and_query` as it came in the request line.
    /// Only the page and the API exist; anything else is 404.
    pub fn handle(&self, method: &str, path_and_query: &str) -> Reply {
        if method != "GET" && method != "HEAD" {
            return Reply::error(405, "only GET and HEAD are supported");
        }
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_and_query, ""),
        };
        let params = Params::parse(query);
        match path {
            "/" | "/index.html" => Reply {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: crate::export::page(None),
            },
            "/api/meta" => Reply::json(self.cached("meta", || self.meta_json())),
            "/api/funcs" => Reply::json(self.cached("funcs", || self.funcs_json())),
            "/api/stats" => match params.view(self) {
                Ok(v) => {
                    Reply::json(self.cached(&format!("stats{v}"), || self.stats_json(v, false)))
                }
                Err(e) => Reply::error(400, &e),
            },
            "/api/edges" => {
                let asked = params.view(self).and_then(|v| {
                    let f = params
                        .get("f")
                        .and_then(|f| f.parse::<i64>().ok())
                        .ok_or("f must be a function number")?;
                    Ok((v, f))
                });
                let (v, f) = match asked {
                    Ok(asked) => asked,
                    Err(e) => return Reply::error(400, &e),
                };
                // An id /api/funcs does not list is 404, as a frame /api/slice
                // does not know is (it answered 200 with no callers and no callees).
                match u32::try_from(f).ok().map(|f| self.canon(f)) {
                    Some(f) if f >= 0 => Reply::json(self.edges_json(v, f)),
                    _ => Reply::error(404, &format!("no function {f}")),
                }
            }
            "/api/diff" => Reply::json(self.cached("diff", || self.diff_json())),
            "/api/slice" => {
                let view = match params.view(self) {
                    Ok(v) => v,
                    Err(e) => return Reply::error(400, &e),
                };
                let numbers = params.whole("root", 0).and_then(|root| {
                    let depth = params.whole("depth", u64::from(DEFAULT_SLICE_DEPTH))?;
                    let min = params.fraction("min", DEFAULT_MIN_FRACTION)?;
                    // Deeper than the deepest slice is the deepest slice.
                    Ok((root, depth.min(u64::from(MAX_SLICE_DEPTH)) as u32, min))
                });
                let (root, depth, min) = match numbers {
                    Ok(n) => n,
                    Err(e) => return Reply::error(400, &e),
                };
                match self.slice_json(view, root, depth, min, MAX_SLICE_NODES) {
                    Ok(body) => Reply::json(body),
                    Err(e) => Reply::error(404, &e),
                }
            }
            _ => Reply::error(404, "not found"),
        }
    }

    fn cached(&self, key: &str, make: impl FnOnce() -> String) -> String {
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(key).cloned()) {
            return hit;
        }
        let body = make();
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key.to_string(), body.clone());
        }
        body
    }

    /// What the profile is: files, threads, clock, exactness.
    pub fn meta_json(&self) -> String {
        let views: Vec<_> = self
            .views
            .iter()
            .map(|v| json!({"name": v.name, "total_ns": v.total(0), "nodes": v.thread.nodes.len() - 1}))
            .collect();
        json!({
            "files": self.files,
            "exact": self.exact,
            "clock": self.clock,
            "recorder": self.recorder,
            "diff": self.diff_rows.is_some(),
            "views": views,
            "funcs": self.funcs.len(),
        })
        .to_string()
    }

    /// The function table, as columns: name, file, line (the page builds
    /// pstats' `file:line(name)` labels itself; sending them would double the size).
    pub fn funcs_json(&self) -> String {
        let name: Vec<&str> = self.funcs.iter().map(|f| f.name.as_str()).collect();
        let file: Vec<&str> = self.funcs.iter().map(|f| f.file.as_str()).collect();
        let line: Vec<u32> = self.funcs.iter().map(|f| f.line).collect();
        json!({"name": name, "file": file, "line": line}).to_string()
    }

    /// The pstats table of a view as columns of function ids; with
    /// `with_edges`, every caller→callee edge too (for the export: a
    /// served page asks [`Viewer::edges_json`] per function instead, because
    /// a big profile has millions of edges).
    pub fn stats_json(&self, view: usize, with_edges: bool) -> String {
        let stats = self.views[view].stats();
        let n = stats.entries.len();
        let (mut f, mut cc, mut nc, mut tt, mut ct) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut e_caller, mut e_callee, mut e_nc, mut e_cc, mut e_tt, mut e_ct) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for e in &stats.entries {
            let id = self.key_id(&e.func);
            f.push(id);
            cc.push(e.cc);
            nc.push(e.nc);
            tt.push(finite(e.tt));
            ct.push(finite(e.ct));
            if !with_edges {
                continue;
            }
            for (caller, edge) in &e.callers {
                e_caller.push(self.key_id(caller));
                e_callee.push(id);
                e_nc.push(edge.nc);
                e_cc.push(edge.cc);
                e_tt.push(finite(edge.tt));
                e_ct.push(finite(edge.ct));
            }
        }
        let mut out = json!({
            "total_calls": stats.total_calls() as f64,
            "primitive_calls": stats.primitive_calls() as f64,
            "total_tt": finite(stats.total_tt()),
            "rows": {"f": f, "cc": cc, "nc": nc, "tt": tt, "ct": ct},
        });
        if with_edges {
            out["edges"] = json!({"caller": e_caller, "callee": e_callee, "nc": e_nc, "cc": e_cc, "tt": e_tt, "ct": e_ct});
        }
        out.to_string()
    }

    /// Callers and callees of function `func` in a view's table, each as
    /// columns (function id, nc, cc, tt, ct) sorted by cumulative time.
    pub fn edges_json(&self, view: usize, func: i64) -> String {
        let v = &self.views[view];
        let index = v.edges.get_or_init(|| {
            let mut index = EdgeIndex::default();
            for e in &v.stats().entries {
                let callee = self.key_id(&e.func);
                for (caller, edge) in &e.callers {
                    let caller = self.key_id(caller);
                    index
                        .callers
                        .entry(callee)
                        .or_default()
                        .push((caller, *edge));
                    index
                        .callees
                        .entry(caller)
                        .or_default()
                        .push((callee, *edge));
                }
            }
            // Sorted as the page shows them: a time that is not finite counts
            // as 0, and total_cmp is a total order (partial_cmp with NaN was
            // not, and the sort panicked: /api/edges answered 500).
            for list in index.callers.values_mut().chain(index.callees.values_mut()) {
                list.sort_by(|a, b| finite(b.1.ct).total_cmp(&finite(a.1.ct)));
            }
            index
        });
        let side = |list: Option<&Vec<(i64, perfkit_profile::EdgeStats)>>| {
            let list = list.map(Vec::as_slice).unwrap_or(&[]);
            json!({
                "f": list.iter().map(|e| e.0).collect::<Vec<_>>(),
                "nc": list.iter().map(|e| e.1.nc).collect::<Vec<_>>(),
                "cc": list.iter().map(|e| e.1.cc).collect::<Vec<_>>(),
                "tt": list.iter().map(|e| finite(e.1.tt)).collect::<Vec<_>>(),
                "ct": list.iter().map(|e| finite(e.1.ct)).collect::<Vec<_>>(),
            })
        };
        json!({"callers": side(index.callers.get(&func)), "callees": side(index.callees.get(&func))}).to_string()
    }

    /// Computes the answers every page asks for first, so the first visit is quick.
    pub fn prepare(&self) {
        self.cached("meta", || self.meta_json());
        self.cached("funcs", || self.funcs_json());
        self.cached("stats0", || self.stats_json(0, false));
    }

    /// The per-function comparison of the two runs (regressions first).
    pub fn diff_json(&self) -> String {
        let Some(rows) = &self.diff_rows else {
            return "null".into();
        };
        let f: Vec<i64> = rows.iter().map(|r| self.key_id(&r.func)).collect();
        let col = |get: fn(&FuncDelta) -> f64| -> Vec<f64> {
            rows.iter().map(|r| finite(get(r))).collect()
        };
        json!({
            "f": f,
            "before_nc": rows.iter().map(|r| r.before_nc).collect::<Vec<_>>(),
            "after_nc": rows.iter().map(|r| r.after_nc).collect::<Vec<_>>(),
            "before_tt": col(|r| r.before_tt),
            "after_tt": col(|r| r.after_tt),
            "before_ct": col(|r| r.before_ct),
            "after_ct": col(|r| r.after_ct),
        })
        .to_string()
    }

    /// A laid-out piece of a view's tree: the subtree of `root`, at most
    /// `max_depth` levels below it, without frames narrower than `min_frac`
    /// of the root, and at most `max_nodes` frames (the deepest levels go
    /// first). Frames come in preorder with their parent's index in the
    /// slice, depth, and horizontal extent `x`, `w` as fractions of the root;
    /// with the path from the view's root down to it (`path`, `path_funcs`)
    /// and the total of its parent (`parent_total`, null for the view's root).
    pub fn slice_json(
        &self,
        view: usize,
        root: u64,
        max_depth: u32,
        min_frac: f64,
        max_nodes: usize,
    ) -> Result<String, String> {
        let v = self.views.get(view).ok_or("no such view")?;
        if root >= v.thread.nodes.len() as u64 {
            return Err(format!("no frame {root} in this view"));
        }
        let root = root as NodeId;
        let min_frac = if min_frac.is_finite() {
            min_frac.clamp(0.0, 1.0)
        } else {
            DEFAULT_MIN_FRACTION
        };
        let max_depth = max_depth.min(MAX_SLICE_DEPTH);

        // First pass: how many frames each level would bring, to cut the
        // depth so the slice stays within `max_nodes`; one level more than
        // asked for, to know whether the depth asked for cuts frames off.
        let mut per_level: Vec<usize> = Vec::new();
        layout(v, root, max_depth + 1, min_frac, |_, depth, _, _, _| {
            let d = depth as usize;
            if per_level.len() <= d {
                per_level.resize(d + 1, 0);
            }
            per_level[d] += 1;
            true
        });
        let mut depth_cut = max_depth;
        let mut sum = 0usize;
        for (d, count) in per_level.iter().enumerate() {
            sum += count;
            if sum > max_nodes {
                depth_cut = (d as u32).saturating_sub(1);
                break;
            }
        }
        let truncated = (depth_cut as usize + 1) < per_level.len();

        let mut cols = SliceColumns::default();
        let diff = v.before.is_some();
        layout(v, root, depth_cut, min_frac, |id, depth, x, w, parent| {
            let node = &v.thread.nodes[id as usize];
            cols.id.push(id);
            cols.parent.push(parent);
            cols.func
                .push(if id == 0 { -1 } else { self.canon(node.func) });
            cols.depth.push(depth);
            cols.x.push(x);
            cols.w.push(w);
            cols.calls.push(node.calls);
            cols.own.push(node.own_ns);
            cols.total.push(v.total(id));
            if diff {
                cols.before_total.push(v.before_total(id));
                cols.before_own
                    .push(v.before.as_ref().map_or(0, |b| b[id as usize].own_ns));
            }
            true
        });

        // The path from the view's root down to the slice's root, for breadcrumbs.
        let mut path = Vec::new();
        let mut at = root;
        while at != 0 {
            path.push(at);
            at = v.thread.nodes[at as usize].parent;
        }
        path.reverse();
        let path_funcs: Vec<i64> = path
            .iter()
            .map(|&n| self.canon(v.thread.nodes[n as usize].func))
            .collect();

        // The total of the root's caller, for its "% of parent" (none for the
        // view's own root).
        let parent_total = (root != 0).then(|| v.total(v.thread.nodes[root as usize].parent));

        let mut out = String::with_capacity(cols.id.len() * 64 + 256);
        let _ = write!(
            out,
            r#"{{"view":{view},"root":{root},"min":{min_frac},"depth":{depth_cut},"truncated":{truncated},"path":{},"path_funcs":{},"parent_total":{},"#,
            json!(path),
            json!(path_funcs),
            json!(parent_total)
        );
        cols.write(&mut out, diff);
        out.push('}');
        Ok(out)
    }

    /// Everything the page would fetch, for the static export: metadata,
    /// functions, each view's table and its top slice, and the diff.
    pub fn embedded_json(&self, min_frac: f64, max_nodes: usize) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            r#"{{"meta":{},"funcs":{},"diff":{},"stats":["#,
            self.meta_json(),
            self.funcs_json(),
            self.diff_json()
        );
        for v in 0..self.views.len() {
            if v > 0 {
                out.push(',');
            }
            out.push_str(&self.stats_json(v, true));
        }
        out.push_str(r#"],"slices":["#);
        for v in 0..self.views.len() {
            if v > 0 {
                out.push(',');
            }
            // As deep as the node budget allows: an export has no server to
            // fetch deeper levels from (a deep recursion's leaf would be lost).
            let slice = self
                .slice_json(v, 0, MAX_SLICE_DEPTH, min_frac, max_nodes)
                .unwrap_or_else(|_| "null".into());
            out.push_str(&slice);
        }
        out.push_str("]}");
        out
    }
}

fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

#[derive(Default)]
struct SliceColumns {
    id: Vec<NodeId>,
    parent: Vec<i64>,
    func: Vec<i64>,
    depth: Vec<u32>,
    x: Vec<f64>,
    w: Vec<f64>,
    calls: Vec<u64>,
    own: Vec<u64>,
    total: Vec<u64>,
    before_total: Vec<u64>,
    before_own: Vec<u64>,
}

impl SliceColumns {
    fn write(&self, out: &mut String, diff: bool) {
        fn ints<T: std::fmt::Display>(out: &mut String, name: &str, v: &[T]) {
            let _ = write!(out, "\"{name}\":[");
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{x}");
            }
            out.push(']');
        }
        fn floats(out: &mut String, name: &str, v: &[f64]) {
            let _ = write!(out, "\"{name}\":[");
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // Nine significant digits keep sub-pixel accuracy at any zoom the page can reach.
                let _ = write!(out, "{}", format_frac(*x));
            }
            out.push(']');
        }
        ints(out, "id", &self.id);
        out.push(',');
        ints(out, "p", &self.parent);
        out.push(',');
        ints(out, "f", &self.func);
        out.push(',');
        ints(out, "d", &self.depth);
        out.push(',');
        floats(out, "x", &self.x);
        out.push(',');
        floats(out, "w", &self.w);
        out.push(',');
        ints(out, "calls", &self.calls);
        out.push(',');
        ints(out, "own", &self.own);
        out.push(',');
        ints(out, "total", &self.total);
        if diff {
            out.push(',');
            ints(out, "btotal", &self.before_total);
            out.push(',');
            ints(out, "bown", &self.before_own);
        }
    }
}

fn format_frac(x: f64) -> String {
    if !x.is_finite() || x <= 0.0 {
        return "0".into();
    }
    let s = format!("{x:.12}");
    let s = s.trim_end_matches('0');
    s.trim_end_matches('.').to_string()
}

/// Walks the subtree of `root` in preorder, laying each frame out as a
/// share `[x, x + w)` of the root's width, and calls `visit(id, depth, x, w,
/// parent_index)` for each frame at least `min_frac` wide and at most
/// `max_depth` below the root (the root itself at depth 0). Children wider
/// together than their parent (an inferred tree can say so) are scaled to fit.
/// Iterative: any depth is safe.
fn layout(
    v: &View,
    root: NodeId,
    max_depth: u32,
    min_frac: f64,
    mut visit: impl FnMut(NodeId, u32, f64, f64, i64) -> bool,
) {
    let root_total = v.total(root) as f64;
    let mut emitted: i64 = 0;
    // (node, depth, x, w, index of the parent in the output)
    let mut stack: Vec<(NodeId, u32, f64, f64, i64)> = vec![(root, 0, 0.0, 1.0, -1)];
    let mut kids: Vec<(NodeId, u32, f64, f64, i64)> = Vec::new();
    while let Some((id, depth, x, w, parent)) = stack.pop() {
        if !visit(id, depth, x, w, parent) {
            continue;
        }
        let me = emitted;
        emitted += 1;
        if depth >= max_depth || root_total <= 0.0 {
            continue;
        }
        let children = v.children.of(id);
        let sum: f64 = children
            .iter()
            .map(|&c| v.thread.nodes[c as usize].total_ns as f64)
            .sum();
        if sum <= 0.0 {
            continue;
        }
        let scale = if sum / root_total > w {
            w * root_total / sum
        } else {
            1.0
        };
        kids.clear();
        let mut cx = x;
        for &c in children {
            let cw = v.thread.nodes[c as usize].total_ns as f64 / root_total * scale;
            if cw >= min_frac && cw > 0.0 {
                kids.push((c, depth + 1, cx, cw, me));
            }
            cx += cw;
        }
        stack.extend(kids.drain(..).rev());
    }
}

struct Params<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Params<'a> {
    fn parse(query: &'a str) -> Params<'a> {
        Params(
            query
                .split('&')
                .filter(|s| !s.is_empty())
                .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                .collect(),
        )
    }
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
    /// A whole number `name=N` (`default` when absent). Anything else, a
    /// negative number, a fraction or one beyond u64 (`1e400`), is an error:
    /// it used to fall back to the default silently, so `view=-1` showed view 0.
    fn whole(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| format!("{name} must be a whole number, not {}", shown(v))),
        }
    }
    /// A share `name=X` between 0 and 1 (`default` when absent); more than 1
    /// is 1, anything that is not a number from 0 up is an error.
    fn fraction(&self, name: &str, default: f64) -> Result<f64, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(|x| x.min(1.0))
                .ok_or_else(|| format!("{name} must be a number from 0 to 1, not {}", shown(v))),
        }
    }
    fn view(&self, viewer: &Viewer) -> Result<usize, String> {
        let v = self.whole("view", 0)?;
        match usize::try_from(v) {
            Ok(v) if v < viewer.views.len() => Ok(v),
            _ => Err(format!("no view {v}")),
        }
    }
}

/// A parameter's value in an error message: quoted, and cut short.
fn shown(v: &str) -> String {
    let mut cut: String = v.chars().take(40).collect();
    if cut.len() < v.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}
