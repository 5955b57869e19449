//! The built-in services and [`Builtin`], which serves all of them by name.
//!
//! | service | framing | behaviour |
//! |---|---|---|
//! | [`echo`] | raw | sends back every chunk as received |
//! | [`reverse`] | line | sends back each line reversed, then `\n` |
//! | [`dumb`] | line | `PING`, `WAIT <ms>`, `BURN <n>` (in time slices), `STREAM <n>` (see the module) |
//! | [`http`] | http | `GET /` (`hello`), `/whoami` (the client's address), `/metrics` (Prometheus text) |
//! | [`kv`] | resp | a Redis-protocol key-value store over the shared cache segment (see the module) |

pub mod dumb;
pub mod echo;
pub mod http;
pub mod kv;
pub mod reverse;

use shmq::frame::OpenInfo;

use crate::service::{Ctx, Service, Status};

pub use dumb::{Burn, Dumb, DumbFlow, DumbOptions};
pub use echo::Echo;
pub use http::{Http, HttpFlow, HttpOptions};
pub use kv::{Kv, KvFlow, KvOptions};
pub use reverse::Reverse;

/// `msg` without its line ending: one trailing `\n`, then one trailing `\r`, if present.
pub fn strip_eol(msg: &[u8]) -> &[u8] {
    let m = msg.strip_suffix(b"\n").unwrap_or(msg);
    m.strip_suffix(b"\r").unwrap_or(m)
}

/// Every built-in service in one [`Service`], chosen per flow by the `OPEN` frame's service name
/// (`echo`, `reverse`, `dumb`, `http`); other names are refused (the flow is closed).
#[derive(Debug)]
pub struct Builtin {
    /// The `dumb` service (holds its limits).
    pub dumb: Dumb,
    /// The `http` service (where `/metrics` reads the stats).
    pub http: Http,
    /// The `kv` service (the shared cache; without [`Builtin::with_kv`] it has none and answers
    /// every data command with an error).
    pub kv: Kv,
}

/// Per-flow state of [`Builtin`].
#[derive(Debug)]
pub enum BuiltinFlow {
    /// An `echo` flow.
    Echo,
    /// A `reverse` flow.
    Reverse,
    /// A `dumb` flow.
    Dumb(DumbFlow),
    /// An `http` flow.
    Http(HttpFlow),
    /// A `kv` flow.
    Kv(KvFlow),
}

/// Command indices of [`Builtin`] (see [`Service::command_names`]).
pub mod cmd {
    /// An echoed chunk.
    pub const ECHO: usize = 0;
    /// A reversed line.
    pub const REVERSE: usize = 1;
    /// `dumb` `PING`.
    pub const PING: usize = 2;
    /// `dumb` `WAIT`.
    pub const WAIT: usize = 3;
    /// `dumb` `BURN`.
    pub const BURN: usize = 4;
    /// `dumb` `STREAM`.
    pub const STREAM: usize = 5;
    /// `dumb` request answered with `ERR`.
    pub const ERR: usize = 6;
    /// `http` `GET /` (or `HEAD`).
    pub const HTTP_ROOT: usize = 7;
    /// `http` `/whoami`.
    pub const HTTP_WHOAMI: usize = 8;
    /// `http` `/metrics`.
    pub const HTTP_METRICS: usize = 9;
    /// `http`: any other request (404, 405, 400).
    pub const HTTP_OTHER: usize = 10;
    /// `kv` GET, MGET, EXISTS.
    pub const KV_GET: usize = 11;
    /// `kv` SET, MSET.
    pub const KV_SET: usize = 12;
    /// `kv` INCR and friends.
    pub const KV_INCR: usize = 13;
    /// `kv` DEL, FLUSHALL.
    pub const KV_DEL: usize = 14;
    /// `kv`: any other command, and unknown or malformed ones (also counted in md's `errors`;
    /// the stats block has 16 command slots, all used).
    pub const KV_OTHER: usize = 15;
}

const COMMANDS: &[&str] = &[
    "echo",
    "reverse",
    "dumb.ping",
    "dumb.wait",
    "dumb.burn",
    "dumb.stream",
    "dumb.err",
    "http.root",
    "http.whoami",
    "http.metrics",
    "http.other",
    "kv.get",
    "kv.set",
    "kv.incr",
    "kv.del",
    "kv.other",
];

impl Builtin {
    /// The built-in services, `dumb` limited by `dumb`; `http`'s `/metrics` reads the default
    /// server's stats (see [`Builtin::with_http`]).
    pub fn new(dumb: DumbOptions) -> Self {
        Self { dumb: Dumb::new(dumb), http: Http::new(HttpOptions::default()), kv: Kv::default() }
    }

    /// The same, with `http`'s `/metrics` reading the server `http` names.
    pub fn with_http(mut self, http: HttpOptions) -> Self {
        self.http = Http::new(http);
        self
    }

    /// With the `kv` service attached to the cache `kv` names.
    pub fn with_kv(mut self, kv: KvOptions) -> Self {
        self.kv = Kv::new(kv);
        self
    }
}

impl Service for Builtin {
    type Flow = BuiltinFlow;

    fn open(&mut self, info: &OpenInfo<'_>, cx: &mut Ctx<'_>) -> Option<BuiltinFlow> {
        match info.service {
            "echo" => Echo.open(info, cx).map(|()| BuiltinFlow::Echo),
            "reverse" => Reverse.open(info, cx).map(|()| BuiltinFlow::Reverse),
            "dumb" => self.dumb.open(info, cx).map(BuiltinFlow::Dumb),
            "http" => self.http.open(info, cx).map(BuiltinFlow::Http),
            "kv" => self.kv.open(info, cx).map(BuiltinFlow::Kv),
            _ => None,
        }
    }

    fn message(&mut self, flow: &mut BuiltinFlow, msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        match flow {
            BuiltinFlow::Echo => Echo.message(&mut (), msg, cx),
            BuiltinFlow::Reverse => Reverse.message(&mut (), msg, cx),
            BuiltinFlow::Dumb(f) => self.dumb.message(f, msg, cx),
            BuiltinFlow::Http(f) => self.http.message(f, msg, cx),
            BuiltinFlow::Kv(f) => self.kv.message(f, msg, cx),
        }
    }

    fn timer(&mut self, flow: &mut BuiltinFlow, token: u64, cx: &mut Ctx<'_>) -> Status {
        match flow {
            BuiltinFlow::Dumb(f) => self.dumb.timer(f, token, cx),
            _ => Status::Done,
        }
    }

    fn drained(&mut self, flow: &mut BuiltinFlow, cx: &mut Ctx<'_>) -> Status {
        match flow {
            BuiltinFlow::Dumb(f) => self.dumb.drained(f, cx),
            _ => Status::Done,
        }
    }

    fn resume(&mut self, flow: &mut BuiltinFlow, cx: &mut Ctx<'_>) -> Status {
        match flow {
            BuiltinFlow::Dumb(f) => self.dumb.resume(f, cx),
            _ => Status::Done,
        }
    }

    fn close(&mut self, flow: BuiltinFlow) {
        match flow {
            BuiltinFlow::Dumb(f) => self.dumb.close(f),
            BuiltinFlow::Kv(f) => self.kv.close(f),
            _ => {}
        }
    }

    fn reload(&mut self, cfg: &config::Config) {
        self.dumb.reload(cfg);
        // `/metrics` labels md slots with the service groups, which a reload may change.
        self.http = Http::new(HttpOptions::from(cfg));
    }

    fn command_names(&self) -> &'static [&'static str] {
        COMMANDS
    }
}
