//! Steady state allocates nothing per message in io_conn: `io_conn::run` runs in this process
//! on its own thread under a counting global allocator (counting only that thread), with a real
//! md child process; after a warm-up, a sustained PING window must cause (almost) no allocation
//! on the io_conn thread.

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNT_ME: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    // `try_with`: the allocator may run during thread teardown, after the TLS is gone.
    if COUNT_ME.try_with(Cell::get).unwrap_or(false) {
        // Relaxed: a plain event counter, read after the window by the same test.
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so each of
// `GlobalAlloc`'s obligations (layout validity, pointer provenance, size on dealloc/realloc) is
// met by `System` exactly as the caller met them for us; counting touches only an atomic and a
// const-initialised thread-local Cell, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged (see the impl comment).
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONNS: usize = 10;

fn ping_all(conns: &mut [TcpStream], rounds: usize) {
    let mut buf = [0u8; 5];
    for _ in 0..rounds {
        for c in conns.iter_mut() {
            c.write_all(b"PING\n").expect("write");
        }
        for c in conns.iter_mut() {
            c.read_exact(&mut buf).expect("read");
            assert_eq!(&buf, b"PONG\n");
        }
    }
}

#[test]
fn steady_state_ping_allocates_nothing_per_message() {
    let name = util::unique_name("alloc");
    let dir = util::test_dir(&name);
    let cfg_path = dir.join("shmsrv.toml");
    let text = util::config_text(&name, &dir.join("run"), 1, "", "");
    std::fs::write(&cfg_path, &text).expect("write config");
    let cfg = config::Config::load(&cfg_path).expect("config");
    let dumb = cfg.io_conn.listeners.iter().find(|l| l.service == "dumb").expect("dumb").clone();
    let sock = io_conn::bind_listener(dumb.address, 128).expect("bind");
    let addr = sock.local_addr().expect("addr");
    let shutdown = io_conn::Shutdown::new().expect("eventfd");
    let stop = shutdown.handle();
    let opts = io_conn::Options {
        shutdown: Some(shutdown),
        signals: false,
        spawn: Some(io_conn::SpawnMd::new(&cfg, util::md_bin(), Some(cfg_path.clone()), 1)),
        ..io_conn::Options::default()
    };
    let io = std::thread::spawn(move || {
        COUNT_ME.with(|c| c.set(true));
        io_conn::run(&cfg, vec![(sock, dumb)], opts)
    });

    let mut conns: Vec<TcpStream> = (0..CONNS)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(util::WATCHDOG)).expect("timeout");
            s.set_nodelay(true).expect("nodelay");
            s
        })
        .collect();
    // Warm-up: md attaches (connections are held until it does), pools and queues reach their
    // working sizes.
    ping_all(&mut conns, 300);
    let before = ALLOCS.load(Ordering::Relaxed);
    let rounds = 1000;
    ping_all(&mut conns, rounds);
    let during = ALLOCS.load(Ordering::Relaxed) - before;
    let messages = (rounds * CONNS) as u64;
    eprintln!("io_conn thread allocations during {messages} PING/PONG: {during}");
    assert!(
        during < 10,
        "{during} allocations for {messages} messages: io_conn allocates per message"
    );

    drop(conns);
    stop.trigger();
    let counters = io.join().expect("io thread").expect("run");
    assert!(
        counters[io_conn::counters::Io::MessagesIn] >= messages + 300 * CONNS as u64,
        "{counters:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
