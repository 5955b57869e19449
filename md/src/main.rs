//! `md --config PATH --instance N [--check-config]`: the built-in services (`echo`, `reverse`,
//! `dumb`) on instance N's queue pair. Thin: the command line, config, logging, signals
//! and serving are [`md::cli`]'s, shared with every custom md binary ([`md::Program`]).
//!
//! **Group binaries.** When instance N's `[[md.group]]` names another `binary`, md does not serve
//! the built-ins: it execs `BINARY [--config PATH] --instance N` (the arguments `io_conn
//! --spawn-md` passes), keeping its pid, so systemd's `md@N` (which always runs md) starts the
//! right program without per-instance units. The exec'd process gets `SHMSRV_MD_EXEC_FROM` set to
//! this executable; an md that finds it set (a group binary that runs md again, e.g. a wrapper
//! script) serves the built-ins instead of exec'ing a second time, so a loop is impossible.
//!
//! Exit status: 0 after SIGTERM/SIGINT, 1 on an error, 2 for a bad config or instance, 3 when
//! another live md already holds instance N (`instance N is held by md pid P`).
#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use md::services::{Builtin, DumbOptions, HttpOptions, KvOptions};
use md::{Failure, Setup};

fn main() -> ExitCode {
    md::Program::new()
        .about("shmsrv logic process: serves the built-in services on one md instance's queue pair")
        .run(|setup| {
            exec_group_binary(setup)?;
            let cfg = setup.config();
            Ok(Builtin::new(DumbOptions::from(&cfg.md.dumb))
                .with_http(HttpOptions::from(cfg))
                .with_kv(KvOptions::from_config(cfg)))
        })
}

/// Env var set on a group binary md execs: the md executable that exec'd it.
const EXEC_FROM: &str = "SHMSRV_MD_EXEC_FROM";

/// Whether `a` and `b` name the same file (both resolved; false if either cannot be).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Execs instance N's group binary if its group names one that is not this executable. Returns
/// `Ok(())` to go on serving the built-ins here (always under `--check-config`, which only checks
/// that the group binaries exist), or the failure if the exec failed.
fn exec_group_binary(setup: &Setup<'_>) -> Result<(), Failure> {
    let (cfg, i) = (setup.config(), setup.instance());
    if setup.check_only() {
        // md execs group binaries: they must exist here.
        return cfg.check_binaries(setup.config_path()).map_err(Failure::config);
    }
    if cfg.group_of(i).is_none() && !cfg.groups().is_empty() {
        log::warn!("md instance {i} is in no [[md.group]]: io_conn will route nothing to it");
    }
    let Some(k) = cfg.group_index_of(i) else { return Ok(()) };
    let group = &cfg.groups()[k];
    let Some(bin) = group.binary() else {
        // The md binary serves the group: warn about services it does not have.
        for s in group.services.iter().filter(|s| config::default_framing(s).is_none()) {
            log::warn!(
                "md.group[{k}] lists service `{s}`, which the md binary does not serve (its \
                 flows will be closed); set md.group[{k}].binary to a binary that serves it"
            );
        }
        return Ok(());
    };
    let me = std::env::current_exe().ok();
    if me.as_deref().is_some_and(|me| same_file(me, bin)) {
        return Ok(());
    }
    if let Some(from) = std::env::var_os(EXEC_FROM) {
        log::warn!(
            "md instance {i}: already exec'd by {} ({EXEC_FROM} is set), yet md.group[{k}].binary \
             = {} is not this executable: serving the built-in services here instead of \
             exec'ing again",
            PathBuf::from(from).display(),
            bin.display()
        );
        return Ok(());
    }
    cfg.check_binaries(setup.config_path()).map_err(Failure::config)?;
    let mut cmd = Command::new(bin);
    if let Some(c) = setup.config_path() {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("--instance").arg(i.to_string());
    cmd.env(EXEC_FROM, me.unwrap_or_default());
    log::info!("md instance {i}: exec {:?} (md.group[{k}].binary)", cmd);
    // The signal mask survives exec: give the new program the mask md started with.
    setup.signal_mask().thread_unblock().map_err(|e| {
        Failure::error(format!("md instance {i}: unblocking signals before exec: {e}"))
    })?;
    let e = cmd.exec();
    Err(Failure::error(format!("md instance {i}: exec {} failed: {e}", bin.display())))
}
