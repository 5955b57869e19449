//! Byte buffers for flows, and the pool they come from.
//!
//! Used only by the event loop. A flow holds a [`Buf`] only while it has an incomplete (or
//! backpressured) input message or unsent output; an idle connection holds none, and reads land
//! in the loop's scratch buffer. Buffers go back to the [`Pool`] when they empty, so steady-state
//! traffic allocates nothing: a `Buf` is a `Vec<u8>` whose length is its capacity (zeroed once at
//! allocation) plus a `start..end` window, so reads and appends never touch the allocator.
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
        Self { data: vec![0; size], start: 0, end: 0, scanned: 0 }
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
            self.data.resize(target, 0);
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

/// A free list of [`Buf`]s of one nominal size.
#[derive(Debug)]
pub struct Pool {
    free: Vec<Buf>,
    size: usize,
    max_free: usize,
    allocated: u64,
}

impl Pool {
    /// A pool handing out buffers of `size` bytes and keeping at most `max_free` idle ones.
    pub fn new(size: usize, max_free: usize) -> Self {
        Self { free: Vec::with_capacity(max_free), size: size.max(1), max_free, allocated: 0 }
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
        if b.capacity() > self.size.saturating_mul(4) || self.free.len() >= self.max_free {
            return;
        }
        b.clear();
        self.free.push(b);
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
    fn consume_all_resets_window() {
        let mut pool = Pool::new(4, 1);
        let mut b = pool.get();
        b.extend(b"abcd");
        b.consume(4);
        assert!(b.is_empty());
        assert_eq!(b.spare_mut(4, 4).len(), 4);
    }
}
