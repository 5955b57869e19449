//! Reloading the config in the running loop (SIGHUP, or a connection on the control socket from
//! `io_conn --reload`, see `crate::reload`), keeping every connection.
//!
//! # What a reload does
//!
//! 1. `RELOADING=1` to systemd. Read the file io_conn was started with and validate it exactly as
//!    at start and as `--check-config` does ([`Config::load`]). A file that does not validate
//!    changes nothing (`INVALID`).
//! 2. [`config::diff_for`] classifies every changed key. Any restart-only key (queue geometry,
//!    `shared.name`, backend, runtime dir, `md.max_instances`, `io_conn.read_buffer`; under socket
//!    activation also a listener added, removed or moved, since systemd holds the sockets) refuses
//!    the **whole** reload: one log line per key, the old config stays (`REFUSED`). All or
//!    nothing, so io_conn never runs half of a file.
//! 3. New listeners are bound before anything changes; one that cannot be bound refuses the
//!    reload too (the ones bound so far are closed again).
//! 4. Then, infallibly: removed listeners are closed (new connection attempts are refused; the
//!    connections they accepted stay, with the framing and service they were accepted with); a
//!    listener whose service, framing or dispatch changed keeps its socket, and connections
//!    accepted from then on get the new settings; limits, timeouts, credit, spin, routing of
//!    every listener to its service's group, and the log level take effect at once.
//! 5. `READY=1` and a `STATUS=` line; the counters `reloads_ok` / `reloads_refused` and the gauge
//!    `config_generation` in the stats segment.
//!
//! A listener entry is never removed from the table while connections refer to it (a flow keeps
//! its listener's index for its framing and service); an entry with no socket and no connection
//! is reused by the next listener a reload adds.

use std::borrow::Cow;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use config::{Change, ChangeKind, Config, Program};
use nix::sys::epoll::{EpollEvent, EpollFlags};
use rt::SpinGate;

use super::clients::{Lst, PerIp, nonzero};
use super::{K_CONTROL, K_LISTENER, Server, token};
use crate::counters::Io;
use crate::flows::State;

/// What a reload needs to know besides the config: where it came from, whether systemd holds
/// the listeners, and the control socket.
#[derive(Debug, Default)]
pub(crate) struct ReloadState {
    /// The `--config` file (None: the built-in defaults, which a reload validates again).
    pub(crate) path: Option<PathBuf>,
    /// The listeners came from systemd (socket activation): a reload cannot add or remove them.
    pub(crate) activated: bool,
    /// Reloads applied since start (0: the config read at start).
    pub(crate) generation: u64,
    /// The control socket and its path (removed at exit).
    pub(crate) control: Option<(UnixListener, PathBuf)>,
}

/// How a reload ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Applied (possibly nothing changed): the new generation and the changed keys.
    Applied { generation: u64, keys: Vec<String> },
    /// Keys that need a restart (or could not be applied, e.g. a bind that failed), with one
    /// line of detail each; nothing changed.
    Refused { keys: Vec<String>, details: Vec<String> },
    /// The file does not validate; nothing changed.
    Invalid(String),
}

impl Outcome {
    /// The control socket's answer (see `crate::reload`).
    pub(crate) fn reply(&self) -> String {
        match self {
            Self::Applied { generation, keys } if keys.is_empty() => {
                format!("OK generation {generation}: nothing changed\n")
            }
            Self::Applied { generation, keys } => format!(
                "OK generation {generation}: {} changes applied: {}\n",
                keys.len(),
                keys.join(" ")
            ),
            Self::Refused { keys, details } => {
                let mut s = format!(
                    "REFUSED {}: need a restart or cannot be applied; the old config is kept\n",
                    keys.join(" ")
                );
                for d in details {
                    s.push_str(d);
                    s.push('\n');
                }
                s
            }
            Self::Invalid(e) => format!("INVALID {e}\n"),
        }
    }
}

/// What a reload does to one listener of the new file.
#[derive(Debug)]
enum Plan {
    /// Same socket, same settings.
    Keep(usize),
    /// Same socket, new service / framing / dispatch / depth, or a new identity (a name given
    /// to a listener on the same address).
    Retarget(usize, config::Listener, String),
    /// A socket bound for it (new, or its address changed).
    New(TcpListener, config::Listener, String),
}

impl Server<'_> {
    /// Creates the control socket (`crate::reload::control_path`), 0600. A failure is logged:
    /// SIGHUP still reloads.
    pub(super) fn open_control(&mut self) {
        let path = crate::reload::control_path(&self.cfg);
        // Whoever left it is dead: creating the queue pairs refused a live io_conn of this name.
        let _ = std::fs::remove_file(&path);
        let sock = match UnixListener::bind(&path) {
            Ok(s) => s,
            Err(e) => {
                log::warn!(
                    "control socket {}: {e}; `io_conn --reload` will not work (SIGHUP does)",
                    path.display()
                );
                return;
            }
        };
        use std::os::unix::fs::PermissionsExt;
        let setup = sock
            .set_nonblocking(true)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)))
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                self.cx
                    .epoll
                    .add(&sock, EpollEvent::new(EpollFlags::EPOLLIN, token(K_CONTROL, 0)))
                    .map_err(anyhow::Error::from)
            });
        if let Err(e) = setup {
            log::warn!("control socket {}: {e}", path.display());
            let _ = std::fs::remove_file(&path);
            return;
        }
        self.reload.control = Some((sock, path));
    }

    /// Removes the control socket (at exit).
    pub(super) fn close_control(&mut self) {
        if let Some((sock, path)) = self.reload.control.take() {
            let _ = self.cx.epoll.delete(&sock);
            let _ = std::fs::remove_file(path);
        }
    }

    /// The control socket is readable: one reload per connection, answered, then closed.
    pub(super) fn on_control(&mut self) {
        for _ in 0..8 {
            let Some((sock, _)) = &self.reload.control else { return };
            let stream = match sock.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("control socket accept: {e}");
                    return;
                }
            };
            let outcome = self.reload("io_conn --reload");
            // A few hundred bytes into a fresh socket's buffer: a non-blocking write completes
            // (a client that went away loses its answer, nothing else).
            let _ = stream.set_nonblocking(true);
            let _ = std::io::Write::write_all(&mut &stream, outcome.reply().as_bytes());
        }
    }

    /// Re-reads the config and applies what can change live; see the module docs.
    pub(super) fn reload(&mut self, why: &str) -> Outcome {
        if let Err(e) = rt::notify::reloading() {
            log::warn!("systemd notification failed: {e}");
        }
        let outcome = self.try_reload(why);
        let status = match &outcome {
            Outcome::Applied { generation, .. } => {
                self.cx.c[Io::ReloadsOk] += 1;
                self.cx.c[Io::ConfigGeneration] = *generation;
                format!("{}; config generation {generation}", self.listening_status())
            }
            Outcome::Refused { keys, .. } => {
                self.cx.c[Io::ReloadsRefused] += 1;
                format!(
                    "{}; config generation {}; last reload refused ({})",
                    self.listening_status(),
                    self.reload.generation,
                    keys.join(" ")
                )
            }
            Outcome::Invalid(_) => {
                self.cx.c[Io::ReloadsRefused] += 1;
                format!(
                    "{}; config generation {}; last reload refused (invalid file)",
                    self.listening_status(),
                    self.reload.generation
                )
            }
        };
        if let Err(e) = rt::notify::reloaded(&status) {
            log::warn!("systemd notification failed: {e}");
        }
        self.publish_stats();
        outcome
    }

    /// `listening on ADDR (service) ...`, the STATUS line's start.
    pub(crate) fn listening_status(&self) -> String {
        let mut s = String::from("listening on");
        for l in &self.clients.listeners {
            if let Some(addr) = l.sock.as_ref().and_then(|s| s.local_addr().ok()) {
                s.push_str(&format!(" {addr} ({})", l.service));
            }
        }
        s
    }

    fn try_reload(&mut self, why: &str) -> Outcome {
        let path = self.reload.path.clone();
        let shown =
            path.as_ref().map_or_else(|| "(built-in defaults)".into(), |p| p.display().to_string());
        log::info!("{why}: reloading the config from {shown}");
        if self.drain_until.is_some() {
            let e = "io_conn is shutting down".to_owned();
            log::warn!("reload refused: {e}");
            return Outcome::Invalid(e);
        }
        let mut new = match Config::load_or_default(path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload refused, the current config is kept: {e}");
                return Outcome::Invalid(e.to_string());
            }
        };
        if let Err(e) = new.check_binaries(path.as_deref()) {
            log::warn!("{e} (md instances of that group will fail to start)");
        }
        let mut changes = config::diff_for(&self.cfg, &new, Program::IoConn);
        // Listeners whose identity stayed but whose address moved: a new socket.
        let moved = self.moved_listeners(&new);
        changes.live.extend(moved);
        if self.reload.activated {
            let (held, live): (Vec<Change>, Vec<Change>) =
                changes.live.into_iter().partition(listener_socket_change);
            changes.live = live;
            for mut c in held {
                c.new = format!(
                    "{} (systemd holds the listeners under socket activation: change \
                     io_conn.socket and restart)",
                    if c.new.is_empty() { "(none)" } else { &c.new }
                );
                changes.restart_only.push(c);
            }
        }
        if !changes.restart_only.is_empty() {
            let mut details = Vec::new();
            for c in &changes.restart_only {
                log::error!("reload refused: {c} needs a restart; the current config is kept");
                details.push(format!("{c}"));
            }
            let keys = changes.restart_only.iter().map(|c| c.key.clone()).collect();
            return Outcome::Refused { keys, details };
        }
        self.clamp_max_connections(&mut new);
        // Bind every new socket first: a failure changes nothing.
        let plans = match self.plan_listeners(&new) {
            Ok(p) => p,
            Err((key, detail)) => {
                log::error!("reload refused: {detail}; the current config is kept");
                return Outcome::Refused { keys: vec![key], details: vec![detail] };
            }
        };
        self.apply(new, plans);
        self.reload.generation += 1;
        let keys: Vec<String> = changes.live.iter().map(|c| c.key.clone()).collect();
        for c in &changes.live {
            log::info!("reload: {c}");
        }
        log::info!(
            "reload applied (config generation {}): {} changes; {} connections kept",
            self.reload.generation,
            keys.len(),
            self.clients.flows.in_use()
        );
        Outcome::Applied { generation: self.reload.generation, keys }
    }

    /// Listeners of the new file whose identity (name) exists but whose address changed.
    fn moved_listeners(&self, new: &Config) -> Vec<Change> {
        let ids = config::listener_ids(&new.io_conn.listeners);
        let mut out = Vec::new();
        for (l, id) in new.io_conn.listeners.iter().zip(&ids) {
            let old = self.clients.listeners.iter().find(|o| o.sock.is_some() && o.id == *id);
            if let Some(o) = old {
                if o.address != l.address {
                    out.push(Change {
                        key: format!("io_conn.listener[{id}].address"),
                        kind: ChangeKind::Changed,
                        old: o.address.to_string(),
                        new: l.address.to_string(),
                    });
                }
            }
        }
        out
    }

    /// Like at start: `max_connections` beyond what the open-files limit allows is lowered,
    /// with a warning.
    fn clamp_max_connections(&self, new: &mut Config) {
        use nix::sys::resource::{Resource, getrlimit};
        let Ok((nofile, _)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
        let fixed = crate::fixed_fds(new);
        let need = u64::from(new.io_conn.max_connections) + fixed;
        if need > nofile {
            let clamped = nofile.saturating_sub(fixed).max(1);
            log::warn!(
                "io_conn.max_connections = {} needs ~{need} open files but the limit is {nofile}; \
                 using max_connections = {clamped} (raise LimitNOFILE / ulimit -n)",
                new.io_conn.max_connections
            );
            new.io_conn.max_connections = u32::try_from(clamped).unwrap_or(u32::MAX);
        }
    }

    /// What happens to each listener of `new`; binds the new sockets. Err: the key and why.
    fn plan_listeners(&self, new: &Config) -> Result<Vec<Plan>, (String, String)> {
        let ids = config::listener_ids(&new.io_conn.listeners);
        let mut plans = Vec::with_capacity(ids.len());
        for (l, id) in new.io_conn.listeners.iter().zip(ids) {
            // The socket already bound to this address (port 0: the one of this identity).
            let old = self.clients.listeners.iter().position(|o| {
                o.sock.is_some() && o.address == l.address && (l.address.port() != 0 || o.id == id)
            });
            let plan = match old {
                Some(i)
                    if self.clients.listeners[i].id == id
                        && same_settings(&self.clients.listeners[i], l) =>
                {
                    Plan::Keep(i)
                }
                Some(i) => Plan::Retarget(i, l.clone(), id),
                None => match crate::bind_listener(l.address, new.io_conn.backlog) {
                    Ok(sock) => Plan::New(sock, l.clone(), id),
                    Err(e) => {
                        let key = format!("io_conn.listener[{id}]");
                        return Err((
                            key,
                            format!("cannot bind {} ({}): {e}", l.address, l.service),
                        ));
                    }
                },
            };
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Applies a validated, accepted config. Cannot fail.
    fn apply(&mut self, new: Config, plans: Vec<Plan>) {
        let old_backlog = self.cfg.io_conn.backlog;
        // Which listener entries connections still refer to.
        let mut referenced = vec![false; self.clients.listeners.len()];
        let flows = &self.clients.flows;
        for slot in 0..flows.capacity() as u32 {
            let f = flows.get(slot);
            if f.state != State::Free {
                if let Some(r) = referenced.get_mut(usize::from(f.listener)) {
                    *r = true;
                }
            }
        }
        let kept: Vec<usize> = plans
            .iter()
            .filter_map(|p| match p {
                Plan::Keep(i) | Plan::Retarget(i, ..) => Some(*i),
                Plan::New(..) => None,
            })
            .collect();
        // Listeners that go: stop accepting; their connections stay.
        for idx in 0..self.clients.listeners.len() {
            if kept.contains(&idx) {
                continue;
            }
            let l = &mut self.clients.listeners[idx];
            if let Some(sock) = l.sock.take() {
                if l.in_epoll {
                    let _ = self.cx.epoll.delete(&sock);
                }
                l.in_epoll = false;
                log::info!(
                    "listener {} ({}) removed: no longer accepting; its connections stay",
                    sock.local_addr().map_or_else(|_| l.address.to_string(), |a| a.to_string()),
                    l.service
                );
            }
        }
        for plan in plans {
            match plan {
                Plan::Keep(_) => {}
                Plan::Retarget(idx, l, id) if !referenced[idx] => {
                    // No connection uses the old settings: change them in place.
                    set_settings(&mut self.clients.listeners[idx], &l);
                    self.clients.listeners[idx].id = id;
                }
                Plan::Retarget(idx, l, id) => {
                    // Connections accepted so far keep the old entry (their framing and
                    // service); the socket moves to an entry with the new settings.
                    let old = &mut self.clients.listeners[idx];
                    let sock = old.sock.take().expect("kept listeners have a socket");
                    if old.in_epoll {
                        let _ = self.cx.epoll.delete(&sock);
                    }
                    old.in_epoll = false;
                    let own = old.own;
                    self.add_listener(sock, &l, id, own, &mut referenced);
                }
                Plan::New(sock, l, id) => {
                    let addr = sock.local_addr().unwrap_or(l.address);
                    log::info!("listener {addr} ({}, {}) added", l.service, l.framing());
                    self.add_listener(sock, &l, id, true, &mut referenced);
                }
            }
        }
        // Routing: every entry (also the ones kept for old connections) to its service's group.
        for l in &mut self.clients.listeners {
            l.mds = new.instances_for(&l.service);
        }
        let io = &new.io_conn;
        if io.backlog != old_backlog {
            self.relisten(io.backlog);
        }
        let lim = &mut self.clients.lim;
        lim.credit = io.output_credit;
        lim.credit_limit = lim.credit_limit.max(io.output_credit);
        lim.idle = nonzero(io.idle_timeout);
        lim.deadline = nonzero(io.message_deadline);
        // The next message framed on any connection is checked against the new limits.
        lim.http = crate::framing::http::Limits::from_config(&io.http);
        lim.resp = crate::framing::resp::Limits {
            max_elements: io.resp.max_elements as usize,
            max_bulk: usize::try_from(io.resp.max_bulk).unwrap_or(usize::MAX).min(lim.max_msg),
        };
        self.clients.set_budget(io.max_buffered);
        if io.max_connections > self.clients.max_conn {
            self.clients.flows.grow(io.max_connections);
        }
        self.clients.max_conn = io.max_connections;
        if io.max_connections_per_ip != self.cfg.io_conn.max_connections_per_ip {
            self.recount_per_ip(io.max_connections_per_ip, io.max_connections);
        }
        if io.spin != self.cfg.io_conn.spin {
            self.spin = SpinGate::new(io.spin);
        }
        set_log_level(io.log_level);
        self.cfg = Cow::Owned(new);
        // A group change may give waiting connections an md.
        self.clients.assign_unassigned(&mut self.cx, &mut self.links);
    }

    /// Registers `sock` for `l`, in a free entry (no socket, no connection) or a new one.
    fn add_listener(
        &mut self,
        sock: TcpListener,
        l: &config::Listener,
        id: String,
        own: bool,
        referenced: &mut Vec<bool>,
    ) {
        let cl = &mut self.clients;
        let free =
            (0..cl.listeners.len()).find(|&i| cl.listeners[i].sock.is_none() && !referenced[i]);
        let idx = match free {
            Some(i) => i,
            None if cl.listeners.len() + 1 < usize::from(u16::MAX) => {
                referenced.push(false);
                cl.listeners.push(Lst {
                    sock: None,
                    id: String::new(),
                    address: l.address,
                    own,
                    service: String::new(),
                    framing: config::Framing::Raw,
                    in_epoll: false,
                    mds: Vec::new(),
                    request: false,
                    depth: 1,
                    proxy: None,
                    proxy_from: Vec::new(),
                });
                cl.listeners.len() - 1
            }
            None => {
                log::error!("listener {} not added: too many listener entries", l.address);
                return;
            }
        };
        // Reused entries are taken: mark it so a second addition in this reload skips it.
        referenced[idx] = true;
        let ev = EpollEvent::new(EpollFlags::EPOLLIN, token(K_LISTENER, idx as u64));
        let in_epoll = match self.cx.epoll.add(&sock, ev) {
            Ok(()) => true,
            Err(e) => {
                log::error!("epoll add listener {}: {e}", l.address);
                false
            }
        };
        let e = &mut cl.listeners[idx];
        e.sock = Some(sock);
        e.id = id;
        e.address = l.address;
        e.own = own;
        e.in_epoll = in_epoll && cl.accept_paused_until.is_none();
        if !e.in_epoll && in_epoll {
            // Accepting is paused (EMFILE): `resume_accepting` adds it back.
            if let Some(s) = &e.sock {
                let _ = self.cx.epoll.delete(s);
            }
        }
        set_settings(e, l);
    }

    /// `listen(2)` again with a new backlog on the sockets io_conn bound itself (Linux changes
    /// the backlog of a listening socket; systemd's sockets keep the socket unit's `Backlog=`).
    fn relisten(&self, backlog: u32) {
        use nix::sys::socket::{Backlog, listen};
        let max = i32::from(Backlog::MAXCONN);
        let Ok(b) = Backlog::new(i32::try_from(backlog).unwrap_or(max).min(max)) else { return };
        for l in self.clients.listeners.iter().filter(|l| l.own) {
            if let Some(s) = &l.sock {
                if let Err(e) = listen(s, b) {
                    log::warn!("listen({}) again with backlog {backlog}: {e}", l.address);
                }
            }
        }
    }

    /// A new `max_connections_per_ip`: count the connections open now per address (with limit
    /// 0 nothing was counted).
    fn recount_per_ip(&mut self, limit: u32, max_conn: u32) {
        let cl = &mut self.clients;
        cl.per_ip = PerIp::new(limit, max_conn);
        for slot in 0..cl.flows.capacity() as u32 {
            let f = cl.flows.get(slot);
            // A flow reading its PROXY header is counted once the header names the client.
            if f.state != State::Free && f.has_client() && f.state != State::Header {
                // Over the limit already: those stay; new ones are refused until below it.
                cl.per_ip.admit_anyway(f.peer.ip());
            }
        }
    }
}

/// A change that adds, removes or moves a listening socket.
fn listener_socket_change(c: &Change) -> bool {
    let listener = c.key.starts_with("io_conn.listener[");
    listener
        && (matches!(c.kind, ChangeKind::Added | ChangeKind::Removed)
            || c.key.ends_with("].address"))
}

fn same_settings(o: &Lst, l: &config::Listener) -> bool {
    o.service == l.service
        && o.framing == l.framing()
        && o.request == (l.dispatch() == config::Dispatch::Request)
        && o.depth == l.pipeline_depth().max(1)
        && o.proxy == super::proxied::version(l)
        && o.proxy_from == l.proxy_from
}

fn set_settings(o: &mut Lst, l: &config::Listener) {
    o.service = l.service.clone();
    o.framing = l.framing();
    o.request = l.dispatch() == config::Dispatch::Request;
    o.depth = l.pipeline_depth().max(1);
    o.proxy = super::proxied::version(l);
    o.proxy_from = l.proxy_from.clone();
}

/// The log level of `io_conn.log_level`, unless `RUST_LOG` decides (main sets the logger up so).
pub(crate) fn set_log_level(level: config::LogLevel) {
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(level.filter());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::Apply;

    #[test]
    fn socket_changes_are_recognised() {
        let c = |key: &str, kind| Change {
            key: key.into(),
            kind,
            old: String::new(),
            new: String::new(),
        };
        assert!(listener_socket_change(&c("io_conn.listener[a]", ChangeKind::Added)));
        assert!(listener_socket_change(&c("io_conn.listener[a]", ChangeKind::Removed)));
        assert!(listener_socket_change(&c("io_conn.listener[a].address", ChangeKind::Changed)));
        assert!(!listener_socket_change(&c("io_conn.listener[a].service", ChangeKind::Changed)));
        assert!(!listener_socket_change(&c("io_conn.backlog", ChangeKind::Changed)));
        assert_eq!(config::classify("io_conn.listener[x]"), Some(Apply::Live));
    }

    #[test]
    fn replies() {
        let ok = Outcome::Applied { generation: 2, keys: vec!["io_conn.spin".into()] };
        assert_eq!(ok.reply(), "OK generation 2: 1 changes applied: io_conn.spin\n");
        assert!(crate::reload::reply_ok(&ok.reply()));
        let r = Outcome::Refused { keys: vec!["shared.name".into()], details: vec!["d".into()] };
        assert!(r.reply().starts_with("REFUSED shared.name: "));
        assert!(!crate::reload::reply_ok(&r.reply()));
        assert!(!crate::reload::reply_ok(&Outcome::Invalid("x".into()).reply()));
    }
}
