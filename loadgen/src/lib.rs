//! shmsrv's load generator (library; the `loadgen` binary is its command line).
//!
//! - **Closed loop** (no `rate`): every connection keeps `depth` requests in flight and sends the
//!   next one when a reply arrives. Latency = reply time − send time.
//! - **Open loop** (`rate` requests/s over all connections): connection `c` of `C` has a request
//!   due every `C / rate` seconds (staggered). A request is sent when due if fewer than `depth`
//!   are in flight on its connection, else it waits in the client; its latency is measured from
//!   the time it was *due*, not sent, so a stalled server cannot hide its stall by slowing the
//!   client (the coordinated-omission correction wrk2 makes).
//!
//! Every reply is cut out of the stream and checked against the request it answers (see
//! [`proto`]): a wrong or misdelivered reply, a malformed stream, a connection closed with
//! requests owed, or a reply older than `timeout` is counted, and the first few are described.
//! Connections can come from several source addresses (`127.0.0.x`), to go past one address's
//! ephemeral ports and to exercise per-address limits. Each thread runs one epoll loop over its
//! share of the connections; histograms (HdrHistogram, ns, 3 significant digits) are merged.
//!
//! Runs are bounded: `warmup + duration`, then at most `timeout` to collect the replies still
//! owed (checked, not counted in the rate).

pub mod proto;

use std::collections::{BinaryHeap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};

pub use proto::{Proto, Workload};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server.
    pub addr: SocketAddr,
    /// Protocol, requests and expected replies.
    pub workload: Workload,
    /// Connections (opened before the clock starts).
    pub conns: usize,
    /// Requests in flight per connection at most (closed loop: always this many).
    pub depth: usize,
    /// Open loop: total requests per second; `None` = closed loop.
    pub rate: Option<f64>,
    /// Measured time.
    pub duration: Duration,
    /// Time before measuring (load runs, replies are checked, nothing is recorded).
    pub warmup: Duration,
    /// Source addresses, used round-robin; empty = the kernel's choice.
    pub sources: Vec<IpAddr>,
    /// Threads (each one epoll loop over `conns / threads` connections).
    pub threads: usize,
    /// A request unanswered for this long is an error and ends the run.
    pub timeout: Duration,
}

/// What happened.
#[derive(Debug)]
pub struct Report {
    /// Requests sent in the measured window.
    pub sent: u64,
    /// Good replies received in the measured window (the throughput's numerator).
    pub replies: u64,
    /// Good replies outside the window (warm-up and the final collection).
    pub other_replies: u64,
    /// Wrong replies (well-formed, not the expected one).
    pub wrong: u64,
    /// Errors: connect failures, malformed streams, connections closed with replies owed,
    /// timeouts.
    pub errors: u64,
    /// Length of the measured window, seconds.
    pub secs: f64,
    /// Latency of the measured replies, ns.
    pub hist: Histogram<u64>,
    /// Requests that were due (open loop) but could not be sent by the end.
    pub unsent: u64,
    /// The first few errors, described.
    pub first_errors: Vec<String>,
}

impl Report {
    /// Nothing yet, for a run of `plan`.
    fn empty(plan: &Plan) -> Report {
        Report {
            sent: 0,
            replies: 0,
            other_replies: 0,
            wrong: 0,
            errors: 0,
            secs: plan.duration.as_secs_f64(),
            hist: new_hist(),
            unsent: 0,
            first_errors: Vec::new(),
        }
    }

    /// Good replies per second in the measured window.
    pub fn rate(&self) -> f64 {
        self.replies as f64 / self.secs.max(1e-9)
    }

    /// Latency at quantile `q` (0..=1), µs.
    pub fn us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e3
    }

    /// True if every reply was right and nothing failed.
    pub fn clean(&self) -> bool {
        self.wrong == 0 && self.errors == 0
    }

    /// One JSON object (for scripts).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent,
            "replies": self.replies,
            "other_replies": self.other_replies,
            "wrong": self.wrong,
            "errors": self.errors,
            "unsent": self.unsent,
            "secs": self.secs,
            "rate": self.rate(),
            "latency_us": {
                "p50": self.us(0.5), "p90": self.us(0.9), "p99": self.us(0.99),
                "p999": self.us(0.999), "max": self.hist.max() as f64 / 1e3,
                "mean": self.hist.mean() / 1e3,
            },
            "first_errors": self.first_errors,
        })
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:.0} replies/s ({} in {:.2} s); latency us p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}\n",
            self.rate(),
            self.replies,
            self.secs,
            self.us(0.5),
            self.us(0.9),
            self.us(0.99),
            self.us(0.999),
            self.hist.max() as f64 / 1e3,
        );
        s += &format!(
            "wrong {} errors {} unsent {} (sent {} in the window, {} other replies checked)\n",
            self.wrong, self.errors, self.unsent, self.sent, self.other_replies
        );
        for e in &self.first_errors {
            s += &format!("  error: {e}\n");
        }
        s
    }
}

const MAX_ERRORS_KEPT: usize = 10;

fn new_hist() -> Histogram<u64> {
    // 1 ns .. 1 hour, 3 significant digits; `saturating_record` keeps outliers at the top.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs the plan: opens the connections, runs the load, collects what is owed, reports.
pub fn run(plan: &Plan) -> anyhow::Result<Report> {
    anyhow::ensure!(plan.conns > 0, "at least one connection");
    anyhow::ensure!(plan.depth > 0, "depth is at least 1");
    anyhow::ensure!(plan.threads > 0, "at least one thread");
    if let Some(r) = plan.rate {
        anyhow::ensure!(r > 0.0 && r.is_finite(), "rate must be positive");
    }
    let threads = plan.threads.min(plan.conns);
    // Connections first, on this thread (so a refused connect fails fast with a clear message).
    let mut shares: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..plan.conns {
        let src = (!plan.sources.is_empty()).then(|| plan.sources[i % plan.sources.len()]);
        let sock = connect(plan.addr, src).map_err(|e| {
            let from = src.map(|s| format!(" from {s}")).unwrap_or_default();
            anyhow::anyhow!("connection {i} to {}{from}: {e}", plan.addr)
        })?;
        shares[i % threads].push(Conn::new(i as u32, sock));
    }
    let start = Instant::now() + Duration::from_millis(5);
    let results: Vec<anyhow::Result<Report>> = std::thread::scope(|s| {
        let hs: Vec<_> = shares
            .into_iter()
            .map(|conns| s.spawn(move || Worker::new(plan, conns, start)?.run()))
            .collect();
        hs.into_iter().map(|h| h.join().expect("loadgen worker panicked")).collect()
    });
    let mut total = Report::empty(plan);
    for r in results {
        let r = r?;
        total.sent += r.sent;
        total.replies += r.replies;
        total.other_replies += r.other_replies;
        total.wrong += r.wrong;
        total.errors += r.errors;
        total.unsent += r.unsent;
        total.hist.add(&r.hist).expect("same histogram bounds");
        for e in r.first_errors {
            if total.first_errors.len() < MAX_ERRORS_KEPT {
                total.first_errors.push(e);
            }
        }
    }
    Ok(total)
}

/// Connects (blocking, from `src` if given), then makes the socket non-blocking.
fn connect(addr: SocketAddr, src: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    if let Some(ip) = src {
        socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(SocketAddr::new(ip, 0)),
        )?;
    }
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(addr))?;
    let s = TcpStream::from(fd);
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

struct Conn {
    id: u32,
    sock: TcpStream,
    out: Vec<u8>,
    out_pos: usize,
    inb: Vec<u8>,
    /// (sequence, time the latency is measured from, ns since start) of each request in flight.
    inflight: VecDeque<(u64, u64)>,
    /// Open loop: due times of requests not sent yet (depth reached).
    waiting: VecDeque<u64>,
    next_seq: u64,
    writable_armed: bool,
    dead: bool,
}

impl Conn {
    fn new(id: u32, sock: TcpStream) -> Conn {
        Conn {
            id,
            sock,
            out: Vec::with_capacity(4096),
            out_pos: 0,
            inb: Vec::with_capacity(64 << 10),
            inflight: VecDeque::new(),
            waiting: VecDeque::new(),
            next_seq: 0,
            writable_armed: false,
            dead: false,
        }
    }
}

struct Worker<'p> {
    plan: &'p Plan,
    conns: Vec<Conn>,
    epoll: Epoll,
    start: Instant,
    r: Report,
    /// (Reverse due ns, connection index): open loop's next due request per connection.
    due: BinaryHeap<std::cmp::Reverse<(u64, usize)>>,
    interval_ns: u64,
    /// Read buffer, zeroed once (a fresh 64 KiB array per readable event cost a 64 KiB memset per
    /// reply at one connection: about as much CPU as the read itself).
    rbuf: Vec<u8>,
}

impl<'p> Worker<'p> {
    fn new(plan: &'p Plan, conns: Vec<Conn>, start: Instant) -> anyhow::Result<Worker<'p>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        for (i, c) in conns.iter().enumerate() {
            epoll.add(c.sock.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
        }
        let mut due = BinaryHeap::new();
        let mut interval_ns = 0;
        if let Some(rate) = plan.rate {
            // Each connection sends at rate / conns; connection k starts at k / rate.
            interval_ns = (plan.conns as f64 / rate * 1e9).max(1.0) as u64;
            for (i, c) in conns.iter().enumerate() {
                let first = (f64::from(c.id) / rate * 1e9) as u64;
                due.push(std::cmp::Reverse((first, i)));
            }
        }
        let r = Report::empty(plan);
        Ok(Worker { plan, conns, epoll, start, r, due, interval_ns, rbuf: vec![0; 64 << 10] })
    }

    fn now_ns(&self) -> u64 {
        Instant::now().saturating_duration_since(self.start).as_nanos() as u64
    }

    fn error(&mut self, what: String) {
        self.r.errors += 1;
        if self.r.first_errors.len() < MAX_ERRORS_KEPT {
            self.r.first_errors.push(what);
        }
    }

    fn run(mut self) -> anyhow::Result<Report> {
        let warm = self.plan.warmup.as_nanos() as u64;
        let end = warm + self.plan.duration.as_nanos() as u64;
        let hard_end = end + self.plan.timeout.as_nanos() as u64;
        let timeout_ns = self.plan.timeout.as_nanos() as u64;
        std::thread::sleep(self.start.saturating_duration_since(Instant::now()));
        if self.plan.rate.is_none() {
            for i in 0..self.conns.len() {
                for _ in 0..self.plan.depth {
                    self.send(i, 0, warm, end);
                }
                self.flush(i);
            }
        }
        let mut events = vec![EpollEvent::empty(); 1024];
        let mut last_check = 0u64;
        loop {
            let now = self.now_ns();
            // (`owed` scans every connection: only once the run is over.)
            if now >= hard_end
                || (now >= end && !self.conns.iter().any(|c| !c.dead && !c.inflight.is_empty()))
            {
                break;
            }
            // Open loop: requests that fell due.
            while let Some(&std::cmp::Reverse((t, i))) = self.due.peek() {
                if t > now || t >= end {
                    break;
                }
                self.due.pop();
                if !self.conns[i].dead {
                    self.conns[i].waiting.push_back(t);
                    self.send_waiting(i, warm, end);
                    self.flush(i);
                    self.due.push(std::cmp::Reverse((t + self.interval_ns, i)));
                }
            }
            // A reply older than the timeout: the server is stuck on it.
            if now - last_check >= 50_000_000 {
                last_check = now;
                for i in 0..self.conns.len() {
                    let c = &self.conns[i];
                    if let Some(&(seq, t)) = c.inflight.front()
                        && !c.dead
                        && now.saturating_sub(t) > timeout_ns
                    {
                        let id = c.id;
                        self.conns[i].dead = true;
                        self.error(format!(
                            "connection {id}: request {seq} unanswered after {:?}",
                            self.plan.timeout
                        ));
                    }
                }
            }
            let next_due = self.due.peek().map(|r| r.0.0).filter(|&t| t < end).unwrap_or(end);
            let wait_ns = next_due.saturating_sub(now).clamp(0, 50_000_000);
            // Round up to whole ms (epoll's unit); 0 when something is due now.
            let ms = wait_ns.div_ceil(1_000_000) as u16;
            let n = self.epoll.wait(&mut events, EpollTimeout::from(ms))?;
            for ev in &events[..n] {
                let i = ev.data() as usize;
                if ev.events().contains(EpollFlags::EPOLLOUT) {
                    self.flush(i);
                }
                if ev
                    .events()
                    .intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
                {
                    self.readable(i, warm, end);
                }
            }
        }
        for c in &self.conns {
            if !c.dead && !c.inflight.is_empty() {
                self.r.errors += 1;
                if self.r.first_errors.len() < MAX_ERRORS_KEPT {
                    self.r.first_errors.push(format!(
                        "connection {}: {} replies still owed at the end",
                        c.id,
                        c.inflight.len()
                    ));
                }
            }
            self.r.unsent += c.waiting.len() as u64;
        }
        Ok(self.r)
    }

    /// Queues one request on connection `i`, its latency measured from `from` (ns).
    fn send(&mut self, i: usize, from: u64, warm: u64, end: u64) {
        let now = self.now_ns();
        let c = &mut self.conns[i];
        if c.dead || now >= end {
            return;
        }
        let seq = c.next_seq;
        c.next_seq += 1;
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
        }
        self.plan.workload.write_request(c.id, seq, &mut c.out);
        let t = if self.plan.rate.is_some() { from } else { now };
        c.inflight.push_back((seq, t));
        if now >= warm {
            self.r.sent += 1;
        }
    }

    /// Open loop: sends waiting requests while the depth allows.
    fn send_waiting(&mut self, i: usize, warm: u64, end: u64) {
        while self.conns[i].inflight.len() < self.plan.depth {
            let Some(due) = self.conns[i].waiting.pop_front() else { break };
            self.send(i, due, warm, end);
        }
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        while c.out_pos < c.out.len() && !c.dead {
            match c.sock.write(&c.out[c.out_pos..]) {
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let (id, owed) = (c.id, c.inflight.len());
                    c.dead = true;
                    self.error(format!("connection {id}: write: {e} ({owed} replies owed)"));
                    return;
                }
            }
        }
        let c = &mut self.conns[i];
        let want = c.out_pos < c.out.len() && !c.dead;
        if want != c.writable_armed {
            c.writable_armed = want;
            let flags =
                if want { EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT } else { EpollFlags::EPOLLIN };
            let mut ev = EpollEvent::new(flags, i as u64);
            if let Err(e) = self.epoll.modify(c.sock.as_fd(), &mut ev) {
                let id = c.id;
                c.dead = true;
                self.error(format!("connection {id}: epoll: {e}"));
            }
        }
    }

    fn readable(&mut self, i: usize, warm: u64, end: u64) {
        let mut closed = None;
        loop {
            let c = &mut self.conns[i];
            if c.dead {
                return;
            }
            match c.sock.read(&mut self.rbuf) {
                Ok(0) => {
                    closed = Some("closed by the server".to_owned());
                    break;
                }
                Ok(n) => {
                    c.inb.extend_from_slice(&self.rbuf[..n]);
                    // A short read emptied the socket; epoll is level-triggered, so more
                    // bytes bring another event (saves a read that would say EAGAIN).
                    if n < self.rbuf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    closed = Some(format!("read: {e}"));
                    break;
                }
            }
        }
        let now = self.now_ns();
        let mut pos = 0;
        let mut answered = 0;
        loop {
            let c = &self.conns[i];
            let rest = &c.inb[pos..];
            if rest.is_empty() {
                break;
            }
            match self.plan.workload.reply_len(rest) {
                Ok(None) => break,
                Ok(Some(n)) => {
                    let Some((seq, t)) = self.conns[i].inflight.pop_front() else {
                        let id = self.conns[i].id;
                        self.conns[i].dead = true;
                        self.error(format!("connection {id}: a reply nobody asked for"));
                        return;
                    };
                    let c = &self.conns[i];
                    match self.plan.workload.check(c.id, seq, &c.inb[pos..pos + n]) {
                        Ok(()) => {
                            // Latency: every request sent (or due) in the window, even if its
                            // reply comes after it; throughput: replies that came in it.
                            if t >= warm && t < end {
                                self.r.hist.saturating_record(now.saturating_sub(t).max(1));
                            }
                            if now >= warm && now < end {
                                self.r.replies += 1;
                            } else {
                                self.r.other_replies += 1;
                            }
                        }
                        Err(e) => {
                            self.r.wrong += 1;
                            let id = c.id;
                            if self.r.first_errors.len() < MAX_ERRORS_KEPT {
                                self.r
                                    .first_errors
                                    .push(format!("connection {id} request {seq}: {e}"));
                            }
                        }
                    }
                    pos += n;
                    answered += 1;
                }
                Err(e) => {
                    let id = self.conns[i].id;
                    self.conns[i].dead = true;
                    self.error(format!("connection {id}: {e}"));
                    return;
                }
            }
        }
        self.conns[i].inb.drain(..pos);
        if answered > 0 {
            if self.plan.rate.is_some() {
                self.send_waiting(i, warm, end);
            } else {
                for _ in 0..answered {
                    self.send(i, 0, warm, end);
                }
            }
            self.flush(i);
        }
        if let Some(why) = closed {
            let c = &mut self.conns[i];
            c.dead = true;
            let (id, owed) = (c.id, c.inflight.len());
            let _ = self.epoll.delete(c.sock.as_fd());
            if owed > 0 {
                self.error(format!("connection {id}: {why} with {owed} replies owed"));
            } else if now < end {
                self.error(format!("connection {id}: {why} in the middle of the run"));
            }
        }
    }
}

/// Parses `127.0.0.1-127.0.0.8` (a range of IPv4 addresses) or `a,b,c` (a list).
pub fn parse_sources(s: &str) -> anyhow::Result<Vec<IpAddr>> {
    if let Some((a, b)) = s.split_once('-') {
        let a: std::net::Ipv4Addr = a.trim().parse()?;
        let b: std::net::Ipv4Addr = b.trim().parse()?;
        let (a, b) = (u32::from(a), u32::from(b));
        anyhow::ensure!(a <= b && b - a < 65536, "source range {s:?} is empty or too large");
        return Ok((a..=b).map(|x| IpAddr::V4(x.into())).collect());
    }
    s.split(',').map(|x| Ok(x.trim().parse()?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_ranges_and_lists() {
        let r = parse_sources("127.0.0.1-127.0.0.3").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(parse_sources("127.0.0.2, ::1").unwrap().len(), 2);
        assert!(parse_sources("127.0.0.3-127.0.0.1").is_err());
        assert!(parse_sources("nope").is_err());
    }
}
