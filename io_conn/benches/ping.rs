//! PING through io_conn + 1 md: request/response throughput with 1, 10 and 100 connections.
//!
//! `cargo bench -p io_conn --bench ping` (build md in release first: `cargo build --release
//! --bins`) runs 5 s per point and prints msgs/s; `cargo test --benches` runs a < 5 s smoke
//! version (debug builds) so the bench keeps compiling and working. The client is one thread
//! that writes `PING\n` on every connection, then reads every `PONG\n` (so `c` requests are in
//! flight); it shares the machine's vCPUs with the server, as in `../shared/bench/`.
//!
//! Same-run baseline: if `redis-server` is installed (`apt-get install redis-server`), the same
//! client runs against it right after each of our points (redis answers an inline `PING\n` with
//! `+PONG\r\n`), and the ratio is printed. `SHMSRV_BENCH_NO_REDIS=1` skips it.
//! `SHMSRV_BENCH_IO_SPIN` / `SHMSRV_BENCH_MD_SPIN` (e.g. `50us`) set the spin budgets.
//!
//! To compare two builds side by side, run the bench executable against each in turn:
//! `SHMSRV_IO_CONN_BIN=/path/to/io_conn target/release/deps/ping-* --bench` (md is taken from the
//! same directory); docs/BENCHMARKS.md "PING before and after the stats wiring" did that.

#[path = "../tests/util/mod.rs"]
mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One request/response loop point: `conns` connections, each with one request in flight;
/// returns replies per second. Every reply is checked byte for byte.
fn run_point(addr: SocketAddr, req: &[u8], reply: &[u8], conns: usize, dur: Duration) -> f64 {
    let mut cs: Vec<TcpStream> = (0..conns)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
            s.set_nodelay(true).expect("nodelay");
            s
        })
        .collect();
    let mut buf = vec![0u8; reply.len()];
    let mut round = |cs: &mut [TcpStream]| {
        for c in cs.iter_mut() {
            c.write_all(req).expect("write");
        }
        for c in cs.iter_mut() {
            c.read_exact(&mut buf).expect("read");
            assert_eq!(buf, reply);
        }
    };
    // Warm-up.
    let warm = Instant::now();
    while warm.elapsed() < dur / 10 {
        round(&mut cs);
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        round(&mut cs);
        n += conns as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
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

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let dur = if full { Duration::from_secs(5) } else { Duration::from_millis(300) };
    // Knobs for experiments: the spin budgets of io_conn and md (config durations, e.g. "50us").
    let io_spin = std::env::var("SHMSRV_BENCH_IO_SPIN").ok();
    let md_spin = std::env::var("SHMSRV_BENCH_MD_SPIN").ok();
    let io_extra = io_spin.as_ref().map(|s| format!("spin = \"{s}\"")).unwrap_or_default();
    let md_extra = md_spin.as_ref().map(|s| format!("spin = \"{s}\"")).unwrap_or_default();
    let sut = util::Server::start_with(
        "bench_ping",
        util::Setup {
            spawn_md: 1,
            max_instances: 1,
            io_extra: &io_extra,
            md_extra: &md_extra,
            ..util::Setup::default()
        },
    );
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
        let ours = run_point(sut.addr("dumb/line"), b"PING\n", b"PONG\n", conns, dur);
        match &redis {
            Some(r) => {
                let base = run_point(r.addr, b"PING\n", b"+PONG\r\n", conns, dur);
                println!(
                    "  c{conns:<4} ours {ours:>10.0} msgs/s   redis {base:>10.0} msgs/s   ratio {:.2}",
                    ours / base
                );
            }
            None => println!("  c{conns:<4} ours {ours:>10.0} msgs/s"),
        }
    }
    drop(redis);
    sut.stop();
}
