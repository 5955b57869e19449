//! The client side of the loop: the listeners, the flow table, the buffer pool, and the
//! bookkeeping every client path shares (interest, activity, closing a flow, timeouts).
//!
//! Accepting lives in `accept`, reading and pushing to md in `input`, md's frames and writing to
//! clients in `output`. Every method that may push a frame takes the md link's outbound half
//! ([`Links`]); the inbound half is never needed here, which is what lets `Inbound::poll` hand
//! frames to these methods while it drains a ring in place.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::Context;
use config::{Config, Framing};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use shmq::frame::FlowId;

use super::{Cx, K_LISTENER, Links, UNASSIGNED_HOLD, flow_token, token};
use crate::counters::Io;
use crate::flows::{AfterFlush, FlowTable, InputEnd, ListId, State, TooLong};
use crate::pool::Pool;

/// One listening socket and what its connections speak.
#[derive(Debug)]
pub(super) struct Lst {
    /// None once draining began, or once a reload removed (or replaced) it: then it only
    /// describes the connections it accepted before.
    pub(super) sock: Option<TcpListener>,
    /// Its identity in the config (`config::listener_ids`: the name, else the address), by
    /// which a reload finds it in the new file.
    pub(super) id: String,
    /// The address the config gave it (port 0 stays 0: the bound port is the socket's).
    pub(super) address: std::net::SocketAddr,
    /// Bound by io_conn (not inherited from systemd): a reload may `listen` it again with a new
    /// backlog.
    pub(super) own: bool,
    pub(super) service: String,
    pub(super) framing: Framing,
    /// Registered in epoll (accepting is paused after EMFILE by taking it out).
    pub(super) in_epoll: bool,
    /// The md instances that serve `service` (its `[[md.group]]`, or all): routing picks among
    /// these only.
    pub(super) mds: Vec<u32>,
    /// `dispatch = "request"`: each request goes to the least-loaded md (`dispatch`).
    pub(super) request: bool,
    /// `pipeline_depth`: requests in flight per connection under `request` dispatch.
    pub(super) depth: u32,
    /// `proxy_protocol`: the PROXY header version each connection must begin with (`proxied`).
    pub(super) proxy: Option<crate::proxy::Version>,
    /// `proxy_from`: who may connect when `proxy` is set.
    pub(super) proxy_from: Vec<config::Cidr>,
}

/// Limits from the config, in the units the loop uses.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// `shared.max_message`.
    pub(super) max_msg: usize,
    /// `io_conn.resp.*` (the `resp` framer's limits).
    pub(super) resp: crate::framing::resp::Limits,
    /// `io_conn.read_buffer`: bytes asked of one `read`.
    pub(super) read_size: usize,
    /// `io_conn.output_credit` (sent in OPEN).
    pub(super) credit: u64,
    /// The largest credit any OPEN of this process carried (a reload may lower `credit`; a
    /// connection opened before keeps the credit md was given): what an md may have in flight.
    pub(super) credit_limit: u64,
    /// `io_conn.idle_timeout` (None: off).
    pub(super) idle: Option<Duration>,
    /// `io_conn.message_deadline` (None: off).
    pub(super) deadline: Option<Duration>,
    /// `[io_conn.http]`: limits of the `http` framing.
    pub(super) http: crate::framing::http::Limits,
}

/// Open connections per client IP address, for `io_conn.max_connections_per_ip` (nginx's
/// `limit_conn`). Holds only addresses with connections open: an entry goes when its count drops
/// to 0, so it never holds more than `max_connections` entries, whatever the clients do.
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Debug)]
pub(super) struct PerIp {
    /// 0: no limit (nothing is counted).
    limit: u32,
    open: HashMap<IpAddr, u32>,
}

impl PerIp {
    pub(super) fn new(limit: u32, max_conn: u32) -> Self {
        // Sized up front for a typical spread of addresses: no allocation per accept.
        let cap = if limit == 0 { 0 } else { (max_conn as usize).min(4096) };
        Self { limit, open: HashMap::with_capacity(cap) }
    }

    /// Counts one more connection from `ip`, unless `ip` has `limit` open already (false).
    pub(super) fn admit(&mut self, ip: IpAddr) -> bool {
        if self.limit == 0 {
            return true;
        }
        let n = self.open.entry(ip.to_canonical()).or_insert(0);
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts one more connection from `ip` even above the limit (a reload that lowers or sets
    /// the limit counts the connections already open: they stay).
    pub(super) fn admit_anyway(&mut self, ip: IpAddr) {
        if self.limit != 0 {
            *self.open.entry(ip.to_canonical()).or_insert(0) += 1;
        }
    }

    /// One connection from `ip` (admitted before) ended.
    pub(super) fn release(&mut self, ip: IpAddr) {
        if self.limit == 0 {
            return;
        }
        if let Entry::Occupied(mut e) = self.open.entry(ip.to_canonical()) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Most reply bytes staged for one `write` ([`Clients::stage_reply`]).
pub(super) const STAGE_MAX: usize = 64 << 10;

/// Everything on the client side of the loop.
#[derive(Debug)]
pub(crate) struct Clients {
    pub(super) listeners: Vec<Lst>,
    pub(crate) flows: FlowTable,
    pub(super) pool: Pool,
    /// Where a flow with no buffered input reads into (the fast path pushes from here).
    pub(super) scratch: Vec<u8>,
    /// Flows accepted while no md was live, as (slot, generation), oldest first.
    pub(super) unassigned: VecDeque<(u32, u32)>,
    /// Flows with flushed bytes to report to md in DRAINED.
    pub(super) drained_list: Vec<u32>,
    /// When deferred DRAINED frames go out even if nothing else goes to their md.
    pub(super) drained_force_at: Option<Instant>,
    /// Flows holding back credit from an md that works on one of their requests: looked at once
    /// per [`super::SHORT_TICK`] (`dispatch::watch_credit`).
    pub(super) credit_watch: Vec<u32>,
    /// When the credit watch list is looked at next.
    pub(super) credit_watch_at: Option<Instant>,
    /// `flow` dispatch: the flow whose md reply bytes are in `staging`, not yet written
    /// (`Clients::stage_reply`): consecutive DATA frames of one flow go out in one `write`.
    pub(super) staged: Option<FlowId>,
    /// The staged reply bytes (one loop-wide buffer, reused; at most [`STAGE_MAX`] bytes).
    pub(super) staging: Vec<u8>,
    /// Accepting is paused (EMFILE/ENFILE) until then.
    pub(super) accept_paused_until: Option<Instant>,
    pub(super) lim: Limits,
    /// Connections open per client address (`max_connections_per_ip`).
    pub(super) per_ip: PerIp,
    /// A handover is under way: no socket is read and no connection accepted
    /// (`server::handover`).
    pub(super) paused: bool,
    /// `io_conn.max_connections`: accepts beyond this many slots in use are refused. The flow
    /// table has at least this many slots (a reload grows it, never shrinks it).
    pub(super) max_conn: u32,
    /// `io_conn.max_buffered`: the memory budget of every client buffer together.
    pub(super) budget: super::budget::Budget,
}

pub(super) fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl Clients {
    /// Registers the listeners in `epoll` and sizes the flow table and pool from the config.
    pub(super) fn new(
        cfg: &Config,
        listeners: Vec<(TcpListener, config::Listener)>,
        epoll: &Epoll,
    ) -> anyhow::Result<Self> {
        let io = &cfg.io_conn;
        let mut lst = Vec::with_capacity(listeners.len());
        let ids =
            config::listener_ids(&listeners.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>());
        for (idx, ((sock, l), id)) in listeners.into_iter().zip(ids).enumerate() {
            sock.set_nonblocking(true).context("listener O_NONBLOCK")?;
            epoll
                .add(&sock, EpollEvent::new(EpollFlags::EPOLLIN, token(K_LISTENER, idx as u64)))
                .context("epoll add listener")?;
            lst.push(Lst {
                sock: Some(sock),
                id,
                address: l.address,
                own: true,
                framing: l.framing(),
                mds: cfg.instances_for(&l.service),
                request: l.dispatch() == config::Dispatch::Request,
                depth: l.pipeline_depth().max(1),
                proxy: super::proxied::version(&l),
                proxy_from: l.proxy_from,
                service: l.service,
                in_epoll: true,
            });
        }
        anyhow::ensure!(lst.len() < usize::from(u16::MAX), "too many listeners");
        let max_msg = usize::try_from(cfg.shared.max_message).context("shared.max_message")?;
        let read_size = usize::try_from(io.read_buffer).context("io_conn.read_buffer")?;
        let max_conn = io.max_connections;
        let budget = super::budget::Budget::new(io.max_buffered);
        let mut pool =
            Pool::new(read_size.min(max_msg.max(read_size)), (max_conn as usize).min(4096));
        pool.set_keep_below(budget.low_water());
        Ok(Self {
            listeners: lst,
            flows: FlowTable::new(max_conn),
            pool,
            scratch: vec![0; read_size],
            unassigned: VecDeque::new(),
            drained_list: Vec::with_capacity((max_conn as usize).min(1 << 16)),
            drained_force_at: None,
            credit_watch: Vec::new(),
            credit_watch_at: None,
            staged: None,
            staging: Vec::with_capacity(STAGE_MAX),
            accept_paused_until: None,
            lim: Limits {
                max_msg,
                resp: crate::framing::resp::Limits {
                    max_elements: io.resp.max_elements as usize,
                    max_bulk: usize::try_from(io.resp.max_bulk).unwrap_or(usize::MAX).min(max_msg),
                },
                read_size,
                credit: io.output_credit,
                credit_limit: io.output_credit,
                idle: nonzero(io.idle_timeout),
                deadline: nonzero(io.message_deadline),
                http: crate::framing::http::Limits::from_config(&io.http),
            },
            per_ip: PerIp::new(io.max_connections_per_ip, max_conn),
            paused: false,
            max_conn,
            budget,
        })
    }

    /// The framing of the flow's listener.
    #[inline]
    pub(super) fn framing(&self, slot: u32) -> Framing {
        self.listeners[self.flows.get(slot).listener as usize].framing
    }

    /// A readiness event for the flow `idx` (slot and 24 bits of generation) names.
    pub(super) fn on_flow_event(
        &mut self,
        cx: &mut Cx,
        links: &mut Links,
        idx: u64,
        ev: EpollFlags,
    ) {
        let slot = idx as u32;
        let generation = (idx >> 32) as u32;
        if slot as usize >= self.flows.capacity() {
            return;
        }
        let f = self.flows.get(slot);
        if f.generation & 0xff_ffff != generation || !f.has_client() {
            return;
        }
        let lingering = f.state == State::Lingering;
        if ev.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
            let why = if lingering { self.linger_reason(slot) } else { Io::ClosedByPeer };
            self.close_flow(cx, links, slot, why);
            return;
        }
        if ev.contains(EpollFlags::EPOLLIN) {
            if lingering {
                self.discard_input(cx, links, slot);
                return;
            }
            // During a handover an event queued before the pause is not acted on: what the
            // client sends now is read by the successor.
            // Over the memory budget nothing more is read (`budget`).
            if self.paused || self.budget.reading_stopped() {
            } else if self.flows.get(slot).state == State::Header {
                self.read_header(cx, links, slot);
            } else {
                self.on_readable(cx, links, slot);
            }
        }
        if ev.contains(EpollFlags::EPOLLOUT) && self.flows.get(slot).state == State::Open {
            self.on_writable(cx, links, slot);
        }
    }

    /// Notes activity: the flow moves to the back of the idle list.
    #[inline]
    pub(super) fn touch(&mut self, cx: &Cx, slot: u32) {
        self.flows.get_mut(slot).last_active = cx.now;
        self.flows.move_to_back(ListId::Idle, slot);
    }

    /// Registers the interest the flow's state calls for, if it changed (one `epoll_ctl`).
    pub(super) fn update_interest(&mut self, cx: &Cx, slot: u32) {
        let generation = self.flows.get(slot).generation;
        let f = self.flows.get_mut(slot);
        let Some(sock) = f.sock.as_ref() else { return };
        let mut want = EpollFlags::empty();
        let paused = self.paused || self.budget.paused();
        if f.wants_input() && !(paused && f.state != State::Lingering) {
            want |= EpollFlags::EPOLLIN;
        }
        if f.output_len() > 0 {
            want |= EpollFlags::EPOLLOUT;
            if !f.interest.contains(EpollFlags::EPOLLOUT) {
                f.out_since = cx.now;
            }
        }
        if want != f.interest {
            let mut ev = EpollEvent::new(want, flow_token(slot, generation));
            match cx.epoll.modify(sock, &mut ev) {
                Ok(()) => f.interest = want,
                Err(e) => log::warn!("epoll_ctl(MOD) on a client socket: {e}"),
            }
        }
    }

    /// Closes the client connection and counts it under `why` (one of the `Closed*` counters).
    /// md is told (CLOSE) unless it closed the flow itself or is gone; if its ring is full the
    /// slot waits in state Closing on the md's blocked queue until the CLOSE fits.
    pub(super) fn close_flow(&mut self, cx: &mut Cx, links: &mut Links, slot: u32, why: Io) {
        debug_assert!(matches!(
            why,
            Io::ClosedByPeer
                | Io::ClosedIdle
                | Io::ClosedDeadline
                | Io::ClosedOversized
                | Io::ClosedCreditOverrun
                | Io::ClosedError
                | Io::ClosedByMd
                | Io::ClosedMdGone
                | Io::ClosedShutdown
                | Io::ClosedMemory
        ));
        let old_id = self.flows.id(slot);
        let f = self.flows.get_mut(slot);
        let state = f.state;
        if !f.has_client() {
            return;
        }
        cx.c[why] += 1;
        cx.c[Io::ConnectionsCurrent] -= 1;
        if state != State::Header {
            // A flow still reading its PROXY header was not counted (`proxied`).
            self.per_ip.release(f.peer.ip());
        }
        if let Some(sock) = f.sock.take() {
            let _ = cx.epoll.delete(&sock);
            drop(sock);
        }
        if let Some(b) = f.input.take() {
            self.pool.put(b);
        }
        if let Some(b) = f.output.take() {
            self.pool.put(b);
        }
        // `request` dispatch: the requests in flight end here (their md's load drops; replies
        // still coming are stale), their held replies go back to the pool.
        while let Some(r) = f.rq.q.pop_front() {
            if !r.done {
                links.req_done(r.md);
            }
            if let Some(b) = r.held {
                self.pool.put(b);
            }
        }
        f.rq.segs.clear();
        let md = f.md;
        // Under `flow` dispatch a queued refusal (or the end after a last message) means md
        // CLOSEd first.
        let md_closed = f.after_flush == AfterFlush::Close || f.too_long == TooLong::Queued;
        let request = f.rq.on;
        let peers = !f.rq.peers.is_empty();
        self.flows.remove(ListId::Idle, slot);
        self.flows.remove(ListId::Deadline, slot);
        // A new generation now: frames md still sends for `old_id` are stale from here on.
        self.flows.bump(slot);
        // md forgot a flow it closed itself: a CLOSE back would only cost it a frame (and maybe a
        // wake-up) to count as an unknown flow. Under `request` dispatch every md the flow was
        // opened on gets CLOSE (one that closed it, or died, was taken off the list already).
        let tell_md = matches!(state, State::Open | State::Lingering)
            && if request {
                peers
            } else {
                !md_closed && why != Io::ClosedMdGone && links.has_ring(md)
            };
        links.unbind(md);
        if !tell_md {
            self.flows.release(slot);
            return;
        }
        let f = self.flows.get_mut(slot);
        f.state = State::Closing;
        f.close_id = old_id;
        f.blocked = false;
        f.drained = 0;
        if let Err(m) = self.pump_closing(links, slot) {
            let f = self.flows.get_mut(slot);
            f.blocked = true;
            links.block(m, slot, f.generation);
        }
    }

    /// Calls `add` with every instant the client side needs the timer for.
    pub(super) fn next_due(&self, add: &mut impl FnMut(Instant)) {
        if let (Some(idle), Some(s)) = (self.lim.idle, self.flows.front(ListId::Idle)) {
            add(self.flows.get(s).last_active + idle);
        }
        if let (Some(dl), Some(s)) = (self.lim.deadline, self.flows.front(ListId::Deadline)) {
            add(self.flows.get(s).since + dl);
        }
        if let Some(&(s, _)) = self.unassigned.front() {
            add(self.flows.get(s).since + UNASSIGNED_HOLD);
        }
        if let Some(t) = self.accept_paused_until {
            add(t);
        }
    }

    /// The timer fired: resume accepting, close idle flows, flows whose message missed its
    /// deadline, and flows no md took in time.
    pub(super) fn on_timer(&mut self, cx: &mut Cx, links: &mut Links) {
        let now = cx.now;
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            self.resume_accepting(cx);
        }
        if let Some(idle) = self.lim.idle {
            while let Some(s) = self.flows.front(ListId::Idle) {
                if self.flows.get(s).last_active + idle > now {
                    break;
                }
                self.close_flow(cx, links, s, Io::ClosedIdle);
            }
        }
        if let Some(dl) = self.lim.deadline {
            while let Some(s) = self.flows.front(ListId::Deadline) {
                let f = self.flows.get_mut(s);
                if f.since + dl > now {
                    break;
                }
                if f.state == State::Lingering {
                    let why = self.linger_reason(s);
                    self.close_flow(cx, links, s, why);
                    continue;
                }
                if f.blocked || f.md_paused || f.rq.full() {
                    // Not reading by our (or md's) choice: the client is not the slow one.
                    f.since = now;
                    self.flows.move_to_back(ListId::Deadline, s);
                    continue;
                }
                if f.state == State::Header {
                    cx.c[Io::ProxyRefusedInvalid] += 1;
                }
                self.close_flow(cx, links, s, Io::ClosedDeadline);
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
            self.close_flow(cx, links, s, Io::ClosedMdGone);
        }
    }

    /// Closes every flow (counted under `why`).
    pub(super) fn close_all(&mut self, cx: &mut Cx, links: &mut Links, why: Io) {
        while let Some(s) = self.flows.front(ListId::Idle) {
            self.close_flow(cx, links, s, why);
        }
    }

    /// Shutdown began: stop accepting (close the listeners), close flows no md took, and end
    /// every open flow's input like a client half-close (md answers what it has, then CLOSE).
    pub(super) fn begin_drain(&mut self, cx: &mut Cx, links: &mut Links) {
        for l in &mut self.listeners {
            if let Some(s) = l.sock.take() {
                if l.in_epoll {
                    let _ = cx.epoll.delete(&s);
                }
            }
            l.in_epoll = false;
        }
        self.accept_paused_until = None;
        let mut cur = self.flows.front(ListId::Idle);
        while let Some(slot) = cur {
            cur = self.flows.next(ListId::Idle, slot);
            let f = self.flows.get_mut(slot);
            match f.state {
                State::Unassigned | State::Header => {
                    self.close_flow(cx, links, slot, Io::ClosedShutdown)
                }
                State::Open if !f.input_ended() => {
                    f.input_end = InputEnd::Eof { by_peer: false, sent: false };
                    self.flows.remove(ListId::Deadline, slot);
                    if self.after_input(cx, links, slot) && self.finish_if_done(cx, links, slot) {
                        self.update_interest(cx, slot);
                    }
                }
                _ => {}
            }
        }
    }

    /// md `i` is gone, for a `request`-dispatched flow: the flow forgets it (no CLOSE to a dead
    /// md), and if a request was still in flight there the connection's order is broken: it is
    /// closed (`closed_md_gone`). True if it closed.
    pub(super) fn forget_md(&mut self, cx: &mut Cx, links: &mut Links, slot: u32, i: u32) -> bool {
        let f = self.flows.get_mut(slot);
        f.rq.peers.retain(|p| p.md != i);
        if f.rq.q.iter().any(|r| r.md == i && !r.done) {
            self.close_flow(cx, links, slot, Io::ClosedMdGone);
            return true;
        }
        false
    }

    /// Closes every flow bound to md `i` (it is gone) and frees the slots of flows waiting to
    /// push it a CLOSE.
    pub(super) fn close_md_flows(&mut self, cx: &mut Cx, links: &mut Links, i: u32) {
        let mut cur = self.flows.front(ListId::Idle);
        while let Some(slot) = cur {
            cur = self.flows.next(ListId::Idle, slot);
            let f = self.flows.get_mut(slot);
            if !matches!(f.state, State::Open | State::Lingering) {
                continue;
            }
            if f.rq.on {
                self.forget_md(cx, links, slot, i);
            } else if f.md == i {
                self.close_flow(cx, links, slot, Io::ClosedMdGone);
            }
        }
        while let Some((slot, generation)) = links.pop_blocked(i) {
            let f = self.flows.get(slot);
            if f.generation == generation && f.state == State::Closing {
                self.flows.release(slot);
            }
        }
    }
}
