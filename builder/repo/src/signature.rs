//! Verifies an OpenPGP cleartext-signed file (a suite's `InRelease`) against
//! a keyring, the way `gpgv` does for apt.
//!
//! rPGP checks the cryptography of one signature against one key; it does
//! not decide whether that key may sign. That part is here: the key (or
//! signing subkey) must be bound to its primary key by a valid self- or
//! binding signature, must not be expired or revoked when the data
//! signature was made, and the data signature must not be dated in the
//! future.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{KeyFlags, RevocationCode, Signature, SignatureType, SubpacketData};
use pgp::types::{KeyDetails, Tag, Timestamp};

use applbuild_deb::release::format_date;

/// Debian's archive keyring as installed by `debian-archive-keyring`.
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Clocks of build machines and archive signers drift a little; a signature
/// made this far "in the future" is still accepted.
const CLOCK_SKEW: Duration = Duration::from_secs(10 * 60);

/// Why a keyring could not be used or a signed file was not accepted.
/// Every variant names the keyring or the signed file (path or URL).
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The keyring file could not be read.
    #[error("cannot read keyring {}: {source}", path.display())]
    ReadKeyring {
        /// The keyring path.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The keyring holds no usable public key.
    #[error("keyring {} holds no usable OpenPGP public key{}", path.display(), detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    EmptyKeyring {
        /// The keyring path.
        path: PathBuf,
        /// Why the first key failed to parse, if one did.
        detail: Option<String>,
    },
    /// The file is not an OpenPGP cleartext-signed message.
    #[error("{file}: not an OpenPGP cleartext-signed file: {reason}")]
    Malformed {
        /// The signed file (path or URL).
        file: String,
        /// What the parser rejected.
        reason: String,
    },
    /// The message carries no signature at all.
    #[error("{file}: no signature")]
    NoSignature {
        /// The signed file (path or URL).
        file: String,
    },
    /// None of the signatures was made by a key in the keyring.
    #[error("{file}: signed by {}, none of which is in keyring {}", issuers.join(", "), keyring.display())]
    NoMatchingKey {
        /// The signed file (path or URL).
        file: String,
        /// Key IDs or fingerprints named by the signatures.
        issuers: Vec<String>,
        /// The keyring searched.
        keyring: PathBuf,
    },
    /// A key from the keyring matched but no signature was acceptable.
    #[error("{file}: bad signature: {}", reasons.join("; "))]
    BadSignature {
        /// The signed file (path or URL).
        file: String,
        /// One entry per (signature, key) pair tried: key ID and what failed.
        reasons: Vec<String>,
    },
}

/// A set of public keys trusted to sign archive metadata.
#[derive(Debug, Clone)]
pub struct Keyring {
    path: PathBuf,
    keys: Vec<SignedPublicKey>,
}

/// A key that may have made a signature: a primary key, or a subkey together
/// with the primary key that must vouch for it.
enum Candidate<'a> {
    Primary(&'a SignedPublicKey),
    Subkey(&'a SignedPublicKey, &'a SignedPublicSubKey),
}

impl Keyring {
    /// Reads a keyring: concatenated binary public keys (`.gpg`, as apt
    /// uses) or one ASCII-armored block holding one or more keys.
    pub fn load(path: &Path) -> Result<Self, SignatureError> {
        let bytes = std::fs::read(path).map_err(|source| SignatureError::ReadKeyring {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses keyring bytes; `path` is only used in messages. Keys that do not
    /// parse (unsupported algorithms) are skipped, as gpgv skips them, as long
    /// as at least one key remains.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, SignatureError> {
        let armored = bytes.trim_ascii_start().starts_with(b"-----BEGIN PGP");
        let parsed = if armored {
            SignedPublicKey::from_armor_many(bytes).map(|(keys, _headers)| keys)
        } else {
            SignedPublicKey::from_bytes_many(bytes)
        };
        let empty = |detail: Option<String>| SignatureError::EmptyKeyring {
            path: path.to_path_buf(),
            detail,
        };
        let mut keys = Vec::new();
        let mut first_error = None;
        for key in parsed.map_err(|error| empty(Some(error.to_string())))? {
            match key {
                Ok(key) => keys.push(key),
                Err(error) => {
                    first_error.get_or_insert_with(|| error.to_string());
                }
            }
        }
        if keys.is_empty() {
            return Err(empty(first_error));
        }
        Ok(Self {
            path: path.to_path_buf(),
            keys,
        })
    }

    /// Verifies a cleartext-signed file (`file` names it in errors) and
    /// returns the signed text, dash-escaping undone, with `\n` line ends and
    /// a final newline. Succeeds when at least one signature verifies with a
    /// currently acceptable key from this keyring.
    pub fn verify_cleartext(&self, data: &[u8], file: &str) -> Result<String, SignatureError> {
        let now = SystemTime::now();
        let malformed = |reason: String| SignatureError::Malformed {
            file: file.to_string(),
            reason,
        };
        let text = std::str::from_utf8(data).map_err(|error| malformed(error.to_string()))?;
        let (message, _headers) = CleartextSignedMessage::from_string(text)
            .map_err(|error| malformed(error.to_string()))?;
        if message.signatures().is_empty() {
            return Err(SignatureError::NoSignature {
                file: file.to_string(),
            });
        }
        // What the signatures cover: dash-unescaped, trailing blanks trimmed,
        // CRLF line ends. Returning exactly this (with LF) means nothing
        // unsigned can ride along.
        let signed = message.signed_text();
        let mut issuers = Vec::new();
        let mut reasons = Vec::new();
        for signature in message.signatures() {
            issuers.push(issuer_label(signature));
            for candidate in self.candidates(signature) {
                match check(&candidate, signature, signed.as_bytes(), now) {
                    Ok(()) => {
                        let mut text = signed.replace("\r\n", "\n");
                        if !text.ends_with('\n') {
                            text.push('\n');
                        }
                        return Ok(text);
                    }
                    Err(reason) => {
                        reasons.push(format!("key {}: {reason}", candidate_label(&candidate)))
                    }
                }
            }
        }
        if reasons.is_empty() {
            return Err(SignatureError::NoMatchingKey {
                file: file.to_string(),
                issuers,
                keyring: self.path.clone(),
            });
        }
        Err(SignatureError::BadSignature {
            file: file.to_string(),
            reasons,
        })
    }

    /// Keys (primary or sub) whose ID or fingerprint the signature names.
    fn candidates<'a>(&'a self, signature: &Signature) -> Vec<Candidate<'a>> {
        let names = |details: &dyn KeyDetails| {
            signature
                .issuer_fingerprint()
                .contains(&&details.fingerprint())
                || signature
                    .issuer_key_id()
                    .contains(&&details.legacy_key_id())
        };
        let mut found = Vec::new();
        for key in &self.keys {
            if names(&key.primary_key) {
                found.push(Candidate::Primary(key));
            }
            for subkey in &key.public_subkeys {
                if names(&subkey.key) {
                    found.push(Candidate::Subkey(key, subkey));
                }
            }
        }
        found
    }
}

fn issuer_label(signature: &Signature) -> String {
    if let Some(fingerprint) = signature.issuer_fingerprint().first() {
        return format!("{fingerprint:X}");
    }
    match signature.issuer_key_id().first() {
        Some(id) => hex::encode_upper(id),
        None => "an unnamed key".to_string(),
    }
}

fn candidate_label(candidate: &Candidate<'_>) -> String {
    match candidate {
        Candidate::Primary(key) => hex::encode_upper(key.primary_key.legacy_key_id()),
        Candidate::Subkey(key, subkey) => format!(
            "{} (subkey of {})",
            hex::encode_upper(subkey.key.legacy_key_id()),
            hex::encode_upper(key.primary_key.legacy_key_id())
        ),
    }
}

fn date(timestamp: Timestamp) -> String {
    format_date(SystemTime::from(timestamp))
}

/// Checks one signature against one candidate key; the error says why it is
/// not acceptable.
fn check(
    candidate: &Candidate<'_>,
    signature: &Signature,
    signed: &[u8],
    now: SystemTime,
) -> Result<(), String> {
    let verified = match candidate {
        Candidate::Primary(key) => signature.verify(&key.primary_key, signed),
        Candidate::Subkey(_, subkey) => signature.verify(&subkey.key, signed),
    };
    verified.map_err(|error| format!("signature does not verify ({error})"))?;

    let made = signature
        .created()
        .ok_or("signature carries no creation time")?;
    if SystemTime::from(made) > now + CLOCK_SKEW {
        return Err(format!("signature is dated in the future ({})", date(made)));
    }
    if let Some(lifetime) = nonzero(signature.signature_expiration_time()) {
        let end = made.as_secs().saturating_add(lifetime);
        if SystemTime::from(Timestamp::from_secs(end)) <= now {
            return Err(format!(
                "signature expired on {}",
                date(Timestamp::from_secs(end))
            ));
        }
    }

    let key = match candidate {
        Candidate::Primary(key) | Candidate::Subkey(key, _) => *key,
    };
    let self_signature = primary_valid_at(key, made)?;
    let flags = match candidate {
        Candidate::Primary(_) => key_flags(self_signature),
        Candidate::Subkey(key, subkey) => key_flags(subkey_valid_at(key, subkey, made)?),
    };
    if flags.is_some_and(|flags| !flags.sign()) {
        return Err("key is not marked for signing".to_string());
    }
    Ok(())
}

fn nonzero(duration: Option<pgp::types::Duration>) -> Option<u32> {
    duration.map(|d| d.as_secs()).filter(|&secs| secs > 0)
}

/// The key flags a self-signature states, if it states any (absent flags
/// put no restriction on the key).
fn key_flags(signature: &Signature) -> Option<KeyFlags> {
    signature
        .config()?
        .hashed_subpackets()
        .find_map(|packet| match &packet.data {
            SubpacketData::KeyFlags(flags) => Some(flags.clone()),
            _ => None,
        })
}

/// Whether a valid revocation made at `revoked` takes effect for a signature
/// made at `made`: a key retired or superseded was fine before that date,
/// any other reason (compromise, none given) voids it for all time.
fn revocation_applies(revocation: &Signature, made: Timestamp) -> bool {
    match revocation.revocation_reason_code() {
        Some(RevocationCode::KeySuperseded | RevocationCode::KeyRetired) => {
            revocation.created().is_none_or(|revoked| revoked <= made)
        }
        _ => true,
    }
}

/// Fails unless a key created at `created` whose newest self-signature is
/// `newest` was alive at `made`.
fn alive_at(
    created: Timestamp,
    newest: &Signature,
    made: Timestamp,
    what: &str,
) -> Result<(), String> {
    if created > made {
        return Err(format!(
            "{what} was created on {}, after the signature",
            date(created)
        ));
    }
    if let Some(lifetime) = nonzero(newest.key_expiration_time()) {
        let end = Timestamp::from_secs(created.as_secs().saturating_add(lifetime));
        if end <= made {
            return Err(format!("{what} expired on {}", date(end)));
        }
    }
    Ok(())
}

fn newest<'a>(signatures: impl Iterator<Item = &'a Signature>) -> Option<&'a Signature> {
    signatures.max_by_key(|signature| signature.created())
}

/// The primary key's newest valid self-signature (user ID certification or
/// direct-key signature); it carries the key's current expiry and flags.
fn primary_self_signature(key: &SignedPublicKey) -> Result<&Signature, String> {
    let primary = &key.primary_key;
    let certifications = key.details.users.iter().flat_map(|user| {
        user.signatures
            .iter()
            .filter(|sig| {
                sig.is_certification() && sig.typ() != Some(SignatureType::CertRevocation)
            })
            .filter(move |sig| {
                sig.verify_certification(primary, Tag::UserId, &user.id)
                    .is_ok()
            })
    });
    let direct = key
        .details
        .direct_signatures
        .iter()
        .filter(|sig| sig.typ() == Some(SignatureType::Key) && sig.verify_key(primary).is_ok());
    newest(certifications.chain(direct))
        .ok_or_else(|| "primary key has no valid self-signature".to_string())
}

/// Fails unless the primary key is self-signed, unrevoked and unexpired at
/// `made`; returns its newest self-signature.
fn primary_valid_at(key: &SignedPublicKey, made: Timestamp) -> Result<&Signature, String> {
    let primary = &key.primary_key;
    let revoked = key.details.revocation_signatures.iter().any(|revocation| {
        revocation.typ() == Some(SignatureType::KeyRevocation)
            && revocation.verify_key(primary).is_ok()
            && revocation_applies(revocation, made)
    });
    if revoked {
        return Err("primary key is revoked".to_string());
    }
    let self_signature = primary_self_signature(key)?;
    alive_at(primary.created_at(), self_signature, made, "primary key")?;
    Ok(self_signature)
}

/// Fails unless the subkey is bound for signing (binding signature with the
/// sign flag and a valid back-signature), unrevoked and unexpired at `made`;
/// returns its newest binding signature.
fn subkey_valid_at<'a>(
    key: &SignedPublicKey,
    subkey: &'a SignedPublicSubKey,
    made: Timestamp,
) -> Result<&'a Signature, String> {
    let primary = &key.primary_key;
    let verified = |sig: &&Signature| sig.verify_subkey_binding(primary, &subkey.key).is_ok();
    let revoked = subkey
        .signatures
        .iter()
        .filter(|sig| sig.typ() == Some(SignatureType::SubkeyRevocation))
        .filter(verified)
        .any(|revocation| revocation_applies(revocation, made));
    if revoked {
        return Err("subkey is revoked".to_string());
    }
    let bindings = subkey
        .signatures
        .iter()
        .filter(|sig| sig.typ() == Some(SignatureType::SubkeyBinding))
        .filter(verified)
        .filter(|sig| key_flags(sig).is_some_and(|flags| flags.sign()))
        .filter(|sig| {
            sig.embedded_signature().is_some_and(|back| {
                back.verify_primary_key_binding(&subkey.key, primary)
                    .is_ok()
            })
        });
    let binding = newest(bindings).ok_or("subkey has no valid binding signature for signing")?;
    alive_at(subkey.key.created_at(), binding, made, "subkey")?;
    Ok(binding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgp::composed::{KeyType, SecretKeyParamsBuilder, SignedSecretKey};
    use pgp::packet::{SignatureConfig, Subpacket};
    use pgp::ser::Serialize;
    use pgp::types::Password;

    /// bookworm's InRelease as the archive published it (test data).
    const DEBIAN_INRELEASE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cli/tests/data/bookworm-InRelease"
    );

    /// Host files the Debian test needs; missing ones fail under CI and are
    /// reported (not silently skipped) elsewhere.
    fn host_file(path: &str) -> Option<PathBuf> {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Some(path);
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{} is missing; CI must provide it", path.display());
        }
        eprintln!(
            "SKIPPED: {} is missing (scripts/host-setup installs debian-archive-keyring)",
            path.display()
        );
        None
    }

    fn generate(created: Timestamp) -> SignedSecretKey {
        let mut params = SecretKeyParamsBuilder::default();
        params
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .created_at(created)
            .primary_user_id("Test Archive <archive@example.invalid>".into());
        params
            .build()
            .unwrap()
            .generate(rand::thread_rng())
            .unwrap()
    }

    fn keyring_of(keys: &[&SignedSecretKey]) -> Keyring {
        let mut bytes = Vec::new();
        for key in keys {
            SignedPublicKey::from((*key).clone())
                .to_writer(&mut bytes)
                .unwrap();
        }
        Keyring::from_bytes(&bytes, Path::new("test.gpg")).unwrap()
    }

    fn sign_at(key: &SignedSecretKey, text: &str, created: Timestamp) -> Vec<u8> {
        let mut config =
            SignatureConfig::from_key(rand::thread_rng(), &key.primary_key, SignatureType::Text)
                .unwrap();
        config.hashed_subpackets = vec![
            Subpacket::regular(SubpacketData::SignatureCreationTime(created)).unwrap(),
            Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint())).unwrap(),
        ];
        config.unhashed_subpackets =
            vec![Subpacket::regular(SubpacketData::IssuerKeyId(key.legacy_key_id())).unwrap()];
        let message =
            CleartextSignedMessage::new(text, config, &key.primary_key, &Password::empty())
                .unwrap();
        message.to_armored_bytes(Default::default()).unwrap()
    }

    fn ago(secs: u32) -> Timestamp {
        Timestamp::from_secs(Timestamp::now().as_secs() - secs)
    }

    const TEXT: &str = "Origin: Test\nCodename: bookworm\n- dash line\n";

    #[test]
    fn debian_inrelease_verifies_with_the_archive_keyring() {
        let (Some(keyring), Some(inrelease)) =
            (host_file(DEFAULT_KEYRING), host_file(DEBIAN_INRELEASE))
        else {
            return;
        };
        let keyring = Keyring::load(&keyring).unwrap();
        let data = std::fs::read(&inrelease).unwrap();
        let text = keyring.verify_cleartext(&data, "InRelease").unwrap();
        assert!(text.contains("\nCodename: bookworm\n"), "{}", &text[..200]);
        assert!(text.starts_with("Origin: Debian\n"));
        assert!(!text.contains("BEGIN PGP"));
        let release = applbuild_deb::release::Release::parse(&text, "InRelease").unwrap();
        assert_eq!(release.codename.as_deref(), Some("bookworm"));
        assert!(release.acquire_by_hash);
        let packages = &release.sha256["main/binary-amd64/Packages.xz"];
        assert!(packages.size > 1_000_000, "{packages:?}");

        // One byte of the signed text changed: every signature must fail.
        let at = data
            .windows(17)
            .position(|w| w == b"Codename: bookwor")
            .unwrap()
            + 10;
        let mut tampered = data.clone();
        tampered[at] = b'c';
        let error = keyring
            .verify_cleartext(&tampered, "tampered/InRelease")
            .unwrap_err();
        assert!(
            matches!(error, SignatureError::BadSignature { .. }),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .starts_with("tampered/InRelease: bad signature"),
            "{error}"
        );

        // A keyring without Debian's keys: the issuers are named.
        let other = keyring_of(&[&generate(ago(60))]);
        let error = other.verify_cleartext(&data, "InRelease").unwrap_err();
        let SignatureError::NoMatchingKey { issuers, .. } = &error else {
            panic!("{error}");
        };
        assert!(!issuers.is_empty());
        assert!(error.to_string().contains("test.gpg"), "{error}");
    }

    #[test]
    fn good_signature_returns_the_unescaped_text() {
        let key = generate(ago(3600));
        let signed = sign_at(&key, TEXT, ago(10));
        let text = keyring_of(&[&key])
            .verify_cleartext(&signed, "InRelease")
            .unwrap();
        assert_eq!(text, TEXT);
    }

    #[test]
    fn armored_keyrings_with_several_keys_are_read() {
        let first = generate(ago(3600));
        let second = generate(ago(3600));
        let public: Vec<SignedPublicKey> = [&first, &second]
            .map(|key| SignedPublicKey::from(key.clone()))
            .into();
        let mut armored = b"\n".to_vec();
        pgp::armor::write(
            &public,
            pgp::armor::BlockType::PublicKey,
            &mut armored,
            None,
            true,
        )
        .unwrap();
        let keyring = Keyring::from_bytes(&armored, Path::new("k.asc"))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(keyring.keys.len(), 2);
        let signed = sign_at(&second, TEXT, ago(10));
        assert_eq!(
            keyring.verify_cleartext(&signed, "InRelease").unwrap(),
            TEXT
        );
    }

    #[test]
    fn tampered_text_is_rejected() {
        let key = generate(ago(3600));
        let signed = String::from_utf8(sign_at(&key, TEXT, ago(10))).unwrap();
        let tampered = signed.replace("Codename: bookworm", "Codename: bookwarm");
        let error = keyring_of(&[&key])
            .verify_cleartext(tampered.as_bytes(), "dists/x/InRelease")
            .unwrap_err();
        assert!(
            matches!(error, SignatureError::BadSignature { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("dists/x/InRelease"));
    }

    #[test]
    fn unknown_signer_is_named() {
        let signer = generate(ago(3600));
        let trusted = generate(ago(3600));
        let signed = sign_at(&signer, TEXT, ago(10));
        let error = keyring_of(&[&trusted])
            .verify_cleartext(&signed, "InRelease")
            .unwrap_err();
        let expected = format!("{:X}", signer.fingerprint());
        assert!(error.to_string().contains(&expected), "{error}");
    }

    #[test]
    fn signature_from_the_future_is_rejected() {
        let key = generate(ago(3600));
        let future = Timestamp::from_secs(Timestamp::now().as_secs() + 86_400);
        let signed = sign_at(&key, TEXT, future);
        let error = keyring_of(&[&key])
            .verify_cleartext(&signed, "InRelease")
            .unwrap_err();
        assert!(error.to_string().contains("dated in the future"), "{error}");
    }

    #[test]
    fn signature_older_than_the_key_is_rejected() {
        let key = generate(ago(60));
        let signed = sign_at(&key, TEXT, ago(3600));
        let error = keyring_of(&[&key])
            .verify_cleartext(&signed, "InRelease")
            .unwrap_err();
        assert!(error.to_string().contains("after the signature"), "{error}");
    }

    /// Adds a direct-key self-signature made at `at` carrying `extra`.
    fn add_direct(
        key: &SignedSecretKey,
        typ: SignatureType,
        at: Timestamp,
        extra: SubpacketData,
    ) -> SignedPublicKey {
        let mut public = SignedPublicKey::from(key.clone());
        let mut config =
            SignatureConfig::from_key(rand::thread_rng(), &key.primary_key, typ).unwrap();
        config.hashed_subpackets = vec![
            Subpacket::regular(SubpacketData::SignatureCreationTime(at)).unwrap(),
            Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint())).unwrap(),
            Subpacket::regular(extra).unwrap(),
        ];
        let signature = config
            .sign_key(
                &key.primary_key,
                &Password::empty(),
                &key.primary_key.public_key(),
            )
            .unwrap();
        match typ {
            SignatureType::KeyRevocation => public.details.revocation_signatures.push(signature),
            _ => public.details.direct_signatures.push(signature),
        }
        public
    }

    fn keyring_from_public(key: &SignedPublicKey) -> Keyring {
        let mut bytes = Vec::new();
        key.to_writer(&mut bytes).unwrap();
        Keyring::from_bytes(&bytes, Path::new("test.gpg")).unwrap()
    }

    #[test]
    fn expired_key_is_rejected_but_earlier_signatures_stand() {
        // Created two hours ago, valid for one hour (stated by a self-signature
        // newer than the user ID's).
        let key = generate(ago(7200));
        let later = Timestamp::from_secs(Timestamp::now().as_secs() + 5);
        let expiring = add_direct(
            &key,
            SignatureType::Key,
            later,
            SubpacketData::KeyExpirationTime(pgp::types::Duration::from_secs(3600)),
        );
        let keyring = keyring_from_public(&expiring);

        let error = keyring
            .verify_cleartext(&sign_at(&key, TEXT, ago(10)), "InRelease")
            .unwrap_err();
        assert!(error.to_string().contains("primary key expired"), "{error}");
        assert_eq!(
            keyring
                .verify_cleartext(&sign_at(&key, TEXT, ago(5400)), "InRelease")
                .unwrap(),
            TEXT
        );
    }

    #[test]
    fn revoked_key_is_rejected() {
        let key = generate(ago(7200));
        let compromised = add_direct(
            &key,
            SignatureType::KeyRevocation,
            ago(60),
            SubpacketData::RevocationReason(RevocationCode::KeyCompromised, "stolen".into()),
        );
        let error = keyring_from_public(&compromised)
            .verify_cleartext(&sign_at(&key, TEXT, ago(3600)), "InRelease")
            .unwrap_err();
        assert!(error.to_string().contains("revoked"), "{error}");

        // Retired an hour ago: signatures made before that still count.
        let retired = add_direct(
            &key,
            SignatureType::KeyRevocation,
            ago(3600),
            SubpacketData::RevocationReason(RevocationCode::KeyRetired, "old".into()),
        );
        let keyring = keyring_from_public(&retired);
        assert!(
            keyring
                .verify_cleartext(&sign_at(&key, TEXT, ago(5400)), "InRelease")
                .is_ok()
        );
        assert!(
            keyring
                .verify_cleartext(&sign_at(&key, TEXT, ago(60)), "InRelease")
                .is_err()
        );
    }

    #[test]
    fn unsigned_input_and_empty_keyrings_are_errors() {
        let key = generate(ago(3600));
        let error = keyring_of(&[&key])
            .verify_cleartext(TEXT.as_bytes(), "Release")
            .unwrap_err();
        assert!(matches!(error, SignatureError::Malformed { .. }), "{error}");
        assert!(error.to_string().starts_with("Release: "));

        let error = Keyring::from_bytes(b"not a key", Path::new("/x/bad.gpg")).unwrap_err();
        assert!(error.to_string().contains("/x/bad.gpg"), "{error}");
        let error = Keyring::load(Path::new("/nonexistent/keyring.gpg")).unwrap_err();
        assert!(matches!(error, SignatureError::ReadKeyring { .. }));
    }
}
