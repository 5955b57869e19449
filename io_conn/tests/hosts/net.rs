//! Where the balancer test's parties live: four network namespaces this test creates (a client,
//! the balancer, two hosts) wired with veth pairs and a bridge, or, where namespaces cannot be
//! made (not root, no `ip`, a container without the rights), loopback addresses on this
//! machine. The namespaces use the addresses of `docs/deploy/haproxy.cfg` (client network
//! 192.0.2.0/24, hosts' network 10.0.0.0/24), so that file runs as shipped; no address is ever
//! added outside a namespace the test made, and [`Netns`] deletes them on drop, also when the
//! test fails (a namespace left by a killed test run of a dead pid is deleted by the next run).
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;

/// Network namespaces this test made; deleted on drop.
pub struct Netns {
    names: Vec<String>,
}

/// The prefix of every namespace these tests make: `shmsrv-hosts-PID-...`.
const PREFIX: &str = "shmsrv-hosts-";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// Deletes namespaces that earlier runs of these tests left when they were killed (their
    /// pid, in the name, is gone).
    fn sweep_stale() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let Some(rest) = name.strip_prefix(PREFIX) else { continue };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }

    fn add(&mut self, tag: &str) -> Result<String, String> {
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        let _ = ip(&["netns", "del", &name]); // our own pid's leftover: a failed earlier test
        ip(&["netns", "add", &name])?;
        self.names.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

/// One party: its namespace (None: this machine's) and its address.
#[derive(Debug, Clone)]
pub struct Place {
    pub ns: Option<String>,
    pub ip: IpAddr,
}

/// The parties of the balancer test.
pub struct Topology {
    /// Some: the namespaces; None: loopback.
    pub netns: Option<Netns>,
    /// The client, at its source address.
    pub client: Place,
    /// The balancer: its namespace and its address on the hosts' network (`source`).
    pub lb: Place,
    /// The two hosts: their namespaces and addresses.
    pub hosts: [Place; 2],
    /// An address on the hosts' network that is not the balancer's.
    pub untrusted: Place,
}

impl Topology {
    /// Namespaces if they can be made, else loopback; says which on stderr. `force_loopback`
    /// (or `SHMSRV_TEST_LOOPBACK=1`) skips the attempt.
    pub fn new(tag: &str, force_loopback: bool) -> Topology {
        if force_loopback || std::env::var_os("SHMSRV_TEST_LOOPBACK").is_some() {
            eprintln!("hosts: loopback topology (asked for)");
            return Self::loopback();
        }
        match Self::namespaces(tag) {
            Ok(t) => {
                eprintln!("hosts: network namespaces client, lb, host1, host2 (veth + bridge)");
                t
            }
            Err(e) => {
                eprintln!("hosts: network namespaces unavailable ({e}): loopback fallback");
                Self::loopback()
            }
        }
    }

    fn loopback() -> Topology {
        let at = |a: [u8; 4]| Place { ns: None, ip: IpAddr::from(a) };
        Topology {
            netns: None,
            client: at([127, 0, 0, 7]),
            lb: at([127, 0, 0, 2]),
            hosts: [at([127, 0, 0, 1]), at([127, 0, 0, 1])],
            untrusted: at([127, 0, 0, 9]),
        }
    }

    fn namespaces(tag: &str) -> Result<Topology, String> {
        Netns::sweep_stale();
        let mut ns = Netns { names: Vec::new() };
        let c = ns.add(&format!("{tag}-c"))?;
        let l = ns.add(&format!("{tag}-lb"))?;
        let h1 = ns.add(&format!("{tag}-h1"))?;
        let h2 = ns.add(&format!("{tag}-h2"))?;
        // Client network: client 192.0.2.7 <-> balancer 192.0.2.10.
        ip(&["link", "add", "c0", "netns", &c, "type", "veth", "peer", "name", "lc", "netns", &l])?;
        ip(&["-n", &c, "addr", "add", "192.0.2.7/24", "dev", "c0"])?;
        ip(&["-n", &c, "link", "set", "c0", "up"])?;
        ip(&["-n", &l, "addr", "add", "192.0.2.10/24", "dev", "lc"])?;
        ip(&["-n", &l, "link", "set", "lc", "up"])?;
        // Hosts' network: a bridge in the balancer's namespace, 10.0.0.10 (and 10.0.0.9, the
        // untrusted neighbour), hosts 10.0.0.11 and 10.0.0.12.
        ip(&["-n", &l, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &l, "addr", "add", "10.0.0.10/24", "dev", "br0"])?;
        ip(&["-n", &l, "addr", "add", "10.0.0.9/24", "dev", "br0"])?;
        ip(&["-n", &l, "link", "set", "br0", "up"])?;
        for (i, h) in [&h1, &h2].into_iter().enumerate() {
            let port = format!("l{}", i + 1);
            ip(&[
                "link", "add", &port, "netns", &l, "type", "veth", "peer", "name", "h0", "netns", h,
            ])?;
            ip(&["-n", &l, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &l, "link", "set", &port, "up"])?;
            ip(&["-n", h, "addr", "add", &format!("10.0.0.{}/24", 11 + i), "dev", "h0"])?;
            ip(&["-n", h, "link", "set", "h0", "up"])?;
        }
        // `ip netns exec` must work here too (it needs a mount namespace for /sys).
        ip(&["netns", "exec", &h1, "true"])?;
        let at = |n: &str, a: [u8; 4]| Place { ns: Some(n.to_owned()), ip: IpAddr::from(a) };
        Ok(Topology {
            client: at(&c, [192, 0, 2, 7]),
            lb: at(&l, [10, 0, 0, 10]),
            hosts: [at(&h1, [10, 0, 0, 11]), at(&h2, [10, 0, 0, 12])],
            untrusted: at(&l, [10, 0, 0, 9]),
            netns: Some(ns),
        })
    }

    pub fn is_netns(&self) -> bool {
        self.netns.is_some()
    }
}

/// The command prefix that runs a program in `p`'s namespace (empty on this machine's).
pub fn wrap(p: &Place) -> Vec<String> {
    match &p.ns {
        Some(n) => ["ip", "netns", "exec", n].map(str::to_owned).to_vec(),
        None => Vec::new(),
    }
}

/// Runs `f` on a thread inside `ns` (setns affects that thread only), or here without one;
/// a panic in `f` is the caller's.
pub fn in_ns<T: Send + 'static>(ns: Option<&str>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let Some(ns) = ns else { return f() };
    let path = format!("/run/netns/{ns}");
    let t = std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    });
    t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A TCP connection from `src` (any port) to `dst`, in the calling thread's namespace.
pub fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, bind, socket};
    let family = if src.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(SocketAddr::new(src, 0)))?;
    nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(dst))?;
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(crate::util::WATCHDOG))?;
    Ok(s)
}
