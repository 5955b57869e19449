//! `dispatch = "request"`: each request of a connection goes to the least-loaded md, replies
//! come back in request order, a new md takes load off existing connections, and an md that dies
//! costs only the requests in flight on it.

use super::*;

fn request_server(test: &str, spawn_md: u32, max_instances: u32) -> Server {
    Server::start_with(
        test,
        Setup {
            spawn_md,
            max_instances,
            dispatch: Some("request"),
            md_extra: "[md.dumb]\nburn_max = 100000000",
            ..Setup::default()
        },
    )
}

/// The request and its exact reply, for a mix of dumb commands: WAITs of different lengths and
/// BURNs of different sizes make replies on different md instances finish out of order.
fn mixed(k: usize) -> (String, Vec<u8>) {
    match k % 5 {
        0 => (format!("WAIT {}\n", (k * 7) % 23), b"DONE\n".to_vec()),
        1 => ("PING\n".to_owned(), b"PONG\n".to_vec()),
        2 => {
            let n = (k * 997) % 50_000;
            (format!("BURN {n}\n"), format!("RESULT {}\n", n * (n + 1) / 2).into_bytes())
        }
        3 => {
            let n = (k * 131) % 3000;
            let mut r = vec![b'A'; n];
            r.extend_from_slice(b"DONE\n");
            (format!("STREAM {n}\n"), r)
        }
        _ => (
            "HELLO\n".to_owned(),
            b"ERR unknown command (expected PING, WAIT, BURN or STREAM)\n".to_vec(),
        ),
    }
}

/// 1 000 pipelined mixed requests on one connection, three md instances: every reply byte-exact
/// and in request order, every md took part, nothing was closed or dropped.
#[test]
fn thousand_pipelined_mixed_requests_come_back_in_order() {
    let sut = request_server("disp_order", 3, 3);
    let (reqs, want): (Vec<String>, Vec<Vec<u8>>) = (0..1000).map(mixed).unzip();
    let want: Vec<u8> = want.concat();
    let mut c = sut.connect("dumb/line");
    let mut w = c.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        for r in reqs {
            w.write_all(r.as_bytes()).expect("write");
        }
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    // Everything owed, then the server closes (it owns the EOF under request dispatch).
    let got = read_to_eof(&mut c);
    writer.join().expect("writer");
    assert_eq!(got.len(), want.len(), "reply bytes");
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "replies out of order or wrong at byte {first_diff:?}");
    let v = sut.wait_stats("all requests counted", |v| {
        expect_exact(
            v,
            &[
                ("io", 0, "messages_in", 1000),
                ("io", 0, "closed_by_peer", 1),
                ("io", 0, "requests_dropped", 0),
                ("io", 0, "closed_md_gone", 0),
                ("io", 0, "closed_credit_overrun", 0),
            ],
        )
    });
    let per_md: Vec<u64> = (0..3).map(|i| stat(&v, "md", i, "messages_in").unwrap_or(0)).collect();
    assert_eq!(per_md.iter().sum::<u64>(), 1000, "{per_md:?}");
    assert!(per_md.iter().all(|&n| n > 0), "every md served some requests: {per_md:?}");
    // io_conn's view of the same: dispatched per md (its in.i halves) agree, nothing in flight.
    let dispatched: Vec<u64> =
        (0..3).map(|i| stat(&v, "in.producer", i, "requests_dispatched").unwrap_or(0)).collect();
    assert_eq!(dispatched, per_md, "io_conn's and md's counts of dispatched requests");
    for i in 0..3 {
        assert_eq!(stat(&v, "in.producer", i, "requests_in_flight"), Some(0), "md {i}");
    }
    sut.stop();
}

/// Two 8 MB STREAMs back to back on one connection with two md: the second, dispatched to the
/// other md, can only fill its credit (256 KiB) while the first is being sent; both complete, in
/// order, and io_conn holds at most a credit per md for the connection: its RSS stays far below
/// the 8 MB an unbounded hold of the second stream would cost, though the client reads nothing
/// until both md have started.
#[test]
fn two_streams_back_to_back_complete_in_order_with_bounded_memory() {
    let sut = request_server("disp_streams", 2, 2);
    let rss_before = sut.rss_kib();
    let mut c = sut.connect("dumb/line");
    nix::sys::socket::setsockopt(&c, nix::sys::socket::sockopt::RcvBuf, &65536).expect("rcvbuf");
    c.write_all(b"STREAM 8000000\nSTREAM 8000000\nPING\n").expect("write");
    // Let both md fill what they may: the second STREAM's md is held to its credit.
    sut.wait_stats("both streams dispatched", |v| {
        let mut p = expect_exact(v, &[("io", 0, "messages_in", 3)]);
        let started = (0..2).filter(|&i| stat(v, "md", i, "commands.dumb.stream") == Some(1));
        if started.count() != 2 {
            p.push("the two STREAMs did not go to the two md".into());
        }
        p
    });
    // Give the second md time to send what it may (not a timing assertion: with the credit
    // working, waiting longer changes nothing).
    thread::sleep(Duration::from_millis(300));
    let grown = sut.rss_kib().saturating_sub(rss_before);
    assert!(grown < 3 * 1024, "io_conn grew by {grown} KiB holding an unread stream");
    let mut want = vec![b'A'; 8_000_000];
    want.extend_from_slice(b"DONE\n");
    want.extend_from_slice(&want.clone());
    want.extend_from_slice(b"PONG\n");
    let got = read_n(&mut c, want.len());
    assert!(got == want, "streams out of order or corrupted");
    drop(c);
    sut.wait_stats("closed", |v| expect_exact(v, &[("io", 0, "closed_credit_overrun", 0)]));
    sut.stop();
}

/// An md started while connections are open takes a fair share of their requests: 8 long-lived
/// connections send BURNs one at a time; after md 1 joins, it serves at least a quarter of the
/// requests those same connections send.
#[test]
fn a_new_md_serves_requests_of_connections_opened_before_it() {
    let sut = request_server("disp_join", 1, 2);
    let mut conns: Vec<_> = (0..8).map(|_| sut.connect("dumb/line")).collect();
    let burn = b"BURN 20000\n";
    let result = b"RESULT 200010000\n";
    for c in &mut conns {
        roundtrip(c, burn, result);
    }
    let _md1 = sut.hand_md(&util::md_bin(), 1);
    sut.wait_log("md instance 1 live", 1);
    let before = sut.stats();
    let md1_before = stat(&before, "md", 1, "messages_in").unwrap_or(0);
    const ROUNDS: u64 = 50;
    // Closed loop: every connection keeps one BURN in flight.
    for c in &mut conns {
        c.write_all(burn).expect("write");
    }
    for round in 0..ROUNDS {
        for c in &mut conns {
            assert_eq!(read_n(c, result.len()), result);
            if round + 1 < ROUNDS {
                c.write_all(burn).expect("write");
            }
        }
    }
    let sent = ROUNDS * conns.len() as u64;
    let v = sut.wait_stats("the BURNs counted", |v| {
        let total: u64 = (0..2).map(|i| stat(v, "md", i, "messages_in").unwrap_or(0)).sum();
        let want = sent + conns.len() as u64;
        if total == want { vec![] } else { vec![format!("md messages_in {total}, want {want}")] }
    });
    let md1 = stat(&v, "md", 1, "messages_in").unwrap_or(0) - md1_before;
    assert!(4 * md1 >= sent, "md 1 served {md1} of the {sent} requests sent after it joined");
    drop(conns);
    sut.stop();
}

/// kill -9 of one md under many connections: the connections with a request in flight there are
/// closed (counted as md gone); every other connection keeps working.
#[test]
fn killing_one_md_costs_only_its_requests_in_flight() {
    let sut = request_server("disp_kill", 2, 2);
    // 20 connections each hold a WAIT that will not end soon: 10 land on each md.
    let mut waiting: Vec<_> = (0..20).map(|_| sut.connect("dumb/line")).collect();
    for c in &mut waiting {
        c.write_all(b"WAIT 20000\n").expect("write");
    }
    sut.wait_stats("the WAITs dispatched", |v| expect_exact(v, &[("io", 0, "messages_in", 20)]));
    // 180 idle connections that already talked (to either md).
    let mut idle: Vec<_> = (0..180).map(|_| sut.connect("dumb/line")).collect();
    for c in &mut idle {
        roundtrip(c, b"PING\n", b"PONG\n");
    }
    let v = sut.stats();
    let on0 = stat(&v, "md", 0, "commands.dumb.wait").unwrap_or(0);
    assert!(on0 > 0, "no WAIT went to md 0");
    let victim = sut.md_pid(0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::SIGKILL)
        .expect("kill md 0");
    sut.wait_stats("md 0's waiting connections closed", |v| {
        expect_exact(v, &[("io", 0, "closed_md_gone", on0), ("io", 0, "md_deaths", 1)])
    });
    // Every idle connection still works (md 1, or md 0 restarted by io_conn).
    for c in &mut idle {
        roundtrip(c, b"PING\n", b"PONG\n");
    }
    // The waiters on md 1 are still waiting: their connections are open (a PING queues behind
    // the WAIT); the ones on md 0 got EOF without a byte.
    let mut closed = 0;
    for c in &mut waiting {
        c.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(0) => closed += 1,
            Ok(_) => panic!("a WAIT 20000 answered early"),
            Err(_) => {} // still waiting
        }
    }
    assert_eq!(closed, on0, "closed connections = WAITs in flight on the killed md");
    let v = sut.stats();
    assert_eq!(stat(&v, "io", 0, "closed_by_peer"), Some(0));
    drop(idle);
    drop(waiting);
    sut.stop();
}

/// SIGTERM to one of two md (`systemctl stop md@1`) under `request` dispatch, with 40 clients in
/// the middle of `WAIT 1500` spread over both: md 1 says LEAVE and gets nothing new, answers what
/// it has and exits 0; all 40 get `DONE`, and the same 40 connections then answer `PING` (on
/// md 0): nothing lost, no connection closed.
#[test]
fn an_md_leaving_finishes_its_requests_and_the_connections_carry_on() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let sut = request_server("disp_leave", 0, 2);
    let start = |i: u32| sut.hand_md(&util::md_bin(), i);
    let _md0 = start(0);
    sut.wait_log("md instance 0 live", 1);
    let mut md1 = start(1);
    sut.wait_log("md instance 1 live", 1);
    let mut clients: Vec<_> = (0..40).map(|_| sut.connect("dumb/line")).collect();
    for c in &mut clients {
        c.write_all(b"WAIT 1500\n").expect("write");
    }
    let v = sut
        .wait_stats("the WAITs dispatched", |v| expect_exact(v, &[("io", 0, "messages_in", 40)]));
    let on1 = stat(&v, "in.producer", 1, "requests_in_flight").unwrap_or(0);
    assert!(on1 > 0, "no WAIT went to md 1");
    kill(Pid::from_raw(md1.0.id() as i32), Signal::SIGTERM).expect("SIGTERM md 1");
    for c in &mut clients {
        assert_eq!(read_line(c), "DONE\n");
    }
    let until = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(st) = md1.0.try_wait().expect("wait md 1") {
            break st;
        }
        assert!(Instant::now() < until, "md 1 did not exit after leaving");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "md 1 exits 0 after leaving: {status}");
    for c in &mut clients {
        roundtrip(c, b"PING\n", b"PONG\n");
    }
    sut.wait_stats("nothing closed or dropped", |v| {
        expect_exact(
            v,
            &[
                ("io", 0, "connections_current", 40),
                ("io", 0, "closed_md_gone", 0),
                ("io", 0, "requests_dropped", 0),
                ("io", 0, "md_deaths", 1),
            ],
        )
    });
    drop(clients);
    sut.stop();
}

/// An md that fails fast (it refuses the service and closes every connection routed to it, so it
/// always looks idle) stops attracting requests: md 1 runs the `upper` example, which serves only
/// `upper`; of 100 PINGs on 100 fresh connections, only the first few that reach it fail (each
/// failure is counted against it until it answers), the rest are answered by md 0.
#[test]
fn an_md_that_fails_fast_stops_attracting_requests() {
    let sut = request_server("disp_failfast", 1, 2);
    let _md1 = sut.hand_md(&util::example_bin("upper"), 1);
    sut.wait_log("md instance 1 live", 1);
    let mut failed = 0;
    for _ in 0..100 {
        let mut c = sut.connect("dumb/line");
        c.write_all(b"PING\n").expect("write");
        match read_to_eof_or_line(&mut c) {
            Some(l) => assert_eq!(l, "PONG\n"),
            None => failed += 1,
        }
    }
    assert!(failed >= 1, "md 1 was never tried (the test shows nothing)");
    assert!(failed <= 3, "{failed} of 100 requests went to the md that fails them all");
    sut.wait_stats("the failures counted", |v| {
        expect_exact(v, &[("io", 0, "closed_by_md", failed)])
    });
    sut.stop();
}

/// A line, or `None` if the server closed the connection without one.
fn read_to_eof_or_line(c: &mut std::net::TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut b = [0u8; 64];
    loop {
        let n = c.read(&mut b).expect("read");
        if n == 0 {
            return (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned());
        }
        got.extend_from_slice(&b[..n]);
        if got.ends_with(b"\n") {
            return Some(String::from_utf8_lossy(&got).into_owned());
        }
    }
}

/// Stopping io_conn (SIGTERM) with md children that served request-dispatched connections: the
/// children leave at once (io_conn tells them it routes nothing more) and exit 0, instead of
/// waiting for an acknowledgement until io_conn gives up and kills them.
#[test]
fn stopping_io_conn_lets_its_md_children_leave_at_once() {
    let sut = request_server("disp_stop", 2, 2);
    let mut c = sut.connect("dumb/line");
    for _ in 0..4 {
        roundtrip(&mut c, b"PING\n", b"PONG\n");
    }
    drop(c);
    let log = std::sync::Arc::clone(&sut.log);
    sut.stop();
    let log = log.lock().expect("log").clone();
    assert!(!log.contains("ignored SIGTERM"), "an md child had to be killed:\n{log}");
    assert_eq!(log.matches("stopped: exit status: 0").count(), 2, "both md exit 0:\n{log}");
}
