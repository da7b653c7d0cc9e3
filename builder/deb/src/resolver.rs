//! Chooses the exact package set of an image: the closure of its roots over
//! `Depends` and `Pre-Depends`, one version per package, stable against the
//! lockfile.
//!
//! The resolver is greedy, like apt's: each relation is settled when it is
//! first met, in breadth-first order from the roots. When a later constraint
//! rules out a version already chosen, that package moves to a version that
//! fits everything still in force; constraints imposed by versions no longer
//! chosen stop counting, and a final walk from the roots keeps only the
//! packages still needed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use crate::package_index::{PackageIndex, PackageRecord};
use crate::relation::{Dependency, Relation, RelationError, parse_relations};
use crate::version::DebVersion;

/// One package as recorded in `applbuild.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedPackage {
    /// The version resolved last time.
    pub version: DebVersion,
    /// SHA-256 of that version's `.deb`, to notice an archive that changed
    /// a package without changing its version.
    pub sha256: String,
    /// The suite it came from (e.g. `bookworm-security`); empty in a lock
    /// written before suites were recorded.
    pub suite: String,
}

/// What to resolve.
#[derive(Debug, Clone, Default)]
pub struct ResolveRequest {
    /// Everything the image needs; dependencies are added, essential
    /// packages are not. Each entry is a package name, optionally in
    /// `Depends` syntax (`foo (>= 1.2)`, `a | b`).
    pub roots: Vec<String>,
    /// Names chosen first where a relation offers alternatives or a virtual
    /// name has several providers (e.g. `usr-is-merged` over `usrmerge`,
    /// which would pull in perl).
    pub prefer: Vec<String>,
    /// Names treated as already provided by the image by other means (say, a
    /// busybox applet or a hand-written file): a dependency naming one of
    /// them, or a virtual name one of them provides in the index, counts as
    /// satisfied, and they are never installed. Listing a root here is an
    /// error.
    pub exclude: Vec<String>,
    /// The profile's previous resolution: a locked version still in the index
    /// and still satisfying wins over newer ones, and locked names win among
    /// alternatives, so re-resolving only changes what has to change.
    pub locked: BTreeMap<String, LockedPackage>,
}

/// The chosen packages and how they differ from the lock.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// One record per package, sorted by name.
    pub packages: Vec<PackageRecord>,
    /// Differences from `ResolveRequest::locked`, sorted by name; empty when
    /// the lock is reproduced exactly (with no lock, every package is `Added`).
    pub lock_changes: Vec<LockChange>,
}

/// One difference between the lock and the new resolution.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockChange {
    /// Package name.
    pub name: String,
    /// The locked version (`None` for a package the lock does not have).
    pub locked: Option<DebVersion>,
    /// The resolved version (`None` for a package no longer needed).
    pub resolved: Option<DebVersion>,
    /// Why it differs.
    pub reason: LockChangeReason,
}

/// Why a resolution differs from its lock for one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LockChangeReason {
    /// Needed now but not in the lock.
    Added,
    /// In the lock but no longer needed.
    Removed,
    /// The archive no longer carries the locked version.
    VersionGone,
    /// The locked version is still there but no longer satisfies the dependencies.
    Unsatisfied,
    /// Same version, different `.deb`: the archive changed the package in place.
    Sha256Changed,
}

impl fmt::Display for LockChangeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockChangeReason::Added => "newly required",
            LockChangeReason::Removed => "no longer required",
            LockChangeReason::VersionGone => "the locked version is no longer in the archive",
            LockChangeReason::Unsatisfied => {
                "the locked version no longer satisfies the dependencies"
            }
            LockChangeReason::Sha256Changed => {
                "the archive's .deb for the locked version has another SHA-256"
            }
        })
    }
}

impl fmt::Display for LockChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show =
            |v: &Option<DebVersion>| v.as_ref().map_or("(none)".to_owned(), ToString::to_string);
        write!(
            f,
            "{}: {} -> {} ({})",
            self.name,
            show(&self.locked),
            show(&self.resolved),
            self.reason
        )
    }
}

/// Why no package set could be chosen. `chain` runs from a root to the
/// package whose relation failed (empty when a root itself failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A root that is not a package name or relation.
    #[error("root {root:?} is not a valid package name or relation: {source}")]
    InvalidRoot {
        /// The root as given.
        root: String,
        /// Why it did not parse.
        source: RelationError,
    },
    /// A root that is also excluded: the request contradicts itself.
    #[error("root {root:?} is also listed in exclude")]
    ExcludedRoot {
        /// The root as given.
        root: String,
    },
    /// No alternative of a relation exists in the index under any name.
    #[error("{}: no package has that name and none provides it", path(.chain, .dependency))]
    Missing {
        /// Root to the package that needs `dependency`.
        chain: Vec<String>,
        /// The relation that failed.
        dependency: String,
    },
    /// Candidates exist but no version fits all constraints.
    #[error("{}: cannot be satisfied: {detail}", path(.chain, .dependency))]
    Unsatisfiable {
        /// Root to the package that needs `dependency`.
        chain: Vec<String>,
        /// The relation that failed.
        dependency: String,
        /// The versions and providers available and the other constraints in force.
        detail: String,
    },
}

fn path(chain: &[String], dependency: &str) -> String {
    let mut parts: Vec<&str> = chain.iter().map(String::as_str).collect();
    parts.push(dependency);
    parts.join(" -> ")
}

/// Resolves `request` against `index`; deterministic for a given index and
/// request.
pub fn resolve(index: &PackageIndex, request: &ResolveRequest) -> Result<Resolution, ResolveError> {
    let mut roots = Vec::new();
    for root in &request.roots {
        let relations = parse_relations(root).map_err(|source| ResolveError::InvalidRoot {
            root: root.clone(),
            source,
        })?;
        if relations
            .iter()
            .flat_map(|relation| &relation.alternatives)
            .any(|dependency| request.exclude.contains(&dependency.name))
        {
            return Err(ResolveError::ExcludedRoot { root: root.clone() });
        }
        roots.extend(relations);
    }

    let mut resolver = Resolver {
        index,
        locked: &request.locked,
        prefer: request.prefer.iter().map(String::as_str).collect(),
        exclude: request.exclude.iter().map(String::as_str).collect(),
        selected: BTreeMap::new(),
        constraints: BTreeMap::new(),
        queue: VecDeque::new(),
    };
    // All roots first, so that "an alternative that is a root" is simply an
    // alternative already selected.
    for root in &roots {
        resolver.satisfy(root, None)?;
    }
    while let Some(name) = resolver.queue.pop_front() {
        let record = resolver.selected[name].record;
        for relation in record.pre_depends.iter().chain(&record.depends) {
            resolver.satisfy(relation, Some(record))?;
        }
    }
    let packages = resolver.needed(&roots)?;
    let lock_changes = lock_changes(index, &request.locked, &packages);
    Ok(Resolution {
        packages: packages.into_iter().cloned().collect(),
        lock_changes,
    })
}

#[derive(Clone, Copy)]
struct Selected<'a> {
    record: &'a PackageRecord,
    /// The package whose relation selected this one first, for error chains.
    parent: Option<&'a str>,
}

/// A relation settled by some package, remembered so that a later version
/// change of that package keeps satisfying it.
struct Constraint<'a> {
    dependency: &'a Dependency,
    /// The record that imposed it; `None` for roots.
    from: Option<&'a PackageRecord>,
}

struct Resolver<'a> {
    index: &'a PackageIndex,
    locked: &'a BTreeMap<String, LockedPackage>,
    prefer: BTreeSet<&'a str>,
    exclude: BTreeSet<&'a str>,
    selected: BTreeMap<&'a str, Selected<'a>>,
    /// Per selected package name, every dependency it was chosen to satisfy.
    constraints: BTreeMap<&'a str, Vec<Constraint<'a>>>,
    queue: VecDeque<&'a str>,
}

impl<'a> Resolver<'a> {
    fn is_selected(&self, record: &PackageRecord) -> bool {
        self.selected
            .get(record.name.as_str())
            .is_some_and(|s| std::ptr::eq(s.record, record))
    }

    /// A constraint counts while the version that imposed it is still selected.
    fn is_live(&self, constraint: &Constraint<'a>) -> bool {
        constraint.from.is_none_or(|from| self.is_selected(from))
    }

    fn live_constraints(&self, name: &str) -> impl Iterator<Item = &Constraint<'a>> {
        self.constraints
            .get(name)
            .into_iter()
            .flatten()
            .filter(|c| self.is_live(c))
    }

    /// The version of `name` to use for `dependency`: the locked one if it
    /// fits, else the highest that satisfies `dependency` and every live
    /// constraint on `name`.
    fn best_version(&self, name: &str, dependency: &Dependency) -> Option<&'a PackageRecord> {
        let index: &'a PackageIndex = self.index;
        let versions = index.versions(name);
        let fits = |record: &&PackageRecord| {
            record.satisfies(dependency)
                && self
                    .live_constraints(name)
                    .all(|c| record.satisfies(c.dependency))
        };
        let locked = self
            .locked
            .get(name)
            .and_then(|locked| versions.iter().find(|r| r.version == locked.version));
        locked.filter(fits).or_else(|| versions.iter().find(fits))
    }

    /// The name of a selected package that satisfies `dependency`.
    fn selected_satisfier(&self, dependency: &Dependency) -> Option<&'a str> {
        if let Some(selected) = self.selected.get(dependency.name.as_str())
            && selected.record.satisfies(dependency)
        {
            return Some(selected.record.name.as_str());
        }
        let index: &'a PackageIndex = self.index;
        index
            .providers(&dependency.name)
            .into_iter()
            .find(|r| r.satisfies(dependency) && self.is_selected(r))
            .map(|r| r.name.as_str())
    }

    fn is_excluded(&self, dependency: &Dependency) -> bool {
        self.exclude.contains(dependency.name.as_str())
            || self
                .index
                .providers(&dependency.name)
                .into_iter()
                .any(|r| self.exclude.contains(r.name.as_str()) && r.satisfies(dependency))
    }

    /// What to install for `dependency` when nothing selected satisfies it:
    /// the real package if a version fits, else a provider chosen by
    /// preference, lock, then name.
    fn candidate(&self, dependency: &Dependency) -> Option<&'a PackageRecord> {
        if !self.selected.contains_key(dependency.name.as_str())
            && let Some(record) = self.best_version(&dependency.name, dependency)
        {
            return Some(record);
        }
        let index: &'a PackageIndex = self.index;
        let mut names = BTreeSet::new();
        let providers: Vec<&'a PackageRecord> = index
            .providers(&dependency.name)
            .into_iter()
            .filter(|r| r.name != dependency.name && !self.selected.contains_key(r.name.as_str()))
            .filter(|r| names.insert(r.name.as_str()))
            .filter_map(|r| self.best_version(&r.name, dependency))
            .collect();
        providers
            .iter()
            .find(|r| self.prefer.contains(r.name.as_str()))
            .or_else(|| providers.iter().find(|r| self.locked.contains_key(&r.name)))
            .or_else(|| providers.first())
            .copied()
    }

    fn constrain(
        &mut self,
        name: &'a str,
        dependency: &'a Dependency,
        from: Option<&'a PackageRecord>,
    ) {
        self.constraints
            .entry(name)
            .or_default()
            .push(Constraint { dependency, from });
    }

    fn satisfy(
        &mut self,
        relation: &'a Relation,
        from: Option<&'a PackageRecord>,
    ) -> Result<(), ResolveError> {
        let alternatives = &relation.alternatives;
        for dependency in alternatives {
            if let Some(name) = self.selected_satisfier(dependency) {
                self.constrain(name, dependency, from);
                return Ok(());
            }
        }
        if alternatives.iter().any(|d| self.is_excluded(d)) {
            return Ok(());
        }
        // An alternative already selected at a version that does not fit:
        // moving it is better than adding another package.
        for dependency in alternatives {
            if let Some(&selected) = self.selected.get(dependency.name.as_str())
                && let Some(record) = self.best_version(&dependency.name, dependency)
            {
                let name = selected.record.name.as_str();
                self.selected.insert(name, Selected { record, ..selected });
                self.constrain(name, dependency, from);
                self.queue.push_back(name);
                return Ok(());
            }
        }
        let candidates: Vec<(&'a Dependency, &'a PackageRecord)> = alternatives
            .iter()
            .filter_map(|d| self.candidate(d).map(|r| (d, r)))
            .collect();
        let named_in = |names: &dyn Fn(&str) -> bool| {
            candidates
                .iter()
                .find(|(d, r)| names(&d.name) || names(&r.name))
                .copied()
        };
        let choice = named_in(&|name| self.prefer.contains(name))
            .or_else(|| named_in(&|name| self.locked.contains_key(name)))
            .or_else(|| candidates.first().copied());
        let Some((dependency, record)) = choice else {
            return Err(self.failure(relation, from));
        };
        let name = record.name.as_str();
        self.selected.insert(
            name,
            Selected {
                record,
                parent: from.map(|f| f.name.as_str()),
            },
        );
        self.constrain(name, dependency, from);
        self.queue.push_back(name);
        Ok(())
    }

    fn chain(&self, from: Option<&PackageRecord>) -> Vec<String> {
        // Parents are always selected before their children and never
        // removed, so this walk ends at a root.
        let mut chain = Vec::new();
        let mut current = from.map(|r| r.name.as_str());
        while let Some(name) = current {
            chain.push(name.to_owned());
            current = self.selected.get(name).and_then(|s| s.parent);
        }
        chain.reverse();
        chain
    }

    fn failure(&self, relation: &Relation, from: Option<&PackageRecord>) -> ResolveError {
        let chain = self.chain(from);
        let dependency = relation.to_string();
        let known = relation.alternatives.iter().any(|d| {
            !self.index.versions(&d.name).is_empty() || !self.index.providers(&d.name).is_empty()
        });
        if !known {
            return ResolveError::Missing { chain, dependency };
        }
        let detail = relation
            .alternatives
            .iter()
            .map(|d| self.explain(d))
            .collect::<Vec<_>>()
            .join("; ");
        ResolveError::Unsatisfiable {
            chain,
            dependency,
            detail,
        }
    }

    /// Everything that bears on `dependency`, for an error message.
    fn explain(&self, dependency: &Dependency) -> String {
        let name = dependency.name.as_str();
        let versions = self.index.versions(name);
        let providers: Vec<String> = self
            .index
            .providers(name)
            .into_iter()
            .filter(|r| r.name != name)
            .map(|r| {
                let provided = r
                    .provides
                    .iter()
                    .find(|(p, _)| p == name)
                    .and_then(|(_, v)| v.as_ref());
                match provided {
                    Some(v) => format!("{} {} (as {name} {v})", r.name, r.version),
                    None => format!("{} {} (unversioned)", r.name, r.version),
                }
            })
            .collect();
        let mut parts = Vec::new();
        if versions.is_empty() && providers.is_empty() {
            parts.push(format!(
                "no package has the name {name} and none provides it"
            ));
        }
        if let Some(selected) = self.selected.get(name) {
            parts.push(format!(
                "{name} {} is already selected",
                selected.record.version
            ));
        }
        if !versions.is_empty() {
            let list: Vec<String> = versions.iter().map(|r| r.version.to_string()).collect();
            parts.push(format!("the index has {name} {}", list.join(", ")));
        }
        if !providers.is_empty() {
            parts.push(format!("it is provided by {}", providers.join(", ")));
        }
        let others: Vec<String> = self
            .live_constraints(name)
            .map(|c| match c.from {
                Some(from) => format!("{} needs {}", from.name, c.dependency),
                None => format!("root {}", c.dependency),
            })
            .collect();
        if !others.is_empty() {
            parts.push(format!("also required: {}", others.join(", ")));
        }
        format!("{dependency}: {}", parts.join(", "))
    }

    /// Walks from the roots over the selected packages and returns those still
    /// reachable, sorted by name: versions that moved can leave earlier
    /// choices unneeded. Also proves every relation of the result holds.
    fn needed(&self, roots: &[Relation]) -> Result<Vec<&'a PackageRecord>, ResolveError> {
        let mut keep: BTreeSet<&'a str> = BTreeSet::new();
        let mut pending: VecDeque<(&Relation, Option<&'a PackageRecord>)> =
            roots.iter().map(|relation| (relation, None)).collect();
        while let Some((relation, from)) = pending.pop_front() {
            let satisfiers: Vec<&'a str> = relation
                .alternatives
                .iter()
                .filter_map(|d| self.selected_satisfier(d))
                .collect();
            if satisfiers.iter().any(|name| keep.contains(name))
                || relation.alternatives.iter().any(|d| self.is_excluded(d))
            {
                continue;
            }
            let &name = satisfiers
                .first()
                .ok_or_else(|| self.failure(relation, from))?;
            keep.insert(name);
            let record = self.selected[name].record;
            pending.extend(
                record
                    .pre_depends
                    .iter()
                    .chain(&record.depends)
                    .map(|relation| (relation, Some(record))),
            );
        }
        Ok(keep
            .into_iter()
            .map(|name| self.selected[name].record)
            .collect())
    }
}

/// The part of a resolved set `packages` that `request`'s roots need: the
/// set resolved again with only these roots, every package locked at its
/// version in the set, so the same alternatives are chosen. A test build's
/// extra roots resolve together with the image's, and this takes the image's
/// own packages back out.
pub fn subset(
    packages: &[PackageRecord],
    request: &ResolveRequest,
) -> Result<Vec<PackageRecord>, ResolveError> {
    let index: PackageIndex = packages.iter().cloned().collect();
    let locked = packages
        .iter()
        .map(|record| {
            let package = LockedPackage {
                version: record.version.clone(),
                sha256: record.sha256.clone(),
                suite: record.suite.clone(),
            };
            (record.name.clone(), package)
        })
        .collect();
    let request = ResolveRequest {
        locked,
        ..request.clone()
    };
    Ok(resolve(&index, &request)?.packages)
}

/// A resolved package of which the index holds a higher version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewerVersion {
    /// Package name.
    pub name: String,
    /// The version resolved (the locked one).
    pub current: DebVersion,
    /// The highest version in the index.
    pub newest: DebVersion,
    /// The suite that carries it.
    pub suite: String,
}

/// The packages of `packages` that `index` has a higher version of, by
/// name: what `applbuild update` could move forward.
pub fn newer_versions(index: &PackageIndex, packages: &[PackageRecord]) -> Vec<NewerVersion> {
    packages
        .iter()
        .filter_map(|record| {
            let newest = index.versions(&record.name).first()?;
            (newest.version > record.version).then(|| NewerVersion {
                name: record.name.clone(),
                current: record.version.clone(),
                newest: newest.version.clone(),
                suite: newest.suite.clone(),
            })
        })
        .collect()
}

fn lock_changes(
    index: &PackageIndex,
    locked: &BTreeMap<String, LockedPackage>,
    packages: &[&PackageRecord],
) -> Vec<LockChange> {
    let resolved: BTreeMap<&str, &PackageRecord> =
        packages.iter().map(|r| (r.name.as_str(), *r)).collect();
    let mut changes: Vec<LockChange> = locked
        .iter()
        .filter(|(name, _)| !resolved.contains_key(name.as_str()))
        .map(|(name, lock)| LockChange {
            name: name.clone(),
            locked: Some(lock.version.clone()),
            resolved: None,
            reason: LockChangeReason::Removed,
        })
        .collect();
    for (name, record) in resolved {
        let reason = match locked.get(name) {
            None => LockChangeReason::Added,
            Some(lock) if lock.version != record.version => {
                if index.get(name, &lock.version).is_none() {
                    LockChangeReason::VersionGone
                } else {
                    LockChangeReason::Unsatisfied
                }
            }
            Some(lock) if lock.sha256 != record.sha256 => LockChangeReason::Sha256Changed,
            Some(_) => continue,
        };
        changes.push(LockChange {
            name: name.to_owned(),
            locked: locked.get(name).map(|l| l.version.clone()),
            resolved: Some(record.version.clone()),
            reason,
        });
    }
    changes.sort_by(|a, b| a.name.cmp(&b.name));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A package line for `index`: name, version, extra fields.
    type Spec<'s> = (&'s str, &'s str, &'s str);

    fn fake_sha(name: &str, version: &str) -> String {
        hex::encode(Sha256::digest(format!("{name}_{version}")))
    }

    fn index(specs: &[Spec<'_>]) -> PackageIndex {
        let text: Vec<String> = specs
            .iter()
            .map(|(name, version, extra)| {
                let extra: String = extra.split(';').map(|f| format!("{}\n", f.trim())).filter(|l| l != "\n").collect();
                format!(
                    "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}Filename: pool/{name}.deb\nSize: 1\nSHA256: {}\n",
                    fake_sha(name, version)
                )
            })
            .collect();
        PackageIndex::parse(&text.join("\n")).unwrap()
    }

    fn request(roots: &[&str]) -> ResolveRequest {
        ResolveRequest {
            roots: roots.iter().map(|s| s.to_string()).collect(),
            ..ResolveRequest::default()
        }
    }

    fn names(resolution: &Resolution) -> Vec<String> {
        resolution
            .packages
            .iter()
            .map(|r| format!("{}={}", r.name, r.version))
            .collect()
    }

    fn lock(entries: &[(&str, &str)]) -> BTreeMap<String, LockedPackage> {
        entries
            .iter()
            .map(|(name, version)| {
                (
                    name.to_string(),
                    LockedPackage {
                        version: version.parse().unwrap(),
                        sha256: fake_sha(name, version),
                        suite: String::new(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_subset_keeps_what_its_roots_need_with_the_same_choices() {
        // Both `agent` and `app` accept `libx | liby`; `liby` is preferred.
        let idx = index(&[
            ("app", "1", "Depends: libx | liby, libc"),
            ("agent", "1", "Depends: libglib, libx | liby"),
            ("libglib", "2", "Depends: libc"),
            ("libx", "1", ""),
            ("liby", "1", ""),
            ("libc", "1", ""),
        ]);
        let mut both = request(&["app", "agent"]);
        both.prefer = vec!["liby".into()];
        let all = resolve(&idx, &both).unwrap().packages;
        assert_eq!(all.len(), 5, "{all:?}");
        let mut image = request(&["app"]);
        image.prefer = vec!["liby".into()];
        let subset = subset(&all, &image).unwrap();
        let names: Vec<&str> = subset.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["app", "libc", "liby"]);
    }

    #[test]
    fn newer_versions_name_the_suite_of_the_highest() {
        let mut main = index(&[("app", "1", "")]);
        main.set_suite("bookworm");
        let mut security = index(&[("app", "1+deb12u1", "")]);
        security.set_suite("bookworm-security");
        let old = main.versions("app")[0].clone();
        main.merge(security);
        let newer = newer_versions(&main, &[old]);
        assert_eq!(newer.len(), 1);
        assert_eq!(newer[0].newest.to_string(), "1+deb12u1");
        assert_eq!(newer[0].suite, "bookworm-security");
        let resolution = resolve(&main, &request(&["app"])).unwrap();
        assert_eq!(resolution.packages[0].suite, "bookworm-security");
        assert!(newer_versions(&main, &resolution.packages).is_empty());
    }

    #[test]
    fn closure_follows_depends_and_pre_depends_only() {
        let idx = index(&[
            (
                "a",
                "1",
                "Depends: b; Pre-Depends: c; Recommends: r; Suggests: s",
            ),
            ("b", "1", "Depends: a"),
            ("c", "1", ""),
            ("r", "1", ""),
            ("s", "1", ""),
            ("base", "1", "Essential: yes"),
        ]);
        let resolution = resolve(&idx, &request(&["a"])).unwrap();
        assert_eq!(names(&resolution), ["a=1", "b=1", "c=1"]);
    }

    #[test]
    fn alternatives_take_selected_then_preferred_then_first_satisfiable() {
        let idx = index(&[
            ("app", "1", "Depends: missing | x | y"),
            ("x", "1", ""),
            ("y", "1", ""),
        ]);
        let first = resolve(&idx, &request(&["app"])).unwrap();
        assert_eq!(names(&first), ["app=1", "x=1"]);

        let mut preferring = request(&["app"]);
        preferring.prefer = vec!["y".into()];
        assert_eq!(
            names(&resolve(&idx, &preferring).unwrap()),
            ["app=1", "y=1"]
        );

        // A root is selected before any dependency is looked at.
        assert_eq!(
            names(&resolve(&idx, &request(&["app", "y"])).unwrap()),
            ["app=1", "y=1"]
        );
    }

    #[test]
    fn unsatisfiable_alternative_is_skipped() {
        let idx = index(&[
            ("app", "1", "Depends: x (>= 2) | y"),
            ("x", "1", ""),
            ("y", "1", ""),
        ]);
        assert_eq!(
            names(&resolve(&idx, &request(&["app"])).unwrap()),
            ["app=1", "y=1"]
        );
    }

    #[test]
    fn virtual_packages_choose_selected_preferred_only_or_first_by_name() {
        let idx = index(&[
            ("app", "1", "Depends: awk"),
            ("solo-user", "1", "Depends: mta"),
            ("mawk", "1", "Provides: awk"),
            ("gawk", "1", "Provides: awk"),
            ("exim", "1", "Provides: mta"),
        ]);
        assert_eq!(
            names(&resolve(&idx, &request(&["app"])).unwrap()),
            ["app=1", "gawk=1"]
        );
        let mut preferring = request(&["app"]);
        preferring.prefer = vec!["mawk".into()];
        assert_eq!(
            names(&resolve(&idx, &preferring).unwrap()),
            ["app=1", "mawk=1"]
        );
        assert_eq!(
            names(&resolve(&idx, &request(&["app", "mawk"])).unwrap()),
            ["app=1", "mawk=1"]
        );
        assert_eq!(
            names(&resolve(&idx, &request(&["solo-user"])).unwrap()),
            ["exim=1", "solo-user=1"]
        );
    }

    #[test]
    fn versioned_dependencies_need_versioned_provides() {
        let idx = index(&[
            ("app", "1", "Depends: v (>= 2)"),
            ("a-unversioned", "1", "Provides: v"),
            ("b-old", "1", "Provides: v (= 1)"),
            ("c-new", "1", "Provides: v (= 2)"),
        ]);
        assert_eq!(
            names(&resolve(&idx, &request(&["app"])).unwrap()),
            ["app=1", "c-new=1"]
        );
    }

    #[test]
    fn real_package_too_old_falls_back_to_a_provider() {
        let idx = index(&[
            ("app", "1", "Depends: lib (>= 2)"),
            ("lib", "1", ""),
            ("lib-ng", "2", "Provides: lib (= 2.5)"),
        ]);
        assert_eq!(
            names(&resolve(&idx, &request(&["app"])).unwrap()),
            ["app=1", "lib-ng=2"]
        );
    }

    #[test]
    fn highest_version_satisfying_all_constraints() {
        let idx = index(&[
            ("app", "1", "Depends: lib (<< 3), lib (>= 1.5)"),
            ("lib", "1", ""),
            ("lib", "2", ""),
            ("lib", "3", ""),
        ]);
        assert_eq!(
            names(&resolve(&idx, &request(&["app"])).unwrap()),
            ["app=1", "lib=2"]
        );
    }

    #[test]
    fn later_constraint_moves_a_selected_version_and_drops_its_old_dependencies() {
        let idx = index(&[
            ("lib", "3", "Depends: only-in-three"),
            ("lib", "2", ""),
            ("only-in-three", "1", ""),
            ("app", "1", "Depends: lib (<< 3)"),
        ]);
        let resolution = resolve(&idx, &request(&["lib", "app"])).unwrap();
        assert_eq!(names(&resolution), ["app=1", "lib=2"]);
    }

    #[test]
    fn conflicting_constraints_are_an_error_that_explains() {
        let idx = index(&[
            ("root", "1", "Depends: a, b"),
            ("a", "1", "Depends: lib (>= 2)"),
            ("b", "1", "Depends: lib (<< 2)"),
            ("lib", "1", ""),
            ("lib", "2", ""),
        ]);
        let err = resolve(&idx, &request(&["root"])).unwrap_err();
        match &err {
            ResolveError::Unsatisfiable {
                chain,
                dependency,
                detail,
            } => {
                assert_eq!(chain, &["root", "b"]);
                assert_eq!(dependency, "lib (<< 2)");
                assert!(detail.contains("lib 2 is already selected"), "{detail}");
                assert!(detail.contains("a needs lib (>= 2)"), "{detail}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("root -> b -> lib (<< 2): cannot be satisfied"),
            "{err}"
        );
    }

    #[test]
    fn missing_dependency_reports_the_chain() {
        let idx = index(&[
            ("root", "1", "Depends: mid"),
            ("mid", "1", "Depends: gone (>= 1) | lost"),
        ]);
        let err = resolve(&idx, &request(&["root"])).unwrap_err();
        assert_eq!(
            err,
            ResolveError::Missing {
                chain: vec!["root".into(), "mid".into()],
                dependency: "gone (>= 1) | lost".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "root -> mid -> gone (>= 1) | lost: no package has that name and none provides it"
        );
        let err = resolve(&idx, &request(&["nosuch"])).unwrap_err();
        assert!(err.to_string().starts_with("nosuch: "), "{err}");
    }

    #[test]
    fn cycles_terminate() {
        let idx = index(&[
            ("a", "1", "Depends: b"),
            ("b", "1", "Pre-Depends: c"),
            ("c", "1", "Depends: a, c"),
        ]);
        assert_eq!(
            names(&resolve(&idx, &request(&["c"])).unwrap()),
            ["a=1", "b=1", "c=1"]
        );
    }

    #[test]
    fn architecture_qualifiers_name_the_same_package() {
        let idx = index(&[
            ("app", "1", "Depends: python3:any, libc6:amd64 (>= 2)"),
            ("python3", "1", ""),
            ("libc6", "2", ""),
        ]);
        assert_eq!(
            names(&resolve(&idx, &request(&["app"])).unwrap()),
            ["app=1", "libc6=2", "python3=1"]
        );
    }

    #[test]
    fn roots_may_carry_constraints() {
        let idx = index(&[("lib", "1", ""), ("lib", "2", "")]);
        assert_eq!(
            names(&resolve(&idx, &request(&["lib (<< 2)"])).unwrap()),
            ["lib=1"]
        );
        assert!(matches!(
            resolve(&idx, &request(&["Lib"])).unwrap_err(),
            ResolveError::InvalidRoot { .. }
        ));
    }

    #[test]
    fn excluded_names_satisfy_dependencies_and_are_never_installed() {
        let idx = index(&[
            ("app", "1", "Depends: sh, awk, usrmerge | usr-is-merged"),
            ("sh", "1", "Depends: libc"),
            ("libc", "1", ""),
            ("mawk", "1", "Provides: awk"),
            ("usrmerge", "1", "Depends: perl"),
            ("usr-is-merged", "1", ""),
        ]);
        let mut req = request(&["app"]);
        req.exclude = vec!["sh".into(), "mawk".into(), "usrmerge".into()];
        assert_eq!(names(&resolve(&idx, &req).unwrap()), ["app=1"]);
        req.roots.push("mawk".into());
        assert_eq!(
            resolve(&idx, &req).unwrap_err(),
            ResolveError::ExcludedRoot {
                root: "mawk".into()
            }
        );
    }

    #[test]
    fn locked_versions_win_while_they_exist_and_fit() {
        let idx = index(&[
            ("app", "1", "Depends: lib"),
            ("lib", "1", ""),
            ("lib", "2", ""),
        ]);
        let mut req = request(&["app"]);
        req.locked = lock(&[("app", "1"), ("lib", "1")]);
        let resolution = resolve(&idx, &req).unwrap();
        assert_eq!(names(&resolution), ["app=1", "lib=1"]);
        assert!(
            resolution.lock_changes.is_empty(),
            "{:?}",
            resolution.lock_changes
        );
    }

    #[test]
    fn lock_changes_record_why() {
        let idx = index(&[
            ("app", "1", "Depends: gone-lib, lib (>= 2), new-dep"),
            ("gone-lib", "3", ""),
            ("lib", "1", ""),
            ("lib", "2", ""),
            ("new-dep", "1", ""),
        ]);
        let mut req = request(&["app"]);
        req.locked = lock(&[
            ("app", "1"),
            ("gone-lib", "2"),
            ("lib", "1"),
            ("old-dep", "1"),
        ]);
        let resolution = resolve(&idx, &req).unwrap();
        let changes: Vec<String> = resolution
            .lock_changes
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            [
                "gone-lib: 2 -> 3 (the locked version is no longer in the archive)",
                "lib: 1 -> 2 (the locked version no longer satisfies the dependencies)",
                "new-dep: (none) -> 1 (newly required)",
                "old-dep: 1 -> (none) (no longer required)",
            ]
        );
    }

    #[test]
    fn changed_sha256_of_the_same_version_is_a_lock_change() {
        let idx = index(&[("app", "1", "")]);
        let mut req = request(&["app"]);
        req.locked = lock(&[("app", "1")]);
        req.locked.get_mut("app").unwrap().sha256 = "0".repeat(64);
        let resolution = resolve(&idx, &req).unwrap();
        assert_eq!(names(&resolution), ["app=1"]);
        assert_eq!(
            resolution.lock_changes[0].reason,
            LockChangeReason::Sha256Changed
        );
    }

    #[test]
    fn locked_alternatives_and_providers_are_kept() {
        let idx = index(&[
            ("app", "1", "Depends: x | y, awk"),
            ("x", "1", ""),
            ("y", "1", ""),
            ("gawk", "1", "Provides: awk"),
            ("mawk", "1", "Provides: awk"),
        ]);
        let mut req = request(&["app"]);
        req.locked = lock(&[("app", "1"), ("y", "1"), ("mawk", "1")]);
        let resolution = resolve(&idx, &req).unwrap();
        assert_eq!(names(&resolution), ["app=1", "mawk=1", "y=1"]);
        assert!(resolution.lock_changes.is_empty());
    }

    #[test]
    fn result_does_not_depend_on_index_order() {
        let specs = [
            ("app", "1", "Depends: awk, lib (>= 1), x | y"),
            ("mawk", "1", "Provides: awk"),
            ("gawk", "1", "Provides: awk"),
            ("lib", "1", ""),
            ("lib", "2", "Depends: y"),
            ("x", "1", ""),
            ("y", "1", ""),
        ];
        let forward = resolve(&index(&specs), &request(&["app"])).unwrap();
        let mut reversed = specs;
        reversed.reverse();
        let backward = resolve(&index(&reversed), &request(&["app"])).unwrap();
        assert_eq!(names(&forward), names(&backward));
        assert_eq!(names(&forward), ["app=1", "gawk=1", "lib=2", "x=1", "y=1"]);
    }

    /// Resolves the hypervisor roots against bookworm main's Packages index
    /// (50 MB, not kept in the repository), as the image builds of
    /// `scripts/test` left it in applbuild's cache.
    #[test]
    fn real_bookworm_hypervisor_closure() {
        let Some(text) = applbuild_testdata::or_skip(applbuild_testdata::bookworm_packages())
        else {
            return;
        };
        let index = PackageIndex::parse(&text).unwrap();
        let request = ResolveRequest {
            roots: "linux-image-amd64 busybox open-iscsi multipath-tools qemu-system-x86 iproute2 kmod udev"
                .split(' ')
                .map(str::to_owned)
                .collect(),
            prefer: vec!["usr-is-merged".into()],
            ..ResolveRequest::default()
        };
        let resolution = resolve(&index, &request).unwrap();
        let names: Vec<&str> = resolution
            .packages
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        eprintln!("{} packages: {}", names.len(), names.join(" "));
        for absent in ["perl", "usrmerge", "perl-base"] {
            assert!(!names.contains(&absent), "{absent} was pulled in");
        }
        for present in ["linux-image-amd64", "qemu-system-x86", "libc6", "udev"] {
            assert!(names.contains(&present), "{present} is missing");
        }
        assert!((60..179).contains(&names.len()), "{} packages", names.len());
        assert!(names.windows(2).all(|w| w[0] < w[1]), "not sorted by name");
        let again = resolve(&index, &request).unwrap();
        assert_eq!(again.packages, resolution.packages);
    }
}
