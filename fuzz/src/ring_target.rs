//! Fuzz target `ring`: a consumer reading a ring a hostile producer wrote (frame validation,
//! positions moved back, headers forged).

use super::*;

/// Fuzz target: a consumer reading a ring that a hostile producer writes.
///
/// Input: geometry (capacity 256 << (b % 5), max payload), then a script of one-byte opcodes
/// with operands: honest push (+ flush), write bytes into the data area, forge a stamped header
/// (its stamp right for its position or off by some steps), store `tail` (relative to the
/// consumer's published head or raw), store `head`, re-attach, peek(+release), drain, publish.
/// Frames are visible from their commit (layout 3: commit stamps) to a consumer caught up with
/// the last flush, the rest of a batch at its flush, so an honest run must read back every
/// committed frame in order, and every one once flushed.
pub fn ring(data: &[u8]) {
    let mut b = Bytes::new(data);
    let g = b.u8();
    let capacity = 256u64 << (g % 5);
    // frame_size(max_payload) <= capacity / 2 (a 24-byte header).
    let max_payload = (b.u16() as u64 % (capacity / 2 - 23)).max(1);
    let mem = Arc::new(HeapMemory::new_ring(capacity, max_payload, Direction::ToMd));
    let data_lo = mem.as_ptr() as usize + RING_HEADER_SIZE;
    let data_hi = data_lo + capacity as usize;
    let shared: Arc<dyn Memory> = mem.clone();
    let hdr = checked_header(&*shared, 0).expect("fresh ring");

    let mut tx = Producer::attach(shared.clone(), 0, None).expect("fresh ring");
    let mut rx = Some(Consumer::attach(shared.clone(), 0).expect("fresh ring"));
    // What an honest run must read back, in order (every committed frame).
    let mut expected: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut hostile = false;
    // The consumer was told the producer is gone (op 8 with 0x80): it takes every stamped frame.
    let mut gone = false;
    let mut seq = 0u64;

    let check = |payload: &[u8]| {
        let lo = payload.as_ptr() as usize;
        assert!(
            lo >= data_lo && lo + payload.len() <= data_hi,
            "payload {lo:#x}+{} outside the data area {data_lo:#x}..{data_hi:#x}",
            payload.len()
        );
    };

    let mut steps = 0;
    while !b.is_empty() && steps < 256 {
        steps += 1;
        let op = b.u8();
        match op % 9 {
            0 => {
                // Honest push (and flush when the high bit says so).
                let len = (b.u8() as u64 * 7 % (max_payload + 1)) as usize;
                seq += 1;
                let payload: Vec<u8> =
                    (0..len).map(|i| (seq as u8).wrapping_add(i as u8)).collect();
                match tx.try_push(FlowId::new(1, seq as u32), Kind::Data, 0, &payload) {
                    Ok(()) => expected.push_back(payload),
                    Err(PushError::Full) => {}
                    // A hostile head (op 5) is caught by the producer's own checks.
                    Err(PushError::Corrupt) => assert!(hostile, "honest ring called corrupt"),
                    Err(e) => panic!("{len} <= max_payload {max_payload} refused: {e:?}"),
                }
                if op & 0x80 != 0 {
                    tx.flush();
                }
            }
            1 => {
                tx.flush();
            }
            2 => {
                // Hostile: arbitrary bytes anywhere in the data area.
                let off = b.u16() as usize % capacity as usize;
                let n = b.u8() as usize % 64;
                let bytes = b.take(n);
                poke(&mem, RING_HEADER_SIZE + off, bytes);
                hostile = true;
            }
            3 => {
                // Hostile: a stamped frame header at an aligned position near the consumer's
                // (whose stamp is right for that position unless 0x80 says otherwise), so the
                // consumer really validates it.
                let head = rx.as_ref().map_or(0, |c| c.header().head.0.load(Ordering::Relaxed));
                let pos = (head & !7).wrapping_add(8 * (b.u16() as u64 % (capacity / 8)));
                let off = (pos % capacity) as usize;
                let len = b.u16() as u32 % (max_payload as u32 * 2 + 32);
                let kind = b.u8() as u16 % 16;
                let stamp = if op & 0x80 != 0 { b.u64() } else { pos.wrapping_add(1) };
                let mut h = [0u8; 24];
                h[..8].copy_from_slice(&stamp.to_le_bytes());
                h[8..12].copy_from_slice(&len.to_le_bytes());
                h[12..14].copy_from_slice(&kind.to_le_bytes());
                h[16..].copy_from_slice(&b.u64().to_le_bytes());
                let n = h.len().min(capacity as usize - off);
                poke(&mem, RING_HEADER_SIZE + off, &h[..n]);
                hostile = true;
            }
            4 => {
                // Hostile: move `tail`, near the published head, anywhere, or (0x40) back from
                // where it is by a few aligned steps: behind a padding record the consumer has
                // cached but not yet stepped over, which is what finding 3 of issue 14 needs (a
                // reloaded tail between the consumer's head and its position past the padding).
                let head = hdr.head.0.load(Ordering::Relaxed);
                let d = b.u16() as i16 as i64;
                let t = if op & 0x80 != 0 {
                    b.u64()
                } else if op & 0x40 != 0 {
                    let tail = hdr.tail.0.load(Ordering::Relaxed);
                    tail.wrapping_sub(8 * (d as u64 % 32))
                } else {
                    head.wrapping_add_signed(d)
                };
                // Release pairs with the consumer's Acquire load of `tail` (as a producer's).
                hdr.tail.0.store(t, Ordering::Release);
                hostile = true;
            }
            5 => {
                // Hostile: `head` changed under a consumer that re-attaches.
                let t = hdr.tail.0.load(Ordering::Relaxed);
                let d = b.u16() as i16 as i64;
                hdr.head.0.store(t.wrapping_add_signed(d), Ordering::Relaxed);
                hostile = true;
                rx = Consumer::attach(shared.clone(), 0).ok();
                gone = false;
            }
            6 => {
                if let Some(c) = rx.as_mut() {
                    let release = op & 0x80 == 0;
                    let mut recheck = false;
                    match c.peek() {
                        Ok(Some(f)) => {
                            check(f.payload);
                            if !hostile && release {
                                let want = expected.pop_front().expect("a frame nobody pushed");
                                assert_eq!(f.payload, &want[..], "honest frame changed");
                            }
                            if release {
                                c.release();
                            }
                        }
                        // A consumer told the producer is gone takes every committed frame,
                        // flushed or not.
                        Ok(None) if gone && !hostile => {
                            assert!(expected.is_empty(), "a gone producer's committed frame missed")
                        }
                        // A consumer that took frames of a batch not flushed yet sees the rest
                        // of it at its flush: flush, then it must see one.
                        Ok(None) => recheck = !hostile && !expected.is_empty(),
                        Err(e) => assert!(hostile, "corruption without a hostile write: {e:?}"),
                    }
                    if recheck {
                        tx.flush();
                        assert!(c.has_data(), "committed and flushed frames not seen");
                    }
                }
            }
            7 => {
                if let Some(c) = rx.as_mut() {
                    let max = b.u8() as usize;
                    let mut got = Vec::new();
                    let r = c.drain(max, |f| {
                        check(f.payload);
                        got.push(f.payload.to_vec());
                    });
                    if !hostile {
                        assert!(r.is_ok(), "corruption without a hostile write: {r:?}");
                        for g in got {
                            assert_eq!(Some(g), expected.pop_front(), "honest frame changed");
                        }
                    }
                }
            }
            _ => {
                if let Some(c) = rx.as_mut() {
                    if op & 0x80 != 0 {
                        c.producer_gone();
                        gone = true;
                    }
                    c.publish();
                    let _ = c.has_data();
                }
                let _ = tx.has_room(b.u8() as usize);
                let _ = tx.depth();
            }
        }
    }
}
