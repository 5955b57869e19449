//! The md event loop: one thread, one epoll set, one input ring, one output ring.
//!
//! # The loop
//!
//! 1. Drain up to [`RunnerOptions::batch`] frames from the input ring in place
//!    ([`Consumer::drain`]), handing requests to the [`Service`].
//! 2. Fire due timers.
//! 3. For every flow touched in this batch ("dirty"), or waiting for ring space ("blocked"): hand
//!    its queued output to the output ring within its credit, run held requests that may now run,
//!    send `PAUSE`/`RESUME`/`CLOSE` as needed.
//! 4. [`Producer::flush`] once: one Release store, and one doorbell write only if io_conn sleeps.
//!    With a stats sink ([`Runner::set_stats_sink`]), the counters, the heartbeat and both rings'
//!    counters are then mirrored into the stats segment (relaxed stores, once per batch; also
//!    before every sleep), and the publish time is stamped if frames went out.
//! 5. Nothing happened: if recent batches were small (lightly loaded, [`rt::SpinGate`]), spin on
//!    the input ring for [`RunnerOptions::spin`]; then arm the doorbell
//!    ([`Consumer::prepare_sleep`]) and sleep in `epoll_wait` on: the doorbell FIFO, the timerfd,
//!    the shutdown eventfd, the signalfd, and io_conn's pidfd.
//!
//! # Per flow
//!
//! * **Order.** A flow's requests reach the service one at a time, in order. While one is
//!   [`Status::Pending`] (or its output exceeds the flow's credit), later requests are copied into
//!   the flow's backlog. When the backlog exceeds [`RunnerOptions::hold_max_requests`] or
//!   [`RunnerOptions::hold_max_bytes`], md sends `PAUSE` (io_conn stops reading that client); when it
//!   falls to [`RunnerOptions::resume_requests`] and [`RunnerOptions::resume_bytes`], `RESUME`.
//! * **Credit.** `OPEN` carries the flow's output credit: the most bytes md may have sent and not
//!   seen `DRAINED`. Output beyond it waits in the flow's outbox (and so does output that finds the
//!   ring full); it is sent as `DRAINED` returns credit, or on the next wake-up. Nothing is dropped
//!   and nothing spins: a flow blocked on a full ring is retried on each loop and the loop sleeps at
//!   most 1 ms while any is blocked. A credit of 0 in `OPEN` means "no limit".
//! * **Broadcast.** [`Ctx::broadcast`] queues a `BROADCAST` frame (flow id 0) in the flow's
//!   broadcast list, marked with the flow's output position at that moment; the flow's output
//!   is pushed up to the mark, then the broadcast, then the rest. Broadcasts cost no credit, but
//!   wait behind the flow's earlier output, and the flow's next request waits until they are in
//!   the ring (a full ring keeps them queued and retried, like output). `CLOSE` is sent only
//!   after them.
//! * **EOF.** After an `EOF`, md answers every request received before it, calls
//!   [`Service::eof`], hands over all output, then sends `CLOSE` and forgets the flow.
//! * **CLOSE** from io_conn: the flow's state is dropped at once ([`Service::close`]); its held
//!   requests, queued output and broadcasts, and timers are discarded.
//!
//! # Detach
//!
//! [`Runner::run`] returns [`Exit::Detached`] when io_conn's pidfd reports it exited, when the
//! pair's generation changed (io_conn reset it), or when the input ring is corrupt. Every flow is
//! closed first; the caller re-attaches (see [`crate::serve`]) and calls `run` again.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
use rt::SpinGate;
use rt::notify::Watchdog;
use shmq::doorbell::Doorbell;
use shmq::frame::{FlowId, Frame, Hello, Kind, OpenInfo, decode_drained};
use shmq::ring::{Consumer, Producer, PushError, RingError};
use shmq::stats::{Md, MdState};

use crate::control::Control;
use crate::service::{Ctx, Service, Status};
use crate::stats::{MdStatsSink, Stats};
use crate::timer::Timers;

/// One attached queue pair, as the runner uses it. Built from a [`shmq::pair::MdSide`] by the
/// binary, or over heap rings and FIFOs in a temp dir by tests.
#[derive(Debug)]
pub struct Endpoint {
    /// Consumer of the input ring (io_conn → md).
    pub rx: Consumer,
    /// md's doorbell FIFO for the input ring (in the epoll set; passed to `prepare_sleep`).
    pub rx_bell: Doorbell,
    /// Producer of the output ring (md → io_conn); holds io_conn's doorbell.
    pub tx: Producer,
    /// A pidfd of io_conn: readable when it exits. `None`: md notices a restarted io_conn only
    /// by the generation change, checked at least every [`RunnerOptions::check_interval`].
    pub io_pidfd: Option<OwnedFd>,
}

/// Tunables of the runner (the binary fills them from the config's `[md]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerOptions {
    /// The instance number sent in `HELLO`.
    pub instance: u32,
    /// This process's start time (clock ticks since boot) sent in `HELLO`.
    pub start_time: u64,
    /// Busy-poll the input ring this long before sleeping, while lightly loaded (`md.spin`, see
    /// [`rt::SpinGate`]). The default is the config's default.
    pub spin: Duration,
    /// Most frames handled per batch (between two flushes of the output ring).
    pub batch: usize,
    /// Send `PAUSE` when a flow holds more requests than this.
    pub hold_max_requests: usize,
    /// Send `PAUSE` when a flow's held requests exceed this many bytes.
    pub hold_max_bytes: usize,
    /// Send `RESUME` once a paused flow holds at most this many requests ...
    pub resume_requests: usize,
    /// ... and at most this many bytes.
    pub resume_bytes: usize,
    /// Longest sleep without checking that the pair is still current.
    pub check_interval: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            instance: 0,
            start_time: 0,
            // One default per knob: the config crate's `md.spin`.
            spin: config::Md::default().spin,
            batch: 256,
            hold_max_requests: 64,
            hold_max_bytes: 64 << 10,
            resume_requests: 16,
            resume_bytes: 16 << 10,
            check_interval: Duration::from_secs(1),
        }
    }
}

impl RunnerOptions {
    /// Options from the config (`md.spin`), for instance `instance`.
    pub fn from_config(cfg: &config::Config, instance: u32, start_time: u64) -> Self {
        Self { instance, start_time, spin: cfg.md.spin, ..Self::default() }
    }
}

/// Why [`Runner::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Shutdown was requested (signal or [`crate::ShutdownHandle`]).
    Shutdown,
    /// The pair is unusable; re-attach.
    Detached(Detach),
}

/// Why the runner let go of its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// io_conn's pidfd reported that it exited.
    IoConnExited,
    /// io_conn reset the pair (new generation) or removed it.
    Reset,
    /// The input ring (or io_conn's published head of the output ring) is impossible.
    Corrupt(Option<RingError>),
}

impl fmt::Display for Detach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IoConnExited => f.write_str("io_conn exited"),
            Self::Reset => f.write_str("io_conn reset the queue pair"),
            Self::Corrupt(Some(e)) => write!(f, "{e}"),
            Self::Corrupt(None) => f.write_str("output ring positions are corrupt"),
        }
    }
}

/// A system call the runner needs failed (setup of epoll/timerfd, or epoll_wait itself).
#[derive(Debug)]
pub struct RunError {
    /// What was being done.
    pub what: &'static str,
    /// What the kernel said.
    pub errno: Errno,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.errno)
    }
}

impl std::error::Error for RunError {}

fn sys<T>(what: &'static str, r: nix::Result<T>) -> Result<T, RunError> {
    r.map_err(|errno| RunError { what, errno })
}

const TOKEN_BELL: u64 = 1;
const TOKEN_TIMER: u64 = 2;
const TOKEN_SHUTDOWN: u64 = 3;
const TOKEN_SIGNAL: u64 = 4;
const TOKEN_PIDFD: u64 = 5;

/// Busy loop iterations between two non-blocking looks at the epoll set (signals, pidfd).
const POLL_EVERY: u32 = 64;

/// A flow's bookkeeping plus the service's state for it. Slots are reused; their buffers keep
/// their capacity (up to [`KEEP_CAPACITY`]) so a new flow does not allocate.
#[derive(Debug)]
struct Flow<F> {
    id: FlowId,
    live: bool,
    /// `None`: the service refused the flow; it is closed as soon as the ring takes a `CLOSE`.
    svc: Option<F>,
    /// Output credit from `OPEN` (`u64::MAX`: unlimited).
    credit: u64,
    /// Bytes sent in `DATA` frames and not yet returned by `DRAINED`.
    outstanding: u64,
    /// Output written by the service and not yet in the ring.
    out: Vec<u8>,
    /// Bytes of output already pushed to the ring: `out[0]` is output byte number `out_base`.
    out_base: u64,
    /// Broadcasts not yet in the ring, oldest first from `bcast_head`: records of `mark: u64 LE`
    /// (pushed once output byte `mark` is), `len: u32 LE`, a `BROADCAST` payload (see
    /// [`Ctx::broadcast`]).
    bcast: Vec<u8>,
    bcast_head: usize,
    /// Held requests: records of `len: u32 LE` + bytes, consumed from `backlog_head`.
    backlog: Vec<u8>,
    backlog_head: usize,
    backlog_count: usize,
    /// A request is [`Status::Pending`].
    busy: bool,
    /// `EOF` received.
    eof: bool,
    /// [`Service::eof`] called; nothing more will run, `CLOSE` follows the output.
    eof_done: bool,
    /// The last of `PAUSE`/`RESUME` sent was `PAUSE`.
    paused: bool,
    dirty: bool,
    blocked: bool,
}

/// Buffers larger than this are shrunk when their flow closes.
const KEEP_CAPACITY: usize = 64 << 10;

impl<F> Flow<F> {
    fn empty() -> Self {
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
            eof: false,
            eof_done: false,
            paused: false,
            dirty: false,
            blocked: false,
        }
    }

    fn reset(&mut self, id: FlowId, credit: u64) {
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
        self.eof = false;
        self.eof_done = false;
        self.paused = false;
        self.dirty = false;
        self.blocked = false;
    }

    /// Credit not spent by bytes in the ring.
    fn avail(&self) -> u64 {
        self.credit.saturating_sub(self.outstanding)
    }

    fn backlog_bytes(&self) -> usize {
        self.backlog.len() - self.backlog_head
    }

    /// May the next request run now? Not while broadcasts wait for the ring (that bounds them
    /// to what one request writes).
    fn can_run(&self) -> bool {
        !self.busy
            && !self.eof_done
            && self.out.len() as u64 <= self.avail()
            && !self.has_broadcasts()
    }

    fn has_broadcasts(&self) -> bool {
        self.bcast_head < self.bcast.len()
    }

    /// The oldest queued broadcast: its mark and the payload's range in `bcast`.
    fn next_broadcast(&self) -> Option<(u64, std::ops::Range<usize>)> {
        let h = self.bcast_head;
        let rec = self.bcast.get(h..h + 12)?;
        let mut mark = [0u8; 8];
        mark.copy_from_slice(&rec[..8]);
        let len = u32::from_le_bytes([rec[8], rec[9], rec[10], rec[11]]) as usize;
        Some((u64::from_le_bytes(mark), h + 12..h + 12 + len))
    }

    fn hold(&mut self, msg: &[u8]) {
        self.backlog.extend_from_slice(&(msg.len() as u32).to_le_bytes());
        self.backlog.extend_from_slice(msg);
        self.backlog_count += 1;
    }
}

/// A multiplicative hash for flow ids (io_conn chooses them; no flooding concern).
#[derive(Debug, Default, Clone, Copy)]
struct FlowHasher(u64);

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

type FlowMap = HashMap<u64, u32, BuildHasherDefault<FlowHasher>>;

/// Everything but the service, so callbacks can borrow the service and the tables separately.
#[derive(Debug)]
struct Core<F> {
    opts: RunnerOptions,
    flows: Vec<Flow<F>>,
    index: FlowMap,
    free: Vec<u32>,
    dirty: Vec<u32>,
    blocked: Vec<u32>,
    timers: Timers,
    stats: Stats,
    /// Set when the output ring turned out corrupt.
    fatal: Option<Detach>,
    max_payload: usize,
    now: Instant,
    warned_refused: bool,
}

/// Runs a [`Service`] over an [`Endpoint`]. Keeps its flow table, timers and stats across
/// re-attaches.
#[derive(Debug)]
pub struct Runner<S: Service> {
    service: S,
    core: Core<S::Flow>,
    /// Where the counters are mirrored once per batch; `None`: in-process only.
    sink: Option<MdStatsSink>,
    /// systemd's watchdog (`WatchdogSec=`), pinged from the loop; disabled without it.
    watchdog: Watchdog,
}

impl<S: Service> Runner<S>
where
    S::Flow: fmt::Debug,
{
    /// A runner for `service`. Under systemd with `WatchdogSec=` (`$WATCHDOG_USEC`) its loop
    /// pings the watchdog ([`rt::notify::Watchdog`]) and `opts.check_interval` is capped at
    /// half the watchdog interval.
    pub fn new(service: S, mut opts: RunnerOptions) -> Self {
        let watchdog = Watchdog::from_env();
        // An idle loop wakes every `check_interval`: often enough for the watchdog too.
        opts.check_interval = opts.check_interval.min(watchdog.period().unwrap_or(Duration::MAX));
        let core = Core {
            opts,
            flows: Vec::new(),
            index: FlowMap::default(),
            free: Vec::new(),
            dirty: Vec::with_capacity(256),
            blocked: Vec::with_capacity(256),
            timers: Timers::new(),
            stats: Stats::default(),
            fatal: None,
            max_payload: 0,
            now: Instant::now(),
            warned_refused: false,
        };
        Self { service, core, sink: None, watchdog }
    }

    /// The counters (over the whole life of the runner).
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Mirrors the counters into `sink` from now on (once per batch, and when the runner sleeps
    /// or stops), or stops mirroring (`None`). The sink's block counts from this call: it shows
    /// each counter minus its value now. Returns the previous sink. [`crate::serve`] calls it
    /// after each attach to a new io_conn.
    pub fn set_stats_sink(&mut self, sink: Option<MdStatsSink>) -> Option<MdStatsSink> {
        let sink = sink.map(|mut s| {
            s.bind(&self.core.stats, self.service.command_names());
            s
        });
        std::mem::replace(&mut self.sink, sink)
    }

    /// The stats sink, if one is set.
    pub fn stats_sink(&self) -> Option<&MdStatsSink> {
        self.sink.as_ref()
    }

    /// The service.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// Flows currently open.
    pub fn open_flows(&self) -> usize {
        self.core.index.len()
    }

    /// Serves `ep` until shutdown or until the pair becomes unusable. Sends `HELLO` first. Every
    /// flow is closed (with [`Service::close`]) before it returns.
    ///
    /// With a stats sink ([`Self::set_stats_sink`]) the slot's state is `running` while it
    /// serves, `stopping` while it hands over output after a shutdown request, then `exited`;
    /// after a detach it is `starting` again (the caller re-attaches).
    pub fn run(&mut self, ep: &mut Endpoint, control: &Control) -> Result<Exit, RunError> {
        let epoll = sys("epoll_create1", Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC))?;
        let timerfd = sys(
            "timerfd_create",
            TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            ),
        )?;
        let ev = |t| EpollEvent::new(EpollFlags::EPOLLIN, t);
        sys("epoll_ctl(doorbell)", epoll.add(ep.rx_bell.as_fd(), ev(TOKEN_BELL)))?;
        sys("epoll_ctl(timerfd)", epoll.add(timerfd.as_fd(), ev(TOKEN_TIMER)))?;
        sys("epoll_ctl(shutdown)", epoll.add(control.shutdown_fd(), ev(TOKEN_SHUTDOWN)))?;
        if let Some(fd) = control.signal_fd() {
            sys("epoll_ctl(signalfd)", epoll.add(fd, ev(TOKEN_SIGNAL)))?;
        }
        if let Some(fd) = &ep.io_pidfd {
            sys("epoll_ctl(pidfd)", epoll.add(fd.as_fd(), ev(TOKEN_PIDFD)))?;
        }
        self.core.max_payload = ep.tx.max_payload();
        self.core.timers.fired();
        self.core.stats[Md::Attaches] += 1;
        if let Some(sink) = &mut self.sink {
            sink.begin_run(&ep.tx);
        }
        log::info!(
            "md instance {} attached (epoch {}, generation {}); serving",
            self.core.opts.instance,
            ep.rx.epoch(),
            ep.rx.generation()
        );
        let exit = self.serve(ep, control, &epoll, &timerfd);
        // Hand over what we can before letting go (on shutdown the pair is still good).
        if matches!(exit, Ok(Exit::Shutdown)) {
            if let Some(sink) = &self.sink {
                sink.set_state(MdState::Stopping);
            }
            self.core.pump_all(&mut self.service, &mut ep.tx);
            ep.tx.flush();
            ep.rx.publish();
        }
        let open = self.core.index.len();
        self.core.close_all(&mut self.service);
        if let Some(sink) = &mut self.sink {
            sink.after_flush(&ep.tx);
            sink.mirror(&self.core.stats, &ep.rx, &ep.tx);
            match exit {
                Ok(Exit::Shutdown) => sink.set_state(MdState::Exited),
                Ok(Exit::Detached(_)) => sink.set_state(MdState::Starting),
                // The process is about to exit with an error; io_conn marks the slot dead.
                Err(_) => {}
            }
        }
        match &exit {
            Ok(Exit::Shutdown) => log::info!("md stopping; {open} open flows dropped"),
            Ok(Exit::Detached(why)) => {
                log::warn!("detached from io_conn: {why}; {open} open flows dropped")
            }
            Err(e) => log::error!("md loop failed: {e}"),
        }
        exit
    }

    fn serve(
        &mut self,
        ep: &mut Endpoint,
        control: &Control,
        epoll: &Epoll,
        timerfd: &TimerFd,
    ) -> Result<Exit, RunError> {
        let mut events = [EpollEvent::empty(); 8];
        let mut hello_pending = true;
        let mut since_poll = 0u32;
        // Spin (up to `md.spin`) only while recent batches averaged few frames: a lightly loaded
        // md spins to save the wake-up of the next lone request, a busy one already batches and
        // needs the CPU for io_conn and the clients.
        let mut gate = SpinGate::new(self.core.opts.spin);
        if control.shutdown_requested() {
            return Ok(Exit::Shutdown);
        }
        loop {
            let start = Instant::now();
            self.core.now = start;
            self.watchdog.tick(start);
            let mut worked = false;
            if hello_pending {
                let hello = Hello {
                    pid: std::process::id(),
                    instance: self.core.opts.instance,
                    start_time: self.core.opts.start_time,
                }
                .encode();
                match ep.tx.try_push(FlowId(0), Kind::Hello, 0, &hello) {
                    Ok(()) => {
                        ep.tx.flush();
                        if let Some(sink) = &mut self.sink {
                            sink.after_flush(&ep.tx);
                        }
                        hello_pending = false;
                    }
                    Err(PushError::Full) => {}
                    Err(PushError::Corrupt) => return Ok(Exit::Detached(Detach::Corrupt(None))),
                    Err(PushError::TooLarge { .. }) => {
                        log::error!("output ring cannot carry a HELLO frame; detaching");
                        return Ok(Exit::Detached(Detach::Corrupt(None)));
                    }
                }
            }
            if !hello_pending {
                let batch = self.core.opts.batch;
                let Self { service, core, sink, .. } = self;
                let Endpoint { rx, tx, .. } = ep;
                if let Some(sink) = sink.as_mut() {
                    if rx.has_data() {
                        sink.pickup();
                    }
                }
                let n = match rx.drain(batch, |f| core.on_frame(service, tx, f)) {
                    Ok(n) => n,
                    // A reset ring looks corrupt to a consumer of the old generation.
                    Err(_) if !rx.is_current() || !tx.is_current() => {
                        return Ok(Exit::Detached(Detach::Reset));
                    }
                    Err(e) => {
                        core.stats[Md::Corrupt] += 1;
                        log::error!("input ring corrupt: {e}");
                        return Ok(Exit::Detached(Detach::Corrupt(Some(e))));
                    }
                };
                worked = n > 0;
                gate.record(n as u64);
                if let (Some(sink), true) = (sink.as_mut(), worked) {
                    // io_conn may have published (and stamped) more frames between the
                    // `has_data` look and the end of the drain, which took them too: their wait
                    // ends now (a little late, never lost). `note_pickup` records each stamp
                    // once, so a batch with nothing new records nothing here.
                    sink.pickup();
                }
                worked |= core.fire_timers(service);
                core.pump_dirty(service, tx);
                tx.flush();
                if let Some(sink) = sink {
                    sink.after_flush(tx);
                }
                if let Some(why) = core.fatal.take() {
                    if !rx.is_current() || !tx.is_current() {
                        return Ok(Exit::Detached(Detach::Reset));
                    }
                    log::error!("output ring corrupt: {why}");
                    return Ok(Exit::Detached(why));
                }
            }
            let sleep;
            let timeout;
            if worked {
                self.core.stats[Md::BusyNs] += start.elapsed().as_nanos() as u64;
                if let Some(sink) = &mut self.sink {
                    sink.mirror(&self.core.stats, &ep.rx, &ep.tx);
                }
                since_poll += 1;
                if since_poll < POLL_EVERY {
                    continue;
                }
                // A long busy stretch: look at signals and the pidfd without sleeping.
                (sleep, timeout) = (false, EpollTimeout::ZERO);
            } else if hello_pending {
                // The output ring is full (a stale backlog io_conn has not consumed yet).
                (sleep, timeout) = (false, EpollTimeout::from(1u16));
            } else if gate.spin(|| ep.rx.has_data()) || !ep.rx.prepare_sleep(&ep.rx_bell) {
                continue; // data arrived while spinning or arming
            } else {
                sleep = true;
                if let Err(errno) = self.core.timers.arm(timerfd, Instant::now()) {
                    return Err(RunError { what: "timerfd_settime", errno });
                }
                timeout = if self.core.blocked.is_empty() {
                    let ms = self.core.opts.check_interval.as_millis().clamp(1, 60_000);
                    EpollTimeout::from(ms as u16)
                } else {
                    // Some flow waits for ring space; io_conn frees it without telling us.
                    EpollTimeout::from(1u16)
                };
            }
            since_poll = 0;
            if !worked {
                // About to wait: the heartbeat and the consumer's sleep count go out now.
                if let Some(sink) = &mut self.sink {
                    sink.mirror(&self.core.stats, &ep.rx, &ep.tx);
                }
            }
            let n = match epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(errno) => return Err(RunError { what: "epoll_wait", errno }),
            };
            for e in &events[..n] {
                match e.data() {
                    TOKEN_BELL if sleep => {
                        ep.rx.note_wakeup();
                        self.core.stats[Md::Wakeups] += 1;
                    }
                    TOKEN_TIMER => {
                        let mut buf = [0u8; 8];
                        let _ = nix::unistd::read(timerfd, &mut buf);
                        self.core.timers.fired();
                    }
                    TOKEN_SHUTDOWN | TOKEN_SIGNAL => control.poll_fds(),
                    TOKEN_PIDFD => {
                        log::warn!("io_conn exited (pidfd readable)");
                        return Ok(Exit::Detached(Detach::IoConnExited));
                    }
                    _ => {}
                }
            }
            if control.requested() {
                return Ok(Exit::Shutdown);
            }
            if !ep.rx.is_current() || !ep.tx.is_current() {
                return Ok(Exit::Detached(Detach::Reset));
            }
            // Retry flows that found the ring full.
            self.core.requeue_blocked();
        }
    }
}

impl<F: fmt::Debug> Core<F> {
    fn lookup(&mut self, id: FlowId) -> Option<usize> {
        match self.index.get(&id.0) {
            Some(&i) => Some(i as usize),
            None => {
                self.stats[Md::UnknownFlow] += 1;
                None
            }
        }
    }

    fn mark_dirty(&mut self, idx: usize) {
        let f = &mut self.flows[idx];
        if !f.dirty {
            f.dirty = true;
            self.dirty.push(idx as u32);
        }
    }

    fn on_frame<S: Service<Flow = F>>(&mut self, svc: &mut S, tx: &mut Producer, f: Frame<'_>) {
        self.stats[Md::FramesIn] += 1;
        match f.kind {
            Kind::Open => self.on_open(svc, f),
            Kind::Data => {
                self.stats[Md::MessagesIn] += 1;
                self.stats[Md::BytesIn] += f.payload.len() as u64;
                if let Some(idx) = self.lookup(f.flowid) {
                    self.on_data(svc, idx, f.payload);
                }
            }
            Kind::Eof => {
                self.stats[Md::Eofs] += 1;
                if let Some(idx) = self.lookup(f.flowid) {
                    self.flows[idx].eof = true;
                    self.mark_dirty(idx);
                }
            }
            Kind::Close => {
                self.stats[Md::ClosesIn] += 1;
                if let Some(idx) = self.lookup(f.flowid) {
                    self.remove(svc, idx);
                }
            }
            Kind::Drained => {
                self.stats[Md::Drained] += 1;
                let Ok(n) = decode_drained(f.payload) else {
                    self.stats[Md::BadFrames] += 1;
                    return;
                };
                if let Some(idx) = self.lookup(f.flowid) {
                    let flow = &mut self.flows[idx];
                    if n > flow.outstanding {
                        self.stats[Md::BadFrames] += 1;
                    }
                    flow.outstanding = flow.outstanding.saturating_sub(n);
                    if flow.busy {
                        // Hand what is queued to the ring first, so `room` is accurate.
                        self.flush_out(tx, idx);
                        let st = self.call(svc, idx, |s, st, cx| s.drained(st, cx));
                        if st == Some(Status::Done) {
                            self.flows[idx].busy = false;
                        }
                    }
                    self.mark_dirty(idx);
                }
            }
            // The consumer only returns kinds allowed towards md; padding never reaches us.
            Kind::Pad | Kind::Pause | Kind::Resume | Kind::Broadcast | Kind::Hello => {
                self.stats[Md::BadFrames] += 1;
            }
        }
    }

    fn on_open<S: Service<Flow = F>>(&mut self, svc: &mut S, f: Frame<'_>) {
        if let Some(&old) = self.index.get(&f.flowid.0) {
            log::debug!("OPEN for open flow {:?}: replacing it", f.flowid);
            self.remove(svc, old as usize);
        }
        let (credit, info) = match OpenInfo::decode(f.payload) {
            Ok(info) => (info.credit, Some(info)),
            Err(e) => {
                log::warn!("bad OPEN payload for flow {:?}: {e}; closing it", f.flowid);
                (0, None)
            }
        };
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.flows.push(Flow::empty());
                self.flows.len() - 1
            }
        };
        self.flows[idx].reset(f.flowid, credit);
        self.index.insert(f.flowid.0, idx as u32);
        let state = match info {
            Some(info) => {
                let (_, mut cx) = self.split(idx);
                let st = svc.open(&info, &mut cx);
                if st.is_none() && !self.warned_refused {
                    self.warned_refused = true;
                    log::warn!(
                        "refusing flows of service {:?} (not served by this md); \
                         further refusals are only counted",
                        info.service
                    );
                }
                st
            }
            None => None,
        };
        if state.is_some() {
            self.stats[Md::FlowsOpened] += 1;
        } else {
            self.stats[Md::FlowsRefused] += 1;
        }
        self.flows[idx].svc = state;
        self.mark_dirty(idx);
    }

    fn on_data<S: Service<Flow = F>>(&mut self, svc: &mut S, idx: usize, msg: &[u8]) {
        let flow = &mut self.flows[idx];
        if flow.svc.is_none() || flow.eof_done {
            self.stats[Md::BadFrames] += 1;
            return;
        }
        if flow.backlog_count == 0 && flow.can_run() {
            self.run_message(svc, idx, msg);
        } else {
            flow.hold(msg);
            self.stats[Md::Held] += 1;
        }
        self.mark_dirty(idx);
    }

    /// Calls `f` with the service, the flow's state and a context; `None` if the flow has no
    /// service state.
    fn call<S, R>(
        &mut self,
        svc: &mut S,
        idx: usize,
        f: impl FnOnce(&mut S, &mut F, &mut Ctx<'_>) -> R,
    ) -> Option<R>
    where
        S: Service<Flow = F>,
    {
        let (state, mut cx) = self.split(idx);
        Some(f(svc, state?, &mut cx))
    }

    /// Flow `idx`'s service state (if any) and a context over its output, timers and the stats.
    fn split(&mut self, idx: usize) -> (Option<&mut F>, Ctx<'_>) {
        let Self { flows, timers, stats, now, max_payload, .. } = self;
        let flow = &mut flows[idx];
        let avail = flow.avail();
        let Flow { id, svc, out, out_base, bcast, .. } = flow;
        let cx = Ctx {
            flow: *id,
            slot: idx as u32,
            out,
            out_base: *out_base,
            bcast,
            max_payload: *max_payload,
            avail,
            timers,
            stats,
            now: *now,
        };
        (svc.as_mut(), cx)
    }

    fn run_message<S: Service<Flow = F>>(&mut self, svc: &mut S, idx: usize, msg: &[u8]) {
        if let Some(st) = self.call(svc, idx, |s, st, cx| s.message(st, msg, cx)) {
            self.flows[idx].busy = st == Status::Pending;
        }
    }

    /// Runs the oldest held request of flow `idx`.
    fn run_held<S: Service<Flow = F>>(&mut self, svc: &mut S, idx: usize) {
        let Self { flows, timers, stats, now, max_payload, .. } = self;
        let flow = &mut flows[idx];
        let h = flow.backlog_head;
        let len = u32::from_le_bytes([
            flow.backlog[h],
            flow.backlog[h + 1],
            flow.backlog[h + 2],
            flow.backlog[h + 3],
        ]) as usize;
        let range = h + 4..h + 4 + len;
        flow.backlog_head = range.end;
        flow.backlog_count -= 1;
        let avail = flow.avail();
        if let Some(state) = flow.svc.as_mut() {
            let mut cx = Ctx {
                flow: flow.id,
                slot: idx as u32,
                out: &mut flow.out,
                out_base: flow.out_base,
                bcast: &mut flow.bcast,
                max_payload: *max_payload,
                avail,
                timers,
                stats,
                now: *now,
            };
            let st = svc.message(state, &flow.backlog[range], &mut cx);
            flow.busy = st == Status::Pending;
        }
        if flow.backlog_count == 0 {
            flow.backlog.clear();
            flow.backlog_head = 0;
        }
    }

    fn fire_timers<S: Service<Flow = F>>(&mut self, svc: &mut S) -> bool {
        let mut any = false;
        while let Some(e) = self.timers.pop_due(self.now) {
            let idx = e.slot as usize;
            let Some(flow) = self.flows.get(idx) else { continue };
            if !flow.live || flow.id != e.flow {
                continue; // lazily cancelled: the flow closed
            }
            any = true;
            self.stats[Md::TimersFired] += 1;
            if let Some(st) = self.call(svc, idx, |s, st, cx| s.timer(st, e.token, cx)) {
                let flow = &mut self.flows[idx];
                if flow.busy && st == Status::Done {
                    flow.busy = false;
                }
            }
            self.mark_dirty(idx);
        }
        any
    }

    /// Moves the flow's outbox into the ring as far as credit and ring space allow, with its
    /// queued broadcasts in place (each after the output written before it). Returns true if
    /// the ring was full.
    fn flush_out(&mut self, tx: &mut Producer, idx: usize) -> bool {
        let flow = &mut self.flows[idx];
        let mut sent = 0;
        let mut full = false;
        loop {
            // Output up to the next broadcast's mark (or all of it) goes first.
            let next = flow.next_broadcast();
            let end = match &next {
                // A mark is never behind `out_base`: output is pushed only up to the next mark.
                Some((mark, _)) => {
                    (mark.saturating_sub(flow.out_base) as usize).min(flow.out.len())
                }
                None => flow.out.len(),
            };
            if sent < end {
                let avail = flow.avail().min(self.max_payload as u64) as usize;
                let n = (end - sent).min(avail);
                if n == 0 {
                    break; // out of credit: later output and broadcasts wait for DRAINED
                }
                match tx.try_push(flow.id, Kind::Data, 0, &flow.out[sent..sent + n]) {
                    Ok(()) => {
                        sent += n;
                        flow.outstanding += n as u64;
                        self.stats[Md::MessagesOut] += 1;
                        self.stats[Md::BytesOut] += n as u64;
                        continue;
                    }
                    Err(e) => {
                        push_failed(&mut self.stats, &mut self.fatal, e);
                        full = true;
                        break;
                    }
                }
            }
            let Some((_, range)) = next else { break };
            // Flow id 0: a broadcast belongs to no flow. Not counted against credit.
            match tx.try_push(FlowId(0), Kind::Broadcast, 0, &flow.bcast[range.clone()]) {
                Ok(()) => {
                    flow.bcast_head = range.end;
                    self.stats[Md::MessagesOut] += 1;
                }
                Err(e) => {
                    push_failed(&mut self.stats, &mut self.fatal, e);
                    full = true;
                    break;
                }
            }
        }
        if sent == flow.out.len() {
            flow.out.clear();
        } else if sent > 0 {
            flow.out.drain(..sent);
        }
        flow.out_base += sent as u64;
        if !flow.has_broadcasts() {
            flow.bcast.clear();
            flow.bcast_head = 0;
        }
        full
    }

    /// Pushes an empty control frame; false if the ring is full.
    fn control(&mut self, tx: &mut Producer, id: FlowId, kind: Kind) -> bool {
        match tx.try_push(id, kind, 0, &[]) {
            Ok(()) => true,
            Err(e) => {
                push_failed(&mut self.stats, &mut self.fatal, e);
                false
            }
        }
    }

    /// Brings flow `idx` forward as far as it can go now (see the module docs).
    fn pump<S: Service<Flow = F>>(&mut self, svc: &mut S, tx: &mut Producer, idx: usize) {
        if !self.flows[idx].live {
            return;
        }
        let mut full;
        loop {
            full = self.flush_out(tx, idx);
            let flow = &self.flows[idx];
            if flow.backlog_count > 0 && flow.can_run() && flow.svc.is_some() {
                self.run_held(svc, idx);
                continue;
            }
            if flow.eof && !flow.eof_done && !flow.busy && flow.backlog_count == 0 {
                self.call(svc, idx, |s, st, cx| s.eof(st, cx));
                self.flows[idx].eof_done = true;
                continue;
            }
            break;
        }
        if self.fatal.is_some() {
            return;
        }
        let o = &self.opts;
        let flow = &self.flows[idx];
        let (count, bytes) = (flow.backlog_count, flow.backlog_bytes());
        let want_pause = count > o.hold_max_requests || bytes > o.hold_max_bytes;
        let want_resume = count <= o.resume_requests && bytes <= o.resume_bytes;
        let id = flow.id;
        if !flow.paused && want_pause {
            if self.control(tx, id, Kind::Pause) {
                self.flows[idx].paused = true;
                self.stats[Md::Pauses] += 1;
            } else {
                full = true;
            }
        } else if flow.paused && want_resume {
            if self.control(tx, id, Kind::Resume) {
                self.flows[idx].paused = false;
                self.stats[Md::Resumes] += 1;
            } else {
                full = true;
            }
        }
        let flow = &self.flows[idx];
        let closing = flow.svc.is_none() || (flow.eof_done && !flow.busy);
        if closing && flow.out.is_empty() && !flow.has_broadcasts() {
            if self.control(tx, id, Kind::Close) {
                self.stats[Md::ClosesOut] += 1;
                self.remove(svc, idx);
                return;
            }
            full = true;
        }
        let flow = &mut self.flows[idx];
        if full && !flow.blocked && self.fatal.is_none() {
            flow.blocked = true;
            self.blocked.push(idx as u32);
        }
    }

    fn pump_dirty<S: Service<Flow = F>>(&mut self, svc: &mut S, tx: &mut Producer) {
        let mut i = 0;
        while i < self.dirty.len() {
            let idx = self.dirty[i] as usize;
            self.flows[idx].dirty = false;
            self.pump(svc, tx, idx);
            i += 1;
        }
        self.dirty.clear();
    }

    fn requeue_blocked(&mut self) {
        for i in 0..self.blocked.len() {
            let idx = self.blocked[i] as usize;
            self.flows[idx].blocked = false;
            if self.flows[idx].live {
                self.mark_dirty(idx);
            }
        }
        self.blocked.clear();
    }

    fn pump_all<S: Service<Flow = F>>(&mut self, svc: &mut S, tx: &mut Producer) {
        self.requeue_blocked();
        for idx in 0..self.flows.len() {
            if self.flows[idx].live {
                self.mark_dirty(idx);
            }
        }
        self.pump_dirty(svc, tx);
    }

    fn remove<S: Service<Flow = F>>(&mut self, svc: &mut S, idx: usize) {
        let flow = &mut self.flows[idx];
        if !flow.live {
            return;
        }
        flow.live = false;
        self.index.remove(&flow.id.0);
        if let Some(state) = flow.svc.take() {
            svc.close(state);
        }
        // Queued broadcasts go with the flow's other output (documented on `Ctx::broadcast`).
        for buf in [&mut flow.out, &mut flow.backlog, &mut flow.bcast] {
            buf.clear();
            if buf.capacity() > KEEP_CAPACITY {
                buf.shrink_to(KEEP_CAPACITY);
            }
        }
        self.free.push(idx as u32);
    }

    fn close_all<S: Service<Flow = F>>(&mut self, svc: &mut S) {
        for idx in 0..self.flows.len() {
            self.remove(svc, idx);
        }
        self.timers.clear();
        self.dirty.clear();
        self.blocked.clear();
        for f in &mut self.flows {
            f.dirty = false;
            f.blocked = false;
        }
        self.fatal = None;
    }
}

/// Bookkeeping for a push into the output ring that failed: a full ring is counted (the output
/// waits and is retried), anything else means the ring is corrupt and md detaches.
fn push_failed(stats: &mut Stats, fatal: &mut Option<Detach>, e: PushError) {
    match e {
        PushError::Full => stats[Md::OutFull] += 1,
        PushError::Corrupt | PushError::TooLarge { .. } => *fatal = Some(Detach::Corrupt(None)),
    }
}
