//! Maps between byte offsets in a TOML document and dotted key paths, so every error can
//! name its key and line.
//!
//! Used only by `Config::from_toml_str`: the document is parsed a second time into toml's
//! spanned tree (`DeTable`), flattened into one [`Entry`] per key and per array element.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One key (or array element) of the document.
#[derive(Debug)]
struct Entry {
    /// Dotted path: `io_conn.listener[1].address`.
    path: String,
    /// Where the key is written; `None` for an array element.
    key_span: Option<Range<usize>>,
    /// Where the value is written (for a table, as toml reports it).
    value_span: Range<usize>,
}

impl Entry {
    /// Where to point a reader at: the key if there is one.
    fn start(&self) -> usize {
        self.key_span.as_ref().map_or(self.value_span.start, |s| s.start)
    }
}

/// The document's keys, with spans.
#[derive(Debug)]
pub(crate) struct Locator<'t> {
    text: &'t str,
    entries: Vec<Entry>,
}

impl<'t> Locator<'t> {
    /// Flattens a parsed document.
    pub(crate) fn new(text: &'t str, root: &DeTable<'_>) -> Self {
        let mut entries = Vec::new();
        flatten_table(root, "", &mut entries);
        Self { text, entries }
    }

    /// A locator that knows no keys (for a document that did not parse).
    pub(crate) fn empty(text: &'t str) -> Self {
        Self { text, entries: Vec::new() }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count()
    }

    /// The path of the innermost key or value whose span covers `span` (an error's span).
    pub(crate) fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        // An empty span (toml reports some at end of input) covers its one position.
        let covers = |s: &Range<usize>| s.start <= span.start && span.end <= s.end.max(s.start + 1);
        self.entries
            .iter()
            .filter_map(|e| {
                let hit = [e.key_span.as_ref(), Some(&e.value_span)]
                    .into_iter()
                    .flatten()
                    .filter(|s| covers(s))
                    .map(|s| s.len())
                    .min()?;
                Some((hit, e.path.len(), e))
            })
            // Smallest span wins; on a tie the longer (deeper) path.
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, _, e)| e.path.as_str())
    }

    /// 1-based line where `path` is written, if the document has it.
    pub(crate) fn line_of_path(&self, path: &str) -> Option<usize> {
        self.entries.iter().find(|e| e.path == path).map(|e| self.line_of(e.start()))
    }

    /// Whether the document writes `path`.
    pub(crate) fn has(&self, path: &str) -> bool {
        self.entries.iter().any(|e| e.path == path)
    }
}

/// Appends `key` to `prefix`, quoting it when it is not a bare TOML key.
fn join(prefix: &str, key: &str) -> String {
    let bare =
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare { key.to_owned() } else { format!("{key:?}") };
    if prefix.is_empty() { key } else { format!("{prefix}.{key}") }
}

fn flatten_table(table: &DeTable<'_>, prefix: &str, out: &mut Vec<Entry>) {
    for (k, v) in table.iter() {
        let path = join(prefix, k.get_ref());
        out.push(Entry { path: path.clone(), key_span: Some(k.span()), value_span: v.span() });
        flatten_value(v.get_ref(), &path, out);
    }
}

fn flatten_value(value: &DeValue<'_>, path: &str, out: &mut Vec<Entry>) {
    match value {
        DeValue::Table(t) => flatten_table(t, path, out),
        DeValue::Array(a) => {
            for (i, elem) in a.iter().enumerate() {
                let path = format!("{path}[{i}]");
                out.push(Entry { path: path.clone(), key_span: None, value_span: elem.span() });
                flatten_value(elem.get_ref(), &path, out);
            }
        }
        _ => {}
    }
}

/// Parent of a dotted path: `a.b[1].c` → `a.b[1]` → `a.b` → `a` → `None`.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.ends_with(']') {
        return path.rfind('[').map(|i| &path[..i]);
    }
    path.rfind('.').map(|i| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
[shared]
name = \"x\"

[[io_conn.listener]]
address = \"127.0.0.1:1\"

[[io_conn.listener]]
address = \"127.0.0.1:2\"
service = \"echo\"
";

    #[test]
    fn paths_and_lines() {
        let root = DeTable::parse(DOC).unwrap();
        let sut = Locator::new(DOC, root.get_ref());
        assert_eq!(sut.line_of_path("shared"), Some(1));
        assert_eq!(sut.line_of_path("shared.name"), Some(2));
        assert_eq!(sut.line_of_path("io_conn.listener[0].address"), Some(5));
        assert_eq!(sut.line_of_path("io_conn.listener[1].service"), Some(9));
        assert_eq!(sut.line_of_path("io_conn.listener[1]"), Some(7));
        assert_eq!(sut.line_of_path("io_conn.listener[1].framing"), None);
        let at = DOC.find("\"echo\"").unwrap();
        assert_eq!(sut.path_at(&(at..at + 6)), Some("io_conn.listener[1].service"));
    }

    #[test]
    fn parents() {
        assert_eq!(parent("io_conn.listener[1].framing"), Some("io_conn.listener[1]"));
        assert_eq!(parent("io_conn.listener[1]"), Some("io_conn.listener"));
        assert_eq!(parent("io_conn.listener"), Some("io_conn"));
        assert_eq!(parent("io_conn"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(join("a", "b-c_1"), "a.b-c_1");
        assert_eq!(join("a", "b.c"), "a.\"b.c\"");
        assert_eq!(join("", ""), "\"\"");
    }
}
