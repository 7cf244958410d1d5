//! The demo corpus: kilobyte's own documentation and source text, compiled
//! into the binary so a first training run needs no download. About 150 KB
//! of English prose and Rust, enough for a micro model to learn visible
//! structure (identifiers, indentation, markdown tables) in minutes.

/// Every file of the built-in corpus, as (path in the repository, text),
/// in corpus order.
pub fn builtin_corpus_files() -> &'static [(&'static str, &'static str)] {
    // Paths are listed by hand: include_str! needs literals, and a fixed
    // list keeps the corpus (and so the demo's results) stable.
    macro_rules! files {
        ($($path:literal),* $(,)?) => {
            &[$(($path, include_str!(concat!("../../../", $path)))),*]
        };
    }
    files!(
        "README.md",
        "format/SPEC.md",
        "format/src/lib.rs",
        "format/src/config.rs",
        "format/src/schema.rs",
        "format/src/dtype.rs",
        "format/src/quant.rs",
        "format/src/file.rs",
        "format/src/error.rs",
        "format/src/crc.rs",
        "format/src/align.rs",
        "format/src/writer.rs",
        "format/src/st.rs",
        "runtime/src/lib.rs",
        "runtime/src/rng.rs",
        "runtime/src/kernels/mod.rs",
        "trainer/src/params.rs",
    )
}

/// The built-in corpus: its files concatenated, each preceded by a line
/// naming it (so a model sees where one file ends and the next begins).
pub fn builtin_corpus() -> Vec<u8> {
    let mut out = Vec::new();
    for (path, text) in builtin_corpus_files() {
        out.extend_from_slice(format!("==> {path} <==\n").as_bytes());
        out.extend_from_slice(text.as_bytes());
        if !text.ends_with('\n') {
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}
