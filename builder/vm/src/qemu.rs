//! Typed description of a QEMU virtual machine and the process that runs it:
//! NICs with explicit MAC addresses on named networks, raw disks, a QMP
//! socket, an optional guest-agent port and the serial console captured to a
//! log file while it is scanned for lines.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the CPU is emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulator.
    Tcg,
}

impl Accel {
    /// How much longer than under KVM waits should be.
    pub fn timeout_scale(self) -> u32 {
        match self {
            Accel::Kvm => 1,
            Accel::Tcg => 4,
        }
    }
}

/// The accelerator a user asks for; `Auto` trusts KVM only after a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM if a probe boot under KVM works, else TCG.
    Auto,
    /// KVM, without probing.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl AccelChoice {
    /// The accelerator to use; `Auto` boots `kernel` under KVM once to see
    /// whether KVM really works here (see [`kvm_works`]).
    pub fn resolve(self, kernel: &Path, scratch: &Path) -> Accel {
        match self {
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Auto if kvm_works(kernel, scratch) => Accel::Kvm,
            AccelChoice::Auto => Accel::Tcg,
        }
    }
}

/// Where a NIC's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// A QEMU-internal hub (nothing else on it unless another NIC joins).
    Hub {
        /// Hub number.
        hub: u32,
    },
    /// A `vde_switch` control socket folder shared by several QEMU processes.
    Vde {
        /// The switch's socket folder.
        socket: PathBuf,
    },
}

/// One virtio NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Device and netdev id, also the name for `set_link`.
    pub id: String,
    /// MAC address (set on every NIC: separate QEMU processes reuse defaults).
    pub mac: String,
    /// Where its frames go.
    pub backend: NetBackend,
}

/// One raw virtio disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Image file.
    pub path: PathBuf,
    /// Serial number (`/dev/disk/by-id/virtio-<serial>` in the guest).
    pub serial: String,
    /// Attached read-only (an image handed to the guest, not its storage).
    pub read_only: bool,
}

/// Everything QEMU needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Short name used in logs.
    pub name: String,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// CPU model under TCG.
    pub tcg_cpu: String,
    /// NICs in PCI order.
    pub nics: Vec<Nic>,
    /// Disks in order.
    pub disks: Vec<Disk>,
    /// QMP socket to create.
    pub qmp_socket: PathBuf,
    /// Guest-agent socket to create, if the image runs the agent.
    pub qga_socket: Option<PathBuf>,
    /// QEMU exits when the guest reboots (`-no-reboot`); false lets the
    /// guest reboot in the same process (same sockets, same NICs).
    pub exit_on_reboot: bool,
}

impl VmSpec {
    /// The `qemu-system-x86_64` arguments for a headless run whose serial
    /// console is the process's standard output.
    pub fn headless_args(&self) -> Vec<String> {
        let mut args = self.common_args();
        args.extend(["-display", "none", "-serial", "stdio", "-monitor", "none"].map(String::from));
        args
    }

    /// The arguments for an interactive run: serial console on the terminal,
    /// QEMU's monitor multiplexed on it (Ctrl-a c), Ctrl-a x quits.
    pub fn interactive_args(&self) -> Vec<String> {
        let mut args = self.common_args();
        args.extend(["-nographic", "-serial", "mon:stdio"].map(String::from));
        args
    }

    fn common_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-name".into(),
            self.name.clone(),
            "-machine".into(),
            "q35".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            self.cmdline.clone(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_socket.display()),
        ];
        if self.exit_on_reboot {
            args.push("-no-reboot".into());
        }
        match self.accel {
            Accel::Kvm => args.extend(["-accel", "kvm", "-cpu", "host"].map(String::from)),
            Accel::Tcg => {
                args.extend([
                    "-accel".into(),
                    "tcg".into(),
                    "-cpu".into(),
                    self.tcg_cpu.clone(),
                ]);
            }
        }
        for nic in &self.nics {
            let netdev = match &nic.backend {
                NetBackend::Hub { hub } => format!("hubport,id={},hubid={hub}", nic.id),
                NetBackend::Vde { socket } => {
                    format!("vde,id={},sock={}", nic.id, socket.display())
                }
            };
            args.extend([
                "-netdev".into(),
                netdev,
                "-device".into(),
                format!(
                    "virtio-net-pci,netdev={id},id={id},mac={}",
                    nic.mac,
                    id = nic.id
                ),
            ]);
        }
        for (index, disk) in self.disks.iter().enumerate() {
            args.extend([
                "-drive".into(),
                format!(
                    "file={},if=none,id=disk{index},format=raw,cache=unsafe,aio=threads,readonly={}",
                    disk.path.display(),
                    if disk.read_only { "on" } else { "off" }
                ),
                "-device".into(),
                format!("virtio-blk-pci,drive=disk{index},serial={}", disk.serial),
            ]);
        }
        if let Some(socket) = &self.qga_socket {
            args.extend([
                "-chardev".into(),
                format!(
                    "socket,path={},server=on,wait=off,id=qga0",
                    socket.display()
                ),
                "-device".into(),
                "virtio-serial-pci".into(),
                "-device".into(),
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".into(),
            ]);
        }
        args.extend(["-device".into(), "virtio-rng-pci".into()]);
        args
    }
}

/// What can go wrong running QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The binary could not be started.
    #[error("cannot start {binary}: {source} (install the qemu-system-x86 package)")]
    Spawn {
        /// The QEMU binary.
        binary: String,
        /// Why.
        source: std::io::Error,
    },
    /// The serial log could not be written.
    #[error("cannot write serial log {path}: {source}")]
    Log {
        /// The log.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The QEMU binary used for x86_64 guests.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// A running VM whose serial console is captured to a file and kept in memory.
pub struct RunningVm {
    /// The VM's description.
    pub spec: VmSpec,
    child: Child,
    console: Arc<Mutex<String>>,
    /// The serial log file.
    pub serial_log: PathBuf,
    /// When QEMU was started.
    pub started: Instant,
}

impl RunningVm {
    /// Starts QEMU headless; every console line goes to `serial_log`.
    pub fn start(spec: VmSpec, serial_log: &Path) -> Result<Self, QemuError> {
        let mut log = std::fs::File::create(serial_log).map_err(|source| QemuError::Log {
            path: serial_log.to_path_buf(),
            source,
        })?;
        let started = Instant::now();
        let mut child = Command::new(QEMU_BINARY)
            .args(spec.headless_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| QemuError::Spawn {
                binary: QEMU_BINARY.into(),
                source,
            })?;
        let console = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&console);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let _ = log.write_all(&line);
                let _ = log.flush();
                sink.lock()
                    .expect("console lock")
                    .push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
        let sink = Arc::clone(&console);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock()
                    .expect("console lock")
                    .push_str(&format!("[qemu] {line}\n"));
            }
        });
        Ok(Self {
            spec,
            child,
            console,
            serial_log: serial_log.to_path_buf(),
            started,
        })
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.console.lock().expect("console lock").clone()
    }

    /// Waits until a console line contains `needle`; returns that line, or
    /// `None` if the deadline passed or QEMU exited first.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.console().lines().find(|line| line.contains(needle)) {
                return Some(line.to_string());
            }
            if Instant::now() >= deadline || self.has_exited() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the QEMU process has ended.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits up to `timeout` for QEMU to exit, then kills it.
    pub fn stop(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.has_exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Console lines that mean the guest kernel is in trouble. I/O errors are
/// the block layer's (`I/O error, dev sdb, sector …`, `Buffer I/O error on
/// dev dm-0`), not daemons' messages such as iscsid's "Login I/O error",
/// which it prints before retrying a login.
pub const FATAL_CONSOLE_PATTERNS: &[&str] = &[
    "Kernel panic",
    "Oops:",
    "BUG:",
    "blocked for more than",
    "I/O error, dev ",
    "Buffer I/O error on dev",
    "Call Trace:",
];

/// The console lines that match [`FATAL_CONSOLE_PATTERNS`].
pub fn fatal_lines(console: &str) -> Vec<String> {
    console
        .lines()
        .filter(|line| {
            FATAL_CONSOLE_PATTERNS
                .iter()
                .any(|pattern| line.contains(pattern))
        })
        .map(String::from)
        .collect()
}

/// The last `count` lines of a console capture: what a "not ready" error
/// shows so a failure in CI can be read without the serial log file.
pub fn console_tail(console: &str, count: usize) -> Vec<String> {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(count)..]
        .iter()
        .map(|line| line.to_string())
        .collect()
}

/// How a guest that never got ready ended: its kernel's fatal lines, then
/// the last lines of its console, one per line, indented.
pub fn not_ready_detail(console: &str) -> String {
    let mut detail = String::new();
    let fatal = fatal_lines(console);
    if !fatal.is_empty() {
        detail.push_str("\n  kernel errors:\n    ");
        detail.push_str(&fatal.join("\n    "));
    }
    detail.push_str("\n  last console lines:\n    ");
    detail.push_str(&console_tail(console, NOT_READY_TAIL_LINES).join("\n    "));
    detail
}

/// How many console lines a "not ready" error quotes.
const NOT_READY_TAIL_LINES: usize = 30;

/// Whether KVM works here: /dev/kvm opens and a guest kernel gets as far as
/// printing its banner under KVM. Nested KVM may expose /dev/kvm and still
/// abort or hang, so only a real boot is trusted.
pub fn kvm_works(kernel: &Path, scratch: &Path) -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let Ok(mut child) = Command::new(QEMU_BINARY)
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-machine",
            "q35",
            "-nodefaults",
            "-no-reboot",
        ])
        .args(["-display", "none", "-serial", "stdio", "-m", "256"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/nonexistent"])
        .current_dir(scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let found = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("Linux version"));
        let _ = sender.send(found);
    });
    let works = receiver
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    works
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "storage".into(),
            kernel: "/out/vmlinuz".into(),
            initrd: "/out/initrd.img".into(),
            cmdline: "console=ttyS0".into(),
            memory_mib: 384,
            cpus: 1,
            accel: Accel::Tcg,
            tcg_cpu: "max".into(),
            nics: vec![
                Nic {
                    id: "san-a".into(),
                    mac: "52:54:00:00:0a:10".into(),
                    backend: NetBackend::Hub { hub: 0 },
                },
                Nic {
                    id: "san-b".into(),
                    mac: "52:54:00:00:0b:10".into(),
                    backend: NetBackend::Vde {
                        socket: "/run/b".into(),
                    },
                },
            ],
            disks: vec![Disk {
                path: "/tmp/lun1.raw".into(),
                serial: "lun1".into(),
                read_only: false,
            }],
            qmp_socket: "/tmp/qmp.sock".into(),
            qga_socket: Some("/tmp/qga.sock".into()),
            exit_on_reboot: true,
        }
    }

    #[test]
    fn every_nic_gets_its_mac_and_backend() {
        let args = spec().headless_args().join(" ");
        assert!(args.contains("-netdev hubport,id=san-a,hubid=0"), "{args}");
        assert!(
            args.contains("virtio-net-pci,netdev=san-a,id=san-a,mac=52:54:00:00:0a:10"),
            "{args}"
        );
        assert!(args.contains("-netdev vde,id=san-b,sock=/run/b"), "{args}");
        assert!(
            args.contains("virtio-blk-pci,drive=disk0,serial=lun1"),
            "{args}"
        );
        assert!(args.contains("name=org.qemu.guest_agent.0"), "{args}");
        assert!(args.contains("-accel tcg -cpu max"), "{args}");
        assert!(args.contains("-serial stdio"), "{args}");
        assert!(args.contains("-no-reboot"), "{args}");
    }

    #[test]
    fn a_rebootable_vm_has_no_no_reboot_flag() {
        let mut spec = spec();
        spec.exit_on_reboot = false;
        assert!(!spec.headless_args().iter().any(|arg| arg == "-no-reboot"));
        assert!(
            !spec
                .interactive_args()
                .iter()
                .any(|arg| arg == "-no-reboot")
        );
    }

    #[test]
    fn fatal_lines_are_found() {
        let console = "ok\n[ 1.0] Kernel panic - not syncing\n[ 2.0] blk_update_request: I/O error, dev sdb\nfine\n";
        assert_eq!(fatal_lines(console).len(), 2);
        assert!(fatal_lines("APPLBUILD-READY\n").is_empty());
        assert_eq!(
            fatal_lines("Buffer I/O error on dev dm-0, logical block 0\n").len(),
            1
        );
        assert!(fatal_lines("iscsid: Login I/O error, failed to send a PDU\n").is_empty());
    }

    #[test]
    fn not_ready_detail_quotes_errors_and_the_console_tail() {
        let console: String = (0..40).map(|n| format!("line {n}\n")).collect();
        let console = format!("Kernel panic - not syncing: test\n{console}");
        let detail = not_ready_detail(&console);
        assert!(detail.contains("kernel errors:\n    Kernel panic"));
        assert!(detail.contains("line 39") && detail.contains("line 10"));
        assert!(!detail.contains("line 9\n"));
        assert_eq!(console_tail("a\nb\n", 5), ["a", "b"]);
    }
}
