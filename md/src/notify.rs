//! The systemd notification protocol (`sd_notify(3)`), without libsystemd: readiness, status,
//! stopping and watchdog pings for `Type=notify` units.
//!
//! Used by md ([`crate::serve`] says `READY=1` at the first attach and `STOPPING=1` on shutdown;
//! the runner pings the watchdog once per loop iteration through a [`Watchdog`]) and by io_conn
//! (its main says `READY=1` once the listeners, queue pairs and stats segment exist; its loop
//! pings the watchdog and says `STOPPING=1` when it starts draining). io_conn depends on md for
//! this module alone, so the protocol is written once.
//!
//! Every function reads `$NOTIFY_SOCKET` when called and is a no-op returning `Ok` when it is
//! unset (not started by systemd, or a test). A socket name starting with `@` is in the abstract
//! namespace. One datagram per call; a datagram may carry several `KEY=VALUE` lines
//! ([`notify`]). Nothing here blocks: the socket is a datagram socket and systemd reads it.
//!
//! io_conn removes `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment of
//! the md children it starts (`--spawn-md`): the unit's `NotifyAccess=main` makes systemd ignore
//! them anyway, and a child must never ping the watchdog on its parent's behalf.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Instant;
//!
//! md::notify::ready()?; // after the service can take work
//! let mut wd = md::notify::Watchdog::from_env(); // disabled unless WatchdogSec= is set
//! loop {
//!     wd.tick(Instant::now()); // once per loop iteration; pings at half the interval
//!     // ... wait at most until `wd.next_due()` ...
//! #   break;
//! }
//! md::notify::stopping()?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// The environment variable systemd sets to the notification socket's path.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog interval in microseconds (`WatchdogSec=`).
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The pid the watchdog interval is meant for (the main process).
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Sends `state` (one or more `KEY=VALUE` lines) to `$NOTIFY_SOCKET`; `Ok` without sending when
/// the variable is unset or empty.
pub fn notify(state: &str) -> io::Result<()> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(path) if !path.is_empty() => notify_to(&path, state),
        _ => Ok(()),
    }
}

/// Sends `state` as one datagram to the socket `socket`: a filesystem path, or an abstract name
/// when it starts with `@`.
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

/// `READY=1`: start-up is complete (systemd then considers the unit started).
pub fn ready() -> io::Result<()> {
    notify("READY=1")
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() -> io::Result<()> {
    notify("STOPPING=1")
}

/// `WATCHDOG=1`: the main loop is alive. Prefer a [`Watchdog`], which rate-limits.
pub fn watchdog() -> io::Result<()> {
    notify("WATCHDOG=1")
}

/// `STATUS=...`: a one-line status shown by `systemctl status`. Newlines in `status` are
/// replaced by spaces (a newline would start another assignment).
pub fn status(status: &str) -> io::Result<()> {
    notify(&format!("STATUS={}", status.replace('\n', " ")))
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
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("datagram within the timeout");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    #[test]
    fn notify_to_a_path_delivers_the_exact_bytes() {
        let dir = std::env::temp_dir().join(format!("md-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let sut = UnixDatagram::bind(&path).expect("bind");
        sut.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        notify_to(path.as_os_str(), "READY=1\nSTATUS=listening").expect("send");
        notify_to(path.as_os_str(), "WATCHDOG=1").expect("send");
        assert_eq!(recv(&sut), "READY=1\nSTATUS=listening");
        assert_eq!(recv(&sut), "WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notify_to_an_abstract_name() {
        let name = format!("md-notify-test-{}", std::process::id());
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
        let missing = std::env::temp_dir().join(format!("md-notify-none-{}", std::process::id()));
        assert!(notify_to(missing.as_os_str(), "READY=1").is_err());
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
