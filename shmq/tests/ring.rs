//! The ring between two threads over heap memory, woken by a real FIFO doorbell; and the consumer
//! against arbitrary bytes in the segment.
//!
//! * `two_threads_*`: a producer thread pushes millions of frames (random sizes 0..=max, random
//!   batch sizes before each flush, `try_push` or `reserve`/`commit` with a random over-reserve)
//!   and the consumer (this thread) takes them in random batches (`drain`, or `peek`/`release`
//!   with or without an explicit `publish`), checking the order, kind, flowid, length and every
//!   byte of every frame. When the ring is empty the consumer sometimes spins, then arms the
//!   doorbell and sleeps in `poll(2)` on the FIFO: a 10 s timeout there is not a timing
//!   assertion but a lost-wake-up detector (the producer never stops for that long unless it
//!   finished, and then the consumer is not asleep).
//! * `consumer_*` (proptest): arbitrary data-area bytes, stamps planted at arbitrary positions
//!   (right for their position or not) and arbitrary positions give only `Ok` frames that
//!   satisfy every header rule, `Ok(None)`, or `Corrupt`; never a panic, an out-of-bounds read
//!   or an endless loop.
//!
//! Set `SHMQ_TEST_SEED` to replay a two-thread run (each run prints its seed).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use shmq::Doorbell;
use shmq::frame::{FlowId, Frame, Kind, frame_size};
use shmq::layout::{Direction, RING_HEADER_SIZE};
use shmq::ring::{Consumer, HeapMemory, Memory, Producer, PushError, RingError};
use shmq::sync::Ordering;

/// A test-only FIFO in a directory unique to this process and test, removed on drop (also when
/// the test panics).
struct FifoDir(PathBuf);

impl FifoDir {
    fn new(test: &str) -> Self {
        let d = std::env::temp_dir().join(format!("shmq-ring-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create test dir");
        Self(d)
    }
}

impl Drop for FifoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// splitmix64: the frame with sequence number `seq` is a pure function of `seq`, so the consumer
/// can check it without any channel from the producer.
fn mix(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Payload length of frame `seq`: mostly small, sometimes anything up to `max` (inclusive).
fn len_of(seq: u64, max: usize) -> usize {
    let h = mix(seq);
    match h & 3 {
        0 => 0,
        1 => (h >> 8) as usize % 33,
        _ => (h >> 8) as usize % (max + 1),
    }
}

/// Kind of frame `seq`: an empty frame is EOF half the time (a fixed-length kind), else DATA.
fn kind_of(seq: u64, len: usize) -> Kind {
    if len == 0 && mix(seq) & 16 != 0 { Kind::Eof } else { Kind::Data }
}

fn byte_of(seq: u64, k: usize) -> u8 {
    (seq as u8) ^ (k as u8).wrapping_mul(7) ^ ((seq >> 8) as u8).rotate_left(3)
}

fn fill(seq: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = byte_of(seq, k);
    }
}

fn check(f: &Frame<'_>, seq: u64, max: usize) {
    let len = len_of(seq, max);
    assert_eq!(f.flowid, FlowId(seq), "order");
    assert_eq!(f.kind, kind_of(seq, len), "kind of frame {seq}");
    assert_eq!(f.flags, (seq & 0xffff) as u16, "flags of frame {seq}");
    assert_eq!(f.payload.len(), len, "length of frame {seq}");
    for (k, b) in f.payload.iter().enumerate() {
        if *b != byte_of(seq, k) {
            panic!("frame {seq}: byte {k} is {b:#x}, expected {:#x}", byte_of(seq, k));
        }
    }
}

fn seed() -> u64 {
    let s =
        std::env::var("SHMQ_TEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            mix(now ^ u64::from(std::process::id()))
        });
    println!("SHMQ_TEST_SEED={s}");
    s
}

/// Frames to move: millions in an optimised build, fewer in a debug build (same code paths).
fn frame_count(release: u64) -> u64 {
    if cfg!(debug_assertions) { release / 10 } else { release }
}

/// Watchdog for the producer's backpressure loop and the consumer's sleep: far beyond anything
/// the test needs on a loaded 2-core machine. Hitting it is a failure (a hang), not slowness.
const WATCHDOG: Duration = Duration::from_secs(10);

fn producer_loop(mut tx: Producer, n: u64, max: usize, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut seq = 0u64;
    let mut in_batch = 0u32;
    let mut batch = rng.random_range(1..=64u32);
    let mut full_since: Option<Instant> = None;
    let mut scratch = vec![0u8; max];
    while seq < n {
        let len = len_of(seq, max);
        let kind = kind_of(seq, len);
        let flags = (seq & 0xffff) as u16;
        let r = if rng.random_bool(0.5) {
            // In place, reserving up to max and committing the real length.
            let extra = if rng.random_bool(0.5) { rng.random_range(0..=max - len) } else { 0 };
            match tx.reserve(len + extra) {
                Ok(mut res) => {
                    fill(seq, &mut res.buf()[..len]);
                    res.commit(len, FlowId(seq), kind, flags)
                }
                Err(e) => Err(e),
            }
        } else {
            fill(seq, &mut scratch[..len]);
            tx.try_push(FlowId(seq), kind, flags, &scratch[..len])
        };
        match r {
            Ok(()) => {
                full_since = None;
                seq += 1;
                in_batch += 1;
                if in_batch >= batch {
                    tx.flush();
                    in_batch = 0;
                    batch = rng.random_range(1..=64);
                }
            }
            Err(PushError::Full) => {
                // Backpressure: a real producer stops reading its sources; here we just retry.
                let since = *full_since.get_or_insert_with(Instant::now);
                assert!(since.elapsed() < WATCHDOG, "ring full for {WATCHDOG:?}: consumer stuck");
                std::thread::yield_now();
            }
            Err(e) => panic!("push of frame {seq}: {e}"),
        }
    }
    tx.flush();
}

/// Runs `n` frames through a ring of `cap` bytes (max payload `max`) between two threads, with
/// the consumer sleeping on a real FIFO doorbell whenever the ring is empty.
fn two_threads(test: &str, cap: u64, max: usize, n: u64) {
    let seed = seed();
    let dir = FifoDir::new(test);
    let fifo = dir.0.join("doorbell");
    let rx_bell = Doorbell::create(&fifo, 0o600).expect("create FIFO");
    let tx_bell = Doorbell::open(&fifo).expect("open FIFO");

    let mem = Arc::new(HeapMemory::new_ring(cap, max as u64, Direction::ToMd));
    let tx = Producer::attach(mem.clone(), 0, Some(tx_bell)).expect("producer attach");
    let mut rx = Consumer::attach(mem.clone(), 0).expect("consumer attach");
    let producer = std::thread::spawn(move || producer_loop(tx, n, max, seed));

    let mut rng = SmallRng::seed_from_u64(seed);
    let mut next = 0u64;
    let mut sleeps = 0u64;
    while next < n {
        let got = if rng.random_bool(0.5) {
            let k = rng.random_range(1..=256usize);
            rx.drain(k, |f| {
                check(&f, next, max);
                next += 1;
            })
            .unwrap_or_else(|e| panic!("drain after frame {next}: {e}"))
        } else {
            let k = rng.random_range(1..=64usize);
            let mut c = 0;
            while c < k {
                match rx.peek() {
                    Ok(Some(f)) => check(&f, next, max),
                    Ok(None) => break,
                    Err(e) => panic!("peek after frame {next}: {e}"),
                }
                // Sometimes peek twice: an unreleased frame is returned again.
                if rng.random_bool(0.05) {
                    let f = rx.peek().expect("re-peek").expect("same frame");
                    check(&f, next, max);
                }
                rx.release();
                next += 1;
                c += 1;
            }
            if rng.random_bool(0.5) {
                rx.publish();
            }
            c
        };
        if got > 0 || next == n {
            continue;
        }
        if rng.random_bool(0.3) && rx.spin(Duration::from_micros(rng.random_range(0..50))) {
            continue;
        }
        if rx.prepare_sleep(&rx_bell) {
            sleeps += 1;
            let mut fds = [PollFd::new(rx_bell.as_fd(), PollFlags::POLLIN)];
            let ready =
                poll(&mut fds, PollTimeout::try_from(WATCHDOG).expect("10 s fits")).expect("poll");
            if ready == 0 {
                if producer.is_finished() {
                    // Surface a producer panic rather than blaming the doorbell.
                    producer.join().expect("producer thread");
                }
                panic!("lost wake-up: armed and slept {WATCHDOG:?} at frame {next} of {n}");
            }
            rx.note_wakeup();
        }
    }
    producer.join().expect("producer thread");
    assert_eq!(rx.peek().map(|f| f.is_some()), Ok(false), "nothing after the last frame");
    rx.publish();
    let h = rx.header();
    let r = Ordering::Relaxed;
    assert_eq!(h.producer.frames.load(r), n);
    assert_eq!(h.consumer.frames.load(r), n);
    assert_eq!(h.producer.bytes.load(r), h.consumer.bytes.load(r));
    assert_eq!(h.consumer.sleeps.load(r), sleeps);
    assert_eq!(h.consumer.corrupt.load(r), 0);
    // Every sleep was ended by a byte written after the drain that preceded it, so by a ring of
    // its own (a ring can also hit an arming whose re-check then saw data: hence >=).
    assert!(h.producer.doorbells.load(r) >= sleeps);
    assert_eq!(h.consumer.wakeups.load(r), sleeps);
    println!(
        "{test}: {n} frames, {} bytes, {sleeps} sleeps, {} doorbells, {} full events",
        h.consumer.bytes.load(r),
        h.producer.doorbells.load(r),
        h.producer.full_events.load(r)
    );
}

#[test]
fn two_threads_4k_ring_doorbell() {
    two_threads("4k", 4096, 1000, frame_count(2_000_000));
}

#[test]
fn two_threads_smallest_ring_every_offset() {
    // 256 bytes, max payload 104 (frame 128 = half the ring): wraps every few frames, through
    // every offset, the implicit 8- and 16-byte wraps and padding records of every length.
    two_threads("256", 256, 104, frame_count(1_000_000));
}

// ------------------------------------------------------------------------- arbitrary bytes

const CAP: u64 = 256;
const MAXP: u64 = 104;
const HDR: u64 = shmq::frame::HEADER_SIZE as u64;

/// Writes `bytes` over the data area of the ring in `mem` from offset 0.
fn write_data(mem: &HeapMemory, bytes: &[u8]) {
    assert!(bytes.len() <= CAP as usize);
    // SAFETY: the data area is CAP bytes from RING_HEADER_SIZE inside `mem` (a ring of CAP),
    // `bytes` is at most CAP long, and nothing else touches the memory while the (single-threaded)
    // test writes it.
    unsafe {
        core::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            mem.as_ptr().add(RING_HEADER_SIZE),
            bytes.len(),
        )
    };
}

/// Drains the consumer until it reports empty or corrupt, checking every frame it returns
/// against the header rules. Returns the number of frames. Fails on a panic (propagates) or
/// if it would loop beyond what the positions allow.
fn drain_checked(rx: &mut Consumer, dir: Direction) -> Result<usize, RingError> {
    // Every frame occupies at least 24 bytes, and a stamp only matches one position: at most
    // one lap's worth of frames.
    let bound = CAP as usize / 24 + 1;
    for n in 0..=bound {
        match rx.peek() {
            Ok(Some(f)) => {
                assert!(f.payload.len() as u64 <= MAXP);
                assert!(f.kind != Kind::Pad && f.kind.allowed(dir));
                if let Some(l) = f.kind.fixed_len() {
                    assert_eq!(f.payload.len(), l);
                }
                rx.release();
            }
            Ok(None) => return Ok(n),
            Err(e) => {
                assert_eq!(rx.header().consumer.corrupt.load(Ordering::Relaxed), 1);
                assert_eq!(rx.peek().map(|f| f.is_some()), Err(e), "sticky");
                return Err(e);
            }
        }
    }
    panic!("more frames than {CAP} bytes can hold");
}

fn dir_of(b: bool) -> Direction {
    if b { Direction::ToMd } else { Direction::ToIo }
}

proptest! {
    // No regression files: the inputs are printed on failure, and an integration test has no
    // lib.rs beside it for proptest's default persistence.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes in the data area, stamps planted at arbitrary aligned positions past the
    /// start (right for their position, or for another lap), an arbitrary start position and an
    /// arbitrary published tail (aligned or not, behind, ahead, absurd): only Ok frames that
    /// obey the rules, then Ok(None) or Corrupt.
    #[test]
    fn consumer_arbitrary_data_and_tail(
        data in proptest::collection::vec(any::<u8>(), CAP as usize),
        start in 0u64..1024,
        stamps in proptest::collection::vec((0u64..CAP / 8, prop_oneof![3 => Just(0u64), 1 => Just(CAP)]), 0..12),
        tail_delta in prop_oneof![0u64..=CAP + 16, any::<u64>()],
        to_md in any::<bool>(),
    ) {
        let dir = dir_of(to_md);
        let mem = Arc::new(HeapMemory::new_ring(CAP, MAXP, dir));
        let start = start & !7;
        let rx0 = Consumer::attach(mem.clone(), 0).expect("attach");
        rx0.header().tail.0.store(start, Ordering::Relaxed);
        rx0.header().head.0.store(start, Ordering::Relaxed);
        drop(rx0);
        let mut rx = Consumer::attach(mem.clone(), 0).expect("attach at start");
        let mut w = data.clone();
        for &(slot, lap) in &stamps {
            let pos = start + 8 * slot;
            let off = (pos & (CAP - 1)) as usize;
            w[off..off + 8].copy_from_slice(&(pos + lap + 1).to_le_bytes());
        }
        write_data(&mem, &w);
        rx.header().tail.0.store(start.wrapping_add(tail_delta), Ordering::Release);
        let _ = drain_checked(&mut rx, dir);
        let (r, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).expect("pipe");
        let bell = shmq::Doorbell::from_fd(r);
        drop(wr);
        let _ = rx.prepare_sleep(&bell);
        let _ = drain_checked(&mut rx, dir);
    }

    /// Valid frames from a real producer, then some bytes overwritten (headers included): the
    /// consumer never panics, and if no header byte was hit every frame comes out intact.
    #[test]
    fn consumer_valid_stream_with_flipped_bytes(
        lens in proptest::collection::vec(0usize..=MAXP as usize, 1..12),
        start in 0u64..64,
        flips in proptest::collection::vec((0usize..CAP as usize, any::<u8>()), 0..6),
    ) {
        let mem = Arc::new(HeapMemory::new_ring(CAP, MAXP, Direction::ToMd));
        let start = start * 8;
        {
            let rx0 = Consumer::attach(mem.clone(), 0).expect("attach");
            rx0.header().tail.0.store(start, Ordering::Relaxed);
            rx0.header().head.0.store(start, Ordering::Relaxed);
        }
        let mut tx = Producer::attach(mem.clone(), 0, None).expect("attach");
        let mut rx = Consumer::attach(mem.clone(), 0).expect("attach");
        let mut pushed = 0usize;
        let mut headers = vec![]; // data-area offsets of every header written (frames and pads)
        let mut pos = start;
        for (i, &len) in lens.iter().enumerate() {
            let rem = CAP - (pos & (CAP - 1));
            let need = frame_size(len) as u64;
            let mut p = vec![0u8; len];
            fill(i as u64, &mut p);
            if tx.try_push(FlowId(i as u64), Kind::Data, 0, &p).is_err() {
                break;
            }
            if rem >= HDR && need > rem {
                headers.push((pos & (CAP - 1)) as usize);
            }
            let at = if rem < HDR || need > rem { pos + rem } else { pos };
            headers.push((at & (CAP - 1)) as usize);
            pos = at + need;
            pushed += 1;
        }
        tx.flush();
        // The cleared stamp word of the next header position counts as a header: a flip there
        // can forge a stamp (a single byte can spell a small position + 1).
        let rem = CAP - (pos & (CAP - 1));
        let next = if rem < HDR { pos + rem } else { pos };
        headers.push((next & (CAP - 1)) as usize);
        let hit_header = flips.iter().any(|&(o, _)| headers.iter().any(|&h| o >= h && o < h + HDR as usize));
        for &(o, b) in &flips {
            // SAFETY: `o` is below CAP, so inside the data area of `mem`; single-threaded.
            unsafe { *mem.as_ptr().add(RING_HEADER_SIZE + o) = b };
        }
        prop_assert_eq!(rx.header().tail.0.load(Ordering::Relaxed), pos);
        let r = drain_checked(&mut rx, Direction::ToMd);
        if !hit_header {
            prop_assert_eq!(r, Ok(pushed));
        }
    }
}
