//! The commands: one `match` over the command name, and the reply helpers it shares.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use shmq::cache::{Cond, Expiry, Full, IncrError, table::parse_i64};
use shmq::sync::Ordering;

use super::{Kv, KvFlow, REDIS_VERSION};
use crate::service::Ctx;
use crate::services::cmd;

pub(super) fn unix_ms() -> u64 {
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

impl Kv {
    #[allow(clippy::too_many_lines)]
    pub(super) fn command(
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
        if (arity > 0 && argc != arity as usize)
            || (arity < 0 && argc < (-arity) as usize)
            || (name == b"MSET" && argc.is_multiple_of(2))
        {
            cx.count(cmd::KV_OTHER);
            cx.error();
            // (lower-cased only here: an allocation per command was ~2 % of md's time at GET)
            let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
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
