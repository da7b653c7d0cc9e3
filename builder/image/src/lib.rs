//! Files out of a root file system tree: cpio archives, the segmented zstd initramfs, GPT disk images and the manifest.

pub mod cpio;
pub mod disk_image;
pub mod initramfs;
pub mod manifest;
pub mod qcow2;
pub mod sbom;
pub mod secure_boot;
