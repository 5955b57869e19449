//! The frame protocol version io_conn and md exchange in the pair (`RingHeader::proto_io` /
//! `proto_md`): a mismatch is refused by name before md claims anything, never misparsed.

mod util;

use std::sync::atomic::Ordering;

use shmq::layout::PROTOCOL_VERSION;
use shmq::pair::PairError;
use shmq::region::Segment;
use shmq::ring;
use util::*;

#[test]
fn md_refuses_an_io_conn_of_another_protocol_and_claims_nothing() {
    for backend in BACKENDS {
        let cfg = pair_cfg("proto", backend);
        let _g = Cleanup::pair(&cfg, 1);
        let io = cfg.create(0, 7).unwrap();
        let (tx, _rx) = io.split();
        let seg = Segment::attach(backend, &cfg.in_segment(0), true).unwrap();
        let h = ring::checked_header(&seg, 0).unwrap();
        assert_eq!(h.proto_io.load(Ordering::Relaxed), PROTOCOL_VERSION, "io_conn wrote its own");
        assert_eq!(tx.md_protocol(), 0, "no md yet");

        // An io_conn of another release (a fake version in the segment), and one from before
        // versions (0: the word was padding).
        for fake in [PROTOCOL_VERSION + 98, 0] {
            h.proto_io.store(fake, Ordering::Relaxed);
            match cfg.attach(0) {
                Err(e @ PairError::ProtocolMismatch { .. }) => {
                    let PairError::ProtocolMismatch { instance, io, md } = e else {
                        unreachable!()
                    };
                    assert_eq!((instance, io, md), (0, fake, PROTOCOL_VERSION), "{backend}");
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&format!("version {fake}"))
                            && msg.contains(&format!("version {PROTOCOL_VERSION}")),
                        "names both versions: {msg}"
                    );
                }
                other => panic!("{backend}: attach across protocols: {other:?}"),
            }
            assert_eq!(tx.holder(), None, "{backend}: a refused md claims nothing");
            assert_eq!(tx.md_protocol(), 0, "{backend}: and writes nothing");
        }

        // Same protocol: attaches, and io_conn reads md's version from the pair.
        h.proto_io.store(PROTOCOL_VERSION, Ordering::Relaxed);
        let md = cfg.attach(0).expect("same protocol attaches");
        assert_eq!(tx.holder().map(|p| p.pid), Some(std::process::id()));
        assert_eq!(tx.md_protocol(), PROTOCOL_VERSION);
        drop(md);
    }
}

#[test]
fn a_reset_keeps_io_conns_version_and_a_live_holders() {
    for backend in BACKENDS {
        let cfg = pair_cfg("proto-reset", backend);
        let _g = Cleanup::pair(&cfg, 1);
        let io = cfg.create(0, 9).unwrap();
        let _md = cfg.attach(0).unwrap();
        let io = cfg.reset(io).unwrap();
        let (tx, _rx) = io.split();
        let seg = Segment::attach(backend, &cfg.in_segment(0), true).unwrap();
        let h = ring::checked_header(&seg, 0).unwrap();
        assert_eq!(h.proto_io.load(Ordering::Relaxed), PROTOCOL_VERSION);
        // The holder (this process) is alive: its claim and its version stay.
        assert_eq!(tx.md_protocol(), PROTOCOL_VERSION, "{backend}");
    }
}
