//! HAProxy in front of two shmsrv hosts (issue 13, items 3 and 4), with the shipped examples:
//! `docs/deploy/haproxy.cfg` (mode tcp, `send-proxy-v2`, health checks with a PROXY v2 LOCAL
//! header, `option redispatch`) and `docs/deploy/shmsrv.toml` (listeners with
//! `proxy_protocol = "v2"`, `proxy_from` the balancer). In network namespaces where they can be
//! made, both files run unchanged (their addresses are the namespaces'); on loopback the
//! addresses and ports are substituted. The hosts run the real io_conn with one md each.
//!
//! Asserted: `/whoami` through haproxy names the client's own address and port; a PROXY header
//! sent straight to a host from an address outside `proxy_from` gets no answer and is counted;
//! every health check passes; with one host killed (kill -9, its md too) every new request
//! through haproxy still succeeds, and the health check marks the host down; the documented
//! zero-loss stop (drain the host in haproxy, then SIGTERM) loses no request of a client that
//! keeps sending through it. Skipped, with one line, only where haproxy is not installed.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{Host, exchange, http_body, http_get, resp};
use crate::instances::Scratch;
use crate::net::{Place, Topology, connect_from, in_ns, wrap};
use crate::util::{WATCHDOG, io_conn_bin, test_dir, unique_name, viewstats_bin};

fn shipped(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy").join(file)
}

/// Whether haproxy can run here; if not, says so in one line (the caller skips).
fn have_haproxy() -> bool {
    let ok = Command::new("haproxy").arg("-v").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIP: haproxy is not installed (scripts/deps.sh installs it: apt-get install haproxy)"
        );
    }
    ok
}

/// The shipped balancer config passes `haproxy -c` as it is.
#[test]
fn shipped_haproxy_config_is_valid() {
    if !have_haproxy() {
        return;
    }
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(shipped("haproxy.cfg"))
        .output()
        .expect("haproxy -c");
    assert!(out.status.success(), "haproxy -c: {out:?}");
}

/// The shipped host config passes `io_conn --check-config` as it is.
#[test]
fn shipped_host_config_is_valid() {
    let out = Command::new(io_conn_bin())
        .arg("--check-config")
        .arg("--config")
        .arg(shipped("shmsrv.toml"))
        .output()
        .expect("io_conn --check-config");
    assert!(out.status.success(), "io_conn --check-config: {out:?}");
}

/// Replaces every `from` in `text` (which must be there: a changed example fails loudly here).
fn subst(text: &mut String, from: &str, to: &str) {
    assert!(text.contains(from), "{from:?} is no longer in the shipped example");
    *text = text.replace(from, to);
}

/// A port free on 127.0.0.1 now (for haproxy's frontends on loopback).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// haproxy in the foreground (`-db`) in the balancer's namespace; killed on drop.
struct Haproxy {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Haproxy {
    fn start(lb: &Place, cfg: &Path) -> Haproxy {
        let w = wrap(lb);
        let mut cmd = match w.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg("haproxy");
                c
            }
            None => Command::new("haproxy"),
        };
        let mut child = cmd
            .arg("-db")
            .arg("-f")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haproxy");
        let log = Arc::new(Mutex::new(String::new()));
        for mut pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                    eprint!("[haproxy] {s}");
                    log.lock().unwrap().push_str(&s);
                }
            });
        }
        Haproxy { child: Some(child), log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Panics with haproxy's log if it exited.
    fn check_running(&mut self) {
        if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("haproxy exited with {st}; its log:\n{}", self.log());
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// haproxy's stats as CSV rows keyed by `pxname/svname`, each a map of column -> value.
type Csv = std::collections::HashMap<String, std::collections::HashMap<String, String>>;

fn haproxy_stats(lb: &Place, addr: SocketAddr) -> Option<Csv> {
    let (status, body) = in_ns(lb.ns.as_deref(), move || http_get(addr, "/stats;csv"))?;
    if !status.contains(" 200 ") {
        return None;
    }
    let mut lines = body.lines();
    let head: Vec<String> =
        lines.next()?.trim_start_matches("# ").split(',').map(str::to_owned).collect();
    let mut out = Csv::new();
    for l in lines {
        let row: std::collections::HashMap<String, String> =
            head.iter().cloned().zip(l.split(',').map(str::to_owned)).collect();
        let key = format!("{}/{}", row.get("pxname")?, row.get("svname")?);
        out.insert(key, row);
    }
    Some(out)
}

/// A column of a server's row.
fn col<'a>(csv: &'a Csv, server: &str, column: &str) -> &'a str {
    csv.get(server).and_then(|r| r.get(column)).map_or("", String::as_str)
}

/// Polls haproxy's stats until `ok` holds (watchdog); the last table on failure.
fn wait_stats(lb: &Place, addr: SocketAddr, what: &str, ok: impl Fn(&Csv) -> bool) -> Csv {
    let until = Instant::now() + WATCHDOG;
    loop {
        let csv = haproxy_stats(lb, addr);
        if let Some(c) = &csv {
            if ok(c) {
                return c.clone();
            }
        }
        assert!(Instant::now() < until, "haproxy never reported {what}; last stats: {csv:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /whoami` through the balancer from `client`, `n` times, each on a new connection:
/// the failures (a wrong answer says what it was).
fn whoami_through(client: &Place, fe: SocketAddr, n: usize) -> Vec<String> {
    let src = client.ip;
    in_ns(client.ns.as_deref(), move || {
        let mut failures = Vec::new();
        for i in 0..n {
            if let Err(e) = whoami_once(src, fe) {
                failures.push(format!("request {i}: {e}"));
            }
        }
        failures
    })
}

fn whoami_once(src: IpAddr, fe: SocketAddr) -> Result<(), String> {
    let mut s = connect_from(src, fe).map_err(|e| format!("connect: {e}"))?;
    let me = s.local_addr().map_err(|e| e.to_string())?;
    let req = b"GET /whoami HTTP/1.1\r\nHost: shmsrv\r\nConnection: close\r\n\r\n";
    let got = exchange(&mut s, req, |b| http_body(b).is_some())
        .ok_or_else(|| "closed before a whole response".to_owned())?;
    let text = String::from_utf8_lossy(&got);
    let body = http_body(&got).unwrap_or_default();
    if !text.starts_with("HTTP/1.1 200 ") || body != format!("{me}\n") {
        return Err(format!("from {me}: {text:?}"));
    }
    Ok(())
}

/// A PROXY v2 header (PROXY command, TCP over IPv4) claiming `src` -> `dst`.
fn proxy_v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else { panic!("IPv4 only") };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

/// `viewstats --json --config FILE`'s `io.KEY`.
fn io_counter(config: &Path, key: &str) -> u64 {
    let out = Command::new(viewstats_bin())
        .arg("--json")
        .arg("--config")
        .arg(config)
        .output()
        .expect("viewstats");
    assert!(out.status.success(), "viewstats: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["sections"]["io"][0]["values"][key].as_u64().unwrap_or_else(|| panic!("no io.{key}: {v:#}"))
}

/// The balancer, two hosts and a client, all running; dropped in reverse (processes first,
/// then the namespaces, then the scratch directory).
struct Site {
    haproxy: Haproxy,
    hosts: Vec<Host>,
    configs: Vec<PathBuf>,
    fe_http: SocketAddr,
    fe_kv: SocketAddr,
    stats: SocketAddr,
    admin: PathBuf,
    topo: Topology,
    _scratch: Scratch,
}

impl Site {
    fn start(test: &str, force_loopback: bool) -> Site {
        let base = unique_name(test);
        let scratch = Scratch(test_dir(&base));
        let topo = Topology::new(&base, force_loopback);
        let netns = topo.is_netns();
        let run = scratch.0.join("run");

        // The hosts: the shipped host config, plus a name and runtime dir of this test's.
        let mut hosts = Vec::new();
        let mut configs = Vec::new();
        for (i, place) in topo.hosts.iter().enumerate() {
            let name = format!("{base}{}", i + 1);
            let mut text = std::fs::read_to_string(shipped("shmsrv.toml")).expect("host config");
            if !netns {
                subst(&mut text, "\"0.0.0.0:8080\"", "\"127.0.0.1:0\"");
                subst(&mut text, "\"0.0.0.0:6380\"", "\"127.0.0.1:0\"");
                subst(&mut text, "\"10.0.0.10/32\"", &format!("\"{}/32\"", topo.lb.ip));
            }
            text.push_str(&format!(
                "\n[shared]\nname = \"{name}\"\nruntime_dir = \"{}\"\nqueue_size = \"1MiB\"\n",
                run.display()
            ));
            let cfg = scratch.0.join(format!("host{}.toml", i + 1));
            std::fs::write(&cfg, text).expect("write host config");
            hosts.push(Host::spawn(&name, &cfg, &run, 1, &wrap(place), &[]));
            configs.push(cfg);
        }
        for h in &mut hosts {
            h.wait_ready(1);
        }

        // The balancer: the shipped config, logging to stdout, plus a stats page and an admin
        // socket for the test.
        let mut text = std::fs::read_to_string(shipped("haproxy.cfg")).expect("haproxy.cfg");
        subst(&mut text, "log /dev/log local0", "log stdout format raw local0");
        // The tests' open-files limit (20000) is below what maxconn 50000 needs.
        subst(&mut text, "maxconn 50000", "maxconn 4000");
        let (fe_http, fe_kv, stats) = if netns {
            let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
            (a("192.0.2.10:80"), a("192.0.2.10:6379"), a("127.0.0.1:8404"))
        } else {
            let fe_http = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let fe_kv = SocketAddr::from(([127, 0, 0, 1], free_port()));
            subst(&mut text, "192.0.2.10:80", &fe_http.to_string());
            subst(&mut text, "192.0.2.10:6379", &fe_kv.to_string());
            subst(&mut text, "source 10.0.0.10", &format!("source {}", topo.lb.ip));
            for (i, h) in hosts.iter().enumerate() {
                let ip = format!("10.0.0.{}", 11 + i);
                subst(&mut text, &format!("{ip}:8080"), &h.addr("http/http").to_string());
                subst(&mut text, &format!("{ip}:6380"), &h.addr("kv/resp").to_string());
            }
            (fe_http, fe_kv, SocketAddr::from(([127, 0, 0, 1], free_port())))
        };
        let admin = scratch.0.join("haproxy.sock");
        text.push_str(&format!(
            "\nglobal\n    stats socket {} mode 600 level admin\n\n\
             listen stats\n    bind {stats}\n    mode http\n    timeout client 5s\n    \
             stats enable\n    stats uri /stats\n",
            admin.display()
        ));
        let cfg = scratch.0.join("haproxy.cfg");
        std::fs::write(&cfg, text).expect("write haproxy.cfg");
        let haproxy = Haproxy::start(&topo.lb, &cfg);
        Site { haproxy, hosts, configs, fe_http, fe_kv, stats, admin, topo, _scratch: scratch }
    }

    fn stats(&self) -> Option<Csv> {
        haproxy_stats(&self.topo.lb, self.stats)
    }

    /// Until every server's last health check passed: HTTP (`L7OK`: a request after the PROXY
    /// LOCAL header, answered by md) and kv (`L4OK`: a connection with a LOCAL header).
    fn wait_all_up(&mut self) {
        let until = Instant::now() + WATCHDOG;
        while self.stats().is_none() {
            self.haproxy.check_running();
            assert!(Instant::now() < until, "haproxy's stats page never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_stats(&self.topo.lb, self.stats, "every server UP", |c| {
            ["host1", "host2"].iter().all(|h| {
                col(c, &format!("shmsrv_http/{h}"), "status") == "UP"
                    && col(c, &format!("shmsrv_http/{h}"), "check_status") == "L7OK"
                    && col(c, &format!("shmsrv_kv/{h}"), "status") == "UP"
                    && col(c, &format!("shmsrv_kv/{h}"), "check_status") == "L4OK"
            })
        });
    }

    /// Sessions haproxy sent to `server` (`shmsrv_http/host1`) so far.
    fn sessions(&self, server: &str) -> u64 {
        let c = self.stats().expect("haproxy stats");
        col(&c, server, "stot").parse().unwrap_or_else(|_| panic!("no stot for {server}"))
    }

    /// A command on haproxy's admin socket (runtime API); its answer.
    fn admin(&self, cmd: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(&self.admin).expect("admin socket");
        s.set_read_timeout(Some(WATCHDOG)).expect("timeout");
        s.write_all(format!("{cmd}\n").as_bytes()).expect("admin write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

/// A PROXY v2 header straight to host 1 from an address outside `proxy_from` (claiming to carry
/// another client) gets no answer and is counted.
fn untrusted_header_is_refused(site: &Site) {
    let cfg = &site.configs[0];
    let before = io_counter(cfg, "proxy_refused_untrusted");
    let target = site.hosts[0].addr("http/http");
    let target = match target.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(site.topo.hosts[0].ip, target.port()),
        _ => target,
    };
    let src = site.topo.untrusted.ip;
    let got = in_ns(site.topo.untrusted.ns.as_deref(), move || {
        let mut s = connect_from(src, target).expect("connect from the untrusted address");
        let mut req = proxy_v2_header(
            "203.0.113.7:4242".parse().expect("addr"),
            SocketAddr::new(target.ip(), target.port()),
        );
        req.extend_from_slice(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = s.write_all(&req); // may already be reset
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    assert!(
        got.is_empty(),
        "an untrusted PROXY header got an answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    let until = Instant::now() + WATCHDOG;
    while io_counter(cfg, "proxy_refused_untrusted") != before + 1 {
        assert!(Instant::now() < until, "io.proxy_refused_untrusted did not count it");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The balancer in front of two hosts: identity, trust, and a host killed.
fn balanced_hosts(test: &str, force_loopback: bool) {
    if !have_haproxy() {
        return;
    }
    let mut site = Site::start(test, force_loopback);
    site.wait_all_up();

    // Through the balancer, /whoami names the client's own address and port, on both hosts.
    let failures = whoami_through(&site.topo.client, site.fe_http, 20);
    assert!(failures.is_empty(), "through haproxy: {failures:?}");
    let (s1, s2) = (site.sessions("shmsrv_http/host1"), site.sessions("shmsrv_http/host2"));
    assert!(s1 >= 10 && s2 >= 10, "round robin reached both hosts: {s1} / {s2}");

    untrusted_header_is_refused(&site);
    kv_cache_is_per_host(&site);

    // Host 1 dies (io_conn and its md, kill -9): every new request still succeeds.
    site.hosts[0].kill9();
    const AFTER: usize = 30;
    let failures = whoami_through(&site.topo.client, site.fe_http, AFTER);
    assert!(
        failures.is_empty(),
        "after host1 died, {} of {AFTER} failed: {failures:?}",
        failures.len()
    );
    eprintln!("hosts: {AFTER} of {AFTER} requests through haproxy succeeded after host1 died");
    assert!(site.sessions("shmsrv_http/host2") >= s2 + AFTER as u64);
    // And the health check takes it out.
    wait_stats(&site.topo.lb, site.stats, "host1 DOWN", |c| {
        col(c, "shmsrv_http/host1", "status").starts_with("DOWN")
    });
    site.hosts[1].stop();
    let log = site.haproxy.log();
    assert!(log.contains("shmsrv_http/host1 is DOWN"), "haproxy's log says why:\n{log}");
}

/// What docs/DEPLOY.md says of kv behind a balancer: each host has its own cache. Two clients
/// at once through `balance leastconn` land on the two hosts; a key one SETs, the other does
/// not see (and both see their own through the PROXY v2 listener, AUTH first).
fn kv_cache_is_per_host(site: &Site) {
    let (client, fe) = (site.topo.client.clone(), site.fe_kv);
    let (first, second) = in_ns(client.ns.as_deref(), move || {
        // Client 1 holds its connection (answered: it is on a host) when client 2 connects.
        let mut a = connect_from(client.ip, fe).expect("kv client 1");
        let mut answers = vec![resp(&mut a, &["AUTH", "change-me"])];
        let mut b = connect_from(client.ip, fe).expect("kv client 2");
        answers.push(resp(&mut b, &["AUTH", "change-me"]));
        answers.push(resp(&mut a, &["SET", "where", "one host"]));
        answers.push(resp(&mut a, &["GET", "where"]));
        let first = answers.join("");
        let second = resp(&mut b, &["GET", "where"]);
        (first, second)
    });
    assert_eq!(first, "+OK\r\n+OK\r\n+OK\r\n$8\r\none host\r\n");
    assert_eq!(second, "$-1\r\n", "the other host's cache does not have the key");
}

/// The zero-loss way to take a host out (docs/DEPLOY.md): drain it in haproxy, wait until its
/// connections are gone, then stop it gracefully (SIGTERM, what `systemctl stop io_conn`
/// sends). A client sending through the balancer the whole time loses nothing.
fn drain_then_stop(test: &str, force_loopback: bool) {
    if !have_haproxy() {
        return;
    }
    let mut site = Site::start(test, force_loopback);
    site.wait_all_up();
    let stop = Arc::new(AtomicBool::new(false));
    let (client, fe, stop2) = (site.topo.client.clone(), site.fe_http, Arc::clone(&stop));
    let load = std::thread::spawn(move || {
        let (mut ok, mut failures) = (0u64, Vec::new());
        let until = Instant::now() + WATCHDOG * 2;
        while !stop2.load(Ordering::Relaxed) && Instant::now() < until && ok < 20_000 {
            let f = whoami_through(&client, fe, 1);
            if f.is_empty() {
                ok += 1;
            } else {
                failures.extend(f);
            }
        }
        (ok, failures)
    });
    let answer = site.admin("set server shmsrv_http/host1 state drain");
    assert!(answer.trim().is_empty(), "haproxy: {answer}");
    site.admin("set server shmsrv_kv/host1 state drain");
    wait_stats(&site.topo.lb, site.stats, "host1 drained", |c| {
        col(c, "shmsrv_http/host1", "status") == "DRAIN"
            && col(c, "shmsrv_http/host1", "scur") == "0"
    });
    let s2 = site.sessions("shmsrv_http/host2");
    site.hosts[0].stop();
    // More requests after the stop, all to host 2.
    let until = Instant::now() + WATCHDOG;
    while site.sessions("shmsrv_http/host2") < s2 + 20 {
        assert!(Instant::now() < until, "the client stopped getting through");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = load.join().expect("client thread");
    assert!(failures.is_empty(), "{} failed, {ok} succeeded: {failures:?}", failures.len());
    eprintln!("hosts: drain then stop: {ok} of {ok} requests succeeded");
    site.hosts[1].stop();
}

#[test]
fn haproxy_two_hosts_whoami_trust_and_a_host_killed() {
    balanced_hosts("hapnet", false);
}

#[test]
fn haproxy_two_instances_on_loopback() {
    balanced_hosts("haplo", true);
}

#[test]
fn haproxy_drain_then_stop_loses_nothing() {
    drain_then_stop("hapdrain", false);
}
