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
//! 4. One round of yielded work (see "Time slices" below).
//! 5. [`Producer::flush`] once: one Release store, and one doorbell write only if io_conn sleeps.
//!    With a stats sink ([`Runner::set_stats_sink`]), the counters, the heartbeat and both rings'
//!    counters are then mirrored into the stats segment (relaxed stores, once per batch; also
//!    before every sleep), and the publish time is stamped if frames went out.
//! 6. Something happened (or yielded work waits): loop, looking at the epoll set without
//!    sleeping every 64 passes or every millisecond, whichever comes first (signals, pidfd).
//!    Nothing happened: one spin opportunity on the input ring, up to [`RunnerOptions::spin`]
//!    ([`rt::SpinGate`]: yielding the CPU every few µs; skipped while backing off after spins
//!    in which io_conn sent nothing, or while the machine has more than twice as many runnable
//!    threads as CPUs); then arm the doorbell ([`Consumer::prepare_sleep`]) and sleep in
//!    `epoll_wait` on: the doorbell FIFO, the timerfd, the shutdown eventfd, the signalfd, and
//!    io_conn's pidfd.
//!
//! # Time slices
//!
//! A request that computes for long returns [`Status::Yield`] when its slice
//! ([`RunnerOptions::slice`], `md.slice`) is spent ([`crate::Ctx::slice_over`]). Its flow joins
//! the round, a FIFO of yielded flows. Step 4 resumes ([`Service::resume`]) flows from the front
//! of the round, each at most once, until one slice has passed since the round began (at least
//! one flow runs); each turn gets a fresh slice, which the flow's held requests share if the
//! yielded one finishes; a flow that yields again goes to the back. So other flows' new requests,
//! timers and ready work run between two slices, yielded flows take turns (round robin), and the
//! loop is back at its input after about one slice whatever the number of yielded flows. While
//! the round is not empty the loop never sleeps. A yielded request stays the flow's request in
//! progress: later requests of the flow stay held.
//!
//! # Per flow
//!
//! * **Order.** A flow's requests reach the service one at a time, in order. While one is
//!   [`Status::Pending`] (or its output exceeds the flow's credit), later requests are copied into
//!   the flow's backlog. When the backlog exceeds [`RunnerOptions::hold_max_requests`] or
//!   [`RunnerOptions::hold_max_bytes`], md sends `PAUSE` (io_conn stops reading that client); when it
//!   falls to [`RunnerOptions::resume_requests`] and [`RunnerOptions::resume_bytes`], `RESUME`.
//! * **Memory per flow.** The held bytes are bounded by `hold_max_bytes` plus what io_conn pushed
//!   before it saw `PAUSE` (at most the input ring's capacity); one request larger than that is
//!   still held whole. The backlog is a FIFO in a `Vec` that is emptied when its last request runs
//!   and compacted (the consumed prefix dropped) when an append would grow it while at least half
//!   of it is consumed, so a client that keeps it between the thresholds and never lets it empty
//!   does not make it grow: its capacity stays below four times the most the flow held at once
//!   (issue 14; `md/tests/alloc.rs`). Buffers above 64 KiB shrink when their flow closes.
//! * **Credit.** `OPEN` carries the flow's output credit: the most bytes md may have sent and not
//!   seen `DRAINED`. Output beyond it waits in the flow's outbox (and so does output that finds the
//!   ring full); it is sent as `DRAINED` returns credit, or on the next wake-up. Nothing is dropped
//!   and nothing spins: a flow blocked on a full ring is retried on each loop and the loop sleeps at
//!   most 1 ms while any is blocked. A credit of 0 in `OPEN` means "no limit".
//! * **Reply ends.** With `OPEN_MARK_ENDS` (request dispatch) each reply's end is the last byte
//!   of a `DATA` frame (an empty one if needed). With `OPEN_FLOW_ENDS` (flow dispatch) io_conn
//!   only counts ends, so the output of a whole batch of requests goes out in as few frames as
//!   credit allows, each saying how many replies it completes (`flags::ends_flags`); held
//!   requests that may run all run before their output is flushed.
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

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
use rt::SpinGate;
use rt::notify::Watchdog;
use shmq::doorbell::Doorbell;
use shmq::frame::{FlowId, Hello, Kind};
use shmq::ring::{Consumer, Producer, PushError, RingError};
use shmq::stats::{Md, MdState};

mod core;
mod flow;
mod late_stats;

use crate::control::Control;
use crate::service::Service;
use crate::stats::{MdStatsSink, Stats};
use crate::timer::Timers;
use core::Core;
use flow::FlowMap;
use late_stats::LateStats;
pub use late_stats::{LATE_STATS_EVERY, StatsAttempt};

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
    /// Busy-poll the input ring up to this long before sleeping, when it pays (`md.spin`, see
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
    /// The time slice of long work (`md.slice`, see [`crate::Ctx::slice_over`]), and the time
    /// one round of yielded requests may take before the loop looks at its input again. Zero:
    /// no slicing ([`crate::Ctx::slice_budget`] is `None`; a service that yields anyway gets
    /// one resume per loop iteration).
    pub slice: Duration,
    /// After a shutdown request (leaving): how long md keeps serving what it has in flight
    /// before it stops anyway (`md.drain_deadline`). See "Leaving" in the module docs.
    pub drain_deadline: Duration,
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
            slice: config::Md::default().slice,
            drain_deadline: config::Md::default().drain_deadline,
        }
    }
}

impl RunnerOptions {
    /// Options from the config (`md.spin`, `md.slice`), for instance `instance`.
    pub fn from_config(cfg: &config::Config, instance: u32, start_time: u64) -> Self {
        Self {
            instance,
            start_time,
            spin: cfg.md.spin,
            slice: cfg.md.slice,
            drain_deadline: cfg.md.drain_deadline,
            ..Self::default()
        }
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

/// The leave in progress after a shutdown request.
#[derive(Debug, Clone, Copy)]
struct Leaving {
    /// `md.drain_deadline` from the request: then md stops whatever is still in flight.
    until: Instant,
    /// LEAVE is in the output ring.
    sent: bool,
}

/// Busy loop iterations between two non-blocking looks at the epoll set (signals, pidfd).
const POLL_EVERY: u32 = 64;

/// ... or this much time, whichever comes first: iterations that run slices of long work are
/// few and long (about one `md.slice` each), and a SIGTERM or io_conn's exit must not wait 64
/// of them. One `epoll_wait(0)` per millisecond of work costs ~0.1 %.
const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Runs a [`Service`] over an [`Endpoint`]. Keeps its flow table, timers and stats across
/// re-attaches.
#[derive(Debug)]
pub struct Runner<S: Service> {
    service: S,
    core: Core<S::Flow>,
    /// Where the counters are mirrored once per batch; `None`: in-process only.
    sink: Option<MdStatsSink>,
    /// A stats segment still to pick up while serving ([`Self::set_late_stats`]).
    late_stats: Option<LateStats>,
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
            ready: VecDeque::with_capacity(64),
            slice_end: None,
            timers: Timers::new(),
            stats: Stats::default(),
            fatal: None,
            leave_acked: false,
            requests_routed: false,
            max_payload: 0,
            now: Instant::now(),
            warned_refused: false,
        };
        Self { service, core, sink: None, late_stats: None, watchdog }
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
        if sink.is_some() {
            self.late_stats = None;
        }
        let sink = sink.map(|mut s| {
            s.bind(&self.core.stats, self.service.command_names());
            s
        });
        std::mem::replace(&mut self.sink, sink)
    }

    /// While no sink is set, calls `attempt` from the loop at most once per
    /// [`LATE_STATS_EVERY`] until it returns a sink (mirrored from then on, counting from this
    /// call, not from the pickup) or `Err(false)` (given up); `None` cancels. [`crate::serve`]
    /// sets it when the stats segment was not there at the attach (issue 14, finding 11).
    pub fn set_late_stats(&mut self, attempt: Option<StatsAttempt>) {
        self.late_stats = attempt.map(|attempt| LateStats {
            attempt,
            next: Instant::now() + LATE_STATS_EVERY,
            base: self.core.stats.clone(),
        });
    }

    /// One due attempt of [`Self::set_late_stats`]; on success the sink starts mirroring now.
    fn poll_late_stats(&mut self, ep: &Endpoint, now: Instant) {
        let Some(late) = self.late_stats.as_mut() else { return };
        match late.poll(now) {
            Err(true) => {}
            Err(false) => self.late_stats = None,
            Ok(mut sink) => {
                let late = self.late_stats.take().expect("polled above");
                sink.bind(&late.base, self.service.command_names());
                sink.begin_run(&ep.tx);
                sink.mirror(&self.core.stats, &ep.rx, &ep.tx);
                self.sink = Some(sink);
            }
        }
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

    /// Serves `ep` until shutdown or until the pair becomes unusable. Sends `HELLO` first. A
    /// shutdown request makes md leave (LEAVE to io_conn, in-flight work finished within
    /// [`RunnerOptions::drain_deadline`], see docs/ARCHITECTURE.md "An md leaving"). Every flow is
    /// closed (with [`Service::close`]) before it returns.
    ///
    /// With a stats sink ([`Self::set_stats_sink`]) the slot's state is `running` while it
    /// serves, `leaving` ([`MdState::Stopping`]) from a shutdown request until it has handed
    /// over, then `exited`; after a detach it is `starting` again (the caller re-attaches).
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

    /// SIGHUP: reloads the config through `control` and applies md's live settings (spin, slice,
    /// drain deadline, log level) and the service's ([`Service::configure`], which may refuse,
    /// then [`Service::reload`]); counts the outcome.
    fn reload(&mut self, control: &Control, gate: &mut SpinGate, attached: &str) {
        let _ = rt::notify::reloading();
        let status = match control.reload(|c| self.service.configure(c)) {
            Some(crate::reload::ReloadOutcome::Applied { config, generation }) => {
                let o = &mut self.core.opts;
                o.spin = config.md.spin;
                o.slice = config.md.slice;
                o.drain_deadline = config.md.drain_deadline;
                *gate = SpinGate::new(o.spin);
                crate::reload::set_log_level(config.md.log_level);
                self.service.reload(&config);
                self.core.stats[Md::ReloadsOk] += 1;
                self.core.stats[Md::ConfigGeneration] = generation;
                format!("{attached}; serving; config generation {generation}")
            }
            Some(crate::reload::ReloadOutcome::Refused) => {
                self.core.stats[Md::ReloadsRefused] += 1;
                format!(
                    "{attached}; serving; config generation {}; last reload refused (see the log)",
                    self.core.stats[Md::ConfigGeneration]
                )
            }
            None => return,
        };
        let _ = rt::notify::reloaded(&status);
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
        let mut last_poll = Instant::now();
        // Spin (up to `md.spin`) when out of input only while io_conn is likely to send more:
        // the gate backs off after spins that found nothing, yields the CPU every few µs (so a
        // client or io_conn woken on this CPU runs at once), and stays shut while the machine
        // has more than twice as many runnable threads as CPUs.
        let mut gate = SpinGate::new(self.core.opts.spin);
        if control.shutdown_requested() {
            return Ok(Exit::Shutdown);
        }
        // Set once a shutdown is requested: md is leaving (see "Leaving" in the module docs).
        let mut leaving: Option<Leaving> = None;
        self.core.leave_acked = false;
        self.core.requests_routed = false;
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
            if let (false, Some(l)) = (hello_pending, leaving.as_mut()) {
                if !l.sent {
                    match ep.tx.try_push(FlowId(0), Kind::Leave, 0, &[]) {
                        Ok(()) => l.sent = true,
                        Err(PushError::Full) => {} // retried next pass
                        Err(_) => return Ok(Exit::Detached(Detach::Corrupt(None))),
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
                if let (Some(sink), true) = (sink.as_mut(), worked) {
                    // io_conn may have published (and stamped) more frames between the
                    // `has_data` look and the end of the drain, which took them too: their wait
                    // ends now (a little late, never lost). `note_pickup` records each stamp
                    // once, so a batch with nothing new records nothing here.
                    sink.pickup();
                }
                worked |= core.fire_timers(service);
                core.pump_dirty(service, tx);
                // Yielded long work goes last: after this batch's requests, the timers and the
                // ready work of every other flow; one round of about one slice.
                worked |= core.run_slices(service, tx);
                // Never sleep while yielded work waits (epoll timeout 0 and no spin: `worked`
                // takes the busy path below).
                worked |= !core.ready.is_empty();
                // Leaving, and io_conn has routed its last request here: close the flow-dispatched
                // connections that are done, and stop once nothing is in flight.
                // (Flow dispatch alone needs no acknowledgement: io_conn keeps a flow's requests
                // on its md until md closes the flow.)
                let left = leaving
                    .is_some_and(|l| l.sent && (core.leave_acked || !core.requests_routed))
                    && core.leave_step(service, tx);
                tx.flush();
                if let Some(sink) = sink {
                    sink.after_flush(tx);
                }
                if left && core.fatal.is_none() {
                    log::info!("left: every request in flight answered and handed over");
                    return Ok(Exit::Shutdown);
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
                if since_poll < POLL_EVERY
                    && self.core.now.duration_since(last_poll) < POLL_INTERVAL
                {
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
                timeout = if leaving.is_some() {
                    // Leaving: look at the deadline and io_conn's acknowledgement often.
                    EpollTimeout::from(10u16)
                } else if self.core.blocked.is_empty() {
                    let ms = self.core.opts.check_interval.as_millis().clamp(1, 60_000);
                    EpollTimeout::from(ms as u16)
                } else {
                    // Some flow waits for ring space; io_conn frees it without telling us.
                    EpollTimeout::from(1u16)
                };
            }
            since_poll = 0;
            last_poll = Instant::now();
            if self.sink.is_none() {
                self.poll_late_stats(ep, last_poll);
            }
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
                        // Input within the budget: a spin would have paid (ends a backoff).
                        gate.note_wake(last_poll.elapsed());
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
            if control.take_reload() {
                // systemd's STATUS keeps saying what md is attached to (operators and the
                // container tests read it), then the config generation.
                let attached = format!(
                    "instance {} attached to io_conn epoch {} generation {}",
                    self.core.opts.instance,
                    ep.rx.epoch(),
                    ep.rx.generation()
                );
                self.reload(control, &mut gate, &attached);
            }
            if control.requested() && leaving.is_none() {
                let until = Instant::now() + self.core.opts.drain_deadline;
                log::info!(
                    "leaving: io_conn routes nothing new here; finishing {} open flows (at most \
                     {:?})",
                    self.core.index.len(),
                    self.core.opts.drain_deadline
                );
                if let Some(sink) = &self.sink {
                    sink.set_state(MdState::Stopping);
                }
                leaving = Some(Leaving { until, sent: false });
                continue;
            }
            if leaving.is_some_and(|l| Instant::now() >= l.until) {
                log::warn!("md.drain_deadline reached while leaving; stopping with work in flight");
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
