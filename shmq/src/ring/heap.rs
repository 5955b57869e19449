//! [`HeapMemory`]: ring memory on the heap, for tests and benchmarks (and what a Miri run would
//! use, since Miri cannot map shared segments).

use super::{Memory, init, ring_bytes};
use crate::layout::{Direction, RingParams};

/// Heap memory for rings in tests and benchmarks: zeroed, 128-byte aligned.
#[derive(Debug)]
pub struct HeapMemory {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: the allocation is plain bytes owned by this value; all concurrent access goes through
// the rings' atomics and the SPSC discipline.
unsafe impl Send for HeapMemory {}
// SAFETY: as for Send: shared access is mediated by the rings' atomics.
unsafe impl Sync for HeapMemory {}

impl HeapMemory {
    /// Allocates `len` zeroed bytes, 128-aligned.
    pub fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(128), 128)
            .expect("length fits isize after rounding");
        // SAFETY: layout has non-zero size (at least 128).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Self { ptr, layout }
    }

    /// Allocates and initialises one ring at offset 0 (pid and epoch of this process, generation
    /// 1). Panics on impossible parameters: for tests and benchmarks.
    pub fn new_ring(capacity: u64, max_payload: u64, direction: Direction) -> Self {
        let mem = Self::new(ring_bytes(capacity));
        let p = RingParams {
            capacity,
            max_payload,
            direction,
            creator_pid: std::process::id(),
            creator_start_time: 0,
            epoch: 1,
            generation: 1,
        };
        init(&mem, 0, &p).expect("valid ring parameters");
        mem
    }
}

impl Drop for HeapMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this exact layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

// SAFETY: ptr is non-null, 128-aligned, valid for layout.size() bytes until drop, never moves.
unsafe impl Memory for HeapMemory {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
}
