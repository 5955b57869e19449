//! A harness that plays io_conn's side of one md queue pair: heap rings, real FIFO doorbells in a
//! private temp dir, and the md runner on its own thread.
#![allow(dead_code, unreachable_pub)]

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use md::{Control, Endpoint, Exit, Runner, RunnerOptions, Service, ShutdownHandle, Stats};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use shmq::Doorbell;
use shmq::frame::{FlowId, Hello, Kind, OpenInfo, encode_drained};
use shmq::layout::Direction;
use shmq::ring::{Consumer, HeapMemory, Producer, PushError};

/// Generous: a hang fails the test instead of blocking CI; no test asserts on timing.
pub const WATCHDOG: Duration = Duration::from_secs(20);

/// A frame the harness received from md (copied out of the ring).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub flow: FlowId,
    pub kind: Kind,
    pub flags: u16,
    pub payload: Vec<u8>,
}

/// Removes the temp dir even when a test panics.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> Self {
        let d = std::env::temp_dir().join(format!("md-test-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// io_conn's side of a pair plus the md runner thread.
pub struct Io {
    pub tx: Producer,
    pub rx: Consumer,
    pub bell: Doorbell,
    pub shutdown: ShutdownHandle,
    pub runner: Option<JoinHandle<(Exit, Stats)>>,
    pub in_mem: Arc<HeapMemory>,
    pub out_mem: Arc<HeapMemory>,
    /// Write end of the pipe whose read end md watches as io_conn's "pidfd": writing to it
    /// looks like io_conn exiting.
    pub fake_pidfd: std::os::fd::OwnedFd,
    pub _dir: TempDir,
    /// Frames received and not yet taken by a `expect_*`/`recv_*` call.
    pub pending: std::collections::VecDeque<Out>,
}

pub struct Geometry {
    pub in_cap: u64,
    pub out_cap: u64,
    pub max_payload: u64,
}

impl Default for Geometry {
    fn default() -> Self {
        Self { in_cap: 1 << 16, out_cap: 1 << 16, max_payload: 8 << 10 }
    }
}

/// Fast test options: short spin.
pub fn opts() -> RunnerOptions {
    RunnerOptions {
        instance: 3,
        start_time: 77,
        spin: Duration::from_micros(5),
        ..Default::default()
    }
}

impl Io {
    /// Starts `service` in a runner thread over fresh rings.
    pub fn start<S>(test: &str, service: S, opts: RunnerOptions, geo: Geometry) -> Self
    where
        S: Service + Send + 'static,
        S::Flow: std::fmt::Debug,
    {
        Self::start_with(test, geo, move |ep, control| {
            let mut r = Runner::new(service, opts);
            let exit = r.run(ep, control).expect("runner failed");
            (exit, r.stats().clone())
        })
    }

    /// Starts `body` (which runs a runner) on a thread over fresh rings.
    pub fn start_with<F>(test: &str, geo: Geometry, body: F) -> Self
    where
        F: FnOnce(&mut Endpoint, &Control) -> (Exit, Stats) + Send + 'static,
    {
        let dir = TempDir::new(test);
        let md_fifo = dir.0.join("in.fifo");
        let io_fifo = dir.0.join("out.fifo");
        let md_bell = Doorbell::create(&md_fifo, 0o600).unwrap();
        let io_bell = Doorbell::create(&io_fifo, 0o600).unwrap();
        let in_mem = Arc::new(HeapMemory::new_ring(geo.in_cap, geo.max_payload, Direction::ToMd));
        let out_mem = Arc::new(HeapMemory::new_ring(geo.out_cap, geo.max_payload, Direction::ToIo));
        let tx =
            Producer::attach(in_mem.clone(), 0, Some(Doorbell::open(&md_fifo).unwrap())).unwrap();
        let rx = Consumer::attach(out_mem.clone(), 0).unwrap();
        let mut ep = Endpoint {
            rx: Consumer::attach(in_mem.clone(), 0).unwrap(),
            rx_bell: md_bell,
            tx: Producer::attach(out_mem.clone(), 0, Some(Doorbell::open(&io_fifo).unwrap()))
                .unwrap(),
            io_pidfd: None,
        };
        let (pid_r, pid_w) = nix::unistd::pipe().unwrap();
        ep.io_pidfd = Some(pid_r);
        let (control, shutdown) = Control::new().unwrap();
        let runner = std::thread::Builder::new()
            .name("md-runner".into())
            .spawn(move || body(&mut ep, &control))
            .unwrap();
        Self {
            tx,
            rx,
            bell: io_bell,
            shutdown,
            runner: Some(runner),
            in_mem,
            out_mem,
            fake_pidfd: pid_w,
            _dir: dir,
            pending: Default::default(),
        }
    }

    pub fn send(&mut self, flow: FlowId, kind: Kind, payload: &[u8]) {
        self.send_flagged(flow, kind, 0, payload);
    }

    pub fn send_flagged(&mut self, flow: FlowId, kind: Kind, flags: u16, payload: &[u8]) {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            match self.tx.try_push(flow, kind, flags, payload) {
                Ok(()) => break,
                Err(PushError::Full) => {
                    // md is behind: keep its output moving so it can make progress.
                    self.poll_into_pending(Duration::from_millis(1));
                    assert!(Instant::now() < deadline, "input ring stayed full");
                }
                Err(e) => panic!("push failed: {e}"),
            }
        }
        self.tx.flush();
    }

    pub fn open(&mut self, flow: FlowId, service: &str, credit: u64) {
        self.open_flagged(flow, service, credit, 0);
    }

    /// OPEN with frame flags (e.g. `shmq::frame::flags::OPEN_MARK_ENDS`).
    pub fn open_flagged(&mut self, flow: FlowId, service: &str, credit: u64, flags: u16) {
        let info = OpenInfo { credit, peer: "127.0.0.1:4242".parse().unwrap(), service };
        let mut buf = [0u8; 128];
        let n = info.encode(&mut buf).unwrap();
        self.send_flagged(flow, Kind::Open, flags, &buf[..n]);
    }

    pub fn data(&mut self, flow: FlowId, bytes: &[u8]) {
        self.send(flow, Kind::Data, bytes);
    }

    /// Sends each `\n`-terminated line of `text` as one DATA frame (as io_conn's line framer).
    pub fn lines(&mut self, flow: FlowId, text: &str) {
        for l in text.split_inclusive('\n') {
            self.data(flow, l.as_bytes());
        }
    }

    /// Like [`Self::lines`], but every line is published at once (one flush, as io_conn does
    /// for the commands of one read): md drains them in one batch.
    pub fn lines_batched(&mut self, flow: FlowId, text: &str) {
        let deadline = Instant::now() + WATCHDOG;
        for l in text.split_inclusive('\n') {
            loop {
                match self.tx.try_push(flow, Kind::Data, 0, l.as_bytes()) {
                    Ok(()) => break,
                    Err(PushError::Full) => {
                        self.tx.flush();
                        self.poll_into_pending(Duration::from_millis(1));
                        assert!(Instant::now() < deadline, "input ring stayed full");
                    }
                    Err(e) => panic!("push failed: {e}"),
                }
            }
        }
        self.tx.flush();
    }

    pub fn drained(&mut self, flow: FlowId, n: u64) {
        self.send(flow, Kind::Drained, &encode_drained(n));
    }

    /// Copies every frame md has published into `pending`; sleeps on the doorbell up to `wait`
    /// when there is none. Returns how many frames were added.
    pub fn poll_into_pending(&mut self, wait: Duration) -> usize {
        let mut n = 0;
        while let Some(f) = self.rx.peek().expect("output ring corrupt") {
            self.pending.push_back(Out {
                flow: f.flowid,
                kind: f.kind,
                flags: f.flags,
                payload: f.payload.to_vec(),
            });
            self.rx.release();
            n += 1;
        }
        self.rx.publish();
        if n == 0 && self.rx.prepare_sleep(&self.bell) {
            let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.bell.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(ms));
        }
        n
    }

    /// The next frame from md (waits up to the watchdog).
    pub fn recv(&mut self) -> Out {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(o) = self.pending.pop_front() {
                return o;
            }
            assert!(Instant::now() < deadline, "no frame from md within {WATCHDOG:?}");
            self.poll_into_pending(Duration::from_millis(50));
        }
    }

    /// Asserts that the very next frames from md are DATA of `flow` carrying exactly `want`
    /// (returning DRAINED for each at once), with no frame of any kind or flow before or between
    /// them. This is how a test shows that md sent nothing it should not have: it sends a later
    /// request (on another flow, or on the same one) and asserts that its answer comes first.
    /// md handles its input in ring order and its output ring is FIFO, so anything md wrongly
    /// sent in an earlier pass is in front of that answer. Across flows that is all: within one
    /// pass md pushes the output flow by flow, in the order the flows were first touched in the
    /// pass's input batch (`Core::pump_dirty`), not in the order the replies were written. So do
    /// not use it to say which of two flows' answers comes first when md may run both requests in
    /// one pass (see `fairness::slice_zero_runs_long_work_to_its_end`).
    pub fn expect_next_bytes(&mut self, flow: FlowId, want: &[u8]) {
        let mut got = Vec::new();
        while got.len() < want.len() {
            let o = self.recv();
            assert!(
                o.flow == flow && o.kind == Kind::Data,
                "expected {:?} on {flow:?} next; after {:?} got {o:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&o.payload);
            self.drained(flow, o.payload.len() as u64);
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "reply bytes of {flow:?}"
        );
    }

    /// Shows that md sent nothing for another flow in the pass that answered `flow`'s last
    /// request, which [`Self::expect_next_bytes`] alone cannot (md pushes a pass's output flow by
    /// flow, so a frame md wrongly wrote for another flow in that pass can sit right after the
    /// answer): sends `req` on `flow`, which md runs in a later pass, and expects its answer
    /// `want` as the very next frames. Call it right after the `expect_next_bytes` whose answer
    /// it extends.
    pub fn expect_nothing_else(&mut self, flow: FlowId, req: &str, want: &[u8]) {
        self.lines(flow, req);
        self.expect_next_bytes(flow, want);
    }

    /// Expects HELLO as the very first frame.
    pub fn expect_hello(&mut self) -> Hello {
        let o = self.recv();
        assert_eq!((o.kind, o.flow), (Kind::Hello, FlowId(0)), "first frame is HELLO");
        Hello::decode(&o.payload).unwrap()
    }

    /// Receives frames of `flow` until its DATA bytes total `want.len()`, returning DRAINED for
    /// every DATA frame at once (an infinitely fast client). Asserts the bytes equal `want`.
    /// Frames of other flows are kept in `pending` order-preserved (returned separately).
    pub fn expect_bytes(&mut self, flow: FlowId, want: &[u8]) {
        let got = self.collect_bytes(flow, want.len(), true);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "reply bytes of {flow:?}"
        );
    }

    /// Collects `n` DATA bytes of `flow` (drains them back if `ack`); other flows' frames are left
    /// in `pending`.
    pub fn collect_bytes(&mut self, flow: FlowId, n: usize, ack: bool) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = Instant::now() + WATCHDOG;
        let mut others = std::collections::VecDeque::new();
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} bytes from {flow:?}: {:?}",
                got.len(),
                String::from_utf8_lossy(&got)
            );
            let Some(o) = self.pending.pop_front() else {
                self.poll_into_pending(Duration::from_millis(50));
                continue;
            };
            if o.flow != flow {
                others.push_back(o);
                continue;
            }
            assert_eq!(o.kind, Kind::Data, "unexpected {:?} on {flow:?} after {:?}", o, got);
            got.extend_from_slice(&o.payload);
            if ack {
                self.drained(flow, o.payload.len() as u64);
            }
        }
        others.extend(self.pending.drain(..));
        self.pending = others;
        got
    }

    /// Expects the next frame of `flow` to be `kind` (skipping nothing of that flow).
    pub fn expect_kind(&mut self, flow: FlowId, kind: Kind) {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(pos) = self.pending.iter().position(|o| o.flow == flow) {
                let o = self.pending.remove(pos).unwrap();
                assert_eq!(o.kind, kind, "next frame of {flow:?}: {o:?}");
                return;
            }
            assert!(Instant::now() < deadline, "no {kind:?} for {flow:?}");
            self.poll_into_pending(Duration::from_millis(50));
        }
    }

    /// Waits for the runner to return by itself.
    pub fn join(mut self) -> (Exit, Stats) {
        self.runner.take().unwrap().join().expect("runner thread panicked")
    }

    /// Stops the runner and returns its exit and stats. Plays io_conn's part of md's leave: it
    /// acknowledges md's LEAVE (as io_conn does once it routes nothing new there), so an md
    /// with request-dispatched flows need not wait for its drain deadline.
    pub fn stop(mut self) -> (Exit, Stats) {
        self.shutdown.trigger();
        let runner = self.runner.take().unwrap();
        let deadline = Instant::now() + WATCHDOG;
        let mut acked = false;
        while !runner.is_finished() {
            assert!(Instant::now() < deadline, "md did not stop within {WATCHDOG:?}");
            self.poll_into_pending(Duration::from_millis(5));
            if !acked && self.pending.iter().any(|o| o.kind == Kind::Leave) {
                self.send(FlowId(0), Kind::Leave, &[]);
                acked = true;
            }
        }
        runner.join().expect("runner thread panicked")
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let Some(r) = self.runner.take() {
            self.shutdown.trigger();
            let _ = r.join();
        }
    }
}

pub fn flow(slot: u32) -> FlowId {
    FlowId::new(slot, 7)
}
