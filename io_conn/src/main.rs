//! io_conn: owns every client socket of shmsrv and routes messages to md instances.
//!
//! Thin: blocks the handled signals (before any thread or child exists), takes the sockets of
//! socket activation (`io_conn::activation`), parses arguments, loads the config, raises the
//! open-files limit, binds (or matches) and prints the listeners, then calls [`io_conn::run`].
//! Under systemd (`Type=notify`) it sends `READY=1` with a `STATUS=` naming the listeners once
//! the queue pairs exist (see `rt::notify`). `--reload` is the client of a running io_conn's
//! control socket (`io_conn::reload`). See `io_conn --help`.

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
    /// Ask the io_conn running with this config to reload it, wait for the outcome and exit:
    /// 0 when it was applied, 1 when it was refused (the keys that need a restart are printed)
    /// or the file does not validate. `systemctl reload io_conn` runs this.
    #[arg(long, conflicts_with_all = ["check_config", "spawn_md"])]
    reload: bool,
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
    // Also before any thread: it removes LISTEN_* from the environment.
    let inherited = rt::activation::take_listen_fds();
    let args = Args::parse();
    // Everything passes the logger's own filter unless RUST_LOG says otherwise; the config's
    // `io_conn.log_level` sets the global maximum (and a reload changes it).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("trace"))
        .target(env_logger::Target::Stderr)
        .init();
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Info); // until the config is read
    }
    if args.reload {
        return reload_client(&args);
    }
    let inherited = match inherited {
        Ok(v) => v,
        Err(e) => {
            log::error!("socket activation: reading LISTEN_FDS / LISTEN_FDNAMES: {e}");
            return ExitCode::FAILURE;
        }
    };
    match real_main(args, inherited) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `io_conn --reload`: validates the file here first (so a bad file is reported even when no
/// io_conn runs), then asks the running io_conn and prints its answer.
fn reload_client(args: &Args) -> ExitCode {
    let cfg = match config::Config::load_or_default(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("io_conn --reload: {e}; nothing was reloaded");
            return ExitCode::FAILURE;
        }
    };
    let path = io_conn::reload::control_path(&cfg);
    match io_conn::reload::request_reload(&path, RELOAD_TIMEOUT) {
        Ok(reply) if io_conn::reload::reply_ok(&reply) => {
            print!("{reply}");
            ExitCode::SUCCESS
        }
        Ok(reply) => {
            eprint!("io_conn --reload: {reply}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "io_conn --reload: asking the running io_conn on {}: {e} (is io_conn running \
                 with this config's shared.name and runtime directory?)",
                path.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// How long `--reload` waits for the answer (a reload reads one file and binds sockets).
const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn real_main(args: Args, inherited: Vec<rt::activation::Inherited>) -> anyhow::Result<()> {
    // Without --config: the built-in defaults, identical to the shipped file (the systemd units
    // pass --config explicitly).
    let mut cfg = config::Config::load_or_default(args.config.as_deref())?;
    io_conn::set_log_level(cfg.io_conn.log_level);
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

    // Descriptors systemd passed (taken once, in `main`): a predecessor's fd store (connections,
    // listeners and their record, see `handover`) and socket activation's listeners
    // (`io_conn.socket`). Or connections handed over by the io_conn we take over (--takeover).
    let (received, mut successor_of, activation) = if args.takeover {
        let (old, path) = running_io_conn(&cfg)?;
        log::info!("taking over from io_conn pid {} ({})", old.pid, path.display());
        let (sock, r) = io_conn::handover::receive_from(&path, old.pid, cfg.io_conn.drain_deadline)
            .with_context(|| format!("taking over from io_conn pid {}", old.pid))?;
        (r, Some((old, sock)), inherited)
    } else {
        let (r, others) =
            io_conn::handover::take_stored(inherited).context("reading systemd's fd store")?;
        (r, None, others)
    };
    let mut matched = io_conn::handover::match_record(received);

    // Socket activation: systemd holds the listening sockets and passes them on every start; the
    // config's listeners must match them one to one. Otherwise: a predecessor's listener for the
    // address (handover), or a fresh bind.
    let activated = !activation.is_empty();
    let listeners = if activated {
        log::info!("socket activation: {} sockets from systemd", activation.len());
        io_conn::activation::match_listeners(&cfg.io_conn.listeners, activation)?
    } else {
        let mut listeners = Vec::with_capacity(cfg.io_conn.listeners.len());
        for l in &cfg.io_conn.listeners {
            let sock = match matched.take_listener(l.address) {
                Some(sock) => sock,
                None => io_conn::bind_listener(l.address, cfg.io_conn.backlog)
                    .with_context(|| format!("binding {} ({})", l.address, l.service))?,
            };
            listeners.push((sock, l.clone()));
        }
        listeners
    };
    let mut out = std::io::stdout().lock();
    let mut status = String::from("listening on");
    for (sock, l) in &listeners {
        let local = sock.local_addr().context("getsockname")?;
        writeln!(out, "listening {local} {} {}", l.service, l.framing())?;
        status.push_str(&format!(" {local} ({})", l.service));
    }
    out.flush()?;
    drop(out);
    let addrs: Vec<_> = listeners.iter().filter_map(|(s, _)| s.local_addr().ok()).collect();
    matched.bind_listeners(&addrs);
    if !matched.listeners.is_empty() {
        // Under socket activation systemd passed its own copies of them (preferred).
        if !activated {
            log::warn!(
                "closing {} handed-over listeners the config no longer has",
                matched.listeners.len()
            );
        }
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
    let opts = io_conn::Options {
        shutdown: None,
        signals: true,
        spawn,
        adopt: matched.flows,
        config_path: args.config.clone(),
        activated,
        control: true,
    };
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
