//! The FIFO doorbell that wakes a sleeping consumer.
//!
//! One FIFO per ring, in the private runtime directory. Both the producer and the consumer open it
//! `O_RDWR | O_NONBLOCK` (Linux semantics: such an open never blocks and never fails with ENXIO,
//! and a write never raises SIGPIPE because a reader always exists — ourselves). The consumer puts
//! the fd in its epoll set; the producer writes one byte only when it swapped `armed` from 1 to 0
//! (see [`crate::ring::publish_tail`]). A write that fails with EAGAIN means the FIFO is full of
//! earlier bytes: a wake-up is pending already.
//!
//! Because both ends are held O_RDWR, a FIFO never reports a dead peer (no EOF, no EPIPE):
//! liveness comes from pidfds (see the `sys` module), not from here.
//!
//! # Example
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("shmq-doc-db-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("ring.fifo");
//! let consumer_end = shmq::doorbell::Doorbell::create(&path, 0o600).unwrap();
//! let producer_end = shmq::doorbell::Doorbell::open(&path).unwrap();
//! assert!(producer_end.ring().unwrap());
//! assert_eq!(consumer_end.drain().unwrap(), 1);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

/// One open end of a doorbell FIFO.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Doorbell {
    /// Creates the FIFO at `path` with `mode` (e.g. 0o600) and opens it. Fails if it exists.
    pub fn create(path: &Path, mode: u32) -> io::Result<Self> {
        nix::unistd::mkfifo(path, Mode::from_bits_truncate(mode)).map_err(io_err)?;
        // mkfifo honours the umask; make the mode exactly what was asked.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Self::open(path)
    }

    /// Opens an existing FIFO `O_RDWR | O_NONBLOCK | O_CLOEXEC`. Fails if `path` is not a FIFO.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = open(path, OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(io_err)?;
        let st = nix::sys::stat::fstat(&fd).map_err(io_err)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a FIFO", path.display()),
            ));
        }
        Ok(Self { fd })
    }

    /// Wraps an fd the caller opened `O_RDWR | O_NONBLOCK` on a FIFO (or a pipe, in tests).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Writes one byte. `Ok(true)`: written; `Ok(false)`: the FIFO is full (already rung).
    pub fn ring(&self) -> io::Result<bool> {
        loop {
            match nix::unistd::write(&self.fd, &[1u8]) {
                Ok(_) => return Ok(true),
                Err(Errno::EAGAIN) => return Ok(false),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(io_err(e)),
            }
        }
    }

    /// Reads every pending byte; returns how many there were.
    pub fn drain(&self) -> io::Result<usize> {
        let mut buf = [0u8; 256];
        let mut n = 0;
        loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => return Ok(n),
                Ok(k) => {
                    n += k;
                    if k < buf.len() {
                        return Ok(n);
                    }
                }
                Err(Errno::EAGAIN) => return Ok(n),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(io_err(e)),
            }
        }
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Doorbell {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("shmq-db-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn ring_drain_and_full_fifo_is_already_rung() {
        let d = dir("full");
        let p = d.join("f");
        let a = Doorbell::create(&p, 0o600).unwrap();
        let b = Doorbell::open(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(a.drain().unwrap(), 0);
        let mut rung = 0;
        while b.ring().unwrap() {
            rung += 1;
            assert!(rung < 10_000_000, "FIFO never filled");
        }
        assert!(!b.ring().unwrap(), "full FIFO reports already rung");
        assert_eq!(a.drain().unwrap(), rung);
        assert_eq!(a.drain().unwrap(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_rejects_non_fifo_and_create_rejects_existing() {
        let d = dir("nonfifo");
        let p = d.join("plain");
        std::fs::write(&p, b"x").unwrap();
        assert!(Doorbell::open(&p).is_err());
        assert!(Doorbell::create(&p, 0o600).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
