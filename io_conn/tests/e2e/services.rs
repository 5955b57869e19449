//! Services end to end: byte-exact echo, reverse, dumb and len32, BROADCAST, and many
//! connections at once.

use super::*;

/// Echo is byte-exact from 1 B to several MiB, on many connections at once (writer and reader
/// run concurrently per connection, so partial reads and writes happen on both sides).
#[test]
fn echo_byte_exact_many_sizes_concurrently() {
    let sut = Server::start("echo_exact", 2);
    let sizes = [
        1usize,
        7,
        100,
        4095,
        16384,
        16385,
        65536,
        300_000,
        1 << 20,
        3 << 20,
        5 << 20,
        1,
        2,
        3,
        999,
        12345,
    ];
    let mut joins = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let mut s = sut.connect("echo/raw");
        joins.push(thread::spawn(move || {
            let data = pattern(n, i as u64);
            let mut w = s.try_clone().expect("clone");
            let d2 = data.clone();
            let writer = thread::spawn(move || {
                // Uneven chunks: the server sees arbitrary read boundaries.
                let mut off = 0;
                let mut k = 0;
                while off < d2.len() {
                    let c = [1, 10, 1000, 70_000][k % 4].min(d2.len() - off);
                    w.write_all(&d2[off..off + c]).expect("write");
                    off += c;
                    k += 1;
                }
            });
            let got = read_n(&mut s, n);
            writer.join().expect("writer");
            assert!(got == data, "echo of {n} bytes differs");
        }));
    }
    for j in joins {
        j.join().expect("echo connection");
    }
    sut.stop();
}

/// reverse and dumb answer byte-exact, pipelined requests in order; len32 echo keeps framing.
#[test]
fn reverse_dumb_len32_pipelined_in_order() {
    let sut = Server::start("rev_dumb", 2);
    let mut r = sut.connect("reverse/line");
    roundtrip(&mut r, b"abc\nhello world\n\n", b"cba\ndlrow olleh\n\n");

    let mut d = sut.connect("dumb/line");
    // Pipelined in one write: the replies must come back in request order, WAIT included.
    d.write_all(b"PING\nWAIT 50\nBURN 10\nPING\nBURN 3\n").expect("write");
    for want in ["PONG\n", "DONE\n", "RESULT 55\n", "PONG\n", "RESULT 6\n"] {
        assert_eq!(read_line(&mut d), want);
    }
    d.write_all(b"NONSENSE\n").expect("write");
    assert!(read_line(&mut d).starts_with("ERR"));
    roundtrip(&mut d, b"PING\n", b"PONG\n");

    let mut l = sut.connect("echo/len32");
    // io_conn passes each whole len32 message (prefix included) to md, and md's output is a
    // byte stream: echo returns every message, pipelined, empty ones included, framing intact.
    let mut req = Vec::new();
    for m in [&b"one"[..], b"", b"three3", &[7u8; 40_000][..], b"x"] {
        req.extend_from_slice(&(m.len() as u32).to_be_bytes());
        req.extend_from_slice(m);
    }
    l.write_all(&req).expect("write");
    assert_eq!(read_n(&mut l, req.len()), req);
    drop((r, d, l));
    sut.stop();
}

/// BROADCAST end to end, with md's `chat` example as the md binary (one instance): a line from
/// one client of `chat` reaches every client of `chat`, byte-exact and in the same order for
/// all; clients of another service (`chat-b`, served by the same md) get none of it, and
/// `/who` answers only its sender.
#[test]
fn broadcast_reaches_every_flow_of_the_service() {
    let listeners = util::listener("chat", "line") + &util::listener("chat-b", "line");
    let sut = Server::start_with(
        "broadcast",
        Setup {
            spawn_md: 1,
            md_bin: Some(util::example_bin("chat")),
            listeners: &listeners,
            ..Setup::default()
        },
    );
    // Connect one at a time; each `/who` answer proves md has opened the flow (so io_conn's
    // flow is open too) before the next client comes, which makes the counts exact.
    let mut chat = Vec::new();
    for i in 1..=3 {
        let mut c = sut.connect("chat/line");
        roundtrip(&mut c, b"/who\n", format!("{i} in chat\n").as_bytes());
        chat.push(c);
    }
    let mut other = sut.connect("chat-b/line");
    roundtrip(&mut other, b"/who\n", b"1 in chat-b\n");
    let said = |c: &std::net::TcpStream, text: &str| {
        format!("{}: {text}\n", c.local_addr().expect("local addr")).into_bytes()
    };

    // Client 1 speaks: all three hear it, byte-exact (the sender too).
    chat[0].write_all(b"hello, room\n").expect("write");
    let want = said(&chat[0], "hello, room");
    for c in &mut chat {
        assert_eq!(String::from_utf8_lossy(&read_n(c, want.len())), String::from_utf8_lossy(&want));
    }
    // The other room got nothing of it: the first thing it reads is its own line.
    other.write_all(b"over here\n").expect("write");
    assert_eq!(read_line(&mut other).into_bytes(), said(&other, "over here"));

    // Clients 2 and 3 speak at once: everyone gets both lines, whole, in one common order.
    let lines = [said(&chat[1], "from two"), said(&chat[2], "from three")];
    chat[1].write_all(b"from two\n").expect("write");
    chat[2].write_all(b"from three\n").expect("write");
    let mut orders = Vec::new();
    for c in &mut chat {
        let got = [read_line(c).into_bytes(), read_line(c).into_bytes()];
        assert!(
            (got[0] == lines[0] && got[1] == lines[1])
                || (got[0] == lines[1] && got[1] == lines[0]),
            "{:?}",
            got.map(|l| String::from_utf8_lossy(&l).into_owned())
        );
        orders.push(got);
    }
    assert!(orders.iter().all(|o| *o == orders[0]), "every client sees the same order");

    // `/who` goes to its sender only: the others' next line is the next broadcast.
    roundtrip(&mut chat[0], b"/who\n", b"3 in chat\n");
    chat[1].write_all(b"bye\n").expect("write");
    let bye = said(&chat[1], "bye");
    for c in &mut chat {
        assert_eq!(read_line(c).into_bytes(), bye);
    }
    // A service the chat md does not serve is refused and closed: nothing was broadcast to it.
    let mut echo = sut.connect("echo/raw");
    assert_eq!(read_to_eof(&mut echo), b"");
    sut.wait_io("echo refused by md", &[("closed_by_md", 1)]);

    drop((chat, other, echo));
    sut.stop();
}

/// Many connections at once (c10k-style, kept below this machine's 20 000 open-files hard limit:
/// the test process holds one end of each, io_conn the other): every one gets its own PONG, in
/// two rounds, and io_conn's memory stays small. Idle connections hold no buffers.
#[test]
fn nine_thousand_connections_each_answered() {
    const N: usize = 9_000;
    let limit = io_conn::raise_nofile_limit().expect("raise RLIMIT_NOFILE");
    assert!(limit as usize > N + 100, "open-files limit {limit} too low for this test");
    let sut = Server::start("c9k", 2);
    let rss_before = sut.rss_kib();
    let mut conns: Vec<_> = (0..N).map(|_| sut.connect("dumb/line")).collect();
    for round in 0..2 {
        for c in &mut conns {
            c.write_all(b"PING\n").expect("write");
        }
        for (i, c) in conns.iter_mut().enumerate() {
            assert_eq!(read_line(c), "PONG\n", "connection {i}, round {round}");
        }
    }
    let rss_after = sut.rss_kib();
    // ~300 B per idle connection measured (docs/BENCHMARKS.md); allow 2 KiB each.
    assert!(
        rss_after.saturating_sub(rss_before) < (N as u64 * 2048) / 1024,
        "io_conn RSS grew from {rss_before} KiB to {rss_after} KiB for {N} connections"
    );
    drop(conns);
    sut.stop();
}
