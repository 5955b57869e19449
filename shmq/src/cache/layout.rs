//! The cache segment's layout: header, slot and chunk formats, and the row plan (one definition,
//! used by io_conn, which creates the segment, and by md, which attaches it).
//!
//! ```text
//! offset 0      Header (HEADER_BYTES): identity line, shared counters line, the mutex line,
//!               the locked state (free list, key count, the write journal)
//! slots_offset  [Slot; total_slots]   rows back to back: row r has `row_primes[r]` slots
//! chunks_offset [Chunk; chunks]       CHUNK_BYTES each: next index (u32 LE), then data
//! ```
//!
//! Everything below the identity line is written only under the table mutex, except the
//! counters line (relaxed atomics, statistics only). Layout changes bump [`CACHE_LAYOUT_VERSION`].

use crate::sync::{AtomicU32, AtomicU64};

/// "SHMKVC01" little-endian.
pub const CACHE_MAGIC: u64 = u64::from_le_bytes(*b"SHMKVC01");
/// Bumped with every change of this file's structs or of the row plan.
pub const CACHE_LAYOUT_VERSION: u32 = 1;
/// Rows of the multi-hash. Each key has one candidate slot per row (`hash % row_primes[r]`).
pub const ROWS: usize = 16;
/// Bytes per pool chunk: a 4-byte next index, then [`CHUNK_DATA`] bytes of key and value.
pub const CHUNK_BYTES: usize = 64;
/// Key and value bytes a chunk carries.
pub const CHUNK_DATA: usize = CHUNK_BYTES - 4;
/// "No chunk": the end of a chain or of the free list.
pub const NIL: u32 = u32::MAX;
/// Bytes of the header (slots start here).
pub const HEADER_BYTES: usize = 1024;
/// Bytes reserved for the process-shared mutex (glibc's `pthread_mutex_t` is 40 on x86-64,
/// 48 on aarch64).
pub const MUTEX_BYTES: usize = 64;

/// Slot states.
pub mod state {
    /// Free.
    pub const EMPTY: u32 = 0;
    /// Holds a key.
    pub const USED: u32 = 1;
}

/// One slot of a row: where a key and its value live. Written only under the table mutex.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    /// [`state::EMPTY`] or [`state::USED`]; a delete clears this word first (one aligned store).
    pub state: u32,
    /// Key length in bytes.
    pub key_len: u32,
    /// Value length in bytes.
    pub val_len: u32,
    /// First chunk of the chain holding key then value (`ceil((key_len + val_len) / CHUNK_DATA)`
    /// chunks, at least one).
    pub head: u32,
    /// The key's hash (see [`super::table::hash`]): compared before the key bytes.
    pub hash: u64,
    /// Expiry, Unix milliseconds; 0: none.
    pub expire_ms: u64,
}

/// Lines 0-1: identity, written once by the creator before `ready`.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Identity {
    /// [`CACHE_MAGIC`].
    pub magic: u64,
    /// [`CACHE_LAYOUT_VERSION`].
    pub layout_version: u32,
    /// 1 once everything else is initialised; stored last, with Release.
    pub ready: AtomicU32,
    /// io_conn's pid.
    pub creator_pid: u32,
    /// Rows in use (== [`ROWS`]).
    pub rows: u32,
    /// io_conn's start time (clock ticks since boot).
    pub creator_start_time: u64,
    /// io_conn's epoch.
    pub epoch: u64,
    /// Segment length.
    pub total_len: u64,
    /// The configured `kv.max_keys`.
    pub max_keys: u64,
    /// Slots in all rows.
    pub total_slots: u64,
    /// Chunks in the pool.
    pub chunks: u64,
    /// Hash seed, random per segment (hash flooding).
    pub seed: u64,
    /// Slots of row r: distinct primes (descending, but for the small rows).
    pub row_primes: [u32; ROWS],
}

/// Line 2: statistics every process adds to (relaxed: counts, no ordering with anything).
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct Counters {
    /// kv connections open now (every md adds on open, subtracts on close).
    pub clients: AtomicU64,
    /// Commands processed (md adds in batches).
    pub commands: AtomicU64,
    /// Times a crashed writer's state was repaired.
    pub recoveries: AtomicU64,
    /// Keys that expired (lazily removed).
    pub expired: AtomicU64,
}

/// Line 3: the process-shared robust mutex (opaque bytes; see `lock.rs`).
#[repr(C, align(128))]
#[derive(Debug)]
pub struct MutexLine {
    /// A `pthread_mutex_t`, initialised by the creator.
    pub raw: [u64; MUTEX_BYTES / 8],
}

/// Line 4: the state only the mutex holder reads or writes.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Locked {
    /// Head of the free chunk list.
    pub free_head: u32,
    /// Chunks in the free list.
    pub free_count: u32,
    /// Slots in state USED.
    pub keys: u64,
    /// 1 while a SET is between "new chain complete" and "old chain freed": recovery then
    /// writes `journal_new` into slot `journal_slot` (roll forward). Stored with Release so the
    /// journal fields before it are never reordered after it (a crash can strike between any
    /// two instructions; the next mutex holder sees every store the dead one executed).
    pub journal_state: AtomicU32,
    /// The slot being written.
    pub journal_slot: u32,
    /// The slot's new contents.
    pub journal_new: Slot,
}

/// The whole header.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// Line 0.
    pub id: Identity,
    /// Line 1.
    pub counters: Counters,
    /// Line 2.
    pub mutex: MutexLine,
    /// Line 3.
    pub locked: Locked,
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<Slot>() == 32);
    assert!(size_of::<Identity>() == 256);
    assert!(offset_of!(Identity, ready) == 12);
    assert!(offset_of!(Identity, row_primes) == 80);
    assert!(offset_of!(Header, counters) == 256);
    assert!(offset_of!(Header, mutex) == 384);
    assert!(offset_of!(Header, locked) == 512);
    assert!(offset_of!(Locked, journal_new) == 24);
    assert!(size_of::<Header>() <= HEADER_BYTES);
    assert!(size_of::<libc::pthread_mutex_t>() <= MUTEX_BYTES);
    assert!(align_of::<libc::pthread_mutex_t>() <= 8);
};

/// The geometry of a table: rows, slots and chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Slots of each row (distinct primes, descending).
    pub row_primes: [u32; ROWS],
    /// Sum of the rows.
    pub total_slots: u64,
    /// Pool chunks.
    pub chunks: u64,
    /// Offset of the slot array.
    pub slots_offset: usize,
    /// Offset of the chunk pool.
    pub chunks_offset: usize,
    /// Segment length.
    pub total_len: usize,
}

/// Why a plan is impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanError {
    /// `max_keys` is 0 or above 2^31.
    BadMaxKeys(u64),
    /// `memory` holds fewer chunks than keys, or more than 2^32 - 2.
    BadMemory(u64),
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadMaxKeys(n) => write!(f, "kv.max_keys {n} is outside 1..=2^31"),
            Self::BadMemory(m) => write!(
                f,
                "kv.memory {m} B must hold at least one {CHUNK_BYTES}-byte chunk per key and at \
                 most 2^32 - 2 chunks"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

fn is_prime(x: u64) -> bool {
    if x < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= x {
        if x.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Rows for `max_keys` keys and a pool of `memory` bytes.
///
/// Row r gets a share `0.7^r` of `1.3 * max_keys + 8 * ROWS` slots (at least 8), rounded up to a
/// prime not used by an earlier row. Every slot of a row is used (index `hash % prime`, and
/// the row is exactly `prime` slots long: the C tutorial's rows were longer than their prime and
/// lost the slots above it). With first-fit over 16 rows this geometry held `max_keys` random
/// keys in every trial of a simulation (N = 10 … 100 000, hundreds of trials) and in the fill
/// test (`tests/cache.rs`); the average key sits in its 2nd–3rd row.
pub fn plan(max_keys: u64, memory: u64) -> Result<Plan, PlanError> {
    if max_keys == 0 || max_keys > 1 << 31 {
        return Err(PlanError::BadMaxKeys(max_keys));
    }
    let chunks = memory / CHUNK_BYTES as u64;
    if chunks < max_keys || chunks > u64::from(u32::MAX - 1) {
        return Err(PlanError::BadMemory(memory));
    }
    let total = max_keys * 13 / 10 + 8 * ROWS as u64;
    let weights: Vec<f64> = (0..ROWS).map(|r| 0.7f64.powi(r as i32)).collect();
    let sum: f64 = weights.iter().sum();
    let mut row_primes = [0u32; ROWS];
    for (r, w) in weights.iter().enumerate() {
        let mut x = ((total as f64 * w / sum) as u64).max(8);
        while !is_prime(x) || row_primes[..r].contains(&(x as u32)) {
            x += 1;
        }
        row_primes[r] = x as u32;
    }
    let total_slots: u64 = row_primes.iter().map(|&p| u64::from(p)).sum();
    let slots_offset = HEADER_BYTES;
    let chunks_offset =
        (slots_offset + total_slots as usize * size_of::<Slot>()).next_multiple_of(128);
    let total_len = chunks_offset + chunks as usize * CHUNK_BYTES;
    Ok(Plan { row_primes, total_slots, chunks, slots_offset, chunks_offset, total_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_distinct_primes_and_cover_the_keys() {
        for n in [1u64, 10, 1000, 65_536, 1_000_000] {
            let p = plan(n, n * 64).unwrap();
            let mut seen = p.row_primes.to_vec();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), ROWS, "{n}: {:?}", p.row_primes);
            assert!(p.row_primes.iter().all(|&x| is_prime(u64::from(x))));
            assert!(p.total_slots >= n * 13 / 10, "{n}");
            assert_eq!(p.total_len, p.chunks_offset + n as usize * CHUNK_BYTES);
        }
    }

    #[test]
    fn impossible_plans_are_refused() {
        assert_eq!(plan(0, 1 << 20), Err(PlanError::BadMaxKeys(0)));
        assert_eq!(plan(100, 64 * 99), Err(PlanError::BadMemory(64 * 99)));
    }
}
