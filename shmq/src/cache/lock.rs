//! The cache table's process-shared robust mutex: a `pthread_mutex_t` in the segment, with
//! `PTHREAD_PROCESS_SHARED` and `PTHREAD_MUTEX_ROBUST`.
//!
//! Why a robust pthread mutex: the kernel keeps a per-thread list of the robust mutexes a thread
//! holds (`set_robust_list`); when the thread dies (SIGKILL included) the kernel marks each one
//! `FUTEX_OWNER_DIED` and wakes a waiter, whose `pthread_mutex_lock` returns `EOWNERDEAD`. So
//! owner death is detected at once, by the kernel, with no pid polling and no pid-reuse race
//! (the alternative, a lock word holding the owner's pid checked with `kill(pid, 0)` plus its
//! start time, needs a timeout before it suspects the owner). The new owner repairs the table
//! and calls `pthread_mutex_consistent`; unlocking without it would make the mutex unusable
//! (`ENOTRECOVERABLE`), so [`RawLock::lock`] returns [`Locked::OwnerDied`] and the caller
//! must call [`RawLock::mark_consistent`] after repairing.
//!
//! This is the only `unsafe` of the cache apart from the view in `mod.rs`.

use std::io;

/// What [`RawLock::lock`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Locked {
    /// The previous owner unlocked normally.
    Clean,
    /// The previous owner died holding the lock: repair, then [`RawLock::mark_consistent`].
    OwnerDied,
}

/// A pointer to the mutex bytes inside a mapped cache segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawLock(*mut libc::pthread_mutex_t);

impl RawLock {
    /// # Safety
    /// `p` is 8-aligned, valid for `size_of::<pthread_mutex_t>()` bytes for as long as the
    /// `RawLock` is used, and lives in memory every user maps (shared memory, or the heap for
    /// threads of one process).
    pub(crate) unsafe fn new(p: *mut u8) -> Self {
        Self(p.cast())
    }

    /// Initialises the mutex (creator only, before the segment is published).
    ///
    /// # Safety
    /// Nobody else uses the mutex yet (the segment is not `ready`).
    pub(crate) unsafe fn init(self) -> io::Result<()> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: attr is a valid out-pointer; init, the two setters and destroy are called in
        // the documented order on it. self.0 is valid and exclusive (delegated to caller, see
        // # Safety).
        unsafe {
            check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
            let a = attr.as_mut_ptr();
            let r = check(libc::pthread_mutexattr_setpshared(a, libc::PTHREAD_PROCESS_SHARED))
                .and_then(|()| {
                    check(libc::pthread_mutexattr_setrobust(a, libc::PTHREAD_MUTEX_ROBUST))
                })
                .and_then(|()| check(libc::pthread_mutex_init(self.0, a)));
            libc::pthread_mutexattr_destroy(a);
            r
        }
    }

    /// Takes the mutex, blocking in the kernel while another process holds it.
    pub(crate) fn lock(self) -> io::Result<Locked> {
        // SAFETY: self.0 points to an initialised process-shared mutex in a live mapping
        // (`RawLock::new`'s contract; the creator initialised it before `ready`).
        let r = unsafe { libc::pthread_mutex_lock(self.0) };
        match r {
            0 => Ok(Locked::Clean),
            libc::EOWNERDEAD => Ok(Locked::OwnerDied),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// After repairing what a dead owner left: the mutex is usable again.
    pub(crate) fn mark_consistent(self) -> io::Result<()> {
        // SAFETY: as in `lock`; we hold the mutex (it returned EOWNERDEAD to us).
        check(unsafe { libc::pthread_mutex_consistent(self.0) })
    }

    /// Releases the mutex (held by this thread).
    pub(crate) fn unlock(self) {
        // SAFETY: as in `lock`; the caller holds it (only `Guard::drop` calls this).
        let r = unsafe { libc::pthread_mutex_unlock(self.0) };
        debug_assert_eq!(r, 0, "unlock of a mutex we hold");
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(r)) }
}
