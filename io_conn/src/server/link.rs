//! The md-link side of the loop: one queue pair per md instance, split in two halves.
//!
//! * [`Links`] (outbound): per instance, the `in` producer ([`IoTx`]), the md's identity and
//!   pidfd once it said HELLO, how many flows are bound to it, and the flows waiting for room
//!   in its ring. The client side pushes through it.
//! * [`Inbound`]: per instance, the `out` consumer ([`IoRx`]) and its doorbell. [`Inbound::poll`]
//!   drains a ring in place and hands each frame to the client side (`Clients::on_md_frame`)
//!   together with [`Links`]: the two halves are separate fields of the server, so no consumer
//!   ever has to be swapped out to please the borrow checker.
//!
//! Liveness: an md is live from its HELLO (its pidfd is in epoll) until its pidfd fires, its
//! ring turns out corrupt, or it says HELLO again; then the server closes its flows and resets
//! the pair ([`Links::reset`]: new generation, fresh halves).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use anyhow::Context;
use config::Config;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use shmq::frame::{FlowId, Hello, Kind};
use shmq::pair::{IoRx, IoSide, IoTx, PairConfig, PairError, PendingReset};
use shmq::ring::{Consumer, Producer, PushError, RingError};
use shmq::stats::{QueueProducer, monotonic_ns};
use shmq::sys::ProcId;

use super::{Clients, Cx, K_BELL, K_MDPID, token};
use crate::counters::Io;
use crate::stats::{SlotStats, Stats};

/// Cap of an md's fast-failure score.
const MAX_FAILS: u32 = 16;

/// What an md's fast-failure score weighs in routing, in requests in flight (or flows):
/// `2^fails − 1`, so tries of an md that keeps failing get exponentially rarer (after k failures
/// it is tried again only once the others carry `2^k − 1` more), yet one that recovers (answers)
/// sheds the score one answer at a time.
#[inline]
fn fail_weight(fails: u32) -> u32 {
    (1u32 << fails.min(MAX_FAILS)) - 1
}

/// Frames handled per md ring per iteration.
const FRAMES_PER_RING: usize = 4096;

/// The outbound half of one md instance's link.
#[derive(Debug)]
pub(crate) struct Md {
    /// The `in` producer (None once a reset failed: instance disabled).
    pub(super) tx: Option<IoTx>,
    /// Identity and pidfd of the md that said HELLO.
    live: Option<(ProcId, OwnedFd)>,
    /// Flows bound to it (`flow` dispatch).
    flows: u32,
    /// Requests dispatched to it whose reply has not ended (`request` dispatch): its load.
    inflight: u32,
    /// Requests dispatched to it since its pair was (re)created (`request` dispatch).
    dispatched: u64,
    /// Recent fast failures (it closed a connection at a request, or a flow before any reply,
    /// instead of answering): up one per failure, down one per answer, at most
    /// [`MAX_FAILS`]. Routing adds [`fail_weight`] to its load, so an md that fails everything
    /// (and so always looks idle) stops attracting every request.
    fails: u32,
    /// Flows with frames that did not fit `tx`, as (slot, generation), oldest first.
    blocked: VecDeque<(u32, u32)>,
    /// Frames pushed since the last flush (`Producer::flush` says whether it rang, not whether
    /// it published; this says the latter, for the stats publish stamp).
    pub(super) pushed: bool,
    /// Lost (corrupt ring, bad HELLO): reset after the current batch.
    pub(super) lost: bool,
    /// It said LEAVE (SIGTERM): no new flow or request goes to it; what it has, it finishes.
    leaving: bool,
    /// Our LEAVE acknowledgement is still to be pushed (ring full).
    leave_ack: bool,
    /// The pair is new (created or reset): mirror its stats halves once even without a live md,
    /// so viewstats shows the new generation.
    stats_fresh: bool,
    /// A reset that failed (`tx` is None meanwhile): retried on every timer tick
    /// ([`Links::retry_resets`]) until it works, so an instance is never disabled for good.
    pending_reset: Option<PendingReset>,
    /// The last reset of this instance failed (for logging once per streak).
    reset_failing: bool,
}

impl Md {
    /// A fresh outbound half: no md live yet, nothing bound or in flight. A new pair's stats
    /// halves are mirrored once even before an md attaches (`stats_fresh`).
    fn new(tx: Option<IoTx>) -> Self {
        Self {
            stats_fresh: tx.is_some(),
            tx,
            live: None,
            flows: 0,
            inflight: 0,
            dispatched: 0,
            fails: 0,
            blocked: VecDeque::new(),
            pushed: false,
            lost: false,
            leaving: false,
            leave_ack: false,
            pending_reset: None,
            reset_failing: false,
        }
    }
}

/// Every md instance's outbound half, and the pairs' configuration.
#[derive(Debug)]
pub(crate) struct Links {
    mds: Vec<Md>,
    /// Where the next tie among equally loaded md instances is broken (round robin).
    rr: u32,
    pub(super) pairs: PairConfig,
    /// Instances whose pair this process created (removed at exit).
    created: Vec<u32>,
}

/// The inbound half of one md instance's link.
#[derive(Debug)]
struct Rx {
    half: IoRx,
    /// Our `armed` flag on its out ring is set (cleared only by its doorbell waking us).
    armed: bool,
}

/// Every md instance's inbound half.
#[derive(Debug)]
pub(crate) struct Inbound {
    rx: Vec<Option<Rx>>,
}

/// What one [`Inbound::poll`] did.
#[derive(Debug, Default)]
pub(super) struct Polled {
    /// Frames handled.
    pub(super) frames: u64,
    /// The ring is corrupt: its md is to be lost.
    pub(super) corrupt: Option<RingError>,
}

/// Creates every instance's pair (refusing a live predecessor's, replacing a dead one's) and
/// registers the doorbells.
pub(super) fn create_pairs(
    cfg: &Config,
    cx: &mut Cx,
    epoch: u64,
) -> anyhow::Result<(Links, Inbound)> {
    let mut links =
        Links { mds: Vec::new(), rr: 0, pairs: rt::pair_config(cfg), created: Vec::new() };
    let mut inbound = Inbound { rx: Vec::new() };
    for i in 0..cfg.md.max_instances {
        let side = links.pairs.create(i, epoch).map_err(|e| match e {
            PairError::InUse { what, owner } => anyhow::anyhow!(
                "{what} belongs to a running process (pid {owner}): is another io_conn with \
                 shared.name = {:?} running?",
                cfg.shared.name
            ),
            e => anyhow::anyhow!("creating the queue pair of md instance {i}: {e}"),
        })?;
        links.created.push(i);
        install(cx, &mut links, &mut inbound, i, side)?;
    }
    Ok((links, inbound))
}

/// Installs a fresh (or reset) pair for instance `i`: registers its doorbell, replaces both
/// halves (keeping the blocked queue's allocation: no growth again after a reset).
fn install(
    cx: &mut Cx,
    links: &mut Links,
    inbound: &mut Inbound,
    i: u32,
    side: IoSide,
) -> anyhow::Result<()> {
    cx.epoll
        .add(&side.rx_bell, EpollEvent::new(EpollFlags::EPOLLIN, token(K_BELL, u64::from(i))))
        .context("epoll add doorbell")?;
    let (tx, rx) = side.split();
    let idx = i as usize;
    let md = Md::new(Some(tx));
    let rx = Some(Rx { half: rx, armed: false });
    if idx < links.mds.len() {
        let old = std::mem::replace(&mut links.mds[idx], md);
        let mut q = old.blocked;
        q.clear();
        links.mds[idx].blocked = q;
        inbound.rx[idx] = rx;
    } else {
        links.mds.push(md);
        inbound.rx.push(rx);
    }
    Ok(())
}

impl Links {
    /// Instance `i`, if it exists.
    #[inline]
    pub(super) fn get_mut(&mut self, i: u32) -> Option<&mut Md> {
        self.mds.get_mut(i as usize)
    }

    /// Instance `i`'s producer and its `pushed` flag, if it has a ring.
    #[inline]
    pub(super) fn tx(&mut self, i: u32) -> Option<(&mut Producer, &mut bool)> {
        let m = self.mds.get_mut(i as usize)?;
        let tx = m.tx.as_mut()?;
        Some((&mut tx.tx, &mut m.pushed))
    }

    /// Instance `i` has a usable ring (live or not).
    #[inline]
    pub(super) fn has_ring(&self, i: u32) -> bool {
        self.mds.get(i as usize).is_some_and(|m| m.tx.is_some())
    }

    fn is_live(m: &Md) -> bool {
        m.live.is_some() && m.tx.is_some()
    }

    /// Live and not leaving: new flows and requests may go to it.
    fn routable(m: &Md) -> bool {
        Self::is_live(m) && !m.leaving
    }

    /// md instance `i` said LEAVE: route nothing new to it.
    pub(super) fn leave(&mut self, i: u32) {
        if let Some(m) = self.mds.get_mut(i as usize) {
            if !std::mem::replace(&mut m.leaving, true) {
                // Acknowledged in `flush`, at the end of this iteration: whatever was routed
                // there before is ahead of the acknowledgement in its ring.
                m.leave_ack = true;
                log::info!(
                    "md instance {i} is leaving: no new connections or requests go to it \
                     ({} connections, {} requests in flight)",
                    m.flows,
                    m.inflight
                );
            }
        }
    }

    /// Some md is live.
    pub(super) fn any_live(&self) -> bool {
        self.mds.iter().any(Self::is_live)
    }

    /// Instance `i` is live.
    pub(super) fn live(&self, i: usize) -> bool {
        self.mds.get(i).is_some_and(|m| m.live.is_some())
    }

    /// Some flow waits for room in a ring.
    pub(super) fn any_blocked(&self) -> bool {
        self.mds.iter().any(|m| !m.blocked.is_empty() || m.leave_ack)
    }

    /// Number of instances.
    pub(super) fn len(&self) -> usize {
        self.mds.len()
    }

    /// The live md instance among `among` (the instances serving a service) with the fewest
    /// flows, for a connection bound for life (`flow` dispatch); an md that refuses flows
    /// (CLOSE before any reply) carries the same failure score as under `request` dispatch.
    pub(super) fn choose(&self, among: &[u32]) -> Option<u32> {
        among
            .iter()
            .filter(|&&i| self.mds.get(i as usize).is_some_and(Self::routable))
            .min_by_key(|&&i| {
                let m = &self.mds[i as usize];
                m.flows.saturating_add(fail_weight(m.fails))
            })
            .copied()
    }

    /// The live md instance among `among` with the fewest requests in flight, for one request
    /// (`request` dispatch); ties go round robin, so equally idle instances share a request/response load.
    pub(super) fn choose_request(&mut self, among: &[u32]) -> Option<u32> {
        let n = self.mds.len() as u32;
        let rr = self.rr;
        let i = among
            .iter()
            .copied()
            .filter(|&i| self.mds.get(i as usize).is_some_and(Self::routable))
            .min_by_key(|&i| {
                let m = &self.mds[i as usize];
                (m.inflight.saturating_add(fail_weight(m.fails)), (i + n - rr) % n)
            })?;
        self.rr = (i + 1) % n;
        Some(i)
    }

    /// A request went to instance `i`.
    pub(super) fn req_sent(&mut self, i: u32) {
        if let Some(m) = self.mds.get_mut(i as usize) {
            m.inflight += 1;
            m.dispatched += 1;
        }
    }

    /// md instance `i` answered a request (its reply ended): its failure score goes down.
    pub(super) fn req_answered(&mut self, i: u32) {
        if let Some(m) = self.mds.get_mut(i as usize) {
            m.fails = m.fails.saturating_sub(1);
        }
    }

    /// md instance `i` closed a connection at a request instead of answering it.
    pub(super) fn req_failed(&mut self, i: u32) {
        if let Some(m) = self.mds.get_mut(i as usize) {
            m.fails = (m.fails + 1).min(MAX_FAILS);
        }
    }

    /// A request on instance `i` ended (its reply, or its flow, did).
    pub(super) fn req_done(&mut self, i: u32) {
        if let Some(m) = self.mds.get_mut(i as usize) {
            m.inflight = m.inflight.saturating_sub(1);
        }
    }

    /// A flow was bound to instance `i`.
    pub(super) fn bind(&mut self, i: u32) {
        if let Some(m) = self.mds.get_mut(i as usize) {
            m.flows += 1;
        }
    }

    /// A flow of instance `i` closed (no-op for [`crate::flows::NO_MD`]).
    pub(super) fn unbind(&mut self, i: u32) {
        if let Some(m) = self.mds.get_mut(i as usize) {
            m.flows = m.flows.saturating_sub(1);
        }
    }

    /// Queues a flow on instance `i`'s blocked list.
    pub(super) fn block(&mut self, i: u32, slot: u32, generation: u32) {
        if let Some(m) = self.mds.get_mut(i as usize) {
            m.blocked.push_back((slot, generation));
        }
    }

    /// The oldest flow blocked on instance `i`'s ring.
    pub(super) fn front_blocked(&self, i: usize) -> Option<(u32, u32)> {
        self.mds.get(i).and_then(|m| m.blocked.front().copied())
    }

    /// Takes the oldest flow blocked on instance `i`'s ring.
    pub(super) fn pop_blocked(&mut self, i: u32) -> Option<(u32, u32)> {
        self.mds.get_mut(i as usize).and_then(|m| m.blocked.pop_front())
    }

    /// Takes instance `i`'s `lost` flag.
    pub(super) fn take_lost(&mut self, i: usize) -> bool {
        self.mds.get_mut(i).is_some_and(|m| std::mem::take(&mut m.lost))
    }

    /// Pushes CLOSE for `id` to instance `i`. `Full`: retry later; any other outcome (pushed,
    /// no ring, a failed ring) lets the slot go.
    pub(super) fn push_close(&mut self, i: u32, id: FlowId) -> Result<(), PushError> {
        let Some((tx, pushed)) = self.tx(i) else { return Ok(()) };
        match tx.try_push(id, Kind::Close, 0, &[]) {
            Ok(()) => {
                *pushed = true;
                Ok(())
            }
            Err(PushError::Full) => Err(PushError::Full),
            Err(_) => Ok(()),
        }
    }

    /// Flushes each producer that was pushed to: one Release store each, a doorbell only if that
    /// md sleeps. Stamps the publish time for md's queue-wait histogram. True if any published.
    pub(super) fn flush(&mut self, mut stats: Option<&mut Stats>) -> bool {
        let mut now_ns = 0;
        let mut any = false;
        for (i, m) in self.mds.iter_mut().enumerate() {
            if m.leave_ack {
                if let Some(tx) = m.tx.as_mut() {
                    match tx.tx.try_push(FlowId(0), Kind::Leave, 0, &[]) {
                        Ok(()) => {
                            m.leave_ack = false;
                            m.pushed = true;
                        }
                        Err(PushError::Full) => {}     // next iteration
                        Err(_) => m.leave_ack = false, // a failed ring: the md is lost anyway
                    }
                }
            }
            if !std::mem::take(&mut m.pushed) {
                continue;
            }
            any = true;
            let Some(tx) = m.tx.as_mut() else { continue };
            tx.tx.flush();
            // `pushed` means this flush published frames (flush() only says whether it rang):
            // stamp it for md's queue-wait histogram. One clock read per batch.
            if let Some(ss) = stats.as_deref_mut().and_then(|st| st.slot(i as u32)) {
                if now_ns == 0 {
                    now_ns = monotonic_ns();
                }
                ss.inprod.stamp_publish(now_ns);
            }
        }
        any
    }

    /// md instance `i` said HELLO: watch its pidfd and mark it live. False if it cannot be
    /// (gone already, epoll refused, or it is not the process that holds the pair): then it is
    /// marked lost. If another md was live on the instance, the caller must close that one's
    /// flows first (`replaced`).
    ///
    /// Only the pair's holder (the md that claimed it when it attached, `shmq::ring::holder`)
    /// may say HELLO: anything else would be a second producer on the `out` ring, so it counts
    /// as a bad frame and the pair is reset. A HELLO without a start time (0: an md that does not
    /// know its own) matches on the pid, and the holder's full identity is used from then on.
    pub(super) fn on_hello(&mut self, cx: &mut Cx, i: u32, h: &Hello) -> bool {
        let m = &mut self.mds[i as usize];
        let holder = m.tx.as_ref().and_then(IoTx::holder);
        let proc_id = match holder {
            Some(p) if p.pid == h.pid && (h.start_time == 0 || h.start_time == p.start_time) => p,
            _ => {
                cx.c[Io::BadFrames] += 1;
                log::warn!(
                    "md instance {i}: HELLO from pid {} (start time {}), which does not hold the \
                     instance (holder: {}); resetting its queue pair",
                    h.pid,
                    h.start_time,
                    holder.map_or_else(|| "none".to_owned(), |p| format!("pid {}", p.pid))
                );
                m.lost = true;
                return false;
            }
        };
        let proto = m.tx.as_ref().map_or(0, IoTx::md_protocol);
        if proto != shmq::layout::PROTOCOL_VERSION {
            // An md of another release (an upgrade of one side only): its frames would be
            // misparsed. Not live, and its pair is not reset (it would only claim it again);
            // the timer's holder check resets the pair once that md has exited.
            cx.c[Io::BadFrames] += 1;
            log::error!(
                "md instance {i} (pid {}) speaks frame protocol version {proto}, this io_conn \
                 speaks version {}: refused (upgrade both to one release)",
                h.pid,
                shmq::layout::PROTOCOL_VERSION
            );
            return false;
        }
        match proc_id.pidfd() {
            Ok(fd) => {
                let ev = EpollEvent::new(EpollFlags::EPOLLIN, token(K_MDPID, u64::from(i)));
                if let Err(e) = cx.epoll.add(&fd, ev) {
                    log::error!("watching md instance {i}: {e}");
                    m.lost = true;
                    return false;
                }
                m.live = Some((proc_id, fd));
                cx.c[Io::MdAttaches] += 1;
                log::info!("md instance {i} live (pid {})", h.pid);
                true
            }
            Err(e) => {
                log::warn!("md instance {i} said HELLO as pid {} but is gone ({e})", h.pid);
                m.lost = true;
                false
            }
        }
    }

    /// Forgets instance `i`'s live md (stops watching its pidfd); returns who it was.
    pub(super) fn forget(&mut self, cx: &Cx, i: u32) -> Option<ProcId> {
        let m = self.mds.get_mut(i as usize)?;
        let (who, fd) = m.live.take()?;
        let _ = cx.epoll.delete(&fd);
        Some(who)
    }

    /// The process that holds instance `i`'s pair (claimed when it attached), if any.
    pub(super) fn holder(&self, i: u32) -> Option<ProcId> {
        self.mds.get(i as usize)?.tx.as_ref()?.holder()
    }

    /// The md live on instance `i` and how many flows it holds.
    pub(super) fn who(&self, i: u32) -> (Option<ProcId>, u32) {
        self.mds.get(i as usize).map_or((None, 0), |m| (m.live.as_ref().map(|(p, _)| *p), m.flows))
    }

    /// Resets instance `i`'s pair (new generation) and installs fresh halves; on failure the
    /// instance has no ring until [`Self::retry_resets`] (each timer tick) gets the reset done.
    pub(super) fn reset(
        &mut self,
        cx: &mut Cx,
        inbound: &mut Inbound,
        stats: Option<&mut Stats>,
        i: u32,
    ) {
        let idx = i as usize;
        let (Some(tx), Some(rx)) = (
            self.mds.get_mut(idx).and_then(|m| m.tx.take()),
            inbound.rx.get_mut(idx).and_then(Option::take),
        ) else {
            return;
        };
        let _ = cx.epoll.delete(&rx.half.rx_bell);
        let r = self.pairs.reset(IoSide::join(tx, rx.half));
        self.finish_reset(cx, inbound, stats, i, r);
    }

    /// Retries every reset that failed (issue 14, finding 7). Cheap when there is none.
    pub(super) fn retry_resets(
        &mut self,
        cx: &mut Cx,
        inbound: &mut Inbound,
        mut stats: Option<&mut Stats>,
    ) {
        for idx in 0..self.mds.len() {
            let Some(p) = self.mds[idx].pending_reset.take() else { continue };
            let r = self.pairs.retry_reset(p);
            self.finish_reset(cx, inbound, stats.as_deref_mut(), idx as u32, r);
        }
    }

    fn finish_reset(
        &mut self,
        cx: &mut Cx,
        inbound: &mut Inbound,
        stats: Option<&mut Stats>,
        i: u32,
        r: Result<IoSide, shmq::pair::ResetFailed>,
    ) {
        match r {
            Ok(side) => {
                let generation = side.generation;
                if let Some(ss) = stats.and_then(|st| st.slot(i)) {
                    // A new generation: our halves start from zero with the rings' counters.
                    ss.inprod.reset();
                    ss.outcons.reset();
                }
                match install(cx, self, inbound, i, side) {
                    Ok(()) => {
                        log::info!("md instance {i}: queue pair reset (generation {generation})")
                    }
                    Err(e) => log::error!("md instance {i}: {e:#}"),
                }
            }
            Err(f) => {
                // Logged once per failure streak, not per retry (a timer tick each).
                let first = self.mds.get(i as usize).is_some_and(|m| !m.reset_failing);
                if first {
                    log::error!("md instance {i}: {f}; retrying on every timer tick");
                }
                if let Some(m) = self.mds.get_mut(i as usize) {
                    m.reset_failing = true;
                    m.pending_reset = Some(f.pending);
                }
            }
        }
    }

    /// io_conn stops: it routes nothing anywhere any more. Tells every md so now (the LEAVE
    /// acknowledgement, unasked), so one told to stop next leaves as soon as its work is done
    /// instead of waiting for an acknowledgement that cannot come.
    pub(super) fn stop_routing(&mut self) {
        for m in &mut self.mds {
            if let Some(tx) = m.tx.as_mut() {
                if tx.tx.try_push(FlowId(0), Kind::Leave, 0, &[]).is_ok() {
                    tx.tx.flush();
                }
            }
        }
    }

    /// Drops every half and removes the pairs this process created.
    pub(super) fn remove_all(&mut self, inbound: &mut Inbound) {
        for m in &mut self.mds {
            m.tx = None;
            m.live = None;
        }
        inbound.rx.clear();
        for &i in &self.created {
            if let Err(e) = self.pairs.remove(i) {
                log::warn!("removing the queue pair of md instance {i}: {e}");
            }
        }
    }
}

impl Inbound {
    /// Number of instances.
    pub(super) fn len(&self) -> usize {
        self.rx.len()
    }

    /// Some ring has frames.
    pub(super) fn has_data(&self) -> bool {
        self.rx.iter().flatten().any(|r| r.half.rx.has_data())
    }

    /// Some live md's ring has frames (what the spin waits for).
    pub(super) fn live_has_data(&self, links: &Links) -> bool {
        self.rx
            .iter()
            .enumerate()
            .any(|(i, r)| r.as_ref().is_some_and(|r| r.half.rx.has_data()) && links.live(i))
    }

    /// Arms every ring's doorbell not armed yet (drain the FIFO, set `armed`, fence, re-check).
    /// False if a ring turned out to have data: do not sleep.
    pub(super) fn arm_all(&mut self) -> bool {
        for r in self.rx.iter_mut().flatten() {
            if r.armed {
                continue;
            }
            if r.half.rx.prepare_sleep(&r.half.rx_bell) {
                r.armed = true;
            } else {
                return false;
            }
        }
        true
    }

    /// Instance `i`'s doorbell rang: it disarmed our flag.
    pub(super) fn on_doorbell(&mut self, i: usize) {
        if let Some(Some(r)) = self.rx.get_mut(i) {
            let _ = r.half.rx_bell.drain();
            r.half.rx.note_wakeup();
            r.armed = false;
        }
    }

    /// Instance `i`'s md is gone: its ring's stamped frames are taken even if it never flushed
    /// them (`Consumer::producer_gone`), before the reset.
    pub(super) fn producer_gone(&mut self, i: usize) {
        if let Some(Some(r)) = self.rx.get_mut(i) {
            r.half.rx.producer_gone();
        }
    }

    /// Instance `i`'s consumer (for the stats halves).
    fn consumer(&self, i: usize) -> Option<&Consumer> {
        self.rx.get(i).and_then(Option::as_ref).map(|r| &r.half.rx)
    }

    /// Drains instance `i`'s ring in place: each frame goes to `clients.on_md_frame` with the
    /// outbound half at hand; the head is published once at the end.
    pub(super) fn poll(
        &mut self,
        i: usize,
        cx: &mut Cx,
        clients: &mut Clients,
        links: &mut Links,
        stats: Option<&mut SlotStats>,
    ) -> Polled {
        let Some(Some(r)) = self.rx.get_mut(i) else { return Polled::default() };
        if !r.half.rx.has_data() {
            return Polled::default();
        }
        // A batch begins: one queue-wait sample (md's latest publish -> our wake-up).
        if let Some(ss) = stats {
            ss.outcons.note_pickup(cx.now_ns);
        }
        // The memory budget is checked after every frame: one drain may bring megabytes.
        let r = r.half.rx.drain(FRAMES_PER_RING, |fr| {
            clients.on_md_frame(cx, links, i as u32, fr);
            clients.check_budget(cx, links);
        });
        // The last staged replies of this drain (also after a corrupt frame: what came before
        // it is delivered).
        clients.write_staged(cx, links);
        match r {
            Ok(n) => Polled { frames: n as u64, corrupt: None },
            Err(e) => Polled { frames: 0, corrupt: Some(e) },
        }
    }
}

/// Mirrors the ring counters of io_conn's ends of each pair into its stats halves: pairs with
/// a live md, fresh pairs once, or (`all`) every pair.
pub(super) fn publish_halves(st: &mut Stats, links: &mut Links, inbound: &Inbound, all: bool) {
    use shmq::sync::Ordering;
    for (i, m) in links.mds.iter_mut().enumerate() {
        let fresh = std::mem::take(&mut m.stats_fresh);
        if !(all || fresh || m.live.is_some()) {
            continue;
        }
        let (Some(tx), Some(rx), Some(ss)) =
            (m.tx.as_ref(), inbound.consumer(i), st.slot(i as u32))
        else {
            continue;
        };
        let h = tx.tx.header();
        // The real backlog, not `tx.depth()` (which uses our cached head and so keeps showing
        // frames md consumed long ago). Relaxed: a gauge; any recent value of either position
        // will do (tail is our own store, head md's), and nothing is read through them.
        let depth =
            h.tail.0.load(Ordering::Relaxed).saturating_sub(h.head.0.load(Ordering::Relaxed));
        ss.inprod.publish_from(&h.producer, depth, tx.tx.generation());
        ss.inprod.set(QueueProducer::RequestsInFlight, u64::from(m.inflight));
        ss.inprod.set(QueueProducer::RequestsDispatched, m.dispatched);
        ss.outcons.publish_from(&rx.header().consumer, rx.generation());
    }
}

#[cfg(test)]
impl Links {
    /// `n` instances without a ring and without a live md (unit tests of the client side).
    pub(super) fn without_rings(n: usize) -> Self {
        let mds = (0..n).map(|_| Md::new(None)).collect();
        let pairs = PairConfig {
            name: "unit".into(),
            runtime_dir: std::env::temp_dir(),
            backend: shmq::region::Backend::Posix,
            capacity: 4096,
            max_payload: 256,
        };
        Self { mds, rr: 0, pairs, created: Vec::new() }
    }
}
