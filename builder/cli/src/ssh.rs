//! Operator access (`[ssh]`, docs/security.md#operator-access): what the
//! build adds to an image for dropbear. The host key comes from the secrets
//! store (so a node that boots from RAM keeps it across reboots and
//! rebuilds), the authorized keys from the profile; a test build adds the
//! test harness's key, derived from the same secret, to the authorized keys.

use crate::profile::Profile;
use applbuild_rootfs::rootfs::{RootfsError, RootfsTree};
use applbuild_secrets::Store;
use applbuild_secrets::ssh::{KeyPurpose, SshKey};

/// The Debian package with `dropbear` (and the `dbclient` the suite uses).
pub const DROPBEAR_PACKAGE: &str = "dropbear-bin";

/// Where the host key lies in the image (dropbear's `-r`).
pub const HOST_KEY_PATH: &str = "/etc/dropbear/dropbear_ed25519_host_key";

/// root's `authorized_keys` in the image.
pub const AUTHORIZED_KEYS_PATH: &str = "/root/.ssh/authorized_keys";

/// The comment of the test harness's line in a test build's `authorized_keys`.
pub const TEST_HARNESS_COMMENT: &str = "applbuild-test-harness@test-build";

/// The node's host name, which scopes its host key: one cluster secret,
/// a key per node.
fn host_name(profile: &Profile) -> &str {
    profile.hostname.as_deref().unwrap_or_default()
}

/// The host key of `profile` (none without `[ssh]`, or when the store
/// lacks the secret: the template context reports that). Nodes with the
/// same secret and different host names get different keys.
pub fn host_key(profile: &Profile, secrets: &Store) -> Option<SshKey> {
    let ssh = profile.ssh.as_ref()?;
    let value = secrets.get(&ssh.host_key_secret.name)?;
    Some(SshKey::derive(
        value,
        KeyPurpose::HostKey,
        host_name(profile),
    ))
}

/// The key with which the test harness logs in to a test build of a
/// profile whose host key secret has the value `host_key_secret`.
pub fn test_harness_key(host_key_secret: &str) -> SshKey {
    SshKey::derive(host_key_secret, KeyPurpose::TestHarnessClient, "")
}

/// The public half of `profile`'s host key as the manifest records it,
/// `ssh-ed25519 BASE64 root@HOSTNAME`: a `known_hosts` line after the
/// node's address.
pub fn host_key_public(profile: &Profile, secrets: &Store) -> Option<String> {
    let key = host_key(profile, secrets)?;
    Some(key.public_line(&format!("root@{}", host_name(profile))))
}

/// Adds the host key and root's `authorized_keys` (both 0600, in 0700
/// folders) to `tree` when `profile` has `[ssh]`.
pub fn add_files(
    tree: &mut RootfsTree,
    profile: &Profile,
    secrets: &Store,
) -> Result<(), RootfsError> {
    let (Some(ssh), Some(key)) = (&profile.ssh, host_key(profile, secrets)) else {
        return Ok(());
    };
    let mut lines = ssh.authorized_keys.clone();
    if profile.test_build {
        let secret = secrets.get(&ssh.host_key_secret.name).unwrap_or_default();
        lines.push(test_harness_key(secret).public_line(TEST_HARNESS_COMMENT));
    }
    let authorized: String = lines.iter().map(|line| format!("{line}\n")).collect();
    tree.add_dir("/etc/dropbear", 0o700, 0, 0)?;
    tree.add_file(HOST_KEY_PATH, key.dropbear_private_key(), 0o600, 0, 0)?;
    tree.add_dir("/root/.ssh", 0o700, 0, 0)?;
    tree.add_file(AUTHORIZED_KEYS_PATH, authorized.into_bytes(), 0o600, 0, 0)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::profile;
    use crate::services::tests::store_for;
    use applbuild_rootfs::deb_archive::EntryKind;

    fn project_profiles() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles")
    }

    fn file(tree: &RootfsTree, path: &str) -> (Vec<u8>, u32) {
        let node = tree.get(path).unwrap_or_else(|| panic!("no {path}"));
        match &node.kind {
            EntryKind::File(contents) => (contents.to_vec(), node.mode),
            other => panic!("{path} is {other:?}"),
        }
    }

    #[test]
    fn both_nodes_get_a_private_host_key_and_the_profiles_keys() {
        for name in ["storage", "hypervisor"] {
            let loaded = profile::load(&project_profiles(), name).unwrap();
            let store = store_for(&loaded);
            let mut tree = RootfsTree::new();
            add_files(&mut tree, &loaded.profile, &store).unwrap();
            let (key, mode) = file(&tree, HOST_KEY_PATH);
            assert_eq!(mode, 0o600);
            assert_eq!(
                key,
                host_key(&loaded.profile, &store)
                    .unwrap()
                    .dropbear_private_key()
            );
            let (authorized, mode) = file(&tree, AUTHORIZED_KEYS_PATH);
            assert_eq!(mode, 0o600);
            let expected: String = loaded
                .profile
                .ssh
                .as_ref()
                .unwrap()
                .authorized_keys
                .iter()
                .map(|line| format!("{line}\n"))
                .collect();
            assert_eq!(String::from_utf8(authorized).unwrap(), expected);
            assert_eq!(tree.get("/root/.ssh").unwrap().mode, 0o700);
        }
    }

    #[test]
    fn only_a_test_build_lets_the_harness_in() {
        let loaded = profile::load(&project_profiles(), "hypervisor").unwrap();
        let store = store_for(&loaded);
        let test = loaded.for_test_build();
        let mut tree = RootfsTree::new();
        add_files(&mut tree, &test.profile, &store).unwrap();
        let (authorized, _) = file(&tree, AUTHORIZED_KEYS_PATH);
        let text = String::from_utf8(authorized).unwrap();
        let secret = store.get("ssh-host-key").unwrap();
        let harness = test_harness_key(secret).public_line(TEST_HARNESS_COMMENT);
        assert!(text.ends_with(&format!("{harness}\n")), "{text}");

        let mut production = RootfsTree::new();
        add_files(&mut production, &loaded.profile, &store).unwrap();
        let (authorized, _) = file(&production, AUTHORIZED_KEYS_PATH);
        assert!(
            !String::from_utf8(authorized)
                .unwrap()
                .contains(TEST_HARNESS_COMMENT)
        );
    }

    #[test]
    fn the_host_key_follows_its_secret_and_names_the_host() {
        let loaded = profile::load(&project_profiles(), "storage").unwrap();
        let store = store_for(&loaded);
        let public = host_key_public(&loaded.profile, &store).unwrap();
        assert!(public.starts_with("ssh-ed25519 AAAA"), "{public}");
        assert!(public.ends_with(" root@neptune"), "{public}");
        let other = host_key_public(&loaded.profile, &store_for(&loaded)).unwrap();
        assert_ne!(public, other, "two stores, two random secrets, two keys");
        let hypervisor = profile::load(&project_profiles(), "hypervisor").unwrap();
        let other_node = host_key_public(&hypervisor.profile, &store).unwrap();
        assert_ne!(public, other_node, "one secret, a key per node");
        let guest = profile::load(&project_profiles(), "guest").unwrap();
        assert_eq!(host_key_public(&guest.profile, &store), None);
    }
}
