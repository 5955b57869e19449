//! Custom services through the runner (timers, EOF), detaching from io_conn and re-attaching,
//! and BROADCAST ordering against credit and a full ring.

use super::*;

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
