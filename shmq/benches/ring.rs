//! Push + pop between two threads over a heap ring: frames/s and GB/s for 16 B, 64 B and 1 KiB
//! payloads, the consumer polling (no doorbell).
//!
//! `cargo bench -p shmq --bench ring` measures (median and best of 5 runs per size). Without
//! `--bench` (as `cargo test --benches` runs it) or with `CI` set, it runs a short smoke pass that
//! only checks that frames arrive in order. Results and the machine they came from are recorded in
//! docs/BENCHMARKS.md.
//!
//! The producer pushes with `try_push` and flushes every `BATCH` frames (and whenever the ring
//! is full, which `try_push` does itself); the consumer calls `drain` in a loop and touches the
//! first and last byte of every payload, so a frame counts only once its bytes were read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shmq::frame::{FlowId, Kind};
use shmq::layout::Direction;
use shmq::ring::{Consumer, HeapMemory, Producer, PushError};

/// Data bytes per ring (default; `SHMQ_BENCH_CAPACITY` overrides): 64 KiB keeps the ring in L2
/// on both cores.
const CAPACITY: u64 = 64 * 1024;
/// Frames per producer flush (default; `SHMQ_BENCH_BATCH` overrides).
const BATCH: u64 = 32;
/// Frames per consumer drain call.
const DRAIN: usize = 256;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Run {
    frames: u64,
    bytes: u64,
    elapsed: Duration,
}

fn run(payload: usize, frames: u64, capacity: u64, batch: u64) -> Run {
    let mem = Arc::new(HeapMemory::new_ring(capacity, 4096, Direction::ToMd));
    let mut tx = Producer::attach(mem.clone(), 0, None).expect("producer attach");
    let mut rx = Consumer::attach(mem, 0).expect("consumer attach");
    let data = vec![0x5au8; payload];
    let start = Instant::now();
    let producer = std::thread::spawn(move || {
        let mut i = 0u64;
        while i < frames {
            match tx.try_push(FlowId(i), Kind::Data, 0, &data) {
                Ok(()) => {
                    i += 1;
                    if i.is_multiple_of(batch) {
                        tx.flush();
                    }
                }
                Err(PushError::Full) => std::hint::spin_loop(),
                Err(e) => panic!("push: {e}"),
            }
        }
        tx.flush();
    });
    let mut next = 0u64;
    let mut bytes = 0u64;
    let mut touched = 0u64;
    while next < frames {
        let n = rx
            .drain(DRAIN, |f| {
                assert_eq!(f.flowid.0, next, "order");
                next += 1;
                bytes += f.payload.len() as u64;
                if let (Some(a), Some(b)) = (f.payload.first(), f.payload.last()) {
                    touched += u64::from(*a) + u64::from(*b);
                }
            })
            .expect("drain");
        if n == 0 {
            std::hint::spin_loop();
        }
    }
    let elapsed = start.elapsed();
    producer.join().expect("producer thread");
    assert_eq!(touched, if payload == 0 { 0 } else { frames * 2 * 0x5a });
    Run { frames, bytes, elapsed }
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench") && std::env::var_os("CI").is_none();
    let sizes: [(usize, u64); 3] = if measure {
        [(16, 10_000_000), (64, 10_000_000), (1024, 2_000_000)]
    } else {
        [(16, 100_000), (64, 100_000), (1024, 20_000)]
    };
    // Two spinning threads on a 2-vCPU machine: any other runnable process takes a core from one
    // of them and the run collapses, so report the median and the best of 5.
    let reps = if measure { 5 } else { 1 };
    let (capacity, batch) =
        (knob("SHMQ_BENCH_CAPACITY", CAPACITY), knob("SHMQ_BENCH_BATCH", BATCH));
    let only: Option<usize> = std::env::var("SHMQ_BENCH_PAYLOAD").ok().and_then(|v| v.parse().ok());
    println!(
        "ring, two threads, capacity {capacity} B, flush every {batch}, drain {DRAIN}{}",
        if measure {
            ", median and best of 5"
        } else {
            " (smoke mode: run with --bench to measure)"
        }
    );
    println!(
        "{:>8} {:>10} {:>12} {:>8} {:>12} {:>8}",
        "payload", "frames", "median f/s", "GB/s", "best f/s", "GB/s"
    );
    for (payload, frames) in sizes {
        if only.is_some_and(|p| p != payload) {
            continue;
        }
        let mut runs: Vec<Run> = (0..reps).map(|_| run(payload, frames, capacity, batch)).collect();
        runs.sort_by_key(|r| r.elapsed);
        let rate = |r: &Run| {
            let secs = r.elapsed.as_secs_f64();
            (r.frames as f64 / secs / 1e6, r.bytes as f64 / secs / 1e9)
        };
        let (med_f, med_b) = rate(&runs[runs.len() / 2]);
        let (best_f, best_b) = rate(&runs[0]);
        let (m, b) = (format!("{med_f:.2} M"), format!("{best_f:.2} M"));
        println!("{payload:>6} B {frames:>10} {m:>12} {med_b:>8.2} {b:>12} {best_b:>8.2}");
    }
}
