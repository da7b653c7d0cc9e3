//! The suite's results: a table for people, JUnit XML for CI, and a JSON
//! summary with every timing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestRerun, TestSuite};
use serde::Serialize;

/// How one scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every assertion held.
    Passed,
    /// Every assertion held on a retry, after a failed attempt
    /// (`--retries`); the failures are in `failed_attempts`.
    Flaky,
    /// An assertion failed or the scenario could not run to its end.
    Failed,
    /// Not run: not selected, or the cluster did not boot.
    Skipped,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Passed => "pass",
            Outcome::Flaky => "pass (FLAKY)",
            Outcome::Failed => "FAIL",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// `S1` … `S17`.
    pub id: String,
    /// What it proves.
    pub title: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall-clock seconds it took.
    pub seconds: f64,
    /// Named measurements (seconds, MB/s, counts).
    pub timings: BTreeMap<String, f64>,
    /// Why it failed or was skipped.
    pub detail: Option<String>,
    /// Observations that do not fail it (e.g. SCSI errors on a failed path).
    pub notes: Vec<String>,
    /// Why each earlier attempt failed, when the scenario was retried.
    pub failed_attempts: Vec<String>,
}

/// A node's image as the suite tested it: the production image's digests,
/// and what its test build added (`applbuild build --test`), checked
/// before the boot.
#[derive(Debug, Clone, Serialize)]
pub struct TestedImage {
    /// SHA256 of the production image's `initrd.img`.
    pub image_initrd_sha256: String,
    /// SHA256 of its kernel.
    pub image_kernel_sha256: String,
    /// SHA256 of its UEFI disk `<profile>.img`, the bytes that get flashed.
    pub image_disk_sha256: Option<String>,
    /// SHA256 of the test channel's segment appended to the initramfs.
    pub test_segment_sha256: String,
    /// How many paths the segment adds.
    pub test_added_paths: usize,
    /// The image's paths the segment holds differently.
    pub test_replaced_paths: Vec<String>,
}

/// The first 12 hex digits of a digest, as the table shows it.
fn short_digest(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Per node: the production image the suite's test build was made of.
    pub images: BTreeMap<String, TestedImage>,
    /// Seconds from starting QEMU to the ready line, per node.
    pub boot_to_ready_seconds: BTreeMap<String, f64>,
    /// Every scenario, in order.
    pub scenarios: Vec<ScenarioReport>,
    /// Wall-clock seconds of the whole run, boots included.
    pub total_seconds: f64,
    /// Counts.
    pub passed: usize,
    /// Passed on a retry (counted in `passed` too).
    pub flaky: usize,
    /// See `passed`.
    pub failed: usize,
    /// See `passed`.
    pub skipped: usize,
    /// Problems outside any scenario (boot failure, console errors at boot).
    pub errors: Vec<String>,
}

impl SuiteReport {
    /// An empty report of a run under `accel` (`kvm` or `tcg`).
    pub fn new(accel: String) -> Self {
        SuiteReport {
            accel,
            images: BTreeMap::new(),
            boot_to_ready_seconds: BTreeMap::new(),
            scenarios: Vec::new(),
            total_seconds: 0.0,
            passed: 0,
            flaky: 0,
            failed: 0,
            skipped: 0,
            errors: Vec::new(),
        }
    }

    /// Fills in the counts from the scenarios.
    pub fn count(&mut self) {
        let count = |outcome| {
            self.scenarios
                .iter()
                .filter(|s| s.outcome == outcome)
                .count()
        };
        self.flaky = count(Outcome::Flaky);
        self.passed = count(Outcome::Passed) + self.flaky;
        self.failed = count(Outcome::Failed);
        self.skipped = count(Outcome::Skipped);
    }

    /// Whether the run failed: a scenario failed, or the cluster had errors.
    pub fn failed_overall(&self) -> bool {
        self.failed > 0 || !self.errors.is_empty()
    }

    /// The human-readable table; its last line is the plain count line.
    pub fn table(&self) -> String {
        let mut text = String::new();
        let boots: Vec<String> = self
            .boot_to_ready_seconds
            .iter()
            .map(|(node, seconds)| format!("{node} {seconds:.1} s"))
            .collect();
        text.push_str(&format!(
            "accel {}; boot to ready: {}\n",
            self.accel,
            boots.join(", ")
        ));
        for (node, image) in &self.images {
            text.push_str(&format!(
                "{node}: production initrd.img sha256 {} + test channel {} ({} paths added, {} replaced)\n",
                short_digest(&image.image_initrd_sha256),
                short_digest(&image.test_segment_sha256),
                image.test_added_paths,
                image.test_replaced_paths.len()
            ));
        }
        text.push_str(&format!(
            "{:<4} {:<34} {:<16} {:>7}  {}\n",
            "id", "scenario", "result", "seconds", "key timings"
        ));
        for scenario in &self.scenarios {
            let timings: Vec<String> = scenario
                .timings
                .iter()
                .map(|(name, value)| format!("{name}={}", short(*value)))
                .collect();
            text.push_str(&format!(
                "{:<4} {:<34} {:<16} {:>7.1}  {}\n",
                scenario.id,
                truncate(&scenario.title, 34),
                scenario.outcome.label(),
                scenario.seconds,
                timings.join(" ")
            ));
            if let Some(detail) = &scenario.detail
                && scenario.outcome == Outcome::Failed
            {
                for line in detail.lines().take(12) {
                    text.push_str(&format!("       | {line}\n"));
                }
            }
            for (attempt, failure) in scenario.failed_attempts.iter().enumerate() {
                let first = failure.lines().next().unwrap_or_default();
                text.push_str(&format!(
                    "       | attempt {} failed: {first}\n",
                    attempt + 1
                ));
            }
        }
        for error in &self.errors {
            text.push_str(&format!("error: {error}\n"));
        }
        text.push_str(&format!(
            "total {:.0} s\n{} passed",
            self.total_seconds, self.passed
        ));
        if self.flaky > 0 {
            text.push_str(&format!(" ({} flaky)", self.flaky));
        }
        text.push_str(&format!(", {} failed", self.failed));
        if self.skipped > 0 {
            text.push_str(&format!(", {} skipped", self.skipped));
        }
        text
    }

    /// Writes the JSON summary.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_file(path, &serde_json::to_string_pretty(self)?)
    }

    /// Writes JUnit XML: one test case per scenario; skipped ones are
    /// `<skipped>` with the reason.
    pub fn write_junit(&self, path: &Path) -> Result<()> {
        let mut suite = TestSuite::new("applbuild-failover");
        for scenario in &self.scenarios {
            let status = match scenario.outcome {
                Outcome::Passed => TestCaseStatus::success(),
                Outcome::Flaky => {
                    let mut status = TestCaseStatus::success();
                    for failure in &scenario.failed_attempts {
                        let mut rerun = TestRerun::new(NonSuccessKind::Failure);
                        rerun
                            .set_message(failure.lines().next().unwrap_or_default())
                            .set_stack_trace(failure.as_str());
                        status.add_rerun(rerun);
                    }
                    status
                }
                Outcome::Failed => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    if let Some(detail) = &scenario.detail {
                        status.set_message(detail.lines().next().unwrap_or_default());
                        status.set_description(detail.as_str());
                    }
                    status
                }
                Outcome::Skipped => {
                    let mut status = TestCaseStatus::skipped();
                    status.set_message(scenario.detail.clone().unwrap_or_default());
                    status
                }
            };
            let mut case = TestCase::new(format!("{} {}", scenario.id, scenario.title), status);
            case.set_classname("acceptance")
                .set_time(Duration::from_secs_f64(scenario.seconds));
            let mut out = String::new();
            for (name, value) in &scenario.timings {
                out.push_str(&format!("{name} = {value}\n"));
            }
            for note in &scenario.notes {
                out.push_str(&format!("note: {note}\n"));
            }
            if !out.is_empty() {
                case.set_system_out(out);
            }
            suite.add_test_case(case);
        }
        for error in &self.errors {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_message(error.lines().next().unwrap_or_default());
            status.set_description(error.as_str());
            suite.add_test_case(TestCase::new("cluster", status));
        }
        let mut report = Report::new("applbuild acceptance");
        report.set_time(Duration::from_secs_f64(self.total_seconds));
        report.add_test_suite(suite);
        write_file(path, &report.to_string()?)
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn short(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e9 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(id: &str, outcome: Outcome) -> ScenarioReport {
        ScenarioReport {
            id: id.into(),
            title: "a scenario".into(),
            outcome,
            seconds: 1.5,
            timings: BTreeMap::from([("detect_s".to_string(), 4.25)]),
            detail: (outcome == Outcome::Failed).then(|| "paths still active".into()),
            notes: vec![],
            failed_attempts: if outcome == Outcome::Flaky {
                vec!["guest: no reply".into()]
            } else {
                vec![]
            },
        }
    }

    fn counted_suite(scenarios: Vec<ScenarioReport>) -> SuiteReport {
        let mut report = SuiteReport {
            boot_to_ready_seconds: BTreeMap::from([("storage".to_string(), 30.0)]),
            scenarios,
            total_seconds: 100.0,
            ..SuiteReport::new("tcg".into())
        };
        report.count();
        report
    }

    #[test]
    fn last_line_counts_and_junit_has_one_case_per_scenario() {
        let report = counted_suite(vec![
            scenario("S1", Outcome::Passed),
            scenario("S7", Outcome::Failed),
            scenario("S6", Outcome::Skipped),
        ]);
        let table = report.table();
        assert_eq!(
            table.lines().last().unwrap(),
            "1 passed, 1 failed, 1 skipped"
        );
        assert!(table.contains("detect_s=4.25"), "{table}");
        assert!(report.failed_overall());
        let dir = std::env::temp_dir().join(format!("qemu-tests-report-{}", std::process::id()));
        let junit = dir.join("junit.xml");
        report.write_junit(&junit).unwrap();
        let xml = std::fs::read_to_string(&junit).unwrap();
        assert_eq!(xml.matches("<testcase ").count(), 3, "{xml}");
        assert!(xml.contains("<skipped"), "{xml}");
        assert!(xml.contains("paths still active"), "{xml}");
        report.write_json(&dir.join("summary.json")).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_pass_on_retry_is_counted_flaky_and_kept_in_junit() {
        let report = counted_suite(vec![
            scenario("S1", Outcome::Passed),
            scenario("S12", Outcome::Flaky),
        ]);
        assert!(!report.failed_overall());
        let table = report.table();
        assert_eq!(
            table.lines().last().unwrap(),
            "2 passed (1 flaky), 0 failed"
        );
        assert!(
            table.contains("attempt 1 failed: guest: no reply"),
            "{table}"
        );
        let dir = std::env::temp_dir().join(format!("qemu-tests-flaky-{}", std::process::id()));
        let junit = dir.join("junit.xml");
        report.write_junit(&junit).unwrap();
        let xml = std::fs::read_to_string(&junit).unwrap();
        assert!(xml.contains("<flakyFailure"), "{xml}");
        assert!(!xml.contains("<failure"), "{xml}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
