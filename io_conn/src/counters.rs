//! TEMPORARY shim until shmq::stats::{Io, IoCounts} land (stats branch).

use std::ops::{Index, IndexMut};

/// io_conn's counters.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Io {
    ConnectionsCurrent,
    ConnectionsAccepted,
    ConnectionsRefused,
    AcceptFdExhausted,
    ClosedByPeer,
    ClosedIdle,
    ClosedDeadline,
    ClosedOversized,
    ClosedCreditOverrun,
    ClosedError,
    ClosedByMd,
    ClosedMdGone,
    ClosedShutdown,
    BytesIn,
    BytesOut,
    MessagesIn,
    MessagesOut,
    FramingErrors,
    BackpressurePauses,
    MdPauses,
    Broadcasts,
    EpollWakeups,
    EpollEvents,
    StaleFrames,
    BadFrames,
    DrainedFrames,
    MdDeaths,
    MdAttaches,
    HeartbeatNs,
}

/// Local values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    v: [u64; 29],
}

impl Counters {
    /// One value.
    pub fn get(&self, e: Io) -> u64 {
        self.v[e as usize]
    }
}

impl Index<Io> for Counters {
    type Output = u64;
    fn index(&self, e: Io) -> &u64 {
        &self.v[e as usize]
    }
}

impl IndexMut<Io> for Counters {
    fn index_mut(&mut self, e: Io) -> &mut u64 {
        &mut self.v[e as usize]
    }
}
