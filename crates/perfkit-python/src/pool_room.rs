//! Room in CPython's small-object allocator before a worker runs a task.
//!
//! pymalloc serves each size class from the pool at the head of that class's
//! list. Freeing a block into a *full* pool puts that pool back at the head
//! with one free block; the next allocation of the class takes it and the
//! pool is full again, so it leaves the list. A task whose hot loop frees and
//! makes objects of one class (ints and floats in arithmetic: `total +=
//! (i * i) % 7`) then pays a list insertion and removal at every step, for as
//! long as the loop runs: it took 20–40 % longer (CPython 3.11, 2-core
//! VM; bench/README.md, *What limits each*). Whether a task starts in that
//! state depends on what the process freed just before, here the previous
//! task's arguments and results: half of a perfkit worker's fresh processes
//! started the bench's CPU-bound task in it.
//!
//! So before a task, for the classes of the most common objects (32 to 128
//! bytes: ints, floats, small tuples, bound methods, small dicts), a worker
//! takes a few blocks of each class: when they all come from one pool, that
//! pool has room and they are given back; when the head pool runs out among
//! them, its blocks are kept (the pool stays full, out of the list) and the
//! rest given back to the next pool, which then heads the list with room.
//!
//! This module reads nothing of the allocator's memory: it only allocates
//! and frees through `PyObject_Malloc` / `PyObject_Free` and compares block
//! addresses, so under another allocator (PYTHONMALLOC=malloc, debug hooks)
//! it is merely useless, never unsafe. It must not run where the caller's
//! own objects live (the threads backend): only worker processes turn it on.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;

/// pymalloc's pool size: 4 KiB in 3.9, 16 KiB from 3.10 on 64-bit builds
/// (with the radix tree, CPython's default). A wrong guess only makes the
/// check weaker (4 KiB pools read as 16) or keeps a few blocks too many.
#[cfg(Py_3_10)]
const POOL_BITS: u32 = 14;
#[cfg(not(Py_3_10))]
const POOL_BITS: u32 = 12;

/// The size classes made room in: those of ints and floats (32 bytes),
/// 1- and 2-tuples, range iterators, bound methods (48, 64) and small
/// containers (80-128), the objects a tight loop makes and frees.
const CLASSES: [usize; 7] = [32, 48, 64, 80, 96, 112, 128];

/// Blocks a head pool must still have: a loop's objects alive at once in one
/// class (the loop variable, a temporary, the old and new accumulator).
const ROOM: usize = 8;

/// Rounds of taking blocks per class: each round that finds the head pool
/// short moves to the next pool.
const ROUNDS: usize = 4;

/// Kept blocks beyond which all are given back first (their pools are then
/// made room in again): bounds what the worker holds to a few KiB.
const MAX_HELD: usize = 512;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Blocks kept to hold short pools full, as addresses.
static HELD: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn pool_of(block: *mut c_void) -> usize {
    block as usize >> POOL_BITS
}

/// Turns the room-making before each task on or off for this process
/// (a worker turns it on at start).
#[pyfunction]
pub(crate) fn keep_pool_room(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// How many blocks the worker keeps to hold short pools full (for tests).
#[pyfunction]
pub(crate) fn pool_room_held() -> usize {
    HELD.lock().map(|h| h.len()).unwrap_or(0)
}

/// What a worker does before a task, on demand (tests, measurements): makes
/// room as if turned on.
#[pyfunction]
pub(crate) fn make_pool_room(py: Python<'_>) {
    make_room_now(py);
}

/// Makes room in the head pool of each class in CLASSES, if turned on.
pub(crate) fn make_room(py: Python<'_>) {
    if ENABLED.load(Ordering::Relaxed) {
        make_room_now(py);
    }
}

fn make_room_now(_py: Python<'_>) {
    // The GIL (`_py`) serializes every caller; the lock only satisfies Rust.
    let Ok(mut held) = HELD.lock() else { return };
    if held.len() > MAX_HELD {
        for &block in held.iter().rev() {
            // SAFETY: each address came from PyObject_Malloc below and was
            // freed nowhere else; the GIL is held.
            unsafe { ffi::PyObject_Free(block as *mut c_void) };
        }
        held.clear();
    }
    // Room for all one call can keep, asked for now: a Vec that cannot grow
    // aborts the process, and this runs when pymalloc may be out of memory
    // too (a task's MemoryError just before). Without it, no room is made.
    if held.try_reserve(CLASSES.len() * ROUNDS * ROOM).is_err() {
        return;
    }
    for size in CLASSES {
        for _ in 0..ROUNDS {
            let mut taken = [std::ptr::null_mut::<c_void>(); ROOM];
            let mut n = 0;
            while n < ROOM {
                // SAFETY: the GIL is held; a NULL (out of memory) ends the round.
                let block = unsafe { ffi::PyObject_Malloc(size) };
                if block.is_null() {
                    break;
                }
                taken[n] = block;
                n += 1;
            }
            let first_pool = pool_of(taken[0]);
            // The head pool's blocks among those taken: all of them when it
            // has room (then nothing is kept: keeping them would take that
            // room away, and leave a pool of exactly ROOM + 1 free blocks
            // with the one free block this prevents).
            let short = taken[..n]
                .iter()
                .position(|&b| pool_of(b) != first_pool)
                .unwrap_or(n);
            let kept = if short == n { 0 } else { short };
            held.extend(taken[..kept].iter().map(|&b| b as usize));
            // Given back last-taken first, so the pool hands them out again
            // in the order it gave them.
            for &block in taken[kept..n].iter().rev() {
                // SAFETY: from PyObject_Malloc above, freed once; GIL held.
                unsafe { ffi::PyObject_Free(block) };
            }
            if short == n {
                break;
            }
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(keep_pool_room, m)?)?;
    m.add_function(wrap_pyfunction!(pool_room_held, m)?)?;
    m.add_function(wrap_pyfunction!(make_pool_room, m)?)?;
    Ok(())
}
