//! The images under test: built (or rebuilt when their inputs changed) with
//! the same pipeline as `applbuild build`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use applbuild::pipeline::{self, BuildOptions, Project};
use applbuild::profile;
use applbuild_progress::Reporter;

/// Makes sure `images/<profile>` is an up-to-date image of each profile,
/// with its test build (`images/<profile>/test/`) when `test_build`, built
/// with the secrets of `secrets` (else each cluster's store).
pub fn ensure_built(
    project: &Project,
    images: &Path,
    profiles: &[&str],
    test_build: bool,
    secrets: Option<&Path>,
) -> Result<()> {
    let options = BuildOptions {
        out_dir: images.to_path_buf(),
        cache_dir: pipeline::default_cache_dir(),
        mirror: None,
        keyring: None,
        locked: false,
        offline: false,
        reporter: Reporter::for_terminal(),
        apt_root: PathBuf::from("/"),
        secure_boot: None,
        test_build,
        secrets: secrets.map(Path::to_path_buf),
    };
    for name in profiles {
        let loaded = profile::load(&project.profiles_dir(), name)?;
        let store = pipeline::secrets_store(&loaded, &options)?;
        if pipeline::is_up_to_date(project, &loaded, &store, &images.join(name), test_build) {
            continue;
        }
        eprintln!(
            "applbuild-test: {name}: image missing or stale in {}, building",
            images.display()
        );
        let report = pipeline::build(project, name, &options)
            .with_context(|| format!("building profile `{name}`"))?;
        eprintln!(
            "applbuild-test: {name}: built in {:.1} s",
            report.seconds.total
        );
    }
    Ok(())
}
