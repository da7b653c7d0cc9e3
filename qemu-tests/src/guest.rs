//! The guest VM of S6: the `guest` image (profiles/guest.toml), a UEFI disk
//! image, installed onto the hypervisor's multipath map with the node's own
//! `applbuild-vm install`, and started by the node itself: the hypervisor
//! profile declares it as its VM `guest` ([[vms]], docs/vms.md), which OVMF
//! boots from the map, its NIC on br0. The suite reaches it from the
//! hypervisor node through the guest's control port.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use applbuild::boot::READY_MARKER;
use applbuild::profile::LoadedProfile;
use applbuild_vm::qga::ExecOutput;
use base64::Engine;

use crate::cluster::Node;
use crate::waits::{Scale, wait_until};

/// Profile name of the guest, and the name of the VM that runs it.
pub const GUEST: &str = "guest";
/// Serial of the read-only disk that carries the guest's `guest.img` into
/// the hypervisor node (`/dev/disk/by-id/virtio-guest-image` there).
pub const IMAGE_DISK_SERIAL: &str = "guest-image";
/// Folder of the VM's files inside the hypervisor node (its console log,
/// QMP socket, QEMU's pid and state).
pub const RUN_DIR: &str = "/run/applbuild/vms/guest";
/// TCP port of the guest's control service (profiles/guest.toml).
const CONTROL_PORT: u16 = 5000;
/// Partition of `guest.img` that holds the workload's data (`/dev/vda2`:
/// the ESP is the first).
pub const DATA_PARTITION: u32 = 2;

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
    /// Seconds from the moment the node could start it to its ready line.
    pub boot_to_ready_s: f64,
    /// The pid of the QEMU the node started it in.
    pub qemu_pid: u32,
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

/// What `applbuild-vm install` did: how long it took and the sha256 it
/// read back from the map.
pub struct Installed {
    /// Seconds the install took (power-down of a running guest, copy, check).
    pub seconds: f64,
    /// The sha256 of the map's first bytes after the copy, as big as the image.
    pub sha256: String,
}

/// Installs the guest image from its read-only disk onto the VM's disk
/// with the node's `applbuild-vm install` (which stops the VM first and
/// lets the node start it after the check), then maps the partitions for
/// the suite's own reads.
pub fn install(hypervisor: &mut Node, alias: &str) -> Result<Installed> {
    let source = format!("/dev/disk/by-id/virtio-{IMAGE_DISK_SERIAL}");
    let map = map_device(alias);
    let started = Instant::now();
    let output = hypervisor.exec(
        &format!(
            "kpartx -d -p -part {map} >/dev/null 2>&1; applbuild-vm install {GUEST} {source} && \
             kpartx -a -s -p -part {map} && ls {map}-part*"
        ),
        Duration::from_secs(300),
    )?;
    ensure!(
        output.success(),
        "applbuild-vm install {GUEST} {source} failed: {}{}",
        output.stdout,
        output.stderr
    );
    let sha256 = output
        .stdout
        .split_once("sha256 ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(String::from)
        .with_context(|| format!("applbuild-vm install printed no sha256:\n{}", output.stdout))?;
    Ok(Installed {
        seconds: started.elapsed().as_secs_f64(),
        sha256,
    })
}

/// Asks the node to power the VM down and keep it stopped.
pub fn stop(hypervisor: &mut Node) -> Result<()> {
    hypervisor.sh(&format!("applbuild-vm stop {GUEST}"))?;
    Ok(())
}

/// What the node's `vm-run` says about the VM in its run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    /// The state word (`running`, `waiting-for-os`, `exited-1`…).
    pub state: String,
    /// QEMU's pid while it runs.
    pub pid: Option<u32>,
    /// The accelerator of QEMU's last start.
    pub accel: Option<GuestAccel>,
    /// Restarts since the node booted.
    pub restarts: u32,
}

/// Reads the VM's state, pid, accelerator and restart count at once.
pub fn status(hypervisor: &mut Node) -> Result<VmStatus> {
    let text = hypervisor.sh(&format!(
        "cd {RUN_DIR} && for f in state pid accel restarts; do echo \"$(cat $f 2>/dev/null)\"; done"
    ))?;
    Ok(parse_status(&text))
}

/// [`VmStatus`] from the four lines `state`, `pid`, `accel`, `restarts`
/// (an empty line: no such file).
fn parse_status(text: &str) -> VmStatus {
    let mut lines = text.lines().map(str::trim);
    let mut next = || lines.next().unwrap_or_default();
    let state = next().to_string();
    let pid = next().parse().ok();
    let accel = match next() {
        "kvm" => Some(GuestAccel::Kvm),
        "tcg" => Some(GuestAccel::Tcg),
        _ => None,
    };
    VmStatus {
        state,
        pid,
        accel,
        restarts: next().parse().unwrap_or_default(),
    }
}

/// How many bytes the VM's console log holds (0 before its first start).
pub fn console_len(hypervisor: &mut Node) -> Result<usize> {
    let text = hypervisor.sh(&format!(
        "stat -c %s {RUN_DIR}/console.log 2>/dev/null || echo 0"
    ))?;
    text.trim()
        .parse()
        .with_context(|| format!("the size of the guest's console log: {text}"))
}

impl Guest {
    /// Waits until the node has started the VM and the guest printed its
    /// ready line after the first `console_from` bytes of its console log,
    /// then until its control port answers.
    pub fn wait_started(
        hypervisor: &mut Node,
        loaded: &LoadedProfile,
        console_from: usize,
        scale: Scale,
    ) -> Result<Self> {
        let ip = guest_ip(loaded)?;
        let started = Instant::now();
        // Firmware, systemd-boot and the guest's kernel: several times slower nested.
        wait_ready(hypervisor, console_from, scale.secs(240))?;
        let status = status(hypervisor)?;
        let guest = Self {
            ip,
            accel: status
                .accel
                .context("the guest is ready and the node names no accelerator")?,
            boot_to_ready_s: started.elapsed().as_secs_f64(),
            qemu_pid: status
                .pid
                .context("the guest is ready and the node names no QEMU pid")?,
            console_scanned: console_from,
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

/// Waits for the guest's ready line in its console log after `from` bytes;
/// fails with the console's last lines if the node gives up on the VM
/// (state `exited-N` or `stopped`) or time runs out.
fn wait_ready(hypervisor: &mut Node, from: usize, timeout: Duration) -> Result<()> {
    let mut state = String::new();
    let mut last_line = String::new();
    let mut node_exited = false;
    let ready = wait_until(timeout, Duration::from_secs(1), || {
        // A node whose QEMU died answers no probe: say so at once.
        if hypervisor.vm.has_exited() {
            node_exited = true;
            return true;
        }
        let probe = hypervisor.exec(
            &format!(
                "cat {RUN_DIR}/state; tail -c +{start} {RUN_DIR}/console.log 2>/dev/null | grep -c {READY_MARKER}; \
                 tail -c +{start} {RUN_DIR}/console.log 2>/dev/null | tail -n 1",
                start = from + 1
            ),
            Duration::from_secs(20),
        );
        let Ok(output) = probe else { return false };
        let mut lines = output.stdout.lines();
        state = lines.next().unwrap_or_default().trim().to_string();
        let ready = lines
            .next()
            .is_some_and(|n| n.trim().parse::<u32>().is_ok_and(|n| n > 0));
        let line = lines.next().unwrap_or_default().trim().to_string();
        // A nested firmware boot is slow: say where it is while it goes.
        if !line.is_empty() && line != last_line {
            eprintln!("applbuild-test: guest console: {line}");
            last_line = line;
        }
        state.starts_with("exited") || state == "stopped" || ready
    });
    if node_exited {
        let console = hypervisor.vm.console();
        let tail: Vec<&str> = console.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "the hypervisor node's QEMU exited while its guest booted; its console ends:\n{}",
            tail.join("\n")
        );
    }
    if ready && !state.starts_with("exited") && state != "stopped" {
        return Ok(());
    }
    let console = hypervisor
        .sh(&format!(
            "applbuild-vm list; tail -n 30 {RUN_DIR}/console.log; echo '--- qemu.log'; cat {RUN_DIR}/qemu.log"
        ))
        .unwrap_or_default();
    bail!(
        "the guest (state `{state}`) printed no `{READY_MARKER}` within {timeout:?}; \
         last console lines:\n{console}"
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
    fn the_status_reads_the_files_vm_run_writes() {
        let running = parse_status("running\n829\nkvm\n2\n");
        assert_eq!(running.state, "running");
        assert_eq!(running.pid, Some(829));
        assert_eq!(running.accel, Some(GuestAccel::Kvm));
        assert_eq!(running.restarts, 2);
        let waiting = parse_status("waiting-for-os\n\n\n0\n");
        assert_eq!((waiting.pid, waiting.accel), (None, None));
    }

    /// The suite's run folder is the one the build gives the hypervisor's
    /// VM of that name.
    #[test]
    fn the_run_folder_is_the_profiles_vm() {
        let profiles = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let hypervisor = applbuild::profile::load(&profiles, "hypervisor").unwrap();
        let vm = hypervisor.profile.vms.iter().find(|vm| vm.name == GUEST);
        assert_eq!(
            vm.map(applbuild::vms::Vm::run_dir).as_deref(),
            Some(RUN_DIR)
        );
    }

    #[test]
    fn partitions_follow_kpartx_names() {
        assert_eq!(map_partition("kvm", 3), "/dev/mapper/kvm-part3");
    }
}
