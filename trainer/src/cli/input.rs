//! What every command reads and allocates, bounded: files that must be
//! regular before they are read whole, lines cut at a limit before they are
//! buffered, and arenas allocated fallibly with the size in the error.

use anyhow::{anyhow, bail, Context, Result};
use std::io::BufRead;

/// A prompt read from standard input stops being a prompt long before this.
pub const MAX_STDIN_BYTES: usize = 64 << 20;

pub use crate::data::read_regular;

/// Standard input, refused past `MAX_STDIN_BYTES`.
pub fn read_stdin() -> Result<Vec<u8>> {
    use std::io::Read;
    let mut v = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_STDIN_BYTES as u64 + 1)
        .read_to_end(&mut v)
        .context("stdin")?;
    if v.len() > MAX_STDIN_BYTES {
        bail!("stdin: more than {MAX_STDIN_BYTES} bytes, the most a prompt may have");
    }
    Ok(v)
}

/// One line of a stream.
pub enum Line {
    /// The line's bytes are in the buffer, without `\n` or `\r\n`.
    Text,
    /// The line holds more than the cap; its first `cap` bytes are in the
    /// buffer, and the stream is left inside it ([`skip_line`] ends it).
    TooLong,
    End,
}

/// Reads the next line into `buf`, keeping at most `cap` bytes of it: a
/// stream without newlines (`/dev/zero`) costs `cap`, not all memory.
pub fn next_line(r: &mut impl BufRead, cap: usize, buf: &mut Vec<u8>) -> std::io::Result<Line> {
    buf.clear();
    let mut seen_any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(if seen_any { Line::Text } else { Line::End });
        }
        seen_any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        // `cap + 1` keeps room for the `\r` of a line exactly `cap` long.
        if buf.len() + take > cap + 1 {
            let keep = cap.saturating_sub(buf.len()).min(take);
            buf.extend_from_slice(&chunk[..keep]);
            r.consume(keep);
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take + done as usize);
        if done {
            break;
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(if buf.len() > cap {
        Line::TooLong
    } else {
        Line::Text
    })
}

/// Reads past the rest of a line [`next_line`] cut, keeping nothing;
/// `Ok(false)` if the line goes on for more than `limit` bytes (an
/// endless stream such as `/dev/zero` ends there, not never).
pub fn skip_line(r: &mut impl BufRead, limit: u64) -> std::io::Result<bool> {
    let mut skipped = 0u64;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(true);
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(true);
            }
            None => {
                let n = chunk.len();
                r.consume(n);
                skipped += n as u64;
                if skipped > limit {
                    return Ok(false);
                }
            }
        }
    }
}

/// A zeroed arena of `bytes`, or one line saying how much was asked for.
pub fn arena(bytes: usize, what: &str) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes).map_err(|_| {
        anyhow!(
            "{what}: cannot allocate the arena of {bytes} bytes ({:.2} GiB)",
            bytes as f64 / (1u64 << 30) as f64
        )
    })?;
    v.resize(bytes, 0);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_at_the_cap_without_reading_the_rest() {
        let mut r = std::io::BufReader::with_capacity(4, &b"ab\r\nabcd\nabcdef\nx"[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            next_line(&mut r, 4, &mut buf).unwrap(),
            Line::Text
        ));
        assert_eq!(buf, b"ab");
        assert!(matches!(
            next_line(&mut r, 4, &mut buf).unwrap(),
            Line::Text
        ));
        assert_eq!(buf, b"abcd");
        assert!(matches!(
            next_line(&mut r, 4, &mut buf).unwrap(),
            Line::TooLong
        ));
        // The first cap bytes are kept; skipping ends the line.
        assert_eq!(buf, b"abcd");
        assert!(skip_line(&mut r, 100).unwrap());
        // An endless line costs the cap: /dev/zero.
        let mut zero = std::io::BufReader::new(std::io::repeat(0));
        assert!(matches!(
            next_line(&mut zero, 1000, &mut buf).unwrap(),
            Line::TooLong
        ));
        assert_eq!(buf.len(), 1000);
        // Skipping an endless line stops at its limit.
        assert!(!skip_line(&mut zero, 1 << 20).unwrap());
        let mut r = std::io::BufReader::new(&b"last"[..]);
        assert!(matches!(
            next_line(&mut r, 4, &mut buf).unwrap(),
            Line::Text
        ));
        assert!(matches!(next_line(&mut r, 4, &mut buf).unwrap(), Line::End));
    }

    #[test]
    fn an_arena_too_large_is_an_error_with_its_size() {
        let e = arena(usize::MAX / 2, "m.kbm").unwrap_err().to_string();
        assert!(e.contains(&format!("{} bytes", usize::MAX / 2)), "{e}");
        assert_eq!(arena(10, "x").unwrap(), [0; 10]);
    }
}
