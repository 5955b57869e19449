//! The runner's `Core`: everything but the service (flow table, timers, stats), so service
//! callbacks can borrow the service and the tables separately. Frames in, per-flow pumping out.

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use shmq::frame::{FlowId, Frame, Kind, OpenInfo, decode_drained, flags};
use shmq::ring::{Producer, PushError};
use shmq::stats::Md;

use super::flow::{Flow, FlowMap, KEEP_CAPACITY};
use super::{Detach, RunnerOptions};
use crate::service::{Ctx, Service, Status};
use crate::stats::Stats;
use crate::timer::Timers;

/// Everything but the service, so callbacks can borrow the service and the tables separately.
#[derive(Debug)]
pub(super) struct Core<F> {
    pub(super) opts: RunnerOptions,
    pub(super) flows: Vec<Flow<F>>,
    pub(super) index: FlowMap,
    pub(super) free: Vec<u32>,
    pub(super) dirty: Vec<u32>,
    pub(super) blocked: Vec<u32>,
    /// The round of yielded flows (slots, oldest first; each at most once, see `Flow::queued`):
    /// [`Core::run_slices`] resumes them in this order. An entry whose flow finished its
    /// request meanwhile (a timer said `Done`) is skipped when it comes up; a closed flow's entry
    /// is removed at once (its slot may be reused).
    pub(super) ready: VecDeque<u32>,
    /// The end of the current turn of a yielded flow (see `Ctx::slice_end`); `None` outside one.
    pub(super) slice_end: Option<Instant>,
    pub(super) timers: Timers,
    pub(super) stats: Stats,
    /// Set when the output ring turned out corrupt.
    pub(super) fatal: Option<Detach>,
    /// io_conn acknowledged our LEAVE: nothing new is routed here any more (the ring is FIFO,
    /// so every request io_conn sent before it was read already).
    pub(super) leave_acked: bool,
    /// A request-dispatched flow (OPEN with `OPEN_MARK_ENDS`) was opened since the attach: io_conn
    /// routes requests here one by one, so leaving waits for its acknowledgement.
    pub(super) requests_routed: bool,
    pub(super) max_payload: usize,
    pub(super) now: Instant,
    pub(super) warned_refused: bool,
}

impl<F: fmt::Debug> Core<F> {
    pub(super) fn lookup(&mut self, id: FlowId) -> Option<usize> {
        match self.index.get(&id.0) {
            Some(&i) => Some(i as usize),
            None => {
                self.stats[Md::UnknownFlow] += 1;
                None
            }
        }
    }

    pub(super) fn mark_dirty(&mut self, idx: usize) {
        let f = &mut self.flows[idx];
        if !f.dirty {
            f.dirty = true;
            self.dirty.push(idx as u32);
        }
    }

    pub(super) fn on_frame<S: Service<Flow = F>>(
        &mut self,
        svc: &mut S,
        tx: &mut Producer,
        f: Frame<'_>,
    ) {
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
            Kind::Leave => self.leave_acked = true,
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
                        if let Some(st) = self.call(svc, idx, |s, st, cx| s.drained(st, cx)) {
                            self.settle_event(idx, st);
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

    pub(super) fn on_open<S: Service<Flow = F>>(&mut self, svc: &mut S, f: Frame<'_>) {
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
        // Reply ends marked for request dispatch (MARK_ENDS: io_conn routes this flow's requests
        // one by one) and for flow dispatch (FLOW_ENDS: only counted by io_conn).
        self.flows[idx].mark_ends = f.flags & (flags::OPEN_MARK_ENDS | flags::OPEN_FLOW_ENDS) != 0;
        self.flows[idx].routed = f.flags & flags::OPEN_MARK_ENDS != 0;
        self.requests_routed |= self.flows[idx].routed;
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

    pub(super) fn on_data<S: Service<Flow = F>>(&mut self, svc: &mut S, idx: usize, msg: &[u8]) {
        let flow = &mut self.flows[idx];
        if flow.closing {
            // The service closed the flow (`Ctx::close`): requests the client sent after the
            // one that closed it are dropped unanswered, as Redis ignores what follows QUIT.
            return;
        }
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
    pub(super) fn call<S, R>(
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
    pub(super) fn split(&mut self, idx: usize) -> (Option<&mut F>, Ctx<'_>) {
        let Self { flows, timers, stats, now, max_payload, opts, slice_end, .. } = self;
        let flow = &mut flows[idx];
        let avail = flow.avail();
        let Flow { id, svc, out, out_base, bcast, closing, .. } = flow;
        let cx = Ctx {
            flow: *id,
            slot: idx as u32,
            out,
            out_base: *out_base,
            bcast,
            closing,
            max_payload: *max_payload,
            avail,
            timers,
            stats,
            now: *now,
            slice: opts.slice,
            slice_end: *slice_end,
        };
        (svc.as_mut(), cx)
    }

    pub(super) fn run_message<S: Service<Flow = F>>(
        &mut self,
        svc: &mut S,
        idx: usize,
        msg: &[u8],
    ) {
        if let Some(st) = self.call(svc, idx, |s, st, cx| s.message(st, msg, cx)) {
            self.settle_work(idx, st);
        }
    }

    /// Records what [`Service::message`] or [`Service::resume`] returned for flow `idx`: the
    /// request is done, waits for an event (`Pending`: out of the round), or yielded (into the
    /// round).
    pub(super) fn settle_work(&mut self, idx: usize, st: Status) {
        let flow = &mut self.flows[idx];
        if st == Status::Done {
            flow.request_done();
        } else {
            flow.busy = true;
        }
        flow.yielded = st == Status::Yield;
        self.enqueue(idx);
    }

    /// Records what [`Service::timer`] or [`Service::drained`] returned for flow `idx` (ignored
    /// when no request is in progress): `Done` finishes it, `Yield` puts it in the round,
    /// `Pending` changes nothing (a yielded request stays in the round).
    pub(super) fn settle_event(&mut self, idx: usize, st: Status) {
        let flow = &mut self.flows[idx];
        if !flow.busy {
            return;
        }
        match st {
            Status::Done => {
                flow.request_done();
                // A queued entry is skipped when it comes up.
                flow.yielded = false;
            }
            Status::Yield => {
                flow.yielded = true;
                self.enqueue(idx);
            }
            Status::Pending => {}
        }
    }

    /// Puts flow `idx` at the end of the round if it yielded and is not in it yet.
    fn enqueue(&mut self, idx: usize) {
        let flow = &mut self.flows[idx];
        if flow.yielded && !flow.queued {
            flow.queued = true;
            self.ready.push_back(idx as u32);
        }
    }

    /// One round of yielded requests: resumes flows from the front of the round, each at most
    /// once, until one slice (`opts.slice`) has passed since the round began (at least one
    /// flow runs). Each flow's turn ends its slice; the held requests its turn lets run (after
    /// the yielded one finished) share that slice, so a flow gets about one slice per round
    /// however its work is split into requests. A flow that yields again goes to the back.
    /// Returns whether a service callback ran.
    ///
    /// Why by time and not "every yielded flow once": with many hogs, a round of all of them
    /// would keep the loop from its input (and signals) for hogs x slice; this way the loop
    /// gets back to its input after about one slice whatever the number of hogs, and the round
    /// robin continues where it stopped.
    pub(super) fn run_slices<S: Service<Flow = F>>(
        &mut self,
        svc: &mut S,
        tx: &mut Producer,
    ) -> bool {
        if self.ready.is_empty() {
            return false; // (no clock read on the common path)
        }
        let budget = self.opts.slice;
        let round_start = Instant::now();
        let mut ran = false;
        for _ in 0..self.ready.len() {
            let Some(i) = self.ready.pop_front() else { break };
            let idx = i as usize;
            let flow = &mut self.flows[idx];
            flow.queued = false;
            if !(flow.live && flow.busy && flow.yielded) {
                continue; // finished by a timer or `drained` meanwhile
            }
            let start = if ran { Instant::now() } else { round_start };
            self.now = start;
            self.slice_end = (!budget.is_zero()).then(|| start + budget);
            if let Some(st) = self.call(svc, idx, |s, st, cx| s.resume(st, cx)) {
                self.settle_work(idx, st);
            }
            ran = true;
            // Its output, and its held requests if it finished, within the same slice.
            self.pump(svc, tx, idx);
            self.slice_end = None;
            if self.fatal.is_some() || round_start.elapsed() >= budget {
                break;
            }
        }
        ran
    }

    /// Runs the oldest held request of flow `idx`.
    pub(super) fn run_held<S: Service<Flow = F>>(&mut self, svc: &mut S, idx: usize) {
        let Self { flows, timers, stats, now, max_payload, opts, slice_end, .. } = self;
        let flow = &mut flows[idx];
        let Some(range) = flow.next_held() else { return };
        let avail = flow.avail();
        if let Some(state) = flow.svc.as_mut() {
            let mut cx = Ctx {
                flow: flow.id,
                slot: idx as u32,
                out: &mut flow.out,
                out_base: flow.out_base,
                bcast: &mut flow.bcast,
                closing: &mut flow.closing,
                max_payload: *max_payload,
                avail,
                timers,
                stats,
                now: *now,
                slice: opts.slice,
                slice_end: *slice_end,
            };
            let st = svc.message(state, &flow.backlog[range], &mut cx);
            flow.backlog_done();
            self.settle_work(idx, st);
        } else {
            flow.backlog_done();
        }
    }

    pub(super) fn fire_timers<S: Service<Flow = F>>(&mut self, svc: &mut S) -> bool {
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
                self.settle_event(idx, st);
            }
            self.mark_dirty(idx);
        }
        any
    }

    /// Moves the flow's outbox into the ring as far as credit and ring space allow, with its
    /// queued broadcasts in place (each after the output written before it). Returns true if
    /// the ring was full.
    ///
    /// Reply ends: a request-dispatched flow (`routed`) gets one frame per reply end, the end on
    /// the frame's last byte (io_conn routes by it). Any other flow's output goes in as few frames
    /// as possible: one frame carries the replies of a whole batch of requests and says how many
    /// it completes ([`flags::ends_flags`]; io_conn only counts them).
    pub(super) fn flush_out(&mut self, tx: &mut Producer, idx: usize) -> bool {
        let flow = &mut self.flows[idx];
        let mut sent = 0;
        let mut full = false;
        loop {
            let pos = flow.out_base + sent as u64;
            if flow.routed && flow.next_end() == Some(pos) {
                // A request ended and no frame carried its end (nothing was written since the
                // last one): an empty END frame, which costs no credit.
                let fl = flags::DATA_END | last_end_flag(flow);
                match tx.try_push(flow.id, Kind::Data, fl, &[]) {
                    Ok(()) => {
                        flow.ends_head += 1;
                        self.stats[Md::MessagesOut] += 1;
                        continue;
                    }
                    Err(e) => {
                        push_failed(&mut self.stats, &mut self.fatal, e);
                        full = true;
                        break;
                    }
                }
            }
            // Output up to the next broadcast's mark or reply end (or all of it) goes first.
            let next = flow.next_broadcast();
            let mut end = match &next {
                // A mark is never behind `out_base`: output is pushed only up to the next mark.
                Some((mark, _)) => {
                    (mark.saturating_sub(flow.out_base) as usize).min(flow.out.len())
                }
                None => flow.out.len(),
            };
            if flow.routed {
                if let Some(e) = flow.next_end() {
                    end = end.min((e - flow.out_base) as usize);
                }
            }
            let ends_waiting = !flow.routed && flow.next_end() == Some(pos);
            if sent < end || ends_waiting {
                let avail = flow.avail().min(self.max_payload as u64) as usize;
                let mut n = (end - sent).min(avail);
                let (fl, k) = if flow.routed {
                    if n == 0 {
                        break; // out of credit: later output and broadcasts wait for DRAINED
                    }
                    let ends_here = flow.next_end() == Some(pos + n as u64);
                    (
                        if ends_here { flags::DATA_END | last_end_flag(flow) } else { 0 },
                        usize::from(ends_here),
                    )
                } else {
                    let (k, cut) = flow.ends_within(pos + n as u64, flags::MAX_ENDS);
                    if let Some(c) = cut {
                        n = (c - pos) as usize;
                    }
                    if n == 0 && k == 0 {
                        break; // out of credit (reply ends without bytes still go, above)
                    }
                    (flags::ends_flags(k), k)
                };
                match tx.try_push(flow.id, Kind::Data, fl, &flow.out[sent..sent + n]) {
                    Ok(()) => {
                        sent += n;
                        flow.outstanding += n as u64;
                        flow.ends_head += k;
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
        if !flow.has_ends() {
            flow.ends.clear();
            flow.ends_head = 0;
        }
        full
    }

    /// Pushes an empty control frame; false if the ring is full.
    pub(super) fn control(&mut self, tx: &mut Producer, id: FlowId, kind: Kind) -> bool {
        match tx.try_push(id, kind, 0, &[]) {
            Ok(()) => true,
            Err(e) => {
                push_failed(&mut self.stats, &mut self.fatal, e);
                false
            }
        }
    }

    /// Brings flow `idx` forward as far as it can go now (see the module docs).
    pub(super) fn pump<S: Service<Flow = F>>(
        &mut self,
        svc: &mut S,
        tx: &mut Producer,
        idx: usize,
    ) {
        if !self.flows[idx].live {
            return;
        }
        // Held requests that may run, run first and their output is flushed once after them
        // (one frame for the lot on a flow-dispatched flow): `can_run` does not depend on a
        // flush (output counts against credit whether queued or in the ring), except through
        // broadcasts, which only a flush moves, hence the flush and a second look.
        let mut full;
        loop {
            let flow = &self.flows[idx];
            if flow.backlog_count > 0 && flow.can_run() && flow.svc.is_some() {
                self.run_held(svc, idx);
                continue;
            }
            if flow.eof && !flow.eof_done && !flow.closing && !flow.busy && flow.backlog_count == 0
            {
                self.call(svc, idx, |s, st, cx| s.eof(st, cx));
                self.flows[idx].eof_done = true;
                continue;
            }
            full = self.flush_out(tx, idx);
            let flow = &self.flows[idx];
            let more = (flow.backlog_count > 0 && flow.can_run() && flow.svc.is_some())
                || (flow.eof && !flow.eof_done && !flow.busy && flow.backlog_count == 0);
            if more && !full && self.fatal.is_none() {
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
        let flow = &mut self.flows[idx];
        if flow.closing && !flow.busy {
            flow.drop_held(); // never run: the flow closed before them
        }
        let closing = flow.svc.is_none() || ((flow.eof_done || flow.closing) && !flow.busy);
        if closing && flow.out.is_empty() && !flow.has_broadcasts() && !flow.has_ends() {
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

    pub(super) fn pump_dirty<S: Service<Flow = F>>(&mut self, svc: &mut S, tx: &mut Producer) {
        let mut i = 0;
        while i < self.dirty.len() {
            let idx = self.dirty[i] as usize;
            self.flows[idx].dirty = false;
            self.pump(svc, tx, idx);
            i += 1;
        }
        self.dirty.clear();
    }

    pub(super) fn requeue_blocked(&mut self) {
        for i in 0..self.blocked.len() {
            let idx = self.blocked[i] as usize;
            self.flows[idx].blocked = false;
            if self.flows[idx].live {
                self.mark_dirty(idx);
            }
        }
        self.blocked.clear();
    }

    pub(super) fn pump_all<S: Service<Flow = F>>(&mut self, svc: &mut S, tx: &mut Producer) {
        self.requeue_blocked();
        for idx in 0..self.flows.len() {
            if self.flows[idx].live {
                self.mark_dirty(idx);
            }
        }
        self.pump_dirty(svc, tx);
    }

    pub(super) fn remove<S: Service<Flow = F>>(&mut self, svc: &mut S, idx: usize) {
        let flow = &mut self.flows[idx];
        if !flow.live {
            return;
        }
        flow.live = false;
        self.index.remove(&flow.id.0);
        if flow.queued {
            // Its work is dropped with it; the slot may be reused before the entry comes up.
            flow.queued = false;
            self.ready.retain(|&i| i as usize != idx);
        }
        flow.yielded = false;
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
        flow.ends.clear();
        flow.ends_head = 0;
        self.free.push(idx as u32);
    }

    /// One step of leaving (after io_conn acknowledged LEAVE): every flow-dispatched flow that is
    /// done (no request running or held, all output, broadcasts and reply ends in the ring) is
    /// closed (CLOSE: io_conn closes the connection after those replies); request-dispatched
    /// flows need nothing (io_conn sends them nowhere new and forgets this md when it exits).
    /// True when nothing is in flight any more.
    pub(super) fn leave_step<S: Service<Flow = F>>(
        &mut self,
        svc: &mut S,
        tx: &mut Producer,
    ) -> bool {
        let mut done = true;
        for idx in 0..self.flows.len() {
            let f = &self.flows[idx];
            if !f.live {
                continue;
            }
            let idle = !f.busy
                && !f.yielded
                && f.backlog_count == 0
                && f.out.is_empty()
                && !f.has_broadcasts()
                && !f.has_ends();
            if !idle {
                done = false;
                continue;
            }
            if f.routed {
                continue; // request dispatch: the connection carries on with the other md
            }
            let id = f.id;
            if self.control(tx, id, Kind::Close) {
                self.stats[Md::ClosesOut] += 1;
                self.remove(svc, idx);
            } else {
                done = false; // the ring is full: next pass
            }
        }
        done
    }

    pub(super) fn close_all<S: Service<Flow = F>>(&mut self, svc: &mut S) {
        // Every flow goes: clear the round first (`remove` would search it once per flow).
        self.ready.clear();
        for f in &mut self.flows {
            f.queued = false;
        }
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

/// [`flags::DATA_CLOSE`] for the frame carrying `flow`'s next reply end if that end is the
/// flow's last (the service closed it, no request runs any more, and no other end is queued),
/// else 0. io_conn then cuts a `request`-dispatched connection right after this reply.
fn last_end_flag<F>(flow: &Flow<F>) -> u16 {
    let last = flow.closing && !flow.busy && flow.ends_head + 1 == flow.ends.len();
    if last { flags::DATA_CLOSE } else { 0 }
}

/// Bookkeeping for a push into the output ring that failed: a full ring is counted (the output
/// waits and is retried), anything else means the ring is corrupt and md detaches.
pub(super) fn push_failed(stats: &mut Stats, fatal: &mut Option<Detach>, e: PushError) {
    match e {
        PushError::Full => stats[Md::OutFull] += 1,
        PushError::Corrupt | PushError::TooLarge { .. } => *fatal = Some(Detach::Corrupt(None)),
    }
}
