//! The test build: the production image with the test channel on top, for
//! `applbuild boot --check` and the acceptance suite (docs/security.md).
//!
//! A production image has no way in for a test: no guest agent and no root
//! shell on the console. `applbuild build --test` writes, beside the image,
//! `test/`: the same kernel, and an `initrd.img` that is the image's own
//! `initrd.img` byte for byte followed by one more compressed cpio segment,
//! the test channel (the kernel unpacks concatenated archives in order, so
//! the segment's files win). The segment holds what the test build's tree
//! adds to the image's or holds differently: the guest agent's packages, its
//! init entries and the console of `rootfs-overlay/test-build/`.
//! `test/test-build.json` names the image's digests and the segment's paths,
//! so that a test report can prove that it tested the production bytes plus
//! exactly this segment. A profile with `[image.uefi]` also gets
//! `test/<profile>.img`, whose UKI carries that initramfs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pipeline::{
    self, Assembled, BuildError, BuildOptions, Project, Resolved, StepSeconds, output_error,
};
use crate::profile::{self, LoadedProfile};
use applbuild_image::initramfs::{self, SegmentPlan};
use applbuild_image::manifest::{Artifact, MANIFEST_FILE as MANIFEST, Manifest, ManifestPackage};
use applbuild_secrets::Store;

/// The packages the test channel needs, resolved with the image's.
pub const PACKAGES: &[&str] = &["qemu-guest-agent"];

/// The overlay layer a test build applies last.
pub const OVERLAY_LAYER: &str = "test-build";

/// The test build's folder in the image folder.
pub const DIR: &str = "test";

/// The description of the test build in [`DIR`].
pub const MANIFEST_FILE: &str = "test-build.json";

/// The test channel's segment in [`DIR`].
pub const SEGMENT_FILE: &str = "test-channel.cpio.zst";

/// What a test build adds to the image, and the image's own digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestBuildManifest {
    /// The production image's `initrd.img`: the test build's starts with it.
    pub image_initrd: Artifact,
    /// The production image's kernel, which the test build boots unchanged.
    pub image_kernel: Artifact,
    /// The production image's UEFI disk, for a profile with `[image.uefi]`.
    pub image_disk: Option<Artifact>,
    /// The test channel's segment, appended to the image's `initrd.img`.
    pub segment: Artifact,
    /// Paths the segment adds to the image's tree.
    pub added: Vec<String>,
    /// Paths of the image's tree that the segment holds differently.
    pub replaced: Vec<String>,
    /// Packages only the test build installs.
    pub packages: Vec<ManifestPackage>,
}

impl TestBuildManifest {
    /// Reads `<image_dir>/test/test-build.json`; `None` when absent or unreadable.
    pub fn read(image_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(image_dir.join(DIR).join(MANIFEST_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The production image, as [`write`] adds a test build to it.
pub(crate) struct Image<'a> {
    /// Its staging folder, which already holds `initrd.img` and `vmlinuz`.
    pub(crate) dir: &'a Path,
    /// Its assembled tree and kernel.
    pub(crate) assembled: &'a Assembled,
    /// Its artifacts as written so far.
    pub(crate) artifacts: &'a [Artifact],
    /// The secrets it was built with.
    pub(crate) secrets: &'a Store,
}

/// Writes the test build into `<image.dir>/test/` and returns its artifacts
/// (named `test/...`) and its manifest.
pub(crate) fn write(
    project: &Project,
    loaded: &LoadedProfile,
    resolved: &Resolved,
    image: &Image,
    options: &BuildOptions,
    signing: Option<&profile::SecureBootKeys>,
) -> Result<(Vec<Artifact>, TestBuildManifest), BuildError> {
    let test_loaded = loaded.for_test_build();
    let mut seconds = StepSeconds::default();
    let unpacked = pipeline::unpack(
        resolved,
        &resolved.records,
        &test_loaded,
        options,
        &mut seconds,
    )?;
    let assembled = pipeline::assemble(
        project,
        &test_loaded,
        image.secrets,
        unpacked.tree,
        &mut seconds,
    )?;
    let changes = assembled.tree.changes_from(&image.assembled.tree);
    if !changes.removed.is_empty() {
        return Err(BuildError::TestBuildRemoves(changes.removed));
    }
    let dir = image.dir.join(DIR);
    std::fs::create_dir_all(&dir).map_err(output_error(&dir))?;
    let segment_tree = assembled.tree.extract(
        changes
            .added
            .iter()
            .chain(&changes.replaced)
            .map(String::as_str),
    );
    let segment_path = dir.join(SEGMENT_FILE);
    let segment = initramfs::write_initramfs(
        &segment_tree,
        &SegmentPlan::single("test-channel"),
        resolved.cache.root(),
        loaded.profile.image.compression_level,
        &segment_path,
        &options.reporter,
    )?;
    let segment = Artifact {
        file: SEGMENT_FILE.into(),
        size: segment.total_bytes,
        sha256: segment.sha256,
    };
    let mut artifacts = write_boot_files(image, &dir, &segment)?;
    artifacts.extend(pipeline::write_uefi_artifacts(
        &dir, loaded, &assembled, signing,
    )?);
    let manifest = TestBuildManifest {
        image_initrd: image_artifact(image, "initrd.img"),
        image_kernel: image_artifact(image, "vmlinuz"),
        image_disk: image
            .artifacts
            .iter()
            .find(|artifact| artifact.file == format!("{}.img", loaded.name))
            .cloned(),
        segment,
        added: changes.added,
        replaced: changes.replaced,
        packages: test_packages(resolved),
    };
    artifacts.push(write_manifest(&dir, &manifest)?);
    let artifacts = artifacts
        .into_iter()
        .map(|artifact| Artifact {
            file: format!("{DIR}/{}", artifact.file),
            ..artifact
        })
        .collect();
    Ok((artifacts, manifest))
}

/// `initrd.img` (the image's followed by the segment) and `vmlinuz` (the
/// image's) in `dir`, with the segment itself.
fn write_boot_files(
    image: &Image,
    dir: &Path,
    segment: &Artifact,
) -> Result<Vec<Artifact>, BuildError> {
    let initrd = dir.join("initrd.img");
    let (size, sha256) = initramfs::concatenate(
        &[image.dir.join("initrd.img"), dir.join(&segment.file)],
        &initrd,
    )?;
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, &image.assembled.kernel).map_err(output_error(&kernel))?;
    Ok(vec![
        Artifact {
            file: "initrd.img".into(),
            size,
            sha256,
        },
        image_artifact(image, "vmlinuz"),
        segment.clone(),
    ])
}

/// The image's artifact `file`, which the image always has.
fn image_artifact(image: &Image, file: &str) -> Artifact {
    image
        .artifacts
        .iter()
        .find(|artifact| artifact.file == file)
        .cloned()
        .unwrap_or_else(|| panic!("the image's {file} is written before its test build"))
}

/// The packages only the test build installs, as the manifest lists them.
fn test_packages(resolved: &Resolved) -> Vec<ManifestPackage> {
    resolved
        .records
        .iter()
        .filter(|record| resolved.test_only.contains(&record.name))
        .map(pipeline::manifest_package)
        .collect()
}

/// Writes `dir/test-build.json` and returns it as an artifact.
fn write_manifest(dir: &Path, manifest: &TestBuildManifest) -> Result<Artifact, BuildError> {
    let json = serde_json::to_vec_pretty(manifest).expect("the test build manifest serializes");
    let path = dir.join(MANIFEST_FILE);
    std::fs::write(&path, &json).map_err(output_error(&path))?;
    Ok(Artifact {
        file: MANIFEST_FILE.into(),
        size: json.len() as u64,
        sha256: hex::encode(Sha256::digest(&json)),
    })
}

/// Why a test build is not its image plus the test channel.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file of the image or its test build cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The image folder has no (readable) manifest or test build manifest.
    #[error("{0} is missing or unreadable: build with --test")]
    NoManifest(PathBuf),
    /// A part of the test build differs from what it must equal.
    #[error("{what}: expected SHA256 {expected}, found {found}")]
    Differs {
        /// Which part.
        what: String,
        /// The digest it must have.
        expected: String,
        /// The digest it has.
        found: String,
    },
}

/// Checks that `<image_dir>/test/` is the image of `<image_dir>` plus the
/// test channel: its kernel is the image's, its `initrd.img` is the
/// image's `initrd.img` (as the image's manifest records it) followed by
/// the segment its manifest names. Returns that manifest.
pub fn verify(image_dir: &Path) -> Result<TestBuildManifest, VerifyError> {
    let image = Manifest::read(image_dir)
        .ok_or_else(|| VerifyError::NoManifest(image_dir.join(MANIFEST)))?;
    let test = TestBuildManifest::read(image_dir)
        .ok_or_else(|| VerifyError::NoManifest(image_dir.join(DIR).join(MANIFEST_FILE)))?;
    let recorded = |file: &str| {
        image
            .artifacts
            .iter()
            .find(|artifact| artifact.file == file)
            .map_or_else(String::new, |artifact| artifact.sha256.clone())
    };
    let dir = image_dir.join(DIR);
    let initrd = read(&dir.join("initrd.img"))?;
    let split = usize::try_from(test.image_initrd.size)
        .unwrap_or(usize::MAX)
        .min(initrd.len());
    let (image_part, segment_part) = initrd.split_at(split);
    same(
        "test/initrd.img up to the segment",
        &recorded("initrd.img"),
        image_part,
    )?;
    same(
        "test/initrd.img from the segment on",
        &test.segment.sha256,
        segment_part,
    )?;
    same(
        "test/vmlinuz",
        &recorded("vmlinuz"),
        &read(&dir.join("vmlinuz"))?,
    )?;
    Ok(test)
}

fn read(path: &Path) -> Result<Vec<u8>, VerifyError> {
    std::fs::read(path).map_err(|source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `Ok` when `bytes` hash to `expected`.
fn same(what: &str, expected: &str, bytes: &[u8]) -> Result<(), VerifyError> {
    let found = hex::encode(Sha256::digest(bytes));
    if found == expected {
        return Ok(());
    }
    Err(VerifyError::Differs {
        what: what.into(),
        expected: expected.into(),
        found,
    })
}
