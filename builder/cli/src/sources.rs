//! `applbuild sources`: the Debian source packages of every binary package
//! of a profile's image, which shipping its GPL and LGPL code obliges one to
//! offer. The package set is the build's (the same resolve step, following
//! `applbuild.lock`); each suite's `Sources` index and every file of every
//! source package are verified (`applbuild_repo::sources`) and kept in the
//! download cache, then copied into `out/<profile>/sources/` with
//! `SHA256SUMS` and `sources.txt`. The folder is replaced only when
//! complete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::pipeline::{
    self, BuildError, BuildOptions, LockUse, Project, StepSeconds, SuiteOverrides, output_error,
};
use crate::profile;
use applbuild_deb::installed_set::source_package;
use applbuild_deb::package_index::PackageRecord;
use applbuild_repo::repository::Repository;
use applbuild_repo::sources::{
    SourceFile, SourceIndex, SourcePackage, download_sources, fetch_source_index,
};

/// The folder below `out/<profile>/` that receives the source packages.
pub const SOURCES_DIR: &str = "sources";

/// The file of `SOURCES_DIR` naming each source package, its suite and its
/// binary packages.
pub const SOURCES_LIST: &str = "sources.txt";

/// One source package of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceReport {
    /// Source package name.
    pub name: String,
    /// Its version, with epoch.
    pub version: String,
    /// The suite whose `Sources` index listed it.
    pub suite: String,
    /// The image's binary packages built from it, sorted.
    pub binaries: Vec<String>,
    /// Its `.dsc` and the files the `.dsc` lists.
    pub files: Vec<SourceFile>,
}

/// What `applbuild sources` did for one profile.
#[derive(Debug, Clone, Serialize)]
pub struct SourcesReport {
    /// Profile.
    pub profile: String,
    /// The folder written, `out/<profile>/sources/`.
    pub out_dir: PathBuf,
    /// The source packages, sorted by name and version.
    pub sources: Vec<SourceReport>,
    /// Files written (each once, also when two source packages share one).
    pub files: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Files that were not in the download cache yet.
    pub downloaded: usize,
    /// How the package set differs from `applbuild.lock` (not written;
    /// `applbuild build` records it).
    pub lock_changes: Vec<String>,
}

/// A source package the image needs: the binary packages built from it and
/// their suites.
#[derive(Default)]
struct Wanted {
    binaries: BTreeSet<String>,
    suites: BTreeSet<String>,
}

/// A needed source package and the repository (by position) whose index lists it.
struct Chosen<'i> {
    package: &'i SourcePackage,
    repository: usize,
    binaries: Vec<String>,
}

/// Downloads, verified, the source packages of profile `name`'s image into
/// `options.out_dir/<name>/sources/`, with `SHA256SUMS` and `sources.txt`.
/// A source package in no suite's index, or a file failing its check, is
/// an error naming it; the previous folder then stays as it was.
pub fn fetch_sources(
    project: &Project,
    name: &str,
    options: &BuildOptions,
    overrides: &SuiteOverrides,
) -> Result<SourcesReport, BuildError> {
    let loaded = profile::load(&project.profiles_dir(), name)?;
    let resolved = pipeline::resolve_packages(
        project,
        &loaded,
        options,
        overrides,
        LockUse::Follow,
        &mut StepSeconds::default(),
    )?;
    let repositories = &resolved.repositories;
    let indexes = repositories
        .iter()
        .map(|repository| fetch_source_index(repository, &resolved.cache, &options.reporter))
        .collect::<Result<Vec<_>, _>>()?;
    let chosen = choose(
        repositories,
        &indexes,
        wanted_sources(&resolved.image_records()),
    )?;
    let files = distinct_files(&chosen)?;
    let downloaded = files
        .values()
        .filter(|file| resolved.cache.get(&file.sha256).is_none())
        .count();

    let image_dir = options.out_dir.join(name);
    let staging = pipeline::staging_dir(&image_dir, SOURCES_DIR)?;
    for (number, repository) in repositories.iter().enumerate() {
        let wanted: Vec<(String, String)> = chosen
            .iter()
            .filter(|source| source.repository == number)
            .map(|source| (source.package.name.clone(), source.package.version.clone()))
            .collect();
        if !wanted.is_empty() {
            download_sources(
                repository,
                &resolved.cache,
                &indexes[number],
                &wanted,
                staging.path(),
                &options.reporter,
            )?;
        }
    }
    let sources = reports(repositories, &chosen);
    write_lists(staging.path(), &files, &sources)?;
    let out_dir = image_dir.join(SOURCES_DIR);
    pipeline::replace_dir(staging, &out_dir)?;
    Ok(SourcesReport {
        profile: name.to_string(),
        out_dir,
        files: files.len(),
        bytes: files.values().map(|file| file.size).sum(),
        downloaded,
        sources,
        lock_changes: resolved.lock_changes,
    })
}

/// The source packages of `records` by name and version (from the
/// `Source` field, with its own version for a binNMU).
fn wanted_sources(records: &[PackageRecord]) -> BTreeMap<(String, String), Wanted> {
    let mut wanted: BTreeMap<(String, String), Wanted> = BTreeMap::new();
    for record in records {
        let entry = wanted.entry(source_package(record)).or_default();
        entry.binaries.insert(record.name.clone());
        entry.suites.insert(record.suite.clone());
    }
    wanted
}

/// For each wanted source package, the index that lists it: the suites
/// its binary packages came from first, then the others in priority order.
fn choose<'i>(
    repositories: &[Repository],
    indexes: &'i [SourceIndex],
    wanted: BTreeMap<(String, String), Wanted>,
) -> Result<Vec<Chosen<'i>>, BuildError> {
    let mut chosen = Vec::new();
    for ((name, version), need) in wanted {
        let mut order: Vec<usize> = (0..repositories.len()).collect();
        order.sort_by_key(|&number| !need.suites.contains(repositories[number].suite()));
        let found = order.into_iter().find_map(|number| {
            indexes[number]
                .get(&name, &version)
                .map(|package| (number, package))
        });
        let binaries: Vec<String> = need.binaries.into_iter().collect();
        let Some((repository, package)) = found else {
            return Err(BuildError::SourceNotInIndex {
                name,
                version,
                binaries: binaries.join(", "),
                suites: repositories
                    .iter()
                    .map(Repository::suite)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        chosen.push(Chosen {
            package,
            repository,
            binaries,
        });
    }
    Ok(chosen)
}

/// Every file of the chosen source packages by name, each once; one name
/// with two different hashes is an error (one would overwrite the other).
fn distinct_files(chosen: &[Chosen<'_>]) -> Result<BTreeMap<String, SourceFile>, BuildError> {
    let mut files: BTreeMap<String, (SourceFile, String)> = BTreeMap::new();
    for source in chosen {
        let package = source.package;
        let owner = format!("{} {}", package.name, package.version);
        for file in &package.files {
            match files.get(&file.name) {
                Some((known, _)) if known == file => {}
                Some((_, first)) => {
                    return Err(BuildError::SourceFileConflict {
                        file: file.name.clone(),
                        first: first.clone(),
                        second: owner,
                    });
                }
                None => {
                    files.insert(file.name.clone(), (file.clone(), owner.clone()));
                }
            }
        }
    }
    Ok(files
        .into_iter()
        .map(|(name, (file, _))| (name, file))
        .collect())
}

/// The report entry of each chosen source package.
fn reports(repositories: &[Repository], chosen: &[Chosen<'_>]) -> Vec<SourceReport> {
    chosen
        .iter()
        .map(|source| SourceReport {
            name: source.package.name.clone(),
            version: source.package.version.clone(),
            suite: repositories[source.repository].suite().to_string(),
            binaries: source.binaries.clone(),
            files: source.package.files.clone(),
        })
        .collect()
}

/// Writes `SHA256SUMS` (for `sha256sum -c`) and `sources.txt` into `dir`.
fn write_lists(
    dir: &Path,
    files: &BTreeMap<String, SourceFile>,
    sources: &[SourceReport],
) -> Result<(), BuildError> {
    let sums: String = files
        .values()
        .map(|file| format!("{}  {}\n", file.sha256, file.name))
        .collect();
    let mut list = String::from("# source package, version, suite: the image's binary packages\n");
    for source in sources {
        list.push_str(&format!(
            "{} {} {}: {}\n",
            source.name,
            source.version,
            source.suite,
            source.binaries.join(" ")
        ));
    }
    for (name, text) in [("SHA256SUMS", sums), (SOURCES_LIST, list)] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(output_error(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source package whose files are `(name, hash digit)`.
    fn package(name: &str, version: &str, files: &[(&str, char)]) -> SourcePackage {
        SourcePackage {
            name: name.into(),
            version: version.into(),
            directory: format!("pool/main/b/{name}"),
            files: files
                .iter()
                .map(|(file, digit)| SourceFile {
                    name: (*file).into(),
                    sha256: digit.to_string().repeat(64),
                    size: 1,
                })
                .collect(),
        }
    }

    fn chosen(package: &SourcePackage) -> Chosen<'_> {
        Chosen {
            package,
            repository: 0,
            binaries: vec![package.name.clone()],
        }
    }

    #[test]
    fn a_shared_file_is_listed_once_and_a_conflicting_one_refused() {
        let orig = ("busybox_1.35.0.orig.tar.xz", 'a');
        let old = package(
            "busybox",
            "1:1.35.0-4",
            &[("busybox_1.35.0-4.dsc", 'b'), orig],
        );
        let new = package(
            "busybox",
            "1:1.35.0-5",
            &[("busybox_1.35.0-5.dsc", 'c'), orig],
        );
        let files = distinct_files(&[chosen(&old), chosen(&new)]).unwrap();
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            [
                "busybox_1.35.0-4.dsc",
                "busybox_1.35.0-5.dsc",
                "busybox_1.35.0.orig.tar.xz"
            ]
        );

        let other = package(
            "busybox",
            "1:1.35.0-6",
            &[("busybox_1.35.0.orig.tar.xz", 'd')],
        );
        let error = distinct_files(&[chosen(&old), chosen(&other)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "source file busybox_1.35.0.orig.tar.xz of busybox 1:1.35.0-6 differs from the file of that name of busybox 1:1.35.0-4"
        );
    }
}
