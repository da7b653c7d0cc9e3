//! A VM's serial console, captured by tokio tasks: every line goes to a
//! log file and an in-memory buffer, and waiters are woken as lines arrive.
//! Also the reading of a console: the kernel's fatal lines and its tail.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::watch;

/// The captured console of one QEMU process.
#[derive(Clone)]
pub struct Console {
    text: Arc<Mutex<String>>,
    // Bumped on every line; closed once both of QEMU's outputs ended.
    lines: watch::Receiver<u64>,
}

impl Console {
    /// Starts capturing: `serial` (the guest's console, to `log`) and
    /// `diagnostics` (QEMU's own messages, marked `[qemu]`) on the runtime.
    pub fn capture(
        serial: impl AsyncRead + Unpin + Send + 'static,
        diagnostics: impl AsyncRead + Unpin + Send + 'static,
        log: Option<std::fs::File>,
    ) -> Self {
        let text = Arc::new(Mutex::new(String::new()));
        let (sender, lines) = watch::channel(0);
        let sender = Arc::new(sender);
        let runtime = crate::runtime::runtime();
        runtime.spawn(copy_lines(
            serial,
            log.map(tokio::fs::File::from_std),
            "",
            Arc::clone(&text),
            Arc::clone(&sender),
        ));
        runtime.spawn(copy_lines(
            diagnostics,
            None,
            "[qemu] ",
            Arc::clone(&text),
            sender,
        ));
        Self { text, lines }
    }

    /// Everything printed so far.
    pub fn text(&self) -> String {
        self.text.lock().expect("console lock").clone()
    }

    /// Whether QEMU closed both outputs (it has exited).
    pub fn closed(&self) -> bool {
        self.lines.has_changed().is_err()
    }

    /// Waits until `found` returns something for the console text, QEMU
    /// closes its outputs, or `timeout` passes.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        let mut lines = self.lines.clone();
        let watch = async {
            loop {
                lines.borrow_and_update();
                if let Some(value) = found(&self.text.lock().expect("console lock")) {
                    return Some(value);
                }
                if lines.changed().await.is_err() {
                    return found(&self.text.lock().expect("console lock"));
                }
            }
        };
        tokio::time::timeout(timeout, watch).await.ok().flatten()
    }

    /// Waits for a line containing `needle`; returns that line.
    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_for_any_line(&[needle], timeout).await
    }

    /// Waits for the first line that contains any of `needles` (a ready
    /// line or a failure line, whichever comes first); returns that line.
    pub async fn wait_for_any_line(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        self.wait_for(timeout, |text| {
            text.lines()
                .find(|line| needles.iter().any(|needle| line.contains(needle)))
                .map(String::from)
        })
        .await
    }

    /// Waits until QEMU closed its outputs; false if `timeout` passed first.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        let mut lines = self.lines.clone();
        let closed = async { while lines.changed().await.is_ok() {} };
        tokio::time::timeout(timeout, closed).await.is_ok()
    }
}

async fn copy_lines(
    source: impl AsyncRead + Unpin,
    mut log: Option<tokio::fs::File>,
    prefix: &str,
    text: Arc<Mutex<String>>,
    lines: Arc<watch::Sender<u64>>,
) {
    let mut reader = BufReader::new(source);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
        if let Some(log) = &mut log {
            // A log that cannot be written must not stop the capture.
            let _ = log.write_all(&line).await;
            let _ = log.flush().await;
        }
        text.lock()
            .expect("console lock")
            .push_str(&format!("{prefix}{}", String::from_utf8_lossy(&line)));
        lines.send_modify(|count| *count += 1);
        line.clear();
    }
}

/// Opens a serial log for writing.
pub fn create_log(path: &Path) -> Result<std::fs::File, crate::machine::QemuError> {
    std::fs::File::create(path).map_err(|source| crate::machine::QemuError::Log {
        path: PathBuf::from(path),
        source,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_log_the_buffer_and_the_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("serial.log");
        let (mut guest, serial) = tokio::io::duplex(64);
        let (qemu, diagnostics) = tokio::io::duplex(64);
        let console = Console::capture(serial, diagnostics, Some(create_log(&log_path).unwrap()));
        crate::runtime::block_on(async move {
            let waiter = console.clone();
            let found =
                tokio::spawn(
                    async move { waiter.wait_for_line("READY", Duration::from_secs(5)).await },
                );
            guest.write_all(b"booting\n").await.unwrap();
            guest
                .write_all(b"APPLBUILD-READY uptime=3\n")
                .await
                .unwrap();
            assert_eq!(
                found.await.unwrap().as_deref(),
                Some("APPLBUILD-READY uptime=3")
            );
            assert!(!console.closed());
            drop(guest);
            drop(qemu);
            assert!(console.wait_closed(Duration::from_secs(5)).await);
            assert_eq!(
                console.wait_for_line("never", Duration::from_secs(5)).await,
                None
            );
        });
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert_eq!(log, "booting\nAPPLBUILD-READY uptime=3\n");
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
