//! The loop's side of a handover (SIGUSR2): quiesce, export the connections into a sealed
//! record, hand them to the successor (systemd's fd store, or the handover socket), exit; and
//! the successor's side: adopt the connections it was given.
//!
//! The protocol and its guarantees are in docs/ARCHITECTURE.md "Handover"; `crate::handover`
//! has the record and the transports.
//!
//! # Quiescing
//!
//! [`Server::begin_handover`] stops accepting (the listeners leave the epoll set but stay open:
//! connection attempts wait in their backlog) and stops reading every client socket
//! (`Clients::paused`). Requests already read still go to md (a blocked flow's buffered
//! messages too), and their replies are written as they come. Each iteration
//! [`Server::poll_handover`] checks whether any reply is still owed ([`Clients::quiescent`]);
//! once none is (or at `io_conn.drain_deadline`) the connections are exported and sent.

use nix::sys::epoll::{EpollEvent, EpollFlags};
use std::os::fd::OwnedFd;

use super::{Clients, Cx, Links, Server, flow_token};
use crate::counters::Io;
use crate::flows::{AfterFlush, InputEnd, ListId, State, TooLong};
use crate::handover::{self, Adopted, FlowRecord, ListenerRecord, Record};

impl Server<'_> {
    /// SIGUSR2: stop reading and accepting, and hand the connections over once no reply is
    /// owed (see the module docs).
    pub(super) fn begin_handover(&mut self, why: &str) {
        if self.drain_until.is_some() || self.handover_until.is_some() {
            log::warn!("{why}: already stopping or handing over; ignored");
            return;
        }
        let deadline = self.cfg.io_conn.drain_deadline;
        let open = self.clients.flows.in_use();
        log::info!(
            "{why}: handing over {open} connections: no longer reading or accepting; waiting up \
             to {deadline:?} until no reply is owed"
        );
        let _ = rt::notify::status(&format!("handing over {open} connections"));
        self.handover_until = Some(self.cx.now + deadline);
        self.clients.pause_all(&mut self.cx);
    }

    /// Once no reply is owed (or at the deadline): export, send, and exit; or resume serving if
    /// no successor took the connections.
    pub(super) fn poll_handover(&mut self) {
        let Some(until) = self.handover_until else { return };
        let quiet = self.clients.quiescent();
        if !quiet && self.cx.now < until {
            return;
        }
        if !quiet {
            log::warn!(
                "handover: replies still owed at the drain deadline; those connections close"
            );
        }
        self.handover_until = None;
        let (rec, listeners, clients, closed) = self.clients.export(&mut self.cx, &mut self.links);
        let n = rec.flows.len();
        let bundle = match handover::bundle(&rec, listeners, clients) {
            Ok(b) => b,
            Err(e) => {
                log::error!("handover: writing the record: {e}; serving on");
                self.clients.resume_all(&mut self.cx);
                return;
            }
        };
        let under_systemd =
            std::env::var_os(rt::notify::NOTIFY_SOCKET).is_some_and(|s| !s.is_empty());
        let sent = if under_systemd {
            handover::store_in_systemd(&bundle).map(|()| true)
        } else {
            let path = handover::socket_path(&self.cfg.runtime_dir(), &self.cfg.shared.name);
            handover::serve_successor(&path, &bundle)
        };
        match sent {
            Ok(true) => {
                log::info!(
                    "handed {n} connections over ({}; {closed} closed that still owed replies \
                     or were ending); exiting",
                    if under_systemd { "systemd's fd store" } else { "successor" }
                );
                self.handed_over = true;
                self.exit = true;
            }
            Ok(false) => {
                log::warn!("handover: no successor took the connections; serving on");
                self.clients.resume_all(&mut self.cx);
            }
            Err(e) => {
                log::error!("handover failed: {e}; serving on");
                self.clients.resume_all(&mut self.cx);
            }
        }
    }
}

impl Clients {
    /// Stops accepting and reading (listeners out of epoll but open).
    pub(super) fn pause_all(&mut self, cx: &mut Cx) {
        self.paused = true;
        for l in &mut self.listeners {
            if let (Some(s), true) = (&l.sock, l.in_epoll) {
                let _ = cx.epoll.delete(s);
                l.in_epoll = false;
            }
        }
        self.accept_paused_until = None;
        self.refresh_all(cx);
    }

    /// Serves on after a handover that did not happen.
    pub(super) fn resume_all(&mut self, cx: &mut Cx) {
        self.paused = false;
        self.resume_accepting(cx);
        self.refresh_all(cx);
    }

    fn refresh_all(&mut self, cx: &mut Cx) {
        let mut cur = self.flows.front(ListId::Idle);
        while let Some(slot) = cur {
            cur = self.flows.next(ListId::Idle, slot);
            self.update_interest(cx, slot);
        }
    }

    /// A flow that can be handed over as it is: open, reading, nothing ending, no reply owed,
    /// nothing read left to push. (Unassigned flows were never read: always.)
    fn transferable(&self, slot: u32) -> bool {
        let f = self.flows.get(slot);
        match f.state {
            State::Unassigned => true,
            State::Open => {
                f.input_end == InputEnd::Reading
                    && f.after_flush == AfterFlush::Serve
                    && f.too_long == TooLong::No
                    && !f.blocked
                    && if f.rq.on { f.rq.q.is_empty() } else { f.owed == 0 }
            }
            _ => false,
        }
    }

    /// No reply is owed on any connection: every open flow is transferable, and flows that are
    /// ending (EOF, md's CLOSE, an error line) have closed. Lingering flows (their error line is
    /// out) do not hold it up.
    pub(super) fn quiescent(&self) -> bool {
        let mut cur = self.flows.front(ListId::Idle);
        while let Some(slot) = cur {
            cur = self.flows.next(ListId::Idle, slot);
            let st = self.flows.get(slot).state;
            // Neither a lingering flow nor one still reading its PROXY header owes a reply.
            if !matches!(st, State::Lingering | State::Header) && !self.transferable(slot) {
                return false;
            }
        }
        true
    }

    /// Writes every transferable flow and every listener into a record, with a duplicate of
    /// each socket (the originals stay until the process exits, so a failed handover serves
    /// on). Closes the flows that cannot be handed over (counted `closed_shutdown`). Returns the
    /// record, the listener and client descriptors, and how many flows were closed.
    pub(super) fn export(
        &mut self,
        cx: &mut Cx,
        links: &mut Links,
    ) -> (Record, Vec<OwnedFd>, Vec<OwnedFd>, usize) {
        let mut rec = Record { writer_pid: std::process::id(), listeners: vec![], flows: vec![] };
        let mut lfds = Vec::new();
        // Record index of each of our listeners (None: not handed over).
        let mut lidx = Vec::with_capacity(self.listeners.len());
        for l in &self.listeners {
            let entry = l.sock.as_ref().and_then(|s| {
                let addr = s.local_addr().ok()?;
                let fd = OwnedFd::from(s.try_clone().ok()?);
                let inode = handover::inode(std::os::fd::AsFd::as_fd(&fd)).ok()?;
                Some((ListenerRecord { inode, addr }, fd))
            });
            match entry {
                Some((r, fd)) => {
                    lidx.push(Some(rec.listeners.len() as u32));
                    rec.listeners.push(r);
                    lfds.push(fd);
                }
                None => lidx.push(None),
            }
        }
        let mut cfds = Vec::new();
        let mut closed = 0;
        let mut cur = self.flows.front(ListId::Idle);
        while let Some(slot) = cur {
            cur = self.flows.next(ListId::Idle, slot);
            let exported = self.transferable(slot) && {
                let f = self.flows.get(slot);
                // A flow whose address came from a PROXY header (`proxied`): the record names
                // the socket's own peer (the balancer), which the successor checks the socket
                // against, and the client separately.
                let (peer, client) = if f.proxied {
                    (f.sock.as_ref().and_then(|s| s.peer_addr().ok()), Some(f.peer))
                } else {
                    (Some(f.peer), None)
                };
                let li = lidx.get(f.listener as usize).copied().flatten();
                let dup = f.sock.as_ref().and_then(|s| s.try_clone().ok()).map(OwnedFd::from);
                match (li, dup, peer) {
                    (Some(li), Some(fd), Some(peer)) => {
                        match handover::inode(std::os::fd::AsFd::as_fd(&fd)) {
                            Ok(inode) => {
                                rec.flows.push(FlowRecord {
                                    slot,
                                    generation: f.generation,
                                    inode,
                                    listener: li,
                                    request: f.rq.on,
                                    peer,
                                    client,
                                    input: f
                                        .input
                                        .as_ref()
                                        .map(|b| b.filled().to_vec())
                                        .unwrap_or_default(),
                                    output: f
                                        .output
                                        .as_ref()
                                        .map(|b| b.filled().to_vec())
                                        .unwrap_or_default(),
                                });
                                cfds.push(fd);
                                true
                            }
                            Err(_) => false,
                        }
                    }
                    _ => false,
                }
            };
            if !exported {
                closed += 1;
                self.close_flow(cx, links, slot, Io::ClosedShutdown);
            }
        }
        (rec, lfds, cfds, closed)
    }

    /// Takes the connections a predecessor handed over: each becomes a flow held until an md
    /// of its service is live (like a connection accepted while none is), with its buffered
    /// input and output; then it is OPENed to md like a new one. Output the predecessor had not
    /// written goes out first (uncredited: no md of this epoch paid for it).
    pub(super) fn adopt(&mut self, cx: &mut Cx, adopted: Vec<Adopted>) {
        let total = adopted.len();
        let mut taken = 0;
        for a in adopted {
            let Adopted { sock, rec } = a;
            let li = rec.listener as usize;
            if li >= self.listeners.len() {
                continue;
            }
            // Behind a PROXY balancer the client is the address its header carried: md, the
            // logs and max_connections_per_ip see that one, as before the handover.
            let who = rec.client.unwrap_or(rec.peer);
            if !self.per_ip.admit(who.ip()) {
                continue; // dropping the socket closes it
            }
            let Some(slot) = self.flows.alloc() else {
                self.per_ip.release(who.ip());
                continue;
            };
            let generation = self.flows.get(slot).generation;
            // Nothing until it is bound (level-triggered EPOLLOUT would fire on a flow nobody
            // writes yet): binding registers what it needs, output first.
            let want = EpollFlags::empty();
            if let Err(e) = cx.epoll.add(&sock, EpollEvent::new(want, flow_token(slot, generation)))
            {
                log::warn!("epoll add handed-over socket: {e}");
                self.per_ip.release(who.ip());
                self.flows.release(slot);
                continue;
            }
            cx.c[Io::ConnectionsCurrent] += 1;
            let input = (!rec.input.is_empty()).then(|| {
                let mut b = self.pool.get();
                b.extend(&rec.input);
                b
            });
            let output = (!rec.output.is_empty()).then(|| {
                let mut b = self.pool.get();
                b.extend(&rec.output);
                b
            });
            let f = self.flows.get_mut(slot);
            f.sock = Some(sock);
            f.listener = li as u16;
            f.peer = who;
            f.proxied = rec.client.is_some();
            f.interest = want;
            f.last_active = cx.now;
            f.since = cx.now;
            f.state = State::Unassigned;
            f.input = input;
            f.uncredited = rec.output.len() as u64;
            if self.listeners[li].request && !rec.output.is_empty() {
                f.rq.segs.push_back((crate::flows::NO_MD, rec.output.len() as u64));
            }
            f.output = output;
            self.flows.push_back(ListId::Idle, slot);
            self.unassigned.push_back((slot, generation));
            taken += 1;
        }
        if total > 0 {
            log::info!(
                "adopted {taken} of {total} handed-over connections; they re-open to md as it attaches"
            );
        }
    }
}

#[cfg(test)]
mod tests {

    use std::os::fd::AsFd;

    use shmq::frame::{self, FlowId, Frame, Kind};

    use super::*;

    fn setup(request: bool) -> (Cx, Clients, Links) {
        super::super::tests::setup_listener("dumb", vec![0], request, 1)
    }

    fn open_flow(cx: &mut Cx, cl: &mut Clients) -> FlowId {
        super::super::tests::open_flow(cx, cl, 0)
    }

    /// `flow` dispatch: a request pushed is a reply owed until md marks its end; only then may
    /// the handover snapshot the connection.
    #[test]
    fn a_flow_with_a_reply_owed_holds_the_handover_until_its_end_mark() {
        let (mut cx, mut cl, mut links) = setup(false);
        assert!(cl.quiescent(), "no connection");
        let id = open_flow(&mut cx, &mut cl);
        assert!(cl.quiescent(), "an idle connection");
        cl.flows.get_mut(id.slot()).owed = 2; // two requests pushed
        assert!(!cl.quiescent());
        let end = |payload| Frame {
            flowid: id,
            kind: Kind::Data,
            flags: frame::flags::DATA_END,
            payload,
        };
        // An empty frame is only a reply's end mark.
        cl.on_md_frame(&mut cx, &mut links, 0, end(b""));
        assert_eq!(cl.flows.get(id.slot()).owed, 1);
        assert!(!cl.quiescent());
        cl.on_md_frame(&mut cx, &mut links, 0, end(b""));
        assert!(cl.quiescent(), "every reply ended");
        // A connection that is ending holds it up until it closes.
        cl.flows.get_mut(id.slot()).input_end = InputEnd::Eof { by_peer: true, sent: true };
        assert!(!cl.quiescent());
        cl.flows.get_mut(id.slot()).input_end = InputEnd::Reading;
        cl.flows.get_mut(id.slot()).blocked = true;
        assert!(!cl.quiescent(), "a message read and not yet pushed");
    }

    /// The record carries what the connection had buffered, the listener goes with it, and a
    /// connection that still owes a reply at the deadline is closed, not exported.
    #[test]
    fn export_records_buffers_and_closes_what_cannot_move() {
        let (mut cx, mut cl, mut links) = setup(false);
        let l = crate::bind_listener("127.0.0.1:0".parse().unwrap(), 16).expect("listen");
        let laddr = l.local_addr().unwrap();
        let client = std::net::TcpStream::connect(laddr).expect("connect");
        let (server_side, peer) = l.accept().expect("accept");
        cl.listeners[0].sock = Some(l);
        let keep = open_flow(&mut cx, &mut cl);
        let owing = open_flow(&mut cx, &mut cl);
        let mut input = cl.pool.get();
        input.extend(b"PI");
        let mut output = cl.pool.get();
        output.extend(b"PONG\n");
        let f = cl.flows.get_mut(keep.slot());
        f.sock = Some(server_side);
        f.peer = peer;
        f.input = Some(input);
        f.output = Some(output);
        cl.flows.get_mut(owing.slot()).owed = 1;
        let (rec, lfds, cfds, closed) = cl.export(&mut cx, &mut links);
        assert_eq!(rec.listeners.len(), 1);
        assert_eq!(rec.listeners[0].addr, laddr);
        assert_eq!(rec.listeners[0].inode, handover::inode(lfds[0].as_fd()).unwrap());
        assert_eq!((rec.flows.len(), cfds.len(), closed), (1, 1, 1));
        let fr = &rec.flows[0];
        assert_eq!((fr.slot, fr.listener, fr.request), (keep.slot(), 0, false));
        assert_eq!((fr.input.as_slice(), fr.output.as_slice()), (&b"PI"[..], &b"PONG\n"[..]));
        assert_eq!(fr.peer, client.local_addr().unwrap());
        assert_eq!(fr.inode, handover::inode(cfds[0].as_fd()).unwrap());
        assert_eq!(cx.c[Io::ClosedShutdown], 1, "the one owing a reply");
        // The originals stay with us (a failed handover serves on).
        assert!(cl.flows.get(keep.slot()).sock.is_some());
    }
}
