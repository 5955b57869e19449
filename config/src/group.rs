//! Service groups (`[[md.group]]`): which md instances serve which services, and which binary
//! they run.
//!
//! ```toml
//! [[md.group]]
//! services = ["dumb", "echo", "http", "kv", "reverse"]
//! instances = "0-5"          # "a-b" (inclusive), "n", or a list: [0, 2, 3]
//!
//! [[md.group]]
//! services = ["chat"]
//! instances = [6, 7]
//! binary = "/usr/local/bin/chat-md"   # "" or left out: the md binary
//! ```
//!
//! Without any `[[md.group]]` every instance serves every service (one implicit group, the md
//! binary). With groups, an instance in no group serves nothing: io_conn routes nothing to it.
//!
//! Rules ([`Config::validate`]): a group has at least one service and one instance; a service
//! appears in one group only (so a request's service names exactly one group); groups do not
//! share an instance; every instance is below `md.max_instances`; `binary` is empty or an
//! absolute path; and every listener's service is served by some group. Whether a `binary` exists
//! is a property of the machine, not of the file: [`Config::check_binaries`] checks it (io_conn
//! calls it on `--check-config` and before `--spawn-md`; md before it execs a group's binary).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::validate::{Invalid, name_ok};
use crate::{Config, MAX_MD_INSTANCES, MAX_NAME_LEN};

/// One `[[md.group]]`: a set of md instances that serve a set of services with one binary.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The services its instances serve (listener `service` names); at least one, each in no
    /// other group. Required.
    pub services: Vec<String>,
    /// The md instances of the group, all below `md.max_instances`, in no other group. Required.
    pub instances: Instances,
    /// The executable its instances run; empty (or left out) = the md binary (see
    /// [`Config::binary_for`]). Otherwise an absolute path. It is started as
    /// `BINARY [--config PATH] --instance N`, like md.
    #[serde(default)]
    pub binary: PathBuf,
}

impl Group {
    /// Whether this group serves `service`.
    pub fn serves(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }

    /// The explicit binary, if the group names one.
    pub fn binary(&self) -> Option<&Path> {
        (!self.binary.as_os_str().is_empty()).then_some(self.binary.as_path())
    }

    /// A short label for logs and viewers: `dumb,echo,reverse`.
    pub fn label(&self) -> String {
        self.services.join(",")
    }
}

/// The `instances` of a group: an inclusive range (`"0-5"`, `"3"`) or a list (`[0, 2, 3]`).
///
/// Parsing is strict: decimal digits only (no sign, spaces or other separators), `a <= b`, a
/// list non-empty and without repeats. Serialized back the way it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instances {
    /// `"a-b"`: `first..=last` (`"n"` is `n..=n`).
    Range {
        /// First instance.
        first: u32,
        /// Last instance (inclusive), `>= first`.
        last: u32,
    },
    /// `[a, b, ...]`: these instances, in the order written.
    List(Vec<u32>),
}

impl Instances {
    /// Whether `instance` is one of them.
    pub fn contains(&self, instance: u32) -> bool {
        match self {
            Self::Range { first, last } => (*first..=*last).contains(&instance),
            Self::List(v) => v.contains(&instance),
        }
    }

    /// The instances, ascending for a range, as written for a list.
    pub fn iter(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match self {
            Self::Range { first, last } => Box::new(*first..=*last),
            Self::List(v) => Box::new(v.iter().copied()),
        }
    }

    /// The largest instance.
    pub fn max(&self) -> Option<u32> {
        self.iter().max()
    }
}

impl fmt::Display for Instances {
    /// As written in the file: `0-5`, `3`, `[0, 2, 3]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Range { first, last } if first == last => write!(f, "{first}"),
            Self::Range { first, last } => write!(f, "{first}-{last}"),
            Self::List(v) => {
                f.write_str("[")?;
                for (k, i) in v.iter().enumerate() {
                    if k > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{i}")?;
                }
                f.write_str("]")
            }
        }
    }
}

const INSTANCES_HINT: &str =
    "expected \"a-b\" (a range, a <= b), \"n\" (one instance) or a list like [0, 2, 3]";

/// A decimal instance number: digits only, at most [`MAX_MD_INSTANCES`]-ish in size.
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses the string form: `"a-b"` or `"n"`.
pub fn parse_instances(s: &str) -> Result<Instances, String> {
    let bad = || format!("invalid instances {s:?} ({INSTANCES_HINT})");
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (parse_number(a).ok_or_else(bad)?, parse_number(b).ok_or_else(bad)?),
        None => {
            let n = parse_number(s).ok_or_else(bad)?;
            (n, n)
        }
    };
    if first > last {
        return Err(format!(
            "invalid instances {s:?}: the range is backwards (write \"{last}-{first}\")"
        ));
    }
    Ok(Instances::Range { first, last })
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Instances;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(INSTANCES_HINT)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Instances, E> {
                parse_instances(s).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Instances, E> {
                let n = u32::try_from(n).map_err(|_| {
                    E::custom(format!("invalid instance {n} (instances are 0 or more)"))
                })?;
                Ok(Instances::Range { first: n, last: n })
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Instances, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(-1))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Instances, A::Error> {
                let mut v: Vec<u32> = Vec::new();
                while let Some(n) = seq.next_element::<i64>()? {
                    let n = u32::try_from(n).map_err(|_| {
                        de::Error::custom(format!("invalid instance {n} (instances are 0 or more)"))
                    })?;
                    if v.contains(&n) {
                        return Err(de::Error::custom(format!("instance {n} is listed twice")));
                    }
                    v.push(n);
                }
                if v.is_empty() {
                    return Err(de::Error::custom(
                        "empty list: a group needs at least one instance",
                    ));
                }
                Ok(Instances::List(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Instances {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Range { .. } => s.serialize_str(&self.to_string()),
            Self::List(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for i in v {
                    seq.serialize_element(&i64::from(*i))?;
                }
                seq.end()
            }
        }
    }
}

/// Routing and launching by group: what io_conn and md ask the config.
impl Config {
    /// The `[[md.group]]` tables, in file order (empty: every instance serves every service).
    pub fn groups(&self) -> &[Group] {
        &self.md.groups
    }

    /// The group of md instance `instance`: `None` when there are no groups (every instance
    /// serves everything) or when no group lists it (it serves nothing).
    pub fn group_of(&self, instance: u32) -> Option<&Group> {
        self.group_index_of(instance).map(|k| &self.md.groups[k])
    }

    /// Index (in file order, `md.group[k]`) of the group of `instance`; see [`Config::group_of`].
    pub fn group_index_of(&self, instance: u32) -> Option<usize> {
        self.md.groups.iter().position(|g| g.instances.contains(instance))
    }

    /// The group that serves `service`, if there are groups and one lists it.
    pub fn group_for_service(&self, service: &str) -> Option<&Group> {
        self.md.groups.iter().find(|g| g.serves(service))
    }

    /// Whether md instance `instance` serves `service`: with no groups, every instance below
    /// `md.max_instances` serves every service; otherwise only the instances of the service's
    /// group do.
    pub fn serves(&self, instance: u32, service: &str) -> bool {
        if instance >= self.md.max_instances {
            return false;
        }
        if self.md.groups.is_empty() {
            return true;
        }
        self.group_of(instance).is_some_and(|g| g.serves(service))
    }

    /// The md instances that serve `service`, ascending: `0..md.max_instances` with no groups,
    /// else its group's instances (empty if no group serves it, which a validated config rules
    /// out for every listener's service).
    pub fn instances_for(&self, service: &str) -> Vec<u32> {
        if self.md.groups.is_empty() {
            return (0..self.md.max_instances).collect();
        }
        let mut v: Vec<u32> = self
            .group_for_service(service)
            .map(|g| g.instances.iter().filter(|&i| i < self.md.max_instances).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// The binary instance `instance`'s group names explicitly (`binary = "/path"`), if any.
    pub fn group_binary(&self, instance: u32) -> Option<&Path> {
        self.group_of(instance).and_then(Group::binary)
    }

    /// The executable md instance `instance` runs: its group's `binary`, else `default_md` (the
    /// md binary; io_conn passes `io_conn::md_binary()`: `$SHMSRV_MD_BIN`, else `md` next to
    /// io_conn).
    pub fn binary_for(&self, instance: u32, default_md: &Path) -> PathBuf {
        self.group_binary(instance).unwrap_or(default_md).to_owned()
    }

    /// Checks that every group's explicit `binary` is an executable file on this machine.
    ///
    /// Not part of [`Config::validate`] (md and viewstats load configs written for other
    /// machines): io_conn runs it on `--check-config` and before `--spawn-md`, md on
    /// `--check-config` and before it execs. With `file` (the config's path) the error names its
    /// file and line like a load error; without, only the key.
    pub fn check_binaries(&self, file: Option<&Path>) -> Result<(), ConfigError> {
        for (k, g) in self.md.groups.iter().enumerate() {
            if let Err(inv) = check_binary(k, g) {
                return Err(match file {
                    Some(path) => crate::locate_in_file(inv, path),
                    None => inv.into_error(),
                });
            }
        }
        Ok(())
    }

    /// `md.group: ...` for [`Config::summary`]: `all instances serve every service` without
    /// groups, else `[0-5:dumb,echo,reverse 6,7:chat@/path]`.
    pub(crate) fn groups_summary(&self) -> String {
        if self.md.groups.is_empty() {
            return "all instances serve every service".to_owned();
        }
        let parts: Vec<String> = self
            .md
            .groups
            .iter()
            .map(|g| {
                let instances = match &g.instances {
                    Instances::List(v) => {
                        v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                    }
                    range => range.to_string(),
                };
                let mut s = format!("{instances}:{}", g.label());
                if let Some(b) = g.binary() {
                    s.push('@');
                    s.push_str(&b.display().to_string());
                }
                s
            })
            .collect();
        format!("[{}]", parts.join(" "))
    }

    /// The `[[md.group]]` rules (see the module docs). Run after `md.max_instances` is checked.
    pub(crate) fn check_groups(&self) -> Result<(), Invalid> {
        let max = self.md.max_instances;
        for (k, g) in self.md.groups.iter().enumerate() {
            let key = |field: &str| format!("md.group[{k}].{field}");
            if g.services.is_empty() {
                return Err(Invalid::new(
                    key("services"),
                    "empty list: a group serves at least one service",
                ));
            }
            for (n, s) in g.services.iter().enumerate() {
                if !name_ok(s) {
                    return Err(Invalid::new(
                        key("services"),
                        format!(
                            "{s:?} is not a valid service name (1..={MAX_NAME_LEN} characters of \
                             A-Z a-z 0-9 _ -)"
                        ),
                    ));
                }
                if g.services[..n].contains(s) {
                    return Err(Invalid::new(key("services"), format!("`{s}` is listed twice")));
                }
                if let Some(j) = self.md.groups[..k].iter().position(|o| o.serves(s)) {
                    return Err(Invalid::new(
                        key("services"),
                        format!(
                            "`{s}` is also served by md.group[{j}] (a service belongs to one \
                             group)"
                        ),
                    ));
                }
            }
            if let Some(bad) = g.instances.iter().find(|&i| i >= max) {
                return Err(Invalid::new(
                    key("instances"),
                    format!(
                        "instance {bad} is not below md.max_instances = {max} (instances are \
                         0..={}; raise md.max_instances, at most {MAX_MD_INSTANCES})",
                        max - 1
                    ),
                )
                .also("md.max_instances"));
            }
            for j in 0..k {
                let other = &self.md.groups[j].instances;
                if let Some(i) = g.instances.iter().find(|&i| other.contains(i)) {
                    return Err(Invalid::new(
                        key("instances"),
                        format!(
                            "instance {i} is also in md.group[{j}].instances = {other} (groups \
                             must not overlap)"
                        ),
                    ));
                }
            }
            if !g.binary.as_os_str().is_empty() && !g.binary.is_absolute() {
                return Err(Invalid::new(
                    key("binary"),
                    format!(
                        "{:?} is not an absolute path (or \"\" for the md binary)",
                        g.binary.display().to_string()
                    ),
                ));
            }
        }
        if self.md.groups.is_empty() {
            return Ok(());
        }
        for (i, l) in self.io_conn.listeners.iter().enumerate() {
            if self.group_for_service(&l.service).is_none() {
                return Err(Invalid::new(
                    format!("io_conn.listener[{i}].service"),
                    format!(
                        "no [[md.group]] serves `{}`: add it to a group's services (with groups, \
                         an instance serves only its group's services)",
                        l.service
                    ),
                )
                .also("md.group"));
            }
        }
        Ok(())
    }
}

fn check_binary(k: usize, g: &Group) -> Result<(), Invalid> {
    use std::os::unix::fs::PermissionsExt;
    let Some(bin) = g.binary() else { return Ok(()) };
    let key = format!("md.group[{k}].binary");
    match std::fs::metadata(bin) {
        Err(e) => Err(Invalid::new(key, format!("{}: {e}", bin.display()))),
        Ok(m) if !m.is_file() => {
            Err(Invalid::new(key, format!("{} is not a regular file", bin.display())))
        }
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err(Invalid::new(key, format!("{} is not executable", bin.display())))
        }
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(services: &[&str], instances: Instances, binary: &str) -> Group {
        Group {
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            instances,
            binary: binary.into(),
        }
    }

    fn range(first: u32, last: u32) -> Instances {
        Instances::Range { first, last }
    }

    /// Built-ins on 0-3, `chat` (a custom binary) on 5 and 7; 4 and 6 in no group.
    fn two_groups() -> Config {
        let mut cfg = Config::default();
        cfg.md.groups = vec![
            group(&["dumb", "echo", "http", "kv", "reverse"], range(0, 3), ""),
            group(&["chat"], Instances::List(vec![7, 5]), "/opt/chat-md"),
        ];
        cfg
    }

    #[test]
    fn parse_instances_strictly() {
        assert_eq!(parse_instances("0-5"), Ok(range(0, 5)));
        assert_eq!(parse_instances("3"), Ok(range(3, 3)));
        assert_eq!(parse_instances("4-4"), Ok(range(4, 4)));
        for bad in ["", "-", "0-", "-3", "a", "1 - 2", " 1", "1,2", "0-5-6", "+1", "1.5", "0x1"] {
            let e = parse_instances(bad).unwrap_err();
            assert!(e.contains("expected \"a-b\""), "{bad:?}: {e}");
        }
        let e = parse_instances("5-3").unwrap_err();
        assert!(e.contains("backwards (write \"3-5\")"), "{e}");
        assert!(parse_instances("99999999999").is_err());
    }

    #[test]
    fn instances_display_as_written() {
        assert_eq!(range(0, 5).to_string(), "0-5");
        assert_eq!(range(2, 2).to_string(), "2");
        assert_eq!(Instances::List(vec![0, 2, 3]).to_string(), "[0, 2, 3]");
        assert_eq!(Instances::List(vec![7, 5]).iter().collect::<Vec<_>>(), [7, 5]);
        assert_eq!(range(1, 3).iter().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(Instances::List(vec![7, 5]).max(), Some(7));
    }

    #[test]
    fn without_groups_every_instance_serves_everything() {
        let cfg = Config::default();
        assert!(cfg.groups().is_empty());
        assert_eq!(cfg.group_of(0), None);
        assert!(cfg.serves(0, "echo") && cfg.serves(7, "anything"));
        assert!(!cfg.serves(8, "echo"), "beyond md.max_instances");
        assert_eq!(cfg.instances_for("dumb"), (0..8).collect::<Vec<_>>());
        assert_eq!(cfg.binary_for(3, Path::new("/bin/md")), Path::new("/bin/md"));
        assert_eq!(cfg.group_binary(3), None);
        cfg.check_binaries(None).unwrap();
    }

    #[test]
    fn routing_api() {
        let cfg = two_groups();
        cfg.validate().unwrap();
        assert_eq!(cfg.group_index_of(2), Some(0));
        assert_eq!(cfg.group_index_of(5), Some(1));
        assert_eq!(cfg.group_index_of(4), None);
        assert_eq!(cfg.group_of(7).map(Group::label).as_deref(), Some("chat"));
        assert!(cfg.serves(0, "dumb") && cfg.serves(3, "reverse"));
        assert!(!cfg.serves(0, "chat") && !cfg.serves(5, "echo"));
        assert!(!cfg.serves(4, "echo") && !cfg.serves(6, "chat"), "instances in no group");
        assert!(cfg.serves(7, "chat"));
        assert_eq!(cfg.instances_for("echo"), [0, 1, 2, 3]);
        assert_eq!(cfg.instances_for("chat"), [5, 7]);
        assert!(cfg.instances_for("nope").is_empty());
        assert_eq!(
            cfg.group_for_service("reverse").map(Group::label).as_deref(),
            Some("dumb,echo,http,kv,reverse")
        );
        let md = Path::new("/usr/local/bin/md");
        assert_eq!(cfg.binary_for(1, md), md);
        assert_eq!(cfg.binary_for(4, md), md, "no group: the md binary");
        assert_eq!(cfg.binary_for(5, md), Path::new("/opt/chat-md"));
        assert_eq!(cfg.group_binary(7), Some(Path::new("/opt/chat-md")));
        assert_eq!(cfg.groups_summary(), "[0-3:dumb,echo,http,kv,reverse 7,5:chat@/opt/chat-md]");
    }

    #[test]
    fn each_group_rule_names_its_key() {
        type Edit = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, &str, Edit)> = vec![
            ("md.group[1].services", "empty list", Box::new(|c| c.md.groups[1].services.clear())),
            (
                "md.group[1].services",
                "not a valid service name",
                Box::new(|c| c.md.groups[1].services.push("a b".into())),
            ),
            (
                "md.group[1].services",
                "`chat` is listed twice",
                Box::new(|c| c.md.groups[1].services.push("chat".into())),
            ),
            (
                "md.group[1].services",
                "`echo` is also served by md.group[0]",
                Box::new(|c| c.md.groups[1].services.push("echo".into())),
            ),
            (
                "md.group[1].instances",
                "instance 8 is not below md.max_instances = 8",
                Box::new(|c| c.md.groups[1].instances = range(6, 8)),
            ),
            (
                "md.group[0].instances",
                "instance 3 is not below md.max_instances = 3",
                Box::new(|c| c.md.max_instances = 3),
            ),
            (
                "md.group[1].instances",
                "instance 3 is also in md.group[0].instances = 0-3 (groups must not overlap)",
                Box::new(|c| c.md.groups[1].instances = Instances::List(vec![5, 3])),
            ),
            (
                "md.group[1].binary",
                "not an absolute path",
                Box::new(|c| c.md.groups[1].binary = "target/chat".into()),
            ),
            (
                "io_conn.listener[1].service",
                "no [[md.group]] serves `reverse`",
                Box::new(|c| c.md.groups[0].services.retain(|s| s != "reverse")),
            ),
        ];
        for (key, needle, edit) in cases {
            let mut cfg = two_groups();
            edit(&mut cfg);
            let e = cfg.validate().unwrap_err();
            assert_eq!(e.key(), Some(key), "{e}");
            assert!(e.message().contains(needle), "{e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn check_binaries_finds_missing_and_non_executable_files() {
        let mut cfg = two_groups();
        let e = cfg.check_binaries(None).unwrap_err();
        assert_eq!(e.key(), Some("md.group[1].binary"));
        assert!(e.to_string().starts_with("md.group[1].binary: /opt/chat-md: "), "{e}");
        cfg.md.groups[1].binary = "/".into();
        assert!(cfg.check_binaries(None).unwrap_err().message().contains("not a regular file"));
        let dir = std::env::temp_dir().join(format!("shmsrv-group-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("md-like");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        cfg.md.groups[1].binary = file.clone();
        let e = cfg.check_binaries(None).unwrap_err();
        assert!(e.message().ends_with("is not executable"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        cfg.check_binaries(None).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
