//! Copies straight out of another process's memory (`process_vm_readv`):
//! workers read the caller's arguments this way, and the caller reads its
//! workers' results, one copy each and no shared file.
//!
//! The kernel allows it to a process that may ptrace the other: its
//! ancestors, or any process of the same user where Yama's `ptrace_scope`
//! is 0. Results land in [`CopiedBuffer`]s, in this process's heap.

use std::io;

/// Whether this process may read process `pid`'s memory. The kernel checks
/// permission before it looks at the address, so a read of the unmapped
/// page 0 answers EFAULT when allowed and EPERM when not.
pub fn can_read(pid: i32) -> bool {
    let mut byte = 0u8;
    let local = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 1,
    };
    // SAFETY: `local` is one writable byte on our stack; the kernel validates
    // the remote range (page 0 is never mapped, so it copies nothing).
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    n >= 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT)
}

/// Copies `dst.len()` bytes at `address` in process `pid` into `dst`.
pub fn read_into(pid: i32, address: u64, dst: &mut [u8]) -> io::Result<()> {
    // SAFETY: `dst` is writable for its whole length and borrowed mutably.
    unsafe { read_raw(pid, address, dst.as_mut_ptr(), dst.len()) }
}

/// Copies `len` bytes at `address` in process `pid` to `dst`.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes (initialized or not), and
/// nothing else may use them meanwhile.
unsafe fn read_raw(pid: i32, address: u64, dst: *mut u8, len: usize) -> io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let local = libc::iovec {
            iov_base: dst.wrapping_add(done).cast(),
            iov_len: len - done,
        };
        let remote = libc::iovec {
            iov_base: (address as usize + done) as *mut libc::c_void,
            iov_len: len - done,
        };
        // SAFETY: `local` is the unwritten rest of `dst` (the caller's
        // promise); the kernel validates the remote range (EFAULT if unmapped).
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        done += n as usize;
    }
    Ok(())
}

/// One buffer copied out of another process, in this process's heap.
///
/// The heap rather than a mapping of its own: the allocator reuses what
/// earlier results freed, where a fresh mapping takes a page fault and a
/// zeroed page per 4 KiB, which on a VM whose freed memory goes back to the
/// host costs ~10 ms per 8 MB (measured here; ~1 ms reused). numpy's own
/// arrays are allocated the same way. Aligned to [`crate::shm::ALIGN`].
pub struct CopiedBuffer {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the allocation belongs to this struct alone and is freed once, in Drop.
unsafe impl Send for CopiedBuffer {}
// SAFETY: shared references only read the pointer and length; writers go
// through the buffers their users take (as with any Python buffer).
unsafe impl Sync for CopiedBuffer {}

impl CopiedBuffer {
    fn layout(len: usize) -> io::Result<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(len, crate::shm::ALIGN as usize)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "buffer too large"))
    }

    /// `len` bytes at `address` in process `pid`, copied into a new buffer.
    pub fn copy_from(pid: i32, address: u64, len: u64) -> io::Result<Self> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "buffer too large"))?;
        if len == 0 {
            return Ok(CopiedBuffer {
                ptr: std::ptr::NonNull::dangling(),
                len: 0,
            });
        }
        let layout = Self::layout(len)?;
        let ptr = match RECYCLED.lock().unwrap().take(len) {
            Some(ptr) => ptr,
            None => {
                // SAFETY: a layout of non-zero size; a null result is handled below.
                let raw = unsafe { std::alloc::alloc(layout) };
                let ptr = std::ptr::NonNull::new(raw).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::OutOfMemory,
                        format!("cannot allocate {len} bytes"),
                    )
                })?;
                if len >= HUGE_PAGE_ADVICE_FROM {
                    advise_huge_pages(ptr.as_ptr(), len);
                }
                ptr
            }
        };
        // Owned from here, so that an error below frees it.
        let buffer = CopiedBuffer { ptr, len };
        // SAFETY: `len` bytes we just allocated (uninitialized: written, not
        // read, until the kernel has filled every one) and nothing else uses.
        unsafe { read_raw(pid, address, ptr.as_ptr(), len)? };
        Ok(buffer)
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes (tests: once shared, Python may write them).
    #[cfg(test)]
    fn bytes(&self) -> &[u8] {
        // SAFETY: our allocation of `len` bytes (or an empty dangling slice), alive while &self is.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for CopiedBuffer {
    fn drop(&mut self) {
        if self.len > 0 {
            let evicted = RECYCLED.lock().unwrap().keep(self.ptr, self.len);
            for (ptr, len) in evicted {
                free(ptr, len);
            }
        }
    }
}

fn free(ptr: std::ptr::NonNull<u8>, len: usize) {
    // SAFETY: allocated in CopiedBuffer::copy_from with this very layout, and
    // freed once: by its last owner (a buffer, or the recycler that evicts it).
    unsafe { std::alloc::dealloc(ptr.as_ptr(), CopiedBuffer::layout(len).unwrap()) };
}

/// The memory of dropped [`CopiedBuffer`]s, kept for the next ones of the
/// same length, at most this many bytes in all (the oldest go first).
///
/// The slot threads allocate them and the caller frees them, so they live
/// in the threads' malloc arenas, whose heaps malloc trims as soon as their
/// top is free: every call's results would take fresh, zeroed pages (a
/// page fault per 4 KiB; ~10 ms per 8 MB on a VM that hands freed memory
/// back to its host). Results of one call are usually alike in size.
const RECYCLE_BYTES: usize = 256 << 20;

struct Recycler {
    free: Vec<(std::ptr::NonNull<u8>, usize)>,
    bytes: usize,
}

// SAFETY: the recycler owns the allocations it holds (no one else points
// into them), and is only used under its mutex.
unsafe impl Send for Recycler {}

static RECYCLED: std::sync::Mutex<Recycler> = std::sync::Mutex::new(Recycler {
    free: Vec::new(),
    bytes: 0,
});

impl Recycler {
    /// A kept allocation of exactly `len` bytes, the most recent first.
    fn take(&mut self, len: usize) -> Option<std::ptr::NonNull<u8>> {
        let i = self.free.iter().rposition(|&(_, l)| l == len)?;
        self.bytes -= len;
        Some(self.free.remove(i).0)
    }

    /// Keeps an allocation; returns those to free now (it, if too large, or
    /// the oldest kept ones, to make room).
    fn keep(
        &mut self,
        ptr: std::ptr::NonNull<u8>,
        len: usize,
    ) -> Vec<(std::ptr::NonNull<u8>, usize)> {
        if len > RECYCLE_BYTES {
            return vec![(ptr, len)];
        }
        let mut evicted = Vec::new();
        while self.bytes + len > RECYCLE_BYTES {
            let (old, old_len) = self.free.remove(0);
            self.bytes -= old_len;
            evicted.push((old, old_len));
        }
        self.free.push((ptr, len));
        self.bytes += len;
        evicted
    }
}

/// Buffers this large get huge pages where the kernel gives them (its
/// `madvise` mode), as numpy asks for its own arrays of 4 MiB and more: a
/// page fault per 2 MiB instead of per 4 KiB when the memory is fresh.
const HUGE_PAGE_ADVICE_FROM: usize = 4 << 20;

fn advise_huge_pages(start: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let first = (start as usize).next_multiple_of(HUGE);
    let end = (start as usize + len) / HUGE * HUGE;
    if end > first {
        // SAFETY: advice on whole pages inside our own allocation; it changes
        // no contents, and a refusal changes nothing but speed.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
    }
}

/// Copies each buffer at `spans` (address, length) of process `pid` into one
/// of its own.
pub fn copy_buffers(pid: i32, spans: &[(u64, u64)]) -> io::Result<Vec<CopiedBuffer>> {
    spans
        .iter()
        .map(|&(address, len)| CopiedBuffer::copy_from(pid, address, len))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_into_aligned_buffers() {
        let me = std::process::id() as i32;
        assert!(can_read(me));
        let a: Vec<u8> = (0..100u8).collect();
        let b = vec![7u8; 3 << 20];
        let spans = [
            (a.as_ptr() as u64, a.len() as u64),
            (b.as_ptr() as u64, b.len() as u64),
            (a.as_ptr() as u64, 0),
        ];
        let copied = copy_buffers(me, &spans).unwrap();
        assert_eq!(copied[0].bytes(), &a[..]);
        assert_eq!(copied[1].bytes(), &b[..]);
        assert!(copied[2].is_empty() && copied[2].bytes().is_empty());
        for c in &copied[..2] {
            assert_eq!(c.as_ptr() as u64 % crate::shm::ALIGN, 0);
        }
        assert!(copy_buffers(me, &[]).unwrap().is_empty());
        // A dropped buffer's memory serves the next of its length (a length
        // no other test uses: the recycler is the process's).
        let c = vec![9u8; 3_000_017];
        let first = copy_buffers(me, &[(c.as_ptr() as u64, c.len() as u64)]).unwrap();
        let address = first[0].as_ptr();
        drop(first);
        let again = CopiedBuffer::copy_from(me, c.as_ptr() as u64, c.len() as u64).unwrap();
        assert_eq!(again.as_ptr(), address);
        assert_eq!(again.bytes(), &c[..]);
    }

    #[test]
    fn the_recycler_keeps_at_most_its_bound_oldest_out_first() {
        let mut r = Recycler {
            free: Vec::new(),
            bytes: 0,
        };
        let fake = |n: usize| std::ptr::NonNull::new(n as *mut u8).unwrap();
        let half = RECYCLE_BYTES / 2;
        assert!(r.keep(fake(64), half).is_empty());
        assert!(r.keep(fake(128), half).is_empty());
        assert_eq!(r.keep(fake(192), 10), vec![(fake(64), half)]);
        assert_eq!(
            r.keep(fake(256), RECYCLE_BYTES + 1),
            vec![(fake(256), RECYCLE_BYTES + 1)]
        );
        assert_eq!(r.take(10), Some(fake(192)));
        assert_eq!(r.take(10), None);
        assert_eq!(r.take(half), Some(fake(128)));
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn unmapped_or_missing_memory_is_an_error_not_a_crash() {
        let me = std::process::id() as i32;
        let err = copy_buffers(me, &[(8, 16)]).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
        // Lengths no allocation can have: refused before any copy.
        let src = [0u8; 64];
        let err = copy_buffers(me, &[(src.as_ptr() as u64, u64::MAX - 100)])
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A pid that cannot exist (above the kernel's pid_max limit).
        assert!(!can_read(i32::MAX));
        let mut dst = [0u8; 4];
        assert_eq!(
            read_into(i32::MAX, 4096, &mut dst)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ESRCH)
        );
    }
}
