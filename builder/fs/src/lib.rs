//! Atomic file writes: every file applbuild keeps (the lock file, cache
//! entries, image files) is written to a temporary file in the target's
//! folder, synced, and renamed over the target, so a reader or a crash
//! sees either the old file or the complete new one, never a part. And
//! where those files live by default: [`default_cache_root`].

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// applbuild's cache folder: `$XDG_CACHE_HOME/applbuild`, else
/// `$HOME/.cache/applbuild`; `None` when neither variable is set. The one
/// rule for the builds' download cache and the tests that read it.
pub fn default_cache_root() -> Option<PathBuf> {
    let from_env = |name| {
        std::env::var_os(name)
            .filter(|value: &std::ffi::OsString| !value.is_empty())
            .map(PathBuf::from)
    };
    from_env("XDG_CACHE_HOME")
        .or_else(|| from_env("HOME").map(|home| home.join(".cache")))
        .map(|base| base.join("applbuild"))
}

/// A file being written beside `target`; it replaces `target` only on
/// [`AtomicFile::commit`]. Dropped without a commit, it is deleted.
#[derive(Debug)]
pub struct AtomicFile {
    temp: tempfile::NamedTempFile,
    target: PathBuf,
}

impl AtomicFile {
    /// A fresh temporary file in `target`'s folder (the same file system,
    /// so the final rename is atomic).
    pub fn create(target: &Path) -> io::Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(folder_of(target))?;
        Ok(Self {
            temp,
            target: target.to_path_buf(),
        })
    }

    /// The open temporary file (read and write), for callers that check
    /// what they wrote before committing.
    pub fn as_file_mut(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// The temporary file's path, for error messages.
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    /// Syncs the data, renames the file over the target and syncs the
    /// folder: without the folder sync a power cut can forget the new name.
    pub fn commit(self) -> io::Result<()> {
        self.temp.as_file().sync_all()?;
        self.temp
            .persist(&self.target)
            .map_err(|error| error.error)?;
        File::open(folder_of(&self.target))?.sync_all()
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

/// Writes `contents` to `target` atomically.
pub fn write_atomic(target: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = AtomicFile::create(target)?;
    file.write_all(contents)?;
    file.commit()
}

/// The folder a relative or absolute path lives in (`.` for a bare name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_the_target_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("file");
        std::fs::write(&target, b"old").unwrap();
        write_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropping_without_commit_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("file");
        std::fs::write(&target, b"old").unwrap();
        let mut file = AtomicFile::create(&target).unwrap();
        file.write_all(b"half").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
