//! The frame format: a 24-byte header (commit stamp first), then the payload, padded to 8 bytes.
//!
//! Every message in a ring is one frame. Both processes build and read frames through this module
//! only, so the format is defined once.
//!
//! ```text
//!  0            8        12     14      16               24                 24+len   align8
//!  | stamp u64  | len u32 | kind | flags | flowid u64     | payload (len B)  | pad    |
//! ```
//!
//! * `stamp` is the frame's **commit word**: its monotonic byte position plus one (never 0). The
//!   producer stores it last, with Release, after the rest of the header and the payload; the
//!   consumer polls the stamp at its own position (Acquire) and takes the frame only when it is
//!   exactly `position + 1`. One cache line carries both "ready" and the data (issue 15, part 2;
//!   `shmq::ring`, "Commit stamps").
//! * `len` is the **payload** length in bytes (the header is not included).
//! * Frames start at 8-byte aligned positions. 8, not 16: the header's widest field is a `u64`,
//!   so 8 keeps every field naturally aligned, and 16 would waste up to 8 more bytes on the small
//!   line messages (`PING\n`) that dominate. The cost is more wrap cases, below.
//! * **Wrap rule.** A frame never splits across the end of the data area. At a position whose
//!   remainder to the end (`rem`) is smaller than a header (`rem` 8 or 16), both sides skip to
//!   the start implicitly, without any record. Otherwise, if the frame does not fit in `rem`, the
//!   producer writes a (stamped) [`Kind::Pad`] record whose `len` is exactly `rem - 24`, and the
//!   consumer skips it.
//! * `flowid` names the client connection: the low 32 bits a slot index, the high 32 bits the
//!   slot's generation ([`FlowId`]), so a reply for a closed connection never reaches a new one.
//!
//! # Payloads by kind
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | `OPEN` | io → md | [`OpenInfo`]: credit u64, family u16, port u16, service len u16, pad, 16-byte address, service name |
//! | `DATA` | both | the message bytes |
//! | `EOF`, `CLOSE`, `PAUSE`, `RESUME`, `LEAVE` | see [`Kind`] | empty |
//! | `DRAINED` | io → md | bytes flushed to the client, u64 LE |
//! | `HELLO` | md → io | [`Hello`]: pid u32, instance u32, start time u64 |
//! | `BROADCAST` | md → io | service len u16, service name, then the bytes to send (flowid 0) |
//!
//! # Flags
//!
//! `flags` is per kind ([`flags`]); a flag unknown to a reader is ignored.
//!
//! * `OPEN` with [`flags::OPEN_MARK_ENDS`]: io_conn dispatches this flow's requests one by one
//!   (possibly to several md instances) and needs to know where each request's reply ends. md
//!   then sets [`flags::DATA_END`] on the DATA frame whose last byte completes a request, and
//!   sends an empty DATA frame with it when a request completes with no output since the last
//!   frame. Without the flag (flow dispatch) md's output is a plain byte stream, as before.
//! * `OPEN` with [`flags::OPEN_FLOW_ENDS`] (flow dispatch, since protocol version 1): the reply
//!   ends are marked the same way, but the flow is bound to this md for life; io_conn uses the
//!   marks only to know when no reply is owed (a handover waits for that).
//! * md's `DATA` with [`flags::DATA_END`] | [`flags::DATA_CLOSE`]: the last reply of a flow the
//!   service closed; `CLOSE` follows.
//!   ends are marked, but the flow is bound to this md for life; io_conn uses the marks only to
//!   know when no reply is owed (a handover waits for that). So md may put several replies into
//!   one frame (protocol version 2): the frame's flags say how many replies it completes
//!   ([`flags::ends_flags`], [`flags::data_ends`]), and its bytes need not end on a reply's end.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::layout::Direction;

/// Bytes in a frame header (the stamp included).
pub const HEADER_SIZE: usize = 24;
/// Bytes of the stamp, the first word of every header.
pub const STAMP_SIZE: usize = 8;
/// Frames start at multiples of this.
pub const ALIGN: usize = 8;
/// Smallest data area a ring may have.
pub const MIN_CAPACITY: u64 = 256;

/// Bytes a frame with `payload` bytes occupies in the ring, header and padding included.
#[inline]
pub const fn frame_size(payload: usize) -> usize {
    (HEADER_SIZE + payload + (ALIGN - 1)) & !(ALIGN - 1)
}

/// Per-kind frame flags (the header's `flags` field). See the module docs, "Flags".
pub mod flags {
    /// On `OPEN`: md marks the end of each request's reply with [`DATA_END`].
    pub const OPEN_MARK_ENDS: u16 = 1;
    /// On `OPEN` (flow dispatch): md marks reply ends as with [`OPEN_MARK_ENDS`], but the flow
    /// stays bound to this md for life (a leaving md CLOSEs it once done, as any flow-dispatched
    /// one). io_conn counts the replies owed, which a handover waits for. Protocol version 1.
    pub const OPEN_FLOW_ENDS: u16 = 2;
    /// On md's `DATA`: this frame's last byte ends the reply to one request (an empty frame: a
    /// request that ended with no output since the previous frame). On a flow-dispatched flow
    /// (`OPEN_FLOW_ENDS`) the frame may complete several replies: see [`data_ends`].
    pub const DATA_END: u16 = 1;
    /// On md's `DATA` with [`DATA_END`]: the reply this frame ends is the flow's last (the
    /// service closed the flow, e.g. `QUIT`); md sends `CLOSE` after it. Under `request` dispatch
    /// io_conn drops the connection's requests behind this one (routed to other md instances
    /// too) and reads no more, so nothing after it is answered; under flow dispatch `CLOSE`
    /// alone says the same and the flag changes nothing. An io_conn that does not know it
    /// ignores it and acts on `CLOSE` only.
    pub const DATA_CLOSE: u16 = 2;
    /// Bits of a flow-dispatched `DATA` frame's flags that hold how many replies it completes,
    /// minus one (with [`DATA_END`] set): see [`ends_flags`] and [`data_ends`].
    pub const ENDS_SHIFT: u16 = 8;
    /// The most replies one flow-dispatched `DATA` frame completes.
    pub const MAX_ENDS: usize = 256;

    /// The flags of a flow-dispatched `DATA` frame that completes `k` replies (`k` ≤
    /// [`MAX_ENDS`]; 0: none). md coalesces the replies of a batch of requests into one frame
    /// (since protocol version 2); io_conn only counts them (`data_ends`), so under flow
    /// dispatch a frame's end marks need not fall on its last byte. Request-dispatched flows
    /// (`OPEN_MARK_ENDS`) keep one reply end per frame, on its last byte: io_conn routes by it.
    pub const fn ends_flags(k: usize) -> u16 {
        debug_assert!(k <= MAX_ENDS);
        if k == 0 { 0 } else { DATA_END | (((k - 1) as u16) << ENDS_SHIFT) }
    }

    /// How many replies a flow-dispatched `DATA` frame with `flags` completes (0 without
    /// [`DATA_END`]).
    pub const fn data_ends(flags: u16) -> u32 {
        if flags & DATA_END == 0 { 0 } else { 1 + (flags >> ENDS_SHIFT) as u32 }
    }
}

/// What a frame means. `#[repr(u16)]`: the value is stored in the frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    /// Filler to the end of the data area, stamped like a frame (never returned to callers).
    Pad = 1,
    /// io → md: a new flow. Payload: [`OpenInfo`].
    Open = 2,
    /// Both ways: one message (io → md: one framed request; md → io: bytes to send).
    Data = 3,
    /// io → md: the client half-closed; answer what was read, then close.
    Eof = 4,
    /// io → md: the client is gone. md → io: close the flow after flushing what was sent.
    Close = 5,
    /// io → md: output bytes flushed to the client; returns output credit. Payload: u64 LE.
    Drained = 6,
    /// md → io: stop reading this flow's socket.
    Pause = 7,
    /// md → io: resume reading this flow's socket.
    Resume = 8,
    /// md → io: send the payload to every flow of a service. Payload: see module docs.
    Broadcast = 9,
    /// md → io: the md instance attached; first frame after every attach. Payload: [`Hello`].
    Hello = 10,
    /// md → io: the md instance is leaving (SIGTERM): route no new flow or request to it. It
    /// finishes what it has, hands the replies over and exits. io → md: the acknowledgement,
    /// pushed when io_conn stopped routing there (everything routed before it is ahead of it in
    /// the ring). Empty, flowid 0.
    Leave = 11,
}

impl Kind {
    /// Decodes a header value; `None` for unknown values.
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Pad,
            2 => Self::Open,
            3 => Self::Data,
            4 => Self::Eof,
            5 => Self::Close,
            6 => Self::Drained,
            7 => Self::Pause,
            8 => Self::Resume,
            9 => Self::Broadcast,
            10 => Self::Hello,
            11 => Self::Leave,
            _ => return None,
        })
    }

    /// Whether a consumer of a ring going `dir` accepts this kind (padding is always allowed).
    pub const fn allowed(self, dir: Direction) -> bool {
        match dir {
            Direction::ToMd => matches!(
                self,
                Self::Pad
                    | Self::Open
                    | Self::Data
                    | Self::Eof
                    | Self::Close
                    | Self::Drained
                    | Self::Leave
            ),
            Direction::ToIo => matches!(
                self,
                Self::Pad
                    | Self::Data
                    | Self::Close
                    | Self::Pause
                    | Self::Resume
                    | Self::Broadcast
                    | Self::Hello
                    | Self::Leave
            ),
        }
    }

    /// Exact payload length this kind requires, if fixed.
    pub const fn fixed_len(self) -> Option<usize> {
        match self {
            Self::Eof | Self::Close | Self::Pause | Self::Resume | Self::Leave => Some(0),
            Self::Drained => Some(8),
            Self::Hello => Some(Hello::SIZE),
            Self::Pad | Self::Open | Self::Data | Self::Broadcast => None,
        }
    }
}

/// A frame header as stored in the ring (little-endian host; shmsrv runs on one host).
///
/// Documents the ABI; the ring never reads or writes it as one value: the producer writes the
/// [`FrameMeta`] at `STAMP_SIZE` and then stores the stamp atomically, the consumer loads the
/// stamp atomically and then copies the [`FrameMeta`] once.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The commit word: the frame's byte position + 1, stored last (Release).
    pub stamp: u64,
    /// The rest of the header.
    pub meta: FrameMeta,
}

/// The header without its stamp: what the producer writes before the stamp, and what the
/// consumer copies (once, volatile) after it saw the stamp.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// Payload length in bytes.
    pub len: u32,
    /// A [`Kind`] value.
    pub kind: u16,
    /// Per-kind flags (see [`flags`]).
    pub flags: u16,
    /// The flow ([`FlowId`] as u64).
    pub flowid: u64,
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::offset_of;
    assert!(size_of::<FrameHeader>() == HEADER_SIZE);
    assert!(size_of::<FrameMeta>() == HEADER_SIZE - STAMP_SIZE);
    assert!(offset_of!(FrameHeader, stamp) == 0);
    assert!(offset_of!(FrameHeader, meta) == STAMP_SIZE);
    assert!(offset_of!(FrameMeta, len) == 0);
    assert!(offset_of!(FrameMeta, kind) == 4);
    assert!(offset_of!(FrameMeta, flags) == 6);
    assert!(offset_of!(FrameMeta, flowid) == 8);
};

/// A flow identifier: slot index (low 32 bits) and slot generation (high 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FlowId(pub u64);

impl FlowId {
    /// Builds a flow id from a slot index and its generation.
    #[inline]
    pub const fn new(slot: u32, generation: u32) -> Self {
        Self(((generation as u64) << 32) | slot as u64)
    }
    /// The slot index.
    #[inline]
    pub const fn slot(self) -> u32 {
        self.0 as u32
    }
    /// The slot's generation.
    #[inline]
    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// A frame borrowed in place from a ring by [`crate::ring::Consumer::peek`].
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The flow.
    pub flowid: FlowId,
    /// Validated kind (never [`Kind::Pad`]).
    pub kind: Kind,
    /// Flags as sent.
    pub flags: u16,
    /// The payload, in the shared segment.
    pub payload: &'a [u8],
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// Shorter than its fixed part, or than its declared name length.
    Short,
    /// Address family neither 4 nor 6.
    BadFamily(u16),
    /// Service name is not UTF-8.
    BadName,
    /// Service name longer than [`MAX_SERVICE_NAME`].
    NameTooLong(usize),
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short => f.write_str("payload shorter than its layout"),
            Self::BadFamily(x) => write!(f, "unknown address family {x}"),
            Self::BadName => f.write_str("service name is not UTF-8"),
            Self::NameTooLong(n) => write!(f, "service name of {n} bytes (max {MAX_SERVICE_NAME})"),
        }
    }
}

impl std::error::Error for PayloadError {}

/// Longest service name an OPEN or BROADCAST carries.
pub const MAX_SERVICE_NAME: usize = 64;

/// The payload of an `OPEN` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenInfo<'a> {
    /// Output bytes md may have outstanding (sent but not yet `DRAINED`) on this flow.
    pub credit: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The service the flow's listener serves.
    pub service: &'a str,
}

impl<'a> OpenInfo<'a> {
    const FIXED: usize = 32;

    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        Self::FIXED + self.service.len()
    }

    /// Writes the payload into `out` (at least [`Self::encoded_len`] bytes); returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, PayloadError> {
        let n = self.encoded_len();
        if self.service.len() > MAX_SERVICE_NAME {
            return Err(PayloadError::NameTooLong(self.service.len()));
        }
        if out.len() < n {
            return Err(PayloadError::Short);
        }
        let (family, addr): (u16, [u8; 16]) = match self.peer.ip() {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (4, b)
            }
            IpAddr::V6(a) => (6, a.octets()),
        };
        out[0..8].copy_from_slice(&self.credit.to_le_bytes());
        out[8..10].copy_from_slice(&family.to_le_bytes());
        out[10..12].copy_from_slice(&self.peer.port().to_le_bytes());
        out[12..14].copy_from_slice(&(self.service.len() as u16).to_le_bytes());
        out[14..16].fill(0);
        out[16..32].copy_from_slice(&addr);
        out[32..n].copy_from_slice(self.service.as_bytes());
        Ok(n)
    }

    /// Decodes and validates an `OPEN` payload.
    pub fn decode(p: &'a [u8]) -> Result<Self, PayloadError> {
        if p.len() < Self::FIXED {
            return Err(PayloadError::Short);
        }
        let credit = u64::from_le_bytes(p[0..8].try_into().expect("8 bytes"));
        let family = u16::from_le_bytes([p[8], p[9]]);
        let port = u16::from_le_bytes([p[10], p[11]]);
        let name_len = u16::from_le_bytes([p[12], p[13]]) as usize;
        if name_len > MAX_SERVICE_NAME {
            return Err(PayloadError::NameTooLong(name_len));
        }
        if p.len() != Self::FIXED + name_len {
            return Err(PayloadError::Short);
        }
        let a: [u8; 16] = p[16..32].try_into().expect("16 bytes");
        let ip = match family {
            4 => IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            6 => IpAddr::V6(Ipv6Addr::from(a)),
            f => return Err(PayloadError::BadFamily(f)),
        };
        let service = std::str::from_utf8(&p[32..]).map_err(|_| PayloadError::BadName)?;
        Ok(Self { credit, peer: SocketAddr::new(ip, port), service })
    }
}

/// The payload of a `HELLO` frame: who attached as md instance `instance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The md process id.
    pub pid: u32,
    /// The instance number it attached as.
    pub instance: u32,
    /// Its start time in clock ticks since boot (checked against a pidfd's process).
    pub start_time: u64,
}

impl Hello {
    /// Encoded length.
    pub const SIZE: usize = 16;

    /// Encodes the payload.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.pid.to_le_bytes());
        b[4..8].copy_from_slice(&self.instance.to_le_bytes());
        b[8..16].copy_from_slice(&self.start_time.to_le_bytes());
        b
    }

    /// Decodes a `HELLO` payload.
    pub fn decode(p: &[u8]) -> Result<Self, PayloadError> {
        if p.len() != Self::SIZE {
            return Err(PayloadError::Short);
        }
        Ok(Self {
            pid: u32::from_le_bytes(p[0..4].try_into().expect("4 bytes")),
            instance: u32::from_le_bytes(p[4..8].try_into().expect("4 bytes")),
            start_time: u64::from_le_bytes(p[8..16].try_into().expect("8 bytes")),
        })
    }
}

/// Encodes a `DRAINED` payload.
#[inline]
pub fn encode_drained(bytes: u64) -> [u8; 8] {
    bytes.to_le_bytes()
}

/// Decodes a `DRAINED` payload.
#[inline]
pub fn decode_drained(p: &[u8]) -> Result<u64, PayloadError> {
    let b: [u8; 8] = p.try_into().map_err(|_| PayloadError::Short)?;
    Ok(u64::from_le_bytes(b))
}

/// Writes a `BROADCAST` payload prefix (service name) followed by `data` into `out`; returns the
/// length written.
pub fn encode_broadcast(service: &str, data: &[u8], out: &mut [u8]) -> Result<usize, PayloadError> {
    if service.len() > MAX_SERVICE_NAME {
        return Err(PayloadError::NameTooLong(service.len()));
    }
    let n = 2 + service.len() + data.len();
    if out.len() < n {
        return Err(PayloadError::Short);
    }
    out[0..2].copy_from_slice(&(service.len() as u16).to_le_bytes());
    out[2..2 + service.len()].copy_from_slice(service.as_bytes());
    out[2 + service.len()..n].copy_from_slice(data);
    Ok(n)
}

/// Splits a `BROADCAST` payload into (service, data).
pub fn decode_broadcast(p: &[u8]) -> Result<(&str, &[u8]), PayloadError> {
    if p.len() < 2 {
        return Err(PayloadError::Short);
    }
    let n = u16::from_le_bytes([p[0], p[1]]) as usize;
    if n > MAX_SERVICE_NAME {
        return Err(PayloadError::NameTooLong(n));
    }
    if p.len() < 2 + n {
        return Err(PayloadError::Short);
    }
    let name = std::str::from_utf8(&p[2..2 + n]).map_err(|_| PayloadError::BadName)?;
    Ok((name, &p[2 + n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_size_rounds_to_eight() {
        assert_eq!(frame_size(0), 24);
        assert_eq!(frame_size(1), 32);
        assert_eq!(frame_size(8), 32);
        assert_eq!(frame_size(9), 40);
        assert_eq!(frame_size(64), 88);
    }

    #[test]
    fn kinds_round_trip_and_unknown_rejected() {
        for v in 0..=u16::MAX {
            match Kind::from_u16(v) {
                Some(k) => assert_eq!(k as u16, v),
                None => assert!(v == 0 || v > 10),
            }
        }
    }

    #[test]
    fn direction_rules() {
        assert!(Kind::Open.allowed(Direction::ToMd));
        assert!(!Kind::Open.allowed(Direction::ToIo));
        assert!(Kind::Pause.allowed(Direction::ToIo));
        assert!(!Kind::Pause.allowed(Direction::ToMd));
        assert!(Kind::Data.allowed(Direction::ToMd) && Kind::Data.allowed(Direction::ToIo));
    }

    #[test]
    fn flowid_parts() {
        let f = FlowId::new(7, 0xdead_beef);
        assert_eq!(f.slot(), 7);
        assert_eq!(f.generation(), 0xdead_beef);
    }

    #[test]
    fn open_round_trip_v4_v6() {
        for peer in ["127.0.0.1:5555", "[::1]:80"] {
            let info = OpenInfo { credit: 1 << 20, peer: peer.parse().unwrap(), service: "dumb" };
            let mut buf = [0u8; 128];
            let n = info.encode(&mut buf).unwrap();
            assert_eq!(n, info.encoded_len());
            assert_eq!(OpenInfo::decode(&buf[..n]).unwrap(), info);
            assert_eq!(OpenInfo::decode(&buf[..n - 1]), Err(PayloadError::Short));
        }
    }

    #[test]
    fn open_rejects_garbage() {
        let mut buf = [0u8; 40];
        buf[8] = 5; // family 5
        buf[12] = 8; // name length 8
        assert_eq!(OpenInfo::decode(&buf), Err(PayloadError::BadFamily(5)));
        buf[8] = 4;
        buf[32..40].copy_from_slice(&[0xff; 8]);
        assert_eq!(OpenInfo::decode(&buf), Err(PayloadError::BadName));
        buf[12] = 200;
        assert_eq!(OpenInfo::decode(&buf), Err(PayloadError::NameTooLong(200)));
    }

    #[test]
    fn hello_drained_broadcast_round_trip() {
        let h = Hello { pid: 42, instance: 3, start_time: 123456 };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        assert_eq!(decode_drained(&encode_drained(99)).unwrap(), 99);
        assert!(decode_drained(&[0; 7]).is_err());
        let mut buf = [0u8; 64];
        let n = encode_broadcast("dumb", b"hi\n", &mut buf).unwrap();
        assert_eq!(decode_broadcast(&buf[..n]).unwrap(), ("dumb", &b"hi\n"[..]));
        assert_eq!(decode_broadcast(&[9, 0, b'a']), Err(PayloadError::Short));
    }
}
