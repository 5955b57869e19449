//! loadgen against small servers in this process (loopback, port 0): a correct one, one that
//! swaps replies between connections, one that drops a connection, one that stalls. Each test
//! would fail if loadgen stopped checking what it claims to check.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loadgen::{Plan, Proto, Workload};

/// A line server: a thread per connection, answering each line with `answer(conn_no, line)`
/// (`None` = close the connection). Stops accepting when dropped (the listener thread ends at
/// the next connection or with the process).
fn line_server(answer: impl Fn(u64, &str) -> Option<String> + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(s) = s else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { return };
                    match answer(n as u64, &line) {
                        Some(a) => {
                            if w.write_all(a.as_bytes()).is_err() {
                                return;
                            }
                        }
                        None => return,
                    }
                }
            });
        }
    });
    addr
}

fn plan(addr: SocketAddr, w: Workload, conns: usize) -> Plan {
    Plan {
        addr,
        workload: w,
        conns,
        depth: 1,
        rate: None,
        duration: Duration::from_millis(400),
        warmup: Duration::from_millis(50),
        sources: Vec::new(),
        threads: 1,
        timeout: Duration::from_secs(5),
    }
}

fn ping() -> Workload {
    Workload::new(Proto::Line, &["PING".into()], &["PONG".into()], 0, 200, "h").unwrap()
}

#[test]
fn a_correct_server_gives_a_clean_report() {
    let addr = line_server(|_, l| (l == "PING").then(|| "PONG\n".to_owned()));
    let mut p = plan(addr, ping(), 4);
    p.depth = 3;
    let r = loadgen::run(&p).unwrap();
    assert!(r.clean(), "{}", r.summary());
    assert!(r.replies > 0);
    // Every request sent in the window got its latency recorded, and no more than were answered.
    assert!(!r.hist.is_empty() && r.hist.len() <= r.replies + r.other_replies, "{}", r.summary());
    assert_eq!(r.sent, r.hist.len(), "every request sent in the window was answered and timed");
}

#[test]
fn replies_meant_for_another_connection_are_caught() {
    // An echo server that, once, sends connection 0's reply to connection 1.
    let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let eaddr = l.local_addr().unwrap();
    let swapped = Arc::new(AtomicBool::new(false));
    {
        let conns = conns.clone();
        let swapped = swapped.clone();
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let s = s.unwrap();
                conns.lock().unwrap().push(s.try_clone().unwrap());
                let conns = conns.clone();
                let swapped = swapped.clone();
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 64];
                    loop {
                        if std::io::Read::read_exact(&mut s, &mut buf).is_err() {
                            return;
                        }
                        // Once, after a while, connection 0's reply goes to connection 1.
                        let mut to = s.try_clone().unwrap();
                        if n == 0
                            && buf[1..].starts_with(b"0:20:")
                            && !swapped.swap(true, Ordering::SeqCst)
                        {
                            to = conns.lock().unwrap()[1].try_clone().unwrap();
                        }
                        if to.write_all(&buf).is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    let w = Workload::new(Proto::Echo, &[], &[], 64, 200, "h").unwrap();
    let mut p = plan(eaddr, w, 2);
    p.timeout = Duration::from_secs(1);
    let r = loadgen::run(&p).unwrap();
    assert!(swapped.load(Ordering::SeqCst), "the server never swapped: the test proves nothing");
    assert!(r.wrong >= 1, "a misdelivered reply was not caught: {}", r.summary());
    assert!(!r.clean());
}

#[test]
fn a_connection_closed_with_replies_owed_is_an_error() {
    let count = Arc::new(AtomicU64::new(0));
    let c2 = count.clone();
    let addr = line_server(move |_, _| {
        if c2.fetch_add(1, Ordering::Relaxed) == 100 { None } else { Some("PONG\n".into()) }
    });
    let r = loadgen::run(&plan(addr, ping(), 2)).unwrap();
    assert!(r.errors >= 1, "{}", r.summary());
    assert!(r.first_errors.iter().any(|e| e.contains("closed")), "{:?}", r.first_errors);
}

#[test]
fn open_loop_latency_counts_from_the_due_time_across_a_stall() {
    // The server stalls 300 ms once. Requests due during the stall wait behind it: measured
    // from their due time their latency includes the wait, so the top of the histogram is at
    // least the stall. (A client measuring from its send time would report a few fast replies.)
    let stalled = Arc::new(AtomicBool::new(false));
    let s2 = stalled.clone();
    let count = Arc::new(AtomicU64::new(0));
    let addr = line_server(move |_, _| {
        if count.fetch_add(1, Ordering::Relaxed) == 200 && !s2.swap(true, Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(300));
        }
        Some("PONG\n".into())
    });
    let mut p = plan(addr, ping(), 1);
    p.rate = Some(2000.0);
    p.duration = Duration::from_millis(800);
    let r = loadgen::run(&p).unwrap();
    assert!(stalled.load(Ordering::SeqCst), "the server never stalled");
    assert!(r.clean(), "{}", r.summary());
    // About 600 requests fell due during the stall; each waited for it.
    let stalled_replies = r.hist.count_between(100_000_000, u64::MAX);
    assert!(stalled_replies >= 100, "only {stalled_replies} slow replies: {}", r.summary());
    assert!(r.hist.max() >= 290_000_000, "{}", r.summary());
}

#[test]
fn connections_come_from_the_given_sources() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let s = s.unwrap();
            s2.lock().unwrap().push(s.peer_addr().unwrap().ip());
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                for line in BufReader::new(s).lines() {
                    if line.is_err() || w.write_all(b"PONG\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut p = plan(addr, ping(), 6);
    p.sources = loadgen::parse_sources("127.0.0.2-127.0.0.4").unwrap();
    p.threads = 2;
    let r = loadgen::run(&p).unwrap();
    assert!(r.clean(), "{}", r.summary());
    let mut ips: Vec<String> = seen.lock().unwrap().iter().map(|i| i.to_string()).collect();
    ips.sort();
    assert_eq!(ips, ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4"]);
}

#[test]
fn a_refused_connect_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = loadgen::run(&plan(([127, 0, 0, 1], port).into(), ping(), 1)).unwrap_err();
    assert!(e.to_string().contains("connection 0 to 127.0.0.1"), "{e}");
}
