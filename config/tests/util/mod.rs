//! Helpers shared by the config integration tests: load a bad file, check its error.
#![allow(dead_code, unreachable_pub)]

use config::{Config, ErrorKind};

/// Loads `text` as `t.toml` and returns the error, which must exist.
pub fn bad(text: &str) -> config::ConfigError {
    match Config::from_toml_str(text, "t.toml") {
        Ok(cfg) => panic!("accepted:\n{text}\nas {cfg:?}"),
        Err(e) => e,
    }
}

/// Asserts the error of `text` has this kind, key and line, and that its message contains
/// `needle`; also that Display is `t.toml:<line>: <key>...: <message>`.
#[track_caller]
pub fn expect(text: &str, kind: ErrorKind, key: Option<&str>, line: usize, needle: &str) {
    let e = bad(text);
    let shown = e.to_string();
    assert_eq!(e.kind(), kind, "{shown}");
    assert_eq!(e.key(), key, "{shown}");
    assert_eq!(e.line(), Some(line), "{shown}");
    assert!(e.message().contains(needle), "{shown:?} lacks {needle:?}");
    let prefix = match key {
        Some(k) => format!("t.toml:{line}: {k}"),
        None => format!("t.toml:{line}: "),
    };
    assert!(shown.starts_with(&prefix), "{shown:?} does not start with {prefix:?}");
    assert!(!shown.contains('\n'), "{shown:?}");
}
