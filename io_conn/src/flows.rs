//! The flow table: one preallocated slot per possible client connection.
//!
//! Used only by the event loop. A flow is named by a [`FlowId`] (slot index + the slot's
//! generation); the generation is bumped when the flow closes, so a frame md sends for a closed
//! flow never reaches the connection that reuses the slot (it is dropped and counted). Slots are
//! reused LIFO (the most recently freed first: warm in cache).
//!
//! Two intrusive doubly-linked lists thread through the slots with no allocation:
//! * [`ListId::Idle`]: every flow holding a socket, least recently active first (idle timeout;
//!   also how BROADCAST and md death find flows without scanning every slot);
//! * [`ListId::Deadline`]: flows holding an incomplete message, oldest first (message deadline).
//!
//! Both timeouts are fixed durations, so appending at the tail keeps each list ordered by
//! deadline; the timer only ever looks at the heads.
//!
//! # Example
//!
//! ```
//! use io_conn::flows::{FlowTable, ListId};
//!
//! let mut t = FlowTable::new(2);
//! let a = t.alloc().unwrap();
//! let b = t.alloc().unwrap();
//! t.push_back(ListId::Idle, a);
//! t.push_back(ListId::Idle, b);
//! t.move_to_back(ListId::Idle, a);
//! assert_eq!(t.front(ListId::Idle), Some(b));
//! let id = t.id(a);
//! t.remove(ListId::Idle, a);
//! t.release(a);
//! assert_ne!(t.id(a), id, "the slot's generation moved on");
//! ```

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use nix::sys::epoll::EpollFlags;
use shmq::frame::FlowId;

use crate::framing::Refusal;
use crate::pool::Buf;

/// "No slot" in list links.
pub const NIL: u32 = u32::MAX;
/// "No md instance" (a flow held until an md is live).
pub const NO_MD: u32 = u32::MAX;

/// Life cycle of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Unused; on the free stack.
    Free,
    /// Accepted while no md was live; waits (not read) until one says HELLO, or times out.
    Unassigned,
    /// Accepted on a `proxy_protocol` listener from a `proxy_from` address: its PROXY header is
    /// being read (into `input`, within the message deadline). Bound to no md, known to none;
    /// not counted in `max_connections_per_ip` (the address is the balancer's) until the header
    /// names the client.
    Header,
    /// Bound to an md instance.
    Open,
    /// After an error reply was flushed: our side is shut down for writing and input is read and
    /// discarded until the client closes (or the message deadline), so closing with unread input
    /// does not send an RST that would destroy the error line in flight. md still knows the flow.
    Lingering,
    /// Socket closed; the CLOSE frame to md is still to be pushed (its ring was full). The slot
    /// is reused only after that.
    Closing,
}

/// How an open flow's input ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEnd {
    /// Still reading the client.
    Reading,
    /// No more reading: the client half-closed (`by_peer`), or a shutdown asked for an orderly
    /// end. `sent`: the EOF frame is in md's ring (after every buffered message).
    Eof {
        /// The client half-closed (read returned 0): the close that follows md's CLOSE is the
        /// client's doing, counted as closed by peer.
        by_peer: bool,
        /// The EOF frame was pushed.
        sent: bool,
    },
}

/// What happens once an open flow's output is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFlush {
    /// Keep serving.
    Serve,
    /// md sent CLOSE (it has forgotten the flow, so closing sends md no CLOSE back): close.
    Close,
    /// An error reply (a refused message) or the reply to the connection's last request is on
    /// its way: then linger ([`State::Lingering`]).
    Linger,
}

/// The framer ended the connection's input: it refused a message (an oversized line: the
/// `ERR message too long` line; a bad HTTP request: a `400`, `431` or `413` response; see
/// [`Flow::refusal`]), or the last message was the last (HTTP `Connection: close`: no error
/// reply). The reply, if any, goes out after the replies to the requests before it, never ahead
/// of them; then the connection lingers and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooLong {
    /// The framer has not ended the input.
    No,
    /// `flow` dispatch: md got EOF after the messages before it; the error line is written when
    /// md's CLOSE comes (after md's replies), then the flow lingers.
    AwaitMd,
    /// The error line is written or queued behind the replies owed (`request` dispatch: as the
    /// reply of a pseudo-request at the end of the pipeline). Under `flow` dispatch md has
    /// closed the flow (it gets no CLOSE back).
    Queued,
}

/// Which intrusive list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListId {
    /// Flows with a socket, least recently active first.
    Idle = 0,
    /// Flows with an incomplete input message, oldest first.
    Deadline = 1,
}

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    linked: bool,
}

impl Link {
    const NONE: Self = Self { prev: NIL, next: NIL, linked: false };
}

/// One request of a connection under `request` dispatch, in flight on an md.
#[derive(Debug)]
pub struct Req {
    /// The md instance it went to.
    pub md: u32,
    /// md marked the end of its reply (or dropped the flow at it).
    pub done: bool,
    /// Reply bytes that came while an earlier request's reply was still being sent: held here,
    /// bounded by the md's output credit for this flow, until this request reaches the head.
    pub held: Option<Buf>,
    /// When it was pushed to md (the loop's clock): a request unfinished for a whole tick may
    /// wait for credit, which then goes back to its md at once (`server::dispatch`).
    pub since: Instant,
}

/// An md instance a `request`-dispatched connection has been opened on.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The md instance.
    pub md: u32,
    /// Reply bytes flushed to the client and not yet returned to that md with DRAINED.
    pub drained: u64,
    /// Reply bytes received from that md and not yet flushed (held, or queued for the socket):
    /// above the flow's credit, md overran it.
    pub owed: u64,
}

/// The `request` dispatch state of a connection: its requests in flight, in order, and the md
/// instances it is open on. Empty (and unused) under `flow` dispatch. Keeps its allocations
/// when the slot is reused.
#[derive(Debug, Default)]
pub struct ReqFlow {
    /// This connection's requests are dispatched one by one (the listener's `dispatch`).
    pub on: bool,
    /// Most requests in flight (`pipeline_depth`): beyond it the socket is not read.
    pub depth: u32,
    /// Requests in flight, oldest (the head, whose reply is being sent) first.
    pub q: VecDeque<Req>,
    /// md instances that got OPEN for this connection.
    pub peers: Vec<Peer>,
    /// The socket's output queue as (md, bytes) runs, so flushed bytes return credit to the md
    /// that sent them ([`crate::flows::NO_MD`]: uncredited, e.g. a BROADCAST).
    pub segs: VecDeque<(u32, u64)>,
}

impl ReqFlow {
    /// The peer entry of md `i`.
    pub fn peer_mut(&mut self, i: u32) -> Option<&mut Peer> {
        self.peers.iter_mut().find(|p| p.md == i)
    }

    /// The oldest request on md `i` whose reply has not ended.
    pub fn open_req(&self, i: u32) -> Option<usize> {
        self.q.iter().position(|r| r.md == i && !r.done)
    }

    /// No more requests fit in flight.
    pub fn full(&self) -> bool {
        self.on && self.q.len() >= self.depth as usize
    }
}

/// One client connection.
#[derive(Debug)]
pub struct Flow {
    /// Current generation of this slot (part of the [`FlowId`]).
    pub generation: u32,
    /// Life cycle.
    pub state: State,
    /// The client socket (None when Free or Closing).
    pub sock: Option<TcpStream>,
    /// Index of the listener it came from (service and framing).
    pub listener: u16,
    /// The md instance it is bound to, or [`NO_MD`].
    pub md: u32,
    /// The client's address (for OPEN).
    pub peer: SocketAddr,
    /// Input not yet pushed to md: an incomplete message, or messages the full ring refused.
    pub input: Option<Buf>,
    /// Output not yet written to the client.
    pub output: Option<Buf>,
    /// Bytes in `output` md did not pay credit for (len32 prefixes, BROADCAST): subtracted from
    /// what is flushed before reporting DRAINED.
    pub uncredited: u64,
    /// Credited bytes flushed to the client and not yet reported with DRAINED.
    pub drained: u64,
    /// In the loop's DRAINED list.
    pub in_drained_list: bool,
    /// In the loop's credit watch list (credit below a quarter, `flow` dispatch: a sixteenth,
    /// held back while an md works on one of this flow's requests; see `server::dispatch`). Like
    /// `in_drained_list` it stays with the slot: a stale entry serves the slot's next flow.
    pub in_credit_watch: bool,
    /// The epoll interest currently registered.
    pub interest: EpollFlags,
    /// md sent PAUSE: do not read.
    pub md_paused: bool,
    /// In its md's blocked queue (something to push did not fit the ring): do not read.
    pub blocked: bool,
    /// OPEN still to be pushed.
    pub open_pending: bool,
    /// `flow` dispatch: requests pushed to md whose reply has not ended (md marks reply ends,
    /// OPEN flag `OPEN_MARK_ENDS`): 0 means no reply is owed, which a handover waits for.
    pub owed: u32,
    /// `flow` dispatch: when md started on the oldest request still owed (the push that made
    /// `owed` 1, or the reply end that left others owed). A request owed for a whole tick while
    /// credit is held back may be waiting for that credit (`server::dispatch`, "Returning
    /// credit").
    pub owed_since: Instant,
    /// `flow` dispatch: md sent DATA for it at least once (a CLOSE before that is a refusal,
    /// which routing counts against the md).
    pub md_answered: bool,
    /// Whether the client's input has ended.
    pub input_end: InputEnd,
    /// What to do once output is flushed.
    pub after_flush: AfterFlush,
    /// The framer ended the input: an error reply may be owed (see [`TooLong`]).
    pub too_long: TooLong,
    /// Which error reply is owed once `too_long` is set (`framing::refusal_reply`); `None`: the
    /// input ended after a last message, nothing to add.
    pub refusal: Option<Refusal>,
    /// The id the flow had while open (the CLOSE to push while Closing).
    pub close_id: FlowId,
    /// `request` dispatch state.
    pub rq: ReqFlow,
    /// `peer` came from a PROXY header: it is not the socket's peer address. A handover does
    /// not pass such a flow on (the successor checks each socket's peer against the record).
    pub proxied: bool,
    /// Last read or write.
    pub last_active: Instant,
    /// When the socket last stopped taking all our output (EPOLLOUT armed): how long the
    /// output has been held, for `io_conn.max_buffered`'s choice of the slowest readers.
    pub out_since: Instant,
    /// When the incomplete message at the front of `input` started (or accept time while
    /// Unassigned, or when lingering began).
    pub since: Instant,
    links: [Link; 2],
}

impl Flow {
    fn new(now: Instant) -> Self {
        Self {
            generation: 1,
            state: State::Free,
            sock: None,
            listener: 0,
            md: NO_MD,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            input: None,
            output: None,
            uncredited: 0,
            drained: 0,
            in_drained_list: false,
            in_credit_watch: false,
            interest: EpollFlags::empty(),
            md_paused: false,
            blocked: false,
            open_pending: false,
            owed: 0,
            owed_since: now,
            md_answered: false,
            input_end: InputEnd::Reading,
            after_flush: AfterFlush::Serve,
            too_long: TooLong::No,
            refusal: None,
            close_id: FlowId(0),
            rq: ReqFlow::default(),
            proxied: false,
            last_active: now,
            out_since: now,
            since: now,
            links: [Link::NONE; 2],
        }
    }

    /// Bytes waiting to be written.
    #[inline]
    pub fn output_len(&self) -> usize {
        self.output.as_ref().map_or(0, Buf::len)
    }

    /// The flow wants its socket read: open, input not ended, not paused by md or by a full
    /// ring, no close pending. (A lingering flow is read too, to discard.)
    #[inline]
    pub fn wants_input(&self) -> bool {
        match self.state {
            State::Open => {
                self.input_end == InputEnd::Reading
                    && !self.md_paused
                    && !self.blocked
                    && self.after_flush == AfterFlush::Serve
                    && !self.rq.full()
            }
            State::Lingering | State::Header => true,
            _ => false,
        }
    }

    /// The client's input has ended (EOF seen, or shutdown asked for an orderly end).
    #[inline]
    pub fn input_ended(&self) -> bool {
        self.input_end != InputEnd::Reading
    }

    /// An EOF frame is owed to md.
    #[inline]
    pub fn eof_pending(&self) -> bool {
        matches!(self.input_end, InputEnd::Eof { sent: false, .. })
    }

    /// The client half-closed.
    #[inline]
    pub fn peer_eof(&self) -> bool {
        matches!(self.input_end, InputEnd::Eof { by_peer: true, .. })
    }

    /// Holds a socket (any state a client event may concern).
    #[inline]
    pub fn has_client(&self) -> bool {
        matches!(self.state, State::Open | State::Unassigned | State::Lingering | State::Header)
    }
}

#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    len: u32,
}

/// The preallocated slots, the free stack and the intrusive lists.
#[derive(Debug)]
pub struct FlowTable {
    flows: Vec<Flow>,
    free: Vec<u32>,
    lists: [List; 2],
}

impl FlowTable {
    /// `n` free slots.
    pub fn new(n: u32) -> Self {
        let now = Instant::now();
        let flows = (0..n).map(|_| Flow::new(now)).collect();
        // Reversed so that slot 0 is handed out first.
        let free = (0..n).rev().collect();
        let empty = List { head: NIL, tail: NIL, len: 0 };
        Self { flows, free, lists: [empty; 2] }
    }

    /// Grows the table to `n` slots (a reload that raises `io_conn.max_connections`); never
    /// shrinks it. The new slots are handed out after the free ones.
    pub fn grow(&mut self, n: u32) {
        let old = self.flows.len() as u32;
        if n <= old {
            return;
        }
        let now = Instant::now();
        self.flows.extend((old..n).map(|_| Flow::new(now)));
        // Under the free ones: the free stack pops from the end.
        let mut free: Vec<u32> = (old..n).rev().collect();
        free.append(&mut self.free);
        self.free = free;
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.flows.len()
    }

    /// Slots in use (any state but Free).
    pub fn in_use(&self) -> usize {
        self.flows.len() - self.free.len()
    }

    /// Takes a free slot (state still [`State::Free`]; the caller sets it up), or None if all
    /// are in use.
    #[inline]
    pub fn alloc(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Returns a slot to the free stack: clears it and bumps its generation. The caller has
    /// unlinked it from every list and taken its buffers and socket.
    pub fn release(&mut self, slot: u32) {
        let f = &mut self.flows[slot as usize];
        debug_assert!(!f.links[0].linked && !f.links[1].linked);
        f.state = State::Free;
        f.sock = None;
        f.md = NO_MD;
        f.input = None;
        f.output = None;
        f.uncredited = 0;
        f.drained = 0;
        f.interest = EpollFlags::empty();
        f.md_paused = false;
        f.blocked = false;
        f.open_pending = false;
        f.proxied = false;
        f.owed = 0;
        f.md_answered = false;
        f.input_end = InputEnd::Reading;
        f.after_flush = AfterFlush::Serve;
        f.too_long = TooLong::No;
        f.refusal = None;
        debug_assert!(f.rq.q.iter().all(|r| r.held.is_none()), "held buffers go back to the pool");
        f.rq.on = false;
        f.rq.q.clear();
        f.rq.peers.clear();
        f.rq.segs.clear();
        self.bump(slot);
        self.free.push(slot);
    }

    /// Moves the slot to its next generation (0 is skipped: flowid 0 means "no flow").
    #[inline]
    pub fn bump(&mut self, slot: u32) {
        let f = &mut self.flows[slot as usize];
        f.generation = f.generation.wrapping_add(1).max(1);
    }

    /// The current id of a slot.
    #[inline]
    pub fn id(&self, slot: u32) -> FlowId {
        FlowId::new(slot, self.flows[slot as usize].generation)
    }

    /// The slot `id` names, if it is still that flow (generation matches) and in `state`.
    #[inline]
    pub fn lookup(&self, id: FlowId, state: State) -> Option<u32> {
        let f = self.flows.get(id.slot() as usize)?;
        (f.generation == id.generation() && f.state == state).then_some(id.slot())
    }

    /// A slot.
    #[inline]
    pub fn get(&self, slot: u32) -> &Flow {
        &self.flows[slot as usize]
    }

    /// A slot, mutably.
    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> &mut Flow {
        &mut self.flows[slot as usize]
    }

    /// Length of a list.
    pub fn list_len(&self, list: ListId) -> usize {
        self.lists[list as usize].len as usize
    }

    /// First slot of a list.
    #[inline]
    pub fn front(&self, list: ListId) -> Option<u32> {
        let h = self.lists[list as usize].head;
        (h != NIL).then_some(h)
    }

    /// The slot after `slot` in `list`.
    #[inline]
    pub fn next(&self, list: ListId, slot: u32) -> Option<u32> {
        let n = self.flows[slot as usize].links[list as usize].next;
        (n != NIL).then_some(n)
    }

    /// True if `slot` is in `list`.
    #[inline]
    pub fn is_linked(&self, list: ListId, slot: u32) -> bool {
        self.flows[slot as usize].links[list as usize].linked
    }

    /// Appends `slot` to `list` (no-op if already linked).
    pub fn push_back(&mut self, list: ListId, slot: u32) {
        let li = list as usize;
        if self.flows[slot as usize].links[li].linked {
            return;
        }
        let tail = self.lists[li].tail;
        self.flows[slot as usize].links[li] = Link { prev: tail, next: NIL, linked: true };
        if tail == NIL {
            self.lists[li].head = slot;
        } else {
            self.flows[tail as usize].links[li].next = slot;
        }
        self.lists[li].tail = slot;
        self.lists[li].len += 1;
    }

    /// Unlinks `slot` from `list` (no-op if not linked).
    pub fn remove(&mut self, list: ListId, slot: u32) {
        let li = list as usize;
        let Link { prev, next, linked } = self.flows[slot as usize].links[li];
        if !linked {
            return;
        }
        if prev == NIL {
            self.lists[li].head = next;
        } else {
            self.flows[prev as usize].links[li].next = next;
        }
        if next == NIL {
            self.lists[li].tail = prev;
        } else {
            self.flows[next as usize].links[li].prev = prev;
        }
        self.flows[slot as usize].links[li] = Link::NONE;
        self.lists[li].len -= 1;
    }

    /// Moves `slot` to the back of `list` (links it if it was not).
    #[inline]
    pub fn move_to_back(&mut self, list: ListId, slot: u32) {
        if self.lists[list as usize].tail == slot {
            return;
        }
        self.remove(list, slot);
        self.push_back(list, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(t: &FlowTable, l: ListId) -> Vec<u32> {
        let mut v = Vec::new();
        let mut cur = t.front(l);
        while let Some(s) = cur {
            v.push(s);
            cur = t.next(l, s);
        }
        v
    }

    #[test]
    fn alloc_until_full_then_lifo_reuse() {
        let mut t = FlowTable::new(3);
        assert_eq!((t.alloc(), t.alloc(), t.alloc(), t.alloc()), (Some(0), Some(1), Some(2), None));
        assert_eq!(t.in_use(), 3);
        t.release(1);
        assert_eq!(t.alloc(), Some(1));
    }

    #[test]
    fn stale_id_does_not_match_reused_slot() {
        let mut t = FlowTable::new(1);
        let s = t.alloc().unwrap();
        t.get_mut(s).state = State::Open;
        let old = t.id(s);
        assert_eq!(t.lookup(old, State::Open), Some(s));
        t.release(s);
        let s2 = t.alloc().unwrap();
        t.get_mut(s2).state = State::Open;
        assert_eq!(s, s2);
        assert_eq!(t.lookup(old, State::Open), None, "old generation rejected");
        assert_eq!(t.lookup(t.id(s2), State::Open), Some(s2));
        assert_eq!(t.lookup(FlowId::new(99, 1), State::Open), None, "out of range slot");
    }

    #[test]
    fn generation_skips_zero() {
        let mut t = FlowTable::new(1);
        t.get_mut(0).generation = u32::MAX;
        t.bump(0);
        assert_eq!(t.get(0).generation, 1);
    }

    #[test]
    fn lists_keep_order_and_unlink() {
        let mut t = FlowTable::new(5);
        for s in 0..5 {
            t.push_back(ListId::Idle, s);
        }
        t.push_back(ListId::Idle, 2); // no-op
        assert_eq!(collect(&t, ListId::Idle), vec![0, 1, 2, 3, 4]);
        t.move_to_back(ListId::Idle, 0);
        t.remove(ListId::Idle, 3);
        t.remove(ListId::Idle, 3); // no-op
        assert_eq!(collect(&t, ListId::Idle), vec![1, 2, 4, 0]);
        assert_eq!(t.list_len(ListId::Idle), 4);
        t.push_back(ListId::Deadline, 4);
        assert_eq!(collect(&t, ListId::Deadline), vec![4]);
        for s in [1, 2, 4, 0] {
            t.remove(ListId::Idle, s);
        }
        assert_eq!(t.front(ListId::Idle), None);
        assert_eq!(t.list_len(ListId::Idle), 0);
        t.push_back(ListId::Idle, 3);
        assert_eq!(collect(&t, ListId::Idle), vec![3]);
    }

    #[test]
    fn wants_input_only_while_open_reading_and_unhindered() {
        let mut t = FlowTable::new(1);
        let s = t.alloc().unwrap();
        assert!(!t.get(s).wants_input(), "free");
        t.get_mut(s).state = State::Unassigned;
        assert!(!t.get(s).wants_input(), "held until an md is live");
        t.get_mut(s).state = State::Open;
        assert!(t.get(s).wants_input());
        for hinder in 0..4 {
            let f = t.get_mut(s);
            match hinder {
                0 => f.md_paused = true,
                1 => f.blocked = true,
                2 => f.input_end = InputEnd::Eof { by_peer: true, sent: false },
                _ => f.after_flush = AfterFlush::Close,
            }
            assert!(!t.get(s).wants_input(), "hindrance {hinder}");
            let f = t.get_mut(s);
            (f.md_paused, f.blocked) = (false, false);
            f.input_end = InputEnd::Reading;
            f.after_flush = AfterFlush::Serve;
            assert!(t.get(s).wants_input());
        }
        t.get_mut(s).state = State::Lingering;
        assert!(t.get(s).wants_input(), "a lingering flow is read to discard");
        t.get_mut(s).state = State::Closing;
        assert!(!t.get(s).wants_input() && !t.get(s).has_client());
    }

    #[test]
    fn eof_states_say_who_ended_and_what_is_owed() {
        let mut t = FlowTable::new(1);
        let s = t.alloc().unwrap();
        let f = t.get_mut(s);
        f.state = State::Open;
        assert!(!f.input_ended() && !f.eof_pending() && !f.peer_eof());
        f.input_end = InputEnd::Eof { by_peer: true, sent: false };
        assert!(f.input_ended() && f.eof_pending() && f.peer_eof());
        f.input_end = InputEnd::Eof { by_peer: false, sent: true };
        assert!(f.input_ended() && !f.eof_pending() && !f.peer_eof());
        t.release(s);
        let f = t.get(s);
        assert_eq!(
            (f.input_end, f.after_flush),
            (InputEnd::Reading, AfterFlush::Serve),
            "release resets"
        );
    }
}
