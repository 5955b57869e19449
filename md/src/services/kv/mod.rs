//! `kv` (resp framing): a Redis-protocol key-value service over the shared cache segment
//! (`shmq::cache`), which every md instance reads and writes at once.
//!
//! Commands: `PING`, `ECHO`, `GET`, `SET` (`EX`/`PX`/`EXAT`/`PXAT`/`NX`/`XX`/`KEEPTTL`), `DEL`,
//! `EXISTS`, `INCR`/`DECR`/`INCRBY`/`DECRBY`, `MGET`, `MSET`, `EXPIRE`/`PEXPIRE`/`TTL`/`PTTL`,
//! `DBSIZE`, `FLUSHALL`/`FLUSHDB`, `INFO`, `COMMAND` (`COUNT`, `DOCS`, `INFO`), `CONFIG GET`,
//! `CLIENT` (`SETNAME`, `SETINFO`, …: acknowledged), `SELECT 0`, `AUTH`, `QUIT`. Replies and
//! error texts are Redis's (`-ERR unknown command …`, `-ERR wrong number of arguments …`,
//! `-NOAUTH …`, `-WRONGPASS …`); a full table or pool answers `-OOM …`.
//!
//! io_conn's `resp` framer hands over exactly one well-formed command per message (a RESP2
//! array of bulk strings, or an inline line, which is split here like Redis does: spaces,
//! `"…"` with escapes, `'…'`). Each command runs under the cache mutex once (MSET and MGET too:
//! atomic, as in Redis).
//!
//! The cache is attached at the first `kv` connection and again whenever io_conn replaced it
//! (a new io_conn: the segment's name refers to a new segment), checked at each new connection.

use std::time::Instant;

use shmq::cache::Cache;
use shmq::frame::OpenInfo;
use shmq::region::Backend;
use shmq::sync::Ordering;

use crate::service::{Ctx, Service, Status};

mod commands;
mod parse;

use commands::unix_ms;
use parse::{split_inline, split_multibulk};

/// The version `INFO` reports (the Redis release whose commands this subset follows).
pub const REDIS_VERSION: &str = "7.0.0";

/// Where the cache segment is and what AUTH wants.
#[derive(Debug, Clone, Default)]
pub struct KvOptions {
    /// `shared.shm_backend`.
    pub backend: Option<Backend>,
    /// `shared.name` (the segment is `{name}.kv`); empty: no cache (every kv flow is refused).
    pub name: String,
    /// `kv.password`; empty: none.
    pub password: String,
}

impl KvOptions {
    /// From the config file.
    pub fn from_config(cfg: &config::Config) -> Self {
        let backend = match cfg.shared.shm_backend {
            config::ShmBackend::Posix => Backend::Posix,
            config::ShmBackend::Sysv => Backend::Sysv,
        };
        Self {
            backend: Some(backend),
            name: cfg.shared.name.clone(),
            password: cfg.kv.password.clone(),
        }
    }
}

/// The `kv` service: one per md, shared by its kv flows.
#[derive(Debug)]
pub struct Kv {
    opts: KvOptions,
    cache: Option<Cache>,
    /// Why the last attach failed (logged when it changes).
    problem: Option<String>,
    /// Argument ranges of the current command (into `msg` or `inline`).
    args: Vec<(usize, usize)>,
    /// Unescaped inline arguments.
    inline: Vec<u8>,
    /// A value read from the cache.
    val: Vec<u8>,
    /// Commands not yet added to the shared counter (added every 64, and before INFO).
    pending_commands: u64,
    /// Unix ms at `base`.
    base_unix_ms: u64,
    base: Instant,
    started: Instant,
}

/// Per-connection state.
#[derive(Debug, Default)]
pub struct KvFlow {
    authed: bool,
    /// The client asked for RESP3 (`HELLO 3`): maps where Redis 7 sends them (HELLO, CONFIG
    /// GET); every other reply is the same in both (RESP3 parsers accept RESP2's nulls).
    resp3: bool,
}

impl Default for Kv {
    fn default() -> Self {
        Self::new(KvOptions::default())
    }
}

impl Kv {
    /// A kv service that attaches the cache `opts` names.
    pub fn new(opts: KvOptions) -> Self {
        let now = Instant::now();
        Self {
            opts,
            cache: None,
            problem: None,
            args: Vec::with_capacity(16),
            inline: Vec::new(),
            val: Vec::with_capacity(256),
            pending_commands: 0,
            base_unix_ms: unix_ms(),
            base: now,
            started: now,
        }
    }

    /// The cache, (re-)attached if missing or replaced by a new io_conn.
    fn ensure_cache(&mut self) {
        if self.cache.as_ref().is_some_and(|c| !c.is_replaced()) {
            return;
        }
        let Some(backend) = self.opts.backend else { return };
        if self.opts.name.is_empty() {
            return;
        }
        match Cache::attach(backend, &self.opts.name) {
            Ok(c) => {
                log::info!(
                    "kv: attached cache segment {} (epoch {}, {} keys max)",
                    shmq::cache::segment_name(&self.opts.name),
                    c.epoch(),
                    c.max_keys()
                );
                self.cache = Some(c);
                self.problem = None;
            }
            Err(e) => {
                let p = format!("kv: cannot attach the cache segment: {e}");
                if self.problem.as_ref() != Some(&p) {
                    log::warn!("{p}");
                    self.problem = Some(p);
                }
                self.cache = None;
            }
        }
    }

    fn now_ms(&self, cx: &Ctx<'_>) -> u64 {
        self.base_unix_ms + cx.now().saturating_duration_since(self.base).as_millis() as u64
    }

    fn flush_counts(&mut self) {
        if let Some(c) = &self.cache {
            // Relaxed: a statistic.
            c.counters().commands.fetch_add(self.pending_commands, Ordering::Relaxed);
        }
        self.pending_commands = 0;
    }

    fn run(&mut self, flow: &mut KvFlow, src: &[u8], cx: &mut Ctx<'_>) {
        let args = std::mem::take(&mut self.args);
        self.command(flow, src, &args, cx);
        self.args = args;
    }
}

impl Service for Kv {
    type Flow = KvFlow;

    fn open(&mut self, _info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<KvFlow> {
        self.ensure_cache();
        if let Some(c) = &self.cache {
            // Relaxed: a statistic (INFO's connected_clients).
            c.counters().clients.fetch_add(1, Ordering::Relaxed);
        }
        Some(KvFlow { authed: self.opts.password.is_empty(), resp3: false })
    }

    fn message(&mut self, flow: &mut KvFlow, msg: &[u8], cx: &mut Ctx<'_>) -> Status {
        self.args.clear();
        if msg.first() == Some(&b'*') {
            if !split_multibulk(msg, &mut self.args) {
                cx.error();
                cx.send(b"-ERR Protocol error: malformed command\r\n");
                return Status::Done;
            }
            if !self.args.is_empty() {
                self.run(flow, msg, cx);
            }
        } else {
            let line = crate::services::strip_eol(msg);
            let mut buf = std::mem::take(&mut self.inline);
            buf.clear();
            if !split_inline(line, &mut buf, &mut self.args) {
                cx.error();
                cx.send(b"-ERR Protocol error: unbalanced quotes in request\r\n");
            } else if !self.args.is_empty() {
                self.run(flow, &buf, cx);
            }
            self.inline = buf;
        }
        Status::Done
    }

    fn close(&mut self, _flow: KvFlow) {
        if let Some(c) = &self.cache {
            // Relaxed: a statistic. Saturating by a CAS loop is not worth it: a flow opened
            // before a re-attach and closed after it may take one off the new segment's count;
            // fetch_sub wraps, so guard with a load.
            if c.counters().clients.load(Ordering::Relaxed) > 0 {
                c.counters().clients.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
