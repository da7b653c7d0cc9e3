//! `applbuild boot`: runs a built image in QEMU with the profile's NICs and
//! disks, either on the terminal or headless with health checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::boot_phases::{BootPhase, boot_phases};
use crate::profile::{Check, LoadedProfile};
use applbuild_rootfs::templates::{Renderer, TemplateError};
use applbuild_vm::console::{fatal_lines, not_ready_detail};
use applbuild_vm::machine::{QemuError, RunningVm};
use applbuild_vm::pvh;
use applbuild_vm::qemu::{
    Accel, AccelChoice, BootSource, Disk, DiskCache, NetBackend, Nic, UefiBoot, VmSpec,
};
use applbuild_vm::qga::{ExecOutput, QgaClient, QgaError};

use crate::services::FAILED_MARKER;
pub use crate::services::READY_MARKER;

/// The `--accel` option of `applbuild boot` and `applbuild-test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelArg {
    /// KVM if a probe boot under KVM works, else TCG.
    Auto,
    /// KVM, without probing.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl From<AccelArg> for AccelChoice {
    fn from(arg: AccelArg) -> Self {
        match arg {
            AccelArg::Auto => AccelChoice::Auto,
            AccelArg::Kvm => AccelChoice::Kvm,
            AccelArg::Tcg => AccelChoice::Tcg,
        }
    }
}

/// Where the host keeps Debian's `ovmf` firmware.
pub const OVMF_DIR: &str = "/usr/share/OVMF";

/// What `applbuild boot` starts the machine from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFrom {
    /// QEMU loads `vmlinuz` and `initrd.img` itself (fastest).
    Kernel,
    /// OVMF boots `<profile>.img` from a disk, as a server's firmware would.
    Disk {
        /// OVMF with Secure Boot enforced and Debian's snakeoil keys enrolled.
        secure_boot: bool,
    },
}

impl BootFrom {
    /// The folder in the image folder that holds a boot's sockets and
    /// serial log: one per way of booting, so a kernel boot and a disk boot
    /// of one image can run side by side.
    pub fn run_dir_name(self) -> &'static str {
        match self {
            Self::Kernel => "run",
            Self::Disk { secure_boot: false } => "run-disk",
            Self::Disk { secure_boot: true } => "run-secure-boot",
        }
    }
}

/// What can go wrong booting an image.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// QEMU gives every NIC the profile's MAC, and this one has none.
    #[error(
        "profile `{profile}`: interface `{interface}` has no `mac`: QEMU needs one for every NIC (it is named by `driver` or `pci_path` on hardware)"
    )]
    NoMac {
        /// Profile name.
        profile: String,
        /// The interface's name.
        interface: String,
    },
    /// QEMU could not be run.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// The kernel could not be unpacked for a PVH boot.
    #[error(transparent)]
    Pvh(#[from] pvh::PvhError),
    /// A firmware file of Debian's `ovmf` is missing or cannot be copied.
    #[error(
        "{path}: {source} (the disk boot needs Debian's ovmf package: scripts/host-setup installs it)"
    )]
    Firmware {
        /// The firmware file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--disk` but the image folder holds no disk image.
    #[error("{0} is missing: the profile has no [image.uefi] table, so no disk image is built")]
    NoDiskImage(PathBuf),
    /// A disk image could not be made.
    #[error("cannot create disk {path}: {source}")]
    Disk {
        /// The disk file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A service of the image failed to start (its `APPLBUILD-FAILED` line
    /// came before the ready line).
    #[error("{profile}: {line}; serial log: {log}")]
    ServiceFailed {
        /// Profile.
        profile: String,
        /// The image's `APPLBUILD-FAILED <service>: <reason>` line.
        line: String,
        /// The serial log.
        log: PathBuf,
    },
    /// The guest never printed its ready line.
    #[error("{profile}: no `{READY_MARKER}` line within {waited:?}; serial log: {log}{detail}")]
    NotReady {
        /// Profile.
        profile: String,
        /// How long we waited.
        waited: Duration,
        /// Serial log file.
        log: PathBuf,
        /// The kernel's fatal lines, if any, and the console's last lines.
        detail: String,
    },
    /// The guest agent failed.
    #[error(transparent)]
    Agent(#[from] QgaError),
    /// A check's command or expectation is not a valid template.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// The result of one health check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Check name from the profile.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// The command as run.
    pub command: String,
    /// Exit code, output and missing expectations when it failed.
    pub detail: String,
    /// How long it took, in seconds.
    pub seconds: f64,
}

/// The result of `boot --check`.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// Profile.
    pub profile: String,
    /// Accelerator used.
    pub accel: Accel,
    /// From starting QEMU to the ready line, in seconds.
    pub boot_to_ready_seconds: f64,
    /// The guest's own uptime when it printed the ready line.
    pub guest_uptime_seconds: Option<f64>,
    /// Where the time until the ready line went (empty without the
    /// guest's uptime).
    pub phases: Vec<BootPhase>,
    /// Each check.
    pub checks: Vec<CheckResult>,
    /// Serial console log.
    pub serial_log: PathBuf,
    /// Whether every check passed.
    pub passed: bool,
}

/// Describes the VM for a profile's image: one NIC per profile interface on
/// the network `backend_for` chooses, the profile's disks created in `run_dir`.
pub fn vm_spec(
    loaded: &LoadedProfile,
    image_dir: &Path,
    run_dir: &Path,
    accel: Accel,
    backend_for: &dyn Fn(&str) -> NetBackend,
) -> Result<VmSpec, BootError> {
    vm_spec_from(
        loaded,
        image_dir,
        run_dir,
        accel,
        backend_for,
        BootFrom::Kernel,
    )
}

/// [`vm_spec`], starting from the kernel or, through OVMF, from the disk image.
pub fn vm_spec_from(
    loaded: &LoadedProfile,
    image_dir: &Path,
    run_dir: &Path,
    accel: Accel,
    backend_for: &dyn Fn(&str) -> NetBackend,
    from: BootFrom,
) -> Result<VmSpec, BootError> {
    let profile = &loaded.profile;
    let mut disks = Vec::new();
    for disk in &profile.qemu.disks {
        let path = run_dir.join(format!("{}.raw", disk.name));
        if !path.exists() {
            let file = std::fs::File::create(&path).map_err(|source| BootError::Disk {
                path: path.clone(),
                source,
            })?;
            file.set_len(disk.size_mib << 20)
                .map_err(|source| BootError::Disk {
                    path: path.clone(),
                    source,
                })?;
        }
        disks.push(Disk {
            path,
            serial: disk.name.clone(),
            read_only: false,
            cache: DiskCache::Unsafe,
        });
    }
    let nics = profile
        .network
        .interfaces
        .iter()
        .map(|interface| {
            Ok(Nic {
                id: interface.network.clone(),
                mac: interface.mac.clone().ok_or_else(|| BootError::NoMac {
                    profile: loaded.name.clone(),
                    interface: interface.name.clone(),
                })?,
                backend: backend_for(&interface.network),
                without_rom: false,
            })
        })
        .collect::<Result<_, BootError>>()?;
    let boot = match from {
        BootFrom::Kernel => BootSource::Kernel {
            kernel: direct_boot_kernel(image_dir, run_dir)?,
            initrd: Some(image_dir.join("initrd.img")),
            cmdline: profile.kernel.cmdline.join(" "),
        },
        BootFrom::Disk { secure_boot } => {
            let disk = image_dir.join(format!("{}.img", loaded.name));
            BootSource::Uefi(uefi_boot(disk, run_dir, secure_boot)?)
        }
    };
    let mut spec = VmSpec::new(&loaded.name, boot, accel);
    spec.memory_mib = profile.qemu.memory_mib;
    spec.cpus = profile.qemu.cpus;
    spec.tcg_cpu = profile.qemu.tcg_cpu.clone();
    spec.nics = nics;
    spec.disks = disks;
    spec.qmp_socket = Some(run_dir.join("qmp.sock"));
    spec.qga_socket = Some(run_dir.join("qga.sock"));
    Ok(spec)
}

/// The image's kernel for a boot without firmware: its ELF through PVH,
/// unpacked into `run_dir` once (about 3 s sooner under TCG), or the
/// bzImage itself when the kernel has no PVH entry (or is missing, which
/// QEMU then reports).
fn direct_boot_kernel(image_dir: &Path, run_dir: &Path) -> Result<PathBuf, BootError> {
    let vmlinuz = image_dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    Ok(pvh::pvh_kernel(&vmlinuz, run_dir)?.unwrap_or(vmlinuz))
}

/// OVMF for `disk`: the host's firmware code, and a fresh copy of its
/// variable store in `run_dir` (each boot starts from the shipped variables,
/// as a new server does).
fn uefi_boot(disk: PathBuf, run_dir: &Path, secure_boot: bool) -> Result<UefiBoot, BootError> {
    if !disk.is_file() {
        return Err(BootError::NoDiskImage(disk));
    }
    let (code, vars) = if secure_boot {
        ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.snakeoil.fd")
    } else {
        ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
    };
    let code = Path::new(OVMF_DIR).join(code);
    let shipped_vars = Path::new(OVMF_DIR).join(vars);
    if !code.is_file() {
        return Err(BootError::Firmware {
            path: code,
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let vars = run_dir.join("ovmf-vars.fd");
    std::fs::copy(&shipped_vars, &vars).map_err(|source| BootError::Firmware {
        path: shipped_vars,
        source,
    })?;
    Ok(UefiBoot {
        code,
        vars,
        disk,
        secure_boot,
    })
}

/// A hub per network name, so each NIC of a lone VM has a carrier and a
/// network of its own.
pub fn hub_backends(loaded: &LoadedProfile) -> impl Fn(&str) -> NetBackend + use<> {
    let hubs: BTreeMap<String, u32> = loaded
        .profile
        .network
        .interfaces
        .iter()
        .enumerate()
        .map(|(index, interface)| (interface.network.clone(), index as u32))
        .collect();
    move |network: &str| NetBackend::Hub {
        hub: hubs.get(network).copied().unwrap_or(0),
    }
}

/// Boots headless, waits for the ready line, runs the profile's checks over
/// the guest agent, then powers the VM off.
pub fn check(
    loaded: &LoadedProfile,
    spec: VmSpec,
    run_dir: &Path,
    ready_timeout: Duration,
) -> Result<BootReport, BootError> {
    let accel = spec.accel;
    let qga_socket = spec
        .qga_socket
        .clone()
        .expect("a test build's VM has the agent's socket");
    let serial_log = run_dir.join("serial.log");
    let mut vm = RunningVm::start(spec, &serial_log)?;
    let first = vm.wait_for_any_line(&[READY_MARKER, FAILED_MARKER], ready_timeout);
    if let Some(failed) = first.as_ref().filter(|line| line.contains(FAILED_MARKER)) {
        return Err(BootError::ServiceFailed {
            profile: loaded.name.clone(),
            line: failed.trim().to_owned(),
            log: serial_log,
        });
    }
    let Some(ready_line) = first else {
        return Err(BootError::NotReady {
            profile: loaded.name.clone(),
            waited: ready_timeout,
            log: serial_log,
            detail: not_ready_detail(&vm.console()),
        });
    };
    let boot_to_ready_seconds = vm.started.elapsed().as_secs_f64();
    let guest_uptime_seconds = ready_line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("uptime="))
        .and_then(|value| value.parse().ok());

    let phases = guest_uptime_seconds.map_or_else(Vec::new, |uptime| {
        boot_phases(&vm.console(), uptime, boot_to_ready_seconds)
    });

    let command_timeout = Duration::from_secs(30 * u64::from(accel.timeout_scale()));
    let mut agent = QgaClient::connect(&qga_socket, command_timeout)?;
    let mut checks = run_checks(loaded, &mut agent, command_timeout)?;
    let fatal = fatal_lines(&vm.console());
    if !fatal.is_empty() {
        checks.push(CheckResult {
            name: "serial console free of kernel errors".into(),
            passed: false,
            command: String::new(),
            detail: fatal.join("\n"),
            seconds: 0.0,
        });
    }
    // The guest's power-off is not awaited: nothing on the initramfs needs
    // flushing, and QEMU exits on the halt (-no-reboot).
    let _ = agent.exec_shell("poweroff -f &", Duration::from_secs(5));
    vm.stop(Duration::from_secs(10));
    let passed = checks.iter().all(|check| check.passed);
    Ok(BootReport {
        profile: loaded.name.clone(),
        accel,
        boot_to_ready_seconds,
        guest_uptime_seconds,
        phases,
        checks,
        serial_log,
        passed,
    })
}

/// Runs every health check of the profile, in order.
fn run_checks(
    loaded: &LoadedProfile,
    agent: &mut QgaClient,
    timeout: Duration,
) -> Result<Vec<CheckResult>, BootError> {
    let renderer = Renderer::new(&check_context(loaded));
    let mut results = Vec::new();
    for (index, check) in loaded.profile.checks.iter().enumerate() {
        let command = renderer.render(&format!("checks[{index}].command"), &check.command)?;
        let expectations = check
            .expect
            .iter()
            .enumerate()
            .map(|(n, text)| renderer.render(&format!("checks[{index}].expect[{n}]"), text))
            .collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        let output = agent.exec_shell(&command, timeout)?;
        results.push(check_result(
            check,
            command,
            &expectations,
            &output,
            started,
        ));
    }
    Ok(results)
}

/// A check passes when its command exits 0 and prints every expectation.
fn check_result(
    check: &Check,
    command: String,
    expectations: &[String],
    output: &ExecOutput,
    started: Instant,
) -> CheckResult {
    let missing: Vec<&String> = expectations
        .iter()
        .filter(|expected| !output.stdout.contains(expected.as_str()))
        .collect();
    let passed = output.success() && missing.is_empty();
    let detail = if passed {
        String::new()
    } else {
        format!(
            "exit code {}; missing {:?}\nstdout:\n{}stderr:\n{}",
            output.exit_code, missing, output.stdout, output.stderr
        )
    };
    CheckResult {
        name: check.name.clone(),
        passed,
        command,
        detail,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Template context of health checks and service commands: the typed
/// profile (every key present, unset ones null, so templates can test them)
/// plus `build.profile`.
pub fn check_context(loaded: &LoadedProfile) -> serde_json::Value {
    let mut context = serde_json::to_value(&loaded.profile).expect("profiles serialize to JSON");
    context["build"] = serde_json::json!({ "profile": loaded.name });
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_without_a_mac_cannot_boot_in_qemu() {
        let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles");
        let mut loaded = crate::profile::load(&profiles, "hypervisor").unwrap();
        let run_dir = tempfile::tempdir().unwrap();
        let backends = hub_backends(&loaded);
        assert!(
            vm_spec(
                &loaded,
                run_dir.path(),
                run_dir.path(),
                Accel::Tcg,
                &backends
            )
            .is_ok()
        );

        let interface = &mut loaded.profile.network.interfaces[1];
        interface.mac = None;
        interface.driver = Some("igb".into());
        let error = vm_spec(
            &loaded,
            run_dir.path(),
            run_dir.path(),
            Accel::Tcg,
            &backends,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("profile `hypervisor`: interface `eth1` has no `mac`"),
            "{error}"
        );
    }
}
