//! Telling the C allocator (glibc malloc) how io_conn's client buffers behave, so memory they
//! gave back is given back to the system: what makes `io_conn.max_buffered` bound the RSS and
//! not only the bytes in use.
//!
//! Without this, glibc raises its mmap threshold each time a large block is freed (up to
//! 32 MiB): after the first few slow readers, 256 KiB output buffers come from the heap, and a
//! heap riddled with freed buffers stays resident. Measured with 5 000 slow `STREAM` readers
//! and a 64 MiB budget (io_conn/tests/memory_budget.rs): RSS 575 MiB with the buffers' total
//! at 57 MiB. So:
//!
//! * [`tune_for_buffers`] fixes the mmap threshold (which also turns its raising off): a block
//!   of at least [`MMAP_THRESHOLD`] is its own mapping, returned to the system when freed;
//! * [`trim`] (`malloc_trim(0)`) returns the whole free pages inside the heap: called after a
//!   burst of frees (the budget closing connections), never per message.
//!
//! On other C libraries both do nothing. This module is the only other `unsafe` of the crate:
//! two calls into libc, each with its reason.

#![allow(unsafe_code)]

/// Blocks of at least this many bytes get their own mapping.
pub const MMAP_THRESHOLD: usize = 64 << 10;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`]. Call once at start, before the loop.
/// Returns whether the allocator took it.
pub fn tune_for_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets a parameter of the allocator under its own lock; it reads
        // no memory of ours, and M_MMAP_THRESHOLD with a value below HEAP_MAX/2 is valid.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Returns the free pages of the heap to the system (`malloc_trim(0)`). Returns whether any
/// memory was released.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the allocator's locks and only releases pages no live block
        // uses; it touches none of our memory.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_and_trimming_are_accepted() {
        let big: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 300 << 10]).collect();
        drop(big);
        // Both succeed on glibc; elsewhere they are no-ops that say so.
        let gnu = cfg!(all(target_os = "linux", target_env = "gnu"));
        assert_eq!(tune_for_buffers(), gnu);
        let _ = trim(); // whether anything was left to release depends on the heap's state
    }
}
