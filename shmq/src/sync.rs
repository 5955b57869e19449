//! Atomics facade: `std` atomics normally, loom's under `cfg(loom)`.
//!
//! Every atomic in shmq comes from here (enforced by `disallowed-types` in `shmq/clippy.toml`), so
//! the loom model checks exactly the orderings the real build uses. Loom atomics are not
//! layout-compatible with the real ones: under loom, shared headers live on the heap and the
//! const layout assertions are compiled out.
#![allow(clippy::disallowed_types)]

#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// A spin-wait hint (a no-op yield under loom, so the model can make progress).
#[inline]
pub fn spin_hint() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}
