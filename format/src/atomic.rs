//! Atomic file writes (feature `std`): every file kilobyte writes goes
//! through [`write_atomic`], so a crash leaves the old version or the new
//! one, never a mixture. This module owns the temporary files that needs:
//! their names, their exclusive creation, and removing those a killed
//! writer left behind.
//!
//! A temporary is `.NAME.tmp.` plus 16 random hex digits, next to the
//! target, created with `O_CREAT | O_EXCL`: a name planted in advance (a
//! symlink to a victim file, say) makes the create fail instead of being
//! followed. Its writer holds an advisory lock on it until the rename, which
//! is how the next writer of the same target tells a dead writer's temporary
//! (unlocked: removed) from a live one (locked: left alone).
//!
//! A target that exists and is not a regular file is never replaced by the
//! rename: a character device or a FIFO (`/dev/null`, a named pipe,
//! `/dev/stdout`) is written in place, anything else is refused.

use std::ffi::{OsStr, OsString};
use std::format;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::prelude::rust_2021::*;

/// Writes `bytes` to `path` so that a crash leaves either the old file or the
/// new one: a fresh temporary file in the same directory, fsync, rename over
/// `path`, fsync of the directory. Temporaries of `path` left by killed
/// writers are removed first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // A failed stat (missing, or no permission) is left to the create below,
    // which reports the real problem.
    if let Ok(meta) = fs::metadata(path) {
        if !meta.is_file() {
            return write_in_place(path, meta.file_type(), bytes);
        }
    }
    let (dir, name) = split(path)?;
    remove_stale_temps(path);
    let (tmp, mut file) = create_temp(&dir, name)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        // Still locked here: unlocking before the rename would let another
        // writer's clean-up take the file from under it.
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is on disk.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether `name` is a temporary file name of [`write_atomic`] for a target
/// named `target`: `.TARGET.tmp.` and 1 to 20 ASCII letters and digits
/// (16 hex digits now; a process id in earlier versions).
pub fn is_temp_of(name: &OsStr, target: &OsStr) -> bool {
    let (Some(name), Some(target)) = (name.to_str(), target.to_str()) else {
        return false;
    };
    name.strip_prefix('.')
        .and_then(|n| n.strip_prefix(target))
        .and_then(|n| n.strip_prefix(".tmp."))
        .is_some_and(|s| {
            (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// Removes the temporaries of `target` (see [`is_temp_of`]) whose writer is
/// gone: regular files only, and only those nobody holds locked. Best
/// effort: whatever cannot be checked is left in place.
pub fn remove_stale_temps(target: &Path) {
    let Ok((dir, name)) = split(target) else {
        return;
    };
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        if !is_temp_of(&e.file_name(), name) {
            continue;
        }
        let path = e.path();
        // Not a symlink or a FIFO: opening either could follow it to a
        // victim or block.
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let Ok(f) = File::open(&path) else {
            continue;
        };
        if try_lock(&f).is_ok_and(|got| got) && same_file(&f, &path) {
            let _ = fs::remove_file(&path);
        }
    }
}

/// The directory and the file name of a target path.
fn split(path: &Path) -> io::Result<(PathBuf, &OsStr)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    Ok((dir, name))
}

/// A new temporary file for `name` in `dir`, created exclusively and locked.
fn create_temp(dir: &Path, name: &OsStr) -> io::Result<(PathBuf, File)> {
    for _ in 0..16 {
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp.{:016x}", random_u64()));
        let tmp = dir.join(tmp_name);
        let file = match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            r => r?,
        };
        match try_lock(&file) {
            // Another writer's clean-up holds it and is about to remove it.
            Ok(false) => continue,
            // Without locks (some network file systems) no clean-up can take
            // a lock either, so nothing removes this file under us.
            Err(_) => return Ok((tmp, file)),
            // A clean-up may have locked and removed the new name in the
            // instant before our lock.
            Ok(true) if !same_file(&file, &tmp) => continue,
            Ok(true) => return Ok((tmp, file)),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary file name next to it after 16 tries",
    ))
}

/// Takes an exclusive advisory lock on `file` without waiting: std's
/// `File::try_lock`, which is `flock` on Linux, the BSDs and Apple systems
/// (as this crate's own call was before) and `LockFileEx` on Windows, where
/// the lock is mandatory. `Ok(false)` if another open file holds one. The
/// lock lasts until the file is closed, so a killed process never leaves
/// one behind. Run directories are locked with it too. Where std has no
/// lock it is an `Unsupported` error.
pub fn try_lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Whether the open `file` is still the one named `path`.
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::symlink_metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

/// 64 unpredictable bits from std alone: SipHash keyed by `RandomState`'s
/// per-process random keys, over a counter, the process id and the time.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.finish()
}

/// A target that exists but is not a regular file: devices that accept a
/// stream (`/dev/null`, a terminal) and pipes are written directly; the
/// rest would be destroyed by a rename, so they are refused.
fn write_in_place(path: &Path, kind: fs::FileType, bytes: &[u8]) -> io::Result<()> {
    let what = if kind.is_dir() {
        "a directory"
    } else {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if kind.is_char_device() || kind.is_fifo() {
                // No create, no truncate: the device or pipe stays as it is.
                let mut f = OpenOptions::new().write(true).open(path)?;
                return f.write_all(bytes);
            }
            if kind.is_block_device() {
                "a block device"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        }
        #[cfg(not(unix))]
        {
            // Without Unix file types nothing can be written in place.
            let _ = (path, bytes);
            "not a regular file"
        }
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("exists and is {what}; only a regular file is replaced"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!(
                "kilobyte-format-{tag}-{}-{:x}",
                std::process::id(),
                random_u64()
            ));
            fs::create_dir(&d).unwrap();
            Scratch(d)
        }

        fn names(&self) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[cfg_attr(miri, ignore)] // real files, a child process
    #[test]
    fn replaces_a_regular_file_and_leaves_no_temporary() {
        let s = Scratch::new("replace");
        let p = s.0.join("m.kbm");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(s.names(), ["m.kbm"]);
    }

    #[test]
    fn temp_names_are_recognised_only_for_their_target() {
        let yes = |n: &str| is_temp_of(OsStr::new(n), OsStr::new("x.kbm"));
        assert!(yes(".x.kbm.tmp.1234"));
        assert!(yes(".x.kbm.tmp.0123456789abcdef"));
        assert!(!yes("x.kbm.tmp.1234"));
        assert!(!yes(".x.kbm.tmp."));
        assert!(!yes(".x.kbm.tmp.12-34"));
        assert!(!yes(".y.kbm.tmp.1234"));
        assert!(!yes(".x.kbm.tmp.link.1234"));
        assert!(!yes(".x.kbm.tmp.012345678901234567890"));
    }

    #[cfg_attr(miri, ignore)] // real files, a child process
    #[test]
    fn stale_temporaries_are_removed_but_live_and_foreign_ones_kept() {
        let s = Scratch::new("stale");
        // A killed writer's temporary (old pid-named and new style), a live
        // writer's (locked), another target's, and a user's file.
        fs::write(s.0.join(".x.kbm.tmp.4242"), b"dead").unwrap();
        fs::write(s.0.join(".x.kbm.tmp.00000000deadbeef"), b"dead").unwrap();
        let live = s.0.join(".x.kbm.tmp.1111111111111111");
        let held = File::create(&live).unwrap();
        assert!(try_lock(&held).unwrap());
        fs::write(s.0.join(".y.kbm.tmp.4242"), b"other").unwrap();
        fs::write(s.0.join(".x.kbm.tmp.notes.txt"), b"mine").unwrap();
        write_atomic(&s.0.join("x.kbm"), b"model").unwrap();
        assert_eq!(
            s.names(),
            [
                ".x.kbm.tmp.1111111111111111",
                ".x.kbm.tmp.notes.txt",
                ".y.kbm.tmp.4242",
                "x.kbm"
            ]
        );
        drop(held);
    }

    #[cfg(unix)]
    #[cfg_attr(miri, ignore)] // real files, a child process
    #[test]
    fn planted_symlinks_are_never_followed() {
        let s = Scratch::new("symlink");
        let victim = s.0.join("victim");
        fs::write(&victim, b"precious").unwrap();
        // A symlink with a temporary's name: the clean-up must not open it,
        // and no writer may write through it.
        std::os::unix::fs::symlink(&victim, s.0.join(".x.kbm.tmp.4242")).unwrap();
        write_atomic(&s.0.join("x.kbm"), b"model").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(s.0.join("x.kbm")).unwrap(), b"model");
    }

    #[cfg(unix)]
    #[cfg_attr(miri, ignore)] // real files, a child process
    #[test]
    fn a_fifo_is_written_through_and_a_directory_refused() {
        let s = Scratch::new("special");
        let fifo = s.0.join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|st| st.success()) {
            std::eprintln!("skipped the FIFO half: mkfifo failed");
        } else {
            let reader = {
                let fifo = fifo.clone();
                std::thread::spawn(move || fs::read(fifo).unwrap())
            };
            write_atomic(&fifo, b"through the pipe").unwrap();
            assert_eq!(reader.join().unwrap(), b"through the pipe");
            use std::os::unix::fs::FileTypeExt;
            assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        }
        let dir = s.0.join("d");
        fs::create_dir(&dir).unwrap();
        let err = write_atomic(&dir, b"x").unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        assert!(dir.is_dir());
    }
}
