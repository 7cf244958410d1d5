//! `kilobyte classify`: a BiGS classifier through the no_std runtime, one
//! input line in, one `label<TAB>probability` line out, so it works in
//! pipes. Owns the streaming of lines into encoders sized to them; the
//! model is the runtime's, opened by `super::open`.

use super::input;
use super::open::{label_name, with_kbm, Head};
use anyhow::{bail, Context, Result};
use kilobyte_runtime::Encoder;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A BiGS .kbm with a classification head.
    pub model: PathBuf,
    /// The text to classify; `-` or nothing (with --file absent) reads standard input, one text per line.
    pub text: Option<String>,
    /// Classify every line of this file.
    #[arg(long, conflicts_with = "text")]
    pub file: Option<PathBuf>,
}

/// The first encoder size for a stream of lines: most texts are shorter,
/// and a longer line grows the encoder (up to T_max, which reads any
/// longer text in windows) when it comes.
const STREAM_CONTEXT: usize = 512;

/// The most of one line that is classified; the rest is read past.
pub const MAX_LINE_BYTES: usize = 1 << 20;

pub fn run(a: Args) -> Result<()> {
    with_kbm(&a.model, |kbm| {
        let m = &kbm.bigs(Head::Classification)?;
        let max = m.config.max_seq as usize;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut one = |enc: &mut Encoder<'_, '_>, text: &[u8], where_: &str| -> Result<()> {
            if text.is_empty() {
                writeln!(out)?;
                return Ok(());
            }
            let c = enc.classify(text).with_context(|| where_.to_string())?;
            writeln!(out, "{}\t{:.4}", label_name(m, c.class), c.probs[c.class])?;
            Ok(())
        };
        match (&a.text, &a.file) {
            (Some(t), None) if t != "-" => {
                kbm.encoder(m, t.len(), |enc| one(enc, t.as_bytes(), "input"))
            }
            (_, file) => {
                let (mut reader, name): (Box<dyn BufRead>, String) = match file {
                    Some(f) => (
                        Box::new(std::io::BufReader::new(open_stream(f)?)),
                        f.display().to_string(),
                    ),
                    None => (Box::new(std::io::stdin().lock()), "stdin".into()),
                };
                // Each pass classifies lines with an encoder of `cap` bytes
                // until a longer line comes; that line starts the next pass
                // with an encoder big enough for it.
                let mut cap = STREAM_CONTEXT.min(max);
                let mut line_no = 0;
                let mut pending: Option<Vec<u8>> = None;
                loop {
                    let longer = kbm.encoder(m, cap, |enc| -> Result<Option<Vec<u8>>> {
                        let mut buf = Vec::new();
                        if let Some(line) = pending.take() {
                            one(enc, &line, &format!("{name}: line {line_no}"))?;
                        }
                        loop {
                            let got = input::next_line(&mut reader, MAX_LINE_BYTES, &mut buf)
                                .with_context(|| format!("{name}: line {}", line_no + 1))?;
                            let at = || format!("{name}: line {}", line_no + 1);
                            match got {
                                input::Line::End => return Ok(None),
                                // Cut to MAX_LINE_BYTES; the rest is read
                                // past, up to the most a prompt may be.
                                input::Line::TooLong => {
                                    let limit = input::MAX_STDIN_BYTES as u64;
                                    if !input::skip_line(&mut reader, limit).with_context(at)? {
                                        bail!(
                                            "{}: longer than {limit} bytes without a line break",
                                            at()
                                        )
                                    }
                                }
                                input::Line::Text => {}
                            }
                            line_no += 1;
                            if buf.len() > enc.max_len() && enc.max_len() < max {
                                return Ok(Some(buf));
                            }
                            one(enc, &buf, &format!("{name}: line {line_no}"))?;
                        }
                    })?;
                    match longer {
                        None => return Ok(()),
                        Some(line) => {
                            cap = line.len().next_power_of_two().min(max);
                            pending = Some(line);
                        }
                    }
                }
            }
        }
    })
}

/// A file to stream line by line: a regular file or a pipe (`<(...)`),
/// never a device or a directory.
fn open_stream(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::FileTypeExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !(meta.is_file() || meta.file_type().is_fifo()) {
        bail!("{}: not a regular file or a pipe", path.display());
    }
    std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))
}
