//! The request to stop the pipeline: a flag, and an eventfd the loop
//! waits on with its ring buffers, so it stops at once even when it sleeps
//! until the next housekeeping (aggregate mode has no events to drain).

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
};

pub struct Stop {
    requested: AtomicBool,
    wake: OwnedFd,
}

impl Stop {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd has no memory preconditions; the fd is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Stop {
            requested: AtomicBool::new(false),
            // SAFETY: a new fd, owned from here on.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Asks the loop to stop and wakes it.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Relaxed);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd; a full
        // counter (impossible here) would only mean it is awake already.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// Readable once a stop was requested.
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_sets_the_flag_and_makes_the_fd_readable() {
        let stop = Stop::new().unwrap();
        let mut pfd = libc::pollfd {
            fd: stop.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 0);
        assert!(!stop.requested());
        stop.request();
        assert!(stop.requested());
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 1);
    }
}
