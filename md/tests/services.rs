//! md driven through its queues, without io_conn: every built-in service, byte for byte, and the
//! runner's ordering, credit, backpressure and EOF rules.

mod util;

use std::time::Duration;

use md::services::{Builtin, DumbOptions};
use md::{Ctx, Detach, Exit, Service, Status};
use shmq::frame::{Kind, OpenInfo};
use shmq::stats::Md;
use util::{Geometry, Io, flow, opts};

fn builtin() -> Builtin {
    Builtin::new(DumbOptions {
        burn_max: 10_000_000,
        wait_max: Duration::from_secs(30),
        stream_max: 10_000_000,
        stream_chunk: 1000,
    })
}

fn start(test: &str) -> Io {
    let mut io = Io::start(test, builtin(), opts(), Geometry::default());
    let hello = io.expect_hello();
    assert_eq!((hello.pid, hello.instance, hello.start_time), (std::process::id(), 3, 77));
    io
}

const BIG: u64 = 1 << 20;

#[test]
fn hello_is_first_and_shutdown_exits_cleanly() {
    let io = start("hello");
    let (exit, stats) = io.stop();
    assert_eq!(exit, Exit::Shutdown);
    assert_eq!(stats[Md::Attaches], 1);
}

#[test]
fn echo_sends_back_raw_chunks() {
    let mut io = start("echo");
    let f = flow(1);
    io.open(f, "echo", BIG);
    io.data(f, b"hello");
    io.data(f, b" world\r\n\x00\xff");
    io.expect_bytes(f, b"hello world\r\n\x00\xff");
    let (_, stats) = io.stop();
    assert_eq!(stats[Md::MessagesIn], 2);
    assert_eq!(stats.commands[md::services::cmd::ECHO], 2);
}

#[test]
fn reverse_reverses_each_line() {
    let mut io = start("reverse");
    let f = flow(2);
    io.open(f, "reverse", BIG);
    io.lines(f, "abc\nhello world\r\n\nh\u{e9}llo\n");
    io.data(f, b"\xff\xfeab\n");
    let mut want = "cba\ndlrow olleh\n\noll\u{e9}h\n".as_bytes().to_vec();
    want.extend_from_slice(b"ba\xfe\xff\n");
    io.expect_bytes(f, &want);
}

#[test]
fn dumb_ping_burn_and_every_err() {
    let mut io = start("dumb-basic");
    let f = flow(3);
    io.open(f, "dumb", BIG);
    let cases: &[(&str, &str)] = &[
        ("PING\n", "PONG\n"),
        ("PING\r\n", "PONG\n"),
        ("ping\n", "PONG\n"),
        ("BURN 300\n", "RESULT 45150\n"),
        ("BURN 0\n", "RESULT 0\n"),
        ("BURN 10000000\n", "RESULT 50000005000000\n"),
        ("BURN 10000001\n", "ERR BURN 10000001 exceeds the limit of 10000000\n"),
        ("WAIT 0\n", "DONE\n"),
        ("WAIT 30001\n", "ERR WAIT 30001 exceeds the limit of 30000 ms\n"),
        ("STREAM 10000001\n", "ERR STREAM 10000001 exceeds the limit of 10000000\n"),
        ("\n", "ERR empty request\n"),
        ("\r\n", "ERR empty request\n"),
        ("HELLO\n", "ERR unknown command (expected PING, WAIT, BURN or STREAM)\n"),
        ("PING 1\n", "ERR PING takes no argument\n"),
        ("WAIT\n", "ERR WAIT needs exactly one number\n"),
        ("BURN 1 2\n", "ERR BURN needs exactly one number\n"),
        ("STREAM\n", "ERR STREAM needs exactly one number\n"),
        ("WAIT ten\n", "ERR WAIT argument is not a decimal number\n"),
        ("BURN -5\n", "ERR BURN argument is not a decimal number\n"),
        ("BURN 340282366920938463463374607431768211456\n", "ERR BURN argument is too large\n"),
        ("PING\n", "PONG\n"), // still usable after errors
    ];
    for (req, want) in cases {
        io.data(f, req.as_bytes());
        io.expect_bytes(f, want.as_bytes());
    }
    io.data(f, b"\xff\xfe\n");
    io.expect_bytes(f, b"ERR unknown command (expected PING, WAIT, BURN or STREAM)\n");
    let (_, stats) = io.stop();
    assert_eq!(stats[Md::Errors], 14);
}

#[test]
fn wait_on_one_flow_does_not_delay_ping_on_another() {
    let mut io = start("wait-ping");
    let (a, b) = (flow(10), flow(11));
    io.open(a, "dumb", BIG);
    io.open(b, "dumb", BIG);
    // Long enough that no scheduling hiccup lets it fire first; a's DONE is shown by
    // `wait_then_done_in_order` and the pipelining test.
    io.lines(a, "WAIT 10000\n");
    io.lines(b, "PING\nPING\n");
    let mut got = Vec::new();
    while got.len() < 10 {
        let o = io.recv();
        assert_eq!((o.flow, o.kind), (b, Kind::Data), "b is answered while a waits");
        got.extend_from_slice(&o.payload);
    }
    assert_eq!(got, b"PONG\nPONG\n");
    io.send(a, Kind::Close, &[]);
}

#[test]
fn wait_then_done_in_order() {
    let mut io = start("wait-done");
    let (a, b) = (flow(8), flow(9));
    io.open(a, "dumb", BIG);
    io.open(b, "dumb", BIG);
    io.lines(a, "WAIT 30\n");
    io.lines(b, "WAIT 10\nPING\n");
    io.expect_bytes(b, b"DONE\nPONG\n");
    io.expect_bytes(a, b"DONE\n");
}

#[test]
fn pipelined_requests_behind_a_wait_are_answered_in_order() {
    let mut io = start("pipeline");
    let f = flow(12);
    io.open(f, "dumb", BIG);
    io.lines(f, "WAIT 50\nPING\nBURN 300\nWAIT 10\nBOGUS\nPING\n");
    io.expect_bytes(
        f,
        b"DONE\nPONG\nRESULT 45150\nDONE\nERR unknown command (expected PING, WAIT, BURN or STREAM)\nPONG\n",
    );
    let (_, stats) = io.stop();
    assert!(stats[Md::Held] >= 5, "requests behind the WAIT were held: {stats:?}");
}

#[test]
fn stream_respects_credit_and_finishes_as_drained_returns_it() {
    let mut io = start("stream");
    let f = flow(13);
    let credit = 2500u64;
    io.open(f, "dumb", credit);
    let n = 100_000usize;
    io.lines(f, &format!("STREAM {n}\nPING\n"));
    let mut want = vec![b'A'; n];
    want.extend_from_slice(b"DONE\nPONG\n");
    let mut got = Vec::new();
    let mut outstanding = 0u64;
    let mut max_outstanding = 0u64;
    while got.len() < want.len() {
        // Take everything md sent so far before returning any credit.
        let o = io.recv();
        assert_eq!((o.flow, o.kind), (f, Kind::Data));
        assert!(o.payload.len() as u64 <= 1000 * 3, "frames stay near the chunk size");
        outstanding += o.payload.len() as u64;
        max_outstanding = max_outstanding.max(outstanding);
        assert!(outstanding <= credit, "{outstanding} outstanding > credit {credit}");
        got.extend_from_slice(&o.payload);
        // A reader that drains in bursts: it gives everything back once md has spent the whole
        // credit, which md must do while it has that much left to send (if it stopped short, no
        // frame would come and `recv` would fail at its watchdog). No guessing from a quiet
        // moment that md has stopped.
        if outstanding == credit {
            io.drained(f, outstanding);
            outstanding = 0;
        }
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "stream bytes differ");
    assert_eq!(max_outstanding, credit, "md used the whole credit");
}

#[test]
fn stream_with_slow_drain_never_exceeds_credit() {
    let mut io = start("stream-slow");
    let f = flow(14);
    let credit = 700u64; // smaller than the chunk
    io.open(f, "dumb", credit);
    io.lines(f, "STREAM 5000\n");
    let mut outstanding = 0u64;
    let mut got = 0usize;
    let mut frames = std::collections::VecDeque::new();
    while got < 5005 {
        let o = io.recv();
        assert_eq!(o.kind, Kind::Data);
        outstanding += o.payload.len() as u64;
        assert!(outstanding <= credit, "{outstanding} > {credit}");
        got += o.payload.len();
        frames.push_back(o.payload.len() as u64);
        // Return credit one frame at a time, lagging behind.
        if frames.len() > 1 || io.pending.is_empty() {
            let n = frames.pop_front().unwrap();
            io.drained(f, n);
            outstanding -= n;
        }
    }
    assert_eq!(got, 5005);
}

#[test]
fn stream_zero_and_tiny_credit() {
    let mut io = start("stream-tiny");
    let f = flow(15);
    io.open(f, "dumb", 3);
    io.lines(f, "STREAM 0\nSTREAM 4\n");
    io.expect_bytes(f, b"DONE\nAAAADONE\n");
}

#[test]
fn eof_answers_everything_then_closes() {
    let mut io = start("eof");
    let f = flow(16);
    io.open(f, "dumb", BIG);
    io.lines(f, "WAIT 30\nPING\n");
    io.data(f, b"PING"); // last line without newline
    io.send(f, Kind::Eof, &[]);
    io.expect_bytes(f, b"DONE\nPONG\nPONG\n");
    io.expect_kind(f, Kind::Close);
    // The flow is forgotten: more frames for it are ignored (nothing of `f` comes before the
    // answer to a later request), and the next flow works.
    io.data(f, b"PING\n");
    let g = flow(17);
    io.open(g, "reverse", BIG);
    io.data(g, b"ab\n");
    io.expect_next_bytes(g, b"ba\n");
    let (_, stats) = io.stop();
    assert_eq!(stats[Md::ClosesOut], 1);
    // The DATA after CLOSE, and the DRAINED the harness returned for the last replies.
    assert!(stats[Md::UnknownFlow] >= 1);
}

#[test]
fn eof_waits_for_credit_before_close() {
    let mut io = start("eof-credit");
    let f = flow(18);
    io.open(f, "dumb", 4);
    io.lines(f, "PING\n");
    io.send(f, Kind::Eof, &[]);
    let got = io.collect_bytes(f, 4, false);
    assert_eq!(got, b"PONG");
    // The newline and the CLOSE wait for credit: another flow's request, sent after, is
    // answered before anything more of `f`.
    let g = flow(19);
    io.open(g, "dumb", BIG);
    io.lines(g, "PING\n");
    io.expect_next_bytes(g, b"PONG\n");
    io.drained(f, 4);
    io.expect_next_bytes(f, b"\n");
    io.expect_kind(f, Kind::Close);
}

#[test]
fn close_from_io_cancels_wait_and_stream() {
    let mut io = start("close");
    let (a, b, c) = (flow(20), flow(21), flow(22));
    io.open(a, "dumb", BIG);
    io.open(b, "dumb", 10);
    io.open(c, "dumb", BIG);
    io.lines(a, "WAIT 10000\nPING\n");
    io.lines(b, "STREAM 100000\n");
    let got = io.collect_bytes(b, 10, false);
    assert_eq!(got, b"AAAAAAAAAA");
    io.send(a, Kind::Close, &[]);
    io.send(b, Kind::Close, &[]);
    io.drained(b, 10); // late DRAINED for a closed flow: ignored
    // c still works, and nothing more comes for a or b: c's requests, sent after the CLOSEs, are
    // answered before any frame of a or b (the late DRAINED would have let more of b's stream
    // out, and a CLOSE that ended a's WAIT early would have its PING answered at once).
    io.lines(c, "WAIT 200\nPING\n");
    io.expect_next_bytes(c, b"DONE\nPONG\n");
    let (_, stats) = io.stop();
    assert_eq!(stats[Md::ClosesIn], 2);
}

#[test]
fn unknown_service_is_closed() {
    let mut io = start("unknown-service");
    let f = flow(23);
    io.open(f, "nosuch", BIG);
    io.expect_kind(f, Kind::Close);
    let (_, stats) = io.stop();
    assert_eq!(stats[Md::FlowsRefused], 1);
}

#[test]
fn held_backlog_pauses_and_resumes() {
    let mut io = start("pause");
    let f = flow(24);
    // Credit for one reply: the rest of the pipeline is held until DRAINED comes back.
    io.open(f, "dumb", 5);
    io.lines(f, &"PING\n".repeat(100));
    // Everything is answered in order as credit returns; PAUSE comes while the backlog is
    // long (no credit is returned before it), RESUME once the backlog drains.
    let want = "PONG\n".repeat(100).into_bytes();
    let mut got = Vec::new();
    let (mut paused, mut resumed) = (false, false);
    let mut unacked = std::collections::VecDeque::new();
    while got.len() < want.len() || !resumed {
        let o = io.recv();
        assert_eq!(o.flow, f);
        match o.kind {
            Kind::Data => {
                assert!(o.payload.len() <= 5, "credit is 5");
                got.extend_from_slice(&o.payload);
                unacked.push_back(o.payload.len() as u64);
            }
            Kind::Pause => {
                assert!(!paused && !resumed);
                paused = true;
            }
            Kind::Resume => {
                assert!(paused && !resumed);
                resumed = true;
            }
            k => panic!("unexpected {k:?}"),
        }
        if paused {
            while let Some(n) = unacked.pop_front() {
                io.drained(f, n);
            }
        }
    }
    assert!(got == want, "replies in order");
    let (_, stats) = io.stop();
    assert_eq!((stats[Md::Pauses], stats[Md::Resumes]), (1, 1));
    assert!(stats[Md::Held] >= 65, "{stats:?}");
}

#[test]
fn credit_blocked_flow_holds_requests_until_drained() {
    let mut io = start("credit-hold");
    let f = flow(25);
    io.open(f, "dumb", 5);
    io.lines(f, "PING\nPING\nPING\n");
    let got = io.collect_bytes(f, 5, false);
    assert_eq!(got, b"PONG\n");
    // The other two are held: another flow's PING, sent after, is answered before them.
    let g = flow(28);
    io.open(g, "dumb", BIG);
    io.lines(g, "PING\n");
    io.expect_next_bytes(g, b"PONG\n");
    io.drained(f, 5);
    io.expect_bytes(f, b"PONG\nPONG\n");
}

#[test]
fn full_output_ring_keeps_output_and_retries() {
    // A small output ring that io does not read for a while: md must not drop or spin.
    let geo = Geometry { in_cap: 1 << 16, out_cap: 4096, max_payload: 1024 };
    let mut io = Io::start("ring-full", builtin(), opts(), geo);
    io.expect_hello();
    let f = flow(26);
    io.open(f, "echo", BIG);
    let chunk = [b'x'; 1000];
    for _ in 0..50 {
        // Pushing without reading md's output: the out ring (4 KiB) fills after a few.
        io.tx.try_push(f, Kind::Data, 0, &chunk).unwrap();
    }
    io.tx.flush();
    // Not reading md's output: md must find its ring full (and keep the rest).
    let deadline = std::time::Instant::now() + util::WATCHDOG;
    while io.rx.header().producer.full_events.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "md never found the ring full");
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = io.collect_bytes(f, 50_000, true);
    assert!(got.iter().all(|&b| b == b'x'));
    let (_, stats) = io.stop();
    assert!(stats[Md::OutFull] > 0, "the ring was full at some point: {stats:?}");
}

#[test]
fn many_flows_interleaved() {
    let mut io = start("many");
    let flows: Vec<_> = (0..50).map(|i| flow(100 + i)).collect();
    for (i, &f) in flows.iter().enumerate() {
        io.open(f, if i % 2 == 0 { "dumb" } else { "reverse" }, BIG);
    }
    for round in 0..20 {
        for (i, &f) in flows.iter().enumerate() {
            if i % 2 == 0 {
                io.lines(f, &format!("BURN {round}\n"));
            } else {
                io.lines(f, &format!("r{round}x\n"));
            }
        }
    }
    for (i, &f) in flows.iter().enumerate() {
        let mut want = String::new();
        for round in 0..20u64 {
            if i % 2 == 0 {
                want.push_str(&format!("RESULT {}\n", round * (round + 1) / 2));
            } else {
                want.push_str(&format!(
                    "x{}r\n",
                    round.to_string().chars().rev().collect::<String>()
                ));
            }
        }
        io.expect_bytes(f, want.as_bytes());
    }
}

/// A user-defined service with a greeting, a timer and an eof message (the Service API).
struct Countdown;

impl Service for Countdown {
    type Flow = u32;
    fn open(&mut self, info: &OpenInfo<'_>, cx: &mut Ctx<'_>) -> Option<u32> {
        cx.send(format!("hi {}\n", info.service).as_bytes());
        Some(0)
    }
    fn message(&mut self, n: &mut u32, _msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        *n = 3;
        cx.set_timer(Duration::from_millis(5), 9);
        Status::Pending
    }
    fn timer(&mut self, n: &mut u32, token: u64, cx: &mut Ctx<'_>) -> Status {
        assert_eq!(token, 9);
        use std::fmt::Write as _;
        let _ = writeln!(cx, "{n}");
        *n -= 1;
        if *n == 0 {
            return Status::Done;
        }
        cx.set_timer(Duration::from_millis(5), 9);
        Status::Pending
    }
    fn eof(&mut self, _n: &mut u32, cx: &mut Ctx<'_>) {
        cx.send(b"bye\n");
    }
}

#[test]
fn custom_service_open_timer_eof() {
    let mut io = Io::start("custom", Countdown, opts(), Geometry::default());
    io.expect_hello();
    let f = flow(30);
    io.open(f, "count", BIG);
    io.lines(f, "go\ngo\n");
    io.send(f, Kind::Eof, &[]);
    io.expect_bytes(f, b"hi count\n3\n2\n1\n3\n2\n1\nbye\n");
    io.expect_kind(f, Kind::Close);
}

#[test]
fn io_conn_exit_detaches() {
    let mut io = start("pidfd");
    let (a, b) = (flow(40), flow(41));
    io.open(a, "dumb", BIG);
    io.open(b, "dumb", BIG);
    io.lines(a, "WAIT 20000\n");
    io.lines(b, "PING\n");
    io.expect_bytes(b, b"PONG\n");
    nix::unistd::write(&io.fake_pidfd, b"x").unwrap();
    let (exit, _) = io.join();
    assert_eq!(exit, Exit::Detached(Detach::IoConnExited));
}

#[test]
fn generation_change_detaches() {
    let o = md::RunnerOptions { check_interval: Duration::from_millis(20), ..opts() };
    let mut io = Io::start("reset", builtin(), o, Geometry::default());
    io.expect_hello();
    let a = flow(42);
    io.open(a, "dumb", BIG);
    io.lines(a, "PING\n");
    io.expect_bytes(a, b"PONG\n");
    shmq::ring::reset(&*io.in_mem, 0, 2).unwrap();
    let (exit, _) = io.join();
    assert_eq!(exit, Exit::Detached(Detach::Reset));
}

/// The real thing: `md::serve` waits for the pair, attaches, answers, re-attaches after io_conn
/// resets the pair (a new generation, HELLO again), and stops on shutdown.
#[test]
fn serve_attaches_to_a_real_pair_and_reattaches_after_reset() {
    use shmq::pair::PairConfig;
    use shmq::region::Backend;

    fn recv(rx: &mut shmq::Consumer, bell: &shmq::Doorbell) -> (shmq::FlowId, Kind, Vec<u8>) {
        let deadline = std::time::Instant::now() + util::WATCHDOG;
        loop {
            if let Some(f) = rx.peek().unwrap() {
                let out = (f.flowid, f.kind, f.payload.to_vec());
                rx.release();
                rx.publish();
                return out;
            }
            assert!(std::time::Instant::now() < deadline, "nothing from md");
            if rx.prepare_sleep(bell) {
                use std::os::fd::AsFd;
                let mut fds = [nix::poll::PollFd::new(bell.as_fd(), nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16));
            }
        }
    }
    fn push(tx: &mut shmq::Producer, f: shmq::FlowId, kind: Kind, payload: &[u8]) {
        tx.try_push(f, kind, 0, payload).unwrap();
        tx.flush();
    }

    let dir = util::TempDir::new("serve");
    let pair = PairConfig {
        name: format!("md-test-{}-serve", std::process::id()),
        runtime_dir: dir.0.join("run"),
        backend: Backend::Posix,
        capacity: 1 << 16,
        max_payload: 4096,
    };
    // Removes the segments even if an assertion fails.
    struct Cleanup(PairConfig);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.remove(0);
        }
    }
    let _cleanup = Cleanup(pair.clone());

    let (control, shutdown) = md::Control::new().unwrap();
    let md_pair = pair.clone();
    let md = std::thread::spawn(move || {
        let o = md::RunnerOptions { check_interval: Duration::from_millis(20), ..opts() };
        let mut runner = md::Runner::new(builtin(), o);
        let r = md::serve(&mut runner, &md_pair, 0, &control);
        (r.map_err(|e| e.to_string()), runner.stats().clone())
    });
    // md is waiting for the pair (NotFound) while we create it.
    std::thread::sleep(Duration::from_millis(30));
    let mut io = pair.create(0, 1).unwrap();
    let (f0, kind, _) = recv(&mut io.rx, &io.rx_bell);
    assert_eq!((f0, kind), (shmq::FlowId(0), Kind::Hello));

    let f = flow(50);
    let info = OpenInfo { credit: BIG, peer: "127.0.0.1:1".parse().unwrap(), service: "dumb" };
    let mut buf = [0u8; 64];
    let n = info.encode(&mut buf).unwrap();
    push(&mut io.tx, f, Kind::Open, &buf[..n]);
    push(&mut io.tx, f, Kind::Data, b"BURN 300\n");
    assert_eq!(recv(&mut io.rx, &io.rx_bell), (f, Kind::Data, b"RESULT 45150\n".to_vec()));

    // io_conn resets the pair: md must notice, drop its flows, re-attach and say HELLO again.
    let mut io = pair.reset(io).unwrap();
    assert_eq!(io.generation, 2);
    let (f0, kind, _) = recv(&mut io.rx, &io.rx_bell);
    assert_eq!((f0, kind), (shmq::FlowId(0), Kind::Hello));
    let g = flow(51);
    push(&mut io.tx, g, Kind::Open, &buf[..n]);
    push(&mut io.tx, g, Kind::Data, b"PING\n");
    assert_eq!(recv(&mut io.rx, &io.rx_bell), (g, Kind::Data, b"PONG\n".to_vec()));

    shutdown.trigger();
    let (r, stats) = md.join().unwrap();
    assert_eq!(r, Ok(()));
    assert_eq!(stats[Md::Attaches], 2);
}

/// Broadcasts each line to service `room` between two bytes of direct output (`<` before, `>\n`
/// after; `<<` for a line starting with `+`, which is not broadcast); `size N` broadcasts N bytes; `longname` uses a name no listener can have.
struct Shout;

impl Service for Shout {
    type Flow = ();
    fn open(&mut self, _info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<()> {
        Some(())
    }
    fn message(&mut self, _f: &mut (), msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        use std::fmt::Write as _;
        let line = md::services::strip_eol(msg);
        let r = if let Some(n) = line.strip_prefix(b"size ") {
            let n: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
            cx.broadcast("room", &vec![b'b'; n])
        } else if line == b"longname" {
            cx.broadcast(&"n".repeat(shmq::frame::MAX_SERVICE_NAME + 1), b"x")
        } else if let Some(rest) = line.strip_prefix(b"+") {
            cx.send(b"<<");
            let r = cx.broadcast("room", rest);
            cx.send(b">\n");
            r
        } else {
            cx.send(b"<");
            let r = cx.broadcast("room", line);
            cx.send(b">\n");
            r
        };
        match r {
            Ok(()) => {}
            Err(e) => {
                cx.error();
                let _ = writeln!(cx, "ERR {e}");
            }
        }
        Status::Done
    }
}

/// Receives frames until `f` has sent `data_bytes` DATA bytes and `broadcasts` BROADCAST frames
/// came (flow id 0, service `room`); returns the transcript in ring order: DATA bytes as they
/// are, each broadcast as `[bytes]`. Returns DRAINED for DATA only when `ack`.
fn transcript(io: &mut util::Io, f: shmq::FlowId, data_bytes: usize, broadcasts: usize) -> String {
    let mut t = Vec::new();
    let (mut d, mut b) = (0, 0);
    while d < data_bytes || b < broadcasts {
        let o = io.recv();
        match o.kind {
            Kind::Data => {
                assert_eq!(o.flow, f);
                d += o.payload.len();
                t.extend_from_slice(&o.payload);
                io.drained(f, o.payload.len() as u64);
            }
            Kind::Broadcast => {
                assert_eq!(o.flow, shmq::FlowId(0), "a broadcast belongs to no flow");
                let (service, bytes) = shmq::frame::decode_broadcast(&o.payload).unwrap();
                assert_eq!(service, "room");
                b += 1;
                t.push(b'[');
                t.extend_from_slice(bytes);
                t.push(b']');
            }
            k => panic!("unexpected {k:?}: {o:?}"),
        }
    }
    assert_eq!((d, b), (data_bytes, broadcasts), "nothing beyond what was expected");
    String::from_utf8(t).unwrap()
}

#[test]
fn broadcast_is_a_flowless_frame_in_place_in_the_flows_output() {
    let mut io = Io::start("bcast-order", Shout, opts(), Geometry::default());
    io.expect_hello();
    let f = flow(60);
    io.open(f, "room", BIG);
    io.lines(f, "one\ntwo\n");
    assert_eq!(transcript(&mut io, f, 6, 2), "<[one]>\n<[two]>\n");
    let (_, stats) = io.stop();
    assert_eq!(stats[Md::Errors], 0);
}

#[test]
fn broadcast_waits_behind_credit_blocked_output_but_costs_no_credit() {
    let mut io = Io::start("bcast-credit", Shout, opts(), Geometry::default());
    io.expect_hello();
    let f = flow(61);
    io.open(f, "room", 1);
    io.lines(f, "hi\n+yo\n");
    io.send(f, Kind::Eof, &[]);
    // Each asserts what the very next frame is.
    let data_of = |io: &mut util::Io, fl: shmq::FlowId, want: &[u8]| {
        let o = io.recv();
        assert_eq!((o.flow, o.kind, o.payload.as_slice()), (fl, Kind::Data, want), "{o:?}");
    };
    let data = |io: &mut util::Io, want: &[u8]| data_of(io, f, want);
    let bcast = |io: &mut util::Io, want: &[u8]| {
        let o = io.recv();
        assert_eq!((o.flow, o.kind), (shmq::FlowId(0), Kind::Broadcast), "{o:?}");
        assert_eq!(shmq::frame::decode_broadcast(&o.payload).unwrap(), ("room", want));
    };
    // Another client of the room, with plenty of credit. A line of it sent while `f` waits for
    // credit is answered whole before anything more of `f` comes.
    let g = flow(64);
    io.open(g, "room", BIG);
    let other = |io: &mut util::Io, line: &str| {
        io.lines(g, &format!("{line}\n"));
        data_of(io, g, b"<");
        bcast(io, line.as_bytes());
        data_of(io, g, b">\n");
    };
    // Credit 1: `<` spends it; the broadcast after it goes anyway (it costs no credit).
    data(&mut io, b"<");
    bcast(&mut io, b"hi");
    other(&mut io, "g1");
    io.drained(f, 1);
    data(&mut io, b">");
    io.drained(f, 1);
    data(&mut io, b"\n");
    // `+yo` writes `<<` before its broadcast: with credit 1 the second `<` waits for DRAINED,
    // and so does the broadcast behind it.
    io.drained(f, 1);
    data(&mut io, b"<");
    other(&mut io, "g2");
    io.drained(f, 1);
    data(&mut io, b"<");
    bcast(&mut io, b"yo");
    io.drained(f, 1);
    data(&mut io, b">");
    io.drained(f, 1);
    data(&mut io, b"\n");
    io.drained(f, 1);
    io.expect_kind(f, Kind::Close);
    // Nothing of `f` after its CLOSE.
    other(&mut io, "g3");
}

#[test]
fn broadcast_too_large_or_badly_named_is_refused_whole() {
    // max_payload 8 KiB: the frame carries 2 + 4 ("room") + up to 8186 bytes.
    let mut io = Io::start("bcast-size", Shout, opts(), Geometry::default());
    io.expect_hello();
    let f = flow(62);
    io.open(f, "room", BIG);
    io.lines(f, "size 8186\n");
    let o = io.recv();
    assert_eq!((o.flow, o.kind), (shmq::FlowId(0), Kind::Broadcast));
    assert_eq!(o.payload.len(), 8192);
    let (_, bytes) = shmq::frame::decode_broadcast(&o.payload).unwrap();
    assert!(bytes.len() == 8186 && bytes.iter().all(|&b| b == b'b'));
    io.lines(f, "size 8187\nlongname\nsize 0\n");
    io.expect_bytes(
        f,
        b"ERR broadcast of 8187 bytes does not fit in one frame (max 8186)\n\
          ERR service name of 65 bytes (max 64)\n",
    );
    let o = io.recv();
    assert_eq!((o.flow, o.kind), (shmq::FlowId(0), Kind::Broadcast));
    assert_eq!(shmq::frame::decode_broadcast(&o.payload).unwrap(), ("room", &b""[..]));
    // Nothing else came of those three lines: the next frame is the answer to a fourth.
    io.lines(f, "size 1\n");
    let o = io.recv();
    assert_eq!((o.flow, o.kind), (shmq::FlowId(0), Kind::Broadcast), "{o:?}");
    assert_eq!(shmq::frame::decode_broadcast(&o.payload).unwrap(), ("room", &b"b"[..]));
    let (_, stats) = io.stop();
    assert_eq!(stats[Md::Errors], 2);
}

#[test]
fn broadcasts_survive_a_full_output_ring_in_order() {
    // A 4 KiB output ring that io does not read for a while: 50 broadcasts of 1000 bytes.
    let geo = Geometry { in_cap: 1 << 16, out_cap: 4096, max_payload: 1024 };
    let mut io = Io::start("bcast-full", Shout, opts(), geo);
    io.expect_hello();
    let f = flow(63);
    io.open(f, "room", BIG);
    let mut want = String::new();
    for i in 0..50 {
        let line = format!("{i:04}{}", ".".repeat(996));
        io.tx.try_push(f, Kind::Data, 0, line.as_bytes()).unwrap();
        want.push_str(&format!("<[{line}]>\n"));
    }
    io.tx.flush();
    let deadline = std::time::Instant::now() + util::WATCHDOG;
    while io.rx.header().producer.full_events.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "md never found the ring full");
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = transcript(&mut io, f, 150, 50);
    assert!(got == want, "every broadcast, in order, in place");
    let (_, stats) = io.stop();
    assert!(stats[Md::OutFull] > 0, "the ring was full at some point: {stats:?}");
}
