//! The multi-hash table's operations, in safe code over the segment's parts, which the caller
//! borrows exclusively while it holds the table mutex (see [`super::Guard`]).
//!
//! # Write protocol (crash safety)
//!
//! A process may die between any two instructions. Every mutation is ordered so that what it
//! leaves is either consistent or repaired by [`Parts::repair`], which the next mutex holder
//! runs when the kernel reports the owner's death (`EOWNERDEAD`):
//!
//! * SET: (1) take the chunks for the new key+value from the free list and fill them; (2) write
//!   the journal (slot index, new slot contents), then `journal_state = 1`; (3) write the slot;
//!   (4) push the old chain onto the free list; (5) `journal_state = 0`. A death before (2)
//!   leaves the slot untouched (the new chunks are unreachable); after it, repair rolls forward
//!   by writing the journaled slot again (a torn slot is overwritten whole).
//! * DEL: clear the slot's `state` word (one aligned store), then free its chain.
//! * Repair then rebuilds the free list from reachability: a chunk is free iff no USED slot's
//!   chain holds it, so chunks taken or freed half-way are never lost for good; the key count is
//!   recounted. A slot whose chain is broken (cannot happen with the protocol above; checked
//!   anyway) is dropped rather than trusted.
//!
//! Between the steps, `crash_order()` keeps the compiler from moving stores across them; the
//! mutex hand-over (the kernel's futex operation on the dead owner's behalf) makes every store
//! the dead process executed visible to the next owner.

use std::sync::atomic::compiler_fence;

use super::layout::{CHUNK_BYTES, CHUNK_DATA, Locked, NIL, ROWS, Slot, state};
use crate::sync::Ordering;

/// Where a test asks a writer to die (see [`super::set_crash_point`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CrashPoint {
    /// Never.
    None = 0,
    /// New chunks taken and half filled, journal not written.
    MidFill = 1,
    /// Journal written, slot not yet.
    AfterJournal = 2,
    /// Slot half written.
    MidSlot = 3,
    /// Slot written, old chain partly freed.
    MidFree = 4,
    /// In the middle of a DEL (slot cleared, chain not freed).
    MidDel = 5,
}

/// Why a SET did not store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every candidate slot of the key holds another live key.
    NoSlot,
    /// The pool has not enough free chunks.
    NoMemory,
}

/// Condition of a SET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// Store in any case.
    Always,
    /// Only if the key does not exist (NX).
    Nx,
    /// Only if it exists (XX).
    Xx,
}

/// TTL of a SET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No expiry (a plain SET clears an earlier one).
    None,
    /// Keep the key's current expiry (INCR, KEEPTTL).
    Keep,
    /// Expire at this Unix time in ms.
    At(u64),
}

/// INCRBY failures (Redis's messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncrError {
    /// The value is not a decimal i64.
    NotInteger,
    /// The result leaves i64.
    Overflow,
    /// Could not store the result.
    Full(Full),
}

/// What [`Parts::check`] found (tests, and the crash test's audit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// USED slots.
    pub keys: u64,
    /// Chunks held by USED slots.
    pub used_chunks: u64,
    /// Chunks on the free list.
    pub free_chunks: u64,
    /// Problems found (empty when the table is sound).
    pub problems: Vec<String>,
}

/// The hash of a key under a segment's seed: FNV-1a over the bytes, then murmur3's fmix64 so
/// every bit reaches the low ones `% prime` depends on.
pub fn hash(seed: u64, key: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Chunks holding `n` bytes (at least one).
pub fn chunks_for(n: usize) -> usize {
    n.div_ceil(CHUNK_DATA).max(1)
}

/// Keeps the compiler from moving memory accesses across a step of the write protocol (see the
/// module docs; the CPU's order does not matter: the next owner synchronises through the mutex).
#[inline(always)]
fn crash_order() {
    compiler_fence(Ordering::SeqCst);
}

/// The table, borrowed exclusively under the mutex.
#[derive(Debug)]
pub struct Parts<'a> {
    /// Free list, key count, journal.
    pub locked: &'a mut Locked,
    /// All rows back to back.
    pub slots: &'a mut [Slot],
    /// The pool, `CHUNK_BYTES` per chunk.
    pub chunks: &'a mut [u8],
    /// Row sizes.
    pub rows: &'a [u32; ROWS],
    /// Hash seed.
    pub seed: u64,
    /// Test hook: die here.
    pub crash: CrashPoint,
}

impl Parts<'_> {
    fn next(&self, c: u32) -> u32 {
        let o = c as usize * CHUNK_BYTES;
        u32::from_le_bytes([
            self.chunks[o],
            self.chunks[o + 1],
            self.chunks[o + 2],
            self.chunks[o + 3],
        ])
    }

    fn set_next(&mut self, c: u32, n: u32) {
        let o = c as usize * CHUNK_BYTES;
        self.chunks[o..o + 4].copy_from_slice(&n.to_le_bytes());
    }

    fn data(&self, c: u32) -> &[u8] {
        let o = c as usize * CHUNK_BYTES + 4;
        &self.chunks[o..o + CHUNK_DATA]
    }

    fn data_mut(&mut self, c: u32) -> &mut [u8] {
        let o = c as usize * CHUNK_BYTES + 4;
        &mut self.chunks[o..o + CHUNK_DATA]
    }

    fn n_chunks(&self) -> u32 {
        (self.chunks.len() / CHUNK_BYTES) as u32
    }

    fn die_at(&self, p: CrashPoint) {
        if self.crash == p {
            super::die_now();
        }
    }

    /// The candidate slot of `h` in each row, as indices into `slots`.
    fn candidates(&self, h: u64) -> impl Iterator<Item = usize> + '_ {
        let mut base = 0usize;
        self.rows.iter().map(move |&p| {
            let i = base + (h % u64::from(p)) as usize;
            base += p as usize;
            i
        })
    }

    /// Calls `f` on each piece of the slot's key+value bytes from byte `from`, in order.
    fn walk(&self, s: &Slot, from: usize, len: usize, mut f: impl FnMut(&[u8])) {
        let mut c = s.head;
        let mut pos = 0usize;
        let end = from + len;
        while pos < end && c != NIL && c < self.n_chunks() {
            let d = self.data(c);
            let lo = from.max(pos);
            let hi = end.min(pos + CHUNK_DATA);
            if lo < hi {
                f(&d[lo - pos..hi - pos]);
            }
            pos += CHUNK_DATA;
            c = self.next(c);
        }
    }

    fn key_is(&self, s: &Slot, h: u64, key: &[u8]) -> bool {
        if s.state != state::USED || s.hash != h || s.key_len as usize != key.len() {
            return false;
        }
        let mut off = 0;
        let mut same = true;
        self.walk(s, 0, key.len(), |piece| {
            same &= key[off..off + piece.len()] == *piece;
            off += piece.len();
        });
        same && off == key.len()
    }

    /// The slot holding `key`, live or expired.
    fn find(&self, h: u64, key: &[u8]) -> Option<usize> {
        self.candidates(h).find(|&i| self.key_is(&self.slots[i], h, key))
    }

    /// The slot holding `key` if live; an expired one is deleted on the way.
    fn find_live(&mut self, h: u64, key: &[u8], now_ms: u64) -> Option<usize> {
        let i = self.find(h, key)?;
        let e = self.slots[i].expire_ms;
        if e != 0 && e <= now_ms {
            self.remove_at(i);
            return None;
        }
        Some(i)
    }

    fn is_expired(s: &Slot, now_ms: u64) -> bool {
        s.state == state::USED && s.expire_ms != 0 && s.expire_ms <= now_ms
    }

    /// Appends the value of `key` to `out`; false if absent.
    pub fn get(&mut self, key: &[u8], now_ms: u64, out: &mut Vec<u8>) -> bool {
        let h = hash(self.seed, key);
        let Some(i) = self.find_live(h, key, now_ms) else { return false };
        let s = self.slots[i];
        self.walk(&s, s.key_len as usize, s.val_len as usize, |p| out.extend_from_slice(p));
        true
    }

    /// Whether `key` exists (live).
    pub fn exists(&mut self, key: &[u8], now_ms: u64) -> bool {
        let h = hash(self.seed, key);
        self.find_live(h, key, now_ms).is_some()
    }

    /// Stores `val` under `key`. Ok(true): stored; Ok(false): the NX/XX condition failed.
    pub fn set(
        &mut self,
        key: &[u8],
        val: &[u8],
        cond: Cond,
        exp: Expiry,
        now_ms: u64,
    ) -> Result<bool, Full> {
        let h = hash(self.seed, key);
        let found = self.find_live(h, key, now_ms);
        match (cond, found) {
            (Cond::Nx, Some(_)) | (Cond::Xx, None) => return Ok(false),
            _ => {}
        }
        let target = match found {
            Some(i) => i,
            None => {
                let free = self.candidates(h).find(|&i| {
                    self.slots[i].state == state::EMPTY || Self::is_expired(&self.slots[i], now_ms)
                });
                match free {
                    Some(i) => i,
                    None => return Err(Full::NoSlot),
                }
            }
        };
        let need = chunks_for(key.len() + val.len());
        if need > self.locked.free_count as usize {
            return Err(Full::NoMemory);
        }
        let expire_ms = match exp {
            Expiry::None => 0,
            Expiry::At(t) => t,
            Expiry::Keep => found.map_or(0, |i| self.slots[i].expire_ms),
        };
        // (1) Take `need` chunks off the free list, fill them. They stay linked in free-list
        // order, which is the new chain; the list's head moves past them at the end.
        let head = self.locked.free_head;
        let mut c = head;
        let mut last = head;
        let total = key.len() + val.len();
        let mut pos = 0;
        for n in 0..need {
            let d = self.data_mut(c);
            let mut k = 0;
            while k < CHUNK_DATA && pos < total {
                d[k] = if pos < key.len() { key[pos] } else { val[pos - key.len()] };
                k += 1;
                pos += 1;
            }
            if n == 0 {
                self.die_at(CrashPoint::MidFill);
            }
            last = c;
            c = self.next(c);
        }
        self.set_next(last, NIL);
        self.locked.free_head = c;
        self.locked.free_count -= need as u32;
        let new = Slot {
            state: state::USED,
            key_len: key.len() as u32,
            val_len: val.len() as u32,
            head,
            hash: h,
            expire_ms,
        };
        // (2) Journal.
        crash_order();
        self.locked.journal_slot = target as u32;
        self.locked.journal_new = new;
        // Release: the journal fields above are written before the state says they are valid
        // (a compiler and CPU order constraint; the reader is the next mutex owner, which
        // synchronises through the mutex).
        self.locked.journal_state.store(1, Ordering::Release);
        self.die_at(CrashPoint::AfterJournal);
        // (3) The slot.
        let old = self.slots[target];
        let had = old.state == state::USED;
        self.slots[target].head = new.head;
        self.die_at(CrashPoint::MidSlot);
        self.slots[target] = new;
        crash_order();
        // (4) The old chain.
        if had {
            self.free_chain(old.head, true);
        } else {
            self.locked.keys += 1;
        }
        crash_order();
        // (5) Done. Relaxed is enough: only the mutex holder reads it, after the mutex's
        // acquire; crash_order() above keeps the steps before it in program order.
        self.locked.journal_state.store(0, Ordering::Relaxed);
        Ok(true)
    }

    fn free_chain(&mut self, head: u32, may_crash: bool) {
        let mut c = head;
        let mut n = 0u32;
        while c != NIL && c < self.n_chunks() {
            let next = self.next(c);
            self.set_next(c, self.locked.free_head);
            self.locked.free_head = c;
            self.locked.free_count += 1;
            n += 1;
            if may_crash && n == 1 {
                self.die_at(CrashPoint::MidFree);
            }
            c = next;
        }
    }

    fn remove_at(&mut self, i: usize) {
        let head = self.slots[i].head;
        self.slots[i].state = state::EMPTY;
        crash_order();
        self.die_at(CrashPoint::MidDel);
        self.free_chain(head, false);
        self.locked.keys -= 1;
    }

    /// Deletes `key`; true if it existed (live).
    pub fn del(&mut self, key: &[u8], now_ms: u64) -> bool {
        let h = hash(self.seed, key);
        match self.find_live(h, key, now_ms) {
            Some(i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// Sets or clears (`at_ms` 0) the expiry of a live key; false if absent.
    pub fn expire(&mut self, key: &[u8], at_ms: u64, now_ms: u64) -> bool {
        let h = hash(self.seed, key);
        match self.find_live(h, key, now_ms) {
            Some(i) => {
                // One aligned 8-byte store: a crash leaves the old or the new expiry.
                self.slots[i].expire_ms = at_ms;
                true
            }
            None => false,
        }
    }

    /// Milliseconds to live: `None` if absent, `Some(None)` without expiry.
    pub fn ttl_ms(&mut self, key: &[u8], now_ms: u64) -> Option<Option<u64>> {
        let h = hash(self.seed, key);
        let i = self.find_live(h, key, now_ms)?;
        let e = self.slots[i].expire_ms;
        Some((e != 0).then(|| e - now_ms))
    }

    /// Adds `by` to the integer value of `key` (absent: 0); the new value.
    pub fn incr_by(&mut self, key: &[u8], by: i64, now_ms: u64) -> Result<i64, IncrError> {
        let mut cur = Vec::new();
        let v = if self.get(key, now_ms, &mut cur) {
            parse_i64(&cur).ok_or(IncrError::NotInteger)?
        } else {
            0
        };
        let n = v.checked_add(by).ok_or(IncrError::Overflow)?;
        self.set(key, n.to_string().as_bytes(), Cond::Always, Expiry::Keep, now_ms)
            .map_err(IncrError::Full)?;
        Ok(n)
    }

    /// Live keys (expired ones not yet removed count too, as in Redis before its sweep).
    pub fn keys(&self) -> u64 {
        self.locked.keys
    }

    /// Chunks on the free list.
    pub fn free_chunks(&self) -> u32 {
        self.locked.free_count
    }

    /// Removes every key.
    pub fn flush(&mut self) {
        for s in self.slots.iter_mut() {
            s.state = state::EMPTY;
        }
        crash_order();
        self.locked.journal_state.store(0, Ordering::Relaxed);
        self.rebuild_free_list(&vec![0u64; (self.n_chunks() as usize).div_ceil(64)]);
        self.locked.keys = 0;
    }

    /// Initialises a zeroed table: every chunk free, no key.
    pub fn format(&mut self) {
        self.flush();
    }

    /// Removes expired keys; how many.
    pub fn sweep_expired(&mut self, now_ms: u64) -> u64 {
        let mut n = 0;
        for i in 0..self.slots.len() {
            if Self::is_expired(&self.slots[i], now_ms) {
                self.remove_at(i);
                n += 1;
            }
        }
        n
    }

    fn rebuild_free_list(&mut self, used: &[u64]) {
        let mut head = NIL;
        let mut count = 0u32;
        for c in (0..self.n_chunks()).rev() {
            if used[c as usize / 64] & (1 << (c % 64)) == 0 {
                self.set_next(c, head);
                head = c;
                count += 1;
            }
        }
        self.locked.free_head = head;
        self.locked.free_count = count;
    }

    /// Marks the chunks of slot `s` in `used`; false (nothing marked) if its chain is broken:
    /// out of range, too short, or sharing a chunk with an earlier slot.
    fn mark(&self, s: &Slot, used: &mut [u64]) -> bool {
        let need = chunks_for(s.key_len as usize + s.val_len as usize);
        let mut c = s.head;
        let mut seen = Vec::with_capacity(need);
        for _ in 0..need {
            if c >= self.n_chunks()
                || used[c as usize / 64] & (1 << (c % 64)) != 0
                || seen.contains(&c)
            {
                return false;
            }
            seen.push(c);
            c = self.next(c);
        }
        for c in seen {
            used[c as usize / 64] |= 1 << (c % 64);
        }
        true
    }

    /// Repairs what a writer that died holding the mutex left (see the module docs): rolls the
    /// journal forward, drops broken slots and duplicates, rebuilds the free list and the key
    /// count. Returns the slots dropped.
    pub fn repair(&mut self) -> u64 {
        if self.locked.journal_state.load(Ordering::Relaxed) == 1 {
            let i = self.locked.journal_slot as usize;
            if i < self.slots.len() {
                self.slots[i] = self.locked.journal_new;
            }
        }
        self.locked.journal_state.store(0, Ordering::Relaxed);
        let mut used = vec![0u64; (self.n_chunks() as usize).div_ceil(64)];
        let mut keys = 0;
        let mut dropped = 0;
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            if s.state == state::EMPTY {
                continue;
            }
            if s.state != state::USED || !self.mark(&s, &mut used) {
                self.slots[i].state = state::EMPTY;
                dropped += 1;
                continue;
            }
            keys += 1;
        }
        self.rebuild_free_list(&used);
        self.locked.keys = keys;
        dropped
    }

    /// Checks every invariant without changing anything.
    pub fn check(&self) -> Audit {
        let mut a = Audit::default();
        let mut used = vec![0u64; (self.n_chunks() as usize).div_ceil(64)];
        let mut keys_seen: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        for (i, s) in self.slots.iter().enumerate() {
            if s.state == state::EMPTY {
                continue;
            }
            if s.state != state::USED {
                a.problems.push(format!("slot {i}: state {}", s.state));
                continue;
            }
            a.keys += 1;
            if !self.mark(s, &mut used) {
                a.problems.push(format!("slot {i}: broken or shared chain"));
                continue;
            }
            a.used_chunks += chunks_for(s.key_len as usize + s.val_len as usize) as u64;
            let mut key = Vec::new();
            self.walk(s, 0, s.key_len as usize, |p| key.extend_from_slice(p));
            if hash(self.seed, &key) != s.hash {
                a.problems.push(format!("slot {i}: hash does not match the key"));
            }
            if !self.candidates(s.hash).any(|c| c == i) {
                a.problems.push(format!("slot {i}: not a candidate slot of its key"));
            }
            if let Some(j) = keys_seen.insert(key, i) {
                a.problems.push(format!("slots {j} and {i}: the same key twice"));
            }
        }
        let mut c = self.locked.free_head;
        while c != NIL {
            if c >= self.n_chunks() || used[c as usize / 64] & (1 << (c % 64)) != 0 {
                a.problems.push(format!("free list: chunk {c} out of range, used or looping"));
                break;
            }
            used[c as usize / 64] |= 1 << (c % 64);
            a.free_chunks += 1;
            c = self.next(c);
        }
        if a.free_chunks != u64::from(self.locked.free_count) {
            a.problems.push(format!(
                "free_count {} but {} chunks on the free list",
                self.locked.free_count, a.free_chunks
            ));
        }
        if a.free_chunks + a.used_chunks != u64::from(self.n_chunks()) {
            a.problems.push(format!(
                "{} used + {} free != {} chunks (leak)",
                a.used_chunks,
                a.free_chunks,
                self.n_chunks()
            ));
        }
        if a.keys != self.locked.keys {
            a.problems.push(format!("key count {} but {} used slots", self.locked.keys, a.keys));
        }
        if self.locked.journal_state.load(Ordering::Relaxed) != 0 {
            a.problems.push("journal left open".into());
        }
        a
    }
}

/// A decimal i64 as Redis accepts it: optional `-`, digits, no leading `+`, no spaces, no
/// leading zeros (except "0"), at most 20 bytes.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let (neg, digits) = if b[0] == b'-' { (true, &b[1..]) } else { (false, b) };
    if digits.is_empty() || (digits[0] == b'0' && (digits.len() > 1 || neg)) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let x = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if neg { v.checked_sub(x)? } else { v.checked_add(x)? };
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_i64_like_redis() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [&b""[..], b"+1", b"01", b"-0", b"1 ", b"9223372036854775808", b"abc", b"-"] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunk_counts() {
        assert_eq!(chunks_for(0), 1);
        assert_eq!(chunks_for(CHUNK_DATA), 1);
        assert_eq!(chunks_for(CHUNK_DATA + 1), 2);
    }
}
