//! OS calls nix lacks: process identity that survives pid reuse, and pidfds.
//!
//! Used by the queue pair code (is the creator of a stale segment still alive?), by io_conn (an
//! md's pidfd in its epoll set) and by md (io_conn's pidfd). A [`ProcId`] is a pid plus the
//! process's start time in clock ticks since boot (`/proc/PID/stat` field 22): a pid can be
//! reused, a (pid, start time) pair cannot (within one boot). Every check that a pid still means
//! the same process compares the start time.
//!
//! The only `unsafe` here is the `pidfd_open` syscall and `poll` on a pidfd.
//!
//! # Example
//!
//! ```
//! use shmq::sys::{Liveness, ProcId};
//! let me = ProcId::current();
//! assert_eq!(me.liveness(), Liveness::Alive);
//! let fd = me.pidfd().unwrap();
//! assert!(!shmq::sys::pidfd_has_exited(&fd).unwrap());
//! ```

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// Calls a libc function that returns -1 on error and sets `errno`; yields `io::Result` of the
/// return value (mio's macro).
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: delegated to the macro's caller, whose own SAFETY comment covers the arguments.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 { Err(std::io::Error::last_os_error()) } else { Ok(res) }
    }};
}
pub(crate) use syscall;

/// A process identity that survives pid reuse: pid + start time (clock ticks since boot,
/// `/proc/PID/stat` field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks since boot. 0 means unknown (no /proc): then only the pid is
    /// compared.
    pub start_time: u64,
}

/// What we know about a registered process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Running, same start time.
    Alive,
    /// No such pid (or a zombie: it has exited and only waits to be reaped).
    Dead,
    /// The pid now belongs to another process (start time differs).
    Replaced,
}

/// State letter and start time of a process, from `/proc/PID/stat`.
fn read_stat(pid: u32) -> io::Result<(u8, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&s).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse /proc/{pid}/stat"))
    })
}

/// Parses `pid (comm) S ... starttime ...`. `comm` may contain spaces and parentheses, so fields
/// are counted from the *last* `)`: after it come field 3 (state) … field 22 (starttime).
fn parse_stat(s: &str) -> Option<(u8, u64)> {
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_ascii_whitespace();
    let state = *it.next()?.as_bytes().first()?;
    // Fields 4..=21 are skipped: 18 of them; the next one is field 22.
    let start = it.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl ProcId {
    /// This process (computed once, then cached).
    pub fn current() -> Self {
        static ME: OnceLock<ProcId> = OnceLock::new();
        *ME.get_or_init(|| {
            let pid = std::process::id();
            match read_stat(pid) {
                Ok((_, start_time)) => Self { pid, start_time },
                Err(e) => {
                    log::warn!("cannot read /proc/{pid}/stat ({e}); start time unknown");
                    Self { pid, start_time: 0 }
                }
            }
        })
    }

    /// Reads /proc/PID/stat; Err (`NotFound`) if the process does not exist.
    pub fn of(pid: u32) -> io::Result<Self> {
        let (_, start_time) = read_stat(pid)?;
        Ok(Self { pid, start_time })
    }

    /// Alive, dead or replaced. A zombie is dead. If `/proc/PID/stat` cannot be read for another
    /// reason than absence (e.g. `hidepid`), but the pid exists (`kill(pid, 0)`), it counts as
    /// alive: refusing to take over a segment is the safe mistake.
    pub fn liveness(&self) -> Liveness {
        if self.pid == 0 {
            return Liveness::Dead;
        }
        match read_stat(self.pid) {
            Ok((b'Z' | b'X' | b'x', _)) => Liveness::Dead,
            Ok((_, st)) if self.start_time == 0 || st == self.start_time => Liveness::Alive,
            Ok(_) => Liveness::Replaced,
            // Gone (NotFound), or hidden from us: kill(pid, 0) tells which.
            Err(_) if pid_exists(self.pid) => Liveness::Alive,
            Err(_) => Liveness::Dead,
        }
    }

    /// A pidfd for this process (readable in epoll when it exits), checked against the start
    /// time after opening so a reused pid is refused (Err with ESRCH). The fd is close-on-exec.
    ///
    /// A zombie with the right start time gets its pidfd (which is readable at once).
    pub fn pidfd(&self) -> io::Result<OwnedFd> {
        let pid = libc::pid_t::try_from(self.pid)
            .map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        if pid <= 0 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: pidfd_open takes (pid_t, unsigned int flags) and returns a new fd or -1; no
        // pointers are passed. The raw fd is wrapped in an OwnedFd on the next line, before
        // anything can fail.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd returned by pidfd_open that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        // Re-check after opening: if the pid was reused before the open, the pidfd refers to the
        // new process and its start time differs. If the process is gone (reaped), we cannot
        // tell which process the fd refers to: refuse as well.
        match read_stat(self.pid) {
            Ok((_, st)) if self.start_time == 0 || st == self.start_time => Ok(fd),
            _ => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }
}

/// True if `pid` names an existing process (possibly another user's): `kill(pid, 0)`.
fn pid_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// True if the process behind `pidfd` has exited (the pidfd is readable). Never blocks.
pub fn pidfd_has_exited(pidfd: &impl AsFd) -> io::Result<bool> {
    let mut p = libc::pollfd { fd: pidfd.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: `p` is one valid, initialised pollfd that lives across the call; nfds = 1
        // matches; timeout 0 never blocks.
        let r = syscall!(poll(&mut p, 1, 0));
        match r {
            Ok(_) => return Ok(p.revents & (libc::POLLIN | libc::POLLHUP) != 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of [`ProcId::start_time`].
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_counts_from_last_paren() {
        let mut s = String::from("1234 (we ir) d) (x) S");
        for i in 4..=21 {
            s.push_str(&format!(" {i}"));
        }
        s.push_str(" 987654 23 24\n");
        assert_eq!(parse_stat(&s), Some((b'S', 987654)));
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn current_is_alive_and_a_different_start_is_replaced() {
        let me = ProcId::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_time > 0);
        assert_eq!(ProcId::of(me.pid).unwrap(), me);
        assert_eq!(me.liveness(), Liveness::Alive);
        let other = ProcId { start_time: me.start_time + 1, ..me };
        assert_eq!(other.liveness(), Liveness::Replaced);
        assert_eq!(other.pidfd().unwrap_err().raw_os_error(), Some(libc::ESRCH));
        let fd = me.pidfd().unwrap();
        assert!(!pidfd_has_exited(&fd).unwrap());
    }

    #[test]
    fn missing_pid_is_dead() {
        // pid_max is at most 2^22 on Linux.
        let gone = ProcId { pid: (1 << 22) + 17, start_time: 5 };
        assert_eq!(gone.liveness(), Liveness::Dead);
        assert!(ProcId::of(gone.pid).is_err());
        assert!(gone.pidfd().is_err());
        assert_eq!(ProcId { pid: 0, start_time: 0 }.liveness(), Liveness::Dead);
    }
}
