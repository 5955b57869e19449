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
    };
    let reader = StatsReader::attach(Backend::Posix, &name).unwrap();
    let mut w = viewstats::Watch::new(t, reader, false);
    let first = w.frame();
    assert!(first.starts_with("\x1b[H\x1b[2J"));
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

/// The live view in a real terminal: `viewstats --watch` inside tmux, read with capture-pane.
#[test]
fn live_view_in_tmux() {
    if !Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "\n\n!!!!! SKIPPING live_view_in_tmux: tmux is not installed (apt-get install -y tmux) !!!!!\n"
        );
        return;
    }
    let name = unique("tmux");
    let srv = Server::new(&name, 51);
    srv.fill();
    let session = name.clone();
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).output();
        }
    }
    let cmd = format!("{BIN} --watch --interval 0.1 --name {name}");
    let st = Command::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "160", "-y", "70", &cmd])
        .status()
        .unwrap();
    assert!(st.success());
    let _k = Kill(session.clone());
    let capture = || {
        let o = Command::new("tmux").args(["capture-pane", "-p", "-t", &session]).output().unwrap();
        text(&o.stdout)
    };
    let until = |what: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = capture();
            if what(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "watchdog: the pane never showed it:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let s = until(&|s| s.contains("connections_accepted") && s.contains("total"));
    assert!(s.contains("epoch 51"), "{s}");
    assert!(s.lines().any(|l| l.starts_with("1 ") && l.contains("running")), "{s}");
    // The counters move on screen.
    srv.seg().io().add(Io::ConnectionsAccepted, 77_772);
    let s = until(&|s| {
        s.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"connections_accepted") && w.get(1) == Some(&"77777")
        })
    });
    assert!(!s.contains("NOT RUNNING"), "{s}");
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
             [[md.group]]\nservices = [\"dumb\", \"echo\", \"http\", \"reverse\"]\ninstances = \"0-1\"\n\
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
            "Service group md.group[0]: dumb,echo,http,reverse (the md binary; from the config)"
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
        serde_json::json!({"index": 0, "services": ["dumb", "echo", "http", "reverse"], "binary": ""})
    );
    assert_eq!(md["group_label"], "0:dumb,echo,http,reverse");

    let o = run(&["--prometheus", "--config", &cfg]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    assert!(
        out.lines().any(|l| l
            == "shmsrv_md_group_info{slot=\"1\",group=\"0\",services=\"dumb,echo,http,reverse\"} 1"),
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
    assert_eq!(cols[cols.len() - 3..], ["0", "-", "0:dumb,echo,http,reverse"], "{m}");
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
