//! Progress reporting for long steps: bars on a terminal, silence in CI logs.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a task counts, which decides how its position is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Discrete items (packages, files, segments).
    Items,
    /// Bytes, printed in binary units.
    Bytes,
}

/// Hands out progress bars; draws nothing unless standard error is a terminal
/// and `CI` is unset, so CI logs stay readable.
#[derive(Clone)]
pub struct Reporter {
    multi: Option<MultiProgress>,
}

impl Reporter {
    /// A reporter that draws when stderr is an interactive terminal outside CI.
    pub fn for_terminal() -> Self {
        let interactive = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Self::new(interactive)
    }

    /// A reporter that draws only when `enabled`.
    pub fn new(enabled: bool) -> Self {
        let multi = enabled.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { multi }
    }

    /// A reporter that never draws (tests, `--json`).
    pub fn hidden() -> Self {
        Self::new(false)
    }

    /// Starts a task of known size.
    pub fn bar(&self, label: &str, total: u64, unit: Unit) -> Task {
        let Some(multi) = &self.multi else {
            return Task { bar: None };
        };
        let template = match unit {
            Unit::Items => "{prefix:>12.cyan.bold} [{bar:30}] {pos}/{len} {wide_msg}",
            Unit::Bytes => "{prefix:>12.cyan.bold} [{bar:30}] {bytes}/{total_bytes} {wide_msg}",
        };
        let bar = multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("progress template is valid")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Task { bar: Some(bar) }
    }

    /// Starts a task of unknown size.
    pub fn spinner(&self, label: &str) -> Task {
        let Some(multi) = &self.multi else {
            return Task { bar: None };
        };
        let bar = multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12.cyan.bold} {spinner} {wide_msg}")
                .expect("progress template is valid"),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Task { bar: Some(bar) }
    }
}

/// One step's progress; every method is a no-op when nothing is drawn.
pub struct Task {
    bar: Option<ProgressBar>,
}

impl Task {
    /// Advances the position by `delta`.
    pub fn inc(&self, delta: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(delta);
        }
    }

    /// Shows what the task is working on now.
    pub fn set_message(&self, message: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.into());
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
