//! The run directory: its files, saving a checkpoint, loading one, and
//! what a run may remove from its directory (only files it can tell it
//! wrote) and the lock that keeps a second writer out.

use super::metrics::{memorisation_warning, metrics_to_jsonl, read_metrics, Metrics};
use super::tensors::{load_optimizer, load_params, read_tensors, save_optimizer, save_params};
use crate::optim::AdamWState;
use crate::params::ParamSet;
use crate::text::shown;
use anyhow::{anyhow, bail, Context, Result};
use kilobyte_format::atomic::{is_temp_of, remove_stale_temps, try_lock};
use kilobyte_format::st::{config_from_metadata, config_metadata};
use kilobyte_format::{write_atomic, ModelConfig};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub const CONFIG_FILE: &str = "config.txt";
pub const STATE_FILE: &str = "state.txt";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const BEST_FILE: &str = "best.safetensors";
/// The advisory lock file held while a process writes the run.
pub const LOCK_FILE: &str = "lock";
const CKPT_PREFIX: &str = "ckpt-";
/// The files a run writes at its top level, and in a checkpoint directory.
const RUN_FILES: [&str; 5] = [CONFIG_FILE, STATE_FILE, METRICS_FILE, MODEL_FILE, BEST_FILE];
const CKPT_FILES: [&str; 2] = [MODEL_FILE, OPTIMIZER_FILE];

// Metadata tags tying tensor files to the state.txt that commits them.
const STEP_KEY: &str = "kilobyte.checkpoint.step";
const GENERATION_KEY: &str = "kilobyte.checkpoint.generation";
const BEST_STEP_KEY: &str = "kilobyte.best.step";
const BEST_LOSS_KEY: &str = "kilobyte.best.val_loss";

/// `config.txt`: the model config and the training hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    pub model: ModelConfig,
    /// Hyperparameters as text, by name ("lr", "batch_size", ...); the
    /// training loop decides the names and parses the values back.
    pub train: BTreeMap<String, String>,
}

impl RunConfig {
    pub fn new(model: ModelConfig) -> RunConfig {
        RunConfig {
            model,
            train: BTreeMap::new(),
        }
    }

    /// Sets a hyperparameter (builder style).
    pub fn with(mut self, key: &str, value: impl Display) -> RunConfig {
        self.train.insert(key.to_string(), value.to_string());
        self
    }

    /// A hyperparameter parsed as `T`; `None` if absent.
    pub fn get<T: FromStr>(&self, key: &str) -> Result<Option<T>> {
        match self.train.get(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                anyhow!(
                    "{CONFIG_FILE}: train.{key} = {} is not a valid value",
                    shown(v)
                )
            }),
        }
    }

    /// The file's text: the model as the safetensors metadata names it
    /// (`kilobyte.<field> = value`), then `train.<key> = value`.
    pub fn to_text(&self) -> Result<String> {
        let mut out = String::from("# kilobyte run configuration\n");
        let mut model: Vec<_> = config_metadata(&self.model).into_iter().collect();
        model.sort();
        for (k, v) in model {
            out.push_str(&format!("{k} = {v}\n"));
        }
        for (k, v) in &self.train {
            check_entry(k, v)?;
            out.push_str(&format!("train.{k} = {v}\n"));
        }
        Ok(out)
    }

    pub fn parse(text: &str) -> Result<RunConfig> {
        let mut model = HashMap::new();
        let mut train = BTreeMap::new();
        for (line, key, value) in parse_kv(text)? {
            if let Some(k) = key.strip_prefix("train.") {
                train.insert(k.to_string(), value);
            } else if key == "format" || key.starts_with("kilobyte.") {
                model.insert(key, value);
            } else {
                bail!(
                    "line {line}: unknown key {} (expected kilobyte.<field> or train.<name>)",
                    shown(&key)
                );
            }
        }
        let model = config_from_metadata(&model)?;
        Ok(RunConfig { model, train })
    }
}

/// What a checkpoint must keep for the data sampler ([`crate::data::Sampler`]) to continue exactly where it
/// stopped: the generator's state and how many batches it has drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerState {
    pub rng: [u64; 4],
    pub step: u64,
}

/// What `state.txt` records besides the tensors: everything the training
/// loop needs to continue as if it had never stopped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// The training sampler's position.
    pub sampler: SamplerState,
    /// Other generators by name (e.g. "mask" for BiGS span masking).
    pub rngs: BTreeMap<String, [u64; 4]>,
    pub bytes_seen: u64,
    /// Training time before this run, so elapsed time continues on resume.
    pub elapsed_s: f64,
    /// Anything else the loop wants back, as text (keys without spaces).
    pub extra: BTreeMap<String, String>,
}

/// The best validation result so far; `best.safetensors` holds its weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Best {
    pub step: u64,
    pub val_loss: f64,
}

fn rng_text(s: &[u64; 4]) -> String {
    format!("{:016x} {:016x} {:016x} {:016x}", s[0], s[1], s[2], s[3])
}

fn parse_rng(v: &str) -> Option<[u64; 4]> {
    let words: Vec<u64> = v
        .split_whitespace()
        .map(|w| u64::from_str_radix(w, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    words.try_into().ok()
}

fn state_text(
    state: &TrainState,
    checkpoint: &str,
    generation: u64,
    best: Option<Best>,
) -> Result<String> {
    let mut out = String::from(
        "# kilobyte training state. Written last and atomically: this file is the commit\n\
         # record of the checkpoint in the directory it names.\n",
    );
    let mut line = |k: &str, v: &dyn Display| out.push_str(&format!("{k} = {v}\n"));
    line("checkpoint", &checkpoint);
    line("generation", &generation);
    line("step", &state.step);
    line("sampler.step", &state.sampler.step);
    line("sampler.rng", &rng_text(&state.sampler.rng));
    for (name, s) in &state.rngs {
        check_entry(name, "")?;
        line(&format!("rng.{name}"), &rng_text(s));
    }
    line("bytes_seen", &state.bytes_seen);
    // Display of f64 is the shortest text that parses back exactly.
    line("elapsed_s", &state.elapsed_s);
    if let Some(b) = best {
        // A mirror for people reading this file; best.safetensors's own
        // metadata is what loading believes.
        line("best_step", &b.step);
        line("best_val_loss", &b.val_loss);
    }
    for (k, v) in &state.extra {
        check_entry(k, v)?;
        line(&format!("extra.{k}"), v);
    }
    Ok(out)
}

/// Parses `state.txt` into the state, the checkpoint directory's name and
/// the generation.
fn parse_state(text: &str) -> Result<(TrainState, String, u64)> {
    let mut s = TrainState::default();
    let (mut checkpoint, mut generation, mut step, mut sampler_rng) = (None, None, None, None);
    for (line, key, value) in parse_kv(text)? {
        let bad = || anyhow!("line {line}: {key} = {} is not valid", shown(&value));
        match key.as_str() {
            "checkpoint" => checkpoint = Some(value.clone()),
            "generation" => generation = Some(value.parse().map_err(|_| bad())?),
            "step" => step = Some(value.parse().map_err(|_| bad())?),
            "sampler.step" => s.sampler.step = value.parse().map_err(|_| bad())?,
            "sampler.rng" => sampler_rng = Some(parse_rng(&value).ok_or_else(bad)?),
            "bytes_seen" => s.bytes_seen = value.parse().map_err(|_| bad())?,
            "elapsed_s" => s.elapsed_s = value.parse().map_err(|_| bad())?,
            "best_step" | "best_val_loss" => {}
            k => {
                if let Some(name) = k.strip_prefix("rng.") {
                    s.rngs
                        .insert(name.to_string(), parse_rng(&value).ok_or_else(bad)?);
                } else if let Some(name) = k.strip_prefix("extra.") {
                    s.extra.insert(name.to_string(), value.clone());
                } else {
                    bail!("line {line}: unknown key {}", shown(&key));
                }
            }
        }
    }
    let missing = |what: &str| anyhow!("no {what} entry");
    let checkpoint: String = checkpoint.ok_or_else(|| missing("checkpoint"))?;
    // The name becomes a path: only our own directory names are accepted.
    let plain = checkpoint.starts_with(CKPT_PREFIX)
        && checkpoint
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !plain {
        bail!(
            "checkpoint = {} is not a checkpoint directory name",
            shown(&checkpoint)
        );
    }
    s.step = step.ok_or_else(|| missing("step"))?;
    s.sampler.rng = sampler_rng.ok_or_else(|| missing("sampler.rng"))?;
    Ok((
        s,
        checkpoint,
        generation.ok_or_else(|| missing("generation"))?,
    ))
}

/// Keys go into `key = value` lines: no spaces, `=`, `#` or line breaks.
fn check_entry(key: &str, value: &str) -> Result<()> {
    let bad_key =
        key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == '=' || c == '#');
    if bad_key {
        bail!(
            "{} cannot be a key in a run directory's text files",
            shown(key)
        );
    }
    if value.contains(['\n', '\r']) || value.trim() != value {
        bail!(
            "the value of {} ({}) has line breaks or surrounding spaces",
            shown(key),
            shown(value)
        );
    }
    Ok(())
}

/// `key = value` lines; `#` starts a comment line. Returns (line, key, value).
fn parse_kv(text: &str) -> Result<Vec<(usize, String, String)>> {
    let mut out: Vec<(usize, String, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            anyhow!(
                "line {}: expected key = value, found {}",
                i + 1,
                shown(line)
            )
        })?;
        let (k, v) = (k.trim(), v.trim());
        if out.iter().any(|(_, seen, _)| seen == k) {
            bail!("line {}: {k} appears twice", i + 1);
        }
        out.push((i + 1, k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Everything needed to resume a run exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub config: RunConfig,
    pub params: ParamSet,
    pub optimizer: AdamWState,
    pub state: TrainState,
    /// The metrics logged up to the checkpoint's step.
    pub metrics: Vec<Metrics>,
    pub best: Option<Best>,
    generation: u64,
}

impl Checkpoint {
    /// Whether `dir` holds a committed checkpoint.
    pub fn exists(dir: &Path) -> bool {
        dir.join(STATE_FILE).is_file()
    }

    /// Loads the committed checkpoint of a run directory; files from a save
    /// that did not reach its commit are ignored. Errors name the file.
    pub fn load(dir: &Path) -> Result<Checkpoint> {
        let state_path = dir.join(STATE_FILE);
        let text = match fs::read_to_string(&state_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "{}: missing: {} holds no checkpoint",
                    state_path.display(),
                    dir.display()
                )
            }
            r => r.with_context(|| format!("{}", state_path.display()))?,
        };
        let (state, name, generation) =
            parse_state(&text).with_context(|| format!("{}", state_path.display()))?;
        let config = load_config(dir)?;

        let ckpt = dir.join(&name);
        let model_path = ckpt.join(MODEL_FILE);
        let (params, meta) = load_params(&model_path)?;
        check_tag(&model_path, &meta, state.step, generation)?;
        if params.config != config.model {
            bail!(
                "{}: its model config differs from {CONFIG_FILE}'s",
                model_path.display()
            );
        }
        let opt_path = ckpt.join(OPTIMIZER_FILE);
        let (optimizer, meta) = load_optimizer(&opt_path, &params)?;
        check_tag(&opt_path, &meta, state.step, generation)?;

        let metrics_path = dir.join(METRICS_FILE);
        let mut metrics = if metrics_path.exists() {
            read_metrics(&metrics_path)?
        } else {
            Vec::new()
        };
        // Lines logged after the checkpoint describe steps that will be redone.
        metrics.retain(|m| m.step <= state.step);

        let best = read_best(dir)?;
        Ok(Checkpoint {
            config,
            params,
            optimizer,
            state,
            metrics,
            best,
            generation,
        })
    }
}

fn check_tag(
    path: &Path,
    meta: &HashMap<String, String>,
    step: u64,
    generation: u64,
) -> Result<()> {
    let tag = |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok());
    if tag(STEP_KEY) != Some(step) || tag(GENERATION_KEY) != Some(generation) {
        let shown = |t: Option<u64>| t.map_or("none".to_string(), |v| v.to_string());
        bail!(
            "{}: written for step {} generation {}, but {STATE_FILE} names step {step} generation {generation}",
            path.display(),
            shown(tag(STEP_KEY)),
            shown(tag(GENERATION_KEY))
        );
    }
    Ok(())
}

fn load_config(dir: &Path) -> Result<RunConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    RunConfig::parse(&text).with_context(|| format!("{}", path.display()))
}

fn read_best(dir: &Path) -> Result<Option<Best>> {
    let path = dir.join(BEST_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let meta = read_tensors(&path)?.metadata;
    let step = meta.get(BEST_STEP_KEY).and_then(|v| v.parse().ok());
    let val_loss = meta.get(BEST_LOSS_KEY).and_then(|v| v.parse().ok());
    match (step, val_loss) {
        (Some(step), Some(val_loss)) => Ok(Some(Best { step, val_loss })),
        _ => bail!(
            "{}: no valid {BEST_STEP_KEY} and {BEST_LOSS_KEY} in the metadata",
            path.display()
        ),
    }
}

/// The `config.txt` of the run in `dir` (which need not have a checkpoint).
pub fn read_config(dir: &Path) -> Result<RunConfig> {
    load_config(dir)
}

/// Whether `dir` is a kilobyte run: our own config.txt is the proof.
pub fn is_run(dir: &Path) -> bool {
    load_config(dir).is_ok()
}

/// The weights with the best validation loss, for export.
pub fn load_best(dir: &Path) -> Result<(ParamSet, Best)> {
    let path = dir.join(BEST_FILE);
    let (params, _) = load_params(&path)?;
    let best = read_best(dir)?.ok_or_else(|| anyhow!("{}: missing", path.display()))?;
    Ok((params, best))
}

/// A run directory being written by a training run. It holds the
/// directory's lock for as long as it lives.
#[derive(Debug)]
pub struct RunDir {
    dir: PathBuf,
    config: RunConfig,
    generation: u64,
    metrics: Vec<Metrics>,
    best: Option<Best>,
    _lock: fs::File,
}

impl RunDir {
    /// Checks that a new run may start in `dir`: it is absent, empty, or a
    /// kilobyte run that never reached a checkpoint (then `Ok(true)`: its
    /// leftovers are the run's to remove). A checkpoint, or anything in a
    /// directory that is not a kilobyte run, is refused.
    pub fn check_new(dir: &Path) -> Result<bool> {
        if Checkpoint::exists(dir) {
            bail!(
                "{} already holds a run: use --resume to continue it, or another directory",
                dir.display()
            );
        }
        let entries = match fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            r => r.with_context(|| format!("{}", dir.display()))?,
        };
        if is_run(dir) {
            return Ok(true);
        }
        for e in entries {
            let name = e.with_context(|| format!("{}", dir.display()))?.file_name();
            // What a run killed before writing its config leaves.
            if name == LOCK_FILE || is_temp_of(&name, CONFIG_FILE.as_ref()) {
                continue;
            }
            bail!(
                "{}: not empty and not a kilobyte run (it holds {:?} and no {CONFIG_FILE}); choose a new or empty directory",
                dir.display(),
                name.to_string_lossy()
            );
        }
        Ok(false)
    }

    /// Starts a new run in `dir` (created if needed) if [`RunDir::check_new`]
    /// allows it; the leftovers of a run that never checkpointed are
    /// removed.
    pub fn create(dir: &Path, config: RunConfig) -> Result<RunDir> {
        // Checked before the directory gets a lock file, and again under the
        // lock, in case another process started a run in between.
        RunDir::check_new(dir)?;
        fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let lock = lock_dir(dir)?;
        let leftovers = RunDir::check_new(dir)?;
        let run = RunDir {
            dir: dir.to_path_buf(),
            config,
            generation: 0,
            metrics: Vec::new(),
            best: None,
            _lock: lock,
        };
        if leftovers {
            for file in [METRICS_FILE, MODEL_FILE, BEST_FILE] {
                let _ = fs::remove_file(dir.join(file));
            }
            run.clean_up(None);
        }
        run.write_config()?;
        Ok(run)
    }

    /// Reopens a run at its committed checkpoint. The metrics file is cut
    /// back to the checkpoint's step, so the steps about to be redone are
    /// not logged twice.
    pub fn resume(dir: &Path) -> Result<(RunDir, Checkpoint)> {
        if !Checkpoint::exists(dir) {
            // Loading names what is missing; a directory that is not a run
            // does not get a lock file.
            Checkpoint::load(dir)?;
        }
        let lock = lock_dir(dir)?;
        let ckpt = Checkpoint::load(dir)?;
        let path = dir.join(METRICS_FILE);
        write_atomic(&path, metrics_to_jsonl(&ckpt.metrics).as_bytes())
            .with_context(|| format!("{}", path.display()))?;
        let run = RunDir {
            dir: dir.to_path_buf(),
            config: ckpt.config.clone(),
            generation: ckpt.generation,
            metrics: ckpt.metrics.clone(),
            best: ckpt.best,
            _lock: lock,
        };
        Ok((run, ckpt))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    pub fn metrics(&self) -> &[Metrics] {
        &self.metrics
    }

    pub fn best(&self) -> Option<Best> {
        self.best
    }

    /// Appends one line to `metrics.jsonl` at once, so the file can be
    /// watched during training. (The append is not atomic; a torn last line
    /// is skipped by readers, and every checkpoint rewrites the file whole.)
    pub fn log(&mut self, m: Metrics) -> Result<()> {
        let path = self.dir.join(METRICS_FILE);
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}", path.display()))?;
        f.write_all((m.to_json() + "\n").as_bytes())
            .with_context(|| format!("{}", path.display()))?;
        self.metrics.push(m);
        Ok(())
    }

    /// Saves a checkpoint: tensors into a new `ckpt-<generation>-step-<step>`
    /// directory, the metrics, then `state.txt` naming that directory (the
    /// commit), then the `model.safetensors` convenience copy; older
    /// checkpoint directories are removed last. `optimizer.m[i]` and `.v[i]`
    /// belong to `params.params[i]`.
    pub fn save(
        &mut self,
        params: &ParamSet,
        optimizer: &AdamWState,
        state: &TrainState,
    ) -> Result<()> {
        if params.config != self.config.model {
            bail!(
                "{}: the parameters' model config differs from the run's",
                self.dir.display()
            );
        }
        let generation = self.generation + 1;
        let name = format!("{CKPT_PREFIX}{generation:06}-step-{}", state.step);
        let ckpt = self.dir.join(&name);
        // A directory of this name is a save that crashed before its commit.
        if fs::symlink_metadata(&ckpt).is_ok() {
            remove_checkpoint_dir(&ckpt)?;
        }
        fs::create_dir(&ckpt).with_context(|| format!("{}", ckpt.display()))?;
        sync_dir(&self.dir);

        let tag = HashMap::from([
            (STEP_KEY.to_string(), state.step.to_string()),
            (GENERATION_KEY.to_string(), generation.to_string()),
        ]);
        save_params(&ckpt.join(MODEL_FILE), params, &tag)?;
        save_optimizer(&ckpt.join(OPTIMIZER_FILE), params, optimizer, &tag)?;
        let metrics_path = self.dir.join(METRICS_FILE);
        write_atomic(&metrics_path, metrics_to_jsonl(&self.metrics).as_bytes())
            .with_context(|| format!("{}", metrics_path.display()))?;

        let text = state_text(state, &name, generation, self.best)?;
        let state_path = self.dir.join(STATE_FILE);
        write_atomic(&state_path, text.as_bytes())
            .with_context(|| format!("{}", state_path.display()))?;
        self.generation = generation;

        self.publish_model(&ckpt)?;
        self.clean_up(Some(&name));
        Ok(())
    }

    /// Writes `best.safetensors` if `val_loss` beats the best so far;
    /// returns whether it did.
    pub fn offer_best(&mut self, params: &ParamSet, step: u64, val_loss: f64) -> Result<bool> {
        if !val_loss.is_finite() || self.best.is_some_and(|b| b.val_loss <= val_loss) {
            return Ok(false);
        }
        let meta = HashMap::from([
            (BEST_STEP_KEY.to_string(), step.to_string()),
            (BEST_LOSS_KEY.to_string(), val_loss.to_string()),
        ]);
        save_params(&self.dir.join(BEST_FILE), params, &meta)?;
        self.best = Some(Best { step, val_loss });
        Ok(true)
    }

    /// [`memorisation_warning`] over this run's metrics.
    pub fn memorisation_warning(&self, evals: usize) -> Option<String> {
        // The kept best is by the run's own score (loss, or a classifier's
        // accuracy), which need not be the lowest validation loss.
        memorisation_warning(&self.metrics, evals, self.best().map(|b| b.step))
    }

    fn write_config(&self) -> Result<()> {
        let path = self.dir.join(CONFIG_FILE);
        let text = self
            .config
            .to_text()
            .with_context(|| format!("{}", path.display()))?;
        write_atomic(&path, text.as_bytes()).with_context(|| format!("{}", path.display()))
    }

    /// Points `model.safetensors` at the committed weights: a hard link
    /// (free, and atomic through a rename), or a copy where links fail.
    /// Resuming never reads it, so a crash before this step loses nothing.
    fn publish_model(&self, ckpt: &Path) -> Result<()> {
        let (src, dst) = (ckpt.join(MODEL_FILE), self.dir.join(MODEL_FILE));
        // Named like write_atomic's temporaries (a link is created
        // exclusively too), so the same clean-up removes a killed one.
        let linked = tempfile::Builder::new()
            .prefix(&format!(".{MODEL_FILE}.tmp."))
            .rand_bytes(16)
            .make_in(&self.dir, |tmp| fs::hard_link(&src, tmp))
            .and_then(|tmp| tmp.persist(&dst).map_err(|e| e.error));
        if linked.is_err() {
            let bytes = fs::read(&src).with_context(|| format!("{}", src.display()))?;
            write_atomic(&dst, &bytes).with_context(|| format!("{}", dst.display()))?;
        }
        sync_dir(&self.dir);
        Ok(())
    }

    /// Best effort: removes checkpoint directories other than `keep` and
    /// temporary files our atomic writes left behind when killed.
    fn clean_up(&self, keep: Option<&str>) {
        for f in RUN_FILES {
            remove_stale_temps(&self.dir.join(f));
        }
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_checkpoint_name(&name) && Some(name.as_str()) != keep {
                let _ = remove_checkpoint_dir(&e.path());
            }
        }
    }
}

/// Takes the run directory's lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join(LOCK_FILE);
    // A symlink or device here is not ours to open for writing.
    if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        bail!(
            "{}: not a regular file; a run's lock file is",
            path.display()
        );
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}", path.display()))?;
    match try_lock(&file) {
        Ok(true) => Ok(file),
        Ok(false) => bail!(
            "{}: another kilobyte process is training in this run directory (it holds {LOCK_FILE}); wait for it to end or stop it",
            dir.display()
        ),
        // No advisory locks on this platform: nothing to exclude with.
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Ok(file),
        Err(e) => bail!("{}: cannot be locked: {e}", path.display()),
    }
}

/// Exactly the names [`RunDir::save`] gives checkpoint directories:
/// `ckpt-<digits>-step-<digits>`.
fn is_checkpoint_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix(CKPT_PREFIX)
        .and_then(|rest| rest.split_once("-step-"))
        .is_some_and(|(generation, step)| digits(generation) && digits(step))
}

/// Removes a checkpoint directory file by file: the tensor files a save
/// writes and their temporaries, then the directory itself, which fails
/// (and stays) if anything else is in it.
fn remove_checkpoint_dir(ckpt: &Path) -> Result<()> {
    // A symlink named like a checkpoint leads elsewhere: not ours.
    if !fs::symlink_metadata(ckpt).is_ok_and(|m| m.is_dir()) {
        bail!(
            "{}: not a checkpoint directory; not removed",
            ckpt.display()
        );
    }
    for f in CKPT_FILES {
        let path = ckpt.join(f);
        remove_stale_temps(&path);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("{}", path.display()));
            }
            _ => {}
        }
    }
    fs::remove_dir(ckpt).with_context(|| {
        format!(
            "{}: holds files that no checkpoint writes; not removed",
            ckpt.display()
        )
    })
}

fn sync_dir(dir: &Path) {
    // Durability only: where a directory cannot be opened for syncing
    // (some platforms), the writes are still correct, just less durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
