//! Signals as events: block a set in the calling thread, then read it from a signalfd in the
//! loop's epoll set.
//!
//! Both binaries call [`block`] first thing in `main`, before any thread or child exists, so
//! every later thread inherits the mask and the signals stay pending for the signalfd instead of
//! running a handler. The loop then makes a [`signalfd`] for the same set (io_conn in its server,
//! md in its `Control`) and reads it when epoll says so. Which signals and what they mean is each
//! binary's choice (`io_conn::handled_signals`, `md::handled_signals`).
//!
//! # Example
//!
//! ```no_run
//! use nix::sys::signal::{SigSet, Signal};
//!
//! let mut mask = SigSet::empty();
//! mask.add(Signal::SIGTERM);
//! mask.add(Signal::SIGINT);
//! rt::signals::block(&mask)?;
//! let sfd = rt::signals::signalfd(&mask)?; // add to epoll; on EPOLLIN:
//! while let Ok(Some(info)) = sfd.read_signal() {
//!     println!("signal {}", info.ssi_signo);
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;

use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Blocks `set` in the calling thread (`pthread_sigmask(SIG_BLOCK)`): its signals stay pending
/// until a signalfd reads them. Call it before any thread starts, so every thread inherits it.
pub fn block(set: &SigSet) -> io::Result<()> {
    set.thread_block().map_err(io::Error::from)
}

/// A nonblocking, close-on-exec signalfd for `set`, which the caller blocked with [`block`]
/// (a signal that is not blocked runs its default action and never reaches the signalfd).
/// `read_signal` returns `Ok(None)` once nothing is pending.
pub fn signalfd(set: &SigSet) -> io::Result<SignalFd> {
    SignalFd::with_flags(set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::{Signal, raise};

    use super::*;

    #[test]
    fn a_blocked_signal_arrives_through_the_signalfd() {
        // SIGUSR2 in this test's thread only: the mask is per thread, and nothing else here uses
        // SIGUSR2. raise() targets the calling thread, so the signal stays pending for it.
        let mut set = SigSet::empty();
        set.add(Signal::SIGUSR2);
        block(&set).expect("block");
        let sut = signalfd(&set).expect("signalfd");
        assert!(sut.read_signal().expect("read").is_none(), "nothing pending yet");
        raise(Signal::SIGUSR2).expect("raise");
        let info = sut.read_signal().expect("read").expect("the raised signal");
        assert_eq!(info.ssi_signo, Signal::SIGUSR2 as u32);
        assert!(sut.read_signal().expect("read").is_none(), "consumed");
    }
}
