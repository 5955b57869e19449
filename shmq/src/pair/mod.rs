//! The queue pair of one md instance: `in` (io_conn → md) and `out` (md → io_conn), each a ring in
//! its own segment with a FIFO doorbell in the runtime directory. io_conn creates, md attaches.
//!
//! # Names
//!
//! For prefix `NAME` (`shared.name`) and instance `I`:
//!
//! | what | name |
//! |---|---|
//! | ring io_conn → md | segment `NAME.in.I` (POSIX: `/dev/shm/NAME.in.I`; SysV: key [`sysv_key`]`("NAME.in.I")`) |
//! | ring md → io_conn | segment `NAME.out.I` |
//! | md's doorbell | FIFO `RUNTIME_DIR/NAME.in.I.fifo` |
//! | io_conn's doorbell | FIFO `RUNTIME_DIR/NAME.out.I.fifo` |
//!
//! Everything is created mode 0600; the runtime directory is created 0700 if missing, and must be
//! a real directory (not a symlink) owned by us and writable by nobody else.
//!
//! # Ownership
//!
//! io_conn ([`PairConfig::create`]) owns both segments and both FIFOs; each segment holds one ring
//! at offset 0 whose header names io_conn (pid + start time) and its epoch. A create that finds
//! leftovers first checks who owns them: a segment owned by another uid is never touched
//! ([`PairError::NotOurs`]; names are predictable and /dev/shm is shared by every user), nor is
//! one of ours that holds something else than a ring ([`PairError::Foreign`], e.g. a SysV key
//! collision). Then the recorded creator: alive → [`PairError::InUse`]; dead or replaced (or a
//! half-made segment of ours: empty, or a header never written) → the leftovers are removed and
//! made afresh. md
//! ([`PairConfig::attach`]) only attaches. io_conn resets a pair (new generation) when md died or
//! a ring is corrupt ([`PairConfig::reset`]) and removes it on a clean exit
//! ([`PairConfig::remove`]).
//!
//! # One md per instance
//!
//! md claims the pair when it attaches: a compare-and-swap of the `in` ring's holder word from 0
//! to its identity (pid + start time, [`crate::ring::holder`]). A pair held by a live process is
//! refused ([`PairError::Held`]); one held by a dead process is not taken over
//! ([`PairError::HeldByDead`]: retry): io_conn clears the word in [`PairConfig::reset`] once it
//! has seen the holder die (and drained its replies). md never releases its claim itself.
//!
//! There is no lock between two io_conns creating the same names at the same instant; the
//! systemd unit runs one io_conn, and the liveness check covers the restart case.
//!
//! # Example
//!
//! ```
//! use shmq::frame::{FlowId, Kind};
//! use shmq::pair::PairConfig;
//! use shmq::region::Backend;
//! let pid = std::process::id();
//! let cfg = PairConfig {
//!     name: format!("shmq-doc-pair-{pid}"),
//!     runtime_dir: std::env::current_dir().unwrap().join(format!("target/shmq-doc-{pid}")),
//!     backend: Backend::Posix,
//!     capacity: 1 << 16,
//!     max_payload: 4096,
//! };
//! let mut io = cfg.create(0, 7).unwrap();
//! let mut md = cfg.attach(0).unwrap();
//! assert_eq!((md.epoch, md.generation), (7, 1));
//! io.tx.try_push(FlowId::new(1, 1), Kind::Data, 0, b"hi").unwrap();
//! io.tx.flush();
//! assert_eq!(md.rx.peek().unwrap().unwrap().payload, b"hi");
//! drop((io, md));
//! cfg.remove(0).unwrap();
//! # std::fs::remove_dir_all(&cfg.runtime_dir).unwrap();
//! ```

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::doorbell::Doorbell;
use crate::layout::{Direction, PROTOCOL_VERSION, RING_MAGIC, RingParams};
use crate::region::{self, Backend, Segment};
use crate::ring::holder::{self};
use crate::ring::{self, Consumer, Producer, RingAttachError};
use crate::sync::Ordering;
use crate::sys::{Liveness, ProcId};

#[cfg(doc)]
use crate::region::sysv_key;

mod attach;
mod error;
mod reset;

pub use error::PairError;
use error::other;
pub use reset::{PendingReset, ResetFailed};

/// Mode of every segment and FIFO of a pair.
pub const MODE: u32 = 0o600;

/// Where and how a set of queue pairs lives. One per server (from the config's shared section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairConfig {
    /// Prefix of every segment and FIFO name (`shared.name`).
    pub name: String,
    /// Directory for the FIFOs (private, 0700; never /tmp).
    pub runtime_dir: PathBuf,
    /// Segment backend.
    pub backend: Backend,
    /// Data bytes per ring (power of two).
    pub capacity: u64,
    /// Largest frame payload.
    pub max_payload: u64,
}

/// io_conn's end of instance `instance`'s pair.
#[derive(Debug)]
pub struct IoSide {
    /// The md instance number.
    pub instance: u32,
    /// Producer of `in` (holds md's doorbell and rings it).
    pub tx: Producer,
    /// Consumer of `out`.
    pub rx: Consumer,
    /// io_conn's doorbell for `out`: put it in epoll, pass it to `rx.prepare_sleep`.
    pub rx_bell: Doorbell,
    /// The epoch both rings were created under.
    pub epoch: u64,
    /// The current generation of both rings.
    pub generation: u64,
    in_seg: Arc<Segment>,
    out_seg: Arc<Segment>,
}

/// The producer half of an [`IoSide`] ([`IoSide::split`]): what io_conn pushes through. Kept
/// apart from the consumer half so io_conn can drain `out` in place while handling each frame
/// with the rest of its state, this md's producer included, still usable.
#[derive(Debug)]
pub struct IoTx {
    /// The md instance number.
    pub instance: u32,
    /// Producer of `in` (holds md's doorbell and rings it).
    pub tx: Producer,
    /// The epoch both rings were created under.
    pub epoch: u64,
    /// The current generation of both rings.
    pub generation: u64,
    in_seg: Arc<Segment>,
}

impl IoTx {
    /// The md that holds the pair (claimed when it attached), if any. See
    /// [`crate::ring::holder`].
    pub fn holder(&self) -> Option<ProcId> {
        holder::holder(self.tx.header())
    }

    /// The frame protocol version the holding md wrote when it claimed the pair (0: an md from
    /// before versions, or none). io_conn compares it with [`PROTOCOL_VERSION`] when the
    /// holder's HELLO comes.
    pub fn md_protocol(&self) -> u32 {
        // Acquire pairs with md's Release store in `PairConfig::claim`; the HELLO that made us
        // look came through the ring after it, so this load sees it.
        self.tx.header().proto_md.load(Ordering::Acquire)
    }
}

/// The consumer half of an [`IoSide`] ([`IoSide::split`]).
#[derive(Debug)]
pub struct IoRx {
    /// Consumer of `out`.
    pub rx: Consumer,
    /// io_conn's doorbell for `out`: put it in epoll, pass it to `rx.prepare_sleep`.
    pub rx_bell: Doorbell,
    out_seg: Arc<Segment>,
}

impl IoSide {
    /// Splits the pair's io_conn end into its producer and consumer halves.
    pub fn split(self) -> (IoTx, IoRx) {
        let IoSide { instance, tx, rx, rx_bell, epoch, generation, in_seg, out_seg } = self;
        (IoTx { instance, tx, epoch, generation, in_seg }, IoRx { rx, rx_bell, out_seg })
    }

    /// The md that holds the pair, if any (see [`IoTx::holder`]).
    pub fn holder(&self) -> Option<ProcId> {
        holder::holder(self.tx.header())
    }

    /// Puts the halves [`Self::split`] made back together (for [`PairConfig::reset`]).
    pub fn join(tx: IoTx, rx: IoRx) -> IoSide {
        let IoTx { instance, tx, epoch, generation, in_seg } = tx;
        let IoRx { rx, rx_bell, out_seg } = rx;
        IoSide { instance, tx, rx, rx_bell, epoch, generation, in_seg, out_seg }
    }
}

/// md's end of instance `instance`'s pair.
#[derive(Debug)]
pub struct MdSide {
    /// The md instance number.
    pub instance: u32,
    /// Consumer of `in`.
    pub rx: Consumer,
    /// md's doorbell for `in`: put it in epoll, pass it to `rx.prepare_sleep`.
    pub rx_bell: Doorbell,
    /// Producer of `out` (holds io_conn's doorbell).
    pub tx: Producer,
    /// The epoch of io_conn that created the pair.
    pub epoch: u64,
    /// The generation attached to; `rx.is_current()` turns false when io_conn resets the pair.
    pub generation: u64,
    /// io_conn's identity, from the segment header (watch it with a pidfd).
    pub creator: crate::sys::ProcId,
}

/// The two directions of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

impl Dir {
    fn tag(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
    fn direction(self) -> Direction {
        match self {
            Self::In => Direction::ToMd,
            Self::Out => Direction::ToIo,
        }
    }
}

impl PairConfig {
    /// Segment name of the io_conn → md ring: `NAME.in.I`.
    pub fn in_segment(&self, instance: u32) -> String {
        self.segment(Dir::In, instance)
    }
    /// Segment name of the md → io_conn ring: `NAME.out.I`.
    pub fn out_segment(&self, instance: u32) -> String {
        self.segment(Dir::Out, instance)
    }
    /// md's doorbell FIFO: `RUNTIME_DIR/NAME.in.I.fifo`.
    pub fn in_fifo(&self, instance: u32) -> PathBuf {
        self.fifo(Dir::In, instance)
    }
    /// io_conn's doorbell FIFO: `RUNTIME_DIR/NAME.out.I.fifo`.
    pub fn out_fifo(&self, instance: u32) -> PathBuf {
        self.fifo(Dir::Out, instance)
    }
    /// Bytes of each segment (one ring header + `capacity`).
    pub fn segment_bytes(&self) -> usize {
        ring::ring_bytes(self.capacity)
    }

    /// The geometry and identity this process writes into a ring it creates or rewrites.
    fn ring_params(&self, d: Dir, epoch: u64, generation: u64) -> RingParams {
        let me = ProcId::current();
        RingParams {
            capacity: self.capacity,
            max_payload: self.max_payload,
            direction: d.direction(),
            creator_pid: me.pid,
            creator_start_time: me.start_time,
            epoch,
            generation,
        }
    }

    fn segment(&self, d: Dir, instance: u32) -> String {
        format!("{}.{}.{instance}", self.name, d.tag())
    }
    fn fifo(&self, d: Dir, instance: u32) -> PathBuf {
        self.runtime_dir.join(format!("{}.{}.{instance}.fifo", self.name, d.tag()))
    }

    /// Creates the runtime directory (0700) if missing; checks that it is a directory, not a
    /// symlink, owned by us and not writable by group or others.
    pub fn ensure_runtime_dir(&self) -> Result<(), PairError> {
        let dir = &self.runtime_dir;
        let what = || dir.display().to_string();
        match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(other(what(), e)),
        }
        let md = std::fs::symlink_metadata(dir).map_err(|e| other(what(), e))?;
        let bad = |why: &str| {
            other(what(), io::Error::new(io::ErrorKind::PermissionDenied, why.to_string()))
        };
        if md.file_type().is_symlink() {
            return Err(bad("runtime directory is a symlink"));
        }
        if !md.is_dir() {
            return Err(bad("runtime directory is not a directory"));
        }
        if md.uid() != nix::unistd::geteuid().as_raw() {
            return Err(bad("runtime directory is not owned by us"));
        }
        if md.mode() & 0o022 != 0 {
            return Err(bad("runtime directory is writable by group or others"));
        }
        Ok(())
    }

    /// Checks an existing segment before anything replaces it: `Err(NotOurs)` if another uid
    /// owns it, `Err(Foreign)` if it is ours but not a ring, `Err(InUse)` if its recorded
    /// creator is alive. `Ok` for nothing there, a dead creator's ring, or a half-made one.
    fn check_leftover(&self, name: &str) -> Result<(), PairError> {
        let what = Segment::location_of(self.backend, name);
        match Segment::owner(self.backend, name) {
            Ok(None) => return Ok(()),
            Ok(Some(uid)) if uid != nix::unistd::geteuid().as_raw() => {
                return Err(PairError::NotOurs { what, uid });
            }
            Ok(Some(_)) => {}
            Err(e) => return Err(other(what, e)),
        }
        let seg = match Segment::attach(self.backend, name, false) {
            Ok(s) => s,
            Err(region::AttachError::NotFound { .. }) => return Ok(()),
            // Ours, but empty or unmappable: a creator died before sizing it.
            Err(e) => {
                log::debug!("leftover segment {name} cannot be attached ({e}); replacing it");
                return Ok(());
            }
        };
        let Some(id) = seg.ring_identity(0) else {
            log::debug!("leftover segment {what} is too short for a ring; replacing it");
            return Ok(());
        };
        if id.magic == 0 {
            // Ours and never initialised (a creator died before `ring::init`).
            return Ok(());
        }
        if id.magic != RING_MAGIC {
            return Err(PairError::Foreign { what, magic: id.magic });
        }
        if id.creator.pid != 0 {
            match id.creator.liveness() {
                Liveness::Alive => {
                    return Err(PairError::InUse { what, owner: id.creator.pid });
                }
                l => log::warn!(
                    "replacing stale segment {what} left by pid {} ({l:?})",
                    id.creator.pid
                ),
            }
        }
        Ok(())
    }

    /// Removes every leftover of `instance` whose creator is dead. `Err(InUse)` (and nothing
    /// removed) if a live process created either segment. Returns how many things were removed.
    pub fn remove_stale(&self, instance: u32) -> Result<usize, PairError> {
        for d in [Dir::In, Dir::Out] {
            self.check_leftover(&self.segment(d, instance))?;
        }
        self.remove_counted(instance)
    }

    fn remove_counted(&self, instance: u32) -> Result<usize, PairError> {
        let mut n = 0;
        let me = nix::unistd::geteuid().as_raw();
        for d in [Dir::In, Dir::Out] {
            let seg = self.segment(d, instance);
            // Never remove what another uid owns (root could: refuse instead).
            match Segment::owner(self.backend, &seg) {
                Ok(Some(uid)) if uid != me => {
                    return Err(PairError::NotOurs {
                        what: Segment::location_of(self.backend, &seg),
                        uid,
                    });
                }
                Ok(_) => {}
                Err(e) => return Err(other(seg, e)),
            }
            if Segment::remove(self.backend, &seg).map_err(|e| other(seg, e))? {
                n += 1;
            }
            let fifo = self.fifo(d, instance);
            match std::fs::remove_file(&fifo) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(other(fifo.display().to_string(), e)),
            }
        }
        Ok(n)
    }

    /// Creates one segment with a fresh ring.
    fn create_ring(&self, d: Dir, instance: u32, epoch: u64) -> Result<Arc<Segment>, PairError> {
        let name = self.segment(d, instance);
        // `Exists` here means another creator made it since `remove_stale` looked: a race
        // between two io_conns, reported as such (`Other` with the `Exists` source).
        let seg = Segment::create(self.backend, &name, self.segment_bytes(), MODE)
            .map_err(|e| other(name.clone(), e))?;
        let p = self.ring_params(d, epoch, 1);
        if let Err(e) = ring::init(&seg, 0, &p) {
            let _ = Segment::remove(self.backend, &name);
            return Err(other(name, e));
        }
        Ok(Arc::new(seg))
    }

    /// Creates (or, if a dead predecessor left them, replaces) instance `instance`'s segments and
    /// FIFOs under `epoch`, generation 1. io_conn only.
    pub fn create(&self, instance: u32, epoch: u64) -> Result<IoSide, PairError> {
        self.ensure_runtime_dir()?;
        // Leftovers: refuse if a live creator owns them, else clear everything of this instance
        // (FIFOs too: a fresh FIFO has our mode and no stale bytes, and an md still holding the
        // old one re-opens it when it re-attaches to the new epoch).
        self.remove_stale(instance)?;
        let in_seg = self.create_ring(Dir::In, instance, epoch)?;
        // Before the `out` ring exists: md attaches only once both rings are ready, so it
        // never sees this word before it is written.
        write_protocol(&in_seg);
        let out_seg = match self.create_ring(Dir::Out, instance, epoch) {
            Ok(s) => s,
            Err(e) => {
                let _ = Segment::remove(self.backend, in_seg.name());
                return Err(e);
            }
        };
        let r = (|| {
            let in_path = self.fifo(Dir::In, instance);
            let out_path = self.fifo(Dir::Out, instance);
            let in_bell = Doorbell::create(&in_path, MODE)
                .map_err(|e| other(in_path.display().to_string(), e))?;
            let rx_bell = Doorbell::create(&out_path, MODE)
                .map_err(|e| other(out_path.display().to_string(), e))?;
            self.io_side(instance, in_seg, out_seg, in_bell, rx_bell).map_err(|(e, _)| e)
        })();
        if r.is_err() {
            let _ = self.remove_counted(instance);
        }
        let side = r?;
        log::info!(
            "created queue pair {}.{{in,out}}.{instance} ({} backend, {} bytes per ring, epoch {epoch})",
            self.name,
            self.backend,
            self.capacity
        );
        Ok(side)
    }

    fn io_side(
        &self,
        instance: u32,
        in_seg: Arc<Segment>,
        out_seg: Arc<Segment>,
        in_bell: Doorbell,
        rx_bell: Doorbell,
    ) -> Result<IoSide, (PairError, Doorbell)> {
        let tx = match Producer::attach(in_seg.clone(), 0, Some(in_bell)) {
            Ok(tx) => tx,
            Err(e) => return Err((ring_err(in_seg.name(), e), rx_bell)),
        };
        let rx = match Consumer::attach(out_seg.clone(), 0) {
            Ok(rx) => rx,
            Err(e) => return Err((ring_err(out_seg.name(), e), rx_bell)),
        };
        let st = ProcId::current().start_time;
        // Relaxed: only the producer (us) writes the producer line, only the consumer (us) the
        // consumer line; readers accept staleness.
        tx.header().producer.start_time.store(st, Ordering::Relaxed);
        rx.header().consumer.start_time.store(st, Ordering::Relaxed);
        Ok(IoSide {
            instance,
            epoch: tx.epoch(),
            generation: tx.generation(),
            tx,
            rx,
            rx_bell,
            in_seg,
            out_seg,
        })
    }

    /// Removes instance `instance`'s segments and FIFOs (io_conn on clean exit). Missing ones are
    /// not an error.
    pub fn remove(&self, instance: u32) -> Result<(), PairError> {
        self.remove_counted(instance).map(drop)
    }
}

/// Writes [`PROTOCOL_VERSION`] into the `in` ring's header (io_conn, at create and reset).
fn write_protocol(in_seg: &Segment) {
    if let Ok(h) = ring::checked_header(in_seg, 0) {
        // Release: an md that loads the `out` ring's `ready` (stored after this) with Acquire,
        // or this word itself, sees the version.
        h.proto_io.store(PROTOCOL_VERSION, Ordering::Release);
    }
}

fn open_fifo(path: &Path) -> Result<Doorbell, PairError> {
    Doorbell::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            PairError::NotFound { what: path.display().to_string() }
        } else {
            other(path.display().to_string(), e)
        }
    })
}

fn ring_err(name: &str, e: RingAttachError) -> PairError {
    match e {
        RingAttachError::NotReady => PairError::NotReady { what: name.to_string() },
        e => other(name, e),
    }
}
