//! Aggregate mode's kernel maps: creation sites by slot, their counts and
//! lifetime buckets, the free-slot stack and the live-goroutine table. The
//! two small arrays user space scans every export (keys, counts) are mapped
//! into memory (BPF_F_MMAPABLE), so an idle export costs no syscall; the
//! buckets are read with one syscall per site whose exits grew (mapped,
//! all their pages would count in the agent's resident memory).

use super::Error;
use agent_common::{
    LifetimeBounds, LiveGoroutine, LiveKey, MAX_SITES, OVERFLOW_SITE, SiteKey, SiteLifetimes,
    SiteTotals,
};
use aya::maps::{Array, HashMap, MapData, Stack};
use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

/// bpf_map_update_elem's flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;

/// A BPF array mapped read-write into this process.
struct Mapped<T> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
    /// Keeps the map (and so the mapping's object) alive.
    _map: MapData,
}

// SAFETY: the mapping is owned by this value; access goes through &self /
// &mut self and volatile reads (the kernel writes concurrently).
unsafe impl<T> Send for Mapped<T> {}

impl<T: Copy> Mapped<T> {
    fn new(name: &'static str, map: MapData, len: usize) -> Result<Self, Error> {
        let bytes = (len * std::mem::size_of::<T>()).next_multiple_of(4096);
        // SAFETY: mapping a BPF array fd created with BPF_F_MMAPABLE; the
        // kernel validates size and protection.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Map(
                name,
                std::io::Error::last_os_error().to_string(),
            ));
        }
        Ok(Mapped {
            ptr: NonNull::new(p.cast()).expect("mmap returned non-null"),
            len,
            bytes,
            _map: map,
        })
    }

    fn get(&self, i: usize) -> T {
        assert!(i < self.len);
        // SAFETY: in bounds of the mapping; T is plain data. The kernel may
        // be adding to it: a torn read of a counter only delays its delta.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(i)) }
    }

    /// Atomically adds `n` to the u64 at byte `field` of element `i`
    /// (a locked add, like the kernel's, on the shared page).
    fn atomic_add(&mut self, i: usize, field: usize, n: u64) {
        assert!(i < self.len && field + 8 <= std::mem::size_of::<T>() && field.is_multiple_of(8));
        // SAFETY: in bounds and 8-aligned (T's fields are u64s); the kernel
        // only ever updates it atomically too.
        unsafe {
            let p = self.ptr.as_ptr().add(i).cast::<u8>().add(field);
            (*p.cast::<std::sync::atomic::AtomicU64>())
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn set(&mut self, i: usize, v: T) {
        assert!(i < self.len);
        // SAFETY: as in `get`.
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(i), v) }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
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
    totals: Mapped<SiteTotals>,
    lifetimes: Array<MapData, SiteLifetimes>,
    free: Stack<MapData, u32>,
    live: HashMap<MapData, LiveKey, LiveGoroutine>,
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
                MAX_SITES as usize,
            )?,
            lifetimes: Array::try_from(take(ebpf, "SITE_LIFETIMES")?)
                .map_err(|e| Error::Map("SITE_LIFETIMES", e.to_string()))?,
            free,
            live: HashMap::try_from(take(ebpf, "LIVE")?)
                .map_err(|e| Error::Map("LIVE", e.to_string()))?,
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

    /// A slot's counts since it was taken.
    pub fn totals(&self, slot: u32) -> SiteTotals {
        self.totals.get(slot as usize)
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
        self.totals.set(slot as usize, SiteTotals::default());
        let _ = self.lifetimes.set(slot, SiteLifetimes::default(), 0);
        // Cannot overflow: the stack holds every slot at most once.
        let _ = self.free.push(slot, 0);
    }

    /// Removes the live goroutines of the processes in `pids` (they
    /// exited); returns how many there were. One batched walk of the table
    /// for all of them, then a syscall per entry removed.
    pub fn forget_live(&mut self, pids: &[u32]) -> u64 {
        let mut gone: Vec<LiveKey> = Vec::new();
        let _ = self.scan_live(|k, _| {
            if pids.contains(&k.pid) {
                gone.push(*k);
            }
        });
        for k in &gone {
            let _ = self.live.remove(k);
        }
        gone.len() as u64
    }

    /// Calls `f` with every live goroutine in the kernel's table, read in
    /// batches of 4096 (BPF_MAP_LOOKUP_BATCH: a syscall per batch, not per
    /// entry). Entries added or removed meanwhile may or may not be seen.
    pub fn scan_live(&self, f: impl FnMut(&LiveKey, &LiveGoroutine)) -> std::io::Result<()> {
        use aya::maps::IterableMap;
        let fd = self.live.map().fd().as_fd().as_raw_fd();
        super::batch::lookup(fd, 4096, f)
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

    /// Puts a goroutine found alive at attach in the live table, unless
    /// the probes already did (they saw its creation).
    pub fn insert_live(&mut self, key: LiveKey, g: LiveGoroutine) -> Inserted {
        match self.live.insert(key, g, BPF_NOEXIST) {
            Ok(()) => Inserted::Yes,
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Inserted::AlreadyThere
            }
            Err(_) => Inserted::Full,
        }
    }

    /// Takes a goroutine out of the live table; false if it was not there
    /// (its exit took it).
    pub fn remove_live(&mut self, key: &LiveKey) -> bool {
        self.live.remove(key).is_ok()
    }

    /// Adds `n` creations to a slot, as the kernel's atomic adds do.
    pub fn add_created(&mut self, slot: u32, n: u64) {
        self.totals
            .atomic_add(slot as usize, std::mem::offset_of!(SiteTotals, created), n);
    }
}
