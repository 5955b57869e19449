//! Which md holds a queue pair: one word, [`RingHeader::holder`], in the `in` ring's header.
//!
//! Only one md may serve an instance: two producers on one `out` ring (or two consumers on one
//! `in` ring) would corrupt it. The holder word says who serves it, and one compare-and-swap
//! decides between two md that attach at once.
//!
//! # The word
//!
//! The holder's pid (low [`PID_BITS`] bits; Linux caps pids at 2^22) and its start time in clock
//! ticks since boot (the high [`START_BITS`] bits: 2^42 ticks at 100 Hz is over a thousand years)
//! packed in one `u64` ([`pack`]), so one atomic operation both claims the pair and says by whom,
//! with no window where the claim is visible but the identity is not. 0 means free.
//!
//! # Who writes what
//!
//! | who | when | what |
//! |---|---|---|
//! | io_conn | `ring::init` (new epoch) | 0 (the whole header is zeroed before `ready`) |
//! | md | every attach ([`claim`]) | compare-and-swap 0 → itself; a word already holding itself is its own claim (a re-attach after a reset) |
//! | io_conn | while it resets the pair, between `ready = 0` and `ready = 1` ([`super::reset_releasing`]) | compare-and-swap holder → 0, only when that holder is dead (its pidfd fired, or `/proc` says so) |
//!
//! md never gives the word back, not even on a clean exit: a successor (systemd's `Restart=`, or
//! an operator) must wait until io_conn has seen the predecessor die, drained its `out` ring and
//! reset the pair. Until then the successor finds a dead holder ([`Claim::HeldBy`] with a
//! process that is not alive) and retries; it never takes the claim over itself, so io_conn
//! cannot end up with replies of two md processes interleaved in one ring.
//!
//! # Orderings
//!
//! * md's claim is `compare_exchange(0, me, Acquire, Relaxed)`. Acquire on success pairs with the
//!   Release of io_conn's clearing compare-and-swap: an md that takes the word right after a
//!   release sees everything io_conn wrote before it, in particular `ready = 0`, so its re-check
//!   of `ready`/`generation` after the claim cannot mistake the pair for its old generation. It
//!   needs no Release of its own: the claim reaches io_conn before md's HELLO does, because md
//!   publishes HELLO with the Release store of its commit stamp in the `out` ring, sequenced
//!   after the claim, and io_conn reads HELLO after its Acquire load of that stamp. The failure ordering is Relaxed:
//!   the value read is the whole message (the holder's identity); nothing else is read through it.
//! * io_conn's release is `compare_exchange(dead, 0, Release, Relaxed)` inside the reset, after
//!   `ready = 0` and before the Release store of `ready = 1` (see above for its partner). A
//!   compare-and-swap, not a store: it can only clear the identity io_conn checked.
//! * io_conn's reads of the word ([`holder`]: the HELLO check, the periodic dead-holder check)
//!   are Relaxed: for HELLO the happens-before through the frame's stamp makes the claim visible;
//!   the periodic check only needs some recent value (a claim it has not seen yet is seen at the
//!   next tick).
//!
//! # Races, and what each side sees
//!
//! * Two md attach at once: one compare-and-swap wins; the other reads the winner, alive, and is
//!   refused ([`Claim::HeldBy`] of a live process).
//! * An md claims while io_conn resets for its dead predecessor: the claim can only succeed
//!   after the release, and md re-checks `ready`/`generation` after claiming, so it either
//!   attaches to the new generation or retries (and then finds the word already its own).
//! * An md dies after claiming, before its HELLO reached io_conn: io_conn never had its pidfd, so
//!   its periodic check (a dead holder on an instance with no live md) resets the pair.
//! * io_conn resets the pair while its holder lives (a corrupt ring, a bad HELLO): the word is
//!   kept; the holder re-attaches to the new generation as its own claim.
//!
//! `shmq/tests/loom.rs` models the claim against a concurrent reset, and two claimants.

use crate::layout::RingHeader;
use crate::sync::Ordering;
use crate::sys::ProcId;

/// Bits of the pid in a holder word.
pub const PID_BITS: u32 = 22;
/// Bits of the start time in a holder word.
pub const START_BITS: u32 = 64 - PID_BITS;
const PID_MASK: u64 = (1 << PID_BITS) - 1;

/// Packs an identity into a holder word. `None` if it does not fit (pid 0 or ≥ 2^22, start time
/// ≥ 2^42): such a process cannot hold a pair.
pub fn pack(id: ProcId) -> Option<u64> {
    let pid = u64::from(id.pid);
    if pid == 0 || pid > PID_MASK || id.start_time >> START_BITS != 0 {
        return None;
    }
    Some((id.start_time << PID_BITS) | pid)
}

/// Unpacks a holder word; `None` for 0 (free).
pub fn unpack(word: u64) -> Option<ProcId> {
    (word != 0).then_some(ProcId { pid: (word & PID_MASK) as u32, start_time: word >> PID_BITS })
}

/// What [`claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The word was free; it is ours now.
    Claimed,
    /// The word already named us (a re-attach after a reset, or a retried attach).
    Ours,
    /// Another process holds it (alive or not: the caller checks).
    HeldBy(ProcId),
}

/// md's claim: compare-and-swap the holder word from 0 to `me` (a [`pack`]ed identity).
///
/// SYNC POINT: pairs with the release in [`super::reset_releasing`] (see the module docs).
pub fn claim(h: &RingHeader, me: u64) -> Claim {
    debug_assert_ne!(me, 0, "a holder word is never 0");
    // Acquire on success: pairs with io_conn's Release compare-and-swap that cleared the word,
    // so the caller's re-check of `ready`/`generation` sees the reset in progress or done.
    // Relaxed on failure: the value is the whole message (who holds it).
    match h.holder.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
        Ok(_) => Claim::Claimed,
        Err(w) if w == me => Claim::Ours,
        Err(w) => Claim::HeldBy(unpack(w).unwrap_or(ProcId { pid: 0, start_time: 0 })),
    }
}

/// Who holds the pair whose `in` ring header this is (`None`: free).
pub fn holder(h: &RingHeader) -> Option<ProcId> {
    // Relaxed: see the module docs (the HELLO check is ordered by the ring's tail; the periodic
    // check takes any recent value).
    unpack(h.holder.load(Ordering::Relaxed))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_and_rejects_what_does_not_fit() {
        let id = ProcId { pid: (1 << 22) - 1, start_time: (1 << 42) - 1 };
        assert_eq!(unpack(pack(id).unwrap()), Some(id));
        let id = ProcId { pid: 1, start_time: 0 };
        assert_eq!(unpack(pack(id).unwrap()), Some(id));
        assert_eq!(pack(ProcId { pid: 0, start_time: 5 }), None);
        assert_eq!(pack(ProcId { pid: 1 << 22, start_time: 5 }), None);
        assert_eq!(pack(ProcId { pid: 5, start_time: 1 << 42 }), None);
        assert_eq!(unpack(0), None);
        assert!(pack(ProcId::current()).is_some());
    }
}
