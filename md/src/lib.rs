//! md: shmsrv's logic process, as a library.
//!
//! io_conn owns the client sockets and sends each md instance framed requests through a
//! shared-memory ring; md answers through another. This crate is everything on md's side:
//!
//! * [`Service`]: the API business logic implements (per-flow state, requests in, bytes out,
//!   timers, long work in time slices: [`Status::Yield`]), with [`Ctx`] and [`Status`];
//! * [`Runner`]: the event loop that drives a service over an attached queue pair
//!   ([`Endpoint`]): batches, output credit, request order, `PAUSE`/`RESUME`, timers, signals;
//! * [`serve`]: attach to io_conn's pair (and stats segment) for an instance, run, and re-attach
//!   after io_conn restarts;
//! * [`stats`]: the runner's counters, and [`MdStatsSink`], which mirrors them into the instance's
//!   slot of the stats segment once per batch;
//! * [`notify`]: the systemd notification protocol (`READY=1`, `STOPPING=1`, watchdog pings), a
//!   re-export of [`rt::notify`] (the `rt` crate holds the process plumbing md shares with
//!   io_conn: notifications, the shutdown eventfd, signals, the spin gate, [`pair_config`]);
//! * [`services`]: the built-in `echo`, `reverse`, `dumb` and `http` services, and [`services::Builtin`]
//!   which serves them all (the `md` binary).
//!
//! # Writing your own md
//!
//! Implement [`Service`], then give it md's command line in one line of `main` ([`main`], or
//! [`run_main`] to build the service from the config; see [`cli`]):
//!
//! ```no_run
//! use md::{Ctx, Service, Status};
//! use shmq::frame::OpenInfo;
//!
//! /// Answers every line with its length.
//! struct LineLength;
//!
//! impl Service for LineLength {
//!     type Flow = ();
//!     fn open(&mut self, info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<()> {
//!         (info.service == "length").then_some(())
//!     }
//!     fn message(&mut self, _: &mut (), msg: &[u8], cx: &mut Ctx<'_>) -> Status {
//!         use std::fmt::Write as _;
//!         let _ = writeln!(cx, "{}", md::services::strip_eol(msg).len());
//!         Status::Done
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     md::main(LineLength)
//! }
//! ```
//!
//! Test it in-process with [`testing::Harness`]; `docs/SERVICES.md` is the tutorial (write, test,
//! run under io_conn and systemd, watch), `md/examples/` has complete programs.
//!
//! # Allocation
//!
//! In steady state (existing flows, requests that fit the flow's buffers) the runner allocates
//! nothing per message: frames are read in place, buffers are reused, the flow table and the timer
//! heap keep their capacity. `md/tests/alloc.rs` checks it with a counting allocator.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
mod control;
pub mod reload;
mod runner;
mod serve;
mod service;
pub mod services;
pub mod stats;
pub mod testing;
mod timer;

pub use cli::{Failure, Program, Setup, main, run_main};
pub use control::{Control, block_signals, handled_signals};
/// Asks a runner to stop (`rt`'s, the same type io_conn's `Shutdown` hands out).
pub use rt::ShutdownHandle;
/// The systemd notification protocol: `rt`'s, re-exported so that `md::notify` keeps working for
/// services' own binaries.
pub use rt::notify;
/// The queue-pair parameters of the config's `[shared]` section (`rt`'s, shared with io_conn).
pub use rt::pair_config;
pub use runner::{
    Detach, Endpoint, Exit, LATE_STATS_EVERY, RunError, Runner, RunnerOptions, StatsAttempt,
};
pub use serve::{ServeError, serve};
pub use service::{BroadcastError, Ctx, Service, SettingError, Status};
pub use stats::{MAX_COMMANDS, MdStatsSink, Stats};
