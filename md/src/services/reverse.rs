//! `reverse` (line framing): sends back each line reversed.
//!
//! The line ending (`\n`, or `\r\n`) is stripped, the text reversed, and `\n` appended: `abc\r\n`
//! → `cba\n`. A line that is valid UTF-8 is reversed by characters (so `héllo` → `olléh`);
//! otherwise by bytes. A last line without `\n` (the client half-closed mid-line) is answered the
//! same way, with `\n`.

use shmq::frame::OpenInfo;

use crate::service::{Ctx, Service, Status};
use crate::services::{cmd, strip_eol};

/// The `reverse` service. Stateless.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reverse;

impl Service for Reverse {
    type Flow = ();

    fn open(&mut self, _info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<()> {
        Some(())
    }

    fn message(&mut self, _flow: &mut (), msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        cx.count(cmd::REVERSE);
        let line = strip_eol(msg);
        match std::str::from_utf8(line) {
            Ok(s) => {
                let mut buf = [0u8; 4];
                for c in s.chars().rev() {
                    cx.send(c.encode_utf8(&mut buf).as_bytes());
                }
            }
            Err(_) => {
                for &b in line.iter().rev() {
                    cx.send(&[b]);
                }
            }
        }
        cx.send(b"\n");
        Status::Done
    }
}
