//! The image's software bill of materials: `sbom.spdx.json` (SPDX 2.3),
//! `sbom.cdx.json` (CycloneDX 1.6) and `licenses.csv`, all from one
//! [`SbomInput`].
//!
//! The documents are deterministic: the SPDX namespace and the CycloneDX
//! serial number are a UUID derived from a SHA256 of the input, and the
//! creation time is part of the input (`SOURCE_DATE_EPOCH`, or a time the
//! caller derives from the build inputs). The structures are written by
//! hand: the maintained crates found write SPDX 2.2 with random ids
//! (`spdx-rs`) and CycloneDX up to 1.5 (`cyclonedx-bom`); see `docs/sbom.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use applbuild_rootfs::copyright::{Copyright, ExtractedLicence, Licence};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// File name of the SPDX document in an output folder.
pub const SPDX_FILE: &str = "sbom.spdx.json";
/// File name of the CycloneDX document in an output folder.
pub const CYCLONEDX_FILE: &str = "sbom.cdx.json";
/// File name of the licence list in an output folder.
pub const LICENSES_FILE: &str = "licenses.csv";

/// One binary package in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SbomPackage {
    /// Package name.
    pub name: String,
    /// Version, with epoch.
    pub version: String,
    /// `amd64` or `all`.
    pub architecture: String,
    /// Lowercase hex SHA256 of the `.deb`.
    pub deb_sha256: String,
    /// Source package name (the binary's name when the index names none).
    pub source_name: String,
    /// Source package version (the binary's version when the index names none).
    pub source_version: String,
    /// Names of the image's packages that the resolver chose to satisfy this
    /// package's `Depends` and `Pre-Depends`.
    pub depends_on: Vec<String>,
    /// What its copyright file says.
    #[serde(skip)]
    pub copyright: Copyright,
}

/// One file of the output folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SbomArtifact {
    /// File name in the output folder, e.g. `initramfs.img`.
    pub file: String,
    /// Lowercase hex SHA256 of its contents.
    pub sha256: String,
    /// What it was made from: names of packages in the image or of other
    /// artifacts.
    pub generated_from: Vec<String>,
}

/// Everything the three files are written from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SbomInput {
    /// Profile name, e.g. `hypervisor`.
    pub profile: String,
    /// The purl `distro` qualifier, e.g. `debian-12`.
    pub distro: String,
    /// applbuild version, named as the creating tool.
    pub tool_version: String,
    /// Creation time in seconds since the epoch: `SOURCE_DATE_EPOCH` when set
    /// (see [`source_date_epoch`]), else a time taken from the build inputs
    /// (e.g. the Release file's `Date`), never the clock.
    pub created: i64,
    /// The packages; any order (the documents sort them by name).
    pub packages: Vec<SbomPackage>,
    /// The output files; any order.
    pub artifacts: Vec<SbomArtifact>,
}

/// Why the files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A relation or artifact names a package or artifact that is not in the input.
    #[error("SBOM of {profile}: {from} refers to {to}, which is neither a package nor an artifact")]
    UnknownReference {
        /// Profile name.
        profile: String,
        /// The package or artifact that refers.
        from: String,
        /// The unknown name.
        to: String,
    },
    /// `created` is out of the range of dates.
    #[error("SBOM creation time {0} is not a valid date")]
    InvalidTime(i64),
}

/// `SOURCE_DATE_EPOCH` from the environment, when set to a number.
pub fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

/// The package URL of a Debian package: architecture `source` for a source package.
pub fn purl(name: &str, version: &str, architecture: &str, distro: &str) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!(
        "pkg:deb/debian/{}@{}?arch={architecture}&distro={distro}",
        encode(name),
        encode(version)
    )
}

/// Writes [`SPDX_FILE`], [`CYCLONEDX_FILE`] and [`LICENSES_FILE`] into `dir`
/// and returns their paths in that order.
pub fn write_sbom(input: &SbomInput, dir: &Path) -> Result<[PathBuf; 3], SbomError> {
    let document = SbomDocument::new(input)?;
    let files = [
        (SPDX_FILE, to_json(&document.spdx())),
        (CYCLONEDX_FILE, to_json(&document.cyclonedx())),
        (LICENSES_FILE, document.licenses_csv()),
    ];
    let mut paths = Vec::new();
    for (name, contents) in files {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|source| SbomError::Write {
            path: path.clone(),
            source,
        })?;
        paths.push(path);
    }
    Ok([paths[0].clone(), paths[1].clone(), paths[2].clone()])
}

fn to_json(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values always serialise");
    text.push('\n');
    text
}

/// The input, sorted and checked, with what both documents share.
struct SbomDocument<'a> {
    input: &'a SbomInput,
    packages: Vec<&'a SbomPackage>,
    artifacts: Vec<&'a SbomArtifact>,
    /// Each package's licence expression, with its `LicenseRef-` ids made
    /// unique across packages.
    expressions: BTreeMap<&'a str, String>,
    /// The `LicenseRef-` licences of all packages, by their unique id.
    extracted: BTreeMap<String, &'a ExtractedLicence>,
    uuid: uuid::Uuid,
    created: String,
}

impl<'a> SbomDocument<'a> {
    fn new(input: &'a SbomInput) -> Result<Self, SbomError> {
        let mut packages: Vec<&SbomPackage> = input.packages.iter().collect();
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        let mut artifacts: Vec<&SbomArtifact> = input.artifacts.iter().collect();
        artifacts.sort_by(|a, b| a.file.cmp(&b.file));
        let created = chrono::DateTime::from_timestamp(input.created, 0)
            .ok_or(SbomError::InvalidTime(input.created))?
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut document = SbomDocument {
            input,
            packages,
            artifacts,
            expressions: BTreeMap::new(),
            extracted: BTreeMap::new(),
            uuid: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, &input_digest(input)),
            created,
        };
        document.check_references()?;
        document.unique_licence_refs();
        Ok(document)
    }

    fn check_references(&self) -> Result<(), SbomError> {
        let known = |name: &str| {
            self.packages.iter().any(|p| p.name == name)
                || self.artifacts.iter().any(|a| a.file == name)
        };
        let edges = self
            .packages
            .iter()
            .flat_map(|p| p.depends_on.iter().map(move |to| (&p.name, to)))
            .chain(
                self.artifacts
                    .iter()
                    .flat_map(|a| a.generated_from.iter().map(move |to| (&a.file, to))),
            );
        for (from, to) in edges {
            if !known(to) {
                return Err(SbomError::UnknownReference {
                    profile: self.input.profile.clone(),
                    from: from.clone(),
                    to: to.clone(),
                });
            }
        }
        Ok(())
    }

    /// Two packages may use one `LicenseRef-` id for different texts: the
    /// later one (by package name) gets the id suffixed with its text's hash.
    fn unique_licence_refs(&mut self) {
        for package in &self.packages {
            let Licence::Declared {
                expression,
                extracted,
            } = &package.copyright.licence
            else {
                continue;
            };
            let mut renamed = BTreeMap::new();
            for licence in extracted {
                let mut id = licence.id.clone();
                if self
                    .extracted
                    .get(&id)
                    .is_some_and(|l| l.text != licence.text)
                {
                    let hash = hex::encode(Sha256::digest(licence.text.as_bytes()));
                    id = format!("{}-{}", licence.id, &hash[..12]);
                    renamed.insert(licence.id.as_str(), id.clone());
                }
                self.extracted.entry(id).or_insert(licence);
            }
            let expression = expression
                .split_inclusive([' ', '(', ')'])
                .map(|token| {
                    let word = token.trim_end_matches([' ', '(', ')']);
                    match renamed.get(word) {
                        Some(id) => format!("{id}{}", &token[word.len()..]),
                        None => token.to_owned(),
                    }
                })
                .collect();
            self.expressions.insert(&package.name, expression);
        }
    }

    fn expression(&self, package: &SbomPackage) -> &str {
        self.expressions
            .get(package.name.as_str())
            .map_or("NOASSERTION", String::as_str)
    }

    fn purl(&self, package: &SbomPackage) -> String {
        purl(
            &package.name,
            &package.version,
            &package.architecture,
            &self.input.distro,
        )
    }

    fn source_purl(&self, package: &SbomPackage) -> String {
        purl(
            &package.source_name,
            &package.source_version,
            "source",
            &self.input.distro,
        )
    }

    /// The source packages, each once, sorted by name and version.
    fn sources(&self) -> Vec<(&'a str, &'a str)> {
        let mut sources: Vec<(&str, &str)> = self
            .packages
            .iter()
            .map(|p| (p.source_name.as_str(), p.source_version.as_str()))
            .collect();
        sources.sort();
        sources.dedup();
        sources
    }

    fn licenses_csv(&self) -> String {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let header = [
            "package",
            "version",
            "source",
            "source_version",
            "licence",
            "copyright_sha256",
        ];
        writer.write_record(header).expect("writing to memory");
        for package in &self.packages {
            let sha256 = package.copyright.sha256.as_deref().unwrap_or("");
            writer
                .write_record([
                    package.name.as_str(),
                    &package.version,
                    &package.source_name,
                    &package.source_version,
                    self.expression(package),
                    sha256,
                ])
                .expect("writing to memory");
        }
        String::from_utf8(writer.into_inner().expect("writing to memory"))
            .expect("CSV of UTF-8 fields is UTF-8")
    }
}

/// SHA256 over the whole input, licences and copyright hashes included.
fn input_digest(input: &SbomInput) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(input).expect("the input always serialises"));
    for package in &input.packages {
        hasher.update(package.copyright.licence.expression().as_bytes());
        hasher.update(
            package
                .copyright
                .sha256
                .as_deref()
                .unwrap_or("-")
                .as_bytes(),
        );
    }
    hasher.finalize().into()
}

/// An SPDX id from any name: letters, digits, `.` and `-` only, with a hash
/// of the name so that two names never sanitise to the same id.
fn spdx_id(kind: &str, name: &str) -> String {
    let sanitised: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    format!("SPDXRef-{kind}-{sanitised}-{}", &hash[..8])
}

impl SbomDocument<'_> {
    fn image_id(&self) -> String {
        spdx_id("Image", &self.input.profile)
    }

    /// The SPDX id of a package or artifact name.
    fn reference_id(&self, name: &str) -> String {
        if self.packages.iter().any(|p| p.name == name) {
            spdx_id("Package", name)
        } else {
            spdx_id("File", name)
        }
    }

    fn spdx(&self) -> Value {
        let tool = format!("Tool: applbuild-{}", self.input.tool_version);
        json!({
            "spdxVersion": "SPDX-2.3",
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": format!("applbuild-{}", self.input.profile),
            "documentNamespace": format!(
                "https://spdx.org/spdxdocs/applbuild-{}-{}", self.input.profile, self.uuid
            ),
            "creationInfo": { "created": self.created, "creators": [tool] },
            "packages": self.spdx_packages(),
            "hasExtractedLicensingInfos": self.extracted.iter().map(|(id, licence)| json!({
                "licenseId": id,
                "name": licence.name,
                "extractedText": licence.text,
            })).collect::<Vec<_>>(),
            "relationships": self.spdx_relationships(),
        })
    }

    fn spdx_packages(&self) -> Vec<Value> {
        let checksum = |sha256: &str| json!([{ "algorithm": "SHA256", "checksumValue": sha256 }]);
        let purl_ref = |purl: String| {
            json!([{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                     "referenceLocator": purl }])
        };
        let mut packages = vec![json!({
            "SPDXID": self.image_id(), "name": self.input.profile,
            "downloadLocation": "NOASSERTION", "filesAnalyzed": false,
            "primaryPackagePurpose": "OPERATING-SYSTEM",
        })];
        packages.extend(self.packages.iter().map(|package| {
            json!({
                "SPDXID": spdx_id("Package", &package.name),
                "name": package.name, "versionInfo": package.version,
                "supplier": "Organization: Debian", "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false, "checksums": checksum(&package.deb_sha256),
                "sourceInfo": format!("built from source package {} {}",
                                      package.source_name, package.source_version),
                "licenseConcluded": "NOASSERTION", "licenseDeclared": self.expression(package),
                "copyrightText": "NOASSERTION", "externalRefs": purl_ref(self.purl(package)),
                "primaryPackagePurpose": "LIBRARY",
            })
        }));
        packages.extend(self.sources().into_iter().map(|(name, version)| {
            json!({
                "SPDXID": spdx_id("Source", &format!("{name}_{version}")),
                "name": name, "versionInfo": version, "supplier": "Organization: Debian",
                "downloadLocation": "NOASSERTION", "filesAnalyzed": false,
                "externalRefs": purl_ref(purl(name, version, "source", &self.input.distro)),
                "primaryPackagePurpose": "SOURCE",
            })
        }));
        packages.extend(self.artifacts.iter().map(|artifact| {
            json!({
                "SPDXID": spdx_id("File", &artifact.file), "name": artifact.file,
                "downloadLocation": "NOASSERTION", "filesAnalyzed": false,
                "checksums": checksum(&artifact.sha256), "primaryPackagePurpose": "FILE",
            })
        }));
        packages
    }

    fn spdx_relationships(&self) -> Vec<Value> {
        let relation = |from: String, kind: &str, to: String| json!({ "spdxElementId": from, "relationshipType": kind, "relatedSpdxElement": to });
        let mut relations = vec![relation(
            "SPDXRef-DOCUMENT".into(),
            "DESCRIBES",
            self.image_id(),
        )];
        for package in &self.packages {
            let id = spdx_id("Package", &package.name);
            relations.push(relation(self.image_id(), "CONTAINS", id.clone()));
            let source = format!("{}_{}", package.source_name, package.source_version);
            relations.push(relation(
                id.clone(),
                "GENERATED_FROM",
                spdx_id("Source", &source),
            ));
            for dependency in &package.depends_on {
                let to = spdx_id("Package", dependency);
                relations.push(relation(id.clone(), "DEPENDS_ON", to));
            }
        }
        for artifact in &self.artifacts {
            let id = spdx_id("File", &artifact.file);
            relations.push(relation(self.image_id(), "CONTAINS", id.clone()));
            for from in &artifact.generated_from {
                let to = self.reference_id(from);
                relations.push(relation(id.clone(), "GENERATED_FROM", to));
            }
        }
        relations
    }

    /// The CycloneDX `bom-ref` of a package or artifact name.
    fn bom_ref(&self, name: &str) -> String {
        match self.packages.iter().find(|p| p.name == name) {
            Some(package) => self.purl(package),
            None => format!("file:{name}"),
        }
    }

    fn cyclonedx(&self) -> Value {
        let image_ref = format!("image:{}", self.input.profile);
        let mut dependencies = vec![json!({
            "ref": image_ref,
            "dependsOn": self.packages.iter().map(|p| self.purl(p)).collect::<Vec<_>>(),
        })];
        dependencies.extend(self.packages.iter().map(|package| {
            let mut depends_on: Vec<String> =
                package.depends_on.iter().map(|d| self.bom_ref(d)).collect();
            depends_on.sort();
            depends_on.dedup();
            json!({ "ref": self.purl(package), "dependsOn": depends_on })
        }));
        json!({
            "bomFormat": "CycloneDX",
            "specVersion": "1.6",
            "serialNumber": format!("urn:uuid:{}", self.uuid),
            "version": 1,
            "metadata": {
                "timestamp": self.created,
                "tools": { "components": [{
                    "type": "application", "name": "applbuild", "version": self.input.tool_version,
                }] },
                "component": {
                    "type": "operating-system", "bom-ref": image_ref, "name": self.input.profile,
                },
            },
            "components": self.cyclonedx_components(),
            "dependencies": dependencies,
        })
    }

    fn cyclonedx_components(&self) -> Vec<Value> {
        let sha256 = |content: &str| json!([{ "alg": "SHA-256", "content": content }]);
        let mut components: Vec<Value> = self
            .packages
            .iter()
            .map(|package| {
                let mut component = json!({
                    "type": "library", "bom-ref": self.purl(package), "name": package.name,
                    "version": package.version, "purl": self.purl(package),
                    "hashes": sha256(&package.deb_sha256),
                    "pedigree": { "ancestors": [{
                        "type": "library", "name": package.source_name,
                        "version": package.source_version, "purl": self.source_purl(package),
                    }] },
                    "properties": [
                        { "name": "applbuild:architecture", "value": package.architecture },
                        { "name": "applbuild:copyright-sha256",
                          "value": package.copyright.sha256.as_deref().unwrap_or("none") },
                    ],
                });
                let expression = self.expression(package);
                if expression != "NOASSERTION" {
                    component["licenses"] =
                        json!([{ "expression": expression, "acknowledgement": "declared" }]);
                }
                component
            })
            .collect();
        components.extend(self.artifacts.iter().map(|artifact| {
            let sources: Vec<String> = artifact
                .generated_from
                .iter()
                .map(|from| self.bom_ref(from))
                .collect();
            json!({
                "type": "file", "bom-ref": format!("file:{}", artifact.file),
                "name": artifact.file, "hashes": sha256(&artifact.sha256),
                "properties": [{ "name": "applbuild:generated-from", "value": sources.join(" ") }],
            })
        }));
        components
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn declared(expression: &str, extracted: &[(&str, &str)]) -> Copyright {
        Copyright {
            licence: Licence::Declared {
                expression: expression.to_owned(),
                extracted: extracted
                    .iter()
                    .map(|(id, text)| ExtractedLicence {
                        id: (*id).to_owned(),
                        name: id.trim_start_matches("LicenseRef-").to_owned(),
                        text: (*text).to_owned(),
                    })
                    .collect(),
            },
            sha256: Some("ab".repeat(32)),
        }
    }

    fn package(name: &str, version: &str, source: &str, depends_on: &[&str]) -> SbomPackage {
        SbomPackage {
            name: name.to_owned(),
            version: version.to_owned(),
            architecture: "amd64".to_owned(),
            deb_sha256: hex::encode(Sha256::digest(name.as_bytes())),
            source_name: source.to_owned(),
            source_version: version.to_owned(),
            depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
            copyright: Copyright {
                licence: Licence::NoAssertion {
                    reason: "not DEP-5".to_owned(),
                },
                sha256: None,
            },
        }
    }

    /// A small image: four packages, one without a DEP-5 file, two using
    /// `LicenseRef-public-domain` for different texts, and two artifacts.
    pub(crate) fn sample() -> SbomInput {
        let mut libc = package("libc6", "2.36-9+deb12u10", "glibc", &[]);
        libc.copyright = declared(
            "LGPL-2.1-or-later AND LicenseRef-public-domain",
            &[("LicenseRef-public-domain", "Public domain, by its authors.")],
        );
        let mut zlib = package("zlib1g", "1:1.2.13.dfsg-1", "zlib", &["libc6"]);
        zlib.copyright = declared("Zlib", &[]);
        let mut stdcpp = package("libstdc++6", "12.2.0-14", "gcc-12", &["libc6"]);
        stdcpp.copyright = declared(
            "GPL-3.0-or-later WITH GCC-exception-3.1 AND (LicenseRef-public-domain OR MIT)",
            &[("LicenseRef-public-domain", "No copyright is claimed.")],
        );
        SbomInput {
            profile: "storage".to_owned(),
            distro: "debian-12".to_owned(),
            tool_version: "0.1.0".to_owned(),
            created: 1_700_000_000,
            packages: vec![
                zlib,
                libc,
                stdcpp,
                package("busybox", "1:1.35.0-4", "busybox", &["libc6"]),
            ],
            artifacts: vec![
                SbomArtifact {
                    file: "vmlinuz".to_owned(),
                    sha256: "cd".repeat(32),
                    generated_from: vec![],
                },
                SbomArtifact {
                    file: "initramfs.img".to_owned(),
                    sha256: "ef".repeat(32),
                    generated_from: vec!["busybox".into(), "libc6".into(), "vmlinuz".into()],
                },
            ],
        }
    }

    fn documents(input: &SbomInput) -> (Value, Value, String) {
        let dir = tempfile::tempdir().unwrap();
        let [spdx, cdx, csv] = write_sbom(input, dir.path()).unwrap();
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        (
            serde_json::from_str(&read(&spdx)).unwrap(),
            serde_json::from_str(&read(&cdx)).unwrap(),
            read(&csv),
        )
    }

    #[test]
    fn documents_are_deterministic_and_follow_the_input() {
        let input = sample();
        let mut shuffled = input.clone();
        shuffled.packages.reverse();
        shuffled.artifacts.reverse();
        let first = documents(&input);
        assert_eq!(first, documents(&input));
        let (spdx, cdx, _) = &first;
        let serial = cdx["serialNumber"].as_str().unwrap();
        assert!(serial.starts_with("urn:uuid:"), "{serial}");
        assert_eq!(spdx["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        assert_eq!(cdx["metadata"]["timestamp"], "2023-11-14T22:13:20Z");

        let mut changed = input.clone();
        changed.packages[0].version = "1:1.2.13.dfsg-2".to_owned();
        let other = documents(&changed);
        assert_ne!(other.1["serialNumber"], cdx["serialNumber"]);
        assert_ne!(other.0["documentNamespace"], spdx["documentNamespace"]);
    }

    #[test]
    fn one_component_per_package_with_its_purl() {
        let (spdx, cdx, csv) = documents(&sample());
        let libraries: Vec<&str> = cdx["components"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["type"] == "library")
            .map(|c| c["purl"].as_str().unwrap())
            .collect();
        assert_eq!(
            libraries,
            [
                "pkg:deb/debian/busybox@1%3A1.35.0-4?arch=amd64&distro=debian-12",
                "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64&distro=debian-12",
                "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64&distro=debian-12",
                "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64&distro=debian-12",
            ]
        );
        let purposes: Vec<&str> = spdx["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["primaryPackagePurpose"].as_str().unwrap())
            .collect();
        let count = |purpose| purposes.iter().filter(|p| **p == purpose).count();
        assert_eq!(
            (count("LIBRARY"), count("SOURCE"), count("FILE")),
            (4, 4, 2)
        );
        assert_eq!(csv.lines().count(), 5);
        assert!(
            csv.contains("\nbusybox,1:1.35.0-4,busybox,1:1.35.0-4,NOASSERTION,\n"),
            "{csv}"
        );
    }

    #[test]
    fn conflicting_licence_refs_are_renamed_in_the_later_package() {
        let (spdx, _, csv) = documents(&sample());
        let ids: Vec<&str> = spdx["hasExtractedLicensingInfos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["licenseId"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], "LicenseRef-public-domain");
        let renamed = ids[1];
        assert!(
            renamed.starts_with("LicenseRef-public-domain-"),
            "{renamed}"
        );
        assert!(csv.contains(&format!(
            "GPL-3.0-or-later WITH GCC-exception-3.1 AND ({renamed} OR MIT)"
        )));
        assert!(csv.contains("LGPL-2.1-or-later AND LicenseRef-public-domain,"));
    }

    #[test]
    fn unknown_references_are_errors() {
        let mut input = sample();
        input.packages[0].depends_on.push("libssl3".to_owned());
        let dir = tempfile::tempdir().unwrap();
        let error = write_sbom(&input, dir.path()).unwrap_err();
        assert!(error.to_string().contains("libssl3"), "{error}");
    }
}
