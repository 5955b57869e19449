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
//! thread). Neither is `Clone`. Each keeps its own position in process-local fields; the
//! producer also keeps a *cached* copy of the consumer's `head` and re-reads it only when the
//! cached free space is too small (rtrb's `cached_head`).
//!
//! # Commit stamps (layout 3, issue 15 part 2)
//!
//! The first word of every frame header is its **stamp**: the frame's monotonic byte position
//! plus one ([`crate::frame`]). The producer writes the rest of the header and the payload, then
//! stores the stamp with Release ([`commit_stamp`]); the consumer polls the stamp word at its own
//! position with Acquire ([`is_stamped`]) and takes the frame when it equals `position + 1`. So a
//! frame becomes visible to a consumer that has caught up with the producer's last flush at
//! [`Reservation::commit`] / [`Producer::try_push`], not at [`Producer::flush`], and the one
//! cache line the consumer polls is the line that carries the frame: one line transfer per
//! small frame instead of two (a `tail` line, then the frame's line). Once the consumer has
//! taken a frame of a batch that is not flushed yet (it is past the flushed `tail`), the rest of
//! that batch becomes visible at its flush: a consumer that keeps up with a streaming producer
//! would otherwise poll the very line the producer is writing and steal it at every poll
//! (measured: 64 B streaming fell to ~0.36x the C ring; docs/BENCHMARKS.md, "Ring layout 3").
//!
//! **Clear-ahead.** Before it stores a frame's stamp, the producer stores 0 into the stamp word
//! of the *next* header position (the frame's end, or the next lap's start when fewer than
//! [`HEADER_SIZE`] bytes remain there). Reservations include that word, so it is always free
//! space. The consumer polling the next position therefore reads 0 or the next frame's stamp,
//! never old bytes: neither a stamp from an older lap (those are other positions anyway) nor
//! client payload bytes that happen to equal the expected value. Stamps are whole positions, so
//! a producer left over from an older generation, all of whose positions lie below the new
//! generation's base ([`generation_base`]), cannot forge one either; the reset zeroes the stamp
//! word at the new base ([`reset`]) and `init` the one at 0, so each generation starts with
//! that invariant.
//!
//! **`tail`** is still published by [`Producer::flush`] (a compare-and-swap, issue 14 finding 7)
//! once per batch, for depth statistics, viewstats and a producer's re-attach, and as the
//! consumer's hint above (does the last flush reach my position?), which it reloads only once it
//! has passed the cached value. It never tells the consumer what a frame is or where it ends:
//! the stamps do. A producer that attaches continues after the last stamped frame (it walks the stamps forward
//! from `max(head, tail)`), so frames stamped but never flushed by a predecessor are neither lost
//! nor overwritten. Before it sleeps the consumer also checks `tail` for corruption (a published
//! tail past a position whose stamp is missing is a trampled ring).
//!
//! The consumer publishes `head` in [`Consumer::publish`] (and automatically every eighth of the
//! ring, so a long batch cannot starve the producer of space, and whenever [`Consumer::peek`]
//! finds the ring empty).
//!
//! # Untrusted bytes
//!
//! The consumer treats everything in the segment as untrusted: it loads a stamp, copies the rest
//! of the header once, validates the copy against the ring (length, alignment, kind, position)
//! and returns [`RingError::Corrupt`] for anything impossible. After the first corrupt frame the
//! ring is dead for this consumer (positions can no longer be trusted) until the creator resets
//! it.
//!
//! One compromise is deliberate: [`Consumer::peek`] lends the payload as a `&[u8]` *into the
//! segment* (zero copy), and [`Reservation::buf`] lends a `&mut [u8]` into it. Rust assumes
//! nobody else writes memory behind such a reference, and the SPSC protocol guarantees that for
//! an honest peer (the producer does not touch the bytes of a stamped frame until the consumer
//! publishes a head past them, and the consumer reads nothing of a frame before its stamp). A
//! hostile or buggy process that maps the segment writable can break that promise; the worst it
//! can then do is change payload bytes under the reader, so every user treats payload contents
//! as untrusted input (bounds-checked decoding, never an index taken from the payload without a
//! check) and copies whatever must stay stable. Headers are never read through a reference: the
//! stamp is an atomic load and the rest is copied once with a volatile read.
//!
//! # Doorbell handshake
//!
//! The consumer, before sleeping: drain the FIFO, store `armed = 1`, `fence(SeqCst)`, re-check
//! the stamp at its position; sleep only if still unstamped ([`Consumer::prepare_sleep`]). The
//! producer stamps each frame at commit; its flush then publishes `tail`, runs `fence(SeqCst)`,
//! loads `armed`, and if set *swaps* it to 0 and writes one byte ([`Producer::flush`]). This is
//! store-buffering (Dekker) between (stamp store; fence; `armed` load) and (`armed` store;
//! fence; stamp load): the fences forbid both loads seeing the old values, so a sleeping
//! consumer is always woken by the flush that follows a commit. The loom tests in
//! `shmq/tests/loom.rs` model it with the FIFO in the model, and fail if either fence is
//! removed. Each side runs its half as a free function ([`commit_stamp`] + [`publish_tail`],
//! [`arm_and_recheck`]), so the model runs the very code the processes run.
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
//! // Visible once committed; the flush publishes `tail` and rings a sleeping consumer.
//! tx.flush();
//! let f = rx.peek().unwrap().unwrap();
//! assert_eq!((f.kind, f.payload), (Kind::Data, &b"PING\n"[..]));
//! rx.release();
//! rx.publish();
//! ```

use std::fmt;
use std::sync::Arc;

use crate::frame::{HEADER_SIZE, MIN_CAPACITY, frame_size};
use crate::layout::{
    Direction, LAYOUT_VERSION, RING_HEADER_SIZE, RING_MAGIC, RingHeader, RingParams,
};
use crate::sync::{AtomicU64, Ordering, fence};

// The two sides and the test memory live in their own files; every public item is re-exported
// here, so `shmq::ring::X` is the one path for each of them.
mod consumer;
mod heap;
pub mod holder;
mod producer;
#[cfg(all(test, not(loom)))]
mod tests;

pub use consumer::Consumer;
pub use heap::HeapMemory;
pub use producer::{Producer, Reservation};

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
    /// A published `tail` ahead of the consumer's position while the stamp there is missing
    /// (a trampled ring), more than `capacity` ahead, or unaligned; or the consumer's own `head`
    /// word changed under its generation.
    Positions {
        /// Consumer's position.
        head: u64,
        /// Producer's published position.
        tail: u64,
    },
    /// Unknown frame kind, or one not allowed in this direction.
    Kind(u16),
    /// A frame longer than `max_payload`, past the end of the data area, or reaching more than
    /// `capacity` past the consumer's head.
    Length(u32),
    /// A padding record whose length does not reach exactly to the end of the data area, or one
    /// at the start of the data area (where no frame can need one).
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
        // The first frame's stamp word (position 0): zero, so nothing left in the memory can
        // pass for a stamp (clear-ahead starts here; see the module docs). In bounds: the data
        // area has at least MIN_CAPACITY bytes (checked); 8-aligned (128-aligned area).
        base.add(RING_HEADER_SIZE).cast::<u64>().write_volatile(0);
        // Release pairs with the Acquire load of `ready` in `check_header`: a side that sees
        // ready = 1 sees every field above.
        (*h).ready.store(1, Ordering::Release);
    }
    Ok(())
}

/// Resets a ring in place to an empty state under a new generation (creator only): both
/// positions move to [`generation_base`] of the old ones, so no handle of an older generation
/// can publish into it. Leaves the
/// [`RingHeader::holder`] word as it is (see [`reset_releasing`]).
///
/// The caller must know that no producer or consumer is using the ring any more (its peer died,
/// checked through its pidfd) or that the survivors will notice the generation change before
/// touching the data: a live side sees `generation != its own` via `is_current()` and must
/// re-attach. Nothing queued under the old generation is delivered afterwards.
pub fn reset(mem: &dyn Memory, offset: usize, new_generation: u64) -> Result<(), RingAttachError> {
    let h = header_at(mem, offset)?;
    reset_inner(h, new_generation, None, base_stamp_word(mem, offset));
    Ok(())
}

/// The stamp word at data offset 0, where every generation's base lies ([`generation_base`] is a
/// multiple of the capacity), if the region has a data area at all.
fn base_stamp_word(mem: &dyn Memory, offset: usize) -> Option<&AtomicU64> {
    if mem.len().saturating_sub(offset) < RING_HEADER_SIZE + 8 {
        return None;
    }
    let p = mem.as_ptr().wrapping_add(offset + RING_HEADER_SIZE);
    // SAFETY: in bounds (checked just above); 8-aligned (the region is 128-aligned, `offset` a
    // multiple of 128 as `header_at` checked, RING_HEADER_SIZE a multiple of 128). `AtomicU64`
    // has the size, alignment and bit validity of `u64` (`shmq::sync`), and every access to a
    // stamp word by the rings is atomic.
    Some(unsafe { &*p.cast::<AtomicU64>() })
}

/// [`reset`], and clears the holder word if it still names `dead` (a [`holder::pack`]ed identity
/// the caller checked is dead). Returns whether it cleared it.
///
/// SYNC POINT: the release pairs with md's claim ([`holder::claim`]).
pub fn reset_releasing(
    mem: &dyn Memory,
    offset: usize,
    new_generation: u64,
    dead: u64,
) -> Result<bool, RingAttachError> {
    let h = header_at(mem, offset)?;
    Ok(reset_inner(h, new_generation, Some(dead), base_stamp_word(mem, offset)))
}

/// The reset itself, on a header anywhere (the loom model calls it on a heap header). With
/// `release = Some(word)`, the holder word is cleared if it still holds `word`; returns whether
/// it was.
pub fn reset_header(h: &RingHeader, new_generation: u64, release: Option<u64>) -> bool {
    reset_inner(h, new_generation, release, None)
}

/// The reset; `base_stamp` is the stamp word at data offset 0 (None in the loom models, whose
/// header has no data area).
fn reset_inner(
    h: &RingHeader,
    new_generation: u64,
    release: Option<u64>,
    base_stamp: Option<&AtomicU64>,
) -> bool {
    // Relaxed: the fence below orders it before the position stores; nothing is published by it.
    h.ready.store(0, Ordering::Relaxed);
    // The new generation first, positions last: a stale side checks the generation before it
    // publishes a position (`Attached::same_generation`), so once this store is visible it
    // writes nothing. One that raced past the check still cannot land: it publishes with a
    // compare-and-swap from its old position, and the positions below move to a base past
    // every old one (`generation_base`), so its swap either precedes our store (and is
    // overwritten by it) or fails.
    // Relaxed: ordered before the position stores by the fence below, published by `ready`.
    h.generation.store(new_generation, Ordering::Relaxed);
    // SeqCst fence (a Release fence would do; SeqCst keeps it obviously strong): orders the
    // `ready = 0` and `generation` stores before the position stores below, as a seqlock writer
    // does. A side that observes a new position and then loads `ready`/`generation` with
    // Acquire (as `is_current` does) sees `ready = 0` or the new generation, never the old
    // state with new positions. The creator still must not reset while a side is mid-attach.
    fence(Ordering::SeqCst);
    let released = release.is_some_and(|dead| {
        // Release pairs with md's Acquire claim (`holder::claim`): an md that takes the word
        // after this sees `ready = 0` (stored above), so it cannot attach to the old
        // generation. A compare-and-swap: only the identity the caller found dead is cleared.
        // Relaxed on failure: nothing is read through the value.
        h.holder.compare_exchange(dead, 0, Ordering::Release, Ordering::Relaxed).is_ok()
    });
    h.armed.0.store(0, Ordering::Relaxed);
    // Relaxed: the base only has to exceed the values the words held; nothing is read through
    // them (the positions carry no data here).
    let base = generation_base(
        h.head.0.load(Ordering::Relaxed),
        h.tail.0.load(Ordering::Relaxed),
        h.capacity,
    );
    // Relaxed: published by the Release store of `ready` below. Swaps, not stores: in the C++
    // model a store would do (a stale side's compare-and-swap reads the latest value in the
    // word's modification order either way), but loom mis-orders a plain store against a
    // concurrent read-modify-write (tokio-rs/loom#282, open), and with swaps the loom models
    // `stale_*_never_writes_into_a_new_generation` check what the hardware does. A reset is
    // rare: the two locked instructions cost nothing that matters.
    h.tail.0.swap(base, Ordering::Relaxed);
    h.head.0.swap(base, Ordering::Relaxed);
    // The new generation's first stamp word (the base is a multiple of the capacity: offset 0)
    // must read 0: old bytes there (a frame of the old generation, client payload) must not
    // pass for the stamp `base + 1`, and a producer attaching walks stamps from the base (see
    // the module docs, "Clear-ahead"). Relaxed: published by the Release store of `ready`.
    // A stale producer may still write the data area afterwards: that cannot forge a stamp
    // (its positions are all below the base); it can trample one, which the consumer reports
    // as `Corrupt` before it sleeps (`Consumer::prepare_sleep`).
    if let Some(w) = base_stamp {
        w.store(0, Ordering::Relaxed);
    }
    // Release pairs with the sides' Acquire loads of `ready`/`generation`.
    h.ready.store(1, Ordering::Release);
    released
}

/// Where the positions of a new generation start: past every position the old generation
/// could have published (issue 14, finding 7).
///
/// Each side publishes its position with a compare-and-swap from the value it published last
/// ([`publish_tail`], [`publish_head`]). A side left over from an older generation expects an
/// old position, and every old position is below this base, so its compare-and-swap fails once
/// the reset stored the base: a stale side can never write into a new generation, however late
/// it runs. `4 * capacity` of margin covers what honest sides can still publish between the
/// reset's loads and its stores (a producer never gets more than `capacity` ahead of the head
/// it saw). The same bound keeps stale *stamps* out: a stale producer stamps positions below
/// the head it saw plus one capacity, so below the base, and a consumer of the new generation
/// only takes a stamp equal to its own position (at or past the base) plus one; a stale producer
/// that reloads the new head finds it past its own tail and stops (`PushError::Corrupt`).
/// A position that would overflow (only a hostile peer gets near 2^63) starts the new
/// generation at 0 instead: the ring was corrupt anyway, and attach validates whatever it finds.
pub fn generation_base(head: u64, tail: u64, capacity: u64) -> u64 {
    let top = head.max(tail);
    if top > u64::MAX / 4 {
        return 0;
    }
    // Checked: `capacity` comes from a header a peer may have damaged (the creator rewrites
    // such a header afterwards anyway). A multiple of the capacity keeps frame offsets where
    // they were, so nothing about the wrap rule changes.
    let cap = capacity.max(8);
    top.div_ceil(cap)
        .checked_add(4)
        .and_then(|n| n.checked_mul(cap))
        .filter(|b| *b <= u64::MAX / 2)
        .unwrap_or(0)
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

/// The ring header at `offset` of `mem`, checked as an attach checks it (`ready`, magic, version,
/// geometry, size), without attaching a side: for the pair's holder claim
/// ([`holder::claim`]), which md makes before it touches anything else in the ring.
pub fn checked_header(mem: &dyn Memory, offset: usize) -> Result<&RingHeader, RingAttachError> {
    check_header(mem, offset)
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
        is_current(self.hdr(), self.generation)
    }

    /// The stamp word of a header at position `pos` (any 8-aligned position).
    #[inline]
    fn word(&self, pos: u64) -> &AtomicU64 {
        let off = (pos & self.mask) as usize;
        // SAFETY: in bounds: `off < cap` and a multiple of 8 (positions are multiples of 8, the
        // capacity a power of two >= 256), so `off + 8 <= cap`, inside the data area that
        // `check_header` verified against the region's length; the Arc keeps it mapped.
        // Aligned: the data area is 128-aligned. `AtomicU64` has the size, alignment and bit
        // validity of `u64` (`shmq::sync`), so any bytes there are a valid value. Every access
        // to a word that serves as a stamp is atomic on both sides (the producer's payload and
        // header writes never cover the word at the consumer's position: see the module docs).
        unsafe { &*self.data.add(off).cast::<AtomicU64>() }
    }

    /// Where a header at `pos` really starts: past the implicit wrap when fewer than a header's
    /// bytes remain before the end of the data area.
    #[inline]
    fn header_pos(&self, pos: u64) -> u64 {
        let rem = self.cap - (pos & self.mask);
        if rem < HEADER_SIZE as u64 { pos + rem } else { pos }
    }

    /// The publish guard: true while the ring's generation is still the one this side attached
    /// under. One load and one compare, per publish (not per frame).
    ///
    /// Relaxed: the caller's compare-and-swap that follows is a Release operation, which keeps
    /// this load before it. This is the cheap early exit; what makes a stale publish impossible
    /// is that compare-and-swap (see [`generation_base`]).
    #[inline]
    fn same_generation(&self) -> bool {
        self.hdr().generation.load(Ordering::Relaxed) == self.generation
    }
}

/// True if the ring is ready and still under `generation` (no reset since a side attached under
/// it). What [`Producer::is_current`] and [`Consumer::is_current`] ask, on a header anywhere.
pub fn is_current(h: &RingHeader, generation: u64) -> bool {
    // Acquire pairs with the creator's Release stores in `reset_header`.
    h.ready.load(Ordering::Acquire) == 1 && h.generation.load(Ordering::Acquire) == generation
}

/// What a side's position publish found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored; for the producer, `true` if the consumer was armed (ring its doorbell).
    Stored(bool),
    /// The shared word no longer held the value this side published last: the ring was reset
    /// (or a hostile peer wrote the word). Nothing was stored; this handle must not publish
    /// again. The value found is carried for the report.
    Lost(u64),
}

/// Producer half of the doorbell handshake, run by every flush after the frames were stamped
/// ([`commit_stamp`]): publishes `tail` (a compare-and-swap from `published`, the value this
/// producer stored last), then reports whether the consumer was armed (and disarms it). The
/// caller writes one doorbell byte on `Stored(true)`.
///
/// SYNC POINT: store-buffering with [`arm_and_recheck`]; the compare-and-swap against
/// [`reset_header`] (see [`generation_base`]).
#[inline]
pub fn publish_tail(h: &RingHeader, published: u64, tail: u64) -> Published {
    // Release (on success) pairs with the Acquire loads of `tail` in the consumer's pre-sleep
    // check and in a producer's attach: the stamps below the new tail are visible to whoever
    // sees it. (`tail` is no longer the signal for data: frames are published by their stamps.)
    // A compare-and-swap,
    // not a store: only the producer of this generation, which stored `published` itself, can
    // move the word (finding 7). Relaxed on failure: the value found is only reported.
    if let Err(found) =
        h.tail.0.compare_exchange(published, tail, Ordering::Release, Ordering::Relaxed)
    {
        return Published::Lost(found);
    }
    // SeqCst fence: forbids the store-buffering outcome where our load of `armed` below sees 0
    // (consumer not armed yet) while the consumer's re-check of the stamp after its own fence
    // sees no stamp: then it would sleep with a frame committed and nobody would ring. The
    // stamps this flush covers were stored before (at commit), so they precede this fence.
    fence(Ordering::SeqCst);
    // Relaxed load first: the fence already orders it after the tail store, which is all the
    // argument needs; it skips the locked swap in the common case (consumer busy, not armed).
    // If it sees 1, the swap (an RMW, so it reads the latest value) decides: swap, not store,
    // so exactly one producer flush rings per arming of the consumer, and a consumer that
    // disarmed itself meanwhile (it saw the data) is not rung. Relaxed for both: `armed` carries
    // no data; the consumer reads frames only after its own Acquire load of a stamp.
    Published::Stored(
        h.armed.0.load(Ordering::Relaxed) != 0 && h.armed.0.swap(0, Ordering::Relaxed) != 0,
    )
}

/// Consumer's publish of `head`: a compare-and-swap from `published`, the value this consumer
/// stored last, so a consumer of an older generation never writes into a newer one.
///
/// SYNC POINT: the compare-and-swap against [`reset_header`] (see [`generation_base`]).
#[inline]
pub fn publish_head(h: &RingHeader, published: u64, head: u64) -> Published {
    // Release (on success) pairs with the producer's Acquire load of `head`: our reads of the
    // frames below `head` happen before the producer overwrites them. Relaxed on failure: the
    // value found is only reported.
    match h.head.0.compare_exchange(published, head, Ordering::Release, Ordering::Relaxed) {
        Ok(_) => Published::Stored(false),
        Err(found) => Published::Lost(found),
    }
}

/// Producer: commits the frame whose header is at `pos` and whose stamp word is `word`: first
/// stores 0 into `next`, the stamp word of the next header position (clear-ahead), then the
/// stamp `pos + 1` into `word`. Everything else of the frame must be written before.
///
/// SYNC POINT: the stamp's Release pairs with the consumer's Acquire in [`is_stamped`]; with
/// [`publish_tail`]'s fence it is the producer's store in the doorbell's store-buffering.
#[inline]
pub fn commit_stamp(word: &AtomicU64, next: &AtomicU64, pos: u64) {
    // Relaxed: ordered before the stamp below by its Release. A consumer that acquires this
    // frame's stamp and then loads `next` sees 0 or a later value (the next frame's stamp), never
    // the bytes that were there before: that is what makes old bytes harmless.
    next.store(0, Ordering::Relaxed);
    // Release pairs with the consumer's Acquire load in `is_stamped`: the header fields and the
    // payload written before this are visible to a consumer that sees the stamp.
    word.store(pos + 1, Ordering::Release);
}

/// Consumer: whether the header at `pos` (stamp word `word`) is committed.
///
/// SYNC POINT: Acquire pairs with the Release in [`commit_stamp`].
#[inline]
pub fn is_stamped(word: &AtomicU64, pos: u64) -> bool {
    // Acquire: once the stamp is seen, the frame's header and payload are too.
    word.load(Ordering::Acquire) == pos + 1
}

/// Consumer half of the doorbell handshake: arm, fence, re-check what the consumer takes a
/// frame by: the flushed `tail` reaching its position `head` and the stamp word `word` of the
/// header at `pos` (`head` after the implicit wrap). Returns true if the consumer may sleep
/// (nothing to take there); false if a frame arrived, in which case `armed` is cleared again.
///
/// The caller must have drained its FIFO before calling (a byte rung after this point wakes it).
///
/// SYNC POINT: store-buffering with the producer's [`commit_stamp`] then [`publish_tail`]:
/// (stamp store; `tail` store; fence; `armed` load) against (`armed` store; fence; `tail` and
/// stamp loads).
#[inline]
pub fn arm_and_recheck(h: &RingHeader, head: u64, word: &AtomicU64, pos: u64) -> bool {
    // Relaxed store: ordered before the load below by the SeqCst fence.
    h.armed.0.store(1, Ordering::Relaxed);
    // SeqCst fence: pairs with the producer's fence in `publish_tail` (see there). The fences
    // are totally ordered: if ours comes first, the producer's `armed` load after its fence sees
    // 1 and it rings; if its fence comes first, the stamp and the `tail` it stored before (at
    // commit and at the flush, both before its fence) are visible to our loads after ours, and
    // that tail reaches `head` (we never pass the producer's frames).
    fence(Ordering::SeqCst);
    // Acquire (tail) pairs with the producer's Release publish; the stamp load is Acquire too.
    if h.tail.0.load(Ordering::Acquire) >= head && is_stamped(word, pos) {
        // Data arrived: do not sleep. Relaxed: `armed` carries no data. A racing producer swap
        // may already have cleared it and be ringing: that byte is either drained before the
        // next arming or causes one spurious wake-up, never a lost one.
        h.armed.0.store(0, Ordering::Relaxed);
        return false;
    }
    true
}
