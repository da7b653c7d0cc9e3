//! Typed description of a QEMU virtual machine, rendered to one argument
//! vector (or one shell-quoted line): every QEMU command line of the
//! project comes from [`VmSpec`].

use std::path::{Path, PathBuf};

/// The QEMU binary used for x86_64 guests.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// How the CPU is emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulator.
    Tcg,
    /// Chosen by the script that starts QEMU, which appends `-accel kvm
    /// -cpu host` where `/dev/kvm` opens, else `-accel tcg -cpu max` (a VM
    /// a node runs, on hardware or nested). Not QEMU's own fallback
    /// (`-accel kvm -accel tcg`): that needs one CPU model for both, and
    /// `max` under nested KVM, on QEMU 10's emulated SVM, crashes the outer
    /// QEMU as soon as OVMF starts (docs/vms.md).
    ChosenAtStart,
}

impl Accel {
    /// How much longer than under KVM waits should be.
    pub fn timeout_scale(self) -> u32 {
        match self {
            Accel::Kvm => 1,
            Accel::Tcg | Accel::ChosenAtStart => 4,
        }
    }
}

/// The accelerator a user asks for; `Auto` trusts KVM only after a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// whether KVM really works here (see [`crate::machine::kvm_works`]).
    pub fn resolve(self, kernel: &Path, scratch: &Path) -> Accel {
        match self {
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Auto if crate::machine::kvm_works(kernel, scratch) => Accel::Kvm,
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
    /// A tap device made beforehand (no helper scripts run).
    Tap {
        /// The tap's interface name.
        ifname: String,
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
    /// Without the NIC's option ROM (`romfile=`): a nested guest boots its
    /// kernel directly and the ROM file may be missing in a minimal image.
    pub without_rom: bool,
}

/// How QEMU caches a disk's writes (`cache=` of `-drive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskCache {
    /// Never flushed: throw-away disks of a test run.
    Unsafe,
    /// Straight to the device (`O_DIRECT`, `cache=none`): a disk on a
    /// multipath map, whose failover the guest should see and whose
    /// flushes reach the SAN.
    Direct,
    /// Through the host's page cache, flushed when the guest flushes.
    Writeback,
    /// Through the host's page cache, every write flushed.
    Writethrough,
    /// `O_DIRECT` and every write flushed.
    DirectSync,
}

impl DiskCache {
    /// The `cache=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskCache::Unsafe => "unsafe",
            DiskCache::Direct => "none",
            DiskCache::Writeback => "writeback",
            DiskCache::Writethrough => "writethrough",
            DiskCache::DirectSync => "directsync",
        }
    }
}

/// One raw virtio disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Image file or block device.
    pub path: PathBuf,
    /// Serial number (`/dev/disk/by-id/virtio-<serial>` in the guest).
    pub serial: String,
    /// Attached read-only (an image handed to the guest, not its storage).
    pub read_only: bool,
    /// Write caching.
    pub cache: DiskCache,
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// QEMU's standard output, headless, no monitor (captured by the caller).
    Stdout,
    /// This terminal, QEMU's monitor multiplexed on it (Ctrl-a c), Ctrl-a x quits.
    Terminal,
    /// A file, headless, no monitor.
    File(PathBuf),
    /// A pseudo-terminal to attach to (QEMU prints its `/dev/pts` path on
    /// standard error), everything the guest prints also appended to `log`.
    Pty {
        /// The console log.
        log: PathBuf,
    },
}

/// What the VM starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// QEMU loads a kernel and an initramfs itself (`-kernel`), no firmware
    /// boot menu: the fastest boot, used for images in RAM.
    Kernel {
        /// Kernel image.
        kernel: PathBuf,
        /// Initramfs, if any.
        initrd: Option<PathBuf>,
        /// Kernel command line.
        cmdline: String,
    },
    /// UEFI firmware (OVMF) boots a disk image as a server's firmware would.
    Uefi(UefiBoot),
    /// The firmware boots the first of [`VmSpec::disks`], an installed
    /// guest's writable disk.
    FirstDisk(Firmware),
}

/// The firmware of a VM that boots its own disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF in two flash chips.
    Uefi {
        /// The firmware code, read-only.
        code: PathBuf,
        /// The VM's own writable copy of the variable store.
        vars: PathBuf,
    },
    /// SeaBIOS, QEMU's default x86 firmware.
    Bios,
}

/// OVMF booting a disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiBoot {
    /// The firmware code (`OVMF_CODE_4M.fd`, or a Secure Boot build of it).
    pub code: PathBuf,
    /// A writable copy of the variable store (`OVMF_VARS_4M.fd`, or one with
    /// Secure Boot keys enrolled).
    pub vars: PathBuf,
    /// The disk image booted; attached read-only, so a check cannot change
    /// the bytes that get flashed.
    pub disk: PathBuf,
    /// Secure Boot firmware: needs SMM and a secure flash (q35 only).
    pub secure_boot: bool,
}

/// Everything QEMU needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Short name used in logs (`-name`).
    pub name: String,
    /// Machine type.
    pub machine: String,
    /// Kernel or firmware.
    pub boot: BootSource,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// CPU model under TCG (under KVM the host's CPU is passed through).
    pub tcg_cpu: String,
    /// NICs in PCI order.
    pub nics: Vec<Nic>,
    /// Disks in order.
    pub disks: Vec<Disk>,
    /// The serial console.
    pub serial: Serial,
    /// QMP socket to create, if any.
    pub qmp_socket: Option<PathBuf>,
    /// A second QMP monitor on the FIFO pair `<path>.in`/`<path>.out`, made
    /// beforehand: a shell script without a socket client writes commands
    /// to it.
    pub qmp_pipe: Option<PathBuf>,
    /// Guest-agent socket to create, if the image runs the agent.
    pub qga_socket: Option<PathBuf>,
    /// File QEMU writes its process id to once the machine runs.
    pub pidfile: Option<PathBuf>,
    /// QEMU exits when the guest reboots (`-no-reboot`); false lets the
    /// guest reboot in the same process (same sockets, same NICs).
    pub exit_on_reboot: bool,
}

impl VmSpec {
    /// A headless VM with no NICs, disks or sockets, the serial console on
    /// QEMU's standard output, QEMU exiting on reboot; fields to be filled in.
    pub fn new(name: &str, boot: BootSource, accel: Accel) -> Self {
        Self {
            name: name.into(),
            machine: "q35".into(),
            boot,
            memory_mib: 256,
            cpus: 1,
            accel,
            tcg_cpu: "max".into(),
            nics: Vec::new(),
            disks: Vec::new(),
            serial: Serial::Stdout,
            qmp_socket: None,
            qmp_pipe: None,
            qga_socket: None,
            pidfile: None,
            exit_on_reboot: true,
        }
    }

    /// The `qemu-system-x86_64` arguments (without the binary).
    pub fn args(&self) -> Vec<String> {
        let mut args = self.machine_args();
        args.extend(self.boot_args());
        args.extend(self.nics.iter().flat_map(nic_args));
        let boots_first_disk = matches!(self.boot, BootSource::FirstDisk(_));
        for (index, disk) in self.disks.iter().enumerate() {
            args.extend(disk_args(index, disk, boots_first_disk && index == 0));
        }
        args.extend(self.control_args());
        args.extend(words(&["-device", "virtio-rng-pci"]));
        args.extend(self.console_args());
        args
    }

    /// The whole command line quoted for a POSIX shell (for a QEMU started
    /// by a script inside another VM).
    pub fn shell_command(&self) -> String {
        let mut argv = vec![QEMU_BINARY.to_string()];
        argv.extend(self.args());
        shlex::try_join(argv.iter().map(String::as_str)).expect("QEMU arguments hold no NUL byte")
    }

    fn machine_args(&self) -> Vec<String> {
        let mut machine = self.machine.clone();
        if matches!(&self.boot, BootSource::Uefi(uefi) if uefi.secure_boot) {
            machine.push_str(",smm=on");
        }
        let mut args = words(&["-name", &self.name, "-machine", &machine]);
        args.extend(words(&["-nodefaults", "-no-user-config"]));
        if self.exit_on_reboot {
            args.push("-no-reboot".into());
        }
        args.extend(words(&["-m", &self.memory_mib.to_string()]));
        args.extend(words(&["-smp", &self.cpus.to_string()]));
        match self.accel {
            Accel::Kvm => args.extend(words(&["-accel", "kvm", "-cpu", "host"])),
            Accel::Tcg => args.extend(words(&["-accel", "tcg", "-cpu", &self.tcg_cpu])),
            Accel::ChosenAtStart => {}
        }
        args
    }

    fn boot_args(&self) -> Vec<String> {
        match &self.boot {
            BootSource::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                let mut args = vec!["-kernel".into(), path_arg(kernel)];
                if let Some(initrd) = initrd {
                    args.extend(["-initrd".into(), path_arg(initrd)]);
                }
                args.extend(["-append".into(), cmdline.clone()]);
                args
            }
            BootSource::Uefi(uefi) => uefi_args(uefi),
            BootSource::FirstDisk(Firmware::Uefi { code, vars }) => pflash_args(code, vars),
            BootSource::FirstDisk(Firmware::Bios) => Vec::new(),
        }
    }

    fn control_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(socket) = &self.qmp_socket {
            args.push("-qmp".into());
            args.push(format!("unix:{},server=on,wait=off", socket.display()));
        }
        if let Some(pipe) = &self.qmp_pipe {
            args.push("-chardev".into());
            args.push(format!("pipe,id=qmp-pipe,path={}", pipe.display()));
            args.extend(words(&["-mon", "chardev=qmp-pipe,mode=control"]));
        }
        if let Some(socket) = &self.qga_socket {
            args.push("-chardev".into());
            args.push(format!(
                "socket,path={},server=on,wait=off,id=qga0",
                socket.display()
            ));
            args.extend(words(&["-device", "virtio-serial-pci", "-device"]));
            args.push("virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".into());
        }
        if let Some(pidfile) = &self.pidfile {
            args.extend(["-pidfile".into(), path_arg(pidfile)]);
        }
        args
    }

    fn console_args(&self) -> Vec<String> {
        match &self.serial {
            Serial::Stdout => words(&["-display", "none", "-serial", "stdio", "-monitor", "none"]),
            Serial::Terminal => words(&["-nographic", "-serial", "mon:stdio"]),
            Serial::File(path) => {
                let mut args = words(&["-display", "none", "-monitor", "none", "-serial"]);
                args.push(format!("file:{}", path.display()));
                args
            }
            Serial::Pty { log } => {
                let mut args = words(&["-display", "none", "-monitor", "none", "-chardev"]);
                args.push(format!(
                    "pty,id=serial0,logfile={},logappend=on",
                    log.display()
                ));
                args.extend(words(&["-serial", "chardev:serial0"]));
                args
            }
        }
    }
}

/// `word` quoted for a POSIX shell (as [`VmSpec::shell_command`] quotes).
pub fn shell_quote(word: &str) -> String {
    shlex::try_quote(word)
        .expect("a shell word holds no NUL byte")
        .into_owned()
}

/// The spec of the KVM probe: `kernel` alone, no init to run, so the guest
/// prints its banner and panics (`panic=-1` and `-no-reboot` end QEMU).
pub fn kvm_probe_spec(kernel: &Path) -> VmSpec {
    let boot = BootSource::Kernel {
        kernel: kernel.to_path_buf(),
        initrd: None,
        cmdline: "console=ttyS0 panic=-1 rdinit=/nonexistent".into(),
    };
    VmSpec::new("kvm-probe", boot, Accel::Kvm)
}

/// Firmware in two flash chips (code read-only, variables writable) and the
/// boot disk as the first virtio disk, where OVMF looks for
/// `EFI/BOOT/BOOTX64.EFI` when its variables name no boot entry.
fn uefi_args(uefi: &UefiBoot) -> Vec<String> {
    let mut args = Vec::new();
    if uefi.secure_boot {
        args.extend(words(&[
            "-global",
            "driver=cfi.pflash01,property=secure,value=on",
        ]));
    }
    args.extend(pflash_args(&uefi.code, &uefi.vars));
    args.extend([
        "-drive".into(),
        format!(
            "file={},if=none,id=boot,format=raw,readonly=on",
            uefi.disk.display()
        ),
        "-device".into(),
        "virtio-blk-pci,drive=boot,serial=boot,bootindex=0".into(),
    ]);
    args
}

/// OVMF's code (read-only) and variables in the two flash chips.
fn pflash_args(code: &Path, vars: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            code.display()
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ]
}

fn nic_args(nic: &Nic) -> Vec<String> {
    let netdev = match &nic.backend {
        NetBackend::Hub { hub } => format!("hubport,id={},hubid={hub}", nic.id),
        NetBackend::Vde { socket } => format!("vde,id={},sock={}", nic.id, socket.display()),
        NetBackend::Tap { ifname } => {
            format!("tap,id={},ifname={ifname},script=no,downscript=no", nic.id)
        }
    };
    let mut device = format!(
        "virtio-net-pci,netdev={id},id={id},mac={}",
        nic.mac,
        id = nic.id
    );
    if nic.without_rom {
        device.push_str(",romfile=");
    }
    vec!["-netdev".into(), netdev, "-device".into(), device]
}

/// The disk's drive and virtio device; `boot`: the firmware boots it.
fn disk_args(index: usize, disk: &Disk, boot: bool) -> Vec<String> {
    let mut device = format!("virtio-blk-pci,drive=disk{index},serial={}", disk.serial);
    if boot {
        device.push_str(",bootindex=0");
    }
    vec![
        "-drive".into(),
        format!(
            "file={},if=none,id=disk{index},format=raw,cache={},aio=threads,readonly={}",
            disk.path.display(),
            disk.cache.as_str(),
            if disk.read_only { "on" } else { "off" }
        ),
        "-device".into(),
        device,
    ]
}

fn words(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| word.to_string()).collect()
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        let boot = BootSource::Kernel {
            kernel: "/out/vmlinuz".into(),
            initrd: Some("/out/initrd.img".into()),
            cmdline: "console=ttyS0".into(),
        };
        let mut spec = VmSpec::new("storage", boot, Accel::Tcg);
        spec.memory_mib = 384;
        spec.nics = vec![
            Nic {
                id: "san-a".into(),
                mac: "52:54:00:00:0a:10".into(),
                backend: NetBackend::Hub { hub: 0 },
                without_rom: false,
            },
            Nic {
                id: "san-b".into(),
                mac: "52:54:00:00:0b:10".into(),
                backend: NetBackend::Vde {
                    socket: "/run/b".into(),
                },
                without_rom: false,
            },
        ];
        spec.disks = vec![Disk {
            path: "/tmp/lun1.raw".into(),
            serial: "lun1".into(),
            read_only: false,
            cache: DiskCache::Unsafe,
        }];
        spec.qmp_socket = Some("/tmp/qmp.sock".into());
        spec.qga_socket = Some("/tmp/qga.sock".into());
        spec
    }

    #[test]
    fn every_nic_gets_its_mac_and_backend() {
        let args = spec().args().join(" ");
        assert!(args.contains("-netdev hubport,id=san-a,hubid=0"), "{args}");
        assert!(
            args.contains("virtio-net-pci,netdev=san-a,id=san-a,mac=52:54:00:00:0a:10 "),
            "{args}"
        );
        assert!(args.contains("-netdev vde,id=san-b,sock=/run/b"), "{args}");
        assert!(
            args.contains("cache=unsafe,aio=threads,readonly=off -device virtio-blk-pci,drive=disk0,serial=lun1"),
            "{args}"
        );
        assert!(
            args.contains("-qmp unix:/tmp/qmp.sock,server=on,wait=off"),
            "{args}"
        );
        assert!(args.contains("name=org.qemu.guest_agent.0"), "{args}");
        assert!(args.contains("-accel tcg -cpu max"), "{args}");
        assert!(
            args.contains("-kernel /out/vmlinuz -initrd /out/initrd.img -append console=ttyS0")
        );
        assert!(
            args.ends_with("-display none -serial stdio -monitor none"),
            "{args}"
        );
        assert!(args.contains("-no-reboot"), "{args}");
    }

    #[test]
    fn a_rebootable_vm_has_no_no_reboot_flag() {
        let mut spec = spec();
        spec.exit_on_reboot = false;
        spec.serial = Serial::Terminal;
        let args = spec.args();
        assert!(!args.iter().any(|arg| arg == "-no-reboot"));
        assert!(args.join(" ").ends_with("-nographic -serial mon:stdio"));
    }

    #[test]
    fn the_kvm_probe_boots_the_kernel_alone_under_kvm() {
        let args = kvm_probe_spec(Path::new("/out/vmlinuz")).args().join(" ");
        assert!(args.contains("-accel kvm -cpu host"), "{args}");
        assert!(args.contains("-no-reboot -m 256"), "{args}");
        assert!(
            !args.contains("-initrd") && !args.contains("-qmp"),
            "{args}"
        );
        assert!(args.contains("-append console=ttyS0 panic=-1 rdinit=/nonexistent"));
        assert!(args.contains("-serial stdio"), "{args}");
    }

    /// OVMF boots the image from the first disk; Secure Boot adds SMM and
    /// the secure flash; no `-kernel` is given.
    #[test]
    fn a_uefi_vm_boots_its_disk_through_the_firmware() {
        let mut spec = spec();
        spec.boot = BootSource::Uefi(UefiBoot {
            code: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd".into(),
            vars: "/run/vars.fd".into(),
            disk: "/out/storage.img".into(),
            secure_boot: true,
        });
        let args = spec.args().join(" ");
        assert!(args.contains("-machine q35,smm=on "), "{args}");
        assert!(
            args.contains("-global driver=cfi.pflash01,property=secure,value=on"),
            "{args}"
        );
        assert!(
            args.contains("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
            "{args}"
        );
        assert!(
            args.contains("if=pflash,format=raw,unit=1,file=/run/vars.fd"),
            "{args}"
        );
        assert!(
            args.contains("file=/out/storage.img,if=none,id=boot,format=raw,readonly=on -device virtio-blk-pci,drive=boot,serial=boot,bootindex=0"),
            "{args}"
        );
        assert!(!args.contains("-kernel"), "{args}");
    }

    /// The nested guest: a command line for a shell, its kernel command
    /// line one word, the tap without ROM, the map cached straight through.
    #[test]
    fn the_shell_command_quotes_what_the_shell_would_split() {
        let boot = BootSource::Kernel {
            kernel: "/run/vm/vmlinuz".into(),
            initrd: None,
            cmdline: "console=ttyS0 quiet".into(),
        };
        let mut spec = VmSpec::new("guest", boot, Accel::Kvm);
        spec.nics.push(Nic {
            id: "net0".into(),
            mac: "52:54:00:12:34:56".into(),
            backend: NetBackend::Tap {
                ifname: "vm0".into(),
            },
            without_rom: true,
        });
        spec.disks.push(Disk {
            path: "/dev/mapper/kvm".into(),
            serial: "root".into(),
            read_only: false,
            cache: DiskCache::Direct,
        });
        spec.serial = Serial::File("/run/vm/console.log".into());
        spec.pidfile = Some("/run/vm/qemu.pid".into());
        let line = spec.shell_command();
        assert!(
            line.starts_with("qemu-system-x86_64 -name guest "),
            "{line}"
        );
        assert!(line.contains(" -append 'console=ttyS0 quiet' "), "{line}");
        let args = spec.args().join(" ");
        assert!(
            args.contains("-netdev tap,id=net0,ifname=vm0,script=no,downscript=no"),
            "{args}"
        );
        assert!(args.contains("mac=52:54:00:12:34:56,romfile= "), "{args}");
        assert!(args.contains("file=/dev/mapper/kvm,if=none,id=disk0,format=raw,cache=none"));
        assert!(args.contains("-pidfile /run/vm/qemu.pid"), "{args}");
        assert!(args.ends_with("-serial file:/run/vm/console.log"), "{args}");
        let words = shlex::split(&line).unwrap();
        assert_eq!(words[1..], spec.args()[..]);
    }

    /// A VM a node runs: no accelerator (its script adds it), OVMF booting its writable first
    /// disk, the console on a logged pty, QMP on a socket and a FIFO pair.
    #[test]
    fn an_installed_guest_boots_its_own_disk_through_the_firmware() {
        let firmware = Firmware::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/run/vm/OVMF_VARS.fd".into(),
        };
        let mut spec = VmSpec::new(
            "guest",
            BootSource::FirstDisk(firmware),
            Accel::ChosenAtStart,
        );
        spec.exit_on_reboot = false;
        spec.disks.push(Disk {
            path: "/dev/mapper/kvm".into(),
            serial: "kvm".into(),
            read_only: false,
            cache: DiskCache::Writethrough,
        });
        spec.serial = Serial::Pty {
            log: "/run/vm/console.log".into(),
        };
        spec.qmp_pipe = Some("/run/vm/qmp-pipe".into());
        let args = spec.args().join(" ");
        assert!(!args.contains("-accel") && !args.contains("-cpu"), "{args}");
        assert!(
            args.contains("if=pflash,format=raw,unit=1,file=/run/vm/OVMF_VARS.fd"),
            "{args}"
        );
        assert!(
            args.contains("cache=writethrough,aio=threads,readonly=off -device virtio-blk-pci,drive=disk0,serial=kvm,bootindex=0"),
            "{args}"
        );
        assert!(
            args.contains(
                "-chardev pipe,id=qmp-pipe,path=/run/vm/qmp-pipe -mon chardev=qmp-pipe,mode=control"
            ),
            "{args}"
        );
        assert!(
            args.ends_with("-chardev pty,id=serial0,logfile=/run/vm/console.log,logappend=on -serial chardev:serial0"),
            "{args}"
        );
        assert!(
            !args.contains("-kernel") && !args.contains("-no-reboot"),
            "{args}"
        );
        let mut bios = spec.clone();
        bios.boot = BootSource::FirstDisk(Firmware::Bios);
        let args = bios.args().join(" ");
        assert!(
            !args.contains("pflash") && args.contains("bootindex=0"),
            "{args}"
        );
    }
}
