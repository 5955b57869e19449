//! Single-producer single-consumer frame queues in shared memory, and every layout shmsrv's
//! processes share.
//!
//! io_conn creates one queue pair per md instance (a ring each way plus a FIFO doorbell each);
//! md attaches. Frames are variable-length ([`frame`]) and built or read in place. When a ring is
//! empty its consumer sleeps on a FIFO, and the producer rings it only if the consumer said it is
//! asleep ([`ring`], [`doorbell`]).
//!
//! # Layout
//!
//! [`layout::RingHeader`] and [`frame::FrameHeader`] are shared with other processes and are
//! therefore ABI: any change bumps [`layout::LAYOUT_VERSION`]. `docs/ARCHITECTURE.md` says which
//! process creates, attaches to and removes each segment.
//!
//! # Modules
//!
//! | module | what |
//! |---|---|
//! | [`sync`] | atomics facade (std or loom) |
//! | [`layout`] | the ring header ABI |
//! | [`frame`] | the frame header, kinds and payload encodings |
//! | [`ring`] | producer and consumer over any [`ring::Memory`] |
//! | [`doorbell`] | the FIFO wake-up |
#![deny(missing_docs)]

// The kv cache locks with a robust pthread mutex (the kernel's futex), which loom cannot model;
// its crash recovery is tested with real processes (shmq/tests/cache.rs).
#[cfg(not(loom))]
pub mod cache;
pub mod doorbell;
pub mod fdpass;
pub mod frame;
pub mod layout;
pub mod ring;
pub mod sync;

pub use doorbell::Doorbell;
pub use frame::{FlowId, Frame, Kind};
pub use layout::Direction;
pub use ring::{Consumer, HeapMemory, Memory, Producer, PushError, RingError};
pub mod pair;
pub mod region;
pub mod stats;
pub mod sys;
