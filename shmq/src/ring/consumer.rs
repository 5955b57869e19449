//! The consuming side of a ring: [`Consumer`], which validates every frame header it reads.
//!
//! Ownership, untrusted bytes and doorbell handshake are described in the
//! [parent module](super).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    Attached, Corruption, Memory, Published, RingAttachError, RingError, arm_and_recheck,
    publish_head,
};
use crate::doorbell::Doorbell;
use crate::frame::{FlowId, Frame, FrameHeader, HEADER_SIZE, Kind, frame_size};
use crate::layout::RingHeader;
use crate::sync::{Ordering, prefetch_read, spin_hint};

/// Bytes of a new batch whose lines the consumer prefetches when it sees a new `tail`: two
/// 128-byte line pairs, enough for the header and payload of a small frame.
const PREFETCH_BYTES: u64 = 256;

/// The consuming side of a ring. Exactly one per ring; not `Clone`.
#[derive(Debug)]
pub struct Consumer {
    r: Attached,
    /// Local: position of the next frame to read. `pub(super)` (with `cached_tail` and
    /// `pending`) for the unit tests, which check where a peeked frame lies.
    pub(super) head: u64,
    /// Local: the last value stored to the shared `head`.
    published: u64,
    /// Local cache of the producer's `tail`. Only ever a value validated against this
    /// consumer's own positions: `head <= cached_tail <= head + capacity`, a multiple of 8.
    pub(super) cached_tail: u64,
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
        // stopped); Acquire for the producer's tail (pairs with its Release store).
        let head = h.head.0.load(Ordering::Relaxed);
        let tail = h.tail.0.load(Ordering::Acquire);
        if !head.is_multiple_of(8) || !tail.is_multiple_of(8) || head > tail || tail - head > r.cap
        {
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
                // Checked against `pos` (where we stand, possibly past padding), not `head`: a
                // tail between the two moved backwards, and `t - pos` below would underflow.
                // `pos >= head`, so `t - head` cannot underflow once `t >= pos` holds.
                if t < pos || t - self.head > cap || !t.is_multiple_of(8) {
                    return Err(self.fail(pos, Corruption::Positions { head: pos, tail: t }));
                }
                self.cached_tail = t;
                if t != pos {
                    self.prefetch(pos, t);
                }
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

    /// Starts loading the lines of what was just published, from `pos` up to `tail` (at most
    /// [`PREFETCH_BYTES`], and not past the end of the data area): the header and the payload
    /// of the next frames then arrive together instead of one miss after the other (issue 15).
    /// A hint only: nothing is read through it, so it adds no trust in the peer's bytes.
    #[inline]
    fn prefetch(&self, pos: u64, tail: u64) {
        let off = pos & self.r.mask;
        let end = (off + (tail - pos).min(PREFETCH_BYTES)).min(self.r.cap);
        let mut line = off & !63;
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
