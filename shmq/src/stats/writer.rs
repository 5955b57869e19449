//! The typed writers: one handle per block, held by the block's one writing process.
//!
//! [`IoStats`] (io_conn's block), [`MdStats`] (an md slot's block, with its command area),
//! [`QueueProducerStats`] and [`QueueConsumerStats`] (the queue halves). Obtain them from
//! [`super::StatsSegment`]. Every handle is the only writer of its block, so updates are plain
//! relaxed stores; values that must agree are written inside the block's sequence lock.
//!
//! Owners keep their counters locally ([`super::IoCounts`], [`super::MdCounts`]) and publish them
//! with one relaxed store per word ([`IoStats::publish`], [`MdStats::publish`]).

use std::ptr::NonNull;
use std::sync::Arc;

use crate::layout::{ConsumerCounters, ProducerCounters};
use crate::sync::{AtomicU64, Ordering};
use crate::sys::ProcId;

use super::abi::{
    COMMAND_NAME_WORDS, COMMAND_SLOTS, MD_COMMANDS_WORD, MD_NAMES_WORD, MD_OTHER_WORD,
};
use super::histogram::bucket_index;
use super::mapping::Mapping;
use super::names::{CommandNameError, check_command_names, encode_name};
use super::schema::{Io, IoCounts, Md, MdCounts, MdState, QueueConsumer, QueueProducer};
use super::seqlock::{write_begin, write_end};
use super::{monotonic_ns, unix_ns};

/// One block, from its single writer's side.
#[derive(Debug)]
pub(super) struct Block {
    /// Keeps the mapping (and so `ptr`) alive.
    _map: Arc<Mapping>,
    /// `1 + words` atomics, bounds-checked against the mapping by `Block::new`.
    ptr: NonNull<AtomicU64>,
    words: usize,
}

// SAFETY: `ptr` points into the mapping that `map` keeps alive; only atomics are accessed through
// it, and atomics may be used from any thread (Mapping is Send + Sync for the same reason).
unsafe impl Send for Block {}
// SAFETY: as for Send.
unsafe impl Sync for Block {}

impl Block {
    pub(super) fn new(map: Arc<Mapping>, offset: usize, words: usize) -> Self {
        // `Mapping::words` checks bounds and alignment once, here, not on every update.
        let ptr = NonNull::from(&map.words(offset, words)[0]);
        Self { _map: map, ptr, words }
    }
    #[inline]
    pub(super) fn w(&self) -> &[AtomicU64] {
        // SAFETY: in bounds and aligned: `ptr` and `words` come from `Mapping::words`, which
        // checked `offset + (words + 1) * 8 <= len` and 8-byte alignment; the mapping outlives
        // `self` (held by `self._map`) and never moves. Aliasing: the block is only accessed
        // through atomics, by every process.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.words + 1) }
    }
    #[inline]
    fn add(&self, word: usize, n: u64) {
        let w = &self.w()[word];
        // Relaxed load and store, no RMW: this handle is the block's only writer, so nothing can
        // store to the word between the two; readers only need some recent value.
        w.store(w.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
    #[inline]
    fn sub(&self, word: usize, n: u64) {
        let w = &self.w()[word];
        // Relaxed: single writer (see `add`).
        w.store(w.load(Ordering::Relaxed).saturating_sub(n), Ordering::Relaxed);
    }
    #[inline]
    fn set(&self, word: usize, v: u64) {
        // Relaxed: single writer; a reader needs only some recent value.
        self.w()[word].store(v, Ordering::Relaxed);
    }
    #[inline]
    pub(super) fn get(&self, word: usize) -> u64 {
        // Relaxed: we are the writer, so this is our own last store.
        self.w()[word].load(Ordering::Relaxed)
    }
    /// Stores `values` into words `first..first + values.len()`: a plain copy, one relaxed store
    /// per word.
    #[inline]
    fn copy_from(&self, first: usize, values: &[u64]) {
        for (w, &v) in self.w()[first..first + values.len()].iter().zip(values) {
            // Relaxed: this handle is the block's only writer, and a reader needs only some recent
            // value of each word: a publish is a copy, not a transaction (words outside a seqlock
            // write may be one publish apart from each other, as the module docs say).
            w.store(v, Ordering::Relaxed);
        }
    }
    fn zero(&self) {
        for w in &self.w()[1..] {
            // Relaxed: inside a seqlock write by the single writer.
            w.store(0, Ordering::Relaxed);
        }
    }
}

/// io_conn's counters. Obtained once from [`super::StatsSegment::io`]; io_conn is the only writer.
#[derive(Debug)]
pub struct IoStats(pub(super) Block);

impl IoStats {
    /// Adds one.
    #[inline]
    pub fn inc(&self, c: Io) {
        self.0.add(c.word(), 1);
    }
    /// Adds `n`.
    #[inline]
    pub fn add(&self, c: Io, n: u64) {
        self.0.add(c.word(), n);
    }
    /// Subtracts one (gauges), saturating at 0.
    #[inline]
    pub fn dec(&self, c: Io) {
        self.0.sub(c.word(), 1);
    }
    /// Stores `v` (gauges, or mirroring a local counter).
    #[inline]
    pub fn set(&self, c: Io, v: u64) {
        self.0.set(c.word(), v);
    }
    /// The current value (this process's own last store).
    #[inline]
    pub fn get(&self, c: Io) -> u64 {
        self.0.get(c.word())
    }
    /// Stores the heartbeat (call once per loop iteration or timer tick).
    #[inline]
    pub fn heartbeat(&self, now_mono_ns: u64) {
        self.0.set(Io::HeartbeatNs.word(), now_mono_ns);
    }
    /// Copies every local counter into the block, [`Io::HeartbeatNs`] included (keep the
    /// heartbeat in `c`, or call [`IoStats::heartbeat`] after this): one relaxed store per word,
    /// no read-modify-write, no syscall.
    #[inline]
    pub fn publish(&self, c: &IoCounts) {
        self.0.copy_from(1, c.values());
    }
}

/// One md slot's counters. Obtained from [`super::StatsSegment::attach_writer_md`]; that md is
/// the only writer while it lives.
#[derive(Debug)]
pub struct MdStats {
    pub(super) b: Block,
    pub(super) slot: u32,
}

impl MdStats {
    /// The slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self, c: Md) {
        self.b.add(c.word(), 1);
    }
    /// Adds `n`.
    #[inline]
    pub fn add(&self, c: Md, n: u64) {
        self.b.add(c.word(), n);
    }
    /// Stores `v` (mirroring a local counter, or a gauge).
    #[inline]
    pub fn set(&self, c: Md, v: u64) {
        self.b.set(c.word(), v);
    }
    /// The current value.
    #[inline]
    pub fn get(&self, c: Md) -> u64 {
        self.b.get(c.word())
    }
    /// Stores the heartbeat.
    #[inline]
    pub fn heartbeat(&self, now_mono_ns: u64) {
        self.b.set(Md::HeartbeatNs.word(), now_mono_ns);
    }
    /// Copies the md's local counters into the block, except the identity words
    /// (`c[..Md::IDENTITY]`, which [`MdStats::set_identity`], [`MdStats::set_state`] and
    /// [`MdStats::heartbeat`] write): one relaxed store per word.
    #[inline]
    pub fn publish(&self, c: &MdCounts) {
        self.b.copy_from(1 + Md::IDENTITY, &c.values()[Md::IDENTITY..]);
    }
    /// Copies the command counts: `named[i]` into command slot `i`, and `other` (requests of
    /// kinds without a name) into `commands.other`. One relaxed store per word.
    #[inline]
    pub fn publish_commands(&self, named: &[u64; COMMAND_SLOTS], other: u64) {
        self.b.copy_from(MD_COMMANDS_WORD, named);
        self.b.set(MD_OTHER_WORD, other);
    }
    /// Names the command slots (slot `i` is `names[i]`; the rest are left unnamed) and zeroes
    /// their counts, in one seqlock write, so a reader never sees a count under another md's
    /// name. Call when md takes its slot, before publishing commands. Writes nothing if
    /// [`check_command_names`] refuses the list.
    pub fn set_command_names(&self, names: &[&str]) -> Result<(), CommandNameError> {
        check_command_names(names)?;
        let w = self.b.w();
        write_begin(&w[0]);
        for word in MD_COMMANDS_WORD..=MD_OTHER_WORD {
            self.b.set(word, 0);
        }
        for i in 0..COMMAND_SLOTS {
            let area = names.get(i).map_or([0; COMMAND_NAME_WORDS], |n| encode_name(n));
            self.b.copy_from(MD_NAMES_WORD + i * COMMAND_NAME_WORDS, &area);
        }
        write_end(&w[0]);
        Ok(())
    }
    /// Changes the state (inside the sequence lock, so a reader sees it with the identity).
    pub fn set_state(&self, s: MdState) {
        let w = self.b.w();
        write_begin(&w[0]);
        self.b.set(Md::State.word(), s as u64);
        write_end(&w[0]);
    }
    /// Zeroes the block (counters, command counts and names) and writes identity and state in one
    /// seqlock write.
    pub fn set_identity(&self, who: ProcId, epoch: u64, state: MdState) {
        let w = self.b.w();
        write_begin(&w[0]);
        self.b.zero();
        self.b.set(Md::Pid.word(), who.pid as u64);
        self.b.set(Md::ProcStartTicks.word(), who.start_time);
        self.b.set(Md::StartUnixNs.word(), unix_ns());
        self.b.set(Md::Epoch.word(), epoch);
        self.b.set(Md::State.word(), state as u64);
        self.b.set(Md::HeartbeatNs.word(), monotonic_ns());
        write_end(&w[0]);
    }
}

/// A queue's producer half (io_conn for `in.i`, md for `out.i`).
#[derive(Debug)]
pub struct QueueProducerStats(pub(super) Block);

impl QueueProducerStats {
    /// Mirrors the ring's producer counters and the current backlog (call per loop iteration or
    /// timer tick, and before exit). Six relaxed loads and seven relaxed stores.
    pub fn publish_from(&self, c: &ProducerCounters, depth_bytes: u64, generation: u64) {
        // Relaxed loads: the caller is the ring's producer, the only writer of these counters, so
        // it reads its own stores.
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.0.set(QueueProducer::Frames.word(), r(&c.frames));
        self.0.set(QueueProducer::Bytes.word(), r(&c.bytes));
        self.0.set(QueueProducer::FullEvents.word(), r(&c.full_events));
        self.0.set(QueueProducer::Doorbells.word(), r(&c.doorbells));
        self.0.set(QueueProducer::MaxDepthBytes.word(), r(&c.max_depth));
        self.0.set(QueueProducer::DepthBytes.word(), depth_bytes);
        self.0.set(QueueProducer::Generation.word(), generation);
    }
    /// Records that a flush published frames at `now_mono_ns` (for the consumer's wait time).
    #[inline]
    pub fn stamp_publish(&self, now_mono_ns: u64) {
        self.0.set(QueueProducer::LastPublishNs.word(), now_mono_ns);
    }
    /// Stores one counter directly (when the caller counts itself instead of mirroring).
    #[inline]
    pub fn set(&self, c: QueueProducer, v: u64) {
        self.0.set(c.word(), v);
    }
    /// Adds to one counter directly.
    #[inline]
    pub fn add(&self, c: QueueProducer, n: u64) {
        self.0.add(c.word(), n);
    }
    /// Zeroes the half (a new md in the slot, or a reset ring).
    pub fn reset(&self) {
        let w = self.0.w();
        write_begin(&w[0]);
        self.0.zero();
        write_end(&w[0]);
    }
}

/// A queue's consumer half (md for `in.i`, io_conn for `out.i`), with the wait histogram.
#[derive(Debug)]
pub struct QueueConsumerStats {
    pub(super) b: Block,
    /// The partner producer half (read only, for its publish stamp).
    pub(super) partner: Block,
    /// Last publish stamp recorded (process-local), so one publish is counted once.
    pub(super) last_stamp: u64,
}

impl QueueConsumerStats {
    /// Mirrors the ring's consumer counters (per loop iteration or timer tick, and before exit).
    pub fn publish_from(&self, c: &ConsumerCounters, generation: u64) {
        // Relaxed loads: the caller is the ring's consumer, the only writer of these counters.
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.b.set(QueueConsumer::Frames.word(), r(&c.frames));
        self.b.set(QueueConsumer::Bytes.word(), r(&c.bytes));
        self.b.set(QueueConsumer::Sleeps.word(), r(&c.sleeps));
        self.b.set(QueueConsumer::Wakeups.word(), r(&c.wakeups));
        self.b.set(QueueConsumer::Corrupt.word(), r(&c.corrupt));
        self.b.set(QueueConsumer::Generation.word(), generation);
    }
    /// Adds to one counter directly.
    #[inline]
    pub fn add(&self, c: QueueConsumer, n: u64) {
        self.b.add(c.word(), n);
    }
    /// Records one wait of `ns` nanoseconds: bucket and sum in one seqlock write, so a reader's
    /// count and sum agree.
    #[inline]
    pub fn record_wait_ns(&self, ns: u64) {
        let w = self.b.w();
        write_begin(&w[0]);
        self.b.add(QueueConsumer::COUNT + 1 + bucket_index(ns), 1);
        self.b.add(QueueConsumer::WaitSumNs.word(), ns);
        write_end(&w[0]);
    }
    /// The producer stamped a publish that [`Self::note_pickup`] has not recorded yet (one relaxed
    /// load: lets the caller skip its clock read when there is nothing to record).
    #[inline]
    pub fn pickup_pending(&self) -> bool {
        let stamp = self.partner.get(QueueProducer::LastPublishNs.word());
        stamp != 0 && stamp != self.last_stamp
    }
    /// Call when a batch begins (after a wake-up or a successful spin): if the producer stamped a
    /// publish not recorded yet, records `now - stamp` and returns it.
    #[inline]
    pub fn note_pickup(&mut self, now_mono_ns: u64) -> Option<u64> {
        let stamp = self.partner.get(QueueProducer::LastPublishNs.word());
        if stamp == 0 || stamp == self.last_stamp {
            return None;
        }
        self.last_stamp = stamp;
        // A stamp later than `now`: the caller read its clock before it saw the frames (a batch
        // that began just before they landed). The wait was shorter than that gap: record 0.
        let ns = now_mono_ns.saturating_sub(stamp);
        self.record_wait_ns(ns);
        Some(ns)
    }
    /// Zeroes the half (a new md in the slot, or a reset ring).
    pub fn reset(&mut self) {
        let w = self.b.w();
        write_begin(&w[0]);
        self.b.zero();
        write_end(&w[0]);
        self.last_stamp = 0;
    }
}
