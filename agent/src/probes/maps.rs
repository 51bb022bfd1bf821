//! The maps user space reads besides the event ring: process exec/exit
//! events, creation stacks, and the kernel's loss and activity counters.

use super::ringbuf::Ring;
use agent_common::{UserStack, counter};
use aya::maps::{HashMap, MapData, PerCpuArray};

/// Process exec/exit events from the kernel (read when node mode watches).
pub struct ProcEvents(pub(super) Ring);

impl ProcEvents {
    /// Calls `f` for each pending event; malformed entries are skipped and
    /// counted in the return value's second half.
    pub fn drain(&mut self, mut f: impl FnMut(agent_common::ProcEvent)) -> (usize, usize) {
        let (mut n, mut bad) = (0, 0);
        self.0.drain(|item| {
            if item.len() < std::mem::size_of::<agent_common::ProcEvent>() {
                bad += 1;
                return;
            }
            // SAFETY: length checked; plain repr(C) data, any bit pattern valid.
            let ev = unsafe {
                std::ptr::read_unaligned(item.as_ptr().cast::<agent_common::ProcEvent>())
            };
            n += 1;
            f(ev);
        });
        (n, bad)
    }
}

impl std::os::fd::AsRawFd for ProcEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.fd()
    }
}

/// User stacks collected by the kernel, read from the `STACKS` map.
pub struct KernelStacks(pub(super) HashMap<MapData, u64, UserStack>);

impl KernelStacks {
    /// Stacks currently stored (walks the map: for tests and diagnostics).
    pub fn stored(&self) -> usize {
        self.0.keys().filter(|k| k.is_ok()).count()
    }
}

impl crate::model::StackSource for KernelStacks {
    fn user_stack(&mut self, key: u64) -> Option<Vec<u64>> {
        let st = self.0.get(&key, 0).ok()?;
        Some(st.pcs().to_vec())
    }

    fn forget(&mut self, key: u64) {
        // Already gone is fine: nothing else deletes entries.
        let _ = self.0.remove(&key);
    }
}

/// The kernel's loss and activity counters (`agent_common::counter`).
pub struct KernelCounters {
    pub(super) map: PerCpuArray<MapData, u64>,
    pub(super) last: [u64; counter::COUNT as usize],
}

impl KernelCounters {
    /// Current totals, summed over CPUs.
    pub fn read(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.map.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }

    /// Increase since the previous call, per counter.
    pub fn deltas(&mut self) -> [u64; counter::COUNT as usize] {
        let now = self.read();
        let mut d = [0u64; counter::COUNT as usize];
        for i in 0..d.len() {
            d[i] = now[i].saturating_sub(self.last[i]);
        }
        self.last = now;
        d
    }
}
