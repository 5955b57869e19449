//! Unit tests of the client side's handling of md frames: no sockets, no rings. Flows are set
//! up by hand in the state a real one would be in; frames are built as the consumer hands them.

use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollCreateFlags};
use shmq::frame::{self, FlowId, Frame, Hello, Kind};

use super::clients::Lst;
use super::{Clients, Cx, Links};
use crate::counters::{Counters, Io};
use crate::flows::{AfterFlush, ListId, State};

pub(super) fn setup(mds: usize) -> (Cx, Clients, Links) {
    setup_listener("echo", (0..mds as u32).collect(), false, mds)
}

/// Test state with one listener (its socket is not needed: every test flow came from it) of
/// `service` served by `listener_mds`, under `request` or `flow` dispatch, and `mds` links
/// without rings. Shared with the other server modules' unit tests.
pub(super) fn setup_listener(
    service: &str,
    listener_mds: Vec<u32>,
    request: bool,
    mds: usize,
) -> (Cx, Clients, Links) {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
    let cfg = config::Config::default();
    let mut clients = Clients::new(&cfg, Vec::new(), &epoll).expect("clients");
    clients.listeners.push(Lst {
        sock: None,
        id: "test".into(),
        address: "127.0.0.1:0".parse().expect("address"),
        own: true,
        service: service.into(),
        framing: config::Framing::Line,
        in_epoll: false,
        mds: listener_mds,
        request,
        depth: 16,
        proxy: None,
        proxy_from: Vec::new(),
    });
    let cx = Cx { epoll, c: Counters::default(), now: Instant::now(), now_ns: 1 };
    (cx, clients, Links::without_rings(mds))
}

/// An open flow of md `md` (no socket), as accept + bind leave it.
pub(super) fn open_flow(cx: &mut Cx, cl: &mut Clients, md: u32) -> FlowId {
    let slot = cl.flows.alloc().expect("slot");
    let f = cl.flows.get_mut(slot);
    f.state = State::Open;
    f.md = md;
    cl.flows.push_back(ListId::Idle, slot);
    cx.c[Io::ConnectionsCurrent] += 1;
    cl.flows.id(slot)
}

fn frame(kind: Kind, flowid: FlowId, payload: &[u8]) -> Frame<'_> {
    Frame { flowid, kind, flags: 0, payload }
}

#[test]
fn data_for_an_unknown_flow_is_counted_stale_and_dropped() {
    let (mut cx, mut cl, mut links) = setup(1);
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Data, FlowId::new(7, 3), b"x"));
    assert_eq!(cx.c[Io::StaleFrames], 1);
    assert_eq!(cx.c[Io::MessagesOut], 1);
    assert_eq!(cx.c[Io::BytesOut], 0);
}

#[test]
fn frames_from_another_md_are_stale_and_change_nothing() {
    let (mut cx, mut cl, mut links) = setup(2);
    let id = open_flow(&mut cx, &mut cl, 1);
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Pause, id, &[]));
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Close, id, &[]));
    assert_eq!(cx.c[Io::StaleFrames], 2);
    let f = cl.flows.get(id.slot());
    assert_eq!((f.state, f.md_paused, f.after_flush), (State::Open, false, AfterFlush::Serve));
    assert_eq!(cx.c[Io::ClosedByMd], 0);
}

#[test]
fn a_frame_for_a_closed_flow_never_reaches_the_slots_next_flow() {
    let (mut cx, mut cl, mut links) = setup(1);
    let old = open_flow(&mut cx, &mut cl, 0);
    cl.close_flow(&mut cx, &mut links, old.slot(), Io::ClosedByPeer);
    assert_eq!(cl.flows.get(old.slot()).state, State::Free, "no ring: CLOSE not owed");
    let new = open_flow(&mut cx, &mut cl, 0);
    assert_eq!(new.slot(), old.slot(), "LIFO reuse");
    assert_ne!(new, old);
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Pause, old, &[]));
    assert_eq!(cx.c[Io::StaleFrames], 1);
    assert!(!cl.flows.get(new.slot()).md_paused);
}

#[test]
fn pause_and_resume_toggle_reading_of_the_flow() {
    let (mut cx, mut cl, mut links) = setup(1);
    let id = open_flow(&mut cx, &mut cl, 0);
    assert!(cl.flows.get(id.slot()).wants_input());
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Pause, id, &[]));
    assert!(!cl.flows.get(id.slot()).wants_input());
    assert_eq!(cx.c[Io::MdPauses], 1);
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Resume, id, &[]));
    assert!(cl.flows.get(id.slot()).wants_input());
    assert_eq!(cx.c[Io::StaleFrames], 0);
}

#[test]
fn close_from_md_with_nothing_queued_closes_as_by_md_and_frees_the_slot() {
    let (mut cx, mut cl, mut links) = setup(1);
    let id = open_flow(&mut cx, &mut cl, 0);
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Close, id, &[]));
    assert_eq!(cx.c[Io::ClosedByMd], 1);
    assert_eq!(cx.c[Io::ConnectionsCurrent], 0);
    assert_eq!(cl.flows.get(id.slot()).state, State::Free, "md forgot it: no CLOSE back");
    assert_eq!(cl.flows.in_use(), 0);
}

#[test]
fn bad_broadcast_bad_hello_and_wrong_kinds_are_counted_bad() {
    let (mut cx, mut cl, mut links) = setup(2);
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Broadcast, FlowId(0), b"\xff"));
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Open, FlowId(0), b""));
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Drained, FlowId(0), b""));
    assert_eq!(cx.c[Io::BadFrames], 3);
    assert!(!links.take_lost(1));
    // A HELLO naming another instance: the ring is not to be trusted.
    let hello = Hello { pid: std::process::id(), instance: 0, start_time: 0 }.encode();
    cl.on_md_frame(&mut cx, &mut links, 1, frame(Kind::Hello, FlowId(0), &hello));
    assert_eq!(cx.c[Io::BadFrames], 4);
    assert!(links.take_lost(1), "instance 1 is lost");
    assert!(!links.take_lost(0));
    assert_eq!(cx.c[Io::MdAttaches], 0);
}

#[test]
fn broadcast_skips_flows_of_other_services_and_closing_flows() {
    let (mut cx, mut cl, mut links) = setup(1);
    let a = open_flow(&mut cx, &mut cl, 0);
    cl.flows.get_mut(a.slot()).after_flush = AfterFlush::Close;
    let mut b = [0u8; 64];
    let n = frame::encode_broadcast("nobody", b"hi\n", &mut b).expect("encode");
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Broadcast, FlowId(0), &b[..n]));
    assert_eq!(cx.c[Io::Broadcasts], 1);
    assert_eq!(cx.c[Io::BytesOut], 0);
    assert_eq!(cl.flows.get(a.slot()).output_len(), 0);
}

/// A `request`-dispatched flow with a real loopback socket (replies are written to it), open on
/// md 0 and md 1, with requests in flight on the given md instances, oldest first.
fn request_flow(cx: &mut Cx, cl: &mut Clients, mds: &[u32]) -> (FlowId, std::net::TcpStream) {
    use crate::flows::{Peer, Req};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (server, _) = l.accept().expect("accept");
    server.set_nonblocking(true).expect("nonblocking");
    let id = open_flow(cx, cl, crate::flows::NO_MD);
    let f = cl.flows.get_mut(id.slot());
    f.sock = Some(server);
    f.rq.on = true;
    f.rq.depth = 16;
    f.rq.peers = vec![Peer { md: 0, drained: 0, owed: 0 }, Peer { md: 1, drained: 0, owed: 0 }];
    for &md in mds {
        f.rq.q.push_back(Req { md, done: false, held: None, since: cx.now });
    }
    client.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    (id, client)
}

fn reply(end: bool) -> u16 {
    if end { frame::flags::DATA_END } else { 0 }
}

#[test]
fn a_later_requests_reply_is_held_until_the_head_reply_ends() {
    use std::io::Read;
    let (mut cx, mut cl, mut links) = setup(2);
    let (id, mut client) = request_flow(&mut cx, &mut cl, &[0, 1]);
    let data = |md: u32, p: &'static [u8], end: bool| {
        (md, Frame { flowid: id, kind: Kind::Data, flags: reply(end), payload: p })
    };
    // md 1 answers the second request first: held.
    for (md, fr) in [data(1, b"second ", false), data(1, b"reply\n", true)] {
        cl.on_md_frame(&mut cx, &mut links, md, fr);
    }
    assert_eq!(cx.c[Io::BytesOut], 0, "nothing written before the head's reply");
    // The head's reply, in two frames: written at once; then the held one follows.
    for (md, fr) in [data(0, b"first ", false), data(0, b"reply\n", true)] {
        cl.on_md_frame(&mut cx, &mut links, md, fr);
    }
    let mut got = [0u8; 25];
    client.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"first reply\nsecond reply\n");
    let f = cl.flows.get(id.slot());
    assert!(f.rq.q.is_empty(), "both requests done");
    assert_eq!(
        f.rq.peers.iter().map(|p| p.drained).collect::<Vec<_>>(),
        vec![12, 13],
        "credit owed back to each md"
    );
    assert_eq!(cx.c[Io::StaleFrames], 0);
}

#[test]
fn md_close_at_a_request_drops_the_ones_behind_it_and_closes_after_the_replies() {
    use std::io::Read;
    let (mut cx, mut cl, mut links) = setup(2);
    let (id, mut client) = request_flow(&mut cx, &mut cl, &[0, 1, 0]);
    // md 1 forgets the flow at the second request: the third (on md 0) is dropped.
    cl.on_md_frame(&mut cx, &mut links, 1, frame(Kind::Close, id, &[]));
    assert_eq!(cx.c[Io::RequestsDropped], 1);
    assert_eq!(cl.flows.get(id.slot()).rq.q.len(), 2);
    assert!(!cl.flows.get(id.slot()).wants_input(), "no more requests are read");
    // The head's reply still goes out; then the connection closes (md asked).
    let fr =
        Frame { flowid: id, kind: Kind::Data, flags: frame::flags::DATA_END, payload: b"PONG\n" };
    cl.on_md_frame(&mut cx, &mut links, 0, fr);
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("read to EOF");
    assert_eq!(got, b"PONG\n");
    assert_eq!(cx.c[Io::ClosedByMd], 1);
    assert_eq!(cx.c[Io::ConnectionsCurrent], 0);
    // A late reply of md 0 for the dropped request is stale, not delivered anywhere.
    let late = Frame { flowid: id, kind: Kind::Data, flags: frame::flags::DATA_END, payload: b"x" };
    cl.on_md_frame(&mut cx, &mut links, 0, late);
    assert_eq!(cx.c[Io::StaleFrames], 1);
}

#[test]
fn pause_counts_only_from_the_md_of_the_head_request() {
    let (mut cx, mut cl, mut links) = setup(2);
    let (id, _client) = request_flow(&mut cx, &mut cl, &[0, 1]);
    cl.on_md_frame(&mut cx, &mut links, 1, frame(Kind::Pause, id, &[]));
    assert!(!cl.flows.get(id.slot()).md_paused, "md 1 does not hold the head");
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Pause, id, &[]));
    assert!(cl.flows.get(id.slot()).md_paused);
}

#[test]
fn credit_verdicts() {
    use super::SHORT_TICK;
    use super::dispatch::{Verdict, credit_verdict};
    let now = Instant::now() + SHORT_TICK * 10;
    assert_eq!(credit_verdict(None, now), Verdict::Idle);
    assert_eq!(credit_verdict(Some(now), now), Verdict::Young);
    assert_eq!(credit_verdict(Some(now - SHORT_TICK / 2), now), Verdict::Young);
    assert_eq!(credit_verdict(Some(now - SHORT_TICK), now), Verdict::Return);
    // A clock that went backwards (a request stamped after `now`) is young, not a panic.
    assert_eq!(credit_verdict(Some(now + SHORT_TICK), now), Verdict::Young);
}

/// The loop's DRAINED step for `ticks` iterations, each two short ticks after the last.
fn run_ticks(cx: &mut Cx, cl: &mut Clients, links: &mut Links, ticks: u32) {
    for _ in 0..ticks {
        cl.flush_drained(cx, links, true);
        cx.now += super::SHORT_TICK * 2;
    }
}

/// md 0 answers the flow's only request; then the loop runs a few iterations.
fn answer_and_tick(mds: &[u32], ticks: u32) -> (Cx, Clients, FlowId) {
    use std::io::Read;
    let (mut cx, mut cl, mut links) = setup(2);
    let (id, mut client) = request_flow(&mut cx, &mut cl, mds);
    let fr =
        Frame { flowid: id, kind: Kind::Data, flags: frame::flags::DATA_END, payload: b"PONG\n" };
    cl.on_md_frame(&mut cx, &mut links, 0, fr);
    let mut got = [0u8; 5];
    client.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"PONG\n");
    run_ticks(&mut cx, &mut cl, &mut links, ticks);
    (cx, cl, id)
}

#[test]
fn credit_below_a_quarter_is_held_back_while_md_works_on_none_of_the_flows_requests() {
    let (cx, cl, id) = answer_and_tick(&[0], 3);
    let f = cl.flows.get(id.slot());
    assert_eq!(f.rq.peers[0].drained, 5, "held back: md is not waiting for it");
    assert_eq!(cx.c[Io::DrainedFrames], 0);
    assert!(!f.in_drained_list && !f.in_credit_watch);
    assert!(!cl.has_drained(), "nothing keeps the loop waking up every tick");
}

#[test]
fn held_back_credit_goes_to_an_md_whose_request_stays_unfinished_for_a_tick() {
    // Two requests on md 0: the first is answered, the second is not.
    let (_, cl, id) = answer_and_tick(&[0, 0], 1);
    let f = cl.flows.get(id.slot());
    assert_eq!(f.rq.peers[0].drained, 5, "the second request is young: credit held back");
    assert!(f.in_credit_watch && cl.has_drained());
    let (_, cl, id) = answer_and_tick(&[0, 0], 3);
    let f = cl.flows.get(id.slot());
    // No ring in these tests: returning the credit forgets it (nobody to push it to).
    assert_eq!(f.rq.peers[0].drained, 0, "returned: md may be waiting for room");
    assert!(!f.in_credit_watch && !cl.has_drained());
}

/// A flow-dispatched flow with a real client socket, bound to md 0.
fn socket_flow(cx: &mut Cx, cl: &mut Clients) -> (FlowId, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (server, _) = l.accept().expect("accept");
    server.set_nonblocking(true).expect("nonblocking");
    client.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    let id = open_flow(cx, cl, 0);
    cl.flows.get_mut(id.slot()).sock = Some(server);
    (id, client)
}

/// `flow` dispatch: consecutive DATA frames of one flow are staged and written together, before
/// any other frame is handled (here another flow's DATA, then a CLOSE) and at the end of the
/// drain (`write_staged`); a frame completing several replies (`flags::ends_flags`) settles
/// that many owed replies.
#[test]
fn consecutive_flow_replies_are_one_write_and_ends_are_counted() {
    use std::io::Read;
    let (mut cx, mut cl, mut links) = setup(1);
    let (a, mut ca) = socket_flow(&mut cx, &mut cl);
    let (b, mut cb) = socket_flow(&mut cx, &mut cl);
    cl.flows.get_mut(a.slot()).owed = 5;
    let data = |id, p: &'static [u8], ends: usize| Frame {
        flowid: id,
        kind: Kind::Data,
        flags: frame::flags::ends_flags(ends),
        payload: p,
    };
    cl.on_md_frame(&mut cx, &mut links, 0, data(a, b"+OK\r\n$1\r\n", 1));
    cl.on_md_frame(&mut cx, &mut links, 0, data(a, b"v\r\n:1\r\n:2\r\n", 3));
    cl.on_md_frame(&mut cx, &mut links, 0, data(a, b"", 1));
    assert_eq!(cx.c[Io::BytesOut], 0, "staged while the same flow's frames follow");
    assert_eq!(cl.flows.get(a.slot()).owed, 0, "5 replies completed");
    // Another flow's frame: a's bytes are written first, in one piece; b's are staged.
    cl.on_md_frame(&mut cx, &mut links, 0, data(b, b"+PONG\r\n", 1));
    let want = b"+OK\r\n$1\r\nv\r\n:1\r\n:2\r\n";
    assert_eq!(cx.c[Io::BytesOut], want.len() as u64);
    let mut got = vec![0u8; want.len()];
    ca.read_exact(&mut got).expect("read a");
    assert_eq!(got, want);
    // A CLOSE of b behind its staged reply: the reply goes out, then the connection closes.
    cl.on_md_frame(&mut cx, &mut links, 0, frame(Kind::Close, b, &[]));
    let mut got = Vec::new();
    cb.read_to_end(&mut got).expect("read b to EOF");
    assert_eq!(got, b"+PONG\r\n");
    assert_eq!(cx.c[Io::ClosedByMd], 1);
    // The end of a drain writes what is staged.
    cl.on_md_frame(&mut cx, &mut links, 0, data(a, b"+OK\r\n", 1));
    assert_eq!(cx.c[Io::BytesOut], want.len() as u64 + 7, "staged, not written yet");
    cl.write_staged(&mut cx, &mut links);
    let mut got = [0u8; 5];
    ca.read_exact(&mut got).expect("read a again");
    assert_eq!(&got, b"+OK\r\n");
}

#[test]
fn ends_flags_round_trip() {
    use frame::flags::{DATA_END, MAX_ENDS, data_ends, ends_flags};
    assert_eq!(ends_flags(0), 0);
    assert_eq!(ends_flags(1), DATA_END, "one end: the flag of protocol 1");
    for k in 0..=MAX_ENDS {
        assert_eq!(data_ends(ends_flags(k)) as usize, k);
    }
}

/// `flow` dispatch: md 0 owes `owed` replies to a flow and sends the first (5 bytes); it is
/// written to the client, then the loop runs `ticks` iterations a double tick apart.
fn flow_answer_and_tick(owed: u32, reply: &'static [u8], ticks: u32) -> (Cx, Clients, FlowId) {
    use std::io::Read;
    let (mut cx, mut cl, mut links) = setup(1);
    let (id, mut client) = socket_flow(&mut cx, &mut cl);
    let f = cl.flows.get_mut(id.slot());
    (f.owed, f.owed_since) = (owed, cx.now);
    let fr =
        Frame { flowid: id, kind: Kind::Data, flags: frame::flags::ends_flags(1), payload: reply };
    cl.on_md_frame(&mut cx, &mut links, 0, fr);
    cl.write_staged(&mut cx, &mut links);
    let mut got = vec![0u8; reply.len()];
    client.read_exact(&mut got).expect("read");
    assert_eq!(got, reply);
    run_ticks(&mut cx, &mut cl, &mut links, ticks);
    (cx, cl, id)
}

/// A request/response client under `flow` dispatch costs md no DRAINED frame per reply (kv at
/// c50 sent one per flow and tick: a third of the frames md read): small credit stays here while
/// md owes the flow nothing.
#[test]
fn flow_credit_below_a_sixteenth_is_held_back_while_no_reply_is_owed() {
    let (cx, cl, id) = flow_answer_and_tick(1, b"PONG\n", 3);
    let f = cl.flows.get(id.slot());
    assert_eq!(f.drained, 5, "held back: md is not waiting for it");
    assert_eq!(cx.c[Io::DrainedFrames], 0);
    assert!(!f.in_drained_list && !f.in_credit_watch);
    assert!(!cl.has_drained(), "nothing keeps the loop waking up every tick");
}

#[test]
fn flow_credit_held_back_goes_to_md_once_a_reply_stays_owed_for_a_tick() {
    let (_, cl, id) = flow_answer_and_tick(2, b"PONG\n", 1);
    let f = cl.flows.get(id.slot());
    assert_eq!(f.drained, 5, "the second reply is young: credit held back");
    assert!(f.in_credit_watch && cl.has_drained());
    let (_, cl, id) = flow_answer_and_tick(2, b"PONG\n", 3);
    let f = cl.flows.get(id.slot());
    // No ring in these tests: returning the credit forgets it (nobody to push it to).
    assert_eq!(f.drained, 0, "returned: md may be waiting for room");
    assert!(!f.in_credit_watch && !cl.has_drained());
}

#[test]
fn flow_credit_of_a_sixteenth_joins_the_drained_list() {
    static BIG: [u8; 64 << 10] = [b'x'; 64 << 10];
    let sixteenth = config::Config::default().io_conn.output_credit / 16;
    assert!(sixteenth as usize <= BIG.len(), "the test reply covers a sixteenth of the credit");
    let (_, cl, id) = flow_answer_and_tick(1, &BIG[..sixteenth as usize], 0);
    let f = cl.flows.get(id.slot());
    assert_eq!(f.drained, sixteenth);
    assert!(f.in_drained_list && !f.in_credit_watch, "due with the next frames or tick");
    assert!(cl.has_drained(), "the loop wakes for it within a tick");
}
