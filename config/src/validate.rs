//! Range and cross-key checks run after the schema has been parsed ([`Config::validate`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::error::{ConfigError, ErrorKind};
use crate::locate::{Locator, parent};
use crate::units::{format_duration, format_size};
use crate::{
    Config, MAX_HTTP_HEADERS, MAX_MD_INSTANCES, MAX_NAME_LEN, MAX_PIPELINE_DEPTH, MIN_HTTP_HEAD,
    MIN_MAX_BUFFERED, MIN_MAX_MESSAGE, default_framing,
};

/// Bytes a frame adds to its payload, and its alignment. Mirrors the shmq frame header (24
/// bytes since ring layout 3: a commit stamp, then len, kind, flags, flowid; 8-aligned) so a bad combination is reported with its key here rather than by
/// `shmq` at segment creation; shmq's own check stays authoritative.
const FRAME_HEADER: u64 = 24;
const FRAME_ALIGN: u64 = 8;

const MIN_QUEUE: u64 = 4 << 10;
const MAX_QUEUE: u64 = 4 << 30;
const MAX_READ_BUFFER: u64 = 64 << 20;
const MAX_CONNECTIONS: u32 = 1 << 24;
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_SPIN: Duration = Duration::from_secs(1);
/// Longest `md.slice`.
const MAX_SLICE: Duration = Duration::from_secs(1);
const MAX_DRAIN: Duration = Duration::from_secs(3600);
const MIN_REFRESH: Duration = Duration::from_millis(10);
const MAX_REFRESH: Duration = Duration::from_secs(3600);

/// A failed check: the key at fault and, for cross-key rules, the other keys involved.
#[derive(Debug)]
pub(crate) struct Invalid {
    /// `keys[0]` is reported; the error points at the first of `keys` the file writes.
    keys: Vec<String>,
    message: String,
}

impl Invalid {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { keys: vec![key.into()], message: message.into() }
    }

    pub(crate) fn also(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// The error without a file: key only.
    pub(crate) fn into_error(mut self) -> ConfigError {
        ConfigError::new(ErrorKind::Invalid, Some(self.keys.swap_remove(0)), self.message)
    }

    /// The error with the line the file writes the key (or a related key, or the enclosing
    /// table) on.
    pub(crate) fn locate(self, loc: &Locator<'_>) -> ConfigError {
        let key = &self.keys[0];
        let defaulted = !loc.has(key);
        let line = self.keys.iter().find_map(|k| loc.line_of_path(k)).or_else(|| {
            std::iter::successors(parent(key), |p| parent(p)).find_map(|p| loc.line_of_path(p))
        });
        let mut err = self.into_error();
        err.line = line;
        err.defaulted = defaulted;
        err
    }
}

pub(crate) fn name_ok(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn at_most(key: &str, v: Duration, max: Duration, max_text: &str) -> Result<(), Invalid> {
    if v > max {
        return Err(Invalid::new(
            key,
            format!("{} is longer than the maximum {max_text}", format_duration(v)),
        ));
    }
    Ok(())
}

/// Whether two bind addresses would collide (same port and the same IP, or a wildcard of the
/// same family). Port 0 never collides: the kernel picks a free port for each.
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl Config {
    pub(crate) fn check(&self) -> Result<(), Invalid> {
        self.check_shared()?;
        self.check_io_conn()?;
        self.check_md()?;
        self.check_dispatch()?;
        self.check_proxy()?;
        self.check_groups()?;
        self.check_kv()?;
        self.check_services()?;
        let refresh = self.viewstats.refresh;
        if !(MIN_REFRESH..=MAX_REFRESH).contains(&refresh) {
            return Err(Invalid::new(
                "viewstats.refresh",
                format!("{} is outside 10ms..=1h", format_duration(refresh)),
            ));
        }
        Ok(())
    }

    fn check_shared(&self) -> Result<(), Invalid> {
        let s = &self.shared;
        if !name_ok(&s.name) {
            return Err(Invalid::new(
                "shared.name",
                format!(
                    "{:?} is not a valid name (1..={MAX_NAME_LEN} characters of A-Z a-z 0-9 _ -)",
                    s.name
                ),
            ));
        }
        let dir = &s.runtime_dir;
        if !dir.as_os_str().is_empty() {
            if !dir.is_absolute() {
                return Err(Invalid::new(
                    "shared.runtime_dir",
                    format!(
                        "{:?} is not an absolute path (or \"\" for automatic)",
                        dir.display().to_string()
                    ),
                ));
            }
            let shared_tmp = [Path::new("/tmp"), Path::new("/var/tmp")];
            if shared_tmp.iter().any(|t| dir.components().eq(t.components())) {
                return Err(Invalid::new(
                    "shared.runtime_dir",
                    format!(
                        "{:?} is world-writable; use a private directory (or \"\" for automatic)",
                        dir.display().to_string()
                    ),
                ));
            }
        }
        let q = s.queue_size;
        if !q.is_power_of_two() {
            return Err(Invalid::new(
                "shared.queue_size",
                format!("{q} bytes is not a power of two (e.g. 1MiB, 4MiB, 16MiB)"),
            ));
        }
        if !(MIN_QUEUE..=MAX_QUEUE).contains(&q) {
            return Err(Invalid::new(
                "shared.queue_size",
                format!("{} is outside 4KiB..=4GiB", format_size(q)),
            ));
        }
        if s.max_message < MIN_MAX_MESSAGE {
            return Err(Invalid::new(
                "shared.max_message",
                format!(
                    "{} is below {} (io_conn's OPEN frame, a service name included, must fit)",
                    format_size(s.max_message),
                    format_size(MIN_MAX_MESSAGE)
                ),
            ));
        }
        // Saturating: max_message can be anything up to u64::MAX here.
        let frame = s
            .max_message
            .div_ceil(FRAME_ALIGN)
            .saturating_mul(FRAME_ALIGN)
            .saturating_add(FRAME_HEADER);
        let need = frame.saturating_mul(2);
        if q < need {
            return Err(Invalid::new(
                "shared.queue_size",
                format!(
                    "{} is too small for shared.max_message = {}: a ring must hold two largest \
                     frames, {need} bytes (raise queue_size or lower max_message)",
                    format_size(q),
                    format_size(s.max_message)
                ),
            )
            .also("shared.max_message"));
        }
        Ok(())
    }

    fn check_io_conn(&self) -> Result<(), Invalid> {
        let io = &self.io_conn;
        if !(1..=i32::MAX as u32).contains(&io.backlog) {
            return Err(Invalid::new(
                "io_conn.backlog",
                format!("{} is outside 1..={}", io.backlog, i32::MAX),
            ));
        }
        if !(1..=MAX_CONNECTIONS).contains(&io.max_connections) {
            return Err(Invalid::new(
                "io_conn.max_connections",
                format!("{} is outside 1..={MAX_CONNECTIONS}", io.max_connections),
            ));
        }
        if !(1..=MAX_READ_BUFFER).contains(&io.read_buffer) {
            return Err(Invalid::new(
                "io_conn.read_buffer",
                format!("{} is outside 1B..=64MiB", format_size(io.read_buffer)),
            ));
        }
        at_most("io_conn.idle_timeout", io.idle_timeout, YEAR, "365 days")?;
        at_most("io_conn.message_deadline", io.message_deadline, YEAR, "365 days")?;
        if io.output_credit == 0 {
            return Err(Invalid::new("io_conn.output_credit", "must be at least 1 byte"));
        }
        let one_input = io.read_buffer.saturating_add(self.shared.max_message);
        if io.max_buffered < MIN_MAX_BUFFERED.max(one_input) {
            return Err(Invalid::new(
                "io_conn.max_buffered",
                format!(
                    "{} is below {} (at least 1MiB, and at least read_buffer + max_message: one \
                     connection's largest input)",
                    format_size(io.max_buffered),
                    format_size(MIN_MAX_BUFFERED.max(one_input))
                ),
            )
            .also("io_conn.read_buffer"));
        }
        at_most("io_conn.drain_deadline", io.drain_deadline, MAX_DRAIN, "1h")?;
        at_most("io_conn.spin", io.spin, MAX_SPIN, "1s")?;
        let http = &io.http;
        if !(MIN_HTTP_HEAD..=MAX_READ_BUFFER).contains(&http.max_head) {
            return Err(Invalid::new(
                "io_conn.http.max_head",
                format!(
                    "{} is outside {}..=64MiB",
                    format_size(http.max_head),
                    format_size(MIN_HTTP_HEAD)
                ),
            ));
        }
        if !(1..=MAX_HTTP_HEADERS).contains(&http.max_headers) {
            return Err(Invalid::new(
                "io_conn.http.max_headers",
                format!("{} is outside 1..={MAX_HTTP_HEADERS}", http.max_headers),
            ));
        }
        if io.listeners.is_empty() {
            return Err(Invalid::new(
                "io_conn.listener",
                "no listeners: add at least one [[io_conn.listener]] (or remove the empty list)",
            ));
        }
        for (i, l) in io.listeners.iter().enumerate() {
            let key = |field: &str| format!("io_conn.listener[{i}].{field}");
            if !name_ok(&l.service) {
                return Err(Invalid::new(
                    key("service"),
                    format!(
                        "{:?} is not a valid service name (1..={MAX_NAME_LEN} characters of \
                         A-Z a-z 0-9 _ -)",
                        l.service
                    ),
                ));
            }
            if l.framing.is_none() && default_framing(&l.service).is_none() {
                return Err(Invalid::new(
                    key("framing"),
                    format!(
                        "service `{}` has no default framing; set framing (raw, line, len32, http or resp)",
                        l.service
                    ),
                )
                .also(key("service")));
            }
            if !l.name.is_empty() && !name_ok(&l.name) {
                return Err(Invalid::new(
                    key("name"),
                    format!(
                        "{:?} is not a valid listener name (empty, or 1..={MAX_NAME_LEN} \
                         characters of A-Z a-z 0-9 _ -)",
                        l.name
                    ),
                ));
            }
            if let Some(j) =
                io.listeners[..i].iter().position(|o| !l.name.is_empty() && o.name == l.name)
            {
                return Err(Invalid::new(
                    key("name"),
                    format!("{:?} is also io_conn.listener[{j}].name", l.name),
                ));
            }
            if let Some(j) = io.listeners[..i].iter().position(|o| overlaps(&o.address, &l.address))
            {
                return Err(Invalid::new(
                    key("address"),
                    format!(
                        "{} overlaps io_conn.listener[{j}].address = {}",
                        l.address, io.listeners[j].address
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_md(&self) -> Result<(), Invalid> {
        let md = &self.md;
        if !(1..=MAX_MD_INSTANCES).contains(&md.max_instances) {
            return Err(Invalid::new(
                "md.max_instances",
                format!("{} is outside 1..={MAX_MD_INSTANCES}", md.max_instances),
            ));
        }
        at_most("md.spin", md.spin, MAX_SPIN, "1s")?;
        // A slice longer than a second would starve signals and the watchdog for that long.
        at_most("md.slice", md.slice, MAX_SLICE, "1s")?;
        // systemd's md@ unit stops md after TimeoutStopSec=10s; a minute covers any custom unit.
        at_most("md.drain_deadline", md.drain_deadline, Duration::from_secs(60), "60s")?;
        let dumb = &md.dumb;
        at_most("md.dumb.wait_max", dumb.wait_max, YEAR, "365 days")?;
        let chunk = dumb.stream_chunk;
        if chunk == 0 {
            return Err(Invalid::new("md.dumb.stream_chunk", "must be at least 1 byte"));
        }
        if chunk > self.shared.max_message {
            return Err(Invalid::new(
                "md.dumb.stream_chunk",
                format!(
                    "{} is larger than shared.max_message = {} (a chunk is one frame)",
                    format_size(chunk),
                    format_size(self.shared.max_message)
                ),
            )
            .also("shared.max_message"));
        }
        if chunk > self.io_conn.output_credit {
            return Err(Invalid::new(
                "md.dumb.stream_chunk",
                format!(
                    "{} is larger than io_conn.output_credit = {} (a stream could never send a chunk)",
                    format_size(chunk),
                    format_size(self.io_conn.output_credit)
                ),
            )
            .also("io_conn.output_credit"));
        }
        Ok(())
    }
}

/// The dispatch keys of the listeners (`dispatch`, `pipeline_depth`).
impl Config {
    fn check_dispatch(&self) -> Result<(), Invalid> {
        for (i, l) in self.io_conn.listeners.iter().enumerate() {
            if !(1..=MAX_PIPELINE_DEPTH).contains(&l.pipeline_depth) {
                return Err(Invalid::new(
                    format!("io_conn.listener[{i}].pipeline_depth"),
                    format!(
                        "{} is outside 1..={MAX_PIPELINE_DEPTH} (requests in flight per \
                         connection under dispatch = \"request\")",
                        l.pipeline_depth
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dispatch, Framing, Listener};

    fn err(cfg: &Config) -> (String, String) {
        let e = cfg.validate().unwrap_err();
        (e.key().unwrap().to_owned(), e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn each_rule() {
        let base = Config::default();
        type Edit = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("shared.name", Box::new(|c| c.shared.name = "a b".into())),
            ("shared.name", Box::new(|c| c.shared.name = String::new())),
            ("shared.name", Box::new(|c| c.shared.name = "x".repeat(33))),
            ("shared.runtime_dir", Box::new(|c| c.shared.runtime_dir = "run".into())),
            ("shared.runtime_dir", Box::new(|c| c.shared.runtime_dir = "/tmp/".into())),
            ("shared.runtime_dir", Box::new(|c| c.shared.runtime_dir = "/var/tmp".into())),
            ("shared.queue_size", Box::new(|c| c.shared.queue_size = 3 << 20)),
            ("shared.queue_size", Box::new(|c| c.shared.queue_size = 1 << 33)),
            ("shared.queue_size", Box::new(|c| c.shared.queue_size = 0)),
            ("shared.queue_size", Box::new(|c| c.shared.max_message = 2 << 20)),
            ("shared.queue_size", Box::new(|c| c.shared.max_message = u64::MAX)),
            ("shared.max_message", Box::new(|c| c.shared.max_message = 0)),
            ("shared.max_message", Box::new(|c| c.shared.max_message = MIN_MAX_MESSAGE - 1)),
            ("io_conn.backlog", Box::new(|c| c.io_conn.backlog = 0)),
            ("io_conn.backlog", Box::new(|c| c.io_conn.backlog = u32::MAX)),
            ("io_conn.max_connections", Box::new(|c| c.io_conn.max_connections = 0)),
            ("io_conn.read_buffer", Box::new(|c| c.io_conn.read_buffer = 0)),
            ("io_conn.idle_timeout", Box::new(|c| c.io_conn.idle_timeout = YEAR * 2)),
            ("io_conn.output_credit", Box::new(|c| c.io_conn.output_credit = 0)),
            ("io_conn.max_buffered", Box::new(|c| c.io_conn.max_buffered = 0)),
            ("io_conn.max_buffered", Box::new(|c| c.io_conn.max_buffered = MIN_MAX_BUFFERED - 1)),
            (
                "io_conn.max_buffered",
                Box::new(|c| {
                    c.io_conn.read_buffer = 1 << 20;
                    c.io_conn.max_buffered = (1 << 20) + 1;
                }),
            ),
            ("io_conn.spin", Box::new(|c| c.io_conn.spin = Duration::from_secs(2))),
            ("io_conn.http.max_head", Box::new(|c| c.io_conn.http.max_head = MIN_HTTP_HEAD - 1)),
            ("io_conn.http.max_head", Box::new(|c| c.io_conn.http.max_head = 65 << 20)),
            ("io_conn.http.max_headers", Box::new(|c| c.io_conn.http.max_headers = 0)),
            (
                "io_conn.http.max_headers",
                Box::new(|c| c.io_conn.http.max_headers = MAX_HTTP_HEADERS + 1),
            ),
            ("io_conn.listener", Box::new(|c| c.io_conn.listeners.clear())),
            ("io_conn.listener[0].name", Box::new(|c| c.io_conn.listeners[0].name = "a b".into())),
            (
                "io_conn.listener[1].name",
                Box::new(|c| {
                    c.io_conn.listeners[0].name = "same".into();
                    c.io_conn.listeners[1].name = "same".into();
                }),
            ),
            (
                "io_conn.listener[1].service",
                Box::new(|c| c.io_conn.listeners[1].service = "".into()),
            ),
            (
                "io_conn.listener[2].framing",
                Box::new(|c| c.io_conn.listeners[2].service = "foo".into()),
            ),
            (
                "io_conn.listener[2].address",
                Box::new(|c| c.io_conn.listeners[2].address = "127.0.0.1:4680".parse().unwrap()),
            ),
            (
                "io_conn.listener[1].address",
                Box::new(|c| c.io_conn.listeners[1].address = "0.0.0.0:4680".parse().unwrap()),
            ),
            (
                "io_conn.listener[0].pipeline_depth",
                Box::new(|c| c.io_conn.listeners[0].pipeline_depth = 0),
            ),
            (
                "io_conn.listener[2].pipeline_depth",
                Box::new(|c| c.io_conn.listeners[2].pipeline_depth = 1025),
            ),
            ("md.max_instances", Box::new(|c| c.md.max_instances = 0)),
            ("md.max_instances", Box::new(|c| c.md.max_instances = 257)),
            ("md.spin", Box::new(|c| c.md.spin = Duration::from_secs(5))),
            ("md.slice", Box::new(|c| c.md.slice = Duration::from_millis(1001))),
            ("md.drain_deadline", Box::new(|c| c.md.drain_deadline = Duration::from_secs(61))),
            ("md.dumb.stream_chunk", Box::new(|c| c.md.dumb.stream_chunk = 0)),
            ("md.dumb.stream_chunk", Box::new(|c| c.md.dumb.stream_chunk = 2 << 20)),
            ("md.dumb.stream_chunk", Box::new(|c| c.io_conn.output_credit = 1024)),
            ("viewstats.refresh", Box::new(|c| c.viewstats.refresh = Duration::ZERO)),
        ];
        for (want, edit) in cases {
            let mut cfg = base.clone();
            edit(&mut cfg);
            let (key, text) = err(&cfg);
            assert_eq!(key, want, "{text}");
            assert!(text.starts_with(&format!("{want}: ")), "{text}");
        }
    }

    #[test]
    fn locate_falls_back_to_the_enclosing_table() {
        let text = "[io_conn]\nbacklog = 1\n\n[md]\n\n[md.dumb]\nburn_max = 1\n";
        let doc = toml::de::DeTable::parse(text).unwrap();
        let loc = Locator::new(text, doc.get_ref());
        let locate = |keys: &[&str]| {
            let mut inv = Invalid::new(keys[0], "m");
            for k in &keys[1..] {
                inv = inv.also(*k);
            }
            let e = inv.locate(&loc);
            (e.line(), e.is_default(), e.to_string())
        };
        // Written: its own line.
        assert_eq!(locate(&["md.dumb.burn_max"]), (Some(7), false, "md.dumb.burn_max: m".into()));
        // Absent, a related key written: that key's line.
        assert_eq!(
            locate(&["md.dumb.stream_chunk", "io_conn.backlog"]),
            (Some(2), true, "md.dumb.stream_chunk (default): m".into())
        );
        // Absent, nothing related written: the innermost table the file has.
        assert_eq!(locate(&["md.dumb.stream_chunk", "shared.max_message"]).0, Some(6));
        assert_eq!(locate(&["md.spin"]).0, Some(4));
        assert_eq!(locate(&["io_conn.listener[0].framing"]).0, Some(1));
        // Nothing at all: no line.
        assert_eq!(locate(&["viewstats.refresh"]).0, None);
    }

    #[test]
    fn accepted_edges() {
        let mut cfg = Config::default();
        cfg.shared.queue_size = 4 << 10;
        cfg.shared.max_message = 2048 - FRAME_HEADER;
        cfg.md.dumb.stream_chunk = 1024;
        cfg.io_conn.spin = Duration::ZERO;
        cfg.io_conn.idle_timeout = Duration::ZERO;
        cfg.shared.runtime_dir = "/tmp/shmsrv-test".into();
        cfg.io_conn.listeners = vec![
            Listener {
                name: String::new(),
                address: "127.0.0.1:0".parse().unwrap(),
                service: "x".into(),
                framing: Some(Framing::Len32),
                dispatch: Some(Dispatch::Flow),
                pipeline_depth: 1,
                ..Listener::new(0, "echo")
            },
            Listener {
                name: String::new(),
                address: "127.0.0.1:0".parse().unwrap(),
                service: "echo".into(),
                framing: None,
                dispatch: Some(Dispatch::Flow),
                pipeline_depth: 1,
                ..Listener::new(0, "echo")
            },
            Listener {
                name: String::new(),
                address: "[::]:4680".parse().unwrap(),
                service: "echo".into(),
                framing: None,
                dispatch: Some(Dispatch::Flow),
                pipeline_depth: 1,
                ..Listener::new(0, "echo")
            },
            Listener {
                name: String::new(),
                address: "127.0.0.1:4680".parse().unwrap(),
                service: "echo".into(),
                framing: None,
                dispatch: Some(Dispatch::Request),
                pipeline_depth: crate::MAX_PIPELINE_DEPTH,
                ..Listener::new(0, "echo")
            },
        ];
        cfg.validate().unwrap();
        cfg.shared.max_message += 1;
        assert_eq!(err(&cfg).0, "shared.queue_size");
    }
}
