//! The spin gate: whether a loop that ran out of work busy-polls its input before it arms its
//! doorbells and sleeps, and for how long.

use std::time::{Duration, Instant};

/// Decides whether an event loop spins before it sleeps, and does the spinning.
///
/// A wake-up across vCPUs costs tens of µs on these machines (docs/BENCHMARKS.md), so a loop
/// whose peer is about to answer saves time by busy-polling its ring for a short budget (the
/// config's `io_conn.spin`, `md.spin`) instead of arming the doorbell. That only pays while the
/// loop is lightly loaded: a busy loop batches anyway and needs the CPU for the peer and the
/// clients (measured in docs/BENCHMARKS.md, "Spin budgets"). So the gate keeps a moving average
/// of the work per loop iteration ([`Self::record`]) and allows spinning only below
/// [`Self::MAX_LOAD_X16`].
///
/// Used by md's runner (on its input ring) and meant for io_conn's loop (whose server still
/// implements the same gate by hand). One per loop; not shared between threads.
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// let mut gate = rt::SpinGate::new(Duration::from_micros(50));
/// gate.record(0); // an idle iteration
/// assert!(gate.allows());
/// let mut polls = 0;
/// assert!(gate.spin(|| {
///     polls += 1;
///     polls == 3 // "the ring has data" on the third look
/// }));
/// for _ in 0..20 {
///     gate.record(10); // busy: 10 events or frames per iteration
/// }
/// assert!(!gate.allows());
/// ```
#[derive(Debug, Clone)]
pub struct SpinGate {
    /// The longest one [`Self::spin`] lasts; zero: never spin.
    budget: Duration,
    /// Work per iteration, an exponential moving average with weight 1/8, in sixteenths: each
    /// [`Self::record`] does `x = x - x/8 + 2*work`, whose fixed point for a constant `work` is
    /// `16 * work`.
    load_x16: u64,
}

impl SpinGate {
    /// Spin only while recent iterations averaged less than this much work (×16): 1.5 events or
    /// frames per iteration.
    pub const MAX_LOAD_X16: u64 = 3 * 8;

    /// A gate with the given spin budget (zero: never spin) and no recorded load.
    pub fn new(budget: Duration) -> Self {
        Self { budget, load_x16: 0 }
    }

    /// The spin budget.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Records one loop iteration's work (events + frames): an exponential moving average,
    /// weight 1/8, in sixteenths.
    pub fn record(&mut self, work: u64) {
        self.load_x16 = (self.load_x16 - self.load_x16 / 8).saturating_add(work.saturating_mul(2));
    }

    /// Spinning is allowed: a non-zero budget and recent work below [`Self::MAX_LOAD_X16`].
    pub fn allows(&self) -> bool {
        !self.budget.is_zero() && self.load_x16 < Self::MAX_LOAD_X16
    }

    /// If [`Self::allows`], spins up to the budget; true as soon as `ready` returns true, false
    /// when the budget ran out (or spinning is not allowed: `ready` is then not called).
    ///
    /// `ready` is called before each `spin_loop` hint (a look at a ring is one atomic load); the
    /// clock is read once per 32 hints, which keeps `clock_gettime` out of most of the loop.
    pub fn spin(&self, mut ready: impl FnMut() -> bool) -> bool {
        if !self.allows() {
            return false;
        }
        let start = Instant::now();
        loop {
            for _ in 0..32 {
                if ready() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= self.budget {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_is_a_moving_average_in_sixteenths() {
        let mut sut = SpinGate::new(Duration::from_micros(50));
        sut.record(1);
        assert_eq!(sut.load_x16, 2);
        sut.record(1);
        assert_eq!(sut.load_x16, 4, "2 - 2/8 + 2");
        for _ in 0..200 {
            sut.record(3);
        }
        // Integer division keeps the fixed point a little above 16 * 3: x/8 loses up to 7/8.
        assert!((48..56).contains(&sut.load_x16), "{}", sut.load_x16);
        for _ in 0..200 {
            sut.record(0);
        }
        assert!(sut.load_x16 < 8, "decays towards 0: {}", sut.load_x16);
        sut.record(u64::MAX);
        assert_eq!(sut.load_x16, u64::MAX, "saturates instead of overflowing");
    }

    #[test]
    fn the_gate_closes_at_a_load_of_one_and_a_half() {
        let mut sut = SpinGate::new(Duration::from_micros(50));
        assert!(sut.allows(), "idle");
        for _ in 0..200 {
            sut.record(1);
        }
        assert!(sut.allows(), "one unit of work per iteration: {}", sut.load_x16);
        for _ in 0..200 {
            sut.record(2);
        }
        assert!(!sut.allows(), "two per iteration: {}", sut.load_x16);
        assert!(!sut.spin(|| panic!("ready must not be called when the gate is closed")));
        // One busy iteration does not close it: 12 (six times 2) stays below 24.
        let mut one = SpinGate::new(Duration::from_micros(50));
        one.record(6);
        assert!(one.allows());
        one.record(7);
        assert!(!one.allows(), "{}", one.load_x16);
    }

    #[test]
    fn a_zero_budget_never_spins() {
        let sut = SpinGate::new(Duration::ZERO);
        assert_eq!(sut.budget(), Duration::ZERO);
        assert!(!sut.allows());
        assert!(!sut.spin(|| panic!("ready must not be called with a zero budget")));
    }

    #[test]
    fn spin_returns_when_ready_or_after_the_budget() {
        let sut = SpinGate::new(Duration::from_millis(2));
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
