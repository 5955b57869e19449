//! Mapping a stats segment and validating it: the mapped bytes ([`Mapping`]), the geometry
//! checked once at attach ([`Section`], [`Descriptor`], [`SegmentInfo`]), and [`StatsError`].
//!
//! The segment is untrusted input to a reader: [`validate`] copies the header once (volatile),
//! checks every offset and length against the real mapping length, and rejects anything that
//! would make a later access go out of bounds. After that, blocks are accessed only through
//! [`Mapping::words`], which re-checks its bounds.

use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::region::{self, Segment};
use crate::ring::Memory;
use crate::sync::{AtomicU64, Ordering};

use super::abi::{
    BLOCK_ALIGN, COMMAND_NAME_WORDS, DescEntry, HEADER_BYTES, MAX_MD_SLOTS, MAX_SECTIONS,
    STATS_LAYOUT_VERSION, STATS_MAGIC, StatsHeader, get_str,
};
use super::schema::{CounterKind, SectionKind};

/// Why a stats segment could not be created or attached.
#[derive(Debug)]
#[non_exhaustive]
pub enum StatsError {
    /// No segment of that name: no server running under it.
    NotFound {
        /// The segment name (`{name}.stats`).
        name: String,
    },
    /// A segment of that name exists already (a live server, or a stale one to remove).
    Exists {
        /// The segment name.
        name: String,
    },
    /// The kernel refused.
    Io {
        /// The segment name.
        name: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The segment is owned by a uid we do not trust (see [`crate::region`], "Owners").
    NotOwner {
        /// The segment name.
        name: String,
        /// Its owner.
        uid: u32,
    },
    /// The creator has not set `ready` yet; retry.
    NotReady,
    /// Not a stats segment.
    BadMagic(u64),
    /// Created by a build with another [`STATS_LAYOUT_VERSION`].
    VersionMismatch {
        /// In the segment.
        found: u32,
        /// This build's.
        expected: u32,
    },
    /// Created by a build with another counter set (typed writers only).
    SchemaMismatch {
        /// In the segment.
        found: u32,
        /// This build's.
        expected: u32,
    },
    /// The mapping is shorter than the header says.
    Truncated {
        /// Mapping length.
        len: u64,
        /// Length the header implies.
        needed: u64,
    },
    /// A header field is impossible (what is named).
    BadGeometry(&'static str),
    /// `md_slots` is 0 or above [`MAX_MD_SLOTS`], or a slot index is out of range.
    BadSlot(u32),
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { name } => write!(f, "no stats segment {name}"),
            Self::Exists { name } => write!(f, "stats segment {name} exists already"),
            Self::Io { name, .. } => write!(f, "cannot map stats segment {name}"),
            Self::NotOwner { name, uid } => write!(
                f,
                "stats segment {name} is owned by uid {uid}, not by us or the server user {}: \
                 refusing it",
                region::SERVER_USER
            ),
            Self::NotReady => f.write_str("stats segment is still being initialised"),
            Self::BadMagic(m) => write!(f, "not a stats segment (magic {m:#018x})"),
            Self::VersionMismatch { found, expected } => {
                write!(f, "stats layout version {found}, this build reads {expected}")
            }
            Self::SchemaMismatch { found, expected } => {
                write!(f, "stats schema version {found}, this build writes {expected}")
            }
            Self::Truncated { len, needed } => {
                write!(f, "stats segment is {len} bytes, its header implies {needed}")
            }
            Self::BadGeometry(what) => write!(f, "stats segment header is corrupt: {what}"),
            Self::BadSlot(s) => write!(f, "md slot {s} is out of range"),
        }
    }
}

impl std::error::Error for StatsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub(super) fn from_create(e: region::CreateError, name: &str) -> StatsError {
    match e {
        region::CreateError::Exists { name } => StatsError::Exists { name },
        region::CreateError::Io { name, source } => StatsError::Io { name, source },
        #[allow(unreachable_patterns)]
        _ => StatsError::Io { name: name.to_owned(), source: io::Error::other("create failed") },
    }
}

pub(super) fn from_attach(e: region::AttachError, name: &str) -> StatsError {
    match e {
        region::AttachError::NotFound { name } => StatsError::NotFound { name },
        region::AttachError::Io { name, source } => StatsError::Io { name, source },
        region::AttachError::NotOwner { name, uid } => StatsError::NotOwner { name, uid },
        #[allow(unreachable_patterns)]
        _ => StatsError::Io { name: name.to_owned(), source: io::Error::other("attach failed") },
    }
}

pub(super) enum Backing {
    /// A real shared-memory segment.
    Segment(Segment),
    /// Any memory (tests, benchmarks).
    Memory(Arc<dyn Memory>),
}

impl fmt::Debug for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Segment(s) => s.fmt(f),
            Self::Memory(m) => write!(f, "Memory({} bytes)", m.len()),
        }
    }
}

/// The mapped bytes plus what keeps them mapped.
#[derive(Debug)]
pub(super) struct Mapping {
    pub(super) base: NonNull<u8>,
    pub(super) len: usize,
    _backing: Backing,
}

// SAFETY: `Mapping` only hands out shared references to atomics (and volatile copies of bytes
// written once before `ready`) inside a mapping that `_backing` keeps alive and never moves;
// atomics may be used from any thread. `Segment` and `dyn Memory` are Send + Sync themselves.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: every shared access goes through atomics or volatile reads.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(super) fn new(backing: Backing) -> Result<Self, StatsError> {
        let (ptr, len) = match &backing {
            Backing::Segment(s) => (s.as_ptr(), s.len()),
            Backing::Memory(m) => (m.as_ptr(), m.len()),
        };
        let base = NonNull::new(ptr).ok_or(StatsError::BadGeometry("null mapping"))?;
        if !(ptr as usize).is_multiple_of(BLOCK_ALIGN) {
            return Err(StatsError::BadGeometry("mapping not 128-byte aligned"));
        }
        if len < HEADER_BYTES {
            return Err(StatsError::Truncated { len: len as u64, needed: HEADER_BYTES as u64 });
        }
        Ok(Self { base, len, _backing: backing })
    }

    pub(super) fn header(&self) -> &StatsHeader {
        // SAFETY: in bounds: len >= HEADER_BYTES (checked in `new`) = size_of::<StatsHeader>();
        // aligned: the base is 128-aligned (checked) and the header needs 8. Aliasing: only the
        // creator writes the plain fields, before `ready`, and only through a raw pointer
        // (`create_in`); after that every access is a read or an atomic on `ready`.
        unsafe { &*self.base.as_ptr().cast::<StatsHeader>() }
    }

    /// The words of a block: `1 + words` atomics from `offset`.
    pub(super) fn words(&self, offset: usize, words: usize) -> &[AtomicU64] {
        assert!(
            offset.is_multiple_of(8) && offset + (words + 1) * 8 <= self.len,
            "block out of bounds"
        );
        // SAFETY: in bounds (asserted just above, against the real mapping length); aligned: the
        // base is 128-aligned and offset a multiple of 8; AtomicU64 has the size and alignment of
        // u64 (const-asserted) and every bit pattern is valid. Aliasing: the block area is only
        // ever accessed through these atomics, by every process. On a read-only mapping only loads
        // are performed, which std documents as allowed for atomics of native size.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(offset).cast::<AtomicU64>(),
                words + 1,
            )
        }
    }
}

/// A section as validated at attach.
#[derive(Debug, Clone)]
pub struct Section {
    /// Name from the segment.
    pub name: String,
    /// Kind, if this build knows it.
    pub kind: Option<SectionKind>,
    /// Number of blocks.
    pub instances: u32,
    pub(super) offset: usize,
    pub(super) stride: usize,
    /// Value words per block.
    pub words: usize,
    /// The descriptors of this section, in table order.
    pub descriptors: Vec<Descriptor>,
}

/// A descriptor as read from the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Counter name.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// One-line help.
    pub help: String,
    /// Kind (unknown kinds are read as gauges).
    pub kind: CounterKind,
    /// Word index in the block, `1..=words`; the value is `values[word - 1]` of a snapshot.
    pub word: usize,
    /// Bucket upper bound (inclusive), for [`CounterKind::Bucket`].
    pub bound: u64,
    /// 0: the word is called `name`. Else the first word of the area where the block's writer
    /// names it ([`DescEntry::name_word`]); [`super::Snapshot::counters`] resolves it.
    pub name_word: usize,
}

/// The header fields a viewer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The creator's epoch (changes on every restart of io_conn).
    pub epoch: u64,
    /// Creation time, Unix ns.
    pub created_unix_ns: u64,
    /// Creator (io_conn) pid.
    pub creator_pid: u32,
    /// Creator start time, clock ticks since boot.
    pub creator_start_time: u64,
    /// md slots.
    pub md_slots: u32,
    /// Layout version.
    pub layout_version: u32,
    /// Schema version of the creator.
    pub schema_version: u32,
}

#[derive(Debug)]
pub(super) struct Geometry {
    pub(super) info: SegmentInfo,
    pub(super) sections: Arc<[Section]>,
}

/// Loads `ready`, copies the header, checks every field against the mapping, reads descriptors.
pub(super) fn validate(map: &Mapping) -> Result<Geometry, StatsError> {
    let hp = map.header();
    // Acquire pairs with the creator's Release store of `ready` in `create_in`: every header,
    // descriptor and zeroed block byte written before it is visible once we see 1.
    if hp.ready.load(Ordering::Acquire) != 1 {
        // The magic may already be wrong; report that first so a foreign file is not "not ready".
        // SAFETY: in bounds and aligned (see `Mapping::header`); volatile because another
        // process may be writing it right now (the creator, before `ready`).
        let magic = unsafe { std::ptr::read_volatile(&raw const hp.magic) };
        if magic != 0 && magic != STATS_MAGIC {
            return Err(StatsError::BadMagic(magic));
        }
        return Err(StatsError::NotReady);
    }
    // SAFETY: in bounds and aligned (see `Mapping::header`). A volatile bitwise copy: the plain
    // fields were written once before `ready`, but the segment is untrusted and a foreign writer
    // could change them under us; the copy is checked below and never re-read.
    let h: StatsHeader = unsafe { std::ptr::read_volatile(std::ptr::from_ref(hp)) };
    if h.magic != STATS_MAGIC {
        return Err(StatsError::BadMagic(h.magic));
    }
    if h.layout_version != STATS_LAYOUT_VERSION {
        return Err(StatsError::VersionMismatch {
            found: h.layout_version,
            expected: STATS_LAYOUT_VERSION,
        });
    }
    let len = map.len as u64;
    if h.total_len > len || h.total_len < HEADER_BYTES as u64 {
        return Err(StatsError::Truncated { len, needed: h.total_len });
    }
    if h.desc_size as usize != size_of::<DescEntry>() {
        return Err(StatsError::BadGeometry("descriptor size"));
    }
    if h.section_count as usize > MAX_SECTIONS {
        return Err(StatsError::BadGeometry("section count"));
    }
    if h.md_slots > MAX_MD_SLOTS {
        return Err(StatsError::BadGeometry("md slot count"));
    }
    let desc_end = (h.desc_count as u64)
        .checked_mul(h.desc_size as u64)
        .and_then(|b| b.checked_add(h.desc_offset))
        .ok_or(StatsError::BadGeometry("descriptor table"))?;
    if !h.desc_offset.is_multiple_of(8)
        || h.desc_offset < HEADER_BYTES as u64
        || desc_end > h.total_len
    {
        return Err(StatsError::BadGeometry("descriptor table"));
    }
    let mut sections = Vec::with_capacity(h.section_count as usize);
    for (si, s) in h.sections.iter().take(h.section_count as usize).enumerate() {
        let end = (s.instances as u64)
            .checked_mul(s.stride as u64)
            .and_then(|b| b.checked_add(s.offset))
            .ok_or(StatsError::BadGeometry("section size"))?;
        if s.offset % BLOCK_ALIGN as u64 != 0
            || !(s.stride as usize).is_multiple_of(BLOCK_ALIGN)
            || s.instances > MAX_MD_SLOTS
            || (s.words as u64 + 1) * 8 > s.stride as u64
            || s.offset < desc_end
            || end > h.total_len
        {
            return Err(StatsError::BadGeometry("section bounds"));
        }
        let first = s.desc_first as u64;
        if first + s.desc_count as u64 > h.desc_count as u64 {
            return Err(StatsError::BadGeometry("section descriptors"));
        }
        let mut descriptors = Vec::with_capacity(s.desc_count as usize);
        for d in 0..s.desc_count as usize {
            let off = h.desc_offset as usize + (s.desc_first as usize + d) * size_of::<DescEntry>();
            // SAFETY: in bounds: off + 256 <= desc_end <= total_len <= mapping length (checked
            // above); aligned: desc_offset is a multiple of 8 and entries are 256 bytes, DescEntry
            // needs 8, and the base is 128-aligned. Volatile copy of bytes written once before
            // `ready`; any bit pattern is a valid DescEntry (integers and byte arrays only).
            let e: DescEntry =
                unsafe { std::ptr::read_volatile(map.base.as_ptr().add(off).cast::<DescEntry>()) };
            if e.word == 0 || e.word > s.words {
                return Err(StatsError::BadGeometry("descriptor word"));
            }
            let name_word = e.name_word as usize;
            if name_word != 0 && name_word + COMMAND_NAME_WORDS - 1 > s.words as usize {
                return Err(StatsError::BadGeometry("descriptor name area"));
            }
            let _ = si; // entries may name their section; the table order is authoritative
            descriptors.push(Descriptor {
                name: get_str(&e.name),
                unit: get_str(&e.unit),
                help: get_str(&e.help),
                kind: CounterKind::from_u32(e.kind).unwrap_or(CounterKind::Gauge),
                word: e.word as usize,
                bound: e.bound,
                name_word,
            });
        }
        sections.push(Section {
            name: get_str(&s.name),
            kind: SectionKind::from_u32(s.kind),
            instances: s.instances,
            offset: s.offset as usize,
            stride: s.stride as usize,
            words: s.words as usize,
            descriptors,
        });
    }
    let info = SegmentInfo {
        epoch: h.epoch,
        created_unix_ns: h.created_unix_ns,
        creator_pid: h.creator_pid,
        creator_start_time: h.creator_start_time,
        md_slots: h.md_slots,
        layout_version: h.layout_version,
        schema_version: h.schema_version,
    };
    Ok(Geometry { info, sections: sections.into() })
}
