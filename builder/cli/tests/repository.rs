//! `Repository` against a signed local archive (`file://`, no network):
//! the chain InRelease → Release → Packages → .deb, the cache, and every
//! way a mirror can hand over something wrong.

mod common;

use std::fs;
use std::path::Path;

use applbuild_deb::package_index::{PackageIndex, PackageRecord};
use applbuild_progress::Reporter;
use applbuild_repo::cache::Cache;
use applbuild_repo::repository::{IndexInfo, Repository, RepositoryConfig, RepositoryError};
use applbuild_repo::signature::SignatureError;
use applbuild_rootfs::deb_archive::{DebArchive, EntryKind};
use common::local_repo::{FakePackage, LocalRepo};

fn packages() -> Vec<FakePackage> {
    vec![
        FakePackage::new("busybox", "1:1.35.0-4")
            .essential()
            .file("/bin/busybox", b"\x7fELF busybox", 0o755)
            .symlink("/bin/sh", "busybox"),
        FakePackage::new("libfoo1", "2.0-1")
            .provides("libfoo")
            .file("/usr/lib/libfoo.so.1", b"foo", 0o644),
        FakePackage::new("app", "1.0")
            .depends("busybox (>= 1:1.30), libfoo")
            .file("/etc/app.conf", b"x=1\n", 0o600),
    ]
}

struct Setup {
    _dir: tempfile::TempDir,
    repo: LocalRepo,
    cache: Cache,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let repo = LocalRepo::create(&dir.path().join("mirror"), "bookworm", &packages());
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    Setup {
        _dir: dir,
        repo,
        cache,
    }
}

fn repository_config(repo: &LocalRepo) -> RepositoryConfig {
    RepositoryConfig {
        mirror: repo.url.clone(),
        suite: repo.suite.clone(),
        components: vec!["main".into()],
        architecture: "amd64".into(),
        keyring: repo.keyring.clone(),
        offline: false,
        max_index_age: None,
    }
}

fn repository(repo: &LocalRepo, offline: bool) -> Repository {
    Repository::new(RepositoryConfig {
        offline,
        ..repository_config(repo)
    })
}

fn fetch_index(
    repo: &LocalRepo,
    cache: &Cache,
    offline: bool,
) -> Result<(PackageIndex, IndexInfo), RepositoryError> {
    fetch_index_with(&repository(repo, offline), cache)
}

/// The verified index, the way a build reads it: blobs first, then the parse.
fn fetch_index_with(
    repository: &Repository,
    cache: &Cache,
) -> Result<(PackageIndex, IndexInfo), RepositoryError> {
    let info = repository.fetch_index_info(cache, &Reporter::hidden())?;
    let index = repository.load_index(cache, &info)?;
    Ok((index, info))
}

fn records(index: &PackageIndex) -> Vec<PackageRecord> {
    ["app", "busybox", "libfoo1"]
        .iter()
        .map(|name| {
            index
                .versions(name)
                .first()
                .unwrap_or_else(|| panic!("{name} missing"))
                .clone()
        })
        .collect()
}

fn blob_names(cache: &Cache) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(cache.root().join("blobs/sha256"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn index_and_packages_are_fetched_verified_and_then_served_from_the_cache() {
    let Setup { _dir, repo, cache } = setup();
    let (index, info) = fetch_index(&repo, &cache, false).unwrap();
    assert_eq!(index.len(), 3);
    assert_eq!(info.codename.as_deref(), Some("bookworm"));
    assert_eq!(info.mirror, repo.url);
    assert_eq!(info.indexes.len(), 1);
    assert_eq!(info.indexes[0].path, "main/binary-amd64/Packages.xz");
    assert!(
        cache.get(&info.indexes[0].sha256).is_some(),
        "index blob cached"
    );

    let wanted = records(&index);
    let busybox = &wanted[1];
    assert_eq!(busybox.version.to_string(), "1:1.35.0-4");
    assert!(busybox.essential);
    assert_eq!(
        busybox.filename,
        "pool/main/b/busybox/busybox_1.35.0-4_amd64.deb"
    );

    let paths = repository(&repo, false)
        .fetch_packages(&cache, &wanted, &Reporter::hidden())
        .unwrap();
    assert_eq!(paths.len(), 3);
    for (record, path) in wanted.iter().zip(&paths) {
        assert_eq!(
            path,
            &cache.root().join("blobs/sha256").join(&record.sha256)
        );
        assert_eq!(
            fs::read(path).unwrap(),
            fs::read(repo.deb_path(&record.name)).unwrap()
        );
        let control = DebArchive::open(path).unwrap().control().unwrap();
        assert!(
            control.contains(&format!("Package: {}\n", record.name)),
            "{control}"
        );
    }
    let mut summary: Vec<(String, EntryKind, u32)> = Vec::new();
    DebArchive::open(&paths[1])
        .unwrap()
        .for_each_data_entry(|e| {
            summary.push((e.path, e.kind, e.mode));
            Ok::<(), applbuild_rootfs::deb_archive::DebError>(())
        })
        .unwrap();
    assert_eq!(
        summary,
        [
            ("bin".to_string(), EntryKind::Dir, 0o755),
            (
                "bin/busybox".to_string(),
                EntryKind::File(b"\x7fELF busybox".as_slice().into()),
                0o755
            ),
            (
                "bin/sh".to_string(),
                EntryKind::Symlink("busybox".into()),
                0o777
            ),
        ]
    );

    // The mirror loses its pool and indexes: everything still comes from the cache.
    let before = blob_names(&cache);
    fs::remove_dir_all(repo.root.join("pool")).unwrap();
    fs::remove_dir_all(repo.root.join("dists/bookworm/main")).unwrap();
    let (again, info_again) = fetch_index(&repo, &cache, false).unwrap();
    assert_eq!(info_again, info);
    let again_paths = repository(&repo, false)
        .fetch_packages(&cache, &records(&again), &Reporter::hidden())
        .unwrap();
    assert_eq!(again_paths, paths);
    assert_eq!(blob_names(&cache), before, "nothing new was downloaded");

    // And with no mirror at all, offline mode uses the stored InRelease.
    fs::remove_dir_all(&repo.root).unwrap();
    let (offline, offline_info) = fetch_index(&repo, &cache, true).unwrap();
    assert_eq!(offline.len(), 3);
    assert_eq!(offline_info.inrelease_sha256, info.inrelease_sha256);
    let offline_paths = repository(&repo, true)
        .fetch_packages(&cache, &records(&offline), &Reporter::hidden())
        .unwrap();
    assert_eq!(offline_paths, paths);
}

#[test]
fn tampered_package_is_rejected_and_not_cached() {
    let Setup { _dir, repo, cache } = setup();
    let (index, _) = fetch_index(&repo, &cache, false).unwrap();
    repo.corrupt_deb("libfoo1");
    let wanted = records(&index);
    let error = repository(&repo, false)
        .fetch_packages(&cache, &wanted, &Reporter::hidden())
        .unwrap_err();
    let RepositoryError::Packages { failures } = &error else {
        panic!("{error}");
    };
    assert_eq!(failures.len(), 1, "{error}");
    assert_eq!(failures[0].package, "libfoo1");
    assert!(
        failures[0]
            .url
            .ends_with("pool/main/l/libfoo1/libfoo1_2.0-1_amd64.deb"),
        "{}",
        failures[0].url
    );
    let message = error.to_string();
    assert!(
        message.contains("libfoo1_2.0-1_amd64.deb") && message.contains("SHA256 mismatch"),
        "{message}"
    );

    let libfoo = &wanted[2];
    assert_eq!(cache.get(&libfoo.sha256), None, "bad blob discarded");
    assert!(
        cache.get(&wanted[0].sha256).is_some() && cache.get(&wanted[1].sha256).is_some(),
        "good ones kept"
    );
    assert!(
        blob_names(&cache).iter().all(|name| !name.starts_with('.')),
        "no temp files left: {:?}",
        blob_names(&cache)
    );
}

#[test]
fn truncated_package_is_rejected() {
    let Setup { _dir, repo, cache } = setup();
    let (index, _) = fetch_index(&repo, &cache, false).unwrap();
    let path = repo.deb_path("app");
    let data = fs::read(&path).unwrap();
    fs::write(&path, &data[..data.len() / 3]).unwrap();
    let wanted = records(&index);
    let error = repository(&repo, false)
        .fetch_packages(&cache, &wanted[..1], &Reporter::hidden())
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("app 1.0") && message.contains("truncated"),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "expected {} bytes, got {}",
            data.len(),
            data.len() / 3
        )),
        "{message}"
    );
    assert_eq!(cache.get(&wanted[0].sha256), None);
}

#[test]
fn missing_package_names_url_and_package() {
    let Setup { _dir, repo, cache } = setup();
    let (index, _) = fetch_index(&repo, &cache, false).unwrap();
    fs::remove_file(repo.deb_path("busybox")).unwrap();
    let error = repository(&repo, false)
        .fetch_packages(&cache, &records(&index), &Reporter::hidden())
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("busybox 1:1.35.0-4 from file://") && message.contains("no such file"),
        "{message}"
    );
}

#[test]
fn inrelease_signed_by_an_unknown_key_is_rejected() {
    let Setup { _dir, repo, cache } = setup();
    repo.resign_with_other_key();
    let error = fetch_index(&repo, &cache, false).unwrap_err();
    assert!(
        matches!(
            error,
            RepositoryError::Signature(SignatureError::NoMatchingKey { .. })
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("dists/bookworm/InRelease"),
        "{error}"
    );
    assert!(
        cache
            .latest(&format!("{}/dists/bookworm/InRelease", repo.url))
            .is_none(),
        "unverified InRelease not stored"
    );
}

#[test]
fn edited_inrelease_is_rejected() {
    let Setup { _dir, repo, cache } = setup();
    let path = repo.root.join("dists/bookworm/InRelease");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        text.replace("Label: applbuild-test", "Label: applbuild-tesT"),
    )
    .unwrap();
    let error = fetch_index(&repo, &cache, false).unwrap_err();
    assert!(
        matches!(
            error,
            RepositoryError::Signature(SignatureError::BadSignature { .. })
        ),
        "{error}"
    );
}

#[test]
fn index_not_matching_release_is_rejected() {
    let Setup { _dir, repo, cache } = setup();
    let binary = repo.root.join("dists/bookworm/main/binary-amd64");
    fs::remove_dir_all(binary.join("by-hash")).unwrap();
    let mut data = fs::read(binary.join("Packages.xz")).unwrap();
    data.push(b'\n');
    fs::write(binary.join("Packages.xz"), data).unwrap();
    let error = fetch_index(&repo, &cache, false).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("Packages.xz") && message.contains("size mismatch"),
        "{message}"
    );
    assert!(blob_names(&cache).is_empty(), "{:?}", blob_names(&cache));
}

#[test]
fn plain_index_path_is_used_when_by_hash_is_missing() {
    let Setup { _dir, repo, cache } = setup();
    fs::remove_dir_all(repo.root.join("dists/bookworm/main/binary-amd64/by-hash")).unwrap();
    let (index, _) = fetch_index(&repo, &cache, false).unwrap();
    assert_eq!(index.len(), 3);
}

#[test]
fn release_for_another_suite_is_rejected() {
    let Setup { _dir, repo, cache } = setup();
    let dists = repo.root.join("dists");
    fs::rename(dists.join("bookworm"), dists.join("trixie")).unwrap();
    let repository = Repository::new(RepositoryConfig {
        suite: "trixie".into(),
        ..repository_config(&repo)
    });
    let error = fetch_index_with(&repository, &cache).unwrap_err();
    assert!(
        matches!(error, RepositoryError::WrongSuite { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("not \"trixie\""), "{error}");
}

#[test]
fn expired_release_is_rejected() {
    let Setup { _dir, repo, cache } = setup();
    repo.set_release_field("Valid-Until", "Sun, 01 Jan 2023 00:00:00 UTC");
    let error = fetch_index(&repo, &cache, false).unwrap_err();
    assert!(matches!(error, RepositoryError::Expired { .. }), "{error}");
    assert!(
        error.to_string().contains("expired on Sun, 01 Jan 2023"),
        "{error}"
    );

    let far = "Fri, 01 Jan 2100 00:00:00 UTC";
    repo.set_release_field("Valid-Until", far);
    assert_eq!(fetch_index(&repo, &cache, false).unwrap().0.len(), 3);
}

#[test]
fn missing_component_is_named() {
    let Setup { _dir, repo, cache } = setup();
    let repository = Repository::new(RepositoryConfig {
        components: vec!["main".into(), "contrib".into()],
        ..repository_config(&repo)
    });
    let error = fetch_index_with(&repository, &cache).unwrap_err();
    assert!(
        error.to_string().contains("contrib/binary-amd64/Packages"),
        "{error}"
    );
}

#[test]
fn offline_without_a_cached_inrelease_says_what_is_missing() {
    let Setup { _dir, repo, cache } = setup();
    let error = fetch_index(&repo, &cache, true).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("offline") && message.contains("dists/bookworm/InRelease"),
        "{message}"
    );

    // Index cached, packages not: offline fetch names the packages.
    let (index, _) = fetch_index(&repo, &cache, false).unwrap();
    let error = repository(&repo, true)
        .fetch_packages(&cache, &records(&index), &Reporter::hidden())
        .unwrap_err();
    assert!(error.to_string().contains("busybox_1:1.35.0-4"), "{error}");
}

#[test]
fn keyring_path_is_named_when_missing() {
    let Setup { _dir, repo, cache } = setup();
    let repository = Repository::new(RepositoryConfig {
        keyring: Path::new("/nonexistent/archive.gpg").to_path_buf(),
        ..repository_config(&repo)
    });
    let error = fetch_index_with(&repository, &cache).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/archive.gpg"),
        "{error}"
    );
}
