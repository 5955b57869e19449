//! Loom models of the commit stamps and the doorbell handshake (`shmq::ring::commit_stamp` /
//! `is_stamped`, `publish_tail` / `arm_and_recheck`), of the holder word
//! (`shmq::ring::holder::claim` against `shmq::ring::reset_header`), and of stale sides against a
//! reset.
//!
//! Run: `LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//! cargo test -p shmq --test loom --release` (what `.ci/loom` runs).
//!
//! The header lives on the heap (`RingHeader::new_for_loom`: loom atomics cannot sit in raw shared
//! memory) and the ring logic takes `&RingHeader` and `&AtomicU64` stamp words, so the model runs
//! the very functions the processes run. The stamp words of the data area are loom atomics here
//! and the payload a `loom::cell::UnsafeCell`, so a consumer that reads a payload the producer
//! has not finished (no happens-before through the stamp) is a loom causality failure. The FIFO
//! is in the model too, or a lost wake-up could not show: a counter of unread bytes (`write` =
//! +1, the consumer's drain = swap to 0). Syscalls on one FIFO are ordered by the kernel, so the
//! counter uses AcqRel read-modify-writes.
//!
//! Checked (2026-11-23, with `tail` as the signal) that the doorbell models catch the bug they
//! exist for: with either `fence(SeqCst)` removed, `one_push_one_sleep` failed with "lost
//! wake-up" and `two_rounds` with a loom deadlock. Re-checked with commit stamps (layout 3,
//! 2026-12-02): see the report lines at the test functions below.
//!
//! The stale-publish models (issue 14, finding 7): checked (2026-12-02) that
//! `stale_consumer_never_writes_into_a_new_generation` fails ("a stale head landed in generation
//! 2") when `publish_head` stores instead of compare-and-swapping (a temporary edit), even with
//! the generation check in front of the store.
//!
//! The holder-word models: checked (2026-12) that `claim_against_reset_never_attaches_the_old_
//! generation` fails ("attached under the generation being reset") when md's claim in
//! `shmq::ring::holder::claim` is made `Relaxed` instead of `Acquire` (a temporary edit).
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use shmq::layout::{Direction, RingHeader, RingParams};
use shmq::ring::{Published, arm_and_recheck, commit_stamp, is_stamped, publish_tail};
use shmq::sync::{AtomicU32, AtomicU64, Ordering};

fn header() -> Arc<RingHeader> {
    Arc::new(RingHeader::new_for_loom(&RingParams {
        capacity: 256,
        max_payload: 64,
        direction: Direction::ToMd,
        creator_pid: 1,
        creator_start_time: 0,
        epoch: 1,
        generation: 1,
    }))
}

/// Stamp words of the headers at positions 0, 24, 48 (24-byte frames), with initial contents.
fn words(init: [u64; 3]) -> Arc<[AtomicU64; 3]> {
    Arc::new(init.map(AtomicU64::new))
}

/// A consumer that sees a frame's stamp sees its whole payload: the stamp is stored last with
/// Release, loaded with Acquire. (Checked 2026-12-02: with the stamp store in `commit_stamp`
/// made Relaxed, loom fails this model with a causality violation on the payload cell.)
#[test]
fn consumer_never_sees_a_frame_before_its_payload() {
    loom::model(|| {
        let w = words([0, 0, 0]);
        let payload = Arc::new(UnsafeCell::new(0u64));
        let producer = {
            let (w, payload) = (w.clone(), payload.clone());
            thread::spawn(move || {
                // SAFETY: the producer owns the payload until it stamps the frame.
                payload.with_mut(|p| unsafe { *p = 42 });
                commit_stamp(&w[0], &w[1], 0);
            })
        };
        if is_stamped(&w[0], 0) {
            // SAFETY: the stamp says the producer is done with the payload.
            let v = payload.with(|p| unsafe { *p });
            assert_eq!(v, 42, "frame seen before its payload was complete");
        }
        producer.join().expect("producer");
    });
}

/// Clear-ahead: the word at the next header position holds old bytes that equal the stamp
/// expected there (25 = position 24 + 1: a client's payload of an earlier lap). A consumer that
/// took frame 0 and polls position 24 sees 0 or the real frame 1, never the old bytes: whenever
/// it takes frame 1, frame 1's payload is complete. (Checked 2026-12-02: with the clear store in
/// `commit_stamp` removed, loom fails this model: the consumer reads payload 1 while the producer
/// writes it.)
#[test]
fn clear_ahead_consumer_never_takes_stale_bytes() {
    loom::model(|| {
        let w = words([0, 25, 0]);
        let p0 = Arc::new(UnsafeCell::new(0u64));
        let p1 = Arc::new(UnsafeCell::new(0u64));
        let producer = {
            let (w, p0, p1) = (w.clone(), p0.clone(), p1.clone());
            thread::spawn(move || {
                // SAFETY: each payload is the producer's until its frame is stamped.
                p0.with_mut(|p| unsafe { *p = 1 });
                commit_stamp(&w[0], &w[1], 0);
                // SAFETY: as above.
                p1.with_mut(|p| unsafe { *p = 2 });
                commit_stamp(&w[1], &w[2], 24);
            })
        };
        while !is_stamped(&w[0], 0) {
            thread::yield_now();
        }
        // SAFETY: frame 0 is stamped.
        assert_eq!(p0.with(|p| unsafe { *p }), 1);
        // One Acquire load, as `is_stamped` makes it: 0 (cleared) or frame 1's stamp.
        match w[1].load(Ordering::Acquire) {
            0 => {}
            25 => {
                // SAFETY: frame 1 is stamped (or the model fails here, which is the point).
                assert_eq!(p1.with(|p| unsafe { *p }), 2, "took stale bytes for frame 1");
            }
            v => panic!("word at 24 holds {v}"),
        }
        producer.join().expect("producer");
    });
}

/// One commit + flush against one attempt to sleep. If the consumer decided to sleep, the FIFO
/// must hold a byte once the producer is done (else it would sleep forever with a frame in the
/// ring). (Checked 2026-12-02: with the fence in `arm_and_recheck` removed, loom fails this
/// model with "lost wake-up".)
#[test]
fn one_push_one_sleep() {
    loom::model(|| {
        let h = header();
        let w = words([0, 0, 0]);
        let fifo = Arc::new(AtomicU32::new(0)); // unread doorbell bytes

        let producer = {
            let (h, w, fifo) = (h.clone(), w.clone(), fifo.clone());
            thread::spawn(move || {
                // The frame's bytes would be written here, then its stamp (commit), then flush:
                commit_stamp(&w[0], &w[1], 0);
                if publish_tail(&h, 0, 24) == Published::Stored(true) {
                    fifo.fetch_add(1, Ordering::AcqRel); // write(fifo, 1 byte)
                }
            })
        };

        // Consumer at position 0.
        let mut slept = false;
        if !is_stamped(&w[0], 0) {
            fifo.swap(0, Ordering::AcqRel); // drain the FIFO before arming
            slept = arm_and_recheck(&h, 0, &w[0], 0);
        }
        producer.join().expect("producer");
        if slept {
            assert!(fifo.load(Ordering::Acquire) > 0, "lost wake-up: slept with data and no byte");
            assert_eq!(h.armed.0.load(Ordering::Relaxed), 0, "the ringing producer disarmed");
        } else {
            assert!(is_stamped(&w[0], 0));
        }
    });
}

/// A FIFO the consumer can really block on: loom reports a deadlock if the consumer waits for a
/// byte nobody will write.
struct Fifo {
    bytes: Mutex<u32>,
    cv: Condvar,
}

impl Fifo {
    fn write(&self) {
        *self.bytes.lock().expect("lock") += 1;
        self.cv.notify_one();
    }
    fn drain(&self) {
        *self.bytes.lock().expect("lock") = 0;
    }
    /// epoll_wait on the FIFO: returns once a byte is unread (does not consume it).
    fn wait(&self) {
        let mut b = self.bytes.lock().expect("lock");
        while *b == 0 {
            b = self.cv.wait(b).expect("wait");
        }
    }
}

/// Two commit + flush rounds against a consumer that loops: take what is flushed up to it and
/// stamped, else drain, arm, re-check and really sleep. Every frame must be seen; a lost wake-up is a loom
/// deadlock. (Checked 2026-12-02: with the fence in `publish_tail` removed, loom fails this
/// model with a deadlock.)
#[test]
fn two_rounds() {
    loom::model(|| {
        let h = header();
        let w = words([0, 0, 0]);
        let fifo = Arc::new(Fifo { bytes: Mutex::new(0), cv: Condvar::new() });

        let producer = {
            let (h, w, fifo) = (h.clone(), w.clone(), fifo.clone());
            thread::spawn(move || {
                for (i, (published, tail)) in [(0, 24), (24, 48)].into_iter().enumerate() {
                    commit_stamp(&w[i], &w[i + 1], published);
                    if publish_tail(&h, published, tail) == Published::Stored(true) {
                        fifo.write();
                    }
                }
            })
        };

        let mut i = 0;
        while i < 2 {
            let pos = 24 * i as u64;
            // What `Consumer::has_data` asks: the last flush reaches us, and the stamp is there.
            if h.tail.0.load(Ordering::Relaxed) >= pos && is_stamped(&w[i], pos) {
                i += 1; // consume
                continue;
            }
            fifo.drain();
            if arm_and_recheck(&h, pos, &w[i], pos) {
                fifo.wait();
            }
        }
        producer.join().expect("producer");
    });
}

// ---- the holder word (`shmq::ring::holder`) ------------------------------------------------

use shmq::ring::holder::{self, Claim};
use shmq::ring::{is_current, reset_header};
use shmq::sys::ProcId;

const DEAD: ProcId = ProcId { pid: 10, start_time: 1 };
const B: ProcId = ProcId { pid: 11, start_time: 2 };
const C: ProcId = ProcId { pid: 12, start_time: 3 };

fn word(p: ProcId) -> u64 {
    holder::pack(p).expect("fits")
}

/// One attach attempt as `PairConfig::attach` makes it: `ready` and `generation` first, then the
/// claim, then the re-check. Returns the generation attached under, if any.
fn try_attach(h: &shmq::layout::RingHeader, me: u64) -> Option<u64> {
    if h.ready.load(Ordering::Acquire) != 1 {
        return None;
    }
    let generation = h.generation.load(Ordering::Acquire);
    match holder::claim(h, me) {
        Claim::Claimed | Claim::Ours => {}
        Claim::HeldBy(_) => return None, // dead or alive: not ours; retry or refuse
    }
    is_current(h, generation).then_some(generation)
}

/// A newcomer attaches while io_conn resets the pair for its dead predecessor. The newcomer never
/// attaches under the old generation (where the dead md's replies may still sit), and whenever it
/// attached, the word names it afterwards.
#[test]
fn claim_against_reset_never_attaches_the_old_generation() {
    loom::model(|| {
        let h = header();
        h.holder.store(word(DEAD), Ordering::Relaxed);

        let io = {
            let h = h.clone();
            thread::spawn(move || assert!(reset_header(&h, 2, Some(word(DEAD)))))
        };
        // Two attempts: the second one may find the word already its own.
        let attached = try_attach(&h, word(B)).or_else(|| try_attach(&h, word(B)));
        io.join().expect("io_conn");
        if let Some(g) = attached {
            assert_eq!(g, 2, "attached under the generation being reset");
            assert_eq!(holder::holder(&h), Some(B));
        }
        // The dead md's claim is gone in every interleaving.
        assert_ne!(holder::holder(&h), Some(DEAD));
    });
}

/// Two md attach at once to a free pair: exactly one holds it; the other sees the winner.
#[test]
fn two_claimants_one_winner() {
    loom::model(|| {
        let h = header();
        let c = {
            let h = h.clone();
            thread::spawn(move || holder::claim(&h, word(C)))
        };
        let b = holder::claim(&h, word(B));
        let c = c.join().expect("claimant");
        match (b, c) {
            (Claim::Claimed, Claim::HeldBy(w)) => {
                assert_eq!(w, B);
                assert_eq!(holder::holder(&h), Some(B));
            }
            (Claim::HeldBy(w), Claim::Claimed) => {
                assert_eq!(w, C);
                assert_eq!(holder::holder(&h), Some(C));
            }
            other => panic!("not exactly one winner: {other:?}"),
        }
    });
}

/// A reset while the holder lives (no release) keeps its claim: a newcomer is refused in every
/// interleaving, and the holder's re-attach finds the word its own.
#[test]
fn reset_without_release_keeps_the_claim() {
    loom::model(|| {
        let h = header();
        h.holder.store(word(B), Ordering::Relaxed);
        let io = {
            let h = h.clone();
            thread::spawn(move || assert!(!reset_header(&h, 2, None)))
        };
        assert_eq!(holder::claim(&h, word(C)), Claim::HeldBy(B));
        io.join().expect("io_conn");
        assert_eq!(holder::claim(&h, word(B)), Claim::Ours);
    });
}

// ---- stale sides against a reset (issue 14, finding 7) ---------------------------------------

use shmq::ring::{generation_base, publish_head};

/// md's consumer of generation 1 publishes its head while io_conn resets the ring to generation
/// 2. However the two interleave, the new generation starts with both positions at its base: the
/// stale head never lands after the reset (it would make every later attach fail).
#[test]
fn stale_consumer_never_writes_into_a_new_generation() {
    loom::model(|| {
        let h = header();
        h.tail.0.store(48, Ordering::Relaxed);
        let base = generation_base(0, 48, 256);
        let io = {
            let h = h.clone();
            thread::spawn(move || {
                reset_header(&h, 2, None);
            })
        };
        // Same generation check as `Consumer::publish`, then the publish itself.
        if h.generation.load(Ordering::Relaxed) == 1 {
            let _ = publish_head(&h, 0, 48);
        }
        io.join().expect("io_conn");
        // The base depends on whether the stale publish landed before the reset read the
        // positions (then it counts, and is overwritten); either way both words hold the base.
        // Read-modify-writes (they read the latest value in modification order).
        let (head, tail) =
            (h.head.0.fetch_add(0, Ordering::SeqCst), h.tail.0.fetch_add(0, Ordering::SeqCst));
        assert!(
            head == tail && (head == base || head == generation_base(48, 48, 256)),
            "a stale head landed in generation 2: head {head}, tail {tail}"
        );
    });
}

/// The same for the producer's `tail`: a stale flush racing the reset never lands.
#[test]
fn stale_producer_never_writes_into_a_new_generation() {
    loom::model(|| {
        let h = header();
        let base = generation_base(0, 0, 256);
        let io = {
            let h = h.clone();
            thread::spawn(move || {
                reset_header(&h, 2, None);
            })
        };
        if h.generation.load(Ordering::Relaxed) == 1 {
            let _ = publish_tail(&h, 0, 24);
        }
        io.join().expect("io_conn");
        // Read-modify-writes (they read the latest value in modification order).
        let (head, tail) =
            (h.head.0.fetch_add(0, Ordering::SeqCst), h.tail.0.fetch_add(0, Ordering::SeqCst));
        assert!(
            head == tail && (tail == base || tail == generation_base(0, 24, 256)),
            "a stale tail landed in generation 2: head {head}, tail {tail}"
        );
    });
}
