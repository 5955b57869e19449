//! The full-screen terminal view: keys, scrolling and drawing with ratatui.

use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Sparkline};

use super::model::{Model, wrap};
use super::*;

/// What the keys have chosen: the section shown, the scroll position.
#[derive(Debug, Default)]
pub(super) struct Ui {
    /// 0 = all sections, k = [`SECTIONS`]`[k - 1]`.
    pub(super) view: usize,
    pub(super) scroll: usize,
    pub(super) hscroll: usize,
    /// Body height and line count at the last draw (for paging and clamping).
    pub(super) page: usize,
    pub(super) lines: usize,
}

impl Ui {
    /// Applies a key; `false` means quit.
    pub(super) fn key(&mut self, k: KeyEvent) -> bool {
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

    pub(super) fn switch(&mut self, view: usize) {
        self.view = view;
        self.scroll = 0;
        self.hscroll = 0;
    }

    pub(super) fn clamp(&mut self) {
        self.scroll = self.scroll.min(self.lines.saturating_sub(self.page));
        self.hscroll = self.hscroll.min(400);
    }
}

impl Watch {
    pub(super) fn run_terminal(&mut self, count: u64) -> anyhow::Result<i32> {
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
}
