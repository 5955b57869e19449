//! The shared cache (`shmq::cache`): fill to the configured key count, no duplicates after
//! removes, several threads at once, and writers killed in the middle of a SET (at each step of
//! the write protocol, and by SIGKILL at random moments under load) over real segments of both
//! backends; after each death the table must audit clean, every key readable, values whole.
//!
//! Children are this test binary re-executed with `SHMQ_TEST_CHILD=<role>` (see `util`).

mod util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use shmq::HeapMemory;
use shmq::cache::{Cache, Cond, CrashPoint, Expiry, Full};
use shmq::region::Backend;
use util::*;

const WATCHDOG: Duration = Duration::from_secs(120);

fn heap_cache(max_keys: u64, memory: u64) -> Cache {
    let len = Cache::required_len(max_keys, memory).unwrap();
    Cache::create_in(Arc::new(HeapMemory::new(len)), max_keys, memory, 1).unwrap()
}

fn assert_sound(c: &Cache) -> shmq::cache::Audit {
    let a = c.lock().unwrap().check();
    assert!(a.problems.is_empty(), "{:?}", a.problems);
    a
}

/// A value that proves itself whole: `key|len|` then `len` bytes derived from the key.
fn value_for(key: &[u8], len: usize) -> Vec<u8> {
    let mut v = format!("{}|{len}|", String::from_utf8_lossy(key)).into_bytes();
    v.extend((0..len).map(|i| b'a' + ((i + key.len()) % 26) as u8));
    v
}

fn is_whole(key: &[u8], v: &[u8]) -> bool {
    let s = String::from_utf8_lossy(v);
    let mut it = s.splitn(3, '|');
    let (Some(k), Some(n), Some(_)) = (it.next(), it.next(), it.next()) else { return false };
    let Ok(n) = n.parse::<usize>() else { return false };
    k.as_bytes() == key && v == value_for(key, n).as_slice()
}

#[test]
fn holds_max_keys_random_keys() {
    for &(n, seed) in &[(1u64, 1u64), (100, 2), (1000, 3), (20_000, 4), (100_000, 5)] {
        let c = heap_cache(n, n * 64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let keys: Vec<[u8; 16]> = (0..n).map(|_| rng.random()).collect();
        let mut t = c.lock().unwrap();
        for k in &keys {
            assert_eq!(t.set(k, b"v", Cond::Always, Expiry::None, 0), Ok(true), "n={n}");
        }
        assert_eq!(t.keys(), n);
        let mut out = Vec::new();
        for k in &keys {
            out.clear();
            assert!(t.get(k, 0, &mut out));
            assert_eq!(out, b"v");
        }
        drop(t);
        let a = assert_sound(&c);
        assert_eq!((a.keys, a.used_chunks, a.free_chunks), (n, n, 0));
        // The pool is empty now: one more key is refused with a clear error, nothing breaks.
        let mut t = c.lock().unwrap();
        assert_eq!(t.set(b"one more", b"v", Cond::Always, Expiry::None, 0), Err(Full::NoMemory));
        // A DEL makes room again.
        assert!(t.del(&keys[0], 0));
        assert_eq!(t.set(b"one more", b"v", Cond::Always, Expiry::None, 0), Ok(true));
    }
}

#[test]
fn no_duplicates_after_removes() {
    let n = 5000u64;
    let c = heap_cache(n, n * 64 * 4);
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("key:{i}").into_bytes()).collect();
    let mut t = c.lock().unwrap();
    for k in &keys {
        assert_eq!(t.set(k, b"1", Cond::Always, Expiry::None, 0), Ok(true));
    }
    // Remove every other key: keys in later rows now have free slots in earlier rows; setting
    // them again must update them in place, not insert a second copy.
    for k in keys.iter().step_by(2) {
        assert!(t.del(k, 0));
    }
    for k in &keys {
        assert_eq!(t.set(k, b"22", Cond::Always, Expiry::None, 0), Ok(true));
    }
    assert_eq!(t.keys(), n);
    for k in keys.iter().skip(1).step_by(2) {
        assert!(t.del(k, 0));
        assert!(!t.exists(k, 0), "a second copy of {k:?} survived the DEL");
    }
    drop(t);
    let a = assert_sound(&c);
    assert_eq!(a.keys, n / 2);
}

#[test]
fn values_across_chunks_conditions_and_expiry() {
    let c = heap_cache(100, 64 * 1000);
    let mut t = c.lock().unwrap();
    let big = value_for(b"big", 5000);
    assert_eq!(t.set(b"big", &big, Cond::Always, Expiry::None, 0), Ok(true));
    let mut out = Vec::new();
    assert!(t.get(b"big", 0, &mut out));
    assert_eq!(out, big);
    assert_eq!(t.set(b"big", b"x", Cond::Nx, Expiry::None, 0), Ok(false));
    assert_eq!(t.set(b"nope", b"x", Cond::Xx, Expiry::None, 0), Ok(false));
    assert!(!t.exists(b"nope", 0));
    assert_eq!(t.set(b"big", b"", Cond::Xx, Expiry::At(1000), 0), Ok(true));
    assert_eq!(t.ttl_ms(b"big", 400), Some(Some(600)));
    assert!(t.exists(b"big", 999));
    assert!(!t.exists(b"big", 1000));
    assert_eq!(t.keys(), 0, "an expired key is removed when met");
    assert_eq!(t.incr_by(b"n", 5, 0), Ok(5));
    assert_eq!(t.incr_by(b"n", -7, 0), Ok(-2));
    assert_eq!(t.set(b"s", b"abc", Cond::Always, Expiry::None, 0), Ok(true));
    assert_eq!(t.incr_by(b"s", 1, 0), Err(shmq::cache::IncrError::NotInteger));
    assert_eq!(t.set(b"m", b"9223372036854775807", Cond::Always, Expiry::None, 0), Ok(true));
    assert_eq!(t.incr_by(b"m", 1, 0), Err(shmq::cache::IncrError::Overflow));
    t.flush();
    assert_eq!(t.keys(), 0);
    drop(t);
    let a = assert_sound(&c);
    assert_eq!(a.free_chunks, 1000);
}

#[test]
fn threads_read_and_write_at_once() {
    let c = Arc::new(heap_cache(10_000, 64 * 40_000));
    let threads = 4;
    let per = 5000;
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for i in 0..per {
                    let k = format!("t{t}:{}", i % 300).into_bytes();
                    let v = value_for(&k, i % 200);
                    c.lock().unwrap().set(&k, &v, Cond::Always, Expiry::None, 0).unwrap();
                    out.clear();
                    assert!(c.lock().unwrap().get(&k, 0, &mut out));
                    assert!(is_whole(&k, &out));
                    c.lock().unwrap().incr_by(b"counter", 1, 0).unwrap();
                    if i.is_multiple_of(7) {
                        c.lock().unwrap().del(&k, 0);
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let mut out = Vec::new();
    assert!(c.lock().unwrap().get(b"counter", 0, &mut out));
    assert_eq!(out, (threads * per).to_string().as_bytes());
    assert_sound(&c);
}

/// Child entry point: a no-op unless started by `spawn_child`.
#[test]
fn child() {
    let Ok(role) = std::env::var(CHILD_ENV) else { return };
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let backend =
        if var::<String>("SHMQ_T_BACKEND") == "sysv" { Backend::Sysv } else { Backend::Posix };
    let name: String = var("SHMQ_T_NAME");
    let c = Cache::attach(backend, &name).expect("attach");
    match role.as_str() {
        // One SET of key "victim" that dies at the given step.
        "crash-at" => {
            let p = match var::<u32>("SHMQ_T_POINT") {
                1 => CrashPoint::MidFill,
                2 => CrashPoint::AfterJournal,
                3 => CrashPoint::MidSlot,
                4 => CrashPoint::MidFree,
                _ => CrashPoint::MidDel,
            };
            shmq::cache::set_crash_point(p);
            let mut t = c.lock().unwrap();
            if p == CrashPoint::MidDel {
                t.del(b"victim", 0);
            } else {
                let v = value_for(b"victim", 300);
                let _ = t.set(b"victim", &v, Cond::Always, Expiry::None, 0);
            }
            panic!("crash point {p:?} not reached");
        }
        // SETs and DELs of 200 keys with self-checking values until killed.
        "load" => {
            let mut i = 0usize;
            let deadline = Instant::now() + WATCHDOG;
            while Instant::now() < deadline {
                let k = format!("k{}", i % 200).into_bytes();
                let v = value_for(&k, (i * 37) % 500);
                let mut t = c.lock().unwrap();
                if i.is_multiple_of(11) {
                    t.del(&k, 0);
                } else {
                    t.set(&k, &v, Cond::Always, Expiry::None, 0).unwrap();
                }
                drop(t);
                i += 1;
            }
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

fn backend_env(b: Backend) -> String {
    match b {
        Backend::Posix => "posix".into(),
        Backend::Sysv => "sysv".into(),
    }
}

/// Every key readable with a whole value; the audit clean; returns the live keys.
fn audit_all(c: &Cache) -> u64 {
    let mut t = c.lock().unwrap();
    let a = t.check();
    assert!(a.problems.is_empty(), "{:?}", a.problems);
    let mut out = Vec::new();
    for i in 0..200 {
        let k = format!("k{i}").into_bytes();
        out.clear();
        if t.get(&k, 0, &mut out) {
            assert!(is_whole(&k, &out), "{k:?} -> {:?}", String::from_utf8_lossy(&out));
        }
    }
    out.clear();
    if t.get(b"victim", 0, &mut out) {
        assert!(is_whole(b"victim", &out), "victim -> {:?}", String::from_utf8_lossy(&out));
    }
    a.keys
}

#[test]
fn writer_killed_at_each_step_of_a_set() {
    for backend in BACKENDS {
        let name = unique(&format!("kvcrash-{}", backend_env(backend)));
        let _cleanup = Cleanup::segment(backend, &format!("{name}.kv"));
        let _ = Cache::remove(backend, &name);
        let c = Cache::create(backend, &name, 1000, 64 * 4000, 1).unwrap();
        for point in 1..=5u32 {
            {
                let mut t = c.lock().unwrap();
                // The old value spans several chunks, so MidFree really is half-way.
                let old = value_for(b"victim", 200);
                t.set(b"victim", &old, Cond::Always, Expiry::None, 0).unwrap();
            }
            let before = c.counters().recoveries.load(shmq::sync::Ordering::Relaxed);
            let mut child = spawn_child(
                "crash-at",
                &[
                    ("SHMQ_T_BACKEND", backend_env(backend)),
                    ("SHMQ_T_NAME", name.clone()),
                    ("SHMQ_T_POINT", point.to_string()),
                ],
            );
            let st = wait_child(&mut child, WATCHDOG);
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(st.signal(), Some(libc::SIGKILL), "point {point}: {st:?}");
            audit_all(&c);
            let after = c.counters().recoveries.load(shmq::sync::Ordering::Relaxed);
            assert_eq!(after, before + 1, "point {point}: the death was noticed and repaired");
            let a = assert_sound(&c);
            assert_eq!(a.used_chunks + a.free_chunks, 4000, "no chunk lost for good");
        }
        drop(c);
        Cache::remove(backend, &name).unwrap();
    }
}

#[test]
fn writer_killed_under_load_in_a_loop() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for backend in BACKENDS {
        let name = unique(&format!("kvkill-{}", backend_env(backend)));
        let _cleanup = Cleanup::segment(backend, &format!("{name}.kv"));
        let _ = Cache::remove(backend, &name);
        let c = Cache::create(backend, &name, 1000, 64 * 8000, 1).unwrap();
        for round in 0..15 {
            let mut child = spawn_child(
                "load",
                &[("SHMQ_T_BACKEND", backend_env(backend)), ("SHMQ_T_NAME", name.clone())],
            );
            // Let it run into its loop, while this process also writes, then kill it.
            let until = Instant::now() + Duration::from_millis(rng.random_range(20..120));
            let mut i = 0usize;
            while Instant::now() < until {
                let k = format!("k{}", (i * 7) % 200).into_bytes();
                let v = value_for(&k, i % 300);
                c.lock().unwrap().set(&k, &v, Cond::Always, Expiry::None, 0).unwrap();
                i += 1;
            }
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            wait_child(&mut child, WATCHDOG);
            let keys = audit_all(&c);
            assert!(keys <= 201, "round {round}: {keys} keys");
        }
        let a = assert_sound(&c);
        assert_eq!(a.used_chunks + a.free_chunks, 8000);
        drop(c);
        Cache::remove(backend, &name).unwrap();
    }
}
