//! The `kv` service with real Redis clients (issue 12): redis-cli and redis-py (installed by
//! `.ci/setup`) against io_conn + md over the shared cache segment. The redis-py scenarios are
//! in `kv_clients.py` (one per run, exit 0 when every check passed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{KillOnDrop, Server, Setup, WATCHDOG, listener, md_bin, read_n, read_to_eof};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/kv_clients.py")
}

/// A server with a kv listener (and the test config's others), `md` md children.
fn kv_server(test: &str, md: u32, kv_extra: &str) -> Server {
    let listeners = format!("{}\n[kv]\n{kv_extra}\n", listener("kv", "resp"));
    Server::start_with(
        test,
        Setup { spawn_md: md, max_instances: md.max(1), listeners: &listeners, ..Setup::default() },
    )
}

fn port(sut: &Server) -> u16 {
    sut.addr("kv/resp").port()
}

/// Runs a redis-py scenario; panics with its output unless it exits 0.
fn py(sut: &Server, scenario: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(script())
        .arg(scenario)
        .arg(port(sut).to_string())
        .args(args)
        .output()
        .expect("python3 (with redis-py: .ci/setup installs it)");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scenario {scenario} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// redis-cli with `args`; its stdout.
fn cli(sut: &Server, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port(sut).to_string()])
        .args(args)
        .output()
        .expect("redis-cli (apt-get install redis-tools: .ci/setup does)");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kv_redis_cli_every_command() {
    let sut = kv_server("kvcli", 2, "");
    let c = |a: &[&str]| cli(&sut, a);
    assert_eq!(c(&["PING"]), "PONG\n");
    assert_eq!(c(&["ECHO", "hello world"]), "hello world\n");
    assert_eq!(c(&["SET", "k", "v"]), "OK\n");
    assert_eq!(c(&["GET", "k"]), "v\n");
    assert_eq!(c(&["GET", "absent"]), "\n");
    assert_eq!(c(&["SET", "k", "x", "NX"]), "\n");
    assert_eq!(c(&["SET", "k", "x", "XX", "EX", "100"]), "OK\n");
    assert_eq!(c(&["TTL", "k"]), "100\n");
    assert_eq!(c(&["SET", "p", "1", "PX", "100000"]), "OK\n");
    assert_eq!(c(&["EXPIRE", "p", "10"]), "1\n");
    assert_eq!(c(&["TTL", "p"]), "10\n");
    assert_eq!(c(&["EXISTS", "k", "p", "absent"]), "2\n");
    assert_eq!(c(&["INCR", "n"]), "1\n");
    assert_eq!(c(&["INCRBY", "n", "9"]), "10\n");
    assert_eq!(c(&["DECR", "n"]), "9\n");
    assert_eq!(c(&["MSET", "a", "1", "b", "2"]), "OK\n");
    assert_eq!(c(&["MGET", "a", "absent", "b"]), "1\n\n2\n");
    assert_eq!(c(&["DBSIZE"]), "5\n");
    assert_eq!(c(&["DEL", "a", "b", "absent"]), "2\n");
    assert_eq!(c(&["SELECT", "0"]), "OK\n");
    assert_eq!(c(&["CONFIG", "GET", "save"]), "save\n\n");
    assert_eq!(c(&["INCR", "k"]).trim_end(), "ERR value is not an integer or out of range");
    assert_eq!(
        c(&["FOO", "bar"]).trim_end(),
        "ERR unknown command 'FOO', with args beginning with: 'bar'"
    );
    assert_eq!(c(&["GET"]).trim_end(), "ERR wrong number of arguments for 'get' command");
    let info = c(&["INFO"]);
    for field in [
        "redis_version:",
        "connected_clients:",
        "used_memory:",
        "total_commands_processed:",
        "db0:keys=3,",
    ] {
        assert!(info.contains(field), "INFO lacks {field}:\n{info}");
    }
    assert_eq!(c(&["FLUSHALL"]), "OK\n");
    assert_eq!(c(&["DBSIZE"]), "0\n");
    // Piped input: redis-cli sends each line as a command (RESP arrays).
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port(&sut).to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"SET pipe \"a b\"\nGET pipe\nQUIT\n").unwrap();
    let out = child.wait_with_output().unwrap();
    // (redis-cli answers QUIT itself and prints nothing for it)
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\na b\n");
    // Inline commands over a raw socket (telnet style).
    let mut s = sut.connect("kv/resp");
    s.write_all(b"PING\r\nSET il \"x y\"\r\nGET il\r\n\r\nECHO 'q'\n").unwrap();
    let want = b"+PONG\r\n+OK\r\n$3\r\nx y\r\n$1\r\nq\r\n";
    assert_eq!(crate::util::read_n(&mut s, want.len()), want);
    drop(s);
    sut.stop();
}

#[test]
fn kv_redis_py_every_command() {
    let sut = kv_server("kvpy", 1, "");
    py(&sut, "every_command", &[]);
    sut.stop();
}

#[test]
fn kv_set_seen_by_twenty_connections_over_both_md() {
    let sut = kv_server("kvtwenty", 2, "");
    py(&sut, "set_seen_by_twenty", &[]);
    sut.stop();
}

#[test]
fn kv_fifty_clients_two_hundred_incr_two_md() {
    let sut = kv_server("kvincr", 2, "");
    py(&sut, "incr", &[]);
    sut.stop();
}

#[test]
fn kv_expiry() {
    let sut = kv_server("kvexpiry", 2, "");
    py(&sut, "expiry", &[]);
    sut.stop();
}

#[test]
fn kv_full_table_answers_oom_and_del_frees_room() {
    // 200 keys; memory for exactly 200 one-chunk entries: the slot rows and the pool both fill.
    let sut = kv_server("kvfull", 2, "max_keys = 200\nmemory = \"12800B\"");
    py(&sut, "full", &["200"]);
    sut.stop();
}

#[test]
fn kv_protocol_garbage_errors_and_closes_others_unaffected() {
    let sut = kv_server("kvgarbage", 2, "");
    py(&sut, "garbage", &[]);
    sut.stop();
}

#[test]
fn kv_auth_with_password() {
    let sut = kv_server("kvauth", 1, "password = \"s3cret pass\"");
    py(&sut, "auth", &["s3cret pass"]);
    sut.stop();
}

#[test]
fn kv_protected_mode_refuses_a_public_listener_without_password() {
    let dir = crate::util::test_dir("kvprotected");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "[[io_conn.listener]]\naddress = \"0.0.0.0:0\"\nservice = \"kv\"\n")
        .unwrap();
    for bin in [crate::util::io_conn_bin(), md_bin()] {
        let out = Command::new(&bin)
            .arg("--config")
            .arg(&cfg)
            .arg("--check-config")
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin:?} accepted it");
        assert!(text.contains("protected mode"), "{bin:?}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cache lives with io_conn: a new io_conn starts with an empty one (replacing the dead
/// one's segment), and an md that outlived the old io_conn re-attaches the new cache.
#[test]
fn kv_cache_does_not_survive_an_io_conn_restart() {
    let mut sut = Server::start_with(
        "kvrestart",
        Setup {
            spawn_md: 0,
            max_instances: 1,
            listeners: &listener("kv", "resp"),
            ..Setup::default()
        },
    );
    let _md = sut.hand_md(&md_bin(), 0);
    sut.wait_md_live(1);
    assert_eq!(cli(&sut, &["SET", "survivor", "1"]), "OK\n");
    assert_eq!(cli(&sut, &["GET", "survivor"]), "1\n");
    sut.kill9();
    let stale = format!("/dev/shm/{}.kv", sut.name);
    assert!(sut.leftovers().contains(&stale), "a SIGKILLed io_conn leaves {stale}");
    sut.relaunch(0);
    sut.wait_md_live(1);
    sut.wait_log("replacing stale cache segment", 1);
    // The same md (it kept running) answers from the new, empty cache.
    assert_eq!(cli(&sut, &["GET", "survivor"]), "\n");
    assert_eq!(cli(&sut, &["SET", "after", "2"]), "OK\n");
    assert_eq!(cli(&sut, &["DBSIZE"]), "1\n");
    sut.stop();
}

/// md processes are SIGKILLed while 8 connections SET in a loop (io_conn restarts them): after
/// every kill every key is readable and whole, and DBSIZE counts exactly the readable keys (the
/// table's own audit with chunk accounting is `shmq/tests/cache.rs`).
#[test]
fn kv_md_killed_mid_set_under_load() {
    let sut = kv_server("kvcrash", 2, "");
    let stop = sut.dir.join("stop-load");
    let mut load = KillOnDrop(
        Command::new("python3")
            .arg(script())
            .args(["crash_load", &port(&sut).to_string(), "300", stop.to_str().unwrap()])
            .spawn()
            .expect("python3"),
    );
    let mut recovered = 0u64;
    for round in 0..8 {
        // Let the load run, then kill one md in the middle of whatever it is doing.
        std::thread::sleep(Duration::from_millis(150));
        let inst = (round % 2) as u32;
        let victim = sut.md_pid(inst);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let until = Instant::now() + WATCHDOG;
        while sut.md_pid(inst) == victim {
            assert!(Instant::now() < until, "md not restarted");
            std::thread::sleep(Duration::from_millis(20));
        }
        sut.wait_md_live(2);
        let out = py(&sut, "audit", &[]);
        recovered = out.trim().parse().unwrap_or(0);
    }
    std::fs::write(&stop, b"").unwrap();
    let until = Instant::now() + WATCHDOG;
    while load.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "load did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("cache recoveries after 8 md kills: {recovered}");
    sut.stop();
}

/// Issue 12's QUIT, as Redis does it: `+OK`, then the server closes the connection; commands
/// pipelined behind QUIT are never answered, and other connections carry on. Under flow dispatch
/// (kv's default) and request dispatch, two md each. Under request dispatch the PINGs behind QUIT
/// go to both md instances: catches a close that lets another md's reply through (no
/// `DATA_CLOSE` cut), a close ordered before the `+OK`, a QUIT that leaves the connection open,
/// and a close that hits another connection.
#[test]
fn kv_quit_replies_ok_then_closes() {
    for dispatch in ["flow", "request"] {
        let mut listeners = listener("kv", "resp");
        listeners.push_str(&format!("dispatch = \"{dispatch}\"\n"));
        let sut = Server::start_with(
            &format!("kvquit{}", &dispatch[..1]),
            Setup { spawn_md: 2, max_instances: 2, listeners: &listeners, ..Setup::default() },
        );
        let mut bystander = sut.connect("kv/resp");
        bystander.write_all(b"PING\r\n").expect("write");
        assert_eq!(read_n(&mut bystander, 7), b"+PONG\r\n");

        let mut c = sut.connect("kv/resp");
        c.write_all(b"*3\r\n$3\r\nSET\r\n$4\r\nquit\r\n$1\r\nv\r\n").expect("write");
        assert_eq!(read_n(&mut c, 5), b"+OK\r\n", "{dispatch}: SET");
        c.write_all(b"QUIT\r\n").expect("write");
        assert_eq!(String::from_utf8_lossy(&read_to_eof(&mut c)), "+OK\r\n", "{dispatch}: QUIT");

        // redis-cli too: it prints the +OK and sees the close.
        assert_eq!(cli(&sut, &["QUIT"]), "OK\n", "{dispatch}: redis-cli QUIT");

        const CONNS: u64 = 20;
        for n in 0..CONNS {
            let mut c = sut.connect("kv/resp");
            let mut req = b"PING\r\n*1\r\n$4\r\nQUIT\r\n".to_vec();
            for _ in 0..=n % 8 {
                req.extend_from_slice(b"PING\r\n*2\r\n$4\r\nINCR\r\n$4\r\nnope\r\n");
            }
            c.write_all(&req).expect("write");
            let got = read_to_eof(&mut c);
            assert_eq!(String::from_utf8_lossy(&got), "+PONG\r\n+OK\r\n", "{dispatch}: conn {n}");
        }
        // The bystander was not touched. Under flow dispatch nothing behind a QUIT ran (no
        // INCR); under request dispatch another md may have run one whose reply was cut.
        bystander.write_all(b"GET quit\r\n").expect("write");
        assert_eq!(read_n(&mut bystander, 7), b"$1\r\nv\r\n", "{dispatch}");
        if dispatch == "flow" {
            bystander.write_all(b"GET nope\r\n").expect("write");
            assert_eq!(read_n(&mut bystander, 5), b"$-1\r\n", "an INCR behind QUIT ran");
        }
        // Counted as md closing them: 22 connections, none by error.
        sut.wait_stats("the QUIT closes counted", |v| {
            crate::util::expect_exact(
                v,
                &[("io", 0, "closed_by_md", CONNS + 2), ("io", 0, "closed_error", 0)],
            )
        });
        drop(bystander);
    }
}
