//! An in-process test harness for a [`Service`]: plays io_conn's side of one md queue pair.
//!
//! [`Harness::start`] runs your service in the real [`Runner`] on a thread, over heap-backed rings
//! and real FIFO doorbells in a private temp dir (removed on drop): the same loop, ordering,
//! output credit, timers and time slices as in production, without io_conn, sockets or shared
//! memory segments. The harness sends what io_conn would (`OPEN`, one `DATA` frame per request,
//! `EOF`, `CLOSE`), returns output credit for every byte it receives (a client that reads at
//! once), and collects each flow's replies. Every wait is bounded by [`WATCHDOG`]: a service that
//! never answers fails the test with a message instead of hanging it.
//!
//! ```
//! use md::testing::Harness;
//! use md::{Ctx, Service, Status};
//! use shmq::frame::OpenInfo;
//!
//! struct Shout;
//! impl Service for Shout {
//!     type Flow = ();
//!     fn open(&mut self, info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<()> {
//!         (info.service == "shout").then_some(())
//!     }
//!     fn message(&mut self, _: &mut (), msg: &[u8], cx: &mut Ctx<'_>) -> Status {
//!         cx.send(&msg.to_ascii_uppercase());
//!         Status::Done
//!     }
//! }
//!
//! let mut h = Harness::start(Shout).unwrap();
//! let c = h.connect("shout");
//! h.send_lines(c, "hello\nworld\n");
//! assert_eq!(h.read_line(c), "HELLO\n");
//! assert_eq!(h.read_line(c), "WORLD\n");
//! h.eof(c); // the client half-closes: md answers what it has, then closes the flow
//! assert_eq!(h.read_to_close(c), b"");
//! let refused = h.connect("other"); // a service Shout does not serve: md closes the flow
//! assert_eq!(h.read_to_close(refused), b"");
//! let stats = h.stop();
//! assert_eq!(stats[shmq::stats::Md::FlowsRefused], 1);
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use shmq::Doorbell;
use shmq::frame::{FlowId, Kind, OpenInfo, decode_broadcast, encode_drained};
use shmq::layout::Direction;
use shmq::ring::{Consumer, HeapMemory, Producer, PushError};

use crate::{Control, Endpoint, Exit, Runner, RunnerOptions, Service, ShutdownHandle, Stats};

/// The longest the harness waits for anything (a reply, a close, the runner to stop) before it
/// panics with what it has: generous, so a slow machine never fails a test, and a hang does.
pub const WATCHDOG: Duration = Duration::from_secs(20);

/// Ring sizes: 64 KiB each way, frames up to 8 KiB (as small as the config allows).
const RING_BYTES: u64 = 64 << 10;
const MAX_PAYLOAD: u64 = 8 << 10;

/// A temp dir (mode 0700) for the doorbell FIFOs, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<Self> {
        // Unique per process and harness; `create_dir` fails rather than reuse a dir.
        static SEQ: AtomicU32 = AtomicU32::new(0);
        // Relaxed: only uniqueness matters, no other memory is published through it.
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("md-harness-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d); // a dead process of the same pid left it
        std::fs::DirBuilder::new().mode(0o700).create(&d)?;
        Ok(Self(d))
    }
}

use std::os::unix::fs::DirBuilderExt as _;

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the harness received for one flow.
#[derive(Debug, Default)]
struct FlowLog {
    /// Reply bytes not yet read by the test.
    bytes: VecDeque<u8>,
    /// md sent `CLOSE` for the flow (after its last bytes).
    closed: bool,
}

/// A client connection of the harness (a flow id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client(FlowId);

impl Client {
    /// The flow id md sees ([`crate::Ctx::flow_id`]).
    pub fn flow_id(self) -> FlowId {
        self.0
    }
}

/// io_conn's side of one queue pair, with a [`Service`] running in a [`Runner`] thread. See the
/// module docs.
pub struct Harness {
    tx: Producer,
    rx: Consumer,
    bell: Doorbell,
    shutdown: ShutdownHandle,
    runner: Option<JoinHandle<(Exit, Stats)>>,
    flows: HashMap<FlowId, FlowLog>,
    broadcasts: Vec<(String, Vec<u8>)>,
    /// The client of every reply frame, in arrival order (runs of one client merged).
    order: Vec<Client>,
    next_slot: u32,
    credit: u64,
    _dir: TempDir,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness").field("flows", &self.flows.len()).finish_non_exhaustive()
    }
}

impl Harness {
    /// Starts `service` with the default [`RunnerOptions`] (the config's defaults).
    pub fn start<S>(service: S) -> io::Result<Self>
    where
        S: Service + Send + 'static,
        S::Flow: fmt::Debug,
    {
        Self::with_options(service, RunnerOptions::default())
    }

    /// Starts `service` as an md binary would with `cfg`: first [`Service::configure`] with it
    /// (the service's own `[service.NAME]` table; a [`crate::SettingError`] comes back as an
    /// [`io::ErrorKind::InvalidInput`] error naming the key), then the runner with the config's
    /// options ([`RunnerOptions::from_config`], instance 0).
    pub fn with_config<S>(mut service: S, cfg: &config::Config) -> io::Result<Self>
    where
        S: Service + Send + 'static,
        S::Flow: fmt::Debug,
    {
        service.configure(cfg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Self::with_options(service, RunnerOptions::from_config(cfg, 0, 0))
    }

    /// Starts `service` with `opts` (e.g. [`RunnerOptions::from_config`], or a `slice`).
    pub fn with_options<S>(service: S, opts: RunnerOptions) -> io::Result<Self>
    where
        S: Service + Send + 'static,
        S::Flow: fmt::Debug,
    {
        let dir = TempDir::new()?;
        let md_fifo = dir.0.join("in.fifo");
        let io_fifo = dir.0.join("out.fifo");
        let md_bell = Doorbell::create(&md_fifo, 0o600)?;
        let io_bell = Doorbell::create(&io_fifo, 0o600)?;
        let in_mem = Arc::new(HeapMemory::new_ring(RING_BYTES, MAX_PAYLOAD, Direction::ToMd));
        let out_mem = Arc::new(HeapMemory::new_ring(RING_BYTES, MAX_PAYLOAD, Direction::ToIo));
        let ring = |e: shmq::ring::RingAttachError| io::Error::other(e.to_string());
        let tx =
            Producer::attach(in_mem.clone(), 0, Some(Doorbell::open(&md_fifo)?)).map_err(ring)?;
        let rx = Consumer::attach(out_mem.clone(), 0).map_err(ring)?;
        let mut ep = Endpoint {
            rx: Consumer::attach(in_mem, 0).map_err(ring)?,
            rx_bell: md_bell,
            tx: Producer::attach(out_mem, 0, Some(Doorbell::open(&io_fifo)?)).map_err(ring)?,
            io_pidfd: None,
        };
        let (control, shutdown) = Control::new()?;
        let runner = std::thread::Builder::new().name("md-harness".into()).spawn(move || {
            let mut r = Runner::new(service, opts);
            let exit = r.run(&mut ep, &control).expect("md runner failed");
            (exit, r.stats().clone())
        })?;
        let mut h = Self {
            tx,
            rx,
            bell: io_bell,
            shutdown,
            runner: Some(runner),
            flows: HashMap::new(),
            broadcasts: Vec::new(),
            order: Vec::new(),
            next_slot: 1,
            credit: config::Config::default().io_conn.output_credit,
            _dir: dir,
        };
        h.expect_hello();
        Ok(h)
    }

    /// Opens a client connection to `service` (an `OPEN` with a loopback peer and io_conn's
    /// default output credit). A service that refuses it closes it: [`Harness::read_to_close`]
    /// returns at once.
    pub fn connect(&mut self, service: &str) -> Client {
        let flow = FlowId::new(self.next_slot, 1);
        self.next_slot += 1;
        let info = OpenInfo { credit: self.credit, peer: ([127, 0, 0, 1], 40000).into(), service };
        let mut buf = [0u8; 256];
        let n = info.encode(&mut buf).expect("service name too long for OPEN");
        self.flows.insert(flow, FlowLog::default());
        self.push(flow, Kind::Open, &buf[..n]);
        Client(flow)
    }

    /// Sends `request` as one request (one `DATA` frame, as io_conn's framer delivers one line,
    /// one `len32` message or one raw chunk).
    pub fn send(&mut self, c: Client, request: &[u8]) {
        self.push(c.0, Kind::Data, request);
    }

    /// Sends each `\n`-terminated line of `text` as one request (io_conn's `line` framing).
    pub fn send_lines(&mut self, c: Client, text: &str) {
        for line in text.split_inclusive('\n') {
            self.send(c, line.as_bytes());
        }
    }

    /// The client half-closes: md answers what it has, calls [`Service::eof`] and closes the flow.
    pub fn eof(&mut self, c: Client) {
        self.push(c.0, Kind::Eof, &[]);
    }

    /// The client is gone: md drops the flow ([`Service::close`]) at once.
    pub fn close(&mut self, c: Client) {
        self.push(c.0, Kind::Close, &[]);
        self.flows.remove(&c.0);
    }

    /// Waits for `n` reply bytes of `c` and returns them (panics after [`WATCHDOG`], or if md
    /// closes the flow first).
    pub fn read(&mut self, c: Client, n: usize) -> Vec<u8> {
        self.wait_for(c, "bytes", |log| log.bytes.len() >= n || log.closed);
        let log = self.log(c);
        assert!(
            log.bytes.len() >= n,
            "md closed {c:?} after {:?}",
            String::from_utf8_lossy(log.bytes.make_contiguous())
        );
        log.bytes.drain(..n).collect()
    }

    /// Waits for the next reply line of `c` (up to and including `\n`), as a string.
    pub fn read_line(&mut self, c: Client) -> String {
        self.wait_for(c, "a line", |log| log.bytes.contains(&b'\n') || log.closed);
        let log = self.log(c);
        let Some(end) = log.bytes.iter().position(|&b| b == b'\n') else {
            panic!(
                "md closed {c:?} before a full line: {:?}",
                String::from_utf8_lossy(log.bytes.make_contiguous())
            );
        };
        String::from_utf8_lossy(&log.bytes.drain(..=end).collect::<Vec<u8>>()).into_owned()
    }

    /// Waits until md closes the flow of `c` and returns the reply bytes not read yet.
    pub fn read_to_close(&mut self, c: Client) -> Vec<u8> {
        self.wait_for(c, "CLOSE", |log| log.closed);
        self.log(c).bytes.drain(..).collect()
    }

    /// Whether md has closed the flow of `c` (by what it received so far; does not wait).
    pub fn is_closed(&mut self, c: Client) -> bool {
        self.poll(Duration::ZERO);
        self.log(c).closed
    }

    /// Which clients md answered, in the order the replies arrived (a run of replies to one
    /// client counts once), since the last call: how a test shows that one client was answered
    /// before another (e.g. between the time slices of a long request).
    pub fn take_reply_order(&mut self) -> Vec<Client> {
        self.poll(Duration::ZERO);
        std::mem::take(&mut self.order)
    }

    /// The broadcasts md sent so far ([`crate::Ctx::broadcast`]): (service, bytes), in order.
    /// The harness does not deliver them to its clients (io_conn would).
    pub fn take_broadcasts(&mut self) -> Vec<(String, Vec<u8>)> {
        self.poll(Duration::ZERO);
        std::mem::take(&mut self.broadcasts)
    }

    /// Stops the runner as SIGTERM would (md leaves: it answers what it has in flight) and returns
    /// its counters ([`Stats`], indexed by [`shmq::stats::Md`]).
    pub fn stop(mut self) -> Stats {
        self.shutdown.trigger();
        let runner = self.runner.take().expect("runner present until stop");
        let deadline = Instant::now() + WATCHDOG;
        let mut acked = false;
        while !runner.is_finished() {
            assert!(Instant::now() < deadline, "md did not stop within {WATCHDOG:?}");
            if self.poll(Duration::from_millis(5)) && !acked {
                // io_conn acknowledges md's LEAVE once it routes nothing new there.
                self.push(FlowId(0), Kind::Leave, &[]);
                acked = true;
            }
        }
        runner.join().expect("md runner thread panicked").1
    }

    fn log(&mut self, c: Client) -> &mut FlowLog {
        self.flows.get_mut(&c.0).unwrap_or_else(|| panic!("{c:?} is closed or unknown"))
    }

    fn wait_for(&mut self, c: Client, what: &str, done: impl Fn(&FlowLog) -> bool) {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            self.poll(Duration::ZERO);
            if done(self.log(c)) {
                return;
            }
            if Instant::now() >= deadline {
                let got = String::from_utf8_lossy(self.log(c).bytes.make_contiguous()).into_owned();
                panic!("no {what} from md for {c:?} within {WATCHDOG:?}; received {got:?}");
            }
            if let Some(r) = &self.runner {
                assert!(!r.is_finished(), "md runner stopped while waiting for {what}");
            }
            self.poll(Duration::from_millis(20));
        }
    }

    fn push(&mut self, flow: FlowId, kind: Kind, payload: &[u8]) {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            match self.tx.try_push(flow, kind, 0, payload) {
                Ok(()) => break,
                // md is behind: take its output so it can go on.
                Err(PushError::Full) => {
                    assert!(Instant::now() < deadline, "md's input ring stayed full");
                    self.poll(Duration::from_millis(1));
                }
                Err(e) => panic!("{kind:?} of {} bytes: {e}", payload.len()),
            }
        }
        self.tx.flush();
    }

    /// Takes every frame md published (returning credit for reply bytes); sleeps on the doorbell
    /// up to `wait` when there is none. Returns whether md sent LEAVE.
    fn poll(&mut self, wait: Duration) -> bool {
        let mut n = 0;
        let mut leave = false;
        let mut drained = Vec::new();
        while let Some(f) = self.rx.peek().expect("md's output ring is corrupt") {
            n += 1;
            match f.kind {
                Kind::Data => {
                    if let Some(log) = self.flows.get_mut(&f.flowid) {
                        log.bytes.extend(f.payload);
                    }
                    if self.order.last() != Some(&Client(f.flowid)) {
                        self.order.push(Client(f.flowid));
                    }
                    drained.push((f.flowid, f.payload.len() as u64));
                }
                Kind::Close => {
                    if let Some(log) = self.flows.get_mut(&f.flowid) {
                        log.closed = true;
                    }
                }
                Kind::Broadcast => {
                    let (service, bytes) = decode_broadcast(f.payload).expect("bad BROADCAST");
                    self.broadcasts.push((service.to_owned(), bytes.to_vec()));
                }
                Kind::Leave => leave = true,
                // PAUSE/RESUME: the harness's client sends only what the test sends.
                _ => {}
            }
            self.rx.release();
        }
        self.rx.publish();
        for (flow, bytes) in drained {
            if self.flows.contains_key(&flow) {
                self.push(flow, Kind::Drained, &encode_drained(bytes));
            }
        }
        if n == 0 && !wait.is_zero() && self.rx.prepare_sleep(&self.bell) {
            let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.bell.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(ms));
        }
        leave
    }

    fn expect_hello(&mut self) {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(f) = self.rx.peek().expect("md's output ring is corrupt") {
                assert_eq!(f.kind, Kind::Hello, "md's first frame");
                self.rx.release();
                self.rx.publish();
                return;
            }
            assert!(Instant::now() < deadline, "no HELLO from md within {WATCHDOG:?}");
            if self.rx.prepare_sleep(&self.bell) {
                let mut fds = [PollFd::new(self.bell.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(20u16));
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(r) = self.runner.take() {
            self.shutdown.trigger();
            // Without LEAVE acknowledged md waits up to its drain deadline (8 s by default).
            let deadline = Instant::now() + WATCHDOG;
            let mut acked = false;
            while !r.is_finished() && Instant::now() < deadline {
                if self.poll(Duration::from_millis(5)) && !acked {
                    let _ = self.tx.try_push(FlowId(0), Kind::Leave, 0, &[]);
                    self.tx.flush();
                    acked = true;
                }
            }
            let _ = r.join();
        }
    }
}
