//! The memory budget of every client buffer together (`io_conn.max_buffered`).
//!
//! `output_credit` bounds what one slow reader costs and `max_message` what one partial message
//! costs, but not how many of them there are: 10 000 slow `STREAM` readers at 256 KiB each are
//! 2.5 GiB. This bounds the sum. What is counted is every byte a pooled [`crate::pool::Buf`]
//! allocated ([`held_bytes`]: input, output, replies held for pipelined requests, the pool's
//! spares), so the figure is the allocation, not the bytes in use.
//!
//! Policy, checked after every md frame ([`Clients::check_budget`]), once per loop iteration
//! ([`Clients::enforce_budget`], before the io→md rings are flushed), and on every read:
//! * at or above the high-water mark (7/8 of `max`: the last eighth is left to the
//!   allocator's overhead, so that RSS stays within `max`), no client socket is read ([`Budget::reading_stopped`]: also the reads
//!   later in the same iteration), so input cannot grow;
//! * then the pool's spare buffers are freed, and if that is not enough the **slowest readers**
//!   are closed, counted in `closed_memory`, until the total is at most the low-water mark
//!   (3/4 of `max`), after which reading resumes. A flow's rank is the bytes it holds times how
//!   long it has held them (for output: since the socket last stopped taking all of it; for a
//!   partial input message: since its first byte), so a `STREAM` reader stuck at its full credit
//!   for seconds goes before a busy client whose reply has waited a millisecond;
//! * were the total still above the low-water mark after that (buffers no flow holds), reading
//!   stays stopped (every socket's EPOLLIN dropped, so a level-triggered loop does not spin)
//!   until it falls below.
//!
//! The budget bounds the RSS, not only the bytes in use, because freed buffers go back to the
//! system: io_conn fixes glibc's mmap threshold at start (a buffer of 64 KiB or more is its own
//! mapping) and trims the heap after closing connections here (`rt::malloc`). Without that, a
//! 64 MiB budget let RSS reach 575 MiB (freed 256 KiB buffers stayed in the heap).
//!
//! Between two checks the total can exceed the high-water mark by one md frame
//! (`max_message`); client reads stop at the mark.
//! Per message the cost is one thread-local read and a compare; the ranking scans the flows
//! with a socket only when the budget is reached.

use std::time::{Duration, Instant};

use nix::sys::epoll::EpollFlags;

use super::{Clients, Cx, Links};
use crate::counters::Io;
use crate::flows::ListId;
use crate::pool::held_bytes;

/// How often at most the budget's warning is logged (with the closes since the last one).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A flow holding buffers, as ranked for closing.
#[derive(Debug, Clone, Copy)]
struct Victim {
    score: u64,
    bytes: usize,
    slot: u32,
}

/// `io_conn.max_buffered` and its state.
#[derive(Debug)]
pub(crate) struct Budget {
    max: usize,
    /// Reading stays stopped: the total stayed above the low-water mark after every flow
    /// holding buffers was closed (see the module docs).
    paused: bool,
    /// The ranking's scratch, kept between uses.
    victims: Vec<Victim>,
    /// Closed since the last log line, and when that was.
    closed_unlogged: u64,
    logged_at: Option<Instant>,
}

impl Budget {
    /// A budget of `max` bytes.
    pub(crate) fn new(max: u64) -> Self {
        Self {
            max: usize::try_from(max).unwrap_or(usize::MAX),
            paused: false,
            victims: Vec::new(),
            closed_unlogged: 0,
            logged_at: None,
        }
    }

    /// Where the budget counts as reached: 7/8 of it. The last eighth is the allocator's
    /// margin (page rounding of mapped buffers, heap fragments between trims), so that the
    /// RSS, not only the buffers, stays within `max` of the idle process.
    pub(crate) fn high_water(&self) -> usize {
        self.max - self.max / 8
    }

    /// Where closing stops and reading resumes: 3/4 of the budget.
    pub(crate) fn low_water(&self) -> usize {
        self.max - self.max / 4
    }

    /// Reading is stopped across iterations (interest without EPOLLIN).
    pub(crate) fn paused(&self) -> bool {
        self.paused
    }

    /// No client socket may be read now: the budget is reached, or reading stays stopped.
    #[inline]
    pub(crate) fn reading_stopped(&self) -> bool {
        self.paused || held_bytes() >= self.high_water()
    }
}

/// The rank of a flow holding `bytes` for `age`: larger and older first.
fn score(bytes: usize, age: Duration) -> u64 {
    let ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
    (bytes as u64).saturating_mul(ms.saturating_add(1))
}

impl Clients {
    /// A new budget (a reload): applies at the next check.
    pub(super) fn set_budget(&mut self, max: u64) {
        self.budget.max = usize::try_from(max).unwrap_or(usize::MAX);
        self.pool.set_keep_below(self.budget.low_water());
    }

    /// Bytes the flow's buffers allocated, and how long it has held them.
    fn holding(&self, slot: u32, now: Instant) -> (usize, Duration) {
        let f = self.flows.get(slot);
        let size = |b: &Option<crate::pool::Buf>| b.as_ref().map_or(0, crate::pool::Buf::allocated);
        let bytes =
            size(&f.input) + size(&f.output) + f.rq.q.iter().map(|r| size(&r.held)).sum::<usize>();
        let age = if f.output_len() > 0 && f.interest.contains(EpollFlags::EPOLLOUT) {
            now.saturating_duration_since(f.out_since)
        } else if f.input.as_ref().is_some_and(|b| !b.is_empty()) {
            now.saturating_duration_since(f.since)
        } else {
            Duration::ZERO
        };
        (bytes, age)
    }

    /// After each md frame: enforces the budget if it is reached (one thread-local read and a
    /// compare otherwise).
    #[inline]
    pub(super) fn check_budget(&mut self, cx: &mut Cx, links: &mut Links) {
        if held_bytes() >= self.budget.high_water() {
            self.enforce_budget(cx, links);
        }
    }

    /// Once per loop iteration: publishes `buffered_bytes`; at or above the budget, counts it,
    /// frees the pool's spares and closes the slowest readers until the total is at most the
    /// low-water mark; stops or resumes reading (see the module docs).
    pub(super) fn enforce_budget(&mut self, cx: &mut Cx, links: &mut Links) {
        let low = self.budget.low_water();
        if held_bytes() >= self.budget.high_water() {
            cx.c[Io::BudgetReached] += 1;
            let before = held_bytes();
            self.pool.trim();
            let closed = if held_bytes() > low { self.close_slowest(cx, links, low) } else { 0 };
            // The freed buffers' pages back to the system (large ones already were: see
            // `rt::malloc`). Each time here frees at least max/8, so this is rare.
            rt::malloc::trim();
            self.log_budget(cx.now, before, closed);
            if held_bytes() > low && !self.budget.paused {
                log::warn!(
                    "memory budget: {} B of client buffers held by no connection; reading \
                     stopped until below {low} B",
                    held_bytes()
                );
                self.budget.paused = true;
                self.refresh_interest(cx);
            }
        }
        if self.budget.paused && held_bytes() <= low {
            self.budget.paused = false;
            self.refresh_interest(cx);
        }
        cx.c[Io::BufferedBytes] = held_bytes() as u64;
    }

    /// Closes flows holding buffers, slowest reader first, until the total is at most `low`.
    /// Returns how many it closed.
    fn close_slowest(&mut self, cx: &mut Cx, links: &mut Links, low: usize) -> u64 {
        let mut victims = std::mem::take(&mut self.budget.victims);
        victims.clear();
        let mut cur = self.flows.front(ListId::Idle);
        while let Some(slot) = cur {
            cur = self.flows.next(ListId::Idle, slot);
            if !self.flows.get(slot).has_client() {
                continue;
            }
            let (bytes, age) = self.holding(slot, cx.now);
            if bytes > 0 {
                victims.push(Victim { score: score(bytes, age), bytes, slot });
            }
        }
        victims.sort_unstable_by(|a, b| b.score.cmp(&a.score).then(b.bytes.cmp(&a.bytes)));
        let mut closed = 0;
        for v in &victims {
            if held_bytes() <= low {
                break;
            }
            // Each slot appears once and nothing is accepted meanwhile: still the flow ranked.
            self.close_flow(cx, links, v.slot, Io::ClosedMemory);
            closed += 1;
        }
        victims.clear();
        self.budget.victims = victims;
        closed
    }

    /// One warning per [`LOG_EVERY`] at most, with the closes since the last one.
    fn log_budget(&mut self, now: Instant, before: usize, closed: u64) {
        self.budget.closed_unlogged += closed;
        if self.budget.logged_at.is_some_and(|t| now < t + LOG_EVERY) {
            return;
        }
        self.budget.logged_at = Some(now);
        log::warn!(
            "memory budget reached: {before} B of client buffers (io_conn.max_buffered = {} B); \
             reading paused, {} slowest readers closed since the last such line (closed_memory)",
            self.budget.max,
            std::mem::take(&mut self.budget.closed_unlogged)
        );
    }

    /// Re-registers every socket's interest (reading stopped or resumed).
    fn refresh_interest(&mut self, cx: &Cx) {
        let mut cur = self.flows.front(ListId::Idle);
        while let Some(slot) = cur {
            cur = self.flows.next(ListId::Idle, slot);
            self.update_interest(cx, slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use nix::sys::epoll::EpollFlags;

    use super::super::tests::{open_flow, setup};
    use super::*;
    use crate::flows::State;

    /// Gives the flow `bytes` of output held since `ago` (as a socket that stopped taking it).
    fn hold_output(cl: &mut Clients, slot: u32, bytes: usize, since: Instant) {
        let mut b = cl.pool.get();
        b.extend(&vec![b'A'; bytes]);
        let f = cl.flows.get_mut(slot);
        f.output = Some(b);
        f.interest = EpollFlags::EPOLLOUT;
        f.out_since = since;
    }

    fn held_by(cl: &Clients, slot: u32) -> usize {
        cl.holding(slot, Instant::now()).0
    }

    #[test]
    fn score_ranks_larger_and_older_first() {
        let s = Duration::from_secs(1);
        assert!(score(1000, s) > score(999, s));
        assert!(score(1000, 2 * s) > score(1000, s));
        assert!(score(256 << 10, 5 * s) > score(64, Duration::ZERO));
        assert!(score(1, Duration::ZERO) > 0, "a fresh holder still ranks by size");
        assert_eq!(score(usize::MAX, Duration::MAX), u64::MAX, "saturates");
    }

    #[test]
    fn below_the_budget_nothing_is_closed_and_the_gauge_tells_the_total() {
        let (mut cx, mut cl, mut links) = setup(1);
        let base = held_bytes();
        cl.set_budget((base + (1 << 20)) as u64);
        let a = open_flow(&mut cx, &mut cl, 0).slot();
        hold_output(&mut cl, a, 100_000, cx.now);
        cl.enforce_budget(&mut cx, &mut links);
        assert_eq!(cx.c[Io::ClosedMemory], 0);
        assert_eq!(cx.c[Io::BudgetReached], 0);
        assert_eq!(cx.c[Io::BufferedBytes], held_bytes() as u64);
        assert!(held_bytes() - base >= 100_000);
        assert!(!cl.budget.reading_stopped());
    }

    #[test]
    fn over_the_budget_the_slowest_readers_close_first_down_to_low_water() {
        let (mut cx, mut cl, mut links) = setup(1);
        let base = held_bytes();
        let now = Instant::now();
        cx.now = now;
        let old = now.checked_sub(Duration::from_secs(5)).expect("clock");
        let recent = now.checked_sub(Duration::from_millis(10)).expect("clock");
        // Three STREAM readers stuck at their credit: two for 5 s, one for 10 ms; a PING
        // client with a fresh small reply.
        let slow1 = open_flow(&mut cx, &mut cl, 0).slot();
        let fresh = open_flow(&mut cx, &mut cl, 0).slot();
        let slow2 = open_flow(&mut cx, &mut cl, 0).slot();
        let ping = open_flow(&mut cx, &mut cl, 0).slot();
        hold_output(&mut cl, slow1, 256 << 10, old);
        hold_output(&mut cl, fresh, 256 << 10, recent);
        hold_output(&mut cl, slow2, 200 << 10, old);
        hold_output(&mut cl, ping, 5, now);
        let (s1, s2) = (held_by(&cl, slow1), held_by(&cl, slow2));
        let total = held_bytes();
        // A budget reached now whose low water (3/4) is met once both old readers are gone,
        // and not after one.
        let max = (total - s1 - s2) * 4 / 3 + 8;
        cl.set_budget(max as u64);
        let (high, low) = (cl.budget.high_water(), cl.budget.low_water());
        assert!(high <= total && low >= total - s1 - s2 && low < total - s1, "{high} {low}");
        assert!(cl.budget.reading_stopped(), "at the budget no socket is read");

        cl.enforce_budget(&mut cx, &mut links);
        assert_eq!(cx.c[Io::BudgetReached], 1);
        assert_eq!(cx.c[Io::ClosedMemory], 2, "the two old readers, largest first");
        assert_eq!(cl.flows.get(slow1).state, State::Free);
        assert_eq!(cl.flows.get(slow2).state, State::Free);
        assert_eq!(cl.flows.get(fresh).state, State::Open, "the recent one is kept");
        assert_eq!(cl.flows.get(ping).state, State::Open);
        assert_eq!(
            cl.flows.get(ping).output.as_ref().map(|b| b.filled().to_vec()),
            Some(b"AAAAA".to_vec()),
            "the other client's reply is untouched"
        );
        assert!(held_bytes() <= low);
        assert!(held_bytes() - base >= held_by(&cl, fresh));
        assert_eq!(cx.c[Io::BufferedBytes], held_bytes() as u64);
        assert!(!cl.budget.reading_stopped(), "reading resumes below low water");
        assert!(!cl.budget.paused());
    }

    #[test]
    fn pooled_spares_go_before_any_connection() {
        let (mut cx, mut cl, mut links) = setup(1);
        let base = held_bytes();
        let a = open_flow(&mut cx, &mut cl, 0).slot();
        hold_output(&mut cl, a, 1000, cx.now);
        let spares: Vec<_> = (0..8).map(|_| cl.pool.get()).collect();
        for b in spares {
            cl.pool.put(b);
        }
        assert_eq!(cl.pool.free_count(), 8);
        cl.set_budget((held_bytes() - 1) as u64);
        cl.enforce_budget(&mut cx, &mut links);
        assert_eq!(cl.pool.free_count(), 0);
        assert_eq!(cx.c[Io::ClosedMemory], 0);
        assert_eq!(cl.flows.get(a).state, State::Open);
        assert!(held_bytes() - base >= 1000);
    }

    #[test]
    fn partial_input_counts_and_ranks_by_its_first_byte() {
        let (mut cx, mut cl, mut links) = setup(1);
        let base = held_bytes();
        let now = Instant::now();
        cx.now = now;
        let loris = open_flow(&mut cx, &mut cl, 0).slot();
        let busy = open_flow(&mut cx, &mut cl, 0).slot();
        let mut b = cl.pool.get();
        b.extend(&[b'x'; 40_000]);
        let f = cl.flows.get_mut(loris);
        f.input = Some(b);
        f.since = now.checked_sub(Duration::from_secs(20)).expect("clock");
        hold_output(&mut cl, busy, 60_000, now);
        assert!(held_by(&cl, loris) >= 40_000);
        cl.set_budget(held_bytes() as u64);
        cl.enforce_budget(&mut cx, &mut links);
        assert_eq!(cx.c[Io::ClosedMemory], 1);
        assert_eq!(cl.flows.get(loris).state, State::Free, "the old partial message goes");
        assert_eq!(cl.flows.get(busy).state, State::Open);
        assert!(held_bytes() - base >= 60_000);
    }

    #[test]
    fn a_lower_budget_from_a_reload_applies_at_the_next_check() {
        let (mut cx, mut cl, mut links) = setup(1);
        let old = cx.now.checked_sub(Duration::from_secs(1)).expect("clock");
        let slots: Vec<u32> = (0..4).map(|_| open_flow(&mut cx, &mut cl, 0).slot()).collect();
        for &s in &slots {
            hold_output(&mut cl, s, 100_000, old);
        }
        cl.enforce_budget(&mut cx, &mut links);
        assert_eq!(cx.c[Io::ClosedMemory], 0, "the default 256 MiB holds them");
        // What `reload` does with a new `io_conn.max_buffered`.
        cl.set_budget(held_bytes() as u64 / 2);
        assert!(cl.budget.reading_stopped());
        cl.enforce_budget(&mut cx, &mut links);
        assert!(cx.c[Io::ClosedMemory] >= 2, "closed down to 3/4 of the new budget");
        assert!(held_bytes() <= cl.budget.low_water());
        assert_eq!(cx.c[Io::ConnectionsCurrent], 4 - cx.c[Io::ClosedMemory]);
    }

    #[test]
    fn reading_stays_stopped_while_buffers_no_flow_holds_exceed_low_water() {
        let (mut cx, mut cl, mut links) = setup(1);
        let outside = cl.pool.get(); // held by nobody the budget can close
        cl.set_budget(held_bytes() as u64);
        cl.enforce_budget(&mut cx, &mut links);
        assert!(cl.budget.paused());
        assert!(cl.budget.reading_stopped());
        assert_eq!(cx.c[Io::ClosedMemory], 0);
        drop(outside);
        cl.enforce_budget(&mut cx, &mut links);
        assert!(!cl.budget.paused(), "resumed below low water");
        assert!(!cl.budget.reading_stopped());
    }
}
