//! A one-shot timerfd for an event loop's earliest deadline.
//!
//! A loop keeps several deadlines (idle timeouts, a drain deadline, the watchdog's next ping,
//! restarts) and wants one timerfd in its epoll set that fires at the earliest of them, with one
//! `timerfd_settime` per change of that earliest deadline, not per deadline. [`OneShotTimer`]
//! remembers what it is armed for: [`OneShotTimer::arm`] is a no-op while it already fires no
//! later than asked, and a firing for a deadline that has since moved later is harmless (the loop
//! finds nothing due and arms again).
//!
//! Owned by the loop's thread. io_conn's server implements the same by hand today; md's timer
//! heap arms its own timerfd with a microsecond floor (service timers), not this one.
//!
//! # Example
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//!
//! let mut timer = rt::timer::OneShotTimer::new()?; // timer.as_fd() goes into epoll
//! let now = Instant::now();
//! timer.arm(now + Duration::from_secs(1), now)?;
//! timer.arm(now + Duration::from_secs(5), now)?; // no-op: already fires earlier
//! assert_eq!(timer.armed(), Some(now + Duration::from_secs(1)));
//! // ... epoll reports timer.as_fd() readable:
//! timer.fired();
//! assert_eq!(timer.armed(), None);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// The shortest delay [`OneShotTimer::arm`] sets: a due instant in the past or within a
/// millisecond fires a millisecond from now (a zero delay would disarm the timerfd, and a loop's
/// deadlines are coarser than that).
const MIN_DELAY: Duration = Duration::from_millis(1);

/// A `CLOCK_MONOTONIC` timerfd (nonblocking, close-on-exec) and the instant it is armed for.
#[derive(Debug)]
pub struct OneShotTimer {
    fd: TimerFd,
    /// The due instant of the last successful [`Self::arm`]; `None` once it fired (or never
    /// armed).
    armed: Option<Instant>,
}

impl OneShotTimer {
    /// A disarmed timer.
    pub fn new() -> io::Result<Self> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        Ok(Self { fd, armed: None })
    }

    /// The timerfd, for the loop's epoll set (readable once it fired).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Arms for `due` unless already armed for an instant <= `due`; the delay from `now` is at
    /// least 1 ms. On an error the previous arming (if any) stands.
    pub fn arm(&mut self, due: Instant, now: Instant) -> io::Result<()> {
        if self.armed.is_some_and(|armed| armed <= due) {
            return Ok(());
        }
        let delay = due.saturating_duration_since(now).max(MIN_DELAY);
        self.fd
            .set(Expiration::OneShot(TimeSpec::from_duration(delay)), TimerSetTimeFlags::empty())?;
        self.armed = Some(due);
        Ok(())
    }

    /// After epoll reported it readable: reads the expiration count, forgets the armed instant.
    pub fn fired(&mut self) {
        // EAGAIN (a spurious wake-up, or already read) changes nothing: it is not armed either way.
        let _ = self.fd.wait();
        self.armed = None;
    }

    /// The instant it is armed for, if any.
    pub fn armed(&self) -> Option<Instant> {
        self.armed
    }
}

#[cfg(test)]
mod tests {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    use super::*;

    fn readable(t: &OneShotTimer, timeout_ms: u16) -> bool {
        let mut fds = [PollFd::new(t.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(timeout_ms)).expect("poll") == 1
    }

    #[test]
    fn arms_for_the_earliest_due_instant_only() {
        let mut sut = OneShotTimer::new().expect("timerfd");
        assert_eq!(sut.armed(), None);
        let now = Instant::now();
        let late = now + Duration::from_secs(60);
        sut.arm(late, now).expect("arm");
        assert_eq!(sut.armed(), Some(late));
        sut.arm(late + Duration::from_secs(1), now).expect("arm later");
        assert_eq!(sut.armed(), Some(late), "a later due instant keeps the earlier arming");
        let soon = now + Duration::from_millis(5);
        sut.arm(soon, now).expect("arm earlier");
        assert_eq!(sut.armed(), Some(soon), "an earlier one re-arms");
        // 30 s: a watchdog, not a latency requirement (the timer is due in 5 ms).
        assert!(readable(&sut, 30_000), "fires");
        sut.fired();
        assert_eq!(sut.armed(), None);
        assert!(!readable(&sut, 0), "the expiration was read");
    }

    #[test]
    fn a_past_due_instant_fires_after_the_minimum_delay() {
        let mut sut = OneShotTimer::new().expect("timerfd");
        let now = Instant::now();
        let past = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        sut.arm(past, now).expect("arm");
        assert_eq!(sut.armed(), Some(past));
        assert!(readable(&sut, 30_000), "fires (a zero delay would have disarmed it)");
        sut.fired();
        sut.fired(); // nothing pending: still fine
        assert_eq!(sut.armed(), None);
    }
}
