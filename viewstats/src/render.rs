//! Turning a snapshot into text: the one-shot table, JSON and Prometheus exposition.
//!
//! Everything here is generic over the segment's descriptor table, read through
//! [`Snapshot::counters`], which also resolves the names a block's writer registered (an md's
//! command counts, `commands.<name>`): every mode shows the same counters under the same names.
//! The only names it knows are the `md` section (for "which slots are in use", the slot state and
//! start time), the `X.producer` / `X.consumer` naming of queue halves (for labels), and that a
//! dotted counter name `family.key` (the md's `commands.dumb.ping`) is one Prometheus family with
//! a `command` label. An md slot's service group comes from the config ([`Target::groups`]), not
//! from the segment.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json as j};
use shmq::stats::{
    BlockSnapshot, Counter, CounterKind, Descriptor, MdState, Snapshot, histogram_count, quantile,
};
use shmq::sys::{Liveness, ProcId};

use crate::Target;

/// Whether io_conn (the segment's creator) is still the same live process.
pub(crate) fn creator_alive(s: &Snapshot) -> bool {
    ProcId { pid: s.info.creator_pid, start_time: s.info.creator_start_time }.liveness()
        == Liveness::Alive
}

/// Index of the `md` section, if the segment has one.
fn md_section(s: &Snapshot) -> Option<usize> {
    s.sections.iter().position(|x| x.name == "md")
}

/// Per slot: shown or not. A slot is shown once an md has used it: its `md` block has a
/// non-zero value (an md writes its pid and state when it takes the slot), or `all`. io_conn
/// writes every slot's queue halves (their generation) whether an md ever came or not, so those
/// do not count; only a segment without an `md` section falls back to any non-zero value of any
/// per-slot block.
pub(crate) fn shown_slots(s: &Snapshot, all: bool) -> Vec<bool> {
    let n = s.info.md_slots as usize;
    let mut shown = vec![all; n];
    let md = md_section(s);
    for b in &s.blocks {
        let sec = &s.sections[b.section];
        let counts = match md {
            Some(m) => b.section == m,
            None => sec.instances > 1 || sec.name != "io",
        };
        if counts {
            if let Some(x) = shown.get_mut(b.instance as usize) {
                *x |= b.values.iter().any(|&v| v != 0);
            }
        }
    }
    shown
}

pub(crate) fn is_shown(s: &Snapshot, b: &BlockSnapshot, shown: &[bool]) -> bool {
    s.sections[b.section].name == "io" || shown.get(b.instance as usize).copied().unwrap_or(true)
}

/// Value of counter `name` in `b`.
pub(crate) fn value(s: &Snapshot, b: &BlockSnapshot, name: &str) -> Option<u64> {
    s.counters(b).find(|c| c.name == name).map(|c| c.value)
}

/// When the writer of `b` started (Unix ns): the md's start time for md-written blocks, else the
/// segment's creation.
fn start_unix_ns(s: &Snapshot, b: &BlockSnapshot) -> u64 {
    let sec = &s.sections[b.section].name;
    if matches!(sec.as_str(), "md" | "in.consumer" | "out.producer") {
        if let Some(st) = md_section(s)
            .and_then(|m| s.blocks.iter().find(|x| x.section == m && x.instance == b.instance))
            .and_then(|mb| value(s, mb, "start_time_unix_ns"))
            .filter(|&v| v != 0)
        {
            return st;
        }
    }
    s.info.created_unix_ns
}

/// Display key of a value: `io.NAME`, `md.3.NAME`, `in.3.producer.NAME`.
pub(crate) fn key(s: &Snapshot, b: &BlockSnapshot, name: &str) -> String {
    let sec = &s.sections[b.section];
    if sec.instances == 1 && sec.name == "io" {
        return format!("io.{name}");
    }
    match sec.name.split_once('.') {
        Some((a, rest)) => format!("{a}.{}.{rest}.{name}", b.instance),
        None => format!("{}.{}.{name}", sec.name, b.instance),
    }
}

/// A histogram of a block: name, descriptor of its sum (or first bucket), buckets and sum.
pub(crate) struct Hist<'a> {
    pub name: &'a str,
    pub desc: &'a Descriptor,
    pub buckets: Vec<(u64, u64)>,
    pub sum: u64,
}

impl Hist<'_> {
    /// Values in the histogram. Saturating: the buckets are shared memory a hostile writer may
    /// fill with `u64::MAX`.
    pub(crate) fn count(&self) -> u64 {
        histogram_count(&self.buckets)
    }
}

/// Scalar values (counters and gauges) and histograms of a block, in descriptor order, named as
/// [`Snapshot::counters`] names them.
pub(crate) fn split<'a>(
    s: &'a Snapshot,
    b: &'a BlockSnapshot,
) -> (Vec<Counter<'a>>, Vec<Hist<'a>>) {
    let mut scalars = Vec::new();
    let mut hists: Vec<Hist<'a>> = Vec::new();
    for c in s.counters(b) {
        let (d, v) = (c.desc, c.value);
        match d.kind {
            CounterKind::Counter | CounterKind::Gauge => scalars.push(c),
            CounterKind::Bucket | CounterKind::HistSum => {
                let h = match hists.iter_mut().position(|h| h.name == c.name) {
                    Some(i) => &mut hists[i],
                    None => {
                        hists.push(Hist { name: c.name, desc: d, buckets: Vec::new(), sum: 0 });
                        hists.last_mut().expect("just pushed")
                    }
                };
                if d.kind == CounterKind::Bucket {
                    h.buckets.push((d.bound, v));
                } else {
                    h.sum = v;
                    h.desc = d;
                }
            }
        }
    }
    for h in &mut hists {
        h.buckets.sort_by_key(|b| b.0);
    }
    (scalars, hists)
}

/// `1.2µs`-style duration from ns.
pub(crate) fn fmt_ns(ns: u64) -> String {
    match ns {
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{:.1}µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.1}ms", n as f64 / 1e6),
        n => format!("{:.2}s", n as f64 / 1e9),
    }
}

pub(crate) fn quantiles(h: &Hist<'_>) -> String {
    let q = |p| quantile(&h.buckets, p).map_or("-".to_owned(), fmt_ns);
    format!("p50<={} p99<={} p99.9<={}", q(0.5), q(0.99), q(0.999))
}

fn state_name(v: u64) -> &'static str {
    MdState::from_u64(v).map_or("unknown", MdState::as_str)
}

/// The one-shot table: name, value, per-second rate since the writer started, description.
pub fn table(t: &Target, s: &Snapshot, all: bool) -> String {
    let mut o = String::new();
    let up = s.taken_unix_ns.saturating_sub(s.info.created_unix_ns);
    let _ = writeln!(
        o,
        "shmsrv {} ({})  epoch {}  io_conn pid {} {}  up {}",
        t.name,
        t.location(),
        s.info.epoch,
        s.info.creator_pid,
        if creator_alive(s) { "running" } else { "NOT RUNNING" },
        fmt_ns(up)
    );
    let _ = writeln!(o, "{:<40} {:>16} {:>12}  DESCRIPTION", "NAME", "VALUE", "RATE/S");
    let shown = shown_slots(s, all);
    for b in s.blocks.iter().filter(|b| is_shown(s, b, &shown)) {
        let secs = s.taken_unix_ns.saturating_sub(start_unix_ns(s, b)) as f64 / 1e9;
        let rate = |v: u64| {
            if secs > 0.0 { format!("{:.2}", v as f64 / secs) } else { "-".to_owned() }
        };
        let (scalars, hists) = split(s, b);
        if s.sections[b.section].name == "md" && t.filter.matches(&key(s, b, "group")) {
            let index = t.group_index(b.instance).map_or("-".to_owned(), |k| k.to_string());
            let _ = writeln!(
                o,
                "{:<40} {:>16} {:>12}  {}",
                key(s, b, "group"),
                index,
                "-",
                group_help(t, b.instance)
            );
        }
        for c in scalars.into_iter().filter(|c| t.filter.matches(&key(s, b, c.name))) {
            let (d, v) = (c.desc, c.value);
            let r = if d.kind == CounterKind::Counter { rate(v) } else { "-".to_owned() };
            let mut help = d.help.clone();
            if s.sections[b.section].name == "md" && c.name == "state" {
                help = format!("{} ({})", state_name(v), d.help);
            }
            if c.bad_name {
                help.push_str(" [its name in the segment is unreadable]");
            }
            if !b.consistent {
                help.push_str(" [inconsistent read]");
            }
            let _ = writeln!(o, "{:<40} {:>16} {:>12}  {}", key(s, b, c.name), v, r, help);
        }
        for h in hists.into_iter().filter(|h| t.filter.matches(&key(s, b, h.name))) {
            let c = h.count();
            let _ = writeln!(
                o,
                "{:<40} {:>16} {:>12}  {}; {}",
                key(s, b, h.name),
                c,
                rate(c),
                quantiles(&h),
                h.desc.help
            );
        }
    }
    o
}

/// What the table says about md slot `instance`'s group.
fn group_help(t: &Target, instance: u32) -> String {
    if t.groups.is_empty() {
        return "Service group: none configured, serves every service (from the config)".to_owned();
    }
    match t.group_index(instance) {
        Some(k) => {
            let g = &t.groups[k];
            let bin = g.binary().map_or("the md binary".to_owned(), |b| b.display().to_string());
            format!("Service group md.group[{k}]: {} ({bin}; from the config)", g.label())
        }
        None => "Service group: in no [[md.group]], serves nothing (from the config)".to_owned(),
    }
}

/// The JSON `group` of md slot `instance`: `null` without groups or outside every group, else
/// `{index, services, binary}` (`binary` `""` = the md binary).
fn group_json(t: &Target, instance: u32) -> Value {
    match t.group_index(instance) {
        Some(k) => {
            let g = &t.groups[k];
            j!({ "index": k, "services": g.services, "binary": g.binary.display().to_string() })
        }
        None => Value::Null,
    }
}

/// `{kind, unit, help}` of a counter, for the JSON `counters` map.
fn describe(d: &Descriptor) -> Value {
    let kind = match d.kind {
        CounterKind::Counter => "counter",
        CounterKind::Gauge => "gauge",
        CounterKind::Bucket | CounterKind::HistSum => "histogram",
    };
    j!({ "kind": kind, "unit": d.unit, "help": d.help })
}

/// One JSON document: header fields, then per section the description of every counter shown
/// (`counters`: name → kind, unit, help) and a list of blocks with their values and histograms
/// (count, sum, quantile bounds and the raw buckets).
pub fn json(t: &Target, s: &Snapshot, all: bool) -> Value {
    let shown = shown_slots(s, all);
    let mut sections = Map::new();
    let mut counters = Map::new();
    for (si, sec) in s.sections.iter().enumerate() {
        let mut blocks = Vec::new();
        let mut described = Map::new();
        for b in s.blocks.iter().filter(|b| b.section == si && is_shown(s, b, &shown)) {
            let (mut scalars, mut hists) = split(s, b);
            scalars.retain(|c| t.filter.matches(&key(s, b, c.name)));
            hists.retain(|h| t.filter.matches(&key(s, b, h.name)));
            if !t.filter.is_empty() && scalars.is_empty() && hists.is_empty() {
                continue;
            }
            let mut values = Map::new();
            for c in scalars {
                values.insert(c.name.to_owned(), j!(c.value));
                described.entry(c.name.to_owned()).or_insert_with(|| describe(c.desc));
            }
            let mut hs = Map::new();
            for h in hists {
                described.entry(h.name.to_owned()).or_insert_with(|| describe(h.desc));
                let q = |p| quantile(&h.buckets, p);
                hs.insert(
                    h.name.to_owned(),
                    j!({
                        "unit": h.desc.unit,
                        "count": h.count(),
                        "sum": h.sum,
                        "p50": q(0.5), "p99": q(0.99), "p999": q(0.999),
                        "buckets": h.buckets.iter().filter(|b| b.1 != 0)
                            .map(|b| j!([if b.0 == u64::MAX { j!("+Inf") } else { j!(b.0) }, b.1]))
                            .collect::<Vec<_>>(),
                    }),
                );
            }
            let mut block = Map::new();
            block.insert("instance".into(), j!(b.instance));
            block.insert("consistent".into(), j!(b.consistent));
            if sec.name == "md" {
                block
                    .insert("state_name".into(), j!(state_name(value(s, b, "state").unwrap_or(0))));
                block.insert("group".into(), group_json(t, b.instance));
                block.insert("group_label".into(), j!(t.group_label(b.instance)));
            }
            block.insert("values".into(), Value::Object(values));
            block.insert("histograms".into(), Value::Object(hs));
            blocks.push(Value::Object(block));
        }
        sections.insert(sec.name.clone(), Value::Array(blocks));
        counters.insert(sec.name.clone(), Value::Object(described));
    }
    j!({
        "name": t.name,
        "location": t.location(),
        "epoch": s.info.epoch,
        "created_unix_ns": s.info.created_unix_ns,
        "creator_pid": s.info.creator_pid,
        "creator_start_time": s.info.creator_start_time,
        "creator_running": creator_alive(s),
        "md_slots": s.info.md_slots,
        "groups_configured": !t.groups.is_empty(),
        "layout_version": s.info.layout_version,
        "schema_version": s.info.schema_version,
        "taken_unix_ns": s.taken_unix_ns,
        "counters": Value::Object(counters),
        "sections": Value::Object(sections),
    })
}

/// Metric name stem and labels for a block: `io`, `md{slot}`, `queue_producer{slot,queue}`.
fn prom_stem(s: &Snapshot, b: &BlockSnapshot) -> (String, Vec<(&'static str, String)>) {
    let sec = &s.sections[b.section];
    let slot = ("slot", b.instance.to_string());
    match sec.name.split_once('.') {
        _ if sec.name == "io" && sec.instances == 1 => ("io".into(), vec![]),
        Some((q, side)) => {
            (format!("queue_{}", sanitize(side)), vec![slot, ("queue", q.to_owned())])
        }
        None => (sanitize(&sec.name), vec![slot]),
    }
}

fn sanitize(n: &str) -> String {
    n.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// Name and scale of a value: nanosecond units become seconds.
fn prom_name(stem: &str, d_name: &str, unit: &str) -> (String, f64) {
    let n = sanitize(d_name);
    let (n, scale) = if matches!(unit, "ns" | "unix_ns" | "mono_ns") {
        let base = n
            .strip_suffix("_unix_ns")
            .or_else(|| n.strip_suffix("_ns"))
            .map_or(n.clone(), str::to_owned);
        let base = if unit == "mono_ns" && !base.ends_with("_mono") {
            format!("{base}_mono")
        } else {
            base
        };
        (format!("{base}_seconds"), 1e-9)
    } else {
        (n, 1.0)
    };
    (format!("shmsrv_{stem}_{n}"), scale)
}

fn escape_help(h: &str) -> String {
    h.replace('\\', "\\\\").replace('\n', "\\n")
}

fn labels(l: &[(&str, String)], extra: Option<(&str, String)>) -> String {
    let all: Vec<String> = l
        .iter()
        .cloned()
        .chain(extra)
        .map(|(k, v)| {
            format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
        })
        .collect();
    if all.is_empty() { String::new() } else { format!("{{{}}}", all.join(",")) }
}

/// Exact decimal seconds from integer nanoseconds (no float noise in `le` labels and sums).
fn ns_as_secs(ns: u64) -> String {
    let frac = ns % 1_000_000_000;
    if frac == 0 {
        return (ns / 1_000_000_000).to_string();
    }
    let f = format!("{frac:09}");
    format!("{}.{}", ns / 1_000_000_000, f.trim_end_matches('0'))
}

/// Metric families in first-seen order: `# HELP` / `# TYPE` once each, then their samples.
#[derive(Default)]
struct Families {
    order: Vec<String>,
    fams: HashMap<String, (String, &'static str, Vec<String>)>,
}

impl Families {
    fn add(&mut self, name: &str, help: &str, typ: &'static str, line: String) {
        let f = self.fams.entry(name.to_owned()).or_insert_with(|| {
            self.order.push(name.to_owned());
            (escape_help(help), typ, Vec::new())
        });
        f.2.push(line);
    }

    /// `shmsrv_up`: the one sample every scrape has, with or without a server.
    fn up(&mut self, up: bool) {
        self.add(
            "shmsrv_up",
            "1 if the io_conn that created the stats segment is running (0: no segment, \
             one viewstats may not read, or its creator is gone)",
            "gauge",
            format!("shmsrv_up {}", u8::from(up)),
        );
    }

    fn text(&self, o: &mut String) {
        for name in &self.order {
            let (help, typ, lines) = &self.fams[name];
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {typ}");
            for l in lines {
                let _ = writeln!(o, "{l}");
            }
        }
    }
}

/// The exposition when there is no segment to read (or it cannot be read): a comment saying
/// `why` and `shmsrv_up 0`, so a scraper records the outage instead of a failed scrape.
pub fn prometheus_no_server(why: &str) -> String {
    let mut f = Families::default();
    f.up(false);
    let mut o = format!("# viewstats: {}\n", why.replace(['\n', '\r'], " "));
    f.text(&mut o);
    o
}

/// Prometheus text exposition (version 0.0.4): `# HELP` / `# TYPE` once per family, names
/// prefixed `shmsrv_`, counters suffixed `_total`, nanoseconds as seconds, labels `slot` and
/// `queue`, histograms with cumulative `le` buckets; `shmsrv_up` (1 while io_conn runs),
/// `shmsrv_epoch` (io_conn's epoch: a new value on every restart), `shmsrv_start_time_seconds`,
/// and `shmsrv_md_group_info{slot,group,services}` (1 per shown md slot; `group` is the
/// `[[md.group]]` index, `all` or `-`, from the config; filtered as the key `md.N.group`).
/// `t.filter` selects the segment's counters by display key; the first three always appear.
/// Generic over the descriptor table: a counter added to the schema appears with no change here.
pub fn prometheus(t: &Target, s: &Snapshot, all: bool) -> String {
    let mut fams = Families::default();
    fams.up(creator_alive(s));
    let mut add = |name: &str, help: &str, typ: &'static str, line: String| {
        fams.add(name, help, typ, line);
    };
    let secs = ns_as_secs;
    add(
        "shmsrv_start_time_seconds",
        "Start time of the server (io_conn) since unix epoch in seconds",
        "gauge",
        format!("shmsrv_start_time_seconds {}", secs(s.info.created_unix_ns)),
    );
    add(
        "shmsrv_epoch",
        "Epoch of the running io_conn (a new value on every restart)",
        "gauge",
        format!("shmsrv_epoch {}", s.info.epoch),
    );
    let shown = shown_slots(s, all);
    for b in s.blocks.iter().filter(|b| {
        is_shown(s, b, &shown)
            && s.sections[b.section].name == "md"
            && t.filter.matches(&key(s, b, "group"))
    }) {
        let group = match (t.groups.is_empty(), t.group_index(b.instance)) {
            (true, _) => "all".to_owned(),
            (false, Some(k)) => k.to_string(),
            (false, None) => "-".to_owned(),
        };
        let services = t.group_index(b.instance).map_or(String::new(), |k| t.groups[k].label());
        let lab = [("slot", b.instance.to_string()), ("group", group), ("services", services)];
        add(
            "shmsrv_md_group_info",
            "Service group of an md slot, from the config (group: [[md.group]] index, all or -)",
            "gauge",
            format!("shmsrv_md_group_info{} 1", labels(&lab, None)),
        );
    }
    for b in s.blocks.iter().filter(|b| is_shown(s, b, &shown)) {
        let (stem, lab) = prom_stem(s, b);
        let (mut scalars, mut hists) = split(s, b);
        scalars.retain(|c| t.filter.matches(&key(s, b, c.name)));
        hists.retain(|h| t.filter.matches(&key(s, b, h.name)));
        for c in scalars {
            let (d, v) = (c.desc, c.value);
            // `commands.dumb.ping`: family `commands`, label command="dumb.ping".
            let (family, label) = match c.name.split_once('.') {
                Some((f, k)) => (f, Some(("command", k.to_owned()))),
                None => (c.name, None),
            };
            let (mut name, scale) = prom_name(&stem, family, &d.unit);
            let typ = if d.kind == CounterKind::Counter {
                name.push_str("_total");
                "counter"
            } else {
                "gauge"
            };
            let val = if scale == 1.0 { v.to_string() } else { ns_as_secs(v) };
            let line = format!("{name}{} {val}", labels(&lab, label));
            add(&name, &d.help, typ, line);
        }
        for h in hists {
            let (name, scale) = prom_name(&stem, h.name, &h.desc.unit);
            let scaled = |v: u64| if scale == 1.0 { v.to_string() } else { ns_as_secs(v) };
            let mut cum = 0u64;
            let mut lines = Vec::new();
            for &(bound, c) in &h.buckets {
                // Saturating, as `Hist::count`: the counts are untrusted.
                cum = cum.saturating_add(c);
                let le = if bound == u64::MAX {
                    "+Inf".to_owned()
                } else {
                    // Integer-valued buckets: `bound` is inclusive, so le = bound exactly.
                    scaled(bound)
                };
                lines.push(format!("{name}_bucket{} {cum}", labels(&lab, Some(("le", le)))));
            }
            if h.buckets.last().is_none_or(|b| b.0 != u64::MAX) {
                lines.push(format!(
                    "{name}_bucket{} {cum}",
                    labels(&lab, Some(("le", "+Inf".to_owned())))
                ));
            }
            lines.push(format!("{name}_sum{} {}", labels(&lab, None), scaled(h.sum)));
            lines.push(format!("{name}_count{} {cum}", labels(&lab, None)));
            for l in lines {
                add(&name, &h.desc.help, "histogram", l);
            }
        }
    }
    let mut o = String::new();
    fams.text(&mut o);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 finding 12: hostile bucket values (a writer may store `u64::MAX` anywhere) give
    /// saturated counts and bucket-bound quantiles, never an overflow.
    #[test]
    fn hist_count_and_quantiles_saturate_on_hostile_buckets() {
        let desc = Descriptor {
            name: "wait_ns".into(),
            unit: "ns".into(),
            help: String::new(),
            kind: CounterKind::Bucket,
            word: 1,
            bound: 0,
            name_word: 0,
        };
        let buckets = vec![(255, u64::MAX), (383, u64::MAX), (u64::MAX, u64::MAX)];
        let h = Hist { name: "wait_ns", desc: &desc, buckets, sum: u64::MAX };
        assert_eq!(h.count(), u64::MAX);
        assert_eq!(quantiles(&h), "p50<=255ns p99<=255ns p99.9<=255ns");
        let h = Hist { buckets: vec![(255, 1), (u64::MAX, u64::MAX)], ..h };
        assert_eq!(h.count(), u64::MAX);
        assert_eq!(quantiles(&h), "p50<=256ns p99<=256ns p99.9<=256ns");
    }
}
