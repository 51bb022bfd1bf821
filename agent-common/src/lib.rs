//! Types shared by the eBPF programs and user space. Every struct here is
//! `#[repr(C)]` with explicit padding and a compile-time size check, so both
//! sides agree on the layout byte for byte.
#![no_std]

/// `GoroutineEvent::kind` for a goroutine seen created in runtime.newproc1.
pub const EVENT_CREATE: u32 = 1;
/// `GoroutineExit::kind` for a goroutine seen entering runtime.goexit1.
pub const EVENT_EXIT: u32 = 2;

/// `GoroutineEvent::stack` when no stack was collected (disabled or failed).
/// The kernel never produces 0 as a stack key.
pub const NO_STACK: u64 = 0;

/// The stack key of goroutines found alive when their process was first
/// probed (read from its memory, not seen created): their creation stack
/// is unknown, only the `go` statement (gopc). The kernel's stack keys are
/// odd, so it never produces this one.
pub const SEEN_AT_ATTACH: u64 = 2;

/// One goroutine creation, written by the kernel into the ring buffer.
/// An exit is the shorter `GoroutineExit`, this record's first fields:
/// half the ring space, and half the cache lines user space reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineEvent {
    /// `EVENT_CREATE` (`EVENT_EXIT` for an exit read into this shape).
    pub kind: u32,
    /// Thread group id (the process id user space sees).
    pub pid: u32,
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) at the probe.
    pub ktime_ns: u64,
    /// runtime.g.goid of the created or exiting goroutine.
    pub goid: u64,
    /// Key in the `STACKS` map of the creating user stack (a hash of the
    /// process id and the PCs), or `NO_STACK`.
    pub stack: u64,
    /// runtime.g.parentGoid: the goroutine that executed the `go` statement.
    pub parent_goid: u64,
    /// runtime.g.gopc: PC of the `go` statement (creation events only).
    pub gopc: u64,
    /// runtime.g.startpc: PC of the goroutine's function (creation events only).
    pub startpc: u64,
}
// With the ring's 8-byte header, a record fills one cache line exactly.
const _: () = assert!(core::mem::size_of::<GoroutineEvent>() == 56);

/// One goroutine exit in the ring buffer: `GoroutineEvent`'s first fields,
/// so a reader tells the two apart by `kind` alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineExit {
    /// `EVENT_EXIT`.
    pub kind: u32,
    pub pid: u32,
    pub ktime_ns: u64,
    pub goid: u64,
}
// 32 bytes with the ring's header: two exits per cache line.
const _: () = assert!(core::mem::size_of::<GoroutineExit>() == 24);
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(GoroutineExit, kind) == offset_of!(GoroutineEvent, kind));
    assert!(offset_of!(GoroutineExit, pid) == offset_of!(GoroutineEvent, pid));
    assert!(offset_of!(GoroutineExit, ktime_ns) == offset_of!(GoroutineEvent, ktime_ns));
    assert!(offset_of!(GoroutineExit, goid) == offset_of!(GoroutineEvent, goid));
};

impl GoroutineExit {
    /// The exit in the shape of a creation record (the creation fields 0).
    pub fn widen(&self) -> GoroutineEvent {
        GoroutineEvent {
            kind: self.kind,
            pid: self.pid,
            ktime_ns: self.ktime_ns,
            goid: self.goid,
            ..Default::default()
        }
    }
}

/// A creating user stack, stored once per distinct stack in the `STACKS`
/// hash map under `GoroutineEvent::stack`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UserStack {
    /// Process the stack was taken in (the key's hash covers it too).
    pub pid: u32,
    /// Valid entries in `pcs`.
    pub len: u32,
    /// Innermost first: the probed instruction, then return addresses.
    pub pcs: [u64; MAX_STACK_DEPTH],
}
const _: () = assert!(core::mem::size_of::<UserStack>() == 8 + 8 * MAX_STACK_DEPTH);

impl UserStack {
    /// The valid PCs.
    pub fn pcs(&self) -> &[u64] {
        &self.pcs[..(self.len as usize).min(MAX_STACK_DEPTH)]
    }
}

/// `ProcEvent::kind`: a process called execve (its pid now runs a new image).
pub const PROC_EXEC: u32 = 1;
/// `ProcEvent::kind`: a process (its thread-group leader) exited.
pub const PROC_EXIT: u32 = 2;

/// A process starting a program or exiting, from the sched_process_exec and
/// sched_process_exit tracepoints: what node mode discovers programs by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    /// `PROC_EXEC` or `PROC_EXIT`.
    pub kind: u32,
    /// Thread group id.
    pub pid: u32,
    /// bpf_ktime_get_ns() at the tracepoint.
    pub ktime_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 16);

/// Size of the process event ring buffer: exec/exit bursts are small.
pub const PROC_RINGBUF_BYTES: u32 = 256 << 10;

/// Offsets into runtime.g that user space derives from the binary and passes
/// to the programs (they change between Go releases), plus the span that
/// covers all four, so the creation probe reads them with one helper call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GOffsets {
    pub goid: u64,
    pub parent_goid: u64,
    pub gopc: u64,
    pub startpc: u64,
    /// Offset of the first byte the creation probe reads.
    pub window_start: u32,
    /// Bytes it reads (at most `G_WINDOW`).
    pub window_len: u32,
    /// `SITE_*` flags: where the probes of this binary sit.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<GOffsets>() == 48);

/// The creation probe sits inside newproc1's body (after the goid store),
/// not on a RET: RBP is newproc1's own frame pointer, so the caller's
/// return address is at [RBP+8] and the next frame pointer at [RBP].
pub const SITE_CREATE_IN_BODY: u32 = 1;

/// Largest span of runtime.g the creation probe reads at once.
pub const G_WINDOW: usize = 512;

/// Largest span from gopc to startpc (both included): in aggregate mode
/// the creation probe reads just these two (24 bytes in every supported
/// release: gopc, ancestors, startpc).
pub const SITE_WINDOW: usize = 32;

impl GOffsets {
    /// `None` if a field is not 8-aligned, the four span more than
    /// `G_WINDOW` bytes or gopc and startpc more than `SITE_WINDOW`.
    pub fn new(goid: u64, parent_goid: u64, gopc: u64, startpc: u64) -> Option<Self> {
        let fields = [goid, parent_goid, gopc, startpc];
        let mut lo = u64::MAX;
        let mut hi = 0;
        for f in fields {
            if f % 8 != 0 {
                return None;
            }
            lo = if f < lo { f } else { lo };
            hi = if f + 8 > hi { f + 8 } else { hi };
        }
        let len = hi - lo;
        let site_len = gopc.abs_diff(startpc) + 8;
        (len <= G_WINDOW as u64 && site_len <= SITE_WINDOW as u64 && lo <= u32::MAX as u64)
            .then_some(GOffsets {
                goid,
                parent_goid,
                gopc,
                startpc,
                window_start: lo as u32,
                window_len: len as u32,
                flags: 0,
                _pad: 0,
            })
    }
}

/// The operations the `calib` program repeats for the overhead
/// benchmark's helper costs (its `CALIB_OP`).
pub mod calib {
    /// Times the operation runs per probe hit.
    pub const REPS: u32 = 16;
    /// The same loop with nothing in it: the baseline.
    pub const NONE: u32 = 0;
    pub const KTIME: u32 = 1;
    pub const PID_TGID: u32 = 2;
    pub const COOKIE: u32 = 3;
    /// bpf_probe_read_user of 16 bytes into the BPF stack.
    pub const READ_USER_16: u32 = 4;
    /// bpf_probe_read_user of a stack window (1 KiB) into the scratch.
    pub const READ_USER_WINDOW: u32 = 5;
    pub const PERCPU_LOOKUP: u32 = 6;
    pub const ATOMIC_ADD: u32 = 7;
    pub const CMPXCHG: u32 = 8;
    /// A hash map lookup that misses (`SITE_IDS`).
    pub const HASH_LOOKUP: u32 = 9;
    /// A ring buffer reserve and discard.
    pub const RINGBUF: u32 = 10;
    /// bpf_probe_read_user of the first stack window (256 bytes) into the
    /// scratch.
    pub const READ_USER_FIRST: u32 = 11;

    /// Each operation with what the benchmark prints for it.
    pub const ALL: [(u32, &str); 11] = [
        (KTIME, "bpf_ktime_get_ns"),
        (PID_TGID, "bpf_get_current_pid_tgid"),
        (COOKIE, "bpf_get_attach_cookie"),
        (
            READ_USER_16,
            "bpf_probe_read_user, 16 bytes to the BPF stack",
        ),
        (
            READ_USER_FIRST,
            "bpf_probe_read_user, 256 B to the per-CPU scratch",
        ),
        (
            READ_USER_WINDOW,
            "bpf_probe_read_user, 1 KiB to the per-CPU scratch",
        ),
        (PERCPU_LOOKUP, "per-CPU array lookup (inlined)"),
        (ATOMIC_ADD, "atomic add to an array value"),
        (CMPXCHG, "compare-and-swap on an array value"),
        (HASH_LOOKUP, "hash map lookup, missing key"),
        (RINGBUF, "ring buffer reserve + discard"),
    ];
}

/// Indices of the kernel-side counters in the `COUNTERS` per-CPU array.
/// Each counts one way an event can be lost or degraded in the kernel.
pub mod counter {
    /// Creation events written to the ring buffer.
    pub const CREATE_SENT: u32 = 0;
    /// Exit events written to the ring buffer.
    pub const EXIT_SENT: u32 = 1;
    /// Events dropped because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 2;
    /// Creations without a stack: the stack map was full, or (aggregate
    /// mode) a preempted probe on the same CPU held the scratch space the
    /// walk needs, so the goroutine was counted without it.
    pub const STACK_FAILED: u32 = 3;
    /// Events dropped because reading the runtime.g failed.
    pub const READ_G_FAILED: u32 = 4;
    /// Creation events dropped because a preempted probe on the same CPU
    /// held the per-CPU scratch space (possible on fully preemptible
    /// kernels; exits and aggregate-mode creations do without it).
    pub const SCRATCH_BUSY: u32 = 5;
    /// Process exec/exit events dropped because their ring buffer was full.
    pub const PROC_RINGBUF_FULL: u32 = 6;
    /// Aggregate mode: goroutines counted in the kernel (created, exited).
    pub const CREATE_COUNTED: u32 = 7;
    pub const EXIT_COUNTED: u32 = 8;
    /// Aggregate mode: creations counted in the overflow site because every
    /// site slot was taken (the totals stay exact, the site is lost).
    pub const SITE_OVERFLOW: u32 = 9;
    /// Aggregate mode: goroutines not entered in the live table because it
    /// was full (their exits are not counted, their lifetimes not known).
    pub const LIVE_FULL: u32 = 10;
    /// Aggregate mode: exits of goroutines not in the live table (created
    /// before the probes were attached, or not entered: `LIVE_FULL`).
    pub const EXIT_UNTRACKED: u32 = 11;
    /// Aggregate mode: goroutines entered in the spill table because
    /// their set of the live array was full (slower, still exact).
    pub const LIVE_SPILLED: u32 = 12;
    /// Number of counters.
    pub const COUNT: u32 = 13;

    /// Names used for the exported metric label, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "create_sent",
        "exit_sent",
        "ringbuf_full",
        "stack_failed",
        "read_g_failed",
        "scratch_busy",
        "proc_ringbuf_full",
        "create_counted",
        "exit_counted",
        "site_overflow",
        "live_full",
        "exit_untracked",
        "live_spilled",
    ];
}

/// Goroutine event ring buffers: one per CPU (CPU n writes to ring
/// n % `EVENT_RINGS`), so probes on different CPUs do not contend on one
/// ring's lock and positions (that cost ~250 ns per event with 2 CPUs).
pub const EVENT_RINGS: u32 = 8;
/// Each ring's size in bytes (a power of two multiple of the page size):
/// 2 MiB holds ~32k events, over 15 ms of one CPU's fastest goroutine
/// churn. Rings no CPU writes to get one page (user space sets that).
pub const RINGBUF_BYTES: u32 = 2 << 20;
/// When this much data is pending in a ring, the kernel wakes the reader; below it the
/// reader drains on its own timer. Saves a wakeup per event.
pub const RINGBUF_WAKEUP_BYTES: u64 = 256 << 10;
/// Distinct binaries one loaded object can probe (index = attach cookie).
pub const MAX_BINARIES: u32 = 1024;
/// Distinct creation stacks the kernel can hold at once (allocated on use).
pub const STACK_MAP_ENTRIES: u32 = 16384;
/// Deepest creation stack the kernel walks.
pub const MAX_STACK_DEPTH: usize = 127;

/// Aggregate mode (no per-goroutine output asked): the kernel counts per
/// creation site instead of sending events. A site is what identifies it
/// cheaply in the kernel; user space symbolizes it once, by its slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiteKey {
    /// Thread group id; 0 marks a free slot in `SITE_KEYS`.
    pub pid: u32,
    pub _pad: u32,
    /// runtime.g.gopc and runtime.g.startpc of the goroutines created there.
    pub gopc: u64,
    pub startpc: u64,
    /// The creation stack's key in `STACKS`, or `NO_STACK`.
    pub stack: u64,
}
const _: () = assert!(core::mem::size_of::<SiteKey>() == 32);

/// Site slots, each with a `SiteCounts`. Slot 0 is the overflow site: it
/// counts what arrives when every other slot is taken.
pub const MAX_SITES: u32 = 4096;
/// The overflow site's slot.
pub const OVERFLOW_SITE: u32 = 0;

/// Lifetime buckets per site: `LifetimeBounds::len` bounds make
/// `len + 1` buckets (the last one unbounded).
pub const LIFETIME_BUCKETS: usize = 64;

/// One lifetime bucket: how many goroutines, and their total lifetime (so
/// the exported sums are exact, and each bucket's mean lies inside it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub count: u64,
    pub sum_ns: u64,
}

/// A site's goroutine counts since its slot was taken, from `SITE_TOTALS`
/// (mapped into user space, which reads it every export; created at the
/// slot's index, exited at `MAX_SITES` + it). The kernel only adds; user
/// space zeroes both when it frees the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteTotals {
    pub created: u64,
    pub exited: u64,
}
const _: () = assert!(core::mem::size_of::<SiteTotals>() == 16);

/// A site's lifetime buckets, in `SITE_LIFETIMES` (read with a syscall,
/// only for sites whose exits grew: mapping them would put them all in
/// the agent's resident memory).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteLifetimes {
    pub buckets: [Bucket; LIFETIME_BUCKETS],
}
const _: () = assert!(core::mem::size_of::<SiteLifetimes>() == 16 * LIFETIME_BUCKETS);

impl Default for SiteLifetimes {
    fn default() -> Self {
        SiteLifetimes {
            buckets: [Bucket::default(); LIFETIME_BUCKETS],
        }
    }
}

/// Upper bounds (inclusive, ns, ascending) of the lifetime buckets: the
/// union of every exporter's bucket bounds, so each exported bucket is a
/// sum of kernel buckets and the counts stay exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifetimeBounds {
    /// Valid entries in `ns` (at most `LIFETIME_BUCKETS - 1`).
    pub len: u32,
    pub _pad: u32,
    pub ns: [u64; LIFETIME_BUCKETS - 1],
}
const _: () = assert!(core::mem::size_of::<LifetimeBounds>() == 8 * LIFETIME_BUCKETS);

impl LifetimeBounds {
    /// The bucket a lifetime falls in: the first bound >= it, or `len`.
    pub fn bucket(&self, ns: u64) -> usize {
        let len = (self.len as usize).min(LIFETIME_BUCKETS - 1);
        self.ns[..len].partition_point(|&b| b < ns)
    }
}

/// Key of the live-goroutine spill table `LIVE_SPILL`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LiveKey {
    pub pid: u32,
    pub _pad: u32,
    /// Address of the goroutine's runtime.g (see `LiveSlot::g`).
    pub g: u64,
}
const _: () = assert!(core::mem::size_of::<LiveKey>() == 16);

/// A goroutine alive in aggregate mode: when it was created, and where.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveGoroutine {
    /// bpf_ktime_get_ns() at creation.
    pub created_ns: u64,
    /// Its site's slot.
    pub site: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LiveGoroutine>() == 16);

/// One goroutine's place in the live array `LIVE`.
///
/// Keyed by the address of the goroutine's runtime.g, not its goid: the
/// exit probe has the g in R14, so it reads no user memory (one
/// bpf_probe_read_user less, 85 ns on the cost ladder), and no live
/// goroutine shares its g with another (the runtime reuses a g only after
/// its goroutine went through goexit1, where the probe takes it out).
///
/// Claimed by compare-and-swap of `g` from 0, then `pid`, `site` and
/// `created_ns` are written; freed by clearing `pid`, then `g`. A reader
/// that matches both `g` and `pid` therefore never takes a slot being
/// claimed for another process's goroutine.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveSlot {
    /// Address of the goroutine's runtime.g; 0 = free.
    pub g: u64,
    pub pid: u32,
    /// Its site's slot.
    pub site: u32,
    /// bpf_ktime_get_ns() at creation.
    pub created_ns: u64,
}
const _: () = assert!(core::mem::size_of::<LiveSlot>() == 24);

/// Slots per set of the live array: a set is 192 bytes, three cache lines.
pub const LIVE_WAYS: usize = 8;
/// log2 of the live array's sets.
pub const LIVE_SET_BITS: u32 = 13;
/// Sets of the live array: 65536 slots, 1.5 MiB of kernel memory.
pub const LIVE_SETS: u32 = 1 << LIVE_SET_BITS;

/// A set of the live array: the `LIVE_WAYS` slots a goroutine may take.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveSet {
    pub slots: [LiveSlot; LIVE_WAYS],
}
const _: () = assert!(core::mem::size_of::<LiveSet>() == 24 * LIVE_WAYS);

/// Sets per element of the `LIVE` array map: user space reads it in
/// batches, at a cost per element (three checks and copies) that 8192 small
/// elements made a third of the idle agent's CPU time.
pub const LIVE_BLOCK_SETS: u32 = 16;

/// One element of the `LIVE` array map: `LIVE_BLOCK_SETS` consecutive sets
/// (set `s` is in element `s / LIVE_BLOCK_SETS`; elements are contiguous,
/// so the mapped array is the sets in order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveBlock {
    pub sets: [LiveSet; LIVE_BLOCK_SETS as usize],
}
const _: () = assert!(core::mem::size_of::<LiveBlock>() == 24 * LIVE_WAYS * 16);

/// The set of the live array a goroutine belongs to, from the address of
/// its runtime.g plus an offset per process (Fibonacci hashing of the
/// pid: one multiply).
///
/// A g is about 450 bytes, in 8 KiB spans of g's only: `g >> 9` gives
/// each 512 bytes of a span its own set, so a span's g's fill 16
/// consecutive sets and a process's g's spread as evenly as its heap lays
/// them out. Consecutive sets keep the pages of the array the programs
/// touch few (a multiplicative hash of the address, every access a new
/// page, cost 100 ns more per goroutine; `g >> 6` left 110 of each 128
/// sets unused, the "reused g's hash to the same few sets" of an earlier
/// try). `^ g >> 22` turns each 4 MiB of heap (the array's period) a
/// different way, so the two doubled sets of each span do not line up
/// across periods.
#[inline(always)]
pub fn live_set(pid: u32, g: u64) -> u32 {
    let offset = (pid as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - LIVE_SET_BITS);
    (((g >> 9) ^ (g >> 22)).wrapping_add(offset) & (LIVE_SETS as u64 - 1)) as u32
}

/// Where `live_set(pid, g)` sits in the `LIVE` map: the element
/// (`LiveBlock`) and the set's index in it (below `LIVE_BLOCK_SETS`).
#[inline(always)]
pub fn live_place(pid: u32, g: u64) -> (u32, usize) {
    let set = live_set(pid, g);
    (set / LIVE_BLOCK_SETS, (set % LIVE_BLOCK_SETS) as usize)
}

/// Live goroutines the spill table holds: those whose set was full, and
/// those user space found alive at attach. Allocated on use.
pub const LIVE_SPILL_ENTRIES: u32 = 1 << 18;

/// Live goroutines the kernel tracks at once, over all processes (past
/// it, `counter::LIVE_FULL`): the array's slots, then the spill table.
pub const LIVE_ENTRIES: u32 = LIVE_SETS * LIVE_WAYS as u32 + LIVE_SPILL_ENTRIES;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, repr(C), no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::GoroutineEvent {}
    unsafe impl aya::Pod for super::GOffsets {}
    unsafe impl aya::Pod for super::UserStack {}
    unsafe impl aya::Pod for super::ProcEvent {}
    unsafe impl aya::Pod for super::SiteKey {}
    unsafe impl aya::Pod for super::SiteTotals {}
    unsafe impl aya::Pod for super::SiteLifetimes {}
    unsafe impl aya::Pod for super::LifetimeBounds {}
    unsafe impl aya::Pod for super::LiveKey {}
    unsafe impl aya::Pod for super::LiveGoroutine {}
    unsafe impl aya::Pod for super::LiveBlock {}
}
