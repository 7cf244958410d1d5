//! Run directories: checkpoints to resume from, the metrics log, the
//! best-validation weights, and clean stops on Ctrl-C.
//!
//! # Layout
//!
//! ```text
//! run/
//!   config.txt                      model config (kilobyte.<field> = v) and hyperparameters (train.<name> = v)
//!   state.txt                       the commit record: names the checkpoint directory; step, sampler and
//!                                   other Rng states, bytes seen, elapsed time, best (mirror), extras
//!   ckpt-000007-step-1400/
//!     model.safetensors             parameters (f32), model config in the metadata
//!     optimizer.safetensors         AdamW moments m.<param>, v.<param>; update count in the metadata
//!   model.safetensors               the committed weights again (a hard link), for export and tools
//!   best.safetensors                weights at the best validation loss; step and loss in the metadata
//!   metrics.jsonl                   one JSON object per logged step
//!   lock                            empty; flock-ed by the one process writing the run
//! ```
//!
//! # What a run may touch
//!
//! A run writes only into a directory that is new, empty, or already a
//! kilobyte run (a `config.txt` that parses); anything else is refused, and
//! left without even a lock file. It removes only what it can tell it wrote:
//! the files named above, checkpoint directories named exactly
//! `ckpt-<digits>-step-<digits>` (file by file, so one holding anything else
//! stays), and temporaries of its own files. One process at a time: the
//! advisory lock on `lock` is taken before anything is written, released
//! by the kernel however the process ends, and a second writer (`train`
//! into the same directory, `--resume`) is refused while it is held.
//! Readers (`eval`, `export`, `--init`) take no lock.
//!
//! The `.safetensors` files are ordinary kilobyte exports: `kilobyte
//! convert run/best.safetensors model.kbm` turns one into a device model.
//!
//! # Why a checkpoint survives a kill at any instant
//!
//! Every file is written with [`kilobyte_format::write_atomic`] (temporary
//! file, fsync, rename, fsync of the directory), so each file is either its
//! old or its new version. Across files, a save never overwrites what the
//! committed checkpoint uses:
//!
//! 1. the tensors go into a fresh directory `ckpt-<generation>-step-<step>`,
//!    each tagged with its step and generation in the metadata;
//! 2. `metrics.jsonl` is rewritten with the history so far;
//! 3. `state.txt` is replaced, naming the new directory: this rename is the
//!    commit;
//! 4. `model.safetensors` is re-linked and the older directories removed.
//!
//! A kill before step 3 leaves `state.txt` naming the previous, untouched
//! directory; the half-written one (and any `.*.tmp.*` file) is ignored by
//! [`Checkpoint::load`] and removed by the next save. Loading checks the
//! tensor files' tags against `state.txt`, so mixed files are an error, not
//! a silent resume. Metric lines of steps after the checkpoint are dropped
//! on resume (those steps are redone). `best.safetensors` is written on its
//! own whenever validation improves; its metadata, not `state.txt`, is the
//! record of the best loss, so a best found after the last checkpoint is
//! kept across a crash.

mod interrupt;
mod metrics;
mod run;
mod tensors;

pub use interrupt::{install_interrupt_handler, interrupt_signal, interrupt_status, interrupted};
pub use metrics::{memorisation_warning, metrics_to_jsonl, parse_metrics, read_metrics, Metrics};
pub use run::{
    is_run, load_best, read_config, Best, Checkpoint, RunConfig, RunDir, SamplerState, TrainState,
    BEST_FILE, CONFIG_FILE, LOCK_FILE, METRICS_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE,
};
pub use tensors::{
    load_optimizer, load_params, read_tensors, save_optimizer, save_params, write_tensors,
    NamedTensor, TensorFile, TensorRef, OPTIMIZER_STEP_KEY,
};

#[cfg(test)]
mod tests;
