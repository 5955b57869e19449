//! Shared-memory segments: POSIX (`shm_open`, /dev/shm) and SysV (`shmget`, visible in `ipcs`).
//!
//! Used by the queue pair code ([`crate::pair`]) for the rings, by io_conn for the stats segment,
//! and by viewstats, which attaches read-only. This module holds the mapping syscalls and their
//! `unsafe`; everything above it sees a [`Segment`]: a base pointer and a length that stay valid
//! until the `Segment` is dropped.
//!
//! # Ownership
//!
//! The creator ([`Segment::create`], exclusive: `O_CREAT|O_EXCL` / `IPC_CREAT|IPC_EXCL`) owns the
//! name and removes it ([`Segment::remove`]); everyone else attaches ([`Segment::attach`]).
//! Dropping a `Segment` only unmaps it (munmap / shmdt); the name stays until removed. What lives
//! inside (a ring header with a `ready` word stored last) is the init protocol: a fresh segment
//! is all zeroes, which every attacher reads as "not ready".
//!
//! # Backends
//!
//! * **POSIX**: the name `NAME` is the file `/dev/shm/NAME` (`shm_open("/NAME")`). Pages are
//!   reserved with `posix_fallocate`, so a full /dev/shm is an error at create time, not a SIGBUS
//!   at the first write.
//! * **SysV**: the name is hashed to a key, [`sysv_key`] (32-bit FNV-1a of the name's bytes,
//!   masked to a positive non-zero `i32`), shown by `ipcs -m`. The kernel zero-fills; pages are
//!   reserved at create time with `madvise(MADV_POPULATE_WRITE)` (Linux ≥ 5.14; older kernels
//!   get a write of one zero byte per page), so an exhausted `shmall`/memory is an error at
//!   create time as well. Two names that hash to the same key collide: create fails with
//!   [`CreateError::Exists`], never attaches to the other one silently (attach checks the size
//!   and the ring header checks the rest).
//!
//! # Owners
//!
//! Segment names are predictable, and /dev/shm (like the SysV key space) is shared by every user.
//! So every attach checks who owns the segment: a writable attach only a segment owned by our
//! effective uid ([`AttachError::NotOwner`]); a read-only attach (viewstats, run by an operator
//! in the server's group) a segment owned by our euid, by root, or by the server user
//! [`SERVER_USER`]. [`Segment::owner`] tells a creator whether a leftover is its own before it
//! touches it (see [`crate::pair`]: nothing owned by another uid is ever removed).
//!
//! # Identity
//!
//! A name can be removed and created again while a process keeps the old mapping. [`SegmentId`]
//! (POSIX: device and inode of the file; SysV: the shmid) tells the two apart:
//! [`Segment::is_replaced`] compares the mapped segment's id with what the name refers to now.
//!
//! # Read-only segments
//!
//! `attach(…, writable = false)` opens `O_RDONLY` and maps `PROT_READ` (SysV: `SHM_RDONLY`): a
//! write through it faults (SIGSEGV), which `tests/segment.rs` shows in a child process. Such a
//! segment must never be given to a ring (a ring stores its pid and positions). This is enforced
//! without panics: its [`Memory`] implementation reports a length of 0, so `ring::init`,
//! `Producer::attach` and `Consumer::attach` refuse it (`RegionTooSmall` / `Truncated`). Readers
//! use [`Segment::as_ptr`] and [`Segment::len`] (the real length) and read with relaxed atomic
//! loads, or use [`Segment::ring_identity`].
//!
//! # Example
//!
//! ```
//! use shmq::region::{Backend, Segment};
//! let name = format!("shmq-doc-region-{}", std::process::id());
//! let seg = Segment::create(Backend::Posix, &name, 4096, 0o600).unwrap();
//! let view = Segment::attach(Backend::Posix, &name, false).unwrap();
//! assert_eq!((view.len(), view.is_read_only()), (4096, true));
//! assert_eq!(shmq::Memory::len(&view), 0); // never usable by a ring
//! drop((seg, view));
//! assert!(Segment::remove(Backend::Posix, &name).unwrap());
//! ```

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::mman::MmapAdvise;

use crate::layout::RingHeader;
use crate::ring::Memory;
use crate::sys::{ProcId, syscall};

// The backend-specific create/attach/unmap code lives in its own file; everything public is
// defined here.
mod posix;
mod sysv;

use posix::{munmap, posix_attach, posix_create};
use sysv::{sysv_attach, sysv_create};

/// Which kernel facility backs a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `shm_open` + `mmap`: a file under /dev/shm.
    Posix,
    /// `shmget` + `shmat`: a key visible in `ipcs -m`.
    Sysv,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Posix => "posix",
            Self::Sysv => "sysv",
        })
    }
}

/// Why a segment could not be created.
#[derive(Debug)]
#[non_exhaustive]
pub enum CreateError {
    /// A segment of that name exists already (SysV: a segment with that key).
    Exists {
        /// The segment name.
        name: String,
    },
    /// The kernel refused (`source` says why); `name` is the segment. ENOSPC / ENOMEM mean the
    /// pages could not be reserved (/dev/shm full, `shmall` or memory exhausted); EINVAL from
    /// SysV usually means `len` exceeds `kernel.shmmax`.
    Io {
        /// The segment name.
        name: String,
        /// What the kernel said.
        source: io::Error,
    },
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exists { name } => write!(f, "shared-memory segment {name} exists already"),
            Self::Io { name, .. } => write!(f, "cannot create shared-memory segment {name}"),
        }
    }
}

impl std::error::Error for CreateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Exists { .. } => None,
        }
    }
}

/// Why a segment could not be attached.
#[derive(Debug)]
#[non_exhaustive]
pub enum AttachError {
    /// No segment of that name.
    NotFound {
        /// The segment name.
        name: String,
    },
    /// The kernel refused.
    Io {
        /// The segment name.
        name: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The segment has length 0: its creator has not sized it yet (retry shortly), or it died
    /// between creating and sizing it.
    Empty {
        /// The segment name.
        name: String,
    },
    /// A writable attach of a segment owned by another user, or a read-only attach of one owned
    /// by neither us, root nor [`SERVER_USER`]: refused, since its owner (not the server)
    /// controls what is in it.
    NotOwner {
        /// The segment name.
        name: String,
        /// The owner's uid.
        uid: u32,
    },
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { name } => write!(f, "shared-memory segment {name} does not exist"),
            Self::Io { name, .. } => write!(f, "cannot attach shared-memory segment {name}"),
            Self::Empty { name } => write!(f, "shared-memory segment {name} has not been sized"),
            Self::NotOwner { name, uid } => write!(
                f,
                "shared-memory segment {name} is owned by uid {uid}, not by us or the server user \
                 {SERVER_USER}: refusing it"
            ),
        }
    }
}

impl std::error::Error for AttachError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The SysV IPC key for segment `name`: 32-bit FNV-1a of the name's bytes (a leading `/` is
/// ignored), masked to 31 bits; 0 (`IPC_PRIVATE`) becomes 1. Stable across builds and releases:
/// operators find a segment with `ipcs -m | grep $(printf '0x%08x' KEY)`.
pub fn sysv_key(name: &str) -> i32 {
    let name = name.strip_prefix('/').unwrap_or(name);
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let k = (h & 0x7fff_ffff) as i32;
    if k == 0 { 1 } else { k }
}

/// Checks a segment name: non-empty, at most 200 bytes, no `/` (but one leading `/`, which is
/// dropped), no NUL. Returns it without the leading `/`.
fn check_name(name: &str) -> io::Result<&str> {
    let n = name.strip_prefix('/').unwrap_or(name);
    if n.is_empty() || n.len() > 200 || n.contains('/') || n.contains('\0') || n == "." || n == ".."
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad segment name {name:?}: want 1-200 bytes, no '/' or NUL"),
        ));
    }
    Ok(n)
}

fn nix_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The system user the server runs as under systemd (`systemd/sysusers.d/shmsrv.conf`). Its
/// segments are trusted by read-only attaches of other users (operators in its group).
pub const SERVER_USER: &str = "shmsrv";

/// The uid of [`SERVER_USER`], looked up once; `None` if there is no such user.
fn server_uid() -> Option<u32> {
    static UID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UID.get_or_init(|| {
        nix::unistd::User::from_name(SERVER_USER).ok().flatten().map(|u| u.uid.as_raw())
    })
}

/// True if a read-only attach may trust a segment owned by `uid`: ours, root's or the server
/// user's.
fn trusted_reader_owner(uid: u32) -> bool {
    uid == euid() || uid == 0 || server_uid() == Some(uid)
}

/// Which kernel object a segment name referred to when it was mapped. Names are reused (a
/// restarted io_conn removes and re-creates them); ids are not, while the old object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentId {
    /// The /dev/shm file: device and inode.
    Posix {
        /// `st_dev`.
        dev: u64,
        /// `st_ino`.
        ino: u64,
    },
    /// The SysV shmid the key resolved to.
    Sysv {
        /// The shmid.
        shmid: i32,
    },
}

/// Copy of a ring header's identity fields, read with relaxed atomic loads (so it works on
/// read-only and on garbage segments alike; nothing is validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingIdentity {
    /// Should be [`crate::layout::RING_MAGIC`].
    pub magic: u64,
    /// Layout version of the creating build.
    pub layout_version: u32,
    /// 1 once the creator finished initialising (or resetting).
    pub ready: u32,
    /// The creator (pid + start time).
    pub creator: ProcId,
    /// The creator's epoch.
    pub epoch: u64,
    /// The ring's generation.
    pub generation: u64,
    /// Pid the producer recorded when it attached (0: none yet).
    pub producer_pid: u32,
    /// Pid the consumer recorded when it attached (0: none yet).
    pub consumer_pid: u32,
}

/// A mapped segment. Writable unless attached read-only.
#[derive(Debug)]
pub struct Segment {
    /// Base of the mapping: page-aligned, valid for `len` bytes until drop.
    ptr: *mut u8,
    len: usize,
    read_only: bool,
    backend: Backend,
    /// Name without the leading `/`.
    name: String,
    /// SysV key (0 for POSIX).
    key: i32,
    /// The kernel object mapped (see [`SegmentId`]).
    id: SegmentId,
}

impl Segment {
    /// Creates a new segment exclusively: `len` bytes, zeroed, pages reserved, permission bits
    /// exactly `mode` (e.g. 0o600; the umask does not apply). Fails with
    /// [`CreateError::Exists`] if the name (SysV: the key) is taken. On any later failure the
    /// half-made segment is removed again.
    pub fn create(
        backend: Backend,
        name: &str,
        len: usize,
        mode: u32,
    ) -> Result<Self, CreateError> {
        let io = |source: io::Error| CreateError::Io { name: name.to_string(), source };
        let n = check_name(name).map_err(io)?;
        let Some(nz_len) = NonZeroUsize::new(len) else {
            return Err(io(io::Error::new(io::ErrorKind::InvalidInput, "segment length 0")));
        };
        let mode = mode & 0o777;
        let seg = match backend {
            Backend::Posix => posix_create(n, nz_len, mode),
            Backend::Sysv => sysv_create(n, nz_len, mode),
        };
        match seg {
            Ok(s) => {
                log::debug!("created {backend} segment {n} ({len} bytes, mode {mode:o})");
                Ok(s)
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                Err(CreateError::Exists { name: n.to_string() })
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Attaches an existing segment; `writable = false` maps it read-only (O_RDONLY + PROT_READ /
    /// SHM_RDONLY): the mapping cannot change a byte. The length is the segment's real size
    /// (`fstat` / `IPC_STAT`). A writable attach requires that we own the segment.
    pub fn attach(backend: Backend, name: &str, writable: bool) -> Result<Self, AttachError> {
        let n = check_name(name)
            .map_err(|source| AttachError::Io { name: name.to_string(), source })?;
        let r = match backend {
            Backend::Posix => posix_attach(n, writable),
            Backend::Sysv => sysv_attach(n, writable),
        };
        r.map_err(|e| match e {
            Attach::Io(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                AttachError::NotFound { name: n.to_string() }
            }
            Attach::Io(source) => AttachError::Io { name: n.to_string(), source },
            Attach::Empty => AttachError::Empty { name: n.to_string() },
            Attach::NotOwner(uid) => AttachError::NotOwner { name: n.to_string(), uid },
        })
    }

    /// Removes a segment by name (shm_unlink / IPC_RMID). Ok(false) if it did not exist.
    /// Processes that still have it mapped keep their mapping; the name is free at once (SysV:
    /// the key is, the memory goes with the last detach).
    pub fn remove(backend: Backend, name: &str) -> io::Result<bool> {
        let n = check_name(name)?;
        match backend {
            Backend::Posix => match nix::sys::mman::shm_unlink(format!("/{n}").as_str()) {
                Ok(()) => Ok(true),
                Err(Errno::ENOENT) => Ok(false),
                Err(e) => Err(nix_err(e)),
            },
            Backend::Sysv => {
                let id = match syscall!(shmget(sysv_key(n), 0, 0)) {
                    Ok(id) => id,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
                    Err(e) => return Err(e),
                };
                // SAFETY: IPC_RMID ignores the buffer argument; null is what the man page says
                // to pass.
                match syscall!(shmctl(id, libc::IPC_RMID, std::ptr::null_mut())) {
                    Ok(_) => Ok(true),
                    // Removed by someone else between the two calls.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIDRM)) => {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// True if a segment of that name exists (SysV: its key).
    pub fn exists(backend: Backend, name: &str) -> io::Result<bool> {
        let n = check_name(name)?;
        match backend {
            Backend::Posix => match std::fs::symlink_metadata(format!("/dev/shm/{n}")) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
            Backend::Sysv => match syscall!(shmget(sysv_key(n), 0, 0)) {
                Ok(_) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
                // EACCES: it exists, just not for us.
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => Ok(true),
                Err(e) => Err(e),
            },
        }
    }

    /// The uid owning segment `name` (POSIX: the /dev/shm entry itself, a symlink's own owner;
    /// SysV: `shm_perm.uid`), or `None` if there is none. SysV segments we may not stat
    /// (`EACCES`) are an error.
    pub fn owner(backend: Backend, name: &str) -> io::Result<Option<u32>> {
        use std::os::unix::fs::MetadataExt;
        let n = check_name(name)?;
        match backend {
            Backend::Posix => match std::fs::symlink_metadata(format!("/dev/shm/{n}")) {
                Ok(m) => Ok(Some(m.uid())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Backend::Sysv => match sysv::stat_key(sysv_key(n)) {
                Ok(Some((_, ds))) => Ok(Some(ds.shm_perm.uid)),
                Ok(None) => Ok(None),
                // Not readable by us (IPC_STAT needs read permission): /proc lists every owner.
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                    sysv::proc_owner(sysv_key(n))?.map(Some).ok_or(e)
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Where an operator finds segment `name`: `/dev/shm/NAME` or `SysV key 0x…`.
    pub fn location_of(backend: Backend, name: &str) -> String {
        let n = name.strip_prefix('/').unwrap_or(name);
        match backend {
            Backend::Posix => format!("/dev/shm/{n}"),
            Backend::Sysv => format!("SysV key {:#010x} ({n})", sysv_key(n)),
        }
    }

    /// What the name `name` refers to now (`None`: nothing).
    pub fn current_id(backend: Backend, name: &str) -> io::Result<Option<SegmentId>> {
        use std::os::unix::fs::MetadataExt;
        let n = check_name(name)?;
        match backend {
            Backend::Posix => match std::fs::symlink_metadata(format!("/dev/shm/{n}")) {
                Ok(m) => Ok(Some(SegmentId::Posix { dev: m.dev(), ino: m.ino() })),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Backend::Sysv => match syscall!(shmget(sysv_key(n), 0, 0)) {
                Ok(shmid) => Ok(Some(SegmentId::Sysv { shmid })),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// The kernel object this segment maps.
    pub fn id(&self) -> SegmentId {
        self.id
    }

    /// True if our name now refers to another object than the one mapped, or to none: the
    /// creator removed the segment (and maybe made a new one). An error to look it up counts as
    /// not replaced.
    pub fn is_replaced(&self) -> bool {
        match Self::current_id(self.backend, &self.name) {
            Ok(id) => id != Some(self.id),
            Err(e) => {
                log::debug!("cannot look up segment {}: {e}", self.name);
                false
            }
        }
    }

    /// Base address (read-only segments: never write through it).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// Real length of the mapping in bytes (for a read-only segment too; compare the [`Memory`]
    /// length, which is 0 for read-only segments).
    pub fn len(&self) -> usize {
        self.len
    }
    /// True if the mapping has no bytes (never, for a segment that attached).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// True if mapped `PROT_READ` only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
    /// The name, without a leading `/`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// Where an operator finds it: `/dev/shm/NAME` or `SysV key 0x…`.
    pub fn location(&self) -> PathBuf {
        match self.backend {
            Backend::Posix => PathBuf::from(format!("/dev/shm/{}", self.name)),
            Backend::Sysv => PathBuf::from(format!("SysV key {:#010x}", self.key)),
        }
    }

    /// Reads the identity fields of the ring header at `offset` (relaxed atomic loads, no
    /// validation). `None` if the segment is too short or `offset` is not 128-aligned.
    pub fn ring_identity(&self, offset: usize) -> Option<RingIdentity> {
        use core::mem::offset_of;
        let end = offset.checked_add(crate::layout::RING_HEADER_SIZE)?;
        if !offset.is_multiple_of(128) || end > self.len {
            return None;
        }
        let base = self.ptr.wrapping_add(offset);
        let rd64 = |off: usize| -> u64 {
            let p = base.wrapping_add(off);
            // SAFETY: in bounds: off + 8 <= RING_HEADER_SIZE and offset + RING_HEADER_SIZE <=
            // len (checked above). Aligned: the mapping is page-aligned, offset is a multiple of
            // 128 and every field read is at a multiple of 8 (layout.rs asserts the offsets).
            // Valid for reads for the life of &self (read-only mappings too; an atomic load is a
            // plain load on x86-64 and aarch64, it never needs write access). Other processes
            // may write the word concurrently: hence an atomic (relaxed) load, never a plain
            // read; the values are untrusted copies.
            #[cfg(not(loom))]
            return unsafe { &*p.cast::<crate::sync::AtomicU64>() }
                .load(crate::sync::Ordering::Relaxed);
            // Loom atomics cannot live in raw memory (and loom never maps segments).
            // SAFETY: as above; a volatile copy stands in for the atomic load.
            #[cfg(loom)]
            return unsafe { core::ptr::read_volatile(p.cast::<u64>()) };
        };
        let rd32 = |off: usize| -> u32 {
            let p = base.wrapping_add(off);
            // SAFETY: as for `rd64`, with 4-byte fields at multiples of 4.
            #[cfg(not(loom))]
            return unsafe { &*p.cast::<crate::sync::AtomicU32>() }
                .load(crate::sync::Ordering::Relaxed);
            // SAFETY: as for `rd64`.
            #[cfg(loom)]
            return unsafe { core::ptr::read_volatile(p.cast::<u32>()) };
        };
        const PRODUCER_PID: usize =
            offset_of!(RingHeader, producer) + offset_of!(crate::layout::ProducerCounters, pid);
        const CONSUMER_PID: usize =
            offset_of!(RingHeader, consumer) + offset_of!(crate::layout::ConsumerCounters, pid);
        Some(RingIdentity {
            magic: rd64(offset_of!(RingHeader, magic)),
            layout_version: rd32(offset_of!(RingHeader, layout_version)),
            ready: rd32(offset_of!(RingHeader, ready)),
            creator: ProcId {
                pid: rd32(offset_of!(RingHeader, creator_pid)),
                start_time: rd64(offset_of!(RingHeader, creator_start_time)),
            },
            epoch: rd64(offset_of!(RingHeader, epoch)),
            generation: rd64(offset_of!(RingHeader, generation)),
            producer_pid: rd32(PRODUCER_PID),
            consumer_pid: rd32(CONSUMER_PID),
        })
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let r = match self.backend {
            Backend::Posix => {
                // SAFETY: ptr/len are exactly the mapping made in `map_fd`, unmapped once (here).
                // Every ring holding this memory keeps it alive through an Arc, so no pointer
                // into it is used after this point.
                unsafe { munmap(self.ptr, self.len) }
            }
            Backend::Sysv => {
                // SAFETY: ptr is the address shmat returned, detached once (here); no pointer into
                // it outlives the Segment (see above).
                syscall!(shmdt(self.ptr as *const c_void)).map(drop)
            }
        };
        if let Err(e) = r {
            log::warn!("cannot unmap segment {}: {e}", self.name);
        }
    }
}

// SAFETY: the Segment owns its mapping; the raw pointer is only an address. All access to the
// bytes from several threads goes through the rings' atomics and the SPSC discipline, or through
// readers' relaxed atomic loads / volatile copies.
unsafe impl Send for Segment {}
// SAFETY: as for Send: &Segment hands out only the address and length; it never reads or writes
// the bytes itself except via `ring_identity`'s relaxed atomic loads.
unsafe impl Sync for Segment {}
// SAFETY: ptr is non-null and page-aligned (so 128-aligned), valid for reads and writes of the
// reported length until drop, and never moves. A read-only segment reports length 0: no ring can
// be initialised or attached on it (they need at least a header), so nothing ever writes through
// its PROT_READ mapping via this trait.
unsafe impl Memory for Segment {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        if self.read_only { 0 } else { self.len }
    }
}

/// Internal attach failure, mapped to [`AttachError`] with the name.
enum Attach {
    Io(io::Error),
    Empty,
    NotOwner(u32),
}

impl From<io::Error> for Attach {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<Errno> for Attach {
    fn from(e: Errno) -> Self {
        Self::Io(nix_err(e))
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Faults every page of a fresh writable mapping in, so memory shortage is an error now.
fn populate_write(ptr: *mut u8, len: usize) -> io::Result<()> {
    let Some(p) = NonNull::new(ptr.cast::<c_void>()) else { return Ok(()) };
    // SAFETY: [ptr, ptr + len) is a writable shared mapping we made; MADV_POPULATE_WRITE only
    // faults pages in (write-faults, contents unchanged), it never changes what is mapped.
    match unsafe { nix::sys::mman::madvise(p, len, MmapAdvise::MADV_POPULATE_WRITE) } {
        Ok(()) => Ok(()),
        // Kernel before 5.14: touch each page. The memory is freshly created and zero, and
        // nobody can have initialised it yet (the ring's `ready` word is still 0), so writing a
        // zero byte changes nothing but reserves the page.
        Err(Errno::EINVAL) => {
            let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                .ok()
                .flatten()
                .and_then(|p| usize::try_from(p).ok())
                .unwrap_or(4096);
            for off in (0..len).step_by(page) {
                // SAFETY: off < len: in bounds of our writable mapping; a byte store needs no
                // alignment; racing writers do not exist yet (see above).
                unsafe { core::ptr::write_volatile(ptr.add(off), 0) };
            }
            Ok(())
        }
        Err(e) => Err(nix_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysv_key_is_fnv1a_and_positive() {
        // FNV-1a("a") = 0xe40c292c; masked to 31 bits.
        assert_eq!(sysv_key("a"), 0x640c_292c);
        assert_eq!(sysv_key("/a"), sysv_key("a"));
        assert!(sysv_key("") > 0);
        assert_ne!(sysv_key("shmsrv.in.0"), sysv_key("shmsrv.in.1"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("ok.in.0").is_ok());
        assert_eq!(check_name("/ok").unwrap(), "ok");
        for bad in ["", "/", "a/b", "..", "x\0y"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
