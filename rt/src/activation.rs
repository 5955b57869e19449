//! systemd socket activation: the listening sockets the service manager passed in (`LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`; `sd_listen_fds(3)`).
//!
//! io_conn calls [`take_listen_fds`] once at start, before any thread exists. The protocol: fds
//! `3 .. 3 + LISTEN_FDS` are sockets meant for the process whose pid is `LISTEN_PID` (a child
//! that inherited the variables ignores them), each named by its `FileDescriptorName=` in
//! `LISTEN_FDNAMES` (colon-separated). The variables are removed afterwards, so a child (an md
//! started by `--spawn-md`) does not take them for its own.
//!
//! The only `unsafe` of this crate is here: adopting the inherited descriptors as [`OwnedFd`]s
//! and removing the variables, each with its reason.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// One socket the service manager passed in.
#[derive(Debug)]
pub struct Inherited {
    /// The descriptor (close-on-exec set).
    pub fd: OwnedFd,
    /// Its raw number as passed (3, 4, ...), for messages.
    pub raw: RawFd,
    /// Its `FileDescriptorName=` (systemd's default is the socket unit's name).
    pub name: String,
}

/// Set by the one call of [`take_listen_fds`] that adopts the descriptors.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The sockets passed by systemd to this process, or an empty list without socket activation
/// (no `LISTEN_FDS`, or a `LISTEN_PID` that is not ours: the variables were inherited from a
/// parent that was activated). Removes the three variables when this process is the only
/// thread (it checks `/proc/self/task`; with other threads it leaves them, and warns).
///
/// Adopts the descriptors only once per process: a second call returns an empty list.
pub fn take_listen_fds() -> io::Result<Vec<Inherited>> {
    let for_us = std::env::var_os("LISTEN_PID")
        .and_then(|p| p.to_str().and_then(|p| p.parse::<u32>().ok()))
        .is_some_and(|pid| pid == std::process::id());
    if std::env::var_os("LISTEN_FDS").is_some() && !for_us {
        log::warn!(
            "LISTEN_FDS is set but LISTEN_PID is not this process ({}): ignoring the sockets \
             (the variables were meant for another process)",
            std::process::id()
        );
    }
    let result = if for_us { adopt() } else { Ok(Vec::new()) };
    unset_env();
    result
}

fn adopt() -> io::Result<Vec<Inherited>> {
    // sd-notify checks LISTEN_PID again, parses LISTEN_FDS and LISTEN_FDNAMES, and sets
    // FD_CLOEXEC on each descriptor (so neither md children nor an exec see them).
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()?.collect();
    // Relaxed is enough: this flag only makes a second call in the same process return nothing
    // (nothing else is published through it); the swap itself is atomic.
    if TAKEN.swap(true, Ordering::Relaxed) {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(fds.len());
    for (raw, name) in fds {
        // SAFETY: `raw` is one of 3 .. 3 + LISTEN_FDS, which the service manager opened for
        // this process (LISTEN_PID is our pid, checked above and by sd-notify, whose
        // `fd_cloexec` also made sure each one is an open descriptor). Nothing else in this
        // process owns them: they were inherited across exec, before any code of ours opened a
        // file, and `TAKEN` makes sure they are adopted once, so each `OwnedFd` is the only
        // owner and closes the descriptor exactly once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        out.push(Inherited { fd, raw, name });
    }
    Ok(out)
}

/// Removes `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` if this process has one thread.
fn unset_env() {
    let vars = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];
    if vars.iter().all(|v| std::env::var_os(v).is_none()) {
        return;
    }
    if !single_threaded() {
        log::warn!("not removing LISTEN_* from the environment: other threads are running");
        return;
    }
    for v in vars {
        // SAFETY: `remove_var` is unsound only while another thread reads or writes the
        // environment; `single_threaded` just counted one task in /proc/self/task, and only
        // this thread could start another one.
        unsafe { std::env::remove_var(v) };
    }
}

/// Whether this process has exactly one thread (this one).
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_without_activation() {
        // The test harness runs tests on threads: the variables are left alone then, and none
        // are set here anyway.
        if std::env::var_os("LISTEN_FDS").is_none() {
            assert!(take_listen_fds().unwrap().is_empty());
        }
    }
}
