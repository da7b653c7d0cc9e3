//! Writes a GPT-partitioned raw disk image, deterministically, without any
//! external tool and without root.
//!
//! Layout, in 512-byte sectors (LBAs):
//!
//! | LBA | contents |
//! |---|---|
//! | 0 | protective MBR: one partition of type `0xEE` from LBA 1 |
//! | 1 | primary GPT header |
//! | 2–33 | primary partition entries: 128 × 128 bytes |
//! | 2048… | the partitions, each starting on a MiB boundary and a whole number of MiB long |
//! | last − 32 … last − 1 | backup partition entries |
//! | last | backup GPT header |
//!
//! The image ends right after the last partition with the 33 backup
//! sectors, so the last usable LBA is the last partition's last sector.
//! Each partition's type is given by its [`PartitionKind`]: "EFI System"
//! (what UEFI firmware boots from) or "Linux filesystem data". The disk GUID
//! and the partitions' unique GUIDs are derived from SHA-256 digests of the
//! partitions' numbers, names and contents (not their kinds), so the same
//! inputs give a byte-identical file. Zero-filled regions are left as holes (the file is
//! sized with `set_len` and only non-zero data is written), so a large
//! empty partition costs no disk space on file systems with sparse files.
//!
//! Once such an image is on a disk, [`read_partition_table`] lists its
//! partitions, [`relocate_backup_gpt`] moves the backup GPT to the end of a
//! disk larger than the image, and [`check_gpt`] checks both tables
//! (`applbuild flash` uses all three).

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Bytes per sector (LBA).
pub const SECTOR_SIZE: u64 = 512;

/// Partition starts and sizes are multiples of this many sectors (1 MiB).
pub const ALIGNMENT_SECTORS: u64 = 2048;

/// Entries in each partition entry array, so the most partitions an image holds.
pub const MAX_PARTITIONS: usize = 128;

/// The longest partition name, in UTF-16 code units.
pub const MAX_NAME_UNITS: usize = 36;

/// Partition type GUID "Linux filesystem data" ([`PartitionKind::LinuxData`]).
pub const LINUX_FILESYSTEM_DATA: Guid = Guid([
    0x0F, 0xC6, 0x3D, 0xAF, 0x84, 0x83, 0x47, 0x72, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
]);

/// Partition type GUID "EFI System" ([`PartitionKind::EfiSystem`]).
pub const EFI_SYSTEM: Guid = Guid([
    0xC1, 0x2A, 0x73, 0x28, 0xF8, 0x1F, 0x11, 0xD2, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
]);

const MIB: u64 = 1 << 20;
const ENTRY_SIZE: usize = 128;
const ENTRY_ARRAY_BYTES: usize = MAX_PARTITIONS * ENTRY_SIZE;
/// Sectors taken by one partition entry array (32).
const ENTRY_ARRAY_SECTORS: u64 = ENTRY_ARRAY_BYTES as u64 / SECTOR_SIZE;
const HEADER_SIZE: usize = 92;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION_1_0: u32 = 0x0001_0000;
/// First usable LBA after the protective MBR, the header and the entries.
const FIRST_USABLE_LBA: u64 = 2 + ENTRY_ARRAY_SECTORS;
/// Domain separation for the digests the GUIDs come from; bumped if the derivation changes.
const GUID_DOMAIN: &[u8] = b"applbuild-gpt-v1\0";

/// What can go wrong while writing an image; each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    /// A partition's source file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The source file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A source file got shorter while it was copied.
    #[error(
        "{path} shrank while it was copied into a disk image: expected {expected} bytes, read {actual}"
    )]
    SourceShrank {
        /// The source file.
        path: PathBuf,
        /// Its size when the layout was made.
        expected: u64,
        /// Bytes that could be read.
        actual: u64,
    },
    /// The image file could not be created or written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The image file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// More partitions than a GPT entry array holds.
    #[error("{path}: {count} partitions asked for; a GPT holds at most {MAX_PARTITIONS}")]
    TooManyPartitions {
        /// The image file.
        path: PathBuf,
        /// Partitions asked for.
        count: usize,
    },
    /// A partition name does not fit its 72-byte field.
    #[error(
        "{path}: partition name `{name}` is {units} UTF-16 code units long; GPT allows at most {MAX_NAME_UNITS}"
    )]
    NameTooLong {
        /// The image file.
        path: PathBuf,
        /// The name.
        name: String,
        /// Its length in UTF-16 code units.
        units: usize,
    },
    /// The partitions add up to more bytes than a file offset can address.
    #[error("{path}: partition `{name}` of {bytes} bytes does not fit in a disk image")]
    TooLarge {
        /// The image file.
        path: PathBuf,
        /// The partition.
        name: String,
        /// Its content size.
        bytes: u64,
    },
}

/// A GUID, held in RFC 4122 byte order (the order it is printed in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// A version 4, RFC 4122 variant GUID made from the first 16 bytes of
    /// `digest` (which must have at least 16): random-looking but reproducible.
    pub fn from_digest(digest: &[u8]) -> Self {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[6] = (bytes[6] & 0x0F) | 0x40;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        Self(bytes)
    }

    /// The 16 bytes as GPT stores them: the first three fields
    /// little-endian, the last two as they are.
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let mut out = self.0;
        out[0..4].reverse();
        out[4..6].reverse();
        out[6..8].reverse();
        out
    }

    /// Reads a GUID stored in GPT's mixed-endian order.
    pub fn from_gpt_bytes(stored: [u8; 16]) -> Self {
        // The swap is its own inverse.
        Self(Self(stored).to_gpt_bytes())
    }
}

impl fmt::Display for Guid {
    /// `0FC63DAF-8483-4772-8E79-3D69D8477DE4` (upper case, as sfdisk prints them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

/// What a partition is for, which sets its GPT type GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKind {
    /// An EFI system partition (a FAT file system the firmware boots from).
    EfiSystem,
    /// Linux data: a file system, a kernel or raw bytes for the system to read.
    LinuxData,
}

impl PartitionKind {
    /// The partition type GUID: [`EFI_SYSTEM`] or [`LINUX_FILESYSTEM_DATA`].
    pub fn type_guid(self) -> Guid {
        match self {
            Self::EfiSystem => EFI_SYSTEM,
            Self::LinuxData => LINUX_FILESYSTEM_DATA,
        }
    }
}

/// One partition's name, kind and content.
#[derive(Debug, Clone, Copy)]
pub struct PartitionContent<'a> {
    /// GPT partition name (at most [`MAX_NAME_UNITS`] UTF-16 code units).
    pub name: &'a str,
    /// What the partition is for (its type GUID).
    pub kind: PartitionKind,
    /// What the partition holds.
    pub source: PartitionSource<'a>,
}

/// Where a partition's bytes come from.
#[derive(Debug, Clone, Copy)]
pub enum PartitionSource<'a> {
    /// The contents of this file, followed by zeros up to the next MiB.
    File(&'a Path),
    /// This many zero bytes (rounded up to whole MiB), left as a hole.
    Zeros {
        /// Size in bytes.
        bytes: u64,
    },
}

/// Where one partition ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLayout {
    /// Partition number, from 1 (`/dev/vdb1` for the first).
    pub number: u32,
    /// GPT partition name.
    pub name: String,
    /// What the partition is for (its type GUID).
    pub kind: PartitionKind,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive, as GPT records it).
    pub last_lba: u64,
    /// Size of the partition in bytes (a whole number of MiB).
    pub size_bytes: u64,
    /// Bytes of content at its start; the rest is zeros.
    pub content_bytes: u64,
    /// The partition's unique GUID.
    pub guid: Guid,
}

impl PartitionLayout {
    /// Byte offset of the partition in the image.
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR_SIZE
    }
}

/// The layout of a written image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// Sectors in the image; the backup GPT header is the last one.
    pub total_lbas: u64,
    /// Size of the image file in bytes.
    pub total_bytes: u64,
    /// The disk GUID.
    pub disk_guid: Guid,
    /// The partitions, in table order.
    pub partitions: Vec<PartitionLayout>,
}

/// A partition's source, opened, with the size its layout is made from.
struct OpenedSource<'a> {
    content: &'a PartitionContent<'a>,
    file: Option<File>,
    bytes: u64,
}

/// Writes `partitions`, in order, as a GPT disk image at `path` (created or
/// truncated). The file is written in place; on error it may be left
/// incomplete, so write into a staging folder.
pub fn write_gpt_image(
    path: &Path,
    partitions: &[PartitionContent],
) -> Result<DiskLayout, DiskImageError> {
    if partitions.len() > MAX_PARTITIONS {
        return Err(DiskImageError::TooManyPartitions {
            path: path.to_path_buf(),
            count: partitions.len(),
        });
    }
    let mut sources = partitions
        .iter()
        .map(|content| open_source(path, content))
        .collect::<Result<Vec<_>, _>>()?;
    let Extents {
        partitions: extents,
        total_lbas,
        total_bytes,
    } = plan_extents(path, &sources)?;

    let write_error = |source| DiskImageError::Write {
        path: path.to_path_buf(),
        source,
    };
    let image = File::create(path).map_err(write_error)?;
    image.set_len(total_bytes).map_err(write_error)?;
    image
        .write_all_at(&protective_mbr(total_lbas), 0)
        .map_err(write_error)?;
    let (layouts, disk_guid) = write_partitions(&image, path, &mut sources, &extents)?;
    write_tables(&image, &layouts, total_lbas, disk_guid).map_err(write_error)?;
    Ok(DiskLayout {
        total_lbas,
        total_bytes,
        disk_guid,
        partitions: layouts,
    })
}

/// Checks a partition's name and opens its file, if it has one.
fn open_source<'a>(
    path: &Path,
    content: &'a PartitionContent<'a>,
) -> Result<OpenedSource<'a>, DiskImageError> {
    let units = content.name.encode_utf16().count();
    if units > MAX_NAME_UNITS {
        return Err(DiskImageError::NameTooLong {
            path: path.to_path_buf(),
            name: content.name.into(),
            units,
        });
    }
    Ok(match content.source {
        PartitionSource::File(source) => {
            let read_error = |error| DiskImageError::Read {
                path: source.to_path_buf(),
                source: error,
            };
            let file = File::open(source).map_err(read_error)?;
            let bytes = file.metadata().map_err(read_error)?.len();
            OpenedSource {
                content,
                file: Some(file),
                bytes,
            }
        }
        PartitionSource::Zeros { bytes } => OpenedSource {
            content,
            file: None,
            bytes,
        },
    })
}

/// Where the partitions go and how large the image is.
struct Extents {
    /// First and last LBA of each partition.
    partitions: Vec<(u64, u64)>,
    /// Sectors in the image.
    total_lbas: u64,
    /// Bytes in the image.
    total_bytes: u64,
}

/// Partition extents, the image's sectors and bytes. Each partition starts where the previous ended, which is always on a MiB
/// boundary since every size is a whole number of MiB.
fn plan_extents(path: &Path, sources: &[OpenedSource]) -> Result<Extents, DiskImageError> {
    let too_large = |source: &OpenedSource| DiskImageError::TooLarge {
        path: path.to_path_buf(),
        name: source.content.name.into(),
        bytes: source.bytes,
    };
    let mut extents = Vec::with_capacity(sources.len());
    let mut next_lba = ALIGNMENT_SECTORS;
    for source in sources {
        let sectors = mib_sectors(source.bytes).ok_or_else(|| too_large(source))?;
        let end = next_lba
            .checked_add(sectors)
            .ok_or_else(|| too_large(source))?;
        extents.push((next_lba, end - 1));
        next_lba = end;
    }
    let total_lbas = next_lba + 1 + ENTRY_ARRAY_SECTORS;
    let total_bytes = total_lbas
        .checked_mul(SECTOR_SIZE)
        .filter(|bytes| i64::try_from(*bytes).is_ok())
        .ok_or_else(|| too_large(sources.last().expect("only partitions overflow")))?;
    Ok(Extents {
        partitions: extents,
        total_lbas,
        total_bytes,
    })
}

/// Copies each partition's content into `image` and derives the partition
/// GUIDs and the disk GUID from numbers, names and contents.
fn write_partitions(
    image: &File,
    path: &Path,
    sources: &mut [OpenedSource],
    extents: &[(u64, u64)],
) -> Result<(Vec<PartitionLayout>, Guid), DiskImageError> {
    let mut layouts = Vec::with_capacity(sources.len());
    let mut disk_hasher = Sha256::new();
    disk_hasher.update(GUID_DOMAIN);
    disk_hasher.update(b"disk\0");
    for (index, (source, &(first_lba, last_lba))) in sources.iter_mut().zip(extents).enumerate() {
        let number = u32::try_from(index + 1).expect("at most 128 partitions");
        let content_id = match (&mut source.file, source.content.source) {
            (Some(file), PartitionSource::File(from)) => {
                let sha256 = copy_into(
                    file,
                    from,
                    source.bytes,
                    image,
                    path,
                    first_lba * SECTOR_SIZE,
                )?;
                format!("file {} {sha256}", source.bytes)
            }
            _ => format!("zeros {}", source.bytes),
        };
        let mut hasher = Sha256::new();
        hasher.update(GUID_DOMAIN);
        hasher.update(format!(
            "partition\0{number}\0{}\0{content_id}",
            source.content.name
        ));
        let digest = hasher.finalize();
        disk_hasher.update(digest);
        layouts.push(PartitionLayout {
            number,
            name: source.content.name.into(),
            kind: source.content.kind,
            first_lba,
            last_lba,
            size_bytes: (last_lba - first_lba + 1) * SECTOR_SIZE,
            content_bytes: source.bytes,
            guid: Guid::from_digest(&digest),
        });
    }
    Ok((layouts, Guid::from_digest(&disk_hasher.finalize())))
}

/// Writes the primary and backup partition entry arrays and GPT headers.
fn write_tables(
    image: &File,
    layouts: &[PartitionLayout],
    total_lbas: u64,
    disk_guid: Guid,
) -> io::Result<()> {
    let entries = entry_array(layouts);
    let entries_crc = crc32fast::hash(&entries);
    let last_lba = total_lbas - 1;
    let backup_entries_lba = last_lba - ENTRY_ARRAY_SECTORS;
    let header = |my_lba: u64, alternate_lba: u64, entries_lba: u64| {
        gpt_header(&HeaderFields {
            my_lba,
            alternate_lba,
            last_usable_lba: backup_entries_lba - 1,
            disk_guid,
            entries_lba,
            entries_crc,
        })
    };
    for (bytes, lba) in [
        (entries.as_slice(), 2),
        (&header(1, last_lba, 2)[..], 1),
        (entries.as_slice(), backup_entries_lba),
        (&header(last_lba, 1, backup_entries_lba)[..], last_lba),
    ] {
        image.write_all_at(bytes, lba * SECTOR_SIZE)?;
    }
    Ok(())
}

/// Sectors of a partition holding `bytes`: whole MiB, at least one.
fn mib_sectors(bytes: u64) -> Option<u64> {
    let mib = bytes.max(1).div_ceil(MIB);
    mib.checked_mul(ALIGNMENT_SECTORS)
}

/// Copies `bytes` bytes of `file` (opened from `from`) into `image` at
/// `offset`, and returns their SHA-256 in hex. Blocks of zeros are skipped,
/// so they stay holes.
fn copy_into(
    file: &mut File,
    from: &Path,
    bytes: u64,
    image: &File,
    image_path: &Path,
    offset: u64,
) -> Result<String, DiskImageError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    let mut reader = file.take(bytes);
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(DiskImageError::Read {
                    path: from.to_path_buf(),
                    source,
                });
            }
        };
        let chunk = &buffer[..read];
        hasher.update(chunk);
        if chunk.iter().any(|&byte| byte != 0) {
            image
                .write_all_at(chunk, offset + copied)
                .map_err(|source| DiskImageError::Write {
                    path: image_path.to_path_buf(),
                    source,
                })?;
        }
        copied += read as u64;
    }
    if copied != bytes {
        return Err(DiskImageError::SourceShrank {
            path: from.to_path_buf(),
            expected: bytes,
            actual: copied,
        });
    }
    Ok(hex::encode(hasher.finalize()))
}

/// LBA 0: no boot code, one partition of type 0xEE covering the disk (as
/// far as 32 bits reach), signature 0x55AA.
fn protective_mbr(total_lbas: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[0] = 0x00; // not bootable
    entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    entry[4] = 0xEE;
    entry[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]); // CHS beyond reach
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(total_lbas - 1).unwrap_or(u32::MAX);
    entry[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

/// The 128 entries of 128 bytes; unused entries are all zeros.
fn entry_array(partitions: &[PartitionLayout]) -> Vec<u8> {
    let mut entries = vec![0u8; ENTRY_ARRAY_BYTES];
    for (entry, partition) in entries.chunks_exact_mut(ENTRY_SIZE).zip(partitions) {
        entry[0..16].copy_from_slice(&partition.kind.type_guid().to_gpt_bytes());
        entry[16..32].copy_from_slice(&partition.guid.to_gpt_bytes());
        entry[32..40].copy_from_slice(&partition.first_lba.to_le_bytes());
        entry[40..48].copy_from_slice(&partition.last_lba.to_le_bytes());
        // 48..56: attributes, none.
        for (slot, unit) in entry[56..128]
            .chunks_exact_mut(2)
            .zip(partition.name.encode_utf16())
        {
            slot.copy_from_slice(&unit.to_le_bytes());
        }
    }
    entries
}

/// The fields that differ between the primary and the backup header, and
/// those computed from the partitions.
struct HeaderFields {
    my_lba: u64,
    alternate_lba: u64,
    last_usable_lba: u64,
    disk_guid: Guid,
    entries_lba: u64,
    entries_crc: u32,
}

/// One GPT header sector, its CRC32 filled in.
fn gpt_header(fields: &HeaderFields) -> [u8; 512] {
    let mut sector = [0u8; 512];
    let header = &mut sector[..HEADER_SIZE];
    header[0..8].copy_from_slice(SIGNATURE);
    header[8..12].copy_from_slice(&REVISION_1_0.to_le_bytes());
    header[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    // 16..20: header CRC32, computed below with the field zero; 20..24 reserved.
    header[24..32].copy_from_slice(&fields.my_lba.to_le_bytes());
    header[32..40].copy_from_slice(&fields.alternate_lba.to_le_bytes());
    header[40..48].copy_from_slice(&FIRST_USABLE_LBA.to_le_bytes());
    header[48..56].copy_from_slice(&fields.last_usable_lba.to_le_bytes());
    header[56..72].copy_from_slice(&fields.disk_guid.to_gpt_bytes());
    header[72..80].copy_from_slice(&fields.entries_lba.to_le_bytes());
    header[80..84].copy_from_slice(&(MAX_PARTITIONS as u32).to_le_bytes());
    header[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    header[88..92].copy_from_slice(&fields.entries_crc.to_le_bytes());
    let crc = crc32fast::hash(header);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    sector
}

/// What can go wrong reading, checking or moving the GPT of a disk (or an
/// image file); the caller names the disk.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// The disk could not be read or written.
    #[error("cannot read or write the GPT: {0}")]
    Io(#[from] io::Error),
    /// Sector 1 holds no GPT header.
    #[error("no GPT: sector 1 has no `EFI PART` signature")]
    NoGpt,
    /// A header is there but cannot be trusted.
    #[error("the GPT header in sector {lba} is damaged: {problem}")]
    BadHeader {
        /// Where the header is.
        lba: u64,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The partition entries do not have the CRC32 their header records.
    #[error("the GPT partition entries at sector {lba} do not match their header's CRC32")]
    BadEntries {
        /// Where the entry array starts.
        lba: u64,
    },
    /// The disk ends before the place its GPT needs.
    #[error(
        "a disk of {disk_bytes} bytes cannot hold this GPT, whose backup is at sector {backup_lba}"
    )]
    DiskTooSmall {
        /// Size of the disk.
        disk_bytes: u64,
        /// Sector of the backup header the table was written with.
        backup_lba: u64,
    },
}

/// A GPT as read from a disk or an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// The disk GUID.
    pub disk_guid: Guid,
    /// First sector a partition may use.
    pub first_usable_lba: u64,
    /// Last sector a partition may use.
    pub last_usable_lba: u64,
    /// Sector of the backup header, as the primary header records it.
    pub backup_lba: u64,
    /// The used entries, in table order.
    pub partitions: Vec<TablePartition>,
}

/// One used entry of a [`PartitionTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePartition {
    /// Partition number, from 1: the entry's place in the array.
    pub number: u32,
    /// GPT partition name.
    pub name: String,
    /// Partition type GUID.
    pub type_guid: Guid,
    /// The partition's unique GUID.
    pub guid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
}

impl TablePartition {
    /// Size of the partition in bytes.
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba + 1).saturating_sub(self.first_lba) * SECTOR_SIZE
    }
}

/// Entry arrays past this size are taken for garbage rather than allocated.
const MAX_ENTRY_ARRAY_BYTES: u64 = 1 << 20;

/// A header sector that passed its checks, with the fields relocation and
/// listing use.
struct ReadHeader {
    sector: [u8; 512],
    size: usize,
    alternate_lba: u64,
    first_usable_lba: u64,
    last_usable_lba: u64,
    entries_lba: u64,
    entry_count: u64,
    entry_size: u64,
    entries_crc: u32,
}

/// Reads the GPT of `file` through its primary header (sector 1); `None`
/// when sector 1 has no GPT signature (an empty or MBR disk).
pub fn read_partition_table(file: &File) -> Result<Option<PartitionTable>, GptError> {
    let Some(header) = read_header(file, 1)? else {
        return Ok(None);
    };
    let entries = read_entries(file, &header)?;
    let partitions = entries
        .chunks_exact(header.entry_size as usize)
        .enumerate()
        .filter(|(_, entry)| entry[0..16].iter().any(|&byte| byte != 0))
        .map(|(index, entry)| table_partition(index, entry))
        .collect();
    Ok(Some(PartitionTable {
        disk_guid: Guid::from_gpt_bytes(header.sector[56..72].try_into().expect("16 bytes")),
        first_usable_lba: header.first_usable_lba,
        last_usable_lba: header.last_usable_lba,
        backup_lba: header.alternate_lba,
        partitions,
    }))
}

/// Checks the whole GPT of a disk of `disk_bytes`: the primary header and
/// entries, a backup header in the disk's last sector that points back to
/// sector 1, and backup entries equal to the primary ones.
pub fn check_gpt(file: &File, disk_bytes: u64) -> Result<PartitionTable, GptError> {
    let table = read_partition_table(file)?.ok_or(GptError::NoGpt)?;
    let last_lba = (disk_bytes / SECTOR_SIZE).saturating_sub(1);
    if table.backup_lba != last_lba {
        return Err(GptError::BadHeader {
            lba: 1,
            problem: "its backup header is not in the disk's last sector",
        });
    }
    let primary = read_header(file, 1)?.ok_or(GptError::NoGpt)?;
    let backup = read_header(file, last_lba)?.ok_or(GptError::BadHeader {
        lba: last_lba,
        problem: "no `EFI PART` signature",
    })?;
    if backup.alternate_lba != 1 {
        return Err(GptError::BadHeader {
            lba: last_lba,
            problem: "it does not point back to the primary header",
        });
    }
    if read_entries(file, &backup)? != read_entries(file, &primary)? {
        return Err(GptError::BadEntries {
            lba: backup.entries_lba,
        });
    }
    Ok(table)
}

/// Moves the backup GPT of an image written onto a disk of `disk_bytes`
/// to the disk's end: the backup entries and header go to the last
/// sectors, the primary header gets the new backup and last usable
/// sectors (and CRC), the protective MBR the new size, and the old backup
/// header is zeroed. Without this a larger disk has its backup GPT in the
/// middle and its free space unusable, which `sfdisk --verify` reports.
/// Returns whether anything moved (not when the disk is the image's size).
pub fn relocate_backup_gpt(file: &File, disk_bytes: u64) -> Result<bool, GptError> {
    let primary = read_header(file, 1)?.ok_or(GptError::NoGpt)?;
    let entries = read_entries(file, &primary)?;
    let last_lba = (disk_bytes / SECTOR_SIZE).saturating_sub(1);
    if last_lba == primary.alternate_lba {
        return Ok(false);
    }
    if last_lba < primary.alternate_lba {
        return Err(GptError::DiskTooSmall {
            disk_bytes,
            backup_lba: primary.alternate_lba,
        });
    }
    let backup_entries_lba = last_lba - (entries.len() as u64).div_ceil(SECTOR_SIZE);
    let last_usable_lba = backup_entries_lba - 1;
    // The old backup sector is zeroed first: with a disk only a few sectors
    // larger it lies inside the new backup entries.
    file.write_all_at(&[0u8; 512], primary.alternate_lba * SECTOR_SIZE)?;
    file.write_all_at(&entries, backup_entries_lba * SECTOR_SIZE)?;
    let backup = patched_header(&primary, last_lba, 1, last_usable_lba, backup_entries_lba);
    file.write_all_at(&backup, last_lba * SECTOR_SIZE)?;
    let moved = patched_header(&primary, 1, last_lba, last_usable_lba, primary.entries_lba);
    file.write_all_at(&moved, SECTOR_SIZE)?;
    let mut mbr = [0u8; 512];
    file.read_exact_at(&mut mbr, 0)?;
    if mbr[446 + 4] == 0xEE && mbr[510..512] == [0x55, 0xAA] {
        let size = u32::try_from(last_lba).unwrap_or(u32::MAX);
        mbr[446 + 12..446 + 16].copy_from_slice(&size.to_le_bytes());
        file.write_all_at(&mbr, 0)?;
    }
    Ok(true)
}

/// The header in sector `lba`, checked (signature, size, CRC32, its own
/// position, the entry array's shape); `None` without a signature.
fn read_header(file: &File, lba: u64) -> Result<Option<ReadHeader>, GptError> {
    let mut sector = [0u8; 512];
    match file.read_exact_at(&mut sector, lba * SECTOR_SIZE) {
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        result => result?,
    }
    if &sector[0..8] != SIGNATURE {
        return Ok(None);
    }
    let bad = |problem| GptError::BadHeader { lba, problem };
    let size = u32_le(&sector, 12) as usize;
    if !(HEADER_SIZE..=512).contains(&size) {
        return Err(bad("its size is not between 92 and 512 bytes"));
    }
    let mut zeroed = sector;
    zeroed[16..20].fill(0);
    if crc32fast::hash(&zeroed[..size]) != u32_le(&sector, 16) {
        return Err(bad("its CRC32 does not match"));
    }
    if u64_le(&sector, 24) != lba {
        return Err(bad("it records another sector as its own"));
    }
    let (entry_count, entry_size) = (
        u64::from(u32_le(&sector, 80)),
        u64::from(u32_le(&sector, 84)),
    );
    if entry_size < ENTRY_SIZE as u64
        || entry_size % 8 != 0
        || entry_count * entry_size > MAX_ENTRY_ARRAY_BYTES
    {
        return Err(bad("its partition entry array has an impossible shape"));
    }
    Ok(Some(ReadHeader {
        sector,
        size,
        alternate_lba: u64_le(&sector, 32),
        first_usable_lba: u64_le(&sector, 40),
        last_usable_lba: u64_le(&sector, 48),
        entries_lba: u64_le(&sector, 72),
        entry_count,
        entry_size,
        entries_crc: u32_le(&sector, 88),
    }))
}

/// The entry array `header` describes, checked against its CRC32.
fn read_entries(file: &File, header: &ReadHeader) -> Result<Vec<u8>, GptError> {
    let mut entries = vec![0u8; (header.entry_count * header.entry_size) as usize];
    file.read_exact_at(&mut entries, header.entries_lba * SECTOR_SIZE)?;
    if crc32fast::hash(&entries) != header.entries_crc {
        return Err(GptError::BadEntries {
            lba: header.entries_lba,
        });
    }
    Ok(entries)
}

/// The used entry at `index` of an entry array.
fn table_partition(index: usize, entry: &[u8]) -> TablePartition {
    let units: Vec<u16> = entry[56..128]
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    TablePartition {
        number: u32::try_from(index + 1).expect("at most 8192 entries"),
        name: String::from_utf16_lossy(&units),
        type_guid: Guid::from_gpt_bytes(entry[0..16].try_into().expect("16 bytes")),
        guid: Guid::from_gpt_bytes(entry[16..32].try_into().expect("16 bytes")),
        first_lba: u64_le(entry, 32),
        last_lba: u64_le(entry, 40),
    }
}

/// `header`'s sector with new positions, its CRC32 recomputed; every
/// other field (GUIDs, first usable sector, entry shape) is kept.
fn patched_header(
    header: &ReadHeader,
    my_lba: u64,
    alternate_lba: u64,
    last_usable_lba: u64,
    entries_lba: u64,
) -> [u8; 512] {
    let mut sector = header.sector;
    sector[24..32].copy_from_slice(&my_lba.to_le_bytes());
    sector[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    sector[48..56].copy_from_slice(&last_usable_lba.to_le_bytes());
    sector[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    sector[16..20].fill(0);
    let crc = crc32fast::hash(&sector[..header.size]);
    sector[16..20].copy_from_slice(&crc.to_le_bytes());
    sector
}

fn u32_le(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_le(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL_BYTES: usize = 1_572_869; // 1.5 MiB + 5: rounds up to 2 MiB

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    fn sector(image: &[u8], lba: u64) -> &[u8] {
        let start = (lba * SECTOR_SIZE) as usize;
        &image[start..start + SECTOR_SIZE as usize]
    }

    /// Content that is not all zeros and has zero runs inside it.
    fn kernel_content() -> Vec<u8> {
        (0..KERNEL_BYTES)
            .map(|i| {
                if (i / 4096) % 3 == 1 {
                    0
                } else {
                    (i % 251) as u8 + 1
                }
            })
            .collect()
    }

    struct Sample {
        dir: tempfile::TempDir,
        layout: DiskLayout,
        image: Vec<u8>,
    }

    impl Sample {
        fn image_path(&self) -> PathBuf {
            self.dir.path().join("disk.img")
        }
    }

    /// kernel (1.5 MiB + 5 bytes, typed EFI System so both kinds are
    /// covered), initrd (10 bytes), data (3 MiB of zeros).
    fn sample() -> Sample {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        let initrd = dir.path().join("initrd.img");
        std::fs::write(&kernel, kernel_content()).unwrap();
        std::fs::write(&initrd, b"0123456789").unwrap();
        let path = dir.path().join("disk.img");
        let layout = write_gpt_image(
            &path,
            &[
                PartitionContent {
                    name: "kernel",
                    kind: PartitionKind::EfiSystem,
                    source: PartitionSource::File(&kernel),
                },
                PartitionContent {
                    name: "initrd",
                    kind: PartitionKind::LinuxData,
                    source: PartitionSource::File(&initrd),
                },
                PartitionContent {
                    name: "data",
                    kind: PartitionKind::LinuxData,
                    source: PartitionSource::Zeros { bytes: 3 * MIB },
                },
            ],
        )
        .unwrap();
        let image = std::fs::read(&path).unwrap();
        Sample { dir, layout, image }
    }

    fn header_crc_is_valid(header_sector: &[u8]) -> bool {
        let size = u32_at(header_sector, 12) as usize;
        let mut header = header_sector[..size].to_vec();
        let stored = u32_at(&header, 16);
        header[16..20].fill(0);
        crc32fast::hash(&header) == stored
    }

    #[test]
    fn partitions_are_mib_aligned_whole_mib_and_followed_by_the_backup() {
        let Sample { layout, image, .. } = sample();
        let extents: Vec<(&str, u64, u64, u64)> = layout
            .partitions
            .iter()
            .map(|p| (p.name.as_str(), p.first_lba, p.last_lba, p.size_bytes))
            .collect();
        assert_eq!(
            extents,
            [
                ("kernel", 2048, 6143, 2 * MIB),
                ("initrd", 6144, 8191, MIB),
                ("data", 8192, 14335, 3 * MIB),
            ]
        );
        assert_eq!(
            layout
                .partitions
                .iter()
                .map(|p| (p.number, p.content_bytes))
                .collect::<Vec<_>>(),
            [(1, KERNEL_BYTES as u64), (2, 10), (3, 3 * MIB)]
        );
        for partition in &layout.partitions {
            assert_eq!(partition.first_lba % ALIGNMENT_SECTORS, 0, "{partition:?}");
            assert_eq!(partition.size_bytes % MIB, 0, "{partition:?}");
        }
        assert_eq!(layout.total_lbas, 14336 + 33);
        assert_eq!(layout.total_bytes, layout.total_lbas * SECTOR_SIZE);
        assert_eq!(image.len() as u64, layout.total_bytes);
    }

    #[test]
    fn protective_mbr_covers_the_disk() {
        let Sample { layout, image, .. } = sample();
        let mbr = sector(&image, 0);
        assert_eq!(&mbr[510..512], &[0x55, 0xAA]);
        assert_eq!(mbr[446 + 4], 0xEE);
        assert_eq!(u32_at(mbr, 446 + 8), 1);
        assert_eq!(u64::from(u32_at(mbr, 446 + 12)), layout.total_lbas - 1);
        assert!(mbr[462..510].iter().all(|&b| b == 0), "one MBR entry only");
        assert!(mbr[..446].iter().all(|&b| b == 0), "no boot code");
        // The size saturates for disks past 2 TiB.
        assert_eq!(u32_at(&protective_mbr(1 << 40), 446 + 12), u32::MAX);
    }

    #[test]
    fn primary_header_has_signature_fields_and_valid_crcs() {
        let Sample { layout, image, .. } = sample();
        let header = sector(&image, 1);
        assert_eq!(&header[0..8], b"EFI PART");
        assert_eq!(u32_at(header, 8), 0x0001_0000);
        assert_eq!(u32_at(header, 12), 92);
        assert!(header_crc_is_valid(header));
        assert_eq!(u64_at(header, 24), 1);
        assert_eq!(u64_at(header, 32), layout.total_lbas - 1);
        assert_eq!(u64_at(header, 40), 34);
        assert_eq!(u64_at(header, 48), layout.total_lbas - 34);
        assert_eq!(u64_at(header, 48), layout.partitions[2].last_lba);
        assert_eq!(
            Guid::from_gpt_bytes(header[56..72].try_into().unwrap()),
            layout.disk_guid
        );
        assert_eq!(u64_at(header, 72), 2);
        assert_eq!(u32_at(header, 80), 128);
        assert_eq!(u32_at(header, 84), 128);
        let entries = &image[2 * 512..34 * 512];
        assert_eq!(u32_at(header, 88), crc32fast::hash(entries));
        assert!(header[92..].iter().all(|&b| b == 0));
    }

    #[test]
    fn backup_header_at_the_last_lba_points_back() {
        let Sample { layout, image, .. } = sample();
        let last = layout.total_lbas - 1;
        let primary = sector(&image, 1);
        let backup = sector(&image, last);
        assert_eq!(&backup[0..8], b"EFI PART");
        assert!(header_crc_is_valid(backup));
        assert_eq!(u64_at(backup, 24), last);
        assert_eq!(u64_at(backup, 32), 1);
        assert_eq!(u64_at(backup, 72), last - 32);
        // Everything else is the primary's.
        for range in [8..16, 40..72, 80..92] {
            assert_eq!(backup[range.clone()], primary[range.clone()], "{range:?}");
        }
        let backup_entries = &image[((last - 32) * 512) as usize..(last * 512) as usize];
        assert_eq!(backup_entries, &image[2 * 512..34 * 512]);
        assert_eq!(u32_at(backup, 88), crc32fast::hash(backup_entries));
    }

    #[test]
    fn entries_have_type_names_extents_and_distinct_v4_guids() {
        let Sample { layout, image, .. } = sample();
        let entries = &image[2 * 512..34 * 512];
        let mut guids = vec![layout.disk_guid];
        for (entry, partition) in entries.chunks_exact(128).zip(&layout.partitions) {
            assert_eq!(
                Guid::from_gpt_bytes(entry[0..16].try_into().unwrap()),
                partition.kind.type_guid()
            );
            let guid = Guid::from_gpt_bytes(entry[16..32].try_into().unwrap());
            assert_eq!(guid, partition.guid);
            assert_eq!(u64_at(entry, 32), partition.first_lba);
            assert_eq!(u64_at(entry, 40), partition.last_lba);
            assert_eq!(u64_at(entry, 48), 0, "no attributes");
            let units: Vec<u16> = entry[56..128]
                .chunks_exact(2)
                .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
                .take_while(|&unit| unit != 0)
                .collect();
            assert_eq!(String::from_utf16(&units).unwrap(), partition.name);
            guids.push(guid);
        }
        assert!(entries[3 * 128..].iter().all(|&b| b == 0), "unused entries");
        let kinds: Vec<PartitionKind> = layout.partitions.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                PartitionKind::EfiSystem,
                PartitionKind::LinuxData,
                PartitionKind::LinuxData
            ]
        );
        for guid in &guids {
            assert_eq!(guid.0[6] >> 4, 4, "version 4: {guid}");
            assert_eq!(guid.0[8] >> 6, 0b10, "RFC 4122 variant: {guid}");
        }
        let mut unique = guids.clone();
        unique.sort_by_key(|guid| guid.0);
        unique.dedup();
        assert_eq!(unique.len(), guids.len(), "{guids:?}");
    }

    #[test]
    fn partition_holds_the_file_then_zeros() {
        let Sample { layout, image, .. } = sample();
        let kernel = &layout.partitions[0];
        let start = kernel.offset_bytes() as usize;
        let end = start + kernel.size_bytes as usize;
        assert_eq!(&image[start..start + KERNEL_BYTES], kernel_content());
        assert!(image[start + KERNEL_BYTES..end].iter().all(|&b| b == 0));
        let initrd = &layout.partitions[1];
        let start = initrd.offset_bytes() as usize;
        assert_eq!(&image[start..start + 10], b"0123456789");
        let data = &layout.partitions[2];
        let start = data.offset_bytes() as usize;
        assert!(
            image[start..start + data.size_bytes as usize]
                .iter()
                .all(|&b| b == 0)
        );
        // The gap between the entries and the first partition is zero too.
        assert!(image[34 * 512..2048 * 512].iter().all(|&b| b == 0));
    }

    #[test]
    fn same_inputs_give_identical_bytes_and_other_content_other_guids() {
        let first = sample();
        let second = sample();
        assert!(first.image == second.image, "two writes differ");
        assert_eq!(first.layout, second.layout);

        let kernel = first.dir.path().join("vmlinuz");
        let mut changed = kernel_content();
        changed[0] ^= 0xFF;
        std::fs::write(&kernel, changed).unwrap();
        let layout = write_gpt_image(
            &first.image_path(),
            &[
                PartitionContent {
                    name: "kernel",
                    kind: PartitionKind::EfiSystem,
                    source: PartitionSource::File(&kernel),
                },
                PartitionContent {
                    name: "initrd",
                    kind: PartitionKind::LinuxData,
                    source: PartitionSource::File(&first.dir.path().join("initrd.img")),
                },
                PartitionContent {
                    name: "data",
                    kind: PartitionKind::LinuxData,
                    source: PartitionSource::Zeros { bytes: 3 * MIB },
                },
            ],
        )
        .unwrap();
        assert_ne!(layout.disk_guid, first.layout.disk_guid);
        assert_ne!(layout.partitions[0].guid, first.layout.partitions[0].guid);
        assert_eq!(layout.partitions[1].guid, first.layout.partitions[1].guid);
    }

    #[test]
    fn rewriting_over_a_larger_file_truncates_it() {
        let sample = sample();
        let path = sample.image_path();
        std::fs::write(&path, vec![0xAB; 20 << 20]).unwrap();
        let layout = write_gpt_image(
            &path,
            &[PartitionContent {
                name: "data",
                kind: PartitionKind::LinuxData,
                source: PartitionSource::Zeros { bytes: 0 },
            }],
        )
        .unwrap();
        let image = std::fs::read(&path).unwrap();
        assert_eq!(image.len() as u64, layout.total_bytes);
        assert_eq!(layout.partitions[0].size_bytes, MIB, "at least 1 MiB");
        let data = &layout.partitions[0];
        let start = data.offset_bytes() as usize;
        assert!(image[start..start + MIB as usize].iter().all(|&b| b == 0));
    }

    #[test]
    fn guid_text_and_gpt_encoding() {
        assert_eq!(
            LINUX_FILESYSTEM_DATA.to_string(),
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        );
        assert_eq!(
            LINUX_FILESYSTEM_DATA.to_gpt_bytes(),
            [
                0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
                0x7D, 0xE4
            ]
        );
        assert_eq!(
            EFI_SYSTEM.to_string(),
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        );
        assert_eq!(
            EFI_SYSTEM.to_gpt_bytes(),
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        let guid = Guid::from_digest(&[0xFF; 32]);
        assert_eq!(guid.to_string(), "FFFFFFFF-FFFF-4FFF-BFFF-FFFFFFFFFFFF");
    }

    #[test]
    fn bad_inputs_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let missing = dir.path().join("no-such-kernel");
        let error = write_gpt_image(
            &path,
            &[PartitionContent {
                name: "kernel",
                kind: PartitionKind::LinuxData,
                source: PartitionSource::File(&missing),
            }],
        )
        .unwrap_err();
        assert!(matches!(error, DiskImageError::Read { .. }), "{error}");
        assert!(error.to_string().contains("no-such-kernel"), "{error}");

        let long = "x".repeat(37);
        let error = write_gpt_image(
            &path,
            &[PartitionContent {
                name: &long,
                kind: PartitionKind::LinuxData,
                source: PartitionSource::Zeros { bytes: 1 },
            }],
        )
        .unwrap_err();
        assert!(matches!(
            error,
            DiskImageError::NameTooLong { units: 37, .. }
        ));
        assert!(error.to_string().contains("disk.img"), "{error}");

        let many = vec![
            PartitionContent {
                name: "p",
                kind: PartitionKind::LinuxData,
                source: PartitionSource::Zeros { bytes: 1 },
            };
            129
        ];
        let error = write_gpt_image(&path, &many).unwrap_err();
        assert!(matches!(
            error,
            DiskImageError::TooManyPartitions { count: 129, .. }
        ));

        let error = write_gpt_image(
            &path,
            &[PartitionContent {
                name: "huge",
                kind: PartitionKind::LinuxData,
                source: PartitionSource::Zeros { bytes: u64::MAX },
            }],
        )
        .unwrap_err();
        assert!(matches!(error, DiskImageError::TooLarge { .. }), "{error}");

        let error = write_gpt_image(&dir.path().join("no/such/dir/disk.img"), &[]).unwrap_err();
        assert!(matches!(error, DiskImageError::Write { .. }), "{error}");
        assert!(
            error.to_string().contains("no/such/dir/disk.img"),
            "{error}"
        );
    }

    /// util-linux must read the table we write: three partitions where we
    /// put them, with our names, types (EFI System and Linux data) and
    /// GUIDs, and no complaint.
    #[test]
    fn sfdisk_reads_the_partition_table() {
        let Some(sfdisk) = applbuild_testdata::host_tool("sfdisk", "fdisk") else {
            return;
        };
        let sample = sample();
        let path = sample.image_path();

        let verify = std::process::Command::new(&sfdisk)
            .arg("--verify")
            .arg(&path)
            .output()
            .unwrap();
        let verify_out = String::from_utf8_lossy(&verify.stdout);
        let verify_err = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success(), "{verify_out}{verify_err}");
        assert!(
            verify_out.contains("No errors detected"),
            "{verify_out}{verify_err}"
        );
        assert!(verify_err.trim().is_empty(), "{verify_err}");

        let dump = std::process::Command::new(&sfdisk)
            .arg("--json")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&dump.stderr);
        assert!(dump.status.success(), "{stderr}");
        assert!(stderr.trim().is_empty(), "{stderr}");
        let json: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
        let table = &json["partitiontable"];
        assert_eq!(table["label"], "gpt", "{json}");
        assert_eq!(table["unit"], "sectors", "{json}");
        assert_eq!(table["firstlba"], 34, "{json}");
        assert_eq!(table["lastlba"], sample.layout.total_lbas - 34, "{json}");
        assert_eq!(table["id"], sample.layout.disk_guid.to_string(), "{json}");
        let partitions = table["partitions"].as_array().unwrap();
        assert_eq!(partitions.len(), 3, "{json}");
        assert_eq!(
            partitions[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "an EFI System partition: {json}"
        );
        assert_eq!(
            partitions[1]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "{json}"
        );
        for (read, written) in partitions.iter().zip(&sample.layout.partitions) {
            assert_eq!(read["start"], written.first_lba, "{json}");
            assert_eq!(read["size"], written.size_bytes / SECTOR_SIZE, "{json}");
            assert_eq!(read["name"], written.name.as_str(), "{json}");
            assert_eq!(read["type"], written.kind.type_guid().to_string(), "{json}");
            assert_eq!(read["uuid"], written.guid.to_string(), "{json}");
        }
    }

    /// The sample image copied into a file of `extra_bytes` more (zeros).
    fn sample_on_larger_disk(sample: &Sample, extra_bytes: u64) -> (PathBuf, File) {
        let path = sample.dir.path().join("larger-disk");
        std::fs::write(&path, &sample.image).unwrap();
        let file = File::options().read(true).write(true).open(&path).unwrap();
        file.set_len(sample.image.len() as u64 + extra_bytes)
            .unwrap();
        (path, file)
    }

    #[test]
    fn the_written_table_reads_back() {
        let sample = sample();
        let file = File::open(sample.image_path()).unwrap();
        let table = read_partition_table(&file).unwrap().unwrap();
        assert_eq!(table.disk_guid, sample.layout.disk_guid);
        assert_eq!(table.first_usable_lba, 34);
        assert_eq!(table.backup_lba, sample.layout.total_lbas - 1);
        let read: Vec<(u32, &str, Guid, Guid, u64, u64, u64)> = table
            .partitions
            .iter()
            .map(|p| {
                let (name, size) = (p.name.as_str(), p.size_bytes());
                (
                    p.number,
                    name,
                    p.type_guid,
                    p.guid,
                    p.first_lba,
                    p.last_lba,
                    size,
                )
            })
            .collect();
        let written: Vec<(u32, &str, Guid, Guid, u64, u64, u64)> = sample
            .layout
            .partitions
            .iter()
            .map(|p| {
                let (name, kind) = (p.name.as_str(), p.kind.type_guid());
                (
                    p.number,
                    name,
                    kind,
                    p.guid,
                    p.first_lba,
                    p.last_lba,
                    p.size_bytes,
                )
            })
            .collect();
        assert_eq!(read, written);
        assert_eq!(check_gpt(&file, sample.image.len() as u64).unwrap(), table);
    }

    #[test]
    fn no_table_and_damaged_tables_are_told_apart() {
        let sample = sample();
        let dir = sample.dir.path();
        let blank = dir.join("blank");
        std::fs::write(&blank, vec![0u8; 64 * 1024]).unwrap();
        assert_eq!(
            read_partition_table(&File::open(&blank).unwrap()).unwrap(),
            None
        );
        let tiny = dir.join("tiny");
        std::fs::write(&tiny, [0u8; 100]).unwrap();
        assert_eq!(
            read_partition_table(&File::open(&tiny).unwrap()).unwrap(),
            None
        );

        let mut bad_header = sample.image.clone();
        bad_header[512 + 40] ^= 1;
        std::fs::write(&blank, &bad_header).unwrap();
        let error = read_partition_table(&File::open(&blank).unwrap()).unwrap_err();
        assert!(
            matches!(error, GptError::BadHeader { lba: 1, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("CRC32"), "{error}");

        let mut bad_entries = sample.image.clone();
        bad_entries[2 * 512 + 56] ^= 1;
        std::fs::write(&blank, &bad_entries).unwrap();
        let error = read_partition_table(&File::open(&blank).unwrap()).unwrap_err();
        assert!(matches!(error, GptError::BadEntries { lba: 2 }), "{error}");
    }

    #[test]
    fn relocation_moves_the_backup_to_the_end_of_a_larger_disk() {
        let sample = sample();
        let extra = 10 * MIB + 7 * SECTOR_SIZE;
        let (_, file) = sample_on_larger_disk(&sample, extra);
        let disk_bytes = sample.image.len() as u64 + extra;
        let error = check_gpt(&file, disk_bytes).unwrap_err();
        assert!(
            error.to_string().contains("not in the disk's last sector"),
            "{error}"
        );

        assert!(relocate_backup_gpt(&file, disk_bytes).unwrap());
        let table = check_gpt(&file, disk_bytes).unwrap();
        let last = disk_bytes / SECTOR_SIZE - 1;
        assert_eq!(table.backup_lba, last);
        assert_eq!(table.last_usable_lba, last - 33);
        assert_eq!(table.first_usable_lba, 34);
        assert_eq!(table.disk_guid, sample.layout.disk_guid);
        assert_eq!(table.partitions.len(), 3);

        let disk = std::fs::read(sample.dir.path().join("larger-disk")).unwrap();
        let backup = sector(&disk, last);
        assert!(header_crc_is_valid(backup));
        assert_eq!(u64_at(backup, 24), last);
        assert_eq!(u64_at(backup, 32), 1);
        assert_eq!(u64_at(backup, 48), last - 33);
        assert_eq!(u64_at(backup, 72), last - 32);
        assert!(header_crc_is_valid(sector(&disk, 1)));
        assert_eq!(u64::from(u32_at(sector(&disk, 0), 446 + 12)), last);
        let old_backup = sample.layout.total_lbas - 1;
        assert!(
            sector(&disk, old_backup).iter().all(|&b| b == 0),
            "old backup zeroed"
        );
        // The partitions and their contents are untouched.
        let start = (2 * 512) as usize;
        assert_eq!(disk[start..34 * 512], sample.image[start..34 * 512]);
        assert_eq!(
            disk[34 * 512..old_backup as usize * 512 - 32 * 512],
            sample.image[34 * 512..old_backup as usize * 512 - 32 * 512]
        );

        assert!(
            !relocate_backup_gpt(&file, disk_bytes).unwrap(),
            "done once is enough"
        );
    }

    #[test]
    fn relocation_by_a_few_sectors_and_refusals() {
        let sample = sample();
        let (_, file) = sample_on_larger_disk(&sample, 3 * SECTOR_SIZE);
        let disk_bytes = sample.image.len() as u64 + 3 * SECTOR_SIZE;
        assert!(relocate_backup_gpt(&file, disk_bytes).unwrap());
        let table = check_gpt(&file, disk_bytes).unwrap();
        assert_eq!(table.backup_lba, disk_bytes / SECTOR_SIZE - 1);

        let image = File::open(sample.image_path()).unwrap();
        let same = sample.image.len() as u64;
        assert!(
            !relocate_backup_gpt(&image, same).unwrap(),
            "the image's own size"
        );
        let error = relocate_backup_gpt(&image, same - SECTOR_SIZE).unwrap_err();
        assert!(matches!(error, GptError::DiskTooSmall { .. }), "{error}");

        let blank = sample.dir.path().join("blank");
        std::fs::write(&blank, vec![0u8; 64 * 1024]).unwrap();
        let error = relocate_backup_gpt(&File::open(&blank).unwrap(), 64 * 1024).unwrap_err();
        assert!(matches!(error, GptError::NoGpt), "{error}");
    }

    /// util-linux finds nothing wrong with a relocated table: the backup at
    /// the end, the free space after the last partition usable.
    #[test]
    fn sfdisk_verifies_a_relocated_table() {
        let Some(sfdisk) = applbuild_testdata::host_tool("sfdisk", "fdisk") else {
            return;
        };
        let sample = sample();
        let (path, file) = sample_on_larger_disk(&sample, 16 * MIB);
        relocate_backup_gpt(&file, sample.image.len() as u64 + 16 * MIB).unwrap();
        drop(file);
        let verify = std::process::Command::new(&sfdisk)
            .arg("--verify")
            .arg(&path)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&verify.stdout);
        let err = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success(), "{out}{err}");
        assert!(out.contains("No errors detected"), "{out}{err}");
        assert!(err.trim().is_empty(), "{err}");
    }
}
