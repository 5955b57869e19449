//! The PROXY protocol header (HAProxy's, versions 1 and 2): a pure parser over the first bytes a
//! load balancer sends on a connection, before any byte of the client's own.
//!
//! Used by the event loop for connections accepted on a listener with `proxy_protocol = "v1"` or
//! `"v2"` from an address in its `proxy_from` (`server::accept`): the flow reads into a buffer
//! until [`parse`] says [`Parse::Done`], drops the `consumed` header bytes, puts the carried
//! source address in place of the socket's peer (what OPEN tells md, what `/whoami` answers, what
//! `max_connections_per_ip` counts) and frames the bytes after the header as usual. No state
//! between calls: the caller passes everything read so far each time. The fuzz crate includes
//! this file by path (target `proxy`), so it depends on `std` only.
//!
//! # What is accepted
//!
//! * **v2** (binary): the 12-byte signature, version 2, command `LOCAL` (0) or `PROXY` (1),
//!   family `UNSPEC`/`INET`/`INET6`/`UNIX` with transport `UNSPEC`/`STREAM`/`DGRAM` (any other
//!   nibble is invalid), then `len` bytes: the addresses, then TLVs, which are walked (each one's
//!   3-byte head and value must lie inside `len`, exactly tiling it) and otherwise ignored.
//!   `PROXY` over `INET`/`INET6` must say `STREAM` and give the addresses; `LOCAL` (a
//!   balancer's health check), and `PROXY` with family `UNSPEC` or `UNIX`, carry no IP address:
//!   [`Parse::Done`] with `addrs: None`, and the connection keeps its real peer. The whole
//!   header is at most [`V2_MAX`] bytes (16 + `len`); the spec allows 16 + 65 535, but no
//!   balancer sends that much (HAProxy's largest, with the SSL, authority, unique-id and netns
//!   TLVs, stays well under 1 KiB), and a bound is what keeps a trusted-but-buggy peer from
//!   making io_conn buffer 64 KiB per connection before a single message.
//! * **v1** (text): `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, `TCP6` likewise, or
//!   `PROXY UNKNOWN[ anything]\r\n` (no address, like `LOCAL`); single spaces, decimal ports
//!   without sign or leading zero, printable ASCII only, at most [`V1_MAX`] = 107 bytes with the
//!   CRLF (the spec's bound).
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) come back as IPv4.
//!
//! # Verdicts do not depend on how the bytes arrived
//!
//! Every check looks at bytes in stream order and is made as soon as its bytes are present, so a
//! prefix of a stream is either [`Parse::Incomplete`] or has the same verdict as the whole
//! stream (the `proxy` fuzz target asserts this). `Incomplete` is only returned while fewer than
//! [`V2_MAX`] (v2) or [`V1_MAX`] (v1) bytes are present: the caller's buffer is bounded.
//!
//! # Example
//!
//! ```
//! use io_conn::proxy::{Parse, Version, parse};
//!
//! let h = b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 80\r\nGET / HTTP/1.1\r\n";
//! let Parse::Done { consumed, addrs: Some(a) } = parse(Version::V1, h) else { panic!() };
//! assert_eq!(consumed, 42);
//! assert_eq!(a.src.to_string(), "203.0.113.7:5555");
//! assert_eq!(parse(Version::V1, &h[..10]), Parse::Incomplete);
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature: the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version/command, family/transport, length.
pub const V2_FIXED: usize = 16;
/// The largest v2 header accepted (fixed part + `len`); see the module docs for why.
pub const V2_MAX: usize = 4096;
/// The largest v1 header, CRLF included (the spec's bound).
pub const V1_MAX: usize = 107;

/// Which version a listener expects (`proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Text, `PROXY TCP4 ...\r\n`.
    V1,
    /// Binary, the 12-byte signature first.
    V2,
}

/// The addresses a header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// The client, as the balancer saw it: what replaces the connection's peer.
    pub src: SocketAddr,
    /// The address the client connected to (the balancer's front end).
    pub dst: SocketAddr,
}

/// What [`parse`] found at the front of a connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// A valid header may still come: read more (fewer than the version's maximum bytes so far).
    Incomplete,
    /// A valid header of `consumed` bytes; the client's own bytes start after it.
    Done {
        /// Header bytes, `<= input.len()`.
        consumed: usize,
        /// The carried addresses; `None` for `LOCAL`, `UNSPEC`/`UNIX` families and v1
        /// `UNKNOWN`: the connection keeps its real peer.
        addrs: Option<Addrs>,
    },
    /// Not a valid header of the expected version: close the connection.
    Invalid(&'static str),
}

/// Parses the header at the front of `buf` (everything read so far). Pure; see the module docs.
pub fn parse(version: Version, buf: &[u8]) -> Parse {
    match version {
        Version::V1 => parse_v1(buf),
        Version::V2 => parse_v2(buf),
    }
}

fn parse_v2(buf: &[u8]) -> Parse {
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] != V2_SIGNATURE[..sig] {
        return Parse::Invalid("not a PROXY v2 signature");
    }
    let Some(&ver_cmd) = buf.get(12) else { return Parse::Incomplete };
    if ver_cmd >> 4 != 2 {
        return Parse::Invalid("PROXY v2: version is not 2");
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Parse::Invalid("PROXY v2: unknown command"),
    };
    let Some(&fam) = buf.get(13) else { return Parse::Incomplete };
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > 3 || transport > 2 {
        return Parse::Invalid("PROXY v2: unknown address family or transport");
    }
    let Some(len) = buf.get(14..16) else { return Parse::Incomplete };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let total = V2_FIXED + len;
    if total > V2_MAX {
        return Parse::Invalid("PROXY v2: header longer than 4096 bytes");
    }
    let Some(body) = buf.get(V2_FIXED..total) else { return Parse::Incomplete };
    // The address block's size by family; UNSPEC has none.
    let addr_len = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if body.len() < addr_len {
        return Parse::Invalid("PROXY v2: length shorter than the addresses");
    }
    if let Err(why) = walk_tlvs(&body[addr_len..]) {
        return Parse::Invalid(why);
    }
    let done = |addrs| Parse::Done { consumed: total, addrs };
    // LOCAL: the balancer speaking for itself (health checks); the address block, if any, is
    // ignored as the spec says. UNSPEC and UNIX carry no IP address either.
    if local || family == 0 || family == 3 {
        return done(None);
    }
    if transport != 1 {
        return Parse::Invalid("PROXY v2: not a stream (TCP) connection");
    }
    let a = &body[..addr_len];
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    let addrs = if family == 1 {
        let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
        Addrs { src: SocketAddr::new(ip(0), port(8)), dst: SocketAddr::new(ip(4), port(10)) }
    } else {
        let ip = |i: usize| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[i..i + 16]);
            canonical(IpAddr::V6(Ipv6Addr::from(o)))
        };
        Addrs { src: SocketAddr::new(ip(0), port(32)), dst: SocketAddr::new(ip(16), port(34)) }
    };
    done(Some(addrs))
}

/// Checks that `tlvs` is a sequence of whole TLVs (type, 2-byte big-endian length, value).
fn walk_tlvs(mut tlvs: &[u8]) -> Result<(), &'static str> {
    while !tlvs.is_empty() {
        let Some(head) = tlvs.get(..3) else { return Err("PROXY v2: truncated TLV") };
        let vlen = usize::from(u16::from_be_bytes([head[1], head[2]]));
        let Some(rest) = tlvs.get(3 + vlen..) else {
            return Err("PROXY v2: TLV longer than the header");
        };
        tlvs = rest;
    }
    Ok(())
}

fn parse_v1(buf: &[u8]) -> Parse {
    const PREFIX: &[u8] = b"PROXY ";
    let pre = buf.len().min(PREFIX.len());
    if buf[..pre] != PREFIX[..pre] {
        return Parse::Invalid("not a PROXY v1 header");
    }
    // Find the CRLF, checking every byte before it in order.
    let mut end = None;
    for (i, &b) in buf.iter().enumerate().take(V1_MAX) {
        if b == b'\r' {
            match buf.get(i + 1) {
                None if i + 2 <= V1_MAX => return Parse::Incomplete,
                Some(b'\n') if i + 2 <= V1_MAX => {
                    end = Some(i);
                    break;
                }
                _ if i + 2 > V1_MAX => return Parse::Invalid("PROXY v1: longer than 107 bytes"),
                _ => return Parse::Invalid("PROXY v1: CR not followed by LF"),
            }
        }
        if !(0x20..0x7f).contains(&b) {
            return Parse::Invalid("PROXY v1: a byte that is not printable ASCII");
        }
    }
    let Some(end) = end else {
        return if buf.len() >= V1_MAX {
            Parse::Invalid("PROXY v1: longer than 107 bytes")
        } else {
            Parse::Incomplete
        };
    };
    let consumed = end + 2;
    let line = &buf[PREFIX.len().min(end)..end];
    match v1_fields(line) {
        Ok(addrs) => Parse::Done { consumed, addrs },
        Err(why) => Parse::Invalid(why),
    }
}

/// The fields after `PROXY ` (without the CRLF).
fn v1_fields(line: &[u8]) -> Result<Option<Addrs>, &'static str> {
    // Printable ASCII was checked: this cannot fail, but a fallback keeps it panic-free.
    let line = std::str::from_utf8(line).map_err(|_| "PROXY v1: not ASCII")?;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(None);
    }
    let mut it = line.split(' ');
    let proto = it.next().unwrap_or("");
    let v6 = match proto {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err("PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err("PROXY v1: not 4 fields after the protocol");
    };
    let ip = |s: &str| -> Result<IpAddr, &'static str> {
        if v6 {
            s.parse::<Ipv6Addr>()
                .map(|a| canonical(IpAddr::V6(a)))
                .map_err(|_| "PROXY v1: bad IPv6 address")
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| "PROXY v1: bad IPv4 address")
        }
    };
    let src = SocketAddr::new(ip(src)?, v1_port(sport)?);
    let dst = SocketAddr::new(ip(dst)?, v1_port(dport)?);
    Ok(Some(Addrs { src, dst }))
}

/// A port: 1 to 5 decimal digits, no sign, no leading zero (but `0` itself), at most 65535.
fn v1_port(s: &str) -> Result<u16, &'static str> {
    let ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err("PROXY v1: bad port");
    }
    s.parse().map_err(|_| "PROXY v1: port above 65535")
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as IPv4; anything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A v2 header for `addrs` (`None`: `LOCAL`), followed by `tlvs` (already encoded). For tests
/// and the fuzz seeds: io_conn only parses.
pub fn encode_v2(addrs: Option<Addrs>, tlvs: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    let mut body = Vec::new();
    match addrs {
        None => h.extend_from_slice(&[0x20, 0x00]),
        Some(a) => match (a.src, a.dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                h.extend_from_slice(&[0x21, 0x11]);
                body.extend_from_slice(&s.ip().octets());
                body.extend_from_slice(&d.ip().octets());
                body.extend_from_slice(&s.port().to_be_bytes());
                body.extend_from_slice(&d.port().to_be_bytes());
            }
            (s, d) => {
                let v6 = |a: SocketAddr| match a.ip() {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    IpAddr::V6(v6) => v6.octets(),
                };
                h.extend_from_slice(&[0x21, 0x21]);
                body.extend_from_slice(&v6(s));
                body.extend_from_slice(&v6(d));
                body.extend_from_slice(&s.port().to_be_bytes());
                body.extend_from_slice(&d.port().to_be_bytes());
            }
        },
    }
    body.extend_from_slice(tlvs);
    let len = u16::try_from(body.len()).expect("a test header fits in 64 KiB");
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&body);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(src: &str, dst: &str) -> Addrs {
        Addrs { src: src.parse().unwrap(), dst: dst.parse().unwrap() }
    }

    /// Every strict prefix of a valid header is Incomplete; the whole is `want`; bytes after
    /// it do not change the verdict.
    fn check_prefixes(v: Version, h: &[u8], want: Parse) {
        for n in 0..h.len() {
            assert_eq!(parse(v, &h[..n]), Parse::Incomplete, "prefix of {n} bytes");
        }
        assert_eq!(parse(v, h), want);
        let mut more = h.to_vec();
        more.extend_from_slice(b"GET /whoami HTTP/1.1\r\n\r\n");
        assert_eq!(parse(v, &more), want);
    }

    #[test]
    fn v2_ipv4_every_field() {
        let a = addrs("203.0.113.7:5555", "192.0.2.1:80");
        let h = encode_v2(Some(a), &[]);
        assert_eq!(h.len(), 28);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        check_prefixes(Version::V2, &h, Parse::Done { consumed: 28, addrs: Some(a) });
    }

    #[test]
    fn v2_ipv6_and_mapped() {
        let a = addrs("[2001:db8::1]:443", "[2001:db8::2]:8080");
        let h = encode_v2(Some(a), &[]);
        assert_eq!(h.len(), 52);
        check_prefixes(Version::V2, &h, Parse::Done { consumed: 52, addrs: Some(a) });
        // IPv4 sent as IPv4-mapped IPv6 comes back as IPv4.
        let mut m = V2_SIGNATURE.to_vec();
        m.extend_from_slice(&[0x21, 0x21, 0, 36]);
        m.extend_from_slice(&"::ffff:203.0.113.7".parse::<Ipv6Addr>().unwrap().octets());
        m.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        m.extend_from_slice(&[0x15, 0xb3, 0, 80]);
        let Parse::Done { addrs: Some(got), .. } = parse(Version::V2, &m) else { panic!() };
        assert_eq!(got.src, "203.0.113.7:5555".parse().unwrap());
        assert_eq!(got.dst, "[::1]:80".parse().unwrap());
    }

    #[test]
    fn v2_local_unspec_and_unix_keep_the_peer() {
        let h = encode_v2(None, &[]);
        check_prefixes(Version::V2, &h, Parse::Done { consumed: 16, addrs: None });
        // LOCAL with an address block: ignored.
        let mut h = encode_v2(Some(addrs("1.2.3.4:1", "5.6.7.8:2")), &[]);
        h[12] = 0x20;
        assert_eq!(parse(Version::V2, &h), Parse::Done { consumed: 28, addrs: None });
        // PROXY with family UNSPEC.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x00, 0, 0]);
        assert_eq!(parse(Version::V2, &h), Parse::Done { consumed: 16, addrs: None });
        // PROXY over AF_UNIX: 216 address bytes, no IP.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x31, 0, 216]);
        h.extend_from_slice(&[b'x'; 216]);
        check_prefixes(Version::V2, &h, Parse::Done { consumed: 232, addrs: None });
    }

    #[test]
    fn v2_tlvs_are_skipped_and_bounds_checked() {
        let a = addrs("203.0.113.7:5555", "192.0.2.1:80");
        // ALPN "h2", authority, a NOOP with an empty value, a CRC32C.
        let tlvs = [
            &[0x01, 0, 2][..],
            b"h2",
            &[0x02, 0, 11],
            b"example.com",
            &[0x04, 0, 0],
            &[0x03, 0, 4, 1, 2, 3, 4],
        ]
        .concat();
        let h = encode_v2(Some(a), &tlvs);
        check_prefixes(Version::V2, &h, Parse::Done { consumed: h.len(), addrs: Some(a) });
        // A TLV whose length runs past the header's.
        let bad = encode_v2(Some(a), &[0x01, 0, 5, b'a']);
        assert_eq!(
            parse(Version::V2, &bad),
            Parse::Invalid("PROXY v2: TLV longer than the header")
        );
        // A TLV head cut short by the header's end.
        let bad = encode_v2(Some(a), &[0x01, 0]);
        assert_eq!(parse(Version::V2, &bad), Parse::Invalid("PROXY v2: truncated TLV"));
        // The same in a LOCAL header: still checked.
        let bad = encode_v2(None, &[0x01]);
        assert_eq!(parse(Version::V2, &bad), Parse::Invalid("PROXY v2: truncated TLV"));
    }

    #[test]
    fn v2_rejects_each_bad_field_as_soon_as_it_is_seen() {
        let good = encode_v2(Some(addrs("1.2.3.4:1", "5.6.7.8:2")), &[]);
        // Any signature byte changed: invalid from that byte on.
        for i in 0..12 {
            let mut h = good.clone();
            h[i] ^= 0x40;
            for n in 0..=h.len() {
                let want = if n <= i {
                    Parse::Incomplete
                } else {
                    Parse::Invalid("not a PROXY v2 signature")
                };
                assert_eq!(parse(Version::V2, &h[..n]), want, "byte {i}, prefix {n}");
            }
        }
        let with = |i: usize, b: u8| {
            let mut h = good.clone();
            h[i] = b;
            parse(Version::V2, &h)
        };
        assert_eq!(with(12, 0x11), Parse::Invalid("PROXY v2: version is not 2"));
        assert_eq!(with(12, 0x31), Parse::Invalid("PROXY v2: version is not 2"));
        assert_eq!(with(12, 0x22), Parse::Invalid("PROXY v2: unknown command"));
        assert_eq!(with(13, 0x41), Parse::Invalid("PROXY v2: unknown address family or transport"));
        assert_eq!(with(13, 0x13), Parse::Invalid("PROXY v2: unknown address family or transport"));
        assert_eq!(with(13, 0x12), Parse::Invalid("PROXY v2: not a stream (TCP) connection"));
        assert_eq!(with(13, 0x10), Parse::Invalid("PROXY v2: not a stream (TCP) connection"));
        // INET6 in a header sized for INET.
        assert_eq!(with(13, 0x21), Parse::Invalid("PROXY v2: length shorter than the addresses"));
        assert_eq!(with(15, 11), Parse::Invalid("PROXY v2: length shorter than the addresses"));
    }

    #[test]
    fn v2_length_bound() {
        // 16 + len up to V2_MAX is fine (padded with one NOOP TLV) ...
        let pad = |n: usize| {
            let mut t = vec![0x04];
            t.extend_from_slice(&u16::try_from(n - 3).unwrap().to_be_bytes());
            t.resize(n, 0);
            t
        };
        let a = addrs("1.2.3.4:1", "5.6.7.8:2");
        let h = encode_v2(Some(a), &pad(V2_MAX - 28));
        assert_eq!(h.len(), V2_MAX);
        assert_eq!(parse(Version::V2, &h), Parse::Done { consumed: V2_MAX, addrs: Some(a) });
        assert_eq!(parse(Version::V2, &h[..V2_MAX - 1]), Parse::Incomplete);
        // ... one more is refused as soon as the length is read, and so is the largest.
        let h = encode_v2(Some(a), &pad(V2_MAX - 27));
        let too_long = Parse::Invalid("PROXY v2: header longer than 4096 bytes");
        assert_eq!(parse(Version::V2, &h[..16]), too_long);
        let mut h = good_prefix();
        h.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(parse(Version::V2, &h), too_long);
    }

    fn good_prefix() -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11]);
        h
    }

    #[test]
    fn v2_is_not_v1_and_v1_is_not_v2() {
        let v2 = encode_v2(None, &[]);
        assert_eq!(parse(Version::V1, &v2), Parse::Invalid("not a PROXY v1 header"));
        let v1 = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(Version::V2, v1), Parse::Invalid("not a PROXY v2 signature"));
        // A client that sends its request straight away.
        assert_eq!(parse(Version::V2, b"GET / HTTP/1.1\r\n"), parse(Version::V2, b"G"));
        assert_eq!(parse(Version::V1, b"GET /"), Parse::Invalid("not a PROXY v1 header"));
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 80\r\n";
        let a = addrs("203.0.113.7:5555", "192.0.2.1:80");
        check_prefixes(Version::V1, h, Parse::Done { consumed: h.len(), addrs: Some(a) });
        let h = b"PROXY TCP6 2001:db8::1 ::1 443 65535\r\n";
        let a = addrs("[2001:db8::1]:443", "[::1]:65535");
        check_prefixes(Version::V1, h, Parse::Done { consumed: h.len(), addrs: Some(a) });
        let h = b"PROXY TCP6 ::ffff:10.0.0.1 ::ffff:10.0.0.2 0 1\r\n";
        let a = addrs("10.0.0.1:0", "10.0.0.2:1");
        assert_eq!(parse(Version::V1, h), Parse::Done { consumed: h.len(), addrs: Some(a) });
        let h = b"PROXY UNKNOWN\r\n";
        check_prefixes(Version::V1, h, Parse::Done { consumed: 15, addrs: None });
        let h = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(parse(Version::V1, h), Parse::Done { consumed: h.len(), addrs: None });
    }

    #[test]
    fn v1_worst_case_is_107_bytes() {
        // The spec's worst case: UNKNOWN with the longest addresses and ports.
        let h = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(h.len(), V1_MAX);
        check_prefixes(Version::V1, h, Parse::Done { consumed: V1_MAX, addrs: None });
        // The longest TCP6 line.
        let h = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 65535\r\n";
        let a = parse_addrs(h).expect("addresses");
        assert_eq!(a.dst.to_string(), "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535");
        // No CRLF in 107 bytes.
        let long = [&b"PROXY UNKNOWN "[..], &[b'x'; 200]].concat();
        assert_eq!(parse(Version::V1, &long[..106]), Parse::Incomplete);
        let too_long = Parse::Invalid("PROXY v1: longer than 107 bytes");
        assert_eq!(parse(Version::V1, &long[..107]), too_long);
        assert_eq!(parse(Version::V1, &long), too_long);
        // The CRLF would end at byte 108: too long, whether the LF is there yet or not.
        let mut at = long[..106].to_vec();
        at.push(b'\r');
        assert_eq!(parse(Version::V1, &at), too_long);
        at.push(b'\n');
        assert_eq!(parse(Version::V1, &at), too_long);
    }

    fn parse_addrs(h: &[u8]) -> Option<Addrs> {
        match parse(Version::V1, h) {
            Parse::Done { addrs, .. } => addrs,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_edge_cases_are_invalid() {
        let cases: &[(&[u8], &str)] = &[
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "PROXY v1: a byte that is not printable ASCII"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "PROXY v1: CR not followed by LF"),
            (
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN",
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n", "PROXY v1: not 4 fields after the protocol"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "PROXY v1: not 4 fields after the protocol"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "PROXY v1: not 4 fields after the protocol"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "PROXY v1: not 4 fields after the protocol"),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "PROXY v1: bad IPv4 address"),
            (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "PROXY v1: bad IPv4 address"),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "PROXY v1: bad IPv6 address"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "PROXY v1: bad port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "PROXY v1: bad port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "PROXY v1: bad port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 655350\r\n", "PROXY v1: bad port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "PROXY v1: port above 65535"),
            (
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
                "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN",
            ),
            (b"PROXY UNKNOWNX\r\n", "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN"),
            (b"PROXY \r\n", "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN"),
            (b"PROXY UNKNOWN \xff\r\n", "PROXY v1: a byte that is not printable ASCII"),
            (b"proxy UNKNOWN\r\n", "not a PROXY v1 header"),
            (b"PROXY\r\n", "not a PROXY v1 header"),
        ];
        for (h, why) in cases {
            assert_eq!(parse(Version::V1, h), Parse::Invalid(why), "{}", h.escape_ascii());
        }
    }

    #[test]
    fn v1_short_inputs() {
        assert_eq!(parse(Version::V1, b""), Parse::Incomplete);
        assert_eq!(parse(Version::V1, b"PROX"), Parse::Incomplete);
        assert_eq!(parse(Version::V1, b"PROXY TCP4 1.2.3.4\r"), Parse::Incomplete);
        assert_eq!(parse(Version::V1, b"PROXX"), Parse::Invalid("not a PROXY v1 header"));
    }
}
