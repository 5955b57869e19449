//! The process around the loop: signals, the timer, md children and md deaths, the drain at
//! shutdown and the cleanup at exit.

use nix::sys::signal::Signal;
use shmq::stats::monotonic_ns;

use super::{Server, link};
use crate::counters::Io;

impl Server<'_> {
    pub(super) fn on_signal(&mut self) {
        loop {
            let Some(sfd) = &self.signals else { return };
            match sfd.read_signal() {
                Ok(Some(si)) => match Signal::try_from(si.ssi_signo as i32) {
                    Ok(Signal::SIGTERM) => self.begin_drain("SIGTERM"),
                    Ok(Signal::SIGINT) => self.begin_drain("SIGINT"),
                    Ok(Signal::SIGHUP) => {
                        log::info!("SIGHUP ignored: restart to change the config")
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

    /// md instance `i` is gone: close its flows, reset its pair (new generation).
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
            if who.liveness() != shmq::sys::Liveness::Alive {
                st.mark_md_dead(i, who);
            }
        }
        log::error!(
            "md instance {i} (pid {}) lost: {why}; closing its {n} connections and resetting its queue pair",
            who.map_or_else(|| "?".to_owned(), |p| p.pid.to_string())
        );
        self.clients.close_md_flows(&mut self.cx, &mut self.links, i);
        let stats = self.stats.as_mut();
        self.links.reset(&mut self.cx, &mut self.inbound, stats, i);
    }

    pub(super) fn begin_drain(&mut self, why: &str) {
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
        log::info!("io_conn stopped; counters: {:?}", self.cx.c);
    }
}
