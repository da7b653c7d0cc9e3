//! Facts about a resolved package set that the bill of materials records:
//! which package of the set satisfies each dependency, and each package's
//! source package.

use std::collections::BTreeMap;

use crate::package_index::PackageRecord;

/// For each package of `packages` (by name), the names of the packages of
/// the same set that satisfy its `Pre-Depends` and `Depends`: for each
/// relation, the set's packages that satisfy its first alternative any of
/// them satisfies (sorted, each once). Relations the set leaves
/// unsatisfied are left out.
pub fn dependency_edges(packages: &[PackageRecord]) -> BTreeMap<String, Vec<String>> {
    packages
        .iter()
        .map(|package| {
            let mut targets: Vec<String> = package
                .pre_depends
                .iter()
                .chain(&package.depends)
                .flat_map(|relation| {
                    relation
                        .alternatives
                        .iter()
                        .map(|dependency| {
                            packages
                                .iter()
                                .filter(|other| other.name != package.name)
                                .filter(|other| other.satisfies(dependency))
                                .map(|other| other.name.clone())
                                .collect::<Vec<_>>()
                        })
                        .find(|satisfiers| !satisfiers.is_empty())
                        .unwrap_or_default()
                })
                .collect();
            targets.sort();
            targets.dedup();
            (package.name.clone(), targets)
        })
        .collect()
}

/// The name and version of `package`'s source package: the `Source` field's,
/// with the binary's name or version where the field leaves them out.
pub fn source_package(package: &PackageRecord) -> (String, String) {
    match &package.source {
        None => (package.name.clone(), package.version.to_string()),
        Some((name, None)) => (name.clone(), package.version.to_string()),
        Some((name, Some(version))) => (name.clone(), version.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package_index::PackageIndex;

    fn records(text: &str) -> Vec<PackageRecord> {
        let index = PackageIndex::parse(text).unwrap();
        ["app", "libc6", "mawk", "gawk"]
            .iter()
            .flat_map(|name| index.versions(name).first().cloned())
            .collect()
    }

    fn stanza(name: &str, extra: &str) -> String {
        format!(
            "Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\n{extra}Filename: pool/{name}.deb\n\
             Size: 1\nSHA256: {}\n\n",
            "a".repeat(64)
        )
    }

    #[test]
    fn edges_follow_the_alternative_the_set_satisfies() {
        let text = [
            stanza("app", "Source: app-src (0.9)\nPre-Depends: libc6\nDepends: gawk | mawk, libc6 (>= 1.0), libmissing\n"),
            stanza("libc6", "Source: glibc\n"),
            stanza("mawk", "Depends: libc6\nProvides: awk\n"),
        ]
        .concat();
        let set = records(&text);
        let edges = dependency_edges(&set);
        assert_eq!(edges["app"], ["libc6", "mawk"]);
        assert_eq!(edges["mawk"], ["libc6"]);
        assert!(edges["libc6"].is_empty());
        let sources: Vec<_> = set.iter().map(source_package).collect();
        assert_eq!(
            sources,
            [
                ("app-src".to_owned(), "0.9".to_owned()),
                ("glibc".to_owned(), "1.0-1".to_owned()),
                ("mawk".to_owned(), "1.0-1".to_owned()),
            ]
        );
    }
}
