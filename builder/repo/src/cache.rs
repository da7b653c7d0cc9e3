//! Content-addressed download cache: `blobs/sha256/<hex>`, plus the latest
//! verified InRelease per index URL under `latest/` so `--offline` builds
//! can start without the network.
//!
//! A blob is only ever moved into place after its size and SHA256 were
//! checked, through a temporary file in the same folder and a rename, so a
//! crash or a concurrent build never leaves a partial or wrong blob under a
//! hash name. Two builds inserting the same blob both rename identical
//! content; the last rename wins and nothing is lost.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use applbuild_fs::{AtomicFile, write_atomic};
use sha2::{Digest, Sha256};

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache folder belongs to another user.
    #[error("cache {} is owned by uid {owner}, not by this user (uid {me}); refusing to use it (pass --cache-dir)", path.display())]
    ForeignOwner {
        /// The cache folder.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// The file system refused an operation.
    #[error("cache {}: {source}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// Fewer bytes arrived than the index promised.
    #[error("truncated: expected {expected} bytes, got {actual}")]
    Truncated {
        /// Size from the index.
        expected: u64,
        /// Size received.
        actual: u64,
    },
    /// More bytes arrived than the index promised.
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    Oversized {
        /// Size from the index.
        expected: u64,
        /// Size received.
        actual: u64,
    },
    /// The content does not hash to what the index promised.
    #[error("SHA256 mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// Hash from the index.
        expected: String,
        /// Hash of what arrived.
        actual: String,
    },
    /// A hash given by a caller is not 64 lowercase hex digits, so it cannot name a blob.
    #[error("not a SHA256 hex digest: {0:?}")]
    BadDigest(String),
}

/// Either the caller's `fill` failed (download error) or the cache rejected
/// what it wrote (size or hash mismatch, disk error).
#[derive(Debug, thiserror::Error)]
pub enum InsertError<E> {
    /// `fill` returned this error; the temporary file was removed.
    #[error(transparent)]
    Fill(E),
    /// The content or the file system failed the cache's checks.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Removes `.partial-*` files (an [`AtomicFile`] never committed) older
/// than an hour from `dir`; best effort.
fn sweep_stale_temporaries(dir: &Path) {
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    for entry in listing.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(".partial-")
            && entry
                .metadata()
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMPORARY_AGE);
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// How old a temporary file must be before it counts as left by a killed build.
const STALE_TEMPORARY_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// A cache rooted at one folder; cheap to clone and safe to share between
/// threads (every operation goes straight to the file system).
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating if needed, mode 0700) a cache at `root`. A cache
    /// folder owned by another user is refused: whoever owns it could put
    /// entries there. Temporary files that killed builds left behind (older
    /// than an hour, so a running build's are spared) are removed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let cache = Self { root: root.into() };
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cache.root)
            .map_err(io_error(&cache.root))?;
        let owner = fs::metadata(&cache.root)
            .map_err(io_error(&cache.root))?
            .uid();
        let me = rustix::process::geteuid().as_raw();
        if owner != me {
            return Err(CacheError::ForeignOwner {
                path: cache.root.clone(),
                owner,
                me,
            });
        }
        for dir in [cache.blob_dir(), cache.latest_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_error(&dir))?;
        }
        for dir in [
            "blobs/sha256",
            "latest",
            "unpacked",
            "segments",
            "resolutions",
        ] {
            sweep_stale_temporaries(&cache.root.join(dir));
        }
        Ok(cache)
    }

    /// `$XDG_CACHE_HOME/applbuild`, else `$HOME/.cache/applbuild`; `None`
    /// when neither variable is set, so the CLI can ask for `--cache-dir`.
    pub fn default_root() -> Option<PathBuf> {
        applbuild_fs::default_cache_root()
    }

    /// The folder this cache lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn latest_dir(&self) -> PathBuf {
        self.root.join("latest")
    }

    fn blob_path(&self, sha256: &str) -> Result<PathBuf, CacheError> {
        let valid = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(CacheError::BadDigest(sha256.to_string()));
        }
        Ok(self.blob_dir().join(sha256))
    }

    /// The blob with this SHA256 if present. Presence means it was verified
    /// when written.
    pub fn get(&self, sha256: &str) -> Option<PathBuf> {
        self.blob_path(sha256).ok().filter(|path| path.is_file())
    }

    /// Stores a blob: `fill` writes the content into a fresh temporary file,
    /// which is kept only if it has `expected_size` bytes hashing to
    /// `expected_sha256`. Returns the blob's path; if the blob is already
    /// present `fill` is not called.
    pub fn insert_verified<E>(
        &self,
        expected_sha256: &str,
        expected_size: u64,
        fill: impl FnOnce(&mut File) -> Result<(), E>,
    ) -> Result<PathBuf, InsertError<E>> {
        let target = self.blob_path(expected_sha256)?;
        if target.is_file() {
            return Ok(target);
        }
        let io_error = |path: &Path, source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Dropping the AtomicFile on any early return deletes it.
        let mut temp = AtomicFile::create(&target).map_err(|source| io_error(&target, source))?;
        fill(temp.as_file_mut()).map_err(InsertError::Fill)?;

        let temp_path = temp.temp_path().to_path_buf();
        let file = temp.as_file_mut();
        file.flush()
            .map_err(|source| io_error(&temp_path, source))?;
        let actual_size = file
            .metadata()
            .map_err(|source| io_error(&temp_path, source))?
            .len();
        if actual_size < expected_size {
            return Err(CacheError::Truncated {
                expected: expected_size,
                actual: actual_size,
            }
            .into());
        }
        if actual_size > expected_size {
            return Err(CacheError::Oversized {
                expected: expected_size,
                actual: actual_size,
            }
            .into());
        }
        let mut reader = File::open(&temp_path).map_err(|source| io_error(&temp_path, source))?;
        let (actual_sha256, _) =
            hash_reader(&mut reader).map_err(|source| io_error(&temp_path, source))?;
        if actual_sha256 != expected_sha256 {
            return Err(CacheError::HashMismatch {
                expected: expected_sha256.to_string(),
                actual: actual_sha256,
            }
            .into());
        }
        temp.commit().map_err(|source| io_error(&target, source))?;
        Ok(target)
    }

    fn latest_path(&self, url: &str) -> PathBuf {
        self.latest_dir()
            .join(hex::encode(Sha256::digest(url.as_bytes())))
    }

    /// Remembers `contents` as the latest verified copy of `url` (an
    /// InRelease), replacing the previous one atomically.
    pub fn store_latest(&self, url: &str, contents: &[u8]) -> Result<PathBuf, CacheError> {
        let target = self.latest_path(url);
        write_atomic(&target, contents).map_err(|source| CacheError::Io {
            path: target.clone(),
            source,
        })?;
        Ok(target)
    }

    /// The latest copy of `url` stored with [`Cache::store_latest`], if any.
    /// It was verified when stored; callers verify its signature again
    /// because the keyring may have changed since.
    pub fn latest(&self, url: &str) -> Option<PathBuf> {
        Some(self.latest_path(url)).filter(|path| path.is_file())
    }
}

/// SHA256 (lowercase hex) and length of everything `reader` yields.
fn hash_reader(reader: &mut impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// The tests that read real bookworm data (applbuild-testdata) look
    /// where builds store it.
    #[test]
    fn test_data_is_looked_for_where_builds_store_it() {
        assert_eq!(applbuild_testdata::cache_root(), Cache::default_root());
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let digest = sha(b"x");
        assert_eq!(
            cache.blob_path(&digest).unwrap(),
            dir.path().join("blobs/sha256").join(&digest)
        );
        assert_eq!(cache.latest_dir(), dir.path().join("latest"));
    }

    #[test]
    fn cache_folder_is_private_and_stale_temporaries_are_swept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let cache = Cache::open(&root).unwrap();
        assert_eq!(
            fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let stale = cache.blob_dir().join(".partial-killed");
        let fresh = cache.blob_dir().join(".partial-running");
        fs::write(&stale, b"half").unwrap();
        fs::write(&fresh, b"half").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        Cache::open(&root).unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
    }

    fn leftovers(cache: &Cache) -> Vec<String> {
        fs::read_dir(cache.blob_dir())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with('.'))
            .collect()
    }

    #[test]
    fn insert_then_get() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let data = b"package bytes";
        let digest = sha(data);
        assert_eq!(cache.get(&digest), None);
        let path = cache
            .insert_verified(&digest, data.len() as u64, |file| file.write_all(data))
            .unwrap();
        assert_eq!(path, dir.path().join("blobs/sha256").join(&digest));
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(cache.get(&digest), Some(path));
        assert!(leftovers(&cache).is_empty());
    }

    #[test]
    fn present_blob_skips_fill() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let digest = sha(b"x");
        cache
            .insert_verified(&digest, 1, |file| file.write_all(b"x"))
            .unwrap();
        let result = cache.insert_verified(&digest, 1, |_| -> io::Result<()> {
            panic!("fill called for a cached blob")
        });
        assert!(result.is_ok());
    }

    #[test]
    fn truncated_content_is_rejected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let data = b"0123456789";
        let error = cache
            .insert_verified(&sha(data), 10, |file| file.write_all(&data[..4]))
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("truncated")
                && message.contains("expected 10")
                && message.contains("got 4"),
            "{message}"
        );
        assert_eq!(cache.get(&sha(data)), None);
        assert!(leftovers(&cache).is_empty());
    }

    #[test]
    fn oversized_and_wrong_content_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let digest = sha(b"good");
        let error = cache
            .insert_verified(&digest, 4, |file| file.write_all(b"good!"))
            .unwrap_err();
        assert!(matches!(
            error,
            InsertError::Cache(CacheError::Oversized {
                expected: 4,
                actual: 5
            })
        ));
        let error = cache
            .insert_verified(&digest, 4, |file| file.write_all(b"evil"))
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&digest) && message.contains(&sha(b"evil")),
            "{message}"
        );
        assert_eq!(cache.get(&digest), None);
        assert!(leftovers(&cache).is_empty());
    }

    #[test]
    fn fill_errors_pass_through_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let error = cache
            .insert_verified(&sha(b"a"), 1, |_| Err::<(), _>("download failed"))
            .unwrap_err();
        assert!(matches!(error, InsertError::Fill("download failed")));
        assert!(leftovers(&cache).is_empty());
    }

    #[test]
    fn digests_that_are_not_hex_cannot_escape_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        assert_eq!(cache.get("../../etc/passwd"), None);
        let error = cache
            .insert_verified("../x", 1, |file| file.write_all(b"x"))
            .unwrap_err();
        assert!(matches!(
            error,
            InsertError::Cache(CacheError::BadDigest(_))
        ));
        assert_eq!(cache.get(&"A".repeat(64)), None);
    }

    #[test]
    fn concurrent_inserts_of_one_blob_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let data = vec![7u8; 1 << 20];
        let digest = sha(&data);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    // A fresh Cache per thread, like separate processes.
                    let cache = Cache::open(dir.path()).unwrap();
                    cache
                        .insert_verified(&digest, data.len() as u64, |file| file.write_all(&data))
                        .unwrap();
                });
            }
        });
        let path = cache.get(&digest).unwrap();
        assert_eq!(sha(&fs::read(path).unwrap()), digest);
        assert!(leftovers(&cache).is_empty());
    }

    #[test]
    fn latest_copies_are_keyed_by_url() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let a = "http://mirror.invalid/debian/dists/bookworm/InRelease";
        let b = "http://mirror.invalid/debian/dists/trixie/InRelease";
        assert_eq!(cache.latest(a), None);
        cache.store_latest(a, b"first").unwrap();
        cache.store_latest(a, b"second").unwrap();
        cache.store_latest(b, b"other").unwrap();
        assert_eq!(fs::read(cache.latest(a).unwrap()).unwrap(), b"second");
        assert_eq!(fs::read(cache.latest(b).unwrap()).unwrap(), b"other");
    }
}
