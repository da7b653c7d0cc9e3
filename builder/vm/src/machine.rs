//! A running QEMU process: started from a [`VmSpec`] as a supervised child
//! (it dies with the harness), its console captured, stopped with SIGTERM
//! and then SIGKILL. Also the KVM probe.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::console::{Console, create_log};
use crate::process;
use crate::qemu::{QEMU_BINARY, Serial, VmSpec, kvm_probe_spec};
use crate::runtime::{block_on, runtime};

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

/// The QEMU command for `spec`, as a supervised child (see [`process::supervise`]).
pub fn qemu_command(spec: &VmSpec) -> tokio::process::Command {
    let mut command = std::process::Command::new(QEMU_BINARY);
    command.args(spec.args());
    process::supervise(&mut command);
    tokio::process::Command::from(command)
}

/// A running VM whose serial console is captured to a file and kept in memory.
pub struct RunningVm {
    /// The VM's description.
    pub spec: VmSpec,
    child: tokio::process::Child,
    console: Console,
    /// The serial log file.
    pub serial_log: PathBuf,
    /// When QEMU was started.
    pub started: Instant,
}

impl RunningVm {
    /// Starts QEMU headless (the spec's console becomes QEMU's standard
    /// output); every console line goes to `serial_log`. Call it from a
    /// thread that outlives the VM (see [`process::supervise`]).
    pub fn start(mut spec: VmSpec, serial_log: &Path) -> Result<Self, QemuError> {
        spec.serial = Serial::Stdout;
        let log = create_log(serial_log)?;
        let _runtime = runtime().enter();
        let started = Instant::now();
        let mut child = qemu_command(&spec)
            // A Ctrl-C on the terminal reaches only the harness, which then
            // stops the VM itself (see `process::stop_children_on_signals`).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| QemuError::Spawn {
                binary: QEMU_BINARY.into(),
                source,
            })?;
        if let Some(pid) = child.id() {
            process::register(pid);
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        Ok(Self {
            spec,
            child,
            console: Console::capture(stdout, stderr, Some(log)),
            serial_log: serial_log.to_path_buf(),
            started,
        })
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.console.text()
    }

    /// The console capture, for waiting on it.
    pub fn console_capture(&self) -> &Console {
        &self.console
    }

    /// Waits until a console line contains `needle`; returns that line, or
    /// `None` if the deadline passed or QEMU exited first.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        block_on(self.console.wait_for_line(needle, timeout))
    }

    /// Waits until a console line contains any of `needles`; returns the
    /// first such line, or `None` if the deadline passed or QEMU exited first.
    pub fn wait_for_any_line(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        block_on(self.console.wait_for_any_line(needles, timeout))
    }

    /// Whether the QEMU process has ended.
    pub fn has_exited(&mut self) -> bool {
        let _runtime = runtime().enter();
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits up to `timeout` for QEMU to exit by itself; true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        block_on(self.console.wait_closed(timeout)) || self.has_exited()
    }

    /// Waits up to `timeout` for QEMU to exit by itself, then stops it:
    /// SIGTERM, and SIGKILL if it is still there after a grace period.
    pub fn stop(&mut self, timeout: Duration) {
        if !self.wait_exit(timeout) || !self.has_exited() {
            block_on(process::terminate(&mut self.child, process::STOP_GRACE));
        }
        if let Some(pid) = self.child.id() {
            process::unregister(pid);
        }
    }
}

impl Drop for RunningVm {
    // No waiting here (a drop may run inside the runtime): the child is
    // spawned with `kill_on_drop`, tokio reaps it.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            process::unregister(pid);
        }
    }
}

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
    let _runtime = runtime().enter();
    let Ok(mut child) = qemu_command(&kvm_probe_spec(kernel))
        .process_group(0)
        .current_dir(scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    else {
        return false;
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let console = Console::capture(stdout, tokio::io::empty(), None);
    let works = block_on(console.wait_for_line("Linux version", Duration::from_secs(15))).is_some();
    block_on(process::terminate(&mut child, Duration::from_secs(1)));
    works
}
