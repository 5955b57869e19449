//! The producing side of a ring: [`Producer`] and the in-place [`Reservation`].
//!
//! Ownership, batching and the doorbell handshake are described in the [parent module](super).

use std::sync::Arc;

use super::{Attached, Memory, Published, PushError, RingAttachError, commit_stamp, publish_tail};
use crate::doorbell::Doorbell;
use crate::frame::{FlowId, FrameMeta, HEADER_SIZE, Kind, STAMP_SIZE, frame_size};
use crate::layout::RingHeader;
use crate::sync::Ordering;

/// Bytes past the line holding `tail` that a flush takes ownership of for the next frames
/// ([`Producer::pretouch`]): two lines, a small frame's header and payload.
const PRETOUCH_BYTES: u64 = 128;

/// The producing side of a ring. Exactly one per ring; not `Clone`.
#[derive(Debug)]
pub struct Producer {
    r: Attached,
    doorbell: Option<Doorbell>,
    /// Local: one past the last committed (stamped) frame, flushed or not. `pub(super)` for the
    /// unit tests, which start the ring at chosen offsets.
    pub(super) tail: u64,
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
    /// The shared `tail` no longer held what we published last (a reset, or a hostile peer):
    /// this handle never publishes again.
    lost: bool,
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
        // Acquire for our own `tail`: pairs with a previous producer's Release publish, so the
        // stamps below it are visible (the walk below starts there). Acquire for the consumer's
        // `head`: pairs with its Release store, so its reads below head are done before we
        // overwrite those bytes.
        let published = h.tail.0.load(Ordering::Acquire);
        let head = h.head.0.load(Ordering::Acquire);
        if !positions_plausible(head, published, r.cap) {
            return Err(RingAttachError::BadGeometry);
        }
        let tail = walk_stamps(&r, head, published)?;
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
            published,
            cached_head: head,
            frames,
            bytes,
            full_events,
            doorbells,
            max_depth,
            in_full: false,
            counters_dirty: false,
            lost: false,
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
    pub(super) fn skip_for(&self, need: u64) -> u64 {
        let rem = self.r.cap - (self.tail & self.r.mask);
        if rem < HEADER_SIZE as u64 || need > rem { rem } else { 0 }
    }

    /// Bytes from the tail that a frame of `need` bytes after `skip` occupies, including the
    /// stamp word of the next header position that its commit clears (clear-ahead: the frame's
    /// end, or the next lap's start if less than a header remains there). At most
    /// `skip + need + HEADER_SIZE`; never more than the capacity for a frame of at most
    /// `max_payload` (`frame_size(max_payload) <= capacity / 2`): a skip happens only before a
    /// frame larger than the remainder, which then starts a lap, so its clear word lies at
    /// most `need + 8 <= capacity - skip` bytes in).
    #[inline]
    pub(super) fn span(&self, skip: u64, need: u64) -> u64 {
        self.r.header_pos(self.tail + skip + need) + 8 - self.tail
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
        // An honest consumer's head never goes back and never passes what we stamped (it cannot
        // have read frames it could not see; it may pass what we *flushed*: frames are visible
        // from their commit). Trusting a head past our tail would let us overwrite frames nobody
        // read; one behind our cache would break the `tail - head <= cap` arithmetic. Either is
        // a corrupt (or reset) ring.
        if head < self.cached_head || head > self.tail {
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
        // Wake the consumer if it sleeps, so it frees space (it can already see every frame).
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
        let total = self.span(self.skip_for(need), need);
        if self.r.cap - (self.tail - self.cached_head) >= total {
            return true;
        }
        // Acquire: as in `ensure_space`. An impossible head is ignored here (the next reserve
        // reports it as `Corrupt`).
        let head = self.r.hdr().head.0.load(Ordering::Acquire);
        if head >= self.cached_head && head <= self.tail {
            self.cached_head = head;
        }
        self.r.cap - (self.tail - self.cached_head) >= total
    }

    /// Reserves room for a payload of up to `max` bytes, in place.
    pub fn reserve(&mut self, max: usize) -> Result<Reservation<'_>, PushError> {
        if self.lost {
            // Someone else wrote our `tail` under our own generation (a corrupt ring), or the
            // ring was reset under us: either way this handle writes no more frames, which
            // would land in a newer generation's data area (and could trample its stamps).
            return Err(PushError::Corrupt);
        }
        if max as u64 > self.r.max_payload {
            return Err(PushError::TooLarge { len: max, max: self.r.max_payload as usize });
        }
        let need = frame_size(max) as u64;
        let skip = self.skip_for(need);
        self.ensure_space(self.span(skip, need))?;
        self.in_full = false;
        Ok(Reservation { p: self, skip, max })
    }

    /// Copies one frame into the ring. Visible at once (its stamp) to a consumer caught up with
    /// the last flush, else at the next flush; call [`Self::flush`] once per batch to publish
    /// `tail` and ring a sleeping consumer.
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

    /// Writes the frame at `tail + skip`, stamps it (and the padding record before it, if any)
    /// and advances the local tail.
    fn commit_at(&mut self, skip: u64, len: usize, flowid: FlowId, kind: Kind, flags: u16) {
        let pos = self.tail + skip;
        if skip >= HEADER_SIZE as u64 {
            // A padding record to the end of the data area, stamped on its own: its clear-ahead
            // word is the frame's stamp word at the next lap's start, so a consumer that steps
            // over the padding finds 0 there until the frame below is stamped.
            let pad = FrameMeta {
                len: (skip - HEADER_SIZE as u64) as u32,
                kind: Kind::Pad as u16,
                flags: 0,
                flowid: 0,
            };
            self.write_meta(self.tail, pad);
            commit_stamp(self.r.word(self.tail), self.r.word(pos), self.tail);
        }
        self.write_meta(
            pos,
            FrameMeta { len: len as u32, kind: kind as u16, flags, flowid: flowid.0 },
        );
        let end = pos + frame_size(len) as u64;
        // The payload (written through `Reservation::buf` or by `try_push`) and the meta above
        // are complete: clear the next header's stamp word, then stamp this frame.
        commit_stamp(self.r.word(pos), self.r.word(self.r.header_pos(end)), pos);
        self.tail = end;
        self.frames += 1;
        self.bytes += len as u64;
        self.counters_dirty = true;
        // Keep the shared `tail` within half a ring of the frames: a producer that never flushes
        // (a huge batch) still lets a successor's attach walk find where it stopped, and keeps
        // `head - tail <= capacity` for the attach checks.
        if self.tail - self.published >= self.r.cap / 2 {
            self.flush();
        }
    }

    /// Writes a header's fields other than the stamp at position `pos`.
    #[inline]
    fn write_meta(&self, pos: u64, meta: FrameMeta) {
        let off = (pos & self.r.mask) as usize + STAMP_SIZE;
        // SAFETY: in bounds: a header at `pos` lies wholly inside the data area (the wrap rule:
        // at least HEADER_SIZE bytes remain at a header position), so off + 16 <= cap. Aligned:
        // `pos` is a multiple of 8 and the data area 128-aligned. Exclusive: the bytes lie in
        // the span `ensure_space` proved free (the consumer stopped reading below `head`), and
        // the consumer reads nothing of a header before its stamp, which is stored after this.
        unsafe { self.r.data.add(off).cast::<FrameMeta>().write(meta) };
    }

    /// Publishes `tail` past every committed frame (one compare-and-swap) and rings the
    /// consumer's doorbell if it is armed. Returns true if it rang. Call once per batch: a
    /// consumer caught up with the last flush sees a frame from its commit, one that already took
    /// frames of this batch sees the rest now, and only a flush wakes a sleeping one.
    ///
    /// A producer whose ring was reset since it attached (`generation` moved on) stores nothing:
    /// its `tail` belongs to the old generation (issue 14, finding 7). The generation check is
    /// the cheap early exit; the compare-and-swap in [`publish_tail`] is what makes a late
    /// publish impossible. A producer that loses the word stops publishing for good (`lost`),
    /// and its next reserve reports `Corrupt` if the generation is still its own (a hostile peer
    /// wrote our `tail`).
    pub fn flush(&mut self) -> bool {
        if self.lost {
            return false;
        }
        if self.tail == self.published {
            self.store_counters();
            return false;
        }
        if !self.r.same_generation() {
            self.lost = true;
            return false;
        }
        let depth = self.tail - self.cached_head;
        let rang = match publish_tail(self.r.hdr(), self.published, self.tail) {
            Published::Stored(rang) => rang,
            Published::Lost(_) => {
                self.lost = true;
                return false;
            }
        };
        self.published = self.tail;
        self.pretouch();
        if depth > self.max_depth {
            self.max_depth = depth;
        }
        if rang {
            if let Some(db) = &self.doorbell {
                // EAGAIN (FIFO full) means already rung: a wake-up is pending either way. Other
                // errors cannot happen on a FIFO we hold O_RDWR; counted as rung regardless.
                let _ = db.ring();
            }
            self.doorbells += 1;
        }
        self.counters_dirty = true;
        self.store_counters();
        rang
    }

    /// Takes ownership of the lines the next frames will be written to, while the consumer reads
    /// what was just published (issue 15): stores a zero at the start of each of the
    /// [`PRETOUCH_BYTES`] / 64 lines that follow the line holding `tail`, where they are free
    /// space. A line of a large ring was last read by the consumer a lap ago and has usually left
    /// this core's caches; without this, the next publish would wait for those fetches before its
    /// tail could become visible. The line holding `tail` itself is left alone: the consumer is
    /// about to read its first part (the end of the frame just published), and writing it now
    /// would pull it back from under the reader.
    ///
    /// A reset between our publish and this can make these zeroes land in the next generation's
    /// data area, as a stale producer's frame writes already can (finding 7 guards the position
    /// words, not the data area; docs/ARCHITECTURE.md, "Positions").
    #[inline]
    fn pretouch(&mut self) {
        let mut pos = (self.tail | 63) + 1;
        let end = pos + PRETOUCH_BYTES;
        // Free space only: everything below `cached_head + cap` and at or past `tail` is ours
        // (the consumer reads nothing at or past our tail but the stamp word it polls).
        let free_end = self.cached_head + self.r.cap;
        while pos < end && pos + 8 <= free_end {
            // An atomic store (Relaxed: nothing is published by it): the word may be the stamp
            // word the consumer polls (the next lap's start, after an implicit wrap), which
            // already holds 0 (clear-ahead), so a 0 changes nothing it can see. Every other word
            // here lies in [tail, cached_head + cap), free space the consumer does not read, and
            // any frame written there later is stamped after it.
            self.r.word(pos).store(0, Ordering::Relaxed);
            pos += 64;
        }
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
    /// frames, not zeroes. Nothing of it is visible to the consumer before [`Self::commit`]. (A
    /// `&mut` into memory another process maps writable: see the module docs, "Untrusted
    /// bytes".)
    pub fn buf(&mut self) -> &mut [u8] {
        let pos = self.p.tail + self.skip;
        let off = (pos & self.p.r.mask) as usize + HEADER_SIZE;
        // SAFETY: in bounds: off - HEADER_SIZE + frame_size(max) <= cap by the wrap rule.
        // Exclusive: the bytes are free (`ensure_space`), the consumer reads nothing of a frame
        // before its stamp (stored by `commit`, which consumes the Reservation), the stamp word
        // it polls lies before them, and the &mut borrow of the Reservation prevents a second
        // view from this side.
        unsafe { core::slice::from_raw_parts_mut(self.p.r.data.add(off), self.max) }
    }

    /// Commits the first `len` bytes of [`Self::buf`] as one frame: stamps it (visible from now
    /// on to a consumer caught up with the last flush; see [`Producer::try_push`]).
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

/// The attach checks on the two shared positions: both multiples of 8, neither more than a
/// capacity ahead of the other (the consumer may be ahead of the flushed `tail`: it sees frames
/// from their commit; a producer flushes at least every half ring, see `commit_at`), and both
/// below 2^63, so that no position arithmetic (`pos + rem`, `pos + 1`, frame ends) can overflow:
/// honest positions take centuries to get there (`generation_base` starts over at 0 before).
/// Found by the `ring` fuzz target (fuzz/crashes/ring): a hostile `head` near 2^64 overflowed
/// the implicit-wrap step.
pub(super) fn positions_plausible(head: u64, tail: u64, cap: u64) -> bool {
    head.is_multiple_of(8)
        && tail.is_multiple_of(8)
        && head.abs_diff(tail) <= cap
        && head.max(tail) <= POSITION_MAX
}

/// The largest position either side attaches at (see [`positions_plausible`]).
pub(super) const POSITION_MAX: u64 = u64::MAX / 2;

/// Where a producer attaching continues: after the last frame stamped in a row from
/// `max(head, tail)`, so frames a predecessor (of this generation) stamped but never flushed are
/// neither lost nor overwritten. Bounded: at most one capacity past `head`. A stamped header that
/// is impossible (bad kind or length, a frame past the lap end or past `head + capacity`) is a
/// corrupt ring: `BadGeometry`.
fn walk_stamps(r: &Attached, head: u64, tail: u64) -> Result<u64, RingAttachError> {
    let start = head.max(tail);
    let mut end = start;
    loop {
        let pos = r.header_pos(end);
        if pos + 8 > head + r.cap || !super::is_stamped(r.word(pos), pos) {
            return Ok(end);
        }
        let off = (pos & r.mask) as usize + STAMP_SIZE;
        // SAFETY: in bounds: a header position leaves at least HEADER_SIZE bytes to the end of
        // the data area. Aligned as in `Attached::word`. Race-free: only the producer writes
        // headers, and we are the only producer (a predecessor is gone); the Acquire of the
        // stamp above orders its writes before this read. Copied once (volatile); only the copy
        // is used.
        let meta = unsafe { core::ptr::read_volatile(r.data.add(off).cast::<FrameMeta>()) };
        let rem = r.cap - (pos & r.mask);
        let next = match Kind::from_u16(meta.kind) {
            Some(Kind::Pad) if rem != r.cap && u64::from(meta.len) + HEADER_SIZE as u64 == rem => {
                pos + rem
            }
            Some(k)
                if k != Kind::Pad
                    && k.allowed(r.direction)
                    && u64::from(meta.len) <= r.max_payload =>
            {
                let size = frame_size(meta.len as usize) as u64;
                if size > rem {
                    return Err(RingAttachError::BadGeometry);
                }
                pos + size
            }
            _ => return Err(RingAttachError::BadGeometry),
        };
        if next - head > r.cap {
            return Err(RingAttachError::BadGeometry);
        }
        end = next;
    }
}
