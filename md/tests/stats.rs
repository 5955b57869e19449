//! md's side of the stats segment, end to end: `md::serve` on a thread over a real queue pair and a
//! real (POSIX) stats segment, this test playing io_conn, and the counters read back through
//! `StatsReader` exactly as viewstats reads them.

mod util;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use md::services::{Builtin, DumbOptions};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use shmq::frame::{FlowId, Kind, OpenInfo};
use shmq::layout::Direction;
use shmq::pair::{IoSide, PairConfig};
use shmq::region::Backend;
use shmq::stats::{
    COMMANDS_PREFIX, Md, MdState, OTHER_COMMAND, QueueProducerStats, Snapshot, StatsReader,
    StatsSegment, WAIT_HISTOGRAM, monotonic_ns,
};
use shmq::sync::Ordering;
use shmq::sys::ProcId;
use util::{TempDir, WATCHDOG, flow};

/// A pair config under a name unique to this process and test, FIFOs in a private temp dir.
fn pair_config(test: &str, dir: &TempDir) -> PairConfig {
    PairConfig {
        name: format!("md-test-{}-{test}", std::process::id()),
        runtime_dir: dir.0.join("run"),
        backend: Backend::Posix,
        capacity: 1 << 16,
        max_payload: 4096,
    }
}

/// Removes the pair's segments and FIFOs of `instances` and its stats segment, even when an
/// assertion fails.
struct Cleanup(PairConfig, Vec<u32>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for &i in &self.1 {
            let _ = self.0.remove(i);
        }
        let _ = StatsSegment::remove(self.0.backend, &self.0.name);
    }
}

/// The md thread: `serve`'s result and the runner's own counters.
type MdThread = std::thread::JoinHandle<(Result<(), String>, md::Stats)>;

/// md on a thread: `serve` for `instance` until shutdown.
fn start_md(pair: &PairConfig, instance: u32) -> (md::ShutdownHandle, MdThread) {
    let (control, shutdown) = md::Control::new().unwrap();
    let md_pair = pair.clone();
    let handle = std::thread::spawn(move || {
        let o = md::RunnerOptions {
            instance,
            spin: Duration::from_micros(5),
            check_interval: Duration::from_millis(20),
            ..Default::default()
        };
        let mut runner = md::Runner::new(Builtin::new(DumbOptions::default()), o);
        let r = md::serve(&mut runner, &md_pair, instance, &control);
        (r.map_err(|e| e.to_string()), runner.stats().clone())
    });
    (shutdown, handle)
}

/// The next frame md published (waits up to the watchdog).
fn recv(io: &mut IoSide) -> (FlowId, Kind, Vec<u8>) {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        if let Some(f) = io.rx.peek().unwrap() {
            let out = (f.flowid, f.kind, f.payload.to_vec());
            io.rx.release();
            io.rx.publish();
            return out;
        }
        assert!(Instant::now() < deadline, "nothing from md within {WATCHDOG:?}");
        if io.rx.prepare_sleep(&io.rx_bell) {
            let mut fds = [PollFd::new(io.rx_bell.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(50u16));
        }
    }
}

/// Pushes one frame and publishes it, as io_conn does. With `stamp`, the publish time goes into
/// io_conn's `in.producer` half first: stamped *before* the flush, so it is visible to md no later
/// than the frame (the flush's Release store orders it), which makes md's wait count exact.
fn push(io: &mut IoSide, stamp: Option<&QueueProducerStats>, f: FlowId, kind: Kind, p: &[u8]) {
    io.tx.try_push(f, kind, 0, p).unwrap();
    if let Some(s) = stamp {
        s.stamp_publish(monotonic_ns());
    }
    io.tx.flush();
}

/// Opens `f` on the dumb service; returns the OPEN payload length.
fn open(io: &mut IoSide, f: FlowId) -> u64 {
    let info = OpenInfo { credit: 1 << 20, peer: "127.0.0.1:1".parse().unwrap(), service: "dumb" };
    let mut buf = [0u8; 64];
    let n = info.encode(&mut buf).unwrap();
    push(io, None, f, Kind::Open, &buf[..n]);
    n as u64
}

/// Sends `n` PINGs one at a time, each answered before the next.
fn ping_pong(io: &mut IoSide, stamp: Option<&QueueProducerStats>, f: FlowId, n: usize) {
    for _ in 0..n {
        push(io, stamp, f, Kind::Data, b"PING\n");
        assert_eq!(recv(io), (f, Kind::Data, b"PONG\n".to_vec()));
    }
}

/// One expected value: (section, instance, counter, value).
type Want = (&'static str, u32, &'static str, u64);

/// Snapshots until every `want` holds (md mirrors once per batch, after it published the reply
/// we saw, so the last values may trail by one batch). Panics with the mismatches after the
/// watchdog.
fn wait_for(reader: &StatsReader, want: &[Want]) -> Snapshot {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        let snap = reader.snapshot();
        let bad: Vec<String> = want
            .iter()
            .filter_map(|&(sec, i, name, v)| {
                let got = snap.get(sec, i, name);
                (got != Some(v)).then(|| format!("{sec}[{i}].{name} = {got:?}, want {v}"))
            })
            .collect();
        if bad.is_empty() {
            return snap;
        }
        assert!(Instant::now() < deadline, "stats never matched:\n{}", bad.join("\n"));
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_count(snap: &Snapshot, instance: u32) -> u64 {
    let b = snap.block("in.consumer", instance).unwrap();
    snap.histogram(b, WAIT_HISTOGRAM).0.iter().map(|b| b.1).sum()
}

/// md writes its slot (and only its slot): identity, state, every counter of the traffic, the
/// requests by command, and both queue halves it owns, equal to the rings' own counters. Shutdown
/// leaves the slot `exited`.
#[test]
fn serve_mirrors_its_counters_into_its_slot() {
    const N: u64 = 50;
    const SLOT: u32 = 1;
    let dir = TempDir::new("stats-mirror");
    let pair = pair_config("stats-mirror", &dir);
    let _cleanup = Cleanup(pair.clone(), vec![SLOT]);
    // As io_conn: the stats segment first (two slots), then the pair of instance 1.
    let seg = StatsSegment::create(pair.backend, &pair.name, 2, 1).unwrap();
    let in_producer = seg.queue_producer(SLOT, Direction::ToMd).unwrap();
    let reader = StatsReader::attach(pair.backend, &pair.name).unwrap();
    let mut io = pair.create(SLOT, 1).unwrap();

    let (shutdown, md) = start_md(&pair, SLOT);
    let (f0, kind, hello) = recv(&mut io);
    assert_eq!((f0, kind), (FlowId(0), Kind::Hello));
    let f = flow(9);
    let open_len = open(&mut io, f);
    ping_pong(&mut io, Some(&in_producer), f, N as usize);

    let me = ProcId::current();
    let hello_len = hello.len() as u64;
    let running: Vec<Want> = vec![
        ("md", SLOT, "pid", me.pid as u64),
        ("md", SLOT, "proc_start_ticks", me.start_time),
        ("md", SLOT, "epoch", 1),
        ("md", SLOT, "state", MdState::Running as u64),
        ("md", SLOT, "frames_in", N + 1),
        ("md", SLOT, "messages_in", N),
        ("md", SLOT, "bytes_in", 5 * N),
        ("md", SLOT, "messages_out", N),
        ("md", SLOT, "bytes_out", 5 * N),
        ("md", SLOT, "flows_opened", 1),
        ("md", SLOT, "flows_refused", 0),
        ("md", SLOT, "attaches", 1),
        ("md", SLOT, "commands.dumb.ping", N),
        ("md", SLOT, "commands.dumb.err", 0),
        ("md", SLOT, "commands.echo", 0),
        ("md", SLOT, "commands.other", 0),
        ("md", SLOT, "errors", 0),
        ("md", SLOT, "bad_frames", 0),
        ("md", SLOT, "unknown_flow", 0),
        ("in.consumer", SLOT, "frames", N + 1),
        ("in.consumer", SLOT, "bytes", open_len + 5 * N),
        ("in.consumer", SLOT, "corrupt", 0),
        ("in.consumer", SLOT, "generation", 1),
        ("out.producer", SLOT, "frames", N + 1),
        ("out.producer", SLOT, "bytes", hello_len + 5 * N),
        ("out.producer", SLOT, "generation", 1),
        ("out.producer", SLOT, "depth_bytes", 0),
        // The other slot is untouched.
        ("md", 0, "state", MdState::Absent as u64),
        ("md", 0, "pid", 0),
        ("out.producer", 0, "frames", 0),
        ("in.consumer", 0, "frames", 0),
    ];
    let snap = wait_for(&reader, &running);
    let md_block = snap.block("md", SLOT).unwrap();
    assert!(md_block.consistent);
    for name in ["heartbeat_mono_ns", "start_time_unix_ns", "busy_ns"] {
        assert!(snap.get("md", SLOT, name).unwrap() > 0, "{name} was never written");
    }
    assert!(snap.get("md", SLOT, "heartbeat_mono_ns").unwrap() <= monotonic_ns());
    assert!(snap.get("out.producer", SLOT, "last_publish_mono_ns").unwrap() > 0);
    // One queue wait per stamped publish md picked up: every PING, not the unstamped OPEN.
    assert_eq!(wait_count(&snap, SLOT), N);

    // The halves mirror the rings' own counters (md is idle: nothing moves any more).
    // Relaxed: plain counters read after md answered everything; the values are settled.
    let ring_out = io.rx.header().producer.frames.load(Ordering::Relaxed);
    let ring_in = io.tx.header().consumer.frames.load(Ordering::Relaxed);
    assert_eq!(snap.get("out.producer", SLOT, "frames"), Some(ring_out));
    assert_eq!(snap.get("in.consumer", SLOT, "frames"), Some(ring_in));

    shutdown.trigger();
    // Leaving: LEAVE, then the idle flow-dispatched flow is closed.
    assert_eq!(recv(&mut io).1, Kind::Leave);
    assert_eq!(recv(&mut io).0, f);
    let (r, stats) = md.join().unwrap();
    assert_eq!(r, Ok(()));
    assert_eq!((stats[Md::MessagesIn], stats.commands[md::services::cmd::PING]), (N, N));
    // Same counters but the two frames of the leave, state exited (read once: md has returned,
    // everything is written).
    // (The backlog gauge is left out: it depends on whether we read the leave's frames before
    // md's last mirror.)
    let mut exited: Vec<Want> = running.iter().copied().filter(|w| w.2 != "depth_bytes").collect();
    for w in exited.iter_mut().filter(|w| w.1 == SLOT) {
        match w.2 {
            "state" => w.3 = MdState::Exited as u64,
            "frames" if w.0 == "out.producer" => w.3 += 2,
            _ => {}
        }
    }
    let snap = reader.snapshot();
    for &(sec, i, name, v) in &exited {
        assert_eq!(snap.get(sec, i, name), Some(v), "{sec}[{i}].{name} after shutdown");
    }
}

/// io_conn restarts (new epoch, new stats segment): md detaches, re-attaches to the new pair,
/// takes its slot in the new segment and counts from zero there; the old segment keeps what it
/// had, with the slot back in `starting`.
#[test]
fn serve_moves_to_the_new_segment_after_io_conn_restarts() {
    let dir = TempDir::new("stats-restart");
    let pair = pair_config("stats-restart", &dir);
    let _cleanup = Cleanup(pair.clone(), vec![0]);
    StatsSegment::create(pair.backend, &pair.name, 1, 1).unwrap();
    let old_reader = StatsReader::attach(pair.backend, &pair.name).unwrap();
    let mut io = pair.create(0, 1).unwrap();

    let (shutdown, md) = start_md(&pair, 0);
    assert_eq!(recv(&mut io).1, Kind::Hello);
    let f = flow(3);
    open(&mut io, f);
    ping_pong(&mut io, None, f, 3);
    wait_for(&old_reader, &[("md", 0, "messages_in", 3), ("md", 0, "commands.dumb.ping", 3)]);

    // "io_conn restarts": its successor removes what it finds and creates everything under
    // epoch 2. (The old rings' generation is bumped last, standing in for md's pidfd telling it
    // that io_conn exited: this test is io_conn and md in one process.)
    StatsSegment::remove(pair.backend, &pair.name).unwrap();
    StatsSegment::create(pair.backend, &pair.name, 1, 2).unwrap();
    let new_reader = StatsReader::attach(pair.backend, &pair.name).unwrap();
    pair.remove(0).unwrap();
    let mut io2 = pair.create(0, 2).unwrap();
    drop(pair.reset(io).unwrap());

    assert_eq!(recv(&mut io2).1, Kind::Hello);
    let g = flow(4);
    open(&mut io2, g);
    ping_pong(&mut io2, None, g, 2);
    wait_for(
        &new_reader,
        &[
            ("md", 0, "epoch", 2),
            ("md", 0, "state", MdState::Running as u64),
            ("md", 0, "messages_in", 2),
            ("md", 0, "commands.dumb.ping", 2),
            ("md", 0, "flows_opened", 1),
            ("md", 0, "attaches", 1),
            ("in.consumer", 0, "generation", 1),
        ],
    );
    // The old segment: what it had when md left it, and md is not serving it any more.
    let old = old_reader.snapshot();
    assert_eq!(old.get("md", 0, "state"), Some(MdState::Starting as u64));
    assert_eq!(old.get("md", 0, "messages_in"), Some(3));
    assert_eq!(old.get("md", 0, "epoch"), Some(1));

    shutdown.trigger();
    let (r, stats) = md.join().unwrap();
    assert_eq!(r, Ok(()));
    assert_eq!((stats[Md::MessagesIn], stats[Md::Attaches]), (5, 2));
    assert_eq!(new_reader.snapshot().get("md", 0, "state"), Some(MdState::Exited as u64));
    drop(io2);
}

/// A stats segment of another epoch (left by a dead io_conn, or written by a new one that has not
/// replaced it yet) is not written: md serves without stats.
#[test]
fn serve_ignores_a_stats_segment_of_another_epoch() {
    let dir = TempDir::new("stats-stale");
    let pair = pair_config("stats-stale", &dir);
    let _cleanup = Cleanup(pair.clone(), vec![0]);
    StatsSegment::create(pair.backend, &pair.name, 1, 7).unwrap();
    let reader = StatsReader::attach(pair.backend, &pair.name).unwrap();
    let mut io = pair.create(0, 1).unwrap();

    let (shutdown, md) = start_md(&pair, 0);
    assert_eq!(recv(&mut io).1, Kind::Hello);
    let f = flow(5);
    open(&mut io, f);
    ping_pong(&mut io, None, f, 1);
    // md decided before it sent HELLO; the slot was never taken.
    let snap = reader.snapshot();
    assert_eq!(snap.get("md", 0, "pid"), Some(0));
    assert_eq!(snap.get("md", 0, "state"), Some(MdState::Absent as u64));

    shutdown.trigger();
    let (r, stats) = md.join().unwrap();
    assert_eq!(r, Ok(()));
    assert_eq!(stats[Md::MessagesIn], 1);
}

/// Counter completeness: every counter md keeps (every `Md` counter, and every command the
/// built-in service names) reaches `viewstats --json` with its description, from a real md on a
/// real segment. A counter that md counted but the segment lacked, or that viewstats did not
/// render or describe, fails here.
#[test]
fn every_md_counter_reaches_viewstats_json_with_its_help() {
    use clap::Parser as _;
    use md::Service;

    let dir = TempDir::new("stats-complete");
    let pair = pair_config("stats-complete", &dir);
    let _cleanup = Cleanup(pair.clone(), vec![0]);
    StatsSegment::create(pair.backend, &pair.name, 1, 1).unwrap();
    let reader = StatsReader::attach(pair.backend, &pair.name).unwrap();
    let mut io = pair.create(0, 1).unwrap();
    let (shutdown, md) = start_md(&pair, 0);
    assert_eq!(recv(&mut io).1, Kind::Hello);
    let f = flow(7);
    open(&mut io, f);
    ping_pong(&mut io, None, f, 2);
    wait_for(&reader, &[("md", 0, "commands.dumb.ping", 2), ("md", 0, "messages_in", 2)]);

    let args = viewstats::Args::parse_from([
        "viewstats",
        "--json",
        "--name",
        pair.name.as_str(),
        "--backend",
        "posix",
    ]);
    let mut out = Vec::new();
    assert_eq!(viewstats::run(&args, &mut out).unwrap(), 0);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("viewstats --json is JSON");
    let block = &v["sections"]["md"][0];
    assert_eq!(block["instance"], 0);
    let described = &v["counters"]["md"];
    let check = |name: &str, help: Option<&str>| {
        assert!(block["values"][name].is_u64(), "md counter {name} missing from --json values");
        let got = described[name]["help"].as_str();
        assert!(got.is_some_and(|h| !h.is_empty()), "md counter {name} has no description");
        if let Some(h) = help {
            assert_eq!(got, Some(h), "description of {name}");
        }
    };
    for c in Md::ALL {
        check(c.desc().name, Some(c.desc().help));
    }
    let names = Builtin::new(DumbOptions::default()).command_names();
    assert!(!names.is_empty());
    for n in names {
        check(&format!("{COMMANDS_PREFIX}{n}"), None);
    }
    check(&format!("{COMMANDS_PREFIX}{OTHER_COMMAND}"), None);
    assert_eq!(block["values"]["commands.dumb.ping"], 2);
    // Nothing else: the md block shows exactly these counters.
    let shown = block["values"].as_object().unwrap().len();
    assert_eq!(shown, Md::COUNT + names.len() + 1, "{block}");

    shutdown.trigger();
    let (r, _) = md.join().unwrap();
    assert_eq!(r, Ok(()));
}

/// Issue 14, finding 11: an md that attaches its pair before io_conn has created the stats
/// segment (io_conn makes it right after the pairs) retries and writes stats in the same epoch,
/// instead of running the whole epoch without them.
#[test]
fn issue_14_stats_segment_created_after_the_pair_is_picked_up() {
    let dir = TempDir::new("stats-late");
    let pair = pair_config("stats-late", &dir);
    let _cleanup = Cleanup(pair.clone(), vec![0]);
    let mut io = pair.create(0, 1).unwrap();
    let (shutdown, md) = start_md(&pair, 0);
    // md attaches the pair at once and finds no stats segment yet.
    std::thread::sleep(Duration::from_millis(150));
    StatsSegment::create(pair.backend, &pair.name, 1, 1).unwrap();
    let reader = StatsReader::attach(pair.backend, &pair.name).unwrap();
    assert_eq!(recv(&mut io).1, Kind::Hello);
    let f = flow(9);
    open(&mut io, f);
    ping_pong(&mut io, None, f, 2);
    wait_for(&reader, &[("md", 0, "messages_in", 2), ("md", 0, "epoch", 1)]);
    assert_eq!(reader.snapshot().get("md", 0, "pid"), Some(u64::from(std::process::id())));

    shutdown.trigger();
    let (r, stats) = md.join().unwrap();
    assert_eq!(r, Ok(()));
    assert_eq!((stats[Md::MessagesIn], stats[Md::Attaches]), (2, 1));
}

/// Issue 14, finding 11, the rest of it: a stats segment that appears only after md has given
/// up waiting (3 s after md started serving, well past its 1 s grace) is picked up while md
/// serves, in the same epoch, and its slot shows everything md counted since the attach: the
/// PINGs before the segment existed and those after. Without the runner's late pickup the slot
/// stays `absent` for the whole epoch and this times out.
#[test]
fn issue_14_stats_segment_created_while_md_serves_is_picked_up() {
    let dir = TempDir::new("stats-later");
    let pair = pair_config("stats-later", &dir);
    let _cleanup = Cleanup(pair.clone(), vec![0]);
    let mut io = pair.create(0, 1).unwrap();
    let (shutdown, md) = start_md(&pair, 0);
    assert_eq!(recv(&mut io).1, Kind::Hello);
    let served = Instant::now();
    let f = flow(9);
    open(&mut io, f);
    ping_pong(&mut io, None, f, 3);
    std::thread::sleep(Duration::from_secs(3).saturating_sub(served.elapsed()));
    ping_pong(&mut io, None, f, 1);
    StatsSegment::create(pair.backend, &pair.name, 1, 1).unwrap();
    let reader = StatsReader::attach(pair.backend, &pair.name).unwrap();
    ping_pong(&mut io, None, f, 2);
    // Idle md wakes every check_interval and tries at most once a second: within the watchdog.
    wait_for(
        &reader,
        &[
            ("md", 0, "messages_in", 6),
            ("md", 0, "messages_out", 6),
            ("md", 0, "commands.dumb.ping", 6),
            ("md", 0, "flows_opened", 1),
            ("md", 0, "attaches", 1),
            ("md", 0, "epoch", 1),
            ("md", 0, "state", MdState::Running as u64),
            ("md", 0, "pid", u64::from(std::process::id())),
        ],
    );
    ping_pong(&mut io, None, f, 1);
    wait_for(&reader, &[("md", 0, "messages_in", 7)]);

    shutdown.trigger();
    let (r, stats) = md.join().unwrap();
    assert_eq!(r, Ok(()));
    assert_eq!((stats[Md::MessagesIn], stats[Md::Attaches]), (7, 1));
    assert_eq!(reader.snapshot().get("md", 0, "state"), Some(MdState::Exited as u64));
}
