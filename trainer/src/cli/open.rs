//! Opening what the commands are given: a `.kbm` file ([`with_kbm`], or
//! [`Kbm::parse`] for bytes already in memory) and the runtime models,
//! sessions and encoders built from it in heap arenas; and a run
//! directory's weights ([`run_weights`]). Every command opens its models
//! here, so every error names the file, and the flag that sized an arena.
//!
//! Owns no model or file-format code: parsing is kilobyte-format's, the
//! models are kilobyte-runtime's, a run directory's files are
//! `crate::checkpoint`'s.

use super::input;
use crate::checkpoint::{load_best, load_params, BEST_FILE, CONFIG_FILE, MODEL_FILE};
use crate::params::{read_kbm, ParamSet};
use anyhow::{bail, Context, Result};
use kilobyte_format::ModelFile;
use kilobyte_runtime::{ArenaSpec, Bigs, Encoder, Megabyte, Session};
use std::path::Path;

/// A parsed `.kbm` and the name its errors carry (the path, or what the
/// bytes in memory are).
pub struct Kbm<'a> {
    name: String,
    pub file: ModelFile<'a>,
    /// The file's size in bytes.
    pub len: usize,
}

/// Reads and parses the `.kbm` at `path` and hands it to `f`: the models
/// built from it borrow its bytes, which live for the call.
pub fn with_kbm<T>(path: &Path, f: impl FnOnce(&Kbm<'_>) -> Result<T>) -> Result<T> {
    let bytes = read_kbm(path)?;
    f(&Kbm::parse(path.display().to_string(), &bytes)?)
}

/// The head a BiGS command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    Classification,
    MaskedByte,
}

impl Head {
    fn name(self) -> &'static str {
        match self {
            Head::Classification => "classification",
            Head::MaskedByte => "masked-byte",
        }
    }
}

impl<'a> Kbm<'a> {
    /// Parses (and checksums) `bytes`, naming them `name` in any error.
    pub fn parse(name: String, bytes: &'a [u8]) -> Result<Self> {
        let file = ModelFile::parse(bytes).with_context(|| name.clone())?;
        Ok(Kbm {
            name,
            file,
            len: bytes.len(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn megabyte(&self) -> Result<Megabyte<'a>> {
        Megabyte::from_file(&self.file).with_context(|| self.name.clone())
    }

    /// The BiGS model, if it has the `head` the command needs: a missing
    /// head is an error that says which head the model has instead.
    pub fn bigs(&self, head: Head) -> Result<Bigs<'a>> {
        let m = Bigs::from_file(&self.file).with_context(|| self.name.clone())?;
        let has = match head {
            Head::Classification => m.classifier.is_some(),
            Head::MaskedByte => m.mlm.is_some(),
        };
        if !has {
            bail!(
                "{}: this BiGS model has no {} head (a {} model)",
                self.name,
                head.name(),
                if m.classifier.is_some() {
                    Head::Classification
                } else {
                    Head::MaskedByte
                }
                .name()
            );
        }
        Ok(m)
    }

    /// Runs `f` with a session of `spec` in a heap arena of the size it
    /// needs; `sized_by` says what chose the context (`--seq 256`), since
    /// that is what a user changes when the session cannot start.
    pub fn session<T>(
        &self,
        model: &Megabyte<'a>,
        spec: ArenaSpec,
        sized_by: &str,
        f: impl FnOnce(&mut Session<'_, 'a>) -> Result<T>,
    ) -> Result<T> {
        let mut arena = input::arena(
            spec.arena_bytes(&model.config),
            &format!("{} ({sized_by})", self.name),
        )?;
        let mut session = model
            .session(&mut arena, spec)
            .with_context(|| sized_by.to_string())?;
        f(&mut session)
    }

    /// Runs `f` with an encoder for inputs of up to `len` bytes (clamped to
    /// 1..=T_max) in a heap arena of that size: the arena and the kernels
    /// cost what the input needs, not what T_max allows. Kernel values do
    /// not depend on the size, so neither do the results.
    pub fn encoder<T>(
        &self,
        model: &Bigs<'a>,
        len: usize,
        f: impl FnOnce(&mut Encoder<'_, 'a>) -> Result<T>,
    ) -> Result<T> {
        let len = len.clamp(1, model.config.max_seq as usize);
        let mut arena = input::arena(Bigs::arena_bytes(&model.config, len), &self.name)?;
        let mut enc = model
            .encoder(&mut arena, len)
            .with_context(|| self.name.clone())?;
        f(&mut enc)
    }
}

/// A BiGS model's name for class `i`: its label, or the index when the
/// model has no labels.
pub fn label_name(m: &Bigs<'_>, i: usize) -> String {
    m.label(i)
        .map(str::to_string)
        .unwrap_or_else(|| i.to_string())
}

/// The best-validation weights of a run (or the last checkpoint's with
/// `last`), and which of the two they are. A `best.safetensors` that is
/// there but unreadable is an error: falling back would pass other weights
/// off as the best.
pub fn run_weights(dir: &Path, last: bool) -> Result<(ParamSet, &'static str)> {
    if !dir.join(CONFIG_FILE).is_file() {
        bail!(
            "{}: not a kilobyte run directory (no {CONFIG_FILE}); give a run made by `kilobyte train` or a .kbm file",
            dir.display()
        );
    }
    if !last && std::fs::symlink_metadata(dir.join(BEST_FILE)).is_ok() {
        let (params, _) = load_best(dir)?;
        return Ok((params, "best-validation"));
    }
    let (params, _) =
        load_params(&dir.join(MODEL_FILE)).with_context(|| dir.display().to_string())?;
    Ok((params, "last-checkpoint"))
}
