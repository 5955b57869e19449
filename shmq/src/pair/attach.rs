//! md's side: attaching to a pair and claiming it.

use std::io;
use std::sync::Arc;

use crate::layout::{Direction, PROTOCOL_VERSION};
use crate::region::{self, Segment};
use crate::ring::holder::{self, Claim};
use crate::ring::{self, Consumer, Producer};
use crate::sync::Ordering;
use crate::sys::{Liveness, ProcId};

use super::*;

impl PairConfig {
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
}
