//! systemd's notification protocol, end to end: the real io_conn and md binaries with
//! `NOTIFY_SOCKET` pointing at a datagram socket the test binds (what systemd does for a
//! `Type=notify` unit) and `WATCHDOG_USEC` set (what `WatchdogSec=` does). Only order and content
//! are asserted; every wait has the watchdog. Datagrams are compared without their final newline:
//! systemd splits a datagram into lines, and `rt::notify` (through the sd-notify crate) ends each
//! line with `\n` while libsystemd's callers usually do not.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::util::{self, KillOnDrop, Server, Setup, WATCHDOG};

/// A bound notification socket in its own scratch directory (removed on drop).
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    dir: PathBuf,
}

impl NotifySocket {
    fn bind(test: &str) -> Self {
        // Not the server's directory (`Server::start_with` empties that one).
        let dir = util::test_dir(&format!("{}-sock", util::unique_name(test)));
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notification socket");
        sock.set_read_timeout(Some(WATCHDOG)).expect("read timeout");
        Self { sock, path, dir }
    }

    /// The environment of a process that systemd watches with a 200 ms watchdog. No
    /// `WATCHDOG_PID`: the pid is known only after the spawn, and unset it means "whoever reads
    /// it" (as in `sd_watchdog_enabled`).
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("NOTIFY_SOCKET".into(), self.path.display().to_string()),
            ("WATCHDOG_USEC".into(), "200000".into()),
        ]
    }

    /// The next datagram, without its final newline (panics after the watchdog).
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).expect("a notification within the watchdog");
        let msg = std::str::from_utf8(&buf[..n]).expect("notifications are UTF-8");
        msg.strip_suffix('\n').unwrap_or(msg).to_owned()
    }

    /// Every datagram queued right now, each without its final newline.
    fn queued(&self) -> Vec<String> {
        self.sock.set_nonblocking(true).expect("nonblocking");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            out.push(msg.strip_suffix('\n').unwrap_or(&msg).to_owned());
        }
        self.sock.set_nonblocking(false).expect("blocking");
        out
    }

    /// Reads `n` watchdog pings; anything else in between fails.
    fn expect_pings(&self, n: usize) {
        for _ in 0..n {
            assert_eq!(self.next(), "WATCHDOG=1");
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// io_conn says READY=1 (with the listeners in STATUS) once it serves, pings the watchdog from
/// its loop while idle, and says STOPPING=1 when SIGTERM starts the drain. Its md child (started
/// with `--spawn-md`) does not inherit the socket: nothing else ever arrives.
#[test]
fn io_conn_ready_watchdog_stopping() {
    let notify = NotifySocket::bind("sdnotify_io");
    let sut = Server::start_with(
        "sdnotify_io",
        Setup { spawn_md: 1, max_instances: 1, env: notify.env(), ..Setup::default() },
    );
    // md 0 said HELLO, so it attached: had it inherited NOTIFY_SOCKET, its READY=1 is queued.
    let first = notify.next();
    assert!(first.starts_with("READY=1\nSTATUS=listening on 127.0.0.1:"), "first: {first:?}");
    assert!(first.contains("(echo)") && first.contains("(dumb)"), "status: {first:?}");
    for msg in notify.queued() {
        assert_eq!(msg, "WATCHDOG=1", "only io_conn's pings may follow READY");
    }
    // The loop is idle (no clients): these pings come from the timer waking it.
    notify.expect_pings(3);

    sut.terminate();
    let stopping = loop {
        match notify.next() {
            ping if ping == "WATCHDOG=1" => continue,
            msg => break msg,
        }
    };
    assert!(
        stopping.starts_with("STOPPING=1\nSTATUS=SIGTERM: draining"),
        "after SIGTERM: {stopping:?}"
    );
    sut.wait_clean_exit();
}

/// md says READY=1 once attached, pings the watchdog from its loop, reports a restart of io_conn
/// in STATUS (waiting, then attached to the new epoch, without a second READY=1), and says
/// STOPPING=1 on SIGTERM.
#[test]
fn md_ready_watchdog_reattach_stopping() {
    let notify = NotifySocket::bind("sdnotify_md");
    let mut sut = Server::start_with(
        "sdnotify_md",
        Setup { spawn_md: 0, max_instances: 1, ..Setup::default() },
    );
    let mut md = KillOnDrop(
        Command::new(util::md_bin())
            .arg("--config")
            .arg(&sut.config)
            .args(["--instance", "0"])
            .env_remove("WATCHDOG_PID")
            .envs(notify.env())
            .stdin(Stdio::null())
            .spawn()
            .expect("start md"),
    );

    // io_conn is ready before md starts: md attaches at its first look and says READY=1 then.
    let ready = loop {
        match notify.next() {
            msg if msg == "WATCHDOG=1" => continue,
            msg => break msg,
        }
    };
    assert!(
        ready.starts_with("READY=1\nSTATUS=instance 0 attached to io_conn epoch "),
        "md's first state: {ready:?}"
    );
    sut.wait_md_live(1);
    notify.expect_pings(3);

    // io_conn dies and comes back: md waits and re-attaches; it stays READY (no second one).
    sut.kill9();
    sut.relaunch(0);
    sut.wait_md_live(1);
    let attached = loop {
        match notify.next() {
            // Pings, and whatever md reports while io_conn is away ("waiting for io_conn ...").
            msg if msg == "WATCHDOG=1" => continue,
            msg if msg.starts_with("STATUS=") && !msg.contains(" attached ") => continue,
            msg => break msg,
        }
    };
    assert!(
        attached.starts_with("STATUS=instance 0 attached to io_conn epoch "),
        "after the restart: {attached:?}"
    );
    assert_ne!(epoch(&ready), epoch(&attached), "re-attached to the same io_conn?");
    notify.expect_pings(2);

    let pid = nix::unistd::Pid::from_raw(md.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM md");
    let stopping = loop {
        match notify.next() {
            msg if msg == "WATCHDOG=1" => continue,
            msg => break msg,
        }
    };
    assert_eq!(stopping, "STOPPING=1");
    let status = md.0.wait().expect("wait md");
    assert!(status.success(), "md exited with {status}");
    sut.stop();
}

/// The epoch in "... attached to io_conn epoch E generation G".
fn epoch(status: &str) -> u64 {
    status
        .split("epoch ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no epoch in {status:?}"))
}

/// md started before io_conn (what `md@.service`, ordered Before= `io_conn.service`, does when the
/// set starts): md says READY=1 at once with `STATUS=waiting for io_conn ...` (so systemd goes on
/// and starts io_conn), then `STATUS=... attached ...` when io_conn is up, without a second
/// READY=1. When io_conn then stops cleanly (first, as the stop order wants) and md gets SIGTERM,
/// md exits 0 at once: with `md.drain_deadline = "60s"` and a 30 s watchdog here, an md that waited
/// for its drain deadline fails the test.
#[test]
fn md_ready_while_waiting_for_io_conn_and_prompt_exit_after_it() {
    ready_while_waiting("sdnotify_before", false);
}

/// The same without a pidfd of io_conn (`SHMSRV_MD_NO_PIDFD`: md notices io_conn's exit by its
/// segment, within a second), and SIGTERM sent to md right after io_conn exited, so md may still be
/// serving (it then starts a leave that nobody acknowledges): it still exits 0 long before its
/// 60 s `md.drain_deadline`.
#[test]
fn md_without_pidfd_exits_promptly_when_io_conn_stopped_first() {
    ready_while_waiting("sdnotify_nopidfd", true);
}

fn ready_while_waiting(test: &str, no_pidfd: bool) {
    let notify = NotifySocket::bind(test);
    let mut sut = Server::start_with(
        test,
        Setup {
            spawn_md: 0,
            max_instances: 1,
            md_extra: "drain_deadline = \"60s\"",
            ..Setup::default()
        },
    );
    // A config and no io_conn: stop the one start_with started (it removes its segments).
    sut.terminate();
    let status = sut.child.take().expect("io_conn").wait().expect("wait io_conn");
    assert!(status.success(), "io_conn exited with {status}");
    let mut md = KillOnDrop(
        Command::new(util::md_bin())
            .arg("--config")
            .arg(&sut.config)
            .args(["--instance", "0"])
            .env_remove("WATCHDOG_PID")
            .envs(notify.env())
            .envs(no_pidfd.then_some(("SHMSRV_MD_NO_PIDFD", "1")))
            .stdin(Stdio::null())
            .spawn()
            .expect("start md"),
    );
    let next_state = || loop {
        match notify.next() {
            msg if msg == "WATCHDOG=1" => continue,
            msg => break msg,
        }
    };
    let ready = next_state();
    assert!(
        ready.starts_with("READY=1\nSTATUS=waiting for io_conn (segment ")
            && ready.ends_with(" not found)"),
        "md's first state without io_conn: {ready:?}"
    );
    notify.expect_pings(2);

    sut.relaunch(0);
    sut.wait_md_live(1);
    let attached = next_state();
    assert!(
        attached.starts_with("STATUS=instance 0 attached to io_conn epoch "),
        "after io_conn started: {attached:?}"
    );
    let mut c = sut.connect("dumb/line");
    c.write_all(b"PING\n").expect("write");
    assert_eq!(util::read_line(&mut c), "PONG\n");
    drop(c);

    // The stop order: io_conn first (it drains and exits), then md.
    sut.terminate();
    let status = sut.child.take().expect("io_conn").wait().expect("wait io_conn");
    assert!(status.success(), "io_conn exited with {status}");
    if !no_pidfd {
        loop {
            match next_state() {
                msg if msg.starts_with("STATUS=waiting for io_conn") => break,
                msg => assert!(!msg.contains("READY=1"), "a second READY=1: {msg:?}"),
            }
        }
    }
    let pid = nix::unistd::Pid::from_raw(md.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM md");
    loop {
        match next_state() {
            msg if msg == "STOPPING=1" => break,
            // Without a pidfd md may notice io_conn's exit only now.
            msg if no_pidfd && msg.starts_with("STATUS=") => continue,
            msg => panic!("after SIGTERM: {msg:?}"),
        }
    }
    let until = std::time::Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(st) = md.0.try_wait().expect("wait md") {
            break st;
        }
        assert!(std::time::Instant::now() < until, "md did not exit after io_conn was gone");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "md exited with {status}");
}
