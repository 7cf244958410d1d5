//! Whole-file reads, refused unless the path is a regular file: the
//! labelled tables here and the CLI's prompt files are read whole, so a
//! device or a pipe must not be.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// Refuses `path` unless it is a regular file: a device (`/dev/zero`), a
/// FIFO or a directory has no size to check before it is read whole.
fn regular_file(path: &Path) -> Result<u64> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{}: not a regular file (a device, pipe or directory cannot be read whole)",
            path.display()
        );
    }
    Ok(meta.len())
}

/// A regular file's bytes.
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    regular_file(path)?;
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
