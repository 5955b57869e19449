//! What the words of each typed block mean: the counter sets ([`Io`], [`Md`], [`QueueProducer`],
//! [`QueueConsumer`]), their descriptors, and [`Counts`], a process's local copy of a set.
//!
//! Each set is declared once, with the `counter_set!` macro: a variant, its kind, its name (the
//! snake_case of the variant), unit and one-line help. From that one list come the enum, the
//! descriptor table the creator writes into the segment, the [`CounterSet`] impl, and so the
//! local [`Counts`] a process increments and copies into its block
//! ([`super::IoStats::publish`], [`super::MdStats::publish`]). A counter therefore cannot exist in
//! a process and not in the segment.
//!
//! # Example
//!
//! ```
//! use shmq::stats::{Io, IoCounts};
//!
//! let mut c = IoCounts::default();
//! c[Io::BytesIn] += 512;
//! c[Io::MessagesIn] += 1;
//! assert_eq!(c.get(Io::BytesIn), 512);
//! assert!(format!("{c:?}").split(", ").any(|f| f == "bytes_in: 512"));
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

use crate::layout::Direction;

use super::abi::{MD_DESCRIBED, MD_WORDS};
use super::histogram::CONSUMER_WORDS;

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
    /// Decodes [`DescEntry::kind`](super::DescEntry::kind).
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

impl CounterDesc {
    /// `(name, kind, unit, help)`, the name owned (the creator writes it into the segment).
    pub(super) fn parts(&self) -> (String, CounterKind, &'static str, &'static str) {
        (self.name.to_owned(), self.kind, self.unit, self.help)
    }
}

/// A counter set: an enum whose variants are the words of one kind of block, in word order.
/// Implemented by `counter_set!` for [`Io`], [`Md`], [`QueueProducer`] and [`QueueConsumer`].
pub trait CounterSet: Copy + Eq + fmt::Debug + 'static {
    /// Number of counters.
    const COUNT: usize;
    /// Every counter, in word order.
    const ALL: &'static [Self];
    /// 0-based position; the counter's block word is `index + 1` (word 0 is the sequence).
    fn index(self) -> usize;
    /// The counter's descriptor (name, kind, unit, help).
    fn desc(self) -> &'static CounterDesc;
}

/// Local (process-private) values of one counter set: plain `u64`s indexed by the enum.
///
/// The owner increments these on its hot path (`c[Io::BytesIn] += n`: no atomics, no shared
/// cache line) and copies them into its block once per loop iteration or batch. `N` is always
/// `E::COUNT` (use the aliases [`IoCounts`], [`MdCounts`]); a mismatch fails to compile.
#[derive(Clone, PartialEq, Eq)]
pub struct Counts<E: CounterSet, const N: usize> {
    v: [u64; N],
    _e: PhantomData<E>,
}

/// io_conn's local counters.
pub type IoCounts = Counts<Io, { Io::COUNT }>;
/// An md's local counters (the identity words `pid` … `heartbeat_mono_ns` are written to the
/// segment by [`super::MdStats`] itself and are not copied from here).
pub type MdCounts = Counts<Md, { Md::COUNT }>;

impl<E: CounterSet, const N: usize> Counts<E, N> {
    /// `N == E::COUNT`, checked at compile time where a `Counts` is created.
    const SIZE_MATCHES: () = assert!(N == E::COUNT, "Counts<E, N> needs N == E::COUNT");

    /// All zero.
    pub fn new() -> Self {
        #[allow(clippy::let_unit_value)] // evaluating the constant is the compile-time check
        let () = Self::SIZE_MATCHES;
        Self { v: [0; N], _e: PhantomData }
    }
    /// The value of `e`.
    #[inline]
    pub fn get(&self, e: E) -> u64 {
        self.v[e.index()]
    }
    /// Every value, in word order (`values()[i]` belongs to block word `i + 1`).
    #[inline]
    pub fn values(&self) -> &[u64; N] {
        &self.v
    }
    /// Every counter with its value, in word order.
    pub fn iter(&self) -> impl Iterator<Item = (E, u64)> + '_ {
        E::ALL.iter().map(|&e| (e, self.v[e.index()]))
    }
    /// `self - base`, word by word (wrapping): what was counted since `base` was taken.
    pub fn since(&self, base: &Self) -> Self {
        let mut d = Self::new();
        for ((d, now), then) in d.v.iter_mut().zip(&self.v).zip(&base.v) {
            *d = now.wrapping_sub(*then);
        }
        d
    }
}

impl<E: CounterSet, const N: usize> Default for Counts<E, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: CounterSet, const N: usize> fmt::Debug for Counts<E, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter().map(|(e, v)| (DebugName(e.desc().name), v))).finish()
    }
}

/// A name printed without quotes.
struct DebugName(&'static str);

impl fmt::Debug for DebugName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl<E: CounterSet, const N: usize> Index<E> for Counts<E, N> {
    type Output = u64;
    #[inline]
    fn index(&self, e: E) -> &u64 {
        &self.v[e.index()]
    }
}

impl<E: CounterSet, const N: usize> IndexMut<E> for Counts<E, N> {
    #[inline]
    fn index_mut(&mut self, e: E) -> &mut u64 {
        &mut self.v[e.index()]
    }
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
        impl CounterSet for $E {
            const COUNT: usize = $E::COUNT;
            const ALL: &'static [Self] = &$E::ALL;
            #[inline]
            fn index(self) -> usize {
                self as usize
            }
            fn desc(self) -> &'static CounterDesc {
                $E::desc(self)
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
        ConnectionsRefused => Counter "connections_refused" "connections" "Connections closed at once because max_connections were open";
        AcceptFdExhausted => Counter "accept_fd_exhausted" "events" "Times accept failed with EMFILE/ENFILE; accepting paused briefly each time";
        ClosedByPeer => Counter "closed_by_peer" "connections" "Connections the client closed (EOF or reset)";
        ClosedIdle => Counter "closed_idle" "connections" "Connections closed by the server: idle_timeout";
        ClosedDeadline => Counter "closed_deadline" "connections" "Connections closed by the server: a message not complete within message_deadline";
        ClosedOversized => Counter "closed_oversized" "connections" "Connections closed by the server: a message above max_message";
        ClosedCreditOverrun => Counter "closed_credit_overrun" "connections" "Connections closed by the server: unsent output above output_credit";
        ClosedError => Counter "closed_error" "connections" "Connections closed by the server: socket error, or a malformed PROXY header";
        ClosedByMd => Counter "closed_by_md" "connections" "Connections closed because md sent CLOSE";
        ClosedMdGone => Counter "closed_md_gone" "connections" "Connections closed because their md instance died, or no md came within 10 s";
        ClosedShutdown => Counter "closed_shutdown" "connections" "Connections closed at shutdown (drain deadline)";
        ClosedMemory => Counter "closed_memory" "connections" "Connections closed by the server: client buffers reached max_buffered (slowest readers first)";
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
        StaleFrames => Counter "stale_frames" "frames" "md frames for a closed flow or another md's flow, dropped";
        BadFrames => Counter "bad_frames" "frames" "md frames that made no sense, dropped";
        DrainedFrames => Counter "drained_frames" "frames" "DRAINED frames sent to md";
        MdDeaths => Counter "md_deaths" "events" "md instances seen dying (pidfd readable)";
        MdAttaches => Counter "md_attaches" "events" "md instances that attached (said HELLO)";
        RequestsDropped => Counter "requests_dropped" "requests" "Requests dropped because md closed their connection at an earlier request (request dispatch)";
        ConnectionsRefusedPerIp => Counter "connections_refused_per_ip" "connections" "Connections closed at once because their IP address had max_connections_per_ip open";
        ProxyRefusedUntrusted => Counter "proxy_refused_untrusted" "connections" "Connections closed at once on a proxy_protocol listener: their address is not in proxy_from";
        ProxyRefusedInvalid => Counter "proxy_refused_invalid" "connections" "Connections from proxy_from closed without a valid PROXY header (malformed: also closed_error; none within message_deadline: also closed_deadline)";
        ProxyHeaders => Counter "proxy_headers" "connections" "Valid PROXY headers read (LOCAL ones, which keep the real peer, included)";
        ReloadsOk => Counter "reloads_ok" "reloads" "Config reloads applied (SIGHUP, io_conn --reload)";
        ReloadsRefused => Counter "reloads_refused" "reloads" "Config reloads refused (a file that does not validate, or a key that needs a restart); the old config is kept";
        ConfigGeneration => Gauge "config_generation" "generation" "Config in effect: 0 the one read at start, +1 per reload applied";
        BufferedBytes => Gauge "buffered_bytes" "bytes" "Bytes of client buffers io_conn holds (input, output, held replies, pooled), counted against max_buffered";
        BudgetReached => Counter "budget_reached" "events" "Times client buffers reached max_buffered: reading stopped and the slowest readers were closed";
        HeartbeatNs => Gauge "heartbeat_mono_ns" "mono_ns" "CLOCK_MONOTONIC of io_conn's last loop iteration";
    }
}

counter_set! {
    /// One md instance's counters (section `md`, one block per slot, written by that md; io_conn
    /// writes only `state = dead` after the md is gone). The first [`Md::IDENTITY`] words are the
    /// identity, written by [`super::MdStats`] under the block's sequence lock; the rest are
    /// copied from the md's [`MdCounts`]. The block continues with the command area (see the
    /// module docs of [`crate::stats`], "Command slots").
    Md, MD_COUNTERS {
        Pid => Gauge "pid" "pid" "Process id of the md in this slot (0 = never used)";
        ProcStartTicks => Gauge "proc_start_ticks" "ticks" "Its start time in clock ticks since boot (identity with pid)";
        StartUnixNs => Gauge "start_time_unix_ns" "unix_ns" "When it attached this slot, Unix time";
        State => Gauge "state" "state" "0 absent, 1 starting, 2 running, 3 leaving, 4 exited, 5 dead";
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
        ReloadsOk => Counter "reloads_ok" "reloads" "Config reloads applied (SIGHUP, md --reload)";
        ReloadsRefused => Counter "reloads_refused" "reloads" "Config reloads refused (a file that does not validate, or a key that needs a restart); the old config is kept";
        ConfigGeneration => Gauge "config_generation" "generation" "Config in effect: 0 the one read at start, +1 per reload applied";
    }
}

impl Md {
    /// Words `1..=IDENTITY` ([`Md::Pid`] … [`Md::HeartbeatNs`]) are the md's identity, state and
    /// heartbeat: written by [`super::MdStats`] directly, never copied from an [`MdCounts`].
    pub const IDENTITY: usize = Md::HeartbeatNs as usize + 1;
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
        RequestsInFlight => Gauge "requests_in_flight" "requests" "Requests dispatched on this queue whose reply has not ended (request dispatch; io_conn's in.i)";
        RequestsDispatched => Counter "requests_dispatched" "requests" "Requests dispatched on this queue (request dispatch; io_conn's in.i)";
    }
}

counter_set! {
    /// A queue's consumer half (sections `in.consumer`: md; `out.consumer`: io_conn), followed by
    /// [`HIST_BUCKETS`](super::HIST_BUCKETS) wait-time buckets.
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
    /// Leaving after SIGTERM: io_conn routes nothing new to it; it finishes what it has.
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
            Self::Stopping => "leaving",
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
    /// Decodes [`SectionDesc::kind`](super::SectionDesc::kind).
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
    /// Value words of one block of this section.
    pub const fn words(self) -> usize {
        match self {
            Self::Io => Io::COUNT,
            Self::Md => MD_WORDS,
            Self::InProducer | Self::OutProducer => QueueProducer::COUNT,
            Self::InConsumer | Self::OutConsumer => CONSUMER_WORDS,
        }
    }
    /// Words of one block that have a descriptor (all but the md block's names area).
    pub const fn described(self) -> usize {
        match self {
            Self::Md => MD_DESCRIBED,
            _ => self.words(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_index_get_iter_and_since() {
        let mut c = MdCounts::default();
        assert!(c.values().iter().all(|&v| v == 0));
        c[Md::MessagesIn] += 3;
        c[Md::BusyNs] = 7;
        assert_eq!(c.get(Md::MessagesIn), 3);
        assert_eq!(c[Md::BusyNs], 7);
        assert_eq!(c.values()[Md::MessagesIn.word() - 1], 3, "values are in word order");
        let seen: Vec<(Md, u64)> = c.iter().filter(|&(_, v)| v != 0).collect();
        assert_eq!(seen, [(Md::MessagesIn, 3), (Md::BusyNs, 7)]);
        assert_eq!(c.iter().count(), Md::COUNT);
        let base = c.clone();
        c[Md::MessagesIn] += 2;
        let d = c.since(&base);
        assert_eq!((d[Md::MessagesIn], d[Md::BusyNs]), (2, 0));
        assert_ne!(c, base);
    }

    #[test]
    fn counts_debug_prints_schema_names() {
        let mut c = IoCounts::default();
        c[Io::BytesIn] = 5;
        let s = format!("{c:?}");
        assert!(s.starts_with("{connections_current: 0, "), "{s}");
        assert!(s.contains("bytes_in: 5"), "{s}");
        assert!(s.ends_with("heartbeat_mono_ns: 0}"), "{s}");
        assert_eq!(s.matches(": ").count(), Io::COUNT);
    }

    #[test]
    fn counter_sets_are_consistent() {
        fn check<E: CounterSet>() {
            assert_eq!(E::ALL.len(), E::COUNT);
            let mut names = std::collections::HashSet::new();
            for (i, e) in E::ALL.iter().enumerate() {
                assert_eq!(e.index(), i);
                let d = e.desc();
                assert!(names.insert(d.name), "duplicate name {}", d.name);
                assert!(!d.help.is_empty() && !d.unit.is_empty(), "{}", d.name);
                assert!(
                    d.name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{} is not snake_case",
                    d.name
                );
            }
        }
        check::<Io>();
        check::<Md>();
        check::<QueueProducer>();
        check::<QueueConsumer>();
        assert_eq!(Io::ALL.last(), Some(&Io::HeartbeatNs));
        assert_eq!(Md::IDENTITY, 6);
    }
}
