//! The profile's clocks, read twice per call: the cheapest read wins.
//!
//! Wall time comes from the CPU's time-stamp counter where the kernel itself
//! trusts it (its clocksource is `tsc`: invariant and synchronised across
//! cores), about half the cost of `clock_gettime` on the machines we
//! measured. Ticks are converted to nanoseconds when a tree is taken, by the
//! rate measured against `CLOCK_MONOTONIC` since the clock was first used, so
//! recording never pays for the conversion. Elsewhere (no invariant TSC, not
//! x86-64) wall time is `CLOCK_MONOTONIC` directly and the rate is 1.

use std::sync::OnceLock;

/// Which clock times the calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockKind {
    /// Monotonic wall time, nanosecond resolution.
    Wall,
    /// `CLOCK_THREAD_CPUTIME_ID`: CPU time of the calling thread, so that
    /// each thread's tree is timed by its own work. Costs a system call per read.
    Cpu,
}

impl ClockKind {
    pub fn parse(name: &str) -> Option<ClockKind> {
        match name {
            "wall" => Some(ClockKind::Wall),
            "cpu" => Some(ClockKind::Cpu),
            _ => None,
        }
    }

    /// The name [`ClockKind::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            ClockKind::Wall => "wall",
            ClockKind::Cpu => "cpu",
        }
    }
}

struct Origin {
    use_tsc: bool,
    ticks: u64,
    nanos: u64,
}

static ORIGIN: OnceLock<Origin> = OnceLock::new();
/// Copied out of ORIGIN so that the hot path reads a plain bool.
static mut USE_TSC: bool = false;

fn kernel_trusts_tsc() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .map(|s| s.trim() == "tsc")
        .unwrap_or(false)
}

/// Chooses the wall clock; call before the first [`read`] (done on every enable).
pub fn init() {
    let origin = ORIGIN.get_or_init(|| {
        let use_tsc = kernel_trusts_tsc();
        Origin {
            use_tsc,
            ticks: ticks(use_tsc),
            nanos: posix(libc::CLOCK_MONOTONIC),
        }
    });
    // SAFETY: written with the same value every time, before any hook runs, GIL held.
    unsafe { USE_TSC = origin.use_tsc };
}

/// Nanoseconds per tick of [`read`] for `kind`, measured since [`init`].
pub fn nanos_per_tick(kind: ClockKind) -> f64 {
    match (kind, ORIGIN.get()) {
        (ClockKind::Wall, Some(o)) if o.use_tsc => {
            let dt = ticks(true).saturating_sub(o.ticks);
            let dn = posix(libc::CLOCK_MONOTONIC).saturating_sub(o.nanos);
            if dt == 0 || dn == 0 {
                1.0
            } else {
                dn as f64 / dt as f64
            }
        }
        _ => 1.0,
    }
}

#[inline(always)]
fn posix(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock ids used here exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

#[inline(always)]
fn ticks(use_tsc: bool) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if use_tsc {
        // SAFETY: rdtsc has no preconditions; it is only chosen when the kernel trusts the TSC.
        return unsafe { core::arch::x86_64::_rdtsc() };
    }
    let _ = use_tsc;
    posix(libc::CLOCK_MONOTONIC)
}

/// The current time of `kind`, in its own ticks (see [`nanos_per_tick`]).
#[inline(always)]
pub fn read(kind: ClockKind) -> u64 {
    match kind {
        // SAFETY: USE_TSC is only written in `init`, before hooks are installed.
        ClockKind::Wall => ticks(unsafe { USE_TSC }),
        ClockKind::Cpu => posix(libc::CLOCK_THREAD_CPUTIME_ID),
    }
}

/// Monotonic nanoseconds, for durations that are not on the hot path.
pub fn monotonic_ns() -> u64 {
    posix(libc::CLOCK_MONOTONIC)
}
