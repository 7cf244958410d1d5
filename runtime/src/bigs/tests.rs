//! The encoder against a plain forward pass written independently here:
//! f64, naive loops, dequantised weights, and the SSMs as the recurrence
//! `x_l = Abar x_{l-1} + u_l` instead of the runtime's convolution.

extern crate std;

use super::*;
use crate::arena::{Arena, ARENA_ALIGN, ARENA_SLACK};
use crate::testutil::aligned;
use kilobyte_format::config::{NgramConfig, BIGS_HEAD_CLASSIFY, BIGS_HEAD_MLM, BIGS_MASK};
use kilobyte_format::writer::KbmWriter;
use kilobyte_format::{for_each_tensor, AlignedBytes, DType, FormatError, Role};
use std::collections::BTreeMap;
use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

/// Both heads, and n-gram logits of orders 2 and 3 in 32 rows each (rows
/// repeat within a text, so their weights add up).
fn tiny() -> BigsConfig {
    let mut c = BigsConfig::preset(32, 64, 2, 4, 2, 24);
    c.heads = BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY;
    c.n_classes = 3;
    c.head_ngram = NgramConfig::orders(2, 3, 32);
    c
}

fn model_bytes(config: BigsConfig, dtype: DType, seed: u64) -> AlignedBytes {
    let labels = ["neg", "neutral", "pos"];
    crate::testutil::model_bytes(
        ModelConfig::Bigs(config),
        dtype,
        seed,
        &labels,
        |spec, i, r| {
            let name = spec.name.as_str();
            if spec.role == Role::Ssm {
                // In the ranges the trainer's init uses.
                if name.ends_with(".a") {
                    -0.7 + 0.1 * r
                } else if name.ends_with(".w") {
                    core::f32::consts::PI * (i % config.n_modes as usize) as f32
                } else if name.ends_with("log_dt") {
                    -3.0 + 0.5 * r
                } else {
                    0.7 * r
                }
            } else if name.ends_with("ln.weight") || name.ends_with("ln_f.weight") {
                1.0 + 0.1 * r
            } else {
                0.2 * r
            }
        },
    )
}

struct Ref {
    c: BigsConfig,
    t: BTreeMap<String, Vec<f64>>,
}

impl Ref {
    fn new(file: &ModelFile<'_>) -> Self {
        let ModelConfig::Bigs(c) = *file.config() else {
            unreachable!()
        };
        let mut t = BTreeMap::new();
        for x in file.tensors().filter(|x| x.dtype != DType::U8) {
            let mut v = vec![0f32; x.numel()];
            x.decode_into(&mut v).unwrap();
            t.insert(x.name.into(), v.iter().map(|&v| v as f64).collect());
        }
        Ref { c, t }
    }

    fn w(&self, name: &str) -> &[f64] {
        &self.t[name]
    }

    fn linear(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let (w, b) = (
            self.w(&format!("{name}.weight")),
            self.w(&format!("{name}.bias")),
        );
        let (rows, cols) = (b.len(), x.len());
        (0..rows)
            .map(|r| b[r] + (0..cols).map(|j| w[r * cols + j] * x[j]).sum::<f64>())
            .collect()
    }

    fn ln(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let (w, b) = (
            self.w(&format!("{name}.weight")),
            self.w(&format!("{name}.bias")),
        );
        let inv = 1.0 / (var + self.c.norm_eps as f64).sqrt();
        x.iter()
            .enumerate()
            .map(|(i, v)| (v - mean) * inv * w[i] + b[i])
            .collect()
    }

    fn gelu(x: f64) -> f64 {
        0.5 * x * (1.0 + ((2.0 / core::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
    }

    /// The SSM by its recurrence, over rows `u[t]`, in step order.
    fn ssm(&self, prefix: &str, u: &[Vec<f64>], backward: bool) -> Vec<Vec<f64>> {
        let (a, w, c) = (
            self.w(&format!("{prefix}.a")),
            self.w(&format!("{prefix}.w")),
            self.w(&format!("{prefix}.c")),
        );
        let (log_dt, dskip) = (
            self.w(&format!("{prefix}.log_dt")),
            self.w(&format!("{prefix}.d")),
        );
        let (n, width) = (u.len(), u[0].len());
        let (kernels, modes) = (self.c.ssm_kernels as usize, self.c.n_modes as usize);
        let per = width / kernels;
        let mut y = vec![vec![0.0; width]; n];
        for ch in 0..width {
            let k = ch / per;
            let dt = log_dt[k].exp();
            let mut state = vec![(0.0f64, 0.0f64); modes];
            for step in 0..n {
                let t = if backward { n - 1 - step } else { step };
                let ut = u[t][ch];
                let mut out = dskip[k] * ut;
                for (m, s) in state.iter_mut().enumerate() {
                    let i = k * modes + m;
                    let (are, aim) = (-a[i].exp(), w[i]);
                    let mag = (dt * are).exp();
                    let (abr, abi) = (mag * (dt * aim).cos(), mag * (dt * aim).sin());
                    // Bbar = (Abar - 1) / A
                    let den = are * are + aim * aim;
                    let (nr, ni) = (abr - 1.0, abi);
                    let (bbr, bbi) = ((nr * are + ni * aim) / den, (ni * are - nr * aim) / den);
                    // x = Abar x + u
                    *s = (abr * s.0 - abi * s.1 + ut, abr * s.1 + abi * s.0);
                    // Re(C Bbar x)
                    let (cr, ci) = (c[2 * i], c[2 * i + 1]);
                    let (gr, gi) = (cr * bbr - ci * bbi, cr * bbi + ci * bbr);
                    out += gr * s.0 - gi * s.1;
                }
                y[t][ch] = out;
            }
        }
        y
    }

    /// Final normalised states of `ids`.
    fn encode(&self, ids: &[u32]) -> Vec<Vec<f64>> {
        let d = self.c.d_model as usize;
        let (tok, pos) = (self.w("embed.tok"), self.w("embed.pos"));
        let mut x: Vec<Vec<f64>> = ids
            .iter()
            .enumerate()
            .map(|(t, &id)| {
                let e: Vec<f64> = (0..d)
                    .map(|j| tok[id as usize * d + j] + pos[t * d + j])
                    .collect();
                self.ln("embed.ln", &e)
            })
            .collect();
        for i in 0..self.c.layers {
            let p = |s: &str| format!("layers.{i}.{s}");
            let z: Vec<Vec<f64>> = x.iter().map(|r| self.ln(&p("ln"), r)).collect();
            let act = |name: &str| -> Vec<Vec<f64>> {
                z.iter()
                    .map(|r| self.linear(name, r).into_iter().map(Self::gelu).collect())
                    .collect()
            };
            let (v, f, b) = (act(&p("v")), act(&p("f")), act(&p("b")));
            let sf = self.ssm(&p("ssm_fwd"), &f, false);
            let sb = self.ssm(&p("ssm_bwd"), &b, true);
            for t in 0..x.len() {
                let uf = self.linear(&p("uf"), &sf[t]);
                let ub = self.linear(&p("ub"), &sb[t]);
                let g: Vec<f64> = uf.iter().zip(&ub).map(|(a, b)| a * b).collect();
                let h: Vec<f64> = self
                    .linear(&p("l"), &g)
                    .into_iter()
                    .map(Self::gelu)
                    .zip(&v[t])
                    .map(|(h, v)| h * v)
                    .collect();
                let y = self.linear(&p("o"), &h);
                for (xv, yv) in x[t].iter_mut().zip(y) {
                    *xv += yv;
                }
            }
        }
        x.iter().map(|r| self.ln("ln_f", r)).collect()
    }

    /// Reads a text longer than T_max as consecutive T_max-byte chunks,
    /// each encoded alone, pooled over all their positions.
    fn class_logits(&self, text: &[u8]) -> Vec<f64> {
        let z: Vec<Vec<f64>> = text
            .chunks(self.c.max_seq as usize)
            .flat_map(|w| self.encode(&w.iter().map(|&b| b as u32).collect::<Vec<_>>()))
            .collect();
        let d = z[0].len();
        let pooled: Vec<f64> = (0..d)
            .map(|j| z.iter().map(|r| r[j]).sum::<f64>() / z.len() as f64)
            .collect();
        let h: Vec<f64> = self
            .linear("cls.dense", &pooled)
            .into_iter()
            .map(f64::tanh)
            .collect();
        let mut logits = self.linear("cls.out", &h);
        // The n-gram logits: each n-gram of each chunk (its own start) adds
        // its column of the matrix, over the square root of the length.
        let h = self.c.head_ngram;
        if h.enabled() {
            let w = self.w("cls.ngram.weight");
            let features = (h.tables() * h.buckets) as usize;
            let scale = 1.0 / (text.len() as f64).sqrt();
            for chunk in text.chunks(self.c.max_seq as usize) {
                for t in 0..chunk.len() {
                    for (i, n) in h.each_order().enumerate() {
                        let col =
                            i * h.buckets as usize + h.bucket(n, t, |j| chunk[j] as u32) as usize;
                        for (c, l) in logits.iter_mut().enumerate() {
                            *l += scale * w[c * features + col];
                        }
                    }
                }
            }
        }
        logits
    }

    fn byte_logits(&self, ids: &[u32]) -> Vec<Vec<f64>> {
        let tok = self.w("embed.tok");
        let d = self.c.d_model as usize;
        self.encode(ids)
            .iter()
            .map(|r| {
                let h: Vec<f64> = self
                    .linear("mlm.dense", r)
                    .into_iter()
                    .map(Self::gelu)
                    .collect();
                let h = self.ln("mlm.ln", &h);
                (0..256)
                    .map(|c| (0..d).map(|j| tok[c * d + j] * h[j]).sum())
                    .collect()
            })
            .collect()
    }
}

fn text(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = crate::rng::Rng::new(seed);
    (0..n).map(|_| rng.below(256) as u8).collect()
}

pub(super) fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn encoder_matches_the_reference_at_every_length_class() {
    let config = tiny();
    let bytes = model_bytes(config, DType::F32, 1);
    let file = ModelFile::parse(&bytes).unwrap();
    let model = Bigs::from_file(&file).unwrap();
    let r = Ref::new(&file);
    let max_len = config.max_seq as usize;
    let mut arena = vec![0u8; Bigs::arena_bytes(&config, max_len)];
    let mut enc = model.encoder(&mut arena, max_len).unwrap();
    for (n, seed) in [(1, 3), (7, 4), (max_len, 5), (2 * max_len + 3, 6)] {
        let t = text(n, seed);
        let got = enc.class_logits(&t).unwrap().to_vec();
        let want = r.class_logits(&t);
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-4, "length {n}: class logits differ by {diff}");
        if n > max_len {
            continue; // the masked-byte head reads one window
        }
        let mut ids: Vec<u32> = t.iter().map(|&b| b as u32).collect();
        ids[n / 2] = BIGS_MASK;
        let want = r.byte_logits(&ids);
        let mut worst = 0.0f64;
        enc.byte_logits(&ids, |pos, l| worst = worst.max(max_diff(l, &want[pos])))
            .unwrap();
        assert!(worst < 1e-4, "length {n}: byte logits differ by {worst}");
    }
    let c = enc.classify(b"some text").unwrap();
    assert!((c.probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert_eq!(model.label(2), Some("pos"));
}

#[test]
fn quantised_models_stay_close_and_fill_replaces_only_gaps() {
    let config = tiny();
    let f32_bytes = model_bytes(config, DType::F32, 2);
    let f32_file = ModelFile::parse(&f32_bytes).unwrap();
    let reference = Bigs::from_file(&f32_file).unwrap();
    let mut arena = vec![0u8; Bigs::arena_bytes(&config, 24)];
    let t = text(20, 9);
    let want = reference
        .encoder(&mut arena, 24)
        .unwrap()
        .class_logits(&t)
        .unwrap()
        .to_vec();
    for (dtype, bound) in [(DType::F16, 0.01), (DType::Q8, 0.1), (DType::Q4, 0.5)] {
        let bytes = model_bytes(config, dtype, 2);
        let file = ModelFile::parse(&bytes).unwrap();
        let model = Bigs::from_file(&file).unwrap();
        let mut enc = model.encoder(&mut arena, 24).unwrap();
        let got = enc.class_logits(&t).unwrap();
        let scale = want.iter().map(|v| v.abs()).fold(1.0f32, f32::max);
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff <= bound * scale, "{dtype:?}: {diff} (scale {scale})");
        let gaps: Vec<bool> = (0..20).map(|i| i % 5 == 2).collect();
        let mut out = vec![0u8; 20];
        enc.fill(&t, &gaps, &mut out).unwrap();
        for i in 0..20 {
            if !gaps[i] {
                assert_eq!(out[i], t[i]);
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let config = tiny();
    let bytes = model_bytes(config, DType::F32, 3);
    let file = ModelFile::parse(&bytes).unwrap();
    let model = Bigs::from_file(&file).unwrap();
    let need = Bigs::arena_bytes(&config, 10);
    let mut small = vec![0u8; need - 1];
    match model.encoder(&mut small, 10) {
        Err(RuntimeError::ArenaTooSmall { needed, .. }) => assert_eq!(needed, need),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted a small arena"),
    }
    assert_eq!(Bigs::arena_bytes(&config, 25), 0);
    let mut arena = vec![0u8; need];
    let mut enc = model.encoder(&mut arena, 10).unwrap();
    assert!(matches!(
        enc.classify(&[1; 11]),
        Err(RuntimeError::BadContext { .. })
    ));
    assert!(matches!(
        enc.classify(&[]),
        Err(RuntimeError::BadContext { .. })
    ));
    let mut out = [0u8; 3];
    assert!(enc.fill(b"abc", &[true], &mut out).is_err());
    // A masked-byte-only model cannot classify.
    let mut mlm = config;
    mlm.heads = BIGS_HEAD_MLM;
    mlm.n_classes = 0;
    mlm.head_ngram = NgramConfig::OFF;
    let mut w = KbmWriter::new(ModelConfig::Bigs(mlm));
    for_each_tensor::<FormatError>(&ModelConfig::Bigs(mlm), |spec| {
        let Some(shape) = spec.shape else {
            return Ok(());
        };
        let n = shape.numel().unwrap() as usize;
        w.add_f32(spec.name.as_str(), DType::F32, shape.dims(), &vec![0.5; n])
    })
    .unwrap();
    let bytes = AlignedBytes::from_slice(&w.to_bytes().unwrap());
    let file = ModelFile::parse(&bytes).unwrap();
    let model = Bigs::from_file(&file).unwrap();
    let mut arena = vec![0u8; Bigs::arena_bytes(&mlm, 10)];
    let mut enc = model.encoder(&mut arena, 10).unwrap();
    assert!(matches!(
        enc.classify(b"x"),
        Err(RuntimeError::MissingHead { .. })
    ));
}

/// One list of regions both sizes and carves an encoder's arena: for every
/// shape and length, the carving fills exactly the layout's bytes (a byte
/// less is refused), each region as long as the layout says, and
/// `arena_bytes` is the layout plus the slack.
#[test]
fn an_encoder_carves_exactly_its_layout() {
    let mut buf = Vec::new();
    let one_class = BigsConfig {
        n_classes: 1,
        ..tiny()
    };
    for config in [tiny(), one_class, BigsConfig::MICRO, BigsConfig::SMALL] {
        let t_max = config.max_seq as usize;
        for max_len in [1, 2, 31, 33, t_max].into_iter().filter(|&n| n <= t_max) {
            let layout = Bigs::layout(&config, max_len);
            let n = layout.bytes();
            assert_eq!(Bigs::arena_bytes(&config, max_len), n + ARENA_SLACK);
            let mem = super::encoder::EncoderMem::carve(&layout, aligned(&mut buf, n));
            assert!(mem.unwrap().matches(&layout), "{max_len}");
            let short = super::encoder::EncoderMem::carve(&layout, aligned(&mut buf, n - 1));
            assert!(short.is_none(), "{max_len}");
        }
        assert_eq!(Bigs::layout(&config, t_max + 1), EncoderLayout::EMPTY);
        assert_eq!(Bigs::layout(&config, 0), EncoderLayout::EMPTY);
    }
}

/// An aligned arena of exactly the layout's bytes holds an encoder (no
/// slack), one of a block less is refused, and both kinds of arena
/// classify alike.
#[test]
fn an_encoder_fits_an_arena_of_exactly_its_layout() {
    const TINY: BigsConfig = BigsConfig {
        heads: BIGS_HEAD_MLM | BIGS_HEAD_CLASSIFY,
        n_classes: 3,
        head_ngram: NgramConfig::orders(2, 3, 32),
        ..BigsConfig::preset(32, 64, 2, 4, 2, 24)
    };
    const N: usize = Bigs::layout(&TINY, 20).bytes();
    assert_eq!(TINY, tiny());
    let bytes = model_bytes(TINY, DType::Q8, 6);
    let file = ModelFile::parse(&bytes).unwrap();
    let model = Bigs::from_file(&file).unwrap();
    let mut exact = std::boxed::Box::new(Arena::<N>::new());
    let mut plain = vec![0u8; Bigs::arena_bytes(&TINY, 20)];
    let mut e = model.encoder_in(&mut *exact, 20).unwrap();
    let mut f = model.encoder(&mut plain, 20).unwrap();
    assert_eq!(
        e.class_logits(b"in the arena").unwrap(),
        f.class_logits(b"in the arena").unwrap()
    );
    let mut small = std::boxed::Box::new(Arena::<{ N - ARENA_ALIGN }>::new());
    match model.encoder_in(&mut *small, 20) {
        Err(RuntimeError::ArenaTooSmall { needed, given }) => {
            assert_eq!((needed, given), (N, N - ARENA_ALIGN))
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted a small arena"),
    }
}
