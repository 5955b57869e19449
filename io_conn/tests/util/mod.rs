//! Helpers for io_conn's end-to-end tests: start the real io_conn binary (with md children) on a
//! per-test config, find its listeners, talk to it, stop it and check it cleaned up.
//! (Over 600 lines because every e2e module and the PING bench share it through one `#[path]`;
//! the pieces are one lifecycle: start, talk, read stats, stop, check the leftovers.)
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous watchdog for anything that should happen "soon".
pub const WATCHDOG: Duration = Duration::from_secs(30);

/// The io_conn binary under test: `$SHMSRV_IO_CONN_BIN` if set (the PING bench uses it to compare
/// two builds side by side; md and viewstats are then taken from that directory too), else the
/// one cargo built.
pub fn io_conn_bin() -> PathBuf {
    match std::env::var_os("SHMSRV_IO_CONN_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_io_conn")),
    }
}

/// The md binary: next to io_conn (`cargo build --workspace --bins` builds it).
pub fn md_bin() -> PathBuf {
    let p = io_conn_bin().parent().expect("bin dir").join("md");
    assert!(
        p.is_file(),
        "md binary not found at {} (run `cargo build --workspace --bins`)",
        p.display()
    );
    p
}

/// An example of the md crate (e.g. `chat`) to run as md: in `examples/` next to io_conn
/// (`cargo build --workspace --bins --examples` builds it). Pass it to io_conn with
/// [`Setup::md_bin`].
pub fn example_bin(name: &str) -> PathBuf {
    let p = io_conn_bin().parent().expect("bin dir").join("examples").join(name);
    assert!(
        p.is_file(),
        "example {name} not found at {} (run `cargo build --workspace --bins --examples`)",
        p.display()
    );
    p
}

/// The viewstats binary: next to io_conn, like md.
pub fn viewstats_bin() -> PathBuf {
    let p = io_conn_bin().parent().expect("bin dir").join("viewstats");
    assert!(
        p.is_file(),
        "viewstats binary not found at {} (run `cargo build --workspace --bins`)",
        p.display()
    );
    p
}

/// A unique, valid `shared.name` for a test (<= 32 chars of [A-Za-z0-9_-]).
pub fn unique_name(test: &str) -> String {
    let t: String = test.chars().filter(|c| c.is_ascii_alphanumeric()).take(18).collect();
    format!("t{}{}", std::process::id(), t)
}

/// Per-test scratch directory under target/tmp.
pub fn test_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create test dir");
    d
}

/// The config text for a test server: echo (raw), reverse (line), dumb (line) and an echo
/// listener with len32 framing, all on 127.0.0.1:0. `io_extra` goes into `[io_conn]`,
/// `md_extra` into `[md]`.
pub fn config_text(
    name: &str,
    runtime_dir: &Path,
    max_instances: u32,
    io_extra: &str,
    md_extra: &str,
) -> String {
    config_text_with(name, runtime_dir, max_instances, "64KiB", io_extra, md_extra, None)
}

/// [`config_text`] with another `shared.max_message` (keep `md.dumb.stream_chunk` at or below it
/// through `md_extra`, e.g. `"[md.dumb]\nstream_chunk = \"512B\""`).
pub fn config_text_with(
    name: &str,
    runtime_dir: &Path,
    max_instances: u32,
    max_message: &str,
    io_extra: &str,
    md_extra: &str,
    dispatch: Option<&str>,
) -> String {
    // Every listener gets the same `dispatch`; none: `flow`, written out, which is what these
    // tests were written for (the built-in services' own default is `request`).
    let d = format!("dispatch = \"{}\"\n", dispatch.unwrap_or("flow"));
    format!(
        r#"[shared]
name = "{name}"
runtime_dir = "{rt}"
queue_size = "1MiB"
max_message = "{max_message}"

[io_conn]
drain_deadline = "3s"
{io_extra}

[[io_conn.listener]]
address = "127.0.0.1:0"
service = "echo"
{d}
[[io_conn.listener]]
address = "127.0.0.1:0"
service = "reverse"
{d}
[[io_conn.listener]]
address = "127.0.0.1:0"
service = "dumb"
{d}
[[io_conn.listener]]
address = "127.0.0.1:0"
service = "echo"
framing = "len32"
{d}
[md]
max_instances = {max_instances}
{md_extra}
"#,
        rt = runtime_dir.display()
    )
}

/// A running io_conn process. Dropping it without [`Server::stop`] kills it and its md
/// children and removes what it left.
pub struct Server {
    pub child: Option<Child>,
    pub name: String,
    pub dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub config: PathBuf,
    /// "service/framing" -> address, e.g. "dumb/line".
    pub addrs: HashMap<String, SocketAddr>,
    pub log: Arc<Mutex<String>>,
    /// Extra environment of the io_conn process (kept for [`Server::relaunch`]).
    pub env: Vec<(String, String)>,
    /// The io_conn binary it runs (kept for [`Server::relaunch`]).
    pub bin: PathBuf,
}

/// Options for [`Server::start_with`].
#[derive(Default)]
pub struct Setup<'a> {
    pub spawn_md: u32,
    pub max_instances: u32,
    pub io_extra: &'a str,
    pub md_extra: &'a str,
    /// `shared.max_message` (default 64KiB).
    pub max_message: Option<&'a str>,
    /// Extra environment variables for io_conn (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// The md binary io_conn spawns (`$SHMSRV_MD_BIN`); default [`md_bin`].
    pub md_bin: Option<PathBuf>,
    /// More `[[io_conn.listener]]` tables, appended to the config (see [`listener`]).
    pub listeners: &'a str,
    /// `dispatch` of every default listener (`"request"` or `"flow"`; none: `"flow"`).
    pub dispatch: Option<&'a str>,
    /// The io_conn binary (default [`io_conn_bin`]); md is then taken from its directory unless
    /// `md_bin` says otherwise. The PING bench's A/B mode runs two builds side by side with it.
    pub io_conn_bin: Option<PathBuf>,
}

/// A `[[io_conn.listener]]` table on 127.0.0.1:0, for [`Setup::listeners`].
pub fn listener(service: &str, framing: &str) -> String {
    format!(
        "\n[[io_conn.listener]]\naddress = \"127.0.0.1:0\"\nservice = \"{service}\"\n\
         framing = \"{framing}\"\n"
    )
}

impl Server {
    /// io_conn with `spawn_md` md children, waiting until all of them are live.
    pub fn start(test: &str, spawn_md: u32) -> Server {
        Self::start_with(
            test,
            Setup { spawn_md, max_instances: spawn_md.max(1), ..Setup::default() },
        )
    }

    pub fn start_with(test: &str, s: Setup<'_>) -> Server {
        let name = unique_name(test);
        let dir = test_dir(&name);
        let runtime_dir = dir.join("run");
        let config = dir.join("shmsrv.toml");
        let max = s.max_instances.max(s.spawn_md).max(1);
        let mut text = config_text_with(
            &name,
            &runtime_dir,
            max,
            s.max_message.unwrap_or("64KiB"),
            s.io_extra,
            s.md_extra,
            s.dispatch,
        );
        // After `[md]`: more elements of the same array of tables are still valid TOML.
        text.push_str(s.listeners);
        std::fs::write(&config, text).expect("write config");
        let mut env = s.env;
        let bin = s.io_conn_bin.unwrap_or_else(io_conn_bin);
        let md = match (s.md_bin, &bin) {
            (Some(md), _) => Some(md),
            (None, b) if *b != io_conn_bin() => Some(b.parent().expect("bin dir").join("md")),
            (None, _) => None,
        };
        if let Some(md) = md {
            env.push(("SHMSRV_MD_BIN".to_owned(), md.display().to_string()));
        }
        let server = Self::launch(&name, &dir, &runtime_dir, &config, s.spawn_md, env, bin);
        server.wait_md_live(s.spawn_md);
        server
    }

    fn launch(
        name: &str,
        dir: &Path,
        runtime_dir: &Path,
        config: &Path,
        spawn_md: u32,
        env: Vec<(String, String)>,
        bin: PathBuf,
    ) -> Server {
        let mut cmd = Command::new(&bin);
        // Never the test runner's own systemd socket (a CI job may run as a service).
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--config").arg(config);
        if spawn_md > 0 {
            cmd.arg("--spawn-md").arg(spawn_md.to_string());
        }
        if !env.iter().any(|(k, _)| k == "SHMSRV_MD_BIN") {
            cmd.env("SHMSRV_MD_BIN", md_bin());
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn io_conn");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let log2 = Arc::clone(&log);
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                log2.lock().unwrap().push_str(&line);
                log2.lock().unwrap().push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            name: name.to_owned(),
            dir: dir.to_owned(),
            runtime_dir: runtime_dir.to_owned(),
            config: config.to_owned(),
            addrs: HashMap::new(),
            log,
            env,
            bin,
        };
        loop {
            let line = rx.recv_timeout(WATCHDOG).expect("io_conn printed `ready` in time");
            if line == "ready" {
                break;
            }
            // listening 127.0.0.1:4680 echo raw
            let parts: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(parts.len(), 4, "unexpected stdout line {line:?}");
            assert_eq!(parts[0], "listening");
            server
                .addrs
                .insert(format!("{}/{}", parts[2], parts[3]), parts[1].parse().expect("address"));
        }
        server
    }

    /// Starts `bin` (md, or an md example) by hand as `BIN --config CONFIG --instance i`, as an
    /// operator or systemd's `md@i` would; killed (and reaped) on drop, also when a test fails.
    pub fn hand_md(&self, bin: &Path, instance: u32) -> KillOnDrop {
        KillOnDrop(
            Command::new(bin)
                .arg("--config")
                .arg(&self.config)
                .arg("--instance")
                .arg(instance.to_string())
                .spawn()
                .expect("start md by hand"),
        )
    }

    /// Address of a listener: "echo/raw", "reverse/line", "dumb/line", "echo/len32".
    pub fn addr(&self, key: &str) -> SocketAddr {
        *self.addrs.get(key).unwrap_or_else(|| panic!("no listener {key}: {:?}", self.addrs))
    }

    pub fn connect(&self, key: &str) -> TcpStream {
        let s = TcpStream::connect(self.addr(key)).expect("connect");
        s.set_read_timeout(Some(WATCHDOG)).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log says `pattern` `count` times.
    pub fn wait_log(&self, pattern: &str, count: usize) {
        let until = Instant::now() + WATCHDOG;
        while self.log_text().matches(pattern).count() < count {
            assert!(
                Instant::now() < until,
                "timed out waiting for {count} x {pattern:?} in the log"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until md instances 0..n said HELLO.
    pub fn wait_md_live(&self, n: u32) {
        for i in 0..n {
            self.wait_log(&format!("md instance {i} live"), 1);
        }
    }

    /// pids of md children, from io_conn's log ("started md instance I (pid P)").
    pub fn md_pids(&self) -> Vec<u32> {
        let log = self.log_text();
        log.lines()
            .filter_map(|l| l.split("started md instance ").nth(1))
            .filter_map(|r| r.split("(pid ").nth(1))
            .filter_map(|r| r.trim_end_matches(')').parse().ok())
            .collect()
    }

    /// pid of md instance `i` (the latest one io_conn started, after a restart the new one).
    pub fn md_pid(&self, i: u32) -> u32 {
        let prefix = format!("started md instance {i} (pid ");
        self.log_text()
            .lines()
            .filter_map(|l| l.split(prefix.as_str()).nth(1))
            .filter_map(|r| r.trim_end_matches(')').parse().ok())
            .next_back()
            .unwrap_or_else(|| panic!("io_conn never logged starting md instance {i}"))
    }

    /// Resident set size of io_conn in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// Names of this server's segments in /dev/shm and FIFOs in its runtime directory.
    pub fn leftovers(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/dev/shm") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{}.", self.name)) {
                    v.push(format!("/dev/shm/{n}"));
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.runtime_dir) {
            for e in rd.flatten() {
                v.push(e.path().display().to_string());
            }
        }
        v
    }

    /// SIGTERM, wait (watchdog), assert exit 0 and that every segment (the stats segment
    /// included) and FIFO is gone.
    pub fn stop(self) {
        self.terminate();
        self.wait_clean_exit();
    }

    /// Sends SIGTERM (io_conn starts draining).
    pub fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// SIGKILL io_conn (not its md children) and reap it: what it created stays behind.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts a new io_conn on the same config (after [`Server::kill9`] or a clean exit).
    pub fn relaunch(&mut self, spawn_md: u32) {
        assert!(self.child.is_none(), "relaunch while running");
        let next = Self::launch(
            &self.name,
            &self.dir,
            &self.runtime_dir,
            &self.config,
            spawn_md,
            self.env.clone(),
            self.bin.clone(),
        );
        // Keep the earlier log lines (the tests read md pids from it).
        let old = self.log_text();
        next.log.lock().unwrap().insert_str(0, &old);
        let mut next = next;
        self.child = next.child.take();
        self.addrs = std::mem::take(&mut next.addrs);
        self.log = Arc::clone(&next.log);
        // `next` has no child now; dropping it would remove the directory, which we still use.
        next.dir = PathBuf::new();
        self.wait_md_live(spawn_md);
    }

    /// Waits for io_conn to exit (watchdog), asserts exit 0 and that everything is gone.
    pub fn wait_clean_exit(mut self) {
        let mut child = self.child.take().expect("running");
        let until = Instant::now() + WATCHDOG;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!("io_conn did not exit within the watchdog after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "io_conn exited with {status}; log:\n{}", self.log_text());
        let left = self.leftovers();
        assert!(left.is_empty(), "io_conn left {left:?}");
        for pid in self.md_pids() {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
                "md child {pid} still running"
            );
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            for pid in self.md_pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Also after a `kill9` whose test failed before `relaunch`.
        if !self.dir.as_os_str().is_empty() {
            for p in self.leftovers() {
                let _ = std::fs::remove_file(p);
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `viewstats --json` on `name` (POSIX backend); the parsed document, or the failure's exit
/// status and stderr.
pub fn viewstats_json(name: &str) -> Result<serde_json::Value, String> {
    let out = Command::new(viewstats_bin())
        .args(["--json", "--name", name, "--backend", "posix"])
        .stdin(Stdio::null())
        .output()
        .expect("run viewstats");
    if !out.status.success() {
        return Err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("bad JSON from viewstats: {e}"))
}

/// A value of a `viewstats --json` document: `section` block `instance`, counter `name`.
pub fn stat(v: &serde_json::Value, section: &str, instance: u64, name: &str) -> Option<u64> {
    v["sections"][section]
        .as_array()?
        .iter()
        .find(|b| b["instance"].as_u64() == Some(instance))?["values"][name]
        .as_u64()
}

impl Server {
    /// `viewstats --json` for this server (panics if viewstats fails).
    pub fn stats(&self) -> serde_json::Value {
        viewstats_json(&self.name).unwrap_or_else(|e| panic!("viewstats failed: {e}"))
    }

    /// Polls `viewstats --json` until `problems` returns none (counters are mirrored once per
    /// loop iteration, so they settle shortly after the traffic); panics after the watchdog with
    /// the last problems and document.
    pub fn wait_stats(
        &self,
        what: &str,
        problems: impl Fn(&serde_json::Value) -> Vec<String>,
    ) -> serde_json::Value {
        let until = Instant::now() + WATCHDOG;
        loop {
            let v = self.stats();
            let p = problems(&v);
            if p.is_empty() {
                return v;
            }
            assert!(
                Instant::now() < until,
                "{what}: counters did not settle:\n  {}\nlast document:\n{v:#}",
                p.join("\n  ")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Server {
    /// Waits (watchdog) until io_conn's counters (section `io`) equal `want`, e.g.
    /// `[("closed_deadline", 1)]`: how a test asserts why a connection was closed.
    pub fn wait_io(&self, what: &str, want: &[(&str, u64)]) -> serde_json::Value {
        let want: Vec<_> = want.iter().map(|&(name, val)| ("io", 0, name, val)).collect();
        self.wait_stats(what, |v| expect_exact(v, &want))
    }
}

/// A child process (an md started by hand) killed and reaped on drop, so a failing test does not
/// leave it running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Problems of `v` against exact expectations `(section, instance, name, value)`.
pub fn expect_exact(v: &serde_json::Value, want: &[(&str, u64, &str, u64)]) -> Vec<String> {
    want.iter()
        .filter_map(|&(sec, i, name, val)| {
            let got = stat(v, sec, i, name);
            (got != Some(val)).then(|| format!("{sec}[{i}].{name} = {got:?}, want {val}"))
        })
        .collect()
}

/// Reads exactly `n` bytes (watchdog via the socket's read timeout).
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read_exact");
    buf
}

/// Reads one line (up to and including `\n`), byte by byte.
pub fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = s.read(&mut b).expect("read");
        assert!(n == 1, "EOF before end of line; got {:?}", String::from_utf8_lossy(&out));
        out.push(b[0]);
        if b[0] == b'\n' {
            return String::from_utf8_lossy(&out).into_owned();
        }
    }
}

/// Reads one line; None on EOF or reset before its end.
pub fn try_read_line(s: &mut TcpStream) -> Option<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) => {
                out.push(b[0]);
                if b[0] == b'\n' {
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
            }
            _ => return None,
        }
    }
}

/// Reads until EOF; returns what came (an RST after data counts as EOF).
pub fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read: {e} after {} bytes", out.len()),
        }
    }
}

/// Sends `req` and expects exactly `resp` back.
pub fn roundtrip(s: &mut TcpStream, req: &[u8], resp: &[u8]) {
    s.write_all(req).expect("write");
    let got = read_n(s, resp.len());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(resp));
}

/// Sets SO_LINGER {on, 0}: close() sends an RST.
pub fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Linger, &l).expect("SO_LINGER");
}

/// Deterministic pseudo-random bytes.
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A successor io_conn started with `--takeover` on the old one's config.
pub struct Successor {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Successor {
    pub fn start(old: &Server, spawn_md: u32) -> Successor {
        Self::start_bin(old, spawn_md, &io_conn_bin())
    }

    /// With another binary: an upgrade is a takeover by the new build.
    pub fn start_bin(old: &Server, spawn_md: u32, bin: &std::path::Path) -> Successor {
        let mut cmd = Command::new(bin);
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"] {
            cmd.env_remove(var);
        }
        cmd.arg("--config").arg(&old.config).arg("--takeover");
        if spawn_md > 0 {
            cmd.arg("--spawn-md").arg(spawn_md.to_string());
        }
        cmd.env("SHMSRV_MD_BIN", md_bin())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the successor");
        let log = Arc::new(Mutex::new(String::new()));
        let (log2, stderr) = (Arc::clone(&log), child.stderr.take().expect("stderr"));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[successor] {line}");
                log2.lock().unwrap().push_str(&(line + "\n"));
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
        let s = Successor { child: Some(child), log };
        loop {
            match rx.recv_timeout(WATCHDOG) {
                Ok(l) if l == "ready" => break,
                Ok(_) => {}
                Err(_) => panic!("the successor never printed ready; log:\n{}", s.log_text()),
            }
        }
        s
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_log(&self, pattern: &str) {
        let until = Instant::now() + WATCHDOG;
        while !self.log_text().contains(pattern) {
            assert!(Instant::now() < until, "no {pattern:?} in the successor's log");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; exit 0 within the watchdog.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let st = wait_exit(&mut child);
        assert!(st.success(), "successor exited {st}; log:\n{}", self.log_text());
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let until = Instant::now() + WATCHDOG;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(Instant::now() < until, "process {} did not exit", child.id());
        std::thread::sleep(Duration::from_millis(10));
    }
}
