//! `[service.NAME]`: a service's own settings, free-form TOML.
//!
//! Every other section of the schema is strict; these tables are not checked here beyond their
//! names, because only the service knows its keys. The md binary that serves `NAME` reads its
//! table ([`Config::service`]) and checks it itself (md's `Service::configure`, at start, under
//! `--check-config` and on every reload); an error it reports names the key as
//! `service.NAME.key` and is located in the file like a load error ([`Config::setting_error`]).
//!
//! The loader checks that `NAME` is a valid service name that some listener serves, so a
//! misspelt section (`[service.uper]`) is an error rather than a silently ignored table.
//!
//! ```
//! let cfg = config::Config::from_toml_str(
//!     "[[io_conn.listener]]\naddress = \"127.0.0.1:7070\"\nservice = \"upper\"\n\
//!      framing = \"line\"\n\n[service.upper]\nsuffix = \"!\"\n",
//!     "x.toml",
//! )
//! .unwrap();
//! let upper = cfg.service("upper").unwrap();
//! assert_eq!(upper.get("suffix").and_then(|v| v.as_str()), Some("!"));
//! assert!(cfg.service("echo").is_none());
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::validate::{Invalid, name_ok};
use crate::{Config, MAX_NAME_LEN};

/// One `[service.NAME]` table: whatever keys and values the service defines.
pub type ServiceSection = toml::Table;

/// Every `[service.NAME]` table of the file, by `NAME`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Services(pub BTreeMap<String, ServiceSection>);

// `Config` is `Eq`; TOML values are only `PartialEq` because of floats. A NaN makes a section
// unequal to itself, which at worst makes a reload report that section as changed (a live
// change md applies again): harmless, so the section is treated as `Eq`.
impl Eq for Services {}

impl Services {
    /// No `[service.*]` table at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names of the sections, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl Config {
    /// The `[service.NAME]` table of `name`, if the file has one.
    pub fn service(&self, name: &str) -> Option<&ServiceSection> {
        self.service.0.get(name)
    }

    /// An error in a service's own settings, found by the service (not by the schema): `key` is
    /// the dotted key, `service.NAME.key` (or `service.NAME` for the whole section). With `file`
    /// (the config's path) it names the file and the line the key is on (or its table's, when
    /// the key is missing) like a load error; without, the origin is the built-in defaults.
    pub fn setting_error(file: Option<&Path>, key: &str, message: &str) -> ConfigError {
        let inv = Invalid::new(key, message);
        match file {
            Some(path) => crate::locate_in_file(inv, path),
            None => {
                let mut e = inv.into_error();
                e.origin = "(built-in defaults)".to_owned();
                e
            }
        }
    }

    /// `[service.NAME]`: a valid name that a listener serves.
    pub(crate) fn check_services(&self) -> Result<(), Invalid> {
        for name in self.service.names() {
            let key = format!("service.{name}");
            if !name_ok(name) {
                return Err(Invalid::new(
                    key,
                    format!(
                        "{name:?} is not a valid service name (1..={MAX_NAME_LEN} characters of \
                         A-Z a-z 0-9 _ -)"
                    ),
                ));
            }
            if !self.io_conn.listeners.iter().any(|l| l.service == name) {
                return Err(Invalid::new(
                    key,
                    format!(
                        "no [[io_conn.listener]] has service = {name:?}: a [service.NAME] \
                         section holds the settings of a service a listener serves"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPPER: &str = "[[io_conn.listener]]\naddress = \"127.0.0.1:7070\"\nservice = \"upper\"\n\
                         framing = \"line\"\n";

    #[test]
    fn free_form_values_round_trip() {
        let text = format!(
            "{UPPER}\n[service.upper]\nsuffix = \"!\"\nratio = 0.5\nwords = [\"a\", \"b\"]\n\
             [service.upper.nested]\ndepth = 2\n"
        );
        let cfg = Config::from_toml_str(&text, "x.toml").unwrap();
        let s = cfg.service("upper").unwrap();
        assert_eq!(s["suffix"].as_str(), Some("!"));
        assert_eq!(s["ratio"].as_float(), Some(0.5));
        assert_eq!(s["nested"]["depth"].as_integer(), Some(2));
        // Written out and read back: the same config.
        let back = Config::from_toml_str(&cfg.to_toml(), "back.toml").unwrap();
        assert_eq!(back, cfg);
        // Without a section, none is written.
        assert!(!Config::default().to_toml().contains("[service"));
    }

    #[test]
    fn section_needs_a_listener_and_a_valid_name() {
        let e = Config::from_toml_str("[service.uper]\nsuffix = \"!\"\n", "x.toml").unwrap_err();
        assert_eq!(e.key(), Some("service.uper"));
        assert_eq!(e.line(), Some(1));
        assert!(e.to_string().contains("no [[io_conn.listener]] has service = \"uper\""), "{e}");
        let e = Config::from_toml_str("[service.\"a b\"]\nx = 1\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("not a valid service name"), "{e}");
        // A value that is not a table is a schema error.
        let e = Config::from_toml_str("service = 3\n", "x.toml").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Schema, "{e}");
        let e = Config::from_toml_str("[service]\nupper = 3\n", "x.toml").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Schema, "{e}");
    }

    #[test]
    fn setting_errors_are_located() {
        let dir = std::env::temp_dir().join(format!("config-service-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, format!("{UPPER}\n[service.upper]\nsuffix = 7\n")).unwrap();
        let e = Config::setting_error(Some(&path), "service.upper.suffix", "expected a string");
        assert_eq!(
            e.to_string(),
            format!("{}:7: service.upper.suffix: expected a string", path.display())
        );
        // A key the file lacks: the line of its table, marked as the default.
        let e = Config::setting_error(Some(&path), "service.upper.limit", "required");
        assert_eq!(
            e.to_string(),
            format!("{}:6: service.upper.limit (default): required", path.display())
        );
        let e = Config::setting_error(None, "service.upper.suffix", "required");
        assert_eq!(e.to_string(), "(built-in defaults): service.upper.suffix: required");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
