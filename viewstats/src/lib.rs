//! viewstats: a read-only viewer of the shmsrv stats segment.
//!
//! It maps `{name}.stats` read-only ([`shmq::stats::StatsReader`]: `O_RDONLY` + `PROT_READ`, or
//! `SHM_RDONLY`), so it cannot change a byte, and knows the counters only through the segment's
//! descriptor table: a viewer of another build reads any segment of the same layout version.
//!
//! Modes: `-1` one-shot table (value, per-second rate since start, description), `--watch` live
//! view in the terminal (a summary, rate sparklines, then the io, md, command and queue sections,
//! scrolled and switched by keys; see [`Watch`]), `--json`, `--prometheus` (text exposition
//! format) and `--serve ADDR` (that text over HTTP at `/metrics`, see [`serve`]). `--wait SECONDS`
//! waits for a segment that is not there yet; otherwise a missing segment is "no server running
//! under NAME" and exit code 1 (`--serve` instead answers `shmsrv_up 0`).
//!
//! **Filters.** `-f GLOB` (repeatable; `^GLOB` excludes, as in varnishstat) keeps the counters
//! whose display key matches: `io.connections_current`, `md.1.messages_in`,
//! `md.1.commands.dumb.ping`, `in.1.consumer.wait_ns`, `md.1.group` (see [`Filter`]). Every mode
//! applies it, the same way.
//!
//! **Slots.** md slots that no md ever used (their `md` block is all zero) are left out of every
//! mode; `--all` shows them.
//!
//! **One Prometheus renderer.** [`prometheus`] makes the exposition text of a segment, and
//! [`prometheus_no_server`] (through the same family writer) the `shmsrv_up 0` answer without
//! one; [`metrics_text`] maps the segment and calls the right one, for `--serve` and for any
//! other HTTP front (md's http service) that serves `/metrics`.
//!
//! **Groups.** Each md slot is shown with its service group (`[[md.group]]`), taken from the
//! config given with `--config` (the file io_conn and md run with): the segment does not carry
//! it, the config is what decided it, and viewstats already reads the config for the segment's
//! name. Without groups every slot shows `all`; a slot in no group shows `-`.
//!
//! # Example
//!
//! ```no_run
//! use clap::Parser;
//! let args = viewstats::Args::parse_from(["viewstats", "--name", "shmsrv", "--json"]);
//! let code = viewstats::run(&args, &mut std::io::stdout()).unwrap();
//! std::process::exit(code);
//! ```
#![forbid(unsafe_code)]

mod render;
pub mod serve;
mod watch;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use shmq::region::Backend;
use shmq::stats::{StatsError, StatsReader};

pub use render::{json, prometheus, prometheus_no_server, table};
pub use watch::{DISPATCHED_COUNTER, IN_FLIGHT_COUNTER, Watch};

/// Command line.
#[derive(Debug, Clone, Parser)]
#[command(name = "viewstats", version, about = "Live counters of a running shmsrv (read-only)")]
pub struct Args {
    /// One-shot table: name, value, per-second rate since start, description.
    #[arg(short = '1', long = "once")]
    pub once: bool,
    /// Live view, redrawn every interval (the default on a terminal).
    #[arg(long, conflicts_with_all = ["once", "json", "prometheus", "serve"])]
    pub watch: bool,
    /// Serve the Prometheus text at http://ADDR/metrics (e.g. `127.0.0.1:9464`), reading the
    /// segment on each scrape, until SIGTERM or SIGINT.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["once", "json", "prometheus"])]
    pub serve: Option<String>,
    /// Show only counters whose key (`io.bytes_in`, `md.1.messages_in`, ...) matches GLOB;
    /// `^GLOB` hides them instead. Repeatable; every mode.
    #[arg(short = 'f', long = "filter", value_name = "GLOB")]
    pub filter: Vec<String>,
    /// One JSON document.
    #[arg(long, conflicts_with_all = ["once", "prometheus"])]
    pub json: bool,
    /// Prometheus text exposition format.
    #[arg(long, conflicts_with = "once")]
    pub prometheus: bool,
    /// The server's config file (to find the segment); without it: the built-in defaults.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Validate the config, print the effective settings and exit.
    #[arg(long)]
    pub check_config: bool,
    /// The server instance to read, by its `shared.name` (several run side by side with
    /// different names); overrides the config's.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Segment kind (`shared.shm_backend`); overrides the config.
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// Wait up to SECONDS for the segment to appear.
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<f64>,
    /// Refresh interval of --watch in seconds (default: `viewstats.refresh`).
    #[arg(long, value_name = "SECONDS")]
    pub interval: Option<f64>,
    /// Also show md slots that were never used.
    #[arg(long)]
    pub all: bool,
    /// --watch: stop after N screens (0 = never).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub count: u64,
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// /dev/shm files.
    Posix,
    /// SysV keyed segments.
    Sysv,
}

/// `-f GLOB` patterns: which counters every mode shows, by display key
/// (`io.connections_current`, `md.1.messages_in`, `in.1.consumer.wait_ns`).
///
/// A key is kept if it matches any include pattern (or there is none) and no exclude pattern
/// (`^GLOB`). Patterns are shell globs (`*` also matches dots: `md.*.errors`, `*commands*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
}

impl Filter {
    /// Parses `-f` arguments; an invalid pattern is an error naming it.
    pub fn new<S: AsRef<str>>(globs: &[S]) -> anyhow::Result<Self> {
        let mut f = Self::default();
        for g in globs {
            let g = g.as_ref();
            let (list, pat) = match g.strip_prefix('^') {
                Some(rest) => (&mut f.exclude, rest),
                None => (&mut f.include, g),
            };
            let p = glob::Pattern::new(pat).with_context(|| format!("-f {g:?}: not a glob"))?;
            list.push(p);
        }
        Ok(f)
    }

    /// Whether there is no pattern at all.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether the counter with display key `key` is shown.
    pub fn matches(&self, key: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(key)))
            && !self.exclude.iter().any(|p| p.matches(key))
    }
}

/// Where the segment is, resolved from the arguments and the config, and which counters to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Server name.
    pub name: String,
    /// Segment kind.
    pub backend: Backend,
    /// Refresh interval for --watch.
    pub interval: Duration,
    /// The config's `[[md.group]]` tables (empty: every instance serves every service).
    pub groups: Vec<config::Group>,
    /// `-f`: which counters to show (empty: all).
    pub filter: Filter,
}

impl Target {
    /// The segment a server running with `cfg` writes, every counter shown: what a `/metrics`
    /// route inside the server's own processes passes to [`metrics_text`].
    pub fn from_config(cfg: &config::Config) -> Self {
        let backend = match cfg.shared.shm_backend {
            config::ShmBackend::Posix => Backend::Posix,
            config::ShmBackend::Sysv => Backend::Sysv,
        };
        Self {
            name: cfg.shared.name.clone(),
            backend,
            interval: cfg.viewstats.refresh,
            groups: cfg.md.groups.clone(),
            filter: Filter::default(),
        }
    }

    /// Where an operator finds the segment: `/dev/shm/NAME.stats` or the SysV key.
    pub fn location(&self) -> String {
        let seg = shmq::stats::segment_name(&self.name);
        match self.backend {
            Backend::Posix => format!("/dev/shm/{seg}"),
            _ => format!("SysV key {:#010x} ({seg})", shmq::region::sysv_key(&seg)),
        }
    }

    /// Index (`md.group[k]`) of md slot `instance`'s group.
    pub fn group_index(&self, instance: u32) -> Option<usize> {
        self.groups.iter().position(|g| g.instances.contains(instance))
    }

    /// How md slot `instance`'s group is shown: `all` without groups, `-` in no group, else
    /// `k:services` (`0:dumb,echo,reverse`).
    pub fn group_label(&self, instance: u32) -> String {
        if self.groups.is_empty() {
            return "all".to_owned();
        }
        match self.group_index(instance) {
            Some(k) => format!("{k}:{}", self.groups[k].label()),
            None => "-".to_owned(),
        }
    }
}

/// Resolves name, backend and interval: flags first, then the config file (`--config`, else the
/// built-in defaults). Which instance of several on one machine is read: `--name`, else the
/// config's `shared.name`. A `--config` file that is missing or invalid, and a `--name` that
/// `shared.name` would not accept, are errors naming them.
pub fn resolve(args: &Args) -> anyhow::Result<Target> {
    let cfg = config::Config::load_or_default(args.config.as_deref())
        .with_context(|| "reading the config".to_owned())?;
    let mut t = Target::from_config(&cfg);
    if let Some(name) = &args.name {
        // The config's own rule for `shared.name` (so the two cannot drift): a name io_conn
        // refuses names no server, and one like `../x` must not reach `shm_open`.
        let mut probe = cfg.clone();
        probe.shared.name = name.clone();
        probe.validate().map_err(|e| anyhow::anyhow!("--name {name:?}: {e}"))?;
        t.name = name.clone();
    }
    match args.backend {
        Some(BackendArg::Posix) => t.backend = Backend::Posix,
        Some(BackendArg::Sysv) => t.backend = Backend::Sysv,
        None => {}
    }
    match args.interval {
        Some(s) if s.is_finite() && s > 0.0 => t.interval = Duration::from_secs_f64(s),
        Some(s) => anyhow::bail!("--interval {s}: must be a positive number of seconds"),
        None => {}
    }
    t.filter = Filter::new(&args.filter)?;
    Ok(t)
}

/// The Prometheus text of the server `t` names, read now: the segment is mapped read-only,
/// rendered by [`prometheus`] (never-used md slots left out, `t.filter` applied) and unmapped.
/// Never an error: with no segment, or one this process may not read, the text says
/// `shmsrv_up 0` and, in a comment, why. For `viewstats --serve` and any other `/metrics` route.
pub fn metrics_text(target: &Target) -> String {
    metrics_text_with(target, false)
}

/// [`metrics_text`], with `all` = also the never-used md slots (`--all`).
pub(crate) fn metrics_text_with(t: &Target, all: bool) -> String {
    match StatsReader::attach(t.backend, &t.name) {
        Ok(r) => prometheus(t, &r.snapshot(), all),
        Err(StatsError::NotFound { .. }) => prometheus_no_server(&format!(
            "no server running under {} (no segment {})",
            t.name,
            t.location()
        )),
        Err(e) => {
            log::debug!("scrape: {}: {e}", t.location());
            prometheus_no_server(&format!("{}: {e}{}", t.location(), hint(&e)))
        }
    }
}

/// Why the segment could not be read.
#[derive(Debug)]
pub enum OpenError {
    /// Not there (after waiting, if asked to).
    NoServer,
    /// Any other failure.
    Other(StatsError),
}

/// Attaches read-only, waiting up to `wait` for the segment to appear and become ready.
pub fn open(t: &Target, wait: Option<Duration>) -> Result<StatsReader, OpenError> {
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        match StatsReader::attach(t.backend, &t.name) {
            Ok(r) => return Ok(r),
            Err(e @ (StatsError::NotFound { .. } | StatsError::NotReady)) => match deadline {
                Some(d) if Instant::now() < d => std::thread::sleep(Duration::from_millis(50)),
                _ if matches!(e, StatsError::NotReady) => return Err(OpenError::Other(e)),
                _ => return Err(OpenError::NoServer),
            },
            Err(e) => return Err(OpenError::Other(e)),
        }
    }
}

/// What to do about `e`, if there is something an operator can do: the segment is readable by
/// the server's group only (mode 0640).
fn hint(e: &StatsError) -> String {
    use std::error::Error;
    let denied = e
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied);
    if denied {
        format!(
            " (permission denied: the segment is readable by the {0} group; add your user to it, \
             e.g. `usermod -aG {0} $USER`, and log in again)",
            shmq::region::SERVER_USER
        )
    } else {
        String::new()
    }
}

/// Runs viewstats; returns the exit code. Errors and "no server" go to stderr.
pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<i32> {
    if args.check_config {
        let cfg = config::Config::load_or_default(args.config.as_deref())?;
        writeln!(out, "config OK: {}", cfg.summary())?;
        return Ok(0);
    }
    let t = resolve(args)?;
    if let Some(addr) = &args.serve {
        return serve::serve(&t, addr, args.all, serve::Limits::default());
    }
    let wait = match args.wait {
        Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => anyhow::bail!("--wait {s}: must be a non-negative number of seconds"),
        None => None,
    };
    let reader = match open(&t, wait) {
        Ok(r) => r,
        Err(OpenError::NoServer) => {
            eprintln!(
                "viewstats: no server running under {} (no segment {})",
                t.name,
                t.location()
            );
            return Ok(1);
        }
        Err(OpenError::Other(e)) => {
            eprintln!("viewstats: {}: {e}{}", t.location(), hint(&e));
            return Ok(2);
        }
    };
    let watch = args.watch
        || (!args.once && !args.json && !args.prometheus && {
            use std::io::IsTerminal;
            std::io::stdout().is_terminal()
        });
    if watch {
        let mut w = Watch::new(t.clone(), reader, args.all);
        return w.run(out, args.count);
    }
    let snap = reader.snapshot();
    let alive = render::creator_alive(&snap);
    if !alive {
        eprintln!(
            "viewstats: the server under {} is not running (io_conn pid {} is gone); \
             these are its last values",
            t.name, snap.info.creator_pid
        );
    }
    if args.json {
        let v = json(&t, &snap, args.all);
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else if args.prometheus {
        out.write_all(prometheus(&t, &snap, args.all).as_bytes())?;
    } else {
        out.write_all(table(&t, &snap, args.all).as_bytes())?;
    }
    out.flush()?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        Args::parse_from(std::iter::once("viewstats").chain(argv.iter().copied()))
    }

    #[test]
    fn name_picks_the_instance_and_overrides_the_config() {
        assert_eq!(resolve(&args(&[])).unwrap().name, "shmsrv");
        assert_eq!(resolve(&args(&["--name", "edge-2"])).unwrap().name, "edge-2");
    }

    #[test]
    fn a_name_the_config_would_refuse_is_an_error_naming_it() {
        for bad in ["../x", "", "a b", "a.b", &"x".repeat(33)] {
            let e = resolve(&args(&["--name", bad])).expect_err(bad).to_string();
            assert!(e.starts_with(&format!("--name {bad:?}: ")), "{e}");
            assert!(e.contains("shared.name"), "{e}");
        }
    }

    #[test]
    fn a_missing_config_file_is_an_error_naming_it() {
        let e = resolve(&args(&["--config", "/nonexistent/shmsrv.toml"])).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("/nonexistent/shmsrv.toml"), "{e}");
        assert!(e.contains("No such file"), "{e}");
    }
}
