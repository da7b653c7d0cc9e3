//! Where a boot's time went, read off the image's console.
//!
//! rcS and `supervise` print `applbuild: [UPTIME] NAME: starting` when a
//! step or service starts and `… NAME: ready` or `… NAME: done` when it is
//! through, on the guest's clock (`/proc/uptime`). The breakdown is those
//! spans up to the ready line, with the time before the first of them
//! (the kernel) and any time no span covers, so that every second between
//! QEMU's start and the ready line is in one row.

use serde::Serialize;

/// Shorter stretches between spans are not rows of their own.
const GAP_SECONDS: f64 = 0.05;

/// One row of a boot's breakdown, on the guest's clock (seconds of uptime;
/// the first row, before the kernel's clock starts, is negative).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootPhase {
    /// What ran: a service or rcS step, or one of the rows named here.
    pub name: String,
    /// Uptime at its start.
    pub start_seconds: f64,
    /// Uptime at its end.
    pub end_seconds: f64,
}

impl BootPhase {
    /// How long it took.
    pub fn seconds(&self) -> f64 {
        self.end_seconds - self.start_seconds
    }
}

/// Row: from QEMU's start to the guest kernel's clock (firmware, loading
/// the kernel and initramfs), measured on the host.
pub const BEFORE_KERNEL: &str = "QEMU start to the kernel's clock";
/// Row: the kernel, until init's first line.
pub const KERNEL: &str = "kernel, until init's first line";
/// Row: time no step or service covers.
pub const BETWEEN: &str = "(between steps)";

/// The breakdown of a boot whose ready line came `boot_to_ready_seconds`
/// after QEMU started, at guest uptime `ready_uptime`.
pub fn boot_phases(console: &str, ready_uptime: f64, boot_to_ready_seconds: f64) -> Vec<BootPhase> {
    let spans = spans(console, ready_uptime);
    let mut phases = vec![BootPhase {
        name: BEFORE_KERNEL.into(),
        start_seconds: (ready_uptime - boot_to_ready_seconds).min(0.0),
        end_seconds: 0.0,
    }];
    let mut covered = spans
        .first()
        .map_or(ready_uptime, |span| span.start_seconds);
    phases.push(BootPhase {
        name: KERNEL.into(),
        start_seconds: 0.0,
        end_seconds: covered,
    });
    for span in spans {
        push_gap(&mut phases, covered, span.start_seconds);
        covered = covered.max(span.end_seconds);
        phases.push(span);
    }
    push_gap(&mut phases, covered, ready_uptime);
    phases
}

fn push_gap(phases: &mut Vec<BootPhase>, from: f64, to: f64) {
    if to - from >= GAP_SECONDS {
        phases.push(BootPhase {
            name: BETWEEN.into(),
            start_seconds: from,
            end_seconds: to,
        });
    }
}

/// The first start-to-end span of each name before the ready line, in the
/// order they started; a start without an end ends at the ready line.
fn spans(console: &str, ready_uptime: f64) -> Vec<BootPhase> {
    let mut spans: Vec<BootPhase> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    for (uptime, name, word) in console.lines().filter_map(step_line) {
        if uptime > ready_uptime {
            break;
        }
        let known = spans.iter().position(|span| span.name == name);
        match (word, known) {
            ("starting", None) => {
                open.push(spans.len());
                spans.push(BootPhase {
                    name: name.to_owned(),
                    start_seconds: uptime,
                    end_seconds: ready_uptime,
                });
            }
            ("ready" | "done", Some(index)) if open.contains(&index) => {
                spans[index].end_seconds = uptime;
                open.retain(|&other| other != index);
            }
            _ => {}
        }
    }
    spans
}

/// `applbuild: [UPTIME] NAME: WORD`, split; None for any other line.
fn step_line(line: &str) -> Option<(f64, &str, &str)> {
    let rest = line.trim_end().strip_prefix("applbuild: [")?;
    let (uptime, rest) = rest.split_once("] ")?;
    let (name, word) = rest.split_once(": ")?;
    Some((uptime.parse().ok()?, name, word))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
noise from the kernel
applbuild: [2.00] sysinit: starting
applbuild: [2.10] modules: starting
applbuild: [2.60] modules: done
applbuild: [2.60] network: starting
applbuild: [3.00] network: done
applbuild: [3.01] sysinit: done
applbuild: [3.50] udevd: starting
applbuild: [3.90] udevd: ready
applbuild: [4.00] tgtd: starting
applbuild: [4.10] vm guest: waiting-for-disk
applbuild: [4.20] sshd: starting
applbuild: [4.40] sshd: ready
applbuild: [5.00] tgtd: ready
APPLBUILD-READY profile=storage uptime=5.10
applbuild: [6.00] tgtd: exited with status 137
applbuild: [7.00] tgtd: starting
applbuild: [7.20] tgtd: ready
";

    fn rows(phases: &[BootPhase]) -> Vec<(String, String)> {
        phases
            .iter()
            .map(|phase| (phase.name.clone(), format!("{:.2}", phase.seconds())))
            .collect()
    }

    #[test]
    fn every_second_until_the_ready_line_is_in_one_row() {
        let phases = boot_phases(CONSOLE, 5.1, 5.5);
        let expected = [
            (BEFORE_KERNEL, "0.40"),
            (KERNEL, "2.00"),
            ("sysinit", "1.01"),
            ("modules", "0.50"),
            ("network", "0.40"),
            (BETWEEN, "0.49"),
            ("udevd", "0.40"),
            (BETWEEN, "0.10"),
            ("tgtd", "1.00"),
            ("sshd", "0.20"),
            (BETWEEN, "0.10"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(name, seconds)| (name.to_string(), seconds.to_string()))
            .collect();
        assert_eq!(rows(&phases), expected);
    }

    #[test]
    fn a_step_without_its_end_lasts_until_the_ready_line() {
        let console = "applbuild: [1.0] tgtd: starting\nAPPLBUILD-READY uptime=3.0\n";
        let phases = boot_phases(console, 3.0, 3.0);
        assert_eq!(phases.last().unwrap().name, "tgtd");
        assert_eq!(phases.last().unwrap().end_seconds, 3.0);
        assert_eq!(phases[0].seconds(), 0.0, "no time before the kernel");
    }

    #[test]
    fn a_console_without_steps_is_all_kernel() {
        let phases = boot_phases("", 4.0, 6.0);
        assert_eq!(
            rows(&phases),
            [
                (BEFORE_KERNEL.to_string(), "2.00".to_string()),
                (KERNEL.to_string(), "4.00".to_string())
            ]
        );
    }
}
