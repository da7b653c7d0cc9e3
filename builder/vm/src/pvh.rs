//! The kernel of a direct boot as QEMU boots it fastest: the ELF inside a
//! bzImage, entered through PVH.
//!
//! Given a bzImage (`-kernel vmlinuz`), QEMU runs SeaBIOS, the kernel's
//! real-mode setup and then its self-decompression, which under TCG takes
//! about 3 s of an 8 MB xz payload before the kernel's first line. Given
//! the uncompressed ELF with a PVH entry note, QEMU loads it at host speed
//! and jumps to the 32-bit entry point: the same kernel, booted about 3 s
//! earlier. The ELF is unpacked here, once per bzImage, into a cache
//! folder. A bzImage whose payload is neither xz nor zstd, or whose kernel
//! has no PVH entry (`CONFIG_PVH`), is booted as it is.
//!
//! The bzImage header is read by hand (a few fields of the x86 boot
//! protocol, `Documentation/arch/x86/boot.rst`): no maintained crate reads
//! it. The ELF's notes are read with `object`.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use object::Endianness;
use object::elf::FileHeader64;
use object::read::elf::{FileHeader, ProgramHeader};
use sha2::{Digest, Sha256};

/// The Xen ELF note type that holds the PVH 32-bit entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Prefix of the cached ELF files (the rest is the bzImage's hash).
const CACHE_PREFIX: &str = "vmlinux-";

/// Why a bzImage's kernel could not be unpacked for PVH.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// The bzImage cannot be read, or the ELF cannot be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The payload says it is xz or zstd but does not decompress.
    #[error("{path}: the kernel's {format} payload does not decompress: {source}")]
    Payload {
        /// The bzImage.
        path: PathBuf,
        /// `xz` or `zstd`.
        format: &'static str,
        /// The decoder's error.
        source: io::Error,
    },
}

/// The compressed kernel inside a bzImage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload<'a> {
    /// An xz stream.
    Xz(&'a [u8]),
    /// A zstd frame.
    Zstd(&'a [u8]),
}

/// The PVH-bootable ELF of `bzimage`, unpacked into `cache_dir` (or found
/// there from an earlier call); `None` when the kernel cannot boot
/// through PVH, so that the caller boots the bzImage itself.
pub fn pvh_kernel(bzimage: &Path, cache_dir: &Path) -> Result<Option<PathBuf>, PvhError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| PvhError::Io { path, source }
    };
    let image = fs::read(bzimage).map_err(io_error(bzimage))?;
    let digest = Sha256::digest(&image);
    let name: String = digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let cached = cache_dir.join(format!("{CACHE_PREFIX}{name}"));
    if cached.is_file() {
        return Ok(Some(cached));
    }
    let Some(payload) = payload(&image) else {
        return Ok(None);
    };
    let elf = decompress(payload).map_err(|(format, source)| PvhError::Payload {
        path: bzimage.to_owned(),
        format,
        source,
    })?;
    if !has_pvh_entry(&elf) {
        return Ok(None);
    }
    fs::create_dir_all(cache_dir).map_err(io_error(cache_dir))?;
    remove_stale(cache_dir);
    let partial = cache_dir.join(format!(".{CACHE_PREFIX}{name}.partial"));
    fs::write(&partial, &elf).map_err(io_error(&partial))?;
    fs::rename(&partial, &cached).map_err(io_error(&cached))?;
    Ok(Some(cached))
}

/// Removes the ELF files of earlier bzImages: a cache folder keeps one.
fn remove_stale(cache_dir: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(CACHE_PREFIX)
        {
            // A file that cannot be removed is only disk space.
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The compressed kernel of a bzImage, located by its setup header
/// (protocol 2.08 or later: `payload_offset` and `payload_length`).
fn payload(image: &[u8]) -> Option<Payload<'_>> {
    let u32_at = |offset: usize| {
        let bytes = image.get(offset..offset + 4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let version = u16::from_le_bytes(image.get(0x206..0x208)?.try_into().ok()?);
    if version < 0x0208 {
        return None;
    }
    // A setup_sects of 0 means 4 (boot protocol); the boot sector is one more.
    let setup_sectors = match *image.get(0x1f1)? {
        0 => 4,
        sectors => sectors as usize,
    };
    let start = (setup_sectors + 1) * 512 + u32_at(0x248)?;
    let data = image.get(start..start + u32_at(0x24c)?)?;
    if data.starts_with(b"\xfd7zXZ\x00") {
        Some(Payload::Xz(data))
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Payload::Zstd(data))
    } else {
        None
    }
}

/// Decompresses one stream or frame; the kernel build appends the
/// uncompressed size after it, which is not read.
fn decompress(payload: Payload<'_>) -> Result<Vec<u8>, (&'static str, io::Error)> {
    let mut elf = Vec::new();
    match payload {
        Payload::Xz(data) => liblzma::read::XzDecoder::new(data)
            .read_to_end(&mut elf)
            .map_err(|error| ("xz", error))?,
        Payload::Zstd(data) => zstd::stream::read::Decoder::new(data)
            .map_err(|error| ("zstd", error))?
            .single_frame()
            .read_to_end(&mut elf)
            .map_err(|error| ("zstd", error))?,
    };
    Ok(elf)
}

/// Whether a 64-bit ELF kernel carries the PVH entry note.
fn has_pvh_entry(elf: &[u8]) -> bool {
    let Ok(header) = FileHeader64::<Endianness>::parse(elf) else {
        return false;
    };
    let Ok(endian) = header.endian() else {
        return false;
    };
    let Ok(segments) = header.program_headers(endian, elf) else {
        return false;
    };
    segments.iter().any(|segment| {
        let Ok(Some(mut notes)) = segment.notes(endian, elf) else {
            return false;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                return true;
            }
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped file: the setup header fields `payload` reads, and
    /// `payload_bytes` where they point.
    fn bzimage(payload_bytes: &[u8]) -> Vec<u8> {
        let setup_sectors = 2usize;
        let payload_offset = 0x100usize;
        let mut image = vec![0u8; (setup_sectors + 1) * 512 + payload_offset];
        image[0x1f1] = setup_sectors as u8;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&(payload_offset as u32).to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload_bytes.len() as u32).to_le_bytes());
        image.extend_from_slice(payload_bytes);
        // The kernel build's trailing size field.
        image.extend_from_slice(&[1, 2, 3, 4]);
        image
    }

    #[test]
    fn finds_xz_and_zstd_payloads_by_the_setup_header() {
        let xz = bzimage(b"\xfd7zXZ\x00rest");
        assert!(matches!(payload(&xz), Some(Payload::Xz(data)) if data.ends_with(b"rest")));
        let zstd = bzimage(&[0x28, 0xb5, 0x2f, 0xfd, 9]);
        assert!(matches!(payload(&zstd), Some(Payload::Zstd(data)) if data.len() == 5));
        assert_eq!(payload(&bzimage(b"\x1f\x8b\x08gzip")), None);
        let mut old = bzimage(b"\xfd7zXZ\x00");
        old[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
        assert_eq!(
            payload(&old),
            None,
            "protocol before 2.08 has no payload fields"
        );
        assert_eq!(payload(b"not a kernel"), None);
    }

    #[test]
    fn decompresses_past_the_trailing_size_field() {
        let elf = b"\x7fELF and the rest of a kernel".repeat(100);
        let mut xz = Vec::new();
        liblzma::read::XzEncoder::new(&elf[..], 6)
            .read_to_end(&mut xz)
            .unwrap();
        let image = bzimage(&xz);
        assert_eq!(decompress(payload(&image).unwrap()).unwrap(), elf);
        let zstd = zstd::encode_all(&elf[..], 3).unwrap();
        let image = bzimage(&zstd);
        assert_eq!(decompress(payload(&image).unwrap()).unwrap(), elf);
        let broken = bzimage(b"\xfd7zXZ\x00garbage");
        assert_eq!(decompress(payload(&broken).unwrap()).unwrap_err().0, "xz");
    }

    #[test]
    fn a_kernel_without_the_pvh_note_is_booted_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut xz = Vec::new();
        liblzma::read::XzEncoder::new(&b"\x7fELF but no notes"[..], 6)
            .read_to_end(&mut xz)
            .unwrap();
        let path = dir.path().join("vmlinuz");
        fs::write(&path, bzimage(&xz)).unwrap();
        assert_eq!(pvh_kernel(&path, &dir.path().join("cache")).unwrap(), None);
        assert!(!has_pvh_entry(b"\x7fELF"));
    }
}
