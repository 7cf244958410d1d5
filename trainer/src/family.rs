//! The one place that tells the model families apart for a run: a new run
//! goes to its family's job ([`crate::megabyte::job`], [`crate::bigs::jobs`]),
//! and a resumed one to the family its checkpoint names.
//!
//! It owns only that choice. It must not hold either family's logic (option
//! checks, data, objectives live in the job modules) nor the loop's
//! ([`crate::train`]), so that adding a family means one arm per function.

use crate::backend::Device;
use crate::bigs::jobs::{self as bigs_job, BigsJob, Objective};
use crate::checkpoint::{RunDir, CONFIG_FILE};
use crate::megabyte::job::{self as megabyte_job, MegabyteJob};
use crate::train::{self, DataSource, TrainOptions, TrainReport};
use crate::with_backend;
use anyhow::{Context, Result};
use kilobyte_format::{BigsConfig, MegabyteConfig, ModelConfig};
use std::path::{Path, PathBuf};

/// What a new run trains.
#[derive(Clone, Debug)]
pub enum Start {
    /// MEGABYTE on a byte corpus.
    Megabyte {
        config: MegabyteConfig,
        data: DataSource,
    },
    /// BiGS on `objective`; `init` names a run (pretrained with `--objective
    /// mlm`) whose encoder weights it starts from; a classifier without one
    /// pretrains on its own texts first for `pretrain_fraction` of the run.
    Bigs {
        config: BigsConfig,
        objective: Objective,
        init: Option<PathBuf>,
        pretrain_fraction: f64,
    },
}

/// Starts a new run in `dir` (which must not hold one).
pub fn start(
    dir: &Path,
    what: Start,
    opts: TrainOptions,
    quiet: bool,
    device: Device,
) -> Result<TrainReport> {
    match what {
        Start::Megabyte { config, data } => {
            megabyte_job::start(dir, config, opts, data, quiet, device)
        }
        Start::Bigs {
            config,
            objective,
            init,
            pretrain_fraction,
        } => bigs_job::start(
            dir,
            config,
            opts,
            objective,
            init.as_deref(),
            pretrain_fraction,
            quiet,
            device,
        ),
    }
}

/// Continues the run in `dir` from its last checkpoint (either family, on
/// either device: checkpoints are device-independent f32 tensors).
pub fn resume(dir: &Path, quiet: bool, device: Device) -> Result<TrainReport> {
    // A BiGS classifier still in its pretraining phase has no checkpoint of
    // its own yet: its job continues that phase, then fine-tunes.
    if bigs_job::in_pretraining(dir) {
        return bigs_job::resume_pretraining(dir, quiet, device);
    }
    let (run, ckpt) = RunDir::resume(dir)?;
    let opts = TrainOptions::read(run.config())?;
    // config.txt is a file anyone can edit: its values pass the same checks
    // as the flags they came from.
    let checked = match &ckpt.params.config {
        ModelConfig::Megabyte(c) => opts.check(c),
        ModelConfig::Bigs(_) => opts.check_common(),
    };
    checked
        .and_then(|()| crate::budget::check_here(&ckpt.params.config, opts.batch, opts.seq))
        .with_context(|| format!("{}", dir.join(CONFIG_FILE).display()))?;
    with_backend!(device, |be| {
        let opt = train::resumed_optimizer(be, dir, &ckpt, &opts, quiet)?;
        match ckpt.params.config {
            ModelConfig::Megabyte(_) => {
                let job = MegabyteJob::resume(be, &run, &ckpt, &opts)?;
                train::train_loop(be, run, job, opt, ckpt.state, opts, quiet)
            }
            ModelConfig::Bigs(_) => {
                let job = BigsJob::resume(be, &run, &ckpt, &opts)?;
                train::train_loop(be, run, job, opt, ckpt.state, opts, quiet)
            }
        }
    })
}
