//! Collapsed stacks, the text format of flamegraph.pl, inferno and py-spy's
//! `--format raw`: one line per call path, `frame;frame;frame weight`.
//!
//! Frames are written as py-spy writes them: `name (file:line)` for Python
//! functions (`line` is the function's first line here), the bare name for
//! built-ins. When a tree has several threads every line starts with a
//! `thread <name>` frame. The weight is the path's own time in microseconds,
//! rounded; paths that round to 0 are left out.
//!
//! Reading: a weight unit is one microsecond of own time (py-spy's sample
//! counts therefore read as one microsecond per sample, which keeps their
//! proportions). The format has no call counts, so every node has
//! `calls = 0`; paths are exact, so `meta.exact` is true. Frame text is parsed
//! back into [`FuncKey`]s: `name (file:line)` and `name (file)` (py-spy
//! without line numbers, line 0); a bare `<built-in …>` or `<method …>` frame
//! is a built-in; any other bare frame is `FuncKey::new("", 0, frame)`.

use std::fmt::Write as _;

use rustc_hash::FxHashMap;

use crate::tree::{CallTree, Clock, FuncId, FuncKey, Meta, Node, NodeId, ThreadTree, Visit, Walk};
use crate::Error;

/// A frame's text. The format has no escaping, so characters that would
/// split frames or lines are replaced.
fn frame_text(key: &FuncKey, out: &mut String) {
    let clean = |s: &str, out: &mut String| {
        out.extend(s.chars().map(|c| {
            if matches!(c, ';' | '\n' | '\r') {
                '_'
            } else {
                c
            }
        }));
    };
    clean(&key.name, out);
    if key.is_builtin() || (key.file.is_empty() && key.line == 0) {
        return;
    }
    out.push_str(" (");
    clean(&key.file, out);
    if key.line != 0 {
        let _ = write!(out, ":{}", key.line);
    }
    out.push(')');
}

/// The collapsed-stacks text for a tree.
pub fn write(tree: &CallTree) -> String {
    let mut out = String::new();
    for_each_line(tree, |path, weight, _| {
        let _ = writeln!(out, "{path} {weight}");
    });
    out
}

/// The most text [`write_bounded`] writes: each line repeats its whole path,
/// so a deep tree's text grows with the square of its depth (a 60,000-deep
/// chain from a 640 KB file: tens of gigabytes).
pub const MAX_TEXT_BYTES: u64 = 512 << 20;

/// [`write`], or an error saying why not when the text would pass
/// [`MAX_TEXT_BYTES`]; its size is counted before any of it is written.
pub fn write_bounded(tree: &CallTree) -> Result<String, String> {
    let mut size = 0u64;
    let mut deepest = 0usize;
    for_each_line(tree, |path, weight, depth| {
        size += path.len() as u64 + 2 + u64::from(weight.checked_ilog10().unwrap_or(0) + 1);
        deepest = deepest.max(depth);
    });
    if size > MAX_TEXT_BYTES {
        return Err(format!(
            "the tree is too deep for collapsed stacks: every line repeats its whole \
             path, {} levels deep at most, {:.1} GB of text in all; export it as .html or \
             .speedscope.json, or open it with `perfkit view`",
            deepest,
            size as f64 / 1e9
        ));
    }
    Ok(write(tree))
}

/// Calls `line(path, weight, depth)` for each line of [`write`]'s text.
fn for_each_line(tree: &CallTree, mut line: impl FnMut(&str, u64, usize)) {
    let threaded = tree.threads.len() > 1;
    let mut path = String::new();
    let mut lens: Vec<usize> = Vec::new();
    for thread in &tree.threads {
        path.clear();
        if threaded {
            path.push_str("thread ");
            frame_text(&FuncKey::new("", 0, thread.name.as_str()), &mut path);
        }
        lens.clear();
        let children = thread.children();
        let mut walk = Walk::new(&children);
        let mut skip_below: Option<usize> = None;
        while let Some(visit) = walk.next() {
            match visit {
                Visit::Enter(id) => {
                    if skip_below.is_some() {
                        continue;
                    }
                    let node = &thread.nodes[id as usize];
                    let Some(key) = tree.funcs.get(node.func as usize) else {
                        skip_below = Some(walk.depth());
                        continue;
                    };
                    lens.push(path.len());
                    if !path.is_empty() {
                        path.push(';');
                    }
                    frame_text(key, &mut path);
                    let weight = (node.own_ns / 1000) + u64::from(node.own_ns % 1000 >= 500);
                    if weight > 0 {
                        line(&path, weight, lens.len());
                    }
                }
                Visit::Leave(_) => {
                    if let Some(depth) = skip_below {
                        if walk.depth() + 1 == depth {
                            skip_below = None;
                        }
                        continue;
                    }
                    if let Some(len) = lens.pop() {
                        path.truncate(len);
                    }
                }
            }
        }
    }
}

/// Whether a line has the shape `frames weight`, for format detection.
pub(crate) fn looks_like(line: &str) -> bool {
    matches!(split_line(line.trim_end()), Some((stack, Ok(_))) if !stack.is_empty())
}

fn split_line(line: &str) -> Option<(&str, Result<u64, ()>)> {
    let (stack, weight) = line.rsplit_once(' ')?;
    Some((stack.trim_end(), parse_weight(weight)))
}

fn parse_weight(text: &str) -> Result<u64, ()> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(());
    }
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    // Some tools write fractional weights; the largest ones saturate.
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f.round().min(u64::MAX as f64) as u64),
        _ => Err(()),
    }
}

/// Parses one frame's text back into a function.
pub fn parse_frame(frame: &str) -> FuncKey {
    if let Some(open) = frame.find(" (") {
        if let Some(inner) = frame[open + 2..].strip_suffix(')') {
            let name = &frame[..open];
            if let Some((file, line)) = inner.rsplit_once(':') {
                if let Ok(line) = line.parse::<u32>() {
                    return FuncKey::new(file, line, name);
                }
            }
            if !inner.is_empty() {
                return FuncKey::new(inner, 0, name);
            }
        }
    }
    parse_frame_bare(frame.to_string())
}

/// A frame that names no file: a built-in when it reads like cProfile's
/// built-in names, else a plain label.
pub(crate) fn parse_frame_bare(name: String) -> FuncKey {
    if name.ends_with('>') && (name.starts_with("<built-in ") || name.starts_with("<method ")) {
        return FuncKey::builtin(name);
    }
    FuncKey::new("", 0, name)
}

/// Splits a py-spy or perfkit thread frame into a name and thread id.
fn thread_of(frame: &str) -> (String, u64) {
    let rest = frame.strip_prefix("thread ").unwrap_or(frame);
    // py-spy: `thread (0x7F12AB): MainThread` or `thread (0x7F12AB)`.
    if let Some(inner) = rest.strip_prefix('(') {
        if let Some((id, name)) = inner.split_once(')') {
            let hex = id.trim_start_matches("0x").trim_start_matches("0X");
            if let Ok(tid) = u64::from_str_radix(hex, 16) {
                let name = name.strip_prefix(": ").unwrap_or(name).trim();
                return (
                    if name.is_empty() {
                        id.to_string()
                    } else {
                        name.to_string()
                    },
                    tid,
                );
            }
        }
    }
    (rest.to_string(), 0)
}

struct Builder {
    funcs: Vec<FuncKey>,
    func_ids: FxHashMap<FuncKey, FuncId>,
}

impl Builder {
    fn func(&mut self, key: FuncKey) -> FuncId {
        if let Some(&id) = self.func_ids.get(&key) {
            return id;
        }
        let id = self.funcs.len() as FuncId;
        self.funcs.push(key.clone());
        self.func_ids.insert(key, id);
        id
    }
}

/// One thread under construction: nodes plus an index of children.
pub(crate) struct ThreadBuilder {
    pub(crate) tree: ThreadTree,
    child: FxHashMap<(NodeId, FuncId), NodeId>,
}

impl ThreadBuilder {
    pub(crate) fn new(name: String, thread_id: u64) -> ThreadBuilder {
        ThreadBuilder {
            tree: ThreadTree::new(name, thread_id, 0),
            child: FxHashMap::default(),
        }
    }

    pub(crate) fn child(&mut self, parent: NodeId, func: FuncId) -> NodeId {
        let nodes = &mut self.tree.nodes;
        *self.child.entry((parent, func)).or_insert_with(|| {
            nodes.push(Node {
                func,
                parent,
                calls: 0,
                own_ns: 0,
                total_ns: 0,
            });
            (nodes.len() - 1) as NodeId
        })
    }

    /// Sets every node's total to its own time plus its descendants' (for
    /// formats that carry only own time).
    pub(crate) fn totals_from_own(mut self) -> ThreadTree {
        let nodes = &mut self.tree.nodes;
        for n in nodes.iter_mut().skip(1) {
            n.total_ns = n.own_ns;
        }
        for i in (1..nodes.len()).rev() {
            let (parent, total) = (nodes[i].parent as usize, nodes[i].total_ns);
            if parent != 0 {
                nodes[parent].total_ns = nodes[parent].total_ns.saturating_add(total);
            }
        }
        self.tree
    }
}

/// Parses collapsed-stacks text (see the module documentation for units).
pub fn read(text: &str) -> Result<CallTree, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines: Vec<(usize, &str, u64)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| Error::Collapsed {
            line: i + 1,
            message,
        };
        let Some((stack, weight)) = split_line(line) else {
            return Err(err(
                "expected `frame;frame;… weight`, found no weight after the frames".into(),
            ));
        };
        let weight = weight.map_err(|_| {
            let found: String = line.rsplit(' ').next().unwrap_or("").chars().take(40).collect();
            err(format!("expected a non-negative number as the weight at the end of the line, found {found:?}"))
        })?;
        if stack.is_empty() {
            // A sample with no frames (py-spy writes ` 1` for one caught
            // between Python frames): nothing to draw, and no reason to
            // refuse the whole file.
            continue;
        }
        lines.push((i + 1, stack, weight));
    }
    if lines.is_empty() {
        return Err(Error::NotProfile(
            "the collapsed-stacks text has no stacks".into(),
        ));
    }
    let threaded = lines
        .iter()
        .all(|(_, stack, _)| stack.starts_with("thread "));

    let mut b = Builder {
        funcs: Vec::new(),
        func_ids: FxHashMap::default(),
    };
    let mut threads: Vec<ThreadBuilder> = Vec::new();
    let mut thread_index: FxHashMap<&str, usize> = FxHashMap::default();
    for (_, stack, weight) in lines {
        let mut frames = stack.split(';');
        let t = if threaded {
            let frame = frames.next().unwrap_or_default();
            *thread_index.entry(frame).or_insert_with(|| {
                let (name, tid) = thread_of(frame);
                threads.push(ThreadBuilder::new(name, tid));
                threads.len() - 1
            })
        } else {
            if threads.is_empty() {
                threads.push(ThreadBuilder::new("MainThread".into(), 0));
            }
            0
        };
        let thread = &mut threads[t];
        let mut at: NodeId = 0;
        for frame in frames {
            let func = b.func(parse_frame(frame));
            at = thread.child(at, func);
        }
        if at != 0 {
            let node = &mut thread.tree.nodes[at as usize];
            node.own_ns = node.own_ns.saturating_add(weight.saturating_mul(1000));
        }
    }
    let builtins = b.funcs.iter().any(FuncKey::is_builtin);
    Ok(CallTree {
        funcs: b.funcs,
        threads: threads
            .into_iter()
            .map(ThreadBuilder::totals_from_own)
            .collect(),
        meta: Meta {
            exact: true,
            clock: Clock::Wall,
            builtins,
            recorder: "collapsed stacks".into(),
            duration_ns: 0,
            started_unix: 0.0,
        },
    })
}
