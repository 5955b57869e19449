//! Stop without loss under `io_conn --spawn-md` (development mode, no systemd): SIGTERM to io_conn
//! drains every connection while its md children still serve, and only then stops them (what the
//! units' stop order does under systemd, see docs/ARCHITECTURE.md "Stop order").

use std::io::Write;
use std::net::TcpStream;

use crate::util::{Server, Setup, expect_exact, read_line, read_to_eof};

/// 40 clients in the middle of `WAIT 1000` (request dispatch spreads them over two md children),
/// then SIGTERM to io_conn: 40/40 get `DONE` and then a clean close, the drain completes before
/// its deadline, both children are stopped only afterwards and exit 0, and everything io_conn
/// created is removed.
#[test]
fn sigterm_io_conn_with_40_waits_in_flight_loses_nothing() {
    let sut = Server::start_with(
        "stop40",
        Setup { spawn_md: 2, max_instances: 2, dispatch: Some("request"), ..Setup::default() },
    );
    let mut clients: Vec<TcpStream> = (0..40).map(|_| sut.connect("dumb/line")).collect();
    for c in &mut clients {
        c.write_all(b"WAIT 1000\n").expect("write");
    }
    // io_conn has read all 40 and handed them to md: they are in flight when SIGTERM comes.
    let v = sut.wait_stats("40 WAITs in flight", |v| {
        expect_exact(v, &[("io", 0, "messages_in", 40), ("io", 0, "connections_current", 40)])
    });
    let on = |i| crate::util::stat(&v, "in.producer", i, "requests_in_flight").unwrap_or(0);
    assert!(on(0) > 0 && on(1) > 0, "the WAITs went to one md only: {} and {}", on(0), on(1));
    sut.terminate();
    for (k, c) in clients.iter_mut().enumerate() {
        assert_eq!(read_line(c), "DONE\n", "client {k}");
        assert_eq!(read_to_eof(c), b"", "client {k}: a clean close after DONE");
    }
    let log = std::sync::Arc::clone(&sut.log);
    sut.wait_clean_exit();
    let log = log.lock().expect("log").clone();
    assert!(log.contains("draining 40 connections"), "no drain of the 40:\n{log}");
    assert!(log.contains("all connections closed"), "the drain did not complete:\n{log}");
    assert!(!log.contains("drain deadline reached"), "the drain hit its deadline:\n{log}");
    // The children were stopped after the drain, and left at once (exit 0, no SIGKILL).
    let drained = log.find("all connections closed").expect("drained");
    let stopping = log.find("stopping 2 md children").expect("children stopped");
    assert!(drained < stopping, "md children stopped before the drain ended:\n{log}");
    assert!(!log.contains("ignored SIGTERM"), "an md child had to be killed:\n{log}");
    assert_eq!(log.matches("stopped: exit status: 0").count(), 2, "both md exit 0:\n{log}");
}
