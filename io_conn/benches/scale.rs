//! Scaling by md processes, through the real io_conn (issue 10's benchmarks):
//!
//! 1. **BURN-heavy existing connections, 1 md against 2.** 8 long-lived connections each keep one
//!    `BURN n` in flight (closed loop) under `dispatch = "request"`. Phases alternate on the
//!    *same* connections: md 0 alone, then md 1 started by hand (`md --instance 1`), then md 1
//!    stopped with SIGTERM (it leaves: nothing is lost), and so on; burns/s per phase, and the
//!    ratio of the medians (2 md / 1 md).
//! 2. **PING latency beside a BURN hog**, with md's time slices on (`md.slice = "1ms"`) and off
//!    (`"0s"`): one connection pipelines 40 × `BURN 100000000`; another client sends `PING` one at a
//!    time for as long as the hog runs and records each round trip; p50/p99/max and the number of
//!    samples per setting (the two servers run side by side and the rounds alternate).
//!
//! `cargo bench -p io_conn --bench scale` (after `cargo build --release --bins`) runs the full
//! version; without `--bench` (as under `cargo test --benches`) a smoke version of a second or
//! two that only shows it works. `SHMSRV_BENCH_BURN` sets n for part 1 (default 3 000 000, the
//! issue's), `SHMSRV_BENCH_PHASES` the number of phases (default 6).

#[path = "../tests/util/mod.rs"]
mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn burn_reply(n: u64) -> Vec<u8> {
    format!("RESULT {}\n", n * (n + 1) / 2).into_bytes()
}

/// Keeps one BURN in flight on every connection for `dur`; returns burns per second. Every reply
/// is checked.
fn burn_phase(conns: &mut [TcpStream], req: &[u8], reply: &[u8], dur: Duration) -> f64 {
    let mut buf = vec![0u8; reply.len()];
    for c in conns.iter_mut() {
        c.write_all(req).expect("write");
    }
    let start = Instant::now();
    let mut n = 0u64;
    let mut open = true;
    while open {
        open = start.elapsed() < dur;
        for c in conns.iter_mut() {
            c.read_exact(&mut buf).expect("read");
            assert_eq!(buf, reply);
            n += 1;
            if open {
                c.write_all(req).expect("write");
            }
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn burns(full: bool) {
    let n: u64 = std::env::var("SHMSRV_BENCH_BURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 3_000_000 } else { 10_000 });
    let phases: usize = std::env::var("SHMSRV_BENCH_PHASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 6 } else { 2 });
    let dur = if full { Duration::from_secs(5) } else { Duration::from_millis(300) };
    let sut = util::Server::start_with(
        "bench_scale",
        util::Setup {
            spawn_md: 1,
            max_instances: 2,
            dispatch: Some("request"),
            md_extra: "[md.dumb]\nburn_max = 1000000000",
            ..util::Setup::default()
        },
    );
    let req = format!("BURN {n}\n").into_bytes();
    let reply = burn_reply(n);
    let mut conns: Vec<TcpStream> = (0..8).map(|_| sut.connect("dumb/line")).collect();
    println!("BURN {n} closed loop on 8 existing connections, request dispatch, {dur:?} per phase");
    let (mut one, mut two) = (Vec::new(), Vec::new());
    let mut md1: Option<util::KillOnDrop> = None;
    let mut joins = 0;
    for phase in 0..phases {
        if phase % 2 == 1 {
            let child = Command::new(util::md_bin())
                .arg("--config")
                .arg(&sut.config)
                .arg("--instance")
                .arg("1")
                .env("RUST_LOG", "warn")
                .spawn()
                .expect("start md 1");
            md1 = Some(util::KillOnDrop(child));
            joins += 1;
            sut.wait_log("md instance 1 live", joins);
        }
        let rate = burn_phase(&mut conns, &req, &reply, dur);
        println!("  phase {phase}: {} md  {rate:>10.1} burns/s", 1 + phase % 2);
        if phase % 2 == 1 {
            two.push(rate);
            // md 1 leaves (SIGTERM): the connections carry on with md 0, nothing lost.
            if let Some(mut m) = md1.take() {
                let pid = nix::unistd::Pid::from_raw(m.0.id() as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
                let status = m.0.wait().expect("wait md 1");
                assert!(status.success(), "md 1 left with {status}");
            }
        } else {
            one.push(rate);
        }
    }
    if !two.is_empty() {
        let (m1, m2) = (median(&mut one), median(&mut two));
        println!("  median: 1 md {m1:.1} burns/s, 2 md {m2:.1} burns/s, ratio {:.2}", m2 / m1);
    }
    drop(conns);
    sut.stop();
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn hog(full: bool, mds: u32) {
    let n: u64 = if full { 100_000_000 } else { 2_000_000 };
    let hogs = if full { 40 } else { 4 };
    let rounds = if full { 3 } else { 1 };
    let server = |name: &str, slice: &str| {
        let md_extra = format!("slice = \"{slice}\"\n[md.dumb]\nburn_max = 1000000000");
        util::Server::start_with(
            name,
            util::Setup {
                spawn_md: mds,
                max_instances: mds,
                dispatch: Some("request"),
                md_extra: &md_extra,
                ..util::Setup::default()
            },
        )
    };
    let sides =
        [("slice=1ms", server("bench_hog_on", "1ms")), ("slice=0s", server("bench_hog_off", "0s"))];
    println!(
        "PING beside {hogs} x BURN {n} pipelined on one connection, {mds} md, {rounds} rounds"
    );
    let mut lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let reply = burn_reply(n);
    for r in 0..rounds {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let s = &sides[k].1;
            let mut h = s.connect("dumb/line");
            h.write_all(format!("BURN {n}\n").repeat(hogs).as_bytes()).expect("write hog");
            // The hog's replies are read (and checked) on another thread; PINGs are timed for as
            // long as the hog runs, one at a time.
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reader = {
                let (done, reply) = (done.clone(), reply.clone());
                std::thread::spawn(move || {
                    let mut got = vec![0u8; reply.len()];
                    for _ in 0..hogs {
                        h.read_exact(&mut got).expect("hog reply");
                        assert_eq!(got, reply);
                    }
                    done.store(true, std::sync::atomic::Ordering::Release);
                })
            };
            let mut p = s.connect("dumb/line");
            let mut buf = [0u8; 5];
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let t = Instant::now();
                p.write_all(b"PING\n").expect("write");
                p.read_exact(&mut buf).expect("read");
                assert_eq!(&buf, b"PONG\n");
                lat[k].push(t.elapsed());
            }
            reader.join().expect("hog reader");
        }
    }
    for (k, (name, _)) in sides.iter().enumerate() {
        let v = &mut lat[k];
        v.sort();
        println!(
            "  {name:<10} PING p50 {:>10.3?}  p99 {:>10.3?}  max {:>10.3?}  ({} samples)",
            percentile(v, 0.5),
            percentile(v, 0.99),
            v[v.len() - 1],
            v.len()
        );
    }
    for (_, s) in sides {
        s.stop();
    }
}

/// BURN-only throughput with slices on and off: two servers (1 md each, `md.slice` 1ms and 0s)
/// side by side, 8 connections each keeping one `BURN n` in flight, phases alternating.
fn slice_cost(full: bool) {
    let n: u64 = if full { 3_000_000 } else { 10_000 };
    let phases = if full { 6 } else { 2 };
    let dur = if full { Duration::from_secs(5) } else { Duration::from_millis(300) };
    let server = |name: &str, slice: &str| {
        let md_extra = format!("slice = \"{slice}\"\n[md.dumb]\nburn_max = 1000000000");
        util::Server::start_with(
            name,
            util::Setup {
                spawn_md: 1,
                max_instances: 1,
                dispatch: Some("request"),
                md_extra: &md_extra,
                ..util::Setup::default()
            },
        )
    };
    let sides = [server("bench_cost_on", "1ms"), server("bench_cost_off", "0s")];
    let mut conns: Vec<Vec<TcpStream>> =
        sides.iter().map(|s| (0..8).map(|_| s.connect("dumb/line")).collect()).collect();
    let req = format!("BURN {n}\n").into_bytes();
    let reply = burn_reply(n);
    println!("BURN {n} only, 8 connections, 1 md, slice 1ms against 0s, {dur:?} per phase");
    let mut rates = [Vec::new(), Vec::new()];
    for phase in 0..phases {
        let k = if (phase / 2) % 2 == 0 { phase % 2 } else { 1 - phase % 2 };
        let r = burn_phase(&mut conns[k], &req, &reply, dur);
        println!("  phase {phase}: slice={}  {r:>10.1} burns/s", ["1ms", "0s"][k]);
        rates[k].push(r);
    }
    let (on, off) = (median(&mut rates[0]), median(&mut rates[1]));
    println!("  median: slice=1ms {on:.1}, slice=0s {off:.1} burns/s, ratio {:.3}", on / off);
    drop(conns);
    for s in sides {
        s.stop();
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    burns(full);
    hog(full, 1);
    hog(full, 2);
    slice_cost(full);
}
