//! One worker process: spawned as a fresh program (never a bare fork of the
//! parent), connected by two pipes and a shared status word, and bound to the
//! parent's life (PR_SET_PDEATHSIG, and end-of-file on its task pipe).
//!
//! Child side, by convention: fd 3 reads tasks, fd 4 writes replies, fd 5 is
//! an 8-byte shared word where the worker stores the index of the task it is
//! running (so a crash can be pinned on the task).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::frame::{read_frame, write_frame, Frame, FrameKind};

/// What to run as a worker.
#[derive(Debug, Clone, Default)]
pub struct WorkerCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Extra environment variables (thread limits and the like).
    pub env: Vec<(OsString, OsString)>,
    /// Let workers leave large result buffers in their memory for the parent
    /// to copy out, where the kernel lets the parent read them.
    pub copy_results: bool,
}

/// The index a worker stores before it starts any task of a batch.
pub const NO_TASK: i64 = -1;

/// The shared status word (a memfd mapped in both processes).
struct StatusWord {
    ptr: *mut i64,
    fd: OwnedFd,
}

// SAFETY: the mapping is private to this struct, lives until drop, and is only
// read with volatile loads of an aligned i64.
unsafe impl Send for StatusWord {}

impl StatusWord {
    fn new() -> io::Result<Self> {
        // SAFETY: memfd_create with a valid NUL-terminated name; result checked.
        let fd = unsafe { libc::memfd_create(c"perfkit-status".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = above_stdio(unsafe { OwnedFd::from_raw_fd(fd) })?;
        // SAFETY: plain syscalls on our own descriptor; results checked.
        let ptr = unsafe {
            if libc::ftruncate(fd.as_raw_fd(), 8) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::mmap(
                std::ptr::null_mut(),
                8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let word = StatusWord {
            ptr: ptr.cast(),
            fd,
        };
        word.set(NO_TASK);
        Ok(word)
    }

    fn get(&self) -> i64 {
        // SAFETY: ptr is a live, aligned 8-byte shared mapping.
        unsafe { std::ptr::read_volatile(self.ptr) }
    }

    fn set(&self, v: i64) {
        // SAFETY: as in get.
        unsafe { std::ptr::write_volatile(self.ptr, v) }
    }
}

impl Drop for StatusWord {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in new(), exactly once.
        unsafe {
            libc::munmap(self.ptr.cast(), 8);
        }
    }
}

/// `fd`, moved to a number above 2 if it is 0, 1 or 2: when the caller runs
/// with stdin (or stdout, stderr) closed, a new descriptor takes that number,
/// and the child's standard streams, set up after it, would replace it.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl on our own descriptor; the result is checked and owned.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `moved` is a fresh descriptor we own; `fd` closes on drop.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and ours.
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let pair = (above_stdio(pair.0)?, above_stdio(pair.1)?);
    // Larger pipes: fewer wake-ups for batch payloads (best effort; the limit may be lower).
    for fd in [&pair.0, &pair.1] {
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    }
    Ok(pair)
}

pub struct Worker {
    pub pid: i32,
    child: Child,
    to_worker: Option<BufWriter<File>>,
    from_worker: BufReader<File>,
    status: StatusWord,
    /// The call whose function this worker already holds.
    pub function_of_call: Option<u64>,
    /// Its batches go with FLAG_RESULTS_IN_PLACE: asked for, and this process can read it.
    pub results_in_place: bool,
    /// [`Worker::reap`] had to kill it: it was still running when its grace ran out.
    pub killed_after_grace: bool,
}

impl Worker {
    /// Starts a worker. The calling thread must outlive it: PR_SET_PDEATHSIG
    /// fires when the spawning *thread* ends.
    pub fn spawn(cmd: &WorkerCommand) -> io::Result<Worker> {
        let (task_r, task_w) = pipe()?;
        let (reply_r, reply_w) = pipe()?;
        let status = StatusWord::new()?;
        let parent = std::process::id() as libc::pid_t;
        let death_signal = crate::in_worker::parent_death_signal();
        let child_fds = [
            task_r.as_raw_fd(),
            reply_w.as_raw_fd(),
            status.fd.as_raw_fd(),
        ];
        let mut command = Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe calls (prctl, getppid, fcntl, dup2).
        unsafe {
            command.pre_exec(move || {
                // The worker then kills its process group, what its tasks
                // started with it (in_worker::kill_group_when_parent_dies).
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    death_signal as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(io::Error::other("parent exited during spawn"));
                }
                // Own process group: a terminal's Ctrl-C reaches the parent only
                // (it stops the workers itself), and a kill of the group also
                // takes whatever the task started.
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // Move the three descriptors above 10 first so that dup2 onto
                // 3, 4, 5 cannot clobber one of them.
                let mut high = [0; 3];
                for (i, fd) in child_fds.iter().enumerate() {
                    high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                    if high[i] < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                for (i, fd) in high.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(task_r);
        drop(reply_w);
        let pid = child.id() as i32;
        Ok(Worker {
            pid,
            results_in_place: cmd.copy_results && crate::remote::can_read(pid),
            child,
            to_worker: Some(BufWriter::with_capacity(1 << 16, File::from(task_w))),
            from_worker: BufReader::with_capacity(1 << 16, File::from(reply_r)),
            status,
            function_of_call: None,
            killed_after_grace: false,
        })
    }

    /// Sends one frame (`flags`: FLAG_* for its kind word).
    pub fn send(
        &mut self,
        kind: FrameKind,
        flags: u32,
        call: u64,
        batch: u64,
        meta: &[u8],
        payload: &[u8],
    ) -> io::Result<()> {
        let w = self
            .to_worker
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        write_frame(w, kind, flags, call, batch, meta, payload)
    }

    /// Waits for the next reply; an end of stream is an error (the worker died).
    pub fn receive(&mut self) -> io::Result<Frame> {
        read_frame(&mut self.from_worker)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "worker closed its reply pipe")
        })
    }

    /// The index of the task the worker was running (or NO_TASK).
    pub fn current_task(&self) -> i64 {
        self.status.get()
    }

    pub fn reset_current_task(&self) {
        self.status.set(NO_TASK);
    }

    /// Collects the exit status, killing the worker (and its process group)
    /// if it is still alive after `grace`. None if it could not be collected:
    /// other code in this process reaped it first (a `waitpid(-1)`), so how it
    /// ended is unknown.
    ///
    /// With `take_group` (a worker that died), what is left in its process
    /// group, processes its tasks started, is killed in any case: between its
    /// exit and its reaping, while its pid, the group's id, cannot be reused.
    pub fn reap(&mut self, grace: Duration, take_group: bool) -> Option<ExitStatus> {
        let deadline = Instant::now() + grace;
        loop {
            match has_exited(self.pid) {
                Ok(true) => break,
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Ok(false) => {
                    kill_pid(self.pid);
                    self.killed_after_grace = true;
                    break;
                }
                Err(_) => return None,
            }
        }
        if take_group {
            kill_pid(self.pid); // (exited but not reaped: its group id is still its own)
        }
        self.child.wait().ok()
    }

    /// Ends the worker politely: end of file on its task pipe, then SIGKILL after `grace`.
    pub fn shut_down(mut self, grace: Duration) {
        self.to_worker = None;
        self.reap(grace, false);
    }
}

/// Whether a child has exited, leaving it to be reaped (waitid's WNOWAIT).
/// An error (ECHILD) if it was reaped already, elsewhere in this process.
fn has_exited(pid: i32) -> io::Result<bool> {
    // SAFETY: siginfo_t is plain data, for waitid to fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child, with a valid siginfo_t; WNOWAIT leaves it unreaped.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` in (si_pid stays 0 if the child has not exited).
    Ok(unsafe { info.si_pid() } != 0)
}

/// Sends SIGKILL to a worker and its process group (by pid, from any thread).
pub fn kill_pid(pid: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on a worker we spawned (its own group leader) and
        // have not reaped: the slot thread reaps it only after this kill
        // makes its read fail.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// "killed by signal 9 (SIGKILL)" / "exited with status 3".
pub fn describe_exit(status: Option<ExitStatus>) -> String {
    let Some(st) = status else {
        return "ended, how is unknown (this process reaped it elsewhere)".to_string();
    };
    if let Some(sig) = st.signal() {
        format!("killed by signal {sig} ({})", signal_name(sig))
    } else {
        format!("exited with status {}", st.code().unwrap_or(-1))
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => "unknown signal",
    }
}

/// A worker that is a shell one-liner, for the crate's tests (the real,
/// Python worker is covered by tests/test_parallel.py).
#[cfg(test)]
pub(crate) fn sh(script: &str) -> WorkerCommand {
    WorkerCommand {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![],
        copy_results: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_worker_round_trip() {
        // `cat <&3 >&4` echoes every frame back: a Batch frame comes back as a Batch frame.
        let mut w = Worker::spawn(&sh("exec cat <&3 >&4")).unwrap();
        w.send(FrameKind::Batch, 0, 1, 2, b"", b"payload").unwrap();
        let f = w.receive().unwrap();
        assert_eq!(
            (f.kind, f.call, f.batch, &f.payload[..]),
            (FrameKind::Batch, 1, 2, &b"payload"[..])
        );
        w.shut_down(Duration::from_secs(2));
    }

    #[test]
    fn crash_is_seen_with_its_signal() {
        let mut w = Worker::spawn(&sh("kill -SEGV $$")).unwrap();
        assert!(w.receive().is_err());
        let st = w.reap(Duration::from_secs(2), false);
        assert_eq!(describe_exit(st), "killed by signal 11 (SIGSEGV)");
    }

    #[test]
    fn env_and_exit_code() {
        let mut w = Worker::spawn(&WorkerCommand {
            env: vec![("PK_CODE".into(), "3".into())],
            ..sh("exit $PK_CODE")
        })
        .unwrap();
        assert!(w.receive().is_err());
        assert_eq!(
            describe_exit(w.reap(Duration::from_secs(2), false)),
            "exited with status 3"
        );
        assert_eq!(w.current_task(), NO_TASK);
    }
}
