//! Byte buffers for flows, and the pool they come from.
//!
//! Used only by the event loop. A flow holds a [`Buf`] only while it has an incomplete (or
//! backpressured) input message or unsent output; an idle connection holds none, and reads land
//! in the loop's scratch buffer. Buffers go back to the [`Pool`] when they empty, so steady-state
//! traffic allocates nothing: a `Buf` is a `Vec<u8>` whose length is its capacity (zeroed once at
//! allocation) plus a `start..end` window, so reads and appends never touch the allocator.
//!
//! # Accounting (`io_conn.max_buffered`)
//!
//! Every byte a [`Buf`] allocates is counted, on the thread that allocates it, in one
//! process-wide (per-thread: io_conn's loop is one thread; tests run a loop per thread) total:
//! [`held_bytes`]. A `Buf` adds its allocation when it is made and when it grows, and takes it
//! back when it is dropped, so the total covers input, output, held replies and the pool's spare
//! buffers alike, whoever holds them. This costs a thread-local add on allocation, growth and
//! free only: never per message in steady state. `server::budget` compares it with the budget.
//!
//! # Example
//!
//! ```
//! use io_conn::pool::Pool;
//!
//! let mut pool = Pool::new(16, 8);
//! let mut b = pool.get();
//! b.extend(b"hello");
//! assert_eq!(b.filled(), b"hello");
//! b.consume(2);
//! assert_eq!(b.filled(), b"llo");
//! pool.put(b);
//! assert_eq!(pool.free_count(), 1);
//! ```

thread_local! {
    /// Bytes allocated by every live [`Buf`] of this thread.
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Bytes allocated by the live [`Buf`]s of this thread (the io_conn loop's): what
/// `io_conn.max_buffered` bounds.
#[inline]
pub fn held_bytes() -> usize {
    HELD.with(std::cell::Cell::get)
}

#[inline]
fn account(add: usize, sub: usize) {
    // Saturating: a Buf dropped on another thread than its maker's (none in io_conn) cannot
    // wrap the total.
    HELD.with(|h| h.set(h.get().saturating_add(add).saturating_sub(sub)));
}

/// A byte buffer with a filled window `start..end` over a fixed, zero-initialised allocation.
#[derive(Debug)]
pub struct Buf {
    /// `data.len()` is the capacity; bytes outside `start..end` are stale.
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// For `line` framing: bytes at the front already searched for `\n` (see
    /// [`crate::framing::Next::Incomplete`]); reset whenever the front moves.
    pub scanned: usize,
}

impl Buf {
    fn new(size: usize) -> Self {
        let data = vec![0; size];
        account(data.capacity(), 0);
        Self { data, start: 0, end: 0, scanned: 0 }
    }

    /// Bytes this buffer allocated (counted in [`held_bytes`]).
    #[inline]
    pub fn allocated(&self) -> usize {
        self.data.capacity()
    }

    /// Bytes held.
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when no bytes are held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Bytes of the allocation.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// The held bytes.
    #[inline]
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Drops `n` bytes from the front (`n <= len`).
    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len());
        self.scanned = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Empties the buffer.
    #[inline]
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
    }

    /// Makes at least `want` bytes writable after the held ones, moving them to the front and
    /// growing the allocation (up to `limit` total, never below the current capacity) only if
    /// needed. Returns the writable tail (possibly shorter than `want` at the limit).
    pub fn spare_mut(&mut self, want: usize, limit: usize) -> &mut [u8] {
        if self.data.len() - self.end < want && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.data.len() - self.end < want && self.data.len() < limit {
            let target = (self.end + want).max(self.data.len() * 2).min(limit.max(self.data.len()));
            let before = self.data.capacity();
            self.data.resize(target, 0);
            account(self.data.capacity(), before);
        }
        &mut self.data[self.end..]
    }

    /// Marks `n` bytes of [`Self::spare_mut`] as filled.
    #[inline]
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.data.len());
        self.end = (self.end + n).min(self.data.len());
    }

    /// Appends `bytes`, growing without limit if needed.
    pub fn extend(&mut self, bytes: &[u8]) {
        let spare = self.spare_mut(bytes.len(), usize::MAX);
        spare[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        account(0, self.data.capacity());
    }
}

/// A free list of [`Buf`]s of one nominal size.
#[derive(Debug)]
pub struct Pool {
    free: Vec<Buf>,
    size: usize,
    max_free: usize,
    allocated: u64,
    /// A returned buffer is kept only while [`held_bytes`] is at most this (the budget's
    /// low-water mark: spares never hold memory the budget needs).
    keep_below: usize,
}

impl Pool {
    /// A pool handing out buffers of `size` bytes and keeping at most `max_free` idle ones.
    pub fn new(size: usize, max_free: usize) -> Self {
        Self {
            free: Vec::with_capacity(max_free),
            size: size.max(1),
            max_free,
            allocated: 0,
            keep_below: usize::MAX,
        }
    }

    /// An empty buffer: a pooled one, or a new allocation of the nominal size.
    #[inline]
    pub fn get(&mut self) -> Buf {
        match self.free.pop() {
            Some(b) => b,
            None => {
                self.allocated += 1;
                Buf::new(self.size)
            }
        }
    }

    /// Returns a buffer. One grown past 4× the nominal size is freed instead (a burst of large
    /// messages must not pin its memory forever), as is any beyond `max_free`.
    #[inline]
    pub fn put(&mut self, mut b: Buf) {
        if b.capacity() > self.size.saturating_mul(4)
            || self.free.len() >= self.max_free
            || held_bytes() > self.keep_below
        {
            return;
        }
        b.clear();
        self.free.push(b);
    }

    /// Keeps returned buffers only while [`held_bytes`] is at most `bytes`.
    pub fn set_keep_below(&mut self, bytes: usize) {
        self.keep_below = bytes;
    }

    /// Frees every idle buffer; returns the bytes freed.
    pub fn trim(&mut self) -> usize {
        let bytes = self.free.iter().map(Buf::allocated).sum();
        self.free.clear();
        bytes
    }

    /// Idle buffers held.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Buffers allocated since creation.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_compacts_before_growing() {
        let mut pool = Pool::new(8, 4);
        let mut b = pool.get();
        b.extend(b"abcdef");
        b.consume(4);
        let cap = b.capacity();
        let s = b.spare_mut(6, 1 << 20);
        assert!(s.len() >= 6);
        assert_eq!(b.capacity(), cap, "compaction made room without growing");
        assert_eq!(b.filled(), b"ef");
    }

    #[test]
    fn spare_grows_to_limit_only() {
        let mut pool = Pool::new(8, 4);
        let mut b = pool.get();
        b.extend(b"12345678");
        assert_eq!(b.spare_mut(100, 20).len(), 12);
        assert_eq!(b.capacity(), 20);
        b.commit(12);
        assert_eq!(b.spare_mut(100, 20).len(), 0);
        assert_eq!(b.filled(), b"12345678\0\0\0\0\0\0\0\0\0\0\0\0");
    }

    #[test]
    fn pool_reuses_and_bounds() {
        let mut pool = Pool::new(8, 1);
        let a = pool.get();
        let b = pool.get();
        assert_eq!(pool.allocated(), 2);
        pool.put(a);
        pool.put(b); // beyond max_free: dropped
        assert_eq!(pool.free_count(), 1);
        let mut c = pool.get();
        assert_eq!(pool.allocated(), 2, "reused");
        assert!(c.is_empty());
        c.extend(&[7; 100]); // grown past 4x
        pool.put(c);
        assert_eq!(pool.free_count(), 0, "oversized buffer freed");
    }

    #[test]
    fn held_bytes_follow_allocation_growth_and_drop() {
        let base = held_bytes();
        let mut pool = Pool::new(8, 4);
        let mut b = pool.get();
        assert_eq!(held_bytes() - base, b.allocated());
        assert!(b.allocated() >= 8);
        b.extend(&[1; 100]); // grows
        assert!(b.allocated() >= 100);
        assert_eq!(held_bytes() - base, b.allocated(), "growth is counted");
        let c = pool.get();
        assert_eq!(held_bytes() - base, b.allocated() + c.allocated());
        drop(b);
        assert_eq!(held_bytes() - base, c.allocated(), "a dropped buffer is not counted");
        pool.put(c);
        assert_eq!(held_bytes() - base, 8, "a pooled spare still counts");
        assert_eq!(pool.trim(), 8);
        assert_eq!(held_bytes(), base, "trimmed spares are freed");
    }

    #[test]
    fn pool_keeps_no_spare_above_its_limit() {
        let base = held_bytes();
        let mut pool = Pool::new(8, 4);
        pool.set_keep_below(base + 8);
        let a = pool.get();
        let b = pool.get();
        pool.put(a); // held = base + 16 > limit: freed
        assert_eq!(pool.free_count(), 0);
        pool.put(b); // held = base + 8: kept
        assert_eq!(pool.free_count(), 1);
        assert_eq!(held_bytes() - base, 8);
    }

    #[test]
    fn held_bytes_are_per_thread() {
        let base = held_bytes();
        let other = std::thread::spawn(|| {
            let mut pool = Pool::new(1 << 16, 1);
            let b = pool.get();
            held_bytes() - b.allocated()
        });
        assert_eq!(other.join().expect("thread"), 0, "another thread starts at 0");
        assert_eq!(held_bytes(), base);
    }

    #[test]
    fn consume_all_resets_window() {
        let mut pool = Pool::new(4, 1);
        let mut b = pool.get();
        b.extend(b"abcd");
        b.consume(4);
        assert!(b.is_empty());
        assert_eq!(b.spare_mut(4, 4).len(), 4);
    }
}
