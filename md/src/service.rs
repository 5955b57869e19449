//! The API business logic is written against: [`Service`], its per-callback [`Ctx`], and
//! [`Status`].
//!
//! The runner ([`crate::Runner`]) owns everything about queues, output credit, ordering and
//! backpressure; a service only turns requests into reply bytes. See the crate docs for a
//! complete example.

use std::fmt;
use std::time::{Duration, Instant};

use shmq::frame::{FlowId, MAX_SERVICE_NAME, OpenInfo, encode_broadcast};
use shmq::stats::Md;

use crate::stats::{MAX_COMMANDS, Stats};
use crate::timer::Timers;

/// What a callback did with the request it was handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The request is fully answered; the runner may hand the flow's next request to the service.
    Done,
    /// The request is still running (a timer, a stream waiting for credit). The runner holds the
    /// flow's later requests (in order) until a later [`Service::timer`] or
    /// [`Service::drained`] callback returns [`Status::Done`].
    Pending,
    /// The request has more work to do now, but its time slice is spent ([`Ctx::slice_over`]):
    /// the runner calls [`Service::resume`] for it again after the other flows' ready work (new
    /// requests, timers, other yielded requests: round-robin). The request is still the flow's
    /// request in progress: later requests of the flow stay held, as with [`Status::Pending`].
    ///
    /// From [`Service::timer`] or [`Service::drained`] it puts a pending request back in the
    /// round; from those two, [`Status::Pending`] changes nothing (a yielded request stays
    /// scheduled), while [`Status::Pending`] from [`Service::message`] or [`Service::resume`]
    /// takes it out of the round (it waits for a timer or credit again).
    Yield,
}

/// Business logic for one or more services, driven by a [`crate::Runner`].
///
/// One value serves every flow; per-flow state lives in [`Service::Flow`], which the runner stores
/// next to its own bookkeeping and hands back on every callback of that flow.
///
/// # The contract
///
/// * Callbacks of one flow never overlap, and the runner delivers a flow's requests to
///   [`Service::message`] one at a time, in order: while a request is [`Status::Pending`], later
///   requests are held (and io_conn is told to stop reading the client when too many pile up).
/// * Output is written through the [`Ctx`] ([`Ctx::send`], or `write!` via [`fmt::Write`]) and
///   goes to the client in the order written. The runner spends the flow's output credit and keeps
///   what does not fit yet; it never drops bytes. A service that produces a lot (a stream) should
///   write at most [`Ctx::room`] bytes per callback and continue in [`Service::drained`].
/// * Nothing here may block: wait with [`Ctx::set_timer`]. Long computation works in slices:
///   check [`Ctx::slice_over`] every few microseconds of work, keep the progress in the flow
///   state and return [`Status::Yield`] when it says so; [`Service::resume`] continues. The
///   whole md instance (every other flow, its signals, the watchdog) waits for a callback
///   that does not return.
/// * Steady state should not allocate: reuse buffers in the flow state.
///
/// # Example: a line service that answers `HELLO <name>`
///
/// ```
/// use std::fmt::Write as _;
/// use md::{Ctx, Service, Status};
/// use shmq::frame::OpenInfo;
///
/// struct Greeter;
///
/// impl Service for Greeter {
///     type Flow = ();
///
///     fn open(&mut self, info: &OpenInfo<'_>, _cx: &mut Ctx<'_>) -> Option<()> {
///         (info.service == "greet").then_some(()) // refuse other services: the flow is closed
///     }
///
///     fn message(&mut self, _flow: &mut (), msg: &[u8], cx: &mut Ctx<'_>) -> Status {
///         let line = md::services::strip_eol(msg);
///         match line.strip_prefix(b"HELLO ") {
///             Some(name) => {
///                 cx.send(b"hello, ");
///                 cx.send(name);
///                 cx.send(b"\n");
///             }
///             None => {
///                 cx.error();
///                 let _ = write!(cx, "ERR expected HELLO <name>, got {} bytes\n", line.len());
///             }
///         }
///         Status::Done
///     }
/// }
/// ```
pub trait Service {
    /// Per-flow state, created by [`Service::open`] and dropped by [`Service::close`].
    type Flow;

    /// A new flow (client connection) of `info.service`. Return its state, or `None` to refuse
    /// it (unknown service): the runner then closes the flow. May write a greeting.
    fn open(&mut self, info: &OpenInfo<'_>, cx: &mut Ctx<'_>) -> Option<Self::Flow>;

    /// One request: for `line` services one complete line including its `\n` (a `\r` before
    /// it is possible; the last line before an EOF may lack the `\n`); for `raw` services
    /// whatever chunk io_conn read. `msg` is valid only during the call.
    fn message(&mut self, flow: &mut Self::Flow, msg: &[u8], cx: &mut Ctx<'_>) -> Status;

    /// A timer set with [`Ctx::set_timer`] fired with `token`. The return value finishes the
    /// pending request (ignored when none is pending). Timers of a closed flow never fire.
    fn timer(&mut self, flow: &mut Self::Flow, token: u64, cx: &mut Ctx<'_>) -> Status {
        let _ = (flow, token, cx);
        Status::Pending
    }

    /// Output credit came back (io_conn flushed bytes to the client) while a request of this flow
    /// is pending: [`Ctx::room`] may have grown. The return value finishes the pending request.
    fn drained(&mut self, flow: &mut Self::Flow, cx: &mut Ctx<'_>) -> Status {
        let _ = (flow, cx);
        Status::Pending
    }

    /// Continues the flow's request after it returned [`Status::Yield`]: one more slice of its
    /// work (check [`Ctx::slice_over`]), then [`Status::Yield`] again, [`Status::Done`] when it
    /// is answered, or [`Status::Pending`] to wait for a timer or credit. The runner calls it
    /// after the other flows' ready work, and never for a flow that was closed meanwhile
    /// ([`Service::close`] gets the state with the work half done).
    ///
    /// The default returns [`Status::Done`], for services that never yield.
    fn resume(&mut self, flow: &mut Self::Flow, cx: &mut Ctx<'_>) -> Status {
        let _ = (flow, cx);
        Status::Done
    }

    /// The client half-closed and every request before it is answered. May write a last
    /// message; the runner then sends everything and closes the flow.
    fn eof(&mut self, flow: &mut Self::Flow, cx: &mut Ctx<'_>) {
        let _ = (flow, cx);
    }

    /// The flow is gone (the client left, or md closed it after an EOF, or io_conn went away).
    /// Drop its state; its timers are cancelled already.
    fn close(&mut self, flow: Self::Flow) {
        let _ = flow;
    }

    /// The service's own settings: read and check its `[service.NAME]` table
    /// ([`config::Config::service`]; free-form TOML, e.g. `[service.upper] suffix = "!"`).
    ///
    /// md calls it with the loaded config before it serves (an `Err` stops the binary with exit
    /// status 2), under `--check-config` (an `Err` fails the check), and on every reload after
    /// md's own checks passed and before anything of the new file applies: an `Err` then refuses
    /// the whole reload (counted in `reloads_refused`, `systemctl reload` fails) and md keeps its
    /// old config. So on `Err` keep the settings you had: check everything first, then assign.
    /// The error names the key ([`SettingError::new`]); md adds the file and the line. Open flows
    /// stay across a reload. Default: reads nothing.
    fn configure(&mut self, cfg: &config::Config) -> Result<(), SettingError> {
        let _ = cfg;
        Ok(())
    }

    /// The config was reloaded (SIGHUP, `systemctl reload md@N`): take the new settings that
    /// apply to this service (the built-ins: `md.dumb.*`). Called after [`Service::configure`]
    /// accepted the new file. Open flows stay. Default: nothing.
    fn reload(&mut self, cfg: &config::Config) {
        let _ = cfg;
    }

    /// Names of the request kinds this service counts with [`Ctx::count`], in index order; for
    /// stats. md registers them in its stats block when it takes its slot, and viewstats shows
    /// kind `i` as `commands.<names[i]>`. At most [`crate::stats::MAX_COMMANDS`] names of 1 to
    /// [`shmq::stats::COMMAND_NAME_BYTES`] ASCII letters, digits, `_`, `.`, `-`, unique, not
    /// `other` (see [`shmq::stats::check_command_names`]); md logs a warning and names none if
    /// the list breaks these rules.
    fn command_names(&self) -> &'static [&'static str] {
        &[]
    }
}

/// A bad value in a service's `[service.NAME]` table, from [`Service::configure`].
///
/// `Display` gives `service.NAME.key: message`; md prints it located in the config file, like
/// a config error: `shmsrv.toml:42: service.upper.suffix: expected a string`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    key: String,
    message: String,
}

impl SettingError {
    /// `key` of `[service.<service>]` (a dotted path inside the table, or `""` for the table
    /// itself) is wrong: `message` says why.
    pub fn new(service: &str, key: &str, message: impl fmt::Display) -> Self {
        let key = match key {
            "" => format!("service.{service}"),
            k => format!("service.{service}.{k}"),
        };
        Self { key, message: message.to_string() }
    }

    /// The dotted key, `service.NAME.key`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong, without the key.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// As a [`config::ConfigError`] located in `file` (the config's path; `None`: the built-in
    /// defaults), with the line the key (or its table) is written on.
    pub fn locate(&self, file: Option<&std::path::Path>) -> config::ConfigError {
        config::Config::setting_error(file, &self.key, &self.message)
    }
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for SettingError {}

/// Why [`Ctx::broadcast`] refused a message (nothing was queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BroadcastError {
    /// The service name is longer than [`MAX_SERVICE_NAME`] bytes (no listener can have it).
    NameTooLong {
        /// Length of the name given.
        len: usize,
    },
    /// Name plus bytes do not fit in one frame: a broadcast is one message and is never split.
    TooLarge {
        /// Bytes given (the message itself, without the name).
        len: usize,
        /// The most message bytes a broadcast to this service can carry.
        max: usize,
    },
}

impl fmt::Display for BroadcastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NameTooLong { len } => {
                write!(f, "service name of {len} bytes (max {MAX_SERVICE_NAME})")
            }
            Self::TooLarge { len, max } => {
                write!(f, "broadcast of {len} bytes does not fit in one frame (max {max})")
            }
        }
    }
}

impl std::error::Error for BroadcastError {}

/// What a callback may do: write output, set timers, count. Borrowed for one callback.
pub struct Ctx<'a> {
    pub(crate) flow: FlowId,
    pub(crate) slot: u32,
    /// The flow's outbox: bytes written but not yet in the ring.
    pub(crate) out: &'a mut Vec<u8>,
    /// Bytes of this flow's output already handed to the ring (`out[0]` is byte `out_base`).
    pub(crate) out_base: u64,
    /// The flow's queued broadcasts: records of `mark: u64 LE` (the output position they follow),
    /// `len: u32 LE`, then a `BROADCAST` payload of `len` bytes.
    pub(crate) bcast: &'a mut Vec<u8>,
    /// The flow's "close after this" flag ([`Ctx::close`]).
    pub(crate) closing: &'a mut bool,
    /// Largest frame payload of the output ring.
    pub(crate) max_payload: usize,
    /// Credit not spent by bytes already in the ring, when this callback started.
    pub(crate) avail: u64,
    pub(crate) timers: &'a mut Timers,
    pub(crate) stats: &'a mut Stats,
    pub(crate) now: Instant,
    /// `md.slice`; zero: no slicing.
    pub(crate) slice: Duration,
    /// When this callback's slice ends: set by the runner for a turn of [`Service::resume`]
    /// (shared with the held requests that turn runs), else on the first
    /// [`Ctx::slice_deadline`] of the callback (so only callbacks that ask read the clock).
    pub(crate) slice_end: Option<Instant>,
}

impl fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("flow", &self.flow)
            .field("queued", &self.out.len())
            .field("room", &self.room())
            .finish()
    }
}

impl Ctx<'_> {
    /// The flow this callback is about.
    pub fn flow_id(&self) -> FlowId {
        self.flow
    }

    /// The time the current batch started, or for [`Service::resume`] the time its slice
    /// started (cheaper than `Instant::now()` per request).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Queues `bytes` for the client, after everything written before. Never fails and never
    /// drops; bytes beyond the flow's credit wait in the flow's outbox until io_conn returns
    /// credit (and while they wait, the flow's next requests are held).
    pub fn send(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Bytes that can still go out now without exceeding the flow's output credit (credit minus
    /// bytes in flight minus bytes queued). A stream writes at most this much per callback.
    pub fn room(&self) -> u64 {
        self.avail.saturating_sub(self.out.len() as u64)
    }

    /// Bytes written in this flow but not yet handed to io_conn.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Closes the flow once what it wrote so far has reached the client, as Redis does after
    /// `QUIT`'s `+OK`. The request being handled finishes as its callback says (a
    /// [`Status::Pending`] one may still write until it is done); no later request of the flow
    /// runs: those held or still arriving are dropped unanswered, and [`Service::eof`] is not
    /// called. The runner then hands the output over and sends `CLOSE`; io_conn writes every
    /// byte before it and closes the connection (counted as `closed_by_md`). Under `request`
    /// dispatch io_conn also drops the connection's requests routed after this one to other md
    /// instances, and reads no more. [`Service::close`] follows as for any closed flow.
    pub fn close(&mut self) {
        *self.closing = true;
    }

    /// Whether [`Ctx::close`] was called for this flow.
    pub fn is_closing(&self) -> bool {
        *self.closing
    }

    /// Sends `bytes` as one message to every open flow of `service` (io_conn writes it to each of
    /// those clients; this flow too, if it belongs to `service`). Flows of other md instances get
    /// it as well: io_conn does the fan-out.
    ///
    /// * **Order.** The broadcast reaches io_conn after everything this flow wrote before it
    ///   ([`Ctx::send`]) and before everything it writes after it, so a client of this flow sees
    ///   it in place. It therefore also waits while this flow's earlier output waits for credit;
    ///   and while it has not reached io_conn, the flow's next requests are held (as with
    ///   [`Ctx::send`] beyond credit).
    /// * **Never dropped** by md: a full output ring keeps it queued and retried. It is discarded
    ///   only if this flow is closed by io_conn first (like the flow's other queued output).
    /// * **Credit.** It is not counted against any flow's output credit: io_conn queues it for
    ///   each client outside the credit. But io_conn closes a flow whose uncredited backlog
    ///   exceeds `io_conn.output_credit`, so a client that does not read is cut off once
    ///   broadcasts pile up beyond that: keep broadcasts small, and their rate modest, relative
    ///   to `output_credit`.
    ///
    /// # Errors
    ///
    /// Nothing is queued when `service` is longer than [`MAX_SERVICE_NAME`], or when the
    /// message does not fit in one frame (`2 + service.len() + bytes.len()` over the ring's
    /// largest payload): a broadcast is never split. The caller decides what to tell the client
    /// (and may count it with [`Ctx::error`]).
    pub fn broadcast(&mut self, service: &str, bytes: &[u8]) -> Result<(), BroadcastError> {
        if service.len() > MAX_SERVICE_NAME {
            return Err(BroadcastError::NameTooLong { len: service.len() });
        }
        let max = self.max_payload.saturating_sub(2 + service.len());
        if bytes.len() > max {
            return Err(BroadcastError::TooLarge { len: bytes.len(), max });
        }
        let n = 2 + service.len() + bytes.len();
        let mark = self.out_base + self.out.len() as u64;
        self.bcast.extend_from_slice(&mark.to_le_bytes());
        // Fits: n <= max_payload, a u32 in any ring.
        self.bcast.extend_from_slice(&(n as u32).to_le_bytes());
        let start = self.bcast.len();
        self.bcast.resize(start + n, 0);
        if let Err(e) = encode_broadcast(service, bytes, &mut self.bcast[start..]) {
            // Unreachable: the name and the size were checked above. Undo the record.
            debug_assert!(false, "encode_broadcast: {e}");
            self.bcast.truncate(start - 12);
            return Err(BroadcastError::TooLarge { len: bytes.len(), max });
        }
        Ok(())
    }

    /// The time slice a callback may compute for before it should return [`Status::Yield`]
    /// (`md.slice`); `None`: slicing is off (`md.slice = "0s"`), long work runs to its end.
    pub fn slice_budget(&self) -> Option<Duration> {
        (!self.slice.is_zero()).then_some(self.slice)
    }

    /// When this callback's slice ends (`None`: slicing is off). Within [`Service::resume`] it
    /// is the end of the flow's turn; elsewhere the first call reads the clock and starts the
    /// slice there.
    pub fn slice_deadline(&mut self) -> Option<Instant> {
        if self.slice.is_zero() {
            return None;
        }
        Some(*self.slice_end.get_or_insert_with(|| Instant::now() + self.slice))
    }

    /// Is this callback's slice spent? Reads the clock (some 20-30 ns through the vDSO), so call
    /// it after a chunk of work (BURN: every 8192 iterations, ~10 us), not per step. Always
    /// `false` when slicing is off. The first call of a callback starts the slice (see
    /// [`Ctx::slice_deadline`]), so call it once before the work to count the work in full.
    pub fn slice_over(&mut self) -> bool {
        match self.slice_deadline() {
            Some(end) => Instant::now() >= end,
            None => false,
        }
    }

    /// Calls [`Service::timer`] with `token` for this flow after `after` (not before). A flow
    /// may have any number of timers; they are cancelled when the flow closes.
    pub fn set_timer(&mut self, after: Duration, token: u64) {
        self.timers.add(self.now + after, self.flow, self.slot, token);
    }

    /// Counts one request of kind `cmd` (an index into [`Service::command_names`]). viewstats
    /// shows it as `commands.<name>`; kinds without a name (an index beyond the names, or at
    /// least [`MAX_COMMANDS`]) add up in `commands.other`.
    pub fn count(&mut self, cmd: usize) {
        self.stats.commands[cmd.min(MAX_COMMANDS)] += 1;
    }

    /// Counts one error reply (a request that was answered with an error).
    pub fn error(&mut self) {
        self.stats[Md::Errors] += 1;
    }
}

impl fmt::Write for Ctx<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.send(s.as_bytes());
        Ok(())
    }
}
