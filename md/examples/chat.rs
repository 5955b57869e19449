//! A chat room as an md binary: every line a client sends goes to every client of the room as
//! `<peer>: line\n` (the sender too); `/who` answers only the sender, with the room's head count.
//!
//! ```text
//! # config: one listener per room; the service name is the room (`chat` or `chat-*`):
//! #   [[io_conn.listener]]
//! #   address = "127.0.0.1:7071"
//! #   service = "chat"
//! #   framing = "line"
//! cargo build -p md --example chat
//! SHMSRV_MD_BIN=target/debug/examples/chat io_conn --config shmsrv.toml --spawn-md 1
//! # or, beside the built-ins: a [[md.group]] with services = ["chat"] and
//! # binary = "/abs/path/target/debug/examples/chat" (see the README)
//! ```
//!
//! What it shows: [`Ctx::broadcast`] (io_conn does the fan-out to every client of the service,
//! whichever md instance serves them), and per-service state in the [`Service`] value. The head
//! count is this md instance's: run one instance (`--spawn-md 1`) for an exact `/who`. `main` is
//! one line, as in `upper.rs`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use md::{Ctx, Service, Status};
use shmq::frame::OpenInfo;

/// Open flows per room.
#[derive(Debug, Default)]
struct Chat {
    rooms: HashMap<String, u64>,
    /// Reused for every outgoing line: no allocation per message.
    line: Vec<u8>,
}

/// Per-flow state.
#[derive(Debug)]
struct Member {
    room: String,
    peer: String,
}

impl Service for Chat {
    type Flow = Member;

    fn open(&mut self, info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<Member> {
        let room = info.service;
        if room != "chat" && !room.starts_with("chat-") {
            return None; // not a room: io_conn closes the flow
        }
        *self.rooms.entry(room.to_owned()).or_default() += 1;
        Some(Member { room: room.to_owned(), peer: info.peer.to_string() })
    }

    fn message(&mut self, m: &mut Member, msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        let text = md::services::strip_eol(msg);
        if text.is_empty() {
            return Status::Done;
        }
        if text == b"/who" {
            let n = self.rooms.get(&m.room).copied().unwrap_or(0);
            let _ = writeln!(cx, "{n} in {}", m.room);
            return Status::Done;
        }
        self.line.clear();
        self.line.extend_from_slice(m.peer.as_bytes());
        self.line.extend_from_slice(b": ");
        self.line.extend_from_slice(text);
        self.line.push(b'\n');
        if let Err(e) = cx.broadcast(&m.room, &self.line) {
            cx.error();
            let _ = writeln!(cx, "ERR {e}");
        }
        Status::Done
    }

    fn close(&mut self, m: Member) {
        if let Some(n) = self.rooms.get_mut(&m.room) {
            *n -= 1;
        }
    }
}

fn main() -> ExitCode {
    md::main(Chat::default())
}
