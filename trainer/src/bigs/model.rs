//! BiGS for training: the encoder of ../shared/design/MODELS.md built from
//! the backend's ops, with a hand-written backward pass and both heads.
//!
//! A batch is `batch` sequences padded to a common length `seq` (at most the
//! workspace's); `lengths[b]` says how many rows of sequence `b` are real.
//! Only the SSMs mix rows, and they never read a padding row (see
//! [`crate::backend::cpu::ssm`]), so a sequence computes exactly what it computes
//! alone; the losses count real rows only, so padding rows also get no
//! gradient.
//!
//! The layers themselves are [`super::layer`]'s; this module owns the
//! embeddings, the heads, the batch and the order of the passes, and finds
//! the parameters' indices.

use super::layer::{self, LayerActs, LayerGrads, LayerIx, LayerShapes, Lin, SsmIx};
use crate::backend::{
    Backend, CrossEntropy, LayerNorm, Linear, Logits, NormSaved, SsmDims, SsmShape, WeightBias,
};
use crate::ngram::NgramRows;
use crate::params::ParamSet;
use crate::params::{download_params, find_param as find, ParamMeta};
use anyhow::{bail, ensure, Result};
use kilobyte_format::config::{BIGS_MASK, BIGS_PAD};
use kilobyte_format::schema::{
    Affine, BigsLinear, BigsPart, NgramInput, SsmDirection, SsmPart, TensorId,
};
use kilobyte_format::{BigsConfig, ModelConfig};
use kilobyte_runtime::rng::Rng;

/// What a batch is trained on.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// Masked byte modelling: predict `targets[row]` (the original bytes)
    /// where `weights[row]` is 1.
    Mlm {
        targets: Vec<u32>,
        weights: Vec<f32>,
    },
    /// One class index per sequence.
    Classify { labels: Vec<u32> },
    /// Both at once on one (masked) input: the class of each sequence, and
    /// the masked bytes with their loss weighted by `mlm_weight`. The
    /// classification fine-tuning of `--mlm-weight`: the masked-byte loss
    /// on the task's own texts keeps a small table from being memorised,
    /// and the masks are the classifier's input noise.
    Joint {
        labels: Vec<u32>,
        targets: Vec<u32>,
        weights: Vec<f32>,
        mlm_weight: f32,
    },
}

impl Task {
    /// The masked-byte targets, loss weights and the weight of that loss.
    fn mlm(&self) -> Option<(&[u32], &[f32], f32)> {
        match self {
            Task::Mlm { targets, weights } => Some((targets, weights, 1.0)),
            Task::Joint {
                targets,
                weights,
                mlm_weight,
                ..
            } => Some((targets, weights, *mlm_weight)),
            Task::Classify { .. } => None,
        }
    }

    fn labels(&self) -> Option<&[u32]> {
        match self {
            Task::Classify { labels } | Task::Joint { labels, .. } => Some(labels),
            Task::Mlm { .. } => None,
        }
    }
}

/// Dropout for one training batch. Each activation it covers (the
/// embedding output, every layer's branch output before the residual add,
/// and the pooled vector the classifier reads) is zeroed with probability
/// `rate` and the rest scaled by `1 / (1 - rate)`. The masks are drawn on
/// the host from `seed`, so one seed gives one set of masks: a gradient
/// check holds them fixed, and every backend sees the same ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub rate: f32,
    pub seed: u64,
}

/// One batch: `ids[batch * seq]` (bytes, MASK, PAD = 256..), real lengths.
#[derive(Clone, Debug, PartialEq)]
pub struct BigsBatch {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<u32>,
    pub lengths: Vec<u32>,
    pub task: Task,
    /// None: no dropout (evaluation, and training without it).
    pub dropout: Option<Dropout>,
}

impl BigsBatch {
    /// Pads `texts` (already model ids) to the longest with PAD.
    pub fn from_sequences(texts: &[Vec<u32>], task: Task) -> Self {
        let seq = texts.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut ids = vec![BIGS_PAD; texts.len() * seq];
        for (row, t) in ids.chunks_mut(seq).zip(texts) {
            row[..t.len()].copy_from_slice(t);
        }
        BigsBatch {
            batch: texts.len(),
            seq,
            ids,
            lengths: texts.iter().map(|t| t.len() as u32).collect(),
            task,
            dropout: None,
        }
    }

    pub fn with_dropout(self, dropout: Option<Dropout>) -> Self {
        BigsBatch { dropout, ..self }
    }
}

/// Fills `out` with a dropout mask: 0 with probability `rate`, else
/// `1 / (1 - rate)`. Two 32-bit draws per 64-bit random number keep the
/// host's share of a step small.
pub(crate) fn fill_mask(rng: &mut Rng, rate: f32, out: &mut [f32]) {
    let threshold = (rate as f64 * 4_294_967_296.0) as u64;
    let keep = 1.0 / (1.0 - rate);
    for pair in out.chunks_mut(2) {
        let r = rng.next_u64();
        for (k, v) in pair.iter_mut().enumerate() {
            let u = (r >> (32 * k)) & 0xffff_ffff;
            *v = if u < threshold { 0.0 } else { keep };
        }
    }
}

/// What one forward pass measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepResult {
    pub ce: CrossEntropy,
    /// Classification: sequences whose arg-max class is the label.
    pub correct: usize,
}

#[derive(Clone, Debug)]
struct Indices {
    tok: usize,
    pos: usize,
    emb_ln: Lin,
    layers: Vec<LayerIx>,
    ln_f: Lin,
    mlm: Option<(Lin, Lin)>,
    cls: Option<(Lin, Lin)>,
    /// The n-gram logits' matrix, if the classifier has one.
    cls_ngram: Option<usize>,
}

/// Parameters and their gradients on a backend.
pub struct BigsModel<B: Backend> {
    pub config: BigsConfig,
    pub meta: Vec<ParamMeta>,
    pub params: Vec<B::Buf>,
    pub grads: Vec<B::Buf>,
    pub labels: Vec<String>,
    ix: Indices,
}

/// Activation buffers for batches of up to `batch` sequences of up to `seq`.
pub struct Workspace<B: Backend> {
    pub batch: usize,
    pub seq: usize,
    ids: B::Ids,
    ngram: NgramRows<B>,
    pos: B::Ids,
    lengths: B::Ids,
    targets: B::Ids,
    weights: B::Buf,
    real: B::Buf,
    emb: B::Buf,
    emb_mean: B::Buf,
    emb_rstd: B::Buf,
    /// The residual stream before each layer and after the last.
    res: Vec<B::Buf>,
    layers: Vec<LayerActs<B>>,
    xf: B::Buf,
    f_mean: B::Buf,
    f_rstd: B::Buf,
    // Masked-byte head.
    hp: B::Buf,
    hg: B::Buf,
    hn: B::Buf,
    h_mean: B::Buf,
    h_rstd: B::Buf,
    /// Masked-byte logits `[rows, 256]`.
    pub logits: B::Buf,
    // Classification head.
    pool: B::Buf,
    cp: B::Buf,
    ct: B::Buf,
    /// Class logits `[batch, classes]`.
    pub class_logits: B::Buf,
    /// The texts' bags of n-grams `[batch, features]` and the logits the
    /// n-gram matrix reads from them (`BigsConfig::head_ngram`).
    bag: B::Buf,
    bag_logits: B::Buf,
    host_bag: Vec<f32>,
    // Gradients: the heads', the residual stream's (down the layers), the
    // layers' own (shared) and the embeddings'.
    dlogits: B::Buf,
    d_hn: B::Buf,
    d_hg: B::Buf,
    d_hp: B::Buf,
    d_class_logits: B::Buf,
    d_ct: B::Buf,
    d_cp: B::Buf,
    d_pool: B::Buf,
    d_xf: B::Buf,
    d_res: B::Buf,
    layer_grads: LayerGrads<B>,
    d_emb: B::Buf,
    host_pos: Vec<u32>,
    /// Made on the first batch with dropout (evaluation never needs them).
    dropout: Option<DropoutBufs<B>>,
}

/// The masks and the extra activations dropout needs.
struct DropoutBufs<B: Backend> {
    /// The embedding norm's output before its mask (`res[0]` is after it).
    emb_n: B::Buf,
    d_emb_n: B::Buf,
    /// The embedding's mask, then one per layer's branch.
    masks: Vec<B::Buf>,
    /// The pooled vector's mask, the vector after it, and its gradient.
    pool_mask: B::Buf,
    pool_d: B::Buf,
    d_pool_d: B::Buf,
    host: Vec<f32>,
}

impl<B: Backend> DropoutBufs<B> {
    fn new(be: &B, rows: usize, batch: usize, d: usize, layers: usize) -> Result<Self> {
        Ok(DropoutBufs {
            emb_n: be.alloc(rows * d)?,
            d_emb_n: be.alloc(rows * d)?,
            masks: (0..=layers)
                .map(|_| be.alloc(rows * d))
                .collect::<Result<_>>()?,
            pool_mask: be.alloc(batch * d)?,
            pool_d: be.alloc(batch * d)?,
            d_pool_d: be.alloc(batch * d)?,
            host: vec![0.0; rows * d],
        })
    }

    /// Draws this batch's masks (`rows` rows, `nb` sequences) and uploads them.
    fn draw(&mut self, be: &B, dropout: Dropout, rows: usize, nb: usize, d: usize) -> Result<()> {
        let mut rng = Rng::new(dropout.seed);
        let host = &mut self.host;
        for m in &mut self.masks {
            fill_mask(&mut rng, dropout.rate, &mut host[..rows * d]);
            be.write(m, &host[..rows * d])?;
        }
        fill_mask(&mut rng, dropout.rate, &mut host[..nb * d]);
        be.write(&mut self.pool_mask, &host[..nb * d])
    }
}

fn lin(meta: &[ParamMeta], id: impl Fn(Affine) -> TensorId) -> Result<Lin> {
    Ok(Lin {
        w: find(meta, id(Affine::Weight))?,
        b: find(meta, id(Affine::Bias))?,
    })
}

fn ssm_ix(meta: &[ParamMeta], layer: u32, dir: SsmDirection) -> Result<SsmIx> {
    let f = |p| {
        find(
            meta,
            TensorId::BigsLayer {
                layer,
                part: BigsPart::Ssm(dir, p),
            },
        )
    };
    Ok(SsmIx {
        a: f(SsmPart::A)?,
        w: f(SsmPart::W)?,
        c: f(SsmPart::C)?,
        log_dt: f(SsmPart::LogDt)?,
        d: f(SsmPart::D)?,
    })
}

/// Training FLOPs per byte of a BiGS encoder on sequences of `seq` bytes:
/// 6 per matrix parameter use, and the direct SSM convolution (on average
/// `seq / 2` multiply-adds per channel and position, both directions,
/// backward twice the forward). Heads are left out (the MLM head runs on
/// masked positions only, the classifier once per sequence).
pub fn train_flops_per_byte(c: &BigsConfig, seq: usize) -> f64 {
    let (d, e, layers) = (c.d_model as f64, c.d_expand as f64, c.layers as f64);
    let matrices = d * (3.0 * e + 4.0 * d);
    layers * (6.0 * matrices + 3.0 * 2.0 * d * seq as f64)
}

/// The sizes of one layer's products, norm and SSMs for `batch` sequences
/// of `seq` rows (forward and backward use the same ones).
fn layer_shapes(config: &BigsConfig, batch: usize, seq: usize) -> LayerShapes {
    let (d, e, rows) = (
        config.d_model as usize,
        config.d_expand as usize,
        batch * seq,
    );
    let lin = |in_dim, out_dim| Linear {
        rows,
        in_dim,
        out_dim,
    };
    LayerShapes {
        dd: lin(d, d),
        de: lin(d, e),
        ed: lin(e, d),
        ln: LayerNorm {
            rows,
            width: d,
            eps: config.norm_eps,
        },
        ssm: SsmShape {
            batch,
            seq,
            width: d,
            kernels: config.ssm_kernels as usize,
        },
        dims: SsmDims {
            kernels: config.ssm_kernels as usize,
            modes: config.n_modes as usize,
        },
    }
}

impl<B: Backend> BigsModel<B> {
    /// Uploads a parameter set to the backend.
    pub fn new(be: &B, set: &ParamSet) -> Result<Self> {
        let config = match set.config {
            ModelConfig::Bigs(c) => c,
            _ => bail!("not a BiGS parameter set"),
        };
        let up = set.upload(be)?;
        let meta = up.meta;
        let layers: Vec<LayerIx> = (0..config.layers)
            .map(|layer| {
                let id = |part| TensorId::BigsLayer { layer, part };
                let l = |l| lin(&meta, |a| id(BigsPart::Linear(l, a)));
                Ok(LayerIx {
                    ln_w: find(&meta, id(BigsPart::Ln(Affine::Weight)))?,
                    ln_b: find(&meta, id(BigsPart::Ln(Affine::Bias)))?,
                    v: l(BigsLinear::V)?,
                    f: l(BigsLinear::F)?,
                    b: l(BigsLinear::B)?,
                    uf: l(BigsLinear::Uf)?,
                    ub: l(BigsLinear::Ub)?,
                    l: l(BigsLinear::L)?,
                    o: l(BigsLinear::O)?,
                    fwd: ssm_ix(&meta, layer, SsmDirection::Forward)?,
                    bwd: ssm_ix(&meta, layer, SsmDirection::Backward)?,
                })
            })
            .collect::<Result<_>>()?;
        for l in &layers {
            for s in [l.fwd, l.bwd] {
                ensure!(
                    [s.w, s.c, s.log_dt] == [s.a + 1, s.a + 2, s.a + 3],
                    "SSM parameters out of schema order"
                );
            }
        }
        let ix = Indices {
            tok: find(&meta, TensorId::BigsTok)?,
            pos: find(&meta, TensorId::BigsPos)?,
            emb_ln: lin(&meta, TensorId::BigsEmbedLn)?,
            layers,
            ln_f: lin(&meta, TensorId::BigsFinalLn)?,
            mlm: if config.has_mlm_head() {
                Some((
                    lin(&meta, TensorId::MlmDense)?,
                    lin(&meta, TensorId::MlmLn)?,
                ))
            } else {
                None
            },
            cls: if config.has_classifier() {
                Some((
                    lin(&meta, TensorId::ClsDense)?,
                    lin(&meta, TensorId::ClsOut)?,
                ))
            } else {
                None
            },
            cls_ngram: if config.has_classifier() && config.head_ngram.enabled() {
                Some(find(&meta, TensorId::ClsNgram)?)
            } else {
                None
            },
        };
        Ok(BigsModel {
            config,
            meta,
            params: up.values,
            grads: up.grads,
            labels: set.labels.clone(),
            ix,
        })
    }

    /// Downloads the parameters into a parameter set.
    pub fn to_param_set(&self, be: &B) -> Result<ParamSet> {
        let config = ModelConfig::Bigs(self.config);
        download_params(be, config, &self.labels, &self.meta, &self.params)
    }

    /// Buffers for up to `batch` sequences of up to `seq` rows (<= T_max).
    pub fn workspace(&self, be: &B, batch: usize, seq: usize) -> Result<Workspace<B>> {
        let c = &self.config;
        ensure!(batch > 0, "batch size must be at least 1");
        ensure!(
            seq > 0 && seq <= c.max_seq as usize,
            "sequence length {seq} must be between 1 and T_max = {}",
            c.max_seq
        );
        let (d, e, k) = (
            c.d_model as usize,
            c.d_expand as usize,
            c.ssm_kernels as usize,
        );
        let rows = batch * seq;
        let classes = c.n_classes.max(1) as usize;
        let features = c.head_ngram_features() as usize;
        let buf = |n: usize| be.alloc(n);
        let layers = (0..c.layers)
            .map(|_| LayerActs::new(be, rows, d, e, k, seq))
            .collect::<Result<_>>()?;
        Ok(Workspace {
            batch,
            seq,
            ids: be.upload_ids(&vec![0; rows])?,
            ngram: NgramRows::new(be, &self.meta, NgramInput::Bigs, c.ngram, rows)?,
            pos: be.upload_ids(&vec![0; rows])?,
            lengths: be.upload_ids(&vec![0; batch])?,
            targets: be.upload_ids(&vec![0; rows])?,
            weights: buf(rows)?,
            real: buf(rows)?,
            emb: buf(rows * d)?,
            emb_mean: buf(rows)?,
            emb_rstd: buf(rows)?,
            res: (0..=c.layers)
                .map(|_| buf(rows * d))
                .collect::<Result<_>>()?,
            layers,
            xf: buf(rows * d)?,
            f_mean: buf(rows)?,
            f_rstd: buf(rows)?,
            hp: buf(rows * d)?,
            hg: buf(rows * d)?,
            hn: buf(rows * d)?,
            h_mean: buf(rows)?,
            h_rstd: buf(rows)?,
            logits: buf(rows * 256)?,
            pool: buf(batch * d)?,
            cp: buf(batch * d)?,
            ct: buf(batch * d)?,
            class_logits: buf(batch * classes)?,
            bag: buf(batch * features.max(1))?,
            bag_logits: buf(batch * classes)?,
            host_bag: vec![0.0; batch * features],
            dlogits: buf(rows * 256)?,
            d_hn: buf(rows * d)?,
            d_hg: buf(rows * d)?,
            d_hp: buf(rows * d)?,
            d_class_logits: buf(batch * classes)?,
            d_ct: buf(batch * d)?,
            d_cp: buf(batch * d)?,
            d_pool: buf(batch * d)?,
            d_xf: buf(rows * d)?,
            d_res: buf(rows * d)?,
            layer_grads: LayerGrads::new(be, rows, d, e, k, seq)?,
            d_emb: buf(rows * d)?,
            host_pos: vec![0; rows],
            dropout: None,
        })
    }

    /// Checks `batch` against the workspace and writes its ids, positions,
    /// lengths and real-row mask (and its dropout masks) to the backend.
    fn load(&self, be: &B, ws: &mut Workspace<B>, batch: &BigsBatch) -> Result<()> {
        let (nb, seq) = (batch.batch, batch.seq);
        ensure!(
            nb >= 1 && nb <= ws.batch && seq >= 1 && seq <= ws.seq,
            "a batch of {nb} x {seq} does not fit the workspace ({} x {})",
            ws.batch,
            ws.seq
        );
        let rows = nb * seq;
        ensure!(
            batch.ids.len() == rows && batch.lengths.len() == nb,
            "batch ids/lengths do not match its {nb} x {seq} shape"
        );
        ensure!(
            batch.lengths.iter().all(|&l| l >= 1 && l as usize <= seq),
            "every sequence needs 1..={seq} real rows"
        );
        let vocab = kilobyte_format::config::BIGS_VOCAB;
        ensure!(
            batch.ids.iter().all(|&id| id < vocab),
            "batch holds an id >= {vocab}"
        );
        for (i, p) in ws.host_pos[..rows].iter_mut().enumerate() {
            *p = (i % seq) as u32;
        }
        be.write_ids(&mut ws.ids, &batch.ids)?;
        be.write_ids(&mut ws.pos, &ws.host_pos[..rows])?;
        ws.ngram.write(be, &batch.ids, seq)?;
        be.write_ids(&mut ws.lengths, &batch.lengths)?;
        let real: Vec<f32> = (0..rows)
            .map(|i| ((i % seq) < batch.lengths[i / seq] as usize) as u8 as f32)
            .collect();
        be.write(&mut ws.real, &real)?;
        let d = self.config.d_model as usize;
        if let Some(dr) = batch.dropout {
            ensure!(
                dr.rate.is_finite() && (0.0..1.0).contains(&dr.rate),
                "dropout rate {} is not in [0, 1)",
                dr.rate
            );
            if ws.dropout.is_none() {
                let layers = self.config.layers as usize;
                ws.dropout = Some(DropoutBufs::new(
                    be,
                    ws.batch * ws.seq,
                    ws.batch,
                    d,
                    layers,
                )?);
            }
            let bufs = ws.dropout.as_mut().expect("made above");
            bufs.draw(be, dr, rows, nb, d)?;
        }
        Ok(())
    }

    /// Forward pass over `batch`, and with `backward` the backward pass
    /// adding into `self.grads` (scaled by `grad_scale`). Returns the mean
    /// cross-entropy over the counted positions (masked bytes, or sequences).
    pub fn step(
        &mut self,
        be: &B,
        ws: &mut Workspace<B>,
        batch: &BigsBatch,
        backward: bool,
        grad_scale: f32,
    ) -> Result<StepResult> {
        self.load(be, ws, batch)?;
        let (nb, seq) = (batch.batch, batch.seq);
        let rows = nb * seq;
        let d = self.config.d_model as usize;
        let dropout = batch.dropout.is_some();
        self.encode(be, ws, nb, seq, dropout);
        let mut result = StepResult {
            ce: CrossEntropy {
                loss: 0.0,
                count: 0.0,
            },
            correct: 0,
        };
        if let Some((targets, weights, mlm_weight)) = batch.task.mlm() {
            let Some((dense, ln)) = self.ix.mlm else {
                bail!("this model has no masked-byte head");
            };
            ensure!(targets.len() == rows && weights.len() == rows);
            ensure!(targets.iter().all(|&t| t < 256), "MLM targets are bytes");
            be.write_ids(&mut ws.targets, targets)?;
            be.write(&mut ws.weights, weights)?;
            let p = &self.params;
            let lin = Linear {
                rows,
                in_dim: d,
                out_dim: d,
            };
            be.matmul_forward(&mut ws.hp, &ws.xf, &p[dense.w], Some(&p[dense.b]), lin);
            be.gelu_forward(&mut ws.hg, &ws.hp, rows * d);
            be.layernorm_forward(
                &mut ws.hn,
                &mut ws.h_mean,
                &mut ws.h_rstd,
                &ws.hg,
                WeightBias {
                    weight: &p[ln.w],
                    bias: &p[ln.b],
                },
                LayerNorm {
                    rows,
                    width: d,
                    eps: self.config.norm_eps,
                },
            );
            // Tied output: the first 256 rows of the token embedding
            // are the bytes' (PAD, MASK, SEP are never predicted).
            let out = Linear {
                rows,
                in_dim: d,
                out_dim: 256,
            };
            be.matmul_forward(&mut ws.logits, &ws.hn, &p[self.ix.tok], None, out);
            let ce = be.cross_entropy(
                &ws.logits,
                &ws.targets,
                Some(&ws.weights),
                backward.then_some(&mut ws.dlogits),
                Logits { rows, classes: 256 },
                grad_scale * mlm_weight,
            );
            result.ce.loss += mlm_weight as f64 * ce.loss;
            result.ce.count = ce.count;
        }
        // The masked-byte loss is taken first: the labels then overwrite
        // `ws.targets`, whose bytes that loss has already read.
        if let Some(labels) = batch.task.labels() {
            let Some((dense, out)) = self.ix.cls else {
                bail!("this model has no classification head");
            };
            let classes = self.config.n_classes as usize;
            ensure!(labels.len() == nb);
            ensure!(
                labels.iter().all(|&l| (l as usize) < classes),
                "a label index is >= the {classes} classes"
            );
            be.write_ids(&mut ws.targets, labels)?;
            let p = &self.params;
            be.mean_pool_forward(&mut ws.pool, &ws.xf, &ws.real, nb, seq, d);
            let pooled = match &mut ws.dropout {
                Some(dr) if dropout => {
                    be.mul_forward(&mut dr.pool_d, &ws.pool, &dr.pool_mask, nb * d);
                    &dr.pool_d
                }
                _ => &ws.pool,
            };
            let head = ClassHead {
                cp: &mut ws.cp,
                ct: &mut ws.ct,
                logits: &mut ws.class_logits,
            };
            head.forward(be, p, (dense, out), pooled, nb, d, classes);
            if let Some(w) = self.ix.cls_ngram {
                let windows = (0..nb).map(|i| {
                    let text = &batch.ids[i * seq..][..batch.lengths[i] as usize];
                    (i, text, text.len())
                });
                self.write_bags(be, ws, windows, nb)?;
                add_ngram_logits(be, ws, &self.params[w], &self.config, nb);
            }
            let ce = be.cross_entropy(
                &ws.class_logits,
                &ws.targets,
                None,
                backward.then_some(&mut ws.d_class_logits),
                Logits { rows: nb, classes },
                grad_scale,
            );
            let logits = be.download_f64(&ws.class_logits)?;
            // A row with a NaN predicts nothing (argmax would say class
            // 0): it counts as wrong, as the runtime's eval counts it.
            let correct = logits
                .chunks(classes)
                .zip(labels)
                .filter(|(row, &l)| !row.iter().any(|v| v.is_nan()) && argmax(row) == l as usize)
                .count();
            result.ce.loss += ce.loss;
            result.ce.count = ce.count;
            result.correct = correct;
        }
        if backward {
            self.backward(be, ws, batch);
        }
        Ok(result)
    }

    /// The class logits, `[texts][classes]`, of whole texts (model ids,
    /// at most `ws.batch` of them), each read in the runtime's windows
    /// ([`kilobyte_runtime::bigs::text_windows`]) exactly as the runtime
    /// reads it: every window is encoded as a sequence of its own, and the
    /// head reads the mean over all the windows' positions (each window's
    /// pooled vector weighted by its length, on the host). For evaluation:
    /// no dropout, no backward pass.
    pub fn class_logits(
        &self,
        be: &B,
        ws: &mut Workspace<B>,
        texts: &[Vec<u32>],
    ) -> Result<Vec<f64>> {
        let Some(head_ix) = self.ix.cls else {
            bail!("this model has no classification head");
        };
        ensure!(
            !texts.is_empty() && texts.len() <= ws.batch,
            "{} texts for a workspace of {}",
            texts.len(),
            ws.batch
        );
        ensure!(
            texts.iter().all(|t| !t.is_empty()),
            "an empty text has no class"
        );
        let d = self.config.d_model as usize;
        let t_max = self.config.max_seq as usize;
        let windows: Vec<(usize, &[u32])> = texts
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                kilobyte_runtime::bigs::text_windows(t.len(), t_max).map(move |w| (i, &t[w]))
            })
            .collect();
        let mut sums = vec![0.0f64; texts.len() * d];
        for chunk in windows.chunks(ws.batch) {
            let seqs: Vec<Vec<u32>> = chunk.iter().map(|(_, w)| w.to_vec()).collect();
            let labels = vec![0; seqs.len()];
            let batch = BigsBatch::from_sequences(&seqs, Task::Classify { labels });
            self.load(be, ws, &batch)?;
            self.encode(be, ws, batch.batch, batch.seq, false);
            be.mean_pool_forward(&mut ws.pool, &ws.xf, &ws.real, batch.batch, batch.seq, d);
            let pooled = be.download_f64(&ws.pool)?;
            for (&(i, w), row) in chunk.iter().zip(pooled.chunks(d)) {
                for (s, v) in sums[i * d..(i + 1) * d].iter_mut().zip(row) {
                    *s += w.len() as f64 * v;
                }
            }
        }
        for (i, t) in texts.iter().enumerate() {
            for s in &mut sums[i * d..(i + 1) * d] {
                *s /= t.len() as f64;
            }
        }
        be.write_f64(&mut ws.pool, &sums)?;
        let classes = self.config.n_classes as usize;
        let head = ClassHead {
            cp: &mut ws.cp,
            ct: &mut ws.ct,
            logits: &mut ws.class_logits,
        };
        head.forward(be, &self.params, head_ix, &ws.pool, texts.len(), d, classes);
        if let Some(w) = self.ix.cls_ngram {
            let windows = windows.iter().map(|&(i, w)| (i, w, texts[i].len()));
            self.write_bags(be, ws, windows, texts.len())?;
            add_ngram_logits(be, ws, &self.params[w], &self.config, texts.len());
        }
        let mut logits = be.download_f64(&ws.class_logits)?;
        logits.truncate(texts.len() * classes);
        Ok(logits)
    }

    /// Writes the bags of n-grams of `nb` texts to `ws.bag` from their
    /// windows `(text, ids, text length)`: each n-gram of a window adds
    /// `1 / sqrt(text length)` to its text's row, as the runtime reads it.
    fn write_bags<'t>(
        &self,
        be: &B,
        ws: &mut Workspace<B>,
        windows: impl Iterator<Item = (usize, &'t [u32], usize)>,
        nb: usize,
    ) -> Result<()> {
        let h = self.config.head_ngram;
        let features = self.config.head_ngram_features() as usize;
        let host = &mut ws.host_bag[..nb * features];
        host.fill(0.0);
        for (i, window, len) in windows {
            let scale = 1.0 / (len as f32).sqrt();
            crate::ngram::add_to_bag(h, window, scale, &mut host[i * features..][..features]);
        }
        be.write(&mut ws.bag, &ws.host_bag)
    }

    /// Embeddings, layers and the final norm: `ws.xf`. With `dropout`,
    /// the masks in `ws.dropout` apply.
    fn encode(&self, be: &B, ws: &mut Workspace<B>, nb: usize, seq: usize, dropout: bool) {
        let c = &self.config;
        let p = &self.params;
        let ix = &self.ix;
        let d = c.d_model as usize;
        let rows = nb * seq;
        let sh = layer_shapes(c, nb, seq);
        be.embedding_forward(&mut ws.emb, &p[ix.tok], &ws.ids, rows, d, false);
        ws.ngram.forward(be, p, &mut ws.emb, rows, d);
        be.embedding_forward(&mut ws.emb, &p[ix.pos], &ws.pos, rows, d, true);
        let mut norm = |out: &mut B::Buf| {
            be.layernorm_forward(
                out,
                &mut ws.emb_mean,
                &mut ws.emb_rstd,
                &ws.emb,
                layer::wb(p, ix.emb_ln),
                sh.ln,
            )
        };
        // With dropout the norm writes emb_n, and its mask takes it to res[0].
        let masks = match ws.dropout.as_mut().filter(|_| dropout) {
            Some(dr) => {
                norm(&mut dr.emb_n);
                be.mul_forward(&mut ws.res[0], &dr.emb_n, &dr.masks[0], rows * d);
                Some(&dr.masks)
            }
            None => {
                norm(&mut ws.res[0]);
                None
            }
        };
        for (i, (l, a)) in ix.layers.iter().zip(&mut ws.layers).enumerate() {
            let (before, after) = ws.res.split_at_mut(i + 1);
            // The layer's branch output goes through d_res as scratch.
            let io = (&before[i], &mut after[0], &mut ws.d_res);
            let mask = masks.map(|m| &m[i + 1]);
            layer::forward(be, p, l, a, io, mask, &ws.lengths, sh);
        }
        be.layernorm_forward(
            &mut ws.xf,
            &mut ws.f_mean,
            &mut ws.f_rstd,
            &ws.res[c.layers as usize],
            layer::wb(p, ix.ln_f),
            sh.ln,
        );
    }

    fn backward(&mut self, be: &B, ws: &mut Workspace<B>, batch: &BigsBatch) {
        let c = self.config;
        let (nb, seq) = (batch.batch, batch.seq);
        let rows = nb * seq;
        let d = c.d_model as usize;
        let sh = layer_shapes(&c, nb, seq);
        let p = &self.params;
        let g = &mut self.grads;
        let ix = &self.ix;
        let dropout = batch.dropout.is_some();
        be.zero_prefix(&mut ws.d_xf, rows * d);
        // Each head adds its gradient into d_xf.
        if batch.task.mlm().is_some() {
            let (dense, ln) = ix.mlm.expect("checked in step");
            be.zero_prefix(&mut ws.d_hn, rows * d);
            let out = Linear {
                rows,
                in_dim: d,
                out_dim: 256,
            };
            let d_tok = WeightBias {
                weight: &mut g[ix.tok],
                bias: None,
            };
            be.matmul_backward(
                Some(&mut ws.d_hn),
                d_tok,
                &ws.dlogits,
                &ws.hn,
                &p[ix.tok],
                out,
            );
            be.zero_prefix(&mut ws.d_hg, rows * d);
            let saved = NormSaved {
                inp: &ws.hg,
                weight: &p[ln.w],
                mean: &ws.h_mean,
                rstd: &ws.h_rstd,
            };
            be.layernorm_backward(&mut ws.d_hg, layer::wb_mut(g, ln), &ws.d_hn, saved, sh.ln);
            be.zero_prefix(&mut ws.d_hp, rows * d);
            be.gelu_backward(&mut ws.d_hp, &ws.hp, &ws.d_hg, rows * d);
            be.matmul_backward(
                Some(&mut ws.d_xf),
                layer::grads(g, dense),
                &ws.d_hp,
                &ws.xf,
                &p[dense.w],
                sh.dd,
            );
        }
        if batch.task.labels().is_some() {
            let (dense, out) = ix.cls.expect("checked in step");
            let classes = c.n_classes as usize;
            if let Some(w) = ix.cls_ngram {
                let lin = Linear {
                    rows: nb,
                    in_dim: c.head_ngram_features() as usize,
                    out_dim: classes,
                };
                let dw = WeightBias {
                    weight: &mut g[w],
                    bias: None,
                };
                be.matmul_backward(None, dw, &ws.d_class_logits, &ws.bag, &p[w], lin);
            }
            be.zero_prefix(&mut ws.d_ct, nb * d);
            let lin = Linear {
                rows: nb,
                in_dim: d,
                out_dim: classes,
            };
            be.matmul_backward(
                Some(&mut ws.d_ct),
                layer::grads(g, out),
                &ws.d_class_logits,
                &ws.ct,
                &p[out.w],
                lin,
            );
            be.zero_prefix(&mut ws.d_cp, nb * d);
            be.tanh_backward(&mut ws.d_cp, &ws.ct, &ws.d_ct, nb * d);
            let lin = Linear {
                rows: nb,
                in_dim: d,
                out_dim: d,
            };
            // With dropout the dense layer read the masked vector, whose
            // gradient the mask then takes back to the pooled one.
            let (d_in, inp) = match ws.dropout.as_mut().filter(|_| dropout) {
                Some(dr) => (&mut dr.d_pool_d, &dr.pool_d),
                None => (&mut ws.d_pool, &ws.pool),
            };
            be.zero_prefix(d_in, nb * d);
            be.matmul_backward(
                Some(d_in),
                layer::grads(g, dense),
                &ws.d_cp,
                inp,
                &p[dense.w],
                lin,
            );
            if let Some(dr) = ws.dropout.as_ref().filter(|_| dropout) {
                be.mul_forward(&mut ws.d_pool, &dr.d_pool_d, &dr.pool_mask, nb * d);
            }
            be.mean_pool_backward(&mut ws.d_xf, &ws.d_pool, &ws.real, nb, seq, d);
        }
        be.zero_prefix(&mut ws.d_res, rows * d);
        let saved = NormSaved {
            inp: &ws.res[c.layers as usize],
            weight: &p[ix.ln_f.w],
            mean: &ws.f_mean,
            rstd: &ws.f_rstd,
        };
        be.layernorm_backward(
            &mut ws.d_res,
            layer::wb_mut(g, ix.ln_f),
            &ws.d_xf,
            saved,
            sh.ln,
        );
        let masks = ws.dropout.as_ref().filter(|_| dropout).map(|dr| &dr.masks);
        for (i, (l, a)) in ix.layers.iter().zip(&ws.layers).enumerate().rev() {
            let bufs = (a, &mut ws.layer_grads);
            layer::backward(
                be,
                (p, g),
                l,
                bufs,
                (&ws.res[i], &mut ws.d_res),
                masks.map(|m| &m[i + 1]),
                &ws.lengths,
                sh,
            );
        }
        be.zero_prefix(&mut ws.d_emb, rows * d);
        let saved = NormSaved {
            inp: &ws.emb,
            weight: &p[ix.emb_ln.w],
            mean: &ws.emb_mean,
            rstd: &ws.emb_rstd,
        };
        let d_norm_out = match ws.dropout.as_mut().filter(|_| dropout) {
            Some(dr) => {
                be.mul_forward(&mut dr.d_emb_n, &ws.d_res, &dr.masks[0], rows * d);
                &dr.d_emb_n
            }
            None => &ws.d_res,
        };
        be.layernorm_backward(
            &mut ws.d_emb,
            layer::wb_mut(g, ix.emb_ln),
            d_norm_out,
            saved,
            sh.ln,
        );
        be.embedding_backward(&mut g[ix.tok], &ws.d_emb, &ws.ids, rows, d);
        ws.ngram.backward(be, g, &ws.d_emb, rows, d);
        be.embedding_backward(&mut g[ix.pos], &ws.d_emb, &ws.pos, rows, d);
    }
}

/// `class_logits += bag W^T` for the first `nb` texts, `W` the n-gram
/// logits' matrix `[classes, features]`.
fn add_ngram_logits<B: Backend>(
    be: &B,
    ws: &mut Workspace<B>,
    w: &B::Buf,
    c: &BigsConfig,
    nb: usize,
) {
    let lin = Linear {
        rows: nb,
        in_dim: c.head_ngram_features() as usize,
        out_dim: c.n_classes as usize,
    };
    be.matmul_forward(&mut ws.bag_logits, &ws.bag, w, None, lin);
    be.add_assign(&mut ws.class_logits, &ws.bag_logits);
}

/// The classification head's outputs: `tanh(dense(pooled))` and the
/// class logits read from it.
struct ClassHead<'w, B: Backend> {
    cp: &'w mut B::Buf,
    ct: &'w mut B::Buf,
    logits: &'w mut B::Buf,
}

impl<B: Backend> ClassHead<'_, B> {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        self,
        be: &B,
        p: &[B::Buf],
        (dense, out): (Lin, Lin),
        pooled: &B::Buf,
        nb: usize,
        d: usize,
        classes: usize,
    ) {
        let lin = Linear {
            rows: nb,
            in_dim: d,
            out_dim: d,
        };
        be.matmul_forward(self.cp, pooled, &p[dense.w], Some(&p[dense.b]), lin);
        be.tanh_forward(self.ct, self.cp, nb * d);
        let lin = Linear {
            rows: nb,
            in_dim: d,
            out_dim: classes,
        };
        be.matmul_forward(self.logits, self.ct, &p[out.w], Some(&p[out.b]), lin);
    }
}

/// Index of the largest value (the first on ties).
pub(crate) fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// The model ids of a byte string (bytes are their own ids).
pub fn byte_ids(text: &[u8]) -> Vec<u32> {
    text.iter().map(|&b| b as u32).collect()
}

/// The MASK id, for callers building masked inputs.
pub const MASK_ID: u32 = BIGS_MASK;
