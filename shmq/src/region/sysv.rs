//! The SysV backend: `shmget` + `shmat` of the key [`sysv_key`] derives from the name.

use std::io;
use std::num::NonZeroUsize;

use super::{
    Attach, Backend, Segment, SegmentId, euid, populate_write, sysv_key, trusted_reader_owner,
};
use crate::sys::syscall;

fn shmat(id: i32, read_only: bool) -> io::Result<*mut u8> {
    let flags = if read_only { libc::SHM_RDONLY } else { 0 };
    // SAFETY: shmaddr null lets the kernel pick a fresh page-aligned address, aliasing nothing;
    // the result is owned by the Segment and detached in its Drop.
    let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    if p as isize == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast::<u8>())
}

pub(super) fn sysv_create(n: &str, len: NonZeroUsize, mode: u32) -> io::Result<Segment> {
    let key = sysv_key(n);
    // SAFETY: plain integer arguments. (The kernel applies `mode` exactly, no umask.)
    let id = syscall!(shmget(key, len.get(), libc::IPC_CREAT | libc::IPC_EXCL | mode as i32))?;
    let r = (|| -> io::Result<Segment> {
        let ptr = shmat(id, false)?;
        let seg = Segment {
            ptr,
            len: len.get(),
            read_only: false,
            backend: Backend::Sysv,
            name: n.to_string(),
            key,
            id: SegmentId::Sysv { shmid: id },
        };
        // Reserve the pages now (SysV memory is allocated at fault time otherwise).
        populate_write(ptr, len.get())?;
        Ok(seg)
    })();
    if r.is_err() {
        // SAFETY: IPC_RMID ignores the buffer; `id` is the segment we just created.
        let _ = syscall!(shmctl(id, libc::IPC_RMID, std::ptr::null_mut()));
    }
    r
}

/// The shmid and `IPC_STAT` of `key`; `None` if no segment has it.
pub(super) fn stat_key(key: i32) -> io::Result<Option<(i32, libc::shmid_ds)>> {
    // SAFETY: plain integer arguments; size 0 and no flags look an existing key up.
    let id = match syscall!(shmget(key, 0, 0)) {
        Ok(id) => id,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: shmid_ds is plain integers, for which all-zero is valid.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds for IPC_STAT to fill.
    syscall!(shmctl(id, libc::IPC_STAT, &mut ds))?;
    Ok(Some((id, ds)))
}

/// The owner uid of `key` from /proc/sysvipc/shm (readable by everyone, unlike IPC_STAT).
pub(super) fn proc_owner(key: i32) -> io::Result<Option<u32>> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm")?;
    // Columns: key shmid perms size cpid lpid nattch uid gid ...
    Ok(text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first()?.parse::<i32>().ok()? == key).then(|| f.get(7)?.parse().ok())?
    }))
}

pub(super) fn sysv_attach(n: &str, writable: bool) -> Result<Segment, Attach> {
    let key = sysv_key(n);
    let Some((id, ds)) = stat_key(key)? else {
        return Err(Attach::Io(io::Error::from_raw_os_error(libc::ENOENT)));
    };
    let uid = ds.shm_perm.uid;
    let trusted = if writable { uid == euid() } else { trusted_reader_owner(uid) };
    if !trusted {
        return Err(Attach::NotOwner(uid));
    }
    let len = ds.shm_segsz;
    if len == 0 {
        return Err(Attach::Empty);
    }
    let ptr = shmat(id, !writable)?;
    Ok(Segment {
        ptr,
        len,
        read_only: !writable,
        backend: Backend::Sysv,
        name: n.to_string(),
        key,
        id: SegmentId::Sysv { shmid: id },
    })
}
