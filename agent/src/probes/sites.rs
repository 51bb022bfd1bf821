//! Aggregate mode's kernel maps: creation sites by slot, their counts and
//! lifetime buckets, the free-slot stack and the live goroutines (an array
//! of sets, with a spill table for full sets and for goroutines found
//! alive at attach). The
//! two small arrays user space scans every export (keys, counts) are mapped
//! into memory (BPF_F_MMAPABLE), so an idle export costs no syscall; the
//! buckets are read with one syscall per site whose exits grew (mapped,
//! all their pages would count in the agent's resident memory).

use super::Error;
use super::mmap::Mapping;
use agent_common::{
    LIVE_BLOCK_SETS, LIVE_SETS, LifetimeBounds, LiveBlock, LiveGoroutine, LiveKey, LiveSet,
    MAX_SITES, OVERFLOW_SITE, SiteKey, SiteLifetimes, SiteTotals, live_place,
};
use aya::maps::{Array, HashMap, MapData, Stack};
use std::os::fd::{AsFd, AsRawFd};

/// bpf_map_update_elem's flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;

/// A BPF array mapped read-write into this process.
struct Mapped<T> {
    map: Mapping,
    len: usize,
    _t: std::marker::PhantomData<T>,
    /// Keeps the map (and so the mapping's object) alive.
    _map: MapData,
}

impl<T: Copy> Mapped<T> {
    fn new(name: &'static str, map: MapData, len: usize) -> Result<Self, Error> {
        let bytes = (len * std::mem::size_of::<T>()).next_multiple_of(4096);
        let mapping = Mapping::new(map.fd().as_fd().as_raw_fd(), bytes, 0, true)
            .map_err(|e| Error::Map(name, e.to_string()))?;
        Ok(Mapped {
            map: mapping,
            len,
            _t: std::marker::PhantomData,
            _map: map,
        })
    }

    fn ptr(&self) -> *mut T {
        self.map.ptr().as_ptr().cast()
    }

    fn get(&self, i: usize) -> T {
        assert!(i < self.len);
        // SAFETY: in bounds of the mapping; T is plain data. The kernel may
        // be adding to it: a torn read of a counter only delays its delta.
        unsafe { std::ptr::read_volatile(self.ptr().add(i)) }
    }

    /// Atomically adds `n` to the u64 at byte `field` of element `i`
    /// (a locked add, like the kernel's, on the shared page).
    fn atomic_add(&mut self, i: usize, field: usize, n: u64) {
        assert!(i < self.len && field + 8 <= std::mem::size_of::<T>() && field.is_multiple_of(8));
        // SAFETY: in bounds and 8-aligned (T's fields are u64s); the kernel
        // only ever updates it atomically too.
        unsafe {
            let p = self.ptr().add(i).cast::<u8>().add(field);
            (*p.cast::<std::sync::atomic::AtomicU64>())
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn set(&mut self, i: usize, v: T) {
        assert!(i < self.len);
        // SAFETY: as in `get`.
        unsafe { std::ptr::write_volatile(self.ptr().add(i), v) }
    }
}

/// What `KernelSites::insert_live` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    Yes,
    /// The probes put it there (they saw it created).
    AlreadyThere,
    /// The table is full.
    Full,
}

/// The kernel's per-site counting state.
pub struct KernelSites {
    ids: HashMap<MapData, SiteKey, u32>,
    keys: Mapped<SiteKey>,
    /// Created per slot, then exited per slot.
    totals: Mapped<u64>,
    lifetimes: Array<MapData, SiteLifetimes>,
    free: Stack<MapData, u32>,
    /// Read with batched syscalls; mapped only while freeing the slots of
    /// exited processes, so its pages do not stay in the agent's RSS.
    live: Array<MapData, LiveBlock>,
    spill: HashMap<MapData, LiveKey, LiveGoroutine>,
    /// The spill table may hold entries: walking its 256K buckets, empty,
    /// was a seventh of the idle agent's CPU time, so `scan_live` skips it
    /// until the kernel spills (`note_spilled`) or user space inserts.
    spill_used: bool,
    bounds: Vec<u64>,
}

impl KernelSites {
    /// Takes the maps from the loaded object, fills the free-slot queue
    /// and sets the lifetime bounds.
    pub(super) fn new(ebpf: &mut aya::Ebpf, bounds: &LifetimeBounds) -> Result<Self, Error> {
        fn take(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<aya::maps::Map, Error> {
            ebpf.take_map(name)
                .ok_or_else(|| Error::Map(name, "missing".into()))
        }
        fn data(name: &'static str, m: aya::maps::Map) -> Result<MapData, Error> {
            match m {
                aya::maps::Map::Array(d) => Ok(d),
                _ => Err(Error::Map(name, "not an array".into())),
            }
        }
        let mut b: Array<MapData, LifetimeBounds> = Array::try_from(take(ebpf, "BOUNDS")?)
            .map_err(|e| Error::Map("BOUNDS", e.to_string()))?;
        b.set(0, bounds, 0)
            .map_err(|e| Error::Map("BOUNDS", e.to_string()))?;
        let mut free: Stack<MapData, u32> = Stack::try_from(take(ebpf, "FREE_SITES")?)
            .map_err(|e| Error::Map("FREE_SITES", e.to_string()))?;
        // Pushed highest first, so the kernel takes the lowest first.
        for slot in ((OVERFLOW_SITE + 1)..MAX_SITES).rev() {
            free.push(slot, 0)
                .map_err(|e| Error::Map("FREE_SITES", e.to_string()))?;
        }
        Ok(KernelSites {
            ids: HashMap::try_from(take(ebpf, "SITE_IDS")?)
                .map_err(|e| Error::Map("SITE_IDS", e.to_string()))?,
            keys: Mapped::new(
                "SITE_KEYS",
                data("SITE_KEYS", take(ebpf, "SITE_KEYS")?)?,
                MAX_SITES as usize,
            )?,
            totals: Mapped::new(
                "SITE_TOTALS",
                data("SITE_TOTALS", take(ebpf, "SITE_TOTALS")?)?,
                2 * MAX_SITES as usize,
            )?,
            lifetimes: Array::try_from(take(ebpf, "SITE_LIFETIMES")?)
                .map_err(|e| Error::Map("SITE_LIFETIMES", e.to_string()))?,
            free,
            live: Array::try_from(take(ebpf, "LIVE")?)
                .map_err(|e| Error::Map("LIVE", e.to_string()))?,
            spill: HashMap::try_from(take(ebpf, "LIVE_SPILL")?)
                .map_err(|e| Error::Map("LIVE_SPILL", e.to_string()))?,
            spill_used: false,
            bounds: bounds.ns[..bounds.len as usize].to_vec(),
        })
    }

    /// The lifetime buckets' upper bounds the kernel uses, in ns.
    pub fn bounds(&self) -> &[u64] {
        &self.bounds
    }

    /// Slots holding a site, with its key (the overflow slot is reported
    /// separately, by `counts(OVERFLOW_SITE)`).
    pub fn in_use(&self) -> impl Iterator<Item = (u32, SiteKey)> + '_ {
        (OVERFLOW_SITE + 1..MAX_SITES).filter_map(|slot| {
            let k = self.keys.get(slot as usize);
            (k.pid != 0).then_some((slot, k))
        })
    }

    /// Goroutines created and not exited over `in_use` (the slots in use)
    /// and the overflow slot, from the mapped totals (no syscall): 0 means
    /// the live table holds nothing but the goroutines of processes whose
    /// slots were freed, and what user space put in the spill table.
    pub fn live_in_slots(&self, in_use: impl Iterator<Item = u32>) -> u64 {
        std::iter::once(OVERFLOW_SITE)
            .chain(in_use)
            .map(|slot| {
                let t = self.totals(slot);
                t.created.saturating_sub(t.exited)
            })
            .sum()
    }

    /// The spill table may hold entries.
    pub fn spill_used(&self) -> bool {
        self.spill_used
    }

    /// A slot's counts since it was taken.
    pub fn totals(&self, slot: u32) -> SiteTotals {
        SiteTotals {
            created: self.totals.get(slot as usize),
            exited: self.totals.get((MAX_SITES + slot) as usize),
        }
    }

    /// A slot's lifetime buckets (one syscall).
    pub fn lifetimes(&self, slot: u32) -> Option<SiteLifetimes> {
        self.lifetimes.get(&slot, 0).ok()
    }

    /// Returns a slot to the kernel once its process is gone and its last
    /// counts were read.
    pub fn free(&mut self, slot: u32) {
        let key = self.keys.get(slot as usize);
        if key.pid == 0 {
            return;
        }
        // The id goes first: from then on the kernel cannot count into the
        // slot (its process is gone anyway).
        let _ = self.ids.remove(&key);
        self.keys.set(slot as usize, SiteKey::default());
        self.totals.set(slot as usize, 0);
        self.totals.set((MAX_SITES + slot) as usize, 0);
        let _ = self.lifetimes.set(slot, SiteLifetimes::default(), 0);
        // Cannot overflow: the stack holds every slot at most once.
        let _ = self.free.push(slot, 0);
    }

    /// Removes the live goroutines of the processes in `pids` (they
    /// exited); returns how many there were. One batched read of each
    /// table for all of them; the array's slots are freed through a
    /// short-lived mapping with the kernel's protocol, the spill table's
    /// entries with a syscall each.
    pub fn forget_live(&mut self, pids: &[u32]) -> u64 {
        let mut slots: Vec<(u32, usize, u64)> = Vec::new();
        let _ = self.scan_sets(|set, s| {
            for (w, slot) in s.slots.iter().enumerate() {
                if slot.g != 0 && pids.contains(&slot.pid) {
                    slots.push((set, w, slot.g));
                }
            }
        });
        let mut n = self.free_live_slots(&slots);
        let mut gone: Vec<LiveKey> = Vec::new();
        let _ = self.scan_spill(|k, _| {
            if pids.contains(&k.pid) {
                gone.push(*k);
            }
        });
        for k in &gone {
            if self.spill.remove(k).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Frees array slots (set, way, g) of exited processes; returns how
    /// many were still theirs.
    fn free_live_slots(&self, slots: &[(u32, usize, u64)]) -> u64 {
        use aya::maps::IterableMap;
        use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
        if slots.is_empty() {
            return 0;
        }
        let bytes = (LIVE_SETS as usize * std::mem::size_of::<LiveSet>()).next_multiple_of(4096);
        let fd = self.live.map().fd().as_fd().as_raw_fd();
        let Ok(base) = Mapping::new(fd, bytes, 0, true) else {
            tracing::debug!("live array not mapped: exited processes' slots stay");
            return 0;
        };
        let sets = base.ptr().cast::<LiveSet>().as_ptr();
        let mut n = 0;
        for &(set, w, gp) in slots {
            // SAFETY: set < LIVE_SETS and w < LIVE_WAYS (read from the
            // map), inside the mapping; the fields are aligned, and the
            // kernel only touches them atomically or in its own slots.
            unsafe {
                let s = &raw mut (*sets.add(set as usize)).slots[w];
                let g = &*(&raw mut (*s).g).cast::<AtomicU64>();
                let pid = &*(&raw mut (*s).pid).cast::<AtomicU32>();
                // The process is gone: nothing else frees or claims this
                // slot unless its pid and g came back (pid reuse).
                if g.load(SeqCst) == gp {
                    pid.store(0, SeqCst);
                    if g.compare_exchange(gp, 0, SeqCst, SeqCst).is_ok() {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Calls `f` with each set of the live array, read in batches of 32
    /// elements, 512 sets (BPF_MAP_LOOKUP_BATCH).
    fn scan_sets(&self, mut f: impl FnMut(u32, &LiveSet)) -> std::io::Result<()> {
        use aya::maps::IterableMap;
        let fd = self.live.map().fd().as_fd().as_raw_fd();
        super::batch::lookup(fd, 32, |k: &u32, b: &LiveBlock| {
            for (i, s) in b.sets.iter().enumerate() {
                f(k * LIVE_BLOCK_SETS + i as u32, s);
            }
        })
    }

    fn scan_spill(&self, f: impl FnMut(&LiveKey, &LiveGoroutine)) -> std::io::Result<()> {
        use aya::maps::IterableMap;
        let fd = self.spill.map().fd().as_fd().as_raw_fd();
        super::batch::lookup(fd, 4096, f)
    }

    /// The kernel's spill counter grew: its table is read again.
    pub fn note_spilled(&mut self) {
        self.spill_used = true;
    }

    /// Calls `f` with every live goroutine the kernel holds (array, then
    /// spill table), read in batches. Entries added or removed meanwhile
    /// may or may not be seen; one the kernel spills after this read is
    /// seen once its counter's growth is noted.
    pub fn scan_live(
        &mut self,
        mut f: impl FnMut(&LiveKey, &LiveGoroutine),
    ) -> std::io::Result<()> {
        self.scan_sets(|_, s| {
            for slot in &s.slots {
                // pid 0: free, or being claimed or freed.
                if slot.g != 0 && slot.pid != 0 {
                    let key = LiveKey {
                        pid: slot.pid,
                        _pad: 0,
                        g: slot.g,
                    };
                    let g = LiveGoroutine {
                        created_ns: slot.created_ns,
                        site: slot.site,
                        _pad: 0,
                    };
                    f(&key, &g);
                }
            }
        })?;
        if self.spill_used {
            let mut n = 0;
            self.scan_spill(|k, g| {
                n += 1;
                f(k, g)
            })?;
            self.spill_used = n > 0;
        }
        Ok(())
    }

    /// The slot for goroutines of `key`'s site found alive at attach, taken
    /// by user space like the kernel takes one; `None` when none is free.
    pub fn take_slot(&mut self, key: SiteKey) -> Option<u32> {
        if let Ok(slot) = self.ids.get(&key, 0) {
            return Some(slot);
        }
        let slot = self.free.pop(0).ok()?;
        match self.ids.insert(key, slot, BPF_NOEXIST) {
            Ok(()) => {
                self.keys.set(slot as usize, key);
                Some(slot)
            }
            Err(_) => {
                let _ = self.free.push(slot, 0);
                self.ids.get(&key, 0).ok()
            }
        }
    }

    /// Puts a goroutine found alive at attach in the spill table, unless
    /// the probes already entered it (they saw its creation, which they
    /// finish before the goroutine can be seen alive).
    pub fn insert_live(&mut self, key: LiveKey, g: LiveGoroutine) -> Inserted {
        let (block, set) = live_place(key.pid, key.g);
        if let Ok(block) = self.live.get(&block, 0)
            && block.sets[set]
                .slots
                .iter()
                .any(|s| s.g == key.g && s.pid == key.pid)
        {
            return Inserted::AlreadyThere;
        }
        match self.spill.insert(key, g, BPF_NOEXIST) {
            Ok(()) => {
                self.spill_used = true;
                Inserted::Yes
            }
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Inserted::AlreadyThere
            }
            Err(_) => Inserted::Full,
        }
    }

    /// Takes a goroutine `insert_live` put in at `site` out again; false
    /// if it is not there (its exit took it). An entry of the same g at
    /// another site is the kernel's, for a goroutine created on the g
    /// since (sites found at attach have slots of their own): it stays.
    /// The kernel replacing the entry between the lookup and the delete
    /// would need that creation to spill in those microseconds.
    pub fn remove_live(&mut self, key: &LiveKey, site: u32) -> bool {
        match self.spill.get(key, 0) {
            Ok(g) if g.site == site => self.spill.remove(key).is_ok(),
            _ => false,
        }
    }

    /// Adds `n` creations to a slot, as the kernel's atomic adds do.
    pub fn add_created(&mut self, slot: u32, n: u64) {
        self.totals.atomic_add(slot as usize, 0, n);
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{LIVE_SETS, LIVE_WAYS, live_set};

    /// Addresses of `n` g's of `size` bytes as Go's heap lays them out: 8
    /// KiB spans of g's only, in consecutive spans or (`scatter`) spread
    /// over a heap eight times as big, between other objects' spans.
    fn gs(n: usize, size: u64, scatter: Option<u64>) -> Vec<u64> {
        let per = 8192 / size;
        let spans = (n as u64).div_ceil(per);
        let mut taken = std::collections::HashSet::new();
        let mut seed = scatter.unwrap_or(0);
        let mut out = Vec::new();
        for s in 0..spans {
            let span = match scatter {
                None => s,
                Some(_) => loop {
                    // An LCG: deterministic, and spread enough.
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let at = (seed >> 33) % (spans * 8);
                    if taken.insert(at) {
                        break at;
                    }
                },
            };
            let base = 0xc000_000000 + span * 8192;
            out.extend((0..per).map(|i| base + i * size));
        }
        out.truncate(n);
        out
    }

    /// Goroutines that do not fit their set, after entering each
    /// process's g's.
    fn spilled(procs: &[(u32, Vec<u64>)]) -> usize {
        let mut load = vec![0usize; LIVE_SETS as usize];
        for &(pid, ref gs) in procs {
            for &g in gs {
                load[live_set(pid, g) as usize] += 1;
            }
        }
        load.into_iter().map(|l| l.saturating_sub(LIVE_WAYS)).sum()
    }

    #[test]
    fn g_addresses_spread_over_the_sets() {
        let slots = LIVE_SETS as usize * LIVE_WAYS;
        // The g's size class differs between releases (448, 480 bytes).
        for size in [448, 480] {
            // One process with its g's in a row: none spills up to three
            // quarters of the array; scattered over its heap, a few.
            for n in [slots / 2, slots * 3 / 4] {
                let one = [(4242, gs(n, size, None))];
                assert_eq!(spilled(&one), 0, "{n} g's of {size} bytes in a row");
            }
            let scattered = [(4242, gs(slots / 2, size, Some(7)))];
            let s = spilled(&scattered);
            assert!(
                s * 50 < slots / 2,
                "{s} of {} scattered g's spilled",
                slots / 2
            );
            // 50 processes of 1000 goroutines each (76 % of the slots), all
            // at the same heap addresses (every Go process's heap starts at
            // 0xc000000000), pids spread or in a row: the per-process
            // offsets keep spills under 10 %.
            for pids in [
                (0..50).map(|i| 1000 + 37 * i).collect::<Vec<u32>>(),
                (100..150).collect(),
            ] {
                let procs: Vec<(u32, Vec<u64>)> = pids
                    .iter()
                    .map(|&p| (p, gs(1000, size, Some(p as u64))))
                    .collect();
                let s = spilled(&procs);
                assert!(s * 10 < 50_000, "{s} of 50000 spilled ({size}-byte g's)");
            }
        }
    }
}
