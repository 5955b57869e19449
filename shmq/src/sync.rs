//! Atomics facade: thin wrappers over `std` atomics normally, loom's atomics under `cfg(loom)`.
//!
//! Every atomic in shmq comes from here (enforced by `disallowed-types` in `shmq/clippy.toml`), so
//! the loom model checks exactly the orderings the real build uses. Loom atomics are not
//! layout-compatible with the real ones: under loom, shared headers live on the heap and the
//! const layout assertions are compiled out.
//!
//! Why wrappers and not a re-export: clippy's `disallowed-types` resolves a re-export to the type
//! it names, so `pub use std::sync::atomic::AtomicU64` here would make every use of
//! `shmq::sync::AtomicU64` a lint error too. The wrappers (as iceoryx2's `IoxAtomic*`) are
//! distinct types, `#[repr(transparent)]` (same size, alignment and bit validity as the std
//! atomic, so they may sit in shared memory and be cast from a `*const u64`-aligned pointer), with
//! the same method names and signatures, so code reads exactly as with std atomics.
//!
//! ```
//! use shmq::sync::{AtomicU64, Ordering};
//! let a = AtomicU64::new(1);
//! // Relaxed: a counter with one writer, as in the stats lines.
//! a.store(a.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
//! assert_eq!(a.into_inner(), 2);
//! ```
#![allow(clippy::disallowed_types)]

#[cfg(not(loom))]
pub use std::sync::atomic::{Ordering, fence};

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

#[cfg(not(loom))]
macro_rules! atomic_int {
    ($name:ident, $int:ty) => {
        #[doc = concat!(
            "`std::sync::atomic::", stringify!($name), "` under another name (see the module docs)."
        )]
        #[repr(transparent)]
        #[derive(Default)]
        pub struct $name(std::sync::atomic::$name);

        impl $name {
            /// A new atomic holding `v`.
            #[inline]
            pub const fn new(v: $int) -> Self {
                Self(std::sync::atomic::$name::new(v))
            }
            /// As the std method of the same name.
            #[inline]
            pub fn load(&self, order: Ordering) -> $int {
                self.0.load(order)
            }
            /// As the std method of the same name.
            #[inline]
            pub fn store(&self, v: $int, order: Ordering) {
                self.0.store(v, order)
            }
            /// As the std method of the same name.
            #[inline]
            pub fn swap(&self, v: $int, order: Ordering) -> $int {
                self.0.swap(v, order)
            }
            /// As the std method of the same name.
            #[inline]
            pub fn compare_exchange(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                self.0.compare_exchange(current, new, success, failure)
            }
            /// As the std method of the same name.
            #[inline]
            pub fn compare_exchange_weak(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                self.0.compare_exchange_weak(current, new, success, failure)
            }
            /// As the std method of the same name.
            #[inline]
            pub fn fetch_add(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_add(v, order)
            }
            /// As the std method of the same name.
            #[inline]
            pub fn fetch_sub(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_sub(v, order)
            }
            /// As the std method of the same name.
            #[inline]
            pub fn fetch_max(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_max(v, order)
            }
            /// As the std method of the same name.
            #[inline]
            pub fn fetch_min(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_min(v, order)
            }
            /// As the std method of the same name.
            #[inline]
            pub fn fetch_or(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_or(v, order)
            }
            /// As the std method of the same name.
            #[inline]
            pub fn fetch_and(&self, v: $int, order: Ordering) -> $int {
                self.0.fetch_and(v, order)
            }
            /// As the std method of the same name.
            #[inline]
            pub fn get_mut(&mut self) -> &mut $int {
                self.0.get_mut()
            }
            /// As the std method of the same name.
            #[inline]
            pub fn into_inner(self) -> $int {
                self.0.into_inner()
            }
            /// As the std method of the same name.
            #[inline]
            pub const fn as_ptr(&self) -> *mut $int {
                self.0.as_ptr()
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Debug::fmt(&self.0, f)
            }
        }

        impl From<$int> for $name {
            #[inline]
            fn from(v: $int) -> Self {
                Self::new(v)
            }
        }
    };
}

#[cfg(not(loom))]
atomic_int!(AtomicU32, u32);
#[cfg(not(loom))]
atomic_int!(AtomicU64, u64);

// Same size and alignment as the std atomics (and so as u32/u64): shared layouts rely on it.
#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<AtomicU32>() == 4 && align_of::<AtomicU32>() == 4);
    assert!(size_of::<AtomicU64>() == 8 && align_of::<AtomicU64>() == 8);
};

/// A spin-wait hint (a no-op yield under loom, so the model can make progress).
#[inline]
pub fn spin_hint() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Asks the CPU to start loading the cache line holding `p` (a hint: no fault, no effect on
/// the program's meaning, any address allowed). The consumer issues it for every line of a
/// newly published frame before it reads the header, so the misses on the header line and the
/// payload lines overlap instead of running one after the other (issue 15). A no-op off x86-64
/// and under loom.
#[inline(always)]
pub fn prefetch_read(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    // SAFETY: PREFETCHT0 never faults and never changes memory or program state, whatever the
    // address (Intel SDM, PREFETCHh); SSE is part of the x86-64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    let _ = p;
}
