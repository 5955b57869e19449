//! The queue wait histogram: log-linear buckets (two per octave), their bounds, and quantiles.
//!
//! The buckets follow the counters of a queue consumer half ([`CONSUMER_WORDS`]); the consumer
//! records into them with [`super::QueueConsumerStats::record_wait_ns`], bucket and sum inside
//! one seqlock write. Readers get `(bound, count)` pairs from [`super::Snapshot::histogram`].

use super::schema::{CounterSet, QueueConsumer};

/// Name of the wait histogram (its buckets and its [`QueueConsumer::WaitSumNs`]).
pub const WAIT_HISTOGRAM: &str = "wait_ns";
/// Buckets of the wait histogram: `< 256 ns`, two per octave from 2^8 to 2^31 ns, `>= 2^31 ns`.
pub const HIST_BUCKETS: usize = 48;
const HIST_MIN_SHIFT: u32 = 8;
const HIST_MAX_SHIFT: u32 = 30;
/// Value words of a consumer half: its counters, then the buckets.
pub const CONSUMER_WORDS: usize = <QueueConsumer as CounterSet>::COUNT + HIST_BUCKETS;
const _: () = assert!(1 + 2 * (HIST_MAX_SHIFT - HIST_MIN_SHIFT + 1) as usize + 1 == HIST_BUCKETS);

/// Histogram bucket of `ns` (log-linear: two linear sub-buckets per power of two). Shifts and a
/// leading-zero count: no division, no table.
#[inline]
pub const fn bucket_index(ns: u64) -> usize {
    if ns < (1 << HIST_MIN_SHIFT) {
        return 0;
    }
    let m = 63 - ns.leading_zeros();
    if m > HIST_MAX_SHIFT {
        return HIST_BUCKETS - 1;
    }
    let sub = ((ns >> (m - 1)) & 1) as usize;
    1 + (m - HIST_MIN_SHIFT) as usize * 2 + sub
}

/// Inclusive upper bound of bucket `i` in ns (`u64::MAX` for the last).
pub const fn bucket_upper_bound(i: usize) -> u64 {
    if i == 0 {
        return (1 << HIST_MIN_SHIFT) - 1;
    }
    if i >= HIST_BUCKETS - 1 {
        return u64::MAX;
    }
    let m = HIST_MIN_SHIFT + ((i - 1) / 2) as u32;
    if (i - 1).is_multiple_of(2) {
        (1u64 << m) + (1u64 << (m - 1)) - 1
    } else {
        (1u64 << (m + 1)) - 1
    }
}

/// The `q` quantile (0..=1) of a histogram given as `(inclusive upper bound, count)` pairs in
/// bound order: the upper bound of the bucket holding it (for the open last bucket, the previous
/// bound + 1, i.e. "at least"). `None` when empty.
///
/// The counts come from a segment other processes write: any value is possible, so every sum
/// saturates (a hostile `u64::MAX` bucket gives a skewed quantile, never an overflow).
pub fn quantile(buckets: &[(u64, u64)], q: f64) -> Option<u64> {
    let total = histogram_count(buckets);
    if total == 0 {
        return None;
    }
    // `q` NaN is read as 0. The float-to-int cast saturates; the clamp keeps the rank in
    // `1..=total` whatever the rounding of `total as f64`.
    let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    let mut prev_bound = 0u64;
    for &(bound, count) in buckets {
        seen = seen.saturating_add(count);
        if seen >= rank {
            return Some(if bound == u64::MAX { prev_bound.saturating_add(1) } else { bound });
        }
        prev_bound = bound;
    }
    buckets.last().map(|b| b.0)
}

/// The number of values in a histogram given as `(bound, count)` pairs: the saturating sum of
/// the counts (the counts are read from shared memory, so a hostile writer may make them add up
/// past `u64::MAX`).
pub fn histogram_count(buckets: &[(u64, u64)]) -> u64 {
    buckets.iter().fold(0u64, |n, b| n.saturating_add(b.1))
}
