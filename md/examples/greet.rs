//! The service of the tutorial in `docs/SERVICES.md`: a line service named `greet`.
//!
//! * `HELLO <name>` → `hello, <name>` (and the flow remembers the name);
//! * `LATER <ms>` → `later, <name>` after `ms` milliseconds, without blocking anyone (a timer);
//! * `PRIMES <n>` → `PRIMES <count of primes below n>`, computed in time slices (`Status::Yield`),
//!   so other clients of the same md are answered in between;
//! * anything else → `ERR ...`, counted as an error.
//!
//! ```text
//! cargo build -p md --example greet
//! ./target/debug/examples/greet --help
//! ```
//!
//! Its tests (below) use the in-process harness `md::testing::Harness`:
//! `cargo test -p md --example greet`.
#![forbid(unsafe_code)]

// ANCHOR: service
use std::fmt::Write as _;
use std::time::Duration;

use md::{Ctx, Service, SettingError, Status};
use shmq::frame::OpenInfo;

/// The service: one value serves every connection of this md process. Its settings come from
/// the config's `[service.greet]` table (see `configure`).
#[derive(Debug)]
struct Greet {
    /// `service.greet.greeting`: the word HELLO answers with.
    greeting: String,
}

impl Default for Greet {
    fn default() -> Self {
        Self { greeting: "hello".to_owned() }
    }
}

/// Per-connection state: the name given with HELLO, and a PRIMES in progress.
#[derive(Debug, Default)]
struct Visitor {
    name: Option<String>,
    primes: Option<Sieve>,
}

/// Counts primes below `n` by trial division, one candidate at a time, so the work can stop
/// after any candidate and resume later.
#[derive(Debug)]
struct Sieve {
    n: u64,
    next: u64,
    found: u64,
}

/// Request kinds, counted in viewstats as `md.N.commands.greet.hello` etc.
const COMMANDS: &[&str] = &["greet.hello", "greet.later", "greet.primes"];
const HELLO: usize = 0;
const LATER: usize = 1;
const PRIMES: usize = 2;
/// The largest `PRIMES n` we accept.
const PRIMES_MAX: u64 = 100_000_000;
// ANCHOR_END: service

// ANCHOR: impl
impl Service for Greet {
    type Flow = Visitor;

    fn configure(&mut self, cfg: &config::Config) -> Result<(), SettingError> {
        let mut greeting = Self::default().greeting;
        for (key, value) in cfg.service("greet").into_iter().flatten() {
            match (key.as_str(), value.as_str()) {
                ("greeting", Some(g)) if !g.is_empty() && g.len() <= 32 && !g.contains('\n') => {
                    greeting = g.to_owned();
                }
                ("greeting", _) => {
                    let why = format!("expected a word of 1 to 32 bytes, got {value}");
                    return Err(SettingError::new("greet", key, why));
                }
                _ => return Err(SettingError::new("greet", key, "unknown key (has: greeting)")),
            }
        }
        // Everything checked: only now change (a refused reload keeps the old greeting).
        self.greeting = greeting;
        Ok(())
    }

    fn open(&mut self, info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<Visitor> {
        // Only our service: io_conn closes a flow of any other service routed here.
        (info.service == "greet").then(Visitor::default)
    }

    fn message(&mut self, v: &mut Visitor, msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        let line = md::services::strip_eol(msg);
        let line = String::from_utf8_lossy(line);
        let (cmd, arg) = line.split_once(' ').unwrap_or((&line, ""));
        match cmd {
            "HELLO" if !arg.is_empty() => {
                cx.count(HELLO);
                let _ = writeln!(cx, "{}, {arg}", self.greeting);
                v.name = Some(arg.to_owned());
                Status::Done
            }
            "LATER" => match arg.parse::<u64>() {
                Ok(ms) if ms <= 60_000 => {
                    cx.count(LATER);
                    // Never sleep in a callback: set a timer and say the request is pending.
                    cx.set_timer(Duration::from_millis(ms), 0);
                    Status::Pending
                }
                _ => error(cx, "LATER needs milliseconds, at most 60000"),
            },
            "PRIMES" => match arg.parse::<u64>() {
                Ok(n) if n <= PRIMES_MAX => {
                    cx.count(PRIMES);
                    v.primes = Some(Sieve { n, next: 2, found: 0 });
                    self.resume(v, cx)
                }
                _ => error(cx, "PRIMES needs a number, at most 100000000"),
            },
            _ => error(cx, "expected HELLO <name>, LATER <ms> or PRIMES <n>"),
        }
    }

    fn timer(&mut self, v: &mut Visitor, _token: u64, cx: &mut Ctx<'_>) -> Status {
        let name = v.name.as_deref().unwrap_or("stranger");
        let _ = writeln!(cx, "later, {name}");
        Status::Done
    }

    fn resume(&mut self, v: &mut Visitor, cx: &mut Ctx<'_>) -> Status {
        let Some(s) = v.primes.as_mut() else { return Status::Done };
        cx.slice_over(); // starts this callback's time slice
        while s.next < s.n {
            if is_prime(s.next) {
                s.found += 1;
            }
            s.next += 1;
            // Look at the clock every 1024 candidates, not every one.
            if s.next.is_multiple_of(1024) && cx.slice_over() {
                return Status::Yield; // the others' turn; md calls resume again
            }
        }
        let _ = writeln!(cx, "PRIMES {}", s.found);
        v.primes = None;
        Status::Done
    }

    fn eof(&mut self, v: &mut Visitor, cx: &mut Ctx<'_>) {
        let name = v.name.as_deref().unwrap_or("stranger");
        let _ = writeln!(cx, "bye, {name}");
    }

    fn command_names(&self) -> &'static [&'static str] {
        COMMANDS
    }
}

/// Answers an error line and counts it (`md.N.errors` in viewstats).
fn error(cx: &mut Ctx<'_>, what: &str) -> Status {
    cx.error();
    let _ = writeln!(cx, "ERR {what}");
    Status::Done
}

fn is_prime(k: u64) -> bool {
    k >= 2 && (2..).take_while(|d| d * d <= k).all(|d| !k.is_multiple_of(d))
}
// ANCHOR_END: impl

// ANCHOR: main
fn main() -> std::process::ExitCode {
    md::main(Greet::default())
}
// ANCHOR_END: main

// ANCHOR: tests
#[cfg(test)]
mod tests {
    use super::*;
    use md::testing::Harness;

    #[test]
    fn hello_later_and_bye() {
        let mut h = Harness::start(Greet::default()).unwrap();
        let c = h.connect("greet");
        h.send_lines(c, "HELLO ada\nLATER 20\nHELLO\n");
        assert_eq!(h.read_line(c), "hello, ada\n");
        assert_eq!(h.read_line(c), "later, ada\n"); // replies keep request order
        assert_eq!(h.read_line(c), "ERR expected HELLO <name>, LATER <ms> or PRIMES <n>\n");
        h.eof(c);
        assert_eq!(h.read_to_close(c), b"bye, ada\n");
        let stats = h.stop();
        assert_eq!(stats[shmq::stats::Md::Errors], 1);
        assert_eq!(stats.commands[HELLO], 1);
        assert_eq!(stats.commands[LATER], 1);
    }

    #[test]
    fn a_long_primes_does_not_stall_other_clients() {
        // A 1 ms slice (the default md.slice): PRIMES yields every millisecond or so.
        let mut h = Harness::start(Greet::default()).unwrap();
        let (slow, quick) = (h.connect("greet"), h.connect("greet"));
        h.send_lines(slow, "PRIMES 200000\n");
        h.send_lines(quick, "HELLO bob\n");
        assert_eq!(h.read_line(quick), "hello, bob\n");
        assert_eq!(h.read_line(slow), "PRIMES 17984\n");
        // bob was answered while PRIMES ran (between two of its slices), not after it.
        assert_eq!(h.take_reply_order(), [quick, slow]);
        assert_eq!(h.stop().commands[PRIMES], 1);
    }

    #[test]
    fn its_own_settings() {
        let text = "[[io_conn.listener]]\naddress = \"127.0.0.1:7070\"\nservice = \"greet\"\n\
                    framing = \"line\"\n\n[service.greet]\ngreeting = \"ahoy\"\n";
        let cfg = config::Config::from_toml_str(text, "my.toml").unwrap();
        let mut h = Harness::with_config(Greet::default(), &cfg).unwrap();
        let c = h.connect("greet");
        h.send_lines(c, "HELLO ada\n");
        assert_eq!(h.read_line(c), "ahoy, ada\n");
        h.stop();
        // A bad value is refused, naming the key; the service keeps what it had.
        let bad = config::Config::from_toml_str(&text.replace("\"ahoy\"", "3"), "my.toml").unwrap();
        let e = Harness::with_config(Greet::default(), &bad).unwrap_err();
        assert!(e.to_string().starts_with("service.greet.greeting: expected a word"), "{e}");
    }

    #[test]
    fn other_services_are_refused() {
        let mut h = Harness::start(Greet::default()).unwrap();
        let c = h.connect("echo");
        assert_eq!(h.read_to_close(c), b"");
        assert_eq!(h.stop()[shmq::stats::Md::FlowsRefused], 1);
    }
}
// ANCHOR_END: tests
