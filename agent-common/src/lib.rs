//! Types shared by the eBPF programs and user space. Every struct here is
//! `#[repr(C)]` with explicit padding and a compile-time size check, so both
//! sides agree on the layout byte for byte.
#![no_std]

/// `GoroutineEvent::kind` for a goroutine seen at the RET of runtime.newproc1.
pub const EVENT_CREATE: u32 = 1;
/// `GoroutineEvent::kind` for a goroutine seen entering runtime.goexit1.
pub const EVENT_EXIT: u32 = 2;

/// `GoroutineEvent::stack` when no stack was collected (disabled or failed).
/// The kernel never produces 0 as a stack key.
pub const NO_STACK: u64 = 0;

/// One goroutine creation or exit, written by the kernel into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineEvent {
    /// `EVENT_CREATE` or `EVENT_EXIT`.
    pub kind: u32,
    /// Thread group id (the process id user space sees).
    pub pid: u32,
    /// Kernel thread id that ran the probe.
    pub tid: u32,
    /// Explicit padding (always 0).
    pub _pad: u32,
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) at the probe.
    pub ktime_ns: u64,
    /// Key in the `STACKS` map of the creating user stack (a hash of the
    /// process id and the PCs), or `NO_STACK`.
    pub stack: u64,
    /// runtime.g.goid of the created or exiting goroutine.
    pub goid: u64,
    /// runtime.g.parentGoid: the goroutine that executed the `go` statement.
    pub parent_goid: u64,
    /// runtime.g.gopc: PC of the `go` statement (creation events only).
    pub gopc: u64,
    /// runtime.g.startpc: PC of the goroutine's function (creation events only).
    pub startpc: u64,
}
const _: () = assert!(core::mem::size_of::<GoroutineEvent>() == 64);

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

impl GOffsets {
    /// `None` if a field is not 8-aligned or the four span more than
    /// `G_WINDOW` bytes.
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
        (len <= G_WINDOW as u64 && lo <= u32::MAX as u64).then_some(GOffsets {
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

/// Indices of the kernel-side counters in the `COUNTERS` per-CPU array.
/// Each counts one way an event can be lost or degraded in the kernel.
pub mod counter {
    /// Creation events written to the ring buffer.
    pub const CREATE_SENT: u32 = 0;
    /// Exit events written to the ring buffer.
    pub const EXIT_SENT: u32 = 1;
    /// Events dropped because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 2;
    /// Creation events sent without a stack because the stack map was full.
    pub const STACK_FAILED: u32 = 3;
    /// Events dropped because reading the runtime.g failed.
    pub const READ_G_FAILED: u32 = 4;
    /// Events dropped because a preempted probe on the same CPU held the
    /// per-CPU scratch space (possible on fully preemptible kernels).
    pub const SCRATCH_BUSY: u32 = 5;
    /// Process exec/exit events dropped because their ring buffer was full.
    pub const PROC_RINGBUF_FULL: u32 = 6;
    /// Number of counters.
    pub const COUNT: u32 = 7;

    /// Names used for the exported metric label, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "create_sent",
        "exit_sent",
        "ringbuf_full",
        "stack_failed",
        "read_g_failed",
        "scratch_busy",
        "proc_ringbuf_full",
    ];
}

/// Ring buffer size in bytes (a power of two multiple of the page size):
/// 4 MiB holds ~74k events, over 10 ms of the fastest goroutine churn.
pub const RINGBUF_BYTES: u32 = 4 << 20;
/// When this much data is pending, the kernel wakes the reader; below it the
/// reader drains on its own timer. Saves a wakeup per event.
pub const RINGBUF_WAKEUP_BYTES: u64 = 256 << 10;
/// Distinct binaries one loaded object can probe (index = attach cookie).
pub const MAX_BINARIES: u32 = 1024;
/// Distinct creation stacks the kernel can hold at once (allocated on use).
pub const STACK_MAP_ENTRIES: u32 = 16384;
/// Deepest creation stack the kernel walks.
pub const MAX_STACK_DEPTH: usize = 127;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, repr(C), no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::GoroutineEvent {}
    unsafe impl aya::Pod for super::GOffsets {}
    unsafe impl aya::Pod for super::UserStack {}
    unsafe impl aya::Pod for super::ProcEvent {}
}
