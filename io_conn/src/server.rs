//! The event loop: listeners, client sockets, md rings and doorbells, pidfds, timer, signals.
//!
//! One thread, one epoll instance, level-triggered. See docs/ARCHITECTURE.md "io_conn" for the
//! whole story; the comments here say why each step is where it is.
//!
//! # One loop iteration
//!
//! 1. Decide how long to sleep: 0 if any md ring has frames; after pushing to md, spin up to
//!    `io_conn.spin` on the md→io rings; otherwise arm each md→io ring's doorbell (drain the FIFO,
//!    set `armed`, fence, re-check) and sleep — 1 ms at most while flows are blocked on a full
//!    ring or DRAINED frames are deferred, else until an event (the timerfd covers deadlines).
//! 2. Handle every epoll event (accept, read, write, doorbells, pidfds, timer, signals).
//! 3. Drain every md→io ring (frames are handled in place, then released).
//! 4. Retry the flows blocked on a full io→md ring, in FIFO order per ring.
//! 5. Push the DRAINED frames (one per flow per iteration, deferred up to 1 ms when nothing else
//!    is going to that md, so a request/response client does not cost md an extra wake-up).
//! 6. Flush each io→md producer once (one Release store; rings md's doorbell only if md armed it).
//! 7. Mirror the counters into the stats segment (relaxed stores, no syscall; see `crate::stats`)
//!    with a heartbeat; the timer wakes an idle loop once per [`HEARTBEAT_TICK`] so the heartbeat
//!    tells a live io_conn from a hung one. Under systemd with `WatchdogSec=`, each iteration
//!    also pings the watchdog (at most every half interval, `md::notify::Watchdog`), and the
//!    timer wakes an idle loop for that too.
//!
//! # Level-triggered, and what pause/resume costs
//!
//! Interest is recomputed after each change and `EPOLL_CTL_MOD` is issued only when it differs
//! from what is registered: a backpressure pause or an md PAUSE costs one `epoll_ctl`, the resume
//! one more; arming EPOLLOUT for a partial write one, disarming it one. In exchange the loop may
//! stop reading a socket at any point (after 4 reads, on a full ring) without losing a wake-up,
//! which edge-triggered mode would only allow with a private "still readable" list.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use config::{Config, Framing};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use rt::notify::Watchdog;
use shmq::frame::{self, FlowId, Frame, Hello, Kind, OpenInfo};
use shmq::pair::{IoSide, PairConfig};
use shmq::ring::{Consumer, Producer, PushError};
use shmq::stats::monotonic_ns;
use shmq::sys::ProcId;

use crate::counters::Counters;
use crate::flows::{FlowTable, ListId, State};
use crate::framing::{self, Next};
use crate::pool::Pool;
use crate::spawn::Children;
use crate::stats::Stats;
use crate::{Options, Shutdown};

/// How long a connection accepted while no md is live is held (not read) waiting for one.
pub(crate) const UNASSIGNED_HOLD: Duration = Duration::from_secs(10);
/// How long accepting pauses after EMFILE/ENFILE.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Longest an idle loop sleeps: the stats heartbeat advances at least this often.
pub(crate) const HEARTBEAT_TICK: Duration = Duration::from_secs(1);
/// Longest sleep while flows wait for ring space or DRAINED frames are deferred.
const SHORT_TICK: Duration = Duration::from_millis(1);
/// Spin (when `io_conn.spin` allows) only while the loop's recent work is below this many events
/// and md frames per iteration (×16, see `load_x16`): a lightly loaded server spins to save the
/// wake-ups of a lone request, a busy one already batches and needs the CPU for its clients.
/// Measured in docs/BENCHMARKS.md ("Spin budgets").
const SPIN_MAX_LOAD_X16: u64 = 3 * 8;
/// Reads per readiness event of one socket before moving on (fairness; level-triggered epoll
/// reports it again).
const READS_PER_EVENT: usize = 4;
/// Accepts per readiness event of one listener.
const ACCEPTS_PER_EVENT: usize = 64;
/// Frames handled per md ring per iteration.
const FRAMES_PER_RING: usize = 4096;
/// The reply a line service gets for a line longer than `shared.max_message`.
const ERR_TOO_LONG: &[u8] = b"ERR message too long\n";
/// The reply a line service gets when the flow table is full.
const ERR_TOO_MANY: &[u8] = b"ERR too many connections\n";

// epoll tokens: kind in the top byte; flows also carry 24 bits of their generation so an event
// queued for a closed flow is not applied to the slot's next occupant.
const K_LISTENER: u64 = 1;
const K_FLOW: u64 = 2;
const K_BELL: u64 = 3;
const K_MDPID: u64 = 4;
const K_CHILD: u64 = 5;
const K_TIMER: u64 = 6;
const K_SIGNAL: u64 = 7;
const K_SHUTDOWN: u64 = 8;

#[inline]
fn token(kind: u64, idx: u64) -> u64 {
    (kind << 56) | idx
}

#[inline]
fn flow_token(slot: u32, generation: u32) -> u64 {
    token(K_FLOW, (u64::from(generation & 0xff_ffff) << 32) | u64::from(slot))
}

/// Why a flow closed (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Peer,
    Idle,
    Deadline,
    Oversized,
    CreditOverrun,
    Error,
    ByMd,
    MdGone,
    Shutdown,
}

/// Outcome of pushing a flow's pending frames to its md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pump {
    Done,
    Blocked,
    TooLong,
    MdGone,
}

#[derive(Debug)]
struct Lst {
    sock: Option<TcpListener>,
    service: String,
    framing: Framing,
    in_epoll: bool,
}

#[derive(Debug)]
struct Md {
    /// The pair (None once a reset failed: instance disabled).
    side: Option<IoSide>,
    /// Identity and pidfd of the md that said HELLO.
    live: Option<(ProcId, OwnedFd)>,
    /// Flows bound to it.
    flows: u32,
    /// Our `armed` flag on its out ring is set (cleared only by its doorbell waking us).
    armed: bool,
    /// Flows with frames that did not fit `tx`, as (slot, generation), oldest first.
    blocked: VecDeque<(u32, u32)>,
    /// Frames pushed since the last flush (`Producer::flush` says whether it rang, not whether
    /// it published; this says the latter, for the stats publish stamp).
    pushed: bool,
    /// Lost (corrupt ring, bad HELLO): reset after the current batch.
    lost: bool,
    /// The pair is new (created or reset): mirror its stats halves once even without a live md,
    /// so viewstats shows the new generation.
    stats_fresh: bool,
}

impl Md {
    fn tx(&mut self) -> Option<&mut Producer> {
        self.side.as_mut().map(|s| &mut s.tx)
    }

    fn has_data(&self) -> bool {
        self.side.as_ref().is_some_and(|s| s.rx.has_data())
    }

    fn is_live(&self) -> bool {
        self.live.is_some() && self.side.is_some()
    }
}

pub(crate) struct Server<'c> {
    cfg: &'c Config,
    epoll: Epoll,
    events: Vec<EpollEvent>,
    listeners: Vec<Lst>,
    flows: FlowTable,
    pool: Pool,
    scratch: Vec<u8>,
    mds: Vec<Md>,
    pairs: PairConfig,
    /// Placeholder consumer swapped in while an md's real one is being drained.
    spare_rx: Option<Consumer>,
    /// Instances whose pair this process created (removed at exit).
    created: Vec<u32>,
    timer: TimerFd,
    timer_armed: Option<Instant>,
    signals: Option<SignalFd>,
    shutdown: Option<Shutdown>,
    children: Option<Children>,
    c: Counters,
    /// The stats segment (created right after the queue pairs; None only before that).
    stats: Option<Stats>,
    drained_list: Vec<u32>,
    drained_force_at: Option<Instant>,
    unassigned: VecDeque<(u32, u32)>,
    accept_paused_until: Option<Instant>,
    drain_until: Option<Instant>,
    exit: bool,
    spin_wanted: bool,
    /// Events plus md frames handled per loop iteration, an exponential moving average (weight
    /// 1/8) in sixteenths.
    load_x16: u64,
    cleaned: bool,
    max_msg: usize,
    read_size: usize,
    credit: u64,
    idle: Option<Duration>,
    deadline: Option<Duration>,
    spin: Duration,
    now: Instant,
    /// CLOCK_MONOTONIC ns read with `now` (stats: heartbeat, queue-wait pick-ups).
    now_ns: u64,
    /// systemd's watchdog (`WatchdogSec=`): pinged once per iteration at most every half
    /// interval; the timer wakes an idle loop for it. Disabled without `$WATCHDOG_USEC`.
    watchdog: Watchdog,
}

impl std::fmt::Debug for Server<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("flows", &self.flows.in_use()).finish_non_exhaustive()
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl<'c> Server<'c> {
    pub(crate) fn new(
        cfg: &'c Config,
        listeners: Vec<(TcpListener, config::Listener)>,
        mut opts: Options,
    ) -> anyhow::Result<Self> {
        let io = &cfg.io_conn;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .context("timerfd_create")?;
        epoll
            .add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, token(K_TIMER, 0)))
            .context("epoll add timerfd")?;
        let signals = if opts.signals {
            let sfd = SignalFd::with_flags(
                &crate::handled_signals(),
                SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
            )
            .context("signalfd")?;
            epoll
                .add(&sfd, EpollEvent::new(EpollFlags::EPOLLIN, token(K_SIGNAL, 0)))
                .context("epoll add signalfd")?;
            Some(sfd)
        } else {
            None
        };
        if let Some(s) = &opts.shutdown {
            epoll
                .add(s.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token(K_SHUTDOWN, 0)))
                .context("epoll add shutdown eventfd")?;
        }
        let mut lst = Vec::with_capacity(listeners.len());
        for (idx, (sock, l)) in listeners.into_iter().enumerate() {
            sock.set_nonblocking(true).context("listener O_NONBLOCK")?;
            epoll
                .add(&sock, EpollEvent::new(EpollFlags::EPOLLIN, token(K_LISTENER, idx as u64)))
                .context("epoll add listener")?;
            lst.push(Lst {
                sock: Some(sock),
                framing: l.framing(),
                service: l.service,
                in_epoll: true,
            });
        }
        anyhow::ensure!(lst.len() < usize::from(u16::MAX), "too many listeners");

        let max_msg = usize::try_from(cfg.shared.max_message).context("shared.max_message")?;
        let min_msg = 32 + frame::MAX_SERVICE_NAME;
        anyhow::ensure!(
            max_msg >= min_msg,
            "shared.max_message must be at least {min_msg} bytes (an OPEN frame)"
        );
        let read_buffer = usize::try_from(io.read_buffer).context("io_conn.read_buffer")?;
        let max_conn = io.max_connections;

        // The pairs: created before md children start (they attach to them).
        let pairs = crate::pair_config(cfg);
        let runtime_dir = cfg.runtime_dir();
        crate::create_private_dir(&runtime_dir)
            .with_context(|| format!("creating runtime directory {}", runtime_dir.display()))?;
        let epoch = new_epoch();
        let mut server = Self {
            cfg,
            epoll,
            events: vec![EpollEvent::empty(); 256],
            listeners: lst,
            flows: FlowTable::new(max_conn),
            pool: Pool::new(
                read_buffer.min(max_msg.max(read_buffer)),
                (max_conn as usize).min(4096),
            ),
            scratch: vec![0; read_buffer],
            mds: Vec::new(),
            pairs,
            spare_rx: Some(placeholder_consumer()?),
            created: Vec::new(),
            timer,
            timer_armed: None,
            signals,
            shutdown: opts.shutdown.take(),
            children: None,
            c: Counters::default(),
            stats: None,
            drained_list: Vec::with_capacity((max_conn as usize).min(1 << 16)),
            drained_force_at: None,
            unassigned: VecDeque::new(),
            accept_paused_until: None,
            drain_until: None,
            exit: false,
            spin_wanted: false,
            load_x16: 0,
            cleaned: false,
            max_msg,
            read_size: read_buffer,
            credit: io.output_credit,
            idle: nonzero(io.idle_timeout),
            deadline: nonzero(io.message_deadline),
            spin: io.spin,
            now: Instant::now(),
            now_ns: monotonic_ns(),
            watchdog: Watchdog::from_env(),
        };
        for i in 0..cfg.md.max_instances {
            let side = server.pairs.create(i, epoch).map_err(|e| match e {
                shmq::pair::PairError::InUse { what, owner } => anyhow::anyhow!(
                    "{what} belongs to a running process (pid {owner}): is another io_conn with \
                     shared.name = {:?} running?",
                    cfg.shared.name
                ),
                e => anyhow::anyhow!("creating the queue pair of md instance {i}: {e}"),
            })?;
            server.created.push(i);
            server.install(i, side)?;
        }
        log::info!(
            "created {} queue pairs (epoch {epoch}) in {} ({} backend)",
            cfg.md.max_instances,
            runtime_dir.display(),
            cfg.shared.shm_backend
        );
        // After the pairs: their creation refused a live predecessor, so a leftover stats segment
        // is a dead one's. Before md children: md attaches it right after its pair, and checks
        // that its epoch is the pairs' epoch.
        server.stats = Some(Stats::create(
            server.pairs.backend,
            &cfg.shared.name,
            cfg.md.max_instances,
            epoch,
        )?);
        server.publish_stats();
        if let Some(spec) = opts.spawn.take() {
            anyhow::ensure!(
                spec.count <= cfg.md.max_instances,
                "--spawn-md {} exceeds md.max_instances = {}",
                spec.count,
                cfg.md.max_instances
            );
            server.children = Some(Children::new(spec));
            server.now = Instant::now();
            server.start_due_children();
        }
        Ok(server)
    }

    /// Installs a fresh (or reset) pair for instance `i`.
    fn install(&mut self, i: u32, side: IoSide) -> anyhow::Result<()> {
        self.epoll
            .add(&side.rx_bell, EpollEvent::new(EpollFlags::EPOLLIN, token(K_BELL, u64::from(i))))
            .context("epoll add doorbell")?;
        let md = Md {
            side: Some(side),
            live: None,
            flows: 0,
            armed: false,
            blocked: VecDeque::new(),
            pushed: false,
            lost: false,
            stats_fresh: true,
        };
        if (i as usize) < self.mds.len() {
            let old = std::mem::replace(&mut self.mds[i as usize], md);
            // Keep the queue's allocation (no growth again after a reset).
            let mut q = old.blocked;
            q.clear();
            self.mds[i as usize].blocked = q;
        } else {
            self.mds.push(md);
        }
        Ok(())
    }

    fn start_due_children(&mut self) {
        let Some(ch) = self.children.as_mut() else { return };
        while let Some(i) = ch.due(self.now) {
            match ch.start(i, self.now) {
                Ok(fd) => {
                    if let Err(e) = self
                        .epoll
                        .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token(K_CHILD, u64::from(i))))
                    {
                        log::error!("watching md instance {i}: {e}");
                    }
                }
                Err(e) => log::error!("starting md instance {i} ({}): {e}", ch.bin().display()),
            }
        }
    }

    /// Runs until shutdown completes. Returns the counters.
    pub(crate) fn run(&mut self) -> anyhow::Result<Counters> {
        self.now = Instant::now();
        self.watchdog.tick(self.now);
        self.rearm_timer();
        while !self.exit {
            let timeout = self.sleep_timeout();
            let n = match self.epoll.wait(&mut self.events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => return Err(e).context("epoll_wait"),
            };
            if n > 0 {
                self.c.epoll_wakeups += 1;
                self.c.epoll_events += n as u64;
            }
            self.now = Instant::now();
            self.now_ns = monotonic_ns();
            self.watchdog.tick(self.now);
            for k in 0..n {
                let ev = self.events[k];
                self.dispatch(ev.data(), ev.events());
            }
            let frames_before = self.c.messages_out;
            self.poll_mds();
            let work = n as u64 + (self.c.messages_out - frames_before);
            self.load_x16 = self.load_x16 - self.load_x16 / 8 + 2 * work;
            self.retry_blocked();
            let force = self.drained_force_at.is_some_and(|t| self.now >= t);
            self.flush_drained(force);
            self.flush_tx();
            self.publish_stats();
            self.rearm_timer();
            if self.drain_until.is_some() && self.flows.in_use() == 0 {
                log::info!("all connections closed");
                self.exit = true;
            }
        }
        self.cleanup();
        Ok(self.c.clone())
    }

    // ---- sleeping -------------------------------------------------------------------------

    fn sleep_timeout(&mut self) -> EpollTimeout {
        if self.mds.iter().any(Md::has_data) {
            return EpollTimeout::ZERO;
        }
        if std::mem::take(&mut self.spin_wanted)
            && !self.spin.is_zero()
            && self.load_x16 < SPIN_MAX_LOAD_X16
            && self.mds.iter().any(Md::is_live)
        {
            let start = Instant::now();
            loop {
                for _ in 0..32 {
                    if self.mds.iter().any(|m| m.live.is_some() && m.has_data()) {
                        return EpollTimeout::ZERO;
                    }
                    std::hint::spin_loop();
                }
                if start.elapsed() >= self.spin {
                    break;
                }
            }
        }
        for m in &mut self.mds {
            if m.armed {
                continue;
            }
            if let Some(side) = m.side.as_mut() {
                if side.rx.prepare_sleep(&side.rx_bell) {
                    m.armed = true;
                } else {
                    return EpollTimeout::ZERO;
                }
            }
        }
        if self.mds.iter().any(|m| !m.blocked.is_empty()) || !self.drained_list.is_empty() {
            return EpollTimeout::from(SHORT_TICK.as_millis() as u16);
        }
        EpollTimeout::NONE
    }

    fn rearm_timer(&mut self) {
        let mut due: Option<Instant> = None;
        let mut add = |t: Instant| due = Some(due.map_or(t, |d: Instant| d.min(t)));
        if let (Some(idle), Some(s)) = (self.idle, self.flows.front(ListId::Idle)) {
            add(self.flows.get(s).last_active + idle);
        }
        if let (Some(dl), Some(s)) = (self.deadline, self.flows.front(ListId::Deadline)) {
            add(self.flows.get(s).since + dl);
        }
        if let Some(&(s, _)) = self.unassigned.front() {
            add(self.flows.get(s).since + UNASSIGNED_HOLD);
        }
        if let Some(t) = self.accept_paused_until {
            add(t);
        }
        if let Some(t) = self.drain_until {
            add(t);
        }
        if let Some(t) = self.children.as_ref().and_then(Children::next_due) {
            add(t);
        }
        if self.stats.is_some() {
            add(self.now + HEARTBEAT_TICK);
        }
        if let Some(t) = self.watchdog.next_due() {
            add(t);
        }
        let Some(due) = due else { return };
        if self.timer_armed.is_some_and(|armed| armed <= due) {
            return;
        }
        let delay = due.saturating_duration_since(self.now).max(Duration::from_millis(1));
        match self
            .timer
            .set(Expiration::OneShot(TimeSpec::from_duration(delay)), TimerSetTimeFlags::empty())
        {
            Ok(()) => self.timer_armed = Some(due),
            Err(e) => log::error!("timerfd_settime: {e}"),
        }
    }

    // ---- events ---------------------------------------------------------------------------

    fn dispatch(&mut self, data: u64, ev: EpollFlags) {
        let idx = data & ((1 << 56) - 1);
        match data >> 56 {
            K_FLOW => {
                let slot = idx as u32;
                let generation = (idx >> 32) as u32;
                if slot as usize >= self.flows.capacity() {
                    return;
                }
                let f = self.flows.get(slot);
                if f.generation & 0xff_ffff != generation
                    || !matches!(f.state, State::Open | State::Unassigned)
                {
                    return;
                }
                if ev.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
                    let why = if f.discard { Why::Oversized } else { Why::Peer };
                    self.close_flow(slot, why);
                    return;
                }
                if ev.contains(EpollFlags::EPOLLIN) {
                    if f.discard {
                        self.discard_input(slot);
                        return;
                    }
                    self.on_readable(slot);
                }
                if ev.contains(EpollFlags::EPOLLOUT) && self.flows.get(slot).state == State::Open {
                    self.on_writable(slot);
                }
            }
            K_LISTENER => self.accept_loop(idx as usize),
            K_BELL => {
                if let Some(m) = self.mds.get_mut(idx as usize) {
                    if let Some(side) = m.side.as_mut() {
                        let _ = side.rx_bell.drain();
                        side.rx.note_wakeup();
                    }
                    m.armed = false;
                }
            }
            K_MDPID => self.md_died(idx as u32, "its process exited"),
            K_CHILD => self.on_child_exit(idx as u32),
            K_TIMER => {
                let _ = self.timer.wait();
                self.timer_armed = None;
                self.on_timer();
            }
            K_SIGNAL => self.on_signal(),
            K_SHUTDOWN => {
                if let Some(s) = &self.shutdown {
                    s.read();
                }
                self.begin_drain("shutdown requested");
            }
            _ => {}
        }
    }

    fn on_signal(&mut self) {
        loop {
            let Some(sfd) = &self.signals else { return };
            match sfd.read_signal() {
                Ok(Some(si)) => match Signal::try_from(si.ssi_signo as i32) {
                    Ok(Signal::SIGTERM) => self.begin_drain("SIGTERM"),
                    Ok(Signal::SIGINT) => self.begin_drain("SIGINT"),
                    Ok(Signal::SIGHUP) => {
                        log::info!("SIGHUP ignored: restart to change the config")
                    }
                    _ => {} // SIGCHLD: children are watched through pidfds.
                },
                Ok(None) => return,
                Err(e) => {
                    log::error!("reading signalfd: {e}");
                    return;
                }
            }
        }
    }

    fn on_child_exit(&mut self, i: u32) {
        let stopping = self.drain_until.is_some();
        let Some(ch) = self.children.as_mut() else { return };
        let (fd, pid) = ch.on_exit(i, self.now, stopping);
        if let Some(fd) = fd {
            let _ = self.epoll.delete(&fd);
        }
        let live_pid = self.mds[i as usize].live.as_ref().map(|(p, _)| p.pid);
        match (live_pid, pid) {
            (Some(live), Some(pid)) if live == pid => self.md_died(i, "its process exited"),
            // It died before saying HELLO: it may have attached; start its successor clean.
            (None, Some(_)) => self.reset_pair(i),
            _ => {}
        }
    }

    fn on_timer(&mut self) {
        let now = self.now;
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            self.resume_accepting();
        }
        if let Some(idle) = self.idle {
            while let Some(s) = self.flows.front(ListId::Idle) {
                if self.flows.get(s).last_active + idle > now {
                    break;
                }
                self.close_flow(s, Why::Idle);
            }
        }
        if let Some(dl) = self.deadline {
            while let Some(s) = self.flows.front(ListId::Deadline) {
                let f = self.flows.get_mut(s);
                if f.since + dl > now {
                    break;
                }
                if f.discard {
                    self.close_flow(s, Why::Oversized);
                    continue;
                }
                if f.blocked || f.md_paused {
                    // Not reading by our (or md's) choice: the client is not the slow one.
                    f.since = now;
                    self.flows.move_to_back(ListId::Deadline, s);
                    continue;
                }
                self.close_flow(s, Why::Deadline);
            }
        }
        while let Some(&(s, g)) = self.unassigned.front() {
            let f = self.flows.get(s);
            if f.generation != g || f.state != State::Unassigned {
                self.unassigned.pop_front();
                continue;
            }
            if f.since + UNASSIGNED_HOLD > now {
                break;
            }
            self.unassigned.pop_front();
            self.close_flow(s, Why::MdGone);
        }
        self.start_due_children();
        if self.drain_until.is_some_and(|t| now >= t) {
            let left = self.flows.in_use();
            if left > 0 {
                log::warn!(
                    "drain deadline reached with {left} connections still open; closing them"
                );
            }
            while let Some(s) = self.flows.front(ListId::Idle) {
                self.close_flow(s, Why::Shutdown);
            }
            self.exit = true;
        }
    }

    // ---- accepting ------------------------------------------------------------------------

    fn accept_loop(&mut self, idx: usize) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let Some(l) = self.listeners.get(idx).and_then(|l| l.sock.as_ref()) else { return };
            match l.accept() {
                Ok((s, peer)) => self.on_accept(idx, s, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.c.accept_fd_exhausted += 1;
                    log::warn!("accept: {e}; pausing accepts for {ACCEPT_PAUSE:?}");
                    self.pause_accepting();
                    return;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO)
                    ) => {}
                Err(e) => {
                    log::warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn pause_accepting(&mut self) {
        for l in &mut self.listeners {
            if let (Some(s), true) = (&l.sock, l.in_epoll) {
                let _ = self.epoll.delete(s);
                l.in_epoll = false;
            }
        }
        self.accept_paused_until = Some(self.now + ACCEPT_PAUSE);
    }

    fn resume_accepting(&mut self) {
        for (idx, l) in self.listeners.iter_mut().enumerate() {
            if let (Some(s), false) = (&l.sock, l.in_epoll) {
                match self
                    .epoll
                    .add(s, EpollEvent::new(EpollFlags::EPOLLIN, token(K_LISTENER, idx as u64)))
                {
                    Ok(()) => l.in_epoll = true,
                    Err(e) => log::error!("re-adding listener: {e}"),
                }
            }
        }
    }

    fn on_accept(&mut self, idx: usize, s: TcpStream, peer: SocketAddr) {
        let framing = self.listeners[idx].framing;
        let Some(slot) = self.flows.alloc() else {
            self.c.connections_refused += 1;
            if framing == Framing::Line {
                let _ = s.set_nonblocking(true);
                let _ = (&s).write(ERR_TOO_MANY);
            }
            return; // dropping `s` closes it
        };
        if s.set_nonblocking(true).is_err() || s.set_nodelay(true).is_err() {
            self.flows.release(slot);
            return;
        }
        let md = self.choose_md();
        let generation = self.flows.get(slot).generation;
        let interest = if md.is_some() { EpollFlags::EPOLLIN } else { EpollFlags::empty() };
        if let Err(e) = self.epoll.add(&s, EpollEvent::new(interest, flow_token(slot, generation)))
        {
            log::warn!("epoll add client socket: {e}");
            self.flows.release(slot);
            return;
        }
        self.c.connections_accepted += 1;
        self.c.connections_current += 1;
        let now = self.now;
        let f = self.flows.get_mut(slot);
        f.sock = Some(s);
        f.listener = idx as u16;
        f.peer = peer;
        f.interest = interest;
        f.last_active = now;
        f.since = now;
        self.flows.push_back(ListId::Idle, slot);
        match md {
            Some(i) => self.bind(slot, i),
            None => {
                self.flows.get_mut(slot).state = State::Unassigned;
                self.unassigned.push_back((slot, generation));
            }
        }
    }

    /// The live md instance with the fewest flows.
    fn choose_md(&self) -> Option<u32> {
        self.mds
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_live())
            .min_by_key(|(_, m)| m.flows)
            .map(|(i, _)| i as u32)
    }

    /// Binds a flow to md `i` for life and sends OPEN.
    fn bind(&mut self, slot: u32, i: u32) {
        let f = self.flows.get_mut(slot);
        f.state = State::Open;
        f.md = i;
        f.open_pending = true;
        self.mds[i as usize].flows += 1;
        self.pump_or_block(slot);
        self.update_interest(slot);
    }

    // ---- reading and framing --------------------------------------------------------------

    fn on_readable(&mut self, slot: u32) {
        let framing = self.listeners[self.flows.get(slot).listener as usize].framing;
        let read_size = match framing {
            Framing::Raw => self.read_size.min(self.max_msg),
            _ => self.read_size,
        };
        let limit = framing::input_capacity(framing, self.max_msg, read_size);
        for _ in 0..READS_PER_EVENT {
            let f = self.flows.get_mut(slot);
            if f.state != State::Open
                || f.blocked
                || f.eof_seen
                || f.md_paused
                || f.close_after_flush
            {
                break;
            }
            let Some(sock) = f.sock.as_ref() else { break };
            let mut sock: &TcpStream = sock;
            let (res, buffered) = match f.input.as_mut() {
                Some(buf) => {
                    let spare = buf.spare_mut(read_size, limit);
                    let r = sock.read(spare);
                    if let Ok(n) = r {
                        buf.commit(n);
                    }
                    (r, true)
                }
                None => (sock.read(&mut self.scratch[..read_size]), false),
            };
            let n = match res {
                Ok(0) => {
                    self.on_eof(slot);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close_flow(slot, Why::Peer);
                    return;
                }
            };
            self.c.bytes_in += n as u64;
            self.touch(slot);
            let ok = if buffered {
                self.after_input(slot)
            } else {
                self.frame_scratch(slot, framing, n)
            };
            if !ok {
                return;
            }
            if n < read_size {
                break;
            }
        }
        self.update_interest(slot);
    }

    /// Fast path: `n` fresh bytes in the scratch buffer and no buffered input. Pushes every
    /// complete message straight from scratch; copies a remainder (incomplete message, or
    /// messages the full ring refused) into a pooled buffer. False if the flow closed.
    fn frame_scratch(&mut self, slot: u32, framing: Framing, n: usize) -> bool {
        #[derive(PartialEq)]
        enum Cut {
            Rest,
            Blocked,
            TooLong,
            Corrupt,
        }
        let id = self.flows.id(slot);
        let md = self.flows.get(slot).md as usize;
        let mut off = 0;
        let mut scanned = 0;
        let mut pushed = 0u64;
        let cut = {
            let Self { mds, scratch, max_msg, .. } = self;
            let Some(tx) = mds.get_mut(md).and_then(Md::tx) else {
                self.close_flow(slot, Why::MdGone);
                return false;
            };
            loop {
                if off == n {
                    break Cut::Rest;
                }
                match framing::next_message(framing, &scratch[off..n], 0, *max_msg) {
                    Next::Message { start, end, consumed } => {
                        match tx.try_push(id, Kind::Data, 0, &scratch[off + start..off + end]) {
                            Ok(()) => {
                                pushed += 1;
                                off += consumed;
                            }
                            Err(PushError::Full) => break Cut::Blocked,
                            Err(PushError::TooLarge { .. }) => break Cut::TooLong,
                            Err(PushError::Corrupt) => break Cut::Corrupt,
                        }
                    }
                    Next::Incomplete { scanned: s } => {
                        scanned = s;
                        break Cut::Rest;
                    }
                    Next::TooLong => break Cut::TooLong,
                }
            }
        };
        if pushed > 0 {
            self.c.messages_in += pushed;
            self.mds[md].pushed = true;
        }
        match cut {
            Cut::TooLong => {
                self.oversized(slot, framing);
                return false;
            }
            Cut::Corrupt => {
                self.mds[md].lost = true;
                self.close_flow(slot, Why::MdGone);
                return false;
            }
            Cut::Rest | Cut::Blocked => {}
        }
        if off < n {
            let mut buf = self.pool.get();
            buf.extend(&self.scratch[off..n]);
            buf.scanned = scanned;
            self.flows.get_mut(slot).input = Some(buf);
            if cut == Cut::Blocked {
                self.block(slot);
            } else {
                self.flows.get_mut(slot).since = self.now;
                self.flows.push_back(ListId::Deadline, slot);
            }
        }
        true
    }

    /// After bytes were appended to the flow's input buffer (or it was unblocked): push what is
    /// complete, keep the rest, maintain the deadline list. False if the flow closed.
    fn after_input(&mut self, slot: u32) -> bool {
        match self.pump(slot) {
            Pump::Done => {}
            Pump::Blocked => self.block(slot),
            Pump::TooLong => {
                let framing = self.listeners[self.flows.get(slot).listener as usize].framing;
                self.oversized(slot, framing);
                return false;
            }
            Pump::MdGone => {
                self.close_flow(slot, Why::MdGone);
                return false;
            }
        }
        let f = self.flows.get(slot);
        if f.state != State::Open {
            return false;
        }
        if f.input.is_none() {
            self.flows.remove(ListId::Deadline, slot);
        } else if !self.flows.is_linked(ListId::Deadline, slot) {
            self.flows.get_mut(slot).since = self.now;
            self.flows.push_back(ListId::Deadline, slot);
        }
        true
    }

    fn on_eof(&mut self, slot: u32) {
        let f = self.flows.get_mut(slot);
        f.eof_seen = true;
        f.peer_eof = true;
        f.eof_pending = true;
        self.flows.remove(ListId::Deadline, slot);
        self.after_input(slot);
        self.update_interest(slot);
    }

    /// A message over the limit: line services get an error line, then the connection closes.
    fn oversized(&mut self, slot: u32, framing: Framing) {
        self.c.framing_errors += 1;
        let f = self.flows.get_mut(slot);
        if let Some(b) = f.input.take() {
            self.pool.put(b);
        }
        self.flows.remove(ListId::Deadline, slot);
        if framing == Framing::Line {
            let f = self.flows.get_mut(slot);
            f.eof_seen = true;
            f.close_after_flush = true;
            f.error_close = true;
            if !self.send_to_client(slot, ERR_TOO_LONG, false) {
                return; // the write failed and closed the flow
            }
            if self.flows.get(slot).output_len() == 0 {
                self.linger(slot);
            } else {
                // Lingers once the error line is flushed.
                self.update_interest(slot);
            }
        } else {
            self.close_flow(slot, Why::Oversized);
        }
    }

    /// After an error reply is flushed: shut our side down (FIN after the reply) and discard
    /// input until the client closes, within the message deadline.
    fn linger(&mut self, slot: u32) {
        let f = self.flows.get_mut(slot);
        if let Some(s) = f.sock.as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        f.discard = true;
        f.close_after_flush = false;
        f.since = self.now;
        self.flows.move_to_back(ListId::Deadline, slot);
        self.update_interest(slot);
    }

    /// Reads and drops input of a lingering flow; closes it at EOF or error. After
    /// READS_PER_EVENT reads it yields (level-triggered epoll reports it again).
    fn discard_input(&mut self, slot: u32) {
        for _ in 0..READS_PER_EVENT {
            let Some(sock) = self.flows.get(slot).sock.as_ref() else { return };
            let mut sock: &TcpStream = sock;
            match sock.read(&mut self.scratch) {
                Ok(0) => return self.close_flow(slot, Why::Oversized),
                Ok(n) => self.c.bytes_in += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close_flow(slot, Why::Oversized),
            }
        }
    }

    /// Pushes what the flow owes its md, in order: OPEN, complete messages, a last partial line
    /// at EOF, EOF; or, for a Closing flow, CLOSE (then frees the slot).
    fn pump(&mut self, slot: u32) -> Pump {
        let Self { flows, mds, pool, listeners, c, max_msg, credit, now, .. } = self;
        let id = flows.id(slot);
        let f = flows.get_mut(slot);
        let Some(m) = mds.get_mut(f.md as usize) else { return Pump::MdGone };
        let Some(tx) = m.side.as_mut().map(|s| &mut s.tx) else { return Pump::MdGone };
        if f.state == State::Closing {
            return match tx.try_push(f.close_id, Kind::Close, 0, &[]) {
                Err(PushError::Full) => Pump::Blocked,
                r => {
                    if r.is_ok() {
                        m.pushed = true;
                    }
                    flows.release(slot);
                    Pump::Done
                }
            };
        }
        let lst = &listeners[f.listener as usize];
        if f.open_pending {
            let info = OpenInfo { credit: *credit, peer: f.peer, service: &lst.service };
            let mut b = [0u8; 32 + frame::MAX_SERVICE_NAME];
            let Ok(len) = info.encode(&mut b) else { return Pump::MdGone };
            match tx.try_push(id, Kind::Open, 0, &b[..len]) {
                Ok(()) => {
                    m.pushed = true;
                    f.open_pending = false;
                }
                Err(PushError::Full) => return Pump::Blocked,
                Err(_) => return Pump::MdGone,
            }
        }
        if let Some(buf) = f.input.as_mut() {
            loop {
                let next = framing::next_message(lst.framing, buf.filled(), buf.scanned, *max_msg);
                let (start, end, consumed) = match next {
                    Next::Message { start, end, consumed } => (start, end, consumed),
                    Next::Incomplete { scanned } => {
                        buf.scanned = scanned;
                        if f.eof_seen && !buf.is_empty() {
                            if lst.framing == Framing::Len32 {
                                // A truncated message at EOF is a framing error; drop it.
                                c.framing_errors += 1;
                                buf.clear();
                                break;
                            }
                            // A last line without `\n`: a message all the same.
                            let len = buf.len();
                            (0, len, len)
                        } else {
                            break;
                        }
                    }
                    Next::TooLong => return Pump::TooLong,
                };
                match tx.try_push(id, Kind::Data, 0, &buf.filled()[start..end]) {
                    Ok(()) => {
                        c.messages_in += 1;
                        m.pushed = true;
                        buf.consume(consumed);
                        if buf.is_empty() {
                            break;
                        }
                    }
                    Err(PushError::Full) => return Pump::Blocked,
                    Err(PushError::TooLarge { .. }) => return Pump::TooLong,
                    Err(PushError::Corrupt) => {
                        m.lost = true;
                        return Pump::MdGone;
                    }
                }
            }
            if buf.is_empty() {
                if let Some(b) = f.input.take() {
                    pool.put(b);
                }
            } else {
                // A message left the front: the incomplete one behind it starts now.
                f.since = *now;
            }
        }
        if f.eof_pending {
            match tx.try_push(id, Kind::Eof, 0, &[]) {
                Ok(()) => {
                    m.pushed = true;
                    f.eof_pending = false;
                }
                Err(PushError::Full) => return Pump::Blocked,
                Err(_) => return Pump::MdGone,
            }
        }
        Pump::Done
    }

    fn pump_or_block(&mut self, slot: u32) {
        match self.pump(slot) {
            Pump::Done => {}
            Pump::Blocked => self.block(slot),
            Pump::TooLong => {
                let framing = self.listeners[self.flows.get(slot).listener as usize].framing;
                self.oversized(slot, framing);
            }
            Pump::MdGone => self.close_flow(slot, Why::MdGone),
        }
    }

    /// Queues the flow on its md's blocked list (stops reading it).
    fn block(&mut self, slot: u32) {
        let f = self.flows.get_mut(slot);
        if f.blocked {
            return;
        }
        f.blocked = true;
        let generation = f.generation;
        if let Some(m) = self.mds.get_mut(f.md as usize) {
            m.blocked.push_back((slot, generation));
        }
        self.c.backpressure_pauses += 1;
        self.update_interest(slot);
    }

    fn retry_blocked(&mut self) {
        for i in 0..self.mds.len() {
            while let Some(&(slot, generation)) = self.mds[i].blocked.front() {
                let f = self.flows.get(slot);
                if f.generation != generation || !f.blocked {
                    self.mds[i].blocked.pop_front();
                    continue;
                }
                let closing = f.state == State::Closing;
                match self.pump(slot) {
                    Pump::Blocked => break,
                    r => {
                        self.mds[i].blocked.pop_front();
                        if closing {
                            // pump freed the slot, unless the md is gone (then free it here).
                            if self.flows.get(slot).state == State::Closing {
                                self.flows.release(slot);
                            }
                            continue;
                        }
                        self.flows.get_mut(slot).blocked = false;
                        match r {
                            Pump::TooLong => {
                                let framing =
                                    self.listeners[self.flows.get(slot).listener as usize].framing;
                                self.oversized(slot, framing);
                            }
                            Pump::MdGone => self.close_flow(slot, Why::MdGone),
                            _ => {
                                if self.after_input(slot) {
                                    self.update_interest(slot);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    // ---- writing --------------------------------------------------------------------------

    /// Sends `payload` to the client: writes at once if nothing is queued, queues the rest.
    /// `credited`: md paid credit for `payload` (DATA), not for BROADCAST. False if the flow
    /// closed.
    fn send_to_client(&mut self, slot: u32, payload: &[u8], credited: bool) -> bool {
        let total = payload.len();
        let uncredited = if credited { 0 } else { total };
        let f = self.flows.get_mut(slot);
        let Some(sock) = f.sock.as_ref() else { return false };
        let mut sock: &TcpStream = sock;
        let mut written = 0;
        if f.output_len() == 0 {
            match sock.write(payload) {
                Ok(n) => written = n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    self.close_flow(slot, Why::Error);
                    return false;
                }
            }
            if written > 0 {
                self.c.bytes_out += written as u64;
                let paid = written.saturating_sub(uncredited);
                self.add_drained(slot, paid as u64);
                self.touch(slot);
            }
        }
        if written < total {
            let f = self.flows.get_mut(slot);
            let buf = f.output.get_or_insert_with(|| self.pool.get());
            buf.extend(&payload[written..]);
            f.uncredited += (uncredited - written.min(uncredited)) as u64;
            let queued = f.output_len() as u64;
            if queued - f.uncredited.min(queued) > self.credit || f.uncredited > self.credit {
                self.close_flow(slot, Why::CreditOverrun);
                return false;
            }
            self.update_interest(slot);
        }
        true
    }

    fn on_writable(&mut self, slot: u32) {
        let mut flushed = 0u64;
        let mut failed = false;
        {
            let f = self.flows.get_mut(slot);
            let (Some(sock), Some(buf)) = (f.sock.as_ref(), f.output.as_mut()) else { return };
            let mut sock: &TcpStream = sock;
            while !buf.is_empty() {
                match sock.write(buf.filled()) {
                    Ok(n) => {
                        buf.consume(n);
                        flushed += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
        }
        if flushed > 0 {
            self.c.bytes_out += flushed;
            let f = self.flows.get_mut(slot);
            let free = flushed.min(f.uncredited);
            f.uncredited -= free;
            self.add_drained(slot, flushed - free);
            self.touch(slot);
        }
        if failed {
            self.close_flow(slot, Why::Error);
            return;
        }
        let f = self.flows.get_mut(slot);
        if f.output.as_ref().is_some_and(|b| b.is_empty()) {
            if let Some(b) = f.output.take() {
                self.pool.put(b);
            }
            f.uncredited = 0;
            if f.close_after_flush {
                if f.error_close {
                    self.linger(slot);
                } else {
                    let why = if f.peer_eof { Why::Peer } else { Why::ByMd };
                    self.close_flow(slot, why);
                }
                return;
            }
        }
        self.update_interest(slot);
    }

    fn add_drained(&mut self, slot: u32, n: u64) {
        if n == 0 {
            return;
        }
        let f = self.flows.get_mut(slot);
        f.drained += n;
        if !f.in_drained_list {
            f.in_drained_list = true;
            self.drained_list.push(slot);
            if self.drained_force_at.is_none() {
                self.drained_force_at = Some(self.now + SHORT_TICK);
            }
        }
    }

    /// Pushes DRAINED for flows that flushed output. Sent at once when a quarter of the credit is
    /// waiting or md gets other frames this iteration anyway; otherwise deferred up to
    /// [`SHORT_TICK`] (`force`), so a PONG's DRAINED rides along with the next PING instead of
    /// waking md on its own.
    fn flush_drained(&mut self, force: bool) {
        let quarter = (self.credit / 4).max(1);
        let mut k = 0;
        while k < self.drained_list.len() {
            let slot = self.drained_list[k];
            let id = self.flows.id(slot);
            let f = self.flows.get_mut(slot);
            if f.state != State::Open || f.drained == 0 {
                f.in_drained_list = false;
                f.drained = 0;
                self.drained_list.swap_remove(k);
                continue;
            }
            let Some(m) = self.mds.get_mut(f.md as usize) else {
                k += 1;
                continue;
            };
            if !(force || f.drained >= quarter || m.pushed) {
                k += 1;
                continue;
            }
            let Some(tx) = m.side.as_mut().map(|s| &mut s.tx) else {
                k += 1;
                continue;
            };
            match tx.try_push(id, Kind::Drained, 0, &frame::encode_drained(f.drained)) {
                Ok(()) => {
                    m.pushed = true;
                    f.drained = 0;
                    f.in_drained_list = false;
                    self.c.drained_frames += 1;
                    self.drained_list.swap_remove(k);
                }
                Err(_) => k += 1,
            }
        }
        self.drained_force_at = if self.drained_list.is_empty() {
            None
        } else if force {
            Some(self.now + SHORT_TICK)
        } else {
            self.drained_force_at
        };
    }

    fn flush_tx(&mut self) {
        let mut now_ns = 0;
        for (i, m) in self.mds.iter_mut().enumerate() {
            if std::mem::take(&mut m.pushed) {
                if let Some(tx) = m.tx() {
                    tx.flush();
                    // `pushed` means this flush published frames (flush() only says whether it
                    // rang): stamp it for md's queue-wait histogram. One clock read per batch.
                    if let Some(ss) = self.stats.as_mut().and_then(|st| st.slot(i as u32)) {
                        if now_ns == 0 {
                            now_ns = monotonic_ns();
                        }
                        ss.inprod.stamp_publish(now_ns);
                    }
                }
                self.spin_wanted = true;
            }
        }
    }

    /// Mirrors the counters, the heartbeat (this iteration's clock) and the queue halves of live
    /// md slots into the stats segment. Relaxed stores only: no syscall, no allocation.
    fn publish_stats(&mut self) {
        let Some(st) = self.stats.as_mut() else { return };
        st.mirror(&self.c, self.now_ns);
        for (i, m) in self.mds.iter_mut().enumerate() {
            let fresh = std::mem::take(&mut m.stats_fresh);
            let (Some(side), true) = (m.side.as_ref(), fresh || m.live.is_some()) else { continue };
            if let Some(ss) = st.slot(i as u32) {
                publish_halves(ss, side);
            }
        }
    }

    // ---- md frames ------------------------------------------------------------------------

    fn poll_mds(&mut self) {
        for i in 0..self.mds.len() {
            // Swap the consumer out (for a placeholder) so frames can be handled in place while
            // the rest of the server, this md's producer included, stays usable.
            let Some(side) = self.mds[i].side.as_mut() else { continue };
            if !side.rx.has_data() {
                continue;
            }
            // A batch begins: one queue-wait sample (md's latest publish -> our wake-up).
            if let Some(ss) = self.stats.as_mut().and_then(|st| st.slot(i as u32)) {
                ss.outcons.note_pickup(self.now_ns);
            }
            let Some(spare) = self.spare_rx.take() else { continue };
            let mut rx = std::mem::replace(&mut side.rx, spare);
            let mut corrupt = None;
            for _ in 0..FRAMES_PER_RING {
                match rx.peek() {
                    Ok(Some(fr)) => self.on_md_frame(i as u32, fr),
                    Ok(None) => break,
                    Err(e) => {
                        corrupt = Some(e);
                        break;
                    }
                }
                rx.release();
            }
            rx.publish();
            if let Some(side) = self.mds[i].side.as_mut() {
                self.spare_rx = Some(std::mem::replace(&mut side.rx, rx));
            }
            if let Some(e) = corrupt {
                self.md_died(i as u32, &format!("its ring is corrupt ({e})"));
            } else if std::mem::take(&mut self.mds[i].lost) {
                self.md_died(i as u32, "its queue failed");
            }
        }
    }

    /// The open flow `id` names, if md `i` owns it; counts a stale frame otherwise.
    fn md_flow(&mut self, i: u32, id: FlowId) -> Option<u32> {
        match self.flows.lookup(id, State::Open) {
            Some(s) if self.flows.get(s).md == i && !self.flows.get(s).discard => Some(s),
            _ => {
                self.c.stale_frames += 1;
                None
            }
        }
    }

    fn on_md_frame(&mut self, i: u32, fr: Frame<'_>) {
        match fr.kind {
            Kind::Data => {
                self.c.messages_out += 1;
                let Some(slot) = self.md_flow(i, fr.flowid) else { return };
                // md's output is a byte stream for every framing: a len32 service writes its own
                // length prefixes, as it reads them (io_conn passes them through).
                self.send_to_client(slot, fr.payload, true);
            }
            Kind::Close => {
                let Some(slot) = self.md_flow(i, fr.flowid) else { return };
                let f = self.flows.get_mut(slot);
                f.close_after_flush = true;
                f.md_closed = true;
                if f.output_len() == 0 {
                    let why = if f.peer_eof { Why::Peer } else { Why::ByMd };
                    self.close_flow(slot, why);
                } else {
                    self.update_interest(slot);
                }
            }
            Kind::Pause | Kind::Resume => {
                if fr.kind == Kind::Pause {
                    self.c.md_pauses += 1;
                }
                let Some(slot) = self.md_flow(i, fr.flowid) else { return };
                self.flows.get_mut(slot).md_paused = fr.kind == Kind::Pause;
                self.update_interest(slot);
            }
            Kind::Broadcast => match frame::decode_broadcast(fr.payload) {
                Ok((service, data)) => {
                    self.c.broadcasts += 1;
                    self.broadcast(service, data);
                }
                Err(_) => self.c.bad_frames += 1,
            },
            Kind::Hello => match Hello::decode(fr.payload) {
                Ok(h) if h.instance == i => self.on_hello(i, h),
                _ => {
                    self.c.bad_frames += 1;
                    log::warn!("md instance {i} sent a bad HELLO; resetting its queue pair");
                    self.mds[i as usize].lost = true;
                }
            },
            _ => self.c.bad_frames += 1,
        }
    }

    fn broadcast(&mut self, service: &str, data: &[u8]) {
        // `send_to_client` moves each flow it writes to to the back of the Idle list (`touch`),
        // behind the flows not visited yet: visit exactly as many flows as the list held at the
        // start, or a flow would get the message twice (and the walk could go round and round).
        let mut left = self.flows.list_len(ListId::Idle);
        let mut cur = self.flows.front(ListId::Idle);
        while let (Some(slot), true) = (cur, left > 0) {
            left -= 1;
            cur = self.flows.next(ListId::Idle, slot);
            let f = self.flows.get(slot);
            let l = &self.listeners[f.listener as usize];
            if f.state != State::Open || l.service != service || f.close_after_flush || f.discard {
                continue;
            }
            self.send_to_client(slot, data, false);
        }
    }

    fn on_hello(&mut self, i: u32, h: Hello) {
        if let Some((old, fd)) = self.mds[i as usize].live.take() {
            let _ = self.epoll.delete(&fd);
            log::warn!(
                "md instance {i} attached again (pid {} -> {}); closing its old flows",
                old.pid,
                h.pid
            );
            self.close_md_flows(i);
        }
        let proc_id = shmq::sys::ProcId { pid: h.pid, start_time: h.start_time };
        match proc_id.pidfd() {
            Ok(fd) => {
                if let Err(e) = self
                    .epoll
                    .add(&fd, EpollEvent::new(EpollFlags::EPOLLIN, token(K_MDPID, u64::from(i))))
                {
                    log::error!("watching md instance {i}: {e}");
                    self.mds[i as usize].lost = true;
                    return;
                }
                self.mds[i as usize].live = Some((proc_id, fd));
                self.c.md_hellos += 1;
                log::info!("md instance {i} live (pid {})", h.pid);
                self.assign_unassigned();
            }
            Err(e) => {
                log::warn!("md instance {i} said HELLO as pid {} but is gone ({e})", h.pid);
                self.mds[i as usize].lost = true;
            }
        }
    }

    fn assign_unassigned(&mut self) {
        while let Some((slot, generation)) = self.unassigned.pop_front() {
            let f = self.flows.get(slot);
            if f.generation != generation || f.state != State::Unassigned {
                continue;
            }
            let Some(i) = self.choose_md() else {
                self.unassigned.push_front((slot, generation));
                return;
            };
            self.flows.get_mut(slot).since = self.now;
            self.bind(slot, i);
        }
    }

    /// md instance `i` is gone: close its flows, reset its pair (new generation).
    fn md_died(&mut self, i: u32, why: &str) {
        let Some(m) = self.mds.get_mut(i as usize) else { return };
        let who = m.live.as_ref().map(|(p, _)| *p);
        if let Some((_, fd)) = m.live.take() {
            let _ = self.epoll.delete(&fd);
        }
        self.c.md_deaths += 1;
        let pid = who.map(|w| w.pid);
        if let (Some(st), Some(who)) = (&self.stats, who) {
            // Only for a process that is really gone (its pidfd said so): then io_conn is the
            // block's only writer. An md dropped for a corrupt ring may still run and write its
            // block; it is left alone (its state says what it thinks).
            if who.liveness() != shmq::sys::Liveness::Alive {
                st.mark_md_dead(i, who);
            }
        }
        let n = self.mds[i as usize].flows;
        log::error!(
            "md instance {i} (pid {}) lost: {why}; closing its {n} connections and resetting its queue pair",
            pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
        );
        self.close_md_flows(i);
        self.reset_pair(i);
    }

    fn close_md_flows(&mut self, i: u32) {
        let mut cur = self.flows.front(ListId::Idle);
        while let Some(slot) = cur {
            cur = self.flows.next(ListId::Idle, slot);
            let f = self.flows.get(slot);
            if f.state == State::Open && f.md == i {
                self.close_flow(slot, Why::MdGone);
            }
        }
        let m = &mut self.mds[i as usize];
        while let Some((slot, generation)) = m.blocked.pop_front() {
            let f = self.flows.get(slot);
            if f.generation == generation && f.state == State::Closing {
                self.flows.release(slot);
            }
        }
        m.flows = 0;
    }

    fn reset_pair(&mut self, i: u32) {
        let m = &mut self.mds[i as usize];
        let Some(side) = m.side.take() else { return };
        let _ = self.epoll.delete(&side.rx_bell);
        match self.pairs.reset(side) {
            Ok(side) => {
                let generation = side.generation;
                if let Some(ss) = self.stats.as_mut().and_then(|st| st.slot(i)) {
                    // A new generation: our halves start from zero with the rings' counters.
                    ss.inprod.reset();
                    ss.outcons.reset();
                }
                if let Err(e) = self.install(i, side) {
                    log::error!("md instance {i}: {e:#}");
                } else {
                    log::info!("md instance {i}: queue pair reset (generation {generation})");
                }
            }
            Err(e) => log::error!(
                "md instance {i}: resetting its queue pair failed: {e}; instance disabled"
            ),
        }
    }

    // ---- flow bookkeeping -----------------------------------------------------------------

    #[inline]
    fn touch(&mut self, slot: u32) {
        self.flows.get_mut(slot).last_active = self.now;
        self.flows.move_to_back(ListId::Idle, slot);
    }

    fn update_interest(&mut self, slot: u32) {
        let generation = self.flows.get(slot).generation;
        let f = self.flows.get_mut(slot);
        let Some(sock) = f.sock.as_ref() else { return };
        let mut want = EpollFlags::empty();
        if f.discard
            || (f.state == State::Open
                && !f.eof_seen
                && !f.md_paused
                && !f.blocked
                && !f.close_after_flush)
        {
            want |= EpollFlags::EPOLLIN;
        }
        if f.output_len() > 0 {
            want |= EpollFlags::EPOLLOUT;
        }
        if want != f.interest {
            let mut ev = EpollEvent::new(want, flow_token(slot, generation));
            match self.epoll.modify(sock, &mut ev) {
                Ok(()) => f.interest = want,
                Err(e) => log::warn!("epoll_ctl(MOD) on a client socket: {e}"),
            }
        }
    }

    fn close_flow(&mut self, slot: u32, why: Why) {
        let old_id = self.flows.id(slot);
        let f = self.flows.get_mut(slot);
        let state = f.state;
        if !matches!(state, State::Open | State::Unassigned) {
            return;
        }
        let c = &mut self.c;
        match why {
            Why::Peer => c.closed_by_peer += 1,
            Why::Idle => c.closed_idle += 1,
            Why::Deadline => c.closed_deadline += 1,
            Why::Oversized => c.closed_oversized += 1,
            Why::CreditOverrun => c.closed_credit_overrun += 1,
            Why::Error => c.closed_error += 1,
            Why::ByMd => c.closed_by_md += 1,
            Why::MdGone => c.closed_md_gone += 1,
            Why::Shutdown => c.closed_shutdown += 1,
        }
        c.connections_current -= 1;
        if let Some(sock) = f.sock.take() {
            let _ = self.epoll.delete(&sock);
            drop(sock);
        }
        if let Some(b) = f.input.take() {
            self.pool.put(b);
        }
        if let Some(b) = f.output.take() {
            self.pool.put(b);
        }
        let md = f.md;
        let md_closed = f.md_closed;
        self.flows.remove(ListId::Idle, slot);
        self.flows.remove(ListId::Deadline, slot);
        // A new generation now: frames md still sends for `old_id` are stale from here on.
        self.flows.bump(slot);
        // md forgot a flow it closed itself: a CLOSE back would only cost it a frame (and maybe a
        // wake-up) to count as an unknown flow.
        let tell_md = state == State::Open
            && !md_closed
            && why != Why::MdGone
            && self.mds.get(md as usize).is_some_and(|m| m.side.is_some());
        if let Some(m) = self.mds.get_mut(md as usize) {
            m.flows = m.flows.saturating_sub(1);
        }
        if !tell_md {
            self.flows.release(slot);
            return;
        }
        let f = self.flows.get_mut(slot);
        f.state = State::Closing;
        f.close_id = old_id;
        f.blocked = false;
        f.drained = 0;
        match self.pump(slot) {
            Pump::Blocked => {
                let f = self.flows.get_mut(slot);
                f.blocked = true;
                let generation = f.generation;
                self.mds[md as usize].blocked.push_back((slot, generation));
            }
            _ => {
                if self.flows.get(slot).state != State::Free {
                    self.flows.release(slot);
                }
            }
        }
    }

    // ---- shutdown -------------------------------------------------------------------------

    fn begin_drain(&mut self, why: &str) {
        if self.drain_until.is_some() {
            log::warn!("{why} again: exiting now");
            while let Some(s) = self.flows.front(ListId::Idle) {
                self.close_flow(s, Why::Shutdown);
            }
            self.exit = true;
            return;
        }
        let deadline = self.cfg.io_conn.drain_deadline;
        // systemd shows the unit as "deactivating" from here on (a no-op outside systemd).
        if let Err(e) = rt::notify::notify(&format!(
            "STOPPING=1\nSTATUS={why}: draining {} connections",
            self.flows.in_use()
        )) {
            log::warn!("systemd notification failed: {e}");
        }
        log::info!(
            "{why}: no longer accepting; draining {} connections (deadline {deadline:?})",
            self.flows.in_use()
        );
        for l in &mut self.listeners {
            if let Some(s) = l.sock.take() {
                if l.in_epoll {
                    let _ = self.epoll.delete(&s);
                }
            }
            l.in_epoll = false;
        }
        self.accept_paused_until = None;
        self.drain_until = Some(self.now + deadline);
        let mut cur = self.flows.front(ListId::Idle);
        while let Some(slot) = cur {
            cur = self.flows.next(ListId::Idle, slot);
            let f = self.flows.get_mut(slot);
            match f.state {
                State::Unassigned => self.close_flow(slot, Why::Shutdown),
                State::Open if !f.eof_seen => {
                    // Like a client half-close: md answers what it has, then sends CLOSE.
                    f.eof_seen = true;
                    f.eof_pending = true;
                    self.flows.remove(ListId::Deadline, slot);
                    if self.after_input(slot) {
                        self.update_interest(slot);
                    }
                }
                _ => {}
            }
        }
    }

    /// Stops children and removes what this process created. Idempotent; also run on drop.
    fn cleanup(&mut self) {
        if std::mem::replace(&mut self.cleaned, true) {
            return;
        }
        if let Some(ch) = self.children.as_mut() {
            log::info!("stopping {} md children", ch.count());
            ch.stop_all();
        }
        // Final values for anyone who still maps the segment (a viewstats --watch), then remove
        // it with the pairs.
        if let Some(st) = self.stats.as_mut() {
            st.mirror(&self.c, monotonic_ns());
            for (i, m) in self.mds.iter().enumerate() {
                if let (Some(side), Some(ss)) = (m.side.as_ref(), st.slot(i as u32)) {
                    publish_halves(ss, side);
                }
            }
            st.remove();
        }
        for m in &mut self.mds {
            m.side = None;
            m.live = None;
        }
        for &i in &self.created {
            if let Err(e) = self.pairs.remove(i) {
                log::warn!("removing the queue pair of md instance {i}: {e}");
            }
        }
        log::info!("io_conn stopped; counters: {:?}", self.c);
    }
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Mirrors the ring counters of io_conn's ends of one pair into its stats halves.
#[inline]
fn publish_halves(ss: &crate::stats::SlotStats, side: &IoSide) {
    use shmq::sync::Ordering;
    let h = side.tx.header();
    // The real backlog, not `tx.depth()` (which uses our cached head and so keeps showing frames
    // md consumed long ago). Relaxed: a gauge; any recent value of either position will do (tail
    // is our own store, head md's), and nothing is read through them.
    let depth = h.tail.0.load(Ordering::Relaxed).saturating_sub(h.head.0.load(Ordering::Relaxed));
    ss.inprod.publish_from(&h.producer, depth, side.tx.generation());
    ss.outcons.publish_from(&side.rx.header().consumer, side.rx.generation());
}

/// A consumer over a tiny heap ring: stands in for an md's consumer while that one is in use.
fn placeholder_consumer() -> anyhow::Result<Consumer> {
    use shmq::layout::Direction;
    use shmq::ring::HeapMemory;
    let mem = std::sync::Arc::new(HeapMemory::new_ring(frame::MIN_CAPACITY, 64, Direction::ToIo));
    Consumer::attach(mem, 0).map_err(|e| anyhow::anyhow!("placeholder ring: {e}"))
}

/// A fresh epoch: wall-clock nanoseconds xor our pid, never 0.
fn new_epoch() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 48)).max(1)
}
