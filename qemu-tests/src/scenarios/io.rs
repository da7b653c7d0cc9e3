//! The guest VM's I/O in the fault scenarios: a seeded pseudorandom stream
//! (AES-128-CTR of zeros keyed by the seed, so the same seed gives the same
//! bytes) kept in the guest's RAM with its sha256, and a background writer
//! that writes it to the guest's data partition again and again, one direct
//! and fsynced 1 MiB `dd` at a time, logging a timestamp (guest uptime) and
//! the exit status of every write. The longest gap between two log lines is
//! the longest I/O stall the guest saw. Each scenario uses its own seed, so
//! a verification can only pass on bytes that scenario wrote.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use super::vm::ensure_guest;
use super::{Ctx, device_sha256};
use crate::guest;
use crate::waits::wait_until;

/// Folder of the suite's files in the guest.
pub const DIR: &str = "/run/applbuild-test";
/// The AES-CTR initial counter: the seed, as the key, is what varies.
const STREAM_IV: &str = "00000000000000000000000000000000";
/// The line between the writer's log and dd's errors in one reply.
const ERRORS_MARKER: &str = "@@errors";
/// Size of the stream in MiB.
pub const PATTERN_MIB: u64 = 16;

/// The guest's data partition, as the guest sees it.
pub fn guest_data_device() -> String {
    format!("/dev/vda{}", guest::DATA_PARTITION)
}

/// The background writer, installed in the guest as `DIR/writer`.
const WRITER: &str = include_str!("../../scripts/scenario-writer.sh");

/// The stream of one seed.
pub struct Stream {
    /// Its file in the guest.
    pub file: String,
    /// Its sha256.
    pub sha256: String,
}

/// Makes sure the guest runs, generates the stream of `seed` in it and
/// returns its file and sha256.
pub fn pattern(ctx: &mut Ctx, seed: u64) -> Result<Stream> {
    ensure_guest(ctx)?;
    let file = format!("{DIR}/stream-{seed}");
    // Earlier scenarios' streams go: 16 MiB each of the guest's RAM.
    let command = format!(
        "mkdir -p {DIR} && rm -f {DIR}/stream-* && dd if=/dev/zero bs=1M count={PATTERN_MIB} 2>/dev/null | \
         openssl enc -aes-128-ctr -nosalt -K {seed:032x} -iv {STREAM_IV} > {file} && sha256sum {file}"
    );
    let output = ctx.cluster.guest_sh(&command)?;
    // The output is merged with stderr: take the line sha256sum printed.
    let sha256 = output
        .lines()
        .find(|line| line.ends_with(&format!(" {file}")))
        .and_then(|line| line.split_whitespace().next())
        .map(String::from)
        .with_context(|| format!("no sha256 of the stream in:\n{output}"))?;
    Ok(Stream { file, sha256 })
}

/// A background writer in the guest.
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
    /// Starts writing `stream` to the guest's data partition in the
    /// background.
    pub fn start(ctx: &mut Ctx, name: &str, stream: &Stream) -> Result<Self> {
        let log = format!("{DIR}/{name}.log");
        let stop = format!("{DIR}/{name}.stop");
        let device = guest_data_device();
        let script = format!("{DIR}/writer");
        ctx.cluster.guest_sh(&format!(
            "mkdir -p {DIR} && cat > {script} <<'EOF'\n{WRITER}EOF\nchmod +x {script} && rm -f {log} {log}.err {stop}"
        ))?;
        ctx.cluster.guest_sh(&format!(
            "setsid {script} {device} {} {PATTERN_MIB} {stop} {log} </dev/null >/dev/null 2>&1 &",
            stream.file
        ))?;
        let writer = Self { log, stop };
        // Started means one write went through.
        let timeout = ctx.secs(30);
        let ok = wait_until(timeout, Duration::from_millis(300), || {
            writer.read(ctx).is_ok_and(|l| l.writes > 0)
        });
        if !ok {
            bail!("the guest's writer made no write within {timeout:?}");
        }
        Ok(writer)
    }

    /// Reads the log so far and dd's errors, in one round trip. Reading is
    /// harmless to repeat, so a reply the control channel lost is asked
    /// for again (up to 3 times) before it counts as a failure.
    pub fn read(&self, ctx: &mut Ctx) -> Result<WriterLog> {
        let command = format!(
            "cat {log} 2>/dev/null; echo {ERRORS_MARKER}; head -c 2000 {log}.err 2>/dev/null; true",
            log = self.log
        );
        let mut attempt = 1;
        let output = loop {
            match ctx.cluster.guest_sh(&command) {
                Ok(output) => break output,
                Err(error) if attempt < 3 => {
                    eprintln!("applbuild-test: reading the writer's log again: {error:#}");
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        };
        Ok(parse_read(&output))
    }

    /// Number of writes so far.
    pub fn writes(&self, ctx: &mut Ctx) -> Result<usize> {
        Ok(self.read(ctx)?.writes)
    }

    /// Waits until `more` writes complete after now (I/O flows).
    pub fn await_progress(&self, ctx: &mut Ctx, more: usize, timeout: Duration) -> Result<()> {
        let base = self.writes(ctx)?;
        let ok = wait_until(timeout, Duration::from_millis(300), || {
            self.read(ctx).is_ok_and(|l| l.writes >= base + more)
        });
        ensure!(
            ok,
            "I/O did not progress by {more} writes within {timeout:?}"
        );
        Ok(())
    }

    /// Asks the writer to stop after its current pass and waits for it.
    pub fn finish(self, ctx: &mut Ctx) -> Result<WriterLog> {
        ctx.cluster.guest_sh(&format!("touch {}", self.stop))?;
        let timeout = ctx.secs(120);
        let ok = wait_until(timeout, Duration::from_millis(500), || {
            self.read(ctx).is_ok_and(|l| l.done)
        });
        let log = self.read(ctx)?;
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

/// Parses the reply to [`Writer::read`]: the log, the marker line, dd's
/// errors.
fn parse_read(output: &str) -> WriterLog {
    let (text, errors) = output
        .split_once(&format!("{ERRORS_MARKER}\n"))
        .unwrap_or((output, ""));
    parse_log(text, errors.to_string())
}

/// Parses a writer log. A last line without its newline is still being
/// written and is left for the next read.
fn parse_log(text: &str, errors: String) -> WriterLog {
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    let mut times = Vec::new();
    let mut failures = 0;
    let mut done = false;
    for line in complete.lines() {
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

/// Checks a finished writer: no failed write, and the whole stream reads
/// back byte for byte, both in the guest (its data partition) and in the
/// hypervisor (the same partition of the multipath map).
pub fn verify(ctx: &mut Ctx, log: &WriterLog, stream: &Stream) -> Result<()> {
    ensure!(
        log.failures == 0,
        "{} of {} writes failed in the guest: {}",
        log.failures,
        log.writes,
        log.errors
    );
    let device = guest_data_device();
    let output = ctx.cluster.guest_sh(&format!(
        "dd if={device} bs=1M count={PATTERN_MIB} iflag=direct 2>/dev/null | sha256sum"
    ))?;
    let read = output.split_whitespace().next().unwrap_or_default();
    ensure!(
        read == stream.sha256,
        "the guest read back {read} from {device}, wrote {}",
        stream.sha256
    );
    let partition = guest::map_partition(&ctx.facts.alias, guest::DATA_PARTITION);
    let read = device_sha256(&mut ctx.cluster.hypervisor, &partition, PATTERN_MIB)?;
    ensure!(
        read == stream.sha256,
        "the hypervisor read back {read} from {partition}, the guest wrote {}",
        stream.sha256
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

    #[test]
    fn one_reply_carries_the_log_and_the_errors() {
        let log = parse_read("10.0 0 0 ok\n10.5 0 1 ok\n@@errors\ndd: oops\n");
        assert_eq!(log.writes, 2);
        assert_eq!(log.errors, "dd: oops\n");
        let empty = parse_read("@@errors\n");
        assert_eq!(empty.writes, 0);
        assert!(empty.errors.is_empty());
    }

    #[test]
    fn a_line_being_written_is_not_read_as_a_failure() {
        let log = parse_read("10.0 0 0 ok\n10.5 0 1 o@@errors\n");
        assert_eq!(log.writes, 1);
        assert_eq!(log.failures, 0);
    }
}
