//! [`ConfigError`]: why a config could not be loaded, with the file, line and key.

use std::fmt;
use std::io;

/// What kind of problem a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read ([`std::error::Error::source`] has the `io::Error`).
    Io,
    /// Not valid TOML.
    Syntax,
    /// Valid TOML that does not fit the schema: an unknown key, a wrong type, a bad size,
    /// duration, address or enum value.
    Schema,
    /// Fits the schema, but a value is out of range or conflicts with another one (found by
    /// [`crate::Config::validate`]).
    Invalid,
}

/// Why a config could not be loaded or is not valid.
///
/// `Display` gives one line that names where and what:
/// `config/shmsrv.toml:12: io_conn.idle_timeout: invalid duration "30 parsecs" (...)`.
///
/// - the origin is the file path (or the `origin` passed to
///   [`Config::from_toml_str`](crate::Config::from_toml_str)); errors from
///   [`Config::validate`](crate::Config::validate) called directly have none;
/// - the line is 1-based; for a key the file does not set (an invalid default, or a default
///   that conflicts with another value) it is the line of the nearest enclosing table the file
///   does have, and the key is followed by `(default)`;
/// - the key is a dotted path, listeners zero-based: `io_conn.listener[1].address`.
#[derive(Debug)]
pub struct ConfigError {
    pub(crate) kind: ErrorKind,
    pub(crate) origin: String,
    pub(crate) line: Option<usize>,
    pub(crate) key: Option<String>,
    /// The key is not written in the file: its default value is the culprit.
    pub(crate) defaulted: bool,
    pub(crate) message: String,
    pub(crate) source: Option<io::Error>,
}

impl ConfigError {
    pub(crate) fn new(kind: ErrorKind, key: Option<String>, message: String) -> Self {
        Self {
            kind,
            origin: String::new(),
            line: None,
            key,
            defaulted: false,
            message,
            source: None,
        }
    }

    pub(crate) fn io(origin: String, source: io::Error) -> Self {
        Self {
            kind: ErrorKind::Io,
            origin,
            line: None,
            key: None,
            defaulted: false,
            message: "cannot read config file".to_owned(),
            source: Some(source),
        }
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file (or other origin) the config came from; empty if none.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The 1-based line the problem is on, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The dotted key, e.g. `io_conn.listener[1].address`, when known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Whether the key is absent from the file, so its default value is at fault.
    pub fn is_default(&self) -> bool {
        self.defaulted
    }

    /// What is wrong, without origin, line or key.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.origin.is_empty() {
            f.write_str(&self.origin)?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            f.write_str(": ")?;
        }
        if let Some(key) = &self.key {
            f.write_str(key)?;
            if self.defaulted {
                f.write_str(" (default)")?;
            }
            f.write_str(": ")?;
        }
        // An io failure's cause is left to `Error::source` (house style): anyhow's `{:#}`
        // prints the chain without repeating it.
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}
