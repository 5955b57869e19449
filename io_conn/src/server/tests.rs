//! Unit tests of the client side's handling of md frames: no sockets, no rings. Flows are set
//! up by hand in the state a real one would be in; frames are built as the consumer hands them.

use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollCreateFlags};
use shmq::frame::{self, FlowId, Frame, Hello, Kind};

use super::clients::Lst;
use super::{Clients, Cx, Links};
use crate::counters::{Counters, Io};
use crate::flows::{AfterFlush, ListId, State};

fn setup(mds: usize) -> (Cx, Clients, Links) {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
    let cfg = config::Config::default();
    let mut clients = Clients::new(&cfg, Vec::new(), &epoll).expect("clients");
    // One listener (its socket is not needed): every test flow came from it.
    clients.listeners.push(Lst {
        sock: None,
        service: "echo".into(),
        framing: config::Framing::Line,
        in_epoll: false,
        mds: vec![0, 1],
        request: false,
        depth: 16,
    });
    let cx = Cx { epoll, c: Counters::default(), now: Instant::now(), now_ns: 1 };
    (cx, clients, Links::without_rings(mds))
}

/// An open flow of md `md` (no socket), as accept + bind leave it.
fn open_flow(cx: &mut Cx, cl: &mut Clients, md: u32) -> FlowId {
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
