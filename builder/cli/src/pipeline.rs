//! The build, step by step: profile → mirror → verified index → resolved
//! package set → verified .debs → rootfs tree → image files. Each step's
//! module does the work; this one orders them, times them and keeps the
//! previous good output until the new one is complete.
//!
//! The steps hand typed stages on: `Resolved` (the package set; the lock
//! file read once) → `Unpacked` (one tree of all packages) →
//! `Assembled` (modules trimmed, overlay applied, kernel taken out) →
//! `Artifacts` (the files, each hashed when written). The inputs digest
//! is computed right after resolving, and the manifest is built and
//! written once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::lockfile::Lockfile;
use crate::profile::{self, LoadedProfile};
use crate::sbom;
use crate::services;
use crate::test_build::{self, TestBuildManifest};
use crate::uefi::{self, EfiBinaries, UkiInputs};
use applbuild_deb::package_index::{PackageIndex, PackageRecord};
use applbuild_deb::resolver::{self, ResolveRequest};
use applbuild_fs::write_atomic;
use applbuild_image::disk_image::{self, PartitionContent, PartitionKind, PartitionSource};
use applbuild_image::initramfs::{self, SegmentPlan};
use applbuild_image::manifest::{Artifact, MANIFEST_FILE, Manifest, ManifestPackage, sha256_file};
use applbuild_image::secure_boot::SigningKey;
use applbuild_progress::{Reporter, Unit};
use applbuild_repo::apt_sources;
use applbuild_repo::cache::Cache;
use applbuild_repo::repository::{Repository, RepositoryConfig};
use applbuild_rootfs::deb_archive::{self, CacheStatus, EntryKind};
use applbuild_rootfs::kernel_modules::{self, KernelModulesError, ModuleSelection};
use applbuild_rootfs::overlay::{self, OverlayKind};
use applbuild_rootfs::rootfs::{PathFilter, RootfsTree};
use applbuild_rootfs::templates::Renderer;
use applbuild_secrets::Store;

/// The file that pins package versions per profile.
pub const LOCKFILE: &str = "applbuild.lock";

/// What can go wrong in a build; each variant says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No project folder was found.
    #[error("no profiles/ folder in {0} or above it (use --project DIR)")]
    NoProject(PathBuf),
    /// The profile did not load.
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    /// No mirror could be chosen.
    #[error(transparent)]
    Mirror(#[from] apt_sources::AptSourcesError),
    /// The cache could not be opened.
    #[error(transparent)]
    Cache(#[from] applbuild_repo::cache::CacheError),
    /// Fetching or verifying repository data failed.
    #[error(transparent)]
    Repository(#[from] applbuild_repo::repository::RepositoryError),
    /// Dependency resolution failed.
    #[error(transparent)]
    Resolve(#[from] resolver::ResolveError),
    /// The lock file is unreadable or unwritable.
    #[error(transparent)]
    Lockfile(#[from] crate::lockfile::LockfileError),
    /// The archive serves a locked version with other bytes: never a
    /// legitimate update, since Debian never reuses a version.
    #[error(
        "{name} {version}: the archive's .deb has SHA256 {archive_sha256}, but {LOCKFILE} locks SHA256 {locked_sha256} for the same version (a tampered mirror or cache?)"
    )]
    LockedHashChanged {
        /// Package.
        name: String,
        /// The version, the same in the lock and the archive.
        version: String,
        /// The hash in the lock file.
        locked_sha256: String,
        /// The hash the archive's index gives.
        archive_sha256: String,
    },
    /// A profile's `max_index_age` is not `<number>d` or `<number>h`.
    #[error("suite {suite}: max_index_age {value:?} is not <number>d or <number>h")]
    BadIndexAge {
        /// The suite.
        suite: String,
        /// The value as written.
        value: String,
    },
    /// `--locked` and the resolution differs from the lock file.
    #[error("{LOCKFILE} is out of date for profile `{profile}` and --locked was given:\n  {}", changes.join("\n  "))]
    LockMismatch {
        /// Profile.
        profile: String,
        /// What would change.
        changes: Vec<String>,
    },
    /// A package could not be unpacked.
    #[error(transparent)]
    Unpack(#[from] deb_archive::DebError),
    /// The root file system could not be assembled.
    #[error(transparent)]
    Rootfs(#[from] applbuild_rootfs::rootfs::RootfsError),
    /// A `kernel.modules` or `kernel.drivers` pattern of a profile file
    /// matches no module.
    #[error("{file}: {source}")]
    ModulePattern {
        /// The profile file the pattern is written in.
        file: PathBuf,
        /// The selection's error.
        source: kernel_modules::KernelModulesError,
    },
    /// Kernel module selection failed.
    #[error(transparent)]
    Modules(#[from] kernel_modules::KernelModulesError),
    /// The overlay or a template failed.
    #[error(transparent)]
    Overlay(#[from] overlay::OverlayError),
    /// The secrets store could not be read or written.
    #[error(transparent)]
    Secrets(#[from] applbuild_secrets::SecretsError),
    /// A service definition is not a valid template.
    #[error(transparent)]
    Template(#[from] applbuild_rootfs::templates::TemplateError),
    /// Writing the initramfs failed.
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    /// Writing `disk.img` failed.
    #[error(transparent)]
    DiskImage(#[from] disk_image::DiskImageError),
    /// The package set lacks an EFI binary the UEFI image needs.
    #[error("{path} is not in the root file system: is {package} in the package set?")]
    MissingEfiBinary {
        /// Where the binary should be.
        path: String,
        /// The package that ships it.
        package: &'static str,
    },
    /// The unified kernel image could not be made.
    #[error(transparent)]
    Uki(#[from] applbuild_image::uki::UkiError),
    /// The EFI system partition could not be written.
    #[error(transparent)]
    Esp(#[from] applbuild_image::esp::EspError),
    /// The `.bmap` could not be made.
    #[error(transparent)]
    Bmap(#[from] applbuild_image::bmap::BmapError),
    /// The `.qcow2` could not be written.
    #[error(transparent)]
    Qcow2(#[from] applbuild_image::qcow2::Qcow2Error),
    /// Signing an EFI binary for Secure Boot failed.
    #[error(transparent)]
    Signing(#[from] applbuild_image::secure_boot::SigningError),
    /// Writing the SBOM or the licence list failed.
    #[error(transparent)]
    Sbom(#[from] applbuild_image::sbom::SbomError),
    /// Fetching or verifying a `Sources` index or a source package failed
    /// (boxed: the error is large).
    #[error(transparent)]
    Sources(Box<applbuild_repo::sources::SourcesError>),
    /// A source package of the image is in no suite's `Sources` index.
    #[error(
        "source package {name} {version} (of {binaries}) is in no Sources index of {suites}; a mirror that keeps old versions (a snapshot mirror, with --suite-mirror) may have it"
    )]
    SourceNotInIndex {
        /// Source package name.
        name: String,
        /// Its version.
        version: String,
        /// The image's binary packages built from it, comma-separated.
        binaries: String,
        /// The suites searched, comma-separated.
        suites: String,
    },
    /// Two source packages list one file name with different contents.
    #[error("source file {file} of {second} differs from the file of that name of {first}")]
    SourceFileConflict {
        /// The file name.
        file: String,
        /// The source package (name and version) listed first.
        first: String,
        /// The other one.
        second: String,
    },
    /// The test build's tree lacks paths of the image's: it would not be
    /// the image plus the test channel.
    #[error("the test build lacks these paths of the image: {}", .0.join(", "))]
    TestBuildRemoves(Vec<String>),
    /// Writing an output file failed.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl From<applbuild_repo::sources::SourcesError> for BuildError {
    fn from(error: applbuild_repo::sources::SourcesError) -> Self {
        Self::Sources(Box::new(error))
    }
}

pub(crate) fn output_error(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a project's profiles, overlay and lock file are.
#[derive(Debug, Clone)]
pub struct Project {
    root: PathBuf,
}

impl Project {
    /// A project rooted at `dir`.
    pub fn at(dir: &Path) -> Self {
        Self {
            root: dir.to_path_buf(),
        }
    }

    /// The nearest folder from `start` upwards that has `profiles/`.
    pub fn find(start: &Path) -> Result<Self, BuildError> {
        start
            .ancestors()
            .find(|dir| dir.join("profiles").is_dir())
            .map(Self::at)
            .ok_or_else(|| BuildError::NoProject(start.to_path_buf()))
    }

    /// The project folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `profiles/`.
    pub fn profiles_dir(&self) -> PathBuf {
        self.root.join("profiles")
    }

    /// `rootfs-overlay/`.
    pub fn overlay_dir(&self) -> PathBuf {
        self.root.join("rootfs-overlay")
    }

    /// `applbuild.lock`.
    pub fn lockfile(&self) -> PathBuf {
        self.root.join(LOCKFILE)
    }

    /// Overlay layers of a profile, in the order they apply: `common`, then
    /// the folder of each profile of its `extends` chain, the root first, so
    /// that a per-machine profile gets its role's files, then `vms` if the
    /// profile declares VMs, and last, in a test build, `test-build`.
    pub fn overlay_layers(&self, loaded: &LoadedProfile) -> Vec<PathBuf> {
        let vms_layer =
            (!loaded.profile.vms.is_empty()).then(|| crate::vms::OVERLAY_LAYER.to_string());
        let test_layer = loaded
            .profile
            .test_build
            .then(|| test_build::OVERLAY_LAYER.to_string());
        std::iter::once("common".to_string())
            .chain(loaded.chain().into_iter().rev())
            .chain(vms_layer)
            .chain(test_layer)
            .map(|name| self.overlay_dir().join(name))
            .collect()
    }
}

/// `$XDG_CACHE_HOME/applbuild`, else `~/.cache/applbuild`, else a folder in /tmp.
pub fn default_cache_dir() -> PathBuf {
    Cache::default_root().unwrap_or_else(|| std::env::temp_dir().join("applbuild-cache"))
}

/// How to build.
#[derive(Clone)]
pub struct BuildOptions {
    /// Output folder; each profile gets a subfolder.
    pub out_dir: PathBuf,
    /// Cache folder.
    pub cache_dir: PathBuf,
    /// Mirror URL overriding the profile and the host.
    pub mirror: Option<String>,
    /// Keyring overriding the profile's.
    pub keyring: Option<PathBuf>,
    /// Fail when the resolution differs from the lock file.
    pub locked: bool,
    /// Use the cache only.
    pub offline: bool,
    /// Progress bars.
    pub reporter: Reporter,
    /// Root of the apt configuration the mirror is read from (normally `/`).
    pub apt_root: PathBuf,
    /// Secure Boot key and certificate overriding the profile's
    /// (`--secure-boot-key`, `--secure-boot-cert`).
    pub secure_boot: Option<profile::SecureBootKeys>,
    /// Also write the test build (`--test`, see [`test_build`]).
    pub test_build: bool,
    /// Secrets file overriding the cluster's store (`--secrets`).
    pub secrets: Option<PathBuf>,
}

/// Command-line settings of single suites (`--suite-mirror`,
/// `--max-index-age`), which win over the profile's.
#[derive(Debug, Clone, Default)]
pub struct SuiteOverrides {
    /// Mirror URL per suite name.
    pub mirrors: BTreeMap<String, String>,
    /// `max_index_age` per suite name, as `<number>d` or `<number>h`.
    pub max_index_age: BTreeMap<String, String>,
}

/// Whether resolving follows the lock file or ignores it (`applbuild update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockUse {
    /// Keep locked versions while they exist and fit.
    Follow,
    /// Take the highest version of every package, as apt does.
    Ignore,
}

/// Seconds spent in each step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepSeconds {
    /// InRelease, Release and Packages.
    pub index: f64,
    /// Dependency resolution.
    pub resolve: f64,
    /// .deb downloads (and cache checks).
    pub download: f64,
    /// Unpacking into the tree.
    pub unpack: f64,
    /// Modules, overlay, configuration.
    pub assemble: f64,
    /// cpio and zstd.
    pub compress: f64,
    /// Writing `disk.img` (0 when the profile asks for none).
    pub disk: f64,
    /// Writing the UEFI disk, its bmap and its qcow2 (0 without `[image.uefi]`).
    pub uefi: f64,
    /// The test build (`--test`): its tree, segment and disk.
    pub test_build: f64,
    /// Everything.
    pub total: f64,
}

/// What a build did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// Profile.
    pub profile: String,
    /// Output folder of this profile.
    pub out_dir: PathBuf,
    /// Where the mirror came from.
    pub mirror_source: String,
    /// Packages in the image.
    pub packages: usize,
    /// Packages that had to be downloaded.
    pub downloaded: usize,
    /// Uncompressed size of the root file system.
    pub rootfs_bytes: u64,
    /// Size of initrd.img.
    pub initrd_bytes: u64,
    /// Size of vmlinuz.
    pub kernel_bytes: u64,
    /// Size of disk.img, when the profile asks for one (`[image.disk]`).
    pub disk_bytes: Option<u64>,
    /// Size of `<profile>.img`, the UEFI disk (`[image.uefi]`).
    pub uefi_image_bytes: Option<u64>,
    /// Files left out by the path filters.
    pub dropped_files: u64,
    /// Bytes left out by the path filters.
    pub dropped_bytes: u64,
    /// Kernel modules kept.
    pub modules: usize,
    /// Time per step.
    pub seconds: StepSeconds,
    /// How the package set differs from the lock file.
    pub lock_changes: Vec<String>,
    /// Locked packages of which the mirrors have a newer version
    /// (`applbuild update` moves them forward).
    pub newer_versions: Vec<resolver::NewerVersion>,
    /// Whether the output was already up to date (nothing rewritten).
    pub unchanged: bool,
    /// How many packages' files came from the unpack cache instead of
    /// being decompressed from their `.deb`.
    pub unpacked_from_cache: usize,
    /// Those packages, in package order.
    pub unpacked_from_cache_packages: Vec<String>,
    /// Module soft dependencies (`softdep` `pre:`) that matched no module,
    /// alias or built-in, as `module: name`; the image works without them.
    pub unresolved_softdeps: Vec<String>,
    /// What the test build added to the image (`--test`).
    pub test_build: Option<TestBuildManifest>,
}

/// The package set a profile resolves to (for `applbuild show`).
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedSet {
    /// The image's packages, sorted by name.
    pub packages: Vec<ManifestPackage>,
    /// Sum of their Installed-Size.
    pub installed_kib: u64,
    /// What the test build adds (`build --test`), sorted by name.
    pub test_build_packages: Vec<ManifestPackage>,
    /// Differences from the lock file.
    pub lock_changes: Vec<String>,
    /// Where the mirror came from.
    pub mirror_source: String,
}

/// Stage 1 of a build: the package set, the lock file as it was read (once,
/// here), and the repository and cache the packages come from.
pub(crate) struct Resolved {
    /// The image's packages and the test build's, as the lock file pins them.
    pub(crate) records: Vec<PackageRecord>,
    /// Names among `records` that only the test build installs.
    pub(crate) test_only: BTreeSet<String>,
    pub(crate) lock_changes: Vec<String>,
    pub(crate) newer_versions: Vec<resolver::NewerVersion>,
    /// `applbuild.lock` as read before resolving; `None` when there is none.
    pub(crate) lock: Option<Lockfile>,
    /// One per suite, in priority order.
    pub(crate) repositories: Vec<Repository>,
    pub(crate) cache: Cache,
    pub(crate) mirror_source: String,
}

impl Resolved {
    /// The packages of the image itself (not the test build's additions).
    pub(crate) fn image_records(&self) -> Vec<PackageRecord> {
        self.records
            .iter()
            .filter(|record| !self.test_only.contains(&record.name))
            .cloned()
            .collect()
    }
}

/// Resolves a profile's package set without building.
pub fn resolve(
    project: &Project,
    loaded: &LoadedProfile,
    options: &BuildOptions,
) -> Result<ResolvedSet, BuildError> {
    let mut seconds = StepSeconds::default();
    let resolved = resolve_packages(
        project,
        loaded,
        options,
        &SuiteOverrides::default(),
        LockUse::Follow,
        &mut seconds,
    )?;
    let image = resolved.image_records();
    Ok(ResolvedSet {
        installed_kib: image.iter().map(|record| record.installed_size).sum(),
        packages: image.iter().map(manifest_package).collect(),
        test_build_packages: resolved
            .records
            .iter()
            .filter(|record| resolved.test_only.contains(&record.name))
            .map(manifest_package)
            .collect(),
        lock_changes: resolved.lock_changes,
        mirror_source: resolved.mirror_source,
    })
}

pub(crate) fn manifest_package(record: &PackageRecord) -> ManifestPackage {
    ManifestPackage {
        name: record.name.clone(),
        version: record.version.to_string(),
        sha256: record.sha256.clone(),
        suite: record.suite.clone(),
    }
}

/// The packages a profile's image installs: its list, plus systemd-boot
/// for a UEFI disk image.
fn package_roots(loaded: &LoadedProfile) -> Vec<String> {
    let mut roots = loaded.profile.packages.include.clone();
    if loaded.profile.image.uefi.is_some() && !roots.iter().any(|r| r == uefi::SYSTEMD_BOOT_PACKAGE)
    {
        roots.push(uefi::SYSTEMD_BOOT_PACKAGE.into());
    }
    roots
}

/// What the resolver is asked for: the image's roots and the test build's,
/// resolved together so that one lock entry pins both and the test build
/// shares every package version with the image.
fn resolve_request(
    loaded: &LoadedProfile,
    locked: BTreeMap<String, resolver::LockedPackage>,
) -> ResolveRequest {
    let mut roots = package_roots(loaded);
    for name in test_build::PACKAGES {
        if !roots.iter().any(|root| root == name) {
            roots.push(name.to_string());
        }
    }
    ResolveRequest {
        roots,
        prefer: loaded.profile.packages.prefer.clone(),
        exclude: loaded.profile.packages.exclude.clone(),
        locked,
    }
}

/// The names of the packages only the test build needs: the resolution
/// minus what the image's own roots need of it.
fn test_only_packages(
    loaded: &LoadedProfile,
    request: &ResolveRequest,
    packages: &[PackageRecord],
) -> Result<BTreeSet<String>, BuildError> {
    let image_request = ResolveRequest {
        roots: package_roots(loaded),
        ..request.clone()
    };
    let image: BTreeSet<String> = resolver::subset(packages, &image_request)?
        .into_iter()
        .map(|record| record.name)
        .collect();
    Ok(packages
        .iter()
        .map(|record| record.name.clone())
        .filter(|name| !image.contains(name))
        .collect())
}

/// The mirror URL of `suite` and where it came from: `--suite-mirror`,
/// `--mirror`, the suite's or the distribution's `mirror` in the profile,
/// or the host's apt sources.
fn choose_mirror(
    loaded: &LoadedProfile,
    suite: &profile::SuiteSource,
    options: &BuildOptions,
    overrides: &SuiteOverrides,
) -> Result<(String, String), BuildError> {
    let distribution = &loaded.profile.distribution;
    let profile_source = format!("profile {}", loaded.name);
    Ok(
        match (
            overrides.mirrors.get(&suite.name),
            &options.mirror,
            &suite.mirror,
            &distribution.mirror,
        ) {
            (Some(url), ..) => (url.clone(), "--suite-mirror".to_string()),
            (None, Some(url), ..) => (url.clone(), "--mirror".to_string()),
            (None, None, Some(url), _) | (None, None, None, Some(url)) => {
                (url.clone(), profile_source)
            }
            (None, None, None, None) => {
                let choice = apt_sources::host_mirror(&options.apt_root, &suite.name)?;
                (
                    choice.uri.clone(),
                    format!("host apt sources ({})", choice.file.display()),
                )
            }
        },
    )
}

/// One repository per suite of the profile, in priority order, and a line
/// saying where each suite's mirror came from.
fn suite_repositories(
    loaded: &LoadedProfile,
    options: &BuildOptions,
    overrides: &SuiteOverrides,
) -> Result<(Vec<Repository>, String), BuildError> {
    let distribution = &loaded.profile.distribution;
    let mut repositories = Vec::new();
    let mut sources = Vec::new();
    for suite in distribution.suite_sources() {
        let (mirror, source) = choose_mirror(loaded, &suite, options, overrides)?;
        let age = overrides
            .max_index_age
            .get(&suite.name)
            .or(suite.max_index_age.as_ref());
        let max_index_age = age
            .map(|value| {
                profile::parse_age(value).ok_or_else(|| BuildError::BadIndexAge {
                    suite: suite.name.clone(),
                    value: value.clone(),
                })
            })
            .transpose()?;
        sources.push(format!("{}: {source}", suite.name));
        repositories.push(Repository::new(RepositoryConfig {
            mirror,
            suite: suite.name.clone(),
            components: distribution.components.clone(),
            architecture: distribution.architecture.clone(),
            keyring: options
                .keyring
                .clone()
                .unwrap_or_else(|| distribution.keyring.clone()),
            offline: options.offline,
            max_index_age,
        }));
    }
    Ok((repositories, sources.join("; ")))
}

pub(crate) fn resolve_packages(
    project: &Project,
    loaded: &LoadedProfile,
    options: &BuildOptions,
    overrides: &SuiteOverrides,
    lock_use: LockUse,
    seconds: &mut StepSeconds,
) -> Result<Resolved, BuildError> {
    let (repositories, mirror_source) = suite_repositories(loaded, options, overrides)?;
    let cache = Cache::open(&options.cache_dir)?;
    let started = Instant::now();
    let infos = repositories
        .iter()
        .map(|repository| repository.fetch_index_info(&cache, &options.reporter))
        .collect::<Result<Vec<_>, _>>()?;
    seconds.index = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let lock = Lockfile::load(&project.lockfile())?;
    let locked = match lock_use {
        LockUse::Follow => lock.as_ref().and_then(|lock| lock.profile(&loaded.name)),
        LockUse::Ignore => None,
    };
    let first_lock = locked.is_none();
    let request = resolve_request(loaded, locked.unwrap_or_default());
    let cached = ResolutionCache::new(&cache, &infos, &request);
    let resolution = match cached.load() {
        Some(resolution) => resolution,
        None => {
            let mut index = PackageIndex::default();
            for (repository, info) in repositories.iter().zip(&infos) {
                index.merge(repository.load_index(&cache, info)?);
            }
            let resolution = resolver::resolve(&index, &request)?;
            let newer_versions = resolver::newer_versions(&index, &resolution.packages);
            let resolution = CachedResolution {
                packages: resolution.packages,
                lock_changes: resolution.lock_changes,
                newer_versions,
            };
            if resolution.lock_changes.is_empty() {
                cached.store(&resolution);
            }
            resolution
        }
    };
    let test_only = test_only_packages(loaded, &request, &resolution.packages)?;
    seconds.resolve = started.elapsed().as_secs_f64();
    check_locked_hashes(&request.locked, &resolution.packages)?;
    let lock_changes = if lock_use == LockUse::Follow {
        lock_changes(loaded, options, first_lock, &resolution.lock_changes)?
    } else {
        Vec::new()
    };
    Ok(Resolved {
        records: resolution.packages,
        test_only,
        lock_changes,
        newer_versions: resolution.newer_versions,
        lock,
        repositories,
        cache,
        mirror_source,
    })
}

/// A locked version that the archive now serves with another SHA256 is an
/// error, whatever the flags: it names both hashes.
pub(crate) fn check_locked_hashes(
    locked: &BTreeMap<String, resolver::LockedPackage>,
    packages: &[PackageRecord],
) -> Result<(), BuildError> {
    for record in packages {
        if let Some(locked) = locked.get(&record.name)
            && locked.version == record.version
            && locked.sha256 != record.sha256
        {
            return Err(BuildError::LockedHashChanged {
                name: record.name.clone(),
                version: record.version.to_string(),
                locked_sha256: locked.sha256.clone(),
                archive_sha256: record.sha256.clone(),
            });
        }
    }
    Ok(())
}

/// How the resolution differs from the lock file, as reported; with
/// `--locked` any difference is an error.
fn lock_changes(
    loaded: &LoadedProfile,
    options: &BuildOptions,
    first_lock: bool,
    changes: &[resolver::LockChange],
) -> Result<Vec<String>, BuildError> {
    let lock_changes: Vec<String> = if first_lock && !options.locked {
        Vec::new()
    } else if first_lock {
        vec![format!(
            "no entry for profile `{}` in {LOCKFILE}",
            loaded.name
        )]
    } else {
        changes.iter().map(ToString::to_string).collect()
    };
    if options.locked && !lock_changes.is_empty() {
        return Err(BuildError::LockMismatch {
            profile: loaded.name.clone(),
            changes: lock_changes,
        });
    }
    Ok(lock_changes)
}

/// A resolution as the resolution cache keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct CachedResolution {
    packages: Vec<PackageRecord>,
    lock_changes: Vec<resolver::LockChange>,
    newer_versions: Vec<resolver::NewerVersion>,
}

/// The source of the code that computes a resolution: part of the cache
/// key, so that a changed resolver never reuses an old result.
const RESOLVER_CODE: [&str; 4] = [
    include_str!("pipeline.rs"),
    include_str!("../../deb/src/resolver.rs"),
    include_str!("../../deb/src/package_index.rs"),
    include_str!("../../deb/src/version.rs"),
];

/// Resolutions already computed, keyed by the verified index blobs of
/// every suite, the request and the resolver's code: a warm build neither
/// decompresses nor parses the indexes. Only resolutions that match the
/// lock file are kept, so a hit has no lock changes. Each entry starts with
/// the SHA256 of its JSON, checked when read.
struct ResolutionCache {
    path: PathBuf,
}

impl ResolutionCache {
    fn new(
        cache: &Cache,
        infos: &[applbuild_repo::repository::IndexInfo],
        request: &ResolveRequest,
    ) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(env!("CARGO_PKG_VERSION"));
        for code in RESOLVER_CODE {
            hasher.update(Sha256::digest(code));
        }
        for info in infos {
            hasher.update(format!("suite {}\n", info.suite));
            for blob in &info.indexes {
                hasher.update(format!("{} {}\n", blob.path, blob.sha256));
            }
        }
        for list in [&request.roots, &request.prefer, &request.exclude] {
            hasher.update(format!("{list:?}\n"));
        }
        for (name, package) in &request.locked {
            hasher.update(format!("{name} {} {}\n", package.version, package.sha256));
        }
        let key = hex::encode(hasher.finalize());
        Self {
            path: cache.root().join("resolutions").join(format!("{key}.json")),
        }
    }

    /// The cached resolution; one whose digest does not match is removed
    /// (and the build says so), to be computed again.
    fn load(&self) -> Option<CachedResolution> {
        let data = std::fs::read(&self.path).ok()?;
        let verified = data
            .split_first_chunk::<65>()
            .filter(|(digest, json)| {
                digest[64] == b'\n' && digest[..64] == *hex::encode(Sha256::digest(json)).as_bytes()
            })
            .and_then(|(_, json)| serde_json::from_slice(json).ok());
        if verified.is_none() {
            eprintln!(
                "applbuild: cached resolution {} is corrupt; discarded, resolving again",
                self.path.display()
            );
            let _ = std::fs::remove_file(&self.path);
        }
        verified
    }

    /// Best effort: a resolution that cannot be stored is computed again next time.
    fn store(&self, resolution: &CachedResolution) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let json = serde_json::to_vec(resolution).expect("resolutions serialize");
        let mut entry = format!("{}\n", hex::encode(Sha256::digest(&json))).into_bytes();
        entry.extend_from_slice(&json);
        let stored = std::fs::create_dir_all(dir).and_then(|()| write_atomic(&self.path, &entry));
        if let Err(error) = stored {
            eprintln!(
                "applbuild: cannot cache the resolution in {}: {error}",
                dir.display()
            );
        }
    }
}

/// The secrets file of `loaded`: `--secrets`, else its cluster's store.
pub fn secrets_path(loaded: &LoadedProfile, options: &BuildOptions) -> Result<PathBuf, BuildError> {
    match &options.secrets {
        Some(path) => Ok(path.clone()),
        None => Ok(applbuild_secrets::default_path(loaded.profile.cluster())?),
    }
}

/// The secrets store of `loaded`, with a random value for each secret the
/// profile names and the store lacks (written back, and said on stderr:
/// never a value); an empty store, read from no file, for a profile that
/// names no secret.
pub fn secrets_store(loaded: &LoadedProfile, options: &BuildOptions) -> Result<Store, BuildError> {
    let names = loaded.profile.secret_names();
    if names.is_empty() {
        return Ok(Store::empty(Path::new("")));
    }
    let mut store = Store::open(&secrets_path(loaded, options)?)?;
    let existed = store.exists();
    let added = store.add_missing(names);
    if !added.is_empty() {
        store.save()?;
        eprintln!(
            "applbuild: {}: {} {} with random values: {}",
            loaded.name,
            if existed { "added to" } else { "created" },
            store.path().display(),
            added.join(", ")
        );
    }
    Ok(store)
}

/// SHA256 over everything a build reads from the project (profile, overlay,
/// locked versions, the values of its secrets) and applbuild's version: equal digests, equal images.
/// This reads the locked versions from the lock file, as `boot` needs; a
/// build hashes the versions it resolved, which the lock file then holds.
pub fn inputs_digest(project: &Project, loaded: &LoadedProfile, secrets: &Store) -> String {
    let locked = Lockfile::load(&project.lockfile())
        .ok()
        .flatten()
        .and_then(|lock| lock.profile(&loaded.name))
        .unwrap_or_default();
    digest_inputs(
        project,
        loaded,
        secrets,
        locked.iter().map(|(name, package)| {
            (
                name.as_str(),
                package.version.to_string(),
                package.sha256.as_str(),
            )
        }),
    )
}

/// The inputs digest over `packages` (name, version, `.deb` SHA256), which
/// must come sorted by name, as the lock file lists them.
fn digest_inputs<'a>(
    project: &Project,
    loaded: &LoadedProfile,
    secrets: &Store,
    packages: impl Iterator<Item = (&'a str, String, &'a str)>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(env!("CARGO_PKG_VERSION"));
    hasher.update(loaded.digest());
    // A changed secret rebuilds; a missing one can match no image.
    for name in loaded.profile.secret_names() {
        let value = secrets.get(name).unwrap_or_default();
        hasher.update(format!("secret {name} {}:{value}\n", value.len()));
    }
    // The test build's layer counts too: `--test` builds from these inputs.
    for layer in project.overlay_layers(&loaded.for_test_build()) {
        hash_tree(&layer, &layer, &mut hasher);
    }
    for (name, version, sha256) in packages {
        hasher.update(format!("{name} {version} {sha256}\n"));
    }
    hex::encode(hasher.finalize())
}

/// The inputs digest of a build, from the packages it resolved (the
/// versions the lock file holds once the build has written it).
fn resolved_inputs_digest(
    project: &Project,
    loaded: &LoadedProfile,
    secrets: &Store,
    resolved: &Resolved,
) -> String {
    let by_name: BTreeMap<&str, &PackageRecord> = resolved
        .records
        .iter()
        .map(|record| (record.name.as_str(), record))
        .collect();
    digest_inputs(
        project,
        loaded,
        secrets,
        by_name
            .into_iter()
            .map(|(name, record)| (name, record.version.to_string(), record.sha256.as_str())),
    )
}

fn hash_tree(root: &Path, dir: &Path, hasher: &mut Sha256) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    for path in paths {
        let relative = path.strip_prefix(root).unwrap_or(&path);
        hasher.update(relative.to_string_lossy().as_bytes());
        if let Ok(target) = std::fs::read_link(&path) {
            hasher.update(target.to_string_lossy().as_bytes());
        } else if path.is_dir() {
            hash_tree(root, &path, hasher);
        } else if let Ok(contents) = std::fs::read(&path) {
            use std::os::unix::fs::PermissionsExt;
            let executable =
                std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
            hasher.update([u8::from(executable)]);
            hasher.update(contents);
        }
    }
}

/// Whether `image_dir` holds an intact image built from the current inputs
/// and, when `with_test_build`, its test build too.
pub fn is_up_to_date(
    project: &Project,
    loaded: &LoadedProfile,
    secrets: &Store,
    image_dir: &Path,
    with_test_build: bool,
) -> bool {
    let test_manifest = format!("{}/{}", test_build::DIR, test_build::MANIFEST_FILE);
    Manifest::read(image_dir).is_some_and(|manifest| {
        manifest.inputs_digest == inputs_digest(project, loaded, secrets)
            && manifest.artifacts_intact(image_dir)
            && (!with_test_build || manifest.artifacts.iter().any(|a| a.file == test_manifest))
    })
}

/// Stage 2: every package's files in one tree (path filters applied), and
/// where they came from.
pub(crate) struct Unpacked {
    pub(crate) tree: RootfsTree,
    /// Packages that were not in the download cache.
    downloaded: usize,
    /// Packages whose files came from the unpack cache, not from the `.deb`.
    from_unpack_cache: Vec<String>,
}

/// Stage 3: the finished root file system, the kernel image taken out of
/// it, and the kernel modules kept.
pub(crate) struct Assembled {
    pub(crate) tree: RootfsTree,
    pub(crate) kernel: Arc<[u8]>,
    /// The package the kernel image came from, for the SBOM.
    kernel_package: Option<String>,
    pub(crate) modules: ModuleSelection,
    /// systemd-boot and the UKI stub, for a profile with `[image.uefi]`.
    pub(crate) efi: Option<EfiBinaries>,
    /// The public half of the SSH host key, for a profile with `[ssh]`.
    ssh_host_key: Option<String>,
}

/// Stage 4: the image files in the staging folder, each hashed once, when
/// it was written; sorted by name, as the manifest lists them.
struct Artifacts {
    staging: tempfile::TempDir,
    artifacts: Vec<Artifact>,
}

/// Builds one profile into `options.out_dir/<name>/`.
pub fn build(
    project: &Project,
    name: &str,
    options: &BuildOptions,
) -> Result<BuildReport, BuildError> {
    build_with_suites(project, name, options, &SuiteOverrides::default())
}

/// [`build`], with command-line settings of single suites.
pub fn build_with_suites(
    project: &Project,
    name: &str,
    options: &BuildOptions,
    overrides: &SuiteOverrides,
) -> Result<BuildReport, BuildError> {
    let total = Instant::now();
    let loaded = profile::load(&project.profiles_dir(), name)?;
    let secrets = secrets_store(&loaded, options)?;
    let mut seconds = StepSeconds::default();
    let resolved = resolve_packages(
        project,
        &loaded,
        options,
        overrides,
        LockUse::Follow,
        &mut seconds,
    )?;
    let inputs_digest = resolved_inputs_digest(project, &loaded, &secrets, &resolved);
    let image_records = resolved.image_records();
    let unpacked = unpack(&resolved, &image_records, &loaded, options, &mut seconds)?;
    let assembled = assemble(project, &loaded, &secrets, unpacked.tree, &mut seconds)?;
    let signing_keys = secure_boot_keys(project, &loaded, options);
    let mut written = write_artifacts(
        &loaded,
        &resolved,
        &assembled,
        options,
        signing_keys.as_ref(),
        &mut seconds,
    )?;
    let test_build = match options.test_build {
        true => Some(write_test_build(
            project,
            &loaded,
            &resolved,
            (&assembled, &secrets),
            &mut written,
            options,
            &mut seconds,
        )?),
        false => None,
    };
    let manifest = Manifest {
        packages: image_records.iter().map(manifest_package).collect(),
        ..image_manifest(&loaded, inputs_digest, &assembled, written.artifacts)
    };
    if !options.locked {
        update_lock(project, name, &resolved)?;
    }
    write_manifest(written.staging.path(), &manifest)?;

    let image_dir = options.out_dir.join(name);
    let unchanged = Manifest::read(&image_dir).is_some_and(|previous| {
        previous.artifacts == manifest.artifacts && previous.artifacts_intact(&image_dir)
    });
    replace_dir(written.staging, &image_dir)?;
    seconds.total = total.elapsed().as_secs_f64();
    let outcome = Outcome {
        image_dir,
        resolved,
        unpacked: UnpackSummary {
            downloaded: unpacked.downloaded,
            from_unpack_cache: unpacked.from_unpack_cache,
        },
        manifest,
        test_build,
        unchanged,
        seconds,
    };
    Ok(build_report(&loaded, &assembled, outcome))
}

/// The manifest of `loaded`'s image, without its packages.
fn image_manifest(
    loaded: &LoadedProfile,
    inputs_digest: String,
    assembled: &Assembled,
    artifacts: Vec<Artifact>,
) -> Manifest {
    Manifest {
        profile: loaded.name.clone(),
        profile_digest: loaded.digest(),
        inputs_digest,
        applbuild_version: env!("CARGO_PKG_VERSION").into(),
        distribution: format!(
            "{}/{}",
            loaded.profile.distribution.suite, loaded.profile.distribution.architecture
        ),
        kernel_release: assembled.modules.kernel_version.clone(),
        rootfs_digest: hex::encode(assembled.tree.digest()),
        modules: assembled.modules.load_order.clone(),
        packages: Vec::new(),
        artifacts,
        ssh_host_key: assembled.ssh_host_key.clone(),
    }
}

/// Writes the test build into the staging folder, adds its artifacts to
/// the image's and times it.
fn write_test_build(
    project: &Project,
    loaded: &LoadedProfile,
    resolved: &Resolved,
    (assembled, secrets): (&Assembled, &Store),
    written: &mut Artifacts,
    options: &BuildOptions,
    seconds: &mut StepSeconds,
) -> Result<TestBuildManifest, BuildError> {
    let started = Instant::now();
    let signing_keys = secure_boot_keys(project, loaded, options);
    let image = test_build::Image {
        dir: written.staging.path(),
        assembled,
        artifacts: &written.artifacts,
        secrets,
    };
    let (artifacts, manifest) = test_build::write(
        project,
        loaded,
        resolved,
        &image,
        options,
        signing_keys.as_ref(),
    )?;
    written.artifacts.extend(artifacts);
    written.artifacts.sort_by(|a, b| a.file.cmp(&b.file));
    seconds.test_build = started.elapsed().as_secs_f64();
    Ok(manifest)
}

/// What the unpack step reports.
struct UnpackSummary {
    downloaded: usize,
    from_unpack_cache: Vec<String>,
}

/// What a finished build knows, for its report.
struct Outcome {
    image_dir: PathBuf,
    resolved: Resolved,
    unpacked: UnpackSummary,
    manifest: Manifest,
    test_build: Option<TestBuildManifest>,
    unchanged: bool,
    seconds: StepSeconds,
}

/// The report of a build of `loaded`.
fn build_report(loaded: &LoadedProfile, assembled: &Assembled, outcome: Outcome) -> BuildReport {
    let manifest = &outcome.manifest;
    let image = &loaded.profile.image;
    BuildReport {
        profile: loaded.name.clone(),
        out_dir: outcome.image_dir,
        mirror_source: outcome.resolved.mirror_source,
        packages: manifest.packages.len(),
        downloaded: outcome.unpacked.downloaded,
        rootfs_bytes: assembled.tree.total_size(),
        initrd_bytes: manifest.artifact_size("initrd.img"),
        kernel_bytes: manifest.artifact_size("vmlinuz"),
        disk_bytes: image
            .disk
            .as_ref()
            .map(|_| manifest.artifact_size(DISK_IMAGE)),
        uefi_image_bytes: image
            .uefi
            .as_ref()
            .map(|_| manifest.artifact_size(&format!("{}.img", loaded.name))),
        dropped_files: assembled.tree.dropped().files,
        dropped_bytes: assembled.tree.dropped().bytes,
        modules: assembled.modules.load_order.len(),
        seconds: outcome.seconds,
        lock_changes: outcome.resolved.lock_changes,
        newer_versions: outcome.resolved.newer_versions,
        unchanged: outcome.unchanged,
        unpacked_from_cache: outcome.unpacked.from_unpack_cache.len(),
        unpacked_from_cache_packages: outcome.unpacked.from_unpack_cache,
        unresolved_softdeps: assembled.modules.unresolved_softdeps.clone(),
        test_build: outcome.test_build,
    }
}

/// The Secure Boot key and certificate: the command line's, else the
/// profile's (relative to the project folder), else none.
fn secure_boot_keys(
    project: &Project,
    loaded: &LoadedProfile,
    options: &BuildOptions,
) -> Option<profile::SecureBootKeys> {
    let from_profile = || {
        let keys = loaded.profile.image.uefi.as_ref()?.secure_boot.as_ref()?;
        Some(profile::SecureBootKeys {
            key: project.root().join(&keys.key),
            cert: project.root().join(&keys.cert),
        })
    };
    options.secure_boot.clone().or_else(from_profile)
}

/// Downloads what the cache lacks of `records` (packages of `resolved`)
/// and unpacks them into a tree.
pub(crate) fn unpack(
    resolved: &Resolved,
    records: &[PackageRecord],
    loaded: &LoadedProfile,
    options: &BuildOptions,
    seconds: &mut StepSeconds,
) -> Result<Unpacked, BuildError> {
    let started = Instant::now();
    let downloaded = records
        .iter()
        .filter(|record| resolved.cache.get(&record.sha256).is_none())
        .count();
    let deb_paths = fetch_packages(resolved, records, options)?;
    seconds.download = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut filter = PathFilter::default();
    for pattern in &loaded.profile.packages.drop_paths {
        filter.exclude(pattern)?;
    }
    let mut tree = RootfsTree::new();
    let mut from_unpack_cache = Vec::new();
    for (record, (entries, status)) in records
        .iter()
        .zip(unpack_all(resolved, records, &deb_paths, options)?)
    {
        match status {
            CacheStatus::Hit => from_unpack_cache.push(record.name.clone()),
            CacheStatus::Stored => {}
            CacheStatus::NotStored(reason) => eprintln!(
                "applbuild: cannot cache the unpacked files of {}: {reason}",
                record.name
            ),
            CacheStatus::Rebuilt(reason) => eprintln!(
                "applbuild: discarded the cached unpacked files of {} and unpacked the .deb again: {reason}",
                record.name
            ),
        }
        tree.insert_package(&record.name, entries, &filter)?;
    }
    seconds.unpack = started.elapsed().as_secs_f64();
    Ok(Unpacked {
        tree,
        downloaded,
        from_unpack_cache,
    })
}

/// Names the profile file a failing `kernel.modules` or `kernel.drivers`
/// pattern is written in.
fn with_pattern_file(loaded: &LoadedProfile, error: KernelModulesError) -> BuildError {
    let pattern = match &error {
        KernelModulesError::NoMatch { pattern, .. }
        | KernelModulesError::BadPattern { pattern, .. } => pattern,
        _ => return error.into(),
    };
    let written = toml::Value::String(pattern.clone()).to_string();
    let file = loaded
        .files
        .iter()
        .find(|path| std::fs::read_to_string(path).is_ok_and(|text| text.contains(&written)));
    match file {
        Some(file) => BuildError::ModulePattern {
            file: file.clone(),
            source: error,
        },
        None => error.into(),
    }
}

/// Trims the kernel modules, adds the base layout and the overlay, and
/// takes the kernel image out of the tree. Overlay files that hold a
/// secret's value are private to root.
pub(crate) fn assemble(
    project: &Project,
    loaded: &LoadedProfile,
    secrets: &Store,
    mut tree: RootfsTree,
    seconds: &mut StepSeconds,
) -> Result<Assembled, BuildError> {
    let started = Instant::now();
    let settings = &loaded.profile.kernel;
    let modules = kernel_modules::select_modules(&mut tree, &settings.modules, &settings.drivers)
        .map_err(|error| with_pattern_file(loaded, error))?;
    let context = services::template_context(
        loaded,
        &modules.kernel_version,
        &modules.load_order,
        secrets,
    )?;
    let renderer = Renderer::new(&context);
    add_base_layout(&mut tree)?;
    let mut items = overlay::read_layers(&project.overlay_layers(loaded), &renderer)?;
    let values: Vec<&str> = loaded
        .profile
        .secret_names()
        .into_iter()
        .filter_map(|name| secrets.get(name))
        .collect();
    overlay::restrict_private(&mut items, &values);
    for item in items {
        match item.kind {
            OverlayKind::File { contents, mode } => {
                tree.add_file(&item.path, contents, mode, 0, 0)?
            }
            OverlayKind::Dir { mode } => tree.add_dir(&item.path, mode, 0, 0)?,
            OverlayKind::Symlink { target } => tree.add_symlink(&item.path, &target)?,
        }
    }
    crate::ssh::add_files(&mut tree, &loaded.profile, secrets)?;
    crate::console::add_files(&mut tree, &loaded.profile, secrets)?;
    crate::vms::add_files(&mut tree, &loaded.profile)?;
    let kernel = match tree.get(&modules.vmlinuz).map(|node| &node.kind) {
        Some(EntryKind::File(contents)) => Arc::clone(contents),
        _ => unreachable!("select_modules checked that the kernel image is a file"),
    };
    let kernel_package = tree.owner(&modules.vmlinuz).map(str::to_owned);
    tree.remove(&modules.vmlinuz)?;
    let efi = match loaded.profile.image.uefi {
        Some(_) => Some(uefi::take_efi_binaries(&mut tree)?),
        None => None,
    };
    seconds.assemble = started.elapsed().as_secs_f64();
    Ok(Assembled {
        tree,
        kernel,
        kernel_package,
        modules,
        efi,
        ssh_host_key: crate::ssh::host_key_public(&loaded.profile, secrets),
    })
}

/// Writes `initrd.img`, `vmlinuz` and, when the profile asks, `disk.img`
/// into a fresh staging folder, keeping each file's size and hash.
fn write_artifacts(
    loaded: &LoadedProfile,
    resolved: &Resolved,
    assembled: &Assembled,
    options: &BuildOptions,
    signing_keys: Option<&profile::SecureBootKeys>,
    seconds: &mut StepSeconds,
) -> Result<Artifacts, BuildError> {
    let started = Instant::now();
    let staging = staging_dir(&options.out_dir, &loaded.name)?;
    let initrd = initramfs::write_initramfs(
        &assembled.tree,
        &segment_plan(&assembled.modules.modules_dir),
        resolved.cache.root(),
        loaded.profile.image.compression_level,
        &staging.path().join("initrd.img"),
        &options.reporter,
    )?;
    for segment in initrd.segments.iter().filter(|s| s.discarded_corrupt) {
        eprintln!(
            "applbuild: cached initramfs segment {} ({}) failed its SHA256 check; discarded and compressed again",
            segment.name, segment.key
        );
    }
    let kernel_path = staging.path().join("vmlinuz");
    std::fs::write(&kernel_path, &assembled.kernel).map_err(output_error(&kernel_path))?;
    seconds.compress = started.elapsed().as_secs_f64();

    let mut artifacts = Vec::new();
    if let Some(disk) = &loaded.profile.image.disk {
        let started = Instant::now();
        let path = write_disk_image(staging.path(), disk)?;
        artifacts.push(Artifact {
            file: DISK_IMAGE.into(),
            size: std::fs::metadata(&path).map_err(output_error(&path))?.len(),
            sha256: sha256_file(&path).map_err(output_error(&path))?,
        });
        seconds.disk = started.elapsed().as_secs_f64();
    }
    let started = Instant::now();
    artifacts.extend(write_uefi_artifacts(
        staging.path(),
        loaded,
        assembled,
        signing_keys,
    )?);
    seconds.uefi = started.elapsed().as_secs_f64();
    artifacts.push(Artifact {
        file: "initrd.img".into(),
        size: initrd.total_bytes,
        sha256: initrd.sha256,
    });
    artifacts.push(Artifact {
        file: "vmlinuz".into(),
        size: assembled.kernel.len() as u64,
        sha256: hex::encode(Sha256::digest(&assembled.kernel)),
    });
    let sbom_files = sbom::write(
        staging.path(),
        &loaded.name,
        &loaded.profile.distribution.suite,
        sbom::packages(&resolved.image_records(), &assembled.tree),
        &artifacts,
        assembled.kernel_package.as_deref(),
    )?;
    artifacts.extend(sbom_files);
    artifacts.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(Artifacts { staging, artifacts })
}

/// Writes `<profile>.img` and its companions into `dir` (which holds the
/// `initrd.img` its UKI carries) for a profile with `[image.uefi]`; none
/// otherwise.
pub(crate) fn write_uefi_artifacts(
    dir: &Path,
    loaded: &LoadedProfile,
    assembled: &Assembled,
    signing_keys: Option<&profile::SecureBootKeys>,
) -> Result<Vec<Artifact>, BuildError> {
    let (Some(uefi), Some(efi)) = (&loaded.profile.image.uefi, &assembled.efi) else {
        return Ok(Vec::new());
    };
    let inputs = UkiInputs {
        loaded,
        kernel: &assembled.kernel,
        kernel_release: &assembled.modules.kernel_version,
    };
    let signing = signing_keys.map(|keys| SigningKey {
        key: &keys.key,
        cert: &keys.cert,
    });
    uefi::write_uefi_image(dir, uefi, efi, &inputs, signing)
}

/// Records the resolved packages in the lock file, unless it already holds
/// exactly them. Two builds of different profiles may finish together, so
/// the read-modify-write runs under a lock on the project folder and reads
/// the file again there, keeping the other build's entry.
pub(crate) fn update_lock(
    project: &Project,
    name: &str,
    resolved: &Resolved,
) -> Result<(), BuildError> {
    let mut expected = resolved.lock.clone().unwrap_or_default();
    expected.set_profile(name, &resolved.records);
    if resolved.lock.as_ref() == Some(&expected) {
        return Ok(());
    }
    let project_dir = std::fs::File::open(project.root()).map_err(output_error(project.root()))?;
    project_dir.lock().map_err(output_error(project.root()))?;
    let mut lock = Lockfile::load(&project.lockfile())?.unwrap_or_default();
    lock.set_profile(name, &resolved.records);
    lock.save(&project.lockfile())?;
    project_dir.unlock().map_err(output_error(project.root()))?;
    Ok(())
}

/// Writes `manifest.json` and `SHA256SUMS` (which lists the manifest too).
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), BuildError> {
    let manifest_json = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    let manifest_path = dir.join(MANIFEST_FILE);
    std::fs::write(&manifest_path, &manifest_json).map_err(output_error(&manifest_path))?;
    let sums_path = dir.join("SHA256SUMS");
    std::fs::write(&sums_path, manifest.sha256sums(&manifest_json))
        .map_err(output_error(&sums_path))?;
    Ok(())
}

/// The GPT disk image's file name in the output folder.
pub const DISK_IMAGE: &str = "disk.img";

/// Writes `dir/disk.img` from `dir/vmlinuz` and `dir/initrd.img`:
/// partition 1 `kernel`, 2 `initrd`, 3 `data` (zeros; left out when
/// `data_mib` is 0), and returns its path. See `docs/image.md`.
fn write_disk_image(dir: &Path, disk: &profile::DiskImage) -> Result<PathBuf, BuildError> {
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    let mut partitions = vec![
        PartitionContent {
            name: "kernel",
            kind: PartitionKind::LinuxData,
            source: PartitionSource::File(&kernel),
        },
        PartitionContent {
            name: "initrd",
            kind: PartitionKind::LinuxData,
            source: PartitionSource::File(&initrd),
        },
    ];
    if disk.data_mib > 0 {
        partitions.push(PartitionContent {
            name: "data",
            kind: PartitionKind::LinuxData,
            source: PartitionSource::Zeros {
                bytes: u64::from(disk.data_mib) << 20,
            },
        });
    }
    let path = dir.join(DISK_IMAGE);
    disk_image::write_gpt_image(&path, &partitions)?;
    Ok(path)
}

/// Every package's `.deb` from its own suite's mirror, in package order.
fn fetch_packages(
    resolved: &Resolved,
    records: &[PackageRecord],
    options: &BuildOptions,
) -> Result<Vec<PathBuf>, BuildError> {
    let mut paths: Vec<Option<PathBuf>> = vec![None; records.len()];
    for (number, repository) in resolved.repositories.iter().enumerate() {
        // Records of no known suite (an old cached resolution) go to the first.
        let (positions, suite_records): (Vec<usize>, Vec<PackageRecord>) = records
            .iter()
            .enumerate()
            .filter(|(_, record)| {
                record.suite == repository.suite() || (number == 0 && record.suite.is_empty())
            })
            .map(|(position, record)| (position, record.clone()))
            .unzip();
        if suite_records.is_empty() {
            continue;
        }
        let fetched =
            repository.fetch_packages(&resolved.cache, &suite_records, &options.reporter)?;
        for (position, path) in positions.into_iter().zip(fetched) {
            paths[position] = Some(path);
        }
    }
    Ok(paths.into_iter().flatten().collect())
}

/// Unpacks every package in parallel (from the unpacked cache when warm);
/// the entries come back in package order so insertion stays deterministic.
fn unpack_all(
    resolved: &Resolved,
    records: &[PackageRecord],
    deb_paths: &[PathBuf],
    options: &BuildOptions,
) -> Result<Vec<(Vec<deb_archive::DataEntry>, CacheStatus)>, BuildError> {
    use rayon::prelude::*;
    let task = options
        .reporter
        .bar("unpack", deb_paths.len() as u64, Unit::Items);
    let unpacked = records
        .par_iter()
        .zip(deb_paths)
        .map(|(record, path)| {
            let result =
                deb_archive::read_data_entries_cached(path, &record.sha256, resolved.cache.root());
            task.inc(1);
            result
        })
        .collect::<Result<Vec<_>, _>>()?;
    task.finish();
    Ok(unpacked)
}

/// Three segments, so that an edit recompresses only what it touched: the
/// kernel modules, the package files, then generated and overlay files
/// (last, so they win over package files of the same path).
fn segment_plan(modules_dir: &str) -> SegmentPlan {
    let modules_prefix = format!("{modules_dir}/");
    SegmentPlan::new()
        .segment("modules", move |entry| {
            entry.path.starts_with(&modules_prefix) && entry.owner.is_some()
        })
        .segment("packages", |entry| entry.owner.is_some())
        .segment("config", |_| true)
}

/// A fresh folder beside the output, so the final rename stays on one file system.
pub(crate) fn staging_dir(out_dir: &Path, name: &str) -> Result<tempfile::TempDir, BuildError> {
    std::fs::create_dir_all(out_dir).map_err(output_error(out_dir))?;
    tempfile::Builder::new()
        .prefix(&format!(".{name}.building-"))
        .tempdir_in(out_dir)
        .map_err(output_error(out_dir))
}

/// Swaps the finished staging folder in at `image_dir` (an image's folder,
/// or its `sources/`); the old output is removed only after the new one is
/// in place. A `run/` folder of `applbuild boot` is kept.
pub(crate) fn replace_dir(staging: tempfile::TempDir, image_dir: &Path) -> Result<(), BuildError> {
    let staging = staging.keep();
    let old_run = image_dir.join("run");
    if old_run.is_dir() {
        let _ = std::fs::rename(&old_run, staging.join("run"));
    }
    let retired = image_dir.with_extension("previous");
    let _ = std::fs::remove_dir_all(&retired);
    if image_dir.exists() {
        std::fs::rename(image_dir, &retired).map_err(output_error(image_dir))?;
    }
    std::fs::rename(&staging, image_dir).map_err(output_error(image_dir))?;
    let _ = std::fs::remove_dir_all(&retired);
    Ok(())
}

/// Folders every Linux system has, which base-files would have made.
fn add_base_layout(tree: &mut RootfsTree) -> Result<(), BuildError> {
    for (path, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("etc", 0o755),
        ("var", 0o755),
        ("var/lib", 0o755),
        ("var/log", 0o755),
        ("var/tmp", 0o1777),
        ("var/cache", 0o755),
        ("mnt", 0o755),
    ] {
        tree.add_dir(path, mode, 0, 0)?;
    }
    tree.add_symlink("var/run", "/run")?;
    tree.add_symlink("var/lock", "/run/lock")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A per-machine profile gets the overlay folders of every profile it
    /// extends, the root's first and its own last, then `vms` (it declares
    /// VMs), then in a test build `test-build`.
    #[test]
    fn overlay_layers_follow_the_extends_chain() {
        let project_dir = tempfile::tempdir().unwrap();
        let profiles = project_dir.path().join("profiles");
        std::fs::create_dir(&profiles).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles");
        for name in ["base.toml", "bare-metal.toml", "hypervisor.toml"] {
            std::fs::copy(shipped.join(name), profiles.join(name)).unwrap();
        }
        std::fs::write(
            profiles.join("rack7-hv.toml"),
            "extends = \"hypervisor\"\nhostname = \"rack7-hv\"\n",
        )
        .unwrap();
        let loaded = profile::load(&profiles, "rack7-hv").unwrap();
        let project = Project::at(project_dir.path());
        let overlay = project.overlay_dir();
        assert_eq!(
            project.overlay_layers(&loaded),
            [
                "common",
                "base",
                "bare-metal",
                "hypervisor",
                "rack7-hv",
                "vms"
            ]
            .map(|name| overlay.join(name))
        );
        let test_build = loaded.for_test_build();
        let layers = project.overlay_layers(&test_build);
        assert_eq!(
            layers[layers.len() - 2..],
            ["vms", "test-build"].map(|name| overlay.join(name)),
            "the test layer comes last"
        );
    }
}
