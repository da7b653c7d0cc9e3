//! `applbuild secrets init`: one secrets store per cluster holding every
//! secret the project's profiles name, existing values kept, missing ones
//! random. Reports name files and secrets, never values.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::pipeline::{BuildError, Project};
use crate::profile;
use applbuild_secrets::Store;

/// One secrets file after `init`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreReport {
    /// The file.
    pub file: PathBuf,
    /// The clusters whose profiles read it.
    pub clusters: Vec<String>,
    /// Every secret name the profiles refer to, sorted.
    pub names: Vec<String>,
    /// The names that got a new random value.
    pub added: Vec<String>,
}

/// Creates or extends the store of each cluster of the project's profiles
/// (`file`: one file for all of them) with every secret name they refer
/// to. Existing values stay, unless `fresh`: then every value is new.
pub fn init(
    project: &Project,
    file: Option<&Path>,
    fresh: bool,
) -> Result<Vec<StoreReport>, BuildError> {
    let dir = project.profiles_dir();
    let mut stores: BTreeMap<PathBuf, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for name in profile::list(&dir)? {
        let loaded = profile::load(&dir, &name)?;
        let names = loaded.profile.secret_names();
        if names.is_empty() {
            continue;
        }
        let cluster = loaded.profile.cluster();
        let path = match file {
            Some(file) => file.to_path_buf(),
            None => applbuild_secrets::default_path(cluster)?,
        };
        let (clusters, all) = stores.entry(path).or_default();
        clusters.insert(cluster.to_string());
        all.extend(names.into_iter().map(String::from));
    }
    let mut reports = Vec::new();
    for (path, (clusters, names)) in stores {
        let mut store = if fresh {
            Store::empty(&path)
        } else {
            Store::open(&path)?
        };
        let added = store.add_missing(names.iter().map(String::as_str));
        if !added.is_empty() || !store.exists() {
            store.save()?;
        }
        reports.push(StoreReport {
            file: path,
            clusters: clusters.into_iter().collect(),
            names: names.into_iter().collect(),
            added,
        });
    }
    Ok(reports)
}

/// The text `applbuild secrets init` prints for `report`.
pub fn describe(report: &StoreReport) -> String {
    let mut text = format!(
        "{} (cluster {})\n",
        report.file.display(),
        report.clusters.join(", ")
    );
    for name in &report.names {
        let state = if report.added.contains(name) {
            "new random value"
        } else {
            "kept"
        };
        text.push_str(&format!("  {name:<24} {state}\n"));
    }
    text
}
