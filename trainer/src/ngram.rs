//! Hashed n-gram embeddings in the trainer: for one embedding (BiGS's token
//! embedding, MEGABYTE's global or local byte embedding), the parameter
//! index of each order's table and the table rows of every position of a
//! batch, computed on the host and uploaded once per step; and a BiGS
//! classifier's bag of n-grams, the input of its n-gram logits.
//!
//! The hash is `kilobyte_format::config::NgramConfig::bucket`, shared with
//! the runtime; the lookups are the backend's ordinary embedding ops, so
//! every backend runs n-grams without kernels of its own.

use crate::backend::Backend;
use crate::params::{find_param as find, ParamMeta};
use anyhow::Result;
use kilobyte_format::config::NgramConfig;
use kilobyte_format::schema::{NgramInput, TensorId};

/// The n-gram tables of one embedding and their rows for the current batch.
pub struct NgramRows<B: Backend> {
    config: NgramConfig,
    /// Parameter index of each order's table, ascending order.
    tables: Vec<usize>,
    /// The rows of every position, one buffer per order.
    ids: Vec<B::Ids>,
    host: Vec<u32>,
}

impl<B: Backend> NgramRows<B> {
    /// Buffers for `rows` positions of the tables of `input`'s embedding.
    pub fn new(
        be: &B,
        meta: &[ParamMeta],
        input: NgramInput,
        config: NgramConfig,
        rows: usize,
    ) -> Result<Self> {
        Ok(NgramRows {
            config,
            tables: config
                .each_order()
                .map(|order| find(meta, TensorId::Ngram { input, order }))
                .collect::<Result<_>>()?,
            ids: (0..config.tables())
                .map(|_| be.upload_ids(&vec![0; rows]))
                .collect::<Result<_>>()?,
            host: vec![0; rows],
        })
    }

    /// Hashes the n-grams of `ids`, texts of `seq` positions one after the
    /// other; each text starts its n-grams afresh (NGRAM_BOS before it), as
    /// the runtime's window does.
    pub fn write(&mut self, be: &B, ids: &[u32], seq: usize) -> Result<()> {
        let c = self.config;
        let host = &mut self.host[..ids.len()];
        for (buf, n) in self.ids.iter_mut().zip(c.each_order()) {
            for (i, row) in host.iter_mut().enumerate() {
                let text = &ids[i / seq * seq..];
                *row = c.bucket(n, i % seq, |j| text[j]);
            }
            be.write_ids(buf, host)?;
        }
        Ok(())
    }

    /// `out[r] += table_n[row_n(r)]` for every order, ascending.
    pub fn forward(&self, be: &B, params: &[B::Buf], out: &mut B::Buf, rows: usize, width: usize) {
        for (&table, ids) in self.tables.iter().zip(&self.ids) {
            be.embedding_forward(out, &params[table], ids, rows, width, true);
        }
    }

    /// The tables' gradients from the embedding's gradient `dout`.
    pub fn backward(&self, be: &B, grads: &mut [B::Buf], dout: &B::Buf, rows: usize, width: usize) {
        for (&table, ids) in self.tables.iter().zip(&self.ids) {
            be.embedding_backward(&mut grads[table], dout, ids, rows, width);
        }
    }
}

/// Adds `scale` to the column of every n-gram of `window` in `row`, a row
/// of the bag the n-gram logits' matrix reads (`BigsConfig::head_ngram`:
/// column `i * buckets + bucket` for the i-th order). The n-grams start
/// afresh at the window's first id, as the runtime's do.
pub fn add_to_bag(config: NgramConfig, window: &[u32], scale: f32, row: &mut [f32]) {
    let buckets = config.buckets as usize;
    for t in 0..window.len() {
        for (i, n) in config.each_order().enumerate() {
            row[i * buckets + config.bucket(n, t, |j| window[j]) as usize] += scale;
        }
    }
}
