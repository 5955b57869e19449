//! `viewstats --serve ADDR`: the Prometheus text over HTTP, for a scraper.
//!
//! Routes: `GET /metrics` (also `HEAD`) answers 200 with [`crate::metrics_text`]: the segment is
//! mapped read-only for the scrape and unmapped after it, so a restarted io_conn (a new segment,
//! a new `shmsrv_epoch`) is seen on the next scrape, and no server at all is `shmsrv_up 0`, never
//! an error page. `GET /` is a short index; any other path is 404, any other method 405, a
//! request that does not parse 400, one whose head exceeds [`Limits::max_head_bytes`] 431.
//!
//! **Bounded.** One thread, one request at a time, `Connection: close`. Each connection gets
//! [`Limits::deadline`] in total, from accept to the last byte written: every read and write
//! runs with a socket timeout equal to what is left of it, so a scraper that sends slowly, never
//! finishes its request or never reads the answer is cut off when it runs out (408 if it had not
//! finished its request) and the next one is served. Between connections the loop waits in
//! `poll` on the listener and a signalfd for SIGTERM and SIGINT, which end it cleanly (exit 0);
//! a signal that arrives during a request is acted on after it (within the deadline).
//!
//! Requests are parsed by `httparse` (see the root Cargo.toml for why no server crate).
//!
//! # Example
//!
//! ```no_run
//! let t = viewstats::Target::from_config(&config::Config::default());
//! // Blocks until SIGTERM or SIGINT; curl http://127.0.0.1:9464/metrics meanwhile.
//! viewstats::serve::serve(&t, "127.0.0.1:9464", false, viewstats::serve::Limits::default())?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};

use crate::Target;

/// How long and how large one connection may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total time for one connection, from accept to the end of the answer.
    pub deadline: Duration,
    /// Largest request head (request line and headers) read; a longer one is refused (431).
    pub max_head_bytes: usize,
}

impl Default for Limits {
    /// 5 s (Prometheus' default scrape timeout is 10 s: a scrape of a few KiB takes
    /// milliseconds), 8 KiB of request head (what a scraper sends is a few hundred bytes).
    fn default() -> Self {
        Self { deadline: Duration::from_secs(5), max_head_bytes: 8 * 1024 }
    }
}

/// The signals that stop the server.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Serves `t`'s metrics on `addr` until SIGTERM or SIGINT; returns the exit code (0).
/// Prints `viewstats: serving http://ADDR/metrics` (the bound address: port 0 picks one) on
/// stderr once listening. Blocks SIGTERM and SIGINT in the calling thread (for its signalfd):
/// call it from the main thread before any other thread starts.
pub fn serve(t: &Target, addr: &str, all: bool, limits: Limits) -> anyhow::Result<i32> {
    let set = stop_signals();
    rt::signals::block(&set).context("blocking SIGTERM and SIGINT")?;
    let sfd = rt::signals::signalfd(&set).context("signalfd")?;
    let listener = TcpListener::bind(addr).with_context(|| format!("--serve {addr}: bind"))?;
    listener.set_nonblocking(true).context("listener: O_NONBLOCK")?;
    let local = listener.local_addr().context("listener address")?;
    eprintln!("viewstats: serving http://{local}/metrics for {} ({})", t.name, t.location());
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll"),
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        let (conn_ready, sig_ready) = (ready(&fds[0]), ready(&fds[1]));
        if sig_ready {
            if let Ok(Some(info)) = sfd.read_signal() {
                log::info!("signal {}: stopping", info.ssi_signo);
                eprintln!("viewstats: stopped by signal {}", info.ssi_signo);
                return Ok(0);
            }
        }
        if conn_ready {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if let Err(e) = handle(t, all, stream, limits) {
                        log::debug!("scrape from {peer}: {e}");
                    }
                }
                // Spurious wake-up, a connection reset before accept, or EMFILE: poll again
                // (the error is logged once per occurrence at debug; EMFILE clears itself as
                // the one connection we hold is closed).
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::debug!("accept: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// What is left of `deadline`, or a `TimedOut` error once it has passed.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    let now = Instant::now();
    if now >= deadline {
        return Err(std::io::Error::new(ErrorKind::TimedOut, "connection deadline passed"));
    }
    // A zero timeout means "none" to the socket: at least 1 ms.
    Ok((deadline - now).max(Duration::from_millis(1)))
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    /// Not GET or HEAD.
    BadMethod,
}

/// Reads one request head, answers it, closes. Errors are the connection's, never the server's.
fn handle(t: &Target, all: bool, mut stream: TcpStream, limits: Limits) -> std::io::Result<()> {
    let deadline = Instant::now() + limits.deadline;
    stream.set_nonblocking(false)?;
    let mut buf = vec![0u8; limits.max_head_bytes];
    let mut len = 0;
    let parsed = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let route = match (req.method, req.path.map(|p| p.split('?').next().unwrap_or(p))) {
                    (Some("GET" | "HEAD"), Some("/metrics")) => Route::Metrics,
                    (Some("GET" | "HEAD"), Some("/")) => Route::Index,
                    (Some("GET" | "HEAD"), _) => Route::NotFound,
                    _ => Route::BadMethod,
                };
                break Ok((route, req.method == Some("HEAD")));
            }
            Ok(httparse::Status::Partial) if len == buf.len() => break Err(431),
            Ok(httparse::Status::Partial) => {}
            // httparse::Error::TooManyHeaders included: a scraper sends a handful.
            Err(_) => break Err(400),
        }
        let Ok(rest) = left(deadline) else { break Err(408) };
        stream.set_read_timeout(Some(rest))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(()), // closed before a whole request: nothing to answer
            Ok(n) => len += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break Err(408);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let (status, ctype, body, head_only, allow) = match parsed {
        Ok((Route::Metrics, head)) => {
            (200, PROM_TYPE, crate::metrics_text_with(t, all), head, false)
        }
        Ok((Route::Index, head)) => (200, HTML_TYPE, index(t), head, false),
        Ok((Route::NotFound, head)) => {
            (404, TEXT_TYPE, "not found: try /metrics\n".into(), head, false)
        }
        Ok((Route::BadMethod, _)) => (405, TEXT_TYPE, "only GET and HEAD\n".into(), false, true),
        Err(code) => (code, TEXT_TYPE, format!("{}\n", reason(code)), false, false),
    };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if allow {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    // A request cut off by the deadline still gets its 408, with a short grace to write it.
    let deadline = deadline.max(Instant::now() + Duration::from_millis(100));
    write_all(&mut stream, head.as_bytes(), deadline)?;
    if !head_only {
        write_all(&mut stream, body.as_bytes(), deadline)?;
    }
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

/// `write_all` under `deadline`: each write may block for what is left of it at most.
fn write_all(stream: &mut TcpStream, mut data: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !data.is_empty() {
        stream.set_write_timeout(Some(left(deadline)?))?;
        match stream.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

const PROM_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const HTML_TYPE: &str = "text/html; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; charset=utf-8";

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// `GET /`: what is served here.
fn index(t: &Target) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<!doctype html>\n<html><head><title>shmsrv viewstats</title></head><body>\n\
         <h1>shmsrv {}</h1>\n<p>Stats segment {} (read-only, on each scrape).</p>\n\
         <p><a href=\"/metrics\">/metrics</a>: Prometheus text format.</p>\n</body></html>\n",
        esc(&t.name),
        esc(&t.location())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_is_never_zero_and_fails_after_the_deadline() {
        let d = left(Instant::now() + Duration::from_secs(1)).unwrap();
        assert!(d > Duration::ZERO && d <= Duration::from_secs(1));
        assert_eq!(left(Instant::now()).unwrap_err().kind(), ErrorKind::TimedOut);
    }

    #[test]
    fn index_escapes_the_name() {
        let mut t = Target::from_config(&config::Config::default());
        t.name = "a<b>&c".into();
        let html = index(&t);
        assert!(html.contains("shmsrv a&lt;b&gt;&amp;c"), "{html}");
        assert!(html.contains("href=\"/metrics\""));
    }
}
