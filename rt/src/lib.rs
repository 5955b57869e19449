//! rt: the process plumbing io_conn and md share, below both.
//!
//! Both binaries are single-threaded epoll loops under systemd, and both need the same few
//! things around their loop. They live here, once, so that io_conn depends on `shmq`, `config`
//! and this crate, and never on md (its services, runner and stats):
//!
//! * [`notify`]: the systemd notification protocol (`READY=1`, `STATUS=`, `STOPPING=1`,
//!   rate-limited watchdog pings with [`notify::Watchdog`]);
//! * [`shutdown`]: [`Shutdown`] / [`ShutdownHandle`], an eventfd that stops a loop from another
//!   thread (tests, embedders) the way SIGTERM does;
//! * [`signals`]: blocking a signal set in the calling thread and reading it from a signalfd;
//! * [`SpinGate`]: whether and how long a loop busy-polls before it arms its doorbells (with
//!   [`Contention`], the machine's runnable-thread count that closes it);
//! * [`timer::OneShotTimer`]: a timerfd armed for the earliest deadline of a loop;
//! * [`pair_config`]: the queue-pair parameters of the config's `[shared]` section;
//! * [`activation`]: the sockets systemd passes in (socket activation);
//! * [`httpdate`]: the HTTP `Date` header value, formatted at most once per second.
//!
//! * [`malloc`]: glibc malloc tuned so freed client buffers go back to the system.
//!
//! Nothing here touches shared memory or knows about flows or frames. The only `unsafe` is in
//! [`activation`] (adopting inherited descriptors, removing `LISTEN_*` from the environment)
//! and [`malloc`] (mallopt, malloc_trim);
//! nix and sd-notify wrap the other system calls.
//!
//! # Example
//!
//! The skeleton of a loop built from these parts (md's runner and io_conn's server are the real
//! ones):
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use nix::sys::signal::{SigSet, Signal};
//!
//! let mut mask = SigSet::empty();
//! mask.add(Signal::SIGTERM);
//! rt::signals::block(&mask)?; // first thing in main, before any thread exists
//! let signals = rt::signals::signalfd(&mask)?; // goes into the loop's epoll set
//! let shutdown = rt::Shutdown::new()?; // and so does shutdown.as_fd()
//! let mut timer = rt::timer::OneShotTimer::new()?; // and timer.as_fd()
//! let mut watchdog = rt::notify::Watchdog::from_env();
//! let mut gate = rt::SpinGate::new(Duration::from_micros(50));
//! rt::notify::ready()?;
//! loop {
//!     let now = Instant::now();
//!     watchdog.tick(now);
//!     if gate.spin(|| false /* has the ring data? */) {
//!         continue;
//!     }
//!     if let Some(due) = watchdog.next_due() {
//!         timer.arm(due, now)?;
//!     }
//!     // ... arm the doorbells, epoll_wait; on the timer's event: timer.fired() ...
//! #   break;
//! }
//! # drop((signals, shutdown));
//! rt::notify::stopping()?;
//! # Ok::<(), std::io::Error>(())
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod activation;
pub mod contention;
pub mod httpdate;
pub mod malloc;
pub mod notify;
pub mod shutdown;
pub mod signals;
mod spin;
pub mod timer;

pub use contention::Contention;
pub use shutdown::{Shutdown, ShutdownHandle};
pub use spin::SpinGate;

/// The queue-pair parameters of the config's `[shared]` section: what io_conn creates and what
/// md attaches to, so both sides compute them the same way.
pub fn pair_config(cfg: &config::Config) -> shmq::pair::PairConfig {
    shmq::pair::PairConfig {
        name: cfg.shared.name.clone(),
        runtime_dir: cfg.runtime_dir(),
        backend: match cfg.shared.shm_backend {
            config::ShmBackend::Posix => shmq::region::Backend::Posix,
            config::ShmBackend::Sysv => shmq::region::Backend::Sysv,
        },
        capacity: cfg.shared.queue_size,
        max_payload: cfg.shared.max_message,
    }
}
