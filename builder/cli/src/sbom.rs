//! The image's bill of materials: turns what the build stages produced (the
//! resolved packages, the assembled tree with its copyright files, the
//! written artifacts) into the input of `applbuild_image::sbom` and writes
//! `sbom.spdx.json`, `sbom.cdx.json` and `licenses.csv` beside the image.

use std::path::Path;

use applbuild_deb::installed_set::{dependency_edges, source_package};
use applbuild_deb::package_index::PackageRecord;
use applbuild_image::initramfs::MTIME;
use applbuild_image::manifest::{Artifact, sha256_file};
use applbuild_image::sbom::{self, SbomArtifact, SbomError, SbomInput, SbomPackage};
use applbuild_rootfs::copyright::read_copyright;
use applbuild_rootfs::rootfs::RootfsTree;

/// The purl `distro` qualifier of a Debian suite (`bookworm-security` is
/// `debian-12`); a codename this table does not know is kept as it is.
fn distro(suite: &str) -> String {
    let codename = suite.split('-').next().unwrap_or(suite);
    match codename {
        "bookworm" => "debian-12".into(),
        "trixie" => "debian-13".into(),
        other => format!("debian-{other}"),
    }
}

/// One SBOM component per resolved package, with the dependency edges the
/// resolution satisfied and the licence read from the assembled tree.
pub fn packages(records: &[PackageRecord], tree: &RootfsTree) -> Vec<SbomPackage> {
    let mut edges = dependency_edges(records);
    records
        .iter()
        .map(|record| {
            let (source_name, source_version) = source_package(record);
            SbomPackage {
                name: record.name.clone(),
                version: record.version.to_string(),
                architecture: record.architecture.clone(),
                deb_sha256: record.sha256.clone(),
                source_name,
                source_version,
                depends_on: edges.remove(&record.name).unwrap_or_default(),
                copyright: read_copyright(tree, &record.name),
            }
        })
        .collect()
}

/// What each image file was made from: `vmlinuz` from the kernel package,
/// the initramfs from every package, `disk.img` from the other two.
fn artifact_origins(
    artifacts: &[Artifact],
    packages: &[SbomPackage],
    kernel_package: Option<&str>,
) -> Vec<SbomArtifact> {
    artifacts
        .iter()
        .map(|artifact| SbomArtifact {
            file: artifact.file.clone(),
            sha256: artifact.sha256.clone(),
            generated_from: match artifact.file.as_str() {
                "vmlinuz" => kernel_package.into_iter().map(str::to_owned).collect(),
                "initrd.img" => packages.iter().map(|p| p.name.clone()).collect(),
                _ => vec!["vmlinuz".into(), "initrd.img".into()],
            },
        })
        .collect()
}

/// Writes the three files into `dir` and returns them as artifacts for the
/// manifest. The creation time is `SOURCE_DATE_EPOCH` when set, else the
/// mtime every file of the image carries, so two builds give the same bytes.
pub fn write(
    dir: &Path,
    profile: &str,
    suite: &str,
    packages: Vec<SbomPackage>,
    artifacts: &[Artifact],
    kernel_package: Option<&str>,
) -> Result<Vec<Artifact>, SbomError> {
    let input = SbomInput {
        profile: profile.into(),
        distro: distro(suite),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created: sbom::source_date_epoch().unwrap_or(i64::from(MTIME)),
        artifacts: artifact_origins(artifacts, &packages, kernel_package),
        packages,
    };
    sbom::write_sbom(&input, dir)?
        .iter()
        .map(|path| {
            let write_error = |source| SbomError::Write {
                path: path.clone(),
                source,
            };
            Ok(Artifact {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                size: std::fs::metadata(path).map_err(write_error)?.len(),
                sha256: sha256_file(path).map_err(write_error)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_map_to_debian_releases() {
        assert_eq!(distro("bookworm"), "debian-12");
        assert_eq!(distro("bookworm-security"), "debian-12");
        assert_eq!(distro("sid"), "debian-sid");
    }

    #[test]
    fn each_artifact_names_what_it_was_made_from() {
        let artifact = |file: &str| Artifact {
            file: file.into(),
            size: 1,
            sha256: "00".repeat(32),
        };
        let package = |name: &str| SbomPackage {
            name: name.into(),
            version: "1".into(),
            architecture: "amd64".into(),
            deb_sha256: "11".repeat(32),
            source_name: name.into(),
            source_version: "1".into(),
            depends_on: vec![],
            copyright: read_copyright(&RootfsTree::new(), name),
        };
        let origins = artifact_origins(
            &[
                artifact("disk.img"),
                artifact("initrd.img"),
                artifact("vmlinuz"),
            ],
            &[package("busybox"), package("linux-image-6.1.0-1-amd64")],
            Some("linux-image-6.1.0-1-amd64"),
        );
        let from: Vec<Vec<String>> = origins.into_iter().map(|a| a.generated_from).collect();
        assert_eq!(from[0], ["vmlinuz", "initrd.img"]);
        assert_eq!(from[1], ["busybox", "linux-image-6.1.0-1-amd64"]);
        assert_eq!(from[2], ["linux-image-6.1.0-1-amd64"]);
    }
}
