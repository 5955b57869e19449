//! The shared cache under the one robust mutex: GET and SET throughput with 1, 2 and 4 threads
//! hammering the same table (no network, no rings), to size the lock's cost against what
//! io_conn can feed the md processes (docs/ARCHITECTURE.md, "The shared cache").
//!
//! `cargo bench -p shmq --bench cache` (plain binary, `harness = false`; `--smoke` runs a
//! fraction). Prints ops/s per thread count for: GET of a present key, SET of 1000 keys
//! (overwrite, 3-byte values as redis-benchmark sends), and an uncontended baseline of the same
//! GETs by one thread through the lock.

use std::sync::Arc;
use std::time::Instant;

use shmq::HeapMemory;
use shmq::cache::{Cache, Cond, Expiry};

fn run(threads: usize, ops: usize, set: bool) -> f64 {
    let keys = 1000u64;
    let len = Cache::required_len(keys * 4, 64 * keys * 16).unwrap();
    let c = Arc::new(
        Cache::create_in(Arc::new(HeapMemory::new(len)), keys * 4, 64 * keys * 16, 1).unwrap(),
    );
    {
        let mut t = c.lock().unwrap();
        for k in 0..keys {
            t.set(format!("key:{k:012}").as_bytes(), b"xxx", Cond::Always, Expiry::None, 0)
                .unwrap();
        }
    }
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|i| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                let names: Vec<Vec<u8>> =
                    (0..keys).map(|k| format!("key:{k:012}").into_bytes()).collect();
                let mut out = Vec::new();
                for n in 0..ops {
                    let k = &names[(n * 7 + i * 13) % keys as usize];
                    let mut t = c.lock().unwrap();
                    if set {
                        t.set(k, b"yyy", Cond::Always, Expiry::None, 0).unwrap();
                    } else {
                        out.clear();
                        assert!(t.get(k, 0, &mut out));
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    (threads * ops) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke" || a == "--test");
    let ops = if smoke { 2_000 } else { 1_000_000 };
    for (name, set) in [("get", false), ("set", true)] {
        for threads in [1, 2, 4] {
            let r = run(threads, ops, set);
            println!("cache_{name}_threads{threads}_ops_per_s {r:.0}");
        }
    }
}
