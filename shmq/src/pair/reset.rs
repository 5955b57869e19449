//! Resetting a pair to a new generation (io_conn, when md died or a ring is corrupt), and
//! retrying a reset that did not finish.

use std::fmt;
use std::sync::Arc;

use crate::doorbell::Doorbell;
use crate::region::Segment;
use crate::ring::holder;
use crate::ring::{self, Consumer, Producer};
use crate::sync::Ordering;
use crate::sys::Liveness;

use super::*;

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

impl PairConfig {
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
        let p = self.ring_params(d, epoch, generation);
        ring::init(&**seg, 0, &p).map_err(|e| other(seg.name(), e))?;
        Ok(release.is_some())
    }
}
