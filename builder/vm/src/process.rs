//! Process control for QEMU and its helpers: children that die with the
//! harness (`PR_SET_PDEATHSIG`), stopping with SIGTERM and then SIGKILL, and
//! stopping every child when the harness gets SIGINT or SIGTERM.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How long a child gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The children started through [`supervise`] that have not been reaped.
static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Set once a signal handler of [`stop_children_on_signals`] has started.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes `command`'s child get SIGKILL when the thread that spawns it ends,
/// so no QEMU or switch outlives a killed harness. Spawn from a thread that
/// lives as long as the child should (the main thread or a runtime worker).
pub fn supervise(command: &mut std::process::Command) -> &mut std::process::Command {
    let parent = std::process::id();
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before the call: then nothing would fire.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::other("the parent exited during spawn"));
            }
            Ok(())
        })
    }
}

/// Records a spawned child so [`stop_all`] stops it.
pub fn register(pid: u32) {
    LIVE.lock().expect("child registry").insert(pid);
}

/// Forgets a child that has been reaped.
pub fn unregister(pid: u32) {
    LIVE.lock().expect("child registry").remove(&pid);
}

/// Sends `signal` to `pid`; a child that is already gone is not an error.
pub fn signal(pid: u32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), signal);
}

/// Stops a tokio child: SIGTERM, up to `grace` to exit, then SIGKILL.
pub async fn terminate(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        signal(pid, Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.start_kill();
        }
        let _ = child.wait().await;
        unregister(pid);
    }
}

/// Stops a std child the same way as [`terminate`].
pub fn terminate_std(child: &mut std::process::Child, grace: Duration) {
    signal(child.id(), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            unregister(child.id());
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    unregister(child.id());
}

/// SIGTERM to every registered child, up to `grace` for them to exit, then
/// SIGKILL to the rest (for an interrupted harness about to exit).
pub fn stop_all(grace: Duration) {
    let pids: Vec<u32> = LIVE
        .lock()
        .expect("child registry")
        .iter()
        .copied()
        .collect();
    for pid in &pids {
        signal(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let mut left = pids;
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|pid| {
            matches!(
                waitpid(Pid::from_raw(*pid as i32), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in left {
        signal(pid, Signal::SIGKILL);
    }
}

/// On the first SIGINT or SIGTERM: stops every registered child (giving
/// each `grace` between SIGTERM and SIGKILL), calls `on_signal` with the
/// signal's name (to say where the logs are), and exits with 128 + the
/// signal's number.
pub fn stop_children_on_signals(grace: Duration, on_signal: impl FnOnce(&str) + Send + 'static) {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = crate::runtime::runtime();
    let _guard = runtime.enter();
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    runtime.spawn(async move {
        let (name, number) = tokio::select! {
            _ = interrupt.recv() => ("SIGINT", Signal::SIGINT as i32),
            _ = terminate.recv() => ("SIGTERM", Signal::SIGTERM as i32),
        };
        INTERRUPTED.store(true, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            stop_all(grace);
            on_signal(name);
            std::process::exit(128 + number);
        });
    });
}

/// Called before a program exits by itself: if a signal is being handled
/// (its children stopping, so the program's work failed), waits for the
/// handler to exit with the signal's status instead of exiting first.
pub fn defer_to_signal_handler() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spawning thread ends (as a killed harness would): the child
    /// gets SIGKILL from the kernel instead of sleeping on.
    #[test]
    fn a_supervised_child_dies_with_its_spawner() {
        let mut child = std::thread::spawn(|| {
            supervise(std::process::Command::new("sleep").arg("30"))
                .spawn()
                .unwrap()
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the child outlived its spawner");
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    }

    #[test]
    fn terminate_stops_a_child_that_ignores_sigterm() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; exec sleep 30"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // SIGTERM only once the trap is set.
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready, "ready\n");
        register(child.id());
        let started = Instant::now();
        terminate_std(&mut child, Duration::from_millis(300));
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_some());
        assert!(!LIVE.lock().unwrap().contains(&child.id()));
    }

    #[test]
    fn terminate_ends_a_tokio_child_with_sigterm() {
        crate::runtime::block_on(async {
            let mut child = tokio::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            let started = Instant::now();
            terminate(&mut child, Duration::from_secs(5)).await;
            assert!(started.elapsed() < Duration::from_secs(4));
            use std::os::unix::process::ExitStatusExt;
            let status = child.wait().await.unwrap();
            assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
        });
    }
}
