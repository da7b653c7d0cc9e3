//! `manifest.json` and `SHA256SUMS`: what an image is made of, so that a
//! build can be audited and compared byte for byte.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name of the manifest file in an output folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One package that went into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPackage {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA256 of the .deb.
    pub sha256: String,
    /// The suite it came from, e.g. `bookworm-security`.
    #[serde(default)]
    pub suite: String,
}

/// One file written to the output folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// File name in the output folder.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA256 of its contents.
    pub sha256: String,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Profile name.
    pub profile: String,
    /// SHA256 of the merged profile.
    pub profile_digest: String,
    /// SHA256 over the profile, the overlay and the locked package set: a
    /// `boot` whose inputs digest differs rebuilds first.
    pub inputs_digest: String,
    /// applbuild version that wrote it.
    pub applbuild_version: String,
    /// Suite and architecture.
    pub distribution: String,
    /// Kernel release (`uname -r` in the guest).
    pub kernel_release: String,
    /// SHA256 of the root file system tree (paths, modes, owners, contents).
    pub rootfs_digest: String,
    /// Kernel modules in the image, in load order.
    pub modules: Vec<String>,
    /// Packages, sorted by name.
    pub packages: Vec<ManifestPackage>,
    /// Output files, sorted by name.
    pub artifacts: Vec<Artifact>,
    /// The node's SSH host key (`ssh-ed25519 BASE64 root@HOST`), for an
    /// operator's `known_hosts`; absent for an image without SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<String>,
}

impl Manifest {
    /// Reads `dir/manifest.json`; `None` when absent or unreadable.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The recorded size of the artifact `file` (0 if the manifest has none).
    pub fn artifact_size(&self, file: &str) -> u64 {
        self.artifacts
            .iter()
            .find(|artifact| artifact.file == file)
            .map_or(0, |artifact| artifact.size)
    }

    /// Whether every artifact in `dir` still has the recorded size and hash.
    pub fn artifacts_intact(&self, dir: &Path) -> bool {
        self.artifacts.iter().all(|artifact| {
            let path = dir.join(&artifact.file);
            std::fs::metadata(&path).is_ok_and(|meta| meta.len() == artifact.size)
                && sha256_file(&path).is_ok_and(|hash| hash == artifact.sha256)
        })
    }

    /// The `SHA256SUMS` text (sha256sum's format) for the artifacts and the manifest.
    pub fn sha256sums(&self, manifest_json: &[u8]) -> String {
        let mut lines: BTreeMap<&str, String> = self
            .artifacts
            .iter()
            .map(|artifact| (artifact.file.as_str(), artifact.sha256.clone()))
            .collect();
        lines.insert(MANIFEST_FILE, hex::encode(Sha256::digest(manifest_json)));
        lines
            .into_iter()
            .map(|(file, hash)| format!("{hash}  {file}\n"))
            .collect()
    }
}

/// SHA256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path) -> Manifest {
        std::fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
        Manifest {
            profile: "storage".into(),
            profile_digest: "p".into(),
            inputs_digest: "i".into(),
            applbuild_version: "0".into(),
            distribution: "bookworm/amd64".into(),
            kernel_release: "6.1.0-50-amd64".into(),
            rootfs_digest: "r".into(),
            modules: vec![],
            packages: vec![],
            artifacts: vec![Artifact {
                file: "vmlinuz".into(),
                size: 6,
                sha256: sha256_file(&dir.join("vmlinuz")).unwrap(),
            }],
            ssh_host_key: None,
        }
    }

    #[test]
    fn artifact_size_is_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest(dir.path());
        assert_eq!(manifest.artifact_size("vmlinuz"), 6);
        assert_eq!(manifest.artifact_size("initrd.img"), 0);
    }

    #[test]
    fn detects_a_changed_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest(dir.path());
        assert!(manifest.artifacts_intact(dir.path()));
        std::fs::write(dir.path().join("vmlinuz"), b"kernfl").unwrap();
        assert!(!manifest.artifacts_intact(dir.path()));
    }

    #[test]
    fn sha256sums_lists_artifacts_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let sums = manifest(dir.path()).sha256sums(b"{}");
        let lines: Vec<&str> = sums.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("  manifest.json"));
        assert!(lines[1].starts_with("6923dd1b"), "{}", lines[1]);
        assert!(lines[1].ends_with("  vmlinuz"));
    }
}
