//! The virtual storage networks: one unprivileged `vde_switch` (Debian
//! `vde2`) per network, each with its own socket folder in the run folder.
//! Nothing touches the host's network: no multicast, no tap device.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use applbuild_vm::process;

use crate::waits::wait_until;

/// The `vde_switch` binary.
pub const VDE_SWITCH: &str = "vde_switch";

/// One running switch.
pub struct VdeSwitch {
    /// Network name (`san-a`), as in the profiles' `network.interfaces[].network`.
    pub name: String,
    /// The switch's socket folder, given to QEMU's `-netdev vde,sock=`.
    pub socket: PathBuf,
    child: Child,
    // The switch runs its management console on standard input and exits at
    // end of file: the pipe stays open as long as the switch should run.
    _console: Option<ChildStdin>,
}

impl VdeSwitch {
    /// Starts a switch for `name` with its sockets in `run_dir/<name>`.
    pub fn start(name: &str, run_dir: &Path) -> Result<Self> {
        let socket = run_dir.join(name);
        let mut command = Command::new(VDE_SWITCH);
        command
            .arg("--sock")
            .arg(&socket)
            .args(["--dirmode", "0700", "--mode", "0600"])
            // Stopped by the suite, not by a Ctrl-C on its terminal.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = process::supervise(&mut command)
            .spawn()
            .with_context(|| format!("starting {VDE_SWITCH} (install Debian's vde2 package)"))?;
        process::register(child.id());
        let console = child.stdin.take();
        let ctl = socket.join("ctl");
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            ctl.exists()
        });
        if !up {
            process::terminate_std(&mut child, process::STOP_GRACE);
            bail!("{VDE_SWITCH} for {name} did not create {}", ctl.display());
        }
        Ok(Self {
            name: name.to_string(),
            socket,
            child,
            _console: console,
        })
    }

    /// The switch's process id (for debugging notes).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for VdeSwitch {
    fn drop(&mut self) {
        process::terminate_std(&mut self.child, process::STOP_GRACE);
    }
}
