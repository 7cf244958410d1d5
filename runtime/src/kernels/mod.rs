//! CPU kernels: a scalar reference for every op, and SIMD versions tested
//! against it. (Filled in by the runtime issue.)
