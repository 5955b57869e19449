//! Why a pair could not be created, reset or attached.

use std::fmt;

use crate::sys::ProcId;

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
        /// Ours ([`PROTOCOL_VERSION`](crate::layout::PROTOCOL_VERSION)).
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

pub(super) fn other(
    what: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> PairError {
    PairError::Other { what: what.into(), source: Box::new(e) }
}
