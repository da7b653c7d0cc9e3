//! applbuild: the build pipeline behind the `applbuild` command. It reads a
//! profile, resolves its packages against verified mirrors
//! (`applbuild-repo`, `applbuild-deb`), assembles the root file system
//! (`applbuild-rootfs`), writes the image files (`applbuild-image`) and boots
//! them (`applbuild-vm`); `sources` fetches the image's source packages and
//! `flash` writes a disk image onto a disk; `secrets` keeps the cluster's
//! secrets store (`applbuild-secrets`) filled.
//! See `docs/architecture.md` for the data flow.

pub mod boot;
pub mod boot_phases;
pub mod console;
pub mod flash;
pub mod guest_isolation;
pub mod lockfile;
pub mod pipeline;
pub mod profile;
pub mod sbom;
pub mod secrets;
pub mod services;
pub mod sources;
pub mod ssh;
pub mod test_build;
pub mod uefi;
pub mod update;
pub mod vms;
