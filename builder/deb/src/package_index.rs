//! The binary packages an archive offers, read from its `Packages` indexes:
//! every version of every package, and which packages provide each virtual
//! name.

use std::collections::{BTreeMap, BTreeSet};

use crate::deb822::{Deb822Error, Stanza, parse_stanzas};
use crate::relation::{Dependency, Op, Relation, parse_relations};
use crate::version::DebVersion;

/// Why a `Packages` index could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The file is not valid deb822.
    #[error("Packages index: {0}")]
    Syntax(#[from] Deb822Error),
    /// A stanza without a `Package` field cannot even be named.
    #[error("Packages index: the stanza at line {line} has no Package field")]
    MissingName {
        /// First line of the stanza.
        line: usize,
    },
    /// A field every downloadable package needs is absent.
    #[error("Packages index: package {package} (line {line}) has no {field} field")]
    MissingField {
        /// The package name.
        package: String,
        /// First line of the stanza.
        line: usize,
        /// The missing field.
        field: &'static str,
    },
    /// A field is present but malformed.
    #[error(
        "Packages index: package {package} (line {line}) has an invalid {field} {value:?}: {reason}"
    )]
    InvalidField {
        /// The package name.
        package: String,
        /// First line of the stanza.
        line: usize,
        /// The malformed field.
        field: &'static str,
        /// Its value as found.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// What the build needs to know about one version of one binary package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackageRecord {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: DebVersion,
    /// `amd64` or `all` in an amd64 index.
    pub architecture: String,
    /// Path of the `.deb` relative to the mirror root.
    pub filename: String,
    /// Size of the `.deb` in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the `.deb`, checked after download.
    pub sha256: String,
    /// `Depends`.
    pub depends: Vec<Relation>,
    /// `Pre-Depends`; the resolver treats it like `Depends` since nothing is
    /// configured while unpacking.
    pub pre_depends: Vec<Relation>,
    /// Virtual names this package provides, with the version for versioned provides.
    pub provides: Vec<(String, Option<DebVersion>)>,
    /// `Essential: yes`.
    pub essential: bool,
    /// `Priority` (required, important, standard, optional, extra).
    pub priority: Option<String>,
    /// `Section`.
    pub section: Option<String>,
    /// `Installed-Size` in KiB; 0 when the index omits it.
    pub installed_size: u64,
    /// `Source`: the source package's name, and its version when it differs
    /// from the binary's; `None` when the source has the binary's name and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<(String, Option<DebVersion>)>,
    /// The suite whose index listed this record (e.g. `bookworm-security`);
    /// empty until [`PackageIndex::set_suite`] names it.
    #[serde(default)]
    pub suite: String,
}

impl PackageRecord {
    /// Whether this package satisfies `dependency`, by its own name and
    /// version or through `Provides`. Per policy 7.5 an unversioned provide
    /// never satisfies a versioned dependency.
    pub fn satisfies(&self, dependency: &Dependency) -> bool {
        if self.name == dependency.name && dependency.satisfied_by(&self.version) {
            return true;
        }
        self.provides.iter().any(|(name, version)| {
            name == &dependency.name
                && match (&dependency.constraint, version) {
                    (None, _) => true,
                    (Some(_), Some(version)) => dependency.satisfied_by(version),
                    (Some(_), None) => false,
                }
        })
    }

    fn from_stanza(stanza: &Stanza<'_>) -> Result<Self, IndexError> {
        let line = stanza.line();
        let name = stanza
            .get("Package")
            .ok_or(IndexError::MissingName { line })?;
        let required = |field: &'static str| {
            stanza.get(field).ok_or_else(|| IndexError::MissingField {
                package: name.to_owned(),
                line,
                field,
            })
        };
        let invalid = |field: &'static str, value: &str, reason: String| IndexError::InvalidField {
            package: name.to_owned(),
            line,
            field,
            value: value.to_owned(),
            reason,
        };
        let number = |field: &'static str, value: &str| {
            value
                .parse::<u64>()
                .map_err(|e| invalid(field, value, e.to_string()))
        };
        let relations = |field: &'static str| match stanza.get(field) {
            Some(value) => parse_relations(value).map_err(|e| invalid(field, value, e.to_string())),
            None => Ok(Vec::new()),
        };
        let version_text = required("Version")?;
        let version = version_text
            .parse()
            .map_err(|e: crate::version::VersionError| {
                invalid("Version", version_text, e.to_string())
            })?;
        let size_text = required("Size")?;
        let size = number("Size", size_text)?;
        let sha256 = required("SHA256")?;
        if !is_sha256_hex(sha256) {
            return Err(invalid(
                "SHA256",
                sha256,
                "expected 64 lowercase hex digits".into(),
            ));
        }
        let essential = match stanza.get("Essential") {
            None | Some("no") => false,
            Some("yes") => true,
            Some(other) => return Err(invalid("Essential", other, "expected yes or no".into())),
        };
        let installed_size = match stanza.get("Installed-Size") {
            Some(value) => number("Installed-Size", value)?,
            None => 0,
        };
        let provides = relations("Provides")?
            .into_iter()
            .map(provided_name)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| invalid("Provides", stanza.get("Provides").unwrap_or(""), reason))?;

        Ok(PackageRecord {
            name: name.to_owned(),
            version,
            architecture: required("Architecture")?.to_owned(),
            filename: required("Filename")?.to_owned(),
            size,
            sha256: sha256.to_owned(),
            depends: relations("Depends")?,
            pre_depends: relations("Pre-Depends")?,
            provides,
            essential,
            priority: stanza.get("Priority").map(str::to_owned),
            section: stanza.get("Section").map(str::to_owned),
            installed_size,
            source: source_field(stanza.get("Source")).map_err(|e| invalid("Source", e.0, e.1))?,
            suite: String::new(),
        })
    }
}

/// Whether `text` is 64 lowercase hex digits.
fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `Source: name` or `Source: name (version)`; `None` when the field is absent.
type SourceField = Option<(String, Option<DebVersion>)>;

/// Reads the `Source` field's value, if any.
fn source_field(value: Option<&str>) -> Result<SourceField, (&str, String)> {
    let Some(value) = value else { return Ok(None) };
    let Some((name, rest)) = value.split_once('(') else {
        return Ok(Some((value.trim().to_owned(), None)));
    };
    let version = rest
        .trim()
        .strip_suffix(')')
        .ok_or((value, "expected `name (version)`".to_owned()))?;
    let version = version
        .trim()
        .parse()
        .map_err(|e: crate::version::VersionError| (value, e.to_string()))?;
    Ok(Some((name.trim().to_owned(), Some(version))))
}

/// One `Provides` item: a single name with at most an `=` version (policy 7.5).
fn provided_name(relation: Relation) -> Result<(String, Option<DebVersion>), String> {
    let [dependency] = <[Dependency; 1]>::try_from(relation.alternatives)
        .map_err(|_| "a provided name cannot have alternatives".to_owned())?;
    match dependency.constraint {
        None => Ok((dependency.name, None)),
        Some((Op::Eq, version)) => Ok((dependency.name, Some(version))),
        Some((op, _)) => Err(format!(
            "{} may only be provided with `=`, not `{op}`",
            dependency.name
        )),
    }
}

/// All package versions of one or more `Packages` indexes.
#[derive(Debug, Clone, Default)]
pub struct PackageIndex {
    /// Each name's versions, highest first, one record per version.
    packages: BTreeMap<String, Vec<PackageRecord>>,
    /// Virtual name to the names of packages that provide it in some version.
    provided_by: BTreeMap<String, BTreeSet<String>>,
}

impl PackageIndex {
    /// Parses the text of a `Packages` file. A package without `Filename`,
    /// `SHA256` or `Size` is an error naming it: it could not be downloaded
    /// and verified, and silently dropping it would move the failure to a
    /// confusing "missing dependency" later.
    pub fn parse(text: &str) -> Result<Self, IndexError> {
        let mut index = PackageIndex::default();
        for stanza in parse_stanzas(text)? {
            index.insert(PackageRecord::from_stanza(&stanza)?);
        }
        index.sort();
        Ok(index)
    }

    /// Adds the packages of `other` (another component or suite). Where both
    /// carry the same name and version, the record already in `self` wins, so
    /// merge indexes in priority order.
    pub fn merge(&mut self, other: PackageIndex) {
        for record in other.packages.into_values().flatten() {
            self.insert(record);
        }
        self.sort();
    }

    /// Records `suite` as the origin of every package of this index, before
    /// it is merged with other suites' indexes.
    pub fn set_suite(&mut self, suite: &str) {
        for record in self.packages.values_mut().flatten() {
            record.suite = suite.to_owned();
        }
    }

    /// Every version of `name`, highest first; empty when unknown.
    pub fn versions(&self, name: &str) -> &[PackageRecord] {
        self.packages.get(name).map_or(&[], Vec::as_slice)
    }

    /// The record of `name` at exactly `version`.
    pub fn get(&self, name: &str, version: &DebVersion) -> Option<&PackageRecord> {
        self.versions(name).iter().find(|r| &r.version == version)
    }

    /// Records that provide `virtual_name`, ordered by package name then
    /// version (highest first) so callers can choose deterministically.
    pub fn providers(&self, virtual_name: &str) -> Vec<&PackageRecord> {
        self.provided_by
            .get(virtual_name)
            .into_iter()
            .flatten()
            .flat_map(|name| self.versions(name))
            .filter(|record| record.provides.iter().any(|(p, _)| p == virtual_name))
            .collect()
    }

    /// Number of package records (all versions of all names).
    pub fn len(&self) -> usize {
        self.packages.values().map(Vec::len).sum()
    }

    /// Whether the index holds no package at all.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    fn insert(&mut self, record: PackageRecord) {
        for (name, _) in &record.provides {
            self.provided_by
                .entry(name.clone())
                .or_default()
                .insert(record.name.clone());
        }
        self.packages
            .entry(record.name.clone())
            .or_default()
            .push(record);
    }

    /// Restores "highest first, one record per version"; the stable sort keeps
    /// the earliest inserted record first among equal versions.
    fn sort(&mut self) {
        for records in self.packages.values_mut() {
            records.sort_by(|a, b| b.version.cmp(&a.version));
            records.dedup_by(|later, earlier| later.version == earlier.version);
        }
    }
}

/// An index of exactly these records, for example a resolved package set
/// to be resolved again for a subset of its roots.
impl FromIterator<PackageRecord> for PackageIndex {
    fn from_iter<I: IntoIterator<Item = PackageRecord>>(records: I) -> Self {
        let mut index = PackageIndex::default();
        for record in records {
            index.insert(record);
        }
        index.sort();
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_A: &str = "3a2118df47bf3f04285649f0455c2fc6fe2dc7f0b237073038aa00af41f0d5f2";
    const HASH_B: &str = "53745ae74d05bccf6783400fa98f3932b21729ab9d2e86151aa2c331c3455178";

    fn stanza(name: &str, version: &str, extra: &str) -> String {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}Filename: pool/main/{name}_{version}_amd64.deb\nSize: 1234\nSHA256: {HASH_A}\n"
        )
    }

    #[test]
    fn parses_a_full_record() {
        let text = "Package: libc-bin\nSource: glibc\nVersion: 2.36-9+deb12u10\nInstalled-Size: 2735\n\
            Architecture: amd64\nEssential: yes\nDepends: libc6 (>> 2.36), libc6 (<< 2.37)\n\
            Pre-Depends: dpkg (>= 1.15.6~)\nRecommends: manpages\nProvides: libc-tools, ldconfig (= 2.36)\n\
            Description: GNU C Library: Binaries\nSection: libs\nPriority: required\n\
            Filename: pool/main/g/glibc/libc-bin_2.36-9+deb12u10_amd64.deb\nSize: 609072\n\
            SHA256: 3a2118df47bf3f04285649f0455c2fc6fe2dc7f0b237073038aa00af41f0d5f2\n";
        let index = PackageIndex::parse(text).unwrap();
        let record = &index.versions("libc-bin")[0];
        assert_eq!(record.version.to_string(), "2.36-9+deb12u10");
        assert_eq!(record.architecture, "amd64");
        assert_eq!(
            record.filename,
            "pool/main/g/glibc/libc-bin_2.36-9+deb12u10_amd64.deb"
        );
        assert_eq!(record.size, 609_072);
        assert_eq!(record.sha256, HASH_A);
        assert_eq!(record.installed_size, 2735);
        assert!(record.essential);
        assert_eq!(record.priority.as_deref(), Some("required"));
        assert_eq!(record.section.as_deref(), Some("libs"));
        let depends: Vec<_> = record.depends.iter().map(ToString::to_string).collect();
        assert_eq!(depends, ["libc6 (>> 2.36)", "libc6 (<< 2.37)"]);
        assert_eq!(record.pre_depends[0].to_string(), "dpkg (>= 1.15.6~)");
        assert_eq!(record.provides[0], ("libc-tools".to_owned(), None));
        assert_eq!(record.provides[1].0, "ldconfig");
        assert_eq!(record.provides[1].1.as_ref().unwrap().to_string(), "2.36");
    }

    #[test]
    fn source_field_names_the_source_package() {
        let text = [
            stanza("libc6", "2.36-9", "Source: glibc\n"),
            stanza(
                "libgcc-s1",
                "12.2.0-14",
                "Source: gcc-12 (12.2.0-14+deb12u1)\n",
            ),
            stanza("busybox", "1:1.35.0-4", ""),
        ]
        .join("\n");
        let index = PackageIndex::parse(&text).unwrap();
        assert_eq!(
            index.versions("libc6")[0].source,
            Some(("glibc".to_owned(), None))
        );
        let (name, version) = index.versions("libgcc-s1")[0].source.clone().unwrap();
        assert_eq!(
            (name.as_str(), version.unwrap().to_string().as_str()),
            ("gcc-12", "12.2.0-14+deb12u1")
        );
        assert_eq!(index.versions("busybox")[0].source, None);
        let bad = stanza("x", "1", "Source: x (1\n");
        assert!(matches!(
            PackageIndex::parse(&bad).unwrap_err(),
            IndexError::InvalidField {
                field: "Source",
                ..
            }
        ));
    }

    #[test]
    fn optional_fields_default() {
        let index = PackageIndex::parse(&stanza("a", "1.0", "")).unwrap();
        let record = &index.versions("a")[0];
        assert!(!record.essential);
        assert_eq!(record.installed_size, 0);
        assert_eq!(record.priority, None);
        assert!(record.depends.is_empty() && record.provides.is_empty());
    }

    #[test]
    fn versions_are_highest_first_and_providers_sorted() {
        let text = [
            stanza("b", "1.0", "Provides: v\n"),
            stanza("b", "2.0", ""),
            stanza("a", "1.0~rc1", "Provides: v (= 3)\n"),
            stanza("b", "1:0.5", "Provides: v\n"),
        ]
        .join("\n");
        let index = PackageIndex::parse(&text).unwrap();
        let versions: Vec<_> = index
            .versions("b")
            .iter()
            .map(|r| r.version.to_string())
            .collect();
        assert_eq!(versions, ["1:0.5", "2.0", "1.0"]);
        let providers: Vec<_> = index
            .providers("v")
            .iter()
            .map(|r| format!("{} {}", r.name, r.version))
            .collect();
        // b 2.0 does not provide v, so it is left out.
        assert_eq!(providers, ["a 1.0~rc1", "b 1:0.5", "b 1.0"]);
        assert!(index.providers("nothing").is_empty());
        assert!(index.versions("nothing").is_empty());
        assert_eq!(index.len(), 4);
        assert!(index.get("b", &"2.0".parse().unwrap()).is_some());
        assert!(index.get("b", &"3.0".parse().unwrap()).is_none());
    }

    #[test]
    fn merge_keeps_the_first_record_of_equal_versions() {
        let mut main = PackageIndex::parse(&stanza("a", "1.0", "")).unwrap();
        let updates = PackageIndex::parse(
            &[
                stanza("a", "1.0", "").replace(HASH_A, HASH_B),
                stanza("a", "1.1", ""),
                stanza("c", "1", "Provides: v\n"),
            ]
            .join("\n"),
        )
        .unwrap();
        main.merge(updates);
        let a = main.versions("a");
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].version.to_string(), "1.1");
        assert_eq!(a[1].sha256, HASH_A);
        assert_eq!(main.providers("v")[0].name, "c");
        assert!(!main.is_empty());
    }

    #[test]
    fn satisfies_honours_versioned_provides() {
        let text = [stanza(
            "real",
            "2.0",
            "Provides: plain, versioned (= 1.5)\n",
        )]
        .join("\n");
        let index = PackageIndex::parse(&text).unwrap();
        let record = &index.versions("real")[0];
        let dep = |text: &str| {
            parse_relations(text)
                .unwrap()
                .remove(0)
                .alternatives
                .remove(0)
        };
        assert!(record.satisfies(&dep("real (>= 2)")));
        assert!(!record.satisfies(&dep("real (>> 2.0)")));
        assert!(record.satisfies(&dep("plain")));
        assert!(!record.satisfies(&dep("plain (>= 1)")));
        assert!(record.satisfies(&dep("versioned (>= 1.5)")));
        assert!(!record.satisfies(&dep("versioned (>= 2)")));
        assert!(!record.satisfies(&dep("other")));
    }

    #[test]
    fn missing_download_fields_name_the_package() {
        for field in ["Filename", "Size", "SHA256"] {
            let text: String = stanza("broken", "1.0", "")
                .lines()
                .filter(|line| !line.starts_with(&format!("{field}:")))
                .map(|line| format!("{line}\n"))
                .collect();
            let err =
                PackageIndex::parse(&format!("{}\n{text}", stanza("ok", "1", ""))).unwrap_err();
            assert_eq!(
                err,
                IndexError::MissingField {
                    package: "broken".into(),
                    line: 8,
                    field
                }
            );
            assert!(err.to_string().contains("broken"), "{err}");
        }
    }

    #[test]
    fn invalid_fields_are_errors() {
        let cases = [
            stanza("p", "1.0-", ""),
            stanza("p", "1.0", "Depends: a (>= )\n"),
            stanza("p", "1.0", "Provides: v (>= 1)\n"),
            stanza("p", "1.0", "Provides: v | w\n"),
            stanza("p", "1.0", "Essential: maybe\n"),
            stanza("p", "1.0", "Installed-Size: big\n"),
            stanza("p", "1.0", "").replace("Size: 1234", "Size: -1"),
            stanza("p", "1.0", "").replace(HASH_A, "abc"),
        ];
        let fields = [
            "Version",
            "Depends",
            "Provides",
            "Provides",
            "Essential",
            "Installed-Size",
            "Size",
            "SHA256",
        ];
        for (text, expected) in cases.iter().zip(fields) {
            match PackageIndex::parse(text) {
                Err(IndexError::InvalidField { package, field, .. }) => {
                    assert_eq!((package.as_str(), field), ("p", expected), "{text}");
                }
                other => panic!("{text}: expected an invalid {expected}, got {other:?}"),
            }
        }
        assert_eq!(
            PackageIndex::parse("Version: 1\n").unwrap_err(),
            IndexError::MissingName { line: 1 }
        );
        assert!(matches!(
            PackageIndex::parse("garbage\n").unwrap_err(),
            IndexError::Syntax(_)
        ));
    }

    #[test]
    fn serializes_for_manifests() {
        let index = PackageIndex::parse(&stanza("a", "1:1.0", "Depends: b (>= 2) | c\n")).unwrap();
        let json = serde_json::to_value(&index.versions("a")[0]).unwrap();
        let back: PackageRecord = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(&back, &index.versions("a")[0]);
        assert_eq!(json["version"], "1:1.0");
        assert_eq!(json["depends"][0], "b (>= 2) | c");
        assert_eq!(json["size"], 1234);
    }
}
