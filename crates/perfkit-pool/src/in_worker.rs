//! What a worker process does for itself (called from inside it).

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

static WORKER_PID: AtomicI32 = AtomicI32::new(0);

/// The signal a worker receives when its parent dies (its PR_SET_PDEATHSIG):
/// a real-time one, which task code does not catch or ignore as it may
/// SIGTERM, so that the worker cannot outlive the parent.
pub fn parent_death_signal() -> libc::c_int {
    libc::SIGRTMAX() - 2
}

/// Makes the parent-death signal kill the worker's whole process group:
/// the processes its tasks started would otherwise outlive the parent and
/// the worker, when the parent had no chance to clean up (it was killed by
/// SIGKILL or SIGTERM, say). Only where this process leads its group, as
/// the pool's workers do (their setpgid): elsewhere the signal just ends it.
pub fn kill_group_when_parent_dies() -> io::Result<()> {
    // SAFETY: getpid and getpgrp cannot fail.
    let (pid, group) = unsafe { (libc::getpid(), libc::getpgrp()) };
    if pid != group {
        return Ok(());
    }
    WORKER_PID.store(pid, Ordering::Relaxed);
    // SAFETY: sigaction is plain data; zeroed is a valid empty one.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_parent_death as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: sigemptyset and sigaction on valid pointers; the handler makes
    // only async-signal-safe calls.
    let rc = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(parent_death_signal(), &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn on_parent_death(sig: libc::c_int) {
    // SAFETY: getpid, kill, signal and raise are async-signal-safe.
    unsafe {
        if libc::getpid() == WORKER_PID.load(Ordering::Relaxed) {
            libc::kill(0, libc::SIGKILL); // this worker and what its tasks started
        }
        // A child a task forked, sent the signal by someone: as by default.
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}
