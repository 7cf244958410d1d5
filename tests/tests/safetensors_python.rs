//! An exported safetensors file loads in the official Python `safetensors`
//! package with the same names, shapes and values as the .kbm it came from.
//!
//! Needs python3 with `safetensors` and `numpy`. Without them the test says so
//! and passes, unless KILOBYTE_REQUIRE_PYTHON=1 (CI sets it after installing
//! them), in which case their absence is a failure.

use kilobyte_format::st::{to_safetensors, ExportFloats};
use kilobyte_format::{BigsConfig, DType, ModelConfig, ModelFile};
use kilobyte_trainer::params::ParamSet;
use std::process::Command;

const SCRIPT: &str = r#"
import sys, zlib
from safetensors import safe_open
with safe_open(sys.argv[1], framework="numpy") as f:
    meta = f.metadata()
    print("family", meta["kilobyte.family"])
    for name in sorted(f.keys()):
        t = f.get_tensor(name)
        print(name, str(t.dtype), "x".join(map(str, t.shape)), "%08x" % zlib.crc32(t.tobytes()))
"#;

fn python_has_safetensors() -> bool {
    Command::new("python3")
        .args(["-c", "import safetensors, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn python_safetensors_loads_the_export() {
    if !python_has_safetensors() {
        assert!(
            std::env::var("KILOBYTE_REQUIRE_PYTHON").as_deref() != Ok("1"),
            "python3 with safetensors and numpy is required (pip install safetensors numpy)"
        );
        eprintln!("skipped: python3 with safetensors and numpy not found");
        return;
    }
    let mut c = BigsConfig::preset(64, 192, 1, 8, 1, 32);
    c.heads = 3;
    c.n_classes = 3;
    let params = ParamSet {
        labels: vec!["a".into(), "b".into(), "c".into()],
        ..ParamSet::init(ModelConfig::Bigs(c), 1).unwrap()
    };
    let kbm = params
        .to_writer(DType::Q4, DType::F16)
        .unwrap()
        .to_bytes()
        .unwrap();
    let file = ModelFile::parse(&kbm).unwrap();

    let dir = std::env::temp_dir().join(format!("kilobyte-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut expected = vec!["family bigs".to_string()];
    for floats in [ExportFloats::F32, ExportFloats::KeepHalf] {
        let path = dir.join("m.safetensors");
        std::fs::write(&path, to_safetensors(&file, floats).unwrap()).unwrap();
        let out = Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();

        expected.truncate(1);
        for t in file.tensors() {
            let (dtype, bytes) = match (t.dtype, floats) {
                (DType::U8, _) => ("uint8", t.data.to_vec()),
                (DType::F16, ExportFloats::KeepHalf) => ("float16", t.data.to_vec()),
                _ => {
                    let mut v = vec![0f32; t.numel()];
                    t.decode_into(&mut v).unwrap();
                    ("float32", v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
            };
            let shape: Vec<String> = t.shape.dims().iter().map(u32::to_string).collect();
            let crc = kilobyte_format::crc::crc32(&bytes);
            expected.push(format!("{} {dtype} {} {crc:08x}", t.name, shape.join("x")));
        }
        assert_eq!(got, expected);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
