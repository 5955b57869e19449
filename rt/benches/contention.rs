//! What the spin gate's contention signal costs: one `pread` of `/proc/loadavg` (a fresh
//! reading, [`rt::Contention::running`]) and one cached look ([`rt::Contention::crowded`] within
//! its 1 ms interval: a clock read and a compare).
//!
//! `cargo bench -p shmsrv-rt --bench contention` (1 s per figure, three rounds, the median
//! printed); `cargo test --benches` runs a short smoke version. No harness: a plain timed loop,
//! since each figure is one call repeated (ns per call = elapsed / calls).

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Calls `f` for about `dur` (in batches of 256), three rounds; the median ns per call.
fn ns_per_call(dur: Duration, mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            let mut calls = 0u64;
            while start.elapsed() < dur {
                for _ in 0..256 {
                    f();
                }
                calls += 256;
            }
            start.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[1]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let dur = if full { Duration::from_secs(1) } else { Duration::from_millis(20) };
    let sys = rt::Contention::system();
    assert!(sys.running().is_some(), "/proc/loadavg unreadable (or SHMSRV_SPIN_IGNORE_LOAD=1)");
    let fresh = ns_per_call(dur, || {
        black_box(sys.running());
    });
    let mut cached = rt::Contention::system();
    let t0 = Instant::now();
    cached.crowded(t0);
    let look = ns_per_call(dur, || {
        // The gate passes its own clock reading; this includes one `Instant::now()`.
        black_box(cached.crowded(Instant::now().min(t0 + Duration::from_micros(500))));
    });
    println!(
        "contention signal on {} CPUs: fresh /proc/loadavg read {fresh:.0} ns, cached look {look:.0} ns \
         (one fresh read per ms: {:.2} % of a CPU)",
        sys.cpus(),
        fresh / 1e4,
    );
}
