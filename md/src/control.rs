//! How an md runner is told to stop: SIGTERM/SIGINT through a signalfd (the binary), or a
//! [`ShutdownHandle`] (tests, embedders). Built on `rt`'s [`Shutdown`] eventfd and
//! [`rt::signals`], which io_conn uses too.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use rt::{Shutdown, ShutdownHandle};

use crate::reload::{ReloadOutcome, Reloader};

/// The signals md handles through its signalfd: SIGTERM and SIGINT stop it, SIGHUP reloads the
/// config (with a [`crate::reload::Reloader`], see [`Control::with_reload`]).
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Blocks [`handled_signals`] in the calling thread. Call first thing in `main`, before any
/// thread starts, so every thread inherits the mask and the signals queue for the signalfd.
pub fn block_signals() -> io::Result<SigSet> {
    let set = handled_signals();
    rt::signals::block(&set)?;
    Ok(set)
}

/// The runner's view of shutdown requests: a [`Shutdown`] eventfd for [`ShutdownHandle`]s (a
/// trigger makes the runner finish its batch, hand over the output it can and return
/// [`crate::Exit::Shutdown`]) and optionally a signalfd. Used by one thread (the runner's).
#[derive(Debug)]
pub struct Control {
    shutdown: Shutdown,
    signals: Option<SignalFd>,
    requested: Cell<bool>,
    /// SIGHUP arrived and the runner has not reloaded yet.
    reload_requested: Cell<bool>,
    /// What a SIGHUP reloads; None: SIGHUP is logged and ignored.
    reloader: Option<RefCell<Reloader>>,
}

impl Control {
    /// A control without signals, and the handle that triggers it.
    pub fn new() -> io::Result<(Self, ShutdownHandle)> {
        let shutdown = Shutdown::new()?;
        let handle = shutdown.handle();
        let c = Self {
            shutdown,
            signals: None,
            requested: Cell::new(false),
            reload_requested: Cell::new(false),
            reloader: None,
        };
        Ok((c, handle))
    }

    /// Adds a signalfd for `mask` (which the caller blocked with [`block_signals`]).
    pub fn with_signals(mut self, mask: &SigSet) -> io::Result<Self> {
        self.signals = Some(rt::signals::signalfd(mask)?);
        Ok(self)
    }

    /// Makes SIGHUP reload the config with `reloader` (the runner applies it at its next pass).
    pub fn with_reload(mut self, reloader: Reloader) -> Self {
        self.reloader = Some(RefCell::new(reloader));
        self
    }

    /// A SIGHUP asked for a reload (cleared by this call).
    pub(crate) fn take_reload(&self) -> bool {
        self.reload_requested.replace(false)
    }

    /// Reloads (see [`Reloader::reload`]; `accept` is the service's `configure`); None without
    /// a reloader.
    pub(crate) fn reload(
        &self,
        accept: impl FnOnce(&config::Config) -> Result<(), crate::SettingError>,
    ) -> Option<ReloadOutcome> {
        self.reloader.as_ref().map(|r| r.borrow_mut().reload(accept))
    }

    /// True once shutdown was requested (sticky). Reads pending signals/triggers first.
    pub fn shutdown_requested(&self) -> bool {
        self.poll_fds();
        self.requested.get()
    }

    /// The sticky flag alone, without reading the fds (the runner reads them when epoll says so).
    pub(crate) fn requested(&self) -> bool {
        self.requested.get()
    }

    pub(crate) fn shutdown_fd(&self) -> BorrowedFd<'_> {
        self.shutdown.as_fd()
    }

    pub(crate) fn signal_fd(&self) -> Option<BorrowedFd<'_>> {
        self.signals.as_ref().map(|s| s.as_fd())
    }

    /// Reads every pending trigger and signal (non-blocking) and updates the sticky flag.
    pub(crate) fn poll_fds(&self) {
        if self.shutdown.read() {
            if !self.requested.get() {
                log::info!("shutdown requested");
            }
            self.requested.set(true);
        }
        if let Some(sfd) = &self.signals {
            while let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(sig @ (Signal::SIGTERM | Signal::SIGINT)) => {
                        log::info!("{sig} received: finishing and exiting");
                        self.requested.set(true);
                    }
                    Ok(Signal::SIGHUP) if self.reloader.is_some() => {
                        self.reload_requested.set(true);
                    }
                    _ => log::info!("signal {} ignored", info.ssi_signo),
                }
            }
        }
    }

    /// Sleeps up to `timeout`, waking early on a shutdown request. Returns
    /// [`Self::shutdown_requested`]. For backoff between attach attempts.
    pub fn sleep(&self, timeout: Duration) -> bool {
        if self.shutdown_requested() {
            return true;
        }
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = vec![PollFd::new(self.shutdown.as_fd(), PollFlags::POLLIN)];
        if let Some(s) = &self.signals {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::from(ms));
        self.shutdown_requested()
    }
}
