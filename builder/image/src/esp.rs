//! Writes an EFI system partition (ESP) image: a fresh FAT32 file system
//! holding a few files, deterministically and without root or host tools.
//!
//! Layout (512-byte sectors), as `mkfs.fat` makes it:
//!
//! | sectors | contents |
//! |---|---|
//! | 0 | boot sector (BPB), sector 6 holds a copy |
//! | 1 | FSInfo (free cluster count, next free cluster), sector 7 holds a copy |
//! | reserved (32, more to align the data area to a cluster) | |
//! | two FATs | 32-bit entries, the second a copy of the first |
//! | data area | clusters from number 2; the root directory is cluster 2 |
//!
//! The cluster size follows Microsoft's FAT32 table (which `mkfs.fat`
//! follows too): 512 bytes up to 260 MiB, 4 KiB up to 8 GiB, 8 KiB up to
//! 16 GiB, 16 KiB up to 32 GiB, 32 KiB above. FAT32 needs at least 65,525
//! clusters (OVMF refuses a FAT32 with fewer), so the image is at least
//! [`MIN_SIZE_BYTES`] (64 MiB: about 129,000 clusters of 512 bytes).
//!
//! Names that are not upper-case 8.3 names (`systemd-bootx64.efi`,
//! `EFI/Linux/hypervisor-6.1.0-50-amd64-0123456789ab.efi`, `loader`) get
//! VFAT long file name entries and a Windows-style short alias
//! (`SYSTEM~1.EFI`, `LOADER`); lookups are case-insensitive, so two names
//! differing only in case are refused. Directories are created as the
//! paths need them; each directory lists its entries in the order the
//! files are given. Every file and directory lies in one contiguous run of
//! clusters, allocated in that order from cluster 2.
//!
//! Determinism: every timestamp is 1980-01-01 00:00:00 (FAT's epoch), the
//! volume ID is a parameter, and nothing else varies. The hidden-sectors
//! field is 0 (UEFI and Linux ignore it) and the geometry is 32 sectors per
//! track and 64 heads, as `mkfs.fat` uses for image files. The file is
//! sized with `set_len` and only non-zero 4 KiB blocks are written, so the
//! free space is a hole.
//!
//! Why not a crate: `fatfs` 0.3.6 writes broken `.`/`..` entries, and
//! `hadris-fat` (which passes `fsck.fat`) changed its API twice in 2.x
//! release candidates and formats through a generic read-write stream, so
//! timestamps, short-alias choice and sparse output would be its decisions
//! rather than ours. A volume that is created once and never modified needs
//! only the small writer below, checked against `fsck.fat` and mtools.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;

/// The smallest image [`write_esp`] writes (64 MiB).
pub const MIN_SIZE_BYTES: u64 = 64 << 20;

/// The fewest clusters a FAT32 file system may have.
pub const MIN_FAT32_CLUSTERS: u32 = 65_525;

/// The longest file name, in UTF-16 code units.
pub const MAX_NAME_UNITS: usize = 255;

const RESERVED_SECTORS: u32 = 32;
const FAT_COUNT: u32 = 2;
const ROOT_CLUSTER: u32 = 2;
const FSINFO_SECTOR: u64 = 1;
const BACKUP_BOOT_SECTOR: u64 = 6;
const DIR_ENTRY_SIZE: usize = 32;
/// 1980-01-01 as a FAT date (year 0, month 1, day 1); the time is 00:00:00 (0).
const FAT_DATE: u16 = (1 << 5) | 1;
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LONG_NAME: u8 = 0x0F;
/// UTF-16 code units in one long-name entry.
const LFN_UNITS: usize = 13;
/// Zero blocks of this size are skipped when writing.
const WRITE_BLOCK: usize = 4096;
/// Characters a short (8.3) name may hold besides `A-Z` and `0-9`.
const SHORT_NAME_SPECIALS: &str = "!#$%&'()-@^_`{}~";
/// Characters no long name may hold (besides control characters).
const FORBIDDEN_CHARS: &str = "\"*/:<>?\\|";

/// One file to put on the ESP.
#[derive(Debug, Clone, Copy)]
pub struct EspFile<'a> {
    /// Path from the root, `/`-separated, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub path: &'a str,
    /// The file's contents.
    pub contents: &'a [u8],
}

/// The geometry of a written ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspLayout {
    /// Size of the image file in bytes.
    pub size_bytes: u64,
    /// Bytes per cluster.
    pub cluster_bytes: u32,
    /// Data clusters in the file system.
    pub clusters: u32,
    /// Clusters left free.
    pub free_clusters: u32,
}

/// Why an ESP image could not be written; each variant names the image or
/// the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    /// The size is below [`MIN_SIZE_BYTES`].
    #[error(
        "{path}: an ESP of {size_bytes} bytes is too small for FAT32; it needs at least {MIN_SIZE_BYTES}"
    )]
    TooSmall {
        /// The image file.
        path: PathBuf,
        /// The size asked for.
        size_bytes: u64,
    },
    /// The size is not a whole number of sectors, or beyond FAT32's 2 TiB.
    #[error("{path}: an ESP of {size_bytes} bytes is not possible: {reason}")]
    BadSize {
        /// The image file.
        path: PathBuf,
        /// The size asked for.
        size_bytes: u64,
        /// Why.
        reason: &'static str,
    },
    /// The volume label is not a valid FAT label.
    #[error("{path}: volume label {label:?}: {reason}")]
    BadLabel {
        /// The image file.
        path: PathBuf,
        /// The label.
        label: String,
        /// Why.
        reason: &'static str,
    },
    /// A file's path is not a valid FAT path, or clashes with another.
    #[error("{path}: ESP file {file:?}: {reason}")]
    BadPath {
        /// The image file.
        path: PathBuf,
        /// The file's path.
        file: String,
        /// Why.
        reason: String,
    },
    /// A file is larger than FAT32 allows (4 GiB − 1).
    #[error("{path}: ESP file {file:?} has {bytes} bytes; FAT32 files hold at most 4294967295")]
    FileTooLarge {
        /// The image file.
        path: PathBuf,
        /// The file's path.
        file: String,
        /// Its size.
        bytes: u64,
    },
    /// The files and directories need more clusters than there are.
    #[error(
        "{path}: the ESP files need {needed_bytes} bytes of clusters, {over_bytes} more than the {available_bytes} bytes of a {size_bytes}-byte FAT32"
    )]
    DoesNotFit {
        /// The image file.
        path: PathBuf,
        /// The image size asked for.
        size_bytes: u64,
        /// Bytes of the clusters the files and directories take.
        needed_bytes: u64,
        /// Bytes of all data clusters.
        available_bytes: u64,
        /// `needed_bytes - available_bytes`.
        over_bytes: u64,
    },
    /// The image file could not be created or written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The image file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The file system's geometry, in sectors and clusters.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    total_sectors: u32,
    sectors_per_cluster: u32,
    reserved_sectors: u32,
    fat_sectors: u32,
    clusters: u32,
}

impl Geometry {
    /// The geometry of a FAT32 of `size_bytes` (see the module documentation).
    fn new(path: &Path, size_bytes: u64) -> Result<Self, EspError> {
        let bad = |reason| EspError::BadSize {
            path: path.to_path_buf(),
            size_bytes,
            reason,
        };
        if size_bytes < MIN_SIZE_BYTES {
            return Err(EspError::TooSmall {
                path: path.to_path_buf(),
                size_bytes,
            });
        }
        if !size_bytes.is_multiple_of(SECTOR_SIZE) {
            return Err(bad("not a whole number of 512-byte sectors"));
        }
        let total_sectors = u32::try_from(size_bytes / SECTOR_SIZE)
            .map_err(|_| bad("FAT32 holds at most 2^32 - 1 sectors"))?;
        let sectors_per_cluster = match total_sectors {
            0..=532_480 => 1,
            532_481..=16_777_216 => 8,
            16_777_217..=33_554_432 => 16,
            33_554_433..=67_108_864 => 32,
            _ => 64,
        };
        let upper_clusters = (total_sectors - RESERVED_SECTORS) / sectors_per_cluster;
        let fat_sectors = ((u64::from(upper_clusters) + 2) * 4).div_ceil(SECTOR_SIZE) as u32;
        let unaligned = RESERVED_SECTORS + FAT_COUNT * fat_sectors;
        let reserved_sectors = RESERVED_SECTORS
            + (sectors_per_cluster - unaligned % sectors_per_cluster) % sectors_per_cluster;
        let clusters =
            (total_sectors - reserved_sectors - FAT_COUNT * fat_sectors) / sectors_per_cluster;
        debug_assert!(clusters >= MIN_FAT32_CLUSTERS, "{clusters} clusters");
        Ok(Self {
            total_sectors,
            sectors_per_cluster,
            reserved_sectors,
            fat_sectors,
            clusters,
        })
    }

    fn cluster_bytes(&self) -> u32 {
        self.sectors_per_cluster * SECTOR_SIZE as u32
    }

    /// Byte offset of cluster `cluster` (from 2).
    fn cluster_offset(&self, cluster: u32) -> u64 {
        let data_start = self.reserved_sectors + FAT_COUNT * self.fat_sectors;
        (u64::from(data_start) + u64::from(cluster - 2) * u64::from(self.sectors_per_cluster))
            * SECTOR_SIZE
    }
}

/// A file or directory of the tree being written; index 0 is the root.
#[derive(Debug)]
struct Node<'a> {
    /// Long name (empty for the root).
    name: String,
    /// Short (8.3) name as stored, space-padded.
    short: [u8; 11],
    /// Whether the short name alone gives the name (no long-name entries).
    short_only: bool,
    kind: Kind<'a>,
    first_cluster: u32,
    cluster_count: u32,
}

#[derive(Debug)]
enum Kind<'a> {
    Dir { parent: usize, children: Vec<usize> },
    File(&'a [u8]),
}

/// Writes a FAT32 ESP image of `size_bytes` at `path` (created or
/// truncated) holding `files`, with `volume_label` (at most 11 upper-case
/// characters; empty for none) and `volume_id` (the serial number).
pub fn write_esp(
    path: &Path,
    size_bytes: u64,
    volume_label: &str,
    volume_id: u32,
    files: &[EspFile],
) -> Result<EspLayout, EspError> {
    let geometry = Geometry::new(path, size_bytes)?;
    let label = label_field(path, volume_label)?;
    let mut nodes = build_tree(path, files)?;
    assign_short_names(&mut nodes);
    let used = allocate(
        &mut nodes,
        geometry.cluster_bytes(),
        volume_label.is_empty(),
    );
    if used > geometry.clusters {
        let cluster_bytes = u64::from(geometry.cluster_bytes());
        let needed_bytes = u64::from(used) * cluster_bytes;
        let available_bytes = u64::from(geometry.clusters) * cluster_bytes;
        return Err(EspError::DoesNotFit {
            path: path.to_path_buf(),
            size_bytes,
            needed_bytes,
            available_bytes,
            over_bytes: needed_bytes - available_bytes,
        });
    }
    let free_clusters = geometry.clusters - used;
    let write_error = |source| EspError::Write {
        path: path.to_path_buf(),
        source,
    };
    let image = File::create(path).map_err(write_error)?;
    image.set_len(size_bytes).map_err(write_error)?;
    write_headers(&image, &geometry, &label, volume_id, used).map_err(write_error)?;
    write_fats(&image, &geometry, &nodes).map_err(write_error)?;
    write_contents(&image, &geometry, &nodes, &label, volume_label.is_empty())
        .map_err(write_error)?;
    Ok(EspLayout {
        size_bytes,
        cluster_bytes: geometry.cluster_bytes(),
        clusters: geometry.clusters,
        free_clusters,
    })
}

/// The 11-byte label field: `NO NAME` for an empty label.
fn label_field(path: &Path, label: &str) -> Result<[u8; 11], EspError> {
    let bad = |reason| EspError::BadLabel {
        path: path.to_path_buf(),
        label: label.into(),
        reason,
    };
    if label.len() > 11 {
        return Err(bad("longer than 11 characters"));
    }
    if label.starts_with(' ') {
        return Err(bad("starts with a space"));
    }
    if !label.chars().all(|c| c == ' ' || is_short_name_char(c)) {
        return Err(bad(
            "only A-Z, 0-9, spaces and !#$%&'()-@^_`{}~ are allowed (no lower case)",
        ));
    }
    let mut field = *b"NO NAME    ";
    if !label.is_empty() {
        field = [b' '; 11];
        field[..label.len()].copy_from_slice(label.as_bytes());
    }
    Ok(field)
}

/// Whether `c` may appear in a short name (upper-case ASCII letters,
/// digits and a few specials).
fn is_short_name_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || SHORT_NAME_SPECIALS.contains(c)
}

/// The tree of `files`, with the directories their paths need.
fn build_tree<'a>(path: &Path, files: &[EspFile<'a>]) -> Result<Vec<Node<'a>>, EspError> {
    let mut nodes = vec![new_node(
        String::new(),
        Kind::Dir {
            parent: 0,
            children: Vec::new(),
        },
    )];
    for file in files {
        let bad = |reason: String| EspError::BadPath {
            path: path.to_path_buf(),
            file: file.path.into(),
            reason,
        };
        if u32::try_from(file.contents.len()).is_err() {
            return Err(EspError::FileTooLarge {
                path: path.to_path_buf(),
                file: file.path.into(),
                bytes: file.contents.len() as u64,
            });
        }
        let components: Vec<&str> = file.path.split('/').collect();
        for component in &components {
            check_name(component).map_err(|reason| bad(format!("{component:?} {reason}")))?;
        }
        let (leaf, dirs) = components
            .split_last()
            .expect("split gives one part at least");
        let mut dir = 0;
        for name in dirs {
            dir = match child(&nodes, dir, name) {
                Some(found) if matches!(nodes[found].kind, Kind::Dir { .. }) => found,
                Some(_) => return Err(bad(format!("{name:?} is a file, not a directory"))),
                None => add_child(
                    &mut nodes,
                    dir,
                    name,
                    Kind::Dir {
                        parent: dir,
                        children: Vec::new(),
                    },
                ),
            };
        }
        if let Some(found) = child(&nodes, dir, leaf) {
            let what = match nodes[found].kind {
                Kind::Dir { .. } => "a directory",
                Kind::File(_) => "another file",
            };
            return Err(bad(format!("{:?} is already {what}", nodes[found].name)));
        }
        add_child(&mut nodes, dir, leaf, Kind::File(file.contents));
    }
    Ok(nodes)
}

fn new_node(name: String, kind: Kind) -> Node {
    Node {
        name,
        short: [b' '; 11],
        short_only: false,
        kind,
        first_cluster: 0,
        cluster_count: 0,
    }
}

/// The child of directory `dir` named `name`, compared as FAT does
/// (ignoring case).
fn child(nodes: &[Node], dir: usize, name: &str) -> Option<usize> {
    let Kind::Dir { children, .. } = &nodes[dir].kind else {
        unreachable!("only directories are searched");
    };
    let upper = name.to_uppercase();
    children
        .iter()
        .copied()
        .find(|&index| nodes[index].name.to_uppercase() == upper)
}

fn add_child<'a>(nodes: &mut Vec<Node<'a>>, dir: usize, name: &str, kind: Kind<'a>) -> usize {
    let index = nodes.len();
    nodes.push(new_node(name.into(), kind));
    if let Kind::Dir { children, .. } = &mut nodes[dir].kind {
        children.push(index);
    }
    index
}

/// Checks that `name` is a valid long file name; returns why not.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty (a path has no leading, trailing or doubled `/`)".into());
    }
    if name == "." || name == ".." {
        return Err("is not allowed".into());
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c < ' ' || c == '\u{7F}' || FORBIDDEN_CHARS.contains(c))
    {
        return Err(format!("holds {c:?}, which FAT names may not"));
    }
    if name.ends_with(['.', ' ']) {
        return Err("ends with a dot or a space".into());
    }
    let units = name.encode_utf16().count();
    if units > MAX_NAME_UNITS {
        return Err(format!(
            "is {units} UTF-16 code units long; FAT allows {MAX_NAME_UNITS}"
        ));
    }
    Ok(())
}

/// Gives every node but the root a short name unique in its directory.
fn assign_short_names(nodes: &mut [Node]) {
    for dir in 0..nodes.len() {
        let Kind::Dir { children, .. } = &nodes[dir].kind else {
            continue;
        };
        let mut taken = HashSet::new();
        for index in children.clone() {
            let (short, short_only) = short_name(&nodes[index].name, &taken);
            taken.insert(short);
            nodes[index].short = short;
            nodes[index].short_only = short_only;
        }
    }
}

/// The short name for `name` not in `taken`, and whether it alone gives the
/// name: an upper-case 8.3 name is its own short name; other names get
/// their upper-cased 8.3 form if that loses nothing, else `BASIS~N.EXT`.
fn short_name(name: &str, taken: &HashSet<[u8; 11]>) -> ([u8; 11], bool) {
    let upper = name.to_ascii_uppercase();
    let (base, ext) = match upper.rfind('.') {
        Some(dot) if dot > 0 => (&upper[..dot], &upper[dot + 1..]),
        _ => (upper.as_str(), ""),
    };
    let mut lossy = false;
    let mut clean = |part: &str, max: usize| {
        let mut out = Vec::new();
        for c in part.chars().filter(|&c| c != ' ' && c != '.') {
            out.push(if is_short_name_char(c) { c as u8 } else { b'_' });
            lossy |= !is_short_name_char(c);
        }
        lossy |= out.len() > max || out.len() != part.len();
        out.truncate(max);
        out
    };
    let mut base = clean(base, 8);
    let ext = clean(ext, 3);
    if base.is_empty() {
        base.push(b'_');
        lossy = true;
    }
    let field = |base: &[u8]| {
        let mut field = [b' '; 11];
        field[..base.len()].copy_from_slice(base);
        field[8..8 + ext.len()].copy_from_slice(&ext);
        field
    };
    let plain = field(&base);
    if !lossy && !taken.contains(&plain) {
        return (plain, upper == name);
    }
    (1u32..)
        .map(|n| {
            let tail = format!("~{n}");
            let keep = base.len().min(8 - tail.len());
            field(&[&base[..keep], tail.as_bytes()].concat())
        })
        .find(|candidate| !taken.contains(candidate))
        .map(|short| (short, false))
        .expect("a directory has fewer than 999999 entries")
}

/// The checksum of a short name that its long-name entries carry.
fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &byte| sum.rotate_right(1).wrapping_add(byte))
}

/// Long-name entries for a node: 0 if its short name gives the name.
fn lfn_entry_count(node: &Node) -> usize {
    if node.short_only {
        0
    } else {
        node.name.encode_utf16().count().div_ceil(LFN_UNITS)
    }
}

/// Bytes of directory `dir`'s entries (without padding).
fn dir_bytes(nodes: &[Node], dir: usize, with_label: bool) -> usize {
    let Kind::Dir { children, .. } = &nodes[dir].kind else {
        unreachable!("only directories have entries");
    };
    let own = if dir == 0 { usize::from(with_label) } else { 2 };
    let entries: usize = children
        .iter()
        .map(|&index| 1 + lfn_entry_count(&nodes[index]))
        .sum();
    (own + entries) * DIR_ENTRY_SIZE
}

/// Gives every node its run of clusters, in tree order from cluster 2 (the
/// root first); returns the clusters used.
fn allocate(nodes: &mut [Node], cluster_bytes: u32, no_label: bool) -> u32 {
    let cluster_bytes = u64::from(cluster_bytes);
    let mut order = vec![0];
    let mut next = ROOT_CLUSTER;
    while let Some(index) = order.pop() {
        let bytes = match &nodes[index].kind {
            Kind::Dir { children, .. } => {
                order.extend(children.iter().rev());
                dir_bytes(nodes, index, !no_label).max(1) as u64
            }
            Kind::File(contents) => contents.len() as u64,
        };
        let count = u32::try_from(bytes.div_ceil(cluster_bytes)).expect("a file is under 4 GiB");
        if count > 0 {
            nodes[index].first_cluster = next;
            nodes[index].cluster_count = count;
            next = next.saturating_add(count);
        }
    }
    next - ROOT_CLUSTER
}

/// Writes the boot sector and FSInfo and their backups.
fn write_headers(
    image: &File,
    geometry: &Geometry,
    label: &[u8; 11],
    volume_id: u32,
    used: u32,
) -> io::Result<()> {
    let boot = boot_sector(geometry, label, volume_id);
    let next_free = if used < geometry.clusters {
        ROOT_CLUSTER + used
    } else {
        u32::MAX
    };
    let mut fsinfo = [0u8; SECTOR_SIZE as usize];
    put_u32(&mut fsinfo, 0, 0x4161_5252);
    put_u32(&mut fsinfo, 484, 0x6141_7272);
    put_u32(&mut fsinfo, 488, geometry.clusters - used);
    put_u32(&mut fsinfo, 492, next_free);
    put_u32(&mut fsinfo, 508, 0xAA55_0000);
    for start in [0, BACKUP_BOOT_SECTOR] {
        image.write_all_at(&boot, start * SECTOR_SIZE)?;
        image.write_all_at(&fsinfo, (start + FSINFO_SECTOR) * SECTOR_SIZE)?;
    }
    Ok(())
}

/// The FAT32 boot sector with its BIOS parameter block.
fn boot_sector(geometry: &Geometry, label: &[u8; 11], volume_id: u32) -> [u8; 512] {
    let mut boot = [0u8; 512];
    boot[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    boot[3..11].copy_from_slice(b"MSWIN4.1");
    put_u16(&mut boot, 11, SECTOR_SIZE as u16);
    boot[13] = geometry.sectors_per_cluster as u8;
    put_u16(&mut boot, 14, geometry.reserved_sectors as u16);
    boot[16] = FAT_COUNT as u8;
    boot[21] = 0xF8;
    put_u16(&mut boot, 24, 32);
    put_u16(&mut boot, 26, 64);
    put_u32(&mut boot, 32, geometry.total_sectors);
    put_u32(&mut boot, 36, geometry.fat_sectors);
    put_u32(&mut boot, 44, ROOT_CLUSTER);
    put_u16(&mut boot, 48, FSINFO_SECTOR as u16);
    put_u16(&mut boot, 50, BACKUP_BOOT_SECTOR as u16);
    boot[64] = 0x80;
    boot[66] = 0x29;
    put_u32(&mut boot, 67, volume_id);
    boot[71..82].copy_from_slice(label);
    boot[82..90].copy_from_slice(b"FAT32   ");
    // Boot code: halt forever if a BIOS ever jumps here.
    boot[90..93].copy_from_slice(&[0xF4, 0xEB, 0xFD]);
    boot[510..512].copy_from_slice(&[0x55, 0xAA]);
    boot
}

/// Writes both FATs: the media and end-of-chain entries, then each node's
/// contiguous chain; the rest stays zero (free).
fn write_fats(image: &File, geometry: &Geometry, nodes: &[Node]) -> io::Result<()> {
    let last = nodes
        .iter()
        .map(|node| node.first_cluster + node.cluster_count)
        .max()
        .unwrap_or(ROOT_CLUSTER);
    let mut fat = vec![0u32; last as usize];
    fat[0] = 0x0FFF_FFF8;
    fat[1] = END_OF_CHAIN;
    for node in nodes.iter().filter(|node| node.cluster_count > 0) {
        let end = node.first_cluster + node.cluster_count;
        for cluster in node.first_cluster..end {
            fat[cluster as usize] = if cluster + 1 == end {
                END_OF_CHAIN
            } else {
                cluster + 1
            };
        }
    }
    let bytes: Vec<u8> = fat.iter().flat_map(|entry| entry.to_le_bytes()).collect();
    for copy in 0..FAT_COUNT {
        let sector = geometry.reserved_sectors + copy * geometry.fat_sectors;
        write_non_zero(image, &bytes, u64::from(sector) * SECTOR_SIZE)?;
    }
    Ok(())
}

/// Writes every directory's entries and every file's contents.
fn write_contents(
    image: &File,
    geometry: &Geometry,
    nodes: &[Node],
    label: &[u8; 11],
    no_label: bool,
) -> io::Result<()> {
    for (index, node) in nodes.iter().enumerate() {
        let offset = geometry.cluster_offset(node.first_cluster.max(ROOT_CLUSTER));
        match &node.kind {
            Kind::Dir { parent, children } => {
                let mut bytes = Vec::with_capacity(dir_bytes(nodes, index, !no_label));
                if index == 0 {
                    if !no_label {
                        bytes.extend(short_entry(label, ATTR_VOLUME_ID, 0, 0));
                    }
                } else {
                    let parent_cluster = if *parent == 0 {
                        0
                    } else {
                        nodes[*parent].first_cluster
                    };
                    bytes.extend(short_entry(
                        b".          ",
                        ATTR_DIRECTORY,
                        node.first_cluster,
                        0,
                    ));
                    bytes.extend(short_entry(
                        b"..         ",
                        ATTR_DIRECTORY,
                        parent_cluster,
                        0,
                    ));
                }
                for &entry in children {
                    push_entries(&mut bytes, &nodes[entry]);
                }
                write_non_zero(image, &bytes, offset)?;
            }
            Kind::File(contents) if !contents.is_empty() => {
                write_non_zero(image, contents, offset)?
            }
            Kind::File(_) => {}
        }
    }
    Ok(())
}

/// Appends a node's long-name entries (last part first, as FAT stores them)
/// and its short entry.
fn push_entries(bytes: &mut Vec<u8>, node: &Node) {
    let count = lfn_entry_count(node);
    let checksum = lfn_checksum(&node.short);
    let units: Vec<u16> = node.name.encode_utf16().collect();
    for ordinal in (1..=count).rev() {
        let mut part = [0xFFFFu16; LFN_UNITS];
        let start = (ordinal - 1) * LFN_UNITS;
        let chunk = &units[start..units.len().min(start + LFN_UNITS)];
        part[..chunk.len()].copy_from_slice(chunk);
        if chunk.len() < LFN_UNITS {
            part[chunk.len()] = 0;
        }
        let mut entry = [0u8; DIR_ENTRY_SIZE];
        entry[0] = ordinal as u8 | if ordinal == count { 0x40 } else { 0 };
        entry[11] = ATTR_LONG_NAME;
        entry[13] = checksum;
        let positions = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2));
        for (at, unit) in positions.zip(part) {
            put_u16(&mut entry, at, unit);
        }
        bytes.extend(entry);
    }
    let (attributes, size) = match node.kind {
        Kind::Dir { .. } => (ATTR_DIRECTORY, 0),
        Kind::File(contents) => (ATTR_ARCHIVE, contents.len() as u32),
    };
    bytes.extend(short_entry(
        &node.short,
        attributes,
        node.first_cluster,
        size,
    ));
}

/// A short directory entry with the fixed timestamps.
fn short_entry(name: &[u8; 11], attributes: u8, cluster: u32, size: u32) -> [u8; DIR_ENTRY_SIZE] {
    let mut entry = [0u8; DIR_ENTRY_SIZE];
    entry[..11].copy_from_slice(name);
    entry[11] = attributes;
    if attributes != ATTR_VOLUME_ID {
        for at in [16, 18, 24] {
            put_u16(&mut entry, at, FAT_DATE);
        }
    }
    put_u16(&mut entry, 20, (cluster >> 16) as u16);
    put_u16(&mut entry, 26, cluster as u16);
    put_u32(&mut entry, 28, size);
    entry
}

/// Writes `bytes` at `offset`, skipping 4 KiB blocks that are all zero
/// (the freshly sized file reads as zeros there already).
fn write_non_zero(image: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    for (index, block) in bytes.chunks(WRITE_BLOCK).enumerate() {
        if block.iter().any(|&b| b != 0) {
            image.write_all_at(block, offset + (index * WRITE_BLOCK) as u64)?;
        }
    }
    Ok(())
}

fn put_u16(out: &mut [u8], at: usize, value: u16) {
    out[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut [u8], at: usize, value: u32) {
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const MIB: u64 = 1 << 20;
    const LONG_UKI: &str = "EFI/Linux/hypervisor-6.1.0-50-amd64-0123456789ab.efi";

    fn boot_loader() -> Vec<u8> {
        (0..140_891u32).map(|i| (i % 251) as u8 | 1).collect()
    }

    fn uki() -> Vec<u8> {
        let mut bytes = vec![0u8; 300_000];
        bytes[..5].copy_from_slice(b"MZuki");
        bytes[250_000..250_004].copy_from_slice(b"tail");
        bytes
    }

    /// A typical ESP's files (boot loader twice, a loader entry, a UKI with
    /// zero runs, an empty file) and their contents.
    fn files(loader: &[u8], uki: &[u8]) -> Vec<(String, Vec<u8>)> {
        vec![
            ("EFI/BOOT/BOOTX64.EFI".into(), loader.to_vec()),
            ("EFI/systemd/systemd-bootx64.efi".into(), loader.to_vec()),
            ("loader/loader.conf".into(), b"timeout 0\n".to_vec()),
            (LONG_UKI.into(), uki.to_vec()),
            ("EFI/Linux/empty".into(), Vec::new()),
        ]
    }

    fn write(path: &Path, files: &[(String, Vec<u8>)]) -> Result<EspLayout, EspError> {
        let files: Vec<EspFile> = files
            .iter()
            .map(|(path, contents)| EspFile { path, contents })
            .collect();
        write_esp(path, 64 * MIB, "ESP", 0x1234_ABCD, &files)
    }

    fn run(command: &mut Command) -> String {
        let output = command.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{command:?}: {text}");
        text
    }

    #[test]
    fn geometry_follows_the_fat32_cluster_table() {
        let path = Path::new("esp.img");
        let small = Geometry::new(path, 64 * MIB).unwrap();
        assert_eq!(small.cluster_bytes(), 512);
        assert_eq!(small.fat_sectors, 1024);
        assert_eq!(small.reserved_sectors, 32);
        assert_eq!(small.clusters, 131_072 - 32 - 2048);
        let large = Geometry::new(path, 512 * MIB).unwrap();
        assert_eq!(large.cluster_bytes(), 4096);
        assert_eq!(
            large.cluster_offset(2) % 4096,
            0,
            "data area cluster-aligned"
        );
        assert!(large.clusters >= MIN_FAT32_CLUSTERS);
        let just_large = Geometry::new(path, 261 * MIB).unwrap();
        assert!(just_large.clusters >= MIN_FAT32_CLUSTERS, "{just_large:?}");
        for geometry in [small, large, just_large] {
            let fat_entries = u64::from(geometry.fat_sectors) * SECTOR_SIZE / 4;
            assert!(
                fat_entries >= u64::from(geometry.clusters) + 2,
                "{geometry:?}"
            );
            let end = geometry.cluster_offset(geometry.clusters + 2);
            assert!(end <= u64::from(geometry.total_sectors) * SECTOR_SIZE);
        }
    }

    #[test]
    fn short_names_are_kept_or_made_unique() {
        let mut taken = HashSet::new();
        let mut short = |name: &str| {
            let (short, only) = short_name(name, &taken);
            taken.insert(short);
            (String::from_utf8(short.to_vec()).unwrap(), only)
        };
        assert_eq!(short("BOOTX64.EFI"), ("BOOTX64 EFI".into(), true));
        assert_eq!(short("EFI"), ("EFI        ".into(), true));
        assert_eq!(short("loader"), ("LOADER     ".into(), false));
        assert_eq!(short("systemd-bootx64.efi"), ("SYSTEM~1EFI".into(), false));
        assert_eq!(short("systemd-other.efi"), ("SYSTEM~2EFI".into(), false));
        assert_eq!(short(".hidden"), ("HIDDEN~1   ".into(), false));
        assert_eq!(short("a+b.tar.gz"), ("A_BTAR~1GZ ".into(), false));
        assert_eq!(short("Ünï"), ("_N_~1      ".into(), false));
        assert_eq!(lfn_checksum(b"SYSTEM~1EFI"), {
            let mut sum = 0u8;
            for &byte in b"SYSTEM~1EFI" {
                sum = ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(byte);
            }
            sum
        });
    }

    #[test]
    fn boot_sector_and_fsinfo_describe_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        let layout = write(&path, &files(&boot_loader(), &uki())).unwrap();
        let image = std::fs::read(&path).unwrap();
        assert_eq!(image.len() as u64, 64 * MIB);
        assert_eq!(
            layout,
            EspLayout {
                size_bytes: 64 * MIB,
                cluster_bytes: 512,
                clusters: 128_992,
                free_clusters: layout.free_clusters,
            }
        );
        // 2 × 276 + 1 + 587 clusters of files, 6 directories of one cluster.
        assert_eq!(layout.free_clusters, 128_992 - (2 * 276 + 1 + 586 + 6));
        assert_eq!(&image[510..512], &[0x55, 0xAA]);
        assert_eq!(&image[82..90], b"FAT32   ");
        assert_eq!(&image[71..82], b"ESP        ");
        assert_eq!(&image[67..71], &0x1234_ABCDu32.to_le_bytes());
        assert_eq!(
            &image[..512],
            &image[6 * 512..7 * 512],
            "backup boot sector"
        );
        let fsinfo = &image[512..1024];
        assert_eq!(&fsinfo[488..492], &layout.free_clusters.to_le_bytes());
        assert_eq!(fsinfo, &image[7 * 512..8 * 512], "backup FSInfo");
        let fat = 32 * 512;
        assert_eq!(
            &image[fat..fat + 8],
            &[0xF8, 0xFF, 0xFF, 0x0F, 0xFF, 0xFF, 0xFF, 0x0F]
        );
        assert_eq!(
            &image[fat..fat + 1024 * 512],
            &image[fat + 1024 * 512..fat + 2048 * 512],
            "second FAT"
        );
    }

    #[test]
    fn same_inputs_give_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("a.img"), dir.path().join("b.img"));
        let files = files(&boot_loader(), &uki());
        write(&first, &files).unwrap();
        std::fs::write(&second, vec![0xAB; 70 << 20]).unwrap();
        write(&second, &files).unwrap();
        assert!(
            std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap(),
            "two writes differ"
        );
    }

    #[test]
    fn the_image_is_sparse() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        write(&path, &files(&boot_loader(), &uki())).unwrap();
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        // Files of about 0.6 MiB and two FAT prefixes: far below 64 MiB.
        assert!(allocated < 4 * MIB, "{allocated} bytes allocated");
    }

    /// dosfstools must find nothing to fix.
    #[test]
    fn fsck_fat_finds_no_errors() {
        let Some(fsck) = applbuild_testdata::host_tool("fsck.fat", "dosfstools") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        let layout = write(&path, &files(&boot_loader(), &uki())).unwrap();
        let output = Command::new(fsck)
            .arg("-n")
            .arg("-v")
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{text}");
        assert!(text.contains("32 bit entries"), "{text}");
        assert!(text.contains("512 bytes per cluster"), "{text}");
        assert!(!text.to_lowercase().contains("differ"), "{text}");
        assert!(!text.contains("Free cluster summary wrong"), "{text}");
        let used = layout.clusters - layout.free_clusters;
        let summary = format!(" 11 files, {used}/{} clusters", layout.clusters);
        assert!(text.contains(&summary), "{text}");
    }

    /// mtools lists the directories with their long names and reads every
    /// file back byte for byte.
    #[test]
    fn mtools_reads_every_file_back() {
        let (Some(mdir), Some(mcopy)) = (
            applbuild_testdata::host_tool("mdir", "mtools"),
            applbuild_testdata::host_tool("mcopy", "mtools"),
        ) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        let files = files(&boot_loader(), &uki());
        write(&path, &files).unwrap();
        let listing = run(Command::new(&mdir).arg("-i").arg(&path).arg("::/EFI/BOOT"));
        assert!(listing.contains("BOOTX64  EFI"), "{listing}");
        assert!(listing.contains("Volume in drive : is ESP"), "{listing}");
        assert!(
            listing.contains("Volume Serial Number is 1234-ABCD"),
            "{listing}"
        );
        let listing = run(Command::new(&mdir).arg("-i").arg(&path).arg("::/EFI/Linux"));
        assert!(
            listing.contains("hypervisor-6.1.0-50-amd64-0123456789ab.efi"),
            "{listing}"
        );
        let listing = run(Command::new(&mdir)
            .arg("-i")
            .arg(&path)
            .arg("::/EFI/systemd"));
        assert!(listing.contains("systemd-bootx64.efi"), "{listing}");
        for (file, contents) in &files {
            let output = Command::new(&mcopy)
                .arg("-n")
                .arg("-i")
                .arg(&path)
                .arg(format!("::/{file}"))
                .arg("-")
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{file}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(output.stdout == *contents, "{file} differs");
        }
    }

    #[test]
    fn bad_sizes_labels_and_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        let esp = |size: u64, label: &str, files: &[EspFile]| {
            write_esp(&path, size, label, 1, files).unwrap_err()
        };
        let error = esp(64 * MIB - 512, "", &[]);
        assert!(matches!(error, EspError::TooSmall { .. }), "{error}");
        assert!(error.to_string().contains("esp.img"), "{error}");
        let error = esp(64 * MIB + 1, "", &[]);
        assert!(matches!(error, EspError::BadSize { .. }), "{error}");
        let error = esp(4 << 40, "", &[]);
        assert!(matches!(error, EspError::BadSize { .. }), "{error}");
        for label in ["esp", "TWELVE CHARS", " ESP", "A.B"] {
            let error = esp(64 * MIB, label, &[]);
            assert!(
                matches!(error, EspError::BadLabel { .. }),
                "{label}: {error}"
            );
        }
        for bad in [
            "",
            "/EFI/BOOT",
            "EFI//BOOT",
            "EFI/",
            "EFI/../x",
            "a:b",
            "a\\b",
            "dot.",
            "tab\t",
            &"x".repeat(256),
        ] {
            let error = esp(
                64 * MIB,
                "",
                &[EspFile {
                    path: bad,
                    contents: b"x",
                }],
            );
            assert!(
                matches!(error, EspError::BadPath { .. }),
                "{bad:?}: {error}"
            );
        }
        let twice = [
            EspFile {
                path: "EFI/BOOT/BOOTX64.EFI",
                contents: b"a",
            },
            EspFile {
                path: "efi/boot/bootx64.efi",
                contents: b"b",
            },
        ];
        let error = esp(64 * MIB, "", &twice);
        assert!(error.to_string().contains("another file"), "{error}");
        let file_as_dir = [
            EspFile {
                path: "EFI",
                contents: b"a",
            },
            EspFile {
                path: "EFI/BOOT/BOOTX64.EFI",
                contents: b"b",
            },
        ];
        let error = esp(64 * MIB, "", &file_as_dir);
        assert!(error.to_string().contains("is a file"), "{error}");
        assert!(!path.exists(), "nothing is written for bad input");
    }

    #[test]
    fn files_that_do_not_fit_are_refused_with_the_excess() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        let big = vec![1u8; 70 << 20];
        let error = write_esp(
            &path,
            64 * MIB,
            "",
            1,
            &[EspFile {
                path: "big",
                contents: &big,
            }],
        )
        .unwrap_err();
        let EspError::DoesNotFit {
            needed_bytes,
            available_bytes,
            over_bytes,
            ..
        } = error
        else {
            panic!("{error}");
        };
        assert_eq!(available_bytes, 128_992 * 512);
        assert_eq!(
            needed_bytes,
            (70 << 20) + 512,
            "the file and the root directory"
        );
        assert_eq!(over_bytes, needed_bytes - available_bytes);
        // Exactly full fits.
        let full = vec![1u8; (128_991 * 512) as usize];
        let layout = write_esp(
            &path,
            64 * MIB,
            "",
            1,
            &[EspFile {
                path: "full",
                contents: &full,
            }],
        )
        .unwrap();
        assert_eq!(layout.free_clusters, 0);
    }
}
