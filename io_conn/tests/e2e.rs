//! End to end: the real io_conn binary with real md children, real sockets on 127.0.0.1, real
//! shared memory. Every test stops the server with SIGTERM and checks exit 0 and that every
//! segment and FIFO it created is gone. Assertions are about bytes and order, never timing; every
//! wait has a generous watchdog.

#[path = "e2e/notify.rs"]
mod notify;
#[path = "e2e/stats.rs"]
mod stats;
mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use util::{
    KillOnDrop, Server, Setup, WATCHDOG, expect_exact, pattern, read_line, read_n, read_to_eof,
    roundtrip, stat,
};

/// Echo is byte-exact from 1 B to several MiB, on many connections at once (writer and reader
/// run concurrently per connection, so partial reads and writes happen on both sides).
#[test]
fn echo_byte_exact_many_sizes_concurrently() {
    let sut = Server::start("echo_exact", 2);
    let sizes = [
        1usize,
        7,
        100,
        4095,
        16384,
        16385,
        65536,
        300_000,
        1 << 20,
        3 << 20,
        5 << 20,
        1,
        2,
        3,
        999,
        12345,
    ];
    let mut joins = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let mut s = sut.connect("echo/raw");
        joins.push(thread::spawn(move || {
            let data = pattern(n, i as u64);
            let mut w = s.try_clone().expect("clone");
            let d2 = data.clone();
            let writer = thread::spawn(move || {
                // Uneven chunks: the server sees arbitrary read boundaries.
                let mut off = 0;
                let mut k = 0;
                while off < d2.len() {
                    let c = [1, 10, 1000, 70_000][k % 4].min(d2.len() - off);
                    w.write_all(&d2[off..off + c]).expect("write");
                    off += c;
                    k += 1;
                }
            });
            let got = read_n(&mut s, n);
            writer.join().expect("writer");
            assert!(got == data, "echo of {n} bytes differs");
        }));
    }
    for j in joins {
        j.join().expect("echo connection");
    }
    sut.stop();
}

/// reverse and dumb answer byte-exact, pipelined requests in order; len32 echo keeps framing.
#[test]
fn reverse_dumb_len32_pipelined_in_order() {
    let sut = Server::start("rev_dumb", 2);
    let mut r = sut.connect("reverse/line");
    roundtrip(&mut r, b"abc\nhello world\n\n", b"cba\ndlrow olleh\n\n");

    let mut d = sut.connect("dumb/line");
    // Pipelined in one write: the replies must come back in request order, WAIT included.
    d.write_all(b"PING\nWAIT 50\nBURN 10\nPING\nBURN 3\n").expect("write");
    for want in ["PONG\n", "DONE\n", "RESULT 55\n", "PONG\n", "RESULT 6\n"] {
        assert_eq!(read_line(&mut d), want);
    }
    d.write_all(b"NONSENSE\n").expect("write");
    assert!(read_line(&mut d).starts_with("ERR"));
    roundtrip(&mut d, b"PING\n", b"PONG\n");

    let mut l = sut.connect("echo/len32");
    // io_conn passes each whole len32 message (prefix included) to md, and md's output is a
    // byte stream: echo returns every message, pipelined, empty ones included, framing intact.
    let mut req = Vec::new();
    for m in [&b"one"[..], b"", b"three3", &[7u8; 40_000][..], b"x"] {
        req.extend_from_slice(&(m.len() as u32).to_be_bytes());
        req.extend_from_slice(m);
    }
    l.write_all(&req).expect("write");
    assert_eq!(read_n(&mut l, req.len()), req);
    drop((r, d, l));
    sut.stop();
}

/// Scenario a: `WAIT` on one connection does not hold up `PING` on another (1 md and 2 md).
/// The WAIT is an hour long, so it is certainly still pending when the PING is answered however
/// slow the machine (that `WAIT` ends in `DONE` is shown by the pipelining and half-close tests);
/// the waiting client then resets its connection, which cancels it.
#[test]
fn scenario_a_wait_does_not_block_ping() {
    for mds in [1, 2] {
        let sut = Server::start_with(
            &format!("scen_a{mds}"),
            Setup { spawn_md: mds, md_extra: "[md.dumb]\nwait_max = \"1h\"", ..Setup::default() },
        );
        let mut a = sut.connect("dumb/line");
        a.write_all(b"WAIT 3600000\n").expect("write");
        // The WAIT is in md's ring before the PING (with one md, md has it pending).
        sut.wait_io("WAIT handed to md", &[("messages_in", 1)]);
        let mut b = sut.connect("dumb/line");
        roundtrip(&mut b, b"PING\n", b"PONG\n");
        // The WAIT is still pending: nothing has arrived on `a`, and it is still open.
        a.set_nonblocking(true).expect("nonblocking");
        let mut x = [0u8; 8];
        let pending =
            matches!(a.read(&mut x), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(
            pending,
            "WAIT answered (or its connection closed) before PING elsewhere (mds={mds})"
        );
        util::set_linger_zero(&a); // close() sends RST: md is sent CLOSE and drops the WAIT
        drop((a, b));
        sut.wait_io("both closed", &[("connections_current", 0), ("closed_by_peer", 2)]);
        sut.stop();
    }
}

/// Scenario b: a slow reader of `STREAM 100000000` holds only its credit; PING elsewhere is
/// answered meanwhile and io_conn's memory stays bounded. Abandoning the stream is a plain peer
/// close.
#[test]
fn scenario_b_stream_slow_reader_bounded() {
    let sut = Server::start("scen_b", 1);
    let rss_before = sut.rss_kib();
    let mut a = sut.connect("dumb/line");
    // A small receive buffer makes the backlog show up at io_conn quickly.
    nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::RcvBuf, &4096).expect("SO_RCVBUF");
    a.write_all(b"STREAM 100000000\n").expect("write");
    let mut buf = [0u8; 10];
    let mut pings = 0;
    for round in 0..50 {
        let n = a.read(&mut buf).expect("read");
        assert!(n > 0, "EOF in the middle of the stream");
        assert!(buf[..n].iter().all(|&c| c == b'A'), "{:?}", String::from_utf8_lossy(&buf[..n]));
        if round % 10 == 0 {
            let mut b = sut.connect("dumb/line");
            roundtrip(&mut b, b"PING\n", b"PONG\n");
            pings += 1;
        }
        thread::sleep(Duration::from_millis(20));
    }
    // The stream is held at the flow's credit (output_credit, 256 KiB by default): what md has
    // sent minus what io_conn has written to the socket (md's and io_conn's byte counters; the
    // PONGs are in both) stays within it. A stream not held by credit grows that difference
    // without bound, or gets the flow closed as a credit overrun.
    const CREDIT: u64 = 256 * 1024;
    sut.wait_stats("stream held at its credit", |v| {
        let mut p = expect_exact(
            v,
            &[
                ("io", 0, "connections_current", 1),
                ("io", 0, "closed_by_peer", pings),
                ("io", 0, "closed_credit_overrun", 0),
                ("io", 0, "closed_error", 0),
                ("md", 0, "dumb_stream", 1),
            ],
        );
        let sent = stat(v, "md", 0, "bytes_out");
        let written = stat(v, "io", 0, "bytes_out");
        match (sent, written) {
            (Some(s), Some(w)) if w <= s && s - w <= CREDIT => {}
            _ => p.push(format!(
                "md sent {sent:?} bytes, io_conn wrote {written:?}: more than {CREDIT} unwritten"
            )),
        }
        p
    });
    let rss_after = sut.rss_kib();
    // Credit is 256 KiB per flow; allow generous slack for allocator and kernel noise.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "io_conn RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The stream is far from done; abandoning it mid-way is clean: counted as a peer close (not
    // an error), and md is sent a CLOSE for it, so it stops the stream (the PING clients ended
    // with a FIN: md got EOF for those and closed them itself).
    drop(a);
    sut.wait_stats("stream abandoned", |v| {
        expect_exact(
            v,
            &[
                ("io", 0, "connections_current", 0),
                ("io", 0, "closed_by_peer", pings + 1),
                ("io", 0, "closed_error", 0),
                ("md", 0, "closes_in", 1),
                ("md", 0, "closes_out", pings),
            ],
        )
    });
    let mut b = sut.connect("dumb/line");
    roundtrip(&mut b, b"PING\n", b"PONG\n");
    drop(b);
    sut.stop();
}

/// Scenario c: a slowloris line does not hold up others; with a short message deadline a line
/// that never completes gets its connection closed, counted as a deadline close.
#[test]
fn scenario_c_slowloris() {
    // The default message deadline (30 s): the slow line never comes near it, however loaded the
    // machine.
    let sut = Server::start("scen_c", 1);
    let mut a = sut.connect("dumb/line");
    let (mut bytes_in, mut pings) = (0, 0);
    for part in [&b"P"[..], b"I", b"N"] {
        a.write_all(part).expect("write");
        // io_conn has read the part (so a's line is pending there, not a message yet) before
        // another client asks.
        bytes_in += 1;
        sut.wait_io("partial line read", &[("bytes_in", bytes_in), ("messages_in", pings)]);
        let mut b = sut.connect("dumb/line");
        roundtrip(&mut b, b"PING\n", b"PONG\n");
        bytes_in += 5;
        pings += 1;
    }
    a.write_all(b"G\n").expect("write");
    assert_eq!(read_line(&mut a), "PONG\n");
    drop(a);
    sut.stop();

    // Never finishes its line: closed after the deadline, without a reply (EOF: read_to_eof
    // panics on its watchdog read timeout instead), and counted as a deadline close.
    let sut = Server::start_with(
        "scen_c_deadline",
        Setup { spawn_md: 1, io_extra: "message_deadline = \"1500ms\"", ..Setup::default() },
    );
    let mut c = sut.connect("dumb/line");
    c.write_all(b"PIN").expect("write");
    let rest = read_to_eof(&mut c);
    assert_eq!(String::from_utf8_lossy(&rest), "", "no reply to an incomplete line");
    sut.wait_io(
        "deadline close",
        &[
            ("connections_current", 0),
            ("closed_deadline", 1),
            ("closed_by_peer", 0),
            ("closed_idle", 0),
            ("messages_in", 0),
        ],
    );
    drop(c);
    sut.stop();
}

/// Scenario d: BURN. With one md a PING on another connection is answered after the BURN
/// result (md is busy) but accepting keeps working; with two md a new connection's PING is
/// answered while the other md is still burning.
#[test]
fn scenario_d_burn() {
    const RESULT: &str = "RESULT 5000000050000000\n";
    // One md: md answers BURN, then PING, and flushes both in one batch; io_conn writes them in
    // ring order (RESULT to `a` first) and loopback delivers a write at once. So whenever b's
    // PONG is readable, a's RESULT already is: checked causally, not by which reader thread
    // happens to win a race for a channel.
    {
        let sut = Server::start("scen_d1", 1);
        let mut a = sut.connect("dumb/line");
        a.write_all(b"BURN 100000000\n").expect("write");
        // The BURN is in md's ring before b's PING, so md takes them in that order.
        sut.wait_io("BURN handed to md", &[("messages_in", 1)]);
        let mut b = sut.connect("dumb/line"); // accepted while md burns
        b.write_all(b"PING\n").expect("write");
        assert_eq!(read_line(&mut b), "PONG\n");
        a.set_nonblocking(true).expect("nonblocking");
        let mut x = [0u8; 1];
        let ready = matches!(a.peek(&mut x), Ok(1));
        assert!(ready, "one md: PING answered before the BURN result");
        a.set_nonblocking(false).expect("blocking");
        assert_eq!(read_line(&mut a), RESULT);
        drop((a, b));
        sut.stop();
    }
    // Two md: a BURN of 10^15 iterations keeps md 0 busy for hours, far beyond the test, so the
    // PING is answered while it runs however slow the machine is (no sleep, no race). md 0 is
    // then killed: its connection is closed for that reason, it is restarted, md 1 serves on.
    {
        let sut = Server::start_with(
            "scen_d2",
            Setup {
                spawn_md: 2,
                max_instances: 2,
                md_extra: "[md.dumb]\nburn_max = 1000000000000000",
                ..Setup::default()
            },
        );
        let mut a = sut.connect("dumb/line");
        a.write_all(b"BURN 1000000000000000\n").expect("write");
        // `a` is bound (to md 0: the fewest flows, the first on a tie) and its BURN handed over
        // before `b` connects, so `b` goes to md 1.
        sut.wait_io("BURN handed to md", &[("connections_accepted", 1), ("messages_in", 1)]);
        let mut b = sut.connect("dumb/line");
        roundtrip(&mut b, b"PING\n", b"PONG\n");
        a.set_nonblocking(true).expect("nonblocking");
        let mut x = [0u8; 1];
        let pending =
            matches!(a.peek(&mut x), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(pending, "two md: the BURN answered (or the connection closed) before the PING");
        a.set_nonblocking(false).expect("blocking");

        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sut.md_pid(0) as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill md 0");
        assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut a)), "", "closed without a reply");
        sut.wait_io(
            "md 0 killed mid-BURN",
            &[("md_deaths", 1), ("closed_md_gone", 1), ("connections_current", 1)],
        );
        sut.wait_log("md instance 0 live", 2);
        roundtrip(&mut b, b"PING\n", b"PONG\n");
        drop((a, b));
        sut.stop();
    }
}

/// An oversized line gets `ERR message too long` and a close; garbage lines each get an error
/// line and then a clean close; an absurd len32 length a close; each close counted for its
/// reason; the server keeps serving.
#[test]
fn oversized_and_garbage() {
    let sut = Server::start("oversized", 1);
    let mut a = sut.connect("dumb/line");
    let long = vec![b'x'; 70_000]; // max_message is 64 KiB
    // The server may answer and stop reading before all of it is written: the write may fail.
    let _ = a.write_all(&long);
    let _ = a.write_all(b"\n");
    let got = read_to_eof(&mut a);
    assert_eq!(String::from_utf8_lossy(&got), "ERR message too long\n");
    // io_conn discards input until the client closes; then it counts the close.
    drop(a);
    sut.wait_io("oversized line", &[("closed_oversized", 1), ("framing_errors", 1)]);

    // Binary garbage on a line service: every line (each well under max_message) is a request
    // md answers with one ERR line, in order; after the client's FIN the server closes cleanly.
    for seed in 0..20 {
        let mut g = sut.connect("dumb/line");
        let mut junk = pattern(5000, seed);
        junk.push(b'\n');
        let lines = junk.iter().filter(|&&c| c == b'\n').count();
        g.write_all(&junk).expect("write");
        g.shutdown(Shutdown::Write).expect("shutdown");
        let got = String::from_utf8_lossy(&read_to_eof(&mut g)).into_owned();
        let replies: Vec<&str> = got.split_inclusive('\n').collect();
        assert_eq!(replies.len(), lines, "one reply per garbage line (seed {seed}): {got:?}");
        assert!(
            replies.iter().all(|r| r.starts_with("ERR ") && r.ends_with('\n')),
            "garbage answered with something other than ERR lines (seed {seed}): {got:?}"
        );
    }
    // len32 with an absurd length: closed, nothing echoed.
    let mut l = sut.connect("echo/len32");
    l.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).expect("write");
    assert!(read_to_eof(&mut l).is_empty());
    sut.wait_io(
        "after garbage and the absurd length",
        &[
            ("connections_current", 0),
            ("closed_by_peer", 20),
            ("closed_oversized", 2),
            ("framing_errors", 2),
            ("closed_error", 0),
        ],
    );
    // Everyone else is fine.
    let mut b = sut.connect("dumb/line");
    roundtrip(&mut b, b"PING\n", b"PONG\n");
    drop(b);
    sut.stop();
}

/// Half-close: requests sent before the client's FIN are all answered, then the server closes.
#[test]
fn half_close_gets_replies_then_close() {
    let sut = Server::start("halfclose", 1);
    let mut a = sut.connect("dumb/line");
    a.write_all(b"PING\nWAIT 100\nPING\n").expect("write");
    a.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut a)), "PONG\nDONE\nPONG\n");
    // A last line without its newline is still a request.
    let mut e = sut.connect("reverse/line");
    e.write_all(b"abc\nxyz").expect("write");
    e.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut e)), "cba\nzyx\n");
    drop((a, e));
    sut.stop();
}

/// Clients that reset mid-request or vanish with replies queued, a thousand times: the server
/// keeps serving and no reply ever reaches a wrong connection (each probe connection sees only
/// its own PONGs, even though it reuses slots of flows that had output queued).
#[test]
fn abrupt_disconnects_never_leak_replies() {
    let sut = Server::start("abrupt", 2);
    let mut probe = sut.connect("dumb/line");
    let mut fresh_conns = 0;
    for i in 0..1000u32 {
        let mut s = sut.connect(if i % 3 == 0 { "echo/raw" } else { "dumb/line" });
        // Nothing has closed the new connection yet: every write is taken whole.
        match i % 4 {
            0 => s.write_all(&pattern(20_000, u64::from(i))),
            1 => s.write_all(b"STREAM 1000000\nPING\n"),
            2 => s.write_all(b"PING\nPING\nPI"),
            _ => s.write_all(b"WAIT 5\nBURN 1000\n"),
        }
        .expect("write");
        if i % 2 == 0 {
            util::set_linger_zero(&s); // close() sends RST
        }
        drop(s);
        if i % 50 == 0 {
            // A fresh connection (likely reusing a just-freed slot) gets exactly its own answer.
            let mut fresh = sut.connect("dumb/line");
            roundtrip(&mut fresh, b"PING\n", b"PONG\n");
            fresh.shutdown(Shutdown::Write).expect("shutdown");
            assert!(read_to_eof(&mut fresh).is_empty(), "foreign bytes on a fresh connection");
            fresh_conns += 1;
            roundtrip(&mut probe, b"PING\n", b"PONG\n");
        }
    }
    // Every abrupt client's flow was torn down (whether io_conn saw the reset on a read or on a
    // write of a reply): only the probe is left.
    sut.wait_io(
        "abrupt clients gone",
        &[("connections_accepted", 1000 + fresh_conns + 1), ("connections_current", 1)],
    );
    probe.shutdown(Shutdown::Write).expect("shutdown");
    assert!(read_to_eof(&mut probe).is_empty(), "foreign bytes on the probe connection");
    sut.stop();
}

/// An md that dies has its connections closed; io_conn restarts it (dev mode) and serves on.
#[test]
fn md_death_closes_its_flows_and_restarts() {
    let sut = Server::start("mddeath", 1);
    let mut a = sut.connect("dumb/line");
    roundtrip(&mut a, b"PING\n", b"PONG\n");
    let pid = sut.md_pids()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill md");
    // The client sees its connection end, without a reply, for that reason. (The write may fail
    // if io_conn has closed the connection already.)
    a.write_all(b"WAIT 10000\n").ok();
    assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut a)), "", "closed without a reply");
    sut.wait_io("md died", &[("md_deaths", 1), ("closed_md_gone", 1), ("closed_by_peer", 0)]);
    sut.wait_log("md instance 0 live", 2);
    let mut b = sut.connect("dumb/line");
    roundtrip(&mut b, b"PING\n", b"PONG\n");
    drop(b);
    sut.stop();
}

/// With no md running a connection is held (not refused); an md started by hand with
/// `md --config PATH --instance 0` picks it up. A second io_conn on the same name refuses to
/// start while the first lives.
#[test]
fn held_until_md_attaches_by_hand_and_live_predecessor_refused() {
    let sut =
        Server::start_with("byhand", Setup { spawn_md: 0, max_instances: 1, ..Setup::default() });
    let mut a = sut.connect("dumb/line");
    a.write_all(b"PING\n").expect("write");

    let second = std::process::Command::new(util::io_conn_bin())
        .arg("--config")
        .arg(&sut.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run second io_conn");
    assert!(!second.status.success(), "a second io_conn started beside a live one");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("running"), "unclear error: {err}");

    // Killed (and reaped) on drop, also when an assertion fails.
    let _md = KillOnDrop(
        std::process::Command::new(util::md_bin())
            .arg("--config")
            .arg(&sut.config)
            .arg("--instance")
            .arg("0")
            .spawn()
            .expect("start md"),
    );
    assert_eq!(read_line(&mut a), "PONG\n");
    drop(a);
    sut.stop();
}

/// Connections beyond max_connections are refused cleanly (line services get a reason).
#[test]
fn max_connections_refused_cleanly() {
    let sut = Server::start_with(
        "maxconn",
        Setup { spawn_md: 1, io_extra: "max_connections = 2", ..Setup::default() },
    );
    let mut a = sut.connect("dumb/line");
    let mut b = sut.connect("dumb/line");
    roundtrip(&mut a, b"PING\n", b"PONG\n");
    roundtrip(&mut b, b"PING\n", b"PONG\n");
    let mut c = sut.connect("dumb/line");
    assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut c)), "ERR too many connections\n");
    sut.wait_io("one refused", &[("connections_refused", 1), ("connections_current", 2)]);
    drop(a);
    // A slot frees up (watchdog loop: the close reaches io_conn asynchronously).
    let until = Instant::now() + WATCHDOG;
    loop {
        let mut d = sut.connect("dumb/line");
        let _ = d.write_all(b"PING\n");
        // A refused connection may see the ERR line or, if our PING was still unread when it
        // closed, a reset.
        let got = util::try_read_line(&mut d);
        if got.as_deref() == Some("PONG\n") {
            break;
        }
        assert!(got.is_none() || got.as_deref() == Some("ERR too many connections\n"), "{got:?}");
        assert!(Instant::now() < until);
        thread::sleep(Duration::from_millis(20));
    }
    drop(b);
    sut.stop();
}

/// Out of file descriptors (EMFILE on accept): io_conn pauses accepting instead of spinning on a
/// listener that stays readable, keeps serving the connections it has, and accepts the waiting
/// ones (which sit in the kernel's backlog meanwhile) once descriptors are available again. The
/// soft limit of the running io_conn is lowered from outside with `prlimit`.
#[test]
fn emfile_pauses_accepting_and_keeps_serving() {
    let sut = Server::start("emfile", 1);
    let pid = sut.pid();
    let mut a = sut.connect("dumb/line");
    roundtrip(&mut a, b"PING\n", b"PONG\n");
    let prlimit = |soft: &str| {
        let st = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
            .status()
            .expect("run prlimit (util-linux)");
        assert!(st.success(), "prlimit failed: {st}");
    };
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .expect("Max open files line")
        .to_owned();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir").count();
    // Room for one more connection, not for the ten that follow.
    prlimit(&(open_fds + 1).to_string());
    let mut waiting: Vec<_> = (0..10).map(|_| sut.connect("dumb/line")).collect();
    for c in &mut waiting {
        c.write_all(b"PING\n").expect("write");
    }
    sut.wait_log("pausing accepts", 1);
    // The connection it has is still served while accepting is paused.
    roundtrip(&mut a, b"PING\n", b"PONG\n");
    // Descriptors again: every waiting connection is accepted and answered.
    prlimit(&soft);
    for c in &mut waiting {
        assert_eq!(read_line(c), "PONG\n");
    }
    roundtrip(&mut a, b"PING\n", b"PONG\n");
    // Paused and retried on a timer, not spun on: a busy loop on the readable listener would
    // log (and count) EMFILE hundreds of thousands of times a second.
    let pauses = sut.log_text().matches("pausing accepts").count();
    assert!(pauses < 1000, "{pauses} EMFILE pauses: accept is spinning");
    drop((a, waiting));
    sut.stop();
}

/// BROADCAST end to end, with md's `chat` example as the md binary (one instance): a line from
/// one client of `chat` reaches every client of `chat`, byte-exact and in the same order for
/// all; clients of another service (`chat-b`, served by the same md) get none of it, and
/// `/who` answers only its sender.
#[test]
fn broadcast_reaches_every_flow_of_the_service() {
    let listeners = util::listener("chat", "line") + &util::listener("chat-b", "line");
    let sut = Server::start_with(
        "broadcast",
        Setup {
            spawn_md: 1,
            md_bin: Some(util::example_bin("chat")),
            listeners: &listeners,
            ..Setup::default()
        },
    );
    // Connect one at a time; each `/who` answer proves md has opened the flow (so io_conn's
    // flow is open too) before the next client comes, which makes the counts exact.
    let mut chat = Vec::new();
    for i in 1..=3 {
        let mut c = sut.connect("chat/line");
        roundtrip(&mut c, b"/who\n", format!("{i} in chat\n").as_bytes());
        chat.push(c);
    }
    let mut other = sut.connect("chat-b/line");
    roundtrip(&mut other, b"/who\n", b"1 in chat-b\n");
    let said = |c: &std::net::TcpStream, text: &str| {
        format!("{}: {text}\n", c.local_addr().expect("local addr")).into_bytes()
    };

    // Client 1 speaks: all three hear it, byte-exact (the sender too).
    chat[0].write_all(b"hello, room\n").expect("write");
    let want = said(&chat[0], "hello, room");
    for c in &mut chat {
        assert_eq!(String::from_utf8_lossy(&read_n(c, want.len())), String::from_utf8_lossy(&want));
    }
    // The other room got nothing of it: the first thing it reads is its own line.
    other.write_all(b"over here\n").expect("write");
    assert_eq!(read_line(&mut other).into_bytes(), said(&other, "over here"));

    // Clients 2 and 3 speak at once: everyone gets both lines, whole, in one common order.
    let lines = [said(&chat[1], "from two"), said(&chat[2], "from three")];
    chat[1].write_all(b"from two\n").expect("write");
    chat[2].write_all(b"from three\n").expect("write");
    let mut orders = Vec::new();
    for c in &mut chat {
        let got = [read_line(c).into_bytes(), read_line(c).into_bytes()];
        assert!(
            (got[0] == lines[0] && got[1] == lines[1])
                || (got[0] == lines[1] && got[1] == lines[0]),
            "{:?}",
            got.map(|l| String::from_utf8_lossy(&l).into_owned())
        );
        orders.push(got);
    }
    assert!(orders.iter().all(|o| *o == orders[0]), "every client sees the same order");

    // `/who` goes to its sender only: the others' next line is the next broadcast.
    roundtrip(&mut chat[0], b"/who\n", b"3 in chat\n");
    chat[1].write_all(b"bye\n").expect("write");
    let bye = said(&chat[1], "bye");
    for c in &mut chat {
        assert_eq!(read_line(c).into_bytes(), bye);
    }
    // A service the chat md does not serve is refused and closed: nothing was broadcast to it.
    let mut echo = sut.connect("echo/raw");
    assert_eq!(read_to_eof(&mut echo), b"");
    sut.wait_io("echo refused by md", &[("closed_by_md", 1)]);

    drop((chat, other, echo));
    sut.stop();
}

/// Many connections at once (c10k-style, kept below this machine's 20 000 open-files hard limit:
/// the test process holds one end of each, io_conn the other): every one gets its own PONG, in
/// two rounds, and io_conn's memory stays small. Idle connections hold no buffers.
#[test]
fn nine_thousand_connections_each_answered() {
    const N: usize = 9_000;
    let limit = io_conn::raise_nofile_limit().expect("raise RLIMIT_NOFILE");
    assert!(limit as usize > N + 100, "open-files limit {limit} too low for this test");
    let sut = Server::start("c9k", 2);
    let rss_before = sut.rss_kib();
    let mut conns: Vec<_> = (0..N).map(|_| sut.connect("dumb/line")).collect();
    for round in 0..2 {
        for c in &mut conns {
            c.write_all(b"PING\n").expect("write");
        }
        for (i, c) in conns.iter_mut().enumerate() {
            assert_eq!(read_line(c), "PONG\n", "connection {i}, round {round}");
        }
    }
    let rss_after = sut.rss_kib();
    // ~300 B per idle connection measured (docs/BENCHMARKS.md); allow 2 KiB each.
    assert!(
        rss_after.saturating_sub(rss_before) < (N as u64 * 2048) / 1024,
        "io_conn RSS grew from {rss_before} KiB to {rss_after} KiB for {N} connections"
    );
    drop(conns);
    sut.stop();
}
