//! viewstats picks one of several shmsrv instances on one machine: by `--config FILE` (the file
//! that instance runs with) or by `--name NAME` (its `shared.name`; the flag wins over the file's).
//! Two real io_conn run side by side with different names and ports, each gets a different
//! number of connections, and every way of naming one must show that one's counters and pid,
//! never the other's. A missing `--config` file and a `--name` the config would refuse are clear
//! errors.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod util;
use util::{io_conn_bin, run};

const WATCHDOG: Duration = Duration::from_secs(60);

fn json(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let o = run(&all);
    assert!(o.status.success(), "viewstats {all:?}: {o:?}");
    serde_json::from_slice(&o.stdout).expect("viewstats --json prints JSON")
}

fn accepted(v: &Value) -> u64 {
    v["sections"]["io"][0]["values"]["connections_accepted"]
        .as_u64()
        .unwrap_or_else(|| panic!("no io.connections_accepted in {v:#}"))
}

/// One io_conn (no md) with its own name, config file and a listener on 127.0.0.1:0; killed on
/// drop (a failing test leaves nothing running), its files removed with the scratch directory.
struct Instance {
    name: String,
    config: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
    ready: mpsc::Receiver<String>,
}

impl Instance {
    /// Writes the config under `dir` and starts io_conn; [`Instance::wait_ready`] waits for it.
    fn spawn(dir: &Path, name: &str) -> Self {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[shared]\nname = \"{name}\"\nruntime_dir = \"{}\"\nqueue_size = \"1MiB\"\n\
                 [[io_conn.listener]]\naddress = \"127.0.0.1:0\"\nservice = \"echo\"\n\
                 [md]\nmax_instances = 1\n",
                dir.join("run").display()
            ),
        )
        .expect("write config");
        let mut child = Command::new(io_conn_bin())
            .arg("--config")
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn io_conn");
        let out = child.stdout.take().expect("stdout");
        let (tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let addr = "0.0.0.0:0".parse().expect("placeholder");
        Self { name: name.to_owned(), config, addr, child: Some(child), ready }
    }

    /// Waits for `ready` on stdout and takes the listener's address from `listening ADDR ...`.
    fn wait_ready(&mut self) {
        loop {
            let l = self.ready.recv_timeout(WATCHDOG).expect("watchdog: io_conn not ready");
            if l == "ready" {
                assert_ne!(self.addr.port(), 0, "io_conn printed no listener");
                return;
            }
            if let Some(rest) = l.strip_prefix("listening ") {
                self.addr = rest.split_whitespace().next().expect("address").parse().expect("addr");
            }
        }
    }

    fn pid(&self) -> u64 {
        u64::from(self.child.as_ref().expect("running").id())
    }

    fn config(&self) -> &str {
        self.config.to_str().expect("utf-8 path")
    }

    /// SIGTERM and a clean exit (watchdog).
    fn stop(mut self) {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .expect("SIGTERM");
        let until = Instant::now() + WATCHDOG;
        let st = loop {
            if let Some(st) = c.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > until {
                let _ = c.kill();
                let _ = c.wait();
                panic!("watchdog: io_conn {} did not stop", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(st.success(), "io_conn {} exited with {st}", self.name);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The scratch directory; removed on drop, also when the test fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("vsinst{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        Self(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (watchdog) until `--name NAME` shows `want` accepted connections.
fn wait_accepted(name: &str, want: u64) -> Value {
    let until = Instant::now() + WATCHDOG;
    loop {
        let v = json(&["--name", name]);
        if accepted(&v) == want {
            return v;
        }
        assert!(Instant::now() < until, "{name}: accepted {} != {want}: {v:#}", accepted(&v));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn config_or_name_picks_one_of_two_instances() {
    let scratch = Scratch::new("pick");
    let pid = std::process::id();
    let (na, nb) = (format!("vsa{pid}"), format!("vsb{pid}"));
    // Both start at once, as two instances on one host would; they share the runtime dir.
    let mut a = Instance::spawn(&scratch.0, &na);
    let mut b = Instance::spawn(&scratch.0, &nb);
    a.wait_ready();
    b.wait_ready();
    assert_ne!(a.addr, b.addr);

    // Different traffic, so the counters tell the instances apart: 3 connections to A, 1 to B.
    for _ in 0..3 {
        drop(TcpStream::connect(a.addr).expect("connect A"));
    }
    drop(TcpStream::connect(b.addr).expect("connect B"));
    wait_accepted(&na, 3);
    wait_accepted(&nb, 1);

    for (inst, n) in [(&a, 3), (&b, 1)] {
        for args in [vec!["--name", inst.name.as_str()], vec!["--config", inst.config()]] {
            let v = json(&args);
            assert_eq!(v["name"], inst.name.as_str(), "{args:?}");
            assert_eq!(v["creator_pid"].as_u64(), Some(inst.pid()), "{args:?}: {v:#}");
            assert_eq!(v["location"], format!("/dev/shm/{}.stats", inst.name), "{args:?}");
            assert_eq!(accepted(&v), n, "{args:?}");
        }
    }
    // `--name` wins over the config's `shared.name`.
    let v = json(&["--config", a.config(), "--name", &nb]);
    assert_eq!(v["creator_pid"].as_u64(), Some(b.pid()));
    assert_eq!(accepted(&v), 1);
    // The table's first line names the instance, its segment and its io_conn.
    let o = run(&["-1", "--config", b.config()]);
    assert!(o.status.success(), "{o:?}");
    let head = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_owned();
    assert!(
        head.starts_with(&format!("shmsrv {nb} (/dev/shm/{nb}.stats)"))
            && head.contains(&format!("io_conn pid {} running", b.pid())),
        "{head}"
    );

    // One stops: it is gone by both names; the other is still there, unchanged.
    a.stop();
    for args in [
        ["-1", "--name", na.as_str()],
        ["-1", "--config", &format!("{}/{na}.toml", scratch.0.display())],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("no server running under {na}")), "{err}");
    }
    let v = json(&["--name", &nb]);
    assert_eq!(v["creator_pid"].as_u64(), Some(b.pid()));
    assert_eq!(v["creator_running"], true);
    assert_eq!(accepted(&v), 1);
    b.stop();
}

#[test]
fn a_missing_config_or_a_bad_name_is_a_clear_error() {
    let scratch = Scratch::new("errors");
    let missing = scratch.0.join("nope.toml");
    let m = missing.to_str().expect("utf-8");
    let o = run(&["-1", "--config", m]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(m) && err.contains("No such file"), "{err}");

    for bad in ["../etc/x", "a.b", "two words"] {
        let o = run(&["-1", "--name", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("--name {bad:?}")) && err.contains("is not a valid name"),
            "{bad}: {err}"
        );
        assert!(!err.contains("/dev/shm"), "never looked up: {err}");
    }
}
