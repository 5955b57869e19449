//! The handover record: its format, encoding and decoding, and the sealed memfd it travels in.

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

/// `b"SHMSRVHO"`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMSRVHO");
/// Bump on any change to the record format.
pub const RECORD_VERSION: u32 = 2;
/// Largest record a successor reads (a bound for a hostile or broken memfd).
pub const MAX_RECORD: u64 = 1 << 30;
/// fd store names: the record, listeners, client connections.
pub const NAME_RECORD: &str = "shmsrv-rec";
/// fd store name of the listening sockets.
pub const NAME_LISTENER: &str = "shmsrv-l";
/// fd store name of the client connections.
pub const NAME_CLIENT: &str = "shmsrv-c";
/// How long each step of the socket handover waits for the other side.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

const HEADER: usize = 40;
const ADDR: usize = 19;

/// A listening socket in the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerRecord {
    /// Its inode (matches the descriptor).
    pub inode: u64,
    /// Its local address (matches a config listener).
    pub addr: SocketAddr,
}

/// A client connection in the record: what the successor needs to serve it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// Its slot in the leaving io_conn (logging; unique in a record).
    pub slot: u32,
    /// Its generation there.
    pub generation: u32,
    /// The socket's inode.
    pub inode: u64,
    /// Index into [`Record::listeners`].
    pub listener: u32,
    /// `request` dispatch (else `flow`).
    pub request: bool,
    /// The socket's peer address (the successor checks the socket against it).
    pub peer: SocketAddr,
    /// The client address a PROXY header carried (a `proxy_protocol` listener): md gets it in
    /// the new OPEN instead of `peer`, which is then the balancer's. `None`: `peer` is the client.
    pub client: Option<SocketAddr>,
    /// Bytes read from the client and not yet sent to md: an incomplete message.
    pub input: Vec<u8>,
    /// Reply bytes not yet written to the client.
    pub output: Vec<u8>,
}

/// Everything the leaving io_conn hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The leaving io_conn.
    pub writer_pid: u32,
    /// Its listening sockets.
    pub listeners: Vec<ListenerRecord>,
    /// Its client connections.
    pub flows: Vec<FlowRecord>,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than its fields say.
    Truncated,
    /// Not a record.
    BadMagic,
    /// Written by another record format.
    Version(u32),
    /// The stored length is not the real one.
    Length {
        /// The header says.
        stored: u64,
        /// The bytes are.
        real: u64,
    },
    /// The checksum does not match.
    Checksum,
    /// A field holds an impossible value.
    Invalid(&'static str),
    /// The memfd is not sealed against writes.
    NotSealed,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated"),
            Self::BadMagic => f.write_str("not a handover record"),
            Self::Version(v) => write!(f, "record format {v}, this io_conn reads {RECORD_VERSION}"),
            Self::Length { stored, real } => write!(f, "length {stored} stored, {real} real"),
            Self::Checksum => f.write_str("checksum mismatch"),
            Self::Invalid(what) => write!(f, "invalid {what}"),
            Self::NotSealed => f.write_str("the memfd is not sealed"),
        }
    }
}

impl std::error::Error for RecordError {}

/// FNV-1a, 64 bits: a checksum against corruption and truncation, not an authenticator (the
/// memfd's seals and the sockets' provenance are what make the record trustworthy).
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let mut ip = [0u8; 16];
    match a.ip() {
        IpAddr::V4(v4) => {
            out.push(4);
            ip[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            ip = v6.octets();
        }
    }
    out.extend_from_slice(&ip);
    out.extend_from_slice(&a.port().to_le_bytes());
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.b.len() < n {
            return Err(RecordError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn addr(&mut self) -> Result<SocketAddr, RecordError> {
        let family = self.u8()?;
        let ip: [u8; 16] = self.take(16)?.try_into().expect("16 bytes");
        let port = self.u16()?;
        let ip = match family {
            4 => IpAddr::from([ip[0], ip[1], ip[2], ip[3]]),
            6 => IpAddr::from(ip),
            _ => return Err(RecordError::Invalid("address family")),
        };
        Ok(SocketAddr::new(ip, port))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, RecordError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

impl Record {
    /// The bytes of the record, checksum included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER
                + 8
                + self.listeners.len() * (8 + ADDR)
                + self
                    .flows
                    .iter()
                    .map(|f| 30 + 2 * ADDR + f.input.len() + f.output.len())
                    .sum::<usize>(),
        );
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&RECORD_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // total length, patched below
        out.extend_from_slice(&self.writer_pid.to_le_bytes());
        out.extend_from_slice(&(self.listeners.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.flows.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for l in &self.listeners {
            out.extend_from_slice(&l.inode.to_le_bytes());
            put_addr(&mut out, l.addr);
        }
        for f in &self.flows {
            out.extend_from_slice(&f.slot.to_le_bytes());
            out.extend_from_slice(&f.generation.to_le_bytes());
            out.extend_from_slice(&f.inode.to_le_bytes());
            out.extend_from_slice(&f.listener.to_le_bytes());
            out.push(u8::from(f.request));
            put_addr(&mut out, f.peer);
            match f.client {
                Some(c) => {
                    out.push(1);
                    put_addr(&mut out, c);
                }
                None => out.push(0),
            }
            out.extend_from_slice(&(f.input.len() as u32).to_le_bytes());
            out.extend_from_slice(&f.input);
            out.extend_from_slice(&(f.output.len() as u32).to_le_bytes());
            out.extend_from_slice(&f.output);
        }
        let total = (out.len() + 8) as u64;
        out[16..24].copy_from_slice(&total.to_le_bytes());
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Parses and checks a record: magic, version, length, checksum, then every field (counts
    /// bounded by the bytes present, listener indexes in range, address families, unique
    /// inodes and slots). Any defect refuses the whole record.
    pub fn decode(b: &[u8]) -> Result<Record, RecordError> {
        if b.len() < HEADER + 8 {
            return Err(RecordError::Truncated);
        }
        let mut c = Cursor { b };
        if c.u64()? != MAGIC {
            return Err(RecordError::BadMagic);
        }
        let version = c.u32()?;
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        if c.u32()? != 0 {
            return Err(RecordError::Invalid("flags"));
        }
        let total = c.u64()?;
        if total != b.len() as u64 {
            return Err(RecordError::Length { stored: total, real: b.len() as u64 });
        }
        let (body, sum) = b.split_at(b.len() - 8);
        if fnv1a(body) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
            return Err(RecordError::Checksum);
        }
        let mut c = Cursor { b: &body[24..] };
        let writer_pid = c.u32()?;
        let nl = c.u32()? as usize;
        let nf = c.u32()? as usize;
        c.u32()?;
        if nl > body.len() / (8 + ADDR) || nf > body.len() / (30 + ADDR) {
            return Err(RecordError::Invalid("counts"));
        }
        let mut inodes = std::collections::HashSet::with_capacity(nl + nf);
        let mut listeners = Vec::with_capacity(nl);
        for _ in 0..nl {
            let inode = c.u64()?;
            let addr = c.addr()?;
            if !inodes.insert(inode) {
                return Err(RecordError::Invalid("duplicate inode"));
            }
            listeners.push(ListenerRecord { inode, addr });
        }
        let mut slots = std::collections::HashSet::with_capacity(nf);
        let mut flows = Vec::with_capacity(nf);
        for _ in 0..nf {
            let slot = c.u32()?;
            let generation = c.u32()?;
            let inode = c.u64()?;
            let listener = c.u32()?;
            let request = match c.u8()? {
                0 => false,
                1 => true,
                _ => return Err(RecordError::Invalid("dispatch")),
            };
            let peer = c.addr()?;
            let client = match c.u8()? {
                0 => None,
                1 => Some(c.addr()?),
                _ => return Err(RecordError::Invalid("client flag")),
            };
            let input = c.bytes()?;
            let output = c.bytes()?;
            if listener as usize >= listeners.len() {
                return Err(RecordError::Invalid("listener index"));
            }
            if !inodes.insert(inode) || !slots.insert(slot) {
                return Err(RecordError::Invalid("duplicate flow"));
            }
            flows.push(FlowRecord {
                slot,
                generation,
                inode,
                listener,
                request,
                peer,
                client,
                input,
                output,
            });
        }
        if !c.b.is_empty() {
            return Err(RecordError::Invalid("trailing bytes"));
        }
        Ok(Record { writer_pid, listeners, flows })
    }
}

/// The record's bytes in a memfd, sealed against any change.
pub fn seal(bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = memfd_create(c"shmsrv-handover", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)?;
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_SEAL;
    fcntl(f.as_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(OwnedFd::from(f))
}

/// Reads a record from a memfd: it must be sealed against writes, growing and shrinking (so
/// what was checked is what stays), at most [`MAX_RECORD`] bytes, and decode.
pub fn unseal(fd: OwnedFd) -> Result<Record, Box<dyn std::error::Error>> {
    let seals = fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS).map_err(io::Error::from)?;
    let need = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK;
    if !SealFlag::from_bits_truncate(seals).contains(need) {
        return Err(RecordError::NotSealed.into());
    }
    let f = std::fs::File::from(fd);
    let len = f.metadata()?.len();
    if len > MAX_RECORD {
        return Err(RecordError::Invalid("size").into());
    }
    let mut b = Vec::with_capacity(len as usize);
    // pread from 0: the writer left the offset at the end (a memfd shares its file offset).
    use std::os::unix::fs::FileExt;
    b.resize(len as usize, 0);
    f.read_exact_at(&mut b, 0)?;
    Ok(Record::decode(&b)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            writer_pid: 42,
            listeners: vec![
                ListenerRecord { inode: 1, addr: "127.0.0.1:4680".parse().unwrap() },
                ListenerRecord { inode: 2, addr: "[::1]:8090".parse().unwrap() },
            ],
            flows: (0..3)
                .map(|i| FlowRecord {
                    slot: i,
                    generation: 7 + i,
                    inode: 100 + u64::from(i),
                    listener: i % 2,
                    request: i == 1,
                    peer: format!("127.0.0.{}:{}", i + 1, 5000 + i).parse().unwrap(),
                    // One flow behind a PROXY balancer: the client it named.
                    client: (i == 2).then(|| "[2001:db8::7]:443".parse().unwrap()),
                    input: vec![b'P'; i as usize],
                    output: vec![b'x'; 2 * i as usize],
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let empty = Record { writer_pid: 1, listeners: vec![], flows: vec![] };
        assert_eq!(Record::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(Record::decode(&b[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x01;
            assert!(Record::decode(&c).is_err(), "byte {i} flipped");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(Record::decode(&longer).is_err());
    }

    /// A record whose checksum is right but whose fields are not (a bug in a writer, or a
    /// forger): refused by the field checks, never misread.
    #[test]
    fn consistent_checksum_but_bad_fields_is_refused() {
        let reseal = |mut b: Vec<u8>| {
            let n = b.len() - 8;
            let sum = fnv1a(&b[..n]);
            b[n..].copy_from_slice(&sum.to_le_bytes());
            b
        };
        let mut r = sample();
        r.flows[0].listener = 9;
        assert_eq!(Record::decode(&r.encode()), Err(RecordError::Invalid("listener index")));
        let mut r = sample();
        r.flows[1].inode = r.flows[0].inode;
        assert!(Record::decode(&r.encode()).is_err(), "duplicate inode");
        let mut b = sample().encode();
        b[8] = 1; // version: format 1 had no client address
        assert_eq!(Record::decode(&reseal(b)), Err(RecordError::Version(1)));
        let mut b = sample().encode();
        // The first flow's client flag: after the header, two listeners and the flow's fixed
        // fields and peer.
        let at = HEADER + 2 * (8 + ADDR) + 21 + ADDR;
        assert_eq!(b[at], 0, "sample's first flow has no client");
        b[at] = 2;
        assert_eq!(Record::decode(&reseal(b)), Err(RecordError::Invalid("client flag")));
        let mut b = sample().encode();
        b[28] = 0xff; // listener count far beyond the bytes
        assert!(Record::decode(&reseal(b)).is_err());
    }

    #[test]
    fn sealed_memfd_round_trip_and_unsealed_is_refused() {
        let r = sample();
        let fd = seal(&r.encode()).unwrap();
        // Sealed: writing fails.
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        assert!(f.write_all(b"x").is_err(), "sealed against writes");
        assert_eq!(unseal(fd).unwrap(), r);
        // An ordinary memfd with the same bytes is refused: it could change under the reader.
        let plain = memfd_create(c"plain", MFdFlags::MFD_CLOEXEC).unwrap();
        std::fs::File::from(plain.try_clone().unwrap()).write_all(&r.encode()).unwrap();
        assert!(unseal(plain).is_err());
    }
}
