//! io_conn's counters: defined once, in the stats schema ([`shmq::stats::Io`]).
//!
//! The loop keeps them in a [`Counters`] array indexed by [`Io`] (`c[Io::BytesIn] += n`), written
//! only by the loop; `crate::stats` publishes it into io_conn's block of the stats segment once
//! per iteration as a plain copy, so a counter cannot exist here and not in the segment (and
//! viewstats shows each with its schema help). [`crate::run`] returns the final values and logs
//! them at exit. Nothing here is logged per event.

pub use shmq::stats::Io;

/// io_conn's counters, indexed by [`Io`].
pub type Counters = shmq::stats::IoCounts;
