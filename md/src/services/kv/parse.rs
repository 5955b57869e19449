//! Splitting a command into its arguments: RESP2 multibulk arrays, and inline lines split
//! like Redis does (spaces, `"…"` with escapes, `'…'`).

use shmq::cache::table::parse_i64;

/// Splits an inline command like Redis's `sdssplitargs`: arguments separated by spaces/tabs;
/// `"…"` with `\n \r \t \b \a \\ \" \xHH` escapes; `'…'` with `\'`. False on unbalanced quotes
/// or a closing quote not followed by a space.
pub(super) fn split_inline(line: &[u8], out: &mut Vec<u8>, args: &mut Vec<(usize, usize)>) -> bool {
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= n {
            return true;
        }
        let start = out.len();
        let (mut inq, mut insq) = (false, false);
        loop {
            if inq {
                if i >= n {
                    return false;
                }
                if line[i] == b'\\' && i + 3 < n && line[i + 1] == b'x' {
                    let h = std::str::from_utf8(&line[i + 2..i + 4])
                        .ok()
                        .and_then(|s| u8::from_str_radix(s, 16).ok());
                    if let Some(b) = h {
                        out.push(b);
                        i += 4;
                        continue;
                    }
                }
                if line[i] == b'\\' && i + 1 < n {
                    out.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        c => c,
                    });
                    i += 2;
                    continue;
                }
                if line[i] == b'"' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return false;
                    }
                    i += 1;
                    break;
                }
                out.push(line[i]);
                i += 1;
            } else if insq {
                if i >= n {
                    return false;
                }
                if line[i] == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    out.push(b'\'');
                    i += 2;
                    continue;
                }
                if line[i] == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return false;
                    }
                    i += 1;
                    break;
                }
                out.push(line[i]);
                i += 1;
            } else {
                if i >= n || line[i].is_ascii_whitespace() {
                    break;
                }
                match line[i] {
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    c => out.push(c),
                }
                i += 1;
            }
        }
        args.push((start, out.len()));
    }
}

/// Parses one RESP2 multibulk command into ranges of `msg`. The framer checked it already; a
/// malformed one (never from io_conn) gives false.
pub(super) fn split_multibulk(msg: &[u8], args: &mut Vec<(usize, usize)>) -> bool {
    fn line(msg: &[u8], from: usize) -> Option<(i64, usize)> {
        let end = from + msg.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((parse_i64(&msg[from..end])?, end + 2))
    }
    let Some((n, mut pos)) = line(msg, 1) else { return false };
    for _ in 0..n.max(0) {
        if msg.get(pos) != Some(&b'$') {
            return false;
        }
        let Some((len, data)) = line(msg, pos + 1) else { return false };
        let Ok(len) = usize::try_from(len) else { return false };
        if data + len + 2 > msg.len() {
            return false;
        }
        args.push((data, data + len));
        pos = data + len + 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut args = Vec::new();
        split_inline(line.as_bytes(), &mut out, &mut args).then(|| {
            args.iter().map(|&(a, b)| String::from_utf8_lossy(&out[a..b]).into_owned()).collect()
        })
    }

    #[test]
    fn inline_split_like_redis() {
        assert_eq!(split("set a b").unwrap(), ["set", "a", "b"]);
        assert_eq!(split("  set  \"a b\" 'c d'  ").unwrap(), ["set", "a b", "c d"]);
        assert_eq!(split(r#"echo "x\ny\x41""#).unwrap(), ["echo", "x\nyA"]);
        assert_eq!(split(r"echo 'it\'s'").unwrap(), ["echo", "it's"]);
        assert_eq!(split("echo \"\"").unwrap(), ["echo", ""]);
        assert!(split("echo \"abc").is_none());
        assert!(split("echo \"abc\"x").is_none());
        assert!(split("").unwrap().is_empty());
    }

    #[test]
    fn multibulk_split() {
        let mut args = Vec::new();
        let m = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
        assert!(split_multibulk(m, &mut args));
        assert_eq!(args, [(8, 11), (17, 18), (24, 24)]);
        args.clear();
        assert!(!split_multibulk(b"*2\r\n$3\r\nGET\r\n", &mut args));
    }
}
