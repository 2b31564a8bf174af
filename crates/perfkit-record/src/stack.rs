//! The calling thread's C stack. Under the frame-evaluation hook every
//! Python call is a C call too (the interpreter no longer inlines them), so
//! a recursion the plain interpreter runs in its own data stack uses C
//! stack here; the hook stops a call at [`guard_address`] with a
//! RecursionError rather than let the thread overflow its stack.

/// The lowest stack address at which a recorded Python call may start: a
/// quarter of the thread's stack above its end, which leaves what runs
/// inside that call (C code, CPython's own C recursion budget) the room it
/// has without a profiler. 0 (no limit) where the bounds cannot be read.
pub(crate) fn guard_address() -> usize {
    #[cfg(target_os = "linux")]
    // SAFETY: `attr` is initialised by pthread_getattr_np before it is read
    // and destroyed once; the out-pointers are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return 0;
        }
        let mut low: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let read = libc::pthread_attr_getstack(&attr, &mut low, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if read && !low.is_null() {
            // Stacks grow down on every Linux target CPython supports.
            return low as usize + size / 4;
        }
        0
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// Whether the caller's stack frame lies below `guard` (see [`guard_address`]).
#[inline(always)]
pub(crate) fn is_below(guard: usize) -> bool {
    let here = 0u8;
    (std::hint::black_box(&here) as *const u8 as usize) < guard
}

thread_local! {
    static GUARD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// [`guard_address`] of the calling thread, read once per thread (a
/// recorder keeps a copy, for the hook's hot path; a thread the hook runs on
/// but does not record, one that left the recording or inside a tracing
/// callback, reads it here).
pub(crate) fn this_thread_guard() -> usize {
    GUARD.with(|g| {
        if g.get() == usize::MAX {
            g.set(guard_address());
        }
        g.get()
    })
}
