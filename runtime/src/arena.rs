//! Carving typed, 64-byte aligned regions out of the caller's byte buffer.
//!
//! Sizes are computed twice, once by a `const fn` (so firmware can size a
//! `static` buffer at compile time) and once while carving; both go through
//! [`region`], so they cannot disagree.

use half::bf16;
use kilobyte_format::BlockQ8;

/// Alignment of every region (a cache line; what AVX loads like).
pub const ARENA_ALIGN: usize = 64;

/// Bytes a region of `bytes` occupies once rounded up to the alignment.
pub const fn region(bytes: usize) -> usize {
    bytes.div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

/// Bytes of `n` f32 values as a region.
pub const fn f32_region(n: usize) -> usize {
    region(n * 4)
}

/// Bytes of `n` q8 blocks as a region.
pub const fn q8_region(n: usize) -> usize {
    region(n * core::mem::size_of::<BlockQ8>())
}

/// Slack for aligning the start of an arbitrary caller buffer.
pub const ARENA_SLACK: usize = ARENA_ALIGN;

/// Hands out consecutive aligned regions of a buffer. Callers check the
/// total size first; carving past the end is a bug and panics in tests.
pub struct Carver<'a> {
    rest: &'a mut [u8],
}

impl<'a> Carver<'a> {
    /// Starts at the first 64-byte boundary of `buf`. Returns `None` when the
    /// buffer is too small to reach one.
    pub fn new(buf: &'a mut [u8]) -> Option<Self> {
        let skip = buf.as_ptr().align_offset(ARENA_ALIGN);
        let rest = buf.get_mut(skip..)?;
        Some(Carver { rest })
    }

    /// Bytes left after alignment.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, bytes: usize) -> &'a mut [u8] {
        let size = region(bytes);
        let rest = core::mem::take(&mut self.rest);
        let (head, tail) = rest.split_at_mut(size);
        self.rest = tail;
        &mut head[..bytes]
    }

    pub fn f32s(&mut self, n: usize) -> &'a mut [f32] {
        let bytes = self.take(n * 4);
        bytes.fill(0);
        bytemuck::cast_slice_mut(bytes)
    }

    pub fn bytes(&mut self, n: usize) -> &'a mut [u8] {
        let bytes = self.take(n);
        bytes.fill(0);
        bytes
    }

    pub fn bf16s(&mut self, n: usize) -> &'a mut [bf16] {
        let bytes = self.take(n * 2);
        bytes.fill(0);
        bytemuck::cast_slice_mut(bytes)
    }

    pub fn q8_blocks(&mut self, n: usize) -> &'a mut [BlockQ8] {
        let bytes = self.take(n * core::mem::size_of::<BlockQ8>());
        bytes.fill(0);
        bytemuck::cast_slice_mut(bytes)
    }

    pub fn i8s(&mut self, n: usize) -> &'a mut [i8] {
        let bytes = self.take(n);
        bytes.fill(0);
        bytemuck::cast_slice_mut(bytes)
    }
}
