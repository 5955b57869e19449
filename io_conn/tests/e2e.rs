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
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use util::{Server, Setup, WATCHDOG, pattern, read_line, read_n, read_to_eof, roundtrip};

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
#[test]
fn scenario_a_wait_does_not_block_ping() {
    for mds in [1, 2] {
        let sut = Server::start(&format!("scen_a{mds}"), mds);
        let mut a = sut.connect("dumb/line");
        a.write_all(b"WAIT 2000\n").expect("write");
        let mut b = sut.connect("dumb/line");
        roundtrip(&mut b, b"PING\n", b"PONG\n");
        // The WAIT is still pending: nothing has arrived on `a` yet.
        a.set_nonblocking(true).expect("nonblocking");
        let mut x = [0u8; 8];
        let pending =
            matches!(a.read(&mut x), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(pending, "WAIT 2000 answered before PING elsewhere (mds={mds})");
        a.set_nonblocking(false).expect("blocking");
        assert_eq!(read_line(&mut a), "DONE\n");
        drop((a, b));
        sut.stop();
    }
}

/// Scenario b: a slow reader of `STREAM 100000000` holds only its credit; PING elsewhere is
/// answered meanwhile and io_conn's memory stays bounded.
#[test]
fn scenario_b_stream_slow_reader_bounded() {
    let sut = Server::start("scen_b", 1);
    let rss_before = sut.rss_kib();
    let mut a = sut.connect("dumb/line");
    // A small receive buffer makes the backlog show up at io_conn quickly.
    nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::RcvBuf, &4096).expect("SO_RCVBUF");
    a.write_all(b"STREAM 100000000\n").expect("write");
    let mut got = 0usize;
    let mut buf = [0u8; 10];
    for round in 0..50 {
        let n = a.read(&mut buf).expect("read");
        assert!(n > 0 && buf[..n].iter().all(|&c| c == b'A'));
        got += n;
        if round % 10 == 0 {
            let mut b = sut.connect("dumb/line");
            roundtrip(&mut b, b"PING\n", b"PONG\n");
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(got < 1000, "the slow reader read only what it asked for");
    let rss_after = sut.rss_kib();
    // Credit is 256 KiB per flow; allow generous slack for allocator and kernel noise.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "io_conn RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The stream is far from done; abandoning it mid-way is clean.
    drop(a);
    let mut b = sut.connect("dumb/line");
    roundtrip(&mut b, b"PING\n", b"PONG\n");
    drop(b);
    sut.stop();
}

/// Scenario c: a slowloris line does not hold up others; with a short message deadline a line
/// that never completes gets its connection closed.
#[test]
fn scenario_c_slowloris() {
    let sut = Server::start_with(
        "scen_c",
        Setup { spawn_md: 1, io_extra: "message_deadline = \"1500ms\"", ..Setup::default() },
    );
    let mut a = sut.connect("dumb/line");
    for part in [&b"P"[..], b"I", b"N"] {
        a.write_all(part).expect("write");
        thread::sleep(Duration::from_millis(200));
        let mut b = sut.connect("dumb/line");
        roundtrip(&mut b, b"PING\n", b"PONG\n");
    }
    a.write_all(b"G\n").expect("write");
    assert_eq!(read_line(&mut a), "PONG\n");

    // Never finishes its line: closed after the deadline (watchdog far above it).
    let mut c = sut.connect("dumb/line");
    c.write_all(b"PIN").expect("write");
    let start = Instant::now();
    let rest = read_to_eof(&mut c);
    assert!(rest.is_empty(), "no reply to an incomplete line");
    assert!(start.elapsed() < WATCHDOG);
    drop((a, c));
    sut.stop();
}

/// Scenario d: BURN. With one md a PING on another connection is answered after the BURN
/// result (md is busy) but accepting keeps working; with two md a new connection's PING is
/// answered before the BURN finishes.
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
        thread::sleep(Duration::from_millis(200)); // let md start burning
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
    {
        let sut = Server::start("scen_d2", 2);
        let (tx, rx) = mpsc::channel();
        let mut a = sut.connect("dumb/line");
        a.write_all(b"BURN 100000000\n").expect("write");
        let tx_a = tx.clone();
        let ja = thread::spawn(move || {
            let line = read_line(&mut a);
            tx_a.send(("burn", line)).expect("send");
        });
        thread::sleep(Duration::from_millis(200)); // let md start burning
        let mut b = sut.connect("dumb/line"); // goes to the other md
        b.write_all(b"PING\n").expect("write");
        let jb = thread::spawn(move || {
            let line = read_line(&mut b);
            tx.send(("ping", line)).expect("send");
        });
        let first = rx.recv_timeout(WATCHDOG * 2).expect("first reply");
        let second = rx.recv_timeout(WATCHDOG * 2).expect("second reply");
        ja.join().expect("a");
        jb.join().expect("b");
        assert_eq!([first.0, second.0], ["ping", "burn"], "two md: PING answered while BURN runs");
        assert_eq!(second.1, RESULT);
        sut.stop();
    }
}

/// An oversized line gets `ERR message too long` and a close; garbage gets errors or closes;
/// the server keeps serving.
#[test]
fn oversized_and_garbage() {
    let sut = Server::start("oversized", 1);
    let mut a = sut.connect("dumb/line");
    let long = vec![b'x'; 70_000]; // max_message is 64 KiB
    let _ = a.write_all(&long);
    let _ = a.write_all(b"\n");
    let got = read_to_eof(&mut a);
    assert_eq!(String::from_utf8_lossy(&got), "ERR message too long\n");

    // Binary garbage on a line service: whatever md answers, the connection ends cleanly or
    // stays usable; nothing crashes.
    for seed in 0..20 {
        let mut g = sut.connect("dumb/line");
        let mut junk = pattern(5000, seed);
        junk.push(b'\n');
        g.write_all(&junk).expect("write");
        g.shutdown(Shutdown::Write).expect("shutdown");
        let _ = read_to_eof(&mut g);
    }
    // len32 with an absurd length: closed, nothing echoed.
    let mut l = sut.connect("echo/len32");
    l.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).expect("write");
    assert!(read_to_eof(&mut l).is_empty());
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
    let got = read_to_eof(&mut e);
    assert!(got.starts_with(b"cba\n"), "{:?}", String::from_utf8_lossy(&got));
    drop((a, e));
    sut.stop();
}

/// Clients that reset mid-request or vanish with replies queued, a thousand times: the server
/// keeps serving and no reply ever reaches a wrong connection (each probe connection sees only
/// its own PONGs, even though it reuses slots of flows that had output queued).
#[test]
fn abrupt_disconnects_never_leak_replies() {
    let sut = Server::start("abrupt", 2);
    let until = Instant::now() + Duration::from_secs(60);
    let mut probe = sut.connect("dumb/line");
    for i in 0..1000u32 {
        assert!(Instant::now() < until, "1000 abrupt clients took too long");
        let mut s = sut.connect(if i % 3 == 0 { "echo/raw" } else { "dumb/line" });
        match i % 4 {
            0 => {
                let _ = s.write_all(&pattern(20_000, u64::from(i)));
            }
            1 => {
                let _ = s.write_all(b"STREAM 1000000\nPING\n");
            }
            2 => {
                let _ = s.write_all(b"PING\nPING\nPI");
            }
            _ => {
                let _ = s.write_all(b"WAIT 5\nBURN 1000\n");
            }
        }
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
            roundtrip(&mut probe, b"PING\n", b"PONG\n");
        }
    }
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
    // The client sees its connection end.
    a.write_all(b"WAIT 10000\n").ok();
    let _ = read_to_eof(&mut a);
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

    let mut md = std::process::Command::new(util::md_bin())
        .arg("--config")
        .arg(&sut.config)
        .arg("--instance")
        .arg("0")
        .spawn()
        .expect("start md");
    assert_eq!(read_line(&mut a), "PONG\n");
    drop(a);
    sut.stop();
    let _ = md.kill();
    let _ = md.wait();
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
