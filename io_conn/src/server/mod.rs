//! The event loop: listeners, client sockets, md rings and doorbells, pidfds, timer, signals.
//!
//! One thread, one epoll instance, level-triggered. See docs/ARCHITECTURE.md "io_conn" for the
//! whole story and a walk of one request through these modules; the comments here say why each
//! step is where it is.
//!
//! # The state, split along its borrow lines
//!
//! | part | type | module | holds |
//! |---|---|---|---|
//! | loop context | [`Cx`] | here | epoll, the counters, this iteration's clock |
//! | client side | [`Clients`] | `clients` (+ `accept`, `input`, `output`) | listeners, the flow table, the buffer pool, the scratch buffer, the DRAINED list |
//! | md link, outbound | [`Links`] | `link` | per md instance: the `in` producer, liveness, blocked flows |
//! | md link, inbound | [`Inbound`] | `link` | per md instance: the `out` consumer and its doorbell |
//! | process | [`Server`] | here, `lifecycle` | timer, signals, children, the stats segment, shutdown |
//!
//! Because the `out` consumers live apart from everything else, [`Inbound::poll`] drains each
//! ring in place ([`shmq::ring::Consumer::drain`]) and hands every frame to the client side with
//! the rest of the state (that md's producer included) still usable, the way md's runner splits
//! its `Core` from the service.
//!
//! # One loop iteration
//!
//! 1. Decide how long to sleep: 0 if any md ring has frames; while some md owes a reply
//!    (frames pushed, none answered since) or right after replies went to clients, one spin
//!    opportunity ([`rt::SpinGate`]: up to `io_conn.spin`, yielding the CPU every few µs,
//!    unless backing off after spins that found nothing or the machine has more than twice as
//!    many runnable threads as CPUs) on the md→io rings and, every few looks, the epoll set
//!    (`epoll_wait` with timeout 0: a lone client's next request comes after its own round
//!    trip; the events it fetches are the ones step 2 handles); otherwise arm each md→io
//!    ring's doorbell (drain the FIFO, set `armed`, fence, re-check) and sleep — 1 ms at most
//!    while flows are blocked on a full ring or DRAINED frames are deferred, else until an
//!    event (the timerfd covers deadlines).
//! 2. Handle every epoll event (accept, read, write, doorbells, pidfds, timer, signals).
//! 3. Drain every md→io ring (frames are handled in place, then released).
//! 4. Retry the flows blocked on a full io→md ring, in FIFO order per ring.
//! 5. Push the DRAINED frames (one per flow per iteration, deferred up to 1 ms when nothing else
//!    is going to that md, so a request/response client does not cost md an extra wake-up;
//!    under `request` dispatch only a quarter of the credit, or credit an md may be waiting for:
//!    `dispatch`, "Returning credit").
//! 6. Check the memory budget (`budget`): over `io_conn.max_buffered`, close the slowest
//!    readers.
//! 7. Flush each io→md producer once (one Release store; rings md's doorbell only if md armed it).
//! 8. Mirror the counters into the stats segment (a copy of relaxed stores, no syscall; see
//!    `crate::stats`) with a heartbeat; the timer wakes an idle loop once per [`HEARTBEAT_TICK`]
//!    so the heartbeat tells a live io_conn from a hung one. Under systemd with `WatchdogSec=`,
//!    each iteration also pings the watchdog (at most every half interval), and the timer wakes
//!    an idle loop for that too.
//!
//! # Level-triggered, and what pause/resume costs
//!
//! Interest is recomputed after each change and `EPOLL_CTL_MOD` is issued only when it differs
//! from what is registered: a backpressure pause or an md PAUSE costs one `epoll_ctl`, the resume
//! one more; arming EPOLLOUT for a partial write one, disarming it one. In exchange the loop may
//! stop reading a socket at any point (after 4 reads, on a full ring) without losing a wake-up,
//! which edge-triggered mode would only allow with a private "still readable" list.

mod accept;
mod budget;
mod clients;
mod dispatch;
mod handover;
mod input;
mod lifecycle;
mod link;
mod output;
mod proxied;
mod reload;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::Context;
use config::Config;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signalfd::SignalFd;
use rt::SpinGate;
use rt::notify::Watchdog;
use rt::timer::OneShotTimer;
use shmq::frame;
use shmq::stats::monotonic_ns;

use crate::counters::{Counters, Io};
use crate::spawn::Children;
use crate::stats::Stats;
use crate::{Options, Shutdown};

pub(crate) use clients::Clients;
pub(crate) use link::{Inbound, Links};
pub(crate) use reload::set_log_level;

/// How long a connection accepted while no md is live is held (not read) waiting for one.
pub(crate) const UNASSIGNED_HOLD: Duration = Duration::from_secs(10);
/// Longest an idle loop sleeps: the stats heartbeat advances at least this often.
pub(crate) const HEARTBEAT_TICK: Duration = Duration::from_secs(1);
/// Longest sleep while flows wait for ring space or DRAINED frames are deferred.
const SHORT_TICK: Duration = Duration::from_millis(1);

/// While spinning, io_conn looks at the epoll set (`epoll_wait`, timeout 0: client sockets,
/// doorbells, timer) once per this many looks at the md rings: ~1 µs apart, so a client's next
/// request is seen soon without making every look a system call.
const SPIN_EPOLL_EVERY: u32 = 16;

// The config's smallest `shared.max_message` is an OPEN frame: 32 bytes and a service name.
const _: () = assert!(config::MIN_MAX_MESSAGE == 32 + frame::MAX_SERVICE_NAME as u64);

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
const K_CONTROL: u64 = 9;

#[inline]
fn token(kind: u64, idx: u64) -> u64 {
    (kind << 56) | idx
}

#[inline]
fn flow_token(slot: u32, generation: u32) -> u64 {
    token(K_FLOW, (u64::from(generation & 0xff_ffff) << 32) | u64::from(slot))
}

/// What every part of the loop shares: the epoll set, the counters and this iteration's clock.
#[derive(Debug)]
pub(crate) struct Cx {
    pub(crate) epoll: Epoll,
    /// io_conn's counters (the stats segment's `io` block, mirrored as a copy each iteration).
    pub(crate) c: Counters,
    pub(crate) now: Instant,
    /// CLOCK_MONOTONIC ns read with `now` (stats: heartbeat, queue-wait pick-ups).
    pub(crate) now_ns: u64,
}

pub(crate) struct Server<'c> {
    /// The config in effect: the caller's until a reload replaces it.
    cfg: Cow<'c, Config>,
    /// Reloading: the file, the generation, the control socket (`reload`).
    reload: reload::ReloadState,
    cx: Cx,
    clients: Clients,
    links: Links,
    inbound: Inbound,
    events: Vec<EpollEvent>,
    /// Events a spin's look at the epoll set already fetched into `events`: the loop handles
    /// them instead of asking again (one `epoll_wait` per event batch found while spinning).
    peeked: usize,
    timer: OneShotTimer,
    signals: Option<SignalFd>,
    shutdown: Option<Shutdown>,
    children: Option<Children>,
    /// The stats segment (created right after the queue pairs; None only before that).
    stats: Option<Stats>,
    /// The `kv` cache segment (when a listener serves `kv`).
    kv_cache: Option<crate::kv_cache::KvCache>,
    drain_until: Option<Instant>,
    /// A handover (SIGUSR2) waits until then at most for the replies owed (`handover`).
    handover_until: Option<Instant>,
    /// The connections were handed to a successor: exit without touching them.
    handed_over: bool,
    exit: bool,
    /// Some md owes a reply: frames were pushed to md and no md frame came back since (one flag
    /// for all mds: an answer from any clears it, which errs towards sleeping). A reason to spin.
    owed: bool,
    /// md frames were handled (replies went to clients) in this iteration: the client's next
    /// request may be one round trip away. A reason to spin (polling the epoll set too).
    replied: bool,
    /// The spin gate, budget `io_conn.spin` (set here only, in [`Server::new`]).
    spin: SpinGate,
    cleaned: bool,
    /// systemd's watchdog (`WatchdogSec=`): pinged once per iteration at most every half
    /// interval; the timer wakes an idle loop for it. Disabled without `$WATCHDOG_USEC`.
    watchdog: Watchdog,
}

impl std::fmt::Debug for Server<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("flows", &self.clients.flows.in_use())
            .finish_non_exhaustive()
    }
}

impl<'c> Server<'c> {
    pub(crate) fn new(
        cfg: &'c Config,
        listeners: Vec<(TcpListener, config::Listener)>,
        mut opts: Options,
    ) -> anyhow::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create1")?;
        let timer = OneShotTimer::new().context("timerfd_create")?;
        epoll
            .add(timer.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token(K_TIMER, 0)))
            .context("epoll add timerfd")?;
        let signals = if opts.signals {
            let sfd = rt::signals::signalfd(&crate::handled_signals()).context("signalfd")?;
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
        // Freed client buffers go back to the system, so `max_buffered` bounds the RSS.
        if !rt::malloc::tune_for_buffers() {
            log::debug!("malloc tuning not available: max_buffered bounds buffers, not the RSS");
        }
        let clients = Clients::new(cfg, listeners, &epoll)?;
        // The config's validation enforces it (so `--check-config` does); kept for a `Config`
        // built by hand.
        anyhow::ensure!(
            cfg.shared.max_message >= config::MIN_MAX_MESSAGE,
            "shared.max_message must be at least {} bytes (an OPEN frame)",
            config::MIN_MAX_MESSAGE
        );

        // The pairs: created before md children start (they attach to them).
        let runtime_dir = cfg.runtime_dir();
        crate::create_private_dir(&runtime_dir)
            .with_context(|| format!("creating runtime directory {}", runtime_dir.display()))?;
        let epoch = new_epoch();
        let mut cx =
            Cx { epoll, c: Counters::default(), now: Instant::now(), now_ns: monotonic_ns() };
        let (links, inbound) = link::create_pairs(cfg, &mut cx, epoch)?;
        log::info!(
            "created {} queue pairs (epoch {epoch}) in {} ({} backend)",
            cfg.md.max_instances,
            runtime_dir.display(),
            cfg.shared.shm_backend
        );
        let mut server = Self {
            cfg: Cow::Borrowed(cfg),
            reload: reload::ReloadState {
                path: opts.config_path.take(),
                activated: opts.activated,
                ..reload::ReloadState::default()
            },
            cx,
            clients,
            links,
            inbound,
            events: vec![EpollEvent::empty(); 256],
            peeked: 0,
            timer,
            signals,
            shutdown: opts.shutdown.take(),
            children: None,
            stats: None,
            kv_cache: None,
            drain_until: None,
            handover_until: None,
            handed_over: false,
            exit: false,
            owed: false,
            replied: false,
            spin: SpinGate::new(cfg.io_conn.spin),
            cleaned: false,
            watchdog: Watchdog::from_env(),
        };
        // After the pairs: their creation refused a live predecessor, so a leftover stats segment
        // is a dead one's. Before md children: md attaches it right after its pair, and checks
        // that its epoch is the pairs' epoch.
        server.stats = Some(Stats::create(
            server.links.pairs.backend,
            &cfg.shared.name,
            cfg.md.max_instances,
            epoch,
        )?);
        server.publish_stats();
        // Before md children too: their kv service attaches it.
        server.kv_cache = crate::kv_cache::KvCache::create(cfg, server.links.pairs.backend, epoch)?;
        let adopt = std::mem::take(&mut opts.adopt);
        server.clients.adopt(&mut server.cx, adopt);
        if opts.activated {
            for l in &mut server.clients.listeners {
                l.own = false;
            }
        }
        if opts.control {
            server.open_control();
        }
        if let Some(spec) = opts.spawn.take() {
            anyhow::ensure!(
                spec.count <= cfg.md.max_instances,
                "--spawn-md {} exceeds md.max_instances = {}",
                spec.count,
                cfg.md.max_instances
            );
            server.children = Some(Children::new(spec));
            server.cx.now = Instant::now();
            server.start_due_children();
        }
        Ok(server)
    }

    /// Runs until shutdown completes. Returns the counters.
    pub(crate) fn run(&mut self) -> anyhow::Result<Counters> {
        self.cx.now = Instant::now();
        self.watchdog.tick(self.cx.now);
        self.rearm_timer();
        while !self.exit {
            let timeout = self.sleep_timeout();
            let peeked = std::mem::take(&mut self.peeked);
            // A real sleep: how long it lasted tells the spin gate whether a spin would have
            // paid (`SpinGate::note_wake`).
            let slept_from = (peeked == 0 && timeout != EpollTimeout::ZERO).then(Instant::now);
            let n = match peeked {
                0 => match self.cx.epoll.wait(&mut self.events, timeout) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => 0,
                    Err(e) => return Err(e).context("epoll_wait"),
                },
                n => n,
            };
            if n > 0 {
                self.cx.c[Io::EpollWakeups] += 1;
                self.cx.c[Io::EpollEvents] += n as u64;
            }
            self.cx.now = Instant::now();
            if let (Some(t), true) = (slept_from, n > 0) {
                self.spin.note_wake(self.cx.now.saturating_duration_since(t));
            }
            self.cx.now_ns = monotonic_ns();
            self.watchdog.tick(self.cx.now);
            for k in 0..n {
                let ev = self.events[k];
                self.dispatch(ev.data(), ev.events());
            }
            let frames = self.poll_mds();
            self.replied = frames > 0;
            self.clients.retry_blocked(&mut self.cx, &mut self.links);
            let force = self.clients.drained_due(self.cx.now);
            self.clients.flush_drained(&mut self.cx, &mut self.links, force);
            // Before the flush: the CLOSE frames of flows it closes go out with the rest.
            self.clients.enforce_budget(&mut self.cx, &mut self.links);
            if self.links.flush(self.stats.as_mut()) {
                self.owed = true;
            } else if frames > 0 {
                self.owed = false;
            }
            self.publish_stats();
            self.poll_handover();
            self.rearm_timer();
            if self.drain_until.is_some() && self.clients.flows.in_use() == 0 {
                log::info!("all connections closed");
                self.exit = true;
            }
        }
        self.cleanup();
        Ok(self.cx.c.clone())
    }

    // ---- sleeping -------------------------------------------------------------------------

    /// How long the loop's `epoll_wait` may sleep; or, when a spin's look at the epoll set found
    /// events, `peeked` says how many are in `events` already (the timeout is then unused).
    fn sleep_timeout(&mut self) -> EpollTimeout {
        self.peeked = 0;
        if self.inbound.has_data() {
            return EpollTimeout::ZERO;
        }
        if (self.owed || self.replied) && self.links.any_live() {
            let (inbound, links, epoll) = (&self.inbound, &self.links, &self.cx.epoll);
            let (events, peeked) = (&mut self.events, &mut self.peeked);
            let mut looks = 0u32;
            // A look at the epoll set fetches the events themselves: the loop handles them
            // (`peeked`) without a second epoll_wait.
            let hit = self.spin.spin(|| {
                looks = looks.wrapping_add(1);
                inbound.live_has_data(links)
                    || (looks.is_multiple_of(SPIN_EPOLL_EVERY) && {
                        *peeked = epoll.wait(events, EpollTimeout::ZERO).unwrap_or(0);
                        *peeked > 0
                    })
            });
            if hit {
                return EpollTimeout::ZERO;
            }
        }
        if !self.inbound.arm_all() {
            return EpollTimeout::ZERO;
        }
        if self.links.any_blocked() || self.clients.has_drained() {
            return EpollTimeout::from(SHORT_TICK.as_millis() as u16);
        }
        EpollTimeout::NONE
    }

    fn rearm_timer(&mut self) {
        let mut due: Option<Instant> = None;
        let mut add = |t: Instant| due = Some(due.map_or(t, |d: Instant| d.min(t)));
        self.clients.next_due(&mut add);
        if let Some(t) = self.drain_until.or(self.handover_until) {
            add(t);
        }
        if let Some(t) = self.children.as_ref().and_then(Children::next_due) {
            add(t);
        }
        if self.stats.is_some() {
            add(self.cx.now + HEARTBEAT_TICK);
        }
        if let Some(t) = self.watchdog.next_due() {
            add(t);
        }
        let Some(due) = due else { return };
        if let Err(e) = self.timer.arm(due, self.cx.now) {
            log::error!("timerfd_settime: {e}");
        }
    }

    // ---- events ---------------------------------------------------------------------------

    fn dispatch(&mut self, data: u64, ev: EpollFlags) {
        let idx = data & ((1 << 56) - 1);
        match data >> 56 {
            K_FLOW => self.clients.on_flow_event(&mut self.cx, &mut self.links, idx, ev),
            K_LISTENER => self.clients.accept_loop(&mut self.cx, &mut self.links, idx as usize),
            K_BELL => self.inbound.on_doorbell(idx as usize),
            K_MDPID => self.md_died(idx as u32, "its process exited"),
            K_CHILD => self.on_child_exit(idx as u32),
            K_TIMER => {
                self.timer.fired();
                self.on_timer();
            }
            K_SIGNAL => self.on_signal(),
            K_CONTROL => self.on_control(),
            K_SHUTDOWN => {
                if let Some(s) = &self.shutdown {
                    s.read();
                }
                self.begin_drain("shutdown requested");
            }
            _ => {}
        }
    }

    /// Drains every md→io ring; returns how many frames were handled. A ring found corrupt, or
    /// an md found lost while its frames were handled, loses its md afterwards.
    fn poll_mds(&mut self) -> u64 {
        let mut frames = 0;
        for i in 0..self.inbound.len() {
            let stats = self.stats.as_mut().and_then(|st| st.slot(i as u32));
            let r = self.inbound.poll(i, &mut self.cx, &mut self.clients, &mut self.links, stats);
            frames += r.frames;
            if let Some(e) = r.corrupt {
                self.md_died(i as u32, &format!("its ring is corrupt ({e})"));
            } else if self.links.take_lost(i) {
                self.md_died(i as u32, "its queue failed");
            }
        }
        frames
    }

    /// Mirrors the counters, the heartbeat (this iteration's clock) and the queue halves of live
    /// md slots into the stats segment. Relaxed stores only: no syscall, no allocation.
    fn publish_stats(&mut self) {
        let Some(st) = self.stats.as_mut() else { return };
        self.cx.c[Io::HeartbeatNs] = self.cx.now_ns;
        st.mirror(&self.cx.c);
        link::publish_halves(st, &mut self.links, &self.inbound, false);
    }
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A fresh epoch: wall-clock nanoseconds xor our pid, never 0.
fn new_epoch() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 48)).max(1)
}
