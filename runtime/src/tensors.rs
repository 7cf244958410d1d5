//! Resolving a parsed file's tensors, named by the format's typed
//! [`TensorId`], into the views the kernels take: matrices (any dtype) and
//! f32 vectors. Both families' `from_file` go through here; this module
//! knows no model and does no arithmetic.

use crate::error::RuntimeError;
use crate::kernels::Matrix;
use kilobyte_format::schema::{Affine, TensorId};
use kilobyte_format::ModelFile;

/// A matrix `[rows, ...]`, its trailing dimensions flattened into columns.
/// Out of line: it has a caller per weight, and the firmware's code budget
/// (README) has no room for a copy in each.
#[inline(never)]
pub(crate) fn matrix<'m>(file: &ModelFile<'m>, id: TensorId) -> Result<Matrix<'m>, RuntimeError> {
    let t = file.get(id.name().as_str())?;
    let dims = t.shape.dims();
    // The parser already checked every shape against the config.
    let (rows, cols) = (
        dims[0] as usize,
        dims.iter().skip(1).product::<u32>() as usize,
    );
    Ok(Matrix::from_tensor(&t, rows, cols)?)
}

/// An f32 vector (norms, biases, pads, SSM parameters).
pub(crate) fn vector<'m>(file: &ModelFile<'m>, id: TensorId) -> Result<&'m [f32], RuntimeError> {
    Ok(file.get(id.name().as_str())?.as_f32()?)
}

/// A norm's weight and bias: `(weight, bias)` for `id(Weight)`, `id(Bias)`.
pub(crate) fn norm<'m>(
    file: &ModelFile<'m>,
    id: &dyn Fn(Affine) -> TensorId,
) -> Result<(&'m [f32], &'m [f32]), RuntimeError> {
    Ok((
        vector(file, id(Affine::Weight))?,
        vector(file, id(Affine::Bias))?,
    ))
}
