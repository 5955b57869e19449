//! io_conn: the process that owns every client socket of shmsrv.
//!
//! One epoll loop ([`run`]) accepts connections, cuts each client's byte stream into messages
//! ([`framing`]), and exchanges them with md instances over the shared-memory queue pairs it
//! creates (`shmq::pair`), one pair per md slot. See docs/ARCHITECTURE.md "io_conn".
//!
//! The binary (`src/main.rs`) is thin: it blocks the signals, parses arguments, loads the config,
//! raises the open-files limit, binds the listeners ([`bind_listener`]) and calls [`run`].
//! Tests drive [`run`] directly on port-0 listeners with a [`Shutdown`] they trigger.
//!
//! # Example
//!
//! ```no_run
//! use io_conn::{Options, Shutdown, bind_listener, run};
//!
//! let cfg = config::Config::default();
//! let listeners = cfg
//!     .io_conn
//!     .listeners
//!     .iter()
//!     .map(|l| Ok((bind_listener(l.address, cfg.io_conn.backlog)?, l.clone())))
//!     .collect::<std::io::Result<Vec<_>>>()?;
//! let shutdown = Shutdown::new()?;
//! let handle = shutdown.handle();
//! std::thread::spawn(move || {
//!     std::thread::sleep(std::time::Duration::from_secs(1));
//!     handle.trigger();
//! });
//! let counters = run(&cfg, listeners, Options { shutdown: Some(shutdown), ..Options::default() })?;
//! println!("{counters:?}");
//! # Ok::<(), anyhow::Error>(())
//! ```

#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use config::Config;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, sockopt,
};

pub mod activation;
pub mod counters;
pub mod flows;
pub mod framing;
pub mod handover;
mod kv_cache;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod resp;
mod server;
mod spawn;
mod stats;

pub use counters::Counters;
/// The HTTP `Date` value for io_conn's own error replies (`framing::http` names it
/// `crate::httpdate`, so the fuzz crate can include the framers with the file alone).
pub(crate) use rt::httpdate;
pub use spawn::SpawnMd;

/// A bound listening socket and the config entry it serves.
pub type BoundListener = (TcpListener, config::Listener);

/// How [`run`] is told to stop from inside the same process (tests, embedding): an eventfd in
/// the loop's epoll. Create it, keep a [`ShutdownHandle`], pass it in [`Options::shutdown`]. A
/// trigger is the same as SIGTERM (stop accepting, drain, exit); a second one exits at once.
/// Defined in `rt`, shared with md.
pub use rt::{Shutdown, ShutdownHandle};

/// What [`run`] needs besides the config and listeners.
#[derive(Default)]
pub struct Options {
    /// An in-process shutdown trigger.
    pub shutdown: Option<Shutdown>,
    /// Handle SIGTERM, SIGINT (drain and exit), SIGUSR2 (hand the connections to a successor),
    /// SIGHUP (reload) and SIGCHLD through a signalfd.
    /// The caller must have blocked [`handled_signals`] in every thread first (main does, before
    /// anything else).
    pub signals: bool,
    /// Start md children once the queue pairs exist (`--spawn-md N`).
    pub spawn: Option<SpawnMd>,
    /// Connections handed over by a predecessor ([`handover`]), their listener indexes mapped
    /// to `listeners`: adopted once the queue pairs exist and re-opened to md as md attaches.
    pub adopt: Vec<handover::Adopted>,
    /// The file the config came from: a reload (SIGHUP, the control socket) reads it again
    /// (None: the built-in defaults).
    pub config_path: Option<PathBuf>,
    /// The listeners came from systemd (socket activation, [`activation`]): a reload refuses
    /// to add, remove or move one.
    pub activated: bool,
    /// Open the control socket `io_conn --reload` talks to ([`reload::control_path`]).
    pub control: bool,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("shutdown", &self.shutdown)
            .field("signals", &self.signals)
            .field("spawn", &self.spawn)
            .field("adopt", &self.adopt.len())
            .field("config_path", &self.config_path)
            .field("activated", &self.activated)
            .field("control", &self.control)
            .finish()
    }
}

/// The signals io_conn takes through its signalfd.
pub fn handled_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD, Signal::SIGUSR2] {
        s.add(sig);
    }
    s
}

/// Runs io_conn until it is shut down (SIGTERM/SIGINT with [`Options::signals`], or
/// [`Options::shutdown`]): creates every md queue pair and the stats segment `{name}.stats`
/// (replacing a dead predecessor's, refusing a live one's), starts md children if asked, serves
/// (mirroring its counters into the stats segment once per loop iteration), drains within
/// `io_conn.drain_deadline`, stops the children and removes the pairs and the stats segment.
/// Returns the final counters.
pub fn run(cfg: &Config, listeners: Vec<BoundListener>, opts: Options) -> anyhow::Result<Counters> {
    run_with_ready(cfg, listeners, opts, || {})
}

/// [`run`], calling `ready` once the queue pairs and the stats segment exist and md children were started, just
/// before the loop starts serving (the binary prints `ready` there).
pub fn run_with_ready(
    cfg: &Config,
    listeners: Vec<BoundListener>,
    opts: Options,
    ready: impl FnOnce(),
) -> anyhow::Result<Counters> {
    let mut server = server::Server::new(cfg, listeners, opts)?;
    ready();
    server.run()
}

/// Sets the log level of `io_conn.log_level` (at start and on a reload), unless `RUST_LOG` is
/// set: then the logger's own filter decides and this changes nothing.
pub fn set_log_level(level: config::LogLevel) {
    server::set_log_level(level);
}

/// The queue-pair parameters of the config's `[shared]` section (the same mapping md uses).
pub use rt::pair_config;

/// Binds a nonblocking TCP listener with `SO_REUSEADDR` and the given backlog (capped at the
/// kernel's `SOMAXCONN`, which the kernel would apply anyway). IPv6 addresses are bound
/// v6-only, so `[::]:p` and `0.0.0.0:p` can both be listed.
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(addr))?;
    let max = i32::from(Backlog::MAXCONN);
    let backlog =
        Backlog::new(i32::try_from(backlog).unwrap_or(max).min(max)).map_err(io::Error::from)?;
    socket::listen(&fd, backlog)?;
    Ok(TcpListener::from(fd))
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// File descriptors io_conn needs besides one per connection: listeners, two FIFOs and a pidfd
/// per md slot, a pidfd per child, epoll, timerfd, signalfd, stdio and some slack.
pub fn fixed_fds(cfg: &Config) -> u64 {
    cfg.io_conn.listeners.len() as u64 + 4 * u64::from(cfg.md.max_instances) + 64
}

/// Where the md binary is: `$SHMSRV_MD_BIN`, else `md` next to the current executable.
///
/// It is what an md instance runs unless its `[[md.group]]` names a `binary`
/// ([`config::Config::binary_for`]). `$SHMSRV_MD_BIN` is an override for tests and development
/// (e.g. a custom md for every instance without writing groups); it never replaces a group's
/// explicit binary.
pub fn md_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHMSRV_MD_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("md");
    p.is_file().then_some(p)
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}
