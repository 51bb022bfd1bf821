//! BPF_MAP_LOOKUP_BATCH (Linux 5.6), which aya does not wrap: a hash or array map
//! read a few thousand entries per syscall instead of two syscalls per
//! entry (get-next-key, then lookup).

use std::os::fd::RawFd;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `f` with every entry of the hash or array map `fd`, `chunk` at a time.
pub fn lookup<K: Copy + Default, V: Copy + Default>(
    fd: RawFd,
    chunk: usize,
    mut f: impl FnMut(&K, &V),
) -> std::io::Result<()> {
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // A hash map's batch token is a bucket index (u32); room for more.
    let mut token = [0u64; 1];
    let mut next = [0u64; 1];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the attr points at buffers of `chunk` keys and values
        // and at 8-byte tokens; the kernel writes at most that much.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (r < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(chunk);
        for i in 0..n {
            f(&keys[i], &values[i]);
        }
        match err {
            // The end of the map (the last batch may hold entries).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
            None => {}
        }
        token = next;
        first = false;
    }
}
