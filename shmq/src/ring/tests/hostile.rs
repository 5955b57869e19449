//! A hostile peer moving the shared positions (issue 14, findings 3 and 7): every impossible
//! position is `Corrupt`, never a panic or a read past the published tail, and a handle left over
//! from an older generation never writes its position into a newer one.

use proptest::prelude::*;

use super::*;

/// The peer's positions as a hostile process could write them, straight into the header.
fn hdr(mem: &HeapMemory) -> &RingHeader {
    header_at(mem, 0).unwrap()
}

/// Issue 14 finding 3 under commit stamps: the consumer takes frames by their stamps and uses
/// `tail` only as a hint (is the last flush at or past us?), so a tail moved backwards (behind a
/// padding record the consumer stands past, or mid-batch) cannot make it read anything but
/// stamped frames and cannot underflow anything: at worst it hides frames until the next flush.
/// Before sleeping, a tail behind the consumer is not an error (it may be ahead of the last
/// flush).
#[test]
fn tail_moved_backwards_is_never_used_for_data() {
    let start = CAP - 64;
    let (mem, mut tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
    tx.try_push(FlowId(1), Kind::Data, 0, b"a").unwrap(); // 32 bytes: CAP-64 .. CAP-32
    tx.flush();
    poke(&mem, CAP - 32, 8, Kind::Pad as u16, 0); // reaches exactly CAP
    set_tail(&rx, CAP);
    assert_eq!(rx.peek().unwrap().unwrap().payload, b"a");
    rx.release();
    set_tail(&rx, CAP - 24); // behind the padding the consumer is about to step over
    assert_eq!(rx.peek().unwrap().map(|f| f.kind), None, "padding consumed, nothing stamped");
    assert_eq!(shared_head(&rx), CAP);
    let (bell, _w) = pipe_bells();
    assert!(rx.prepare_sleep(&bell), "a tail behind the consumer is not corruption");
    assert_eq!(rx.corruption(), None);

    let (mem, mut tx, mut rx) = ring(Direction::ToMd);
    for i in 0..3u64 {
        tx.try_push(FlowId(i), Kind::Data, 0, b"abc").unwrap();
    }
    tx.flush();
    let h = hdr(&mem);
    let mut seen = vec![];
    let r = rx.drain(usize::MAX, |f| {
        seen.push(f.flowid.0);
        h.tail.0.store(24, Ordering::Release); // back to inside the first frame
    });
    // The consumer reloads `tail` only once it passes its cached value: a tail moved back then
    // hides the rest (a hint that says "mid-batch, wait for the flush"), never exposes more.
    assert_eq!((&seen[..], r), (&[0][..], Ok(1)));
    assert_eq!(rx.corruption(), None);
    h.tail.0.store(96, Ordering::Release); // the producer's next flush
    rx.drain(usize::MAX, |f| seen.push(f.flowid.0)).unwrap();
    assert_eq!(seen, [0, 1, 2], "every stamped frame, in order, nothing else");
    assert!(!rx.has_data());
}

#[test]
fn producer_rejects_head_moved_past_tail() {
    for head in [8 * CAP, !7u64, 16 * CAP + 8] {
        let (mem, mut tx, _rx) = ring(Direction::ToMd);
        // Committed but unpublished frames, then the ring fills (which flushes).
        tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]).unwrap();
        while tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]).is_ok() {}
        hdr(&mem).head.0.store(head, Ordering::Release);
        assert_eq!(tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]), Err(PushError::Corrupt));
        assert_eq!(tx.reserve(8).err(), Some(PushError::Corrupt));
        assert!(!tx.has_room(8), "an impossible head frees nothing");
        assert!(tx.depth() <= CAP);
        tx.flush();
    }
}

/// Regression for the `ring` fuzz target's crash (fuzz/crashes/ring): a hostile `head` (and
/// `tail`) near 2^64 made the consumer's implicit-wrap step overflow. Positions past 2^63 are
/// refused at attach, by both sides.
#[test]
fn attach_rejects_positions_near_overflow() {
    let mem = Arc::new(HeapMemory::new_ring(CAP, MAXP, Direction::ToMd));
    for top in [u64::MAX - 7, u64::MAX - 15, ((u64::MAX / 2) + 1) & !7] {
        hdr(&mem).tail.0.store(top, Ordering::Relaxed);
        hdr(&mem).head.0.store(top, Ordering::Relaxed);
        assert_eq!(Consumer::attach(mem.clone(), 0).err(), Some(RingAttachError::BadGeometry));
        assert_eq!(
            Producer::attach(mem.clone(), 0, None).err(),
            Some(RingAttachError::BadGeometry)
        );
    }
    let ok = producer::POSITION_MAX & !7;
    hdr(&mem).tail.0.store(ok, Ordering::Relaxed);
    hdr(&mem).head.0.store(ok, Ordering::Relaxed);
    let mut rx = Consumer::attach(mem.clone(), 0).expect("the largest position attaches");
    let mut tx = Producer::attach(mem.clone(), 0, None).expect("the largest position attaches");
    tx.try_push(FlowId(1), Kind::Data, 0, b"far").unwrap();
    assert_eq!(rx.peek().unwrap().map(|f| f.payload), Some(&b"far"[..]));
}

#[test]
fn attach_rejects_unaligned_positions() {
    let mem = Arc::new(HeapMemory::new_ring(CAP, MAXP, Direction::ToMd));
    hdr(&mem).tail.0.store(20, Ordering::Relaxed);
    assert_eq!(Consumer::attach(mem.clone(), 0).err(), Some(RingAttachError::BadGeometry));
    hdr(&mem).tail.0.store(24, Ordering::Relaxed);
    hdr(&mem).head.0.store(12, Ordering::Relaxed);
    assert_eq!(Producer::attach(mem.clone(), 0, None).err(), Some(RingAttachError::BadGeometry));
}

/// Issue 14 finding 7: the pair is reset while its md lives. md's stale consumer drains (and
/// fails on the moved positions), publishes, finds the ring empty; its stale producer flushes.
/// None of that may reach the new generation: a fresh attach of both sides works.
#[test]
fn stale_handles_never_write_into_a_new_generation() {
    let (mem, mut tx, mut rx) = ring(Direction::ToMd);
    for i in 0..3u64 {
        tx.try_push(FlowId(i), Kind::Data, 0, b"old").unwrap();
    }
    tx.flush();
    rx.peek().unwrap().unwrap();
    rx.release(); // 32 bytes consumed, below the publish cadence (64): not published yet
    assert_eq!(shared_head(&rx), 0);
    reset(&*mem, 0, 2).unwrap();
    let base = generation_base(0, 96, CAP);
    assert_eq!((shared_head(&rx), shared_tail(&rx)), (base, base), "the new generation's base");
    assert!(!rx.is_current() && !tx.is_current());

    // The stale consumer: the drain's error path, an explicit publish, an empty peek.
    let _ = rx.drain(usize::MAX, |_| {});
    rx.publish();
    let _ = rx.peek();
    let _ = rx.has_data();
    // The stale producer: pushes and flushes (and a full ring flushes too).
    let _ = tx.try_push(FlowId(9), Kind::Data, 0, b"stale");
    tx.flush();
    while tx.try_push(FlowId(9), Kind::Data, 0, &[0; 8]).is_ok() {}
    assert_eq!(
        (shared_head(&rx), shared_tail(&rx)),
        (base, base),
        "nothing written into generation 2"
    );

    let mut tx2 = Producer::attach(mem.clone(), 0, None).expect("fresh producer attaches");
    let mut rx2 = Consumer::attach(mem.clone(), 0).expect("fresh consumer attaches");
    assert_eq!((tx2.generation(), rx2.generation()), (2, 2));
    // The stale producer's frames (stamped with old positions) are not frames of generation 2.
    assert_eq!(rx2.peek().unwrap().map(|f| f.kind), None, "no stale stamp taken");
    assert_eq!(tx2.tail, base, "the walk found nothing stamped at the base");
    tx2.try_push(FlowId(2), Kind::Data, 0, b"new").unwrap();
    tx2.flush();
    assert_eq!(rx2.drain(usize::MAX, |f| assert_eq!(f.payload, b"new")), Ok(1));
}

/// A stale position that lands anyway (the stale side read the old generation just before the
/// reset and stored just after it) is caught by the attach, never trusted.
#[test]
fn attach_after_reset_refuses_a_stale_position() {
    let (mem, _tx, _rx) = ring(Direction::ToMd);
    reset(&*mem, 0, 2).unwrap();
    hdr(&mem).head.0.store(72, Ordering::Release);
    assert_eq!(Consumer::attach(mem.clone(), 0).err(), Some(RingAttachError::BadGeometry));
    assert_eq!(Producer::attach(mem.clone(), 0, None).err(), Some(RingAttachError::BadGeometry));
    reset(&*mem, 0, 3).unwrap();
    assert!(Consumer::attach(mem.clone(), 0).is_ok() && Producer::attach(mem, 0, None).is_ok());
}

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    Flush,
    Peek,
    Release,
    Drain(usize),
    Publish,
    HasData,
    /// Hostile: tail moved by `8 * delta` from its shared value.
    TailBy(i64),
    /// Hostile: tail set to any value.
    TailTo(u64),
    /// Hostile: head moved by `8 * delta`.
    HeadBy(i64),
    /// Hostile: head set to any value.
    HeadTo(u64),
    /// Hostile: a stamp (right for its position, or off by `8 * delta`) with arbitrary header
    /// fields at `8 * slot` bytes past the consumer's position.
    Forge {
        slot: u64,
        delta: i64,
        len: u32,
        kind: u16,
    },
    /// The consumer gets ready to sleep (and reads `tail`).
    Sleep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..=MAXP as usize).prop_map(Op::Push),
        3 => Just(Op::Flush),
        4 => Just(Op::Peek),
        3 => Just(Op::Release),
        2 => (0usize..5).prop_map(Op::Drain),
        1 => Just(Op::Publish),
        1 => Just(Op::HasData),
        3 => (-12i64..4).prop_map(Op::TailBy),
        1 => (-80i64..80).prop_map(Op::TailBy),
        1 => any::<u64>().prop_map(Op::TailTo),
        1 => (-80i64..80).prop_map(Op::HeadBy),
        1 => any::<u64>().prop_map(Op::HeadTo),
        2 => (0u64..40, prop_oneof![3 => Just(0i64), 1 => -40i64..40], 0u32..2 * MAXP as u32, 0u16..13)
            .prop_map(|(slot, delta, len, kind)| Op::Forge { slot, delta, len, kind }),
        1 => Just(Op::Sleep),
    ]
}

/// What a peeked frame must satisfy: it starts at or past `head`, ends at most a capacity past
/// it, lies inside one lap of the data area, and its payload is where its position says.
fn check_frame(mem: &HeapMemory, rx: &Consumer, (ptr, len): (usize, usize)) {
    let size = frame_size(len) as u64;
    let end = rx.head + rx.pending;
    assert!(rx.pending >= size && rx.pending <= CAP, "pending covers the frame, within a ring");
    let start = end - size;
    let off = (start & (CAP - 1)) as usize;
    assert!(off as u64 + size <= CAP, "frame past the end of the data area");
    let data = mem.as_ptr().wrapping_add(RING_HEADER_SIZE + off + HEADER_SIZE);
    assert_eq!(ptr, data as usize, "payload where its position says");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Hostile position writes between operations: no panic, every frame inside the published
    /// region, consumer errors `Corrupt`, producer errors `Full` or `Corrupt`.
    #[test]
    fn hostile_positions_between_operations(
        start in (0u64..4 * CAP / 8).prop_map(|s| s * 8),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let (mem, mut tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
        let h = hdr(&mem);
        let (bell, _w) = pipe_bells();
        let by = |v: u64, d: i64| v.wrapping_add_signed(d * 8);
        for op in ops {
            match op {
                Op::Push(len) => match tx.try_push(FlowId(len as u64), Kind::Data, 0, &pattern(1, len)) {
                    Ok(()) | Err(PushError::Full | PushError::Corrupt) => {}
                    Err(e) => panic!("unexpected push error {e:?}"),
                },
                Op::Flush => {
                    tx.flush();
                }
                Op::Peek => {
                    let got = rx.peek().ok().flatten().map(|f| (f.payload.as_ptr() as usize, f.payload.len()));
                    if let Some(got) = got {
                        check_frame(&mem, &rx, got);
                    }
                }
                Op::Release => rx.release(),
                Op::Drain(n) => {
                    let base = mem.as_ptr() as usize + RING_HEADER_SIZE;
                    let r = rx.drain(n, |f| {
                        let p = f.payload.as_ptr() as usize;
                        assert!(p >= base + HEADER_SIZE && p + f.payload.len() <= base + CAP as usize);
                    });
                    assert!(matches!(r, Ok(_) | Err(RingError::Corrupt { .. })));
                }
                Op::Publish => rx.publish(),
                Op::HasData => {
                    let _ = rx.has_data();
                }
                Op::TailBy(d) => h.tail.0.store(by(h.tail.0.load(Ordering::Relaxed), d), Ordering::Release),
                Op::TailTo(v) => h.tail.0.store(v, Ordering::Release),
                Op::HeadBy(d) => h.head.0.store(by(h.head.0.load(Ordering::Relaxed), d), Ordering::Release),
                Op::HeadTo(v) => h.head.0.store(v, Ordering::Release),
                Op::Forge { slot, delta, len, kind } => {
                    let pos = rx.head.wrapping_add(8 * slot);
                    let off = (pos & (CAP - 1)) as usize;
                    if off + HEADER_SIZE <= CAP as usize {
                        poke_meta(&mem, off, len, kind, 0);
                        poke_word(&mem, off, by(pos, delta).wrapping_add(1));
                    }
                }
                Op::Sleep => {
                    if rx.prepare_sleep(&bell) {
                        h.armed.0.store(0, Ordering::Relaxed);
                    }
                }
            }
            let _ = tx.depth();
        }
    }
}

/// Issue 14 finding 7, the residual window: a stale side passed its generation check just before
/// the reset and stores just after it. Replayed deterministically: the reset happens, then the
/// header shows the old generation again for the moment of the stale check (as the stale side saw
/// it), then the stale side publishes. Its compare-and-swap expects its old position, which is
/// gone: nothing lands, and a fresh attach of both sides works (before the fix, the stale `head`
/// landed and every later attach failed with `BadGeometry`).
#[test]
fn stale_publish_that_passed_the_generation_check_never_lands() {
    let (mem, mut tx, mut rx) = ring(Direction::ToMd);
    for i in 0..3u64 {
        tx.try_push(FlowId(i), Kind::Data, 0, b"old").unwrap();
    }
    tx.flush();
    rx.peek().unwrap().unwrap();
    rx.release(); // 32 bytes consumed, below the publish cadence (64): not published yet
    let _ = tx.try_push(FlowId(9), Kind::Data, 0, b"late"); // committed, not flushed
    reset(&*mem, 0, 2).unwrap();
    let base = generation_base(0, 96, CAP);
    // The window: the stale sides' generation checks see generation 1.
    hdr(&mem).generation.store(1, Ordering::Relaxed);
    rx.publish();
    tx.flush();
    hdr(&mem).generation.store(2, Ordering::Relaxed);
    assert_eq!((shared_head(&rx), shared_tail(&rx)), (base, base), "a stale position landed");
    // Both stale handles stay quiet from now on, whatever the generation says.
    rx.publish();
    assert!(!tx.flush());
    let mut tx2 = Producer::attach(mem.clone(), 0, None).expect("fresh producer attaches");
    let mut rx2 = Consumer::attach(mem.clone(), 0).expect("fresh consumer attaches");
    tx2.try_push(FlowId(2), Kind::Data, 0, b"new").unwrap();
    tx2.flush();
    assert_eq!(rx2.drain(usize::MAX, |f| assert_eq!(f.payload, b"new")), Ok(1));
}

/// A hostile process rewrites a side's own position under its generation: the side's next
/// publish finds the word changed and reports the ring corrupt (consumer: `Corrupt`; producer:
/// its next reserve is `Corrupt`), instead of trusting or overwriting it.
#[test]
fn own_position_rewritten_by_a_peer_is_corrupt() {
    let (mem, mut tx, mut rx) = ring(Direction::ToMd);
    tx.try_push(FlowId(1), Kind::Data, 0, b"abc").unwrap();
    tx.flush();
    hdr(&mem).tail.0.store(8, Ordering::Release); // hostile: our tail moved
    tx.try_push(FlowId(2), Kind::Data, 0, b"def").unwrap();
    assert!(!tx.flush(), "a lost tail word is not published over");
    assert_eq!(tx.reserve(3).err(), Some(PushError::Corrupt));

    let (mem, mut tx, mut rx2) = ring(Direction::ToMd);
    tx.try_push(FlowId(1), Kind::Data, 0, b"abc").unwrap();
    tx.flush();
    assert_eq!(rx2.drain(usize::MAX, |_| {}), Ok(1));
    hdr(&mem).head.0.store(0, Ordering::Release); // hostile: our head moved back
    tx.try_push(FlowId(2), Kind::Data, 0, b"def").unwrap();
    tx.flush();
    assert_eq!(rx2.drain(usize::MAX, |_| {}), Ok(1), "the frame is read; its publish fails");
    assert!(matches!(rx2.corruption(), Some(RingError::Corrupt { .. })));
    assert!(matches!(rx2.peek(), Err(RingError::Corrupt { .. })));
    let _ = rx.peek();
}

#[test]
fn generation_base_is_past_every_old_position() {
    for (h, t) in
        [(0, 0), (0, 72), (CAP - 8, CAP + 40), (5 * CAP, 5 * CAP), (1 << 40, (1 << 40) + 8)]
    {
        let b = generation_base(h, t, CAP);
        assert!(b >= t.max(h) + 3 * CAP, "{h} {t} -> {b}");
        assert!(b.is_multiple_of(CAP));
    }
    assert_eq!(generation_base(u64::MAX - 7, 0, CAP), 0, "hostile: restart at 0");
    assert_eq!(generation_base(0, 0, 1 << 63), 0, "damaged capacity: no overflow");
}

/// A producer left over from generation 1 that has not flushed since the reset (so it does not
/// know yet) writes a frame at its old position, which is the same offset as generation 2's
/// first frame: it overwrites that frame's stamp with its own (an old position + 1, which no
/// consumer of generation 2 takes). The new consumer does not stall in front of it forever: the
/// flushed `tail` of generation 2 is past it with no stamp there, which it reports as `Corrupt`
/// before it sleeps (and the pair is reset again).
#[test]
fn a_stale_producer_trampling_a_new_frame_is_found_before_sleeping() {
    let (mem, mut stale, _rx) = ring(Direction::ToMd);
    reset(&*mem, 0, 2).unwrap();
    let mut tx = Producer::attach(mem.clone(), 0, None).unwrap();
    let mut rx = Consumer::attach(mem.clone(), 0).unwrap();
    tx.try_push(FlowId(1), Kind::Data, 0, b"new").unwrap();
    tx.flush();
    stale.try_push(FlowId(9), Kind::Data, 0, b"old").unwrap(); // position 0: data offset 0
    assert_eq!(rx.peek().unwrap().map(|f| f.flowid), None, "the stale stamp is not taken");
    let (bell, _w) = pipe_bells();
    assert!(!rx.prepare_sleep(&bell), "no sleep in front of a trampled frame");
    let base = generation_base(0, 0, CAP);
    let what = Corruption::Positions { head: base, tail: base + 32 };
    assert_eq!(rx.corruption(), Some(RingError::Corrupt { at: base, what }));
    assert!(!stale.flush(), "the stale producer's publish fails");
    assert_eq!(stale.reserve(1).err(), Some(PushError::Corrupt), "and it writes no more");
}
