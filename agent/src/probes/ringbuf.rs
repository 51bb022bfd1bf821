//! Reads the kernel's ring buffers (goroutine events, process events)
//! through their shared mapping, a batch at a time: records are read up to
//! the producer position, then the consumer position is published once
//! (aya's `RingBuf` publishes it per record). Goroutine events come from
//! one ring per CPU and are merged here in kernel time order.
//!
//! The kernel wakes us only when a lot is pending, so the pipeline also
//! drains on a short timer.

use super::{Error, mmap::Mapping};
use agent_common::GoroutineEvent;
use aya::maps::MapData;
use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

/// The record header's flags (kernel/bpf/ringbuf.c).
const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR_BYTES: u64 = 8;

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
        let data = self.producer.ptr().as_ptr().wrapping_add(self.page);
        let mut n = 0;
        loop {
            let end = self.producer_pos().load(Ordering::Acquire);
            let start = self.pos;
            while self.pos < end {
                let at = (self.pos & self.mask) as usize;
                // SAFETY: at <= mask, and the header is inside the first
                // copy of the data area; the kernel writes `len` last,
                // with release order, when it commits.
                let hdr = unsafe { &*data.add(at).cast::<AtomicU32>() }.load(Ordering::Acquire);
                if hdr & BUSY_BIT != 0 {
                    break;
                }
                let len = hdr & !(BUSY_BIT | DISCARD_BIT);
                if hdr & DISCARD_BIT == 0 {
                    // SAFETY: a record is at most the data area's size, and
                    // the second copy follows the first, so the record's
                    // bytes are contiguous and mapped.
                    let rec = unsafe {
                        std::slice::from_raw_parts(data.add(at + HDR_BYTES as usize), len as usize)
                    };
                    f(rec);
                    n += 1;
                }
                self.pos += (u64::from(len) + HDR_BYTES).next_multiple_of(8);
            }
            if self.pos == start {
                return n;
            }
            // Hand the batch's space back to the kernel.
            self.consumer_pos().store(self.pos, Ordering::Release);
        }
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
/// Newer records wait for the next drain.
pub struct EventReader {
    rings: Vec<Ring>,
    /// Read from the rings, not yet handed on.
    pending: Vec<GoroutineEvent>,
}

/// An entry that was not a `GoroutineEvent` (counted, never expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl EventReader {
    pub(super) fn new(rings: Vec<Ring>) -> Self {
        EventReader {
            rings,
            pending: Vec::new(),
        }
    }

    /// The rings' fds, to poll them together with others.
    pub fn fds(&self) -> impl Iterator<Item = std::os::fd::RawFd> + '_ {
        self.rings.iter().map(Ring::fd)
    }

    /// Calls `f` for each event older than now (every event, if `all`), in
    /// kernel time order; returns how many events it passed and how many
    /// malformed entries it skipped.
    pub fn drain(&mut self, all: bool, f: impl FnMut(&GoroutineEvent)) -> (usize, usize) {
        let cutoff = if all { u64::MAX } else { monotonic_ns() };
        let mut malformed = 0;
        for r in &mut self.rings {
            r.drain(|rec| match decode(rec) {
                Ok(ev) => self.pending.push(ev),
                Err(Malformed) => malformed += 1,
            });
        }
        (hand_on(&mut self.pending, cutoff, f), malformed)
    }
}

/// Calls `f` with the events of `pending` older than `cutoff`, oldest
/// first, and keeps the others; returns how many it passed.
fn hand_on(
    pending: &mut Vec<GoroutineEvent>,
    cutoff: u64,
    mut f: impl FnMut(&GoroutineEvent),
) -> usize {
    // Each ring's records are in time order already: the sort merges runs.
    pending.sort_by_key(|e| e.ktime_ns);
    let ready = pending.partition_point(|e| e.ktime_ns < cutoff);
    pending.drain(..ready).for_each(|e| f(&e));
    // A burst's worth of capacity is not kept for good.
    if pending.capacity() > 4 * PENDING_KEPT && pending.len() < PENDING_KEPT {
        pending.shrink_to(PENDING_KEPT);
    }
    ready
}

/// Events' room kept between drains (64 KiB).
const PENDING_KEPT: usize = 1024;

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

/// Decodes one ring buffer entry.
pub fn decode(bytes: &[u8]) -> Result<GoroutineEvent, Malformed> {
    if bytes.len() < std::mem::size_of::<GoroutineEvent>() {
        return Err(Malformed);
    }
    // SAFETY: length checked; GoroutineEvent is repr(C) plain data and every
    // bit pattern is valid; read_unaligned tolerates any alignment.
    let ev = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<GoroutineEvent>()) };
    match ev.kind {
        agent_common::EVENT_CREATE | agent_common::EVENT_EXIT => Ok(ev),
        _ => Err(Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{EVENT_CREATE, EVENT_EXIT};

    fn bytes(ev: &GoroutineEvent) -> Vec<u8> {
        let p = (ev as *const GoroutineEvent).cast::<u8>();
        unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<GoroutineEvent>()) }.to_vec()
    }

    #[test]
    fn decodes_events_at_any_alignment() {
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
        let mut b = vec![0u8];
        b.extend(bytes(&ev));
        assert_eq!(decode(&b[1..]), Ok(ev));
        let exit = GoroutineEvent {
            kind: EVENT_EXIT,
            ..ev
        };
        assert_eq!(decode(&bytes(&exit)), Ok(exit));
    }

    #[test]
    fn hands_on_events_in_time_order_and_keeps_the_newer_ones() {
        let ev = |kind, goid, ktime_ns| GoroutineEvent {
            kind,
            goid,
            ktime_ns,
            ..Default::default()
        };
        // Ring 0 then ring 1 as read: goroutine 2's exit (ring 0) was read
        // before its creation (ring 1); goroutine 3's creation came after
        // the cutoff.
        let mut pending = vec![
            ev(EVENT_CREATE, 1, 10),
            ev(EVENT_EXIT, 2, 30),
            ev(EVENT_EXIT, 1, 40),
            ev(EVENT_CREATE, 2, 20),
            ev(EVENT_CREATE, 3, 100),
        ];
        let mut seen = Vec::new();
        assert_eq!(
            hand_on(&mut pending, 100, |e| seen.push((e.kind, e.goid))),
            4
        );
        assert_eq!(
            seen,
            [
                (EVENT_CREATE, 1),
                (EVENT_CREATE, 2),
                (EVENT_EXIT, 2),
                (EVENT_EXIT, 1)
            ]
        );
        assert_eq!(pending, [ev(EVENT_CREATE, 3, 100)]);
        pending.push(ev(EVENT_EXIT, 3, 150));
        seen.clear();
        assert_eq!(
            hand_on(&mut pending, u64::MAX, |e| seen.push((e.kind, e.goid))),
            2
        );
        assert_eq!(seen, [(EVENT_CREATE, 3), (EVENT_EXIT, 3)]);
        assert!(pending.is_empty());
    }

    #[test]
    fn rejects_short_and_unknown_entries() {
        assert_eq!(decode(&[0u8; 8]), Err(Malformed));
        let ev = GoroutineEvent {
            kind: 9,
            ..Default::default()
        };
        assert_eq!(decode(&bytes(&ev)), Err(Malformed));
    }
}
