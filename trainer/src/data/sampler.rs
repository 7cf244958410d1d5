//! Batches: random training windows and consecutive validation windows.

use super::corpus::Subset;
use crate::checkpoint::SamplerState;
use anyhow::{bail, Result};
use kilobyte_runtime::rng::Rng;

/// `rows` windows of `window` bytes each, stored row after row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub window: usize,
    pub bytes: Vec<u8>,
    /// Where each row starts, relative to the subset it came from.
    pub offsets: Vec<u64>,
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.offsets.len()
    }

    /// Row `r`, all `window` bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.bytes[r * self.window..(r + 1) * self.window]
    }

    /// A causal model's inputs: the row without its last byte.
    pub fn inputs(&self, r: usize) -> &[u8] {
        &self.row(r)[..self.window - 1]
    }

    /// A causal model's targets: the row without its first byte, so
    /// `targets(r)[t]` is the byte that follows `inputs(r)[t]`.
    pub fn targets(&self, r: usize) -> &[u8] {
        &self.row(r)[1..]
    }

    fn fill(&mut self, data: &Subset, window: usize, offsets: impl Iterator<Item = u64>) {
        self.window = window;
        self.offsets.clear();
        self.offsets.extend(offsets);
        self.bytes.resize(self.offsets.len() * window, 0);
        for (r, &o) in self.offsets.iter().enumerate() {
            data.read_at(o, &mut self.bytes[r * window..(r + 1) * window]);
        }
    }
}

/// Draws training batches: each row is a window starting at an offset
/// uniform over every position where a whole window fits.
#[derive(Clone, Debug)]
pub struct Sampler {
    data: Subset,
    window: usize,
    batch_size: usize,
    rng: Rng,
    step: u64,
}

impl Sampler {
    pub fn new(data: Subset, window: usize, batch_size: usize, seed: u64) -> Result<Sampler> {
        data.check_window(window)?;
        if batch_size == 0 {
            bail!("the batch size must be at least 1");
        }
        Ok(Sampler {
            data,
            window,
            batch_size,
            rng: Rng::new(seed),
            step: 0,
        })
    }

    pub fn state(&self) -> SamplerState {
        SamplerState {
            rng: self.rng.state(),
            step: self.step,
        }
    }

    /// Continues from a saved state; the window and batch size must be the
    /// ones the state was saved with for the batches to repeat.
    pub fn restore(&mut self, state: SamplerState) {
        self.rng = Rng::from_state(state.rng);
        self.step = state.step;
    }

    /// Batches drawn so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn next_batch(&mut self) -> Batch {
        let mut batch = Batch {
            window: self.window,
            bytes: Vec::new(),
            offsets: Vec::new(),
        };
        self.next_into(&mut batch);
        batch
    }

    /// Like [`Sampler::next_batch`], reusing `batch`'s memory.
    pub fn next_into(&mut self, batch: &mut Batch) {
        let positions = self.data.len() - self.window as u64 + 1;
        let rng = &mut self.rng;
        let offsets = (0..self.batch_size).map(|_| rng.below(positions));
        batch.fill(&self.data, self.window, offsets);
        self.step += 1;
    }
}

/// Validation batches: windows at offsets 0, stride, 2*stride... while a
/// whole window fits (a tail shorter than a window is not evaluated). With
/// a cap smaller than the number of windows, that many windows are taken
/// evenly spaced over the whole validation part, so a quick evaluation
/// still sees all of it rather than only its first file.
#[derive(Clone, Debug)]
pub struct ValBatches {
    data: Subset,
    window: usize,
    stride: u64,
    batch_size: usize,
    max_windows: Option<usize>,
    next: usize,
}

impl ValBatches {
    /// Windows of `window` bytes, `batch_size` per batch (the last batch
    /// may be smaller), stride `window` (no overlap) unless changed.
    pub fn new(data: Subset, window: usize, batch_size: usize) -> Result<ValBatches> {
        data.check_window(window)?;
        if batch_size == 0 {
            bail!("the batch size must be at least 1");
        }
        Ok(ValBatches {
            data,
            window,
            stride: window as u64,
            batch_size,
            max_windows: None,
            next: 0,
        })
    }

    /// Distance between window starts (a causal model uses `window - 1`).
    pub fn stride(mut self, stride: usize) -> Self {
        assert!(stride > 0, "the validation stride must be at least 1");
        self.stride = stride as u64;
        self
    }

    /// Evaluates at most `max` windows (None: all).
    pub fn max_windows(mut self, max: Option<usize>) -> Self {
        self.max_windows = max;
        self
    }

    fn available(&self) -> usize {
        ((self.data.len() - self.window as u64) / self.stride + 1) as usize
    }

    /// How many windows the iteration yields in all.
    pub fn windows(&self) -> usize {
        let all = self.available();
        self.max_windows.map_or(all, |m| m.min(all))
    }

    fn offset(&self, i: usize) -> u64 {
        let (all, used) = (self.available(), self.windows());
        let index = if used == all {
            i
        } else {
            (i as u128 * all as u128 / used as u128) as usize
        };
        index as u64 * self.stride
    }
}

impl Iterator for ValBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let end = self.windows().min(self.next + self.batch_size);
        if self.next >= end {
            return None;
        }
        let mut batch = Batch {
            window: self.window,
            bytes: Vec::new(),
            offsets: Vec::new(),
        };
        batch.fill(
            &self.data,
            self.window,
            (self.next..end).map(|i| self.offset(i)),
        );
        self.next = end;
        Some(batch)
    }
}
