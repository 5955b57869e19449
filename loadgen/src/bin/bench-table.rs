//! `bench-table`: the whole comparison in one run — shmsrv against Redis, nginx and `onecore`
//! (the one-process limit) with one client (loadgen) for all — written as a dated table into
//! docs/BENCHMARKS.md and a latency-versus-load chart (p99 against offered rate) as a PNG.
//!
//! `scripts/bench-table.sh` installs the peers (redis-server, nginx-light, fonts-dejavu-core),
//! builds the release binaries and runs this. Every server runs on loopback on a port picked
//! here and is stopped by pid; peers that are not installed are left out of the table with a
//! note. Every reply is checked (a wrong reply or an error fails the run).
//!
//! Rows: PING (line; Redis's inline PING) closed loop at c1/c10/c100 (ours, Redis, onecore);
//! HTTP `GET /` closed loop at c10/c100/c1000 (ours when the build has the http service,
//! nginx with 1 worker, onecore); open-loop sweep of PING at c100 over a ladder of rates (p99 at
//! each), drawn as the chart.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use loadgen::{Plan, Proto, Report, Workload};

/// Runs the comparison table and writes it into docs/BENCHMARKS.md with a chart.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory of the release binaries (io_conn, md, onecore).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// md instances for our server.
    #[arg(long, default_value_t = 1)]
    md: u32,
    /// Seconds per closed-loop point.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Seconds per open-loop point.
    #[arg(long, default_value_t = 3.0)]
    sweep_secs: f64,
    /// Markdown file to write the table into (between bench-table markers; appended if absent).
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
    /// The chart (PNG), written next to `--out` by default.
    #[arg(long, default_value = "docs/img/latency-vs-load.png")]
    png: PathBuf,
    /// A TTF font for the chart's text.
    #[arg(long, default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    font: PathBuf,
    /// Smoke mode: tiny points, writes to the given --out/--png (use a temp dir), checks that
    /// everything works.
    #[arg(long)]
    smoke: bool,
}

/// A child process killed (by pid) on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("bench-table: {} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(addr: SocketAddr, p: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        if let Some(st) = p.child.try_wait()? {
            anyhow::bail!("{} exited at start ({st})", p.name);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not listen on {addr} within 30 s",
            p.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn spawn(name: &'static str, cmd: &mut Command) -> anyhow::Result<Proc> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
    Ok(Proc { name, child })
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

struct Servers {
    _procs: Vec<Proc>,
    tmp: PathBuf,
    ours_line: SocketAddr,
    ours_http: Option<SocketAddr>,
    redis: Option<SocketAddr>,
    nginx: Option<SocketAddr>,
    one_line: SocketAddr,
    one_http: SocketAddr,
    notes: Vec<String>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn start_servers(a: &Args) -> anyhow::Result<Servers> {
    let tmp = std::env::temp_dir().join(format!("shmsrv-bench-table-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut procs = Vec::new();
    let mut notes = Vec::new();
    // Ours: the shipped defaults but for the name, the runtime dir and the listeners.
    let (line_port, http_port) = (free_port()?, free_port()?);
    let name = format!("benchtable{}", std::process::id());
    let base = format!(
        "[shared]\nname = \"{name}\"\nruntime_dir = \"{}/run\"\n\n[[io_conn.listener]]\naddress = \"127.0.0.1:{line_port}\"\nservice = \"dumb\"\ndispatch = \"request\"\n",
        tmp.display()
    );
    let with_http = format!(
        "{base}\n[[io_conn.listener]]\naddress = \"127.0.0.1:{http_port}\"\nservice = \"http\"\nframing = \"http\"\ndispatch = \"request\"\n"
    );
    let io_conn = a.bin_dir.join("io_conn");
    let cfg = tmp.join("shmsrv.toml");
    std::fs::write(&cfg, &with_http)?;
    let check = Command::new(&io_conn)
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .with_context(|| {
            format!("running {} (build the release binaries first)", io_conn.display())
        })?;
    let ours_http = if check.status.success() {
        Some(SocketAddr::from(([127, 0, 0, 1], http_port)))
    } else {
        notes.push("this build has no http service: no HTTP row for shmsrv".into());
        std::fs::write(&cfg, &base)?;
        None
    };
    let mut ours = spawn(
        "io_conn",
        Command::new(&io_conn)
            .arg("--config")
            .arg(&cfg)
            .arg("--spawn-md")
            .arg(a.md.to_string())
            .env("SHMSRV_MD_BIN", a.bin_dir.join("md"))
            .env("RUST_LOG", "warn"),
    )?;
    let ours_line = SocketAddr::from(([127, 0, 0, 1], line_port));
    wait_port(ours_line, &mut ours)?;
    procs.push(ours);

    let redis = if which("redis-server") {
        let port = free_port()?;
        let mut p = spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .args(["--appendonly", "no", "--daemonize", "no"]),
        )?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_port(addr, &mut p)?;
        procs.push(p);
        Some(addr)
    } else {
        notes.push("redis-server not installed: no Redis row".into());
        None
    };

    let nginx = if which("nginx") {
        let port = free_port()?;
        let dir = tmp.join("nginx");
        std::fs::create_dir_all(dir.join("logs"))?;
        let d = dir.display();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "daemon off;\nmaster_process on;\nworker_processes 1;\nworker_rlimit_nofile 19000;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_timeout 65;\n  keepalive_requests 100000000;\n  default_type text/plain;\n  client_body_temp_path {d}/cb; proxy_temp_path {d}/px; fastcgi_temp_path {d}/fc;\n  uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    location / {{ return 200 \"hello\\n\"; }}\n  }}\n}}\n"
            ),
        )?;
        let mut p = spawn(
            "nginx",
            Command::new("nginx").arg("-p").arg(&dir).arg("-c").arg(dir.join("nginx.conf")),
        )?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_port(addr, &mut p)?;
        procs.push(p);
        Some(addr)
    } else {
        notes.push("nginx not installed: no nginx row".into());
        None
    };

    let (ol, oh) = (free_port()?, free_port()?);
    let mut one = spawn(
        "onecore",
        Command::new(a.bin_dir.join("onecore"))
            .arg("--line")
            .arg(format!("127.0.0.1:{ol}"))
            .arg("--http")
            .arg(format!("127.0.0.1:{oh}")),
    )?;
    let one_line = SocketAddr::from(([127, 0, 0, 1], ol));
    wait_port(one_line, &mut one)?;
    procs.push(one);
    Ok(Servers {
        _procs: procs,
        tmp,
        ours_line,
        ours_http,
        redis,
        nginx,
        one_line,
        one_http: SocketAddr::from(([127, 0, 0, 1], oh)),
        notes,
    })
}

fn ping(expect: &str) -> Workload {
    Workload::new(Proto::Line, &["PING".into()], &[expect.into()], 0, 200, "bench").expect("ping")
}

fn get(host: &SocketAddr) -> Workload {
    Workload::new(Proto::Http, &["GET /".into()], &[r"hello\n".into()], 0, 200, &host.to_string())
        .expect("http")
}

fn point(
    addr: SocketAddr,
    w: Workload,
    conns: usize,
    rate: Option<f64>,
    secs: f64,
) -> anyhow::Result<Report> {
    let plan = Plan {
        addr,
        workload: w,
        conns,
        depth: 1,
        rate,
        duration: Duration::from_secs_f64(secs),
        warmup: Duration::from_secs_f64((secs / 5.0).min(1.0)),
        sources: Vec::new(),
        threads: 1,
        timeout: Duration::from_secs(30),
    };
    let r = loadgen::run(&plan)?;
    anyhow::ensure!(r.clean(), "{addr}: {}", r.summary());
    Ok(r)
}

/// One server's open-loop sweep: its name and (offered/s, achieved/s, p99 ms) per point.
type Series = (String, Vec<(f64, f64, f64)>);

struct Row {
    test: String,
    conns: usize,
    cells: Vec<(String, Report)>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{n} vCPU, {cpu}, Linux {kernel}")
}

fn today() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output();
    out.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let mut a = Args::parse();
    if a.smoke {
        a.secs = 0.3;
        a.sweep_secs = 0.3;
    }
    let s = start_servers(&a)?;
    let mut rows = Vec::new();
    let ping_conns: &[usize] = if a.smoke { &[1, 10] } else { &[1, 10, 100] };
    for &c in ping_conns {
        let mut cells =
            vec![("shmsrv".to_owned(), point(s.ours_line, ping("PONG"), c, None, a.secs)?)];
        if let Some(r) = s.redis {
            cells.push(("Redis".into(), point(r, ping(r"+PONG\r"), c, None, a.secs)?));
        }
        cells.push(("onecore".into(), point(s.one_line, ping("PONG"), c, None, a.secs)?));
        eprintln!("PING c{c}: {}", brief(&cells));
        rows.push(Row { test: "PING".into(), conns: c, cells });
    }
    let http_conns: &[usize] = if a.smoke { &[10] } else { &[10, 100, 1000] };
    for &c in http_conns {
        let mut cells = Vec::new();
        if let Some(h) = s.ours_http {
            cells.push(("shmsrv".to_owned(), point(h, get(&h), c, None, a.secs)?));
        }
        if let Some(n) = s.nginx {
            cells.push(("nginx".into(), point(n, get(&n), c, None, a.secs)?));
        }
        cells.push(("onecore".into(), point(s.one_http, get(&s.one_http), c, None, a.secs)?));
        eprintln!("GET / c{c}: {}", brief(&cells));
        rows.push(Row { test: "HTTP GET /".into(), conns: c, cells });
    }
    // Open-loop sweep at c100 (c10 in smoke mode): the same ladder of offered rates for every
    // server, up to a bit past the fastest closed-loop rate measured above.
    let sweep_c = if a.smoke { 10 } else { 100 };
    let top = rows
        .iter()
        .filter(|r| r.test == "PING")
        .flat_map(|r| r.cells.iter().map(|(_, x)| x.rate()))
        .fold(0.0, f64::max);
    let ladder: Vec<f64> = if a.smoke {
        vec![top * 0.2, top * 0.5]
    } else {
        [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]
            .iter()
            .map(|f| f * top)
            .collect()
    };
    let mut targets = vec![("shmsrv".to_owned(), s.ours_line, "PONG")];
    if let Some(r) = s.redis {
        targets.push(("Redis".into(), r, r"+PONG\r"));
    }
    targets.push(("onecore".into(), s.one_line, "PONG"));
    let mut series: Vec<Series> = Vec::new();
    for (name, addr, exp) in &targets {
        let mut pts = Vec::new();
        for &rate in &ladder {
            let r = point(*addr, ping(exp), sweep_c, Some(rate.max(1.0)), a.sweep_secs)?;
            // (offered, achieved, p99 ms); a point that fell far behind is the knee: stop.
            let achieved = r.rate();
            pts.push((rate, achieved, r.us(0.99) / 1e3));
            eprintln!(
                "sweep {name} offered {rate:.0}/s achieved {achieved:.0}/s p99 {:.2} ms",
                r.us(0.99) / 1e3
            );
            if r.us(0.99) > 200_000.0 {
                break;
            }
        }
        series.push((name.clone(), pts));
    }
    let md = render(&a, &s, &rows, &series, sweep_c);
    write_section(&a.out, &md)?;
    chart(&a, &series, sweep_c)?;
    println!("{md}");
    Ok(())
}

fn brief(cells: &[(String, Report)]) -> String {
    cells.iter().map(|(n, r)| format!("{n} {:.0}/s", r.rate())).collect::<Vec<_>>().join(", ")
}

const BEGIN: &str =
    "<!-- bench-table:begin (written by scripts/bench-table.sh; do not edit by hand) -->";
const END: &str = "<!-- bench-table:end -->";

fn render(a: &Args, s: &Servers, rows: &[Row], series: &[Series], sweep_c: usize) -> String {
    let mut m = String::new();
    m += &format!("{BEGIN}\n## Comparison table (bench-table)\n\n");
    m += &format!(
        "Measured {} on {}. Command: `scripts/bench-table.sh` (shmsrv: io_conn + {} md, shipped defaults; Redis without persistence; nginx 1 worker; onecore = the one-process epoll limit in `loadgen/src/bin/onecore.rs`). One client for all: loadgen, closed loop, 1 thread, 1 request in flight per connection, every reply checked; {:.0} s per point. Ratios are against the peer in the same run (Redis for PING, nginx for HTTP). The client shares the 2 vCPUs with the server.\n\n",
        today(),
        machine(),
        a.md,
        a.secs
    );
    for n in &s.notes {
        m += &format!("- {n}\n");
    }
    if !s.notes.is_empty() {
        m += "\n";
    }
    m += "| test | conns | server | replies/s | p50 µs | p99 µs | shmsrv / peer |\n|---|---:|---|---:|---:|---:|---:|\n";
    for r in rows {
        let peer =
            r.cells.iter().find(|(n, _)| n == "Redis" || n == "nginx").map(|(_, x)| x.rate());
        for (n, x) in &r.cells {
            let ratio = match (n.as_str(), peer) {
                ("shmsrv", Some(p)) if p > 0.0 => format!("{:.2}×", x.rate() / p),
                _ => String::new(),
            };
            m += &format!(
                "| {} | {} | {n} | {:.0} | {:.0} | {:.0} | {ratio} |\n",
                r.test,
                r.conns,
                x.rate(),
                x.us(0.5),
                x.us(0.99)
            );
        }
    }
    m += &format!(
        "\nLatency versus load: PING, open loop at c{sweep_c} (latency counted from each request's due time), p99 against the offered rate. ![p99 latency against offered rate]({})\n\n",
        relative(&a.png, &a.out)
    );
    m += "| server | offered/s | achieved/s | p99 ms |\n|---|---:|---:|---:|\n";
    for (n, pts) in series {
        for (o, ach, p) in pts {
            m += &format!("| {n} | {o:.0} | {ach:.0} | {p:.2} |\n");
        }
    }
    m += &format!("{END}\n");
    m
}

fn relative(png: &Path, md: &Path) -> String {
    let dir = md.parent().unwrap_or(Path::new(""));
    png.strip_prefix(dir).unwrap_or(png).display().to_string()
}

fn write_section(out: &Path, md: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{md}{}", &old[..b], &old[e + END.len() + 1..]),
        _ => format!("{old}\n{md}"),
    };
    std::fs::write(out, new).with_context(|| format!("writing {}", out.display()))
}

fn chart(a: &Args, series: &[Series], sweep_c: usize) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let font = std::fs::read(&a.font).with_context(|| {
        format!("reading the chart font {} (apt-get install fonts-dejavu-core)", a.font.display())
    })?;
    // register_font wants &'static bytes: the font lives as long as the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("{} is not a usable TTF", a.font.display()))?;
    if let Some(d) = a.png.parent() {
        std::fs::create_dir_all(d)?;
    }
    let xmax = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.0)).fold(1.0, f64::max) / 1e3;
    let ymax = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.2)).fold(0.1, f64::max);
    let ymin =
        series.iter().flat_map(|(_, p)| p.iter().map(|x| x.2)).fold(ymax, f64::min).max(0.001);
    let root = BitMapBackend::new(&a.png, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(&root)
        .caption(
            format!("PING p99 latency against offered load (open loop, c{sweep_c})"),
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..xmax * 1.05, (ymin / 1.5..ymax * 1.5).log_scale())?;
    c.configure_mesh()
        .x_desc("offered load, thousand requests/s")
        .y_desc("p99 latency, ms (log)")
        .label_style(("sans-serif", 15))
        .draw()?;
    let colors = [
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
    ];
    for (i, (name, pts)) in series.iter().enumerate() {
        let col = colors[i % colors.len()];
        let xy: Vec<(f64, f64)> = pts.iter().map(|p| (p.0 / 1e3, p.2.max(ymin))).collect();
        c.draw_series(LineSeries::new(xy.clone(), col.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(xy.into_iter().map(|p| Circle::new(p, 4, col.filled())))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    root.present()?;
    Ok(())
}
