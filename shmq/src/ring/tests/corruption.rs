//! Frames an honest producer never writes (unknown or misdirected kinds, impossible lengths,
//! bad padding): each is `Corrupt` at its position, never a panic or a read out of bounds.

use super::*;

#[test]
fn corrupt_unknown_kind() {
    for kind in [0u16, 12, 0xffff] {
        let (mem, _tx, mut rx) = ring(Direction::ToMd);
        poke(&mem, 0, 0, kind, 0);
        assert_corrupt(&mut rx, 0, Corruption::Kind(kind));
    }
}

#[test]
fn corrupt_kind_wrong_for_direction() {
    for (dir, kind) in [
        (Direction::ToMd, Kind::Pause),
        (Direction::ToMd, Kind::Hello),
        (Direction::ToMd, Kind::Broadcast),
        (Direction::ToIo, Kind::Open),
        (Direction::ToIo, Kind::Drained),
        (Direction::ToIo, Kind::Eof),
    ] {
        let (mem, _tx, mut rx) = ring(dir);
        poke(&mem, 0, 0, kind as u16, 0);
        assert_corrupt(&mut rx, 0, Corruption::Kind(kind as u16));
    }
}

#[test]
fn corrupt_len_above_max_payload() {
    for len in [MAXP as u32 + 1, u32::MAX] {
        let (mem, _tx, mut rx) = ring(Direction::ToMd);
        poke(&mem, 0, len, Kind::Data as u16, 0);
        assert_corrupt(&mut rx, 0, Corruption::Length(len));
    }
}

/// After a padding record, a frame that reaches more than a ring past `head` (no honest
/// producer reserves that: the padding and the frame are reserved together).
#[test]
fn corrupt_frame_further_than_a_ring_from_head() {
    let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, 24);
    poke(&mem, 24, (CAP - 24 - 24) as u32, Kind::Pad as u16, 0); // reaches the end
    poke(&mem, CAP, MAXP as u32, Kind::Data as u16, 0); // 232 + 128 > 256
    assert_corrupt(&mut rx, CAP, Corruption::Length(MAXP as u32));
}

#[test]
fn corrupt_frame_past_ring_end() {
    let start = CAP - 32;
    let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
    poke(&mem, start, 40, Kind::Data as u16, 0); // 64 bytes in a 32-byte rem
    assert_corrupt(&mut rx, start, Corruption::Length(40));
}

#[test]
fn corrupt_pad_length() {
    // rem is 32, so the only valid padding length is 8.
    for len in [0u32, 16, 24, 32, u32::MAX] {
        let start = CAP - 32;
        let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
        poke(&mem, start, len, Kind::Pad as u16, 0);
        assert_corrupt(&mut rx, start, Corruption::Pad(len));
    }
    // Padding in the middle of the ring (it must reach the end).
    let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, 64);
    poke(&mem, 64, 16, Kind::Pad as u16, 0);
    assert_corrupt(&mut rx, 64, Corruption::Pad(16));
    // Padding over a whole lap, at its start: no frame needs it.
    let (mem, _tx, mut rx) = ring(Direction::ToMd);
    poke(&mem, 0, CAP as u32 - 24, Kind::Pad as u16, 0);
    assert_corrupt(&mut rx, 0, Corruption::Pad(CAP as u32 - 24));
    // Correct padding with nothing stamped after it yet: consumed, the ring is empty.
    let start = CAP - 32;
    let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
    poke(&mem, start, 8, Kind::Pad as u16, 0);
    assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
    assert_eq!((rx.head, rx.corruption()), (CAP, None));
}

#[test]
fn corrupt_fixed_length_kinds() {
    for (dir, kind, len) in [
        (Direction::ToMd, Kind::Eof, 1u32),
        (Direction::ToMd, Kind::Close, 8),
        (Direction::ToMd, Kind::Drained, 0),
        (Direction::ToMd, Kind::Drained, 16),
        (Direction::ToIo, Kind::Pause, 1),
        (Direction::ToIo, Kind::Resume, 2),
        (Direction::ToIo, Kind::Hello, Hello::SIZE as u32 - 8),
    ] {
        let (mem, _tx, mut rx) = ring(dir);
        poke(&mem, 0, len, kind as u16, 0);
        assert_corrupt(&mut rx, 0, Corruption::KindLength { kind: kind as u16, len });
    }
}

/// The consumer reads `tail` only before it sleeps: a published tail past its position with no
/// stamp there (a trampled ring), impossible or unaligned, is `Corrupt` instead of a sleep in
/// front of a frame that will never be stamped. A tail behind it is fine (it may be ahead of the
/// last flush).
#[test]
fn corrupt_positions_found_before_sleeping() {
    let start = 64;
    let cases: [(u64, &str); 5] = [
        (start + 32, "tail ahead, nothing stamped"),
        (start + CAP + 8, "tail more than capacity ahead"),
        (start + 20, "unaligned tail"),
        (start + 8, "tail inside a frame header"),
        (!7u64, "tail absurdly far"),
    ];
    let (rx_bell, _tx_bell) = pipe_bells();
    for (tail, why) in cases {
        let (_mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
        set_tail(&rx, tail);
        assert!(!rx.prepare_sleep(&rx_bell), "{why}: must not sleep");
        let what = Corruption::Positions { head: start, tail };
        assert_corrupt(&mut rx, start, what);
    }
    for tail in [start - 8, start, 0] {
        let (_mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
        set_tail(&rx, tail);
        assert!(rx.prepare_sleep(&rx_bell), "tail {tail} behind or at the consumer");
        assert_eq!(rx.corruption(), None);
        rx.header().armed.0.store(0, Ordering::Relaxed);
    }
    // A stamped frame there: data, not corruption.
    let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
    poke(&mem, start, 0, Kind::Eof as u16, 0);
    set_tail(&rx, start + 24);
    assert!(!rx.prepare_sleep(&rx_bell));
    assert_eq!(rx.corruption(), None);
}

#[test]
fn corruption_after_valid_frames_does_not_lose_them() {
    let (mem, mut tx, mut rx) = ring(Direction::ToMd);
    for i in 0..3u64 {
        tx.try_push(FlowId(i), Kind::Data, 0, b"abc").unwrap();
    }
    tx.flush();
    poke(&mem, 96, 0, 77, 0);
    let mut seen = vec![];
    let r = rx.drain(usize::MAX, |f| seen.push(f.flowid.0));
    assert_eq!(seen, [0, 1, 2]);
    assert_eq!(r, Err(RingError::Corrupt { at: 96, what: Corruption::Kind(77) }));
    assert_eq!(shared_head(&rx), 96, "drain published the frames it handled");
    assert_eq!(rx.header().consumer.frames.load(Ordering::Relaxed), 3);
    assert_corrupt(&mut rx, 96, Corruption::Kind(77));
}

#[test]
fn producer_sees_corrupt_head() {
    // Ahead of what the producer committed.
    let (_m, mut tx, rx) = ring(Direction::ToMd);
    while tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]).is_ok() {}
    let committed = tx.tail;
    rx.header().head.0.store(committed + 8, Ordering::Release);
    assert_eq!(tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]), Err(PushError::Corrupt));
    assert_eq!(tx.reserve(8).err(), Some(PushError::Corrupt));
    // Behind what the producer already saw (e.g. after a reset it has not noticed).
    let (_m, mut tx, mut rx) = ring(Direction::ToMd);
    while tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]).is_ok() {}
    rx.drain(2, |_| {}).unwrap();
    assert!(tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]).is_ok(), "cached head = 64");
    while tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]).is_ok() {}
    rx.header().head.0.store(24, Ordering::Release);
    assert_eq!(tx.try_push(FlowId(0), Kind::Data, 0, &[0; 8]), Err(PushError::Corrupt));
    assert!(!tx.has_room(8), "has_room ignores an impossible head");
}
