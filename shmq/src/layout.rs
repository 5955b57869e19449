//! The ring header: the ABI every queue segment starts with.
//!
//! Used by [`crate::ring`] (which reads and writes it) and by the segment code (which creates it).
//! Written by three parties, each on its own 128-byte line: the creator writes line 0 once (and
//! again only on an explicit reset), the producer writes `tail` and its counters, the consumer
//! writes `head`, `armed` and its counters. The producer also clears `armed` (the doorbell swap):
//! that one word is the only one written from both sides.
//!
//! # Layout (offsets in bytes from the start of the ring)
//!
//! | offset | line | writer |
//! |---|---|---|
//! | 0 | identity and geometry ([`RingHeader::magic`] … [`RingHeader::ready`]) | creator |
//! | 72 | [`RingHeader::holder`]: which md holds the pair (in the `in` ring only) | md claims (CAS from 0), io_conn releases on reset |
//! | 128 | `tail` (published per batch; not the data signal: frames carry commit stamps) | producer |
//! | 256 | `head` | consumer |
//! | 384 | `armed` | consumer sets, producer clears |
//! | 512 | [`ProducerCounters`] | producer |
//! | 640 | [`ConsumerCounters`] | consumer |
//! | 768 | data area, `capacity` bytes | producer writes and stamps frames, consumer reads them |
//!
//! Any change here bumps [`LAYOUT_VERSION`].

use crate::sync::{AtomicU32, AtomicU64};

/// `b"SHMQRING"`: lets `attach` reject foreign segments early.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"SHMQRING");
/// Bump on any change to [`RingHeader`], the counters or the frame format.
///
/// 3: frames carry a commit stamp (a 24-byte header, `shmq::frame`) and become visible at
/// commit; clear-ahead of the next stamp word (issue 15, part 2).
pub const LAYOUT_VERSION: u32 = 3;
/// The io_conn ↔ md frame protocol (frame kinds, flags, payload layouts, the HELLO/LEAVE
/// exchange): bump it on any change an md or io_conn of another build would misparse, even when
/// the header layout stays. io_conn writes its version into the pair, md checks it before it
/// claims the pair and writes its own, io_conn checks that on md's HELLO (`shmq::pair`); a
/// mismatch is refused with both versions named, never misparsed.
///
/// Not a [`LAYOUT_VERSION`] bump: the two words live in what layout 2 left as zeroed padding,
/// so a build from before versions reads as protocol 0 and is refused by name across that
/// boundary too, instead of by a bare layout mismatch.
///
/// 2: a flow-dispatched md `DATA` frame may complete several replies (`frame::flags::ends_flags`).
pub const PROTOCOL_VERSION: u32 = 2;
/// Size of the cache line unit we pad to (x86 prefetches 64-byte lines in pairs).
pub const LINE: usize = 128;

/// A value alone on a 128-byte line. Ours, not crossbeam's `CachePadded`: the segment ABI must not
/// depend on a dependency's choice of alignment.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct Line<T>(pub T);

/// Which way a ring carries frames; fixes the frame kinds its consumer accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Direction {
    /// io_conn → md (`in.i`).
    ToMd = 1,
    /// md → io_conn (`out.i`).
    ToIo = 2,
}

impl Direction {
    /// Decodes the header word; `None` for anything else.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::ToMd),
            2 => Some(Self::ToIo),
            _ => None,
        }
    }
}

/// Producer-written counters (one line). Relaxed stores by the producer only, published once per
/// batch; readers use relaxed loads and accept that two counters may be one batch apart.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct ProducerCounters {
    /// Frames committed (padding records excluded).
    pub frames: AtomicU64,
    /// Payload bytes committed.
    pub bytes: AtomicU64,
    /// Times the ring turned full: a push or reserve returned `Full` after a successful one (a
    /// producer retrying while still full counts once).
    pub full_events: AtomicU64,
    /// Doorbell bytes written (the consumer was armed).
    pub doorbells: AtomicU64,
    /// Largest backlog in bytes (`tail - head`, with the producer's cached `head`, so it may
    /// overstate) seen at a publish.
    pub max_depth: AtomicU64,
    /// Producer's pid, set when it attaches (0 = none yet).
    pub pid: AtomicU32,
    _pad0: u32,
    /// Producer's start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: AtomicU64,
}

/// Consumer-written counters (one line). Same rules as [`ProducerCounters`].
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct ConsumerCounters {
    /// Frames consumed (padding records excluded).
    pub frames: AtomicU64,
    /// Payload bytes consumed.
    pub bytes: AtomicU64,
    /// Times the consumer armed its doorbell and went to sleep.
    pub sleeps: AtomicU64,
    /// Times the consumer woke from its doorbell (counted by the caller via `note_wakeup`).
    pub wakeups: AtomicU64,
    /// Corrupt frames or impossible positions seen (the ring stops at the first).
    pub corrupt: AtomicU64,
    /// Consumer's pid, set when it attaches (0 = none yet).
    pub pid: AtomicU32,
    _pad0: u32,
    /// Consumer's start time in clock ticks since boot.
    pub start_time: AtomicU64,
}

/// At offset 0 of every ring; the data area starts at [`RING_HEADER_SIZE`].
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    // Line 0: written by the creator before `ready`, read-only after (but `generation`, `ready`
    // and the positions on an explicit reset, and `holder`, claimed by md once per attach).
    /// Always [`RING_MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`] of the build that created the ring.
    pub layout_version: u32,
    /// [`Direction`] as `u32`.
    pub direction: u32,
    /// Bytes in the data area; a power of two.
    pub capacity: u64,
    /// Largest payload one frame may carry.
    pub max_payload: u64,
    /// Creator's pid.
    pub creator_pid: u32,
    _pad0: u32,
    /// Creator's start time in clock ticks since boot, so a reused pid is not taken for it.
    pub creator_start_time: u64,
    /// Which start of the creator (io_conn) made this ring; new on every start.
    pub epoch: u64,
    /// Bumped by the creator on every reset; a side that attached under another generation must
    /// re-attach. Release store by the creator, Acquire load by the sides.
    pub generation: AtomicU64,
    /// 0 while the creator initialises or resets; it stores 1 (Release) as its last write.
    pub ready: AtomicU32,
    _pad1: u32,
    /// The md that holds this queue pair, packed by [`crate::ring::holder::pack`] (pid and start
    /// time in one word, so one compare-and-swap decides); 0 = free. Used in the `in` ring's
    /// header only (0 in the `out` ring). md claims it with a compare-and-swap from 0 when it
    /// attaches ([`crate::ring::holder::claim`]) and never gives it back; io_conn clears it
    /// while it resets the pair, and only once the holder is dead
    /// ([`crate::ring::reset_releasing`]). The protocol is in [`crate::ring::holder`].
    pub holder: AtomicU64,
    /// The frame protocol io_conn speaks ([`PROTOCOL_VERSION`] of the build that created the
    /// pair), `in` ring only: written by `shmq::pair` right after the `in` ring is initialised
    /// and before the `out` ring is (md attaches only once both are ready, so it never reads the
    /// 0 of a half-made pair). md checks it before it claims the pair. 0: a build from before
    /// versions (this word was padding, zeroed by `ring::init`).
    pub proto_io: AtomicU32,
    /// The frame protocol the md holding the pair speaks, `in` ring only: written by md right
    /// after its claim, before its HELLO (which io_conn reads through the ring, so the ring's
    /// Release/Acquire chain orders it); io_conn checks it when the HELLO comes and clears it
    /// while it releases a dead holder's claim. 0: an md from before versions.
    pub proto_md: AtomicU32,
    _pad2: [u32; 10],
    /// Producer-written only. Monotonic byte position one past the last frame of the last
    /// flush (frames stamped since may lie beyond it). Frames are found by their stamps; this
    /// serves statistics, viewstats, a producer's re-attach, the consumer's pre-sleep corruption
    /// check, and the consumer's hint whether the last flush reaches its position.
    pub tail: Line<AtomicU64>,
    /// Consumer-written only. Monotonic byte position of the next frame to read.
    pub head: Line<AtomicU64>,
    /// Set (1) by the consumer before it sleeps on the doorbell; swapped to 0 by the producer,
    /// which then writes one doorbell byte.
    pub armed: Line<AtomicU32>,
    /// Producer-written counters.
    pub producer: ProducerCounters,
    /// Consumer-written counters.
    pub consumer: ConsumerCounters,
}

/// Size of the ring header; the data area starts here.
pub const RING_HEADER_SIZE: usize = size_of::<RingHeader>();

// The layout is ABI: fail the build, not the deployment.
#[cfg(not(loom))]
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(RingHeader, magic) == 0);
    assert!(offset_of!(RingHeader, layout_version) == 8);
    assert!(offset_of!(RingHeader, direction) == 12);
    assert!(offset_of!(RingHeader, capacity) == 16);
    assert!(offset_of!(RingHeader, max_payload) == 24);
    assert!(offset_of!(RingHeader, creator_pid) == 32);
    assert!(offset_of!(RingHeader, creator_start_time) == 40);
    assert!(offset_of!(RingHeader, epoch) == 48);
    assert!(offset_of!(RingHeader, generation) == 56);
    assert!(offset_of!(RingHeader, ready) == 64);
    assert!(offset_of!(RingHeader, holder) == 72);
    assert!(offset_of!(RingHeader, proto_io) == 80);
    assert!(offset_of!(RingHeader, proto_md) == 84);
    assert!(offset_of!(RingHeader, tail) == 128);
    assert!(offset_of!(RingHeader, head) == 256);
    assert!(offset_of!(RingHeader, armed) == 384);
    assert!(offset_of!(RingHeader, producer) == 512);
    assert!(offset_of!(RingHeader, consumer) == 640);
    assert!(offset_of!(ProducerCounters, pid) == 40);
    assert!(offset_of!(ProducerCounters, start_time) == 48);
    assert!(offset_of!(ConsumerCounters, pid) == 40);
    assert!(offset_of!(ConsumerCounters, start_time) == 48);
    assert!(size_of::<ProducerCounters>() == 128);
    assert!(size_of::<ConsumerCounters>() == 128);
    assert!(RING_HEADER_SIZE == 768);
    assert!(align_of::<RingHeader>() == 128);
};

/// Geometry and identity a creator writes into a new ring header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingParams {
    /// Data-area bytes: a power of two, at least [`crate::frame::MIN_CAPACITY`].
    pub capacity: u64,
    /// Largest payload; `frame_size(max_payload)` must be at most `capacity / 2`.
    pub max_payload: u64,
    /// Which way frames flow.
    pub direction: Direction,
    /// Creator's pid.
    pub creator_pid: u32,
    /// Creator's start time in clock ticks since boot.
    pub creator_start_time: u64,
    /// The creator's epoch.
    pub epoch: u64,
    /// The first generation.
    pub generation: u64,
}

impl RingHeader {
    /// A header for heap-backed rings under loom (loom atomics cannot live in raw memory).
    #[cfg(loom)]
    pub fn new_for_loom(p: &RingParams) -> Self {
        Self {
            magic: RING_MAGIC,
            layout_version: LAYOUT_VERSION,
            direction: p.direction as u32,
            capacity: p.capacity,
            max_payload: p.max_payload,
            creator_pid: p.creator_pid,
            _pad0: 0,
            creator_start_time: p.creator_start_time,
            epoch: p.epoch,
            generation: AtomicU64::new(p.generation),
            ready: AtomicU32::new(1),
            _pad1: 0,
            holder: AtomicU64::new(0),
            proto_io: AtomicU32::new(PROTOCOL_VERSION),
            proto_md: AtomicU32::new(0),
            _pad2: [0; 10],
            tail: Line(AtomicU64::new(0)),
            head: Line(AtomicU64::new(0)),
            armed: Line(AtomicU32::new(0)),
            producer: ProducerCounters::default(),
            consumer: ConsumerCounters::default(),
        }
    }
}
