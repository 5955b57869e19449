//! The systemd notification protocol (`sd_notify(3)`), without libsystemd: readiness, status,
//! stopping and watchdog pings for `Type=notify` units.
//!
//! Used by md (`md::serve` says `READY=1` at the first attach and `STOPPING=1` on shutdown; the
//! runner pings the watchdog once per loop iteration through a [`Watchdog`]) and by io_conn (its
//! main says `READY=1` once the listeners, queue pairs and stats segment exist; its loop pings the
//! watchdog and says `STOPPING=1` when it starts draining). Both say [`reloading`] when a
//! config reload begins and [`reloaded`] (`READY=1` and a status) when it is over.
//!
//! Every function reads `$NOTIFY_SOCKET` when called and is a no-op returning `Ok` when it is
//! unset or empty (not started by systemd, or a test). One datagram per call; a datagram may
//! carry several `KEY=VALUE` lines ([`notify`], [`send`]). Nothing here blocks: the socket is a
//! datagram socket and systemd reads it.
//!
//! io_conn removes [`NOTIFY_SOCKET`], [`WATCHDOG_USEC`] and [`WATCHDOG_PID`] from the
//! environment of the md children it starts (`--spawn-md`): the unit's `NotifyAccess=main` makes
//! systemd ignore them anyway, and a child must never ping the watchdog on its parent's behalf.
//!
//! # What comes from the `sd-notify` crate, and what is ours
//!
//! From [`sd_notify`]: the message vocabulary ([`NotifyState`], re-exported, and its formatting:
//! one `KEY=VALUE\n` line per state) and the delivery when `$NOTIFY_SOCKET` is a path, which is
//! what systemd sets (`/run/systemd/notify`).
//!
//! Ours, because sd-notify 0.5 lacks it:
//! * **abstract socket names**: `sd_notify(3)` says a `$NOTIFY_SOCKET` starting with `@` is in
//!   the abstract namespace; sd-notify connects to it as a (relative) path and fails. [`send`]
//!   delivers those with [`notify_to`];
//! * **an explicit socket** ([`notify_to`]): sd-notify only reads the environment; tests and
//!   callers with their own socket need the address passed in;
//! * **an empty `$NOTIFY_SOCKET`** is "unset" here, as in libsystemd (sd-notify fails on it), and
//!   a relative path is refused with `InvalidInput` instead of being tried against the working
//!   directory;
//! * **the watchdog interval** ([`watchdog_interval_from`]): `sd_notify::watchdog_enabled`
//!   returns `Some(0)` for `WATCHDOG_USEC=0` and applies the interval when `WATCHDOG_PID` is not
//!   a number, where `sd_watchdog_enabled(3)` disables the watchdog in both cases; and it only
//!   reads the process environment, so it cannot be tested without changing that. One parser,
//!   15 lines, with its table-driven test;
//! * **[`Watchdog`]**: the rate limit (a ping per half interval) and the deadline an event loop
//!   sleeps until, which sd-notify does not offer.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Instant;
//!
//! rt::notify::ready()?; // after the service can take work
//! let mut wd = rt::notify::Watchdog::from_env(); // disabled unless WatchdogSec= is set
//! loop {
//!     wd.tick(Instant::now()); // once per loop iteration; pings at half the interval
//!     // ... wait at most until `wd.next_due()` ...
//! #   break;
//! }
//! rt::notify::send(&[rt::notify::NotifyState::Stopping, rt::notify::NotifyState::Status("bye")])?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

pub use sd_notify::NotifyState;

/// The environment variable systemd sets to the notification socket's path.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog interval in microseconds (`WatchdogSec=`).
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The pid the watchdog interval is meant for (the main process).
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Sends `states` as one datagram to `$NOTIFY_SOCKET`; `Ok` without sending when the variable is
/// unset or empty. A path goes through [`sd_notify::notify`], an abstract name (`@...`) through
/// [`notify_to`]; anything else is `InvalidInput`.
pub fn send(states: &[NotifyState<'_>]) -> io::Result<()> {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else { return Ok(()) };
    match socket.as_bytes().first() {
        None => Ok(()),
        Some(b'/') => sd_notify::notify(states),
        Some(_) => notify_to(&socket, &message(states)),
    }
}

/// Sends `states` with file descriptors attached (`FDSTORE=1` and `FDNAME=`: systemd's file
/// descriptor store); `Ok` without sending when `$NOTIFY_SOCKET` is unset or empty.
pub fn send_with_fds(
    states: &[NotifyState<'_>],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET).filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    // sd-notify's own `notify_with_fds` needs its `fdstore` feature and another crate (sendfd);
    // shmq's SCM_RIGHTS sender does the same in one `sendmsg`.
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(&socket)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.connect_addr(&addr)?;
    shmq::fdpass::send_with_fds(&sock, message(states).as_bytes(), fds)
}

/// Sends `state` (one or more `KEY=VALUE` lines) to `$NOTIFY_SOCKET`; `Ok` without sending when
/// the variable is unset or empty.
pub fn notify(state: &str) -> io::Result<()> {
    send(&[NotifyState::Custom(state)])
}

/// Sends `state` as one datagram to the socket `socket`: a filesystem path, or an abstract name
/// when it starts with `@`. A relative path is `InvalidInput`.
pub fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None if bytes.first() == Some(&b'/') => SocketAddr::from_pathname(socket)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an abstract name (@...)",
            ));
        }
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short notification datagram"));
    }
    Ok(())
}

/// The datagram [`sd_notify::notify`] sends for `states`: one line per state.
fn message(states: &[NotifyState<'_>]) -> String {
    let mut msg = String::new();
    for s in states {
        let _ = writeln!(msg, "{s}");
    }
    msg
}

/// `READY=1`: start-up is complete (systemd then considers the unit started).
pub fn ready() -> io::Result<()> {
    send(&[NotifyState::Ready])
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (now): a reload of the configuration has begun;
/// systemd shows the unit as "reloading" until the next `READY=1` ([`reloaded`]). systemd 253+
/// requires the timestamp with `Type=notify-reload`; 252 accepts and ignores it.
pub fn reloading() -> io::Result<()> {
    send(&[NotifyState::Reloading, NotifyState::monotonic_usec_now()?])
}

/// `READY=1` with a `STATUS=` line: a reload is over (applied or refused), the service is ready
/// again. Newlines in `status` are replaced by spaces.
pub fn reloaded(status: &str) -> io::Result<()> {
    send(&[NotifyState::Ready, NotifyState::Status(&status.replace('\n', " "))])
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() -> io::Result<()> {
    send(&[NotifyState::Stopping])
}

/// `WATCHDOG=1`: the main loop is alive. Prefer a [`Watchdog`], which rate-limits.
pub fn watchdog() -> io::Result<()> {
    send(&[NotifyState::Watchdog])
}

/// `STATUS=...`: a one-line status shown by `systemctl status`. Newlines in `status` are
/// replaced by spaces (a newline would start another assignment).
pub fn status(status: &str) -> io::Result<()> {
    send(&[NotifyState::Status(&status.replace('\n', " "))])
}

/// The watchdog interval systemd expects pings within, from `$WATCHDOG_USEC` and
/// `$WATCHDOG_PID` (see [`watchdog_interval_from`]); `None`: no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var_os(WATCHDOG_USEC).as_deref(),
        std::env::var_os(WATCHDOG_PID).as_deref(),
        std::process::id(),
    )
}

/// The rules of `sd_watchdog_enabled(3)`: `usec` must be a positive integer; when `pid` is set
/// it must be `my_pid` (the variables were meant for another process otherwise, e.g. inherited
/// from a parent), and when it is unset the interval applies to whoever reads it.
pub fn watchdog_interval_from(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    my_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.to_str()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        let pid: u32 = pid.to_str()?.trim().parse().ok()?;
        if pid != my_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Rate-limited watchdog pings for an event loop: [`Watchdog::tick`] once per iteration sends
/// `WATCHDOG=1` at most once per half interval (systemd's advice), and [`Watchdog::next_due`]
/// tells the loop how long it may sleep. Disabled (every call a no-op) without a watchdog.
#[derive(Debug, Clone)]
pub struct Watchdog {
    /// Half the watchdog interval; `None`: disabled.
    period: Option<Duration>,
    /// When the next ping is due (`None` before the first tick: ping at once).
    next: Option<Instant>,
    /// The last ping failed (logged once per change, not per ping).
    failing: bool,
}

impl Watchdog {
    /// From `$WATCHDOG_USEC`/`$WATCHDOG_PID` ([`watchdog_interval`]).
    pub fn from_env() -> Self {
        Self::new(watchdog_interval())
    }

    /// With the given interval (`None`: disabled); pings every `interval / 2`.
    pub fn new(interval: Option<Duration>) -> Self {
        let period = interval.map(|i| (i / 2).max(Duration::from_millis(1)));
        Self { period, next: None, failing: false }
    }

    /// Half the interval: the longest a loop using this may sleep. `None`: disabled.
    pub fn period(&self) -> Option<Duration> {
        self.period
    }

    /// When the loop must tick next. `None`: disabled.
    pub fn next_due(&self) -> Option<Instant> {
        let period = self.period?;
        Some(self.next.unwrap_or_else(|| Instant::now() + period))
    }

    /// Pings if a ping is due at `now`; returns whether it sent one. A failure is logged when
    /// it starts and when it ends.
    pub fn tick(&mut self, now: Instant) -> bool {
        let Some(period) = self.period else { return false };
        if self.next.is_some_and(|next| now < next) {
            return false;
        }
        self.next = Some(now + period);
        match watchdog() {
            Ok(()) => {
                if std::mem::replace(&mut self.failing, false) {
                    log::info!("systemd watchdog pings work again");
                }
                true
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    log::warn!("systemd watchdog ping failed: {e}");
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("datagram within the timeout");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    /// A fresh directory for one test's socket (pid plus test name: tests run in parallel).
    fn socket_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rt-notify-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    fn bind(path: &std::path::Path) -> UnixDatagram {
        let sock = UnixDatagram::bind(path).expect("bind");
        // A watchdog against a hang, not a latency requirement.
        sock.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        sock
    }

    #[test]
    fn notify_to_a_path_delivers_the_exact_bytes() {
        let dir = socket_dir("path");
        let path = dir.join("notify.sock");
        let sut = bind(&path);
        notify_to(path.as_os_str(), "READY=1\nSTATUS=listening").expect("send");
        notify_to(path.as_os_str(), "WATCHDOG=1").expect("send");
        assert_eq!(recv(&sut), "READY=1\nSTATUS=listening");
        assert_eq!(recv(&sut), "WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notify_to_an_abstract_name() {
        let name = format!("rt-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let sut = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        sut.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").expect("send");
        assert_eq!(recv(&sut), "STOPPING=1");
    }

    #[test]
    fn notify_to_rejects_relative_paths_and_reports_missing_sockets() {
        assert_eq!(
            notify_to(OsStr::new("relative.sock"), "READY=1").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let missing = std::env::temp_dir().join(format!("rt-notify-none-{}", std::process::id()));
        assert!(notify_to(missing.as_os_str(), "READY=1").is_err());
    }

    /// The environment variable that turns [`env_child`] from a no-op into the sender.
    const CHILD: &str = "RT_NOTIFY_TEST_CHILD";

    /// Runs [`env_child`] in a copy of this test binary with `NOTIFY_SOCKET=socket`: the
    /// environment is per process, and changing this one's would race the other tests.
    fn run_child(socket: &OsStr) {
        let out = Command::new(std::env::current_exe().expect("current_exe"))
            .args(["--exact", "notify::tests::env_child", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env(NOTIFY_SOCKET, socket)
            .env_remove(WATCHDOG_USEC)
            .env_remove(WATCHDOG_PID)
            .output()
            .expect("run the child");
        assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the child ran: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// The child half of the `$NOTIFY_SOCKET` tests (a no-op in a normal run).
    #[test]
    fn env_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        ready().expect("ready");
        status("draining\n3 connections").expect("status");
        notify("STOPPING=1\nSTATUS=bye").expect("notify");
        let mut wd = Watchdog::new(Some(Duration::from_secs(10)));
        assert!(wd.tick(Instant::now()), "the ping went out");
    }

    /// What [`env_child`] sends, datagram by datagram: every helper ends each line with `\n`.
    const CHILD_SENDS: [&str; 4] = [
        "READY=1\n",
        "STATUS=draining 3 connections\n",
        "STOPPING=1\nSTATUS=bye\n",
        "WATCHDOG=1\n",
    ];

    #[test]
    fn notify_socket_path_from_the_environment() {
        let dir = socket_dir("env-path");
        let path = dir.join("notify.sock");
        let sut = bind(&path);
        run_child(path.as_os_str());
        for want in CHILD_SENDS {
            assert_eq!(recv(&sut), want);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notify_socket_abstract_name_from_the_environment() {
        let name = format!("rt-notify-env-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let sut = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        sut.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        run_child(OsStr::new(&format!("@{name}")));
        for want in CHILD_SENDS {
            assert_eq!(recv(&sut), want);
        }
    }

    #[test]
    fn watchdog_interval_follows_sd_watchdog_enabled() {
        let s = |v: &'static str| Some(OsStr::new(v));
        assert_eq!(watchdog_interval_from(s("200000"), None, 7), Some(Duration::from_millis(200)));
        assert_eq!(
            watchdog_interval_from(s("200000"), s("7"), 7),
            Some(Duration::from_millis(200))
        );
        assert_eq!(watchdog_interval_from(s("200000"), s("8"), 7), None, "meant for another pid");
        assert_eq!(watchdog_interval_from(None, s("7"), 7), None);
        assert_eq!(watchdog_interval_from(s("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(s("x"), None, 7), None);
        assert_eq!(watchdog_interval_from(s("100"), s("x"), 7), None);
    }

    #[test]
    fn watchdog_pings_at_most_once_per_half_interval() {
        // No NOTIFY_SOCKET is needed for the rate limit: a ping to nowhere is a successful no-op.
        let mut sut = Watchdog::new(Some(Duration::from_secs(10)));
        assert_eq!(sut.period(), Some(Duration::from_secs(5)));
        let t0 = Instant::now();
        assert!(sut.tick(t0), "the first tick pings");
        assert!(!sut.tick(t0 + Duration::from_secs(4)));
        assert_eq!(sut.next_due(), Some(t0 + Duration::from_secs(5)));
        assert!(sut.tick(t0 + Duration::from_secs(5)));
        assert!(!sut.tick(t0 + Duration::from_secs(6)));

        let mut off = Watchdog::new(None);
        assert!(!off.tick(t0));
        assert_eq!(off.next_due(), None);
    }
}
