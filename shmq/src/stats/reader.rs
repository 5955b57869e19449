//! [`StatsReader`]: a read-only, generic view of a stats segment, and its [`Snapshot`]s.
//!
//! viewstats uses it; it never writes a byte (the mapping is read-only) and knows sections and
//! words only through the segment's descriptor table, so a viewer of another build reads any
//! segment of the same [`super::STATS_LAYOUT_VERSION`]. Words a block's writer names itself (an
//! md's command counts, see [`super::names`]) are resolved per block, from names read in the same
//! seqlock read as the values: [`Snapshot::counters`] lists every value of a block with its name.

use std::sync::Arc;

use crate::region::{Backend, Segment};
use crate::ring::Memory;

use super::mapping::{
    Backing, Descriptor, Geometry, Mapping, Section, SegmentInfo, StatsError, from_attach, validate,
};
use super::names::{NameArea, decode_name};
use super::schema::CounterKind;
use super::seqlock::read_consistent;
use super::{COMMAND_NAME_WORDS, monotonic_ns, segment_name, unix_ns};

/// A read-only view of a stats segment (viewstats). Generic: it knows sections and words only
/// through the descriptor table.
#[derive(Debug, Clone)]
pub struct StatsReader {
    map: Arc<Mapping>,
    geo: Arc<Geometry>,
}

/// One block's values at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSnapshot {
    /// Index into [`Snapshot::sections`].
    pub section: usize,
    /// Block index in its section (the md slot).
    pub instance: u32,
    /// Values, `values[word - 1]`.
    pub values: Vec<u64>,
    /// False if the sequence lock never read stable within [`super::SEQLOCK_RETRIES`] (a writer
    /// died mid-update, or writes too often): values are the last read.
    pub consistent: bool,
    /// Names the block's writer gave its block-named words (empty name areas are left out).
    pub names: Vec<BlockName>,
}

/// The name a block's writer gave one of its words ([`Descriptor::name_word`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockName {
    /// The word it names.
    pub word: usize,
    /// The full name (`commands.dumb.ping`), or `None` if the area held garbage or a name the
    /// block already had: the word is then shown under its descriptor's name.
    pub name: Option<String>,
}

/// One value of a block, with its name resolved.
#[derive(Debug, Clone, Copy)]
pub struct Counter<'a> {
    /// The name to show: the descriptor's, or the one the block's writer registered.
    pub name: &'a str,
    /// Its descriptor (unit, kind, help, word).
    pub desc: &'a Descriptor,
    /// Its value.
    pub value: u64,
    /// The block's writer named this word with garbage (or a duplicate); `name` is the
    /// descriptor's placeholder.
    pub bad_name: bool,
}

/// Resolves the block-named words of a block from its values.
fn resolve_names(sec: &Section, values: &[u64]) -> Vec<BlockName> {
    let mut out: Vec<BlockName> = Vec::new();
    for d in sec.descriptors.iter().filter(|d| d.name_word != 0) {
        // In bounds: `validate` checked name_word + COMMAND_NAME_WORDS - 1 <= words.
        let area = values.get(d.name_word - 1..d.name_word - 1 + COMMAND_NAME_WORDS);
        let name = match area.map_or(NameArea::Garbage, decode_name) {
            NameArea::Empty => continue,
            NameArea::Garbage => None,
            NameArea::Name(n) => {
                let prefix = d.name.find('.').map_or("", |i| &d.name[..=i]);
                let full = format!("{prefix}{n}");
                let taken = sec.descriptors.iter().any(|x| x.name_word == 0 && x.name == full)
                    || out.iter().any(|x| x.name.as_deref() == Some(full.as_str()));
                (!taken).then_some(full)
            }
        };
        out.push(BlockName { word: d.word, name });
    }
    out
}

/// Every block at one moment (each block consistent in itself, blocks read one after another).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Header fields.
    pub info: SegmentInfo,
    /// Sections with their descriptors.
    pub sections: Arc<[Section]>,
    /// Blocks, section by section, instance by instance.
    pub blocks: Vec<BlockSnapshot>,
    /// CLOCK_MONOTONIC when taken.
    pub taken_mono_ns: u64,
    /// Unix time when taken.
    pub taken_unix_ns: u64,
}

impl Snapshot {
    /// The block of section `section` (by name) and instance.
    pub fn block(&self, section: &str, instance: u32) -> Option<&BlockSnapshot> {
        let si = self.sections.iter().position(|s| s.name == section)?;
        self.blocks.iter().find(|b| b.section == si && b.instance == instance)
    }
    /// One value by section name, instance and counter name (as [`Snapshot::counters`] names
    /// it: `commands.dumb.ping` for a registered command).
    pub fn get(&self, section: &str, instance: u32, name: &str) -> Option<u64> {
        let b = self.block(section, instance)?;
        self.counters(b).find(|c| c.name == name).map(|c| c.value)
    }
    /// Every value of `b` in descriptor order, named: block-named words under the name their
    /// writer registered; such a word whose name area is empty is left out while it is 0 (an
    /// unused command slot) and shown under its descriptor's name otherwise.
    pub fn counters<'a>(&'a self, b: &'a BlockSnapshot) -> impl Iterator<Item = Counter<'a>> + 'a {
        self.sections[b.section].descriptors.iter().filter_map(move |d| {
            let value = b.values.get(d.word - 1).copied().unwrap_or(0);
            let mut c = Counter { name: &d.name, desc: d, value, bad_name: false };
            if d.name_word != 0 {
                match b.names.iter().find(|n| n.word == d.word) {
                    Some(BlockName { name: Some(n), .. }) => c.name = n,
                    Some(BlockName { name: None, .. }) => c.bad_name = true,
                    None if value == 0 => return None,
                    None => {}
                }
            }
            Some(c)
        })
    }
    /// The histogram `name` of a block as `(bound, count)` pairs, and its sum.
    pub fn histogram(&self, b: &BlockSnapshot, name: &str) -> (Vec<(u64, u64)>, u64) {
        let s = &self.sections[b.section];
        let mut buckets = Vec::new();
        let mut sum = 0;
        for d in s.descriptors.iter().filter(|d| d.name == name) {
            let v = b.values.get(d.word - 1).copied().unwrap_or(0);
            match d.kind {
                CounterKind::Bucket => buckets.push((d.bound, v)),
                CounterKind::HistSum => sum = v,
                _ => {}
            }
        }
        buckets.sort_by_key(|b| b.0);
        (buckets, sum)
    }
}

impl StatsReader {
    /// viewstats: attaches `{name}.stats` read-only (O_RDONLY + PROT_READ / SHM_RDONLY).
    pub fn attach(backend: Backend, name: &str) -> Result<Self, StatsError> {
        let seg_name = segment_name(name);
        let seg =
            Segment::attach(backend, &seg_name, false).map_err(|e| from_attach(e, &seg_name))?;
        Self::from_mapping(Mapping::new(Backing::Segment(seg))?)
    }

    /// Attaches a segment in any memory (tests). Never writes to it.
    pub fn attach_in(mem: Arc<dyn Memory>) -> Result<Self, StatsError> {
        Self::from_mapping(Mapping::new(Backing::Memory(mem))?)
    }

    fn from_mapping(map: Mapping) -> Result<Self, StatsError> {
        let geo = validate(&map)?;
        Ok(Self::from_parts(Arc::new(map), Arc::new(geo)))
    }

    /// A reader over a mapping validated already (a writer's own view).
    pub(super) fn from_parts(map: Arc<Mapping>, geo: Arc<Geometry>) -> Self {
        Self { map, geo }
    }

    /// Header fields.
    pub fn info(&self) -> SegmentInfo {
        self.geo.info
    }

    /// Sections and descriptors.
    pub fn sections(&self) -> &[Section] {
        &self.geo.sections
    }

    /// Byte offset of a block from the segment base (word 0 is its sequence).
    pub fn block_offset(&self, section: usize, instance: u32) -> usize {
        let s = &self.geo.sections[section];
        s.offset + instance as usize * s.stride
    }

    /// Reads one block into `out` (`out.len()` = the section's words). Returns consistency.
    pub fn read_block(&self, section: usize, instance: u32, out: &mut [u64]) -> bool {
        let s = &self.geo.sections[section];
        assert!(instance < s.instances && out.len() == s.words, "block out of range");
        read_consistent(self.map.words(s.offset + instance as usize * s.stride, s.words), out)
    }

    /// Reads every block.
    pub fn snapshot(&self) -> Snapshot {
        let mut blocks = Vec::new();
        for (si, s) in self.geo.sections.iter().enumerate() {
            for i in 0..s.instances {
                let mut values = vec![0; s.words];
                let consistent = self.read_block(si, i, &mut values);
                let names = resolve_names(s, &values);
                blocks.push(BlockSnapshot { section: si, instance: i, values, consistent, names });
            }
        }
        Snapshot {
            info: self.geo.info,
            sections: self.geo.sections.clone(),
            blocks,
            taken_mono_ns: monotonic_ns(),
            taken_unix_ns: unix_ns(),
        }
    }
}
