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
//! | section `md` | one block per md slot ([`Md`]) | md of that slot (io_conn marks it dead) |
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
//! oldest frame. Frames themselves carry no timestamp (the frame header is 16 bytes and full).
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

use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::layout::{ConsumerCounters, Direction, ProducerCounters};
use crate::region::{self, Backend, Segment};
use crate::ring::Memory;
use crate::sync::{AtomicU32, AtomicU64, Ordering, fence, spin_hint};
use crate::sys::ProcId;

/// `b"SHMSTATS"`: lets attach reject foreign segments early.
pub const STATS_MAGIC: u64 = u64::from_le_bytes(*b"SHMSTATS");
/// Bump on any change to [`StatsHeader`], [`SectionDesc`], [`DescEntry`] or the block format
/// (word 0 = sequence). A generic reader needs the same value.
pub const STATS_LAYOUT_VERSION: u32 = 1;
/// Bump on any change to the counter sets ([`Io`], [`Md`], [`QueueProducer`], [`QueueConsumer`],
/// the histogram). Typed writers need the same value; a generic reader does not.
pub const SCHEMA_VERSION: u32 = 1;
/// Entries in [`StatsHeader::sections`].
pub const MAX_SECTIONS: usize = 8;
/// Size of [`StatsHeader`]; the descriptor table starts here.
pub const HEADER_BYTES: usize = 512;
/// Alignment and stride unit of every block.
pub const BLOCK_ALIGN: usize = 128;
/// Bytes of [`DescEntry::name`] (NUL-padded UTF-8).
pub const NAME_BYTES: usize = 48;
/// Bytes of [`DescEntry::unit`].
pub const UNIT_BYTES: usize = 16;
/// Bytes of [`DescEntry::help`].
pub const HELP_BYTES: usize = 160;
/// Bytes of [`SectionDesc::name`].
pub const SECTION_NAME_BYTES: usize = 16;
/// How many times a reader retries a block whose sequence is odd or changed before it gives up
/// and returns what it read, marked inconsistent.
pub const SEQLOCK_RETRIES: u32 = 100;
/// Largest md slot count a segment may describe.
pub const MAX_MD_SLOTS: u32 = 4096;
/// Mode of the created segment: owner-only, like every segment of shmsrv.
pub const SEGMENT_MODE: u32 = 0o600;

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

// ---------------------------------------------------------------------------------------------
// ABI structs
// ---------------------------------------------------------------------------------------------

/// One section of blocks: `instances` blocks of `stride` bytes from `offset`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SectionDesc {
    /// Short name (`io`, `md`, `in.producer`, …), NUL-padded UTF-8.
    pub name: [u8; SECTION_NAME_BYTES],
    /// [`SectionKind`] as `u32` (0 = unknown to this build; still readable generically).
    pub kind: u32,
    /// Number of blocks (1 for `io`, the md slot count for the others).
    pub instances: u32,
    /// Offset of the first block from the segment base; a multiple of [`BLOCK_ALIGN`].
    pub offset: u64,
    /// Bytes from one block to the next; a multiple of [`BLOCK_ALIGN`].
    pub stride: u32,
    /// Value words per block (word 0, the sequence, not included).
    pub words: u32,
    /// Index of this section's first entry in the descriptor table.
    pub desc_first: u32,
    /// Number of descriptor entries of this section.
    pub desc_count: u32,
}

/// At offset 0 of the stats segment. Written once by the creator before `ready`.
#[repr(C)]
#[derive(Debug)]
pub struct StatsHeader {
    /// Always [`STATS_MAGIC`].
    pub magic: u64,
    /// [`STATS_LAYOUT_VERSION`] of the creator.
    pub layout_version: u32,
    /// [`SCHEMA_VERSION`] of the creator.
    pub schema_version: u32,
    /// The creator's (io_conn's) epoch: new on every start.
    pub epoch: u64,
    /// When the segment was created, Unix time in nanoseconds.
    pub created_unix_ns: u64,
    /// Creator's pid.
    pub creator_pid: u32,
    /// Number of md slots (instances of the per-slot sections).
    pub md_slots: u32,
    /// Creator's start time in clock ticks since boot, so a reused pid is not taken for it.
    pub creator_start_time: u64,
    /// Bytes of the segment the layout uses (the mapping may be longer, never shorter).
    pub total_len: u64,
    /// Offset of the descriptor table.
    pub desc_offset: u64,
    /// Entries in the descriptor table.
    pub desc_count: u32,
    /// Bytes per descriptor entry (`size_of::<DescEntry>()`).
    pub desc_size: u32,
    /// Used entries of `sections`.
    pub section_count: u32,
    /// 0 while the creator initialises; it stores 1 (Release) as its last write.
    pub ready: AtomicU32,
    _pad0: [u64; 6],
    /// The sections, `section_count` of them used.
    pub sections: [SectionDesc; MAX_SECTIONS],
}

/// One descriptor: what one word of a section's blocks means.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DescEntry {
    /// Counter name, NUL-padded UTF-8 (`connections_accepted`).
    pub name: [u8; NAME_BYTES],
    /// Unit (`connections`, `bytes`, `ns`, `unix_ns`, `mono_ns`, …), NUL-padded.
    pub unit: [u8; UNIT_BYTES],
    /// One-line help, NUL-padded.
    pub help: [u8; HELP_BYTES],
    /// Index of the section in [`StatsHeader::sections`].
    pub section: u32,
    /// Word index in the block, `1..=words`.
    pub word: u32,
    /// [`CounterKind`] as `u32`.
    pub kind: u32,
    _pad0: u32,
    /// For [`CounterKind::Bucket`]: inclusive upper bound in `unit` (`u64::MAX` = +Inf).
    pub bound: u64,
    _pad1: u64,
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(StatsHeader, magic) == 0);
    assert!(offset_of!(StatsHeader, layout_version) == 8);
    assert!(offset_of!(StatsHeader, schema_version) == 12);
    assert!(offset_of!(StatsHeader, epoch) == 16);
    assert!(offset_of!(StatsHeader, created_unix_ns) == 24);
    assert!(offset_of!(StatsHeader, creator_pid) == 32);
    assert!(offset_of!(StatsHeader, md_slots) == 36);
    assert!(offset_of!(StatsHeader, creator_start_time) == 40);
    assert!(offset_of!(StatsHeader, total_len) == 48);
    assert!(offset_of!(StatsHeader, desc_offset) == 56);
    assert!(offset_of!(StatsHeader, desc_count) == 64);
    assert!(offset_of!(StatsHeader, desc_size) == 68);
    assert!(offset_of!(StatsHeader, section_count) == 72);
    assert!(offset_of!(StatsHeader, ready) == 76);
    assert!(offset_of!(StatsHeader, sections) == 128);
    assert!(size_of::<StatsHeader>() == HEADER_BYTES);
    assert!(offset_of!(SectionDesc, kind) == 16);
    assert!(offset_of!(SectionDesc, instances) == 20);
    assert!(offset_of!(SectionDesc, offset) == 24);
    assert!(offset_of!(SectionDesc, stride) == 32);
    assert!(offset_of!(SectionDesc, words) == 36);
    assert!(offset_of!(SectionDesc, desc_first) == 40);
    assert!(offset_of!(SectionDesc, desc_count) == 44);
    assert!(size_of::<SectionDesc>() == 48);
    assert!(offset_of!(DescEntry, unit) == 48);
    assert!(offset_of!(DescEntry, help) == 64);
    assert!(offset_of!(DescEntry, section) == 224);
    assert!(offset_of!(DescEntry, word) == 228);
    assert!(offset_of!(DescEntry, kind) == 232);
    assert!(offset_of!(DescEntry, bound) == 240);
    assert!(size_of::<DescEntry>() == 256);
    assert!(size_of::<AtomicU64>() == 8 && align_of::<AtomicU64>() == 8);
    // Every typed block fits the stride the creator gives it.
    assert!(block_stride(Io::COUNT) == 256);
    assert!(block_stride(Md::COUNT) == 384);
    assert!(block_stride(QueueProducer::COUNT) == 128);
    assert!(block_stride(CONSUMER_WORDS) == 512);
};

/// Bytes per block for `words` value words (plus the sequence word), rounded to [`BLOCK_ALIGN`].
pub const fn block_stride(words: usize) -> usize {
    ((words + 1) * 8).div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN
}

// ---------------------------------------------------------------------------------------------
// Counter sets
// ---------------------------------------------------------------------------------------------

/// What a word means to a viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CounterKind {
    /// Monotonic while its writer lives (a rate makes sense).
    Counter = 1,
    /// A level that goes up and down, or an identity (pid, state, time).
    Gauge = 2,
    /// One bucket of a histogram (not cumulative); `bound` is its inclusive upper bound.
    Bucket = 3,
    /// The sum of the values recorded in the histogram of the same name.
    HistSum = 4,
}

impl CounterKind {
    /// Decodes [`DescEntry::kind`].
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Counter),
            2 => Some(Self::Gauge),
            3 => Some(Self::Bucket),
            4 => Some(Self::HistSum),
            _ => None,
        }
    }
}

/// The compile-time description of one counter of a typed block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterDesc {
    /// Name (unique in its section).
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: CounterKind,
    /// Unit.
    pub unit: &'static str,
    /// One-line help.
    pub help: &'static str,
}

macro_rules! counter_set {
    ($(#[$meta:meta])* $E:ident, $DESC:ident {
        $( $V:ident => $kind:ident $name:literal $unit:literal $help:literal; )*
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $E {
            $( #[doc = $help] $V, )*
        }
        impl $E {
            /// Number of counters of this block.
            pub const COUNT: usize = [$($E::$V),*].len();
            /// Every counter, in word order.
            pub const ALL: [$E; [$($E::$V),*].len()] = [$($E::$V),*];
            /// The counter's descriptor.
            pub const fn desc(self) -> &'static CounterDesc {
                &$DESC[self as usize]
            }
            /// Its word index in the block (word 0 is the sequence).
            #[inline]
            pub const fn word(self) -> usize {
                self as usize + 1
            }
        }
        #[doc = concat!("Descriptors of [`", stringify!($E), "`], indexed by its discriminant.")]
        pub const $DESC: [CounterDesc; [$($E::$V),*].len()] = [
            $( CounterDesc { name: $name, kind: CounterKind::$kind, unit: $unit, help: $help }, )*
        ];
    };
}

counter_set! {
    /// io_conn's counters (section `io`, one block, written by io_conn only).
    Io, IO_COUNTERS {
        ConnectionsCurrent => Gauge "connections_current" "connections" "Client connections open now";
        ConnectionsAccepted => Counter "connections_accepted" "connections" "Client connections accepted";
        ConnectionsRefused => Counter "connections_refused" "connections" "Connections closed at once: max_connections reached or no md running";
        ClosedByPeer => Counter "closed_by_peer" "connections" "Connections the client closed (EOF or reset)";
        ClosedIdle => Counter "closed_idle" "connections" "Connections closed by the server: idle_timeout";
        ClosedDeadline => Counter "closed_deadline" "connections" "Connections closed by the server: a message not complete within message_deadline";
        ClosedOversized => Counter "closed_oversized" "connections" "Connections closed by the server: a message above max_message";
        ClosedCreditOverrun => Counter "closed_credit_overrun" "connections" "Connections closed by the server: unsent output above output_credit";
        ClosedError => Counter "closed_error" "connections" "Connections closed by the server: socket error";
        ClosedByMd => Counter "closed_by_md" "connections" "Connections closed because md sent CLOSE";
        ClosedMdGone => Counter "closed_md_gone" "connections" "Connections closed because their md instance died";
        ClosedShutdown => Counter "closed_shutdown" "connections" "Connections closed at shutdown (drain deadline)";
        BytesIn => Counter "bytes_in" "bytes" "Bytes read from client sockets";
        BytesOut => Counter "bytes_out" "bytes" "Bytes written to client sockets";
        MessagesIn => Counter "messages_in" "messages" "Framed client messages sent to md (DATA frames)";
        MessagesOut => Counter "messages_out" "messages" "DATA frames received from md";
        FramingErrors => Counter "framing_errors" "events" "Client byte streams that broke their service's framing";
        BackpressurePauses => Counter "backpressure_pauses" "events" "Times a socket stopped being read because its md queue was full";
        MdPauses => Counter "md_pauses" "events" "PAUSE frames received from md";
        Broadcasts => Counter "broadcasts" "frames" "BROADCAST frames received from md";
        EpollWakeups => Counter "epoll_wakeups" "wakeups" "epoll_wait calls that returned events";
        EpollEvents => Counter "epoll_events" "events" "Events epoll_wait returned";
        MdDeaths => Counter "md_deaths" "events" "md instances seen dying (pidfd readable)";
        MdAttaches => Counter "md_attaches" "events" "md instances that attached a queue pair";
        HeartbeatNs => Gauge "heartbeat_mono_ns" "mono_ns" "CLOCK_MONOTONIC of io_conn's last loop iteration";
    }
}

counter_set! {
    /// One md instance's counters (section `md`, one block per slot, written by that md; io_conn
    /// writes only `state = dead` after the md is gone).
    Md, MD_COUNTERS {
        Pid => Gauge "pid" "pid" "Process id of the md in this slot (0 = never used)";
        ProcStartTicks => Gauge "proc_start_ticks" "ticks" "Its start time in clock ticks since boot (identity with pid)";
        StartUnixNs => Gauge "start_time_unix_ns" "unix_ns" "When it attached this slot, Unix time";
        State => Gauge "state" "state" "0 absent, 1 starting, 2 running, 3 stopping, 4 exited, 5 dead";
        Epoch => Gauge "epoch" "epoch" "io_conn epoch it attached under";
        HeartbeatNs => Gauge "heartbeat_mono_ns" "mono_ns" "CLOCK_MONOTONIC of its last loop iteration";
        FramesIn => Counter "frames_in" "frames" "Frames consumed from its input ring";
        MessagesIn => Counter "messages_in" "messages" "DATA frames received (requests)";
        BytesIn => Counter "bytes_in" "bytes" "Payload bytes of DATA frames received";
        MessagesOut => Counter "messages_out" "messages" "DATA frames sent";
        BytesOut => Counter "bytes_out" "bytes" "Payload bytes of DATA frames sent";
        FlowsOpened => Counter "flows_opened" "flows" "OPEN frames accepted by a service";
        FlowsRefused => Counter "flows_refused" "flows" "OPEN frames refused (unknown service, bad payload)";
        ClosesIn => Counter "closes_in" "frames" "CLOSE frames received (client gone)";
        ClosesOut => Counter "closes_out" "frames" "CLOSE frames sent";
        Eofs => Counter "eofs" "frames" "EOF frames received";
        Drained => Counter "drained" "frames" "DRAINED frames received";
        Pauses => Counter "pauses" "frames" "PAUSE frames sent";
        Resumes => Counter "resumes" "frames" "RESUME frames sent";
        Held => Counter "held" "requests" "Requests held behind a running one";
        Errors => Counter "errors" "requests" "Requests answered with an error";
        UnknownFlow => Counter "unknown_flow" "frames" "Frames for a flow md does not know";
        BadFrames => Counter "bad_frames" "frames" "Frames md could not make sense of";
        OutFull => Counter "out_full" "events" "Times the output ring was full";
        Corrupt => Counter "corrupt" "events" "Corrupt input rings seen";
        TimersFired => Counter "timers_fired" "timers" "Timers that fired for a live flow";
        Attaches => Counter "attaches" "events" "Queue pair attaches (including the first)";
        Wakeups => Counter "wakeups" "wakeups" "Doorbell wake-ups";
        BusyNs => Counter "busy_ns" "ns" "Time spent working, from a wake-up to the next idle check";
        EchoMessages => Counter "echo_messages" "requests" "echo: messages echoed";
        ReverseLines => Counter "reverse_lines" "requests" "reverse: lines reversed";
        DumbPing => Counter "dumb_ping" "requests" "dumb: PING requests";
        DumbWait => Counter "dumb_wait" "requests" "dumb: WAIT requests";
        DumbBurn => Counter "dumb_burn" "requests" "dumb: BURN requests";
        DumbStream => Counter "dumb_stream" "requests" "dumb: STREAM requests";
        DumbOther => Counter "dumb_other" "requests" "dumb: anything else (answered ERR)";
        OtherRequests => Counter "other_requests" "requests" "Requests to services without a counter of their own";
    }
}

counter_set! {
    /// A queue's producer half (sections `in.producer`: io_conn; `out.producer`: md).
    QueueProducer, QUEUE_PRODUCER_COUNTERS {
        Frames => Counter "frames" "frames" "Frames committed";
        Bytes => Counter "bytes" "bytes" "Payload bytes committed";
        FullEvents => Counter "full_events" "events" "Times a push found the ring full";
        Doorbells => Counter "doorbells" "events" "Doorbell bytes written (the consumer was asleep)";
        DepthBytes => Gauge "depth_bytes" "bytes" "Backlog (tail - head) at the last mirror";
        MaxDepthBytes => Gauge "max_depth_bytes" "bytes" "Largest backlog seen at a publish";
        Generation => Gauge "generation" "generation" "Ring generation these counters belong to";
        LastPublishNs => Gauge "last_publish_mono_ns" "mono_ns" "CLOCK_MONOTONIC of the last flush that published frames";
    }
}

counter_set! {
    /// A queue's consumer half (sections `in.consumer`: md; `out.consumer`: io_conn), followed by
    /// [`HIST_BUCKETS`] wait-time buckets.
    QueueConsumer, QUEUE_CONSUMER_COUNTERS {
        Frames => Counter "frames" "frames" "Frames consumed";
        Bytes => Counter "bytes" "bytes" "Payload bytes consumed";
        Sleeps => Counter "sleeps" "events" "Times the consumer armed its doorbell and slept";
        Wakeups => Counter "wakeups" "wakeups" "Times the consumer woke from its doorbell";
        Corrupt => Counter "corrupt" "events" "Corrupt frames or impossible positions seen";
        Generation => Gauge "generation" "generation" "Ring generation these counters belong to";
        WaitSumNs => HistSum "wait_ns" "ns" "Queue wait: latest producer publish to consumer pick-up";
    }
}

/// Name of the wait histogram (its buckets and its [`QueueConsumer::WaitSumNs`]).
pub const WAIT_HISTOGRAM: &str = "wait_ns";
/// Buckets of the wait histogram: `< 256 ns`, two per octave from 2^8 to 2^31 ns, `>= 2^31 ns`.
pub const HIST_BUCKETS: usize = 48;
const HIST_MIN_SHIFT: u32 = 8;
const HIST_MAX_SHIFT: u32 = 30;
/// Value words of a consumer half: its counters, then the buckets.
pub const CONSUMER_WORDS: usize = QueueConsumer::COUNT + HIST_BUCKETS;
const _: () = assert!(1 + 2 * (HIST_MAX_SHIFT - HIST_MIN_SHIFT + 1) as usize + 1 == HIST_BUCKETS);

/// Histogram bucket of `ns` (log-linear: two linear sub-buckets per power of two). Shifts and a
/// leading-zero count: no division, no table.
#[inline]
pub const fn bucket_index(ns: u64) -> usize {
    if ns < (1 << HIST_MIN_SHIFT) {
        return 0;
    }
    let m = 63 - ns.leading_zeros();
    if m > HIST_MAX_SHIFT {
        return HIST_BUCKETS - 1;
    }
    let sub = ((ns >> (m - 1)) & 1) as usize;
    1 + (m - HIST_MIN_SHIFT) as usize * 2 + sub
}

/// Inclusive upper bound of bucket `i` in ns (`u64::MAX` for the last).
pub const fn bucket_upper_bound(i: usize) -> u64 {
    if i == 0 {
        return (1 << HIST_MIN_SHIFT) - 1;
    }
    if i >= HIST_BUCKETS - 1 {
        return u64::MAX;
    }
    let m = HIST_MIN_SHIFT + ((i - 1) / 2) as u32;
    if (i - 1).is_multiple_of(2) {
        (1u64 << m) + (1u64 << (m - 1)) - 1
    } else {
        (1u64 << (m + 1)) - 1
    }
}

/// The `q` quantile (0..=1) of a histogram given as `(inclusive upper bound, count)` pairs in
/// bound order: the upper bound of the bucket holding it (for the open last bucket, the previous
/// bound + 1, i.e. "at least"). `None` when empty.
pub fn quantile(buckets: &[(u64, u64)], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    let mut prev_bound = 0u64;
    for &(bound, count) in buckets {
        seen += count;
        if seen >= rank {
            return Some(if bound == u64::MAX { prev_bound.saturating_add(1) } else { bound });
        }
        prev_bound = bound;
    }
    buckets.last().map(|b| b.0)
}

/// md slot states ([`Md::State`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum MdState {
    /// Never used since io_conn started.
    Absent = 0,
    /// Attached, setting up its queues.
    Starting = 1,
    /// Serving.
    Running = 2,
    /// Draining after SIGTERM.
    Stopping = 3,
    /// Exited cleanly (written by the md itself).
    Exited = 4,
    /// Died (written by io_conn after the pidfd said so).
    Dead = 5,
}

impl MdState {
    /// Decodes the word; `None` for anything else.
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => Self::Absent,
            1 => Self::Starting,
            2 => Self::Running,
            3 => Self::Stopping,
            4 => Self::Exited,
            5 => Self::Dead,
            _ => return None,
        })
    }
    /// Lower-case name for viewers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Exited => "exited",
            Self::Dead => "dead",
        }
    }
}

/// The sections this build writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SectionKind {
    /// io_conn's block.
    Io = 1,
    /// One block per md slot.
    Md = 2,
    /// `in.i` (io_conn → md) producer halves; io_conn writes.
    InProducer = 3,
    /// `in.i` consumer halves; md writes.
    InConsumer = 4,
    /// `out.i` (md → io_conn) producer halves; md writes.
    OutProducer = 5,
    /// `out.i` consumer halves; io_conn writes.
    OutConsumer = 6,
}

impl SectionKind {
    /// All, in segment order.
    pub const ALL: [SectionKind; 6] = [
        Self::Io,
        Self::Md,
        Self::InProducer,
        Self::InConsumer,
        Self::OutProducer,
        Self::OutConsumer,
    ];
    /// Decodes [`SectionDesc::kind`].
    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u32 == v)
    }
    /// The section's name in the segment.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::Md => "md",
            Self::InProducer => "in.producer",
            Self::InConsumer => "in.consumer",
            Self::OutProducer => "out.producer",
            Self::OutConsumer => "out.consumer",
        }
    }
    /// The queue half for a ring direction and side.
    pub const fn queue(dir: Direction, side: Side) -> Self {
        match (dir, side) {
            (Direction::ToMd, Side::Producer) => Self::InProducer,
            (Direction::ToMd, Side::Consumer) => Self::InConsumer,
            (Direction::ToIo, Side::Producer) => Self::OutProducer,
            (Direction::ToIo, Side::Consumer) => Self::OutConsumer,
        }
    }
    const fn words(self) -> usize {
        match self {
            Self::Io => Io::COUNT,
            Self::Md => Md::COUNT,
            Self::InProducer | Self::OutProducer => QueueProducer::COUNT,
            Self::InConsumer | Self::OutConsumer => CONSUMER_WORDS,
        }
    }
}

/// Which half of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The side that pushes frames.
    Producer,
    /// The side that reads them.
    Consumer,
}

/// Bytes a segment with `md_slots` slots needs (rounded up to 4 KiB).
pub fn required_len(md_slots: u32) -> usize {
    plan(md_slots).1
}

/// Section offsets and the total length for `md_slots`.
fn plan(md_slots: u32) -> ([SectionDesc; MAX_SECTIONS], usize, u32) {
    let mut sections = [SectionDesc::default(); MAX_SECTIONS];
    let mut desc_total = 0u32;
    for (i, k) in SectionKind::ALL.into_iter().enumerate() {
        let n = k.words() as u32;
        sections[i].kind = k as u32;
        sections[i].words = n;
        sections[i].stride = block_stride(k.words()) as u32;
        sections[i].instances = if k == SectionKind::Io { 1 } else { md_slots };
        sections[i].desc_first = desc_total;
        sections[i].desc_count = n;
        put_str(&mut sections[i].name, k.name());
        desc_total += n;
    }
    let desc_bytes = desc_total as usize * size_of::<DescEntry>();
    let mut off = (HEADER_BYTES + desc_bytes).next_multiple_of(BLOCK_ALIGN);
    for s in sections.iter_mut().take(SectionKind::ALL.len()) {
        s.offset = off as u64;
        off += s.instances as usize * s.stride as usize;
    }
    (sections, off.next_multiple_of(4096), desc_total)
}

fn put_str(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn get_str(src: &[u8]) -> String {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a stats segment could not be created or attached.
#[derive(Debug)]
#[non_exhaustive]
pub enum StatsError {
    /// No segment of that name: no server running under it.
    NotFound {
        /// The segment name (`{name}.stats`).
        name: String,
    },
    /// A segment of that name exists already (a live server, or a stale one to remove).
    Exists {
        /// The segment name.
        name: String,
    },
    /// The kernel refused.
    Io {
        /// The segment name.
        name: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The creator has not set `ready` yet; retry.
    NotReady,
    /// Not a stats segment.
    BadMagic(u64),
    /// Created by a build with another [`STATS_LAYOUT_VERSION`].
    VersionMismatch {
        /// In the segment.
        found: u32,
        /// This build's.
        expected: u32,
    },
    /// Created by a build with another counter set (typed writers only).
    SchemaMismatch {
        /// In the segment.
        found: u32,
        /// This build's.
        expected: u32,
    },
    /// The mapping is shorter than the header says.
    Truncated {
        /// Mapping length.
        len: u64,
        /// Length the header implies.
        needed: u64,
    },
    /// A header field is impossible (what is named).
    BadGeometry(&'static str),
    /// `md_slots` is 0 or above [`MAX_MD_SLOTS`], or a slot index is out of range.
    BadSlot(u32),
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { name } => write!(f, "no stats segment {name}"),
            Self::Exists { name } => write!(f, "stats segment {name} exists already"),
            Self::Io { name, .. } => write!(f, "cannot map stats segment {name}"),
            Self::NotReady => f.write_str("stats segment is still being initialised"),
            Self::BadMagic(m) => write!(f, "not a stats segment (magic {m:#018x})"),
            Self::VersionMismatch { found, expected } => {
                write!(f, "stats layout version {found}, this build reads {expected}")
            }
            Self::SchemaMismatch { found, expected } => {
                write!(f, "stats schema version {found}, this build writes {expected}")
            }
            Self::Truncated { len, needed } => {
                write!(f, "stats segment is {len} bytes, its header implies {needed}")
            }
            Self::BadGeometry(what) => write!(f, "stats segment header is corrupt: {what}"),
            Self::BadSlot(s) => write!(f, "md slot {s} is out of range"),
        }
    }
}

impl std::error::Error for StatsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn from_create(e: region::CreateError, name: &str) -> StatsError {
    match e {
        region::CreateError::Exists { name } => StatsError::Exists { name },
        region::CreateError::Io { name, source } => StatsError::Io { name, source },
        #[allow(unreachable_patterns)]
        _ => StatsError::Io { name: name.to_owned(), source: io::Error::other("create failed") },
    }
}

fn from_attach(e: region::AttachError, name: &str) -> StatsError {
    match e {
        region::AttachError::NotFound { name } => StatsError::NotFound { name },
        region::AttachError::Io { name, source } => StatsError::Io { name, source },
        #[allow(unreachable_patterns)]
        _ => StatsError::Io { name: name.to_owned(), source: io::Error::other("attach failed") },
    }
}

// ---------------------------------------------------------------------------------------------
// The mapping and its validated geometry
// ---------------------------------------------------------------------------------------------

enum Backing {
    Segment(Segment),
    Memory(Arc<dyn Memory>),
}

impl fmt::Debug for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Segment(s) => s.fmt(f),
            Self::Memory(m) => write!(f, "Memory({} bytes)", m.len()),
        }
    }
}

/// The mapped bytes plus what keeps them mapped.
#[derive(Debug)]
struct Mapping {
    base: NonNull<u8>,
    len: usize,
    _backing: Backing,
}

// SAFETY: `Mapping` only hands out shared references to atomics (and volatile copies of bytes
// written once before `ready`) inside a mapping that `_backing` keeps alive and never moves;
// atomics may be used from any thread. `Segment` and `dyn Memory` are Send + Sync themselves.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: every shared access goes through atomics or volatile reads.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(backing: Backing) -> Result<Self, StatsError> {
        let (ptr, len) = match &backing {
            Backing::Segment(s) => (s.as_ptr(), s.len()),
            Backing::Memory(m) => (m.as_ptr(), m.len()),
        };
        let base = NonNull::new(ptr).ok_or(StatsError::BadGeometry("null mapping"))?;
        if !(ptr as usize).is_multiple_of(BLOCK_ALIGN) {
            return Err(StatsError::BadGeometry("mapping not 128-byte aligned"));
        }
        if len < HEADER_BYTES {
            return Err(StatsError::Truncated { len: len as u64, needed: HEADER_BYTES as u64 });
        }
        Ok(Self { base, len, _backing: backing })
    }

    fn header(&self) -> &StatsHeader {
        // SAFETY: in bounds: len >= HEADER_BYTES (checked in `new`) = size_of::<StatsHeader>();
        // aligned: the base is 128-aligned (checked) and the header needs 8. Aliasing: only the
        // creator writes the plain fields, before `ready`, and only through a raw pointer
        // (`create_in`); after that every access is a read or an atomic on `ready`.
        unsafe { &*self.base.as_ptr().cast::<StatsHeader>() }
    }

    /// The words of a block: `1 + words` atomics from `offset`.
    fn words(&self, offset: usize, words: usize) -> &[AtomicU64] {
        assert!(
            offset.is_multiple_of(8) && offset + (words + 1) * 8 <= self.len,
            "block out of bounds"
        );
        // SAFETY: in bounds (asserted just above, against the real mapping length); aligned: the
        // base is 128-aligned and offset a multiple of 8; AtomicU64 has the size and alignment of
        // u64 (const-asserted) and every bit pattern is valid. Aliasing: the block area is only
        // ever accessed through these atomics, by every process. On a read-only mapping only loads
        // are performed, which std documents as allowed for atomics of native size.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(offset).cast::<AtomicU64>(),
                words + 1,
            )
        }
    }
}

/// A section as validated at attach.
#[derive(Debug, Clone)]
pub struct Section {
    /// Name from the segment.
    pub name: String,
    /// Kind, if this build knows it.
    pub kind: Option<SectionKind>,
    /// Number of blocks.
    pub instances: u32,
    offset: usize,
    stride: usize,
    /// Value words per block.
    pub words: usize,
    /// The descriptors of this section, in table order.
    pub descriptors: Vec<Descriptor>,
}

/// A descriptor as read from the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Counter name.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// One-line help.
    pub help: String,
    /// Kind (unknown kinds are read as gauges).
    pub kind: CounterKind,
    /// Word index in the block, `1..=words`; the value is `values[word - 1]` of a snapshot.
    pub word: usize,
    /// Bucket upper bound (inclusive), for [`CounterKind::Bucket`].
    pub bound: u64,
}

/// The header fields a viewer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The creator's epoch (changes on every restart of io_conn).
    pub epoch: u64,
    /// Creation time, Unix ns.
    pub created_unix_ns: u64,
    /// Creator (io_conn) pid.
    pub creator_pid: u32,
    /// Creator start time, clock ticks since boot.
    pub creator_start_time: u64,
    /// md slots.
    pub md_slots: u32,
    /// Layout version.
    pub layout_version: u32,
    /// Schema version of the creator.
    pub schema_version: u32,
}

#[derive(Debug)]
struct Geometry {
    info: SegmentInfo,
    sections: Arc<[Section]>,
}

/// Loads `ready`, copies the header, checks every field against the mapping, reads descriptors.
fn validate(map: &Mapping) -> Result<Geometry, StatsError> {
    let hp = map.header();
    // Acquire pairs with the creator's Release store of `ready` in `create_in`: every header,
    // descriptor and zeroed block byte written before it is visible once we see 1.
    if hp.ready.load(Ordering::Acquire) != 1 {
        // The magic may already be wrong; report that first so a foreign file is not "not ready".
        // SAFETY: in bounds and aligned (see `Mapping::header`); volatile because another
        // process may be writing it right now (the creator, before `ready`).
        let magic = unsafe { std::ptr::read_volatile(&raw const hp.magic) };
        if magic != 0 && magic != STATS_MAGIC {
            return Err(StatsError::BadMagic(magic));
        }
        return Err(StatsError::NotReady);
    }
    // SAFETY: in bounds and aligned (see `Mapping::header`). A volatile bitwise copy: the plain
    // fields were written once before `ready`, but the segment is untrusted and a foreign writer
    // could change them under us; the copy is checked below and never re-read.
    let h: StatsHeader = unsafe { std::ptr::read_volatile(std::ptr::from_ref(hp)) };
    if h.magic != STATS_MAGIC {
        return Err(StatsError::BadMagic(h.magic));
    }
    if h.layout_version != STATS_LAYOUT_VERSION {
        return Err(StatsError::VersionMismatch {
            found: h.layout_version,
            expected: STATS_LAYOUT_VERSION,
        });
    }
    let len = map.len as u64;
    if h.total_len > len || h.total_len < HEADER_BYTES as u64 {
        return Err(StatsError::Truncated { len, needed: h.total_len });
    }
    if h.desc_size as usize != size_of::<DescEntry>() {
        return Err(StatsError::BadGeometry("descriptor size"));
    }
    if h.section_count as usize > MAX_SECTIONS {
        return Err(StatsError::BadGeometry("section count"));
    }
    if h.md_slots > MAX_MD_SLOTS {
        return Err(StatsError::BadGeometry("md slot count"));
    }
    let desc_end = (h.desc_count as u64)
        .checked_mul(h.desc_size as u64)
        .and_then(|b| b.checked_add(h.desc_offset))
        .ok_or(StatsError::BadGeometry("descriptor table"))?;
    if !h.desc_offset.is_multiple_of(8)
        || h.desc_offset < HEADER_BYTES as u64
        || desc_end > h.total_len
    {
        return Err(StatsError::BadGeometry("descriptor table"));
    }
    let mut sections = Vec::with_capacity(h.section_count as usize);
    for (si, s) in h.sections.iter().take(h.section_count as usize).enumerate() {
        let end = (s.instances as u64)
            .checked_mul(s.stride as u64)
            .and_then(|b| b.checked_add(s.offset))
            .ok_or(StatsError::BadGeometry("section size"))?;
        if s.offset % BLOCK_ALIGN as u64 != 0
            || !(s.stride as usize).is_multiple_of(BLOCK_ALIGN)
            || s.instances > MAX_MD_SLOTS
            || (s.words as u64 + 1) * 8 > s.stride as u64
            || s.offset < desc_end
            || end > h.total_len
        {
            return Err(StatsError::BadGeometry("section bounds"));
        }
        let first = s.desc_first as u64;
        if first + s.desc_count as u64 > h.desc_count as u64 {
            return Err(StatsError::BadGeometry("section descriptors"));
        }
        let mut descriptors = Vec::with_capacity(s.desc_count as usize);
        for d in 0..s.desc_count as usize {
            let off = h.desc_offset as usize + (s.desc_first as usize + d) * size_of::<DescEntry>();
            // SAFETY: in bounds: off + 256 <= desc_end <= total_len <= mapping length (checked
            // above); aligned: desc_offset is a multiple of 8 and entries are 256 bytes, DescEntry
            // needs 8, and the base is 128-aligned. Volatile copy of bytes written once before
            // `ready`; any bit pattern is a valid DescEntry (integers and byte arrays only).
            let e: DescEntry =
                unsafe { std::ptr::read_volatile(map.base.as_ptr().add(off).cast::<DescEntry>()) };
            if e.word == 0 || e.word > s.words {
                return Err(StatsError::BadGeometry("descriptor word"));
            }
            let _ = si; // entries may name their section; the table order is authoritative
            descriptors.push(Descriptor {
                name: get_str(&e.name),
                unit: get_str(&e.unit),
                help: get_str(&e.help),
                kind: CounterKind::from_u32(e.kind).unwrap_or(CounterKind::Gauge),
                word: e.word as usize,
                bound: e.bound,
            });
        }
        sections.push(Section {
            name: get_str(&s.name),
            kind: SectionKind::from_u32(s.kind),
            instances: s.instances,
            offset: s.offset as usize,
            stride: s.stride as usize,
            words: s.words as usize,
            descriptors,
        });
    }
    let info = SegmentInfo {
        epoch: h.epoch,
        created_unix_ns: h.created_unix_ns,
        creator_pid: h.creator_pid,
        creator_start_time: h.creator_start_time,
        md_slots: h.md_slots,
        layout_version: h.layout_version,
        schema_version: h.schema_version,
    };
    Ok(Geometry { info, sections: sections.into() })
}

// ---------------------------------------------------------------------------------------------
// The sequence lock
// ---------------------------------------------------------------------------------------------

/// Reads `words[1..]` into `out` under the block's sequence (`words[0]`). Returns true if the
/// read is consistent; after [`SEQLOCK_RETRIES`] failed tries, returns false with the last read
/// in `out` (a writer killed mid-update leaves the sequence odd forever).
pub fn read_consistent(words: &[AtomicU64], out: &mut [u64]) -> bool {
    let Some((seq, values)) = words.split_first() else { return true };
    for attempt in 0..SEQLOCK_RETRIES {
        // Acquire pairs with the writer's Release store of the even sequence in `write_end`: if
        // we see the sequence a write ended with, we see everything written before it.
        let s1 = seq.load(Ordering::Acquire);
        for (o, w) in out.iter_mut().zip(values) {
            // Relaxed: ordered by the fences of the seqlock protocol (see below).
            *o = w.load(Ordering::Relaxed);
        }
        // SYNC POINT: Acquire fence pairs with the writer's Release fence in `write_begin`: if any
        // value load above saw a store made after that fence, the odd sequence stored before the
        // fence is visible to the sequence load below, so s2 != s1 (Boehm, "Can seqlocks get along
        // with programming language memory models?", 2012).
        fence(Ordering::Acquire);
        // Relaxed: ordered after the value loads by the fence above.
        let s2 = seq.load(Ordering::Relaxed);
        if s1 == s2 && s1 & 1 == 0 {
            return true;
        }
        if attempt < 10 {
            spin_hint();
        } else {
            std::thread::yield_now();
        }
    }
    false
}

/// Starts a seqlock write: makes the sequence odd. Only the block's one writer calls it.
#[inline]
fn write_begin(seq: &AtomicU64) {
    // Relaxed load: only this writer stores the sequence. `| 1` also repairs a sequence left odd
    // by a predecessor killed mid-update (a new writer of a reused md slot, or io_conn marking a
    // dead md).
    let s = seq.load(Ordering::Relaxed) | 1;
    // Relaxed store: ordered before the value stores by the Release fence below.
    seq.store(s, Ordering::Relaxed);
    // SYNC POINT: Release fence pairs with the reader's Acquire fence in `read_consistent`.
    fence(Ordering::Release);
}

/// Ends a seqlock write: makes the sequence even (and new).
#[inline]
fn write_end(seq: &AtomicU64) {
    // Relaxed load: only this writer stores the sequence.
    let s = seq.load(Ordering::Relaxed);
    // Release pairs with the reader's Acquire load of the sequence: the values stored inside the
    // write are visible to a reader that sees this even sequence.
    seq.store((s | 1).wrapping_add(1), Ordering::Release);
}

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

/// One block, from its single writer's side.
#[derive(Debug)]
struct Block {
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
    fn new(map: Arc<Mapping>, offset: usize, words: usize) -> Self {
        // `Mapping::words` checks bounds and alignment once, here, not on every update.
        let ptr = NonNull::from(&map.words(offset, words)[0]);
        Self { _map: map, ptr, words }
    }
    #[inline]
    fn w(&self) -> &[AtomicU64] {
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
    fn get(&self, word: usize) -> u64 {
        // Relaxed: we are the writer, so this is our own last store.
        self.w()[word].load(Ordering::Relaxed)
    }
    fn zero(&self) {
        for w in &self.w()[1..] {
            // Relaxed: inside a seqlock write by the single writer.
            w.store(0, Ordering::Relaxed);
        }
    }
}

/// io_conn's counters. Obtained once from [`StatsSegment::io`]; io_conn is the only writer.
#[derive(Debug)]
pub struct IoStats(Block);

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
}

/// One md slot's counters. Obtained from [`StatsSegment::attach_writer_md`]; that md is the only
/// writer while it lives.
#[derive(Debug)]
pub struct MdStats {
    b: Block,
    slot: u32,
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
    /// Changes the state (inside the sequence lock, so a reader sees it with the identity).
    pub fn set_state(&self, s: MdState) {
        let w = self.b.w();
        write_begin(&w[0]);
        self.b.set(Md::State.word(), s as u64);
        write_end(&w[0]);
    }
    /// Zeroes the block and writes identity and state in one seqlock write.
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
pub struct QueueProducerStats(Block);

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
    b: Block,
    /// The partner producer half (read only, for its publish stamp).
    partner: Block,
    /// Last publish stamp recorded (process-local), so one publish is counted once.
    last_stamp: u64,
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

/// A writable stats segment: io_conn creates it, each md attaches it.
#[derive(Debug, Clone)]
pub struct StatsSegment {
    map: Arc<Mapping>,
    geo: Arc<Geometry>,
}

impl StatsSegment {
    /// io_conn: creates `{name}.stats` exclusively (mode 0600) for `md_slots` slots under
    /// `epoch`. Fails with [`StatsError::Exists`] if it is there already: remove a dead
    /// predecessor's with [`StatsSegment::remove`] first.
    pub fn create(
        backend: Backend,
        name: &str,
        md_slots: u32,
        epoch: u64,
    ) -> Result<Self, StatsError> {
        check_slots(md_slots)?;
        let seg_name = segment_name(name);
        let seg = Segment::create(backend, &seg_name, required_len(md_slots), SEGMENT_MODE)
            .map_err(|e| from_create(e, &seg_name))?;
        Self::init(Mapping::new(Backing::Segment(seg))?, md_slots, epoch, ProcId::current())
    }

    /// Initialises a segment in any memory (tests, benchmarks): zeroes it and writes the header.
    pub fn create_in(
        mem: Arc<dyn Memory>,
        md_slots: u32,
        epoch: u64,
        creator: ProcId,
    ) -> Result<Self, StatsError> {
        check_slots(md_slots)?;
        Self::init(Mapping::new(Backing::Memory(mem))?, md_slots, epoch, creator)
    }

    fn init(map: Mapping, md_slots: u32, epoch: u64, creator: ProcId) -> Result<Self, StatsError> {
        let (sections, total, desc_count) = plan(md_slots);
        if map.len < total {
            return Err(StatsError::Truncated { len: map.len as u64, needed: total as u64 });
        }
        let base = map.base.as_ptr();
        // SAFETY: in bounds: `total` <= len (checked just above). Exclusive: the segment was just
        // created by us (O_EXCL) or handed to us fresh, and nobody reads it before `ready` = 1,
        // which is stored last below. Zeroing resets `ready` to 0 first.
        unsafe { std::ptr::write_bytes(base, 0, total) };
        let desc_offset = HEADER_BYTES;
        let mut d = 0usize;
        for (si, s) in sections.iter().take(SectionKind::ALL.len()).enumerate() {
            let Some(kind) = SectionKind::from_u32(s.kind) else { continue };
            for word in 1..=s.words as usize {
                let mut e = DescEntry {
                    name: [0; NAME_BYTES],
                    unit: [0; UNIT_BYTES],
                    help: [0; HELP_BYTES],
                    section: si as u32,
                    word: word as u32,
                    kind: 0,
                    _pad0: 0,
                    bound: 0,
                    _pad1: 0,
                };
                let cd = typed_desc(kind, word);
                put_str(&mut e.name, cd.name);
                put_str(&mut e.unit, cd.unit);
                put_str(&mut e.help, cd.help);
                e.kind = cd.kind as u32;
                if cd.kind == CounterKind::Bucket {
                    e.bound = bucket_upper_bound(word - 1 - QueueConsumer::COUNT);
                }
                // SAFETY: in bounds: entry d < desc_count, and HEADER_BYTES + desc_count * 256 <=
                // the first section offset <= total <= len (`plan`). Aligned: 512 + d*256 from a
                // 128-aligned base. Exclusive: not yet published (see above).
                unsafe {
                    base.add(desc_offset + d * size_of::<DescEntry>()).cast::<DescEntry>().write(e)
                };
                d += 1;
            }
        }
        debug_assert_eq!(d as u32, desc_count);
        let h = base.cast::<StatsHeader>();
        // SAFETY: in bounds and aligned (len >= HEADER_BYTES, base 128-aligned). Exclusive until
        // `ready` (see above). Raw-pointer field writes: no reference to the header exists yet.
        unsafe {
            (&raw mut (*h).magic).write(STATS_MAGIC);
            (&raw mut (*h).layout_version).write(STATS_LAYOUT_VERSION);
            (&raw mut (*h).schema_version).write(SCHEMA_VERSION);
            (&raw mut (*h).epoch).write(epoch);
            (&raw mut (*h).created_unix_ns).write(unix_ns());
            (&raw mut (*h).creator_pid).write(creator.pid);
            (&raw mut (*h).md_slots).write(md_slots);
            (&raw mut (*h).creator_start_time).write(creator.start_time);
            (&raw mut (*h).total_len).write(total as u64);
            (&raw mut (*h).desc_offset).write(desc_offset as u64);
            (&raw mut (*h).desc_count).write(desc_count);
            (&raw mut (*h).desc_size).write(size_of::<DescEntry>() as u32);
            (&raw mut (*h).section_count).write(SectionKind::ALL.len() as u32);
            (&raw mut (*h).sections).write(sections);
        }
        // Release pairs with the Acquire load of `ready` in `validate`: the header, descriptors
        // and zeroed blocks above are visible to anyone who sees 1.
        map.header().ready.store(1, Ordering::Release);
        Self::from_mapping(map)
    }

    /// md: attaches `{name}.stats` writable (then take a slot with
    /// [`StatsSegment::attach_writer_md`]).
    pub fn attach(backend: Backend, name: &str) -> Result<Self, StatsError> {
        let seg_name = segment_name(name);
        let seg =
            Segment::attach(backend, &seg_name, true).map_err(|e| from_attach(e, &seg_name))?;
        Self::from_mapping(Mapping::new(Backing::Segment(seg))?)
    }

    /// Attaches a segment in any memory, writable (tests).
    pub fn attach_in(mem: Arc<dyn Memory>) -> Result<Self, StatsError> {
        Self::from_mapping(Mapping::new(Backing::Memory(mem))?)
    }

    fn from_mapping(map: Mapping) -> Result<Self, StatsError> {
        let geo = validate(&map)?;
        if geo.info.schema_version != SCHEMA_VERSION {
            return Err(StatsError::SchemaMismatch {
                found: geo.info.schema_version,
                expected: SCHEMA_VERSION,
            });
        }
        for k in SectionKind::ALL {
            let ok = geo.sections.iter().any(|s| {
                s.kind == Some(k)
                    && s.words == k.words()
                    && s.instances == if k == SectionKind::Io { 1 } else { geo.info.md_slots }
            });
            if !ok {
                return Err(StatsError::BadGeometry("typed section missing or resized"));
            }
        }
        Ok(Self { map: Arc::new(map), geo: Arc::new(geo) })
    }

    /// Removes `{name}.stats` (io_conn at clean exit, or a dead predecessor's at start).
    /// `Ok(false)` if there was none.
    pub fn remove(backend: Backend, name: &str) -> io::Result<bool> {
        Segment::remove(backend, &segment_name(name))
    }

    /// Header fields.
    pub fn info(&self) -> SegmentInfo {
        self.geo.info
    }

    /// The epoch of the creator.
    pub fn epoch(&self) -> u64 {
        self.geo.info.epoch
    }

    /// Number of md slots.
    pub fn md_slots(&self) -> u32 {
        self.geo.info.md_slots
    }

    fn block(&self, kind: SectionKind, instance: u32) -> Result<Block, StatsError> {
        let s = self
            .geo
            .sections
            .iter()
            .find(|s| s.kind == Some(kind))
            .ok_or(StatsError::BadGeometry("typed section missing"))?;
        if instance >= s.instances {
            return Err(StatsError::BadSlot(instance));
        }
        Ok(Block::new(self.map.clone(), s.offset + instance as usize * s.stride, s.words))
    }

    /// io_conn's block. Call once: the handle is the block's one writer.
    pub fn io(&self) -> IoStats {
        IoStats(self.block(SectionKind::Io, 0).expect("validated at attach"))
    }

    /// md: takes slot `slot` as its writer, zeroes its block and its two queue halves, writes its
    /// identity and `state = starting`. The caller must be the one md of that slot (io_conn's
    /// queue-pair attach guarantees it).
    pub fn attach_writer_md(&self, slot: u32, me: ProcId) -> Result<MdStats, StatsError> {
        let md = MdStats { b: self.block(SectionKind::Md, slot)?, slot };
        md.set_identity(me, self.epoch(), MdState::Starting);
        self.queue_producer(slot, Direction::ToIo)?.reset();
        self.queue_consumer(slot, Direction::ToMd)?.reset();
        Ok(md)
    }

    /// io_conn, after the pidfd of the md in `slot` said it exited: stores `state = dead` if the
    /// block still names `who` (the md is gone, so io_conn is now the block's only writer; this
    /// also repairs a sequence the md left odd). Returns whether it did.
    pub fn mark_md_dead(&self, slot: u32, who: ProcId) -> bool {
        let Ok(b) = self.block(SectionKind::Md, slot) else { return false };
        if b.get(Md::Pid.word()) != who.pid as u64
            || b.get(Md::ProcStartTicks.word()) != who.start_time
        {
            return false;
        }
        let md = MdStats { b, slot };
        if md.get(Md::State) != MdState::Exited as u64 {
            md.set_state(MdState::Dead);
        }
        true
    }

    /// The producer half of queue `dir` of `slot`: `ToMd` for io_conn, `ToIo` for md.
    pub fn queue_producer(
        &self,
        slot: u32,
        dir: Direction,
    ) -> Result<QueueProducerStats, StatsError> {
        Ok(QueueProducerStats(self.block(SectionKind::queue(dir, Side::Producer), slot)?))
    }

    /// The consumer half of queue `dir` of `slot`: `ToIo` for io_conn, `ToMd` for md.
    pub fn queue_consumer(
        &self,
        slot: u32,
        dir: Direction,
    ) -> Result<QueueConsumerStats, StatsError> {
        let b = self.block(SectionKind::queue(dir, Side::Consumer), slot)?;
        let partner = self.block(SectionKind::queue(dir, Side::Producer), slot)?;
        // Start from the stamp already there so a stale one is not recorded as a huge wait.
        let last_stamp = partner.get(QueueProducer::LastPublishNs.word());
        Ok(QueueConsumerStats { b, partner, last_stamp })
    }

    /// A reader over the same mapping (tests, in-process views).
    pub fn reader(&self) -> StatsReader {
        StatsReader { map: self.map.clone(), geo: self.geo.clone() }
    }
}

fn check_slots(md_slots: u32) -> Result<(), StatsError> {
    if md_slots == 0 || md_slots > MAX_MD_SLOTS {
        return Err(StatsError::BadSlot(md_slots));
    }
    Ok(())
}

/// The descriptor of `word` (1-based) in a typed section.
fn typed_desc(kind: SectionKind, word: usize) -> CounterDesc {
    let i = word - 1;
    match kind {
        SectionKind::Io => IO_COUNTERS[i],
        SectionKind::Md => MD_COUNTERS[i],
        SectionKind::InProducer | SectionKind::OutProducer => QUEUE_PRODUCER_COUNTERS[i],
        SectionKind::InConsumer | SectionKind::OutConsumer => {
            if i < QueueConsumer::COUNT {
                QUEUE_CONSUMER_COUNTERS[i]
            } else {
                CounterDesc {
                    name: WAIT_HISTOGRAM,
                    kind: CounterKind::Bucket,
                    unit: "ns",
                    help: "Queue wait: latest producer publish to consumer pick-up",
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------------

/// A read-only view of a stats segment (viewstats). Generic: it knows sections and words only
/// through the descriptor table.
#[derive(Debug, Clone)]
pub struct StatsReader {
    map: Arc<Mapping>,
    geo: Arc<Geometry>,
}

/// One block's values at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSnapshot {
    /// Index into [`Snapshot::sections`].
    pub section: usize,
    /// Block index in its section (the md slot).
    pub instance: u32,
    /// Values, `values[word - 1]`.
    pub values: Vec<u64>,
    /// False if the sequence lock never read stable within [`SEQLOCK_RETRIES`] (a writer died
    /// mid-update, or writes too often): values are the last read.
    pub consistent: bool,
}

/// Every block at one moment (each block consistent in itself, blocks read one after another).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Header fields.
    pub info: SegmentInfo,
    /// Sections with their descriptors.
    pub sections: Arc<[Section]>,
    /// Blocks, section by section, instance by instance.
    pub blocks: Vec<BlockSnapshot>,
    /// CLOCK_MONOTONIC when taken.
    pub taken_mono_ns: u64,
    /// Unix time when taken.
    pub taken_unix_ns: u64,
}

impl Snapshot {
    /// The block of section `section` (by name) and instance.
    pub fn block(&self, section: &str, instance: u32) -> Option<&BlockSnapshot> {
        let si = self.sections.iter().position(|s| s.name == section)?;
        self.blocks.iter().find(|b| b.section == si && b.instance == instance)
    }
    /// One value by section name, instance and counter name.
    pub fn get(&self, section: &str, instance: u32, name: &str) -> Option<u64> {
        let b = self.block(section, instance)?;
        let d = self.sections[b.section].descriptors.iter().find(|d| d.name == name)?;
        b.values.get(d.word - 1).copied()
    }
    /// The histogram `name` of a block as `(bound, count)` pairs, and its sum.
    pub fn histogram(&self, b: &BlockSnapshot, name: &str) -> (Vec<(u64, u64)>, u64) {
        let s = &self.sections[b.section];
        let mut buckets = Vec::new();
        let mut sum = 0;
        for d in s.descriptors.iter().filter(|d| d.name == name) {
            let v = b.values.get(d.word - 1).copied().unwrap_or(0);
            match d.kind {
                CounterKind::Bucket => buckets.push((d.bound, v)),
                CounterKind::HistSum => sum = v,
                _ => {}
            }
        }
        buckets.sort_by_key(|b| b.0);
        (buckets, sum)
    }
}

impl StatsReader {
    /// viewstats: attaches `{name}.stats` read-only (O_RDONLY + PROT_READ / SHM_RDONLY).
    pub fn attach(backend: Backend, name: &str) -> Result<Self, StatsError> {
        let seg_name = segment_name(name);
        let seg =
            Segment::attach(backend, &seg_name, false).map_err(|e| from_attach(e, &seg_name))?;
        Self::from_mapping(Mapping::new(Backing::Segment(seg))?)
    }

    /// Attaches a segment in any memory (tests). Never writes to it.
    pub fn attach_in(mem: Arc<dyn Memory>) -> Result<Self, StatsError> {
        Self::from_mapping(Mapping::new(Backing::Memory(mem))?)
    }

    fn from_mapping(map: Mapping) -> Result<Self, StatsError> {
        let geo = validate(&map)?;
        Ok(Self { map: Arc::new(map), geo: Arc::new(geo) })
    }

    /// Header fields.
    pub fn info(&self) -> SegmentInfo {
        self.geo.info
    }

    /// Sections and descriptors.
    pub fn sections(&self) -> &[Section] {
        &self.geo.sections
    }

    /// Byte offset of a block from the segment base (word 0 is its sequence).
    pub fn block_offset(&self, section: usize, instance: u32) -> usize {
        let s = &self.geo.sections[section];
        s.offset + instance as usize * s.stride
    }

    /// Reads one block into `out` (`out.len()` = the section's words). Returns consistency.
    pub fn read_block(&self, section: usize, instance: u32, out: &mut [u64]) -> bool {
        let s = &self.geo.sections[section];
        assert!(instance < s.instances && out.len() == s.words, "block out of range");
        read_consistent(self.map.words(s.offset + instance as usize * s.stride, s.words), out)
    }

    /// Reads every block.
    pub fn snapshot(&self) -> Snapshot {
        let mut blocks = Vec::new();
        for (si, s) in self.geo.sections.iter().enumerate() {
            for i in 0..s.instances {
                let mut values = vec![0; s.words];
                let consistent = self.read_block(si, i, &mut values);
                blocks.push(BlockSnapshot { section: si, instance: i, values, consistent });
            }
        }
        Snapshot {
            info: self.geo.info,
            sections: self.geo.sections.clone(),
            blocks,
            taken_mono_ns: monotonic_ns(),
            taken_unix_ns: unix_ns(),
        }
    }
}
