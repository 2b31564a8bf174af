//! One thread's recorder: the call tree as it grows, and the stack of calls
//! in flight. Every event of every hook ends in [`ThreadRecorder::enter`] or
//! [`ThreadRecorder::exit`], so these are kept to a cache check, at most one
//! hash lookup, and a few additions.

use perfkit_profile::{FuncId, Node, ThreadTree, ROOT_FUNC};
use rustc_hash::FxHashMap;

/// A node of the tree while recording. `key` is the identity the hooks see
/// (a code object or a `PyMethodDef` address), resolved to a [`FuncId`]
/// only when the node is first created.
pub(crate) struct NodeRec {
    key: usize,
    parent: u32,
    func: FuncId,
    pub(crate) flags: u8,
    calls: u64,
    own: u64,
    total: u64,
    /// The child reached last from here: loops call the same callee again and again.
    last_key: usize,
    last_child: u32,
}

/// The function is a generator, coroutine or async generator.
pub(crate) const FLAG_GENERATOR: u8 = 1;
/// The function is a C function (its calls come from C-call events).
pub(crate) const FLAG_C: u8 = 2;

#[derive(Clone, Copy)]
struct Frame {
    node: u32,
    start: u64,
    /// Time spent in completed callees of this call.
    children: u64,
    /// The interpreter frame of the innermost Python call (this one, or for
    /// a C call the Python call it runs in); 0 when not known.
    frame: usize,
}

pub(crate) struct ThreadRecorder {
    pub(crate) thread_id: u64,
    pub(crate) name: Option<String>,
    /// Where the frame-evaluation hook stops recursing (a copy of [`crate::stack::this_thread_guard`]).
    pub(crate) stack_guard: usize,
    nodes: Vec<NodeRec>,
    children: FxHashMap<(u32, usize), u32>,
    /// `stack[0]` stands for the thread's root and is never popped.
    stack: Vec<Frame>,
}

impl ThreadRecorder {
    pub(crate) fn new(thread_id: u64) -> Self {
        let root = NodeRec {
            key: 0,
            parent: 0,
            func: ROOT_FUNC,
            flags: 0,
            calls: 0,
            own: 0,
            total: 0,
            last_key: 0,
            last_child: 0,
        };
        ThreadRecorder {
            thread_id,
            name: None,
            stack_guard: 0,
            nodes: vec![root],
            children: FxHashMap::default(),
            stack: vec![Frame {
                node: 0,
                start: 0,
                children: 0,
                frame: 0,
            }],
        }
    }

    /// The node for calling `key` from the current call, created on first use
    /// with the function and flags that `resolve` gives.
    #[inline(always)]
    pub(crate) fn child(&mut self, key: usize, resolve: impl FnOnce() -> (FuncId, u8)) -> u32 {
        // SAFETY: the stack always holds the root frame, and every node id on it is in `nodes`.
        let parent = unsafe { self.stack.last().unwrap_unchecked().node };
        let p = unsafe { self.nodes.get_unchecked(parent as usize) };
        if p.last_key == key {
            return p.last_child;
        }
        self.child_slow(parent, key, resolve)
    }

    #[inline(never)]
    fn child_slow(
        &mut self,
        parent: u32,
        key: usize,
        resolve: impl FnOnce() -> (FuncId, u8),
    ) -> u32 {
        let id = match self.children.get(&(parent, key)) {
            Some(&id) => id,
            None => {
                let (func, flags) = resolve();
                let id = self.nodes.len() as u32;
                self.nodes.push(NodeRec {
                    key,
                    parent,
                    func,
                    flags,
                    calls: 0,
                    own: 0,
                    total: 0,
                    last_key: 0,
                    last_child: 0,
                });
                self.children.insert((parent, key), id);
                id
            }
        };
        let p = &mut self.nodes[parent as usize];
        p.last_key = key;
        p.last_child = id;
        id
    }

    #[inline(always)]
    pub(crate) fn flags(&self, node: u32) -> u8 {
        self.nodes[node as usize].flags
    }

    /// Starts a call of `node` at time `now`; returns the depth to give back to [`Self::exit_to`].
    #[inline(always)]
    pub(crate) fn enter(&mut self, node: u32, now: u64) -> usize {
        // SAFETY: the stack always holds the root frame.
        let frame = unsafe { self.stack.last().unwrap_unchecked().frame };
        self.enter_frame(node, now, frame)
    }

    /// [`Self::enter`] for a Python call whose interpreter frame is `frame`.
    #[inline(always)]
    pub(crate) fn enter_frame(&mut self, node: u32, now: u64, frame: usize) -> usize {
        self.stack.push(Frame {
            node,
            start: now,
            children: 0,
            frame,
        });
        self.stack.len() - 1
    }

    /// The interpreter frame of the innermost Python call in flight (0: none known).
    #[cfg(Py_3_12)]
    #[inline(always)]
    pub(crate) fn top_frame(&self) -> usize {
        // SAFETY: the stack always holds the root frame.
        unsafe { self.stack.last().unwrap_unchecked().frame }
    }

    /// Ends the innermost Python call, whose frame is `frame`, and any call
    /// still open in it, at `now`: it has returned though its evaluation
    /// has not (see `frames::has_returned`).
    #[cfg(Py_3_12)]
    #[cold]
    pub(crate) fn end_returned(&mut self, frame: usize, now: u64) {
        while self.stack.len() > 1 && self.top_frame() == frame {
            self.pop(now);
        }
    }

    /// Ends the innermost call. A return with no call in flight (a frame that
    /// started before profiling did) is ignored, as cProfile ignores it.
    #[cfg(not(Py_3_12))]
    #[inline(always)]
    pub(crate) fn exit(&mut self, now: u64) {
        if self.stack.len() > 1 {
            self.pop(now);
        }
    }

    /// Ends the innermost call if it is a C call of `key`.
    #[inline(always)]
    pub(crate) fn exit_c(&mut self, key: usize, now: u64) {
        if self.stack.len() > 1 {
            // SAFETY: len > 1, and node ids on the stack are in `nodes`.
            let top = unsafe { self.stack.last().unwrap_unchecked().node };
            let n = unsafe { self.nodes.get_unchecked(top as usize) };
            if n.key == key && n.flags & FLAG_C != 0 {
                self.pop(now);
            }
        }
    }

    /// Ends every call from `depth` up: the frame-evaluation hook knows its
    /// own depth, so a C call left open by an unwinding frame is closed with it.
    #[inline(always)]
    pub(crate) fn exit_to(&mut self, depth: usize, now: u64) {
        while self.stack.len() > depth && self.stack.len() > 1 {
            self.pop(now);
        }
    }

    #[inline(always)]
    fn pop(&mut self, now: u64) {
        // SAFETY: callers check that more than the root frame is on the stack.
        let f = unsafe { self.stack.pop().unwrap_unchecked() };
        let elapsed = now.saturating_sub(f.start);
        // SAFETY: a frame's node index was returned by this recorder's own
        // `nodes.push`, and nodes are never removed while frames are open.
        let n = unsafe { self.nodes.get_unchecked_mut(f.node as usize) };
        n.calls += 1;
        n.total += elapsed;
        n.own += elapsed.saturating_sub(f.children);
        // SAFETY: the root frame is never popped, so one frame is still below.
        let parent = unsafe { self.stack.last_mut().unwrap_unchecked() };
        parent.children += elapsed;
    }

    /// Ends every call in flight at `now`, as cProfile does when it is
    /// disabled: they count as calls that lasted until now.
    pub(crate) fn flush(&mut self, now: u64) {
        self.exit_to(1, now);
    }

    /// Ends every call in flight at the start of the innermost one: for a
    /// CPU clock, another thread's "now" cannot be read, and this undercounts
    /// rather than inventing time.
    pub(crate) fn flush_at_last_event(&mut self) {
        let last = self.stack.last().map(|f| f.start).unwrap_or(0);
        self.exit_to(1, last);
    }

    pub(crate) fn depth(&self) -> usize {
        self.stack.len()
    }

    /// The node of the innermost Python call in flight (C calls above it
    /// skipped: the native function asking, say), or None when none is.
    pub(crate) fn innermost_python_call(&self) -> Option<u32> {
        self.stack[1..]
            .iter()
            .rev()
            .map(|f| f.node)
            .find(|&node| self.nodes[node as usize].flags & FLAG_C == 0)
    }

    /// The identity the hooks saw for `node` (a code object's address, for a Python call).
    pub(crate) fn node_key(&self, node: u32) -> usize {
        self.nodes[node as usize].key
    }

    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Which nodes lie below `root` (not `root` itself; every node below the
    /// thread's root when `root` is 0). Children have larger ids than their
    /// parents, so one forward pass finds them.
    fn below(&self, root: u32) -> Vec<bool> {
        let root = root as usize;
        let mut inside = vec![false; self.nodes.len()];
        for i in root + 1..self.nodes.len() {
            let parent = self.nodes[i].parent as usize;
            inside[i] = parent == root || inside[parent];
        }
        inside
    }

    /// Forgets the calls recorded below `root` (their counts and times go
    /// to 0, so that a tree taken later leaves them out); the nodes stay, for
    /// the same calls made again.
    pub(crate) fn clear_below(&mut self, root: u32) {
        let inside = self.below(root);
        for (node, inside) in self.nodes.iter_mut().zip(inside) {
            if inside {
                node.calls = 0;
                node.own = 0;
                node.total = 0;
            }
        }
    }

    /// The recorded tree, without nodes that never completed a call and have
    /// no such descendant (a generator's creation, say), and without the
    /// `hidden` functions (the profiler's own API): where one leads to no
    /// visible call it is dropped and its time stays in its caller's own
    /// time; where it wraps visible calls (a profiling decorator on a
    /// recursive function) it is spliced out, its callees merged into its
    /// caller's by function.
    ///
    /// `scale` converts clock ticks to nanoseconds.
    pub(crate) fn to_thread_tree(
        &self,
        name: String,
        pid: u32,
        scale: f64,
        hidden: &dyn Fn(FuncId) -> bool,
    ) -> ThreadTree {
        self.tree_below(0, name, pid, scale, hidden)
    }

    /// [`Self::to_thread_tree`] of the calls recorded below `root`, which
    /// become the tree's top-level calls (all of them when `root` is 0).
    pub(crate) fn tree_below(
        &self,
        root: u32,
        name: String,
        pid: u32,
        scale: f64,
        hidden: &dyn Fn(FuncId) -> bool,
    ) -> ThreadTree {
        let ns = |ticks: u64| (ticks as f64 * scale).round() as u64;
        let n = self.nodes.len();
        let inside = self.below(root);
        // Children have larger ids than their parents, so a backward pass sees children first.
        let mut useful = vec![false; n];
        for i in (1..n).rev() {
            if !inside[i] {
                continue;
            }
            let node = &self.nodes[i];
            if node.calls > 0 && !hidden(node.func) {
                useful[i] = true;
            }
            if useful[i] {
                useful[node.parent as usize] = true;
            }
        }
        let mut tree = ThreadTree::new(name, self.thread_id, pid);
        // Where each recorded node went in the output (a spliced node maps to its caller's).
        // (`root` maps to the output's root, 0.)
        let mut out_id = vec![0u32; n];
        let mut index: FxHashMap<(u32, FuncId), u32> = FxHashMap::default();
        for i in 1..n {
            let node = &self.nodes[i];
            if !useful[i] || !inside[i] {
                continue;
            }
            let parent = out_id[node.parent as usize];
            if hidden(node.func) {
                out_id[i] = parent;
                continue;
            }
            let id = *index.entry((parent, node.func)).or_insert_with(|| {
                tree.nodes.push(Node {
                    func: node.func,
                    parent,
                    calls: 0,
                    own_ns: 0,
                    total_ns: 0,
                });
                (tree.nodes.len() - 1) as u32
            });
            let out = &mut tree.nodes[id as usize];
            out.calls += node.calls;
            out.total_ns += ns(node.total);
            out_id[i] = id;
        }
        // Own time is what the total leaves to the children, taken after
        // rounding, so that own + children == total holds exactly in
        // nanoseconds as it does in ticks (dropped hidden calls are no longer
        // children, so their time is their caller's own).
        let mut children_ns = vec![0u64; tree.nodes.len()];
        for node in tree.nodes.iter().skip(1) {
            children_ns[node.parent as usize] += node.total_ns;
        }
        for (node, below) in tree.nodes.iter_mut().zip(children_ns).skip(1) {
            node.own_ns = node.total_ns.saturating_sub(below);
        }
        tree
    }
}
