//! The `http` framer: where one HTTP/1.x request ends in a client's byte stream.
//!
//! Called by [`super::next_message_with`] for listeners with `framing = "http"`. Like the other
//! framers it is a pure function over the bytes a flow has buffered: it never copies or
//! allocates, and md gets the whole request as received (head and body, a chunked body still
//! chunked) and parses it itself. What io_conn must understand to find the end is exactly what
//! it checks:
//!
//! * **the head**: optional empty lines (RFC 9112 §2.2 says to ignore them), the request line
//!   and the header fields up to the empty line, parsed with `httparse`. At most `max_head`
//!   bytes (capped by `max_message`) and `max_headers` fields, else [`Next::HeadTooLarge`]
//!   (`431`); anything `httparse` refuses is [`Next::Malformed`] (`400`);
//! * **the body**: `Content-Length` bytes, or a chunked body (chunk-size lines read with
//!   `httparse::parse_chunk_size`, the CRLF after each chunk checked, the trailer section parsed
//!   like header fields and held to `max_head`; the walk resumes where the last read left it,
//!   [`SCANNED_BODY`]); head and body together at most `max_message`, else [`Next::TooLong`]
//!   (`413`). Both `Transfer-Encoding` and `Content-Length`, a `Transfer-Encoding` whose last
//!   coding is not `chunked`, one in an HTTP/1.0 request, a bad or conflicting
//!   `Content-Length`, or an HTTP/1.1 request without exactly one `Host` are
//!   [`Next::Malformed`] (these are what request smuggling is made of);
//! * **whether the connection goes on**: HTTP/1.1 keeps it unless `Connection: close`;
//!   HTTP/1.0 closes it unless `Connection: keep-alive`. A request after which the connection
//!   ends is [`Next::Last`]: io_conn reads nothing more, and closes once its reply is out.
//!
//! A slow head or body is not the framer's business: `io_conn.message_deadline` runs from a
//! message's first byte. Error replies ([`ErrorStatus`]: `400`, `431`, `413`, each with `Server`
//! and a `Date` formatted at most once per second) are written by io_conn after the replies to the
//! requests before the bad one, then the connection closes.
//!
//! # Example
//!
//! ```
//! use io_conn::framing::Next;
//! use io_conn::framing::http::{Limits, next_message};
//!
//! let lim = Limits::default();
//! let two = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
//! assert_eq!(next_message(two, 0, 65536, &lim), Next::Message { start: 0, end: 27, consumed: 27 });
//! assert_eq!(
//!     next_message(&two[27..], 0, 65536, &lim),
//!     Next::Last { start: 0, end: 47, consumed: 47 }
//! );
//! assert_eq!(next_message(b"GET / HT", 0, 65536, &lim), Next::Incomplete { scanned: 8 });
//! assert_eq!(next_message(b"\x00\r\n\r\n", 0, 65536, &lim), Next::Malformed);
//! ```

use std::mem::MaybeUninit;

use httparse::{EMPTY_HEADER, Header, Status};

use super::Next;

/// Set in [`Next::Incomplete`]'s `scanned` when the head is complete and a chunked body is not:
/// the other bits are where the chunk walk resumes (the size line of the first chunk not yet
/// complete), so each read costs the bytes it brings instead of a walk from the first chunk.
/// Without it `scanned` is where the search for the end of the head resumes. Callers hand the
/// value back unchanged (and 0 after a message), as for every framer.
pub const SCANNED_BODY: usize = 1 << (usize::BITS - 1);

/// Most header fields io_conn ever parses: the size of the (uninitialised, so free) array of
/// header slots on the stack; `io_conn.http.max_headers` is at most this.
pub const MAX_HEADERS: usize = config::MAX_HTTP_HEADERS as usize;

/// The limits of the `http` framing (`[io_conn.http]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head in bytes (leading empty lines included); capped by `max_message`.
    pub max_head: usize,
    /// Most header fields in a head (or a chunked body's trailer), at most [`MAX_HEADERS`].
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_config(&config::Http::default())
    }
}

impl Limits {
    /// From `[io_conn.http]`.
    pub fn from_config(h: &config::Http) -> Self {
        Self {
            max_head: usize::try_from(h.max_head).unwrap_or(usize::MAX),
            max_headers: (h.max_headers as usize).min(MAX_HEADERS),
        }
    }
}

/// io_conn's own HTTP error replies (it writes them itself, md never sees the request); the
/// connection closes after each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStatus {
    /// `400`: a request io_conn cannot frame ([`Next::Malformed`]).
    BadRequest,
    /// `431`: a head over the limits ([`Next::HeadTooLarge`]).
    HeadTooLarge,
    /// `413`: a request over `max_message` ([`Next::TooLong`]).
    ContentTooLarge,
}

/// Bytes of the longest error reply (the `431`, some 200 bytes), with room to spare.
const ERROR_REPLY_MAX: usize = 256;

/// One of io_conn's error replies, built on the stack (no allocation): the status line,
/// `Server` (the same as md's `http` service sends), `Date`, `Content-Type`, `Content-Length`,
/// `Connection: close`, and the status text as the body. Derefs to its bytes.
#[derive(Clone, Copy)]
pub struct ErrorReply {
    len: usize,
    buf: [u8; ERROR_REPLY_MAX],
}

impl std::fmt::Debug for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ErrorReply({:?})", String::from_utf8_lossy(self))
    }
}

impl std::ops::Deref for ErrorReply {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

std::thread_local! {
    /// The `Date` value for this thread's error replies (io_conn's loop is one thread):
    /// formatted at most once per second.
    static DATE: std::cell::RefCell<crate::httpdate::DateCache> =
        std::cell::RefCell::new(crate::httpdate::DateCache::default());
}

impl ErrorStatus {
    /// Status line text and body (the body is the reason phrase and a newline).
    fn parts(self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest => ("400 Bad Request", "Bad Request\n"),
            Self::HeadTooLarge => {
                ("431 Request Header Fields Too Large", "Request Header Fields Too Large\n")
            }
            Self::ContentTooLarge => ("413 Content Too Large", "Content Too Large\n"),
        }
    }

    /// The reply, dated now (the `Date` value is cached per second).
    pub fn reply(self) -> ErrorReply {
        DATE.with(|d| self.reply_dated(d.borrow_mut().get()))
    }

    /// The reply with `date` (an IMF-fixdate) as its `Date`.
    pub fn reply_dated(self, date: &[u8; 29]) -> ErrorReply {
        let (status, body) = self.parts();
        let mut r = ErrorReply { len: 0, buf: [0; ERROR_REPLY_MAX] };
        let mut len_text = [0u8; 4];
        let mut n = body.len();
        let mut digits = 0;
        // The bodies are at most a few dozen bytes: at most 4 digits.
        for i in (0..4).rev() {
            len_text[i] = b'0' + (n % 10) as u8;
            n /= 10;
            digits += 1;
            if n == 0 {
                break;
            }
        }
        let parts: [&[u8]; 9] = [
            b"HTTP/1.1 ",
            status.as_bytes(),
            b"\r\nServer: shmsrv\r\nDate: ",
            date,
            b"\r\nContent-Type: text/plain\r\nContent-Length: ",
            &len_text[4 - digits..],
            b"\r\nConnection: close\r\n",
            b"\r\n",
            body.as_bytes(),
        ];
        for p in parts {
            // Fits: the longest reply is about 200 bytes (checked by the unit tests).
            r.buf[r.len..r.len + p.len()].copy_from_slice(p);
            r.len += p.len();
        }
        r
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// `Content-Length` bytes (0 without either header).
    Length(u64),
    /// `Transfer-Encoding: …, chunked`.
    Chunked,
}

/// Finds the first request in `buf`. `scanned`: bytes at the front of `buf` already known to
/// hold no end of a head (what an earlier call returned in [`Next::Incomplete`]); `max`: the
/// largest message (head and body), `shared.max_message`.
pub fn next_message(buf: &[u8], scanned: usize, max: usize, lim: &Limits) -> Next {
    let skip = leading_empty_lines(buf);
    let head_limit = lim.max_head.min(max);
    // A chunked body part-way: the head is found again from its start (it is at most
    // `max_head`, and parsed again below anyway), the walk resumes where it stopped.
    let (head_from, body_from) =
        if scanned & SCANNED_BODY != 0 { (0, scanned & !SCANNED_BODY) } else { (scanned, 0) };
    let Some(head_end) = find_head_end(buf, skip, head_from) else {
        return if buf.len() >= head_limit {
            Next::HeadTooLarge
        } else {
            Next::Incomplete { scanned: buf.len() }
        };
    };
    if head_end > head_limit {
        return Next::HeadTooLarge;
    }
    let mut slots = [const { MaybeUninit::<Header<'_>>::uninit() }; MAX_HEADERS];
    let slots = &mut slots[..lim.max_headers.clamp(1, MAX_HEADERS)];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(&buf[skip..head_end], slots) {
        Ok(Status::Complete(n)) if skip + n == head_end => {}
        Err(httparse::Error::TooManyHeaders) => return Next::HeadTooLarge,
        _ => return Next::Malformed,
    }
    let Some(version) = req.version else { return Next::Malformed };
    let Some((body, close)) = head_rules(version, req.headers) else { return Next::Malformed };
    let end = match body {
        Body::Length(n) => {
            let Some(end) = u64::try_from(head_end).ok().and_then(|h| h.checked_add(n)) else {
                return Next::TooLong;
            };
            if end > max as u64 {
                return Next::TooLong;
            }
            let end = end as usize; // <= max, a usize
            if buf.len() < end {
                return Next::Incomplete { scanned: 0 };
            }
            end
        }
        Body::Chunked => match chunked_end(buf, head_end.max(body_from), max, lim) {
            Ok(end) => end,
            Err(n) => return n,
        },
    };
    if close {
        Next::Last { start: skip, end, consumed: end }
    } else {
        Next::Message { start: skip, end, consumed: end }
    }
}

/// Bytes of empty lines (`\r\n` or `\n`) at the front of `buf`; a lone `\r` at its very end is
/// counted too (its `\n` may come next; anything else there is a malformed request line).
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match buf.get(i..).unwrap_or(&[]) {
            [b'\n', ..] => i += 1,
            [b'\r', b'\n', ..] => i += 2,
            [b'\r'] => return i + 1,
            _ => return i,
        }
    }
}

/// One past the empty line that ends the head starting at `skip` (`\n\r\n` or `\n\n`), looking
/// for the final `\n` from `max(scanned, skip)` on.
fn find_head_end(buf: &[u8], skip: usize, scanned: usize) -> Option<usize> {
    let mut i = scanned.max(skip);
    while i < buf.len() {
        let nl = i + buf[i..].iter().position(|&b| b == b'\n')?;
        let before = &buf[skip..nl];
        if before.ends_with(b"\n") || before.ends_with(b"\n\r") {
            return Some(nl + 1);
        }
        i = nl + 1;
    }
    None
}

/// The header rules that decide the body and the connection: `(body, close after it)`, or
/// `None` for a request to refuse (`400`).
fn head_rules(version: u8, headers: &[Header<'_>]) -> Option<(Body, bool)> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut hosts = 0u32;
    let (mut close, mut keep_alive) = (false, false);
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value)?;
            if length.is_some_and(|l| l != n) {
                return None; // conflicting lengths
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || version == 0 {
                return None; // one header only; none in HTTP/1.0 (RFC 9112 §6.1)
            }
            // The last coding must be `chunked`, and `chunked` only once (RFC 9112 §6.3).
            let mut codings = tokens(h.value);
            if codings.next_back().is_none_or(|c| !c.eq_ignore_ascii_case(b"chunked"))
                || codings.any(|c| c.eq_ignore_ascii_case(b"chunked"))
            {
                return None;
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    if version == 1 && hosts != 1 {
        return None; // RFC 9112 §3.2: exactly one Host in HTTP/1.1
    }
    let body = match (chunked, length) {
        (true, Some(_)) => return None, // both: a smuggling attempt, refused
        (true, None) => Body::Chunked,
        (false, n) => Body::Length(n.unwrap_or(0)),
    };
    let close = close || (version == 0 && !keep_alive);
    Some((body, close))
}

/// A `Content-Length` value: 1 to 19 ASCII digits (no sign, no spaces inside).
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(v: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// One past the end of the chunked body whose walk starts at `from` (the size line of its
/// first chunk, or of the first one an earlier call did not see complete), the trailer section
/// included, or the [`Next`] to return: incomplete (with where to resume: [`SCANNED_BODY`]), too
/// long (over `max`), malformed.
fn chunked_end(buf: &[u8], from: usize, max: usize, lim: &Limits) -> Result<usize, Next> {
    let mut pos = from;
    let incomplete = |len: usize, at: usize| {
        if len >= max { Next::TooLong } else { Next::Incomplete { scanned: SCANNED_BODY | at } }
    };
    loop {
        let rest = &buf[pos..];
        // parse_chunk_size takes an empty size line as 0; a size needs a digit.
        if rest.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
            return Err(Next::Malformed);
        }
        let (line, size) = match httparse::parse_chunk_size(rest) {
            Ok(Status::Complete(v)) => v,
            Ok(Status::Partial) => return Err(incomplete(buf.len(), pos)),
            Err(_) => return Err(Next::Malformed),
        };
        let size_line = pos;
        pos += line;
        if size == 0 {
            return trailer_end(buf, pos, max, lim).map_err(|e| match e {
                Next::Incomplete { .. } => incomplete(buf.len(), size_line),
                e => e,
            });
        }
        // The data and its CRLF must fit in `max`; the compare is done in u64 first.
        if size > (max - pos.min(max)) as u64 {
            return Err(Next::TooLong);
        }
        let data_end = pos + size as usize; // <= max
        if buf.len() < data_end + 2 {
            return Err(incomplete(data_end + 2, size_line));
        }
        if &buf[data_end..data_end + 2] != b"\r\n" {
            return Err(Next::Malformed);
        }
        pos = data_end + 2;
    }
}

/// One past the trailer section that starts at `pos` (after the last chunk's size line): header
/// fields, then an empty line. Like a head, at most `max_head` bytes ([`Next::HeadTooLarge`]):
/// it is searched again from its start on each read until it is complete.
fn trailer_end(buf: &[u8], pos: usize, max: usize, lim: &Limits) -> Result<usize, Next> {
    let rest = &buf[pos..];
    if rest.starts_with(b"\r\n") {
        return if pos + 2 > max { Err(Next::TooLong) } else { Ok(pos + 2) };
    }
    // Fields: the section ends at the first empty line (`\r\n\r\n` from here on).
    let Some(i) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(if buf.len() >= max {
            Next::TooLong
        } else if rest.len() > lim.max_head {
            Next::HeadTooLarge
        } else {
            Next::Incomplete { scanned: 0 }
        });
    };
    if i + 4 > lim.max_head {
        return Err(Next::HeadTooLarge);
    }
    let end = pos + i + 4;
    if end > max {
        return Err(Next::TooLong);
    }
    let mut fields = [EMPTY_HEADER; MAX_HEADERS];
    let fields = &mut fields[..lim.max_headers.clamp(1, MAX_HEADERS)];
    match httparse::parse_headers(&buf[pos..end], fields) {
        Ok(Status::Complete((n, _))) if pos + n == end => Ok(end),
        Err(httparse::Error::TooManyHeaders) => Err(Next::HeadTooLarge),
        _ => Err(Next::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4096;

    fn lim() -> Limits {
        Limits { max_head: 1024, max_headers: 8 }
    }

    fn next(buf: &[u8]) -> Next {
        next_message(buf, 0, MAX, &lim())
    }

    fn whole(buf: &[u8]) -> Next {
        Next::Message { start: 0, end: buf.len(), consumed: buf.len() }
    }

    fn last(buf: &[u8]) -> Next {
        Next::Last { start: 0, end: buf.len(), consumed: buf.len() }
    }

    /// Every prefix of `req` is incomplete, the whole is `want`, and the same holds when `scanned`
    /// carries over from the previous (shorter) buffer, as the event loop does.
    fn check_every_split(req: &[u8], want: Next) {
        let mut scanned = 0;
        for cut in 0..req.len() {
            match next_message(&req[..cut], scanned, MAX, &lim()) {
                Next::Incomplete { scanned: s } => {
                    assert!(s & !SCANNED_BODY <= cut, "scanned {s:#x} beyond {cut}");
                    scanned = s;
                }
                other => panic!("prefix of {cut} bytes of {:?}: {other:?}", show(req)),
            }
        }
        assert_eq!(next_message(req, scanned, MAX, &lim()), want, "{:?}", show(req));
        assert_eq!(next_message(req, 0, MAX, &lim()), want, "{:?}", show(req));
        // With a following request behind it: the same boundary.
        let mut two = req.to_vec();
        two.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(next_message(&two, 0, MAX, &lim()), want, "{:?} + a second", show(req));
    }

    /// A chunked body arriving a few bytes per read: the walk resumes at the first chunk not yet
    /// complete ([`SCANNED_BODY`]), so no read walks the chunks before it again (quadratic work
    /// for a client that trickles a body of many small chunks: the http fuzz target's slow
    /// input, fuzz/slow/http).
    #[test]
    fn chunked_walk_resumes_where_it_stopped() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut req = head.to_vec();
        for _ in 0..3 {
            req.extend_from_slice(b"1\r\nx\r\n");
        }
        let fourth = req.len();
        req.extend_from_slice(b"1\r");
        let Next::Incomplete { scanned } = next_message(&req, 0, MAX, &lim()) else {
            panic!("incomplete")
        };
        assert_eq!(scanned, SCANNED_BODY | fourth, "resumes at the fourth chunk's size line");
        // Handed back with more bytes: the same position until that chunk is complete, then on.
        req.extend_from_slice(b"\nx");
        assert_eq!(next_message(&req, scanned, MAX, &lim()), Next::Incomplete { scanned });
        req.extend_from_slice(b"\r\n0\r\n");
        let Next::Incomplete { scanned: s2 } = next_message(&req, scanned, MAX, &lim()) else {
            panic!("incomplete")
        };
        assert_eq!(s2, SCANNED_BODY | (fourth + 6), "resumes at the last chunk's size line");
        req.extend_from_slice(b"\r\n");
        assert_eq!(next_message(&req, s2, MAX, &lim()), whole(&req));
        assert_eq!(next_message(&req, 0, MAX, &lim()), whole(&req));
    }

    /// A trailer section counts against `max_head` like a head: larger, it is `431`, whole or
    /// arriving in pieces (it is searched from its start on each read, so it must be bounded).
    #[test]
    fn a_trailer_over_max_head_is_refused() {
        let mut req =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        req.extend_from_slice(b"X-Long: ");
        req.extend(std::iter::repeat_n(b'y', lim().max_head));
        assert_eq!(next_message(&req, 0, MAX, &lim()), Next::HeadTooLarge, "incomplete");
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(next_message(&req, 0, MAX, &lim()), Next::HeadTooLarge, "complete");
    }

    fn show(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn get_keep_alive_and_close() {
        let r = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        check_every_split(r, whole(r));
        let r = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        check_every_split(r, last(r));
        let r = b"GET / HTTP/1.1\r\nHost: a\r\nconnection: Upgrade, CLOSE\r\n\r\n";
        check_every_split(r, last(r));
        // HTTP/1.0: closes unless keep-alive; no Host needed.
        let r = b"GET / HTTP/1.0\r\n\r\n";
        check_every_split(r, last(r));
        let r = b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
        check_every_split(r, whole(r));
    }

    #[test]
    fn bare_lf_lines_and_leading_empty_lines() {
        let r = b"GET / HTTP/1.1\nHost: a\n\n";
        check_every_split(r, whole(r));
        let r = b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        check_every_split(r, Next::Message { start: 3, end: r.len(), consumed: r.len() });
        // Only empty lines so far: wait for the request.
        assert_eq!(next(b"\r\n\r\n"), Next::Incomplete { scanned: 4 });
        assert_eq!(next(b"\r\n\r"), Next::Incomplete { scanned: 3 });
    }

    #[test]
    fn content_length_body() {
        let r = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        check_every_split(r, whole(r));
        let r = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
        check_every_split(r, whole(r));
        // Repeated and equal is allowed; different is not.
        let r = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi";
        check_every_split(r, whole(r));
        for bad in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nhi",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
        ] {
            assert_eq!(next(bad), Next::Malformed, "{:?}", show(bad));
        }
    }

    #[test]
    fn body_limit_counts_head_and_body() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ";
        let mk = |n: usize| {
            let mut r = head.to_vec();
            r.extend_from_slice(format!("{n}\r\n\r\n").as_bytes());
            let h = r.len();
            r.resize(h + n, b'x');
            (r, h)
        };
        let (fits, h) = mk(100);
        let max = fits.len();
        assert_eq!(next_message(&fits, 0, max, &lim()), whole(&fits));
        let (over, _) = mk(101);
        assert_eq!(
            next_message(&over[..h + 1], 0, max, &lim()),
            Next::TooLong,
            "known from the head"
        );
        // Absurd lengths: no overflow.
        let r = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n";
        assert_eq!(next(r), Next::TooLong);
        let r = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n";
        assert_eq!(next(r), Next::Malformed, "20 digits");
    }

    #[test]
    fn chunked_body() {
        let r = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        check_every_split(r, whole(r));
        let r = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
        check_every_split(r, whole(r));
        // Trailer fields.
        let r = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                  3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-More: 2\r\n\r\n";
        check_every_split(r, last(r));
    }

    #[test]
    fn chunked_refusals() {
        let h = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let with = |body: &[u8]| [h.as_slice(), body].concat();
        for bad in [
            &b"\r\n0\r\n\r\n"[..],    // empty size line
            b"g\r\n",                 // not hex
            b"5\r\nhelloXX0\r\n\r\n", // no CRLF after the data
            b"5\nhello\r\n0\r\n\r\n", // bare LF after the size
            b"0\r\nbad trailer\r\n\r\n",
            b"11111111111111111\r\n", // 17 hex digits
        ] {
            assert_eq!(next(&with(bad)), Next::Malformed, "{:?}", show(bad));
        }
        // A chunk beyond max, known from its size line.
        assert_eq!(next(&with(b"100000\r\n")), Next::TooLong);
        assert_eq!(next(&with(b"fffffffffffffff\r\n")), Next::TooLong);
        // An endless chunk extension or trailer stops at max.
        let mut ext = with(b"1;");
        ext.resize(MAX, b'e');
        assert_eq!(next(&ext), Next::TooLong);
        let mut tr = with(b"0\r\nX: ");
        tr.resize(MAX, b't');
        assert_eq!(next(&tr), Next::TooLong);
        // Too many trailer fields.
        let mut many = with(b"0\r\n");
        for i in 0..9 {
            many.extend_from_slice(format!("T{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(next(&many), Next::HeadTooLarge);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for bad in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",                         // no Host
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",   // two
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",             // space before the colon
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET /\r\n\r\n",                                  // HTTP/0.9
            b"hello\r\n\r\n",
            b"GET / HTTP/1.1\rHost: a\r\n\r\n",
            b"\r\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(next(bad), Next::Malformed, "{:?}", show(bad));
        }
    }

    #[test]
    fn head_limits() {
        let lim = lim();
        // A head of exactly max_head fits; one byte more does not.
        let mut r = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        r.resize(lim.max_head - 4, b'v');
        r.extend_from_slice(b"\r\n\r\n");
        assert_eq!(r.len(), lim.max_head);
        assert_eq!(next(&r), whole(&r));
        let mut r2 = r[..r.len() - 4].to_vec();
        r2.extend_from_slice(b"v\r\n\r\n");
        assert_eq!(next(&r2), Next::HeadTooLarge);
        // Known before the end arrives.
        assert_eq!(next(&r2[..lim.max_head]), Next::HeadTooLarge);
        assert_eq!(next(&r2[..lim.max_head - 1]), Next::Incomplete { scanned: lim.max_head - 1 });
        // max_message caps the head too.
        assert_eq!(next_message(&r, 0, 100, &lim), Next::HeadTooLarge);
        // Header count: max_headers fit, one more does not.
        let mut h = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..lim.max_headers - 1 {
            h.extend_from_slice(format!("X{i}: v\r\n").as_bytes());
        }
        let ok = [h.as_slice(), b"\r\n"].concat();
        assert_eq!(next(&ok), whole(&ok));
        h.extend_from_slice(b"Y: v\r\n\r\n");
        assert_eq!(next(&h), Next::HeadTooLarge);
    }

    #[test]
    fn scanned_is_only_a_hint_for_the_head_end() {
        let r = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        // Any honest `scanned` (a length at which no end was found) gives the same answer.
        for s in 0..r.len() - 1 {
            assert_eq!(next_message(r, s, MAX, &lim()), whole(r), "scanned {s}");
        }
    }

    /// Each error reply parses with httparse as a complete response whose `Content-Length` is
    /// its body, closes, names the server, and carries a valid IMF-fixdate `Date` of the
    /// current second (catches a reply without `Date`, a malformed or stale one, a wrong length).
    #[test]
    fn error_replies_are_well_formed_and_dated() {
        let now = || {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        };
        for st in [ErrorStatus::BadRequest, ErrorStatus::HeadTooLarge, ErrorStatus::ContentTooLarge]
        {
            let before = now();
            let reply = st.reply();
            let after = now();
            let mut h = [EMPTY_HEADER; 8];
            let mut resp = httparse::Response::new(&mut h);
            let Ok(Status::Complete(n)) = resp.parse(&reply) else { panic!("{reply:?}") };
            let code = resp.code.expect("status code");
            assert_eq!(code, st.parts().0[..3].parse::<u16>().unwrap());
            let header = |name: &str| {
                resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
            };
            let len = header("Content-Length").and_then(parse_length).expect("Content-Length");
            assert_eq!(len as usize, reply.len() - n, "{reply:?}");
            assert_eq!(header("Connection"), Some(&b"close"[..]));
            assert_eq!(header("Server"), Some(&b"shmsrv"[..]));
            let date = header("Date").expect("Date");
            let ok = [before, after].iter().any(|&t| date == crate::httpdate::imf_fixdate(t));
            assert!(ok, "Date {:?} is not this second's IMF-fixdate", show(date));
            assert!(reply.len() + 32 <= ERROR_REPLY_MAX, "room to spare: {}", reply.len());
        }
        let fixed = ErrorStatus::BadRequest.reply_dated(b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            show(&fixed),
            "HTTP/1.1 400 Bad Request\r\nServer: shmsrv\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\n\
             Bad Request\n"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_stays_in_bounds(
            buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            scanned in 0usize..700,
            max in 1usize..700,
        ) {
            let lim = Limits { max_head: 200, max_headers: 4 };
            match next_message(&buf, scanned.min(buf.len()), max, &lim) {
                Next::Message { start, end, consumed } | Next::Last { start, end, consumed } => {
                    proptest::prop_assert!(start <= end && end <= consumed && consumed <= buf.len());
                    proptest::prop_assert!(consumed <= max);
                }
                Next::Incomplete { scanned } => proptest::prop_assert!(scanned <= buf.len()),
                _ => {}
            }
        }

        #[test]
        fn pipelined_requests_split_anywhere(
            bodies in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 1..6),
            chunked in proptest::collection::vec(proptest::prelude::any::<bool>(), 6),
            cuts in proptest::collection::vec(1usize..60, 1..8),
        ) {
            // Build a pipeline of requests, each with a Content-Length or a chunked body.
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (i, b) in bodies.iter().enumerate() {
                let mut r = format!("POST /{i} HTTP/1.1\r\nHost: h\r\n").into_bytes();
                if chunked[i] {
                    r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    for part in b.chunks(7) {
                        r.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                        r.extend_from_slice(part);
                        r.extend_from_slice(b"\r\n");
                    }
                    r.extend_from_slice(b"0\r\n\r\n");
                } else {
                    r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
                    r.extend_from_slice(b);
                }
                stream.extend_from_slice(&r);
                want.push(r);
            }
            // Feed it in chunks, cutting messages as the event loop does.
            let (mut buf, mut scanned, mut got, mut pos, mut ci) = (Vec::new(), 0, Vec::new(), 0, 0);
            while pos < stream.len() {
                let n = cuts[ci % cuts.len()].min(stream.len() - pos);
                ci += 1;
                buf.extend_from_slice(&stream[pos..pos + n]);
                pos += n;
                loop {
                    match next_message(&buf, scanned, MAX, &lim()) {
                        Next::Message { start, end, consumed } => {
                            got.push(buf[start..end].to_vec());
                            buf.drain(..consumed);
                            scanned = 0;
                        }
                        Next::Incomplete { scanned: s } => { scanned = s; break; }
                        other => panic!("{other:?}"),
                    }
                }
            }
            proptest::prop_assert!(buf.is_empty());
            proptest::prop_assert_eq!(got, want);
        }
    }
}
