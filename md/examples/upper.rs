//! Your own md binary in one file: an `upper` service that answers every line in upper case.
//!
//! ```text
//! # config: a listener for the service, e.g.
//! #   [[io_conn.listener]]
//! #   address = "127.0.0.1:7070"
//! #   service = "upper"
//! #   framing = "line"
//! cargo run -p md --example upper -- --config shmsrv.toml --instance 1
//! ```
//!
//! What it shows:
//! * a [`Service`] with per-flow state (a line counter), output written through [`Ctx`], errors
//!   counted with [`Ctx::error`], and a goodbye on EOF;
//! * the `main` every md binary has: block signals first, load the config, build the runner,
//!   and hand it to [`md::serve`], which attaches to io_conn's queue pair for the instance and
//!   re-attaches when io_conn restarts.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use md::{Control, Ctx, Runner, RunnerOptions, Service, Status};
use shmq::frame::OpenInfo;

/// The service: stateless itself; each flow counts its lines.
#[derive(Debug)]
struct Upper;

/// Per-flow state.
#[derive(Debug, Default)]
struct Lines(u64);

impl Service for Upper {
    type Flow = Lines;

    fn open(&mut self, info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<Lines> {
        // Serve only our service; any other flow routed here is closed.
        (info.service == "upper").then(Lines::default)
    }

    fn message(&mut self, flow: &mut Lines, msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        let line = md::services::strip_eol(msg);
        flow.0 += 1;
        if line.is_empty() {
            cx.error();
            cx.send(b"ERR empty line\n");
            return Status::Done;
        }
        // Byte by byte into the flow's outbox: no allocation per message.
        for &b in line {
            cx.send(&[b.to_ascii_uppercase()]);
        }
        cx.send(b"\n");
        Status::Done
    }

    fn eof(&mut self, flow: &mut Lines, cx: &mut Ctx<'_>) {
        let _ = writeln!(cx, "BYE after {} lines", flow.0);
    }
}

fn main() -> ExitCode {
    // 1. Before any thread exists: SIGTERM/SIGINT/SIGHUP go to the runner's signalfd.
    let mask = match md::block_signals() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("upper: {e}");
            return ExitCode::FAILURE;
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    // 2. Arguments (kept minimal here; the md binary uses clap): --config PATH --instance N.
    let mut config: Option<PathBuf> = None;
    let mut instance = 0u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--config", Some(p)) => config = Some(p.into()),
            ("--instance", Some(n)) => match n.parse() {
                Ok(n) => instance = n,
                Err(e) => {
                    eprintln!("upper: --instance {n}: {e}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("usage: upper [--config PATH] [--instance N]");
                return ExitCode::from(2);
            }
        }
    }

    // 3. The shared config: where io_conn's queue pairs are, and md's spin budget.
    let cfg = match config::Config::load_or_default(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if instance >= cfg.md.max_instances {
        log::error!("--instance {instance}: md.max_instances is {}", cfg.md.max_instances);
        return ExitCode::from(2);
    }

    // 4. Run until SIGTERM.
    let control = match Control::new().and_then(|(c, _)| c.with_signals(&mask)) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = RunnerOptions::from_config(&cfg, instance, 0);
    let mut runner = Runner::new(Upper, opts);
    match md::serve(&mut runner, &md::pair_config(&cfg), instance, &control) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    // The example's service is exercised like the built-in ones in md/tests/services.rs; this
    // only checks the upper-casing itself.
    #[test]
    fn uppercases_ascii_only() {
        let up: Vec<u8> = b"abc \xc3\xa9".iter().map(u8::to_ascii_uppercase).collect();
        assert_eq!(up, b"ABC \xc3\xa9");
    }
}
