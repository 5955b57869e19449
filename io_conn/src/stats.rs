//! io_conn's side of the stats segment (`shmq::stats`): creates `{name}.stats`, mirrors the
//! loop's [`Counters`] into io_conn's block, and keeps the io_conn halves of every md queue.
//!
//! io_conn creates the segment after its queue pairs (so a live predecessor has already been
//! refused) and before md children start (md attaches it right after its pair, and checks that
//! its epoch is the pairs' epoch). It removes the segment at exit, after one last mirror.
//!
//! # Cost
//!
//! The event loop keeps counting in its [`Counters`] array; [`Stats::mirror`] copies it
//! into the segment once per loop iteration: one relaxed store per counter, no read-modify-write,
//! no syscall, no allocation (docs/BENCHMARKS.md "Stats counters": ~2 ns per store). The queue
//! halves are mirrored for live md slots only.
//!
//! # Which block io_conn writes
//!
//! | block | what | when |
//! |---|---|---|
//! | `io` | every [`Counters`] value (the heartbeat among them), a plain copy | each loop iteration |
//! | `in.producer` slot i | the `in.i` ring's producer counters, depth, generation, publish stamp | each iteration with md i live; stamp on each flush that published |
//! | `out.consumer` slot i | the `out.i` ring's consumer counters, generation, wait histogram | as above; a wait sample when io_conn picks up a batch |
//! | `md` slot i | `state = dead` only, after md i's pidfd said it exited | on md death |

use anyhow::Context;
use shmq::layout::Direction;
use shmq::region::{Backend, Segment};
use shmq::stats::{IoStats, QueueConsumerStats, QueueProducerStats, StatsReader, StatsSegment};
use shmq::sys::{Liveness, ProcId};

use crate::counters::Counters;

/// io_conn's halves of one md slot's queues.
#[derive(Debug)]
pub(crate) struct SlotStats {
    /// `in.i` producer half (io_conn → md).
    pub(crate) inprod: QueueProducerStats,
    /// `out.i` consumer half (md → io_conn), with the wait histogram.
    pub(crate) outcons: QueueConsumerStats,
}

/// The stats segment as io_conn writes it. Removed by [`Stats::remove`] (the server's cleanup).
#[derive(Debug)]
pub(crate) struct Stats {
    seg: StatsSegment,
    io: IoStats,
    slots: Vec<SlotStats>,
    backend: Backend,
    name: String,
    removed: bool,
}

impl Stats {
    /// Creates `{name}.stats` for `md_slots` slots under `epoch`, replacing a dead predecessor's.
    /// Call only after the queue pairs were created (that refused a live predecessor).
    pub(crate) fn create(
        backend: Backend,
        name: &str,
        md_slots: u32,
        epoch: u64,
    ) -> anyhow::Result<Self> {
        let seg_name = shmq::stats::segment_name(name);
        remove_stale(backend, name, &seg_name)?;
        let seg = StatsSegment::create(backend, name, md_slots, epoch)
            .with_context(|| format!("creating stats segment {seg_name}"))?;
        let io = seg.io();
        let mut slots = Vec::with_capacity(md_slots as usize);
        for i in 0..md_slots {
            let inprod = seg
                .queue_producer(i, Direction::ToMd)
                .with_context(|| format!("stats: in.{i} producer half"))?;
            let outcons = seg
                .queue_consumer(i, Direction::ToIo)
                .with_context(|| format!("stats: out.{i} consumer half"))?;
            slots.push(SlotStats { inprod, outcons });
        }
        log::info!("created stats segment {seg_name} ({md_slots} md slots, epoch {epoch})");
        Ok(Self { seg, io, slots, backend, name: name.to_owned(), removed: false })
    }

    /// Copies every counter (the heartbeat among them) into io_conn's block: relaxed stores
    /// only (see the module docs, "Cost").
    #[inline]
    pub(crate) fn mirror(&self, c: &Counters) {
        self.io.publish(c);
    }

    /// io_conn's halves of slot `i`'s queues.
    #[inline]
    pub(crate) fn slot(&mut self, i: u32) -> Option<&mut SlotStats> {
        self.slots.get_mut(i as usize)
    }

    /// md `who` of slot `i` is gone: `state = dead` in its block (if the block still names it).
    pub(crate) fn mark_md_dead(&self, i: u32, who: ProcId) {
        if !self.seg.mark_md_dead(i, who) {
            log::debug!("stats: md slot {i} does not name pid {} (never attached stats)", who.pid);
        }
    }

    /// Removes the segment (idempotent). Mappings others hold stay valid until they unmap.
    pub(crate) fn remove(&mut self) {
        if std::mem::replace(&mut self.removed, true) {
            return;
        }
        match StatsSegment::remove(self.backend, &self.name) {
            Ok(_) => {}
            Err(e) => {
                log::warn!("removing stats segment {}: {e}", shmq::stats::segment_name(&self.name))
            }
        }
    }
}

/// Removes a leftover `{name}.stats` whose creator is dead. Refuses (error) if its creator still
/// runs: the queue pairs' check should have caught that already, so this is a second line of
/// defence, not the main one. Never removes a segment another uid owns, or one of ours that is
/// not a stats segment (nonzero foreign magic): this program did not make it.
fn remove_stale(backend: Backend, name: &str, seg_name: &str) -> anyhow::Result<()> {
    let what = Segment::location_of(backend, seg_name);
    match Segment::owner(backend, seg_name).with_context(|| format!("looking at {what}"))? {
        None => return Ok(()),
        Some(uid) if uid != nix::unistd::geteuid().as_raw() => anyhow::bail!(
            "{what} is owned by uid {uid}, not us: remove it or choose another shared.name"
        ),
        Some(_) => {}
    }
    match StatsReader::attach(backend, name) {
        Ok(r) => {
            let info = r.info();
            let creator = ProcId { pid: info.creator_pid, start_time: info.creator_start_time };
            if creator != ProcId::current() && creator.liveness() == Liveness::Alive {
                anyhow::bail!(
                    "stats segment {seg_name} belongs to a running process (pid {}): is another \
                     io_conn with shared.name = {name:?} running?",
                    creator.pid
                );
            }
            log::warn!(
                "replacing stale stats segment {seg_name} left by pid {} (epoch {})",
                creator.pid,
                info.epoch
            );
        }
        Err(shmq::stats::StatsError::NotFound { .. }) => return Ok(()),
        Err(shmq::stats::StatsError::BadMagic(m)) if m != 0 => anyhow::bail!(
            "{what} is not a shmsrv stats segment (magic {m:#018x}); not removing it: remove it \
             or choose another shared.name"
        ),
        // Half-written (ours) or of another layout: nobody can use it; replace it.
        Err(e) => log::warn!("replacing unusable stats segment {seg_name} ({e})"),
    }
    StatsSegment::remove(backend, name)
        .with_context(|| format!("removing stale stats segment {seg_name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shmq::ring::HeapMemory;
    use shmq::stats::required_len;

    use super::*;
    use crate::counters::Io;

    /// Publishing is a copy: every counter io_conn keeps lands in its block under its schema
    /// name, and nothing else is needed for it to get there.
    #[test]
    fn every_counter_is_published_under_its_name() {
        let mut c = Counters::default();
        for (k, &e) in Io::ALL.iter().enumerate() {
            c[e] = 1000 + k as u64;
        }
        let mem = Arc::new(HeapMemory::new(required_len(1)));
        let seg =
            StatsSegment::create_in(mem, 1, 1, ProcId { pid: 1, start_time: 1 }).expect("segment");
        seg.io().publish(&c);
        let snap = seg.reader().snapshot();
        for (k, &e) in Io::ALL.iter().enumerate() {
            let name = e.desc().name;
            assert_eq!(snap.get("io", 0, name), Some(1000 + k as u64), "io counter {name}");
        }
    }
}
