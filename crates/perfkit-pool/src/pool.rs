//! The pool: one supervising thread per worker slot, a shared queue of
//! batches, and a queue of events back to the caller.
//!
//! A slot thread takes the next batch, sends the call's function first if
//! its worker does not hold it yet, sends the batch and blocks on the reply.
//! If the reply pipe ends, the worker died: the thread reaps it (exit status
//! or signal), reads the index of the task it was running, removes its
//! segments, reports `Event::WorkerDied`, and starts a replacement at once.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::frame::{FrameKind, FLAG_RESULTS_IN_PLACE, FLAG_SEGMENT_RETAINED};
use crate::remote::{copy_buffers, CopiedBuffer};
use crate::shm::{self, MappedSegment, SegmentCache, SegmentSpec};
use crate::worker::{describe_exit, kill_pid, Worker, WorkerCommand};

/// How long a worker that lost its pipe may take to exit before SIGKILL.
const REAP_GRACE: Duration = Duration::from_millis(500);
/// Free argument segments kept mapped for reuse, at most this many bytes.
const SEGMENT_CACHE_BYTES: usize = 512 << 20;

/// One batch of one call.
pub struct Job {
    pub call: u64,
    pub batch: u64,
    /// The call's pickled function(s), sent once per worker per call.
    pub function: Arc<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The segment holding the batch's out-of-band buffers, and their spans.
    pub segment: Option<(MappedSegment, Vec<(u64, u64)>)>,
    /// Or: (address, length) of buffers the worker copies straight out of
    /// this process (process_vm_readv), so that the parent copies nothing.
    /// The caller keeps them alive and unchanged until the batch's reply.
    pub remote: Vec<(u64, u64)>,
}

/// A worker's answer to a batch.
pub struct Reply {
    pub call: u64,
    pub batch: u64,
    /// The batch raised (payload describes the error) rather than returned.
    pub is_error: bool,
    pub payload: Vec<u8>,
    /// Where the reply's large buffers are, with their (offset, length) spans.
    pub segment: Option<(ReplyBuffers, Vec<(u64, u64)>)>,
    pub pid: i32,
    /// The worker still references the batch's argument segment.
    pub segment_retained: bool,
}

/// Where a reply's large buffers are.
pub enum ReplyBuffers {
    /// A segment the worker wrote, opened here.
    Segment(File),
    /// Already copied out of the worker's memory (FLAG_RESULTS_IN_PLACE), one per span.
    Copied(Vec<CopiedBuffer>),
}

pub enum Event {
    Reply(Reply),
    /// The worker running `batch` of `call` died; `task` is the index it was running (-1 unknown).
    WorkerDied {
        call: u64,
        batch: u64,
        pid: i32,
        reason: String,
        task: i64,
    },
    /// This process could not run the batch or take its reply: no worker
    /// could be started, or a reply's results could not be opened here.
    Failed {
        call: u64,
        batch: u64,
        message: String,
    },
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    shutdown: bool,
    /// Per slot: the batch it runs.
    busy: Vec<Option<Running>>,
    /// Per slot: its worker was killed by `kill_busy` (it may have answered
    /// first, and must still be replaced before it is given another batch).
    killed: Vec<bool>,
    pids: Vec<i32>,
    /// Per slot: the call of the batch its thread has taken from the queue
    /// and not yet finished with (running, being resent, or about to start).
    held: Vec<Option<u64>>,
    /// Calls given up by their caller while a slot held one of their batches:
    /// a reply that comes in for them later is dropped here (closing its
    /// segment) instead of waiting in the event queue, holding a descriptor,
    /// until some later call drains it. An entry goes when no slot holds a
    /// batch of its call any more, so the set stays as small as the pool.
    cancelled: HashSet<u64>,
}

/// A batch a slot's worker is running.
#[derive(Clone, Copy)]
struct Running {
    call: u64,
    batch: u64,
    pid: i32,
    /// When it was handed to the worker (for a per-batch timeout).
    since: Instant,
}

impl Running {
    fn new(job: &Job, pid: i32) -> Self {
        Running {
            call: job.call,
            batch: job.batch,
            pid,
            since: Instant::now(),
        }
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    segments: SegmentCache,
}

/// The slot threads' events, for the caller. A mutex and a condvar rather
/// than an mpsc channel: a channel's receiver spins and yields before it
/// sleeps, which cost about 90 µs of CPU per event here (measured), taken
/// from the workers when they fill every core.
#[derive(Default)]
struct EventQueue {
    state: Mutex<EventState>,
    ready: Condvar,
}

#[derive(Default)]
struct EventState {
    events: VecDeque<Event>,
    /// Slot threads still running (none left and no event: the pool is gone).
    senders: usize,
}

impl EventQueue {
    fn send(&self, event: Event) {
        self.state.lock().unwrap().events.push_back(event);
        self.ready.notify_one();
    }

    fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap();
        loop {
            if let Some(event) = st.events.pop_front() {
                return Some(event);
            }
            let now = Instant::now();
            if st.senders == 0 || now >= deadline {
                return None;
            }
            st = self.ready.wait_timeout(st, deadline - now).unwrap().0;
        }
    }
}

/// Counts a slot thread out of the event queue's senders when it ends, however it ends.
struct SenderGuard(Arc<EventQueue>);

impl Drop for SenderGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.state.lock() {
            st.senders -= 1;
        }
        self.0.ready.notify_all();
    }
}

/// Shared by reference (`&self` everywhere): one thread may wait for events
/// while another submits or terminates.
pub struct Pool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    size: usize,
    events: Arc<EventQueue>,
    prefix: String,
}

impl Pool {
    /// Starts `n` workers and waits until each has been spawned.
    pub fn start(n: usize, command: WorkerCommand) -> io::Result<Pool> {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                busy: vec![None; n],
                killed: vec![false; n],
                held: vec![None; n],
                pids: vec![0; n],
                ..State::default()
            }),
            wake: Condvar::new(),
            segments: SegmentCache::new(SEGMENT_CACHE_BYTES),
        });
        let prefix = shm::pool_prefix(std::process::id());
        let command = Arc::new(command);
        let events = Arc::new(EventQueue::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let pool = Pool {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
            size: n,
            events: events.clone(),
            prefix,
        };
        for slot in 0..n {
            events.state.lock().unwrap().senders += 1;
            let (shared, tx, command, ready) = (
                shared.clone(),
                SenderGuard(events.clone()),
                command.clone(),
                ready_tx.clone(),
            );
            let prefix = pool.prefix.clone();
            let handle = std::thread::Builder::new()
                .name(format!("perfkit-pool-{slot}"))
                .spawn(move || slot_main(slot, shared, tx, command, ready, prefix))?;
            pool.threads.lock().unwrap().push(handle);
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    pool.terminate();
                    return Err(e);
                }
                Err(_) => {
                    pool.terminate();
                    return Err(io::Error::other("a pool thread ended during start-up"));
                }
            }
        }
        Ok(pool)
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The segment-name prefix of this pool (`perfkit-<pid>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A mapped segment of at least `size` bytes for a batch's buffers (reused when possible).
    pub fn segment(&self, size: usize) -> io::Result<MappedSegment> {
        self.shared.segments.take(size)
    }

    /// Marks the start of a call: free segments the previous call left unused are dropped.
    pub fn begin_call(&self) {
        self.shared.segments.drop_unused();
    }

    pub fn submit(&self, job: Job) {
        let mut st = self.shared.state.lock().unwrap();
        if st.shutdown {
            return;
        }
        st.jobs.push_back(job);
        drop(st);
        self.shared.wake.notify_one();
    }

    /// Drops the queued batches of `call` (and their segments), and the
    /// replies of those already taken by a slot; returns how many were
    /// dropped from the queue. A call is cancelled for good: submitting
    /// more of its batches afterwards is the caller's error.
    pub fn cancel(&self, call: u64) -> usize {
        let removed: Vec<Job> = {
            let mut st = self.shared.state.lock().unwrap();
            let (keep, drop_): (VecDeque<Job>, VecDeque<Job>) =
                st.jobs.drain(..).partition(|j| j.call != call);
            st.jobs = keep;
            if st.held.contains(&Some(call)) {
                st.cancelled.insert(call);
            }
            drop_.into()
        };
        let n = removed.len();
        for j in removed {
            if let Some((seg, _)) = j.segment {
                self.shared.segments.give_back(seg);
            }
        }
        n
    }

    /// Kills the workers running batches of `call` (timeouts, abandoned calls);
    /// their slots start replacements. Returns the (batch, pid) pairs killed.
    pub fn kill_busy(&self, call: u64) -> Vec<(u64, i32)> {
        let mut st = self.shared.state.lock().unwrap();
        let mut victims = Vec::new();
        for slot in 0..st.busy.len() {
            if let Some(running) = st.busy[slot] {
                if running.call == call {
                    kill_pid(running.pid);
                    st.killed[slot] = true;
                    victims.push((running.batch, running.pid));
                }
            }
        }
        victims
    }

    /// The batches of `call` that workers are running: (batch, seconds since
    /// each was handed to its worker).
    pub fn running(&self, call: u64) -> Vec<(u64, f64)> {
        let st = self.shared.state.lock().unwrap();
        st.busy
            .iter()
            .flatten()
            .filter(|running| running.call == call)
            .map(|running| (running.batch, running.since.elapsed().as_secs_f64()))
            .collect()
    }

    /// Number of batches queued or running.
    pub fn pending(&self) -> usize {
        let st = self.shared.state.lock().unwrap();
        st.jobs.len() + st.busy.iter().flatten().count()
    }

    pub fn pids(&self) -> Vec<i32> {
        self.shared.state.lock().unwrap().pids.clone()
    }

    /// The next event, or None after `timeout` (or once the pool is gone).
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout)
    }

    fn stop(&self, kill: Stop) {
        let pids: Vec<i32> = {
            let mut st = self.shared.state.lock().unwrap();
            st.shutdown = true;
            st.jobs.clear();
            match kill {
                Stop::All => st.pids.clone(),
                // Only a worker running a batch: one whose slot still holds
                // the batch it answered (the slot has not looped back to let
                // it go; the caller may already have its results and be
                // exiting) is idle, and one about to be handed a batch sees
                // `shutdown` under this lock first and is not handed it.
                Stop::Busy => (0..st.pids.len())
                    .filter(|&slot| st.busy[slot].is_some())
                    .map(|slot| st.pids[slot])
                    .collect(),
                Stop::None => Vec::new(),
            }
        };
        self.shared.wake.notify_all();
        for pid in pids {
            kill_pid(pid);
        }
        let threads: Vec<JoinHandle<()>> = self.threads.lock().unwrap().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        self.shared.segments.clear();
        shm::remove_prefix(&self.prefix);
    }

    /// Kills every worker now (Ctrl-C, drop) and joins the slot threads.
    pub fn terminate(&self) {
        self.stop(Stop::All)
    }

    /// Lets workers finish their batch and exit on end of file (SIGKILL after a grace period).
    pub fn close(&self) {
        self.stop(Stop::None)
    }

    /// What the end of the process does: idle workers exit on end of file,
    /// as from `close` (their tasks' buffered output is flushed, their
    /// `atexit` handlers run); a worker still running a batch, which nothing
    /// will wait for, is killed.
    pub fn close_idle_kill_busy(&self) {
        self.stop(Stop::Busy)
    }
}

/// Which workers [`Pool::stop`] kills rather than lets exit.
#[derive(Clone, Copy)]
enum Stop {
    All,
    Busy,
    None,
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.threads.get_mut().unwrap().is_empty() {
            self.terminate();
        }
    }
}

fn slot_main(
    slot: usize,
    shared: Arc<Shared>,
    events: SenderGuard,
    command: Arc<WorkerCommand>,
    ready: Sender<io::Result<()>>,
    prefix: String,
) {
    let mut worker = match Worker::spawn(&command) {
        Ok(w) => {
            shared.state.lock().unwrap().pids[slot] = w.pid;
            let _ = ready.send(Ok(()));
            Some(w)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(ready);
    loop {
        let job = {
            let mut st = shared.state.lock().unwrap();
            release(&mut st, slot);
            loop {
                if st.shutdown {
                    break None;
                }
                if let Some(j) = st.jobs.pop_front() {
                    st.held[slot] = Some(j.call);
                    break Some(j);
                }
                st = shared.wake.wait(st).unwrap();
            }
        };
        let Some(job) = job else { break };
        if worker.is_none() {
            match Worker::spawn(&command) {
                Ok(w) => {
                    shared.state.lock().unwrap().pids[slot] = w.pid;
                    worker = Some(w);
                }
                Err(e) => {
                    if let Some((seg, _)) = job.segment {
                        shared.segments.give_back(seg);
                    }
                    let message = format!("could not start a worker process: {e}");
                    events.0.send(Event::Failed {
                        call: job.call,
                        batch: job.batch,
                        message,
                    });
                    continue;
                }
            }
        }
        let w = worker.as_mut().unwrap();
        {
            let mut st = shared.state.lock().unwrap();
            if st.shutdown {
                break;
            }
            // Marked busy under the lock `cancel` and `kill_busy` take: a batch
            // of an abandoned call either never starts or has its worker killed
            // (its buffers may be freed by the caller as soon as the call is given up).
            if st.cancelled.contains(&job.call) {
                drop(st);
                if let Some((seg, _)) = job.segment {
                    shared.segments.give_back(seg);
                }
                continue;
            }
            st.busy[slot] = Some(Running::new(&job, w.pid));
        }
        let mut outcome = run_job(w, &job);
        if let Err(JobError::NotDelivered) = &outcome {
            // The worker died while idle (the OOM killer, a signal from
            // outside, `kill_busy` for an earlier batch): it never saw this
            // batch, so a fresh one runs it, unless its call was given up
            // meanwhile or the pool is stopping. One killed on purpose while
            // this batch was still being written to it (`kill_busy`, a stop:
            // a batch larger than the pipe) did not die idle: its batch is
            // not resent (helper-55: at exit it ran on a fresh worker while
            // the program waited).
            let killed_on_purpose = {
                let st = shared.state.lock().unwrap();
                st.killed[slot] || st.shutdown
            };
            retire(slot, &mut worker, &shared, &prefix);
            if killed_on_purpose {
                outcome = Err(JobError::Dropped);
            } else if respawn(slot, &mut worker, &shared, &command) {
                let w = worker.as_mut().unwrap();
                let mut st = shared.state.lock().unwrap();
                if st.cancelled.contains(&job.call) || st.shutdown {
                    outcome = Err(JobError::Dropped);
                } else {
                    st.busy[slot] = Some(Running::new(&job, w.pid));
                    drop(st);
                    outcome = run_job(w, &job);
                }
            }
        }
        // The segment is free again unless the worker still maps parts of it
        // (then it is dropped here: unmapped in this process, kept alive by the worker's mapping).
        let retained = matches!(
            &outcome,
            Ok(Reply {
                segment_retained: true,
                ..
            }) | Err(JobError::Local(_, true))
        );
        if let Some((seg, _)) = job.segment {
            if !retained {
                shared.segments.give_back(seg);
            }
        }
        let (shutting_down, killed) = {
            let mut st = shared.state.lock().unwrap();
            st.busy[slot] = None;
            (st.shutdown, std::mem::take(&mut st.killed[slot]))
        };
        match outcome {
            Ok(reply) => {
                {
                    // Checked and sent under the lock, so that a reply is either
                    // queued before `cancel` returns (the next call drains it) or dropped.
                    let st = shared.state.lock().unwrap();
                    if !st.cancelled.contains(&reply.call) {
                        events.0.send(Event::Reply(reply));
                    }
                }
                if killed {
                    // It answered, then `kill_busy` killed it: replace it before
                    // it is handed a batch it would die on.
                    retire(slot, &mut worker, &shared, &prefix);
                    if shutting_down {
                        break;
                    }
                    respawn(slot, &mut worker, &shared, &command);
                }
            }
            Err(JobError::Dropped) => {}
            Err(JobError::Local(e, _)) => {
                if shutting_down {
                    break;
                }
                if killed {
                    // `kill_busy` killed it while its results were being copied
                    // out (its call was given up; the copy failed for that): it
                    // must not be handed the next batch, which it would die on.
                    retire(slot, &mut worker, &shared, &prefix);
                    respawn(slot, &mut worker, &shared, &command);
                    continue;
                }
                let pid = worker.as_ref().map_or(0, |w| w.pid);
                events.0.send(Event::Failed {
                    call: job.call,
                    batch: job.batch,
                    message: format!(
                        "could not take in the results worker process {pid} sent back: {e}"
                    ),
                });
            }
            Err(_) if worker.is_none() => {
                // No replacement could be started for a worker that died idle.
                if shutting_down {
                    break;
                }
                events.0.send(Event::Failed {
                    call: job.call,
                    batch: job.batch,
                    message: "a worker process died while idle and no replacement could be started"
                        .to_string(),
                });
            }
            Err(error) => {
                if let (JobError::Protocol(_), Some(w)) = (&error, &worker) {
                    // Alive and out of step: no use waiting for it to exit.
                    kill_pid(w.pid);
                }
                let (pid, task, status, killed_here) = retire(slot, &mut worker, &shared, &prefix);
                if shutting_down {
                    break;
                }
                let reason = match error {
                    // Its SIGKILL (above) is not the news.
                    JobError::Protocol(what) => format!("sent a reply out of protocol ({what})"),
                    // Nor is the one after its grace: its pipe closed while it lived on.
                    _ if killed_here => {
                        "closed its pipes to perfkit but went on running (a task that \
                         closes file descriptors it does not own, say), and was killed"
                            .to_string()
                    }
                    _ => describe_exit(status),
                };
                events.0.send(Event::WorkerDied {
                    call: job.call,
                    batch: job.batch,
                    pid,
                    reason,
                    task,
                });
                // Replace it now, so that the next call finds a full, warm pool.
                respawn(slot, &mut worker, &shared, &command);
            }
        }
    }
    if let Some(w) = worker {
        let pid = w.pid;
        w.shut_down(REAP_GRACE);
        shm::remove_prefix(&format!("{prefix}r{pid}-"));
    }
}

/// The slot is done with the batch it took: its call, if cancelled and
/// held by no other slot, can send no more replies to drop.
fn release(st: &mut State, slot: usize) {
    if let Some(call) = st.held[slot].take() {
        if !st.held.contains(&Some(call)) {
            st.cancelled.remove(&call);
        }
    }
}

/// Reaps a slot's worker (dead, or killed), kills what its tasks left
/// running in its process group, and removes what it left in /dev/shm;
/// returns its pid, the task it was running and how it ended.
fn retire(
    slot: usize,
    worker: &mut Option<Worker>,
    shared: &Shared,
    prefix: &str,
) -> (i32, i64, Option<std::process::ExitStatus>, bool) {
    let mut dead = worker.take().expect("a slot retires the worker it has");
    let task = dead.current_task();
    // Forgotten before it is reaped, after which its pid may be reused by an
    // unrelated process: no `kill_busy` or `terminate` may signal it then
    // (this thread kills it if it must), and a kill meant for it must not be
    // taken for its successor's.
    let mut st = shared.state.lock().unwrap();
    st.pids[slot] = 0;
    st.busy[slot] = None;
    st.killed[slot] = false;
    drop(st);
    let status = dead.reap(REAP_GRACE, true);
    shm::remove_prefix(&format!("{prefix}r{}-", dead.pid));
    (dead.pid, task, status, dead.killed_after_grace)
}

/// Starts a slot's next worker; false if it could not be started.
fn respawn(
    slot: usize,
    worker: &mut Option<Worker>,
    shared: &Shared,
    command: &WorkerCommand,
) -> bool {
    match Worker::spawn(command) {
        Ok(w) => {
            shared.state.lock().unwrap().pids[slot] = w.pid;
            *worker = Some(w);
            true
        }
        Err(_) => false,
    }
}

/// Why a batch did not come back.
enum JobError {
    /// Writing the batch failed with a broken pipe: the worker had exited
    /// before it was given anything (it may be replaced and the batch resent).
    NotDelivered,
    /// The pipe to or from the worker failed: it died, and its exit status says how.
    Failed,
    /// The worker answered with a frame that is not this batch's reply.
    Protocol(String),
    /// The worker answered, but its results could not be taken in by this
    /// process (out of file descriptors or memory, say): not the worker's
    /// fault. With whether the worker still maps the batch's segment.
    Local(io::Error, bool),
    /// Not run: its call was given up before it could be resent.
    Dropped,
}

impl From<io::Error> for JobError {
    fn from(_: io::Error) -> Self {
        JobError::Failed
    }
}

fn run_job(w: &mut Worker, job: &Job) -> Result<Reply, JobError> {
    let not_delivered = |e: io::Error| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            JobError::NotDelivered
        } else {
            JobError::Failed
        }
    };
    w.reset_current_task();
    if w.function_of_call != Some(job.call) {
        w.send(FrameKind::Function, 0, job.call, 0, b"", &job.function)
            .map_err(not_delivered)?;
        w.function_of_call = Some(job.call);
    }
    let meta = match &job.segment {
        Some((seg, spans)) => seg.describe(spans),
        None if !job.remote.is_empty() => SegmentSpec {
            name: format!("vm:{}", std::process::id()),
            spans: job.remote.clone(),
        }
        .encode(),
        None => Vec::new(),
    };
    let flags = if w.results_in_place {
        FLAG_RESULTS_IN_PLACE
    } else {
        0
    };
    w.send(
        FrameKind::Batch,
        flags,
        job.call,
        job.batch,
        &meta,
        &job.payload,
    )
    .map_err(not_delivered)?;
    let frame = w.receive().map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => JobError::Protocol(e.to_string()),
        _ => JobError::Failed,
    })?;
    let is_error = match frame.kind {
        FrameKind::Result => false,
        FrameKind::Error => true,
        other => {
            return Err(JobError::Protocol(format!("a {other:?} frame")));
        }
    };
    if frame.call != job.call || frame.batch != job.batch {
        return Err(JobError::Protocol(format!(
            "the reply to batch {} of call {}, expected batch {} of call {}",
            frame.batch, frame.call, job.batch, job.call
        )));
    }
    // Whatever happens to its results, the worker may still map the batch's segment.
    let retained = frame.flags & FLAG_SEGMENT_RETAINED != 0;
    let local = |e| JobError::Local(e, retained);
    let segment = match SegmentSpec::decode(&frame.meta).map_err(local)? {
        Some(spec) if spec.name.starts_with("vm:") => {
            // Only the worker's own memory, and only when it was offered.
            if !w.results_in_place {
                return Err(JobError::Protocol("results left in place unasked".into()));
            }
            if spec.name[3..].parse::<i32>().ok() != Some(w.pid) {
                return Err(JobError::Protocol(format!(
                    "results left in another process, {}",
                    &spec.name[3..]
                )));
            }
            let copied = copy_buffers(w.pid, &spec.spans);
            // Copied or not, the worker may drop them now; if it cannot be told, it has died.
            let _ = w.send(FrameKind::Release, 0, job.call, job.batch, b"", b"");
            let spans = spec.spans.iter().map(|&(_, len)| (0, len)).collect();
            Some((ReplyBuffers::Copied(copied.map_err(local)?), spans))
        }
        Some(spec) => {
            let file = shm::open_segment(&spec.name).map_err(local)?;
            if spec.name.starts_with("memfd:") {
                // A worker that cannot be told has died; the next batch finds out.
                let _ = w.send(FrameKind::Release, 0, job.call, job.batch, b"", b"");
            }
            Some((ReplyBuffers::Segment(file), spec.spans))
        }
        None => None,
    };
    Ok(Reply {
        call: job.call,
        batch: job.batch,
        is_error,
        payload: frame.payload,
        segment,
        pid: w.pid,
        segment_retained: retained,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{read_frame, write_frame};
    use crate::worker::sh;

    #[test]
    fn event_queue_waits_wakes_and_ends_with_its_senders() {
        let queue = Arc::new(EventQueue::default());
        queue.state.lock().unwrap().senders = 1;
        let t0 = Instant::now();
        assert!(queue.recv_timeout(Duration::from_millis(50)).is_none());
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let sender = SenderGuard(queue.clone());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            sender.0.send(Event::Failed {
                call: 7,
                batch: 1,
                message: String::new(),
            });
            // The sender ends here: the queue then has none left.
        });
        let t0 = Instant::now();
        match queue.recv_timeout(Duration::from_secs(10)) {
            Some(Event::Failed {
                call: 7, batch: 1, ..
            }) => {}
            _ => panic!("expected the event sent"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "woken by the send, not the timeout"
        );
        t.join().unwrap();
        // No sender and nothing queued: None at once, not after the timeout.
        let t0 = Instant::now();
        assert!(queue.recv_timeout(Duration::from_secs(10)).is_none());
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    fn job(call: u64, batch: u64) -> Job {
        Job {
            call,
            batch,
            function: Arc::new(b"f".to_vec()),
            payload: b"x".to_vec(),
            segment: None,
            remote: Vec::new(),
        }
    }

    #[test]
    fn running_lists_a_calls_batches_with_how_long_each_has_run() {
        let pool = Pool::start(1, sh("head -c 1 <&3 >/dev/null; exec sleep 30")).unwrap();
        assert!(pool.running(1).is_empty());
        pool.submit(job(1, 7));
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.running(1).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(50));
        let running = pool.running(1);
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].0, 7);
        assert!(running[0].1 >= 0.05 && running[0].1 < 5.0, "{running:?}");
        assert!(pool.running(2).is_empty(), "another call's");
        pool.terminate();
    }

    #[test]
    fn cancelled_calls_are_forgotten_once_no_slot_holds_their_batches() {
        // Every given-up call used to stay in `cancelled` for the pool's life.
        let pool = Pool::start(1, sh("head -c 1 <&3 >/dev/null; exec sleep 30")).unwrap();
        let cancelled = || pool.shared.state.lock().unwrap().cancelled.clone();
        pool.submit(job(1, 0));
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.shared.state.lock().unwrap().busy[0].is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        for call in 2..200 {
            pool.submit(job(call, 0));
            assert_eq!(pool.cancel(call), 1);
        }
        assert!(cancelled().is_empty(), "calls no slot held were kept");
        assert_eq!(pool.cancel(1), 0);
        assert_eq!(cancelled(), HashSet::from([1]));
        assert_eq!(pool.kill_busy(1).len(), 1);
        // Its reply can no longer come once the slot has let the batch go.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cancelled().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            cancelled().is_empty(),
            "a call no slot holds any more was kept"
        );
        pool.terminate();
    }

    #[test]
    fn at_exit_a_worker_whose_slot_still_holds_its_answered_batch_exits_on_end_of_file() {
        // The last reply reaches the caller before its slot thread lets the
        // batch go; a program exiting in that window had its idle worker
        // SIGKILLed, losing its buffered output and atexit handlers (CI saw it).
        let marker = std::env::temp_dir().join(format!("perfkit-eof-exit-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let script = format!("cat <&3 >/dev/null; touch '{}'", marker.display());
        let pool = Pool::start(1, sh(&script)).unwrap();
        // The window, held open: an idle worker whose slot holds a batch.
        pool.shared.state.lock().unwrap().held[0] = Some(9);
        pool.close_idle_kill_busy();
        assert!(marker.exists(), "the idle worker was killed, not let exit");
        let _ = std::fs::remove_file(&marker);
        // A worker running a batch is killed at once.
        let pool = Pool::start(
            1,
            sh(&format!(
                "head -c 1 <&3 >/dev/null; sleep 30; touch '{}'",
                marker.display()
            )),
        )
        .unwrap();
        pool.submit(job(1, 0));
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.shared.state.lock().unwrap().busy[0].is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let t0 = Instant::now();
        pool.close_idle_kill_busy();
        assert!(t0.elapsed() < REAP_GRACE, "{:?}", t0.elapsed());
        assert!(!marker.exists());
    }

    #[test]
    fn dead_worker_is_reported_and_replaced() {
        let pool = Pool::start(1, sh("head -c 1 <&3 >/dev/null; kill -KILL $$")).unwrap();
        let first = pool.pids()[0];
        let t0 = Instant::now();
        pool.submit(job(1, 5));
        match pool.next_event(Duration::from_secs(5)) {
            Some(Event::WorkerDied {
                call,
                batch,
                reason,
                ..
            }) => {
                assert_eq!((call, batch), (1, 5));
                assert_eq!(reason, "killed by signal 9 (SIGKILL)");
            }
            _ => panic!("expected a WorkerDied event"),
        }
        assert!(t0.elapsed() < Duration::from_secs(1));
        // The slot replaced its worker.
        let deadline = Instant::now() + Duration::from_secs(2);
        while pool.pids()[0] == first && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_ne!(pool.pids()[0], first);
        pool.terminate();
    }

    #[test]
    fn batch_for_a_worker_that_died_idle_goes_to_its_replacement() {
        // The first worker dies at once, before it is given anything; the
        // batch must reach a fresh worker (which here dies on it, so that its
        // pid shows who ran it), not be reported as the first one's crash.
        let marker =
            std::env::temp_dir().join(format!("perfkit-idle-death-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let script = format!(
            "if [ ! -e '{m}' ]; then touch '{m}'; kill -KILL $$; fi; head -c 1 <&3 >/dev/null; kill -KILL $$",
            m = marker.display()
        );
        let pool = Pool::start(1, sh(&script)).unwrap();
        let first = pool.pids()[0];
        while !marker.exists() || std::fs::metadata(format!("/proc/{first}/fd/3")).is_ok() {
            std::thread::sleep(Duration::from_millis(5)); // until the first one is gone
        }
        pool.submit(job(3, 1));
        match pool.next_event(Duration::from_secs(5)) {
            Some(Event::WorkerDied { batch, pid, .. }) => {
                assert_eq!(batch, 1);
                assert_ne!(
                    pid, first,
                    "the batch was blamed on the worker that died idle"
                );
            }
            _ => panic!("expected the replacement's death"),
        }
        pool.terminate();
        let _ = std::fs::remove_file(&marker);
    }

    #[test]
    fn protocol_violation_ends_the_worker() {
        // `cat` copies fd 3 to fd 4: the pool gets its own Function frame
        // back, a protocol violation, which must end the worker (reported as a
        // death that says what happened, not as the SIGKILL that ended it).
        let pool = Pool::start(1, sh("exec cat <&3 >&4")).unwrap();
        let t0 = Instant::now();
        pool.submit(job(2, 1));
        match pool.next_event(Duration::from_secs(5)) {
            Some(Event::WorkerDied { batch, reason, .. }) => {
                assert_eq!(batch, 1);
                assert_eq!(reason, "sent a reply out of protocol (a Function frame)");
            }
            _ => panic!("a protocol violation must end the worker"),
        }
        // Killed at once, not after the grace a worker that lost its pipe gets (500 ms).
        assert!(t0.elapsed() < REAP_GRACE, "{:?}", t0.elapsed());
        pool.terminate();
    }

    /// A worker that takes the Function and Batch frames of `job(2, 1)`,
    /// answers with a Result frame whose meta is `meta` (a shell expression),
    /// then idles.
    fn replies_with_meta(meta: &str, copy_results: bool) -> WorkerCommand {
        let script = format!(
            "head -c 66 <&3 >/dev/null\n\
             m=\"{meta}\"\n\
             printf '\\003\\000\\000\\000' >&4\n\
             printf \"\\\\$(printf %03o ${{#m}})\\\\000\\\\000\\\\000\" >&4\n\
             printf '\\002\\000\\000\\000\\000\\000\\000\\000' >&4\n\
             printf '\\001\\000\\000\\000\\000\\000\\000\\000' >&4\n\
             printf '\\000\\000\\000\\000\\000\\000\\000\\000' >&4\n\
             printf '%s' \"$m\" >&4\n\
             exec sleep 30"
        );
        WorkerCommand {
            copy_results,
            ..sh(&script)
        }
    }

    #[test]
    fn results_left_in_place_are_read_only_from_the_worker_that_was_asked() {
        // Not asked (the pool did not offer it): a protocol violation.
        let pool = Pool::start(1, replies_with_meta("vm:$$\t4096:8", false)).unwrap();
        pool.submit(job(2, 1));
        match pool.next_event(Duration::from_secs(5)) {
            Some(Event::WorkerDied { reason, .. }) => {
                assert_eq!(
                    reason,
                    "sent a reply out of protocol (results left in place unasked)"
                )
            }
            _ => panic!("unasked results in place must end the worker"),
        }
        pool.terminate();
        // Asked, but pointing at another process: never read, the worker ends.
        let pool = Pool::start(1, replies_with_meta("vm:1\t4096:8", true)).unwrap();
        pool.submit(job(2, 1));
        match pool.next_event(Duration::from_secs(5)) {
            Some(Event::WorkerDied { reason, .. }) => assert_eq!(
                reason,
                "sent a reply out of protocol (results left in another process, 1)"
            ),
            _ => panic!("results in another process must end the worker"),
        }
        pool.terminate();
        // Asked, its own memory, but nothing mapped there: the call hears why.
        let pool = Pool::start(1, replies_with_meta("vm:$$\t4096:8", true)).unwrap();
        let pid = pool.pids()[0];
        pool.submit(job(2, 1));
        match pool.next_event(Duration::from_secs(5)) {
            Some(Event::Failed { batch, message, .. }) => {
                assert_eq!(batch, 1);
                assert_eq!(
                    message,
                    format!("could not take in the results worker process {pid} sent back: Bad address (os error 14)")
                );
            }
            _ => panic!("an unreadable result must fail the batch"),
        }
        pool.terminate();
    }

    #[test]
    fn cancel_frees_queued_segments_and_terminate_cleans_up() {
        let pool = Pool::start(1, sh("sleep 30; true")).unwrap();
        let prefix = pool.prefix().to_string();
        pool.submit(job(1, 1)); // taken by the sleeping worker
        let mut seg = pool.segment(100).unwrap();
        let spans = seg.write(&[b"data"]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        pool.submit(Job {
            segment: Some((seg, spans)),
            ..job(1, 2)
        });
        assert_eq!(pool.cancel(1), 1);
        assert_eq!(
            pool.shared.segments.free_count(),
            1,
            "a cancelled batch's segment is reused"
        );
        assert!(shm::list_prefix(&prefix).is_empty());
        let pids = pool.pids();
        let t0 = Instant::now();
        pool.terminate();
        assert!(t0.elapsed() < Duration::from_secs(2));
        for pid in pids {
            // SAFETY: kill(pid, 0) only probes for existence.
            assert_ne!(
                unsafe { libc::kill(pid, 0) },
                0,
                "worker {pid} survived terminate"
            );
        }
    }

    #[test]
    fn frames_written_by_hand_are_read_back() {
        // Guards the byte layout the Python worker relies on (`<IIQQQ`).
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Result, 0, 0x0102, 0x0304, b"m", b"p").unwrap();
        assert_eq!(&buf[0..4], &3u32.to_le_bytes());
        assert_eq!(&buf[4..8], &1u32.to_le_bytes());
        assert_eq!(&buf[8..16], &0x0102u64.to_le_bytes());
        assert_eq!(read_frame(&mut &buf[..]).unwrap().unwrap().batch, 0x0304);
    }

    /// A stop that lands while the slot reaps a worker that died idle: the
    /// batch it could not deliver is not handed to a fresh worker (helper-55).
    #[test]
    fn a_batch_for_a_worker_that_died_idle_is_not_resent_once_the_pool_stops() {
        let dir = std::env::temp_dir().join(format!("perfkit-no-resend-1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = dir.join("first");
        let ran = dir.join("ran");
        // First worker: closes its task pipe (the batch write fails: not
        // delivered) but lives on, so that its reap takes the grace period.
        // Later workers: take a batch, note it, exit.
        let script = format!(
            "if [ -e '{f}' ]; then [ \"$(head -c 1 <&3 | wc -c)\" = 1 ] && touch '{r}'; else touch '{f}'; exec 3<&-; sleep 5; fi",
            f = first.display(),
            r = ran.display()
        );
        let pool = Pool::start(1, sh(&script)).unwrap();
        std::thread::sleep(Duration::from_millis(300)); // (its pipe is closed by now)
        let call = 1;
        let j = Job {
            call,
            batch: 0,
            function: Arc::new(b"f".to_vec()),
            payload: b"x".to_vec(),
            segment: None,
            remote: Vec::new(),
        };
        pool.submit(j);
        // Wait for the window: the slot holds the batch, is retiring its worker (pid 0), not busy.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = pool.shared.state.lock().unwrap();
            if st.held[0].is_some() && st.busy[0].is_none() && st.pids[0] == 0 {
                break;
            }
            drop(st);
            assert!(Instant::now() < deadline, "never saw the window");
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = Instant::now();
        pool.close_idle_kill_busy(); // the program's end
        let took = t0.elapsed();
        let handed = ran.exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            !handed,
            "a batch was handed to a fresh worker after the pool's shutdown at exit (stop took {took:?})"
        );
    }

    /// Stops the pool (`stop`) while its worker is busy because the batch is
    /// still being written to it (more than a pipe holds): whether a fresh
    /// worker was handed the batch after all.
    fn batch_resent_after_a_stop_mid_write(name: &str, stop: impl FnOnce(&Pool)) -> bool {
        let dir = std::env::temp_dir().join(format!("perfkit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (first, ran) = (dir.join("first"), dir.join("ran"));
        let script = format!(
            "if [ -e '{f}' ]; then [ \"$(head -c 1 <&3 | wc -c)\" = 1 ] && touch '{r}'; sleep 2; else touch '{f}'; exec sleep 30; fi",
            f = first.display(),
            r = ran.display()
        );
        let pool = Pool::start(1, sh(&script)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        pool.submit(Job {
            payload: vec![b'x'; 4 << 20],
            ..job(1, 0)
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.shared.state.lock().unwrap().busy[0].is_none() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(100));
        stop(&pool);
        let handed = ran.exists();
        let _ = std::fs::remove_dir_all(&dir);
        handed
    }

    /// At exit, a worker killed as busy while its batch was still being
    /// written failed the write as though it had died idle: the batch was
    /// resent and ran while the exit waited (helper-55).
    #[test]
    fn a_worker_killed_at_exit_while_its_batch_is_written_does_not_get_it_resent() {
        assert!(!batch_resent_after_a_stop_mid_write(
            "no-resend-exit",
            Pool::close_idle_kill_busy
        ));
    }

    /// `terminate` likewise.
    #[test]
    fn terminate_while_a_batch_is_written_does_not_resend_it() {
        assert!(!batch_resent_after_a_stop_mid_write(
            "no-resend-terminate",
            Pool::terminate
        ));
    }
}
