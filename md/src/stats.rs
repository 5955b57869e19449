//! md's counters: one plain struct with one writer (the runner's thread), and the sink that
//! mirrors it into this md instance's blocks of the stats segment.
//!
//! [`Stats`] is kept as plain `u64`s on purpose: the hot path bumps local integers, and once per
//! batch (not per message) an [`MdStatsSink`] copies them into the segment with relaxed stores
//! (about forty of them, no syscall, no allocation) together with the heartbeat and the two queue
//! halves md writes (`in.consumer` and `out.producer` of its slot). [`crate::Runner::stats`]
//! reads the same counters in-process.
//!
//! # Who owns what
//!
//! io_conn creates the segment (`{name}.stats`) at start and removes it on exit; [`crate::serve`]
//! attaches it after attaching the queue pair, takes the slot of its instance
//! ([`MdStatsSink::attach`]) and hands the sink to the runner
//! ([`crate::Runner::set_stats_sink`]). A missing segment is not an error: md logs a warning and
//! runs without one. After io_conn restarts (a new epoch, so a new segment) `serve` attaches the
//! new segment; after a reset of the pair by the same io_conn it keeps the sink.
//!
//! # What the segment shows
//!
//! The block of a slot counts from the moment md took the slot ([`MdStatsSink::attach`] zeroes it
//! and the sink remembers the runner's counters then), so a new io_conn's segment starts at zero
//! even though [`crate::Runner::stats`] keeps counting over the whole life of the process. The
//! state goes `starting` (slot taken, or re-attaching after a detach) → `running` (serving) →
//! `stopping` (shutdown requested, handing over output) → `exited` (clean exit).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use md::stats::MdStatsSink;
//! use shmq::ring::HeapMemory;
//! use shmq::stats::{MdState, StatsReader, StatsSegment, required_len};
//! use shmq::sys::ProcId;
//!
//! let mem = Arc::new(HeapMemory::new(required_len(4)));
//! let seg = StatsSegment::create_in(mem.clone(), 4, 9, ProcId { pid: 1, start_time: 2 }).unwrap();
//! let sink = MdStatsSink::attach(&seg, 3, ProcId::current()).unwrap();
//! sink.set_state(MdState::Running); // the runner does this when it starts serving
//! let snap = StatsReader::attach_in(mem).unwrap().snapshot();
//! assert_eq!(snap.get("md", 3, "state"), Some(MdState::Running as u64));
//! assert_eq!(snap.get("md", 3, "epoch"), Some(9));
//! ```

use shmq::layout::Direction;
use shmq::ring::{Consumer, Producer};
use shmq::stats::{
    Md, MdState, MdStats, QueueConsumerStats, QueueProducerStats, StatsError, StatsSegment,
    monotonic_ns,
};
use shmq::sync::Ordering;
use shmq::sys::ProcId;

/// Most request kinds a service can count with [`crate::Ctx::count`].
pub const MAX_COMMANDS: usize = 16;

/// Counters of one md runner. Monotonic, except across a restart of the process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames consumed from the input ring (all kinds).
    pub frames_in: u64,
    /// `DATA` frames received (requests).
    pub messages_in: u64,
    /// Payload bytes of `DATA` frames received.
    pub bytes_in: u64,
    /// `DATA` frames sent.
    pub messages_out: u64,
    /// Payload bytes of `DATA` frames sent.
    pub bytes_out: u64,
    /// `OPEN` frames accepted by the service.
    pub opens: u64,
    /// `OPEN` frames the service refused (unknown service) or that could not be decoded.
    pub refused: u64,
    /// `CLOSE` frames received (client gone).
    pub closes_in: u64,
    /// `CLOSE` frames sent (after an EOF, or a refused flow).
    pub closes_out: u64,
    /// `EOF` frames received.
    pub eofs: u64,
    /// `DRAINED` frames received.
    pub drained: u64,
    /// `PAUSE` frames sent.
    pub pauses: u64,
    /// `RESUME` frames sent.
    pub resumes: u64,
    /// Requests held behind a running one (copied into the flow's backlog).
    pub held: u64,
    /// Error replies (counted by services through [`crate::Ctx::error`]).
    pub errors: u64,
    /// Frames for a flow md does not know (already closed, or never opened).
    pub unknown_flow: u64,
    /// Frames md could not make sense of (bad `OPEN`/`DRAINED` payload, `DRAINED` beyond what
    /// was sent).
    pub bad_frames: u64,
    /// Times the output ring was full (the output waits in the flow; never dropped).
    pub out_full: u64,
    /// Corrupt input rings seen.
    pub corrupt: u64,
    /// Timers that fired for a live flow.
    pub timers_fired: u64,
    /// Successful attaches (including the first).
    pub attaches: u64,
    /// Doorbell wake-ups.
    pub wakeups: u64,
    /// Nanoseconds spent working (from a wake-up to the next idle check).
    pub busy_ns: u64,
    /// Requests per kind, indexed as the service's [`crate::Service::command_names`].
    pub commands: [u64; MAX_COMMANDS],
}

/// The request counters of the md block, in the order [`MdStatsSink`] accumulates them.
const REQUEST_COUNTERS: [Md; 8] = [
    Md::EchoMessages,
    Md::ReverseLines,
    Md::DumbPing,
    Md::DumbWait,
    Md::DumbBurn,
    Md::DumbStream,
    Md::DumbOther,
    Md::OtherRequests,
];
/// Index of [`Md::OtherRequests`] in [`REQUEST_COUNTERS`].
const OTHER: u8 = 7;

/// The md-block counter that a request kind named `name` (an entry of
/// [`crate::Service::command_names`]) is counted in. The built-in services name theirs
/// `echo`, `reverse` and `dumb.<command>` ([`crate::services::Builtin`]); every other name, of any
/// other service, goes to [`Md::OtherRequests`].
pub fn command_counter(name: &str) -> Md {
    match name {
        "echo" => Md::EchoMessages,
        "reverse" => Md::ReverseLines,
        "dumb.ping" => Md::DumbPing,
        "dumb.wait" => Md::DumbWait,
        "dumb.burn" => Md::DumbBurn,
        "dumb.stream" => Md::DumbStream,
        // `dumb.err` (answered ERR) and any dumb command without a counter of its own.
        n if n.starts_with("dumb.") => Md::DumbOther,
        _ => Md::OtherRequests,
    }
}

/// One md slot of the stats segment, from the md's side: its block and the two queue halves it
/// writes. Owned by the runner ([`crate::Runner::set_stats_sink`]), used by its thread only.
///
/// The runner calls it once per batch; everything it does there is relaxed loads and stores into
/// shared memory plus at most two vDSO clock reads (`CLOCK_MONOTONIC`, no syscall).
#[derive(Debug)]
pub struct MdStatsSink {
    md: MdStats,
    /// `in.i` consumer half (md consumes io_conn → md).
    in_consumer: QueueConsumerStats,
    /// `out.i` producer half (md produces md → io_conn).
    out_producer: QueueProducerStats,
    epoch: u64,
    /// The runner's counters when the sink was bound: the block shows the difference.
    base: Stats,
    /// For each command index, its entry in [`REQUEST_COUNTERS`].
    commands: [u8; MAX_COMMANDS],
    /// The output ring's shared `tail` when we last stamped a publish.
    published_tail: u64,
    /// A clock reading taken during the current batch (0: none), reused for the heartbeat.
    batch_ns: u64,
}

impl MdStatsSink {
    /// Takes slot `slot` of `seg` as its only writer: zeroes the slot's md block and its
    /// `in.consumer`/`out.producer` halves, writes `me` as the identity with state
    /// [`MdState::Starting`]. The caller must be the one md of that slot (holding the slot's queue
    /// pair guarantees it).
    pub fn attach(seg: &StatsSegment, slot: u32, me: ProcId) -> Result<Self, StatsError> {
        let md = seg.attach_writer_md(slot, me)?;
        let in_consumer = seg.queue_consumer(slot, Direction::ToMd)?;
        let out_producer = seg.queue_producer(slot, Direction::ToIo)?;
        Ok(Self {
            md,
            in_consumer,
            out_producer,
            epoch: seg.epoch(),
            base: Stats::default(),
            commands: [OTHER; MAX_COMMANDS],
            published_tail: 0,
            batch_ns: 0,
        })
    }

    /// The epoch of the io_conn that created the segment.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The md slot (instance) this sink writes.
    pub fn slot(&self) -> u32 {
        self.md.slot()
    }

    /// Sets the slot's state (inside the block's sequence lock).
    pub fn set_state(&self, state: MdState) {
        self.md.set_state(state);
    }

    /// Starts counting from `current` (the block shows `counter - current`), with request kinds
    /// named by `names` ([`crate::Service::command_names`]; kinds without a name are counted as
    /// [`Md::OtherRequests`]).
    pub(crate) fn bind(&mut self, current: &Stats, names: &[&str]) {
        self.base = current.clone();
        self.commands = [OTHER; MAX_COMMANDS];
        for (slot, name) in self.commands.iter_mut().zip(names) {
            let c = command_counter(name);
            let i = REQUEST_COUNTERS.iter().position(|&r| r == c).unwrap_or(OTHER as usize);
            *slot = i as u8;
        }
    }

    /// A run over a freshly attached output ring begins: state `running`.
    pub(crate) fn begin_run(&mut self, tx: &Producer) {
        self.published_tail = shared_tail(tx);
        self.batch_ns = 0;
        self.md.set_state(MdState::Running);
    }

    /// A batch begins with input waiting: records the queue wait of io_conn's latest publish if
    /// it is new. Call only when the input ring shows data, so that a publish stamp io_conn wrote
    /// before that data is visible and not later than our clock reading.
    #[inline]
    pub(crate) fn pickup(&mut self) {
        let now = monotonic_ns();
        self.batch_ns = now;
        self.in_consumer.note_pickup(now);
    }

    /// After [`Producer::flush`]: stamps the publish time if frames were published since the last
    /// stamp (`flush` itself says only whether it rang the doorbell).
    #[inline]
    pub(crate) fn after_flush(&mut self, tx: &Producer) {
        let tail = shared_tail(tx);
        if tail != self.published_tail {
            self.published_tail = tail;
            let now = monotonic_ns();
            self.batch_ns = now;
            self.out_producer.stamp_publish(now);
        }
    }

    /// Copies `s` (relative to the bound baseline), the heartbeat and both rings' counters into
    /// the segment. Once per batch, and before sleeping.
    pub(crate) fn mirror(&mut self, s: &Stats, rx: &Consumer, tx: &Producer) {
        let b = &self.base;
        let m = &self.md;
        let d = |now: u64, then: u64| now.wrapping_sub(then);
        m.set(Md::FramesIn, d(s.frames_in, b.frames_in));
        m.set(Md::MessagesIn, d(s.messages_in, b.messages_in));
        m.set(Md::BytesIn, d(s.bytes_in, b.bytes_in));
        m.set(Md::MessagesOut, d(s.messages_out, b.messages_out));
        m.set(Md::BytesOut, d(s.bytes_out, b.bytes_out));
        m.set(Md::FlowsOpened, d(s.opens, b.opens));
        m.set(Md::FlowsRefused, d(s.refused, b.refused));
        m.set(Md::ClosesIn, d(s.closes_in, b.closes_in));
        m.set(Md::ClosesOut, d(s.closes_out, b.closes_out));
        m.set(Md::Eofs, d(s.eofs, b.eofs));
        m.set(Md::Drained, d(s.drained, b.drained));
        m.set(Md::Pauses, d(s.pauses, b.pauses));
        m.set(Md::Resumes, d(s.resumes, b.resumes));
        m.set(Md::Held, d(s.held, b.held));
        m.set(Md::Errors, d(s.errors, b.errors));
        m.set(Md::UnknownFlow, d(s.unknown_flow, b.unknown_flow));
        m.set(Md::BadFrames, d(s.bad_frames, b.bad_frames));
        m.set(Md::OutFull, d(s.out_full, b.out_full));
        m.set(Md::Corrupt, d(s.corrupt, b.corrupt));
        m.set(Md::TimersFired, d(s.timers_fired, b.timers_fired));
        m.set(Md::Attaches, d(s.attaches, b.attaches));
        m.set(Md::Wakeups, d(s.wakeups, b.wakeups));
        m.set(Md::BusyNs, d(s.busy_ns, b.busy_ns));
        let mut requests = [0u64; REQUEST_COUNTERS.len()];
        for (i, &target) in self.commands.iter().enumerate() {
            requests[target as usize] += d(s.commands[i], b.commands[i]);
        }
        for (c, v) in REQUEST_COUNTERS.into_iter().zip(requests) {
            m.set(c, v);
        }
        let now = if self.batch_ns != 0 { self.batch_ns } else { monotonic_ns() };
        self.batch_ns = 0;
        m.heartbeat(now);
        self.in_consumer.publish_from(&rx.header().consumer, rx.generation());
        self.out_producer.publish_from(&tx.header().producer, backlog(tx), tx.generation());
    }
}

/// Bytes io_conn has not consumed yet: the shared `tail` minus io_conn's published `head`.
/// (`Producer::depth` uses the producer's cached `head`, refreshed only when the ring runs short
/// of space, so it would show every byte ever sent until then.)
#[inline]
fn backlog(tx: &Producer) -> u64 {
    // Relaxed: a gauge; a slightly old `head` only overstates the backlog by what io_conn has
    // consumed meanwhile, and nothing is read through it.
    let head = tx.header().head.0.load(Ordering::Relaxed);
    shared_tail(tx).saturating_sub(head)
}

/// The output ring's shared `tail`: where its last publish left it.
#[inline]
fn shared_tail(tx: &Producer) -> u64 {
    // Relaxed: this process is the ring's only producer, so it loads its own last store.
    tx.header().tail.0.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_command_names_map_to_their_counters() {
        use crate::Service;
        use crate::services::{Builtin, DumbOptions, cmd};
        let names = Builtin::new(DumbOptions::default()).command_names();
        let want = [
            (cmd::ECHO, Md::EchoMessages),
            (cmd::REVERSE, Md::ReverseLines),
            (cmd::PING, Md::DumbPing),
            (cmd::WAIT, Md::DumbWait),
            (cmd::BURN, Md::DumbBurn),
            (cmd::STREAM, Md::DumbStream),
            (cmd::ERR, Md::DumbOther),
        ];
        assert_eq!(names.len(), want.len());
        for (i, c) in want {
            assert_eq!(command_counter(names[i]), c, "{}", names[i]);
        }
        assert_eq!(command_counter("upper"), Md::OtherRequests);
        assert_eq!(command_counter("dumb.jump"), Md::DumbOther);
    }

    /// The block shows counts since `bind` (not the runner's lifetime totals), and every request
    /// kind without a counter of its own, named or not, adds up in `other_requests`.
    #[test]
    fn mirror_counts_from_the_baseline_and_sums_other_requests() {
        use std::sync::Arc;

        use shmq::ring::HeapMemory;
        use shmq::stats::{StatsReader, required_len};

        let mem = Arc::new(HeapMemory::new(required_len(2)));
        let seg = StatsSegment::create_in(mem.clone(), 2, 5, ProcId { pid: 1, start_time: 1 })
            .expect("segment");
        let mut sink = MdStatsSink::attach(&seg, 1, ProcId { pid: 42, start_time: 43 }).unwrap();
        let rx_mem = Arc::new(HeapMemory::new_ring(4096, 256, Direction::ToMd));
        let tx_mem = Arc::new(HeapMemory::new_ring(4096, 256, Direction::ToIo));
        let rx = Consumer::attach(rx_mem, 0).unwrap();
        let tx = Producer::attach(tx_mem, 0, None).unwrap();

        let mut base = Stats { messages_in: 100, attaches: 1, errors: 4, ..Stats::default() };
        base.commands[0] = 10; // "upper"
        base.commands[1] = 20; // "echo"
        sink.bind(&base, &["upper", "echo", "dumb.ping"]);
        let mut now = base.clone();
        now.messages_in += 7;
        now.attaches += 1;
        now.errors += 1;
        now.commands[0] += 2;
        now.commands[1] += 3;
        now.commands[2] += 4;
        now.commands[9] += 5; // counted by the service but not named
        sink.mirror(&now, &rx, &tx);

        let snap = StatsReader::attach_in(mem).unwrap().snapshot();
        let get = |name| snap.get("md", 1, name).unwrap();
        assert_eq!(get("messages_in"), 7);
        assert_eq!(get("attaches"), 1);
        assert_eq!(get("errors"), 1);
        assert_eq!(get("echo_messages"), 3);
        assert_eq!(get("dumb_ping"), 4);
        assert_eq!(get("other_requests"), 2 + 5);
        assert_eq!(get("pid"), 42);
        assert_eq!(get("epoch"), 5);
        assert!(get("heartbeat_mono_ns") > 0);
        assert_eq!(snap.get("md", 0, "pid"), Some(0), "slot 0 untouched");
    }
}
