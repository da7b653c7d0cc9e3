//! S7–S12: faults under I/O. Each pulls virtual cables (QMP `set_link`) or
//! kills tgtd while a writer rewrites a known pattern on the multipath map,
//! then checks the paths, the writes and the data.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::io::{self, Stream, Writer};
use super::vm::ensure_guest;
use super::{Ctx, PathState, describe, must, wait_all_paths_up, wait_paths, with_args};
use crate::waits::wait_until;

/// Keeps a fault in place for a fixed time. This is the fault's duration,
/// not a wait for a state (those use `wait_until`).
fn hold(duration: Duration) {
    std::thread::sleep(duration);
}

/// Whether the paths through `iface` are all failed and the others up.
fn split(paths: &[PathState], iface: &str, expected: usize) -> bool {
    paths.len() == expected
        && paths.iter().any(|p| p.iface == iface)
        && paths.iter().all(|p| {
            if p.iface == iface {
                p.is_down()
            } else {
                p.is_up()
            }
        })
}

/// The hypervisor's uptime in seconds (its kernel log's clock).
fn hypervisor_uptime(ctx: &mut Ctx) -> Result<f64> {
    let text = must(&mut ctx.cluster.hypervisor, "cut -d' ' -f1 /proc/uptime")?;
    text.trim()
        .parse()
        .with_context(|| format!("unreadable uptime `{text}`"))
}

/// The kernel-log time of the first "Failing path" after `after` (uptime
/// seconds), from the device-mapper multipath target.
pub fn first_failing_path(dmesg: &str, after: f64) -> Option<f64> {
    dmesg
        .lines()
        .filter(|line| line.contains("multipath") && line.contains("Failing path"))
        .filter_map(|line| {
            let stamp = line.strip_prefix('[')?.split(']').next()?;
            stamp.trim().parse::<f64>().ok()
        })
        .find(|time| *time >= after)
}

/// Cuts `network` on the hypervisor (`storage == false`) or the storage
/// node, waits until exactly the paths through the hypervisor's SAN-B iface
/// are failed, and returns the detection time: from the cut to the
/// hypervisor kernel's "Failing path", both on the hypervisor's clock. The
/// time until the suite saw the failed paths, which adds its polling, is
/// recorded as `detect_observed_s`.
fn cut_and_detect(ctx: &mut Ctx, storage: bool, network: &str) -> Result<f64> {
    let iface = ctx
        .facts
        .iface_over(&ctx.facts.hypervisor_nic_b.0)
        .context("no iface over the SAN-B NIC")?;
    let expected = ctx.facts.paths();
    let before = hypervisor_uptime(ctx)?;
    let cut = Instant::now();
    if storage {
        ctx.cluster.storage.set_link(network, false)?;
    } else {
        ctx.cluster.hypervisor.set_link(network, false)?;
    }
    let timeout = ctx.secs(30);
    let (observed, paths) = wait_paths(
        ctx,
        cut,
        timeout,
        &format!("failed through {iface} only"),
        |p| split(p, &iface, expected),
    )?;
    ctx.keep("paths after the cut", &describe(&paths));
    ctx.timing("detect_observed_s", observed);
    let dmesg = must(
        &mut ctx.cluster.hypervisor,
        "dmesg | grep 'Failing path'; true",
    )?;
    ctx.keep("Failing path lines", &dmesg);
    let failed = first_failing_path(&dmesg, before)
        .with_context(|| format!("no \"Failing path\" in the kernel log after {before} s"))?;
    // The suite's own uptime read adds to the figure: it is an upper bound.
    Ok(failed - before)
}

/// Replugs and returns the time until every path is active again.
fn restore(ctx: &mut Ctx, storage: bool, network: &str) -> Result<f64> {
    let started = Instant::now();
    if storage {
        ctx.cluster.storage.set_link(network, true)?;
    } else {
        ctx.cluster.hypervisor.set_link(network, true)?;
    }
    let timeout = ctx.secs(60);
    wait_all_paths_up(ctx, started, timeout)
}

/// What the suite holds the tuning to: a pulled cable detected, and the
/// guest's I/O stalled, within 10 s.
const AIM_S: f64 = 10.0;

/// The limit on the detection time (kernel clock): the profile's bound
/// (NOP-Out interval + timeout + fast_io_fail_tmo + one checker interval)
/// plus 1 s of timer slack, and never above the aim.
fn detection_limit(ctx: &Ctx) -> f64 {
    (ctx.facts.detection_bound_s + 1.0).min(AIM_S)
}

/// The limit on the longest stall the guest's writer sees: the aim under
/// KVM; under TCG, where the guest runs nested and every 1 MiB write takes
/// a few hundred milliseconds of emulation, 2 s more.
fn stall_limit(ctx: &Ctx) -> f64 {
    match ctx.cluster.accel {
        applbuild_vm::qemu::Accel::Kvm => AIM_S,
        applbuild_vm::qemu::Accel::Tcg | applbuild_vm::qemu::Accel::ChosenAtStart => AIM_S + 2.0,
    }
}

/// S7: the hypervisor's SAN-B cable is pulled during writes.
pub fn s7_initiator_link_cut(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let timeout = ctx.secs(60);
    wait_all_paths_up(ctx, started, timeout)?;
    let stream = io::pattern(ctx, 7)?;
    let writer = Writer::start(ctx, "s7", &stream)?;
    let network = ctx.facts.hypervisor_nic_b.1.clone();
    let detect = cut_and_detect(ctx, false, &network)?;
    ctx.timing("detect_s", detect);
    // I/O must flow on the remaining paths while the cable is out.
    let timeout = ctx.secs(30);
    writer.await_progress(ctx, 3, timeout)?;
    let reinstate = restore(ctx, false, &network)?;
    ctx.timing("reinstate_s", reinstate);
    let log = finish_and_verify(ctx, writer, &stream)?;
    ctx.timing("writes", log.writes as f64);
    let limit = detection_limit(ctx);
    ctx.timing("detect_limit_s", limit);
    ensure!(
        detect <= limit,
        "path failure detected after {detect:.1} s, limit {limit:.1} s"
    );
    let limit = stall_limit(ctx);
    ctx.timing("stall_limit_s", limit);
    ensure!(
        log.longest_stall_s <= limit,
        "longest I/O stall {:.1} s, limit {limit:.1} s",
        log.longest_stall_s
    );
    Ok(())
}

/// S8: the storage node's SAN-B cable is pulled while it pings the guest
/// VM on br0 once a second, and while the guest writes.
pub fn s8_target_link_cut(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let timeout = ctx.secs(60);
    wait_all_paths_up(ctx, started, timeout)?;
    let stream = io::pattern(ctx, 8)?;
    let guest_ip = ctx
        .cluster
        .guest
        .as_ref()
        .context("the stream starts the guest")?
        .ip
        .clone();
    let ping_log = "/run/applbuild-test-ping.log";
    let storage = &mut ctx.cluster.storage;
    // One reply first, so ARP is settled and every later loss counts.
    must(storage, &format!("ping -c 1 -W 5 {guest_ip}"))?;
    must(
        storage,
        &format!(
            "rm -f {ping_log}; setsid ping {guest_ip} </dev/null >{ping_log} 2>&1 & echo $! > {ping_log}.pid"
        ),
    )?;
    let writer = Writer::start(ctx, "s8", &stream)?;
    let network = ctx.facts.storage_nic_b.1.clone();
    let detect = cut_and_detect(ctx, true, &network)?;
    ctx.timing("detect_s", detect);
    let timeout = ctx.secs(30);
    writer.await_progress(ctx, 3, timeout)?;
    let reinstate = restore(ctx, true, &network)?;
    ctx.timing("reinstate_s", reinstate);
    let timeout = ctx.secs(10);
    let storage = &mut ctx.cluster.storage;
    must(storage, &format!("kill -INT $(cat {ping_log}.pid)"))?;
    let ok = wait_until(timeout, Duration::from_millis(300), || {
        storage
            .sh(&format!("cat {ping_log}"))
            .is_ok_and(|t| t.contains("packets transmitted"))
    });
    let pings = must(storage, &format!("cat {ping_log}"))?;
    ctx.keep("ping", &pings);
    ensure!(ok, "ping printed no summary:\n{pings}");
    let (sent, received) = ping_summary(&pings).context("unreadable ping summary")?;
    ctx.timing("pings_sent", sent as f64);
    ctx.timing("lost_pings", (sent - received.min(sent)) as f64);
    let log = writer.finish(ctx)?;
    ctx.timing("longest_io_stall_s", log.longest_stall_s);
    io::verify(ctx, &log, &stream)?;
    ensure!(received >= sent, "{} of {sent} pings lost", sent - received);
    Ok(())
}

/// After a fault: waits until the writer completes a few more writes (I/O
/// flows again), stops it, records its longest stall and verifies every
/// byte it wrote against the pattern's SHA256.
fn finish_and_verify(ctx: &mut Ctx, writer: Writer, stream: &Stream) -> Result<io::WriterLog> {
    let timeout = ctx.secs(30);
    writer.await_progress(ctx, 3, timeout)?;
    let log = writer.finish(ctx)?;
    ctx.timing("longest_io_stall_s", log.longest_stall_s);
    io::verify(ctx, &log, stream)?;
    Ok(log)
}

/// Reads "N packets transmitted, M packets received" (BusyBox ping).
pub fn ping_summary(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    Some((*numbers.first()?, *numbers.get(1)?))
}

/// Runs a command in the guest and prints its start and end uptime.
const TIMED: &str = include_str!("../../scripts/scenario-timed.sh");

/// Runs one timed `dd` in the guest and returns MB/s; `command` is its
/// words separated by spaces (none needs quoting).
fn throughput(ctx: &mut Ctx, command: &str, mib: u64) -> Result<f64> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let output = ctx
        .cluster
        .guest_exec(&with_args(TIMED, &words), Duration::from_secs(300))?;
    ensure!(output.success(), "`{command}` failed: {}", output.stdout);
    let times: Vec<f64> = output
        .stdout
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    ensure!(
        times.len() == 2,
        "no timing from `{command}`: {}",
        output.stdout
    );
    let seconds = (times[1] - times[0]).max(0.01);
    Ok((mib << 20) as f64 / 1e6 / seconds)
}

/// S9: the guest's write (fsync) and read throughput on its disk with all
/// paths, then with half of them.
pub fn s9_throughput(ctx: &mut Ctx) -> Result<()> {
    const MIB: u64 = 32;
    let started = Instant::now();
    let timeout = ctx.secs(60);
    wait_all_paths_up(ctx, started, timeout)?;
    ensure_guest(ctx)?;
    let device = io::guest_data_device();
    // Past the region the other scenarios verify.
    let seek = io::PATTERN_MIB;
    let write = format!(
        "dd if=/dev/zero of={device} bs=1M count={MIB} seek={seek} oflag=direct conv=fsync"
    );
    let read = format!("dd if={device} of=/dev/null bs=1M count={MIB} skip={seek} iflag=direct");
    let write_all = throughput(ctx, &write, MIB)?;
    let read_all = throughput(ctx, &read, MIB)?;
    let network = ctx.facts.hypervisor_nic_b.1.clone();
    cut_and_detect(ctx, false, &network)?;
    let write_half = throughput(ctx, &write, MIB)?;
    let read_half = throughput(ctx, &read, MIB)?;
    restore(ctx, false, &network)?;
    ctx.timing("write_all_mbs", write_all);
    ctx.timing("read_all_mbs", read_all);
    ctx.timing("write_half_mbs", write_half);
    ctx.timing("read_half_mbs", read_half);
    ctx.timing("write_ratio", write_half / write_all);
    ctx.timing("read_ratio", read_half / read_all);
    Ok(())
}

/// S10: both hypervisor cables pulled for longer than the detection time:
/// writes block (queued) without failing, and complete once replugged.
pub fn s10_all_paths_down(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let timeout = ctx.secs(60);
    wait_all_paths_up(ctx, started, timeout)?;
    let stream = io::pattern(ctx, 10)?;
    let writer = Writer::start(ctx, "s10", &stream)?;
    let networks = ctx.cluster.hypervisor.networks();
    let cut = Instant::now();
    for network in &networks {
        ctx.cluster.hypervisor.set_link(network, false)?;
    }
    let timeout = ctx.secs(30);
    let (detect, _) = wait_paths(ctx, cut, timeout, "all failed", |p| {
        !p.is_empty() && p.iter().all(PathState::is_down)
    })?;
    ctx.timing("all_down_detect_s", detect);
    let before = writer.read(ctx)?;
    // Hold the cables out for another full detection time: I/O must queue.
    hold(Duration::from_secs_f64(ctx.facts.detection_bound_s));
    let during = writer.read(ctx)?;
    ctx.timing("cut_s", cut.elapsed().as_secs_f64());
    ensure!(
        during.failures == 0,
        "writes failed while every path was down: {}",
        during.errors
    );
    ensure!(
        during.writes <= before.writes + 1,
        "{} writes completed with every path down: not queued?",
        during.writes - before.writes
    );
    let replug = Instant::now();
    for network in &networks {
        ctx.cluster.hypervisor.set_link(network, true)?;
    }
    let timeout = ctx.secs(60);
    let reinstate = wait_all_paths_up(ctx, replug, timeout)?;
    ctx.timing("reinstate_s", reinstate);
    finish_and_verify(ctx, writer, &stream)?;
    Ok(())
}

/// S11: tgtd is killed (-9) during writes; init restarts and reconfigures
/// it, the sessions log in again, no write fails, the data verifies.
pub fn s11_target_restart(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let timeout = ctx.secs(60);
    wait_all_paths_up(ctx, started, timeout)?;
    let stream = io::pattern(ctx, 11)?;
    let writer = Writer::start(ctx, "s11", &stream)?;
    let old = must(&mut ctx.cluster.storage, "pidof tgtd")?;
    let killed = Instant::now();
    must(&mut ctx.cluster.storage, "kill -9 $(pidof tgtd)")?;
    let timeout = ctx.secs(60);
    let tgtd_back = format!(
        "pidof tgtd && test -e {} && tgtadm --lld iscsi --op show --mode target | grep -q 'LUN: 1'",
        applbuild::services::ready_marker("tgtd")
    );
    let storage = &mut ctx.cluster.storage;
    let back = wait_until(timeout, Duration::from_millis(300), || {
        storage
            .sh(&tgtd_back)
            .is_ok_and(|pid| pid.split_whitespace().next() != old.split_whitespace().next())
    });
    ensure!(
        back,
        "tgtd was not restarted with its LUN within {timeout:?}"
    );
    ctx.timing("tgtd_back_s", killed.elapsed().as_secs_f64());
    let timeout = ctx.secs(90);
    let recovered = wait_all_paths_up(ctx, killed, timeout)?;
    ctx.timing("paths_back_s", recovered);
    finish_and_verify(ctx, writer, &stream)?;
    Ok(())
}

/// S12: the hypervisor's SAN-B cable is pulled and replugged five times
/// during writes; at the end every path is active and the data verifies.
pub fn s12_link_flapping(ctx: &mut Ctx) -> Result<()> {
    const FLAPS: usize = 5;
    let started = Instant::now();
    let timeout = ctx.secs(60);
    wait_all_paths_up(ctx, started, timeout)?;
    let stream = io::pattern(ctx, 12)?;
    let writer = Writer::start(ctx, "s12", &stream)?;
    let network = ctx.facts.hypervisor_nic_b.1.clone();
    // Each phase is shorter than the detection time half of the time, so
    // both "noticed" and "not noticed" flaps happen.
    let phases = [2u64, 6, 3, 8, 2];
    for (n, seconds) in phases.iter().enumerate().take(FLAPS) {
        ctx.cluster.hypervisor.set_link(&network, false)?;
        hold(Duration::from_secs(*seconds));
        ctx.cluster.hypervisor.set_link(&network, true)?;
        hold(Duration::from_secs(*seconds));
        let log = writer.read(ctx)?;
        ensure!(
            log.failures == 0,
            "write failed during flap {}: {}",
            n + 1,
            log.errors
        );
    }
    let replug = Instant::now();
    let timeout = ctx.secs(60);
    let settle = wait_all_paths_up(ctx, replug, timeout)?;
    ctx.timing("settle_s", settle);
    ctx.timing("flaps", FLAPS as f64);
    finish_and_verify(ctx, writer, &stream)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_path_time_comes_from_the_kernel_log() {
        let dmesg = "[  100.000001] device-mapper: multipath: 253:0: Failing path 8:32.\n\
                     [  207.250000] device-mapper: multipath: 253:0: Failing path 8:48.\n";
        assert_eq!(first_failing_path(dmesg, 200.0), Some(207.25));
        assert_eq!(first_failing_path(dmesg, 300.0), None);
    }

    #[test]
    fn busybox_ping_summary() {
        let text = "PING 192.0.2.31 (192.0.2.31): 56 data bytes\n\n--- 192.0.2.31 ping statistics ---\n25 packets transmitted, 24 packets received, 4% packet loss\n";
        assert_eq!(ping_summary(text), Some((25, 24)));
    }

    #[test]
    fn split_needs_exactly_the_iface_down() {
        let path = |iface: &str, dm: &str, chk: &str| PathState {
            dev: "sdx".into(),
            dm: dm.into(),
            checker: chk.into(),
            iface: iface.into(),
            portal: "p".into(),
        };
        let paths = vec![
            path("ibr0", "active", "ready"),
            path("ieth1", "failed", "faulty"),
        ];
        assert!(split(&paths, "ieth1", 2));
        assert!(!split(&paths, "ibr0", 2));
        assert!(!split(&paths, "ieth1", 4));
    }
}
