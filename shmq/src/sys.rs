//! OS calls nix lacks: pidfd, process start times.
//!
//! STUB: the API below is fixed; the implementation lands with issue 3 (shmq 2/2).
#![allow(missing_docs, dead_code, unused_variables)]

use std::io;
use std::os::fd::OwnedFd;

/// A process identity that survives pid reuse: pid + start time (clock ticks since boot,
/// `/proc/PID/stat` field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId {
    pub pid: u32,
    pub start_time: u64,
}

/// What we know about a registered process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Running, same start time.
    Alive,
    /// No such pid (or a zombie).
    Dead,
    /// The pid now belongs to another process (start time differs).
    Replaced,
}

impl ProcId {
    /// This process.
    pub fn current() -> Self {
        todo!("issue 3")
    }
    /// Reads /proc/PID/stat; Err if the process does not exist.
    pub fn of(pid: u32) -> io::Result<Self> {
        todo!("issue 3")
    }
    /// Alive, dead or replaced.
    pub fn liveness(&self) -> Liveness {
        todo!("issue 3")
    }
    /// A pidfd for this process (readable in epoll when it exits), checked against the start
    /// time after opening so a reused pid is refused (Err with ESRCH).
    pub fn pidfd(&self) -> io::Result<OwnedFd> {
        todo!("issue 3")
    }
}
