//! Two-process IPC benchmarks: the shmq ring (polled and doorbell) beside a pipe and a Unix
//! socket pair. Results and how to read them: docs/BENCHMARKS.md, "Two-process benchmarks".
//! (One file of ~600 lines: a bench target is one binary, and its parent/child re-exec protocol,
//! the four transports and the report are read together.)
//!
//! `cargo bench -p shmq --bench ipc` runs the full set (cargo passes `--bench`); without `--bench`
//! (as under `cargo test --benches`) it runs a smoke mode of about a second that only shows that
//! every path works. The child is forked: this binary is single-threaded when it forks, so the
//! child may do anything a normal process does. With two or more CPUs, the parent is pinned to
//! CPU 0 and the child to CPU 1 (`SHMQ_BENCH_PIN=0` turns that off).
//!
//! Every ring figure goes through the real path: `PairConfig::create` (io_conn side) and
//! `PairConfig::attach` (md side) over POSIX segments, FIFO doorbells in a private directory.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use shmq::frame::{FlowId, Kind};
use shmq::pair::PairConfig;
use shmq::region::Backend;
use shmq::ring::{Consumer, Producer, PushError};
use shmq::sync::Ordering;
use shmq::{Doorbell, Frame};

/// Producer flushes (publishes its tail) once per this many frames at saturation...
const BATCH: u64 = 32;
/// ...or once this many payload bytes are unpublished (so 16 KiB frames are not published in
/// half-ring bursts).
const BATCH_BYTES: usize = 64 * 1024;
/// Ring data bytes for the benchmarks.
const RING: u64 = 1 << 20;
const SIZES: [usize; 4] = [16, 64, 1024, 16 * 1024];
/// A consumer or a waiting side gives up after this long (the bench fails rather than hangs).
const WATCHDOG: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug)]
enum Wait {
    Poll,
    /// Spin this long, then sleep on the doorbell.
    Doorbell(Duration),
}

impl Wait {
    fn label(self) -> String {
        match self {
            Self::Poll => "polled".into(),
            Self::Doorbell(d) => format!("doorbell, spin {} us", d.as_micros()),
        }
    }
}

struct Ctx {
    full: bool,
    /// `SHMQ_BENCH_ONLY`: run only the sections whose names contain one of these words
    /// (`posix`, `sysv`, `pipe`, `socket`, `rtt`, `oneway`); empty: everything.
    only: Vec<String>,
    pin: bool,
    dir: PathBuf,
    seq: u32,
}

impl Ctx {
    fn cfg(&mut self, backend: Backend) -> PairConfig {
        self.seq += 1;
        PairConfig {
            name: format!("shmq-bench-{}-{}", std::process::id(), self.seq),
            runtime_dir: self.dir.clone(),
            backend,
            capacity: RING,
            max_payload: 16 * 1024,
        }
    }
    fn want(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| section.contains(w.as_str()))
    }
    fn scale(&self, full: u64, smoke: u64) -> u64 {
        if self.full { full } else { smoke }
    }
}

fn pin_to(cpu: usize, on: bool) {
    if !on {
        return;
    }
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), &set);
    }
}

/// Forks; the child runs `f` pinned to CPU 1 and exits with 0 (or 1 if `f` returns false).
fn spawn(ctx: &Ctx, f: impl FnOnce() -> bool) -> Pid {
    // Nothing buffered may be flushed twice.
    let _ = std::io::stdout().flush();
    // SAFETY: this benchmark is single-threaded when it forks (no other thread can hold a lock
    // the child would need); the child ends with `_exit`, never returning into main.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // A child spinning on a ring must not outlive a parent that panicked.
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            pin_to(1, ctx.pin);
            let ok = f();
            // SAFETY: _exit ends the child without running the parent's exit handlers twice.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => child,
    }
}

fn reap(child: Pid) {
    match waitpid(child, None) {
        Ok(WaitStatus::Exited(_, 0)) => {}
        other => panic!("benchmark child failed: {other:?}"),
    }
}

fn wait_readable(bell: &Doorbell, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(bell.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, ms), Ok(n) if n > 0)
}

/// Waits until `rx` has data: spinning (Poll) or spin-then-sleep on `bell`. False on watchdog.
fn await_data(rx: &mut Consumer, bell: &Doorbell, wait: Wait, deadline: Instant) -> bool {
    match wait {
        Wait::Poll => loop {
            if rx.spin(Duration::from_millis(10)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
        },
        Wait::Doorbell(budget) => loop {
            if rx.spin(budget) {
                return true;
            }
            if rx.prepare_sleep(bell) {
                if wait_readable(bell, Duration::from_millis(500)) {
                    rx.note_wakeup();
                }
            } else {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
        },
    }
}

fn push_spin(tx: &mut Producer, seq: u64, payload: &[u8]) {
    loop {
        match tx.try_push(FlowId(seq), Kind::Data, 0, payload) {
            Ok(()) => return,
            // `Full` already flushed (and rang the consumer if it sleeps).
            Err(PushError::Full) => std::hint::spin_loop(),
            Err(e) => panic!("push: {e}"),
        }
    }
}

/// Removes a pair's segments and FIFOs when dropped (also when a benchmark panics).
struct PairGuard(PairConfig);

impl Drop for PairGuard {
    fn drop(&mut self) {
        let _ = self.0.remove(0);
    }
}

struct OneWay {
    frames_per_s: f64,
    gb_per_s: f64,
    doorbells_per_frame: f64,
    sleeps: u64,
}

/// One-way stream of `n` frames of `size` bytes, child (md) producing on `out`, parent (io_conn)
/// consuming with `wait`. The consumer copies each payload out, as a socket write would.
fn ring_oneway(ctx: &mut Ctx, backend: Backend, size: usize, wait: Wait, n: u64) -> OneWay {
    let cfg = ctx.cfg(backend);
    let _guard = PairGuard(cfg.clone());
    let mut io = cfg.create(0, 1).expect("create pair");
    let child_cfg = cfg.clone();
    let child = spawn(ctx, move || {
        let mut md = child_cfg.attach(0).expect("attach pair");
        let buf = vec![0x5au8; size];
        let batch =
            std::env::var("SHMQ_BENCH_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(BATCH);
        let per_flush = batch.min((BATCH_BYTES / size).max(1) as u64);
        for i in 0..n {
            push_spin(&mut md.tx, i, &buf);
            if (i + 1).is_multiple_of(per_flush) {
                md.tx.flush();
            }
        }
        md.tx.flush();
        true
    });
    let mut sink = vec![0u8; size];
    let deadline = Instant::now() + WATCHDOG;
    let mut next = 0u64;
    let mut t0 = None;
    while next < n {
        let got = io
            .rx
            .drain(256, |f: Frame<'_>| {
                assert_eq!(f.flowid.0, next, "order");
                sink[..f.payload.len()].copy_from_slice(f.payload);
                next += 1;
            })
            .expect("ring corrupt");
        if got > 0 && t0.is_none() {
            t0 = Some(Instant::now());
        }
        if got == 0 && next < n {
            assert!(await_data(&mut io.rx, &io.rx_bell, wait, deadline), "watchdog");
        }
    }
    let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64()).max(1e-9);
    std::hint::black_box(&sink);
    reap(child);
    let h = io.rx.header();
    let doorbells = h.producer.doorbells.load(Ordering::Relaxed);
    let sleeps = h.consumer.sleeps.load(Ordering::Relaxed);
    drop(io);
    let fps = (n - 1) as f64 / secs;
    OneWay {
        frames_per_s: fps,
        gb_per_s: fps * size as f64 / 1e9,
        doorbells_per_frame: doorbells as f64 / n as f64,
        sleeps,
    }
}

/// One-way stream over a byte stream (pipe or socket): the writer makes one `write` per
/// message; the reader reads up to 64 KiB per `read`.
fn stream_oneway(
    ctx: &Ctx,
    mut r: impl Read,
    w: impl Write + 'static,
    size: usize,
    n: u64,
) -> (f64, f64) {
    let child = spawn(ctx, move || {
        let mut w = w;
        let buf = vec![0x5au8; size];
        for _ in 0..n {
            if w.write_all(&buf).is_err() {
                return false;
            }
        }
        true
    });
    let total = n * size as u64;
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut t0 = None;
    while got < total {
        let k = r.read(&mut buf).expect("read");
        assert!(k > 0, "writer closed early");
        if t0.is_none() {
            t0 = Some(Instant::now());
        }
        got += k as u64;
    }
    let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64()).max(1e-9);
    reap(child);
    let fps = (n - 1) as f64 / secs;
    (fps, fps * size as f64 / 1e9)
}

/// Runs `f` `runs` times; returns the run with the median frames/s and the (min, max) spread.
fn median_of<T>(runs: usize, mut f: impl FnMut() -> T, key: impl Fn(&T) -> f64) -> (T, f64, f64) {
    let mut v: Vec<T> = (0..runs.max(1)).map(|_| f()).collect();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let (lo, hi) = (key(&v[0]), key(&v[v.len() - 1]));
    let mid = v.len() / 2;
    (v.swap_remove(mid), lo, hi)
}

fn percentiles(mut v: Vec<u64>) -> (u64, u64, u64, usize) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99), at(0.999), v.len())
}

/// Ping-pong of `size`-byte frames: parent (io_conn) sends on `in`, child (md) replies on `out`.
/// One clock read per round trip (the end of one is the start of the next).
fn ring_rtt(ctx: &mut Ctx, wait: Wait, size: usize, n: u64) -> (u64, u64, u64, usize) {
    let cfg = ctx.cfg(Backend::Posix);
    let _guard = PairGuard(cfg.clone());
    let mut io = cfg.create(0, 1).expect("create pair");
    let child_cfg = cfg.clone();
    let warm = n / 10;
    let child = spawn(ctx, move || {
        let mut md = child_cfg.attach(0).expect("attach pair");
        let deadline = Instant::now() + WATCHDOG;
        let mut reply = vec![0u8; size];
        for i in 0..n + warm {
            loop {
                match md.rx.peek().expect("ring corrupt") {
                    Some(f) => {
                        reply.copy_from_slice(f.payload);
                        break;
                    }
                    None => {
                        if !await_data(&mut md.rx, &md.rx_bell, wait, deadline) {
                            return false;
                        }
                    }
                }
            }
            md.rx.release();
            md.rx.publish();
            push_spin(&mut md.tx, i, &reply);
            md.tx.flush();
        }
        true
    });
    let deadline = Instant::now() + WATCHDOG;
    let ping = vec![7u8; size];
    let mut rtts = Vec::with_capacity(n as usize);
    let mut t = Instant::now();
    for i in 0..n + warm {
        push_spin(&mut io.tx, i, &ping);
        io.tx.flush();
        loop {
            match io.rx.peek().expect("ring corrupt") {
                Some(f) => {
                    assert_eq!(f.flowid.0, i);
                    break;
                }
                None => assert!(await_data(&mut io.rx, &io.rx_bell, wait, deadline), "watchdog"),
            }
        }
        io.rx.release();
        io.rx.publish();
        let now = Instant::now();
        if i >= warm {
            rtts.push((now - t).as_nanos() as u64);
        }
        t = now;
    }
    reap(child);
    drop(io);
    percentiles(rtts)
}

/// The hardware floor: ping-pong of one counter through two cache lines of a shared segment
/// (the parent stores `i` in line 0, the child echoes it in line 1), no ring, no frames.
fn raw_rtt(ctx: &mut Ctx, n: u64) -> (u64, u64, u64, usize) {
    use shmq::region::Segment;
    use shmq::sync::AtomicU64;
    ctx.seq += 1;
    let name = format!("shmq-bench-{}-{}", std::process::id(), ctx.seq);
    let seg = Segment::create(Backend::Posix, &name, 4096, 0o600).expect("segment");
    let base = seg.as_ptr();
    // SAFETY: the segment is 4096 bytes, page-aligned, zeroed and outlives both references (the
    // child inherits the MAP_SHARED mapping across fork and exits before the parent unmaps);
    // offsets 0 and 128 are 8-aligned and in bounds; all access is atomic.
    let (ping, pong) = unsafe { (&*base.cast::<AtomicU64>(), &*base.add(128).cast::<AtomicU64>()) };
    let warm = n / 10;
    let child = spawn(ctx, move || {
        for i in 1..=n + warm {
            // Acquire/Release: a message-passing pair; the value is the whole message.
            while ping.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            pong.store(i, Ordering::Release);
        }
        true
    });
    let mut rtts = Vec::with_capacity(n as usize);
    let mut t = Instant::now();
    for i in 1..=n + warm {
        ping.store(i, Ordering::Release);
        while pong.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
        let now = Instant::now();
        if i > warm {
            rtts.push((now - t).as_nanos() as u64);
        }
        t = now;
    }
    reap(child);
    drop(seg);
    let _ = Segment::remove(Backend::Posix, &name);
    percentiles(rtts)
}

/// Ping-pong of 64-byte messages over a byte stream pair: blocking reads (a kernel wake-up each
/// way).
fn stream_rtt<S: Read + Write + 'static>(
    ctx: &Ctx,
    mut a: S,
    b: S,
    n: u64,
) -> (u64, u64, u64, usize) {
    let warm = n / 10;
    let child = spawn(ctx, move || {
        let mut b = b;
        let mut m = [0u8; 64];
        for _ in 0..n + warm {
            if b.read_exact(&mut m).is_err() || b.write_all(&m).is_err() {
                return false;
            }
        }
        true
    });
    let mut m = [3u8; 64];
    let mut rtts = Vec::with_capacity(n as usize);
    let mut t = Instant::now();
    for i in 0..n + warm {
        a.write_all(&m).expect("write");
        a.read_exact(&mut m).expect("read");
        let now = Instant::now();
        if i >= warm {
            rtts.push((now - t).as_nanos() as u64);
        }
        t = now;
    }
    reap(child);
    percentiles(rtts)
}

/// A pipe pair as one bidirectional stream (two pipes).
struct PipeDuplex {
    r: std::io::PipeReader,
    w: std::io::PipeWriter,
}
impl Read for PipeDuplex {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(b)
    }
}
impl Write for PipeDuplex {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.w.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn pipe_duplex() -> (PipeDuplex, PipeDuplex) {
    let (r1, w1) = std::io::pipe().expect("pipe");
    let (r2, w2) = std::io::pipe().expect("pipe");
    (PipeDuplex { r: r1, w: w2 }, PipeDuplex { r: r2, w: w1 })
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 { format!("{:.2} M", r / 1e6) } else { format!("{:.1} k", r / 1e3) }
}

fn machine(cpus: usize) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cpus} CPUs, Linux {}", kernel.trim())
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cpus >= 2 && std::env::var("SHMQ_BENCH_PIN").map_or(true, |v| v != "0");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ipc-bench-{}", std::process::id()));
    let only = std::env::var("SHMQ_BENCH_ONLY")
        .map(|v| v.split(',').filter(|w| !w.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    let mut ctx = Ctx { full, only, pin, dir: dir.clone(), seq: 0 };
    let start = Instant::now();
    pin_to(0, pin);
    println!(
        "# shmq ipc bench ({}), {}, pinned: {}",
        if full { "full" } else { "smoke: pass --bench for real figures" },
        machine(cpus),
        if pin { "parent CPU 0, child CPU 1" } else { "no" }
    );

    println!("\n## One-way throughput (child produces, parent consumes and copies out)");
    let runs = if full { 3 } else { 1 };
    println!("(median of {runs} runs; min-max of frames/s in brackets)\n");
    println!("| transport | payload | consumer | frames/s | GB/s | doorbells/frame | sleeps |");
    println!("|---|---|---|---|---|---|---|");
    let waits =
        [Wait::Poll, Wait::Doorbell(Duration::ZERO), Wait::Doorbell(Duration::from_micros(50))];
    // `SHMQ_BENCH_SIZES=64,1024` narrows the one-way ring sizes (for experiments).
    let sizes: Vec<usize> = std::env::var("SHMQ_BENCH_SIZES")
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|_| SIZES.to_vec());
    for size in sizes.into_iter().take(if ctx.want("oneway posix") { usize::MAX } else { 0 }) {
        // `SHMQ_BENCH_ONEWAY_N` sets the frames per one-way run (default: 500 MB worth, between
        // 100 000 and 8 000 000).
        let n = std::env::var("SHMQ_BENCH_ONEWAY_N").ok().and_then(|v| v.parse().ok());
        let n =
            ctx.scale(n.unwrap_or((500_000_000 / size as u64).clamp(100_000, 8_000_000)), 10_000);
        for wait in waits {
            let (r, lo, hi) = median_of(
                runs,
                || ring_oneway(&mut ctx, Backend::Posix, size, wait, n),
                |r| r.frames_per_s,
            );
            println!(
                "| shm ring (posix) | {size} B | {} | {} [{}-{}] | {:.2} | {:.5} | {} |",
                wait.label(),
                fmt_rate(r.frames_per_s),
                fmt_rate(lo),
                fmt_rate(hi),
                r.gb_per_s,
                r.doorbells_per_frame,
                r.sleeps
            );
        }
    }
    let n = ctx.scale(8_000_000, 10_000);
    for wait in [Wait::Poll, Wait::Doorbell(Duration::ZERO)]
        .into_iter()
        .take(if ctx.want("oneway sysv") { usize::MAX } else { 0 })
    {
        let (r, lo, hi) = median_of(
            runs,
            || ring_oneway(&mut ctx, Backend::Sysv, 64, wait, n),
            |r| r.frames_per_s,
        );
        println!(
            "| shm ring (sysv) | 64 B | {} | {} [{}-{}] | {:.2} | {:.5} | {} |",
            wait.label(),
            fmt_rate(r.frames_per_s),
            fmt_rate(lo),
            fmt_rate(hi),
            r.gb_per_s,
            r.doorbells_per_frame,
            r.sleeps
        );
    }
    for size in [64usize, 1024].into_iter().take(if ctx.want("oneway pipe socket") {
        usize::MAX
    } else {
        0
    }) {
        let n = ctx.scale(if size == 64 { 1_000_000 } else { 500_000 }, 2_000);
        let ((fps, gbs), lo, hi) = median_of(
            runs,
            || {
                let (r, w) = std::io::pipe().expect("pipe");
                stream_oneway(&ctx, r, w, size, n)
            },
            |r| r.0,
        );
        println!(
            "| pipe | {size} B | blocking read | {} [{}-{}] | {gbs:.2} | - | - |",
            fmt_rate(fps),
            fmt_rate(lo),
            fmt_rate(hi)
        );
        let ((fps, gbs), lo, hi) = median_of(
            runs,
            || {
                let (a, b) = UnixStream::pair().expect("socketpair");
                stream_oneway(&ctx, a, b, size, n)
            },
            |r| r.0,
        );
        println!(
            "| unix socketpair | {size} B | blocking read | {} [{}-{}] | {gbs:.2} | - | - |",
            fmt_rate(fps),
            fmt_rate(lo),
            fmt_rate(hi)
        );
    }

    println!("\n## Round trip (ns)");
    println!("| transport | payload each way | wait | p50 | p99 | p99.9 | samples |");
    println!("|---|---|---|---|---|---|---|");
    // `SHMQ_BENCH_RTT_N` sets the polled round trips per case (default 1 000 000; fewer on a
    // busy machine, where a preempted spinner makes each round trip cost a time slice).
    let rtt_n = std::env::var("SHMQ_BENCH_RTT_N").ok().and_then(|v| v.parse().ok());
    let polled_n = ctx.scale(rtt_n.unwrap_or(1_000_000), 500);
    let cases = [
        ("shm ring", Wait::Poll, 8, polled_n),
        ("shm ring", Wait::Poll, 64, polled_n),
        ("shm ring", Wait::Doorbell(Duration::ZERO), 64, ctx.scale(50_000, 100)),
    ];
    for (name, wait, size, n) in
        cases.into_iter().take(if ctx.want("rtt posix") { usize::MAX } else { 0 })
    {
        let (p50, p99, p999, k) = ring_rtt(&mut ctx, wait, size, n);
        println!("| {name} | {size} B | {} | {p50} | {p99} | {p999} | {k} |", wait.label());
    }
    if ctx.want("rtt raw") {
        let n = polled_n;
        let (p50, p99, p999, k) = raw_rtt(&mut ctx, n);
        println!(
            "| raw shared atomic (hardware floor) | 8 B | polled | {p50} | {p99} | {p999} | {k} |"
        );
    }
    let n = ctx.scale(50_000, 100);
    if ctx.want("rtt pipe") {
        let (a, b) = pipe_duplex();
        let (p50, p99, p999, k) = stream_rtt(&ctx, a, b, n);
        println!("| pipe | 64 B | blocking read | {p50} | {p99} | {p999} | {k} |");
    }
    if ctx.want("rtt socket") {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let (p50, p99, p999, k) = stream_rtt(&ctx, a, b, n);
        println!("| unix socketpair | 64 B | blocking read | {p50} | {p99} | {p999} | {k} |");
    }

    let _ = std::fs::remove_dir_all(&dir);
    println!("\n# done in {:.1} s", start.elapsed().as_secs_f64());
}
