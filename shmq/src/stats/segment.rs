//! [`StatsSegment`]: creating the stats segment (io_conn) and attaching it writable (md), and
//! handing out the typed writers of its blocks.
//!
//! The creator zeroes the segment, writes the header and the descriptor table (from the counter
//! sets in [`super::schema`]), then stores `ready` with Release; nothing changes in the header or
//! the table after that.

use std::io;
use std::sync::Arc;

use crate::layout::Direction;
use crate::region::{Backend, Segment};
use crate::ring::Memory;
use crate::sync::Ordering;
use crate::sys::ProcId;

use super::abi::{
    COMMAND_NAME_WORDS, DescEntry, HEADER_BYTES, HELP_BYTES, MAX_MD_SLOTS, MD_COMMANDS_WORD,
    MD_NAMES_WORD, MD_OTHER_WORD, NAME_BYTES, SCHEMA_VERSION, SEGMENT_MODE, STATS_LAYOUT_VERSION,
    STATS_MAGIC, StatsHeader, UNIT_BYTES, plan, put_str, required_len,
};
use super::histogram::{WAIT_HISTOGRAM, bucket_upper_bound};
use super::mapping::{
    Backing, Geometry, Mapping, SegmentInfo, StatsError, from_attach, from_create, validate,
};
use super::names::{COMMANDS_PREFIX, OTHER_COMMAND};
use super::reader::StatsReader;
use super::schema::{
    CounterKind, IO_COUNTERS, MD_COUNTERS, Md, MdState, QUEUE_CONSUMER_COUNTERS,
    QUEUE_PRODUCER_COUNTERS, QueueConsumer, QueueProducer, SectionKind, Side,
};
use super::writer::{Block, IoStats, MdStats, QueueConsumerStats, QueueProducerStats};
use super::{segment_name, unix_ns};

/// A writable stats segment: io_conn creates it, each md attaches it.
#[derive(Debug, Clone)]
pub struct StatsSegment {
    map: Arc<Mapping>,
    geo: Arc<Geometry>,
}

impl StatsSegment {
    /// io_conn: creates `{name}.stats` exclusively (mode [`SEGMENT_MODE`], 0640: group-readable;
    /// the group is our effective gid) for `md_slots` slots under
    /// `epoch`. Fails with [`StatsError::Exists`] if it is there already: remove a dead
    /// predecessor's with [`StatsSegment::remove`] first.
    pub fn create(
        backend: Backend,
        name: &str,
        md_slots: u32,
        epoch: u64,
    ) -> Result<Self, StatsError> {
        check_slots(md_slots)?;
        let seg_name = segment_name(name);
        let seg = Segment::create(backend, &seg_name, required_len(md_slots), SEGMENT_MODE)
            .map_err(|e| from_create(e, &seg_name))?;
        Self::init(Mapping::new(Backing::Segment(seg))?, md_slots, epoch, ProcId::current())
    }

    /// Initialises a segment in any memory (tests, benchmarks): zeroes it and writes the header.
    pub fn create_in(
        mem: Arc<dyn Memory>,
        md_slots: u32,
        epoch: u64,
        creator: ProcId,
    ) -> Result<Self, StatsError> {
        check_slots(md_slots)?;
        Self::init(Mapping::new(Backing::Memory(mem))?, md_slots, epoch, creator)
    }

    fn init(map: Mapping, md_slots: u32, epoch: u64, creator: ProcId) -> Result<Self, StatsError> {
        let (sections, total, desc_count) = plan(md_slots);
        if map.len < total {
            return Err(StatsError::Truncated { len: map.len as u64, needed: total as u64 });
        }
        let base = map.base.as_ptr();
        // SAFETY: in bounds: `total` <= len (checked just above). Exclusive: the segment was just
        // created by us (O_EXCL) or handed to us fresh, and nobody reads it before `ready` = 1,
        // which is stored last below. Zeroing resets `ready` to 0 first.
        unsafe { std::ptr::write_bytes(base, 0, total) };
        let desc_offset = HEADER_BYTES;
        let mut d = 0usize;
        for (si, s) in sections.iter().take(SectionKind::ALL.len()).enumerate() {
            let Some(kind) = SectionKind::from_u32(s.kind) else { continue };
            // Described words come first; the md block's names area (the rest) has no entries.
            for word in 1..=s.desc_count as usize {
                let e = typed_entry(kind, si as u32, word);
                // SAFETY: in bounds: entry d < desc_count, and HEADER_BYTES + desc_count * 256 <=
                // the first section offset <= total <= len (`plan`). Aligned: 512 + d*256 from a
                // 128-aligned base. Exclusive: not yet published (see above).
                unsafe {
                    base.add(desc_offset + d * size_of::<DescEntry>()).cast::<DescEntry>().write(e)
                };
                d += 1;
            }
        }
        debug_assert_eq!(d as u32, desc_count);
        let h = base.cast::<StatsHeader>();
        // SAFETY: in bounds and aligned (len >= HEADER_BYTES, base 128-aligned). Exclusive until
        // `ready` (see above). Raw-pointer field writes: no reference to the header exists yet.
        unsafe {
            (&raw mut (*h).magic).write(STATS_MAGIC);
            (&raw mut (*h).layout_version).write(STATS_LAYOUT_VERSION);
            (&raw mut (*h).schema_version).write(SCHEMA_VERSION);
            (&raw mut (*h).epoch).write(epoch);
            (&raw mut (*h).created_unix_ns).write(unix_ns());
            (&raw mut (*h).creator_pid).write(creator.pid);
            (&raw mut (*h).md_slots).write(md_slots);
            (&raw mut (*h).creator_start_time).write(creator.start_time);
            (&raw mut (*h).total_len).write(total as u64);
            (&raw mut (*h).desc_offset).write(desc_offset as u64);
            (&raw mut (*h).desc_count).write(desc_count);
            (&raw mut (*h).desc_size).write(size_of::<DescEntry>() as u32);
            (&raw mut (*h).section_count).write(SectionKind::ALL.len() as u32);
            (&raw mut (*h).sections).write(sections);
        }
        // Release pairs with the Acquire load of `ready` in `validate`: the header, descriptors
        // and zeroed blocks above are visible to anyone who sees 1.
        map.header().ready.store(1, Ordering::Release);
        Self::from_mapping(map)
    }

    /// md: attaches `{name}.stats` writable (then take a slot with
    /// [`StatsSegment::attach_writer_md`]).
    pub fn attach(backend: Backend, name: &str) -> Result<Self, StatsError> {
        let seg_name = segment_name(name);
        let seg =
            Segment::attach(backend, &seg_name, true).map_err(|e| from_attach(e, &seg_name))?;
        Self::from_mapping(Mapping::new(Backing::Segment(seg))?)
    }

    /// Attaches a segment in any memory, writable (tests).
    pub fn attach_in(mem: Arc<dyn Memory>) -> Result<Self, StatsError> {
        Self::from_mapping(Mapping::new(Backing::Memory(mem))?)
    }

    fn from_mapping(map: Mapping) -> Result<Self, StatsError> {
        let geo = validate(&map)?;
        if geo.info.schema_version != SCHEMA_VERSION {
            return Err(StatsError::SchemaMismatch {
                found: geo.info.schema_version,
                expected: SCHEMA_VERSION,
            });
        }
        for k in SectionKind::ALL {
            let ok = geo.sections.iter().any(|s| {
                s.kind == Some(k)
                    && s.words == k.words()
                    && s.instances == if k == SectionKind::Io { 1 } else { geo.info.md_slots }
            });
            if !ok {
                return Err(StatsError::BadGeometry("typed section missing or resized"));
            }
        }
        Ok(Self { map: Arc::new(map), geo: Arc::new(geo) })
    }

    /// Removes `{name}.stats` (io_conn at clean exit, or a dead predecessor's at start).
    /// `Ok(false)` if there was none.
    pub fn remove(backend: Backend, name: &str) -> io::Result<bool> {
        Segment::remove(backend, &segment_name(name))
    }

    /// Header fields.
    pub fn info(&self) -> SegmentInfo {
        self.geo.info
    }

    /// The epoch of the creator.
    pub fn epoch(&self) -> u64 {
        self.geo.info.epoch
    }

    /// Number of md slots.
    pub fn md_slots(&self) -> u32 {
        self.geo.info.md_slots
    }

    fn block(&self, kind: SectionKind, instance: u32) -> Result<Block, StatsError> {
        let s = self
            .geo
            .sections
            .iter()
            .find(|s| s.kind == Some(kind))
            .ok_or(StatsError::BadGeometry("typed section missing"))?;
        if instance >= s.instances {
            return Err(StatsError::BadSlot(instance));
        }
        Ok(Block::new(self.map.clone(), s.offset + instance as usize * s.stride, s.words))
    }

    /// io_conn's block. Call once: the handle is the block's one writer.
    pub fn io(&self) -> IoStats {
        IoStats(self.block(SectionKind::Io, 0).expect("validated at attach"))
    }

    /// md: takes slot `slot` as its writer, zeroes its block and its two queue halves, writes its
    /// identity and `state = starting`. The caller must be the one md of that slot (io_conn's
    /// queue-pair attach guarantees it).
    pub fn attach_writer_md(&self, slot: u32, me: ProcId) -> Result<MdStats, StatsError> {
        let md = MdStats { b: self.block(SectionKind::Md, slot)?, slot };
        md.set_identity(me, self.epoch(), MdState::Starting);
        self.queue_producer(slot, Direction::ToIo)?.reset();
        self.queue_consumer(slot, Direction::ToMd)?.reset();
        Ok(md)
    }

    /// io_conn, after the pidfd of the md in `slot` said it exited: stores `state = dead` if the
    /// block still names `who` (the md is gone, so io_conn is now the block's only writer; this
    /// also repairs a sequence the md left odd). Returns whether it did.
    pub fn mark_md_dead(&self, slot: u32, who: ProcId) -> bool {
        let Ok(b) = self.block(SectionKind::Md, slot) else { return false };
        if b.get(Md::Pid.word()) != who.pid as u64
            || b.get(Md::ProcStartTicks.word()) != who.start_time
        {
            return false;
        }
        let md = MdStats { b, slot };
        if md.get(Md::State) != MdState::Exited as u64 {
            md.set_state(MdState::Dead);
        }
        true
    }

    /// The producer half of queue `dir` of `slot`: `ToMd` for io_conn, `ToIo` for md.
    pub fn queue_producer(
        &self,
        slot: u32,
        dir: Direction,
    ) -> Result<QueueProducerStats, StatsError> {
        Ok(QueueProducerStats(self.block(SectionKind::queue(dir, Side::Producer), slot)?))
    }

    /// The consumer half of queue `dir` of `slot`: `ToIo` for io_conn, `ToMd` for md.
    pub fn queue_consumer(
        &self,
        slot: u32,
        dir: Direction,
    ) -> Result<QueueConsumerStats, StatsError> {
        let b = self.block(SectionKind::queue(dir, Side::Consumer), slot)?;
        let partner = self.block(SectionKind::queue(dir, Side::Producer), slot)?;
        // Start from the stamp already there so a stale one is not recorded as a huge wait.
        let last_stamp = partner.get(QueueProducer::LastPublishNs.word());
        Ok(QueueConsumerStats { b, partner, last_stamp })
    }

    /// A reader over the same mapping (tests, in-process views).
    pub fn reader(&self) -> StatsReader {
        StatsReader::from_parts(self.map.clone(), self.geo.clone())
    }
}

fn check_slots(md_slots: u32) -> Result<(), StatsError> {
    if md_slots == 0 || md_slots > MAX_MD_SLOTS {
        return Err(StatsError::BadSlot(md_slots));
    }
    Ok(())
}

/// The descriptor entry of `word` (1-based) in a typed section.
fn typed_entry(kind: SectionKind, section: u32, word: usize) -> DescEntry {
    let mut e = DescEntry {
        name: [0; NAME_BYTES],
        unit: [0; UNIT_BYTES],
        help: [0; HELP_BYTES],
        section,
        word: word as u32,
        kind: 0,
        name_word: 0,
        bound: 0,
        _pad1: 0,
    };
    let i = word - 1;
    let (name, kind, unit, help) = match kind {
        SectionKind::Io => IO_COUNTERS[i].parts(),
        SectionKind::Md if i < Md::COUNT => MD_COUNTERS[i].parts(),
        SectionKind::Md if word == MD_OTHER_WORD => (
            format!("{COMMANDS_PREFIX}{OTHER_COMMAND}"),
            CounterKind::Counter,
            "requests",
            "Requests of kinds the md's service gave no name",
        ),
        SectionKind::Md => {
            let slot = word - MD_COMMANDS_WORD;
            e.name_word = (MD_NAMES_WORD + slot * COMMAND_NAME_WORDS) as u32;
            (
                // Shown only while the slot has no name: `#` never occurs in a command name.
                format!("{COMMANDS_PREFIX}#{slot}"),
                CounterKind::Counter,
                "requests",
                "Requests of this command, as counted by the md's service",
            )
        }
        SectionKind::InProducer | SectionKind::OutProducer => QUEUE_PRODUCER_COUNTERS[i].parts(),
        SectionKind::InConsumer | SectionKind::OutConsumer if i < QueueConsumer::COUNT => {
            QUEUE_CONSUMER_COUNTERS[i].parts()
        }
        SectionKind::InConsumer | SectionKind::OutConsumer => {
            e.bound = bucket_upper_bound(i - QueueConsumer::COUNT);
            (
                WAIT_HISTOGRAM.to_owned(),
                CounterKind::Bucket,
                "ns",
                "Queue wait: latest producer publish to consumer pick-up",
            )
        }
    };
    put_str(&mut e.name, &name);
    put_str(&mut e.unit, unit);
    put_str(&mut e.help, help);
    e.kind = kind as u32;
    e
}
