//! The image's root file system: unpacking .deb data, merged-/usr, kernel module selection, overlays and templates.

pub mod copyright;
pub mod deb_archive;
pub mod kernel_modules;
pub mod overlay;
pub mod rootfs;
pub mod templates;
