//! md's counters, in one plain struct with one writer (the runner's thread).
//!
//! Kept as plain `u64`s on purpose: the stats segment (issue 6) will copy them into this md
//! instance's block with relaxed stores once per batch; until then [`crate::Runner::stats`] reads
//! them in-process.

/// Most request kinds a service can count with [`crate::Ctx::count`].
pub const MAX_COMMANDS: usize = 16;

/// Counters of one md runner. Monotonic, except across a restart of the process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames consumed from the input ring (all kinds).
    pub frames_in: u64,
    /// `DATA` frames received (requests).
    pub messages_in: u64,
    /// Payload bytes of `DATA` frames received.
    pub bytes_in: u64,
    /// `DATA` frames sent.
    pub messages_out: u64,
    /// Payload bytes of `DATA` frames sent.
    pub bytes_out: u64,
    /// `OPEN` frames accepted by the service.
    pub opens: u64,
    /// `OPEN` frames the service refused (unknown service) or that could not be decoded.
    pub refused: u64,
    /// `CLOSE` frames received (client gone).
    pub closes_in: u64,
    /// `CLOSE` frames sent (after an EOF, or a refused flow).
    pub closes_out: u64,
    /// `EOF` frames received.
    pub eofs: u64,
    /// `DRAINED` frames received.
    pub drained: u64,
    /// `PAUSE` frames sent.
    pub pauses: u64,
    /// `RESUME` frames sent.
    pub resumes: u64,
    /// Requests held behind a running one (copied into the flow's backlog).
    pub held: u64,
    /// Error replies (counted by services through [`crate::Ctx::error`]).
    pub errors: u64,
    /// Frames for a flow md does not know (already closed, or never opened).
    pub unknown_flow: u64,
    /// Frames md could not make sense of (bad `OPEN`/`DRAINED` payload, `DRAINED` beyond what
    /// was sent).
    pub bad_frames: u64,
    /// Times the output ring was full (the output waits in the flow; never dropped).
    pub out_full: u64,
    /// Corrupt input rings seen.
    pub corrupt: u64,
    /// Timers that fired for a live flow.
    pub timers_fired: u64,
    /// Successful attaches (including the first).
    pub attaches: u64,
    /// Doorbell wake-ups.
    pub wakeups: u64,
    /// Nanoseconds spent working (from a wake-up to the next idle check).
    pub busy_ns: u64,
    /// Requests per kind, indexed as the service's [`crate::Service::command_names`].
    pub commands: [u64; MAX_COMMANDS],
}
