//! Reads the kernel's ring buffers (goroutine events, process events)
//! through their shared mapping, a batch at a time: records are read up to
//! the producer position, then the consumer position is published once
//! (aya's `RingBuf` publishes it per record). Goroutine events come from
//! one ring per CPU and are merged here in kernel time order.
//!
//! The kernel wakes us only when a lot is pending, so the pipeline also
//! drains on a short timer.

use super::{Error, mmap::Mapping};
use agent_common::{EVENT_CREATE, EVENT_EXIT, GoroutineEvent, GoroutineExit};
use aya::maps::MapData;
use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

/// The record header's flags (kernel/bpf/ringbuf.c).
const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR_BYTES: u64 = 8;
/// How far ahead `scan` prefetches: eight 64-byte event records.
const PREFETCH_AHEAD: usize = 512;

/// A BPF ring buffer read from user space.
pub struct Ring {
    /// Read-write: the consumer position, at the start of the first page.
    consumer: Mapping,
    /// Read-only: the producer position's page, then the data area mapped
    /// twice in a row, so a record that wraps is contiguous.
    producer: Mapping,
    page: usize,
    mask: u64,
    /// Our position: published to the kernel at the end of each batch.
    pos: u64,
    map: MapData,
}

impl Ring {
    pub(super) fn new(name: &'static str, map: aya::maps::Map) -> Result<Self, Error> {
        let aya::maps::Map::RingBuf(map) = map else {
            return Err(Error::Map(name, "not a ring buffer".into()));
        };
        let err = |e: String| Error::Map(name, e);
        let size = map.info().map_err(|e| err(e.to_string()))?.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(fd, page, 0, true).map_err(|e| err(e.to_string()))?;
        let producer =
            Mapping::new(fd, page + 2 * size, page, false).map_err(|e| err(e.to_string()))?;
        let mut ring = Ring {
            consumer,
            producer,
            page,
            mask: size as u64 - 1,
            pos: 0,
            map,
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first 8 bytes of the consumer page, 8-aligned; the
        // kernel only reads it.
        unsafe { &*self.consumer.ptr().as_ptr().cast::<AtomicU64>() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as above, written by the kernel under its lock.
        unsafe { &*self.producer.ptr().as_ptr().cast::<AtomicU64>() }
    }

    /// Calls `f` with each committed record (discarded ones are skipped)
    /// until the ring is empty or the next record is still being written;
    /// returns how many it passed.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        loop {
            let end = self.scan(|rec| {
                f(rec);
                n += 1;
            });
            if end == self.pos {
                return n;
            }
            self.release(end);
        }
    }

    /// Calls `f` with each committed record from our position on, up to
    /// the first one still being written, without handing their space
    /// back: they stay valid until `release`. Returns the position after
    /// the last one.
    fn scan<'a>(&'a self, mut f: impl FnMut(&'a [u8])) -> u64 {
        let data = self.producer.ptr().as_ptr().wrapping_add(self.page);
        let end = self.producer_pos().load(Ordering::Acquire);
        let mut pos = self.pos;
        while pos < end {
            let at = (pos & self.mask) as usize;
            // The records were written on other CPUs: ask for the lines a
            // few records on early, so their transfers overlap.
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a hint; the address is inside the double mapping.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>(data.add(at + PREFETCH_AHEAD).cast());
            }
            // SAFETY: at <= mask, and the header is inside the first copy
            // of the data area; the kernel writes `len` last, with release
            // order, when it commits.
            let hdr = unsafe { &*data.add(at).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if hdr & BUSY_BIT != 0 {
                break;
            }
            let len = hdr & !(BUSY_BIT | DISCARD_BIT);
            if hdr & DISCARD_BIT == 0 {
                // SAFETY: a record is at most the data area's size, and the
                // second copy follows the first, so the record's bytes are
                // contiguous and mapped; the kernel does not write them
                // again before we release their space.
                f(unsafe {
                    std::slice::from_raw_parts(data.add(at + HDR_BYTES as usize), len as usize)
                });
            }
            pos += (u64::from(len) + HDR_BYTES).next_multiple_of(8);
        }
        pos
    }

    /// Hands the space before `pos` back to the kernel.
    fn release(&mut self, pos: u64) {
        self.pos = pos;
        self.consumer_pos().store(pos, Ordering::Release);
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

/// Reads goroutine events from the per-CPU `EVENTS_*` ring buffers.
///
/// A creation and its goroutine's exit can land in different rings, so
/// records are read out of every ring and handed on in kernel time order.
/// A record is handed on only once it is older than the moment the read
/// began: its goroutine's creation, if in another ring, was committed
/// before its exit was timed, so before that moment, and was read too.
/// Newer records are copied aside and wait for the next drain.
///
/// Records are handed on where they lie in the rings (their space goes
/// back to the kernel after): only their times and places are sorted.
pub struct EventReader {
    rings: Vec<Ring>,
    /// Read from the rings, not yet handed on.
    carry: Vec<GoroutineEvent>,
    /// The previous drain's `carry`, kept for its allocation.
    spare: Vec<GoroutineEvent>,
    /// (kernel time, address) of each record of a drain; empty between
    /// drains (the addresses are only valid during one).
    order: Vec<(u64, usize)>,
    ends: Vec<u64>,
}

/// An entry that was not a `GoroutineEvent` (counted, never expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl EventReader {
    pub(super) fn new(rings: Vec<Ring>) -> Self {
        EventReader {
            rings,
            carry: Vec::new(),
            spare: Vec::new(),
            order: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// The rings' fds, to poll them together with others.
    pub fn fds(&self) -> impl Iterator<Item = std::os::fd::RawFd> + '_ {
        self.rings.iter().map(Ring::fd)
    }

    /// Calls `f` for each event older than now (every event, if `all`), in
    /// kernel time order; returns how many events it passed and how many
    /// malformed entries it skipped.
    pub fn drain(&mut self, all: bool, mut f: impl FnMut(&GoroutineEvent)) -> (usize, usize) {
        let cutoff = if all { u64::MAX } else { monotonic_ns() };
        let mut malformed = 0;
        let carried = std::mem::replace(&mut self.carry, std::mem::take(&mut self.spare));
        let order = &mut self.order;
        order.extend(carried.iter().map(|e| (e.ktime_ns, e as *const _ as usize)));
        self.ends.clear();
        for r in &self.rings {
            let end = r.scan(|rec| match view(rec) {
                Ok(at) => order.push(at),
                Err(Malformed) => malformed += 1,
            });
            self.ends.push(end);
        }
        let n = hand_on(order, cutoff, |addr, ready| {
            // SAFETY: every address is of an event in `carried` or of a
            // record in a ring not yet released, checked by `view`: an
            // exit's first fields, and all of a creation's; neither
            // changes before the release below.
            let head = unsafe { &*(addr as *const GoroutineExit) };
            let exit;
            let ev = if head.kind == EVENT_EXIT {
                exit = head.widen();
                &exit
            } else {
                unsafe { &*(addr as *const GoroutineEvent) }
            };
            if ready {
                f(ev);
            } else {
                self.carry.push(*ev);
            }
        });
        for (r, &end) in self.rings.iter_mut().zip(&self.ends) {
            r.release(end);
        }
        self.spare = carried;
        self.spare.clear();
        // A burst's worth of room is not kept for good.
        for v in [&mut self.carry, &mut self.spare] {
            if v.capacity() > 4 * CARRY_KEPT && v.len() < CARRY_KEPT {
                v.shrink_to(CARRY_KEPT);
            }
        }
        (n, malformed)
    }
}

/// Sorts `order` by time (stable) and calls `f` with each address, oldest
/// first, and whether it is older than `cutoff`; leaves `order` empty and
/// returns how many were.
fn hand_on(order: &mut Vec<(u64, usize)>, cutoff: u64, mut f: impl FnMut(usize, bool)) -> usize {
    // Each ring's records are (nearly) in time order: the sort merges runs.
    order.sort_by_key(|&(t, _)| t);
    let ready = order.partition_point(|&(t, _)| t < cutoff);
    for (i, &(_, addr)) in order.iter().enumerate() {
        f(addr, i < ready);
    }
    order.clear();
    ready
}

/// Events' room kept between drains (64 KiB).
const CARRY_KEPT: usize = 1024;

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One ring buffer entry's kernel time and address: a creation
/// (`GoroutineEvent`) or an exit (`GoroutineExit`), told apart by kind.
fn view(bytes: &[u8]) -> Result<(u64, usize), Malformed> {
    let p = bytes.as_ptr().cast::<GoroutineExit>();
    if bytes.len() < std::mem::size_of::<GoroutineExit>() || !p.is_aligned() {
        return Err(Malformed);
    }
    // SAFETY: length and alignment checked (ring records are 8-aligned);
    // both records are repr(C) plain data and every bit pattern is valid.
    let head = unsafe { &*p };
    let len = match head.kind {
        EVENT_CREATE => std::mem::size_of::<GoroutineEvent>(),
        EVENT_EXIT => std::mem::size_of::<GoroutineExit>(),
        _ => return Err(Malformed),
    };
    if bytes.len() < len {
        return Err(Malformed);
    }
    Ok((head.ktime_ns, p as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rec`'s bytes at byte offset `at` of an 8-aligned buffer.
    fn placed<T: Copy>(rec: &T, at: usize) -> Vec<u64> {
        let size = std::mem::size_of::<T>();
        let mut buf = vec![0u64; (at + size).div_ceil(8)];
        // SAFETY: the buffer holds at + size bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (rec as *const T).cast::<u8>(),
                buf.as_mut_ptr().cast::<u8>().add(at),
                size,
            )
        };
        buf
    }

    fn bytes(buf: &[u64], at: usize, len: usize) -> &[u8] {
        // SAFETY: within the buffer.
        unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>().add(at), len) }
    }

    const CREATE_LEN: usize = std::mem::size_of::<GoroutineEvent>();
    const EXIT_LEN: usize = std::mem::size_of::<GoroutineExit>();

    #[test]
    fn views_aligned_records_in_place() {
        let ev = GoroutineEvent {
            kind: EVENT_CREATE,
            pid: 42,
            ktime_ns: 1_000,
            stack: 0xdead_beef,
            goid: 99,
            parent_goid: 1,
            gopc: 0x401000,
            startpc: 0x402000,
        };
        let buf = placed(&ev, 8);
        let rec = bytes(&buf, 8, CREATE_LEN);
        assert_eq!(view(rec), Ok((1_000, rec.as_ptr() as usize)));
        let exit = GoroutineExit {
            kind: EVENT_EXIT,
            pid: 42,
            ktime_ns: 2_000,
            goid: 99,
        };
        let buf = placed(&exit, 0);
        let rec = bytes(&buf, 0, EXIT_LEN);
        assert_eq!(view(rec), Ok((2_000, rec.as_ptr() as usize)));
        // Read as the creation's shape, with the creation fields zero.
        assert_eq!(
            exit.widen(),
            GoroutineEvent {
                kind: EVENT_EXIT,
                pid: 42,
                ktime_ns: 2_000,
                goid: 99,
                ..Default::default()
            }
        );
        // Ring records are always 8-aligned: anything else is malformed.
        assert_eq!(view(bytes(&placed(&ev, 4), 4, CREATE_LEN)), Err(Malformed));
    }

    #[test]
    fn hands_on_in_time_order_and_sets_the_newer_ones_apart() {
        // Ring 0 then ring 1 as read: goroutine 2's exit (ring 0) was read
        // before its creation (ring 1); the last came after the cutoff.
        let mut order = vec![(10, 1), (30, 2), (40, 3), (20, 4), (100, 5)];
        let mut seen = Vec::new();
        assert_eq!(
            hand_on(&mut order, 100, |a, ready| seen.push((a, ready))),
            4
        );
        assert_eq!(
            seen,
            [(1, true), (4, true), (2, true), (3, true), (5, false)]
        );
        assert!(order.is_empty());
        // Equal times keep the order they were read in.
        let mut order = vec![(7, 1), (7, 2), (5, 3), (7, 4)];
        seen.clear();
        assert_eq!(hand_on(&mut order, u64::MAX, |a, r| seen.push((a, r))), 4);
        assert_eq!(seen, [(3, true), (1, true), (2, true), (4, true)]);
    }

    #[test]
    fn rejects_short_and_unknown_entries() {
        let ev = GoroutineEvent {
            kind: EVENT_CREATE,
            ..Default::default()
        };
        // A creation as long as an exit is cut short.
        assert_eq!(view(bytes(&placed(&ev, 0), 0, EXIT_LEN)), Err(Malformed));
        assert_eq!(
            view(bytes(&placed(&ev, 0), 0, CREATE_LEN - 8)),
            Err(Malformed)
        );
        let exit = GoroutineExit {
            kind: EVENT_EXIT,
            ..Default::default()
        };
        assert_eq!(
            view(bytes(&placed(&exit, 0), 0, EXIT_LEN - 8)),
            Err(Malformed)
        );
        let ev = GoroutineEvent {
            kind: 9,
            ..Default::default()
        };
        assert_eq!(view(bytes(&placed(&ev, 0), 0, CREATE_LEN)), Err(Malformed));
    }
}
