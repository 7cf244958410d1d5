//! Hashed n-gram embeddings at inference: a model's n-gram tables, borrowed
//! from the file, and the rows they add to one position's embedding.
//!
//! The hash is `kilobyte_format::config::NgramConfig::bucket` (the format
//! owns it); this module only looks rows up, one per order per position.

use crate::error::RuntimeError;
use crate::kernels::{self, Matrix};
use kilobyte_format::config::{NgramConfig, NGRAM_MAX_ORDER, NGRAM_MIN_ORDER};
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
