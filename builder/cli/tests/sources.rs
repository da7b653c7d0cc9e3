//! End-to-end tests of `applbuild sources` against a signed local archive
//! with `bookworm` and `bookworm-security`, each with a `Sources` index:
//! the source packages of every binary package land verified, with their
//! lists; a tampered file and a source package no index lists are refused,
//! named.

mod common;

use std::fs;
use std::path::PathBuf;

use assert_cmd::Command;
use predicates::prelude::*;
use sha2::{Digest, Sha256};

use common::local_repo::{FakePackage, FakeSource, LocalRepo};

const SECURITY: &str = "bookworm-security";

/// Busybox in `bookworm-security`, which wins over bookworm's `1:1.35.0-4`.
const BUSYBOX_FIXED: &str = "1:1.35.0-4+deb12u1";

/// `app` (native source), `libc6` and `libc-bin` (binNMUs of `glibc`
/// 2.36-9) and `busybox`, with the source packages of all of them, and
/// `qemu-guest-agent` without one.
fn bookworm() -> (Vec<FakePackage>, Vec<FakeSource>) {
    let packages = vec![
        FakePackage::new("app", "1.0")
            .depends("libc6, libc-bin")
            .file("/usr/bin/app", b"app", 0o755),
        FakePackage::new("libc6", "2.36-9+b1").source("glibc (2.36-9)"),
        FakePackage::new("libc-bin", "2.36-9+b1").source("glibc (2.36-9)"),
        FakePackage::new("busybox", "1:1.35.0-4"),
        // Only a test build installs it, so no source of it is fetched:
        // the archive lists none.
        FakePackage::new("qemu-guest-agent", "1:7.2-1").depends("libc6"),
    ];
    let sources = vec![
        FakeSource::new("app", "1.0"),
        FakeSource::new("glibc", "2.36-9"),
        FakeSource::new("busybox", "1:1.35.0-4"),
    ];
    (packages, sources)
}

/// The files `applbuild sources` must write, with their contents.
fn expected_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = [
        FakeSource::new("app", "1.0"),
        FakeSource::new("glibc", "2.36-9"),
        FakeSource::new("busybox", BUSYBOX_FIXED),
    ]
    .iter()
    .flat_map(FakeSource::files)
    .collect();
    files.sort();
    files
}

/// A project whose profile `tiny` reads both suites of one archive.
struct Fixture {
    dir: tempfile::TempDir,
    main: LocalRepo,
    security: LocalRepo,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let (packages, sources) = bookworm();
        let main = LocalRepo::create(&dir.path().join("mirror"), "bookworm", &[]);
        main.publish_with_sources(&packages, &sources);
        let security = main.sibling_suite(SECURITY, &[]);
        security.publish_with_sources(
            &[FakePackage::new("busybox", BUSYBOX_FIXED)],
            &[FakeSource::new("busybox", BUSYBOX_FIXED)],
        );
        let profiles = dir.path().join("project/profiles");
        fs::create_dir_all(&profiles).unwrap();
        fs::write(
            profiles.join("tiny.toml"),
            format!(
                "[distribution]\nmirror = \"{}\"\nsuite = \"bookworm\"\nkeyring = \"{}\"\n\
                 suites = [{{ name = \"bookworm\" }}, {{ name = \"{SECURITY}\" }}]\n\n\
                 [packages]\ninclude = [\"app\", \"busybox\"]\n",
                main.url,
                main.keyring.display()
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

    /// `out/tiny/sources/`.
    fn sources_dir(&self) -> PathBuf {
        self.path("out/tiny/sources")
    }

    /// `applbuild --project P sources tiny --out O --cache-dir <cache> <extra>`.
    fn sources(&self, cache: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
        Command::new(env!("CARGO_BIN_EXE_applbuild"))
            .arg("--project")
            .arg(self.path("project"))
            .args(["sources", "tiny", "--out"])
            .arg(self.path("out"))
            .arg("--cache-dir")
            .arg(self.path(cache))
            .args(extra)
            .assert()
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The names of the files in `dir`, sorted.
fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_source_package_lands_verified_with_its_lists() {
    let fixture = Fixture::new();
    let output = fixture
        .sources("cache", &["--json"])
        .success()
        .get_output()
        .stdout
        .clone();
    let reports: serde_json::Value = serde_json::from_slice(&output).unwrap();
    let report = &reports[0];
    let sources: Vec<(&str, &str, &str, String)> = report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|source| {
            (
                source["name"].as_str().unwrap(),
                source["version"].as_str().unwrap(),
                source["suite"].as_str().unwrap(),
                source["binaries"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            ("app", "1.0", "bookworm", r#"["app"]"#.to_string()),
            (
                "busybox",
                BUSYBOX_FIXED,
                SECURITY,
                r#"["busybox"]"#.to_string()
            ),
            (
                "glibc",
                "2.36-9",
                "bookworm",
                r#"["libc-bin","libc6"]"#.to_string()
            ),
        ]
    );
    assert_eq!(report["files"], 8);
    assert_eq!(report["downloaded"], 8);

    let dir = fixture.sources_dir();
    let expected = expected_files();
    let mut names: Vec<String> = expected.iter().map(|(name, _)| name.clone()).collect();
    names.extend(["SHA256SUMS".to_string(), "sources.txt".to_string()]);
    names.sort();
    assert_eq!(file_names(&dir), names);
    let mut sums = String::new();
    for (name, contents) in &expected {
        assert_eq!(&fs::read(dir.join(name)).unwrap(), contents, "{name}");
        sums.push_str(&format!("{}  {name}\n", sha256_hex(contents)));
    }
    assert_eq!(fs::read_to_string(dir.join("SHA256SUMS")).unwrap(), sums);
    let list = fs::read_to_string(dir.join("sources.txt")).unwrap();
    assert!(
        list.contains("\nglibc 2.36-9 bookworm: libc-bin libc6\n"),
        "{list}"
    );
    assert!(
        list.contains(&format!("\nbusybox {BUSYBOX_FIXED} {SECURITY}: busybox\n")),
        "{list}"
    );

    fixture
        .sources("cache", &["--offline"])
        .success()
        .stdout(predicate::str::contains(
            "tiny: 3 source packages, 8 files, 0.0 MiB (0 downloaded, 8 from cache)",
        ));
    assert_eq!(file_names(&dir), names);
}

#[test]
fn a_tampered_source_file_is_refused_naming_it() {
    let fixture = Fixture::new();
    fixture.sources("cache", &[]).success();
    let tarball = fixture.sources_dir().join("glibc_2.36.orig.tar.xz");
    let good = fs::read(&tarball).unwrap();

    fixture.main.corrupt_source_file("glibc_2.36.orig.tar.xz");
    fixture
        .sources("fresh-cache", &[])
        .failure()
        .stderr(predicate::str::contains("source package glibc 2.36-9: "))
        .stderr(predicate::str::contains("glibc_2.36.orig.tar.xz"))
        .stderr(predicate::function(|stderr: &str| {
            stderr.matches("SHA256 mismatch").count() == 1
        }));
    assert_eq!(
        fs::read(&tarball).unwrap(),
        good,
        "the previous folder stays"
    );
    assert_eq!(
        file_names(&fixture.path("out/tiny")),
        ["sources"],
        "no staging folder is left behind"
    );
}

#[test]
fn a_source_package_no_index_lists_is_named() {
    let fixture = Fixture::new();
    fixture
        .security
        .publish_with_sources(&[FakePackage::new("busybox", BUSYBOX_FIXED)], &[]);
    fixture.sources("cache", &[]).failure().stderr(predicate::str::contains(format!(
        "source package busybox {BUSYBOX_FIXED} (of busybox) is in no Sources index of bookworm, {SECURITY}"
    )));
    assert!(!fixture.sources_dir().exists());
}

#[test]
fn help_explains_sources_with_an_example() {
    Command::new(env!("CARGO_BIN_EXE_applbuild"))
        .args(["sources", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("out/<profile>/sources/"))
        .stdout(predicate::str::contains("sha256sum -c SHA256SUMS"))
        .stdout(predicate::str::contains("--suite-mirror"));
}
