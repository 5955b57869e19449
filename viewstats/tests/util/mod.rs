//! Helpers shared by viewstats' integration tests: a stats segment the test fills, running
//! viewstats (one shot, in tmux, as --serve), a real io_conn, and the Prometheus parser.
#![allow(dead_code)] // each test file uses a different part

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shmq::layout::Direction;
use shmq::region::Backend;
use shmq::stats::{COMMAND_SLOTS, Io, Md, MdState, QueueProducer, StatsSegment};
use shmq::sys::ProcId;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_viewstats");

pub(crate) fn unique(test: &str) -> String {
    format!("vs{}-{test}", std::process::id())
}

/// A stats segment standing in for io_conn; removed on drop (also on failure).
pub(crate) struct Server {
    pub name: String,
    pub seg: Option<StatsSegment>,
}

impl Server {
    pub(crate) fn new(name: &str, epoch: u64) -> Self {
        let _ = StatsSegment::remove(Backend::Posix, name);
        let seg = StatsSegment::create(Backend::Posix, name, 4, epoch).expect("create segment");
        Self { name: name.to_owned(), seg: Some(seg) }
    }
    pub(crate) fn seg(&self) -> &StatsSegment {
        self.seg.as_ref().expect("segment")
    }
    /// Known values: io 5 accepted, 2 current, 1234 bytes in; md slot 1 running with 10 in / 9
    /// out, commands `dumb.ping` 10, `dumb.wait` 0 and 1 without a name; its input queue: 10
    /// frames, waits 500, 500, 500, 5000 ns.
    pub(crate) fn fill(&self) {
        let s = self.seg();
        let io = s.io();
        io.add(Io::ConnectionsAccepted, 5);
        io.set(Io::ConnectionsCurrent, 2);
        io.add(Io::BytesIn, 1234);
        let md = s.attach_writer_md(1, ProcId::current()).unwrap();
        md.set_state(MdState::Running);
        md.add(Md::MessagesIn, 10);
        md.add(Md::MessagesOut, 9);
        md.set_command_names(&["dumb.ping", "dumb.wait"]).unwrap();
        let mut commands = [0; COMMAND_SLOTS];
        commands[0] = 10;
        md.publish_commands(&commands, 1);
        md.add(Md::BusyNs, 2_500_000_000);
        s.queue_producer(1, Direction::ToMd).unwrap().set(QueueProducer::Frames, 10);
        let c = s.queue_consumer(1, Direction::ToMd).unwrap();
        for ns in [500, 500, 500, 5000] {
            c.record_wait_ns(ns);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.seg = None;
        let _ = StatsSegment::remove(Backend::Posix, &self.name);
    }
}

pub(crate) fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn viewstats");
    let (tx, rx) = mpsc::channel();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let _ = out.read_to_end(&mut o);
        let _ = err.read_to_end(&mut e);
        let _ = tx.send((o, e));
    });
    let Ok((stdout, stderr)) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        panic!("watchdog: viewstats {args:?} hung");
    };
    let status = child.wait().unwrap();
    Output { status, stdout, stderr }
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses Prometheus text with the `prometheus_client` package; `None` if it is not installed.
pub(crate) fn parse_prometheus(text: &str) -> Option<Value> {
    const PY: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "help": f.documentation,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let probe = Command::new("python3").args(["-c", "import prometheus_client"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "\n\n!!!!! SKIPPING the Prometheus parser check: python3 or prometheus_client is \
             missing (pip install prometheus_client) !!!!!\n"
        );
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the parser rejected the output: {}\n{text}",
        text_owned(&o.stderr)
    );
    Some(serde_json::from_slice(&o.stdout).unwrap())
}

pub(crate) fn text_owned(b: &[u8]) -> String {
    text(b)
}

pub(crate) fn sample<'a>(
    fams: &'a Value,
    family: &str,
    sample: &str,
    labels: &[(&str, &str)],
) -> &'a Value {
    let f = &fams[family];
    assert!(!f.is_null(), "no family {family}");
    f["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s[0] == sample
                && labels.iter().all(|(k, v)| s[1][*k] == *v)
                && s[1].as_object().unwrap().len() == labels.len()
        })
        .map(|s| &s[2])
        .unwrap_or_else(|| panic!("no sample {sample}{labels:?} in {f}"))
}

/// `viewstats ARGS` in a detached tmux pane of `cols`×`rows`, read with capture-pane; the
/// session is killed on drop. `None` (and a loud note) if tmux is not installed.
pub(crate) struct Pane {
    pub session: String,
    /// Where the pane's shell writes viewstats' exit status.
    pub status: std::path::PathBuf,
}

impl Pane {
    pub(crate) fn start(session: &str, cols: u32, rows: u32, args: &str) -> Option<Self> {
        if !Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success()) {
            eprintln!(
                "\n\n!!!!! SKIPPING the terminal test: tmux is not installed \
                 (apt-get install -y tmux) !!!!!\n"
            );
            return None;
        }
        // The shell writes viewstats' exit status to a file once it is gone (tmux's own
        // pane_dead_status is not always recorded).
        let status = std::env::temp_dir().join(format!("{session}.exit"));
        let _ = std::fs::remove_file(&status);
        let cmd = format!("{BIN} {args}; echo $? > {}", status.display());
        let (x, y) = (cols.to_string(), rows.to_string());
        let st = Command::new("tmux")
            .args(["new-session", "-d", "-s", session, "-x", &x, "-y", &y, &cmd])
            .status()
            .unwrap();
        assert!(st.success());
        let sut = Self { session: session.to_owned(), status };
        // Keep the pane after viewstats exits, to read its exit status and screen.
        let st = Command::new("tmux")
            .args(["set-option", "-t", session, "remain-on-exit", "on"])
            .status()
            .unwrap();
        assert!(st.success());
        Some(sut)
    }

    pub(crate) fn capture(&self) -> String {
        let o = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        text(&o.stdout)
    }

    /// The screen once `what` holds (watchdog 30 s; `label` says what was awaited).
    pub(crate) fn until(&self, label: &str, what: &dyn Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.capture();
            if what(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "watchdog: the pane never showed {label}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn keys(&self, keys: &[&str]) {
        let st = Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The pid of viewstats: the only child of the pane's shell.
    pub(crate) fn pid(&self) -> i32 {
        let o = Command::new("tmux")
            .args(["display-message", "-p", "-t", &self.session, "#{pane_pid}"])
            .output()
            .unwrap();
        let sh = text(&o.stdout).trim().to_owned();
        let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children"))
            .expect("the pane's shell");
        let pids: Vec<i32> = children.split_whitespace().map(|p| p.parse().unwrap()).collect();
        assert_eq!(pids.len(), 1, "one child of the pane's shell: {children}");
        pids[0]
    }

    /// Waits (watchdog 30 s) for viewstats to end and returns its exit status as the pane's
    /// shell saw it (128 + N: killed by signal N), and the screen then.
    pub(crate) fn wait_exit(&self, why: &str) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = std::fs::read_to_string(&self.status).unwrap_or_default();
            if st.ends_with('\n') {
                return (st.trim().parse().expect("a status"), self.capture());
            }
            assert!(Instant::now() < deadline, "watchdog: {why}:\n{}", self.capture());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.status);
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.session]).output();
    }
}

/// A segment as io_conn leaves it with 4 md slots of which only slot 1 runs: io_conn writes the
/// generation of every slot's queue halves (so every slot has non-zero values), slot 2 held an
/// md that exited.
pub(crate) fn fill_like_io_conn(srv: &Server) {
    srv.fill();
    let s = srv.seg();
    for i in 0..4 {
        for d in [Direction::ToMd, Direction::ToIo] {
            s.queue_producer(i, d).unwrap().set(QueueProducer::Generation, 1);
        }
    }
    let md = s.attach_writer_md(2, ProcId { pid: 999_998, start_time: 7 }).unwrap();
    md.set_state(MdState::Exited);
}

/// Lines of `screen` that start with `prefix` (after trimming).
pub(crate) fn lines_starting<'a>(screen: &'a str, prefix: &str) -> Vec<&'a str> {
    screen.lines().filter(|l| l.trim_start().starts_with(prefix)).collect()
}

/// Runs viewstats as `uid` with primary group `gid` (and no other groups), as an operator would.
pub(crate) fn run_as(uid: u32, gid: u32, args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    Command::new(BIN).args(args).uid(uid).gid(gid).output().expect("spawn viewstats")
}

// ---------------------------------------------------------------------------------------------
// --serve, -f, and the terminal view (issue 16).

/// `viewstats --serve 127.0.0.1:0 ARGS` running; killed on drop (also on failure).
pub(crate) struct Serving {
    pub child: Option<std::process::Child>,
    pub addr: String,
    /// Kept so the reader thread keeps draining the pipe.
    pub _stderr: mpsc::Receiver<String>,
}

impl Serving {
    pub(crate) fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(BIN)
            .args(["--serve", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn viewstats --serve");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("watchdog: no `serving` line");
        // viewstats: serving http://127.0.0.1:PORT/metrics for NAME (...)
        let addr = line
            .strip_prefix("viewstats: serving http://")
            .and_then(|r| r.split_once("/metrics"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .0
            .to_owned();
        Self { child: Some(child), addr, _stderr: rx }
    }

    /// Sends `sig`, waits (under a watchdog) and returns the exit status.
    pub(crate) fn stop(mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("watchdog: viewstats --serve ignored {sig:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP exchange: sends `request` as is, reads to EOF (watchdog 60 s); status, head, body.
pub(crate) fn http(addr: &str, request: &[u8]) -> (u16, String, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("watchdog: the answer never ended");
    let t = text(&buf);
    let (head, body) = t.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {t:?}"));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status");
    (status, head.to_owned(), body.to_owned())
}

pub(crate) fn get(addr: &str, path: &str) -> (u16, String, String) {
    http(addr, format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n").as_bytes())
}

/// GET /metrics: 200 and the Prometheus content type; the body.
pub(crate) fn scrape_text(addr: &str) -> String {
    let (status, head, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    body
}

/// [`scrape_text`], and the body read by the real parser (`None` if it is not installed).
pub(crate) fn scrape(addr: &str) -> (String, Option<Value>) {
    let body = scrape_text(addr);
    let parsed = parse_prometheus(&body);
    (body, parsed)
}

/// The value of a sample without labels, from the text (for when the parser is not installed).
pub(crate) fn plain_sample(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
}

/// The real io_conn binary, next to viewstats (`cargo build --workspace --bins` builds it;
/// `SHMSRV_IO_CONN_BIN` overrides).
pub(crate) fn io_conn_bin() -> std::path::PathBuf {
    let p = std::env::var_os("SHMSRV_IO_CONN_BIN")
        .map_or_else(|| std::path::Path::new(BIN).with_file_name("io_conn"), Into::into);
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p io_conn; scripts/test.sh does)",
        p.display()
    );
    p
}

/// A real io_conn (no md) on loopback port 0 with its own name and runtime dir; killed on drop.
pub(crate) struct IoConn {
    pub child: Option<std::process::Child>,
}

impl IoConn {
    pub(crate) fn start(config: &std::path::Path) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(io_conn_bin())
            .arg("--config")
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn io_conn");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let sut = Self { child: Some(child) };
        loop {
            let l = rx.recv_timeout(Duration::from_secs(60)).expect("watchdog: io_conn not ready");
            if l == "ready" {
                return sut;
            }
        }
    }

    pub(crate) fn stop(mut self) {
        let mut c = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(c.wait());
        });
        let st = rx.recv_timeout(Duration::from_secs(60)).expect("watchdog: io_conn hung");
        assert!(st.unwrap().success());
    }
}

impl Drop for IoConn {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
