//! One io_conn "host" (with its `--spawn-md` children) for the tests of several instances on one
//! machine and behind a balancer: its own config and `shared.name`, optionally started inside a
//! network namespace (`ip netns exec NS io_conn ...`, which execs, so the child's pid is
//! io_conn's). Unlike `util::Server` it may share its runtime directory with another instance,
//! so everything it inspects or removes is found by its own name. Dropping it kills io_conn and
//! its md children and removes what they left (POSIX files, FIFOs, sockets, SysV segments).
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::util::{WATCHDOG, io_conn_bin, md_bin};

/// A running io_conn of one instance.
pub struct Host {
    pub name: String,
    pub config: PathBuf,
    pub runtime_dir: PathBuf,
    /// "service/framing" -> address, from io_conn's `listening ADDR SERVICE FRAMING` lines.
    pub addrs: HashMap<String, SocketAddr>,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Host {
    /// Starts `[wrap...] io_conn --config CONFIG --spawn-md MD [args...]` (md from this build);
    /// [`Host::wait_ready`] waits for it. `wrap` is e.g. `ip netns exec NS`.
    pub fn spawn(
        name: &str,
        config: &Path,
        runtime_dir: &Path,
        md: u32,
        wrap: &[String],
        args: &[&str],
    ) -> Host {
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(io_conn_bin());
                c
            }
            None => Command::new(io_conn_bin()),
        };
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"] {
            cmd.env_remove(var);
        }
        cmd.arg("--config").arg(config);
        if md > 0 {
            cmd.arg("--spawn-md").arg(md.to_string());
        }
        cmd.args(args)
            .env("SHMSRV_MD_BIN", md_bin())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn io_conn");
        let log = Arc::new(Mutex::new(String::new()));
        let (log2, stderr) = (Arc::clone(&log), child.stderr.take().expect("stderr"));
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Host {
            name: name.to_owned(),
            config: config.to_owned(),
            runtime_dir: runtime_dir.to_owned(),
            addrs: HashMap::new(),
            child: Some(child),
            log,
            lines,
        }
    }

    /// Waits for `ready` (listeners bound) and then for md instances `0..md` to be live.
    pub fn wait_ready(&mut self, md: u32) {
        loop {
            let line = match self.lines.recv_timeout(WATCHDOG) {
                Ok(l) => l,
                Err(_) => {
                    panic!("{}: io_conn never printed ready; log:\n{}", self.name, self.log())
                }
            };
            if line == "ready" {
                break;
            }
            // listening 127.0.0.1:4680 echo raw [more]
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.first() == Some(&"listening") && parts.len() >= 4 {
                let addr = parts[1].parse().expect("listener address");
                self.addrs.insert(format!("{}/{}", parts[2], parts[3]), addr);
            }
        }
        for i in 0..md {
            self.wait_log(&format!("md instance {i} live"), 1);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        *self.addrs.get(key).unwrap_or_else(|| panic!("{}: no listener {key}", self.name))
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (watchdog) until the log says `pattern` `count` times.
    pub fn wait_log(&self, pattern: &str, count: usize) {
        let until = Instant::now() + WATCHDOG;
        while self.log().matches(pattern).count() < count {
            assert!(
                Instant::now() < until,
                "{}: no {count} x {pattern:?} in the log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// pids of the md children io_conn started ("started md instance I (pid P)").
    pub fn md_pids(&self) -> Vec<u32> {
        self.log()
            .lines()
            .filter_map(|l| l.split("started md instance ").nth(1))
            .filter_map(|r| r.split("(pid ").nth(1))
            .filter_map(|r| r.trim_end_matches(')').parse().ok())
            .collect()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal io_conn");
    }

    /// Waits (watchdog) for io_conn to exit and reaps it.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let until = Instant::now() + WATCHDOG;
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{}: io_conn did not exit in time; log:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM (the graceful stop): exit 0, and its md children gone.
    pub fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let st = self.wait_exit();
        assert!(st.success(), "{}: io_conn exited with {st}; log:\n{}", self.name, self.log());
        for pid in self.md_pids() {
            let until = Instant::now() + WATCHDOG;
            while alive(pid) {
                assert!(Instant::now() < until, "{}: md {pid} still running", self.name);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// kill -9 io_conn and its md children (a host that dies): what they made stays behind.
    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.wait_exit();
        self.kill_mds();
    }

    fn kill_mds(&self) {
        for pid in self.md_pids() {
            if alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_mds();
        remove_files_of(&self.name, &self.runtime_dir);
    }
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// The segment names an instance called `name` may create (md slots below 16).
fn segment_names(name: &str) -> Vec<String> {
    let mut v = vec![format!("{name}.stats"), format!("{name}.kv")];
    for i in 0..16 {
        v.push(format!("{name}.in.{i}"));
        v.push(format!("{name}.out.{i}"));
    }
    v
}

/// SysV segments present now: key -> shmid (`/proc/sysvipc/shm`).
fn sysv_segments() -> HashMap<i32, String> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.to_owned()))
        })
        .collect()
}

/// Everything of instance `name` that exists now: `/dev/shm/NAME.*`, `RUNTIME_DIR/NAME.*`
/// (FIFOs, the control socket, a handover socket) and SysV segments under its keys.
pub fn files_of(name: &str, runtime_dir: &Path) -> BTreeSet<String> {
    let prefix = format!("{name}.");
    let mut v = BTreeSet::new();
    for dir in [Path::new("/dev/shm"), runtime_dir] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    v.insert(e.path().display().to_string());
                }
            }
        }
    }
    let sysv = sysv_segments();
    for seg in segment_names(name) {
        if sysv.contains_key(&shmq::region::sysv_key(&seg)) {
            v.insert(format!("sysv:{seg}"));
        }
    }
    v
}

/// Removes what [`files_of`] finds (after a kill, or a failed test).
pub fn remove_files_of(name: &str, runtime_dir: &Path) {
    let sysv = sysv_segments();
    for f in files_of(name, runtime_dir) {
        match f.strip_prefix("sysv:") {
            Some(seg) => {
                if let Some(id) = sysv.get(&shmq::region::sysv_key(seg)) {
                    let _ = Command::new("ipcrm").args(["-m", id]).status();
                }
            }
            None => {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

/// A connection with the watchdog as its read timeout.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(WATCHDOG)).expect("timeout");
    s
}

/// Writes `req`, reads until `until` returns the complete reply (or EOF / an error: None).
pub fn exchange(s: &mut TcpStream, req: &[u8], done: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    s.write_all(req).ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(got)
}

/// The body of a complete HTTP/1.1 response with Content-Length, once it is all in `b`.
pub fn http_body(b: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(b).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let len: usize = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
    })?;
    (body.len() >= len).then(|| body[..len].to_owned())
}

/// `GET PATH` on a new connection (with `Connection: close`, read to the end): status line and
/// body (by Content-Length, chunked, or up to the close).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(WATCHDOG)).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).ok()?;
    let status = String::from_utf8_lossy(&got).lines().next()?.to_owned();
    if let Some(body) = http_body(&got) {
        return Some((status, body));
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, mut rest) = text.split_once("\r\n\r\n")?;
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Some((status, rest.to_owned()));
    }
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some((status, body));
        }
        body.push_str(after.get(..n)?);
        rest = after.get(n + 2..)?;
    }
}

/// One RESP command (an array of bulk strings) and its reply line(s), raw.
pub fn resp(s: &mut TcpStream, args: &[&str]) -> String {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    let got = exchange(s, req.as_bytes(), |b| {
        // A simple reply is one line; a bulk string `$N` its line and N bytes + CRLF.
        let t = String::from_utf8_lossy(b);
        match t.split_once("\r\n") {
            Some((first, rest)) if first.starts_with('$') && first != "$-1" => {
                first[1..].parse::<usize>().is_ok_and(|n| rest.len() >= n + 2)
            }
            Some(_) => true,
            None => false,
        }
    })
    .expect("a RESP reply");
    String::from_utf8_lossy(&got).into_owned()
}
