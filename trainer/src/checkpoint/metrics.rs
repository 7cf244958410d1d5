//! `metrics.jsonl`: one flat JSON object per logged step, and the
//! memorisation warning computed from it.
//!
//! The JSON is written and parsed by hand (no serde in the tree): objects
//! are flat, values are numbers or `null`. Non-finite values (a diverged
//! loss) are written as `null`, which JSON tools read as missing.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One line of `metrics.jsonl`. Everything but the step is optional: a
/// training step has no validation numbers, an evaluation may have no
/// training loss.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub step: u64,
    /// Mean cross-entropy in nats per predicted byte.
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    /// Validation bits per byte (`val_loss / ln 2`).
    pub val_bpb: Option<f64>,
    pub lr: Option<f64>,
    /// Gradient norm before clipping.
    pub grad_norm: Option<f64>,
    pub bytes_per_s: Option<f64>,
    pub elapsed_s: Option<f64>,
    /// Any other numbers, written after the known keys in name order.
    pub extra: BTreeMap<String, f64>,
}

const KNOWN: [&str; 7] = [
    "train_loss",
    "val_loss",
    "val_bpb",
    "lr",
    "grad_norm",
    "bytes_per_s",
    "elapsed_s",
];

impl Metrics {
    fn known(&self) -> [Option<f64>; 7] {
        [
            self.train_loss,
            self.val_loss,
            self.val_bpb,
            self.lr,
            self.grad_norm,
            self.bytes_per_s,
            self.elapsed_s,
        ]
    }

    fn known_mut(&mut self, key: &str) -> Option<&mut Option<f64>> {
        Some(match key {
            "train_loss" => &mut self.train_loss,
            "val_loss" => &mut self.val_loss,
            "val_bpb" => &mut self.val_bpb,
            "lr" => &mut self.lr,
            "grad_norm" => &mut self.grad_norm,
            "bytes_per_s" => &mut self.bytes_per_s,
            "elapsed_s" => &mut self.elapsed_s,
            _ => return None,
        })
    }

    /// The JSON object, without a newline.
    pub fn to_json(&self) -> String {
        let mut s = format!("{{\"step\":{}", self.step);
        let known = KNOWN.iter().copied().zip(self.known());
        let extra = self.extra.iter().map(|(k, v)| (k.as_str(), Some(*v)));
        for (key, value) in known.chain(extra) {
            let Some(v) = value else { continue };
            push_key(&mut s, key);
            // Debug prints the shortest text that reads back exactly.
            if v.is_finite() {
                let _ = write!(s, "{v:?}");
            } else {
                s.push_str("null");
            }
        }
        s.push('}');
        s
    }

    /// Parses one line. Unknown numeric keys go to `extra`; unknown string
    /// or boolean values are ignored, so newer writers stay readable.
    pub fn parse(line: &str) -> Result<Metrics> {
        let mut m = Metrics::default();
        let mut step = None;
        for (key, value) in parse_flat_object(line)? {
            match (key.as_str(), value) {
                ("step", Value::Number(x)) if x >= 0.0 && x.fract() == 0.0 && x < 2f64.powi(53) => {
                    step = Some(x as u64)
                }
                ("step", _) => bail!("\"step\" must be a non-negative integer"),
                (k, Value::Number(x)) => match m.known_mut(k) {
                    Some(slot) => *slot = Some(x),
                    None => {
                        m.extra.insert(k.to_string(), x);
                    }
                },
                (k, Value::Other) if m.known_mut(k).is_some() => {
                    bail!("\"{k}\" must be a number or null")
                }
                _ => {}
            }
        }
        m.step = step.ok_or_else(|| anyhow!("no \"step\""))?;
        Ok(m)
    }
}

/// Reads a whole `metrics.jsonl`. A malformed line is an error naming the
/// file and line number, except an unterminated last line: that is a write
/// in progress (or cut short by a crash) and is left out.
pub fn read_metrics(path: &Path) -> Result<Vec<Metrics>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    parse_metrics(&text).with_context(|| format!("{}", path.display()))
}

/// [`read_metrics`] on text already in memory.
pub fn parse_metrics(text: &str) -> Result<Vec<Metrics>> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match Metrics::parse(line) {
            Ok(m) => out.push(m),
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => bail!("line {}: {e}", i + 1),
        }
    }
    Ok(out)
}

/// `metrics` as JSON lines, each ending in a newline.
pub fn metrics_to_jsonl(metrics: &[Metrics]) -> String {
    metrics.iter().map(|m| m.to_json() + "\n").collect()
}

/// Memorisation check (Niu et al. 2024: small data sets get memorised,
/// training loss falling while validation loss rises). Warns when the
/// validation loss rose at each of the last `evals` evaluations while the
/// training loss fell over the same stretch. Training loss is noisy, so it
/// is compared as the mean of the logged values in the interval leading up
/// to the first and to the last of those evaluations.
pub fn memorisation_warning(
    history: &[Metrics],
    evals: usize,
    best_step: Option<u64>,
) -> Option<String> {
    let points: Vec<usize> = (0..history.len())
        .filter(|&i| history[i].val_loss.is_some_and(f64::is_finite))
        .collect();
    if evals == 0 || points.len() < evals + 1 {
        return None;
    }
    let window = &points[points.len() - evals - 1..];
    let val = |i: usize| history[i].val_loss.unwrap_or(f64::NAN);
    if window.windows(2).any(|w| val(w[1]) <= val(w[0])) {
        return None;
    }
    // Mean training loss of the records after evaluation `k - 1` up to `k`.
    let train_before = |k: usize| -> Option<f64> {
        let from = points
            .iter()
            .rev()
            .find(|&&p| p < window[k])
            .map_or(0, |&p| p + 1);
        let losses: Vec<f64> = history[from..=window[k]]
            .iter()
            .filter_map(|m| m.train_loss.filter(|x| x.is_finite()))
            .collect();
        (!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64)
    };
    let (first, last) = (train_before(0)?, train_before(evals)?);
    if last >= first {
        return None;
    }
    let vals: Vec<String> = window.iter().map(|&i| format!("{:.4}", val(i))).collect();
    let kept = match best_step {
        Some(step) => format!("best.safetensors keeps step {step}"),
        None => "no best checkpoint is kept yet".into(),
    };
    Some(format!(
        "validation loss rose for {evals} evaluations in a row ({} at steps {}..{}) while training loss fell \
         ({first:.4} -> {last:.4}): the model is memorising its training data; \
         {kept}; consider more data, fewer steps or more weight decay",
        vals.join(" -> "),
        history[window[0]].step,
        history[window[evals]].step,
    ))
}

enum Value {
    Number(f64),
    Null,
    /// A string or boolean: valid JSON this reader has no use for.
    Other,
}

/// Appends `,"key":`, escaped as JSON requires.
fn push_key(out: &mut String, key: &str) {
    out.push_str(",\"");
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push_str("\":");
}

/// Parses `{"key": value, ...}` with scalar values; nested objects and
/// arrays are rejected.
fn parse_flat_object(text: &str) -> Result<Vec<(String, Value)>> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    p.expect(b'{')?;
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            let key = p.string()?;
            p.expect(b':')?;
            let value = p.value()?;
            out.push((key, value));
            match p.next_byte() {
                Some(b',') => {}
                Some(b'}') => break,
                _ => bail!("expected ',' or '}}' at column {}", p.i),
            }
        }
    }
    if p.peek().is_some() {
        bail!("unexpected text after the object at column {}", p.i + 1);
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&mut self) -> Option<u8> {
        while self.s.get(self.i).is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
        self.s.get(self.i).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let b = self.peek();
        self.i += 1;
        b
    }

    fn expect(&mut self, want: u8) -> Result<()> {
        match self.next_byte() {
            Some(b) if b == want => Ok(()),
            Some(b) => bail!(
                "expected '{}' at column {}, found '{}'",
                want as char,
                self.i,
                b as char
            ),
            None => bail!(
                "expected '{}' at column {}, found the end of the line",
                want as char,
                self.i
            ),
        }
    }

    fn string(&mut self) -> Result<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.i) else {
                bail!("unterminated string");
            };
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let esc = self.s.get(self.i).copied();
                    self.i += 1;
                    let c = match esc {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hex = self
                                .s
                                .get(self.i..self.i + 4)
                                .and_then(|h| std::str::from_utf8(h).ok());
                            let code = hex.and_then(|h| u32::from_str_radix(h, 16).ok());
                            self.i += 4;
                            // Surrogate pairs never occur in metric names.
                            code.and_then(char::from_u32).unwrap_or('\u{fffd}')
                        }
                        _ => bail!("bad escape in a string at column {}", self.i),
                    };
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                b => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| anyhow!("a string is not UTF-8"))
    }

    fn value(&mut self) -> Result<Value> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| Value::Other),
            Some(b'{' | b'[') => bail!("nested values are not supported (column {})", self.i + 1),
            Some(_) => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
                {
                    self.i += 1;
                }
                let word = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                match word {
                    "null" => Ok(Value::Null),
                    "true" | "false" => Ok(Value::Other),
                    // Rust's float syntax is a superset of JSON's; refuse the
                    // extras ("inf", "NaN", "+1") so we only accept JSON.
                    w if w.starts_with(|c: char| c == '-' || c.is_ascii_digit())
                        && !w.contains(|c: char| {
                            c.is_ascii_alphabetic() && c != 'e' && c != 'E'
                        }) =>
                    {
                        w.parse()
                            .map(Value::Number)
                            .map_err(|_| anyhow!("bad number {w:?}"))
                    }
                    w => bail!("bad value {w:?} at column {}", start + 1),
                }
            }
            None => bail!("a value is missing at the end of the line"),
        }
    }
}
