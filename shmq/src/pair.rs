//! The queue pair of one md instance: `in` (io_conn → md) and `out` (md → io_conn), each a ring in
//! its own segment with a FIFO doorbell in the runtime directory. io_conn creates, md attaches.
//!
//! STUB: the API below is fixed; the implementation lands with issue 3 (shmq 2/2).
#![allow(missing_docs, dead_code, unused_variables)]

use std::fmt;
use std::path::PathBuf;

use crate::doorbell::Doorbell;
use crate::region::Backend;
use crate::ring::{Consumer, Producer};

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
    pub instance: u32,
    /// Producer of `in` (holds md's doorbell and rings it).
    pub tx: Producer,
    /// Consumer of `out`.
    pub rx: Consumer,
    /// io_conn's doorbell for `out`: put it in epoll, pass it to `rx.prepare_sleep`.
    pub rx_bell: Doorbell,
    pub epoch: u64,
    pub generation: u64,
}

/// md's end of instance `instance`'s pair.
#[derive(Debug)]
pub struct MdSide {
    pub instance: u32,
    /// Consumer of `in`.
    pub rx: Consumer,
    /// md's doorbell for `in`: put it in epoll, pass it to `rx.prepare_sleep`.
    pub rx_bell: Doorbell,
    /// Producer of `out` (holds io_conn's doorbell).
    pub tx: Producer,
    pub epoch: u64,
    pub generation: u64,
    /// io_conn's identity, from the segment header (watch it with a pidfd).
    pub creator: crate::sys::ProcId,
}

/// Why a pair could not be created, reset or attached.
#[derive(Debug)]
#[non_exhaustive]
pub enum PairError {
    /// A live process owns a segment or FIFO of that name.
    InUse { what: String, owner: u32 },
    /// Not created yet (or io_conn not running): retry later.
    NotFound { what: String },
    /// Not ready / being reset: retry shortly.
    NotReady { what: String },
    /// Something else; `what` names the segment or FIFO.
    Other { what: String, source: Box<dyn std::error::Error + Send + Sync> },
}

impl fmt::Display for PairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InUse { what, owner } => write!(f, "{what} is in use by live pid {owner}"),
            Self::NotFound { what } => write!(f, "{what} does not exist"),
            Self::NotReady { what } => write!(f, "{what} is not ready"),
            Self::Other { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for PairError {}

impl PairConfig {
    /// Creates (or, if a dead predecessor left them, replaces) instance `instance`'s segments and
    /// FIFOs under `epoch`, generation 1. io_conn only.
    pub fn create(&self, instance: u32, epoch: u64) -> Result<IoSide, PairError> {
        todo!("issue 3")
    }
    /// Resets both rings in place under a new generation (after md died, or on corruption),
    /// drains both FIFOs; returns fresh producer/consumer handles.
    pub fn reset(&self, side: IoSide) -> Result<IoSide, PairError> {
        todo!("issue 3")
    }
    /// Attaches as md instance `instance` (records our pid in the consumer/producer lines).
    pub fn attach(&self, instance: u32) -> Result<MdSide, PairError> {
        todo!("issue 3")
    }
    /// Removes instance `instance`'s segments and FIFOs (io_conn on clean exit). Missing ones are
    /// not an error.
    pub fn remove(&self, instance: u32) -> Result<(), PairError> {
        todo!("issue 3")
    }
}
