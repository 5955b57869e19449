//! io_conn's counters: one plain struct, written only by the event loop.
//!
//! Kept in one place so the loop can mirror it into io_conn's block of the stats segment once per
//! iteration (`crate::stats`: relaxed stores, one writer; viewstats shows them). [`crate::run`]
//! also returns the final values and logs them at exit. Nothing here is logged per event.

/// Event counts since start. All fields only grow except `connections_current`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Client connections open now (any state).
    pub connections_current: u64,
    /// Client connections accepted into the flow table.
    pub connections_accepted: u64,
    /// Connections accepted and closed at once because the flow table was full.
    pub connections_refused: u64,
    /// Times `accept` failed with EMFILE/ENFILE (accepting paused briefly each time).
    pub accept_fd_exhausted: u64,
    /// Closed because the client closed or reset. A client that half-closes (EOF) gets its
    /// pending replies first; the close that follows md's CLOSE is counted here, not in
    /// `closed_by_md`.
    pub closed_by_peer: u64,
    /// Closed after the idle timeout.
    pub closed_idle: u64,
    /// Closed because a message did not complete within the message deadline.
    pub closed_deadline: u64,
    /// Closed because a message exceeded the maximum size.
    pub closed_oversized: u64,
    /// Closed because md sent more output than the flow's credit.
    pub closed_credit_overrun: u64,
    /// Closed on a socket error.
    pub closed_error: u64,
    /// Closed because md asked (CLOSE) on its own, or after a SIGTERM drain asked it to finish.
    pub closed_by_md: u64,
    /// Closed because their md instance died (or no md came in time).
    pub closed_md_gone: u64,
    /// Closed by shutdown (drain deadline).
    pub closed_shutdown: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Messages pushed to md (DATA frames).
    pub messages_in: u64,
    /// DATA frames received from md.
    pub messages_out: u64,
    /// Framing errors (oversized messages, truncated len32 at EOF).
    pub framing_errors: u64,
    /// Times a flow stopped reading because its md's ring was full.
    pub backpressure_pauses: u64,
    /// PAUSE frames received from md.
    pub md_pauses: u64,
    /// BROADCAST frames received from md.
    pub broadcasts: u64,
    /// Returns from epoll_wait that reported at least one event (a zero-timeout poll or a timeout
    /// with nothing ready is not a wake-up).
    pub epoll_wakeups: u64,
    /// Events epoll_wait reported, in total.
    pub epoll_events: u64,
    /// md frames for a closed flow (stale generation) or another md's flow, dropped.
    pub stale_frames: u64,
    /// md frames that made no sense (bad payload), dropped.
    pub bad_frames: u64,
    /// md instances that attached (HELLO).
    pub md_hellos: u64,
    /// md instances that died or were lost (pidfd, corrupt ring).
    pub md_deaths: u64,
    /// DRAINED frames pushed.
    pub drained_frames: u64,
}
