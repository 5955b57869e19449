//! Reply ends (OPEN flag `OPEN_MARK_ENDS`): md marks where each request's reply ends, so io_conn
//! can dispatch one connection's requests to several md instances and put the replies back in
//! order. Without the flag nothing is marked.

mod util;

use md::services::{Builtin, DumbOptions};
use shmq::frame::Kind;
use shmq::frame::flags::{DATA_END, MAX_ENDS, OPEN_FLOW_ENDS, OPEN_MARK_ENDS, data_ends};
use util::{Geometry, Io, flow, opts};

fn start(test: &str) -> Io {
    let b = Builtin::new(DumbOptions::default());
    let mut io = Io::start(test, b, opts(), Geometry::default());
    io.expect_hello();
    io
}

/// Reads DATA frames of `f` until `n` reply ends were seen; returns each reply's bytes. Returns
/// DRAINED for every byte at once (as a fast client would), and fails on any other frame.
fn replies(io: &mut Io, f: shmq::FlowId, n: usize) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    while out.len() <= n {
        let o = io.recv();
        assert_eq!((o.flow, o.kind), (f, Kind::Data), "unexpected frame {o:?}");
        out.last_mut().expect("one reply open").extend_from_slice(&o.payload);
        if !o.payload.is_empty() {
            io.drained(f, o.payload.len() as u64);
        }
        if o.flags & DATA_END != 0 {
            out.push(Vec::new());
        }
    }
    assert!(out.pop().expect("trailing").is_empty());
    out
}

#[test]
fn each_reply_ends_with_a_marked_frame() {
    let mut io = start("ends-each");
    let f = flow(3);
    io.open_flagged(f, "dumb", 1 << 20, OPEN_MARK_ENDS);
    io.lines(f, "PING\nBURN 10\nWAIT 1\nPING\nHELLO\nSTREAM 3\n");
    let got = replies(&mut io, f, 6);
    let want: [&[u8]; 6] = [
        b"PONG\n",
        b"RESULT 55\n",
        b"DONE\n",
        b"PONG\n",
        b"ERR unknown command (expected PING, WAIT, BURN or STREAM)\n",
        b"AAADONE\n",
    ];
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(String::from_utf8_lossy(g), String::from_utf8_lossy(w), "reply {k}");
    }
    io.stop();
}

#[test]
fn a_stream_split_by_credit_is_marked_once_at_its_end() {
    let mut io = start("ends-credit");
    let f = flow(4);
    // A small credit: STREAM 1000 goes out in many frames, each waiting for DRAINED.
    io.open_flagged(f, "dumb", 64, OPEN_MARK_ENDS);
    io.lines(f, "STREAM 1000\nPING\n");
    let mut frames_before_end = 0;
    let mut bytes = 0;
    loop {
        let o = io.recv();
        assert_eq!((o.flow, o.kind), (f, Kind::Data));
        assert!(o.payload.len() <= 64, "credit kept");
        bytes += o.payload.len();
        io.drained(f, o.payload.len() as u64);
        if o.flags & DATA_END != 0 {
            break;
        }
        frames_before_end += 1;
    }
    assert_eq!(bytes, 1000 + "DONE\n".len(), "the END came with the reply's last byte");
    assert!(frames_before_end > 10, "the reply was split ({frames_before_end} frames)");
    assert_eq!(replies(&mut io, f, 1), vec![b"PONG\n".to_vec()]);
    io.stop();
}

/// A request whose reply is empty still gets its end marked: an empty DATA frame with the flag.
#[test]
fn an_empty_reply_is_an_empty_marked_frame() {
    let mut io = start("ends-empty");
    let f = flow(5);
    io.open_flagged(f, "echo", 1 << 20, OPEN_MARK_ENDS);
    io.data(f, b"");
    io.data(f, b"x");
    let got = replies(&mut io, f, 2);
    assert_eq!(got, vec![Vec::new(), b"x".to_vec()]);
    io.stop();
}

#[test]
fn without_the_open_flag_nothing_is_marked() {
    let mut io = start("ends-none");
    let f = flow(6);
    io.open(f, "dumb", 1 << 20);
    io.lines(f, "PING\nPING\n");
    // The second PONG in its own frame, flag clear, then a marked flow shows the contrast.
    let mut got = Vec::new();
    while got.len() < 10 {
        let o = io.recv();
        assert_eq!((o.flow, o.kind, o.flags), (f, Kind::Data, 0), "{o:?}");
        got.extend_from_slice(&o.payload);
    }
    assert_eq!(got, b"PONG\nPONG\n");
    io.stop();
}

/// A line service for [`Ctx::close`](md::Ctx::close): `PING` → `PONG`, `QUIT` → `BYE` then
/// close, `WAIT` → a timer whose callback writes `DONE`, closes and finishes the request.
struct Quitter;

impl md::Service for Quitter {
    type Flow = ();

    fn open(&mut self, _info: &shmq::frame::OpenInfo<'_>, _cx: &mut md::Ctx<'_>) -> Option<()> {
        Some(())
    }

    fn message(&mut self, _flow: &mut (), msg: &[u8], cx: &mut md::Ctx<'_>) -> md::Status {
        match md::services::strip_eol(msg) {
            b"QUIT" => {
                cx.send(b"BYE\n");
                cx.close();
                assert!(cx.is_closing());
            }
            b"WAIT" => {
                cx.set_timer(std::time::Duration::from_millis(20), 7);
                return md::Status::Pending;
            }
            _ => cx.send(b"PONG\n"),
        }
        md::Status::Done
    }

    fn timer(&mut self, _flow: &mut (), _token: u64, cx: &mut md::Ctx<'_>) -> md::Status {
        cx.send(b"DONE\n");
        cx.close();
        md::Status::Done
    }
}

fn start_quitter(test: &str) -> Io {
    let mut io = Io::start(test, Quitter, opts(), Geometry::default());
    io.expect_hello();
    io
}

/// `Ctx::close` under request dispatch: the closing request's reply end also carries
/// `DATA_CLOSE` (io_conn cuts the connection there), then CLOSE follows; the request pipelined
/// behind QUIT is never answered. Catches a close that is not ordered after the reply, a
/// missing or misplaced `DATA_CLOSE`, and md answering a request after the close.
#[test]
fn service_close_marks_the_last_reply_and_closes_after_it() {
    use shmq::frame::flags::DATA_CLOSE;
    let mut io = start_quitter("ends-quit");
    let f = flow(7);
    let other = flow(8);
    io.open_flagged(f, "q", 1 << 20, OPEN_MARK_ENDS);
    io.lines(f, "PING\nQUIT\nPING\n");
    let mut frames = Vec::new();
    loop {
        let o = io.recv();
        assert_eq!(o.flow, f, "{o:?}");
        let end = o.kind != Kind::Data;
        frames.push((o.kind, o.flags, String::from_utf8_lossy(&o.payload).into_owned()));
        if end {
            break;
        }
    }
    let want = vec![
        (Kind::Data, DATA_END, "PONG\n".to_string()),
        (Kind::Data, DATA_END | DATA_CLOSE, "BYE\n".to_string()),
        (Kind::Close, 0, String::new()),
    ];
    assert_eq!(frames, want);
    // Nothing more for `f`: another flow's answer is the very next frame.
    io.open(other, "q", 1 << 20);
    io.lines(other, "PING\n");
    io.expect_next_bytes(other, b"PONG\n");
    io.expect_nothing_else(other, "PING\n", b"PONG\n");
    io.stop();
}

/// Under flow dispatch (no end marks) the close comes as CLOSE right after the reply bytes;
/// a request held while the closing one was pending is dropped, not run.
#[test]
fn service_close_from_a_timer_drops_held_requests() {
    let mut io = start_quitter("ends-quit-held");
    let f = flow(9);
    io.open(f, "q", 1 << 20);
    io.lines(f, "PING\nWAIT\nPING\nPING\n");
    io.expect_next_bytes(f, b"PONG\nDONE\n");
    let o = io.recv();
    assert_eq!((o.flow, o.kind), (f, Kind::Close), "CLOSE right after DONE: {o:?}");
    let other = flow(10);
    io.open(other, "q", 1 << 20);
    io.lines(other, "PING\n");
    io.expect_next_bytes(other, b"PONG\n");
    io.expect_nothing_else(other, "PING\n", b"PONG\n");
    io.stop();
}

/// Reads DATA frames of flow-dispatched `f` until `n` replies were completed (skipping PAUSE and
/// RESUME); returns the bytes and the frames, each as (payload length, replies it completes).
/// Returns DRAINED for every byte at once.
fn flow_replies(io: &mut Io, f: shmq::FlowId, n: u32) -> (Vec<u8>, Vec<(usize, u32)>) {
    let (mut bytes, mut frames, mut ends) = (Vec::new(), Vec::new(), 0);
    while ends < n {
        let o = io.recv();
        if matches!(o.kind, Kind::Pause | Kind::Resume) {
            continue;
        }
        assert_eq!((o.flow, o.kind), (f, Kind::Data), "unexpected frame {o:?}");
        bytes.extend_from_slice(&o.payload);
        if !o.payload.is_empty() {
            io.drained(f, o.payload.len() as u64);
        }
        ends += data_ends(o.flags);
        frames.push((o.payload.len(), data_ends(o.flags)));
    }
    assert_eq!(ends, n, "no frame completes more replies than were asked");
    (bytes, frames)
}

/// Flow dispatch (`OPEN_FLOW_ENDS`): the replies to a batch of requests md drains at once go
/// out in one frame that says how many replies it completes (one ring frame and one client
/// write per batch instead of one per command).
#[test]
fn a_flow_dispatched_batch_is_one_frame_with_its_reply_count() {
    let mut io = start("ends-flow-batch");
    let f = flow(7);
    io.open_flagged(f, "dumb", 1 << 20, OPEN_FLOW_ENDS);
    io.lines_batched(f, "PING\nPING\nBURN 10\nHELLO\nPING\n");
    let (bytes, frames) = flow_replies(&mut io, f, 5);
    let want =
        "PONG\nPONG\nRESULT 55\nERR unknown command (expected PING, WAIT, BURN or STREAM)\nPONG\n";
    assert_eq!(String::from_utf8_lossy(&bytes), want);
    assert_eq!(frames, vec![(want.len(), 5)], "one frame for the batch");
    // A pending request in the middle: what came before it goes at once, the rest (held behind
    // it) in one frame when it completes, in order.
    io.lines_batched(f, "PING\nWAIT 1\nPING\nPING\n");
    let (bytes, frames) = flow_replies(&mut io, f, 4);
    assert_eq!(String::from_utf8_lossy(&bytes), "PONG\nDONE\nPONG\nPONG\n");
    assert_eq!(frames, vec![(5, 1), (15, 3)]);
    io.stop();
}

/// More replies than one frame may count ([`MAX_ENDS`]) are split exactly at the last reply the
/// first frame counts; a request-dispatched flow still gets one frame per reply.
#[test]
fn a_frame_counts_at_most_max_ends_replies() {
    let mut io = start("ends-flow-cap");
    let f = flow(8);
    io.open_flagged(f, "dumb", 1 << 20, OPEN_FLOW_ENDS);
    // 300 PINGs held behind a WAIT (long enough for md to drain them all first) run together
    // once it is done.
    let mut text = String::from("WAIT 200\n");
    for _ in 0..300 {
        text.push_str("PING\n");
    }
    io.lines_batched(f, &text);
    let (bytes, frames) = flow_replies(&mut io, f, 301);
    assert_eq!(bytes, [&b"DONE\n"[..], &b"PONG\n".repeat(300)].concat());
    assert_eq!(frames, vec![(5 * MAX_ENDS, MAX_ENDS as u32), (5 * (301 - MAX_ENDS), 45)]);
    // 300 held requests paused the flow (PAUSE came first); it resumes after their replies.
    let o = io.recv();
    assert_eq!((o.flow, o.kind), (f, Kind::Resume), "{o:?}");
    // Request dispatch: the same batch, one marked frame per reply.
    let g = flow(9);
    io.open_flagged(g, "dumb", 1 << 20, OPEN_MARK_ENDS);
    io.lines_batched(g, "PING\nPING\nPING\n");
    assert_eq!(replies(&mut io, g, 3), vec![b"PONG\n".to_vec(); 3]);
    io.stop();
}
