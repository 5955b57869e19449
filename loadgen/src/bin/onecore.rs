//! `onecore`: the one-process limit. A minimal single-threaded epoll server with no queues, no
//! second process and no framing beyond what the reply needs, as a ceiling to compare shmsrv
//! against (bench-table runs it beside nginx and Redis):
//!
//! - `--line ADDR`: each line `PING` gets `PONG\n` (Redis's inline `PING` gets the same bytes as
//!   ours), any other line comes back as it is;
//! - `--http ADDR`: each HTTP/1.1 request head (no body) gets `200` with body `hello\n`;
//! - `--echo ADDR`: raw bytes come back as they are.
//!
//! One read and one write per batch of requests: what a server without any inter-process hop
//! can do per core. Stops on SIGTERM / SIGINT (default action). Not a product: no limits beyond
//! a 1 MiB pending output per connection (then it closes the connection).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;

use clap::Parser;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// Minimal single-process epoll server: the one-process limit for benchmarks.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Line protocol: PING -> PONG, other lines echoed.
    #[arg(long)]
    line: Vec<SocketAddr>,
    /// HTTP/1.1: every request -> 200 "hello\n".
    #[arg(long)]
    http: Vec<SocketAddr>,
    /// Raw echo.
    #[arg(long)]
    echo: Vec<SocketAddr>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Line,
    Http,
    Echo,
}

struct Conn {
    sock: TcpStream,
    mode: Mode,
    inb: Vec<u8>,
    out: Vec<u8>,
    armed_out: bool,
}

const LISTENER_BIT: u64 = 1 << 63;
const MAX_PENDING: usize = 1 << 20;

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let mut listeners = Vec::new();
    for (mode, addrs) in [(Mode::Line, &a.line), (Mode::Http, &a.http), (Mode::Echo, &a.echo)] {
        for addr in addrs {
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            let idx = listeners.len() as u64;
            epoll.add(l.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, LISTENER_BIT | idx))?;
            println!("onecore: {mode:?} on {}", l.local_addr()?);
            listeners.push((l, mode));
        }
    }
    anyhow::ensure!(!listeners.is_empty(), "give at least one of --line, --http, --echo");
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next_id = 0u64;
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut buf = vec![0u8; 64 << 10];
    let date = httpdate_now();
    loop {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let key = ev.data();
            if key & LISTENER_BIT != 0 {
                let (l, mode) = &listeners[(key & !LISTENER_BIT) as usize];
                while let Ok((s, _)) = l.accept() {
                    s.set_nonblocking(true)?;
                    s.set_nodelay(true)?;
                    let id = next_id;
                    next_id += 1;
                    epoll.add(s.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, id))?;
                    conns.insert(
                        id,
                        Conn {
                            sock: s,
                            mode: *mode,
                            inb: Vec::new(),
                            out: Vec::new(),
                            armed_out: false,
                        },
                    );
                }
                continue;
            }
            let Some(c) = conns.get_mut(&key) else { continue };
            let mut close = false;
            if ev.events().contains(EpollFlags::EPOLLIN)
                || ev.events().contains(EpollFlags::EPOLLHUP)
            {
                loop {
                    match c.sock.read(&mut buf) {
                        Ok(0) => {
                            close = true;
                            break;
                        }
                        Ok(k) => {
                            answer(c, &buf[..k], &date);
                            if k < buf.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
            }
            if !close {
                close = !flush(&epoll, key, c);
            }
            if close {
                let c = conns.remove(&key).expect("present");
                let _ = epoll.delete(c.sock.as_fd());
            }
        }
    }
}

/// Appends the replies to every complete request in `data` (plus what was buffered).
fn answer(c: &mut Conn, data: &[u8], date: &str) {
    match c.mode {
        Mode::Echo => c.out.extend_from_slice(data),
        Mode::Line => {
            c.inb.extend_from_slice(data);
            let mut pos = 0;
            while let Some(i) = c.inb[pos..].iter().position(|&b| b == b'\n') {
                let line = &c.inb[pos..pos + i + 1];
                let word = line.strip_suffix(b"\r\n").or(line.strip_suffix(b"\n")).unwrap_or(line);
                if word.eq_ignore_ascii_case(b"PING") {
                    c.out.extend_from_slice(b"PONG\n");
                } else {
                    c.out.extend_from_slice(line);
                }
                pos += i + 1;
            }
            c.inb.drain(..pos);
        }
        Mode::Http => {
            c.inb.extend_from_slice(data);
            let mut pos = 0;
            while let Some(i) = c.inb[pos..].windows(4).position(|w| w == b"\r\n\r\n") {
                c.out.extend_from_slice(
                    format!(
                        "HTTP/1.1 200 OK\r\nServer: onecore\r\nDate: {date}\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n"
                    )
                    .as_bytes(),
                );
                pos += i + 4;
            }
            c.inb.drain(..pos);
        }
    }
}

/// Writes what is pending; false = close the connection.
fn flush(epoll: &Epoll, key: u64, c: &mut Conn) -> bool {
    let mut done = 0;
    while done < c.out.len() {
        match c.sock.write(&c.out[done..]) {
            Ok(k) => done += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    c.out.drain(..done);
    if c.out.len() > MAX_PENDING {
        return false;
    }
    let want = !c.out.is_empty();
    if want != c.armed_out {
        c.armed_out = want;
        let f = if want { EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT } else { EpollFlags::EPOLLIN };
        if epoll.modify(c.sock.as_fd(), &mut EpollEvent::new(f, key)).is_err() {
            return false;
        }
    }
    true
}

/// A fixed `Date` value (the benchmark's replies need the header, not its freshness).
fn httpdate_now() -> String {
    "Tue, 01 Dec 2026 00:00:00 GMT".to_owned()
}
