//! Reloading md's config on SIGHUP (`systemctl reload md@N`, `md --reload`): the live settings
//! of `[md]` (`md.spin`, `md.slice`, `md.drain_deadline`, `md.log_level`) and of the service
//! (its `[service.NAME]` table through [`crate::Service::configure`], `md.dumb.*` for the
//! built-ins through [`crate::Service::reload`]) change at once, keeping every flow. The service
//! may refuse its new settings: that refuses the whole reload, as a restart-only key does.
//!
//! The file is loaded and validated exactly as at start (and as `--check-config`); one that does
//! not validate changes nothing. [`config::diff_for`] with [`config::Program::Md`] classifies the
//! keys md cares about: any restart-only one (`[shared]`, `md.max_instances`) refuses the whole
//! reload, with one log line per key, and md keeps its old config. io_conn's keys are io_conn's
//! business (`systemctl reload io_conn`); a group's `binary` is what `md@N` execs at its next
//! start.
//!
//! The outcome is counted in md's stats block (`reloads_ok`, `reloads_refused`,
//! `config_generation`), which is what `md --reload` (the unit's `ExecReload=`) waits for: it
//! sends SIGHUP to the md of the instance and watches those counters, so `systemctl reload` fails
//! when md refused.

use std::path::PathBuf;

use config::{Config, Program};

use crate::SettingError;

/// The file md was started with and the config in effect.
#[derive(Debug, Clone)]
pub struct Reloader {
    path: Option<PathBuf>,
    current: Config,
    generation: u64,
}

/// How a reload ended.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// Applied: the new config (possibly unchanged) and its generation.
    Applied {
        /// The config now in effect.
        config: Box<Config>,
        /// Reloads applied since start.
        generation: u64,
    },
    /// Restart-only keys, or a file that does not validate: nothing changed.
    Refused,
}

impl Reloader {
    /// A reloader for the config `current`, read from `path` (None: the built-in defaults).
    pub fn new(path: Option<PathBuf>, current: Config) -> Self {
        Self { path, current, generation: 0 }
    }

    /// The config in effect.
    pub fn current(&self) -> &Config {
        &self.current
    }

    /// Reads and validates the file again and decides; logs the outcome (one line per refused
    /// key). `accept` is the service's [`crate::Service::configure`]: it sees the new config
    /// after md's own checks passed, and its error refuses the reload (logged with the file and
    /// line of the key).
    pub fn reload(
        &mut self,
        accept: impl FnOnce(&Config) -> Result<(), SettingError>,
    ) -> ReloadOutcome {
        let shown = self
            .path
            .as_ref()
            .map_or_else(|| "(built-in defaults)".into(), |p| p.display().to_string());
        log::info!("SIGHUP: reloading the config from {shown}");
        let new = match Config::load_or_default(self.path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload refused, the current config is kept: {e}");
                return ReloadOutcome::Refused;
            }
        };
        let changes = config::diff_for(&self.current, &new, Program::Md);
        if !changes.restart_only.is_empty() {
            for c in &changes.restart_only {
                log::error!("reload refused: {c} needs a restart; the current config is kept");
            }
            return ReloadOutcome::Refused;
        }
        if let Err(e) = accept(&new) {
            log::error!(
                "reload refused by the service: {}; the current config is kept",
                e.locate(self.path.as_deref())
            );
            return ReloadOutcome::Refused;
        }
        for c in &changes.live {
            log::info!("reload: {c}");
        }
        self.generation += 1;
        log::info!(
            "reload applied (config generation {}): {} changes",
            self.generation,
            changes.live.len()
        );
        self.current = new.clone();
        ReloadOutcome::Applied { config: Box::new(new), generation: self.generation }
    }
}

/// The log level of `md.log_level`, unless `RUST_LOG` decides (the binary sets its logger up
/// so).
pub fn set_log_level(level: config::LogLevel) {
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(level.filter());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_applies_and_refuses() {
        let dir = std::env::temp_dir().join(format!("md-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[md.dumb]\nburn_max = 10\n").unwrap();
        let cfg = Config::load(&path).unwrap();
        let mut r = Reloader::new(Some(path.clone()), cfg);
        // io_conn's keys are not md's: applied (as nothing for md).
        std::fs::write(&path, "[md.dumb]\nburn_max = 5\n[io_conn]\nmax_connections = 3\n").unwrap();
        match r.reload(|_| Ok(())) {
            ReloadOutcome::Applied { config, generation } => {
                assert_eq!(config.md.dumb.burn_max, 5);
                assert_eq!(generation, 1);
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, "[md.dumb]\nburn_max = 7\n[shared]\nqueue_size = \"4MiB\"\n")
            .unwrap();
        assert!(matches!(r.reload(|_| Ok(())), ReloadOutcome::Refused));
        assert_eq!(r.current().md.dumb.burn_max, 5, "nothing of a refused file applies");
        std::fs::write(&path, "[md.dumb]\nburn_max = \"x\"\n").unwrap();
        assert!(matches!(r.reload(|_| Ok(())), ReloadOutcome::Refused));
        assert_eq!(r.current().md.dumb.burn_max, 5);
        // A file md accepts but the service refuses (Service::configure): nothing applies.
        std::fs::write(&path, "[md.dumb]\nburn_max = 9\n").unwrap();
        let refuse = |c: &Config| {
            assert_eq!(c.md.dumb.burn_max, 9, "the service sees the new file");
            Err(SettingError::new("upper", "suffix", "too long"))
        };
        assert!(matches!(r.reload(refuse), ReloadOutcome::Refused));
        assert_eq!(r.current().md.dumb.burn_max, 5);
        match r.reload(|_| Ok(())) {
            ReloadOutcome::Applied { config, generation } => {
                assert_eq!(
                    (config.md.dumb.burn_max, generation),
                    (9, 2),
                    "refusals count no generation"
                );
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
