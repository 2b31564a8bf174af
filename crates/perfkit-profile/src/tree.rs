//! The call tree: every distinct call path of every thread, with calls, own and total time.

use serde::{Deserialize, Serialize};

/// Index of a function in [`CallTree::funcs`].
pub type FuncId = u32;
/// Index of a node in [`ThreadTree::nodes`].
pub type NodeId = u32;

/// Marks the root node of a thread tree, which stands for no function.
pub const ROOT_FUNC: FuncId = u32::MAX;

/// A function as pstats names it: `(filename, lineno, funcname)`.
///
/// Python functions carry their code object's `co_filename`, `co_firstlineno`
/// and `co_name`; C functions are `("~", 0, "<built-in method builtins.len>")`
/// exactly as cProfile names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FuncKey {
    pub file: String,
    pub line: u32,
    pub name: String,
}

impl FuncKey {
    pub fn new(file: impl Into<String>, line: u32, name: impl Into<String>) -> Self {
        FuncKey {
            file: file.into(),
            line,
            name: name.into(),
        }
    }

    /// A built-in (C) function, keyed as cProfile keys it.
    pub fn builtin(name: impl Into<String>) -> Self {
        FuncKey {
            file: "~".into(),
            line: 0,
            name: name.into(),
        }
    }

    pub fn is_builtin(&self) -> bool {
        self.file == "~" && self.line == 0
    }

    /// pstats' `func_strip_path`: the file's base name (`os.path.basename`).
    pub fn strip_dir(&self) -> FuncKey {
        let base = self.file.rsplit('/').next().unwrap_or("");
        FuncKey::new(base, self.line, self.name.clone())
    }

    /// [`FuncKey::std_string`] made safe for a terminal: control characters
    /// and bidirectional overrides, which a crafted file can put in a name to
    /// move the cursor, recolour or fake lines of a report, are written as
    /// escapes (`\x1b`, `\n`, `\u202e`). pstats prints them raw.
    pub fn shown_string(&self) -> String {
        let raw = self.std_string();
        if !raw.chars().any(is_unsafe_on_terminal) {
            return raw;
        }
        let mut out = String::with_capacity(raw.len() + 8);
        for c in raw.chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if is_unsafe_on_terminal(c) && (c as u32) < 0x100 => {
                    let _ =
                        std::fmt::Write::write_fmt(&mut out, format_args!("\\x{:02x}", c as u32));
                }
                c if is_unsafe_on_terminal(c) => {
                    let _ =
                        std::fmt::Write::write_fmt(&mut out, format_args!("\\u{:04x}", c as u32));
                }
                c => out.push(c),
            }
        }
        out
    }

    /// pstats' `func_std_string`: `file:line(name)`, or `{name}` for `<name>` built-ins.
    pub fn std_string(&self) -> String {
        if self.is_builtin() {
            if self.name.starts_with('<') && self.name.ends_with('>') && self.name.len() >= 2 {
                format!("{{{}}}", &self.name[1..self.name.len() - 1])
            } else {
                self.name.clone()
            }
        } else {
            format!("{}:{}({})", self.file, self.line, self.name)
        }
    }
}

/// One call path. Times are nanoseconds of the profile's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The function called at the end of this path ([`ROOT_FUNC`] for the root).
    pub func: FuncId,
    /// The node this one was called from; the root is its own parent (0).
    pub parent: NodeId,
    /// Completed calls along exactly this path.
    pub calls: u64,
    /// Time spent in the function itself, children excluded.
    pub own_ns: u64,
    /// Time from call to return, children included.
    pub total_ns: u64,
}

/// The tree of one thread (of one process). `nodes[0]` is the root; every
/// other node's parent has a smaller index, so a forward pass visits parents
/// before children.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadTree {
    pub name: String,
    /// `threading.get_ident()` of the thread (0 when unknown).
    pub thread_id: u64,
    /// Process id that recorded this tree (0 when unknown).
    pub pid: u32,
    pub nodes: Vec<Node>,
}

impl ThreadTree {
    pub fn new(name: impl Into<String>, thread_id: u64, pid: u32) -> Self {
        ThreadTree {
            name: name.into(),
            thread_id,
            pid,
            nodes: vec![Node {
                func: ROOT_FUNC,
                parent: 0,
                calls: 0,
                own_ns: 0,
                total_ns: 0,
            }],
        }
    }

    /// Sum of the total time of the root's children.
    pub fn total_ns(&self) -> u64 {
        self.nodes
            .iter()
            .skip(1)
            .filter(|n| n.parent == 0)
            .map(|n| n.total_ns)
            .sum()
    }
}

/// Which clock measured the times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Clock {
    /// Monotonic wall-clock time.
    #[default]
    Wall,
    /// CPU time of the thread.
    Cpu,
}

/// Where the tree came from and how far it can be trusted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Meta {
    /// `true` when every path was recorded; `false` when the tree was
    /// inferred from caller/callee pairs (a foreign pstats file) and is approximate.
    pub exact: bool,
    pub clock: Clock,
    /// Whether C functions were recorded as their own rows (cProfile's `builtins`).
    pub builtins: bool,
    /// Recording tool and interpreter, e.g. `perfkit 0.1.0 / CPython 3.11.7`.
    pub recorder: String,
    /// Wall-clock length of the recording in nanoseconds (0 when unknown).
    pub duration_ns: u64,
    /// Unix time in seconds when the recording started (0 when unknown).
    pub started_unix: f64,
}

/// Every thread's call tree over one shared function table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct CallTree {
    pub funcs: Vec<FuncKey>,
    pub threads: Vec<ThreadTree>,
    pub meta: Meta,
}

/// Children of every node of a [`ThreadTree`], in index order, stored flat
/// (one allocation) because trees can have millions of nodes.
#[derive(Clone, Debug, Default)]
pub struct Children {
    offsets: Vec<u32>,
    list: Vec<NodeId>,
}

impl Children {
    /// Links each node to its parent. Nodes whose parent index is not smaller
    /// than their own (or out of range) are left out, so walks from the root
    /// stay finite on malformed trees.
    pub fn new(thread: &ThreadTree) -> Children {
        let n = thread.nodes.len();
        let linked = |i: usize, node: &Node| i > 0 && (node.parent as usize) < i;
        let mut offsets = vec![0u32; n + 1];
        for (i, node) in thread.nodes.iter().enumerate() {
            if linked(i, node) {
                offsets[node.parent as usize + 1] += 1;
            }
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut list = vec![0; offsets[n] as usize];
        for (i, node) in thread.nodes.iter().enumerate() {
            if linked(i, node) {
                let slot = &mut fill[node.parent as usize];
                list[*slot as usize] = i as NodeId;
                *slot += 1;
            }
        }
        Children { offsets, list }
    }

    /// The children of `node` in index order (empty for an unknown node).
    pub fn of(&self, node: NodeId) -> &[NodeId] {
        let i = node as usize;
        if i + 1 >= self.offsets.len() {
            return &[];
        }
        &self.list[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// One step of a depth-first walk: entering a node (parents before children)
/// or leaving it (after all its descendants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visit {
    Enter(NodeId),
    Leave(NodeId),
}

/// Iterative preorder walk below the root (the root itself is not visited),
/// so trees of any depth never grow the call stack.
pub struct Walk<'a> {
    children: &'a Children,
    stack: Vec<(NodeId, u32)>,
    started: bool,
}

impl<'a> Walk<'a> {
    pub fn new(children: &'a Children) -> Walk<'a> {
        Walk {
            children,
            stack: Vec::new(),
            started: false,
        }
    }

    /// Number of nodes entered and not yet left (the root excluded).
    pub fn depth(&self) -> usize {
        self.stack.len().saturating_sub(1)
    }
}

impl Iterator for Walk<'_> {
    type Item = Visit;

    fn next(&mut self) -> Option<Visit> {
        if !self.started {
            self.started = true;
            if self.children.offsets.is_empty() {
                return None;
            }
            self.stack.push((0, 0));
        }
        let (node, cursor) = self.stack.last_mut()?;
        let kids = self.children.of(*node);
        if let Some(&child) = kids.get(*cursor as usize) {
            *cursor += 1;
            self.stack.push((child, 0));
            return Some(Visit::Enter(child));
        }
        let (done, _) = self.stack.pop()?;
        if self.stack.is_empty() {
            return None;
        }
        Some(Visit::Leave(done))
    }
}

impl ThreadTree {
    /// The child lists of every node; see [`Children`].
    pub fn children(&self) -> Children {
        Children::new(self)
    }
}

impl CallTree {
    /// Checks the invariants every reader guarantees: each thread has a root
    /// at index 0, every other node points to an earlier parent and to a
    /// function of [`CallTree::funcs`]. Returns a one-line description of the
    /// first violation.
    pub fn validate(&self) -> Result<(), String> {
        if self.funcs.len() >= ROOT_FUNC as usize {
            return Err(format!(
                "{} functions is more than a tree can index",
                self.funcs.len()
            ));
        }
        for (t, thread) in self.threads.iter().enumerate() {
            let Some(root) = thread.nodes.first() else {
                return Err(format!("thread {t} ({:?}) has no root node", thread.name));
            };
            if root.func != ROOT_FUNC || root.parent != 0 {
                return Err(format!(
                    "thread {t} ({:?}): node 0 is not a root",
                    thread.name
                ));
            }
            if thread.nodes.len() > NodeId::MAX as usize {
                return Err(format!("thread {t} ({:?}) has too many nodes", thread.name));
            }
            for (i, node) in thread.nodes.iter().enumerate().skip(1) {
                if node.parent as usize >= i {
                    return Err(format!(
                        "thread {t} ({:?}): node {i}'s parent {} does not come before it",
                        thread.name, node.parent
                    ));
                }
                if node.func as usize >= self.funcs.len() {
                    return Err(format!(
                        "thread {t} ({:?}): node {i} names function {} of {}",
                        thread.name,
                        node.func,
                        self.funcs.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// All threads merged into one tree by call path (calls and times summed),
    /// so views can show the whole program at once. A tree with at most one
    /// thread is returned unchanged; nodes of a malformed tree that cannot be placed
    /// (parent not before them, unknown function) are dropped with their
    /// descendants.
    pub fn merged(&self) -> CallTree {
        if self.threads.len() <= 1 {
            return self.clone();
        }
        let pid = match self.threads.first() {
            Some(first) if self.threads.iter().all(|t| t.pid == first.pid) => first.pid,
            _ => 0,
        };
        let mut out = ThreadTree::new("all threads", 0, pid);
        let mut paths = Default::default();
        let known = self.funcs.len();
        for thread in &self.threads {
            crate::sum::add_by_path(&mut out, &mut paths, thread, |f| {
                ((f as usize) < known).then_some(f)
            });
        }
        CallTree {
            funcs: self.funcs.clone(),
            threads: vec![out],
            meta: self.meta.clone(),
        }
    }
}

/// Every function of a tree's list as an index per [`FuncId`]: the first id
/// with an equal [`FuncKey`]. Keeps per-function tables correct even when a
/// recorder interned one function twice.
pub(crate) fn canonical_ids(funcs: &[FuncKey]) -> Vec<FuncId> {
    let mut first: rustc_hash::FxHashMap<&FuncKey, FuncId> = Default::default();
    funcs
        .iter()
        .enumerate()
        .map(|(i, key)| *first.entry(key).or_insert(i as FuncId))
        .collect()
}

/// Characters a report must not hand a terminal as they are.
fn is_unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}
