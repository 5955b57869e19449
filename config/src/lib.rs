//! The one config schema of shmsrv, read from one TOML file by io_conn, md and viewstats.
//!
//! Every program loads the whole file with [`Config::load`] (or [`Config::load_or_default`]),
//! uses its own section plus [`Shared`], and logs [`Config::summary`] once at INFO. Loading
//! parses, checks the schema and validates; any error names the file, the line and the dotted
//! key (see [`ConfigError`]), so a bad file stops the program at start, not later.
//!
//! # Schema
//!
//! | section | struct | read by |
//! |---|---|---|
//! | `[shared]` | [`Shared`] | everyone: segment/FIFO names, queue geometry |
//! | `[io_conn]`, `[io_conn.http]`, `[[io_conn.listener]]` | [`IoConn`], [`Http`], [`Listener`] | io_conn |
//! | `[md]`, `[md.dumb]` | [`Md`], [`Dumb`] | md (io_conn reads `md.max_instances`) |
//! | `[[md.group]]` | [`Group`] | io_conn (routing, `--spawn-md`), md (which binary), viewstats |
//! | `[viewstats]` | [`Viewstats`] | viewstats |
//! | `[kv]` | [`Kv`] | io_conn and md's `kv` service |
//! | `[service.NAME]` | [`ServiceSection`] (free-form) | the md binary serving `NAME` |
//!
//! Every section but `[service.NAME]` is strict (an unknown key is an error) and every key has a default, so an
//! empty file is the default config. The shipped file [`SHIPPED`] (`config/shmsrv.toml`) lists
//! every key with its meaning, default and unit, and equals [`Config::default`].
//!
//! Sizes are `u64` bytes and durations [`Duration`]s in the structs; the spellings the file
//! accepts are documented in [`units`]. A duration of zero means "never" / "off" where a
//! key's doc says so.
//!
//! # Example
//!
//! ```
//! let cfg = config::Config::from_toml_str("[io_conn]\nbacklog = 64\n", "inline").unwrap();
//! assert_eq!(cfg.io_conn.backlog, 64);
//! assert_eq!(cfg.shared.queue_size, 1 << 20);
//!
//! let err = config::Config::from_toml_str("[io_conn]\nidle_timeout = \"30 parsecs\"\n", "x.toml")
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("x.toml:2: io_conn.idle_timeout: invalid duration"));
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod diff;
mod error;
mod group;
mod kv;
mod listener;
mod locate;
mod proxy;
mod service;
pub mod units;
mod validate;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::diff::{
    Apply, Change, ChangeKind, Changes, Program, classify, diff, diff_for, listener_ids,
};
pub use crate::error::{ConfigError, ErrorKind};
pub use crate::group::{Group, Instances, parse_instances};
pub use crate::kv::{KV_CHUNK_BYTES, Kv, MAX_KV_KEYS, Resp};
pub(crate) use crate::listener::listener_summary;
pub use crate::listener::{Dispatch, Framing, Listener, default_dispatch, default_framing};
use crate::locate::Locator;
pub use crate::proxy::{Cidr, MAX_PROXY_FROM, ProxyProtocol};
pub use crate::service::{ServiceSection, Services};

/// The shipped, commented default config (`config/shmsrv.toml`); equals [`Config::default`].
pub const SHIPPED: &str = include_str!("../shmsrv.toml");

/// Where the systemd units point `--config`; the binaries themselves use the built-in defaults
/// when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/shmsrv/shmsrv.toml";

/// Longest `shared.name` and listener `service`, in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// Largest `md.max_instances`.
pub const MAX_MD_INSTANCES: u32 = 256;

/// Smallest `shared.max_message`: io_conn's OPEN frame must fit one frame (32 bytes of fixed
/// fields and a service name of up to 64 bytes, `shmq::frame::MAX_SERVICE_NAME`; io_conn checks
/// the two agree at compile time).
pub const MIN_MAX_MESSAGE: u64 = 96;

/// Smallest `io_conn.max_buffered`: 1 MiB (a few connections' worth of buffers).
pub const MIN_MAX_BUFFERED: u64 = 1 << 20;

/// Default listener `pipeline_depth`.
pub const DEFAULT_PIPELINE_DEPTH: u32 = 16;

/// Largest listener `pipeline_depth`: io_conn may hold this many early replies per connection.
pub const MAX_PIPELINE_DEPTH: u32 = 1024;

/// Largest `io_conn.http.max_headers`: io_conn parses a request head into a fixed array of this
/// many header slots on its stack (32 bytes each), so nothing is allocated per request.
pub const MAX_HTTP_HEADERS: u32 = 256;

/// Smallest `io_conn.http.max_head`: room for a request line and a few headers.
pub const MIN_HTTP_HEAD: u64 = 64;

/// [`DEFAULT_CONFIG_PATH`] as a path.
pub fn default_config_path() -> PathBuf {
    PathBuf::from(DEFAULT_CONFIG_PATH)
}

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[shared]`: names and queue geometry every program must agree on.
    pub shared: Shared,
    /// `[io_conn]`: the process that owns client sockets.
    pub io_conn: IoConn,
    /// `[md]`: the logic processes.
    pub md: Md,
    /// `[viewstats]`: the stats viewer.
    pub viewstats: Viewstats,
    /// `[kv]`: the built-in `kv` service and its shared cache.
    pub kv: Kv,
    /// `[service.NAME]`: a service's own settings, free-form, read by the md binary that serves
    /// `NAME` (see [`Config::service`]); the only tables the schema does not check key by key.
    #[serde(skip_serializing_if = "Services::is_empty")]
    pub service: Services,
}

/// `[shared]`: read by every program; io_conn creates what these describe, the others attach.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shared {
    /// Prefix of every shm segment, SysV key and FIFO name: 1..=[`MAX_NAME_LEN`] characters of
    /// `[A-Za-z0-9_-]`. Two servers on one machine need two names. Default `shmsrv`.
    pub name: String,
    /// Directory of the FIFOs. Empty = automatic, see [`Config::runtime_dir`]. Otherwise an
    /// absolute path, and not `/tmp` or `/var/tmp` themselves. Default empty.
    pub runtime_dir: PathBuf,
    /// Which kind of shared memory segments to use. Default [`ShmBackend::Posix`].
    pub shm_backend: ShmBackend,
    /// Bytes in each ring's data area: a power of two, 4KiB..=4GiB, and at least
    /// `2 * (max_message rounded up to 8 + 24)` so two largest frames fit. Default 1MiB.
    #[serde(
        deserialize_with = "units::deserialize_size",
        serialize_with = "units::serialize_size"
    )]
    pub queue_size: u64,
    /// Largest payload of one frame between io_conn and md, so the largest client message
    /// (after framing) and the largest reply chunk. `>= 1`. Default 64KiB.
    #[serde(
        deserialize_with = "units::deserialize_size",
        serialize_with = "units::serialize_size"
    )]
    pub max_message: u64,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            name: "shmsrv".to_owned(),
            runtime_dir: PathBuf::new(),
            shm_backend: ShmBackend::Posix,
            queue_size: 1 << 20,
            max_message: 64 << 10,
        }
    }
}

/// Kind of shared memory segment (`shared.shm_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShmBackend {
    /// `shm_open` / `mmap`: files in `/dev/shm`. Written `"posix"`.
    Posix,
    /// `shmget` / `shmat`: keyed segments, visible with `ipcs -m`. Written `"sysv"`.
    Sysv,
}

impl fmt::Display for ShmBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Posix => "posix",
            Self::Sysv => "sysv",
        })
    }
}

/// `[io_conn]`: the process that owns every client socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoConn {
    /// `listen(2)` backlog of each listener, 1..=2147483647 (the kernel caps it at
    /// `net.core.somaxconn`). Default 1024.
    pub backlog: u32,
    /// Size of the preallocated flow table: connections beyond this are accepted and closed at
    /// once. 1..=16777216. Default 10000.
    pub max_connections: u32,
    /// Most connections open at once from one client IP address (like nginx's `limit_conn`);
    /// further ones are accepted and closed at once (line services get an error line). 0 = no
    /// limit, the default: one address may be a NAT or a proxy in front of many clients, so a
    /// limit is the operator's call.
    pub max_connections_per_ip: u32,
    /// Bytes read per `recv` into a pooled buffer; 1..=64MiB. Default 16KiB.
    #[serde(
        deserialize_with = "units::deserialize_size",
        serialize_with = "units::serialize_size"
    )]
    pub read_buffer: u64,
    /// Close a connection after this long without any traffic; zero = never. At most 365 days.
    /// Default 300s.
    #[serde(
        deserialize_with = "units::deserialize_duration",
        serialize_with = "units::serialize_duration"
    )]
    pub idle_timeout: Duration,
    /// A message whose first byte has arrived must be complete within this (slowloris
    /// defence); zero = never. At most 365 days. Default 30s.
    #[serde(
        deserialize_with = "units::deserialize_duration",
        serialize_with = "units::serialize_duration"
    )]
    pub message_deadline: Duration,
    /// Per-flow cap on output bytes not yet written to the client: the credit md spends and
    /// `DRAINED` returns. `>= 1`. Default 256KiB.
    #[serde(
        deserialize_with = "units::deserialize_size",
        serialize_with = "units::serialize_size"
    )]
    pub output_credit: u64,
    /// Process-wide budget for the bytes of every client buffer io_conn holds (partial input
    /// messages, unsent output, held replies, pooled spares). At 7/8 of it io_conn stops reading
    /// clients and closes the slowest readers first (`closed_memory`) until it is below 3/4 of
    /// it. At least [`MIN_MAX_BUFFERED`] and at least `read_buffer + max_message` (one
    /// connection's largest input). Default 256MiB.
    #[serde(
        deserialize_with = "units::deserialize_size",
        serialize_with = "units::serialize_size"
    )]
    pub max_buffered: u64,
    /// On SIGTERM, how long to keep flushing output before exiting anyway. At most 1h.
    /// Default 5s.
    #[serde(
        deserialize_with = "units::deserialize_duration",
        serialize_with = "units::serialize_duration"
    )]
    pub drain_deadline: Duration,
    /// How long to busy-poll the rings before arming the doorbells and sleeping in epoll;
    /// zero = never spin. Only while it pays (`rt::SpinGate`). At most 1s. Default 50us.
    #[serde(
        deserialize_with = "units::deserialize_duration",
        serialize_with = "units::serialize_duration"
    )]
    pub spin: Duration,
    /// Most detailed log messages io_conn writes (`RUST_LOG`, when set, decides instead).
    /// Default [`LogLevel::Info`].
    pub log_level: LogLevel,
    /// `[io_conn.http]`: limits of the `http` framing.
    pub http: Http,
    /// The listening sockets (`[[io_conn.listener]]` in the file; at least one). A file that
    /// has any `[[io_conn.listener]]` table replaces the whole default list.
    #[serde(rename = "listener")]
    pub listeners: Vec<Listener>,
    /// `[io_conn.resp]`: limits of the `resp` framer.
    pub resp: Resp,
}

impl Default for IoConn {
    fn default() -> Self {
        Self {
            backlog: 1024,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            read_buffer: 16 << 10,
            idle_timeout: Duration::from_secs(300),
            message_deadline: Duration::from_secs(30),
            output_credit: 256 << 10,
            max_buffered: 256 << 20,
            drain_deadline: Duration::from_secs(5),
            spin: Duration::from_micros(50),
            log_level: LogLevel::Info,
            http: Http::default(),
            listeners: vec![
                Listener::new(4680, "echo"),
                Listener::new(9090, "reverse"),
                Listener::new(8090, "dumb"),
                Listener::new(8080, "http"),
                Listener::new(6380, "kv"),
            ],
            resp: Resp::default(),
        }
    }
}

/// `[io_conn.http]`: limits of the `http` framing (request heads; bodies count against
/// `shared.max_message` with their head).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Largest request head (request line and header fields, with the blank line that ends
    /// them); a longer one gets `431` and the connection closes; a chunked body's trailer
    /// section is held to the same size. [`MIN_HTTP_HEAD`]..=64MiB;
    /// `shared.max_message` caps it too (a head is part of one message). Default 8KiB (nginx's
    /// `large_client_header_buffers` size).
    #[serde(
        deserialize_with = "units::deserialize_size",
        serialize_with = "units::serialize_size"
    )]
    pub max_head: u64,
    /// Most header fields in one request head (and in a chunked body's trailer); more get
    /// `431`. 1..=[`MAX_HTTP_HEADERS`]. Default 100 (hyper's limit).
    pub max_headers: u32,
}

impl Default for Http {
    fn default() -> Self {
        Self { max_head: 8 << 10, max_headers: 100 }
    }
}

/// How much a program logs (`io_conn.log_level`, `md.log_level`): this level and the more
/// severe ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only errors. `"error"`.
    Error,
    /// Errors and warnings. `"warn"`.
    Warn,
    /// Lifecycle too (start, attach, reload, stop): the default. `"info"`.
    Info,
    /// Setup details. `"debug"`.
    Debug,
    /// Everything. `"trace"`.
    Trace,
}

impl LogLevel {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }

    /// The `log` crate's filter for this level.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            Self::Error => log::LevelFilter::Error,
            Self::Warn => log::LevelFilter::Warn,
            Self::Info => log::LevelFilter::Info,
            Self::Debug => log::LevelFilter::Debug,
            Self::Trace => log::LevelFilter::Trace,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[md]`: the logic processes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Md {
    /// Number of md slots io_conn prepares a queue pair and a stats block for; `md --instance
    /// N` needs `N < max_instances`. 1..=[`MAX_MD_INSTANCES`]. Default 8.
    pub max_instances: u32,
    /// How long md busy-polls its input ring before arming the doorbell and sleeping;
    /// zero = never spin. Only while it pays (`rt::SpinGate`). At most 1s. Default 50us.
    #[serde(
        deserialize_with = "units::deserialize_duration",
        serialize_with = "units::serialize_duration"
    )]
    pub spin: Duration,
    /// Longest a service should compute for one request before it yields to the other flows'
    /// ready work (`Status::Yield` in md's `Service` API; `BURN` uses it); zero = no slicing
    /// (long work runs to its end). At most 1s. Default 1ms.
    #[serde(
        deserialize_with = "units::deserialize_duration",
        serialize_with = "units::serialize_duration"
    )]
    pub slice: Duration,
    /// After SIGTERM (leaving: io_conn routes nothing new to it), how long md keeps serving what
    /// it has in flight before it exits anyway. Keep it below the unit's `TimeoutStopSec=`
    /// (10s in systemd/md@.service), or systemd kills md mid-drain. At most 60s. Default 8s.
    #[serde(
        deserialize_with = "units::deserialize_duration",
        serialize_with = "units::serialize_duration"
    )]
    pub drain_deadline: Duration,
    /// Most detailed log messages md writes (`RUST_LOG`, when set, decides instead). Default
    /// [`LogLevel::Info`].
    pub log_level: LogLevel,
    /// `[md.dumb]`: limits of the built-in `dumb` service.
    pub dumb: Dumb,
    /// `[[md.group]]`: which instances serve which services with which binary (see [`Group`]).
    /// Empty (the default) = every instance serves every service with the md binary.
    #[serde(rename = "group", skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
}

impl Default for Md {
    fn default() -> Self {
        Self {
            max_instances: 8,
            spin: Duration::from_micros(50),
            slice: Duration::from_millis(1),
            drain_deadline: Duration::from_secs(8),
            log_level: LogLevel::Info,
            dumb: Dumb::default(),
            groups: Vec::new(),
        }
    }
}

/// `[md.dumb]`: limits of the built-in `dumb` service; a request above a limit gets `ERR`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dumb {
    /// Largest `n` of `BURN n` (iterations). Default 100000000.
    pub burn_max: u64,
    /// Largest wait of `WAIT ms`; at most 365 days. Default 60s.
    #[serde(
        deserialize_with = "units::deserialize_duration",
        serialize_with = "units::serialize_duration"
    )]
    pub wait_max: Duration,
    /// Largest `n` of `STREAM n` (bytes). Default 1000000000.
    pub stream_max: u64,
    /// Bytes per `DATA` frame of a `STREAM` reply; at least 1, at most `shared.max_message`
    /// and `io_conn.output_credit`. Default 16KiB.
    #[serde(
        deserialize_with = "units::deserialize_size",
        serialize_with = "units::serialize_size"
    )]
    pub stream_chunk: u64,
}

impl Default for Dumb {
    fn default() -> Self {
        Self {
            burn_max: 100_000_000,
            wait_max: Duration::from_secs(60),
            stream_max: 1_000_000_000,
            stream_chunk: 16 << 10,
        }
    }
}

/// `[viewstats]`: the stats viewer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Viewstats {
    /// Interval between screens in `--watch` mode; 10ms..=1h. Default 1s.
    #[serde(
        deserialize_with = "units::deserialize_duration",
        serialize_with = "units::serialize_duration"
    )]
    pub refresh: Duration,
}

impl Default for Viewstats {
    fn default() -> Self {
        Self { refresh: Duration::from_secs(1) }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`. Errors name `path` as given.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let result = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::io(origin.clone(), e))
            .and_then(|text| Self::from_toml_str(&text, &origin));
        if let Err(e) = &result {
            log::debug!("loading config: {e}");
        }
        result
    }

    /// [`Config::load`] of `path`, or the validated defaults when `path` is `None`.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Self::load(path),
            None => {
                let cfg = Config::default();
                cfg.validate().map_err(|mut e| {
                    e.origin = "(built-in defaults)".to_owned();
                    e
                })?;
                Ok(cfg)
            }
        }
    }

    /// Parses and validates a TOML document; `origin` (a file name) starts every error message.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let with_origin = |mut e: ConfigError| {
            e.origin = origin.to_owned();
            e
        };
        // Pass 1: syntax, and the spans of every key for the messages below.
        let doc = match toml::de::DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let loc = Locator::empty(text);
                let mut message = one_line(e.message());
                // toml says only "duplicate key"; name it.
                if let Some(key) = e.span().and_then(|s| text.get(s)) {
                    if message == "duplicate key" && !key.is_empty() && !key.contains('\n') {
                        message = format!("duplicate key `{key}`");
                    }
                }
                let mut err = ConfigError::new(ErrorKind::Syntax, None, message);
                err.line = e.span().map(|s| loc.line_of(s.start));
                return Err(with_origin(err));
            }
        };
        let loc = Locator::new(text, doc.get_ref());
        // Pass 2: the schema (unknown keys, types, units, enum values).
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|s| loc.path_at(&s)).map(str::to_owned);
            let mut err = ConfigError::new(ErrorKind::Schema, key, one_line(e.message()));
            err.line = e.span().map(|s| loc.line_of(s.start));
            with_origin(err)
        })?;
        // Pass 3: ranges and cross-key rules.
        cfg.check().map_err(|inv| with_origin(inv.locate(&loc)))?;
        Ok(cfg)
    }

    /// Checks ranges and cross-key rules (everything [`Config::load`] checks after parsing).
    /// The error names the key but, without a file, no origin or line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(validate::Invalid::into_error)
    }

    /// Directory of the FIFOs: `shared.runtime_dir` if set; else the first absolute path in
    /// `$RUNTIME_DIRECTORY` (set by systemd's `RuntimeDirectory=`); else
    /// `$XDG_RUNTIME_DIR/shmsrv` if that variable is an absolute path; else `/run/shmsrv`.
    /// Never `/tmp`. The directory is not created here.
    pub fn runtime_dir(&self) -> PathBuf {
        resolve_runtime_dir(&self.shared.runtime_dir, |k| std::env::var_os(k))
    }

    /// The effective config on one line, for logging once at INFO at start.
    pub fn summary(&self) -> String {
        use units::{format_duration as d, format_size as b};
        let (s, io, md) = (&self.shared, &self.io_conn, &self.md);
        let listeners: Vec<String> = io
            .listeners
            .iter()
            .map(|l| {
                let name = if l.name.is_empty() { String::new() } else { format!("{}@", l.name) };
                name + &listener_summary(l)
            })
            .collect();
        let mut line = format!(
            "shared: name={} runtime_dir={} shm_backend={} queue_size={} max_message={}; \
             io_conn: listeners=[{}] backlog={} max_connections={} max_connections_per_ip={} read_buffer={} \
             idle_timeout={} message_deadline={} output_credit={} max_buffered={} drain_deadline={} spin={} log_level={} \
             http.max_head={} http.max_headers={}; \
             md: max_instances={} spin={} slice={} drain_deadline={} log_level={} dumb.burn_max={} dumb.wait_max={} \
             dumb.stream_max={} dumb.stream_chunk={}; viewstats: refresh={}",
            s.name,
            self.runtime_dir().display(),
            s.shm_backend,
            b(s.queue_size),
            b(s.max_message),
            listeners.join(" "),
            io.backlog,
            io.max_connections,
            io.max_connections_per_ip,
            b(io.read_buffer),
            d(io.idle_timeout),
            d(io.message_deadline),
            b(io.output_credit),
            b(io.max_buffered),
            d(io.drain_deadline),
            d(io.spin),
            io.log_level,
            b(io.http.max_head),
            io.http.max_headers,
            md.max_instances,
            d(md.spin),
            d(md.slice),
            d(md.drain_deadline),
            md.log_level,
            md.dumb.burn_max,
            d(md.dumb.wait_max),
            md.dumb.stream_max,
            b(md.dumb.stream_chunk),
            d(self.viewstats.refresh),
        );
        line.push_str(&format!(
            "; io_conn.resp: max_elements={} max_bulk={}; kv: max_keys={} memory={} password={}",
            io.resp.max_elements,
            b(io.resp.max_bulk),
            self.kv.max_keys,
            b(self.kv.memory),
            if self.kv.password.is_empty() { "none" } else { "set" }
        ));
        line.push_str("; md.group: ");
        line.push_str(&self.groups_summary());
        if !self.service.is_empty() {
            line.push_str("; service: ");
            line.push_str(&self.service.names().collect::<Vec<_>>().join(","));
        }
        line
    }

    /// The config as a TOML document (every key, sizes and durations with units), e.g. for a
    /// `--print-config` flag. [`Config::from_toml_str`] reads it back to an equal config.
    pub fn to_toml(&self) -> String {
        // Every field is a string, integer, table or array of tables: nothing toml rejects.
        toml::to_string(self).expect("the schema only has types TOML can represent")
    }
}

/// [`Config::runtime_dir`] with the environment passed in (for tests).
fn resolve_runtime_dir(configured: &Path, env: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    if !configured.as_os_str().is_empty() {
        return configured.to_owned();
    }
    if let Some(dirs) = env("RUNTIME_DIRECTORY") {
        // systemd joins several RuntimeDirectory= entries with ':'.
        if let Some(dir) = std::env::split_paths(&dirs).find(|p| p.is_absolute()) {
            return dir;
        }
    }
    if let Some(xdg) = env("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if xdg.is_absolute() {
            return xdg.join("shmsrv");
        }
    }
    PathBuf::from("/run/shmsrv")
}

/// A validation failure found outside loading ([`Config::check_binaries`]), located in the
/// config file at `path` as a load error would be (origin, line); key only if the file cannot be
/// read or parsed again.
pub(crate) fn locate_in_file(inv: validate::Invalid, path: &Path) -> ConfigError {
    let origin = path.display().to_string();
    let mut err = match std::fs::read_to_string(path) {
        Ok(text) => match toml::de::DeTable::parse(&text) {
            Ok(doc) => inv.locate(&Locator::new(&text, doc.get_ref())),
            Err(_) => inv.into_error(),
        },
        Err(_) => inv.into_error(),
    };
    err.origin = origin;
    err
}

/// toml's messages can span lines; ours are one line.
fn one_line(msg: &str) -> String {
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_dir_resolution() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
        };
        let auto = Path::new("");
        assert_eq!(resolve_runtime_dir(Path::new("/srv/x"), env(&[])), Path::new("/srv/x"));
        assert_eq!(resolve_runtime_dir(auto, env(&[])), Path::new("/run/shmsrv"));
        assert_eq!(
            resolve_runtime_dir(auto, env(&[("XDG_RUNTIME_DIR", "/run/user/1000")])),
            Path::new("/run/user/1000/shmsrv")
        );
        assert_eq!(
            resolve_runtime_dir(
                auto,
                env(&[("RUNTIME_DIRECTORY", "/run/shmsrv2:/run/other"), ("XDG_RUNTIME_DIR", "/x")])
            ),
            Path::new("/run/shmsrv2")
        );
        // Relative or empty values are ignored.
        assert_eq!(
            resolve_runtime_dir(
                auto,
                env(&[("RUNTIME_DIRECTORY", ""), ("XDG_RUNTIME_DIR", "relative")])
            ),
            Path::new("/run/shmsrv")
        );
    }

    #[test]
    fn listener_framing() {
        let mut l = Listener::new(1, "echo");
        assert_eq!(l.framing(), Framing::Raw);
        l.service = "reverse".into();
        assert_eq!(l.framing(), Framing::Line);
        l.framing = Some(Framing::Len32);
        assert_eq!(l.framing(), Framing::Len32);
        l.service = "custom".into();
        l.framing = None;
        assert_eq!(l.framing(), Framing::Raw);
        l.service = "http".into();
        assert_eq!(l.framing(), Framing::Http);
    }
}
