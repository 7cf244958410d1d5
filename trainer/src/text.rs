//! How text from files and flags appears in messages: quoted, with every
//! byte that could move a terminal's cursor, end a line or hide itself
//! escaped, and cut when long, so a label name or a header field from a
//! hostile file cannot inject escapes or flood a one-line error.

/// Most characters of a value shown before it is cut.
const MAX_SHOWN: usize = 64;
/// Most values of a list shown before the rest are counted.
const MAX_LISTED: usize = 12;

/// `text` in double quotes: printable characters as they are; `"` and `\`
/// escaped; `\n`, `\r`, `\t`; other control characters (C0, DEL, C1) and
/// bytes that are not UTF-8 as `\xHH` or `\u{HHHH}`. Past 64 characters
/// it is cut, and the message says how long it was.
pub fn shown(text: impl AsRef<[u8]>) -> String {
    let bytes = text.as_ref();
    let mut out = String::from("\"");
    let mut chars = 0;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if chars == MAX_SHOWN {
                return cut(out, bytes.len());
            }
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x80 && c.is_control() => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                // C1 controls, and the invisible formatting characters
                // (bidirectional overrides, zero widths) that can make
                // a message read as something else.
                c if c.is_control() || is_format(c) => {
                    out.push_str(&format!("\\u{{{:04x}}}", c as u32))
                }
                c => out.push(c),
            }
            chars += 1;
        }
        for b in chunk.invalid() {
            if chars == MAX_SHOWN {
                return cut(out, bytes.len());
            }
            out.push_str(&format!("\\x{b:02x}"));
            chars += 1;
        }
    }
    out.push('"');
    out
}

fn cut(mut out: String, len: usize) -> String {
    out.push_str(&format!("\"... ({len} bytes)"));
    out
}

/// Unicode's format characters that matter in a terminal line.
fn is_format(c: char) -> bool {
    matches!(c as u32, 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2069 | 0xfeff)
}

/// Values each [`shown`], joined by ", "; past 12, the rest are counted.
pub fn shown_list<T: AsRef<[u8]>>(values: impl IntoIterator<Item = T>) -> String {
    let mut parts = Vec::new();
    let mut more = 0usize;
    for v in values {
        if parts.len() < MAX_LISTED {
            parts.push(shown(v));
        } else {
            more += 1;
        }
    }
    let mut out = parts.join(", ");
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert_eq!(shown("positive"), "\"positive\"");
        assert_eq!(shown("café ok"), "\"café ok\"");
        assert_eq!(
            shown(b"a\x1b[2Jb\tc\r\n\0\x7f\"\\"),
            "\"a\\x1b[2Jb\\tc\\r\\n\\x00\\x7f\\\"\\\\\""
        );
        assert_eq!(shown("\u{85}x\u{202e}"), "\"\\u{0085}x\\u{202e}\"");
        assert_eq!(shown(b"ab\xffc"), "\"ab\\xffc\"");
    }

    #[test]
    fn cuts_long_values_and_lists() {
        let long = "x".repeat(1000);
        let s = shown(&long);
        assert_eq!(s, format!("\"{}\"... (1000 bytes)", "x".repeat(64)));
        assert_eq!(shown("y".repeat(64)), format!("\"{}\"", "y".repeat(64)));
        let list = shown_list((0..20).map(|i| i.to_string()));
        assert!(list.starts_with("\"0\", \"1\", "), "{list}");
        assert!(list.ends_with("\"11\" and 8 more"), "{list}");
    }
}
