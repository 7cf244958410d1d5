//! Incremental decoding against a plain full forward pass written
//! independently here (Vec, naive loops, dequantised weights): at every
//! prefix length the session's logits must match.

extern crate std;

use super::*;
use crate::arena::{Arena, ARENA_ALIGN, ARENA_SLACK};
use crate::testutil::aligned;
use kilobyte_format::{AlignedBytes, DType, FormatError};
use std::vec;
use std::vec::Vec;

/// A small config with several patches, two heads per level and odd-ish sizes.
pub(crate) fn tiny_config() -> MegabyteConfig {
    MegabyteConfig::preset(4, 16, 2, 2, 32, 2, 2, 48)
}

/// Random weights of a larger spread than training would give, so that the
/// comparison is sensitive (small weights make every logit nearly equal).
pub(crate) fn model_bytes(config: MegabyteConfig, dtype: DType, seed: u64) -> AlignedBytes {
    crate::testutil::model_bytes(
        ModelConfig::Megabyte(config),
        dtype,
        seed,
        &[],
        |spec, _, r| {
            let name = spec.name.as_str();
            if name.ends_with("ln1.weight")
                || name.ends_with("ln2.weight")
                || name.ends_with("ln_f.weight")
            {
                1.0 + 0.1 * r
            } else {
                0.15 * r
            }
        },
    )
}

/// Dequantised weights by name.
struct Ref {
    c: MegabyteConfig,
    t: std::collections::BTreeMap<std::string::String, Vec<f32>>,
}

impl Ref {
    fn new(file: &ModelFile<'_>) -> Self {
        let c = match file.config() {
            ModelConfig::Megabyte(c) => *c,
            _ => unreachable!(),
        };
        let mut t = std::collections::BTreeMap::new();
        for x in file.tensors() {
            let mut v = vec![0f32; x.numel()];
            x.decode_into(&mut v).unwrap();
            t.insert(x.name.into(), v);
        }
        Ref { c, t }
    }

    fn w(&self, name: &str) -> &[f32] {
        &self.t[name]
    }

    /// y = W x for W [rows, x.len()].
    fn mv(&self, name: &str, x: &[f32]) -> Vec<f32> {
        let w = self.w(name);
        let cols = x.len();
        (0..w.len() / cols)
            .map(|r| (0..cols).map(|j| w[r * cols + j] * x[j]).sum())
            .collect()
    }

    fn ln(&self, prefix: &str, x: &[f32]) -> Vec<f32> {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let r = 1.0 / (var + self.c.norm_eps).sqrt();
        let (g, b) = (
            self.w(&std::format!("{prefix}.weight")),
            self.w(&std::format!("{prefix}.bias")),
        );
        x.iter()
            .enumerate()
            .map(|(i, v)| (v - mean) * r * g[i] + b[i])
            .collect()
    }

    /// A causal transformer over `xs` (rows), returning the final-normed rows.
    fn transformer(
        &self,
        prefix: &str,
        layers: u32,
        heads: usize,
        mut xs: Vec<Vec<f32>>,
    ) -> Vec<Vec<f32>> {
        let w = xs[0].len();
        let hd = w / heads;
        for i in 0..layers {
            let b = std::format!("{prefix}.blocks.{i}");
            let qkv: Vec<Vec<f32>> = xs
                .iter()
                .map(|x| {
                    self.mv(
                        &std::format!("{b}.attn.qkv"),
                        &self.ln(&std::format!("{b}.ln1"), x),
                    )
                })
                .collect();
            let mut att = vec![vec![0f32; w]; xs.len()];
            for (t, out) in att.iter_mut().enumerate() {
                for h in 0..heads {
                    let q = &qkv[t][h * hd..(h + 1) * hd];
                    let s: Vec<f32> = (0..=t)
                        .map(|j| {
                            let k = &qkv[j][w + h * hd..w + (h + 1) * hd];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = s.iter().map(|v| (v - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for (j, ej) in e.iter().enumerate() {
                        for d in 0..hd {
                            out[h * hd + d] += ej / z * qkv[j][2 * w + h * hd + d];
                        }
                    }
                }
            }
            for (x, a) in xs.iter_mut().zip(&att) {
                let o = self.mv(&std::format!("{b}.attn.proj"), a);
                x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
                let mut hid = self.mv(
                    &std::format!("{b}.mlp.fc"),
                    &self.ln(&std::format!("{b}.ln2"), x),
                );
                for v in hid.iter_mut() {
                    let u = 0.797_884_6 * (*v + 0.044715 * *v * *v * *v);
                    *v = 0.5 * *v * (1.0 + u.tanh());
                }
                let o = self.mv(&std::format!("{b}.mlp.proj"), &hid);
                x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            }
        }
        xs.iter()
            .map(|x| self.ln(&std::format!("{prefix}.ln_f"), x))
            .collect()
    }

    /// Logits for every position 0..=bytes.len(): row t predicts byte t.
    fn forward(&self, bytes: &[u8]) -> Vec<Vec<f32>> {
        let c = &self.c;
        let (p, dg, l) = (
            c.patch_size as usize,
            c.d_global as usize,
            c.d_local as usize,
        );
        let n = bytes.len() + 1;
        let k = n.div_ceil(p);
        let emb = |name: &str, row: usize, width: usize| {
            self.w(name)[row * width..(row + 1) * width].to_vec()
        };
        let inputs: Vec<Vec<f32>> = (0..k)
            .map(|kk| {
                if kk == 0 {
                    return self.w("global.pad").to_vec();
                }
                (0..p)
                    .flat_map(|pos| {
                        let t = (kk - 1) * p + pos;
                        let e = emb("global.tok_emb", bytes[t] as usize, dg);
                        let q = emb("global.pos_emb", t, dg);
                        e.into_iter().zip(q).map(|(a, b)| a + b).collect::<Vec<_>>()
                    })
                    .collect()
            })
            .collect();
        let h = self.transformer("global", c.layers_global, c.heads_global as usize, inputs);
        let mut out = Vec::new();
        for (kk, hk) in h.iter().enumerate() {
            let rows: Vec<Vec<f32>> = (0..p)
                .map(|pos| {
                    let base = self.mv("global_to_local", &hk[pos * dg..(pos + 1) * dg]);
                    let add = if pos == 0 {
                        self.w("local.pad").to_vec()
                    } else {
                        emb("local.tok_emb", bytes[kk * p + pos - 1] as usize, l)
                    };
                    base.iter().zip(&add).map(|(a, b)| a + b).collect()
                })
                .take(n - kk * p)
                .collect();
            for hl in self.transformer("local", c.layers_local, c.heads_local as usize, rows) {
                out.push(self.mv("local.tok_emb", &hl));
            }
        }
        out
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn text(n: usize) -> Vec<u8> {
    b"It was the best of times, it was the worst of times; \x00\xff bytes too. "
        .iter()
        .cycle()
        .take(n)
        .copied()
        .collect()
}

fn arena_for(config: &MegabyteConfig, spec: ArenaSpec) -> Vec<u8> {
    vec![0u8; spec.arena_bytes(config)]
}

#[test]
fn incremental_equals_full_forward_at_every_prefix() {
    let config = tiny_config();
    let bytes = model_bytes(config, DType::F32, 1);
    let file = ModelFile::parse(&bytes).unwrap();
    let model = Megabyte::from_file(&file).unwrap();
    let reference = Ref::new(&file);
    let input = text(config.max_seq as usize - 1);
    let want = reference.forward(&input);
    let spec = ArenaSpec::new(config.max_seq as usize);
    let mut arena = arena_for(&config, spec);
    let mut s = model.session(&mut arena, spec).unwrap();
    let mut worst = 0f32;
    for (t, &b) in input.iter().enumerate() {
        worst = worst.max(max_diff(s.logits(), &want[t]));
        s.push(b).unwrap();
    }
    worst = worst.max(max_diff(s.logits(), &want[input.len()]));
    let scale = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        worst <= 1e-5,
        "max abs diff {worst} (largest logit {scale})"
    );
    std::eprintln!("max abs diff {worst}, largest logit {scale}");
}

/// The int8 global cache stays close to the f32 one at every position
/// (including past a slide), and its arena is about a quarter the size for
/// the cache part.
#[test]
fn i8_cache_tracks_the_f32_cache() {
    let config = tiny_config();
    let bytes = model_bytes(config, DType::F32, 4);
    let file = ModelFile::parse(&bytes).unwrap();
    let model = Megabyte::from_file(&file).unwrap();
    let f32_spec = ArenaSpec::new(config.max_seq as usize);
    let i8_spec = f32_spec.with_i8_cache();
    let (mut a1, mut a2) = (arena_for(&config, f32_spec), arena_for(&config, i8_spec));
    assert!(a2.len() < a1.len());
    let mut exact = model.session(&mut a1, f32_spec).unwrap();
    let mut compact = model.session(&mut a2, i8_spec).unwrap();
    let input = text(2 * config.max_seq as usize);
    let mut worst = 0f32;
    let mut scale = 0f32;
    for &b in &input {
        worst = worst.max(max_diff(exact.logits(), compact.logits()));
        scale = exact.logits().iter().fold(scale, |m, v| m.max(v.abs()));
        exact.push(b).unwrap();
        compact.push(b).unwrap();
    }
    // Each cached value is off by at most half its row's scale (1/254 of
    // the row's largest magnitude): a few percent of the logit range here.
    assert!(
        worst <= 0.05 * scale,
        "max abs diff {worst} (largest logit {scale})"
    );
    std::eprintln!("i8 cache: max abs diff {worst}, largest logit {scale}");
}

#[test]
fn prefill_equals_pushing_byte_by_byte() {
    let config = tiny_config();
    for dtype in [DType::F32, DType::Q8, DType::Q4] {
        let bytes = model_bytes(config, dtype, 2);
        let file = ModelFile::parse(&bytes).unwrap();
        let model = Megabyte::from_file(&file).unwrap();
        for prefill_patches in [1, 3] {
            let spec = ArenaSpec {
                prefill_patches,
                ..ArenaSpec::new(32)
            };
            let (mut a1, mut a2) = (arena_for(&config, spec), arena_for(&config, spec));
            // Lengths across patch boundaries and past the window (sliding).
            for (split, total) in [(0, 1), (3, 9), (4, 8), (5, 31), (7, 32), (2, 70)] {
                let input = text(total);
                let mut one = model.session(&mut a1, spec).unwrap();
                for &b in &input {
                    one.push(b).unwrap();
                }
                let mut two = model.session(&mut a2, spec).unwrap();
                two.prefill(&input[..split]).unwrap();
                two.prefill(&input[split..]).unwrap();
                assert_eq!(one.window(), two.window(), "{dtype} {split}/{total}");
                let d = max_diff(one.logits(), two.logits());
                assert!(
                    d <= 1e-4,
                    "{dtype} chunk {prefill_patches} {split}/{total}: {d}"
                );
            }
        }
    }
}

#[test]
fn sliding_keeps_generating_with_rebased_positions() {
    let config = tiny_config();
    let bytes = model_bytes(config, DType::F32, 3);
    let file = ModelFile::parse(&bytes).unwrap();
    let model = Megabyte::from_file(&file).unwrap();
    let reference = Ref::new(&file);
    let spec = ArenaSpec::new(16); // 4 patches; slides by 2 patches = 8 bytes
    let mut arena = arena_for(&config, spec);
    let mut s = model.session(&mut arena, spec).unwrap();
    let input = text(40);
    for (i, &b) in input.iter().enumerate() {
        s.push(b).unwrap();
        let window = s.window().to_vec();
        assert!(window.len() < 16);
        assert_eq!(
            &input[i + 1 - window.len()..=i],
            &window[..],
            "the window is the latest bytes"
        );
        let want = reference.forward(&window);
        assert!(max_diff(s.logits(), &want[window.len()]) <= 1e-5);
    }
}

#[test]
fn arena_and_context_errors() {
    let config = tiny_config();
    let bytes = model_bytes(config, DType::F32, 4);
    let file = ModelFile::parse(&bytes).unwrap();
    let model = Megabyte::from_file(&file).unwrap();
    let spec = ArenaSpec::new(48);
    let need = spec.arena_bytes(&config);
    assert_eq!(need, Megabyte::arena_bytes(&config, 48));
    let mut small = vec![0u8; need - 1];
    match model.session(&mut small, spec) {
        Err(RuntimeError::ArenaTooSmall { needed, given }) => {
            assert_eq!((needed, given), (need, need - 1))
        }
        other => panic!("{:?}", other.err()),
    }
    // Any start alignment works with the documented size.
    let mut big = vec![0u8; need + ARENA_ALIGN];
    for off in [1, 7, 63] {
        model.session(&mut big[off..off + need], spec).unwrap();
    }
    for bad in [0, 6, 52, 4] {
        let r = model.session(&mut big, ArenaSpec::new(bad));
        assert!(matches!(r, Err(RuntimeError::BadContext { .. })), "{bad}");
    }
    const MICRO_ARENA: usize = Megabyte::arena_bytes(&MegabyteConfig::MICRO, 512);
    const { assert!(MICRO_ARENA > 0) };
}

#[test]
fn wrong_family_and_unaligned_bytes_are_errors() {
    let config = tiny_config();
    let bytes = model_bytes(config, DType::F32, 5);
    let mut shifted = vec![0u8; bytes.len() + 1];
    shifted[1..].copy_from_slice(&bytes);
    let moved = AlignedBytes::from_slice(&shifted);
    let file = ModelFile::parse(&moved[1..]).unwrap();
    assert!(matches!(
        Megabyte::from_file(&file),
        Err(RuntimeError::Format(FormatError::UnalignedMemory { .. }))
    ));
}

/// One list of regions both sizes and carves a session's arena: for every
/// shape, the carving fills exactly the layout's bytes (a byte less is
/// refused), each region as long as the layout says, and `arena_bytes` is
/// the layout plus the slack.
#[test]
fn a_session_carves_exactly_its_layout() {
    let mut buf = Vec::new();
    for config in [tiny_config(), MegabyteConfig::MICRO, MegabyteConfig::SMALL] {
        let p = config.patch_size as usize;
        for context in [2 * p, 3 * p, config.max_seq as usize] {
            for prefill_patches in [1, 3, 1000] {
                for spec in [
                    ArenaSpec {
                        prefill_patches,
                        ..ArenaSpec::new(context)
                    },
                    ArenaSpec {
                        prefill_patches,
                        ..ArenaSpec::new(context).with_i8_cache()
                    },
                ] {
                    let layout = spec.layout(&config);
                    let n = layout.bytes();
                    assert_eq!(spec.arena_bytes(&config), n + ARENA_SLACK, "{spec:?}");
                    let mem = super::session::SessionMem::carve(&layout, aligned(&mut buf, n));
                    assert!(mem.unwrap().matches(&layout), "{spec:?}");
                    let short =
                        super::session::SessionMem::carve(&layout, aligned(&mut buf, n - 1));
                    assert!(short.is_none(), "{spec:?}");
                }
            }
        }
    }
    let bad = ArenaSpec::new(5);
    assert_eq!(bad.layout(&tiny_config()), SessionLayout::EMPTY);
    assert_eq!(bad.arena_bytes(&tiny_config()), 0);
}

/// An aligned arena of exactly the layout's bytes holds a session (no
/// slack), one of a block less is refused, and both kinds of arena run the
/// same session.
#[test]
fn a_session_fits_an_arena_of_exactly_its_layout() {
    const TINY: MegabyteConfig = MegabyteConfig::preset(4, 16, 2, 2, 32, 2, 2, 48);
    const SPEC: ArenaSpec = ArenaSpec::new(48).with_i8_cache();
    const N: usize = SPEC.layout(&TINY).bytes();
    assert_eq!(TINY, tiny_config());
    let bytes = model_bytes(TINY, DType::Q8, 6);
    let file = ModelFile::parse(&bytes).unwrap();
    let model = Megabyte::from_file(&file).unwrap();
    let mut exact = std::boxed::Box::new(Arena::<N>::new());
    let mut s = model.session_in(&mut *exact, SPEC).unwrap();
    let mut plain = vec![0u8; SPEC.arena_bytes(&TINY)];
    let mut t = model.session(&mut plain, SPEC).unwrap();
    s.prefill(b"in the arena").unwrap();
    t.prefill(b"in the arena").unwrap();
    assert_eq!(s.logits(), t.logits());
    let mut small = std::boxed::Box::new(Arena::<{ N - ARENA_ALIGN }>::new());
    match model.session_in(&mut *small, SPEC) {
        Err(RuntimeError::ArenaTooSmall { needed, given }) => {
            assert_eq!((needed, given), (N, N - ARENA_ALIGN))
        }
        other => panic!("{:?}", other.err()),
    }
}
