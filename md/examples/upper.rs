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
//! * the `main` every md binary has: one line, [`md::main`], which gives it md's command line
//!   (`--config`, `--instance`, `--check-config`, `--help`, `--version`) and runs it the way md
//!   runs (signals, logging, systemd notifications, attach and re-attach to io_conn).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::process::ExitCode;

use md::{Ctx, Service, Status};
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
    md::main(Upper)
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
