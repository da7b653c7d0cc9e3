//! The console login (`[console]`, docs/security.md#operator-access):
//! root's `/etc/shadow` entry. With `root_password_secret`, root's password
//! is that secret (the image holds its SHA-512 crypt hash, salted per host)
//! and the console script runs a login prompt; without it root has no
//! password (`*`) and the console takes no input.

use applbuild_rootfs::deb_archive::EntryKind;
use applbuild_rootfs::rootfs::{RootfsError, RootfsTree};
use applbuild_secrets::Store;

use crate::profile::Profile;

/// Where the password hashes lie; private to root.
pub const SHADOW_PATH: &str = "/etc/shadow";

/// root's password hash for `profile`, if it has a console login and the
/// store has the password.
pub fn root_password_hash(profile: &Profile, secrets: &Store) -> Option<String> {
    let console = profile.console.as_ref()?;
    let password = secrets.get(&console.root_password_secret.name)?;
    let host = profile.hostname.as_deref().unwrap_or_default();
    Some(applbuild_secrets::password::shadow_hash(password, host))
}

/// `shadow` with root's password field set to `hash`.
fn with_root_hash(shadow: &str, hash: &str) -> String {
    shadow
        .lines()
        .map(|line| match line.split_once(':') {
            Some(("root", rest)) => {
                let after_password = rest.split_once(':').map_or("", |(_, after)| after);
                format!("root:{hash}:{after_password}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect()
}

/// Makes `/etc/shadow` private (0600) and, with a console login, sets
/// root's password hash in it.
pub fn add_files(
    tree: &mut RootfsTree,
    profile: &Profile,
    secrets: &Store,
) -> Result<(), RootfsError> {
    let Some(EntryKind::File(contents)) = tree.get(SHADOW_PATH).map(|node| &node.kind) else {
        return Ok(());
    };
    let shadow = String::from_utf8_lossy(contents).into_owned();
    let shadow = match root_password_hash(profile, secrets) {
        Some(hash) => with_root_hash(&shadow, &hash),
        None => shadow,
    };
    tree.add_file(SHADOW_PATH, shadow.into_bytes(), 0o600, 0, 0)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::profile;

    const SHADOW: &str = "root:*:0:0:99999:7:::\ndaemon:*:0:0:99999:7:::\n";

    fn tree_with_shadow() -> RootfsTree {
        let mut tree = RootfsTree::new();
        tree.add_file(SHADOW_PATH, SHADOW.as_bytes().to_vec(), 0o644, 0, 0)
            .unwrap();
        tree
    }

    fn shadow_of(tree: &RootfsTree) -> (String, u32) {
        let node = tree.get(SHADOW_PATH).unwrap();
        match &node.kind {
            EntryKind::File(contents) => (String::from_utf8(contents.to_vec()).unwrap(), node.mode),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_console_login_sets_roots_hash_and_nothing_else() {
        let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles");
        let loaded = profile::load(&profiles, "storage").unwrap();
        let store = crate::services::tests::store_for(&loaded);
        let mut tree = tree_with_shadow();
        add_files(&mut tree, &loaded.profile, &store).unwrap();
        let (shadow, mode) = shadow_of(&tree);
        assert_eq!(mode, 0o600);
        let hash = root_password_hash(&loaded.profile, &store).unwrap();
        assert!(hash.starts_with("$6$"), "{hash}");
        assert_eq!(
            shadow,
            format!("root:{hash}:0:0:99999:7:::\ndaemon:*:0:0:99999:7:::\n")
        );
        let name = &loaded
            .profile
            .console
            .as_ref()
            .unwrap()
            .root_password_secret
            .name;
        assert!(!shadow.contains(store.get(name).unwrap()));
    }

    #[test]
    fn without_a_console_login_root_has_no_password() {
        let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles");
        let guest = profile::load(&profiles, "guest").unwrap();
        let store = Store::empty(Path::new("test-secrets.toml"));
        let mut tree = tree_with_shadow();
        add_files(&mut tree, &guest.profile, &store).unwrap();
        assert_eq!(shadow_of(&tree), (SHADOW.to_string(), 0o600));
    }
}
