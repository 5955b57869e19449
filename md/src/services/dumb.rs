//! `dumb` (line framing): the tutorial's DUMB server.
//!
//! | request | reply |
//! |---|---|
//! | `PING` | `PONG` |
//! | `WAIT <ms>` | `DONE`, after `ms` milliseconds; other flows are served meanwhile (a timer) |
//! | `BURN <n>` | `RESULT <n(n+1)/2>`, computed as a `u128` by `n` real additions, in slices of `md.slice` ([`Status::Yield`]): other flows are served between two slices, this flow's later requests wait |
//! | `STREAM <n>` | `n` bytes `A`, immediately followed by `DONE`, paced by the flow's output credit |
//! | anything else | `ERR <reason>` |
//!
//! Every reply ends with `\n`. A request is one line; its `\n` (or `\r\n`) is stripped first. The
//! command word is ASCII case-insensitive (`ping` works); a number is plain decimal digits (no
//! sign), separated from the word by spaces or tabs; nothing may follow it. A number above its
//! limit ([`DumbOptions`]) is an error, and so is a missing, extra or non-decimal argument. After
//! an `ERR` the flow stays usable.
//!
//! `WAIT 0` answers at once. `STREAM 0` answers `DONE`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use shmq::frame::OpenInfo;

use crate::service::{Ctx, Service, Status};
use crate::services::{cmd, strip_eol};

/// Limits of the `dumb` service (`[md.dumb]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumbOptions {
    /// Largest `n` of `BURN n`.
    pub burn_max: u64,
    /// Longest `WAIT`.
    pub wait_max: Duration,
    /// Largest `n` of `STREAM n`.
    pub stream_max: u64,
    /// Most bytes of `A` written per step of a stream (at least 1).
    pub stream_chunk: u64,
}

impl Default for DumbOptions {
    fn default() -> Self {
        Self {
            burn_max: 100_000_000,
            wait_max: Duration::from_secs(60),
            stream_max: 1_000_000_000,
            stream_chunk: 16 << 10,
        }
    }
}

impl From<&config::Dumb> for DumbOptions {
    fn from(d: &config::Dumb) -> Self {
        Self {
            burn_max: d.burn_max,
            wait_max: d.wait_max,
            stream_max: d.stream_max,
            stream_chunk: d.stream_chunk,
        }
    }
}

/// The `dumb` service.
#[derive(Debug, Clone)]
pub struct Dumb {
    opts: DumbOptions,
}

/// What a `dumb` flow is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DumbFlow {
    /// No request running.
    #[default]
    Idle,
    /// A `WAIT` whose timer has not fired.
    Waiting,
    /// A `STREAM` with this many `A` still to write.
    Streaming(u64),
    /// A `BURN` that yielded: its progress.
    Burning(Burn),
}

/// A `BURN n` in progress: the sum of 1..=`i` so far. [`Burn::run`] continues it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burn {
    /// Iterations asked for.
    pub n: u64,
    /// Iterations done.
    pub i: u64,
    /// Sum of 1..=`i`.
    pub sum: u128,
}

/// Iterations between two looks at the clock in a `BURN` (~10 us at ~1.2 ns per iteration):
/// a clock read (~25 ns) per chunk costs ~0.3 %, and a slice overruns by at most one chunk.
pub const BURN_CHECK_EVERY: u64 = 8192;

impl Burn {
    /// A burn of `n` iterations, none done.
    pub fn new(n: u64) -> Self {
        Self { n, i: 0, sum: 0 }
    }

    /// Runs chunks of [`BURN_CHECK_EVERY`] iterations until the burn is complete (returns the
    /// sum) or `over()`, asked after each chunk, says to stop (`None`; call again to continue).
    /// However it is cut, the sum is the one [`burn`] computes: the same additions in the same
    /// order.
    pub fn run(&mut self, mut over: impl FnMut() -> bool) -> Option<u128> {
        // The loop works on locals: `black_box` is opaque to the compiler, which must then
        // assume any memory it could reach may change, so `self.i` / `self.sum` would be
        // stored and reloaded on every iteration.
        let (n, mut i, mut sum) = (self.n, self.i, self.sum);
        loop {
            let stop = i + (n - i).min(BURN_CHECK_EVERY);
            while i < stop {
                i += 1;
                sum += black_box(i) as u128;
            }
            if i == n {
                (self.i, self.sum) = (i, sum);
                return Some(sum);
            }
            if over() {
                (self.i, self.sum) = (i, sum);
                return None;
            }
        }
    }
}

const TOKEN_WAIT: u64 = 1;
const AS: [u8; 4096] = [b'A'; 4096];

/// Sum of 1..=n by `n` real additions; `black_box` keeps the compiler from using the formula.
pub fn burn(n: u64) -> u128 {
    let mut sum: u128 = 0;
    let mut i: u64 = 0;
    while i < n {
        i += 1;
        sum += black_box(i) as u128;
    }
    sum
}

/// A parsed request, or why it is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Ping,
    Wait(u64),
    Burn(u64),
    Stream(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParseError {
    Empty,
    Unknown,
    NoArgument(&'static str),
    NeedsNumber(&'static str),
    NotANumber(&'static str),
    TooLarge(&'static str),
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_space(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_space(b)).map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

fn parse_number(name: &'static str, arg: &[u8]) -> Result<u64, ParseError> {
    if arg.is_empty() {
        return Err(ParseError::NeedsNumber(name));
    }
    if arg.iter().any(|b| is_space(*b)) {
        return Err(ParseError::NeedsNumber(name));
    }
    let mut v: u64 = 0;
    for &b in arg {
        if !b.is_ascii_digit() {
            return Err(ParseError::NotANumber(name));
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add((b - b'0') as u64))
            .ok_or(ParseError::TooLarge(name))?;
    }
    Ok(v)
}

fn parse(line: &[u8]) -> Result<Request, ParseError> {
    let line = trim(line);
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let split = line.iter().position(|&b| is_space(b)).unwrap_or(line.len());
    let (word, arg) = (&line[..split], trim(&line[split..]));
    if word.eq_ignore_ascii_case(b"PING") {
        return if arg.is_empty() {
            Ok(Request::Ping)
        } else {
            Err(ParseError::NoArgument("PING"))
        };
    }
    if word.eq_ignore_ascii_case(b"WAIT") {
        return parse_number("WAIT", arg).map(Request::Wait);
    }
    if word.eq_ignore_ascii_case(b"BURN") {
        return parse_number("BURN", arg).map(Request::Burn);
    }
    if word.eq_ignore_ascii_case(b"STREAM") {
        return parse_number("STREAM", arg).map(Request::Stream);
    }
    Err(ParseError::Unknown)
}

impl Dumb {
    /// The service with these limits.
    pub fn new(opts: DumbOptions) -> Self {
        let stream_chunk = opts.stream_chunk.max(1);
        Self { opts: DumbOptions { stream_chunk, ..opts } }
    }

    /// New limits (a reload): requests from now on are checked against them; a request already
    /// running keeps going.
    pub fn reload(&mut self, cfg: &config::Config) {
        *self = Self::new(DumbOptions::from(&cfg.md.dumb));
    }

    /// Its limits.
    pub fn options(&self) -> &DumbOptions {
        &self.opts
    }

    fn err(cx: &mut Ctx<'_>, args: std::fmt::Arguments<'_>) -> Status {
        cx.error();
        cx.count(cmd::ERR);
        cx.send(b"ERR ");
        let _ = cx.write_fmt(args);
        cx.send(b"\n");
        Status::Done
    }

    /// One slice of a `BURN`: `RESULT` and `Done` when it completes, else `Yield`.
    fn burn_slice(flow: &mut DumbFlow, cx: &mut Ctx<'_>) -> Status {
        let DumbFlow::Burning(b) = flow else { return Status::Done };
        match b.run(|| cx.slice_over()) {
            Some(sum) => {
                *flow = DumbFlow::Idle;
                let _ = writeln!(cx, "RESULT {sum}");
                Status::Done
            }
            None => Status::Yield,
        }
    }

    /// Writes as much of the stream as the credit allows; `Done` once `DONE` is written.
    fn stream(&self, flow: &mut DumbFlow, cx: &mut Ctx<'_>) -> Status {
        let DumbFlow::Streaming(mut left) = *flow else { return Status::Done };
        while left > 0 {
            let k = cx.room().min(self.opts.stream_chunk).min(left);
            if k == 0 {
                *flow = DumbFlow::Streaming(left);
                return Status::Pending;
            }
            let mut k = k as usize;
            left -= k as u64;
            while k > 0 {
                let n = k.min(AS.len());
                cx.send(&AS[..n]);
                k -= n;
            }
        }
        // The runner never lets more than the credit out: `DONE\n` waits in the flow's outbox if
        // the credit is spent, so it need not wait for room here.
        cx.send(b"DONE\n");
        *flow = DumbFlow::Idle;
        Status::Done
    }
}

impl Service for Dumb {
    type Flow = DumbFlow;

    fn open(&mut self, _info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<DumbFlow> {
        Some(DumbFlow::Idle)
    }

    fn message(&mut self, flow: &mut DumbFlow, msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        match parse(strip_eol(msg)) {
            Ok(Request::Ping) => {
                cx.count(cmd::PING);
                cx.send(b"PONG\n");
                Status::Done
            }
            Ok(Request::Wait(ms)) => {
                let max = self.opts.wait_max.as_millis();
                if ms as u128 > max {
                    return Self::err(cx, format_args!("WAIT {ms} exceeds the limit of {max} ms"));
                }
                cx.count(cmd::WAIT);
                if ms == 0 {
                    cx.send(b"DONE\n");
                    return Status::Done;
                }
                *flow = DumbFlow::Waiting;
                cx.set_timer(Duration::from_millis(ms), TOKEN_WAIT);
                Status::Pending
            }
            Ok(Request::Burn(n)) => {
                if n > self.opts.burn_max {
                    let max = self.opts.burn_max;
                    return Self::err(cx, format_args!("BURN {n} exceeds the limit of {max}"));
                }
                cx.count(cmd::BURN);
                // The slice starts now (a request after a finished yielded one shares that
                // one's slice: the runner set its end already).
                cx.slice_deadline();
                *flow = DumbFlow::Burning(Burn::new(n));
                Self::burn_slice(flow, cx)
            }
            Ok(Request::Stream(n)) => {
                if n > self.opts.stream_max {
                    let max = self.opts.stream_max;
                    return Self::err(cx, format_args!("STREAM {n} exceeds the limit of {max}"));
                }
                cx.count(cmd::STREAM);
                *flow = DumbFlow::Streaming(n);
                self.stream(flow, cx)
            }
            Err(e) => match e {
                ParseError::Empty => Self::err(cx, format_args!("empty request")),
                ParseError::Unknown => Self::err(
                    cx,
                    format_args!("unknown command (expected PING, WAIT, BURN or STREAM)"),
                ),
                ParseError::NoArgument(c) => Self::err(cx, format_args!("{c} takes no argument")),
                ParseError::NeedsNumber(c) => {
                    Self::err(cx, format_args!("{c} needs exactly one number"))
                }
                ParseError::NotANumber(c) => {
                    Self::err(cx, format_args!("{c} argument is not a decimal number"))
                }
                ParseError::TooLarge(c) => Self::err(cx, format_args!("{c} argument is too large")),
            },
        }
    }

    fn timer(&mut self, flow: &mut DumbFlow, token: u64, cx: &mut Ctx<'_>) -> Status {
        if token == TOKEN_WAIT && *flow == DumbFlow::Waiting {
            *flow = DumbFlow::Idle;
            cx.send(b"DONE\n");
            return Status::Done;
        }
        Status::Pending
    }

    fn drained(&mut self, flow: &mut DumbFlow, cx: &mut Ctx<'_>) -> Status {
        match flow {
            DumbFlow::Streaming(_) => self.stream(flow, cx),
            // Credit of earlier replies came back: the burn stays in the round (Pending from
            // `drained` changes nothing).
            DumbFlow::Waiting | DumbFlow::Burning(_) => Status::Pending,
            DumbFlow::Idle => Status::Done,
        }
    }

    fn resume(&mut self, flow: &mut DumbFlow, cx: &mut Ctx<'_>) -> Status {
        Self::burn_slice(flow, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_values() {
        assert_eq!(burn(0), 0);
        assert_eq!(burn(1), 1);
        assert_eq!(burn(300), 45150);
        assert_eq!(burn(1_000_000), 500_000_500_000);
    }

    #[test]
    fn burn_in_slices_gives_the_same_sum() {
        for n in [0, 1, 300, BURN_CHECK_EVERY - 1, BURN_CHECK_EVERY, 5 * BURN_CHECK_EVERY + 17] {
            // Stop after every chunk: the most cuts possible.
            let mut b = Burn::new(n);
            let mut cuts = 0;
            let sum = loop {
                if let Some(s) = b.run(|| true) {
                    break s;
                }
                cuts += 1;
            };
            assert_eq!(sum, burn(n), "n = {n}");
            assert_eq!(cuts, n.saturating_sub(1) / BURN_CHECK_EVERY, "n = {n}");
            // And never stopped: one call.
            assert_eq!(Burn::new(n).run(|| false), Some(burn(n)));
        }
    }

    #[test]
    fn parse_cases() {
        assert_eq!(parse(b"PING"), Ok(Request::Ping));
        assert_eq!(parse(b"ping"), Ok(Request::Ping));
        assert_eq!(parse(b"  WAIT \t 10 "), Ok(Request::Wait(10)));
        assert_eq!(parse(b"BURN 300"), Ok(Request::Burn(300)));
        assert_eq!(parse(b"STREAM 0"), Ok(Request::Stream(0)));
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b"   "), Err(ParseError::Empty));
        assert_eq!(parse(b"PONG"), Err(ParseError::Unknown));
        assert_eq!(parse(b"PING 1"), Err(ParseError::NoArgument("PING")));
        assert_eq!(parse(b"WAIT"), Err(ParseError::NeedsNumber("WAIT")));
        assert_eq!(parse(b"WAIT 1 2"), Err(ParseError::NeedsNumber("WAIT")));
        assert_eq!(parse(b"WAIT -1"), Err(ParseError::NotANumber("WAIT")));
        assert_eq!(parse(b"WAIT +1"), Err(ParseError::NotANumber("WAIT")));
        assert_eq!(parse(b"BURN 99999999999999999999"), Err(ParseError::TooLarge("BURN")));
        assert_eq!(parse(b"\xff\xfe"), Err(ParseError::Unknown));
    }
}
