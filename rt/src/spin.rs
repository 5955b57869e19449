//! The spin gate: whether a loop that ran out of work busy-polls its input before it arms its
//! doorbells and sleeps, and for how long.

use std::time::{Duration, Instant};

use crate::contention::Contention;

/// Decides whether an event loop spins before it sleeps, and does the spinning.
///
/// A wake-up across vCPUs costs tens of µs on these machines (docs/BENCHMARKS.md), so a loop
/// whose peer is about to answer saves time by busy-polling for a short budget (the config's
/// `io_conn.spin`, `md.spin`) instead of arming the doorbell. A spin only pays when it ends with
/// work found, and only if its CPU was not wanted by another thread. So, at each opportunity
/// ([`Self::spin`]), the gate spins only if:
///
/// * the budget is not zero (zero: never spin);
/// * it is not backing off: after `k` spins in a row that ran out the budget without work
///   (misses), the next `2^k` opportunities are skipped (`k` at most
///   [`Self::MAX_BACKOFF_SHIFT`]); a spin that finds work (a hit) resets `k`, and so does a
///   sleep that ended in work sooner than the budget ([`Self::note_wake`]: a spin would have
///   found it). A peer that answers within the budget keeps the gate open; one that does not
///   costs one wasted budget per `2^k` opportunities, a fraction that halves with every
///   further miss;
/// * the machine is not crowded: at most twice as many runnable threads as CPUs
///   ([`Contention`]: the `procs_running` of `/proc/loadavg`, read at most once per ms).
///
/// A spin is polite: after every 32 looks it calls `sched_yield`, so a thread that becomes
/// runnable on the spinner's CPU (a client woken by a reply, the peer process, another
/// service) gets that CPU within a few µs instead of waiting for the spinner's time slice to
/// end. That is what lets a spin pay on a machine where the client shares the CPUs: at one
/// connection (client, io_conn and md on 2 vCPUs) both sides spin, nobody sleeps, and the
/// client's own wake-up is the only one left per request; without the yield the spinners had
/// to stop whenever `procs_running` passed the CPU count, which at one connection it does all
/// the time (docs/BENCHMARKS.md, "Polite spinning"). With the yield, the contention signal only
/// guards a machine so crowded that every yield would switch to another thread.
///
/// The caller decides what the spin waits for and when it is worth one (io_conn: while an md
/// owes it a reply, or right after it wrote replies; md: whenever it runs out of input, the
/// backoff tells whether io_conn keeps sending). One per loop; not shared between threads.
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// // A gate on a machine with room to spare: 1 runnable thread (this one) on 2 CPUs.
/// let mut gate = rt::SpinGate::with_contention(
///     Duration::from_micros(50),
///     rt::Contention::fixed(Some(1), 2),
/// );
/// let mut polls = 0;
/// assert!(gate.spin(|| {
///     polls += 1;
///     polls == 3 // "the ring has data" on the third look
/// }));
/// assert!(!gate.spin(|| false)); // a miss: the next 2 opportunities are skipped
/// assert!(!gate.spin(|| panic!("not called while backing off")));
/// ```
#[derive(Debug)]
pub struct SpinGate {
    /// The longest one [`Self::spin`] lasts; zero: never spin.
    budget: Duration,
    /// Spins in a row that ran out the budget, at most [`Self::MAX_BACKOFF_SHIFT`].
    misses: u32,
    /// Opportunities still to skip (backing off after a miss).
    skip: u32,
    contention: Contention,
}

impl SpinGate {
    /// The backoff stops growing here: after this many misses in a row, 2^8 = 256 opportunities
    /// are skipped per try (at ~10 k opportunities/s, one 50 µs try every ~25 ms: ~0.2 % of a
    /// CPU).
    pub const MAX_BACKOFF_SHIFT: u32 = 8;

    /// A gate with the given spin budget (zero: never spin) and the system's contention signal
    /// ([`Contention::system`]; not opened for a zero budget).
    pub fn new(budget: Duration) -> Self {
        let contention =
            if budget.is_zero() { Contention::fixed(None, 1) } else { Contention::system() };
        Self::with_contention(budget, contention)
    }

    /// A gate with the given budget and contention signal (tests, embedders).
    pub fn with_contention(budget: Duration, contention: Contention) -> Self {
        Self { budget, misses: 0, skip: 0, contention }
    }

    /// The spin budget.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The loop slept (armed its doorbells and waited) for `slept` and woke to work. Had it
    /// spun, a spin of the budget would have found that work: a backoff in progress ends and
    /// the next opportunity spins. This is how the gate recovers from misses that were not the
    /// peer's silence: on a VM whose vCPUs the host preempts, a spin runs out its budget while
    /// the peer's vCPU is not running, and without this the backoff then kept a lone client
    /// paying a wake-up per request for up to 2^8 requests after the host let go. A loop whose
    /// peer is really quiet sleeps longer than the budget, and its backoff stands.
    pub fn note_wake(&mut self, slept: Duration) {
        if slept < self.budget {
            self.misses = 0;
            self.skip = 0;
        }
    }

    /// One spin opportunity: if the gate is open (see the type's docs), spins up to the budget;
    /// true as soon as `ready` returns true (a hit), false when the budget ran out (a miss), or
    /// when the gate is closed (`ready` is then not called, and neither the backoff nor the
    /// miss count changes except for one skipped opportunity).
    ///
    /// `ready` is called before each `spin_loop` hint (a look at a ring is one atomic load); after
    /// every 32 looks the spin yields the CPU (`sched_yield`: returns at once when no other
    /// thread is runnable on this CPU) and reads the clock, which keeps both out of most of the
    /// loop.
    pub fn spin(&mut self, mut ready: impl FnMut() -> bool) -> bool {
        if self.budget.is_zero() {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        let start = Instant::now();
        if self.contention.crowded(start) {
            return false;
        }
        loop {
            for _ in 0..32 {
                if ready() {
                    self.misses = 0;
                    return true;
                }
                std::hint::spin_loop();
            }
            // Let a thread waiting for this CPU run now (see the type's docs). It cannot fail on
            // Linux; an error would only mean no yield, so it is ignored.
            let _ = nix::sched::sched_yield();
            if start.elapsed() >= self.budget {
                self.misses = (self.misses + 1).min(Self::MAX_BACKOFF_SHIFT);
                self.skip = 1 << self.misses;
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gate on an uncrowded machine with a tiny budget (a miss costs ~1 µs).
    fn open_gate() -> SpinGate {
        SpinGate::with_contention(Duration::from_micros(1), Contention::fixed(Some(1), 2))
    }

    /// Opportunities until `ready` is called again (each `spin` in between must skip).
    fn skipped_before_next_spin(sut: &mut SpinGate) -> u32 {
        let mut skipped = 0;
        loop {
            let mut called = false;
            let hit = sut.spin(|| {
                called = true;
                true
            });
            if called {
                assert!(hit);
                return skipped;
            }
            skipped += 1;
            assert!(skipped <= 1 << SpinGate::MAX_BACKOFF_SHIFT, "never spins again");
        }
    }

    #[test]
    fn a_hit_keeps_the_gate_open() {
        let mut sut = open_gate();
        for _ in 0..100 {
            assert!(sut.spin(|| true));
        }
        assert_eq!((sut.misses, sut.skip), (0, 0));
    }

    #[test]
    fn misses_in_a_row_back_off_exponentially_up_to_the_cap() {
        let mut sut = open_gate();
        assert!(!sut.spin(|| false));
        assert_eq!(sut.skip, 2, "one miss: skip 2");
        for k in 2..=SpinGate::MAX_BACKOFF_SHIFT + 2 {
            // Use up the skips, then miss again.
            let mut calls = 0;
            while calls == 0 {
                assert!(!sut.spin(|| {
                    calls += 1;
                    false
                }));
            }
            let want = 1u32 << k.min(SpinGate::MAX_BACKOFF_SHIFT);
            assert_eq!(sut.skip, want, "{k} misses in a row");
        }
        assert_eq!(sut.misses, SpinGate::MAX_BACKOFF_SHIFT);
    }

    /// A wake-up to work sooner than the budget after the loop went to sleep ends a backoff (a
    /// spin would have found that work); a longer sleep leaves it alone.
    #[test]
    fn a_wake_within_the_budget_ends_a_backoff_a_longer_one_does_not() {
        let mut sut =
            SpinGate::with_contention(Duration::from_micros(50), Contention::fixed(Some(1), 2));
        // Three misses in a row (each `spin` misses or skips an opportunity).
        while sut.misses < 3 {
            let _ = sut.spin(|| false);
        }
        assert!(sut.skip > 0, "backing off");
        sut.note_wake(Duration::from_micros(50));
        assert!(sut.skip > 0 && sut.misses == 3, "a sleep of the whole budget: backoff stands");
        sut.note_wake(Duration::from_micros(20));
        assert_eq!((sut.misses, sut.skip), (0, 0));
        let mut called = false;
        assert!(
            sut.spin(|| {
                called = true;
                true
            }),
            "the next opportunity spins"
        );
        assert!(called);
    }

    #[test]
    fn a_hit_resets_the_backoff() {
        let mut sut = open_gate();
        assert!(!sut.spin(|| false));
        assert_eq!(skipped_before_next_spin(&mut sut), 2, "after one miss; then a hit");
        assert!(!sut.spin(|| false));
        assert_eq!(skipped_before_next_spin(&mut sut), 2, "one miss again, not two");
        assert!(!sut.spin(|| false));
        assert_eq!(skipped_before_next_spin(&mut sut), 2);
        // Two misses in a row: 4.
        assert!(!sut.spin(|| false));
        assert_eq!(sut.skip, 2);
        while sut.skip > 0 {
            assert!(!sut.spin(|| panic!("skipping")));
        }
        assert!(!sut.spin(|| false));
        assert_eq!(skipped_before_next_spin(&mut sut), 4);
        assert_eq!(sut.misses, 0, "the hit reset it");
    }

    #[test]
    fn contention_closes_the_gate() {
        let mut sut =
            SpinGate::with_contention(Duration::from_micros(50), Contention::fixed(Some(5), 2));
        for _ in 0..10 {
            assert!(!sut.spin(|| panic!("ready must not be called on a crowded machine")));
        }
        assert_eq!((sut.misses, sut.skip), (0, 0), "a closed gate is not a miss");
        // Up to two runnable per CPU (a client beside io_conn and md): open.
        for running in [2, 3, 4] {
            let mut sut = SpinGate::with_contention(
                Duration::from_micros(50),
                Contention::fixed(Some(running), 2),
            );
            assert!(sut.spin(|| true), "{running} runnable on 2 CPUs");
        }
    }

    #[test]
    fn a_zero_budget_never_spins() {
        let mut sut = SpinGate::new(Duration::ZERO);
        assert_eq!(sut.budget(), Duration::ZERO);
        for _ in 0..10 {
            assert!(!sut.spin(|| panic!("ready must not be called with a zero budget")));
        }
        let mut sut = SpinGate::with_contention(Duration::ZERO, Contention::fixed(Some(1), 8));
        assert!(!sut.spin(|| panic!("not on an idle machine either")));
    }

    #[test]
    fn spin_returns_when_ready_or_after_the_budget() {
        let mut sut =
            SpinGate::with_contention(Duration::from_millis(2), Contention::fixed(Some(1), 2));
        let mut calls = 0;
        assert!(sut.spin(|| {
            calls += 1;
            calls == 40
        }));
        assert_eq!(calls, 40, "returns on the first true");

        let start = Instant::now();
        assert!(!sut.spin(|| false));
        assert!(start.elapsed() >= Duration::from_millis(2), "spun the whole budget");
    }
}
