//! An in-process shutdown request: an eventfd a loop keeps in its epoll set, and handles that
//! any thread can trigger.
//!
//! `io_conn::run` takes a [`Shutdown`] in its options (tests and embedders stop it with the
//! handle; the binary uses signals instead); md's `Control` holds one next to its signalfd. What a trigger means is the loop's business: io_conn treats it like
//! SIGTERM (stop accepting, drain, exit; a second trigger exits at once), md finishes its batch
//! and hands over its output.
//!
//! The [`Shutdown`] belongs to the loop's thread; [`ShutdownHandle`]s are `Clone + Send + Sync`.
//! Triggers do not queue up: the eventfd counts them, and one [`Shutdown::read`] consumes all.
//!
//! # Example
//!
//! ```
//! let sut = rt::Shutdown::new()?;
//! let handle = sut.handle();
//! assert!(!sut.read(), "nothing pending yet");
//! std::thread::spawn(move || handle.trigger()).join().expect("trigger thread");
//! assert!(sut.read(), "the trigger is pending");
//! assert!(!sut.read(), "and consumed");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};

/// The loop's side: a nonblocking, close-on-exec eventfd to put in its epoll set
/// ([`Self::as_fd`]), readable while a trigger is pending.
#[derive(Debug)]
pub struct Shutdown {
    fd: Arc<EventFd>,
}

impl Shutdown {
    /// A new, untriggered shutdown.
    pub fn new() -> io::Result<Self> {
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Self { fd: Arc::new(fd) })
    }

    /// A handle that triggers it from any thread.
    pub fn handle(&self) -> ShutdownHandle {
        ShutdownHandle { fd: Arc::clone(&self.fd) }
    }

    /// Consumes the pending triggers (nonblocking); true if there was at least one. Call it when
    /// epoll reports [`Self::as_fd`] readable, or to poll.
    pub fn read(&self) -> bool {
        // EAGAIN: nothing pending.
        self.fd.read().is_ok()
    }

    /// The eventfd, for the loop's epoll set (readable while a trigger is pending).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Triggers a [`Shutdown`]; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    fd: Arc<EventFd>,
}

impl ShutdownHandle {
    /// Asks the loop to shut down (what that means is the loop's: see the module docs).
    pub fn trigger(&self) {
        // EAGAIN (the counter is saturated) means a request is pending already.
        let _ = self.fd.write(1);
    }
}
