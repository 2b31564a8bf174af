//! A profiling session: what one `perfkit.Profiler` records across its
//! enable/disable cycles, and the process-wide state that the hooks read.
//!
//! Only one session records at a time. The hooks find it through
//! [`ACTIVE`] and find their thread's recorder through a thread-local slot
//! tagged with a generation number, so the hot path is one thread-local read
//! and one comparison. All of this state is touched only with the GIL held.

use crate::clock::{self, ClockKind};
use crate::hooks;
use crate::names;
use crate::recorder::{ThreadRecorder, FLAG_C, FLAG_GENERATOR};
use perfkit_profile::{CallTree, FuncId, FuncKey, Meta, Node, ThreadTree, TreeSum};
use pyo3::ffi;
use pyo3::prelude::*;
use rustc_hash::FxHashMap;
use std::cell::Cell;
use std::ptr;

/// What the profiler watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// cProfile's view: Python calls and C calls.
    Full,
    /// Python frames only (`builtins=False`): C calls are not rows, their
    /// time stays in the caller.
    PythonFrames,
}

/// Why profiling could not start.
#[derive(Debug)]
pub enum StartError {
    /// Another perfkit session, cProfile, or another tool holds the hooks.
    Busy(String),
    Python(PyErr),
}

impl From<PyErr> for StartError {
    fn from(e: PyErr) -> Self {
        StartError::Python(e)
    }
}

pub(crate) struct SessionData {
    id: u64,
    pub(crate) mode: Mode,
    pub(crate) clock: ClockKind,
    funcs: Vec<FuncKey>,
    func_ids: FxHashMap<usize, (FuncId, u8)>,
    /// Strong references to the code objects seen, so that their addresses,
    /// our keys, are never reused by other code objects while we record.
    held: Vec<*mut ffi::PyObject>,
    /// Boxed: hooks hold raw pointers to recorders while the list grows.
    #[allow(clippy::vec_box)]
    threads: Vec<Box<ThreadRecorder>>,
    /// `threading` names of the threads alive at enable, for the ones that
    /// never pass through our thread-start hook.
    known_names: FxHashMap<u64, String>,
    /// Threads left out, by ident, while recording (see [`Session::enable`]).
    left_out: rustc_hash::FxHashSet<u64>,
    enabled: bool,
    enabled_at_ns: u64,
    recorded_ns: u64,
    started_unix: f64,
    /// Nanoseconds per clock tick, fixed at the last disable so that every
    /// tree taken from a stopped session (table, file, threads) agrees to the
    /// nanosecond; while enabled it is measured afresh.
    nanos_per_tick: f64,
    /// Whether this session gives way to another profiler that starts while
    /// it records (a pool worker's recording for its caller; see
    /// [`Session::set_yields`]).
    yields: bool,
    /// Whether the processes that work for this one (a `perfkit.Parallel`
    /// call's workers) record for it too (see [`Session::set_workers`]).
    workers: bool,
    /// What other processes recorded for this session while it recorded: a
    /// `perfkit.Parallel` call's workers, one tree per batch (see [`adopt`]).
    adopted: TreeSum,
}

#[derive(Clone, Copy)]
struct Slot {
    gen: u64,
    session: u64,
    rec: *mut ThreadRecorder,
}

thread_local! {
    static SLOT: Cell<Slot> = const { Cell::new(Slot { gen: 0, session: 0, rec: ptr::null_mut() }) };
}

/// The generation of the session now recording; [`INACTIVE`] when none is.
/// A fresh value on every enable, so a slot filled under an earlier one never matches.
pub(crate) static mut GEN: u64 = INACTIVE;
const INACTIVE: u64 = u64::MAX;
static mut NEXT_GEN: u64 = 1;
static mut NEXT_SESSION: u64 = 1;
pub(crate) static mut ACTIVE: *mut SessionData = ptr::null_mut();
pub(crate) static mut CLOCK: ClockKind = ClockKind::Wall;

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: written only in enable, with the GIL held, like every read.
    clock::read(unsafe { CLOCK })
}

/// The calling thread's recorder in the session now recording, or null.
/// A raw pointer: hooks re-enter through the calls they wrap, so no `&mut` may span them.
///
/// # Safety
/// GIL held. The pointer is valid while [`GEN`] keeps its value.
#[inline(always)]
pub(crate) unsafe fn recorder() -> *mut ThreadRecorder {
    let slot = SLOT.with(Cell::get);
    if slot.gen == GEN {
        slot.rec
    } else {
        register_thread(slot)
    }
}

#[cold]
#[inline(never)]
unsafe fn register_thread(slot: Slot) -> *mut ThreadRecorder {
    if GEN == INACTIVE || ACTIVE.is_null() {
        return ptr::null_mut();
    }
    let session = &mut *ACTIVE;
    // The slot is per OS thread: the same session id means this very thread
    // recorded before a disable/enable cycle, and its tree goes on.
    let rec = if slot.session == session.id && !slot.rec.is_null() {
        slot.rec
    } else {
        let ident = ffi::PyThread_get_thread_ident() as u64;
        if session.left_out.contains(&ident) {
            // A slot of this generation with no recorder: the hooks skip this thread.
            SLOT.with(|s| {
                s.set(Slot {
                    gen: GEN,
                    session: session.id,
                    rec: ptr::null_mut(),
                })
            });
            return ptr::null_mut();
        }
        let mut rec = ThreadRecorder::new(ident);
        // The name the thread had at enable, once: a later thread with this
        // ident (one ended, another started) is not that thread.
        rec.name = session.known_names.remove(&ident);
        rec.stack_guard = crate::stack::this_thread_guard();
        session.threads.push(Box::new(rec));
        &mut **session.threads.last_mut().unwrap() as *mut ThreadRecorder
    };
    SLOT.with(|s| {
        s.set(Slot {
            gen: GEN,
            session: session.id,
            rec,
        })
    });
    rec
}

/// Whether the session now recording leaves the calling thread out.
///
/// # Safety
/// GIL held.
#[cfg(not(Py_3_12))] // (only the C profile hook of 3.9-3.11 asks)
pub(crate) unsafe fn this_thread_left_out() -> bool {
    !ACTIVE.is_null()
        && (*ACTIVE)
            .left_out
            .contains(&(ffi::PyThread_get_thread_ident() as u64))
}

/// Names the calling thread's recorder in the session now recording (made
/// now if the thread has none yet): a thread threading has just started,
/// whose first frames (its bootstrap) may already have been recorded under
/// no name, or one an earlier thread of the same ident had.
///
/// # Safety
/// GIL held.
pub(crate) unsafe fn name_this_thread(name: &str) {
    if !ACTIVE.is_null() {
        // Started while recording: not one of the threads left out, though it
        // may have the ident of one that ended.
        let ident = ffi::PyThread_get_thread_ident() as u64;
        if (*ACTIVE).left_out.remove(&ident) {
            SLOT.with(|s| {
                s.set(Slot {
                    gen: 0,
                    session: 0,
                    rec: ptr::null_mut(),
                })
            });
        }
    }
    let rec = recorder();
    if !rec.is_null() {
        (*rec).name = Some(name.to_owned());
    }
}

/// Runs `f` with any pending exception set aside: interning calls into the
/// C API, and a hook may run while an exception is being thrown or raised.
unsafe fn preserving_exception<T>(f: impl FnOnce(Python<'_>) -> T) -> T {
    let (mut t, mut v, mut tb) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    #[allow(deprecated)]
    ffi::PyErr_Fetch(&mut t, &mut v, &mut tb);
    let out = f(Python::assume_attached());
    #[allow(deprecated)]
    ffi::PyErr_Restore(t, v, tb);
    out
}

/// The function id and flags of a code object, interned on first sight.
///
/// # Safety
/// GIL held, a session active, `code` a live code object.
pub(crate) unsafe fn intern_code(code: *mut ffi::PyObject) -> (FuncId, u8) {
    let session = &mut *ACTIVE;
    if let Some(&v) = session.func_ids.get(&(code as usize)) {
        return v;
    }
    preserving_exception(|py| {
        let obj = Bound::from_borrowed_ptr(py, code);
        let key = names::code_key(&obj);
        let flags = if names::code_is_generator(&obj) {
            FLAG_GENERATOR
        } else {
            0
        };
        ffi::Py_INCREF(code);
        session.held.push(code);
        session.add_func(code as usize, key, flags)
    })
}

/// The function id of a C function keyed by its `PyMethodDef`; `func` is a
/// built-in function object to name it by.
///
/// # Safety
/// GIL held, a session active, `func` a live `PyCFunctionObject`.
pub(crate) unsafe fn intern_cfunction(key: usize, func: *mut ffi::PyObject) -> (FuncId, u8) {
    let session = &mut *ACTIVE;
    if let Some(&v) = session.func_ids.get(&key) {
        return v;
    }
    preserving_exception(|py| {
        let fk = names::cfunction_key(py, func);
        session.add_func(key, fk, FLAG_C)
    })
}

impl SessionData {
    pub(crate) fn name_thread(&mut self, thread_id: u64, name: &str) {
        for rec in self
            .threads
            .iter_mut()
            .filter(|r| r.thread_id == thread_id && r.name.is_none())
        {
            rec.name = Some(name.to_owned());
        }
    }

    fn add_func(&mut self, raw: usize, key: FuncKey, flags: u8) -> (FuncId, u8) {
        let id = self.funcs.len() as FuncId;
        self.funcs.push(key);
        self.func_ids.insert(raw, (id, flags));
        (id, flags)
    }
}

/// A Python call in flight on one thread of a session, to take the calls
/// below it from (see [`Session::mark_current_call`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallMark {
    session: u64,
    /// Index of the thread's recorder in the session's.
    thread: usize,
    node: u32,
}

impl CallMark {
    /// As three numbers, to hand to Python and back ([`Self::from_parts`]).
    pub fn to_parts(self) -> (u64, u64, u32) {
        (self.session, self.thread as u64, self.node)
    }

    /// A mark from [`Self::to_parts`]; one that does not name a marked call
    /// of the session it is given to takes nothing there.
    pub fn from_parts(session: u64, thread: u64, node: u32) -> CallMark {
        CallMark {
            session,
            thread: usize::try_from(thread).unwrap_or(usize::MAX),
            node,
        }
    }
}

/// One profiler's recording. Dropping it stops it.
pub struct Session {
    data: Box<SessionData>,
}

// SAFETY: every use of a Session happens with the GIL held (it lives inside a
// Python object), which serialises access from any thread.
unsafe impl Send for Session {}
unsafe impl Sync for Session {}

impl Session {
    pub fn new(mode: Mode, clock: ClockKind) -> Session {
        // SAFETY: GIL held by the caller (sessions are created from Python).
        let id = unsafe {
            let id = NEXT_SESSION;
            NEXT_SESSION += 1;
            id
        };
        Session {
            data: Box::new(SessionData {
                id,
                mode,
                clock,
                funcs: Vec::new(),
                func_ids: FxHashMap::default(),
                held: Vec::new(),
                threads: Vec::new(),
                known_names: FxHashMap::default(),
                left_out: Default::default(),
                enabled: false,
                enabled_at_ns: 0,
                recorded_ns: 0,
                started_unix: 0.0,
                nanos_per_tick: 1.0,
                adopted: TreeSum::default(),
                yields: false,
                workers: true,
            }),
        }
    }

    pub fn mode(&self) -> Mode {
        self.data.mode
    }

    pub fn clock(&self) -> ClockKind {
        self.data.clock
    }

    pub fn is_enabled(&self) -> bool {
        self.data.enabled
    }

    /// A session that yields stops recording, instead of refusing, when
    /// another profiler starts in the process: another perfkit session, or
    /// cProfile or `sys.setprofile` (before 3.12: they would take its hook;
    /// from 3.12 it takes another `sys.monitoring` tool id than cProfile's,
    /// so cProfile starts beside it). A pool worker records its batches this
    /// way for its caller's profile: a task's own profiler must not fail.
    pub fn set_yields(&mut self, yields: bool) {
        self.data.yields = yields;
    }

    /// Whether the processes that work for this one record for it too (the
    /// default): [`recording_now`] tells them to while this session records,
    /// and [`adopt`] takes what they send. Without, it records this process
    /// alone, as cProfile does, and its workers run unrecorded.
    pub fn set_workers(&mut self, workers: bool) {
        self.data.workers = workers;
    }

    /// Starts recording: installs the hooks for this interpreter's version
    /// and mode. `left_out`: idents of threads running now not to record (a
    /// Jupyter kernel's own threads, say), except this one and those this
    /// session recorded before; a thread `threading` starts while recording
    /// is recorded even if it takes one of their idents.
    pub fn enable(&mut self, py: Python<'_>, left_out: &[u64]) -> Result<(), StartError> {
        if self.data.enabled {
            return Ok(());
        }
        // SAFETY: GIL held (we have `py`); the hooks are not installed yet, so
        // nothing reads the globals while we set them.
        unsafe {
            if !give_way(py) && !ACTIVE.is_null() {
                return Err(StartError::Busy(
                    "another perfkit profiler is already recording in this process; disable it first".into(),
                ));
            }
            #[cfg(Py_3_12)]
            {
                hooks::TOOL_ID = if self.data.yields {
                    hooks::YIELDING_TOOL_ID
                } else {
                    hooks::PROFILER_TOOL_ID
                };
            }
            hooks::check_free(py, self.data.mode)?;
            clock::init();
            self.data.known_names = live_thread_names(py);
            let me = ffi::PyThread_get_thread_ident() as u64;
            let recorded: rustc_hash::FxHashSet<u64> =
                self.data.threads.iter().map(|r| r.thread_id).collect();
            self.data.left_out = left_out
                .iter()
                .copied()
                .filter(|&t| t != me && !recorded.contains(&t))
                .collect();
            let gen = NEXT_GEN;
            NEXT_GEN += 1;
            ACTIVE = &mut *self.data;
            CLOCK = self.data.clock;
            GEN = gen;
            if let Err(e) = hooks::install(py, self.data.mode) {
                GEN = INACTIVE;
                ACTIVE = ptr::null_mut();
                return Err(e);
            }
        }
        let d = &mut self.data;
        d.enabled = true;
        d.enabled_at_ns = clock::monotonic_ns();
        if d.started_unix == 0.0 {
            d.started_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|t| t.as_secs_f64())
                .unwrap_or(0.0);
        }
        Ok(())
    }

    /// Stops recording. Calls still in flight end now, as in cProfile.
    pub fn disable(&mut self, py: Python<'_>) {
        if self.data.enabled {
            // SAFETY: GIL held; an enabled session is the active one.
            unsafe { disable_active(py, &mut self.data) };
        }
    }

    /// Stops recording the calling thread until the next disable, while the
    /// other threads go on being recorded: `perfkit record` reports how the
    /// program ended, and waits for its threads, on the main thread once the
    /// program is done, and neither is the program's work. The thread's calls
    /// in flight end now. A later enable records it again, in a new tree.
    pub fn leave_this_thread(&mut self) {
        if !self.data.enabled {
            return;
        }
        // SAFETY: GIL held; this session is the active one, so a recorder the
        // slot holds is one of its own.
        unsafe {
            let rec = recorder();
            if !rec.is_null() {
                (*rec).flush(clock::read(self.data.clock));
            }
            // A slot of this generation with no recorder: the hooks skip this thread.
            SLOT.with(|s| {
                s.set(Slot {
                    gen: GEN,
                    session: self.data.id,
                    rec: ptr::null_mut(),
                })
            });
        }
    }

    /// Names the recorded threads that have no name yet and are still alive.
    pub fn name_live_threads(&mut self, py: Python<'_>) {
        if self.data.threads.iter().all(|r| r.name.is_some()) {
            return;
        }
        for (ident, name) in live_thread_names(py) {
            self.data.name_thread(ident, &name);
        }
    }

    /// Number of calls in flight on the calling thread (for tests of flushing).
    pub fn depth(&self) -> usize {
        self.data.threads.iter().map(|r| r.depth() - 1).sum()
    }

    /// The tree recorded so far. `hidden` marks the profiler's own functions,
    /// which are left out where nothing of the user's runs below them.
    pub fn tree(&self, recorder_name: &str, hidden: &dyn Fn(&FuncKey) -> bool) -> CallTree {
        let d = &self.data;
        let hidden_ids: Vec<bool> = d.funcs.iter().map(hidden).collect();
        let is_hidden = |f: FuncId| hidden_ids.get(f as usize).copied().unwrap_or(false);
        let pid = std::process::id();
        let scale = if d.enabled {
            clock::nanos_per_tick(d.clock)
        } else {
            d.nanos_per_tick
        };
        let mut funcs = d.funcs.clone();
        let mut threads: Vec<ThreadTree> = d
            .threads
            .iter()
            .map(|r| {
                let name = r
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("Thread-{}", r.thread_id));
                r.to_thread_tree(name, pid, scale, &is_hidden)
            })
            .filter(|t| t.nodes.len() > 1)
            .collect();
        if threads.is_empty() {
            // cProfile records its own `disable`, so its tables are never
            // empty, and pstats refuses an empty one (print_stats, Stats(file)
            // raise TypeError). Where nothing of the program's was recorded,
            // perfkit's disable is the row.
            let func = funcs.len() as FuncId;
            funcs.push(FuncKey::new(
                "~",
                0,
                "<method 'disable' of 'perfkit.Profiler' objects>",
            ));
            let mut tree = ThreadTree::new("MainThread", 0, pid);
            tree.nodes.push(Node {
                func,
                parent: 0,
                calls: 1,
                own_ns: 0,
                total_ns: 0,
            });
            threads.push(tree);
        }
        let (funcs, threads) = if d.adopted.is_empty() {
            (funcs, threads)
        } else {
            let mut sum = TreeSum::from_tree(CallTree {
                funcs,
                threads,
                meta: Meta::default(),
            });
            sum.add(d.adopted.tree());
            let tree = sum.into_tree();
            (tree.funcs, tree.threads)
        };
        let mut duration = d.recorded_ns;
        if d.enabled {
            duration += clock::monotonic_ns().saturating_sub(d.enabled_at_ns);
        }
        CallTree {
            funcs,
            threads,
            meta: Meta {
                exact: true,
                clock: profile_clock(d.clock),
                builtins: d.mode == Mode::Full,
                recorder: recorder_name.to_owned(),
                duration_ns: duration,
                started_unix: d.started_unix,
            },
        }
    }

    /// Marks the Python call that calls this (the innermost one in flight on
    /// the calling thread) as a place to [`Self::take_calls_below`] from
    /// later, so that one thread's batch of work can be taken out of a
    /// session that records every thread of the process. None when this
    /// session is not recording now, leaves this thread out, or did not see
    /// that call start (it started before the recording did).
    pub fn mark_current_call(&mut self, _py: Python<'_>) -> Option<CallMark> {
        if !self.data.enabled {
            return None;
        }
        // SAFETY: GIL held (we have the token); an enabled session is the
        // active one, so the recorder the calling thread's slot gives is one
        // of this session's (boxed, alive until `clear`, which needs it
        // disabled). PyEval_GetFrame returns a borrowed frame (the Python
        // code calling us) and PyFrame_GetCode a new reference, released here.
        unsafe {
            let rec = recorder();
            if rec.is_null() {
                return None;
            }
            let thread = self
                .data
                .threads
                .iter()
                .position(|r| ptr::eq(&**r, rec as *const ThreadRecorder))?;
            let node = (*rec).innermost_python_call()?;
            let frame = ffi::PyEval_GetFrame();
            if frame.is_null() {
                return None;
            }
            let code = ffi::PyFrame_GetCode(frame);
            let same = (*rec).node_key(node) == code as usize;
            ffi::Py_DECREF(code as *mut ffi::PyObject);
            same.then_some(CallMark {
                session: self.data.id,
                thread,
                node,
            })
        }
    }

    /// Takes out of this session the calls it recorded below a marked call
    /// ([`Self::mark_current_call`]): a tree of one thread, named `name`,
    /// whose top-level calls are the marked call's callees, on this
    /// session's clock and with only the functions it names; `hidden` as in
    /// [`Self::tree`]. They are forgotten here, so that a later take below
    /// the same call (the same thread's next batch) does not give them again.
    /// Calls of the marked call still in flight are left out (they are not
    /// done: the native function taking, say). Works as well after the
    /// session stopped (it gave way to another profiler): what it recorded
    /// up to then. None for a mark of another session, or of one since cleared.
    pub fn take_calls_below(
        &mut self,
        mark: CallMark,
        name: &str,
        recorder_name: &str,
        hidden: &dyn Fn(&FuncKey) -> bool,
    ) -> Option<CallTree> {
        let d = &mut self.data;
        if mark.session != d.id {
            return None;
        }
        let hidden_ids: Vec<bool> = d.funcs.iter().map(hidden).collect();
        let is_hidden = |f: FuncId| hidden_ids.get(f as usize).copied().unwrap_or(false);
        let scale = if d.enabled {
            clock::nanos_per_tick(d.clock)
        } else {
            d.nanos_per_tick
        };
        let rec = d.threads.get_mut(mark.thread)?;
        if mark.node as usize >= rec.node_count() {
            return None;
        }
        let mut thread = rec.tree_below(
            mark.node,
            name.to_owned(),
            std::process::id(),
            scale,
            &is_hidden,
        );
        rec.clear_below(mark.node);
        // Only the functions the tree names, renumbered in order of first use.
        let mut new_ids: FxHashMap<FuncId, FuncId> = FxHashMap::default();
        let mut funcs = Vec::new();
        for node in thread.nodes.iter_mut().skip(1) {
            node.func = *new_ids.entry(node.func).or_insert_with(|| {
                funcs.push(d.funcs[node.func as usize].clone());
                (funcs.len() - 1) as FuncId
            });
        }
        let duration_ns = thread.total_ns();
        Some(CallTree {
            funcs,
            threads: vec![thread],
            meta: Meta {
                exact: true,
                clock: profile_clock(d.clock),
                builtins: d.mode == Mode::Full,
                recorder: recorder_name.to_owned(),
                duration_ns,
                started_unix: d.started_unix,
            },
        })
    }

    /// Forgets everything recorded (must be disabled).
    pub fn clear(&mut self, py: Python<'_>) {
        if self.data.enabled {
            return;
        }
        let d = &mut self.data;
        d.threads.clear();
        d.funcs.clear();
        d.func_ids.clear();
        release(py, &mut d.held);
        d.recorded_ns = 0;
        d.started_unix = 0.0;
        d.adopted = TreeSum::default();
        // A fresh id so that no thread slot points into the cleared recorders.
        // SAFETY: GIL held.
        unsafe {
            d.id = NEXT_SESSION;
            NEXT_SESSION += 1;
        }
    }
}

/// `{ident: name}` of the threads in `threading._active`, read without
/// running Python code (see `hooks::threads::thread_name`).
fn live_thread_names(py: Python<'_>) -> FxHashMap<u64, String> {
    let mut names = FxHashMap::default();
    let Ok(active) = py.import("threading").and_then(|t| t.getattr("_active")) else {
        return names;
    };
    let Ok(active) = active.cast_into::<pyo3::types::PyDict>() else {
        return names;
    };
    for (ident, thread) in active.iter() {
        if let (Ok(ident), Ok(name)) = (
            ident.extract::<u64>(),
            thread.getattr("_name").and_then(|n| n.extract::<String>()),
        ) {
            names.insert(ident, name);
        }
    }
    names
}

fn release(_py: Python<'_>, held: &mut Vec<*mut ffi::PyObject>) {
    for obj in held.drain(..) {
        // SAFETY: each pointer holds a reference we took in `intern_code`; GIL held via `_py`.
        unsafe { ffi::Py_DECREF(obj) };
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        Python::attach(|py| {
            self.disable(py);
            release(py, &mut self.data.held);
        });
    }
}

/// The mode and clock of the session recording now, if one is and its
/// workers record for it ([`Session::set_workers`]): what a process that
/// works for this one (a pool's worker) records with, so that its tree can
/// be [`adopt`]ed.
pub fn recording_now(_py: Python<'_>) -> Option<(Mode, ClockKind)> {
    // SAFETY: GIL held (we have the token); ACTIVE is only set or cleared with it.
    unsafe {
        ACTIVE
            .as_ref()
            .filter(|d| d.workers)
            .map(|d| (d.mode, d.clock))
    }
}

/// Adds `tree`, recorded by another process for the session recording now,
/// to that session (by process, thread and call path). Returns false, and
/// drops the tree, when no session is recording, the one recording leaves
/// its workers out (a batch recorded for an earlier session arrives in it),
/// or the tree's clock or mode is not its own: times on another clock would
/// not add up.
pub fn adopt(_py: Python<'_>, tree: &CallTree) -> bool {
    // SAFETY: GIL held (we have the token); ACTIVE is only set or cleared with it.
    let Some(d) = (unsafe { ACTIVE.as_mut() }) else {
        return false;
    };
    if !d.workers
        || tree.meta.clock != profile_clock(d.clock)
        || tree.meta.builtins != (d.mode == Mode::Full)
    {
        return false;
    }
    d.adopted.add(tree);
    true
}

fn profile_clock(clock: ClockKind) -> perfkit_profile::Clock {
    match clock {
        ClockKind::Wall => perfkit_profile::Clock::Wall,
        ClockKind::Cpu => perfkit_profile::Clock::Cpu,
    }
}

/// Stops the session recording now, `d` (ACTIVE): the hooks out, calls still
/// in flight ended now.
///
/// # Safety
/// GIL held; `d` is the active session's data.
unsafe fn disable_active(py: Python<'_>, d: &mut SessionData) {
    hooks::uninstall(py, d.mode);
    GEN = INACTIVE;
    ACTIVE = ptr::null_mut();
    d.enabled = false;
    let wall = clock::monotonic_ns();
    d.recorded_ns += wall.saturating_sub(d.enabled_at_ns);
    d.nanos_per_tick = clock::nanos_per_tick(d.clock);
    // Each thread's calls end at its own clock's now (for the CPU clock that
    // is this thread's CPU time, so other threads' stacks end at their last
    // event's time instead; see ThreadRecorder::flush).
    let t = clock::read(d.clock);
    for rec in d.threads.iter_mut() {
        if d.clock == ClockKind::Wall || rec.thread_id == ffi::PyThread_get_thread_ident() as u64 {
            rec.flush(t);
        } else {
            rec.flush_at_last_event();
        }
    }
}

/// Stops the session recording now if it yields to another profiler
/// ([`Session::set_yields`]); returns whether it did.
///
/// # Safety
/// GIL held.
pub(crate) unsafe fn give_way(py: Python<'_>) -> bool {
    match ACTIVE.as_mut() {
        Some(d) if d.yields => {
            disable_active(py, d);
            true
        }
        _ => false,
    }
}
