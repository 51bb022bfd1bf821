//! Reads goroutine events from the kernel ring buffer. The kernel wakes us
//! only when a lot is pending, so we also drain on a short timer.

use super::Error;
use agent_common::GoroutineEvent;
use aya::maps::{MapData, RingBuf};
use std::{os::fd::AsRawFd, time::Duration};

pub struct EventReader {
    ring: RingBuf<MapData>,
}

/// An entry that was not a `GoroutineEvent` (counted, never expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl EventReader {
    pub(super) fn new(map: aya::maps::Map) -> Result<Self, Error> {
        let ring = RingBuf::try_from(map).map_err(|e| Error::Map("EVENTS", e.to_string()))?;
        Ok(EventReader { ring })
    }

    /// The ring buffer's fd, to poll it together with others.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }

    /// Waits until the kernel signals data or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; EINTR and errors just end the wait early.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    }

    /// Calls `f` for each pending entry; returns how many were read.
    pub fn drain(&mut self, mut f: impl FnMut(Result<GoroutineEvent, Malformed>)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            n += 1;
            f(decode(&item));
        }
        n
    }
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
            tid: 43,
            _pad: 0,
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
    fn rejects_short_and_unknown_entries() {
        assert_eq!(decode(&[0u8; 8]), Err(Malformed));
        let ev = GoroutineEvent {
            kind: 9,
            ..Default::default()
        };
        assert_eq!(decode(&bytes(&ev)), Err(Malformed));
    }
}
