//! Hashed n-gram embeddings at inference: a model's n-gram tables, borrowed
//! from the file, and the rows they add to one position's embedding; and a
//! BiGS classifier's n-gram logits, the weights its bag of n-grams adds to
//! the class logits.
//!
//! The hash is `kilobyte_format::config::NgramConfig::bucket` (the format
//! owns it); this module only looks rows up, one per order per position.

use crate::error::RuntimeError;
use crate::kernels::{self, Matrix};
use kilobyte_format::config::{BigsConfig, NgramConfig, NGRAM_MAX_ORDER, NGRAM_MIN_ORDER};
use kilobyte_format::dtype::QK;
use kilobyte_format::schema::{NgramInput, TensorId};
use kilobyte_format::ModelFile;

/// Tables a model can have: one per order.
pub const MAX_TABLES: usize = (NGRAM_MAX_ORDER - NGRAM_MIN_ORDER + 1) as usize;

/// The n-gram tables of one embedding, in ascending order.
#[derive(Clone, Debug)]
pub struct NgramTables<'m> {
    pub config: NgramConfig,
    pub tables: heapless::Vec<Matrix<'m>, MAX_TABLES>,
}

impl<'m> NgramTables<'m> {
    /// The tables of `input`'s embedding that `config` names.
    pub fn from_file(
        file: &ModelFile<'m>,
        input: NgramInput,
        config: NgramConfig,
    ) -> Result<Self, RuntimeError> {
        let mut tables = heapless::Vec::new();
        for order in config.each_order() {
            let m = crate::tensors::matrix(file, TensorId::Ngram { input, order })?;
            // At most MAX_TABLES orders pass the config's validation.
            let _ = tables.push(m);
        }
        Ok(NgramTables { config, tables })
    }

    /// Adds to `x` the row of every order's n-gram ending at position `t`,
    /// where `id(i)` is the id at position `i`; `row` is scratch of `x`'s
    /// length. Orders are added in ascending order, as the trainer does.
    pub fn add_rows(
        &self,
        t: usize,
        id: impl Fn(usize) -> u32,
        x: &mut [f32],
        row: &mut [f32],
    ) -> Result<(), RuntimeError> {
        for (table, n) in self.tables.iter().zip(self.config.each_order()) {
            let bucket = self.config.bucket(n, t, &id);
            kernels::embedding_row(table, bucket as usize, row)?;
            kernels::add(x, row)?;
        }
        Ok(())
    }
}

/// A classifier's n-gram logits (`BigsConfig::head_ngram`): the matrix
/// `[classes, tables * buckets]`, viewed as rows of one 32-element block
/// each (validation made the rows per order whole blocks), so that one
/// weight costs one block read with the ordinary embedding kernel,
/// whatever the dtype.
#[derive(Clone, Copy, Debug)]
pub struct NgramLogits<'m> {
    pub config: NgramConfig,
    blocks: Matrix<'m>,
    /// Columns of the matrix: `tables * buckets`.
    features: usize,
}

impl<'m> NgramLogits<'m> {
    /// The matrix of `config`'s classifier, or `None` when it has none.
    pub fn from_file(
        file: &ModelFile<'m>,
        config: &BigsConfig,
    ) -> Result<Option<Self>, RuntimeError> {
        if !config.head_ngram.enabled() || !config.has_classifier() {
            return Ok(None);
        }
        let m = crate::tensors::matrix(file, TensorId::ClsNgram)?;
        // The same weights as rows of one block: as many elements, so the
        // checks `matrix` made hold for the view.
        let blocks = Matrix {
            weights: m.weights,
            rows: m.rows * m.cols / QK,
            cols: QK,
        };
        Ok(Some(NgramLogits {
            config: config.head_ngram,
            blocks,
            features: m.cols,
        }))
    }

    /// Adds to `logits` each class's weight of every n-gram of `text`, read
    /// in windows of `t_max` bytes (n-grams start afresh in each, as the
    /// encoder reads them), over `sqrt(text.len())`. Out of line: the
    /// firmware's code budget (README) has no room for a copy per caller.
    #[inline(never)]
    pub fn add(&self, text: &[u8], t_max: usize, logits: &mut [f32]) -> Result<(), RuntimeError> {
        let scale = 1.0 / libm::sqrtf(text.len() as f32);
        let mut block = [0.0; QK];
        for p in 0..text.len() {
            // Position p of the text is position t of the window at `start`
            // (`crate::bigs::text_windows`' runs of t_max bytes).
            let t = p % t_max.max(1);
            let start = p - t;
            let mut order_col = 0;
            for n in self.config.each_order() {
                let mut at =
                    order_col + self.config.bucket(n, t, |j| text[start + j] as u32) as usize;
                order_col += self.config.buckets as usize;
                for l in logits.iter_mut() {
                    kernels::embedding_row(&self.blocks, at / QK, &mut block)?;
                    *l += scale * block[at % QK];
                    at += self.features;
                }
            }
        }
        Ok(())
    }
}
