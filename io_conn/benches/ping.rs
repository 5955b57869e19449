//! PING through io_conn + 1 md: request/response throughput with 1, 10 and 100 connections.
//!
//! `cargo bench -p io_conn --bench ping` (build md in release first: `cargo build --release
//! --bins`) runs 5 s per point and prints msgs/s; `cargo test --benches` runs a < 5 s smoke
//! version (debug builds) so the bench keeps compiling and working. The client is one thread
//! that writes `PING\n` on every connection, then reads every `PONG\n` (so `c` requests are in
//! flight); it shares the machine's vCPUs with the server, as in `../shared/bench/`.
//!
//! To compare two builds side by side, run the bench executable against each in turn:
//! `SHMSRV_IO_CONN_BIN=/path/to/io_conn target/release/deps/ping-* --bench` (md is taken from the
//! same directory); docs/BENCHMARKS.md "PING before and after the stats wiring" did that.

#[path = "../tests/util/mod.rs"]
mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn run_point(sut: &util::Server, conns: usize, dur: Duration) -> f64 {
    let mut cs: Vec<TcpStream> = (0..conns).map(|_| sut.connect("dumb/line")).collect();
    let mut buf = [0u8; 5];
    let mut round = |cs: &mut [TcpStream]| {
        for c in cs.iter_mut() {
            c.write_all(b"PING\n").expect("write");
        }
        for c in cs.iter_mut() {
            c.read_exact(&mut buf).expect("read");
            assert_eq!(&buf, b"PONG\n");
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

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let dur = if full { Duration::from_secs(5) } else { Duration::from_millis(300) };
    let sut = util::Server::start("bench_ping", 1);
    println!(
        "PING through io_conn + 1 md ({} mode, {:?} per point)",
        if full { "full" } else { "smoke" },
        dur
    );
    for conns in [1usize, 10, 100] {
        let rate = run_point(&sut, conns, dur);
        println!("  c{conns:<4} {rate:>10.0} msgs/s");
    }
    sut.stop();
}
