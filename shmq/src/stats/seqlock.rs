//! The per-block sequence lock: one writer ([`write_begin`] / [`write_end`]), any number of
//! readers in any process ([`read_consistent`]), and no reader ever waits on a dead writer.
//!
//! Word 0 of every block is its sequence: even when no write is in progress. A write makes it
//! odd, stores the values, makes it even (and new). A reader that sees the same even sequence
//! before and after its loads has a consistent copy. The writer never waits for readers.

use crate::sync::{AtomicU64, Ordering, fence, spin_hint};

/// How many times a reader retries a block whose sequence is odd or changed before it gives up
/// and returns what it read, marked inconsistent.
pub const SEQLOCK_RETRIES: u32 = 100;

/// Reads `words[1..]` into `out` under the block's sequence (`words[0]`). Returns true if the
/// read is consistent; after [`SEQLOCK_RETRIES`] failed tries, returns false with the last read
/// in `out` (a writer killed mid-update leaves the sequence odd forever).
pub fn read_consistent(words: &[AtomicU64], out: &mut [u64]) -> bool {
    let Some((seq, values)) = words.split_first() else { return true };
    for attempt in 0..SEQLOCK_RETRIES {
        // Acquire pairs with the writer's Release store of the even sequence in `write_end`: if
        // we see the sequence a write ended with, we see everything written before it.
        let s1 = seq.load(Ordering::Acquire);
        for (o, w) in out.iter_mut().zip(values) {
            // Relaxed: ordered by the fences of the seqlock protocol (see below).
            *o = w.load(Ordering::Relaxed);
        }
        // SYNC POINT: Acquire fence pairs with the writer's Release fence in `write_begin`: if any
        // value load above saw a store made after that fence, the odd sequence stored before the
        // fence is visible to the sequence load below, so s2 != s1 (Boehm, "Can seqlocks get along
        // with programming language memory models?", 2012).
        fence(Ordering::Acquire);
        // Relaxed: ordered after the value loads by the fence above.
        let s2 = seq.load(Ordering::Relaxed);
        if s1 == s2 && s1 & 1 == 0 {
            return true;
        }
        if attempt < 10 {
            spin_hint();
        } else {
            std::thread::yield_now();
        }
    }
    false
}

/// Starts a seqlock write: makes the sequence odd. Only the block's one writer calls it.
#[inline]
pub(super) fn write_begin(seq: &AtomicU64) {
    // Relaxed load: only this writer stores the sequence. `| 1` also repairs a sequence left odd
    // by a predecessor killed mid-update (a new writer of a reused md slot, or io_conn marking a
    // dead md).
    let s = seq.load(Ordering::Relaxed) | 1;
    // Relaxed store: ordered before the value stores by the Release fence below.
    seq.store(s, Ordering::Relaxed);
    // SYNC POINT: Release fence pairs with the reader's Acquire fence in `read_consistent`.
    fence(Ordering::Release);
}

/// Ends a seqlock write: makes the sequence even (and new).
#[inline]
pub(super) fn write_end(seq: &AtomicU64) {
    // Relaxed load: only this writer stores the sequence.
    let s = seq.load(Ordering::Relaxed);
    // Release pairs with the reader's Acquire load of the sequence: the values stored inside the
    // write are visible to a reader that sees this even sequence.
    seq.store((s | 1).wrapping_add(1), Ordering::Release);
}
