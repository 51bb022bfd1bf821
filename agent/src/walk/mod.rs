//! Goroutines alive at attach: read from the process's memory once its
//! binary's probes are attached, so goroutines created before the agent
//! (every long-lived one after a restart or a late install: where leaks
//! are) are counted live and their exits match.
//!
//! The walk follows runtime.forEachGRace: the length (allglen) first, then
//! the array (allgptr), which then holds at least that many valid *g. Each
//! g's goid, gopc, startpc, status and waitsince come with one
//! process_vm_readv per 1024 goroutines. It never stops the process:
//! goroutines created or exiting meanwhile are the caller's to reconcile
//! (the probes were attached first, so they see them).

use crate::gobin::Walk;
use std::time::{Duration, Instant};

/// More than this many entries in allgs is taken as a misread layout
/// (a process with 1M goroutines has 1M entries; Go itself is not tested
/// past a few million).
pub const MAX_GS: u64 = 1 << 24;
/// Goroutines read per process_vm_readv (the kernel's IOV_MAX).
const BATCH: usize = 1024;
/// runtime._Gscan: set on a status while the GC scans the g's stack.
const G_SCAN: u32 = 0x1000;
const G_IDLE: u32 = 0;
const G_DEAD: u32 = 6;
/// The highest status any supported release uses.
const G_MAX: u32 = 10;

/// Why a process's goroutines could not be read (each is counted by its
/// `reason`; creation and exit tracking go on without them).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read process {pid}'s memory: {err}")]
    Read { pid: u32, err: std::io::Error },
    #[error("process {pid}'s allglen is {len}: not a goroutine count")]
    Length { pid: u32, len: u64 },
    #[error("process {pid}'s first goroutine is not the main goroutine (goid {goid})")]
    NotMain { pid: u32, goid: u64 },
}

impl Error {
    /// The `reason` label of the failure counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Read { err, .. } if err.raw_os_error() == Some(libc::ESRCH) => "exited",
            Error::Read { err, .. } if err.raw_os_error() == Some(libc::EPERM) => "permission",
            Error::Read { .. } => "read",
            Error::Length { .. } | Error::NotMain { .. } => "layout",
        }
    }
}

/// One goroutine alive at the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveG {
    /// Address of its runtime.g (the key of aggregate mode's live table).
    pub g: u64,
    pub goid: u64,
    /// PC after the `go` statement (the creator's call to newproc).
    pub gopc: u64,
    pub startpc: u64,
    /// runtime nanotime (CLOCK_MONOTONIC, as bpf_ktime_get_ns) since when
    /// the GC has seen it blocked; 0 if it has not.
    pub waitsince: u64,
}

/// What one walk did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries in allgs (dead ones included).
    pub entries: u64,
    /// Goroutines alive.
    pub live: u64,
    /// Entries whose g could not be read (freed under us; counted).
    pub unreadable: u64,
    /// The process was still creating its main goroutine: nothing to read
    /// (the probes see that creation and every later one).
    pub starting: bool,
    pub took: Duration,
}

/// Reads the live goroutines of process `pid` whose binary is mapped with
/// load bias `bias`, handing them to `each` a batch at a time.
pub fn walk(pid: u32, bias: u64, w: &Walk, mut each: impl FnMut(&[LiveG])) -> Result<Stats, Error> {
    let start = Instant::now();
    let mem = Mem { pid };
    let len = mem.word(w.allgs.allglen.wrapping_add(bias))?;
    let ptr = mem.word(w.allgs.allgptr.wrapping_add(bias))?;
    if len > MAX_GS || (len > 0 && ptr == 0) {
        return Err(Error::Length { pid, len });
    }
    let l = &w.layout;
    let fields = [
        l.probes.goid,
        l.probes.gopc,
        l.probes.startpc,
        l.atomicstatus,
        l.waitsince,
    ];
    let lo = *fields.iter().min().expect("five fields");
    let span = (*fields.iter().max().expect("five fields") + 8 - lo) as usize;
    let at = |buf: &[u8], off: u64| {
        let i = (off - lo) as usize;
        u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"))
    };
    let mut stats = Stats {
        entries: len,
        starting: len == 0,
        ..Stats::default()
    };
    let mut ptrs = vec![0u64; BATCH];
    let mut gbuf = vec![0u8; BATCH * span];
    let mut out = Vec::with_capacity(BATCH);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(BATCH as u64) as usize;
        mem.read(ptr + done * 8, bytemuck_u64(&mut ptrs[..n]))?;
        let read = mem.gather(&ptrs[..n], lo, span, &mut gbuf)?;
        out.clear();
        for (i, &gp) in ptrs[..n].iter().enumerate() {
            if !read[i] {
                stats.unreadable += 1;
                continue;
            }
            let g = &gbuf[i * span..(i + 1) * span];
            let status = (at(g, l.atomicstatus) as u32) & !G_SCAN;
            let goid = at(g, l.probes.goid);
            if done == 0 && i == 0 && goid != 1 {
                // A process caught in the runtime's start-up: its main g is
                // allocated (idle or dead) but has no goid yet. Only that
                // exact shape is accepted; anything else is a misread.
                if goid == 0 && len == 1 && (status == G_IDLE || status == G_DEAD) {
                    stats.starting = true;
                    break;
                }
                return Err(Error::NotMain { pid, goid });
            }
            // Dead (free list) or never started; and the g of a cgo extra
            // M, which has no creator and never exits through goexit1.
            let gopc = at(g, l.probes.gopc);
            if status == G_IDLE || status == G_DEAD || status > G_MAX || goid == 0 || gopc == 0 {
                continue;
            }
            out.push(LiveG {
                g: gp,
                goid,
                gopc,
                startpc: at(g, l.probes.startpc),
                waitsince: (at(g, l.waitsince) as i64).max(0) as u64,
            });
        }
        stats.live += out.len() as u64;
        each(&out);
        done += n as u64;
    }
    stats.took = start.elapsed();
    Ok(stats)
}

/// Views a u64 slice as bytes (for reading words in place).
fn bytemuck_u64(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u64.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}

/// Another process's memory, through process_vm_readv.
struct Mem {
    pid: u32,
}

impl Mem {
    fn word(&self, addr: u64) -> Result<u64, Error> {
        let mut w = [0u64; 1];
        self.read(addr, bytemuck_u64(&mut w))?;
        Ok(w[0])
    }

    /// Reads exactly `buf.len()` bytes at `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: one local iovec over `buf`; the remote one is only read.
        let n = unsafe { libc::process_vm_readv(self.pid as i32, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(Error::Read {
                pid: self.pid,
                err: std::io::Error::last_os_error(),
            });
        }
        if n as usize != buf.len() {
            return Err(Error::Read {
                pid: self.pid,
                err: std::io::Error::from_raw_os_error(libc::EFAULT),
            });
        }
        Ok(())
    }

    /// Reads `span` bytes at `p + lo` for each pointer `p` into consecutive
    /// slots of `buf`; returns which were read. The kernel stops at the
    /// first unreadable range, so the rest is read again past it.
    fn gather(
        &self,
        ptrs: &[u64],
        lo: u64,
        span: usize,
        buf: &mut [u8],
    ) -> Result<Vec<bool>, Error> {
        let mut ok = vec![false; ptrs.len()];
        let mut from = 0;
        while from < ptrs.len() {
            let local: Vec<libc::iovec> = (from..ptrs.len())
                .map(|i| libc::iovec {
                    iov_base: buf[i * span..].as_mut_ptr().cast(),
                    iov_len: span,
                })
                .collect();
            let remote: Vec<libc::iovec> = ptrs[from..]
                .iter()
                .map(|&p| libc::iovec {
                    iov_base: p.wrapping_add(lo) as *mut libc::c_void,
                    iov_len: span,
                })
                .collect();
            // SAFETY: each local iovec is a distinct `span`-byte slot of
            // `buf`; the remote ones are only read.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid as i32,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                // EFAULT on the very first range: skip it and go on.
                if err.raw_os_error() != Some(libc::EFAULT) {
                    return Err(Error::Read { pid: self.pid, err });
                }
                from += 1;
                continue;
            }
            let whole = n as usize / span;
            ok[from..from + whole].fill(true);
            // The one after the last whole range failed (or was partial).
            from += whole + 1;
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gobin::{GLayout, allgs::AllGs};
    use agent_common::GOffsets;

    const STATUS: usize = 18; // word index of atomicstatus (offset 144)
    const GOID: usize = 19;
    const GOPC: usize = 21;

    /// A g of this test's own memory: goid, status and creator set.
    fn g(goid: u64, status: u64, gopc: u64) -> Box<[u64; 32]> {
        let mut g = Box::new([0u64; 32]);
        (g[GOID], g[STATUS], g[GOPC]) = (goid, status, gopc);
        g
    }

    /// Walks allgs = `gs` in this very process (process_vm_readv on
    /// oneself needs no privilege).
    fn walk_own(gs: &[&[u64; 32]]) -> Result<(Stats, Vec<LiveG>), Error> {
        let ptrs: Vec<u64> = gs.iter().map(|g| g.as_ptr() as u64).collect();
        let (len, ptr) = (gs.len() as u64, ptrs.as_ptr() as u64);
        let w = Walk {
            allgs: AllGs {
                allglen: &len as *const u64 as u64,
                allgptr: &ptr as *const u64 as u64,
            },
            layout: GLayout {
                probes: GOffsets::new(GOID as u64 * 8, 160, GOPC as u64 * 8, 176).unwrap(),
                atomicstatus: STATUS as u64 * 8,
                waitsince: 184,
            },
        };
        let mut live = Vec::new();
        walk(std::process::id(), 0, &w, |b| live.extend_from_slice(b)).map(|s| (s, live))
    }

    #[test]
    fn a_process_still_creating_its_main_goroutine_has_nothing_to_read() {
        let (s, live) = walk_own(&[&g(0, G_DEAD as u64, 0)]).unwrap();
        assert!(s.starting && live.is_empty(), "{s:?}");
        let (s, live) = walk_own(&[]).unwrap();
        assert!(s.starting && live.is_empty(), "{s:?}");
    }

    #[test]
    fn a_first_goroutine_that_is_not_main_is_a_misread_layout() {
        // Running without a goid, or a second g next to it: not start-up.
        for gs in [
            vec![g(0, 2, 0x1000)],
            vec![g(0, G_DEAD as u64, 0), g(0, G_DEAD as u64, 0)],
            vec![g(7, 2, 0x1000)],
        ] {
            let refs: Vec<&[u64; 32]> = gs.iter().map(|b| &**b).collect();
            let e = walk_own(&refs).unwrap_err();
            assert_eq!(e.reason(), "layout", "{e}");
        }
    }

    #[test]
    fn live_goroutines_are_read_and_dead_ones_skipped() {
        let (main, dead, parked) = (
            g(1, 2, 0x1000),
            g(9, G_DEAD as u64, 0x2000),
            g(5, 4, 0x3000),
        );
        let (s, live) = walk_own(&[&main, &dead, &parked]).unwrap();
        assert!(!s.starting);
        assert_eq!(
            live.iter()
                .map(|g| (g.g, g.goid, g.gopc))
                .collect::<Vec<_>>(),
            [
                (main.as_ptr() as u64, 1, 0x1000),
                (parked.as_ptr() as u64, 5, 0x3000)
            ]
        );
    }
}
