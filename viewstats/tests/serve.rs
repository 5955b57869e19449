//! `viewstats --serve` (the /metrics endpoint): `shmsrv_up`, restarts of a real io_conn,
//! slow or hostile scrapers, and the library renderer other routes share.

use std::io::Read;
use std::time::Duration;

use shmq::region::Backend;
use shmq::stats::{Io, StatsSegment};

mod util;
use util::*;

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

/// The scrape, end to end: `viewstats --serve` in front of a real io_conn that stops
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
