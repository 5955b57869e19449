//! `--spawn-md N`: md children for development (no systemd).
//!
//! Used by the event loop. Each child runs `BINARY [--config PATH] --instance i` in its own
//! process group, where BINARY is instance i's group binary (`[[md.group]] binary`) or else the md
//! binary ([`SpawnMd::new`] resolves them from the config). Its own process group (so a terminal's Ctrl-C reaches io_conn only, which then stops them in order). Each is
//! watched through a pidfd in the loop's epoll; one that exits is reaped, logged and restarted
//! after a backoff (100 ms doubling to 5 s, reset once a child has run for 10 s). On shutdown
//! they get SIGTERM and are waited for (SIGKILL after a grace period).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How to start md children.
#[derive(Debug, Clone)]
pub struct SpawnMd {
    /// The md executable: what an instance runs when `binaries` has no entry for it.
    pub bin: PathBuf,
    /// Passed as `--config PATH` (None: md uses its default).
    pub config: Option<PathBuf>,
    /// Instances 0..count are started.
    pub count: u32,
    /// The executable of instance i (`binaries[i]`), from its `[[md.group]]`; an instance past
    /// the end runs `bin`. [`SpawnMd::new`] fills it from the config.
    pub binaries: Vec<PathBuf>,
}

impl SpawnMd {
    /// Children for instances `0..count` of `cfg`: instance i runs
    /// `cfg.binary_for(i, &bin)` (its group's `binary`, else `bin`, the md binary).
    pub fn new(cfg: &config::Config, bin: PathBuf, config: Option<PathBuf>, count: u32) -> Self {
        let binaries = (0..count).map(|i| cfg.binary_for(i, &bin)).collect();
        Self { bin, config, count, binaries }
    }

    /// The executable instance `i` runs.
    pub fn binary(&self, i: u32) -> &Path {
        self.binaries.get(i as usize).unwrap_or(&self.bin)
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const STABLE_AFTER: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Kid {
    child: Option<Child>,
    pidfd: Option<OwnedFd>,
    started: Instant,
    restart_at: Option<Instant>,
    backoff: Duration,
}

/// The md children.
#[derive(Debug)]
pub(crate) struct Children {
    spec: SpawnMd,
    kids: Vec<Kid>,
    /// The executable of the instance [`Children::start`] was last called for.
    last: PathBuf,
}

impl Children {
    pub(crate) fn new(spec: SpawnMd) -> Self {
        let now = Instant::now();
        let kids = (0..spec.count)
            .map(|_| Kid {
                child: None,
                pidfd: None,
                started: now,
                restart_at: Some(now),
                backoff: BACKOFF_MIN,
            })
            .collect();
        let last = spec.bin.clone();
        Self { spec, kids, last }
    }

    /// The executable of the instance last started (or tried): what a failed
    /// [`Children::start`] ran.
    pub(crate) fn bin(&self) -> &Path {
        &self.last
    }

    pub(crate) fn count(&self) -> u32 {
        self.spec.count
    }

    /// Starts instance `i`; returns its pidfd (to add to epoll) on success.
    pub(crate) fn start(&mut self, i: u32, now: Instant) -> io::Result<&OwnedFd> {
        let kid = &mut self.kids[i as usize];
        kid.restart_at = None;
        let bin = self.spec.binary(i);
        self.last = bin.to_owned();
        if bin != self.spec.bin {
            log::info!("md instance {i} runs {} (its [[md.group]] binary)", bin.display());
        }
        let mut cmd = Command::new(bin);
        if let Some(c) = &self.spec.config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("--instance").arg(i.to_string()).stdin(Stdio::null()).process_group(0);
        // systemd's notification socket and watchdog are io_conn's (`NotifyAccess=main`): a
        // child that said READY=1 or pinged the watchdog would speak for io_conn (or be
        // rejected and logged by systemd).
        use rt::notify::{NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC};
        for var in [NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID] {
            cmd.env_remove(var);
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                kid.restart_at = Some(now + kid.backoff);
                kid.backoff = (kid.backoff * 2).min(BACKOFF_MAX);
                return Err(e);
            }
        };
        let pid = child.id();
        kid.started = now;
        kid.child = Some(child);
        let pidfd = shmq::sys::ProcId::of(pid).and_then(|p| p.pidfd())?;
        log::info!("started md instance {i} (pid {pid})");
        Ok(kid.pidfd.insert(pidfd))
    }

    /// Instance `i`'s pidfd became readable: reap it, schedule a restart unless `stopping`.
    /// Returns the pidfd (to remove from epoll) and the pid that exited.
    pub(crate) fn on_exit(
        &mut self,
        i: u32,
        now: Instant,
        stopping: bool,
    ) -> (Option<OwnedFd>, Option<u32>) {
        let Some(kid) = self.kids.get_mut(i as usize) else { return (None, None) };
        let pidfd = kid.pidfd.take();
        let mut pid = None;
        if let Some(mut child) = kid.child.take() {
            pid = Some(child.id());
            match child.try_wait() {
                Ok(Some(status)) => {
                    log::error!("md instance {i} (pid {}) exited: {status}", child.id())
                }
                Ok(None) => {
                    // The pidfd said it exited; reap it for sure.
                    let status = child.wait();
                    log::error!("md instance {i} (pid {}) exited: {status:?}", child.id());
                }
                Err(e) => {
                    log::error!("md instance {i} (pid {}) exited; wait failed: {e}", child.id())
                }
            }
        }
        if now.duration_since(kid.started) >= STABLE_AFTER {
            kid.backoff = BACKOFF_MIN;
        }
        if !stopping {
            kid.restart_at = Some(now + kid.backoff);
            log::warn!("restarting md instance {i} in {:?}", kid.backoff);
            kid.backoff = (kid.backoff * 2).min(BACKOFF_MAX);
        }
        (pidfd, pid)
    }

    /// Earliest pending restart.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.kids.iter().filter_map(|k| k.restart_at).min()
    }

    /// An instance whose restart is due, if any.
    pub(crate) fn due(&self, now: Instant) -> Option<u32> {
        self.kids.iter().position(|k| k.restart_at.is_some_and(|t| t <= now)).map(|i| i as u32)
    }

    /// SIGTERMs every child, waits up to a grace period, then SIGKILLs the rest. Blocking: only
    /// at exit.
    pub(crate) fn stop_all(&mut self) {
        for kid in &mut self.kids {
            kid.restart_at = None;
            if let Some(c) = &kid.child {
                if let Ok(pid) = i32::try_from(c.id()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                }
            }
        }
        let until = Instant::now() + GRACE;
        for (i, kid) in self.kids.iter_mut().enumerate() {
            let Some(mut child) = kid.child.take() else { continue };
            kid.pidfd = None;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        log::info!("md instance {i} (pid {}) stopped: {status}", child.id());
                        break;
                    }
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Ok(None) => {
                        log::warn!(
                            "md instance {i} (pid {}) ignored SIGTERM; killing it",
                            child.id()
                        );
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Err(e) => {
                        log::warn!("waiting for md instance {i}: {e}");
                        break;
                    }
                }
            }
        }
    }
}
