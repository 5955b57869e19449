//! Your own md binary in one file: an `upper` service that answers every line in upper case,
//! followed by a suffix from its own config section.
//!
//! ```text
//! # config: a listener for the service, and (optional) the service's own section, e.g.
//! #   [[io_conn.listener]]
//! #   address = "127.0.0.1:7070"
//! #   service = "upper"
//! #   framing = "line"
//! #
//! #   [service.upper]
//! #   suffix = "!"        # appended to every answer; at most 16 bytes, no line break
//! cargo run -p md --example upper -- --config shmsrv.toml --instance 1
//! ```
//!
//! What it shows:
//! * a [`Service`] with per-flow state (a line counter), output written through [`Ctx`], errors
//!   counted with [`Ctx::error`], and a goodbye on EOF;
//! * its own settings: [`Service::configure`] reads `[service.upper]` at start, under
//!   `--check-config` and on every reload (`md --reload`, SIGHUP), and refuses a bad value with
//!   a [`SettingError`] naming the key (md prints it with the file and line);
//! * the `main` every md binary has: one line, [`md::main`], which gives it md's command line
//!   (`--config`, `--instance`, `--check-config`, `--reload`, `--help`, `--version`) and runs it
//!   the way md runs (signals, logging, systemd notifications, attach and re-attach to io_conn).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::process::ExitCode;

use md::{Ctx, Service, SettingError, Status};
use shmq::frame::OpenInfo;

/// The service: its settings; each flow counts its lines.
#[derive(Debug, Default)]
struct Upper {
    /// `service.upper.suffix`: appended to every answer (default none).
    suffix: String,
}

/// Longest `service.upper.suffix`, in bytes.
const MAX_SUFFIX: usize = 16;

/// Per-flow state.
#[derive(Debug, Default)]
struct Lines(u64);

impl Service for Upper {
    type Flow = Lines;

    fn configure(&mut self, cfg: &config::Config) -> Result<(), SettingError> {
        let mut suffix = String::new();
        for (key, value) in cfg.service("upper").into_iter().flatten() {
            match (key.as_str(), value.as_str()) {
                ("suffix", Some(s)) if s.len() <= MAX_SUFFIX && !s.contains(['\n', '\r']) => {
                    suffix = s.to_owned();
                }
                ("suffix", _) => {
                    let msg = format!(
                        "expected a string of at most {MAX_SUFFIX} bytes without a line break, got {value}"
                    );
                    return Err(SettingError::new("upper", key, msg));
                }
                _ => {
                    return Err(SettingError::new("upper", key, "unknown key (upper has: suffix)"));
                }
            }
        }
        // Checked in full before it changes: a refused reload keeps the old suffix.
        self.suffix = suffix;
        Ok(())
    }

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
        cx.send(self.suffix.as_bytes());
        cx.send(b"\n");
        Status::Done
    }

    fn eof(&mut self, flow: &mut Lines, cx: &mut Ctx<'_>) {
        let _ = writeln!(cx, "BYE after {} lines", flow.0);
    }
}

fn main() -> ExitCode {
    md::main(Upper::default())
}

#[cfg(test)]
mod tests {
    use md::testing::Harness;

    use super::*;

    /// A config with an `upper` listener and `section` as `[service.upper]`.
    fn config(section: &str) -> Result<config::Config, config::ConfigError> {
        let text = format!(
            "[[io_conn.listener]]\naddress = \"127.0.0.1:0\"\nservice = \"upper\"\n\
             framing = \"line\"\n\n[service.upper]\n{section}"
        );
        config::Config::from_toml_str(&text, "upper.toml")
    }

    #[test]
    fn uppercases_ascii_only() {
        let up: Vec<u8> = b"abc \xc3\xa9".iter().map(u8::to_ascii_uppercase).collect();
        assert_eq!(up, b"ABC \xc3\xa9");
    }

    /// Through the real runner (md::testing::Harness): the section's suffix ends every answer.
    #[test]
    fn serves_with_the_configured_suffix() {
        let cfg = config("suffix = \"!\"\n").unwrap();
        let mut h = Harness::with_config(Upper::default(), &cfg).unwrap();
        let c = h.connect("upper");
        h.send_lines(c, "hello\nworld\n");
        assert_eq!(h.read_line(c), "HELLO!\n");
        assert_eq!(h.read_line(c), "WORLD!\n");
        h.eof(c);
        assert_eq!(h.read_to_close(c), b"BYE after 2 lines\n");
        h.stop();
        // No section: no suffix.
        let mut h = Harness::with_config(Upper::default(), &config::Config::default()).unwrap();
        let c = h.connect("upper");
        h.send_lines(c, "x\n");
        assert_eq!(h.read_line(c), "X\n");
        h.stop();
    }

    /// Bad settings are refused with the key named, and a refused configure keeps the old suffix
    /// (what a refused reload relies on).
    #[test]
    fn refuses_bad_settings_and_keeps_the_old_ones() {
        for (section, key, what) in [
            ("suffix = 7\n", "service.upper.suffix", "expected a string"),
            ("suffix = \"a\\nb\"\n", "service.upper.suffix", "without a line break"),
            ("suffix = \"12345678901234567\"\n", "service.upper.suffix", "at most 16 bytes"),
            ("sufix = \"!\"\n", "service.upper.sufix", "unknown key"),
        ] {
            let cfg = config(section).unwrap();
            let e = Harness::with_config(Upper::default(), &cfg).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("{key}: ")) && text.contains(what),
                "{section}: {text}"
            );
            let mut u = Upper::default();
            u.configure(&config("suffix = \"!\"\n").unwrap()).unwrap();
            assert!(u.configure(&cfg).is_err());
            assert_eq!(u.suffix, "!", "{section}: a refused configure changed the suffix");
        }
    }
}
