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
    /// Held requests: records of `len: u32 LE` + bytes, consumed from `backlog_head`.
    pub(super) backlog: Vec<u8>,
    pub(super) backlog_head: usize,
    pub(super) backlog_count: usize,
    /// A request is in progress: it returned [`Status::Pending`] or [`Status::Yield`].
    pub(super) busy: bool,
    /// io_conn asked (OPEN flag [`shmq::frame::flags::OPEN_MARK_ENDS`]) for the end of each
    /// request's reply to be marked: see [`Flow::request_done`].
    pub(super) mark_ends: bool,
    /// Output positions (absolute, like `out_base`) where a request's reply ended, oldest first
    /// from `ends_head`; each goes out as the `DATA_END` flag of the frame that reaches it.
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
            ends: Vec::new(),
            ends_head: 0,
            yielded: false,
            queued: false,
            eof: false,
            eof_done: false,
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
        self.ends.clear();
        self.ends_head = 0;
        self.yielded = false;
        self.queued = false;
        self.eof = false;
        self.eof_done = false;
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
            self.ends.push(self.out_base + self.out.len() as u64);
        }
    }

    /// The oldest reply end not yet sent.
    pub(super) fn next_end(&self) -> Option<u64> {
        self.ends.get(self.ends_head).copied()
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

    pub(super) fn hold(&mut self, msg: &[u8]) {
        self.backlog.extend_from_slice(&(msg.len() as u32).to_le_bytes());
        self.backlog.extend_from_slice(msg);
        self.backlog_count += 1;
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
