//! The SPSC frame ring: one producer process, one consumer process, variable-length frames.
//!
//! Used by io_conn and md (one ring each way per md instance) over a shared segment, and by tests
//! over heap memory ([`HeapMemory`]). The ring logic never cares where its memory lives: it takes
//! any [`Memory`], checks the [`RingHeader`] at an offset, and keeps a reference to the memory so
//! the mapping outlives it.
//!
//! # Ownership and threading
//!
//! Exactly one [`Producer`] and one [`Consumer`] exist per ring, each in its own process (or
//! thread). Neither is `Clone`. Each keeps its own position and a *cached* copy of the peer's
//! position in process-local fields, and re-reads the peer's only when it must (rtrb's
//! `cached_head`/`cached_tail`). Each publishes its own position once per batch: the producer in
//! [`Producer::flush`] (and when it finds the ring full, so the consumer can always see what fills
//! it), the consumer in [`Consumer::publish`] (and automatically every eighth of the ring, so a
//! long batch cannot starve the producer of space, and whenever [`Consumer::peek`] finds the ring
//! empty).
//!
//! Frames a producer committed are invisible to the consumer until the next flush: a producer
//! that never flushes looks, to the consumer, like one that never pushed.
//!
//! # Untrusted bytes
//!
//! The consumer treats everything in the segment as untrusted: it copies each frame header once,
//! validates the copy against the ring (length, alignment, kind, position) and returns
//! [`RingError::Corrupt`] for anything impossible. After the first corrupt frame the ring is dead
//! for this consumer (positions can no longer be trusted) until the creator resets it.
//!
//! One compromise is deliberate: [`Consumer::peek`] lends the payload as a `&[u8]` *into the
//! segment* (zero copy), and [`Reservation::buf`] lends a `&mut [u8]` into it. Rust assumes
//! nobody else writes memory behind such a reference, and the SPSC protocol guarantees that for
//! an honest peer (the producer does not touch bytes below the published tail until the
//! consumer publishes a head past them, and the consumer never reads at or past the published
//! tail). A hostile or buggy process that maps the segment writable can break that promise; the
//! worst it can then do is change payload bytes under the reader, so every user treats payload
//! contents as untrusted input (bounds-checked decoding, never an index taken from the payload
//! without a check) and copies whatever must stay stable. Headers are never read through a
//! reference: they are copied once with a volatile read and only the copy is validated and used.
//!
//! # Doorbell handshake
//!
//! The consumer, before sleeping: drain the FIFO, store `armed = 1`, `fence(SeqCst)`, re-read
//! `tail`; sleep only if still empty ([`Consumer::prepare_sleep`]). The producer, after
//! publishing: `fence(SeqCst)`, load `armed`, and if set *swap* it to 0 and write one byte
//! ([`Producer::flush`]). This is store-buffering (Dekker): the fences forbid both loads seeing
//! the old values, so a sleeping consumer is always woken. The loom tests in
//! `shmq/tests/loom.rs` model it with the FIFO in the model, and fail if either fence is removed.
//! Each side runs its half as a free function ([`publish_tail`], [`arm_and_recheck`]) on a
//! `&RingHeader`, so the model runs the very code the processes run.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use shmq::frame::{FlowId, Kind};
//! use shmq::layout::Direction;
//! use shmq::ring::{Consumer, HeapMemory, Producer};
//!
//! let mem = Arc::new(HeapMemory::new_ring(4096, 1024, Direction::ToMd));
//! let mut tx = Producer::attach(mem.clone(), 0, None).unwrap();
//! let mut rx = Consumer::attach(mem, 0).unwrap();
//! tx.try_push(FlowId::new(1, 1), Kind::Data, 0, b"PING\n").unwrap();
//! tx.flush();
//! let f = rx.peek().unwrap().unwrap();
//! assert_eq!((f.kind, f.payload), (Kind::Data, &b"PING\n"[..]));
//! rx.release();
//! rx.publish();
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::doorbell::Doorbell;
use crate::frame::{FlowId, Frame, FrameHeader, HEADER_SIZE, Kind, MIN_CAPACITY, frame_size};
use crate::layout::{
    Direction, LAYOUT_VERSION, RING_HEADER_SIZE, RING_MAGIC, RingHeader, RingParams,
};
use crate::sync::{Ordering, fence, spin_hint};

/// Memory a ring can live in: a shared mapping, or the heap in tests.
///
/// # Safety
///
/// Implementors promise that `as_ptr()` is non-null, 128-byte aligned, valid for reads and writes
/// of `len()` bytes for as long as the value lives, never moves, and that nothing but rings (and
/// the creator's header initialisation) accesses it through Rust references.
pub unsafe trait Memory: Send + Sync + 'static {
    /// Base address of the region.
    fn as_ptr(&self) -> *mut u8;
    /// Length of the region in bytes.
    fn len(&self) -> usize;
    /// True when the region has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Total bytes a ring with `capacity` data bytes occupies (header + data).
pub const fn ring_bytes(capacity: u64) -> usize {
    RING_HEADER_SIZE + capacity as usize
}

/// Why a ring header could not be initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// `capacity` is not a power of two or below [`MIN_CAPACITY`].
    BadCapacity(u64),
    /// `frame_size(max_payload)` exceeds `capacity / 2`, or `max_payload` exceeds `u32`.
    BadMaxPayload(u64),
    /// The region is too small, or `offset` is not 128-aligned.
    RegionTooSmall {
        /// Bytes the ring needs from `offset`.
        needed: u64,
        /// Bytes the region has from `offset`.
        len: u64,
    },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadCapacity(c) => {
                write!(f, "ring capacity {c} is not a power of two >= {MIN_CAPACITY}")
            }
            Self::BadMaxPayload(m) => {
                write!(f, "max payload {m} does not fit twice in the ring (or exceeds u32)")
            }
            Self::RegionTooSmall { needed, len } => {
                write!(f, "ring needs {needed} bytes at an aligned offset, region has {len}")
            }
        }
    }
}

impl std::error::Error for InitError {}

/// Why a [`Producer`] or [`Consumer`] could not attach to a ring header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingAttachError {
    /// The creator has not stored `ready` yet (or is resetting); retry with backoff.
    NotReady,
    /// Not a ring header.
    BadMagic(u64),
    /// Created by a build with another layout.
    VersionMismatch {
        /// Version stored in the header.
        found: u32,
        /// Version this build was compiled with.
        expected: u32,
    },
    /// Capacity, max payload or direction are impossible.
    BadGeometry,
    /// The region is shorter than the header implies.
    Truncated {
        /// Bytes available from the ring's offset.
        len: u64,
        /// Bytes the header implies.
        needed: u64,
    },
}

impl fmt::Display for RingAttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotReady => f.write_str("ring is still being initialised"),
            Self::BadMagic(m) => write!(f, "bad ring magic {m:#018x}"),
            Self::VersionMismatch { found, expected } => {
                write!(f, "ring layout version {found}, this build needs {expected}")
            }
            Self::BadGeometry => f.write_str("ring header has impossible capacity or direction"),
            Self::Truncated { len, needed } => {
                write!(f, "ring region is {len} bytes, header implies {needed}")
            }
        }
    }
}

impl std::error::Error for RingAttachError {}

/// A failed push or reserve. Hot path: `Copy`, no allocation, not logged; the caller counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Not enough free space now. The caller applies backpressure (stops reading its source) and
    /// retries after the consumer frees space. Never a silent drop.
    Full,
    /// The payload exceeds the ring's `max_payload`.
    TooLarge {
        /// Payload length asked for.
        len: usize,
        /// Largest payload this ring takes.
        max: usize,
    },
    /// The consumer's published position is impossible (a corrupt or hostile segment).
    Corrupt,
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("ring full"),
            Self::TooLarge { len, max } => write!(f, "payload of {len} bytes exceeds {max}"),
            Self::Corrupt => f.write_str("ring positions corrupt"),
        }
    }
}

impl std::error::Error for PushError {}

/// What a corrupt ring looked like. `Copy`, for counting and one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// `tail` behind `head`, more than `capacity` ahead, or unaligned.
    Positions {
        /// Consumer's position.
        head: u64,
        /// Producer's published position.
        tail: u64,
    },
    /// Unknown frame kind, or one not allowed in this direction.
    Kind(u16),
    /// A frame longer than `max_payload`, past `tail`, or past the end of the data area.
    Length(u32),
    /// A padding record whose length does not reach exactly to the end of the data area.
    Pad(u32),
    /// A fixed-size kind with the wrong payload length.
    KindLength {
        /// The kind.
        kind: u16,
        /// Its length.
        len: u32,
    },
}

/// A failed peek. Hot path: `Copy`, not logged; the caller counts it and resets the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The ring holds something impossible at byte position `at`.
    Corrupt {
        /// Byte position (monotonic) of the bad frame.
        at: u64,
        /// What was wrong.
        what: Corruption,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Corrupt { at, what } => write!(f, "corrupt ring at position {at}: {what:?}"),
        }
    }
}

impl std::error::Error for RingError {}

/// Writes a fresh ring header into `mem` at `offset` and stores `ready` last (Release).
///
/// Zeroes positions and counters. Only the creator calls this, before any side attaches (or
/// through [`reset`] afterwards).
pub fn init(mem: &dyn Memory, offset: usize, p: &RingParams) -> Result<(), InitError> {
    check_params(mem, offset, p)?;
    let base = mem.as_ptr().wrapping_add(offset);
    // SAFETY: in bounds: check_params verified offset + ring_bytes(capacity) <= mem.len(), and
    // RING_HEADER_SIZE <= ring_bytes. Aligned: mem is 128-aligned (Memory contract) and offset is
    // a multiple of 128 (checked). Not aliased: the creator initialises before any producer or
    // consumer attaches (they refuse while `ready == 0`), and all-zero is a valid bit pattern for
    // every field (plain integers and atomics), so writing zeroes then fields is sound.
    unsafe {
        core::ptr::write_bytes(base, 0, RING_HEADER_SIZE);
        let h = base.cast::<RingHeader>();
        (*h).magic = RING_MAGIC;
        (*h).layout_version = LAYOUT_VERSION;
        (*h).direction = p.direction as u32;
        (*h).capacity = p.capacity;
        (*h).max_payload = p.max_payload;
        (*h).creator_pid = p.creator_pid;
        (*h).creator_start_time = p.creator_start_time;
        (*h).epoch = p.epoch;
        // Relaxed: published by the Release store of `ready` below.
        (*h).generation.store(p.generation, Ordering::Relaxed);
        // Release pairs with the Acquire load of `ready` in `check_header`: a side that sees
        // ready = 1 sees every field above.
        (*h).ready.store(1, Ordering::Release);
    }
    Ok(())
}

/// Resets a ring in place to an empty state under a new generation (creator only).
///
/// The caller must know that no producer or consumer is using the ring any more (its peer died,
/// checked through its pidfd) or that the survivors will notice the generation change before
/// touching the data: a live side sees `generation != its own` via `is_current()` and must
/// re-attach. Nothing queued under the old generation is delivered afterwards.
pub fn reset(mem: &dyn Memory, offset: usize, new_generation: u64) -> Result<(), RingAttachError> {
    let h = header_at(mem, offset)?;
    // Relaxed: the fence below orders it before the zeroing stores; nothing is published by it.
    h.ready.store(0, Ordering::Relaxed);
    // SeqCst fence (a Release fence would do; SeqCst keeps it obviously strong): orders the
    // `ready = 0` store before the zeroing stores below, as a seqlock writer does. A side that
    // observes a zeroed position and then loads `ready`/`generation` with Acquire (as
    // `is_current` does) sees `ready = 0` or the new generation, never the old state with new
    // positions. The creator still must not reset while a side is mid-attach (see above).
    fence(Ordering::SeqCst);
    h.tail.0.store(0, Ordering::Relaxed);
    h.head.0.store(0, Ordering::Relaxed);
    h.armed.0.store(0, Ordering::Relaxed);
    h.generation.store(new_generation, Ordering::Relaxed);
    // Release pairs with the sides' Acquire loads of `ready`/`generation`.
    h.ready.store(1, Ordering::Release);
    Ok(())
}

fn check_params(mem: &dyn Memory, offset: usize, p: &RingParams) -> Result<(), InitError> {
    if !p.capacity.is_power_of_two() || p.capacity < MIN_CAPACITY {
        return Err(InitError::BadCapacity(p.capacity));
    }
    if p.max_payload > u32::MAX as u64 || frame_size(p.max_payload as usize) as u64 > p.capacity / 2
    {
        return Err(InitError::BadMaxPayload(p.max_payload));
    }
    let needed = ring_bytes(p.capacity) as u64;
    let len = mem.len().saturating_sub(offset) as u64;
    if !offset.is_multiple_of(128) || len < needed {
        return Err(InitError::RegionTooSmall { needed, len });
    }
    Ok(())
}

/// Borrows and checks the ring header at `offset` (everything but `ready`).
fn header_at(mem: &dyn Memory, offset: usize) -> Result<&RingHeader, RingAttachError> {
    let len = mem.len().saturating_sub(offset) as u64;
    if !offset.is_multiple_of(128) || len < RING_HEADER_SIZE as u64 {
        return Err(RingAttachError::Truncated { len, needed: RING_HEADER_SIZE as u64 });
    }
    // SAFETY: in bounds (checked just above), aligned (128-aligned base per the Memory contract,
    // offset a multiple of 128). Shared access only: every field another process may write
    // concurrently is an atomic; the plain fields are written once before `ready` is published.
    // Any bit pattern is valid for the header's integer and atomic fields.
    let h = unsafe { &*mem.as_ptr().add(offset).cast::<RingHeader>() };
    Ok(h)
}

/// Checks `ready`, magic, version, geometry and size; returns the header on success.
fn check_header(mem: &dyn Memory, offset: usize) -> Result<&RingHeader, RingAttachError> {
    let h = header_at(mem, offset)?;
    // Acquire pairs with the creator's Release store of `ready` in `init`/`reset`.
    if h.ready.load(Ordering::Acquire) != 1 {
        return Err(RingAttachError::NotReady);
    }
    // SAFETY-free reads: plain fields, immutable after `ready` (the Acquire above orders them).
    // A volatile read is not needed: the creator never writes them again.
    if h.magic != RING_MAGIC {
        return Err(RingAttachError::BadMagic(h.magic));
    }
    if h.layout_version != LAYOUT_VERSION {
        return Err(RingAttachError::VersionMismatch {
            found: h.layout_version,
            expected: LAYOUT_VERSION,
        });
    }
    let cap = h.capacity;
    if !cap.is_power_of_two()
        || cap < MIN_CAPACITY
        || h.max_payload > u32::MAX as u64
        || frame_size(h.max_payload as usize) as u64 > cap / 2
        || Direction::from_u32(h.direction).is_none()
    {
        return Err(RingAttachError::BadGeometry);
    }
    let needed = ring_bytes(cap) as u64;
    let len = mem.len().saturating_sub(offset) as u64;
    if len < needed {
        return Err(RingAttachError::Truncated { len, needed });
    }
    Ok(h)
}

/// The parts of an attached ring both sides need.
struct Attached {
    /// Keeps the mapping alive as long as the raw pointers below are used.
    _mem: Arc<dyn Memory>,
    hdr: *const RingHeader,
    data: *mut u8,
    cap: u64,
    mask: u64,
    max_payload: u64,
    direction: Direction,
    generation: u64,
    epoch: u64,
}

// SAFETY: the raw pointers point into `mem`, which is Send + Sync and kept alive by the Arc; the
// single-producer/single-consumer discipline (one Producer, one Consumer, neither Clone) is what
// makes the data-area accesses exclusive, not thread affinity.
unsafe impl Send for Attached {}

impl fmt::Debug for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.cap)
            .field("max_payload", &self.max_payload)
            .field("direction", &self.direction)
            .field("epoch", &self.epoch)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Attached {
    fn new(mem: Arc<dyn Memory>, offset: usize) -> Result<Self, RingAttachError> {
        let h = check_header(&*mem, offset)?;
        let hdr: *const RingHeader = h;
        let cap = h.capacity;
        let max_payload = h.max_payload;
        let direction = Direction::from_u32(h.direction).ok_or(RingAttachError::BadGeometry)?;
        // Acquire: pairs with the creator's Release store in `reset`.
        let generation = h.generation.load(Ordering::Acquire);
        let epoch = h.epoch;
        let data = mem.as_ptr().wrapping_add(offset + RING_HEADER_SIZE);
        Ok(Self {
            _mem: mem,
            hdr,
            data,
            cap,
            mask: cap - 1,
            max_payload,
            direction,
            generation,
            epoch,
        })
    }

    #[inline]
    fn hdr(&self) -> &RingHeader {
        // SAFETY: `hdr` points into `self.mem`, which the Arc keeps alive, and was checked
        // in bounds and aligned by `check_header`. Shared reference only (see `header_at`).
        unsafe { &*self.hdr }
    }

    fn is_current(&self) -> bool {
        let h = self.hdr();
        // Acquire pairs with the creator's Release stores in `reset`.
        h.ready.load(Ordering::Acquire) == 1
            && h.generation.load(Ordering::Acquire) == self.generation
    }
}

/// The producing side of a ring. Exactly one per ring; not `Clone`.
#[derive(Debug)]
pub struct Producer {
    r: Attached,
    doorbell: Option<Doorbell>,
    /// Local: one past the last committed frame (published or not).
    tail: u64,
    /// Local: the last value stored to the shared `tail`.
    published: u64,
    /// Local cache of the consumer's `head`.
    cached_head: u64,
    frames: u64,
    bytes: u64,
    full_events: u64,
    doorbells: u64,
    max_depth: u64,
    /// True from a `Full` until the next successful reserve: `full_events` counts episodes, not
    /// retries, so a producer that retries in a loop does not inflate it.
    in_full: bool,
    counters_dirty: bool,
}

/// Space reserved in place by [`Producer::reserve`]; write the payload into [`Self::buf`], then
/// [`Self::commit`]. Dropping it without commit leaves the ring unchanged.
#[derive(Debug)]
pub struct Reservation<'a> {
    p: &'a mut Producer,
    /// Bytes skipped (implicit wrap or padding record) before the frame.
    skip: u64,
    max: usize,
}

impl Producer {
    /// Attaches as the ring's producer. `doorbell` is the consumer's FIFO (None: the consumer
    /// polls, e.g. in tests). Records this process's pid in the producer counters line.
    pub fn attach(
        mem: Arc<dyn Memory>,
        offset: usize,
        doorbell: Option<Doorbell>,
    ) -> Result<Self, RingAttachError> {
        let r = Attached::new(mem, offset)?;
        let h = r.hdr();
        // Relaxed for our own `tail`: only a previous producer of this generation wrote it, and we
        // only continue from the number (we read no bytes it wrote). Acquire for the consumer's
        // `head`: pairs with its Release store, so its reads below head are done before we
        // overwrite those bytes.
        let tail = h.tail.0.load(Ordering::Relaxed);
        let head = h.head.0.load(Ordering::Acquire);
        if !tail.is_multiple_of(8) || head > tail || tail - head > r.cap {
            return Err(RingAttachError::BadGeometry);
        }
        // Relaxed: only this producer writes its counters line; readers tolerate staleness.
        h.producer.pid.store(std::process::id(), Ordering::Relaxed);
        let frames = h.producer.frames.load(Ordering::Relaxed);
        let bytes = h.producer.bytes.load(Ordering::Relaxed);
        let full_events = h.producer.full_events.load(Ordering::Relaxed);
        let doorbells = h.producer.doorbells.load(Ordering::Relaxed);
        let max_depth = h.producer.max_depth.load(Ordering::Relaxed);
        Ok(Self {
            r,
            doorbell,
            tail,
            published: tail,
            cached_head: head,
            frames,
            bytes,
            full_events,
            doorbells,
            max_depth,
            in_full: false,
            counters_dirty: false,
        })
    }

    /// The shared header (for counters, identity and the consumer's pid).
    pub fn header(&self) -> &RingHeader {
        self.r.hdr()
    }

    /// Largest payload a frame may carry.
    pub fn max_payload(&self) -> usize {
        self.r.max_payload as usize
    }

    /// Data-area bytes.
    pub fn capacity(&self) -> u64 {
        self.r.cap
    }

    /// The generation this producer attached under.
    pub fn generation(&self) -> u64 {
        self.r.generation
    }

    /// The creator's epoch.
    pub fn epoch(&self) -> u64 {
        self.r.epoch
    }

    /// False once the creator reset the ring (new generation) since this producer attached.
    pub fn is_current(&self) -> bool {
        self.r.is_current()
    }

    /// Bytes committed but not yet consumed, as far as this producer knows (cached head).
    pub fn depth(&self) -> u64 {
        self.tail - self.cached_head
    }

    /// Skip before a frame of `need` bytes at the current tail, per the wrap rule.
    #[inline]
    fn skip_for(&self, need: u64) -> u64 {
        let rem = self.r.cap - (self.tail & self.r.mask);
        if rem < HEADER_SIZE as u64 || need > rem { rem } else { 0 }
    }

    /// Ensures `total` bytes are free, refreshing the cached head once if needed.
    #[inline]
    fn ensure_space(&mut self, total: u64) -> Result<(), PushError> {
        if self.r.cap - (self.tail - self.cached_head) >= total {
            return Ok(());
        }
        // Acquire pairs with the consumer's Release store of `head`: once we see head = h, the
        // consumer has finished reading every byte below h, so we may overwrite them.
        let head = self.r.hdr().head.0.load(Ordering::Acquire);
        // An honest consumer's head never goes back and never passes what we published (it
        // cannot have read frames it could not see). Trusting a head past `published` would let
        // us overwrite committed, unpublished frames; one behind our cache would break the
        // `tail - head <= cap` arithmetic. Either is a corrupt (or reset) ring.
        if head < self.cached_head || head > self.published {
            return Err(PushError::Corrupt);
        }
        self.cached_head = head;
        if self.r.cap - (self.tail - head) >= total {
            return Ok(());
        }
        if !self.in_full {
            self.in_full = true;
            self.full_events += 1;
            self.counters_dirty = true;
        }
        // Let the consumer see what we have so it can free space (and wake it if it sleeps).
        self.flush();
        Err(PushError::Full)
    }

    /// True if a payload of `len` bytes would fit now (refreshing the cached head if needed).
    /// Does not count a full event.
    pub fn has_room(&mut self, len: usize) -> bool {
        if len as u64 > self.r.max_payload {
            return false;
        }
        let need = frame_size(len) as u64;
        let total = self.skip_for(need) + need;
        if self.r.cap - (self.tail - self.cached_head) >= total {
            return true;
        }
        // Acquire: as in `ensure_space`. An impossible head is ignored here (the next reserve
        // reports it as `Corrupt`).
        let head = self.r.hdr().head.0.load(Ordering::Acquire);
        if head >= self.cached_head && head <= self.published {
            self.cached_head = head;
        }
        self.r.cap - (self.tail - self.cached_head) >= total
    }

    /// Reserves room for a payload of up to `max` bytes, in place.
    pub fn reserve(&mut self, max: usize) -> Result<Reservation<'_>, PushError> {
        if max as u64 > self.r.max_payload {
            return Err(PushError::TooLarge { len: max, max: self.r.max_payload as usize });
        }
        let need = frame_size(max) as u64;
        let skip = self.skip_for(need);
        self.ensure_space(skip + need)?;
        self.in_full = false;
        Ok(Reservation { p: self, skip, max })
    }

    /// Copies one frame into the ring. Not visible to the consumer until [`Self::flush`] (or a
    /// later `Full`, which flushes).
    #[inline]
    pub fn try_push(
        &mut self,
        flowid: FlowId,
        kind: Kind,
        flags: u16,
        payload: &[u8],
    ) -> Result<(), PushError> {
        let mut r = self.reserve(payload.len())?;
        r.buf()[..payload.len()].copy_from_slice(payload);
        r.commit(payload.len(), flowid, kind, flags)
    }

    /// Writes the frame at `tail + skip` and advances the local tail.
    fn commit_at(&mut self, skip: u64, len: usize, flowid: FlowId, kind: Kind, flags: u16) {
        let d = self.r.data;
        if skip >= HEADER_SIZE as u64 {
            let pad = FrameHeader {
                len: (skip - HEADER_SIZE as u64) as u32,
                kind: Kind::Pad as u16,
                flags: 0,
                flowid: 0,
            };
            let off = (self.tail & self.r.mask) as usize;
            // SAFETY: in bounds: off + 16 <= cap because skip = cap - off >= 16. Aligned: off is
            // a multiple of 8 (positions advance by multiples of 8) and the data area is
            // 128-aligned. Exclusive: the bytes lie between tail and tail + skip + need, which
            // `ensure_space` proved free (the consumer stopped reading below `head`), and the
            // consumer reads nothing at or past the published tail.
            unsafe { d.add(off).cast::<FrameHeader>().write(pad) };
        }
        let pos = self.tail + skip;
        let off = (pos & self.r.mask) as usize;
        let h = FrameHeader { len: len as u32, kind: kind as u16, flags, flowid: flowid.0 };
        // SAFETY: in bounds: after the wrap rule, off + frame_size(len) <= cap. Aligned and
        // exclusive: as for the padding record above.
        unsafe { d.add(off).cast::<FrameHeader>().write(h) };
        self.tail = pos + frame_size(len) as u64;
        self.frames += 1;
        self.bytes += len as u64;
        self.counters_dirty = true;
    }

    /// Publishes every committed frame (one Release store) and rings the consumer's doorbell if
    /// it is armed. Returns true if it rang. Call once per batch.
    pub fn flush(&mut self) -> bool {
        if self.tail == self.published {
            self.store_counters();
            return false;
        }
        self.published = self.tail;
        let depth = self.tail - self.cached_head;
        if depth > self.max_depth {
            self.max_depth = depth;
        }
        let rang = if publish_tail(self.r.hdr(), self.tail) {
            if let Some(db) = &self.doorbell {
                // EAGAIN (FIFO full) means already rung: a wake-up is pending either way. Other
                // errors cannot happen on a FIFO we hold O_RDWR; counted as rung regardless.
                let _ = db.ring();
            }
            self.doorbells += 1;
            true
        } else {
            false
        };
        self.counters_dirty = true;
        self.store_counters();
        rang
    }

    fn store_counters(&mut self) {
        if !self.counters_dirty {
            return;
        }
        self.counters_dirty = false;
        let c = &self.r.hdr().producer;
        // Relaxed: only this producer writes these; readers accept values one batch apart.
        c.frames.store(self.frames, Ordering::Relaxed);
        c.bytes.store(self.bytes, Ordering::Relaxed);
        c.full_events.store(self.full_events, Ordering::Relaxed);
        c.doorbells.store(self.doorbells, Ordering::Relaxed);
        c.max_depth.store(self.max_depth, Ordering::Relaxed);
    }
}

impl Reservation<'_> {
    /// The payload area: `max` bytes, in the shared segment. It holds stale bytes from earlier
    /// frames, not zeroes. (A `&mut` into memory another process maps writable: see the module
    /// docs, "Untrusted bytes".)
    pub fn buf(&mut self) -> &mut [u8] {
        let pos = self.p.tail + self.skip;
        let off = (pos & self.p.r.mask) as usize + HEADER_SIZE;
        // SAFETY: in bounds: off - 16 + frame_size(max) <= cap by the wrap rule. Exclusive: the
        // bytes are free (`ensure_space`), the consumer does not read past the published tail,
        // and the &mut borrow of the Reservation prevents a second view from this side.
        unsafe { core::slice::from_raw_parts_mut(self.p.r.data.add(off), self.max) }
    }

    /// Commits the first `len` bytes of [`Self::buf`] as one frame.
    pub fn commit(
        self,
        len: usize,
        flowid: FlowId,
        kind: Kind,
        flags: u16,
    ) -> Result<(), PushError> {
        if len > self.max {
            return Err(PushError::TooLarge { len, max: self.max });
        }
        self.p.commit_at(self.skip, len, flowid, kind, flags);
        Ok(())
    }
}

/// Producer half of the doorbell handshake: publishes `tail`, then reports whether the consumer
/// was armed (and disarms it). The caller writes one doorbell byte when this returns true.
///
/// SYNC POINT: store-buffering with [`arm_and_recheck`].
#[inline]
pub fn publish_tail(h: &RingHeader, tail: u64) -> bool {
    // Release pairs with the consumer's Acquire load of `tail`: the frame bytes written before
    // this store are visible to a consumer that sees the new tail.
    h.tail.0.store(tail, Ordering::Release);
    // SeqCst fence: forbids the store-buffering outcome where our load of `armed` below sees 0
    // (consumer not armed yet) while the consumer's re-check of `tail` after its own fence sees
    // the old tail: then it would sleep with data pending and nobody would ring.
    fence(Ordering::SeqCst);
    // Relaxed load first: the fence already orders it after the tail store, which is all the
    // argument needs; it skips the locked swap in the common case (consumer busy, not armed).
    // If it sees 1, the swap (an RMW, so it reads the latest value) decides: swap, not store,
    // so exactly one producer flush rings per arming of the consumer, and a consumer that
    // disarmed itself meanwhile (it saw the data) is not rung. Relaxed for both: `armed` carries
    // no data; the consumer reads frames only after its own Acquire load of `tail`.
    h.armed.0.load(Ordering::Relaxed) != 0 && h.armed.0.swap(0, Ordering::Relaxed) != 0
}

/// Consumer half of the doorbell handshake: arm, fence, re-check. Returns true if the consumer
/// may sleep (the ring is still empty at `head`); false if data arrived, in which case `armed`
/// is cleared again.
///
/// The caller must have drained its FIFO before calling (a byte rung after this point wakes it).
///
/// SYNC POINT: store-buffering with [`publish_tail`].
#[inline]
pub fn arm_and_recheck(h: &RingHeader, head: u64) -> bool {
    // Relaxed store: ordered before the load below by the SeqCst fence.
    h.armed.0.store(1, Ordering::Relaxed);
    // SeqCst fence: pairs with the producer's fence in `publish_tail` (see there).
    fence(Ordering::SeqCst);
    // Acquire pairs with the producer's Release store of `tail`.
    if h.tail.0.load(Ordering::Acquire) != head {
        // Data arrived: do not sleep. Relaxed: `armed` carries no data. A racing producer swap
        // may already have cleared it and be ringing: that byte is either drained before the
        // next arming or causes one spurious wake-up, never a lost one.
        h.armed.0.store(0, Ordering::Relaxed);
        return false;
    }
    true
}

/// The consuming side of a ring. Exactly one per ring; not `Clone`.
#[derive(Debug)]
pub struct Consumer {
    r: Attached,
    /// Local: position of the next frame to read.
    head: u64,
    /// Local: the last value stored to the shared `head`.
    published: u64,
    /// Local cache of the producer's `tail`.
    cached_tail: u64,
    /// Bytes (skip + frame) the peeked frame occupies; 0 when nothing is peeked.
    pending: u64,
    /// Payload bytes of the peeked frame.
    pending_bytes: u64,
    /// First corruption seen; the ring is dead for this consumer after it.
    corrupt: Option<RingError>,
    frames: u64,
    bytes: u64,
    sleeps: u64,
    wakeups: u64,
    corrupt_count: u64,
    counters_dirty: bool,
    /// Publish `head` once this many bytes are consumed since the last publish.
    publish_every: u64,
}

impl Consumer {
    /// Attaches as the ring's consumer. Records this process's pid in the consumer counters line.
    pub fn attach(mem: Arc<dyn Memory>, offset: usize) -> Result<Self, RingAttachError> {
        let r = Attached::new(mem, offset)?;
        let h = r.hdr();
        // Relaxed for our own `head` (we continue where a previous consumer of this generation
        // stopped); Acquire for the producer's tail (pairs with its Release store).
        let head = h.head.0.load(Ordering::Relaxed);
        let tail = h.tail.0.load(Ordering::Acquire);
        if !head.is_multiple_of(8) || head > tail || tail - head > r.cap {
            return Err(RingAttachError::BadGeometry);
        }
        // Relaxed: only this consumer writes its counters line.
        h.consumer.pid.store(std::process::id(), Ordering::Relaxed);
        let c = &h.consumer;
        let (frames, bytes, sleeps, wakeups, corrupt_count) = (
            c.frames.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed),
            c.sleeps.load(Ordering::Relaxed),
            c.wakeups.load(Ordering::Relaxed),
            c.corrupt.load(Ordering::Relaxed),
        );
        let publish_every = (r.cap / 8).max(64);
        Ok(Self {
            r,
            head,
            published: head,
            cached_tail: tail,
            pending: 0,
            pending_bytes: 0,
            corrupt: None,
            frames,
            bytes,
            sleeps,
            wakeups,
            corrupt_count,
            counters_dirty: false,
            publish_every,
        })
    }

    /// The shared header (for counters, identity and the producer's pid).
    pub fn header(&self) -> &RingHeader {
        self.r.hdr()
    }

    /// Largest payload a frame may carry.
    pub fn max_payload(&self) -> usize {
        self.r.max_payload as usize
    }

    /// Data-area bytes.
    pub fn capacity(&self) -> u64 {
        self.r.cap
    }

    /// The generation this consumer attached under.
    pub fn generation(&self) -> u64 {
        self.r.generation
    }

    /// The creator's epoch.
    pub fn epoch(&self) -> u64 {
        self.r.epoch
    }

    /// False once the creator reset the ring since this consumer attached: re-attach.
    pub fn is_current(&self) -> bool {
        self.r.is_current()
    }

    /// The first corruption seen, if any.
    pub fn corruption(&self) -> Option<RingError> {
        self.corrupt
    }

    fn fail(&mut self, at: u64, what: Corruption) -> RingError {
        let e = RingError::Corrupt { at, what };
        // A dead ring has nothing to release: a `release` after the error must not move `head`.
        self.pending = 0;
        if self.corrupt.is_none() {
            self.corrupt = Some(e);
            self.corrupt_count += 1;
            // Relaxed: only this consumer writes it.
            self.r.hdr().consumer.corrupt.store(self.corrupt_count, Ordering::Relaxed);
        }
        e
    }

    /// True if a frame is waiting (refreshes the cached tail when it must).
    /// A peeked but unreleased frame counts; so may trailing padding (peek then returns None).
    pub fn has_data(&self) -> bool {
        if self.head != self.cached_tail {
            return true;
        }
        // Acquire pairs with the producer's Release store of `tail`.
        self.r.hdr().tail.0.load(Ordering::Acquire) != self.head
    }

    /// Borrows the next frame in place, or `None` if the ring is empty. Call [`Self::release`]
    /// when done with it; peeking again without releasing returns the same frame.
    ///
    /// The header is copied and validated; any impossible value returns [`RingError::Corrupt`]
    /// (counted once in `consumer.corrupt`), and every later call returns the same error. The
    /// payload is borrowed from the shared segment: see the module docs ("Untrusted bytes") for
    /// why a misbehaving producer could change its bytes under the reader, and treat it as
    /// untrusted input. Finding the ring empty publishes `head`.
    pub fn peek(&mut self) -> Result<Option<Frame<'_>>, RingError> {
        if let Some(e) = self.corrupt {
            return Err(e);
        }
        let cap = self.r.cap;
        let mask = self.r.mask;
        let mut pos = self.head;
        loop {
            if pos == self.cached_tail {
                // Acquire pairs with the producer's Release store of `tail`: the frame bytes
                // below the new tail are visible.
                let t = self.r.hdr().tail.0.load(Ordering::Acquire);
                if t < self.head || t - self.head > cap || !t.is_multiple_of(8) {
                    return Err(
                        self.fail(self.head, Corruption::Positions { head: self.head, tail: t })
                    );
                }
                self.cached_tail = t;
                if pos == t {
                    // Only padding (or nothing) was left: consume it now, no frame to release.
                    self.head = pos;
                    self.pending = 0;
                    // Caught up: hand every consumed byte back now (one store, and only when
                    // `head` moved), so a consumer that polls or spins between batches never
                    // holds back space a full producer is waiting for.
                    self.publish();
                    return Ok(None);
                }
            }
            let avail = self.cached_tail - pos;
            let off = (pos & mask) as usize;
            let rem = cap - off as u64;
            if rem < HEADER_SIZE as u64 {
                if avail < rem {
                    return Err(
                        self.fail(pos, Corruption::Positions { head: pos, tail: self.cached_tail })
                    );
                }
                pos += rem;
                continue;
            }
            if avail < HEADER_SIZE as u64 {
                return Err(
                    self.fail(pos, Corruption::Positions { head: pos, tail: self.cached_tail })
                );
            }
            // SAFETY: in bounds: off + 16 <= cap (rem >= 16). Aligned: off is a multiple of 8
            // (positions advance by multiples of 8; tail alignment is checked above) and the
            // data area is 128-aligned. Race-free: the bytes lie below the published tail (avail
            // >= 16), which the producer will not touch again until we publish a head past them.
            // A hostile producer could still write them: `read_volatile` copies the header once
            // and everything below uses only the copy.
            let fh: FrameHeader =
                unsafe { core::ptr::read_volatile(self.r.data.add(off).cast::<FrameHeader>()) };
            let Some(kind) = Kind::from_u16(fh.kind).filter(|k| k.allowed(self.r.direction)) else {
                return Err(self.fail(pos, Corruption::Kind(fh.kind)));
            };
            if kind == Kind::Pad {
                if fh.len as u64 + HEADER_SIZE as u64 != rem || avail < rem {
                    return Err(self.fail(pos, Corruption::Pad(fh.len)));
                }
                pos += rem;
                continue;
            }
            let size = frame_size(fh.len as usize) as u64;
            if fh.len as u64 > self.r.max_payload || size > rem || size > avail {
                return Err(self.fail(pos, Corruption::Length(fh.len)));
            }
            if let Some(n) = kind.fixed_len() {
                if n != fh.len as usize {
                    return Err(
                        self.fail(pos, Corruption::KindLength { kind: fh.kind, len: fh.len })
                    );
                }
            }
            self.pending = pos + size - self.head;
            self.pending_bytes = fh.len as u64;
            // SAFETY: in bounds: off + 16 + len <= off + size <= cap (checked). Race-free: below
            // the published tail, see the header read above (for an honest producer; a hostile
            // one is the documented compromise, module docs "Untrusted bytes"). The slice lives
            // no longer than the &mut self borrow, and `release` (which lets the producer reuse
            // the bytes) needs &mut self, so the borrow ends first.
            let payload = unsafe {
                core::slice::from_raw_parts(self.r.data.add(off + HEADER_SIZE), fh.len as usize)
            };
            return Ok(Some(Frame { flowid: FlowId(fh.flowid), kind, flags: fh.flags, payload }));
        }
    }

    /// Consumes the frame returned by the last [`Self::peek`] (and any padding before it).
    /// Publishes `head` when an eighth of the ring was consumed since the last publish.
    #[inline]
    pub fn release(&mut self) {
        if self.pending == 0 {
            return;
        }
        self.head += self.pending;
        self.pending = 0;
        self.frames += 1;
        self.bytes += self.pending_bytes;
        self.counters_dirty = true;
        if self.head - self.published >= self.publish_every {
            self.publish();
        }
    }

    /// Consumes up to `max` frames, calling `f` on each in place, then publishes `head` once.
    /// Returns how many frames were handled. Stops early (after publishing) on corruption.
    pub fn drain<F: FnMut(Frame<'_>)>(&mut self, max: usize, mut f: F) -> Result<usize, RingError> {
        let mut n = 0;
        while n < max {
            match self.peek() {
                Ok(Some(fr)) => f(fr),
                Ok(None) => break,
                Err(e) => {
                    // Hand back the space of the frames handled before the bad one.
                    self.publish();
                    return Err(e);
                }
            }
            self.release();
            n += 1;
        }
        self.publish();
        Ok(n)
    }

    /// Stores the local `head` (Release) so the producer may reuse the space, and the counters.
    pub fn publish(&mut self) {
        if self.head != self.published {
            self.published = self.head;
            // Release pairs with the producer's Acquire load of `head`: our reads of the frames
            // below head happen before the producer overwrites them.
            self.r.hdr().head.0.store(self.head, Ordering::Release);
        }
        if self.counters_dirty {
            self.counters_dirty = false;
            let c = &self.r.hdr().consumer;
            // Relaxed: only this consumer writes these.
            c.frames.store(self.frames, Ordering::Relaxed);
            c.bytes.store(self.bytes, Ordering::Relaxed);
            c.sleeps.store(self.sleeps, Ordering::Relaxed);
            c.wakeups.store(self.wakeups, Ordering::Relaxed);
        }
    }

    /// Spins up to `budget` waiting for data. Returns true as soon as data is there.
    pub fn spin(&mut self, budget: Duration) -> bool {
        if budget.is_zero() {
            return self.has_data();
        }
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                if self.has_data() {
                    return true;
                }
                spin_hint();
            }
            if start.elapsed() >= budget {
                return self.has_data();
            }
        }
    }

    /// Gets ready to sleep on `doorbell`: publishes, drains the FIFO, arms, fences and re-checks.
    /// Returns true if the caller may now block in epoll on the FIFO; false if data is waiting.
    pub fn prepare_sleep(&mut self, doorbell: &Doorbell) -> bool {
        self.publish();
        if self.has_data() {
            return false;
        }
        // Drain first: a byte rung after the arm below must stay in the FIFO to wake us.
        let _ = doorbell.drain();
        if arm_and_recheck(self.r.hdr(), self.head) {
            self.sleeps += 1;
            self.counters_dirty = true;
            self.publish();
            true
        } else {
            false
        }
    }

    /// Counts one wake-up from the doorbell (call when epoll reports the FIFO readable).
    pub fn note_wakeup(&mut self) {
        self.wakeups += 1;
        self.counters_dirty = true;
    }
}

/// Heap memory for rings in tests and benchmarks: zeroed, 128-byte aligned.
#[derive(Debug)]
pub struct HeapMemory {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: the allocation is plain bytes owned by this value; all concurrent access goes through
// the rings' atomics and the SPSC discipline.
unsafe impl Send for HeapMemory {}
// SAFETY: as for Send: shared access is mediated by the rings' atomics.
unsafe impl Sync for HeapMemory {}

impl HeapMemory {
    /// Allocates `len` zeroed bytes, 128-aligned.
    pub fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(128), 128)
            .expect("length fits isize after rounding");
        // SAFETY: layout has non-zero size (at least 128).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Self { ptr, layout }
    }

    /// Allocates and initialises one ring at offset 0 (pid and epoch of this process, generation
    /// 1). Panics on impossible parameters: for tests and benchmarks.
    pub fn new_ring(capacity: u64, max_payload: u64, direction: Direction) -> Self {
        let mem = Self::new(ring_bytes(capacity));
        let p = RingParams {
            capacity,
            max_payload,
            direction,
            creator_pid: std::process::id(),
            creator_start_time: 0,
            epoch: 1,
            generation: 1,
        };
        init(&mem, 0, &p).expect("valid ring parameters");
        mem
    }
}

impl Drop for HeapMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this exact layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

// SAFETY: ptr is non-null, 128-aligned, valid for layout.size() bytes until drop, never moves.
unsafe impl Memory for HeapMemory {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::frame::{ALIGN, Hello};

    /// Smallest ring: 256 data bytes, so every offset near the end is a few pushes away.
    const CAP: u64 = MIN_CAPACITY;
    /// Largest payload that still fits twice in CAP: frame_size(112) = 128 = CAP / 2.
    const MAXP: u64 = 112;

    fn ring_at(
        cap: u64,
        maxp: u64,
        dir: Direction,
        start: u64,
    ) -> (Arc<HeapMemory>, Producer, Consumer) {
        let mem = Arc::new(HeapMemory::new_ring(cap, maxp, dir));
        if start != 0 {
            let h = header_at(&*mem, 0).unwrap();
            h.tail.0.store(start, Ordering::Relaxed);
            h.head.0.store(start, Ordering::Relaxed);
        }
        let tx = Producer::attach(mem.clone(), 0, None).unwrap();
        let rx = Consumer::attach(mem.clone(), 0).unwrap();
        (mem, tx, rx)
    }

    fn ring(dir: Direction) -> (Arc<HeapMemory>, Producer, Consumer) {
        ring_at(CAP, MAXP, dir, 0)
    }

    fn pattern(seed: u64, n: usize) -> Vec<u8> {
        (0..n).map(|k| (seed as u8).wrapping_mul(31).wrapping_add(k as u8)).collect()
    }

    /// Writes a raw frame header at data-area offset `off` (test-only corruption).
    fn poke(mem: &HeapMemory, off: usize, len: u32, kind: u16, flowid: u64) {
        assert!(off.is_multiple_of(ALIGN) && off + HEADER_SIZE <= CAP as usize);
        let fh = FrameHeader { len, kind, flags: 0, flowid };
        // SAFETY: off + 16 is inside the data area of the ring `mem` holds (all callers pass
        // offsets below the capacity minus 16, multiples of 8), the data area is 8-aligned, and
        // the test is single-threaded: no other access to these bytes is live.
        unsafe { mem.as_ptr().add(RING_HEADER_SIZE + off).cast::<FrameHeader>().write(fh) }
    }

    fn shared_tail(c: &Consumer) -> u64 {
        c.header().tail.0.load(Ordering::Relaxed)
    }

    fn shared_head(c: &Consumer) -> u64 {
        c.header().head.0.load(Ordering::Relaxed)
    }

    fn set_tail(c: &Consumer, t: u64) {
        c.header().tail.0.store(t, Ordering::Release);
    }

    /// Asserts that the consumer reports exactly `what` at `at`, keeps reporting it, counts it
    /// once, and that `release` after the error does not move `head`.
    fn assert_corrupt(rx: &mut Consumer, at: u64, what: Corruption) {
        let want = RingError::Corrupt { at, what };
        rx.publish();
        let head = shared_head(rx);
        assert_eq!(rx.peek().map(|f| f.map(|f| f.kind)), Err(want));
        rx.release();
        assert_eq!(rx.peek().map(|f| f.is_some()), Err(want), "corruption is sticky");
        assert_eq!(rx.drain(10, |_| panic!("no frame from a corrupt ring")), Err(want));
        assert!(!rx.has_data() || rx.corruption().is_some());
        assert_eq!(rx.corruption(), Some(want));
        assert_eq!(rx.header().consumer.corrupt.load(Ordering::Relaxed), 1, "counted once");
        assert_eq!(shared_head(rx), head, "head did not move past a corrupt frame");
    }

    // ---------------------------------------------------------------- index math and geometry

    #[test]
    fn skip_rule_for_every_offset_and_size() {
        let (_m, mut tx, _rx) = ring(Direction::ToMd);
        for off in (0..CAP).step_by(ALIGN) {
            tx.tail = 5 * CAP + off; // positions are monotonic; only `pos & mask` matters
            for len in 0..=MAXP as usize {
                let need = frame_size(len) as u64;
                let rem = CAP - off;
                let want = if rem == 8 {
                    8 // too small for a header: implicit wrap, no record
                } else if need > rem {
                    rem // a padding record of rem - 16 payload bytes
                } else {
                    0
                };
                assert_eq!(tx.skip_for(need), want, "off {off} len {len}");
                // Whatever the skip, the frame then lies wholly inside the data area.
                let start = (tx.tail + want) & (CAP - 1);
                assert!(start + need <= CAP, "off {off} len {len}");
            }
        }
        assert_eq!(ring_bytes(CAP), RING_HEADER_SIZE + 256);
    }

    #[test]
    fn positions_far_from_zero_wrap_by_mask() {
        let start = (1u64 << 40) + CAP - 24; // 24 bytes before the end of the data area
        let (_m, mut tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
        for i in 0..1000u64 {
            let p = pattern(i, (i % 50) as usize);
            tx.try_push(FlowId(i), Kind::Data, 0, &p).unwrap();
            tx.flush();
            let f = rx.peek().unwrap().unwrap();
            assert_eq!((f.flowid, f.payload), (FlowId(i), &p[..]));
            rx.release();
        }
        rx.publish();
        assert!(shared_head(&rx) > start + 1000 * 16);
        assert_eq!(shared_head(&rx), shared_tail(&rx));
    }

    #[test]
    fn init_rejects_bad_geometry() {
        let mem = HeapMemory::new(ring_bytes(1024));
        let p = |capacity, max_payload| RingParams {
            capacity,
            max_payload,
            direction: Direction::ToMd,
            creator_pid: 1,
            creator_start_time: 0,
            epoch: 1,
            generation: 1,
        };
        assert_eq!(init(&mem, 0, &p(1000, 10)), Err(InitError::BadCapacity(1000)));
        assert_eq!(init(&mem, 0, &p(128, 10)), Err(InitError::BadCapacity(128)));
        assert_eq!(init(&mem, 0, &p(1024, 497)), Err(InitError::BadMaxPayload(497)));
        assert!(init(&mem, 0, &p(1024, 496)).is_ok());
        assert!(matches!(init(&mem, 0, &p(2048, 10)), Err(InitError::RegionTooSmall { .. })));
        assert!(matches!(init(&mem, 64, &p(256, 10)), Err(InitError::RegionTooSmall { .. })));
    }

    #[test]
    fn attach_checks_header() {
        let mem = Arc::new(HeapMemory::new_ring(CAP, MAXP, Direction::ToIo));
        let h = header_at(&*mem, 0).unwrap();
        h.ready.store(0, Ordering::Relaxed);
        assert_eq!(Consumer::attach(mem.clone(), 0).err(), Some(RingAttachError::NotReady));
        h.ready.store(1, Ordering::Relaxed);
        assert!(Consumer::attach(mem.clone(), 0).is_ok());
        assert!(matches!(
            Producer::attach(mem.clone(), 384, None).err(),
            Some(RingAttachError::Truncated { .. })
        ));
        // Impossible positions at attach.
        h.tail.0.store(8, Ordering::Relaxed);
        h.head.0.store(16, Ordering::Relaxed);
        assert_eq!(Consumer::attach(mem.clone(), 0).err(), Some(RingAttachError::BadGeometry));
        assert_eq!(
            Producer::attach(mem.clone(), 0, None).err(),
            Some(RingAttachError::BadGeometry)
        );
        let mem2 = HeapMemory::new(ring_bytes(CAP));
        assert_eq!(
            Consumer::attach(Arc::new(mem2), 0).err(),
            Some(RingAttachError::NotReady),
            "all-zero memory is not ready"
        );
    }

    // ---------------------------------------------------------------- wrap-around

    /// Every payload size 0..=MAXP at every 8-byte offset of the ring: the frame round-trips,
    /// the skip is what the wrap rule says (implicit for rem == 8, a padding record of exactly
    /// rem - 16 otherwise), nothing is written past the end, and a second frame follows it.
    #[test]
    fn wrap_every_size_at_every_offset() {
        for off in (0..CAP).step_by(ALIGN) {
            for len in 0..=MAXP as usize {
                let start = 3 * CAP + off;
                let (mem, mut tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
                // Poison the last 8 bytes: the implicit wrap must not write them.
                // SAFETY: the last 8 bytes of the data area of `mem`; single-threaded test.
                unsafe {
                    core::ptr::write_bytes(
                        mem.as_ptr().add(RING_HEADER_SIZE + CAP as usize - 8),
                        0xAA,
                        8,
                    )
                };
                let rem = CAP - off;
                let need = frame_size(len) as u64;
                let skip = if rem == 8 || need > rem { rem } else { 0 };
                let p = pattern(len as u64 + off, len);
                tx.try_push(FlowId::new(off as u32, len as u32), Kind::Data, 3, &p).unwrap();
                assert_eq!(rx.peek().unwrap().map(|f| f.kind), None, "invisible before flush");
                tx.flush();
                assert_eq!(shared_tail(&rx), start + skip + need, "off {off} len {len}");
                if skip >= HEADER_SIZE as u64 {
                    // SAFETY: offset `off` < CAP - 16 inside the data area (skip >= 16 means
                    // rem >= 16); single-threaded.
                    let pad = unsafe {
                        mem.as_ptr()
                            .add(RING_HEADER_SIZE + off as usize)
                            .cast::<FrameHeader>()
                            .read()
                    };
                    assert_eq!((pad.kind, pad.len as u64), (Kind::Pad as u16, rem - 16));
                } else if rem == 8 {
                    // SAFETY: the last 8 bytes of the data area; single-threaded.
                    let tail8 = unsafe {
                        core::slice::from_raw_parts(
                            mem.as_ptr().add(RING_HEADER_SIZE + CAP as usize - 8),
                            8,
                        )
                    };
                    assert_eq!(tail8, &[0xAA; 8], "implicit wrap wrote nothing");
                }
                let f = rx.peek().unwrap().expect("the frame");
                assert_eq!(
                    (f.flowid, f.kind, f.flags, f.payload),
                    (FlowId::new(off as u32, len as u32), Kind::Data, 3, &p[..]),
                    "off {off} len {len}"
                );
                rx.release();
                // A second frame right after it, also round-tripping.
                tx.try_push(FlowId(9), Kind::Eof, 0, &[]).unwrap();
                tx.flush();
                let f = rx.peek().unwrap().expect("the second frame");
                assert_eq!((f.flowid, f.kind, f.payload.len()), (FlowId(9), Kind::Eof, 0));
                rx.release();
                assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
                assert_eq!(shared_head(&rx), shared_tail(&rx), "caught up and published");
                assert_eq!(
                    rx.header().consumer.frames.load(Ordering::Relaxed),
                    2,
                    "pads not counted"
                );
                assert_eq!(rx.header().producer.frames.load(Ordering::Relaxed), 2);
            }
        }
    }

    #[test]
    fn trailing_padding_alone_is_consumed_as_empty() {
        let start = CAP - 32;
        let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
        poke(&mem, (CAP - 32) as usize, 16, Kind::Pad as u16, 0);
        set_tail(&rx, CAP);
        assert!(rx.has_data());
        assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
        assert_eq!(shared_head(&rx), CAP, "padding consumed and published");
        assert!(!rx.has_data());
        // Implicit 8-byte wrap alone, too.
        let (_mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, CAP - 8);
        set_tail(&rx, CAP);
        assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
        assert_eq!(shared_head(&rx), CAP);
        assert_eq!(rx.corruption(), None);
    }

    // ---------------------------------------------------------------- full, empty, reserve

    #[test]
    fn empty_ring() {
        let (_m, mut tx, mut rx) = ring(Direction::ToMd);
        assert!(!rx.has_data());
        assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
        assert_eq!(rx.drain(10, |_| panic!("empty")), Ok(0));
        assert!(!tx.flush(), "nothing to publish");
        assert_eq!(tx.depth(), 0);
        rx.release(); // releasing nothing is a no-op
        assert_eq!(shared_head(&rx), 0);
    }

    #[test]
    fn full_is_reported_flushed_counted_per_episode_and_recovers() {
        let (_m, mut tx, mut rx) = ring(Direction::ToMd);
        // 24-byte frames (len 8): 256 / 24 = 10 fit, with 16 bytes to spare.
        let mut n = 0u64;
        while tx.try_push(FlowId(n), Kind::Data, 0, &n.to_le_bytes()) != Err(PushError::Full) {
            n += 1;
            assert!(n <= 10);
        }
        assert_eq!(n, 10);
        // Full flushed: the consumer sees every frame although we never called flush.
        assert_eq!(shared_tail(&rx), 240);
        for _ in 0..5 {
            assert_eq!(tx.try_push(FlowId(99), Kind::Data, 0, &[0; 8]), Err(PushError::Full));
            assert_eq!(tx.reserve(8).err(), Some(PushError::Full));
            assert!(!tx.has_room(8));
        }
        assert!(tx.has_room(0), "a 16-byte frame still fits");
        assert_eq!(tx.header().producer.full_events.load(Ordering::Relaxed), 1, "one episode");
        // Consume one frame: room for exactly one more.
        let f = rx.peek().unwrap().unwrap();
        assert_eq!(f.payload, 0u64.to_le_bytes());
        rx.release();
        rx.publish();
        assert!(tx.has_room(8));
        tx.try_push(FlowId(n), Kind::Data, 0, &n.to_le_bytes()).unwrap();
        assert_eq!(tx.try_push(FlowId(99), Kind::Data, 0, &[0; 8]), Err(PushError::Full));
        tx.flush();
        assert_eq!(tx.header().producer.full_events.load(Ordering::Relaxed), 2, "second episode");
        let mut seen = vec![];
        rx.drain(usize::MAX, |f| seen.push(f.flowid.0)).unwrap();
        assert_eq!(seen, (1..=10).collect::<Vec<_>>(), "order kept, nothing dropped");
    }

    #[test]
    fn reserve_commit_shorter_than_reserved() {
        let (_m, mut tx, mut rx) = ring(Direction::ToMd);
        let mut r = tx.reserve(100).unwrap();
        assert_eq!(r.buf().len(), 100);
        r.buf()[..5].copy_from_slice(b"hello");
        r.commit(5, FlowId(1), Kind::Data, 0).unwrap();
        tx.flush();
        assert_eq!(shared_tail(&rx), frame_size(5) as u64, "only the committed length is used");
        let f = rx.peek().unwrap().unwrap();
        assert_eq!(f.payload, b"hello");
        rx.release();
        // Committing more than reserved is refused and leaves the ring unchanged.
        let r = tx.reserve(4).unwrap();
        assert_eq!(
            r.commit(5, FlowId(2), Kind::Data, 0),
            Err(PushError::TooLarge { len: 5, max: 4 })
        );
        tx.flush();
        assert_eq!(shared_tail(&rx), frame_size(5) as u64);
        assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
    }

    #[test]
    fn dropped_reservation_leaves_ring_unchanged() {
        // Near the end, where the reservation would need a padding record.
        let start = CAP - 48;
        let (mem, mut tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
        poke(&mem, (CAP - 48) as usize, 0x5555, 0x5555, 0x5555);
        {
            let mut r = tx.reserve(MAXP as usize).unwrap();
            r.buf().fill(0xEE);
        }
        assert!(!tx.flush(), "nothing committed");
        assert_eq!(shared_tail(&rx), start);
        assert_eq!(tx.header().producer.frames.load(Ordering::Relaxed), 0);
        // SAFETY: offset CAP - 48 is inside the data area; single-threaded.
        let h = unsafe {
            mem.as_ptr().add(RING_HEADER_SIZE + (CAP - 48) as usize).cast::<FrameHeader>().read()
        };
        assert_eq!(h.kind, 0x5555, "no padding record was written");
        tx.try_push(FlowId(1), Kind::Data, 0, b"x").unwrap();
        tx.flush();
        assert_eq!(shared_tail(&rx), start + 24, "the next frame goes where the reservation was");
        assert_eq!(rx.peek().unwrap().unwrap().payload, b"x");
    }

    #[test]
    fn too_large() {
        let (_m, mut tx, _rx) = ring(Direction::ToMd);
        let big = vec![0u8; MAXP as usize + 1];
        let e = PushError::TooLarge { len: MAXP as usize + 1, max: MAXP as usize };
        assert_eq!(tx.try_push(FlowId(0), Kind::Data, 0, &big), Err(e));
        assert_eq!(tx.reserve(MAXP as usize + 1).err(), Some(e));
        assert_eq!(
            tx.reserve(usize::MAX).err().map(|e| matches!(e, PushError::TooLarge { .. })),
            Some(true)
        );
        assert!(!tx.has_room(MAXP as usize + 1));
        assert_eq!(tx.header().producer.full_events.load(Ordering::Relaxed), 0);
        tx.try_push(FlowId(0), Kind::Data, 0, &big[..MAXP as usize]).unwrap();
    }

    #[test]
    fn consumer_publish_cadence() {
        // 4096-byte ring: the consumer publishes every 512 bytes, at drain's end, and when empty.
        let (_m, mut tx, mut rx) = ring_at(4096, 1024, Direction::ToMd, 0);
        for i in 0..40u64 {
            tx.try_push(FlowId(i), Kind::Data, 0, &[0; 48]).unwrap(); // 64-byte frames
        }
        tx.flush();
        for i in 1..=8u64 {
            rx.peek().unwrap().unwrap();
            rx.release();
            let want = if i == 8 { 512 } else { 0 };
            assert_eq!(shared_head(&rx), want, "after {i} frames");
        }
        assert_eq!(rx.drain(3, |_| {}), Ok(3));
        assert_eq!(shared_head(&rx), 11 * 64, "drain publishes once at its end");
        while rx.peek().unwrap().is_some() {
            rx.release();
        }
        assert_eq!(shared_head(&rx), 40 * 64, "finding the ring empty publishes");
    }

    // ---------------------------------------------------------------- corruption

    #[test]
    fn corrupt_unknown_kind() {
        for kind in [0u16, 11, 0xffff] {
            let (mem, _tx, mut rx) = ring(Direction::ToMd);
            poke(&mem, 0, 0, kind, 0);
            set_tail(&rx, 16);
            assert_corrupt(&mut rx, 0, Corruption::Kind(kind));
        }
    }

    #[test]
    fn corrupt_kind_wrong_for_direction() {
        for (dir, kind) in [
            (Direction::ToMd, Kind::Pause),
            (Direction::ToMd, Kind::Hello),
            (Direction::ToMd, Kind::Broadcast),
            (Direction::ToIo, Kind::Open),
            (Direction::ToIo, Kind::Drained),
            (Direction::ToIo, Kind::Eof),
        ] {
            let (mem, _tx, mut rx) = ring(dir);
            poke(&mem, 0, 0, kind as u16, 0);
            set_tail(&rx, 16);
            assert_corrupt(&mut rx, 0, Corruption::Kind(kind as u16));
        }
    }

    #[test]
    fn corrupt_len_above_max_payload() {
        for len in [MAXP as u32 + 1, u32::MAX] {
            let (mem, _tx, mut rx) = ring(Direction::ToMd);
            poke(&mem, 0, len, Kind::Data as u16, 0);
            set_tail(&rx, CAP);
            assert_corrupt(&mut rx, 0, Corruption::Length(len));
        }
    }

    #[test]
    fn corrupt_len_past_tail() {
        // A valid frame first, so the bad one is not at position 0.
        let (mem, mut tx, mut rx) = ring(Direction::ToMd);
        tx.try_push(FlowId(1), Kind::Data, 0, b"ok").unwrap();
        tx.flush();
        assert_eq!(rx.peek().unwrap().unwrap().payload, b"ok");
        rx.release();
        poke(&mem, 24, 32, Kind::Data as u16, 0); // needs 48 bytes
        set_tail(&rx, 24 + 40);
        assert_corrupt(&mut rx, 24, Corruption::Length(32));
        assert_eq!(rx.header().consumer.frames.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn corrupt_frame_past_ring_end() {
        let start = CAP - 32;
        let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
        poke(&mem, (CAP - 32) as usize, 40, Kind::Data as u16, 0); // 56 bytes in a 32-byte rem
        set_tail(&rx, start + 64);
        assert_corrupt(&mut rx, start, Corruption::Length(40));
    }

    #[test]
    fn corrupt_pad_length() {
        // rem is 32, so the only valid padding length is 16.
        for len in [0u32, 8, 24, 32, u32::MAX] {
            let start = CAP - 32;
            let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
            poke(&mem, (CAP - 32) as usize, len, Kind::Pad as u16, 0);
            set_tail(&rx, start + 64);
            assert_corrupt(&mut rx, start, Corruption::Pad(len));
        }
        // Padding in the middle of the ring (it must reach the end).
        let (mem, _tx, mut rx) = ring(Direction::ToMd);
        poke(&mem, 0, 16, Kind::Pad as u16, 0);
        set_tail(&rx, 64);
        assert_corrupt(&mut rx, 0, Corruption::Pad(16));
        // Correct length, but the published tail stops inside it.
        let start = CAP - 32;
        let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
        poke(&mem, (CAP - 32) as usize, 16, Kind::Pad as u16, 0);
        set_tail(&rx, start + 16);
        assert_corrupt(&mut rx, start, Corruption::Pad(16));
    }

    #[test]
    fn corrupt_fixed_length_kinds() {
        for (dir, kind, len) in [
            (Direction::ToMd, Kind::Eof, 1u32),
            (Direction::ToMd, Kind::Close, 8),
            (Direction::ToMd, Kind::Drained, 0),
            (Direction::ToMd, Kind::Drained, 16),
            (Direction::ToIo, Kind::Pause, 1),
            (Direction::ToIo, Kind::Resume, 2),
            (Direction::ToIo, Kind::Hello, Hello::SIZE as u32 - 8),
        ] {
            let (mem, _tx, mut rx) = ring(dir);
            poke(&mem, 0, len, kind as u16, 0);
            set_tail(&rx, frame_size(len as usize) as u64);
            assert_corrupt(&mut rx, 0, Corruption::KindLength { kind: kind as u16, len });
        }
    }

    #[test]
    fn corrupt_positions() {
        let start = 64;
        let cases: [(u64, &str); 5] = [
            (start - 8, "tail behind head"),
            (start + CAP + 8, "tail more than capacity ahead"),
            (start + 20, "unaligned tail"),
            (start + 8, "tail inside a frame header"),
            (!7u64, "tail absurdly far"),
        ];
        for (tail, why) in cases {
            let (_mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
            set_tail(&rx, tail);
            let what = Corruption::Positions { head: start, tail };
            let want = RingError::Corrupt { at: start, what };
            assert_eq!(rx.peek().map(|f| f.is_some()), Err(want), "{why}");
            assert_corrupt(&mut rx, start, what);
        }
    }

    #[test]
    fn corruption_after_valid_frames_does_not_lose_them() {
        let (mem, mut tx, mut rx) = ring(Direction::ToMd);
        for i in 0..3u64 {
            tx.try_push(FlowId(i), Kind::Data, 0, b"abc").unwrap();
        }
        tx.flush();
        poke(&mem, 72, 0, 77, 0);
        set_tail(&rx, 72 + 16);
        let mut seen = vec![];
        let r = rx.drain(usize::MAX, |f| seen.push(f.flowid.0));
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(r, Err(RingError::Corrupt { at: 72, what: Corruption::Kind(77) }));
        assert_eq!(shared_head(&rx), 72, "drain published the frames it handled");
        assert_eq!(rx.header().consumer.frames.load(Ordering::Relaxed), 3);
        assert_corrupt(&mut rx, 72, Corruption::Kind(77));
    }

    #[test]
    fn producer_sees_corrupt_head() {
        // Ahead of what the producer published.
        let (_m, mut tx, rx) = ring(Direction::ToMd);
        while tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]).is_ok() {}
        let published = shared_tail(&rx);
        rx.header().head.0.store(published + 8, Ordering::Release);
        assert_eq!(tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]), Err(PushError::Corrupt));
        assert_eq!(tx.reserve(8).err(), Some(PushError::Corrupt));
        // Behind what the producer already saw (e.g. after a reset it has not noticed).
        let (_m, mut tx, mut rx) = ring(Direction::ToMd);
        while tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]).is_ok() {}
        rx.drain(2, |_| {}).unwrap();
        assert!(tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]).is_ok(), "cached head = 48");
        while tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]).is_ok() {}
        rx.header().head.0.store(24, Ordering::Release);
        assert_eq!(tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]), Err(PushError::Corrupt));
        assert!(!tx.has_room(8), "has_room ignores an impossible head");
    }

    // ---------------------------------------------------------------- reset and counters

    #[test]
    fn reset_bumps_generation_and_drops_old_frames() {
        let (mem, mut tx, rx) = ring(Direction::ToMd);
        tx.try_push(FlowId(1), Kind::Data, 0, b"old").unwrap();
        tx.flush();
        assert!(tx.is_current() && rx.is_current());
        assert_eq!((tx.generation(), rx.generation(), rx.epoch()), (1, 1, 1));
        reset(&*mem, 0, 2).unwrap();
        assert!(!tx.is_current() && !rx.is_current());
        let mut tx = Producer::attach(mem.clone(), 0, None).unwrap();
        let mut rx = Consumer::attach(mem.clone(), 0).unwrap();
        assert!(tx.is_current() && rx.is_current());
        assert_eq!((tx.generation(), rx.generation()), (2, 2));
        assert_eq!(rx.peek().unwrap().map(|f| f.kind), None, "nothing from the old generation");
        tx.try_push(FlowId(2), Kind::Data, 0, b"new").unwrap();
        tx.flush();
        assert_eq!(rx.peek().unwrap().unwrap().payload, b"new");
    }

    fn pipe_bells() -> (Doorbell, Doorbell) {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
                .unwrap();
        (Doorbell::from_fd(r), Doorbell::from_fd(w))
    }

    #[test]
    fn counters_and_doorbell_handshake() {
        let mem = Arc::new(HeapMemory::new_ring(1024, 256, Direction::ToIo));
        let (rx_bell, tx_bell) = pipe_bells();
        let mut tx = Producer::attach(mem.clone(), 0, Some(tx_bell)).unwrap();
        let mut rx = Consumer::attach(mem.clone(), 0).unwrap();
        let pc = |f: fn(&crate::layout::ProducerCounters) -> &crate::sync::AtomicU64| {
            f(&tx_header(&mem).producer).load(Ordering::Relaxed)
        };
        assert_eq!(tx.header().producer.pid.load(Ordering::Relaxed), std::process::id());
        assert_eq!(rx.header().consumer.pid.load(Ordering::Relaxed), std::process::id());

        // Not armed: a flush publishes but does not ring.
        tx.try_push(FlowId(1), Kind::Data, 0, &[7; 10]).unwrap();
        tx.try_push(FlowId(2), Kind::Pause, 0, &[]).unwrap();
        assert_eq!(pc(|c| &c.frames), 0, "counters are published with the batch");
        assert!(!tx.flush());
        assert_eq!((pc(|c| &c.frames), pc(|c| &c.bytes), pc(|c| &c.doorbells)), (2, 10, 0));
        assert_eq!(pc(|c| &c.max_depth), (frame_size(10) + frame_size(0)) as u64);

        // Data waiting: prepare_sleep refuses and does not arm.
        assert!(!rx.prepare_sleep(&rx_bell));
        assert_eq!(rx.drain(usize::MAX, |_| {}), Ok(2));
        let cc = rx.header().consumer.frames.load(Ordering::Relaxed);
        assert_eq!((cc, rx.header().consumer.bytes.load(Ordering::Relaxed)), (2, 10));

        // Empty: arm and sleep.
        assert!(rx.prepare_sleep(&rx_bell));
        assert_eq!(rx.header().armed.0.load(Ordering::Relaxed), 1);
        assert_eq!(rx.header().consumer.sleeps.load(Ordering::Relaxed), 1);
        tx.try_push(FlowId(3), Kind::Resume, 0, &[]).unwrap();
        assert!(tx.flush(), "armed consumer: rung");
        assert_eq!(rx.header().armed.0.load(Ordering::Relaxed), 0, "producer disarmed it");
        assert_eq!(pc(|c| &c.doorbells), 1);
        tx.try_push(FlowId(4), Kind::Resume, 0, &[]).unwrap();
        assert!(!tx.flush(), "one ring per arming");
        assert_eq!(rx_bell.drain().unwrap(), 1, "exactly one byte");
        rx.note_wakeup();
        assert_eq!(rx.drain(usize::MAX, |_| {}), Ok(2));
        assert_eq!(rx.header().consumer.wakeups.load(Ordering::Relaxed), 1);

        // Max depth grows with the backlog; full events are counted.
        while tx.try_push(FlowId(5), Kind::Data, 0, &[0; 100]).is_ok() {}
        assert_eq!(pc(|c| &c.full_events), 1);
        assert!(pc(|c| &c.max_depth) > 512);
        assert_eq!(rx.header().consumer.corrupt.load(Ordering::Relaxed), 0);
    }

    fn tx_header(mem: &HeapMemory) -> &RingHeader {
        header_at(mem, 0).unwrap()
    }
}
