//! Two real processes over real segments (both backends): streaming with order and content
//! checks and doorbell sleeps, kill -9 of either side, stale segments of a dead creator, and
//! liveness of exited processes.
//!
//! Children are this test binary re-executed with `SHMQ_TEST_CHILD=<role>` running only the test
//! `child` (safer than fork in the threaded test harness). Every wait has a generous watchdog;
//! nothing asserts on time.

mod util;

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use shmq::frame::Kind;
use shmq::pair::PairError;
use shmq::ring::{Producer, PushError};
use shmq::sys::{Liveness, ProcId, pidfd_has_exited};
use util::*;

const WATCHDOG: Duration = Duration::from_secs(120);

/// Child entry point: a no-op unless started by [`spawn_child`].
#[test]
fn child() {
    let Ok(role) = std::env::var(CHILD_ENV) else { return };
    // Die with the test that started us, even if it is killed without cleaning up.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let code = match run_child(&role) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("child {role} (pid {}): {e}", std::process::id());
            1
        }
    };
    std::process::exit(code);
}

fn run_child(role: &str) -> Result<(), String> {
    let cfg = cfg_from_env();
    let deadline = Instant::now() + WATCHDOG;
    let attach = || {
        retry(Duration::from_secs(30), || match cfg.attach(0) {
            Ok(md) => Some(Ok(md)),
            Err(PairError::NotFound { .. } | PairError::NotReady { .. }) => None,
            Err(e) => Some(Err(e.to_string())),
        })
        .unwrap_or_else(|| Err("attach: timed out".into()))
    };
    match role {
        // md: consume frames 0..N of SEED from `in`, then report N on `out`.
        "consume" => {
            let mut md = attach()?;
            let (seed, n): (u64, u64) = (var("SHMQ_T_SEED"), var("SHMQ_T_N"));
            let wait = match var::<u64>("SHMQ_T_SPIN_US") {
                u64::MAX => Wait::Poll,
                us => Wait::Doorbell(Duration::from_micros(us)),
            };
            consume(&mut md.rx, &md.rx_bell, seed, 0, n, wait, deadline)?;
            md.tx
                .try_push(shmq::FlowId(n), Kind::Data, 0, &n.to_le_bytes())
                .map_err(|e| e.to_string())?;
            md.tx.flush();
            Ok(())
        }
        // md: consume (and check) whatever arrives, forever (until killed).
        "consume_forever" => {
            let mut md = attach()?;
            let seed: u64 = var("SHMQ_T_SEED");
            consume(
                &mut md.rx,
                &md.rx_bell,
                seed,
                0,
                u64::MAX,
                Wait::Doorbell(Duration::ZERO),
                Instant::now() + Duration::from_secs(3600),
            )
        }
        // md: produce frames 0..N of SEED on `out` (N = u64::MAX: until killed).
        "produce" => {
            let mut md = attach()?;
            let (seed, n): (u64, u64) = (var("SHMQ_T_SEED"), var("SHMQ_T_N"));
            let creator = md.creator.pidfd().map_err(|e| format!("pidfd of creator: {e}"))?;
            produce(&mut md.tx, seed, 0, n, &creator, deadline, false)
        }
        // io_conn: create the pair and hold it until killed.
        "create_hold" => {
            let _io = cfg.create(0, 77).map_err(|e| e.to_string())?;
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "exit" => Ok(()),
        other => Err(format!("unknown role {other}")),
    }
}

/// Pushes frames `from..to` of `seed`, flushing in batches of varying size. On `Full` it waits
/// for the consumer, checking `peer` (its pidfd): a dead peer ends with `Err("peer exited")`.
/// With `pauses`, it stops briefly now and then so the consumer goes to sleep on its doorbell.
fn produce(
    tx: &mut Producer,
    seed: u64,
    from: u64,
    to: u64,
    peer: &OwnedFd,
    deadline: Instant,
    pauses: bool,
) -> Result<(), String> {
    let mut seq = from;
    let mut batch = 0u64;
    while seq < to {
        match push(tx, seed, seq) {
            Ok(()) => {
                seq += 1;
                batch += 1;
                if batch > mix(seq) % 64 {
                    tx.flush();
                    batch = 0;
                }
                if pauses && seq.is_multiple_of(50_000) {
                    tx.flush();
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Err(PushError::Full) => {
                if pidfd_has_exited(peer).map_err(|e| e.to_string())? {
                    return Err("peer exited".into());
                }
                if Instant::now() > deadline {
                    return Err(format!("watchdog: full at frame {seq}"));
                }
                std::thread::yield_now();
            }
            Err(e) => return Err(format!("push {seq}: {e}")),
        }
    }
    tx.flush();
    Ok(())
}

fn child_pidfd(c: &std::process::Child) -> OwnedFd {
    ProcId::of(c.id()).unwrap().pidfd().unwrap()
}

fn stream(backend: shmq::region::Backend, test: &str, n: u64, spin_us: u64) {
    let cfg = pair_cfg(test, backend);
    let _g = Cleanup::pair(&cfg, 1);
    let mut io = cfg.create(0, 5).unwrap();
    let seed = mix(n ^ spin_us);
    let mut env = cfg_env(&cfg);
    env.extend([
        ("SHMQ_T_SEED", seed.to_string()),
        ("SHMQ_T_N", n.to_string()),
        ("SHMQ_T_SPIN_US", spin_us.to_string()),
    ]);
    let mut md = KillOnDrop(spawn_child("consume", &env));
    let peer = child_pidfd(&md.0);
    let deadline = Instant::now() + WATCHDOG;
    produce(&mut io.tx, seed, 0, n, &peer, deadline, true).unwrap();
    // md reports the count on `out` once it checked every frame.
    loop {
        if let Some(f) = io.rx.peek().unwrap() {
            assert_eq!(f.payload, n.to_le_bytes());
            break;
        }
        assert!(Instant::now() < deadline, "watchdog: no report from md");
        if io.rx.prepare_sleep(&io.rx_bell) {
            wait_readable(&io.rx_bell, Duration::from_millis(100));
        }
    }
    let st = wait_child(&mut md.0, WATCHDOG);
    assert!(st.success(), "consumer failed: {st}");
    let c = &io.tx.header().consumer;
    let frames = c.frames.load(shmq::sync::Ordering::Relaxed);
    assert_eq!(frames, n, "consumer counted every frame");
    if spin_us != u64::MAX {
        // The consumer slept on its doorbell part of the time and was woken each time.
        let sleeps = c.sleeps.load(shmq::sync::Ordering::Relaxed);
        let wakeups = c.wakeups.load(shmq::sync::Ordering::Relaxed);
        assert!(sleeps > 0 && wakeups > 0, "sleeps {sleeps}, wakeups {wakeups}");
        assert!(io.tx.header().producer.doorbells.load(shmq::sync::Ordering::Relaxed) > 0);
    }
}

#[test]
fn stream_posix_doorbell_and_polled() {
    stream(shmq::region::Backend::Posix, "stream-db", stream_frames(), 20);
    stream(shmq::region::Backend::Posix, "stream-poll", stream_frames() / 4, u64::MAX);
}

#[test]
fn stream_sysv_doorbell_and_polled() {
    stream(shmq::region::Backend::Sysv, "stream-db", stream_frames(), 20);
    stream(shmq::region::Backend::Sysv, "stream-poll", stream_frames() / 4, u64::MAX);
}

#[test]
fn kill_producer_mid_stream_then_reset() {
    for backend in BACKENDS {
        let cfg = pair_cfg("killprod", backend);
        let _g = Cleanup::pair(&cfg, 1);
        let mut io = cfg.create(0, 5).unwrap();
        let seed = 11;
        let mut env = cfg_env(&cfg);
        env.extend([("SHMQ_T_SEED", seed.to_string()), ("SHMQ_T_N", u64::MAX.to_string())]);
        let mut md = KillOnDrop(spawn_child("produce", &env));
        let peer = child_pidfd(&md.0);
        let deadline = Instant::now() + WATCHDOG;
        // Read a good part of the stream, then kill -9 the producer while it is writing.
        consume(&mut io.rx, &io.rx_bell, seed, 0, 20_000, Wait::Doorbell(Duration::ZERO), deadline)
            .unwrap();
        assert!(!pidfd_has_exited(&peer).unwrap());
        let h = io.rx.header();
        let producer = ProcId {
            pid: h.producer.pid.load(shmq::sync::Ordering::Relaxed),
            start_time: h.producer.start_time.load(shmq::sync::Ordering::Relaxed),
        };
        assert_eq!(producer.pid, md.0.id());
        assert_eq!(producer.liveness(), Liveness::Alive);
        md.0.kill().unwrap();
        // The consumer learns it: the pidfd turns readable, the registered identity is dead.
        assert!(retry(WATCHDOG, || pidfd_has_exited(&peer).unwrap().then_some(())).is_some());
        assert_eq!(producer.liveness(), Liveness::Dead, "a zombie counts as dead");
        md.0.wait().unwrap();
        assert_eq!(producer.liveness(), Liveness::Dead);
        // Everything published before the kill is whole and in order; then the ring is empty.
        let mut next = 20_000u64;
        loop {
            let n = io
                .rx
                .drain(1024, |f| {
                    check(seed, next, cfg.max_payload as usize, &f).unwrap();
                    next += 1;
                })
                .unwrap();
            if n == 0 {
                break;
            }
        }
        assert!(io.rx.peek().unwrap().is_none());
        // Reset: a new producer starts cleanly at frame 0 of a new stream, nothing old leaks.
        let mut io = cfg.reset(io).unwrap();
        assert_eq!(io.generation, 2);
        env.retain(|(k, _)| *k != "SHMQ_T_SEED" && *k != "SHMQ_T_N");
        env.extend([("SHMQ_T_SEED", "12".to_string()), ("SHMQ_T_N", "5000".to_string())]);
        let mut md2 = KillOnDrop(spawn_child("produce", &env));
        consume(&mut io.rx, &io.rx_bell, 12, 0, 5000, Wait::Doorbell(Duration::ZERO), deadline)
            .unwrap();
        assert!(wait_child(&mut md2.0, WATCHDOG).success());
        assert!(io.rx.peek().unwrap().is_none());
    }
}

#[test]
fn kill_consumer_producer_notices_and_stops() {
    for backend in BACKENDS {
        let cfg = pair_cfg("killcons", backend);
        let _g = Cleanup::pair(&cfg, 1);
        let mut io = cfg.create(0, 5).unwrap();
        let mut env = cfg_env(&cfg);
        env.push(("SHMQ_T_SEED", "21".to_string()));
        let mut md = KillOnDrop(spawn_child("consume_forever", &env));
        let peer = child_pidfd(&md.0);
        let deadline = Instant::now() + WATCHDOG;
        // Stream while the consumer runs...
        produce(&mut io.tx, 21, 0, 30_000, &peer, deadline, false).unwrap();
        // ...kill it, and keep going: the ring fills, the producer finds the consumer dead.
        md.0.kill().unwrap();
        let r = produce(&mut io.tx, 21, 30_000, u64::MAX, &peer, deadline, false);
        assert_eq!(r, Err("peer exited".to_string()));
        assert!(!io.tx.has_room(cfg.max_payload as usize), "stopped on a full ring");
        md.0.wait().unwrap();
        // Reset and a new consumer gets only the new generation's frames.
        let mut io = cfg.reset(io).unwrap();
        env.clear();
        env.extend(cfg_env(&cfg));
        env.extend([
            ("SHMQ_T_SEED", "22".to_string()),
            ("SHMQ_T_N", "5000".to_string()),
            ("SHMQ_T_SPIN_US", "0".to_string()),
        ]);
        let mut md2 = KillOnDrop(spawn_child("consume", &env));
        let peer2 = child_pidfd(&md2.0);
        produce(&mut io.tx, 22, 0, 5000, &peer2, deadline, false).unwrap();
        assert!(wait_child(&mut md2.0, WATCHDOG).success());
    }
}

#[test]
fn stale_segment_is_replaced_live_one_refused() {
    for backend in BACKENDS {
        let cfg = pair_cfg("stale", backend);
        let _g = Cleanup::pair(&cfg, 1);
        let mut holder = KillOnDrop(spawn_child("create_hold", &cfg_env(&cfg)));
        // Another process created it: we can attach as md and see who.
        let md = retry(WATCHDOG, || cfg.attach(0).ok()).expect("attach to the child's pair");
        assert_eq!(md.creator.pid, holder.0.id());
        assert_eq!(md.epoch, 77);
        drop(md);
        match cfg.create(0, 78) {
            Err(PairError::InUse { owner, .. }) => assert_eq!(owner, holder.0.id()),
            other => panic!("{backend}: create over a live creator: {other:?}"),
        }
        holder.0.kill().unwrap();
        holder.0.wait().unwrap();
        // The dead creator's segments and FIFOs are still there...
        assert!(shmq::region::Segment::exists(backend, &cfg.in_segment(0)).unwrap());
        assert!(cfg.in_fifo(0).exists());
        // ...and are replaced.
        let io = cfg.create(0, 78).unwrap();
        assert_eq!((io.epoch, io.generation), (78, 1));
        let md = cfg.attach(0).unwrap();
        assert_eq!((md.creator, md.epoch), (ProcId::current(), 78));
    }
}

#[test]
fn exited_process_is_dead_and_its_pidfd_readable() {
    let mut c =
        KillOnDrop(spawn_child("exit", &cfg_env(&pair_cfg("exit", shmq::region::Backend::Posix))));
    let id = ProcId::of(c.0.id()).unwrap();
    let fd = id.pidfd().unwrap();
    // Not reaped yet: a zombie, which counts as dead; its pidfd is readable.
    assert!(retry(WATCHDOG, || (id.liveness() == Liveness::Dead).then_some(())).is_some());
    assert!(pidfd_has_exited(&fd).unwrap());
    assert!(c.0.wait().unwrap().success());
    assert_eq!(id.liveness(), Liveness::Dead);
    assert!(id.pidfd().is_err());
}
