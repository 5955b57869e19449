//! `loadgen`: drive a server with checked requests and report throughput and latency
//! percentiles. See the library's docs (`loadgen::run`) and `--help`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use loadgen::{Plan, Proto, Workload};

/// Load generator: closed loop (connections × depth) or open loop at a fixed rate (latency
/// from the intended send time), every reply checked, HdrHistogram percentiles.
///
/// Examples:
///   loadgen 127.0.0.1:8090 --request PING --expect PONG -c 100
///   loadgen 127.0.0.1:4680 --proto echo --size 64 -c 10 --depth 4
///   loadgen 127.0.0.1:6379 --proto resp --request 'SET k v' --request 'GET k' -c 50 --depth 16
///   loadgen 127.0.0.1:8080 --proto http --request 'GET /' --expect 'hello\n' --rate 20000 -c 100
///   loadgen 127.0.0.1:8090 --request PING --expect PONG -c 5000 --sources 127.0.0.1-127.0.0.8
///
/// Exit status: 0 = every reply right and no error; 1 = wrong replies or errors; 2 = could not
/// run (bad arguments, connect failed).
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// The server, IP:port.
    addr: SocketAddr,
    /// Protocol.
    #[arg(long, value_enum, default_value = "line")]
    proto: Proto,
    /// A request (repeat to cycle through several); escapes \r \n \t \\ \xHH. line: the line
    /// without its \n; resp: a command, words split on spaces; http: "METHOD /path [body]".
    #[arg(long = "request", short = 'r')]
    requests: Vec<String>,
    /// The exact reply to each --request (in order): line: without its \n; resp: the whole
    /// reply (e.g. '+OK\r\n'); http: the body. Required for line; otherwise optional.
    #[arg(long = "expect", short = 'e')]
    expects: Vec<String>,
    /// echo / len32: payload bytes per request (unique bytes, checked on return).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// http: the status every reply must have.
    #[arg(long, default_value_t = 200)]
    status: u16,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 10)]
    conns: usize,
    /// Requests in flight per connection at most (closed loop: always).
    #[arg(long, short = 'd', default_value_t = 1)]
    depth: usize,
    /// Open loop: requests per second over all connections; latency counts from when each
    /// request was due. Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured time, e.g. 10s, 500ms.
    #[arg(long, short = 't', default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Time before measuring.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Source addresses, a range 127.0.0.1-127.0.0.8 or a list a,b,c (connections use them
    /// round-robin).
    #[arg(long)]
    sources: Option<String>,
    /// Threads (one epoll loop each).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A request unanswered this long is an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.trim().parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "us" => v / 1e6,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (s, ms, us, m)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() {
    let a = Args::parse();
    let host = a.addr.to_string();
    let plan = (|| -> anyhow::Result<Plan> {
        Ok(Plan {
            addr: a.addr,
            workload: Workload::new(a.proto, &a.requests, &a.expects, a.size, a.status, &host)?,
            conns: a.conns,
            depth: a.depth,
            rate: a.rate,
            duration: a.duration,
            warmup: a.warmup,
            sources: a
                .sources
                .as_deref()
                .map(loadgen::parse_sources)
                .transpose()?
                .unwrap_or_default(),
            threads: a.threads,
            timeout: a.timeout,
        })
    })();
    let report = match plan.and_then(|p| loadgen::run(&p)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::exit(2);
        }
    };
    if a.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.summary());
    }
    std::process::exit(if report.clean() { 0 } else { 1 });
}
