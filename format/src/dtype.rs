//! Element types of tensors in a .kbm file and their byte sizes.

/// Elements per quantisation block (q8 and q4).
pub const QK: usize = 32;
/// Bytes of one q8 block: an f16 scale then 32 `i8` values (8.5 bits/weight).
pub const Q8_BLOCK_BYTES: usize = 2 + QK;
/// Bytes of one q4 block: an f16 scale then 16 bytes of packed nibbles (4.5 bits/weight).
pub const Q4_BLOCK_BYTES: usize = 2 + QK / 2;

/// A tensor's element type. The numeric codes are the on-disk values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// Blocks of 32 `i8` with one f16 scale, like ggml's Q8_0.
    Q8,
    /// Blocks of 32 4-bit values with one f16 scale, like ggml's Q4_0.
    Q4,
    /// Raw bytes: metadata such as a classifier's label names.
    U8,
}

impl DType {
    pub const ALL: [DType; 6] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8,
        DType::Q4,
        DType::U8,
    ];

    pub const fn code(self) -> u8 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
            DType::Q8 => 3,
            DType::Q4 => 4,
            DType::U8 => 5,
        }
    }

    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(DType::F32),
            1 => Some(DType::F16),
            2 => Some(DType::BF16),
            3 => Some(DType::Q8),
            4 => Some(DType::Q4),
            5 => Some(DType::U8),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8 => "q8",
            DType::Q4 => "q4",
            DType::U8 => "u8",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(name))
    }

    pub const fn is_quantized(self) -> bool {
        matches!(self, DType::Q8 | DType::Q4)
    }

    /// Whether the tensor holds numbers (everything but raw bytes).
    pub const fn is_numeric(self) -> bool {
        !matches!(self, DType::U8)
    }

    /// Bytes needed for `numel` elements, or `None` on overflow or when a
    /// quantised tensor's element count is not a whole number of blocks.
    pub const fn byte_len(self, numel: u64) -> Option<u64> {
        match self {
            DType::F32 => numel.checked_mul(4),
            DType::F16 | DType::BF16 => numel.checked_mul(2),
            DType::U8 => Some(numel),
            DType::Q8 | DType::Q4 => {
                if !numel.is_multiple_of(QK as u64) {
                    return None;
                }
                let block = if matches!(self, DType::Q8) {
                    Q8_BLOCK_BYTES
                } else {
                    Q4_BLOCK_BYTES
                };
                (numel / QK as u64).checked_mul(block as u64)
            }
        }
    }

    /// Storage cost in bits per element.
    pub fn bits_per_element(self) -> f32 {
        match self {
            DType::F32 => 32.0,
            DType::F16 | DType::BF16 => 16.0,
            DType::Q8 => (Q8_BLOCK_BYTES * 8) as f32 / QK as f32,
            DType::Q4 => (Q4_BLOCK_BYTES * 8) as f32 / QK as f32,
            DType::U8 => 8.0,
        }
    }
}

impl core::fmt::Display for DType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_sizes() {
        for d in DType::ALL {
            assert_eq!(DType::from_code(d.code()), Some(d));
            assert_eq!(DType::parse(d.name()), Some(d));
        }
        assert_eq!(DType::from_code(6), None);
        assert_eq!(DType::Q8.bits_per_element(), 8.5);
        assert_eq!(DType::Q4.bits_per_element(), 4.5);
        assert_eq!(DType::Q8.byte_len(64), Some(68));
        assert_eq!(DType::Q4.byte_len(64), Some(36));
        assert_eq!(DType::Q4.byte_len(33), None);
        assert_eq!(DType::F32.byte_len(u64::MAX), None);
    }
}
