//! Real Debian bookworm data for applbuild's tests and benchmarks, read from
//! applbuild's own download cache: the verified blobs under
//! `blobs/sha256/<hex>` and the latest InRelease of each suite under
//! `latest/`. The image builds that `scripts/test` runs before the tests
//! fill it, so nothing is downloaded twice.
//!
//! A test passes what it asks for through [`or_skip`]: when the data is not
//! in the cache, the test fails under `CI=true` and otherwise prints a
//! `SKIPPED:` line on standard error and returns. Data that is there but
//! unreadable (a corrupt blob, an unparsable lock file) always panics.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The command that fills the cache with everything this crate looks for
/// (`scripts/test` runs it before the tests).
pub const FILL_COMMAND: &str = "cargo run --release --locked -p applbuild -- \
     build storage hypervisor guest --locked --out target/applbuild-images";

/// The host tool `name` on PATH or in the sbin folders a non-root PATH
/// lacks; missing: a failed test under `CI=true` (naming the Debian
/// `package` that `scripts/host-setup` installs), else a `SKIPPED:` line
/// and `None`.
#[track_caller]
pub fn host_tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is missing: run scripts/host-setup (Debian package {package})"
        );
        eprintln!("SKIPPED: {name} is not installed (scripts/host-setup installs {package})");
    }
    found
}

/// The compressions a `Packages` index may be cached in, best first (as
/// applbuild-repo picks them).
const INDEX_COMPRESSIONS: [&str; 3] = [".xz", ".gz", ""];

/// Data a test needs is not in the cache.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Missing(String);

/// A `.deb` that `applbuild.lock` pins, as its verified cache blob.
#[derive(Debug, Clone)]
pub struct LockedDeb {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// The blob holding the `.deb`.
    pub path: PathBuf,
}

/// The download cache the builds fill (`applbuild_fs::default_cache_root`,
/// as applbuild-repo's `Cache::default_root`).
pub fn cache_root() -> Option<PathBuf> {
    applbuild_fs::default_cache_root()
}

/// The value, or — when the data is missing — a failed test under
/// `CI=true`, else a `SKIPPED:` line on standard error and `None`.
#[track_caller]
pub fn or_skip<T>(found: Result<T, Missing>) -> Option<T> {
    match found {
        Ok(value) => Some(value),
        Err(missing) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{missing}; with CI=true nothing is skipped: fill the cache with \
                 `{FILL_COMMAND}` (scripts/test runs it before the tests)"
            );
            eprintln!("SKIPPED: {missing}; `{FILL_COMMAND}` fills the cache");
            None
        }
    }
}

/// The text of bookworm main's `Packages` index for amd64, decompressed.
pub fn bookworm_packages() -> Result<String, Missing> {
    packages_in(&existing_root()?, "bookworm", "main/binary-amd64/Packages")
}

/// Every `.deb` that `applbuild.lock` pins for `profile`, sorted by name.
/// Panics if the lock file has no such profile.
pub fn locked_debs(profile: &str) -> Result<Vec<LockedDeb>, Missing> {
    let root = existing_root()?;
    lock_entries(profile)
        .into_iter()
        .map(|package| locked_deb_in(&root, package))
        .collect()
}

/// The hypervisor's kernel package (`linux-image-<abi>-amd64`, not the
/// `linux-image-amd64` metapackage) as `applbuild.lock` pins it.
pub fn kernel_deb() -> Result<LockedDeb, Missing> {
    let root = existing_root()?;
    let kernel = lock_entries("hypervisor")
        .into_iter()
        .find(|package| {
            package.name.starts_with("linux-image-")
                && package.name.ends_with("-amd64")
                && package.name != "linux-image-amd64"
        })
        .expect("applbuild.lock pins no linux-image-<abi>-amd64 for the hypervisor");
    locked_deb_in(&root, kernel)
}

/// The package `name` as `applbuild.lock` pins it in any profile (the
/// first profile by name that has it).
pub fn locked_deb(name: &str) -> Result<LockedDeb, Missing> {
    let root = existing_root()?;
    let package = read_lock()
        .profile
        .into_values()
        .flat_map(|profile| profile.packages)
        .find(|package| package.name == name)
        .ok_or_else(|| Missing(format!("applbuild.lock pins no {name} in any profile")))?;
    locked_deb_in(&root, package)
}

/// The cache folder, if it exists.
fn existing_root() -> Result<PathBuf, Missing> {
    let root = cache_root().ok_or_else(|| {
        Missing("no applbuild cache: neither XDG_CACHE_HOME nor HOME is set".into())
    })?;
    if root.is_dir() {
        Ok(root)
    } else {
        Err(Missing(format!(
            "the applbuild cache {} does not exist",
            root.display()
        )))
    }
}

/// One package of the lock file.
#[derive(Deserialize)]
struct LockedPackage {
    name: String,
    version: String,
    sha256: String,
}

/// The parts of `applbuild.lock` read here.
#[derive(Deserialize)]
struct LockFile {
    profile: BTreeMap<String, LockedProfile>,
}

/// One profile of the lock file.
#[derive(Deserialize)]
struct LockedProfile {
    packages: Vec<LockedPackage>,
}

/// The packages the workspace's `applbuild.lock` pins for `profile`.
fn lock_entries(profile: &str) -> Vec<LockedPackage> {
    let mut packages = read_lock()
        .profile
        .remove(profile)
        .unwrap_or_else(|| panic!("applbuild.lock has no profile {profile}"))
        .packages;
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    packages
}

/// The workspace's `applbuild.lock`.
fn read_lock() -> LockFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../applbuild.lock");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    toml::from_str(&text).unwrap_or_else(|error| panic!("parsing {}: {error}", path.display()))
}

/// `package`'s blob in the cache at `root`.
fn locked_deb_in(root: &Path, package: LockedPackage) -> Result<LockedDeb, Missing> {
    let path = blob(root, &package.sha256).ok_or_else(|| {
        Missing(format!(
            "{} {} (pinned in applbuild.lock) is not in the applbuild cache {}",
            package.name,
            package.version,
            root.display()
        ))
    })?;
    Ok(LockedDeb {
        name: package.name,
        version: package.version,
        path,
    })
}

/// The blob with this SHA256 in the cache at `root`, if present.
fn blob(root: &Path, sha256: &str) -> Option<PathBuf> {
    let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
    let path = root.join("blobs/sha256").join(sha256);
    (valid && path.is_file()).then_some(path)
}

/// The index `base` (without compression suffix) of the suite with
/// `codename`, from the cache at `root`.
fn packages_in(root: &Path, codename: &str, base: &str) -> Result<String, Missing> {
    let missing = || {
        Missing(format!(
            "{codename}'s {base} index is not in the applbuild cache {}",
            root.display()
        ))
    };
    let release = latest_release(root, codename).ok_or_else(missing)?;
    INDEX_COMPRESSIONS
        .iter()
        .find_map(|suffix| {
            let sha256 = listed_sha256(&release, &format!("{base}{suffix}"))?;
            blob(root, sha256).map(|path| decompress(&path, suffix))
        })
        .ok_or_else(missing)
}

/// The cached InRelease whose `Codename` is `codename` (its signature was
/// checked when applbuild stored it).
fn latest_release(root: &Path, codename: &str) -> Option<String> {
    let wanted = format!("Codename: {codename}");
    std::fs::read_dir(root.join("latest"))
        .ok()?
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .find(|text| text.lines().any(|line| line == wanted))
}

/// The SHA256 that a Release file's `SHA256` field lists for `path`.
fn listed_sha256<'t>(release: &'t str, path: &str) -> Option<&'t str> {
    let mut in_field = false;
    for line in release.lines() {
        if !line.starts_with(' ') {
            in_field = line == "SHA256:";
            continue;
        }
        if !in_field {
            continue;
        }
        let mut words = line.split_whitespace();
        if let (Some(sha256), Some(_size), Some(listed)) =
            (words.next(), words.next(), words.next())
            && listed == path
        {
            return Some(sha256);
        }
    }
    None
}

/// The blob at `path`, decompressed by the index's `suffix`.
fn decompress(path: &Path, suffix: &str) -> String {
    let file = BufReader::new(
        File::open(path).unwrap_or_else(|error| panic!("{}: {error}", path.display())),
    );
    let mut reader: Box<dyn Read> = match suffix {
        ".xz" => Box::new(liblzma::read::XzDecoder::new(file)),
        ".gz" => Box::new(flate2::read::GzDecoder::new(file)),
        _ => Box::new(file),
    };
    let mut text = String::new();
    reader
        .read_to_string(&mut text)
        .unwrap_or_else(|error| panic!("decompressing {}: {error}", path.display()));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SHA_XZ: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const SHA_GZ: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn release(codename: &str) -> String {
        format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nCodename: {codename}\n\
             MD5Sum:\n {SHA_XZ} 10 main/binary-amd64/Packages.xz\n\
             SHA256:\n {SHA_XZ} 10 main/binary-amd64/Packages.xz\n \
             {SHA_GZ} 20 main/binary-amd64/Packages.gz\n\
             -----BEGIN PGP SIGNATURE-----\n"
        )
    }

    #[test]
    fn release_lists_hashes_by_path_in_the_sha256_field_only() {
        let text = release("bookworm");
        assert_eq!(
            listed_sha256(&text, "main/binary-amd64/Packages.gz"),
            Some(SHA_GZ)
        );
        assert_eq!(
            listed_sha256(&text, "main/binary-amd64/Packages.xz"),
            Some(SHA_XZ)
        );
        assert_eq!(listed_sha256(&text, "main/binary-amd64/Packages"), None);
        assert_eq!(listed_sha256("MD5Sum:\n x 1 a\n", "a"), None);
    }

    /// The suite is found by codename; a listed index whose blob is absent
    /// is passed over for the next compression.
    #[test]
    fn index_is_read_from_the_cached_blob_of_its_suite() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("latest")).unwrap();
        std::fs::create_dir_all(root.path().join("blobs/sha256")).unwrap();
        std::fs::write(root.path().join("latest/a"), release("bookworm-updates")).unwrap();
        let base = "main/binary-amd64/Packages";
        assert!(packages_in(root.path(), "bookworm", base).is_err());
        std::fs::write(root.path().join("latest/b"), release("bookworm")).unwrap();
        let error = packages_in(root.path(), "bookworm", base).unwrap_err();
        assert!(error.to_string().contains("bookworm's"), "{error}");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"Package: busybox\n").unwrap();
        std::fs::write(
            root.path().join("blobs/sha256").join(SHA_GZ),
            gz.finish().unwrap(),
        )
        .unwrap();
        assert_eq!(
            packages_in(root.path(), "bookworm", base).unwrap(),
            "Package: busybox\n"
        );
    }

    #[test]
    fn lock_pins_a_kernel_for_the_hypervisor() {
        let packages = lock_entries("hypervisor");
        assert!(
            packages
                .iter()
                .any(|p| p.name.starts_with("linux-image-6.1.0-"))
        );
        assert!(packages.windows(2).all(|w| w[0].name < w[1].name));
        assert!(blob(Path::new("."), "../../etc/passwd").is_none());
    }
}
