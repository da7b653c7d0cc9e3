//! End-to-end tests of the `applbuild` binary against a signed local
//! `file://` archive of tiny fake packages: no network, a few seconds each.
//!
//! Every test gets its own temporary folder holding the project
//! (`profiles/tiny.toml`, `rootfs-overlay/common/`), the archive and the
//! cache and output folders, and runs the binary with `--project`,
//! `--cache-dir` and `--out` pointing there.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use object::write::Object;
use object::{Architecture, BinaryFormat, Endianness, SectionKind};
use predicates::prelude::*;
use sha2::{Digest, Sha256};

use common::local_repo::{FakePackage, LocalRepo};

/// Contents of the fake kernel image the kernel package ships.
const KERNEL: &[u8] = b"MZ fake bzImage of 6.1.0-test";

/// Kernel release of the fake kernel package.
const RELEASE: &str = "6.1.0-test";

/// Version of `busybox` in the first archive, and the newer one published later.
const BUSYBOX_OLD: &str = "1:1.35.0-4";
const BUSYBOX_NEW: &str = "1:1.36.1-1";

/// Text of the plain overlay file `etc/motd`.
const MOTD: &str = "welcome to the tiny image\n";

/// A relocatable ELF like a `.ko`: only a `.modinfo` section holding the
/// given fields, each ended by NUL, which is all module selection reads.
fn fake_module(fields: &[&str]) -> Vec<u8> {
    let mut object = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let section = object.add_section(
        Vec::new(),
        b".modinfo".to_vec(),
        SectionKind::ReadOnlyString,
    );
    let mut data = Vec::new();
    for field in fields {
        data.extend_from_slice(field.as_bytes());
        data.push(0);
    }
    object.append_section_data(section, &data, 1);
    object.write().expect("write fake module")
}

/// The archive's packages, with `busybox` at `busybox_version`:
/// - `linux-image-test`: the kernel, modules `a` (needs `b`), `b` and
///   `c` (needed by nothing), `modules.order`, `modules.builtin`;
/// - `busybox`: `/bin/busybox` (lands in `usr/bin` on merged-/usr), a
///   changelog and a copyright file;
/// - `app`: depends on `gawk | mawk` (only `mawk` exists) and on the
///   virtual `libfoo` (provided by `libfoo1`).
fn packages(busybox_version: &str) -> Vec<FakePackage> {
    packages_with_module_a(busybox_version, &["name=a", "depends=b"])
}

/// [`packages`], with these `.modinfo` fields in module `a`.
fn packages_with_module_a(busybox_version: &str, module_a: &[&str]) -> Vec<FakePackage> {
    let modules = format!("/lib/modules/{RELEASE}");
    vec![
        FakePackage::new("linux-image-test", "6.1.0-1")
            .file(&format!("/boot/vmlinuz-{RELEASE}"), KERNEL, 0o644)
            .file(
                &format!("{modules}/kernel/drivers/x/a.ko"),
                &fake_module(module_a),
                0o644,
            )
            .file(
                &format!("{modules}/kernel/drivers/x/b.ko"),
                &fake_module(&["name=b", "depends="]),
                0o644,
            )
            .file(
                &format!("{modules}/kernel/drivers/x/c.ko"),
                &fake_module(&["name=c", "depends="]),
                0o644,
            )
            .file(
                &format!("{modules}/modules.order"),
                b"kernel/drivers/x/b.ko\nkernel/drivers/x/a.ko\nkernel/drivers/x/c.ko\n",
                0o644,
            )
            .file(
                &format!("{modules}/modules.builtin"),
                b"kernel/lib/builtin_thing.ko\n",
                0o644,
            )
            .file(
                "/usr/share/doc/linux-image-test/changelog.Debian.gz",
                b"kernel changes",
                0o644,
            ),
        FakePackage::new("busybox", busybox_version)
            .file("/bin/busybox", b"\x7fELF busybox", 0o755)
            .file(
                "/usr/share/doc/busybox/changelog.Debian.gz",
                b"busybox changes",
                0o644,
            )
            .file("/usr/share/doc/busybox/copyright", b"GPL-2", 0o644),
        FakePackage::new("mawk", "1.3.4-1").file("/usr/bin/mawk", b"\x7fELF mawk", 0o755),
        FakePackage::new("libfoo1", "2.0-1")
            .provides("libfoo")
            .file("/usr/lib/libfoo.so.1", b"foo", 0o644),
        FakePackage::new("app", "1.0")
            .depends("gawk | mawk, libfoo")
            .file("/usr/bin/app", b"#!/bin/sh\necho app\n", 0o755),
        // What a test build adds (`--test`): resolved with the image's
        // packages and pinned in the lock, never in the image itself.
        FakePackage::new("qemu-guest-agent", "1:7.2-1")
            .depends("libglib2.0-0, libfoo")
            .file("/usr/sbin/qemu-ga", b"\x7fELF qemu-ga", 0o755),
        FakePackage::new("libglib2.0-0", "2.74-1").file(
            "/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0",
            b"glib",
            0o644,
        ),
        // What `[ssh]` needs.
        FakePackage::new("dropbear-bin", "2022.83-1").file(
            "/usr/sbin/dropbear",
            b"\x7fELF dropbear",
            0o755,
        ),
    ]
}

/// The packages only the tiny profile's test build installs.
const TEST_ONLY: [&str; 2] = ["libglib2.0-0", "qemu-guest-agent"];

/// The packages the tiny profile resolves to, sorted by name.
const RESOLVED: [&str; 5] = ["app", "busybox", "libfoo1", "linux-image-test", "mawk"];

/// `profiles/tiny.toml` for an archive at `mirror` signed by `keyring`.
fn tiny_profile(mirror: &str, keyring: &Path) -> String {
    format!(
        r#"description = "tiny test image"
hostname = "tinyhost"

[distribution]
mirror = "{mirror}"
suite = "bookworm"
keyring = "{keyring}"

[packages]
include = ["linux-image-test", "busybox", "app"]

[kernel]
modules = ["a"]
cmdline = ["console=ttyS0"]

[image]
compression_level = 3
"#,
        keyring = keyring.display()
    )
}

/// SHA256 of `data` in hex.
fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// SHA256 of a file in hex.
fn sha256_of(path: &Path) -> String {
    sha256_hex(&fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// A temporary project with its archive; see the module documentation.
struct Fixture {
    dir: tempfile::TempDir,
    repo: LocalRepo,
}

impl Fixture {
    /// Writes the project (tiny profile, overlay with `etc/motd` and the
    /// template `etc/greeting.j2`) and publishes [`packages`] in a new archive.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let repo = LocalRepo::create(
            &dir.path().join("mirror"),
            "bookworm",
            &packages(BUSYBOX_OLD),
        );
        let fixture = Self { dir, repo };
        fs::create_dir_all(fixture.project().join("profiles")).unwrap();
        fixture.write_profile(&tiny_profile(&fixture.repo.url, &fixture.repo.keyring));
        let etc = fixture.project().join("rootfs-overlay/common/etc");
        fs::create_dir_all(&etc).unwrap();
        fs::write(etc.join("motd"), MOTD).unwrap();
        fs::write(
            etc.join("greeting.j2"),
            "host={{ hostname }} kernel={{ build.kernel_release }}\n",
        )
        .unwrap();
        fixture
    }

    /// The project folder (`--project`).
    fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// A folder in the temporary directory, for `--out` or `--cache-dir`.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The profile file.
    fn profile_path(&self) -> PathBuf {
        self.project().join("profiles/tiny.toml")
    }

    /// Replaces `profiles/tiny.toml`.
    fn write_profile(&self, text: &str) {
        fs::write(self.profile_path(), text).unwrap();
    }

    /// The project's lock file.
    fn lockfile(&self) -> PathBuf {
        self.project().join("applbuild.lock")
    }

    /// `applbuild --project <project> <args>`.
    fn applbuild(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_applbuild"));
        command.arg("--project").arg(self.project()).args(args);
        command
    }

    /// `applbuild build tiny --out <out> --cache-dir <cache> <extra>`, run.
    fn build(&self, out: &str, cache: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
        self.applbuild(&["build", "tiny"])
            .arg("--out")
            .arg(self.path(out))
            .arg("--cache-dir")
            .arg(self.path(cache))
            .args(extra)
            .assert()
    }

    /// SHA256 of a package's `.deb` as published.
    fn deb_sha256(&self, name: &str) -> String {
        sha256_of(&self.repo.deb_path(name))
    }
}

/// Standard output or error of a finished command as text.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The files of an image folder (`initrd.img`, `vmlinuz`, `manifest.json`,
/// `SHA256SUMS`, the SBOMs and the licence list) by name.
fn image_files(dir: &Path) -> BTreeMap<&'static str, Vec<u8>> {
    [
        "initrd.img",
        "vmlinuz",
        "manifest.json",
        "SHA256SUMS",
        "sbom.spdx.json",
        "sbom.cdx.json",
        "licenses.csv",
    ]
    .into_iter()
    .map(|name| {
        let path = dir.join(name);
        let data = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        (name, data)
    })
    .collect()
}

/// `S_IFMT` and `S_IFLNK` of `stat(2)`.
const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;

/// One member of the initramfs: its mode, its mtime and its data (a
/// symlink's data is its target).
#[derive(Debug)]
struct CpioEntry {
    mode: u32,
    mtime: u32,
    data: Vec<u8>,
}

/// Reads `initrd.img`: checks it starts with a zstd frame, decompresses all
/// its frames and parses the concatenated newc archives. Returns the members
/// by path (a later archive's member replaces an earlier one, as when the
/// kernel unpacks them) and how many archives there were.
fn initrd_entries(path: &Path) -> (BTreeMap<String, CpioEntry>, usize) {
    let compressed = fs::read(path).unwrap();
    assert_eq!(
        compressed[..4],
        [0x28, 0xb5, 0x2f, 0xfd],
        "initrd.img starts with a zstd frame"
    );
    let data = zstd::stream::decode_all(compressed.as_slice()).expect("zstd frames");
    let align = |n: usize| (n + 3) & !3;
    let mut entries = BTreeMap::new();
    let mut archives = 0;
    let mut offset = 0;
    while offset < data.len() {
        let header = &data[offset..offset + 110];
        assert_eq!(&header[..6], b"070701", "newc magic at offset {offset}");
        let field = |index: usize| -> usize {
            let hex = std::str::from_utf8(&header[6 + 8 * index..14 + 8 * index]).unwrap();
            usize::from_str_radix(hex, 16).unwrap()
        };
        let (mode, mtime, file_size, name_size) =
            (field(1) as u32, field(5) as u32, field(6), field(11));
        let name_start = offset + 110;
        let name = std::str::from_utf8(&data[name_start..name_start + name_size - 1])
            .unwrap()
            .to_string();
        let data_start = align(name_start + name_size);
        let contents = data[data_start..data_start + file_size].to_vec();
        offset = align(data_start + file_size);
        if name == "TRAILER!!!" {
            archives += 1;
        } else {
            entries.insert(
                name,
                CpioEntry {
                    mode,
                    mtime,
                    data: contents,
                },
            );
        }
    }
    (entries, archives)
}

/// The contents of member `path`, which must exist.
fn member<'a>(entries: &'a BTreeMap<String, CpioEntry>, path: &str) -> &'a [u8] {
    &entries
        .get(path)
        .unwrap_or_else(|| {
            panic!(
                "{path} is not in the initramfs: {:?}",
                entries.keys().collect::<Vec<_>>()
            )
        })
        .data
}

#[test]
fn build_writes_a_verified_image_with_overlay_modules_and_lock() {
    let fixture = Fixture::new();
    let assert = fixture.build("out", "cache", &[]).success();
    let stdout = text(&assert.get_output().stdout);
    assert!(stdout.contains("tiny: 5 packages"), "{stdout}");
    let image = fixture.path("out/tiny");

    assert_eq!(fs::read(image.join("vmlinuz")).unwrap(), KERNEL);

    let (entries, archives) = initrd_entries(&image.join("initrd.img"));
    assert!(archives >= 1, "no newc archive in the initramfs");
    // No build time leaks into the image.
    let stamped: Vec<&String> = entries
        .iter()
        .filter(|(_, entry)| entry.mtime != 0)
        .map(|(path, _)| path)
        .collect();
    assert!(stamped.is_empty(), "members with an mtime: {stamped:?}");
    assert_eq!(member(&entries, "etc/motd"), MOTD.as_bytes());
    assert_eq!(
        member(&entries, "etc/greeting"),
        format!("host=tinyhost kernel={RELEASE}\n").as_bytes()
    );
    assert!(!entries.contains_key("etc/greeting.j2"));
    let modules = format!("usr/lib/modules/{RELEASE}");
    assert_eq!(
        member(&entries, &format!("{modules}/kernel/drivers/x/a.ko")),
        fake_module(&["name=a", "depends=b"])
    );
    assert_eq!(
        member(&entries, &format!("{modules}/kernel/drivers/x/b.ko")),
        fake_module(&["name=b", "depends="])
    );
    assert!(
        !entries.contains_key(&format!("{modules}/kernel/drivers/x/c.ko")),
        "module c was not requested"
    );
    let dep = text(member(&entries, &format!("{modules}/modules.dep")));
    assert!(
        dep.lines()
            .any(|line| line == "kernel/drivers/x/a.ko: kernel/drivers/x/b.ko"),
        "{dep}"
    );
    // The kernel image goes next to the initramfs, not into it.
    assert!(!entries.contains_key(&format!("boot/vmlinuz-{RELEASE}")));
    // Package files: merged-/usr, the alternative and the virtual package.
    assert_eq!(member(&entries, "usr/bin/busybox"), b"\x7fELF busybox");
    assert_eq!(member(&entries, "usr/bin/mawk"), b"\x7fELF mawk");
    assert_eq!(member(&entries, "usr/lib/libfoo.so.1"), b"foo");
    let changelogs: Vec<&String> = entries
        .keys()
        .filter(|path| path.starts_with("usr/share/doc/") && path.contains("/changelog"))
        .collect();
    assert!(changelogs.is_empty(), "{changelogs:?}");
    assert_eq!(
        member(&entries, "usr/share/doc/busybox/copyright"),
        b"GPL-2"
    );
    for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
        let entry = &entries[link];
        assert_eq!(entry.mode & S_IFMT, S_IFLNK, "{link} is a symlink");
        assert_eq!(entry.data, target.as_bytes(), "{link} -> {target}");
    }

    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(image.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["profile"], "tiny");
    assert_eq!(manifest["kernel_release"], RELEASE);
    assert_eq!(manifest["modules"], serde_json::json!(["b", "a"]));
    let listed: Vec<&str> = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| package["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, RESOLVED);
    for package in manifest["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let expected = packages(BUSYBOX_OLD)
            .into_iter()
            .find(|p| p.name == name)
            .unwrap();
        assert_eq!(package["version"], expected.version.as_str(), "{name}");
        assert_eq!(
            package["sha256"],
            fixture.deb_sha256(name).as_str(),
            "{name}"
        );
    }
    let artifacts = manifest["artifacts"].as_array().unwrap();
    let files: Vec<&str> = artifacts
        .iter()
        .map(|a| a["file"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "initrd.img",
            "licenses.csv",
            "sbom.cdx.json",
            "sbom.spdx.json",
            "vmlinuz"
        ]
    );
    for artifact in artifacts {
        let path = image.join(artifact["file"].as_str().unwrap());
        assert_eq!(artifact["sha256"], sha256_of(&path).as_str(), "{artifact}");
        assert_eq!(artifact["size"], fs::metadata(&path).unwrap().len());
    }

    let sums = fs::read_to_string(image.join("SHA256SUMS")).unwrap();
    let sums: BTreeMap<&str, &str> = sums
        .lines()
        .map(|line| {
            let (hash, file) = line.split_once("  ").expect("sha256sum format");
            (file, hash)
        })
        .collect();
    assert_eq!(
        sums.keys().copied().collect::<Vec<_>>(),
        [
            "initrd.img",
            "licenses.csv",
            "manifest.json",
            "sbom.cdx.json",
            "sbom.spdx.json",
            "vmlinuz"
        ]
    );
    for (file, hash) in sums {
        assert_eq!(hash, sha256_of(&image.join(file)), "{file}");
    }

    let lock = fs::read_to_string(fixture.lockfile()).unwrap();
    assert!(lock.contains("[profile.tiny]"), "{lock}");
    for package in packages(BUSYBOX_OLD)
        .iter()
        .filter(|p| RESOLVED.contains(&p.name.as_str()))
    {
        let line = format!(
            "name = \"{}\", version = \"{}\", sha256 = \"{}\"",
            package.name,
            package.version,
            fixture.deb_sha256(&package.name)
        );
        assert!(lock.contains(&line), "{line} not in\n{lock}");
    }
}

#[test]
fn builds_are_byte_identical_with_warm_and_clean_caches() {
    let fixture = Fixture::new();
    fixture.build("out1", "cache1", &[]).success();
    // Let the clock pass a second boundary, so that anything stamped with
    // the build time (in seconds) differs between the builds.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fixture.build("out2", "cache1", &[]).success();
    fixture.build("out3", "cache2", &[]).success();
    let first = image_files(&fixture.path("out1/tiny"));
    for out in ["out2", "out3"] {
        let again = image_files(&fixture.path(out).join("tiny"));
        for (name, data) in &first {
            assert!(again[name] == *data, "{out}/tiny/{name} differs from out1");
        }
    }
}

#[test]
fn sbom_lists_every_manifest_package_and_passes_the_format_validators() {
    let fixture = Fixture::new();
    fixture.build("out", "cache", &[]).success();
    let image = fixture.path("out/tiny");
    let json = |file: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(image.join(file)).unwrap()).unwrap()
    };
    let names = |items: &serde_json::Value, pick: &dyn Fn(&serde_json::Value) -> bool| {
        let mut names: Vec<String> = items
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| pick(item))
            .map(|item| item["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let manifest = names(&json("manifest.json")["packages"], &|_| true);
    assert_eq!(manifest.len(), RESOLVED.len());
    let cdx = json("sbom.cdx.json");
    assert_eq!(cdx["specVersion"], "1.6");
    let library = |item: &serde_json::Value| item["type"] == "library";
    assert_eq!(names(&cdx["components"], &library), manifest);
    let spdx = json("sbom.spdx.json");
    assert_eq!(spdx["spdxVersion"], "SPDX-2.3");
    let binary = |item: &serde_json::Value| {
        item["SPDXID"]
            .as_str()
            .is_some_and(|id| id.starts_with("SPDXRef-Package-"))
    };
    assert_eq!(names(&spdx["packages"], &binary), manifest);
    let csv = fs::read_to_string(image.join("licenses.csv")).unwrap();
    assert_eq!(csv.lines().count(), manifest.len() + 1, "{csv}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/sbom-validate");
    let output = std::process::Command::new(&script)
        .arg(image.join("sbom.spdx.json"))
        .arg(image.join("sbom.cdx.json"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "scripts/sbom-validate rejected the build's SBOMs:\n{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[test]
fn second_build_offline_downloads_nothing() {
    let fixture = Fixture::new();
    let first = fixture.build("out1", "cache", &["--json"]).success();
    let report: serde_json::Value = serde_json::from_slice(&first.get_output().stdout).unwrap();
    assert_eq!(report[0]["downloaded"], RESOLVED.len());

    fs::remove_dir_all(&fixture.repo.root).unwrap();
    let second = fixture
        .build("out2", "cache", &["--offline", "--json"])
        .success();
    let report: serde_json::Value = serde_json::from_slice(&second.get_output().stdout).unwrap();
    assert_eq!(report[0]["profile"], "tiny");
    assert_eq!(report[0]["packages"], RESOLVED.len());
    assert_eq!(report[0]["downloaded"], 0);
    assert_eq!(
        fs::read(fixture.path("out2/tiny/initrd.img")).unwrap(),
        fs::read(fixture.path("out1/tiny/initrd.img")).unwrap()
    );
}

#[test]
fn report_names_unpack_cache_hits_and_unresolved_softdeps() {
    let fixture = Fixture::new();
    fixture.repo.publish(&packages_with_module_a(
        BUSYBOX_OLD,
        &["name=a", "depends=b", "softdep=pre: crc_missing"],
    ));
    let first = fixture.build("out1", "cache", &["--json"]).success();
    let report: serde_json::Value = serde_json::from_slice(&first.get_output().stdout).unwrap();
    assert_eq!(report[0]["unpacked_from_cache"], 0);
    assert_eq!(
        report[0]["unpacked_from_cache_packages"],
        serde_json::json!([])
    );
    assert_eq!(
        report[0]["unresolved_softdeps"],
        serde_json::json!(["a: crc_missing"])
    );

    let second = fixture.build("out2", "cache", &["--json"]).success();
    let report: serde_json::Value = serde_json::from_slice(&second.get_output().stdout).unwrap();
    assert_eq!(report[0]["unpacked_from_cache"], RESOLVED.len());
    let mut names: Vec<&str> = report[0]["unpacked_from_cache_packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, RESOLVED);

    let third = fixture.build("out3", "cache", &[]).success();
    let summary = text(&third.get_output().stdout);
    assert!(
        summary.contains("5 of 5 packages unpacked from the unpack cache"),
        "{summary}"
    );
    assert!(
        summary.contains("unresolved module soft dependency: a: crc_missing"),
        "{summary}"
    );
}

#[test]
fn tampered_deb_fails_and_keeps_the_previous_image() {
    let fixture = Fixture::new();
    fixture.build("out", "cache1", &[]).success();
    let before = image_files(&fixture.path("out/tiny"));

    fixture.repo.corrupt_deb("busybox");
    let assert = fixture.build("out", "cache2", &[]).failure();
    let stderr = text(&assert.get_output().stderr);
    assert!(stderr.contains("busybox"), "{stderr}");
    assert!(stderr.contains("busybox_1.35.0-4_amd64.deb"), "{stderr}");
    assert!(stderr.contains("SHA256 mismatch"), "{stderr}");

    assert!(
        image_files(&fixture.path("out/tiny")) == before,
        "the previous image changed"
    );
    let left: Vec<String> = fs::read_dir(fixture.path("out"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["tiny"], "staging folders left behind");
}

#[test]
fn inrelease_signed_by_another_key_is_refused() {
    let fixture = Fixture::new();
    fixture.repo.resign_with_other_key();
    fixture
        .build("out", "cache", &[])
        .failure()
        .stderr(predicate::str::contains("InRelease"))
        .stderr(predicate::str::contains("signed by"))
        .stderr(predicate::str::contains(
            fixture.repo.keyring.display().to_string(),
        ));
    assert!(!fixture.path("out/tiny").exists());
}

#[test]
fn unknown_profile_key_names_file_line_and_key() {
    let fixture = Fixture::new();
    let profile = tiny_profile(&fixture.repo.url, &fixture.repo.keyring)
        .replace("compression_level = 3", "compresion_level = 3");
    let line = profile
        .lines()
        .position(|line| line.starts_with("compresion_level"))
        .unwrap()
        + 1;
    fixture.write_profile(&profile);
    fixture
        .build("out", "cache", &[])
        .failure()
        .stderr(predicate::str::contains(format!("tiny.toml:{line}:")))
        .stderr(predicate::str::contains("compresion_level"));
}

#[test]
fn wrongly_typed_profile_value_names_the_key() {
    let fixture = Fixture::new();
    let profile = tiny_profile(&fixture.repo.url, &fixture.repo.keyring)
        .replace("compression_level = 3", "compression_level = \"high\"");
    fixture.write_profile(&profile);
    fixture
        .build("out", "cache", &[])
        .failure()
        .stderr(predicate::str::contains("key `compression_level`"));
}

#[test]
fn template_error_names_the_overlay_file_and_line() {
    let fixture = Fixture::new();
    fs::write(
        fixture
            .project()
            .join("rootfs-overlay/common/etc/greeting.j2"),
        "host={{ hostname }}\nowner={{ hostname.owner.name }}\n",
    )
    .unwrap();
    fixture
        .build("out", "cache", &[])
        .failure()
        .stderr(predicate::str::contains(
            "etc/greeting.j2:2: undefined value",
        ))
        .stderr(predicate::str::contains(
            "in `owner={{ hostname.owner.name }}`",
        ));
}

#[test]
fn unknown_kernel_module_is_named() {
    let fixture = Fixture::new();
    let profile = tiny_profile(&fixture.repo.url, &fixture.repo.keyring)
        .replace("modules = [\"a\"]", "modules = [\"a\", \"nosuchmod\"]");
    fixture.write_profile(&profile);
    fixture
        .build("out", "cache", &[])
        .failure()
        .stderr(predicate::str::contains("no module named nosuchmod"));
}

#[test]
fn a_module_pattern_matching_nothing_names_the_pattern_and_the_file() {
    let fixture = Fixture::new();
    let profile = tiny_profile(&fixture.repo.url, &fixture.repo.keyring).replace(
        "modules = [\"a\"]",
        "modules = [\"a\", \"kernel/drivers/scsi/megaraid/*.ko\"]",
    );
    fixture.write_profile(&profile);
    fixture
        .build("out", "cache", &[])
        .failure()
        .stderr(predicate::str::contains(format!(
            "{}: kernel {RELEASE}: pattern kernel/drivers/scsi/megaraid/*.ko matches no module",
            fixture.profile_path().display()
        )));
}

#[test]
fn locked_build_refuses_a_changed_archive_and_unlocked_build_updates_the_lock() {
    let fixture = Fixture::new();
    fixture.build("out", "cache", &[]).success();
    let lock_before = fs::read_to_string(fixture.lockfile()).unwrap();
    assert!(lock_before.contains(BUSYBOX_OLD), "{lock_before}");

    fixture.repo.publish(&packages(BUSYBOX_NEW));
    fixture
        .build("out", "cache", &["--locked"])
        .failure()
        .stderr(predicate::str::contains("--locked"))
        .stderr(predicate::str::contains(format!(
            "busybox: {BUSYBOX_OLD} -> {BUSYBOX_NEW}"
        )));
    assert_eq!(fs::read_to_string(fixture.lockfile()).unwrap(), lock_before);

    fixture
        .build("out", "cache", &[])
        .success()
        .stdout(predicate::str::contains(format!(
            "lock: busybox: {BUSYBOX_OLD} -> {BUSYBOX_NEW}"
        )));
    let lock_after = fs::read_to_string(fixture.lockfile()).unwrap();
    assert!(
        lock_after.contains(&format!(
            "name = \"busybox\", version = \"{BUSYBOX_NEW}\", sha256 = \"{}\"",
            fixture.deb_sha256("busybox")
        )),
        "{lock_after}"
    );
    assert!(!lock_after.contains(BUSYBOX_OLD), "{lock_after}");
}

#[test]
fn list_show_and_help_describe_the_project() {
    let fixture = Fixture::new();
    fixture
        .applbuild(&["list"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^tiny\s+tiny test image$").unwrap());

    let list = fixture.applbuild(&["list", "--json"]).assert().success();
    let rows: serde_json::Value = serde_json::from_slice(&list.get_output().stdout).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([{"name": "tiny", "extends": false, "description": "tiny test image"}])
    );

    let show = fixture
        .applbuild(&["show", "tiny", "--json", "--cache-dir"])
        .arg(fixture.path("cache"))
        .assert()
        .success();
    let shown: serde_json::Value = serde_json::from_slice(&show.get_output().stdout).unwrap();
    assert_eq!(shown["profile"], "tiny");
    assert_eq!(shown["merged"]["hostname"], "tinyhost");
    assert_eq!(
        shown["merged"]["kernel"]["modules"],
        serde_json::json!(["a"])
    );
    assert_eq!(shown["merged"]["image"]["compression_level"], 3);
    let resolved: Vec<(&str, &str)> = shown["packages"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["version"].as_str().unwrap()))
        .collect();
    assert_eq!(
        resolved,
        [
            ("app", "1.0"),
            ("busybox", BUSYBOX_OLD),
            ("libfoo1", "2.0-1"),
            ("linux-image-test", "6.1.0-1"),
            ("mawk", "1.3.4-1"),
        ]
    );
    let test_build: Vec<&str> = shown["packages"]["test_build_packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(test_build, TEST_ONLY);

    fixture
        .applbuild(&["build", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--offline"))
        .stdout(predicate::str::contains("--locked"));
}

#[test]
fn clean_removes_the_output_and_with_cache_the_cache() {
    let fixture = Fixture::new();
    fixture.build("out", "cache", &[]).success();
    assert!(fixture.path("out/tiny/initrd.img").is_file());

    fixture
        .applbuild(&["clean", "--out"])
        .arg(fixture.path("out"))
        .arg("--cache-dir")
        .arg(fixture.path("cache"))
        .assert()
        .success()
        .stderr(predicate::str::contains("removed"));
    assert!(!fixture.path("out").exists());
    assert!(fixture.path("cache").is_dir(), "cache kept without --cache");

    fixture
        .applbuild(&["clean", "--cache", "--out"])
        .arg(fixture.path("out"))
        .arg("--cache-dir")
        .arg(fixture.path("cache"))
        .assert()
        .success();
    assert!(!fixture.path("cache").exists());
}

#[test]
fn image_disk_adds_a_gpt_disk_image_listed_in_the_manifest() {
    let fixture = Fixture::new();
    let profile =
        tiny_profile(&fixture.repo.url, &fixture.repo.keyring) + "\n[image.disk]\ndata_mib = 2\n";
    fixture.write_profile(&profile);
    let assert = fixture.build("out1", "cache", &[]).success();
    let stdout = text(&assert.get_output().stdout);
    assert!(stdout.contains("disk.img"), "{stdout}");
    let image = fixture.path("out1/tiny");
    let disk = fs::read(image.join("disk.img")).unwrap();
    let initrd = fs::read(image.join("initrd.img")).unwrap();

    // Partition entries: kernel, initrd, data, from 1 MiB on, whole MiB each.
    assert_eq!(&disk[512..520], b"EFI PART");
    let mib = 1 << 20;
    let initrd_mib = initrd.len().div_ceil(mib);
    let expected = [
        ("kernel", 1, 1),
        ("initrd", 2, initrd_mib),
        ("data", 2 + initrd_mib, 2),
    ];
    for (index, (name, start_mib, size_mib)) in expected.into_iter().enumerate() {
        let entry = &disk[1024 + 128 * index..1024 + 128 * (index + 1)];
        let first = u64::from_le_bytes(entry[32..40].try_into().unwrap()) as usize;
        let last = u64::from_le_bytes(entry[40..48].try_into().unwrap()) as usize;
        assert_eq!(first * 512, start_mib * mib, "{name}");
        assert_eq!((last + 1 - first) * 512, size_mib * mib, "{name}");
        let units: Vec<u16> = entry[56..128]
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .take_while(|&unit| unit != 0)
            .collect();
        assert_eq!(String::from_utf16(&units).unwrap(), name);
    }
    assert!(disk[1024 + 3 * 128..1024 + 4 * 128].iter().all(|&b| b == 0));
    assert_eq!(&disk[mib..mib + KERNEL.len()], KERNEL);
    assert!(disk[mib + KERNEL.len()..2 * mib].iter().all(|&b| b == 0));
    assert_eq!(&disk[2 * mib..2 * mib + initrd.len()], initrd.as_slice());
    assert_eq!(disk.len(), (4 + initrd_mib) * mib + 33 * 512);

    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(image.join("manifest.json")).unwrap()).unwrap();
    let files: Vec<&str> = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|artifact| artifact["file"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "disk.img",
            "initrd.img",
            "licenses.csv",
            "sbom.cdx.json",
            "sbom.spdx.json",
            "vmlinuz"
        ]
    );
    assert_eq!(manifest["artifacts"][0]["size"], disk.len());
    assert_eq!(
        manifest["artifacts"][0]["sha256"],
        sha256_hex(&disk).as_str()
    );
    let sums = fs::read_to_string(image.join("SHA256SUMS")).unwrap();
    assert!(
        sums.contains(&format!("{}  disk.img\n", sha256_hex(&disk))),
        "{sums}"
    );

    let again = fixture.build("out2", "cache", &["--json"]).success();
    let report: serde_json::Value = serde_json::from_slice(&again.get_output().stdout).unwrap();
    assert_eq!(report[0]["disk_bytes"], disk.len());
    assert!(
        fs::read(fixture.path("out2/tiny/disk.img")).unwrap() == disk,
        "disk.img differs between builds"
    );
}

/// `build --test`: the image has no test channel; `test/initrd.img` is the
/// image's `initrd.img` byte for byte, then the segment with exactly what
/// the test build adds, and `test/test-build.json` says so.
#[test]
fn a_test_build_is_the_image_plus_one_segment_with_the_test_channel() {
    let fixture = Fixture::new();
    let layer = fixture
        .project()
        .join("rootfs-overlay/test-build/usr/lib/applbuild");
    fs::create_dir_all(&layer).unwrap();
    fs::write(layer.join("console"), "#!/bin/sh\nexec sh\n").unwrap();
    fixture.build("out", "cache", &["--test"]).success();
    let image = fixture.path("out/tiny");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(image.join("manifest.json")).unwrap()).unwrap();
    let names: Vec<&str> = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, RESOLVED);
    let lock = fs::read_to_string(fixture.lockfile()).unwrap();
    assert!(lock.contains("qemu-guest-agent"), "{lock}");
    let (production, _) = initrd_entries(&image.join("initrd.img"));
    assert!(!production.contains_key("usr/sbin/qemu-ga"));
    assert!(!production.contains_key("usr/lib/applbuild/console"));

    let initrd = fs::read(image.join("initrd.img")).unwrap();
    let test_initrd = fs::read(image.join("test/initrd.img")).unwrap();
    let segment = fs::read(image.join("test/test-channel.cpio.zst")).unwrap();
    assert_eq!(test_initrd[..initrd.len()], initrd[..]);
    assert_eq!(test_initrd[initrd.len()..], segment[..]);
    let (added, _) = initrd_entries(&image.join("test/test-channel.cpio.zst"));
    assert_eq!(member(&added, "usr/sbin/qemu-ga"), b"\x7fELF qemu-ga");
    assert_eq!(
        member(&added, "usr/lib/applbuild/console"),
        b"#!/bin/sh\nexec sh\n"
    );
    assert!(
        !added.contains_key("usr/bin/app"),
        "the image's own files stay out"
    );

    let described: serde_json::Value =
        serde_json::from_slice(&fs::read(image.join("test/test-build.json")).unwrap()).unwrap();
    assert_eq!(
        described["image_initrd"]["sha256"],
        sha256_hex(&initrd).as_str()
    );
    assert_eq!(
        described["segment"]["sha256"],
        sha256_hex(&segment).as_str()
    );
    let packages: Vec<&str> = described["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(packages, TEST_ONLY);
    let added_paths = described["added"].as_array().unwrap();
    assert!(
        added_paths.iter().any(|p| p == "usr/sbin/qemu-ga"),
        "{added_paths:?}"
    );
    assert_eq!(
        fs::read(image.join("test/vmlinuz")).unwrap(),
        fs::read(image.join("vmlinuz")).unwrap()
    );

    applbuild::test_build::verify(&image).expect("the test build is the image plus its segment");
    let mut tampered = test_initrd.clone();
    tampered[10] ^= 1;
    fs::write(image.join("test/initrd.img"), &tampered).unwrap();
    let error = applbuild::test_build::verify(&image)
        .unwrap_err()
        .to_string();
    assert!(error.contains("up to the segment"), "{error}");
}

/// A project holding a copy of the shipped profiles, for tests of them.
fn shipped_profiles_project() -> tempfile::TempDir {
    let project = tempfile::tempdir().expect("temporary folder");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles");
    let profiles = project.path().join("profiles");
    fs::create_dir(&profiles).unwrap();
    for entry in fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            fs::copy(&path, profiles.join(path.file_name().unwrap())).unwrap();
        }
    }
    project
}

#[test]
fn a_per_machine_profile_sets_only_what_differs_from_its_role() {
    let project = shipped_profiles_project();
    fs::write(
        project.path().join("profiles/rack7-hv.toml"),
        "extends = \"hypervisor\"\nvms = []\n\n[initiator]\nname = \"iqn.2026-12.com.example:rack7-hv\"\n\n[multipath]\nalias = \"rack7\"\n",
    )
    .unwrap();
    let show = Command::new(env!("CARGO_BIN_EXE_applbuild"))
        .arg("--project")
        .arg(project.path())
        .args(["show", "rack7-hv", "--no-packages", "--json"])
        .assert()
        .success();
    let shown: serde_json::Value = serde_json::from_slice(&show.get_output().stdout).unwrap();
    let merged = &shown["merged"];
    assert_eq!(
        merged["initiator"]["name"],
        "iqn.2026-12.com.example:rack7-hv"
    );
    assert_eq!(merged["multipath"]["alias"], "rack7");
    // The rest comes from hypervisor.toml.
    assert_eq!(
        merged["initiator"]["target"],
        "iqn.2012-09.com.ibm:neptune.target"
    );
    assert_eq!(merged["hostname"], "uranus");

    fs::write(
        project.path().join("profiles/rack7-hv.toml"),
        "extends = \"base\"\n\n[initiator]\nname = \"iqn.2026-12.com.example:rack7-hv\"\n",
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_applbuild"))
        .arg("--project")
        .arg(project.path())
        .args(["show", "rack7-hv", "--no-packages"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "rack7-hv (extends base): missing key initiator.target",
        ));
}

#[test]
fn a_rendered_file_holding_a_secret_is_private_and_the_secret_is_a_build_input() {
    let fixture = Fixture::new();
    let profile = tiny_profile(&fixture.repo.url, &fixture.repo.keyring);
    fixture.write_profile(&format!(
        "{profile}\n[target]\niqn = \"iqn.2001-04.com.example:tiny\"\nportals = [\"192.0.2.1:3260\"]\nluns = []\n\n[target.chap]\nusername = \"tiny\"\nsecret = {{ name = \"tiny-chap\" }}\n"
    ));
    fs::write(
        fixture
            .project()
            .join("rootfs-overlay/common/etc/chap.conf.j2"),
        "incominguser {{ target.chap.username }} {{ target.chap.secret }}\n",
    )
    .unwrap();
    let secrets = fixture.path("secrets.toml");
    let secrets_arg = secrets.to_str().unwrap();
    let built = fixture.build("out", "cache", &["--secrets", secrets_arg, "--json"]);
    let output = built.success().get_output().clone();
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "created {secrets_arg} with random values: tiny-chap"
        )),
        "{stderr}"
    );
    let store: toml::Table = toml::from_str(&fs::read_to_string(&secrets).unwrap()).unwrap();
    let value = store["tiny-chap"].as_str().unwrap().to_string();
    assert!(!text(&output.stdout).contains(&value) && !stderr.contains(&value));

    let out = fixture.path("out/tiny");
    let (entries, _) = initrd_entries(&out.join("initrd.img"));
    assert_eq!(
        text(member(&entries, "etc/chap.conf")),
        format!("incominguser tiny {value}\n")
    );
    assert_eq!(entries["etc/chap.conf"].mode & 0o7777, 0o600);
    assert_eq!(entries["etc/greeting"].mode & 0o7777, 0o644);
    let manifest = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
    };
    let first = manifest(&out)["inputs_digest"].clone();

    fs::write(&secrets, "tiny-chap = \"another-secret-value1\"\n").unwrap();
    fixture
        .build("out", "cache", &["--secrets", secrets_arg])
        .success();
    assert_ne!(manifest(&out)["inputs_digest"], first);
}

/// An operator's key for the tests: RFC 8032's first test key.
const OPERATOR_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea ops@example.com";

#[test]
fn ssh_and_the_console_login_come_from_the_profile_and_the_secrets_store() {
    let fixture = Fixture::new();
    let profile = tiny_profile(&fixture.repo.url, &fixture.repo.keyring)
        .replace("\"app\"]", "\"app\", \"dropbear-bin\"]");
    fixture.write_profile(&format!(
        "{profile}\n[ssh]\nauthorized_keys = [\"{OPERATOR_KEY}\"]\nhost_key_secret = {{ name = \"ssh-host-key\" }}\n\n[console]\nroot_password_secret = {{ name = \"root-password\" }}\n"
    ));
    fs::write(
        fixture.project().join("rootfs-overlay/common/etc/shadow"),
        "root:*:0:0:99999:7:::\n",
    )
    .unwrap();
    let secrets = fixture.path("secrets.toml");
    fixture
        .build(
            "out",
            "cache",
            &["--test", "--secrets", secrets.to_str().unwrap()],
        )
        .success();
    let store: toml::Table = toml::from_str(&fs::read_to_string(&secrets).unwrap()).unwrap();
    let out = fixture.path("out/tiny");
    let (entries, _) = initrd_entries(&out.join("initrd.img"));

    // The host key file: dropbear's format, private; the manifest holds its
    // public half.
    let key_path = "etc/dropbear/dropbear_ed25519_host_key";
    let key = member(&entries, key_path);
    assert_eq!(entries[key_path].mode & 0o7777, 0o600);
    assert_eq!(&key[..19], b"\0\0\0\x0bssh-ed25519\0\0\0\x40");
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let public = manifest["ssh_host_key"].as_str().unwrap();
    let mut blob = b"\0\0\0\x0bssh-ed25519\0\0\0\x20".to_vec();
    blob.extend(&key[51..83]);
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &blob);
    assert_eq!(public, format!("ssh-ed25519 {encoded} root@tinyhost"));

    // The image authorizes the profile's key only; the test build adds the
    // harness's.
    let authorized = "root/.ssh/authorized_keys";
    assert_eq!(
        text(member(&entries, authorized)),
        format!("{OPERATOR_KEY}\n")
    );
    assert_eq!(entries[authorized].mode & 0o7777, 0o600);
    let (segment, _) = initrd_entries(&out.join("test/test-channel.cpio.zst"));
    let tested = text(member(&segment, authorized));
    assert!(
        tested.starts_with(&format!("{OPERATOR_KEY}\nssh-ed25519 ")),
        "{tested}"
    );
    assert!(
        tested.ends_with(" applbuild-test-harness@test-build\n"),
        "{tested}"
    );

    // root's password is the store's, hashed; the store's value is not in it.
    let password = store["root-password"].as_str().unwrap();
    let shadow = text(member(&entries, "etc/shadow"));
    assert_eq!(entries["etc/shadow"].mode & 0o7777, 0o600);
    let hash = shadow
        .strip_prefix("root:")
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    let salt = hash.split('$').nth(2).unwrap();
    assert_eq!(
        hash,
        applbuild_secrets::password::sha512_crypt(password, salt)
    );
    assert!(!shadow.contains(password));
}
