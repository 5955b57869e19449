//! The contention signal: are more than twice as many threads runnable as there are CPUs? A
//! loop that busy-polls then only switches back and forth with the threads waiting for its CPU
//! (its spin yields every few µs, [`crate::SpinGate`]), so it does not spin.
//!
//! # The signal: `procs_running` of `/proc/loadavg`
//!
//! The 4th field of `/proc/loadavg` (`R/T`, the `R`) is the number of runnable threads in the
//! whole system at the moment of the read, the reader included. It is read with `pread` at
//! offset 0 on a descriptor kept open (no `open`/`close` per read; seq_file regenerates the
//! text for a read at offset 0), at most once per [`Contention::INTERVAL`] (1 ms), and compared
//! with the CPUs this process may run on (`sched_getaffinity`, via
//! [`std::thread::available_parallelism`]). Crowded means `procs_running > 2 * cpus`
//! ([`Contention::CROWDED_PER_CPU`]). The spinner is one of the runnable threads. Up to two per
//! CPU, a polite spin (one that yields) costs the others a few µs each time they wake; beyond,
//! it would mostly switch to and from them.
//!
//! Why this one: it is predictive (read before a spin, so the spin that would steal is not
//! started), it counts the threads of every process (a client on the same machine, other
//! services), and one read is cheap: 3.5 µs on the (busy, shared) 2-vCPU test machine, a
//! reuse within the interval 0.34 µs with its clock read (`cargo bench -p shmsrv-rt --bench
//! contention`, docs/BENCHMARKS.md "Adaptive spinning"): at most 0.35 % of a CPU at one read
//! per ms, and only while the loop has spin opportunities. The alternatives were worse fits: `/proc/stat`'s `procs_running` is the
//! same number behind a text that grows with the CPU count; `getrusage(RUSAGE_THREAD)`'s
//! involuntary context switches only tell *after* a spin that it was preempted (the CPU was
//! already taken), and a thread that is never preempted because it sleeps in epoll sees none;
//! `/proc/self/schedstat` run-queue wait time has the same after-the-fact problem. The reading
//! is system-wide on purpose: on a shared host (containers see the host's count) a spinner
//! would take CPU from neighbours too.
//!
//! `SHMSRV_SPIN_IGNORE_LOAD=1` in the environment (read once, when the signal is created)
//! turns the signal off: the gate then spins whatever the machine's load. It is a measurement
//! switch (to see what the rest of the gate does on a machine loaded by others), not a
//! setting; docs/BENCHMARKS.md "Adaptive spinning" says where it was used.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Where the runnable-thread count comes from.
#[derive(Debug)]
enum Source {
    /// `/proc/loadavg`, kept open.
    LoadAvg(File),
    /// A fixed count (tests, and a system without `/proc/loadavg`: `None`, never crowded).
    Fixed(Option<u32>),
}

/// Whether more threads are runnable than there are CPUs, sampled at most once per
/// [`Self::INTERVAL`]. One per loop; not shared between threads.
#[derive(Debug)]
pub struct Contention {
    source: Source,
    /// CPUs this process may run on.
    cpus: u32,
    /// When the signal was last read; `None`: never.
    read_at: Option<Instant>,
    /// The last reading's verdict.
    crowded: bool,
}

impl Contention {
    /// The longest a reading is reused.
    pub const INTERVAL: Duration = Duration::from_millis(1);

    /// Crowded means more than this many runnable threads per CPU. Two, not one: the spin
    /// yields its CPU every few µs ([`crate::SpinGate`]), so a runnable thread beside it costs
    /// it little; one per CPU kept the gate shut whenever a client shared the machine (at one
    /// connection, client + io_conn + md = 3 runnable on 2 CPUs).
    pub const CROWDED_PER_CPU: u32 = 2;

    /// The system's signal (`/proc/loadavg`, the CPUs of this process's affinity mask). Without
    /// `/proc/loadavg`, or with `SHMSRV_SPIN_IGNORE_LOAD=1`, never crowded.
    pub fn system() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let ignore = std::env::var_os("SHMSRV_SPIN_IGNORE_LOAD").is_some_and(|v| v == "1");
        let source = match File::open("/proc/loadavg") {
            Ok(f) if !ignore => Source::LoadAvg(f),
            _ => Source::Fixed(None),
        };
        Self { source, cpus, read_at: None, crowded: false }
    }

    /// A fixed reading: `running` runnable threads on `cpus` CPUs (`None`: never crowded).
    pub fn fixed(running: Option<u32>, cpus: u32) -> Self {
        Self { source: Source::Fixed(running), cpus: cpus.max(1), read_at: None, crowded: false }
    }

    /// The CPUs the count is compared with.
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// More than [`Self::CROWDED_PER_CPU`] runnable threads per CPU, as of the last reading;
    /// reads the signal again if the
    /// last reading is older than [`Self::INTERVAL`] (or `now` went backwards: a caller's stale
    /// clock).
    pub fn crowded(&mut self, now: Instant) -> bool {
        let fresh = self
            .read_at
            .is_some_and(|t| now.checked_duration_since(t).is_some_and(|age| age < Self::INTERVAL));
        if !fresh {
            self.read_at = Some(now);
            self.crowded = self.running().is_some_and(|r| r > Self::CROWDED_PER_CPU * self.cpus);
        }
        self.crowded
    }

    /// Reads the runnable-thread count now (no caching); `None` if it cannot be read.
    pub fn running(&self) -> Option<u32> {
        match &self.source {
            Source::Fixed(r) => *r,
            Source::LoadAvg(f) => {
                let mut buf = [0u8; 128];
                let n = f.read_at(&mut buf, 0).ok()?;
                procs_running(&buf[..n])
            }
        }
    }
}

/// The `R` of the 4th field (`R/T`) of a `/proc/loadavg` text, e.g. `0.52 0.58 0.59 3/467 1234`.
pub fn procs_running(text: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(text).ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    field.split_once('/')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procs_running_is_the_fourth_fields_numerator() {
        assert_eq!(procs_running(b"0.52 0.58 0.59 3/467 1234\n"), Some(3));
        assert_eq!(procs_running(b"24.04 25.40 24.62 22/272 21787\n"), Some(22));
        assert_eq!(procs_running(b"0.52 0.58 0.59"), None, "too short");
        assert_eq!(procs_running(b"0.52 0.58 0.59 3 1234"), None, "no slash");
        assert_eq!(procs_running(b"0.52 0.58 0.59 x/467 1234"), None, "not a number");
        assert_eq!(procs_running(&[0xff, b' ']), None, "not text");
    }

    #[test]
    fn the_system_signal_reads_a_count() {
        // On Linux the file exists; the reader itself is runnable, so the count is at least 1.
        let sut = Contention::system();
        if std::env::var_os("SHMSRV_SPIN_IGNORE_LOAD").is_none() {
            let r = sut.running().expect("/proc/loadavg readable");
            assert!(r >= 1, "{r}");
            // A second pread at offset 0 on the same descriptor reads again.
            assert!(sut.running().is_some());
        }
        assert!(sut.cpus() >= 1);
    }

    #[test]
    fn crowded_means_more_than_two_runnable_per_cpu() {
        let now = Instant::now();
        assert!(!Contention::fixed(Some(2), 2).crowded(now), "one each");
        assert!(!Contention::fixed(Some(3), 2).crowded(now), "a client beside io_conn and md");
        assert!(!Contention::fixed(Some(4), 2).crowded(now), "two each");
        assert!(Contention::fixed(Some(5), 2).crowded(now));
        assert!(Contention::fixed(Some(3), 1).crowded(now));
        assert!(!Contention::fixed(None, 2).crowded(now), "no reading: never crowded");
        assert_eq!(Contention::fixed(Some(1), 0).cpus(), 1, "at least one CPU");
    }

    #[test]
    fn a_reading_is_reused_within_the_interval() {
        let t0 = Instant::now();
        let mut sut = Contention::fixed(Some(5), 2);
        assert!(sut.crowded(t0));
        sut.source = Source::Fixed(Some(1));
        assert!(sut.crowded(t0 + Contention::INTERVAL / 2), "the cached verdict");
        assert!(!sut.crowded(t0 + Contention::INTERVAL), "read again");
        sut.source = Source::Fixed(Some(9));
        assert!(sut.crowded(t0), "a clock that went backwards reads again");
    }
}
