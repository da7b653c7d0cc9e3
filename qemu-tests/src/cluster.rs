//! The two-node cluster under test: the storage node and the hypervisor node,
//! each with one NIC on SAN-A and one on SAN-B, booted once (both at once)
//! and shared by every scenario. Each node is driven through QMP (virtual
//! cables) and the QEMU guest agent (commands), and its serial console is
//! kept in a log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use applbuild::boot::{self, BootFrom, READY_MARKER};
use applbuild::profile::{self, LoadedProfile};
use applbuild::test_build;
use applbuild_secrets::Store;
use applbuild_vm::console::{fatal_lines, not_ready_detail};
use applbuild_vm::machine::RunningVm;
use applbuild_vm::qemu::{Accel, Disk, DiskCache, NetBackend};
use applbuild_vm::qga::{ExecOutput, QgaClient};
use applbuild_vm::qmp::QmpClient;
use applbuild_vm::runtime::block_on;

use crate::guest::{self, GUEST, Guest};
use crate::network::VdeSwitch;
use crate::waits::Scale;

/// Profile names of the two nodes.
pub const STORAGE: &str = "storage";
/// See [`STORAGE`].
pub const HYPERVISOR: &str = "hypervisor";

/// One booted VM and its control channels.
pub struct Node {
    /// Profile name.
    pub name: String,
    /// The profile the image was built from.
    pub loaded: LoadedProfile,
    /// The QEMU process.
    pub vm: RunningVm,
    qmp: Option<QmpClient>,
    qga: Option<QgaClient>,
    /// Seconds from starting QEMU (or from the reboot command) to the ready line, per boot.
    pub boot_to_ready: Vec<f64>,
    /// Where the node's sockets and disks are.
    pub run_dir: PathBuf,
    /// Wait scale.
    pub scale: Scale,
    scanned: usize,
    boots: usize,
    /// The console of the boot before the last power cycle.
    pub previous_console: String,
}

/// What a console scan found since the previous scan.
#[derive(Debug, Default, Clone)]
pub struct ConsoleScan {
    /// Lines that fail the scenario: kernel panic, Oops, BUG, hung task,
    /// I/O errors on device-mapper devices (what guests would see).
    pub fatal: Vec<String>,
    /// I/O errors on single `sd` paths: expected while a path is failing
    /// (multipath retries the I/O on another path); reported, not failed.
    pub path_errors: Vec<String>,
}

/// Splits the kernel's alarming console lines into fatal ones and the
/// expected per-path SCSI errors.
pub fn classify_console(console: &str) -> ConsoleScan {
    let mut scan = ConsoleScan::default();
    for line in fatal_lines(console) {
        let path_error = line.contains("I/O error")
            && (line.contains("dev sd") || line.contains("on dev sd"))
            && !line.contains("dev dm-");
        if path_error {
            scan.path_errors.push(line);
        } else {
            scan.fatal.push(line);
        }
    }
    scan
}

/// What a node boots with, besides its profile.
struct NodeBoot<'a> {
    image_dir: PathBuf,
    run_dir: PathBuf,
    serial_log: PathBuf,
    accel: Accel,
    backend_for: &'a dyn Fn(&str) -> NetBackend,
    extra_disks: Vec<Disk>,
    from: BootFrom,
}

impl Node {
    /// Starts the node's QEMU and waits for its ready line and its agent.
    /// Runs on the thread that polls it (QEMU's spawner, see
    /// `applbuild_vm::process::supervise`), so two nodes boot concurrently.
    async fn boot(loaded: LoadedProfile, how: NodeBoot<'_>) -> Result<Self> {
        let run_dir = &how.run_dir;
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let scale = Scale(how.accel.timeout_scale());
        let mut spec = boot::vm_spec_from(
            &loaded,
            &how.image_dir,
            run_dir,
            how.accel,
            how.backend_for,
            how.from,
        )?;
        spec.disks.extend(how.extra_disks);
        // S14 reboots the hypervisor inside the same QEMU process.
        spec.exit_on_reboot = false;
        let vm = RunningVm::start(spec, &how.serial_log)?;
        let qmp = QmpClient::connect(&run_dir.join("qmp.sock"), Duration::from_secs(30))
            .await
            .with_context(|| format!("{}: QMP", loaded.name))?;
        let mut node = Self {
            name: loaded.name.clone(),
            loaded,
            vm,
            qmp: Some(qmp),
            qga: None,
            boot_to_ready: Vec::new(),
            run_dir: run_dir.to_path_buf(),
            scale,
            scanned: 0,
            boots: 1,
            previous_console: String::new(),
        };
        let started = node.vm.started;
        node.await_ready(1, started, scale.secs(60)).await?;
        Ok(node)
    }

    /// Waits for the `count`-th ready line, records boot-to-ready from
    /// `since`, then (re)connects the guest agent.
    async fn await_ready(&mut self, count: usize, since: Instant, timeout: Duration) -> Result<()> {
        let printed = self
            .vm
            .console_capture()
            .wait_for(timeout, |text| {
                (text.matches(READY_MARKER).count() >= count).then_some(())
            })
            .await;
        if printed.is_none() || self.vm.has_exited() {
            bail!(
                "{}: no `{READY_MARKER}` line within {timeout:?} (serial log {}){}",
                self.name,
                self.vm.serial_log.display(),
                not_ready_detail(&self.vm.console())
            );
        }
        self.boot_to_ready.push(since.elapsed().as_secs_f64());
        self.qga = None;
        let socket = self.qga_socket();
        let wait = self.scale.secs(30);
        let qga = tokio::task::spawn_blocking(move || QgaClient::connect(&socket, wait))
            .await
            .context("the guest-agent task")?
            .with_context(|| format!("{}: guest agent", self.name))?;
        self.qga = Some(qga);
        Ok(())
    }

    /// The guest-agent socket.
    pub fn qga_socket(&self) -> PathBuf {
        self.run_dir.join("qga.sock")
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }

    /// Runs a shell command in the guest; `timeout` is nominal (scaled
    /// under TCG).
    pub fn exec(&mut self, command: &str, timeout: Duration) -> Result<ExecOutput> {
        let scaled = timeout * self.scale.0;
        let qga = self
            .qga
            .as_mut()
            .ok_or_else(|| anyhow!("{}: guest agent not connected", self.name))?;
        qga.exec_shell(command, scaled)
            .with_context(|| format!("{}: running `{command}`", self.name))
    }

    /// Runs a command that must succeed within 30 s (nominal) and returns
    /// its standard output.
    pub fn sh(&mut self, command: &str) -> Result<String> {
        let output = self.exec(command, Duration::from_secs(30))?;
        if !output.success() {
            bail!(
                "{}: `{command}` exited with {}\nstdout:\n{}stderr:\n{}",
                self.name,
                output.exit_code,
                output.stdout,
                output.stderr
            );
        }
        Ok(output.stdout)
    }

    /// Pulls or replugs the virtual cable of the NIC on `network`
    /// (NIC ids are the network names).
    pub fn set_link(&mut self, network: &str, up: bool) -> Result<()> {
        let qmp = self
            .qmp
            .as_mut()
            .ok_or_else(|| anyhow!("{}: QMP released", self.name))?;
        block_on(qmp.set_link(network, up))
            .with_context(|| format!("{}: set_link {network} {up}", self.name))
    }

    /// The networks this node has a NIC on.
    pub fn networks(&self) -> Vec<String> {
        self.loaded
            .profile
            .network
            .interfaces
            .iter()
            .map(|interface| interface.network.clone())
            .collect()
    }

    /// Console lines printed since the previous scan, classified.
    pub fn scan_console(&mut self) -> ConsoleScan {
        let console = self.vm.console();
        let start = self.scanned.min(console.len());
        self.scanned = console.len();
        classify_console(&console[start..])
    }

    /// Closes the QMP and guest-agent connections, so that someone else
    /// can connect (QEMU serves one client per socket).
    pub fn release(&mut self) {
        self.qmp = None;
        self.qga = None;
    }

    /// Power-cycles the node: the guest powers itself off (QEMU exits),
    /// then a new QEMU process starts with the same spec (same MACs,
    /// networks and sockets) and the guest boots to its ready line again.
    /// Returns seconds from the power-off command to the ready line.
    ///
    /// A warm `reboot` inside the guest (QEMU resetting the machine, see
    /// `VmSpec::exit_on_reboot`) never came back under TCG here: nothing on
    /// the console after "reboot: Restarting system".
    pub fn power_cycle(&mut self, timeout: Duration) -> Result<f64> {
        let started = Instant::now();
        let _ = self.exec(
            "(sleep 1; poweroff) </dev/null >/dev/null 2>&1 &",
            Duration::from_secs(10),
        );
        self.qga = None;
        if !self.vm.wait_exit(self.scale.secs(30)) {
            if let Some(qmp) = &mut self.qmp {
                let _ = block_on(qmp.quit());
            }
            self.vm.stop(Duration::from_secs(10));
        }
        self.qmp = None;
        self.previous_console = self.vm.console();
        self.boots += 1;
        let log = self
            .vm
            .serial_log
            .with_file_name(format!("{}-serial-boot{}.log", self.name, self.boots));
        let spec = self.vm.spec.clone();
        self.vm = RunningVm::start(spec, &log)?;
        self.scanned = 0;
        let qmp = block_on(QmpClient::connect(
            &self.qmp_socket(),
            Duration::from_secs(30),
        ))
        .with_context(|| format!("{}: QMP after the power cycle", self.name))?;
        self.qmp = Some(qmp);
        block_on(self.await_ready(1, started, timeout))?;
        Ok(*self.boot_to_ready.last().expect("just recorded"))
    }

    /// Powers the guest off and stops QEMU.
    pub fn shutdown(&mut self) {
        if self.qmp.is_none() {
            self.qmp = block_on(QmpClient::connect(
                &self.qmp_socket(),
                Duration::from_secs(2),
            ))
            .ok();
        }
        if let Some(qmp) = &mut self.qmp {
            let _ = block_on(qmp.quit());
        }
        self.vm.stop(Duration::from_secs(5));
    }
}

/// Both nodes on both networks, and the guest VM once S6 started it.
pub struct Cluster {
    /// The storage node (tgtd).
    pub storage: Node,
    /// The hypervisor node (open-iscsi, multipath, br0).
    pub hypervisor: Node,
    /// The guest profile (S6 installs its image on the multipath map).
    pub guest_profile: LoadedProfile,
    /// The guest VM running inside the hypervisor node, if started.
    pub guest: Option<Guest>,
    /// SAN-A and SAN-B.
    pub switches: Vec<VdeSwitch>,
    /// Serial logs and failure outputs.
    pub artifacts: PathBuf,
    /// Folder of the built images.
    pub images: PathBuf,
    /// How the CPUs are emulated.
    pub accel: Accel,
    /// The secrets the images were built with (S13 logs in with them).
    pub secrets: Store,
}

impl Cluster {
    /// Starts one switch per network the profiles name, then boots the
    /// storage node and the hypervisor node (with the guest's disk image
    /// attached read-only) concurrently, each to its ready line, from their
    /// kernels or, through OVMF, from their UEFI disk images.
    pub fn boot(
        profiles_dir: &Path,
        images: &Path,
        run_dir: &Path,
        artifacts: &Path,
        secrets: &Path,
        accel: Accel,
        from: BootFrom,
    ) -> Result<Self> {
        let secrets = Store::load(secrets)?;
        let storage_profile = profile::load(profiles_dir, STORAGE)?;
        let hypervisor_profile = profile::load(profiles_dir, HYPERVISOR)?;
        let guest_profile = profile::load(profiles_dir, GUEST)?;
        let mut networks: Vec<String> = Vec::new();
        for loaded in [&storage_profile, &hypervisor_profile] {
            for interface in &loaded.profile.network.interfaces {
                if !networks.contains(&interface.network) {
                    networks.push(interface.network.clone());
                }
            }
        }
        let mut switches = Vec::new();
        for network in &networks {
            switches.push(VdeSwitch::start(network, run_dir)?);
        }
        let sockets: BTreeMap<String, PathBuf> = switches
            .iter()
            .map(|switch| (switch.name.clone(), switch.socket.clone()))
            .collect();
        let backend_for = move |network: &str| NetBackend::Vde {
            socket: sockets[network].clone(),
        };
        std::fs::create_dir_all(artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        let node = |name: &str, extra_disks: Vec<Disk>| NodeBoot {
            image_dir: images.join(name).join(test_build::DIR),
            run_dir: run_dir.join(name),
            serial_log: artifacts.join(format!("{name}-serial.log")),
            accel,
            backend_for: &backend_for,
            extra_disks,
            from,
        };
        let guest_image = Disk {
            path: images.join(GUEST).join(format!("{GUEST}.img")),
            serial: guest::IMAGE_DISK_SERIAL.into(),
            read_only: true,
            cache: DiskCache::Unsafe,
        };
        // The hypervisor retries its iSCSI logins until the storage node
        // answers, so both boot at once.
        let (storage, hypervisor) = block_on(async {
            tokio::try_join!(
                Node::boot(storage_profile, node(STORAGE, Vec::new())),
                Node::boot(hypervisor_profile, node(HYPERVISOR, vec![guest_image])),
            )
        })?;
        Ok(Self {
            storage,
            hypervisor,
            guest_profile,
            guest: None,
            switches,
            artifacts: artifacts.to_path_buf(),
            images: images.to_path_buf(),
            accel,
            secrets,
        })
    }

    /// Wait scale.
    pub fn scale(&self) -> Scale {
        Scale(self.accel.timeout_scale())
    }

    /// Console lines of both nodes since the previous scan, prefixed with
    /// the node's name.
    pub fn scan_consoles(&mut self) -> ConsoleScan {
        let mut all = ConsoleScan::default();
        for node in [&mut self.storage, &mut self.hypervisor] {
            let scan = node.scan_console();
            let name = node.name.clone();
            all.fatal
                .extend(scan.fatal.into_iter().map(|l| format!("{name}: {l}")));
            all.path_errors
                .extend(scan.path_errors.into_iter().map(|l| format!("{name}: {l}")));
        }
        all
    }

    /// The guest's console since the previous scan (kept in the artifacts
    /// as `guest-serial.log`), classified; empty while no guest runs.
    pub fn scan_guest_console(&mut self) -> Result<ConsoleScan> {
        let Some(guest) = &mut self.guest else {
            return Ok(ConsoleScan::default());
        };
        let text = guest.new_console(&mut self.hypervisor)?;
        let log = self.artifacts.join("guest-serial.log");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .with_context(|| format!("writing {}", log.display()))?;
        let mut scan = classify_console(&text);
        // Inside the guest every I/O error is one its workload would see.
        scan.fatal.append(&mut scan.path_errors);
        scan.fatal = scan
            .fatal
            .into_iter()
            .map(|l| format!("guest: {l}"))
            .collect();
        Ok(scan)
    }

    /// The running guest and the node it runs in (its commands go through
    /// that node).
    fn guest_and_host(&mut self) -> Result<(&Guest, &mut Node)> {
        let guest = self
            .guest
            .as_ref()
            .ok_or_else(|| anyhow!("the guest VM is not running (S6 starts it)"))?;
        Ok((guest, &mut self.hypervisor))
    }

    /// Runs a command in the guest (see [`Guest::exec`]).
    pub fn guest_exec(&mut self, command: &str, timeout: Duration) -> Result<ExecOutput> {
        let (guest, host) = self.guest_and_host()?;
        guest.exec(host, command, timeout)
    }

    /// Runs a command in the guest that must succeed; returns its output.
    pub fn guest_sh(&mut self, command: &str) -> Result<String> {
        let (guest, host) = self.guest_and_host()?;
        guest.sh(host, command)
    }

    /// Replugs every cable (after a scenario, whatever happened in it).
    pub fn replug_all(&mut self) -> Result<()> {
        for node in [&mut self.storage, &mut self.hypervisor] {
            for network in node.networks() {
                node.set_link(&network, true)?;
            }
        }
        Ok(())
    }

    /// How to reach the VMs by hand (for `--keep`).
    pub fn attach_help(&self) -> String {
        let mut text = String::new();
        for node in [&self.storage, &self.hypervisor] {
            text.push_str(&format!(
                "  {}: QMP {}\n  {}: guest agent {}\n  {}: serial log {}\n",
                node.name,
                node.qmp_socket().display(),
                node.name,
                node.qga_socket().display(),
                node.name,
                node.vm.serial_log.display(),
            ));
        }
        for switch in &self.switches {
            text.push_str(&format!(
                "  {}: vde_switch pid {} sockets {}\n",
                switch.name,
                switch.pid(),
                switch.socket.display()
            ));
        }
        text.push_str(&format!(
            "  run a command: applbuild-test exec {} 'multipathd show paths'\n",
            self.hypervisor.qga_socket().display()
        ));
        if let Some(guest) = &self.guest {
            text.push_str(&format!(
                "  guest VM ({}, {:?}) inside the hypervisor: console {}/console.log there\n",
                guest.ip,
                guest.accel,
                guest::RUN_DIR
            ));
        }
        text
    }

    /// Releases both nodes' control connections (for `--keep`).
    pub fn release(&mut self) {
        self.storage.release();
        self.hypervisor.release();
    }

    /// Stops both VMs and the switches.
    pub fn shutdown(&mut self) {
        self.hypervisor.shutdown();
        self.storage.shutdown();
        self.switches.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_path_errors_are_reported_not_fatal() {
        let console = "\
[ 10.1] I/O error, dev sdc, sector 2048 op 0x1:(WRITE) flags 0x8800 phys_seg 1 prio class 2
[ 10.2] device-mapper: multipath: 253:0: Failing path 8:32.
[ 11.0] Buffer I/O error on dev dm-0, logical block 0, async page read
[ 12.0] INFO: task dd:123 blocked for more than 120 seconds.
";
        let scan = classify_console(console);
        assert_eq!(scan.path_errors.len(), 1, "{scan:?}");
        assert!(scan.path_errors[0].contains("dev sdc"));
        assert_eq!(scan.fatal.len(), 2, "{scan:?}");
    }
}
