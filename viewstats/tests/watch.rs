//! `viewstats --watch`: rate baselines across restarts and slot reuse, and the live view in a
//! real terminal (tmux).

use std::time::Duration;

use shmq::region::Backend;
use shmq::stats::{Io, Md, MdState, StatsReader};
use shmq::sys::ProcId;

mod util;
use util::*;

fn rates_are_never_negative(screen: &str) {
    for w in screen.split_whitespace() {
        if let Ok(x) = w.parse::<f64>() {
            assert!(x >= 0.0, "negative number {w} in\n{screen}");
        }
    }
}

#[test]
fn watch_resets_rate_baselines_on_restart_and_slot_reuse() {
    let name = unique("restart");
    let srv = Server::new(&name, 41);
    srv.fill();
    let t = viewstats::Target {
        name: name.clone(),
        backend: Backend::Posix,
        interval: Duration::from_millis(100),
        groups: Vec::new(),
        filter: viewstats::Filter::default(),
    };
    let reader = StatsReader::attach(Backend::Posix, &name).unwrap();
    let mut w = viewstats::Watch::new(t, reader, false);
    let first = w.frame();
    assert!(!first.contains('\x1b'), "plain text, no escape codes: {first}");
    assert!(first.contains("epoch 41"));
    let io = srv.seg().io();
    io.add(Io::ConnectionsAccepted, 1000);
    std::thread::sleep(Duration::from_millis(20));
    let second = w.frame();
    let row = |s: &str, k: &str| {
        s.lines()
            .find(|l| l.split_whitespace().next() == Some(k))
            .unwrap_or_else(|| panic!("no row {k} in\n{s}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let r = row(&second, "connections_accepted");
    assert_eq!(r[1], "1005");
    assert_eq!(row(&second, "md.1.commands.dumb.ping")[1], "10");
    assert_eq!(row(&second, "md.1.commands.other")[1], "1");
    assert!(r[2].parse::<f64>().unwrap() > 0.0, "{r:?}");

    // The md in slot 1 is replaced by a new process with smaller counters: no negative rate.
    let md = srv.seg().attach_writer_md(1, ProcId { pid: 999_999, start_time: 1 }).unwrap();
    md.set_state(MdState::Running);
    md.add(Md::MessagesIn, 3);
    let third = w.frame();
    let m = third.lines().find(|l| l.starts_with("1 ")).unwrap_or_else(|| panic!("{third}"));
    let cols: Vec<&str> = m.split_whitespace().collect();
    assert_eq!((cols[2], cols[3], cols[4]), ("999999", "3", "-"), "{m}");
    rates_are_never_negative(&third);

    // io_conn restarts: a new segment under the same name, new epoch, counters from zero.
    drop(io);
    drop(md);
    drop(srv);
    let srv2 = Server::new(&name, 42);
    srv2.seg().io().add(Io::ConnectionsAccepted, 1);
    let fourth = w.frame();
    assert!(fourth.contains("server restarted (epoch 41 -> 42): rates reset"), "{fourth}");
    let r = row(&fourth, "connections_accepted");
    assert_eq!((r[1].as_str(), r[2].as_str()), ("1", "-"));
    rates_are_never_negative(&fourth);
    let fifth = w.frame();
    assert!(row(&fifth, "connections_accepted")[2].parse::<f64>().unwrap() >= 0.0);
}

/// The live view in a real terminal, 160×50 (issue 16: the io section scrolled off the top,
/// absent md slots and their queues were drawn): `viewstats --watch` in tmux.
#[test]
fn live_view_fits_a_160x50_terminal() {
    let name = unique("tmux");
    let srv = Server::new(&name, 51);
    fill_like_io_conn(&srv);
    let args = format!("--watch --interval 0.1 --name {name}");
    let Some(pane) = Pane::start(&name, 160, 50, &args) else { return };
    let s = pane.until("the io and md sections", &|s| {
        s.contains("connections_accepted") && s.contains("total")
    });
    let lines: Vec<&str> = s.lines().collect();
    assert!(lines[0].contains("epoch 51") && lines[0].contains("running"), "{s}");
    // The summary, then the io section at the top of the body, whole.
    assert!(lines[1].starts_with("connections 2 open, 5 accepted"), "{s}");
    assert!(s.contains("load   md1 running"), "per-md load of the live md only: {s}");
    assert!(!s.contains("md2 exited"), "{s}");
    let io = lines.iter().position(|l| l.starts_with("io_conn ")).expect("io section header");
    assert!(io < 10, "the io section starts at the top:\n{s}");
    for c in ["connections_current", "closed_by_peer", "bytes_in", "connections_refused_per_ip"] {
        assert!(s.contains(c), "io counter {c} is visible:\n{s}");
    }
    // md rows: the running slot and the one that exited; never-used slots 0 and 3 are hidden.
    assert!(lines.iter().any(|l| l.starts_with("1 ") && l.contains("running")), "{s}");
    assert!(lines.iter().any(|l| l.starts_with("2 ") && l.contains("exited")), "{s}");
    assert!(!lines.iter().any(|l| l.starts_with("0 ") || l.starts_with("3 ")), "{s}");
    // Queue rows for the live md only, and all of them visible.
    let queues: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.ends_with(".producer") || w.ends_with(".consumer"))
        .collect();
    assert_eq!(
        queues,
        ["in.1.producer", "in.1.consumer", "out.1.producer", "out.1.consumer"],
        "{s}"
    );
    // The counters move on screen, and the rate history is drawn.
    srv.seg().io().add(Io::ConnectionsAccepted, 77_772);
    srv.seg().io().add(Io::MessagesIn, 50_000);
    let s = pane.until("connections_accepted 77777", &|s| {
        s.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"connections_accepted") && w.get(1) == Some(&"77777")
        })
    });
    assert!(!s.contains("NOT RUNNING"), "{s}");
    let spark = lines_starting(&s, "req/s in");
    assert_eq!(spark.len(), 1, "{s}");
    assert!(spark[0].chars().any(|c| ('▁'..='█').contains(&c)), "a sparkline bar: {s}");
    // SIGTERM ends it cleanly: exit 0 and the terminal restored (the alternate screen left).
    let pid = nix::unistd::Pid::from_raw(pane.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let (code, s) = pane.wait_exit("the end after SIGTERM");
    assert_eq!(code, 0, "handled, not killed by the signal: {s}");
    assert!(!s.contains("connections_accepted"), "the view is gone: {s}");
}

/// The live view in an 80×24 terminal: the summary fits, the rest is reached by keys.
#[test]
fn live_view_scrolls_in_an_80x24_terminal() {
    let name = unique("tmux80");
    let srv = Server::new(&name, 52);
    fill_like_io_conn(&srv);
    let args = format!("--watch --interval 0.2 --name {name}");
    let Some(pane) = Pane::start(&name, 80, 24, &args) else { return };
    let s = pane.until("connections_current", &|s| s.contains("connections_current"));
    assert!(s.lines().count() <= 24);
    for l in s.lines() {
        assert!(l.chars().count() <= 80, "fits the width: {l:?}");
    }
    assert!(s.contains("connections 2 open, 5 accepted"), "{s}");
    assert!(s.contains("requests/s in"), "{s}");
    assert!(s.contains("errors 0"), "{s}");
    assert!(s.contains("instances 1 live md, 1 exited or dead, of 4 slots"), "{s}");
    assert!(s.contains("load   md1 running"), "{s}");
    assert!(s.contains("lines 1-"), "{s}");
    // The end of the io section is below the fold; PageDown scrolls a page: the first rows go,
    // rows that were below come up.
    assert!(!s.contains("connections_refused_per_ip"), "{s}");
    let io_rows = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with("io_conn"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let before = io_rows(&s);
    pane.keys(&["PageDown"]);
    let s = pane.until("the next page", &|s| !s.contains("connections_current"));
    let new: Vec<String> = io_rows(&s).into_iter().filter(|r| !before.contains(r)).collect();
    assert!(!new.is_empty(), "rows from below the fold:\n{s}");
    assert!(!s.contains(" lines 1-"), "{s}");
    // `1` shows the io section alone, End goes to its end.
    pane.keys(&["1"]);
    pane.until("the io section from its top", &|s| s.contains("connections_current"));
    pane.keys(&["End"]);
    let s = pane.until("connections_refused_per_ip", &|s| s.contains("connections_refused_per_ip"));
    assert!(!s.contains("connections_current"), "{s}");
    // Home goes back; `4` shows the queue section alone, Tab wraps to all.
    pane.keys(&["Home"]);
    pane.until("connections_current", &|s| s.contains("connections_current"));
    pane.keys(&["4"]);
    let s = pane.until("in.1.producer", &|s| s.contains("in.1.producer"));
    assert!(!s.contains("connections_current"), "{s}");
    assert!(!s.contains("in.0.") && !s.contains("in.2."), "live md only: {s}");
    pane.keys(&["Tab"]);
    pane.until("connections_current", &|s| s.contains("connections_current"));
    pane.keys(&["q"]);
    let (code, s) = pane.wait_exit("the end after q");
    assert_eq!(code, 0, "{s}");
    assert!(!s.contains("connections_current"), "the terminal is restored: {s}");
}
