//! Cost of one stats counter update, next to a plain local `u64` increment.
//!
//! `cargo bench -p shmq --bench stats` measures (median of 5 runs of 20 M updates each). Without
//! `--bench` (as `cargo test --benches` runs it) or with `CI` set, it runs a short smoke pass that
//! checks the counters hold the expected totals. Results are recorded in docs/BENCHMARKS.md.
//!
//! Every loop body goes through `black_box`, so the compiler can neither fold the loop nor keep
//! the value in a register across iterations for the local baseline any more than for the stats
//! update (which is a relaxed load, an add and a relaxed store to shared memory).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use shmq::layout::Direction;
use shmq::ring::HeapMemory;
use shmq::stats::{Io, IoCounts, Md, StatsReader, StatsSegment, required_len};
use shmq::sync::{AtomicU64, Ordering};
use shmq::sys::ProcId;

fn time(n: u64, mut f: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench") && std::env::var_os("CI").is_none();
    let (n, runs) = if full { (20_000_000u64, 5) } else { (100_000u64, 1) };

    let mem = Arc::new(HeapMemory::new(required_len(1)));
    let stats = StatsSegment::create_in(mem.clone(), 1, 1, ProcId { pid: 1, start_time: 1 })
        .expect("create stats in heap memory");
    let io = stats.io();
    let md = stats.attach_writer_md(0, ProcId { pid: 2, start_time: 2 }).expect("md slot 0");
    let cons = stats.queue_consumer(0, Direction::ToMd).expect("consumer half");
    let rmw = AtomicU64::new(0);

    let mut local = 0u64;
    let mut rows: Vec<(&str, f64)> = Vec::new();
    let mut bench = |name, f: &mut dyn FnMut(u64)| {
        let r = median((0..runs).map(|_| time(n, &mut *f)).collect());
        rows.push((name, r));
    };
    bench("local u64 += 1 (black_box)", &mut |_| local = black_box(black_box(local) + 1));
    bench("IoStats::inc", &mut |_| io.inc(Io::MessagesIn));
    let before_publish = io.get(Io::MessagesIn);
    bench("MdStats::set (mirror a local)", &mut |i| md.set(Md::MessagesIn, black_box(i)));
    let mut counts = IoCounts::default();
    bench("IoStats::publish (every Io word, one store each)", &mut |i| {
        counts[Io::EpollWakeups] = black_box(i);
        io.publish(black_box(&counts));
    });
    bench("QueueConsumerStats::record_wait_ns (seqlock)", &mut |i| {
        cons.record_wait_ns(black_box(i & 0xffff))
    });
    // Relaxed: a baseline only; what one shared RMW would cost instead of load + store.
    bench("AtomicU64::fetch_add Relaxed (for comparison)", &mut |_| {
        black_box(&rmw).fetch_add(1, Ordering::Relaxed);
    });

    let snap = StatsReader::attach_in(mem).expect("reader").snapshot();
    let expect = n * runs as u64;
    assert_eq!(before_publish, expect, "every update landed");
    assert_eq!(snap.get("md", 0, "messages_in"), Some(n - 1));
    let b = snap.block("in.consumer", 0).expect("consumer block");
    let (h, _) = snap.histogram(b, shmq::stats::WAIT_HISTOGRAM);
    assert_eq!(h.iter().map(|x| x.1).sum::<u64>(), expect);
    assert_eq!(local, expect);

    println!("stats counter updates ({} updates x {runs} runs, median):", n);
    for (name, ns) in rows {
        println!("  {name:<48} {ns:>7.2} ns/op");
    }
    if !full {
        println!("(smoke mode: run `cargo bench -p shmq --bench stats` to measure)");
    }
}
