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

use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::doorbell::Doorbell;
use crate::layout::{Direction, PROTOCOL_VERSION, RING_MAGIC, RingParams};
use crate::region::{self, Backend, Segment};
use crate::ring::holder::{self, Claim};
use crate::ring::{self, Consumer, Producer, RingAttachError};
use crate::sync::Ordering;
use crate::sys::{Liveness, ProcId};

#[cfg(doc)]
use crate::region::sysv_key;

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

/// Attempts [`PairConfig::reset`] (and each [`PairConfig::retry_reset`]) makes before it gives
/// up for now.
const RESET_ATTEMPTS: u32 = 3;

/// What a failed reset hands back: the pair's segments and io_conn's doorbell (still the same
/// fd the caller's epoll knows), for [`PairConfig::retry_reset`].
#[derive(Debug)]
pub struct PendingReset {
    /// The md instance number.
    pub instance: u32,
    epoch: u64,
    /// The last generation tried (the next attempt uses one more).
    generation: u64,
    in_seg: Arc<Segment>,
    out_seg: Arc<Segment>,
    rx_bell: Doorbell,
}

/// A reset that did not finish: why, and what to retry it with.
#[derive(Debug)]
pub struct ResetFailed {
    /// Why the last attempt failed.
    pub error: PairError,
    /// Pass it to [`PairConfig::retry_reset`].
    pub pending: PendingReset,
}

impl fmt::Display for ResetFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "resetting queue pair {} failed: {}", self.pending.instance, self.error)
    }
}

impl std::error::Error for ResetFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Why a pair could not be created, reset or attached.
#[derive(Debug)]
#[non_exhaustive]
pub enum PairError {
    /// A live process owns a segment or FIFO of that name.
    InUse {
        /// The segment.
        what: String,
        /// Its creator's pid.
        owner: u32,
    },
    /// A segment of that name is owned by another uid: not ours to use or remove.
    NotOurs {
        /// Where it is (`/dev/shm/NAME` or the SysV key).
        what: String,
        /// Its owner.
        uid: u32,
    },
    /// A segment of ours by that name (SysV: that key) holds something else than a ring: not
    /// removed, since this program did not make it.
    Foreign {
        /// Where it is.
        what: String,
        /// The magic found.
        magic: u64,
    },
    /// Not created yet (or io_conn not running): retry later.
    NotFound {
        /// The segment or FIFO.
        what: String,
    },
    /// Not ready / being reset: retry shortly.
    NotReady {
        /// The segment.
        what: String,
    },
    /// md only: a live process holds the instance (another md serves it). Do not retry.
    Held {
        /// The instance.
        instance: u32,
        /// Who holds it.
        holder: ProcId,
    },
    /// md only: a dead process still holds the instance; io_conn clears the claim when it resets
    /// the pair (after it noticed the death and delivered the dead md's replies). Retry.
    HeldByDead {
        /// The instance.
        instance: u32,
        /// Who held it.
        holder: ProcId,
    },
    /// md only: io_conn speaks another frame protocol (an upgrade of one side without the
    /// other). Nothing was claimed; retry (an io_conn of our version may replace it).
    ProtocolMismatch {
        /// The instance.
        instance: u32,
        /// io_conn's version, from the pair (0: a build from before versions).
        io: u32,
        /// Ours ([`PROTOCOL_VERSION`]).
        md: u32,
    },
    /// Something else; `what` names the segment or FIFO.
    Other {
        /// The segment, FIFO or directory.
        what: String,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl fmt::Display for PairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InUse { what, owner } => write!(f, "{what} is in use by live pid {owner}"),
            Self::NotOurs { what, uid } => write!(
                f,
                "{what} is owned by uid {uid}, not us: remove it or choose another shared.name"
            ),
            Self::Foreign { what, magic } => write!(
                f,
                "{what} is not a shmsrv queue segment (magic {magic:#018x}); not removing it: \
                 remove it or choose another shared.name"
            ),
            Self::NotFound { what } => write!(f, "{what} does not exist"),
            Self::NotReady { what } => write!(f, "{what} is not ready"),
            Self::Held { instance, holder } => write!(
                f,
                "instance {instance} is held by md pid {} (start time {}): another md serves it",
                holder.pid, holder.start_time
            ),
            Self::HeldByDead { instance, holder } => write!(
                f,
                "instance {instance} is still held by md pid {}, which has exited: waiting for \
                 io_conn to reset the pair",
                holder.pid
            ),
            Self::ProtocolMismatch { instance, io, md } => write!(
                f,
                "instance {instance}: io_conn speaks frame protocol version {io}, this md speaks \
                 version {md}: refusing to attach (upgrade both to one release)"
            ),
            Self::Other { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for PairError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Other { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

fn other(what: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> PairError {
    PairError::Other { what: what.into(), source: Box::new(e) }
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
        let me = ProcId::current();
        let p = RingParams {
            capacity: self.capacity,
            max_payload: self.max_payload,
            direction: d.direction(),
            creator_pid: me.pid,
            creator_start_time: me.start_time,
            epoch,
            generation: 1,
        };
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

    /// Resets both rings in place under a new generation (after md died, or on corruption),
    /// drains both FIFOs; returns fresh producer/consumer handles. `rx_bell` is kept (same fd, so
    /// it stays registered in the caller's epoll set).
    ///
    /// A still-running md notices through `is_current()` turning false and must re-attach;
    /// nothing queued under the old generation is delivered. A stale md side cannot write into
    /// the new generation (its publish is a compare-and-swap from an old position, see
    /// [`crate::ring::generation_base`]); should io_conn's own attach still fail (a damaged
    /// header, a FIFO gone), the reset is tried again a few times under a newer generation, and
    /// if that fails too, [`ResetFailed`] hands back everything [`Self::retry_reset`] needs
    /// (issue 14, finding 7: the instance is never lost for good).
    pub fn reset(&self, side: IoSide) -> Result<IoSide, ResetFailed> {
        let IoSide { instance, tx, rx, rx_bell, in_seg, out_seg, generation, epoch } = side;
        drop((tx, rx));
        self.retry_reset(PendingReset { instance, epoch, generation, in_seg, out_seg, rx_bell })
    }

    /// Tries a failed [`Self::reset`] again (io_conn calls it on its timer until it works).
    pub fn retry_reset(&self, pending: PendingReset) -> Result<IoSide, ResetFailed> {
        let mut p = pending;
        let mut last = None;
        for _ in 0..RESET_ATTEMPTS {
            match self.reset_once(p) {
                Ok(side) => return Ok(side),
                Err(f) => {
                    log::debug!("reset of instance {}: {}", f.pending.instance, f.error);
                    p = f.pending;
                    last = Some(f.error);
                }
            }
        }
        let error = last.expect("RESET_ATTEMPTS > 0");
        Err(ResetFailed { error, pending: p })
    }

    /// One reset attempt under generation `pending.generation + 1`.
    fn reset_once(&self, pending: PendingReset) -> Result<IoSide, ResetFailed> {
        let PendingReset { instance, epoch, generation, in_seg, out_seg, rx_bell } = pending;
        // The holder's claim goes with the old generation only if the holder is dead: a live one
        // (reset for a corrupt ring or a bad HELLO) keeps it and re-attaches as its own claim,
        // and nobody else can slip in meanwhile. (A header too damaged to check releases
        // nothing here; `reset_ring` rewrites it, holder word included.)
        let dead = ring::checked_header(&*in_seg, 0)
            .ok()
            .and_then(holder::holder)
            .filter(|h| h.liveness() != Liveness::Alive)
            .and_then(|h| holder::pack(h).map(|w| (h, w)));
        if dead.is_some()
            && let Ok(h) = ring::checked_header(&*in_seg, 0)
        {
            // The dead holder's protocol version goes with its claim. Cleared while the claim
            // still stands (nobody else can claim until the release below), so a successor's
            // own store, which follows its claim, is never wiped. Relaxed: the release in
            // `reset_releasing` is a Release RMW that orders it before the claim can change.
            h.proto_md.store(0, Ordering::Relaxed);
        }
        let new_gen = generation + 1;
        let fail = |error, rx_bell| ResetFailed {
            error,
            pending: PendingReset {
                instance,
                epoch,
                generation: new_gen,
                in_seg: in_seg.clone(),
                out_seg: out_seg.clone(),
                rx_bell,
            },
        };
        for (d, seg) in [(Dir::In, &in_seg), (Dir::Out, &out_seg)] {
            let release = if d == Dir::In { dead.map(|(_, w)| w) } else { None };
            match self.reset_ring(d, seg, epoch, new_gen, release) {
                Ok(true) => {
                    if let Some((h, _)) = dead {
                        log::info!(
                            "instance {instance}: released the claim of md pid {} (exited)",
                            h.pid
                        );
                    }
                }
                Ok(false) => {}
                Err(e) => return Err(fail(e, rx_bell)),
            }
        }
        // A damaged header is rewritten by `ring::init`, which zeroes it: write ours again.
        write_protocol(&in_seg);
        let in_path = self.fifo(Dir::In, instance);
        let in_bell = match Doorbell::open(&in_path) {
            Ok(b) => b,
            Err(e) => return Err(fail(other(in_path.display().to_string(), e), rx_bell)),
        };
        // Stale wake-ups from the old generation: harmless, but drained so the counts start clean.
        let _ = in_bell.drain();
        let _ = rx_bell.drain();
        match self.io_side(instance, in_seg.clone(), out_seg.clone(), in_bell, rx_bell) {
            Ok(side) => {
                log::info!(
                    "reset queue pair {} to generation {new_gen}",
                    self.segment(Dir::In, instance)
                );
                Ok(side)
            }
            Err((e, rx_bell)) => Err(fail(e, rx_bell)),
        }
    }

    /// Resets one ring to `generation` in place, clearing the holder word if it still holds
    /// `release` (a dead md). If the header itself is damaged (a peer scribbled over magic or
    /// geometry), it is written afresh from this config instead (holder 0). Returns whether a
    /// claim was released.
    fn reset_ring(
        &self,
        d: Dir,
        seg: &Arc<Segment>,
        epoch: u64,
        generation: u64,
        release: Option<u64>,
    ) -> Result<bool, PairError> {
        let geometry_ok = |h: &crate::layout::RingHeader| {
            h.capacity == self.capacity
                && h.max_payload == self.max_payload
                && h.direction == d.direction() as u32
        };
        // Validate by attaching as the side io_conn plays on this ring (which it does next anyway).
        let reset = match release {
            Some(w) => ring::reset_releasing(&**seg, 0, generation, w),
            None => ring::reset(&**seg, 0, generation).map(|()| false),
        };
        let released = *reset.as_ref().unwrap_or(&false);
        let intact = reset.is_ok()
            && match d {
                Dir::In => {
                    Producer::attach(seg.clone(), 0, None).is_ok_and(|p| geometry_ok(p.header()))
                }
                Dir::Out => Consumer::attach(seg.clone(), 0).is_ok_and(|c| geometry_ok(c.header())),
            };
        if intact {
            return Ok(released);
        }
        log::warn!("ring header of {} damaged; rewriting it", seg.name());
        let me = ProcId::current();
        let p = RingParams {
            capacity: self.capacity,
            max_payload: self.max_payload,
            direction: d.direction(),
            creator_pid: me.pid,
            creator_start_time: me.start_time,
            epoch,
            generation,
        };
        ring::init(&**seg, 0, &p).map_err(|e| other(seg.name(), e))?;
        Ok(release.is_some())
    }

    /// Attaches as md instance `instance`: claims the pair for this process (the holder word,
    /// [`crate::ring::holder`]) and records our pid in the consumer/producer lines.
    ///
    /// `NotFound` if io_conn has not created the pair (or removed it); `NotReady` while it is
    /// being created or reset (retry shortly); `Held` if another live md holds it (do not
    /// retry); `HeldByDead` while a dead md's claim waits for io_conn's reset (retry); `Other`
    /// for a segment that is not a valid ring.
    ///
    /// The claim outlives the returned side: attaching again from this process (after a reset)
    /// finds it its own. It is released only by io_conn, after this process has exited.
    pub fn attach(&self, instance: u32) -> Result<MdSide, PairError> {
        let in_name = self.segment(Dir::In, instance);
        let out_name = self.segment(Dir::Out, instance);
        let in_seg = self.attach_segment(&in_name)?;
        let out_seg = self.attach_segment(&out_name)?;
        // Claim first, before attaching a side records anything in the rings: a refused md
        // leaves no trace in a pair another md serves.
        let generation = self.claim(instance, &in_seg, &out_seg, &in_name, &out_name)?;
        let rx = Consumer::attach(in_seg.clone(), 0).map_err(|e| ring_err(&in_name, e))?;
        let in_path = self.fifo(Dir::In, instance);
        let out_path = self.fifo(Dir::Out, instance);
        let rx_bell = open_fifo(&in_path)?;
        let out_bell = open_fifo(&out_path)?;
        let tx = Producer::attach(out_seg.clone(), 0, Some(out_bell))
            .map_err(|e| ring_err(&out_name, e))?;
        if rx.header().direction != Direction::ToMd as u32
            || tx.header().direction != Direction::ToIo as u32
        {
            return Err(other(
                in_name,
                io::Error::new(io::ErrorKind::InvalidData, "ring directions are swapped"),
            ));
        }
        if rx.epoch() != tx.epoch()
            || rx.generation() != generation
            || tx.generation() != generation
        {
            // Reset again since the claim (the claim stays ours), or a mix of two epochs.
            return Err(PairError::NotReady { what: in_name });
        }
        let h = rx.header();
        let creator = ProcId { pid: h.creator_pid, start_time: h.creator_start_time };
        let st = ProcId::current().start_time;
        // Relaxed: we are the only writer of these lines now; readers accept staleness.
        rx.header().consumer.start_time.store(st, Ordering::Relaxed);
        tx.header().producer.start_time.store(st, Ordering::Relaxed);
        Ok(MdSide {
            instance,
            epoch: rx.epoch(),
            generation: rx.generation(),
            rx,
            rx_bell,
            tx,
            creator,
        })
    }

    /// md's claim on the pair (see [`crate::ring::holder`]): both headers checked and in one
    /// generation, the compare-and-swap, then the re-check that the generation is still current.
    /// Returns the generation claimed under.
    fn claim(
        &self,
        instance: u32,
        in_seg: &Arc<Segment>,
        out_seg: &Arc<Segment>,
        in_name: &str,
        out_name: &str,
    ) -> Result<u64, PairError> {
        let in_h = ring::checked_header(&**in_seg, 0).map_err(|e| ring_err(in_name, e))?;
        let out_h = ring::checked_header(&**out_seg, 0).map_err(|e| ring_err(out_name, e))?;
        // Acquire pairs with the creator's Release stores in `ring::reset_header`.
        let generation = in_h.generation.load(Ordering::Acquire);
        if in_h.epoch != out_h.epoch || out_h.generation.load(Ordering::Acquire) != generation {
            // Caught between the resets of the two rings, or a mix of two epochs.
            return Err(PairError::NotReady { what: in_name.to_string() });
        }
        // Before the claim: an md of another protocol leaves no trace in the pair.
        // Relaxed: io_conn wrote it before the `out` ring's Release store of `ready`, which our
        // `checked_header` above loaded with Acquire.
        let io = in_h.proto_io.load(Ordering::Relaxed);
        if io != PROTOCOL_VERSION {
            return Err(PairError::ProtocolMismatch { instance, io, md: PROTOCOL_VERSION });
        }
        let me = ProcId::current();
        let word = holder::pack(me).ok_or_else(|| {
            other(
                in_name,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "pid {} / start time {} do not fit a holder word",
                        me.pid, me.start_time
                    ),
                ),
            )
        })?;
        match holder::claim(in_h, word) {
            Claim::Claimed => log::debug!("claimed instance {instance}"),
            Claim::Ours => {}
            Claim::HeldBy(h) if h.liveness() == Liveness::Alive => {
                return Err(PairError::Held { instance, holder: h });
            }
            Claim::HeldBy(h) => return Err(PairError::HeldByDead { instance, holder: h }),
        }
        // Ours now: say which protocol we speak. Release pairs with io_conn's Acquire load in
        // `IoTx::md_protocol` (our HELLO, pushed after this, is what makes it look).
        in_h.proto_md.store(PROTOCOL_VERSION, Ordering::Release);
        // SYNC POINT with io_conn's release in `ring::reset_releasing`: a claim taken during a
        // reset must not attach to the generation being replaced. The claim stays ours; the
        // retry finds it so.
        if !ring::is_current(in_h, generation) || !ring::is_current(out_h, generation) {
            return Err(PairError::NotReady { what: in_name.to_string() });
        }
        Ok(generation)
    }

    fn attach_segment(&self, name: &str) -> Result<Arc<Segment>, PairError> {
        match Segment::attach(self.backend, name, true) {
            Ok(s) => Ok(Arc::new(s)),
            Err(region::AttachError::NotFound { .. }) => {
                Err(PairError::NotFound { what: name.to_string() })
            }
            Err(region::AttachError::Empty { .. }) => {
                Err(PairError::NotReady { what: name.to_string() })
            }
            Err(e) => Err(other(name, e)),
        }
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
