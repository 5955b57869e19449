//! The POSIX backend: `shm_open` + `mmap` of a file under /dev/shm, and `munmap`.

use std::ffi::c_void;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags};
use nix::sys::stat::Mode;

use super::{
    Attach, Backend, Segment, SegmentId, euid, nix_err, populate_write, trusted_reader_owner,
};

/// # Safety
///
/// `ptr`/`len` must be a mapping made by `mmap` that nothing uses afterwards.
pub(super) unsafe fn munmap(ptr: *mut u8, len: usize) -> io::Result<()> {
    let Some(p) = NonNull::new(ptr.cast::<c_void>()) else { return Ok(()) };
    // SAFETY: delegated to caller (see # Safety).
    unsafe { nix::sys::mman::munmap(p, len) }.map_err(nix_err)
}

pub(super) fn posix_create(n: &str, len: NonZeroUsize, mode: u32) -> io::Result<Segment> {
    let path = format!("/{n}");
    let fd = nix::sys::mman::shm_open(
        path.as_str(),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
        Mode::from_bits_truncate(mode as libc::mode_t),
    )
    .map_err(nix_err)?;
    let r = (|| -> io::Result<Segment> {
        // shm_open honours the umask: make the mode exactly what was asked.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode as libc::mode_t))
            .map_err(nix_err)?;
        let off = libc::off_t::try_from(len.get())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
        nix::unistd::ftruncate(&fd, off).map_err(nix_err)?;
        // Reserve every page now: ENOSPC here instead of SIGBUS at the first write.
        let populate = match nix::fcntl::posix_fallocate(&fd, 0, off) {
            Ok(()) => false,
            Err(Errno::EOPNOTSUPP | Errno::EINVAL) => true,
            Err(e) => return Err(nix_err(e)),
        };
        let st = nix::sys::stat::fstat(&fd).map_err(nix_err)?;
        let ptr = map_fd(&fd, len.get(), true)?;
        let seg = Segment {
            ptr,
            len: len.get(),
            read_only: false,
            backend: Backend::Posix,
            name: n.to_string(),
            key: 0,
            id: file_id(&st),
        };
        if populate {
            populate_write(ptr, len.get())?;
        }
        Ok(seg)
    })();
    if r.is_err() {
        let _ = nix::sys::mman::shm_unlink(path.as_str());
    }
    r
}

fn map_fd(fd: &OwnedFd, len: usize, writable: bool) -> io::Result<*mut u8> {
    let len = NonZeroUsize::new(len).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prot =
        if writable { ProtFlags::PROT_READ | ProtFlags::PROT_WRITE } else { ProtFlags::PROT_READ };
    // SAFETY: a fresh mapping at a kernel-chosen address (addr None), so it aliases no Rust
    // object; `fd` is a valid shm fd of at least `len` bytes (sized or fstat-ed by the caller);
    // the returned pointer is owned by the Segment and unmapped in its Drop.
    let p = unsafe { nix::sys::mman::mmap(None, len, prot, MapFlags::MAP_SHARED, fd.as_fd(), 0) }
        .map_err(nix_err)?;
    Ok(p.as_ptr().cast::<u8>())
}
pub(super) fn posix_attach(n: &str, writable: bool) -> Result<Segment, Attach> {
    let flags = if writable { OFlag::O_RDWR } else { OFlag::O_RDONLY };
    let fd = nix::sys::mman::shm_open(format!("/{n}").as_str(), flags, Mode::empty())?;
    let st = nix::sys::stat::fstat(&fd)?;
    let trusted = if writable { st.st_uid == euid() } else { trusted_reader_owner(st.st_uid) };
    if !trusted {
        return Err(Attach::NotOwner(st.st_uid));
    }
    let len = usize::try_from(st.st_size).map_err(|_| Attach::Empty)?;
    if len == 0 {
        return Err(Attach::Empty);
    }
    let ptr = map_fd(&fd, len, writable)?;
    Ok(Segment {
        ptr,
        len,
        read_only: !writable,
        backend: Backend::Posix,
        name: n.to_string(),
        key: 0,
        id: file_id(&st),
    })
}

fn file_id(st: &libc::stat) -> SegmentId {
    SegmentId::Posix { dev: st.st_dev, ino: st.st_ino }
}
