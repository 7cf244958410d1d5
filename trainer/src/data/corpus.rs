//! The corpus (files concatenated, memory-mapped) and its train/validation
//! split.

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The fraction of the corpus that validates unless told otherwise.
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;

/// Where one file's bytes sit in the concatenation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusFile {
    pub path: PathBuf,
    /// Offset of the file's first byte in the corpus.
    pub start: u64,
    pub len: u64,
}

enum Source {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Source {
    fn bytes(&self) -> &[u8] {
        match self {
            Source::Mapped(m) => m,
            Source::Owned(v) => v,
        }
    }
}

/// The concatenation of some files' bytes, in a fixed order.
///
/// Files are memory-mapped, not read: the OS pages in what the sampler
/// touches. A file truncated by another process while mapped makes reads
/// fault (SIGBUS), as with any memory map; don't edit a corpus mid-run.
pub struct Corpus {
    files: Vec<CorpusFile>,
    sources: Vec<Source>,
    len: u64,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Corpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Corpus")
            .field("files", &self.files)
            .field("len", &self.len)
            .finish()
    }
}

impl Corpus {
    /// Opens files and directories, in the order given. Directories are
    /// walked recursively in sorted path order, skipping hidden entries (names
    /// starting with `.`, such as `.git`), symlinked directories (they can form
    /// cycles), special files and unreadable files, each with a warning on
    /// stderr (also kept in [`Corpus::warnings`]). A path named explicitly
    /// must exist and be readable. Empty files contribute nothing.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Corpus> {
        let mut corpus = Corpus {
            files: Vec::new(),
            sources: Vec::new(),
            len: 0,
            warnings: Vec::new(),
        };
        if paths.is_empty() {
            bail!("no training data given: name at least one file or directory");
        }
        for path in paths {
            let path = path.as_ref();
            let meta = fs::metadata(path).with_context(|| format!("{}", path.display()))?;
            if meta.is_dir() {
                if crate::checkpoint::is_run(path) {
                    bail!(
                        "{}: a kilobyte run directory, not training data",
                        path.display()
                    );
                }
                corpus.walk(path)?;
            } else if meta.is_file() {
                let file = File::open(path).with_context(|| format!("{}", path.display()))?;
                corpus.add_file(path, file, meta.len())?;
            } else {
                bail!("{}: not a regular file or directory", path.display());
            }
        }
        for w in &corpus.warnings {
            eprintln!("kilobyte: warning: {w}");
        }
        if corpus.len == 0 {
            let names: Vec<_> = paths
                .iter()
                .map(|p| p.as_ref().display().to_string())
                .collect();
            bail!("no training data: {} hold no bytes", names.join(", "));
        }
        Ok(corpus)
    }

    /// A corpus held in memory (the built-in corpus, tests), named `name` in
    /// messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Corpus {
        let len = bytes.len() as u64;
        Corpus {
            files: vec![CorpusFile {
                path: PathBuf::from(name),
                start: 0,
                len,
            }],
            sources: vec![Source::Owned(bytes)],
            len,
            warnings: Vec::new(),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The files in concatenation order (empty files left out).
    pub fn files(&self) -> &[CorpusFile] {
        &self.files
    }

    /// What was skipped while walking directories.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// A short name for messages: the first file, and how many follow.
    pub fn describe(&self) -> String {
        match self.files.as_slice() {
            [] => "an empty corpus".to_string(),
            [only] => only.path.display().to_string(),
            [first, rest @ ..] => format!("{} and {} more files", first.path.display(), rest.len()),
        }
    }

    /// A cheap record of the bytes, to notice a corpus that changed under a
    /// run: the number of files and bytes, and one CRC-32 over each file's
    /// length and its first and last 64 KiB. An edit in the middle of a
    /// large file that keeps its length goes unnoticed; reading whole
    /// corpora on every resume would cost more than that risk.
    pub fn fingerprint(&self) -> String {
        const EDGE: usize = 64 << 10;
        let mut crc = kilobyte_format::crc::Crc32::new();
        for (f, source) in self.files.iter().zip(&self.sources) {
            let bytes = source.bytes();
            crc.update(&f.len.to_le_bytes());
            crc.update(&bytes[..bytes.len().min(EDGE)]);
            crc.update(&bytes[bytes.len().saturating_sub(EDGE)..]);
        }
        format!(
            "{} files, {} bytes, edge crc32 {:08x}",
            self.files.len(),
            self.len,
            crc.finish()
        )
    }

    /// Copies `out.len()` bytes starting at `offset`, across file boundaries.
    /// Panics if the range does not lie inside the corpus (callers check
    /// their windows against [`Corpus::len`] once, up front).
    pub fn read_at(&self, offset: u64, out: &mut [u8]) {
        let end = offset + out.len() as u64;
        assert!(
            end <= self.len,
            "read {offset}..{end} past the corpus end {}",
            self.len
        );
        let mut i = self.files.partition_point(|f| f.start + f.len <= offset);
        let mut pos = offset;
        let mut done = 0;
        while done < out.len() {
            let f = &self.files[i];
            let from = (pos - f.start) as usize;
            let n = (f.len as usize - from).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.sources[i].bytes()[from..from + n]);
            done += n;
            pos += n as u64;
            i += 1;
        }
    }

    /// All bytes in one vector (tests and small corpora only).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len as usize];
        self.read_at(0, &mut v);
        v
    }

    fn walk(&mut self, dir: &Path) -> Result<()> {
        let mut entries = Vec::new();
        let listing = fs::read_dir(dir).with_context(|| format!("{}", dir.display()))?;
        for entry in listing {
            match entry {
                Ok(e) => entries.push(e.path()),
                Err(e) => self
                    .warnings
                    .push(format!("{}: skipped an entry: {e}", dir.display())),
            }
        }
        entries.sort();
        for path in entries {
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            let link = fs::symlink_metadata(&path).map(|m| m.file_type().is_symlink());
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.warnings
                        .push(format!("{}: skipped: {e}", path.display()));
                    continue;
                }
            };
            if meta.is_dir() {
                if matches!(link, Ok(true)) {
                    self.warnings
                        .push(format!("{}: skipped: symlinked directory", path.display()));
                } else if crate::checkpoint::is_run(&path) {
                    // `--data . --run run`: the run's own checkpoints and
                    // metrics are not data, and they change as it trains.
                    // Skipped quietly: the fingerprint says what was read.
                } else {
                    self.walk(&path)?;
                }
            } else if !meta.is_file() {
                self.warnings
                    .push(format!("{}: skipped: not a regular file", path.display()));
            } else {
                match File::open(&path) {
                    Ok(file) => self.add_file(&path, file, meta.len())?,
                    Err(e) => self
                        .warnings
                        .push(format!("{}: skipped: {e}", path.display())),
                }
            }
        }
        Ok(())
    }

    fn add_file(&mut self, path: &Path, file: File, len: u64) -> Result<()> {
        // A zero-length map is an error on some systems, and adds nothing.
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the map is only read. Another process truncating the file
        // while it is mapped would fault the reader (documented on Corpus);
        // that is the price of not copying a large corpus into memory.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{}", path.display()))?;
        let len = map.len() as u64;
        self.files.push(CorpusFile {
            path: path.to_path_buf(),
            start: self.len,
            len,
        });
        self.sources.push(Source::Mapped(map));
        self.len += len;
        Ok(())
    }
}

/// A contiguous range of a corpus: the training or the validation part.
#[derive(Clone, Debug)]
pub struct Subset {
    corpus: Arc<Corpus>,
    start: u64,
    len: u64,
    what: &'static str,
}

impl Subset {
    /// The whole corpus, called `what` in messages ("training data", ...).
    pub fn whole(corpus: Arc<Corpus>, what: &'static str) -> Subset {
        let len = corpus.len();
        Subset {
            corpus,
            start: 0,
            len,
            what,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of this subset's first byte in its corpus.
    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn corpus(&self) -> &Corpus {
        &self.corpus
    }

    /// Copies bytes starting at `offset` (relative to the subset). Panics if
    /// the range leaves the subset.
    pub fn read_at(&self, offset: u64, out: &mut [u8]) {
        assert!(
            offset + out.len() as u64 <= self.len,
            "read past the end of the {}",
            self.what
        );
        self.corpus.read_at(self.start + offset, out);
    }

    /// Fails with a message naming the data unless one `window` fits.
    pub fn check_window(&self, window: usize) -> Result<()> {
        if window == 0 {
            bail!("the window must be at least 1 byte");
        }
        if window as u64 > self.len {
            bail!(
                "a window of {window} bytes is larger than the {} ({} bytes from {})",
                self.what,
                self.len,
                self.corpus.describe()
            );
        }
        Ok(())
    }
}

/// Training and validation bytes.
#[derive(Clone, Debug)]
pub struct Split {
    pub train: Subset,
    /// Empty when the validation fraction is 0.
    pub val: Subset,
}

impl Split {
    /// The last `val_fraction` of the bytes (rounded down) validate, the rest
    /// trains. The cut ignores file boundaries; it depends only on the
    /// corpus, so every run on the same files validates on the same bytes.
    /// [`Corpus::fingerprint`] of the whole corpus.
    pub fn fingerprint(&self) -> String {
        self.train.corpus.fingerprint()
    }

    pub fn by_fraction(corpus: Corpus, val_fraction: f64) -> Result<Split> {
        if !(0.0..1.0).contains(&val_fraction) {
            bail!("the validation fraction must be in [0, 1), not {val_fraction}");
        }
        if corpus.is_empty() {
            bail!("no training data: {} holds no bytes", corpus.describe());
        }
        let len = corpus.len();
        let val_len = (len as f64 * val_fraction) as u64;
        if val_fraction > 0.0 && val_len == 0 {
            bail!(
                "the validation split is empty: {} bytes from {} times {val_fraction} is less than one byte",
                len,
                corpus.describe()
            );
        }
        let corpus = Arc::new(corpus);
        Ok(Split {
            train: Subset {
                corpus: corpus.clone(),
                start: 0,
                len: len - val_len,
                what: "training data",
            },
            val: Subset {
                corpus,
                start: len - val_len,
                len: val_len,
                what: "validation data",
            },
        })
    }

    /// Separate sources for training and validation.
    pub fn separate(train: Corpus, val: Corpus) -> Result<Split> {
        for (c, what) in [(&train, "training"), (&val, "validation")] {
            if c.is_empty() {
                bail!("no {what} data: {} holds no bytes", c.describe());
            }
        }
        Ok(Split {
            train: Subset::whole(Arc::new(train), "training data"),
            val: Subset::whole(Arc::new(val), "validation data"),
        })
    }
}
