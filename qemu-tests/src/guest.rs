//! The guest VM of S6: the `guest` image (profiles/guest.toml) written onto
//! the hypervisor's multipath map and booted there by the hypervisor's own
//! QEMU, straight from the map's partitions, with its NIC on br0. The suite
//! reaches it from the hypervisor node through the guest's control port.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use applbuild::boot::READY_MARKER;
use applbuild::profile::LoadedProfile;
use applbuild_vm::qemu::{Accel, BootSource, Disk, DiskCache, NetBackend, Nic, Serial, VmSpec};
use applbuild_vm::qga::ExecOutput;
use base64::Engine;

use crate::cluster::Node;
use crate::waits::{Scale, wait_until};

/// Profile name of the guest.
pub const GUEST: &str = "guest";
/// Serial of the read-only disk that carries the guest's `disk.img` into the
/// hypervisor node (`/dev/disk/by-id/virtio-guest-image` there).
pub const IMAGE_DISK_SERIAL: &str = "guest-image";
/// Folder of the guest's QEMU files inside the hypervisor node.
pub const RUN_DIR: &str = "/run/applbuild-vm";
/// TCP port of the guest's control service (profiles/guest.toml).
const CONTROL_PORT: u16 = 5000;
/// The guest NIC's tap device, a port of br0.
const TAP: &str = "vm0";
/// Partition of `disk.img` that holds the workload's data (`/dev/vda3`).
pub const DATA_PARTITION: u32 = 3;

/// How the guest's CPU runs inside the hypervisor node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestAccel {
    /// The node's /dev/kvm (nested virtualisation; under TCG the node
    /// emulates AMD SVM).
    Kvm,
    /// QEMU's emulator inside the node.
    Tcg,
}

/// A running guest.
pub struct Guest {
    /// The guest's address on br0.
    pub ip: String,
    /// How its CPU runs.
    pub accel: GuestAccel,
    /// Seconds from starting its QEMU to its ready line.
    pub boot_to_ready_s: f64,
    /// Bytes of its console already scanned.
    console_scanned: usize,
}

/// The guest's multipath map and its partitions, as the hypervisor names them.
pub fn map_device(alias: &str) -> String {
    format!("/dev/mapper/{alias}")
}

/// Partition `n` of the map (kpartx names them `<alias>-part<n>`).
pub fn map_partition(alias: &str, n: u32) -> String {
    format!("/dev/mapper/{alias}-part{n}")
}

/// Writes the guest image from its read-only disk onto the multipath map
/// and maps its partitions; returns the seconds the copy took.
pub fn install(hypervisor: &mut Node, alias: &str) -> Result<f64> {
    let map = map_device(alias);
    let source = format!("/dev/disk/by-id/virtio-{IMAGE_DISK_SERIAL}");
    let started = Instant::now();
    let output = hypervisor.exec(
        &format!(
            "kpartx -d -p -part {map} >/dev/null 2>&1; \
             dd if={source} of={map} bs=1M oflag=direct conv=fsync 2>&1 && \
             kpartx -a -s -p -part {map} && ls {map}-part*"
        ),
        Duration::from_secs(240),
    )?;
    ensure!(
        output.success(),
        "installing the guest image onto {map} failed: {}{}",
        output.stdout,
        output.stderr
    );
    Ok(started.elapsed().as_secs_f64())
}

/// The script that starts the guest's QEMU in the hypervisor node.
const START_SCRIPT: &str = include_str!("../scripts/guest-start.sh");

/// The guest's VM inside the hypervisor node: booted from the map (its
/// kernel and initrd copied into RAM by the start script), the whole map its
/// virtio disk, its NIC on the tap. `-no-reboot`: a guest that resets itself
/// (nested on TCG's SVM it now and then does) stops there, so a failure
/// shows it instead of a fresh boot.
fn guest_spec(loaded: &LoadedProfile, alias: &str, accel: GuestAccel) -> Result<VmSpec> {
    let profile = &loaded.profile;
    let nic = profile
        .network
        .interfaces
        .first()
        .ok_or_else(|| anyhow!("the guest profile has no NIC"))?;
    let mac = nic.mac.clone().ok_or_else(|| {
        anyhow!(
            "the guest profile's interface `{}` has no `mac`: QEMU needs one for every NIC",
            nic.name
        )
    })?;
    let accel = match accel {
        GuestAccel::Kvm => Accel::Kvm,
        GuestAccel::Tcg => Accel::Tcg,
    };
    let boot = BootSource::Kernel {
        kernel: format!("{RUN_DIR}/vmlinuz").into(),
        initrd: Some(format!("{RUN_DIR}/initrd.img").into()),
        cmdline: profile.kernel.cmdline.join(" "),
    };
    let mut spec = VmSpec::new(GUEST, boot, accel);
    spec.memory_mib = profile.qemu.memory_mib;
    spec.cpus = profile.qemu.cpus;
    spec.tcg_cpu = profile.qemu.tcg_cpu.clone();
    spec.disks.push(Disk {
        path: map_device(alias).into(),
        serial: "root".into(),
        read_only: false,
        cache: DiskCache::Direct,
    });
    spec.nics.push(Nic {
        id: "net0".into(),
        mac,
        backend: NetBackend::Tap { ifname: TAP.into() },
        without_rom: true,
    });
    spec.serial = Serial::File(format!("{RUN_DIR}/console.log").into());
    spec.pidfile = Some(format!("{RUN_DIR}/qemu.pid").into());
    Ok(spec)
}

/// Stops a guest left from an earlier scenario, if any, and its tap.
pub fn stop(hypervisor: &mut Node) -> Result<()> {
    hypervisor.sh(&format!(
        "if [ -s {RUN_DIR}/qemu.pid ]; then kill $(cat {RUN_DIR}/qemu.pid) 2>/dev/null; \
           while kill -0 $(cat {RUN_DIR}/qemu.pid) 2>/dev/null; do sleep 0.2; done; fi; \
         rm -f {RUN_DIR}/qemu.pid; ip link del {TAP} 2>/dev/null; true"
    ))?;
    Ok(())
}

impl Guest {
    /// Boots the installed guest in the hypervisor node, its NIC on br0,
    /// and waits for its ready line and its control port.
    pub fn boot(
        hypervisor: &mut Node,
        loaded: &LoadedProfile,
        alias: &str,
        scale: Scale,
    ) -> Result<Self> {
        let ip = guest_ip(loaded)?;
        let kvm = hypervisor
            .exec(
                "test -c /dev/kvm && test -w /dev/kvm",
                Duration::from_secs(10),
            )?
            .success();
        let accel = if kvm {
            GuestAccel::Kvm
        } else {
            GuestAccel::Tcg
        };
        stop(hypervisor)?;
        let started = Instant::now();
        start_qemu(hypervisor, &guest_spec(loaded, alias, accel)?, alias, scale)?;
        // A guest boots several times slower nested than on the host.
        let timeout = scale.secs(150);
        wait_ready(hypervisor, accel, timeout)?;
        let guest = Self {
            ip,
            accel,
            boot_to_ready_s: started.elapsed().as_secs_f64(),
            console_scanned: 0,
        };
        let output = guest.exec(hypervisor, "echo control-ok", Duration::from_secs(30))?;
        ensure!(
            output.stdout.contains("control-ok"),
            "the guest's control port answered `{}`",
            output.stdout
        );
        Ok(guest)
    }

    /// Runs `command` in the guest through its control port, from the
    /// hypervisor node; `timeout` is nominal (scaled like the node's).
    pub fn exec(
        &self,
        hypervisor: &mut Node,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(command);
        let output = hypervisor.exec(
            &format!("echo {encoded} | nc -w 10 {} {CONTROL_PORT}", self.ip),
            timeout,
        )?;
        parse_reply(&output.stdout).with_context(|| {
            format!(
                "guest: no reply to `{command}` (nc exit {}, {})",
                output.exit_code,
                output.stderr.trim()
            )
        })
    }

    /// Runs a command that must succeed within 60 s (nominal) and returns
    /// its output.
    pub fn sh(&self, hypervisor: &mut Node, command: &str) -> Result<String> {
        let output = self.exec(hypervisor, command, Duration::from_secs(60))?;
        if !output.success() {
            bail!(
                "guest: `{command}` exited with {}:\n{}",
                output.exit_code,
                output.stdout
            );
        }
        Ok(output.stdout)
    }

    /// Console text printed since the previous call.
    pub fn new_console(&mut self, hypervisor: &mut Node) -> Result<String> {
        let text = hypervisor.sh(&format!(
            "tail -c +{} {RUN_DIR}/console.log",
            self.console_scanned + 1
        ))?;
        self.console_scanned += text.len();
        Ok(text)
    }
}

/// The guest's address on br0, from its profile.
fn guest_ip(loaded: &LoadedProfile) -> Result<String> {
    loaded
        .profile
        .network
        .interfaces
        .first()
        .and_then(|nic| nic.address.as_deref())
        .map(|address| address.split('/').next().unwrap_or(address).to_string())
        .ok_or_else(|| anyhow!("the guest profile's NIC has no address"))
}

/// Runs the start script and waits until QEMU has written its pid file
/// (QEMU runs in the background, its errors in qemu.log).
fn start_qemu(hypervisor: &mut Node, spec: &VmSpec, alias: &str, scale: Scale) -> Result<()> {
    let kernel = map_partition(alias, 1);
    let initrd = map_partition(alias, 2);
    let command = spec.shell_command();
    let output = hypervisor.exec_script(
        "guest-start.sh",
        START_SCRIPT,
        &[RUN_DIR, TAP, &kernel, &initrd, &command],
        Duration::from_secs(30),
    )?;
    ensure!(
        output.success(),
        "guest-start.sh exited with {}\nstdout:\n{}stderr:\n{}",
        output.exit_code,
        output.stdout,
        output.stderr
    );
    let started_qemu = wait_until(scale.secs(30), Duration::from_millis(500), || {
        hypervisor
            .exec(
                &format!("test -s {RUN_DIR}/qemu.pid"),
                Duration::from_secs(10),
            )
            .is_ok_and(|output| output.success())
    });
    if !started_qemu {
        let log = hypervisor
            .sh(&format!("cat {RUN_DIR}/qemu.log"))
            .unwrap_or_default();
        bail!("the guest's QEMU did not start:\n{log}");
    }
    Ok(())
}

/// Waits for the guest's ready line on its console (a file in the node);
/// fails with the console's last lines if QEMU exits or time runs out.
fn wait_ready(hypervisor: &mut Node, accel: GuestAccel, timeout: Duration) -> Result<()> {
    let mut alive = true;
    let ready = wait_until(timeout, Duration::from_secs(1), || {
        let probe = hypervisor.exec(
            &format!(
                "kill -0 $(cat {RUN_DIR}/qemu.pid) || echo EXITED; grep -c {READY_MARKER} {RUN_DIR}/console.log"
            ),
            Duration::from_secs(20),
        );
        match probe {
            Ok(output) if output.stdout.contains("EXITED") => {
                alive = false;
                true
            }
            Ok(output) => output.stdout.trim().parse::<u32>().is_ok_and(|n| n > 0),
            Err(_) => false,
        }
    });
    if ready && alive {
        return Ok(());
    }
    let console = hypervisor
        .sh(&format!(
            "tail -n 30 {RUN_DIR}/console.log; echo '--- qemu.log'; cat {RUN_DIR}/qemu.log"
        ))
        .unwrap_or_default();
    bail!(
        "the guest ({accel:?}) {} within {timeout:?}; last console lines:\n{console}",
        if alive {
            format!("printed no `{READY_MARKER}`")
        } else {
            "QEMU exited".to_string()
        }
    );
}

/// Splits the control port's reply, `OUTPUT\n@@status N\n`, into output
/// and exit status. A reply cut off before its status line is `None`.
pub fn parse_reply(reply: &str) -> Option<ExecOutput> {
    let body = reply.strip_suffix('\n')?;
    let (stdout, status) = body.rsplit_once("\n@@status ")?;
    let exit_code = status.trim().parse().ok()?;
    Some(ExecOutput {
        exit_code,
        stdout: stdout.to_string(),
        stderr: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_split_into_output_and_status() {
        let reply = parse_reply("a\nb\n\n@@status 3\n").unwrap();
        assert_eq!(reply.exit_code, 3);
        assert_eq!(reply.stdout, "a\nb\n");
        assert_eq!(parse_reply("\n@@status 0\n").unwrap().stdout, "");
        assert!(
            parse_reply("a\nb\n").is_none(),
            "a cut-off reply has no status"
        );
        assert!(parse_reply("a\n@@status").is_none(), "nor a cut-off status");
    }

    #[test]
    fn output_without_its_last_newline_keeps_the_status_readable() {
        // `head -c` of a log ends mid-line: the status still parses, and the
        // output is what the command printed.
        let reply = parse_reply("1+0 records in\n1\n@@status 0\n").unwrap();
        assert_eq!(reply.exit_code, 0);
        assert_eq!(reply.stdout, "1+0 records in\n1");
    }

    #[test]
    fn partitions_follow_kpartx_names() {
        assert_eq!(map_partition("kvm", 3), "/dev/mapper/kvm-part3");
    }
}
