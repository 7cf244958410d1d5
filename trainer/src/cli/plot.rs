//! `kilobyte plot`: a run's loss curves as SVG. The drawing is
//! `crate::plot`'s; this only picks the files.

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory.
    pub run: PathBuf,
    /// Output SVG (default: RUN/loss.svg).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let out = a.output.unwrap_or_else(|| a.run.join("loss.svg"));
    crate::plot::plot_metrics(&a.run.join(crate::checkpoint::METRICS_FILE), &out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
