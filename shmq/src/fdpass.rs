//! File descriptors handed from one process to another: `SCM_RIGHTS` over a Unix socket, and
//! the descriptors systemd passes at start (`LISTEN_FDS` / `LISTEN_FDNAMES`: socket activation
//! and the file descriptor store).
//!
//! Used by io_conn's connection handover (`io_conn::handover`): a leaving io_conn sends its
//! sockets and a sealed record to its successor, or stores them in systemd's fd store, which
//! gives them back to the next start in `LISTEN_FDS`. The `unsafe` of turning a received raw
//! descriptor into an owned one lives here, in one small module; everything above works with
//! [`OwnedFd`].
//!
//! # Ownership
//!
//! * [`recv_with_fds`] owns every descriptor the kernel installed for the message (received
//!   with `MSG_CMSG_CLOEXEC`), also when the message turns out malformed: they are closed with
//!   the returned values, never leaked.
//! * [`take_listen_fds`] takes descriptors 3.. once per process (a second call returns an empty
//!   list), so no descriptor is ever owned twice. Socket activation and the fd store arrive in
//!   the same variables: callers split the list by name.
//!
//! # Example
//!
//! ```
//! use std::os::fd::AsFd;
//! use std::os::unix::net::UnixStream;
//!
//! let (a, b) = UnixStream::pair()?;
//! let file = std::fs::File::open("/dev/null")?;
//! shmq::fdpass::send_with_fds(&a, b"hi", &[file.as_fd()])?;
//! let mut buf = [0u8; 8];
//! let (n, fds) = shmq::fdpass::recv_with_fds(&b, &mut buf, 4)?;
//! assert_eq!((&buf[..n], fds.len()), (&b"hi"[..], 1));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Most descriptors in one `SCM_RIGHTS` message (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS_PER_MESSAGE: usize = 250;

/// Sends `data` (at least one byte) with `fds` attached, in one `sendmsg`. On a stream socket
/// the descriptors travel with the first byte of `data`.
pub fn send_with_fds(sock: &impl AsRawFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if data.is_empty() || fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad fd message"));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let mut off = 0;
    while off < data.len() {
        let iov = [IoSlice::new(&data[off..])];
        // Descriptors ride only with the first chunk.
        let c = if off == 0 { cmsgs } else { &[] };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, c, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => off += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and the descriptors that came with them (at most
/// `max_fds`; more, or a truncated control message, is `InvalidData`, and every descriptor that
/// did arrive is closed). Returns the bytes read (0 = the peer closed) and the descriptors, close
/// on exec.
pub fn recv_with_fds(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let max_fds = max_fds.min(MAX_FDS_PER_MESSAGE);
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel installed `fd` in this process for this message just now
                // (SCM_RIGHTS); nothing else in the process knows it, so this is its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > max_fds {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many descriptors"));
    }
    Ok((msg.bytes, fds))
}

/// Set once [`take_listen_fds`] has taken the descriptors. A mutex, not an atomic: this crate's
/// atomics come from `crate::sync` (loom in model tests), which cannot be a `static`; this runs
/// once per process.
static TAKEN: Mutex<bool> = Mutex::new(false);

/// The descriptors systemd passed this process (`LISTEN_PID` = our pid, `LISTEN_FDS` = n,
/// descriptors 3..3+n, `LISTEN_FDNAMES` = their names separated by `:`; a missing name is
/// `""`), each made close-on-exec. Empty without them (or when `LISTEN_PID` names another
/// process: inherited variables are not ours). Taken once: a second call returns an empty list.
pub fn take_listen_fds() -> io::Result<Vec<(String, OwnedFd)>> {
    take_listen_fds_from(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::env::var("LISTEN_FDNAMES").ok().as_deref(),
    )
}

fn take_listen_fds_from(
    pid: Option<&str>,
    count: Option<&str>,
    names: Option<&str>,
) -> io::Result<Vec<(String, OwnedFd)>> {
    let n = parse_listen_env(pid, count, std::process::id())?;
    if n == 0 {
        return Ok(Vec::new());
    }
    {
        let mut taken = TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if std::mem::replace(&mut *taken, true) {
            return Ok(Vec::new());
        }
    }
    let mut names = names.map(|s| s.split(':').map(str::to_owned).collect::<Vec<_>>());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let raw = 3 + i as RawFd;
        // SAFETY: systemd passed descriptors 3..3+n to this process (LISTEN_PID is our pid, so
        // the variables were set for us, not inherited); nothing in the process has taken them
        // before (the TAKEN flag above makes this the only taker), so each gets one owner.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFD)?;
        let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
        fcntl(fd.as_fd(), FcntlArg::F_SETFD(flags))?;
        let name = names.as_mut().and_then(|v| v.get_mut(i).map(std::mem::take));
        out.push((name.unwrap_or_default(), fd));
    }
    Ok(out)
}

/// How many descriptors `LISTEN_FDS` passes to process `me`: 0 without the variables or when
/// `LISTEN_PID` is another process; an unparsable value is `InvalidData`.
fn parse_listen_env(pid: Option<&str>, count: Option<&str>, me: u32) -> io::Result<usize> {
    let (Some(pid), Some(count)) = (pid, count) else { return Ok(0) };
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("invalid {what}"));
    let pid: u32 = pid.trim().parse().map_err(|_| bad("LISTEN_PID"))?;
    if pid != me {
        return Ok(0);
    }
    let n: usize = count.trim().parse().map_err(|_| bad("LISTEN_FDS"))?;
    // Far beyond any FileDescriptorStoreMax we set, and below RawFd's range.
    if n > 1 << 20 {
        return Err(bad("LISTEN_FDS"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn descriptors_travel_with_their_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, mut y) = UnixStream::pair().unwrap();
        send_with_fds(&a, b"one", &[x.as_fd()]).unwrap();
        drop(x);
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf, 4).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"one"[..], 1));
        // The received descriptor is the same socket: writing to it reaches `y`.
        let mut got = UnixStream::from(fds.into_iter().next().unwrap());
        std::io::Write::write_all(&mut got, b"z").unwrap();
        let mut one = [0u8; 1];
        y.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"z");
    }

    #[test]
    fn more_descriptors_than_allowed_are_refused_and_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        send_with_fds(&a, b"x", &[f.as_fd(), f.as_fd(), f.as_fd()]).unwrap();
        let mut buf = [0u8; 4];
        let e = recv_with_fds(&b, &mut buf, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(send_with_fds(&a, b"", &[]).is_err(), "a message has at least one byte");
    }

    #[test]
    fn listen_env_is_ours_only_when_listen_pid_is_us() {
        assert_eq!(parse_listen_env(None, Some("3"), 7).unwrap(), 0);
        assert_eq!(parse_listen_env(Some("8"), Some("3"), 7).unwrap(), 0, "inherited");
        assert_eq!(parse_listen_env(Some("7"), Some("3"), 7).unwrap(), 3);
        assert!(parse_listen_env(Some("7"), Some("x"), 7).is_err());
        assert!(parse_listen_env(Some("q"), Some("1"), 7).is_err());
        assert!(parse_listen_env(Some("7"), Some("99999999"), 7).is_err());
        // Not ours: nothing is taken (so the once-flag is untouched by this test).
        assert!(take_listen_fds_from(Some("1"), Some("2"), Some("a:b")).unwrap().is_empty());
    }
}
