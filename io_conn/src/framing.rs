//! Framers: find message boundaries in a client's byte stream (`raw`, `line`, `len32`, `http`,
//! `resp`: see [`http`], [`resp`]).
//!
//! Used by the event loop (`server.rs`) on whatever bytes a flow has buffered: the loop's
//! scratch buffer right after a read, or the flow's pooled input buffer. The framers are pure
//! functions over a byte slice: they never copy, allocate or parse beyond the boundary (md
//! parses the message). io_conn finds boundaries only.
//!
//! | framing | a message is | too long |
//! |---|---|---|
//! | `raw` | whatever is buffered, cut at `max` bytes | never |
//! | `line` | bytes up to and including `\n` | a line of more than `max` bytes, `\n` included |
//! | `len32` | 4-byte big-endian length, then that many bytes; the message *includes* the prefix (md parses it, and writes its replies' prefixes itself: md's output is a plain byte stream for every framing) | prefix + length above `max` |
//! | `http` | an HTTP/1.x request: head, then a body by `Content-Length` or chunked ([`http`]); a request that ends the connection (`Connection: close`, HTTP/1.0) is [`Next::Last`] | head above `io_conn.http.max_head` ([`Next::HeadTooLarge`]), head and body above `max` |
//!
//! # Example
//!
//! ```
//! use config::Framing;
//! use io_conn::framing::{Next, next_message};
//!
//! let buf = b"PING\nPI";
//! assert_eq!(next_message(Framing::Line, buf, 0, 1024), Next::Message { start: 0, end: 5, consumed: 5 });
//! assert_eq!(next_message(Framing::Line, &buf[5..], 0, 1024), Next::Incomplete { scanned: 2 });
//! ```

// An explicit path: the fuzz crate compiles this file through `#[path]`, where a plain
// `mod http;` would be looked for beside it, not in `framing/`.
#[path = "framing/http.rs"]
pub mod http;
// The `resp` framer lives in `crate::resp` (a sibling file; the fuzz crate declares it too).
pub use crate::resp;

use config::Framing;

/// Bytes in a `len32` length prefix.
pub const LEN32_PREFIX: usize = 4;

/// What the framer found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A complete message: the payload is `buf[start..end]`; `consumed` bytes (prefix included)
    /// leave the buffer.
    Message {
        /// First payload byte.
        start: usize,
        /// One past the last payload byte.
        end: usize,
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
    },
    /// No complete message yet (possibly an empty buffer). `scanned` bytes were looked at and
    /// need not be scanned again when more bytes arrive (for `line`).
    Incomplete {
        /// Bytes already searched for a boundary.
        scanned: usize,
    },
    /// The message being received exceeds `max`: a framing error; the connection is closed.
    TooLong,
    /// A complete message, after which the client's input ends (`http`: `Connection: close`,
    /// or HTTP/1.0 without keep-alive): nothing after it is read, and the connection closes
    /// once the replies are out. Fields as in [`Next::Message`].
    Last {
        /// First payload byte.
        start: usize,
        /// One past the last payload byte.
        end: usize,
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
    },
    /// The bytes break the protocol (`http`: `400`): a framing error; the connection is closed.
    Malformed,
    /// A message head over its limits (`http`: `431`): a framing error; the connection is
    /// closed.
    HeadTooLarge,
    /// A protocol error (`resp`): the client gets this whole error line after the replies owed
    /// before it, then the connection is closed.
    Invalid(&'static [u8]),
}

/// Why a framer refused a connection's input: its [`refusal_reply`] goes out after the replies
/// to the messages before, then the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// [`Next::TooLong`].
    TooLong,
    /// [`Next::Malformed`].
    Malformed,
    /// [`Next::HeadTooLarge`].
    HeadTooLarge,
    /// [`Next::Invalid`], with the error line owed.
    Invalid(&'static [u8]),
}

/// What the client gets for a refusal: `line`: `ERR message too long\n`; `http`: a `400`, `431`
/// or `413` response (dated: [`http::ErrorStatus`]); `resp`: its `-ERR Protocol error: ...` line;
/// `raw` and `len32`: nothing (the connection just closes).
pub fn refusal_reply(framing: Framing, r: Refusal) -> Option<Reply> {
    use http::ErrorStatus as E;
    Some(match (framing, r) {
        (Framing::Line, _) => Reply::Static(b"ERR message too long\n"),
        (Framing::Http, Refusal::TooLong) => Reply::Http(E::ContentTooLarge.reply()),
        (Framing::Http, Refusal::Malformed) => Reply::Http(E::BadRequest.reply()),
        (Framing::Http, Refusal::HeadTooLarge) => Reply::Http(E::HeadTooLarge.reply()),
        (_, Refusal::Invalid(line)) => Reply::Static(line),
        // `resp` reports its own errors as `Invalid`; a command above the largest frame too.
        (Framing::Resp, _) => Reply::Static(resp::ERR_TOO_LARGE),
        (Framing::Raw | Framing::Len32, _) => return None,
    })
}

/// A [`refusal_reply`]: fixed bytes, or an HTTP error reply built (with its `Date`) when the
/// refusal is answered. Derefs to the bytes to write.
#[derive(Debug, Clone, Copy)]
// The HTTP reply lives on the stack (some 260 bytes, moved once per refusal): boxing it would
// allocate per error reply, which is what the stack buffer avoids.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// An error line that never changes.
    Static(&'static [u8]),
    /// io_conn's own HTTP error response.
    Http(http::ErrorReply),
}

impl std::ops::Deref for Reply {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Static(b) => b,
            Self::Http(r) => r,
        }
    }
}

/// [`next_message`] with the `http` and `resp` framers' limits (the other framings ignore
/// them): what the event loop calls. A message with `start == end` is an empty command the
/// `resp` framer skips: drop its `consumed` bytes, send nothing.
#[inline]
pub fn next_message_with(
    framing: Framing,
    buf: &[u8],
    scanned: usize,
    max: usize,
    http: &http::Limits,
    resp: &resp::Limits,
) -> Next {
    match framing {
        Framing::Http => http::next_message(buf, scanned, max, http),
        Framing::Resp => resp::next_message(buf, scanned, max, resp),
        _ => next_message(framing, buf, scanned, max),
    }
}

/// Finds the first message in `buf`. `scanned` is what a previous call reported for the same
/// buffer front (0 if unknown); `max` is the largest message payload allowed (`max > 0`).
/// `http` gets the default [`http::Limits`] and `resp` no limits but `max` here (see
/// [`next_message_with`]).
#[inline]
pub fn next_message(framing: Framing, buf: &[u8], scanned: usize, max: usize) -> Next {
    match framing {
        Framing::Http => http::next_message(buf, scanned, max, &http::Limits::default()),
        Framing::Resp => resp::next_message(buf, scanned, max, &resp::Limits::UNLIMITED),
        Framing::Raw => {
            if buf.is_empty() {
                Next::Incomplete { scanned: 0 }
            } else {
                let end = buf.len().min(max);
                Next::Message { start: 0, end, consumed: end }
            }
        }
        Framing::Line => {
            let from = scanned.min(buf.len());
            match buf[from..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let end = from + i + 1;
                    if end > max {
                        Next::TooLong
                    } else {
                        Next::Message { start: 0, end, consumed: end }
                    }
                }
                // Without its `\n` the line is already `len` bytes; with it, one more.
                None if buf.len() >= max => Next::TooLong,
                None => Next::Incomplete { scanned: buf.len() },
            }
        }
        Framing::Len32 => {
            if buf.len() < LEN32_PREFIX {
                return Next::Incomplete { scanned: 0 };
            }
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > max.saturating_sub(LEN32_PREFIX) {
                return Next::TooLong;
            }
            let end = LEN32_PREFIX + len;
            if buf.len() >= end {
                Next::Message { start: 0, end, consumed: end }
            } else {
                Next::Incomplete { scanned: 0 }
            }
        }
    }
}

/// How much room a flow's input buffer needs to hold one whole message of up to `max` bytes
/// plus one more read of `read` bytes.
pub fn input_capacity(framing: Framing, max: usize, read: usize) -> usize {
    match framing {
        Framing::Raw => max.max(read),
        Framing::Line => max + read,
        Framing::Len32 | Framing::Http | Framing::Resp => max + read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `stream` to the framer in the given chunk sizes, the way the event loop does
    /// (append, then cut as many messages as possible), returning the messages or `None` on a
    /// framing error.
    fn frame_all(
        framing: Framing,
        stream: &[u8],
        chunks: &[usize],
        max: usize,
    ) -> Option<Vec<Vec<u8>>> {
        let mut buf: Vec<u8> = Vec::new();
        let mut scanned = 0;
        let mut out = Vec::new();
        let mut pos = 0;
        let mut ci = 0;
        while pos < stream.len() {
            let n = chunks[ci % chunks.len()].max(1).min(stream.len() - pos);
            ci += 1;
            buf.extend_from_slice(&stream[pos..pos + n]);
            pos += n;
            loop {
                match next_message(framing, &buf, scanned, max) {
                    Next::Message { start, end, consumed } => {
                        out.push(buf[start..end].to_vec());
                        buf.drain(..consumed);
                        scanned = 0;
                    }
                    Next::Incomplete { scanned: s } => {
                        scanned = s;
                        break;
                    }
                    Next::TooLong
                    | Next::Malformed
                    | Next::HeadTooLarge
                    | Next::Invalid(_)
                    | Next::Last { .. } => {
                        return None;
                    }
                }
            }
        }
        Some(out)
    }

    #[test]
    fn line_basic_and_pipelined() {
        let got = frame_all(Framing::Line, b"PING\nWAIT 5\nPI", &[100], 64).unwrap();
        assert_eq!(got, vec![b"PING\n".to_vec(), b"WAIT 5\n".to_vec()]);
    }

    #[test]
    fn line_too_long_exactly_at_the_limit() {
        // A 5-byte line ("abcd\n") fits max 5; a 6-byte one does not.
        assert_eq!(
            next_message(Framing::Line, b"abcd\n", 0, 5),
            Next::Message { start: 0, end: 5, consumed: 5 }
        );
        assert_eq!(next_message(Framing::Line, b"abcde\n", 0, 5), Next::TooLong);
        // Five bytes and no newline yet: the line can only end longer than 5.
        assert_eq!(next_message(Framing::Line, b"abcde", 0, 5), Next::TooLong);
        assert_eq!(next_message(Framing::Line, b"abcd", 0, 5), Next::Incomplete { scanned: 4 });
    }

    #[test]
    fn line_rescans_only_new_bytes() {
        // `scanned` says the first 3 bytes hold no newline: a newline there is not seen.
        assert_eq!(
            next_message(Framing::Line, b"a\nbc\n", 3, 64),
            Next::Message { start: 0, end: 5, consumed: 5 }
        );
    }

    #[test]
    fn len32_keeps_prefix_and_checks_max() {
        let mut m = 3u32.to_be_bytes().to_vec();
        m.extend_from_slice(b"abcXX");
        assert_eq!(
            next_message(Framing::Len32, &m, 0, 16),
            Next::Message { start: 0, end: 7, consumed: 7 }
        );
        assert_eq!(next_message(Framing::Len32, &m[..6], 0, 16), Next::Incomplete { scanned: 0 });
        assert_eq!(next_message(Framing::Len32, &m[..3], 0, 16), Next::Incomplete { scanned: 0 });
        // max counts the prefix: 12 payload bytes + 4 fit in 16, 13 do not.
        assert_eq!(next_message(Framing::Len32, &13u32.to_be_bytes(), 0, 16), Next::TooLong);
        assert_eq!(
            next_message(Framing::Len32, &12u32.to_be_bytes(), 0, 16),
            Next::Incomplete { scanned: 0 }
        );
        // An empty message is a message.
        assert_eq!(
            next_message(Framing::Len32, &[0, 0, 0, 0], 0, 16),
            Next::Message { start: 0, end: 4, consumed: 4 }
        );
    }

    #[test]
    fn raw_cuts_at_max() {
        assert_eq!(
            next_message(Framing::Raw, &[1; 10], 0, 4),
            Next::Message { start: 0, end: 4, consumed: 4 }
        );
        assert_eq!(next_message(Framing::Raw, &[], 0, 4), Next::Incomplete { scanned: 0 });
    }

    proptest! {
        #[test]
        fn line_messages_independent_of_chunking(
            lines in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..40), 0..20),
            chunks in proptest::collection::vec(1usize..50, 1..10),
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for l in &lines {
                let mut m: Vec<u8> = l.iter().copied().filter(|&b| b != b'\n').collect();
                m.push(b'\n');
                stream.extend_from_slice(&m);
                want.push(m);
            }
            let got = frame_all(Framing::Line, &stream, &chunks, 64).unwrap();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn len32_messages_independent_of_chunking(
            msgs in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..100), 0..20),
            chunks in proptest::collection::vec(1usize..70, 1..10),
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for m in &msgs {
                let mut w = (m.len() as u32).to_be_bytes().to_vec();
                w.extend_from_slice(m);
                stream.extend_from_slice(&w);
                want.push(w);
            }
            let got = frame_all(Framing::Len32, &stream, &chunks, 104).unwrap();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn raw_preserves_bytes(
            stream in proptest::collection::vec(0u8..=255, 0..500),
            chunks in proptest::collection::vec(1usize..70, 1..10),
        ) {
            let got = frame_all(Framing::Raw, &stream, &chunks, 32).unwrap();
            prop_assert!(got.iter().all(|m| !m.is_empty() && m.len() <= 32));
            prop_assert_eq!(got.concat(), stream);
        }

        #[test]
        fn framers_never_panic_on_garbage(buf in proptest::collection::vec(0u8..=255, 0..300), scanned in 0usize..400, max in 1usize..200) {
            for f in [Framing::Raw, Framing::Line, Framing::Len32, Framing::Http] {
                match next_message(f, &buf, scanned, max) {
                    Next::Message { start, end, consumed } | Next::Last { start, end, consumed } => {
                        prop_assert!(start <= end && end <= consumed && consumed <= buf.len());
                        prop_assert!(end - start <= max);
                    }
                    Next::Incomplete { scanned } => prop_assert!(scanned <= buf.len()),
                    Next::TooLong | Next::Malformed | Next::HeadTooLarge | Next::Invalid(_) => {}
                }
            }
        }
    }
}
