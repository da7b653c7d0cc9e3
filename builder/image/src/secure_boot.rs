//! Secure Boot: Authenticode signatures on the EFI binaries (systemd-boot
//! and the UKI), so a server whose `db` holds the certificate boots them
//! with Secure Boot enforced.
//!
//! Signed by `osslsigncode` (Debian's `osslsigncode`), not `sbsign`:
//! `sbsign` puts the current time into the signature's authenticated
//! attributes, so two builds differ; `osslsigncode -time` fixes the signing
//! time, and RSA PKCS#1 v1.5 signatures are deterministic, so the same key
//! and the same inputs give the same bytes. UEFI does not check the signing
//! time. No maintained Rust crate writes Authenticode signatures.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The host tool that signs.
pub const OSSLSIGNCODE: &str = "osslsigncode";

/// The signing time written into every signature (the Unix epoch): fixed,
/// so that signing is reproducible.
pub const SIGNING_TIME: u64 = 0;

/// A PEM private key (unencrypted) and the PEM certificate that goes with it.
#[derive(Debug, Clone, Copy)]
pub struct SigningKey<'a> {
    /// The private key.
    pub key: &'a Path,
    /// The certificate the servers' `db` holds.
    pub cert: &'a Path,
}

/// What can go wrong signing.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The key or the certificate is not a readable file.
    #[error("Secure Boot {what} {path}: {source}")]
    KeyFile {
        /// `key` or `certificate`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A work file could not be written or read.
    #[error("cannot write or read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `osslsigncode` could not be run.
    #[error(
        "cannot run {OSSLSIGNCODE}: {0} (Debian package osslsigncode: scripts/host-setup installs it)"
    )]
    Spawn(io::Error),
    /// `osslsigncode` refused to sign.
    #[error("{OSSLSIGNCODE} could not sign {name} with {key}: {output}")]
    Sign {
        /// The binary being signed.
        name: String,
        /// The key.
        key: PathBuf,
        /// What osslsigncode said.
        output: String,
    },
}

/// The PE image `unsigned`, signed with `key` (SHA-256 Authenticode).
/// `name` names the binary in errors; work files go into `work_dir` and are
/// removed.
pub fn sign_pe(
    unsigned: &[u8],
    name: &str,
    key: SigningKey,
    work_dir: &Path,
) -> Result<Vec<u8>, SigningError> {
    check_readable("key", key.key)?;
    check_readable("certificate", key.cert)?;
    let input = work_dir.join(format!("{name}.unsigned"));
    let output = work_dir.join(format!("{name}.signed"));
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SigningError::Io { path, source }
    };
    std::fs::write(&input, unsigned).map_err(io_error(&input))?;
    let result = Command::new(OSSLSIGNCODE)
        .args(["sign", "-h", "sha256", "-time", &SIGNING_TIME.to_string()])
        .arg("-key")
        .arg(key.key)
        .arg("-certs")
        .arg(key.cert)
        .arg("-in")
        .arg(&input)
        .arg("-out")
        .arg(&output)
        .output()
        .map_err(SigningError::Spawn)?;
    std::fs::remove_file(&input).map_err(io_error(&input))?;
    if !result.status.success() {
        let mut said = String::from_utf8_lossy(&result.stdout).into_owned();
        said.push_str(&String::from_utf8_lossy(&result.stderr));
        return Err(SigningError::Sign {
            name: name.into(),
            key: key.key.to_path_buf(),
            output: said.trim().to_owned(),
        });
    }
    let signed = std::fs::read(&output).map_err(io_error(&output))?;
    std::fs::remove_file(&output).map_err(io_error(&output))?;
    Ok(signed)
}

fn check_readable(what: &'static str, path: &Path) -> Result<(), SigningError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| SigningError::KeyFile {
            what,
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's `ovmf` snakeoil key, enrolled in `OVMF_VARS_4M.snakeoil.fd`.
    pub(crate) const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
    /// Its certificate.
    pub(crate) const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

    /// The host tools of this test (osslsigncode, sbverify, openssl, the
    /// ovmf key); missing: fails under CI=true, else `false` after SKIPPED.
    fn have_tools() -> bool {
        let tools = [OSSLSIGNCODE, "sbverify", "openssl"];
        let missing: Vec<&str> = tools
            .into_iter()
            .filter(|tool| Command::new(tool).arg("--help").output().is_err())
            .chain((!Path::new(SNAKEOIL_KEY).is_file()).then_some(SNAKEOIL_KEY))
            .collect();
        if missing.is_empty() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "missing {missing:?}: run scripts/host-setup (osslsigncode, sbsigntool, ovmf)"
        );
        eprintln!("SKIPPED: missing {missing:?} (scripts/host-setup installs them)");
        false
    }

    /// `systemd-bootx64.efi` from the `systemd-boot-efi` package that
    /// `applbuild.lock` pins.
    fn systemd_boot() -> Result<Vec<u8>, applbuild_testdata::Missing> {
        let deb = applbuild_testdata::locked_deb("systemd-boot-efi")?;
        Ok(crate::uki::tests::file_from_deb(
            &deb.path,
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        ))
    }

    /// The snakeoil key without its passphrase (`snakeoil`, README.Debian).
    fn plain_snakeoil_key(dir: &Path) -> PathBuf {
        let plain = dir.join("snakeoil.key");
        let status = Command::new("openssl")
            .args([
                "pkey",
                "-passin",
                "pass:snakeoil",
                "-in",
                SNAKEOIL_KEY,
                "-out",
            ])
            .arg(&plain)
            .status()
            .unwrap();
        assert!(status.success());
        plain
    }

    /// Signing the real systemd-boot twice gives identical bytes that
    /// `sbverify` accepts with the snakeoil certificate.
    #[test]
    fn signatures_verify_and_are_reproducible() {
        if !have_tools() {
            return;
        }
        let Some(unsigned) = applbuild_testdata::or_skip(systemd_boot()) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let key_path = plain_snakeoil_key(dir.path());
        let key = SigningKey {
            key: &key_path,
            cert: Path::new(SNAKEOIL_CERT),
        };
        let first = sign_pe(&unsigned, "systemd-bootx64.efi", key, dir.path()).unwrap();
        let second = sign_pe(&unsigned, "systemd-bootx64.efi", key, dir.path()).unwrap();
        assert_eq!(first, second, "two signatures differ");
        let verify = sbverify(dir.path(), &first);
        assert!(verify.status.success(), "{verify:?}");
        let refused = sbverify(dir.path(), &unsigned);
        assert!(
            !refused.status.success(),
            "sbverify accepted an unsigned binary"
        );
    }

    /// `sbverify --cert <snakeoil>` on `binary`, written into `dir`.
    fn sbverify(dir: &Path, binary: &[u8]) -> std::process::Output {
        let path = dir.join("to-verify.efi");
        std::fs::write(&path, binary).unwrap();
        Command::new("sbverify")
            .args(["--cert", SNAKEOIL_CERT])
            .arg(&path)
            .output()
            .unwrap()
    }

    /// A UKI made from Debian's stub, signed, verifies with `sbverify`,
    /// which hashes the sections as UEFI firmware does: no gap between
    /// sections escapes the hash.
    #[test]
    fn a_signed_uki_verifies_as_the_firmware_hashes_it() {
        if !have_tools() {
            return;
        }
        let Some(deb) =
            applbuild_testdata::or_skip(applbuild_testdata::locked_deb("systemd-boot-efi"))
        else {
            return;
        };
        let stub = crate::uki::tests::file_from_deb(
            &deb.path,
            "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        );
        let (linux, initrd) = (vec![0x4Du8; 1 << 20], vec![0x07u8; 1 << 19]);
        let sections = crate::uki::UkiSections {
            osrel: b"ID=debian\n",
            uname: b"6.1.0-50-amd64",
            cmdline: b"console=ttyS0",
            initrd: &initrd,
            linux: &linux,
        };
        let uki = crate::uki::build_uki(&stub, &sections).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key_path = plain_snakeoil_key(dir.path());
        let key = SigningKey {
            key: &key_path,
            cert: Path::new(SNAKEOIL_CERT),
        };
        let signed = sign_pe(&uki, "uki.efi", key, dir.path()).unwrap();
        let verify = sbverify(dir.path(), &signed);
        assert!(verify.status.success(), "{verify:?}");
    }

    /// A missing key is named before anything runs.
    #[test]
    fn a_missing_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey {
            key: &dir.path().join("none.key"),
            cert: Path::new(SNAKEOIL_CERT),
        };
        let error = sign_pe(b"MZ", "x.efi", key, dir.path()).unwrap_err();
        assert!(
            matches!(error, SigningError::KeyFile { what: "key", .. }),
            "{error}"
        );
        assert!(error.to_string().contains("none.key"), "{error}");
    }
}
