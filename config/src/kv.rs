//! `[kv]` (the built-in Redis-protocol service and its shared cache) and `[io_conn.resp]` (the
//! `resp` framer's limits), with their validation.

use serde::{Deserialize, Serialize};

use crate::units::{self, format_size};
use crate::validate::Invalid;
use crate::{Config, Framing};

/// Bytes per cache pool chunk (`shmq::cache::CHUNK_BYTES`, which re-checks every rule here when
/// io_conn creates the segment).
pub const KV_CHUNK_BYTES: u64 = 64;
/// Largest `kv.max_keys`.
pub const MAX_KV_KEYS: u64 = 1 << 31;

/// `[kv]`: the built-in `kv` service (RESP, `framing = "resp"`) and the shared cache segment
/// io_conn creates for it when a listener serves `kv`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kv {
    /// Keys the table must hold: its rows are sized so that this many random keys fit.
    /// 1..=2^31. Default 65536.
    pub max_keys: u64,
    /// Bytes of the value pool (64-byte chunks; a key and its value share a chain of chunks of
    /// 60 data bytes each). At least 64 B per key, at most 2^32 - 2 chunks. Default 16MiB.
    #[serde(
        deserialize_with = "units::deserialize_size",
        serialize_with = "units::serialize_size"
    )]
    pub memory: u64,
    /// Password clients must give with `AUTH` before any other command; empty = none. A `kv`
    /// listener on a non-loopback address requires one (like Redis's protected mode).
    /// Default empty.
    pub password: String,
}

impl Default for Kv {
    fn default() -> Self {
        Self { max_keys: 65_536, memory: 16 << 20, password: String::new() }
    }
}

/// `[io_conn.resp]`: limits of the `resp` framer (each also bounded by `shared.max_message`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resp {
    /// Most elements in one command array (`*N`). 1..=1048576. Default 1024.
    pub max_elements: u32,
    /// Largest bulk string (`$len`) in a command. `>= 1`. Default 512MiB (Redis's
    /// `proto-max-bulk-len`); a whole command is at most `shared.max_message` anyway.
    #[serde(
        deserialize_with = "units::deserialize_size",
        serialize_with = "units::serialize_size"
    )]
    pub max_bulk: u64,
}

impl Default for Resp {
    fn default() -> Self {
        Self { max_elements: 1024, max_bulk: 512 << 20 }
    }
}

impl Config {
    pub(crate) fn check_kv(&self) -> Result<(), Invalid> {
        let kv = &self.kv;
        if !(1..=MAX_KV_KEYS).contains(&kv.max_keys) {
            return Err(Invalid::new(
                "kv.max_keys",
                format!("{} is outside 1..={MAX_KV_KEYS}", kv.max_keys),
            ));
        }
        let chunks = kv.memory / KV_CHUNK_BYTES;
        if chunks < kv.max_keys || chunks > u64::from(u32::MAX - 1) {
            return Err(Invalid::new(
                "kv.memory",
                format!(
                    "{} must hold one {KV_CHUNK_BYTES}-byte chunk per key (kv.max_keys = {}) and \
                     at most 2^32 - 2 chunks",
                    format_size(kv.memory),
                    kv.max_keys
                ),
            )
            .also("kv.max_keys"));
        }
        if kv.password.len() > 512 || kv.password.bytes().any(|b| b.is_ascii_control()) {
            return Err(Invalid::new("kv.password", "at most 512 bytes, no control characters"));
        }
        let r = &self.io_conn.resp;
        if !(1..=1 << 20).contains(&r.max_elements) {
            return Err(Invalid::new(
                "io_conn.resp.max_elements",
                format!("{} is outside 1..=1048576", r.max_elements),
            ));
        }
        if r.max_bulk == 0 {
            return Err(Invalid::new("io_conn.resp.max_bulk", "must be at least 1 byte"));
        }
        // Protected mode: a kv listener reachable from other hosts needs a password.
        if kv.password.is_empty() {
            for (i, l) in self.io_conn.listeners.iter().enumerate() {
                if l.service == "kv" && !l.address.ip().is_loopback() {
                    return Err(Invalid::new(
                        format!("io_conn.listener[{i}].address"),
                        format!(
                            "kv listener on {} is reachable beyond loopback but kv.password is \
                             empty (protected mode): set kv.password or bind 127.0.0.1 / [::1]",
                            l.address
                        ),
                    )
                    .also("kv.password"));
                }
            }
        }
        Ok(())
    }

    /// Whether a listener serves the `kv` service (io_conn then creates the cache segment).
    pub fn serves_kv(&self) -> bool {
        self.io_conn.listeners.iter().any(|l| l.service == "kv")
    }

    /// Whether a listener uses `framing = "resp"`.
    pub fn uses_resp(&self) -> bool {
        self.io_conn.listeners.iter().any(|l| l.framing() == Framing::Resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_defaults_and_rules() {
        let cfg = Config::default();
        assert_eq!((cfg.kv.max_keys, cfg.kv.memory), (65_536, 16 << 20));
        assert!(cfg.serves_kv());
        let l = cfg.io_conn.listeners.iter().find(|l| l.service == "kv").unwrap();
        assert_eq!(
            (l.address.to_string(), l.framing(), l.dispatch()),
            ("127.0.0.1:6380".to_owned(), Framing::Resp, crate::Dispatch::Flow)
        );
        let bad = |f: &dyn Fn(&mut Config), key: &str| {
            let mut c = Config::default();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        };
        bad(&|c| c.kv.max_keys = 0, "kv.max_keys");
        bad(&|c| c.kv.memory = 64 * 65_535, "kv.memory");
        bad(&|c| c.io_conn.resp.max_elements = 0, "io_conn.resp.max_elements");
        bad(&|c| c.io_conn.resp.max_bulk = 0, "io_conn.resp.max_bulk");
        // Protected mode: beyond loopback only with a password.
        let open = |c: &mut Config| {
            let i = c.io_conn.listeners.iter().position(|l| l.service == "kv").unwrap();
            c.io_conn.listeners[i].address = "0.0.0.0:6380".parse().unwrap();
        };
        bad(&open, "protected mode");
        let mut c = Config::default();
        open(&mut c);
        c.kv.password = "s3cret".into();
        c.validate().unwrap();
    }
}
