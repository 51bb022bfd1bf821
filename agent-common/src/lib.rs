//! Types shared by the eBPF programs and user space. Every struct here is
//! `#[repr(C)]` with explicit padding and a compile-time size check, so both
//! sides agree on the layout byte for byte.
#![no_std]

/// `GoroutineEvent::kind` for a goroutine seen at the RET of runtime.newproc1.
pub const EVENT_CREATE: u32 = 1;
/// `GoroutineEvent::kind` for a goroutine seen entering runtime.goexit1.
pub const EVENT_EXIT: u32 = 2;

/// `GoroutineEvent::stack_id` when no stack was collected (disabled or failed).
pub const NO_STACK: i32 = -1;

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
    /// Id in the `STACKS` map of the creating user stack, or `NO_STACK`.
    pub stack_id: i32,
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) at the probe.
    pub ktime_ns: u64,
    /// runtime.g.goid of the created or exiting goroutine.
    pub goid: u64,
    /// runtime.g.parentGoid: the goroutine that executed the `go` statement.
    pub parent_goid: u64,
    /// runtime.g.gopc: PC of the `go` statement (creation events only).
    pub gopc: u64,
    /// runtime.g.startpc: PC of the goroutine's function (creation events only).
    pub startpc: u64,
}
const _: () = assert!(core::mem::size_of::<GoroutineEvent>() == 56);

/// Offsets into runtime.g that user space derives from the binary and passes
/// to the programs as globals (they change between Go releases).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GOffsets {
    pub goid: u64,
    pub parent_goid: u64,
    pub gopc: u64,
    pub startpc: u64,
}
const _: () = assert!(core::mem::size_of::<GOffsets>() == 32);

/// Indices of the kernel-side counters in the `COUNTERS` per-CPU array.
/// Each counts one way an event can be lost or degraded in the kernel.
pub mod counter {
    /// Creation events written to the ring buffer.
    pub const CREATE_SENT: u32 = 0;
    /// Exit events written to the ring buffer.
    pub const EXIT_SENT: u32 = 1;
    /// Events dropped because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 2;
    /// Creation events sent without a stack because bpf_get_stackid failed.
    pub const STACK_FAILED: u32 = 3;
    /// Events dropped because reading the runtime.g failed.
    pub const READ_G_FAILED: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;

    /// Names used for the exported metric label, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "create_sent",
        "exit_sent",
        "ringbuf_full",
        "stack_failed",
        "read_g_failed",
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
/// Entries in the stack trace map.
pub const STACK_MAP_ENTRIES: u32 = 16384;
/// Deepest stack the kernel collects (bpf's limit is 127).
pub const MAX_STACK_DEPTH: usize = 127;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, repr(C), no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::GoroutineEvent {}
    unsafe impl aya::Pod for super::GOffsets {}
}
