//! Measures a whole image build from the hypervisor's real packages (the
//! `.deb`s `applbuild.lock` pins, from applbuild's cache): cold and warm
//! unpacking, module trimming, each zstd level, and the rewrite after a
//! config edit. Run with `cargo bench --locked -p applbuild-image --bench
//! initramfs` after a hypervisor build filled the cache (docs/benchmarks.md).

use std::path::Path;
use std::time::Instant;

use applbuild_image::initramfs::{SegmentPlan, write_initramfs};
use applbuild_progress::Reporter;
use applbuild_rootfs::deb_archive::read_data_entries_cached;
use applbuild_rootfs::kernel_modules::select_modules;
use applbuild_rootfs::rootfs::{PathFilter, RootfsTree};
use applbuild_testdata::LockedDeb;
use rayon::prelude::*;

/// The level the config-edit rebuild figure is measured at.
const WARM_EDIT_LEVEL: i32 = 9;

/// The zstd levels compared.
const LEVELS: [i32; 4] = [3, 9, 15, 19];

/// The modules kept, as the hypervisor profile lists them.
const MODULES: [&str; 15] = [
    "iscsi_tcp",
    "sd_mod",
    "dm_multipath",
    "dm_round_robin",
    "dm_service_time",
    "virtio_net",
    "virtio_blk",
    "virtio_pci",
    "virtio_console",
    "bridge",
    "tun",
    "ext4",
    "kvm_amd",
    "kvm_intel",
    "vfat",
];

fn main() {
    // The bench harness passes `--bench`; there are no other options.
    let debs = applbuild_testdata::locked_debs("hypervisor").unwrap_or_else(|missing| {
        eprintln!(
            "{missing}; `{}` fills the cache",
            applbuild_testdata::FILL_COMMAND
        );
        std::process::exit(1)
    });
    let cache = tempfile::tempdir().expect("scratch folder");
    build_tree(&debs, cache.path(), "cold");
    let tree = build_tree(&debs, cache.path(), "warm");
    for level in LEVELS {
        compress_at(&tree, cache.path(), level);
    }
    config_edit(&debs, cache.path());
}

/// The initramfs segments an image build writes.
fn plan() -> SegmentPlan {
    SegmentPlan::new()
        .segment("modules", |e| e.path.starts_with("usr/lib/modules/"))
        .segment("packages", |e| e.owner.is_some())
        .segment("config", |_| true)
}

/// Unpacks `debs` (through the unpack cache in `cache`), inserts them into a
/// tree and trims the kernel modules, printing the time of each step.
fn build_tree(debs: &[LockedDeb], cache: &Path, label: &str) -> RootfsTree {
    let started = Instant::now();
    let unpacked: Vec<_> = debs
        .par_iter()
        .map(|deb| {
            let sha256 = deb.path.file_name().unwrap().to_str().unwrap();
            read_data_entries_cached(&deb.path, sha256, cache)
                .unwrap_or_else(|error| panic!("{}: {error}", deb.name))
                .0
        })
        .collect();
    let unpack = started.elapsed();
    let mut tree = RootfsTree::new();
    for (deb, entries) in debs.iter().zip(unpacked) {
        tree.insert_package(&deb.name, entries, &PathFilter::default())
            .unwrap_or_else(|error| panic!("{}: {error}", deb.name));
    }
    let inserted = started.elapsed();
    let selection = select_modules(&mut tree, &MODULES, &[]).expect("selecting modules");
    println!(
        "{label}: {} packages unpacked in {unpack:.2?}, inserted by {inserted:.2?}, \
         modules trimmed by {:.2?} ({} kept); tree {} entries, {} MB, dropped {:?}",
        debs.len(),
        started.elapsed(),
        selection.load_order.len(),
        tree.len(),
        tree.total_size() / 1_000_000,
        tree.dropped(),
    );
    tree
}

/// Writes the initramfs of `tree` at zstd `level`, then again from the
/// segments just written, printing sizes and times.
fn compress_at(tree: &RootfsTree, cache: &Path, level: i32) {
    let out = cache.join(format!("initrd-{level}.img"));
    let segments = tempfile::tempdir().expect("scratch folder");
    let write = || {
        write_initramfs(
            tree,
            &plan(),
            segments.path(),
            level,
            &out,
            &Reporter::hidden(),
        )
        .expect("writing the initramfs")
    };
    let started = Instant::now();
    let report = write();
    let cold = started.elapsed();
    let started = Instant::now();
    let again = write();
    assert!(again.segments.iter().all(|s| s.reused || s.entries == 0));
    let uncompressed: u64 = report.segments.iter().map(|s| s.uncompressed_bytes).sum();
    println!(
        "level {level}: {:.1} MB from {:.1} MB in {cold:.2?} (reused: {:.2?}); {:?}",
        report.total_bytes as f64 / 1e6,
        uncompressed as f64 / 1e6,
        started.elapsed(),
        report
            .segments
            .iter()
            .map(|s| (s.name.as_str(), s.compressed_bytes))
            .collect::<Vec<_>>(),
    );
}

/// A warm rebuild, then the image rewritten after a config file changed
/// (only the config segment is recompressed).
fn config_edit(debs: &[LockedDeb], cache: &Path) {
    let started = Instant::now();
    let mut tree = build_tree(debs, cache, "warm rebuild");
    let out = cache.join("initrd.img");
    let segments = cache.join("seg");
    let write = |tree: &RootfsTree| {
        write_initramfs(
            tree,
            &plan(),
            &segments,
            WARM_EDIT_LEVEL,
            &out,
            &Reporter::hidden(),
        )
        .expect("writing the initramfs")
    };
    write(&tree);
    tree.add_file("etc/hostname", b"hv1\n".to_vec(), 0o644, 0, 0)
        .expect("adding etc/hostname");
    let edit = Instant::now();
    let report = write(&tree);
    println!(
        "config edit: image rewritten in {:.2?} (reused {:?}); whole warm pipeline {:.2?}",
        edit.elapsed(),
        report.segments.iter().map(|s| s.reused).collect::<Vec<_>>(),
        started.elapsed()
    );
}
