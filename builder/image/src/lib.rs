//! Files out of a root file system tree: cpio archives, the segmented zstd initramfs, GPT disk images, their bmaps and the manifest.

pub mod bmap;
pub mod cpio;
pub mod disk_image;
pub mod initramfs;
pub mod manifest;
pub mod sbom;
