//! Commit stamps (layout 3): when a frame becomes visible, stale laps and client bytes that look
//! like a stamp, and a producer attaching after frames it did not flush.

use super::*;

/// A frame is visible from its commit to a consumer that has caught up with the last flush (the
/// round-trip case); once the consumer took a frame of a batch not flushed yet, the rest of that
/// batch becomes visible at its flush (which also rings a sleeping consumer).
#[test]
fn frames_are_visible_at_commit_when_caught_up_and_the_rest_of_a_batch_at_its_flush() {
    let (_m, mut tx, mut rx) = ring(Direction::ToMd);
    tx.try_push(FlowId(1), Kind::Data, 0, b"one").unwrap();
    let mut r = tx.reserve(10).unwrap();
    r.buf()[..3].copy_from_slice(b"two");
    assert!(rx.has_data(), "visible at commit");
    assert_eq!(rx.drain(10, |f| assert_eq!(f.payload, b"one")), Ok(1), "reserved, not committed");
    r.commit(3, FlowId(2), Kind::Data, 0).unwrap();
    assert_eq!(shared_tail(&rx), 0, "nothing flushed");
    assert_eq!(shared_head(&rx), 32, "the consumer is ahead of the flushed tail");
    assert!(!rx.has_data(), "the rest of the batch waits for its flush");
    assert_eq!(rx.drain(10, |_| {}), Ok(0));
    let (bell, _w) = pipe_bells();
    assert!(rx.prepare_sleep(&bell), "and the consumer may sleep: the flush rings it");
    assert!(tx.flush(), "rung");
    assert_eq!(shared_tail(&rx), 64);
    assert_eq!(rx.drain(10, |f| assert_eq!(f.payload, b"two")), Ok(1));
    // Caught up again: the next frame is visible at its commit.
    tx.try_push(FlowId(3), Kind::Data, 0, b"three").unwrap();
    assert_eq!(rx.drain(10, |f| assert_eq!(f.payload, b"three")), Ok(1));
}

/// A producer that died (or is dropped) after stamping a batch it never flushed: once told
/// (`producer_gone`), the consumer takes every stamped frame of it, in order, and stops at the
/// first position not stamped (a frame reserved and never committed), without any corruption.
#[test]
fn a_gone_producers_stamped_unflushed_frames_are_taken_after_producer_gone() {
    let (_m, mut tx, mut rx) = ring(Direction::ToMd);
    tx.try_push(FlowId(1), Kind::Data, 0, b"one").unwrap();
    assert_eq!(rx.drain(10, |_| {}), Ok(1), "the first of the batch, at its commit");
    // (Two frames: with the first, under half of the test ring, which a producer flushes itself.)
    for (id, p) in [(2, &b"two"[..]), (3, b"three")] {
        tx.try_push(FlowId(id), Kind::Data, 0, p).unwrap();
    }
    let mut r = tx.reserve(10).unwrap(); // being written when it died: never stamped
    r.buf()[..4].copy_from_slice(b"half");
    assert_eq!(shared_tail(&rx), 0, "nothing flushed");
    assert_eq!(rx.drain(10, |_| {}), Ok(0), "a live producer's batch waits for its flush");
    rx.producer_gone();
    let mut seen = vec![];
    assert_eq!(rx.drain(10, |f| seen.push((f.flowid.0, f.payload.to_vec()))), Ok(2));
    assert_eq!(seen, [(2, b"two".to_vec()), (3, b"three".to_vec())]);
    assert!(!rx.has_data(), "the reserved frame is not taken");
    assert_eq!(rx.corruption(), None);
}

/// A stamp left from an earlier lap (the right offset, an older position) is not a frame: the
/// consumer takes only `position + 1`.
#[test]
fn stale_stamp_from_an_earlier_lap_is_not_taken() {
    let start = 2 * CAP + 64;
    let (mem, _tx, mut rx) = ring_at(CAP, MAXP, Direction::ToMd, start);
    for old in [start - CAP, start - 2 * CAP, start + CAP] {
        poke(&mem, old, 3, Kind::Data as u16, 7); // header of another lap at our offset
        assert!(!rx.has_data(), "stamp of position {old}");
        assert_eq!(rx.peek().unwrap().map(|f| f.kind), None);
        assert_eq!(rx.corruption(), None);
    }
    poke(&mem, start, 3, Kind::Data as u16, 7);
    assert_eq!(rx.peek().unwrap().map(|f| f.flowid), Some(FlowId(7)), "ours is taken");
}

/// Clear-ahead: client payload bytes of an earlier lap that hold exactly the stamp (and a
/// plausible header) expected at the next header position are not taken for a frame, because
/// the producer zeroed that word before it stamped the frame in front of it. Without
/// clear-ahead this test reads a forged frame (flowid 666).
#[test]
fn client_bytes_equal_to_the_next_stamp_are_not_taken() {
    let (mem, mut tx, mut rx) = ring(Direction::ToMd);
    // Lap 0: one frame whose payload covers offset 72..96, where lap 1's second header goes
    // (not a line start, so the producer's pretouch of line starts cannot clear it instead).
    let next = CAP + 72; // lap 1: a 72-byte frame at CAP, then the position the forger aims at
    let mut forged = vec![0u8; MAXP as usize];
    let at = 72 - HEADER_SIZE; // payload offset of data offset 72
    forged[at..at + 8].copy_from_slice(&(next + 1).to_le_bytes());
    forged[at + 8..at + 12].copy_from_slice(&0u32.to_le_bytes()); // len 0
    forged[at + 12..at + 14].copy_from_slice(&(Kind::Data as u16).to_le_bytes());
    forged[at + 16..at + 24].copy_from_slice(&666u64.to_le_bytes());
    tx.try_push(FlowId(1), Kind::Data, 0, &forged).unwrap(); // 0..128
    assert_eq!(rx.drain(10, |_| {}), Ok(1));
    tx.try_push(FlowId(2), Kind::Data, 0, &[0; 104]).unwrap(); // 128..256
    assert_eq!(rx.drain(10, |_| {}), Ok(1));
    assert_eq!(peek_word(&mem, 72), next + 1, "the forged stamp is in place");
    // Lap 1: a 72-byte frame at CAP ends exactly at `next`; flushed, so the consumer, caught up,
    // polls the stamp at `next` at once.
    tx.try_push(FlowId(3), Kind::Data, 0, &[3; 48]).unwrap();
    tx.flush();
    assert_eq!(tx.tail, next);
    let mut seen = vec![];
    rx.drain(10, |f| seen.push(f.flowid.0)).unwrap();
    assert_eq!(seen, [3], "no forged frame after the real one");
    assert!(!rx.has_data());
    assert_eq!(rx.corruption(), None);
}

/// A producer that attaches after a predecessor stamped frames without flushing them continues
/// after those frames: nothing is lost or overwritten, and the consumer sees everything in order.
#[test]
fn producer_reattach_after_stamping_without_flush_continues_after_the_stamped_frames() {
    for consumed in [0usize, 2, 3] {
        let (mem, mut tx, mut rx) = ring(Direction::ToMd);
        tx.try_push(FlowId(1), Kind::Data, 0, b"flushed").unwrap();
        tx.flush();
        for i in 2..=3u64 {
            tx.try_push(FlowId(i), Kind::Data, 0, &[i as u8; 20]).unwrap();
        }
        let end = tx.tail;
        drop(tx); // dies without a flush: the shared tail covers frame 1 only
        assert_eq!(shared_tail(&rx), 32);
        // The consumer may already have taken some of them (and published its head past the
        // flushed tail).
        let mut seen = vec![];
        rx.drain(consumed, |f| seen.push(f.flowid.0)).unwrap();
        let mut tx = Producer::attach(mem.clone(), 0, None).expect("re-attach");
        assert_eq!(tx.tail, end, "continues after the stamped frames ({consumed} consumed)");
        tx.try_push(FlowId(4), Kind::Data, 0, b"after").unwrap();
        tx.flush();
        rx.drain(10, |f| seen.push(f.flowid.0)).unwrap();
        assert_eq!(seen, [1, 2, 3, 4], "order kept, nothing lost ({consumed} consumed)");
    }
}

/// The walk stops at a stamp that is not the next position's, and refuses an impossible
/// stamped header rather than continuing after it.
#[test]
fn producer_attach_walk_is_bounded_and_validated() {
    let (mem, _tx, _rx) = ring(Direction::ToMd);
    poke(&mem, 0, MAXP as u32 + 1, Kind::Data as u16, 0);
    assert_eq!(Producer::attach(mem.clone(), 0, None).err(), Some(RingAttachError::BadGeometry));
    poke(&mem, 0, 0, Kind::Pause as u16, 0); // not a kind of this direction
    assert_eq!(Producer::attach(mem.clone(), 0, None).err(), Some(RingAttachError::BadGeometry));
    poke(&mem, 0, CAP as u32 - 24, Kind::Pad as u16, 0); // padding at the start of a lap
    assert_eq!(Producer::attach(mem.clone(), 0, None).err(), Some(RingAttachError::BadGeometry));
    poke_word(&mem, 0, CAP + 1); // another lap's stamp: nothing to walk
    assert_eq!(Producer::attach(mem.clone(), 0, None).unwrap().tail, 0);
}

#[test]
fn attach_refuses_layout_2() {
    let mem = HeapMemory::new_ring(CAP, MAXP, Direction::ToMd);
    // SAFETY: test: the header is ours; nothing else uses the ring; `layout_version` is a plain
    // u32 field written once by `init`.
    unsafe { (*mem.as_ptr().cast::<RingHeader>()).layout_version = 2 };
    let mem = Arc::new(mem);
    let want = Some(RingAttachError::VersionMismatch { found: 2, expected: 3 });
    assert_eq!(LAYOUT_VERSION, 3);
    assert_eq!(Consumer::attach(mem.clone(), 0).err(), want);
    assert_eq!(Producer::attach(mem, 0, None).err(), want);
}

/// The reset zeroes the stamp word at the new generation's base, so bytes left there (here a
/// forged `base + 1`) are not a frame, and a producer attaching does not walk past them.
#[test]
fn reset_zeroes_the_base_stamp_word() {
    let (mem, mut tx, _rx) = ring(Direction::ToMd);
    tx.try_push(FlowId(1), Kind::Data, 0, b"old").unwrap();
    tx.flush();
    let base = generation_base(0, 32, CAP);
    poke(&mem, base, 0, Kind::Data as u16, 666); // what a forger would need
    reset(&*mem, 0, 2).unwrap();
    assert_eq!(peek_word(&mem, 0), 0);
    let mut rx = Consumer::attach(mem.clone(), 0).unwrap();
    let tx = Producer::attach(mem.clone(), 0, None).unwrap();
    assert_eq!(tx.tail, base);
    assert_eq!(rx.peek().unwrap().map(|f| f.flowid), None);
}
