//! Kernel side of gmon-agent: two plain uprobes on the Go runtime.
//!
//! * `newproc1_ret` sits in runtime.newproc1 on the first branch after the
//!   new goid is stored, or where the binary's code does not match that, on
//!   every RET (user space finds both by disassembly). Either way the new *g
//!   is in RAX. We never use return probes: they rewrite return addresses
//!   on Go stacks, which the Go runtime does not expect (golang/go#22008).
//! * `goexit1` sits on the `jbe` of runtime.goexit1's stack-check prologue
//!   (`goexit1_entry` on its first instruction where the prologue does not
//!   match), which runs on the exiting goroutine; ABIInternal keeps the
//!   current g in R14.
//!
//! Creation stacks are walked here along Go's frame pointers rather than with
//! bpf_get_stackid: the kernel's walker reads one frame past the outermost
//! one (runtime.goexit's saved frame pointer is 0) and takes a page fault on
//! every call, which doubled the cost of a probe hit. Each distinct stack is
//! stored once, keyed by a hash of the process id and its PCs.
//!
//! The attach cookie is an index into `BINARIES`, which holds the runtime.g
//! field offsets of the probed binary, so one loaded object serves binaries
//! of different Go releases.
//!
//! Two modes, chosen at load time (`AGGREGATE`): with per-goroutine output
//! asked for (gmon's log lines), every creation and exit goes to user space
//! through the `EVENTS_*` ring buffers (one per CPU); without it, nothing per goroutine
//! crosses: the programs count per creation site (`SITE_*`), keep the live
//! goroutines with their creation time (`LIVE`, keyed by the address of
//! their runtime.g, so the exit program reads no memory) and bucket lifetimes at
//! exit, and user space reads the totals when it exports. With
//! `CREATION_EVENTS` (gmon's creation log lines, `--level INFO`) the
//! aggregate creation program also sends each creation; exits stay here.
#![no_std]
#![no_main]
// The bpf target has no compare-and-swap, so core's atomics lack
// fetch_add; the intrinsic lowers to BPF's own atomic add.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use agent_common::{
    EVENT_CREATE, EVENT_EXIT, EVENT_RINGS, G_WINDOW, GOffsets, GoroutineEvent, GoroutineExit,
    LIFETIME_BUCKETS, LIVE_BLOCK_SETS, LIVE_SETS, LIVE_SPILL_ENTRIES, LIVE_WAYS, LifetimeBounds,
    LiveBlock, LiveGoroutine, LiveKey, LiveSet, MAX_BINARIES, MAX_SITES, MAX_STACK_DEPTH, NO_STACK,
    OVERFLOW_SITE, PROC_EXEC, PROC_EXIT, PROC_RINGBUF_BYTES, ProcEvent, RINGBUF_BYTES,
    RINGBUF_WAKEUP_BYTES, SITE_CREATE_IN_BODY, SITE_WINDOW, STACK_MAP_ENTRIES, SiteKey,
    SiteLifetimes, UserStack, counter, live_place,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA,
        BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{self, bpf_get_attach_cookie},
    },
    macros::{map, raw_tracepoint, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, Stack},
    programs::{ProbeContext, RawTracePointContext},
};

/// Frames of the creating user stack to collect (0: none, at most
/// `MAX_STACK_DEPTH`). Set by user space with `EbpfLoader::override_global`.
#[unsafe(no_mangle)]
static STACK_DEPTH: u32 = 0;

/// Nonzero: count in the kernel instead of sending events (set by user
/// space like `STACK_DEPTH`).
#[unsafe(no_mangle)]
static AGGREGATE: u32 = 0;

/// Nonzero (with `AGGREGATE`): the creation program also sends each
/// creation as an event, for gmon's creation log lines; exits stay in the
/// kernel (set by user space like `STACK_DEPTH`).
#[unsafe(no_mangle)]
static CREATION_EVENTS: u32 = 0;

/// For the overhead benchmark's cost ladder only: nonzero N makes the
/// aggregate-mode creation (exit) program return at its first step
/// numbered N or more, so the time each step adds can be measured
/// (creation: 1 entry, 2 read of the g, 3 first stack window, 4 frame
/// walk, 5 stack stored, 6 site slot, 7 created count; exit: 1 entry, 2
/// live slot freed, 3 time read, 4 lifetime bucket). 0 (always, in the
/// agent) runs every step; the verifier drops the checks (load-time
/// constants).
#[unsafe(no_mangle)]
static CREATE_STOP_AFTER: u32 = 0;
#[unsafe(no_mangle)]
static EXIT_STOP_AFTER: u32 = 0;

/// For tests only: nonzero makes every claim of the scratch space fail,
/// as while a preempted probe on the same CPU holds it (fully preemptible
/// kernels), so that path runs on any kernel. 0 in the agent; the
/// verifier drops the check.
#[unsafe(no_mangle)]
static SCRATCH_ALWAYS_BUSY: u32 = 0;

#[inline(always)]
fn stop_at(limit: &u32, step: u32) -> bool {
    let s = unsafe { core::ptr::read_volatile(limit) };
    s != 0 && s <= step
}

#[inline(always)]
fn stop_after(step: u32) -> bool {
    stop_at(&CREATE_STOP_AFTER, step)
}

#[inline(always)]
fn exit_stop_after(step: u32) -> bool {
    stop_at(&EXIT_STOP_AFTER, step)
}

/// Bytes of stack memory read at once while walking frames: one helper
/// call usually covers several Go frames.
const STACK_WINDOW: usize = 1024;

/// The first window, at newproc1's frame on the system stack: its frames
/// up to systemstack's (the walk then moves to the goroutine's stack)
/// take about 150 bytes in Go 1.23-1.26, so it copies no more than that
/// needs (the gain is within the benchmark's noise here); a chain that
/// leaves it loads more.
const FIRST_WINDOW: usize = 256;

/// The reader is woken at most once per this many events per CPU.
const WAKEUP_CHECK_EVERY: u64 = 64;

/// -EEXIST, as map updates with BPF_NOEXIST return it.
const EEXIST: i32 = -17;

macro_rules! event_rings {
    ($($name:ident = $i:literal),+) => {
        $(
            #[map]
            static $name: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);
        )+
        /// This CPU's event ring.
        #[inline(always)]
        fn ring() -> &'static RingBuf {
            const _: () = assert!([$($i),+].len() == EVENT_RINGS as usize);
            match unsafe { generated::bpf_get_smp_processor_id() } % EVENT_RINGS {
                $($i => &$name,)+
                _ => &EVENTS_0,
            }
        }
    };
}
event_rings!(
    EVENTS_0 = 0,
    EVENTS_1 = 1,
    EVENTS_2 = 2,
    EVENTS_3 = 3,
    EVENTS_4 = 4,
    EVENTS_5 = 5,
    EVENTS_6 = 6,
    EVENTS_7 = 7
);

/// Distinct creation stacks, keyed by `GoroutineEvent::stack`. Entries are
/// allocated on first use; user space deletes a process's entries when it
/// exits.
#[map]
static STACKS: HashMap<u64, UserStack> =
    HashMap::with_max_entries(STACK_MAP_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static BINARIES: Array<GOffsets> = Array::with_max_entries(MAX_BINARIES, 0);

/// Aggregate mode: the slot of each creation site seen.
#[map]
static SITE_IDS: HashMap<SiteKey, u32> = HashMap::with_max_entries(MAX_SITES, 0);

/// Aggregate mode: each slot's site, written once its `SITE_IDS` entry is
/// in (user space scans it, mapped, for new sites; pid 0 = free).
#[map]
static SITE_KEYS: Array<SiteKey> = Array::with_max_entries(MAX_SITES, BPF_F_MMAPABLE);

/// Aggregate mode: each slot's counts, added to with atomic adds (user
/// space reads them mapped, without a syscall per site): created at
/// `slot`, exited at `MAX_SITES + slot`. Apart, a creation on one CPU and
/// an exit on another do not pull the same cache line back and forth.
#[map]
static SITE_TOTALS: Array<u64> = Array::with_max_entries(2 * MAX_SITES, BPF_F_MMAPABLE);

/// Aggregate mode: each slot's lifetime buckets.
#[map]
static SITE_LIFETIMES: Array<SiteLifetimes> = Array::with_max_entries(MAX_SITES, 0);

/// Aggregate mode: free site slots; user space fills it and returns the
/// slots of exited processes. Last in, first out: slots in use stay few
/// and low, and so do the pages user space touches reading them.
#[map]
static FREE_SITES: Stack<u32> = Stack::with_max_entries(MAX_SITES, 0);

/// Aggregate mode: the live goroutines and when they were created, in
/// sets of `LIVE_WAYS` slots chosen by `live_set`. A lookup in an array is
/// inlined by the verifier and a claim is one compare-and-swap, where the
/// preallocated hash map's insert and delete cost 300 and 250 ns a
/// goroutine here. Mapped so user space can free the slots of exited
/// processes with the same atomics.
#[map]
static LIVE: Array<LiveBlock> =
    Array::with_max_entries(LIVE_SETS / LIVE_BLOCK_SETS, BPF_F_MMAPABLE);

/// Aggregate mode: live goroutines whose set was full, and those user
/// space found alive at attach. Allocated on use: rarely used.
#[map]
static LIVE_SPILL: HashMap<LiveKey, LiveGoroutine> =
    HashMap::with_max_entries(LIVE_SPILL_ENTRIES, BPF_F_NO_PREALLOC);

/// Aggregate mode: the lifetime buckets' upper bounds (one entry).
#[map]
static BOUNDS: Array<LifetimeBounds> = Array::with_max_entries(1, 0);

/// Per-CPU working memory, too big for the 512-byte BPF stack. Uprobe
/// programs run with migration disabled but, on fully preemptible kernels,
/// can be preempted by another task that hits a probe on the same CPU:
/// `busy` makes that one drop its event (counted) instead of clobbering.
#[repr(C)]
pub struct Scratch {
    busy: u64,
    /// Events this CPU has sent (paces the wakeup check).
    events: u64,
    /// runtime.g bytes from `GOffsets::window_start`.
    g: [u8; G_WINDOW],
    /// Stack memory from `window_base`.
    window: [u8; STACK_WINDOW],
    stack: UserStack,
    /// The slot of the site this CPU counted last (0: none): programs
    /// create goroutines in loops, and checking that slot's key in
    /// `SITE_KEYS` costs less than hashing the key into `SITE_IDS`.
    last_slot: u32,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it, a plain add is enough.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn offsets(ctx: &ProbeContext) -> Option<&'static GOffsets> {
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    BINARIES.get(cookie as u32)
}

/// Claims this CPU's scratch space; `release` it before returning. `None`
/// while a preempted probe on this CPU holds it: the caller does without
/// or counts what it drops.
#[inline(always)]
fn claim() -> Option<&'static mut Scratch> {
    if unsafe { core::ptr::read_volatile(&SCRATCH_ALWAYS_BUSY) } != 0 {
        return None;
    }
    let p = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot; `busy` keeps preempting probes out, and only
    // this CPU touches it, so plain (volatile) accesses suffice.
    unsafe {
        if core::ptr::read_volatile(&(*p).busy) != 0 {
            return None;
        }
        core::ptr::write_volatile(&mut (*p).busy, 1);
        Some(&mut *p)
    }
}

#[inline(always)]
fn release(sc: &mut Scratch) {
    unsafe { core::ptr::write_volatile(&mut sc.busy, 0) };
}

/// Reads `len` (1..=`max`) bytes of user memory at `src` into `dst`.
#[inline(always)]
fn read_user(dst: *mut u8, len: usize, src: u64) -> bool {
    unsafe { generated::bpf_probe_read_user(dst.cast(), len as u32, src as *const _) == 0 }
}

/// Sends `ev`, waking the reader only if `RINGBUF_WAKEUP_BYTES` are pending,
/// and checking that only every `WAKEUP_CHECK_EVERY` events: a wakeup is an
/// IPI (a VM exit under virtualization) and even the check is a helper call.
/// Between wakeups the reader drains on its own timer.
#[inline(always)]
fn send<T: Copy + 'static>(ev: &T, sent_counter: u32, events: &mut u64) {
    *events += 1;
    let ring = ring();
    let flags = if *events % WAKEUP_CHECK_EVERY == 0
        && ring.query(BPF_RB_AVAIL_DATA as u64) >= RINGBUF_WAKEUP_BYTES
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // reserve + submit is one helper call cheaper than output.
    match ring.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(*ev);
            entry.submit(flags as u64);
            count(sent_counter);
        }
        None => count(counter::RINGBUF_FULL),
    }
}

#[uprobe]
pub fn newproc1_ret(ctx: ProbeContext) -> u32 {
    let Some(off) = offsets(&ctx) else {
        return 0;
    };
    let aggregate = unsafe { core::ptr::read_volatile(&AGGREGATE) } != 0;
    match claim() {
        Some(sc) if stop_after(1) => release(sc),
        Some(sc) => {
            if aggregate {
                newproc1_count(&ctx, off, Some(&mut *sc));
            } else {
                newproc1_event(&ctx, off, sc);
            }
            release(sc);
        }
        // The kernel can count the goroutine without the scratch space,
        // only not walk its stack.
        None if aggregate => {
            count(counter::STACK_FAILED);
            if unsafe { core::ptr::read_volatile(&CREATION_EVENTS) } != 0 {
                // Its log line is lost (the event needs the scratch space).
                count(counter::SCRATCH_BUSY);
            }
            newproc1_count(&ctx, off, None);
        }
        None => count(counter::SCRATCH_BUSY),
    }
    0
}

/// The new g's goid, parent goid, gopc and startpc, with one read of the
/// window that holds all four (user space checked it fits).
#[inline(always)]
fn read_g_fields(off: &GOffsets, sc: &mut Scratch, g: u64) -> Option<(u64, u64, u64, u64)> {
    let len = off.window_len as usize;
    if len == 0 || len > G_WINDOW || !read_user(sc.g.as_mut_ptr(), len, g + off.window_start as u64)
    {
        count(counter::READ_G_FAILED);
        return None;
    }
    let field = |at: u64| -> u64 {
        // Offsets are 8-aligned and inside the window (GOffsets::new); the
        // mask only proves it to the verifier.
        let i = (at.wrapping_sub(off.window_start as u64) as usize) & (G_WINDOW - 8);
        unsafe { *(sc.g.as_ptr().add(i) as *const u64) }
    };
    Some((
        field(off.goid),
        field(off.parent_goid),
        field(off.gopc),
        field(off.startpc),
    ))
}

fn newproc1_event(ctx: &ProbeContext, off: &GOffsets, sc: &mut Scratch) {
    let g = unsafe { (*ctx.regs).rax };
    let Some((goid, parent_goid, gopc, startpc)) = read_g_fields(off, sc, g) else {
        return;
    };
    if stop_after(2) {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let depth = unsafe { core::ptr::read_volatile(&STACK_DEPTH) };
    let stack = if depth > 0 {
        creation_stack(
            ctx,
            sc,
            pid,
            depth,
            off.flags & SITE_CREATE_IN_BODY != 0,
            None,
        )
        .0
    } else {
        NO_STACK
    };
    let now = unsafe { bpf_ktime_get_ns() };
    send_create(pid, now, stack, (goid, parent_goid, gopc, startpc), sc);
}

/// Sends a creation: `fields` are the new g's goid, parent goid, gopc and
/// startpc, as `read_g_fields` returns them.
#[inline(always)]
fn send_create(
    pid: u32,
    ktime_ns: u64,
    stack: u64,
    fields: (u64, u64, u64, u64),
    sc: &mut Scratch,
) {
    let (goid, parent_goid, gopc, startpc) = fields;
    let ev = GoroutineEvent {
        kind: EVENT_CREATE,
        pid,
        ktime_ns,
        stack,
        goid,
        parent_goid,
        gopc,
        startpc,
    };
    send(&ev, counter::CREATE_SENT, &mut sc.events);
}

/// Aggregate mode, creation: reads just the site's two fields (gopc and
/// startpc), and enters the goroutine in the live table under its g's
/// address (`LiveSlot::g`), so the goid is not needed. With
/// `CREATION_EVENTS`, it reads the goids too and also sends the creation
/// (for its log line).
#[inline(always)]
fn newproc1_count(ctx: &ProbeContext, off: &GOffsets, mut sc: Option<&mut Scratch>) {
    let g = unsafe { (*ctx.regs).rax };
    let events = unsafe { core::ptr::read_volatile(&CREATION_EVENTS) } != 0;
    let (gopc, startpc, ids) = match sc.as_deref_mut() {
        Some(sc) if events => {
            let Some((goid, parent_goid, gopc, startpc)) = read_g_fields(off, sc, g) else {
                return;
            };
            (gopc, startpc, Some((goid, parent_goid)))
        }
        _ => {
            let Some((gopc, startpc)) = read_site(off, g) else {
                count(counter::READ_G_FAILED);
                return;
            };
            (gopc, startpc, None)
        }
    };
    if stop_after(2) {
        return;
    }
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let depth = unsafe { core::ptr::read_volatile(&STACK_DEPTH) };
    let (stack, at_last_site) = match sc.as_deref_mut() {
        Some(sc) if depth > 0 => creation_stack(
            ctx,
            sc,
            pid,
            depth,
            off.flags & SITE_CREATE_IN_BODY != 0,
            Some((gopc, startpc)),
        ),
        _ => (NO_STACK, false),
    };
    if stop_after(5) {
        return;
    }
    let key = SiteKey {
        pid,
        _pad: 0,
        gopc,
        startpc,
        stack,
    };
    let now = count_create(&key, g, sc.as_deref_mut(), at_last_site);
    if let (Some((goid, parent_goid)), Some(sc)) = (ids, sc) {
        send_create(pid, now, stack, (goid, parent_goid, gopc, startpc), sc);
    }
}

/// The new g's gopc and startpc, read into the BPF stack, not the per-CPU
/// scratch: the kernel's hardened usercopy check costs less for a stack
/// destination.
#[inline(always)]
fn read_site(off: &GOffsets, g: u64) -> Option<(u64, u64)> {
    let lo = off.gopc.min(off.startpc);
    // GOffsets::new checked the span fits SITE_WINDOW.
    let len = (off.gopc.max(off.startpc) - lo + 8) as usize;
    // Not zeroed first: the helper writes every byte of `len` (or fails),
    // and only those are read.
    let mut buf = core::mem::MaybeUninit::<[u64; SITE_WINDOW / 8]>::uninit();
    if len > SITE_WINDOW || !read_user(buf.as_mut_ptr().cast(), len, g + lo) {
        return None;
    }
    let field = |at: u64| -> u64 {
        let i = (at.wrapping_sub(lo) as usize / 8) & (SITE_WINDOW / 8 - 1);
        // SAFETY: `at` is gopc or startpc, inside the `len` bytes read.
        unsafe { (*buf.as_ptr())[i] }
    };
    Some((field(off.gopc), field(off.startpc)))
}

/// Adds 1 to `*p` atomically: other CPUs add to the same site.
#[inline(always)]
fn add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value, 8-aligned.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
}

/// Aggregate mode, creation: one more goroutine at `key`'s site, entered
/// in the live table under its g with its creation time, which it returns
/// (0 if the cost ladder stopped it first). `at_last_site`: the stack walk
/// already found `key` to be this CPU's last site.
#[inline(always)]
fn count_create(key: &SiteKey, g: u64, sc: Option<&mut Scratch>, at_last_site: bool) -> u64 {
    let slot = match sc {
        Some(sc) if at_last_site => sc.last_slot,
        Some(sc) => cached_site_slot(key, sc),
        None => site_slot(key),
    };
    if stop_after(6) {
        return 0;
    }
    if let Some(c) = SITE_TOTALS.get_ptr_mut(slot) {
        add(c, 1);
    }
    if stop_after(7) {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    enter_live(key.pid, g, slot, now);
    count(counter::CREATE_COUNTED);
    now
}

/// Compare-and-swap of the u64 at `p` from `old` to `new`; true if done.
#[inline(always)]
fn claim_u64(p: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: `p` points into a map value, 8-aligned.
    unsafe {
        core::intrinsics::atomic_cxchg::<
            u64,
            { core::intrinsics::AtomicOrdering::SeqCst },
            { core::intrinsics::AtomicOrdering::SeqCst },
        >(p, old, new)
        .1
    }
}

/// The set of the live array `(pid, g)` belongs to.
#[inline(always)]
fn live_set_ptr(pid: u32, g: u64) -> Option<*mut LiveSet> {
    let (block, set) = live_place(pid, g);
    let block = LIVE.get_ptr_mut(block)?;
    // SAFETY: `live_place` keeps the index below LIVE_BLOCK_SETS.
    Some(unsafe { &raw mut (*block).sets[set] })
}

/// Enters a created goroutine in its set of the live array, or in the
/// spill table when every slot of the set is taken.
#[inline(always)]
fn enter_live(pid: u32, g: u64, site: u32, created_ns: u64) {
    if let Some(set) = live_set_ptr(pid, g) {
        for w in 0..LIVE_WAYS {
            // SAFETY: a slot of the set; other CPUs claim slots only with
            // the compare-and-swap, and write only the slots they claimed.
            unsafe {
                let s = &raw mut (*set).slots[w];
                if core::ptr::read_volatile(&raw const (*s).g) == 0
                    && claim_u64(&raw mut (*s).g, 0, g)
                {
                    core::ptr::write_volatile(&raw mut (*s).pid, pid);
                    core::ptr::write_volatile(&raw mut (*s).site, site);
                    core::ptr::write_volatile(&raw mut (*s).created_ns, created_ns);
                    return;
                }
            }
        }
    }
    count(counter::LIVE_SPILLED);
    let live = LiveGoroutine {
        created_ns,
        site,
        _pad: 0,
    };
    let lk = LiveKey { pid, _pad: 0, g };
    // BPF_ANY: an entry of this g can only be stale (user space put in a
    // goroutine found at attach that exited before it went in).
    if LIVE_SPILL.insert(lk, live, BPF_ANY as u64).is_err() {
        count(counter::LIVE_FULL);
    }
}

/// Takes an exiting goroutine out of the live array (or the spill
/// table); its creation time and site, `None` if it was in neither.
#[inline(always)]
fn leave_live(pid: u32, g: u64) -> Option<(u64, u32)> {
    if let Some(set) = live_set_ptr(pid, g) {
        for w in 0..LIVE_WAYS {
            // SAFETY: as in `enter_live`; a slot matching both g and pid
            // is this goroutine's, written in full before it could run.
            unsafe {
                let s = &raw mut (*set).slots[w];
                if core::ptr::read_volatile(&raw const (*s).g) == g
                    && core::ptr::read_volatile(&raw const (*s).pid) == pid
                {
                    let found = ((*s).created_ns, (*s).site);
                    core::ptr::write_volatile(&raw mut (*s).pid, 0);
                    core::ptr::write_volatile(&raw mut (*s).g, 0);
                    return Some(found);
                }
            }
        }
    }
    let lk = LiveKey { pid, _pad: 0, g };
    let live = LIVE_SPILL.get_ptr(&lk)?;
    let LiveGoroutine {
        created_ns, site, ..
    } = unsafe { *live };
    let _ = LIVE_SPILL.remove(&lk);
    Some((created_ns, site))
}

/// `site_slot` through this CPU's last site: its slot still holds the same
/// key unless user space freed it (the process is gone), so the check is
/// as good as the lookup.
#[inline(always)]
fn cached_site_slot(key: &SiteKey, sc: &mut Scratch) -> u32 {
    if last_site_is(key, sc) {
        return sc.last_slot;
    }
    let slot = site_slot(key);
    sc.last_slot = slot;
    slot
}

/// Whether `key` is this CPU's last site, its slot not freed since.
#[inline(always)]
fn last_site_is(key: &SiteKey, sc: &Scratch) -> bool {
    let last = sc.last_slot;
    last != OVERFLOW_SITE && SITE_KEYS.get(last).is_some_and(|k| *k == *key)
}

/// The slot of `key`'s site, taking a free one for a new site; the
/// overflow slot when none is free.
#[inline(always)]
fn site_slot(key: &SiteKey) -> u32 {
    if let Some(slot) = SITE_IDS.get_ptr(key) {
        return unsafe { *slot };
    }
    let Ok(Some(slot)) = FREE_SITES.pop() else {
        count(counter::SITE_OVERFLOW);
        return OVERFLOW_SITE;
    };
    match SITE_IDS.insert(key, slot, BPF_NOEXIST as u64) {
        Ok(()) => {
            // Published after the id: user space takes a slot with a key
            // as in use, and counts added before are read later anyway.
            if let Some(k) = SITE_KEYS.get_ptr_mut(slot) {
                unsafe { *k = *key };
            }
            slot
        }
        Err(e) => {
            let _ = FREE_SITES.push(slot, 0);
            // Another CPU took a slot for this site first.
            if e == EEXIST
                && let Some(slot) = SITE_IDS.get_ptr(key)
            {
                return unsafe { *slot };
            }
            count(counter::SITE_OVERFLOW);
            OVERFLOW_SITE
        }
    }
}

/// Aggregate mode, exit: the goroutine leaves the live table, its site
/// counts one more exit and its lifetime in the bucket it falls in.
#[inline(always)]
fn count_exit(pid: u32, g: u64) {
    let Some((created_ns, site)) = leave_live(pid, g) else {
        count(counter::EXIT_UNTRACKED);
        return;
    };
    if exit_stop_after(2) {
        return;
    }
    let life = unsafe { bpf_ktime_get_ns() }.saturating_sub(created_ns);
    if exit_stop_after(3) {
        return;
    }
    let b = bucket(life);
    if exit_stop_after(4) {
        return;
    }
    // Lifetime first: user space reads the buckets once it sees exits grow.
    if let Some(l) = SITE_LIFETIMES.get_ptr_mut(site) {
        unsafe {
            add(&raw mut (*l).buckets[b].count, 1);
            add(&raw mut (*l).buckets[b].sum_ns, life);
        }
    }
    if let Some(c) = SITE_TOTALS.get_ptr_mut(MAX_SITES + site) {
        add(c, 1);
    }
    count(counter::EXIT_COUNTED);
}

/// The lifetime bucket of `ns`: a binary search over `BOUNDS` (the first
/// bound >= ns; past the last bound, the unbounded bucket).
#[inline(always)]
fn bucket(ns: u64) -> usize {
    let Some(b) = BOUNDS.get(0) else {
        return 0;
    };
    let len = (b.len as usize).min(LIFETIME_BUCKETS - 1);
    let (mut lo, mut hi) = (0usize, len);
    // 2^6 = LIFETIME_BUCKETS: six halvings settle any range.
    for _ in 0..6 {
        if lo >= hi {
            break;
        }
        let mid = (lo + hi) / 2;
        match b.ns.get(mid) {
            Some(&bound) if bound < ns => lo = mid + 1,
            _ => hi = mid,
        }
    }
    lo & (LIFETIME_BUCKETS - 1)
}

/// One step of FxHash: cheap, and good enough to tell stacks apart once
/// finished with `fmix64`.
#[inline(always)]
fn mix(h: u64, v: u64) -> u64 {
    (h.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95)
}

/// MurmurHash3's finalizer.
#[inline(always)]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Loads `len` (at most `STACK_WINDOW`) bytes of stack memory at `addr`
/// into the window, or just one frame record if that runs off the
/// mapping. Returns the bytes loaded (0 on failure).
#[inline(always)]
fn load_window(sc: &mut Scratch, addr: u64, len: usize) -> u64 {
    if read_user(sc.window.as_mut_ptr(), len, addr) {
        len as u64
    } else if read_user(sc.window.as_mut_ptr(), 16, addr) {
        16
    } else {
        0
    }
}

/// Walks the user stack at the creation site in runtime.newproc1 and
/// returns its key in `STACKS`, storing it there if new; `NO_STACK` if the
/// map is full; and whether, with `site` (aggregate mode: its gopc and
/// startpc), the creation is at this CPU's last site with this stack,
/// which skips the `STACKS` lookup: a slot's key is published only after
/// its stack was stored.
///
/// At a RET, RIP is the RET itself, the caller's return address is at
/// [RSP] and RBP already holds the caller's frame pointer. At a site in
/// newproc1's body (`in_body`), RBP is still newproc1's frame pointer: the
/// caller's return address is at [RBP+8] and its frame pointer at [RBP].
/// Either way the walk then follows the chain: Go keeps frame pointers on
/// amd64 and chains them across systemstack, so [RBP] is the next frame
/// pointer and [RBP+8] its return address; the outermost frame
/// (runtime.goexit) saves 0.
#[inline(always)]
fn creation_stack(
    ctx: &ProbeContext,
    sc: &mut Scratch,
    pid: u32,
    depth: u32,
    in_body: bool,
    site: Option<(u64, u64)>,
) -> (u64, bool) {
    // Volatile: LLVM would otherwise pick between the two registers by
    // offsetting the context pointer, which the verifier refuses.
    let (rip, rsp, rbp) = unsafe {
        let regs = ctx.regs;
        (
            core::ptr::read_volatile(&raw const (*regs).rip),
            core::ptr::read_volatile(&raw const (*regs).rsp),
            core::ptr::read_volatile(&raw const (*regs).rbp),
        )
    };
    sc.stack.pid = pid;
    sc.stack.pcs[0] = rip;
    let mut h = mix(pid as u64, rip);
    let mut len = 1usize;
    let mut base = if in_body { rbp } else { rsp };
    let mut have = if depth > 1 {
        load_window(sc, base, FIRST_WINDOW)
    } else {
        0
    };
    if stop_after(3) {
        return (NO_STACK, false);
    }
    let mut fp = rbp;
    if in_body {
        if have >= 16 {
            let (next, ret) = unsafe {
                let p = sc.window.as_ptr() as *const u64;
                (*p, *p.add(1))
            };
            sc.stack.pcs[1] = ret;
            h = mix(h, ret);
            len = 2;
            fp = next;
        }
    } else if have >= 8 {
        let ret = unsafe { *(sc.window.as_ptr() as *const u64) };
        sc.stack.pcs[1] = ret;
        h = mix(h, ret);
        len = 2;
    }
    for _ in 2..MAX_STACK_DEPTH {
        if len < 2 || len >= MAX_STACK_DEPTH || len as u32 >= depth || fp == 0 || fp & 7 != 0 {
            break;
        }
        let mut at = fp.wrapping_sub(base);
        if at + 16 > have {
            have = load_window(sc, fp, STACK_WINDOW);
            if have == 0 {
                break;
            }
            base = fp;
            at = 0;
        }
        if at > (STACK_WINDOW - 16) as u64 {
            break;
        }
        let (next, ret) = unsafe {
            let p = sc.window.as_ptr().add(at as usize) as *const u64;
            (*p, *p.add(1))
        };
        if ret == 0 {
            break;
        }
        sc.stack.pcs[len] = ret;
        h = mix(h, ret);
        len += 1;
        fp = next;
    }
    sc.stack.len = len as u32;
    let key = fmix64(mix(h, len as u64)) | 1;
    if stop_after(4) {
        return (key, false);
    }
    if let Some((gopc, startpc)) = site {
        let k = SiteKey {
            pid,
            _pad: 0,
            gopc,
            startpc,
            stack: key,
        };
        if last_site_is(&k, sc) {
            return (key, true);
        }
    }
    if STACKS.get_ptr(key).is_some() {
        return (key, false);
    }
    match STACKS.insert(key, &sc.stack, BPF_NOEXIST as u64) {
        Ok(()) => (key, false),
        // Another CPU stored the same stack first.
        Err(EEXIST) => (key, false),
        Err(_) => {
            count(counter::STACK_FAILED);
            (NO_STACK, false)
        }
    }
}

/// x86 RFLAGS: carry and zero, the flags `jbe` jumps on.
const FLAGS_CF: u64 = 1 << 0;
const FLAGS_ZF: u64 = 1 << 6;

/// Offset of runtime.g.stackguard0: fixed by the ABI (every function
/// prologue compares RSP with 0x10(%r14)).
const G_STACKGUARD0: u64 = 0x10;

/// Exit at goexit1's prologue `jbe morestack` (the emulated site). When
/// the stack check fails the `jbe` jumps to morestack, which runs goexit1
/// again from its start, so the site is hit twice for one exit: a
/// preemption request sets the guard so, and a goroutine can get one as
/// it exits. The flags of the `cmp` just before say which hit this is;
/// only the one that goes on into goexit1 counts.
#[uprobe]
pub fn goexit1(ctx: ProbeContext) -> u32 {
    let flags = unsafe { (*ctx.regs).eflags };
    if flags & (FLAGS_CF | FLAGS_ZF) != 0 {
        return 0;
    }
    goexit1_hit(&ctx, None)
}

/// Exit at goexit1's first instruction (the single-stepped site, where
/// the prologue did not match or `--probe-sites ret`): the `cmp` has not
/// run yet. A guard at or above RSP will fail it (see `goexit1`); but a
/// preemption request can still come between this read and the `cmp`,
/// single-stepped microseconds later, so a repeat is also told by the
/// goroutine: the last exit counted per g is kept in `EXIT_SEEN`.
#[uprobe]
pub fn goexit1_entry(ctx: ProbeContext) -> u32 {
    let (g, sp) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rsp) };
    let Ok(guard) = (unsafe { bpf_probe_read_user((g + G_STACKGUARD0) as *const u64) }) else {
        count(counter::READ_G_FAILED);
        return 0;
    };
    if sp <= guard {
        return 0;
    }
    let Some(off) = offsets(&ctx) else {
        return 0;
    };
    let Ok(goid) = (unsafe { bpf_probe_read_user((g + off.goid) as *const u64) }) else {
        count(counter::READ_G_FAILED);
        return 0;
    };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = LiveKey { pid, _pad: 0, g };
    if EXIT_SEEN
        .get_ptr(&key)
        .is_some_and(|seen| unsafe { *seen } == goid)
    {
        return 0;
    }
    // Full, the least recently counted exit makes room.
    let _ = EXIT_SEEN.insert(key, goid, BPF_ANY as u64);
    goexit1_hit(&ctx, Some((pid, goid)))
}

/// The goid of the last exit `goexit1_entry` counted on each g (of each
/// process): a repeat comes before the g can be reused, so it finds its
/// own goid there. Least recently used first out: a repeat is missed only
/// if this many other exits came between.
#[map]
static EXIT_SEEN: LruHashMap<LiveKey, u64> = LruHashMap::with_max_entries(4096, 0);

/// The exit counted once: `known` is the pid and goid when the site's
/// program already read them (`goexit1_entry`).
#[inline(always)]
fn goexit1_hit(ctx: &ProbeContext, known: Option<(u32, u64)>) -> u32 {
    let g = unsafe { (*ctx.regs).r14 };
    let pid = || match known {
        Some((pid, _)) => pid,
        None => (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    if unsafe { core::ptr::read_volatile(&AGGREGATE) } != 0 {
        if exit_stop_after(1) {
            return 0;
        }
        // No scratch space and no offsets needed: the live table is the
        // only state, keyed by the exiting g, which R14 holds.
        count_exit(pid(), g);
        return 0;
    }
    let goid = match known {
        Some((_, goid)) => goid,
        None => {
            let Some(off) = offsets(ctx) else {
                return 0;
            };
            let Ok(goid) = (unsafe { bpf_probe_read_user((g + off.goid) as *const u64) }) else {
                count(counter::READ_G_FAILED);
                return 0;
            };
            goid
        }
    };
    match claim() {
        Some(sc) => {
            goexit1_event(pid(), goid, &mut sc.events);
            release(sc);
        }
        // An exit needs the scratch space only to pace wakeups: sent
        // anyway (a lost exit would leave its goroutine live for good).
        None => goexit1_event(pid(), goid, &mut 1),
    }
    0
}

fn goexit1_event(pid: u32, goid: u64, events: &mut u64) {
    let ev = GoroutineExit {
        kind: EVENT_EXIT,
        pid,
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        goid,
    };
    send(&ev, counter::EXIT_SENT, events);
}

/// Process starts and exits for node mode's discovery. Raw tracepoints
/// attach by name, without tracefs.
#[map]
static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(PROC_RINGBUF_BYTES, 0);

#[inline(always)]
fn send_proc(kind: u32, pid: u32) {
    let ev = ProcEvent {
        kind,
        pid,
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    };
    // Rare enough to wake the reader every time: discovery latency matters.
    if PROC_EVENTS.output::<ProcEvent>(&ev, 0).is_err() {
        count(counter::PROC_RINGBUF_FULL);
    }
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn proc_exec(_ctx: RawTracePointContext) -> i32 {
    send_proc(PROC_EXEC, (bpf_get_current_pid_tgid() >> 32) as u32);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn proc_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Fires for every thread; the process is gone when its leader exits.
    if (pid_tgid >> 32) as u32 == pid_tgid as u32 {
        send_proc(PROC_EXIT, (pid_tgid >> 32) as u32);
    }
    0
}

/// Does nothing: attached at the same sites, it measures the bare cost of
/// the uprobe traps (the benchmark's floor).
#[uprobe]
pub fn noop(_ctx: ProbeContext) -> u32 {
    0
}

/// For the overhead benchmark's helper costs only: the operation `calib`
/// repeats (`agent_common::calib`); set by user space like `STACK_DEPTH`.
#[unsafe(no_mangle)]
static CALIB_OP: u32 = 0;

/// Repeats one helper or map operation `calib::REPS` times per hit, so
/// the benchmark can take its cost per call (against `calib::NONE`, the
/// same loop empty) out of the noise of a single call. Attached in place
/// of `noop`; never by the agent.
#[uprobe]
pub fn calib(ctx: ProbeContext) -> u32 {
    use agent_common::calib as op;
    let which = unsafe { core::ptr::read_volatile(&CALIB_OP) };
    // Stack memory at the probe: always mapped, and as hot as the g the
    // creation program reads.
    let sp = unsafe { (*ctx.regs).rsp };
    let mut acc = 0u64;
    for i in 0..op::REPS {
        acc ^= match which {
            op::KTIME => unsafe { bpf_ktime_get_ns() },
            op::PID_TGID => bpf_get_current_pid_tgid(),
            op::COOKIE => unsafe { bpf_get_attach_cookie(ctx.as_ptr()) },
            op::READ_USER_16 => {
                let mut buf = core::mem::MaybeUninit::<[u64; 2]>::uninit();
                if read_user(buf.as_mut_ptr().cast(), 16, sp) {
                    unsafe { (*buf.as_ptr())[0] }
                } else {
                    0
                }
            }
            op::READ_USER_FIRST | op::READ_USER_WINDOW => match SCRATCH.get_ptr_mut(0) {
                Some(sc) => unsafe {
                    let w = &raw mut (*sc).window;
                    let len = if which == op::READ_USER_FIRST {
                        FIRST_WINDOW
                    } else {
                        STACK_WINDOW
                    };
                    read_user(w.cast(), len, sp) as u64
                },
                None => 0,
            },
            op::PERCPU_LOOKUP => COUNTERS.get_ptr_mut(i).map_or(0, |p| unsafe { *p }),
            op::ATOMIC_ADD => match SITE_TOTALS.get_ptr_mut(OVERFLOW_SITE) {
                Some(p) => {
                    add(p, 1);
                    1
                }
                None => 0,
            },
            op::CMPXCHG => match SITE_TOTALS.get_ptr_mut(OVERFLOW_SITE) {
                Some(p) => claim_u64(p, i as u64, i as u64 + 1) as u64,
                None => 0,
            },
            op::HASH_LOOKUP => {
                let key = SiteKey {
                    pid: i,
                    _pad: 0,
                    gopc: sp,
                    startpc: 0,
                    stack: 0,
                };
                SITE_IDS.get_ptr(&key).map_or(0, |p| unsafe { *p } as u64)
            }
            op::RINGBUF => match ring().reserve::<GoroutineExit>(0) {
                Some(e) => {
                    e.discard(BPF_RB_NO_WAKEUP as u64);
                    1
                }
                None => 0,
            },
            _ => i as u64,
        };
    }
    // Keeps the work: a result nobody used could be optimised away.
    if acc == 1 {
        count(counter::CREATE_SENT);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
