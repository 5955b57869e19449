//! The consuming side of a ring: [`Consumer`], which validates every frame header it reads.
//!
//! Ownership, untrusted bytes and doorbell handshake are described in the
//! [parent module](super).

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::producer::positions_plausible;
use super::{
    Attached, Corruption, Memory, Published, RingAttachError, RingError, arm_and_recheck,
    is_stamped, publish_head,
};
use crate::doorbell::Doorbell;
use crate::frame::{FlowId, Frame, FrameMeta, HEADER_SIZE, Kind, STAMP_SIZE, frame_size};
use crate::layout::RingHeader;
use crate::sync::{Ordering, prefetch_read, spin_hint};

/// Pause instructions between two polls of [`Consumer::spin`] (about 13 ns each on the build
/// machines): a poll that comes less often steals the polled line from a producer writing it
/// less often (issue 15, docs/BENCHMARKS.md "Ring layout 3").
const SPIN_GAP: u32 = 4;

/// Bytes of a frame past its first line that the consumer prefetches once it has the frame's
/// length: the payload lines of a small frame.
const PREFETCH_BYTES: u64 = 256;

/// The consuming side of a ring. Exactly one per ring; not `Clone`.
#[derive(Debug)]
pub struct Consumer {
    r: Attached,
    /// Local: position of the next frame to read. `pub(super)` (with `pending`) for the unit
    /// tests, which check where a peeked frame lies.
    pub(super) head: u64,
    /// Local: the last value stored to the shared `head`.
    published: u64,
    /// Local: the producer's flushed `tail` as last loaded. A hint, never trusted for bounds:
    /// while it is at or past `head` the consumer takes frames by their stamps; once `head` has
    /// passed it (we took frames of a batch not flushed yet) it is reloaded, and the rest of the
    /// batch waits for its flush ([`Self::caught_up`]). A `Cell` so that `has_data(&self)` can
    /// refresh it.
    flushed: Cell<u64>,
    /// Bytes (skip + frame) the peeked frame occupies; 0 when nothing is peeked.
    pub(super) pending: u64,
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
    /// The shared `head` no longer held what we published last (a reset, or a hostile peer):
    /// this handle never publishes again.
    lost: bool,
}

impl Consumer {
    /// Attaches as the ring's consumer. Records this process's pid in the consumer counters line.
    pub fn attach(mem: Arc<dyn Memory>, offset: usize) -> Result<Self, RingAttachError> {
        let r = Attached::new(mem, offset)?;
        let h = r.hdr();
        // Relaxed for our own `head` (we continue where a previous consumer of this generation
        // stopped) and for the producer's tail (only checked for plausibility; frames are found
        // by their stamps).
        let head = h.head.0.load(Ordering::Relaxed);
        let tail = h.tail.0.load(Ordering::Relaxed);
        if !positions_plausible(head, tail, r.cap) {
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
            flushed: Cell::new(tail),
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
            lost: false,
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

    /// True if a frame is waiting: the producer's last flush covers our position and the stamp
    /// at it is there (in the common case one load, of the line the frame is in). A peeked but
    /// unreleased frame counts; so may a lone padding record (peek then returns None).
    #[inline]
    pub fn has_data(&self) -> bool {
        if self.pending != 0 {
            return true;
        }
        let pos = self.r.header_pos(self.head);
        self.caught_up() && is_stamped(self.r.word(pos), pos)
    }

    /// Whether the producer's last flush reaches our position, so that the frame there (if
    /// stamped) is ours to take now. Loads `tail` only when the cached value is behind `head`.
    ///
    /// This is what keeps a consumer off the line a streaming producer is writing (issue 15,
    /// docs/BENCHMARKS.md "Ring layout 3"): taking frames the moment they are stamped, a
    /// consumer that keeps up polls the line the producer is writing the next frame into and
    /// steals it at every poll (measured: 64 B streaming at ~0.36x the C ring). So once the
    /// consumer has passed the last flush (it took the first frame of a batch), the rest of the
    /// batch becomes visible at its flush, and the consumer meanwhile reads `tail`'s line, which
    /// the producer writes once per flush. A producer that commits one frame and flushes (a
    /// round trip) is flushed up to the consumer by the time it waits again, so the round trip
    /// keeps the one-transfer path (the stamp).
    #[inline]
    fn caught_up(&self) -> bool {
        if self.flushed.get() >= self.head {
            return true;
        }
        // Relaxed: a hint only; the stamps decide what a frame is (Acquire in `is_stamped`).
        // Any value is harmless: a hostile one can only hide frames from us or show us
        // stamps sooner, which are validated as always.
        let t = self.r.hdr().tail.0.load(Ordering::Relaxed);
        self.flushed.set(t);
        t >= self.head
    }

    /// The producer is gone (its process exited, or it is being dropped): from now on every frame
    /// it stamped is taken, flushed or not. A live producer's unflushed batch waits for its flush
    /// (`caught_up`: only to keep off the line it is writing), but a dead one will never
    /// flush, and the frames it committed (stamped, with the next stamp cleared first) are whole:
    /// a reply it finished before it died is delivered rather than lost with the reset. Frames
    /// are validated as always; a producer still running is harmless too (it only loses the
    /// cache-line courtesy). For the handle's remaining life.
    pub fn producer_gone(&mut self) {
        self.flushed.set(u64::MAX);
    }

    /// Borrows the next frame in place, or `None` if nothing is committed at our position. Call
    /// [`Self::release`] when done with it; peeking again without releasing returns the same
    /// frame.
    ///
    /// The stamp is loaded (Acquire), the rest of the header copied once and validated; any
    /// impossible value returns [`RingError::Corrupt`] (counted once in `consumer.corrupt`), and
    /// every later call returns the same error. The payload is borrowed from the shared segment:
    /// see the module docs ("Untrusted bytes") for why a misbehaving producer could change its
    /// bytes under the reader, and treat it as untrusted input. Finding the ring empty publishes
    /// `head`.
    pub fn peek(&mut self) -> Result<Option<Frame<'_>>, RingError> {
        if let Some(e) = self.corrupt {
            return Err(e);
        }
        let cap = self.r.cap;
        let mask = self.r.mask;
        // `from`: where the next frame (or padding) starts, implicit wrap not applied; `pos`: its
        // header. At most two rounds: a padding record leads to the start of the data area,
        // where none can follow (a padding record there is corrupt).
        let mut from = self.head;
        loop {
            let pos = self.r.header_pos(from);
            if !(self.caught_up() && is_stamped(self.r.word(pos), pos)) {
                // Nothing committed here yet. Padding we stepped over is consumed now (no frame
                // to release). An implicit wrap is not: the producer's tail may stand before it,
                // and our head never passes the producer's tail.
                self.head = from;
                self.pending = 0;
                // Caught up: hand every consumed byte back now (one store, and only when
                // `head` moved), so a consumer that polls or spins between batches never
                // holds back space a full producer is waiting for.
                self.publish();
                return Ok(None);
            }
            let off = (pos & mask) as usize;
            let rem = cap - off as u64;
            // SAFETY: in bounds: a header position has rem >= HEADER_SIZE, so off + 24 <= cap.
            // Aligned: off is a multiple of 8 and the data area is 128-aligned. Race-free: the
            // stamp we acquired says the producer wrote these bytes before it, and it will not
            // touch them again until we publish a head past them. A hostile producer could still
            // write them: `read_volatile` copies the header once and everything below uses only
            // the copy.
            let fh: FrameMeta = unsafe {
                core::ptr::read_volatile(self.r.data.add(off + STAMP_SIZE).cast::<FrameMeta>())
            };
            let Some(kind) = Kind::from_u16(fh.kind).filter(|k| k.allowed(self.r.direction)) else {
                return Err(self.fail(pos, Corruption::Kind(fh.kind)));
            };
            if kind == Kind::Pad {
                // A padding record reaches exactly to the end of the data area, and never sits at
                // its start (no frame needs more than a whole lap).
                if fh.len as u64 + HEADER_SIZE as u64 != rem || rem == cap {
                    return Err(self.fail(pos, Corruption::Pad(fh.len)));
                }
                from = pos + rem;
                continue;
            }
            let size = frame_size(fh.len as usize) as u64;
            // Past the lap's end, or (after padding) further than a ring's worth from `head`:
            // no honest producer reserves that.
            if fh.len as u64 > self.r.max_payload || size > rem || pos + size - self.head > cap {
                return Err(self.fail(pos, Corruption::Length(fh.len)));
            }
            if let Some(n) = kind.fixed_len() {
                if n != fh.len as usize {
                    return Err(
                        self.fail(pos, Corruption::KindLength { kind: fh.kind, len: fh.len })
                    );
                }
            }
            self.prefetch(off as u64, size);
            self.pending = pos + size - self.head;
            self.pending_bytes = fh.len as u64;
            // SAFETY: in bounds: off + 24 + len <= off + size <= cap (checked). Race-free: the
            // frame is stamped, see the header read above (for an honest producer; a hostile one
            // is the documented compromise, module docs "Untrusted bytes"). The slice lives no
            // longer than the &mut self borrow, and `release` (which lets the producer reuse the
            // bytes) needs &mut self, so the borrow ends first.
            let payload = unsafe {
                core::slice::from_raw_parts(self.r.data.add(off + HEADER_SIZE), fh.len as usize)
            };
            return Ok(Some(Frame { flowid: FlowId(fh.flowid), kind, flags: fh.flags, payload }));
        }
    }

    /// Starts loading the lines of a stamped frame past the line holding its stamp (at most
    /// [`PREFETCH_BYTES`]): the payload's miss overlaps the header checks instead of following
    /// them (issue 15). Only lines of the frame itself: never the next frame's, which the
    /// producer may be writing. A hint only: nothing is read through it.
    #[inline]
    fn prefetch(&self, off: u64, size: u64) {
        let end = off + size.min(PREFETCH_BYTES);
        let mut line = (off | 63) + 1;
        while line < end {
            prefetch_read(self.r.data.wrapping_add(line as usize));
            line += 64;
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

    /// Stores the local `head` (a Release compare-and-swap) so the producer may reuse the space,
    /// and the counters.
    ///
    /// A consumer whose ring was reset since it attached (`generation` moved on) stores nothing:
    /// its `head` belongs to the old generation, and written into the new one it would make the
    /// next attach fail (issue 14, finding 7). The generation check is the cheap early exit; the
    /// compare-and-swap in [`publish_head`] (from the value we stored last) is what makes a late
    /// store impossible. A consumer that finds the word changed under its own generation (a
    /// hostile peer wrote our `head`) reports the ring corrupt.
    pub fn publish(&mut self) {
        if self.lost || !self.r.same_generation() {
            return;
        }
        if self.head != self.published {
            match publish_head(self.r.hdr(), self.published, self.head) {
                Published::Stored(_) => self.published = self.head,
                Published::Lost(found) => {
                    self.lost = true;
                    if self.r.same_generation() {
                        self.fail(
                            self.head,
                            Corruption::Positions { head: found, tail: self.head },
                        );
                    }
                    return;
                }
            }
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
                for _ in 0..SPIN_GAP {
                    spin_hint();
                }
            }
            if start.elapsed() >= budget {
                return self.has_data();
            }
        }
    }

    /// Gets ready to sleep on `doorbell`: publishes, drains the FIFO, arms, fences and re-checks.
    /// Returns true if the caller may now block in epoll on the FIFO; false if data is waiting.
    ///
    /// Also the one place the consumer reads the producer's `tail` (once per sleep, off the hot
    /// path): a flushed tail past our position while no stamp is there cannot happen with an
    /// honest producer (it stamps before it flushes, and never writes a stamped frame's bytes
    /// before we release it), so the ring was trampled (a hostile peer, or a producer of an older
    /// generation writing its data area): the ring is reported `Corrupt` (see [`Self::peek`])
    /// instead of sleeping forever in front of it. Returns false then.
    pub fn prepare_sleep(&mut self, doorbell: &Doorbell) -> bool {
        self.publish();
        if self.has_data() || self.corrupt.is_some() {
            return false;
        }
        if self.tail_without_stamp() {
            return false;
        }
        // Drain first: a byte rung after the arm below must stay in the FIFO to wake us.
        let _ = doorbell.drain();
        let pos = self.r.header_pos(self.head);
        if arm_and_recheck(self.r.hdr(), self.head, self.r.word(pos), pos) {
            self.sleeps += 1;
            self.counters_dirty = true;
            self.publish();
            true
        } else {
            false
        }
    }

    /// The pre-sleep check of [`Self::prepare_sleep`]: true (and the ring marked corrupt) if the
    /// published `tail` is past our position, or impossible, while nothing is stamped here.
    fn tail_without_stamp(&mut self) -> bool {
        // Acquire pairs with the producer's Release publish of `tail`: every stamp below the
        // tail we see was stored before it, so it is visible to the stamp load below.
        let t = self.r.hdr().tail.0.load(Ordering::Acquire);
        if t <= self.head {
            // Behind or at us: the consumer may legitimately be ahead of the last flush.
            return false;
        }
        let pos = self.r.header_pos(self.head);
        if t - self.head <= self.r.cap && t.is_multiple_of(8) && is_stamped(self.r.word(pos), pos) {
            return false;
        }
        self.fail(self.head, Corruption::Positions { head: self.head, tail: t });
        true
    }

    /// Counts one wake-up from the doorbell (call when epoll reports the FIFO readable).
    pub fn note_wakeup(&mut self) {
        self.wakeups += 1;
        self.counters_dirty = true;
    }
}
