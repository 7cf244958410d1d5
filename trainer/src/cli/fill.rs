//! `kilobyte fill`: the gaps of a text filled by a BiGS masked-byte model
//! through the no_std runtime. Owns only the gap marking; the model is the
//! runtime's, opened by `super::open`.

use super::open::{with_kbm, Head};
use anyhow::{bail, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A BiGS .kbm with a masked-byte head.
    pub model: PathBuf,
    /// Text with gaps: every GAP byte (default `_`) is one missing byte.
    pub text: String,
    /// The gap marker (one ASCII byte).
    #[arg(long, default_value = "_")]
    pub gap: char,
}

pub fn run(a: Args) -> Result<()> {
    if !a.gap.is_ascii() {
        bail!(
            "--gap {:?}: the gap marker must be one ASCII character",
            a.gap
        );
    }
    let text = a.text.as_bytes();
    let gaps: Vec<bool> = text.iter().map(|&b| b == a.gap as u8).collect();
    if !gaps.iter().any(|&g| g) {
        bail!(
            "the text has no gap: mark each missing byte with '{}'",
            a.gap
        );
    }
    with_kbm(&a.model, |kbm| {
        let m = kbm.bigs(Head::MaskedByte)?;
        let max = m.config.max_seq as usize;
        if text.len() > max {
            bail!(
                "the text: {} bytes, longer than the model's T_max of {max} bytes",
                text.len()
            );
        }
        kbm.encoder(&m, text.len(), |enc| {
            let mut out = vec![0u8; text.len()];
            enc.fill(text, &gaps, &mut out)?;
            std::io::stdout().write_all(&out)?;
            println!();
            Ok(())
        })
    })
}
