//! The acceptance scenarios S1–S16 of `docs/acceptance.md`, as named
//! functions run in order on one booted cluster, and the helpers they share
//! (facts from the profiles, path and session state of the hypervisor).

mod access;
mod basic;
mod faults;
mod io;
mod isolation;
mod operator;
mod vm;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::cluster::{Cluster, Node};
use crate::report::{Outcome, ScenarioReport};
use crate::waits::wait_for;

/// A scenario body: asserts through `Result`, records timings in the context.
pub type ScenarioFn = fn(&mut Ctx) -> Result<()>;

/// One scenario of the suite.
pub struct Scenario {
    /// `S1` … `S16`.
    pub id: &'static str,
    /// What it proves.
    pub title: &'static str,
    /// Its implementation.
    pub run: ScenarioFn,
}

/// Every scenario, in the order they run.
pub fn all() -> Vec<Scenario> {
    let table: [(&'static str, &'static str, ScenarioFn); 17] = [
        ("S1", "storage node up", basic::s1_storage_up),
        ("S2", "discovery", basic::s2_discovery),
        ("S3", "login", basic::s3_login),
        ("S4", "multipath", basic::s4_multipath),
        ("S5", "bridge", basic::s5_bridge),
        (
            "S6",
            "VM on the multipath disk",
            vm::s6_vm_on_multipath_disk,
        ),
        (
            "S7",
            "initiator link cut under I/O",
            faults::s7_initiator_link_cut,
        ),
        (
            "S8",
            "target link cut under ping",
            faults::s8_target_link_cut,
        ),
        ("S9", "throughput", faults::s9_throughput),
        ("S10", "all paths down", faults::s10_all_paths_down),
        ("S11", "target restart", faults::s11_target_restart),
        ("S12", "link flapping", faults::s12_link_flapping),
        ("S13", "access control", access::s13_access_control),
        ("S14", "reboot", access::s14_reboot),
        // After the reboot: the filter and the keys the nodes have by themselves.
        (
            "S15",
            "guests kept off the SAN",
            isolation::s15_guests_off_the_san,
        ),
        ("S16", "operator access", operator::s16_operator_access),
        ("S17", "VM restarted by the node", vm::s17_vm_restarted),
    ];
    table
        .into_iter()
        .map(|(id, title, run)| Scenario { id, title, run })
        .collect()
}

/// Values from the profiles the scenarios assert against.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Target IQN.
    pub target: String,
    /// Portals `ADDRESS:PORT`.
    pub portals: Vec<String>,
    /// iSCSI iface names and the NIC each is bound to.
    pub ifaces: Vec<(String, String)>,
    /// WWID of LUN 1.
    pub wwid: String,
    /// Map alias.
    pub alias: String,
    /// Size of the LUN's backing disk.
    pub disk_bytes: u64,
    /// The longest a dead link may go unnoticed: NOP-Out interval + timeout
    /// + fast_io_fail_tmo + one checker interval.
    pub detection_bound_s: f64,
    /// The bridge's address without the prefix length.
    pub hypervisor_bridge_ip: String,
    /// The hypervisor NIC on SAN-B and its network (the one cut in S7).
    pub hypervisor_nic_b: (String, String),
    /// The storage NIC on SAN-B and its network.
    pub storage_nic_b: (String, String),
}

impl Facts {
    /// Reads the facts from the two profiles.
    pub fn from_cluster(cluster: &Cluster) -> Result<Self> {
        let storage = &cluster.storage.loaded.profile;
        let hypervisor = &cluster.hypervisor.loaded.profile;
        let target = storage
            .target
            .as_ref()
            .ok_or_else(|| anyhow!("storage profile has no [target]"))?;
        let initiator = hypervisor
            .initiator
            .as_ref()
            .ok_or_else(|| anyhow!("hypervisor profile has no [initiator]"))?;
        let multipath = hypervisor
            .multipath
            .as_ref()
            .ok_or_else(|| anyhow!("hypervisor profile has no [multipath]"))?;
        let disk = storage
            .qemu
            .disks
            .first()
            .ok_or_else(|| anyhow!("storage profile has no [qemu] disk"))?;
        let nic_on = |profile: &applbuild::profile::Profile, network: &str| {
            profile
                .network
                .interfaces
                .iter()
                .find(|i| i.network == network)
                .map(|i| (i.name.clone(), i.network.clone()))
                .ok_or_else(|| anyhow!("no NIC on {network}"))
        };
        let bridge_ip = hypervisor
            .network
            .bridges
            .first()
            .and_then(|b| b.address.clone())
            .ok_or_else(|| anyhow!("hypervisor profile has no bridge address"))?;
        let timeouts = &initiator.timeouts;
        Ok(Self {
            target: target.iqn.clone(),
            portals: target.portals.clone(),
            ifaces: initiator
                .ifaces
                .iter()
                .map(|i| (i.name.clone(), i.netdev.clone()))
                .collect(),
            wwid: multipath.wwid.clone(),
            alias: multipath.alias.clone(),
            disk_bytes: disk.size_mib << 20,
            detection_bound_s: f64::from(
                timeouts.noop_out_interval
                    + timeouts.noop_out_timeout
                    + multipath.fast_io_fail_tmo
                    + multipath.polling_interval,
            ),
            hypervisor_bridge_ip: strip_prefix_len(&bridge_ip),
            hypervisor_nic_b: nic_on(hypervisor, "san-b")?,
            storage_nic_b: nic_on(storage, "san-b")?,
        })
    }

    /// Number of paths expected: portals × ifaces.
    pub fn paths(&self) -> usize {
        self.portals.len() * self.ifaces.len()
    }

    /// The iSCSI iface bound to `nic` (or to the bridge `nic` is a port of).
    pub fn iface_over(&self, nic: &str) -> Option<String> {
        self.ifaces
            .iter()
            .find(|(_, netdev)| netdev == nic)
            .map(|(name, _)| name.clone())
    }
}

fn strip_prefix_len(address: &str) -> String {
    address.split('/').next().unwrap_or(address).to_string()
}

/// What a scenario works with and records.
pub struct Ctx<'a> {
    /// The booted nodes.
    pub cluster: &'a mut Cluster,
    /// Profile values.
    pub facts: Facts,
    /// Measurements, by name.
    pub timings: BTreeMap<String, f64>,
    /// Observations that do not fail the scenario.
    pub notes: Vec<String>,
    /// Guest outputs worth keeping if the scenario fails.
    pub outputs: Vec<String>,
}

impl Ctx<'_> {
    /// Records a measurement.
    pub fn timing(&mut self, name: &str, value: f64) {
        self.timings
            .insert(name.to_string(), (value * 100.0).round() / 100.0);
    }

    /// Records a guest output for the failure artifacts.
    pub fn keep(&mut self, label: &str, text: &str) {
        self.outputs.push(format!("## {label}\n{text}\n"));
    }

    /// Nominal duration scaled for the accelerator.
    pub fn secs(&self, seconds: u64) -> Duration {
        self.cluster.scale().secs(seconds)
    }
}

/// One multipath path as multipathd sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathState {
    /// `sdb`.
    pub dev: String,
    /// Device-mapper state: `active` or `failed`.
    pub dm: String,
    /// Checker state: `ready`, `faulty`, `ghost`, …
    pub checker: String,
    /// The iSCSI iface of its session (`ibr0`, `ieth1`).
    pub iface: String,
    /// The portal address of its session.
    pub portal: String,
}

impl PathState {
    /// active and ready.
    pub fn is_up(&self) -> bool {
        self.dm == "active" && self.checker == "ready"
    }

    /// failed in device-mapper (the checker may still say faulty or shaky).
    pub fn is_down(&self) -> bool {
        self.dm == "failed"
    }
}

/// `multipathd show paths` joined with each disk's iSCSI session.
const PATHS_SCRIPT: &str = include_str!("../../scripts/scenario-paths.sh");

/// Parses the output of [`PATHS_SCRIPT`].
pub fn parse_paths(text: &str) -> Vec<PathState> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 5 || !fields[0].starts_with("sd") {
                return None;
            }
            Some(PathState {
                dev: fields[0].into(),
                dm: fields[1].into(),
                checker: fields[2].into(),
                iface: fields[3].into(),
                portal: fields[4].into(),
            })
        })
        .collect()
}

/// The hypervisor's paths now.
pub fn paths(node: &mut Node) -> Result<Vec<PathState>> {
    let output = node.exec(PATHS_SCRIPT, Duration::from_secs(20))?;
    Ok(parse_paths(&output.stdout))
}

/// A one-line summary of paths for messages.
pub fn describe(paths: &[PathState]) -> String {
    paths
        .iter()
        .map(|p| format!("{}({}→{}):{}/{}", p.dev, p.iface, p.portal, p.dm, p.checker))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until the path list satisfies `ok`; returns seconds from `since`
/// to the first poll where it held, and the paths then.
pub fn wait_paths(
    ctx: &mut Ctx,
    since: Instant,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&[PathState]) -> bool,
) -> Result<(f64, Vec<PathState>)> {
    let mut last = Vec::new();
    let mut error = None;
    let node = &mut ctx.cluster.hypervisor;
    let found = wait_for(timeout, Duration::from_millis(250), || match paths(node) {
        Ok(now) => {
            let done = ok(&now);
            last = now;
            done.then(|| since.elapsed().as_secs_f64())
        }
        Err(e) => {
            error = Some(e);
            None
        }
    });
    match found {
        Some(seconds) => Ok((seconds, last)),
        None => bail!(
            "paths never became {what} within {timeout:?}: {}{}",
            describe(&last),
            error
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default()
        ),
    }
}

/// Waits until every expected path is active/ready.
pub fn wait_all_paths_up(ctx: &mut Ctx, since: Instant, timeout: Duration) -> Result<f64> {
    let expected = ctx.facts.paths();
    let (seconds, _) = wait_paths(ctx, since, timeout, "all active/ready", |p| {
        p.len() == expected && p.iter().all(PathState::is_up)
    })?;
    Ok(seconds)
}

/// Runs a scenario, and again up to `retries` times while it fails. Before
/// a retry the guest VM is stopped (the scenarios that need it boot a fresh
/// one) and the failed attempt's outputs file is renamed
/// `<id>-attempt<N>-outputs.txt`, so nothing of it is lost. A pass after a
/// failure is [`Outcome::Flaky`].
pub fn run_with_retries(
    cluster: &mut Cluster,
    scenario: &Scenario,
    retries: u32,
) -> ScenarioReport {
    let mut failed_attempts = Vec::new();
    loop {
        let mut report = run_one(cluster, scenario);
        let attempt = failed_attempts.len() + 1;
        if !retry_after(report.outcome, failed_attempts.len(), retries) {
            report.outcome = final_outcome(report.outcome, failed_attempts.len());
            report.failed_attempts = failed_attempts;
            return report;
        }
        let detail = report.detail.unwrap_or_default();
        eprintln!(
            "applbuild-test: {} attempt {attempt} failed, retrying on a fresh guest VM: {}",
            scenario.id,
            detail.lines().next().unwrap_or_default()
        );
        let outputs = cluster
            .artifacts
            .join(format!("{}-outputs.txt", scenario.id));
        let kept = cluster
            .artifacts
            .join(format!("{}-attempt{attempt}-outputs.txt", scenario.id));
        let _ = std::fs::rename(&outputs, &kept);
        if cluster.guest.take().is_some()
            && let Err(error) = crate::guest::stop(&mut cluster.hypervisor)
        {
            eprintln!("applbuild-test: stopping the guest VM before the retry: {error:#}");
        }
        failed_attempts.push(with_late_kernel_errors(detail, cluster));
    }
}

/// `detail` of a failed attempt, with the kernel errors the nodes printed
/// after the attempt's own console scan (a node that crashed late in it, or
/// while its guest was stopped): they belong to that attempt, and the retry
/// scans only what comes after them.
fn with_late_kernel_errors(detail: String, cluster: &mut Cluster) -> String {
    let late = cluster.scan_consoles().fatal;
    if late.is_empty() {
        return detail;
    }
    format!(
        "{detail}\nkernel errors on the serial consoles after the attempt:\n{}",
        late.join("\n")
    )
}

/// Whether an attempt that ended in `outcome`, after `failed_before`
/// failed attempts, is run again.
fn retry_after(outcome: Outcome, failed_before: usize, retries: u32) -> bool {
    outcome == Outcome::Failed && failed_before < retries as usize
}

/// The outcome reported for the last attempt: a pass after failed attempts
/// is flaky.
fn final_outcome(outcome: Outcome, failed_before: usize) -> Outcome {
    if outcome == Outcome::Passed && failed_before > 0 {
        Outcome::Flaky
    } else {
        outcome
    }
}

/// Runs one scenario and turns its outcome into a report entry. Links are
/// replugged afterwards whatever happened, and both consoles are scanned.
pub fn run_one(cluster: &mut Cluster, scenario: &Scenario) -> ScenarioReport {
    let started = Instant::now();
    let mut report = ScenarioReport {
        id: scenario.id.into(),
        title: scenario.title.into(),
        outcome: Outcome::Failed,
        seconds: 0.0,
        timings: BTreeMap::new(),
        detail: None,
        notes: Vec::new(),
        failed_attempts: Vec::new(),
    };
    let run = scenario.run;
    let facts = match Facts::from_cluster(cluster) {
        Ok(facts) => facts,
        Err(error) => {
            report.outcome = Outcome::Failed;
            report.detail = Some(format!("{error:#}"));
            return report;
        }
    };
    let mut ctx = Ctx {
        cluster,
        facts,
        timings: BTreeMap::new(),
        notes: Vec::new(),
        outputs: Vec::new(),
    };
    let result = run(&mut ctx);
    let replug = ctx.cluster.replug_all();
    let mut scan = ctx.cluster.scan_consoles();
    match ctx.cluster.scan_guest_console() {
        Ok(guest) => scan.fatal.extend(guest.fatal),
        Err(error) => ctx
            .notes
            .push(format!("the guest's console could not be read: {error:#}")),
    }
    let mut problems = Vec::new();
    if let Err(error) = result {
        problems.push(format!("{error:#}"));
    }
    if let Err(error) = replug {
        problems.push(format!("replugging the cables failed: {error:#}"));
    }
    if !scan.fatal.is_empty() {
        problems.push(format!(
            "kernel errors on the serial consoles:\n{}",
            scan.fatal.join("\n")
        ));
    }
    if !scan.path_errors.is_empty() {
        ctx.notes.push(format!(
            "{} SCSI I/O error line(s) on failed sd paths (expected while a path fails), first: {}",
            scan.path_errors.len(),
            scan.path_errors[0]
        ));
    }
    report.outcome = if problems.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed
    };
    if !problems.is_empty() {
        if ctx.cluster.guest.is_some() {
            keep_guest_state(&mut ctx);
        }
        report.detail = Some(problems.join("\n"));
        keep_outputs(&mut ctx, scenario.id, &problems);
    }
    report.timings = ctx.timings;
    report.notes = ctx.notes;
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Keeps what the hypervisor says about the guest VM, and where a stuck
/// write waits: in the guest's disk queue, or in the hypervisor's map.
fn keep_guest_state(ctx: &mut Ctx) {
    let state = ctx.cluster.hypervisor.exec(
        &with_args(GUEST_DIAGNOSTICS, &[crate::guest::RUN_DIR]),
        Duration::from_secs(30),
    );
    match state {
        Ok(output) => ctx.keep("guest VM state in the hypervisor", &output.stdout),
        Err(error) => ctx.keep("guest VM state in the hypervisor", &format!("{error:#}")),
    }
    let probe = ctx.cluster.guest_exec(
        "cat /proc/loadavg /sys/block/vda/inflight; ps",
        Duration::from_secs(10),
    );
    match probe {
        Ok(output) => ctx.keep("guest: load, vda in flight, processes", &output.stdout),
        Err(error) => ctx.keep("guest: no answer", &format!("{error:#}")),
    }
}

/// Writes a failed scenario's problems and kept outputs to
/// `<id>-outputs.txt` in the artifacts folder, and notes where.
fn keep_outputs(ctx: &mut Ctx, id: &str, problems: &[String]) {
    let file = ctx.cluster.artifacts.join(format!("{id}-outputs.txt"));
    let mut text = format!("{}\n\n", problems.join("\n"));
    text.push_str(&ctx.outputs.join("\n"));
    if let Err(error) = std::fs::write(&file, text) {
        ctx.notes
            .push(format!("cannot write {}: {error}", file.display()));
    } else {
        ctx.notes
            .push(format!("guest outputs kept in {}", file.display()));
    }
}

/// What the hypervisor node says about the guest VM when a scenario fails:
/// whether its QEMU runs, its console's end, the kernel's last lines.
const GUEST_DIAGNOSTICS: &str = include_str!("../../scripts/scenario-guest-diagnostics.sh");

/// The command that runs `script` (the text of a file of
/// `qemu-tests/scripts/`) with `args` as its positional parameters, each
/// quoted for the shell.
pub fn with_args(script: &str, args: &[&str]) -> String {
    let quoted = shlex::try_join(args.iter().copied()).expect("arguments hold no NUL byte");
    format!("set -- {quoted}\n{script}")
}

/// Runs `command` on `node`, failing with its output unless it exits 0.
pub fn must(node: &mut Node, command: &str) -> Result<String> {
    node.sh(command)
}

/// Fails unless the hypervisor has one session to the target per path of
/// the profile.
pub fn ensure_all_sessions(ctx: &mut Ctx) -> Result<()> {
    let target = ctx.facts.target.clone();
    let sessions = session_count(&mut ctx.cluster.hypervisor, &target)?;
    ensure!(
        sessions == ctx.facts.paths(),
        "{sessions} sessions, expected {}",
        ctx.facts.paths()
    );
    Ok(())
}

/// Number of logged-in sessions to `target`.
pub fn session_count(node: &mut Node, target: &str) -> Result<usize> {
    let output = node.exec("iscsiadm -m session 2>/dev/null", Duration::from_secs(20))?;
    Ok(output
        .stdout
        .lines()
        // `tcp: [1] 192.0.2.10:3260,1 iqn… (non-flash)`
        .filter(|line| line.split_whitespace().any(|word| word == target))
        .count())
}

/// The sha256 of the first `bytes` of `device` (direct reads).
pub fn device_sha256(node: &mut Node, device: &str, mib: u64) -> Result<String> {
    let output = node.exec(
        &format!("dd if={device} bs=1M count={mib} iflag=direct 2>/dev/null | sha256sum"),
        Duration::from_secs(120),
    )?;
    output
        .stdout
        .split_whitespace()
        .next()
        .map(String::from)
        .filter(|_| output.success())
        .with_context(|| format!("reading {device}: {}", output.stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_retried_while_retries_remain_and_a_late_pass_is_flaky() {
        assert!(!retry_after(Outcome::Failed, 0, 0));
        assert!(retry_after(Outcome::Failed, 0, 1));
        assert!(!retry_after(Outcome::Failed, 1, 1));
        assert!(!retry_after(Outcome::Passed, 0, 1));
        assert_eq!(final_outcome(Outcome::Passed, 0), Outcome::Passed);
        assert_eq!(final_outcome(Outcome::Passed, 1), Outcome::Flaky);
        assert_eq!(final_outcome(Outcome::Failed, 1), Outcome::Failed);
    }

    #[test]
    fn paths_parse_with_their_session() {
        let text =
            "sdb active ready ibr0 192.0.2.10\nsdc failed faulty ieth1 198.51.100.10\nnoise\n";
        let paths = parse_paths(text);
        assert_eq!(paths.len(), 2);
        assert!(paths[0].is_up());
        assert!(paths[1].is_down());
        assert_eq!(paths[1].iface, "ieth1");
        assert!(describe(&paths).contains("sdc(ieth1→198.51.100.10):failed/faulty"));
    }

    #[test]
    fn script_arguments_arrive_quoted_as_positional_parameters() {
        let command = with_args(
            "#!/bin/sh\nprintf '%s|' \"$@\"\n",
            &["a b", "it's", "$(false)", ""],
        );
        let output = std::process::Command::new("sh")
            .args(["-c", &command])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "a b|it's|$(false)||"
        );
    }

    #[test]
    fn every_scenario_is_listed_once() {
        let ids: Vec<&str> = all().iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), 17, "{ids:?}");
        for n in 1..=17 {
            let id = format!("S{n}");
            assert_eq!(ids.iter().filter(|i| **i == id).count(), 1, "{id}");
        }
    }
}
