//! `md --config PATH --instance N [--check-config]`: the built-in services (`echo`, `reverse`,
//! `dumb`) on instance N's queue pair. Thin: parses arguments and config, sets up logging and
//! signals, and calls [`md::serve`].
//!
//! Exit status: 0 after SIGTERM/SIGINT, 1 on an error, 2 for a bad config or instance, 3 when
//! another live md already holds instance N (`instance N is held by md pid P`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use md::services::{Builtin, DumbOptions};
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
        println!("config ok: {}", cfg.summary());
        return ExitCode::SUCCESS;
    }
    log::info!("md instance {} starting; config: {}", args.instance, cfg.summary());

    let control = match Control::new().and_then(|(c, _handle)| c.with_signals(&mask)) {
        Ok(c) => c,
        Err(e) => {
            log::error!("cannot set up signal handling: {e}");
            return ExitCode::from(1);
        }
    };
    let start_time = shmq::sys::ProcId::current().start_time;
    let opts = RunnerOptions::from_config(&cfg, args.instance, start_time);
    let mut runner = Runner::new(Builtin::new(DumbOptions::from(&cfg.md.dumb)), opts);
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
