//! `request` dispatch: each complete request of a connection goes to the least-loaded live md
//! (`push_one` in `input`), and the replies go back to the client in request order.
//!
//! # The rules (issue 10)
//!
//! * An md gets OPEN for a connection (flag `OPEN_MARK_ENDS`) before its first request of that
//!   connection, and CLOSE when the connection ends. md marks where each reply ends
//!   (`DATA_END`), so io_conn knows which request a reply byte belongs to: the oldest request
//!   of that connection on that md whose reply has not ended.
//! * The request at the head of the connection's order is written to the socket as its reply
//!   comes. A reply of a later request is **held** in a pooled buffer until it reaches the head.
//!   Every md has its own output credit for the connection (the credit in its OPEN): what it sent
//!   and io_conn has not flushed to the client is at most that, so a held reply is bounded by it
//!   too — a STREAM behind another STREAM fills its credit and waits until it reaches the head,
//!   is flushed, and earns DRAINED. A connection holds at most (md instances in use) × credit.
//! * At most `pipeline_depth` requests are in flight per connection; beyond it the socket is not
//!   read (nothing is dropped).
//! * io_conn owns EOF: after the client's half-close it sends md nothing more, and closes once
//!   it has sent every reply it owes.
//! * An md CLOSE at request k: the requests behind k are dropped, and counted
//!   (`requests_dropped`); the replies up to k are sent, then the connection closes.
//! * A reply end with `DATA_CLOSE` (the service closed the connection after it, e.g. `QUIT`)
//!   cuts the same way right after that request, whichever md the later ones went to.
//! * PAUSE/RESUME count only from the md holding the head request.
//!
//! # Returning credit
//!
//! Reply bytes flushed to the client are owed back to the md that sent them (`Peer::drained`),
//! but a DRAINED frame per reply would double the frames md reads (one request, one DRAINED:
//! measured 2.0 frames per request under wrk, docs/BENCHMARKS.md). md only needs credit back
//! when it runs short, so io_conn returns it:
//!
//! * at once when a quarter of the credit is owed to one md (`flush_drained`): md then still has
//!   three quarters to write into, so a reply that streams faster than the client reads never
//!   stalls on credit held here;
//! * otherwise only if md may be waiting for it: the flow joins the credit watch list when credit
//!   is held back from an md working on one of its requests (a request pushed to it, or reply
//!   bytes of an unfinished request flushed). Once per [`SHORT_TICK`] the list is looked at: an md
//!   with a request unfinished for a whole tick gets its credit (a service may wait for more room
//!   than the credit minus what is held back), flows whose requests are all done leave the list.
//!
//! So a request/response client costs md no DRAINED frame until a quarter of the credit (64 KiB
//! by default: hundreds of small replies) is owed, and a request that waits for credit gets it
//! within one to two ticks.
//!
//! `flow` dispatch follows the same rule with one md per connection (`output::add_drained`): a
//! sixteenth of the credit goes back with the next frames to that md or within a tick; less
//! joins the credit watch only while md owes the connection a reply (`Flow::owed`), and goes
//! back once the oldest owed reply has been unfinished for a whole tick (`Flow::owed_since`).
//! Until then it stays here: it used to go back once per tick and connection, which at kv
//! `-c 50` was a DRAINED frame for every third request (docs/BENCHMARKS.md, "Credit held
//! back under flow dispatch").

use std::time::Instant;

use shmq::frame::{self, FlowId, Kind};

use super::{Clients, Cx, Links, SHORT_TICK};
use crate::counters::Io;
use crate::flows::{AfterFlush, InputEnd, NO_MD, Peer, ReqFlow, State, TooLong};

impl Clients {
    /// A DATA frame of md `i` for `request`-dispatched flow `slot`.
    pub(super) fn on_reply(
        &mut self,
        cx: &mut Cx,
        links: &mut Links,
        slot: u32,
        i: u32,
        payload: &[u8],
        flags: u16,
    ) {
        let end = flags & frame::flags::DATA_END != 0;
        // Overrun: above the largest credit an OPEN carried (a reload may have lowered it).
        let credit = self.lim.credit_limit;
        let f = self.flows.get_mut(slot);
        let Some(k) = f.rq.open_req(i) else {
            // A reply for a request dropped after an md CLOSE: stale.
            cx.c[Io::StaleFrames] += 1;
            return;
        };
        let Some(p) = f.rq.peer_mut(i) else {
            cx.c[Io::StaleFrames] += 1;
            return;
        };
        p.owed += payload.len() as u64;
        if p.owed > credit {
            self.close_flow(cx, links, slot, Io::ClosedCreditOverrun);
            return;
        }
        if k == 0 {
            if !payload.is_empty() && !self.send_owned(cx, links, slot, payload, i) {
                return; // the write failed and closed the flow
            }
        } else if !payload.is_empty() {
            let req = &mut self.flows.get_mut(slot).rq.q[k];
            req.held.get_or_insert_with(|| self.pool.get()).extend(payload);
        }
        if end {
            self.flows.get_mut(slot).rq.q[k].done = true;
            links.req_done(i);
            links.req_answered(i);
            if flags & frame::flags::DATA_CLOSE != 0 {
                // The service closed the connection after this reply (QUIT): nothing behind
                // it is answered, whichever md it went to; its CLOSE follows.
                self.cut_after(cx, links, slot, k);
                return self.advance_head(cx, links, slot);
            }
            if k == 0 {
                self.advance_head(cx, links, slot);
            }
        }
    }

    /// md `i` sent CLOSE for `request`-dispatched flow `slot`: it forgot the flow. The request
    /// it was working on ends there, those behind it are dropped, and the connection closes once
    /// the replies up to it are sent.
    pub(super) fn on_req_close(&mut self, cx: &mut Cx, links: &mut Links, slot: u32, i: u32) {
        let f = self.flows.get_mut(slot);
        f.rq.peers.retain(|p| p.md != i);
        let k = f.rq.open_req(i).unwrap_or(f.rq.q.len());
        if let Some(r) = f.rq.q.get_mut(k) {
            r.done = true;
            links.req_done(i);
            links.req_failed(i);
        }
        self.cut_after(cx, links, slot, k);
        self.advance_head(cx, links, slot);
    }

    /// Ends `request`-dispatched flow `slot` after request `k` (or after all of them): the
    /// requests behind it are dropped (counted), those not sent yet too, no more is read, and
    /// the connection closes once the replies up to `k` are written.
    fn cut_after(&mut self, cx: &mut Cx, links: &mut Links, slot: u32, k: usize) {
        let f = self.flows.get_mut(slot);
        let mut dropped = 0;
        while f.rq.q.len() > k + 1 {
            let r = f.rq.q.pop_back().expect("longer than k + 1");
            if !r.done {
                links.req_done(r.md);
            }
            if let Some(b) = r.held {
                self.pool.put(b);
            }
            dropped += 1;
        }
        // Requests not sent yet are dropped too.
        if let Some(b) = f.input.take() {
            self.pool.put(b);
        }
        if f.input_end == InputEnd::Reading {
            f.input_end = InputEnd::Eof { by_peer: false, sent: true };
        }
        if f.after_flush == AfterFlush::Serve {
            f.after_flush = AfterFlush::Close;
        }
        cx.c[Io::RequestsDropped] += dropped;
    }

    /// Pops the finished requests at the head; each new head's held reply goes to the socket.
    /// Then reads on if the pipeline has room, and closes the connection if nothing is owed.
    pub(super) fn advance_head(&mut self, cx: &mut Cx, links: &mut Links, slot: u32) {
        let mut popped = false;
        loop {
            let f = self.flows.get_mut(slot);
            match f.rq.q.front() {
                Some(r) if r.done => {
                    f.rq.q.pop_front();
                    f.md_paused = false; // PAUSE was the old head's md's
                    popped = true;
                }
                _ => break,
            }
            let Some(head) = f.rq.q.front_mut() else { break };
            let md = head.md;
            if let Some(b) = head.held.take() {
                let ok = self.send_owned(cx, links, slot, b.filled(), md);
                self.pool.put(b);
                if !ok {
                    return;
                }
            }
        }
        let f = self.flows.get(slot);
        if f.state != State::Open {
            return;
        }
        if popped && f.input.is_some() && f.after_flush == AfterFlush::Serve {
            // Complete requests may wait in the input buffer for room in the pipeline.
            if !self.after_input(cx, links, slot) {
                return;
            }
        }
        if self.finish_if_done(cx, links, slot) {
            self.update_interest(cx, slot);
        }
    }

    /// A `request`-dispatched connection whose input ended and whose every reply was handed to
    /// the socket: close it now, or once the output is flushed (or linger, after the error reply
    /// to a refused message or the reply to a last request). False if it closed or lingers.
    pub(super) fn finish_if_done(&mut self, cx: &mut Cx, links: &mut Links, slot: u32) -> bool {
        let f = self.flows.get_mut(slot);
        if !f.rq.on || !f.input_ended() || !f.rq.q.is_empty() || f.input.is_some() {
            return true;
        }
        if f.too_long == TooLong::Queued {
            // The error reply to a refused message (or the reply to the last request) was the
            // last reply: linger once it is out.
            f.after_flush = AfterFlush::Linger;
            if f.output_len() > 0 {
                return true;
            }
            self.linger(cx, slot);
            return false;
        }
        if f.output_len() > 0 {
            f.after_flush = AfterFlush::Close;
            return true;
        }
        let why = if f.peer_eof() { Io::ClosedByPeer } else { Io::ClosedByMd };
        self.close_flow(cx, links, slot, why);
        false
    }

    /// Sends reply bytes of md `owner` ([`NO_MD`]: uncredited, e.g. a BROADCAST) to a
    /// `request`-dispatched connection: written at once if nothing is queued, the rest queued
    /// with its owner, so flushed bytes return credit to the md that sent them. False if the
    /// flow closed.
    pub(super) fn send_owned(
        &mut self,
        cx: &mut Cx,
        links: &mut Links,
        slot: u32,
        payload: &[u8],
        owner: u32,
    ) -> bool {
        let Some(written) = self.write_now(cx, links, slot, payload) else { return false };
        self.credit_flushed(cx, slot, owner, written as u64);
        if written < payload.len() {
            let rest = (payload.len() - written) as u64;
            let f = self.flows.get_mut(slot);
            f.output.get_or_insert_with(|| self.pool.get()).extend(&payload[written..]);
            match f.rq.segs.back_mut() {
                Some((md, n)) if *md == owner => *n += rest,
                _ => f.rq.segs.push_back((owner, rest)),
            }
            self.update_interest(cx, slot);
        }
        true
    }

    /// `n` bytes of md `owner`'s replies reached the client: they are owed back to it as credit
    /// (see "Returning credit" in the module docs for when).
    pub(super) fn credit_flushed(&mut self, cx: &Cx, slot: u32, owner: u32, n: u64) {
        if owner == NO_MD || n == 0 {
            return;
        }
        let quarter = (self.lim.credit / 4).max(1);
        let f = self.flows.get_mut(slot);
        let Some(p) = f.rq.peer_mut(owner) else { return };
        p.owed = p.owed.saturating_sub(n);
        p.drained += n;
        f.drained += n;
        let due = p.drained >= quarter;
        if due && !f.in_drained_list {
            f.in_drained_list = true;
            self.drained_list.push(slot);
            if self.drained_force_at.is_none() {
                self.drained_force_at = Some(cx.now + SHORT_TICK);
            }
        } else if !due && !f.in_credit_watch && f.rq.open_req(owner).is_some() {
            f.in_credit_watch = true;
            self.credit_watch.push(slot);
        }
    }

    /// `flushed` bytes left a `request`-dispatched connection's output queue: credit each to
    /// the md that sent it, oldest run first.
    pub(super) fn credit_queue_flushed(&mut self, cx: &Cx, slot: u32, mut flushed: u64) {
        while flushed > 0 {
            let f = self.flows.get_mut(slot);
            let Some((owner, n)) = f.rq.segs.front_mut() else { break };
            let take = flushed.min(*n);
            let owner = *owner;
            *n -= take;
            if *n == 0 {
                f.rq.segs.pop_front();
            }
            flushed -= take;
            self.credit_flushed(cx, slot, owner, take);
        }
    }

    /// Pushes the DRAINED frames of a `request`-dispatched flow in the DRAINED list: to each md
    /// owed at least a quarter of the credit. True if one could not go (its ring was full): the
    /// flow stays in the list and is retried.
    pub(super) fn flush_drained_peers(
        &mut self,
        cx: &mut Cx,
        links: &mut Links,
        slot: u32,
    ) -> bool {
        let quarter = (self.lim.credit / 4).max(1);
        let id = self.flows.id(slot);
        let f = self.flows.get_mut(slot);
        let mut retry = false;
        for p in f.rq.peers.iter_mut().filter(|p| p.drained >= quarter) {
            retry |= !push_drained(cx, links, id, p);
        }
        f.drained = f.rq.peers.iter().map(|p| p.drained).sum();
        retry
    }

    /// Looks at the credit watch list if it is due (once per [`SHORT_TICK`] while it is not
    /// empty): returns held-back credit to an md one of whose requests has been unfinished for a
    /// whole tick (it may wait for credit), keeps the flows whose requests are still young, and
    /// drops the others (their credit goes back with a later request, or once it reaches a
    /// quarter).
    pub(super) fn watch_credit(&mut self, cx: &mut Cx, links: &mut Links) {
        if self.credit_watch.is_empty() {
            self.credit_watch_at = None;
            return;
        }
        let Some(at) = self.credit_watch_at else {
            self.credit_watch_at = Some(cx.now + SHORT_TICK);
            return;
        };
        if cx.now < at {
            return;
        }
        let mut k = 0;
        while k < self.credit_watch.len() {
            let slot = self.credit_watch[k];
            let id = self.flows.id(slot);
            let f = self.flows.get_mut(slot);
            let mut keep = false;
            if f.state == State::Open && !f.rq.on {
                // `flow` dispatch: one md, whose requests run in order.
                if f.drained > 0 && !f.in_drained_list {
                    match credit_verdict((f.owed > 0).then_some(f.owed_since), cx.now) {
                        Verdict::Idle => {}
                        Verdict::Young => keep = true,
                        Verdict::Return => keep = !push_credit(cx, links, id, f.md, &mut f.drained),
                    }
                }
            } else if f.state == State::Open {
                let ReqFlow { q, peers, .. } = &mut f.rq;
                for p in peers.iter_mut().filter(|p| p.drained > 0) {
                    let oldest = q.iter().find(|r| r.md == p.md && !r.done).map(|r| r.since);
                    match credit_verdict(oldest, cx.now) {
                        Verdict::Idle => {}
                        Verdict::Young => keep = true,
                        Verdict::Return => keep |= !push_drained(cx, links, id, p),
                    }
                }
                f.drained = peers.iter().map(|p| p.drained).sum();
            }
            if keep {
                k += 1;
            } else {
                f.in_credit_watch = false;
                self.credit_watch.swap_remove(k);
            }
        }
        self.credit_watch_at = (!self.credit_watch.is_empty()).then(|| cx.now + SHORT_TICK);
    }
}

/// What the credit watch does with credit held back from an md, given when the oldest of the
/// flow's requests that md has not finished was sent (`None`: it has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// md works on none of the flow's requests: it cannot be waiting for this credit.
    Idle,
    /// The request is younger than a tick: look again next tick.
    Young,
    /// Unfinished for a whole tick: md may be waiting for room; return the credit now.
    Return,
}

pub(super) fn credit_verdict(oldest: Option<Instant>, now: Instant) -> Verdict {
    match oldest {
        None => Verdict::Idle,
        Some(t) if now.saturating_duration_since(t) >= SHORT_TICK => Verdict::Return,
        Some(_) => Verdict::Young,
    }
}

/// Pushes one DRAINED frame returning `p.drained` to md `p.md`; false if its ring was full (to be
/// retried).
fn push_drained(cx: &mut Cx, links: &mut Links, id: FlowId, p: &mut Peer) -> bool {
    push_credit(cx, links, id, p.md, &mut p.drained)
}

/// Pushes one DRAINED frame returning `*owed` bytes of flow `id`'s credit to md `md` and zeroes
/// `*owed`; false if its ring was full (to be retried). An md without a ring is owed nothing any
/// more.
fn push_credit(cx: &mut Cx, links: &mut Links, id: FlowId, md: u32, owed: &mut u64) -> bool {
    let Some((tx, pushed)) = links.tx(md) else {
        *owed = 0; // no ring: nobody to return it to
        return true;
    };
    match tx.try_push(id, Kind::Drained, 0, &frame::encode_drained(*owed)) {
        Ok(()) => {
            *pushed = true;
            *owed = 0;
            cx.c[Io::DrainedFrames] += 1;
            true
        }
        Err(_) => false,
    }
}
