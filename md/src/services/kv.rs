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

use std::fmt::Write as _;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use shmq::cache::{Cache, Cond, Expiry, Full, IncrError, table::parse_i64};
use shmq::frame::OpenInfo;
use shmq::region::Backend;
use shmq::sync::Ordering;

use crate::service::{Ctx, Service, Status};
use crate::services::cmd;

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

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Writes a bulk string reply.
fn bulk(cx: &mut Ctx<'_>, b: &[u8]) {
    let _ = write!(cx, "${}\r\n", b.len());
    cx.send(b);
    cx.send(b"\r\n");
}

fn int(cx: &mut Ctx<'_>, n: i64) {
    let _ = write!(cx, ":{n}\r\n");
}

const NULL: &[u8] = b"$-1\r\n";
const OK: &[u8] = b"+OK\r\n";
const NOT_INT: &[u8] = b"-ERR value is not an integer or out of range\r\n";
const SYNTAX: &[u8] = b"-ERR syntax error\r\n";
const OOM_SLOT: &[u8] =
    b"-OOM command not allowed: the cache table is full (no free slot for this key; raise kv.max_keys)\r\n";
const OOM_MEM: &[u8] =
    b"-OOM command not allowed: the cache memory is full (raise kv.memory or delete keys)\r\n";
const NO_CACHE: &[u8] = b"-ERR the shared cache is not available (io_conn restarting?)\r\n";

fn full_err(f: Full) -> &'static [u8] {
    match f {
        Full::NoSlot => OOM_SLOT,
        Full::NoMemory => OOM_MEM,
    }
}

/// Splits an inline command like Redis's `sdssplitargs`: arguments separated by spaces/tabs;
/// `"…"` with `\n \r \t \b \a \\ \" \xHH` escapes; `'…'` with `\'`. False on unbalanced quotes
/// or a closing quote not followed by a space.
fn split_inline(line: &[u8], out: &mut Vec<u8>, args: &mut Vec<(usize, usize)>) -> bool {
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= n {
            return true;
        }
        let start = out.len();
        let (mut inq, mut insq) = (false, false);
        loop {
            if inq {
                if i >= n {
                    return false;
                }
                if line[i] == b'\\' && i + 3 < n && line[i + 1] == b'x' {
                    let h = std::str::from_utf8(&line[i + 2..i + 4])
                        .ok()
                        .and_then(|s| u8::from_str_radix(s, 16).ok());
                    if let Some(b) = h {
                        out.push(b);
                        i += 4;
                        continue;
                    }
                }
                if line[i] == b'\\' && i + 1 < n {
                    out.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        c => c,
                    });
                    i += 2;
                    continue;
                }
                if line[i] == b'"' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return false;
                    }
                    i += 1;
                    break;
                }
                out.push(line[i]);
                i += 1;
            } else if insq {
                if i >= n {
                    return false;
                }
                if line[i] == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    out.push(b'\'');
                    i += 2;
                    continue;
                }
                if line[i] == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return false;
                    }
                    i += 1;
                    break;
                }
                out.push(line[i]);
                i += 1;
            } else {
                if i >= n || line[i].is_ascii_whitespace() {
                    break;
                }
                match line[i] {
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    c => out.push(c),
                }
                i += 1;
            }
        }
        args.push((start, out.len()));
    }
}

/// Parses one RESP2 multibulk command into ranges of `msg`. The framer checked it already; a
/// malformed one (never from io_conn) gives false.
fn split_multibulk(msg: &[u8], args: &mut Vec<(usize, usize)>) -> bool {
    fn line(msg: &[u8], from: usize) -> Option<(i64, usize)> {
        let end = from + msg.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((parse_i64(&msg[from..end])?, end + 2))
    }
    let Some((n, mut pos)) = line(msg, 1) else { return false };
    for _ in 0..n.max(0) {
        if msg.get(pos) != Some(&b'$') {
            return false;
        }
        let Some((len, data)) = line(msg, pos + 1) else { return false };
        let Ok(len) = usize::try_from(len) else { return false };
        if data + len + 2 > msg.len() {
            return false;
        }
        args.push((data, data + len));
        pos = data + len + 2;
    }
    true
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

    #[allow(clippy::too_many_lines)]
    fn command(
        &mut self,
        flow: &mut KvFlow,
        src: &[u8],
        args: &[(usize, usize)],
        cx: &mut Ctx<'_>,
    ) {
        let a = |i: usize| &src[args[i].0..args[i].1];
        let name_raw = a(0);
        let mut name_buf = [0u8; 16];
        let name: &[u8] = if name_raw.len() <= 16 {
            name_buf[..name_raw.len()].copy_from_slice(name_raw);
            name_buf[..name_raw.len()].make_ascii_uppercase();
            &name_buf[..name_raw.len()]
        } else {
            name_raw
        };
        let argc = args.len();
        // RESP3 has its own null (`_`); its parsers do not read RESP2's `$-1` as one.
        let null: &[u8] = if flow.resp3 { b"_\r\n" } else { NULL };
        self.pending_commands += 1;
        if self.pending_commands >= 64 {
            self.flush_counts();
        }
        // (arity: exact n, or at least -n, like Redis's command table)
        let arity: i32 = match name {
            b"PING" => -1,
            b"ECHO" => 2,
            b"GET" | b"INCR" | b"DECR" | b"TTL" | b"PTTL" => 2,
            b"SET" => -3,
            b"DEL" | b"EXISTS" | b"MGET" => -2,
            b"INCRBY" | b"DECRBY" | b"EXPIRE" | b"PEXPIRE" => 3,
            b"MSET" => -3,
            b"DBSIZE" => 1,
            b"FLUSHALL" | b"FLUSHDB" | b"INFO" | b"COMMAND" => -1,
            b"CONFIG" | b"CLIENT" => -2,
            b"SELECT" => 2,
            b"AUTH" => -2,
            b"QUIT" => -1,
            b"HELLO" => -1,
            _ => 0,
        };
        if arity == 0 {
            cx.count(cmd::KV_OTHER);
            cx.error();
            let _ = write!(
                cx,
                "-ERR unknown command '{}', with args beginning with: ",
                String::from_utf8_lossy(name_raw)
            );
            for i in 1..argc.min(4) {
                let _ = write!(cx, "'{}' ", String::from_utf8_lossy(a(i)));
            }
            cx.send(b"\r\n");
            return;
        }
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        if (arity > 0 && argc != arity as usize)
            || (arity < 0 && argc < (-arity) as usize)
            || (name == b"MSET" && argc.is_multiple_of(2))
        {
            cx.count(cmd::KV_OTHER);
            cx.error();
            let _ = write!(cx, "-ERR wrong number of arguments for '{lower}' command\r\n");
            return;
        }
        if !flow.authed && name != b"AUTH" && name != b"QUIT" && name != b"HELLO" {
            cx.count(cmd::KV_OTHER);
            cx.error();
            cx.send(b"-NOAUTH Authentication required.\r\n");
            return;
        }
        // Commands that need no cache.
        match name {
            b"PING" => {
                cx.count(cmd::KV_OTHER);
                match argc {
                    1 => cx.send(b"+PONG\r\n"),
                    2 => bulk(cx, a(1)),
                    _ => cx.send(b"-ERR wrong number of arguments for 'ping' command\r\n"),
                }
                return;
            }
            b"ECHO" => {
                cx.count(cmd::KV_OTHER);
                bulk(cx, a(1));
                return;
            }
            b"QUIT" => {
                cx.count(cmd::KV_OTHER);
                cx.send(OK);
                cx.close(); // after the +OK, as Redis does; later commands go unanswered
                return;
            }
            b"AUTH" => {
                cx.count(cmd::KV_OTHER);
                let pass = a(argc - 1);
                if argc > 3 {
                    cx.send(SYNTAX);
                } else if self.opts.password.is_empty() {
                    cx.error();
                    cx.send(b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n");
                } else if pass == self.opts.password.as_bytes() && (argc == 2 || a(1) == b"default")
                {
                    flow.authed = true;
                    cx.send(OK);
                } else {
                    cx.error();
                    cx.send(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
                }
                return;
            }
            b"HELLO" => {
                cx.count(cmd::KV_OTHER);
                let proto = if argc > 1 { parse_i64(a(1)) } else { Some(2) };
                let Some(proto @ 2..=3) = proto else {
                    cx.error();
                    cx.send(b"-NOPROTO unsupported protocol version\r\n");
                    return;
                };
                let mut i = 2;
                while i < argc {
                    let o = a(i).to_ascii_uppercase();
                    if o == b"AUTH" && i + 2 < argc {
                        if self.opts.password.is_empty()
                            || a(i + 2) != self.opts.password.as_bytes()
                        {
                            cx.error();
                            cx.send(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
                            return;
                        }
                        flow.authed = true;
                        i += 3;
                    } else if o == b"SETNAME" && i + 1 < argc {
                        i += 2;
                    } else {
                        cx.error();
                        cx.send(SYNTAX);
                        return;
                    }
                }
                if !flow.authed {
                    cx.error();
                    cx.send(b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n");
                    return;
                }
                flow.resp3 = proto == 3;
                cx.send(if flow.resp3 { b"%7\r\n" } else { b"*14\r\n" });
                bulk(cx, b"server");
                bulk(cx, b"redis");
                bulk(cx, b"version");
                bulk(cx, REDIS_VERSION.as_bytes());
                bulk(cx, b"proto");
                int(cx, proto);
                bulk(cx, b"id");
                int(cx, i64::from(cx.flow_id().0 as u32));
                bulk(cx, b"mode");
                bulk(cx, b"standalone");
                bulk(cx, b"role");
                bulk(cx, b"master");
                bulk(cx, b"modules");
                cx.send(b"*0\r\n");
                return;
            }
            b"SELECT" => {
                cx.count(cmd::KV_OTHER);
                match parse_i64(a(1)) {
                    Some(0) => cx.send(OK),
                    Some(_) => cx.send(b"-ERR DB index is out of range\r\n"),
                    None => cx.send(NOT_INT),
                }
                return;
            }
            b"COMMAND" => {
                cx.count(cmd::KV_OTHER);
                let sub = if argc > 1 { a(1).to_ascii_uppercase() } else { Vec::new() };
                match sub.as_slice() {
                    b"COUNT" => int(cx, 26),
                    b"INFO" => {
                        let _ = write!(cx, "*{}\r\n", argc - 2);
                        for _ in 2..argc {
                            cx.send(null);
                        }
                    }
                    // No command table or docs: clients (redis-cli's hints) do without them.
                    _ => cx.send(b"*0\r\n"),
                }
                return;
            }
            b"CONFIG" => {
                cx.count(cmd::KV_OTHER);
                if !a(1).eq_ignore_ascii_case(b"GET") || argc < 3 {
                    cx.send(b"-ERR CONFIG subcommand not supported (only CONFIG GET)\r\n");
                    return;
                }
                // What redis-benchmark and redis-cli ask: no persistence, one database.
                let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
                for i in 2..argc {
                    let p = a(i).to_ascii_lowercase();
                    let v: &[u8] = match p.as_slice() {
                        b"save" => b"",
                        b"appendonly" => b"no",
                        b"databases" => b"1",
                        b"maxmemory" => b"0",
                        _ => continue,
                    };
                    pairs.push((a(i), v));
                }
                if flow.resp3 {
                    let _ = write!(cx, "%{}\r\n", pairs.len());
                } else {
                    let _ = write!(cx, "*{}\r\n", pairs.len() * 2);
                }
                for (k, v) in pairs {
                    bulk(cx, k);
                    bulk(cx, v);
                }
                return;
            }
            b"CLIENT" => {
                cx.count(cmd::KV_OTHER);
                let sub = a(1).to_ascii_uppercase();
                match sub.as_slice() {
                    b"GETNAME" => cx.send(null),
                    b"ID" => int(cx, i64::from(cx.flow_id().0 as u32)),
                    _ => cx.send(OK),
                }
                return;
            }
            _ => {}
        }
        let Some(cache) = self.cache.as_ref() else {
            cx.count(cmd::KV_OTHER);
            cx.error();
            cx.send(NO_CACHE);
            return;
        };
        let now = self.now_ms(cx);
        if name == b"INFO" {
            cx.count(cmd::KV_OTHER);
            self.flush_counts();
            let Some(cache) = self.cache.as_ref() else { return };
            let keys = match cache.lock() {
                Ok(t) => (t.keys(), t.free_chunks()),
                Err(e) => {
                    let _ = write!(cx, "-ERR cache: {e}\r\n");
                    return;
                }
            };
            let p = cache.plan();
            let used = (p.chunks - u64::from(keys.1)) * shmq::cache::CHUNK_BYTES as u64;
            let c = cache.counters();
            let mut s = String::new();
            let _ = write!(
                s,
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nos:Linux\r\n\
                 process_id:{}\r\nuptime_in_seconds:{}\r\nshmsrv_service:kv\r\n\r\n\
                 # Clients\r\nconnected_clients:{}\r\n\r\n\
                 # Memory\r\nused_memory:{used}\r\nmaxmemory:{}\r\nmaxmemory_policy:noeviction\r\n\r\n\
                 # Stats\r\ntotal_commands_processed:{}\r\nexpired_keys:{}\r\ncache_recoveries:{}\r\n\r\n\
                 # Keyspace\r\n",
                std::process::id(),
                self.started.elapsed().as_secs(),
                c.clients.load(Ordering::Relaxed),
                p.chunks * shmq::cache::CHUNK_BYTES as u64,
                c.commands.load(Ordering::Relaxed),
                c.expired.load(Ordering::Relaxed),
                c.recoveries.load(Ordering::Relaxed),
            );
            if keys.0 > 0 {
                let _ = write!(s, "db0:keys={},expires=0,avg_ttl=0\r\n", keys.0);
            }
            bulk(cx, s.as_bytes());
            return;
        }
        let mut t = match cache.lock() {
            Ok(t) => t,
            Err(e) => {
                cx.error();
                let _ = write!(cx, "-ERR cache: {e}\r\n");
                return;
            }
        };
        match name {
            b"GET" => {
                cx.count(cmd::KV_GET);
                self.val.clear();
                if t.get(a(1), now, &mut self.val) {
                    drop(t);
                    let _ = write!(cx, "${}\r\n", self.val.len());
                    cx.send(&self.val);
                    cx.send(b"\r\n");
                } else {
                    cx.send(null);
                }
            }
            b"MGET" => {
                cx.count(cmd::KV_GET);
                let _ = write!(cx, "*{}\r\n", argc - 1);
                for i in 1..argc {
                    self.val.clear();
                    if t.get(a(i), now, &mut self.val) {
                        bulk(cx, &self.val);
                    } else {
                        cx.send(null);
                    }
                }
            }
            b"SET" => {
                cx.count(cmd::KV_SET);
                let (mut cond, mut exp) = (Cond::Always, Expiry::None);
                let mut i = 3;
                while i < argc {
                    let o = a(i).to_ascii_uppercase();
                    let val = if i + 1 < argc { Some(a(i + 1)) } else { None };
                    match (o.as_slice(), val) {
                        (b"NX", _) if cond == Cond::Always => cond = Cond::Nx,
                        (b"XX", _) if cond == Cond::Always => cond = Cond::Xx,
                        (b"KEEPTTL", _) if exp == Expiry::None => exp = Expiry::Keep,
                        (b"EX" | b"PX" | b"EXAT" | b"PXAT", Some(v)) if exp == Expiry::None => {
                            let n = match parse_i64(v) {
                                Some(n) if n > 0 => n as u64,
                                Some(_) => {
                                    cx.error();
                                    cx.send(b"-ERR invalid expire time in 'set' command\r\n");
                                    return;
                                }
                                None => {
                                    cx.error();
                                    cx.send(NOT_INT);
                                    return;
                                }
                            };
                            let at = match o.as_slice() {
                                b"EX" => now.saturating_add(n.saturating_mul(1000)),
                                b"PX" => now.saturating_add(n),
                                b"EXAT" => n.saturating_mul(1000),
                                _ => n,
                            };
                            exp = Expiry::At(at.max(1));
                            i += 1;
                        }
                        _ => {
                            cx.error();
                            cx.send(SYNTAX);
                            return;
                        }
                    }
                    i += 1;
                }
                let mut r = t.set(a(1), a(2), cond, exp, now);
                if r.is_err() && t.sweep_expired(now) > 0 {
                    r = t.set(a(1), a(2), cond, exp, now);
                }
                drop(t);
                match r {
                    Ok(true) => cx.send(OK),
                    Ok(false) => cx.send(null),
                    Err(f) => {
                        cx.error();
                        cx.send(full_err(f));
                    }
                }
            }
            b"MSET" => {
                cx.count(cmd::KV_SET);
                for i in (1..argc).step_by(2) {
                    let mut r = t.set(a(i), a(i + 1), Cond::Always, Expiry::None, now);
                    if r.is_err() && t.sweep_expired(now) > 0 {
                        r = t.set(a(i), a(i + 1), Cond::Always, Expiry::None, now);
                    }
                    if let Err(f) = r {
                        cx.error();
                        cx.send(full_err(f));
                        return;
                    }
                }
                cx.send(OK);
            }
            b"DEL" | b"EXISTS" => {
                cx.count(if name == b"DEL" { cmd::KV_DEL } else { cmd::KV_GET });
                let mut n = 0;
                for i in 1..argc {
                    let hit = if name == b"DEL" { t.del(a(i), now) } else { t.exists(a(i), now) };
                    n += i64::from(hit);
                }
                drop(t);
                int(cx, n);
            }
            b"INCR" | b"DECR" | b"INCRBY" | b"DECRBY" => {
                cx.count(cmd::KV_INCR);
                let by = match name {
                    b"INCR" => Some(1),
                    b"DECR" => Some(-1),
                    b"INCRBY" => parse_i64(a(2)),
                    _ => parse_i64(a(2)).and_then(i64::checked_neg),
                };
                let Some(by) = by else {
                    cx.error();
                    cx.send(NOT_INT);
                    return;
                };
                let r = t.incr_by(a(1), by, now);
                drop(t);
                match r {
                    Ok(n) => int(cx, n),
                    Err(IncrError::NotInteger) => {
                        cx.error();
                        cx.send(NOT_INT);
                    }
                    Err(IncrError::Overflow) => {
                        cx.error();
                        cx.send(b"-ERR increment or decrement would overflow\r\n");
                    }
                    Err(IncrError::Full(f)) => {
                        cx.error();
                        cx.send(full_err(f));
                    }
                }
            }
            b"EXPIRE" | b"PEXPIRE" => {
                cx.count(cmd::KV_OTHER);
                let Some(n) = parse_i64(a(2)) else {
                    cx.error();
                    cx.send(NOT_INT);
                    return;
                };
                let ms = if name == b"EXPIRE" { n.saturating_mul(1000) } else { n };
                let hit = if ms <= 0 {
                    // Redis deletes a key given a non-positive TTL.
                    t.del(a(1), now)
                } else {
                    t.expire(a(1), now.saturating_add(ms as u64), now)
                };
                drop(t);
                int(cx, i64::from(hit));
            }
            b"TTL" | b"PTTL" => {
                cx.count(cmd::KV_OTHER);
                let r = t.ttl_ms(a(1), now);
                drop(t);
                let v = match r {
                    None => -2,
                    Some(None) => -1,
                    Some(Some(ms)) if name == b"TTL" => ms.div_ceil(1000) as i64,
                    Some(Some(ms)) => ms as i64,
                };
                int(cx, v);
            }
            b"DBSIZE" => {
                cx.count(cmd::KV_OTHER);
                let n = t.keys();
                drop(t);
                int(cx, n as i64);
            }
            b"FLUSHALL" | b"FLUSHDB" => {
                cx.count(cmd::KV_DEL);
                t.flush();
                drop(t);
                cx.send(OK);
            }
            _ => unreachable!("every command with an arity is handled"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut args = Vec::new();
        split_inline(line.as_bytes(), &mut out, &mut args).then(|| {
            args.iter().map(|&(a, b)| String::from_utf8_lossy(&out[a..b]).into_owned()).collect()
        })
    }

    #[test]
    fn inline_split_like_redis() {
        assert_eq!(split("set a b").unwrap(), ["set", "a", "b"]);
        assert_eq!(split("  set  \"a b\" 'c d'  ").unwrap(), ["set", "a b", "c d"]);
        assert_eq!(split(r#"echo "x\ny\x41""#).unwrap(), ["echo", "x\nyA"]);
        assert_eq!(split(r"echo 'it\'s'").unwrap(), ["echo", "it's"]);
        assert_eq!(split("echo \"\"").unwrap(), ["echo", ""]);
        assert!(split("echo \"abc").is_none());
        assert!(split("echo \"abc\"x").is_none());
        assert!(split("").unwrap().is_empty());
    }

    #[test]
    fn multibulk_split() {
        let mut args = Vec::new();
        let m = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
        assert!(split_multibulk(m, &mut args));
        assert_eq!(args, [(8, 11), (17, 18), (24, 24)]);
        args.clear();
        assert!(!split_multibulk(b"*2\r\n$3\r\nGET\r\n", &mut args));
    }
}
