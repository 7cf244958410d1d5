//! MEGABYTE in the shared training loop ([`crate::train`]): next-byte
//! prediction on random windows of a byte corpus, validated on consecutive
//! windows of the held-out bytes.
//!
//! It owns what a MEGABYTE run adds to the loop: its option checks, the
//! entries it writes to `config.txt` (the data source and its
//! fingerprint), and its data position in the checkpoint. It must not
//! touch the loop's own state (steps, optimizer, roll-backs) or another
//! family's runs; [`crate::family`] picks between the families.

use super::{MegabyteModel, Workspace};
use crate::backend::{Backend, Device};
use crate::checkpoint::{Checkpoint, RunConfig, RunDir, TrainState};
use crate::data::{Sampler, Split, Subset, ValBatches};
use crate::params::ParamSet;
use crate::train::{self, DataSource, Eval, Job, TrainOptions, TrainReport};
use crate::with_backend;
use anyhow::{bail, Result};
use kilobyte_format::{MegabyteConfig, ModelConfig};
use std::path::Path;

// Defined here, not in the loop, because only MEGABYTE knows its patch rule;
// the loop checks what every family shares (`check_common`).
impl TrainOptions {
    /// The options a MEGABYTE run of `config` accepts.
    pub(crate) fn check(&self, config: &MegabyteConfig) -> Result<()> {
        let p = config.patch_size as usize;
        if self.seq == 0 || !self.seq.is_multiple_of(p) || self.seq > config.max_seq as usize {
            bail!(
                "--seq {}: must be a multiple of the patch size {p}, at most T_max = {}",
                self.seq,
                config.max_seq
            );
        }
        if self.dropout != 0.0 {
            bail!(
                "--dropout {}: MEGABYTE has no dropout (BiGS only)",
                self.dropout
            );
        }
        if self.mlm_weight != 0.0 {
            bail!(
                "--mlm-weight {}: a BiGS classifier's option (MEGABYTE has no masked-byte loss)",
                self.mlm_weight
            );
        }
        self.check_common()
    }
}

/// Starts a new MEGABYTE run in `dir` (which must not hold one).
pub fn start(
    dir: &Path,
    config: MegabyteConfig,
    opts: TrainOptions,
    data: DataSource,
    quiet: bool,
    device: Device,
) -> Result<TrainReport> {
    opts.check(&config)?;
    train::ensure_new(dir)?;
    let data = data.absolute()?;
    let split = data.split(opts.val_fraction)?;
    let run_config = opts
        .write(RunConfig::new(ModelConfig::Megabyte(config)))
        .with("data", data.to_entry())
        .with(train::DATA_FINGERPRINT, split.fingerprint());
    let run = RunDir::create(dir, run_config)?;
    let params = ParamSet::init(ModelConfig::Megabyte(config), opts.seed)?;
    with_backend!(device, |be| {
        let job = MegabyteJob::new(be, &params, &opts, split, &TrainState::default())?;
        let opt = train::optimizer(be, &opts, &params)?;
        train::train_loop(be, run, job, opt, TrainState::default(), opts, quiet)
    })
}

/// Mean cross-entropy (nats per byte) of the model over validation windows.
pub fn evaluate<B: Backend>(
    be: &B,
    model: &mut MegabyteModel<B>,
    ws: &mut Workspace<B>,
    val: &Subset,
    max_windows: usize,
) -> Result<f64> {
    let batches = ValBatches::new(val.clone(), ws.seq, ws.batch)?
        .stride(ws.seq)
        .max_windows(if max_windows == 0 {
            None
        } else {
            Some(max_windows)
        });
    let (mut sum, mut count) = (0.0, 0.0);
    let mut bytes = vec![0u8; ws.batch * ws.seq];
    for batch in batches {
        // A short last batch is padded by repeating its first window; only
        // the real rows count.
        let rows = batch.rows();
        for r in 0..ws.batch {
            bytes[r * ws.seq..(r + 1) * ws.seq].copy_from_slice(batch.row(r.min(rows - 1)));
        }
        let ce = model.step(be, ws, &bytes, false, 1.0)?;
        if rows == ws.batch {
            sum += ce.loss * ce.count;
            count += ce.count;
        } else {
            // Rare: recompute the real rows alone so padding does not count.
            let mut one = model.workspace(be, 1, ws.seq)?;
            for r in 0..rows {
                let ce = model.step(be, &mut one, batch.row(r), false, 1.0)?;
                sum += ce.loss * ce.count;
                count += ce.count;
            }
        }
    }
    if count == 0.0 {
        bail!(
            "the validation data holds no full window of {} bytes",
            ws.seq
        );
    }
    Ok(sum / count)
}

/// MEGABYTE on random windows of a byte corpus.
pub(crate) struct MegabyteJob<B: Backend> {
    model: MegabyteModel<B>,
    ws: Workspace<B>,
    eval_ws: Workspace<B>,
    sampler: Sampler,
    val: Subset,
    eval_windows: usize,
}

impl<B: Backend> MegabyteJob<B> {
    pub(crate) fn new(
        be: &B,
        params: &ParamSet,
        opts: &TrainOptions,
        split: Split,
        state: &TrainState,
    ) -> Result<Self> {
        let model = MegabyteModel::new(be, params)?;
        let mut sampler = Sampler::new(split.train.clone(), opts.seq, opts.batch, opts.seed)?;
        if state.step > 0 {
            sampler.restore(state.sampler);
        }
        Ok(MegabyteJob {
            ws: model.workspace(be, opts.batch, opts.seq)?,
            eval_ws: model.workspace(be, opts.batch, opts.seq)?,
            model,
            sampler,
            val: split.val,
            eval_windows: opts.eval_windows,
        })
    }

    /// The job of a run being resumed, on the data its `config.txt` names
    /// (refused if that data changed).
    pub(crate) fn resume(
        be: &B,
        run: &RunDir,
        ckpt: &Checkpoint,
        opts: &TrainOptions,
    ) -> Result<Self> {
        let split = train::stored_split(run, opts.val_fraction)?;
        MegabyteJob::new(be, &ckpt.params, opts, split, &ckpt.state)
    }
}

impl<B: Backend> Job<B> for MegabyteJob<B> {
    fn train_batch(&mut self, be: &B) -> Result<(f64, u64)> {
        let batch = self.sampler.next_batch();
        let ce = self.model.step(be, &mut self.ws, &batch.bytes, true, 1.0)?;
        Ok((ce.loss, batch.bytes.len() as u64))
    }
    fn params_and_grads(&mut self) -> (&mut Vec<B::Buf>, &mut Vec<B::Buf>) {
        (&mut self.model.params, &mut self.model.grads)
    }
    fn evaluate(&mut self, be: &B) -> Result<Eval> {
        let loss = evaluate(
            be,
            &mut self.model,
            &mut self.eval_ws,
            &self.val,
            self.eval_windows,
        )?;
        Ok(Eval {
            loss,
            accuracy: None,
        })
    }
    fn to_param_set(&self, be: &B) -> Result<ParamSet> {
        self.model.to_param_set(be)
    }
    fn save_state(&self, state: &mut TrainState) {
        state.sampler = self.sampler.state();
    }
    fn train_flops_per_byte(&self) -> Option<f64> {
        Some(super::train_flops_per_byte(&self.model.config, self.ws.seq))
    }
}
