//! Picking up a stats segment that appeared after md started serving (issue 14, finding 11).
//!
//! [`crate::serve`] retries the stats segment for a second before it serves. When io_conn creates
//! it later than that (a slow or stopped io_conn between creating the pairs and the segment), the
//! runner keeps trying while it serves: at most once per [`LATE_STATS_EVERY`], from its loop,
//! until an attempt succeeds or says it never will. The sink then counts from the attach, not
//! from the pickup: the block shows what md counted since it attached to this epoch.

use std::fmt;
use std::time::{Duration, Instant};

use crate::stats::{MdStatsSink, Stats};

/// Least time between two attempts.
pub const LATE_STATS_EVERY: Duration = Duration::from_secs(1);

/// One attempt to attach the stats segment: the sink, or `Err(retry)` (`false`: give up).
pub type StatsAttempt = Box<dyn FnMut() -> Result<MdStatsSink, bool> + Send>;

/// A pending stats attach (see the module docs).
pub(super) struct LateStats {
    pub(super) attempt: StatsAttempt,
    /// No attempt before this.
    pub(super) next: Instant,
    /// The counters at the attach: the sink shows what was counted since.
    pub(super) base: Stats,
}

impl fmt::Debug for LateStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LateStats").field("next", &self.next).finish_non_exhaustive()
    }
}

impl LateStats {
    /// Runs an attempt if one is due at `now`. `Ok(sink)`: bind it from `base`; `Err(true)`:
    /// keep this; `Err(false)`: drop it.
    pub(super) fn poll(&mut self, now: Instant) -> Result<MdStatsSink, bool> {
        if now < self.next {
            return Err(true);
        }
        self.next = now + LATE_STATS_EVERY;
        (self.attempt)()
    }
}
