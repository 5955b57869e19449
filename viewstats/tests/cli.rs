//! viewstats against a stats segment the test creates and fills (no io_conn needed): the table,
//! JSON values checked exactly, Prometheus output through a real parser, a missing segment,
//! `--wait`, restart and slot-reuse detection, and the live view in a real terminal (tmux).

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use shmq::layout::Direction;
use shmq::region::Backend;
use shmq::stats::{COMMAND_SLOTS, Io, Md, MdState, QueueProducer, StatsReader, StatsSegment};
use shmq::sys::ProcId;

const BIN: &str = env!("CARGO_BIN_EXE_viewstats");

fn unique(test: &str) -> String {
    format!("vs{}-{test}", std::process::id())
}

/// A stats segment standing in for io_conn; removed on drop (also on failure).
struct Server {
    name: String,
    seg: Option<StatsSegment>,
}

impl Server {
    fn new(name: &str, epoch: u64) -> Self {
        let _ = StatsSegment::remove(Backend::Posix, name);
        let seg = StatsSegment::create(Backend::Posix, name, 4, epoch).expect("create segment");
        Self { name: name.to_owned(), seg: Some(seg) }
    }
    fn seg(&self) -> &StatsSegment {
        self.seg.as_ref().expect("segment")
    }
    /// Known values: io 5 accepted, 2 current, 1234 bytes in; md slot 1 running with 10 in / 9
    /// out, commands `dumb.ping` 10, `dumb.wait` 0 and 1 without a name; its input queue: 10
    /// frames, waits 500, 500, 500, 5000 ns.
    fn fill(&self) {
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

fn run(args: &[&str]) -> Output {
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn one_shot_table() {
    let name = unique("table");
    let srv = Server::new(&name, 31);
    srv.fill();
    let o = run(&["-1", "--name", &name]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    let row = |k: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(k))
            .unwrap_or_else(|| panic!("no row {k} in\n{out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let r = row("io.connections_accepted");
    assert_eq!(r[1], "5");
    assert!(r[2].parse::<f64>().unwrap() > 0.0, "a rate since start: {r:?}");
    assert_eq!(r[3..].join(" "), "Client connections accepted");
    assert_eq!(row("io.connections_current")[2], "-", "gauges have no rate");
    assert_eq!(row("md.1.messages_in")[1], "10");
    // No config with groups: the slot serves every service.
    assert_eq!(row("md.1.group")[1..3], ["-".to_owned(), "-".to_owned()]);
    assert!(row("md.1.group").join(" ").contains("none configured, serves every service"));
    assert_eq!(row("md.1.state")[1..3], ["2".to_owned(), "-".to_owned()]);
    assert!(row("md.1.state").contains(&"running".to_owned()));
    assert_eq!(row("in.1.producer.frames")[1], "10");
    // Command slots under the names the md registered; unused slots are not listed.
    let r = row("md.1.commands.dumb.ping");
    assert_eq!(r[1], "10");
    assert_eq!(r[3..].join(" "), "Requests of this command, as counted by the md's service");
    assert_eq!(row("md.1.commands.dumb.wait")[1], "0");
    assert_eq!(row("md.1.commands.other")[1], "1");
    assert!(!out.contains("md.1.commands.#"), "unnamed slots are hidden:\n{out}");
    let w = row("in.1.consumer.wait_ns");
    assert_eq!(w[1], "4");
    assert!(w.iter().any(|x| x == "p50<=511ns"), "{w:?}");
    assert!(!out.contains("md.0."), "unused slots are hidden:\n{out}");
    assert!(out.contains(&format!("/dev/shm/{name}.stats")));

    // The same through the server's config file, and with --all every slot shows.
    let dir = std::env::temp_dir().join(format!("{name}-cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("shmsrv.toml");
    std::fs::write(&cfg, format!("[shared]\nname = \"{name}\"\n")).unwrap();
    let o = run(&["-1", "--all", "--config", cfg.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    assert!(out.lines().any(|l| l.starts_with("md.0.pid ")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("md.3.pid ")), "{out}");
}

#[test]
fn json_values_are_exact() {
    let name = unique("json");
    let srv = Server::new(&name, 32);
    srv.fill();
    let o = run(&["--json", "--name", &name]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["name"], name.as_str());
    assert_eq!(v["epoch"], 32);
    assert_eq!(v["creator_pid"], std::process::id());
    assert_eq!(v["creator_running"], true);
    assert_eq!(v["md_slots"], 4);
    let io = &v["sections"]["io"][0]["values"];
    assert_eq!(io["connections_accepted"], 5);
    assert_eq!(io["connections_current"], 2);
    assert_eq!(io["bytes_in"], 1234);
    assert_eq!(io["closed_idle"], 0);
    let md = v["sections"]["md"].as_array().unwrap();
    assert_eq!(md.len(), 1, "only slot 1 is in use");
    assert_eq!(md[0]["instance"], 1);
    assert_eq!(md[0]["consistent"], true);
    assert_eq!(md[0]["state_name"], "running");
    assert_eq!(md[0]["group"], Value::Null);
    assert_eq!(md[0]["group_label"], "all");
    assert_eq!(v["groups_configured"], false);
    assert_eq!(md[0]["values"]["pid"], std::process::id());
    assert_eq!(md[0]["values"]["messages_in"], 10);
    assert_eq!(md[0]["values"]["messages_out"], 9);
    assert_eq!(md[0]["values"]["commands.dumb.ping"], 10);
    assert_eq!(md[0]["values"]["commands.dumb.wait"], 0);
    assert_eq!(md[0]["values"]["commands.other"], 1);
    // Every value shown is described.
    for (sec, blocks) in v["sections"].as_object().unwrap() {
        for b in blocks.as_array().unwrap() {
            for (n, _) in b["values"].as_object().unwrap() {
                let d = &v["counters"][sec][n];
                assert!(d["help"].as_str().is_some_and(|h| !h.is_empty()), "{sec}.{n}: {d}");
            }
        }
    }
    let d = &v["counters"]["md"]["commands.dumb.ping"];
    assert_eq!((d["kind"].as_str(), d["unit"].as_str()), (Some("counter"), Some("requests")));
    assert_eq!(v["counters"]["in.consumer"]["wait_ns"]["kind"], "histogram");
    assert_eq!(md[0]["values"]["busy_ns"], 2_500_000_000u64);
    assert_eq!(md[0]["values"]["epoch"], 32);
    let inq = &v["sections"]["in.consumer"][0];
    assert_eq!(inq["instance"], 1);
    let h = &inq["histograms"]["wait_ns"];
    assert_eq!((h["count"].as_u64(), h["sum"].as_u64()), (Some(4), Some(6500)));
    assert_eq!((h["p50"].as_u64(), h["p99"].as_u64()), (Some(511), Some(6143)));
    assert_eq!(h["buckets"], serde_json::json!([[511, 3], [6143, 1]]));
    assert_eq!(v["sections"]["in.producer"][0]["values"]["frames"], 10);
}

/// Parses Prometheus text with the `prometheus_client` package; `None` if it is not installed.
fn parse_prometheus(text: &str) -> Option<Value> {
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

fn text_owned(b: &[u8]) -> String {
    text(b)
}

fn sample<'a>(fams: &'a Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> &'a Value {
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

#[test]
fn prometheus_output_parses() {
    let name = unique("prom");
    let srv = Server::new(&name, 33);
    srv.fill();
    let o = run(&["--prometheus", "--name", &name]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    assert!(out.contains("# TYPE shmsrv_io_connections_accepted_total counter\n"), "{out}");
    assert!(out.contains("# TYPE shmsrv_start_time_seconds gauge\n"));
    assert!(
        out.contains("shmsrv_md_commands_total{slot=\"1\",command=\"dumb.ping\"} 10\n"),
        "{out}"
    );
    let Some(f) = parse_prometheus(&out) else { return };
    assert_eq!(f["shmsrv_io_connections_accepted"]["type"], "counter");
    assert_eq!(f["shmsrv_io_connections_accepted"]["help"], "Client connections accepted");
    assert_eq!(
        *sample(&f, "shmsrv_io_connections_accepted", "shmsrv_io_connections_accepted_total", &[]),
        5.0
    );
    assert_eq!(f["shmsrv_io_connections_current"]["type"], "gauge");
    assert_eq!(
        *sample(&f, "shmsrv_io_connections_current", "shmsrv_io_connections_current", &[]),
        2.0
    );
    assert_eq!(f["shmsrv_start_time_seconds"]["type"], "gauge");
    let start = sample(&f, "shmsrv_start_time_seconds", "shmsrv_start_time_seconds", &[]);
    assert!(start.as_f64().unwrap() > 1.6e9);
    assert_eq!(*sample(&f, "shmsrv_up", "shmsrv_up", &[]), 1.0);
    let slot1 = [("slot", "1")];
    assert_eq!(*sample(&f, "shmsrv_md_messages_in", "shmsrv_md_messages_in_total", &slot1), 10.0);
    assert_eq!(*sample(&f, "shmsrv_md_busy_seconds", "shmsrv_md_busy_seconds_total", &slot1), 2.5);
    assert_eq!(f["shmsrv_md_start_time_seconds"]["type"], "gauge");
    // Commands: one family, the registered name as a label.
    let cmd = |c: &str| {
        sample(
            &f,
            "shmsrv_md_commands",
            "shmsrv_md_commands_total",
            &[("slot", "1"), ("command", c)],
        )
        .clone()
    };
    assert_eq!(cmd("dumb.ping"), 10.0);
    assert_eq!(cmd("dumb.wait"), 0.0);
    assert_eq!(cmd("other"), 1.0);
    assert_eq!(f["shmsrv_md_commands"]["type"], "counter");
    let q = [("slot", "1"), ("queue", "in")];
    assert_eq!(
        *sample(&f, "shmsrv_queue_producer_frames", "shmsrv_queue_producer_frames_total", &q),
        10.0
    );
    let h = "shmsrv_queue_consumer_wait_seconds";
    assert_eq!(f[h]["type"], "histogram");
    assert_eq!(*sample(&f, h, &format!("{h}_count"), &q), 4.0);
    assert_eq!(*sample(&f, h, &format!("{h}_sum"), &q), 6.5e-6);
    assert!(
        out.contains("shmsrv_queue_consumer_wait_seconds_sum{slot=\"1\",queue=\"in\"} 0.0000065\n")
    );
    let le = |b: &str| {
        *sample(&f, h, &format!("{h}_bucket"), &[("slot", "1"), ("queue", "in"), ("le", b)]) == 4.0
    };
    assert!(le("+Inf"));
    assert!(le("0.000006143"), "cumulative bucket at 6143 ns");
}

#[test]
fn missing_segment_says_no_server_and_fails() {
    let name = unique("missing");
    let o = run(&["-1", "--name", &name]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(
        text(&o.stderr).trim(),
        format!("viewstats: no server running under {name} (no segment /dev/shm/{name}.stats)")
    );
}

#[test]
fn wait_picks_up_a_segment_created_later() {
    let name = unique("wait");
    let _ = StatsSegment::remove(Backend::Posix, &name);
    let child = Command::new(BIN)
        .args(["--json", "--wait", "60", "--name", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it find nothing at least once (not required for correctness: either order passes).
    std::thread::sleep(Duration::from_millis(300));
    let srv = Server::new(&name, 34);
    srv.fill();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let o = rx.recv_timeout(Duration::from_secs(90)).expect("watchdog").unwrap();
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["epoch"], 34);
    assert_eq!(v["sections"]["io"][0]["values"]["connections_accepted"], 5);
    drop(srv);
}

fn rates_are_never_negative(screen: &str) {
    for w in screen.split_whitespace() {
        if let Ok(x) = w.parse::<f64>() {
            assert!(x >= 0.0, "negative number {w} in\n{screen}");
        }
    }
}

#[test]
fn watch_resets_rate_baselines_on_restart_and_slot_reuse() {
    let name = unique("restart");
    let srv = Server::new(&name, 41);
    srv.fill();
    let t = viewstats::Target {
        name: name.clone(),
        backend: Backend::Posix,
        interval: Duration::from_millis(100),
        groups: Vec::new(),
        filter: viewstats::Filter::default(),
    };
    let reader = StatsReader::attach(Backend::Posix, &name).unwrap();
    let mut w = viewstats::Watch::new(t, reader, false);
    let first = w.frame();
    assert!(!first.contains('\x1b'), "plain text, no escape codes: {first}");
    assert!(first.contains("epoch 41"));
    let io = srv.seg().io();
    io.add(Io::ConnectionsAccepted, 1000);
    std::thread::sleep(Duration::from_millis(20));
    let second = w.frame();
    let row = |s: &str, k: &str| {
        s.lines()
            .find(|l| l.split_whitespace().next() == Some(k))
            .unwrap_or_else(|| panic!("no row {k} in\n{s}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let r = row(&second, "connections_accepted");
    assert_eq!(r[1], "1005");
    assert_eq!(row(&second, "md.1.commands.dumb.ping")[1], "10");
    assert_eq!(row(&second, "md.1.commands.other")[1], "1");
    assert!(r[2].parse::<f64>().unwrap() > 0.0, "{r:?}");

    // The md in slot 1 is replaced by a new process with smaller counters: no negative rate.
    let md = srv.seg().attach_writer_md(1, ProcId { pid: 999_999, start_time: 1 }).unwrap();
    md.set_state(MdState::Running);
    md.add(Md::MessagesIn, 3);
    let third = w.frame();
    let m = third.lines().find(|l| l.starts_with("1 ")).unwrap_or_else(|| panic!("{third}"));
    let cols: Vec<&str> = m.split_whitespace().collect();
    assert_eq!((cols[2], cols[3], cols[4]), ("999999", "3", "-"), "{m}");
    rates_are_never_negative(&third);

    // io_conn restarts: a new segment under the same name, new epoch, counters from zero.
    drop(io);
    drop(md);
    drop(srv);
    let srv2 = Server::new(&name, 42);
    srv2.seg().io().add(Io::ConnectionsAccepted, 1);
    let fourth = w.frame();
    assert!(fourth.contains("server restarted (epoch 41 -> 42): rates reset"), "{fourth}");
    let r = row(&fourth, "connections_accepted");
    assert_eq!((r[1].as_str(), r[2].as_str()), ("1", "-"));
    rates_are_never_negative(&fourth);
    let fifth = w.frame();
    assert!(row(&fifth, "connections_accepted")[2].parse::<f64>().unwrap() >= 0.0);
}

/// `viewstats ARGS` in a detached tmux pane of `cols`×`rows`, read with capture-pane; the
/// session is killed on drop. `None` (and a loud note) if tmux is not installed.
struct Pane {
    session: String,
    /// Where the pane's shell writes viewstats' exit status.
    status: std::path::PathBuf,
}

impl Pane {
    fn start(session: &str, cols: u32, rows: u32, args: &str) -> Option<Self> {
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

    fn capture(&self) -> String {
        let o = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        text(&o.stdout)
    }

    /// The screen once `what` holds (watchdog 30 s; `label` says what was awaited).
    fn until(&self, label: &str, what: &dyn Fn(&str) -> bool) -> String {
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

    fn keys(&self, keys: &[&str]) {
        let st = Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The pid of viewstats: the only child of the pane's shell.
    fn pid(&self) -> i32 {
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
    fn wait_exit(&self, why: &str) -> (i32, String) {
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
fn fill_like_io_conn(srv: &Server) {
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
fn lines_starting<'a>(screen: &'a str, prefix: &str) -> Vec<&'a str> {
    screen.lines().filter(|l| l.trim_start().starts_with(prefix)).collect()
}

/// The live view in a real terminal, 160×50 (issue 16: the io section scrolled off the top,
/// absent md slots and their queues were drawn): `viewstats --watch` in tmux.
#[test]
fn live_view_fits_a_160x50_terminal() {
    let name = unique("tmux");
    let srv = Server::new(&name, 51);
    fill_like_io_conn(&srv);
    let args = format!("--watch --interval 0.1 --name {name}");
    let Some(pane) = Pane::start(&name, 160, 50, &args) else { return };
    let s = pane.until("the io and md sections", &|s| {
        s.contains("connections_accepted") && s.contains("total")
    });
    let lines: Vec<&str> = s.lines().collect();
    assert!(lines[0].contains("epoch 51") && lines[0].contains("running"), "{s}");
    // The summary, then the io section at the top of the body, whole.
    assert!(lines[1].starts_with("connections 2 open, 5 accepted"), "{s}");
    assert!(s.contains("load   md1 running"), "per-md load of the live md only: {s}");
    assert!(!s.contains("md2 exited"), "{s}");
    let io = lines.iter().position(|l| l.starts_with("io_conn ")).expect("io section header");
    assert!(io < 10, "the io section starts at the top:\n{s}");
    for c in ["connections_current", "closed_by_peer", "bytes_in", "connections_refused_per_ip"] {
        assert!(s.contains(c), "io counter {c} is visible:\n{s}");
    }
    // md rows: the running slot and the one that exited; never-used slots 0 and 3 are hidden.
    assert!(lines.iter().any(|l| l.starts_with("1 ") && l.contains("running")), "{s}");
    assert!(lines.iter().any(|l| l.starts_with("2 ") && l.contains("exited")), "{s}");
    assert!(!lines.iter().any(|l| l.starts_with("0 ") || l.starts_with("3 ")), "{s}");
    // Queue rows for the live md only, and all of them visible.
    let queues: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.ends_with(".producer") || w.ends_with(".consumer"))
        .collect();
    assert_eq!(
        queues,
        ["in.1.producer", "in.1.consumer", "out.1.producer", "out.1.consumer"],
        "{s}"
    );
    // The counters move on screen, and the rate history is drawn.
    srv.seg().io().add(Io::ConnectionsAccepted, 77_772);
    srv.seg().io().add(Io::MessagesIn, 50_000);
    let s = pane.until("connections_accepted 77777", &|s| {
        s.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"connections_accepted") && w.get(1) == Some(&"77777")
        })
    });
    assert!(!s.contains("NOT RUNNING"), "{s}");
    let spark = lines_starting(&s, "req/s in");
    assert_eq!(spark.len(), 1, "{s}");
    assert!(spark[0].chars().any(|c| ('▁'..='█').contains(&c)), "a sparkline bar: {s}");
    // SIGTERM ends it cleanly: exit 0 and the terminal restored (the alternate screen left).
    let pid = nix::unistd::Pid::from_raw(pane.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let (code, s) = pane.wait_exit("the end after SIGTERM");
    assert_eq!(code, 0, "handled, not killed by the signal: {s}");
    assert!(!s.contains("connections_accepted"), "the view is gone: {s}");
}

/// The live view in an 80×24 terminal: the summary fits, the rest is reached by keys.
#[test]
fn live_view_scrolls_in_an_80x24_terminal() {
    let name = unique("tmux80");
    let srv = Server::new(&name, 52);
    fill_like_io_conn(&srv);
    let args = format!("--watch --interval 0.2 --name {name}");
    let Some(pane) = Pane::start(&name, 80, 24, &args) else { return };
    let s = pane.until("connections_current", &|s| s.contains("connections_current"));
    assert!(s.lines().count() <= 24);
    for l in s.lines() {
        assert!(l.chars().count() <= 80, "fits the width: {l:?}");
    }
    assert!(s.contains("connections 2 open, 5 accepted"), "{s}");
    assert!(s.contains("requests/s in"), "{s}");
    assert!(s.contains("errors 0"), "{s}");
    assert!(s.contains("instances 1 live md, 1 exited or dead, of 4 slots"), "{s}");
    assert!(s.contains("load   md1 running"), "{s}");
    assert!(s.contains("lines 1-"), "{s}");
    // The end of the io section is below the fold; PageDown scrolls a page: the first rows go,
    // rows that were below come up.
    assert!(!s.contains("connections_refused_per_ip"), "{s}");
    let io_rows = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with("io_conn"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let before = io_rows(&s);
    pane.keys(&["PageDown"]);
    let s = pane.until("the next page", &|s| !s.contains("connections_current"));
    let new: Vec<String> = io_rows(&s).into_iter().filter(|r| !before.contains(r)).collect();
    assert!(!new.is_empty(), "rows from below the fold:\n{s}");
    assert!(!s.contains(" lines 1-"), "{s}");
    // `1` shows the io section alone, End goes to its end.
    pane.keys(&["1"]);
    pane.until("the io section from its top", &|s| s.contains("connections_current"));
    pane.keys(&["End"]);
    let s = pane.until("connections_refused_per_ip", &|s| s.contains("connections_refused_per_ip"));
    assert!(!s.contains("connections_current"), "{s}");
    // Home goes back; `4` shows the queue section alone, Tab wraps to all.
    pane.keys(&["Home"]);
    pane.until("connections_current", &|s| s.contains("connections_current"));
    pane.keys(&["4"]);
    let s = pane.until("in.1.producer", &|s| s.contains("in.1.producer"));
    assert!(!s.contains("connections_current"), "{s}");
    assert!(!s.contains("in.0.") && !s.contains("in.2."), "live md only: {s}");
    pane.keys(&["Tab"]);
    pane.until("connections_current", &|s| s.contains("connections_current"));
    pane.keys(&["q"]);
    let (code, s) = pane.wait_exit("the end after q");
    assert_eq!(code, 0, "{s}");
    assert!(!s.contains("connections_current"), "the terminal is restored: {s}");
}

/// Each md slot's service group, from the config given with --config: table, JSON, Prometheus
/// and the live view; and the room in the live view's md rows for dispatch load.
#[test]
fn groups_come_from_the_config() {
    let name = unique("groups");
    let srv = Server::new(&name, 33);
    srv.fill();
    let dir = std::env::temp_dir().join(format!("{name}-cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("shmsrv.toml");
    std::fs::write(
        &cfg,
        format!(
            "[shared]\nname = \"{name}\"\n[md]\nmax_instances = 4\n\
             [[md.group]]\nservices = [\"dumb\", \"echo\", \"http\", \"kv\", \"reverse\"]\ninstances = \"0-1\"\n\
             [[md.group]]\nservices = [\"upper\"]\ninstances = [2]\nbinary = \"/opt/upper\"\n"
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();

    let o = run(&["-1", "--all", "--config", &cfg]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    let row = |k: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(k))
            .unwrap_or_else(|| panic!("no row {k} in\n{out}"))
            .to_owned()
    };
    assert!(
        row("md.1.group").ends_with(
            "Service group md.group[0]: dumb,echo,http,kv,reverse (the md binary; from the config)"
        ),
        "{out}"
    );
    assert_eq!(row("md.1.group").split_whitespace().nth(1), Some("0"));
    assert!(row("md.2.group").contains("md.group[1]: upper (/opt/upper;"), "{out}");
    assert!(row("md.3.group").contains("in no [[md.group]], serves nothing"), "{out}");

    let o = run(&["--json", "--config", &cfg]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["groups_configured"], true);
    let md = &v["sections"]["md"][0];
    assert_eq!(md["instance"], 1);
    assert_eq!(
        md["group"],
        serde_json::json!({"index": 0, "services": ["dumb", "echo", "http", "kv", "reverse"], "binary": ""})
    );
    assert_eq!(md["group_label"], "0:dumb,echo,http,kv,reverse");

    let o = run(&["--prometheus", "--config", &cfg]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    assert!(
        out.lines().any(|l| l
            == "shmsrv_md_group_info{slot=\"1\",group=\"0\",services=\"dumb,echo,http,kv,reverse\"} 1"),
        "{out}"
    );
    if let Some(f) = parse_prometheus(&out) {
        assert!(f.get("shmsrv_md_group_info").is_some(), "{f}");
    }

    // The live view: the md row ends with the in-flight gauge (0), the dispatch rate (`-` on the
    // first frame: no rate yet) and the group.
    let args = viewstats::Args::parse_from(["viewstats", "--config", &cfg, "--all"]);
    let t = viewstats::resolve(&args).unwrap();
    assert_eq!(t.group_label(2), "1:upper");
    let reader = StatsReader::attach(Backend::Posix, &name).unwrap();
    let mut w = viewstats::Watch::new(t, reader, true);
    let screen = w.frame();
    let _ = std::fs::remove_dir_all(&dir);
    let header =
        screen.lines().find(|l| l.starts_with("md ")).unwrap_or_else(|| panic!("{screen}"));
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(cols[cols.len() - 3..], ["INFLIGHT", "DISP/S", "GROUP"], "{header}");
    let m = screen.lines().find(|l| l.starts_with("1 ")).unwrap_or_else(|| panic!("{screen}"));
    let cols: Vec<&str> = m.split_whitespace().collect();
    assert_eq!(cols[cols.len() - 3..], ["0", "-", "0:dumb,echo,http,kv,reverse"], "{m}");
    let m = screen.lines().find(|l| l.starts_with("3 ")).unwrap_or_else(|| panic!("{screen}"));
    assert!(m.ends_with(" -"), "slot 3 is in no group: {m}");
    drop(srv);
}

/// Runs viewstats as `uid` with primary group `gid` (and no other groups), as an operator would.
fn run_as(uid: u32, gid: u32, args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    Command::new(BIN).args(args).uid(uid).gid(gid).output().expect("spawn viewstats")
}

/// Issue 14, finding 5: the stats segment is 0640, so a member of the segment's group (the
/// server's, `shmsrv` under systemd) reads it with viewstats; anyone else is refused with a hint
/// to join the group. Run as root: the segment's group is set with chown to a test gid, and
/// viewstats runs as uid 65534 with that gid (or without it).
#[test]
fn issue_14_group_member_reads_the_stats_segment() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run viewstats as another user");
        return;
    }
    let name = unique("i14group");
    let sut = Server::new(&name, 14);
    sut.fill();
    let path = format!("/dev/shm/{name}.stats");
    let gid = 4242;
    std::os::unix::fs::chown(&path, None, Some(gid)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
    let o = run_as(65534, gid, &["--json", "--name", &name]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["epoch"], 14, "{v}");

    let o = run_as(65534, 65534, &["--json", "--name", &name]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("permission denied") && err.contains("usermod -aG shmsrv"), "{err}");
}

/// Issue 14, finding 8: viewstats refuses a stats segment owned by a uid that is neither its
/// own, root's nor the server user's (forged stats), naming the owner.
#[test]
fn issue_14_foreign_owned_stats_segment_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to give the segment to another uid");
        return;
    }
    let name = unique("i14owner");
    let sut = Server::new(&name, 15);
    sut.fill();
    std::os::unix::fs::chown(format!("/dev/shm/{name}.stats"), Some(65533), None).unwrap();
    let o = run(&["-1", "--name", &name]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("is owned by uid 65533, not by us or the server user shmsrv"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// --serve, -f, and the terminal view (issue 16).

/// `viewstats --serve 127.0.0.1:0 ARGS` running; killed on drop (also on failure).
struct Serving {
    child: Option<std::process::Child>,
    addr: String,
    /// Kept so the reader thread keeps draining the pipe.
    _stderr: mpsc::Receiver<String>,
}

impl Serving {
    fn start(args: &[&str]) -> Self {
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
    fn stop(mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
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
fn http(addr: &str, request: &[u8]) -> (u16, String, String) {
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

fn get(addr: &str, path: &str) -> (u16, String, String) {
    http(addr, format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n").as_bytes())
}

/// GET /metrics: 200 and the Prometheus content type; the body.
fn scrape_text(addr: &str) -> String {
    let (status, head, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    body
}

/// [`scrape_text`], and the body read by the real parser (`None` if it is not installed).
fn scrape(addr: &str) -> (String, Option<Value>) {
    let body = scrape_text(addr);
    let parsed = parse_prometheus(&body);
    (body, parsed)
}

/// The value of a sample without labels, from the text (for when the parser is not installed).
fn plain_sample(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
}

#[test]
fn serve_says_up_0_without_a_server_and_follows_restarts() {
    let name = unique("serve");
    let _ = StatsSegment::remove(Backend::Posix, &name);
    let sut = Serving::start(&["--name", &name]);

    // No server: 200, shmsrv_up 0 and why, nothing else.
    let (body, f) = scrape(&sut.addr);
    assert_eq!(plain_sample(&body, "shmsrv_up"), Some(0.0), "{body}");
    assert!(body.starts_with(&format!("# viewstats: no server running under {name}")), "{body}");
    assert!(!body.contains("shmsrv_epoch"), "{body}");
    if let Some(f) = f {
        assert_eq!(*sample(&f, "shmsrv_up", "shmsrv_up", &[]), 0.0);
        assert_eq!(f.as_object().unwrap().len(), 1, "only shmsrv_up: {f}");
    }

    // A server: every counter, up 1, its epoch.
    let srv = Server::new(&name, 61);
    srv.fill();
    let (body, f) = scrape(&sut.addr);
    assert_eq!(plain_sample(&body, "shmsrv_up"), Some(1.0), "{body}");
    assert_eq!(plain_sample(&body, "shmsrv_epoch"), Some(61.0), "{body}");
    if let Some(f) = f {
        assert_eq!(f["shmsrv_epoch"]["type"], "gauge");
        assert_eq!(*sample(&f, "shmsrv_up", "shmsrv_up", &[]), 1.0);
        let acc = "shmsrv_io_connections_accepted";
        assert_eq!(*sample(&f, acc, &format!("{acc}_total"), &[]), 5.0);
        let slot1 = [("slot", "1")];
        let mi = "shmsrv_md_messages_in";
        assert_eq!(*sample(&f, mi, &format!("{mi}_total"), &slot1), 10.0);
    }
    // Each scrape reads the segment anew.
    srv.seg().io().add(Io::ConnectionsAccepted, 10);
    let body = scrape_text(&sut.addr);
    assert_eq!(plain_sample(&body, "shmsrv_io_connections_accepted_total"), Some(15.0));

    // io_conn restarts: a new segment under the same name, a new epoch, counters from zero.
    drop(srv);
    let body = scrape_text(&sut.addr);
    assert_eq!(plain_sample(&body, "shmsrv_up"), Some(0.0), "between the two: {body}");
    let srv2 = Server::new(&name, 62);
    srv2.seg().io().add(Io::ConnectionsAccepted, 1);
    let body = scrape_text(&sut.addr);
    assert_eq!(plain_sample(&body, "shmsrv_epoch"), Some(62.0), "{body}");
    assert_eq!(plain_sample(&body, "shmsrv_io_connections_accepted_total"), Some(1.0));

    // The other routes.
    let (status, head, body) = get(&sut.addr, "/");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Type: text/html"), "{head}");
    assert!(body.contains("href=\"/metrics\"") && body.contains(&name), "{body}");
    let (status, _, body) = get(&sut.addr, "/metrics?x=1");
    assert_eq!(status, 200, "a query string is ignored");
    assert!(body.contains("shmsrv_up 1"));
    assert_eq!(get(&sut.addr, "/nope").0, 404);
    assert_eq!(get(&sut.addr, "/metrics/x").0, 404);
    let (status, head, _) = http(&sut.addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    let (status, head, body) = http(&sut.addr, b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body.is_empty(), "HEAD has no body: {body:?}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    assert!(len > 100, "the length GET would send: {head}");
    assert_eq!(http(&sut.addr, b"\x00\x01garbage\r\n\r\n").0, 400);

    let st = sut.stop(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(st.code(), Some(0), "SIGTERM is a clean exit");
    drop(srv2);
}

#[test]
fn serve_is_not_held_by_slow_or_hostile_scrapers() {
    use std::io::Write;
    let name = unique("slow");
    let srv = Server::new(&name, 63);
    srv.fill();
    let sut = Serving::start(&["--name", &name]);
    // A scraper that starts a request and never finishes it...
    let mut slow = std::net::TcpStream::connect(&sut.addr).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    // ...and one that connects and sends nothing at all.
    let silent = std::net::TcpStream::connect(&sut.addr).unwrap();
    // A well-behaved scrape behind them is answered (once their deadline has passed).
    let body = scrape_text(&sut.addr);
    assert_eq!(plain_sample(&body, "shmsrv_up"), Some(1.0));
    // The slow one was cut off with a 408.
    slow.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).expect("watchdog: the slow scraper was never cut off");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    drop(silent);
    // A request head above 8 KiB: 431, and the server goes on.
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for i in 0..20 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "x".repeat(500)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    assert_eq!(http(&sut.addr, &big).0, 431);
    // Many connections opened and dropped at once, then a scrape.
    let burst: Vec<_> = (0..50).map(|_| std::net::TcpStream::connect(&sut.addr).unwrap()).collect();
    drop(burst);
    assert_eq!(plain_sample(&scrape_text(&sut.addr), "shmsrv_epoch"), Some(63.0));
    let st = sut.stop(nix::sys::signal::Signal::SIGINT);
    assert_eq!(st.code(), Some(0), "SIGINT is a clean exit");
}

/// The real io_conn binary, next to viewstats (`cargo build --workspace --bins` builds it;
/// `SHMSRV_IO_CONN_BIN` overrides).
fn io_conn_bin() -> std::path::PathBuf {
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
struct IoConn {
    child: Option<std::process::Child>,
}

impl IoConn {
    fn start(config: &std::path::Path) -> Self {
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

    fn stop(mut self) {
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

/// The issue's scrape, end to end: `viewstats --serve` in front of a real io_conn that stops
/// and starts again; `shmsrv_up` follows it and `shmsrv_epoch` changes.
#[test]
fn serve_follows_a_real_io_conn_restart() {
    let name = unique("realio");
    let dir = std::env::temp_dir().join(format!("{name}-dir"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("run")).unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let cfg = dir.join("shmsrv.toml");
    std::fs::write(
        &cfg,
        format!(
            "[shared]\nname = \"{name}\"\nruntime_dir = \"{}\"\nqueue_size = \"1MiB\"\n\
             [[io_conn.listener]]\naddress = \"127.0.0.1:0\"\nservice = \"echo\"\n\
             [md]\nmax_instances = 2\n",
            dir.join("run").display()
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let sut = Serving::start(&["--config", cfg_s]);
    let body = scrape_text(&sut.addr);
    assert_eq!(plain_sample(&body, "shmsrv_up"), Some(0.0), "before io_conn: {body}");

    let io = IoConn::start(&cfg);
    let (body, f) = scrape(&sut.addr);
    assert_eq!(plain_sample(&body, "shmsrv_up"), Some(1.0), "{body}");
    let e1 = plain_sample(&body, "shmsrv_epoch").expect("an epoch");
    if let Some(f) = f {
        assert_eq!(f["shmsrv_epoch"]["type"], "gauge");
        assert_eq!(f["shmsrv_io_connections_accepted"]["type"], "counter");
    }
    io.stop();
    let body = scrape_text(&sut.addr);
    assert_eq!(plain_sample(&body, "shmsrv_up"), Some(0.0), "io_conn stopped: {body}");

    let io = IoConn::start(&cfg);
    let body = scrape_text(&sut.addr);
    assert_eq!(plain_sample(&body, "shmsrv_up"), Some(1.0), "{body}");
    let e2 = plain_sample(&body, "shmsrv_epoch").expect("an epoch");
    assert_ne!(e1, e2, "a restarted io_conn has a new epoch");
    io.stop();
    assert_eq!(sut.stop(nix::sys::signal::Signal::SIGTERM).code(), Some(0));
}

/// `-f GLOB` in every mode: table, JSON, Prometheus, the plain-text watch and --serve; `^GLOB`
/// excludes; a bad pattern is a clear error.
#[test]
fn filter_applies_in_every_mode() {
    let name = unique("filter");
    let srv = Server::new(&name, 64);
    srv.fill();
    let f = ["-f", "io.conn*", "-f", "^io.connections_refused*", "-f", "md.*.commands.*"];
    let args = |mode: &[&'static str]| {
        let mut a: Vec<&str> = mode.to_vec();
        a.extend(["--name", name.as_str()]);
        a.extend(f);
        a
    };

    let o = run(&args(&["-1"]));
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    let keys: Vec<&str> = out.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(
        keys,
        [
            "io.connections_current",
            "io.connections_accepted",
            "md.1.commands.dumb.ping",
            "md.1.commands.dumb.wait",
            "md.1.commands.other"
        ],
        "{out}"
    );

    let o = run(&args(&["--json"]));
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let io = v["sections"]["io"][0]["values"].as_object().unwrap();
    assert_eq!(io.keys().collect::<Vec<_>>(), ["connections_accepted", "connections_current"]);
    assert_eq!(v["sections"]["md"][0]["values"]["commands.dumb.ping"], 10);
    assert!(v["sections"]["md"][0]["values"].get("messages_in").is_none(), "{v}");
    assert_eq!(v["sections"]["in.consumer"], serde_json::json!([]), "nothing left: no block");

    let o = run(&args(&["--prometheus"]));
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    let families: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
    assert_eq!(
        families,
        [
            "shmsrv_up gauge",
            "shmsrv_start_time_seconds gauge",
            "shmsrv_epoch gauge",
            "shmsrv_io_connections_current gauge",
            "shmsrv_io_connections_accepted_total counter",
            "shmsrv_md_commands_total counter"
        ],
        "{out}"
    );
    if let Some(p) = parse_prometheus(&out) {
        assert_eq!(
            *sample(&p, "shmsrv_io_connections_current", "shmsrv_io_connections_current", &[]),
            2.0
        );
    }

    // --watch, not on a terminal: plain text screens.
    let o = run(&args(&["--watch", "--count", "1"]));
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        rows,
        [
            "connections_current",
            "connections_accepted",
            "md.1.commands.dumb.ping",
            "md.1.commands.dumb.wait",
            "md.1.commands.other"
        ],
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("1 ") && l.contains("running")), "{out}");
    assert!(!out.contains("in.1.producer"), "no queue counter matches: {out}");
    let o = run(&["--watch", "--count", "1", "--name", &name, "-f", "in.1.*"]);
    let out = text(&o.stdout);
    assert!(out.contains("in.1.producer") && out.contains("in.1.consumer"), "{out}");
    assert!(!out.contains("out.1.producer"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("1 ")), "no md counter matches: {out}");

    // --serve.
    let sut = Serving::start(&args(&[]));
    let body = scrape_text(&sut.addr);
    assert_eq!(body, text(&run(&args(&["--prometheus"])).stdout), "one renderer");
    drop(sut);

    let o = run(&["-1", "--name", &name, "-f", "[io"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("-f \"[io\": not a glob"), "{}", text(&o.stderr));
}

/// Issue 16: io_conn writes every slot's queue halves, so "any non-zero value" showed every
/// slot; a slot is shown once an md used it (its md block), in the table, JSON and Prometheus.
#[test]
fn slots_no_md_ever_used_are_hidden_in_every_mode() {
    let name = unique("unused");
    let srv = Server::new(&name, 65);
    fill_like_io_conn(&srv);
    let o = run(&["-1", "--name", &name]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    for unused in ["md.0.", "md.3.", "in.0.", "out.3."] {
        assert!(!out.contains(unused), "{unused} in\n{out}");
    }
    assert!(out.contains("md.2.state") && out.contains("in.2.producer.generation"), "{out}");
    let o = run(&["--json", "--name", &name]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let slots = |sec: &str| -> Vec<u64> {
        v["sections"][sec]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["instance"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(slots("md"), [1, 2]);
    assert_eq!(slots("in.producer"), [1, 2]);
    let o = run(&["--prometheus", "--name", &name]);
    let out = text(&o.stdout);
    assert!(!out.contains("slot=\"0\"") && !out.contains("slot=\"3\""), "{out}");
    assert!(out.contains("shmsrv_queue_producer_generation{slot=\"2\",queue=\"in\"} 1"), "{out}");
    let o = run(&["--prometheus", "--all", "--name", &name]);
    assert!(text(&o.stdout).contains("slot=\"3\""), "--all shows them");
}

/// The library entry point another `/metrics` route uses: `Target::from_config` +
/// `metrics_text`, the same text as `viewstats --prometheus`, and `shmsrv_up 0` without a server.
#[test]
fn metrics_text_is_the_prometheus_text() {
    let name = unique("lib");
    let mut cfg = config::Config::default();
    cfg.shared.name = name.clone();
    cfg.shared.shm_backend = config::ShmBackend::Posix;
    let t = viewstats::Target::from_config(&cfg);
    assert_eq!((t.name.as_str(), t.backend), (name.as_str(), Backend::Posix));
    let _ = StatsSegment::remove(Backend::Posix, &name);
    let down = viewstats::metrics_text(&t);
    assert_eq!(plain_sample(&down, "shmsrv_up"), Some(0.0), "{down}");
    assert!(down.contains(&format!("no server running under {name}")), "{down}");
    let srv = Server::new(&name, 66);
    srv.fill();
    let up = viewstats::metrics_text(&t);
    assert_eq!(plain_sample(&up, "shmsrv_up"), Some(1.0), "{up}");
    assert_eq!(up, text(&run(&["--prometheus", "--name", &name]).stdout));
}
