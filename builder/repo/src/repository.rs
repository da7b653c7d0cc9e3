//! Gets a suite's package index and `.deb` files from a mirror into the
//! cache, verifying each link of the chain of trust on the way:
//! keyring → `InRelease` signature → `Release` SHA256 list → `Packages`
//! index → each package's SHA256 and size.
//!
//! Nothing unverified reaches the cache: indexes and packages are written
//! through [`Cache::insert_verified`], and the InRelease is stored only
//! after its signature checked out (and is checked again when read back
//! for `--offline`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::cache::{Cache, CacheError, InsertError};
use crate::signature::{Keyring, SignatureError};
use crate::transport::{Transport, TransportError};
use applbuild_deb::package_index::{IndexError, PackageIndex, PackageRecord};
use applbuild_deb::release::{IndexFile, Release, ReleaseError, format_date, parse_date};
use applbuild_progress::{Reporter, Task, Unit};

/// Downloads running at once: enough to hide per-request latency, few
/// enough to stay polite to a public mirror.
const PARALLEL_DOWNLOADS: usize = 8;

/// Compressed forms of a `Packages` index, in order of preference (smallest first).
const INDEX_COMPRESSIONS: [&str; 3] = [".xz", ".gz", ""];

/// The largest InRelease accepted (Debian's main one is about 150 KB).
pub(crate) const INRELEASE_LIMIT: u64 = 4 << 20;

/// Where packages come from and how to trust them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryConfig {
    /// Archive base URL (`http://`, `https://` or `file://`), e.g. the one
    /// [`crate::apt_sources::host_mirror`] found.
    pub mirror: String,
    /// Suite or codename, e.g. `bookworm`.
    pub suite: String,
    /// Components whose indexes are merged, in priority order, e.g. `["main"]`.
    pub components: Vec<String>,
    /// Debian architecture, e.g. `amd64`.
    pub architecture: String,
    /// OpenPGP keyring that must have signed the InRelease.
    pub keyring: PathBuf,
    /// Use only what the cache holds; never touch the network.
    pub offline: bool,
    /// Refuse an InRelease whose `Date` is older than this (a mirror that
    /// stopped syncing); `None` accepts any age.
    pub max_index_age: Option<Duration>,
}

/// One `Packages` index used, for the build manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexBlob {
    /// Path below `dists/<suite>/`, e.g. `main/binary-amd64/Packages.xz`.
    pub path: String,
    /// SHA256 of the (compressed) file, as listed in the Release file.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Which snapshot of the archive a build used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexInfo {
    /// The mirror URL.
    pub mirror: String,
    /// The suite asked for.
    pub suite: String,
    /// The Release file's `Suite` (e.g. `oldstable`), if any.
    pub release_suite: Option<String>,
    /// The Release file's `Codename` (e.g. `bookworm`), if any.
    pub codename: Option<String>,
    /// The Release file's `Date`.
    pub date: String,
    /// SHA256 of the InRelease file as downloaded.
    pub inrelease_sha256: String,
    /// The indexes merged into the package index, in component order.
    pub indexes: Vec<IndexBlob>,
}

/// One package that could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFailure {
    /// Package name.
    pub package: String,
    /// Package version.
    pub version: String,
    /// Where it was fetched from.
    pub url: String,
    /// What went wrong (HTTP status, size or SHA256 mismatch, ...).
    pub reason: String,
}

impl fmt::Display for PackageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} from {}: {}",
            self.package, self.version, self.url, self.reason
        )
    }
}

/// Why the index or packages could not be obtained. Every variant names the
/// URL, index path or package concerned.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The keyring could not be read, or the InRelease signature was not accepted.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The Release text inside the InRelease is malformed.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// The cache failed (disk error, corrupt blob).
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A download failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A correctly signed Release for another suite: a mirror must not be able
    /// to serve, say, an old suite in place of the one asked for.
    #[error("{url}: is a Release file for suite {found}, not {expected:?}")]
    WrongSuite {
        /// The InRelease URL.
        url: String,
        /// The suite asked for.
        expected: String,
        /// Suite and codename found.
        found: String,
    },
    /// The Release file's `Valid-Until` has passed.
    #[error("{url}: Release file expired on {valid_until} (a stale or replayed mirror?)")]
    Expired {
        /// The InRelease URL.
        url: String,
        /// The `Valid-Until` moment.
        valid_until: String,
    },
    /// The Release file is older than the one already cached for this
    /// suite: the mirror went back in time.
    #[error(
        "{url}: Release file dated {date}, older than the cached one dated {cached_date} (a replayed or rolled-back mirror?)"
    )]
    Replayed {
        /// The InRelease URL.
        url: String,
        /// Its `Date`.
        date: String,
        /// The `Date` of the copy in the cache.
        cached_date: String,
    },
    /// The Release file is older than the suite's `max_index_age`.
    #[error(
        "{url}: Release file dated {date} is older than max_index_age {max_age_hours} h (a mirror that stopped syncing?)"
    )]
    TooOld {
        /// The InRelease URL.
        url: String,
        /// Its `Date`.
        date: String,
        /// The limit, in hours.
        max_age_hours: u64,
    },
    /// The Release file's `Date` cannot be read.
    #[error("{url}: Release file has an unreadable Date {date:?}")]
    BadDate {
        /// The InRelease URL.
        url: String,
        /// The field as found.
        date: String,
    },
    /// The Release file lists no `Packages` index for a component.
    #[error(
        "{url}: lists no {component}/binary-{architecture}/Packages index (components: {available})"
    )]
    NoIndex {
        /// The InRelease URL.
        url: String,
        /// The component asked for.
        component: String,
        /// The architecture asked for.
        architecture: String,
        /// The Release file's `Components`.
        available: String,
    },
    /// A downloaded index did not match the Release file.
    #[error("index {url}: {source}")]
    IndexDownload {
        /// The index URL.
        url: String,
        /// What was wrong with it.
        #[source]
        source: CacheError,
    },
    /// A verified index could not be decompressed or read.
    #[error("index {path} (cached as {}): {source}", blob.display())]
    IndexRead {
        /// The index path below `dists/<suite>/`.
        path: String,
        /// The cache blob.
        blob: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// A verified index is not a valid `Packages` file.
    #[error("index {path}: {source}")]
    IndexParse {
        /// The index path below `dists/<suite>/`.
        path: String,
        /// The parser's complaint.
        #[source]
        source: IndexError,
    },
    /// A cached InRelease could not be read back.
    #[error("cannot read cached copy {} of {url}: {source}", path.display())]
    ReadCached {
        /// The InRelease URL.
        url: String,
        /// The cache file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// `--offline`, and the cache lacks something.
    #[error("offline, and the cache {} has no {missing}; run once without --offline", cache.display())]
    Offline {
        /// The cache folder.
        cache: PathBuf,
        /// What is missing.
        missing: String,
    },
    /// The download threads could not be started.
    #[error("cannot start download threads: {0}")]
    Threads(#[from] rayon::ThreadPoolBuildError),
    /// Some packages could not be fetched; the others are cached.
    #[error("{} package(s) could not be fetched:\n  {}", failures.len(), failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Packages {
        /// One entry per failed package.
        failures: Vec<PackageFailure>,
    },
}

/// A configured archive; cheap to create, one per build.
pub struct Repository {
    config: RepositoryConfig,
    mirror: String,
    transport: Transport,
}

impl Repository {
    /// A repository for `config`; nothing is fetched yet.
    pub fn new(config: RepositoryConfig) -> Self {
        let mirror = config.mirror.trim_end_matches('/').to_string();
        Self {
            config,
            mirror,
            transport: Transport::new(),
        }
    }

    /// The configuration this repository was made with.
    pub fn config(&self) -> &RepositoryConfig {
        &self.config
    }

    /// The suite this repository reads, e.g. `bookworm-security`.
    pub fn suite(&self) -> &str {
        &self.config.suite
    }

    fn dists_url(&self, path: &str) -> String {
        format!("{}/dists/{}/{}", self.mirror, self.config.suite, path)
    }

    /// Reads the verified `Packages` blobs that [`Self::fetch_index_info`]
    /// put in the cache and merges them into one index.
    pub fn load_index(
        &self,
        cache: &Cache,
        info: &IndexInfo,
    ) -> Result<PackageIndex, RepositoryError> {
        let mut merged = PackageIndex::default();
        for blob in &info.indexes {
            let cached = cache
                .get(&blob.sha256)
                .ok_or_else(|| RepositoryError::Offline {
                    cache: cache.root().to_path_buf(),
                    missing: blob.path.clone(),
                })?;
            let text = decompress(&blob.path, &cached)?;
            let mut index =
                PackageIndex::parse(&text).map_err(|source| RepositoryError::IndexParse {
                    path: blob.path.clone(),
                    source,
                })?;
            index.set_suite(&self.config.suite);
            merged.merge(index);
        }
        Ok(merged)
    }

    /// Fetches and verifies InRelease and every configured component's
    /// `Packages` blob into the cache, without parsing them: what a build
    /// needs to know whether its cached resolution still holds.
    pub fn fetch_index_info(
        &self,
        cache: &Cache,
        progress: &Reporter,
    ) -> Result<IndexInfo, RepositoryError> {
        let (release, data) = self.verified_inrelease(cache, progress)?;
        let url = self.dists_url("InRelease");

        let mut indexes = Vec::new();
        for component in &self.config.components {
            let (path, entry) = self.pick_index(&release, component, &url)?;
            self.index_blob(cache, &release, &path, entry, progress)?;
            indexes.push(IndexBlob {
                path,
                sha256: entry.sha256.clone(),
                size: entry.size,
            });
        }

        let info = IndexInfo {
            mirror: self.mirror.clone(),
            suite: self.config.suite.clone(),
            release_suite: release.suite.clone(),
            codename: release.codename.clone(),
            date: release.date.clone(),
            inrelease_sha256: hex::encode(Sha256::digest(&data)),
            indexes,
        };
        Ok(info)
    }

    /// The suite's Release from its InRelease (downloaded, or the cached copy
    /// when offline), with the raw InRelease: signature, suite, age
    /// (`Valid-Until`, `max_index_age`) checked, and online, a replayed
    /// older InRelease refused before the copy in the cache is replaced.
    pub fn verified_inrelease(
        &self,
        cache: &Cache,
        progress: &Reporter,
    ) -> Result<(Release, Vec<u8>), RepositoryError> {
        let keyring = Keyring::load(&self.config.keyring)?;
        let url = self.dists_url("InRelease");
        let data = if self.config.offline {
            let path = cache.latest(&url).ok_or_else(|| RepositoryError::Offline {
                cache: cache.root().to_path_buf(),
                missing: format!("copy of {url}"),
            })?;
            std::fs::read(&path).map_err(|source| RepositoryError::ReadCached {
                url: url.clone(),
                path,
                source,
            })?
        } else {
            let task = progress.spinner("InRelease");
            task.set_message(url.clone());
            let data = self.transport.fetch_bytes(&url, &task, INRELEASE_LIMIT)?;
            task.finish();
            data
        };
        let release = self.verified_release(&keyring, &data, &url)?;
        if !self.config.offline {
            self.check_not_replayed(cache, &keyring, &release, &url)?;
            cache.store_latest(&url, &data)?;
        }
        Ok((release, data))
    }

    /// The Release inside a signed InRelease, checked for the suite asked
    /// for and for its age (`Valid-Until`, `max_index_age`).
    fn verified_release(
        &self,
        keyring: &Keyring,
        data: &[u8],
        url: &str,
    ) -> Result<Release, RepositoryError> {
        let text = keyring.verify_cleartext(data, url)?;
        let release = Release::parse(&text, url)?;
        if !release.is_for(&self.config.suite) {
            return Err(RepositoryError::WrongSuite {
                url: url.to_string(),
                expected: self.config.suite.clone(),
                found: format!(
                    "{} (codename {})",
                    release.suite.as_deref().unwrap_or("(none)"),
                    release.codename.as_deref().unwrap_or("(none)")
                ),
            });
        }
        let now = SystemTime::now();
        if let Some(valid_until) = release.valid_until
            && valid_until < now
        {
            return Err(RepositoryError::Expired {
                url: url.to_string(),
                valid_until: format_date(valid_until),
            });
        }
        if let Some(max_age) = self.config.max_index_age {
            let date = release_date(&release, url)?;
            if now.duration_since(date).unwrap_or_default() > max_age {
                return Err(RepositoryError::TooOld {
                    url: url.to_string(),
                    date: release.date.clone(),
                    max_age_hours: max_age.as_secs() / 3600,
                });
            }
        }
        Ok(release)
    }

    /// Refuses a Release dated before the copy already cached for `url`
    /// (whose signature is checked again before its date is trusted).
    fn check_not_replayed(
        &self,
        cache: &Cache,
        keyring: &Keyring,
        release: &Release,
        url: &str,
    ) -> Result<(), RepositoryError> {
        let Some(path) = cache.latest(url) else {
            return Ok(());
        };
        let Ok(previous) = std::fs::read(&path) else {
            return Ok(());
        };
        // A cached copy that no longer verifies (key rotated) cannot vouch for anything.
        let Ok(text) = keyring.verify_cleartext(&previous, url) else {
            return Ok(());
        };
        let Ok(cached) = Release::parse(&text, url) else {
            return Ok(());
        };
        let date = release_date(release, url)?;
        match parse_date(&cached.date) {
            Some(cached_date) if date < cached_date => Err(RepositoryError::Replayed {
                url: url.to_string(),
                date: release.date.clone(),
                cached_date: cached.date,
            }),
            _ => Ok(()),
        }
    }

    /// The best-compressed `Packages` index the Release file lists for `component`.
    fn pick_index<'r>(
        &self,
        release: &'r Release,
        component: &str,
        url: &str,
    ) -> Result<(String, &'r IndexFile), RepositoryError> {
        let base = format!("{component}/binary-{}/Packages", self.config.architecture);
        INDEX_COMPRESSIONS
            .iter()
            .find_map(|suffix| {
                let path = format!("{base}{suffix}");
                release.sha256.get(&path).map(|entry| (path, entry))
            })
            .ok_or_else(|| RepositoryError::NoIndex {
                url: url.to_string(),
                component: component.to_string(),
                architecture: self.config.architecture.clone(),
                available: release.components.join(" "),
            })
    }

    /// The cached blob of index `path`, downloading it (by hash when the
    /// archive offers that, since a by-hash file cannot change under a
    /// running download) when it is not cached yet.
    fn index_blob(
        &self,
        cache: &Cache,
        release: &Release,
        path: &str,
        entry: &IndexFile,
        progress: &Reporter,
    ) -> Result<PathBuf, RepositoryError> {
        if let Some(blob) = cache.get(&entry.sha256) {
            return Ok(blob);
        }
        if self.config.offline {
            return Err(RepositoryError::Offline {
                cache: cache.root().to_path_buf(),
                missing: format!("{} (SHA256 {})", self.dists_url(path), entry.sha256),
            });
        }
        let task = progress.bar("Index", entry.size, Unit::Bytes);
        task.set_message(path.to_string());
        if release.acquire_by_hash {
            let folder = path.rsplit_once('/').map_or("", |(folder, _)| folder);
            let url = self.dists_url(&format!("{folder}/by-hash/SHA256/{}", entry.sha256));
            match self.download_index(cache, &url, entry, &task) {
                // The mirror may lack by-hash files for an older index: try the plain path.
                Err(RepositoryError::Transport(error)) if error.is_not_found() => {}
                other => return other,
            }
        }
        let blob = self.download_index(cache, &self.dists_url(path), entry, &task)?;
        task.finish();
        Ok(blob)
    }

    fn download_index(
        &self,
        cache: &Cache,
        url: &str,
        entry: &IndexFile,
        task: &Task,
    ) -> Result<PathBuf, RepositoryError> {
        cache
            .insert_verified(&entry.sha256, entry.size, |file| {
                self.transport.fetch(url, file, task, entry.size).map(drop)
            })
            .map_err(|error| match error {
                InsertError::Fill(error) => RepositoryError::Transport(error),
                InsertError::Cache(source) => RepositoryError::IndexDownload {
                    url: url.to_string(),
                    source,
                },
            })
    }

    /// Makes sure every package is in the cache, downloading the missing
    /// ones in parallel, each verified against its index SHA256 and size.
    /// Returns the blob paths in the order of `packages`. On failure the
    /// packages that did verify stay cached, so a retry fetches only the rest.
    pub fn fetch_packages(
        &self,
        cache: &Cache,
        packages: &[PackageRecord],
        progress: &Reporter,
    ) -> Result<Vec<PathBuf>, RepositoryError> {
        let mut paths: Vec<Option<PathBuf>> =
            packages.iter().map(|p| cache.get(&p.sha256)).collect();
        // One download per distinct blob, even if the list names it twice.
        let mut missing: BTreeMap<&str, &PackageRecord> = BTreeMap::new();
        for (package, path) in packages.iter().zip(&paths) {
            if path.is_none() {
                missing.entry(package.sha256.as_str()).or_insert(package);
            }
        }
        if missing.is_empty() {
            return Ok(paths.into_iter().flatten().collect());
        }
        if self.config.offline {
            let names: Vec<String> = missing
                .values()
                .map(|p| format!("{}_{}", p.name, p.version))
                .collect();
            return Err(RepositoryError::Offline {
                cache: cache.root().to_path_buf(),
                missing: format!("{} package(s): {}", names.len(), names.join(", ")),
            });
        }

        let total = missing.values().map(|p| p.size).sum();
        let task = progress.bar("Downloading", total, Unit::Bytes);
        task.set_message(format!("{} packages", missing.len()));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(PARALLEL_DOWNLOADS)
            .build()?;
        let results: Vec<(&str, Result<PathBuf, PackageFailure>)> = pool.install(|| {
            missing
                .par_iter()
                .map(|(sha256, package)| (*sha256, self.fetch_package(cache, package, &task)))
                .collect()
        });
        task.finish();

        let mut fetched = HashMap::new();
        let mut failures = Vec::new();
        for (sha256, result) in results {
            match result {
                Ok(path) => {
                    fetched.insert(sha256, path);
                }
                Err(failure) => failures.push(failure),
            }
        }
        if !failures.is_empty() {
            return Err(RepositoryError::Packages { failures });
        }
        for (package, path) in packages.iter().zip(&mut paths) {
            if path.is_none() {
                *path = fetched.get(package.sha256.as_str()).cloned();
            }
        }
        Ok(paths.into_iter().flatten().collect())
    }

    fn fetch_package(
        &self,
        cache: &Cache,
        package: &PackageRecord,
        task: &Task,
    ) -> Result<PathBuf, PackageFailure> {
        let url = format!("{}/{}", self.mirror, package.filename);
        cache
            .insert_verified(&package.sha256, package.size, |file| {
                self.transport
                    .fetch(&url, file, task, package.size)
                    .map(drop)
            })
            .map_err(|error| PackageFailure {
                package: package.name.clone(),
                version: package.version.to_string(),
                reason: error.to_string(),
                url,
            })
    }
}

/// The Release file's `Date` as a moment.
fn release_date(release: &Release, url: &str) -> Result<SystemTime, RepositoryError> {
    parse_date(&release.date).ok_or_else(|| RepositoryError::BadDate {
        url: url.to_string(),
        date: release.date.clone(),
    })
}

/// Reads a verified index blob, decompressing by the index path's suffix.
pub(crate) fn decompress(path: &str, blob: &Path) -> Result<String, RepositoryError> {
    let read_error = |source| RepositoryError::IndexRead {
        path: path.to_string(),
        blob: blob.to_path_buf(),
        source,
    };
    let file = BufReader::new(File::open(blob).map_err(read_error)?);
    let mut reader: Box<dyn Read> = if path.ends_with(".xz") {
        Box::new(liblzma::read::XzDecoder::new(file))
    } else if path.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut text = String::new();
    reader.read_to_string(&mut text).map_err(read_error)?;
    Ok(text)
}
