//! Issue 6: the stats segment, end to end. The real io_conn (with a real md child) serves a
//! scripted session; the real `viewstats --json` reads the counters, which must move exactly as
//! the session says. Counters are mirrored once per loop iteration, so each check polls until
//! the values settle, under the watchdog.

use std::io::Write;

use crate::util::{self, Server, Setup, expect_exact, read_to_eof, roundtrip, stat};

const PING_ROUNDS: u64 = 10;
const CONNS: u64 = 4;
const OVERSIZED: usize = 2000; // max_message is 1 KiB here

/// The issue's scripted session: N connections, M PINGs, one refused connection (over
/// max_connections), one oversized line, clients closing, one connection left idle past
/// idle_timeout; every io_conn counter and md's PING count exact in `viewstats --json`.
#[test]
fn issue_6_scripted_session_counters_exact() {
    let sut = Server::start_with(
        "st_session",
        Setup {
            spawn_md: 1,
            io_extra: "idle_timeout = \"2s\"\nmax_connections = 4",
            md_extra: "[md.dumb]\nstream_chunk = \"512B\"",
            max_message: Some("1KiB"),
            ..Setup::default()
        },
    );
    // Before any client: the segment is there, md attached, nothing counted.
    sut.wait_stats("fresh server", |v| {
        expect_exact(
            v,
            &[
                ("io", 0, "connections_accepted", 0),
                ("io", 0, "md_attaches", 1),
                ("md", 0, "commands.dumb.ping", 0),
            ],
        )
    });

    // N = 4 connections (= max_connections), M = 40 PINGs, strictly request/response.
    let mut conns: Vec<_> = (0..CONNS).map(|_| sut.connect("dumb/line")).collect();
    for _ in 0..PING_ROUNDS {
        for c in &mut conns {
            roundtrip(c, b"PING\n", b"PONG\n");
        }
    }
    // The table is full (every connection has been answered, so all four are accepted): a fifth
    // is refused with a reason.
    let mut refused = sut.connect("dumb/line");
    assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut refused)), "ERR too many connections\n");

    // One oversized line: an error line, then the server ends the connection.
    let mut big = conns.pop().expect("4 connections");
    let mut line = vec![b'x'; OVERSIZED];
    line.push(b'\n');
    big.write_all(&line).expect("write oversized line");
    assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut big)), "ERR message too long\n");
    drop(big);
    // The other three close.
    drop(conns);
    sut.wait_stats("after the clients closed", |v| {
        expect_exact(
            v,
            &[
                ("io", 0, "connections_current", 0),
                ("io", 0, "closed_by_peer", 3),
                ("io", 0, "closed_oversized", 1),
            ],
        )
    });

    // Idle: one PING, then nothing; the server closes it after idle_timeout (EOF, no bytes).
    let mut idle = sut.connect("dumb/line");
    roundtrip(&mut idle, b"PING\n", b"PONG\n");
    assert!(read_to_eof(&mut idle).is_empty(), "idle connection got bytes instead of a close");

    let m = PING_ROUNDS * CONNS + 1;
    let want_io = [
        ("io", 0, "connections_current", 0),
        ("io", 0, "connections_accepted", CONNS + 1),
        ("io", 0, "connections_refused", 1),
        ("io", 0, "closed_by_peer", 3),
        ("io", 0, "closed_idle", 1),
        ("io", 0, "closed_oversized", 1),
        ("io", 0, "closed_deadline", 0),
        ("io", 0, "closed_credit_overrun", 0),
        ("io", 0, "closed_error", 0),
        ("io", 0, "closed_by_md", 0),
        ("io", 0, "closed_md_gone", 0),
        ("io", 0, "closed_shutdown", 0),
        ("io", 0, "messages_in", m),
        ("io", 0, "messages_out", m),
        ("io", 0, "bytes_in", 5 * m + OVERSIZED as u64 + 1),
        ("io", 0, "bytes_out", 5 * m + "ERR message too long\n".len() as u64),
        ("io", 0, "framing_errors", 1),
        ("io", 0, "backpressure_pauses", 0),
        ("io", 0, "md_attaches", 1),
        ("io", 0, "md_deaths", 0),
        ("in.producer", 0, "generation", 1),
        ("out.consumer", 0, "generation", 1),
    ];
    // md's side of the same session (md writes its own slot and its queue halves).
    let want_md = [
        ("md", 0, "commands.dumb.ping", m),
        ("md", 0, "messages_in", m),
        ("md", 0, "messages_out", m),
        ("md", 0, "flows_opened", CONNS + 1),
        // io_conn sends no CLOSE back for a flow md closed itself.
        ("md", 0, "unknown_flow", 0),
    ];
    let v = sut.wait_stats("after the session", |v| {
        let mut p = expect_exact(v, &want_io);
        p.extend(expect_exact(v, &want_md));
        // Each ring's two halves, written by two processes, agree once the traffic is over.
        for (prod, cons) in [("in.producer", "in.consumer"), ("out.producer", "out.consumer")] {
            for n in ["frames", "bytes"] {
                let (a, b) = (stat(v, prod, 0, n), stat(v, cons, 0, n));
                if a != b || a.is_none() {
                    p.push(format!("{prod}.{n} = {a:?} but {cons}.{n} = {b:?}"));
                }
            }
        }
        p
    });
    assert_eq!(v["creator_pid"].as_u64(), Some(u64::from(sut.pid())));
    assert_eq!(v["creator_running"].as_bool(), Some(true));
    assert_eq!(v["sections"]["md"][0]["state_name"].as_str(), Some("running"), "{v:#}");
    // io_conn pushed an OPEN per accepted connection and a DATA per PING (plus EOF, CLOSE and
    // DRAINED frames).
    let opens = CONNS + 1;
    let frames = stat(&v, "in.producer", 0, "frames").expect("in.producer frames");
    assert!(frames >= m + opens, "in.producer frames = {frames}");
    // io_conn picked up md's replies in batches and timed them.
    let waits = v["sections"]["out.consumer"][0]["histograms"]["wait_ns"]["count"].as_u64();
    assert!(waits.is_some_and(|n| n >= 1), "no out.0 wait samples: {v:#}");
    sut.stop();
}

/// SIGTERM with requests in flight (a WAIT 500 with PINGs pipelined behind it, and an idle
/// connection): the busy client gets every reply in order and then EOF, the idle one EOF; io_conn
/// finishes the drain before its deadline, exits 0 and removes everything, the stats segment
/// included (viewstats then says no server is running).
#[test]
fn issue_6_sigterm_drains_in_flight_then_removes_stats() {
    let sut = Server::start("st_sigterm", 1);
    let mut busy = sut.connect("dumb/line");
    let mut idle = sut.connect("dumb/line");
    busy.write_all(b"WAIT 500\nPING\nPING\nPING\n").expect("write");
    // io_conn has read all four requests and handed them to md (so none is lost to the drain).
    sut.wait_stats("requests in flight", |v| {
        expect_exact(v, &[("io", 0, "messages_in", 4), ("io", 0, "connections_current", 2)])
    });
    sut.terminate();
    assert_eq!(
        String::from_utf8_lossy(&read_to_eof(&mut busy)),
        "DONE\nPONG\nPONG\nPONG\n",
        "replies in order, then EOF"
    );
    assert!(read_to_eof(&mut idle).is_empty());
    let name = sut.name.clone();
    let log = sut.log.clone();
    sut.wait_clean_exit();
    let log = log.lock().expect("log").clone();
    assert!(log.contains("all connections closed"), "the drain did not complete: {log}");
    assert!(!log.contains("drain deadline reached"), "the drain hit its deadline: {log}");
    let err = util::viewstats_json(&name).expect_err("viewstats must fail once io_conn is gone");
    assert!(err.contains("no server running"), "unclear viewstats message: {err}");
}

/// Restart detection and a crashed predecessor: after io_conn is SIGKILLed its stats segment
/// stays behind; a new io_conn on the same name replaces it (no manual cleanup) and
/// `viewstats --json` shows the new epoch and creator.
#[test]
fn issue_6_restart_new_epoch_and_stale_stats_replaced() {
    let mut sut = Server::start_with(
        "st_restart",
        Setup { spawn_md: 0, max_instances: 1, ..Setup::default() },
    );
    let v1 = sut.stats();
    let epoch1 = v1["epoch"].as_u64().expect("epoch");
    assert_eq!(v1["creator_pid"].as_u64(), Some(u64::from(sut.pid())));
    // Some activity under the first epoch (held: no md runs).
    let c = sut.connect("dumb/line");
    sut.wait_stats("first epoch", |v| expect_exact(v, &[("io", 0, "connections_accepted", 1)]));
    drop(c);

    sut.kill9();
    let stale = format!("/dev/shm/{}.stats", sut.name);
    assert!(sut.leftovers().contains(&stale), "a SIGKILLed io_conn leaves {stale}");

    sut.relaunch(0);
    sut.wait_log("replacing stale stats segment", 1);
    let v2 = sut.stats();
    let epoch2 = v2["epoch"].as_u64().expect("epoch");
    assert_ne!(epoch1, epoch2, "a restarted io_conn must show a new epoch");
    assert_eq!(v2["creator_pid"].as_u64(), Some(u64::from(sut.pid())));
    assert_eq!(v2["creator_running"].as_bool(), Some(true));
    // Counters start from zero under the new epoch.
    assert_eq!(stat(&v2, "io", 0, "connections_accepted"), Some(0), "{v2:#}");
    let mut d = sut.connect("dumb/line");
    d.write_all(b"PING\n").expect("write");
    sut.wait_stats("second epoch", |v| expect_exact(v, &[("io", 0, "connections_accepted", 1)]));
    drop(d);
    sut.stop();
}

/// md death: io_conn marks md's slot `dead` in the stats segment (its pidfd said the process
/// exited) and counts it. md is started by hand, so nothing restarts it and the state stays.
#[test]
fn issue_6_md_death_marks_slot_dead() {
    let sut = Server::start_with(
        "st_mddead",
        Setup { spawn_md: 0, max_instances: 1, ..Setup::default() },
    );
    // Killed on drop: a failed assertion before the kill below leaves no md behind.
    let mut md = util::KillOnDrop(
        std::process::Command::new(util::md_bin())
            .arg("--config")
            .arg(&sut.config)
            .arg("--instance")
            .arg("0")
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start md"),
    );
    sut.wait_md_live(1);
    let mut a = sut.connect("dumb/line");
    roundtrip(&mut a, b"PING\n", b"PONG\n");
    let pid = u64::from(md.0.id());
    sut.wait_stats("md running", |v| {
        let mut p = expect_exact(v, &[("md", 0, "pid", pid), ("md", 0, "commands.dumb.ping", 1)]);
        if v["sections"]["md"][0]["state_name"].as_str() != Some("running") {
            p.push(format!("md state {}", v["sections"]["md"][0]["state_name"]));
        }
        p
    });
    md.0.kill().expect("kill md");
    md.0.wait().expect("reap md");
    // Its connection ends (a lingering close: FIN now, counted once the client closes too); the
    // slot says dead, still naming the md that died.
    assert!(read_to_eof(&mut a).is_empty());
    drop(a);
    sut.wait_stats("md dead", |v| {
        let mut p = expect_exact(
            v,
            &[
                ("io", 0, "md_deaths", 1),
                ("io", 0, "closed_md_gone", 1),
                ("md", 0, "pid", pid),
                ("in.producer", 0, "generation", 2),
            ],
        );
        if v["sections"]["md"][0]["state_name"].as_str() != Some("dead") {
            p.push(format!("md state {}", v["sections"]["md"][0]["state_name"]));
        }
        p
    });
    sut.stop();
}

/// Idle timeout on its own: a connection that never sends is closed by the server after
/// idle_timeout (the client reads EOF, no bytes) and counted as `closed_idle`, not as a peer
/// close; the server serves on.
#[test]
fn issue_6_idle_timeout_closes_and_counts() {
    let sut = Server::start_with(
        "st_idle",
        Setup { spawn_md: 1, io_extra: "idle_timeout = \"1s\"", ..Setup::default() },
    );
    let mut idle = sut.connect("dumb/line");
    assert!(read_to_eof(&mut idle).is_empty(), "idle connection got bytes instead of a close");
    sut.wait_stats("idle close", |v| {
        expect_exact(
            v,
            &[
                ("io", 0, "connections_accepted", 1),
                ("io", 0, "connections_current", 0),
                ("io", 0, "closed_idle", 1),
                ("io", 0, "closed_by_peer", 0),
                ("io", 0, "messages_in", 0),
            ],
        )
    });
    let mut next = sut.connect("dumb/line");
    roundtrip(&mut next, b"PING\n", b"PONG\n");
    drop(next);
    sut.stop();
}

/// Every counter io_conn keeps (every `Io` of the schema its loop counts into) reaches the real
/// `viewstats --json` of a running io_conn, with its schema description, and the io block shows
/// nothing else.
#[test]
fn every_io_counter_reaches_viewstats_json_with_its_help() {
    use io_conn::counters::{Counters, Io};

    let sut = Server::start("st_complete", 1);
    let mut c = sut.connect("dumb/line");
    roundtrip(&mut c, b"PING\n", b"PONG\n");
    let v = sut.wait_stats("one PING counted", |v| {
        expect_exact(v, &[("io", 0, "messages_in", 1), ("io", 0, "md_attaches", 1)])
    });
    let block = &v["sections"]["io"][0];
    let described = &v["counters"]["io"];
    // The loop's counters are exactly the schema's: `Counters` is indexed by `Io`.
    assert_eq!(Counters::default().iter().count(), Io::ALL.len());
    for e in Io::ALL {
        let d = e.desc();
        assert!(block["values"][d.name].is_u64(), "io counter {} missing from --json", d.name);
        assert_eq!(described[d.name]["help"].as_str(), Some(d.help), "description of {}", d.name);
        assert_eq!(described[d.name]["unit"].as_str(), Some(d.unit), "unit of {}", d.name);
    }
    let shown = block["values"].as_object().expect("values object").len();
    assert_eq!(shown, Io::ALL.len(), "the io block shows exactly io_conn's counters:\n{v:#}");
    drop(c);
    sut.stop();
}
