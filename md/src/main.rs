//! `md --config PATH --instance N [--check-config]`: the built-in services (`echo`, `reverse`,
//! `dumb`) on instance N's queue pair. Thin: parses arguments and config, sets up logging and
//! signals, and calls [`md::serve`].
//!
//! **Group binaries.** When instance N's `[[md.group]]` names another `binary`, md does not serve
//! the built-ins: it execs `BINARY [--config PATH] --instance N` (the arguments `io_conn
//! --spawn-md` passes), keeping its pid, so systemd's `md@N` (which always runs md) starts the
//! right program without per-instance units. The exec'd process gets `SHMSRV_MD_EXEC_FROM` set to
//! this executable; an md that finds it set (a group binary that runs md again, e.g. a wrapper
//! script) serves the built-ins instead of exec'ing a second time, so a loop is impossible.
//!
//! Exit status: 0 after SIGTERM/SIGINT, 1 on an error, 2 for a bad config or instance, 3 when
//! another live md already holds instance N (`instance N is held by md pid P`).
#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Parser;
use md::services::{Builtin, DumbOptions, KvOptions};
use md::{Control, Runner, RunnerOptions};

/// shmsrv logic process: serves the built-in services on one md instance's queue pair.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML). Without it: the built-in defaults (identical to the shipped file).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The md instance to serve (`md@N.service`); must be below `md.max_instances`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    instance: u32,
    /// Validate the config, print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
}

/// Exit status when another live md holds the instance.
const HELD: u8 = 3;

fn main() -> ExitCode {
    // Before anything else (no thread exists yet): every later thread inherits the mask, and the
    // signals wait for our signalfd.
    let mask = match md::block_signals() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("md: cannot block signals: {e}");
            return ExitCode::from(1);
        }
    };
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let cfg = match config::Config::load_or_default(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.instance >= cfg.md.max_instances {
        log::error!(
            "--instance {} is out of range: md.max_instances is {} (instances 0..{})",
            args.instance,
            cfg.md.max_instances,
            cfg.md.max_instances
        );
        return ExitCode::from(2);
    }
    if args.check_config {
        // md execs group binaries: they must exist here.
        if let Err(e) = cfg.check_binaries(args.config.as_deref()) {
            log::error!("{e}");
            return ExitCode::from(2);
        }
        println!("config ok: {}", cfg.summary());
        println!("instance {}: {}", args.instance, describe_group(&cfg, args.instance));
        return ExitCode::SUCCESS;
    }
    log::info!("md instance {} starting; config: {}", args.instance, cfg.summary());
    if let Some(code) = exec_group_binary(&cfg, &args, &mask) {
        return code;
    }

    let control = match Control::new().and_then(|(c, _handle)| c.with_signals(&mask)) {
        Ok(c) => c,
        Err(e) => {
            log::error!("cannot set up signal handling: {e}");
            return ExitCode::from(1);
        }
    };
    let start_time = shmq::sys::ProcId::current().start_time;
    let opts = RunnerOptions::from_config(&cfg, args.instance, start_time);
    let mut runner = Runner::new(
        Builtin::new(DumbOptions::from(&cfg.md.dumb)).with_kv(KvOptions::from_config(&cfg)),
        opts,
    );
    match md::serve(&mut runner, &md::pair_config(&cfg), args.instance, &control) {
        Ok(()) => {
            log::info!("md instance {} exiting: {:?}", args.instance, runner.stats());
            ExitCode::SUCCESS
        }
        Err(e @ md::ServeError::Held(_)) => {
            log::error!("md instance {}: {e}", args.instance);
            ExitCode::from(HELD)
        }
        Err(e) => {
            log::error!("md instance {}: {e}", args.instance);
            ExitCode::from(1)
        }
    }
}

/// Env var set on a group binary md execs: the md executable that exec'd it.
const EXEC_FROM: &str = "SHMSRV_MD_EXEC_FROM";

/// One line about instance `i`'s group, for `--check-config` and the log.
fn describe_group(cfg: &config::Config, i: u32) -> String {
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

/// Whether `a` and `b` name the same file (both resolved; false if either cannot be).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Execs instance N's group binary if its group names one that is not this executable. Returns
/// `None` to go on serving the built-ins here, or the exit code if the exec failed.
fn exec_group_binary(
    cfg: &config::Config,
    args: &Args,
    mask: &nix::sys::signal::SigSet,
) -> Option<ExitCode> {
    let i = args.instance;
    log::info!("md instance {i}: {}", describe_group(cfg, i));
    if cfg.group_of(i).is_none() && !cfg.groups().is_empty() {
        log::warn!("md instance {i} is in no [[md.group]]: io_conn will route nothing to it");
    }
    let k = cfg.group_index_of(i)?;
    let group = &cfg.groups()[k];
    let Some(bin) = group.binary() else {
        // The md binary serves the group: warn about services it does not have.
        for s in group.services.iter().filter(|s| config::default_framing(s).is_none()) {
            log::warn!(
                "md.group[{k}] lists service `{s}`, which the md binary does not serve (its \
                 flows will be closed); set md.group[{k}].binary to a binary that serves it"
            );
        }
        return None;
    };
    let me = std::env::current_exe().ok();
    if me.as_deref().is_some_and(|me| same_file(me, bin)) {
        return None;
    }
    if let Some(from) = std::env::var_os(EXEC_FROM) {
        log::warn!(
            "md instance {i}: already exec'd by {} ({EXEC_FROM} is set), yet md.group[{k}].binary \
             = {} is not this executable: serving the built-in services here instead of \
             exec'ing again",
            PathBuf::from(from).display(),
            bin.display()
        );
        return None;
    }
    if let Err(e) = cfg.check_binaries(args.config.as_deref()) {
        log::error!("{e}");
        return Some(ExitCode::from(2));
    }
    let mut cmd = Command::new(bin);
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("--instance").arg(i.to_string());
    cmd.env(EXEC_FROM, me.unwrap_or_default());
    log::info!("md instance {i}: exec {:?} (md.group[{k}].binary)", cmd);
    // The signal mask survives exec: give the new program the mask md started with.
    if let Err(e) = mask.thread_unblock() {
        log::error!("md instance {i}: unblocking signals before exec: {e}");
        return Some(ExitCode::from(1));
    }
    let e = cmd.exec();
    log::error!("md instance {i}: exec {} failed: {e}", bin.display());
    Some(ExitCode::from(1))
}
