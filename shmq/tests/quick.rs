use std::sync::Arc;
use shmq::*;
#[test]
fn quick_two_threads() {
    let mem = Arc::new(HeapMemory::new_ring(4096, 1000, Direction::ToMd));
    let mut tx = Producer::attach(mem.clone(), 0, None).unwrap();
    let mut rx = Consumer::attach(mem, 0).unwrap();
    const N: u64 = 2_000_000;
    let t = std::thread::spawn(move || {
        let mut i = 0u64;
        let mut buf = [0u8; 1000];
        while i < N {
            let len = (i * 7919 % 300) as usize;
            for (k, b) in buf[..len].iter_mut().enumerate() { *b = (i as u8).wrapping_add(k as u8); }
            match tx.try_push(FlowId(i), Kind::Data, 0, &buf[..len]) {
                Ok(()) => { i += 1; if i % 7 == 0 { tx.flush(); } }
                Err(PushError::Full) => std::hint::spin_loop(),
                Err(e) => panic!("{e}"),
            }
        }
        tx.flush();
    });
    let mut next = 0u64;
    while next < N {
        rx.drain(16, |f| {
            assert_eq!(f.flowid.0, next);
            let len = (next * 7919 % 300) as usize;
            assert_eq!(f.payload.len(), len);
            for (k, b) in f.payload.iter().enumerate() { assert_eq!(*b, (next as u8).wrapping_add(k as u8)); }
            next += 1;
        }).unwrap();
    }
    t.join().unwrap();
}
