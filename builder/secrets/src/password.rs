//! Password hashes for `/etc/shadow`: SHA-512 crypt (`$6$`, 5000 rounds,
//! what glibc, BusyBox `login` and `openssl passwd -6` verify). The salt is
//! derived from the host name and the password, so the same inputs give
//! the same image bytes, and two nodes with one password still get
//! different hashes.

use sha2::{Digest, Sha256};

/// The alphabet of a crypt salt.
const SALT_ALPHABET: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Salt length: the most SHA-512 crypt uses.
const SALT_LEN: usize = 16;

/// The salt of `password`'s hash on host `scope`.
pub fn derived_salt(password: &str, scope: &str) -> String {
    let mut hasher = Sha256::new();
    for part in ["applbuild shadow salt", scope, password] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize()[..SALT_LEN]
        .iter()
        .map(|byte| char::from(SALT_ALPHABET[usize::from(byte % 64)]))
        .collect()
}

/// `$6$SALT$HASH` of `password` with `salt` (at most 16 characters of
/// [`SALT_ALPHABET`]).
pub fn sha512_crypt(password: &str, salt: &str) -> String {
    let params = sha_crypt::Sha512Params::default();
    let hash = sha_crypt::sha512_crypt_b64(password.as_bytes(), salt.as_bytes(), &params)
        .expect("the default rounds and a short salt are valid");
    format!("$6${salt}${hash}")
}

/// The hash of `password` for host `scope`, with its derived salt.
pub fn shadow_hash(password: &str, scope: &str) -> String {
    sha512_crypt(password, &derived_salt(password, scope))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_what_busybox_and_openssl_make() {
        // `busybox mkpasswd -m sha512 -S saltsaltsalt12 secretpass` and
        // `openssl passwd -6 -salt saltsaltsalt12 secretpass` both print this.
        assert_eq!(
            sha512_crypt("secretpass", "saltsaltsalt12"),
            "$6$saltsaltsalt12$U9GTgS1DRAhncIpZ.vfAbX5nB8GwwDnQf0m8Ia6S1bQ1mhWjzvNkv19Cnps4V8w8ZnuAeeutMwLVG2Ngy6Y9R1"
        );
    }

    #[test]
    fn salts_are_crypt_salts_that_differ_per_host() {
        let salt = derived_salt("applbuild-password", "neptune");
        assert_eq!(salt.len(), SALT_LEN);
        assert!(
            salt.bytes().all(|byte| SALT_ALPHABET.contains(&byte)),
            "{salt}"
        );
        assert_eq!(salt, derived_salt("applbuild-password", "neptune"));
        assert_ne!(salt, derived_salt("applbuild-password", "uranus"));
        let hash = shadow_hash("applbuild-password", "neptune");
        assert!(hash.starts_with(&format!("$6${salt}$")), "{hash}");
    }
}
