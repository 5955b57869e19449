//! md's memory, seen by a counting global allocator on the md runner's thread.
//!
//! * Steady state allocates nothing per message: the allocations made while 100k pipelined PINGs
//!   (and their DRAINED frames) flow over existing flows, after a warm-up of the same shape; once
//!   without and once with a stats sink (mirroring into a stats segment once per batch).
//! * Held requests cost memory bounded by `hold_max_bytes` (issue 14, finding 2): the largest
//!   block md allocates while a client keeps its flow's held requests between the RESUME and
//!   PAUSE thresholds for many thousand requests.

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// The largest block (alloc, alloc_zeroed, realloc's new size) asked for by threads that set
/// `PEAK_TRACKED`.
static PEAK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // const-initialised: reading them never allocates (no lazy init inside the allocator).
    static TRACKED: Cell<bool> = const { Cell::new(false) };
    static PEAK_TRACKED: Cell<bool> = const { Cell::new(false) };
}

struct Counting;

fn note(size: usize) {
    if TRACKED.with(Cell::get) {
        // Relaxed: a plain event counter; the reader synchronises through the rings/join.
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
    if PEAK_TRACKED.with(Cell::get) {
        // Relaxed: a plain maximum, read after the runner thread is joined.
        PEAK.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees (a valid block of `layout`, or null) are ours; counting touches no allocator state.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract (non-zero size).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
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

/// The replies of [`adversarial_request`]`(i)`.
fn adversarial_reply(i: usize) -> String {
    if i.is_multiple_of(41) {
        "DONE\n".to_owned()
    } else {
        let k = (i % 1000) as u64;
        format!("RESULT {}\n", k * (k + 1) / 2)
    }
}

/// Request `i` of the adversarial pipeline: a `WAIT 1` at the head of every 41 (the flow is busy
/// for a millisecond, its later requests are held), `BURN`s with distinct answers between them.
fn adversarial_request(i: usize) -> String {
    if i.is_multiple_of(41) { "WAIT 1\n".to_owned() } else { format!("BURN {}\n", i % 1000) }
}

/// Issue 14, finding 2. A client that never lets its flow's held requests run out: it sends as
/// fast as md lets it, stops at PAUSE and starts again at RESUME, so the held requests stay
/// between the thresholds (a `WAIT` at the head of every few dozen keeps md from catching up)
/// for 30k requests, about 100 times the bytes `hold_max_bytes` allows. md's largest block
/// stays within a small multiple of `hold_max_bytes` (before the fix the backlog buffer only
/// grew, to hold every byte the flow ever sent: 256 KiB here), and every request is answered,
/// in order.
#[test]
fn issue_14_held_requests_between_pause_and_resume_stay_bounded() {
    const REQUESTS: usize = 30_000;
    const HOLD_MAX_BYTES: usize = 4 << 10;
    let mut o = opts();
    o.hold_max_bytes = HOLD_MAX_BYTES;
    o.resume_bytes = 1 << 10;
    // Bytes decide; the request-count thresholds are out of the way.
    o.hold_max_requests = 1 << 20;
    o.resume_requests = 1 << 20;
    // What io_conn pushed before it saw PAUSE is held too: at most an input ring's worth. A small
    // ring keeps that within the bound asserted below.
    let geo = Geometry { in_cap: 4 << 10, out_cap: 64 << 10, max_payload: 1 << 10 };
    let mut io = Io::start_with("held-bounded", geo, move |ep, control| {
        let dumb = Builtin::new(DumbOptions::default());
        let mut r = Runner::new(dumb, o);
        PEAK_TRACKED.with(|t| t.set(true));
        let exit = r.run(ep, control).expect("runner failed");
        PEAK_TRACKED.with(|t| t.set(false));
        (exit, r.stats().clone())
    });
    io.expect_hello();
    let f = flow(5);
    io.open(f, "dumb", 1 << 20);
    let want: Vec<u8> = (0..REQUESTS).flat_map(|i| adversarial_reply(i).into_bytes()).collect();
    let (mut sent, mut got) = (0, 0);
    let (mut paused, mut pauses, mut resumes) = (false, 0, 0);
    let deadline = Instant::now() + WATCHDOG * 3;
    while got < want.len() {
        assert!(Instant::now() < deadline, "{got} of {} reply bytes, {sent} sent", want.len());
        // As io_conn does: read the client (here: make up requests) until md says PAUSE.
        while !paused && sent < REQUESTS {
            let req = adversarial_request(sent);
            if io.tx.try_push(f, Kind::Data, 0, req.as_bytes()).is_err() {
                break; // input ring full: md is behind
            }
            sent += 1;
            // Publish (and wake md) and look for PAUSE after every request, as soon as io_conn
            // would see it.
            io.tx.flush();
            if io.rx.has_data() {
                break;
            }
        }
        let wait = if paused || sent == REQUESTS { 1 } else { 0 };
        io.poll_into_pending(Duration::from_millis(wait));
        while let Some(o) = io.pending.pop_front() {
            assert_eq!(o.flow, f, "{o:?}");
            match o.kind {
                Kind::Pause => {
                    assert!(!paused, "PAUSE twice");
                    (paused, pauses) = (true, pauses + 1);
                }
                Kind::Resume => {
                    assert!(paused, "RESUME without PAUSE");
                    (paused, resumes) = (false, resumes + 1);
                }
                Kind::Data => {
                    let end = got + o.payload.len();
                    assert!(
                        end <= want.len() && o.payload == want[got..end],
                        "reply bytes {got}..{end} out of order: {:?}",
                        String::from_utf8_lossy(&o.payload)
                    );
                    got = end;
                    io.drained(f, o.payload.len() as u64);
                }
                k => panic!("unexpected {k:?}"),
            }
        }
    }
    let (exit, stats) = io.stop();
    assert_eq!(exit, Exit::Shutdown);
    assert_eq!(stats[Md::MessagesIn], REQUESTS as u64);
    // The pipeline really went back and forth between the thresholds, and (nearly) every
    // request waited in the backlog.
    assert!(pauses >= 5 && resumes >= 5, "{pauses} PAUSE, {resumes} RESUME");
    assert!(stats[Md::Held] >= REQUESTS as u64 * 9 / 10, "held: {}", stats[Md::Held]);
    let peak = PEAK.load(Ordering::Relaxed);
    assert!(
        peak <= 8 * HOLD_MAX_BYTES,
        "md allocated a block of {peak} bytes; hold_max_bytes is {HOLD_MAX_BYTES}"
    );
}
