//! Several instances on one machine (issue 13, item 2): two io_conn with their md children,
//! different `shared.name` and ports, started at once and sharing one runtime directory (as two
//! instances would share `/run/shmsrv` without systemd). Each serves its own clients from its
//! own kv cache; a reload, a takeover and a stop of one never touch the other's segments, FIFOs,
//! stats, control socket or handover socket. Once on each shared-memory backend.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Host, alive, connect, exchange, files_of, http_get, resp};
use crate::util::{WATCHDOG, io_conn_bin, listener, test_dir, unique_name, viewstats_bin};

/// The scratch directory of a test; removed on drop (declared first, so dropped last).
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config with `listeners` (TOML tables), 2 md slots and the given backend.
pub(crate) fn config_text(
    name: &str,
    runtime_dir: &Path,
    backend: &str,
    listeners: &str,
) -> String {
    format!(
        "[shared]\nname = \"{name}\"\nruntime_dir = \"{}\"\nqueue_size = \"1MiB\"\n\
         shm_backend = \"{backend}\"\n\n[io_conn]\ndrain_deadline = \"3s\"\n{listeners}\n\
         [md]\nmax_instances = 2\n",
        runtime_dir.display()
    )
}

/// `viewstats --json --config FILE`: the instance that file names.
fn stats(config: &Path) -> serde_json::Value {
    let out = Command::new(viewstats_bin())
        .arg("--json")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run viewstats");
    assert!(out.status.success(), "viewstats --config {}: {out:?}", config.display());
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn io_value(v: &serde_json::Value, key: &str) -> u64 {
    v["sections"]["io"][0]["values"][key].as_u64().unwrap_or_else(|| panic!("no io.{key}"))
}

/// Polls the stats of `config` until `io.KEY` is `want` (counters settle once per loop turn).
fn wait_io(config: &Path, key: &str, want: u64) -> serde_json::Value {
    let until = Instant::now() + WATCHDOG;
    loop {
        let v = stats(config);
        if io_value(&v, key) == want {
            return v;
        }
        assert!(Instant::now() < until, "{}: io.{key} != {want}: {v:#}", config.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PING on dumb, GET of the key `inst` on kv, `/whoami` on http: this host answers, from its
/// own cache.
fn serves(h: &Host, kv_value: &str) {
    let mut s = connect(h.addr("dumb/line"));
    let got = exchange(&mut s, b"PING\n", |b| b.ends_with(b"\n")).expect("PONG");
    assert_eq!(got, b"PONG\n", "{}", h.name);
    let mut kv = connect(h.addr("kv/resp"));
    assert_eq!(resp(&mut kv, &["GET", "inst"]), format!("${}\r\n{kv_value}\r\n", kv_value.len()));
    let (status, body) = http_get(h.addr("http/http"), "/whoami").expect("/whoami");
    assert_eq!(status, "HTTP/1.1 200 OK", "{}", h.name);
    assert!(body.starts_with("127.0.0.1:"), "{}: {body}", h.name);
}

fn two_instances_side_by_side(backend: &str) {
    let base = unique_name(&format!("inst{backend}"));
    let scratch = Scratch(test_dir(&base));
    let run = scratch.0.join("run");
    let listeners = format!(
        "{}{}{}",
        listener("dumb", "line"),
        listener("http", "http"),
        listener("kv", "resp")
    );
    let mut hosts = Vec::new();
    for tag in ["a", "b"] {
        let name = format!("{base}{tag}");
        let cfg = scratch.0.join(format!("{tag}.toml"));
        std::fs::write(&cfg, config_text(&name, &run, backend, &listeners)).expect("config");
        hosts.push((name, cfg));
    }
    // Both at once: neither waits for the other to be up.
    let mut a = Host::spawn(&hosts[0].0, &hosts[0].1, &run, 2, &[], &[]);
    let mut b = Host::spawn(&hosts[1].0, &hosts[1].1, &run, 2, &[], &[]);
    a.wait_ready(2);
    b.wait_ready(2);
    for (h, v) in [(&a, "A"), (&b, "B")] {
        let mut kv = connect(h.addr("kv/resp"));
        assert_eq!(resp(&mut kv, &["SET", "inst", v]), "+OK\r\n");
    }
    // Each cache is its own: A's key is not overwritten by B's SET.
    serves(&a, "A");
    serves(&b, "B");

    // What each made is under its own name only, and each has the lot.
    let (fa, fb) = (files_of(&a.name, &run), files_of(&b.name, &run));
    for (h, f) in [(&a, &fa), (&b, &fb)] {
        let want_rt = [
            format!("{}.in.0.fifo", h.name),
            format!("{}.out.1.fifo", h.name),
            format!("{}.io_conn.ctl", h.name),
        ];
        for w in want_rt {
            let p = run.join(&w).display().to_string();
            assert!(f.contains(&p), "{}: no {p} in {f:?}", h.name);
        }
        let segs = ["stats", "kv", "in.0", "out.1"].map(|s| match backend {
            "sysv" => format!("sysv:{}.{s}", h.name),
            _ => format!("/dev/shm/{}.{s}", h.name),
        });
        for s in segs {
            assert!(f.contains(&s), "{}: no {s} in {f:?}", h.name);
        }
    }
    assert!(fa.is_disjoint(&fb));
    let b_pids: Vec<u32> = std::iter::once(b.pid()).chain(b.md_pids()).collect();

    // Stats: each by its own config; a reload of A is A's alone (its control socket).
    let (ga, gb) = (
        io_value(&stats(&a.config), "config_generation"),
        io_value(&stats(&b.config), "config_generation"),
    );
    let out = Command::new(io_conn_bin())
        .arg("--reload")
        .arg("--config")
        .arg(&a.config)
        .output()
        .expect("io_conn --reload");
    assert!(out.status.success(), "reload of A: {out:?}");
    let va = wait_io(&a.config, "config_generation", ga + 1);
    assert_eq!(va["creator_pid"].as_u64(), Some(u64::from(a.pid())));
    let vb = stats(&b.config);
    assert_eq!(io_value(&vb, "config_generation"), gb, "B was not reloaded");
    assert_eq!(vb["creator_pid"].as_u64(), Some(u64::from(b.pid())));
    assert!(!b.log().contains("reload"), "B's log mentions a reload:\n{}", b.log());

    // A takeover of A (an upgrade without systemd) finds A's io_conn and A's handover socket.
    let mut a2 = Host::spawn(&a.name, &a.config, &run, 2, &[], &["--takeover"]);
    a2.wait_ready(2);
    let st = a.wait_exit();
    assert!(st.success(), "the old A exited {st}");
    serves(&b, "B");
    let mut s = connect(a.addr("dumb/line"));
    assert_eq!(
        exchange(&mut s, b"PING\n", |b| b.ends_with(b"\n")).as_deref(),
        Some(&b"PONG\n"[..])
    );
    drop(s);

    // A stops for good: everything of A goes, nothing of B does, and B serves on.
    a2.stop();
    let left: BTreeSet<String> = files_of(&a.name, &run);
    assert!(left.is_empty(), "A left {left:?}");
    assert_eq!(files_of(&b.name, &run), fb, "B's files changed while A came and went");
    for pid in &b_pids {
        assert!(alive(*pid), "B's process {pid} is gone");
    }
    serves(&b, "B");
    let vb = stats(&b.config);
    assert_eq!(vb["creator_pid"].as_u64(), Some(u64::from(b.pid())));
    assert_eq!(vb["creator_running"], true);

    b.stop();
    assert!(files_of(&b.name, &run).is_empty(), "B left {:?}", files_of(&b.name, &run));
    let rest: Vec<_> = std::fs::read_dir(&run).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(rest.is_empty(), "the runtime dir still holds {rest:?}");
}

#[test]
fn two_instances_side_by_side_posix() {
    two_instances_side_by_side("posix");
}

#[test]
fn two_instances_side_by_side_sysv() {
    two_instances_side_by_side("sysv");
}
