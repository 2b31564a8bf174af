//! Copies straight out of another process's memory (`process_vm_readv`):
//! workers read the caller's arguments this way, and the caller reads its
//! workers' results, one copy each and no shared file.
//!
//! The kernel allows it to a process that may ptrace the other: its
//! ancestors, or any process of the same user where Yama's `ptrace_scope`
//! is 0. Results land in [`CopiedRegion`], anonymous memory of this process.

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
    let mut done = 0usize;
    while done < dst.len() {
        let local = libc::iovec {
            iov_base: dst[done..].as_mut_ptr().cast(),
            iov_len: dst.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (address as usize + done) as *mut libc::c_void,
            iov_len: dst.len() - done,
        };
        // SAFETY: `local` is the unwritten rest of `dst`, which we borrow
        // mutably; the kernel validates the remote range (EFAULT if unmapped).
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

/// Anonymous memory of this process holding buffers copied out of another.
/// Its own mapping (not the heap), so that it goes back to the system as
/// soon as it is dropped; 2 MiB pages where the kernel gives them, so that
/// filling it takes a page fault per 2 MiB rather than per 4 KiB.
pub struct CopiedRegion {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping belongs to this struct alone and is unmapped once, in Drop.
unsafe impl Send for CopiedRegion {}
// SAFETY: shared references only read the pointer and length; writers go
// through the buffers their users take (as with any Python buffer).
unsafe impl Sync for CopiedRegion {}

impl CopiedRegion {
    fn new(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Ok(CopiedRegion {
                ptr: std::ptr::NonNull::dangling().as_ptr(),
                len: 0,
            });
        }
        // SAFETY: a fresh anonymous private mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if len >= 2 << 20 {
            // SAFETY: advice on our own fresh mapping; refusal changes nothing but speed.
            unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        }
        Ok(CopiedRegion {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the buffers at `spans` (address, length) of process `pid` in
    /// back to back (aligned to [`crate::shm::ALIGN`]); returns the region
    /// and each buffer's (offset, length) in it.
    pub fn copy_from(pid: i32, spans: &[(u64, u64)]) -> io::Result<(Self, Vec<(u64, u64)>)> {
        // The spans come from another process: every sum is checked, and the
        // whole must fit in an allocation (isize::MAX bytes).
        let too_large = || io::Error::new(io::ErrorKind::InvalidData, "buffers too large");
        let mut placed = Vec::with_capacity(spans.len());
        let mut end = 0u64;
        for &(_, len) in spans {
            let off = end
                .checked_next_multiple_of(crate::shm::ALIGN)
                .ok_or_else(too_large)?;
            end = off.checked_add(len).ok_or_else(too_large)?;
            placed.push((off, len));
        }
        let total = usize::try_from(end)
            .ok()
            .filter(|&t| t <= isize::MAX as usize)
            .ok_or_else(too_large)?;
        let mut region = CopiedRegion::new(total)?;
        let whole = region.as_mut_slice();
        for (&(address, _), &(off, len)) in spans.iter().zip(&placed) {
            // In bounds by construction; checked anyway rather than trusted.
            let dst = whole
                .get_mut(off as usize..(off + len) as usize)
                .ok_or_else(too_large)?;
            read_into(pid, address, dst)?;
        }
        Ok((region, placed))
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: our own mapping of `len` bytes (or an empty dangling slice),
        // alive and not yet shared while we hold `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The bytes at `off..off + len` (tests: once shared, Python may write them).
    #[cfg(test)]
    fn read(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.len);
        // SAFETY: in bounds (asserted), mapping alive while &self is.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) }
    }
}

impl Drop for CopiedRegion {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping our own mapping exactly once.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_lays_buffers_out_aligned() {
        let me = std::process::id() as i32;
        assert!(can_read(me));
        let a: Vec<u8> = (0..100u8).collect();
        let b = vec![7u8; 3 << 20];
        let spans = [
            (a.as_ptr() as u64, a.len() as u64),
            (b.as_ptr() as u64, b.len() as u64),
            (a.as_ptr() as u64, 0),
        ];
        let (region, placed) = CopiedRegion::copy_from(me, &spans).unwrap();
        assert_eq!(placed, vec![(0, 100), (128, 3 << 20), (128 + (3 << 20), 0)]);
        assert_eq!(region.read(0, 100), &a[..]);
        assert_eq!(region.read(128, 3 << 20), &b[..]);
        let (empty, placed) = CopiedRegion::copy_from(me, &[]).unwrap();
        assert!(empty.is_empty() && placed.is_empty());
    }

    #[test]
    fn unmapped_or_missing_memory_is_an_error_not_a_crash() {
        let me = std::process::id() as i32;
        let err = CopiedRegion::copy_from(me, &[(8, 16)]).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
        // Spans whose lengths wrap around when laid out: refused before any copy.
        let src = [0u8; 64];
        let a = src.as_ptr() as u64;
        let mut wrapping = vec![(a, 64), (a, u64::MAX - 100)];
        let err = CopiedRegion::copy_from(me, &wrapping).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        wrapping = vec![(a, 64)];
        wrapping.extend(std::iter::repeat_n((a, 1u64 << 46), 1 << 18));
        wrapping.push((a, 4096));
        let err = CopiedRegion::copy_from(me, &wrapping).err().unwrap();
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
