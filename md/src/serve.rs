//! Attaching to io_conn's queue pair (and its stats segment), and re-attaching after io_conn
//! restarts or resets the pair.
//!
//! # Noticing a restart of io_conn
//!
//! md learns that io_conn exited from a pidfd of it (readable when it exits). Without one (a
//! kernel without `pidfd_open`, io_conn in another pid namespace, or the test hook
//! `SHMSRV_MD_NO_PIDFD`) the generation alone cannot tell: a restarted io_conn removes and
//! re-creates the segments, and the old mapping keeps `ready = 1` and its generation forever. So a watcher
//! thread compares, every check interval, what the `in` segment's name refers to now with the
//! segment md mapped ([`shmq::region::Segment::is_replaced`]: dev + inode of the /dev/shm file,
//! or the SysV shmid), and makes a pipe readable when they differ; the runner watches that pipe
//! where it would watch the pidfd.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rt::notify::{self, NotifyState, Watchdog};
use shmq::pair::{MdSide, PairConfig, PairError};
use shmq::region::Segment;
use shmq::stats::{StatsError, StatsSegment};
use shmq::sys::ProcId;

use crate::control::Control;
use crate::runner::{Detach, Endpoint, Exit, LATE_STATS_EVERY, RunError, Runner, StatsAttempt};
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

/// How often md looks for a replaced segment when it has no pidfd of io_conn: the runner's
/// default `check_interval`, the longest it sleeps without looking at its pair.
const REPLACED_CHECK: Duration = Duration::from_secs(1);

/// How long md keeps retrying the stats segment of a freshly attached epoch while it is missing,
/// not ready or still the dead predecessor's. io_conn creates it right after the queue pairs and
/// before its event loop reads anything from md, so it normally appears within milliseconds.
const STATS_GRACE: Duration = Duration::from_secs(1);

/// Test hook: with this variable set (to anything), md opens no pidfd of io_conn, as on a kernel
/// without `pidfd_open`; it then notices a restart by the segments' identity (module docs).
pub(crate) const NO_PIDFD_ENV: &str = "SHMSRV_MD_NO_PIDFD";

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
/// ([`Runner::set_stats_sink`]). While the segment is missing, not ready or still of another
/// epoch (io_conn creates or replaces it right after the pairs, before its loop reads anything
/// from md), md retries for up to a second before it serves. Without a usable segment after that
/// md logs a warning and serves without stats, and the runner keeps trying once a second while
/// it serves ([`Runner::set_late_stats`]): a segment that appears later in the same epoch is
/// picked up, its slot then showing what md counted since the attach.
///
/// Without a pidfd of io_conn, a watcher thread notices a restart by the `in` segment's identity
/// (see the module docs).
/// A reset of the pair by the same io_conn keeps the sink (and its counts).
///
/// Under systemd (`Type=notify`, see [`rt::notify`]) it sends `READY=1` at its first attach, or
/// as soon as it has to wait for io_conn (with `STATUS=waiting for io_conn ...`), whichever comes
/// first; a `STATUS=` line on each attach and detach, `STOPPING=1` when shutdown is requested,
/// and pings the watchdog while it waits for io_conn (the runner pings it while it serves).
///
/// Why ready while waiting: `md@.service` is ordered *before* `io_conn.service`, so that
/// stopping the set stops io_conn first (it drains with every md still serving) and md after
/// (docs/ARCHITECTURE.md, "Stop order"). Starting the set then starts md first, and systemd
/// starts io_conn only once md is ready: an md that waited for io_conn before saying READY=1
/// would deadlock the start. An md started while io_conn runs attaches at once and says READY=1
/// attached, as before.
///
/// When io_conn goes away after shutdown was requested (a clean stop of the set: io_conn
/// stopped first, then md gets SIGTERM), `serve` returns at once: there is nobody left to hand
/// replies to, so waiting for `md.drain_deadline` would only delay the stop.
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
        let Some(side) = attach(pair, instance, control, stale, &mut watchdog, &mut ready_sent)?
        else {
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
            let sink = attach_stats(pair, instance, &side, control, &mut stats_problem);
            // Not there yet: the runner keeps trying while it serves (issue 14, finding 11).
            let late = sink.is_none().then(|| late_stats(pair, instance, side.epoch));
            runner.set_stats_sink(sink);
            runner.set_late_stats(late);
        }
        let pidfd = if std::env::var_os(NO_PIDFD_ENV).is_some() {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("disabled by {NO_PIDFD_ENV}"),
            ))
        } else {
            side.creator.pidfd()
        };
        // Keeps the watcher (if any) running while the runner serves; dropped after it returns.
        let mut _watch = None;
        let io_pidfd = match pidfd {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::warn!(
                    "no pidfd for io_conn (pid {}): {e}; watching its segment {} for a restart",
                    side.creator.pid,
                    pair.in_segment(instance)
                );
                match ReplacedWatch::start(pair, instance, &side) {
                    Ok((fd, w)) => {
                        _watch = Some(w);
                        Some(fd)
                    }
                    Err(e) => {
                        log::warn!("cannot watch the segment ({e}); noticing resets only");
                        None
                    }
                }
            }
        };
        let mut ep = Endpoint { rx: side.rx, rx_bell: side.rx_bell, tx: side.tx, io_pidfd };
        let exit = runner.run(&mut ep, control);
        drop(_watch.take());
        match exit.map_err(ServeError::Run)? {
            Exit::Shutdown => {
                let _ = notify::stopping();
                return Ok(());
            }
            Exit::Detached(why @ Detach::Corrupt(_)) => return Err(ServeError::Corrupt(why)),
            // Told to stop, and io_conn is gone or reset the pair: nothing is left to drain.
            Exit::Detached(why) if control.shutdown_requested() => {
                log::info!("instance {instance}: {why} while stopping; exiting now");
                let _ = notify::stopping();
                return Ok(());
            }
            Exit::Detached(why) => {
                log::warn!("instance {instance}: {why}; waiting for io_conn to re-create the pair")
            }
        }
    }
}

/// One attach with backoff. `None`: shutdown was requested while waiting. The first time it has
/// to wait (`ready_sent` false) it says `READY=1` with the reason as `STATUS=` (see [`serve`]).
fn attach(
    pair: &PairConfig,
    instance: u32,
    control: &Control,
    stale: Option<(u64, u64)>,
    watchdog: &mut Watchdog,
    ready_sent: &mut bool,
) -> Result<Option<MdSide>, ServeError> {
    let mut backoff = BACKOFF_MIN;
    let mut last_reason = String::new();
    loop {
        watchdog.tick(std::time::Instant::now());
        if control.shutdown_requested() {
            return Ok(None);
        }
        let mut level = log::Level::Info;
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
            // An upgrade of one side only: never attach across protocols (frames would be
            // misparsed). Nothing was claimed; wait (logged once, at error level) for an io_conn
            // of our version (a new epoch re-creates the pair).
            Err(e @ PairError::ProtocolMismatch { .. }) => {
                level = log::Level::Error;
                e.to_string()
            }
            Err(e) => format!("cannot attach instance {instance} yet: {e}"),
        };
        // Every status while here says what md waits for.
        let reason =
            if reason.starts_with("waiting") { reason } else { format!("waiting: {reason}") };
        if !*ready_sent {
            // Ready while waiting: io_conn.service is ordered after md@.service (see `serve`).
            log::log!(level, "{reason}; ready (io_conn may start after us)");
            if let Err(e) = notify::send(&[NotifyState::Ready, NotifyState::Status(&reason)]) {
                log::warn!("systemd notification failed: {e}");
            }
            *ready_sent = true;
            last_reason = reason;
        } else if reason != last_reason {
            log::log!(level, "{reason}");
            let _ = notify::status(&reason);
            last_reason = reason;
        }
        if control.sleep(backoff.min(watchdog.period().unwrap_or(BACKOFF_MAX))) {
            return Ok(None);
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Watches the name of a pair's `in` segment for a replacement (see the module docs): a thread
/// that makes a pipe readable once the name refers to another segment, or to none. Dropping it
/// stops the thread.
#[derive(Debug)]
struct ReplacedWatch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ReplacedWatch {
    /// Starts watching; returns the pipe's read end (for [`Endpoint::io_pidfd`]) and the watch.
    fn start(
        pair: &PairConfig,
        instance: u32,
        side: &MdSide,
    ) -> std::io::Result<(OwnedFd, ReplacedWatch)> {
        let name = pair.in_segment(instance);
        let seg = Segment::attach(pair.backend, &name, false).map_err(std::io::Error::other)?;
        // The mapping we just made must be the segment md attached: the same creator and epoch
        // (a restart in between already gives another one, which counts as replaced at once).
        let same = seg
            .ring_identity(0)
            .is_some_and(|id| id.epoch == side.epoch && id.creator == side.creator);
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread =
            std::thread::Builder::new().name("md-segment-watch".into()).spawn(move || {
                loop {
                    if !same || seg.is_replaced() {
                        log::warn!(
                            "segment {} was replaced or removed: io_conn restarted or stopped",
                            seg.location().display()
                        );
                        // Readable from now on: the runner detaches as when the pidfd fires.
                        let _ = nix::unistd::write(&wr, &[1]);
                        return;
                    }
                    match stopped.recv_timeout(REPLACED_CHECK) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        // Stopped (the sender was dropped) or told to stop.
                        _ => return,
                    }
                }
            })?;
        Ok((rd, ReplacedWatch { stop: Some(stop), thread: Some(thread) }))
    }
}

impl Drop for ReplacedWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Attaches the stats segment of `pair` and takes slot `instance`, if the segment belongs to the
/// io_conn of `side`'s epoch. While it is missing, not ready or of another epoch (io_conn has not
/// created or replaced it yet: it does that right after the pairs, before it reads anything from
/// md), it retries with backoff for [`STATS_GRACE`], as long as io_conn and the pair stay.
/// `None` (with a warning when the reason is new): run without stats.
fn attach_stats(
    pair: &PairConfig,
    instance: u32,
    side: &MdSide,
    control: &Control,
    last_problem: &mut Option<String>,
) -> Option<MdStatsSink> {
    let until = std::time::Instant::now() + STATS_GRACE;
    let mut backoff = BACKOFF_MIN;
    loop {
        let (problem, retry) = match try_attach_stats(pair, instance, side.epoch) {
            Ok(sink) => {
                *last_problem = None;
                return Some(sink);
            }
            Err(p) => p,
        };
        let waiting = retry
            && std::time::Instant::now() < until
            && !control.shutdown_requested()
            && side.rx.is_current()
            && side.creator.liveness() == shmq::sys::Liveness::Alive;
        if waiting {
            log::debug!("{problem}; retrying");
            if control.sleep(backoff) {
                return None;
            }
            backoff = (backoff * 2).min(Duration::from_millis(100));
            continue;
        }
        if last_problem.as_deref() != Some(problem.as_str()) {
            log::warn!("{problem}; running without stats");
            *last_problem = Some(problem);
        } else {
            log::debug!("{problem}; running without stats");
        }
        return None;
    }
}

/// The runner's late attempt at the stats segment of `epoch` ([`Runner::set_late_stats`]):
/// [`try_attach_stats`], logged once it succeeds or gives up.
fn late_stats(pair: &PairConfig, instance: u32, epoch: u64) -> StatsAttempt {
    let pair = pair.clone();
    Box::new(move || match try_attach_stats(&pair, instance, epoch) {
        Ok(sink) => {
            log::info!(
                "the stats segment appeared after md started serving; slot {instance} counts                  from the attach"
            );
            Ok(sink)
        }
        Err((problem, retry)) => {
            if retry {
                log::debug!("{problem}; trying again in {LATE_STATS_EVERY:?}");
            } else {
                log::warn!("{problem}; running without stats for the rest of this epoch");
            }
            Err(retry)
        }
    })
}

/// One attempt of [`attach_stats`]. `Err((why, worth_retrying))`.
fn try_attach_stats(
    pair: &PairConfig,
    instance: u32,
    epoch: u64,
) -> Result<MdStatsSink, (String, bool)> {
    let name = shmq::stats::segment_name(&pair.name);
    match StatsSegment::attach(pair.backend, &pair.name) {
        Ok(seg) if seg.epoch() != epoch => Err((
            format!(
                "stats segment {name} is from io_conn epoch {}, the queue pair from epoch \
                 {epoch} (a stale segment?)",
                seg.epoch()
            ),
            true,
        )),
        Ok(seg) => match MdStatsSink::attach(&seg, instance, ProcId::current()) {
            Ok(sink) => {
                log::info!("writing stats to slot {instance} of {name} (epoch {epoch})");
                Ok(sink)
            }
            Err(e) => {
                Err((format!("cannot take slot {instance} of stats segment {name}: {e}"), false))
            }
        },
        Err(e @ (StatsError::NotFound { .. } | StatsError::NotReady)) => {
            Err((format!("cannot attach stats segment {name}: {e}"), true))
        }
        Err(e) => Err((format!("cannot attach stats segment {name}: {e}"), false)),
    }
}
