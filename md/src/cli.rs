//! The `main` of every md binary: `md` itself, the examples and your own service's binary.
//!
//! [`main`] (a ready service) or [`run_main`] (a service built from the config) give a service
//! binary md's whole command line and process setup in one line:
//!
//! * `--config PATH` (default: the built-in defaults), `--instance N` (default 0, below
//!   `md.max_instances`), `--check-config` (validate, print the effective settings and the
//!   instance's service group, exit), `--help`, `--version`; the arguments `io_conn --spawn-md`
//!   and `md@N.service` pass;
//! * the signal mask first (SIGTERM/SIGINT/SIGHUP wait for the runner's signalfd), logging to
//!   stderr (`RUST_LOG`, default `info`), the real process start time in `HELLO` (io_conn's
//!   pid-reuse check), then [`crate::serve`]: attach, serve, re-attach after an io_conn restart,
//!   systemd notifications and watchdog;
//! * the service's own settings: [`crate::Service::configure`] reads its `[service.NAME]` table
//!   before it serves, under `--check-config` and on every reload (a [`crate::SettingError`] is
//!   printed with the file, line and key, like a config error);
//! * exit status 0 after SIGTERM/SIGINT, 1 on an error, 2 for a bad config or instance (or a
//!   [`Failure::config`] from the service's constructor, or a [`crate::SettingError`]), 3 when
//!   another live md holds the instance (`instance N is held by md pid P`).
//!
//! [`Program`] sets the `--help` text and the `--version` string (md's own `main.rs` uses it).
//!
//! # Example
//!
//! ```no_run
//! use md::{Ctx, Service, Status};
//! use shmq::frame::OpenInfo;
//!
//! /// Answers every line with its length.
//! struct LineLength;
//!
//! impl Service for LineLength {
//!     type Flow = ();
//!     fn open(&mut self, info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<()> {
//!         (info.service == "length").then_some(())
//!     }
//!     fn message(&mut self, _: &mut (), msg: &[u8], cx: &mut Ctx<'_>) -> Status {
//!         use std::fmt::Write as _;
//!         let _ = writeln!(cx, "{}", md::services::strip_eol(msg).len());
//!         Status::Done
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     md::main(LineLength)
//! }
//! ```
//!
//! A service that needs settings builds itself from the [`Setup`] (the loaded config, the
//! instance, the config file's path):
//!
//! ```no_run
//! # use md::{Ctx, Service, Status};
//! # use shmq::frame::OpenInfo;
//! # struct Slow { max_instances: u32 }
//! # impl Service for Slow {
//! #     type Flow = ();
//! #     fn open(&mut self, _: &OpenInfo<'_>, _: &mut Ctx<'_>) -> Option<()> { Some(()) }
//! #     fn message(&mut self, _: &mut (), _: &[u8], _: &mut Ctx<'_>) -> Status { Status::Done }
//! # }
//! fn main() -> std::process::ExitCode {
//!     md::run_main(|setup| {
//!         let cfg = setup.config();
//!         if cfg.md.slice.is_zero() {
//!             return Err(md::Failure::config("this service needs md.slice > 0"));
//!         }
//!         Ok(Slow { max_instances: cfg.md.max_instances })
//!     })
//! }
//! ```

use std::error::Error;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use nix::sys::signal::SigSet;

use crate::{Control, Runner, RunnerOptions, ServeError, Service};

/// Exit status: an error (setup, the loop).
const EXIT_ERROR: u8 = 1;
/// Exit status: a bad config or instance.
const EXIT_CONFIG: u8 = 2;
/// Exit status: another live md holds the instance.
const EXIT_HELD: u8 = 3;

/// The command line every md binary shares.
#[derive(Debug, Parser)]
struct Args {
    /// Config file (TOML). Without it: the built-in defaults (identical to the shipped file).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The md instance to serve (`md@N.service`); must be below `md.max_instances`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    instance: u32,
    /// Validate the config (and the service's settings), print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
    /// Ask the md serving --instance N to reload the config (SIGHUP), wait for the outcome and
    /// exit: 0 when it was applied, 1 when it was refused (the md's log names the keys) or the
    /// file does not validate. `systemctl reload md@N` runs this.
    #[arg(long, conflicts_with = "check_config")]
    reload: bool,
}

/// What a service's constructor gets from [`run_main`]: the validated config and the arguments.
#[derive(Debug)]
pub struct Setup<'a> {
    config: &'a config::Config,
    config_path: Option<&'a Path>,
    instance: u32,
    check_only: bool,
    mask: &'a SigSet,
}

impl<'a> Setup<'a> {
    /// The loaded and validated config (the built-in defaults without `--config`).
    pub fn config(&self) -> &'a config::Config {
        self.config
    }

    /// `--config PATH` as given, if any.
    pub fn config_path(&self) -> Option<&'a Path> {
        self.config_path
    }

    /// `--instance N`: the md instance this process serves (below `md.max_instances`).
    pub fn instance(&self) -> u32 {
        self.instance
    }

    /// True under `--check-config`: check the service's settings (return a [`Failure`] for a bad
    /// one), but open nothing and start nothing; the service is dropped right after.
    pub fn check_only(&self) -> bool {
        self.check_only
    }

    /// The signals the process blocked for the runner's signalfd ([`crate::block_signals`]). The
    /// mask survives `exec`: unblock it in the child (or before an exec) that should get the
    /// default handling.
    pub fn signal_mask(&self) -> &'a SigSet {
        self.mask
    }
}

/// Why a service's constructor gave up: logged, and the process exits with its status.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// A bad setting: exit status 2, like a config error.
    pub fn config(message: impl fmt::Display) -> Self {
        Self { code: EXIT_CONFIG, message: message.to_string() }
    }

    /// Anything else: exit status 1.
    pub fn error(message: impl fmt::Display) -> Self {
        Self { code: EXIT_ERROR, message: message.to_string() }
    }

    /// The exit status the process ends with.
    pub fn code(&self) -> u8 {
        self.code
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Any error converts (with `?`) into a [`Failure::error`], its causes appended.
impl<E: Error> From<E> for Failure {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        Self::error(message)
    }
}

/// The `--help` text and `--version` of an md binary; [`Program::run`] is [`run_main`] with them.
#[derive(Debug, Clone, Default)]
pub struct Program {
    about: Option<&'static str>,
    version: Option<&'static str>,
}

impl Program {
    /// A program named after its executable, with a generic `--help` line and md's version.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first line of `--help`.
    pub fn about(mut self, about: &'static str) -> Self {
        self.about = Some(about);
        self
    }

    /// What `--version` prints after the name (e.g. `env!("CARGO_PKG_VERSION")`); default md's.
    pub fn version(mut self, version: &'static str) -> Self {
        self.version = Some(version);
        self
    }

    /// Runs the program: see the module docs. Returns the exit status for `main`.
    pub fn run<S, F>(self, make: F) -> ExitCode
    where
        S: Service,
        S::Flow: fmt::Debug,
        F: FnOnce(&Setup<'_>) -> Result<S, Failure>,
    {
        // Before anything else (no thread exists yet): every later thread inherits the mask, and
        // the signals wait for the runner's signalfd.
        let mask = match crate::block_signals() {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{}: cannot block signals: {e}", program_name());
                return ExitCode::from(EXIT_ERROR);
            }
        };
        let args = match self.parse(std::env::args_os()) {
            Ok(a) => a,
            // --help and --version print and exit 0; a bad argument prints usage and exits 2.
            Err(e) => e.exit(),
        };
        // Everything passes the logger's own filter unless RUST_LOG says otherwise; `md.log_level`
        // sets the global maximum (and a reload changes it).
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("trace")).init();
        if std::env::var_os("RUST_LOG").is_none() {
            log::set_max_level(log::LevelFilter::Info); // until the config is read
        }
        match serve_main(&args, &mask, make) {
            Ok(()) => ExitCode::SUCCESS,
            Err(f) => {
                log::error!("{f}");
                ExitCode::from(f.code)
            }
        }
    }

    fn parse<I, T>(&self, argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let name = program_name();
        let about = match self.about {
            Some(a) => a.to_owned(),
            None => format!(
                "{name}: a shmsrv md binary: serves its services on one md instance's queue pair \
                 (started by io_conn --spawn-md or md@N.service)"
            ),
        };
        // Leaked once per process: clap keeps `&'static str` names without its `string` feature.
        let name: &'static str = Box::leak(name.into_boxed_str());
        let cmd = Args::command()
            .name(name)
            .about(about)
            .version(self.version.unwrap_or(env!("CARGO_PKG_VERSION")));
        let matches = cmd.try_get_matches_from(argv)?;
        Args::from_arg_matches(&matches)
    }
}

/// md's command line and setup for `service`: `fn main() -> ExitCode { md::main(MyService) }`.
/// See the module docs.
pub fn main<S>(service: S) -> ExitCode
where
    S: Service,
    S::Flow: fmt::Debug,
{
    run_main(move |_| Ok(service))
}

/// md's command line and setup for a service built by `make` from the [`Setup`] (the config,
/// the instance); `make` also runs under `--check-config`, where a [`Failure`] fails the check.
/// See the module docs.
pub fn run_main<S, F>(make: F) -> ExitCode
where
    S: Service,
    S::Flow: fmt::Debug,
    F: FnOnce(&Setup<'_>) -> Result<S, Failure>,
{
    Program::new().run(make)
}

/// The executable's file name (for messages and `--help`).
fn program_name() -> String {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "md".to_owned())
}

/// Everything after logging is set up: config, the service, then serve until shutdown.
fn serve_main<S, F>(args: &Args, mask: &SigSet, make: F) -> Result<(), Failure>
where
    S: Service,
    S::Flow: fmt::Debug,
    F: FnOnce(&Setup<'_>) -> Result<S, Failure>,
{
    let name = program_name();
    let cfg = config::Config::load_or_default(args.config.as_deref()).map_err(Failure::config)?;
    let i = args.instance;
    if i >= cfg.md.max_instances {
        return Err(Failure::config(format!(
            "--instance {i} is out of range: md.max_instances is {} (instances 0..{})",
            cfg.md.max_instances, cfg.md.max_instances
        )));
    }
    crate::reload::set_log_level(cfg.md.log_level);
    if args.reload {
        return reload_client(&cfg, i);
    }
    let setup = Setup {
        config: &cfg,
        config_path: args.config.as_deref(),
        instance: i,
        check_only: args.check_config,
        mask,
    };
    // The service's own `[service.NAME]` settings, located in the file like a config error.
    let configure = |service: &mut S| {
        service.configure(&cfg).map_err(|e| Failure::config(e.locate(args.config.as_deref())))
    };
    if args.check_config {
        configure(&mut make(&setup)?)?;
        println!("config ok: {}", cfg.summary());
        println!("instance {i}: {}", describe_group(&cfg, i));
        return Ok(());
    }
    log::info!("{name}: md instance {i} starting; config: {}", cfg.summary());
    log::info!("md instance {i}: {}", describe_group(&cfg, i));
    let mut service = make(&setup)?;
    configure(&mut service)?;
    let control = Control::new()
        .and_then(|(c, _handle)| c.with_signals(mask))
        .map_err(|e| Failure::error(format!("cannot set up signal handling: {e}")))?
        // SIGHUP (`systemctl reload md@N`, `--reload`): re-read the file, apply md's live keys
        // and the service's own settings (`Service::reload`).
        .with_reload(crate::reload::Reloader::new(args.config.clone(), cfg.clone()));
    // The real start time: io_conn checks (pid, start time) to tell this md from a later process
    // that reuses its pid.
    let start_time = shmq::sys::ProcId::current().start_time;
    let mut runner = Runner::new(service, RunnerOptions::from_config(&cfg, i, start_time));
    match crate::serve(&mut runner, &crate::pair_config(&cfg), i, &control) {
        Ok(()) => {
            log::info!("md instance {i} exiting: {:?}", runner.stats());
            Ok(())
        }
        Err(e @ ServeError::Held(_)) => {
            Err(Failure { code: EXIT_HELD, message: format!("md instance {i}: {e}") })
        }
        Err(e) => Err(Failure::error(format!("md instance {i}: {e}"))),
    }
}

/// One line about instance `i`'s service group, for `--check-config` and the log.
/// How long `--reload` waits for the md to count the outcome.
const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `md --reload`: the file was validated above (a bad one fails here, whatever md runs); finds
/// the md of `instance` in the stats segment, sends it SIGHUP and waits until its
/// `reloads_ok` or `reloads_refused` counter moves.
fn reload_client(cfg: &config::Config, instance: u32) -> Result<(), Failure> {
    use shmq::stats::StatsReader;
    use std::time::Duration;
    let backend = crate::pair_config(cfg).backend;
    let reader = match StatsReader::attach(backend, &cfg.shared.name) {
        Ok(r) => r,
        Err(e) => {
            return Err(Failure::error(format!(
                "md --reload: stats segment of {}: {e} (is io_conn running?)",
                cfg.shared.name
            )));
        }
    };
    let read = |name: &str| reader.snapshot().get("md", instance, name).unwrap_or(0);
    let pid = read("pid");
    // 2 = running, 3 = leaving (see shmq::stats::MdState).
    if pid == 0 || !matches!(read("state"), 2 | 3) {
        return Err(Failure::error(format!(
            "md --reload: md instance {instance} is not attached (no running md to reload)"
        )));
    }
    let (ok0, refused0) = (read("reloads_ok"), read("reloads_refused"));
    let pid = i32::try_from(pid)
        .map_err(|_| Failure::error(format!("md --reload: impossible pid {pid} in the stats")))?;
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).map_err(|e| {
        Failure::error(format!("md --reload: SIGHUP to md instance {instance} (pid {pid}): {e}"))
    })?;
    let until = std::time::Instant::now() + RELOAD_TIMEOUT;
    while std::time::Instant::now() < until {
        let (ok, refused) = (read("reloads_ok"), read("reloads_refused"));
        if refused != refused0 {
            return Err(Failure::error(format!(
                "md --reload: md instance {instance} (pid {pid}) refused the reload and keeps its \
                 config: its log names each key that needs a restart (journalctl -u md@{instance})"
            )));
        }
        if ok != ok0 {
            println!(
                "md instance {instance} (pid {pid}): reload applied (config generation {})",
                read("config_generation")
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Failure::error(format!(
        "md --reload: md instance {instance} (pid {pid}) did not answer within {RELOAD_TIMEOUT:?}"
    )))
}

pub(crate) fn describe_group(cfg: &config::Config, i: u32) -> String {
    match (cfg.groups().is_empty(), cfg.group_index_of(i)) {
        (true, _) => "no [[md.group]]: serves every service with the md binary".to_owned(),
        (false, None) => {
            "in no [[md.group]]: serves nothing (io_conn routes nothing to it)".to_owned()
        }
        (false, Some(k)) => {
            let g = &cfg.groups()[k];
            match g.binary() {
                Some(b) => format!("md.group[{k}] ({}), binary {}", g.label(), b.display()),
                None => format!("md.group[{k}] ({}), the md binary", g.label()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Program::new().parse(argv.iter().copied())
    }

    #[test]
    fn parses_md_arguments() {
        let a = parse(&["upper", "--config", "/etc/shmsrv/shmsrv.toml", "--instance", "3"])
            .expect("parse");
        assert_eq!(a.config.as_deref(), Some(Path::new("/etc/shmsrv/shmsrv.toml")));
        assert_eq!(a.instance, 3);
        assert!(!a.check_config);
        let a = parse(&["upper", "--check-config"]).expect("parse");
        assert_eq!((a.config, a.instance, a.check_config), (None, 0, true));
    }

    #[test]
    fn rejects_bad_arguments() {
        for argv in [&["upper", "--instance", "x"][..], &["upper", "--bogus"], &["upper", "extra"]]
        {
            let e = parse(argv).expect_err("must fail");
            assert_eq!(e.exit_code(), 2, "{argv:?}: {e}");
        }
        let e = parse(&["upper", "--help"]).expect_err("help is an early exit");
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = e.to_string();
        for flag in ["--config", "--instance", "--check-config", "--version"] {
            assert!(help.contains(flag), "{flag} missing from --help: {help}");
        }
    }

    #[test]
    fn failure_codes_and_causes() {
        assert_eq!(Failure::config("x").code(), EXIT_CONFIG);
        let io = std::io::Error::other("disk on fire");
        let f = Failure::from(io);
        assert_eq!((f.code(), f.to_string()), (EXIT_ERROR, "disk on fire".to_owned()));
    }

    #[test]
    fn describes_groups() {
        let cfg = config::Config::default();
        assert_eq!(
            describe_group(&cfg, 0),
            "no [[md.group]]: serves every service with the md binary"
        );
    }
}
