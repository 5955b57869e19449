//! Time slices of long work (`md.slice`): what they buy and what they cost, in one run.
//!
//! `cargo bench -p md --bench slice` runs the md runner on its own thread over heap rings with
//! real FIFO doorbells (the `md/tests/util` harness plays io_conn), with the built-in services:
//!
//! * **(a) PING beside a BURN hog.** Per episode one flow pipelines 40 × `BURN n` (n =
//!   `md.dumb.burn_max`, 10^8: ~5 s of work), and another flow sends `PING` whenever its previous
//!   `PONG` is in and 5 ms have passed, until the hog's 40 `RESULT`s are in. Prints each PING's
//!   latency p50 / p99 / max, `md.slice = 1ms` against `md.slice = 0s` (no slicing).
//! * **(b) BURN-only throughput.** One flow pipelines 40 × `BURN n`; BURNs per second from the
//!   first request to the last `RESULT`, three ways: `slice = 1ms`, `slice = 0s` (same code, the
//!   clock never read), and `legacy`, a service whose BURN calls [`md::services::dumb::burn`] in one
//!   go (the code before slicing). Prints medians and the ratios to `slice = 0s` (the cost of
//!   the slicing itself: clock reads, yields, loop turns) and to `legacy` (this build's BURN
//!   against the old one, whose loop the compiler may shape differently).
//!
//! Each setting has its own runner (all three exist for the whole run, idle ones asleep in
//! epoll); episodes alternate between them (A B C, then C B A, ...) so that a noisy machine's
//! drift falls on all alike. `SHMSRV_BENCH_ROUNDS` (default 3) episodes per setting.
//! `cargo test --benches` runs a smoke version (n = 10^6, 1 round) in a few seconds.

#[path = "../tests/util/mod.rs"]
mod util;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use md::services::dumb::burn;
use md::services::{Builtin, DumbOptions, strip_eol};
use md::{Ctx, RunnerOptions, Service, Status};
use shmq::frame::{FlowId, Kind, OpenInfo};
use util::{Geometry, Io, flow};

/// The code before slicing: `BURN n` computed in one call.
struct Legacy;

impl Service for Legacy {
    type Flow = ();
    fn open(&mut self, _info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<()> {
        Some(())
    }
    fn message(&mut self, _: &mut (), msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        let line = strip_eol(msg);
        if line == b"PING" {
            cx.send(b"PONG\n");
        } else {
            let n: u64 = std::str::from_utf8(&line[5..]).unwrap().parse().unwrap();
            let _ = writeln!(cx, "RESULT {}", burn(n));
        }
        Status::Done
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setting {
    Sliced,
    Unsliced,
    Legacy,
}

impl Setting {
    fn name(self) -> &'static str {
        match self {
            Self::Sliced => "slice=1ms",
            Self::Unsliced => "slice=0s",
            Self::Legacy => "legacy",
        }
    }
}

fn start(setting: Setting, n: u64) -> Io {
    let opts = RunnerOptions {
        slice: if setting == Setting::Sliced { Duration::from_millis(1) } else { Duration::ZERO },
        ..RunnerOptions::default()
    };
    let name = format!("bench-slice-{setting:?}");
    let mut io = match setting {
        Setting::Legacy => Io::start(&name, Legacy, opts, Geometry::default()),
        _ => {
            let dumb = DumbOptions { burn_max: n, ..DumbOptions::default() };
            Io::start(&name, Builtin::new(dumb), opts, Geometry::default())
        }
    };
    io.expect_hello();
    io
}

const PIPELINE: usize = 40;

/// Takes every frame md has published (waiting up to `wait` if there is none), returning DRAINED
/// for DATA at once; counts `RESULT`s of `hog` and returns whether a `PONG` of `pinger` came.
fn pump(io: &mut Io, hog: FlowId, pinger: FlowId, results: &mut usize, wait: Duration) -> bool {
    io.poll_into_pending(wait);
    let mut pong = false;
    while let Some(o) = io.pending.pop_front() {
        assert_eq!(o.kind, Kind::Data, "{o:?}");
        io.drained(o.flow, o.payload.len() as u64);
        if o.flow == hog {
            *results += o.payload.windows(7).filter(|w| w == b"RESULT ").count();
        } else if o.flow == pinger {
            assert_eq!(o.payload, b"PONG\n");
            pong = true;
        }
    }
    pong
}

/// One episode of (a): PING latencies beside the hog.
fn latency_episode(io: &mut Io, n: u64, k: u32, lat: &mut Vec<Duration>) {
    let (hog, pinger) = (flow(2 * k), flow(2 * k + 1));
    io.open(hog, "dumb", 0);
    io.open(pinger, "dumb", 0);
    io.lines(hog, &format!("BURN {n}\n").repeat(PIPELINE));
    let mut results = 0;
    let mut sent: Option<Instant> = None;
    let mut next = Instant::now();
    while results < PIPELINE {
        if sent.is_none() && Instant::now() >= next {
            io.lines(pinger, "PING\n");
            sent = Some(Instant::now());
        }
        if pump(io, hog, pinger, &mut results, Duration::from_millis(1)) {
            let t = sent.take().expect("PONG without PING");
            lat.push(t.elapsed());
            next = Instant::now() + Duration::from_millis(5);
        }
    }
    // A PING still out: its PONG follows the last RESULT at once; not a sample beside the hog.
    while sent.is_some() && !pump(io, hog, pinger, &mut results, Duration::from_millis(1)) {}
    io.send(hog, Kind::Close, &[]);
    io.send(pinger, Kind::Close, &[]);
}

/// One episode of (b): BURNs per second.
fn throughput_episode(io: &mut Io, n: u64, k: u32) -> f64 {
    let (hog, none) = (flow(1000 + k), flow(0));
    io.open(hog, "dumb", 0);
    let t = Instant::now();
    io.lines(hog, &format!("BURN {n}\n").repeat(PIPELINE));
    let mut results = 0;
    while results < PIPELINE {
        pump(io, hog, none, &mut results, Duration::from_millis(5));
    }
    let rate = PIPELINE as f64 / t.elapsed().as_secs_f64();
    io.send(hog, Kind::Close, &[]);
    rate
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { config::Md::default().dumb.burn_max } else { 1_000_000 };
    let rounds: u32 = if full {
        std::env::var("SHMSRV_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
    } else {
        1
    };
    println!(
        "md slice bench ({}): {PIPELINE} x BURN {n}, {rounds} episode(s) per setting",
        if full { "full" } else { "smoke" }
    );
    let settings = [Setting::Sliced, Setting::Unsliced, Setting::Legacy];
    let mut ios: Vec<Io> = settings.iter().map(|&s| start(s, n)).collect();

    // (a) latency: sliced against unsliced, alternating.
    let mut lat = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            latency_episode(&mut ios[i], n, r * 2 + 1, &mut lat[i]);
        }
    }
    println!("(a) PING beside the hog    samples        p50        p99        max");
    for (i, l) in lat.iter_mut().enumerate() {
        l.sort();
        assert!(!l.is_empty(), "no PING sample for {}", settings[i].name());
        println!(
            "    {:<20} {:>10} {:>10.3?} {:>10.3?} {:>10.3?}",
            settings[i].name(),
            l.len(),
            pct(l, 0.50),
            pct(l, 0.99),
            l[l.len() - 1]
        );
    }
    if full {
        // What slicing is for (issue 10): every PING well under 100 ms.
        let worst = lat[0][lat[0].len() - 1];
        if worst >= Duration::from_millis(100) {
            println!(
                "    NOTE: a PING beside the hog took {worst:?} with slicing (target < 100ms)"
            );
        }
    }

    // (b) throughput: all three, alternating A B C / C B A.
    let mut rate = [Vec::new(), Vec::new(), Vec::new()];
    for r in 0..rounds {
        let order: [usize; 3] = if r % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for i in order {
            rate[i].push(throughput_episode(&mut ios[i], n, r));
        }
    }
    let med: Vec<f64> = rate.iter_mut().map(|v| median(v)).collect();
    println!("(b) BURN-only throughput   median BURN/s   / slice=0s   / legacy   episodes");
    for (i, s) in settings.iter().enumerate() {
        println!(
            "    {:<20} {:>15.2} {:>11.4} {:>10.4}   {:.2?}",
            s.name(),
            med[i],
            med[i] / med[1],
            med[i] / med[2],
            rate[i]
        );
    }
    for io in ios {
        let (exit, _) = io.stop();
        assert_eq!(exit, md::Exit::Shutdown);
    }
}
