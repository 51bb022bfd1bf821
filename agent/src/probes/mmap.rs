//! Shared mappings of BPF map fds (mapped arrays and ring buffers).

use std::ptr::NonNull;

/// A shared mapping of `bytes` at `offset` of the BPF map `fd`, unmapped
/// on drop.
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    bytes: usize,
}

// SAFETY: the mapping is owned by this value; whoever reads or writes it
// through `ptr` does so with volatile or atomic accesses (the kernel
// writes concurrently).
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps read-write if `writable`, else read-only; the kernel checks
    /// size, offset and protection against the map.
    pub(super) fn new(
        fd: i32,
        bytes: usize,
        offset: usize,
        writable: bool,
    ) -> std::io::Result<Self> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping of a BPF map fd; nothing else is
        // mapped at the address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).expect("mmap returned non-null"),
            bytes,
        })
    }

    pub(super) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}
