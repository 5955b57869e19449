//! Socket activation without systemd: the test binds the listening sockets, passes them to the
//! real io_conn at fds 3.. with `LISTEN_PID` / `LISTEN_FDS` / `LISTEN_FDNAMES` set as systemd
//! would (`LISTEN_PID` is the pid of io_conn itself: a shell sets it to its own pid and execs
//! io_conn), and checks that io_conn serves through them, that a socket and a listener that do
//! not match are an error naming them, and that a reload cannot add a listener.

mod util;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};

use util::{Server, WATCHDOG, roundtrip};

/// What [`launch`] got: a ready server, or the exit status and log of one that refused to start.
enum Started {
    Ready(Box<Server>),
    Failed(std::process::ExitStatus, String),
}

fn listener_toml(name: &str, addr: SocketAddr) -> String {
    let name = if name.is_empty() { String::new() } else { format!("name = \"{name}\"\n") };
    format!(
        "\n[[io_conn.listener]]\n{name}address = \"{addr}\"\nservice = \"dumb\"\n\
         dispatch = \"request\"\n"
    )
}

/// Starts io_conn (with one md child) on `listeners` (TOML tables) and the inherited `socks`
/// with their `FileDescriptorName`s.
fn launch(test: &str, listeners: &str, socks: &[(&TcpListener, &str)]) -> Started {
    let name = util::unique_name(test);
    let dir = util::test_dir(&name);
    let runtime_dir = dir.join("run");
    let config = dir.join("shmsrv.toml");
    let text = format!(
        "[shared]\nname = \"{name}\"\nruntime_dir = \"{}\"\n\n[io_conn]\ndrain_deadline = \"3s\"\n\
         {listeners}\n[md]\nmax_instances = 1\n",
        runtime_dir.display()
    );
    std::fs::write(&config, text).expect("write config");
    // Copies at fd 100.. (close-on-exec), dup2'ed to 3.. in the child: dup2 clears
    // close-on-exec, and a source fd is never its own target.
    let high: Vec<OwnedFd> = socks
        .iter()
        .enumerate()
        .map(|(k, (s, _))| {
            let fd = nix::fcntl::fcntl(s, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100 + k as i32))
                .expect("dup");
            // SAFETY: fcntl returned a new descriptor that nothing else owns.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        })
        .collect();
    let raws: Vec<i32> = high.iter().map(AsRawFd::as_raw_fd).collect();
    let names: Vec<&str> = socks.iter().map(|(_, n)| *n).collect();
    let bin = util::io_conn_bin();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("export LISTEN_PID=$$; exec \"$0\" \"$@\"")
        .arg(&bin)
        .arg("--config")
        .arg(&config)
        .args(["--spawn-md", "1"])
        .env("LISTEN_FDS", socks.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env("SHMSRV_MD_BIN", util::md_bin())
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls dup2, which is
    // async-signal-safe; it touches no memory shared with other threads (`raws` is a copy).
    unsafe {
        cmd.pre_exec(move || {
            for (k, &fd) in raws.iter().enumerate() {
                if libc::dup2(fd, 3 + k as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn sh -c io_conn");
    drop(high);
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("stderr");
    let log2 = Arc::clone(&log);
    let tag = name.clone();
    let err_thread = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            let mut l = log2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addrs = HashMap::new();
    loop {
        match rx.recv_timeout(WATCHDOG) {
            Ok(line) if line == "ready" => break,
            Ok(line) => {
                let parts: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(parts[0], "listening", "{line}");
                addrs.insert(parts[1].to_owned(), parts[1].parse().expect("address"));
            }
            Err(_) => {
                // Exited before `ready` (stdout closed), or hung: the watchdog kills it.
                let status = match child.try_wait().expect("wait") {
                    Some(st) => st,
                    None => {
                        std::thread::sleep(std::time::Duration::from_millis(500));
                        child.try_wait().expect("wait").unwrap_or_else(|| {
                            let _ = child.kill();
                            panic!("io_conn neither got ready nor exited")
                        })
                    }
                };
                err_thread.join().expect("stderr reader");
                let _ = std::fs::remove_dir_all(&dir);
                let text = log.lock().unwrap().clone();
                return Started::Failed(status, text);
            }
        }
    }
    let server = Server {
        child: Some(child),
        name,
        dir,
        runtime_dir,
        config,
        addrs,
        log,
        env: Vec::new(),
        bin,
    };
    server.wait_md_live(1);
    Started::Ready(Box::new(server))
}

fn bind() -> (TcpListener, SocketAddr) {
    let s = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = s.local_addr().expect("addr");
    (s, a)
}

#[test]
fn serves_through_inherited_sockets() {
    let ((a, addr_a), (b, addr_b)) = (bind(), bind());
    // `a` is matched by its address, `b` by its name (its FileDescriptorName).
    let listeners = format!("{}{}", listener_toml("", addr_a), listener_toml("front", addr_b));
    let Started::Ready(server) =
        launch("activationok", &listeners, &[(&a, "io_conn.socket"), (&b, "front")])
    else {
        panic!("io_conn did not start on inherited sockets")
    };
    server.wait_log("socket activation: 2 sockets from systemd", 1);
    for addr in [addr_a, addr_b] {
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(WATCHDOG)).expect("timeout");
        roundtrip(&mut c, b"PING\n", b"PONG\n");
    }
    // The variables are gone before the md child starts.
    for pid in server.md_pids() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        let env = String::from_utf8_lossy(&env);
        assert!(!env.contains("LISTEN_FDS="), "md {pid} inherited LISTEN_FDS");
        assert!(!env.contains("LISTEN_PID="), "md {pid} inherited LISTEN_PID");
    }
    // systemd holds the listeners: a reload may not add one (refused by name) ...
    let (_c, addr_c) = bind();
    drop(_c);
    let text = std::fs::read_to_string(&server.config).expect("config");
    std::fs::write(&server.config, format!("{text}{}", listener_toml("", addr_c))).expect("write");
    let out = Command::new(util::io_conn_bin())
        .args(["--reload", "--config"])
        .arg(&server.config)
        .output()
        .expect("io_conn --reload");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a listener was added under socket activation");
    assert!(stderr.contains(&format!("REFUSED io_conn.listener[{addr_c}]")), "{stderr}");
    server.wait_log("systemd holds the listeners under socket activation", 1);
    // ... but other keys change live.
    std::fs::write(
        &server.config,
        text.replace("drain_deadline = \"3s\"", "drain_deadline = \"2s\""),
    )
    .expect("write");
    let out = Command::new(util::io_conn_bin())
        .args(["--reload", "--config"])
        .arg(&server.config)
        .output()
        .expect("io_conn --reload");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = std::net::TcpStream::connect(addr_b).expect("connect");
    c.set_read_timeout(Some(WATCHDOG)).expect("timeout");
    roundtrip(&mut c, b"PING\n", b"PONG\n");
    drop(c);
    server.stop();
    // io_conn closed its copies; ours still listen, as systemd's do across a restart: a
    // connection attempt now waits in the backlog instead of being refused.
    let waiting = std::net::TcpStream::connect(addr_b).expect("refused after io_conn stopped");
    drop((waiting, a, b));
}

#[test]
fn listener_without_socket_is_an_error_naming_it() {
    let (a, addr_a) = bind();
    let (_, addr_missing) = bind();
    let listeners = format!("{}{}", listener_toml("", addr_a), listener_toml("api", addr_missing));
    match launch("activationmissing", &listeners, &[(&a, "io_conn.socket")]) {
        Started::Failed(st, log) => {
            assert!(!st.success());
            assert!(
                log.contains("listener api (name api, service dumb) has no socket from systemd"),
                "{log}"
            );
        }
        Started::Ready(_) => panic!("io_conn started with a listener it has no socket for"),
    }
}

#[test]
fn socket_without_listener_is_an_error_naming_it() {
    let ((a, addr_a), (b, addr_b)) = (bind(), bind());
    let listeners = listener_toml("", addr_a);
    match launch("activationextra", &listeners, &[(&a, "x"), (&b, "extra")]) {
        Started::Failed(st, log) => {
            assert!(!st.success());
            assert!(
                log.contains(&format!("socket fd 4 (extra, bound to {addr_b}) from systemd matches no [[io_conn.listener]]")),
                "{log}"
            );
        }
        Started::Ready(_) => panic!("io_conn started with a socket no listener takes"),
    }
}
