//! The PROXY protocol keys of a listener: `proxy_protocol` ([`ProxyProtocol`]) and `proxy_from`
//! (a list of [`Cidr`]), and their validation.
//!
//! io_conn reads them (`server::accept`): on a listener with `proxy_protocol = "v1"` or `"v2"` a
//! connection from an address outside `proxy_from` is refused, and one from inside must begin
//! with a valid header of that version. `proxy_from` must not be empty then: trusting everyone
//! would let any client claim any address. An IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`, a
//! dual-stack listener's IPv4 client) matches IPv4 blocks.
//!
//! # Example
//!
//! ```
//! let toml = "[[io_conn.listener]]\naddress = \"127.0.0.1:8080\"\nservice = \"http\"\n\
//!             proxy_protocol = \"v2\"\nproxy_from = [\"127.0.0.2/32\", \"2001:db8::/32\"]\n";
//! let cfg = config::Config::from_toml_str(toml, "inline").unwrap();
//! let l = &cfg.io_conn.listeners[0];
//! assert_eq!(l.proxy_protocol, config::ProxyProtocol::V2);
//! assert!(l.proxy_trusts("127.0.0.2".parse().unwrap()));
//! assert!(l.proxy_trusts("::ffff:127.0.0.2".parse().unwrap()));
//! assert!(!l.proxy_trusts("127.0.0.9".parse().unwrap()));
//! ```

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::validate::Invalid;
use crate::{Config, Listener};

/// Most `proxy_from` entries per listener (a linear scan per accepted connection).
pub const MAX_PROXY_FROM: usize = 64;

/// Whether a listener's connections begin with a PROXY protocol header (`proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No header: the socket's peer is the client. The default. `"none"`.
    #[default]
    None,
    /// The text header (`PROXY TCP4 ...\r\n`). `"v1"`.
    V1,
    /// The binary header (HAProxy `send-proxy-v2`). `"v2"`.
    V2,
}

impl ProxyProtocol {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address block, `ADDR/PREFIX` (`"10.0.0.0/8"`, `"2001:db8::/32"`); a bare address is a
/// single host (`/32` or `/128`). Host bits must be zero (`"10.0.0.1/8"` is refused as a likely
/// typo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the block. An IPv4-mapped IPv6 `ip` is compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_eq(u128::from(u32::from(net)), u128::from(u32::from(ip)), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_eq(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` of `bits` bits of `a` and `b` agree.
fn mask_eq(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
    let host = bits - u32::from(prefix);
    // checked_shr: a shift by 128 (prefix 0 of IPv6) compares nothing.
    a.checked_shr(host).unwrap_or(0) == b.checked_shr(host).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| {
            format!("{s:?} is not an address block (expected e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"127.0.0.2\")")
        })?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{s:?}: prefix length must be 0..={max}")),
            },
        };
        let cidr = Self { addr, prefix };
        let net = Self { addr: network(addr, prefix), prefix };
        if net != cidr {
            return Err(format!("{s:?} has host bits set (did you mean \"{net}\"?)"));
        }
        Ok(cidr)
    }
}

/// `addr` with its host bits cleared.
fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Listener {
    /// Whether a connection from `ip` may send this listener a PROXY header (`proxy_from`).
    pub fn proxy_trusts(&self, ip: IpAddr) -> bool {
        self.proxy_from.iter().any(|c| c.contains(ip))
    }
}

impl Config {
    /// `proxy_from` is required (non-empty) with a `proxy_protocol`, and bounded.
    pub(crate) fn check_proxy(&self) -> Result<(), Invalid> {
        for (i, l) in self.io_conn.listeners.iter().enumerate() {
            let key = |field: &str| format!("io_conn.listener[{i}].{field}");
            if l.proxy_protocol != ProxyProtocol::None && l.proxy_from.is_empty() {
                return Err(Invalid::new(
                    key("proxy_from"),
                    format!(
                        "proxy_protocol = \"{}\" needs proxy_from: the balancers' addresses \
                         (e.g. [\"127.0.0.2/32\"]); only they may say who the client is",
                        l.proxy_protocol
                    ),
                )
                .also(key("proxy_protocol")));
            }
            if l.proxy_from.len() > MAX_PROXY_FROM {
                return Err(Invalid::new(
                    key("proxy_from"),
                    format!("{} entries; at most {MAX_PROXY_FROM}", l.proxy_from.len()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_blocks_and_hosts() {
        assert_eq!(c("10.0.0.0/8"), Cidr { addr: ip("10.0.0.0"), prefix: 8 });
        assert_eq!(c("127.0.0.2"), Cidr { addr: ip("127.0.0.2"), prefix: 32 });
        assert_eq!(c("::1"), Cidr { addr: ip("::1"), prefix: 128 });
        assert_eq!(c(" 2001:db8::/32 "), Cidr { addr: ip("2001:db8::"), prefix: 32 });
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(c("::/0").to_string(), "::/0");
    }

    #[test]
    fn refuses_bad_blocks() {
        for (s, want) in [
            ("10.0.0.1/8", "host bits set (did you mean \"10.0.0.0/8\"?)"),
            ("2001:db8::1/32", "did you mean \"2001:db8::/32\""),
            ("10.0.0.0/33", "prefix length must be 0..=32"),
            ("::/129", "prefix length must be 0..=128"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/+8", "prefix length"),
            ("10.0.0.0/8/8", "prefix length"),
            ("localhost", "is not an address block"),
            ("10.0.0/8", "is not an address block"),
            ("", "is not an address block"),
        ] {
            let e = s.parse::<Cidr>().unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn contains() {
        let v4 = c("127.0.0.0/30");
        for (a, want) in [
            ("127.0.0.0", true),
            ("127.0.0.3", true),
            ("127.0.0.4", false),
            ("126.255.255.255", false),
            ("::ffff:127.0.0.2", true),
            ("::ffff:127.0.0.9", false),
            ("::127.0.0.2", false),
            ("::1", false),
        ] {
            assert_eq!(v4.contains(ip(a)), want, "{a}");
        }
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.7")));
        assert!(!c("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(c("::/0").contains(ip("2001:db8::1")));
        let v6 = c("2001:db8::/127");
        assert!(v6.contains(ip("2001:db8::1")));
        assert!(!v6.contains(ip("2001:db8::2")));
        assert!(c("::1").contains(ip("::1")));
        assert!(!c("::1").contains(ip("127.0.0.1")));
    }

    #[test]
    fn keys_parse_validate_and_default() {
        let base = "[[io_conn.listener]]\naddress = \"127.0.0.1:0\"\nservice = \"http\"\n";
        let cfg = Config::from_toml_str(base, "x.toml").unwrap();
        let l = &cfg.io_conn.listeners[0];
        assert_eq!((l.proxy_protocol, l.proxy_from.len()), (ProxyProtocol::None, 0));
        let e = Config::from_toml_str(&format!("{base}proxy_protocol = \"v2\"\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("io_conn.listener[0].proxy_from") && e.contains("needs proxy_from"),
            "{e}"
        );
        let e = Config::from_toml_str(&format!("{base}proxy_protocol = \"v3\"\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.toml:4: io_conn.listener[0].proxy_protocol"), "{e}");
        let e = Config::from_toml_str(
            &format!("{base}proxy_protocol = \"v1\"\nproxy_from = [\"10.0.0.1/8\"]\n"),
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("proxy_from") && e.contains("host bits"), "{e}");
        let ok = Config::from_toml_str(
            &format!("{base}proxy_protocol = \"v1\"\nproxy_from = [\"10.0.0.0/8\", \"::1\"]\n"),
            "x.toml",
        )
        .unwrap();
        let l = &ok.io_conn.listeners[0];
        assert_eq!(l.proxy_protocol, ProxyProtocol::V1);
        assert!(
            ok.summary().contains("127.0.0.1:0=http/http/request:16/proxy-v1(10.0.0.0/8,::1/128)"),
            "{}",
            ok.summary()
        );
        assert!(l.proxy_trusts(ip("10.1.2.3")) && l.proxy_trusts(ip("::1")));
        assert!(!l.proxy_trusts(ip("11.0.0.1")));
        // proxy_from alone (no protocol) is allowed: it is just not used.
        Config::from_toml_str(&format!("{base}proxy_from = [\"10.0.0.0/8\"]\n"), "x.toml").unwrap();
        // Round trip through the writer.
        let back = Config::from_toml_str(&ok.to_toml(), "back.toml").unwrap();
        assert_eq!(back.io_conn.listeners[0].proxy_from, l.proxy_from);
        assert_eq!(back.io_conn.listeners[0].proxy_protocol, ProxyProtocol::V1);
    }
}
