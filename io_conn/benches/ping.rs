//! PING through io_conn + 1 md: request/response throughput with 1, 10 and 100 connections.
//!
//! `cargo bench -p io_conn --bench ping` (build md in release first: `cargo build --release
//! --bins`) runs 5 s per point and prints msgs/s; `cargo test --benches` runs a < 5 s smoke
//! version (debug builds) so the bench keeps compiling and working. The client is the repo's
//! load generator (`loadgen`, closed loop, one thread, one request in flight per connection,
//! every reply checked); it shares the machine's vCPUs with the server, as in `../shared/bench/`.
//! Each point prints the p50 and p99 latency beside the rate.
//!
//! Same-run baseline: if `redis-server` is installed (`apt-get install redis-server`), the same
//! client runs against it right after each of our points (redis answers an inline `PING\n` with
//! `+PONG\r\n`), and the ratio is printed. `SHMSRV_BENCH_NO_REDIS=1` skips it.
//! `SHMSRV_BENCH_IO_SPIN` / `SHMSRV_BENCH_MD_SPIN` (e.g. `50us`) set the spin budgets.
//!
//! To compare two builds in the same run (A/B mode), point `SHMSRV_BENCH_AB` at the other build's
//! io_conn (md is taken from its directory): both servers run side by side and every point is
//! measured `SHMSRV_BENCH_ROUNDS` times (default 3) against each, alternating (A then B, then B
//! then A, ...), so drift of a noisy machine falls on both alike; it prints each side's median
//! and the ratio B/A of the medians. `SHMSRV_IO_CONN_BIN=/path/to/io_conn` replaces side A (this
//! tree's build by default). `SHMSRV_BENCH_AB=dispatch` compares the listener's two dispatch
//! modes of one build instead: A `flow`, B `request`. docs/BENCHMARKS.md "Structure split: PING old against new" used it.
//! `SHMSRV_BENCH_AB=spin` compares the spin budgets of one build: A with both at `0s` (never
//! spin), B with the shipped defaults (or `SHMSRV_BENCH_IO_SPIN` / `SHMSRV_BENCH_MD_SPIN`); it
//! also prints the doorbells (io_conn's and md's, from `viewstats`) per reply of each side
//! (docs/BENCHMARKS.md "Adaptive spinning").

#[path = "../tests/util/mod.rs"]
mod util;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One closed-loop point with the repo's load generator (`loadgen`): `conns` connections, each
/// with one request in flight, every reply checked byte for byte (a wrong reply or an error
/// fails the bench); returns the replies, the seconds they took and the report (latency
/// percentiles).
fn run_point(
    addr: SocketAddr,
    req: &[u8],
    reply: &[u8],
    conns: usize,
    dur: Duration,
) -> (u64, f64, loadgen::Report) {
    let text = |b: &[u8]| String::from_utf8_lossy(b.strip_suffix(b"\n").unwrap_or(b)).into_owned();
    let w =
        loadgen::Workload::new(loadgen::Proto::Line, &[text(req)], &[text(reply)], 0, 200, "bench")
            .expect("workload");
    let plan = loadgen::Plan {
        addr,
        workload: w,
        conns,
        depth: 1,
        rate: None,
        duration: dur,
        warmup: dur / 10,
        sources: Vec::new(),
        threads: 1,
        timeout: Duration::from_secs(30),
    };
    let r = loadgen::run(&plan).expect("loadgen");
    assert!(r.clean(), "PING bench against {addr}: {}", r.summary());
    (r.replies, r.secs, r)
}

/// redis-server on a free loopback port, killed (by pid) on drop. `None` if it is not installed.
struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Redis {
    fn start() -> Option<Redis> {
        // A port the kernel just handed out and released: free unless someone races us.
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let r = Redis { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(r)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU time (user + system) a process has used, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> =
        rest.split_whitespace().skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
    f.iter().sum()
}

/// The CPU ticks of a server's io_conn and its md children.
fn server_ticks(s: &util::Server) -> u64 {
    cpu_ticks(s.pid()) + s.md_pids().into_iter().map(cpu_ticks).sum::<u64>()
}

/// Doorbells written so far by io_conn (to md) and md (to io_conn), from `viewstats`.
fn doorbells(s: &util::Server) -> u64 {
    let v = s.stats();
    ["in.producer", "out.producer"]
        .iter()
        .map(|sec| util::stat(&v, sec, 0, "doorbells").unwrap_or(0))
        .sum()
}

/// A/B mode: build A (`SHMSRV_IO_CONN_BIN`, or this tree's) against `other` (B), alternating per
/// measurement. Besides throughput it reports the CPU time io_conn + md used per reply (from
/// `/proc`, 10 ms ticks summed over every round): less sensitive than msgs/s to a noisy host,
/// and with the spin budgets at 0 a measure of the work per request.
fn ab(
    other: std::ffi::OsString,
    dur: Duration,
    setup: impl Fn(&str, Option<std::path::PathBuf>, Option<&str>, bool) -> util::Server,
) {
    let rounds: usize =
        std::env::var("SHMSRV_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    // `SHMSRV_BENCH_AB=dispatch`: one build, A with `dispatch = "flow"`, B with "request".
    let (a, b, what) = if other == "dispatch" {
        let a = setup("bench_ping", None, Some("flow"), false);
        let b = setup("bench_ping_b", None, Some("request"), false);
        (a, b, "A = flow dispatch, B = request dispatch".to_owned())
    } else if other == "spin" {
        let a = setup("bench_ping", None, None, true);
        let b = setup("bench_ping_b", None, None, false);
        (a, b, "A = spin 0s (io_conn and md), B = spin budgets as configured".to_owned())
    } else {
        let other = std::path::PathBuf::from(other);
        let what = format!("A = {}, B = {}", util::io_conn_bin().display(), other.display());
        (
            setup("bench_ping", None, None, false),
            setup("bench_ping_b", Some(other), None, false),
            what,
        )
    };
    println!("A/B: {what}; {rounds} rounds per point");
    let tick_us = 1e6
        / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100)
            as f64;
    for conns in [1usize, 10, 100] {
        let (mut va, mut vb) = (Vec::new(), Vec::new());
        let (mut cpu, mut replies, mut bells) = ([0u64; 2], [0u64; 2], [0u64; 2]);
        for r in 0..rounds {
            let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let s = if side == 0 { &a } else { &b };
                let t0 = server_ticks(s);
                let d0 = doorbells(s);
                let (n, secs, _) = run_point(s.addr("dumb/line"), b"PING\n", b"PONG\n", conns, dur);
                cpu[side] += server_ticks(s) - t0;
                bells[side] += doorbells(s).saturating_sub(d0);
                replies[side] += n;
                if side == 0 { va.push(n as f64 / secs) } else { vb.push(n as f64 / secs) }
            }
        }
        let (ma, mb) = (median(&mut va.clone()), median(&mut vb.clone()));
        let per = |k: usize| cpu[k] as f64 * tick_us / replies[k].max(1) as f64;
        let bell = |k: usize| bells[k] as f64 / replies[k].max(1) as f64;
        println!(
            "  c{conns:<4} A {ma:>8.0} msgs/s {:>6.2} cpu-us/reply {:.2} bells/reply {va:.0?}   B {mb:>8.0} msgs/s {:>6.2} cpu-us/reply {:.2} bells/reply {vb:.0?}   B/A {:.3} msgs/s, {:.3} cpu/reply",
            per(0),
            bell(0),
            per(1),
            bell(1),
            mb / ma,
            per(1) / per(0),
        );
    }
    a.stop();
    b.stop();
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let dur = if full { Duration::from_secs(5) } else { Duration::from_millis(300) };
    // Knobs for experiments: the spin budgets of io_conn and md (config durations, e.g. "50us").
    let io_spin = std::env::var("SHMSRV_BENCH_IO_SPIN").ok();
    let md_spin = std::env::var("SHMSRV_BENCH_MD_SPIN").ok();
    let io_extra = io_spin.as_ref().map(|s| format!("spin = \"{s}\"")).unwrap_or_default();
    let md_extra = md_spin.as_ref().map(|s| format!("spin = \"{s}\"")).unwrap_or_default();
    // `no_spin`: both budgets "0s" (the A side of `SHMSRV_BENCH_AB=spin`).
    let setup = |name: &str, bin: Option<std::path::PathBuf>, dispatch: Option<&str>, no_spin| {
        let zero = "spin = \"0s\"";
        util::Server::start_with(
            name,
            util::Setup {
                spawn_md: 1,
                max_instances: 1,
                io_extra: if no_spin { zero } else { &io_extra },
                md_extra: if no_spin { zero } else { &md_extra },
                io_conn_bin: bin,
                dispatch,
                ..util::Setup::default()
            },
        )
    };
    if let Some(other) = std::env::var_os("SHMSRV_BENCH_AB") {
        return ab(other, dur, setup);
    }
    let sut = setup("bench_ping", None, None, false);
    // The same client against redis-server in the same run (an inline `PING\n` gets
    // `+PONG\r\n`): the baseline the ratios are taken against.
    let redis =
        if std::env::var_os("SHMSRV_BENCH_NO_REDIS").is_some() { None } else { Redis::start() };
    println!(
        "PING through io_conn + 1 md ({} mode, {:?} per point, io spin {}, md spin {})",
        if full { "full" } else { "smoke" },
        dur,
        io_spin.as_deref().unwrap_or("default"),
        md_spin.as_deref().unwrap_or("default"),
    );
    if redis.is_none() {
        println!("  (redis-server not found or not started: no same-run baseline)");
    }
    for conns in [1usize, 10, 100] {
        let (n, secs, ro) = run_point(sut.addr("dumb/line"), b"PING\n", b"PONG\n", conns, dur);
        let ours = n as f64 / secs;
        let lat =
            |r: &loadgen::Report| format!("p50 {:>6.1} p99 {:>7.1} us", r.us(0.5), r.us(0.99));
        match &redis {
            Some(r) => {
                let (n, secs, rr) = run_point(r.addr, b"PING\n", b"+PONG\r\n", conns, dur);
                let base = n as f64 / secs;
                println!(
                    "  c{conns:<4} ours {ours:>10.0} msgs/s ({})   redis {base:>10.0} msgs/s ({})   ratio {:.2}",
                    lat(&ro),
                    lat(&rr),
                    ours / base
                );
            }
            None => println!("  c{conns:<4} ours {ours:>10.0} msgs/s ({})", lat(&ro)),
        }
    }
    drop(redis);
    sut.stop();
}
