//! PROXY protocol listeners end to end: the real io_conn with real md children, an `http`
//! listener with `proxy_protocol`, test clients that bind their own loopback source address
//! before connecting (127.0.0.2 is the trusted balancer, 127.0.0.9 an untrusted host), and the
//! built-in `/whoami`, which answers the peer address md got in OPEN. Every wait has a watchdog;
//! nothing is timed.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;

use io_conn::proxy::{Addrs, encode_v2};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn};

mod util;
use util::*;

const BALANCER: &str = "127.0.0.2";
const STRANGER: &str = "127.0.0.9";
const WHOAMI: &[u8] = b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n";
const WHOAMI_LAST: &[u8] = b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/// io_conn with one md and an `http` listener expecting `proxy` headers from the balancer.
fn start(test: &str, proxy: &str, dispatch: &str, io_extra: &str) -> Server {
    let listener = format!(
        "\n[[io_conn.listener]]\naddress = \"127.0.0.1:0\"\nservice = \"http\"\n\
         dispatch = \"{dispatch}\"\nproxy_protocol = \"{proxy}\"\n\
         proxy_from = [\"{BALANCER}/32\", \"::1\"]\n"
    );
    Server::start_with(
        test,
        Setup { spawn_md: 1, max_instances: 1, listeners: &listener, io_extra, ..Setup::default() },
    )
}

/// A connection from `src` (bound before `connect`, so the server sees that address).
fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let SocketAddr::V4(to) = to else { panic!("the test listeners are IPv4") };
    let fd = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .expect("socket");
    let src: SocketAddrV4 = format!("{src}:0").parse().expect("source address");
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(src)).expect("bind the source address");
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(to)).expect("connect");
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(WATCHDOG)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

fn v2(src: &str, dst: &str) -> Vec<u8> {
    encode_v2(Some(Addrs { src: src.parse().expect("src"), dst: dst.parse().expect("dst") }), &[])
}

/// The bodies of the HTTP responses in `s` (each has a Content-Length), in order.
fn bodies(mut s: &str) -> Vec<String> {
    let mut v = Vec::new();
    while !s.is_empty() {
        let (head, rest) = s.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {s:?}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
            .parse()
            .expect("length");
        v.push(rest[..len].to_owned());
        s = &rest[len..];
    }
    v
}

/// Sends `bytes` from `src` and reads every response until the server closes.
fn exchange(src: &str, to: SocketAddr, bytes: &[u8]) -> (Vec<String>, SocketAddr) {
    let mut s = connect_from(src, to);
    let me = s.local_addr().expect("local address");
    s.write_all(bytes).expect("write");
    (bodies(&String::from_utf8_lossy(&read_to_eof(&mut s))), me)
}

/// Reads one HTTP response (with Content-Length) from a connection that stays open; its body.
fn read_body(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
            if rest.len() >= len {
                assert_eq!(rest.len(), len, "one response only: {text:?}");
                return bodies(&text).remove(0);
            }
        }
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed early: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// The server closes `s` without a byte of reply (EOF or reset), within the watchdog.
fn closed_silently(s: &mut TcpStream) {
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected a close without reply, got {other:?}"),
    }
}

#[test]
fn v2_whoami_names_the_carried_client_local_keeps_the_peer() {
    let sut = start("proxy_v2", "v2", "request", "message_deadline = \"1s\"");
    let a = sut.addr("http/http");
    let front = "192.0.2.1:80";

    // IPv4 claim, then an IPv6 one: /whoami names the client the header carries.
    let (b, _) = exchange(BALANCER, a, &[&v2("203.0.113.7:5555", front)[..], WHOAMI_LAST].concat());
    assert_eq!(b, ["203.0.113.7:5555\n"]);
    let h = v2("[2001:db8::1]:443", "[2001:db8::2]:80");
    let (b, _) = exchange(BALANCER, a, &[&h[..], WHOAMI_LAST].concat());
    assert_eq!(b, ["[2001:db8::1]:443\n"]);
    // IPv4-mapped IPv6 in the header comes out as IPv4.
    let h = v2("[::ffff:198.51.100.4]:1000", "[::ffff:192.0.2.1]:80");
    let (b, _) = exchange(BALANCER, a, &[&h[..], WHOAMI_LAST].concat());
    assert_eq!(b, ["198.51.100.4:1000\n"]);
    // LOCAL (a health check): the connection keeps its real peer.
    let (b, me) = exchange(BALANCER, a, &[&encode_v2(None, &[])[..], WHOAMI_LAST].concat());
    assert_eq!(b, [format!("{me}\n")]);
    assert!(me.to_string().starts_with("127.0.0.2:"), "{me}");

    // Pipelined requests in the same write as the header (with TLVs): answered in order.
    let tlvs = [&[0x01, 0, 2][..], b"h2", &[0x04, 0, 3, 0, 0, 0]].concat();
    let h = encode_v2(
        Some(Addrs { src: "203.0.113.8:6000".parse().unwrap(), dst: front.parse().unwrap() }),
        &tlvs,
    );
    let get = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    let (b, _) = exchange(BALANCER, a, &[&h[..], WHOAMI, get, WHOAMI, get, WHOAMI_LAST].concat());
    assert_eq!(b.len(), 5, "{b:?}");
    for i in [0, 2, 4] {
        assert_eq!(b[i], "203.0.113.8:6000\n", "{b:?}");
    }
    assert_ne!(b[1], b[0], "GET / is not /whoami: {b:?}");
    assert_eq!(b[1], b[3]);

    // The header and a request written one byte at a time.
    let mut s = connect_from(BALANCER, a);
    for byte in [&v2("203.0.113.9:7000", front)[..], WHOAMI_LAST].concat() {
        s.write_all(&[byte]).expect("write");
    }
    assert_eq!(bodies(&String::from_utf8_lossy(&read_to_eof(&mut s))), ["203.0.113.9:7000\n"]);

    // An untrusted host sending a header claiming someone else: closed at once, never served.
    let mut s = connect_from(STRANGER, a);
    let _ = s.write_all(&[&v2("203.0.113.66:1", front)[..], WHOAMI_LAST].concat());
    closed_silently(&mut s);
    sut.wait_io("the stranger refused", &[("proxy_refused_untrusted", 1)]);
    // A trusted host without a header (a plain request): closed, counted.
    let mut s = connect_from(BALANCER, a);
    s.write_all(WHOAMI_LAST).expect("write");
    closed_silently(&mut s);
    sut.wait_io("the plain request refused", &[("proxy_refused_invalid", 1), ("closed_error", 1)]);
    // A trusted host that sends half a header, then nothing: the message deadline closes it.
    let mut s = connect_from(BALANCER, a);
    s.write_all(&v2("203.0.113.7:5555", front)[..20]).expect("write");
    closed_silently(&mut s);
    // One that sends nothing at all: the same.
    let mut s = connect_from(BALANCER, a);
    closed_silently(&mut s);

    sut.wait_io(
        "every outcome counted",
        &[
            ("proxy_headers", 6),
            ("proxy_refused_untrusted", 1),
            ("proxy_refused_invalid", 3),
            ("closed_error", 1),
            ("closed_deadline", 2),
            ("connections_accepted", 9),
            ("connections_current", 0),
        ],
    );
    sut.stop();
}

#[test]
fn v1_flow_dispatch_and_per_ip_counts_the_carried_client() {
    // Flow dispatch: OPEN goes to md when the header is done, carrying the client's address.
    let sut = start("proxy_v1", "v1", "flow", "max_connections_per_ip = 1");
    let a = sut.addr("http/http");
    let h = b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 80\r\n";
    let (b, _) = exchange(BALANCER, a, &[&h[..], WHOAMI, WHOAMI, WHOAMI_LAST].concat());
    assert_eq!(b, ["203.0.113.7:5555\n"; 3]);
    let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 443 80\r\n";
    let (b, _) = exchange(BALANCER, a, &[&h[..], WHOAMI_LAST].concat());
    assert_eq!(b, ["[2001:db8::1]:443\n"]);
    let (b, me) = exchange(BALANCER, a, &[&b"PROXY UNKNOWN\r\n"[..], WHOAMI_LAST].concat());
    assert_eq!(b, [format!("{me}\n")]);

    // max_connections_per_ip = 1 counts the clients behind the balancer, not the balancer: two
    // clients at once are served; a second connection of one of them is refused.
    let mut c1 = connect_from(BALANCER, a);
    c1.write_all(b"PROXY TCP4 198.51.100.1 192.0.2.1 1 80\r\n").expect("write");
    c1.write_all(WHOAMI).expect("write");
    let mut c2 = connect_from(BALANCER, a);
    c2.write_all(b"PROXY TCP4 198.51.100.2 192.0.2.1 2 80\r\n").expect("write");
    c2.write_all(WHOAMI).expect("write");
    assert_eq!(read_body(&mut c1), "198.51.100.1:1\n");
    assert_eq!(read_body(&mut c2), "198.51.100.2:2\n");
    let mut c3 = connect_from(BALANCER, a);
    let _ = c3.write_all(b"PROXY TCP4 198.51.100.1 192.0.2.1 3 80\r\n");
    closed_silently(&mut c3);
    sut.wait_io(
        "the second connection of one client refused",
        &[("connections_refused_per_ip", 1)],
    );
    // A bad v1 header (two spaces): closed.
    let mut s = connect_from(BALANCER, a);
    s.write_all(b"PROXY TCP4  203.0.113.7 192.0.2.1 5555 80\r\n").expect("write");
    closed_silently(&mut s);
    drop((c1, c2));
    sut.wait_io(
        "every outcome counted",
        &[
            ("proxy_headers", 6),
            ("proxy_refused_invalid", 1),
            ("connections_refused_per_ip", 1),
            ("closed_error", 2),
            ("connections_current", 0),
        ],
    );
    sut.stop();
}

/// `io_conn --reload --config FILE`; panics unless io_conn applied it.
fn reload(sut: &Server, edit: impl Fn(String) -> String) {
    let old = std::fs::read_to_string(&sut.config).expect("read config");
    let new = edit(old.clone());
    assert_ne!(old, new, "the edit changed nothing");
    std::fs::write(&sut.config, new).expect("write config");
    let out = std::process::Command::new(io_conn_bin())
        .arg("--reload")
        .arg("--config")
        .arg(&sut.config)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run io_conn --reload");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reload refused: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("io_conn.listener["), "{stdout}");
}

/// Both keys reload live, for connections accepted afterwards: a stranger is refused, then
/// trusted once `proxy_from` names it, then served without a header once `proxy_protocol` is
/// "none"; a connection accepted before a reload keeps the settings it was accepted with.
#[test]
fn proxy_keys_reload_live() {
    let sut = start("proxy_reload", "v2", "request", "");
    let a = sut.addr("http/http");
    let claim = [&v2("203.0.113.7:5555", "192.0.2.1:80")[..], WHOAMI_LAST].concat();
    let mut s = connect_from(STRANGER, a);
    let _ = s.write_all(&claim);
    closed_silently(&mut s);
    sut.wait_io("the stranger refused", &[("proxy_refused_untrusted", 1)]);

    // A balancer connection that has sent half its header when the reload comes.
    let mut early = connect_from(BALANCER, a);
    early.write_all(&claim[..10]).expect("write");
    reload(&sut, |t| t.replace(&format!("\"{BALANCER}/32\""), "\"127.0.0.8/29\""));
    let (b, _) = exchange(STRANGER, a, &claim);
    assert_eq!(b, ["203.0.113.7:5555\n"]);
    early.write_all(&claim[10..]).expect("write");
    assert_eq!(bodies(&String::from_utf8_lossy(&read_to_eof(&mut early))), ["203.0.113.7:5555\n"]);
    // The balancer is no longer in proxy_from.
    let mut s = connect_from(BALANCER, a);
    let _ = s.write_all(&claim);
    closed_silently(&mut s);

    reload(&sut, |t| t.replace("proxy_protocol = \"v2\"", "proxy_protocol = \"none\""));
    let (b, me) = exchange(STRANGER, a, WHOAMI_LAST);
    assert_eq!(b, [format!("{me}\n")]);
    assert!(me.to_string().starts_with("127.0.0.9:"), "{me}");
    sut.wait_io(
        "counted",
        &[("proxy_refused_untrusted", 2), ("proxy_headers", 2), ("reloads_ok", 2)],
    );
    sut.stop();
}

/// A planned restart (SIGUSR2 and `io_conn --takeover`) passes on connections whose address
/// came from a PROXY header: afterwards each is still served as the client its header named
/// (also one whose request was half written at the switch), under both dispatch modes; a
/// connection that has not finished its header is closed; the old io_conn closed nothing else.
#[test]
fn takeover_keeps_proxied_connections_and_their_client_addresses() {
    for dispatch in ["request", "flow"] {
        let old = start(&format!("proxy_takeover_{dispatch}"), "v2", dispatch, "");
        let a = old.addr("http/http");
        let mut conns: Vec<(TcpStream, String)> = (0..6)
            .map(|i| {
                let client = format!("203.0.113.{}:{}", 10 + i, 4000 + i);
                let mut s = connect_from(BALANCER, a);
                s.write_all(&[&v2(&client, "192.0.2.1:80")[..], WHOAMI].concat()).unwrap();
                assert_eq!(read_body(&mut s), format!("{client}\n"), "{dispatch}: before");
                (s, client)
            })
            .collect();
        // Half a request on every connection at the switch: the successor gets it in the record.
        for (s, _) in &mut conns {
            s.write_all(&WHOAMI[..10]).unwrap();
        }
        // And one connection that has sent only half of its header.
        let mut half = connect_from(BALANCER, a);
        half.write_all(&v2("203.0.113.99:1", "192.0.2.1:80")[..10]).unwrap();
        let old_pid = old.pid();
        let succ = Successor::start(&old, 1);
        succ.wait_log("md instance 0 live");
        for (i, (s, client)) in conns.iter_mut().enumerate() {
            s.write_all(&WHOAMI[10..]).unwrap();
            assert_eq!(read_body(s), format!("{client}\n"), "{dispatch}: connection {i} after");
            s.write_all(WHOAMI).unwrap();
            assert_eq!(read_body(s), format!("{client}\n"), "{dispatch}: connection {i} again");
        }
        closed_silently(&mut half);
        // A new connection through the balancer is served by the successor.
        let (b, _) = exchange(
            BALANCER,
            a,
            &[&v2("198.51.100.9:9", "192.0.2.1:80")[..], WHOAMI_LAST].concat(),
        );
        assert_eq!(b, ["198.51.100.9:9\n"], "{dispatch}: a new connection after the switch");
        drop(conns);
        succ.stop();
        let mut old = old;
        let mut child = old.child.take().expect("old child");
        assert!(wait_exit(&mut child).success(), "{dispatch}: the old io_conn's exit");
        assert_eq!(child.id(), old_pid);
        // Only the connection without its header was closed at the switch.
        old.wait_log("connections over (successor; 1 closed", 1);
    }
}
