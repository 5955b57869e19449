//! Service groups (`[[md.group]]`): `--spawn-md` starts each instance with its group's binary,
//! `md --instance N` execs its group's binary (and does not loop), `--check-config` of all three
//! programs names what is wrong, and viewstats shows each md's group.
//!
//! io_conn does not route by group yet, so these tests look at which program runs in each
//! instance (`/proc/PID/exe`), not at traffic.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::util::{self, KillOnDrop, Server, Setup, WATCHDOG};

/// Built-ins on instance 0 (the md binary), `upper` on instance 1 with `binary`.
fn groups(binary: &Path) -> String {
    format!(
        "\n[[md.group]]\nservices = [\"dumb\", \"echo\", \"reverse\"]\ninstances = \"0\"\n\n\
         [[md.group]]\nservices = [\"upper\"]\ninstances = [1]\nbinary = \"{}\"\n",
        binary.display()
    )
}

fn exe_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe")
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).expect("canonicalize")
}

#[test]
fn spawn_md_starts_each_instance_with_its_group_binary() {
    let upper = util::example_bin("upper");
    let md_extra = groups(&upper);
    let listeners = util::listener("upper", "line");
    let sut = Server::start_with(
        "groupspawn",
        Setup {
            spawn_md: 2,
            max_instances: 2,
            md_extra: &md_extra,
            listeners: &listeners,
            ..Setup::default()
        },
    );
    // `$SHMSRV_MD_BIN` (set by the test harness) is the md binary; it does not override a
    // group's explicit binary.
    assert_eq!(exe_of(sut.md_pid(0)), canonical(&util::md_bin()));
    assert_eq!(exe_of(sut.md_pid(1)), canonical(&upper));
    let log = sut.log_text();
    assert!(
        log.contains(&format!("md instance 1 runs {} (its [[md.group]] binary)", upper.display())),
        "{log}"
    );
    assert!(log.contains("md.group: [0:dumb,echo,reverse 1:upper@"), "summary: {log}");

    // viewstats, given the same config, shows each md's group.
    let out = Command::new(util::viewstats_bin())
        .arg("--json")
        .arg("--config")
        .arg(&sut.config)
        .output()
        .expect("run viewstats");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let label = |i: u64| {
        v["sections"]["md"]
            .as_array()
            .and_then(|a| a.iter().find(|b| b["instance"].as_u64() == Some(i)))
            .map(|b| b["group_label"].clone())
    };
    assert_eq!(label(0), Some(serde_json::json!("0:dumb,echo,reverse")), "{v:#}");
    assert_eq!(label(1), Some(serde_json::json!("1:upper")), "{v:#}");
    sut.stop();
}

/// An md started by hand; its stderr is collected.
fn md_by_hand(config: &Path, instance: u32) -> (KillOnDrop, Arc<Mutex<String>>) {
    let mut child = Command::new(util::md_bin())
        .arg("--config")
        .arg(config)
        .arg("--instance")
        .arg(instance.to_string())
        .env_remove("SHMSRV_MD_EXEC_FROM")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start md");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("stderr");
    let log2 = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[md {instance}] {line}");
            let mut l = log2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    (KillOnDrop(child), log)
}

fn wait_for(log: &Mutex<String>, pattern: &str) {
    let until = Instant::now() + WATCHDOG;
    while !log.lock().unwrap().contains(pattern) {
        assert!(Instant::now() < until, "timed out waiting for {pattern:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// What systemd's `md@1` does: run md for instance 1, which execs the group's binary in the
/// same process (same pid, so systemd keeps tracking it).
#[test]
fn md_instance_execs_its_group_binary() {
    let upper = util::example_bin("upper");
    let md_extra = groups(&upper);
    let listeners = util::listener("upper", "line");
    let sut = Server::start_with(
        "groupexec",
        Setup { max_instances: 2, md_extra: &md_extra, listeners: &listeners, ..Setup::default() },
    );
    let (md, log) = md_by_hand(&sut.config, 1);
    let pid = md.0.id();
    sut.wait_log("md instance 1 live", 1);
    wait_for(&log, "md instance 1: exec");
    assert_eq!(exe_of(pid), canonical(&upper), "md exec'd upper in its own process");
    // Instance 0's group has no binary: md serves it itself.
    let (md0, log0) = md_by_hand(&sut.config, 0);
    sut.wait_log("md instance 0 live", 1);
    assert_eq!(exe_of(md0.0.id()), canonical(&util::md_bin()));
    assert!(!log0.lock().unwrap().contains("md instance 0: exec"), "{}", log0.lock().unwrap());
    drop((md, md0));
    sut.stop();
}

/// A group binary that runs md again (a wrapper script): the second md serves the built-ins
/// instead of exec'ing once more.
#[test]
fn md_exec_does_not_loop_through_a_wrapper() {
    let name = util::unique_name("groupwrap");
    let dir = util::test_dir(&format!("{name}-bin"));
    let wrapper = dir.join("md-wrapper.sh");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec \"{}\" \"$@\"\n", util::md_bin().display()))
        .expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let md_extra = groups(&wrapper);
    let listeners = util::listener("upper", "line");
    let sut = Server::start_with(
        "groupwrap",
        Setup { max_instances: 2, md_extra: &md_extra, listeners: &listeners, ..Setup::default() },
    );
    let (md, log) = md_by_hand(&sut.config, 1);
    sut.wait_log("md instance 1 live", 1);
    wait_for(&log, "serving the built-in services here instead of exec'ing again");
    assert_eq!(exe_of(md.0.id()), canonical(&util::md_bin()));
    assert_eq!(log.lock().unwrap().matches("md instance 1: exec").count(), 1);
    drop(md);
    sut.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `bin --check-config --config path`; (success, stdout + stderr).
fn check_config(bin: &Path, path: &Path) -> (bool, String) {
    let out = Command::new(bin)
        .arg("--check-config")
        .arg("--config")
        .arg(path)
        .env("RUST_LOG", "info")
        .output()
        .expect("run --check-config");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn check_config_names_bad_groups() {
    let name = util::unique_name("groupcheck");
    let dir = util::test_dir(&name);
    let upper = util::example_bin("upper");
    let path = dir.join("shmsrv.toml");
    let write = |md_extra: &str, listeners: &str| {
        let mut text = util::config_text(&name, &dir.join("run"), 2, "", md_extra);
        text.push_str(listeners);
        std::fs::write(&path, &text).expect("write config");
        text
    };
    let line_of = |text: &str, needle: &str| {
        1 + text[..text.find(needle).expect("needle")].matches('\n').count()
    };
    let p = path.display().to_string();
    let all = [util::io_conn_bin(), util::md_bin(), util::viewstats_bin()];

    // Good: every program accepts it; io_conn's summary lists the groups.
    write(&groups(&upper), &util::listener("upper", "line"));
    for bin in &all {
        let (ok, out) = check_config(bin, &path);
        assert!(ok, "{}: {out}", bin.display());
    }
    let (_, out) = check_config(&util::md_bin(), &path);
    assert!(out.contains("instance 0: md.group[0] (dumb,echo,reverse), the md binary"), "{out}");
    let (_, out) = check_config(&util::io_conn_bin(), &path);
    assert!(out.contains("md.group: [0:dumb,echo,reverse 1:upper@"), "{out}");

    // Overlapping groups, a listener nobody serves, out of range, empty services: every program.
    let cases = [
        (
            groups(&upper).replace("instances = [1]", "instances = [1, 0]"),
            "instances = [1, 0]",
            "md.group[1].instances: instance 0 is also in md.group[0].instances = 0 (groups must \
             not overlap)",
        ),
        (
            groups(&upper).replace("services = [\"upper\"]", "services = [\"upper2\"]"),
            "service = \"upper\"",
            "io_conn.listener[4].service: no [[md.group]] serves `upper`",
        ),
        (
            groups(&upper).replace("instances = [1]", "instances = \"1-2\""),
            "instances = \"1-2\"",
            "md.group[1].instances: instance 2 is not below md.max_instances = 2",
        ),
        (
            groups(&upper).replace("services = [\"upper\"]", "services = []"),
            "services = []",
            "md.group[1].services: empty list: a group serves at least one service",
        ),
    ];
    for (md_extra, at, want) in cases {
        let text = write(&md_extra, &util::listener("upper", "line"));
        let want = format!("{p}:{}: {want}", line_of(&text, at));
        for bin in &all {
            let (ok, out) = check_config(bin, &path);
            assert!(!ok, "{} accepted:\n{text}", bin.display());
            assert!(out.contains(&want), "{}: {out:?} lacks {want:?}", bin.display());
        }
    }

    // A missing binary: io_conn and md (which start it) refuse; viewstats does not care.
    let text = write(&groups(Path::new("/nonexistent/upper")), &util::listener("upper", "line"));
    let want = format!(
        "{p}:{}: md.group[1].binary: /nonexistent/upper: No such file or directory",
        line_of(&text, "binary =")
    );
    for bin in [util::io_conn_bin(), util::md_bin()] {
        let (ok, out) = check_config(&bin, &path);
        assert!(!ok && out.contains(&want), "{}: {out:?} lacks {want:?}", bin.display());
    }
    assert!(check_config(&util::viewstats_bin(), &path).0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A custom service's own `[service.NAME]` section (md's `Service::configure`), end to end: the
/// `upper` example under `--spawn-md` answers with the configured suffix; `upper --reload`
/// applies a new suffix live (an open connection keeps going and gets it); a bad value is
/// refused by the service (`--reload` fails, the log names file, line and key) and the old
/// suffix stays.
#[test]
fn service_section_configures_and_reloads_a_custom_md() {
    let upper = util::example_bin("upper");
    let md_extra = format!("{}\n[service.upper]\nsuffix = \"!\"\n", groups(&upper));
    let listeners = util::listener("upper", "line");
    let sut = Server::start_with(
        "groupsection",
        Setup {
            spawn_md: 2,
            max_instances: 2,
            md_extra: &md_extra,
            listeners: &listeners,
            ..Setup::default()
        },
    );
    let mut c = sut.connect("upper/line");
    util::roundtrip(&mut c, b"abc\n", b"ABC!\n");

    let text = std::fs::read_to_string(&sut.config).expect("read config");
    let reload = |text: &str| {
        std::fs::write(&sut.config, text).expect("write config");
        let out = Command::new(&upper)
            .arg("--reload")
            .arg("--config")
            .arg(&sut.config)
            .args(["--instance", "1"])
            .output()
            .expect("run upper --reload");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    };
    let (ok, said) = reload(&text.replace("suffix = \"!\"", "suffix = \"?\""));
    assert!(ok && said.contains("reload applied"), "{said}");
    util::roundtrip(&mut c, b"def\n", b"DEF?\n");
    let mut fresh = sut.connect("upper/line");
    util::roundtrip(&mut fresh, b"x\n", b"X?\n");

    let bad = text.replace("suffix = \"!\"", "suffix = 7");
    let (ok, said) = reload(&bad);
    assert!(!ok && said.contains("refused the reload"), "{said}");
    let line = bad.lines().position(|l| l == "suffix = 7").expect("suffix line") + 1;
    sut.wait_log(
        &format!("{}:{line}: service.upper.suffix: expected a string", sut.config.display()),
        1,
    );
    util::roundtrip(&mut c, b"ghi\n", b"GHI?\n");
    drop((c, fresh));
    sut.stop();
}
