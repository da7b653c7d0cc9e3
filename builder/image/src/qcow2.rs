//! The qcow2 copy of a raw disk image, for hypervisors and clouds that take
//! qcow2 (`<profile>.qcow2`).
//!
//! Written by `qemu-img convert` (Debian's `qemu-utils`, which the host
//! already has to boot the images): qcow2's refcount tables, L1/L2 tables
//! and feature bits are QEMU's own format, and no maintained Rust crate
//! writes it. One coroutine (`-m 1`) and in-order writes make the cluster
//! allocation, and so the file, the same on every run; holes in the raw
//! image stay unallocated. The clusters are not compressed: the image's
//! data is a zstd initramfs and a compressed kernel already.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The host tool that writes qcow2.
pub const QEMU_IMG: &str = "qemu-img";

/// What can go wrong writing the qcow2 copy.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// `qemu-img` could not be run.
    #[error(
        "cannot run {QEMU_IMG} to write {output}: {source} (Debian package qemu-utils: scripts/host-setup installs it)"
    )]
    Spawn {
        /// The qcow2 file that was to be written.
        output: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `qemu-img convert` failed.
    #[error("{QEMU_IMG} convert {input} -> {output} failed: {stderr}")]
    Convert {
        /// The raw image.
        input: PathBuf,
        /// The qcow2 file.
        output: PathBuf,
        /// What qemu-img said.
        stderr: String,
    },
}

/// Writes `output` (replaced if present), the qcow2 version 3 copy of the
/// raw image `input`.
pub fn write_qcow2(input: &Path, output: &Path) -> Result<(), Qcow2Error> {
    let result = Command::new(QEMU_IMG)
        .args(["convert", "-q", "-m", "1", "-f", "raw", "-O", "qcow2"])
        .args(["-o", "compat=1.1,cluster_size=65536"])
        .arg(input)
        .arg(output)
        .output()
        .map_err(|source| Qcow2Error::Spawn {
            output: output.to_path_buf(),
            source,
        })?;
    if !result.status.success() {
        return Err(Qcow2Error::Convert {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            stderr: String::from_utf8_lossy(&result.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// `qemu-img` on PATH; missing: fails under CI=true, else `false` after
    /// a SKIPPED line.
    fn have_qemu_img() -> bool {
        let found = Command::new(QEMU_IMG).arg("--version").output().is_ok();
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "qemu-img is missing: run scripts/host-setup (Debian package qemu-utils)"
            );
            eprintln!(
                "SKIPPED: qemu-img is not installed (scripts/host-setup installs qemu-utils)"
            );
        }
        found
    }

    /// A sparse 8 MiB raw image with data at its start and near its end.
    fn raw_image(dir: &Path) -> PathBuf {
        let path = dir.join("disk.img");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(8 << 20).unwrap();
        file.write_all_at(b"first sector", 0).unwrap();
        file.write_all_at(&[0xA5; 4096], (7 << 20) + 512).unwrap();
        path
    }

    /// The copy holds the same bytes (qemu-img compare), is consistent
    /// (qemu-img check), and two conversions give identical files.
    #[test]
    fn the_copy_is_identical_consistent_and_reproducible() {
        if !have_qemu_img() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_image(dir.path());
        let first = dir.path().join("first.qcow2");
        let second = dir.path().join("second.qcow2");
        write_qcow2(&raw, &first).unwrap();
        write_qcow2(&raw, &second).unwrap();
        assert_eq!(
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap()
        );

        let compare = Command::new(QEMU_IMG)
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(&raw)
            .arg(&first)
            .output()
            .unwrap();
        assert!(compare.status.success(), "{compare:?}");
        let check = Command::new(QEMU_IMG)
            .args(["check", "-f", "qcow2"])
            .arg(&first)
            .output()
            .unwrap();
        assert!(check.status.success(), "{check:?}");
        // Two 64 KiB data clusters and the metadata, not 8 MiB.
        assert!(std::fs::metadata(&first).unwrap().len() < 1 << 20);
    }

    /// A missing input is qemu-img's error, naming both files.
    #[test]
    fn a_missing_input_names_the_files() {
        if !have_qemu_img() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let error =
            write_qcow2(&dir.path().join("none.img"), &dir.path().join("out.qcow2")).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, Qcow2Error::Convert { .. }), "{message}");
        assert!(
            message.contains("none.img") && message.contains("out.qcow2"),
            "{message}"
        );
    }
}
