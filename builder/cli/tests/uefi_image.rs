//! The UEFI disk of the real storage image (`out/storage/storage.img`,
//! `.bmap`, `.qcow2`), read with the host's tools: util-linux's `sfdisk`,
//! dosfstools' `fsck.fat`, `mtools`, bmap-tools' `bmaptool` and `qemu-img`.
//! The image is built twice, from Debian's packages in applbuild's cache
//! (the builds of `scripts/test` fill it), into two fresh folders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use assert_cmd::cargo::CommandCargoExt;

const TOOLS: [&str; 6] = [
    "sfdisk", "fsck.fat", "mdir", "mtype", "bmaptool", "qemu-img",
];

/// The workspace root (the folder with `profiles/`).
fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `name` on PATH or in the sbin folders a non-root PATH lacks.
fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Every tool of [`TOOLS`]; one missing fails under CI=true, else `false`
/// after a SKIPPED line.
fn tools_present() -> bool {
    let missing: Vec<&str> = TOOLS
        .into_iter()
        .filter(|name| tool(name).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "missing {missing:?}: run scripts/host-setup (fdisk, dosfstools, mtools, bmap-tools, qemu-utils)"
    );
    eprintln!("SKIPPED: missing {missing:?} (scripts/host-setup installs them)");
    false
}

/// Runs the host tool `name` and asserts it succeeded.
fn run(name: &str, args: &[&str]) -> Output {
    let output = Command::new(tool(name).unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{name} {args:?}: {output:?}");
    output
}

/// Builds the storage profile into `out` (locked to applbuild.lock).
fn build_storage(out: &Path) {
    let output = Command::cargo_bin("applbuild")
        .unwrap()
        .current_dir(workspace())
        .args(["build", "storage", "--locked", "--out"])
        .arg(out)
        .arg("--secrets")
        .arg(workspace().join("target/test-secrets.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "build storage: {output:?}");
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn storage_uefi_disk_is_reproducible_bootable_and_listed() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    build_storage(&first);
    build_storage(&second);
    let image = first.join("storage/storage.img");
    let image_text = image.to_str().unwrap();
    for name in ["storage.img", "storage.bmap", "storage.qcow2"] {
        let one = std::fs::read(first.join("storage").join(name)).unwrap();
        let other = std::fs::read(second.join("storage").join(name)).unwrap();
        assert!(one == other, "two builds wrote different {name}");
    }

    // GPT: partition 1 is the EFI system partition, named `esp`.
    let table = text(&run("sfdisk", &["--json", image_text]));
    let parsed: serde_json::Value = serde_json::from_str(&table).unwrap();
    let first_partition = &parsed["partitiontable"]["partitions"][0];
    assert!(
        first_partition["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
            && first_partition["name"] == "esp",
        "{table}"
    );
    run("sfdisk", &["--verify", image_text]);

    // The ESP (at 1 MiB): a clean FAT, systemd-boot at the removable-media
    // path, one UKI named by kernel release and version, loader.conf.
    let esp = dir.path().join("esp.fat");
    let bytes = std::fs::read(&image).unwrap();
    let esp_bytes = esp_partition(&bytes);
    std::fs::write(&esp, esp_bytes).unwrap();
    let esp_text = esp.to_str().unwrap();
    run("fsck.fat", &["-n", esp_text]);
    let boot = text(&run("mdir", &["-b", "-i", esp_text, "::/EFI/BOOT"]));
    assert!(boot.contains("BOOTX64.EFI"), "{boot}");
    let linux = text(&run("mdir", &["-b", "-i", esp_text, "::/EFI/Linux"]));
    assert!(
        linux
            .lines()
            .any(|line| line.contains("/storage-") && line.ends_with(".efi")),
        "{linux}"
    );
    let loader = text(&run("mtype", &["-i", esp_text, "::/loader/loader.conf"]));
    assert!(loader.contains("timeout 0"), "{loader}");

    // bmaptool accepts the bmap and copies the image byte for byte; the
    // qcow2 holds the same disk.
    let copy = dir.path().join("copy.img");
    let bmap = first.join("storage/storage.bmap");
    run(
        "bmaptool",
        &[
            "copy",
            "--bmap",
            bmap.to_str().unwrap(),
            image_text,
            copy.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&copy).unwrap() == bytes,
        "bmaptool's copy differs"
    );
    let qcow2 = first.join("storage/storage.qcow2");
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            image_text,
            qcow2.to_str().unwrap(),
        ],
    );

    let sums = std::fs::read_to_string(first.join("storage/SHA256SUMS")).unwrap();
    for name in ["storage.img", "storage.bmap", "storage.qcow2"] {
        assert!(
            sums.contains(&format!("  {name}\n")),
            "{name} not in SHA256SUMS:\n{sums}"
        );
    }
}

/// The bytes of the first partition, from its GPT entry (LBA 2).
fn esp_partition(disk: &[u8]) -> &[u8] {
    let entry = &disk[1024..1024 + 128];
    let lba = |offset: usize| u64::from_le_bytes(entry[offset..offset + 8].try_into().unwrap());
    let (first, last) = (lba(32) as usize, lba(40) as usize);
    &disk[first * 512..(last + 1) * 512]
}
