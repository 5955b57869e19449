//! md's counters: plain local values with one writer (the runner's thread), and the sink that
//! copies them into this md instance's blocks of the stats segment.
//!
//! [`Stats`] is the schema's [`MdCounts`] (one `u64` per [`Md`] counter, indexed by the enum:
//! `stats[Md::MessagesIn] += 1`) plus the service's command counts. Nothing here lists counters
//! by hand: a counter added to [`Md`] in `shmq::stats` exists here and in the segment at once.
//! The hot path bumps local integers, and once per batch (not per message) an [`MdStatsSink`]
//! copies them into the segment with relaxed stores (one per word, no syscall, no allocation)
//! together with the heartbeat and the two queue halves md writes (`in.consumer` and
//! `out.producer` of its slot). [`crate::Runner::stats`] reads the same counters in-process.
//!
//! # Command counts
//!
//! A service counts its request kinds with [`crate::Ctx::count`] and names them with
//! [`crate::Service::command_names`]. When the sink is bound, md writes those names into its
//! block's names area (`shmq::stats`, "Command slots"); viewstats then shows kind `i` as
//! `commands.<name>` (`commands.dumb.ping`), and every kind without a name as `commands.other`.
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
//!
//! let mut stats = md::Stats::default();
//! stats[shmq::stats::Md::MessagesIn] += 1;
//! assert_eq!(stats.counts.get(shmq::stats::Md::MessagesIn), 1);
//! ```

use std::ops::{Index, IndexMut};

use shmq::layout::Direction;
use shmq::ring::{Consumer, Producer};
use shmq::stats::{
    COMMAND_SLOTS, Md, MdCounts, MdState, MdStats, QueueConsumerStats, QueueProducerStats,
    StatsError, StatsSegment, monotonic_ns,
};
use shmq::sync::Ordering;
use shmq::sys::ProcId;

/// Most request kinds a service can name ([`crate::Service::command_names`]): the command slots
/// of a stats block.
pub const MAX_COMMANDS: usize = COMMAND_SLOTS;

/// Counters of one md runner. Monotonic, except across a restart of the process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// One value per [`Md`] counter (the identity words, `pid` … `heartbeat_mono_ns`, stay 0
    /// here: the sink writes those). Also reachable as `stats[Md::X]`.
    pub counts: MdCounts,
    /// Requests per kind, indexed as the service's [`crate::Service::command_names`];
    /// `commands[MAX_COMMANDS]` counts kinds `>= MAX_COMMANDS`.
    pub commands: [u64; MAX_COMMANDS + 1],
}

impl Index<Md> for Stats {
    type Output = u64;
    #[inline]
    fn index(&self, c: Md) -> &u64 {
        &self.counts[c]
    }
}

impl IndexMut<Md> for Stats {
    #[inline]
    fn index_mut(&mut self, c: Md) -> &mut u64 {
        &mut self.counts[c]
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
    /// How many command kinds have a name in the block (the rest count as `commands.other`).
    named: usize,
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
            named: 0,
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

    /// Starts counting from `current` (the block shows `counter - current`), and names the
    /// block's command slots `names` ([`crate::Service::command_names`]). A list the segment
    /// refuses (see [`shmq::stats::check_command_names`]) is logged and no slot is named: every
    /// request then counts as `commands.other`.
    pub(crate) fn bind(&mut self, current: &Stats, names: &[&str]) {
        self.base = current.clone();
        self.named = match self.md.set_command_names(names) {
            Ok(()) => names.len(),
            Err(e) => {
                log::warn!(
                    "stats: the service's command names are unusable ({e}); counting every \
                     request as commands.other"
                );
                0
            }
        };
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
    /// Reads the clock only if there is a new stamp to record.
    #[inline]
    pub(crate) fn pickup(&mut self) {
        if !self.in_consumer.pickup_pending() {
            return;
        }
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
        let mut counts = s.counts.since(&self.base.counts);
        // A gauge, not a count: its value, not what it gained since the bind.
        counts[Md::ConfigGeneration] = s.counts[Md::ConfigGeneration];
        self.md.publish(&counts);
        let mut named = [0u64; MAX_COMMANDS];
        let mut other = 0u64;
        for (i, (now, then)) in s.commands.iter().zip(&self.base.commands).enumerate() {
            let d = now.wrapping_sub(*then);
            match named.get_mut(i) {
                Some(slot) if i < self.named => *slot = d,
                _ => other = other.wrapping_add(d),
            }
        }
        self.md.publish_commands(&named, other);
        let now = if self.batch_ns != 0 { self.batch_ns } else { monotonic_ns() };
        self.batch_ns = 0;
        self.md.heartbeat(now);
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
    use std::sync::Arc;

    use shmq::ring::HeapMemory;
    use shmq::stats::{StatsReader, check_command_names, required_len};

    use super::*;

    #[test]
    fn builtin_command_names_fit_the_segment() {
        use crate::Service;
        use crate::services::{Builtin, DumbOptions};
        let names = Builtin::new(DumbOptions::default()).command_names();
        assert_eq!(check_command_names(names), Ok(()));
    }

    /// A sink on slot 1 of a heap segment, and a pair of heap rings to mirror.
    fn sink(mem: &Arc<HeapMemory>) -> (MdStatsSink, Consumer, Producer) {
        let seg = StatsSegment::create_in(mem.clone(), 2, 5, ProcId { pid: 1, start_time: 1 })
            .expect("segment");
        let sink = MdStatsSink::attach(&seg, 1, ProcId { pid: 42, start_time: 43 }).unwrap();
        let rx_mem = Arc::new(HeapMemory::new_ring(4096, 256, Direction::ToMd));
        let tx_mem = Arc::new(HeapMemory::new_ring(4096, 256, Direction::ToIo));
        let rx = Consumer::attach(rx_mem, 0).unwrap();
        let tx = Producer::attach(tx_mem, 0, None).unwrap();
        (sink, rx, tx)
    }

    /// The block shows counts since `bind` (not the runner's lifetime totals), every `Md` counter
    /// is copied, named commands appear under their names, and kinds without a name (beyond the
    /// names, or beyond the slots) add up in `commands.other`.
    #[test]
    fn mirror_copies_counts_since_the_baseline_and_names_commands() {
        let mem = Arc::new(HeapMemory::new(required_len(2)));
        let (mut sink, rx, tx) = sink(&mem);
        let mut base = Stats::default();
        base[Md::MessagesIn] = 100;
        base[Md::Attaches] = 1;
        base.commands[0] = 10; // "upper"
        base.commands[1] = 20; // "echo"
        sink.bind(&base, &["upper", "echo", "dumb.ping"]);
        let mut now = base.clone();
        for (i, &c) in Md::ALL[Md::IDENTITY..].iter().enumerate() {
            now[c] += 1000 + i as u64;
        }
        now.commands[0] += 2;
        now.commands[1] += 3;
        now.commands[2] += 4;
        now.commands[9] += 5; // counted by the service but not named
        now.commands[MAX_COMMANDS] += 6; // beyond the slots
        sink.mirror(&now, &rx, &tx);

        let snap = StatsReader::attach_in(mem).unwrap().snapshot();
        let get = |name| snap.get("md", 1, name).unwrap_or_else(|| panic!("no md counter {name}"));
        for (i, &c) in Md::ALL[Md::IDENTITY..].iter().enumerate() {
            assert_eq!(get(c.desc().name), 1000 + i as u64, "{c:?}");
        }
        assert_eq!(get("commands.upper"), 2);
        assert_eq!(get("commands.echo"), 3);
        assert_eq!(get("commands.dumb.ping"), 4);
        assert_eq!(get("commands.other"), 5 + 6);
        assert_eq!(get("pid"), 42);
        assert_eq!(get("epoch"), 5);
        assert!(get("heartbeat_mono_ns") > 0);
        assert_eq!(snap.get("md", 0, "pid"), Some(0), "slot 0 untouched");
    }

    /// A name list the segment refuses names nothing: every request counts as `other`.
    #[test]
    fn unusable_command_names_count_as_other() {
        let mem = Arc::new(HeapMemory::new(required_len(2)));
        let (mut sink, rx, tx) = sink(&mem);
        sink.bind(&Stats::default(), &["ok", "not ok"]);
        let mut now = Stats::default();
        now.commands[0] = 1;
        now.commands[1] = 2;
        sink.mirror(&now, &rx, &tx);
        let snap = StatsReader::attach_in(mem).unwrap().snapshot();
        assert_eq!(snap.get("md", 1, "commands.ok"), None);
        assert_eq!(snap.get("md", 1, "commands.other"), Some(3));
    }
}
