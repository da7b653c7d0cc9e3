//! Block maps in bmaptool's format 2.0: which 4 KiB blocks of a sparse
//! image hold data, with a SHA-256 per range, so a flasher writes only
//! those blocks and can check them.
//!
//! A bmap file is XML:
//!
//! ```xml
//! <bmap version="2.0">
//!     <ImageSize> 15142400 </ImageSize>
//!     <BlockSize> 4096 </BlockSize>
//!     <BlocksCount> 3697 </BlocksCount>
//!     <MappedBlocksCount> 520 </MappedBlocksCount>
//!     <ChecksumType> sha256 </ChecksumType>
//!     <BmapFileChecksum> 1f0c… </BmapFileChecksum>
//!     <BlockMap>
//!         <Range chksum="9a3e…"> 0-8 </Range>
//!         <Range chksum="77b0…"> 3696 </Range>
//!     </BlockMap>
//! </bmap>
//! ```
//!
//! Ranges are inclusive block numbers; a range's checksum covers its bytes
//! up to the end of the image (the last block may be short). The
//! `BmapFileChecksum` is the SHA-256 of the whole file with that value
//! replaced by 64 `0` characters, which is how `bmaptool` computes and
//! checks it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};
use quick_xml::Reader;
use quick_xml::events::Event;
use sha2::{Digest, Sha256};

/// Block size of the bmaps this module writes, as bmaptool uses.
pub const BMAP_BLOCK_SIZE: u64 = 4096;

/// The format version written and the major version read.
const VERSION: &str = "2.0";
/// What `BmapFileChecksum` holds while the file's own digest is computed.
const ZERO_CHECKSUM: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What can go wrong making or reading a bmap; each variant names the file or field.
#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    /// The image could not be opened, sized, scanned for holes or read.
    #[error("cannot read image {path}: {source}")]
    Read {
        /// The image file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An empty image has no blocks to map (bmaptool refuses it too).
    #[error("image {0} is empty: a bmap needs at least one byte")]
    EmptyImage(PathBuf),
    /// The text is not well-formed XML.
    #[error("bmap is not well-formed XML: {0}")]
    Xml(#[from] quick_xml::Error),
    /// A required element is missing.
    #[error("bmap has no <{0}> element")]
    MissingField(&'static str),
    /// An element's text is not what it should be.
    #[error("bmap field <{field}> holds {text:?}, expected {expected}")]
    BadField {
        /// The element.
        field: &'static str,
        /// Its text.
        text: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// A format version this reader does not know.
    #[error("bmap format version {0:?} is not supported; version 2.x is")]
    UnsupportedVersion(String),
    /// A checksum type other than sha256.
    #[error("bmap checksum type {0:?} is not supported; sha256 is")]
    UnsupportedChecksum(String),
    /// The file's checksum does not match its content: it was edited or damaged.
    #[error("bmap file checksum mismatch: the file says {stated}, its content gives {computed}")]
    FileChecksumMismatch {
        /// `BmapFileChecksum` as written.
        stated: String,
        /// What the content hashes to.
        computed: String,
    },
    /// A `<Range>` that cannot be used.
    #[error("bmap range {range:?}: {problem}")]
    BadRange {
        /// The range as written.
        range: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The counts do not agree with the sizes or the ranges.
    #[error("bmap is inconsistent: {0}")]
    Inconsistent(String),
}

/// Blocks `first_block..=last_block` hold data, whose SHA-256 is `sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmapRange {
    /// First block of the range.
    pub first_block: u64,
    /// Last block of the range (inclusive).
    pub last_block: u64,
    /// SHA-256 (lower-case hex) of the range's bytes, cut at the image's end.
    pub sha256: String,
}

/// A block map: the image's size and the ranges of blocks that hold data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    /// Image size in bytes.
    pub image_size: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Blocks in the image, the last one possibly short.
    pub blocks_count: u64,
    /// Blocks covered by `ranges`.
    pub mapped_blocks_count: u64,
    /// The mapped ranges, in order, not overlapping.
    pub ranges: Vec<BmapRange>,
}

impl BmapRange {
    /// The byte offsets `start..end` of this range in an image of
    /// `image_size` bytes with blocks of `block_size`.
    pub fn byte_span(&self, block_size: u64, image_size: u64) -> (u64, u64) {
        let start = self.first_block * block_size;
        let end = ((self.last_block + 1) * block_size).min(image_size);
        (start, end)
    }
}

/// Maps the data of `image`: the extents `lseek(SEEK_DATA/SEEK_HOLE)`
/// reports, widened to whole [`BMAP_BLOCK_SIZE`] blocks and merged, each
/// with its SHA-256. A file system without hole reporting maps the whole file.
pub fn create_bmap(image: &Path) -> Result<Bmap, BmapError> {
    let read_error = |source| BmapError::Read {
        path: image.to_path_buf(),
        source,
    };
    let file = File::open(image).map_err(read_error)?;
    let image_size = file.metadata().map_err(read_error)?.len();
    if image_size == 0 {
        return Err(BmapError::EmptyImage(image.to_path_buf()));
    }
    let block_size = BMAP_BLOCK_SIZE;
    let mut ranges: Vec<BmapRange> = Vec::new();
    for (start, end) in data_extents(&file, image_size).map_err(read_error)? {
        let first_block = start / block_size;
        let last_block = (end - 1) / block_size;
        match ranges.last_mut() {
            Some(last) if first_block <= last.last_block + 1 => {
                last.last_block = last.last_block.max(last_block);
            }
            _ => ranges.push(BmapRange {
                first_block,
                last_block,
                sha256: String::new(),
            }),
        }
    }
    for range in &mut ranges {
        let (start, end) = range.byte_span(block_size, image_size);
        range.sha256 = sha256_of(&file, start, end).map_err(read_error)?;
    }
    Ok(Bmap {
        image_size,
        block_size,
        blocks_count: image_size.div_ceil(block_size),
        mapped_blocks_count: ranges
            .iter()
            .map(|r| r.last_block - r.first_block + 1)
            .sum(),
        ranges,
    })
}

/// Byte extents `start..end` of `file` that hold data, in order.
fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let start = match lseek(file, to_off(offset)?, Whence::SeekData) {
            Ok(start) => start as u64,
            Err(Errno::ENXIO) => break,
            Err(errno) => return Err(errno.into()),
        };
        let end = match lseek(file, to_off(start)?, Whence::SeekHole) {
            Ok(end) => (end as u64).min(size),
            Err(Errno::ENXIO) => size,
            Err(errno) => return Err(errno.into()),
        };
        if end > start {
            extents.push((start, end));
        }
        offset = end.max(start + 1);
    }
    Ok(extents)
}

fn to_off(offset: u64) -> io::Result<i64> {
    i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// SHA-256 in hex of `file`'s bytes `start..end`.
pub fn sha256_of(file: &File, start: u64, end: u64) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = start;
    while offset < end {
        let want = usize::try_from((end - offset).min(buffer.len() as u64)).expect("<= 1 MiB");
        file.read_exact_at(&mut buffer[..want], offset)?;
        hasher.update(&buffer[..want]);
        offset += want as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

impl Bmap {
    /// The bmap as bmaptool's format 2.0, its `BmapFileChecksum` filled in.
    pub fn to_xml(&self) -> String {
        let mut xml = format!(
            "<?xml version=\"1.0\" ?>\n\
             <!-- Block map of a sparse image (bmaptool format {VERSION}), written by applbuild.\n     \
             Only the ranges below hold data; every other block is zeros. Copy with\n     \
             `bmaptool copy IMAGE DEVICE` or `applbuild flash IMAGE DEVICE`. -->\n\
             <bmap version=\"{VERSION}\">\n    \
             <ImageSize> {} </ImageSize>\n    \
             <BlockSize> {} </BlockSize>\n    \
             <BlocksCount> {} </BlocksCount>\n    \
             <MappedBlocksCount> {} </MappedBlocksCount>\n    \
             <ChecksumType> sha256 </ChecksumType>\n    \
             <BmapFileChecksum> {ZERO_CHECKSUM} </BmapFileChecksum>\n    \
             <BlockMap>\n",
            self.image_size, self.block_size, self.blocks_count, self.mapped_blocks_count
        );
        for range in &self.ranges {
            let blocks = if range.first_block == range.last_block {
                range.first_block.to_string()
            } else {
                format!("{}-{}", range.first_block, range.last_block)
            };
            xml.push_str(&format!(
                "        <Range chksum=\"{}\"> {blocks} </Range>\n",
                range.sha256
            ));
        }
        xml.push_str("    </BlockMap>\n</bmap>\n");
        let checksum = hex::encode(Sha256::digest(xml.as_bytes()));
        xml.replacen(ZERO_CHECKSUM, &checksum, 1)
    }

    /// Reads a bmap of format 2.x with sha256 checksums, verifies its
    /// `BmapFileChecksum` and checks that sizes, counts and ranges agree.
    /// Every range must carry a checksum.
    pub fn parse(xml: &str) -> Result<Bmap, BmapError> {
        let fields = read_fields(xml)?;
        let version = fields.version.ok_or(BmapError::MissingField("bmap"))?;
        if version.split('.').next() != Some("2") {
            return Err(BmapError::UnsupportedVersion(version));
        }
        let checksum_type = required(&fields.checksum_type, "ChecksumType")?;
        if checksum_type != "sha256" {
            return Err(BmapError::UnsupportedChecksum(checksum_type.into()));
        }
        let stated = required(&fields.file_checksum, "BmapFileChecksum")?;
        verify_file_checksum(xml, stated)?;
        let number = |value: &Option<String>, field| -> Result<u64, BmapError> {
            let text = required(value, field)?;
            text.parse().map_err(|_| BmapError::BadField {
                field,
                text: text.into(),
                expected: "a whole number",
            })
        };
        let bmap = Bmap {
            image_size: number(&fields.image_size, "ImageSize")?,
            block_size: number(&fields.block_size, "BlockSize")?,
            blocks_count: number(&fields.blocks_count, "BlocksCount")?,
            mapped_blocks_count: number(&fields.mapped_blocks_count, "MappedBlocksCount")?,
            ranges: fields
                .ranges
                .iter()
                .map(|(text, sha)| parse_range(text, sha.as_deref()))
                .collect::<Result<_, _>>()?,
        };
        bmap.check_consistency()?;
        Ok(bmap)
    }

    /// Sizes, counts and ranges agree with each other.
    fn check_consistency(&self) -> Result<(), BmapError> {
        if self.block_size == 0 {
            return Err(BmapError::BadField {
                field: "BlockSize",
                text: "0".into(),
                expected: "a positive number",
            });
        }
        if self.blocks_count != self.image_size.div_ceil(self.block_size) {
            return Err(BmapError::Inconsistent(format!(
                "{} blocks of {} bytes do not make an image of {} bytes",
                self.blocks_count, self.block_size, self.image_size
            )));
        }
        let mut next_free = 0u64;
        for range in &self.ranges {
            if range.first_block < next_free {
                return Err(BmapError::Inconsistent(format!(
                    "range {}-{} overlaps or precedes the one before it",
                    range.first_block, range.last_block
                )));
            }
            if range.last_block >= self.blocks_count {
                return Err(BmapError::Inconsistent(format!(
                    "range {}-{} ends past the image's {} blocks",
                    range.first_block, range.last_block, self.blocks_count
                )));
            }
            next_free = range.last_block + 1;
        }
        let mapped: u64 = self
            .ranges
            .iter()
            .map(|r| r.last_block - r.first_block + 1)
            .sum();
        if mapped != self.mapped_blocks_count {
            return Err(BmapError::Inconsistent(format!(
                "MappedBlocksCount is {} but the ranges cover {mapped} blocks",
                self.mapped_blocks_count
            )));
        }
        Ok(())
    }
}

/// The raw texts of the elements a bmap reader needs.
#[derive(Default)]
struct Fields {
    version: Option<String>,
    image_size: Option<String>,
    block_size: Option<String>,
    blocks_count: Option<String>,
    mapped_blocks_count: Option<String>,
    checksum_type: Option<String>,
    file_checksum: Option<String>,
    /// Each `<Range>`'s text and `chksum` attribute.
    ranges: Vec<(String, Option<String>)>,
}

/// Collects the trimmed text of each known element of `xml`.
fn read_fields(xml: &str) -> Result<Fields, BmapError> {
    let mut reader = Reader::from_str(xml);
    let mut fields = Fields::default();
    let mut current: Option<Vec<u8>> = None;
    loop {
        match reader.read_event()? {
            Event::Start(start) => {
                let name = start.name().as_ref().to_vec();
                if name == b"bmap" {
                    fields.version = attribute(&start, b"version");
                } else if name == b"Range" {
                    fields
                        .ranges
                        .push((String::new(), attribute(&start, b"chksum")));
                }
                current = Some(name);
            }
            Event::Text(text) => {
                let text = String::from_utf8_lossy(&text).trim().to_string();
                let slot = match current.as_deref() {
                    Some(b"ImageSize") => &mut fields.image_size,
                    Some(b"BlockSize") => &mut fields.block_size,
                    Some(b"BlocksCount") => &mut fields.blocks_count,
                    Some(b"MappedBlocksCount") => &mut fields.mapped_blocks_count,
                    Some(b"ChecksumType") => &mut fields.checksum_type,
                    Some(b"BmapFileChecksum") => &mut fields.file_checksum,
                    Some(b"Range") => {
                        if let Some(range) = fields.ranges.last_mut() {
                            range.0.push_str(&text);
                        }
                        continue;
                    }
                    _ => continue,
                };
                slot.get_or_insert_with(String::new).push_str(&text);
            }
            Event::End(_) => current = None,
            Event::Eof => return Ok(fields),
            _ => {}
        }
    }
}

/// The raw value of attribute `name`, if present.
fn attribute(start: &quick_xml::events::BytesStart, name: &[u8]) -> Option<String> {
    start
        .try_get_attribute(name)
        .ok()
        .flatten()
        .map(|attribute| String::from_utf8_lossy(&attribute.value).into_owned())
}

fn required<'a>(value: &'a Option<String>, field: &'static str) -> Result<&'a str, BmapError> {
    value.as_deref().ok_or(BmapError::MissingField(field))
}

/// Checks `stated` the way bmaptool does: the first occurrence of the
/// value in the file replaced by zeros, the whole file hashed.
fn verify_file_checksum(xml: &str, stated: &str) -> Result<(), BmapError> {
    if stated.len() != 64 || !stated.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BmapError::BadField {
            field: "BmapFileChecksum",
            text: stated.into(),
            expected: "64 hex digits",
        });
    }
    let zeroed = xml.replacen(stated, ZERO_CHECKSUM, 1);
    let computed = hex::encode(Sha256::digest(zeroed.as_bytes()));
    if computed != stated.to_ascii_lowercase() {
        return Err(BmapError::FileChecksumMismatch {
            stated: stated.into(),
            computed,
        });
    }
    Ok(())
}

/// `A-B` or `A`, with its checksum.
fn parse_range(text: &str, sha: Option<&str>) -> Result<BmapRange, BmapError> {
    let bad = |problem| BmapError::BadRange {
        range: text.into(),
        problem,
    };
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let first_block: u64 = first
        .trim()
        .parse()
        .map_err(|_| bad("not a block number"))?;
    let last_block: u64 = last.trim().parse().map_err(|_| bad("not a block number"))?;
    if last_block < first_block {
        return Err(bad("ends before it starts"));
    }
    let sha = sha.ok_or_else(|| bad("has no chksum attribute"))?;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("chksum is not 64 hex digits"));
    }
    Ok(BmapRange {
        first_block,
        last_block,
        sha256: sha.to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// 1 MiB + 100 bytes of data, a 2 MiB hole, then 5000 bytes of data
    /// ending the file mid-block: 3 MiB + 1 MiB + 5100 bytes in all.
    fn sparse_image(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = dir.join("sparse.img");
        let first: Vec<u8> = (0..MIB + 100).map(|i| (i % 253) as u8 + 1).collect();
        let second: Vec<u8> = (0..5000u64).map(|i| (i % 7) as u8 + 1).collect();
        let file = File::create(&path).unwrap();
        let second_at = 3 * MIB + 4096;
        file.set_len(second_at + second.len() as u64).unwrap();
        file.write_all_at(&first, 0).unwrap();
        file.write_all_at(&second, second_at).unwrap();
        drop(file);
        (path.clone(), std::fs::read(&path).unwrap())
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Whether the file system here reports holes; tmpfs and ext4 do.
    fn holes_reported(path: &Path) -> bool {
        let file = File::open(path).unwrap();
        lseek(&file, 0, Whence::SeekHole).unwrap() < file.metadata().unwrap().len() as i64
    }

    /// `xml` with its `BmapFileChecksum` recomputed, as after an edit by someone who knew how.
    fn with_fresh_checksum(xml: &str) -> String {
        let start = xml.find("<BmapFileChecksum> ").unwrap() + 19;
        let stale = &xml[start..start + 64];
        let zeroed = xml.replacen(stale, ZERO_CHECKSUM, 1);
        zeroed.replacen(ZERO_CHECKSUM, &sha(zeroed.as_bytes()), 1)
    }

    /// `bmaptool` (Debian package bmap-tools). Missing: fails under
    /// CI=true, else `None` after a SKIPPED line.
    fn bmaptool() -> Option<PathBuf> {
        let found = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("bmaptool"))
            .find(|candidate| candidate.is_file());
        if found.is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "bmaptool is missing: run scripts/host-setup (Debian package bmap-tools)"
            );
            eprintln!(
                "SKIPPED: bmaptool is not installed (scripts/host-setup installs bmap-tools)"
            );
        }
        found
    }

    /// bmaptool must accept our bmap (its file checksum and every range's)
    /// and copy the image byte for byte.
    #[test]
    fn bmaptool_copies_with_our_bmap() {
        let Some(bmaptool) = bmaptool() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = sparse_image(dir.path());
        let bmap_path = dir.path().join("sparse.bmap");
        std::fs::write(&bmap_path, create_bmap(&path).unwrap().to_xml()).unwrap();
        let copy = dir.path().join("copy.img");
        let output = std::process::Command::new(&bmaptool)
            .arg("copy")
            .arg("--bmap")
            .arg(&bmap_path)
            .arg(&path)
            .arg(&copy)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(!stderr.contains("WARNING"), "{stderr}");
        assert!(std::fs::read(&copy).unwrap() == bytes, "the copy differs");

        // A damaged range is caught by bmaptool too.
        let bmap = create_bmap(&path).unwrap();
        let mut damaged = bmap.clone();
        damaged.ranges[0].sha256 = "0".repeat(64);
        std::fs::write(&bmap_path, damaged.to_xml()).unwrap();
        let status = std::process::Command::new(&bmaptool)
            .arg("copy")
            .arg("--bmap")
            .arg(&bmap_path)
            .arg(&path)
            .arg(dir.path().join("copy2.img"))
            .output()
            .unwrap()
            .status;
        assert!(
            !status.success(),
            "bmaptool accepted a wrong range checksum"
        );
    }

    #[test]
    fn data_hole_data_gives_two_ranges_with_their_sums() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = sparse_image(dir.path());
        if !holes_reported(&path) {
            eprintln!("SKIPPED: the temporary folder's file system reports no holes");
            return;
        }
        let bmap = create_bmap(&path).unwrap();
        assert_eq!(bmap.image_size, bytes.len() as u64);
        assert_eq!(bmap.block_size, 4096);
        assert_eq!(bmap.blocks_count, bytes.len().div_ceil(4096) as u64);
        // 1 MiB + 100 bytes is blocks 0..=256; the data at 3 MiB + 4 KiB is
        // block 769 and the short block 770.
        let spans: Vec<(u64, u64)> = bmap
            .ranges
            .iter()
            .map(|r| (r.first_block, r.last_block))
            .collect();
        assert_eq!(spans, [(0, 256), (769, 770)]);
        assert_eq!(bmap.mapped_blocks_count, 257 + 2);
        assert_eq!(bmap.ranges[0].sha256, sha(&bytes[..257 * 4096]));
        assert_eq!(bmap.ranges[1].sha256, sha(&bytes[769 * 4096..]));
    }

    #[test]
    fn xml_round_trips_and_has_bmaptool_fields() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sparse_image(dir.path());
        let bmap = create_bmap(&path).unwrap();
        let xml = bmap.to_xml();
        assert!(xml.contains("<bmap version=\"2.0\">"), "{xml}");
        assert!(
            xml.contains("<ChecksumType> sha256 </ChecksumType>"),
            "{xml}"
        );
        assert!(!xml.contains(ZERO_CHECKSUM), "checksum filled in: {xml}");
        assert_eq!(Bmap::parse(&xml).unwrap(), bmap);

        let single = Bmap {
            image_size: 10,
            block_size: 4096,
            blocks_count: 1,
            mapped_blocks_count: 1,
            ranges: vec![BmapRange {
                first_block: 0,
                last_block: 0,
                sha256: sha(b"0123456789"),
            }],
        };
        let xml = single.to_xml();
        assert!(
            xml.contains("> 0 </Range>"),
            "a one-block range is one number: {xml}"
        );
        assert_eq!(Bmap::parse(&xml).unwrap(), single);
    }

    #[test]
    fn tampered_files_are_refused_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = sparse_image(dir.path());
        let xml = create_bmap(&path).unwrap().to_xml();

        let first_sum = &xml[xml.find("chksum=\"").unwrap() + 8..][..64];
        let flipped = if first_sum.starts_with('0') { "1" } else { "0" };
        let edited = xml.replacen(first_sum, &format!("{flipped}{}", &first_sum[1..]), 1);
        let error = Bmap::parse(&edited).unwrap_err();
        assert!(
            matches!(error, BmapError::FileChecksumMismatch { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("checksum mismatch"), "{error}");

        let error = Bmap::parse(&xml.replace("sha256 </ChecksumType>", "sha1 </ChecksumType>"))
            .unwrap_err();
        assert!(
            matches!(error, BmapError::UnsupportedChecksum(ref kind) if kind == "sha1"),
            "{error}"
        );
        let error = Bmap::parse(&xml.replace("version=\"2.0\"", "version=\"3.0\"")).unwrap_err();
        assert!(matches!(error, BmapError::UnsupportedVersion(_)), "{error}");
        let error = Bmap::parse(&xml.replace("<ImageSize>", "<ImageSiz>")).unwrap_err();
        assert!(matches!(error, BmapError::Xml(_)), "{error}");
        let error = Bmap::parse("<bmap version=\"2.0\"></bmap>").unwrap_err();
        assert!(
            matches!(error, BmapError::MissingField("ChecksumType")),
            "{error}"
        );
    }

    #[test]
    fn inconsistent_counts_and_ranges_are_refused() {
        let good = Bmap {
            image_size: 3 * 4096,
            block_size: 4096,
            blocks_count: 3,
            mapped_blocks_count: 2,
            ranges: vec![
                BmapRange {
                    first_block: 0,
                    last_block: 0,
                    sha256: "a".repeat(64),
                },
                BmapRange {
                    first_block: 2,
                    last_block: 2,
                    sha256: "b".repeat(64),
                },
            ],
        };
        assert_eq!(Bmap::parse(&good.to_xml()).unwrap(), good);
        let mut wrong_count = good.clone();
        wrong_count.mapped_blocks_count = 3;
        let error = Bmap::parse(&wrong_count.to_xml()).unwrap_err();
        assert!(
            error.to_string().contains("MappedBlocksCount is 3"),
            "{error}"
        );
        let mut past_end = good.clone();
        past_end.ranges[1].last_block = 3;
        past_end.mapped_blocks_count = 3;
        let error = Bmap::parse(&past_end.to_xml()).unwrap_err();
        assert!(error.to_string().contains("ends past"), "{error}");
        let mut overlapping = good.clone();
        overlapping.ranges[1].first_block = 0;
        overlapping.mapped_blocks_count = 4;
        let error = Bmap::parse(&overlapping.to_xml()).unwrap_err();
        assert!(error.to_string().contains("overlaps"), "{error}");
        let mut no_sum = good
            .to_xml()
            .replacen(&format!(" chksum=\"{}\"", "a".repeat(64)), "", 1);
        no_sum = with_fresh_checksum(&no_sum);
        let error = Bmap::parse(&no_sum).unwrap_err();
        assert!(
            matches!(
                error,
                BmapError::BadRange {
                    problem: "has no chksum attribute",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn an_empty_or_missing_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.img");
        File::create(&empty).unwrap();
        assert!(matches!(create_bmap(&empty), Err(BmapError::EmptyImage(_))));
        let error = create_bmap(&dir.path().join("missing.img")).unwrap_err();
        assert!(error.to_string().contains("missing.img"), "{error}");
    }
}
