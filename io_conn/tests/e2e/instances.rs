//! One md per instance, and what an md leaves behind when it goes (issue 10, items 4 and 5).
//!
//! md processes are started by hand here (as systemd's `md@N` would), not by `--spawn-md`, so
//! the test owns them: killed by pid, reaped, and killed on drop if an assertion fails.

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::*;

/// An md started by hand for instance `instance` of `sut`, its stderr collected (and echoed).
struct HandMd {
    child: KillOnDrop,
    log: Arc<Mutex<String>>,
}

impl HandMd {
    fn start(sut: &Server, instance: u32) -> Self {
        let mut child = Command::new(util::md_bin())
            .arg("--config")
            .arg(&sut.config)
            .arg("--instance")
            .arg(instance.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start md");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = Arc::clone(&log);
        let tag = format!("{} md{instance}/{}", sut.name, child.id());
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self { child: KillOnDrop(child), log }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits until its log says `pattern`.
    fn wait_log(&self, pattern: &str) {
        let until = Instant::now() + WATCHDOG;
        while !self.log.lock().unwrap().contains(pattern) {
            assert!(Instant::now() < until, "md never logged {pattern:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit (watchdog); its exit status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let until = Instant::now() + WATCHDOG;
        loop {
            if let Some(st) = self.child.0.try_wait().expect("try_wait") {
                return st;
            }
            assert!(Instant::now() < until, "md did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    fn kill9(&mut self) {
        self.child.0.kill().expect("SIGKILL md");
        self.child.0.wait().expect("reap md");
    }
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).expect("signal");
}

/// Stops io_conn with SIGSTOP and continues it on drop (so a failing test never leaves it
/// stopped for `Server`'s cleanup).
struct Stopped(u32);

impl Stopped {
    fn new(sut: &Server) -> Self {
        signal(sut.pid(), Signal::SIGSTOP);
        Self(sut.pid())
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGCONT);
    }
}

fn wait_md_stat(sut: &Server, i: u64, name: &str, want: u64) {
    sut.wait_stats(&format!("md {i} {name}"), |v| expect_exact(v, &[("md", i, name, want)]));
}

/// Nothing is readable on `s` yet (it would block).
fn nothing_yet(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut x = [0u8; 1];
    let r = matches!(s.peek(&mut x), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).expect("blocking");
    r
}

/// A second md for an instance a live md holds is refused: exit status 3, a message naming the
/// holder; the first md serves on, and io_conn never saw a second HELLO.
#[test]
fn issue_10_duplicate_md_refused_first_keeps_serving() {
    let sut = Server::start("dupmd", 1);
    let holder = sut.md_pid(0);
    let mut a = sut.connect("dumb/line");
    roundtrip(&mut a, b"PING\n", b"PONG\n");

    let mut second = HandMd::start(&sut, 0);
    let st = second.wait_exit();
    assert_eq!(st.code(), Some(3), "a second md for a held instance: {st}");
    second.wait_log(&format!("instance 0 is held by md pid {holder}"));

    roundtrip(&mut a, b"PING\n", b"PONG\n");
    let mut b = sut.connect("dumb/line");
    roundtrip(&mut b, b"PING\n", b"PONG\n");
    sut.wait_io("one md attached", &[("md_attaches", 1), ("bad_frames", 0), ("md_deaths", 0)]);
    drop((a, b));
    sut.stop();
}

/// md killed with SIGKILL, its successor started at once, before io_conn has even noticed (io_conn
/// is stopped meanwhile): the successor finds the dead md's claim, waits instead of failing,
/// attaches after io_conn's reset and serves.
#[test]
fn issue_10_md_restarted_right_after_kill9_attaches_and_serves() {
    let sut = Server::start_with("restartmd", Setup { max_instances: 1, ..Setup::default() });
    let mut first = HandMd::start(&sut, 0);
    sut.wait_md_live(1);
    let mut a = sut.connect("dumb/line");
    roundtrip(&mut a, b"PING\n", b"PONG\n");

    let mut second = {
        let _stopped = Stopped::new(&sut);
        first.kill9();
        let second = HandMd::start(&sut, 0);
        second.wait_log(&format!("still held by md pid {}, which has exited", first.pid()));
        second
    }; // io_conn continues: it notices the death, resets the pair, the successor attaches.
    sut.wait_log("md instance 0 live", 2);
    assert!(second.child.0.try_wait().expect("try_wait").is_none(), "the successor exited");

    // The old connection was bound to the dead md: closed (cleanly), counted.
    assert_eq!(read_to_eof(&mut a), b"");
    drop(a);
    let mut b = sut.connect("dumb/line");
    roundtrip(&mut b, b"PING\n", b"PONG\n");
    sut.wait_io(
        "successor serves",
        &[("md_deaths", 1), ("md_attaches", 2), ("closed_md_gone", 1), ("bad_frames", 0)],
    );
    drop(b);
    signal(second.pid(), Signal::SIGTERM);
    assert!(second.wait_exit().success());
    sut.stop();
}

/// md killed with SIGKILL while replies it produced sit unread in its `out` ring: io_conn delivers
/// every one of them, then closes those connections cleanly (a FIN after the last reply),
/// counted as `closed_md_gone`.
///
/// Constructed so that the death and the replies reach io_conn together, more replies than one
/// loop iteration takes from a ring (4096 frames): io_conn is stopped (SIGSTOP) while md answers,
/// md is killed, io_conn continued. Its first iteration takes 4096 frames; the pidfd event comes
/// with the next one, with the rest of the frames still in the ring. (Before the fix, the pair
/// was reset there and those replies were lost.) Each client sends `WAIT 2000` and then 200
/// `WAIT 1`, which md answers one per timer firing, so each `DONE` is a frame of its own.
#[test]
fn issue_10_kill9_md_replies_in_out_ring_are_delivered() {
    const N: usize = 40;
    const WAITS: usize = 201;
    let sut = Server::start_with("kill9replies", Setup { max_instances: 1, ..Setup::default() });
    let mut md = HandMd::start(&sut, 0);
    sut.wait_md_live(1);
    let mut clients: Vec<TcpStream> = (0..N).map(|_| sut.connect("dumb/line")).collect();
    let mut req = b"WAIT 2000\n".to_vec();
    for _ in 1..WAITS {
        req.extend_from_slice(b"WAIT 1\n");
    }
    for c in &mut clients {
        c.write_all(&req).expect("write");
    }
    // Every request is in md; then io_conn stops while md answers them.
    wait_md_stat(&sut, 0, "messages_in", (N * WAITS) as u64);
    {
        let _stopped = Stopped::new(&sut);
        assert!(
            clients.iter().all(nothing_yet),
            "a DONE arrived before io_conn was stopped: the scenario was not constructed"
        );
        wait_md_stat(&sut, 0, "bytes_out", (N * WAITS * 5) as u64);
        let frames = stat(&sut.stats(), "md", 0, "messages_out").unwrap_or(0);
        assert!(frames > 4096, "only {frames} reply frames: the scenario was not constructed");
        md.kill9();
    } // io_conn continues with the replies and the pidfd event both pending.
    for c in &mut clients {
        let got = read_to_eof(c);
        let dones = got.chunks(5).take_while(|d| *d == b"DONE\n").count();
        assert_eq!((dones, got.len()), (WAITS, WAITS * 5), "every reply, then a clean close");
    }
    drop(clients);
    sut.wait_io(
        "the replies delivered, then closed",
        &[("md_deaths", 1), ("closed_md_gone", N as u64), ("connections_current", 0)],
    );
    sut.stop();
}

/// SIGTERM to one of two md (what `systemctl stop md@1` sends) with 40 clients in the middle
/// of `WAIT 1500` (flow dispatch: 20 bound to each md): md 1 says LEAVE, io_conn routes nothing
/// new to it, md 1 answers its 20 `WAIT`s, closes their connections cleanly after the `DONE`
/// (counted as closed by md, not as md gone) and exits 0; md 0's 20 clients carry on.
#[test]
fn issue_10_md_sigterm_with_40_waits_leaves_cleanly() {
    let sut = Server::start_with("mdleave40", Setup { max_instances: 2, ..Setup::default() });
    let mut md0 = HandMd::start(&sut, 0);
    sut.wait_md_live(1);
    let mut md1 = HandMd::start(&sut, 1);
    sut.wait_log("md instance 1 live", 1);
    // Bound alternately (fewest flows, lowest instance first): even ones to md 0, odd to md 1.
    let mut clients: Vec<TcpStream> = (0..40).map(|_| sut.connect("dumb/line")).collect();
    for c in &mut clients {
        roundtrip(c, b"PING\n", b"PONG\n");
    }
    for c in &mut clients {
        c.write_all(b"WAIT 1500\n").expect("write");
    }
    wait_md_stat(&sut, 1, "messages_in", 40);
    signal(md1.pid(), Signal::SIGTERM);
    for c in &mut clients {
        assert_eq!(read_line(c), "DONE\n");
    }
    assert!(md1.wait_exit().success(), "md 1 exits 0 after leaving");
    for (k, c) in clients.iter_mut().enumerate() {
        if k % 2 == 1 {
            assert_eq!(read_to_eof(c), b"", "md 1's client: a clean close after DONE");
        } else {
            roundtrip(c, b"PING\n", b"PONG\n");
        }
    }
    drop(clients);
    sut.wait_io("md 1's flows closed", &[("closed_by_md", 20), ("closed_md_gone", 0)]);
    signal(md0.pid(), Signal::SIGTERM);
    assert!(md0.wait_exit().success());
    sut.stop();
}
