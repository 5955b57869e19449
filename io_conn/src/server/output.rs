//! What md sends, and writing it to clients: md's frames (DATA, CLOSE, PAUSE/RESUME,
//! BROADCAST, HELLO), writes with a queue for partial ones, and the DRAINED frames that return
//! output credit to md.

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Instant;

use shmq::frame::{self, FlowId, Frame, Hello, Kind};

use super::clients::STAGE_MAX;
use super::{Clients, Cx, Links, SHORT_TICK};
use crate::counters::Io;
use crate::flows::{AfterFlush, ListId, NO_MD, State, TooLong};

impl Clients {
    /// One frame from md instance `i`'s ring, handled in place.
    pub(super) fn on_md_frame(&mut self, cx: &mut Cx, links: &mut Links, i: u32, fr: Frame<'_>) {
        if self.staged.is_some_and(|id| !(fr.kind == Kind::Data && fr.flowid == id)) {
            // Staged replies go out before anything else md sent after them.
            self.write_staged(cx, links);
        }
        match fr.kind {
            Kind::Data => {
                cx.c[Io::MessagesOut] += 1;
                let Some(slot) = self.md_flow(cx, i, fr.flowid) else { return };
                if self.flows.get(slot).rq.on {
                    return self.on_reply(cx, links, slot, i, fr.payload, fr.flags);
                }
                let f = self.flows.get_mut(slot);
                if !std::mem::replace(&mut f.md_answered, true) {
                    links.req_answered(i);
                }
                // One frame may complete the replies of a whole batch (`flags::ends_flags`).
                let ends = frame::flags::data_ends(fr.flags);
                f.owed = f.owed.saturating_sub(ends);
                if ends > 0 && f.owed > 0 {
                    f.owed_since = cx.now; // md goes on to the next one now
                }
                if fr.payload.is_empty() {
                    return; // only a reply's end
                }
                // md's output is a byte stream for every framing: a len32 service writes its own
                // length prefixes, as it reads them (io_conn passes them through).
                self.stage_reply(cx, links, fr.flowid, fr.payload);
            }
            Kind::Close => {
                let Some(slot) = self.md_flow(cx, i, fr.flowid) else { return };
                if self.flows.get(slot).rq.on {
                    return self.on_req_close(cx, links, slot, i);
                }
                let f = self.flows.get_mut(slot);
                if !f.md_answered && !f.input_ended() {
                    // Closed before a single reply while the client was still sending: a refusal
                    // (a wrong service, a broken md), not an answer to EOF. An md
                    // that refuses everything keeps no flows and would attract every new one.
                    links.req_failed(i);
                }
                if f.too_long == TooLong::AwaitMd {
                    // md answered what came before the refused (or last) message and forgot the
                    // flow: now the error reply, if any, then linger (md gets no CLOSE back).
                    f.too_long = TooLong::Queued;
                    return self.send_error_then_linger(cx, links, slot);
                }
                if f.after_flush == AfterFlush::Linger {
                    return; // an error reply is in flight: it lingers as planned
                }
                f.after_flush = AfterFlush::Close;
                if f.output_len() == 0 {
                    let why = if f.peer_eof() { Io::ClosedByPeer } else { Io::ClosedByMd };
                    self.close_flow(cx, links, slot, why);
                } else {
                    self.update_interest(cx, slot);
                }
            }
            Kind::Pause | Kind::Resume => {
                if fr.kind == Kind::Pause {
                    cx.c[Io::MdPauses] += 1;
                }
                let Some(slot) = self.md_flow(cx, i, fr.flowid) else { return };
                let f = self.flows.get_mut(slot);
                if f.rq.on && f.rq.q.front().is_none_or(|r| r.md != i) {
                    return; // only the md holding the head request pauses the connection
                }
                f.md_paused = fr.kind == Kind::Pause;
                self.update_interest(cx, slot);
            }
            Kind::Broadcast => match frame::decode_broadcast(fr.payload) {
                Ok((service, data)) => {
                    cx.c[Io::Broadcasts] += 1;
                    self.broadcast(cx, links, service, data);
                }
                Err(_) => cx.c[Io::BadFrames] += 1,
            },
            Kind::Hello => match Hello::decode(fr.payload) {
                Ok(h) if h.instance == i => {
                    if let Some(old) = links.forget(cx, i) {
                        log::warn!(
                            "md instance {i} attached again (pid {} -> {}); closing its old flows",
                            old.pid,
                            h.pid
                        );
                        self.close_md_flows(cx, links, i);
                    }
                    if links.on_hello(cx, i, &h) {
                        self.assign_unassigned(cx, links);
                    }
                }
                _ => {
                    cx.c[Io::BadFrames] += 1;
                    log::warn!("md instance {i} sent a bad HELLO; resetting its queue pair");
                    if let Some(m) = links.get_mut(i) {
                        m.lost = true;
                    }
                }
            },
            Kind::Leave => links.leave(i),
            _ => cx.c[Io::BadFrames] += 1,
        }
    }

    /// The open flow `id` names, if md `i` owns it; counts a stale frame otherwise.
    fn md_flow(&mut self, cx: &mut Cx, i: u32, id: FlowId) -> Option<u32> {
        match self.flows.lookup(id, State::Open) {
            Some(s) if self.flows.get(s).md == i => Some(s),
            Some(s) if self.flows.get(s).rq.peers.iter().any(|p| p.md == i) => Some(s),
            _ => {
                cx.c[Io::StaleFrames] += 1;
                None
            }
        }
    }

    /// Sends a BROADCAST's data to every open flow of `service`.
    fn broadcast(&mut self, cx: &mut Cx, links: &mut Links, service: &str, data: &[u8]) {
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
            if f.state != State::Open || l.service != service || f.after_flush != AfterFlush::Serve
            {
                continue;
            }
            self.send_to_client(cx, links, slot, data, false);
        }
    }

    /// `flow` dispatch: md's reply bytes are staged in one loop-wide buffer while the frames
    /// that follow are DATA of the same flow, and written with one `write` when another frame
    /// comes (any kind, any flow: [`Clients::on_md_frame`] writes the staged bytes first, so
    /// order is kept), at [`STAGE_MAX`] bytes, or when the drain of md's ring ends
    /// ([`Clients::write_staged`]). md pushes a flow's output frames one after another, so the
    /// replies to a pipelined batch cost one `write` however md split them into frames; the
    /// copy is of a few bytes per reply, and no per-flow buffer is held (9 000 connections
    /// answered in one drain would otherwise hold 9 000 pooled buffers).
    fn stage_reply(&mut self, cx: &mut Cx, links: &mut Links, id: FlowId, payload: &[u8]) {
        if self.staged != Some(id) {
            self.write_staged(cx, links);
            self.staged = Some(id);
        }
        self.staging.extend_from_slice(payload);
        if self.staging.len() >= STAGE_MAX {
            self.write_staged(cx, links);
        }
    }

    /// Writes the staged reply bytes ([`Clients::stage_reply`]) to their flow, if any.
    pub(super) fn write_staged(&mut self, cx: &mut Cx, links: &mut Links) {
        let Some(id) = self.staged.take() else { return };
        let buf = std::mem::take(&mut self.staging);
        if self.flows.lookup(id, State::Open).is_some() {
            self.send_to_client(cx, links, id.slot(), &buf, true);
        }
        self.staging = buf;
        self.staging.clear();
    }

    /// Sends `payload` to the client: writes at once if nothing is queued, queues the rest.
    /// `credited`: md paid credit for `payload` (DATA), not for BROADCAST. False if the flow
    /// closed.
    pub(super) fn send_to_client(
        &mut self,
        cx: &mut Cx,
        links: &mut Links,
        slot: u32,
        payload: &[u8],
        credited: bool,
    ) -> bool {
        if self.flows.get(slot).rq.on {
            // `request` dispatch: replies go through `on_reply`; what comes here (a BROADCAST,
            // an error line) is io_conn's own or uncredited.
            debug_assert!(!credited);
            return self.send_owned(cx, links, slot, payload, NO_MD);
        }
        let total = payload.len();
        let uncredited = if credited { 0 } else { total };
        let Some(written) = self.write_now(cx, links, slot, payload) else { return false };
        if written > 0 {
            let paid = written.saturating_sub(uncredited);
            self.add_drained(cx, slot, paid as u64);
        }
        if written < total {
            let f = self.flows.get_mut(slot);
            let buf = f.output.get_or_insert_with(|| self.pool.get());
            buf.extend(&payload[written..]);
            f.uncredited += (uncredited - written.min(uncredited)) as u64;
            let queued = f.output_len() as u64;
            let credit = self.lim.credit_limit;
            if queued - f.uncredited.min(queued) > credit || f.uncredited > credit {
                self.close_flow(cx, links, slot, Io::ClosedCreditOverrun);
                return false;
            }
            self.update_interest(cx, slot);
        }
        true
    }

    /// Writes `payload` to the client at once if nothing is queued before it (one `write`; a
    /// partial or refused write is the caller's to queue). Returns the bytes written (counted,
    /// the flow touched), or `None` if the flow has no socket or the write failed (then it was
    /// closed as an error).
    pub(super) fn write_now(
        &mut self,
        cx: &mut Cx,
        links: &mut Links,
        slot: u32,
        payload: &[u8],
    ) -> Option<usize> {
        let f = self.flows.get_mut(slot);
        let mut sock: &TcpStream = f.sock.as_ref()?;
        if f.output_len() > 0 {
            return Some(0);
        }
        let written = match sock.write(payload) {
            Ok(n) => n,
            Err(e)
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) =>
            {
                0
            }
            Err(_) => {
                self.close_flow(cx, links, slot, Io::ClosedError);
                return None;
            }
        };
        if written > 0 {
            cx.c[Io::BytesOut] += written as u64;
            self.touch(cx, slot);
        }
        Some(written)
    }

    /// The flow's socket is writable: flush its queued output; then close or linger if that was
    /// what the flush waited for.
    pub(super) fn on_writable(&mut self, cx: &mut Cx, links: &mut Links, slot: u32) {
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
            cx.c[Io::BytesOut] += flushed;
            let f = self.flows.get_mut(slot);
            if f.rq.on {
                self.credit_queue_flushed(cx, slot, flushed);
            } else {
                let free = flushed.min(f.uncredited);
                f.uncredited -= free;
                self.add_drained(cx, slot, flushed - free);
            }
            self.touch(cx, slot);
        }
        if failed {
            self.close_flow(cx, links, slot, Io::ClosedError);
            return;
        }
        let f = self.flows.get_mut(slot);
        if f.output.as_ref().is_some_and(|b| b.is_empty()) {
            if let Some(b) = f.output.take() {
                self.pool.put(b);
            }
            f.uncredited = 0;
            match f.after_flush {
                AfterFlush::Serve => {}
                AfterFlush::Linger => return self.linger(cx, slot),
                AfterFlush::Close => {
                    let why = if f.peer_eof() { Io::ClosedByPeer } else { Io::ClosedByMd };
                    return self.close_flow(cx, links, slot, why);
                }
            }
        }
        self.update_interest(cx, slot);
    }

    /// `n` credited bytes of a `flow`-dispatched connection reached the client. They go back to
    /// md with the DRAINED list once a sixteenth of the credit is owed; below that, only if md
    /// may be waiting for them: the flow joins the credit watch while a request is owed (see
    /// "Returning credit" in `dispatch`), and otherwise the credit stays here until more comes.
    fn add_drained(&mut self, cx: &Cx, slot: u32, n: u64) {
        if n == 0 {
            return;
        }
        let ride = (self.lim.credit / 16).max(1);
        let f = self.flows.get_mut(slot);
        f.drained += n;
        if f.drained < ride {
            if f.owed > 0 && !f.in_credit_watch && !f.in_drained_list {
                f.in_credit_watch = true;
                self.credit_watch.push(slot);
            }
            return;
        }
        if !f.in_drained_list {
            f.in_drained_list = true;
            self.drained_list.push(slot);
            if self.drained_force_at.is_none() {
                self.drained_force_at = Some(cx.now + SHORT_TICK);
            }
        }
    }

    /// DRAINED frames wait to be pushed, or held-back credit is watched (`dispatch`).
    pub(super) fn has_drained(&self) -> bool {
        !self.drained_list.is_empty() || !self.credit_watch.is_empty()
    }

    /// The deferred DRAINED frames are due.
    pub(super) fn drained_due(&self, now: Instant) -> bool {
        self.drained_force_at.is_some_and(|t| now >= t)
    }

    /// Pushes DRAINED for flows that flushed output. A flow is here with at least a sixteenth of
    /// the credit owed (`add_drained`; `request` dispatch: a quarter, to some md). Sent at once
    /// when a quarter of the credit is waiting, or a sixteenth when md gets other frames this
    /// iteration anyway; otherwise deferred up to [`SHORT_TICK`] (`force`), so md is never woken
    /// for credit alone more than once per millisecond. Smaller amounts go back only when md may
    /// be waiting for them: the credit watch (`dispatch::watch_credit`, looked at here once per
    /// tick).
    pub(super) fn flush_drained(&mut self, cx: &mut Cx, links: &mut Links, force: bool) {
        let quarter = (self.lim.credit / 4).max(1);
        let ride = (self.lim.credit / 16).max(1);
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
            if f.rq.on {
                if self.flush_drained_peers(cx, links, slot) {
                    k += 1;
                } else {
                    self.flows.get_mut(slot).in_drained_list = false;
                    self.drained_list.swap_remove(k);
                }
                continue;
            }
            let Some((tx, pushed)) = links.tx(f.md) else {
                k += 1;
                continue;
            };
            // A sixteenth of the credit (16 KiB by default) rides along with other frames to md;
            // the forced flush every SHORT_TICK returns the rest in one batch per md.
            if !(force || f.drained >= quarter || (*pushed && f.drained >= ride)) {
                k += 1;
                continue;
            }
            match tx.try_push(id, Kind::Drained, 0, &frame::encode_drained(f.drained)) {
                Ok(()) => {
                    *pushed = true;
                    f.drained = 0;
                    f.in_drained_list = false;
                    cx.c[Io::DrainedFrames] += 1;
                    self.drained_list.swap_remove(k);
                }
                Err(_) => k += 1,
            }
        }
        self.watch_credit(cx, links);
        self.drained_force_at = if self.drained_list.is_empty() {
            None
        } else if force {
            Some(cx.now + SHORT_TICK)
        } else {
            self.drained_force_at
        };
    }
}
