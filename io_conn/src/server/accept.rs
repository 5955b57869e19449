//! Accepting connections: the accept loop, EMFILE pauses, binding a new flow to an md (or
//! holding it until one is live).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use config::Framing;
use nix::sys::epoll::{EpollEvent, EpollFlags};

use super::{Clients, Cx, K_LISTENER, Links, flow_token, token};
use crate::counters::Io;
use crate::flows::{ListId, State};

/// How long accepting pauses after EMFILE/ENFILE.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Accepts per readiness event of one listener.
const ACCEPTS_PER_EVENT: usize = 64;
/// The reply a line service gets when the flow table is full.
const ERR_TOO_MANY: &[u8] = b"ERR too many connections\n";
/// The reply a line service gets when its address has `max_connections_per_ip` open.
pub(super) const ERR_TOO_MANY_FROM_IP: &[u8] = b"ERR too many connections from your address\n";

impl Clients {
    /// Listener `idx` is readable: accept up to [`ACCEPTS_PER_EVENT`] connections.
    pub(super) fn accept_loop(&mut self, cx: &mut Cx, links: &mut Links, idx: usize) {
        if self.paused {
            return; // a handover: connection attempts wait in the backlog for the successor
        }
        for _ in 0..ACCEPTS_PER_EVENT {
            let Some(l) = self.listeners.get(idx).and_then(|l| l.sock.as_ref()) else { return };
            match l.accept() {
                Ok((s, peer)) => self.on_accept(cx, links, idx, s, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    cx.c[Io::AcceptFdExhausted] += 1;
                    log::warn!("accept: {e}; pausing accepts for {ACCEPT_PAUSE:?}");
                    self.pause_accepting(cx);
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

    fn pause_accepting(&mut self, cx: &Cx) {
        for l in &mut self.listeners {
            if let (Some(s), true) = (&l.sock, l.in_epoll) {
                let _ = cx.epoll.delete(s);
                l.in_epoll = false;
            }
        }
        self.accept_paused_until = Some(cx.now + ACCEPT_PAUSE);
    }

    pub(super) fn resume_accepting(&mut self, cx: &Cx) {
        for (idx, l) in self.listeners.iter_mut().enumerate() {
            if let (Some(s), false) = (&l.sock, l.in_epoll) {
                let ev = EpollEvent::new(EpollFlags::EPOLLIN, token(K_LISTENER, idx as u64));
                match cx.epoll.add(s, ev) {
                    Ok(()) => l.in_epoll = true,
                    Err(e) => log::error!("re-adding listener: {e}"),
                }
            }
        }
    }

    fn on_accept(
        &mut self,
        cx: &mut Cx,
        links: &mut Links,
        idx: usize,
        s: TcpStream,
        peer: SocketAddr,
    ) {
        let framing = self.listeners[idx].framing;
        // A PROXY listener: only `proxy_from` may connect, and `max_connections_per_ip` counts
        // the client its header names, not the balancer (`proxied`).
        let proxy = self.listeners[idx].proxy.is_some();
        if !self.proxy_admit(cx, idx, peer.ip()) {
            return; // dropping `s` closes it
        }
        if !proxy && !self.per_ip.admit(peer.ip()) {
            cx.c[Io::ConnectionsRefusedPerIp] += 1;
            if framing == Framing::Line {
                let _ = s.set_nonblocking(true);
                let _ = (&s).write(ERR_TOO_MANY_FROM_IP);
            }
            return; // dropping `s` closes it
        }
        let slot =
            if self.flows.in_use() < self.max_conn as usize { self.flows.alloc() } else { None };
        let Some(slot) = slot else {
            if !proxy {
                self.per_ip.release(peer.ip());
            }
            cx.c[Io::ConnectionsRefused] += 1;
            if framing == Framing::Line {
                let _ = s.set_nonblocking(true);
                let _ = (&s).write(ERR_TOO_MANY);
            }
            return; // dropping `s` closes it
        };
        if s.set_nonblocking(true).is_err() || s.set_nodelay(true).is_err() {
            if !proxy {
                self.per_ip.release(peer.ip());
            }
            self.flows.release(slot);
            return;
        }
        let md = if proxy { None } else { links.choose(&self.listeners[idx].mds) };
        let generation = self.flows.get(slot).generation;
        let interest =
            if md.is_some() || proxy { EpollFlags::EPOLLIN } else { EpollFlags::empty() };
        if let Err(e) = cx.epoll.add(&s, EpollEvent::new(interest, flow_token(slot, generation))) {
            log::warn!("epoll add client socket: {e}");
            if !proxy {
                self.per_ip.release(peer.ip());
            }
            self.flows.release(slot);
            return;
        }
        cx.c[Io::ConnectionsAccepted] += 1;
        cx.c[Io::ConnectionsCurrent] += 1;
        let f = self.flows.get_mut(slot);
        f.sock = Some(s);
        f.listener = idx as u16;
        f.peer = peer;
        f.interest = interest;
        f.last_active = cx.now;
        f.since = cx.now;
        self.flows.push_back(ListId::Idle, slot);
        if proxy {
            // Read the header first (`proxied`), within the message deadline.
            self.flows.get_mut(slot).state = State::Header;
            self.flows.push_back(ListId::Deadline, slot);
            return;
        }
        match md {
            Some(i) => self.bind(cx, links, slot, i),
            None => {
                self.flows.get_mut(slot).state = State::Unassigned;
                self.unassigned.push_back((slot, generation));
            }
        }
    }

    /// Binds a flow to md `i` for life and sends OPEN (`flow` dispatch), or opens it for
    /// `request` dispatch.
    pub(super) fn bind(&mut self, cx: &mut Cx, links: &mut Links, slot: u32, i: u32) {
        let f = self.flows.get_mut(slot);
        f.state = State::Open;
        let l = &self.listeners[f.listener as usize];
        if l.request {
            // `request` dispatch: bound to no md; each request picks one (`dispatch`).
            f.rq.on = true;
            f.rq.depth = l.depth;
            if f.input.is_some() {
                // Handed over with a partial request: complete it as soon as more comes.
                self.after_input(cx, links, slot);
            }
            self.update_interest(cx, slot);
            return;
        }
        f.md = i;
        f.open_pending = true;
        links.bind(i);
        let r = self.pump(cx, links, slot);
        if self.settle(cx, links, slot, r) {
            self.update_interest(cx, slot);
        }
    }

    /// An md became live: bind the flows that waited for one, oldest first (those whose service
    /// has no live md yet keep waiting, in order).
    pub(super) fn assign_unassigned(&mut self, cx: &mut Cx, links: &mut Links) {
        for _ in 0..self.unassigned.len() {
            let Some((slot, generation)) = self.unassigned.pop_front() else { break };
            let f = self.flows.get(slot);
            if f.generation != generation || f.state != State::Unassigned {
                continue;
            }
            let Some(i) = links.choose(&self.listeners[f.listener as usize].mds) else {
                self.unassigned.push_back((slot, generation));
                continue;
            };
            self.flows.get_mut(slot).since = cx.now;
            self.bind(cx, links, slot, i);
        }
    }
}
