//! Trees shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use perfkit_profile::{CallTree, Clock, FuncId, FuncKey, Meta, Node, NodeId, ThreadTree};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Builds trees node by node.
pub struct Builder {
    pub tree: CallTree,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    pub fn new() -> Builder {
        Builder {
            tree: CallTree {
                funcs: Vec::new(),
                threads: Vec::new(),
                meta: Meta {
                    exact: true,
                    ..Meta::default()
                },
            },
        }
    }

    pub fn func(&mut self, file: &str, line: u32, name: &str) -> FuncId {
        self.tree.funcs.push(FuncKey::new(file, line, name));
        (self.tree.funcs.len() - 1) as FuncId
    }

    pub fn builtin(&mut self, name: &str) -> FuncId {
        self.tree.funcs.push(FuncKey::builtin(name));
        (self.tree.funcs.len() - 1) as FuncId
    }

    pub fn thread(&mut self, name: &str, thread_id: u64, pid: u32) -> usize {
        self.tree
            .threads
            .push(ThreadTree::new(name, thread_id, pid));
        self.tree.threads.len() - 1
    }

    pub fn node(
        &mut self,
        thread: usize,
        parent: NodeId,
        func: FuncId,
        calls: u64,
        own_ns: u64,
        total_ns: u64,
    ) -> NodeId {
        let nodes = &mut self.tree.threads[thread].nodes;
        nodes.push(Node {
            func,
            parent,
            calls,
            own_ns,
            total_ns,
        });
        (nodes.len() - 1) as NodeId
    }
}

/// A tree that exercises every column of pstats' table: two threads,
/// recursion, mutual recursion, built-ins with and without angle brackets,
/// non-ASCII names, counts beyond 32 and 53 bits, a rounding tie (1.0625 s),
/// a function whose only calls are recursive ones (cc = 0) and one with no
/// completed calls (nc = 0). `tests/fixtures/perfkit_tree.prof` holds it as
/// written by perfkit 0.1 (trailer version 1).
pub fn rich_tree() -> CallTree {
    let mut b = Builder::new();
    let module = b.func("main.py", 1, "<module>");
    let main = b.func("main.py", 10, "main");
    let work = b.func("/opt/my project/lib.py", 20, "work");
    let recurse = b.func("lib.py", 30, "recurse");
    let len = b.builtin("<built-in method builtins.len>");
    let append = b.builtin("<method 'append' of 'list' objects>");
    let naive = b.func("ünïcode.py", 5, "naïve_func");
    let ping = b.func("lib.py", 40, "ping");
    let pong = b.func("lib.py", 50, "pong");
    let weird = b.builtin("builtins.weird");
    let huge = b.func("big.py", 1, "huge");
    let idle = b.func("idle.py", 1, "idle");
    let nothing = b.func("idle.py", 9, "never_finished");

    let t = b.thread("MainThread", 140_000_000_001, 4242);
    let m = b.node(t, 0, module, 1, 1_000, 6_500_000_000);
    let mn = b.node(t, m, main, 1, 62_500, 6_499_000_000);
    let w = b.node(t, mn, work, 3, 1_062_500_000, 1_500_000_000);
    b.node(t, w, len, 3_000_000_000, 400_000_000, 400_000_000);
    b.node(t, w, append, 7, 37_500_000, 37_500_000);
    let r1 = b.node(t, mn, recurse, 1, 1_000, 300_000);
    let r2 = b.node(t, r1, recurse, 1, 2_000, 299_000);
    b.node(t, r2, recurse, 2, 297_000, 297_000);
    let p1 = b.node(t, mn, ping, 1, 500, 90_000);
    let q1 = b.node(t, p1, pong, 1, 500, 89_500);
    b.node(t, q1, ping, 1, 89_000, 89_000);
    b.node(t, mn, naive, 5, 5_000, 5_000);
    b.node(t, mn, weird, 2, 0, 0);
    b.node(
        t,
        mn,
        huge,
        100_000_000_000_000_000,
        3_000_000_000,
        3_000_000_000,
    );
    let i1 = b.node(t, mn, idle, 0, 7_000, 15_000);
    b.node(t, i1, idle, 4, 8_000, 8_000);
    b.node(t, mn, nothing, 0, 0, 0);

    let t2 = b.thread("Worker-1", 140_000_000_002, 4242);
    let w2 = b.node(t2, 0, work, 2, 500_000_000, 700_000_000);
    b.node(t2, w2, len, 10, 100_000, 100_000);
    let r = b.node(t2, w2, recurse, 1, 150_000_000, 199_900_000);
    b.node(t2, r, recurse, 1, 49_900_000, 49_900_000);

    let mut tree = b.tree;
    tree.meta = Meta {
        exact: true,
        clock: Clock::Wall,
        builtins: true,
        recorder: "perfkit 0.1.0 / CPython 3.11.7".into(),
        duration_ns: 7_000_000_000,
        started_unix: 1_700_000_000.25,
    };
    tree
}
