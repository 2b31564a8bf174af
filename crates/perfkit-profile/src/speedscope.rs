//! speedscope's JSON format (<https://www.speedscope.app/file-format-schema.json>).
//!
//! Written as one "evented" profile per thread: each node of the tree opens
//! and closes once, in nanoseconds, its children laid end to end from its
//! start and its own time after them (its span is its own time plus its
//! children's, as a sampled profile's totals are), so the file grows with the number of
//! nodes (a "sampled" profile, each sample a full call path, grew with
//! nodes × depth: 100 MB for a 10,000-frame recursion). Frames carry name,
//! file and line; built-ins carry only their name.
//!
//! Read: "sampled" profiles (py-spy, perfkit) and "evented" ones
//! (pyinstrument), one thread per profile. Sampled profiles have no call
//! counts (`calls = 0`); evented ones count each open/close pair as a call,
//! except perfkit's own, which open each node once (`calls = 0` too).
//! Units convert to nanoseconds; "none" and "bytes" (sample counts) read as
//! one microsecond per unit, as collapsed stacks do.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::collapsed::ThreadBuilder;
use crate::tree::{CallTree, Clock, FuncId, FuncKey, Meta, NodeId, Visit, Walk};
use crate::Error;

const SCHEMA: &str = "https://www.speedscope.app/file-format-schema.json";

#[derive(Serialize, Deserialize)]
struct File {
    #[serde(rename = "$schema", default)]
    schema: Option<String>,
    #[serde(default)]
    shared: Shared,
    profiles: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(
        rename = "activeProfileIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    active_profile_index: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exporter: Option<String>,
}

#[derive(Serialize, Deserialize, Default)]
struct Shared {
    #[serde(default)]
    frames: Vec<Frame>,
}

#[derive(Serialize, Deserialize)]
struct Frame {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    /// A JSON number as written: py-spy and pyinstrument write integers,
    /// other tools may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    line: Option<serde_json::Number>,
}

#[derive(Serialize)]
struct EventedOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    unit: &'static str,
    #[serde(rename = "startValue")]
    start_value: u64,
    #[serde(rename = "endValue")]
    end_value: u64,
    events: Vec<EventOut>,
}

#[derive(Serialize)]
struct EventOut {
    #[serde(rename = "type")]
    kind: &'static str,
    at: u64,
    frame: u32,
}

#[derive(Deserialize)]
struct SampledIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    unit: Option<String>,
    samples: Vec<Vec<u64>>,
    #[serde(default)]
    weights: Option<Vec<f64>>,
}

#[derive(Deserialize)]
struct EventedIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(rename = "endValue", default)]
    end_value: Option<f64>,
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    at: f64,
    frame: u64,
}

/// The speedscope JSON for a tree.
pub fn write(tree: &CallTree) -> String {
    let mut frames: Vec<Frame> = Vec::new();
    let mut frame_of: FxHashMap<&FuncKey, u32> = FxHashMap::default();
    let mut profiles = Vec::with_capacity(tree.threads.len());
    for thread in &tree.threads {
        let mut events = Vec::new();
        // The frame of each open node, outermost first.
        let mut open: Vec<u32> = Vec::new();
        let mut clock = 0u64;
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
                    let frame = *frame_of.entry(key).or_insert_with(|| {
                        let (file, line) =
                            if key.is_builtin() || (key.file.is_empty() && key.line == 0) {
                                (None, None)
                            } else {
                                (Some(key.file.clone()), Some(key.line.into()))
                            };
                        frames.push(Frame {
                            name: Some(key.name.clone()),
                            file,
                            line,
                        });
                        (frames.len() - 1) as u32
                    });
                    open.push(frame);
                    events.push(EventOut {
                        kind: "O",
                        at: clock,
                        frame,
                    });
                }
                Visit::Leave(id) => {
                    if let Some(depth) = skip_below {
                        if walk.depth() + 1 == depth {
                            skip_below = None;
                        }
                        continue;
                    }
                    let Some(frame) = open.pop() else {
                        continue;
                    };
                    // Its own time after its children's: a reader gets each
                    // node's own time back exactly, as from the samples'
                    // weights, and its total as own plus its children's.
                    clock = clock.saturating_add(thread.nodes[id as usize].own_ns);
                    events.push(EventOut {
                        kind: "C",
                        at: clock,
                        frame,
                    });
                }
            }
        }
        let profile = EventedOut {
            kind: "evented",
            name: &thread.name,
            unit: "nanoseconds",
            start_value: 0,
            end_value: clock,
            events,
        };
        profiles.push(serde_json::to_value(profile).unwrap_or_default());
    }
    let file = File {
        schema: Some(SCHEMA.into()),
        shared: Shared { frames },
        profiles,
        name: Some(if tree.meta.recorder.is_empty() {
            "perfkit profile".into()
        } else {
            tree.meta.recorder.clone()
        }),
        active_profile_index: Some(0.into()),
        exporter: Some(format!("perfkit {}", env!("CARGO_PKG_VERSION"))),
    };
    // Plain data with string keys always serializes.
    serde_json::to_string(&file).unwrap_or_default()
}

fn unit_ns(unit: Option<&str>) -> Result<f64, Error> {
    Ok(match unit.unwrap_or("none") {
        "nanoseconds" => 1.0,
        "microseconds" | "none" | "bytes" => 1e3,
        "milliseconds" => 1e6,
        "seconds" => 1e9,
        other => return Err(Error::Speedscope(format!("unknown unit {other:?}"))),
    })
}

fn to_ns(value: f64, factor: f64) -> u64 {
    let ns = value * factor;
    if ns.is_finite() && ns > 0.0 {
        ns.round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

fn frame_key(frame: &Frame) -> FuncKey {
    let name = frame.name.clone().unwrap_or_else(|| "<unknown>".into());
    match &frame.file {
        Some(file) if !file.is_empty() => {
            let line = frame
                .line
                .as_ref()
                .and_then(serde_json::Number::as_f64)
                .filter(|l| l.is_finite() && *l >= 0.0)
                .map_or(0, |l| l.min(u32::MAX as f64) as u32);
            FuncKey::new(file.as_str(), line, name)
        }
        _ => crate::collapsed::parse_frame_bare(name),
    }
}

/// Parses a speedscope JSON document.
pub fn read(text: &str) -> Result<CallTree, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let file: File = serde_json::from_str(text)
        .map_err(|e| Error::Speedscope(format!("invalid speedscope JSON: {e}")))?;
    if file.profiles.is_empty() {
        return Err(Error::Speedscope("the file has no profiles".into()));
    }
    // Frames with equal keys share one function.
    let mut funcs: Vec<FuncKey> = Vec::new();
    let mut func_ids: FxHashMap<FuncKey, FuncId> = FxHashMap::default();
    let frame_func: Vec<FuncId> = file
        .shared
        .frames
        .iter()
        .map(|f| {
            let key = frame_key(f);
            *func_ids.entry(key.clone()).or_insert_with(|| {
                funcs.push(key);
                (funcs.len() - 1) as FuncId
            })
        })
        .collect();
    let func_of = |profile: usize, frame: u64| -> Result<FuncId, Error> {
        usize::try_from(frame)
            .ok()
            .and_then(|f| frame_func.get(f))
            .copied()
            .ok_or_else(|| {
                Error::Speedscope(format!(
                    "profile {profile} refers to frame {frame}, but there are {} frames",
                    frame_func.len()
                ))
            })
    };

    // perfkit's own evented profiles open each node once, whatever its
    // calls: their counts are unknown (0), as a sampled profile's are.
    let counts_calls = !file
        .exporter
        .as_deref()
        .is_some_and(|e| e.starts_with("perfkit "));
    let mut threads = Vec::with_capacity(file.profiles.len());
    let mut duration_ns = 0u64;
    for (p, raw) in file.profiles.into_iter().enumerate() {
        let kind = raw
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string();
        let bad = |e: serde_json::Error| Error::Speedscope(format!("profile {p} ({kind}): {e}"));
        match kind.as_str() {
            "sampled" => {
                let prof: SampledIn = serde_json::from_value(raw).map_err(bad)?;
                let factor = unit_ns(prof.unit.as_deref())?;
                if let Some(w) = &prof.weights {
                    if w.len() != prof.samples.len() {
                        return Err(Error::Speedscope(format!(
                            "profile {p} has {} samples but {} weights",
                            prof.samples.len(),
                            w.len()
                        )));
                    }
                }
                let mut t = ThreadBuilder::new(prof.name.unwrap_or_else(|| format!("profile {p}")), 0);
                let mut total = 0u64;
                for (i, stack) in prof.samples.iter().enumerate() {
                    let weight = prof.weights.as_ref().map_or(1.0, |w| w[i]);
                    let mut at: NodeId = 0;
                    for &frame in stack {
                        at = t.child(at, func_of(p, frame)?);
                    }
                    let ns = to_ns(weight, factor);
                    total = total.saturating_add(ns);
                    if at != 0 {
                        let node = &mut t.tree.nodes[at as usize];
                        node.own_ns = node.own_ns.saturating_add(ns);
                    }
                }
                duration_ns = duration_ns.max(total);
                threads.push(t.totals_from_own());
            }
            "evented" => {
                let prof: EventedIn = serde_json::from_value(raw).map_err(bad)?;
                let factor = unit_ns(prof.unit.as_deref())?;
                let mut t = ThreadBuilder::new(prof.name.unwrap_or_else(|| format!("profile {p}")), 0);
                // Open calls: node, frame, start, time spent in finished children.
                let mut open: Vec<(NodeId, u64, f64, f64)> = Vec::new();
                let mut last_at = 0.0f64;
                let close = |t: &mut ThreadBuilder, (node, _, start, inner): (NodeId, u64, f64, f64), at: f64| -> f64 {
                    let elapsed = if at > start { at - start } else { 0.0 };
                    let n = &mut t.tree.nodes[node as usize];
                    n.calls = n.calls.saturating_add(1);
                    n.total_ns = n.total_ns.saturating_add(to_ns(elapsed, factor));
                    n.own_ns = n.own_ns.saturating_add(to_ns(elapsed - inner, factor));
                    elapsed
                };
                for (i, ev) in prof.events.iter().enumerate() {
                    if ev.at.is_finite() {
                        last_at = last_at.max(ev.at);
                    }
                    match ev.kind.as_str() {
                        "O" => {
                            let parent = open.last().map_or(0, |o| o.0);
                            let node = t.child(parent, func_of(p, ev.frame)?);
                            open.push((node, ev.frame, ev.at, 0.0));
                        }
                        "C" => {
                            let Some(top) = open.pop() else {
                                return Err(Error::Speedscope(format!(
                                    "profile {p}, event {i}: closes frame {} but no frame is open",
                                    ev.frame
                                )));
                            };
                            if top.1 != ev.frame {
                                return Err(Error::Speedscope(format!(
                                    "profile {p}, event {i}: closes frame {} but frame {} is the innermost open one",
                                    ev.frame, top.1
                                )));
                            }
                            let elapsed = close(&mut t, top, ev.at);
                            if let Some(parent) = open.last_mut() {
                                parent.3 += elapsed;
                            }
                        }
                        other => {
                            return Err(Error::Speedscope(format!(
                                "profile {p}, event {i}: unknown event type {other:?} (expected \"O\" or \"C\")"
                            )))
                        }
                    }
                }
                // A recording stopped inside calls: close them at its end.
                let end = prof.end_value.filter(|e| e.is_finite()).unwrap_or(last_at).max(last_at);
                while let Some(top) = open.pop() {
                    let elapsed = close(&mut t, top, end);
                    if let Some(parent) = open.last_mut() {
                        parent.3 += elapsed;
                    }
                }
                if !counts_calls {
                    t.tree.nodes.iter_mut().for_each(|n| n.calls = 0);
                }
                duration_ns = duration_ns.max(t.tree.total_ns());
                threads.push(t.tree);
            }
            other => {
                return Err(Error::Speedscope(format!(
                    "profile {p} has type {other:?}; perfkit reads \"sampled\" and \"evented\" profiles"
                )))
            }
        }
    }
    let builtins = funcs.iter().any(FuncKey::is_builtin);
    let recorder = file.exporter.unwrap_or_else(|| "speedscope".into());
    Ok(CallTree {
        funcs,
        threads,
        meta: Meta {
            exact: true,
            clock: Clock::Wall,
            builtins,
            recorder,
            duration_ns,
            started_unix: 0.0,
        },
    })
}
