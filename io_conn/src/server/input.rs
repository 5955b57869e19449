//! Reading clients and pushing their messages to md.
//!
//! Every framed message reaches md's ring through one function, [`push_framed`]: from the
//! scratch buffer on the fast path (no input buffered: nothing is copied unless a remainder is
//! left), or from the flow's pooled input buffer ([`Clients::pump`]). Whatever stopped it is one
//! [`Pump`] outcome, and [`Clients::settle`] is the one place that acts on it.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Instant;

use config::Framing;
use shmq::frame::{self, FlowId, Kind, OpenInfo};
use shmq::ring::PushError;

use super::clients::Lst;
use super::{Clients, Cx, Links};
use crate::counters::Io;
use crate::flows::{AfterFlush, Flow, InputEnd, ListId, NO_MD, Peer, Req, State, TooLong};
use crate::framing::{self, Next, Refusal};

/// Reads per readiness event of one socket before moving on (fairness; level-triggered epoll
/// reports it again).
const READS_PER_EVENT: usize = 4;

/// Outcome of pushing what a flow owes its md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pump {
    /// Everything that could go went; the rest is an incomplete message.
    Done,
    /// md `.0`'s ring is full: wait on its blocked queue.
    Blocked(u32),
    /// `request` dispatch: `pipeline_depth` requests are in flight; the rest waits (unread)
    /// until a reply ends.
    Pipeline,
    /// The framer refused the input: a message above `shared.max_message` (or the ring's largest
    /// frame), a malformed one, a head over its limits.
    Refused(Refusal),
    /// The message just pushed was the connection's last ([`Next::Last`]): read no more.
    Last,
    /// md `.0`'s ring refused a frame as corrupt: that md is lost.
    Corrupt(u32),
    /// The flow's md has no ring (or, under `request` dispatch, no md is live).
    MdGone,
}

/// Why [`push_framed`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// All of `data` was consumed.
    Empty,
    /// What is left is an incomplete message; `scanned` of it hold no boundary.
    Incomplete { scanned: usize },
    /// One of the `Pump` failures.
    Failed(Pump),
}

fn push_failed(e: PushError, md: u32) -> Pump {
    match e {
        PushError::Full => Pump::Blocked(md),
        PushError::TooLarge { .. } => Pump::Refused(Refusal::TooLong),
        PushError::Corrupt => Pump::Corrupt(md),
    }
}

/// Pushes one framed message of flow `f` (id `id`) to md: under `flow` dispatch into its md's
/// ring; under `request` dispatch to the least-loaded live md (OPEN first if that md does not
/// know the flow yet), recording the request in flight (sent at `now`; if credit is held back
/// from that md, the flow joins the credit watch list, see `dispatch`).
fn push_one(
    links: &mut Links,
    (id, now): (FlowId, Instant),
    f: &mut Flow,
    lst: &Lst,
    credit: u64,
    watch: &mut Vec<u32>,
    msg: &[u8],
) -> Result<(), Pump> {
    if !f.rq.on {
        let Some((tx, pushed)) = links.tx(f.md) else { return Err(Pump::MdGone) };
        tx.try_push(id, Kind::Data, 0, msg).map_err(|e| push_failed(e, f.md))?;
        *pushed = true;
        if f.owed == 0 {
            f.owed_since = now;
        }
        f.owed += 1;
        // Credit held back while md works on a request: watched (see `dispatch`).
        if f.drained > 0 && !f.in_credit_watch && !f.in_drained_list {
            f.in_credit_watch = true;
            watch.push(id.slot());
        }
        return Ok(());
    }
    if f.rq.full() {
        return Err(Pump::Pipeline);
    }
    let Some(i) = links.choose_request(&lst.mds) else { return Err(Pump::MdGone) };
    let Some((tx, pushed)) = links.tx(i) else { return Err(Pump::MdGone) };
    if f.rq.peer_mut(i).is_none() {
        let info = OpenInfo { credit, peer: f.peer, service: &lst.service };
        let mut b = [0u8; 32 + frame::MAX_SERVICE_NAME];
        let Ok(len) = info.encode(&mut b) else { return Err(Pump::MdGone) };
        tx.try_push(id, Kind::Open, frame::flags::OPEN_MARK_ENDS, &b[..len])
            .map_err(|e| push_failed(e, i))?;
        *pushed = true;
        f.rq.peers.push(Peer { md: i, drained: 0, owed: 0 });
    }
    tx.try_push(id, Kind::Data, 0, msg).map_err(|e| push_failed(e, i))?;
    *pushed = true;
    f.rq.q.push_back(Req { md: i, done: false, held: None, since: now });
    links.req_sent(i);
    if !f.in_credit_watch && f.rq.peer_mut(i).is_some_and(|p| p.drained > 0) {
        f.in_credit_watch = true;
        watch.push(id.slot());
    }
    Ok(())
}

/// Pushes the complete messages at the front of `data` with `push`, in order. `scanned`: bytes
/// at the front of `data` already known to hold no boundary. Returns the bytes consumed, the
/// number of messages pushed, and why it stopped. The one framing-to-ring path: the scratch
/// fast path and the buffered path both come here, under either dispatch.
#[inline]
fn push_framed(
    framing: Framing,
    data: &[u8],
    mut scanned: usize,
    lim: &super::clients::Limits,
    mut push: impl FnMut(&[u8]) -> Result<(), Pump>,
) -> (usize, u64, Stop) {
    let mut off = 0;
    let mut pushed = 0;
    loop {
        if off == data.len() {
            return (off, pushed, Stop::Empty);
        }
        let refused = |r| (off, pushed, Stop::Failed(Pump::Refused(r)));
        let next = framing::next_message_with(
            framing,
            &data[off..],
            scanned,
            lim.max_msg,
            &lim.http,
            &lim.resp,
        );
        let (start, end, consumed, last) = match next {
            // An empty command the framer skips (`resp`): nothing goes to md.
            Next::Message { start, end, consumed } if start == end => {
                off += consumed;
                scanned = 0;
                continue;
            }
            Next::Message { start, end, consumed } => (start, end, consumed, false),
            Next::Last { start, end, consumed } => (start, end, consumed, true),
            Next::Incomplete { scanned } => return (off, pushed, Stop::Incomplete { scanned }),
            Next::TooLong => return refused(Refusal::TooLong),
            Next::Malformed => return refused(Refusal::Malformed),
            Next::HeadTooLarge => return refused(Refusal::HeadTooLarge),
            Next::Invalid(line) => return refused(Refusal::Invalid(line)),
        };
        if let Err(r) = push(&data[off + start..off + end]) {
            return (off, pushed, Stop::Failed(r));
        }
        pushed += 1;
        off += consumed;
        scanned = 0;
        if last {
            return (off, pushed, Stop::Failed(Pump::Last));
        }
    }
}

impl Clients {
    /// The flow's socket is readable: read up to [`READS_PER_EVENT`] times, pushing complete
    /// messages as they come.
    pub(super) fn on_readable(&mut self, cx: &mut Cx, links: &mut Links, slot: u32) {
        let framing = self.framing(slot);
        let read_size = match framing {
            Framing::Raw => self.lim.read_size.min(self.lim.max_msg),
            _ => self.lim.read_size,
        };
        let limit = framing::input_capacity(framing, self.lim.max_msg, read_size);
        for _ in 0..READS_PER_EVENT {
            let f = self.flows.get_mut(slot);
            if !(f.state == State::Open && f.wants_input()) {
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
                    self.on_eof(cx, links, slot);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close_flow(cx, links, slot, Io::ClosedByPeer);
                    return;
                }
            };
            cx.c[Io::BytesIn] += n as u64;
            self.touch(cx, slot);
            let ok = if buffered {
                self.after_input(cx, links, slot)
            } else {
                self.push_scratch(cx, links, slot, framing, n)
            };
            if !ok {
                return;
            }
            if n < read_size {
                break;
            }
        }
        self.update_interest(cx, slot);
    }

    /// Fast path: `n` fresh bytes in the scratch buffer and no buffered input. Pushes every
    /// complete message straight from scratch; copies a remainder (incomplete message, or
    /// messages the full ring refused) into a pooled buffer. False if the flow closed.
    fn push_scratch(
        &mut self,
        cx: &mut Cx,
        links: &mut Links,
        slot: u32,
        framing: Framing,
        n: usize,
    ) -> bool {
        let id = self.flows.id(slot);
        let Self { flows, scratch, listeners, lim, credit_watch, .. } = self;
        let f = flows.get_mut(slot);
        let lst = &listeners[f.listener as usize];
        let (off, frames, stop) = push_framed(framing, &scratch[..n], 0, lim, |m| {
            push_one(links, (id, cx.now), f, lst, lim.credit, credit_watch, m)
        });
        cx.c[Io::MessagesIn] += frames;
        let (r, scanned) = match stop {
            Stop::Empty => (Pump::Done, 0),
            Stop::Incomplete { scanned } => (Pump::Done, scanned),
            Stop::Failed(r) => (r, 0),
        };
        if !matches!(r, Pump::Done | Pump::Blocked(_) | Pump::Pipeline) {
            return self.settle(cx, links, slot, r);
        }
        if off < n {
            let mut buf = self.pool.get();
            buf.extend(&self.scratch[off..n]);
            buf.scanned = scanned;
            self.flows.get_mut(slot).input = Some(buf);
            match r {
                Pump::Blocked(md) => self.block(cx, links, slot, md),
                _ => {
                    self.flows.get_mut(slot).since = cx.now;
                    self.flows.push_back(ListId::Deadline, slot);
                }
            }
        }
        true
    }

    /// After bytes were appended to the flow's input buffer (or its input ended): push what is
    /// complete, keep the rest, maintain the deadline list. False if the flow closed.
    pub(super) fn after_input(&mut self, cx: &mut Cx, links: &mut Links, slot: u32) -> bool {
        let r = self.pump(cx, links, slot);
        self.settle(cx, links, slot, r) && self.track_deadline(cx, slot)
    }

    /// Keeps the flow in the deadline list exactly while it holds an incomplete message. False
    /// if the flow is no longer open.
    pub(super) fn track_deadline(&mut self, cx: &Cx, slot: u32) -> bool {
        let f = self.flows.get(slot);
        if f.state != State::Open {
            return false;
        }
        if f.input.is_none() {
            self.flows.remove(ListId::Deadline, slot);
        } else if !self.flows.is_linked(ListId::Deadline, slot) {
            self.flows.get_mut(slot).since = cx.now;
            self.flows.push_back(ListId::Deadline, slot);
        }
        true
    }

    /// Acts on a [`Pump`] outcome: a full ring blocks the flow, a refused message gets its
    /// error reply, a last message ends the input, a lost md closes the flow. False if the flow
    /// is closed, closing, or reads no more.
    pub(super) fn settle(&mut self, cx: &mut Cx, links: &mut Links, slot: u32, r: Pump) -> bool {
        match r {
            Pump::Done | Pump::Pipeline => true,
            Pump::Blocked(md) => {
                self.block(cx, links, slot, md);
                true
            }
            Pump::Refused(why) => {
                cx.c[Io::FramingErrors] += 1;
                self.end_input(cx, links, slot, Some(why));
                false
            }
            Pump::Last => {
                self.end_input(cx, links, slot, None);
                false
            }
            Pump::Corrupt(md) => {
                if let Some(m) = links.get_mut(md) {
                    m.lost = true;
                }
                self.close_flow(cx, links, slot, Io::ClosedMdGone);
                false
            }
            Pump::MdGone => {
                self.close_flow(cx, links, slot, Io::ClosedMdGone);
                false
            }
        }
    }

    /// The client half-closed: read no more; md gets the buffered messages (a last line without
    /// `\n` counts), then EOF.
    fn on_eof(&mut self, cx: &mut Cx, links: &mut Links, slot: u32) {
        self.flows.get_mut(slot).input_end = InputEnd::Eof { by_peer: true, sent: false };
        self.flows.remove(ListId::Deadline, slot);
        if self.after_input(cx, links, slot) && self.finish_if_done(cx, links, slot) {
            self.update_interest(cx, slot);
        }
    }

    /// The framer ended the flow's input: it refused a message (`why`: line services get an
    /// error line, http ones a 4xx response, others just a close), or the message before was the
    /// connection's last (`None`: HTTP `Connection: close`). Nothing more is read; the error
    /// reply goes out after the replies owed for the messages before it, then the connection
    /// lingers (a FIN after the last reply, never an RST over it): under `flow` dispatch md gets
    /// EOF and the reply is written when its CLOSE comes (`output`); under `request` dispatch it
    /// is queued as the reply of a pseudo-request at the end of the pipeline (`dispatch`).
    fn end_input(&mut self, cx: &mut Cx, links: &mut Links, slot: u32, why: Option<Refusal>) {
        let framing = self.framing(slot);
        let f = self.flows.get_mut(slot);
        if let Some(b) = f.input.take() {
            self.pool.put(b);
        }
        self.flows.remove(ListId::Deadline, slot);
        let reply = why.and_then(|r| framing::refusal_reply(framing, r));
        if why.is_some() && reply.is_none() {
            self.close_flow(cx, links, slot, Io::ClosedOversized);
            return;
        };
        let f = self.flows.get_mut(slot);
        f.refusal = why;
        if !f.rq.on {
            // Read no more; md gets EOF after what it has, answers it, then CLOSEs.
            f.too_long = TooLong::AwaitMd;
            f.input_end = InputEnd::Eof { by_peer: false, sent: false };
            let r = self.pump(cx, links, slot);
            if self.settle(cx, links, slot, r) {
                self.update_interest(cx, slot);
            }
            return;
        }
        // `request` dispatch: io_conn owns the EOF; nothing more goes to md.
        f.too_long = TooLong::Queued;
        f.input_end = InputEnd::Eof { by_peer: false, sent: true };
        match reply {
            Some(reply) if !f.rq.q.is_empty() => {
                let mut b = self.pool.get();
                b.extend(&reply);
                f.rq.q.push_back(Req { md: NO_MD, done: true, held: Some(b), since: cx.now });
                self.update_interest(cx, slot);
            }
            Some(_) => self.send_error_then_linger(cx, links, slot),
            // The last request's reply is still coming: `finish_if_done` lingers after it.
            None => {
                if self.finish_if_done(cx, links, slot) {
                    self.update_interest(cx, slot);
                }
            }
        }
    }

    /// Writes the error reply the flow owes ([`crate::flows::Flow::refusal`], queued behind
    /// output already queued; none after a last message) and lingers once it is flushed.
    pub(super) fn send_error_then_linger(&mut self, cx: &mut Cx, links: &mut Links, slot: u32) {
        let reply = self
            .flows
            .get(slot)
            .refusal
            .and_then(|r| framing::refusal_reply(self.framing(slot), r));
        self.flows.get_mut(slot).after_flush = AfterFlush::Linger;
        if let Some(reply) = reply {
            if !self.send_to_client(cx, links, slot, &reply, false) {
                return; // the write failed and closed the flow
            }
        }
        if self.flows.get(slot).output_len() == 0 {
            self.linger(cx, slot);
        } else {
            // Lingers once the error reply is flushed.
            self.update_interest(cx, slot);
        }
    }

    /// After an error reply is flushed: shut our side down (FIN after the reply) and discard
    /// input until the client closes, within the message deadline.
    pub(super) fn linger(&mut self, cx: &Cx, slot: u32) {
        let f = self.flows.get_mut(slot);
        if let Some(s) = f.sock.as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        f.state = State::Lingering;
        f.after_flush = AfterFlush::Serve;
        f.since = cx.now;
        self.flows.move_to_back(ListId::Deadline, slot);
        self.update_interest(cx, slot);
    }

    /// Reads and drops input of a lingering flow; closes it at EOF or error. After
    /// READS_PER_EVENT reads it yields (level-triggered epoll reports it again).
    pub(super) fn discard_input(&mut self, cx: &mut Cx, links: &mut Links, slot: u32) {
        for _ in 0..READS_PER_EVENT {
            let Some(sock) = self.flows.get(slot).sock.as_ref() else { return };
            let mut sock: &TcpStream = sock;
            match sock.read(&mut self.scratch) {
                Ok(0) => return self.close_flow(cx, links, slot, self.linger_reason(slot)),
                Ok(n) => cx.c[Io::BytesIn] += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close_flow(cx, links, slot, self.linger_reason(slot)),
            }
        }
    }

    /// Pushes what an open flow owes its md, in order: OPEN, complete messages, a last partial
    /// line at EOF, EOF.
    pub(super) fn pump(&mut self, cx: &mut Cx, links: &mut Links, slot: u32) -> Pump {
        let id = self.flows.id(slot);
        let Self { flows, listeners, pool, lim, credit_watch, .. } = self;
        let f = flows.get_mut(slot);
        let lst = &listeners[f.listener as usize];
        if f.open_pending {
            // `flow` dispatch: OPEN to the md the flow is bound to (`request` dispatch opens the
            // flow on each md with its first request there, in `push_one`).
            let Some((tx, pushed)) = links.tx(f.md) else { return Pump::MdGone };
            let info = OpenInfo { credit: lim.credit, peer: f.peer, service: &lst.service };
            let mut b = [0u8; 32 + frame::MAX_SERVICE_NAME];
            let Ok(len) = info.encode(&mut b) else { return Pump::MdGone };
            // Reply ends marked under `flow` dispatch too: `owed` counts the replies in flight,
            // which a handover waits for (docs/ARCHITECTURE.md "Handover").
            match tx.try_push(id, Kind::Open, frame::flags::OPEN_FLOW_ENDS, &b[..len]) {
                Ok(()) => {
                    *pushed = true;
                    f.open_pending = false;
                }
                Err(PushError::TooLarge { .. }) => return Pump::MdGone,
                Err(e) => return push_failed(e, f.md),
            }
        }
        if let Some(mut buf) = f.input.take() {
            let (consumed, frames, stop) =
                push_framed(lst.framing, buf.filled(), buf.scanned, lim, |m| {
                    push_one(links, (id, cx.now), f, lst, lim.credit, credit_watch, m)
                });
            cx.c[Io::MessagesIn] += frames;
            buf.consume(consumed);
            let mut failed = None;
            match stop {
                Stop::Empty => {}
                Stop::Failed(r) => failed = Some(r),
                Stop::Incomplete { scanned } => {
                    buf.scanned = scanned;
                    if f.input_end != InputEnd::Reading && !buf.is_empty() {
                        if matches!(lst.framing, Framing::Len32 | Framing::Http) {
                            // A truncated message at EOF is a framing error; drop it.
                            cx.c[Io::FramingErrors] += 1;
                            buf.clear();
                        } else {
                            // A last line without `\n`: a message all the same.
                            match push_one(
                                links,
                                (id, cx.now),
                                f,
                                lst,
                                lim.credit,
                                credit_watch,
                                buf.filled(),
                            ) {
                                Ok(()) => {
                                    cx.c[Io::MessagesIn] += 1;
                                    buf.clear();
                                }
                                Err(r) => failed = Some(r),
                            }
                        }
                    }
                }
            }
            let restarted = frames > 0 && !buf.is_empty();
            if buf.is_empty() {
                pool.put(buf);
            } else {
                if restarted {
                    // A message left the front: the incomplete one behind it starts now. Only
                    // then: more bytes of the same message do not restart its clock (slowloris).
                    f.since = cx.now;
                }
                f.input = Some(buf);
            }
            if restarted && flows.is_linked(ListId::Deadline, slot) {
                // `since` moved: to the back, so the list stays ordered by deadline (the timer
                // looks only at its front).
                flows.move_to_back(ListId::Deadline, slot);
            }
            if let Some(r) = failed {
                return r;
            }
        }
        let f = flows.get_mut(slot);
        if let InputEnd::Eof { by_peer, sent: false } = f.input_end {
            if f.rq.on {
                // `request` dispatch: io_conn owns the EOF; it closes once every reply it owes
                // is sent (`Clients::finish_if_done`). md instances get CLOSE then.
                f.input_end = InputEnd::Eof { by_peer, sent: true };
                return Pump::Done;
            }
            let Some((tx, pushed)) = links.tx(f.md) else { return Pump::MdGone };
            match tx.try_push(id, Kind::Eof, 0, &[]) {
                Ok(()) => {
                    *pushed = true;
                    f.input_end = InputEnd::Eof { by_peer, sent: true };
                }
                Err(PushError::TooLarge { .. }) => return Pump::MdGone,
                Err(e) => return push_failed(e, f.md),
            }
        }
        Pump::Done
    }

    /// Pushes the CLOSE a Closing flow owes its md (under `request` dispatch: each md it was
    /// opened on) and frees the slot. `Err(md)`: md `md`'s ring is full; the caller queues the
    /// flow there and the rest waits.
    pub(super) fn pump_closing(&mut self, links: &mut Links, slot: u32) -> Result<(), u32> {
        let f = self.flows.get_mut(slot);
        if f.rq.on {
            while let Some(p) = f.rq.peers.last().copied() {
                if links.push_close(p.md, f.close_id) == Err(PushError::Full) {
                    return Err(p.md);
                }
                f.rq.peers.pop();
            }
        } else if links.push_close(f.md, f.close_id) == Err(PushError::Full) {
            return Err(f.md);
        }
        self.flows.release(slot);
        Ok(())
    }

    /// Queues the flow on md `md`'s blocked list (stops reading it).
    fn block(&mut self, cx: &mut Cx, links: &mut Links, slot: u32, md: u32) {
        let f = self.flows.get_mut(slot);
        if f.blocked {
            return;
        }
        f.blocked = true;
        links.block(md, slot, f.generation);
        cx.c[Io::BackpressurePauses] += 1;
        self.update_interest(cx, slot);
    }

    /// Retries the flows blocked on each md's full ring, oldest first, until one still does
    /// not fit.
    pub(super) fn retry_blocked(&mut self, cx: &mut Cx, links: &mut Links) {
        for i in 0..links.len() {
            while let Some((slot, generation)) = links.front_blocked(i) {
                let f = self.flows.get(slot);
                if f.generation != generation || !f.blocked {
                    links.pop_blocked(i as u32);
                    continue;
                }
                if f.state == State::Closing {
                    match self.pump_closing(links, slot) {
                        Err(m) if m == i as u32 => break, // still full: this queue waits
                        Err(m) => {
                            // Done here; the next CLOSE waits on another md's ring.
                            links.pop_blocked(i as u32);
                            links.block(m, slot, generation);
                        }
                        Ok(()) => {
                            links.pop_blocked(i as u32);
                        }
                    }
                    continue;
                }
                let r = self.pump(cx, links, slot);
                if r == Pump::Blocked(i as u32) {
                    break;
                }
                links.pop_blocked(i as u32);
                self.flows.get_mut(slot).blocked = false;
                if self.settle(cx, links, slot, r) && self.track_deadline(cx, slot) {
                    self.update_interest(cx, slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shmq::layout::Direction;
    use shmq::ring::{Consumer, HeapMemory, Producer};

    use super::*;

    fn ring() -> (Producer, Consumer) {
        let mem = Arc::new(HeapMemory::new_ring(4096, 256, Direction::ToMd));
        let tx = Producer::attach(mem.clone(), 0, None).expect("producer");
        let rx = Consumer::attach(mem, 0).expect("consumer");
        (tx, rx)
    }

    fn lim(max_msg: usize) -> super::super::clients::Limits {
        super::super::clients::Limits {
            max_msg,
            read_size: 1024,
            credit: 1024,
            credit_limit: 1024,
            idle: None,
            deadline: None,
            http: framing::http::Limits::default(),
            resp: framing::resp::Limits::UNLIMITED,
        }
    }

    fn drain(rx: &mut Consumer) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        rx.drain(1000, |f| v.push(f.payload.to_vec())).expect("drain");
        v
    }

    #[test]
    fn push_framed_pushes_complete_lines_and_reports_the_rest() {
        let (mut tx, mut rx) = ring();
        let (off, n, stop) = push_framed(Framing::Line, b"a\nbc\nde", 0, &lim(64), |msg| {
            tx.try_push(FlowId(9), Kind::Data, 0, msg).map_err(|e| push_failed(e, 0))
        });
        assert_eq!((off, n), (5, 2));
        assert_eq!(stop, Stop::Incomplete { scanned: 2 });
        tx.flush();
        assert_eq!(drain(&mut rx), vec![b"a\n".to_vec(), b"bc\n".to_vec()]);
    }

    #[test]
    fn push_framed_stops_at_a_full_ring_without_losing_a_message() {
        let (mut tx, mut rx) = ring();
        let line = [b'x'; 200];
        let mut data = Vec::new();
        for _ in 0..40 {
            data.extend_from_slice(&line);
            data.push(b'\n');
        }
        let (off, n, stop) = push_framed(Framing::Line, &data, 0, &lim(1024), |msg| {
            tx.try_push(FlowId(1), Kind::Data, 0, msg).map_err(|e| push_failed(e, 0))
        });
        assert_eq!(stop, Stop::Failed(Pump::Blocked(0)));
        assert!(n > 0 && (n as usize) < 40);
        assert_eq!(off, n as usize * 201, "consumed exactly the pushed messages");
        tx.flush();
        assert_eq!(drain(&mut rx).len(), n as usize);
        // The rest goes once there is room, in order.
        let (off2, n2, stop2) = push_framed(Framing::Line, &data[off..], 0, &lim(1024), |msg| {
            tx.try_push(FlowId(1), Kind::Data, 0, msg).map_err(|e| push_failed(e, 0))
        });
        assert!(n2 > 0);
        assert!(matches!(stop2, Stop::Empty | Stop::Failed(Pump::Blocked(0))), "{stop2:?}");
        assert_eq!(off2, n2 as usize * 201);
    }

    #[test]
    fn push_framed_reports_an_oversized_line() {
        let (mut tx, _rx) = ring();
        let (off, n, stop) = push_framed(Framing::Line, b"ok\nxxxxxxxxxx", 0, &lim(8), |msg| {
            tx.try_push(FlowId(1), Kind::Data, 0, msg).map_err(|e| push_failed(e, 0))
        });
        assert_eq!((off, n), (3, 1));
        assert_eq!(stop, Stop::Failed(Pump::Refused(Refusal::TooLong)));
    }

    #[test]
    fn push_framed_stops_after_a_last_http_request_and_before_a_bad_one() {
        let (mut tx, mut rx) = ring();
        let a = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
        let b = b"GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let data = [&a[..], b, a].concat();
        let (off, n, stop) = push_framed(Framing::Http, &data, 0, &lim(4096), |msg| {
            tx.try_push(FlowId(1), Kind::Data, 0, msg).map_err(|e| push_failed(e, 0))
        });
        assert_eq!((off, n, stop), (a.len() + b.len(), 2, Stop::Failed(Pump::Last)));
        tx.flush();
        assert_eq!(drain(&mut rx), vec![a.to_vec(), b.to_vec()]);
        // A bad request after a good one: the good one goes, then the refusal.
        let data = [&a[..], b"BAD\r\n\r\n"].concat();
        let (off, n, stop) = push_framed(Framing::Http, &data, 0, &lim(4096), |msg| {
            tx.try_push(FlowId(1), Kind::Data, 0, msg).map_err(|e| push_failed(e, 0))
        });
        assert_eq!((off, n, stop), (a.len(), 1, Stop::Failed(Pump::Refused(Refusal::Malformed))));
    }
}
