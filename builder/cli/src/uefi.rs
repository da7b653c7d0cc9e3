//! Stage 4, for profiles with `[image.uefi]`: the disk that gets flashed
//! onto a server, `<profile>.img`, with its `<profile>.bmap` and
//! `<profile>.qcow2` (docs/image.md).
//!
//! The EFI system partition holds systemd-boot (also as the removable-media
//! boot path `EFI/BOOT/BOOTX64.EFI`, so a server boots the disk with no boot
//! entry in its NVRAM) and one unified kernel image under `EFI/Linux/`,
//! named by kernel release and content digest so that an update can put a
//! second one beside it. Both binaries come out of Debian's
//! `systemd-boot-efi`, which the build adds to the package set and then
//! takes out of the root file system: the running system never reads them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::pipeline::{BuildError, output_error};
use crate::profile::{LoadedProfile, MIN_ESP_MIB, UefiImage};
use applbuild_image::bmap;
use applbuild_image::disk_image::{self, PartitionContent, PartitionKind, PartitionSource};
use applbuild_image::esp::{self, EspFile};
use applbuild_image::manifest::{Artifact, sha256_file};
use applbuild_image::qcow2;
use applbuild_image::secure_boot::{self, SigningKey};
use applbuild_image::uki::{self, UkiSections};
use applbuild_rootfs::deb_archive::EntryKind;
use applbuild_rootfs::rootfs::RootfsTree;

/// The Debian package that carries systemd-boot and the UKI stub.
pub const SYSTEMD_BOOT_PACKAGE: &str = "systemd-boot-efi";

/// Where that package puts its EFI binaries.
const EFI_DIR: &str = "usr/lib/systemd/boot/efi";
const SYSTEMD_BOOT: &str = "systemd-bootx64.efi";
const STUB: &str = "linuxx64.efi.stub";

/// The ESP's FAT volume label.
const ESP_LABEL: &str = "ESP";

/// systemd-boot's settings: no menu unless a key is held, the newest UKI
/// by version first, no editing of the command line at the boot menu.
const LOADER_CONF: &str = "timeout 0\neditor no\n";

const MIB: u64 = 1 << 20;

/// Room left in a default-sized ESP beyond two UKIs and systemd-boot.
const ESP_SLACK_BYTES: u64 = 8 * MIB;

/// systemd-boot and the UKI stub, taken out of the root file system.
pub struct EfiBinaries {
    systemd_boot: Arc<[u8]>,
    stub: Arc<[u8]>,
}

/// The kernel, its release and the profile: what the UKI is made of
/// besides the initramfs.
pub struct UkiInputs<'a> {
    /// The profile being built.
    pub loaded: &'a LoadedProfile,
    /// The kernel image.
    pub kernel: &'a [u8],
    /// Its release (`uname -r`).
    pub kernel_release: &'a str,
}

/// Takes systemd-boot and the stub out of `tree`, with the folder that held
/// them.
pub fn take_efi_binaries(tree: &mut RootfsTree) -> Result<EfiBinaries, BuildError> {
    let read = |name: &str| {
        let path = format!("{EFI_DIR}/{name}");
        match tree.get(&path).map(|node| &node.kind) {
            Some(EntryKind::File(contents)) => Ok(Arc::clone(contents)),
            _ => Err(BuildError::MissingEfiBinary {
                path,
                package: SYSTEMD_BOOT_PACKAGE,
            }),
        }
    };
    let binaries = EfiBinaries {
        systemd_boot: read(SYSTEMD_BOOT)?,
        stub: read(STUB)?,
    };
    tree.remove(EFI_DIR)?;
    Ok(binaries)
}

/// Writes `<profile>.img`, `.bmap` and `.qcow2` into `dir`, which already
/// holds `initrd.img`, and returns them as artifacts.
pub fn write_uefi_image(
    dir: &Path,
    uefi: &UefiImage,
    efi: &EfiBinaries,
    inputs: &UkiInputs,
    signing: Option<SigningKey>,
) -> Result<Vec<Artifact>, BuildError> {
    let name = &inputs.loaded.name;
    let initrd_path = dir.join("initrd.img");
    let initrd = std::fs::read(&initrd_path).map_err(output_error(&initrd_path))?;
    let version = content_version(inputs.kernel, &initrd);
    let uki = build_uki(efi, inputs, &initrd, &version)?;
    let (uki, systemd_boot) = match signing {
        Some(key) => (
            secure_boot::sign_pe(&uki, "uki.efi", key, dir)?,
            secure_boot::sign_pe(&efi.systemd_boot, SYSTEMD_BOOT, key, dir)?,
        ),
        None => (uki, efi.systemd_boot.to_vec()),
    };
    let uki_path = format!("EFI/Linux/{name}-{}-{version}.efi", inputs.kernel_release);
    let files = [
        EspFile {
            path: "EFI/BOOT/BOOTX64.EFI",
            contents: &systemd_boot,
        },
        EspFile {
            path: "EFI/systemd/systemd-bootx64.efi",
            contents: &systemd_boot,
        },
        EspFile {
            path: &uki_path,
            contents: &uki,
        },
        EspFile {
            path: "loader/loader.conf",
            contents: LOADER_CONF.as_bytes(),
        },
    ];
    let esp_part = dir.join("esp.part");
    let esp_bytes = esp_size(uefi, uki.len() as u64, systemd_boot.len() as u64);
    esp::write_esp(&esp_part, esp_bytes, ESP_LABEL, volume_id(&uki), &files)?;
    let image = dir.join(format!("{name}.img"));
    write_disk(&image, &esp_part, uefi.data_mib)?;
    std::fs::remove_file(&esp_part).map_err(output_error(&esp_part))?;
    let bmap_path = dir.join(format!("{name}.bmap"));
    let bmap = bmap::create_bmap(&image)?;
    std::fs::write(&bmap_path, bmap.to_xml()).map_err(output_error(&bmap_path))?;
    let qcow2_path = dir.join(format!("{name}.qcow2"));
    qcow2::write_qcow2(&image, &qcow2_path)?;
    [image, bmap_path, qcow2_path]
        .iter()
        .map(artifact)
        .collect()
}

/// The UKI: the stub with the profile's os-release, kernel release,
/// command line, the initramfs and the kernel.
fn build_uki(
    efi: &EfiBinaries,
    inputs: &UkiInputs,
    initrd: &[u8],
    version: &str,
) -> Result<Vec<u8>, BuildError> {
    let osrel = os_release(inputs.loaded, version);
    let cmdline = uki_cmdline(&inputs.loaded.profile.kernel.cmdline);
    let sections = UkiSections {
        osrel: osrel.as_bytes(),
        uname: inputs.kernel_release.as_bytes(),
        cmdline: cmdline.as_bytes(),
        initrd,
        linux: inputs.kernel,
    };
    Ok(uki::build_uki(&efi.stub, &sections)?)
}

/// The first 12 hex digits of SHA256(kernel ‖ initramfs): the UKI's
/// `IMAGE_VERSION` and part of its file name.
fn content_version(kernel: &[u8], initrd: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kernel);
    hasher.update(initrd);
    hex::encode(hasher.finalize())[..12].to_owned()
}

/// The UKI's `.osrel`: what systemd-boot shows in its menu and sorts by.
fn os_release(loaded: &LoadedProfile, version: &str) -> String {
    let suite = &loaded.profile.distribution.suite;
    format!(
        "NAME=\"applbuild\"\nID=applbuild\nID_LIKE=debian\n\
         PRETTY_NAME=\"applbuild {name} ({suite})\"\n\
         IMAGE_ID={name}\nIMAGE_VERSION={version}\n",
        name = loaded.name
    )
}

/// The profile's kernel command line with `console=tty0` before the first
/// `console=`, so a server's screen shows the boot too; the serial console
/// stays last, and so stays `/dev/console`.
pub fn uki_cmdline(cmdline: &[String]) -> String {
    let mut words: Vec<&str> = cmdline.iter().map(String::as_str).collect();
    if !words.contains(&"console=tty0") {
        let first_console = words
            .iter()
            .position(|word| word.starts_with("console="))
            .unwrap_or(0);
        words.insert(first_console, "console=tty0");
    }
    words.join(" ")
}

/// The profile's ESP size, or room for two UKIs and systemd-boot plus
/// some slack, in whole MiB, at least [`MIN_ESP_MIB`].
fn esp_size(uefi: &UefiImage, uki_bytes: u64, systemd_boot_bytes: u64) -> u64 {
    if let Some(mib) = uefi.esp_mib {
        return u64::from(mib) * MIB;
    }
    let needed = 2 * uki_bytes + systemd_boot_bytes + ESP_SLACK_BYTES;
    needed.div_ceil(MIB).max(u64::from(MIN_ESP_MIB)) * MIB
}

/// The FAT serial, derived from the UKI so the same inputs give the same one.
fn volume_id(uki: &[u8]) -> u32 {
    let digest = Sha256::digest(uki);
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The GPT disk: `esp`, then `data` when the profile asks for one.
fn write_disk(image: &Path, esp_part: &Path, data_mib: u32) -> Result<(), BuildError> {
    let mut partitions = vec![PartitionContent {
        name: "esp",
        source: PartitionSource::File(esp_part),
        kind: PartitionKind::EfiSystem,
    }];
    if data_mib > 0 {
        partitions.push(PartitionContent {
            name: "data",
            source: PartitionSource::Zeros {
                bytes: u64::from(data_mib) * MIB,
            },
            kind: PartitionKind::LinuxData,
        });
    }
    disk_image::write_gpt_image(image, &partitions)?;
    Ok(())
}

fn artifact(path: &PathBuf) -> Result<Artifact, BuildError> {
    Ok(Artifact {
        file: path
            .file_name()
            .expect("artifact paths end in a file name")
            .to_string_lossy()
            .into_owned(),
        size: std::fs::metadata(path).map_err(output_error(path))?.len(),
        sha256: sha256_file(path).map_err(output_error(path))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    /// The screen gets the boot messages too, the serial console stays last.
    #[test]
    fn the_cmdline_adds_the_screen_before_the_serial_console() {
        assert_eq!(
            uki_cmdline(&words("console=ttyS0,115200 net.ifnames=0 quiet")),
            "console=tty0 console=ttyS0,115200 net.ifnames=0 quiet"
        );
        assert_eq!(
            uki_cmdline(&words("quiet console=tty0 console=ttyS0")),
            "quiet console=tty0 console=ttyS0"
        );
        assert_eq!(uki_cmdline(&words("quiet")), "console=tty0 quiet");
    }

    /// Default: room for two UKIs, at least 64 MiB; the profile's size wins.
    #[test]
    fn the_esp_holds_two_ukis() {
        let default = UefiImage::default();
        assert_eq!(esp_size(&default, 10 * MIB, 100_000), 64 * MIB);
        assert_eq!(esp_size(&default, 60 * MIB, 100_000), 129 * MIB);
        let fixed = UefiImage {
            esp_mib: Some(300),
            ..UefiImage::default()
        };
        assert_eq!(esp_size(&fixed, 60 * MIB, 100_000), 300 * MIB);
    }

    /// The version changes with the initramfs and is 12 hex digits.
    #[test]
    fn the_version_follows_the_contents() {
        let first = content_version(b"kernel", b"initrd one");
        let second = content_version(b"kernel", b"initrd two");
        assert_eq!(first.len(), 12);
        assert_ne!(first, second);
        assert_eq!(first, content_version(b"kernel", b"initrd one"));
    }
}
