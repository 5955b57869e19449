//! Segments and queue pairs within one process (plus a forked child for the read-only fault):
//! create/attach/remove on both backends, read-only mappings, corrupt headers and frames, the
//! pair's names, modes, reset and runtime-directory checks.

mod util;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmq::frame::{FlowId, Kind};
use shmq::layout::{Direction, LAYOUT_VERSION, RingHeader, RingParams};
use shmq::pair::{PairConfig, PairError};
use shmq::region::{AttachError, Backend, CreateError, Segment, sysv_key};
use shmq::ring::{self, Consumer, Corruption, Producer, RingAttachError, RingError};
use shmq::sys::ProcId;
use util::*;

fn segment_mode(backend: Backend, seg: &Segment) -> u32 {
    match backend {
        Backend::Posix => std::fs::metadata(seg.location()).unwrap().permissions().mode() & 0o777,
        Backend::Sysv => {
            // SAFETY: test: integer arguments only.
            let id = unsafe { libc::shmget(sysv_key(seg.name()), 0, 0) };
            assert!(id >= 0);
            // SAFETY: test: shmid_ds is plain integers; IPC_STAT fills it.
            let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
            // SAFETY: test: valid id and buffer.
            assert_eq!(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) }, 0);
            u32::from(ds.shm_perm.mode) & 0o777
        }
    }
}

#[test]
fn create_attach_remove_both_backends() {
    for backend in BACKENDS {
        let name = unique(&format!("car-{backend}"));
        let _g = Cleanup::segment(backend, &name);
        let sut = Segment::create(backend, &name, 8192, 0o600).unwrap();
        assert_eq!(sut.len(), 8192);
        assert!(!sut.is_read_only());
        assert_eq!(segment_mode(backend, &sut), 0o600, "{backend}");
        assert!(Segment::exists(backend, &name).unwrap());
        match Segment::create(backend, &name, 8192, 0o600) {
            Err(CreateError::Exists { .. }) => {}
            other => panic!("{backend}: second create: {other:?}"),
        }
        // Fresh segments are zero; writes through one mapping show through another.
        // SAFETY: test: in bounds of an 8192-byte writable mapping we own.
        unsafe {
            assert_eq!(*sut.as_ptr().add(8191), 0);
            *sut.as_ptr().add(100) = 0xab;
        }
        let other = Segment::attach(backend, &name, true).unwrap();
        assert_eq!(other.len(), 8192, "{backend}: attach sees the real size");
        // SAFETY: test: in bounds.
        assert_eq!(unsafe { *other.as_ptr().add(100) }, 0xab);
        let ro = Segment::attach(backend, &name, false).unwrap();
        assert!(ro.is_read_only());
        // SAFETY: test: in bounds, read only.
        assert_eq!(unsafe { *ro.as_ptr().add(100) }, 0xab);
        match backend {
            Backend::Posix => {
                assert_eq!(sut.location(), std::path::Path::new("/dev/shm").join(&name))
            }
            Backend::Sysv => {
                assert!(sut.location().display().to_string().starts_with("SysV key 0x"))
            }
        }
        drop((sut, other, ro));
        assert!(Segment::remove(backend, &name).unwrap());
        assert!(!Segment::remove(backend, &name).unwrap());
        assert!(!Segment::exists(backend, &name).unwrap());
        match Segment::attach(backend, &name, false) {
            Err(AttachError::NotFound { .. }) => {}
            other => panic!("{backend}: attach after remove: {other:?}"),
        }
    }
}

#[test]
fn create_rejects_bad_names_and_lengths() {
    for backend in BACKENDS {
        for bad in ["", "a/b", ".."] {
            assert!(matches!(
                Segment::create(backend, bad, 4096, 0o600),
                Err(CreateError::Io { .. })
            ));
        }
        let name = unique(&format!("zero-{backend}"));
        let _g = Cleanup::segment(backend, &name);
        assert!(matches!(Segment::create(backend, &name, 0, 0o600), Err(CreateError::Io { .. })));
        assert!(!Segment::exists(backend, &name).unwrap(), "failed create leaves nothing");
    }
}

#[test]
fn posix_segment_of_size_zero_is_empty_not_a_crash() {
    let name = unique("empty");
    let _g = Cleanup::segment(Backend::Posix, &name);
    // A creator that died between shm_open and ftruncate.
    let fd = nix::sys::mman::shm_open(
        format!("/{name}").as_str(),
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_EXCL,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    drop(fd);
    assert!(matches!(Segment::attach(Backend::Posix, &name, true), Err(AttachError::Empty { .. })));
}

fn params(capacity: u64) -> RingParams {
    let me = ProcId::current();
    RingParams {
        capacity,
        max_payload: 1024,
        direction: Direction::ToMd,
        creator_pid: me.pid,
        creator_start_time: me.start_time,
        epoch: 9,
        generation: 1,
    }
}

#[test]
fn read_only_segment_is_refused_by_rings() {
    for backend in BACKENDS {
        let name = unique(&format!("ro-ring-{backend}"));
        let _g = Cleanup::segment(backend, &name);
        let rw = Segment::create(backend, &name, ring::ring_bytes(4096), 0o600).unwrap();
        ring::init(&rw, 0, &params(4096)).unwrap();
        let ro = Arc::new(Segment::attach(backend, &name, false).unwrap());
        // Viewers can read the identity...
        let id = ro.ring_identity(0).unwrap();
        assert_eq!((id.creator, id.epoch, id.generation, id.ready), (ProcId::current(), 9, 1, 1));
        assert_eq!(id.layout_version, LAYOUT_VERSION);
        // ...but no ring can write through the read-only mapping.
        assert!(ring::init(&*ro, 0, &params(4096)).is_err());
        assert!(matches!(Consumer::attach(ro.clone(), 0), Err(RingAttachError::Truncated { .. })));
        assert!(matches!(Producer::attach(ro, 0, None), Err(RingAttachError::Truncated { .. })));
    }
}

#[test]
fn read_only_write_faults_in_child() {
    use nix::sys::signal::Signal;
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    for backend in BACKENDS {
        let name = unique(&format!("ro-fault-{backend}"));
        let _g = Cleanup::segment(backend, &name);
        let rw = Segment::create(backend, &name, 4096, 0o600).unwrap();
        let ro = Segment::attach(backend, &name, false).unwrap();
        let p = ro.as_ptr();
        // SAFETY: test: the child only does a volatile store (which faults) and `_exit`: no
        // allocation, no locks, nothing that is unsafe after fork in a threaded process.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: deliberately writing through a PROT_READ mapping: must fault.
                unsafe { core::ptr::write_volatile(p.add(10), 1u8) };
                // SAFETY: _exit is async-signal-safe; reached only if the write did not fault.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                let st = waitpid(child, None).unwrap();
                assert_eq!(
                    st,
                    WaitStatus::Signaled(child, Signal::SIGSEGV, false),
                    "{backend}: a write through a read-only attach must fault"
                );
            }
        }
        // SAFETY: test: in bounds.
        assert_eq!(unsafe { *rw.as_ptr().add(10) }, 0, "{backend}: nothing was written");
    }
}

/// Writes a u64/u32 into a live ring header (test-only corruption).
fn poke64(seg: &Segment, off: usize, v: u64) {
    // SAFETY: test: in bounds and aligned (offsets from layout.rs); a racing reader only sees a
    // corrupt value, which is the point.
    unsafe { core::ptr::write_volatile(seg.as_ptr().add(off).cast::<u64>(), v) }
}
fn poke32(seg: &Segment, off: usize, v: u32) {
    // SAFETY: as for poke64.
    unsafe { core::ptr::write_volatile(seg.as_ptr().add(off).cast::<u32>(), v) }
}

/// (offset, bad value, 8-byte field?, expected error).
type Case = (usize, u64, bool, fn(&RingAttachError) -> bool);

#[test]
fn corrupt_header_and_frames_give_typed_errors() {
    use core::mem::offset_of;
    for backend in BACKENDS {
        let name = unique(&format!("corrupt-{backend}"));
        let _g = Cleanup::segment(backend, &name);
        let cap = 4096u64;
        let seg = Arc::new(Segment::create(backend, &name, ring::ring_bytes(cap), 0o600).unwrap());
        ring::init(&*seg, 0, &params(cap)).unwrap();
        let mut tx = Producer::attach(seg.clone(), 0, None).unwrap();
        for i in 0..5u64 {
            tx.try_push(FlowId(i), Kind::Data, 0, &[i as u8; 40]).unwrap();
        }
        tx.flush();
        // A second view of the same live segment, through which we corrupt it.
        let evil = Segment::attach(backend, &name, true).unwrap();
        let attach =
            || Consumer::attach(Arc::new(Segment::attach(backend, &name, true).unwrap()), 0);

        let cases: [Case; 4] = [
            (offset_of!(RingHeader, magic), 0x1234, true, |e| {
                matches!(e, RingAttachError::BadMagic(0x1234))
            }),
            (offset_of!(RingHeader, layout_version), 99, false, |e| {
                matches!(e, RingAttachError::VersionMismatch { found: 99, .. })
            }),
            (offset_of!(RingHeader, capacity), 3000, true, |e| {
                matches!(e, RingAttachError::BadGeometry)
            }),
            (offset_of!(RingHeader, capacity), 1 << 20, true, |e| {
                matches!(e, RingAttachError::Truncated { .. })
            }),
        ];
        for (off, bad, wide, ok) in cases {
            let ident = seg.ring_identity(0).unwrap();
            let saved = if wide {
                // SAFETY: test: in bounds, aligned.
                unsafe { core::ptr::read_volatile(seg.as_ptr().add(off).cast::<u64>()) }
            } else {
                u64::from(ident.layout_version)
            };
            if wide {
                poke64(&evil, off, bad)
            } else {
                poke32(&evil, off, bad as u32)
            }
            let e = attach().unwrap_err();
            assert!(ok(&e), "{backend}: corrupting offset {off} gave {e:?}");
            if wide { poke64(&evil, off, saved) } else { poke32(&evil, off, saved as u32) }
        }
        poke32(&evil, offset_of!(RingHeader, ready), 0);
        assert_eq!(attach().unwrap_err(), RingAttachError::NotReady);
        poke32(&evil, offset_of!(RingHeader, ready), 1);

        // Frames: a consumer attached to the live ring reads the first frame, then finds garbage.
        let mut rx = attach().unwrap();
        assert_eq!(rx.peek().unwrap().unwrap().flowid, FlowId(0));
        rx.release();
        let data = shmq::layout::RING_HEADER_SIZE;
        let second = data + shmq::frame::frame_size(40);
        // Frame 1's len field (after its 8-byte stamp): larger than max_payload.
        poke32(&evil, second + 8, 60_000);
        match rx.peek() {
            Err(RingError::Corrupt { what: Corruption::Length(60_000), .. }) => {}
            other => panic!("{backend}: corrupt length: {other:?}"),
        }
        // The ring stays dead for this consumer (no panic, same error).
        assert!(rx.peek().is_err());
        // A fresh consumer on a frame with an unknown kind.
        poke32(&evil, second + 8, 40);
        poke32(&evil, second + 12, 0x7777);
        let mut rx = attach().unwrap();
        rx.peek().unwrap();
        rx.release();
        assert!(matches!(rx.peek(), Err(RingError::Corrupt { what: Corruption::Kind(_), .. })));
        // Impossible positions: tail far beyond head.
        poke64(&evil, offset_of!(RingHeader, tail), 1 << 40);
        assert!(attach().is_err(), "{backend}: consumer attach checks positions");
        drop(tx);
    }
}

#[test]
fn pair_create_attach_exchange_reset_remove() {
    for backend in BACKENDS {
        let cfg = pair_cfg("pair", backend);
        let _g = Cleanup::pair(&cfg, 1);
        let mut io = cfg.create(0, 42).unwrap();
        assert_eq!((io.instance, io.epoch, io.generation), (0, 42, 1));
        // Modes: directory 0700, FIFOs and segments 0600.
        let dmode = std::fs::metadata(&cfg.runtime_dir).unwrap().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        for f in [cfg.in_fifo(0), cfg.out_fifo(0)] {
            let m = std::fs::metadata(&f).unwrap();
            assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
            assert_eq!(m.mode() & 0o777, 0o600, "{}", f.display());
        }
        for s in [cfg.in_segment(0), cfg.out_segment(0)] {
            let seg = Segment::attach(backend, &s, false).unwrap();
            assert_eq!(segment_mode(backend, &seg), 0o600);
            assert_eq!(seg.len(), cfg.segment_bytes());
        }
        // A live creator: a second create is refused.
        match cfg.create(0, 43) {
            Err(PairError::InUse { owner, .. }) => assert_eq!(owner, std::process::id()),
            other => panic!("{backend}: create over a live pair: {other:?}"),
        }
        assert!(matches!(cfg.attach(1), Err(PairError::NotFound { .. })));

        let mut md = cfg.attach(0).unwrap();
        assert_eq!((md.epoch, md.generation, md.creator), (42, 1, ProcId::current()));
        // io → md with md asleep on its doorbell.
        assert!(md.rx.prepare_sleep(&md.rx_bell));
        io.tx.try_push(FlowId(1), Kind::Data, 0, b"request").unwrap();
        assert!(io.tx.flush(), "an armed consumer gets a doorbell");
        assert!(wait_readable(&md.rx_bell, Duration::from_secs(10)));
        assert_eq!(md.rx.peek().unwrap().unwrap().payload, b"request");
        md.rx.release();
        // md → io likewise.
        assert!(io.rx.prepare_sleep(&io.rx_bell));
        md.tx.try_push(FlowId(1), Kind::Data, 0, b"reply").unwrap();
        assert!(md.tx.flush());
        assert!(wait_readable(&io.rx_bell, Duration::from_secs(10)));
        assert_eq!(io.rx.peek().unwrap().unwrap().payload, b"reply");
        io.rx.release();

        // Queue something, then reset: md notices and nothing old is delivered.
        io.tx.try_push(FlowId(2), Kind::Data, 0, b"old").unwrap();
        io.tx.flush();
        let mut io = cfg.reset(io).unwrap();
        assert_eq!(io.generation, 2);
        assert!(!md.rx.is_current() && !md.tx.is_current());
        drop(md);
        let mut md = cfg.attach(0).unwrap();
        assert_eq!(md.generation, 2);
        assert!(md.rx.peek().unwrap().is_none(), "{backend}: old generation's frame delivered");
        io.tx.try_push(FlowId(3), Kind::Data, 0, b"new").unwrap();
        io.tx.flush();
        assert_eq!(md.rx.peek().unwrap().unwrap().payload, b"new");
        drop((io, md));
        cfg.remove(0).unwrap();
        cfg.remove(0).unwrap();
        assert!(matches!(cfg.attach(0), Err(PairError::NotFound { .. })));
        assert!(!cfg.in_fifo(0).exists() && !cfg.out_fifo(0).exists());
    }
}

#[test]
fn runtime_dir_must_be_private() {
    let base = runtime_dir("rtdir");
    let _g = Cleanup::dir(&base);
    std::fs::create_dir_all(&base).unwrap();
    let cfg_in = |dir: std::path::PathBuf| PairConfig {
        name: unique("rtdir"),
        runtime_dir: dir,
        backend: Backend::Posix,
        capacity: 4096,
        max_payload: 256,
    };
    // World-writable: refused.
    let open = base.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(cfg_in(open).ensure_runtime_dir(), Err(PairError::Other { .. })));
    // A symlink to a good directory: refused.
    let good = base.join("good");
    let link = base.join("link");
    cfg_in(good.clone()).ensure_runtime_dir().unwrap();
    assert_eq!(std::fs::metadata(&good).unwrap().mode() & 0o777, 0o700);
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let cfg = cfg_in(link);
    assert!(matches!(cfg.create(0, 1), Err(PairError::Other { .. })));
    assert!(!Segment::exists(Backend::Posix, &cfg.in_segment(0)).unwrap());
}

#[test]
fn attach_waits_for_ready() {
    let cfg = pair_cfg("notready", Backend::Posix);
    let _g = Cleanup::pair(&cfg, 1);
    let io = cfg.create(0, 1).unwrap();
    // Simulate a creator in the middle of a reset: `ready` = 0.
    let seg = Segment::attach(Backend::Posix, &cfg.in_segment(0), true).unwrap();
    poke32(&seg, core::mem::offset_of!(RingHeader, ready), 0);
    assert!(matches!(cfg.attach(0), Err(PairError::NotReady { .. })));
    poke32(&seg, core::mem::offset_of!(RingHeader, ready), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while cfg.attach(0).is_err() {
        assert!(Instant::now() < deadline);
    }
    drop(io);
}

#[test]
fn posix_create_reserves_pages_so_a_full_dev_shm_fails_now() {
    let vfs = nix::sys::statvfs::statvfs("/dev/shm").unwrap();
    let size = vfs.blocks() as u64 * vfs.fragment_size() as u64;
    if size == 0 {
        eprintln!("skipped: /dev/shm has no size limit here");
        return;
    }
    let name = unique("toolarge");
    let _g = Cleanup::segment(Backend::Posix, &name);
    // More than the whole of /dev/shm: tmpfs refuses the reservation up front (ENOSPC) instead
    // of a SIGBUS at first touch; nothing is left behind.
    match Segment::create(Backend::Posix, &name, (size + (1 << 30)) as usize, 0o600) {
        Err(CreateError::Io { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{source}")
        }
        other => panic!("oversized create: {other:?}"),
    }
    assert!(!Segment::exists(Backend::Posix, &name).unwrap());
}

#[test]
fn reset_repairs_a_scribbled_header() {
    use core::mem::offset_of;
    for backend in BACKENDS {
        let cfg = pair_cfg("repair", backend);
        let _g = Cleanup::pair(&cfg, 1);
        let io = cfg.create(0, 3).unwrap();
        // A misbehaving md overwrites the magic of `in` and the geometry of `out`.
        let evil_in = Segment::attach(backend, &cfg.in_segment(0), true).unwrap();
        let evil_out = Segment::attach(backend, &cfg.out_segment(0), true).unwrap();
        poke64(&evil_in, offset_of!(RingHeader, magic), 0xdead);
        poke64(&evil_out, offset_of!(RingHeader, capacity), 12345);
        assert!(matches!(cfg.attach(0), Err(PairError::Other { .. })));
        let mut io = cfg.reset(io).unwrap();
        assert_eq!(io.generation, 2);
        let mut md = cfg.attach(0).unwrap();
        assert_eq!((md.epoch, md.generation), (3, 2));
        io.tx.try_push(FlowId(1), Kind::Data, 0, b"after repair").unwrap();
        io.tx.flush();
        assert_eq!(md.rx.peek().unwrap().unwrap().payload, b"after repair");
        md.tx.try_push(FlowId(1), Kind::Data, 0, b"ok").unwrap();
        md.tx.flush();
        assert_eq!(io.rx.peek().unwrap().unwrap().payload, b"ok");
    }
}

/// Root can hand a file or a SysV segment to another uid; the ownership tests need that.
fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Gives SysV segment `name` to `uid` (IPC_SET), as if that user had created it.
fn sysv_chown(name: &str, uid: u32) {
    // SAFETY: test: integer arguments only.
    let id = unsafe { libc::shmget(sysv_key(name), 0, 0) };
    assert!(id >= 0);
    // SAFETY: test: shmid_ds is plain integers; IPC_STAT fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: test: valid id and buffer.
    assert_eq!(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) }, 0);
    ds.shm_perm.uid = uid;
    // SAFETY: test: valid id and buffer; IPC_SET reads uid, gid and mode from it.
    assert_eq!(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) }, 0);
}

fn chown_segment(backend: Backend, name: &str, uid: u32) {
    match backend {
        Backend::Posix => std::os::unix::fs::chown(format!("/dev/shm/{name}"), Some(uid), None)
            .expect("chown /dev/shm file"),
        Backend::Sysv => sysv_chown(name, uid),
    }
}

/// Issue 14, finding 5: the stats segment is group-readable (0640, the creator's effective gid),
/// the queue segments and FIFOs stay owner-only.
#[test]
fn issue_14_stats_segment_is_0640_with_our_group_queues_stay_0600() {
    use shmq::stats::{SEGMENT_MODE, StatsSegment, segment_name};
    assert_eq!(SEGMENT_MODE, 0o640);
    for backend in BACKENDS {
        let name = unique(&format!("i14mode-{backend}"));
        let seg_name = segment_name(&name);
        let _g = Cleanup::segment(backend, &seg_name);
        let _sut = StatsSegment::create(backend, &name, 2, 1).unwrap();
        let (mode, gid) = match backend {
            Backend::Posix => {
                let m = std::fs::metadata(format!("/dev/shm/{seg_name}")).unwrap();
                (m.mode() & 0o777, m.gid())
            }
            Backend::Sysv => {
                let view = Segment::attach(backend, &seg_name, false).unwrap();
                // SAFETY: test: integer arguments only.
                let id = unsafe { libc::shmget(sysv_key(view.name()), 0, 0) };
                // SAFETY: test: shmid_ds is plain integers; IPC_STAT fills it.
                let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
                // SAFETY: test: valid id and buffer.
                assert_eq!(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) }, 0);
                (u32::from(ds.shm_perm.mode) & 0o777, ds.shm_perm.gid)
            }
        };
        assert_eq!(mode, 0o640, "{backend}");
        assert_eq!(gid, nix::unistd::getegid().as_raw(), "{backend}: the creator's egid");
    }
    // The queues: still 0600 (also checked by pair_create_attach_exchange_reset_remove).
    let cfg = pair_cfg("i14mode-pair", Backend::Posix);
    let _g = Cleanup::pair(&cfg, 1);
    let _io = cfg.create(0, 1).unwrap();
    for f in [cfg.in_fifo(0), cfg.out_fifo(0)] {
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    }
    let seg = Segment::attach(Backend::Posix, &cfg.in_segment(0), false).unwrap();
    assert_eq!(segment_mode(Backend::Posix, &seg), 0o600);
}

/// Issue 14, finding 8: a segment of our name owned by another uid (a squatter in /dev/shm, or a
/// SysV segment of another user at our key), even with a ring header naming a live process, makes
/// `create` refuse with a message naming the owner, and is left where it is.
#[test]
fn issue_14_squatted_segment_is_refused_by_owner_and_left_alone() {
    if !is_root() {
        eprintln!("skipped: needs root to give a segment to another uid");
        return;
    }
    for backend in BACKENDS {
        let cfg = pair_cfg(&format!("i14squat-{backend}"), backend);
        let mut g = Cleanup::pair(&cfg, 1);
        g.segments.push((backend, cfg.in_segment(0)));
        // The pair's `out` ring too: `cfg.remove` stops at the squatted `in` and leaves it.
        g.segments.push((backend, cfg.out_segment(0)));
        // A ring whose header names a live process (us), then handed to uid 65534: what a
        // squatter copying a header would leave.
        drop(cfg.create(0, 7).unwrap());
        chown_segment(backend, &cfg.in_segment(0), 65534);
        let err = cfg.create(0, 8).unwrap_err();
        assert!(matches!(err, PairError::NotOurs { uid: 65534, .. }), "{backend}: {err:?}");
        let msg = err.to_string();
        let loc = Segment::location_of(backend, &cfg.in_segment(0));
        assert_eq!(
            msg,
            format!("{loc} is owned by uid 65534, not us: remove it or choose another shared.name"),
            "{backend}"
        );
        assert!(Segment::exists(backend, &cfg.in_segment(0)).unwrap(), "{backend}: kept");
        assert_eq!(Segment::owner(backend, &cfg.in_segment(0)).unwrap(), Some(65534));
        // Not removed at a clean exit either.
        assert!(matches!(cfg.remove(0), Err(PairError::NotOurs { .. })));
        assert!(Segment::exists(backend, &cfg.in_segment(0)).unwrap(), "{backend}: kept");
    }
    // A plain squatting file (no ring at all) in /dev/shm.
    let cfg = pair_cfg("i14squat-file", Backend::Posix);
    let mut g = Cleanup::pair(&cfg, 1);
    g.segments.push((Backend::Posix, cfg.out_segment(0)));
    let path = format!("/dev/shm/{}", cfg.out_segment(0));
    std::fs::write(&path, b"squatter").unwrap();
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let err = cfg.create(0, 1).unwrap_err();
    assert!(err.to_string().starts_with(&format!("{path} is owned by uid 65534, not us")), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"squatter");
    // And a writable attach (md) refuses it, naming the owner.
    match Segment::attach(Backend::Posix, &cfg.out_segment(0), true) {
        Err(AttachError::NotOwner { uid: 65534, .. }) => {}
        r => panic!("{r:?}"),
    }
}

/// Issue 14, finding 8: a read-only attach (viewstats) refuses a segment owned by a uid that is
/// neither ours, root's nor the server user's, naming the owner.
#[test]
fn issue_14_read_only_attach_checks_the_owner() {
    if !is_root() {
        eprintln!("skipped: needs root to give a segment to another uid");
        return;
    }
    for backend in BACKENDS {
        let name = unique(&format!("i14ro-{backend}"));
        let _g = Cleanup::segment(backend, &name);
        let _seg = Segment::create(backend, &name, 4096, 0o644).unwrap();
        assert!(Segment::attach(backend, &name, false).is_ok(), "{backend}: ours");
        chown_segment(backend, &name, 65533);
        match Segment::attach(backend, &name, false) {
            Err(e @ AttachError::NotOwner { uid: 65533, .. }) => {
                assert!(e.to_string().contains("is owned by uid 65533"), "{e}")
            }
            r => panic!("{backend}: {r:?}"),
        }
    }
}

/// Issue 14, finding 8: a SysV key collision with a segment of ours that is not a ring (a
/// foreign magic) is refused, not removed as "not a ring".
#[test]
fn issue_14_sysv_key_collision_with_foreign_magic_is_not_removed() {
    let cfg = pair_cfg("i14foreign", Backend::Sysv);
    let mut g = Cleanup::pair(&cfg, 1);
    g.segments.push((Backend::Sysv, cfg.in_segment(0)));
    let other = Segment::create(Backend::Sysv, &cfg.in_segment(0), 8192, 0o600).unwrap();
    poke64(&other, 0, 0x0123_4567_89ab_cdef);
    let err = cfg.create(0, 1).unwrap_err();
    assert!(matches!(err, PairError::Foreign { magic: 0x0123_4567_89ab_cdef, .. }), "{err:?}");
    assert!(err.to_string().contains("not removing it"), "{err}");
    assert!(Segment::exists(Backend::Sysv, &cfg.in_segment(0)).unwrap());
    // A half-made segment of ours (all zero: a creator died before writing the header) is
    // still replaced.
    poke64(&other, 0, 0);
    drop(other);
    let io = cfg.create(0, 2).unwrap();
    assert_eq!(io.epoch, 2);
}

/// The identity of a mapped segment tells a re-created name apart (md's restart detection).
#[test]
fn segment_identity_changes_when_the_name_is_recreated() {
    for backend in BACKENDS {
        let name = unique(&format!("ident-{backend}"));
        let _g = Cleanup::segment(backend, &name);
        let first = Segment::create(backend, &name, 4096, 0o600).unwrap();
        let view = Segment::attach(backend, &name, false).unwrap();
        assert_eq!(view.id(), first.id(), "{backend}");
        assert!(!view.is_replaced(), "{backend}");
        assert!(Segment::remove(backend, &name).unwrap());
        assert!(view.is_replaced(), "{backend}: removed");
        let second = Segment::create(backend, &name, 4096, 0o600).unwrap();
        assert_ne!(second.id(), first.id(), "{backend}");
        assert!(view.is_replaced(), "{backend}: re-created");
    }
}

/// Issue 14, finding 7: a reset whose own attach fails (here: md's FIFO is gone) is not lost.
/// It hands back the segments and io_conn's doorbell (the same fd), and `retry_reset` finishes
/// it once the cause is gone.
#[test]
fn issue_14_failed_reset_hands_back_what_a_retry_needs() {
    let cfg = pair_cfg("reset-retry", Backend::Posix);
    let _g = Cleanup::pair(&cfg, 1);
    let io = cfg.create(0, 9).unwrap();
    let bell_fd = std::os::fd::AsRawFd::as_raw_fd(&io.rx_bell);
    std::fs::remove_file(cfg.in_fifo(0)).unwrap();
    let failed = cfg.reset(io).expect_err("md's FIFO is gone");
    assert!(matches!(failed.error, PairError::Other { .. }), "{failed}");
    assert!(failed.to_string().contains("resetting queue pair 0"), "{failed}");
    // Still failing: handed back again.
    let failed = cfg.retry_reset(failed.pending).expect_err("still gone");
    shmq::Doorbell::create(&cfg.in_fifo(0), 0o600).unwrap();
    let mut io = cfg.retry_reset(failed.pending).expect("the retry works once the FIFO is back");
    assert_eq!(std::os::fd::AsRawFd::as_raw_fd(&io.rx_bell), bell_fd, "same doorbell fd");
    assert!(io.generation > 1);
    let mut md = cfg.attach(0).expect("md attaches to the reset pair");
    assert_eq!(md.generation, io.generation);
    io.tx.try_push(FlowId(1), Kind::Data, 0, b"x").unwrap();
    io.tx.flush();
    assert_eq!(md.rx.drain(usize::MAX, |_| {}), Ok(1));
}

/// Issue 14, finding 3, under commit stamps (layout 3): a hostile producer moves `tail`
/// backwards in a real shared segment, to a point between the consumer's head and the position
/// the consumer already stands on past a padding record. `peek` used to check the reloaded tail
/// against `head` only, so `cached_tail - pos` underflowed. The consumer no longer reads `tail`
/// for data at all: it takes exactly the stamped frames, steps over the padding, and reports
/// empty; a tail behind it is not an error. A tail published *ahead* of it with nothing stamped
/// there (a trampled ring) is found before it sleeps: `Corrupt { Positions }`, counted once,
/// sticky, no panic.
#[test]
fn issue_14_tail_moved_back_behind_a_pad_in_a_real_segment_is_harmless() {
    use core::mem::offset_of;
    for backend in BACKENDS {
        let name = unique(&format!("tail-back-{backend}"));
        let _g = Cleanup::segment(backend, &name);
        let cap = 4096u64;
        let seg = Arc::new(Segment::create(backend, &name, ring::ring_bytes(cap), 0o600).unwrap());
        ring::init(&*seg, 0, &params(cap)).unwrap();
        let mut tx = Producer::attach(seg.clone(), 0, None).unwrap();
        // The consumer maps the segment on its own, as md does.
        let mut rx =
            Consumer::attach(Arc::new(Segment::attach(backend, &name, true).unwrap()), 0).unwrap();
        // Honest traffic up to 32 bytes before the end: 63 frames of 64 bytes, then one of 32.
        for i in 0..63u64 {
            tx.try_push(FlowId(i), Kind::Data, 0, &[1; 40]).unwrap();
            tx.flush();
            assert_eq!(rx.drain(usize::MAX, |_| {}), Ok(1));
        }
        tx.try_push(FlowId(63), Kind::Data, 0, b"last one").unwrap(); // 4032..4064
        tx.flush();
        // The hostile producer, through its own mapping: a stamped padding record to the end of
        // the data area, and a tail that publishes exactly up to the end of it.
        let evil = Segment::attach(backend, &name, true).unwrap();
        let data = shmq::layout::RING_HEADER_SIZE + 4064;
        poke64(&evil, data, 4064 + 1); // stamp
        poke32(&evil, data + 8, 8); // len: 8 + 24 = the 32 bytes left
        poke32(&evil, data + 12, Kind::Pad as u32); // kind (u16) and flags (u16) = 0
        poke64(&evil, data + 16, 0);
        let tail = offset_of!(RingHeader, tail);
        poke64(&evil, tail, cap);
        assert_eq!(rx.peek().unwrap().unwrap().payload, b"last one");
        rx.release(); // head 4064
        // Now tail goes back to 4072: behind 4096, where the consumer stands after the padding,
        // but not behind its head.
        poke64(&evil, tail, 4072);
        assert_eq!(rx.peek().unwrap().map(|f| f.kind), None, "{backend}: padding, then empty");
        assert_eq!(rx.corruption(), None);
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let bell = shmq::Doorbell::from_fd(r);
        drop(w);
        // A tail published ahead with nothing stamped there: corrupt, found before sleeping.
        poke64(&evil, tail, cap + 64);
        assert!(!rx.prepare_sleep(&bell), "{backend}: no sleep in front of a trampled ring");
        let what = Corruption::Positions { head: cap, tail: cap + 64 };
        assert_eq!(rx.peek().err(), Some(RingError::Corrupt { at: cap, what }), "{backend}");
        assert_eq!(
            rx.drain(usize::MAX, |_| panic!("a frame from a corrupt ring")).err(),
            Some(RingError::Corrupt { at: cap, what })
        );
        // Counted once, visible to viewstats through the consumer counters.
        // Relaxed: test reads a counter.
        assert_eq!(rx.header().consumer.corrupt.load(shmq::sync::Ordering::Relaxed), 1);
    }
}
