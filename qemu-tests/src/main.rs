//! `applbuild-test` (also `applbuild test`): the failover acceptance suite.
//! Boots the storage and hypervisor images in QEMU on two virtual storage
//! networks and runs the scenarios of docs/acceptance.md on that one cluster.

mod cluster;
mod guest;
mod images;
mod network;
mod report;
mod scenarios;
mod waits;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use applbuild::boot::{AccelArg, BootFrom};
use applbuild::pipeline::Project;
use applbuild::test_build;
use applbuild_vm::process;
use applbuild_vm::qemu::{Accel, AccelChoice};
use applbuild_vm::qga::QgaClient;
use clap::{Parser, Subcommand};

use crate::cluster::{Cluster, HYPERVISOR, STORAGE};
use crate::guest::GUEST;
use crate::report::{Outcome, ScenarioReport, SuiteReport, TestedImage};

/// Failover acceptance suite for the applbuild storage and hypervisor
/// images: S1–S17 of docs/acceptance.md, run in order on one booted cluster.
///
/// Examples:
///   applbuild-test                                  # every scenario
///   applbuild-test --scenario S7 --keep             # one scenario; VMs left up on failure
///   applbuild-test --junit junit.xml --json summary.json
///   applbuild-test exec RUN/hypervisor/qga.sock 'multipathd show paths'
#[derive(Parser)]
#[command(name = "applbuild-test", version, verbatim_doc_comment)]
struct Cli {
    /// Run only this scenario (repeatable; S1 … S17). The others are
    /// reported as skipped.
    #[arg(long = "scenario", value_name = "ID")]
    scenarios: Vec<String>,
    /// Write JUnit XML here (one test case per scenario).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write the JSON summary (every timing) here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// When a scenario fails, leave the VMs running, print how to reach them
    /// and wait for Enter (or Ctrl-C) before stopping them.
    #[arg(long)]
    keep: bool,
    /// Run a failed scenario again up to N times, on a freshly booted guest
    /// VM. A pass on a retry is reported as flaky (in the table, the JSON
    /// and as <flakyFailure> in JUnit), not hidden. `scripts/test` uses 1.
    #[arg(long, default_value_t = 0, value_name = "N")]
    retries: u32,
    /// Folder of the built images (built there first when missing or stale).
    #[arg(long, default_value = "target/applbuild-images", value_name = "DIR")]
    images: PathBuf,
    /// Folder for serial logs and the guest outputs of failed scenarios.
    #[arg(long, default_value = "target/acceptance", value_name = "DIR")]
    artifacts: PathBuf,
    /// CPU accelerator; `auto` uses KVM only after a probe boot succeeds.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,
    /// Do not build missing or stale images: fail instead.
    #[arg(long)]
    no_build: bool,
    /// Boot both nodes from their UEFI disk images through OVMF (the bytes
    /// that get flashed onto servers) instead of from kernel and initramfs;
    /// `scripts/test` passes it in CI.
    #[arg(long)]
    disk: bool,
    /// Secrets file (mode 0600) the images are built with and S13 reads
    /// [default: the cluster's store, $XDG_CONFIG_HOME/applbuild/secrets/<cluster>.toml].
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
    /// Project folder [default: the nearest folder upwards with profiles/].
    #[arg(long, value_name = "DIR")]
    project: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List the scenarios.
    List,
    /// Run a shell command in a VM through its guest-agent socket (for
    /// debugging a cluster left running by --keep).
    Exec {
        /// The VM's guest-agent socket (printed by --keep).
        socket: PathBuf,
        /// Shell command.
        command: String,
        /// Seconds to wait for it.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    process::defer_to_signal_handler();
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Some(Command::List) => {
            for scenario in scenarios::all() {
                println!("{:<4} {}", scenario.id, scenario.title);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Exec {
            socket,
            command,
            timeout,
        }) => exec_in_vm(socket, command, Duration::from_secs(*timeout)),
        None => run_suite(&cli),
    }
}

fn exec_in_vm(socket: &Path, command: &str, timeout: Duration) -> Result<ExitCode> {
    let mut agent = QgaClient::connect(socket, Duration::from_secs(10))?;
    let output = agent.exec_shell(command, timeout)?;
    print!("{}", output.stdout);
    eprint!("{}", output.stderr);
    Ok(ExitCode::from(output.exit_code.clamp(0, 255) as u8))
}

fn run_suite(cli: &Cli) -> Result<ExitCode> {
    let all = scenarios::all();
    let selected = selected_scenarios(cli, &all)?;
    let project = match &cli.project {
        Some(dir) => Project::at(dir),
        None => Project::find(&std::env::current_dir()?)?,
    };
    let images = std::path::absolute(&cli.images)?;
    let artifacts = std::path::absolute(&cli.artifacts)?;
    prepare_images(&project, &images, cli.no_build, cli.secrets.as_deref())?;
    let secrets = match &cli.secrets {
        Some(file) => std::path::absolute(file)?,
        None => {
            let storage = applbuild::profile::load(&project.profiles_dir(), STORAGE)?;
            applbuild_secrets::default_path(storage.profile.cluster())?
        }
    };

    // Unix socket paths are limited to 108 bytes: sockets live under /tmp.
    let run_dir = std::env::temp_dir().join(format!("applbuild-test-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    stop_on_signals(&run_dir, &artifacts);
    let accel = AccelChoice::from(cli.accel).resolve(
        &images.join(STORAGE).join(test_build::DIR).join("vmlinuz"),
        &run_dir,
    );

    let started = Instant::now();
    let mut suite = SuiteReport::new(format!("{accel:?}").to_lowercase());
    verify_test_builds(&images, &mut suite);
    let cluster_dirs = ClusterDirs {
        profiles: project.profiles_dir(),
        images,
        run: run_dir.clone(),
        artifacts,
        secrets,
        from: if cli.disk {
            BootFrom::Disk { secure_boot: false }
        } else {
            BootFrom::Kernel
        },
    };
    let mut cluster = boot_cluster(&cluster_dirs, accel, &mut suite);
    for scenario in &all {
        let wanted = selected.is_empty() || selected.iter().any(|id| id == scenario.id);
        let report = match (&mut cluster, wanted) {
            (_, false) => skipped(scenario, "not selected"),
            (None, true) => skipped(scenario, "the cluster did not boot"),
            (Some(cluster), true) => run_scenario(cluster, scenario, cli.retries),
        };
        suite.scenarios.push(report);
    }
    suite.total_seconds = started.elapsed().as_secs_f64();
    suite.count();

    if let Some(path) = &cli.json {
        suite.write_json(path)?;
    }
    if let Some(path) = &cli.junit {
        suite.write_junit(path)?;
    }
    let failed = suite.failed_overall();
    println!("{}", suite.table());

    if let Some(mut cluster) = cluster {
        if failed && cli.keep {
            keep_until_enter(&mut cluster);
        }
        cluster.shutdown();
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Checks (`--no-build`) or builds the three images.
fn prepare_images(
    project: &Project,
    images: &Path,
    no_build: bool,
    secrets: Option<&Path>,
) -> Result<()> {
    if !no_build {
        // The nodes boot their test builds; the guest VM is a test workload.
        images::ensure_built(project, images, &[STORAGE, HYPERVISOR], true, secrets)?;
        return images::ensure_built(project, images, &[GUEST], false, secrets);
    }
    for dir in [
        images.join(STORAGE).join(test_build::DIR),
        images.join(HYPERVISOR).join(test_build::DIR),
        images.join(GUEST),
    ] {
        if !dir.join("vmlinuz").is_file() {
            bail!("no image {} (and --no-build)", dir.display());
        }
    }
    Ok(())
}

/// The scenario ids `--scenario` names, upper-cased; an unknown one is an
/// error.
fn selected_scenarios(cli: &Cli, all: &[scenarios::Scenario]) -> Result<Vec<String>> {
    let selected: Vec<String> = cli.scenarios.iter().map(|s| s.to_uppercase()).collect();
    for id in &selected {
        if !all.iter().any(|s| s.id == id) {
            bail!("unknown scenario {id} (see `applbuild-test list`)");
        }
    }
    Ok(selected)
}

/// Checks that each node's test build is its production image plus the
/// test channel, and records the production digests in `suite` (a
/// mismatch is an error of the run).
fn verify_test_builds(images: &Path, suite: &mut SuiteReport) {
    for name in [STORAGE, HYPERVISOR] {
        match test_build::verify(&images.join(name)) {
            Ok(test) => {
                let tested = TestedImage {
                    image_initrd_sha256: test.image_initrd.sha256,
                    image_kernel_sha256: test.image_kernel.sha256,
                    image_disk_sha256: test.image_disk.map(|disk| disk.sha256),
                    test_segment_sha256: test.segment.sha256,
                    test_added_paths: test.added.len(),
                    test_replaced_paths: test.replaced,
                };
                suite.images.insert(name.to_string(), tested);
            }
            Err(error) => suite.errors.push(format!(
                "{name}: the test build is not the image plus the test channel: {error}"
            )),
        }
    }
}

/// On SIGINT or SIGTERM: the VMs and switches are stopped, the serial logs
/// and outputs in the artifacts folder stay, the run folder goes, and the
/// suite exits non-zero.
fn stop_on_signals(run_dir: &Path, artifacts: &Path) {
    let run_dir = run_dir.to_path_buf();
    let artifacts = artifacts.to_path_buf();
    process::stop_children_on_signals(process::STOP_GRACE, move |signal| {
        let _ = std::fs::remove_dir_all(&run_dir);
        eprintln!(
            "applbuild-test: {signal}: VMs stopped; serial logs and outputs kept in {}",
            artifacts.display()
        );
    });
}

/// Where the cluster's inputs and outputs are.
struct ClusterDirs {
    profiles: PathBuf,
    images: PathBuf,
    run: PathBuf,
    artifacts: PathBuf,
    secrets: PathBuf,
    from: BootFrom,
}

/// Boots the cluster; records its boot times, or why it did not boot, in
/// `suite`.
fn boot_cluster(dirs: &ClusterDirs, accel: Accel, suite: &mut SuiteReport) -> Option<Cluster> {
    eprintln!(
        "applbuild-test: booting storage and hypervisor from their {} under {} (run folder {})",
        match dirs.from {
            BootFrom::Kernel => "kernels",
            BootFrom::Disk { .. } => "UEFI disk images",
        },
        suite.accel,
        dirs.run.display()
    );
    let mut cluster = match Cluster::boot(
        &dirs.profiles,
        &dirs.images,
        &dirs.run,
        &dirs.artifacts,
        &dirs.secrets,
        accel,
        dirs.from,
    ) {
        Ok(cluster) => cluster,
        Err(error) => {
            suite
                .errors
                .push(format!("cluster did not boot: {error:#}"));
            return None;
        }
    };
    for node in [&cluster.storage, &cluster.hypervisor] {
        if let Some(seconds) = node.boot_to_ready.first() {
            suite
                .boot_to_ready_seconds
                .insert(node.name.clone(), (seconds * 100.0).round() / 100.0);
        }
    }
    let scan = cluster.scan_consoles();
    if !scan.fatal.is_empty() {
        suite.errors.push(format!(
            "kernel errors while booting:\n{}",
            scan.fatal.join("\n")
        ));
    }
    eprintln!(
        "applbuild-test: cluster ready (storage {:.1} s, hypervisor {:.1} s)",
        suite.boot_to_ready_seconds.get(STORAGE).unwrap_or(&0.0),
        suite.boot_to_ready_seconds.get(HYPERVISOR).unwrap_or(&0.0),
    );
    Some(cluster)
}

fn run_scenario(
    cluster: &mut Cluster,
    scenario: &scenarios::Scenario,
    retries: u32,
) -> ScenarioReport {
    eprintln!("applbuild-test: {} {} …", scenario.id, scenario.title);
    let report = scenarios::run_with_retries(cluster, scenario, retries);
    eprintln!(
        "applbuild-test: {} {:?} in {:.1} s {:?}",
        scenario.id, report.outcome, report.seconds, report.timings
    );
    if let Some(detail) = &report.detail {
        eprintln!("applbuild-test: {}: {detail}", scenario.id);
    }
    report
}

/// `--keep`: leaves the VMs up and waits for Enter (or a signal).
fn keep_until_enter(cluster: &mut Cluster) {
    cluster.release();
    eprintln!(
        "applbuild-test: --keep: the VMs stay up; press Enter (or Ctrl-C) to stop them.\n{}",
        cluster.attach_help()
    );
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line).unwrap_or(0);
    if read == 0 {
        // No terminal: keep them until this process is interrupted.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

fn skipped(scenario: &scenarios::Scenario, why: &str) -> ScenarioReport {
    ScenarioReport {
        id: scenario.id.into(),
        title: scenario.title.into(),
        outcome: Outcome::Skipped,
        seconds: 0.0,
        timings: BTreeMap::new(),
        detail: Some(why.into()),
        notes: Vec::new(),
        failed_attempts: Vec::new(),
    }
}
