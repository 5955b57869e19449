//! `--watch`: a live view redrawn every interval with values and change per second.
//!
//! Each refresh re-attaches by name, so a restarted io_conn (a new segment, a new epoch) is seen;
//! rate baselines are dropped then, and per slot when the md in it changes (pid or start time),
//! and a counter that went down is shown as a reset, never as a negative rate.
//!
//! Each md row ends with the slot's service group (from the config, see [`Target::groups`]) and
//! has room for per-request dispatch load: `INFLIGHT` shows a gauge named
//! [`IN_FLIGHT_COUNTER`] and `DISP/S` the rate of a counter named [`DISPATCHED_COUNTER`], read
//! from whichever per-slot block of the segment has them (io_conn's dispatcher will write them),
//! and `-` while the segment has no such counter.

use std::io::Write;
use std::time::Instant;

use shmq::stats::{
    BlockSnapshot, COMMANDS_PREFIX, CounterKind, MdState, Snapshot, StatsError, StatsReader,
};

use crate::Target;

/// Name of the per-slot gauge shown as `INFLIGHT`: requests dispatched to the md and not yet
/// answered.
pub const IN_FLIGHT_COUNTER: &str = "requests_in_flight";
/// Name of the per-slot counter whose rate is shown as `DISP/S`: requests dispatched to the md.
pub const DISPATCHED_COUNTER: &str = "requests_dispatched";
use crate::render::{creator_alive, fmt_ns, is_shown, key, quantiles, shown_slots, split, value};

/// The live view's state: the reader and the previous snapshot (the rate baseline).
#[derive(Debug)]
pub struct Watch {
    t: Target,
    reader: StatsReader,
    all: bool,
    prev: Option<(Snapshot, Instant)>,
    note: String,
}

impl Watch {
    /// A view over `reader`.
    pub fn new(t: Target, reader: StatsReader, all: bool) -> Self {
        Self { t, reader, all, prev: None, note: String::new() }
    }

    /// Redraws every interval; `count` screens (0 = until killed).
    pub fn run(&mut self, out: &mut dyn Write, count: u64) -> anyhow::Result<i32> {
        let mut n = 0u64;
        loop {
            let screen = self.frame();
            out.write_all(screen.as_bytes())?;
            out.flush()?;
            n += 1;
            if count != 0 && n >= count {
                return Ok(0);
            }
            std::thread::sleep(self.t.interval);
        }
    }

    /// Takes one snapshot and renders one screen (clear-screen included).
    pub fn frame(&mut self) -> String {
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
        let screen = self.render(&snap, now);
        self.prev = Some((snap, now));
        screen
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

    fn render(&self, s: &Snapshot, now: Instant) -> String {
        use std::fmt::Write as _;
        let mut o = String::from("\x1b[H\x1b[2J");
        let up = s.taken_unix_ns.saturating_sub(s.info.created_unix_ns);
        let _ = writeln!(
            o,
            "shmsrv {} ({})  epoch {}  io_conn pid {} {}  up {}  every {:.1}s",
            self.t.name,
            self.t.location(),
            s.info.epoch,
            s.info.creator_pid,
            if creator_alive(s) { "running" } else { "NOT RUNNING" },
            fmt_ns(up),
            self.t.interval.as_secs_f64()
        );
        if !self.note.is_empty() {
            let _ = writeln!(o, "** {} **", self.note);
        }
        let fmt_rate = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.1}"));
        let shown = shown_slots(s, self.all);
        // io_conn.
        let _ = writeln!(o, "\n{:<36} {:>14} {:>12}", "io_conn", "VALUE", "/s");
        for b in s.blocks.iter().filter(|b| s.sections[b.section].name == "io") {
            for c in split(s, b).0 {
                let d = c.desc;
                if d.unit == "mono_ns" {
                    continue;
                }
                let r = if d.kind == CounterKind::Counter {
                    fmt_rate(self.rate(s, b, d.word, now))
                } else {
                    String::new()
                };
                let _ = writeln!(o, "  {:<34} {:>14} {:>12}", c.name, c.value, r);
            }
        }
        // md slots, one row each, and a total.
        let _ = writeln!(
            o,
            "\n{:<6} {:<9} {:>8} {:>12} {:>9} {:>12} {:>9} {:>8} {:>6} {:>8} {:>8}  GROUP",
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
        );
        let mut tot = [0u64; 3];
        let mut tot_rate = [0f64; 3];
        for b in s.blocks.iter().filter(|b| s.sections[b.section].name == "md") {
            if !is_shown(s, b, &shown) {
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
            let _ = writeln!(
                o,
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
            );
        }
        let _ = writeln!(
            o,
            "{:<6} {:<9} {:>8} {:>12} {:>9.1} {:>12} {:>9.1} {:>8} {:>6.1}",
            "total", "", "", tot[0], tot_rate[0], tot[1], tot_rate[1], tot[2], tot_rate[2]
        );
        // Requests by command, per md slot, under the names the md registered.
        let mut header = false;
        for b in s.blocks.iter().filter(|b| s.sections[b.section].name == "md") {
            if !is_shown(s, b, &shown) {
                continue;
            }
            for c in s.counters(b).filter(|c| c.name.starts_with(COMMANDS_PREFIX)) {
                if !header {
                    let _ = writeln!(o, "\n{:<36} {:>14} {:>12}", "commands", "VALUE", "/s");
                    header = true;
                }
                let r = fmt_rate(self.rate(s, b, c.desc.word, now));
                let bad = if c.bad_name { " (unreadable name)" } else { "" };
                let _ = writeln!(o, "  {:<34} {:>14} {:>12}{bad}", key(s, b, c.name), c.value, r);
            }
        }
        // Queue halves.
        let _ = writeln!(
            o,
            "\n{:<22} {:>12} {:>10} {:>10} {:>10} {:>8}  WAIT",
            "queue", "FRAMES", "FRAMES/S", "DEPTH", "MAX_DEPTH", "FULL"
        );
        for b in s.blocks.iter().filter(|b| {
            let n = &s.sections[b.section].name;
            (n.ends_with(".producer") || n.ends_with(".consumer")) && is_shown(s, b, &shown)
        }) {
            let g = |n| value(s, b, n).map_or("".to_owned(), |v| v.to_string());
            let hist = split(s, b).1;
            let wait = hist.first().map_or(String::new(), |h| {
                if h.count() == 0 { String::new() } else { quantiles(h) }
            });
            let k = key(s, b, "");
            let _ = writeln!(
                o,
                "{:<22} {:>12} {:>10} {:>10} {:>10} {:>8}  {}",
                k.trim_end_matches('.'),
                g("frames"),
                fmt_rate(self.rate_of(s, b, "frames", now)),
                g("depth_bytes"),
                g("max_depth_bytes"),
                g("full_events"),
                wait
            );
        }
        o
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
