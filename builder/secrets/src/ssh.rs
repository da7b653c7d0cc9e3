//! SSH keys derived from a secret: a node's host key, stable across builds
//! and reboots of a RAM-booted node because it comes from the secrets store
//! and not from the node, and the test harness's client key of a test
//! build.
//!
//! The key is Ed25519: its 32-byte seed is SHA-256 of a purpose label, a
//! scope (the node's host name for a host key) and the secret's value, so
//! one cluster secret gives every node a host key of its own and the test
//! harness a key that is no node's. The private key is written in dropbear's own format (what
//! `dropbear -r` and `dbclient -i` read) and the public key as an OpenSSH
//! `authorized_keys` / `known_hosts` line. Both formats are a few lines of
//! SSH wire encoding (RFC 4251 strings); no maintained crate writes
//! dropbear's format.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

/// The SSH name of the key type.
pub const ED25519: &str = "ssh-ed25519";

/// What a derived key is for: the label hashed with the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// A node's SSH host key (dropbear's `-r` key).
    HostKey,
    /// The key with which the test harness logs in to a test build.
    TestHarnessClient,
}

impl KeyPurpose {
    fn label(self) -> &'static str {
        match self {
            Self::HostKey => "applbuild ssh host key ed25519",
            Self::TestHarnessClient => "applbuild test harness ssh client key ed25519",
        }
    }
}

/// An Ed25519 key pair derived from a secret.
#[derive(Clone)]
pub struct SshKey {
    signing: SigningKey,
}

impl std::fmt::Debug for SshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshKey({})", self.fingerprint())
    }
}

impl SshKey {
    /// The key for `purpose` within `scope` (a host name, or empty)
    /// derived from the secret `value`.
    pub fn derive(value: &str, purpose: KeyPurpose, scope: &str) -> Self {
        let mut hasher = Sha256::new();
        for part in [purpose.label(), scope] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hasher.update(value.as_bytes());
        Self::from_seed(hasher.finalize().into())
    }

    /// The key whose private seed is `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The public key's wire form: string `ssh-ed25519`, string of 32 bytes.
    pub fn public_blob(&self) -> Vec<u8> {
        let mut blob = Vec::new();
        put_string(&mut blob, ED25519.as_bytes());
        put_string(&mut blob, self.signing.verifying_key().as_bytes());
        blob
    }

    /// `ssh-ed25519 BASE64`, with ` comment` when `comment` is not empty:
    /// one line of `authorized_keys` or, after a host name, `known_hosts`.
    pub fn public_line(&self, comment: &str) -> String {
        let mut line = format!("{ED25519} {}", STANDARD.encode(self.public_blob()));
        if !comment.is_empty() {
            line.push(' ');
            line.push_str(comment);
        }
        line
    }

    /// `SHA256:...`, as `ssh-keygen -l` and `dropbearkey -y` print it.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.public_blob());
        format!("SHA256:{}", STANDARD_NO_PAD.encode(digest))
    }

    /// The private key in dropbear's format: string `ssh-ed25519`, then
    /// a string of 64 bytes, the seed followed by the public key.
    pub fn dropbear_private_key(&self) -> Vec<u8> {
        let mut pair = self.signing.to_bytes().to_vec();
        pair.extend(self.signing.verifying_key().as_bytes());
        let mut key = Vec::new();
        put_string(&mut key, ED25519.as_bytes());
        put_string(&mut key, &pair);
        key
    }
}

/// An RFC 4251 `string`: a big-endian u32 length, then the bytes.
fn put_string(buffer: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).expect("SSH strings here are short");
    buffer.extend(length.to_be_bytes());
    buffer.extend(bytes);
}

/// Why a line is not an OpenSSH public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    /// It is not `TYPE BASE64 [COMMENT]`.
    #[error("not an OpenSSH public key line `TYPE BASE64 [COMMENT]`")]
    Shape,
    /// The key type is not one dropbear 2022.83 accepts.
    #[error("key type `{0}` is not one of {types}", types = ACCEPTED_TYPES.join(", "))]
    Type(String),
    /// The key is not valid base64, or its inner type differs.
    #[error("the key data is not base64 of a `{0}` key")]
    Data(String),
    /// The comment holds a control character.
    #[error("the comment holds a control character")]
    Comment,
}

/// The public key types dropbear (bookworm's 2022.83) accepts.
pub const ACCEPTED_TYPES: &[&str] = &[
    ED25519,
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Checks that `line` is one OpenSSH public key whose data names its type.
pub fn check_public_key(line: &str) -> Result<(), PublicKeyError> {
    let mut fields = line.splitn(3, ' ');
    let (Some(kind), Some(data)) = (fields.next(), fields.next()) else {
        return Err(PublicKeyError::Shape);
    };
    if !ACCEPTED_TYPES.contains(&kind) {
        return Err(PublicKeyError::Type(kind.into()));
    }
    let blob = STANDARD
        .decode(data)
        .map_err(|_| PublicKeyError::Data(kind.into()))?;
    let inner = blob
        .get(..4)
        .map(|length| u32::from_be_bytes(length.try_into().expect("4 bytes")) as usize)
        .and_then(|length| blob.get(4..4 + length));
    if inner != Some(kind.as_bytes()) {
        return Err(PublicKeyError::Data(kind.into()));
    }
    if fields
        .next()
        .is_some_and(|comment| comment.chars().any(char::is_control))
    {
        return Err(PublicKeyError::Comment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8032, 7.1, TEST 1.
    fn rfc8032_key() -> SshKey {
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        SshKey::from_seed(seed.try_into().unwrap())
    }

    #[test]
    fn the_public_key_is_rfc_8032s_in_ssh_wire_form() {
        let blob = rfc8032_key().public_blob();
        assert_eq!(&blob[..15], b"\0\0\0\x0bssh-ed25519");
        assert_eq!(&blob[15..19], &[0, 0, 0, 32]);
        assert_eq!(
            blob[19..],
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
    }

    #[test]
    fn the_dropbear_key_is_type_then_seed_and_public_key() {
        let key = rfc8032_key();
        let private = key.dropbear_private_key();
        assert_eq!(&private[..15], b"\0\0\0\x0bssh-ed25519");
        assert_eq!(&private[15..19], &[0, 0, 0, 64]);
        assert_eq!(private[19..51], key.signing.to_bytes());
        assert_eq!(private[51..], key.public_blob()[19..]);
        assert_eq!(private.len(), 83);
    }

    #[test]
    fn keys_differ_by_secret_purpose_and_scope_and_repeat() {
        let derive = |value, purpose, scope| SshKey::derive(value, purpose, scope).public_blob();
        let host = SshKey::derive("applbuild-secret-1", KeyPurpose::HostKey, "neptune");
        let blob = host.public_blob();
        assert_eq!(
            blob,
            derive("applbuild-secret-1", KeyPurpose::HostKey, "neptune")
        );
        for other in [
            derive(
                "applbuild-secret-1",
                KeyPurpose::TestHarnessClient,
                "neptune",
            ),
            derive("applbuild-secret-1", KeyPurpose::HostKey, "uranus"),
            derive("applbuild-secret-2", KeyPurpose::HostKey, "neptune"),
        ] {
            assert_ne!(blob, other);
        }
        assert!(host.fingerprint().starts_with("SHA256:"));
        assert!(!format!("{host:?}").contains(&STANDARD.encode(host.signing.to_bytes())));
    }

    #[test]
    fn public_lines_are_checked() {
        let line = rfc8032_key().public_line("operator@example");
        assert!(line.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"));
        assert_eq!(check_public_key(&line), Ok(()));
        assert_eq!(check_public_key(&rfc8032_key().public_line("")), Ok(()));
        assert_eq!(check_public_key("ssh-ed25519"), Err(PublicKeyError::Shape));
        assert_eq!(
            check_public_key("ssh-dss AAAA"),
            Err(PublicKeyError::Type("ssh-dss".into()))
        );
        let renamed = line.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert_eq!(
            check_public_key(&renamed),
            Err(PublicKeyError::Data("ssh-rsa".into()))
        );
        assert_eq!(
            check_public_key("ssh-ed25519 !!!"),
            Err(PublicKeyError::Data("ssh-ed25519".into()))
        );
        assert_eq!(
            check_public_key(&format!("{line}\tx\u{7}")),
            Err(PublicKeyError::Comment)
        );
    }
}
