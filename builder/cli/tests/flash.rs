//! `applbuild flash` onto regular files standing in for disks: a tiny GPT
//! image (an EFI System partition with data, an empty data partition) and
//! its bmap, made with applbuild-image's own functions, so each test runs
//! in well under a second. Refusing a mounted disk or the running system's
//! disk needs block devices; the unit tests of `applbuild::flash` cover
//! the mountinfo and sysfs logic behind the latter.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use applbuild_image::bmap::{Bmap, create_bmap};
use applbuild_image::disk_image::{
    self, PartitionContent, PartitionKind, PartitionSource, SECTOR_SIZE, write_gpt_image,
};
use assert_cmd::Command;
use predicates::prelude::*;

const MIB: u64 = 1 << 20;

/// A temporary folder with `out/tiny/tiny.img` and `tiny.bmap`.
struct Fixture {
    dir: tempfile::TempDir,
    bmap: Bmap,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp.bin");
        // Data with zero blocks inside, so the bmap has several ranges.
        let content: Vec<u8> = (0..(MIB + MIB / 2) as usize)
            .map(|i| {
                if (i / 65536) % 4 == 2 {
                    0
                } else {
                    (i % 251) as u8 + 1
                }
            })
            .collect();
        fs::write(&esp, content).unwrap();
        let image_dir = dir.path().join("out/tiny");
        fs::create_dir_all(&image_dir).unwrap();
        let image = image_dir.join("tiny.img");
        write_gpt_image(
            &image,
            &[
                PartitionContent {
                    name: "esp",
                    kind: PartitionKind::EfiSystem,
                    source: PartitionSource::File(&esp),
                },
                PartitionContent {
                    name: "data",
                    kind: PartitionKind::LinuxData,
                    source: PartitionSource::Zeros { bytes: 2 * MIB },
                },
            ],
        )
        .unwrap();
        let bmap = create_bmap(&image).unwrap();
        fs::write(image_dir.join("tiny.bmap"), bmap.to_xml()).unwrap();
        Self { dir, bmap }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn image(&self) -> PathBuf {
        self.path("out/tiny/tiny.img")
    }

    fn image_bytes(&self) -> Vec<u8> {
        fs::read(self.image()).unwrap()
    }

    /// A file of `size` bytes of 0xAB, standing in for a used disk.
    fn target(&self, name: &str, size: u64) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, vec![0xAB; size as usize]).unwrap();
        path
    }

    /// `applbuild flash ARGS...` run in the temporary folder, which has no
    /// profiles/: flashing needs no project with --out or an image path.
    fn flash(&self, args: &[&str]) -> Command {
        let mut command = Command::cargo_bin("applbuild").unwrap();
        command.current_dir(self.dir.path()).arg("flash").args(args);
        command
    }
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Every mapped byte of the image is on the target, except the sectors a
/// moved backup GPT rewrites (the protective MBR, the primary header and
/// the image's old backup header), which are checked through the table.
fn assert_mapped_ranges_equal(fixture: &Fixture, target: &[u8], rewritten: &[u64]) {
    let image = fixture.image_bytes();
    for range in &fixture.bmap.ranges {
        let (start, end) = range.byte_span(fixture.bmap.block_size, fixture.bmap.image_size);
        for sector_start in (start..end).step_by(SECTOR_SIZE as usize) {
            let lba = sector_start / SECTOR_SIZE;
            let (from, to) = (sector_start as usize, (sector_start + SECTOR_SIZE) as usize);
            if !rewritten.contains(&lba) {
                assert!(target[from..to] == image[from..to], "sector {lba} differs");
            }
        }
    }
}

#[test]
fn flashing_a_larger_file_writes_verifies_and_moves_the_backup_gpt() {
    let fixture = Fixture::new();
    let image_bytes = fixture.bmap.image_size;
    let target = fixture.target("disk", image_bytes + 8 * MIB);
    let output = fixture
        .flash(&[text(&fixture.image()), text(&target), "--yes", "--json"])
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&output.get_output().stdout).unwrap();
    let mapped: u64 = fixture
        .bmap
        .ranges
        .iter()
        .map(|r| r.byte_span(4096, image_bytes))
        .map(|(start, end)| end - start)
        .sum();
    assert!(fixture.bmap.ranges.len() >= 3, "{:?}", fixture.bmap.ranges);
    assert_eq!(report["bytes_written"], mapped, "{report}");
    assert_eq!(
        report["ranges_verified"],
        fixture.bmap.ranges.len(),
        "{report}"
    );
    assert_eq!(report["image_bytes"], image_bytes, "{report}");
    assert_eq!(report["device_bytes"], image_bytes + 8 * MIB, "{report}");
    assert_eq!(report["device_kind"], "regular-file", "{report}");
    assert_eq!(report["backup_gpt_moved"], true, "{report}");
    assert_eq!(report["partition_table_reread"], serde_json::Value::Null);
    assert_eq!(report["device"], text(&target), "{report}");

    let written = fs::read(&target).unwrap();
    let old_backup = image_bytes / SECTOR_SIZE - 1;
    assert_mapped_ranges_equal(&fixture, &written, &[0, 1, old_backup]);
    // The holes of the image were not written: the old bytes are still there.
    let (_, first_end) = fixture.bmap.ranges[0].byte_span(4096, image_bytes);
    assert_eq!(written[first_end as usize], 0xAB);

    let disk = File::open(&target).unwrap();
    let table = disk_image::check_gpt(&disk, written.len() as u64).unwrap();
    let image_table = disk_image::read_partition_table(&File::open(fixture.image()).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(table.partitions, image_table.partitions);
    assert_eq!(table.backup_lba, written.len() as u64 / SECTOR_SIZE - 1);

    if let Some(sfdisk) = applbuild_testdata::host_tool("sfdisk", "fdisk") {
        let verify = std::process::Command::new(sfdisk)
            .arg("--verify")
            .arg(&target)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&verify.stdout);
        let err = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success(), "{out}{err}");
        assert!(out.contains("No errors detected"), "{out}{err}");
        assert!(err.trim().is_empty(), "{err}");
    }
}

#[test]
fn a_profile_name_finds_its_image_under_out() {
    let fixture = Fixture::new();
    let target = fixture.target("same-size", fixture.bmap.image_size);
    fixture
        .flash(&["tiny", text(&target), "--out", "out", "--yes"])
        .assert()
        .success()
        .stdout(predicate::str::contains("verified"))
        .stderr(predicate::str::contains(
            "image  out/tiny/tiny.img: 5.0 MiB",
        ));
    // Same size: nothing moved, so every mapped byte is the image's.
    assert_mapped_ranges_equal(&fixture, &fs::read(&target).unwrap(), &[]);

    fixture
        .flash(&["other", text(&target), "--out", "out", "--yes"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no image out/other/other.img"));
}

#[test]
fn the_current_partitions_are_shown_before_asking() {
    let fixture = Fixture::new();
    // The target already holds the image: its table is listed.
    let target = fixture.path("used");
    fs::copy(fixture.image(), &target).unwrap();
    let output = fixture
        .flash(&[text(&fixture.image()), text(&target), "--yes"])
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&output.get_output().stderr).into_owned();
    assert!(stderr.contains("regular file"), "{stderr}");
    assert!(stderr.contains("2 partition(s)"), "{stderr}");
    assert!(
        predicate::str::is_match(r"1\s+esp\s+2\.0 MiB\s+sectors 2048-6143")
            .unwrap()
            .eval(&stderr),
        "{stderr}"
    );
    let blank = fixture.target("blank", fixture.bmap.image_size);
    fixture
        .flash(&[text(&fixture.image()), text(&blank), "--yes"])
        .assert()
        .success()
        .stderr(predicate::str::contains("no GPT partition table"));
}

#[test]
fn a_target_smaller_than_the_image_is_refused_untouched() {
    let fixture = Fixture::new();
    let target = fixture.target("small", fixture.bmap.image_size - 4096);
    fixture
        .flash(&[text(&fixture.image()), text(&target), "--yes"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("smaller than the image"))
        .stderr(predicate::str::contains(text(&target)));
    assert!(fs::read(&target).unwrap().iter().all(|&b| b == 0xAB));
}

#[test]
fn directories_character_devices_and_missing_paths_are_refused() {
    let fixture = Fixture::new();
    let image = fixture.image();
    fixture
        .flash(&[text(&image), text(fixture.dir.path()), "--yes"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "is a directory, not a block device or a regular file",
        ));
    fixture
        .flash(&[text(&image), "/dev/null", "--yes"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "/dev/null is a character device, not a block device or a regular file",
        ));
    fixture
        .flash(&[text(&image), text(&fixture.path("nothing-here")), "--yes"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no device"))
        .stderr(predicate::str::contains("nothing-here"));
}

#[test]
fn without_a_terminal_and_without_yes_nothing_is_written() {
    let fixture = Fixture::new();
    let target = fixture.target("disk", fixture.bmap.image_size);
    // Even a piped "yes" is no confirmation: only a terminal or --yes is.
    fixture
        .flash(&[text(&fixture.image()), text(&target)])
        .write_stdin("yes\n")
        .assert()
        .failure()
        .stderr(predicate::str::contains("standard input is not a terminal"))
        .stderr(predicate::str::contains("pass --yes"));
    assert!(fs::read(&target).unwrap().iter().all(|&b| b == 0xAB));
}

#[test]
fn a_range_that_does_not_verify_is_an_error_naming_it() {
    let fixture = Fixture::new();
    let mut damaged = fixture.bmap.clone();
    let range = &mut damaged.ranges[1];
    range.sha256 = "0".repeat(64);
    let blocks = format!("blocks {}-{}", range.first_block, range.last_block);
    // to_xml fills in a fresh BmapFileChecksum: the file itself is consistent.
    fs::write(fixture.path("out/tiny/tiny.bmap"), damaged.to_xml()).unwrap();
    let target = fixture.target("disk", fixture.bmap.image_size);
    fixture
        .flash(&[text(&fixture.image()), text(&target), "--yes"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("verification failed"))
        .stderr(predicate::str::contains(blocks))
        .stderr(predicate::str::contains(format!(
            "the bmap says {}",
            "0".repeat(64)
        )));
}

#[test]
fn a_missing_edited_or_stale_bmap_is_refused() {
    let fixture = Fixture::new();
    let target = fixture.target("disk", fixture.bmap.image_size);
    let copy = fixture.path("copy.img");
    fs::copy(fixture.image(), &copy).unwrap();
    fixture
        .flash(&[text(&copy), text(&target), "--yes"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no bmap"))
        .stderr(predicate::str::contains("copy.bmap"));

    let bmap = fixture.path("out/tiny/tiny.bmap");
    let xml = fs::read_to_string(&bmap).unwrap();
    fs::write(
        &bmap,
        xml.replacen("<Range chksum=\"", "<Range chksum=\"0", 1),
    )
    .unwrap();
    fixture
        .flash(&[text(&fixture.image()), text(&target), "--yes"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("tiny.bmap"));

    fs::write(&bmap, &xml).unwrap();
    File::options()
        .write(true)
        .open(fixture.image())
        .unwrap()
        .set_len(fixture.bmap.image_size + 4096)
        .unwrap();
    fixture
        .flash(&[text(&fixture.image()), text(&target), "--yes"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("describes an image of"));
    assert!(fs::read(&target).unwrap().iter().all(|&b| b == 0xAB));
}
