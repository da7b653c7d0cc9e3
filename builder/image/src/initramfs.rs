//! Writes the initramfs: zstd-compressed cpio segments, concatenated.
//!
//! The kernel unpacks concatenated archives one after the other, so the
//! tree is split into named segments (for example the packages, the kernel
//! modules and the generated configuration) and each segment is compressed
//! on its own. A compressed segment is cached under
//! `<cache_root>/segments/<key>.cpio.zst`, keyed by the digest of its
//! entries, the level, the mtime and the zstd version; an edit to the
//! configuration then recompresses only the small configuration segment.
//!
//! Every segment also carries the parent directories of its entries, since
//! the kernel does not create missing parents; a directory repeated in
//! several segments is recreated with the same mode and owner, which
//! changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::cpio;
use applbuild_fs::AtomicFile;
use applbuild_progress::{Reporter, Unit};
use applbuild_rootfs::deb_archive::EntryKind;
use applbuild_rootfs::rootfs::{Node, RootfsTree, digest_entries};

// The zstd level comes from the profile (`image.compression_level`, 19
// unless a profile says otherwise). Measured on the hypervisor tree (218 MB
// of cpio, 2 cores): level 3 gives 70.9 MB in 1.4 s, 9 gives 65.1 MB in
// 3.8 s, 15 gives 64.3 MB in 25 s and 19 gives 58.6 MB in 79 s. Level 19 is
// affordable because a segment is compressed once and then reused from the
// cache until its entries change. Window sizes stay at the level's default
// (at most 8 MiB), which the kernel's early decompressor allocates without
// trouble.

/// The mtime every cpio member carries.
pub const MTIME: u32 = 0;

/// Bumped when the segment layout changes, so old cache files are not used.
const SEGMENT_FORMAT: &str = "applbuild-initramfs-segment-v1";

/// Errors while writing the image; each names the file or entry.
#[derive(Debug, Error)]
pub enum InitramfsError {
    /// No segment of the plan takes this path.
    #[error("no initramfs segment takes {path}")]
    Unassigned {
        /// The path.
        path: String,
    },
    /// Two segments have the same name.
    #[error("initramfs segment {name} is defined twice")]
    DuplicateSegment {
        /// The repeated name.
        name: String,
    },
    /// The plan has no segments.
    #[error("the initramfs segment plan is empty")]
    EmptyPlan,
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing a segment's cpio stream failed.
    #[error("segment {segment}: {source}")]
    Segment {
        /// The segment.
        segment: String,
        /// The underlying error (names the entry for bad input).
        source: io::Error,
    },
}

/// What a segment predicate sees of a tree entry.
#[derive(Debug, Clone, Copy)]
pub struct SegmentEntry<'a> {
    /// Relative path.
    pub path: &'a str,
    /// The node.
    pub node: &'a Node,
    /// The package that installed it (`None`: initial layout, overlay,
    /// generated files).
    pub owner: Option<&'a str>,
}

type Predicate = Box<dyn Fn(&SegmentEntry<'_>) -> bool + Send + Sync>;

/// A segment's members, sorted by path.
type Members<'a> = Vec<(&'a str, &'a Node)>;

/// Named segments in image order; each path goes to the first segment
/// whose predicate accepts it, and a hard link goes with its file.
#[derive(Default)]
pub struct SegmentPlan {
    segments: Vec<(String, Predicate)>,
}

impl std::fmt::Debug for SegmentPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.segments.iter().map(|(name, _)| name))
            .finish()
    }
}

impl SegmentPlan {
    /// A plan without segments; add them with [`Self::segment`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A plan that puts everything in one segment.
    pub fn single(name: impl Into<String>) -> Self {
        Self::new().segment(name, |_| true)
    }

    /// Appends a segment taking the entries `predicate` accepts (and no
    /// earlier segment took).
    pub fn segment(
        mut self,
        name: impl Into<String>,
        predicate: impl Fn(&SegmentEntry<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.segments.push((name.into(), Box::new(predicate)));
        self
    }
}

/// One segment of a written image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// The segment's name.
    pub name: String,
    /// cpio members, including repeated parent directories.
    pub entries: usize,
    /// Size of the cpio stream.
    pub uncompressed_bytes: u64,
    /// Size in the image (0 for an empty segment, which is left out).
    pub compressed_bytes: u64,
    /// Whether the compressed segment came from the cache.
    pub reused: bool,
    /// Whether a cached copy failed its SHA256 check and was compressed again.
    pub discarded_corrupt: bool,
    /// The cache key (hex SHA256).
    pub key: String,
}

/// What [`write_initramfs`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitramfsReport {
    /// Per segment, in image order.
    pub segments: Vec<SegmentReport>,
    /// Size of the image file.
    pub total_bytes: u64,
    /// SHA256 of the image file (hex).
    pub sha256: String,
}

/// Writes `tree` to `out_path` as concatenated zstd cpio segments per
/// `plan`, reusing cached segments from `cache_root`. The image is written
/// to a temporary file beside `out_path` and renamed over it at the end, so
/// a failed build leaves the previous image in place.
pub fn write_initramfs(
    tree: &RootfsTree,
    plan: &SegmentPlan,
    cache_root: &Path,
    level: i32,
    out_path: &Path,
    progress: &Reporter,
) -> Result<InitramfsReport, InitramfsError> {
    let segments = split(tree, plan)?;
    let cache_dir = cache_root.join("segments");
    std::fs::create_dir_all(&cache_dir).map_err(|source| InitramfsError::Io {
        path: cache_dir.clone(),
        source,
    })?;
    let task = progress.bar("initramfs", segments.len() as u64, Unit::Items);
    let mut reports = Vec::new();
    let mut files = Vec::new();
    for (name, entries) in segments {
        task.set_message(name.clone());
        let key = segment_key(&entries, level);
        let cached = cache_dir.join(format!("{key}.cpio.zst"));
        let segment_error = |source| InitramfsError::Segment {
            segment: name.clone(),
            source,
        };
        let uncompressed =
            cpio::write_newc(entries.iter().copied(), MTIME, io::sink()).map_err(segment_error)?;
        let mut report = SegmentReport {
            name: name.clone(),
            entries: entries.len(),
            uncompressed_bytes: uncompressed,
            compressed_bytes: 0,
            reused: false,
            discarded_corrupt: false,
            key,
        };
        if !entries.is_empty() {
            match cached_segment_intact(&cached) {
                Some(true) => report.reused = true,
                Some(false) => report.discarded_corrupt = true,
                None => {}
            }
            if !report.reused {
                compress_segment(&entries, uncompressed, level, &cached, &name)?;
            }
            report.compressed_bytes = std::fs::metadata(&cached)
                .map_err(|source| InitramfsError::Io {
                    path: cached.clone(),
                    source,
                })?
                .len();
            files.push(cached);
        }
        reports.push(report);
        task.inc(1);
    }
    task.finish();
    let (total_bytes, sha256) = concatenate(&files, out_path)?;
    Ok(InitramfsReport {
        segments: reports,
        total_bytes,
        sha256,
    })
}

/// Assigns every tree entry to a segment and adds the parents each needs.
fn split<'a>(
    tree: &'a RootfsTree,
    plan: &SegmentPlan,
) -> Result<Vec<(String, Members<'a>)>, InitramfsError> {
    if plan.segments.is_empty() {
        return Err(InitramfsError::EmptyPlan);
    }
    let mut seen = HashSet::new();
    for (name, _) in &plan.segments {
        if !seen.insert(name) {
            return Err(InitramfsError::DuplicateSegment { name: name.clone() });
        }
    }
    let mut assigned: HashMap<&str, usize> = HashMap::new();
    let mut links = Vec::new();
    for (path, node) in tree.iter() {
        if let EntryKind::Hardlink(target) = &node.kind {
            links.push((path, target.as_str()));
            continue;
        }
        let entry = SegmentEntry {
            path,
            node,
            owner: tree.owner(path),
        };
        let index = plan
            .segments
            .iter()
            .position(|(_, accepts)| accepts(&entry))
            .ok_or_else(|| InitramfsError::Unassigned {
                path: path.to_string(),
            })?;
        assigned.insert(path, index);
    }
    for (path, target) in links {
        let index = *assigned
            .get(target)
            .ok_or_else(|| InitramfsError::Unassigned {
                path: path.to_string(),
            })?;
        assigned.insert(path, index);
    }
    let mut members: Vec<BTreeMap<&str, &Node>> = vec![BTreeMap::new(); plan.segments.len()];
    for (path, node) in tree.iter() {
        let segment = &mut members[assigned[path]];
        segment.insert(path, node);
        let mut current = path;
        while let Some((parent, _)) = current.rsplit_once('/') {
            if segment.contains_key(parent) {
                break;
            }
            // Every ancestor of a tree node is a directory node.
            if let Some(parent_node) = tree.get(parent) {
                segment.insert(parent, parent_node);
            }
            current = parent;
        }
    }
    Ok(plan
        .segments
        .iter()
        .zip(members)
        .map(|((name, _), entries)| (name.clone(), entries.into_iter().collect()))
        .collect())
}

/// The cache key: what the segment holds and how it is compressed.
fn segment_key(entries: &[(&str, &Node)], level: i32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(SEGMENT_FORMAT);
    hasher.update(level.to_le_bytes());
    hasher.update(MTIME.to_le_bytes());
    hasher.update(zstd::zstd_safe::version_number().to_le_bytes());
    hasher.update(digest_entries(entries.iter().copied()));
    hex::encode(hasher.finalize())
}

/// zstd workers: always at least one, because zstd's output is the same
/// for any number of workers but differs from single-threaded mode.
fn workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
}

/// The file beside a cached segment that holds its SHA256.
fn digest_path(cached: &Path) -> PathBuf {
    cached.with_extension("zst.sha256")
}

/// Whether the cached segment matches the SHA256 recorded when it was
/// written: `None` when there is no (complete) entry, `Some(false)` when the
/// bytes changed since; a corrupt entry is removed.
fn cached_segment_intact(cached: &Path) -> Option<bool> {
    let recorded = std::fs::read_to_string(digest_path(cached)).ok()?;
    let actual = crate::manifest::sha256_file(cached).ok()?;
    if recorded.trim() == actual {
        return Some(true);
    }
    let _ = std::fs::remove_file(cached);
    let _ = std::fs::remove_file(digest_path(cached));
    Some(false)
}

/// Compresses one segment into the cache (temporary file, fsync, rename),
/// then records its SHA256 beside it.
fn compress_segment(
    entries: &[(&str, &Node)],
    uncompressed: u64,
    level: i32,
    cached: &Path,
    name: &str,
) -> Result<(), InitramfsError> {
    let io_error = |source| InitramfsError::Io {
        path: cached.to_path_buf(),
        source,
    };
    let temp = AtomicFile::create(cached).map_err(io_error)?;
    let mut encoder =
        encoder(BufWriter::new(temp), level, Some(uncompressed), workers()).map_err(io_error)?;
    cpio::write_newc(entries.iter().copied(), MTIME, &mut encoder).map_err(|source| {
        InitramfsError::Segment {
            segment: name.to_string(),
            source,
        }
    })?;
    let temp = encoder
        .finish()
        .and_then(|writer| writer.into_inner().map_err(|e| e.into_error()))
        .map_err(io_error)?;
    temp.commit().map_err(io_error)?;
    let digest = crate::manifest::sha256_file(cached).map_err(io_error)?;
    applbuild_fs::write_atomic(&digest_path(cached), digest.as_bytes()).map_err(io_error)
}

/// The zstd stream settings of every segment.
fn encoder<W: Write>(
    writer: W,
    level: i32,
    size: Option<u64>,
    workers: u32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(writer, level)?;
    encoder.multithread(workers.max(1))?;
    encoder.include_checksum(true)?;
    encoder.set_pledged_src_size(size)?;
    Ok(encoder)
}

/// Writes `files` (compressed segments, or whole initramfs images) one
/// after the other to a temporary file beside `out_path`, then renames it;
/// returns the size and hex SHA256. The kernel unpacks the result as one
/// initramfs.
pub fn concatenate(files: &[PathBuf], out_path: &Path) -> Result<(u64, String), InitramfsError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitramfsError::Io { path, source }
    };
    let temp = AtomicFile::create(out_path).map_err(io_error(out_path))?;
    let mut out = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, temp),
        hasher: Sha256::new(),
        written: 0,
    };
    for file in files {
        let mut input = File::open(file).map_err(io_error(file))?;
        io::copy(&mut input, &mut out).map_err(io_error(file))?;
    }
    let HashingWriter {
        inner,
        hasher,
        written,
    } = out;
    let temp = inner
        .into_inner()
        .map_err(|e| e.into_error())
        .map_err(io_error(out_path))?;
    temp.commit().map_err(io_error(out_path))?;
    Ok((written, hex::encode(hasher.finalize())))
}

/// Hashes what passes through, so the image is not read twice.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::tests::{Member, read_newc};
    use std::sync::Arc;

    fn tree() -> RootfsTree {
        let mut tree = RootfsTree::new();
        let entries = vec![
            applbuild_rootfs::deb_archive::DataEntry {
                path: "usr/bin/tool".into(),
                kind: EntryKind::File(Arc::from(&b"tool binary"[..])),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            applbuild_rootfs::deb_archive::DataEntry {
                path: "usr/bin/tool-alias".into(),
                kind: EntryKind::Hardlink("usr/bin/tool".into()),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            applbuild_rootfs::deb_archive::DataEntry {
                path: "usr/lib/modules/6.1/kernel/a.ko".into(),
                kind: EntryKind::File(Arc::from(&b"module"[..])),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        ];
        tree.insert_package(
            "pkg",
            entries,
            &applbuild_rootfs::rootfs::PathFilter::none(),
        )
        .unwrap();
        tree.add_file("etc/app/app.conf", b"x=1\n".to_vec(), 0o640, 0, 5)
            .unwrap();
        tree
    }

    fn plan() -> SegmentPlan {
        SegmentPlan::new()
            .segment("modules", |e| e.path.starts_with("usr/lib/modules/"))
            .segment("packages", |e| e.owner.is_some())
            .segment("config", |_| true)
    }

    /// Splits the image at the reported sizes and reads each segment.
    fn segments(image: &[u8], report: &InitramfsReport) -> Vec<Vec<Member>> {
        let mut rest = image;
        let mut out = Vec::new();
        for segment in &report.segments {
            let (this, next) = rest.split_at(segment.compressed_bytes as usize);
            rest = next;
            if segment.entries > 0 {
                out.push(read_newc(&zstd::decode_all(this).unwrap()));
            } else {
                out.push(Vec::new());
            }
        }
        assert!(rest.is_empty());
        out
    }

    fn names(members: &[Member]) -> Vec<&str> {
        members.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn segments_hold_their_entries_and_parents() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("initrd.img");
        let tree = tree();
        let report = write_initramfs(
            &tree,
            &plan(),
            &dir.path().join("cache"),
            3,
            &out,
            &Reporter::hidden(),
        )
        .unwrap();
        let image = std::fs::read(&out).unwrap();
        assert_eq!(report.total_bytes, image.len() as u64);
        assert_eq!(report.sha256, hex::encode(Sha256::digest(&image)));
        let read = segments(&image, &report);
        assert_eq!(
            names(&read[0]),
            [
                "usr",
                "usr/lib",
                "usr/lib/modules",
                "usr/lib/modules/6.1",
                "usr/lib/modules/6.1/kernel",
                "usr/lib/modules/6.1/kernel/a.ko"
            ]
        );
        // The hard link follows its file into the packages segment, and so
        // does the directory the package's module needed.
        assert_eq!(
            names(&read[1]),
            [
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "usr/bin/tool-alias",
                "usr/lib",
                "usr/lib/modules"
            ]
        );
        assert_eq!(read[1][3].data, b"tool binary");
        assert_eq!(read[1][2].inode, read[1][3].inode);
        // The initial merged-/usr layout has no owner.
        assert_eq!(
            names(&read[2]),
            [
                "bin",
                "etc",
                "etc/app",
                "etc/app/app.conf",
                "lib",
                "lib64",
                "sbin",
                "usr",
                "usr/bin",
                "usr/lib",
                "usr/lib64",
                "usr/sbin"
            ]
        );
        let conf = &read[2][3];
        assert_eq!(
            (conf.mode, conf.gid, conf.data.as_slice()),
            (0o100_640, 5, &b"x=1\n"[..])
        );
        // Every tree path is in exactly one segment (repeated parents aside).
        let mut all: Vec<&str> = read.iter().flat_map(|s| names(s)).collect();
        all.sort();
        all.dedup();
        assert_eq!(all, tree.iter().map(|(p, _)| p).collect::<Vec<_>>());
        assert!(report.segments.iter().all(|s| !s.reused));
        let entries: Vec<usize> = report.segments.iter().map(|s| s.entries).collect();
        assert_eq!(entries, [6, 6, 12]);
    }

    #[test]
    fn unchanged_segments_are_reused_and_output_is_identical() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let out = dir.path().join("initrd.img");
        let mut tree = tree();
        let first = write_initramfs(&tree, &plan(), &cache, 3, &out, &Reporter::hidden()).unwrap();
        let first_image = std::fs::read(&out).unwrap();
        let second = write_initramfs(&tree, &plan(), &cache, 3, &out, &Reporter::hidden()).unwrap();
        assert!(second.segments.iter().all(|s| s.reused));
        assert_eq!(std::fs::read(&out).unwrap(), first_image);
        assert_eq!(first.sha256, second.sha256);
        assert_eq!(
            first.segments[1].uncompressed_bytes,
            second.segments[1].uncompressed_bytes
        );

        tree.add_file("etc/app/app.conf", b"x=2\n".to_vec(), 0o640, 0, 5)
            .unwrap();
        let third = write_initramfs(&tree, &plan(), &cache, 3, &out, &Reporter::hidden()).unwrap();
        let reused: Vec<bool> = third.segments.iter().map(|s| s.reused).collect();
        assert_eq!(reused, [true, true, false]);
        assert_ne!(third.sha256, first.sha256);
        // Another level is another cache entry.
        let fourth = write_initramfs(&tree, &plan(), &cache, 4, &out, &Reporter::hidden()).unwrap();
        assert!(fourth.segments.iter().all(|s| !s.reused));
        // A corrupted cached segment is noticed, discarded and rebuilt.
        let segment = cache
            .join("segments")
            .join(format!("{}.cpio.zst", fourth.segments[0].key));
        let mut data = std::fs::read(&segment).unwrap();
        let middle = data.len() / 2;
        data[middle..middle + 8].copy_from_slice(b"XXXXXXXX");
        std::fs::write(&segment, data).unwrap();
        let fifth = write_initramfs(&tree, &plan(), &cache, 4, &out, &Reporter::hidden()).unwrap();
        assert!(fifth.segments[0].discarded_corrupt);
        assert!(!fifth.segments[0].reused);
        assert_eq!(fifth.sha256, fourth.sha256);

        // Nothing temporary is left beside the image or in the cache.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .chain(std::fs::read_dir(cache.join("segments")).unwrap())
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn failed_build_keeps_the_previous_image() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("initrd.img");
        std::fs::write(&out, b"previous image").unwrap();
        let partial =
            SegmentPlan::new().segment("modules", |e| e.path.starts_with("usr/lib/modules/"));
        let error = write_initramfs(&tree(), &partial, dir.path(), 3, &out, &Reporter::hidden())
            .unwrap_err();
        assert!(
            matches!(error, InitramfsError::Unassigned { .. }),
            "{error}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), b"previous image");
        let twice = SegmentPlan::single("a").segment("a", |_| true);
        assert!(matches!(
            write_initramfs(&tree(), &twice, dir.path(), 3, &out, &Reporter::hidden()),
            Err(InitramfsError::DuplicateSegment { .. })
        ));
        assert!(matches!(
            write_initramfs(
                &tree(),
                &SegmentPlan::new(),
                dir.path(),
                3,
                &out,
                &Reporter::hidden()
            ),
            Err(InitramfsError::EmptyPlan)
        ));
    }

    #[test]
    fn empty_segment_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("initrd.img");
        let plan = SegmentPlan::new()
            .segment("nothing", |_| false)
            .segment("all", |_| true);
        let report =
            write_initramfs(&tree(), &plan, dir.path(), 3, &out, &Reporter::hidden()).unwrap();
        assert_eq!(report.segments[0].entries, 0);
        assert_eq!(report.segments[0].compressed_bytes, 0);
        let image = std::fs::read(&out).unwrap();
        assert_eq!(segments(&image, &report)[1].len(), tree().len());
    }

    /// zstd promises the same bytes for any number of workers (>= 1); the
    /// image must not depend on the build machine's core count.
    #[test]
    fn compression_does_not_depend_on_worker_count() {
        // 24 MiB of compressible, non-repeating data spans several zstd jobs.
        let mut data = Vec::with_capacity(24 << 20);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        while data.len() < 24 << 20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.extend_from_slice(
                format!("line {} value {}\n", state % 1000, state % 7).as_bytes(),
            );
        }
        let compress = |workers| {
            let mut encoder = encoder(Vec::new(), 3, Some(data.len() as u64), workers).unwrap();
            encoder.write_all(&data).unwrap();
            encoder.finish().unwrap()
        };
        let one = compress(1);
        assert_eq!(one, compress(2));
        assert_eq!(one, compress(3));
        assert_eq!(zstd::decode_all(one.as_slice()).unwrap(), data);
    }
}
