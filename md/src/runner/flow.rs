//! A flow's bookkeeping in the runner (held requests, outbox, broadcasts, credit) and the flow
//! id index.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use shmq::frame::FlowId;

/// A flow's bookkeeping plus the service's state for it. Slots are reused; their buffers keep
/// their capacity (up to [`KEEP_CAPACITY`]) so a new flow does not allocate.
#[derive(Debug)]
pub(super) struct Flow<F> {
    pub(super) id: FlowId,
    pub(super) live: bool,
    /// `None`: the service refused the flow; it is closed as soon as the ring takes a `CLOSE`.
    pub(super) svc: Option<F>,
    /// Output credit from `OPEN` (`u64::MAX`: unlimited).
    pub(super) credit: u64,
    /// Bytes sent in `DATA` frames and not yet returned by `DRAINED`.
    pub(super) outstanding: u64,
    /// Output written by the service and not yet in the ring.
    pub(super) out: Vec<u8>,
    /// Bytes of output already pushed to the ring: `out[0]` is output byte number `out_base`.
    pub(super) out_base: u64,
    /// Broadcasts not yet in the ring, oldest first from `bcast_head`: records of `mark: u64 LE`
    /// (pushed once output byte `mark` is), `len: u32 LE`, a `BROADCAST` payload (see
    /// [`Ctx::broadcast`]).
    pub(super) bcast: Vec<u8>,
    pub(super) bcast_head: usize,
    /// Held requests: records of `len: u32 LE` + bytes, consumed from `backlog_head`. Emptied
    /// when the last one runs, and compacted ([`compact`]) when a new one would not fit: a flow
    /// that always holds some requests (a client that keeps its pipeline between RESUME and
    /// PAUSE) must not grow it with every byte it ever sent. Its capacity stays below four times
    /// the most bytes the flow held at once (see [`compact`]).
    pub(super) backlog: Vec<u8>,
    pub(super) backlog_head: usize,
    pub(super) backlog_count: usize,
    /// A request is in progress: it returned [`Status::Pending`] or [`Status::Yield`].
    pub(super) busy: bool,
    /// io_conn asked (OPEN flag [`shmq::frame::flags::OPEN_MARK_ENDS`]) for the end of each
    /// request's reply to be marked: see [`Flow::request_done`].
    pub(super) mark_ends: bool,
    /// A request-dispatched flow (OPEN flag `OPEN_MARK_ENDS`): io_conn routes its requests one by
    /// one, so leaving does not CLOSE it (it carries on with the other md instances).
    pub(super) routed: bool,
    /// Output positions (absolute, like `out_base`) where a request's reply ended, oldest first
    /// from `ends_head`; each goes out as the `DATA_END` flag of the frame that reaches it.
    /// Compacted like `backlog`, for the same reason (output that never quite catches up).
    pub(super) ends: Vec<u64>,
    pub(super) ends_head: usize,
    /// The request in progress yielded: it wants [`Service::resume`] (`busy` is set too).
    pub(super) yielded: bool,
    /// The flow's slot is in the runner's round of yielded flows (at most once).
    pub(super) queued: bool,
    /// `EOF` received.
    pub(super) eof: bool,
    /// [`Service::eof`] called; nothing more will run, `CLOSE` follows the output.
    pub(super) eof_done: bool,
    /// The service asked to close the flow ([`crate::Ctx::close`]): no later request runs (held
    /// and arriving ones are dropped), `CLOSE` follows the output written so far.
    pub(super) closing: bool,
    /// The last of `PAUSE`/`RESUME` sent was `PAUSE`.
    pub(super) paused: bool,
    pub(super) dirty: bool,
    pub(super) blocked: bool,
}

/// Buffers larger than this are shrunk when their flow closes.
pub(super) const KEEP_CAPACITY: usize = 64 << 10;

impl<F> Flow<F> {
    pub(super) fn empty() -> Self {
        Self {
            id: FlowId(0),
            live: false,
            svc: None,
            credit: 0,
            outstanding: 0,
            out: Vec::new(),
            out_base: 0,
            bcast: Vec::new(),
            bcast_head: 0,
            backlog: Vec::new(),
            backlog_head: 0,
            backlog_count: 0,
            busy: false,
            mark_ends: false,
            routed: false,
            ends: Vec::new(),
            ends_head: 0,
            yielded: false,
            queued: false,
            eof: false,
            eof_done: false,
            closing: false,
            paused: false,
            dirty: false,
            blocked: false,
        }
    }

    pub(super) fn reset(&mut self, id: FlowId, credit: u64) {
        self.id = id;
        self.live = true;
        self.svc = None;
        self.credit = if credit == 0 { u64::MAX } else { credit };
        self.outstanding = 0;
        self.out.clear();
        self.out_base = 0;
        self.bcast.clear();
        self.bcast_head = 0;
        self.backlog.clear();
        self.backlog_head = 0;
        self.backlog_count = 0;
        self.busy = false;
        self.mark_ends = false;
        self.routed = false;
        self.ends.clear();
        self.ends_head = 0;
        self.yielded = false;
        self.queued = false;
        self.eof = false;
        self.eof_done = false;
        self.closing = false;
        self.paused = false;
        self.dirty = false;
        self.blocked = false;
    }

    /// Credit not spent by bytes in the ring.
    pub(super) fn avail(&self) -> u64 {
        self.credit.saturating_sub(self.outstanding)
    }

    pub(super) fn backlog_bytes(&self) -> usize {
        self.backlog.len() - self.backlog_head
    }

    /// May the next request run now? Not while broadcasts wait for the ring (that bounds them
    /// to what one request writes).
    pub(super) fn can_run(&self) -> bool {
        !self.busy
            && !self.eof_done
            && !self.closing
            && self.out.len() as u64 <= self.avail()
            && !self.has_broadcasts()
    }

    pub(super) fn has_broadcasts(&self) -> bool {
        self.bcast_head < self.bcast.len()
    }

    /// The request in progress finished: the flow is free for its next one, and (when io_conn
    /// asked for it) the reply's end is marked at the output written so far.
    pub(super) fn request_done(&mut self) {
        self.busy = false;
        if self.mark_ends {
            compact(&mut self.ends, &mut self.ends_head, 1);
            self.ends.push(self.out_base + self.out.len() as u64);
        }
    }

    /// The oldest reply end not yet sent.
    pub(super) fn next_end(&self) -> Option<u64> {
        self.ends.get(self.ends_head).copied()
    }

    /// The reply ends not yet sent at or before output position `limit`, at most `cap` of them,
    /// and, when more than `cap` are, the position of the `cap`-th (a frame carrying `cap` ends
    /// must stop there).
    pub(super) fn ends_within(&self, limit: u64, cap: usize) -> (usize, Option<u64>) {
        let rest = &self.ends[self.ends_head..];
        let k = rest.iter().take(cap).take_while(|&&e| e <= limit).count();
        let cut = (k == cap && rest.get(cap).is_some_and(|&e| e <= limit)).then(|| rest[cap - 1]);
        (k, cut)
    }

    /// Reply ends are waiting to be sent.
    pub(super) fn has_ends(&self) -> bool {
        self.ends_head < self.ends.len()
    }

    /// The oldest queued broadcast: its mark and the payload's range in `bcast`.
    pub(super) fn next_broadcast(&self) -> Option<(u64, std::ops::Range<usize>)> {
        let h = self.bcast_head;
        let rec = self.bcast.get(h..h + 12)?;
        let mut mark = [0u8; 8];
        mark.copy_from_slice(&rec[..8]);
        let len = u32::from_le_bytes([rec[8], rec[9], rec[10], rec[11]]) as usize;
        Some((u64::from_le_bytes(mark), h + 12..h + 12 + len))
    }

    /// Appends a request to the backlog (compacting it first if it would grow).
    pub(super) fn hold(&mut self, msg: &[u8]) {
        compact(&mut self.backlog, &mut self.backlog_head, 4 + msg.len());
        self.backlog.extend_from_slice(&(msg.len() as u32).to_le_bytes());
        self.backlog.extend_from_slice(msg);
        self.backlog_count += 1;
    }

    /// Takes the oldest held request off the backlog: its bytes are `backlog[range]` until the
    /// next [`Self::hold`] (which may move them). `None` if nothing is held.
    pub(super) fn next_held(&mut self) -> Option<std::ops::Range<usize>> {
        if self.backlog_count == 0 {
            return None;
        }
        let h = self.backlog_head;
        let b = &self.backlog;
        let len = u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]) as usize;
        let range = h + 4..h + 4 + len;
        debug_assert!(range.end <= b.len(), "backlog record past its end");
        self.backlog_head = range.end;
        self.backlog_count -= 1;
        Some(range)
    }

    /// Drops every held request (the service closed the flow: they are never answered).
    pub(super) fn drop_held(&mut self) {
        self.backlog.clear();
        self.backlog_head = 0;
        self.backlog_count = 0;
    }

    /// Empties the backlog once its last request has run (no copy needed to reuse it).
    pub(super) fn backlog_done(&mut self) {
        if self.backlog_count == 0 {
            self.backlog.clear();
            self.backlog_head = 0;
        }
    }
}

/// Drops the consumed prefix `buf[..*head]` of a FIFO kept in a `Vec` (consumed from `*head`,
/// appended at the end) before `need` more elements are appended, if the append would otherwise
/// reallocate and the prefix is at least half of `buf`. Moves the live elements to the front (no
/// allocation) and sets `*head` to 0.
///
/// Bounds: `buf` reallocates only while more than half of it is live, so its capacity stays below
/// `4 * (live + need)` at the largest append, i.e. four times the most the FIFO held at once
/// (`Vec` at most doubles). Cost: each compaction moves fewer elements than it drops, and each
/// element is dropped once, so the copying is amortised O(1) per element appended.
pub(super) fn compact<T: Copy>(buf: &mut Vec<T>, head: &mut usize, need: usize) {
    debug_assert!(*head <= buf.len(), "head {} past len {}", *head, buf.len());
    if *head > 0 && buf.len() + need > buf.capacity() && *head * 2 >= buf.len() {
        buf.copy_within(*head.., 0);
        buf.truncate(buf.len() - *head);
        *head = 0;
    }
}

/// A multiplicative hash for flow ids (io_conn chooses them; no flooding concern).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct FlowHasher(u64);

impl Hasher for FlowHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        self.0 ^= self.0 >> 32;
    }
}

pub(super) type FlowMap = HashMap<u64, u32, BuildHasherDefault<FlowHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_drops_the_prefix_only_when_growing_and_at_least_half_consumed() {
        let mut buf: Vec<u8> = Vec::with_capacity(8);
        buf.extend_from_slice(b"abcdef");
        // Room left: nothing moves, whatever was consumed.
        let mut head = 5;
        compact(&mut buf, &mut head, 2);
        assert_eq!((head, &buf[..]), (5, &b"abcdef"[..]));
        // Would grow, but less than half consumed: `Vec` grows as usual.
        head = 2;
        compact(&mut buf, &mut head, 3);
        assert_eq!((head, &buf[..]), (2, &b"abcdef"[..]));
        // Would grow, half consumed: the live part moves to the front, in place.
        head = 3;
        let ptr = buf.as_ptr();
        compact(&mut buf, &mut head, 3);
        assert_eq!((head, &buf[..], buf.capacity()), (0, &b"def"[..], 8));
        assert_eq!(buf.as_ptr(), ptr, "no reallocation");
        // Nothing consumed: nothing to do.
        compact(&mut buf, &mut head, 100);
        assert_eq!((head, &buf[..]), (0, &b"def"[..]));
        // Everything consumed.
        head = 3;
        compact(&mut buf, &mut head, 100);
        assert_eq!((head, buf.len()), (0, 0));
    }

    /// A backlog that never empties (requests held and run in turn, between two levels, for
    /// 100k requests) keeps its capacity within four times the most it held, and hands the
    /// requests back in order, byte for byte.
    #[test]
    fn backlog_that_never_empties_stays_bounded_and_in_order() {
        let mut f = Flow::<()>::empty();
        f.reset(FlowId(1), 0);
        let (mut held_seq, mut run_seq) = (0u64, 0u64);
        let mut most = 0;
        let req = |n: u64| format!("request {n} {}", "x".repeat((n % 37) as usize));
        for round in 0..2_000u64 {
            // Fill up to between ~1 KiB and ~4 KiB, then run down to below ~1 KiB, never to 0.
            let hi = 1024 + (round * 7919 % 3072) as usize;
            while f.backlog_bytes() < hi {
                f.hold(req(held_seq).as_bytes());
                held_seq += 1;
            }
            most = most.max(f.backlog_bytes());
            while f.backlog_bytes() > 512 && f.backlog_count > 1 {
                let r = f.next_held().expect("held");
                assert_eq!(&f.backlog[r], req(run_seq).as_bytes(), "request {run_seq}");
                run_seq += 1;
            }
            assert!(f.backlog_count > 0);
            f.backlog_done(); // not empty: no effect
            assert!(
                f.backlog.capacity() <= 4 * most,
                "capacity {} after {held_seq} requests, at most {most} bytes held",
                f.backlog.capacity()
            );
        }
        assert!(held_seq > 50_000, "{held_seq}");
        while let Some(r) = f.next_held() {
            assert_eq!(&f.backlog[r], req(run_seq).as_bytes());
            run_seq += 1;
        }
        f.backlog_done();
        assert_eq!((run_seq, f.backlog.len(), f.backlog_head), (held_seq, 0, 0));
    }

    /// A request larger than anything held before (or than `hold_max_bytes`) is held whole,
    /// between smaller ones, and comes back intact.
    #[test]
    fn a_request_larger_than_the_backlog_is_held_whole() {
        let mut f = Flow::<()>::empty();
        f.reset(FlowId(1), 0);
        let big = vec![b'b'; 200 << 10];
        for _ in 0..100 {
            f.hold(b"small");
        }
        for _ in 0..60 {
            let r = f.next_held().expect("held");
            assert_eq!(&f.backlog[r], b"small");
        }
        f.hold(&big);
        f.hold(b"after");
        for _ in 0..40 {
            let r = f.next_held().expect("held");
            assert_eq!(&f.backlog[r], b"small");
        }
        let r = f.next_held().expect("held");
        assert!(f.backlog[r] == big[..]);
        let r = f.next_held().expect("held");
        assert_eq!(&f.backlog[r], b"after");
        assert_eq!(f.next_held(), None);
    }

    /// Reply ends of a flow whose output never catches up are compacted the same way.
    #[test]
    fn reply_ends_that_never_empty_stay_bounded() {
        let mut f = Flow::<()>::empty();
        f.reset(FlowId(1), 0);
        f.mark_ends = true;
        for n in 0..100_000u64 {
            f.busy = true;
            f.out.push(b'x');
            f.request_done();
            // The oldest end goes out; one always stays behind.
            if f.ends.len() - f.ends_head > 8 {
                assert_eq!(f.next_end(), Some(n - 7), "ends of requests n - 8 ..= n");
                f.ends_head += 1;
            }
        }
        assert!(f.ends.capacity() <= 4 * 10, "capacity {}", f.ends.capacity());
    }
}
