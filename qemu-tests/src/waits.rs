//! Waiting for a state instead of sleeping: poll a condition until it holds
//! or a deadline passes.

use std::time::{Duration, Instant};

/// Polls `condition` every `poll` until it returns true (→ true) or
/// `timeout` has passed (→ false). The condition is always tried at least
/// once, and once more at the deadline.
pub fn wait_until(timeout: Duration, poll: Duration, mut condition: impl FnMut() -> bool) -> bool {
    wait_for(timeout, poll, || condition().then_some(())).is_some()
}

/// Polls `probe` until it yields a value, or gives up after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    poll: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// How long waits may take: the nominal time under KVM, times
/// [`applbuild_vm::qemu::Accel::timeout_scale`] under TCG.
#[derive(Debug, Clone, Copy)]
pub struct Scale(pub u32);

impl Scale {
    /// `seconds` scaled.
    pub fn secs(self, seconds: u64) -> Duration {
        Duration::from_secs(seconds * u64::from(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let mut calls = 0;
        let started = Instant::now();
        assert!(wait_until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                calls += 1;
                calls == 3
            }
        ));
        assert_eq!(calls, 3);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn gives_up_at_the_deadline() {
        let started = Instant::now();
        assert!(!wait_until(
            Duration::from_millis(50),
            Duration::from_millis(10),
            || false
        ));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            wait_for(Duration::ZERO, Duration::from_millis(1), || Some(7)),
            Some(7)
        );
    }
}
