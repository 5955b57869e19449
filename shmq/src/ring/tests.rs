//! Unit tests of the ring: the shared helpers (`ring_at`, `poke`, `assert_corrupt`, …), index
//! math, the wrap rule at every offset, full/empty/reserve, reset and counters. By concern in
//! the submodules: `stamps` (commit stamps), `corruption` (impossible frames), `hostile` (a
//! peer moving the shared positions).

use super::*;
use crate::doorbell::Doorbell;
use crate::frame::{ALIGN, FlowId, FrameMeta, HEADER_SIZE, Hello, Kind, STAMP_SIZE};

mod corruption;
mod hostile;
mod stamps;

/// Smallest ring: 256 data bytes, so every offset near the end is a few pushes away.
const CAP: u64 = MIN_CAPACITY;
/// Largest payload that still fits twice in CAP: frame_size(104) = 128 = CAP / 2.
const MAXP: u64 = 104;

fn ring_at(
    cap: u64,
    maxp: u64,
    dir: Direction,
    start: u64,
) -> (Arc<HeapMemory>, Producer, Consumer) {
    let mem = Arc::new(HeapMemory::new_ring(cap, maxp, dir));
    if start != 0 {
        let h = header_at(&*mem, 0).unwrap();
        h.tail.0.store(start, Ordering::Relaxed);
        h.head.0.store(start, Ordering::Relaxed);
    }
    let tx = Producer::attach(mem.clone(), 0, None).unwrap();
    let rx = Consumer::attach(mem.clone(), 0).unwrap();
    (mem, tx, rx)
}

fn ring(dir: Direction) -> (Arc<HeapMemory>, Producer, Consumer) {
    ring_at(CAP, MAXP, dir, 0)
}

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    (0..n).map(|k| (seed as u8).wrapping_mul(31).wrapping_add(k as u8)).collect()
}

/// Writes a raw frame header (all but the stamp) at data-area offset `off` (test-only
/// corruption).
fn poke_meta(mem: &HeapMemory, off: usize, len: u32, kind: u16, flowid: u64) {
    assert!(off.is_multiple_of(ALIGN) && off + HEADER_SIZE <= CAP as usize);
    let fh = FrameMeta { len, kind, flags: 0, flowid };
    // SAFETY: off + 24 is inside the data area of the ring `mem` holds (all callers pass
    // offsets below the capacity minus 24, multiples of 8), the data area is 8-aligned, and
    // the test is single-threaded: no other access to these bytes is live.
    unsafe { mem.as_ptr().add(RING_HEADER_SIZE + off + STAMP_SIZE).cast::<FrameMeta>().write(fh) }
}

/// Writes the 8-byte word at data-area offset `off` (a stamp, or anything else).
fn poke_word(mem: &HeapMemory, off: usize, v: u64) {
    assert!(off.is_multiple_of(ALIGN) && off + 8 <= CAP as usize);
    // SAFETY: in bounds and aligned (checked, data area 128-aligned); single-threaded test.
    unsafe { mem.as_ptr().add(RING_HEADER_SIZE + off).cast::<u64>().write_volatile(v) }
}

fn peek_word(mem: &HeapMemory, off: usize) -> u64 {
    // SAFETY: as for poke_word.
    unsafe { mem.as_ptr().add(RING_HEADER_SIZE + off).cast::<u64>().read_volatile() }
}

/// A hostile producer's frame: the header at `pos` (data offset `pos & (CAP - 1)`), stamped
/// `pos + 1` as an honest commit would, so the consumer takes it and must validate it.
fn poke(mem: &HeapMemory, pos: u64, len: u32, kind: u16, flowid: u64) {
    let off = (pos & (CAP - 1)) as usize;
    poke_meta(mem, off, len, kind, flowid);
    poke_word(mem, off, pos + 1);
}

fn shared_tail(c: &Consumer) -> u64 {
    c.header().tail.0.load(Ordering::Relaxed)
}

fn shared_head(c: &Consumer) -> u64 {
    c.header().head.0.load(Ordering::Relaxed)
}

fn set_tail(c: &Consumer, t: u64) {
    c.header().tail.0.store(t, Ordering::Release);
}

/// A doorbell over a pipe (tests only need its fd semantics).
fn pipe_bells() -> (Doorbell, Doorbell) {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    (Doorbell::from_fd(r), Doorbell::from_fd(w))
}

/// Asserts that the consumer reports exactly `what` at `at`, keeps reporting it, counts it
/// once, and that `release` after the error does not move `head`.
fn assert_corrupt(rx: &mut Consumer, at: u64, what: Corruption) {
    let want = RingError::Corrupt { at, what };
    rx.publish();
    let head = shared_head(rx);
    assert_eq!(rx.peek().map(|f| f.map(|f| f.kind)), Err(want));
    rx.release();
    assert_eq!(rx.peek().map(|f| f.is_some()), Err(want), "corruption is sticky");
    assert_eq!(rx.drain(10, |_| panic!("no frame from a corrupt ring")), Err(want));
    assert!(!rx.has_data() || rx.corruption().is_some());
    assert_eq!(rx.corruption(), Some(want));
    assert_eq!(rx.header().consumer.corrupt.load(Ordering::Relaxed), 1, "counted once");
    assert_eq!(shared_head(rx), head, "head did not move past a corrupt frame");
}

// ---------------------------------------------------------------- index math and geometry

#[test]
fn skip_rule_for_every_offset_and_size() {
    let (_m, mut tx, _rx) = ring(Direction::ToMd);
    for off in (0..CAP).step_by(ALIGN) {
        tx.tail = 5 * CAP + off; // positions are monotonic; only `pos & mask` matters
        for len in 0..=MAXP as usize {
            let need = frame_size(len) as u64;
            let rem = CAP - off;
            // Too small for a header (8 or 16): an implicit wrap, no record; or too small for
            // the frame: a padding record of rem - 24 payload bytes. Either way the whole rest.
            let want = if rem < HEADER_SIZE as u64 || need > rem { rem } else { 0 };
            assert_eq!(tx.skip_for(need), want, "off {off} len {len}");
            // Whatever the skip, the frame then lies wholly inside the data area.
            let start = (tx.tail + want) & (CAP - 1);
            assert!(start + need <= CAP, "off {off} len {len}");
            // The span with the clear-ahead word fits an empty ring: `Full` is temporary.
            let span = tx.span(want, need);
            assert!(span <= CAP && span >= want + need + 8, "off {off} len {len}: span {span}");
            assert!(span <= want + need + HEADER_SIZE as u64);
        }
    }
    assert_eq!(ring_bytes(CAP), RING_HEADER_SIZE + 256);
}

#[test]
fn positions_far_from_zero_wrap_by_mask() {
    let start = (1u64 << 40) + CAP - 24; // 24 bytes before the end of the data area
    let (_m, mut tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
    for i in 0..1000u64 {
        let p = pattern(i, (i % 50) as usize);
        tx.try_push(FlowId(i), Kind::Data, 0, &p).unwrap();
        tx.flush();
        let f = rx.peek().unwrap().unwrap();
        assert_eq!((f.flowid, f.payload), (FlowId(i), &p[..]));
        rx.release();
    }
    rx.publish();
    assert!(shared_head(&rx) > start + 1000 * 16);
    assert_eq!(shared_head(&rx), shared_tail(&rx));
}

#[test]
fn init_rejects_bad_geometry() {
    let mem = HeapMemory::new(ring_bytes(1024));
    let p = |capacity, max_payload| RingParams {
        capacity,
        max_payload,
        direction: Direction::ToMd,
        creator_pid: 1,
        creator_start_time: 0,
        epoch: 1,
        generation: 1,
    };
    assert_eq!(init(&mem, 0, &p(1000, 10)), Err(InitError::BadCapacity(1000)));
    assert_eq!(init(&mem, 0, &p(128, 10)), Err(InitError::BadCapacity(128)));
    assert_eq!(init(&mem, 0, &p(1024, 489)), Err(InitError::BadMaxPayload(489)));
    assert!(init(&mem, 0, &p(1024, 488)).is_ok());
    assert!(matches!(init(&mem, 0, &p(2048, 10)), Err(InitError::RegionTooSmall { .. })));
    assert!(matches!(init(&mem, 64, &p(256, 10)), Err(InitError::RegionTooSmall { .. })));
}

#[test]
fn attach_checks_header() {
    let mem = Arc::new(HeapMemory::new_ring(CAP, MAXP, Direction::ToIo));
    let h = header_at(&*mem, 0).unwrap();
    h.ready.store(0, Ordering::Relaxed);
    assert_eq!(Consumer::attach(mem.clone(), 0).err(), Some(RingAttachError::NotReady));
    h.ready.store(1, Ordering::Relaxed);
    assert!(Consumer::attach(mem.clone(), 0).is_ok());
    assert!(matches!(
        Producer::attach(mem.clone(), 384, None).err(),
        Some(RingAttachError::Truncated { .. })
    ));
    // Impossible positions at attach: more than a ring apart (either way).
    h.tail.0.store(8, Ordering::Relaxed);
    h.head.0.store(16 + CAP, Ordering::Relaxed);
    assert_eq!(Consumer::attach(mem.clone(), 0).err(), Some(RingAttachError::BadGeometry));
    assert_eq!(Producer::attach(mem.clone(), 0, None).err(), Some(RingAttachError::BadGeometry));
    h.tail.0.store(16 + CAP, Ordering::Relaxed);
    h.head.0.store(8, Ordering::Relaxed);
    assert_eq!(Consumer::attach(mem.clone(), 0).err(), Some(RingAttachError::BadGeometry));
    assert_eq!(Producer::attach(mem.clone(), 0, None).err(), Some(RingAttachError::BadGeometry));
    let mem2 = HeapMemory::new(ring_bytes(CAP));
    assert_eq!(
        Consumer::attach(Arc::new(mem2), 0).err(),
        Some(RingAttachError::NotReady),
        "all-zero memory is not ready"
    );
}

// ---------------------------------------------------------------- wrap-around

/// Every payload size 0..=MAXP at every 8-byte offset of the ring: the frame round-trips,
/// the skip is what the wrap rule says (implicit for rem 8 or 16, a stamped padding record of
/// exactly rem - 24 otherwise), nothing is written past the end, the frame is visible from its
/// commit (before any flush), and a second frame follows it.
#[test]
fn wrap_every_size_at_every_offset() {
    for off in (0..CAP).step_by(ALIGN) {
        for len in 0..=MAXP as usize {
            let start = 3 * CAP + off;
            let (mem, mut tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
            // Poison the last 16 bytes: an implicit wrap must not write them.
            // SAFETY: the last 16 bytes of the data area of `mem`; single-threaded test.
            unsafe {
                core::ptr::write_bytes(
                    mem.as_ptr().add(RING_HEADER_SIZE + CAP as usize - 16),
                    0xAA,
                    16,
                )
            };
            let rem = CAP - off;
            let need = frame_size(len) as u64;
            let skip = if rem < HEADER_SIZE as u64 || need > rem { rem } else { 0 };
            let p = pattern(len as u64 + off, len);
            assert!(!rx.has_data());
            tx.try_push(FlowId::new(off as u32, len as u32), Kind::Data, 3, &p).unwrap();
            assert!(rx.has_data(), "visible at commit (off {off} len {len})");
            if skip + need < CAP / 2 {
                // (From half a ring on, the commit publishes the tail itself.)
                assert_eq!(shared_tail(&rx), start, "tail not published before the flush");
            }
            if skip >= HEADER_SIZE as u64 {
                let pad = peek_word(&mem, off as usize + STAMP_SIZE);
                assert_eq!(peek_word(&mem, off as usize), start + 1, "padding stamped");
                let (plen, pkind) = (pad as u32, (pad >> 32) as u16);
                assert_eq!((pkind, plen as u64), (Kind::Pad as u16, rem - HEADER_SIZE as u64));
            } else if skip > 0 {
                // SAFETY: the last `rem` bytes of the data area; single-threaded.
                let last = unsafe {
                    core::slice::from_raw_parts(
                        mem.as_ptr().add(RING_HEADER_SIZE + off as usize),
                        rem as usize,
                    )
                };
                assert!(last.iter().all(|b| *b == 0xAA), "implicit wrap wrote nothing");
            }
            let f = rx.peek().unwrap().expect("the frame");
            assert_eq!(
                (f.flowid, f.kind, f.flags, f.payload),
                (FlowId::new(off as u32, len as u32), Kind::Data, 3, &p[..]),
                "off {off} len {len}"
            );
            rx.release();
            tx.flush();
            assert_eq!(shared_tail(&rx), start + skip + need, "off {off} len {len}");
            // A second frame right after it, also round-tripping.
            tx.try_push(FlowId(9), Kind::Eof, 0, &[]).unwrap();
            let f = rx.peek().unwrap().expect("the second frame");
            assert_eq!((f.flowid, f.kind, f.payload.len()), (FlowId(9), Kind::Eof, 0));
            rx.release();
            assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
            tx.flush();
            assert_eq!(shared_head(&rx), shared_tail(&rx), "caught up and published");
            assert_eq!(rx.header().consumer.frames.load(Ordering::Relaxed), 2, "pads not counted");
            assert_eq!(rx.header().producer.frames.load(Ordering::Relaxed), 2);
        }
    }
}

#[test]
fn trailing_padding_alone_is_consumed_as_empty() {
    let start = CAP - 32;
    let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
    poke(&mem, CAP - 32, 8, Kind::Pad as u16, 0);
    assert!(rx.has_data());
    assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
    assert_eq!(shared_head(&rx), CAP, "padding consumed and published");
    assert!(!rx.has_data());
    // An implicit 8- or 16-byte wrap alone is not consumed: the producer's tail stands before
    // it, and the consumer's head never passes the producer's tail (the producer would call
    // such a head corrupt). The next frame, at offset 0, is found through it.
    for rem in [8, 16] {
        let (_mem, mut tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, CAP - rem);
        assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
        assert_eq!((rx.head, rx.corruption()), (CAP - rem, None));
        tx.try_push(FlowId(5), Kind::Data, 0, b"x").unwrap();
        assert_eq!(rx.peek().unwrap().map(|f| f.flowid), Some(FlowId(5)));
        rx.release();
        assert_eq!(rx.head, CAP + 32);
    }
}

// ---------------------------------------------------------------- full, empty, reserve

#[test]
fn empty_ring() {
    let (_m, mut tx, mut rx) = ring(Direction::ToMd);
    assert!(!rx.has_data());
    assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
    assert_eq!(rx.drain(10, |_| panic!("empty")), Ok(0));
    assert!(!tx.flush(), "nothing to publish");
    assert_eq!(tx.depth(), 0);
    rx.release(); // releasing nothing is a no-op
    assert_eq!(shared_head(&rx), 0);
}

#[test]
fn full_is_reported_flushed_counted_per_episode_and_recovers() {
    let (_m, mut tx, mut rx) = ring(Direction::ToMd);
    // 32-byte frames (len 8): 7 fit in 256 bytes, the 8th would need its clear-ahead word too
    // (it would end at 256, and the word at 256 is the first frame's stamp: not free).
    let mut n = 0u64;
    while tx.try_push(FlowId(n), Kind::Data, 0, &n.to_le_bytes()) != Err(PushError::Full) {
        n += 1;
        assert!(n <= 8);
    }
    assert_eq!(n, 7);
    // Full flushed: the tail is published although we never called flush.
    assert_eq!(shared_tail(&rx), 224);
    for _ in 0..5 {
        assert_eq!(tx.try_push(FlowId(99), Kind::Data, 0, &[0; 8]), Err(PushError::Full));
        assert_eq!(tx.reserve(8).err(), Some(PushError::Full));
        assert!(!tx.has_room(8));
        assert!(!tx.has_room(0), "24 bytes + the 8-byte wrap + the clear word do not fit");
    }
    assert_eq!(tx.header().producer.full_events.load(Ordering::Relaxed), 1, "one episode");
    // Consume one frame: room for exactly one more.
    let f = rx.peek().unwrap().unwrap();
    assert_eq!(f.payload, 0u64.to_le_bytes());
    rx.release();
    rx.publish();
    assert!(tx.has_room(8));
    tx.try_push(FlowId(n), Kind::Data, 0, &n.to_le_bytes()).unwrap();
    assert_eq!(tx.try_push(FlowId(99), Kind::Data, 0, &[0; 8]), Err(PushError::Full));
    tx.flush();
    assert_eq!(tx.header().producer.full_events.load(Ordering::Relaxed), 2, "second episode");
    let mut seen = vec![];
    rx.drain(usize::MAX, |f| seen.push(f.flowid.0)).unwrap();
    assert_eq!(seen, (1..=7).collect::<Vec<_>>(), "order kept, nothing dropped");
}

#[test]
fn reserve_commit_shorter_than_reserved() {
    let (_m, mut tx, mut rx) = ring(Direction::ToMd);
    let mut r = tx.reserve(100).unwrap();
    assert_eq!(r.buf().len(), 100);
    r.buf()[..5].copy_from_slice(b"hello");
    r.commit(5, FlowId(1), Kind::Data, 0).unwrap();
    tx.flush();
    assert_eq!(shared_tail(&rx), frame_size(5) as u64, "only the committed length is used");
    let f = rx.peek().unwrap().unwrap();
    assert_eq!(f.payload, b"hello");
    rx.release();
    // Committing more than reserved is refused and leaves the ring unchanged.
    let r = tx.reserve(4).unwrap();
    assert_eq!(r.commit(5, FlowId(2), Kind::Data, 0), Err(PushError::TooLarge { len: 5, max: 4 }));
    tx.flush();
    assert_eq!(shared_tail(&rx), frame_size(5) as u64);
    assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
}

#[test]
fn dropped_reservation_leaves_ring_unchanged() {
    // Near the end, where the reservation would need a padding record.
    let start = CAP - 48;
    let (mem, mut tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
    poke_meta(&mem, (CAP - 48) as usize, 0x5555, 0x5555, 0x5555);
    {
        let mut r = tx.reserve(MAXP as usize).unwrap();
        r.buf().fill(0xEE);
    }
    assert!(!rx.has_data(), "nothing stamped");
    assert!(!tx.flush(), "nothing committed");
    assert_eq!(shared_tail(&rx), start);
    assert_eq!(tx.header().producer.frames.load(Ordering::Relaxed), 0);
    assert_eq!(peek_word(&mem, (CAP - 48) as usize), 0, "no stamp");
    assert_eq!(peek_word(&mem, (CAP - 40) as usize) >> 32, 0x5555, "no padding record written");
    tx.try_push(FlowId(1), Kind::Data, 0, b"x").unwrap();
    tx.flush();
    assert_eq!(shared_tail(&rx), start + 32, "the next frame goes where the reservation was");
    assert_eq!(rx.peek().unwrap().unwrap().payload, b"x");
}

#[test]
fn too_large() {
    let (_m, mut tx, _rx) = ring(Direction::ToMd);
    let big = vec![0u8; MAXP as usize + 1];
    let e = PushError::TooLarge { len: MAXP as usize + 1, max: MAXP as usize };
    assert_eq!(tx.try_push(FlowId(0), Kind::Data, 0, &big), Err(e));
    assert_eq!(tx.reserve(MAXP as usize + 1).err(), Some(e));
    assert_eq!(
        tx.reserve(usize::MAX).err().map(|e| matches!(e, PushError::TooLarge { .. })),
        Some(true)
    );
    assert!(!tx.has_room(MAXP as usize + 1));
    assert_eq!(tx.header().producer.full_events.load(Ordering::Relaxed), 0);
    tx.try_push(FlowId(0), Kind::Data, 0, &big[..MAXP as usize]).unwrap();
}

#[test]
fn consumer_publish_cadence() {
    // 4096-byte ring: the consumer publishes every 512 bytes, at drain's end, and when empty.
    let (_m, mut tx, mut rx) = ring_at(4096, 1024, Direction::ToMd, 0);
    for i in 0..40u64 {
        tx.try_push(FlowId(i), Kind::Data, 0, &[0; 40]).unwrap(); // 64-byte frames
    }
    tx.flush();
    for i in 1..=8u64 {
        rx.peek().unwrap().unwrap();
        rx.release();
        let want = if i == 8 { 512 } else { 0 };
        assert_eq!(shared_head(&rx), want, "after {i} frames");
    }
    assert_eq!(rx.drain(3, |_| {}), Ok(3));
    assert_eq!(shared_head(&rx), 11 * 64, "drain publishes once at its end");
    while rx.peek().unwrap().is_some() {
        rx.release();
    }
    assert_eq!(shared_head(&rx), 40 * 64, "finding the ring empty publishes");
}

/// A producer that commits more than half a ring without flushing publishes `tail` itself, so
/// the shared tail never lags the frames by a ring (attach checks and the re-attach walk rely
/// on it).
#[test]
fn producer_publishes_tail_every_half_ring_without_flush() {
    let (_m, mut tx, mut rx) = ring_at(4096, 1024, Direction::ToMd, 0);
    for i in 0..200u64 {
        tx.try_push(FlowId(i), Kind::Data, 0, &[0; 40]).unwrap();
        assert!(tx.tail - shared_tail(&rx) < 2048, "frame {i}");
        rx.drain(usize::MAX, |_| {}).unwrap();
    }
    assert!(shared_tail(&rx) >= 2048);
}

// ---------------------------------------------------------------- reset and counters

#[test]
fn reset_bumps_generation_and_drops_old_frames() {
    let (mem, mut tx, rx) = ring(Direction::ToMd);
    tx.try_push(FlowId(1), Kind::Data, 0, b"old").unwrap();
    tx.flush();
    assert!(tx.is_current() && rx.is_current());
    assert_eq!((tx.generation(), rx.generation(), rx.epoch()), (1, 1, 1));
    reset(&*mem, 0, 2).unwrap();
    assert!(!tx.is_current() && !rx.is_current());
    let mut tx = Producer::attach(mem.clone(), 0, None).unwrap();
    let mut rx = Consumer::attach(mem.clone(), 0).unwrap();
    assert!(tx.is_current() && rx.is_current());
    assert_eq!((tx.generation(), rx.generation()), (2, 2));
    assert_eq!(rx.peek().unwrap().map(|f| f.kind), None, "nothing from the old generation");
    tx.try_push(FlowId(2), Kind::Data, 0, b"new").unwrap();
    tx.flush();
    assert_eq!(rx.peek().unwrap().unwrap().payload, b"new");
}

#[test]
fn counters_and_doorbell_handshake() {
    let mem = Arc::new(HeapMemory::new_ring(1024, 256, Direction::ToIo));
    let (rx_bell, tx_bell) = pipe_bells();
    let mut tx = Producer::attach(mem.clone(), 0, Some(tx_bell)).unwrap();
    let mut rx = Consumer::attach(mem.clone(), 0).unwrap();
    let pc = |f: fn(&crate::layout::ProducerCounters) -> &crate::sync::AtomicU64| {
        f(&tx_header(&mem).producer).load(Ordering::Relaxed)
    };
    assert_eq!(tx.header().producer.pid.load(Ordering::Relaxed), std::process::id());
    assert_eq!(rx.header().consumer.pid.load(Ordering::Relaxed), std::process::id());

    // Not armed: a flush publishes but does not ring.
    tx.try_push(FlowId(1), Kind::Data, 0, &[7; 10]).unwrap();
    tx.try_push(FlowId(2), Kind::Pause, 0, &[]).unwrap();
    assert_eq!(pc(|c| &c.frames), 0, "counters are published with the batch");
    assert!(!tx.flush());
    assert_eq!((pc(|c| &c.frames), pc(|c| &c.bytes), pc(|c| &c.doorbells)), (2, 10, 0));
    assert_eq!(pc(|c| &c.max_depth), (frame_size(10) + frame_size(0)) as u64);

    // Data waiting: prepare_sleep refuses and does not arm.
    assert!(!rx.prepare_sleep(&rx_bell));
    assert_eq!(rx.drain(usize::MAX, |_| {}), Ok(2));
    let cc = rx.header().consumer.frames.load(Ordering::Relaxed);
    assert_eq!((cc, rx.header().consumer.bytes.load(Ordering::Relaxed)), (2, 10));

    // Empty: arm and sleep.
    assert!(rx.prepare_sleep(&rx_bell));
    assert_eq!(rx.header().armed.0.load(Ordering::Relaxed), 1);
    assert_eq!(rx.header().consumer.sleeps.load(Ordering::Relaxed), 1);
    tx.try_push(FlowId(3), Kind::Resume, 0, &[]).unwrap();
    assert!(tx.flush(), "armed consumer: rung");
    assert_eq!(rx.header().armed.0.load(Ordering::Relaxed), 0, "producer disarmed it");
    assert_eq!(pc(|c| &c.doorbells), 1);
    tx.try_push(FlowId(4), Kind::Resume, 0, &[]).unwrap();
    assert!(!tx.flush(), "one ring per arming");
    assert_eq!(rx_bell.drain().unwrap(), 1, "exactly one byte");
    rx.note_wakeup();
    assert_eq!(rx.drain(usize::MAX, |_| {}), Ok(2));
    assert_eq!(rx.header().consumer.wakeups.load(Ordering::Relaxed), 1);

    // Max depth grows with the backlog; full events are counted.
    while tx.try_push(FlowId(5), Kind::Data, 0, &[0; 100]).is_ok() {}
    assert_eq!(pc(|c| &c.full_events), 1);
    assert!(pc(|c| &c.max_depth) > 512);
    assert_eq!(rx.header().consumer.corrupt.load(Ordering::Relaxed), 0);
}

fn tx_header(mem: &HeapMemory) -> &RingHeader {
    header_at(mem, 0).unwrap()
}

/// The producer's pretouch after each publish (zeroes at the line starts past `tail`) writes
/// only free space: with the consumer lagging by up to a whole ring, at every start offset and
/// for small and large frames, every frame arrives intact and in order.
#[test]
fn pretouch_never_touches_unconsumed_frames() {
    for start in (0..CAP).step_by(8) {
        for size in [1usize, 8, 40, 64, 100, MAXP as usize] {
            let (_mem, mut tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start * 3 + CAP);
            let (mut sent, mut got) = (0u64, 0u64);
            for round in 0..40u64 {
                // Fill until full, flushing after each frame (each flush pretouches).
                while tx.try_push(FlowId(sent), Kind::Data, 0, &pattern(sent, size)).is_ok() {
                    tx.flush();
                    sent += 1;
                }
                // Consume only part of it (every other round: one frame), so the producer's
                // next pretouch runs right behind unconsumed frames.
                let keep = if round % 2 == 0 { 1 } else { usize::MAX };
                let n = rx
                    .drain(keep, |f| {
                        assert_eq!(f.flowid.0, got, "order (start {start}, size {size})");
                        assert_eq!(f.payload, &pattern(got, size)[..], "frame {got} intact");
                        got += 1;
                    })
                    .unwrap();
                assert!(n > 0, "progress");
            }
            assert!(got >= 40 && sent * frame_size(size) as u64 > 4 * CAP, "wrapped while lagging");
        }
    }
}
