//! `applbuild update`: re-resolves profiles against the mirrors, ignoring
//! the lock file (so every package gets the highest version of all
//! suites, as apt would choose), rewrites `applbuild.lock` and says what
//! moved, like `cargo update`.

use serde::Serialize;

use crate::pipeline::{
    self, BuildError, BuildOptions, LockUse, Project, StepSeconds, SuiteOverrides,
};
use crate::profile;

/// One package whose lock entry changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageUpdate {
    /// Package name.
    pub name: String,
    /// The locked version; `None` for a newly required package.
    pub old: Option<String>,
    /// The new version; `None` for a package no longer required.
    pub new: Option<String>,
    /// The suite of the new version (of the old one when removed).
    pub suite: String,
}

/// What `applbuild update` did for one profile.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    /// Profile.
    pub profile: String,
    /// Changed packages, sorted by name.
    pub changes: Vec<PackageUpdate>,
    /// Whether `applbuild.lock` was rewritten (not with `--dry-run`).
    pub written: bool,
}

/// Re-resolves `name` and, unless `dry_run`, records the result in the
/// lock file. A locked version now served with other bytes is an error.
pub fn update(
    project: &Project,
    name: &str,
    options: &BuildOptions,
    overrides: &SuiteOverrides,
    dry_run: bool,
) -> Result<UpdateReport, BuildError> {
    let loaded = profile::load(&project.profiles_dir(), name)?;
    let mut seconds = StepSeconds::default();
    let resolved = pipeline::resolve_packages(
        project,
        &loaded,
        options,
        overrides,
        LockUse::Ignore,
        &mut seconds,
    )?;
    let locked = resolved
        .lock
        .as_ref()
        .and_then(|lock| lock.profile(name))
        .unwrap_or_default();
    pipeline::check_locked_hashes(&locked, &resolved.records)?;

    let mut changes: Vec<PackageUpdate> = locked
        .iter()
        .filter(|(package, _)| !resolved.records.iter().any(|r| &r.name == *package))
        .map(|(package, old)| PackageUpdate {
            name: package.clone(),
            old: Some(old.version.to_string()),
            new: None,
            suite: old.suite.clone(),
        })
        .collect();
    for record in &resolved.records {
        let old = locked.get(&record.name);
        if old.is_some_and(|old| old.version == record.version) {
            continue;
        }
        changes.push(PackageUpdate {
            name: record.name.clone(),
            old: old.map(|old| old.version.to_string()),
            new: Some(record.version.to_string()),
            suite: record.suite.clone(),
        });
    }
    changes.sort_by(|a, b| a.name.cmp(&b.name));
    if !dry_run {
        pipeline::update_lock(project, name, &resolved)?;
    }
    Ok(UpdateReport {
        profile: name.to_string(),
        changes,
        written: !dry_run,
    })
}

impl std::fmt::Display for PackageUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |version: &Option<String>| version.clone().unwrap_or_else(|| "(none)".into());
        write!(
            f,
            "{} {} -> {} ({})",
            self.name,
            show(&self.old),
            show(&self.new),
            if self.suite.is_empty() {
                "?"
            } else {
                &self.suite
            }
        )
    }
}
