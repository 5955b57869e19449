//! The process around the loop: signals, the timer, md children and md deaths, the drain at
//! shutdown and the cleanup at exit.
//!
//! # When an md goes
//!
//! Its pidfd fires (or its ring turns out corrupt, or it breaks the protocol): [`Server::md_died`]
//! first delivers every frame it left in its `out` ring, handled as usual (replies reach their
//! clients, CLOSEs close), then ends each flow still bound to it that md did not CLOSE: input is
//! no longer read or forwarded, the output already queued is flushed, then a lingering close
//! (our side shut down for writing, the client's input discarded until it closes or the message
//! deadline passes: a FIN after the last reply, never an RST over it). Those closes are counted in
//! `closed_md_gone` when they happen; flows md had CLOSEd close as md asked (`closed_by_md`).
//! Only then is the pair reset (new generation), which also releases the dead md's claim on it
//! (`shmq::ring::holder`), so its successor may attach.
//!
//! An md that claimed the pair but died before io_conn saw its HELLO has no pidfd in the epoll
//! set: [`Server::check_holders`] (each timer tick) finds the dead holder and resets the pair.

use nix::sys::signal::Signal;
use shmq::stats::monotonic_ns;
use shmq::sys::Liveness;

use super::{Clients, Server, link};
use crate::counters::Io;
use crate::flows::{AfterFlush, InputEnd, ListId, NO_MD, State, TooLong};

/// Most `Inbound::poll` rounds when draining a gone md's ring. A dead producer's ring empties in
/// `capacity / (16 * 4096) + 1` rounds; the cap only bounds the loop if a live md keeps pushing
/// (an md lost for a protocol error may still run).
const DRAIN_ROUNDS: usize = 64;

impl Server<'_> {
    pub(super) fn on_signal(&mut self) {
        loop {
            let Some(sfd) = &self.signals else { return };
            match sfd.read_signal() {
                Ok(Some(si)) => match Signal::try_from(si.ssi_signo as i32) {
                    Ok(Signal::SIGTERM) => self.begin_drain("SIGTERM"),
                    Ok(Signal::SIGINT) => self.begin_drain("SIGINT"),
                    Ok(Signal::SIGUSR2) => self.begin_handover("SIGUSR2"),
                    Ok(Signal::SIGHUP) => {
                        let _ = self.reload("SIGHUP");
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

    pub(super) fn on_timer(&mut self) {
        self.clients.on_timer(&mut self.cx, &mut self.links);
        self.check_holders();
        self.start_due_children();
        if self.drain_until.is_some_and(|t| self.cx.now >= t) {
            let left = self.clients.flows.in_use();
            if left > 0 {
                log::warn!(
                    "drain deadline reached with {left} connections still open; closing them"
                );
            }
            self.clients.close_all(&mut self.cx, &mut self.links, Io::ClosedShutdown);
            self.exit = true;
        }
    }

    pub(super) fn start_due_children(&mut self) {
        let Some(ch) = self.children.as_mut() else { return };
        let now = self.cx.now;
        while let Some(i) = ch.due(now) {
            match ch.start(i, now) {
                Ok(fd) => {
                    let ev = nix::sys::epoll::EpollEvent::new(
                        nix::sys::epoll::EpollFlags::EPOLLIN,
                        super::token(super::K_CHILD, u64::from(i)),
                    );
                    if let Err(e) = self.cx.epoll.add(fd, ev) {
                        log::error!("watching md instance {i}: {e}");
                    }
                }
                Err(e) => log::error!("starting md instance {i} ({}): {e}", ch.bin().display()),
            }
        }
    }

    pub(super) fn on_child_exit(&mut self, i: u32) {
        let stopping = self.drain_until.is_some();
        let Some(ch) = self.children.as_mut() else { return };
        let (fd, pid) = ch.on_exit(i, self.cx.now, stopping);
        if let Some(fd) = fd {
            let _ = self.cx.epoll.delete(&fd);
        }
        let (live, _) = self.links.who(i);
        match (live.map(|p| p.pid), pid) {
            (Some(live), Some(pid)) if live == pid => self.md_died(i, "its process exited"),
            // It died before saying HELLO: it may have attached; start its successor clean.
            (None, Some(_)) => {
                let stats = self.stats.as_mut();
                self.links.reset(&mut self.cx, &mut self.inbound, stats, i);
            }
            _ => {}
        }
    }

    /// md instance `i` is gone: deliver what it left in its `out` ring, end its flows (flush,
    /// then a lingering close), reset its pair (new generation; a dead holder's claim is
    /// released). See the module docs.
    pub(super) fn md_died(&mut self, i: u32, why: &str) {
        if i as usize >= self.links.len() {
            return;
        }
        let (_, n) = self.links.who(i);
        let who = self.links.forget(&self.cx, i);
        self.cx.c[Io::MdDeaths] += 1;
        if let (Some(st), Some(who)) = (&self.stats, who) {
            // Only for a process that is really gone (its pidfd said so): then io_conn is the
            // block's only writer. An md dropped for a corrupt ring may still run and write its
            // block; it is left alone (its state says what it thinks).
            if who.liveness() != Liveness::Alive {
                st.mark_md_dead(i, who);
            }
        }
        let frames = self.drain_gone(i);
        let (ended, md_closed) = self.end_md_flows(i);
        log::error!(
            "md instance {i} (pid {}) lost: {why}; delivered the {frames} frames it left, ending \
             {ended} of its {n} connections after their pending output ({md_closed} closed by md \
             finish flushing); resetting its queue pair",
            who.map_or_else(|| "?".to_owned(), |p| p.pid.to_string())
        );
        let stats = self.stats.as_mut();
        self.links.reset(&mut self.cx, &mut self.inbound, stats, i);
    }

    /// Handles every frame left in md `i`'s `out` ring, as the loop would: every frame md
    /// committed (stamped), including those of a last batch it never flushed
    /// (`Consumer::producer_gone`). Stops at a corrupt frame. Returns how many frames were
    /// handled.
    fn drain_gone(&mut self, i: u32) -> u64 {
        self.inbound.producer_gone(i as usize);
        let mut frames = 0;
        for _ in 0..DRAIN_ROUNDS {
            let stats = self.stats.as_mut().and_then(|st| st.slot(i));
            let r = self.inbound.poll(
                i as usize,
                &mut self.cx,
                &mut self.clients,
                &mut self.links,
                stats,
            );
            frames += r.frames;
            if r.frames == 0 || r.corrupt.is_some() {
                break;
            }
        }
        // A HELLO in what was left found its sender gone and marked the link lost: the reset
        // that follows settles it.
        self.links.take_lost(i as usize);
        frames
    }

    /// Ends every flow bound to md `i` (gone; `request`-dispatched connections lose only the
    /// requests in flight there): each one md did not CLOSE stops reading and
    /// forwarding, flushes its queued output, then lingers (counted `closed_md_gone` when it
    /// closes); each one md CLOSEd keeps flushing and closes as md asked. Every one is unbound
    /// ([`NO_MD`]: nothing reaches the instance's next md about it). Frees the slots of flows
    /// that waited to push md a CLOSE. Returns (flows ended, flows md had closed).
    fn end_md_flows(&mut self, i: u32) -> (u32, u32) {
        let (cx, cl, links) = (&mut self.cx, &mut self.clients, &mut self.links);
        let (mut ended, mut md_closed) = (0, 0);
        let mut cur = cl.flows.front(ListId::Idle);
        while let Some(slot) = cur {
            cur = cl.flows.next(ListId::Idle, slot);
            let f = cl.flows.get_mut(slot);
            if !matches!(f.state, State::Open | State::Lingering) {
                continue;
            }
            if f.rq.on {
                // `request` dispatch: the replies it left were delivered above; what was still in
                // flight there closes its connection, the others forget that md.
                ended += u32::from(cl.forget_md(cx, links, slot, i));
                continue;
            }
            if f.md != i {
                continue;
            }
            links.unbind(i);
            f.md = NO_MD;
            f.blocked = false;
            f.md_paused = false;
            f.open_pending = false;
            // Credit returns to an md that is gone: nothing to report.
            f.drained = 0;
            if f.state == State::Lingering {
                ended += 1; // its error reply is out; it goes on lingering
                continue;
            }
            if f.after_flush == AfterFlush::Close {
                md_closed += 1; // md closed it: the close that follows the flush is md's
                continue;
            }
            ended += 1;
            // Read no more and owe nobody an EOF; what was read and not forwarded is lost with
            // the md (it was in flight there).
            f.input_end = InputEnd::Eof { by_peer: f.peer_eof(), sent: true };
            if let Some(b) = f.input.take() {
                cl.pool.put(b);
            }
            cl.flows.remove(ListId::Deadline, slot);
            let f = cl.flows.get_mut(slot);
            f.after_flush = AfterFlush::Linger;
            if f.output_len() == 0 {
                cl.linger(cx, slot);
            } else {
                // `on_writable` lingers once the output is flushed.
                cl.update_interest(cx, slot);
            }
        }
        while let Some((slot, generation)) = links.pop_blocked(i) {
            let f = cl.flows.get(slot);
            if f.generation == generation && f.state == State::Closing {
                cl.flows.release(slot);
            }
        }
        (ended, md_closed)
    }

    /// Resets the pair of every instance that no live md serves but a dead process holds: an md
    /// that claimed it and died before its HELLO reached us (under systemd nobody else tells
    /// us). The successor waits for exactly this reset. Cheap: one atomic load per instance, a
    /// `/proc` read only for a claimed instance without a live md (normally only between an
    /// md's attach and its HELLO).
    pub(super) fn check_holders(&mut self) {
        // A reset that failed earlier is tried again first (issue 14, finding 7).
        self.links.retry_resets(&mut self.cx, &mut self.inbound, self.stats.as_mut());
        for i in 0..self.links.len() as u32 {
            if self.links.live(i as usize) {
                continue;
            }
            let Some(h) = self.links.holder(i) else { continue };
            if h.liveness() == Liveness::Alive {
                continue;
            }
            log::warn!(
                "md instance {i}: pid {} claimed the queue pair and exited before it said HELLO; \
                 resetting the pair for its successor",
                h.pid
            );
            let stats = self.stats.as_mut();
            self.links.reset(&mut self.cx, &mut self.inbound, stats, i);
        }
    }

    pub(super) fn begin_drain(&mut self, why: &str) {
        if self.handover_until.take().is_some() {
            // A stop during a handover: the stop wins; serve on as a drain would.
            self.clients.resume_all(&mut self.cx);
        }
        if self.drain_until.is_some() {
            log::warn!("{why} again: exiting now");
            self.clients.close_all(&mut self.cx, &mut self.links, Io::ClosedShutdown);
            self.exit = true;
            return;
        }
        let deadline = self.cfg.io_conn.drain_deadline;
        let open = self.clients.flows.in_use();
        // systemd shows the unit as "deactivating" from here on (a no-op outside systemd).
        if let Err(e) =
            rt::notify::notify(&format!("STOPPING=1\nSTATUS={why}: draining {open} connections"))
        {
            log::warn!("systemd notification failed: {e}");
        }
        log::info!(
            "{why}: no longer accepting; draining {open} connections (deadline {deadline:?})"
        );
        self.drain_until = Some(self.cx.now + deadline);
        self.clients.begin_drain(&mut self.cx, &mut self.links);
    }

    /// Stops children and removes what this process created. Idempotent; also run on drop.
    pub(super) fn cleanup(&mut self) {
        if std::mem::replace(&mut self.cleaned, true) {
            return;
        }
        // Before the children get SIGTERM: they leave at once instead of waiting for an
        // acknowledgement of their LEAVE that this loop, ended, could not send.
        self.links.stop_routing();
        if let Some(ch) = self.children.as_mut() {
            log::info!("stopping {} md children", ch.count());
            ch.stop_all();
        }
        // Final values for anyone who still maps the segment (a viewstats --watch), then remove
        // it with the pairs.
        if let Some(st) = self.stats.as_mut() {
            self.cx.c[Io::HeartbeatNs] = monotonic_ns();
            st.mirror(&self.cx.c);
            link::publish_halves(st, &mut self.links, &self.inbound, true);
            st.remove();
        }
        self.links.remove_all(&mut self.inbound);
        self.close_control();
        if let Some(c) = self.kv_cache.as_mut() {
            c.remove();
        }
        log::info!("io_conn stopped; counters: {:?}", self.cx.c);
    }
}

impl Clients {
    /// Why a lingering flow's close is counted: `closed_md_gone` if its md went (it lingers after
    /// the replies that md left, see `Server::md_died`), `closed_by_peer` after the reply to a
    /// last request (HTTP `Connection: close`: the client closes once it has it), else
    /// `closed_oversized` (it lingers after an error reply).
    pub(super) fn linger_reason(&self, slot: u32) -> Io {
        let f = self.flows.get(slot);
        if f.md == NO_MD && !f.rq.on {
            Io::ClosedMdGone
        } else if f.too_long != TooLong::No && f.refusal.is_none() {
            Io::ClosedByPeer
        } else {
            Io::ClosedOversized
        }
    }
}
