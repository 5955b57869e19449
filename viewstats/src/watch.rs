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
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Sparkline};
use shmq::stats::{
    BlockSnapshot, COMMANDS_PREFIX, CounterKind, MdState, Snapshot, StatsError, StatsReader,
};

use crate::Target;
use crate::render::{creator_alive, fmt_ns, key, quantiles, split, value};

/// Name of the per-slot gauge shown as `INFLIGHT`: requests dispatched to the md and not yet
/// answered.
pub const IN_FLIGHT_COUNTER: &str = "requests_in_flight";
/// Name of the per-slot counter whose rate is shown as `DISP/S`: requests dispatched to the md.
pub const DISPATCHED_COUNTER: &str = "requests_dispatched";

/// Rate samples kept for the sparklines (one per refresh; wider than any terminal needs).
const HISTORY: usize = 512;

/// The section names, in key order (`1`..`4`).
const SECTIONS: [&str; 4] = ["io", "md", "commands", "queues"];

/// One refresh's rates for the sparklines.
#[derive(Debug, Clone, Copy)]
struct Sample {
    req_in: f64,
    errors: f64,
}

/// One section of the view: a header row and its rows, independent of the terminal size.
#[derive(Debug, Default)]
struct Section {
    header: String,
    rows: Vec<String>,
    /// Rows are `name value rate` cells that may be laid out in columns on a wide terminal.
    cells: bool,
}

/// One screen's content, independent of the terminal size.
#[derive(Debug, Default)]
struct Model {
    /// The server line, in parts (joined by two spaces; wrapped between parts if narrow).
    title: Vec<String>,
    note: String,
    /// Summary lines, each in parts (joined by three spaces; wrapped between parts).
    summary: Vec<Vec<String>>,
    /// One entry per live md (`md1 running 12.0/s busy 3.1%`).
    load: Vec<String>,
    /// In [`SECTIONS`] order.
    sections: Vec<Section>,
    req_in: Option<f64>,
    errors: Option<f64>,
}

impl Model {
    /// Everything, one column, as plain text ([`Watch::frame`]).
    fn text(&self) -> String {
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
    fn body(&self, view: usize, width: usize) -> Vec<Line<'static>> {
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

fn width_of(s: &str) -> usize {
    s.chars().count()
}

/// `parts` joined by `sep` into lines of at most `width` columns, broken between parts only
/// (a part wider than the line gets a line of its own, cut at the edge); lines after the first
/// start with `indent`.
fn wrap(parts: &[String], sep: &str, indent: &str, width: usize) -> Vec<String> {
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
fn cell_width(header: &str, rows: &[String]) -> usize {
    rows.iter().map(|r| width_of(r)).chain([width_of(header)]).max().unwrap_or(0).max(1)
}

/// How many cells `w` wide fit in `width` (2 spaces apart), at most one per row; 1 for `width` 0.
fn columns_for(rows: usize, w: usize, width: usize) -> usize {
    ((width + 2) / (w + 2)).clamp(1, rows.max(1))
}

/// `rows` as cells `w` wide in `n` columns, filled top to bottom then left to right.
fn columns(rows: &[String], w: usize, n: usize) -> Vec<String> {
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

/// What the keys have chosen: the section shown, the scroll position.
#[derive(Debug, Default)]
struct Ui {
    /// 0 = all sections, k = [`SECTIONS`]`[k - 1]`.
    view: usize,
    scroll: usize,
    hscroll: usize,
    /// Body height and line count at the last draw (for paging and clamping).
    page: usize,
    lines: usize,
}

impl Ui {
    /// Applies a key; `false` means quit.
    fn key(&mut self, k: KeyEvent) -> bool {
        let page = self.page.saturating_sub(1).max(1);
        match k.code {
            // Not Esc: a key's escape sequence split by a slow pty would read as Esc and quit.
            KeyCode::Char('q') => return false,
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return false,
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll += 1,
            KeyCode::PageUp | KeyCode::Char('b') => self.scroll = self.scroll.saturating_sub(page),
            KeyCode::PageDown | KeyCode::Char(' ') => self.scroll += page,
            KeyCode::Home | KeyCode::Char('g') => self.scroll = 0,
            KeyCode::End | KeyCode::Char('G') => self.scroll = usize::MAX,
            KeyCode::Left | KeyCode::Char('h') => self.hscroll = self.hscroll.saturating_sub(8),
            KeyCode::Right | KeyCode::Char('l') => self.hscroll += 8,
            KeyCode::Tab => self.switch((self.view + 1) % (SECTIONS.len() + 1)),
            KeyCode::BackTab => self.switch((self.view + SECTIONS.len()) % (SECTIONS.len() + 1)),
            KeyCode::Char(c @ '0'..='4') => self.switch(usize::from(c as u8 - b'0')),
            _ => {}
        }
        self.clamp();
        true
    }

    fn switch(&mut self, view: usize) {
        self.view = view;
        self.scroll = 0;
        self.hscroll = 0;
    }

    fn clamp(&mut self) {
        self.scroll = self.scroll.min(self.lines.saturating_sub(self.page));
        self.hscroll = self.hscroll.min(400);
    }
}

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

    fn run_terminal(&mut self, count: u64) -> anyhow::Result<i32> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            set.add(s);
        }
        rt::signals::block(&set).context("blocking SIGTERM, SIGINT and SIGHUP")?;
        let sfd = rt::signals::signalfd(&set).context("signalfd")?;
        let mut term = ratatui::try_init().context("setting up the terminal")?;
        let r = self.terminal_loop(&mut term, &sfd, count);
        let restored = ratatui::try_restore().context("restoring the terminal");
        let code = r?;
        restored?;
        Ok(code)
    }

    fn terminal_loop(
        &mut self,
        term: &mut ratatui::DefaultTerminal,
        sfd: &nix::sys::signalfd::SignalFd,
        count: u64,
    ) -> anyhow::Result<i32> {
        let mut ui = Ui::default();
        let mut model = self.take();
        let mut screens = 1u64;
        let mut next = Instant::now() + self.t.interval;
        loop {
            term.draw(|f| self.draw(f, &model, &mut ui))?;
            if count != 0 && screens >= count {
                return Ok(0);
            }
            if sfd.read_signal().ok().flatten().is_some() {
                return Ok(0);
            }
            let now = Instant::now();
            if now >= next {
                model = self.take();
                screens += 1;
                next = now + self.t.interval;
                continue;
            }
            // Wake at least every 200 ms to look at the signalfd.
            if event::poll((next - now).min(Duration::from_millis(200)))? {
                match event::read()? {
                    Event::Key(k) if k.kind != KeyEventKind::Release && !ui.key(k) => {
                        return Ok(0);
                    }
                    // Resize and the rest: redraw.
                    _ => {}
                }
            }
        }
    }

    fn draw(&self, f: &mut ratatui::Frame<'_>, m: &Model, ui: &mut Ui) {
        let area = f.area();
        let width = usize::from(area.width);
        let bold = Style::default().add_modifier(Modifier::BOLD);
        let mut top: Vec<Line<'_>> =
            wrap(&m.title, "  ", "  ", width).into_iter().map(|l| Line::styled(l, bold)).collect();
        if !m.note.is_empty() {
            top.push(Line::styled(
                format!("** {} **", m.note),
                Style::default().add_modifier(Modifier::REVERSED),
            ));
        }
        for parts in &m.summary {
            top.extend(wrap(parts, "   ", "  ", width).into_iter().map(Line::raw));
        }
        // Load entries, as many per line as fit.
        if !m.load.is_empty() {
            let mut parts = vec!["load".to_owned()];
            parts.extend(m.load.iter().cloned());
            top.extend(wrap(&parts, "   ", "     ", width).into_iter().map(Line::raw));
        }
        let spark_rows = if area.height >= 14 { 2 } else { 0 };
        let [top_a, spark_a, tabs_a, body_a] = Layout::vertical([
            Constraint::Length(u16::try_from(top.len()).unwrap_or(u16::MAX).min(area.height / 2)),
            Constraint::Length(spark_rows),
            Constraint::Length(1),
            Constraint::Min(0),
        ])
        .areas(area);
        f.render_widget(Paragraph::new(top), top_a);
        if spark_rows > 0 {
            let rows = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]);
            let [a, b] = rows.areas(spark_a);
            self.sparkline(f, a, "req/s in", m.req_in, |s| s.req_in);
            self.sparkline(f, b, "errors/s", m.errors, |s| s.errors);
        }
        let body = m.body(ui.view, width);
        ui.page = usize::from(body_a.height);
        ui.lines = body.len();
        ui.clamp();
        let mut tabs = vec![Span::raw(" ")];
        for (i, name) in std::iter::once("all").chain(SECTIONS).enumerate() {
            let style = if i == ui.view {
                Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
            } else {
                Style::default().add_modifier(Modifier::UNDERLINED)
            };
            tabs.push(Span::styled(format!("{i} {name}"), style));
            tabs.push(Span::raw(" "));
        }
        let last = (ui.scroll + ui.page).min(ui.lines);
        tabs.push(Span::raw(format!(
            " lines {}-{last} of {}  ↑↓ PgUp/PgDn ←→ scroll, Tab/0-4 section, q quit",
            (ui.scroll + 1).min(last),
            ui.lines
        )));
        f.render_widget(Paragraph::new(Line::from(tabs)), tabs_a);
        let scroll = (
            u16::try_from(ui.scroll).unwrap_or(u16::MAX),
            u16::try_from(ui.hscroll).unwrap_or(u16::MAX),
        );
        f.render_widget(Paragraph::new(body).scroll(scroll), body_a);
    }

    /// One sparkline row: a label with the current value, then the history, newest right.
    fn sparkline(
        &self,
        f: &mut ratatui::Frame<'_>,
        area: Rect,
        label: &str,
        now: Option<f64>,
        pick: impl Fn(&Sample) -> f64,
    ) {
        let [l, r] = Layout::horizontal([Constraint::Length(22), Constraint::Min(0)]).areas(area);
        let cur = now.map_or("-".to_owned(), |v| format!("{v:.1}"));
        f.render_widget(Paragraph::new(format!("{label:<9} {cur:>11} ")), l);
        let n = usize::from(r.width).min(self.history.len());
        // Rounded up so any activity shows as at least the lowest bar.
        let data: Vec<u64> = self
            .history
            .iter()
            .skip(self.history.len() - n)
            .map(|s| pick(s).ceil() as u64)
            .collect();
        f.render_widget(Sparkline::default().data(&data), r);
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

    fn model(&self, s: &Snapshot, now: Instant) -> Model {
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
    use ratatui::crossterm::event::KeyEventState;

    use super::*;

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
