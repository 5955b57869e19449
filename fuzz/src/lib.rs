//! Fuzz target bodies: each takes the fuzzer's bytes and panics on a broken invariant.
//!
//! Used by the afl.rs binaries in `fuzz_targets/` (one per function here) and by
//! `tests/replay.rs`, which runs every seed and every saved crash through the same functions
//! with plain `cargo test` (no AFL needed). Inputs are decoded with [`Bytes`], a cursor that
//! returns zeros once the input runs out, so every byte string is a valid input and small seeds
//! reach deep code.
//!
//! | target | what it feeds | what it asserts |
//! |---|---|---|
//! | [`framing`] | a client byte stream, `max`, a start offset and a chunking to the `line`, `len32` and `raw` framers | never panics; boundaries lie in the buffer; a message consumes > 0 bytes and at most `max`; chunked framing (as the event loop does it) cuts the same messages as framing the whole stream |
//! | [`http`] | a client byte stream, `max`, the head limits, a start offset and a chunking to the `http` framer | never panics; boundaries lie in the buffer; a message consumes > 0 bytes and at most `max`, its head at most `max_head`; chunked framing cuts the same messages, ends the same way (clean, a last request, or a refusal) and leaves the same bytes as framing the whole stream |
//! | [`ring`] | a valid heap ring, then a script of honest pushes, hostile writes into the data area and hostile `tail`/`head` stores (anywhere, near the head, or a few aligned steps back from the current tail), interleaved with `peek`/`release`/`drain`/`publish` | never panics; every payload lies in the data area; without hostile writes every pushed frame comes out intact, in order, with no corruption reported |
//! | [`resp`] | a client byte stream, `max`, limits and a chunking to the `resp` framer | never panics; boundaries lie in the buffer; a command is at most `max`, starts with `*` or is an inline line ending in `\n`; an empty command consumes > 0 bytes; errors are whole `-ERR Protocol error: …\r\n` lines; chunked framing cuts the same commands and the same error as the whole stream |
//! | [`proxy`] | a version (v1 or v2), a stream, and a chunking to the PROXY header parser | never panics; `consumed` is > 0 and at most the input; `Incomplete` only below the version's bound (4096 / 107 bytes); fed the stream's prefixes as reads would grow them, every verdict before the first non-`Incomplete` one is `Incomplete` and that one equals the whole stream's; the whole stream's verdict holds for every longer stream (bytes after a header never change it); a parsed IPv6 address is never IPv4-mapped |
//! | [`config`] | arbitrary text to `Config::from_toml_str` | never panics; an error formats; an accepted config round-trips through `to_toml` |
//! | [`stats`] | a valid stats segment patched with arbitrary bytes (or arbitrary bytes alone), then `StatsReader::attach_in`, `snapshot`, counters, histograms, quantiles | never panics |

use std::sync::Arc;

use config::{Config, Framing};
use framing::{LEN32_PREFIX, Next, next_message, next_message_with};
use shmq::frame::{FlowId, Kind};
use shmq::layout::{Direction, RING_HEADER_SIZE};
use shmq::ring::{Consumer, HeapMemory, Memory, Producer, PushError, checked_header};
use shmq::stats::{
    CounterKind, StatsReader, StatsSegment, histogram_count, quantile, required_len,
};
use shmq::sync::Ordering;
use shmq::sys::ProcId;

/// io_conn's framers, compiled from their source file: they are pure functions over `config`
/// types, and including the file spares the instrumented build io_conn's dependencies (clap,
/// env_logger, nix, ...), which keeps the CI smoke's one-time build short.
#[path = "../../io_conn/src/framing.rs"]
#[allow(dead_code, unreachable_pub)]
mod framing;
/// The HTTP `Date` formatter io_conn's `http` error replies use (`crate::httpdate` there,
/// re-exported from `rt`), included the same way (std only).
#[path = "../../rt/src/httpdate.rs"]
#[allow(dead_code, unreachable_pub)]
mod httpdate;
/// io_conn's PROXY protocol header parser, included the same way (it depends on `std` only).
#[path = "../../io_conn/src/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy;
/// io_conn's `resp` framer (`framing` uses it as `crate::resp`), included the same way.
#[path = "../../io_conn/src/resp.rs"]
#[allow(dead_code, unreachable_pub)]
mod resp;

mod ring_target;
pub use ring_target::ring;

/// A cursor over the fuzz input that yields zeros past its end.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// Wraps the fuzzer's input.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
    /// True when every byte was taken.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Next byte, 0 past the end.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    /// Next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    /// Next eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }
    /// Up to `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }
    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

// ---------------------------------------------------------------------------------------------
// framing

/// What framing a whole stream produces: the messages, and whether it ended in `TooLong`.
type Framed = (Vec<Vec<u8>>, bool);

/// Checks one `next_message` result against `buf`, `scanned` and `max`.
fn check_next(framing: Framing, buf: &[u8], scanned: usize, max: usize, next: Next) {
    match next {
        Next::Message { start, end, consumed } => {
            assert!(
                start <= end && end <= buf.len(),
                "{framing:?}: {start}..{end} in {}",
                buf.len()
            );
            assert!(consumed > 0 && consumed <= buf.len(), "{framing:?}: consumed {consumed}");
            assert!(end <= consumed, "{framing:?}: payload ends past what is consumed");
            // len32 with max < 4 would let an empty message (4 bytes) exceed max; config keeps
            // `max_message` far above that, so only a sane max is held to this.
            if framing != Framing::Len32 || max >= LEN32_PREFIX {
                assert!(consumed <= max, "{framing:?}: consumed {consumed} > max {max}");
            }
            if framing == Framing::Line {
                assert_eq!(buf[end - 1], b'\n', "a line ends with its newline");
                // No newline between the already-scanned prefix and the end.
                let from = scanned.min(buf.len());
                if from < end - 1 {
                    assert!(!buf[from..end - 1].contains(&b'\n'), "line framer skipped a newline");
                }
            }
        }
        Next::Incomplete { scanned: s } => {
            assert!(s <= buf.len(), "{framing:?}: scanned {s} past the buffer ({})", buf.len());
            if framing == Framing::Line {
                assert!(buf.len() < max, "an unfinished line of max bytes is TooLong");
            }
        }
        Next::Last { .. } | Next::Malformed | Next::HeadTooLarge => {
            panic!("{framing:?}: only the http framer returns {next:?}")
        }
        Next::Invalid(_) => panic!("{framing:?}: only the resp framer returns {next:?}"),
        Next::TooLong => {}
    }
}

/// Frames `stream` all at once (the reference).
fn frame_whole(framing: Framing, stream: &[u8], max: usize) -> (Framed, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let buf = &stream[pos..];
        let next = next_message(framing, buf, 0, max);
        check_next(framing, buf, 0, max, next);
        match next {
            Next::Message { start, end, consumed } => {
                out.push(buf[start..end].to_vec());
                pos += consumed;
            }
            Next::Incomplete { .. } => return ((out, false), stream.len() - pos),
            Next::TooLong => return ((out, true), stream.len() - pos),
            other => panic!("{framing:?}: {other:?}"),
        }
    }
}

/// Frames `stream` the way the event loop does: append each chunk, cut every whole message,
/// remember `scanned` for the next call on the same buffer front.
fn frame_chunked(framing: Framing, stream: &[u8], chunks: &[u8], max: usize) -> (Framed, usize) {
    let mut buf: Vec<u8> = Vec::new();
    let mut scanned = 0;
    let mut out = Vec::new();
    let mut pos = 0;
    let mut ci = 0;
    while pos < stream.len() {
        let n = (chunks.get(ci % chunks.len().max(1)).copied().unwrap_or(7) as usize).max(1);
        ci += 1;
        let n = n.min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        loop {
            let next = next_message(framing, &buf, scanned, max);
            check_next(framing, &buf, scanned, max, next);
            match next {
                Next::Message { start, end, consumed } => {
                    out.push(buf[start..end].to_vec());
                    buf.drain(..consumed);
                    scanned = 0;
                }
                Next::Incomplete { scanned: s } => {
                    scanned = s;
                    break;
                }
                Next::TooLong => return ((out, true), buf.len() + stream.len() - pos),
                other => panic!("{framing:?}: {other:?}"),
            }
        }
    }
    ((out, false), buf.len())
}

/// Fuzz target: the `raw`, `line` and `len32` framers.
///
/// Input: framing selector, `max` (u16, at least 1), a start offset for a one-shot call with an
/// arbitrary `scanned`, a chunk-size count and that many chunk sizes, then the stream.
pub fn framing(data: &[u8]) {
    let mut b = Bytes::new(data);
    let framing = match b.u8() % 3 {
        0 => Framing::Raw,
        1 => Framing::Line,
        _ => Framing::Len32,
    };
    let max = (b.u16() as usize).max(1);
    let scanned = b.u16() as usize;
    let nchunks = (b.u8() % 8) as usize;
    let chunks = b.take(nchunks);
    let stream = b.rest();

    // Any buffer, any claimed `scanned`: no panic, boundaries in the buffer.
    let next = next_message(framing, stream, scanned, max);
    check_next(framing, stream, scanned, max, next);

    let (whole, left_whole) = frame_whole(framing, stream, max);
    let (chunked, left_chunked) = frame_chunked(framing, stream, chunks, max);
    if framing == Framing::Raw {
        // Raw messages are whatever was buffered: only the bytes must agree.
        assert_eq!(whole.0.concat(), chunked.0.concat(), "raw: bytes differ by chunking");
    } else {
        assert_eq!(whole, chunked, "{framing:?}: chunking changed the messages");
        assert_eq!(left_whole, left_chunked, "{framing:?}: chunking changed what is left");
    }
}

// ---------------------------------------------------------------------------------------------
// http

/// How framing an HTTP stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpEnd {
    /// Every byte so far is whole requests or the start of one.
    Open,
    /// A request ended the connection ([`Next::Last`]).
    Last,
    /// The framer refused the stream. Which refusal may differ by chunking when a request is
    /// both too long and malformed beyond the limit (the whole stream shows the bad byte, a
    /// chunk stops at the limit first), so only the fact is compared.
    Refused,
}

/// Checks one `http` result against `buf` and the limits.
fn check_http(buf: &[u8], scanned: usize, max: usize, lim: &framing::http::Limits, next: Next) {
    match next {
        Next::Message { start, end, consumed } | Next::Last { start, end, consumed } => {
            assert!(start <= end && end == consumed && consumed <= buf.len(), "{next:?}");
            assert!(consumed > 0 && consumed <= max, "consumed {consumed}, max {max}");
            // Only empty lines are skipped, and the head (up to its empty line) is within the
            // limits.
            assert!(
                buf[..start].iter().all(|&b| b == b'\r' || b == b'\n'),
                "skipped a request line"
            );
            let req = &buf[start..end];
            let head = (0..req.len())
                .find_map(|i| match &req[i..] {
                    [b'\n', b'\n', ..] => Some(i + 2),
                    [b'\n', b'\r', b'\n', ..] => Some(i + 3),
                    _ => None,
                })
                .expect("a request without the end of its head");
            assert!(start + head <= lim.max_head.min(max), "head of {} bytes", start + head);
        }
        Next::Incomplete { scanned: s } => {
            // SCANNED_BODY marks a resume position in a chunked body; the rest is a position.
            let at = s & !framing::http::SCANNED_BODY;
            assert!(at <= buf.len().max(scanned), "scanned {s:#x} past the buffer ({})", buf.len());
        }
        Next::TooLong | Next::Malformed | Next::HeadTooLarge => {}
        Next::Invalid(_) => panic!("http: only the resp framer returns {next:?}"),
    }
}

/// Frames an HTTP stream, whole (`chunks` empty) or chunk by chunk as the event loop does.
fn frame_http(
    stream: &[u8],
    chunks: &[u8],
    max: usize,
    lim: &framing::http::Limits,
) -> (Vec<Vec<u8>>, HttpEnd, usize) {
    let mut buf: Vec<u8> = Vec::new();
    let (mut scanned, mut out, mut pos, mut ci) = (0, Vec::new(), 0, 0);
    while pos < stream.len() {
        let n = match chunks.is_empty() {
            true => stream.len(),
            false => (chunks[ci % chunks.len()] as usize).max(1),
        };
        ci += 1;
        let n = n.min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        loop {
            let next =
                next_message_with(Framing::Http, &buf, scanned, max, lim, &resp::Limits::UNLIMITED);
            check_http(&buf, scanned, max, lim, next);
            match next {
                Next::Message { start, end, consumed } => {
                    out.push(buf[start..end].to_vec());
                    buf.drain(..consumed);
                    scanned = 0;
                }
                Next::Last { start, end, consumed } => {
                    out.push(buf[start..end].to_vec());
                    buf.drain(..consumed);
                    return (out, HttpEnd::Last, buf.len() + stream.len() - pos);
                }
                Next::Incomplete { scanned: s } => {
                    scanned = s;
                    break;
                }
                _ => return (out, HttpEnd::Refused, buf.len() + stream.len() - pos),
            }
        }
    }
    (out, HttpEnd::Open, buf.len())
}

/// Fuzz target: the `http` framer.
///
/// Input: `max` (u16, at least 1), `max_head` (u16, at least 1), `max_headers` (1..=32), a
/// `scanned` for a one-shot call, a chunk-size count and that many chunk sizes, then the stream.
/// Seeds are pipelines of real requests (GET, Content-Length and chunked POSTs, trailers,
/// HTTP/1.0, `Connection: close`).
pub fn http(data: &[u8]) {
    let mut b = Bytes::new(data);
    let max = (b.u16() as usize).max(1);
    let lim = framing::http::Limits {
        max_head: (b.u16() as usize).max(1),
        max_headers: (b.u8() % 32) as usize + 1,
    };
    let scanned = b.u16() as usize;
    let nchunks = (b.u8() % 8) as usize;
    let chunks = b.take(nchunks).to_vec();
    let stream = b.rest();

    let next =
        next_message_with(Framing::Http, stream, scanned, max, &lim, &resp::Limits::UNLIMITED);
    check_http(stream, scanned, max, &lim, next);

    let whole = frame_http(stream, &[], max, &lim);
    let chunked = frame_http(stream, if chunks.is_empty() { &[1] } else { &chunks }, max, &lim);
    assert_eq!(whole, chunked, "http: chunking changed the messages or the end");
}

// ---------------------------------------------------------------------------------------------
// resp

/// The `resp` framer over a whole buffer, or as the event loop feeds it (chunks): the non-empty
/// commands and the error line that stopped it, if any.
fn resp_frame(
    stream: &[u8],
    chunks: &[u8],
    max: usize,
    lim: &resp::Limits,
) -> (Vec<Vec<u8>>, Option<&'static [u8]>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut scanned = 0;
    let mut out = Vec::new();
    let mut pos = 0;
    let mut ci = 0;
    while pos < stream.len() {
        let n = if chunks.is_empty() {
            stream.len()
        } else {
            (chunks[ci % chunks.len()] as usize).max(1)
        };
        ci += 1;
        let n = n.min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        loop {
            match resp::next_message(&buf, scanned, max, lim) {
                Next::Message { start, end, consumed } => {
                    assert!(start <= end && end <= consumed && consumed <= buf.len());
                    assert!(consumed > 0, "a message consumes bytes");
                    if start < end {
                        let m = &buf[start..end];
                        assert!(m.len() <= max, "command of {} > max {max}", m.len());
                        assert!(m[0] == b'*' || m.ends_with(b"\n"), "neither array nor line");
                        out.push(m.to_vec());
                    } else {
                        assert_eq!(start, consumed, "an empty command is all skipped");
                    }
                    buf.drain(..consumed);
                    scanned = 0;
                }
                Next::Incomplete { scanned: s } => {
                    assert!(s <= buf.len());
                    scanned = s;
                    break;
                }
                Next::Invalid(e) => {
                    assert!(e.starts_with(b"-ERR Protocol error: ") && e.ends_with(b"\r\n"));
                    return (out, Some(e));
                }
                other => panic!("resp reports Invalid for every error, never {other:?}"),
            }
        }
    }
    (out, None)
}

/// Fuzz target: the `resp` framer.
///
/// Input: `max` (u16, at least 96), `max_elements` (u8, at least 1), `max_bulk` (u16), a
/// chunk-size count and that many chunk sizes, then the stream.
pub fn resp(data: &[u8]) {
    let mut b = Bytes::new(data);
    // `shared.max_message` is at least 96 B (config validation): below that a skipped empty
    // command (`*0\r\n`) can be longer than `max`, and a chunk that holds only its start is
    // refused as too large while the whole stream skips it (crashes/resp/id_000000_*_2953_*).
    // A blank inline line longer than `max` is refused whole and split alike (the note of
    // 2026-12-02 suspected a difference; crashes/resp/blank_inline_line_over_max and the
    // framer's unit test `blank_inline_line_over_max_is_refused_whole_and_split` pin it).
    let max = (b.u16() as usize).max(96);
    let lim = resp::Limits { max_elements: (b.u8() as usize).max(1), max_bulk: b.u16() as usize };
    let nchunks = (b.u8() % 8) as usize;
    let chunks = b.take(nchunks);
    let stream = b.rest();
    let (whole, whole_err) = resp_frame(stream, &[], max, &lim);
    let (chunked, chunked_err) = resp_frame(stream, chunks, max, &lim);
    assert_eq!(whole, chunked, "resp: chunking changed the commands");
    // Whether the stream is refused never depends on chunking; which error line it gets may,
    // when a command is both over `max` and malformed past that point (a chunk stops at the
    // limit before the bad byte arrives; the whole stream shows the bad byte first), as for
    // http. Either way the client gets its replies, one protocol error, and the close.
    // (Found by afl in the CI smoke run; the inputs are in crashes/resp.)
    assert_eq!(
        whole_err.is_some(),
        chunked_err.is_some(),
        "resp: chunking changed whether the stream is refused ({whole_err:?} vs {chunked_err:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// proxy

/// Fuzzes the PROXY header parser (see the table above).
pub fn proxy(data: &[u8]) {
    use proxy::{Parse, V1_MAX, V2_MAX, Version, parse};
    let mut b = Bytes::new(data);
    let version = if b.u8() & 1 == 0 { Version::V1 } else { Version::V2 };
    let bound = if version == Version::V1 { V1_MAX } else { V2_MAX };
    let chunking = b.u64();
    let stream = b.rest();
    let whole = parse(version, stream);
    match whole {
        Parse::Incomplete => assert!(stream.len() < bound, "Incomplete at {} bytes", stream.len()),
        Parse::Done { consumed, addrs } => {
            assert!(consumed > 0 && consumed <= stream.len(), "consumed {consumed}");
            assert!(consumed <= bound);
            if let Some(a) = addrs {
                for ip in [a.src.ip(), a.dst.ip()] {
                    if let std::net::IpAddr::V6(v6) = ip {
                        assert!(v6.to_ipv4_mapped().is_none(), "{ip} not normalised");
                    }
                }
            }
        }
        Parse::Invalid(why) => assert!(!why.is_empty()),
    }
    // Grow the buffer the way reads do (chunk sizes from the input): Incomplete until the
    // first verdict, which is the whole stream's.
    let mut len = 0;
    let mut c = chunking;
    while len < stream.len() {
        len = (len + 1 + (c & 0x3f) as usize).min(stream.len());
        c = c.rotate_right(6);
        let v = parse(version, &stream[..len]);
        if v != Parse::Incomplete {
            assert_eq!(v, whole, "prefix of {len} bytes");
            break;
        }
    }
    // More bytes after the stream never change a verdict that was reached.
    if whole != Parse::Incomplete {
        let mut longer = stream.to_vec();
        longer.extend_from_slice(b"\r\n\0PROXY \r\n");
        assert_eq!(parse(version, &longer), whole);
    }
}

/// Writes `bytes` into `mem` at `offset` (clamped to the region).
fn poke(mem: &HeapMemory, offset: usize, bytes: &[u8]) {
    let len = mem.len();
    let offset = offset.min(len);
    let n = bytes.len().min(len - offset);
    // SAFETY: in bounds: offset + n <= len (clamped above), and the HeapMemory pointer is valid
    // for len bytes. Unaligned byte writes need no alignment. No Rust reference covers these
    // bytes now: the callers hold no `Frame` borrow across a poke (the consumer's borrows end
    // before each op), and the header's atomics are accessed only by this thread. This is the
    // hostile peer writing its shared segment.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), mem.as_ptr().add(offset), n) };
}

// ---------------------------------------------------------------------------------------------
// config

/// Fuzz target: `Config::from_toml_str` on arbitrary text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text, "fuzz.toml") {
        Ok(cfg) => {
            let _ = cfg.summary();
            let again = cfg.to_toml();
            if let Err(e) = Config::from_toml_str(&again, "again.toml") {
                panic!(
                    "an accepted config does not round-trip: {e}\n--- input\n{text}\n--- to_toml\n{again}"
                );
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// stats

/// The bytes of a freshly created stats segment with 1..=4 md slots, made once per process
/// (creating one per input would dominate the run time).
fn valid_stats_images() -> &'static [Vec<u8>] {
    static IMAGES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    IMAGES.get_or_init(|| {
        (1..=4)
            .map(|slots| {
                let full = required_len(slots);
                let mem = Arc::new(HeapMemory::new(full));
                let me = ProcId { pid: 1, start_time: 2 };
                let seg = StatsSegment::create_in(mem.clone(), slots, 7, me).expect("valid stats");
                drop(seg);
                // SAFETY: in bounds: `full` bytes of a live allocation of `full` bytes. No
                // reference covers them any more: the only writer (`seg`) was dropped above.
                unsafe { core::slice::from_raw_parts(mem.as_ptr(), full) }.to_vec()
            })
            .collect()
    })
}

/// Fuzz target: a stats segment written by a hostile (or broken) process, read as viewstats
/// reads it.
///
/// Input: mode byte (slots 1..=4; the high bit: the input *is* the whole segment), a length
/// adjustment, then patches `(offset u16 scaled by 8 bytes, length u8, bytes)` over a valid
/// segment.
pub fn stats(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let slots = 1 + (mode % 4) as u32;
    let mem = if mode & 0x80 != 0 {
        let raw = b.rest();
        let mem = HeapMemory::new(raw.len());
        poke(&mem, 0, raw);
        mem
    } else {
        let image = &valid_stats_images()[slots as usize - 1];
        let full = image.len();
        // Shorter or longer than the creator made it.
        let adj = b.u16() as usize;
        let len =
            if adj & 0x8000 != 0 { full.saturating_sub(adj & 0x7fff) } else { full + (adj & 0xff) };
        let mem = HeapMemory::new(len);
        poke(&mem, 0, &image[..len.min(full)]);
        while !b.is_empty() {
            let off = b.u16() as usize * 8 % len.max(1);
            let n = b.u8() as usize % 32;
            let bytes = b.take(n);
            poke(&mem, off, bytes);
        }
        mem
    };
    let mem: Arc<dyn Memory> = Arc::new(mem);
    if let Ok(reader) = StatsReader::attach_in(mem.clone()) {
        let _ = reader.info();
        let snap = reader.snapshot();
        for blk in &snap.blocks {
            for c in snap.counters(blk) {
                let _ = (c.name.len(), c.value, c.bad_name);
            }
            // The histograms (viewstats asks for each by name); every other name once at most.
            let mut names: Vec<&str> = snap.sections[blk.section]
                .descriptors
                .iter()
                .filter(|d| matches!(d.kind, CounterKind::Bucket | CounterKind::HistSum))
                .map(|d| d.name.as_str())
                .collect();
            names.dedup();
            names.truncate(4);
            names.push("no such histogram");
            for n in names {
                let (buckets, sum) = snap.histogram(blk, n);
                let _ = (sum, histogram_count(&buckets));
                for q in [0.0, 0.5, 0.99, 1.0] {
                    let _ = quantile(&buckets, q);
                }
            }
        }
    }
    if let Ok(seg) = StatsSegment::attach_in(mem) {
        let _ = seg.reader().snapshot();
    }
}

/// Replays every seed and every saved crash through its target (plain `cargo test --lib` here,
/// no AFL): a crash copied to `crashes/TARGET` fails this until it is fixed, so keep only fixed
/// ones there (each also has a regression test in its own crate).
#[cfg(test)]
mod replay {
    use std::path::Path;

    fn replay(target: &str, f: fn(&[u8])) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for dir in ["seeds", "crashes"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
            for e in entries {
                let path = e.expect("readable dir").path();
                eprintln!("{}", path.display());
                f(&std::fs::read(&path).expect("readable input"));
                n += 1;
            }
        }
        assert!(n > 0, "no seeds for {target}");
    }

    /// `FUZZ_TARGET=ring FUZZ_INPUT=path cargo test --lib one -- --nocapture`: one input.
    #[test]
    fn one() {
        let (Ok(t), Ok(p)) = (std::env::var("FUZZ_TARGET"), std::env::var("FUZZ_INPUT")) else {
            return;
        };
        let data = std::fs::read(p).expect("readable input");
        match t.as_str() {
            "framing" => super::framing(&data),
            "http" => super::http(&data),
            "resp" => super::resp(&data),
            "ring" => super::ring(&data),
            "config" => super::config(&data),
            "stats" => super::stats(&data),
            "proxy" => super::proxy(&data),
            _ => panic!("unknown target {t}"),
        }
    }

    #[test]
    fn framing() {
        replay("framing", super::framing);
    }

    #[test]
    fn http() {
        replay("http", super::http);
    }
    #[test]
    fn resp() {
        replay("resp", super::resp);
    }
    #[test]
    fn ring() {
        replay("ring", super::ring);
    }
    #[test]
    fn config() {
        replay("config", super::config);
    }
    #[test]
    fn stats() {
        replay("stats", super::stats);
    }
    #[test]
    fn proxy() {
        replay("proxy", super::proxy);
    }
}
