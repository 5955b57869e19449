//! What one refresh shows: the model built from a snapshot, and its plain-text layout.

use std::time::Instant;

use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use shmq::stats::{BlockSnapshot, COMMANDS_PREFIX, CounterKind, MdState, Snapshot};

use super::*;
use crate::render::{creator_alive, fmt_ns, key, quantiles, split, value};

/// One refresh's rates for the sparklines.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) req_in: f64,
    pub(super) errors: f64,
}

/// One section of the view: a header row and its rows, independent of the terminal size.
#[derive(Debug, Default)]
pub(super) struct Section {
    pub(super) header: String,
    pub(super) rows: Vec<String>,
    /// Rows are `name value rate` cells that may be laid out in columns on a wide terminal.
    pub(super) cells: bool,
}

/// One screen's content, independent of the terminal size.
#[derive(Debug, Default)]
pub(super) struct Model {
    /// The server line, in parts (joined by two spaces; wrapped between parts if narrow).
    pub(super) title: Vec<String>,
    pub(super) note: String,
    /// Summary lines, each in parts (joined by three spaces; wrapped between parts).
    pub(super) summary: Vec<Vec<String>>,
    /// One entry per live md (`md1 running 12.0/s busy 3.1%`).
    pub(super) load: Vec<String>,
    /// In [`SECTIONS`] order.
    pub(super) sections: Vec<Section>,
    pub(super) req_in: Option<f64>,
    pub(super) errors: Option<f64>,
}

impl Model {
    /// Everything, one column, as plain text ([`Watch::frame`]).
    pub(super) fn text(&self) -> String {
        let mut o = String::new();
        let mut line = |l: &str| {
            o.push_str(l.trim_end());
            o.push('\n');
        };
        line(&self.title.join("  "));
        if !self.note.is_empty() {
            line(&format!("** {} **", self.note));
        }
        for l in &self.summary {
            line(&l.join("   "));
        }
        if !self.load.is_empty() {
            line(&format!("load   {}", self.load.join("   ")));
        }
        for sec in &self.sections {
            line("");
            line(&sec.header);
            for r in &sec.rows {
                line(r);
            }
        }
        o
    }

    /// The scrollable body for `view` (0 = all sections, k = section k) at `width` columns:
    /// a header line per section, then its rows.
    pub(super) fn body(&self, view: usize, width: usize) -> Vec<Line<'static>> {
        let bold = Style::default().add_modifier(Modifier::BOLD);
        let mut out = Vec::new();
        for (i, sec) in self.sections.iter().enumerate() {
            if view != 0 && view != i + 1 {
                continue;
            }
            if !out.is_empty() {
                out.push(Line::default());
            }
            let (header, rows) = if sec.cells {
                let w = cell_width(&sec.header, &sec.rows);
                let n = columns_for(sec.rows.len(), w, width);
                (columns(&vec![sec.header.clone(); n], w, n).concat(), columns(&sec.rows, w, n))
            } else {
                (sec.header.clone(), sec.rows.clone())
            };
            out.push(Line::styled(header, bold));
            if rows.is_empty() {
                out.push(Line::raw("  (nothing to show)"));
            }
            out.extend(rows.into_iter().map(Line::raw));
        }
        out
    }
}

pub(super) fn width_of(s: &str) -> usize {
    s.chars().count()
}

/// `parts` joined by `sep` into lines of at most `width` columns, broken between parts only
/// (a part wider than the line gets a line of its own, cut at the edge); lines after the first
/// start with `indent`.
pub(super) fn wrap(parts: &[String], sep: &str, indent: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    for p in parts {
        if !line.is_empty() && width_of(&line) + width_of(sep) + width_of(p) > width {
            out.push(std::mem::replace(&mut line, indent.to_owned()));
        } else if !line.is_empty() {
            line.push_str(sep);
        }
        line.push_str(p);
    }
    if !line.is_empty() {
        out.push(line);
    }
    out
}

/// Cell width of a cell section: its widest row or its header.
pub(super) fn cell_width(header: &str, rows: &[String]) -> usize {
    rows.iter().map(|r| width_of(r)).chain([width_of(header)]).max().unwrap_or(0).max(1)
}

/// How many cells `w` wide fit in `width` (2 spaces apart), at most one per row; 1 for `width` 0.
pub(super) fn columns_for(rows: usize, w: usize, width: usize) -> usize {
    ((width + 2) / (w + 2)).clamp(1, rows.max(1))
}

/// `rows` as cells `w` wide in `n` columns, filled top to bottom then left to right.
pub(super) fn columns(rows: &[String], w: usize, n: usize) -> Vec<String> {
    let per = rows.len().div_ceil(n.max(1));
    (0..per)
        .map(|r| {
            let mut line = String::new();
            for c in 0..n {
                if let Some(cell) = rows.get(c * per + r) {
                    if c > 0 {
                        line.push_str("  ");
                    }
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', w.saturating_sub(width_of(cell))));
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

impl Watch {
    pub(super) fn model(&self, s: &Snapshot, now: Instant) -> Model {
        let fmt_rate = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.1}"));
        let up = s.taken_unix_ns.saturating_sub(s.info.created_unix_ns);
        let mut m = Model {
            title: vec![
                format!("shmsrv {} ({})", self.t.name, self.t.location()),
                format!("epoch {}", s.info.epoch),
                format!(
                    "io_conn pid {} {}",
                    s.info.creator_pid,
                    if creator_alive(s) { "running" } else { "NOT RUNNING" }
                ),
                format!("up {}", fmt_ns(up)),
                format!("every {:.1}s", self.t.interval.as_secs_f64()),
            ],
            note: self.note.clone(),
            ..Model::default()
        };
        let states: Vec<Option<MdState>> = (0..s.info.md_slots)
            .map(|i| s.get("md", i, "state").and_then(MdState::from_u64))
            .collect();
        let state = |i: u32| states.get(i as usize).copied().flatten();
        let live = |i: u32| {
            matches!(state(i), Some(MdState::Starting | MdState::Running | MdState::Stopping))
        };
        // md rows: every slot ever used (state not absent), or every slot with --all.
        let used = |i: u32| self.all || !matches!(state(i), Some(MdState::Absent));

        // Summary.
        let io = s.blocks.iter().find(|b| s.sections[b.section].name == "io");
        let io_val = |n: &str| io.and_then(|b| value(s, b, n)).unwrap_or(0);
        let io_rate = |n: &str| io.and_then(|b| self.rate_of(s, b, n, now));
        let md_blocks: Vec<&BlockSnapshot> =
            s.blocks.iter().filter(|b| s.sections[b.section].name == "md").collect();
        let mut errors = io_val("framing_errors");
        let mut err_rate = io_rate("framing_errors");
        for b in &md_blocks {
            errors = errors.saturating_add(value(s, b, "errors").unwrap_or(0));
            if live(b.instance) {
                err_rate = match (err_rate, self.rate_of(s, b, "errors", now)) {
                    (Some(a), Some(r)) => Some(a + r),
                    (a, r) => a.or(r),
                };
            }
        }
        let (req_in, req_out) = (io_rate("messages_in"), io_rate("messages_out"));
        m.req_in = req_in;
        m.errors = err_rate;
        m.summary.push(vec![
            format!(
                "connections {} open, {} accepted ({}/s)",
                io_val("connections_current"),
                io_val("connections_accepted"),
                fmt_rate(io_rate("connections_accepted")),
            ),
            format!("requests/s in {} out {}", fmt_rate(req_in), fmt_rate(req_out)),
            format!("errors {errors} ({}/s)", fmt_rate(err_rate)),
        ]);
        let n_live = (0..s.info.md_slots).filter(|&i| live(i)).count();
        let gone = (0..s.info.md_slots)
            .filter(|&i| matches!(state(i), Some(MdState::Exited | MdState::Dead)))
            .count();
        m.summary.push(vec![
            format!(
                "instances {n_live} live md, {gone} exited or dead, of {} slots",
                s.info.md_slots
            ),
            format!(
                "bytes/s in {} out {}",
                fmt_rate(io_rate("bytes_in")),
                fmt_rate(io_rate("bytes_out"))
            ),
        ]);
        for b in md_blocks.iter().filter(|b| live(b.instance)) {
            let st = state(b.instance).map_or("?", MdState::as_str);
            let rin = self.rate_of(s, b, "messages_in", now);
            let busy = self.rate_of(s, b, "busy_ns", now).map(|ns| ns / 1e9 * 100.0);
            let mut e = format!(
                "md{} {st} {}/s busy {}%",
                b.instance,
                fmt_rate(rin),
                busy.map_or("-".to_owned(), |x| format!("{x:.0}"))
            );
            if let Some((v, _)) = self.slot_counter(s, b.instance, IN_FLIGHT_COUNTER, now) {
                e.push_str(&format!(" {v} in flight"));
            }
            m.load.push(e);
        }

        // 1: io_conn's counters.
        let mut sec = Section {
            header: format!("{:<36} {:>14} {:>12}", "io_conn", "VALUE", "/s"),
            cells: true,
            ..Section::default()
        };
        for b in s.blocks.iter().filter(|b| s.sections[b.section].name == "io") {
            for c in split(s, b).0 {
                let d = c.desc;
                if d.unit == "mono_ns" || !self.t.filter.matches(&key(s, b, c.name)) {
                    continue;
                }
                let r = if d.kind == CounterKind::Counter {
                    fmt_rate(self.rate(s, b, d.word, now))
                } else {
                    String::new()
                };
                sec.rows.push(format!("  {:<34} {:>14} {:>12}", c.name, c.value, r));
            }
        }
        m.sections.push(sec);

        // 2: md slots, one row each, and a total.
        let mut sec = Section {
            header: format!(
                "{:<6} {:<9} {:>8} {:>12} {:>9} {:>12} {:>9} {:>8} {:>6} {:>8} {:>8}  GROUP",
                "md",
                "STATE",
                "PID",
                "MSGS_IN",
                "IN/S",
                "MSGS_OUT",
                "OUT/S",
                "ERRORS",
                "BUSY%",
                "INFLIGHT",
                "DISP/S"
            ),
            ..Section::default()
        };
        let mut tot = [0u64; 3];
        let mut tot_rate = [0f64; 3];
        for b in &md_blocks {
            if !used(b.instance) || !self.block_matches(s, b) {
                continue;
            }
            let g = |n| value(s, b, n).unwrap_or(0);
            let (mi, mo, er) = (g("messages_in"), g("messages_out"), g("errors"));
            let (ri, ro) =
                (self.rate_of(s, b, "messages_in", now), self.rate_of(s, b, "messages_out", now));
            let busy = self.rate_of(s, b, "busy_ns", now).map(|ns| ns / 1e9 * 100.0);
            tot = [tot[0] + mi, tot[1] + mo, tot[2] + er];
            tot_rate = [
                tot_rate[0] + ri.unwrap_or(0.0),
                tot_rate[1] + ro.unwrap_or(0.0),
                tot_rate[2] + busy.unwrap_or(0.0),
            ];
            let st = MdState::from_u64(g("state")).map_or("?", MdState::as_str);
            let in_flight = self.slot_counter(s, b.instance, IN_FLIGHT_COUNTER, now);
            let dispatched = self.slot_counter(s, b.instance, DISPATCHED_COUNTER, now);
            sec.rows.push(format!(
                "{:<6} {:<9} {:>8} {:>12} {:>9} {:>12} {:>9} {:>8} {:>6} {:>8} {:>8}  {}{}",
                b.instance,
                st,
                g("pid"),
                mi,
                fmt_rate(ri),
                mo,
                fmt_rate(ro),
                er,
                busy.map_or("-".to_owned(), |x| format!("{x:.1}")),
                in_flight.map_or("-".to_owned(), |v| v.0.to_string()),
                fmt_rate(dispatched.and_then(|v| v.1)),
                self.t.group_label(b.instance),
                if b.consistent { "" } else { " (inconsistent)" }
            ));
        }
        sec.rows.push(format!(
            "{:<6} {:<9} {:>8} {:>12} {:>9.1} {:>12} {:>9.1} {:>8} {:>6.1}",
            "total", "", "", tot[0], tot_rate[0], tot[1], tot_rate[1], tot[2], tot_rate[2]
        ));
        m.sections.push(sec);

        // 3: requests by command, per md slot, under the names the md registered.
        let mut sec = Section {
            header: format!("{:<36} {:>14} {:>12}", "commands", "VALUE", "/s"),
            cells: true,
            ..Section::default()
        };
        for b in md_blocks.iter().filter(|b| used(b.instance)) {
            for c in s.counters(b).filter(|c| c.name.starts_with(COMMANDS_PREFIX)) {
                let k = key(s, b, c.name);
                if !self.t.filter.matches(&k) {
                    continue;
                }
                let r = fmt_rate(self.rate(s, b, c.desc.word, now));
                let bad = if c.bad_name { " (unreadable name)" } else { "" };
                sec.rows.push(format!("  {k:<34} {:>14} {r:>12}{bad}", c.value));
            }
        }
        m.sections.push(sec);

        // 4: queue halves of the live md.
        let mut sec = Section {
            header: format!(
                "{:<22} {:>12} {:>10} {:>10} {:>10} {:>8}  WAIT",
                "queue", "FRAMES", "FRAMES/S", "DEPTH", "MAX_DEPTH", "FULL"
            ),
            ..Section::default()
        };
        for b in s.blocks.iter().filter(|b| {
            let n = &s.sections[b.section].name;
            (n.ends_with(".producer") || n.ends_with(".consumer"))
                && (self.all || live(b.instance))
                && self.block_matches(s, b)
        }) {
            let g = |n| value(s, b, n).map_or("".to_owned(), |v| v.to_string());
            let hist = split(s, b).1;
            let wait = hist.first().map_or(String::new(), |h| {
                if h.count() == 0 { String::new() } else { quantiles(h) }
            });
            let k = key(s, b, "");
            sec.rows.push(format!(
                "{:<22} {:>12} {:>10} {:>10} {:>10} {:>8}  {}",
                k.trim_end_matches('.'),
                g("frames"),
                fmt_rate(self.rate_of(s, b, "frames", now)),
                g("depth_bytes"),
                g("max_depth_bytes"),
                g("full_events"),
                wait
            ));
        }
        m.sections.push(sec);
        m
    }
}
