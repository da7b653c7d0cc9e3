//! Guest-side I/O used by the fault scenarios: a known random pattern kept
//! in /run with its sha256, and a background writer that writes it to the
//! multipath device again and again, one direct 1 MiB `dd` at a time, logging
//! a timestamp (guest uptime) and the exit status of every write. The
//! longest gap between two log lines is the longest I/O stall the writer saw.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use super::{Ctx, device_sha256, must};
use crate::waits::wait_until;

/// Folder of the suite's files in the hypervisor.
pub const DIR: &str = "/run/applbuild-test";
/// Size of the pattern in MiB.
pub const PATTERN_MIB: u64 = 32;

const WRITER: &str = r#"#!/bin/sh
# writer DEV PATTERN MIB STOPFILE LOG: rewrites PATTERN onto DEV in 1 MiB
# direct writes until STOPFILE exists (checked after each full pass).
dev=$1 pat=$2 mib=$3 stop=$4 log=$5
pass=0
while :; do
  i=0
  while [ $i -lt $mib ]; do
    if dd if=$pat of=$dev bs=1M count=1 skip=$i seek=$i oflag=direct conv=notrunc,fsync 2>>$log.err; then s=ok; else s=FAIL; fi
    echo "$(cut -d' ' -f1 /proc/uptime) $pass $i $s" >> $log
    i=$((i+1))
  done
  pass=$((pass+1))
  [ -e $stop ] && break
done
echo "DONE $(cut -d' ' -f1 /proc/uptime)" >> $log
"#;

/// Makes the pattern (once) and returns its sha256.
pub fn pattern(ctx: &mut Ctx) -> Result<String> {
    let command = format!(
        "mkdir -p {DIR} && {{ [ -s {DIR}/pattern ] || dd if=/dev/urandom of={DIR}/pattern bs=1M count={PATTERN_MIB} 2>/dev/null; }} && sha256sum {DIR}/pattern"
    );
    let output = must(&mut ctx.cluster.hypervisor, &command)?;
    output
        .split_whitespace()
        .next()
        .map(String::from)
        .context("no sha256 of the pattern")
}

/// A background writer in the hypervisor.
pub struct Writer {
    log: String,
    stop: String,
}

/// What a writer did.
#[derive(Debug, Clone)]
pub struct WriterLog {
    /// Writes that completed.
    pub writes: usize,
    /// Writes whose `dd` failed.
    pub failures: usize,
    /// Longest gap between two consecutive writes' completions, seconds.
    pub longest_stall_s: f64,
    /// Whether the writer finished (saw the stop file after a full pass).
    pub done: bool,
    /// dd's error output, if any.
    pub errors: String,
}

impl Writer {
    /// Starts writing the pattern to the alias's map in the background.
    pub fn start(ctx: &mut Ctx, name: &str) -> Result<Self> {
        let log = format!("{DIR}/{name}.log");
        let stop = format!("{DIR}/{name}.stop");
        let device = format!("/dev/mapper/{}", ctx.facts.alias);
        let script = format!("{DIR}/writer");
        let hypervisor = &mut ctx.cluster.hypervisor;
        must(
            hypervisor,
            &format!(
                "mkdir -p {DIR} && cat > {script} <<'EOF'\n{WRITER}EOF\nchmod +x {script} && rm -f {log} {log}.err {stop}"
            ),
        )?;
        must(
            hypervisor,
            &format!(
                "setsid {script} {device} {DIR}/pattern {PATTERN_MIB} {stop} {log} </dev/null >/dev/null 2>&1 &"
            ),
        )?;
        let writer = Self { log, stop };
        // Started means one write went through.
        let timeout = ctx.secs(30);
        let hypervisor = &mut ctx.cluster.hypervisor;
        let ok = wait_until(timeout, Duration::from_millis(300), || {
            writer.read(hypervisor).is_ok_and(|l| l.writes > 0)
        });
        ensure!(ok, "the writer made no write within {timeout:?}");
        Ok(writer)
    }

    /// Reads the log so far.
    pub fn read(&self, node: &mut crate::cluster::Node) -> Result<WriterLog> {
        let text = node.sh(&format!("cat {} 2>/dev/null; true", self.log))?;
        let errors = node.sh(&format!("head -c 2000 {}.err 2>/dev/null; true", self.log))?;
        Ok(parse_log(&text, errors))
    }

    /// Number of writes so far.
    pub fn writes(&self, ctx: &mut Ctx) -> Result<usize> {
        Ok(self.read(&mut ctx.cluster.hypervisor)?.writes)
    }

    /// Waits until `more` writes complete after now (I/O flows).
    pub fn await_progress(&self, ctx: &mut Ctx, more: usize, timeout: Duration) -> Result<()> {
        let base = self.writes(ctx)?;
        let hypervisor = &mut ctx.cluster.hypervisor;
        let ok = wait_until(timeout, Duration::from_millis(300), || {
            self.read(hypervisor).is_ok_and(|l| l.writes >= base + more)
        });
        ensure!(
            ok,
            "I/O did not progress by {more} writes within {timeout:?}"
        );
        Ok(())
    }

    /// Asks the writer to stop after its current pass and waits for it.
    pub fn finish(self, ctx: &mut Ctx) -> Result<WriterLog> {
        must(&mut ctx.cluster.hypervisor, &format!("touch {}", self.stop))?;
        let timeout = ctx.secs(120);
        let hypervisor = &mut ctx.cluster.hypervisor;
        let ok = wait_until(timeout, Duration::from_millis(500), || {
            self.read(hypervisor).is_ok_and(|l| l.done)
        });
        let log = self.read(&mut ctx.cluster.hypervisor)?;
        if !ok {
            bail!(
                "the writer did not finish within {timeout:?} ({} writes, {} failed)",
                log.writes,
                log.failures
            );
        }
        Ok(log)
    }
}

/// Parses a writer log.
pub fn parse_log(text: &str, errors: String) -> WriterLog {
    let mut times = Vec::new();
    let mut failures = 0;
    let mut done = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() == Some(&"DONE") {
            done = true;
            continue;
        }
        if fields.len() == 4 {
            if let Ok(time) = fields[0].parse::<f64>() {
                times.push(time);
            }
            if fields[3] != "ok" {
                failures += 1;
            }
        }
    }
    let longest_stall_s = times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .fold(0.0, f64::max);
    WriterLog {
        writes: times.len(),
        failures,
        longest_stall_s,
        done,
        errors,
    }
}

/// Checks a finished writer: no failed write, and the device holds the
/// pattern byte for byte.
pub fn verify(ctx: &mut Ctx, log: &WriterLog, sha256: &str) -> Result<()> {
    ensure!(
        log.failures == 0,
        "{} of {} writes failed: {}",
        log.failures,
        log.writes,
        log.errors
    );
    let device = format!("/dev/mapper/{}", ctx.facts.alias);
    let read = device_sha256(&mut ctx.cluster.hypervisor, &device, PATTERN_MIB)?;
    ensure!(
        read == sha256,
        "read back {read} from {device}, wrote {sha256}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_and_failures_come_from_the_log() {
        let log = parse_log(
            "10.0 0 0 ok\n10.5 0 1 ok\n18.5 0 2 FAIL\n19.0 0 3 ok\nDONE 19.1\n",
            String::new(),
        );
        assert_eq!(log.writes, 4);
        assert_eq!(log.failures, 1);
        assert!((log.longest_stall_s - 8.0).abs() < 1e-9);
        assert!(log.done);
    }
}
