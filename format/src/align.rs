//! Getting model bytes into 64-byte aligned memory, so that typed tensor
//! views (`as_f32`, ...) work in place and SIMD loads are aligned.

/// Wraps a value with 64-byte alignment. `Aligned64<[u8]>` is what
/// [`include_model!`](crate::include_model) produces.
#[repr(C, align(64))]
pub struct Aligned64<T: ?Sized>(pub T);

/// Embeds a .kbm file in the binary (flash, on firmware) at 64-byte alignment
/// and evaluates to a `&'static [u8]` of it, ready for `ModelFile::parse`:
///
/// ```
/// // The path is relative to the file that invokes the macro, as for
/// // `include_bytes!`; any file shows the alignment.
/// static MODEL: &[u8] = kilobyte_format::include_model!("../SPEC.md");
/// assert_eq!(MODEL.as_ptr() as usize % 64, 0);
/// assert!(MODEL.starts_with(b"# The .kbm"));
/// ```
#[macro_export]
macro_rules! include_model {
    ($path:expr) => {{
        static ALIGNED: &$crate::Aligned64<[u8]> = &$crate::Aligned64(*include_bytes!($path));
        &ALIGNED.0
    }};
}

#[cfg(test)]
mod tests {
    #[test]
    fn include_model_is_aligned() {
        let bytes: &'static [u8] = crate::include_model!("../SPEC.md");
        assert_eq!(bytes.as_ptr() as usize % 64, 0);
        assert!(bytes.starts_with(b"# The .kbm"));
    }
}
