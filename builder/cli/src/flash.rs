//! `applbuild flash`: writes a disk image onto a whole disk (or a regular
//! file) through its bmap, as `bmaptool copy` does: only the mapped ranges
//! are written, every range is read back and checked against the bmap's
//! SHA256, then the backup GPT is moved to the end of a larger disk (after
//! the check, since the move rewrites sectors of mapped ranges) and both
//! tables are checked.
//!
//! Before anything is written the target is refused when it is in use
//! (a block device is opened with `O_EXCL`, which the kernel refuses while
//! it or one of its partitions is mounted or held), when it holds the
//! running system, when it is smaller than the image or has sectors other
//! than 512 bytes, or when it is neither a block device nor a regular file.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use applbuild_image::bmap::{Bmap, BmapError, BmapRange, sha256_of};
use applbuild_image::disk_image::{self, GptError, PartitionTable, SECTOR_SIZE};
use applbuild_progress::{Reporter, Unit};
use nix::errno::Errno;
use serde::Serialize;

/// The mount points whose disks count as the running system's.
pub const SYSTEM_MOUNT_POINTS: [&str; 4] = ["/", "/boot", "/boot/efi", "/usr"];

/// Why a flash was refused or failed; each variant names the file or device.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The image file is not there.
    #[error("no image {0}: build it first (`applbuild build PROFILE`)")]
    ImageMissing(PathBuf),
    /// The image has no bmap beside it.
    #[error(
        "no bmap {bmap} beside {image}: flash writes only the blocks a bmap maps (`applbuild build` writes one; `bmaptool create` makes one for another image)"
    )]
    BmapMissing {
        /// The image.
        image: PathBuf,
        /// Where its bmap should be.
        bmap: PathBuf,
    },
    /// The bmap cannot be used.
    #[error("bmap {path}: {source}")]
    BadBmap {
        /// The bmap file.
        path: PathBuf,
        /// Why.
        source: BmapError,
    },
    /// The bmap was made for an image of another size: it is stale.
    #[error(
        "bmap {bmap} describes an image of {bmap_bytes} bytes, but {image} has {image_bytes}: rebuild, or make the bmap again"
    )]
    BmapMismatch {
        /// The bmap file.
        bmap: PathBuf,
        /// Its `ImageSize`.
        bmap_bytes: u64,
        /// The image.
        image: PathBuf,
        /// The image's size.
        image_bytes: u64,
    },
    /// The target does not exist.
    #[error("no device {0}: name an existing disk (/dev/sdX) or regular file")]
    TargetMissing(PathBuf),
    /// The target is a directory, a character device, a socket...
    #[error("{path} is {kind}, not a block device or a regular file: refusing to write to it")]
    NotADevice {
        /// The target.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// `O_EXCL` was refused: the disk or a partition of it is mounted or held.
    #[error(
        "{0} is in use (mounted, or held by a partition, LVM, RAID or another program): refusing to write to it; unmount it first"
    )]
    InUse(PathBuf),
    /// The target is, or is on, the disk the running system uses.
    #[error(
        "{path} holds the running system ({mount_point} is mounted from it): refusing to write to it"
    )]
    SystemDisk {
        /// The target.
        path: PathBuf,
        /// The system mount point found on it.
        mount_point: String,
    },
    /// The image does not fit.
    #[error(
        "{path} has {device_bytes} bytes, smaller than the image's {image_bytes}: refusing to write to it"
    )]
    TooSmall {
        /// The target.
        path: PathBuf,
        /// Its size.
        device_bytes: u64,
        /// The image's size.
        image_bytes: u64,
    },
    /// The image's GPT is laid out in 512-byte sectors.
    #[error(
        "{path} has {sector_bytes}-byte logical sectors; the image's GPT is made for 512-byte sectors: refusing to write to it"
    )]
    SectorSize {
        /// The target.
        path: PathBuf,
        /// Its logical sector size.
        sector_bytes: u32,
    },
    /// Nobody could be asked.
    #[error(
        "standard input is not a terminal, so nobody can confirm that {0} may be overwritten: pass --yes"
    )]
    NeedsYes(PathBuf),
    /// The answer was not `yes`.
    #[error("not confirmed: nothing was written to {0}")]
    Declined(PathBuf),
    /// A range read back from the target is not what the bmap says.
    #[error(
        "verification failed: blocks {range} (bytes {start}..{end}) of {path} have SHA256 {actual}, the bmap says {expected}"
    )]
    VerifyFailed {
        /// The target.
        path: PathBuf,
        /// The range's blocks, as the bmap writes them (`A-B`).
        range: String,
        /// First byte.
        start: u64,
        /// End byte (exclusive).
        end: u64,
        /// The bmap's checksum.
        expected: String,
        /// What was read back.
        actual: String,
    },
    /// The GPT on the target could not be read, moved or checked.
    #[error("the partition table of {path}: {source}")]
    Gpt {
        /// The target (or image).
        path: PathBuf,
        /// Why.
        source: GptError,
    },
    /// Reading or writing failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or device.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Shorthand for an [`FlashError::Io`] maker.
fn io_error<'a>(action: &'static str, path: &'a Path) -> impl Fn(io::Error) -> FlashError + 'a {
    move |source| FlashError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// An image and the bmap beside it.
#[derive(Debug, Clone)]
pub struct FlashSource {
    /// The `.img` file.
    pub image: PathBuf,
    /// Its `.bmap`.
    pub bmap: PathBuf,
}

impl FlashSource {
    /// A profile's UEFI disk: `<out>/<profile>/<profile>.img` and `.bmap`.
    pub fn for_profile(out_dir: &Path, profile: &str) -> Result<Self, FlashError> {
        Self::for_image(&out_dir.join(profile).join(format!("{profile}.img")))
    }

    /// `image` and the `.bmap` of the same stem beside it; both must exist.
    pub fn for_image(image: &Path) -> Result<Self, FlashError> {
        if !image.is_file() {
            return Err(FlashError::ImageMissing(image.to_path_buf()));
        }
        let bmap = image.with_extension("bmap");
        if !bmap.is_file() {
            return Err(FlashError::BmapMissing {
                image: image.to_path_buf(),
                bmap,
            });
        }
        Ok(Self {
            image: image.to_path_buf(),
            bmap,
        })
    }

    /// Reads and checks the bmap (its own checksum, and the image's size).
    pub fn read_bmap(&self) -> Result<Bmap, FlashError> {
        let text = std::fs::read_to_string(&self.bmap).map_err(io_error("read", &self.bmap))?;
        let bmap = Bmap::parse(&text).map_err(|source| FlashError::BadBmap {
            path: self.bmap.clone(),
            source,
        })?;
        let image_bytes = std::fs::metadata(&self.image)
            .map_err(io_error("read", &self.image))?
            .len();
        if image_bytes != bmap.image_size {
            return Err(FlashError::BmapMismatch {
                bmap: self.bmap.clone(),
                bmap_bytes: bmap.image_size,
                image: self.image.clone(),
                image_bytes,
            });
        }
        Ok(bmap)
    }
}

/// What the target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A block device, opened exclusively.
    BlockDevice,
    /// A regular file (an image written as a disk would be).
    RegularFile,
}

/// A target that passed the checks that need no image, opened for writing.
#[derive(Debug)]
pub struct Target {
    /// The path it was named by.
    pub path: PathBuf,
    /// Block device or file.
    pub kind: TargetKind,
    /// Size in bytes.
    pub size: u64,
    /// Device number (major, minor) of a block device.
    pub device: Option<(u64, u64)>,
    file: File,
}

impl Target {
    /// Opens `path`: a block device exclusively (refused when in use or
    /// holding the running system, or with sectors other than 512 bytes),
    /// a regular file as it is; anything else is refused.
    pub fn open(path: &Path) -> Result<Self, FlashError> {
        let metadata = match std::fs::metadata(path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(FlashError::TargetMissing(path.to_path_buf()));
            }
            result => result.map_err(io_error("examine", path))?,
        };
        let file_type = metadata.file_type();
        if file_type.is_file() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io_error("open", path))?;
            return Ok(Self {
                path: path.to_path_buf(),
                kind: TargetKind::RegularFile,
                size: metadata.len(),
                device: None,
                file,
            });
        }
        if !file_type.is_block_device() {
            return Err(FlashError::NotADevice {
                path: path.to_path_buf(),
                kind: kind_of(&file_type),
            });
        }
        let device = split_device(metadata.rdev());
        check_not_system_disk(path, device)?;
        Self::open_block_device(path, device)
    }

    /// Opens a block device with `O_EXCL` and reads its size and sector size.
    fn open_block_device(path: &Path, device: (u64, u64)) -> Result<Self, FlashError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(path)
            .map_err(|error| match error.raw_os_error() {
                Some(code) if code == Errno::EBUSY as i32 => FlashError::InUse(path.to_path_buf()),
                _ => io_error("open", path)(error),
            })?;
        let mut size = 0u64;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
        unsafe { ioctl::blkgetsize64(file.as_raw_fd(), &mut size) }
            .map_err(|errno| io_error("get the size of", path)(errno.into()))?;
        let mut sector_bytes: nix::libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer.
        unsafe { ioctl::blksszget(file.as_raw_fd(), &mut sector_bytes) }
            .map_err(|errno| io_error("get the sector size of", path)(errno.into()))?;
        if u64::try_from(sector_bytes).ok() != Some(SECTOR_SIZE) {
            return Err(FlashError::SectorSize {
                path: path.to_path_buf(),
                sector_bytes: u32::try_from(sector_bytes).unwrap_or(0),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            kind: TargetKind::BlockDevice,
            size,
            device: Some(device),
            file,
        })
    }

    /// Refuses a target smaller than an image of `image_bytes`.
    pub fn check_fits(&self, image_bytes: u64) -> Result<(), FlashError> {
        if self.size < image_bytes {
            return Err(FlashError::TooSmall {
                path: self.path.clone(),
                device_bytes: self.size,
                image_bytes,
            });
        }
        Ok(())
    }

    /// What is on the target now, for the confirmation: model, size, GPT.
    pub fn describe(&self) -> String {
        let mut text = format!("{}: ", self.path.display());
        if let Some(model) = self
            .device
            .and_then(|device| disk_model(Path::new("/sys"), device))
        {
            text.push_str(&format!("{model}, "));
        }
        let kind = match self.kind {
            TargetKind::BlockDevice => "block device",
            TargetKind::RegularFile => "regular file",
        };
        text.push_str(&format!("{}, {kind}\n", human_size(self.size)));
        text.push_str(&describe_table(disk_image::read_partition_table(
            &self.file,
        )));
        text
    }
}

/// The partitions of a table as indented lines.
fn describe_table(table: Result<Option<PartitionTable>, GptError>) -> String {
    let table = match table {
        Ok(Some(table)) => table,
        Ok(None) => return "  no GPT partition table\n".into(),
        Err(error) => return format!("  unreadable GPT: {error}\n"),
    };
    let mut text = format!(
        "  GPT {}, {} partition(s):\n",
        table.disk_guid,
        table.partitions.len()
    );
    for partition in &table.partitions {
        text.push_str(&format!(
            "    {:>3}  {:<20} {:>10}  sectors {}-{}\n",
            partition.number,
            partition.name,
            human_size(partition.size_bytes()),
            partition.first_lba,
            partition.last_lba
        ));
    }
    text
}

/// `1.5 GiB`, `64.0 MiB`, `512 bytes`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// What a file type that is neither a block device nor a regular file is.
fn kind_of(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "an unknown kind of file"
    }
}

/// Asks on the terminal whether `target` may be overwritten; `yes` skips
/// the question. Without a terminal nobody can answer, so it is an error.
pub fn confirm(target: &Path, yes: bool) -> Result<(), FlashError> {
    if yes {
        return Ok(());
    }
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        return Err(FlashError::NeedsYes(target.to_path_buf()));
    }
    eprint!(
        "Everything on {} will be lost. Write the image? Type `yes`: ",
        target.display()
    );
    io::stderr().flush().ok();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(io_error("read the answer for", target))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(FlashError::Declined(target.to_path_buf()))
    }
}

/// What a flash did, for the text and `--json` summaries.
#[derive(Debug, Clone, Serialize)]
pub struct FlashReport {
    /// The image written.
    pub image: PathBuf,
    /// Its bmap.
    pub bmap: PathBuf,
    /// The target.
    pub device: PathBuf,
    /// Block device or file.
    pub device_kind: TargetKind,
    /// The target's size.
    pub device_bytes: u64,
    /// The image's size.
    pub image_bytes: u64,
    /// Bytes written: the mapped ranges.
    pub bytes_written: u64,
    /// Ranges read back and found equal to the bmap's checksums (all of them).
    pub ranges_verified: usize,
    /// Whether the backup GPT was moved to the end of a larger target.
    pub backup_gpt_moved: bool,
    /// Whether the kernel re-read the partition table (`None` for a file).
    pub partition_table_reread: Option<bool>,
    /// Things that went wrong without making the flash fail.
    pub warnings: Vec<String>,
}

/// Writes the mapped ranges of `source` onto `target`, syncs, reads every
/// range back against the bmap, moves the backup GPT to the end of a larger
/// target (and checks both tables), syncs again and has the kernel re-read
/// a block device's partition table.
pub fn flash(
    source: &FlashSource,
    bmap: &Bmap,
    target: &Target,
    reporter: &Reporter,
) -> Result<FlashReport, FlashError> {
    target.check_fits(bmap.image_size)?;
    let image = File::open(&source.image).map_err(io_error("open", &source.image))?;
    let bytes_written = write_ranges(&image, &source.image, bmap, target, reporter)?;
    sync_and_drop_cache(target)?;
    let ranges_verified = verify_ranges(bmap, target, reporter)?;
    // Moved after the check: it rewrites sectors 0 and 1 and the image's
    // old backup sector, which lie in mapped ranges.
    let backup_gpt_moved = move_backup_gpt(target, bmap.image_size)?;
    let mut warnings = Vec::new();
    let partition_table_reread = (target.kind == TargetKind::BlockDevice).then(|| {
        // SAFETY: BLKRRPART takes no argument.
        let result = unsafe { ioctl::blkrrpart(target.file.as_raw_fd()) };
        if let Err(errno) = result {
            warnings.push(format!(
                "the kernel did not re-read the partition table of {} ({errno}); unplug the disk or run `partprobe {}` before using its partitions",
                target.path.display(),
                target.path.display()
            ));
        }
        result.is_ok()
    });
    Ok(FlashReport {
        image: source.image.clone(),
        bmap: source.bmap.clone(),
        device: target.path.clone(),
        device_kind: target.kind,
        device_bytes: target.size,
        image_bytes: bmap.image_size,
        bytes_written,
        ranges_verified,
        backup_gpt_moved,
        partition_table_reread,
        warnings,
    })
}

/// Bytes in the mapped ranges.
pub fn mapped_bytes(bmap: &Bmap) -> u64 {
    bmap.ranges
        .iter()
        .map(|range| span(bmap, range))
        .map(|(start, end)| end - start)
        .sum()
}

fn span(bmap: &Bmap, range: &BmapRange) -> (u64, u64) {
    range.byte_span(bmap.block_size, bmap.image_size)
}

/// Copies each mapped range of `image` to the same offset of `target`.
fn write_ranges(
    image: &File,
    image_path: &Path,
    bmap: &Bmap,
    target: &Target,
    reporter: &Reporter,
) -> Result<u64, FlashError> {
    let task = reporter.bar("flashing", mapped_bytes(bmap), Unit::Bytes);
    let mut buffer = vec![0u8; 4 << 20];
    let mut written = 0u64;
    for range in &bmap.ranges {
        let (start, end) = span(bmap, range);
        let mut offset = start;
        while offset < end {
            let chunk = &mut buffer[..usize::try_from((end - offset).min(4 << 20)).expect("4 MiB")];
            image
                .read_exact_at(chunk, offset)
                .map_err(io_error("read", image_path))?;
            target
                .file
                .write_all_at(chunk, offset)
                .map_err(io_error("write to", &target.path))?;
            offset += chunk.len() as u64;
            task.inc(chunk.len() as u64);
        }
        written += end - start;
    }
    task.finish();
    Ok(written)
}

/// Flushes the target to the disk, then drops its cached pages so that the
/// check reads what the disk holds (best effort: not every file supports it).
fn sync_and_drop_cache(target: &Target) -> Result<(), FlashError> {
    target
        .file
        .sync_all()
        .map_err(io_error("sync", &target.path))?;
    let _ = nix::fcntl::posix_fadvise(
        &target.file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    Ok(())
}

/// Reads each mapped range back from the target and compares its SHA256
/// with the bmap's; returns how many matched (all, or an error).
fn verify_ranges(bmap: &Bmap, target: &Target, reporter: &Reporter) -> Result<usize, FlashError> {
    let task = reporter.bar("verifying", mapped_bytes(bmap), Unit::Bytes);
    for range in &bmap.ranges {
        let (start, end) = span(bmap, range);
        let actual =
            sha256_of(&target.file, start, end).map_err(io_error("read back", &target.path))?;
        if actual != range.sha256 {
            return Err(FlashError::VerifyFailed {
                path: target.path.clone(),
                range: format!("{}-{}", range.first_block, range.last_block),
                start,
                end,
                expected: range.sha256.clone(),
                actual,
            });
        }
        task.inc(end - start);
    }
    task.finish();
    Ok(bmap.ranges.len())
}

/// On a target larger than the image, moves the backup GPT to its end,
/// syncs and checks both tables. An image without a GPT is left as it is.
fn move_backup_gpt(target: &Target, image_bytes: u64) -> Result<bool, FlashError> {
    if target.size == image_bytes {
        return Ok(false);
    }
    let gpt_error = |source| FlashError::Gpt {
        path: target.path.clone(),
        source,
    };
    let moved = match disk_image::relocate_backup_gpt(&target.file, target.size) {
        Err(GptError::NoGpt) => return Ok(false),
        result => result.map_err(gpt_error)?,
    };
    target
        .file
        .sync_all()
        .map_err(io_error("sync", &target.path))?;
    disk_image::check_gpt(&target.file, target.size).map_err(gpt_error)?;
    Ok(moved)
}

/// A mount of a system mount point and the device it says it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemMount {
    /// `/`, `/boot`, `/boot/efi` or `/usr`.
    pub mount_point: String,
    /// The mount's device number (major, minor); 0:N for btrfs and other
    /// file systems with anonymous devices.
    pub device: (u64, u64),
    /// The mount source (`/dev/sda2`, `rootfs`...).
    pub source: String,
}

/// The mounts of [`SYSTEM_MOUNT_POINTS`] in a `/proc/self/mountinfo` text.
pub fn system_mounts(mountinfo: &str) -> Vec<SystemMount> {
    mountinfo
        .lines()
        .filter_map(parse_mountinfo_line)
        .filter(|mount| SYSTEM_MOUNT_POINTS.contains(&mount.mount_point.as_str()))
        .collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`: the
/// device is field 3, the mount point field 5, the source the second field
/// after ` - `.
fn parse_mountinfo_line(line: &str) -> Option<SystemMount> {
    let (mount, fs) = line.split_once(" - ")?;
    let fields: Vec<&str> = mount.split(' ').collect();
    let (major, minor) = fields.get(2)?.split_once(':')?;
    Some(SystemMount {
        mount_point: unescape_octal(fields.get(4)?),
        device: (major.parse().ok()?, minor.parse().ok()?),
        source: unescape_octal(fs.split(' ').nth(1).unwrap_or("")),
    })
}

/// mountinfo writes space, tab, newline and backslash as `\040` and so on.
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match octal.and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok())
        {
            Some(byte) => {
                out.push(byte);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuses a block device that is, or is on, a disk holding one of the
/// running system's mount points.
fn check_not_system_disk(path: &Path, device: (u64, u64)) -> Result<(), FlashError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_error("read", Path::new("/proc/self/mountinfo")))?;
    let mounts = system_mounts(&mountinfo);
    match system_disk_conflict(Path::new("/sys"), device, &mounts) {
        Some(mount) => Err(FlashError::SystemDisk {
            path: path.to_path_buf(),
            mount_point: mount.mount_point.clone(),
        }),
        None => Ok(()),
    }
}

/// The first of `mounts` that lies on `device` or on its whole disk,
/// following device-mapper and md members (`slaves/`) and partitions'
/// parent disks under `sys` (`/sys`).
pub fn system_disk_conflict<'a>(
    sys: &Path,
    device: (u64, u64),
    mounts: &'a [SystemMount],
) -> Option<&'a SystemMount> {
    let mut target = BTreeSet::from([device]);
    target.extend(whole_disk(sys, device));
    mounts.iter().find(|mount| {
        let mut devices = vec![mount.device];
        // btrfs and others report an anonymous device: the source names the disk.
        if mount.source.starts_with("/dev/")
            && let Ok(metadata) = std::fs::metadata(&mount.source)
            && metadata.file_type().is_block_device()
        {
            devices.push(split_device(metadata.rdev()));
        }
        devices
            .into_iter()
            .flat_map(|device| backing_devices(sys, device))
            .any(|device| target.contains(&device))
    })
}

/// `device`, the devices under it (recursively through `slaves/`), and the
/// whole disk of each of those that is a partition.
pub fn backing_devices(sys: &Path, device: (u64, u64)) -> BTreeSet<(u64, u64)> {
    let mut found = BTreeSet::new();
    let mut pending = vec![device];
    while let Some(next) = pending.pop() {
        if !found.insert(next) {
            continue;
        }
        found.extend(whole_disk(sys, next));
        let slaves = sysfs_dir(sys, next).join("slaves");
        for entry in std::fs::read_dir(slaves).into_iter().flatten().flatten() {
            pending.extend(read_device_number(&entry.path().join("dev")));
        }
    }
    found
}

/// `/sys/dev/block/MAJ:MIN`.
fn sysfs_dir(sys: &Path, (major, minor): (u64, u64)) -> PathBuf {
    sys.join("dev/block").join(format!("{major}:{minor}"))
}

/// The disk a partition is on: the folder above the partition's in sysfs.
fn whole_disk(sys: &Path, device: (u64, u64)) -> Option<(u64, u64)> {
    let dir = std::fs::canonicalize(sysfs_dir(sys, device)).ok()?;
    if !dir.join("partition").exists() {
        return None;
    }
    read_device_number(&dir.parent()?.join("dev"))
}

/// A sysfs `dev` file: `8:0`.
fn read_device_number(path: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `vendor model` of a disk (or of a partition's disk) from sysfs.
fn disk_model(sys: &Path, device: (u64, u64)) -> Option<String> {
    let disk = whole_disk(sys, device).unwrap_or(device);
    let dir = sysfs_dir(sys, disk).join("device");
    let read = |name| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .map(|text| text.trim().to_string())
            .filter(|text| !text.is_empty())
    };
    let words: Vec<String> = [read("vendor"), read("model")]
        .into_iter()
        .flatten()
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

fn split_device(rdev: u64) -> (u64, u64) {
    (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
}

/// The block-device ioctls of `<linux/fs.h>`.
mod ioctl {
    nix::ioctl_read!(
        /// BLKGETSIZE64: the device's size in bytes.
        blkgetsize64,
        0x12,
        114,
        u64
    );
    nix::ioctl_none!(
        /// BLKRRPART: re-read the partition table.
        blkrrpart,
        0x12,
        95
    );
    nix::ioctl_read_bad!(
        /// BLKSSZGET: the logical sector size.
        blksszget,
        nix::request_code_none!(0x12, 104),
        nix::libc::c_int
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
24 22 8:1 / /boot/efi rw,relatime shared:2 - vfat /dev/sda1 rw,fmask=0022
25 22 253:0 / /usr rw,relatime shared:3 - xfs /dev/mapper/vg-usr rw
26 22 0:45 /@home /home rw,relatime shared:4 - btrfs /dev/sdc1 rw
27 22 8:17 / /mnt/with\\040space rw shared:5 - ext4 /dev/sdb1 rw
28 22 0:46 /@boot /boot rw,relatime shared:6 - btrfs none rw
";

    #[test]
    fn mountinfo_gives_the_system_mount_points_and_their_devices() {
        let mounts = system_mounts(MOUNTINFO);
        let found: Vec<(&str, (u64, u64), &str)> = mounts
            .iter()
            .map(|m| (m.mount_point.as_str(), m.device, m.source.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("/", (8, 2), "/dev/sda2"),
                ("/boot/efi", (8, 1), "/dev/sda1"),
                ("/usr", (253, 0), "/dev/mapper/vg-usr"),
                ("/boot", (0, 46), "none"),
            ]
        );
        let other = parse_mountinfo_line(MOUNTINFO.lines().nth(5).unwrap()).unwrap();
        assert_eq!(other.mount_point, "/mnt/with space");
        assert_eq!(parse_mountinfo_line("garbage"), None);
        assert_eq!(unescape_octal(r"a\134b\011c\9"), "a\\b\tc\\9");
    }

    /// A sysfs with sda (partitions sda1, sda2), sdb (partition sdb1) and
    /// dm-0 on sdb1.
    fn fake_sys() -> tempfile::TempDir {
        let sys = tempfile::tempdir().unwrap();
        let root = sys.path();
        let put = |dir: &str, dev: &str, partition: bool| {
            let path = root.join("devices").join(dir);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("dev"), format!("{dev}\n")).unwrap();
            if partition {
                std::fs::write(path.join("partition"), "1\n").unwrap();
            }
            std::fs::create_dir_all(root.join("dev/block")).unwrap();
            std::os::unix::fs::symlink(&path, root.join("dev/block").join(dev)).unwrap();
        };
        put("sda", "8:0", false);
        put("sda/sda1", "8:1", true);
        put("sda/sda2", "8:2", true);
        put("sdb", "8:16", false);
        put("sdb/sdb1", "8:17", true);
        put("dm-0", "253:0", false);
        let slaves = root.join("devices/dm-0/slaves");
        std::fs::create_dir_all(&slaves).unwrap();
        std::os::unix::fs::symlink(root.join("devices/sdb/sdb1"), slaves.join("sdb1")).unwrap();
        std::fs::create_dir_all(root.join("devices/sda/device")).unwrap();
        std::fs::write(root.join("devices/sda/device/vendor"), "ATA     \n").unwrap();
        std::fs::write(root.join("devices/sda/device/model"), "Samsung SSD 870\n").unwrap();
        sys
    }

    fn mount(point: &str, device: (u64, u64)) -> SystemMount {
        SystemMount {
            mount_point: point.into(),
            device,
            source: "none".into(),
        }
    }

    #[test]
    fn the_disk_of_a_system_partition_is_found_through_sysfs() {
        let sys = fake_sys();
        let sys = sys.path();
        assert_eq!(whole_disk(sys, (8, 2)), Some((8, 0)));
        assert_eq!(whole_disk(sys, (8, 0)), None);
        assert_eq!(
            backing_devices(sys, (253, 0)),
            BTreeSet::from([(253, 0), (8, 17), (8, 16)])
        );
        let root_on_sda2 = [mount("/", (8, 2))];
        let conflict = |device| system_disk_conflict(sys, device, &root_on_sda2);
        assert_eq!(conflict((8, 0)).unwrap().mount_point, "/", "the whole disk");
        assert!(conflict((8, 2)).is_some(), "the partition itself");
        assert!(conflict((8, 1)).is_some(), "another partition of that disk");
        assert!(conflict((8, 16)).is_none(), "another disk");
        let usr_on_lvm = [mount("/", (0, 30)), mount("/usr", (253, 0))];
        let found = system_disk_conflict(sys, (8, 16), &usr_on_lvm).unwrap();
        assert_eq!(found.mount_point, "/usr", "under device-mapper");
        assert!(system_disk_conflict(sys, (8, 0), &usr_on_lvm).is_none());
        assert_eq!(
            disk_model(sys, (8, 1)).as_deref(),
            Some("ATA Samsung SSD 870")
        );
        assert_eq!(disk_model(sys, (8, 16)), None);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(64 << 20), "64.0 MiB");
        assert_eq!(human_size(30_752_636_928), "28.6 GiB");
    }
}
