//! The C tutorial's scenarios a-d: a slow request, a slow reader, a slowloris client and a
//! long BURN never hold up anyone else.

use super::*;

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
                ("md", 0, "commands.dumb.stream", 1),
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

/// Scenario d: BURN. With one md a PING on another connection is answered while the BURN runs
/// (md works in time slices, `md.slice`) and accepting keeps working; with two md a new
/// connection's PING is answered while the other md is still burning.
#[test]
fn scenario_d_burn() {
    // One md: a BURN of 10^15 iterations keeps md busy for hours, far beyond the test, so b's
    // PING is certainly answered while it runs (no race): between two slices. (Before slicing,
    // the PONG came after the RESULT.) `a` then resets its connection: md is sent CLOSE and drops
    // the yielded BURN, and keeps serving.
    {
        let sut = Server::start_with(
            "scen_d1",
            Setup {
                spawn_md: 1,
                md_extra: "[md.dumb]\nburn_max = 1000000000000000",
                ..Setup::default()
            },
        );
        let mut a = sut.connect("dumb/line");
        a.write_all(b"BURN 1000000000000000\n").expect("write");
        // The BURN is in md's ring before b's PING, so md takes them in that order.
        sut.wait_io("BURN handed to md", &[("messages_in", 1)]);
        let mut b = sut.connect("dumb/line"); // accepted while md burns
        roundtrip(&mut b, b"PING\n", b"PONG\n");
        a.set_nonblocking(true).expect("nonblocking");
        let mut x = [0u8; 1];
        let pending =
            matches!(a.peek(&mut x), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(pending, "one md: the BURN answered (or the connection closed) before the PING");
        util::set_linger_zero(&a);
        drop(a);
        sut.wait_io("a reset", &[("closed_by_peer", 1)]);
        roundtrip(&mut b, b"PING\n", b"PONG\n");
        drop(b);
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
        // io_conn shut its side down (the FIN just read) and lingers until the client closes
        // too, so nothing the client still sends can turn the close into an RST.
        drop(a);
        sut.wait_io(
            "md 0 killed mid-BURN",
            &[("md_deaths", 1), ("closed_md_gone", 1), ("connections_current", 1)],
        );
        sut.wait_log("md instance 0 live", 2);
        roundtrip(&mut b, b"PING\n", b"PONG\n");
        drop(b);
        sut.stop();
    }
}
