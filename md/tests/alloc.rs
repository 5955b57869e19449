//! Steady state allocates nothing per message in md: a counting global allocator counts the
//! allocations made on the md runner's thread while 100k pipelined PINGs (and their DRAINED
//! frames) flow over existing flows, after a warm-up of the same shape; once without and once
//! with a stats sink (mirroring into a stats segment once per batch).

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use md::services::{Builtin, DumbOptions};
use md::{Exit, MdStatsSink, Runner};
use shmq::frame::{FlowId, Kind};
use shmq::ring::HeapMemory;
use shmq::stats::{Md, StatsSegment, required_len};
use shmq::sys::ProcId;
use util::{Geometry, Io, WATCHDOG, flow, opts};

/// Allocations (alloc, alloc_zeroed, realloc) made by threads that set `TRACKED`.
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // const-initialised: reading it never allocates (no lazy init inside the allocator).
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

struct Counting;

fn note() {
    if TRACKED.with(Cell::get) {
        // Relaxed: a plain event counter; the reader synchronises through the rings/join.
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees (a valid block of `layout`, or null) are ours; counting touches no allocator state.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract (non-zero size).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged; `ptr` was allocated by this allocator (that is, by
        // `System`) with `layout`, as the caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends `per_flow` PINGs on each flow, keeping at most `window` unanswered per flow, returns
/// DRAINED for every reply frame, and checks every reply byte.
fn pings(io: &mut Io, flows: &[FlowId], per_flow: usize, window: usize) {
    let mut sent = vec![0usize; flows.len()];
    let mut answered_bytes = vec![0usize; flows.len()];
    let deadline = Instant::now() + WATCHDOG;
    while answered_bytes.iter().any(|&b| b < per_flow * 5) {
        assert!(Instant::now() < deadline, "PINGs not answered: {answered_bytes:?}");
        for (i, &f) in flows.iter().enumerate() {
            while sent[i] < per_flow && sent[i] - answered_bytes[i] / 5 < window {
                if io.tx.try_push(f, Kind::Data, 0, b"PING\n").is_err() {
                    break;
                }
                sent[i] += 1;
            }
        }
        io.tx.flush();
        io.poll_into_pending(Duration::from_millis(1));
        while let Some(o) = io.pending.pop_front() {
            let i = flows.iter().position(|&f| f == o.flow).expect("reply for a known flow");
            assert_eq!(o.kind, Kind::Data);
            assert!(o.payload.chunks(5).all(|c| c == b"PONG\n"), "{:?}", o.payload);
            answered_bytes[i] += o.payload.len();
            io.drained(o.flow, o.payload.len() as u64);
        }
    }
    assert_eq!(answered_bytes, vec![per_flow * 5; flows.len()]);
}

/// Runs the measured PINGs; with `stats`, the runner mirrors into a stats segment (heap-backed)
/// as the md binary does. Returns md's allocations during the 100k measured PINGs.
fn allocations_during_pings(stats: Option<StatsSegment>) -> u64 {
    // One measurement at a time: the counter is shared by every tracked thread.
    static SERIAL: Mutex<()> = Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sink_seg = stats.clone();
    let mut io = Io::start_with("alloc", Geometry::default(), move |ep, control| {
        let mut r = Runner::new(Builtin::new(DumbOptions::default()), opts());
        if let Some(seg) = &sink_seg {
            let sink = MdStatsSink::attach(seg, opts().instance, ProcId::current()).unwrap();
            r.set_stats_sink(Some(sink));
        }
        TRACKED.with(|t| t.set(true));
        let exit = r.run(ep, control).expect("runner failed");
        TRACKED.with(|t| t.set(false));
        (exit, r.stats().clone())
    });
    io.expect_hello();
    let flows: Vec<FlowId> = (0..4).map(|i| flow(i * 3 + 1)).collect();
    for &f in &flows {
        io.open(f, "dumb", 1 << 20);
    }
    // Warm-up: same shape as the measured run, so every buffer reaches its working size.
    pings(&mut io, &flows, 5_000, 64);
    let before = ALLOCS.load(Ordering::Relaxed);
    pings(&mut io, &flows, 25_000, 64); // 100k PINGs in all
    let after = ALLOCS.load(Ordering::Relaxed);
    let (exit, stats_out) = io.stop();
    assert_eq!(exit, Exit::Shutdown);
    assert_eq!(stats_out[Md::MessagesIn], 120_000);
    assert!(before > 0, "the counter works: md allocated during setup");
    if let Some(seg) = stats {
        // The sink was really in the loop: the segment saw every PING.
        let snap = seg.reader().snapshot();
        assert_eq!(snap.get("md", opts().instance, "messages_in"), Some(120_000));
        assert_eq!(snap.get("md", opts().instance, "commands.dumb.ping"), Some(120_000));
    }
    after - before
}

#[test]
fn steady_state_pings_allocate_nothing_in_md() {
    let n = allocations_during_pings(None);
    assert_eq!(n, 0, "md allocated {n} times during 100k PINGs");
}

#[test]
fn steady_state_pings_allocate_nothing_in_md_with_stats() {
    let mem = Arc::new(HeapMemory::new(required_len(4)));
    let seg = StatsSegment::create_in(mem, 4, 1, ProcId { pid: 1, start_time: 1 }).unwrap();
    let n = allocations_during_pings(Some(seg));
    assert_eq!(n, 0, "md allocated {n} times during 100k PINGs with a stats sink");
}
