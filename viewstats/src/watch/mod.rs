//! `--watch`: the live view, fitted to the terminal and redrawn every interval.
//!
//! On a terminal it is a full-screen view drawn with ratatui (over crossterm: raw mode, the
//! alternate screen, a diffing redraw; the terminal is restored on exit and on panic):
//!
//! - **Summary**, always at the top: the server line (name, segment, epoch, io_conn pid, up
//!   time), connections open and accepted, requests per second in and out (io_conn's DATA
//!   frames to and from md), errors (md's requests answered with an error plus io_conn's
//!   framing errors) and their rate, how many md are live, one load entry per live md (state,
//!   requests per second, busy %, requests in flight), and two sparklines: the history of
//!   requests/s in and errors/s, one sample per refresh.
//! - **Sections** below, scrolled and switched by keys like varnishstat: `1` io_conn's counters
//!   (in as many columns as the width holds), `2` the md table (one row per md slot that was
//!   ever used, and a total), `3` requests by command, `4` queue halves of the live md only;
//!   `0` all of them one after another. Up/Down (`k`/`j`) scroll a line, PgUp/PgDn (space) a
//!   page, Home/End (`g`/`G`) to the ends, Left/Right (`h`/`l`) sideways for wide rows, Tab and
//!   Shift-Tab cycle the sections, `q` or Ctrl-C quits; SIGTERM, SIGINT and SIGHUP too.
//!
//! `--all` shows every md slot, also never-used ones and their queues; `-f GLOB` keeps the
//! counter rows whose key matches, and md and queue rows with at least one matching counter (the
//! summary is not filtered). Not on a terminal, each refresh prints the same content as plain
//! text ([`Watch::frame`]), one screen after another.
//!
//! Each refresh re-attaches by name, so a restarted io_conn (a new segment, a new epoch) is seen;
//! rate baselines are dropped then, and per slot when the md in it changes (pid or start time),
//! and a counter that went down is shown as a reset, never as a negative rate.
//!
//! Each md row ends with the slot's service group (from the config, see [`Target::groups`]) and
//! per-request dispatch load: `INFLIGHT` shows a gauge named [`IN_FLIGHT_COUNTER`] and `DISP/S`
//! the rate of a counter named [`DISPATCHED_COUNTER`], read from whichever per-slot block of the
//! segment has them (io_conn's `in.N.producer`), and `-` while the segment has no such counter.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use shmq::stats::{BlockSnapshot, Snapshot, StatsError, StatsReader};

use crate::Target;
use crate::render::{key, value};

/// Name of the per-slot gauge shown as `INFLIGHT`: requests dispatched to the md and not yet
/// answered.
pub const IN_FLIGHT_COUNTER: &str = "requests_in_flight";
/// Name of the per-slot counter whose rate is shown as `DISP/S`: requests dispatched to the md.
pub const DISPATCHED_COUNTER: &str = "requests_dispatched";

/// Rate samples kept for the sparklines (one per refresh; wider than any terminal needs).
const HISTORY: usize = 512;

/// The section names, in key order (`1`..`4`).
const SECTIONS: [&str; 4] = ["io", "md", "commands", "queues"];
mod model;
mod terminal;

use model::{Model, Sample};

/// The live view's state: the reader, the previous snapshot (the rate baseline) and the rate
/// history.
#[derive(Debug)]
pub struct Watch {
    t: Target,
    reader: StatsReader,
    all: bool,
    prev: Option<(Snapshot, Instant)>,
    note: String,
    history: VecDeque<Sample>,
}

impl Watch {
    /// A view over `reader`; `all` also shows md slots that were never used.
    pub fn new(t: Target, reader: StatsReader, all: bool) -> Self {
        Self { t, reader, all, prev: None, note: String::new(), history: VecDeque::new() }
    }

    /// Redraws every interval; `count` screens (0 = until a quit key or a signal). On a terminal
    /// the full-screen view (`out` is not used: it draws on the terminal), else plain text
    /// frames to `out`.
    pub fn run(&mut self, out: &mut dyn Write, count: u64) -> anyhow::Result<i32> {
        if std::io::stdout().is_terminal() {
            return self.run_terminal(count);
        }
        let mut n = 0u64;
        loop {
            let screen = self.frame();
            out.write_all(screen.as_bytes())?;
            out.write_all(b"\n")?;
            out.flush()?;
            n += 1;
            if count != 0 && n >= count {
                return Ok(0);
            }
            std::thread::sleep(self.t.interval);
        }
    }

    /// Takes one snapshot and renders everything as plain text, in one column: the same content
    /// as the terminal view, with every section expanded.
    pub fn frame(&mut self) -> String {
        self.take().text()
    }

    /// Re-attaches if the server restarted, takes a snapshot, builds the model, records the
    /// rates in the history and makes the snapshot the next baseline.
    fn take(&mut self) -> Model {
        match StatsReader::attach(self.t.backend, &self.t.name) {
            Ok(r) => {
                let (old, new) = (self.reader.info(), r.info());
                if (old.epoch, old.created_unix_ns) != (new.epoch, new.created_unix_ns) {
                    self.note = format!(
                        "server restarted (epoch {} -> {}): rates reset",
                        old.epoch, new.epoch
                    );
                    self.prev = None;
                    self.reader = r;
                } else if self.note.starts_with("segment gone") {
                    self.note.clear();
                }
            }
            Err(StatsError::NotFound { .. }) => {
                self.note = "segment gone (server stopped?): showing its last values".to_owned();
            }
            Err(e) => self.note = format!("re-attach failed: {e}"),
        }
        let snap = self.reader.snapshot();
        let now = Instant::now();
        let m = self.model(&snap, now);
        if let (Some(req_in), Some(errors)) = (m.req_in, m.errors) {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(Sample { req_in, errors });
        }
        self.prev = Some((snap, now));
        m
    }

    /// Change per second of word `word` of `b`, against the previous snapshot; `None` when there
    /// is no comparable baseline (first screen, restart, a new md in the slot, a counter reset).
    fn rate(&self, s: &Snapshot, b: &BlockSnapshot, word: usize, now: Instant) -> Option<f64> {
        let (p, at) = self.prev.as_ref()?;
        if p.info.epoch != s.info.epoch {
            return None;
        }
        let pb = p.blocks.iter().find(|x| x.section == b.section && x.instance == b.instance)?;
        if s.sections[b.section].name != "io" && !same_md(p, s, b.instance) {
            return None;
        }
        let (a, c) = (pb.values.get(word - 1)?, b.values.get(word - 1)?);
        let dt = now.duration_since(*at).as_secs_f64();
        (c >= a && dt > 0.0).then(|| (c - a) as f64 / dt)
    }

    fn rate_of(&self, s: &Snapshot, b: &BlockSnapshot, name: &str, now: Instant) -> Option<f64> {
        let d = s.sections[b.section].descriptors.iter().find(|d| d.name == name)?;
        self.rate(s, b, d.word, now)
    }

    /// Value and rate of counter `name` of md slot `instance`, from the first per-slot block
    /// (the `md` section first) that has it; `None` if the segment has no such counter.
    fn slot_counter(
        &self,
        s: &Snapshot,
        instance: u32,
        name: &str,
        now: Instant,
    ) -> Option<(u64, Option<f64>)> {
        let mut blocks: Vec<&BlockSnapshot> = s
            .blocks
            .iter()
            .filter(|b| b.instance == instance && s.sections[b.section].name != "io")
            .collect();
        blocks.sort_by_key(|b| s.sections[b.section].name != "md");
        blocks.into_iter().find_map(|b| {
            let c = s.counters(b).find(|c| c.name == name)?;
            Some((c.value, self.rate(s, b, c.desc.word, now)))
        })
    }

    /// Whether some counter of `b` passes `-f` (md and queue rows stand for their block).
    fn block_matches(&self, s: &Snapshot, b: &BlockSnapshot) -> bool {
        let f = &self.t.filter;
        f.is_empty()
            || s.counters(b).any(|c| f.matches(&key(s, b, c.name)))
            || (s.sections[b.section].name == "md" && f.matches(&key(s, b, "group")))
    }
}

/// Whether slot `slot` holds the same md in both snapshots (pid and start time).
fn same_md(p: &Snapshot, s: &Snapshot, slot: u32) -> bool {
    let id = |x: &Snapshot| {
        let b =
            x.blocks.iter().find(|b| x.sections[b.section].name == "md" && b.instance == slot)?;
        Some((value(x, b, "pid")?, value(x, b, "proc_start_ticks")?))
    };
    id(p) == id(s)
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyEventState, KeyModifiers};

    use super::model::*;
    use super::terminal::*;

    fn rows(n: usize, w: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:<w$}")).collect()
    }

    #[test]
    fn wrap_breaks_between_parts() {
        let p: Vec<String> = ["aaaa", "bb", "cccccc"].map(String::from).into();
        assert_eq!(wrap(&p, "  ", " ", 100), ["aaaa  bb  cccccc"]);
        assert_eq!(wrap(&p, "  ", " ", 8), ["aaaa  bb", " cccccc"]);
        assert_eq!(wrap(&p, "  ", " ", 3), ["aaaa", " bb", " cccccc"], "overlong parts alone");
        assert!(wrap(&[], "  ", " ", 10).is_empty());
    }

    #[test]
    fn cells_fill_columns_top_to_bottom() {
        let r = rows(5, 4);
        assert_eq!(cell_width("h", &r), 4);
        assert_eq!(cell_width("header", &r), 6);
        assert_eq!(columns_for(5, 4, 0), 1);
        assert_eq!(columns_for(5, 4, 9), 1, "two cells need 4 + 2 + 4 = 10");
        assert_eq!(columns_for(5, 4, 10), 2);
        assert_eq!(columns_for(5, 4, 1000), 5, "never more columns than cells");
        assert_eq!(columns(&r, 4, 2), ["0     3", "1     4", "2"]);
        assert_eq!(columns(&r, 4, 1).len(), 5);
    }

    fn press(ui: &mut Ui, code: KeyCode) -> bool {
        ui.key(KeyEvent {
            code,
            modifiers: KeyModifiers::NONE,
            kind: KeyEventKind::Press,
            state: KeyEventState::NONE,
        })
    }

    #[test]
    fn keys_scroll_within_bounds_and_switch_sections() {
        let mut ui = Ui { page: 10, lines: 35, ..Ui::default() };
        press(&mut ui, KeyCode::Down);
        assert_eq!(ui.scroll, 1);
        press(&mut ui, KeyCode::PageDown);
        assert_eq!(ui.scroll, 10);
        press(&mut ui, KeyCode::End);
        assert_eq!(ui.scroll, 25, "the last page is full");
        press(&mut ui, KeyCode::PageDown);
        assert_eq!(ui.scroll, 25);
        press(&mut ui, KeyCode::Home);
        assert_eq!(ui.scroll, 0);
        press(&mut ui, KeyCode::Up);
        assert_eq!(ui.scroll, 0);
        press(&mut ui, KeyCode::Char('3'));
        assert_eq!(ui.view, 3);
        press(&mut ui, KeyCode::Tab);
        assert_eq!(ui.view, 4);
        press(&mut ui, KeyCode::Tab);
        assert_eq!(ui.view, 0, "Tab wraps to all");
        press(&mut ui, KeyCode::BackTab);
        assert_eq!(ui.view, 4);
        assert!(press(&mut ui, KeyCode::Char('x')), "unknown keys do nothing");
        assert!(!press(&mut ui, KeyCode::Char('q')));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert!(!ui.key(ctrl_c));
    }

    #[test]
    fn body_shows_one_section_or_all() {
        let sec = |h: &str, n| Section { header: h.into(), rows: rows(n, 3), cells: true };
        let m = Model {
            sections: vec![sec("io", 4), sec("md", 1), sec("commands", 0), sec("queues", 2)],
            ..Model::default()
        };
        let text = |v, w| m.body(v, w).iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n");
        assert_eq!(text(4, 80), "queues  queues\n0       1");
        assert_eq!(text(3, 80), "commands\n  (nothing to show)");
        assert_eq!(text(1, 0), "io\n0\n1\n2\n3");
        let all = text(0, 0);
        assert!(all.starts_with("io\n0\n1\n2\n3\n\nmd\n0\n\ncommands"), "{all}");
    }
}
