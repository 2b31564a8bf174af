//! What a worker process does for itself (called from inside it).

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

static WORKER_PID: AtomicI32 = AtomicI32::new(0);

/// Makes SIGTERM, which a worker receives when its parent dies (the pool
/// sets it as the worker's PR_SET_PDEATHSIG), terminate the worker's whole
/// process group: the processes its tasks started would otherwise outlive
/// the parent and the worker, when the parent had no chance to clean up (it
/// was killed by SIGTERM itself, say). The worker leads that group (the
/// pool's setpgid). A child a task forked, which inherits the handler, dies
/// of SIGTERM alone, as by default.
pub fn terminate_group_on_sigterm() -> io::Result<()> {
    // SAFETY: getpid cannot fail.
    WORKER_PID.store(unsafe { libc::getpid() }, Ordering::Relaxed);
    // SAFETY: sigaction is plain data; zeroed is a valid empty one.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: sigemptyset and sigaction on valid pointers; the handler makes
    // only async-signal-safe calls.
    let rc = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn on_sigterm(sig: libc::c_int) {
    // SAFETY: signal, getpid, kill and raise are async-signal-safe. SIGTERM
    // is blocked while this runs: the one sent to this process too is
    // delivered on return, with the default action (the process ends of it).
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        if libc::getpid() == WORKER_PID.load(Ordering::Relaxed) {
            libc::kill(0, sig);
        } else {
            libc::raise(sig);
        }
    }
}
