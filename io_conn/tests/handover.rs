//! End to end, real binaries on 127.0.0.1 with real shared memory: a running io_conn hands its
//! live connections and listeners to a successor (`io_conn --takeover`: SIGUSR2 and a Unix
//! socket, the way an upgrade runs without systemd), and the frame protocol versions io_conn
//! and md exchange in the pair. Assertions are about bytes and order, never timing.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::*;

/// A client that connects, PINGs and closes in a loop while the switch happens: counts
/// connection attempts refused (there must be none: the listeners are handed over too).
fn prober(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut ok, mut refused_n) = (0u64, 0u64);
        let until = Instant::now() + WATCHDOG * 2;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            match TcpStream::connect(addr) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(WATCHDOG)).unwrap();
                    s.write_all(b"PING\n").unwrap();
                    let mut r = BufReader::new(s);
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    assert_eq!(line, "PONG\n", "a probe connection got a wrong reply");
                    ok += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused_n += 1,
                Err(e) => panic!("probe connect: {e}"),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (ok, refused_n)
    })
}

fn takeover_keeps_connections(dispatch: &str, upgrade: bool) {
    const N: usize = 200;
    let old = Server::start_with(
        &format!("handover{dispatch}"),
        Setup { spawn_md: 2, max_instances: 2, dispatch: Some(dispatch), ..Setup::default() },
    );
    let addr = old.addr("dumb/line");
    let mut conns: Vec<TcpStream> = (0..N).map(|_| old.connect("dumb/line")).collect();
    for c in &mut conns {
        roundtrip(c, b"PING\n", b"PONG\n");
    }
    // A reply owed across the switch on every connection (the old io_conn answers it before it
    // leaves), and a half request, completed after the switch (the successor gets the first half
    // in the record and the rest from the socket).
    for c in &mut conns {
        c.write_all(b"WAIT 200\nPI").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let probe = prober(addr, Arc::clone(&stop));
    let old_pid = old.pid();
    let succ = if upgrade {
        // The "new release": the same build at another path, as a package upgrade leaves it.
        let new = old.dir.join("io_conn-upgraded");
        std::fs::copy(io_conn_bin(), &new).expect("copy the binary");
        Successor::start_bin(&old, 2, &new)
    } else {
        Successor::start(&old, 2)
    };
    succ.wait_log("md instance 1 live");
    // Sent while the old io_conn was leaving or gone: read by the successor.
    for c in &mut conns {
        c.write_all(b"NG\nPING\n").unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(read_line(c), "DONE\n", "connection {i}: the reply owed before the switch");
        assert_eq!(read_line(c), "PONG\n", "connection {i}: the request split by the switch");
        assert_eq!(read_line(c), "PONG\n", "connection {i}: the request sent after it");
    }
    let mut answered = 0;
    for c in &mut conns {
        roundtrip(c, b"PING\n", b"PONG\n");
        answered += 1;
    }
    assert_eq!(answered, N);
    stop.store(true, Ordering::Relaxed);
    let (probes, refused) = probe.join().expect("prober");
    assert_eq!(refused, 0, "connection attempts refused during the switch");
    assert!(probes > 0, "the prober connected at least once");
    // Every connection open at the switch (ours, and perhaps a probe's) was adopted.
    let adopted = succ
        .log_text()
        .lines()
        .find_map(|l| {
            l.split("adopted ")
                .nth(1)
                .map(|r| r.split(" of ").map(str::to_owned).collect::<Vec<_>>())
        })
        .expect("the successor logged its adoption");
    let taken: usize = adopted[0].parse().unwrap();
    assert!(taken >= N && adopted[1].starts_with(&taken.to_string()), "adopted {adopted:?}");
    drop(conns);
    succ.stop();
    let mut old = old;
    let mut child = old.child.take().expect("old child");
    let st = wait_exit(&mut child);
    assert_eq!(child.id(), old_pid);
    assert!(st.success(), "the old io_conn exited {st}");
    // It left cleanly, having handed everything over (nothing closed).
    old.wait_log("connections over (successor; 0 closed", 1);
    let left = old.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn takeover_keeps_200_connections_request_dispatch() {
    takeover_keeps_connections("request", false);
}

/// Flow dispatch, and the successor is another binary (an upgrade).
#[test]
fn upgrade_keeps_200_connections_flow_dispatch() {
    takeover_keeps_connections("flow", true);
}

/// A successor given a record that does not check out (here one flipped byte; the test hook
/// of the leaving side) adopts nothing: it closes every socket it was handed, never guesses.
#[test]
fn corrupt_or_absent_record_closes_the_sockets() {
    for hook in ["corrupt-record", "no-record"] {
        let old = Server::start_with(
            &format!("handover-{hook}"),
            Setup {
                spawn_md: 1,
                env: vec![("SHMSRV_TEST_HANDOVER".into(), hook.into())],
                ..Setup::default()
            },
        );
        let mut conns: Vec<TcpStream> = (0..5).map(|_| old.connect("dumb/line")).collect();
        for c in &mut conns {
            roundtrip(c, b"PING\n", b"PONG\n");
        }
        let succ = Successor::start(&old, 1);
        succ.wait_log("md instance 0 live");
        let why = if hook == "no-record" { "without a record" } else { "record invalid" };
        succ.wait_log("keeping 4 listening sockets");
        assert!(succ.log_text().contains(why), "{hook}: {}", succ.log_text());
        for (i, c) in conns.iter_mut().enumerate() {
            let _ = c.write_all(b"PING\n");
            let mut buf = Vec::new();
            // EOF (or a reset): closed, and nothing but what came before.
            let _ = c.read_to_end(&mut buf);
            assert!(buf.is_empty(), "{hook}: connection {i} got {buf:?} after the switch");
        }
        succ.stop();
        let mut old = old;
        let mut child = old.child.take().expect("old child");
        assert!(wait_exit(&mut child).success());
    }
}

/// io_conn and md exchange their frame protocol versions in the pair: an md refuses an io_conn
/// of another version (here a fake version written into the segment) and claims nothing; once
/// the version matches again it attaches and serves. io_conn refuses an md whose version
/// (written into the pair when it claims it) is another, by name.
#[test]
fn protocol_versions_mismatch_is_refused_by_name() {
    use shmq::layout::PROTOCOL_VERSION;
    let server = Server::start_with("protover", Setup { max_instances: 1, ..Setup::default() });
    let cfg = config::Config::load_or_default(Some(&server.config)).expect("config");
    let pair = io_conn::pair_config(&cfg);
    let seg = shmq::region::Segment::attach(pair.backend, &pair.in_segment(0), true).unwrap();
    let h = shmq::ring::checked_header(&seg, 0).unwrap();
    assert_eq!(h.proto_io.load(Ordering::Relaxed), PROTOCOL_VERSION);

    // md against an io_conn that (says it) speaks version 77.
    h.proto_io.store(77, Ordering::Relaxed);
    let mut md = Command::new(md_bin())
        .arg("--config")
        .arg(&server.config)
        .arg("--instance")
        .arg("0")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("md");
    let md_log = Arc::new(Mutex::new(String::new()));
    let (l2, stderr) = (Arc::clone(&md_log), md.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[md] {line}");
            l2.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let md = KillOnDrop(md);
    let want = format!(
        "io_conn speaks frame protocol version 77, this md speaks version {PROTOCOL_VERSION}"
    );
    let until = Instant::now() + WATCHDOG;
    while !md_log.lock().unwrap().contains(&want) {
        assert!(Instant::now() < until, "md did not refuse by name: {}", md_log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(h.holder.load(Ordering::Relaxed), 0, "the refused md claimed nothing");
    assert!(!server.log_text().contains("md instance 0 live"));
    // The versions agree again: the waiting md attaches and serves.
    h.proto_io.store(PROTOCOL_VERSION, Ordering::Relaxed);
    server.wait_md_live(1);
    let mut c = server.connect("dumb/line");
    roundtrip(&mut c, b"PING\n", b"PONG\n");
    drop(c);
    drop(md);
    server.wait_log("lost", 1);

    // io_conn against an md of version 55: this test attaches as md, writes 55 and says HELLO.
    let until = Instant::now() + WATCHDOG;
    let side = loop {
        match pair.attach(0) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < until, "attach as md: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let mut side = side;
    h.proto_md.store(55, Ordering::Relaxed);
    let me = shmq::sys::ProcId::current();
    let hello = shmq::frame::Hello { pid: me.pid, instance: 0, start_time: me.start_time };
    side.tx.try_push(shmq::FlowId(0), shmq::Kind::Hello, 0, &hello.encode()).expect("push HELLO");
    side.tx.flush();
    server.wait_log(
        &format!(
            "speaks frame protocol version 55, this io_conn speaks version {PROTOCOL_VERSION}: \
             refused"
        ),
        1,
    );
    drop(side);
    server.stop();
}

/// SIGUSR2 with no successor: after waiting for one (10 s), io_conn serves on with every
/// connection it had (nothing was closed: none owed a reply) and accepts again.
#[test]
fn sigusr2_without_a_successor_serves_on() {
    let server = Server::start("handover-alone", 1);
    let mut conns: Vec<TcpStream> = (0..10).map(|_| server.connect("dumb/line")).collect();
    for c in &mut conns {
        roundtrip(c, b"PING\n", b"PONG\n");
    }
    let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2).expect("SIGUSR2");
    server.wait_log("SIGUSR2: handing over 10 connections", 1);
    // Sent while io_conn is not reading: answered once it serves on.
    for c in &mut conns {
        c.write_all(b"PING\n").unwrap();
    }
    server.wait_log("no successor took the connections; serving on", 1);
    for c in &mut conns {
        assert_eq!(read_line(c), "PONG\n");
        roundtrip(c, b"PING\n", b"PONG\n");
    }
    let mut fresh = server.connect("dumb/line");
    roundtrip(&mut fresh, b"PING\n", b"PONG\n");
    drop((conns, fresh));
    server.stop();
}
