//! `http` (http framing): a small HTTP/1.1 origin server.
//!
//! | request | reply |
//! |---|---|
//! | `GET /` | `200`, body `hello\n` (what nginx returns in the benchmark) |
//! | `GET /whoami` | `200`, body `IP:PORT\n`: the client's address as io_conn saw it (`[addr]:port` for IPv6) |
//! | `GET /metrics` | `200`, the stats segment in Prometheus text: exactly what `viewstats --prometheus` prints (`503` if the segment cannot be read) |
//! | `GET` anything else | `404` |
//! | any other method | `405` with `Allow: GET, HEAD` |
//! | `HEAD` | as `GET`, without the body |
//!
//! Every reply carries `Server`, `Date` (IMF-fixdate, formatted once per second), `Content-Type`
//! and `Content-Length`. io_conn has already found where the request ends and refused what is
//! malformed (`400`), too large (`413`) or has too large a head (`431`): md gets one whole
//! request (head and body) per message and parses the head again with `httparse`, here to read
//! the method, the path and whether the connection goes on.
//!
//! **Connections.** HTTP/1.1 keeps the connection unless the request says `Connection: close`;
//! HTTP/1.0 closes it unless it says `Connection: keep-alive`. md answers such a last request
//! with `Connection: close` and does nothing else: io_conn's framer marked the request as the
//! connection's last, reads nothing after it, and closes the connection once this reply is out
//! (so under `request` dispatch md never has to CLOSE a flow that other md instances share).
//!
//! **Cost.** `/` and `/whoami` allocate nothing: the reply is written into the flow's outbox from
//! static pieces, a `Content-Length` formatted on the stack and the cached `Date`; a keep-alive
//! HTTP/1.1 `GET /` (the benchmark's request) copies one cached reply, rebuilt once per second.
//! The wall clock is read once per second, not per reply (see `DateCache`). `/metrics` maps the
//! stats segment read-only for each scrape and renders it with viewstats' code.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use httparse::{Header, Status as Parsed};
use shmq::frame::OpenInfo;
use shmq::region::Backend;

use crate::service::{Ctx, Service, Status};
use crate::services::cmd;

/// Header slots md parses a request head into: io_conn has refused heads with more fields than
/// `io_conn.http.max_headers`, which is at most this.
const MAX_HEADERS: usize = config::MAX_HTTP_HEADERS as usize;

/// Where `/metrics` finds the stats segment, and how viewstats would label the md slots.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// `shared.name`.
    pub name: String,
    /// `shared.shm_backend`.
    pub backend: Backend,
    /// `[[md.group]]` tables (viewstats' `shmsrv_md_group_info` labels).
    pub groups: Vec<config::Group>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self::from(&config::Config::default())
    }
}

impl From<&config::Config> for HttpOptions {
    fn from(cfg: &config::Config) -> Self {
        Self {
            name: cfg.shared.name.clone(),
            backend: match cfg.shared.shm_backend {
                config::ShmBackend::Posix => Backend::Posix,
                config::ShmBackend::Sysv => Backend::Sysv,
            },
            groups: cfg.md.groups.clone(),
        }
    }
}

/// The `http` service: its options and the cached `Date` value.
#[derive(Debug)]
pub struct Http {
    target: viewstats::Target,
    date: DateCache,
}

/// Per-flow state: the client's address (from OPEN).
#[derive(Debug, Clone, Copy)]
pub struct HttpFlow {
    peer: SocketAddr,
}

impl Http {
    /// The service; `/metrics` reads the segment `opts` names.
    pub fn new(opts: HttpOptions) -> Self {
        let target = viewstats::Target {
            name: opts.name,
            backend: opts.backend,
            interval: std::time::Duration::from_secs(1),
            groups: opts.groups,
            filter: viewstats::Filter::default(),
        };
        Self { target, date: DateCache::default() }
    }
}

impl Service for Http {
    type Flow = HttpFlow;

    fn open(&mut self, info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<HttpFlow> {
        Some(HttpFlow { peer: info.peer })
    }

    fn message(&mut self, flow: &mut HttpFlow, msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        let mut slots = [const { MaybeUninit::<Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = req.parse_with_uninit_headers(msg, &mut slots);
        let (Ok(Parsed::Complete(_)), Some(method), Some(target), Some(version)) =
            (parsed, req.method, req.path, req.version)
        else {
            // io_conn frames requests with the same parser, so only a listener that gives this
            // service another framing gets here.
            cx.count(cmd::HTTP_OTHER);
            cx.error();
            let date = self.date.get(cx.now());
            send(cx, date, &Reply::BAD_REQUEST, b"Bad Request\n", true, false, false);
            return Status::Done;
        };
        let close = closes(version, req.headers);
        let head = method == "HEAD";
        let keep_alive_10 = version == 0 && !close;
        let date = self.date.get(cx.now());
        if method != "GET" && !head {
            cx.count(cmd::HTTP_OTHER);
            let r = Reply { extra: b"Allow: GET, HEAD\r\n", ..Reply::NOT_ALLOWED };
            send(cx, date, &r, b"Method Not Allowed\n", close, keep_alive_10, head);
            return Status::Done;
        }
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        match path {
            "/" => {
                cx.count(cmd::HTTP_ROOT);
                if !close && !keep_alive_10 && !head {
                    // HTTP/1.1 keep-alive GET: the cached reply, one copy.
                    let root = self.date.root();
                    cx.send(root);
                } else {
                    send(cx, date, &Reply::OK, ROOT_BODY, close, keep_alive_10, head);
                }
            }
            "/whoami" => {
                cx.count(cmd::HTTP_WHOAMI);
                let mut b = [0u8; 64]; // "[v6]:port\n" is at most 48 bytes
                let mut w = &mut b[..];
                let n = match writeln!(w, "{}", flow.peer) {
                    Ok(()) => 64 - w.len(),
                    Err(_) => 0,
                };
                send(cx, date, &Reply::OK, &b[..n], close, keep_alive_10, head);
            }
            "/metrics" => {
                cx.count(cmd::HTTP_METRICS);
                match shmq::stats::StatsReader::attach(self.target.backend, &self.target.name) {
                    Ok(r) => {
                        let text = viewstats::prometheus(&self.target, &r.snapshot(), false);
                        let m = Reply { content_type: PROMETHEUS, ..Reply::OK };
                        send(cx, date, &m, text.as_bytes(), close, keep_alive_10, head);
                    }
                    Err(_) => {
                        cx.error();
                        let body = b"stats segment not readable\n";
                        send(cx, date, &Reply::UNAVAILABLE, body, close, keep_alive_10, head);
                    }
                }
            }
            _ => {
                cx.count(cmd::HTTP_OTHER);
                send(cx, date, &Reply::NOT_FOUND, b"Not Found\n", close, keep_alive_10, head);
            }
        }
        Status::Done
    }
}

/// The request ends the connection: HTTP/1.1 with a `close` token in `Connection`, HTTP/1.0
/// without `keep-alive` (the rule io_conn's framer applies).
fn closes(version: u8, headers: &[Header<'_>]) -> bool {
    let (mut close, mut keep) = (false, false);
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
        for t in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            close |= t.eq_ignore_ascii_case(b"close");
            keep |= t.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    close || (version == 0 && !keep)
}

const TEXT: &[u8] = b"text/plain; charset=utf-8";
/// The body of `GET /` (what nginx returns in the benchmark).
const ROOT_BODY: &[u8] = b"hello\n";
const PROMETHEUS: &[u8] = b"text/plain; version=0.0.4; charset=utf-8";

/// The fixed parts of a response.
struct Reply {
    /// `HTTP/1.1 200 OK\r\n`.
    status: &'static [u8],
    content_type: &'static [u8],
    /// More header lines, each ending with `\r\n`.
    extra: &'static [u8],
}

impl Reply {
    const OK: Reply = Reply::new(b"HTTP/1.1 200 OK\r\n");
    const BAD_REQUEST: Reply = Reply::new(b"HTTP/1.1 400 Bad Request\r\n");
    const NOT_FOUND: Reply = Reply::new(b"HTTP/1.1 404 Not Found\r\n");
    const NOT_ALLOWED: Reply = Reply::new(b"HTTP/1.1 405 Method Not Allowed\r\n");
    const UNAVAILABLE: Reply = Reply::new(b"HTTP/1.1 503 Service Unavailable\r\n");

    const fn new(status: &'static [u8]) -> Self {
        Self { status, content_type: TEXT, extra: b"" }
    }
}

/// Where a reply is written: the flow's outbox, or the cached `GET /` reply.
trait Out {
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Ctx<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.send(bytes);
    }
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Writes status line, headers and `body` (for `HEAD` only its length) into the flow's outbox.
fn send(
    cx: &mut Ctx<'_>,
    date: &[u8],
    r: &Reply,
    body: &[u8],
    close: bool,
    keep_alive_10: bool,
    head: bool,
) {
    write_reply(cx, date, r, body, close, keep_alive_10, head);
}

/// Writes status line, headers and `body` (for `HEAD` only its length) to `out`.
fn write_reply(
    out: &mut impl Out,
    date: &[u8],
    r: &Reply,
    body: &[u8],
    close: bool,
    keep_alive_10: bool,
    head: bool,
) {
    out.put(r.status);
    out.put(b"Server: shmsrv\r\nDate: ");
    out.put(date);
    out.put(b"\r\nContent-Type: ");
    out.put(r.content_type);
    out.put(b"\r\nContent-Length: ");
    let mut digits = [0u8; 20];
    out.put(format_u64(body.len() as u64, &mut digits));
    out.put(b"\r\n");
    out.put(r.extra);
    if close {
        out.put(b"Connection: close\r\n");
    } else if keep_alive_10 {
        out.put(b"Connection: keep-alive\r\n");
    }
    out.put(b"\r\n");
    if !head {
        out.put(body);
    }
}

/// `n` in decimal, written at the end of `buf`.
fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The `Date` header value (IMF-fixdate, RFC 9110 §5.6.7), formatted at most once per second,
/// and the whole reply to a keep-alive `GET /` built with it (the benchmark's request).
///
/// The wall clock is read only when the cached second may have ended: `valid_until` is the next
/// second boundary on the monotonic clock, compared with the runner's batch clock
/// ([`Ctx::now`], read once per batch anyway). Reading the wall clock per reply was ~11 % of
/// md's samples under wrk (docs/BENCHMARKS.md). A reply may carry the previous second for at
/// most the length of one batch: `Date` is the server's best approximation, not an instant.
#[derive(Debug, Default)]
struct DateCache {
    secs: u64,
    text: [u8; 29],
    /// Until when `text` is current (batch clock); `None` before the first read.
    valid_until: Option<Instant>,
    /// `Reply::OK` with body `hello\n` and this `Date`, for a keep-alive `GET /`: one copy into
    /// the outbox per request. Rebuilt in place when the second changes (no allocation after the
    /// first).
    root: Vec<u8>,
}

impl DateCache {
    /// The value for a reply in the batch that started at `now`.
    fn get(&mut self, now: Instant) -> &[u8] {
        self.get_with(now, || SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
    }

    /// [`Self::get`] with the wall clock (time since the Unix epoch) from `wall`.
    fn get_with(&mut self, now: Instant, wall: impl FnOnce() -> Duration) -> &[u8] {
        if self.valid_until.is_none_or(|t| now >= t) {
            let w = wall();
            // Until the next second boundary of the wall clock, on the monotonic clock.
            self.valid_until =
                Some(now + Duration::from_nanos(1_000_000_000 - u64::from(w.subsec_nanos())));
            if w.as_secs() != self.secs || self.text[0] == 0 {
                self.secs = w.as_secs();
                self.text = rt::httpdate::imf_fixdate(self.secs);
                self.root.clear();
                write_reply(&mut self.root, &self.text, &Reply::OK, ROOT_BODY, false, false, false);
            }
        }
        &self.text
    }

    /// The cached keep-alive reply to `GET /` (call [`Self::get`] first in the batch).
    fn root(&self) -> &[u8] {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_is_read_once_per_second_and_the_root_reply_follows_it() {
        let mut d = DateCache::default();
        let t0 = Instant::now();
        let reads = std::cell::Cell::new(0);
        let at = |secs: u64, nanos: u32| {
            reads.set(reads.get() + 1);
            Duration::new(secs, nanos)
        };
        assert_eq!(
            d.get_with(t0, || at(784_111_777, 300_000_000)),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        let root = |d: &DateCache| String::from_utf8(d.root().to_vec()).expect("utf-8");
        assert_eq!(
            root(&d),
            "HTTP/1.1 200 OK\r\nServer: shmsrv\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 6\r\n\r\nhello\n"
        );
        // Within the same second of the wall clock (0.7 s left): no read.
        let same = d.get_with(t0 + Duration::from_millis(699), || at(0, 0)).to_vec();
        assert_eq!(same, b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(reads.get(), 1);
        // At the boundary: read again, and the cached reply carries the new second.
        d.get_with(t0 + Duration::from_millis(700), || at(784_111_778, 0));
        assert_eq!(reads.get(), 2);
        assert!(root(&d).contains("Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n"));
    }

    #[test]
    fn numbers() {
        let mut b = [0u8; 20];
        assert_eq!(format_u64(0, &mut b), b"0");
        assert_eq!(format_u64(6, &mut b), b"6");
        assert_eq!(format_u64(1234567890, &mut b), b"1234567890");
        assert_eq!(format_u64(u64::MAX, &mut b), b"18446744073709551615");
    }

    #[test]
    fn connection_rules() {
        let h = |v: &'static [u8]| [Header { name: "Connection", value: v }];
        assert!(!closes(1, &[]));
        assert!(closes(1, &h(b"close")));
        assert!(closes(1, &h(b"Upgrade , Close")));
        assert!(closes(0, &[]));
        assert!(!closes(0, &h(b"keep-alive")));
        assert!(closes(0, &h(b"keep-alive, close")));
    }
}
