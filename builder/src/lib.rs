//! applbuild: builds minimal appliance images from verified Debian packages
//! and proves them in QEMU. See `docs/architecture.md` for the data flow.

pub mod apt_sources;
pub mod boot;
pub mod cache;
pub mod cpio;
pub mod deb822;
pub mod deb_archive;
/// GPT disk images (`disk.img`): kernel, initramfs and data partitions.
pub mod disk_image;
pub mod initramfs;
pub mod kernel_modules;
pub mod lockfile;
pub mod manifest;
pub mod overlay;
pub mod package_index;
pub mod pipeline;
pub mod profile;
pub mod progress;
pub mod qemu;
pub mod qga;
pub mod qmp;
pub mod relation;
pub mod release;
pub mod repository;
pub mod resolver;
pub mod rootfs;
pub mod signature;
pub mod templates;
pub mod transport;
pub mod version;
