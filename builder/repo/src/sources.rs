//! The source packages of an image, for GPL compliance: a suite's `Sources`
//! index and each source package's `.dsc` and the files it lists, verified
//! along the same chain of trust as the binary packages: keyring →
//! `InRelease` signature → `Release` SHA256 of `Sources` → each file's
//! SHA256 and size in `Sources`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cache::{Cache, CacheError, InsertError};
use crate::repository::{Repository, RepositoryError, decompress};
use crate::transport::Transport;
use applbuild_deb::deb822::{Deb822Error, Stanza, parse_stanzas};
use applbuild_progress::{Reporter, Task, Unit};

/// Compressed forms of a `Sources` index, in order of preference.
const SOURCES_COMPRESSIONS: [&str; 3] = [".xz", ".gz", ""];

/// Why source packages could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// The InRelease, the index or a download failed, as for binary packages.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The Release file lists no `Sources` index for a component.
    #[error("{url}: lists no {component}/source/Sources index")]
    NoIndex {
        /// The InRelease URL.
        url: String,
        /// The component.
        component: String,
    },
    /// The `Sources` index is malformed.
    #[error("index {path}: {reason}")]
    Parse {
        /// Its path below `dists/<suite>/`.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A source package the image needs is not in the index.
    #[error("source package {name} {version} is not in the Sources index of {suite}")]
    NotInIndex {
        /// Source package name.
        name: String,
        /// Its version.
        version: String,
        /// The suite searched.
        suite: String,
    },
    /// A file of a source package did not have the size or SHA256 that the
    /// `Sources` index gives. Here and in `FileFetch` the cause is part of
    /// the message, not an error source, so a printed chain says it once.
    #[error("source package {package} {version}: {url}: {mismatch}")]
    FileMismatch {
        /// Source package name.
        package: String,
        /// Its version.
        version: String,
        /// The file's URL.
        url: String,
        /// The size or hash mismatch (boxed, as in `FileFetch`: the error
        /// stays small).
        mismatch: Box<CacheError>,
    },
    /// A file of a source package could not be fetched (download failure,
    /// or `--offline` and not in the cache).
    #[error("source package {package} {version}: {failure}")]
    FileFetch {
        /// Source package name.
        package: String,
        /// Its version.
        version: String,
        /// Why (boxed: a `RepositoryError` is large).
        failure: Box<RepositoryError>,
    },
    /// A verified file could not be placed in the destination folder.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The destination file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One file of a source package, as the `Sources` index lists it (and as
/// `applbuild sources` reports it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceFile {
    /// File name, e.g. `zlib_1.2.13.dfsg-1.dsc`.
    pub name: String,
    /// Lowercase hex SHA256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// One version of one source package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePackage {
    /// Source package name.
    pub name: String,
    /// Version, with epoch.
    pub version: String,
    /// Folder of its files below the mirror root, e.g. `pool/main/z/zlib`.
    pub directory: String,
    /// The `.dsc` and the files it lists (`Checksums-Sha256`).
    pub files: Vec<SourceFile>,
}

/// All source packages of a `Sources` index, by name and version.
#[derive(Debug, Clone, Default)]
pub struct SourceIndex {
    packages: BTreeMap<(String, String), SourcePackage>,
}

impl SourceIndex {
    /// Parses the text of a `Sources` file; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, SourcesError> {
        let error = |reason: String| SourcesError::Parse {
            path: path.to_owned(),
            reason,
        };
        let stanzas = parse_stanzas(text).map_err(|e: Deb822Error| error(e.to_string()))?;
        let mut index = SourceIndex::default();
        for stanza in &stanzas {
            let package = source_package(stanza).map_err(error)?;
            index
                .packages
                .entry((package.name.clone(), package.version.clone()))
                .or_insert(package);
        }
        Ok(index)
    }

    /// Adds the source packages of `other` (another suite, e.g. the security
    /// suite); where both hold a name and version, `self`'s entry stays.
    pub fn merge(&mut self, other: SourceIndex) {
        for (key, package) in other.packages {
            self.packages.entry(key).or_insert(package);
        }
    }

    /// The source package `name` at exactly `version`.
    pub fn get(&self, name: &str, version: &str) -> Option<&SourcePackage> {
        self.packages.get(&(name.to_owned(), version.to_owned()))
    }

    /// Number of source package versions.
    pub fn len(&self) -> usize {
        self.packages.len()
    }

    /// Whether the index holds none.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }
}

fn source_package(stanza: &Stanza<'_>) -> Result<SourcePackage, String> {
    let line = stanza.line();
    let field = |name: &str| {
        stanza
            .get(name)
            .ok_or_else(|| format!("the stanza at line {line} has no {name} field"))
    };
    let files = field("Checksums-Sha256")?
        .lines()
        .filter(|entry| !entry.trim().is_empty())
        .map(
            |entry| match entry.split_whitespace().collect::<Vec<_>>()[..] {
                [sha256, size, name] if sha256.len() == 64 => Ok(SourceFile {
                    name: name.to_owned(),
                    sha256: sha256.to_ascii_lowercase(),
                    size: size
                        .parse()
                        .map_err(|_| format!("line {line}: bad size {size:?}"))?,
                }),
                _ => Err(format!("line {line}: bad Checksums-Sha256 entry {entry:?}")),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    if files.iter().any(|file| file.name.contains('/')) {
        return Err(format!("line {line}: a file name contains `/`"));
    }
    Ok(SourcePackage {
        name: field("Package")?.to_owned(),
        version: field("Version")?.to_owned(),
        directory: field("Directory")?.trim_end_matches('/').to_owned(),
        files,
    })
}

/// Fetches and verifies the InRelease of `repository`'s suite and the
/// `Sources` index of each configured component (through the cache), and
/// returns them merged, earlier components first.
pub fn fetch_source_index(
    repository: &Repository,
    cache: &Cache,
    progress: &Reporter,
) -> Result<SourceIndex, SourcesError> {
    let config = repository.config();
    let mirror = config.mirror.trim_end_matches('/');
    let dists = |path: &str| format!("{mirror}/dists/{}/{path}", config.suite);
    let transport = Transport::new();
    let url = dists("InRelease");
    let (release, _) = repository.verified_inrelease(cache, progress)?;
    let mut merged = SourceIndex::default();
    for component in &config.components {
        let (path, entry) = SOURCES_COMPRESSIONS
            .iter()
            .map(|suffix| format!("{component}/source/Sources{suffix}"))
            .find_map(|path| release.sha256.get(&path).map(|entry| (path, entry)))
            .ok_or_else(|| SourcesError::NoIndex {
                url: url.clone(),
                component: component.clone(),
            })?;
        let task = progress.bar("Sources", entry.size, Unit::Bytes);
        task.set_message(path.clone());
        let blob = fetch_verified(
            config.offline,
            cache,
            &transport,
            &dists(&path),
            (&entry.sha256, entry.size),
            &task,
        )?;
        task.finish();
        let text = decompress(&path, &blob)?;
        merged.merge(SourceIndex::parse(&text, &path)?);
    }
    Ok(merged)
}

/// The cache blob of `(sha256, size)`, downloaded from `url` when absent.
fn fetch_verified(
    offline: bool,
    cache: &Cache,
    transport: &Transport,
    url: &str,
    (sha256, size): (&str, u64),
    task: &Task,
) -> Result<PathBuf, RepositoryError> {
    if let Some(blob) = cache.get(sha256) {
        return Ok(blob);
    }
    if offline {
        return Err(RepositoryError::Offline {
            cache: cache.root().to_path_buf(),
            missing: format!("{url} (SHA256 {sha256})"),
        });
    }
    cache
        .insert_verified(sha256, size, |file| {
            transport.fetch(url, file, task, size).map(drop)
        })
        .map_err(|error| match error {
            InsertError::Fill(error) => RepositoryError::Transport(error),
            InsertError::Cache(source) => RepositoryError::IndexDownload {
                url: url.to_owned(),
                source,
            },
        })
}

/// Downloads every file of the source packages `wanted` (name and version)
/// into `destination`, each verified against `index` and kept in the cache.
/// Returns the written paths, sorted.
pub fn download_sources(
    repository: &Repository,
    cache: &Cache,
    index: &SourceIndex,
    wanted: &[(String, String)],
    destination: &Path,
    progress: &Reporter,
) -> Result<Vec<PathBuf>, SourcesError> {
    let config = repository.config();
    let mirror = config.mirror.trim_end_matches('/');
    let mut packages = Vec::new();
    for (name, version) in wanted {
        let package = index
            .get(name, version)
            .ok_or_else(|| SourcesError::NotInIndex {
                name: name.clone(),
                version: version.clone(),
                suite: config.suite.clone(),
            })?;
        packages.push(package);
    }
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourcesError::Write { path, source }
    };
    std::fs::create_dir_all(destination).map_err(write_error(destination))?;
    let total = packages.iter().flat_map(|p| &p.files).map(|f| f.size).sum();
    let task = progress.bar("Sources", total, Unit::Bytes);
    let transport = Transport::new();
    let mut written = Vec::new();
    for package in packages {
        task.set_message(format!("{} {}", package.name, package.version));
        for file in &package.files {
            let url = format!("{mirror}/{}/{}", package.directory, file.name);
            let blob = fetch_verified(
                config.offline,
                cache,
                &transport,
                &url,
                (&file.sha256, file.size),
                &task,
            )
            .map_err(|error| file_error(package, error))?;
            let target = destination.join(&file.name);
            std::fs::copy(&blob, &target).map_err(write_error(&target))?;
            written.push(target);
        }
    }
    task.finish();
    written.sort();
    written.dedup();
    Ok(written)
}

/// `error` of fetching a file of `package`, naming the package.
fn file_error(package: &SourcePackage, error: RepositoryError) -> SourcesError {
    let (name, version) = (package.name.clone(), package.version.clone());
    match error {
        RepositoryError::IndexDownload { url, source } => SourcesError::FileMismatch {
            package: name,
            version,
            url,
            mismatch: Box::new(source),
        },
        failure => SourcesError::FileFetch {
            package: name,
            version,
            failure: Box::new(failure),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::RepositoryConfig;
    use applbuild_deb::release::format_date;
    use pgp::composed::{CleartextSignedMessage, KeyType, SecretKeyParamsBuilder, SignedPublicKey};
    use pgp::ser::Serialize;
    use pgp::types::Password;
    use sha2::{Digest, Sha256};
    use std::time::SystemTime;

    fn sha256(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn write(path: &Path, data: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// A signed `file://` archive with one source package (`zlib` 1:1.2.13.dfsg-1:
    /// a `.dsc` and an orig tarball) and a keyring; returns the repository.
    fn local_archive(dir: &Path) -> Repository {
        let root = dir.join("archive");
        let files: [(&str, &[u8]); 2] = [
            (
                "zlib_1.2.13.dfsg-1.dsc",
                b"Format: 3.0 (quilt)\nSource: zlib\n",
            ),
            ("zlib_1.2.13.dfsg.orig.tar.gz", b"\x1f\x8b fake tarball"),
        ];
        let mut checksums = String::new();
        for (name, data) in files {
            write(&root.join("pool/main/z/zlib").join(name), data);
            checksums.push_str(&format!(" {} {} {name}\n", sha256(data), data.len()));
        }
        let sources = format!(
            "Package: zlib\nBinary: zlib1g, zlib1g-dev\nVersion: 1:1.2.13.dfsg-1\n\
             Directory: pool/main/z/zlib\nChecksums-Sha256:\n{checksums}"
        );
        let dists = root.join("dists/bookworm");
        write(&dists.join("main/source/Sources"), sources.as_bytes());
        let release = format!(
            "Suite: stable\nCodename: bookworm\nDate: {}\nComponents: main\nSHA256:\n {} {} main/source/Sources\n",
            format_date(SystemTime::now()),
            sha256(sources.as_bytes()),
            sources.len()
        );
        let mut params = SecretKeyParamsBuilder::default();
        params
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id("test archive <archive@example.invalid>".into());
        let key = params
            .build()
            .unwrap()
            .generate(rand::thread_rng())
            .unwrap();
        let signed = CleartextSignedMessage::sign(
            rand::thread_rng(),
            &release,
            &key.primary_key,
            &Password::empty(),
        )
        .unwrap();
        write(
            &dists.join("InRelease"),
            signed
                .to_armored_string(Default::default())
                .unwrap()
                .as_bytes(),
        );
        let mut public = Vec::new();
        SignedPublicKey::from(key).to_writer(&mut public).unwrap();
        write(&dir.join("keyring.gpg"), &public);
        Repository::new(RepositoryConfig {
            mirror: format!("file://{}", root.display()),
            suite: "bookworm".into(),
            components: vec!["main".into()],
            architecture: "amd64".into(),
            keyring: dir.join("keyring.gpg"),
            offline: false,
            max_index_age: None,
        })
    }

    #[test]
    fn downloads_verified_source_files() {
        let dir = tempfile::tempdir().unwrap();
        let repository = local_archive(dir.path());
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let progress = Reporter::hidden();
        let mut index = fetch_source_index(&repository, &cache, &progress).unwrap();
        let security = "Package: zlib\nVersion: 1:1.2.13.dfsg-1\nDirectory: pool/updates/z/zlib\n\
            Checksums-Sha256:\n";
        index.merge(SourceIndex::parse(security, "main/source/Sources").unwrap());
        assert_eq!(index.len(), 1);
        assert_eq!(
            index.get("zlib", "1:1.2.13.dfsg-1").unwrap().directory,
            "pool/main/z/zlib"
        );
        let wanted = [("zlib".to_owned(), "1:1.2.13.dfsg-1".to_owned())];
        let out = dir.path().join("sources");
        let written =
            download_sources(&repository, &cache, &index, &wanted, &out, &progress).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            ["zlib_1.2.13.dfsg-1.dsc", "zlib_1.2.13.dfsg.orig.tar.gz"]
        );
        assert_eq!(
            std::fs::read(&written[0]).unwrap(),
            b"Format: 3.0 (quilt)\nSource: zlib\n"
        );

        let missing = [("glibc".to_owned(), "2.36-9".to_owned())];
        let error = download_sources(&repository, &cache, &index, &missing, &out, &progress);
        assert!(matches!(error, Err(SourcesError::NotInIndex { .. })));
    }

    #[test]
    fn tampered_source_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let repository = local_archive(dir.path());
        let tarball = dir
            .path()
            .join("archive/pool/main/z/zlib/zlib_1.2.13.dfsg.orig.tar.gz");
        std::fs::write(&tarball, b"\x1f\x8b evil tarball").unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let progress = Reporter::hidden();
        let index = fetch_source_index(&repository, &cache, &progress).unwrap();
        let wanted = [("zlib".to_owned(), "1:1.2.13.dfsg-1".to_owned())];
        let out = dir.path().join("sources");
        let error = download_sources(&repository, &cache, &index, &wanted, &out, &progress)
            .unwrap_err()
            .to_string();
        assert!(error.contains("zlib_1.2.13.dfsg.orig.tar.gz"), "{error}");
        assert!(
            error.starts_with("source package zlib 1:1.2.13.dfsg-1: ") && error.contains("SHA256"),
            "{error}"
        );
        assert!(!out.join("zlib_1.2.13.dfsg.orig.tar.gz").exists());
    }

    #[test]
    fn malformed_stanzas_name_the_index() {
        let error = SourceIndex::parse("Package: zlib\nVersion: 1\n", "main/source/Sources")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("main/source/Sources") && error.contains("Checksums-Sha256"),
            "{error}"
        );
    }
}
