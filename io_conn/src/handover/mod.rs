//! Handing live connections to a successor io_conn: the sealed record, and the two ways the
//! sockets travel (systemd's file descriptor store, or a Unix socket with `SCM_RIGHTS`).
//!
//! Used by `main` (the successor side: [`take_stored`] or [`receive_from`], then
//! [`match_record`]) and by the loop's lifecycle (the leaving side: `Server::begin_handover`
//! quiesces, then [`store_in_systemd`] or [`serve_successor`]).
//! docs/ARCHITECTURE.md "Handover" has the protocol and why nothing is delivered twice or to the
//! wrong client.
//!
//! # The record
//!
//! One sealed memfd (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`: nobody can
//! change it once written), travelling with the sockets:
//!
//! ```text
//! header  magic "SHMSRVHO" u64 | version u32 | flags u32 (0) | total length u64 |
//!         writer pid u32 | listeners u32 | flows u32 | 0 u32
//! listener inode u64 | address
//! flow     slot u32 | generation u32 | inode u64 | listener index u32 | request u8 |
//!          peer address | client flag u8 (0, or 1 and the address a PROXY header carried) |
//!          input length u32 | input | output length u32 | output
//! trailer  FNV-1a 64 of everything before it
//! address  family u8 (4 or 6) | ip [u8; 16] (v4 in the first 4) | port u16
//! ```
//!
//! All little-endian. Sockets are matched to entries by their inode (`fstat`: each socket has its
//! own inode in sockfs), not by position or name, so descriptors systemd hands back in any order
//! find their entry, and a socket no entry names is closed, never guessed at.
//!
//! # Example
//!
//! ```
//! use io_conn::handover::{FlowRecord, ListenerRecord, Record};
//!
//! let rec = Record {
//!     writer_pid: 1,
//!     listeners: vec![ListenerRecord { inode: 7, addr: "127.0.0.1:80".parse().unwrap() }],
//!     flows: vec![FlowRecord {
//!         slot: 0,
//!         generation: 3,
//!         inode: 9,
//!         listener: 0,
//!         request: true,
//!         peer: "127.0.0.1:5000".parse().unwrap(),
//!         client: None,
//!         input: b"PI".to_vec(),
//!         output: Vec::new(),
//!     }],
//! };
//! assert_eq!(Record::decode(&rec.encode()).unwrap(), rec);
//! ```

mod record;

pub use record::*;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shmq::fdpass;
/// A socket's inode (its identity in the record).
pub fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(nix::sys::stat::fstat(fd)?.st_ino)
}

/// What the leaving io_conn hands over: the sealed record and the sockets it names.
#[derive(Debug)]
pub struct Bundle {
    /// The sealed record (None: the test hook `SHMSRV_TEST_HANDOVER=no-record`).
    pub record: Option<OwnedFd>,
    /// Listening sockets.
    pub listeners: Vec<OwnedFd>,
    /// Client connections.
    pub clients: Vec<OwnedFd>,
}

/// Test hook of the leaving side (`SHMSRV_TEST_HANDOVER`): `corrupt-record` (one byte flipped
/// before sealing), `no-record` (the sockets without a record), `abort-before-record` (the
/// sockets stored, then the process aborts: a crash mid-handover).
pub fn test_hook() -> Option<String> {
    std::env::var("SHMSRV_TEST_HANDOVER").ok().filter(|s| !s.is_empty())
}

/// Builds the bundle: encodes and seals the record (applying the test hook).
pub fn bundle(rec: &Record, listeners: Vec<OwnedFd>, clients: Vec<OwnedFd>) -> io::Result<Bundle> {
    let mut bytes = rec.encode();
    let hook = test_hook();
    if hook.as_deref() == Some("corrupt-record") {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
    }
    let record = if hook.as_deref() == Some("no-record") { None } else { Some(seal(&bytes)?) };
    Ok(Bundle { record, listeners, clients })
}

// ---- systemd's fd store -------------------------------------------------------------------

/// Stores the bundle in systemd's fd store (`FDSTORE=1`, one message per name and up to
/// [`fdpass::MAX_FDS_PER_MESSAGE`] descriptors): sockets first, the record last, so a record in
/// the store means every socket it names was stored before it.
pub fn store_in_systemd(b: &Bundle) -> io::Result<()> {
    use sd_notify_states as st;
    for (name, fds) in [(NAME_LISTENER, &b.listeners), (NAME_CLIENT, &b.clients)] {
        for chunk in fds.chunks(fdpass::MAX_FDS_PER_MESSAGE) {
            let borrowed: Vec<BorrowedFd<'_>> = chunk.iter().map(AsFd::as_fd).collect();
            st::store(name, &borrowed)?;
        }
    }
    if test_hook().as_deref() == Some("abort-before-record") {
        log::error!("test hook: aborting after storing the sockets, before the record");
        std::process::abort();
    }
    if let Some(r) = &b.record {
        st::store(NAME_RECORD, &[r.as_fd()])?;
    }
    Ok(())
}

/// The fd store messages, through `sd-notify` (the `rt::notify` crate's dependency).
mod sd_notify_states {
    use std::io;
    use std::os::fd::BorrowedFd;

    use rt::notify::NotifyState;

    pub(super) fn store(name: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let state = format!("FDSTORE=1\nFDNAME={name}");
        rt::notify::send_with_fds(&[NotifyState::Custom(&state)], fds)
    }

    pub(super) fn remove(name: &str) -> io::Result<()> {
        rt::notify::notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"))
    }
}

// ---- the Unix socket handover (no systemd) ------------------------------------------------

/// The handover socket's path: `{runtime_dir}/{name}.handover` (0600 in the 0700 runtime
/// directory).
pub fn socket_path(runtime_dir: &Path, name: &str) -> PathBuf {
    runtime_dir.join(format!("{name}.handover"))
}

const K_RECORD: u32 = 1;
const K_LISTENERS: u32 = 2;
const K_CLIENTS: u32 = 3;
const K_END: u32 = 4;
const K_OK: u32 = 5;

fn msg(kind: u32, count: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..4].copy_from_slice(&kind.to_le_bytes());
    m[4..8].copy_from_slice(&count.to_le_bytes());
    m[8..16].copy_from_slice(&MAGIC.to_le_bytes());
    m
}

/// Reads one 16-byte message and the descriptors that came with it.
fn read_msg(s: &UnixStream) -> io::Result<(u32, u32, Vec<OwnedFd>)> {
    let mut buf = [0u8; 16];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < 16 {
        let (n, more) = fdpass::recv_with_fds(s, &mut buf[got..], fdpass::MAX_FDS_PER_MESSAGE)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "handover peer closed"));
        }
        got += n;
        fds.extend(more);
    }
    if buf[8..16] != MAGIC.to_le_bytes() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a handover message"));
    }
    let kind = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
    let count = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    Ok((kind, count, fds))
}

/// The leaving side: listens on the handover socket, sends the bundle to the first successor
/// that connects within [`STEP_TIMEOUT`], and waits for its acknowledgement. `Ok(true)`: the
/// successor owns the connections now (exit without touching them); `Ok(false)` or `Err`: no
/// successor took them (the caller resumes serving).
pub fn serve_successor(path: &Path, b: &Bundle) -> io::Result<bool> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    struct Unlink<'a>(&'a Path);
    impl Drop for Unlink<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _unlink = Unlink(path);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    let until = Instant::now() + STEP_TIMEOUT;
    let s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > until {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    // Only a process of our own uid may take the connections.
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)?;
    if cred.uid() != nix::unistd::geteuid().as_raw() {
        log::warn!("handover: refusing a successor of uid {}", cred.uid());
        return Ok(false);
    }
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(STEP_TIMEOUT))?;
    s.set_write_timeout(Some(STEP_TIMEOUT))?;
    for (kind, fds) in [(K_LISTENERS, &b.listeners), (K_CLIENTS, &b.clients)] {
        for chunk in fds.chunks(fdpass::MAX_FDS_PER_MESSAGE) {
            let borrowed: Vec<BorrowedFd<'_>> = chunk.iter().map(AsFd::as_fd).collect();
            fdpass::send_with_fds(&s, &msg(kind, chunk.len() as u32), &borrowed)?;
        }
    }
    if let Some(r) = &b.record {
        fdpass::send_with_fds(&s, &msg(K_RECORD, 1), &[r.as_fd()])?;
    }
    let total = (b.listeners.len() + b.clients.len()) as u32;
    fdpass::send_with_fds(&s, &msg(K_END, total), &[])?;
    match read_msg(&s) {
        Ok((K_OK, _, _)) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What a successor received, before matching: every descriptor by kind, and the record's
/// descriptor if one came.
#[derive(Debug, Default)]
pub struct Received {
    /// The record (at most one; a second is a protocol error).
    pub record: Option<OwnedFd>,
    /// Descriptors sent as listeners.
    pub listeners: Vec<OwnedFd>,
    /// Descriptors sent as client connections.
    pub clients: Vec<OwnedFd>,
}

/// The successor side of the socket handover: signals the running io_conn (`SIGUSR2`), connects
/// to its handover socket (retrying while it quiesces: up to its drain deadline plus
/// [`STEP_TIMEOUT`]) and receives the bundle. The acknowledgement is sent later ([`acknowledge`])
/// once the successor has matched what it got.
pub fn receive_from(
    path: &Path,
    old_pid: u32,
    wait: Duration,
) -> io::Result<(UnixStream, Received)> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )?;
    let until = Instant::now() + wait + STEP_TIMEOUT;
    let s = loop {
        let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
        if is_socket {
            if let Ok(s) = UnixStream::connect(path) {
                break s;
            }
        }
        if Instant::now() > until {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no handover socket at {} from pid {old_pid}", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    s.set_read_timeout(Some(STEP_TIMEOUT))?;
    s.set_write_timeout(Some(STEP_TIMEOUT))?;
    let mut r = Received::default();
    loop {
        let (kind, count, fds) = read_msg(&s)?;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "handover message out of order");
        match kind {
            K_LISTENERS if fds.len() == count as usize => r.listeners.extend(fds),
            K_CLIENTS if fds.len() == count as usize => r.clients.extend(fds),
            K_RECORD if fds.len() == 1 && r.record.is_none() => r.record = fds.into_iter().next(),
            K_END if fds.is_empty() => {
                if count as usize != r.listeners.len() + r.clients.len() {
                    return Err(bad());
                }
                return Ok((s, r));
            }
            _ => return Err(bad()),
        }
    }
}

/// Tells the leaving io_conn that the successor owns the connections now.
pub fn acknowledge(s: &mut UnixStream) -> io::Result<()> {
    s.write_all(&msg(K_OK, 0))
}

/// Waits (up to [`STEP_TIMEOUT`]) until `old` has exited.
pub fn wait_exit(old: shmq::sys::ProcId) -> io::Result<()> {
    let until = Instant::now() + STEP_TIMEOUT;
    while old.liveness() == shmq::sys::Liveness::Alive {
        if Instant::now() > until {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("pid {} still runs", old.pid),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The successor's side under systemd: picks the descriptors of our fd store names out of what
/// systemd passed in `LISTEN_FDS` (taken once at start by [`rt::activation::take_listen_fds`])
/// and removes them from the store at once (we hold them now; a crash from here on must not
/// hand them to the next start with a record that no longer describes them). Returns the others
/// (socket activation's) untouched, for the caller to match to listeners.
pub fn take_stored(
    inherited: Vec<rt::activation::Inherited>,
) -> io::Result<(Received, Vec<rt::activation::Inherited>)> {
    let mut r = Received::default();
    let mut others = Vec::new();
    let mut records = Vec::new();
    for inh in inherited {
        match inh.name.as_str() {
            NAME_RECORD => records.push(inh.fd),
            NAME_LISTENER => r.listeners.push(inh.fd),
            NAME_CLIENT => r.clients.push(inh.fd),
            _ => others.push(inh),
        }
    }
    if !records.is_empty() || !r.listeners.is_empty() || !r.clients.is_empty() {
        for name in [NAME_RECORD, NAME_LISTENER, NAME_CLIENT] {
            if let Err(e) = sd_notify_states::remove(name) {
                log::warn!("removing {name} from systemd's fd store: {e}");
            }
        }
    }
    // More than one record: the store holds leftovers of two handovers; trust none.
    if records.len() == 1 {
        r.record = records.pop();
    } else if records.len() > 1 {
        log::error!("{} handover records in systemd's fd store: trusting none", records.len());
    }
    Ok((r, others))
}

/// A received socket matched to its record entry.
#[derive(Debug)]
pub struct Adopted {
    /// The connection (non-blocking).
    pub sock: TcpStream,
    /// Its entry (listener: an index into the successor's own listeners, see [`Matched`]).
    pub rec: FlowRecord,
}

/// What the successor keeps: listeners by address, connections with their state.
#[derive(Debug, Default)]
pub struct Matched {
    /// Inherited listening sockets and their local addresses.
    pub listeners: Vec<(SocketAddr, TcpListener)>,
    /// Connections; `rec.listener` still indexes the record's listeners until
    /// [`Matched::bind_listeners`] maps them.
    pub flows: Vec<Adopted>,
    /// Listener addresses of the record, by record index.
    pub rec_listeners: Vec<SocketAddr>,
}

/// Matches received descriptors to a valid record by inode. Without a valid record every
/// descriptor is closed (returned `Matched` empty) and the reason logged: never guessed at. A
/// descriptor no entry names is closed; an entry without its descriptor is dropped.
pub fn match_record(r: Received) -> Matched {
    let total = r.listeners.len() + r.clients.len();
    let why = match r.record.map(unseal) {
        Some(Ok(rec)) => return match_valid(rec, r.listeners, r.clients),
        Some(Err(e)) => format!("handover record invalid ({e})"),
        None if total > 0 => "sockets handed over without a record".to_owned(),
        None => return Matched::default(),
    };
    // No record to trust: every client socket is closed (its state is unknown). A listening
    // socket carries no client's state: it is kept if it is one (SO_ACCEPTCONN), matched to
    // the config by its own address like any inherited listener, so connection attempts keep
    // waiting in its backlog instead of being refused (and its port is not held by a copy
    // systemd has not dropped yet).
    let clients = r.clients.len();
    let mut m = Matched::default();
    for fd in r.listeners {
        let sock = TcpListener::from(fd);
        let listening = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::AcceptConn)
            .unwrap_or(false);
        if let (true, Ok(addr), Ok(())) = (listening, sock.local_addr(), sock.set_nonblocking(true))
        {
            m.listeners.push((addr, sock));
        }
    }
    log::error!(
        "{why}: closing the {clients} client sockets handed over ({total} sockets in all); \
         keeping {} listening sockets",
        m.listeners.len()
    );
    m
}

fn match_valid(rec: Record, listeners: Vec<OwnedFd>, clients: Vec<OwnedFd>) -> Matched {
    let mut by_inode: std::collections::HashMap<u64, OwnedFd> = std::collections::HashMap::new();
    let mut closed = 0usize;
    for fd in listeners.into_iter().chain(clients) {
        match inode(fd.as_fd()) {
            Ok(ino) => {
                if let Some(dup) = by_inode.insert(ino, fd) {
                    drop(dup);
                    closed += 1;
                }
            }
            Err(_) => closed += 1,
        }
    }
    let mut m = Matched {
        rec_listeners: rec.listeners.iter().map(|l| l.addr).collect(),
        ..Matched::default()
    };
    for l in &rec.listeners {
        let Some(fd) = by_inode.remove(&l.inode) else { continue };
        let sock = TcpListener::from(fd);
        if sock.local_addr().ok() != Some(l.addr) || sock.set_nonblocking(true).is_err() {
            closed += 1;
            continue;
        }
        m.listeners.push((l.addr, sock));
    }
    let mut missing = 0usize;
    for f in rec.flows {
        let Some(fd) = by_inode.remove(&f.inode) else {
            missing += 1;
            continue;
        };
        let sock = TcpStream::from(fd);
        if sock.peer_addr().ok() != Some(f.peer) || sock.set_nonblocking(true).is_err() {
            // Not the connection the record describes (or already reset): close it.
            closed += 1;
            continue;
        }
        m.flows.push(Adopted { sock, rec: f });
    }
    closed += by_inode.len();
    log::info!(
        "handover from pid {}: {} listeners and {} connections match the record; {closed} \
         sockets closed unmatched, {missing} entries without their socket",
        rec.writer_pid,
        m.listeners.len(),
        m.flows.len()
    );
    m
}

impl Matched {
    /// Maps every connection's listener to the index of the successor's listener with the same
    /// address (`addrs`, the successor's listeners in config order); a connection whose listener
    /// the successor does not have is closed.
    pub fn bind_listeners(&mut self, addrs: &[SocketAddr]) {
        let rec_listeners = std::mem::take(&mut self.rec_listeners);
        let before = self.flows.len();
        self.flows.retain_mut(|a| {
            let Some(addr) = rec_listeners.get(a.rec.listener as usize) else { return false };
            match addrs.iter().position(|x| x == addr) {
                Some(i) => {
                    a.rec.listener = i as u32;
                    true
                }
                None => false,
            }
        });
        let dropped = before - self.flows.len();
        if dropped > 0 {
            log::warn!(
                "closing {dropped} handed-over connections of listeners the config no longer has"
            );
        }
    }

    /// Takes the inherited listener bound to `addr`, if any. A config address with port 0
    /// (tests) takes the first remaining one of the same IP address, in the record's order,
    /// which is the predecessor's config order.
    pub fn take_listener(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let i = self.listeners.iter().position(|(a, _)| *a == addr).or_else(|| {
            (addr.port() == 0)
                .then(|| self.listeners.iter().position(|(a, _)| a.ip() == addr.ip()))?
        })?;
        Some(self.listeners.remove(i).1)
    }
}
