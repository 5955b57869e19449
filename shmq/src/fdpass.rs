//! File descriptors handed from one process to another: `SCM_RIGHTS` over a Unix socket. (The
//! descriptors systemd passes at start, `LISTEN_FDS` / `LISTEN_FDNAMES` for socket activation
//! and the file descriptor store, are taken once by `rt::activation`.)
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
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsFd;
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
}
