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
//! takes blocks of each class one by one until ROOM of them in a row come
//! from one pool: that pool has room, and they are given back; the blocks
//! taken before them came from pools that ran out (the head pool, and any
//! short pools behind it: frees scattered through full pools leave such
//! chains), and are kept, so that those pools stay full, out of the list,
//! and the pool with room heads it. Up to MAX_TAKEN blocks a class.
//!
//! A kept block is only needed while its pool is full. Each time, the oldest
//! few are looked at again: freed and taken back. A block freed into a full
//! pool puts that pool at the head with that one free block, so the next
//! allocation of its class returns that very block: then it is kept again,
//! and nothing changed. Any other block came from elsewhere (the pool had
//! room: the freed block just adds to it) and goes back. So kept blocks
//! follow the pools that need them, and none is given back into a full pool
//! (that would make the state this module prevents). Past MAX_HELD kept
//! blocks, no more are kept (no room is made where it would need them).
//!
//! This module reads nothing of the allocator's memory: it only allocates
//! and frees through `PyObject_Malloc` / `PyObject_Free` and compares block
//! addresses, so under another allocator (PYTHONMALLOC=malloc, debug hooks)
//! it is merely useless (keeping up to MAX_HELD blocks), never unsafe. The
//! caller's own process is the user's, left as it is (the threads backend
//! runs tasks there): only worker processes turn it on.

use std::collections::VecDeque;
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

/// Blocks taken per class at most, looking for ROOM in a row from one pool:
/// a chain of short pools is kept out of the way up to MAX_TAKEN - ROOM
/// blocks (24 pools with one free block each).
const MAX_TAKEN: usize = 32;

/// Kept blocks at most (under 128 KiB; each is in a pool that is otherwise
/// full, and is given back once that pool has room).
const MAX_HELD: usize = 1024;

/// Kept blocks looked at again each time, oldest first.
const REVIEW: usize = 8;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// A block kept to hold its pool full, and its size class.
#[derive(Clone, Copy)]
struct Kept {
    block: usize,
    size: usize,
}

/// Blocks kept, oldest first.
static HELD: Mutex<VecDeque<Kept>> = Mutex::new(VecDeque::new());

fn pool_of(block: *mut c_void) -> usize {
    block as usize >> POOL_BITS
}

/// Turns the room-making before each task on or off for this process
/// (a worker turns it on at start). Off gives back all the blocks kept.
#[pyfunction]
pub(crate) fn keep_pool_room(py: Python<'_>, on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
    if !on {
        let Ok(mut held) = HELD.lock() else { return };
        for kept in held.drain(..).rev() {
            // SAFETY: a kept block, leaving HELD as it is freed.
            unsafe { free(py, kept.block as *mut c_void) };
        }
    }
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

fn make_room_now(py: Python<'_>) {
    // The GIL serializes every caller (and on a free-threaded build, where
    // this module asks for the GIL too, the lock would).
    let Ok(mut held) = HELD.lock() else { return };
    // Room for all one call can keep, asked for now: a VecDeque that cannot
    // grow aborts the process, and this runs when pymalloc may be out of
    // memory too (a task's MemoryError just before). Without it, no room.
    if held.try_reserve(CLASSES.len() * MAX_TAKEN).is_err() {
        return;
    }
    review(py, &mut held);
    for size in CLASSES {
        make_room_in(py, size, &mut held);
    }
}

/// Looks at the oldest REVIEW kept blocks again: gives back those whose pool
/// has room by now.
fn review(py: Python<'_>, held: &mut VecDeque<Kept>) {
    for _ in 0..REVIEW.min(held.len()) {
        let Some(kept) = held.pop_front() else { break };
        // SAFETY: a kept block, out of HELD now (back in only as taken again).
        unsafe { free(py, kept.block as *mut c_void) };
        let again = malloc(py, kept.size);
        if again as usize == kept.block {
            // Its pool was full: the free made it the head with this one
            // free block, which the allocation took back. As it was.
            held.push_back(kept);
        } else if !again.is_null() {
            // The pool had room (or is gone): `again` came from the head
            // pool of the class, and goes back to it. (A kept block in the
            // head pool itself comes back as if its pool were full: kept
            // one more round.)
            // SAFETY: just taken, and not kept.
            unsafe { free(py, again) };
        }
    }
}

/// Takes blocks of class `size` until ROOM in a row come from one pool,
/// keeps those taken before (their pools ran out), gives back the rest.
fn make_room_in(py: Python<'_>, size: usize, held: &mut VecDeque<Kept>) {
    let mut taken = [std::ptr::null_mut::<c_void>(); MAX_TAKEN];
    let mut n = 0;
    // Where the blocks of the last pool seen start among those taken.
    let mut run = 0;
    while n < MAX_TAKEN && n - run < ROOM {
        let block = malloc(py, size);
        if block.is_null() {
            break; // out of memory: what was taken so far is all there is
        }
        if n > run && pool_of(block) != pool_of(taken[run]) {
            run = n;
        }
        taken[n] = block;
        n += 1;
    }
    // The pools before the last one ran out. Past MAX_HELD nothing is kept,
    // and all is given back as it came.
    let keep = if held.len() + run <= MAX_HELD { run } else { 0 };
    held.extend(taken[..keep].iter().map(|&b| Kept {
        block: b as usize,
        size,
    }));
    // Given back last-taken first, so the pools hand them out again in the
    // order they gave them (and pools that ran out rejoin the list in
    // their order).
    for &block in taken[keep..n].iter().rev() {
        // SAFETY: taken above and not kept.
        unsafe { free(py, block) };
    }
}

fn malloc(_py: Python<'_>, size: usize) -> *mut c_void {
    // SAFETY: the GIL is held (`_py`); a NULL (out of memory) is the caller's.
    unsafe { ffi::PyObject_Malloc(size) }
}

/// Gives a block back to pymalloc.
///
/// # Safety
///
/// `block` came from `malloc` and is freed once.
unsafe fn free(_py: Python<'_>, block: *mut c_void) {
    // SAFETY: as the caller promises; the GIL is held (`_py`).
    unsafe { ffi::PyObject_Free(block) }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(keep_pool_room, m)?)?;
    m.add_function(wrap_pyfunction!(pool_room_held, m)?)?;
    m.add_function(wrap_pyfunction!(make_pool_room, m)?)?;
    Ok(())
}
