//! Profiles: TOML files in `profiles/` that describe one appliance image.
//!
//! A profile may `extends` another. Files are merged as TOML tables before
//! they are typed: the child's values replace the parent's, except the lists
//! named in [`ADDITIVE_LISTS`], which are concatenated (parent first) so that
//! a child adds packages or modules without repeating the base ones.
//! Every file is also checked against the schema, so an unknown key or a wrong
//! type is reported with the file, line and key where it was typed; required
//! keys are checked on the merged profile, so a per-machine file may set only
//! the keys that differ from its parent.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::services;

/// Dotted keys whose arrays accumulate along the `extends` chain.
pub const ADDITIVE_LISTS: &[&str] = &[
    "packages.include",
    "packages.prefer",
    "packages.exclude",
    "packages.drop_paths",
    "kernel.modules",
    "kernel.drivers",
    "kernel.cmdline",
    "checks",
    "ssh.authorized_keys",
];

/// What can go wrong while loading a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The profile's file does not exist.
    #[error("profile `{name}` not found: no file {path} (see `applbuild list`)")]
    NotFound {
        /// Profile name as asked for.
        name: String,
        /// The file that was looked for.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("{path}:{line}:{column}: {key_note}{message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column of the offending text.
        column: usize,
        /// `key `x`: ` when the key could be read off the line, else empty.
        key_note: String,
        /// What the parser said.
        message: String,
    },
    /// `extends` goes round in a circle.
    #[error("profile `{0}` extends itself through {1}")]
    ExtendsCycle(String, String),
    /// A required key is set by no file of the `extends` chain.
    #[error("{chain}: missing key {key}")]
    MissingKey {
        /// The profile and its ancestors: `rack7-hv (extends hypervisor, base)`.
        chain: String,
        /// Dotted key, e.g. `initiator.target`.
        key: String,
    },
    /// The merged profile is typed correctly but its values do not fit together.
    #[error("profile `{profile}`: {key}: {message}")]
    Value {
        /// Profile name.
        profile: String,
        /// Dotted key that is wrong.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// One appliance image's description, after `extends` has been applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Name of the profile this one builds on (file `profiles/<name>.toml`).
    pub extends: Option<String>,
    /// One line saying what the image is for.
    pub description: Option<String>,
    /// Host name set at boot.
    pub hostname: Option<String>,
    /// The cluster the image belongs to: names the secrets store
    /// (`<config>/applbuild/secrets/<cluster>.toml`); unset: [`DEFAULT_CLUSTER`].
    pub cluster: Option<String>,
    /// Where packages come from.
    #[serde(default)]
    pub distribution: Distribution,
    /// Which packages go into the image.
    #[serde(default)]
    pub packages: Packages,
    /// Kernel modules and command line.
    #[serde(default)]
    pub kernel: Kernel,
    /// Image encoding.
    #[serde(default)]
    pub image: Image,
    /// NICs, bridges and addresses.
    #[serde(default)]
    pub network: Network,
    /// Loaded for a test build, which adds the test channel (the QEMU
    /// guest agent, a root shell on the console) on top of the image. Never
    /// read from a profile file: a profile describes production.
    #[serde(skip)]
    pub test_build: bool,
    /// Operator access over SSH (dropbear).
    pub ssh: Option<Ssh>,
    /// The serial console: a root login, when set.
    pub console: Option<Console>,
    /// iSCSI target served by tgtd (storage node).
    pub target: Option<Target>,
    /// iSCSI initiator (hypervisor node).
    pub initiator: Option<Initiator>,
    /// dm-multipath (hypervisor node).
    pub multipath: Option<Multipath>,
    /// Supervised daemons and boot-time jobs, by name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Health checks run by `applbuild boot --check`.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// How `applbuild boot` runs the image in QEMU.
    #[serde(default)]
    pub qemu: QemuSettings,
    /// The VMs the node runs (`[[vms]]`, docs/vms.md).
    #[serde(default)]
    pub vms: Vec<crate::vms::Vm>,
    /// What the image needs on real hardware beyond drivers.
    #[serde(default)]
    pub hardware: Hardware,
}

/// Hardware support that is not free software.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    /// Add Debian's `non-free-firmware` component and the firmware of the
    /// `bare-metal` NICs that need it ([`NON_FREE_FIRMWARE`]).
    #[serde(default)]
    pub non_free_firmware: bool,
}

/// The Debian component that holds non-free firmware.
pub const NON_FREE_FIRMWARE_COMPONENT: &str = "non-free-firmware";

/// Firmware packages `hardware.non_free_firmware` adds: Broadcom NetXtreme
/// II (bnx2, bnx2x) and the rest of the common NICs' blobs.
pub const NON_FREE_FIRMWARE: &[&str] =
    &["firmware-bnx2", "firmware-bnx2x", "firmware-misc-nonfree"];

/// The cluster of a profile that sets none.
pub const DEFAULT_CLUSTER: &str = "default";

impl Profile {
    /// Whether `packages.include` names `package` (a feature that needs a
    /// package says so when it is missing).
    pub fn includes_package(&self, package: &str) -> bool {
        self.packages.include.iter().any(|name| name == package)
    }

    /// The cluster whose secrets store the profile's secrets come from.
    pub fn cluster(&self) -> &str {
        self.cluster.as_deref().unwrap_or(DEFAULT_CLUSTER)
    }

    /// Every secret the profile refers to, with the JSON pointer of its
    /// value in the template context (`/target/chap/secret`).
    pub fn secret_refs(&self) -> Vec<(String, &SecretRef)> {
        let target = self.target.as_ref();
        let initiator = self.initiator.as_ref();
        let chaps = [
            ("target", "chap", target.and_then(|t| t.chap.as_ref())),
            (
                "target",
                "mutual_chap",
                target.and_then(|t| t.mutual_chap.as_ref()),
            ),
            ("initiator", "chap", initiator.and_then(|i| i.chap.as_ref())),
            (
                "initiator",
                "mutual_chap",
                initiator.and_then(|i| i.mutual_chap.as_ref()),
            ),
        ];
        let chap_secrets = chaps.into_iter().filter_map(|(table, field, chap)| {
            Some((format!("/{table}/{field}/secret"), &chap?.secret))
        });
        let host_key = self
            .ssh
            .as_ref()
            .map(|ssh| ("/ssh/host_key_secret".to_string(), &ssh.host_key_secret));
        let root_password = self.console.as_ref().map(|console| {
            (
                "/console/root_password_secret".to_string(),
                &console.root_password_secret,
            )
        });
        chap_secrets.chain(host_key).chain(root_password).collect()
    }

    /// The names of [`Profile::secret_refs`], sorted, each once.
    pub fn secret_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .secret_refs()
            .into_iter()
            .map(|(_, secret)| secret.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Adds the component and packages that `hardware` asks for.
    fn apply_hardware(&mut self) {
        if !self.hardware.non_free_firmware {
            return;
        }
        let components = &mut self.distribution.components;
        if !components.iter().any(|c| c == NON_FREE_FIRMWARE_COMPONENT) {
            components.push(NON_FREE_FIRMWARE_COMPONENT.into());
        }
        for package in NON_FREE_FIRMWARE {
            if !self.packages.include.iter().any(|p| p == package) {
                self.packages.include.push((*package).into());
            }
        }
    }
}

/// The Debian repository the image is made from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distribution {
    /// Mirror URL; unset means the host's apt sources (or `--mirror`).
    pub mirror: Option<String>,
    /// Suite (codename).
    #[serde(default = "default_suite")]
    pub suite: String,
    /// Archive components to read.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Debian architecture.
    #[serde(default = "default_architecture")]
    pub architecture: String,
    /// OpenPGP keyring that must have signed the repository's InRelease.
    #[serde(default = "default_keyring")]
    pub keyring: PathBuf,
    /// Suites read together (e.g. `bookworm`, `bookworm-updates`,
    /// `bookworm-security`); the highest version of a package in any of them
    /// wins, as with apt. Empty means `suite` alone.
    #[serde(default)]
    pub suites: Vec<SuiteSource>,
}

/// One suite of a distribution and where to get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteSource {
    /// Suite name, e.g. `bookworm-security`.
    pub name: String,
    /// Mirror URL of this suite; unset means the distribution's `mirror`,
    /// else the host's apt entry for this suite.
    pub mirror: Option<String>,
    /// Refuse the suite when its InRelease `Date` is older than this, as
    /// `<number>d` or `<number>h` (e.g. `"10d"`); unset accepts any age.
    pub max_index_age: Option<String>,
}

/// Reads an age written as `<number>d` (days) or `<number>h` (hours).
pub fn parse_age(text: &str) -> Option<std::time::Duration> {
    let (number, hours_per_unit) = match text.trim() {
        t if t.ends_with('d') => (&t[..t.len() - 1], 24),
        t if t.ends_with('h') => (&t[..t.len() - 1], 1),
        _ => return None,
    };
    let count: u64 = number.parse().ok()?;
    Some(std::time::Duration::from_secs(
        count * hours_per_unit * 3600,
    ))
}

impl Distribution {
    /// The suites to read, in priority order: `suites`, or `suite` alone.
    pub fn suite_sources(&self) -> Vec<SuiteSource> {
        if self.suites.is_empty() {
            vec![SuiteSource {
                name: self.suite.clone(),
                mirror: None,
                max_index_age: None,
            }]
        } else {
            self.suites.clone()
        }
    }
}

impl Default for Distribution {
    fn default() -> Self {
        Self {
            mirror: None,
            suites: Vec::new(),
            suite: default_suite(),
            components: default_components(),
            architecture: default_architecture(),
            keyring: default_keyring(),
        }
    }
}

fn default_suite() -> String {
    "bookworm".into()
}
fn default_components() -> Vec<String> {
    vec!["main".into()]
}
fn default_architecture() -> String {
    "amd64".into()
}
fn default_keyring() -> PathBuf {
    PathBuf::from(applbuild_repo::signature::DEFAULT_KEYRING)
}

/// Package selection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Packages wanted; their Depends/Pre-Depends closure is installed.
    #[serde(default)]
    pub include: Vec<String>,
    /// Names chosen first when an alternative or a virtual package offers a choice.
    #[serde(default)]
    pub prefer: Vec<String>,
    /// Names treated as present: dependencies on them are satisfied, they are not installed.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Extra glob patterns of paths left out of the image (`*` within a name, `**` across folders).
    #[serde(default)]
    pub drop_paths: Vec<String>,
}

/// Kernel settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Modules kept in the image (with their dependencies) and loaded at boot, in this order.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Drivers kept in the image (with their dependencies; names or folder
    /// patterns as in `modules`) but not loaded at boot: udev loads each one
    /// when the machine has a device its modalias matches.
    #[serde(default)]
    pub drivers: Vec<String>,
    /// Kernel command line words.
    #[serde(default)]
    pub cmdline: Vec<String>,
}

/// Image encoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// zstd level of the initramfs segments (1–22).
    #[serde(default = "default_compression_level")]
    pub compression_level: i32,
    /// Also write `disk.img`, a GPT disk image of the kernel and the initramfs.
    #[serde(default)]
    pub disk: Option<DiskImage>,
    /// Also write `<profile>.img`, a UEFI-bootable disk (and its `.bmap`
    /// and `.qcow2`): what gets flashed onto a server.
    #[serde(default)]
    pub uefi: Option<UefiImage>,
}

impl Default for Image {
    fn default() -> Self {
        Self {
            compression_level: default_compression_level(),
            disk: None,
            uefi: None,
        }
    }
}

/// The UEFI disk image: a GPT disk whose EFI system partition holds
/// systemd-boot and a unified kernel image (docs/image.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UefiImage {
    /// Size of the EFI system partition in MiB; unset: room for two UKIs
    /// (the running one and an update), at least 64.
    #[serde(default)]
    pub esp_mib: Option<u32>,
    /// Size in MiB of a zero-filled `data` partition after the ESP (a
    /// one-disk storage appliance backs its LUN with it); 0 leaves it out.
    #[serde(default)]
    pub data_mib: u32,
    /// Secure Boot: the PEM private key and certificate that sign
    /// systemd-boot and the UKI (paths relative to the project folder);
    /// `build --secure-boot-key/--secure-boot-cert` override them.
    #[serde(default)]
    pub secure_boot: Option<SecureBootKeys>,
}

/// A Secure Boot signing key and its certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecureBootKeys {
    /// PEM private key (never committed: keep it outside the repository).
    pub key: PathBuf,
    /// PEM certificate enrolled in the servers' `db`.
    pub cert: PathBuf,
}

/// The smallest ESP: FAT32 every UEFI accepts.
pub const MIN_ESP_MIB: u32 = 64;

/// The GPT disk image `disk.img` (partitions `kernel`, `initrd`, `data`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskImage {
    /// Size in MiB of the trailing zero-filled `data` partition; 0 leaves it out.
    #[serde(default)]
    pub data_mib: u32,
}

/// The largest `image.disk.data_mib` (64 GiB).
pub const MAX_DISK_DATA_MIB: u32 = 65536;

fn default_compression_level() -> i32 {
    19
}

/// Network configuration applied at boot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Physical NICs, matched by MAC address, driver or PCI path and renamed
    /// to `name`.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Linux bridges.
    #[serde(default)]
    pub bridges: Vec<Bridge>,
    /// Reverse-path filter (`net.ipv4.conf.*.rp_filter`); open-iscsi's
    /// interface binding needs 0 or 2.
    #[serde(default = "default_rp_filter")]
    pub rp_filter: u8,
    /// How the guests on the node's bridges are kept off the storage
    /// network and the node's own services; unset: not at all.
    pub guest_isolation: Option<GuestIsolation>,
}

/// `[network.guest_isolation]`: guests kept off the SAN.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestIsolation {
    /// How the guests are kept apart.
    pub mode: GuestIsolationMode,
}

/// The ways of keeping guests off the SAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestIsolationMode {
    /// An nftables `bridge` table: every bridge port but the uplinks (the
    /// interfaces with a `bridge`) is a guest port, and guest ports reach
    /// neither the initiator's portals nor the node itself.
    Filter,
    /// Guests on a bridge of their own over a NIC of their own (not
    /// implemented: refused by the validation).
    SeparateBridge,
}

impl GuestIsolationMode {
    /// The value as a profile spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::SeparateBridge => "separate-bridge",
        }
    }
}

/// The package whose `nft` loads the `filter` mode's ruleset.
pub const NFTABLES_PACKAGE: &str = "nftables";

fn default_rp_filter() -> u8 {
    2
}

/// One NIC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Name given to the NIC at boot (`eth0`).
    pub name: String,
    /// MAC address that identifies the NIC (QEMU is given the same one).
    /// Exactly one of `mac`, `driver` and `pci_path` is set.
    pub mac: Option<String>,
    /// Kernel driver of the NIC (`igb`): the first NIC bound to it that no
    /// earlier interface took.
    pub driver: Option<String>,
    /// udev's `ID_PATH` of the NIC (`pci-0000:03:00.0`): its slot.
    pub pci_path: Option<String>,
    /// Address with prefix length, unless the NIC is a bridge port.
    pub address: Option<String>,
    /// Bridge this NIC is a port of.
    pub bridge: Option<String>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Name of the virtual network QEMU attaches this NIC to (`san-a`).
    pub network: String,
}

/// One Linux bridge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    /// Bridge name (`br0`).
    pub name: String,
    /// Address with prefix length carried by the bridge.
    pub address: Option<String>,
}

/// An iSCSI target served by tgtd.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Target IQN.
    pub iqn: String,
    /// Portals (`ADDRESS:PORT`) tgtd listens on.
    pub portals: Vec<String>,
    /// Logical units.
    pub luns: Vec<Lun>,
    /// Initiator IQNs allowed to log in; empty allows any.
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// Initiator addresses (or CIDR ranges) allowed to log in; empty allows any.
    #[serde(default)]
    pub allowed_addresses: Vec<String>,
    /// CHAP credentials the initiator must present.
    pub chap: Option<Chap>,
    /// Credentials the target presents back (mutual CHAP).
    pub mutual_chap: Option<Chap>,
    /// The discovery session (SendTargets) authenticates with `chap` and
    /// `mutual_chap` too (tgt's `incomingdiscoveryuser`, `outgoingdiscoveryuser`).
    #[serde(default)]
    pub discovery_auth: bool,
    /// Serve the target with neither CHAP nor an initiator ACL; refused
    /// unless set.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

/// One logical unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lun {
    /// LUN number (tgt numbers backing stores from 1).
    pub lun: u32,
    /// Block device or file exported.
    pub backing_store: String,
    /// SCSI identifier: exactly 16 hex digits, so the WWID is known in advance.
    pub scsi_id: String,
    /// SCSI serial number.
    pub scsi_sn: String,
    /// Vendor identification (at most 8 characters).
    #[serde(default = "default_vendor_id")]
    pub vendor_id: String,
}

fn default_vendor_id() -> String {
    "APPLBILD".into()
}

impl Lun {
    /// The WWID Linux and multipath see for this LU: NAA type 6 built by tgt
    /// from `scsi_id` read as hex digits.
    pub fn wwid(&self) -> String {
        format!("36{}{}", "0".repeat(15), self.scsi_id.to_ascii_lowercase())
    }
}

/// `[ssh]`: operator access with dropbear (docs/security.md#operator-access).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// root's authorized keys: OpenSSH public key lines. Empty: nobody
    /// logs in until a profile that extends this one adds a key.
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// The secret the Ed25519 host key is derived from.
    pub host_key_secret: SecretRef,
    /// TCP port dropbear listens on.
    #[serde(default = "default_ssh_port")]
    pub port: u16,
}

/// `[console]`: a root login on the serial console
/// (docs/security.md#operator-access).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Console {
    /// The secret that is root's password; the image holds only its hash.
    pub root_password_secret: SecretRef,
}

fn default_ssh_port() -> u16 {
    22
}

/// CHAP user name and secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chap {
    /// User name.
    pub username: String,
    /// The secret, by its name in the secrets store.
    pub secret: SecretRef,
}

/// A secret named in a profile, `{ name = "iscsi-chap" }`: its value lives
/// in the cluster's secrets store, never in the profile. It serializes as
/// `<secret NAME>`, so a printed profile or a JSON report never holds a
/// value; the build puts the values into the template context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// Name in the secrets store.
    pub name: String,
}

/// What a profile says instead of a secret's value.
pub const LITERAL_SECRET: &str = "a secret is never written in a profile: refer to it by name, \
     `secret = { name = \"NAME\" }`, and keep its value in the secrets store \
     (`applbuild secrets init`; docs/security.md)";

impl Serialize for SecretRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&applbuild_secrets::redacted(&self.name))
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretRefVisitor)
    }
}

/// The table form of [`SecretRef`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedSecret {
    name: String,
}

struct SecretRefVisitor;

impl<'de> serde::de::Visitor<'de> for SecretRefVisitor {
    type Value = SecretRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret reference `{ name = \"NAME\" }`")
    }

    fn visit_str<E: serde::de::Error>(self, _value: &str) -> Result<SecretRef, E> {
        Err(E::custom(LITERAL_SECRET))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SecretRef, A::Error> {
        let named = NamedSecret::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(SecretRef { name: named.name })
    }
}

/// Whether a profile key holds a secret reference: `secret`, `*_secret`.
fn is_secret_key(key: &str) -> bool {
    key == "secret" || key.ends_with("_secret")
}

/// `merged` with every secret reference (`secret = { name = "N" }`)
/// replaced by `<secret N>`, for printing.
pub fn redacted(merged: &toml::Table) -> toml::Table {
    merged
        .iter()
        .map(|(key, value)| (key.clone(), redacted_value(key, value)))
        .collect()
}

fn redacted_value(key: &str, value: &toml::Value) -> toml::Value {
    match value {
        toml::Value::Table(table) => match table.get("name") {
            Some(toml::Value::String(name)) if is_secret_key(key) && table.len() == 1 => {
                toml::Value::String(applbuild_secrets::redacted(name))
            }
            _ => toml::Value::Table(redacted(table)),
        },
        toml::Value::Array(items) => {
            toml::Value::Array(items.iter().map(|item| redacted_value("", item)).collect())
        }
        other => other.clone(),
    }
}

/// The iSCSI initiator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initiator {
    /// Initiator IQN written to `/etc/iscsi/initiatorname.iscsi`.
    pub name: String,
    /// Target IQN to log in to.
    pub target: String,
    /// Target portals to discover through (`ADDRESS:PORT`).
    pub portals: Vec<String>,
    /// iSCSI interfaces, each bound to one NIC.
    pub ifaces: Vec<IscsiIface>,
    /// Discover and log in to every path at boot.
    #[serde(default = "default_true")]
    pub login_at_boot: bool,
    /// CHAP credentials presented to the target.
    pub chap: Option<Chap>,
    /// Credentials expected from the target (mutual CHAP).
    pub mutual_chap: Option<Chap>,
    /// Discovery (SendTargets) authenticates with `chap` and `mutual_chap`
    /// too (open-iscsi's `discovery.sendtargets.auth.*`).
    #[serde(default)]
    pub discovery_auth: bool,
    /// Session timeouts.
    #[serde(default)]
    pub timeouts: IscsiTimeouts,
}

fn default_true() -> bool {
    true
}

/// An open-iscsi interface bound to a NIC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiIface {
    /// iface name (`ibr0`).
    pub name: String,
    /// Network device it is bound to (`br0`).
    pub netdev: String,
}

/// open-iscsi timeouts in seconds (`node.session.*`, `node.conn[0].*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiTimeouts {
    /// NOP-Out ping interval.
    pub noop_out_interval: u32,
    /// How long a NOP-Out may go unanswered before the connection is failed.
    pub noop_out_timeout: u32,
    /// How long a failed session waits for a reconnect before failing I/O.
    pub replacement_timeout: u32,
    /// Login timeout.
    pub login_timeout: u32,
}

impl Default for IscsiTimeouts {
    fn default() -> Self {
        Self {
            noop_out_interval: 5,
            noop_out_timeout: 5,
            replacement_timeout: 120,
            login_timeout: 15,
        }
    }
}

/// dm-multipath settings for the one multipath LU.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Multipath {
    /// Name of the map (`/dev/mapper/<alias>`).
    pub alias: String,
    /// WWID of the LU (see [`Lun::wwid`]).
    pub wwid: String,
    /// Path checker interval in seconds.
    #[serde(default = "default_polling_interval")]
    pub polling_interval: u32,
    /// Seconds before I/O on a lost path is failed over (`fast_io_fail_tmo`).
    #[serde(default = "default_fast_io_fail_tmo")]
    pub fast_io_fail_tmo: u32,
    /// Checker intervals to queue I/O when no path is left (`queue` = forever).
    #[serde(default = "default_no_path_retry")]
    pub no_path_retry: String,
    /// When to go back to a recovered path group.
    #[serde(default = "default_failback")]
    pub failback: String,
    /// `failover`, `multibus`, …
    #[serde(default = "default_grouping")]
    pub path_grouping_policy: String,
    /// dm path selector.
    #[serde(default = "default_selector")]
    pub path_selector: String,
    /// Path checker.
    #[serde(default = "default_checker")]
    pub path_checker: String,
}

fn default_polling_interval() -> u32 {
    5
}
fn default_fast_io_fail_tmo() -> u32 {
    5
}
fn default_no_path_retry() -> String {
    "queue".into()
}
fn default_failback() -> String {
    "immediate".into()
}
fn default_grouping() -> String {
    "multibus".into()
}
fn default_selector() -> String {
    "service-time 0".into()
}
fn default_checker() -> String {
    "tur".into()
}

/// A process the image's init starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Command line (rendered as a template with the profile as context).
    pub command: String,
    /// `daemon` (supervised, restarted when it dies) or `oneshot` (run once).
    #[serde(default)]
    pub kind: ServiceKind,
    /// Command that succeeds once the service is ready (polled); one line,
    /// as it is a field of the image's service table.
    pub ready: Option<String>,
    /// Commands run after each (re)start once `ready` succeeds.
    #[serde(default)]
    pub post_start: Vec<String>,
    /// Services that must be ready before this one starts.
    #[serde(default)]
    pub after: Vec<String>,
}

/// How init treats a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// Long-running, restarted when it exits.
    #[default]
    Daemon,
    /// Runs to completion once per boot.
    Oneshot,
}

/// A health check run inside the booted image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// What the check proves.
    pub name: String,
    /// Shell command run in the guest; exit 0 passes.
    pub command: String,
    /// Each string must appear in the command's standard output.
    #[serde(default)]
    pub expect: Vec<String>,
}

/// How `applbuild boot` runs the image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuSettings {
    /// Guest memory in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Virtual CPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Raw virtual disks attached in order (virtio, serial number = name).
    #[serde(default)]
    pub disks: Vec<QemuDisk>,
    /// CPU model under TCG (`-cpu`); `EPYC,+svm` offers nested SVM.
    #[serde(default = "default_cpu_model")]
    pub tcg_cpu: String,
}

impl Default for QemuSettings {
    fn default() -> Self {
        Self {
            memory_mib: default_memory(),
            cpus: default_cpus(),
            disks: Vec::new(),
            tcg_cpu: default_cpu_model(),
        }
    }
}

fn default_memory() -> u32 {
    512
}
fn default_cpus() -> u32 {
    1
}
fn default_cpu_model() -> String {
    "max".into()
}

/// A virtual disk for `applbuild boot`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuDisk {
    /// Serial number; the guest sees `/dev/disk/by-id/virtio-<name>`.
    pub name: String,
    /// Size in MiB.
    pub size_mib: u64,
}

/// A profile with the chain of files it was made from.
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    /// Profile name (file stem).
    pub name: String,
    /// The merged, typed profile.
    pub profile: Profile,
    /// Files read, the profile's own first, then its ancestors.
    pub files: Vec<PathBuf>,
    /// The merged TOML (for `applbuild show`).
    pub merged: toml::Table,
}

impl LoadedProfile {
    /// The names of the profile and its ancestors, the profile's own first.
    pub fn chain(&self) -> Vec<String> {
        self.files.iter().map(|path| profile_name(path)).collect()
    }

    /// This profile as a test build loads it: with the test channel.
    pub fn for_test_build(&self) -> LoadedProfile {
        let mut loaded = self.clone();
        loaded.profile.test_build = true;
        loaded
    }

    /// SHA256 of the merged profile, recorded in the manifest.
    pub fn digest(&self) -> String {
        let canonical = serde_json::to_vec(&self.merged).expect("TOML tables serialize to JSON");
        hex::encode(Sha256::digest(canonical))
    }
}

/// Lists the profile names in `dir` (files `*.toml`), sorted.
pub fn list(dir: &Path) -> Result<Vec<String>, ProfileError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ProfileError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let path = entry.path();
            (path.extension()? == "toml").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Loads `dir/<name>.toml` with its `extends` chain, validated.
pub fn load(dir: &Path, name: &str) -> Result<LoadedProfile, ProfileError> {
    if let Some(message) = WordRule::Name.refusal(name) {
        return Err(ProfileError::Value {
            profile: name.into(),
            key: "(profile name)".into(),
            message,
        });
    }
    let chain = read_chain(dir, name)?;
    let mut merged = toml::Table::new();
    for (path, text, table) in chain.iter().rev() {
        merge_into(&mut merged, table, "");
        check_file(path, text, &merged)?;
    }
    merged.remove("extends");
    let names: Vec<String> = chain
        .iter()
        .map(|(path, _, _)| profile_name(path))
        .collect();
    let profile = typed(&merged).map_err(|(key, message)| {
        if let Some(field) = missing_field(&message) {
            ProfileError::MissingKey {
                chain: chain_label(&names),
                key: dotted(&key, field),
            }
        } else {
            ProfileError::Value {
                profile: name.into(),
                key: if key.is_empty() {
                    "(merged profile)".into()
                } else {
                    key
                },
                message,
            }
        }
    })?;
    let mut profile = profile;
    profile.apply_hardware();
    let files: Vec<PathBuf> = chain.into_iter().map(|(path, _, _)| path).collect();
    validate(name, &profile, &files)?;
    Ok(LoadedProfile {
        name: name.into(),
        profile,
        files,
        merged,
    })
}

/// One file of an `extends` chain: its path, text and table.
type ChainFile = (PathBuf, String, toml::Table);

/// Reads `name` and its ancestors, the profile's own file first.
fn read_chain(dir: &Path, name: &str) -> Result<Vec<ChainFile>, ProfileError> {
    let mut chain: Vec<ChainFile> = Vec::new();
    let mut next = Some(name.to_string());
    while let Some(current) = next {
        let path = dir.join(format!("{current}.toml"));
        if chain.iter().any(|(seen, _, _)| *seen == path) {
            let names: Vec<String> = chain
                .iter()
                .map(|(p, _, _)| p.display().to_string())
                .collect();
            return Err(ProfileError::ExtendsCycle(name.into(), names.join(" -> ")));
        }
        let (text, table) = read_table(&path, &current)?;
        next = table
            .get("extends")
            .and_then(|value| value.as_str())
            .map(String::from);
        if let Some(parent) = &next
            && let Some(message) = WordRule::Name.refusal(parent)
        {
            let (path, line) =
                locate_value(std::slice::from_ref(&path), "extends", parent).unwrap_or((path, 1));
            return Err(ProfileError::Invalid {
                path,
                line,
                column: 1,
                key_note: "key `extends`: ".into(),
                message,
            });
        }
        chain.push((path, text, table));
    }
    Ok(chain)
}

/// Reads one file as a TOML table (syntax errors carry its position).
fn read_table(path: &Path, name: &str) -> Result<(String, toml::Table), ProfileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProfileError::NotFound {
                name: name.into(),
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(ProfileError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let table = toml::from_str::<toml::Table>(&text).map_err(|e| invalid_at(path, &text, &e))?;
    Ok((text, table))
}

/// Checks one file against the schema, so an unknown key or a wrong type is
/// reported where it was typed; `merged` is the file merged onto its
/// parents. A required key the file leaves to its parents is no error here:
/// required keys are checked on the whole chain.
fn check_file(path: &Path, text: &str, merged: &toml::Table) -> Result<(), ProfileError> {
    let error = match toml::from_str::<Profile>(text) {
        Ok(_) => return Ok(()),
        Err(error) => error,
    };
    if missing_field(error.message()).is_none() {
        return Err(invalid_at(path, text, &error));
    }
    // serde stops at the first missing key, so the rest of the file is
    // checked on the merge, where the parents fill that key in.
    let Err((key, message)) = typed(merged) else {
        return Ok(());
    };
    if missing_field(&message).is_some() {
        return Ok(());
    }
    let leaf = leaf_key(&key, &message);
    let line = text
        .lines()
        .position(|line| {
            line.split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == leaf)
        })
        .map_or(1, |index| index + 1);
    Err(ProfileError::Invalid {
        path: path.to_path_buf(),
        line,
        column: 1,
        key_note: format!("key `{}`: ", if key.is_empty() { leaf } else { &key }),
        message,
    })
}

/// Types a merged table; on failure, the dotted path where it failed and
/// the message.
fn typed(table: &toml::Table) -> Result<Profile, (String, String)> {
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(
        |error: serde_path_to_error::Error<toml::de::Error>| {
            let key = error.path().to_string();
            let key = if key == "." { String::new() } else { key };
            (key, error.inner().message().trim().to_string())
        },
    )
}

/// The field a serde "missing field" message names.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// The key an error is about: the unknown field it names, else the last
/// part of `path`.
fn leaf_key<'a>(path: &'a str, message: &'a str) -> &'a str {
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some(field) = rest.split('`').next()
    {
        return field;
    }
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

/// `path.field`, or `field` at the top level.
fn dotted(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.into()
    } else {
        format!("{path}.{field}")
    }
}

/// A profile's name from its file.
fn profile_name(path: &Path) -> String {
    path.file_stem()
        .map_or_else(String::new, |stem| stem.to_string_lossy().into_owned())
}

/// `child (extends parent, grandparent)`, or `child` alone.
fn chain_label(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [only] => only.clone(),
        [child, parents @ ..] => format!("{child} (extends {})", parents.join(", ")),
    }
}

fn invalid_at(path: &Path, text: &str, error: &toml::de::Error) -> ProfileError {
    let offset = error.span().map_or(0, |span| span.start);
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = offset - line_start + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let key_note = line_text
        .split_once('=')
        .map(|(key, _)| key.trim())
        .filter(|key| !key.is_empty() && !key.starts_with('['))
        .map(|key| format!("key `{key}`: "))
        .unwrap_or_default();
    ProfileError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        key_note,
        message: error.message().trim().to_string(),
    }
}

fn merge_into(base: &mut toml::Table, overlay: &toml::Table, prefix: &str) {
    for (key, value) in overlay {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(child)) => {
                merge_into(existing, child, &dotted);
            }
            (Some(toml::Value::Array(existing)), toml::Value::Array(child))
                if ADDITIVE_LISTS.contains(&dotted.as_str()) =>
            {
                for item in child {
                    if !existing.contains(item) {
                        existing.push(item.clone());
                    }
                }
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Checks that the merged profile's values fit together; `files` are the
/// files it was merged from (for the position of a service error).
fn validate(name: &str, profile: &Profile, files: &[PathBuf]) -> Result<(), ProfileError> {
    let fail = |key: &str, message: String| ProfileError::Value {
        profile: name.into(),
        key: key.into(),
        message,
    };
    if profile.packages.include.is_empty() {
        return Err(fail("packages.include", "no packages listed".into()));
    }
    validate_words(name, profile, files)?;
    validate_image(&profile.image, &fail)?;
    validate_network(&profile.network, &fail)?;
    validate_nic_matches(name, &profile.network, files)?;
    validate_guest_isolation(name, profile, files)?;
    validate_ssh(name, profile, files)?;
    crate::vms::validate(name, profile, files)?;
    if let Some(target) = &profile.target {
        validate_target(target, &fail)?;
    }
    if let Some(initiator) = &profile.initiator {
        validate_initiator(initiator, &profile.network, &fail)?;
    }
    validate_services(profile, &|key: &str,
                                 service: &str,
                                 field: Option<&str>,
                                 message| {
        match locate_service(files, service, field) {
            Some((path, line)) => ProfileError::Invalid {
                path,
                line,
                column: 1,
                key_note: format!("key `{key}`: "),
                message,
            },
            None => fail(key, message),
        }
    })
}

fn validate_image<F>(image: &Image, fail: &F) -> Result<(), ProfileError>
where
    F: Fn(&str, String) -> ProfileError,
{
    if !(1..=22).contains(&image.compression_level) {
        return Err(fail(
            "image.compression_level",
            format!("{} is not a zstd level (1 to 22)", image.compression_level),
        ));
    }
    if let Some(disk) = &image.disk
        && disk.data_mib > MAX_DISK_DATA_MIB
    {
        return Err(fail(
            "image.disk.data_mib",
            format!(
                "{} MiB is more than the {MAX_DISK_DATA_MIB} MiB allowed",
                disk.data_mib
            ),
        ));
    }
    if let Some(uefi) = &image.uefi {
        validate_uefi(uefi, fail)?;
    }
    Ok(())
}

fn validate_uefi<F>(uefi: &UefiImage, fail: &F) -> Result<(), ProfileError>
where
    F: Fn(&str, String) -> ProfileError,
{
    if let Some(esp_mib) = uefi.esp_mib
        && !(MIN_ESP_MIB..=MAX_DISK_DATA_MIB).contains(&esp_mib)
    {
        return Err(fail(
            "image.uefi.esp_mib",
            format!(
                "{esp_mib} MiB is not between {MIN_ESP_MIB} and {MAX_DISK_DATA_MIB} MiB (FAT32 needs at least {MIN_ESP_MIB} MiB)"
            ),
        ));
    }
    if uefi.data_mib > MAX_DISK_DATA_MIB {
        return Err(fail(
            "image.uefi.data_mib",
            format!(
                "{} MiB is more than the {MAX_DISK_DATA_MIB} MiB allowed",
                uefi.data_mib
            ),
        ));
    }
    Ok(())
}

fn validate_network<F>(network: &Network, fail: &F) -> Result<(), ProfileError>
where
    F: Fn(&str, String) -> ProfileError,
{
    for (index, interface) in network.interfaces.iter().enumerate() {
        if let Some(mac) = &interface.mac
            && !is_mac(mac)
        {
            return Err(fail(
                &format!("network.interfaces[{index}].mac"),
                format!("`{mac}` is not a MAC address like 52:54:00:00:00:01"),
            ));
        }
        if let Some(bridge) = &interface.bridge
            && !network.bridges.iter().any(|b| &b.name == bridge)
        {
            return Err(fail(
                &format!("network.interfaces[{index}].bridge"),
                format!("no bridge `{bridge}` in network.bridges"),
            ));
        }
    }
    Ok(())
}

/// `network.guest_isolation`: `filter` needs a bridge to filter and the
/// `nftables` package; `separate-bridge` is not implemented. A refusal
/// points at the `mode` line.
fn validate_guest_isolation(
    name: &str,
    profile: &Profile,
    files: &[PathBuf],
) -> Result<(), ProfileError> {
    let Some(isolation) = &profile.network.guest_isolation else {
        return Ok(());
    };
    let message = match isolation.mode {
        GuestIsolationMode::SeparateBridge => {
            "`separate-bridge` is not implemented: use `filter` (an nftables bridge filter on \
             the node's bridges, docs/security.md#guests-kept-off-the-san)"
                .to_string()
        }
        GuestIsolationMode::Filter if profile.network.bridges.is_empty() => {
            "`filter` filters the node's bridges, and network.bridges lists none".to_string()
        }
        GuestIsolationMode::Filter if !profile.includes_package(NFTABLES_PACKAGE) => {
            format!(
                "`filter` loads its ruleset with nft: add `{NFTABLES_PACKAGE}` to packages.include"
            )
        }
        GuestIsolationMode::Filter => return Ok(()),
    };
    let at = ValueAt {
        key: "network.guest_isolation.mode",
        leaf: "mode",
        value: isolation.mode.as_str(),
    };
    Err(value_error(name, files, &at, message))
}

/// A value a refusal points at: its dotted key, the key as written in the
/// file, and the value.
pub(crate) struct ValueAt<'a> {
    /// The dotted key.
    pub key: &'a str,
    /// The key as the file writes it.
    pub leaf: &'a str,
    /// The value.
    pub value: &'a str,
}

/// A refusal of `at` at the line that sets it, if one is found.
pub(crate) fn value_error(
    name: &str,
    files: &[PathBuf],
    at: &ValueAt,
    message: String,
) -> ProfileError {
    match locate_value(files, at.leaf, at.value) {
        Some((path, line)) => ProfileError::Invalid {
            path,
            line,
            column: 1,
            key_note: format!("key `{}`: ", at.key),
            message,
        },
        None => ProfileError::Value {
            profile: name.into(),
            key: at.key.into(),
            message,
        },
    }
}

/// `[ssh]`: each authorized key is one OpenSSH public key line that
/// dropbear accepts, the port is not 0, and `dropbear-bin` is installed.
fn validate_ssh(name: &str, profile: &Profile, files: &[PathBuf]) -> Result<(), ProfileError> {
    let Some(ssh) = &profile.ssh else {
        return Ok(());
    };
    for (index, line) in ssh.authorized_keys.iter().enumerate() {
        if let Err(error) = applbuild_secrets::ssh::check_public_key(line) {
            let key = format!("ssh.authorized_keys[{index}]");
            let at = ValueAt {
                key: &key,
                leaf: "authorized_keys",
                value: line,
            };
            return Err(value_error(name, files, &at, error.to_string()));
        }
    }
    let fail = |key: &str, message: String| ProfileError::Value {
        profile: name.into(),
        key: key.into(),
        message,
    };
    if ssh.port == 0 {
        return Err(fail("ssh.port", "port 0 is not a port to listen on".into()));
    }
    let package = crate::ssh::DROPBEAR_PACKAGE;
    if !profile.includes_package(package) {
        return Err(fail(
            "ssh",
            format!("dropbear serves `[ssh]`: add `{package}` to packages.include"),
        ));
    }
    Ok(())
}

/// Each interface names its NIC by exactly one of `mac`, `driver` and
/// `pci_path`; a refusal points at the interface's `name` line.
fn validate_nic_matches(
    name: &str,
    network: &Network,
    files: &[PathBuf],
) -> Result<(), ProfileError> {
    for (index, interface) in network.interfaces.iter().enumerate() {
        let given = [&interface.mac, &interface.driver, &interface.pci_path]
            .iter()
            .filter(|value| value.is_some())
            .count();
        if given == 1 {
            continue;
        }
        let key = format!("network.interfaces[{index}]");
        let message = format!(
            "interface `{}` sets {given} of `mac`, `driver` and `pci_path`: exactly one names its NIC",
            interface.name
        );
        return Err(match locate_value(files, "name", &interface.name) {
            Some((path, line)) => ProfileError::Invalid {
                path,
                line,
                column: 1,
                key_note: format!("key `{key}`: "),
                message,
            },
            None => ProfileError::Value {
                profile: name.into(),
                key,
                message,
            },
        });
    }
    Ok(())
}

fn validate_target<F>(target: &Target, fail: &F) -> Result<(), ProfileError>
where
    F: Fn(&str, String) -> ProfileError,
{
    for (index, lun) in target.luns.iter().enumerate() {
        if lun.scsi_id.len() != 16 || !lun.scsi_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(fail(
                &format!("target.luns[{index}].scsi_id"),
                format!(
                    "`{}` must be exactly 16 hex digits (tgt reads it as hex to build the WWID)",
                    lun.scsi_id
                ),
            ));
        }
        if lun.vendor_id.len() > 8 {
            return Err(fail(
                &format!("target.luns[{index}].vendor_id"),
                "at most 8 characters".into(),
            ));
        }
    }
    let chap = Chaps {
        table: "target",
        chap: target.chap.as_ref(),
        mutual: target.mutual_chap.as_ref(),
        discovery_auth: target.discovery_auth,
    };
    chap.validate(fail)?;
    if target.chap.is_none()
        && target.allowed_initiators.is_empty()
        && target.allowed_addresses.is_empty()
        && !target.allow_unauthenticated
    {
        return Err(fail(
            "target",
            "neither `chap` nor an initiator ACL (`allowed_initiators`, `allowed_addresses`): \
             any initiator could log in; set `allow_unauthenticated = true` to serve it so"
                .into(),
        ));
    }
    Ok(())
}

/// The CHAP settings of a target or an initiator.
struct Chaps<'a> {
    /// `target` or `initiator`.
    table: &'a str,
    chap: Option<&'a Chap>,
    mutual: Option<&'a Chap>,
    discovery_auth: bool,
}

impl Chaps<'_> {
    /// Mutual CHAP and discovery authentication need `chap`; the two
    /// directions need their own secrets and user names.
    fn validate<F>(&self, fail: &F) -> Result<(), ProfileError>
    where
        F: Fn(&str, String) -> ProfileError,
    {
        let key = |field: &str| format!("{}.{field}", self.table);
        for chap in [self.chap, self.mutual].into_iter().flatten() {
            if !applbuild_secrets::is_valid_name(&chap.secret.name) {
                return Err(fail(
                    &key("chap"),
                    format!(
                        "secret name {:?}: only letters, digits, `-`, `_` and `.`",
                        chap.secret.name
                    ),
                ));
            }
        }
        let Some(chap) = self.chap else {
            if self.mutual.is_some() {
                return Err(fail(
                    &key("mutual_chap"),
                    "needs `chap`: the initiator authenticates first".into(),
                ));
            }
            if self.discovery_auth {
                return Err(fail(
                    &key("discovery_auth"),
                    "needs `chap`: discovery authenticates with the same credentials".into(),
                ));
            }
            return Ok(());
        };
        let Some(mutual) = self.mutual else {
            return Ok(());
        };
        if mutual.secret == chap.secret {
            return Err(fail(
                &key("mutual_chap.secret"),
                "the same secret as `chap`: RFC 3720 (8.2.1) forbids one CHAP secret in both directions"
                    .into(),
            ));
        }
        if mutual.username == chap.username {
            return Err(fail(
                &key("mutual_chap.username"),
                "the same user name as `chap`: tgt keeps one account per user name".into(),
            ));
        }
        Ok(())
    }
}

fn validate_initiator<F>(
    initiator: &Initiator,
    network: &Network,
    fail: &F,
) -> Result<(), ProfileError>
where
    F: Fn(&str, String) -> ProfileError,
{
    let chap = Chaps {
        table: "initiator",
        chap: initiator.chap.as_ref(),
        mutual: initiator.mutual_chap.as_ref(),
        discovery_auth: initiator.discovery_auth,
    };
    chap.validate(fail)?;
    let netdevs: Vec<&str> = network
        .interfaces
        .iter()
        .map(|i| i.name.as_str())
        .chain(network.bridges.iter().map(|b| b.name.as_str()))
        .collect();
    for (index, iface) in initiator.ifaces.iter().enumerate() {
        if !netdevs.contains(&iface.netdev.as_str()) {
            return Err(fail(
                &format!("initiator.ifaces[{index}].netdev"),
                format!(
                    "`{}` is neither an interface nor a bridge of network",
                    iface.netdev
                ),
            ));
        }
    }
    Ok(())
}

/// Builds the error of a service check: dotted key, service name, the
/// field of the service it is about (if any), message.
type ServiceFail<'a> = dyn Fn(&str, &str, Option<&str>, String) -> ProfileError + 'a;

/// Service names must make distinct shell ids (see
/// [`services::service_id`]), and `after` must name services and never
/// go round in a circle.
fn validate_services(profile: &Profile, fail: &ServiceFail) -> Result<(), ProfileError> {
    // A test build adds the guest agent's service to every profile.
    let builtin = services::GUEST_AGENT_SERVICE;
    let mut ids: BTreeMap<String, &str> =
        BTreeMap::from([(services::service_id(builtin), builtin)]);
    for (service, definition) in &profile.services {
        let key = format!("services.{service}");
        if !services::is_valid_name(service) {
            return Err(fail(
                &key,
                service,
                None,
                "a service name has only letters, digits, `-`, `.` and `_` \
                 (it becomes a shell id)"
                    .into(),
            ));
        }
        let id = services::service_id(service);
        if let Some(other) = ids.insert(id.clone(), service) {
            let taken = if other == services::GUEST_AGENT_SERVICE {
                format!("the service `{other}` that test builds add")
            } else {
                format!("the service `{other}`")
            };
            return Err(fail(
                &key,
                service,
                None,
                format!("its shell id `{id}` (`-` and `.` become `_`) is also that of {taken}"),
            ));
        }
        for dependency in &definition.after {
            if !profile.services.contains_key(dependency) {
                return Err(fail(
                    &format!("{key}.after"),
                    service,
                    Some("after"),
                    format!("no service `{dependency}`"),
                ));
            }
        }
    }
    if let Some(cycle) = after_cycle(&profile.services) {
        return Err(fail(
            &format!("services.{}.after", cycle[0]),
            &cycle[0],
            Some("after"),
            format!("`after` goes round in a circle: {}", cycle.join(" -> ")),
        ));
    }
    Ok(())
}

/// A circle of `after` edges, as the names along it (the first repeated
/// at the end), if there is one.
fn after_cycle(services: &BTreeMap<String, Service>) -> Option<Vec<String>> {
    fn visit(
        name: &str,
        services: &BTreeMap<String, Service>,
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|seen| seen == name) {
            let mut cycle = path[start..].to_vec();
            cycle.push(name.to_string());
            return Some(cycle);
        }
        if done.iter().any(|seen| seen == name) {
            return None;
        }
        path.push(name.to_string());
        for dependency in services.get(name).map_or(&[][..], |s| &s.after[..]) {
            if let Some(cycle) = visit(dependency, services, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.push(name.to_string());
        None
    }
    let mut done = Vec::new();
    services
        .keys()
        .find_map(|name| visit(name, services, &mut Vec::new(), &mut done))
}

/// The file and 1-based line where `[services.NAME]` is written (or its
/// `field` key within it), the profile's own file first.
fn locate_service(files: &[PathBuf], name: &str, field: Option<&str>) -> Option<(PathBuf, usize)> {
    let headers = [
        format!("[services.{name}]"),
        format!("[services.\"{name}\"]"),
    ];
    files.iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let header = lines
            .iter()
            .position(|line| headers.iter().any(|h| h == line))?;
        let Some(field) = field else {
            return Some((path.clone(), header + 1));
        };
        let mut section = lines[header + 1..]
            .iter()
            .take_while(|line| !line.starts_with('['));
        let offset = section.position(|line| {
            line.split_once('=')
                .is_some_and(|(key, _)| key.trim() == field)
        })?;
        Some((path.clone(), header + offset + 2))
    })
}

/// What a value that reaches a script or a configuration file must look like.
#[derive(Debug, Clone, Copy)]
enum WordRule {
    /// RFC 1123 host name.
    Hostname,
    /// Linux network device name (at most 15 characters).
    NetDevice,
    /// A name: letters, digits, `-`, `_`, `.`, not starting with `-`.
    Name,
    /// iSCSI name (RFC 3720): `iqn.`, `eui.` or `naa.` form.
    Iqn,
    /// `ADDRESS:PORT`.
    Portal,
    /// Hex digits (a SCSI WWID).
    Wwid,
    /// An IP address with a prefix length (`ADDRESS/BITS`).
    AddressWithPrefix,
    /// An IP address, optionally with a prefix length.
    Address,
    /// udev's `ID_PATH` of a PCI device: `pci-DOMAIN:BUS:SLOT.FUNCTION`.
    PciPath,
}

impl WordRule {
    /// Why `value` does not fit, if it does not.
    fn refusal(self, value: &str) -> Option<String> {
        if let Some(bad) = value.chars().find(|&c| is_unsafe_char(c)) {
            return Some(format!(
                "{value:?} has {} (refused in a value that reaches a script or a configuration file)",
                match bad {
                    '\n' | '\r' => "a newline".to_string(),
                    c if c.is_whitespace() => "whitespace".to_string(),
                    c if c.is_control() => "a control character".to_string(),
                    c => format!("the shell metacharacter `{c}`"),
                }
            ));
        }
        let (fits, form) = match self {
            Self::Hostname => (
                is_hostname(value),
                "a host name (RFC 1123: labels of letters, digits and `-`)",
            ),
            Self::NetDevice => (
                is_name(value) && value.len() <= 15,
                "a network device name (at most 15 letters, digits, `-`, `_`, `.`)",
            ),
            Self::Name => (
                is_name(value),
                "a name (letters, digits, `-`, `_`, `.`; not starting with `-`)",
            ),
            Self::Iqn => (
                is_iscsi_name(value),
                "an iSCSI name (RFC 3720: iqn.YYYY-MM.reversed.domain[:name], eui.<16 hex>, naa.<16 or 32 hex>)",
            ),
            Self::Portal => (is_portal(value), "ADDRESS:PORT"),
            Self::Wwid => (
                !value.is_empty()
                    && value.len() <= 64
                    && value.chars().all(|c| c.is_ascii_hexdigit()),
                "a WWID (hex digits)",
            ),
            Self::AddressWithPrefix => (is_address(value, true), "ADDRESS/PREFIX"),
            Self::Address => (is_address(value, false), "an IP address or ADDRESS/PREFIX"),
            Self::PciPath => (is_pci_path(value), "a PCI path like pci-0000:03:00.0"),
        };
        (!fits).then(|| format!("`{value}` is not {form}"))
    }
}

/// Whitespace, control characters and what a shell treats specially.
fn is_unsafe_char(c: char) -> bool {
    c.is_whitespace() || c.is_control() || ";&|<>()$`\\\"'*?[]#~!{}^".contains(c)
}

fn is_name(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with('-')
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_hostname(value: &str) -> bool {
    value.len() <= 253
        && value.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// RFC 3720 section 3.2.6.3: `iqn.` + year-month + reversed domain name
/// (+ `:` and any name), `eui.` + 16 hex digits, `naa.` + 16 or 32.
fn is_iscsi_name(value: &str) -> bool {
    let hex = |digits: &str| digits.chars().all(|c| c.is_ascii_hexdigit());
    if let Some(digits) = value.strip_prefix("eui.") {
        return digits.len() == 16 && hex(digits);
    }
    if let Some(digits) = value.strip_prefix("naa.") {
        return matches!(digits.len(), 16 | 32) && hex(digits);
    }
    let Some(rest) = value.strip_prefix("iqn.") else {
        return false;
    };
    let (authority, name) = rest.split_once(':').unwrap_or((rest, ""));
    let Some((date, domain)) = authority.split_once('.') else {
        return false;
    };
    let date_fits = date.len() == 7
        && date.as_bytes()[4] == b'-'
        && date[..4].chars().all(|c| c.is_ascii_digit())
        && date[5..]
            .parse::<u8>()
            .is_ok_and(|month| (1..=12).contains(&month));
    date_fits
        && is_hostname(domain)
        && value.len() <= 223
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
}

fn is_portal(value: &str) -> bool {
    value.rsplit_once(':').is_some_and(|(address, port)| {
        address.parse::<std::net::IpAddr>().is_ok() && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

fn is_address(value: &str, prefix_required: bool) -> bool {
    let (address, prefix) = match value.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (value, None),
    };
    let Ok(address) = address.parse::<std::net::IpAddr>() else {
        return false;
    };
    let limit = if address.is_ipv4() { 32 } else { 128 };
    match prefix {
        Some(prefix) => prefix.parse::<u8>().is_ok_and(|bits| bits <= limit),
        None => !prefix_required,
    }
}

/// A value that reaches a script or a configuration file.
struct WordValue {
    /// Dotted key (`initiator.portals[1]`).
    key: String,
    /// The key as it is written in the file (`portals`).
    leaf: &'static str,
    /// The value.
    value: String,
    /// What it must look like.
    rule: WordRule,
}

/// Collects [`WordValue`]s.
#[derive(Default)]
struct Words(Vec<WordValue>);

impl Words {
    fn add(&mut self, key: impl Into<String>, leaf: &'static str, value: &str, rule: WordRule) {
        self.0.push(WordValue {
            key: key.into(),
            leaf,
            value: value.to_string(),
            rule,
        });
    }
}

/// The values of `profile` that reach a script or a configuration file.
fn word_values(profile: &Profile) -> Vec<WordValue> {
    let mut words = Words::default();
    if let Some(hostname) = &profile.hostname {
        words.add("hostname", "hostname", hostname, WordRule::Hostname);
    }
    if let Some(cluster) = &profile.cluster {
        words.add("cluster", "cluster", cluster, WordRule::Name);
    }
    for (index, interface) in profile.network.interfaces.iter().enumerate() {
        let key = |field: &str| format!("network.interfaces[{index}].{field}");
        words.add(key("name"), "name", &interface.name, WordRule::NetDevice);
        words.add(
            key("network"),
            "network",
            &interface.network,
            WordRule::Name,
        );
        if let Some(address) = &interface.address {
            words.add(
                key("address"),
                "address",
                address,
                WordRule::AddressWithPrefix,
            );
        }
        if let Some(bridge) = &interface.bridge {
            words.add(key("bridge"), "bridge", bridge, WordRule::NetDevice);
        }
        if let Some(driver) = &interface.driver {
            words.add(key("driver"), "driver", driver, WordRule::Name);
        }
        if let Some(pci_path) = &interface.pci_path {
            words.add(key("pci_path"), "pci_path", pci_path, WordRule::PciPath);
        }
    }
    for (index, bridge) in profile.network.bridges.iter().enumerate() {
        let key = |field: &str| format!("network.bridges[{index}].{field}");
        words.add(key("name"), "name", &bridge.name, WordRule::NetDevice);
        if let Some(address) = &bridge.address {
            words.add(
                key("address"),
                "address",
                address,
                WordRule::AddressWithPrefix,
            );
        }
    }
    if let Some(target) = &profile.target {
        target_words(target, &mut words);
    }
    if let Some(initiator) = &profile.initiator {
        initiator_words(initiator, &mut words);
    }
    if let Some(multipath) = &profile.multipath {
        words.add("multipath.alias", "alias", &multipath.alias, WordRule::Name);
        words.add("multipath.wwid", "wwid", &multipath.wwid, WordRule::Wwid);
    }
    words.0
}

fn target_words(target: &Target, words: &mut Words) {
    words.add("target.iqn", "iqn", &target.iqn, WordRule::Iqn);
    for (index, portal) in target.portals.iter().enumerate() {
        words.add(
            format!("target.portals[{index}]"),
            "portals",
            portal,
            WordRule::Portal,
        );
    }
    for (index, name) in target.allowed_initiators.iter().enumerate() {
        let key = format!("target.allowed_initiators[{index}]");
        words.add(key, "allowed_initiators", name, WordRule::Iqn);
    }
    for (index, address) in target.allowed_addresses.iter().enumerate() {
        let key = format!("target.allowed_addresses[{index}]");
        words.add(key, "allowed_addresses", address, WordRule::Address);
    }
}

fn initiator_words(initiator: &Initiator, words: &mut Words) {
    words.add("initiator.name", "name", &initiator.name, WordRule::Iqn);
    words.add(
        "initiator.target",
        "target",
        &initiator.target,
        WordRule::Iqn,
    );
    for (index, portal) in initiator.portals.iter().enumerate() {
        let key = format!("initiator.portals[{index}]");
        words.add(key, "portals", portal, WordRule::Portal);
    }
    for (index, iface) in initiator.ifaces.iter().enumerate() {
        let key = |field: &str| format!("initiator.ifaces[{index}].{field}");
        words.add(key("name"), "name", &iface.name, WordRule::Name);
        words.add(key("netdev"), "netdev", &iface.netdev, WordRule::NetDevice);
    }
}

/// Checks every value of [`word_values`]; a refusal names the file and
/// line where the value is written (see [`locate_value`]).
fn validate_words(name: &str, profile: &Profile, files: &[PathBuf]) -> Result<(), ProfileError> {
    for word in word_values(profile) {
        let Some(message) = word.rule.refusal(&word.value) else {
            continue;
        };
        return Err(match locate_value(files, word.leaf, &word.value) {
            Some((path, line)) => ProfileError::Invalid {
                path,
                line,
                column: 1,
                key_note: format!("key `{}`: ", word.key),
                message,
            },
            None => ProfileError::Value {
                profile: name.into(),
                key: word.key,
                message,
            },
        });
    }
    Ok(())
}

/// The file and 1-based line where string `value` of key `leaf` is
/// written, the profile's own file first: a line with the value (as TOML
/// writes it) and the key, or within an array; else the key's first line.
fn locate_value(files: &[PathBuf], leaf: &str, value: &str) -> Option<(PathBuf, usize)> {
    let written = toml::Value::String(value.to_string()).to_string();
    let texts: Vec<(&PathBuf, String)> = files
        .iter()
        .filter_map(|path| Some((path, std::fs::read_to_string(path).ok()?)))
        .collect();
    let key_of = |line: &str| {
        line.split_once('=')
            .map(|(key, _)| key.trim().trim_matches('"').to_string())
    };
    let with_value = texts.iter().find_map(|(path, text)| {
        let index = text.lines().position(|line| {
            line.contains(&written)
                && key_of(line).is_none_or(|key| key == leaf || line.contains(&format!("{leaf} =")))
        })?;
        Some(((*path).clone(), index + 1))
    });
    with_value.or_else(|| {
        texts.iter().find_map(|(path, text)| {
            let index = text
                .lines()
                .position(|line| key_of(line).is_some_and(|key| key == leaf))?;
            Some(((*path).clone(), index + 1))
        })
    })
}

fn is_pci_path(text: &str) -> bool {
    let Some(address) = text.strip_prefix("pci-") else {
        return false;
    };
    let Some((slot, function)) = address.split_once('.') else {
        return false;
    };
    let parts: Vec<&str> = slot.split(':').collect();
    let hex =
        |part: &str, len: usize| part.len() == len && part.chars().all(|c| c.is_ascii_hexdigit());
    parts.len() == 3
        && hex(parts[0], 4)
        && hex(parts[1], 2)
        && hex(parts[2], 2)
        && function.len() == 1
        && function.chars().all(|c| ('0'..='7').contains(&c))
}

/// Whether `text` is a MAC address written as six hex pairs.
pub(crate) fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|part| part.len() == 2 && part.chars().all(|c| c.is_ascii_hexdigit()))
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceKind::Daemon => "daemon",
            ServiceKind::Oneshot => "oneshot",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project_profiles() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles")
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    }

    #[test]
    fn project_profiles_load() {
        let names = list(&project_profiles()).unwrap();
        for name in ["base", "hypervisor", "storage"] {
            assert!(names.contains(&name.to_string()), "{names:?}");
        }
        let storage = load(&project_profiles(), "storage").unwrap();
        assert_eq!(storage.files.len(), 3);
        assert!(
            storage
                .profile
                .packages
                .include
                .contains(&"busybox".to_string())
        );
        assert!(
            storage
                .profile
                .packages
                .include
                .contains(&"tgt".to_string())
        );
        assert!(
            storage
                .profile
                .kernel
                .modules
                .contains(&"virtio_net".to_string())
        );
        assert_eq!(storage.profile.target.as_ref().unwrap().portals.len(), 2);
    }

    #[test]
    fn hypervisor_wwid_is_the_storage_lun_wwid() {
        let storage = load(&project_profiles(), "storage").unwrap().profile;
        let hypervisor = load(&project_profiles(), "hypervisor").unwrap().profile;
        let lun = &storage.target.unwrap().luns[0];
        assert_eq!(lun.wwid(), hypervisor.multipath.unwrap().wwid);
    }

    #[test]
    fn wwid_follows_tgt_naa6_rule() {
        let lun = Lun {
            lun: 1,
            backing_store: "/dev/vdb".into(),
            scsi_id: "0123456789abcdef".into(),
            scsi_sn: "x".into(),
            vendor_id: default_vendor_id(),
        };
        assert_eq!(lun.wwid(), "360000000000000000123456789abcdef");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "p",
            "hostname = \"x\"\n\n[packages]\ninclude = [\"busybox\"]\nincludes = [\"tgt\"]\n",
        );
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(error.contains("p.toml:5:"), "{error}");
        assert!(error.contains("unknown field `includes`"), "{error}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "p",
            "[packages]\ninclude = [\"busybox\"]\n[image]\ncompression_level = \"high\"\n",
        );
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(error.contains("p.toml:4:"), "{error}");
        assert!(error.contains("key `compression_level`"), "{error}");
    }

    /// A per-machine file: only the keys that differ from `hypervisor`.
    const RACK7_HV: &str = "extends = \"hypervisor\"\nvms = []\n\n[initiator]\nname = \"iqn.2026-12.com.example:rack7-hv\"\n\n[multipath]\nalias = \"rack7\"\n";

    fn with_shipped_profiles() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in list(&project_profiles()).unwrap() {
            let file = format!("{name}.toml");
            std::fs::copy(project_profiles().join(&file), dir.path().join(&file)).unwrap();
        }
        dir
    }

    #[test]
    fn a_per_machine_file_sets_only_what_differs() {
        let dir = with_shipped_profiles();
        write(dir.path(), "rack7-hv", RACK7_HV);
        let loaded = load(dir.path(), "rack7-hv").unwrap().profile;
        let initiator = loaded.initiator.unwrap();
        assert_eq!(initiator.name, "iqn.2026-12.com.example:rack7-hv");
        assert_eq!(initiator.target, "iqn.2012-09.com.ibm:neptune.target");
        let multipath = loaded.multipath.unwrap();
        assert_eq!(multipath.alias, "rack7");
        assert_eq!(multipath.wwid, "36000000000000000a9b1000000000001");
    }

    #[test]
    fn a_key_missing_from_the_whole_chain_names_the_key_and_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base", "[packages]\ninclude = [\"busybox\"]\n");
        write(dir.path(), "mid", "extends = \"base\"\n");
        write(
            dir.path(),
            "leaf",
            "extends = \"mid\"\n[initiator]\nname = \"iqn.2026-12.com.example:x\"\nportals = []\nifaces = []\n",
        );
        let error = load(dir.path(), "leaf").unwrap_err().to_string();
        assert_eq!(
            error,
            "leaf (extends mid, base): missing key initiator.target"
        );
    }

    #[test]
    fn an_unknown_key_after_an_inherited_one_names_its_file_and_line() {
        let dir = with_shipped_profiles();
        write(
            dir.path(),
            "rack7-hv",
            &format!("{RACK7_HV}polling_interval = 2\npolling_intervall = 3\n"),
        );
        let error = load(dir.path(), "rack7-hv").unwrap_err().to_string();
        assert!(error.contains("rack7-hv.toml:10:"), "{error}");
        assert!(error.contains("polling_intervall"), "{error}");

        write(
            dir.path(),
            "rack7-hv",
            &format!("{RACK7_HV}polling_interval = \"often\"\n"),
        );
        let error = load(dir.path(), "rack7-hv").unwrap_err().to_string();
        assert!(error.contains("rack7-hv.toml:9:"), "{error}");
        assert!(error.contains("multipath.polling_interval"), "{error}");
    }

    #[test]
    fn non_free_firmware_adds_the_component_and_the_firmware_packages() {
        let dir = with_shipped_profiles();
        let plain = load(dir.path(), "hypervisor").unwrap().profile;
        assert_eq!(plain.distribution.components, ["main"]);
        assert!(
            !plain
                .packages
                .include
                .iter()
                .any(|p| p.starts_with("firmware-"))
        );

        write(
            dir.path(),
            "rack7-hv",
            &format!("{RACK7_HV}\n[hardware]\nnon_free_firmware = true\n"),
        );
        let profile = load(dir.path(), "rack7-hv").unwrap().profile;
        assert_eq!(
            profile.distribution.components,
            ["main", "non-free-firmware"]
        );
        for package in NON_FREE_FIRMWARE {
            assert!(
                profile.packages.include.contains(&package.to_string()),
                "{package}"
            );
        }
    }

    #[test]
    fn lists_accumulate_and_scalars_replace_along_extends() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base",
            "hostname = \"base\"\n[packages]\ninclude = [\"busybox\"]\n[kernel]\nmodules = [\"a\"]\n",
        );
        write(
            dir.path(),
            "child",
            "extends = \"base\"\nhostname = \"child\"\n[packages]\ninclude = [\"tgt\", \"busybox\"]\n[kernel]\nmodules = [\"b\"]\n",
        );
        let child = load(dir.path(), "child").unwrap();
        assert_eq!(child.profile.hostname.as_deref(), Some("child"));
        assert_eq!(child.profile.packages.include, ["busybox", "tgt"]);
        assert_eq!(child.profile.kernel.modules, ["a", "b"]);
        assert!(!child.merged.contains_key("extends"));
    }

    #[test]
    fn child_profile_asks_for_a_disk_image() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base",
            "[packages]\ninclude = [\"busybox\"]\n[image]\ncompression_level = 5\n",
        );
        write(
            dir.path(),
            "child",
            "extends = \"base\"\n[image.disk]\ndata_mib = 64\n",
        );
        write(dir.path(), "empty", "extends = \"base\"\n[image.disk]\n");
        let base = load(dir.path(), "base").unwrap().profile;
        assert!(base.image.disk.is_none());
        let child = load(dir.path(), "child").unwrap().profile;
        assert_eq!(child.image.compression_level, 5);
        assert_eq!(child.image.disk.unwrap().data_mib, 64);
        let empty = load(dir.path(), "empty").unwrap().profile;
        assert_eq!(empty.image.disk.unwrap().data_mib, 0);
    }

    #[test]
    fn disk_image_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "big",
            "[packages]\ninclude = [\"busybox\"]\n[image.disk]\ndata_mib = 65537\n",
        );
        let error = load(dir.path(), "big").unwrap_err().to_string();
        assert!(error.contains("image.disk.data_mib"), "{error}");
        write(
            dir.path(),
            "max",
            "[packages]\ninclude = [\"busybox\"]\n[image.disk]\ndata_mib = 65536\n",
        );
        assert!(load(dir.path(), "max").is_ok());
        write(
            dir.path(),
            "typo",
            "[packages]\ninclude = [\"busybox\"]\n[image.disk]\ndata_mb = 1\n",
        );
        let error = load(dir.path(), "typo").unwrap_err().to_string();
        assert!(error.contains("typo.toml:4:"), "{error}");
        assert!(error.contains("unknown field `data_mb`"), "{error}");
    }

    #[test]
    fn extends_cycle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", "extends = \"b\"\n");
        write(dir.path(), "b", "extends = \"a\"\n");
        let error = load(dir.path(), "a").unwrap_err();
        assert!(matches!(error, ProfileError::ExtendsCycle(..)), "{error}");
    }

    #[test]
    fn missing_parent_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", "extends = \"nothere\"\n");
        let error = load(dir.path(), "a").unwrap_err().to_string();
        assert!(error.contains("profile `nothere` not found"), "{error}");
    }

    #[test]
    fn non_hex_scsi_id_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "s",
            "[packages]\ninclude = [\"tgt\"]\n[target]\niqn = \"iqn.2001-04.com.example:t\"\nportals = [\"192.0.2.1:3260\"]\n[[target.luns]]\nlun = 1\nbacking_store = \"/dev/vdb\"\nscsi_id = \"IET00010001\"\nscsi_sn = \"s\"\n",
        );
        let error = load(dir.path(), "s").unwrap_err().to_string();
        assert!(error.contains("target.luns[0].scsi_id"), "{error}");
    }

    const PACKAGES: &str = "[packages]\ninclude = [\"busybox\"]\n";

    #[test]
    fn service_ids_that_collide_are_refused_at_their_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "p",
            &format!(
                "{PACKAGES}[services.a-b]\ncommand = \"x\"\n\n[services.a_b]\ncommand = \"y\"\n"
            ),
        );
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(error.contains("p.toml:6:1: key `services.a_b`"), "{error}");
        assert!(error.contains("shell id `a_b`"), "{error}");
        assert!(error.contains("`a-b`"), "{error}");
    }

    #[test]
    fn a_service_named_like_the_guest_agent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "p",
            &format!("{PACKAGES}[services.guest_agent]\ncommand = \"x\"\n"),
        );
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(error.contains("that test builds add"), "{error}");
    }

    #[test]
    fn a_service_name_that_is_no_shell_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "p",
            &format!("{PACKAGES}[services.\"a b\"]\ncommand = \"x\"\n"),
        );
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(error.contains("p.toml:3:1: key `services.a b`"), "{error}");
    }

    #[test]
    fn after_cycles_are_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base",
            &format!("{PACKAGES}[services.a]\ncommand = \"x\"\nafter = [\"c\"]\n"),
        );
        write(
            dir.path(),
            "p",
            "extends = \"base\"\n[services.b]\ncommand = \"y\"\nafter = [\"a\"]\n[services.c]\ncommand = \"z\"\n# c comes after b\nafter = [\"b\"]\n",
        );
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(
            error.contains("base.toml:5:1: key `services.a.after`"),
            "{error}"
        );
        assert!(error.contains("a -> c -> b -> a"), "{error}");
        write(
            dir.path(),
            "own",
            &format!("{PACKAGES}[services.a]\ncommand = \"x\"\nafter = [\"a\"]\n"),
        );
        let error = load(dir.path(), "own").unwrap_err().to_string();
        assert!(error.contains("a -> a"), "{error}");
    }

    #[test]
    fn after_an_unknown_service_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "p",
            &format!("{PACKAGES}[services.a]\ncommand = \"x\"\nafter = [\"nothere\"]\n"),
        );
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(
            error.contains("p.toml:5:1: key `services.a.after`"),
            "{error}"
        );
        assert!(error.contains("no service `nothere`"), "{error}");
    }

    /// Loads a profile of `body` then `PACKAGES` and returns its error.
    fn refusal(body: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p", &format!("{body}{PACKAGES}"));
        load(dir.path(), "p").unwrap_err().to_string()
    }

    fn assert_refused(body: &str, at: &str, says: &str) {
        let error = refusal(body);
        assert!(error.contains(at), "expected `{at}` in: {error}");
        assert!(error.contains(says), "expected `{says}` in: {error}");
    }

    #[test]
    fn a_hostname_with_whitespace_a_newline_or_shell_syntax_is_refused() {
        let at = "p.toml:1:1: key `hostname`";
        assert_refused("hostname = \"a b\"\n", at, "whitespace");
        assert_refused("hostname = \"a\\nreboot\"\n", at, "a newline");
        assert_refused("hostname = \"a;reboot\"\n", at, "metacharacter `;`");
        assert_refused("hostname = \"$(reboot)\"\n", at, "metacharacter `$`");
        assert_refused("hostname = \"-a\"\n", at, "not a host name");
        assert_refused("hostname = \"a_b\"\n", at, "not a host name");
    }

    const INTERFACE: &str =
        "[[network.interfaces]]\nmac = \"52:54:00:00:00:01\"\nnetwork = \"san-a\"\n";

    #[test]
    fn a_nic_is_named_by_exactly_one_of_mac_driver_and_pci_path() {
        let nic = "[[network.interfaces]]\nname = \"eth0\"\nnetwork = \"san-a\"\n";
        let profile = |extra: &str| {
            let dir = tempfile::tempdir().unwrap();
            write(
                dir.path(),
                "p",
                &format!("[packages]\ninclude = [\"busybox\"]\n{nic}{extra}"),
            );
            load(dir.path(), "p").map(|loaded| loaded.profile)
        };
        let by_driver = profile("driver = \"igb\"\n").unwrap();
        assert_eq!(
            by_driver.network.interfaces[0].driver.as_deref(),
            Some("igb")
        );
        let by_slot = profile("pci_path = \"pci-0000:03:00.0\"\n").unwrap();
        assert_eq!(
            by_slot.network.interfaces[0].pci_path.as_deref(),
            Some("pci-0000:03:00.0")
        );
        for extra in ["", "driver = \"igb\"\nmac = \"52:54:00:00:00:01\"\n"] {
            let error = profile(extra).unwrap_err().to_string();
            assert!(
                error.contains("p.toml:4:1: key `network.interfaces[0]`"),
                "{error}"
            );
            assert!(error.contains("exactly one names its NIC"), "{error}");
        }
        let error = profile("pci_path = \"0000:03:00.0\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("p.toml:6:1: key `network.interfaces[0].pci_path`"),
            "{error}"
        );
        let error = profile("driver = \"igb;x\"\n").unwrap_err().to_string();
        assert!(
            error.contains("p.toml:6:1: key `network.interfaces[0].driver`"),
            "{error}"
        );
    }

    #[test]
    fn bad_interface_and_bridge_names_are_refused_at_their_line() {
        assert_refused(
            &format!("{INTERFACE}name = \"eth0;x\"\n"),
            "p.toml:4:1: key `network.interfaces[0].name`",
            "metacharacter `;`",
        );
        assert_refused(
            &format!("{INTERFACE}name = \"averyveryverylongname\"\n"),
            "p.toml:4:1: key `network.interfaces[0].name`",
            "network device name",
        );
        assert_refused(
            "[[network.bridges]]\nname = \"br 0\"\n",
            "p.toml:2:1: key `network.bridges[0].name`",
            "whitespace",
        );
        assert_refused(
            &format!("{INTERFACE}name = \"eth0\"\naddress = \"192.0.2.1\"\n"),
            "p.toml:5:1: key `network.interfaces[0].address`",
            "ADDRESS/PREFIX",
        );
    }

    const TARGET: &str = "[target]\nportals = [\"192.0.2.1:3260\"]\nluns = []\n";

    #[test]
    fn iqns_outside_rfc_3720_are_refused() {
        let at = "p.toml:4:1: key `target.iqn`";
        for bad in [
            "iqn.2012-13.com.x:t",
            "iqn.12-09.com.x",
            "eui.0123",
            "naa.xyz",
            "target1",
        ] {
            assert_refused(
                &format!("{TARGET}iqn = \"{bad}\"\n"),
                at,
                "not an iSCSI name",
            );
        }
        assert_refused(
            &format!("{TARGET}iqn = \"iqn.2012-09.com.x:a b\"\n"),
            at,
            "whitespace",
        );
        for good in [
            "iqn.2012-09.com.ibm:neptune.target",
            "iqn.2001-04.com.example",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
        ] {
            let dir = tempfile::tempdir().unwrap();
            write(
                dir.path(),
                "p",
                &format!("{TARGET}iqn = \"{good}\"\nallow_unauthenticated = true\n{PACKAGES}"),
            );
            assert!(load(dir.path(), "p").is_ok(), "{good} refused");
        }
    }

    #[test]
    fn bad_portals_are_refused_at_their_line() {
        assert_refused(
            "[target]\niqn = \"iqn.2001-04.com.example\"\nluns = []\nportals = [\n  \"192.0.2.1:3260\",\n  \"192.0.2.2\",\n]\n",
            "p.toml:6:1: key `target.portals[1]`",
            "`192.0.2.2` is not ADDRESS:PORT",
        );
        assert_refused(
            "[target]\niqn = \"iqn.2001-04.com.example\"\nluns = []\nportals = [\"192.0.2.1:3260;reboot\"]\n",
            "p.toml:4:1: key `target.portals[0]`",
            "metacharacter `;`",
        );
    }

    #[test]
    fn a_non_hex_wwid_and_a_bad_alias_are_refused() {
        assert_refused(
            "[multipath]\nalias = \"kvm\"\nwwid = \"36000g\"\n",
            "p.toml:3:1: key `multipath.wwid`",
            "not a WWID",
        );
        assert_refused(
            "[multipath]\nalias = \"kvm`id`\"\nwwid = \"3600\"\n",
            "p.toml:2:1: key `multipath.alias`",
            "metacharacter `",
        );
        assert_refused(
            "[multipath]\nalias = \"-kvm\"\nwwid = \"3600\"\n",
            "p.toml:2:1: key `multipath.alias`",
            "not a name",
        );
    }

    #[test]
    fn an_initiator_value_from_the_parent_is_refused_in_the_parent_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base",
            &format!(
                "{PACKAGES}[initiator]\nname = \"iqn.2001-04.com.example:a\"\ntarget = \"iqn.2001-04.com.example:t\"\nportals = [\"192.0.2.1:3260\"]\nifaces = [{{ name = \"i0;x\", netdev = \"eth0\" }}]\n"
            ),
        );
        write(dir.path(), "p", "extends = \"base\"\nhostname = \"h\"\n");
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(
            error.contains("base.toml:7:1: key `initiator.ifaces[0].name`"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_profile_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p", "extends = \"a;b\"\n");
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(error.contains("p.toml:1:1: key `extends`"), "{error}");
        let error = load(dir.path(), "a b").unwrap_err().to_string();
        assert!(
            error.contains("(profile name)") && error.contains("whitespace"),
            "{error}"
        );
    }

    #[test]
    fn shipped_profiles_pass_value_checks() {
        for name in list(&project_profiles()).unwrap() {
            load(&project_profiles(), &name).unwrap();
        }
    }

    #[test]
    fn digest_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p", "[packages]\ninclude = [\"busybox\"]\n");
        let first = load(dir.path(), "p").unwrap().digest();
        write(
            dir.path(),
            "p",
            "[packages]\ninclude = [\"busybox\", \"tgt\"]\n",
        );
        assert_ne!(first, load(dir.path(), "p").unwrap().digest());
    }

    const SERVED: &str = "[target]\niqn = \"iqn.2001-04.com.example:t\"\nportals = [\"192.0.2.1:3260\"]\nluns = []\n";

    #[test]
    fn a_secret_written_in_a_profile_is_refused_at_its_line() {
        assert_refused(
            &format!("{SERVED}[target.chap]\nusername = \"u\"\nsecret = \"applbuild-chap1\"\n"),
            "p.toml:7:10: key `secret`: a secret is never written in a profile",
            "secrets store (`applbuild secrets init`",
        );
        assert_refused(
            &format!(
                "{SERVED}[target.chap]\nusername = \"u\"\nsecret = {{ name = \"x\", value = \"y\" }}\n"
            ),
            "p.toml:7",
            "unknown field `value`",
        );
    }

    #[test]
    fn a_target_without_chap_or_an_acl_needs_allow_unauthenticated() {
        assert_refused(
            SERVED,
            "target: neither `chap` nor an initiator ACL",
            "allow_unauthenticated = true",
        );
        for escape in [
            "allow_unauthenticated = true\n",
            "allowed_initiators = [\"iqn.2001-04.com.example:i\"]\n",
            "allowed_addresses = [\"192.0.2.2\"]\n",
            "[target.chap]\nusername = \"u\"\nsecret = { name = \"iscsi-chap\" }\n",
        ] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "p", &format!("{SERVED}{escape}{PACKAGES}"));
            assert!(load(dir.path(), "p").is_ok(), "refused with {escape}");
        }
    }

    #[test]
    fn mutual_chap_needs_its_own_secret_and_user_name() {
        let chap = "[target.chap]\nusername = \"u\"\nsecret = { name = \"a\" }\n";
        assert_refused(
            &format!(
                "{SERVED}{chap}[target.mutual_chap]\nusername = \"t\"\nsecret = {{ name = \"a\" }}\n"
            ),
            "target.mutual_chap.secret",
            "RFC 3720",
        );
        assert_refused(
            &format!(
                "{SERVED}{chap}[target.mutual_chap]\nusername = \"u\"\nsecret = {{ name = \"b\" }}\n"
            ),
            "target.mutual_chap.username",
            "one account per user name",
        );
        assert_refused(
            &format!(
                "{SERVED}allowed_addresses = [\"192.0.2.2\"]\n[target.mutual_chap]\nusername = \"t\"\nsecret = {{ name = \"b\" }}\n"
            ),
            "target.mutual_chap",
            "needs `chap`",
        );
        assert_refused(
            &format!("{SERVED}allowed_addresses = [\"192.0.2.2\"]\ndiscovery_auth = true\n"),
            "target.discovery_auth",
            "needs `chap`",
        );
    }

    #[test]
    fn the_shipped_nodes_share_secret_names_and_print_them_redacted() {
        let storage = load(&project_profiles(), "storage").unwrap();
        let hypervisor = load(&project_profiles(), "hypervisor").unwrap();
        assert_eq!(storage.profile.cluster(), "default");
        assert_eq!(
            storage.profile.secret_names(),
            [
                "console-root-password",
                "iscsi-chap",
                "iscsi-chap-mutual",
                "ssh-host-key"
            ]
        );
        assert_eq!(
            storage.profile.secret_names(),
            hypervisor.profile.secret_names()
        );
        let target = storage.profile.target.as_ref().unwrap();
        let initiator = hypervisor.profile.initiator.as_ref().unwrap();
        assert!(target.discovery_auth && initiator.discovery_auth);
        for (served, sent) in [
            (&target.chap, &initiator.chap),
            (&target.mutual_chap, &initiator.mutual_chap),
        ] {
            let (served, sent) = (served.as_ref().unwrap(), sent.as_ref().unwrap());
            assert_eq!(served.username, sent.username);
            assert_eq!(served.secret, sent.secret);
        }

        let shown = toml::to_string_pretty(&redacted(&storage.merged)).unwrap();
        assert!(
            shown.contains("secret = \"<secret iscsi-chap>\""),
            "{shown}"
        );
        let typed = serde_json::to_string(&storage.profile).unwrap();
        assert!(
            typed.contains("\"secret\":\"<secret iscsi-chap-mutual>\""),
            "{typed}"
        );
    }

    /// A profile with a bridge, nftables, and `[network.guest_isolation]`
    /// written as `isolation`.
    fn isolated(isolation: &str) -> String {
        format!(
            "[packages]\ninclude = [\"busybox\", \"nftables\"]\n\n[[network.bridges]]\nname = \"br0\"\n\n[network.guest_isolation]\n{isolation}"
        )
    }

    #[test]
    fn the_hypervisor_filters_its_guests_and_the_storage_node_has_none() {
        let hypervisor = load(&project_profiles(), "hypervisor").unwrap().profile;
        let isolation = hypervisor.network.guest_isolation.unwrap();
        assert_eq!(isolation.mode, GuestIsolationMode::Filter);
        let storage = load(&project_profiles(), "storage").unwrap().profile;
        assert!(storage.network.guest_isolation.is_none());
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p", &isolated("mode = \"filter\"\n"));
        assert!(load(dir.path(), "p").is_ok());
    }

    #[test]
    fn guest_isolation_keys_and_values_are_checked_at_their_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p", &isolated("mode = \"fliter\"\n"));
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(error.contains("p.toml:8:"), "{error}");
        assert!(error.contains("key `mode`"), "{error}");
        assert!(error.contains("unknown variant `fliter`"), "{error}");

        write(
            dir.path(),
            "p",
            &isolated("mode = \"filter\"\nuplink = \"eth0\"\n"),
        );
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(error.contains("p.toml:9:"), "{error}");
        assert!(error.contains("unknown field `uplink`"), "{error}");

        write(dir.path(), "p", &isolated(""));
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(
            error.contains("missing key network.guest_isolation.mode"),
            "{error}"
        );
    }

    #[test]
    fn separate_bridge_is_refused_as_not_implemented() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p", &isolated("mode = \"separate-bridge\"\n"));
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(
            error.contains("p.toml:8:1: key `network.guest_isolation.mode`"),
            "{error}"
        );
        assert!(error.contains("not implemented"), "{error}");
    }

    #[test]
    fn the_filter_needs_a_bridge_and_nftables() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "p",
            &format!("{PACKAGES}\n[network.guest_isolation]\nmode = \"filter\"\n"),
        );
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(
            error.contains("p.toml:5:1: key `network.guest_isolation.mode`"),
            "{error}"
        );
        assert!(error.contains("network.bridges lists none"), "{error}");

        let without_nft = isolated("mode = \"filter\"\n").replace(", \"nftables\"", "");
        write(dir.path(), "p", &without_nft);
        let error = load(dir.path(), "p").unwrap_err().to_string();
        assert!(error.contains("p.toml:8:1:"), "{error}");
        assert!(
            error.contains("add `nftables` to packages.include"),
            "{error}"
        );
    }

    /// An `[ssh]` table with `keys` as `authorized_keys` (then PACKAGES).
    fn with_ssh(keys: &str) -> String {
        format!(
            "[ssh]\nhost_key_secret = {{ name = \"ssh-host-key\" }}\nauthorized_keys = [\n  {keys}\n]\n"
        )
    }

    /// A loadable profile with `[ssh]`: dropbear installed.
    fn with_dropbear(ssh: &str) -> String {
        format!("{ssh}[packages]\ninclude = [\"busybox\", \"dropbear-bin\"]\n")
    }

    #[test]
    fn an_authorized_key_that_is_no_public_key_is_refused_at_its_line() {
        let good = "\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea op\"";
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p", &with_dropbear(&with_ssh(good)));
        assert!(load(dir.path(), "p").is_ok());
        assert_refused(
            &with_ssh(&format!("{good},\n  \"ssh-dss AAAAB3NzaC1kc3M op\"")),
            "p.toml:5:1: key `ssh.authorized_keys[1]`",
            "key type `ssh-dss` is not one of ssh-ed25519",
        );
        assert_refused(
            &with_ssh("\"ssh-ed25519 not-base64\""),
            "key `ssh.authorized_keys[0]`",
            "not base64 of a `ssh-ed25519` key",
        );
        assert_refused(
            &with_ssh("\"/home/op/.ssh/id_ed25519.pub\""),
            "key `ssh.authorized_keys[0]`",
            "not an OpenSSH public key line",
        );
    }

    #[test]
    fn ssh_needs_dropbear_a_port_and_a_secret_reference() {
        assert_refused(
            &with_ssh(""),
            "profile `p`: ssh: ",
            "add `dropbear-bin` to packages.include",
        );
        assert_refused(&format!("{}port = 0\n", with_ssh("")), "ssh.port", "port 0");
        assert_refused(
            &with_ssh("").replace("{ name = \"ssh-host-key\" }", "\"hunter2\""),
            "p.toml:2",
            "a secret is never written in a profile",
        );
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p", &with_dropbear(&with_ssh("")));
        let loaded = load(dir.path(), "p").unwrap();
        let shown = toml::to_string_pretty(&redacted(&loaded.merged)).unwrap();
        assert!(
            shown.contains("host_key_secret = \"<secret ssh-host-key>\""),
            "{shown}"
        );
        assert_eq!(loaded.profile.secret_names(), ["ssh-host-key"]);
    }
}
