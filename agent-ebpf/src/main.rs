//! Kernel side of gmon-agent: two plain uprobes on the Go runtime.
//!
//! * `newproc1_ret` sits on every RET instruction of runtime.newproc1 (user
//!   space finds them by disassembly). At a RET the new *g is in RAX. We never
//!   use return probes: they rewrite return addresses on Go stacks, which
//!   the Go runtime does not expect (golang/go#22008).
//! * `goexit1` sits on the entry of runtime.goexit1, which runs on the
//!   exiting goroutine; ABIInternal keeps the current g in R14.
//!
//! The attach cookie is an index into `BINARIES`, which holds the runtime.g
//! field offsets of the probed binary, so one loaded object serves binaries
//! of different Go releases.
#![no_std]
#![no_main]

use agent_common::{
    EVENT_CREATE, EVENT_EXIT, GOffsets, GoroutineEvent, MAX_BINARIES, NO_STACK, RINGBUF_BYTES,
    RINGBUF_WAKEUP_BYTES, STACK_MAP_ENTRIES, counter,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe},
    maps::{Array, PerCpuArray, RingBuf, StackTrace},
    programs::{ProbeContext, tracing::StackIdContext},
};

/// Non-zero: collect the creating user stack for every new goroutine.
/// Set by user space with `EbpfLoader::override_global`.
#[unsafe(no_mangle)]
static COLLECT_STACKS: u32 = 0;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static BINARIES: Array<GOffsets> = Array::with_max_entries(MAX_BINARIES, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it, a plain add is enough.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn read_u64(base: u64, offset: u64) -> Result<u64, ()> {
    unsafe { bpf_probe_read_user((base + offset) as *const u64) }.map_err(|_| ())
}

#[inline(always)]
fn offsets(ctx: &ProbeContext) -> Option<&'static GOffsets> {
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    BINARIES.get(cookie as u32)
}

/// Wake the reader only when enough data is pending; otherwise it drains on
/// its own timer. A wakeup per event costs more than the probe itself.
#[inline(always)]
fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= RINGBUF_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[uprobe]
pub fn newproc1_ret(ctx: ProbeContext) -> u32 {
    let _ = try_newproc1_ret(&ctx);
    0
}

fn try_newproc1_ret(ctx: &ProbeContext) -> Result<(), ()> {
    let off = offsets(ctx).ok_or(())?;
    let g = unsafe { (*ctx.regs).rax };
    let (goid, parent_goid, gopc, startpc) = match (
        read_u64(g, off.goid),
        read_u64(g, off.parent_goid),
        read_u64(g, off.gopc),
        read_u64(g, off.startpc),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => {
            count(counter::READ_G_FAILED);
            return Err(());
        }
    };
    let mut stack_id = NO_STACK;
    if unsafe { core::ptr::read_volatile(&COLLECT_STACKS) } != 0 {
        match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
            Ok(id) => stack_id = id as i32,
            Err(_) => count(counter::STACK_FAILED),
        }
    }
    let flags = submit_flags();
    let Some(mut entry) = EVENTS.reserve::<GoroutineEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return Err(());
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(GoroutineEvent {
        kind: EVENT_CREATE,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        stack_id,
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        goid,
        parent_goid,
        gopc,
        startpc,
    });
    entry.submit(flags);
    count(counter::CREATE_SENT);
    Ok(())
}

#[uprobe]
pub fn goexit1(ctx: ProbeContext) -> u32 {
    let _ = try_goexit1(&ctx);
    0
}

fn try_goexit1(ctx: &ProbeContext) -> Result<(), ()> {
    let off = offsets(ctx).ok_or(())?;
    let g = unsafe { (*ctx.regs).r14 };
    let Ok(goid) = read_u64(g, off.goid) else {
        count(counter::READ_G_FAILED);
        return Err(());
    };
    let flags = submit_flags();
    let Some(mut entry) = EVENTS.reserve::<GoroutineEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return Err(());
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(GoroutineEvent {
        kind: EVENT_EXIT,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        stack_id: NO_STACK,
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        goid,
        parent_goid: 0,
        gopc: 0,
        startpc: 0,
    });
    entry.submit(flags);
    count(counter::EXIT_SENT);
    Ok(())
}

/// Does nothing: attached at the same sites, it measures the bare cost of
/// the uprobe traps (the benchmark's floor).
#[uprobe]
pub fn noop(_ctx: ProbeContext) -> u32 {
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
