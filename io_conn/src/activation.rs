//! Socket activation: matching the listening sockets systemd passed in (`io_conn.socket`,
//! [`rt::activation`]) to the config's listeners.
//!
//! A listener with a `name` takes the socket whose `FileDescriptorName=` is that name; a
//! listener without one takes the socket bound to exactly its address (`getsockname`). Every
//! listener must get a socket and every socket must go to a listener; anything else is an error
//! at start that names what is missing, so a socket unit and a config that disagree never run
//! half-served. Without inherited sockets io_conn binds its listeners itself (`main`).
//!
//! Under socket activation systemd holds the sockets across restarts of io_conn: connection
//! attempts during a restart wait in the kernel's backlog. A reload therefore cannot add,
//! remove or move a listener (`server::reload` refuses it by name).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};

use nix::sys::socket::{getsockopt, sockopt};
use rt::activation::Inherited;

use crate::BoundListener;

/// Assigns each inherited socket to a listener of `listeners`, in the config's order. Err: one
/// message naming every listener without a socket and every socket without a listener.
pub fn match_listeners(
    listeners: &[config::Listener],
    inherited: Vec<Inherited>,
) -> anyhow::Result<Vec<BoundListener>> {
    let mut socks: Vec<Option<(TcpListener, SocketAddr, String, i32)>> = Vec::new();
    let mut errors = String::new();
    for inh in inherited {
        let raw = inh.raw;
        let listening = getsockopt(&inh.fd, sockopt::AcceptConn).unwrap_or(false);
        let sock = TcpListener::from(inh.fd);
        match sock.local_addr() {
            Ok(addr) if listening => socks.push(Some((sock, addr, inh.name, raw))),
            Ok(addr) => {
                let _ = write!(
                    errors,
                    "; socket fd {raw} ({}, {addr}) from systemd is not listening",
                    inh.name
                );
            }
            Err(e) => {
                let _ = write!(
                    errors,
                    "; socket fd {raw} ({}) from systemd is no TCP socket ({e}): io_conn.socket \
                     must use ListenStream= with an IP address and port",
                    inh.name
                );
            }
        }
    }
    let mut out = Vec::with_capacity(listeners.len());
    for l in listeners {
        let found = socks.iter().position(|s| {
            s.as_ref().is_some_and(|(_, addr, name, _)| {
                if l.name.is_empty() { *addr == l.address } else { *name == l.name }
            })
        });
        match found.and_then(|i| socks[i].take()) {
            Some((sock, addr, name, raw)) => {
                if !l.name.is_empty() && addr != l.address && l.address.port() != 0 {
                    log::warn!(
                        "listener {} takes systemd's socket {name} (fd {raw}), which is bound to \
                         {addr}, not {}",
                        l.name,
                        l.address
                    );
                }
                sock.set_nonblocking(true)?;
                out.push((sock, l.clone()));
            }
            None => {
                let what = if l.name.is_empty() {
                    format!("address {}", l.address)
                } else {
                    format!("name {}", l.name)
                };
                let _ = write!(
                    errors,
                    "; listener {} ({what}, service {}) has no socket from systemd: add \
                     ListenStream={}{} to io_conn.socket, or remove the listener",
                    if l.name.is_empty() { l.address.to_string() } else { l.name.clone() },
                    l.service,
                    l.address,
                    if l.name.is_empty() {
                        String::new()
                    } else {
                        format!(" with FileDescriptorName={}", l.name)
                    }
                );
            }
        }
    }
    for (_, addr, name, raw) in socks.into_iter().flatten() {
        let _ = write!(
            errors,
            "; socket fd {raw} ({name}, bound to {addr}) from systemd matches no \
             [[io_conn.listener]]: add one with address = \"{addr}\" (or name = \"{name}\"), \
             or remove the ListenStream="
        );
    }
    if !errors.is_empty() {
        anyhow::bail!("socket activation: {}", errors.trim_start_matches("; "));
    }
    Ok(out)
}
