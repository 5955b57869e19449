//! The `http` framing and the built-in `http` service, spoken to by real clients: curl, Python's
//! `http.client` (pipelined), wrk, and raw sockets for what no well-behaved client sends.
//! curl and wrk must be installed (`.ci/setup` does it); a missing one fails the test loudly.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};

use super::*;

/// An `http` listener on `addr` with the given dispatch.
fn http_listener(addr: &str, dispatch: &str) -> String {
    format!(
        "\n[[io_conn.listener]]\naddress = \"{addr}\"\nservice = \"http\"\n\
         dispatch = \"{dispatch}\"\npipeline_depth = 4\n"
    )
}

/// io_conn with `mds` md children and one `http` listener (its address is `addr("http/http")`).
fn start(test: &str, mds: u32, listener: &str) -> Server {
    Server::start_with(
        test,
        Setup {
            spawn_md: mds,
            max_instances: mds,
            listeners: listener,
            // A small head limit, so 431 is cheap to provoke; max_message stays 64KiB.
            io_extra: "[io_conn.http]\nmax_head = \"2KiB\"\nmax_headers = 20\n",
            ..Setup::default()
        },
    )
}

fn url(a: SocketAddr, path: &str) -> String {
    match a {
        SocketAddr::V4(_) => format!("http://{a}{path}"),
        SocketAddr::V6(v6) => format!("http://[{}]:{}{path}", v6.ip(), v6.port()),
    }
}

/// Runs a client tool with a watchdog-sized timeout; panics if it is not installed.
fn run(tool: &str, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg(WATCHDOG.as_secs().to_string())
        .arg(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e} (install it: .ci/setup)"));
    assert_ne!(out.status.code(), Some(127), "{tool} is not installed (see .ci/setup)");
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Sends `req` on a fresh connection and reads until the server closes it.
fn raw(a: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(a).expect("connect");
    s.set_read_timeout(Some(WATCHDOG)).expect("timeout");
    s.write_all(req).expect("write");
    text(&read_to_eof(&mut s))
}

/// Splits a byte stream of responses into (status line, headers, body) triples by
/// Content-Length (no chunked responses here).
fn responses(mut s: &str) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    while !s.is_empty() {
        let (head, rest) = s.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {s:?}"));
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        let len: usize = headers
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
            .parse()
            .expect("length");
        v.push((status.to_owned(), headers.to_owned(), rest[..len].to_owned()));
        s = &rest[len..];
    }
    v
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn curl_keep_alive_whoami_and_reuse() {
    let sut = start("http_curl", 2, &http_listener("127.0.0.1:0", "request"));
    let a = sut.addr("http/http");
    // Two URLs on one connection: curl says it re-used it; /whoami is curl's own address.
    let out =
        run("curl", &["-sv", "-w", "local_port=%{local_port}\n", &url(a, "/"), &url(a, "/whoami")]);
    assert!(out.status.success(), "curl: {out:?}");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stderr.contains("Re-using existing connection"), "no reuse:\n{stderr}");
    assert!(stderr.contains("< Content-Type: text/plain"), "{stderr}");
    assert!(stderr.contains("< Date: "), "{stderr}");
    let port = stdout.lines().find_map(|l| l.strip_prefix("local_port=")).expect("port");
    assert_eq!(
        stdout,
        format!("hello\nlocal_port={port}\n127.0.0.1:{port}\nlocal_port={port}\n"),
        "{stderr}"
    );
    // HEAD: the GET's headers, no body.
    let out = run("curl", &["-sI", &url(a, "/")]);
    let head = text(&out.stdout);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("Content-Length: 6\r\n"));
    assert!(head.ends_with("\r\n\r\n"), "a body after HEAD: {head:?}");
    // 404 and 405 with Allow.
    let out = run("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", &url(a, "/nope")]);
    assert_eq!(text(&out.stdout), "404");
    let out = run("curl", &["-si", "-X", "DELETE", &url(a, "/")]);
    let r = text(&out.stdout);
    assert!(r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD\r\n"), "{r}");
    sut.stop();
}

#[test]
fn curl_whoami_over_ipv6() {
    let sut = start("http_v6", 1, &http_listener("[::1]:0", "request"));
    let a = sut.addr("http/http");
    assert!(a.is_ipv6());
    let out = run("curl", &["-sg", "-w", " %{local_port}", &url(a, "/whoami")]);
    let got = text(&out.stdout);
    let (body, port) = got.split_once(' ').expect("body and port");
    assert_eq!(body, format!("[::1]:{port}\n"));
    sut.stop();
}

/// Garbage, a head above max_head, a body above max_message: 400, 431, 413, then the connection
/// closes (EOF, not a reset) — also after pipelined good requests, whose replies come first.
#[test]
fn errors_400_431_413_in_order_then_close() {
    for dispatch in ["request", "flow"] {
        let sut =
            start(&format!("http_err_{dispatch}"), 2, &http_listener("127.0.0.1:0", dispatch));
        let a = sut.addr("http/http");
        let got = raw(a, b"garbage\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
        assert!(got.contains("Connection: close\r\n"), "{got}");
        // Dated and named like md's replies (io_conn writes this one itself).
        assert!(got.contains("\r\nServer: shmsrv\r\n"), "{got}");
        let date = got.split("\r\nDate: ").nth(1).and_then(|r| r.split("\r\n").next());
        let date = date.unwrap_or_else(|| panic!("no Date: {got}"));
        assert!(date.len() == 29 && date.ends_with(" GMT"), "Date {date:?}");
        // curl: HTTP/1.1 without Host.
        let out = run(
            "curl",
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host:", &url(a, "/")],
        );
        assert_eq!(text(&out.stdout), "400");
        let big = format!("X-Big: {}", "a".repeat(3000));
        let out =
            run("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &big, &url(a, "/")]);
        assert_eq!(text(&out.stdout), "431");
        let body = sut.dir.join("big.bin");
        std::fs::write(&body, vec![b'x'; 70_000]).expect("write body");
        let at = format!("@{}", body.display());
        let out = run(
            "curl",
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", &at, &url(a, "/")],
        );
        assert_eq!(text(&out.stdout), "413");
        // Pipelined: three good requests, then a bad one, then one that must not be answered.
        let mut req = Vec::new();
        for p in ["/", "/whoami", "/"] {
            req.extend_from_slice(format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
        req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n");
        req.extend_from_slice(GET);
        let got = raw(a, &req);
        let rs = responses(&got);
        let st: Vec<&str> = rs.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            st,
            ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 400 Bad Request"],
            "{dispatch}: {got}"
        );
        assert_eq!((rs[0].2.as_str(), rs[2].2.as_str()), ("hello\n", "hello\n"));
        assert!(rs[1].2.starts_with("127.0.0.1:"), "{}", rs[1].2);
        let v = sut.stats();
        assert!(stat(&v, "io", 0, "framing_errors").unwrap_or(0) >= 5, "{v}");
        sut.stop();
    }
}

/// `Connection: close` (and HTTP/1.0) is answered, then the connection closes: nothing after it
/// is read or answered. HTTP/1.0 with keep-alive keeps it.
#[test]
fn connection_close_and_http_1_0() {
    for dispatch in ["request", "flow"] {
        let sut =
            start(&format!("http_close_{dispatch}"), 2, &http_listener("127.0.0.1:0", dispatch));
        let a = sut.addr("http/http");
        let req =
            [GET, b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", GET].concat();
        let got = raw(a, &req);
        let rs = responses(&got);
        assert_eq!(rs.len(), 2, "{dispatch}: {got}");
        assert!(rs[1].1.contains("Connection: close"), "{got}");
        assert!(rs[1].2.starts_with("127.0.0.1:"), "{got}");
        // HTTP/1.0: closed after one reply (curl says so), kept with keep-alive.
        let out = run("curl", &["-sv", "-0", &url(a, "/"), &url(a, "/")]);
        let (o, e) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(o, "hello\nhello\n");
        assert!(!e.contains("Re-using existing connection"), "{e}");
        let out =
            run("curl", &["-sv", "-0", "-H", "Connection: keep-alive", &url(a, "/"), &url(a, "/")]);
        let (o, e) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(o, "hello\nhello\n");
        assert!(e.contains("Re-using existing connection"), "{e}");
        assert!(e.contains("< Connection: keep-alive"), "{e}");
        sut.stop();
    }
}

/// A chunked POST is framed exactly: its 405 comes back, and the next request on the same
/// connection is answered (curl re-uses it).
#[test]
fn curl_chunked_post_then_get_on_one_connection() {
    let sut = start("http_chunked", 2, &http_listener("127.0.0.1:0", "request"));
    let a = sut.addr("http/http");
    let out = run(
        "curl",
        &[
            "-sv",
            "-w",
            "%{http_code}\n",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "hello, chunks",
            &url(a, "/"),
            "--next",
            "-w",
            "%{http_code}\n",
            &url(a, "/"),
        ],
    );
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert!(e.contains("> Transfer-Encoding: chunked"), "{e}");
    assert!(e.contains("Re-using existing connection"), "{e}");
    assert_eq!(o, "Method Not Allowed\n405\nhello\n200\n", "{e}");
    // The same by hand, split at every byte: chunk sizes, extensions and a trailer.
    let body = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
    let mut s = TcpStream::connect(a).expect("connect");
    s.set_read_timeout(Some(WATCHDOG)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    for b in body.iter() {
        s.write_all(&[*b]).expect("write");
    }
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
    let got = text(&read_to_eof(&mut s));
    let rs = responses(&got);
    assert_eq!(rs.len(), 2, "{got}");
    assert!(rs[0].0.starts_with("HTTP/1.1 405"), "{got}");
    assert_eq!(rs[1].2, format!("{}\n", s.local_addr().expect("addr")));
    sut.stop();
}

/// Python's http.client reads the replies of 60 requests written before any reply was read
/// (pipelining, beyond pipeline_depth = 4), over 2 md: every reply in order, each the right one.
#[test]
fn python_http_client_pipelining_in_order() {
    let sut = start("http_pipeline", 2, &http_listener("127.0.0.1:0", "request"));
    let a = sut.addr("http/http");
    let script = r#"
import http.client, socket, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port))
paths = []
for i in range(60):
    paths.append(["/", "/whoami", "/missing-%d" % i, "HEAD /"][i % 4])
out = b""
for p in paths:
    if p.startswith("HEAD "):
        out += b"HEAD %s HTTP/1.1\r\nHost: t\r\n\r\n" % p[5:].encode()
    else:
        out += b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode()
s.sendall(out)
f = s.makefile("rb")
class Keep:
    # One buffered reader for every response (bytes of the next reply may be buffered already);
    # HTTPResponse closes its file after the body: not this one.
    def __getattr__(self, name):
        return getattr(f, name)
    def close(self):
        pass
class One:
    def makefile(self, *a, **k):
        return Keep()
me = "%s:%d" % s.getsockname()[:2]
for i, p in enumerate(paths):
    r = http.client.HTTPResponse(One(), method="HEAD" if p.startswith("HEAD ") else "GET")
    r.begin()
    body = r.read().decode()
    if p == "/":
        ok = r.status == 200 and body == "hello\n"
    elif p == "/whoami":
        ok = r.status == 200 and body == me + "\n"
    elif p.startswith("HEAD "):
        ok = r.status == 200 and body == "" and r.getheader("Content-Length") == "6"
    else:
        ok = r.status == 404
    if not ok:
        print("reply %d to %s: %d %r" % (i, p, r.status, body))
        sys.exit(1)
print("ok", len(paths))
"#;
    let out = run("python3", &["-c", script, &a.port().to_string()]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok 60\n");
    sut.stop();
}

/// wrk for two seconds on 50 connections: no socket error, every reply a 2xx.
#[test]
fn wrk_smoke() {
    let sut = start("http_wrk", 2, &http_listener("127.0.0.1:0", "request"));
    let a = sut.addr("http/http");
    let out = run("wrk", &["-t1", "-c50", "-d2s", &url(a, "/")]);
    let o = text(&out.stdout);
    assert!(out.status.success(), "wrk: {o}{}", text(&out.stderr));
    assert!(!o.contains("Socket errors"), "{o}");
    assert!(!o.contains("Non-2xx"), "{o}");
    let n: u64 = o
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .map(|(n, _)| n.trim().parse().expect("count"))
        .unwrap_or_else(|| panic!("no request count in {o}"));
    assert!(n > 0, "{o}");
    // Every request io_conn framed was answered by an md (root counts on both slots).
    let v = sut.stats();
    let root: u64 = (0..2).map(|i| stat(&v, "md", i, "commands.http.root").unwrap_or(0)).sum();
    assert!(root >= n, "md counted {root} GET / for wrk's {n}: {v}");
    sut.stop();
}

/// `/metrics` is what `viewstats --prometheus` prints: the same families and series (values
/// move between the two reads).
#[test]
fn metrics_match_viewstats_prometheus() {
    let sut = start("http_metrics", 1, &http_listener("127.0.0.1:0", "request"));
    let a = sut.addr("http/http");
    let out = run("curl", &["-sf", &url(a, "/metrics")]);
    assert!(out.status.success(), "{out:?}");
    let ours = text(&out.stdout);
    let vs = Command::new(util::viewstats_bin())
        .args(["--prometheus", "--name", &sut.name, "--backend", "posix"])
        .output()
        .expect("viewstats");
    assert!(vs.status.success(), "{vs:?}");
    let theirs = text(&vs.stdout);
    let series = |t: &str| -> BTreeSet<String> {
        t.lines()
            .map(|l| match l.starts_with('#') {
                true => l.to_owned(),
                false => l.rsplit_once(' ').map_or(l, |(k, _)| k).to_owned(),
            })
            .collect()
    };
    assert_eq!(series(&ours), series(&theirs));
    assert!(ours.contains("shmsrv_md_commands_total{"), "{ours}");
    sut.stop();
}
