//! The stats segment's ABI: the header, section and descriptor structs, the md block's command
//! area, and the const asserts that pin every offset.
//!
//! Everything here is shared with other processes (and other builds, through the descriptor
//! table): any change to a struct or to the block format bumps [`STATS_LAYOUT_VERSION`] in the same
//! commit; any change to a counter set bumps [`SCHEMA_VERSION`]. Only the creator
//! ([`super::StatsSegment`]) writes these structs, once, before it publishes `ready`.

use crate::sync::{AtomicU32, AtomicU64};

use super::histogram::CONSUMER_WORDS;
use super::schema::{Io, Md, QueueProducer, SectionKind};

/// `b"SHMSTATS"`: lets attach reject foreign segments early.
pub const STATS_MAGIC: u64 = u64::from_le_bytes(*b"SHMSTATS");
/// Bump on any change to [`StatsHeader`], [`SectionDesc`], [`DescEntry`] or the block format
/// (word 0 = sequence). A generic reader needs the same value.
///
/// 2: `DescEntry::name_word` (block-named words) and the md block's command area.
pub const STATS_LAYOUT_VERSION: u32 = 2;
/// Bump on any change to the counter sets ([`Io`], [`Md`], [`QueueProducer`], [`QueueConsumer`](super::QueueConsumer),
/// the histogram). Typed writers need the same value; a generic reader does not.
///
/// 2: the io_conn set gained `accept_fd_exhausted`, `stale_frames`, `bad_frames`,
/// `drained_frames`; the md set lost its service-specific request counters (now command slots).
/// 6: the io_conn set gained `proxy_refused_untrusted`, `proxy_refused_invalid`,
/// `proxy_headers` (PROXY protocol listeners), and `closed_memory`, `buffered_bytes` and
/// `budget_reached` (`io_conn.max_buffered`).
pub const SCHEMA_VERSION: u32 = 6;
/// Entries in [`StatsHeader::sections`].
pub const MAX_SECTIONS: usize = 8;
/// Size of [`StatsHeader`]; the descriptor table starts here.
pub const HEADER_BYTES: usize = 512;
/// Alignment and stride unit of every block.
pub const BLOCK_ALIGN: usize = 128;
/// Bytes of [`DescEntry::name`] (NUL-padded UTF-8).
pub const NAME_BYTES: usize = 48;
/// Bytes of [`DescEntry::unit`].
pub const UNIT_BYTES: usize = 16;
/// Bytes of [`DescEntry::help`].
pub const HELP_BYTES: usize = 160;
/// Bytes of [`SectionDesc::name`].
pub const SECTION_NAME_BYTES: usize = 16;
/// Largest md slot count a segment may describe.
pub const MAX_MD_SLOTS: u32 = 4096;
/// Mode of the created segment: the owner (io_conn; md attaches writable as the same user) reads
/// and writes, its group reads. The group is the creator's effective gid, `shmsrv` under systemd,
/// so operators in that group can run viewstats. The queue segments and FIFOs stay 0600.
pub const SEGMENT_MODE: u32 = 0o640;

// ---------------------------------------------------------------------------------------------
// ABI structs
// ---------------------------------------------------------------------------------------------

/// One section of blocks: `instances` blocks of `stride` bytes from `offset`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SectionDesc {
    /// Short name (`io`, `md`, `in.producer`, …), NUL-padded UTF-8.
    pub name: [u8; SECTION_NAME_BYTES],
    /// [`SectionKind`] as `u32` (0 = unknown to this build; still readable generically).
    pub kind: u32,
    /// Number of blocks (1 for `io`, the md slot count for the others).
    pub instances: u32,
    /// Offset of the first block from the segment base; a multiple of [`BLOCK_ALIGN`].
    pub offset: u64,
    /// Bytes from one block to the next; a multiple of [`BLOCK_ALIGN`].
    pub stride: u32,
    /// Value words per block (word 0, the sequence, not included).
    pub words: u32,
    /// Index of this section's first entry in the descriptor table.
    pub desc_first: u32,
    /// Number of descriptor entries of this section.
    pub desc_count: u32,
}

/// At offset 0 of the stats segment. Written once by the creator before `ready`.
#[repr(C)]
#[derive(Debug)]
pub struct StatsHeader {
    /// Always [`STATS_MAGIC`].
    pub magic: u64,
    /// [`STATS_LAYOUT_VERSION`] of the creator.
    pub layout_version: u32,
    /// [`SCHEMA_VERSION`] of the creator.
    pub schema_version: u32,
    /// The creator's (io_conn's) epoch: new on every start.
    pub epoch: u64,
    /// When the segment was created, Unix time in nanoseconds.
    pub created_unix_ns: u64,
    /// Creator's pid.
    pub creator_pid: u32,
    /// Number of md slots (instances of the per-slot sections).
    pub md_slots: u32,
    /// Creator's start time in clock ticks since boot, so a reused pid is not taken for it.
    pub creator_start_time: u64,
    /// Bytes of the segment the layout uses (the mapping may be longer, never shorter).
    pub total_len: u64,
    /// Offset of the descriptor table.
    pub desc_offset: u64,
    /// Entries in the descriptor table.
    pub desc_count: u32,
    /// Bytes per descriptor entry (`size_of::<DescEntry>()`).
    pub desc_size: u32,
    /// Used entries of `sections`.
    pub section_count: u32,
    /// 0 while the creator initialises; it stores 1 (Release) as its last write.
    pub ready: AtomicU32,
    _pad0: [u64; 6],
    /// The sections, `section_count` of them used.
    pub sections: [SectionDesc; MAX_SECTIONS],
}

/// One descriptor: what one word of a section's blocks means.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DescEntry {
    /// Counter name, NUL-padded UTF-8 (`connections_accepted`).
    pub name: [u8; NAME_BYTES],
    /// Unit (`connections`, `bytes`, `ns`, `unix_ns`, `mono_ns`, …), NUL-padded.
    pub unit: [u8; UNIT_BYTES],
    /// One-line help, NUL-padded.
    pub help: [u8; HELP_BYTES],
    /// Index of the section in [`StatsHeader::sections`].
    pub section: u32,
    /// Word index in the block, `1..=words`.
    pub word: u32,
    /// [`CounterKind`](super::CounterKind) as `u32`.
    pub kind: u32,
    /// 0: the word is called `name`. `k >= 1`: the block's writer names it: words
    /// `k..k + COMMAND_NAME_WORDS` of the same block hold a NUL-padded name (see
    /// [`super::decode_name`]), and a reader calls the word `{prefix}{that name}`, where the prefix
    /// is `name` up to and including its first `.` (`commands.3` → `commands.dumb.ping`). An
    /// empty area leaves the word called `name`.
    pub name_word: u32,
    /// For [`CounterKind::Bucket`](super::CounterKind::Bucket): inclusive upper bound in `unit` (`u64::MAX` = +Inf).
    pub bound: u64,
    pub(super) _pad1: u64,
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(StatsHeader, magic) == 0);
    assert!(offset_of!(StatsHeader, layout_version) == 8);
    assert!(offset_of!(StatsHeader, schema_version) == 12);
    assert!(offset_of!(StatsHeader, epoch) == 16);
    assert!(offset_of!(StatsHeader, created_unix_ns) == 24);
    assert!(offset_of!(StatsHeader, creator_pid) == 32);
    assert!(offset_of!(StatsHeader, md_slots) == 36);
    assert!(offset_of!(StatsHeader, creator_start_time) == 40);
    assert!(offset_of!(StatsHeader, total_len) == 48);
    assert!(offset_of!(StatsHeader, desc_offset) == 56);
    assert!(offset_of!(StatsHeader, desc_count) == 64);
    assert!(offset_of!(StatsHeader, desc_size) == 68);
    assert!(offset_of!(StatsHeader, section_count) == 72);
    assert!(offset_of!(StatsHeader, ready) == 76);
    assert!(offset_of!(StatsHeader, sections) == 128);
    assert!(size_of::<StatsHeader>() == HEADER_BYTES);
    assert!(offset_of!(SectionDesc, kind) == 16);
    assert!(offset_of!(SectionDesc, instances) == 20);
    assert!(offset_of!(SectionDesc, offset) == 24);
    assert!(offset_of!(SectionDesc, stride) == 32);
    assert!(offset_of!(SectionDesc, words) == 36);
    assert!(offset_of!(SectionDesc, desc_first) == 40);
    assert!(offset_of!(SectionDesc, desc_count) == 44);
    assert!(size_of::<SectionDesc>() == 48);
    assert!(offset_of!(DescEntry, unit) == 48);
    assert!(offset_of!(DescEntry, help) == 64);
    assert!(offset_of!(DescEntry, section) == 224);
    assert!(offset_of!(DescEntry, word) == 228);
    assert!(offset_of!(DescEntry, kind) == 232);
    assert!(offset_of!(DescEntry, name_word) == 236);
    assert!(offset_of!(DescEntry, bound) == 240);
    assert!(size_of::<DescEntry>() == 256);
    assert!(size_of::<AtomicU64>() == 8 && align_of::<AtomicU64>() == 8);
    // Every typed block fits the stride the creator gives it.
    assert!(block_stride(Io::COUNT) == 384);
    assert!(block_stride(MD_WORDS) == 1024);
    // The md block: counters, command counts, the "other" count, then the names area, which
    // ends the block; each name is a whole number of words.
    assert!(MD_COMMANDS_WORD == 1 + Md::COUNT);
    assert!(MD_COMMANDS_WORD == 33);
    assert!(MD_OTHER_WORD == 49);
    assert!(MD_NAMES_WORD == 50);
    assert!(COMMAND_NAME_BYTES == COMMAND_NAME_WORDS * 8);
    assert!(MD_NAMES_WORD + COMMAND_SLOTS * COMMAND_NAME_WORDS == MD_WORDS + 1);
    assert!(MD_WORDS == 113);
    assert!(block_stride(QueueProducer::COUNT) == 128);
    assert!(block_stride(CONSUMER_WORDS) == 512);
};

/// Command slots of an md block: request counters its service names when md takes the slot.
pub const COMMAND_SLOTS: usize = 16;
/// Bytes of one command name in the names area (NUL-padded, so at most this many).
pub const COMMAND_NAME_BYTES: usize = 32;
/// Words of one command name.
pub const COMMAND_NAME_WORDS: usize = COMMAND_NAME_BYTES / 8;
/// Word (in the md block) of command slot 0's count; slot `i` is word `MD_COMMANDS_WORD + i`.
pub const MD_COMMANDS_WORD: usize = 1 + Md::COUNT;
/// Word of the "other" count: requests of kinds without a registered name.
pub const MD_OTHER_WORD: usize = MD_COMMANDS_WORD + COMMAND_SLOTS;
/// First word of the names area; slot `i`'s name is words
/// `MD_NAMES_WORD + i * COMMAND_NAME_WORDS ..` (little-endian bytes, NUL-padded).
pub const MD_NAMES_WORD: usize = MD_OTHER_WORD + 1;
/// Value words of an md block: [`Md`] counters, command counts, other, names area.
pub const MD_WORDS: usize = Md::COUNT + COMMAND_SLOTS + 1 + COMMAND_SLOTS * COMMAND_NAME_WORDS;
/// Described words of an md block (the names area has no descriptors: it names the slots).
pub const MD_DESCRIBED: usize = Md::COUNT + COMMAND_SLOTS + 1;

/// Bytes per block for `words` value words (plus the sequence word), rounded to [`BLOCK_ALIGN`].
pub const fn block_stride(words: usize) -> usize {
    ((words + 1) * 8).div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN
}

/// Bytes a segment with `md_slots` slots needs (rounded up to 4 KiB).
pub fn required_len(md_slots: u32) -> usize {
    plan(md_slots).1
}

/// Section offsets, the total length and the descriptor count for `md_slots`.
pub(super) fn plan(md_slots: u32) -> ([SectionDesc; MAX_SECTIONS], usize, u32) {
    let mut sections = [SectionDesc::default(); MAX_SECTIONS];
    let mut desc_total = 0u32;
    for (i, k) in SectionKind::ALL.into_iter().enumerate() {
        let n = k.described() as u32;
        sections[i].kind = k as u32;
        sections[i].words = k.words() as u32;
        sections[i].stride = block_stride(k.words()) as u32;
        sections[i].instances = if k == SectionKind::Io { 1 } else { md_slots };
        sections[i].desc_first = desc_total;
        sections[i].desc_count = n;
        put_str(&mut sections[i].name, k.name());
        desc_total += n;
    }
    let desc_bytes = desc_total as usize * size_of::<DescEntry>();
    let mut off = (HEADER_BYTES + desc_bytes).next_multiple_of(BLOCK_ALIGN);
    for s in sections.iter_mut().take(SectionKind::ALL.len()) {
        s.offset = off as u64;
        off += s.instances as usize * s.stride as usize;
    }
    (sections, off.next_multiple_of(4096), desc_total)
}

pub(super) fn put_str(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

pub(super) fn get_str(src: &[u8]) -> String {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).into_owned()
}
