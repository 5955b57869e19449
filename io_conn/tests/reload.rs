//! Reloading the config of a running io_conn and md (SIGHUP, `io_conn --reload`, `md --reload`)
//! end to end: the real binaries on 127.0.0.1, real shared memory. Every assertion is about
//! bytes, exit statuses, log lines and counters; every wait has a generous watchdog.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use util::{Server, Setup, WATCHDOG, read_line, roundtrip};

/// A port free right now on 127.0.0.1 (bound and released: the test binds it again at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn dumb_listener(port: u16) -> String {
    format!(
        "\n[[io_conn.listener]]\naddress = \"127.0.0.1:{port}\"\nservice = \"dumb\"\n\
         dispatch = \"request\"\n"
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WATCHDOG)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

fn io_conn_reload(server: &Server) -> Output {
    Command::new(util::io_conn_bin())
        .arg("--reload")
        .arg("--config")
        .arg(&server.config)
        .stdin(Stdio::null())
        .output()
        .expect("run io_conn --reload")
}

fn md_reload(server: &Server, instance: u32) -> Output {
    Command::new(util::md_bin())
        .args(["--reload", "--instance", &instance.to_string(), "--config"])
        .arg(&server.config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run md --reload")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn rewrite(server: &Server, edit: impl Fn(String) -> String) {
    let old = std::fs::read_to_string(&server.config).expect("read config");
    let new = edit(old.clone());
    assert_ne!(old, new, "the edit changed nothing");
    std::fs::write(&server.config, new).expect("write config");
}

/// A client that pipelines `PING`s in batches of 16 until told to stop and checks that every
/// reply is `PONG`, in order; returns how many it got.
fn pinger(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    let mut s = connect(addr);
    thread::spawn(move || {
        let mut got = 0u64;
        let batch = b"PING\n".repeat(16);
        let until = Instant::now() + 4 * WATCHDOG;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            s.write_all(&batch).expect("write PINGs");
            let mut buf = [0u8; 16 * 5];
            s.read_exact(&mut buf).expect("16 PONGs");
            assert_eq!(&buf[..], &b"PONG\n".repeat(16)[..], "after {got} replies");
            got += 16;
        }
        got
    })
}

/// Under load: one listener is added, another removed and limits change; nothing is lost, the
/// new listener answers, the removed one refuses new connections while its connections keep
/// working, and the counters say one reload applied.
#[test]
fn reload_under_load_adds_and_removes_listeners() {
    let (kept, removed, added) = (free_port(), free_port(), free_port());
    let listeners = format!("{}{}", dumb_listener(kept), dumb_listener(removed));
    let server = Server::start_with(
        "reloadunderload",
        Setup {
            spawn_md: 2,
            max_instances: 2,
            io_extra: "max_connections = 1000\nidle_timeout = \"300s\"",
            listeners: &listeners,
            ..Setup::default()
        },
    );
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load: Vec<_> = (0..4).map(|_| pinger(addr(kept), Arc::clone(&stop))).collect();
    load.extend((0..4).map(|_| pinger(addr(removed), Arc::clone(&stop))));
    let mut old_on_removed = connect(addr(removed));
    roundtrip(&mut old_on_removed, b"PING\n", b"PONG\n");
    // Some traffic before the reload.
    thread::sleep(Duration::from_millis(200));

    rewrite(&server, |t| {
        t.replace(&dumb_listener(removed), &dumb_listener(added))
            .replace(
                "max_connections = 1000",
                "max_connections = 2000\nmax_connections_per_ip = 500",
            )
            .replace("idle_timeout = \"300s\"", "idle_timeout = \"200s\"")
    });
    let out = io_conn_reload(&server);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "io_conn --reload failed: {stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("OK generation 1: "), "{stdout}");
    for key in [
        "io_conn.max_connections",
        "io_conn.max_connections_per_ip",
        "io_conn.idle_timeout",
        &format!("io_conn.listener[127.0.0.1:{added}]"),
        &format!("io_conn.listener[127.0.0.1:{removed}]"),
    ] {
        assert!(stdout.contains(key), "{key} not in {stdout}");
    }

    // The new listener answers; the removed one refuses new connections.
    let mut fresh = connect(addr(added));
    roundtrip(&mut fresh, b"PING\n", b"PONG\n");
    let refused = TcpStream::connect(addr(removed)).expect_err("removed listener still accepts");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
    // The connections it accepted before keep working.
    roundtrip(&mut old_on_removed, b"PING\n", b"PONG\n");
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let total: u64 = load.into_iter().map(|h| h.join().expect("a client saw a wrong reply")).sum();
    assert!(total > 0);
    roundtrip(&mut old_on_removed, b"PING\n", b"PONG\n");

    let v = server.wait_io("one reload applied", &[("reloads_ok", 1), ("reloads_refused", 0)]);
    assert_eq!(util::stat(&v, "io", 0, "config_generation"), Some(1));
    drop((fresh, old_on_removed));
    server.stop();
}

/// A key that needs a restart refuses the whole reload: non-zero `--reload` naming the key, a
/// log line naming it, and nothing of the file applied (not even its live keys).
#[test]
fn restart_only_key_refuses_the_whole_reload() {
    let added = free_port();
    let server = Server::start("reloadrefused", 1);
    let mut c = server.connect("dumb/line");
    roundtrip(&mut c, b"PING\n", b"PONG\n");
    rewrite(&server, |t| {
        let t = t.replace("queue_size = \"1MiB\"", "queue_size = \"2MiB\"");
        format!("{t}{}", dumb_listener(added))
    });
    let out = io_conn_reload(&server);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a restart-only key was accepted: {}", text(&out.stdout));
    assert!(stderr.contains("REFUSED shared.queue_size"), "{stderr}");
    assert!(!stderr.contains("listener"), "only the refused keys are named: {stderr}");
    server.wait_log("reload refused: shared.queue_size: \"1MiB\" -> \"2MiB\" needs a restart", 1);
    // All or nothing: the listener of the same file was not added.
    let e = TcpStream::connect(("127.0.0.1", added)).expect_err("listener of a refused file");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    roundtrip(&mut c, b"PING\n", b"PONG\n");
    let v = server.wait_io("one reload refused", &[("reloads_ok", 0), ("reloads_refused", 1)]);
    assert_eq!(util::stat(&v, "io", 0, "config_generation"), Some(0));
    drop(c);
    server.stop();
}

/// A file that does not validate changes nothing: `--reload` says why without asking io_conn,
/// and a SIGHUP makes io_conn log the error and keep serving with the old config.
#[test]
fn invalid_file_changes_nothing() {
    let server = Server::start("reloadinvalid", 1);
    let mut c = server.connect("dumb/line");
    roundtrip(&mut c, b"PING\n", b"PONG\n");
    rewrite(&server, |t| t.replace("drain_deadline = \"3s\"", "drain_deadline = \"3 parsecs\""));
    let out = io_conn_reload(&server);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("io_conn.drain_deadline: invalid duration"), "{stderr}");
    let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    server.wait_log("reload refused, the current config is kept", 1);
    server.wait_io("the SIGHUP reload refused", &[("reloads_ok", 0), ("reloads_refused", 1)]);
    roundtrip(&mut c, b"PING\n", b"PONG\n");
    // A valid file again: SIGHUP applies it (nothing changed for io_conn but the generation).
    rewrite(&server, |t| t.replace("drain_deadline = \"3 parsecs\"", "drain_deadline = \"2s\""));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    server.wait_io("then one applied", &[("reloads_ok", 1), ("reloads_refused", 1)]);
    roundtrip(&mut c, b"PING\n", b"PONG\n");
    drop(c);
    server.stop();
}

/// md's reload changes `md.dumb.burn_max` on the connection already open: a BURN above the new
/// maximum is refused; a restart-only key makes `md --reload` fail and changes nothing.
#[test]
fn md_reload_changes_burn_max() {
    let server = Server::start_with(
        "mdreloadburn",
        Setup {
            spawn_md: 1,
            max_instances: 1,
            md_extra: "[md.dumb]\nburn_max = 1000",
            ..Setup::default()
        },
    );
    let mut c = server.connect("dumb/line");
    roundtrip(&mut c, b"BURN 500\n", b"RESULT 125250\n");
    rewrite(&server, |t| t.replace("burn_max = 1000", "burn_max = 100"));
    let out = md_reload(&server, 0);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "md --reload failed: {stdout}{}", text(&out.stderr));
    assert!(stdout.contains("reload applied (config generation 1)"), "{stdout}");
    c.write_all(b"BURN 500\n").expect("write");
    let line = read_line(&mut c);
    assert!(line.starts_with("ERR "), "BURN above the new maximum answered {line:?}");
    roundtrip(&mut c, b"BURN 50\n", b"RESULT 1275\n");
    server.wait_log("reload: md.dumb.burn_max: 1000 -> 100", 1);

    rewrite(&server, |t| t.replace("max_instances = 1", "max_instances = 2"));
    let out = md_reload(&server, 0);
    assert!(!out.status.success(), "md accepted a restart-only key: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("refused the reload"), "{}", text(&out.stderr));
    server.wait_log("reload refused: md.max_instances: 1 -> 2 needs a restart", 1);
    roundtrip(&mut c, b"BURN 50\n", b"RESULT 1275\n");
    let v = server.stats();
    assert_eq!(util::stat(&v, "md", 0, "reloads_ok"), Some(1), "{v:#}");
    assert_eq!(util::stat(&v, "md", 0, "reloads_refused"), Some(1));
    assert_eq!(util::stat(&v, "md", 0, "config_generation"), Some(1));
    drop(c);
    server.stop();
}

/// A listener whose service and framing change keeps its socket: connections accepted from then
/// on get the new service, the ones open keep theirs; a lower `max_connections` refuses new
/// connections beyond it (with the error line of a line service) and keeps the open ones.
#[test]
fn changed_listener_keeps_open_connections_on_their_service() {
    let port = free_port();
    let server = Server::start_with(
        "reloadretarget",
        Setup {
            spawn_md: 1,
            max_instances: 1,
            listeners: &dumb_listener(port),
            ..Setup::default()
        },
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut old = connect(addr);
    roundtrip(&mut old, b"PING\n", b"PONG\n");
    let dumb = dumb_listener(port);
    let reverse = dumb.replace("service = \"dumb\"", "service = \"reverse\"");
    rewrite(&server, |t| t.replace(&dumb, &reverse));
    let out = io_conn_reload(&server);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&format!("io_conn.listener[127.0.0.1:{port}].service")), "{stdout}");
    let mut new = connect(addr);
    roundtrip(&mut new, b"PING\n", b"GNIP\n"); // reverse now
    roundtrip(&mut old, b"PING\n", b"PONG\n"); // still dumb
    // Open now: the two above plus nothing else on this server. Allow one: new ones are refused.
    rewrite(&server, |t| t.replace("[io_conn]\n", "[io_conn]\nmax_connections = 2\n"));
    let out = io_conn_reload(&server);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let mut third = connect(addr);
    assert_eq!(read_line(&mut third), "ERR too many connections\n");
    roundtrip(&mut old, b"PING\n", b"PONG\n");
    roundtrip(&mut new, b"abc\n", b"cba\n");
    server.wait_io("one refused", &[("connections_refused", 1), ("reloads_ok", 2)]);
    drop((old, new, third));
    server.stop();
}

/// Turning `max_connections_per_ip` on counts the connections already open: with one open from
/// 127.0.0.1 and a limit of 1, the next one is refused; closing the first lets one in again.
#[test]
fn per_ip_limit_counts_open_connections() {
    let server = Server::start("reloadperip", 1);
    let mut first = server.connect("dumb/line");
    roundtrip(&mut first, b"PING\n", b"PONG\n");
    rewrite(&server, |t| t.replace("[io_conn]\n", "[io_conn]\nmax_connections_per_ip = 1\n"));
    let out = io_conn_reload(&server);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let mut second = server.connect("dumb/line");
    assert_eq!(read_line(&mut second), "ERR too many connections from your address\n");
    roundtrip(&mut first, b"PING\n", b"PONG\n");
    drop(first);
    server
        .wait_io("first closed", &[("connections_current", 0), ("connections_refused_per_ip", 1)]);
    let mut third = server.connect("dumb/line");
    roundtrip(&mut third, b"PING\n", b"PONG\n");
    drop((second, third));
    server.stop();
}
