//! `echo` (raw framing): sends back every chunk exactly as received.

use shmq::frame::OpenInfo;

use crate::service::{Ctx, Service, Status};
use crate::services::cmd;

/// The `echo` service. Stateless.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Service for Echo {
    type Flow = ();

    fn open(&mut self, _info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<()> {
        Some(())
    }

    fn message(&mut self, _flow: &mut (), msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        cx.count(cmd::ECHO);
        cx.send(msg);
        Status::Done
    }
}
