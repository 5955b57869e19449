//! Connections on a `proxy_protocol` listener: the trust check at accept and reading the PROXY
//! header before the flow is bound to an md.
//!
//! `accept` calls [`Clients::proxy_admit`] first: a peer outside the listener's `proxy_from` is
//! refused at once (`proxy_refused_untrusted`, never counted as accepted). A trusted one becomes
//! a flow in [`State::Header`]: read (EPOLLIN), in the idle and deadline lists, bound to no md.
//! [`Clients::read_header`] reads into the flow's pooled input buffer and runs
//! [`crate::proxy::parse`] over everything read so far; the parser bounds the header (4 KiB for
//! v2, 107 bytes for v1), so the buffer is bounded too. On a valid header its bytes are dropped,
//! the carried source address becomes `peer` (`LOCAL`/`UNKNOWN`: the socket's peer stays), the
//! client's own address is counted for `max_connections_per_ip`, and the flow is bound like a
//! freshly accepted one; bytes that came after the header in the same reads stay in `input` and
//! are framed at once (`bind` pushes them). A malformed header closes the flow (`closed_error` +
//! `proxy_refused_invalid`); the message deadline closes one that is still incomplete
//! (`closed_deadline` + `proxy_refused_invalid`, in `Clients::on_timer`); EOF before a header
//! is the peer's close (`closed_by_peer`).

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};

use config::Framing;

use super::accept::ERR_TOO_MANY_FROM_IP;
use super::{Clients, Cx, Links};
use crate::counters::Io;
use crate::flows::{ListId, State};
use crate::proxy::{self, Parse, Version};

/// The header version a listener expects (`proxy_protocol`), None for `"none"`.
pub(super) fn version(l: &config::Listener) -> Option<Version> {
    match l.proxy_protocol {
        config::ProxyProtocol::None => None,
        config::ProxyProtocol::V1 => Some(Version::V1),
        config::ProxyProtocol::V2 => Some(Version::V2),
    }
}

/// Most header bytes buffered: the largest valid header, plus one read (a read may bring the
/// header and the client's first bytes at once).
fn header_buffer_limit(read_size: usize) -> usize {
    proxy::V2_MAX.max(proxy::V1_MAX) + read_size
}

impl Clients {
    /// Listener `idx` expects a PROXY header: is `ip` allowed to send one? (True for a listener
    /// without `proxy_protocol`.) Counts a refusal.
    pub(super) fn proxy_admit(&self, cx: &mut Cx, idx: usize, ip: IpAddr) -> bool {
        let l = &self.listeners[idx];
        if l.proxy.is_none() || l.proxy_from.iter().any(|c| c.contains(ip)) {
            return true;
        }
        cx.c[Io::ProxyRefusedUntrusted] += 1;
        false
    }

    /// A flow in [`State::Header`] is readable: read once (level-triggered epoll reports it
    /// again), then act on what the parser says about everything read so far.
    pub(super) fn read_header(&mut self, cx: &mut Cx, links: &mut Links, slot: u32) {
        let read_size = self.lim.read_size;
        let Self { flows, pool, listeners, .. } = self;
        let f = flows.get_mut(slot);
        let Some(version) = listeners[f.listener as usize].proxy else {
            // Only a proxy listener's flows start in Header; cannot happen.
            return self.close_flow(cx, links, slot, Io::ClosedError);
        };
        let Some(sock) = f.sock.as_ref() else { return };
        let mut sock: &TcpStream = sock;
        let buf = f.input.get_or_insert_with(|| pool.get());
        let res = sock.read(buf.spare_mut(read_size, header_buffer_limit(read_size)));
        match res {
            Ok(0) => return self.close_flow(cx, links, slot, Io::ClosedByPeer),
            Ok(n) => {
                buf.commit(n);
                cx.c[Io::BytesIn] += n as u64;
            }
            Err(e)
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) =>
            {
                return;
            }
            Err(_) => return self.close_flow(cx, links, slot, Io::ClosedByPeer),
        }
        self.touch(cx, slot);
        let f = self.flows.get_mut(slot);
        let parsed = proxy::parse(version, f.input.as_ref().map_or(&[][..], |b| b.filled()));
        match parsed {
            Parse::Incomplete => {}
            Parse::Invalid(why) => {
                cx.c[Io::ProxyRefusedInvalid] += 1;
                log::debug!("closing a connection from {}: {why}", f.peer);
                self.close_flow(cx, links, slot, Io::ClosedError);
            }
            Parse::Done { consumed, addrs } => {
                cx.c[Io::ProxyHeaders] += 1;
                self.header_done(cx, links, slot, consumed, addrs.map(|a| a.src));
            }
        }
    }

    /// The header (`consumed` bytes at the front of `input`) is valid; `src` is the client it
    /// names (None: keep the socket's peer). Counts the client for `max_connections_per_ip`,
    /// then binds the flow like a new one (or holds it until an md is live).
    fn header_done(
        &mut self,
        cx: &mut Cx,
        links: &mut Links,
        slot: u32,
        consumed: usize,
        src: Option<std::net::SocketAddr>,
    ) {
        let framing = self.framing(slot);
        let f = self.flows.get_mut(slot);
        let peer = src.unwrap_or(f.peer);
        if !self.per_ip.admit(peer.ip()) {
            // Still in Header: close_flow releases nothing for it.
            cx.c[Io::ConnectionsRefusedPerIp] += 1;
            if framing == Framing::Line {
                if let Some(s) = f.sock.as_ref() {
                    let mut w: &TcpStream = s;
                    let _ = w.write(ERR_TOO_MANY_FROM_IP);
                }
            }
            return self.close_flow(cx, links, slot, Io::ClosedError);
        }
        f.proxied = src.is_some();
        f.peer = peer;
        if let Some(mut b) = f.input.take() {
            b.consume(consumed);
            if b.is_empty() {
                self.pool.put(b);
            } else {
                f.input = Some(b);
            }
        }
        // From here on the deadline is the first message's, started below if one is pending.
        self.flows.remove(ListId::Deadline, slot);
        self.flows.get_mut(slot).since = cx.now;
        self.bind_new(cx, links, slot);
        if self.flows.get(slot).state == State::Open {
            self.track_deadline(cx, slot);
        }
    }
}

impl Clients {
    /// Binds a flow whose header was read like a newly accepted one: to a live md of its
    /// service, or held (not read) until one is.
    fn bind_new(&mut self, cx: &mut Cx, links: &mut Links, slot: u32) {
        let f = self.flows.get(slot);
        let generation = f.generation;
        match links.choose(&self.listeners[f.listener as usize].mds) {
            Some(i) => self.bind(cx, links, slot, i),
            None => {
                self.flows.get_mut(slot).state = State::Unassigned;
                self.unassigned.push_back((slot, generation));
                self.update_interest(cx, slot);
            }
        }
    }
}
