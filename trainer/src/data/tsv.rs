//! Labelled text for classification: a GLUE-style table with a header line,
//! one example per line, a text column and a label column chosen by name or
//! index.
//!
//! `.csv` files are comma-separated with RFC 4180 quoting (`"a, b"`, `""` for
//! a quote) within one line; everything else is tab-separated without
//! quoting, as GLUE's `.tsv` files are. Texts stay bytes (the models read
//! bytes); labels must be UTF-8 because they end up as names in the `.kbm`.
//! Every error names the file and the 1-based line (the header is line 1).

use anyhow::{bail, Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Which column to read: a header name, or a 0-based index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Column {
    Name(String),
    Index(usize),
}

impl FromStr for Column {
    type Err = std::convert::Infallible;

    /// All digits is an index; anything else is a header name.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s.parse::<usize>() {
            Ok(i) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Column::Index(i),
            _ => Column::Name(s.to_string()),
        })
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Column::Name(n) => write!(f, "'{n}'"),
            Column::Index(i) => write!(f, "{i}"),
        }
    }
}

/// GLUE's column names, the defaults of the CLI.
pub const DEFAULT_TEXT_COLUMN: &str = "sentence";
pub const DEFAULT_LABEL_COLUMN: &str = "label";

/// One example and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledText {
    pub text: Vec<u8>,
    pub label: String,
    /// 1-based line number in the file (the header is line 1).
    pub line: usize,
}

/// All examples of one file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledSet {
    pub path: PathBuf,
    pub examples: Vec<LabeledText>,
}

impl LabeledSet {
    /// The distinct labels, sorted, so that class indices do not depend on
    /// the order of the examples ("0" < "1", "negative" < "positive").
    pub fn label_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.examples.iter().map(|e| e.label.clone()).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Reads every example of `path`. Blank lines are skipped; a line with too
/// few fields, an empty or non-UTF-8 label, or an unterminated quote is an
/// error naming the line.
pub fn read_labeled(path: &Path, text: &Column, label: &Column) -> Result<LabeledSet> {
    let bytes = super::read_regular(path)?;
    parse_labeled(path, &bytes, text, label)
}

/// [`read_labeled`] over bytes already in memory (`path` only names them).
pub fn parse_labeled(
    path: &Path,
    bytes: &[u8],
    text: &Column,
    label: &Column,
) -> Result<LabeledSet> {
    let shown = path.display();
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let mut lines = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)));

    let Some((_, header)) = lines.find(|(_, l)| !l.is_empty()) else {
        bail!("{shown}: empty file (expected a header line naming the columns)");
    };
    let header = split_fields(header, csv).map_err(|e| anyhow::anyhow!("{shown}: line 1: {e}"))?;
    let find = |col: &Column, what: &str| -> Result<usize> {
        match col {
            Column::Index(i) if *i < header.len() => Ok(*i),
            Column::Index(i) => bail!(
                "{shown}: {what} column {i} does not exist (the header has {} columns)",
                header.len()
            ),
            Column::Name(n) => header
                .iter()
                .position(|h| h == n.as_bytes())
                .with_context(|| {
                    format!(
                        "{shown}: no {what} column named {} in the header (columns: {})",
                        crate::text::shown(n),
                        crate::text::shown_list(&header)
                    )
                }),
        }
    };
    let text_col = find(text, "text")?;
    let label_col = find(label, "label")?;
    let needed = text_col.max(label_col) + 1;

    let mut examples = Vec::new();
    for (line, raw) in lines {
        if raw.is_empty() {
            continue;
        }
        let mut fields =
            split_fields(raw, csv).map_err(|e| anyhow::anyhow!("{shown}: line {line}: {e}"))?;
        if fields.len() < needed {
            bail!(
                "{shown}: line {line}: {} fields, the text and label columns need at least {needed}",
                fields.len()
            );
        }
        let label_bytes = std::mem::take(&mut fields[label_col]);
        let label = String::from_utf8(label_bytes)
            .ok()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .with_context(|| format!("{shown}: line {line}: the label is empty or not UTF-8"))?;
        examples.push(LabeledText {
            text: std::mem::take(&mut fields[text_col]),
            label,
            line,
        });
    }
    if examples.is_empty() {
        bail!("{shown}: no examples after the header line");
    }
    Ok(LabeledSet {
        path: path.to_path_buf(),
        examples,
    })
}

/// Splits one line into fields: tabs, or commas with RFC 4180 quotes.
fn split_fields(line: &[u8], csv: bool) -> std::result::Result<Vec<Vec<u8>>, String> {
    if !csv {
        return Ok(line.split(|&b| b == b'\t').map(<[u8]>::to_vec).collect());
    }
    let mut fields = Vec::new();
    let mut field = Vec::new();
    let mut i = 0;
    let mut quoted = false;
    while i < line.len() {
        let b = line[i];
        if quoted {
            match (b, line.get(i + 1)) {
                (b'"', Some(b'"')) => {
                    field.push(b'"');
                    i += 1;
                }
                (b'"', _) => quoted = false,
                _ => field.push(b),
            }
        } else {
            match b {
                b'"' if field.is_empty() => quoted = true,
                b',' => fields.push(std::mem::take(&mut field)),
                _ => field.push(b),
            }
        }
        i += 1;
    }
    if quoted {
        return Err("unterminated quoted field (quoted fields cannot span lines)".into());
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str, t: &str, l: &str) -> Result<LabeledSet> {
        parse_labeled(
            Path::new(name),
            text.as_bytes(),
            &t.parse().unwrap(),
            &l.parse().unwrap(),
        )
    }

    #[test]
    fn reads_glue_tsv_by_name_and_index() {
        let src = "sentence\tlabel\r\nit 's great \t1\n\nawful , really\t0\n";
        let set = parse("train.tsv", src, "sentence", "label").unwrap();
        assert_eq!(set.examples.len(), 2);
        assert_eq!(set.examples[0].text, b"it 's great ");
        assert_eq!(set.examples[0].label, "1");
        assert_eq!(set.examples[1].line, 4);
        assert_eq!(set.label_names(), ["0", "1"]);
        let by_index = parse("train.tsv", src, "0", "1").unwrap();
        assert_eq!(by_index, set);
    }

    #[test]
    fn reads_quoted_csv() {
        let src = "label,text\npos,\"good, \"\"very\"\" good\"\nneg,bad\n";
        let set = parse("x.csv", src, "text", "label").unwrap();
        assert_eq!(set.examples[0].text, b"good, \"very\" good");
        assert_eq!(set.label_names(), ["neg", "pos"]);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let err =
            |src: &str, t: &str, l: &str| format!("{:#}", parse("d.tsv", src, t, l).unwrap_err());
        assert!(err("", "sentence", "label").contains("d.tsv: empty file"));
        assert!(err("sentence\tlabel\n", "sentence", "label").contains("no examples"));
        let e = err(
            "sentence\tlabel\na\t1\nno label here\n",
            "sentence",
            "label",
        );
        assert!(e.contains("d.tsv: line 3: 1 fields"), "{e}");
        let e = err("sentence\tlabel\na\t \n", "sentence", "label");
        assert!(e.contains("line 2: the label is empty"), "{e}");
        let e = err("sentence\tlabel\na\t1\n", "text", "label");
        assert!(
            e.contains("no text column named \"text\"") && e.contains("\"sentence\", \"label\"")
        );
        let e = err("sentence\tlabel\na\t1\n", "sentence", "7");
        assert!(e.contains("label column 7 does not exist"), "{e}");
        let e = format!(
            "{:#}",
            parse("d.csv", "t,l\n\"open,1\n", "t", "l").unwrap_err()
        );
        assert!(e.contains("d.csv: line 2: unterminated"), "{e}");
    }
}
