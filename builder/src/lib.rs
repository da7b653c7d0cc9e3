//! applbuild: builds minimal appliance images from verified Debian packages
//! and proves them in QEMU. See `docs/architecture.md` for the data flow.

pub mod boot;
pub mod manifest;
pub mod overlay;
pub mod profile;
pub mod qemu;
pub mod qga;
pub mod qmp;
pub mod progress;
pub mod templates;
