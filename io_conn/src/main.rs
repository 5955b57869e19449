//! io_conn: owns every client socket of shmsrv and routes messages to md instances.
//!
//! Thin: blocks the handled signals (before any thread or child exists), parses arguments,
//! loads the config, raises the open-files limit, binds and prints the listeners, then calls
//! [`io_conn::run`]. Under systemd (`Type=notify`) it sends `READY=1` with a `STATUS=` naming the
//! listeners once the queue pairs exist (see `rt::notify`). See `io_conn --help`.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// shmsrv's front end: listeners, client connections, framing, routing to md instances.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Without it: the built-in defaults (identical to the shipped file).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the config, print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
    /// Development mode: start N md children (instances 0..N) and restart any that die.
    #[arg(long, value_name = "N")]
    spawn_md: Option<u32>,
    /// Take over the live connections and listeners of the io_conn running with this config
    /// (an upgrade or restart without systemd): it gets SIGUSR2, answers what it owes, and
    /// hands everything over through a Unix socket in the runtime directory.
    #[arg(long)]
    takeover: bool,
}

fn main() -> ExitCode {
    // Before anything else (threads, children): signals arrive through the loop's signalfd.
    if let Err(e) = rt::signals::block(&io_conn::handled_signals()) {
        eprintln!("io_conn: blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    // Without --config: the built-in defaults, identical to the shipped file (the systemd units
    // pass --config explicitly).
    let mut cfg = config::Config::load_or_default(args.config.as_deref())?;
    // Group binaries must exist on this machine: --check-config and --spawn-md fail without
    // them; a plain start only warns (md@N is what runs them, and they may be installed later).
    let binaries = cfg.check_binaries(args.config.as_deref());
    if args.check_config {
        binaries?;
        println!("config OK: {}", cfg.summary());
        return Ok(());
    }
    log::info!("config: {}", cfg.summary());
    match binaries {
        Err(e) if args.spawn_md.is_some() => return Err(e.into()),
        Err(e) => log::warn!("{e} (md instances of that group will fail to start)"),
        Ok(()) => {}
    }

    let nofile = io_conn::raise_nofile_limit().context("raising RLIMIT_NOFILE")?;
    let need = u64::from(cfg.io_conn.max_connections) + io_conn::fixed_fds(&cfg);
    if need > nofile {
        // Warn and clamp: the server stays useful, and the operator sees the fix.
        let clamped = nofile.saturating_sub(io_conn::fixed_fds(&cfg)).max(1);
        log::warn!(
            "io_conn.max_connections = {} needs ~{need} open files but the limit is {nofile}; \
             using max_connections = {clamped} (raise LimitNOFILE / ulimit -n)",
            cfg.io_conn.max_connections
        );
        cfg.io_conn.max_connections = u32::try_from(clamped).unwrap_or(u32::MAX);
    }

    // Connections handed over: by the io_conn we take over (--takeover), or stored in systemd's
    // fd store by the one before us (always looked for; none outside systemd).
    let (received, mut successor_of) = if args.takeover {
        let (old, path) = running_io_conn(&cfg)?;
        log::info!("taking over from io_conn pid {} ({})", old.pid, path.display());
        let (sock, r) = io_conn::handover::receive_from(&path, old.pid, cfg.io_conn.drain_deadline)
            .with_context(|| format!("taking over from io_conn pid {}", old.pid))?;
        (r, Some((old, sock)))
    } else {
        let (r, others) = io_conn::handover::take_stored().context("reading LISTEN_FDS")?;
        if !others.is_empty() {
            log::warn!(
                "closing {} descriptors systemd passed that are not a handover's (names {:?})",
                others.len(),
                others.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
            );
        }
        (r, None)
    };
    let mut matched = io_conn::handover::match_record(received);

    let mut listeners = Vec::with_capacity(cfg.io_conn.listeners.len());
    let mut out = std::io::stdout().lock();
    let mut status = String::from("listening on");
    for l in &cfg.io_conn.listeners {
        let sock = match matched.take_listener(l.address) {
            Some(sock) => sock,
            None => io_conn::bind_listener(l.address, cfg.io_conn.backlog)
                .with_context(|| format!("binding {} ({})", l.address, l.service))?,
        };
        let local = sock.local_addr().context("getsockname")?;
        writeln!(out, "listening {local} {} {}", l.service, l.framing())?;
        status.push_str(&format!(" {local} ({})", l.service));
        listeners.push((sock, l.clone()));
    }
    out.flush()?;
    drop(out);
    let addrs: Vec<_> = listeners.iter().filter_map(|(s, _)| s.local_addr().ok()).collect();
    matched.bind_listeners(&addrs);
    if !matched.listeners.is_empty() {
        log::warn!(
            "closing {} handed-over listeners the config no longer has",
            matched.listeners.len()
        );
    }
    if let Some((old, sock)) = successor_of.as_mut() {
        // We own the connections now: the old io_conn exits; its queue pairs go with it, and
        // ours are created once it is gone (a live creator's segments are never replaced).
        io_conn::handover::acknowledge(sock).context("acknowledging the handover")?;
        io_conn::handover::wait_exit(*old).context("waiting for the old io_conn to exit")?;
    }

    let spawn = match args.spawn_md {
        Some(count) => {
            // The md binary is needed unless every spawned instance's group names its own.
            let bin = match io_conn::md_binary() {
                Some(bin) => bin,
                None if (0..count).all(|i| cfg.group_binary(i).is_some()) => PathBuf::new(),
                None => anyhow::bail!(
                    "--spawn-md: no md binary next to io_conn; build it (cargo build --bins) or \
                     set SHMSRV_MD_BIN"
                ),
            };
            Some(io_conn::SpawnMd::new(&cfg, bin, args.config.clone(), count))
        }
        None => None,
    };
    let opts = io_conn::Options { shutdown: None, signals: true, spawn, adopt: matched.flows };
    let on_ready = || {
        println!("ready");
        // Not fatal: systemd would time the start out and say why.
        let ready = [rt::notify::NotifyState::Ready, rt::notify::NotifyState::Status(&status)];
        if let Err(e) = rt::notify::send(&ready) {
            log::warn!("telling systemd we are ready: {e}");
        }
    };
    io_conn::run_with_ready(&cfg, listeners, opts, on_ready)?;
    Ok(())
}

/// The io_conn running with this config (the creator of its instance 0 queue pair, alive) and
/// its handover socket.
fn running_io_conn(cfg: &config::Config) -> anyhow::Result<(shmq::sys::ProcId, PathBuf)> {
    let pair = io_conn::pair_config(cfg);
    let name = pair.in_segment(0);
    let seg = shmq::region::Segment::attach(pair.backend, &name, false).with_context(|| {
        format!("--takeover: no io_conn running with shared.name = {}", cfg.shared.name)
    })?;
    let id = seg
        .ring_identity(0)
        .with_context(|| format!("--takeover: {name} holds no queue header"))?;
    anyhow::ensure!(
        id.creator.liveness() == shmq::sys::Liveness::Alive,
        "--takeover: the io_conn that created {name} (pid {}) is not running",
        id.creator.pid
    );
    Ok((id.creator, io_conn::handover::socket_path(&cfg.runtime_dir(), &cfg.shared.name)))
}
