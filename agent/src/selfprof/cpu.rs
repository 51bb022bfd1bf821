//! CPU profile of the agent itself. SIGPROF fires every 10 ms of process CPU
//! time (setitimer ITIMER_PROF, as Go's runtime/pprof long did); the handler
//! unwinds the interrupted thread into a fixed buffer that exists only while
//! a profile runs, so profiling costs a bounded 4 MiB and nothing after.

use pprof_util::{StackProfile, WeightedStack};
use std::{
    cell::UnsafeCell,
    collections::HashMap,
    ffi::c_void,
    sync::{
        Once,
        atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering},
    },
    time::Duration,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a CPU profile is already being taken; try again when it ends")]
    Busy,
    #[error("cannot start the profiling timer: {0}")]
    Timer(std::io::Error),
}

const PERIOD: Duration = Duration::from_millis(10);
const DEPTH: usize = 64;
/// Samples kept per profile: 80 CPU-seconds at 100 Hz. Later ones are
/// counted and dropped.
const CAPACITY: usize = 8192;

struct Sample {
    len: AtomicUsize,
    pcs: UnsafeCell<[usize; DEPTH]>,
}

struct Buffer {
    next: AtomicUsize,
    samples: Box<[Sample]>,
    /// Code where unwinding could deadlock (the unwinder takes the dynamic
    /// loader's lock): samples there keep only the interrupted PC.
    no_unwind: Vec<(usize, usize)>,
}

// SAFETY: each sample slot is written by the one handler that claimed its
// index and read only after every handler has finished.
unsafe impl Sync for Buffer {}

static ACTIVE: AtomicPtr<Buffer> = AtomicPtr::new(std::ptr::null_mut());
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
static RUNNING: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// A finished profile's statistics, for the caller to log.
pub struct Taken {
    pub pprof: Vec<u8>,
    pub samples: usize,
    pub dropped: usize,
}

/// Samples the whole process for `duration`; returns a gzipped pprof
/// profile (sample type cpu/nanoseconds). Blocks the calling thread.
pub fn profile(duration: Duration) -> Result<Taken, Error> {
    if RUNNING.swap(true, Ordering::SeqCst) {
        return Err(Error::Busy);
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::SeqCst);
        }
    }
    let _done = Done;

    let buf = Box::new(Buffer {
        next: AtomicUsize::new(0),
        samples: (0..CAPACITY)
            .map(|_| Sample {
                len: AtomicUsize::new(0),
                pcs: UnsafeCell::new([0; DEPTH]),
            })
            .collect(),
        no_unwind: no_unwind_ranges(),
    });
    // The handler stays installed for the process's life: a SIGPROF still
    // pending after a profile must not meet the default action (exit).
    INSTALL.call_once(|| {
        // SAFETY: a valid sigaction with an async-signal-safe handler.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut());
        }
    });
    let raw = Box::into_raw(buf);
    ACTIVE.store(raw, Ordering::SeqCst);
    let started = set_timer(PERIOD);
    if started.is_ok() {
        std::thread::sleep(duration);
        let _ = set_timer(Duration::ZERO);
    }
    ACTIVE.store(std::ptr::null_mut(), Ordering::SeqCst);
    while IN_HANDLER.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
    // SAFETY: no handler can see the buffer any more (checked above).
    let buf = unsafe { Box::from_raw(raw) };
    started.map_err(Error::Timer)?;
    Ok(encode(&buf))
}

fn set_timer(period: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: period.as_secs() as libc::time_t,
        tv_usec: period.subsec_micros() as libc::suseconds_t,
    };
    let it = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: valid itimerval; the old value is not wanted.
    if unsafe { libc::setitimer(libc::ITIMER_PROF, &it, std::ptr::null_mut()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Executable mappings of libc, the dynamic loader, libgcc and the vDSO.
fn no_unwind_ranges() -> Vec<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let path = f.nth(3).unwrap_or("");
            let risky = ["libc.so", "ld-linux", "libgcc_s", "libpthread", "[vdso]"];
            if !perms.contains('x') || !risky.iter().any(|r| path.contains(r)) {
                return None;
            }
            let (lo, hi) = range.split_once('-')?;
            Some((
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
            ))
        })
        .collect()
}

extern "C" fn handler(_sig: libc::c_int, _info: *mut libc::siginfo_t, uctx: *mut c_void) {
    let errno = std::io::Error::last_os_error().raw_os_error();
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let buf = ACTIVE.load(Ordering::SeqCst);
    if !buf.is_null() {
        // SAFETY: non-null means `profile` keeps it alive until IN_HANDLER
        // drops to zero; the kernel passes a valid ucontext.
        unsafe { record(&*buf, uctx) };
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    // The handler must not change errno under the interrupted code.
    if let Some(e) = errno {
        // SAFETY: writing this thread's errno.
        unsafe { *libc::__errno_location() = e };
    }
}

unsafe fn record(buf: &Buffer, uctx: *mut c_void) {
    let i = buf.next.fetch_add(1, Ordering::Relaxed);
    let Some(slot) = buf.samples.get(i) else {
        return; // counted as dropped from `next`
    };
    // SAFETY: the kernel's ucontext for this signal; the slot is ours.
    let (rip, pcs) = unsafe {
        let uc = &*(uctx as *const libc::ucontext_t);
        (
            uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize,
            &mut *slot.pcs.get(),
        )
    };
    let mut n = 0;
    if !buf
        .no_unwind
        .iter()
        .any(|&(lo, hi)| (lo..hi).contains(&rip))
    {
        // Unwind through the signal frame; keep frames from the
        // interrupted PC outwards (the handler's own frames come first).
        let mut found = false;
        // SAFETY: trace_unsynchronized in a signal handler is what every
        // Rust sampling profiler does; the risky code is excluded above.
        unsafe {
            backtrace::trace_unsynchronized(|f| {
                let ip = f.ip() as usize;
                if ip == 0 {
                    return false; // the end of the chain
                }
                found |= ip == rip;
                if found {
                    pcs[n] = ip;
                    n += 1;
                }
                n < DEPTH
            })
        };
    }
    if n == 0 && rip != 0 {
        pcs[0] = rip;
        n = 1;
    }
    slot.len.store(n, Ordering::Release);
}

fn encode(buf: &Buffer) -> Taken {
    let claimed = buf.next.load(Ordering::Relaxed);
    let mut counts: HashMap<&[usize], u64> = HashMap::new();
    let mut samples = 0;
    for s in buf.samples.iter().take(claimed) {
        let n = s.len.load(Ordering::Acquire);
        if n > 0 {
            // SAFETY: written before `len` was published; no writer is left.
            let pcs = unsafe { &*s.pcs.get() };
            *counts.entry(&pcs[..n]).or_default() += 1;
            samples += 1;
        }
    }
    let mut profile = StackProfile::default();
    for m in mappings::MAPPINGS.as_deref().unwrap_or(&[]) {
        profile.push_mapping(m.clone());
    }
    let period = PERIOD.as_nanos() as f64;
    for (pcs, count) in counts {
        // pprof_util wants the outermost frame first.
        let addrs = pcs.iter().rev().copied().collect();
        let weight = count as f64 * period;
        profile.push_stack(WeightedStack { addrs, weight }, None);
    }
    Taken {
        pprof: profile.to_pprof(("cpu", "nanoseconds"), ("cpu", "nanoseconds"), None),
        samples,
        dropped: claimed.saturating_sub(CAPACITY),
    }
}
