//! io_conn's process-wide memory budget (`io_conn.max_buffered`, issue 14 finding 9) end to end:
//! the real io_conn and md binaries on 127.0.0.1, real shared memory.
//!
//! 5 000 slow readers each ask the dumb service for a long `STREAM` and never read: without the
//! budget io_conn would end up holding each one's full `output_credit` (5 000 × 256 KiB =
//! 1.25 GiB). With `max_buffered = 64MiB` its RSS must stay under its RSS with the same 5 000
//! connections idle plus 64 MiB, the slowest readers are closed (`closed_memory` rises), and a
//! PING client, on one connection and on fresh ones, keeps getting exactly `PONG` throughout.
//!
//! **Open files:** this test process holds the 5 000 client sockets (plus a few), so it raises
//! its own soft `RLIMIT_NOFILE` to the hard limit, which must be above ~5 100 (20 000 on the
//! build machines); io_conn holds the other 5 000 ends (it raises its own limit at start).
//! The clients' receive buffers are set to 4 KiB before connecting so that the kernel holds
//! little of each stream and io_conn's own buffers fill.

mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket, sockopt,
};
use util::{Server, Setup, read_line, stat, try_read_line};

/// Slow readers.
const SLOW: usize = 5_000;
/// `io_conn.max_buffered`.
const BUDGET: u64 = 64 << 20;
/// `shared.max_message` of the test config (`util::config_text_with`): the total may pass the
/// budget by one md frame before the check.
const MAX_MESSAGE: u64 = 64 << 10;
/// md instances.
const MDS: u32 = 2;
/// How many slow readers must have been closed for the budget before the load phase ends: a
/// fifth of them, i.e. the budget (~250 full readers) filled and was enforced four times over.
const CLOSED_WANTED: u64 = SLOW as u64 / 5;
/// The PING client's read timeout: its replies queue in md behind thousands of streams on a
/// machine that may be saturated (the first ~1 GB of the streams fills kernel socket buffers
/// before io_conn holds any), so a PING may take seconds; a lost or wrong reply still fails.
const PING_WATCHDOG: Duration = Duration::from_secs(120);
/// The load phase's watchdog (the machine may be slow; the phase normally takes seconds).
const LOAD_WATCHDOG: Duration = Duration::from_secs(300);

fn raise_nofile() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard > SLOW as u64 + 100,
        "RLIMIT_NOFILE hard limit {hard} is too low for {SLOW} sockets"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// A connection whose receive buffer (so its window) is 4 KiB.
fn small_window(addr: SocketAddr) -> TcpStream {
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 listener expected: {addr}") };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .expect("socket");
    setsockopt(&fd, sockopt::RcvBuf, &4096).expect("SO_RCVBUF");
    connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).expect("connect");
    TcpStream::from(fd)
}

fn io(v: &serde_json::Value, name: &str) -> u64 {
    stat(v, "io", 0, name).unwrap_or_else(|| panic!("no io counter {name}"))
}

/// Pings until `stop`: on one connection all along and on a fresh one every 10th time. Every
/// answer must be exactly `PONG`; the first failure is recorded and ends the loop.
fn pinger(addr: SocketAddr, stop: Arc<AtomicBool>, pongs: Arc<AtomicU64>, err: Arc<Mutex<String>>) {
    let open = || {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(PING_WATCHDOG))?;
        s.set_nodelay(true)?;
        Ok::<_, std::io::Error>(s)
    };
    let fail = |what: String| *err.lock().expect("lock") = what;
    let Ok(mut kept) = open() else { return fail("connect".into()) };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let fresh = n.is_multiple_of(10);
        let mut s = if fresh {
            match open() {
                Ok(s) => s,
                Err(e) => return fail(format!("fresh connect: {e}")),
            }
        } else {
            match kept.try_clone() {
                Ok(s) => s,
                Err(e) => return fail(format!("clone: {e}")),
            }
        };
        if let Err(e) = s.write_all(b"PING\n") {
            return fail(format!("write PING (fresh {fresh}): {e}"));
        }
        match try_read_line(&mut s) {
            Some(l) if l == "PONG\n" => {}
            other => return fail(format!("PING #{n} (fresh {fresh}) got {other:?}")),
        }
        pongs.fetch_add(1, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(5));
    }
    // The kept connection still works after the load.
    if let Err(e) = kept.write_all(b"PING\n") {
        return fail(format!("last PING: {e}"));
    }
    if read_line(&mut kept) != "PONG\n" {
        fail("last PING: not PONG".into());
    }
}

#[test]
fn slow_stream_readers_stay_within_the_memory_budget() {
    raise_nofile();
    let io_extra = format!("max_buffered = {BUDGET}\nmax_connections = {}", SLOW + 1000);
    let server = Server::start_with(
        "membudget",
        Setup { spawn_md: MDS, max_instances: MDS, io_extra: &io_extra, ..Setup::default() },
    );
    let addr = server.addr("dumb/line");

    // Warm up: a few MB echoed through every md's rings both ways, so their pages (shared
    // memory, in io_conn's RSS: a fixed cost, not a client's) are touched before the idle
    // figure, as in any server that has run a while.
    let warm: Vec<TcpStream> = (0..2 * MDS).map(|_| server.connect("echo/raw")).collect();
    let chunk = util::pattern(64 << 10, 7);
    for mut s in warm {
        for _ in 0..40 {
            s.write_all(&chunk).expect("write");
            assert_eq!(util::read_n(&mut s, chunk.len()), chunk, "echo");
        }
    }

    // The idle baseline: the same 5 000 connections, open and quiet.
    let mut slow: Vec<TcpStream> = (0..SLOW).map(|_| small_window(addr)).collect();
    server.wait_stats("every slow reader accepted", |v| {
        let cur = io(v, "connections_current");
        if cur == SLOW as u64 { vec![] } else { vec![format!("connections_current {cur}")] }
    });
    thread::sleep(Duration::from_millis(300));
    let idle_kib = server.rss_kib();
    let limit_kib = idle_kib + BUDGET / 1024;
    eprintln!("io_conn RSS with {SLOW} idle connections: {idle_kib} KiB; limit {limit_kib} KiB");

    let stop = Arc::new(AtomicBool::new(false));
    let pongs = Arc::new(AtomicU64::new(0));
    let err = Arc::new(Mutex::new(String::new()));
    let ping = {
        let (stop, pongs, err) = (Arc::clone(&stop), Arc::clone(&pongs), Arc::clone(&err));
        thread::spawn(move || pinger(addr, stop, pongs, err))
    };

    // The load: every slow reader asks for 4 MB and never reads.
    for s in &mut slow {
        s.write_all(b"STREAM 4000000\n").expect("write STREAM");
    }
    let until = Instant::now() + LOAD_WATCHDOG;
    let (mut peak_kib, mut peak_buffered, mut closed) = (0, 0, 0);
    let mut pongs_at_first_close = None;
    let mut last_stats = Instant::now() - Duration::from_secs(1);
    loop {
        peak_kib = peak_kib.max(server.rss_kib());
        assert!(
            peak_kib < limit_kib,
            "io_conn RSS {peak_kib} KiB reached idle {idle_kib} KiB + the 64 MiB budget"
        );
        assert!(err.lock().expect("lock").is_empty(), "PING client: {}", err.lock().expect("lock"));
        if last_stats.elapsed() >= Duration::from_millis(250) {
            last_stats = Instant::now();
            let v = server.stats();
            let buffered = io(&v, "buffered_bytes");
            peak_buffered = peak_buffered.max(buffered);
            assert!(
                buffered <= BUDGET + MAX_MESSAGE,
                "buffered_bytes {buffered} above the budget plus one frame"
            );
            closed = io(&v, "closed_memory");
            let p = pongs.load(Ordering::Relaxed);
            if closed > 0 && pongs_at_first_close.is_none() {
                pongs_at_first_close = Some(p);
            }
            // Done once the budget has closed half the readers and PING kept being answered
            // while it did.
            if closed >= CLOSED_WANTED && pongs_at_first_close.is_some_and(|p0| p >= p0 + 20) {
                break;
            }
        }
        assert!(
            Instant::now() < until,
            "load phase: closed_memory {closed} of {CLOSED_WANTED} wanted, pongs {}, in {LOAD_WATCHDOG:?}",
            pongs.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    ping.join().expect("pinger");
    assert!(err.lock().expect("lock").is_empty(), "PING client: {}", err.lock().expect("lock"));
    eprintln!(
        "peak io_conn RSS {peak_kib} KiB (idle {idle_kib} KiB, +{} KiB); peak buffered_bytes \
         {peak_buffered}; closed_memory {closed}; {} PONGs",
        peak_kib - idle_kib,
        pongs.load(Ordering::Relaxed)
    );
    assert!(peak_buffered > BUDGET / 2, "the budget was really under pressure: {peak_buffered}");

    // The books: every connection accepted is open or closed for a reason, closed_memory one.
    drop(slow);
    let v = server.wait_stats("every client gone", |v| {
        let cur = io(v, "connections_current");
        if cur == 0 { vec![] } else { vec![format!("connections_current {cur}")] }
    });
    let by_reason: u64 = v["sections"]["io"][0]["values"]
        .as_object()
        .expect("io values")
        .iter()
        .filter(|(k, _)| k.starts_with("closed_"))
        .map(|(_, v)| v.as_u64().expect("counter"))
        .sum();
    assert_eq!(io(&v, "connections_accepted"), by_reason, "accepted = open (0) + closed by reason");
    assert!(io(&v, "budget_reached") > 0);
    server.stop();
}
