//! Attaching to io_conn's queue pair (and its stats segment), and re-attaching after io_conn
//! restarts or resets the pair.

use std::fmt;
use std::time::Duration;

use rt::notify::{self, NotifyState, Watchdog};
use shmq::pair::{MdSide, PairConfig, PairError};
use shmq::stats::StatsSegment;
use shmq::sys::ProcId;

use crate::control::Control;
use crate::runner::{Detach, Endpoint, Exit, RunError, Runner};
use crate::service::Service;
use crate::stats::MdStatsSink;

/// Why [`serve`] gave up.
#[derive(Debug)]
pub enum ServeError {
    /// Another live md holds the instance ([`PairError::Held`]): this one must not serve it.
    Held(PairError),
    /// The pair exists but cannot be used by us, and waiting will not help.
    Attach(PairError),
    /// The runner's event loop failed.
    Run(RunError),
    /// The queue pair is corrupt. md exits so that io_conn notices (pidfd) and resets the pair
    /// for the restarted md.
    Corrupt(Detach),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Held(e) => write!(f, "{e}; refusing to start a second md for it"),
            Self::Attach(e) => write!(f, "cannot attach: {e}"),
            Self::Run(e) => write!(f, "{e}"),
            Self::Corrupt(why) => write!(f, "{why}; exiting so that io_conn resets the pair"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Held(e) | Self::Attach(e) => Some(e),
            Self::Run(e) => Some(e),
            Self::Corrupt(_) => None,
        }
    }
}

/// First and longest pause between attach attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Attaches to instance `instance` of `pair` (waiting with backoff while io_conn is not there),
/// runs `runner` on it, and re-attaches whenever io_conn goes away or resets the pair, until
/// shutdown is requested. Returns `Ok(())` after a requested shutdown.
///
/// Attaching claims the instance for this process ([`shmq::ring::holder`]). If another live md
/// holds it, `serve` returns [`ServeError::Held`] at once; if the holder has exited, it waits
/// (with the backoff above) until io_conn has reset the pair and cleared the dead claim.
///
/// After each attach to a new io_conn (a new epoch) it also attaches io_conn's stats segment
/// (`{pair.name}.stats`), takes slot `instance` in it and gives the runner the sink
/// ([`Runner::set_stats_sink`]). Without a usable segment (io_conn has none, or it belongs to
/// another epoch) md logs a warning and serves without stats; it tries again at the next attach.
/// A reset of the pair by the same io_conn keeps the sink (and its counts).
///
/// Under systemd (`Type=notify`, see [`rt::notify`]) it sends `READY=1` after the first
/// attach, a `STATUS=` line on each attach and detach, `STOPPING=1` when shutdown is requested,
/// and pings the watchdog while it waits for io_conn (the runner pings it while it serves).
pub fn serve<S: Service>(
    runner: &mut Runner<S>,
    pair: &PairConfig,
    instance: u32,
    control: &Control,
) -> Result<(), ServeError>
where
    S::Flow: fmt::Debug,
{
    // (epoch, generation) of the pair we last served: a pair still showing them is stale.
    let mut stale: Option<(u64, u64)> = None;
    // Why the last stats attach failed (logged when it changes, not on every attempt).
    let mut stats_problem: Option<String> = None;
    let mut watchdog = Watchdog::from_env();
    let mut ready_sent = false;
    loop {
        let Some(side) = attach(pair, instance, control, stale, &mut watchdog)? else {
            let _ = notify::stopping();
            return Ok(());
        };
        stale = Some((side.epoch, side.generation));
        let attached = format!(
            "instance {instance} attached to io_conn epoch {} generation {}",
            side.epoch, side.generation
        );
        // Failures are not fatal: a missing notification shows up in `systemctl status`.
        let sent = if ready_sent {
            notify::status(&attached)
        } else {
            notify::send(&[NotifyState::Ready, NotifyState::Status(&attached)])
        };
        if let Err(e) = sent {
            log::warn!("systemd notification failed: {e}");
        }
        ready_sent = true;
        if runner.stats_sink().is_none_or(|s| s.epoch() != side.epoch) {
            runner.set_stats_sink(attach_stats(pair, instance, side.epoch, &mut stats_problem));
        }
        let io_pidfd = match side.creator.pidfd() {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::warn!(
                    "no pidfd for io_conn (pid {}): {e}; noticing its exit by generation only",
                    side.creator.pid
                );
                None
            }
        };
        let mut ep = Endpoint { rx: side.rx, rx_bell: side.rx_bell, tx: side.tx, io_pidfd };
        match runner.run(&mut ep, control).map_err(ServeError::Run)? {
            Exit::Shutdown => {
                let _ = notify::stopping();
                return Ok(());
            }
            Exit::Detached(why @ Detach::Corrupt(_)) => return Err(ServeError::Corrupt(why)),
            Exit::Detached(why) => {
                log::warn!("instance {instance}: {why}; waiting for io_conn to re-create the pair")
            }
        }
    }
}

/// One attach with backoff. `None`: shutdown was requested while waiting.
fn attach(
    pair: &PairConfig,
    instance: u32,
    control: &Control,
    stale: Option<(u64, u64)>,
    watchdog: &mut Watchdog,
) -> Result<Option<MdSide>, ServeError> {
    let mut backoff = BACKOFF_MIN;
    let mut last_reason = String::new();
    loop {
        watchdog.tick(std::time::Instant::now());
        if control.shutdown_requested() {
            return Ok(None);
        }
        let reason = match pair.attach(instance) {
            Ok(side) if Some((side.epoch, side.generation)) == stale => {
                format!(
                    "waiting for io_conn to reset instance {instance} (epoch {} generation {} is \
                     the one we left)",
                    side.epoch, side.generation
                )
            }
            Ok(side) => return Ok(Some(side)),
            Err(PairError::NotFound { what }) => {
                format!("waiting for io_conn (segment {what} not found)")
            }
            Err(PairError::NotReady { what }) => {
                format!("waiting for io_conn ({what} not ready)")
            }
            Err(e @ PairError::InUse { .. }) => return Err(ServeError::Attach(e)),
            // Another md serves this instance: refuse (the caller exits non-zero).
            Err(e @ PairError::Held { .. }) => return Err(ServeError::Held(e)),
            // Our predecessor died holding the pair: io_conn resets it (new generation, claim
            // cleared) once it has noticed and delivered the replies the dead md left; wait for
            // that instead of failing, so systemd's Restart= never ends in a failed unit.
            Err(e @ PairError::HeldByDead { .. }) => e.to_string(),
            Err(e) => format!("cannot attach instance {instance} yet: {e}"),
        };
        if reason != last_reason {
            log::info!("{reason}");
            let _ = notify::status(&reason);
            last_reason = reason;
        }
        if control.sleep(backoff.min(watchdog.period().unwrap_or(BACKOFF_MAX))) {
            return Ok(None);
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Attaches the stats segment of `pair` and takes slot `instance`, if the segment belongs to the
/// io_conn of `epoch`. `None` (with a warning when the reason is new): run without stats.
fn attach_stats(
    pair: &PairConfig,
    instance: u32,
    epoch: u64,
    last_problem: &mut Option<String>,
) -> Option<MdStatsSink> {
    let name = shmq::stats::segment_name(&pair.name);
    let problem = match StatsSegment::attach(pair.backend, &pair.name) {
        Ok(seg) if seg.epoch() != epoch => format!(
            "stats segment {name} is from io_conn epoch {}, the queue pair from epoch {epoch} \
             (a stale segment?)",
            seg.epoch()
        ),
        Ok(seg) => match MdStatsSink::attach(&seg, instance, ProcId::current()) {
            Ok(sink) => {
                log::info!("writing stats to slot {instance} of {name} (epoch {epoch})");
                *last_problem = None;
                return Some(sink);
            }
            Err(e) => format!("cannot take slot {instance} of stats segment {name}: {e}"),
        },
        Err(e) => format!("cannot attach stats segment {name}: {e}"),
    };
    if last_problem.as_deref() != Some(problem.as_str()) {
        log::warn!("{problem}; running without stats");
        *last_problem = Some(problem);
    } else {
        log::debug!("{problem}; running without stats");
    }
    None
}
