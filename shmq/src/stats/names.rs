//! Command names: how an md names the command slots of its block, and how a reader decodes them.
//!
//! The descriptor table is written once, by io_conn, but different md slots may run different
//! services. So the names of an md's request kinds live in the md's own block, in the names area
//! after its command counts ([`super::MD_NAMES_WORD`]): [`COMMAND_SLOTS`] names of
//! [`COMMAND_NAME_BYTES`] each. md writes them once, when it takes its slot
//! ([`super::MdStats::set_command_names`]), inside the block's sequence lock, so a reader sees
//! names and counts of the same md. The descriptors of the command counts point at their name
//! ([`super::DescEntry::name_word`]); a reader shows slot `i` named `dumb.ping` as
//! `commands.dumb.ping`, and the requests of kinds without a name as `commands.other`.
//!
//! # Encoding
//!
//! Name byte `k` is byte `k % 8` (little-endian) of word `k / 8` of the slot's area; unused bytes
//! are 0. All-zero means "no name". A name is 1 to [`COMMAND_NAME_BYTES`] bytes of ASCII letters,
//! digits, `_`, `.` and `-`, is not [`OTHER_COMMAND`], and is unique in its block.
//!
//! The segment is untrusted: [`decode_name`] checks all of that again and returns
//! [`NameArea::Garbage`] for anything else (bytes after the NUL, other characters), never panics.
//!
//! # Example
//!
//! ```
//! use shmq::stats::{NameArea, decode_name, encode_name};
//!
//! let words = encode_name("dumb.ping");
//! assert_eq!(decode_name(&words), NameArea::Name("dumb.ping".to_owned()));
//! assert_eq!(decode_name(&[0; 4]), NameArea::Empty);
//! assert_eq!(decode_name(&[u64::MAX; 4]), NameArea::Garbage);
//! ```

use std::fmt;

use super::abi::{COMMAND_NAME_BYTES, COMMAND_NAME_WORDS, COMMAND_SLOTS};

/// What a reader puts before a command name: slot `dumb.ping` is the counter
/// `commands.dumb.ping`.
pub const COMMANDS_PREFIX: &str = "commands.";
/// The name of the count of requests without a registered name (`commands.other`); no command
/// may take it.
pub const OTHER_COMMAND: &str = "other";

/// Why [`check_command_names`] refused a list of names (md then names no slot, and counts every
/// request as `other`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandNameError {
    /// More names than [`COMMAND_SLOTS`].
    TooMany {
        /// Names given.
        count: usize,
    },
    /// Name `index` is empty.
    Empty {
        /// Its index.
        index: usize,
    },
    /// Name `index` is longer than [`COMMAND_NAME_BYTES`].
    TooLong {
        /// Its index.
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
    /// Name `index` has a byte other than ASCII letters, digits, `_`, `.`, `-`.
    BadByte {
        /// Its index.
        index: usize,
        /// The first such byte.
        byte: u8,
    },
    /// Name `index` is [`OTHER_COMMAND`].
    Reserved {
        /// Its index.
        index: usize,
    },
    /// Name `index` repeats name `first`.
    Duplicate {
        /// Its index.
        index: usize,
        /// The earlier index with the same name.
        first: usize,
    },
}

impl fmt::Display for CommandNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooMany { count } => {
                write!(f, "{count} command names, a stats block has {COMMAND_SLOTS} slots")
            }
            Self::Empty { index } => write!(f, "command name {index} is empty"),
            Self::TooLong { index, len } => {
                write!(f, "command name {index} is {len} bytes (max {COMMAND_NAME_BYTES})")
            }
            Self::BadByte { index, byte } => write!(
                f,
                "command name {index} has byte {byte:#04x} (allowed: ASCII letters, digits, _ . -)"
            ),
            Self::Reserved { index } => {
                write!(f, "command name {index} is {OTHER_COMMAND:?}, which is reserved")
            }
            Self::Duplicate { index, first } => {
                write!(f, "command name {index} repeats command name {first}")
            }
        }
    }
}

impl std::error::Error for CommandNameError {}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

fn check_one(index: usize, name: &str) -> Result<(), CommandNameError> {
    if name.is_empty() {
        return Err(CommandNameError::Empty { index });
    }
    if name.len() > COMMAND_NAME_BYTES {
        return Err(CommandNameError::TooLong { index, len: name.len() });
    }
    if let Some(&byte) = name.as_bytes().iter().find(|&&b| !allowed(b)) {
        return Err(CommandNameError::BadByte { index, byte });
    }
    if name == OTHER_COMMAND {
        return Err(CommandNameError::Reserved { index });
    }
    Ok(())
}

/// Checks a service's command names (slot `i` gets `names[i]`): at most [`COMMAND_SLOTS`], each
/// valid (see the module docs), no two equal.
pub fn check_command_names(names: &[&str]) -> Result<(), CommandNameError> {
    if names.len() > COMMAND_SLOTS {
        return Err(CommandNameError::TooMany { count: names.len() });
    }
    for (index, name) in names.iter().enumerate() {
        check_one(index, name)?;
        if let Some(first) = names[..index].iter().position(|n| n == name) {
            return Err(CommandNameError::Duplicate { index, first });
        }
    }
    Ok(())
}

/// The words of one name area holding `name` (NUL-padded; a name longer than
/// [`COMMAND_NAME_BYTES`] is cut, so check it first with [`check_command_names`]).
pub fn encode_name(name: &str) -> [u64; COMMAND_NAME_WORDS] {
    let mut bytes = [0u8; COMMAND_NAME_BYTES];
    let n = name.len().min(COMMAND_NAME_BYTES);
    bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut words = [0u64; COMMAND_NAME_WORDS];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    words
}

/// What one name area holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameArea {
    /// All zero: the slot has no name (unused).
    Empty,
    /// A valid name.
    Name(String),
    /// Anything else: not a name this build would write (a corrupt or foreign writer).
    Garbage,
}

/// Decodes one name area (`words` should be [`COMMAND_NAME_WORDS`] long; any other length is
/// [`NameArea::Garbage`]). Never panics, whatever the bytes.
pub fn decode_name(words: &[u64]) -> NameArea {
    if words.len() != COMMAND_NAME_WORDS {
        return NameArea::Garbage;
    }
    let mut bytes = [0u8; COMMAND_NAME_BYTES];
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(COMMAND_NAME_BYTES);
    if bytes[len..].iter().any(|&b| b != 0) {
        return NameArea::Garbage;
    }
    if len == 0 {
        return NameArea::Empty;
    }
    match std::str::from_utf8(&bytes[..len]) {
        Ok(name) if check_one(0, name).is_ok() => NameArea::Name(name.to_owned()),
        _ => NameArea::Garbage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in ["echo", "dumb.ping", "a", "x-y_z.0", &"n".repeat(COMMAND_NAME_BYTES)] {
            assert_eq!(decode_name(&encode_name(name)), NameArea::Name(name.to_owned()), "{name}");
        }
        assert_eq!(decode_name(&[0; COMMAND_NAME_WORDS]), NameArea::Empty);
    }

    #[test]
    fn check_refuses_bad_lists() {
        assert_eq!(check_command_names(&[]), Ok(()));
        assert_eq!(check_command_names(&["echo", "dumb.ping"]), Ok(()));
        let many = vec!["x"; COMMAND_SLOTS + 1];
        assert_eq!(
            check_command_names(&many),
            Err(CommandNameError::TooMany { count: COMMAND_SLOTS + 1 })
        );
        assert_eq!(check_command_names(&["a", ""]), Err(CommandNameError::Empty { index: 1 }));
        let long = "n".repeat(COMMAND_NAME_BYTES + 1);
        assert_eq!(
            check_command_names(&[&long]),
            Err(CommandNameError::TooLong { index: 0, len: COMMAND_NAME_BYTES + 1 })
        );
        assert_eq!(
            check_command_names(&["a b"]),
            Err(CommandNameError::BadByte { index: 0, byte: b' ' })
        );
        assert_eq!(
            check_command_names(&["é"]),
            Err(CommandNameError::BadByte { index: 0, byte: 0xc3 })
        );
        assert_eq!(check_command_names(&["other"]), Err(CommandNameError::Reserved { index: 0 }));
        assert_eq!(
            check_command_names(&["a", "b", "a"]),
            Err(CommandNameError::Duplicate { index: 2, first: 0 })
        );
        // Every error says which name.
        let e = check_command_names(&["a", "b c"]).unwrap_err().to_string();
        assert!(e.contains("command name 1"), "{e}");
    }

    /// Whatever a hostile or broken writer left in the area, decoding returns one of the three
    /// answers and never panics or yields an invalid name.
    #[test]
    fn garbage_areas_are_reported_not_trusted() {
        let le = |s: &[u8]| {
            let mut b = [0u8; COMMAND_NAME_BYTES];
            b[..s.len()].copy_from_slice(s);
            let mut w = [0u64; COMMAND_NAME_WORDS];
            for (w, c) in w.iter_mut().zip(b.chunks_exact(8)) {
                *w = u64::from_le_bytes(c.try_into().unwrap());
            }
            w
        };
        // Bytes after the terminating NUL.
        assert_eq!(decode_name(&le(b"ping\0x")), NameArea::Garbage);
        // A leading NUL with garbage after it is not "empty".
        assert_eq!(decode_name(&le(b"\0abc")), NameArea::Garbage);
        // Invalid UTF-8, control characters, spaces, quotes (which would break label syntax).
        assert_eq!(decode_name(&le(&[0xff, 0xfe])), NameArea::Garbage);
        assert_eq!(decode_name(&le(b"a\nb")), NameArea::Garbage);
        assert_eq!(decode_name(&le(b"a\"b")), NameArea::Garbage);
        // The reserved name.
        assert_eq!(decode_name(&le(b"other")), NameArea::Garbage);
        // Wrong lengths.
        assert_eq!(decode_name(&[]), NameArea::Garbage);
        assert_eq!(decode_name(&[0; COMMAND_NAME_WORDS + 1]), NameArea::Garbage);
        // A cheap sweep of pseudo-random areas: only the three answers, and any name is valid.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            let mut w = [0u64; COMMAND_NAME_WORDS];
            for v in &mut w {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = x & 0x7f7f_7f7f_7f7f_7f7f; // mostly ASCII, so names do occur
            }
            if let NameArea::Name(n) = decode_name(&w) {
                assert_eq!(check_command_names(&[&n]), Ok(()));
            }
        }
    }
}
