//! The runner's timers: a binary heap of deadlines over one timerfd.
//!
//! Cancellation is lazy: an entry names its flow by [`FlowId`] (slot and generation), and when it
//! expires the runner drops it unless that exact flow is still open. The heap keeps its capacity,
//! so steady-state timers do not allocate once it has grown to the peak number of timers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{Expiration, TimerFd, TimerSetTimeFlags};
use shmq::frame::FlowId;

/// One pending timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub(crate) deadline: Instant,
    /// Insertion order: equal deadlines fire in the order they were set.
    pub(crate) seq: u64,
    pub(crate) flow: FlowId,
    /// Index of the flow in the runner's table (checked against `flow` before use).
    pub(crate) slot: u32,
    pub(crate) token: u64,
}

/// A min-heap of [`Entry`] plus what the timerfd is currently set to.
#[derive(Debug)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    /// The deadline the timerfd is set for, if any.
    armed: Option<Instant>,
}

impl Timers {
    pub(crate) fn new() -> Self {
        Self { heap: BinaryHeap::with_capacity(256), seq: 0, armed: None }
    }

    pub(crate) fn add(&mut self, deadline: Instant, flow: FlowId, slot: u32, token: u64) {
        self.seq += 1;
        self.heap.push(Reverse(Entry { deadline, seq: self.seq, flow, slot, token }));
    }

    /// Removes and returns the earliest entry due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Entry> {
        match self.heap.peek() {
            Some(Reverse(e)) if e.deadline <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.deadline)
    }

    pub(crate) fn clear(&mut self) {
        self.heap.clear();
    }

    /// Sets `fd` to fire at the earliest deadline, unless it is already set no later than that.
    /// One `timerfd_settime` per change of the earliest deadline, not per timer.
    pub(crate) fn arm(&mut self, fd: &TimerFd, now: Instant) -> nix::Result<()> {
        let Some(next) = self.next() else { return Ok(()) };
        if let Some(a) = self.armed {
            if a <= next && a > now {
                return Ok(());
            }
        }
        // A zero it_value would disarm the timerfd: fire at least 1µs from now.
        let after = next.saturating_duration_since(now).max(Duration::from_micros(1));
        fd.set(Expiration::OneShot(TimeSpec::from_duration(after)), TimerSetTimeFlags::empty())?;
        self.armed = Some(now + after);
        Ok(())
    }

    /// The timerfd fired (or was disarmed): it is no longer set.
    pub(crate) fn fired(&mut self) {
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_then_insertion_order() {
        let mut t = Timers::new();
        let t0 = Instant::now();
        let f = FlowId::new(1, 1);
        t.add(t0 + Duration::from_millis(5), f, 0, 1);
        t.add(t0 + Duration::from_millis(1), f, 0, 2);
        t.add(t0 + Duration::from_millis(1), f, 0, 3);
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(1)));
        assert!(t.pop_due(t0).is_none());
        let now = t0 + Duration::from_millis(10);
        let order: Vec<u64> = std::iter::from_fn(|| t.pop_due(now)).map(|e| e.token).collect();
        assert_eq!(order, [2, 3, 1]);
        assert!(t.heap.is_empty());
    }
}
