//! Files out of a root file system tree: cpio archives, the segmented zstd initramfs, unified kernel images, EFI system partitions, GPT disk images and the manifest.

pub mod cpio;
pub mod disk_image;
pub mod esp;
pub mod initramfs;
pub mod manifest;
pub mod sbom;
pub mod uki;
