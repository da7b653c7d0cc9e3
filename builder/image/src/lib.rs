//! Files out of a root file system tree: cpio archives, the segmented zstd initramfs, unified kernel images, EFI system partitions, GPT disk images, their bmap and qcow2 copies, Secure Boot signatures and the manifest.

pub mod bmap;
pub mod cpio;
pub mod disk_image;
pub mod esp;
pub mod initramfs;
pub mod manifest;
pub mod qcow2;
pub mod sbom;
pub mod secure_boot;
pub mod uki;
