//! Helpers shared by the segment and process tests: unique names, cleanup guards, a
//! deterministic frame generator both processes agree on, child processes (re-exec of the test
//! binary) and watchdogs.
#![allow(dead_code, unreachable_pub)]

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use shmq::frame::{FlowId, Kind};
use shmq::pair::PairConfig;
use shmq::region::{Backend, Segment};
use shmq::ring::{Consumer, Producer, PushError};
use shmq::{Doorbell, Frame};

/// Both backends, for tests that loop over them.
pub const BACKENDS: [Backend; 2] = [Backend::Posix, Backend::Sysv];

/// A machine-unique name for `test`: pid + test name.
pub fn unique(test: &str) -> String {
    format!("shmqt-{}-{test}", std::process::id())
}

/// A private runtime directory for `test` under cargo's target tmpdir (never /tmp). Not created.
pub fn runtime_dir(test: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("rt-{}-{test}", std::process::id()))
}

/// A pair config for `test` on `backend`.
pub fn pair_cfg(test: &str, backend: Backend) -> PairConfig {
    let tag = match backend {
        Backend::Posix => "p",
        Backend::Sysv => "s",
    };
    PairConfig {
        name: unique(&format!("{test}-{tag}")),
        runtime_dir: runtime_dir(&format!("{test}-{tag}")),
        backend,
        capacity: 1 << 16,
        max_payload: 2048,
    }
}

/// Removes pairs, segments and directories when dropped, also when a test panics.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub pairs: Vec<(PairConfig, u32)>,
    pub segments: Vec<(Backend, String)>,
    pub dirs: Vec<PathBuf>,
}

impl Cleanup {
    pub fn pair(cfg: &PairConfig, instances: u32) -> Self {
        let mut c = Self::default();
        c.add_pair(cfg, instances);
        c
    }
    pub fn add_pair(&mut self, cfg: &PairConfig, instances: u32) {
        for i in 0..instances {
            self.pairs.push((cfg.clone(), i));
        }
        self.dirs.push(cfg.runtime_dir.clone());
    }
    pub fn segment(backend: Backend, name: &str) -> Self {
        let mut c = Self::default();
        c.segments.push((backend, name.to_string()));
        c
    }
    pub fn dir(dir: &std::path::Path) -> Self {
        let mut c = Self::default();
        c.dirs.push(dir.to_path_buf());
        c
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (cfg, i) in &self.pairs {
            let _ = cfg.remove(*i);
        }
        for (b, n) in &self.segments {
            let _ = Segment::remove(*b, n);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// splitmix64: the deterministic source both processes use.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Payload length of frame `seq`: mostly small, sometimes up to `max`.
pub fn frame_len(seed: u64, seq: u64, max: usize) -> usize {
    let r = mix(seed ^ seq.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let cap = if r & 0xf == 0 { max } else { 200.min(max) };
    ((r >> 8) % (cap as u64 + 1)) as usize
}

/// Fills `buf` with the content of frame `seq`.
pub fn fill(seed: u64, seq: u64, buf: &mut [u8]) {
    let r = mix(seed.wrapping_add(seq));
    for (k, b) in buf.iter_mut().enumerate() {
        *b = (r >> ((k % 8) * 8)) as u8 ^ (k as u8);
    }
}

/// Checks that `f` is frame `seq` of stream `seed`.
pub fn check(seed: u64, seq: u64, max: usize, f: &Frame<'_>) -> Result<(), String> {
    if f.flowid != FlowId(seq) {
        return Err(format!("expected frame {seq}, got flowid {}", f.flowid.0));
    }
    if f.kind != Kind::Data {
        return Err(format!("frame {seq}: kind {:?}", f.kind));
    }
    let len = frame_len(seed, seq, max);
    if f.payload.len() != len {
        return Err(format!("frame {seq}: len {} != {len}", f.payload.len()));
    }
    let r = mix(seed.wrapping_add(seq));
    for (k, b) in f.payload.iter().enumerate() {
        if *b != (r >> ((k % 8) * 8)) as u8 ^ (k as u8) {
            return Err(format!("frame {seq}: byte {k} differs"));
        }
    }
    Ok(())
}

/// Pushes frame `seq` of stream `seed` (built in place).
pub fn push(tx: &mut Producer, seed: u64, seq: u64) -> Result<(), PushError> {
    let len = frame_len(seed, seq, tx.max_payload());
    let mut r = tx.reserve(len)?;
    fill(seed, seq, &mut r.buf()[..len]);
    r.commit(len, FlowId(seq), Kind::Data, 0)
}

/// Blocks until `bell` is readable or `timeout` passes. True if readable.
pub fn wait_readable(bell: &Doorbell, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(bell.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)), Ok(n) if n > 0)
}

/// How a test consumer waits when the ring is empty.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Spin (poll) only.
    Poll,
    /// Spin up to this budget, then sleep on the doorbell.
    Doorbell(Duration),
}

/// Consumes frames `from..to` of stream `seed`, checking each; returns Err on the first
/// mismatch, on corruption, or if `deadline` passes. `wait` chooses polling or doorbell sleeps;
/// the doorbell mode alternates a zero spin budget (sleep at once) with the given one.
pub fn consume(
    rx: &mut Consumer,
    bell: &Doorbell,
    seed: u64,
    from: u64,
    to: u64,
    wait: Wait,
    deadline: Instant,
) -> Result<(), String> {
    let max = rx.max_payload();
    let mut next = from;
    let mut err = None;
    while next < to {
        let n = rx
            .drain(256.min((to - next) as usize), |f| {
                if err.is_none() {
                    if let Err(e) = check(seed, next, max, &f) {
                        err = Some(e);
                    }
                }
                next += 1;
            })
            .map_err(|e| format!("at frame {next}: {e}"))?;
        if let Some(e) = err {
            return Err(e);
        }
        if n > 0 {
            continue;
        }
        if Instant::now() > deadline {
            return Err(format!("watchdog: stuck at frame {next} of {to}"));
        }
        match wait {
            Wait::Poll => {
                rx.spin(Duration::from_micros(50));
            }
            Wait::Doorbell(budget) => {
                // Alternate: sleep at once in odd 64 Ki-frame phases, spin first in even ones.
                let b = if (next >> 16) & 1 == 1 { Duration::ZERO } else { budget };
                if rx.spin(b) {
                    continue;
                }
                if rx.prepare_sleep(bell) {
                    if wait_readable(bell, Duration::from_secs(5)) {
                        rx.note_wakeup();
                    } else if rx.has_data() {
                        // Asleep for seconds with data waiting: the producer never rang.
                        return Err(format!("lost wake-up at frame {next}"));
                    }
                }
            }
        }
    }
    rx.publish();
    Ok(())
}

/// Environment variable that turns the `child` test into a child process role.
pub const CHILD_ENV: &str = "SHMQ_TEST_CHILD";

/// Starts this test binary again running only the test `child`, with `role` and `vars` in its
/// environment.
pub fn spawn_child(role: &str, vars: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1", "-q"]);
    cmd.env(CHILD_ENV, role);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child test process")
}

/// Environment for a child to rebuild `cfg` (see [`cfg_from_env`]).
pub fn cfg_env(cfg: &PairConfig) -> Vec<(&'static str, String)> {
    vec![
        ("SHMQ_T_NAME", cfg.name.clone()),
        ("SHMQ_T_DIR", cfg.runtime_dir.display().to_string()),
        (
            "SHMQ_T_BACKEND",
            match cfg.backend {
                Backend::Posix => "posix".into(),
                Backend::Sysv => "sysv".into(),
            },
        ),
        ("SHMQ_T_CAP", cfg.capacity.to_string()),
        ("SHMQ_T_MAX", cfg.max_payload.to_string()),
    ]
}

/// Reads an env var set by the parent.
pub fn var<T: std::str::FromStr>(k: &str) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("child: missing or bad {k}"))
}

/// The config a parent passed with [`cfg_env`].
pub fn cfg_from_env() -> PairConfig {
    PairConfig {
        name: var("SHMQ_T_NAME"),
        runtime_dir: PathBuf::from(var::<String>("SHMQ_T_DIR")),
        backend: match var::<String>("SHMQ_T_BACKEND").as_str() {
            "posix" => Backend::Posix,
            _ => Backend::Sysv,
        },
        capacity: var("SHMQ_T_CAP"),
        max_payload: var("SHMQ_T_MAX"),
    }
}

/// Waits for `child` to exit within `timeout`; kills it (by its pid) and panics otherwise.
pub fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("watchdog: child {} did not finish within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills a child on drop (a panicking test leaves no process behind).
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Retries `f` until it returns `Some` or `timeout` passes.
pub fn retry<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Frames per streaming test: millions in release builds, fewer under debug.
pub fn stream_frames() -> u64 {
    if cfg!(debug_assertions) { 300_000 } else { 3_000_000 }
}
