//! The stats segment: layout, counters, the sequence lock (including a writer killed mid-update),
//! a concurrent writer and reader, and read-only attach in a child process.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use shmq::layout::Direction;
use shmq::region::{Backend, Segment};
use shmq::ring::{HeapMemory, Memory};
use shmq::stats::{
    self, COMMAND_NAME_WORDS, COMMAND_SLOTS, CommandNameError, CounterKind, HIST_BUCKETS,
    IO_COUNTERS, Io, IoCounts, MD_COMMANDS_WORD, MD_COUNTERS, MD_NAMES_WORD, MD_OTHER_WORD,
    MD_WORDS, Md, MdCounts, MdState, QueueConsumer, QueueProducer, SEQLOCK_RETRIES, StatsError,
    StatsReader, StatsSegment, bucket_index, bucket_upper_bound, histogram_count, quantile,
    required_len,
};
use shmq::sync::{AtomicU64, Ordering};
use shmq::sys::ProcId;

const ME: ProcId = ProcId { pid: 4242, start_time: 99 };

fn heap(slots: u32) -> (Arc<HeapMemory>, StatsSegment) {
    let mem = Arc::new(HeapMemory::new(required_len(slots)));
    let sut = StatsSegment::create_in(mem.clone(), slots, 11, ME).expect("create");
    (mem, sut)
}

/// Runs `f` on a thread and fails the test if it does not finish within a generous watchdog.
fn watchdog<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).expect("watchdog: the operation hung")
}

#[test]
fn layout_sections_and_descriptors() {
    let (mem, _sut) = heap(3);
    let r = StatsReader::attach_in(mem).unwrap();
    let info = r.info();
    assert_eq!(
        (info.epoch, info.md_slots, info.creator_pid, info.creator_start_time),
        (11, 3, 4242, 99)
    );
    assert!(info.created_unix_ns > 1_600_000_000_000_000_000);
    let names: Vec<&str> = r.sections().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["io", "md", "in.producer", "in.consumer", "out.producer", "out.consumer"]);
    let inst: Vec<u32> = r.sections().iter().map(|s| s.instances).collect();
    assert_eq!(inst, [1, 3, 3, 3, 3, 3]);
    // The descriptor table is the typed tables, word for word.
    let io = &r.sections()[0];
    assert_eq!(io.descriptors.len(), Io::COUNT);
    for (d, c) in io.descriptors.iter().zip(IO_COUNTERS.iter()) {
        assert_eq!(
            (d.name.as_str(), d.unit.as_str(), d.help.as_str(), d.kind),
            (c.name, c.unit, c.help, c.kind)
        );
    }
    let md = &r.sections()[1];
    for (i, (d, c)) in md.descriptors.iter().zip(MD_COUNTERS.iter()).enumerate() {
        assert_eq!((d.name.as_str(), d.word, d.name_word), (c.name, i + 1, 0));
    }
    // Then the command slots, named by the block, then `commands.other`; the names area has no
    // descriptors.
    assert_eq!((md.words, md.descriptors.len()), (MD_WORDS, Md::COUNT + COMMAND_SLOTS + 1));
    for (i, d) in md.descriptors[Md::COUNT..Md::COUNT + COMMAND_SLOTS].iter().enumerate() {
        assert_eq!(d.word, MD_COMMANDS_WORD + i);
        assert_eq!(d.name_word, MD_NAMES_WORD + i * COMMAND_NAME_WORDS);
        assert_eq!(d.kind, CounterKind::Counter);
    }
    let other = md.descriptors.last().unwrap();
    assert_eq!(
        (other.name.as_str(), other.word, other.name_word),
        ("commands.other", MD_OTHER_WORD, 0)
    );
    let cons = &r.sections()[3];
    assert_eq!(cons.words, QueueConsumer::COUNT + HIST_BUCKETS);
    let buckets: Vec<u64> = cons
        .descriptors
        .iter()
        .filter(|d| d.kind == CounterKind::Bucket)
        .map(|d| d.bound)
        .collect();
    assert_eq!(buckets.len(), HIST_BUCKETS);
    assert!(buckets.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*buckets.last().unwrap(), u64::MAX);
    // Every value starts at zero and every block reads consistent.
    let snap = r.snapshot();
    assert_eq!(snap.blocks.len(), 1 + 5 * 3);
    assert!(snap.blocks.iter().all(|b| b.consistent && b.values.iter().all(|&v| v == 0)));
}

#[test]
fn histogram_buckets_are_contiguous() {
    for i in 0..HIST_BUCKETS - 1 {
        let ub = bucket_upper_bound(i);
        assert_eq!(bucket_index(ub), i, "upper bound of {i}");
        assert_eq!(bucket_index(ub + 1), i + 1, "next after {i}");
    }
    assert_eq!(bucket_index(0), 0);
    assert_eq!(bucket_index(u64::MAX), HIST_BUCKETS - 1);
    // Quantiles: 98 values in [256, 383], 2 in [2^20, 1.5*2^20).
    let mut b: Vec<(u64, u64)> = (0..HIST_BUCKETS).map(|i| (bucket_upper_bound(i), 0)).collect();
    b[bucket_index(300)].1 = 98;
    b[bucket_index(1 << 20)].1 = 2;
    assert_eq!(quantile(&b, 0.5), Some(383));
    assert_eq!(quantile(&b, 0.98), Some(383));
    assert_eq!(quantile(&b, 0.99), Some((1 << 20) + (1 << 19) - 1));
    assert_eq!(quantile(&[], 0.5), None);
}

/// Issue 14 finding 12: a hostile writer can put any value in the buckets. Sums saturate: no
/// overflow panic, and the quantiles stay bucket bounds in order.
#[test]
fn histogram_sums_saturate_on_hostile_buckets() {
    let bounds: Vec<u64> = (0..HIST_BUCKETS).map(bucket_upper_bound).collect();
    let hostile = |vals: &[(usize, u64)]| {
        let mut b: Vec<(u64, u64)> = bounds.iter().map(|&ub| (ub, 0)).collect();
        for &(i, v) in vals {
            b[i].1 = v;
        }
        b
    };
    let b = hostile(&[(0, u64::MAX), (3, u64::MAX), (HIST_BUCKETS - 1, u64::MAX)]);
    assert_eq!(histogram_count(&b), u64::MAX);
    assert_eq!(quantile(&b, 0.0), Some(bounds[0]));
    assert_eq!(quantile(&b, 0.5), Some(bounds[0]));
    assert_eq!(quantile(&b, 1.0), Some(bounds[0]), "the first bucket already holds u64::MAX");
    let b = hostile(&[(5, 1), (7, u64::MAX - 1), (9, u64::MAX)]);
    assert_eq!(histogram_count(&b), u64::MAX);
    assert_eq!(quantile(&b, 0.0), Some(bounds[5]));
    assert_eq!(quantile(&b, 0.999), Some(bounds[7]));
    assert_eq!(quantile(&b, 1.0), Some(bounds[7]));
    // Every bucket at the maximum, every quantile: sane (a bucket bound), never a panic.
    let b = hostile(&(0..HIST_BUCKETS).map(|i| (i, u64::MAX)).collect::<Vec<_>>());
    for q in [0.0, 0.25, 0.5, 0.99, 1.0, f64::NAN, -1.0, 2.0] {
        let v = quantile(&b, q).expect("not empty");
        assert!(bounds.contains(&v) || v == bounds[HIST_BUCKETS - 2] + 1, "q {q}: {v}");
    }
}

/// Found by the `stats` fuzz target (fuzz/crashes/stats, issue 14): a writer that sets every
/// word of every block (histogram buckets included) to `u64::MAX` made the reader's path
/// (snapshot, histogram, quantile) overflow. Reads now saturate; this walks that whole path.
#[test]
fn issue_14_fuzz_stats_all_words_max_reads_without_overflow() {
    let (mem, sut) = heap(2);
    let reader = sut.reader();
    for (si, s) in reader.sections().iter().enumerate() {
        for i in 0..s.instances {
            let off = reader.block_offset(si, i);
            // Word 0 (the sequence) stays even so the read is consistent; the rest is hostile.
            for w in 1..s.words {
                let at = off + w * 8;
                assert!(at + 8 <= mem.len());
                // SAFETY: in bounds (checked above), 8-aligned (blocks are 128-aligned, words 8
                // bytes). A single-threaded test: no other reference to these bytes exists, and
                // the reader reads them only after this loop.
                unsafe { mem.as_ptr().add(at).cast::<u64>().write(u64::MAX) };
            }
        }
    }
    let snap = reader.snapshot();
    for b in &snap.blocks {
        let names: Vec<String> = snap.counters(b).map(|c| c.name.to_owned()).collect();
        for name in names {
            let (buckets, _sum) = snap.histogram(b, &name);
            let _ = histogram_count(&buckets);
            for q in [0.0, 0.5, 0.99, 1.0] {
                let _ = quantile(&buckets, q);
            }
        }
    }
}

#[test]
fn counters_round_trip_through_a_reader() {
    let (mem, sut) = heap(2);
    let io = sut.io();
    io.inc(Io::ConnectionsAccepted);
    io.add(Io::BytesIn, 1000);
    io.inc(Io::ConnectionsCurrent);
    io.inc(Io::ConnectionsCurrent);
    io.dec(Io::ConnectionsCurrent);
    let md = sut.attach_writer_md(1, ProcId { pid: 7, start_time: 8 }).unwrap();
    md.add(Md::MessagesIn, 5);
    md.set_state(MdState::Running);
    let mut cons = sut.queue_consumer(1, Direction::ToMd).unwrap();
    let prod = sut.queue_producer(1, Direction::ToMd).unwrap();
    prod.stamp_publish(1_000);
    assert_eq!(cons.note_pickup(1_500), Some(500));
    assert_eq!(cons.note_pickup(1_600), None, "one publish is recorded once");
    cons.record_wait_ns(3_000_000);
    prod.add(QueueProducer::FullEvents, 2);

    let snap = StatsReader::attach_in(mem).unwrap().snapshot();
    assert_eq!(snap.get("io", 0, "connections_accepted"), Some(1));
    assert_eq!(snap.get("io", 0, "bytes_in"), Some(1000));
    assert_eq!(snap.get("io", 0, "connections_current"), Some(1));
    assert_eq!(snap.get("md", 1, "pid"), Some(7));
    assert_eq!(snap.get("md", 1, "proc_start_ticks"), Some(8));
    assert_eq!(snap.get("md", 1, "state"), Some(MdState::Running as u64));
    assert_eq!(snap.get("md", 1, "epoch"), Some(11));
    assert_eq!(snap.get("md", 1, "messages_in"), Some(5));
    assert_eq!(snap.get("md", 0, "pid"), Some(0));
    assert_eq!(snap.get("in.producer", 1, "full_events"), Some(2));
    let b = snap.block("in.consumer", 1).unwrap();
    let (h, sum) = snap.histogram(b, stats::WAIT_HISTOGRAM);
    assert_eq!(sum, 500 + 3_000_000);
    assert_eq!(h.iter().map(|x| x.1).sum::<u64>(), 2);
    assert_eq!(h[bucket_index(500)].1, 1);
    assert_eq!(h[bucket_index(3_000_000)].1, 1);

    // A new md in the slot starts from zero with its own identity.
    let md2 = sut.attach_writer_md(1, ProcId { pid: 70, start_time: 80 }).unwrap();
    md2.inc(Md::Errors);
    let snap = sut.reader().snapshot();
    assert_eq!(snap.get("md", 1, "messages_in"), Some(0));
    assert_eq!(snap.get("md", 1, "errors"), Some(1));
    assert_eq!(snap.get("md", 1, "pid"), Some(70));
    assert_eq!(snap.get("in.consumer", 1, "wait_ns"), Some(0));
    // io_conn marks it dead only if the identity matches.
    assert!(!sut.mark_md_dead(1, ProcId { pid: 7, start_time: 8 }));
    assert!(sut.mark_md_dead(1, ProcId { pid: 70, start_time: 80 }));
    assert_eq!(sut.reader().snapshot().get("md", 1, "state"), Some(MdState::Dead as u64));
    assert!(matches!(sut.attach_writer_md(2, ME), Err(StatsError::BadSlot(2))));
}

#[test]
fn attach_rejects_what_is_not_a_ready_stats_segment() {
    // All zeroes: being initialised.
    let mem = Arc::new(HeapMemory::new(required_len(1)));
    assert!(matches!(StatsReader::attach_in(mem.clone()), Err(StatsError::NotReady)));
    // Foreign bytes.
    // SAFETY: in bounds (the region is at least 4 KiB), aligned (128), and no other reference to
    // the region exists while we write.
    unsafe { mem.as_ptr().cast::<u64>().write(0x1234) };
    assert!(matches!(StatsReader::attach_in(mem), Err(StatsError::BadMagic(0x1234))));
    // A segment for 4 slots, read through a mapping cut short.
    let (mem, _sut) = heap(4);
    let short = Arc::new(HeapMemory::new(required_len(1)));
    // SAFETY: both regions are valid for `required_len(1)` bytes, distinct allocations, and
    // nothing else accesses them during the copy.
    unsafe { std::ptr::copy_nonoverlapping(mem.as_ptr(), short.as_ptr(), short.len()) };
    assert!(matches!(StatsReader::attach_in(short), Err(StatsError::Truncated { .. })));
    assert!(matches!(
        StatsSegment::create_in(Arc::new(HeapMemory::new(4096)), 0, 1, ME),
        Err(StatsError::BadSlot(0))
    ));
}

/// The sequence word of `section`/`instance`, through the raw heap region.
fn seq_word<'a>(
    mem: &'a HeapMemory,
    r: &StatsReader,
    section: usize,
    instance: u32,
) -> &'a AtomicU64 {
    let off = r.block_offset(section, instance);
    // SAFETY: `block_offset` is in bounds of the region and 8-aligned (the reader validated the
    // geometry); the reference lives no longer than `mem`; the word is only ever accessed through
    // atomics.
    unsafe { &*mem.as_ptr().add(off).cast::<AtomicU64>() }
}

#[test]
fn killed_writer_mid_update_does_not_hang_a_reader() {
    let (mem, sut) = heap(2);
    let md = sut.attach_writer_md(0, ProcId { pid: 5, start_time: 6 }).unwrap();
    md.inc(Md::MessagesIn);
    let r = StatsReader::attach_in(mem.clone()).unwrap();
    // Simulate a writer killed between write_begin and write_end: the sequence stays odd.
    let seq = seq_word(&mem, &r, 1, 0);
    seq.store(seq.load(Ordering::Relaxed) | 1, Ordering::Relaxed);
    let r2 = r.clone();
    let (consistent, values) = watchdog(30, move || {
        let mut v = vec![0; r2.sections()[1].words];
        let ok = r2.read_block(1, 0, &mut v);
        (ok, v)
    });
    assert!(!consistent, "an odd sequence must be reported inconsistent");
    assert_eq!(values[Md::MessagesIn.word() - 1], 1, "the last read is returned");
    assert_eq!(values[Md::Pid.word() - 1], 5);
    // The other blocks are unaffected, and a snapshot marks just this one.
    let snap = watchdog(30, move || r.snapshot());
    let bad: Vec<(usize, u32)> =
        snap.blocks.iter().filter(|b| !b.consistent).map(|b| (b.section, b.instance)).collect();
    assert_eq!(bad, [(1, 0)]);
    // io_conn marks the dead md: that repairs the sequence.
    drop(md);
    assert!(sut.mark_md_dead(0, ProcId { pid: 5, start_time: 6 }));
    assert!(sut.reader().snapshot().blocks.iter().all(|b| b.consistent));
    assert_eq!(seq.load(Ordering::Relaxed) & 1, 0);
    let _ = SEQLOCK_RETRIES;
}

#[test]
fn concurrent_writer_and_reader_see_agreeing_values() {
    const ROUNDS: u64 = 20_000;
    let (mem, sut) = heap(1);
    let md = sut.attach_writer_md(0, ProcId { pid: 1, start_time: 7 }).unwrap();
    let cons = sut.queue_consumer(0, Direction::ToIo).unwrap();
    let writer = thread::spawn(move || {
        for k in 1..=ROUNDS {
            // Identity: start time is always 7 * pid.
            md.set_identity(ProcId { pid: k as u32, start_time: 7 * k }, 11, MdState::Running);
            // Histogram: every record is 1000 ns, so sum == 1000 * count.
            cons.record_wait_ns(1000);
        }
    });
    let r = StatsReader::attach_in(mem).unwrap();
    let reader = thread::spawn(move || {
        let (mut consistent, mut last_pid) = (0u64, 0u64);
        let mut md = vec![0; r.sections()[1].words];
        let mut q = vec![0; r.sections()[5].words];
        loop {
            if r.read_block(1, 0, &mut md) {
                consistent += 1;
                let (pid, start) = (md[Md::Pid.word() - 1], md[Md::ProcStartTicks.word() - 1]);
                assert_eq!(start, 7 * pid, "identity torn");
                assert!(pid >= last_pid, "pid went backwards");
                last_pid = pid;
            }
            if r.read_block(5, 0, &mut q) {
                let count: u64 = q[QueueConsumer::COUNT..].iter().sum();
                assert_eq!(q[QueueConsumer::WaitSumNs.word() - 1], 1000 * count, "histogram torn");
            }
            if last_pid == ROUNDS {
                return consistent;
            }
        }
    });
    writer.join().unwrap();
    let consistent = watchdog(60, move || reader.join().unwrap());
    assert!(consistent > 0);
}

#[test]
fn publish_copies_local_counts() {
    let (mem, sut) = heap(2);
    let io = sut.io();
    let mut c = IoCounts::default();
    for (i, e) in Io::ALL.iter().enumerate() {
        c[*e] = 100 + i as u64;
    }
    io.publish(&c);
    let md = sut.attach_writer_md(1, ProcId { pid: 9, start_time: 10 }).unwrap();
    let mut m = MdCounts::default();
    m[Md::MessagesIn] = 5;
    m[Md::BusyNs] = 6;
    m[Md::Pid] = 12345; // identity words are not copied from local counts
    md.publish(&m);
    let snap = StatsReader::attach_in(mem).unwrap().snapshot();
    for (i, e) in Io::ALL.iter().enumerate() {
        assert_eq!(snap.get("io", 0, e.desc().name), Some(100 + i as u64), "{e:?}");
    }
    assert_eq!(snap.get("md", 1, "messages_in"), Some(5));
    assert_eq!(snap.get("md", 1, "busy_ns"), Some(6));
    assert_eq!(snap.get("md", 1, "pid"), Some(9));
    assert_eq!(snap.get("md", 1, "state"), Some(MdState::Starting as u64));
}

#[test]
fn command_slots_are_named_by_their_md() {
    let (mem, sut) = heap(2);
    // Two slots, two services: each block carries its own names.
    let a = sut.attach_writer_md(0, ProcId { pid: 1, start_time: 1 }).unwrap();
    let b = sut.attach_writer_md(1, ProcId { pid: 2, start_time: 2 }).unwrap();
    a.set_command_names(&["echo", "dumb.ping"]).unwrap();
    b.set_command_names(&["upper"]).unwrap();
    let mut n = [0; COMMAND_SLOTS];
    n[0] = 3;
    n[1] = 4;
    a.publish_commands(&n, 2);
    n = [0; COMMAND_SLOTS];
    n[0] = 7;
    b.publish_commands(&n, 0);
    // A refused list writes nothing.
    assert_eq!(b.set_command_names(&["other"]), Err(CommandNameError::Reserved { index: 0 }));

    let snap = StatsReader::attach_in(mem.clone()).unwrap().snapshot();
    assert_eq!(snap.get("md", 0, "commands.echo"), Some(3));
    assert_eq!(snap.get("md", 0, "commands.dumb.ping"), Some(4));
    assert_eq!(snap.get("md", 0, "commands.other"), Some(2));
    assert_eq!(snap.get("md", 0, "commands.upper"), None);
    assert_eq!(snap.get("md", 1, "commands.upper"), Some(7));
    let names = |i: u32| -> Vec<String> {
        let blk = snap.block("md", i).unwrap();
        snap.counters(blk)
            .filter(|c| c.name.starts_with("commands."))
            .map(|c| c.name.to_owned())
            .collect()
    };
    // Unused, unnamed slots are not listed.
    assert_eq!(names(0), ["commands.echo", "commands.dumb.ping", "commands.other"]);
    assert_eq!(names(1), ["commands.upper", "commands.other"]);

    // A new md in the slot starts without names and counts.
    let a2 = sut.attach_writer_md(0, ProcId { pid: 3, start_time: 3 }).unwrap();
    let snap = sut.reader().snapshot();
    assert_eq!(snap.get("md", 0, "commands.echo"), None);
    drop(a2);

    // A hostile writer: garbage in slot 0's name area, slot 1 naming a duplicate of slot 2.
    let r = StatsReader::attach_in(mem.clone()).unwrap();
    let block = r.block_offset(1, 1);
    let word = |w: usize| {
        // SAFETY: in bounds (the reader validated that the md block has MD_WORDS words after its
        // sequence, and w <= MD_WORDS), 8-aligned, and the word is only accessed through atomics.
        unsafe { &*mem.as_ptr().add(block + w * 8).cast::<AtomicU64>() }
    };
    word(MD_NAMES_WORD).store(u64::MAX, Ordering::Relaxed);
    for (slot, name) in [(1, "dup"), (2, "dup")] {
        for (k, v) in stats::encode_name(name).into_iter().enumerate() {
            word(MD_NAMES_WORD + slot * COMMAND_NAME_WORDS + k).store(v, Ordering::Relaxed);
        }
        word(MD_COMMANDS_WORD + slot).store(10 + slot as u64, Ordering::Relaxed);
    }
    let snap = r.snapshot();
    let blk = snap.block("md", 1).unwrap();
    let got: Vec<(String, u64, bool)> = snap
        .counters(blk)
        .filter(|c| c.name.starts_with("commands."))
        .map(|c| (c.name.to_owned(), c.value, c.bad_name))
        .collect();
    assert_eq!(
        got,
        [
            ("commands.#0".to_owned(), 7, true),
            ("commands.dup".to_owned(), 11, false),
            ("commands.#2".to_owned(), 12, true),
            ("commands.other".to_owned(), 0, false),
        ]
    );
}

// ---- Real segments ----------------------------------------------------------------------------

fn unique(test: &str) -> String {
    format!("t{}-{test}", std::process::id())
}

struct Cleanup(Backend, String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = StatsSegment::remove(self.0, &self.1);
    }
}

#[test]
fn real_segment_create_attach_read_remove() {
    for backend in [Backend::Posix, Backend::Sysv] {
        let name = unique(&format!("real-{backend:?}"));
        let _c = Cleanup(backend, name.clone());
        assert!(matches!(StatsReader::attach(backend, &name), Err(StatsError::NotFound { .. })));
        let io_side = StatsSegment::create(backend, &name, 2, 77).unwrap();
        assert!(matches!(
            StatsSegment::create(backend, &name, 2, 78),
            Err(StatsError::Exists { .. })
        ));
        io_side.io().add(Io::MessagesIn, 3);
        let md_side = StatsSegment::attach(backend, &name).unwrap();
        let md = md_side.attach_writer_md(1, ProcId::current()).unwrap();
        md.set_command_names(&["dumb.ping"]).unwrap();
        let mut cmds = [0; COMMAND_SLOTS];
        cmds[0] = 1;
        md.publish_commands(&cmds, 0);
        let view = StatsReader::attach(backend, &name).unwrap();
        let snap = view.snapshot();
        assert_eq!(snap.info.epoch, 77);
        assert_eq!(snap.info.creator_pid, std::process::id());
        assert_eq!(snap.get("io", 0, "messages_in"), Some(3));
        assert_eq!(snap.get("md", 1, "commands.dumb.ping"), Some(1));
        assert_eq!(snap.get("md", 1, "pid"), Some(std::process::id() as u64));
        drop((io_side, md_side, md, view));
        assert!(StatsSegment::remove(backend, &name).unwrap());
        assert!(!StatsSegment::remove(backend, &name).unwrap());
    }
}

const RO_CHILD_ENV: &str = "SHMQ_STATS_RO_CHILD";

/// Child half of `read_only_attach_cannot_write`: does nothing unless the env var names a
/// segment; then attaches read-only and writes through the mapping, which must fault.
#[test]
fn read_only_child() {
    let Ok(spec) = std::env::var(RO_CHILD_ENV) else { return };
    let (backend, name) = match spec.split_once(':') {
        Some(("sysv", n)) => (Backend::Sysv, n.to_owned()),
        Some((_, n)) => (Backend::Posix, n.to_owned()),
        None => panic!("bad spec"),
    };
    // The same call StatsReader::attach makes.
    let seg = Segment::attach(backend, &stats::segment_name(&name), false).unwrap();
    assert!(StatsReader::attach(backend, &name).is_ok());
    eprintln!("child: writing through the read-only mapping");
    // SAFETY: deliberately violates the read-only mapping to show the kernel refuses: the pointer
    // is in bounds and aligned; the expected outcome is SIGSEGV, which the parent checks.
    unsafe { std::ptr::write_volatile(seg.as_ptr().add(1024).cast::<u64>(), 1) };
    // Reaching this line means the write went through.
    std::process::exit(3);
}

#[test]
fn read_only_attach_cannot_write() {
    use std::os::unix::process::ExitStatusExt;
    for (backend, tag) in [(Backend::Posix, "posix"), (Backend::Sysv, "sysv")] {
        let name = unique(&format!("ro-{tag}"));
        let _c = Cleanup(backend, name.clone());
        let sut = StatsSegment::create(backend, &name, 1, 5).unwrap();
        let before = sut.reader().snapshot();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "read_only_child", "--nocapture", "--test-threads=1"])
            .env(RO_CHILD_ENV, format!("{tag}:{name}"))
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGSEGV), "{tag}: child status {status:?}");
        let after = sut.reader().snapshot();
        assert_eq!(before.blocks, after.blocks, "{tag}: nothing changed");
    }
}
