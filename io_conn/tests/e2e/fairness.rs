//! Fairness inside one md (issue 10, item 3): a client that pipelines 40 `BURN burn_max` does not
//! hold up the other clients of its md. md runs long work in time slices (`md.slice`) and answers
//! other flows between two slices; these tests show it through the real processes, by order.

use super::*;

/// Counts the `RESULT` lines readable on `s` now (non-blocking), adding them to `seen`.
fn count_results(s: &mut std::net::TcpStream, seen: &mut Vec<u8>) -> usize {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => panic!("the hog's connection closed"),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    s.set_nonblocking(false).expect("blocking");
    seen.windows(7).filter(|w| w == b"RESULT ").count()
}

/// One md; a hog pipelines 40 `BURN burn_max` in one write (seconds of work); PINGs from three
/// other clients, sent once the 40 are in md's ring, are all answered before the hog's third
/// `RESULT`. The hog's replies are counted after each PONG is read, so the count can only be
/// too high, never too low. Then the hog resets its connection (md drops the yielded BURN) and
/// the server stops cleanly.
#[test]
fn pings_beside_a_burn_hog_are_answered_before_its_third_result() {
    let burn_max = config::Md::default().dumb.burn_max;
    let sut = Server::start("fair_hog", 1);
    let mut hog = sut.connect("dumb/line");
    hog.write_all(format!("BURN {burn_max}\n").repeat(40).as_bytes()).expect("write");
    sut.wait_io("the 40 BURNs handed to md", &[("messages_in", 40)]);
    let mut seen = Vec::new();
    for i in 0..3 {
        let mut p = sut.connect("dumb/line");
        roundtrip(&mut p, b"PING\n", b"PONG\n");
        let results = count_results(&mut hog, &mut seen);
        assert!(results < 3, "PING {i} answered after {results} RESULTs of the hog");
    }
    // The RESULTs that did come are right.
    let want = format!("RESULT {}\n", u128::from(burn_max) * (u128::from(burn_max) + 1) / 2);
    assert!(want.repeat(3).as_bytes().starts_with(&seen), "{:?}", String::from_utf8_lossy(&seen));
    util::set_linger_zero(&hog);
    drop(hog);
    let mut p = sut.connect("dumb/line");
    roundtrip(&mut p, b"PING\n", b"PONG\n");
    drop(p);
    sut.stop();
}
