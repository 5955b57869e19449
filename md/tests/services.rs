//! md driven through its queues, without io_conn: every built-in service, byte for byte, and the
//! runner's ordering, credit, backpressure and EOF rules, and its time slices (fairness).

#[path = "services/custom.rs"]
mod custom;
#[path = "services/fairness.rs"]
mod fairness;
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
    io.expect_nothing_else(g, "cd\n", b"dc\n");
    let (_, stats) = io.stop();
    // f after its EOF; g when md left (shutdown: an idle flow-dispatched flow is closed).
    assert_eq!(stats[Md::ClosesOut], 2);
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
    io.expect_nothing_else(g, "PING\n", b"PONG\n");
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
    io.expect_nothing_else(c, "PING\n", b"PONG\n");
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
    io.expect_nothing_else(g, "PING\n", b"PONG\n");
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
