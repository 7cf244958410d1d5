//! Fuzzes `ModelFile::parse`: no input may panic it or make it read out of
//! bounds, and whatever it accepts must be fully readable.
#![no_main]

use kilobyte_format::{Checksum, DType, ModelFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Skipping the checksum lets the fuzzer reach the directory and schema
    // checks behind it; verifying exercises the CRC path.
    for mode in [Checksum::Skip, Checksum::Verify] {
        let Ok(file) = ModelFile::parse_with(data, mode) else { continue };
        let mut out = [0f32; 4096];
        for t in file.tensors() {
            assert!(file.tensor(t.name).is_some());
            if t.dtype.is_numeric() && t.numel() <= out.len() {
                t.decode_into(&mut out[..t.numel()]).unwrap();
            }
            let _ = (t.as_f32(), t.as_f16(), t.as_bf16(), t.as_q8(), t.as_q4());
            assert!(t.dtype != DType::U8 || t.data.len() == t.numel());
        }
        let _ = file.labels().map(|l| l.count());
    }
});
