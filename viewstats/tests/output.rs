//! viewstats' one-shot outputs against a stats segment the test creates and fills (no io_conn
//! needed): the table, JSON values checked exactly, Prometheus through a real parser, a missing
//! segment, `--wait`, service groups from the config, hidden slots and `-f GLOB`.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use shmq::region::Backend;
use shmq::stats::{StatsReader, StatsSegment};

mod util;
use util::*;

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
