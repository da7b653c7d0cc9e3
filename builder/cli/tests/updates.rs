//! End-to-end tests of several suites and `applbuild update`: a signed
//! local archive with `bookworm` and `bookworm-security`, a package
//! updated in the second, and the refusals (a replayed InRelease, a stale
//! suite, a locked version with another hash, a corrupt cached resolution).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use assert_cmd::Command;
use object::write::Object;
use object::{Architecture, BinaryFormat, Endianness, SectionKind};
use predicates::prelude::*;

use common::local_repo::{FakePackage, LocalRepo};

const RELEASE: &str = "6.1.0-test";
const SECURITY: &str = "bookworm-security";

/// A relocatable ELF with only a `.modinfo` section, as module selection reads it.
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

/// A kernel with one module `a`, `busybox` at `busybox` holding `contents`,
/// and `qemu-guest-agent`.
fn packages(busybox: &str, contents: &[u8]) -> Vec<FakePackage> {
    let modules = format!("/lib/modules/{RELEASE}");
    vec![
        FakePackage::new("linux-image-test", "6.1.0-1")
            .file(&format!("/boot/vmlinuz-{RELEASE}"), b"MZ kernel", 0o644)
            .file(
                &format!("{modules}/kernel/drivers/x/a.ko"),
                &fake_module(&["name=a", "depends="]),
                0o644,
            )
            .file(
                &format!("{modules}/modules.order"),
                b"kernel/drivers/x/a.ko\n",
                0o644,
            )
            .file(&format!("{modules}/modules.builtin"), b"", 0o644),
        busybox_package(busybox, contents),
        // Resolved with every image for its test build (`build --test`).
        FakePackage::new("qemu-guest-agent", "1:7.2-1").file("/usr/sbin/qemu-ga", b"ga", 0o755),
    ]
}

fn busybox_package(version: &str, contents: &[u8]) -> FakePackage {
    FakePackage::new("busybox", version).file("/bin/busybox", contents, 0o755)
}

/// A project reading `bookworm` and `bookworm-security` of one archive.
struct Fixture {
    dir: tempfile::TempDir,
    main: LocalRepo,
    security: LocalRepo,
}

impl Fixture {
    /// `bookworm` with busybox 1.0, `bookworm-security` with nothing yet.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let main = LocalRepo::create(
            &dir.path().join("mirror"),
            "bookworm",
            &packages("1.0-1", b"busybox 1.0"),
        );
        let security = main.sibling_suite(SECURITY, &[]);
        let profiles = dir.path().join("project/profiles");
        fs::create_dir_all(&profiles).unwrap();
        fs::write(
            profiles.join("tiny.toml"),
            format!(
                r#"[distribution]
mirror = "{mirror}"
suite = "bookworm"
keyring = "{keyring}"
suites = [{{ name = "bookworm" }}, {{ name = "{SECURITY}" }}]

[packages]
include = ["linux-image-test", "busybox"]

[kernel]
modules = ["a"]
"#,
                mirror = main.url,
                keyring = main.keyring.display()
            ),
        )
        .unwrap();
        Self {
            dir,
            main,
            security,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn lock_text(&self) -> String {
        fs::read_to_string(self.path("project/applbuild.lock")).unwrap_or_default()
    }

    /// `applbuild --project P <command> tiny --cache-dir C <extra>`.
    fn run(&self, command: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_applbuild"));
        cmd.arg("--project")
            .arg(self.path("project"))
            .args([command, "tiny", "--cache-dir"])
            .arg(self.path("cache"))
            .args(extra);
        if command == "build" {
            cmd.arg("--out").arg(self.path("out"));
        }
        cmd.assert()
    }

    fn manifest(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.path("out/tiny/manifest.json")).unwrap()).unwrap()
    }
}

fn manifest_package<'m>(manifest: &'m serde_json::Value, name: &str) -> &'m serde_json::Value {
    manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|package| package["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in the manifest"))
}

#[test]
fn security_update_is_reported_then_taken_by_update() {
    let fixture = Fixture::new();
    fixture.run("build", &[]).success();
    assert!(fixture.lock_text().contains(r#"version = "1.0-1""#));
    assert!(fixture.lock_text().contains(r#"suite = "bookworm""#));

    fixture
        .security
        .publish(&[busybox_package("1.0-1+deb12u1", b"busybox fixed")]);
    fixture
        .run("build", &[])
        .success()
        .stdout(predicate::str::contains(
            "1 locked package(s) have newer versions (1 from a security suite: busybox 1.0-1 -> 1.0-1+deb12u1)",
        ));
    assert_eq!(
        manifest_package(&fixture.manifest(), "busybox")["version"],
        "1.0-1"
    );

    let before = fixture.lock_text();
    fixture
        .run("update", &["--dry-run"])
        .success()
        .stdout(predicate::str::contains(
            "busybox 1.0-1 -> 1.0-1+deb12u1 (bookworm-security)",
        ));
    assert_eq!(
        fixture.lock_text(),
        before,
        "--dry-run must not write the lock"
    );

    let output = fixture
        .run("update", &["--json"])
        .success()
        .get_output()
        .stdout
        .clone();
    let reports: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(
        reports[0]["changes"],
        serde_json::json!([{"name": "busybox", "old": "1.0-1", "new": "1.0-1+deb12u1", "suite": SECURITY}])
    );
    assert!(fixture.lock_text().contains(r#"version = "1.0-1+deb12u1""#));
    assert!(
        fixture
            .lock_text()
            .contains(r#"suite = "bookworm-security""#)
    );

    fixture
        .run("build", &["--locked"])
        .success()
        .stdout(predicate::str::contains("newer versions").not());
    let manifest = fixture.manifest();
    let busybox = manifest_package(&manifest, "busybox");
    assert_eq!(busybox["version"], "1.0-1+deb12u1");
    assert_eq!(busybox["suite"], SECURITY);
    assert_eq!(
        manifest_package(&manifest, "linux-image-test")["suite"],
        "bookworm"
    );
}

#[test]
fn an_inrelease_older_than_the_cached_one_is_refused() {
    let fixture = Fixture::new();
    fixture.run("build", &[]).success();
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    fixture
        .main
        .set_release_field("Date", &applbuild_deb::release::format_date(an_hour_ago));
    fixture
        .run("build", &[])
        .failure()
        .stderr(predicate::str::contains("older than the cached one"));
}

#[test]
fn a_suite_older_than_max_index_age_is_refused() {
    let fixture = Fixture::new();
    let a_month_ago = SystemTime::now() - Duration::from_secs(30 * 86400);
    fixture
        .security
        .set_release_field("Date", &applbuild_deb::release::format_date(a_month_ago));
    fixture
        .run("build", &["--max-index-age", "bookworm-security=7d"])
        .failure()
        .stderr(predicate::str::contains("older than max_index_age 168 h"));
    fixture
        .run("build", &["--max-index-age", "bookworm-security=40d"])
        .success();
}

#[test]
fn a_locked_version_with_another_hash_is_a_hard_error() {
    let fixture = Fixture::new();
    fixture.run("build", &[]).success();
    let locked = sha256_of(&fixture.main.deb_path("busybox"));
    fs::remove_dir_all(fixture.main.root.join("pool")).unwrap();
    fixture
        .main
        .publish(&packages("1.0-1", b"busybox, other bytes"));
    let served = sha256_of(&fixture.main.deb_path("busybox"));
    assert_ne!(locked, served);
    for (command, extra) in [
        ("build", &[][..]),
        ("build", &["--locked"][..]),
        ("update", &[][..]),
    ] {
        fixture
            .run(command, extra)
            .failure()
            .stderr(predicate::str::contains(&locked))
            .stderr(predicate::str::contains(&served));
    }
}

#[test]
fn a_corrupt_cached_resolution_is_discarded_and_rebuilt() {
    let fixture = Fixture::new();
    // The second build (the first with a lock) caches its resolution.
    fixture.run("build", &[]).success();
    fixture.run("build", &[]).success();
    let entries: Vec<PathBuf> = fs::read_dir(fixture.path("cache/resolutions"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1);
    let mut data = fs::read(&entries[0]).unwrap();
    let middle = data.len() / 2;
    data[middle..middle + 8].copy_from_slice(b"XXXXXXXX");
    fs::write(&entries[0], data).unwrap();
    fixture
        .run("build", &[])
        .success()
        .stderr(predicate::str::contains("is corrupt; discarded"));
    fixture
        .run("build", &[])
        .success()
        .stderr(predicate::str::contains("corrupt").not());
}

fn sha256_of(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

/// Overwrites eight bytes in the middle of `path`.
fn corrupt(path: &Path) {
    let mut data = fs::read(path).unwrap();
    let middle = data.len() / 2;
    data[middle..middle + 8].copy_from_slice(b"XXXXXXXX");
    fs::write(path, data).unwrap();
}

/// The cache files of `folder` whose names end with `suffix`.
fn cache_files(fixture: &Fixture, folder: &str, suffix: &str) -> Vec<PathBuf> {
    fs::read_dir(fixture.path("cache").join(folder))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect()
}

#[test]
fn corrupt_unpacked_copies_and_segments_are_discarded_and_rebuilt() {
    let fixture = Fixture::new();
    fixture.run("build", &[]).success();
    let initrd = fs::read(fixture.path("out/tiny/initrd.img")).unwrap();
    for path in cache_files(&fixture, "unpacked", ".tar.zst") {
        corrupt(&path);
    }
    for path in cache_files(&fixture, "segments", ".cpio.zst") {
        corrupt(&path);
    }
    fixture
        .run("build", &[])
        .success()
        .stderr(predicate::str::contains(
            "discarded the cached unpacked files of busybox",
        ))
        .stderr(predicate::str::contains(
            "failed its SHA256 check; discarded",
        ));
    assert_eq!(
        fs::read(fixture.path("out/tiny/initrd.img")).unwrap(),
        initrd
    );
    fixture
        .run("build", &[])
        .success()
        .stderr(predicate::str::contains("discarded").not());
}
