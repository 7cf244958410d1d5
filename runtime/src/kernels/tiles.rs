//! The loop nest shared by the SIMD matrix products.

/// How much of the input batch to keep hot at once: about a quarter of a
/// typical L2, leaving room for the weight rows streaming past.
const INPUT_CHUNK_BYTES: usize = 256 * 1024;

/// Fills `y` (`n` rows of `rows`) tile by tile: `tile(r, i)` returns the dot
/// products of weight rows `r` with inputs `i`.
///
/// Inputs are taken in chunks of about [`INPUT_CHUNK_BYTES`]
/// (`input_bytes` each); within a chunk every weight row is loaded from
/// memory once and used for all its inputs while it sits in L1. That reuse
/// is what makes a matmul faster than `n` matvecs. Tiles at a ragged edge
/// repeat the last row or input, so the kernel always sees a full `R x N`
/// tile; the repeats are computed but not stored.
pub(super) fn for_each_tile<const R: usize, const N: usize>(
    rows: usize,
    n: usize,
    input_bytes: usize,
    y: &mut [f32],
    mut tile: impl FnMut([usize; R], [usize; N]) -> [[f32; N]; R],
) {
    let chunk = (INPUT_CHUNK_BYTES / input_bytes.max(1))
        .max(1)
        .next_multiple_of(N);
    for c0 in (0..n).step_by(chunk) {
        let c1 = n.min(c0 + chunk);
        for r0 in (0..rows).step_by(R) {
            let r = core::array::from_fn(|k| (r0 + k).min(rows - 1));
            for i0 in (c0..c1).step_by(N) {
                let i = core::array::from_fn(|k| (i0 + k).min(c1 - 1));
                let dots = tile(r, i);
                for (k, dots) in dots.iter().enumerate().take(rows - r0) {
                    for (m, &d) in dots.iter().enumerate().take(c1 - i0) {
                        y[(i0 + m) * rows + r0 + k] = d;
                    }
                }
            }
        }
    }
}

/// The length of the shortest slice of a tile: the tile kernels run to it,
/// so no slice is read past its end whatever they are given.
pub(super) fn shortest<A, B, const R: usize, const N: usize>(
    a: &[&[A]; R],
    b: &[&[B]; N],
) -> usize {
    let a = a.iter().map(|s| s.len());
    a.chain(b.iter().map(|s| s.len())).min().unwrap_or(0)
}
