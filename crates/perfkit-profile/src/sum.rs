//! Summing call trees that arrive piece by piece: the trees a pool's worker
//! processes record, one per batch of tasks, added into the profile of the
//! process that sent the tasks.
//!
//! Each piece is added by process, thread and call path, so a worker that ran
//! a hundred batches is one tree, as if it had recorded them in one go. Owns
//! only the summing; what is recorded, and when, is the recorder's.

use crate::tree::{CallTree, FuncId, FuncKey, Node, NodeId, ThreadTree, ROOT_FUNC};
use rustc_hash::FxHashMap;

/// A [`CallTree`] that other trees are added into, keeping the indexes that
/// make each addition cost only the size of what is added.
#[derive(Debug, Default)]
pub struct TreeSum {
    tree: CallTree,
    func_ids: FxHashMap<FuncKey, FuncId>,
    /// `(pid, thread_id)` → index in `tree.threads`.
    threads: FxHashMap<(u32, u64), usize>,
    /// Per thread: `(parent node, function)` → node.
    paths: Vec<FxHashMap<(NodeId, FuncId), NodeId>>,
}

impl TreeSum {
    /// Starts from `tree` (its meta is the sum's).
    pub fn from_tree(tree: CallTree) -> TreeSum {
        let meta = tree.meta.clone();
        let mut sum = TreeSum::default();
        sum.tree.meta = meta;
        sum.add(&tree);
        sum
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.tree.threads.is_empty()
    }

    /// What was added so far.
    pub fn tree(&self) -> &CallTree {
        &self.tree
    }

    pub fn into_tree(self) -> CallTree {
        self.tree
    }

    /// Adds every thread of `other`: into the thread of the same process and
    /// thread id when there is one (calls and times summed along each path),
    /// else as a thread of its own. Nodes of a malformed tree that cannot be
    /// placed (parent not before them, unknown function) are dropped with
    /// their descendants.
    pub fn add(&mut self, other: &CallTree) {
        let funcs: Vec<FuncId> = other.funcs.iter().map(|key| self.func_id(key)).collect();
        for thread in &other.threads {
            let t = *self
                .threads
                .entry((thread.pid, thread.thread_id))
                .or_insert_with(|| {
                    self.tree.threads.push(ThreadTree::new(
                        thread.name.clone(),
                        thread.thread_id,
                        thread.pid,
                    ));
                    self.paths.push(FxHashMap::default());
                    self.tree.threads.len() - 1
                });
            add_by_path(&mut self.tree.threads[t], &mut self.paths[t], thread, |f| {
                funcs.get(f as usize).copied()
            });
        }
    }

    fn func_id(&mut self, key: &FuncKey) -> FuncId {
        if let Some(&id) = self.func_ids.get(key) {
            return id;
        }
        let id = self.tree.funcs.len() as FuncId;
        debug_assert!(id != ROOT_FUNC);
        self.tree.funcs.push(key.clone());
        self.func_ids.insert(key.clone(), id);
        id
    }
}

/// Adds `thread`'s calls and times into `out` along the same call paths;
/// `paths` indexes `out`'s nodes by `(parent, function)`, and `func` maps a
/// function of `thread`'s tree to `out`'s (None: unknown, dropped). Nodes
/// that cannot be placed (parent not before them) are dropped with their
/// descendants.
pub(crate) fn add_by_path(
    out: &mut ThreadTree,
    paths: &mut FxHashMap<(NodeId, FuncId), NodeId>,
    thread: &ThreadTree,
    func: impl Fn(FuncId) -> Option<FuncId>,
) {
    const UNPLACED: NodeId = NodeId::MAX;
    let mut map = vec![UNPLACED; thread.nodes.len()];
    if let Some(root) = thread.nodes.first() {
        map[0] = 0;
        out.nodes[0].calls = out.nodes[0].calls.saturating_add(root.calls);
    }
    for (i, node) in thread.nodes.iter().enumerate().skip(1) {
        let parent = node.parent as usize;
        if parent >= i || map[parent] == UNPLACED {
            continue;
        }
        let Some(f) = func(node.func) else {
            continue;
        };
        let key = (map[parent], f);
        let id = *paths.entry(key).or_insert_with(|| {
            out.nodes.push(Node {
                func: f,
                parent: key.0,
                calls: 0,
                own_ns: 0,
                total_ns: 0,
            });
            (out.nodes.len() - 1) as NodeId
        });
        let sum = &mut out.nodes[id as usize];
        sum.calls = sum.calls.saturating_add(node.calls);
        sum.own_ns = sum.own_ns.saturating_add(node.own_ns);
        sum.total_ns = sum.total_ns.saturating_add(node.total_ns);
        map[i] = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of one thread from `(path, calls, own)` rows, each path a list of function names.
    fn tree(pid: u32, thread_id: u64, rows: &[(&[&str], u64, u64)]) -> CallTree {
        let mut sum = TreeSum::default();
        for (path, calls, own) in rows {
            let mut t = CallTree::default();
            let mut thread = ThreadTree::new("MainThread", thread_id, pid);
            for (depth, name) in path.iter().enumerate() {
                t.funcs.push(FuncKey::new("f.py", 1, *name));
                let last = depth + 1 == path.len();
                thread.nodes.push(Node {
                    func: depth as FuncId,
                    parent: depth as NodeId,
                    calls: if last { *calls } else { 0 },
                    own_ns: if last { *own } else { 0 },
                    total_ns: if last { *own } else { 0 },
                });
            }
            t.threads.push(thread);
            sum.add(&t);
        }
        sum.into_tree()
    }

    fn rows(t: &CallTree) -> Vec<(u32, String, u64, u64)> {
        let mut out = vec![];
        for thread in &t.threads {
            for node in thread.nodes.iter().skip(1) {
                let mut path = vec![];
                let mut at = node;
                loop {
                    path.push(t.funcs[at.func as usize].name.clone());
                    if at.parent == 0 {
                        break;
                    }
                    at = &thread.nodes[at.parent as usize];
                }
                path.reverse();
                out.push((thread.pid, path.join(">"), node.calls, node.own_ns));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn pieces_of_one_thread_sum_by_path() {
        let mut sum = TreeSum::default();
        sum.add(&tree(7, 1, &[(&["run", "f"], 3, 30)]));
        sum.add(&tree(
            7,
            1,
            &[(&["run", "f"], 2, 20), (&["run", "g"], 1, 5)],
        ));
        // Function ids of the second piece differ from the first's: matched by key.
        sum.add(&tree(7, 1, &[(&["g"], 4, 8)]));
        let t = sum.into_tree();
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.threads.len(), 1);
        assert_eq!(
            rows(&t),
            vec![
                (7, "g".into(), 4, 8),
                (7, "run".into(), 0, 0),
                (7, "run>f".into(), 5, 50),
                (7, "run>g".into(), 1, 5),
            ]
        );
    }

    #[test]
    fn other_processes_and_threads_stay_apart() {
        let mut sum = TreeSum::from_tree(tree(1, 1, &[(&["main"], 1, 100)]));
        sum.add(&tree(2, 1, &[(&["f"], 1, 10)]));
        sum.add(&tree(3, 1, &[(&["f"], 1, 11)]));
        sum.add(&tree(2, 9, &[(&["f"], 1, 12)]));
        let t = sum.into_tree();
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.threads.len(), 4);
        assert_eq!(
            t.funcs.iter().filter(|k| k.name == "f").count(),
            1,
            "one function, one entry"
        );
    }

    #[test]
    fn malformed_nodes_are_dropped() {
        let mut t = tree(5, 1, &[(&["a", "b"], 1, 1)]);
        t.threads[0].nodes.push(Node {
            func: 99,
            parent: 0,
            calls: 1,
            own_ns: 1,
            total_ns: 1,
        });
        t.threads[0].nodes.push(Node {
            func: 0,
            parent: 7,
            calls: 1,
            own_ns: 1,
            total_ns: 1,
        });
        let mut sum = TreeSum::default();
        sum.add(&t);
        let out = sum.into_tree();
        assert_eq!(out.validate(), Ok(()));
        assert_eq!(rows(&out).len(), 2);
    }
}
