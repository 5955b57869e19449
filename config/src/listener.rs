//! `[[io_conn.listener]]`: a listener's address, service, framing, dispatch and PROXY settings,
//! and the one-line summary of it the startup log prints.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::{Cidr, DEFAULT_PIPELINE_DEPTH, ProxyProtocol};
#[cfg(doc)]
use crate::{Http, MAX_NAME_LEN, MAX_PIPELINE_DEPTH, MAX_PROXY_FROM};

/// One `[[io_conn.listener]]`: a TCP address and the service its connections get.
///
/// `address` and `service` are required in each table; `name`, `framing`, `dispatch` and
/// `pipeline_depth` are optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Optional name: under systemd socket activation, the `FileDescriptorName=` of the socket
    /// this listener takes (else the socket is matched by its address). Empty (the default) or
    /// 1..=[`MAX_NAME_LEN`] characters of `[A-Za-z0-9_-]`, unique among the listeners.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `IP:port` to bind, e.g. `"127.0.0.1:4680"` or `"[::1]:4680"`; host names are not
    /// resolved. Port 0 = any free port. No two listeners may overlap.
    #[serde(deserialize_with = "deserialize_addr")]
    pub address: SocketAddr,
    /// Name of the md service: `echo`, `reverse`, `dumb`, or any name an md registers;
    /// 1..=[`MAX_NAME_LEN`] characters of `[A-Za-z0-9_-]`.
    pub service: String,
    /// How to cut the byte stream into messages; `None` (written `""` or left out) = the
    /// service's default, see [`default_framing`] and [`Listener::framing`].
    #[serde(
        default,
        deserialize_with = "deserialize_framing_opt",
        serialize_with = "serialize_framing_opt"
    )]
    pub framing: Option<Framing>,
    /// How requests of a connection reach md: [`Dispatch::Request`] (each request to the
    /// least-loaded md of the service's group) or [`Dispatch::Flow`] (the connection bound to
    /// one md for life). `None` (written `""` or left out) = the service's default, see
    /// [`default_dispatch`] and [`Listener::dispatch`].
    #[serde(
        default,
        deserialize_with = "deserialize_dispatch_opt",
        serialize_with = "serialize_dispatch_opt"
    )]
    pub dispatch: Option<Dispatch>,
    /// Under `dispatch = "request"`: requests in flight per connection (io_conn holds early
    /// replies until the ones before them are sent; past this it stops reading the socket).
    /// 1..=[`MAX_PIPELINE_DEPTH`]; ignored under `flow`. Default [`DEFAULT_PIPELINE_DEPTH`].
    #[serde(default = "default_pipeline_depth")]
    pub pipeline_depth: u32,
    /// Whether each connection begins with a PROXY protocol header from a load balancer
    /// (`"none"`, the default; `"v1"`; `"v2"`): its source address replaces the socket's peer
    /// (OPEN, `/whoami`, logs, `max_connections_per_ip`). See [`ProxyProtocol`].
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// The balancers' address blocks: with a `proxy_protocol`, a connection from elsewhere is
    /// refused, and one from here must send a valid header first. Required (non-empty) then;
    /// up to [`MAX_PROXY_FROM`] entries. Default empty.
    #[serde(default)]
    pub proxy_from: Vec<Cidr>,
}

fn default_pipeline_depth() -> u32 {
    DEFAULT_PIPELINE_DEPTH
}

impl Listener {
    /// A listener on `127.0.0.1:port` with the service's default framing, and its default
    /// dispatch written out, as the shipped file does.
    pub(crate) fn new(port: u16, service: &str) -> Self {
        Self {
            name: String::new(),
            address: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
            service: service.to_owned(),
            framing: None,
            dispatch: Some(default_dispatch(service)),
            pipeline_depth: DEFAULT_PIPELINE_DEPTH,
            proxy_protocol: ProxyProtocol::None,
            proxy_from: Vec::new(),
        }
    }

    /// The dispatch mode in effect: the explicit one, else the service's default
    /// ([`default_dispatch`]: `Request` for the stateless built-ins, `Flow` for `kv` and for
    /// any other service).
    pub fn dispatch(&self) -> Dispatch {
        self.dispatch.unwrap_or_else(|| default_dispatch(&self.service))
    }

    /// Requests in flight per connection under [`Dispatch::Request`] (`pipeline_depth`).
    pub fn pipeline_depth(&self) -> u32 {
        self.pipeline_depth
    }

    /// The framing in effect: the explicit one, else the service's default. A validated
    /// config always has one of the two; for an unvalidated one with neither, `Raw`.
    pub fn framing(&self) -> Framing {
        self.framing.or_else(|| default_framing(&self.service)).unwrap_or(Framing::Raw)
    }
}

/// How io_conn finds message boundaries in a client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Each `recv` chunk is one message (at most `io_conn.read_buffer` bytes). `"raw"`.
    Raw,
    /// Messages end with `\n`. `"line"`.
    Line,
    /// Each message is preceded by its length in 4 bytes, network (big-endian) order. `"len32"`.
    Len32,
    /// HTTP/1.x requests: a head (limits in [`Http`]), then a body by `Content-Length` or
    /// chunked; keep-alive and pipelining. `"http"`.
    Http,
    /// Redis's RESP2: each message is one command, an array of bulk strings or an inline line.
    /// `"resp"`.
    Resp,
}

impl Framing {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Line => "line",
            Self::Len32 => "len32",
            Self::Http => "http",
            Self::Resp => "resp",
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How io_conn hands a connection's requests to md (`dispatch` of a listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dispatch {
    /// Each complete request goes to the least-loaded live md of the service's group; replies
    /// return in request order. For stateless services. `"request"`.
    Request,
    /// The connection is bound to one md for life: for services whose requests on a connection
    /// must run one after another on one md (sessions, rooms). The default for `kv` and for
    /// services that are not built in. `"flow"`.
    Flow,
}

impl Dispatch {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Flow => "flow",
        }
    }
}

impl fmt::Display for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default framing of the built-in services: `echo` → raw, `reverse` → line, `dumb` → line,
/// `http` → http; `None` for any other service (its listeners must set `framing`).
pub fn default_framing(service: &str) -> Option<Framing> {
    match service {
        "echo" => Some(Framing::Raw),
        "reverse" | "dumb" => Some(Framing::Line),
        "http" => Some(Framing::Http),
        "kv" => Some(Framing::Resp),
        _ => None,
    }
}
/// Default dispatch of a service: `request` for the stateless built-ins (`echo`, `reverse`,
/// `dumb`, `http`: any md may answer any request, so a new md takes load off open
/// connections); `flow` for `kv` (a connection's commands run in order on one md, as Redis
/// clients expect) and for every other service (it may keep state per connection, and `flow`
/// is the safe choice for state the config cannot see).
pub fn default_dispatch(service: &str) -> Dispatch {
    match service {
        "echo" | "reverse" | "dumb" | "http" => Dispatch::Request,
        _ => Dispatch::Flow,
    }
}

/// One listener in [`Config::summary`]: `ADDR=SERVICE/FRAMING/DISPATCH[:DEPTH]`.
pub(crate) fn listener_summary(l: &Listener) -> String {
    let mut s = match l.dispatch() {
        Dispatch::Request => {
            format!("{}={}/{}/request:{}", l.address, l.service, l.framing(), l.pipeline_depth)
        }
        Dispatch::Flow => format!("{}={}/{}/flow", l.address, l.service, l.framing()),
    };
    if l.proxy_protocol != ProxyProtocol::None {
        let from: Vec<String> = l.proxy_from.iter().map(Cidr::to_string).collect();
        s.push_str(&format!("/proxy-{}({})", l.proxy_protocol, from.join(",")));
    }
    s
}
fn deserialize_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid address {s:?} (expected IP:port, e.g. \"127.0.0.1:4680\" or \
             \"[::1]:4680\"; host names are not resolved)"
        ))
    })
}

fn deserialize_framing_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Framing>, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "" => Ok(None),
        "raw" => Ok(Some(Framing::Raw)),
        "line" => Ok(Some(Framing::Line)),
        "len32" => Ok(Some(Framing::Len32)),
        "http" => Ok(Some(Framing::Http)),
        "resp" => Ok(Some(Framing::Resp)),
        _ => Err(serde::de::Error::custom(format!(
            "invalid framing {s:?} (expected \"raw\", \"line\", \"len32\", \"http\", \"resp\", or \"\" \
             for the service's default)"
        ))),
    }
}

fn deserialize_dispatch_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Dispatch>, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "" => Ok(None),
        "request" => Ok(Some(Dispatch::Request)),
        "flow" => Ok(Some(Dispatch::Flow)),
        _ => Err(serde::de::Error::custom(format!(
            "invalid dispatch {s:?} (expected \"request\", \"flow\", or \"\" for the \
             service's default)"
        ))),
    }
}

fn serialize_dispatch_opt<S: serde::Serializer>(
    v: &Option<Dispatch>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.map_or("", Dispatch::as_str))
}

fn serialize_framing_opt<S: serde::Serializer>(
    v: &Option<Framing>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.map_or("", Framing::as_str))
}
