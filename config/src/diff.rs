//! What changed between two configs, and whether a running program can apply it (reload).
//!
//! io_conn and md reload their config on SIGHUP (`systemctl reload`): they load and validate the
//! file as at start ([`crate::Config::load`], the same checks as `--check-config`), then ask
//! [`diff_for`] what changed for them. Every changed key is [`Apply::Live`] (applied at once,
//! every connection kept) or [`Apply::Restart`] (refused: the program keeps its old config and
//! logs one line per such key). A reload is all or nothing: one restart-only key refuses the
//! whole file, so a running program never runs half of a file.
//!
//! Keys are the dotted paths of the file. Listeners are named by their identity, the `name` if
//! set, else the address (`io_conn.listener[127.0.0.1:8090]`), so adding one listener does not
//! make every later one look changed; groups by their position (`md.group[1].instances`).
//!
//! Every key of the schema is listed once in `KEYS`, with the programs it concerns and how it
//! applies; a key missing from the table is treated as restart-only, and the unit test
//! `every_key_is_classified` fails when a new key is added to the schema without a line here.
//!
//! # Example
//!
//! ```
//! use config::{Apply, Config, Program, diff_for};
//!
//! let old = Config::default();
//! let mut new = old.clone();
//! new.io_conn.max_connections = 50;
//! new.shared.queue_size = 4 << 20;
//! let c = diff_for(&old, &new, Program::IoConn);
//! assert_eq!(c.live[0].key, "io_conn.max_connections");
//! assert_eq!(c.restart_only[0].key, "shared.queue_size");
//! assert_eq!(config::classify("md.dumb.burn_max"), Some(Apply::Live));
//! ```

use std::collections::BTreeMap;
use std::fmt;

use crate::Config;

/// Whether a running program can take a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Applied by a reload, keeping every connection.
    Live,
    /// Needs a restart: a reload that contains it is refused.
    Restart,
}

/// Which program a reload is for (a key that does not concern it is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// io_conn: `[shared]`, `[io_conn]`, the listeners, `md.max_instances` and the groups.
    IoConn,
    /// md: `[shared]`, `[md]`, the groups and the services' own `[service.NAME]` tables.
    Md,
    /// Everything (no key ignored).
    All,
}

const IO: u8 = 1;
const MD: u8 = 2;
const VS: u8 = 4;

impl Program {
    fn mask(self) -> u8 {
        match self {
            Self::IoConn => IO,
            Self::Md => MD,
            Self::All => IO | MD | VS,
        }
    }
}

/// Every key of the schema: (key with `[]` for an array element, the programs it concerns, how
/// a change applies). `io_conn.listener[]` and `md.group[]` stand for an element added or
/// removed.
pub(crate) const KEYS: &[(&str, u8, Apply)] = &[
    // The segments, FIFOs and rings exist with these: only a new io_conn (and md attaching to
    // it) can change them.
    ("shared.name", IO | MD | VS, Apply::Restart),
    ("shared.runtime_dir", IO | MD, Apply::Restart),
    ("shared.shm_backend", IO | MD | VS, Apply::Restart),
    ("shared.queue_size", IO | MD, Apply::Restart),
    ("shared.max_message", IO | MD, Apply::Restart),
    // Re-`listen`ed on the listeners io_conn bound itself.
    ("io_conn.backlog", IO, Apply::Live),
    // The flow table grows on a reload; lowering it refuses new connections until enough close.
    ("io_conn.max_connections", IO, Apply::Live),
    ("io_conn.max_connections_per_ip", IO, Apply::Live),
    // The buffer pool and the scratch buffer are sized with it.
    ("io_conn.read_buffer", IO, Apply::Restart),
    ("io_conn.idle_timeout", IO, Apply::Live),
    ("io_conn.message_deadline", IO, Apply::Live),
    // New connections get the new credit; the ones open keep the credit their OPEN gave md.
    ("io_conn.output_credit", IO, Apply::Live),
    // Checked at the end of every loop iteration: a lower budget closes the slowest readers
    // until the buffers fit it.
    ("io_conn.max_buffered", IO, Apply::Live),
    ("io_conn.drain_deadline", IO, Apply::Live),
    ("io_conn.spin", IO, Apply::Live),
    ("io_conn.log_level", IO, Apply::Live),
    // The next message framed on any connection is checked against the new limits.
    ("io_conn.http.max_head", IO, Apply::Live),
    ("io_conn.http.max_headers", IO, Apply::Live),
    ("io_conn.resp.max_elements", IO, Apply::Live),
    ("io_conn.resp.max_bulk", IO, Apply::Live),
    // Added and removed live (a removed listener stops accepting, its connections stay), except
    // under socket activation, where io_conn refuses it (systemd holds the sockets).
    ("io_conn.listener[]", IO, Apply::Live),
    // Applies to new connections; open ones keep what they were accepted with.
    ("io_conn.listener[].name", IO, Apply::Live),
    ("io_conn.listener[].service", IO, Apply::Live),
    ("io_conn.listener[].framing", IO, Apply::Live),
    ("io_conn.listener[].dispatch", IO, Apply::Live),
    ("io_conn.listener[].pipeline_depth", IO, Apply::Live),
    // Checked at accept and applied to connections accepted after the reload; a connection
    // still reading its header finishes it under the settings it was accepted with.
    ("io_conn.listener[].proxy_protocol", IO, Apply::Live),
    ("io_conn.listener[].proxy_from", IO, Apply::Live),
    // One queue pair and stats block per instance exist from the start.
    ("md.max_instances", IO | MD | VS, Apply::Restart),
    // The cache segment is sized at io_conn's start; md's kv service reads the password when
    // it starts.
    ("kv.max_keys", IO | MD, Apply::Restart),
    ("kv.memory", IO | MD, Apply::Restart),
    ("kv.password", IO | MD, Apply::Restart),
    ("md.spin", MD, Apply::Live),
    ("md.slice", MD, Apply::Live),
    ("md.drain_deadline", MD, Apply::Live),
    ("md.log_level", MD, Apply::Live),
    ("md.dumb.burn_max", MD, Apply::Live),
    ("md.dumb.wait_max", MD, Apply::Live),
    ("md.dumb.stream_max", MD, Apply::Live),
    ("md.dumb.stream_chunk", MD, Apply::Live),
    // Routing (io_conn) changes at once; a group's binary is what the instance runs from its
    // next start on.
    ("md.group[]", IO | MD | VS, Apply::Live),
    ("md.group[].services", IO | MD | VS, Apply::Live),
    ("md.group[].instances", IO | MD | VS, Apply::Live),
    ("md.group[].binary", IO | MD, Apply::Live),
    ("viewstats.refresh", VS, Apply::Live),
];

/// The keys of the free-form `[service.NAME]` tables, which `KEYS` cannot list.
const SERVICE_PREFIX: &str = "service.";

/// How a change of `key` applies (a dotted key as in [`Change::key`]; array elements written
/// with or without their identity), or None for a key the schema does not have.
pub fn classify(key: &str) -> Option<Apply> {
    lookup(key).map(|(_, a)| a)
}

/// The programs `key` concerns (a mask) and how a change applies.
fn lookup(key: &str) -> Option<(u8, Apply)> {
    // `[service.NAME]` is free-form: every key in it is md's, and live. md hands the new table
    // to the service (`Service::configure`), which may still refuse it: then the whole reload is
    // refused, like a restart-only key.
    if key.starts_with(SERVICE_PREFIX) {
        return Some((MD, Apply::Live));
    }
    let general = generalize(key);
    KEYS.iter().find(|(k, _, _)| *k == general).map(|&(_, p, a)| (p, a))
}

/// `io_conn.listener[127.0.0.1:80].service` → `io_conn.listener[].service`.
fn generalize(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut depth = 0;
    for c in key.chars() {
        match c {
            '[' => {
                if depth == 0 {
                    out.push('[');
                }
                depth += 1;
            }
            ']' => {
                depth -= 1;
                if depth == 0 {
                    out.push(']');
                }
            }
            _ if depth > 0 => {}
            _ => out.push(c),
        }
    }
    out
}

/// Whether a key was added, removed or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A listener or group that the old config did not have.
    Added,
    /// A listener or group that the new config does not have.
    Removed,
    /// A value that differs.
    Changed,
}

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted key: `io_conn.max_connections`, `io_conn.listener[127.0.0.1:8090]`,
    /// `md.group[0].instances`.
    pub key: String,
    /// Added, removed or changed.
    pub kind: ChangeKind,
    /// The old value as TOML (empty when added).
    pub old: String,
    /// The new value as TOML (empty when removed).
    pub new: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ChangeKind::Added => write!(f, "{} added ({})", self.key, self.new),
            ChangeKind::Removed => write!(f, "{} removed (was {})", self.key, self.old),
            ChangeKind::Changed => write!(f, "{}: {} -> {}", self.key, self.old, self.new),
        }
    }
}

/// What a reload would change, split by how it applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys a running program applies.
    pub live: Vec<Change>,
    /// Keys that need a restart: their presence refuses the reload.
    pub restart_only: Vec<Change>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart_only.is_empty()
    }

    /// The keys of [`Changes::restart_only`], space-separated.
    pub fn refused_keys(&self) -> String {
        self.restart_only.iter().map(|c| c.key.as_str()).collect::<Vec<_>>().join(" ")
    }
}

/// Every change between `old` and `new`, for every program.
pub fn diff(old: &Config, new: &Config) -> Changes {
    diff_for(old, new, Program::All)
}

/// The changes between `old` and `new` that concern `program`, each classified by the key
/// table (`KEYS` in this module; a key the table does not know is restart-only). In key order.
pub fn diff_for(old: &Config, new: &Config, program: Program) -> Changes {
    let (a, b) = (flatten(old), flatten(new));
    let mut out = Changes::default();
    let mut push = |key: &str, kind: ChangeKind, old: &str, new: &str| {
        let (progs, apply) = lookup(key).unwrap_or((IO | MD | VS, Apply::Restart));
        if progs & program.mask() == 0 {
            return;
        }
        let c = Change { key: key.to_owned(), kind, old: old.to_owned(), new: new.to_owned() };
        match apply {
            Apply::Live => out.live.push(c),
            Apply::Restart => out.restart_only.push(c),
        }
    };
    // A field of an element that came or went is part of that element's change.
    for (key, va) in &a.values {
        match b.values.get(key) {
            Some(vb) if vb != va => push(key, ChangeKind::Changed, va, vb),
            Some(_) => {}
            None if !b.has_element_of(key) => {}
            None => push(key, ChangeKind::Changed, va, ""),
        }
    }
    for (key, vb) in &b.values {
        if !a.values.contains_key(key) && a.has_element_of(key) {
            push(key, ChangeKind::Changed, "", vb);
        }
    }
    for (e, summary) in &a.element_summary {
        if !b.element_summary.contains_key(e) {
            push(e, ChangeKind::Removed, summary, "");
        }
    }
    for (e, summary) in &b.element_summary {
        if !a.element_summary.contains_key(e) {
            push(e, ChangeKind::Added, "", summary);
        }
    }
    out.live.sort_by(|x, y| x.key.cmp(&y.key));
    out.restart_only.sort_by(|x, y| x.key.cmp(&y.key));
    out
}

/// A config as dotted keys, array elements named by identity.
#[derive(Debug, Default)]
struct Flat {
    values: BTreeMap<String, String>,
    /// Array elements (`io_conn.listener[X]`, `md.group[i]`) with a one-line summary.
    element_summary: BTreeMap<String, String>,
}

impl Flat {
    /// `key` is a top-level key, or a field of an element this config has.
    fn has_element_of(&self, key: &str) -> bool {
        match element_of(key) {
            Some(e) => self.element_summary.contains_key(e),
            None => true,
        }
    }
}

/// The element a field belongs to: `io_conn.listener[X].service` → `io_conn.listener[X]`.
fn element_of(key: &str) -> Option<&str> {
    let open = key.find('[')?;
    let mut depth = 0;
    for (i, c) in key[open..].char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&key[..open + i + 1]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Each listener's identity in keys: its `name` if set, else its address (with `#n` for the
/// n-th listener of an address used twice, e.g. two port-0 listeners). io_conn finds a running
/// listener in a reloaded file by it.
pub fn listener_ids(listeners: &[crate::Listener]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(listeners.len());
    for l in listeners {
        let base = if l.name.is_empty() { l.address.to_string() } else { l.name.clone() };
        let n = ids.iter().filter(|i| i.split('#').next() == Some(base.as_str())).count();
        ids.push(if n == 0 { base } else { format!("{base}#{n}") });
    }
    ids
}

fn flatten(cfg: &Config) -> Flat {
    let mut flat = Flat::default();
    // Every field is a string, integer, table or array of tables: nothing toml rejects.
    let root = toml::Value::try_from(cfg).expect("the schema only has types TOML can represent");
    let ids = listener_ids(&cfg.io_conn.listeners);
    walk(&root, "", &mut flat, &ids);
    flat
}

fn walk(v: &toml::Value, path: &str, flat: &mut Flat, listener_ids: &[String]) {
    let join = |k: &str| if path.is_empty() { k.to_owned() } else { format!("{path}.{k}") };
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = join(k);
                match v {
                    toml::Value::Array(items)
                        if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
                    {
                        for (i, item) in items.iter().enumerate() {
                            let id = if key == "io_conn.listener" {
                                listener_ids.get(i).cloned().unwrap_or_else(|| i.to_string())
                            } else {
                                i.to_string()
                            };
                            let elem = format!("{key}[{id}]");
                            flat.element_summary.insert(elem.clone(), one_line(item));
                            walk(item, &elem, flat, listener_ids);
                        }
                    }
                    _ => walk(v, &key, flat, listener_ids),
                }
            }
        }
        other => {
            // The listener's identity is its address (or name): a change of it is a listener
            // removed and another added, not a changed field.
            if path.starts_with("io_conn.listener[") && path.ends_with("].address") {
                return;
            }
            flat.values.insert(path.to_owned(), one_line(other));
        }
    }
}

fn one_line(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(t) => {
            let parts: Vec<String> =
                t.iter().map(|(k, v)| format!("{k} = {}", one_line(v))).collect();
            format!("{{ {} }}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::{Framing, Group, Instances, Listener, LogLevel, ShmBackend};

    /// A config in which every optional part of the schema is present (a named listener with
    /// an explicit framing, a group with a binary), so flattening it yields every key.
    fn full() -> Config {
        let mut cfg = Config::default();
        cfg.io_conn.listeners[0].name = "echo".into();
        cfg.io_conn.listeners[0].framing = Some(Framing::Raw);
        cfg.io_conn.listeners[0].proxy_protocol = crate::ProxyProtocol::V2;
        cfg.io_conn.listeners[0].proxy_from = vec!["127.0.0.2/32".parse().unwrap()];
        cfg.md.groups = vec![Group {
            services: ["echo", "reverse", "dumb", "http", "kv"].map(String::from).to_vec(),
            instances: Instances::Range { first: 0, last: 7 },
            binary: "/usr/bin/true".into(),
        }];
        cfg.service
            .0
            .insert("echo".into(), toml::from_str("suffix = \"!\"\n[deep]\nx = 1\n").unwrap());
        cfg.validate().unwrap();
        cfg
    }

    #[test]
    fn service_sections_are_md_live() {
        let old = full();
        let mut new = old.clone();
        new.service.0.get_mut("echo").unwrap().insert("suffix".into(), "?".into());
        new.service.0.insert("reverse".into(), toml::from_str("x = 1").unwrap());
        let md = diff_for(&old, &new, Program::Md);
        let keys: Vec<&str> = md.live.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["service.echo.suffix", "service.reverse.x"]);
        assert!(md.restart_only.is_empty());
        assert_eq!(md.live[0].to_string(), "service.echo.suffix: \"!\" -> \"?\"");
        // io_conn does not read them: nothing to reload there.
        assert!(diff_for(&old, &new, Program::IoConn).is_empty());
        assert_eq!(classify("service.anything.at.all"), Some(Apply::Live));
    }

    #[test]
    fn every_key_is_classified() {
        let flat = flatten(&full());
        let mut seen = BTreeSet::new();
        for key in flat.values.keys().chain(flat.element_summary.keys()) {
            let g = generalize(key);
            assert!(classify(key).is_some(), "{key} ({g}) is not in config::diff::KEYS");
            seen.insert(g);
        }
        // And the table lists nothing the schema does not have (the identity field `address`
        // is not a key of its own).
        for (k, _, _) in KEYS {
            assert!(seen.contains(*k), "KEYS lists {k}, which the schema does not have");
        }
    }

    #[test]
    fn no_change_no_key() {
        assert!(diff(&full(), &full()).is_empty());
        assert!(diff(&Config::default(), &Config::default()).is_empty());
    }

    /// Changes each key once and checks the class diff gives it.
    #[test]
    fn each_key_changed_alone() {
        type Edit = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Apply, Edit)> = vec![
            ("shared.name", Apply::Restart, Box::new(|c| c.shared.name = "other".into())),
            (
                "shared.runtime_dir",
                Apply::Restart,
                Box::new(|c| c.shared.runtime_dir = "/run/x".into()),
            ),
            (
                "shared.shm_backend",
                Apply::Restart,
                Box::new(|c| c.shared.shm_backend = ShmBackend::Sysv),
            ),
            ("shared.queue_size", Apply::Restart, Box::new(|c| c.shared.queue_size = 4 << 20)),
            ("shared.max_message", Apply::Restart, Box::new(|c| c.shared.max_message = 1024)),
            ("io_conn.backlog", Apply::Live, Box::new(|c| c.io_conn.backlog = 5)),
            ("io_conn.max_connections", Apply::Live, Box::new(|c| c.io_conn.max_connections = 5)),
            (
                "io_conn.max_connections_per_ip",
                Apply::Live,
                Box::new(|c| c.io_conn.max_connections_per_ip = 5),
            ),
            ("io_conn.read_buffer", Apply::Restart, Box::new(|c| c.io_conn.read_buffer = 4096)),
            (
                "io_conn.idle_timeout",
                Apply::Live,
                Box::new(|c| c.io_conn.idle_timeout = Duration::ZERO),
            ),
            (
                "io_conn.message_deadline",
                Apply::Live,
                Box::new(|c| c.io_conn.message_deadline = Duration::ZERO),
            ),
            ("io_conn.output_credit", Apply::Live, Box::new(|c| c.io_conn.output_credit = 1 << 20)),
            ("io_conn.max_buffered", Apply::Live, Box::new(|c| c.io_conn.max_buffered = 64 << 20)),
            (
                "io_conn.drain_deadline",
                Apply::Live,
                Box::new(|c| c.io_conn.drain_deadline = Duration::ZERO),
            ),
            ("io_conn.spin", Apply::Live, Box::new(|c| c.io_conn.spin = Duration::ZERO)),
            ("io_conn.log_level", Apply::Live, Box::new(|c| c.io_conn.log_level = LogLevel::Debug)),
            ("io_conn.http.max_head", Apply::Live, Box::new(|c| c.io_conn.http.max_head = 4096)),
            ("io_conn.http.max_headers", Apply::Live, Box::new(|c| c.io_conn.http.max_headers = 7)),
            (
                "io_conn.resp.max_elements",
                Apply::Live,
                Box::new(|c| c.io_conn.resp.max_elements = 7),
            ),
            ("io_conn.resp.max_bulk", Apply::Live, Box::new(|c| c.io_conn.resp.max_bulk = 4096)),
            ("kv.max_keys", Apply::Restart, Box::new(|c| c.kv.max_keys = 1000)),
            ("kv.memory", Apply::Restart, Box::new(|c| c.kv.memory = 1 << 20)),
            ("kv.password", Apply::Restart, Box::new(|c| c.kv.password = "secret".into())),
            (
                "io_conn.listener[echo].service",
                Apply::Live,
                Box::new(|c| c.io_conn.listeners[0].service = "dumb".into()),
            ),
            (
                "io_conn.listener[echo].framing",
                Apply::Live,
                Box::new(|c| c.io_conn.listeners[0].framing = Some(Framing::Line)),
            ),
            (
                "io_conn.listener[echo].dispatch",
                Apply::Live,
                Box::new(|c| c.io_conn.listeners[0].dispatch = Some(crate::Dispatch::Flow)),
            ),
            (
                "io_conn.listener[echo].pipeline_depth",
                Apply::Live,
                Box::new(|c| c.io_conn.listeners[0].pipeline_depth = 2),
            ),
            (
                "io_conn.listener[echo].proxy_protocol",
                Apply::Live,
                Box::new(|c| c.io_conn.listeners[0].proxy_protocol = crate::ProxyProtocol::V1),
            ),
            (
                "io_conn.listener[echo].proxy_from",
                Apply::Live,
                Box::new(|c| c.io_conn.listeners[0].proxy_from.push("10.0.0.0/8".parse().unwrap())),
            ),
            ("md.max_instances", Apply::Restart, Box::new(|c| c.md.max_instances = 9)),
            ("md.spin", Apply::Live, Box::new(|c| c.md.spin = Duration::ZERO)),
            ("md.slice", Apply::Live, Box::new(|c| c.md.slice = Duration::ZERO)),
            ("md.drain_deadline", Apply::Live, Box::new(|c| c.md.drain_deadline = Duration::ZERO)),
            ("md.log_level", Apply::Live, Box::new(|c| c.md.log_level = LogLevel::Warn)),
            ("md.dumb.burn_max", Apply::Live, Box::new(|c| c.md.dumb.burn_max = 10)),
            ("md.dumb.wait_max", Apply::Live, Box::new(|c| c.md.dumb.wait_max = Duration::ZERO)),
            ("md.dumb.stream_max", Apply::Live, Box::new(|c| c.md.dumb.stream_max = 10)),
            ("md.dumb.stream_chunk", Apply::Live, Box::new(|c| c.md.dumb.stream_chunk = 10)),
            (
                "md.group[0].services",
                Apply::Live,
                Box::new(|c| c.md.groups[0].services.pop().map(drop).unwrap_or(())),
            ),
            (
                "md.group[0].instances",
                Apply::Live,
                Box::new(|c| c.md.groups[0].instances = Instances::Range { first: 0, last: 3 }),
            ),
            (
                "md.group[0].binary",
                Apply::Live,
                Box::new(|c| c.md.groups[0].binary = "/usr/bin/false".into()),
            ),
            (
                "viewstats.refresh",
                Apply::Live,
                Box::new(|c| c.viewstats.refresh = Duration::from_secs(2)),
            ),
        ];
        let mut covered = BTreeSet::new();
        for (key, apply, edit) in &cases {
            let old = full();
            let mut new = full();
            edit(&mut new);
            let c = diff(&old, &new);
            let (list, other) = match apply {
                Apply::Live => (&c.live, &c.restart_only),
                Apply::Restart => (&c.restart_only, &c.live),
            };
            assert_eq!(list.len(), 1, "{key}: {c:?}");
            assert_eq!(list[0].key, *key);
            assert_eq!(list[0].kind, ChangeKind::Changed);
            assert!(other.is_empty(), "{key}: {c:?}");
            covered.insert(generalize(key));
        }
        covered.insert("io_conn.listener[]".into());
        covered.insert("md.group[]".into());
        // The name is the listener's identity once set: tested in `listeners_by_identity`.
        covered.insert("io_conn.listener[].name".into());
        for (k, _, _) in KEYS {
            assert!(covered.contains(*k), "{k} has no case in each_key_changed_alone");
        }
    }

    #[test]
    fn listeners_by_identity() {
        let old = Config::default();
        let mut new = old.clone();
        // Remove 9090, add 7070, change 8090's depth: 4680 and 8090 keep their identity.
        new.io_conn.listeners.remove(1);
        let mut l = Listener::new(7070, "dumb");
        l.pipeline_depth = 4;
        new.io_conn.listeners.push(l);
        new.io_conn.listeners[1].pipeline_depth = 8;
        let c = diff(&old, &new);
        let keys: Vec<_> = c.live.iter().map(|c| (c.key.as_str(), c.kind)).collect();
        assert_eq!(
            keys,
            [
                ("io_conn.listener[127.0.0.1:7070]", ChangeKind::Added),
                ("io_conn.listener[127.0.0.1:8090].pipeline_depth", ChangeKind::Changed),
                ("io_conn.listener[127.0.0.1:9090]", ChangeKind::Removed),
            ]
        );
        assert!(c.restart_only.is_empty());
        assert!(c.live[0].to_string().contains("service = \"dumb\""), "{}", c.live[0]);
        // Naming a listener changes its identity: one removed, one added.
        let mut named = old.clone();
        named.io_conn.listeners[0].name = "front".into();
        let c = diff(&old, &named);
        let keys: Vec<_> = c.live.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["io_conn.listener[127.0.0.1:4680]", "io_conn.listener[front]"]);
        // A named listener that moves to another address: the address is no key of its own.
        let mut moved = named.clone();
        moved.io_conn.listeners[0].address = "127.0.0.1:4681".parse().unwrap();
        assert!(diff(&named, &moved).is_empty(), "identity kept; io_conn compares addresses");
    }

    #[test]
    fn groups_added_and_removed() {
        let old = Config::default();
        let new = full();
        let c = diff_for(&old, &new, Program::IoConn);
        let keys: Vec<_> = c.live.iter().map(|c| (c.key.as_str(), c.kind)).collect();
        assert!(keys.contains(&("md.group[0]", ChangeKind::Added)), "{keys:?}");
        let c = diff(&new, &old);
        assert!(c.live.iter().any(|c| c.key == "md.group[0]" && c.kind == ChangeKind::Removed));
    }

    #[test]
    fn programs_see_their_keys_only() {
        let old = Config::default();
        let mut new = old.clone();
        new.md.dumb.burn_max = 5;
        new.io_conn.max_connections = 5;
        new.viewstats.refresh = Duration::from_secs(3);
        new.shared.name = "x".into();
        let io = diff_for(&old, &new, Program::IoConn);
        assert_eq!(
            io.live.iter().map(|c| &c.key[..]).collect::<Vec<_>>(),
            ["io_conn.max_connections"]
        );
        assert_eq!(io.refused_keys(), "shared.name");
        let md = diff_for(&old, &new, Program::Md);
        assert_eq!(md.live.iter().map(|c| &c.key[..]).collect::<Vec<_>>(), ["md.dumb.burn_max"]);
        assert_eq!(md.refused_keys(), "shared.name");
        assert_eq!(diff(&old, &new).live.len(), 3);
    }

    #[test]
    fn unknown_key_is_restart_only() {
        assert_eq!(classify("io_conn.not_a_key"), None);
        assert_eq!(generalize("a.listener[1.2.3.4:5].x"), "a.listener[].x");
        assert_eq!(generalize("a.listener[[::1]:5].x"), "a.listener[].x");
    }

    #[test]
    fn port_zero_listeners_have_distinct_identities() {
        let mut cfg = Config::default();
        for l in &mut cfg.io_conn.listeners {
            l.address = "127.0.0.1:0".parse().unwrap();
        }
        let ids = listener_ids(&cfg.io_conn.listeners);
        assert_eq!(
            ids,
            ["127.0.0.1:0", "127.0.0.1:0#1", "127.0.0.1:0#2", "127.0.0.1:0#3", "127.0.0.1:0#4"]
        );
        let mut new = cfg.clone();
        new.io_conn.listeners[2].service = "echo".into();
        let c = diff(&cfg, &new);
        assert_eq!(c.live[0].key, "io_conn.listener[127.0.0.1:0#2].service");
    }
}
