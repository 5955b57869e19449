//! The stats segment: live counters that io_conn and every md write and `viewstats` reads.
//!
//! io_conn creates one segment, `{name}.stats`, at start ([`StatsSegment::create`]); each md
//! attaches it writable and takes its slot's block ([`StatsSegment::attach_writer_md`]); viewstats
//! attaches it read-only ([`StatsReader::attach`]) and cannot change a byte.
//!
//! # Layout (offsets from the segment base)
//!
//! | offset | what | writer |
//! |---|---|---|
//! | 0 | [`StatsHeader`]: identity, geometry, [`SectionDesc`] table, `ready` | creator, once |
//! | [`HEADER_BYTES`] | descriptor table: one [`DescEntry`] (256 bytes) per counter | creator, once |
//! | section `io` | io_conn's block ([`Io`]) | io_conn |
//! | section `md` | one block per md slot ([`Md`], then the command area) | md of that slot (io_conn marks it dead) |
//! | section `in.producer` | per slot, `in.i` producer half ([`QueueProducer`]) | io_conn |
//! | section `in.consumer` | per slot, `in.i` consumer half ([`QueueConsumer`] + histogram) | md |
//! | section `out.producer` | per slot, `out.i` producer half | md |
//! | section `out.consumer` | per slot, `out.i` consumer half | io_conn |
//!
//! Every block is a flat array of `u64` words on its own 128-byte-aligned stride: word 0 is the
//! block's sequence counter, word `k` (k ≥ 1) is the value described by the descriptor whose
//! `word` is `k`. The descriptor table names every word (name, kind, unit, one-line help, bucket
//! bound), so a viewer of another build reads any segment of the same [`STATS_LAYOUT_VERSION`]
//! generically; the typed writers also require the same [`SCHEMA_VERSION`] (the counter set).
//!
//! # Modules
//!
//! | module | what |
//! |---|---|
//! | `abi` | [`StatsHeader`], [`SectionDesc`], [`DescEntry`], the md block's word layout, const asserts |
//! | `schema` | [`CounterKind`], [`CounterDesc`], [`CounterSet`], [`Counts`], the counter sets |
//! | `histogram` | the wait histogram's buckets and [`quantile`] |
//! | `names` | command names in an md block: [`encode_name`], [`decode_name`] |
//! | `seqlock` | [`read_consistent`] and the writer's side of the sequence lock |
//! | `mapping` | the mapping, its validation at attach, [`StatsError`] |
//! | `segment` | [`StatsSegment`]: create, attach writable, hand out writers |
//! | `writer` | [`IoStats`], [`MdStats`], [`QueueProducerStats`], [`QueueConsumerStats`] |
//! | `reader` | [`StatsReader`], [`Snapshot`], [`Counter`] |
//!
//! # Local counts, published by copy
//!
//! io_conn and md count in process-local [`IoCounts`] / [`MdCounts`] (`c[Io::BytesIn] += n`),
//! generated from the same counter set as the descriptors, and publish them once per loop
//! iteration or batch with [`IoStats::publish`] / [`MdStats::publish`]: one relaxed store per
//! word. There is no hand-written mapping from process counters to segment words, so a counter
//! cannot exist in a process and not in the segment.
//!
//! # Command slots (md blocks)
//!
//! Which requests an md counts depends on its service, and different slots may run different
//! services, while the descriptor table is written once by io_conn. So an md block has, after
//! its [`Md`] words, [`COMMAND_SLOTS`] generic command counts (words [`MD_COMMANDS_WORD`]..), one
//! `commands.other` count ([`MD_OTHER_WORD`], requests of kinds the service did not name), and a
//! names area ([`MD_NAMES_WORD`].., [`COMMAND_NAME_BYTES`] per slot). md writes its service's
//! command names there when it takes the slot ([`MdStats::set_command_names`], inside the
//! sequence lock); each command count's descriptor points at its name
//! ([`DescEntry::name_word`]), and readers show slot `i` as `commands.<name>`
//! (`commands.dumb.ping`), see [`Snapshot::counters`]. Unnamed slots that are 0 are not shown;
//! a names area with garbage in it is reported, never trusted (see `names`).
//!
//! | md block words | what |
//! |---|---|
//! | 0 | sequence |
//! | 1 ..= 6 | identity, state, heartbeat ([`Md::IDENTITY`] words, seqlock / direct) |
//! | 7 ..= 29 | [`Md`] counters (copied from [`MdCounts`]) |
//! | 30 ..= 45 | command slot counts (`commands.<name>`) |
//! | 46 | `commands.other` |
//! | 47 ..= 110 | names area: 16 × 32 bytes, NUL-padded, little-endian in the words |
//!
//! # One writer per block
//!
//! Each block has exactly one writing process (and, in it, one thread). A counter update is
//! therefore `store(load + n)` with `Relaxed`, not a read-modify-write: nobody else can store to
//! the word between our load and our store, and readers need only see *some* recent value of each
//! word. No allocation and no syscall: an update is one load, one add, one store.
//!
//! Values that must agree with each other (an md's identity and state; a histogram bucket and its
//! sum) are written inside the block's sequence lock ([`MdStats::set_identity`],
//! [`QueueConsumerStats::record_wait_ns`]): the writer makes the sequence odd, writes, makes it
//! even. A reader retries while it is odd or changed, at most [`SEQLOCK_RETRIES`] times, then
//! returns what it read marked inconsistent — a writer killed mid-update never hangs a reader.
//! Plain counters outside the lock are each atomic but may be one update apart from each other.
//!
//! # Queue halves
//!
//! The rings keep their own counters ([`crate::layout::ProducerCounters`],
//! [`crate::layout::ConsumerCounters`]) in the ring header. Their owner *mirrors* them into the
//! stats halves ([`QueueProducerStats::publish_from`], [`QueueConsumerStats::publish_from`]) on a
//! timer tick or once per loop iteration, so viewstats maps one segment only.
//!
//! Queue wait time: the producer stamps the monotonic time of each flush that published frames
//! in its half ([`QueueProducerStats::stamp_publish`]); when the consumer begins a batch it reads
//! that stamp and records `now - stamp` once per new stamp
//! ([`QueueConsumerStats::note_pickup`]). This is "latest publish → consumer pick-up": it includes
//! the doorbell wake-up (~25–30 µs across vCPUs here) and time the consumer was busy elsewhere; when
//! several flushes coalesce into one batch it measures the newest, so it is a lower bound for the
//! oldest frame. Frames themselves carry no timestamp (the 24-byte frame header is full). Since
//! ring layout 3 a frame is visible to the consumer from its commit, a little before the flush
//! that stamps this time, so a pick-up between the two is measured from the previous flush's
//! stamp (if that one was not counted yet): the commit-to-flush gap is one loop iteration.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use shmq::ring::HeapMemory;
//! use shmq::stats::{Io, StatsReader, StatsSegment, required_len};
//! use shmq::sys::ProcId;
//!
//! let mem = Arc::new(HeapMemory::new(required_len(2)));
//! let me = ProcId { pid: 1, start_time: 2 };
//! let stats = StatsSegment::create_in(mem.clone(), 2, 7, me).unwrap();
//! let io = stats.io();
//! io.inc(Io::ConnectionsAccepted);
//! let reader = StatsReader::attach_in(mem).unwrap();
//! let snap = reader.snapshot();
//! assert_eq!(snap.get("io", 0, "connections_accepted"), Some(1));
//! ```
#![cfg(not(loom))]
// Loom atomics are not layout-compatible with the real ones, and this module casts shared memory
// to atomics throughout: it is compiled out under loom (the ring's loom model does not use it).

mod abi;
mod histogram;
mod mapping;
mod names;
mod reader;
mod schema;
mod segment;
mod seqlock;
mod writer;

pub use abi::{
    BLOCK_ALIGN, COMMAND_NAME_BYTES, COMMAND_NAME_WORDS, COMMAND_SLOTS, DescEntry, HEADER_BYTES,
    HELP_BYTES, MAX_MD_SLOTS, MAX_SECTIONS, MD_COMMANDS_WORD, MD_DESCRIBED, MD_NAMES_WORD,
    MD_OTHER_WORD, MD_WORDS, NAME_BYTES, SCHEMA_VERSION, SECTION_NAME_BYTES, SEGMENT_MODE,
    STATS_LAYOUT_VERSION, STATS_MAGIC, SectionDesc, StatsHeader, UNIT_BYTES, block_stride,
    required_len,
};
pub use histogram::{
    CONSUMER_WORDS, HIST_BUCKETS, WAIT_HISTOGRAM, bucket_index, bucket_upper_bound,
    histogram_count, quantile,
};
pub use mapping::{Descriptor, Section, SegmentInfo, StatsError};
pub use names::{
    COMMANDS_PREFIX, CommandNameError, NameArea, OTHER_COMMAND, check_command_names, decode_name,
    encode_name,
};
pub use reader::{BlockName, BlockSnapshot, Counter, Snapshot, StatsReader};
pub use schema::{
    CounterDesc, CounterKind, CounterSet, Counts, IO_COUNTERS, Io, IoCounts, MD_COUNTERS, Md,
    MdCounts, MdState, QUEUE_CONSUMER_COUNTERS, QUEUE_PRODUCER_COUNTERS, QueueConsumer,
    QueueProducer, SectionKind, Side,
};
pub use segment::StatsSegment;
pub use seqlock::{SEQLOCK_RETRIES, read_consistent};
pub use writer::{IoStats, MdStats, QueueConsumerStats, QueueProducerStats};

/// The segment name for server `name`: `{name}.stats` (POSIX: `/dev/shm/{name}.stats`).
pub fn segment_name(name: &str) -> String {
    format!("{name}.stats")
}

/// CLOCK_MONOTONIC in nanoseconds (the vDSO: no syscall). Heartbeats and publish stamps use it;
/// it is the same clock in every process of the machine.
pub fn monotonic_ns() -> u64 {
    clock_ns(nix::time::ClockId::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch.
pub fn unix_ns() -> u64 {
    clock_ns(nix::time::ClockId::CLOCK_REALTIME)
}

fn clock_ns(id: nix::time::ClockId) -> u64 {
    match nix::time::clock_gettime(id) {
        Ok(ts) => (ts.tv_sec() as u64).saturating_mul(1_000_000_000) + ts.tv_nsec() as u64,
        // clock_gettime fails only for an invalid clock id; these two always exist.
        Err(_) => 0,
    }
}
