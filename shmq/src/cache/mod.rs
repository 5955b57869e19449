//! The shared cache segment: a multi-hash table (16 rows of distinct prime sizes) whose keys and
//! values live in a pool of fixed 64-byte chunks, used by every md's `kv` service at once.
//!
//! io_conn creates `{shared.name}.kv` (0600, POSIX or SysV like the queue segments) when a
//! listener serves `kv`, sized by `kv.max_keys` and `kv.memory` ([`layout::plan`]), and removes
//! it on exit; md attaches it ([`Cache::attach`]), never re-initialises it (no wipe on attach).
//!
//! # Concurrency
//!
//! Every operation runs under one process-shared **robust** mutex (the private `lock` module):
//! several md read and write at once, one at a time inside the table. A writer that dies holding it (SIGKILL in the
//! middle of a SET) is reported by the kernel to the next locker (`EOWNERDEAD`), which repairs
//! the table ([`table::Parts::repair`]: journal roll-forward, free list rebuilt from
//! reachability) before it goes on. docs/ARCHITECTURE.md argues for one mutex over per-bucket
//! locks with the measurement (`benches/cache.rs`).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use shmq::cache::{Cache, Cond, Expiry};
//! let cache = Cache::create_in(Arc::new(shmq::HeapMemory::new(Cache::required_len(100, 64 * 200).unwrap())), 100, 64 * 200, 1).unwrap();
//! let mut t = cache.lock().unwrap();
//! assert_eq!(t.set(b"k", b"v", Cond::Always, Expiry::None, 0), Ok(true));
//! let mut out = Vec::new();
//! assert!(t.get(b"k", 0, &mut out));
//! assert_eq!(out, b"v");
//! ```

pub mod layout;
mod lock;
pub mod table;

use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::region::{AttachError, Backend, CreateError, Segment};
use crate::ring::Memory;
use crate::sync::{AtomicU32, Ordering};
use crate::sys::ProcId;

pub use layout::{CHUNK_BYTES, Counters, Plan, PlanError, ROWS, plan};
pub use table::{Audit, Cond, CrashPoint, Expiry, Full, IncrError, Parts};

use layout::{CACHE_LAYOUT_VERSION, CACHE_MAGIC, Header, Locked, Slot};
use lock::{Locked as LockState, RawLock};

/// The cache segment's name for a `shared.name`.
pub fn segment_name(name: &str) -> String {
    format!("{name}.kv")
}

/// Why the cache could not be created or attached.
#[derive(Debug)]
#[non_exhaustive]
pub enum CacheError {
    /// Impossible sizes.
    Plan(PlanError),
    /// The segment could not be created.
    Create(CreateError),
    /// The segment could not be attached.
    Attach(AttachError),
    /// Not (yet) a ready cache segment of this layout: `what` says which check failed.
    Invalid {
        /// What did not match.
        what: String,
    },
    /// The mutex failed (`pthread_*` error).
    Lock(io::Error),
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plan(e) => write!(f, "{e}"),
            Self::Create(e) => write!(f, "{e}"),
            Self::Attach(e) => write!(f, "{e}"),
            Self::Invalid { what } => write!(f, "not a usable cache segment: {what}"),
            Self::Lock(e) => write!(f, "cache mutex: {e}"),
        }
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Create(e) => Some(e),
            Self::Attach(e) => Some(e),
            Self::Lock(e) => Some(e),
            _ => None,
        }
    }
}

static CRASH: AtomicU32 = AtomicU32::new(0);

/// Test hook: this process dies (SIGKILL to itself) when a write reaches `p`. Relaxed: a
/// process-local flag read by the same thread that sets it, or at worst one write late.
pub fn set_crash_point(p: CrashPoint) {
    CRASH.store(p as u32, Ordering::Relaxed);
}

fn crash_point() -> CrashPoint {
    match CRASH.load(Ordering::Relaxed) {
        1 => CrashPoint::MidFill,
        2 => CrashPoint::AfterJournal,
        3 => CrashPoint::MidSlot,
        4 => CrashPoint::MidFree,
        5 => CrashPoint::MidDel,
        _ => CrashPoint::None,
    }
}

pub(crate) fn die_now() {
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    std::process::abort();
}

enum Backing {
    Segment(Segment),
    Memory(Arc<dyn Memory>),
}

impl fmt::Debug for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Segment(s) => write!(f, "Segment({})", s.name()),
            Self::Memory(m) => write!(f, "Memory({} B)", m.len()),
        }
    }
}

/// A mapped cache: io_conn's (created) or an md's (attached). Cheap to share within a process
/// behind an `Arc`; all mutation goes through [`Cache::lock`].
#[derive(Debug)]
pub struct Cache {
    backing: Backing,
    base: *mut u8,
    len: usize,
    plan: Plan,
    seed: u64,
}

// SAFETY: the mapping stays valid while the Cache lives (it owns the Segment / Arc); shared
// access to the table goes through the process-shared mutex, and the header fields read without
// it are immutable after `ready` or atomics.
unsafe impl Send for Cache {}
// SAFETY: as for Send.
unsafe impl Sync for Cache {}

impl Cache {
    /// Bytes a table for `max_keys` keys and `memory` bytes of pool needs.
    pub fn required_len(max_keys: u64, memory: u64) -> Result<usize, PlanError> {
        plan(max_keys, memory).map(|p| p.total_len)
    }

    /// io_conn: creates `{name}.kv` exclusively (0600) and formats it. Remove a dead
    /// predecessor's first ([`Cache::remove`]).
    pub fn create(
        backend: Backend,
        name: &str,
        max_keys: u64,
        memory: u64,
        epoch: u64,
    ) -> Result<Self, CacheError> {
        let p = plan(max_keys, memory).map_err(CacheError::Plan)?;
        let seg = Segment::create(backend, &segment_name(name), p.total_len, crate::pair::MODE)
            .map_err(CacheError::Create)?;
        let (base, len) = (seg.as_ptr(), seg.len());
        Self::format(Backing::Segment(seg), base, len, p, max_keys, epoch, ProcId::current())
    }

    /// Formats a cache in any memory (tests, benchmarks; threads of one process).
    pub fn create_in(
        mem: Arc<dyn Memory>,
        max_keys: u64,
        memory: u64,
        epoch: u64,
    ) -> Result<Self, CacheError> {
        let p = plan(max_keys, memory).map_err(CacheError::Plan)?;
        let (base, len) = (mem.as_ptr(), mem.len());
        Self::format(Backing::Memory(mem), base, len, p, max_keys, epoch, ProcId::current())
    }

    fn format(
        backing: Backing,
        base: *mut u8,
        len: usize,
        p: Plan,
        max_keys: u64,
        epoch: u64,
        me: ProcId,
    ) -> Result<Self, CacheError> {
        if len < p.total_len || !(base as usize).is_multiple_of(128) {
            return Err(CacheError::Invalid { what: format!("{len} bytes, need {}", p.total_len) });
        }
        let seed = std::collections::hash_map::RandomState::new().hash_one(crate::stats::unix_ns());
        let h = base.cast::<Header>();
        // SAFETY: in bounds (len >= total_len > HEADER_BYTES, checked above), 128-aligned
        // (checked above), exclusive: the segment was just created (O_EXCL) or handed to us,
        // and nobody uses it before `ready` = 1, stored last below. Raw-pointer writes: no
        // reference to the header exists yet.
        unsafe {
            std::ptr::write_bytes(base, 0, layout::HEADER_BYTES);
            (&raw mut (*h).id.magic).write(CACHE_MAGIC);
            (&raw mut (*h).id.layout_version).write(CACHE_LAYOUT_VERSION);
            (&raw mut (*h).id.creator_pid).write(me.pid);
            (&raw mut (*h).id.rows).write(ROWS as u32);
            (&raw mut (*h).id.creator_start_time).write(me.start_time);
            (&raw mut (*h).id.epoch).write(epoch);
            (&raw mut (*h).id.total_len).write(p.total_len as u64);
            (&raw mut (*h).id.max_keys).write(max_keys);
            (&raw mut (*h).id.total_slots).write(p.total_slots);
            (&raw mut (*h).id.chunks).write(p.chunks);
            (&raw mut (*h).id.seed).write(seed);
            (&raw mut (*h).id.row_primes).write(p.row_primes);
        }
        // SAFETY: the mutex bytes are inside the header (in bounds, 128-aligned line 2), in the
        // mapping every user maps; nobody else uses them before `ready`.
        let lock = unsafe { RawLock::new((&raw mut (*h).mutex.raw).cast()) };
        // SAFETY: not yet published (see above).
        unsafe { lock.init() }.map_err(CacheError::Lock)?;
        let cache = Self { backing, base, len, plan: p, seed };
        {
            // Format under the lock (nobody else can take it yet; this only reuses the view).
            let mut g = cache.lock()?;
            g.format();
        }
        // Release pairs with the Acquire load of `ready` in `attach_mapped`: the header and the
        // formatted table are visible to whoever sees 1.
        cache.header().id.ready.store(1, Ordering::Release);
        Ok(cache)
    }

    /// md: attaches `{name}.kv` writable and checks it. Never changes its contents.
    pub fn attach(backend: Backend, name: &str) -> Result<Self, CacheError> {
        let seg =
            Segment::attach(backend, &segment_name(name), true).map_err(CacheError::Attach)?;
        let (base, len) = (seg.as_ptr(), seg.len());
        Self::attach_mapped(Backing::Segment(seg), base, len)
    }

    /// Attaches a cache formatted in `mem` by [`Cache::create_in`].
    pub fn attach_in(mem: Arc<dyn Memory>) -> Result<Self, CacheError> {
        let (base, len) = (mem.as_ptr(), mem.len());
        Self::attach_mapped(Backing::Memory(mem), base, len)
    }

    fn attach_mapped(backing: Backing, base: *mut u8, len: usize) -> Result<Self, CacheError> {
        let bad = |what: String| Err(CacheError::Invalid { what });
        if len < layout::HEADER_BYTES || !(base as usize).is_multiple_of(128) {
            return bad(format!("{len} bytes"));
        }
        // SAFETY: in bounds (len >= HEADER_BYTES), aligned (checked), and the fields read here
        // are written once before `ready` (checked first, with Acquire) and never again.
        let id = unsafe { &(*base.cast::<Header>()).id };
        // Acquire pairs with the creator's Release store of `ready` in `format`.
        if id.ready.load(Ordering::Acquire) != 1 {
            return bad("not ready".into());
        }
        if id.magic != CACHE_MAGIC {
            return bad(format!("magic {:#x}", id.magic));
        }
        if id.layout_version != CACHE_LAYOUT_VERSION {
            return bad(format!("layout version {}", id.layout_version));
        }
        let p = plan(id.max_keys, id.chunks * CHUNK_BYTES as u64).map_err(CacheError::Plan)?;
        if p.row_primes != id.row_primes
            || p.total_slots != id.total_slots
            || p.total_len as u64 != id.total_len
            || len < p.total_len
            || id.rows != ROWS as u32
        {
            return bad(format!("geometry does not match its {len} bytes"));
        }
        let seed = id.seed;
        Ok(Self { backing, base, len, plan: p, seed })
    }

    /// Removes `{name}.kv` (Ok(false) if absent). Mappings stay valid until dropped.
    pub fn remove(backend: Backend, name: &str) -> io::Result<bool> {
        Segment::remove(backend, &segment_name(name))
    }

    fn header(&self) -> &Header {
        // SAFETY: in bounds and aligned (checked in format/attach); the identity is immutable
        // after ready, the counters are atomics, and the mutex and locked lines are only
        // touched through raw pointers (`lock`), never through this reference's fields.
        unsafe { &*self.base.cast::<Header>() }
    }

    /// Statistics every process adds to.
    pub fn counters(&self) -> &Counters {
        &self.header().counters
    }

    /// The epoch of the io_conn that created it.
    pub fn epoch(&self) -> u64 {
        self.header().id.epoch
    }

    /// The creator (io_conn).
    pub fn creator(&self) -> ProcId {
        let id = &self.header().id;
        ProcId { pid: id.creator_pid, start_time: id.creator_start_time }
    }

    /// The geometry.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The configured `max_keys`.
    pub fn max_keys(&self) -> u64 {
        self.header().id.max_keys
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true for a valid cache.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the segment's name now refers to another segment or none (io_conn restarted or
    /// exited): attach again. Always false for heap memory.
    pub fn is_replaced(&self) -> bool {
        match &self.backing {
            Backing::Segment(s) => s.is_replaced(),
            Backing::Memory(_) => false,
        }
    }

    fn raw_lock(&self) -> RawLock {
        // SAFETY: the mutex line is in bounds and 8-aligned (line 2 of the checked header),
        // in the mapping this Cache keeps alive.
        unsafe { RawLock::new(self.base.add(std::mem::offset_of!(Header, mutex))) }
    }

    /// Takes the table mutex (blocking). If its last owner died holding it, repairs the table
    /// first (counted in `counters().recoveries`).
    pub fn lock(&self) -> Result<Guard<'_>, CacheError> {
        let lock = self.raw_lock();
        let st = lock.lock().map_err(CacheError::Lock)?;
        let p = &self.plan;
        // SAFETY: we hold the mutex, and every access to the locked line, the slots and the pool
        // goes through a Guard, so these are the only references to them until the Guard drops
        // (exclusive). In bounds: the locked line is inside the header; slots_offset +
        // total_slots * 32 <= chunks_offset and chunks_offset + chunks * 64 == total_len <= len
        // (the plan, checked against len in format/attach). Aligned: 128-aligned line, slots at
        // 1024 from a 128-aligned base (Slot needs 8), bytes need 1.
        let (locked, slots, chunks, rows) = unsafe {
            let h = self.base.cast::<Header>();
            (
                &mut *(&raw mut (*h).locked).cast::<Locked>(),
                std::slice::from_raw_parts_mut(
                    self.base.add(p.slots_offset).cast::<Slot>(),
                    p.total_slots as usize,
                ),
                std::slice::from_raw_parts_mut(
                    self.base.add(p.chunks_offset),
                    p.chunks as usize * CHUNK_BYTES,
                ),
                &(*h).id.row_primes,
            )
        };
        let mut g = Guard {
            lock,
            parts: Parts { locked, slots, chunks, rows, seed: self.seed, crash: crash_point() },
        };
        if st == LockState::OwnerDied {
            let dropped = g.parts.repair();
            // Relaxed: a statistic.
            self.counters().recoveries.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "cache: a writer died holding the table; repaired ({dropped} slots dropped)"
            );
            lock.mark_consistent().map_err(CacheError::Lock)?;
        }
        Ok(g)
    }
}

/// The table, locked. Derefs to [`Parts`] (the operations); unlocks on drop.
#[derive(Debug)]
pub struct Guard<'a> {
    lock: RawLock,
    parts: Parts<'a>,
}

impl<'a> Deref for Guard<'a> {
    type Target = Parts<'a>;
    fn deref(&self) -> &Parts<'a> {
        &self.parts
    }
}

impl<'a> DerefMut for Guard<'a> {
    fn deref_mut(&mut self) -> &mut Parts<'a> {
        &mut self.parts
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}
