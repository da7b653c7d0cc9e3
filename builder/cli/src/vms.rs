//! The VMs a node runs (`[[vms]]`, docs/vms.md): their profile entries,
//! how they are checked, and what the build writes for them. Each VM gets
//! a service `vm-NAME` that runs `/usr/lib/applbuild/vm-run NAME`, and a
//! file `/etc/applbuild/vms/NAME.conf` that the script sources: its disk,
//! its policies, its taps and the QEMU command line, which comes from
//! [`VmSpec`] like every other QEMU command line of the project.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::profile::{Profile, ProfileError, Service, ServiceKind, ValueAt, is_mac, value_error};
use applbuild_rootfs::rootfs::{RootfsError, RootfsTree};
use applbuild_vm::qemu::{
    Accel, BootSource, Disk, DiskCache, Firmware, NetBackend, Nic, Serial, VmSpec,
};

/// The overlay layer (`rootfs-overlay/vms/`) of a profile that declares
/// VMs: `vm-run`, `applbuild-vm` and the shutdown step.
pub const OVERLAY_LAYER: &str = "vms";
/// Where the build writes each VM's `NAME.conf`.
pub const CONF_DIR: &str = "/etc/applbuild/vms";
/// Where a running VM's files are: `NAME/qmp.sock`, `NAME/console.log`…
pub const RUN_DIR: &str = "/run/applbuild/vms";
/// The package that runs the VMs.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
/// The package of the UEFI firmware (`firmware = "uefi"`).
pub const OVMF_PACKAGE: &str = "ovmf";
/// OVMF's code and its variable store template, as `ovmf` installs them.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The template each VM's variable store is copied from at its first start.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The longest VM name: its service id and files stay short.
const MAX_NAME_LEN: usize = 32;

/// One `[[vms]]` entry: a VM the node runs from a disk it reaches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// Name: the service `vm-NAME`, the `applbuild-vm` argument.
    pub name: String,
    /// A multipath map's alias (`multipath.alias`: the node waits for the
    /// map and one active path) or a block device path under `/dev/`.
    pub disk: String,
    /// Memory in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Virtual CPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// NICs in PCI order, each a tap on one of the node's bridges.
    #[serde(default)]
    pub nics: Vec<VmNic>,
    /// What boots the disk.
    #[serde(default)]
    pub firmware: VmFirmware,
    /// How QEMU caches the disk's writes.
    #[serde(default)]
    pub cache: VmCache,
    /// Started when the node boots (else by `applbuild-vm start NAME`).
    #[serde(default = "default_autostart")]
    pub autostart: bool,
    /// When the node starts the VM again after its QEMU exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Seconds a guest has to power down (ACPI) before its QEMU is stopped.
    #[serde(default = "default_stop_timeout_s")]
    pub stop_timeout_s: u32,
}

/// A VM's NIC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmNic {
    /// The node's bridge the NIC's tap joins.
    pub bridge: String,
    /// The NIC's MAC address.
    pub mac: String,
}

/// The firmware that boots a VM's disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmFirmware {
    /// OVMF from Debian's `ovmf` (`EFI/BOOT/BOOTX64.EFI` on the disk's ESP).
    #[default]
    Uefi,
    /// SeaBIOS, which QEMU carries (a BIOS boot sector on the disk).
    Bios,
}

/// The disk cache modes a VM may use (`unsafe` is not one: it loses
/// what a guest flushed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmCache {
    /// `O_DIRECT`: a guest's flush reaches the SAN.
    #[default]
    None,
    /// The node's page cache, flushed when the guest flushes.
    Writeback,
    /// The node's page cache, every write flushed.
    Writethrough,
    /// `O_DIRECT`, every write flushed.
    Directsync,
}

/// When a VM is started again after its QEMU exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit.
    Always,
    /// Unless the guest powered itself off (QEMU's status 0).
    #[default]
    OnFailure,
    /// Never: the VM stays stopped until `applbuild-vm start`.
    Never,
}

impl RestartPolicy {
    /// The value as the profile and the VM's conf file spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

fn default_memory_mib() -> u32 {
    1024
}

fn default_cpus() -> u32 {
    1
}

fn default_autostart() -> bool {
    true
}

fn default_stop_timeout_s() -> u32 {
    60
}

impl Vm {
    /// The name of the service that runs the VM.
    pub fn service_name(&self) -> String {
        format!("vm-{}", self.name)
    }

    /// The block device QEMU opens.
    pub fn device(&self) -> String {
        if self.disk.starts_with('/') {
            self.disk.clone()
        } else {
            format!("/dev/mapper/{}", self.disk)
        }
    }

    /// The multipath map the VM waits for, if its disk is one.
    pub fn map(&self) -> Option<&str> {
        (!self.disk.starts_with('/')).then_some(self.disk.as_str())
    }

    /// The folder of its running files.
    pub fn run_dir(&self) -> String {
        format!("{RUN_DIR}/{}", self.name)
    }
}

/// The tap of NIC `nic` of the VM at `index` (interface names have 15
/// bytes at most, so they are numbered, not named).
pub fn tap_name(index: usize, nic: usize) -> String {
    format!("vm{index}n{nic}")
}

/// Checks `profile.vms`; a refusal points at the line of the value.
pub fn validate(name: &str, profile: &Profile, files: &[PathBuf]) -> Result<(), ProfileError> {
    let mut macs: Vec<&str> = profile
        .network
        .interfaces
        .iter()
        .filter_map(|interface| interface.mac.as_deref())
        .collect();
    for (index, vm) in profile.vms.iter().enumerate() {
        // `field` is the key under `vms[index]`; the file spells its last part.
        let refuse = |field: &str, value: &str, message: String| {
            let key = format!("vms[{index}].{field}");
            let leaf = field.rsplit('.').next().unwrap_or(field);
            let at = ValueAt {
                key: &key,
                leaf,
                value,
            };
            value_error(name, files, &at, message)
        };
        check_name(profile, index, vm).map_err(|message| refuse("name", &vm.name, message))?;
        check_disk(profile, index, vm).map_err(|message| refuse("disk", &vm.disk, message))?;
        check_sizes(vm).map_err(|(field, message)| refuse(field, "", message))?;
        for (n, nic) in vm.nics.iter().enumerate() {
            check_nic(profile, nic, &macs).map_err(|(field, message)| {
                let value = if field == "bridge" {
                    &nic.bridge
                } else {
                    &nic.mac
                };
                refuse(&format!("nics[{n}].{field}"), value, message)
            })?;
            macs.push(&nic.mac);
        }
        check_packages(profile, vm).map_err(|message| refuse("firmware", "", message))?;
    }
    Ok(())
}

fn check_name(profile: &Profile, index: usize, vm: &Vm) -> Result<(), String> {
    let valid = vm.name.len() <= MAX_NAME_LEN
        && vm.name.starts_with(|c: char| c.is_ascii_lowercase())
        && vm
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(format!(
            "`{}` is not a VM name: lowercase letters, digits and `-`, a letter first, \
             at most {MAX_NAME_LEN} characters",
            vm.name
        ));
    }
    if profile.vms[..index]
        .iter()
        .any(|other| other.name == vm.name)
    {
        return Err(format!("a second VM named `{}`", vm.name));
    }
    if profile.services.contains_key(&vm.service_name()) {
        return Err(format!(
            "the VM's service `{}` is already one of services.*",
            vm.service_name()
        ));
    }
    Ok(())
}

fn check_disk(profile: &Profile, index: usize, vm: &Vm) -> Result<(), String> {
    if let Some(other) = profile.vms[..index]
        .iter()
        .find(|other| other.device() == vm.device())
    {
        return Err(format!(
            "VM `{}` runs from {} already: two VMs writing one disk corrupt it",
            other.name,
            vm.device()
        ));
    }
    if vm.disk.starts_with('/') {
        let path = vm.disk.strip_prefix("/dev/").unwrap_or("");
        if path.is_empty() || vm.disk.contains(char::is_whitespace) || vm.disk.contains("..") {
            return Err(format!(
                "`{}` is not a block device path under /dev/",
                vm.disk
            ));
        }
        return Ok(());
    }
    match &profile.multipath {
        Some(multipath) if multipath.alias == vm.disk => Ok(()),
        Some(multipath) => Err(format!(
            "no multipath map `{}`: the node's map is `{}` (multipath.alias; a profile \
             that renames the map declares its own [[vms]], or `vms = []`); a disk that \
             is not a map is a path under /dev/",
            vm.disk, multipath.alias
        )),
        None => Err(format!(
            "`{}` names a multipath map, and the profile has no [multipath]; \
             a disk that is not a map is a path under /dev/",
            vm.disk
        )),
    }
}

fn check_sizes(vm: &Vm) -> Result<(), (&'static str, String)> {
    if !(64..=1_048_576).contains(&vm.memory_mib) {
        return Err((
            "memory_mib",
            format!("{} MiB: a VM has 64 to 1048576 MiB", vm.memory_mib),
        ));
    }
    if !(1..=255).contains(&vm.cpus) {
        return Err(("cpus", format!("{} CPUs: a VM has 1 to 255", vm.cpus)));
    }
    if !(1..=3600).contains(&vm.stop_timeout_s) {
        return Err((
            "stop_timeout_s",
            format!("{} s: from 1 to 3600", vm.stop_timeout_s),
        ));
    }
    Ok(())
}

fn check_nic(profile: &Profile, nic: &VmNic, macs: &[&str]) -> Result<(), (&'static str, String)> {
    if !profile
        .network
        .bridges
        .iter()
        .any(|bridge| bridge.name == nic.bridge)
    {
        return Err((
            "bridge",
            format!("no bridge `{}` in network.bridges", nic.bridge),
        ));
    }
    if !is_mac(&nic.mac) {
        return Err((
            "mac",
            format!("`{}` is not a MAC address like 52:54:00:00:00:01", nic.mac),
        ));
    }
    let first_octet = u8::from_str_radix(&nic.mac[..2], 16).unwrap_or(1);
    if first_octet & 1 == 1 {
        return Err((
            "mac",
            format!(
                "`{}` is a multicast address: a NIC's MAC is unicast",
                nic.mac
            ),
        ));
    }
    if macs.iter().any(|mac| mac.eq_ignore_ascii_case(&nic.mac)) {
        return Err((
            "mac",
            format!(
                "`{}` is already the MAC of another NIC of this profile",
                nic.mac
            ),
        ));
    }
    Ok(())
}

fn check_packages(profile: &Profile, vm: &Vm) -> Result<(), String> {
    let mut needed = vec![QEMU_PACKAGE];
    if vm.firmware == VmFirmware::Uefi {
        needed.push(OVMF_PACKAGE);
    }
    match needed
        .iter()
        .find(|package| !profile.includes_package(package))
    {
        Some(package) => Err(format!(
            "VM `{}` needs the package `{package}`: add it to packages.include",
            vm.name
        )),
        None => Ok(()),
    }
}

/// The services that run the profile's VMs, `vm-NAME` each: a daemon that
/// is ready once its script has said what the VM is doing.
pub fn services(profile: &Profile) -> impl Iterator<Item = (String, Service)> + '_ {
    let after: Vec<String> = ["udev-coldplug"]
        .into_iter()
        .filter(|name| profile.services.contains_key(*name))
        .map(String::from)
        .collect();
    profile.vms.iter().map(move |vm| {
        let service = Service {
            command: format!("/usr/lib/applbuild/vm-run {}", vm.name),
            kind: ServiceKind::Daemon,
            ready: Some(format!("test -s {}/state", vm.run_dir())),
            post_start: Vec::new(),
            after: after.clone(),
        };
        (vm.service_name(), service)
    })
}

/// The QEMU of the VM at `index` (`vm-run` adds the accelerator), the firmware
/// booting the disk, the console on a pty that is also logged, QMP on a
/// socket (for operators) and a FIFO pair (for `applbuild-vm`'s power-down).
pub fn vm_spec(index: usize, vm: &Vm) -> VmSpec {
    let run = PathBuf::from(vm.run_dir());
    let firmware = match vm.firmware {
        VmFirmware::Uefi => Firmware::Uefi {
            code: OVMF_CODE.into(),
            vars: run.join("OVMF_VARS.fd"),
        },
        VmFirmware::Bios => Firmware::Bios,
    };
    let mut spec = VmSpec::new(
        &vm.name,
        BootSource::FirstDisk(firmware),
        Accel::ChosenAtStart,
    );
    spec.memory_mib = vm.memory_mib;
    spec.cpus = vm.cpus;
    spec.exit_on_reboot = false;
    spec.disks.push(Disk {
        path: vm.device().into(),
        serial: vm.disk.trim_start_matches('/').replace('/', "-"),
        read_only: false,
        cache: match vm.cache {
            VmCache::None => DiskCache::Direct,
            VmCache::Writeback => DiskCache::Writeback,
            VmCache::Writethrough => DiskCache::Writethrough,
            VmCache::Directsync => DiskCache::DirectSync,
        },
    });
    spec.nics = vm
        .nics
        .iter()
        .enumerate()
        .map(|(n, nic)| Nic {
            id: format!("net{n}"),
            mac: nic.mac.clone(),
            backend: NetBackend::Tap {
                ifname: tap_name(index, n),
            },
            // OVMF drives virtio-net itself; the image has no iPXE ROMs.
            without_rom: true,
        })
        .collect();
    spec.serial = Serial::Pty {
        log: run.join("console.log"),
    };
    spec.qmp_socket = Some(run.join("qmp.sock"));
    spec.qmp_pipe = Some(run.join("qmp-pipe"));
    spec
}

/// The text of `/etc/applbuild/vms/NAME.conf` for the VM at `index`.
pub fn conf(index: usize, vm: &Vm) -> String {
    let quote = applbuild_vm::qemu::shell_quote;
    let taps: Vec<String> = vm
        .nics
        .iter()
        .enumerate()
        .map(|(n, nic)| format!("{}:{}", tap_name(index, n), nic.bridge))
        .collect();
    let vars = match vm.firmware {
        VmFirmware::Uefi => OVMF_VARS,
        VmFirmware::Bios => "",
    };
    format!(
        "# Written by applbuild from the profile's [[vms]] entry `{name}`; sourced by\n\
         # /usr/lib/applbuild/vm-run and applbuild-vm (docs/vms.md), which read the values.\n\
         # shellcheck shell=dash disable=SC2034\n\
         run_dir={run_dir}\n\
         disk={disk}\n\
         map={map}\n\
         autostart={autostart}\n\
         restart={restart}\n\
         stop_timeout={stop_timeout}\n\
         taps={taps}\n\
         vars_template={vars}\n\
         # vm-run adds the accelerator and the CPU model.\n\
         run_qemu() {{\n  exec {command} \"$@\"\n}}\n",
        name = vm.name,
        run_dir = quote(&vm.run_dir()),
        disk = quote(&vm.device()),
        map = quote(vm.map().unwrap_or("")),
        autostart = if vm.autostart { "yes" } else { "no" },
        restart = vm.restart.as_str(),
        stop_timeout = vm.stop_timeout_s,
        taps = quote(&taps.join(" ")),
        vars = quote(vars),
        command = vm_spec(index, vm).shell_command(),
    )
}

/// Writes each VM's conf file into the tree.
pub fn add_files(tree: &mut RootfsTree, profile: &Profile) -> Result<(), RootfsError> {
    if profile.vms.is_empty() {
        return Ok(());
    }
    tree.add_dir(CONF_DIR, 0o755, 0, 0)?;
    for (index, vm) in profile.vms.iter().enumerate() {
        let path = format!("{CONF_DIR}/{}.conf", vm.name);
        tree.add_file(&path, conf(index, vm).into_bytes(), 0o644, 0, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::profile;
    use crate::services::tests::shellcheck;

    fn profiles() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles")
    }

    /// The shipped profiles and `p.toml` (`extends = "hypervisor"`, then
    /// `body`) in a temporary folder; the error of loading `p`, if any.
    fn load_machine(body: &str) -> Result<profile::LoadedProfile, String> {
        let dir = tempfile::tempdir().unwrap();
        for name in profile::list(&profiles()).unwrap() {
            let file = format!("{name}.toml");
            std::fs::copy(profiles().join(&file), dir.path().join(&file)).unwrap();
        }
        let text = format!("extends = \"hypervisor\"\n{body}");
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        profile::load(dir.path(), "p").map_err(|error| error.to_string())
    }

    /// A `[[vms]]` entry on the map `kvm` with `extra` lines.
    fn vm(extra: &str) -> String {
        format!(
            "[[vms]]\nname = \"web\"\ndisk = \"kvm\"\nnics = [{{ bridge = \"br0\", mac = \"52:54:00:00:0c:01\" }}]\n{extra}"
        )
    }

    #[test]
    fn the_hypervisor_runs_its_guest_from_the_map_through_ovmf() {
        let loaded = profile::load(&profiles(), "hypervisor").unwrap();
        let vm = &loaded.profile.vms[0];
        assert_eq!((vm.name.as_str(), vm.map()), ("guest", Some("kvm")));
        let services = crate::services::profile_services(&loaded.profile);
        let service = &services["vm-guest"];
        assert_eq!(service.command, "/usr/lib/applbuild/vm-run guest");
        assert_eq!(service.after, ["udev-coldplug"]);
        let text = conf(0, vm);
        for line in [
            "run_dir=/run/applbuild/vms/guest\n",
            "disk=/dev/mapper/kvm\n",
            "map=kvm\n",
            "restart=on-failure\n",
            "stop_timeout=30\n",
            "taps=vm0n0:br0\n",
            "vars_template=/usr/share/OVMF/OVMF_VARS_4M.fd\n",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
        assert!(
            text.contains("  exec qemu-system-x86_64 -name guest "),
            "{text}"
        );
        assert!(
            text.contains(" -serial chardev:serial0 \"$@\"\n}\n"),
            "{text}"
        );
        let args = vm_spec(0, vm).args().join(" ");
        for argument in [
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "file=/dev/mapper/kvm,if=none,id=disk0,format=raw,cache=none",
            "serial=kvm,bootindex=0",
            "-netdev tap,id=net0,ifname=vm0n0,script=no,downscript=no",
            "mac=52:54:00:00:0a:40,romfile=",
            "-qmp unix:/run/applbuild/vms/guest/qmp.sock,server=on,wait=off",
            "logfile=/run/applbuild/vms/guest/console.log",
        ] {
            assert!(args.contains(argument), "no `{argument}` in:\n{args}");
        }
        assert!(!args.contains("-no-reboot"), "a guest reboots in its QEMU");
        assert_eq!(shellcheck(&text), None);
    }

    /// The suite's guest names its NIC by the MAC the hypervisor gives it.
    #[test]
    fn the_guest_vm_has_the_mac_its_image_expects() {
        let hypervisor = profile::load(&profiles(), "hypervisor").unwrap();
        let guest = profile::load(&profiles(), "guest").unwrap();
        assert_eq!(
            Some(&hypervisor.profile.vms[0].nics[0].mac),
            guest.profile.network.interfaces[0].mac.as_ref()
        );
    }

    #[test]
    fn a_second_vm_gets_its_own_taps_and_service() {
        let loaded = load_machine(&format!(
            "{}\n{}",
            vm("restart = \"always\"\nfirmware = \"bios\"\ncache = \"writeback\""),
            "[[vms]]\nname = \"db\"\ndisk = \"/dev/disk/by-id/wwn-0x5000c500a1b2c3d4\"\nautostart = false\n"
        ))
        .unwrap();
        let vms = &loaded.profile.vms;
        assert_eq!(vms.len(), 2, "a child's [[vms]] replaces the parent's");
        let web = conf(0, &vms[0]);
        assert!(
            web.contains("restart=always\n") && web.contains("vars_template=''\n"),
            "{web}"
        );
        assert!(
            !web.contains("pflash") && web.contains("cache=writeback"),
            "{web}"
        );
        let db = conf(1, &vms[1]);
        assert!(db.contains("autostart=no\nrestart=on-failure\n"), "{db}");
        assert!(db.contains("map=''\n") && db.contains("taps=''\n"), "{db}");
        assert!(
            db.contains("serial=dev-disk-by-id-wwn-0x5000c500a1b2c3d4"),
            "{db}"
        );
        let services = crate::services::profile_services(&loaded.profile);
        assert!(services.contains_key("vm-web") && services.contains_key("vm-db"));
        assert!(!services.contains_key("vm-guest"));
    }

    #[test]
    fn vm_values_are_refused_at_their_line() {
        for (extra, at, says) in [
            ("", "", ""),
            (
                "name = \"Web\"",
                "p.toml:3:1: key `vms[0].name`",
                "not a VM name",
            ),
            (
                "disk = \"rack9\"",
                "p.toml:4:1: key `vms[0].disk`",
                "no multipath map `rack9`: the node's map is `kvm`",
            ),
            (
                "disk = \"/etc/passwd\"",
                "key `vms[0].disk`",
                "not a block device path under /dev/",
            ),
            (
                "memory_mib = 16",
                "key `vms[0].memory_mib`",
                "64 to 1048576 MiB",
            ),
            ("cpus = 0", "key `vms[0].cpus`", "1 to 255"),
            (
                "cache = \"unsafe\"",
                "p.toml:6:9",
                "unknown variant `unsafe`",
            ),
            (
                "restart = \"sometimes\"",
                "p.toml:6:11",
                "unknown variant `sometimes`",
            ),
            ("cpu = 2", "p.toml:6:1", "unknown field `cpu`"),
        ] {
            let mut body = vm("");
            if let Some((key, _)) = extra.split_once(" = ")
                && ["name", "disk"].contains(&key)
            {
                let line = body
                    .lines()
                    .find(|line| line.starts_with(&format!("{key} =")))
                    .unwrap()
                    .to_string();
                body = body.replace(&line, extra);
            } else {
                body.push_str(extra);
                body.push('\n');
            }
            match load_machine(&body) {
                Ok(_) => assert!(at.is_empty(), "`{extra}` was accepted"),
                Err(error) => {
                    assert!(!at.is_empty(), "`{extra}`: {error}");
                    assert!(
                        error.contains(at) && error.contains(says),
                        "`{extra}`: expected `{at}` and `{says}` in: {error}"
                    );
                }
            }
        }
    }

    #[test]
    fn nics_need_a_bridge_of_the_node_and_a_unicast_mac_of_their_own() {
        for (nic, says) in [
            (
                "{ bridge = \"br9\", mac = \"52:54:00:00:0c:01\" }",
                "no bridge `br9` in network.bridges",
            ),
            (
                "{ bridge = \"br0\", mac = \"52:54:00:00:0c\" }",
                "is not a MAC address",
            ),
            (
                "{ bridge = \"br0\", mac = \"01:00:5e:00:00:01\" }",
                "multicast",
            ),
            (
                "{ bridge = \"br0\", mac = \"52:54:00:00:0A:20\" }",
                "already the MAC of another NIC",
            ),
        ] {
            let body = vm("").replace(
                "[{ bridge = \"br0\", mac = \"52:54:00:00:0c:01\" }]",
                &format!("[{nic}]"),
            );
            let error = load_machine(&body).unwrap_err();
            assert!(
                error.contains("p.toml:5:1: key `vms[0].nics[0]."),
                "{error}"
            );
            assert!(error.contains(says), "expected `{says}` in: {error}");
        }
        let twice = format!("{}{}", vm(""), vm("").replace("0c:01", "0c:02"));
        let error = load_machine(&twice).unwrap_err();
        assert!(
            error.contains("key `vms[1].name`") && error.contains("a second VM named `web`"),
            "{error}"
        );
        let shared = format!(
            "{}{}",
            vm(""),
            vm("")
                .replace("0c:01", "0c:02")
                .replace("\"web\"", "\"db\"")
        );
        let error = load_machine(&shared).unwrap_err();
        assert!(
            error.contains("key `vms[1].disk`")
                && error.contains("VM `web` runs from /dev/mapper/kvm already"),
            "{error}"
        );
    }

    #[test]
    fn a_vm_needs_qemu_and_a_uefi_vm_ovmf() {
        let dir = tempfile::tempdir().unwrap();
        let profile = |packages: &str, firmware: &str| {
            format!(
                "[packages]\ninclude = [{packages}]\n[[network.bridges]]\nname = \"br0\"\n\
                 [[vms]]\nname = \"a\"\ndisk = \"/dev/vdb\"\nfirmware = \"{firmware}\"\n"
            )
        };
        let load = |text: String| {
            std::fs::write(dir.path().join("p.toml"), text).unwrap();
            profile::load(dir.path(), "p").map_err(|error| error.to_string())
        };
        let error = load(profile("\"busybox\"", "bios")).unwrap_err();
        assert!(
            error.contains("needs the package `qemu-system-x86`"),
            "{error}"
        );
        let error = load(profile("\"busybox\", \"qemu-system-x86\"", "uefi")).unwrap_err();
        assert!(
            error.contains("needs the package `ovmf`: add it to packages.include"),
            "{error}"
        );
        assert!(error.contains("key `vms[0].firmware`"), "{error}");
        load(profile("\"busybox\", \"qemu-system-x86\"", "bios")).unwrap();
    }

    /// A folder in which the real `vm-run` runs under dash: a conf file
    /// whose `run_qemu` is a stand-in exiting with the statuses of
    /// `exits` in turn (`stuck`: it says "KVM internal error" and stays
    /// up, as QEMU does with a paused guest), a bootable disk file on a map that a stand-in
    /// `multipathd` reports active, and a console file.
    struct VmRunRoot {
        dir: tempfile::TempDir,
    }

    impl VmRunRoot {
        fn new(restart: &str, exits: &[&str]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = |name: &str| dir.path().join(name);
            let mut disk = vec![0u8; 512];
            disk[510..].copy_from_slice(&[0x55, 0xaa]);
            std::fs::write(path("disk"), disk).unwrap();
            std::fs::create_dir(path("bin")).unwrap();
            let fake = |name: &str, body: &str| {
                let file = path("bin").join(name);
                std::fs::write(&file, format!("#!/bin/sh\n{body}\n")).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
            };
            fake("multipathd", "echo 'lun active'");
            fake("dmesg", "echo 'Hypervisor detected: KVM'");
            std::fs::write(path("exits"), exits.join("\n") + "\n").unwrap();
            let conf = format!(
                "run_dir={run}\ndisk={disk}\nmap=lun\nautostart=yes\nrestart={restart}\n\
                 stop_timeout=5\ntaps=''\nvars_template=''\n\
                 run_qemu() {{\n  exec sh -c 'n=$(head -n 1 {exits}); sed -i 1d {exits}; \
                 echo \"$*\" >> {args}; [ \"$n\" != stuck ] || {{ echo KVM internal error >&2; \
                 exec sleep 60; }}; exit ${{n:-0}}' qemu \"$@\"\n}}\n",
                run = path("run").display(),
                disk = path("disk").display(),
                exits = path("exits").display(),
                args = path("args").display(),
            );
            std::fs::write(path("vm.conf"), conf).unwrap();
            std::fs::write(path("console"), "").unwrap();
            Self { dir }
        }

        fn file(&self, name: &str) -> String {
            std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
        }

        /// Runs the image's `applbuild-vm` with `args` on this folder's VM.
        fn applbuild_vm(&self, args: &[&str]) -> std::process::Output {
            let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../rootfs-overlay/vms/usr/sbin/applbuild-vm");
            Command::new("dash")
                .arg(script)
                .args(args)
                .env("APPLBUILD_PATH", std::env::var("PATH").unwrap())
                .env("APPLBUILD_VM_CONF_DIR", self.dir.path())
                .output()
                .expect("dash runs (scripts/host-setup installs it)")
        }

        /// Writes `text` into the run folder's file `name`.
        fn set(&self, name: &str, text: &str) {
            let run = self.dir.path().join("run");
            std::fs::create_dir_all(&run).unwrap();
            std::fs::write(run.join(name), text).unwrap();
        }

        /// Runs `vm-run vm` until the state is `state` (at most 15 s),
        /// stops it and returns the console.
        fn run_until(&self, state: &str) -> String {
            let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../rootfs-overlay/vms/usr/lib/applbuild/vm-run");
            let path = format!(
                "{}:{}",
                self.dir.path().join("bin").display(),
                std::env::var("PATH").unwrap()
            );
            // Its own process group: the console-linking subshell goes too.
            let mut child = Command::new("dash")
                .process_group(0)
                .arg(script)
                .arg("vm")
                .env("APPLBUILD_PATH", path)
                .env("APPLBUILD_VM_CONF_DIR", self.dir.path())
                .env("APPLBUILD_CONSOLE", self.dir.path().join("console"))
                .spawn()
                .expect("dash runs (scripts/host-setup installs it)");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while self.file("run/state").trim() != state && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let group = format!("-{}", child.id());
            Command::new("kill")
                .args(["-KILL", "--", &group])
                .status()
                .unwrap();
            child.wait().unwrap();
            let console = self.file("console");
            assert_eq!(self.file("run/state").trim(), state, "{console}");
            console
        }
    }

    #[test]
    fn on_failure_restarts_a_crashed_vm_and_holds_one_that_powered_off() {
        let root = VmRunRoot::new("on-failure", &["137", "0"]);
        let console = root.run_until("exited-0");
        assert_eq!(root.file("run/restarts").trim(), "1", "{console}");
        assert!(
            console.contains(
                "QEMU exited with status 137; starting it again in 1 s (restart = on-failure)"
            ),
            "{console}"
        );
        assert!(root.dir.path().join("run/held").exists(), "{console}");
        // Both starts had KVM, as on a node under a hypervisor the kernel knows.
        assert_eq!(root.file("args").matches("-accel kvm -cpu host").count(), 2);
    }

    #[test]
    fn never_holds_a_vm_after_its_first_exit() {
        let root = VmRunRoot::new("never", &["3"]);
        let console = root.run_until("exited-3");
        assert_eq!(root.file("run/restarts").trim(), "0", "{console}");
        assert!(
            console.contains("vm vm: running") && !console.contains("starting it again"),
            "{console}"
        );
    }

    #[test]
    fn a_blank_disk_is_waited_on() {
        let root = VmRunRoot::new("always", &[]);
        std::fs::write(root.dir.path().join("disk"), vec![0u8; 512]).unwrap();
        let console = root.run_until("waiting-for-os");
        assert!(
            root.file("args").is_empty(),
            "QEMU started on a blank disk: {console}"
        );
    }

    #[test]
    fn an_accelerator_asked_for_is_the_one_qemu_gets() {
        let root = VmRunRoot::new("never", &["0"]);
        root.set("restarts", "0\n");
        root.set("accel-wanted", "tcg\n");
        root.run_until("exited-0");
        assert!(
            root.file("args").contains("-accel tcg -cpu max"),
            "{}",
            root.file("args")
        );
        assert_eq!(root.file("run/accel").trim(), "tcg");
    }

    #[test]
    fn applbuild_vm_lists_starts_stops_and_sets_the_accelerator() {
        let root = VmRunRoot::new("never", &[]);
        root.set("state", "exited-3\n");
        root.set("held", "");
        root.set("restarts", "2\n");
        root.set("accel", "kvm\n");
        let text = |output: std::process::Output| {
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout).unwrap()
        };
        let list = text(root.applbuild_vm(&["list"]));
        let line = list
            .lines()
            .find(|line| line.starts_with("vm "))
            .unwrap_or_default();
        let words: Vec<&str> = line.split_whitespace().collect();
        let disk = root.dir.path().join("disk");
        assert_eq!(
            words,
            ["vm", "exited-3", "-", "kvm", "2", disk.to_str().unwrap()],
            "{list}"
        );

        let refused = root.applbuild_vm(&["accel", "vm", "fast"]);
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("accel is kvm or tcg, not 'fast'")
        );
        assert_eq!(
            text(root.applbuild_vm(&["accel", "vm", "tcg"])),
            "vm: tcg from its next start\n"
        );
        assert_eq!(root.file("run/accel-wanted"), "tcg\n");

        let started = text(root.applbuild_vm(&["start", "vm"]));
        assert_eq!(started, "vm: started (state: exited-3)\n");
        assert!(!root.dir.path().join("run/held").exists());
        assert_eq!(
            text(root.applbuild_vm(&["stop", "vm"])),
            "vm: not running\n"
        );
        assert!(
            root.dir.path().join("run/held").exists(),
            "a stop holds the VM"
        );

        let unknown = root.applbuild_vm(&["start", "db"]);
        assert!(
            String::from_utf8_lossy(&unknown.stderr).contains("no VM db (the profile's VMs: vm")
        );
    }

    #[test]
    fn a_qemu_stuck_on_a_kvm_internal_error_is_restarted() {
        let root = VmRunRoot::new("on-failure", &["stuck", "0"]);
        let console = root.run_until("exited-0");
        assert!(
            console.contains("KVM internal error (qemu.log): stopping QEMU"),
            "{console}"
        );
        assert!(console.contains("QEMU exited with status 137"), "{console}");
        assert_eq!(root.file("run/restarts").trim(), "1", "{console}");
    }
}
