//! The `applbuild` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use applbuild::boot::{self, AccelArg, BootReport};
use applbuild::flash::{self, FlashSource, Target};
use applbuild::pipeline::{self, BuildOptions, BuildReport, Project};
use applbuild::profile;
use applbuild::test_build;
use applbuild_progress::Reporter;
use applbuild_vm::qemu::{self, AccelChoice};
use applbuild_vm::{machine, process};

/// Builds minimal appliance images for an iSCSI-multipath KVM cluster from
/// verified Debian packages, and boots them in QEMU.
///
/// A profile (profiles/NAME.toml) names the packages, kernel modules,
/// network, services and health checks of one image; rootfs-overlay/common
/// and rootfs-overlay/NAME add files, where `*.j2` files are minijinja
/// templates rendered from the profile.
///
/// Typical use:
///   applbuild list                      # the profiles
///   applbuild show hypervisor           # the profile after `extends`, and its packages
///   applbuild build storage hypervisor  # out/storage/, out/hypervisor/
///   applbuild sources hypervisor        # its source packages: out/hypervisor/sources/
///   applbuild boot storage              # serial console on this terminal (Ctrl-a x quits)
///   applbuild boot storage --check      # headless: boot, health checks, power off
///   applbuild boot storage --disk --check  # the same, booting storage.img through UEFI firmware
///   applbuild flash hypervisor /dev/sdX  # write hypervisor.img onto a disk or a USB stick
///   applbuild secrets init              # the cluster's CHAP secrets, outside the project
#[derive(Parser)]
#[command(name = "applbuild", version, verbatim_doc_comment)]
struct Cli {
    /// Project folder holding profiles/, rootfs-overlay/ and applbuild.lock
    /// [default: the nearest folder upwards from here that has profiles/]
    #[arg(long, global = true, value_name = "DIR")]
    project: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Re-resolve profiles against the mirrors and rewrite applbuild.lock.
    ///
    /// Like `cargo update`: the lock is ignored, every package takes the
    /// highest version any suite offers (bookworm, bookworm-updates,
    /// bookworm-security...), as apt would, and each change is printed as
    /// `package old -> new (suite)`. Build afterwards to use the new versions.
    Update {
        /// Profiles to update [default: those in applbuild.lock, else every profile].
        #[arg(value_name = "PROFILE")]
        profiles: Vec<String>,
        /// Print what would change; leave applbuild.lock as it is.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        build: BuildArgs,
        /// Print the changes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build images: out/<profile>/{vmlinuz,initrd.img,manifest.json,SHA256SUMS}.
    ///
    /// A profile with an [image.disk] table also gets disk.img, a GPT disk
    /// image whose partitions hold the kernel, the initramfs and an empty
    /// data area (see docs/image.md).
    ///
    /// Fetches the suite's InRelease (verified against the keyring), the
    /// Packages index (SHA256 from Release) and every .deb (SHA256 from
    /// Packages) into the cache, resolves dependencies (Recommends are not
    /// installed), unpacks the packages without root, keeps only the kernel
    /// modules the profile lists (and their dependencies), applies the
    /// overlay and writes the initramfs. The previous output stays intact
    /// until the new one is complete. Versions are recorded in applbuild.lock
    /// and reused by later builds.
    ///
    /// The image is production: no guest agent, no root shell on the
    /// console. --test also writes out/<profile>/test/, the test build that
    /// `boot` and the acceptance suite run: the same kernel, and the image's
    /// initrd.img followed by one more segment, the test channel (QEMU guest
    /// agent; a root shell on the console when the kernel command line has
    /// applbuild.shell=1), listed in test/test-build.json (docs/security.md).
    Build {
        /// Profiles to build, in order.
        #[arg(required = true, value_name = "PROFILE")]
        profiles: Vec<String>,
        /// Also write the test build, out/<profile>/test/.
        #[arg(long)]
        test: bool,
        #[command(flatten)]
        build: BuildArgs,
        /// Print a JSON report on standard output instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Download the verified source packages of an image: out/<profile>/sources/.
    ///
    /// What shipping the image's GPL and LGPL code obliges you to offer: for
    /// every binary package of the image (the set `build` resolves, following
    /// applbuild.lock; with --locked a difference is an error) its source
    /// package, as the Packages index's `Source` field names it (a binNMU's
    /// source keeps its own version). Each suite's Sources index is verified
    /// like Packages (keyring, InRelease signature, Release SHA256), and each
    /// .dsc, .orig.tar.* and .debian.tar.* against the SHA256 and size the
    /// index gives, through the download cache. A source package no suite
    /// lists (the mirrors keep only current versions; --suite-mirror can
    /// point a suite at a snapshot mirror), or a file that fails its check,
    /// is an error naming it, and the previous folder stays. The folder also
    /// holds SHA256SUMS (for `sha256sum -c`) and sources.txt (each source
    /// package with its version, suite and binary packages).
    ///
    /// `build` replaces out/<profile>/ and with it sources/: run this after
    /// building. Example:
    ///   applbuild build hypervisor && applbuild sources hypervisor
    ///   (cd out/hypervisor/sources && sha256sum -c SHA256SUMS)
    ///   applbuild sources storage hypervisor --json   # summary for CI
    #[command(verbatim_doc_comment)]
    Sources {
        /// Profiles whose sources to fetch, in order.
        #[arg(required = true, value_name = "PROFILE")]
        profiles: Vec<String>,
        #[command(flatten)]
        build: BuildArgs,
        /// Print a JSON summary on standard output instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the profiles.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a profile after `extends`, and the package set it resolves to.
    Show {
        /// Profile name.
        profile: String,
        #[command(flatten)]
        build: BuildArgs,
        /// Only the merged profile; do not read the repository.
        #[arg(long)]
        no_packages: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Boot an image's test build in QEMU with the profile's two NICs
    /// (built first, with --test, when missing or stale).
    ///
    /// The test build is the production image plus the test channel (see
    /// `build --test`). Without --check the serial console is this terminal,
    /// with a root shell (Ctrl-a x quits QEMU). With --check QEMU runs
    /// headless: applbuild waits for the image's ready line, runs the
    /// profile's health checks through the QEMU guest agent, powers off,
    /// prints the boot-to-ready time and exits 0 only if every check passed.
    Boot {
        /// Profile name.
        profile: String,
        #[command(flatten)]
        boot: BootArgs,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Run the failover acceptance suite (scenarios S1–S16 of
    /// docs/acceptance.md) on both images in QEMU.
    ///
    /// Runs the `applbuild-test` program (from the qemu-tests crate) found
    /// next to this one or on PATH, passing every argument on; see
    /// `applbuild test --help` for --scenario, --junit, --json and --keep.
    #[command(disable_help_flag = true)]
    Test {
        /// Arguments for applbuild-test.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Write a UEFI disk image onto a disk or a USB stick, and verify it.
    ///
    /// The image is a profile's `<profile>.img` or another .img. Writes
    /// only the block ranges of its .bmap (what `bmaptool copy` does),
    /// syncs, reads every range back and checks its SHA256 against the
    /// bmap, then moves the backup GPT to the end of a larger disk (and
    /// checks both tables) and has the kernel re-read the partition table.
    /// Shows the device's model, size and partitions first and asks for
    /// `yes` (see --yes).
    ///
    /// Refused, before anything is written: a device that is in use (it is
    /// opened with O_EXCL, so a mounted disk or partition is refused), the
    /// disk holding /, /boot, /boot/efi or /usr, a device smaller than the
    /// image or with sectors other than 512 bytes, anything that is neither
    /// a block device nor a regular file. See docs/flashing.md. Examples:
    ///   applbuild flash hypervisor /dev/sdX             # out/hypervisor/hypervisor.img
    ///   applbuild flash out/storage/storage.img /dev/disk/by-id/usb-...
    ///   applbuild flash storage /dev/sdX --yes --json   # unattended, summary for CI
    #[command(verbatim_doc_comment)]
    Flash {
        /// A profile name (then `<out>/<profile>/<profile>.img`) or the path
        /// of an .img file (anything with a `/` or ending in `.img`); its
        /// .bmap must be beside it.
        #[arg(value_name = "PROFILE|IMAGE")]
        image: String,
        /// The whole disk to write (/dev/sdX, /dev/nvme0n1,
        /// /dev/disk/by-id/...), or a regular file.
        #[arg(value_name = "DEVICE")]
        device: PathBuf,
        /// Output folder holding the profile's image [default: out/ in the project folder].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Write without asking (needed when standard input is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print a JSON summary on standard output instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Keep the cluster's secrets store (CHAP secrets) outside the project.
    ///
    /// Profiles name their secrets (`secret = { name = "iscsi-chap" }`);
    /// the values live in one file per cluster,
    /// $XDG_CONFIG_HOME/applbuild/secrets/<cluster>.toml (else
    /// ~/.config/applbuild/secrets/<cluster>.toml), mode 0600. See
    /// docs/security.md.
    #[command(verbatim_doc_comment)]
    Secrets {
        #[command(subcommand)]
        action: SecretsAction,
    },
    /// Remove built images (and with --cache, the download cache).
    Clean {
        /// Output folder [default: out/ in the project folder].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Cache folder [default: $XDG_CACHE_HOME/applbuild or ~/.cache/applbuild].
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Also remove the cache of downloaded and unpacked packages.
        #[arg(long)]
        cache: bool,
    },
}

/// How `applbuild boot` boots.
#[derive(Args, Clone)]
struct BootArgs {
    /// Run headless and check health instead of attaching the console.
    #[arg(long)]
    check: bool,
    /// CPU accelerator; `auto` uses KVM only after a probe boot succeeds.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,
    /// Seconds to wait for the ready line [default: 60 under KVM, 240 under TCG].
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Print the --check report as JSON.
    #[arg(long)]
    json: bool,
    /// Boot `<profile>.img` through UEFI firmware (Debian's OVMF), as a
    /// server boots the flashed disk, instead of loading the kernel and
    /// initramfs directly.
    #[arg(long)]
    disk: bool,
    /// With --disk: Secure Boot enforced, Debian's snakeoil keys
    /// enrolled (the image must be signed with the snakeoil key).
    #[arg(long, requires = "disk")]
    secure_boot: bool,
}

impl From<BootArgs> for BootOptions {
    fn from(args: BootArgs) -> Self {
        BootOptions {
            check: args.check,
            accel: args.accel.into(),
            timeout: args.timeout,
            json: args.json,
            from: if args.disk {
                boot::BootFrom::Disk {
                    secure_boot: args.secure_boot,
                }
            } else {
                boot::BootFrom::Kernel
            },
        }
    }
}

#[derive(Subcommand)]
enum SecretsAction {
    /// Create or extend the store with every secret the project's profiles
    /// name: existing values stay, missing ones get 24 random letters and
    /// digits. Prints the file and the names, never a value.
    Init {
        /// One secrets file for every profile, instead of each cluster's store.
        #[arg(long, value_name = "FILE")]
        secrets: Option<PathBuf>,
        /// Give every secret a new random value (the file is replaced).
        #[arg(long)]
        fresh: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct BuildArgs {
    /// Output folder; each profile gets a subfolder [default: out/ in the project folder].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Cache folder [default: $XDG_CACHE_HOME/applbuild or ~/.cache/applbuild].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Debian mirror URL [default: the profile's, else the host's apt sources].
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// OpenPGP keyring that must have signed the repository [default: the profile's].
    #[arg(long, value_name = "FILE")]
    keyring: Option<PathBuf>,
    /// Fail if the resolved packages differ from applbuild.lock.
    #[arg(long)]
    locked: bool,
    /// Use only the cache: no network.
    #[arg(long)]
    offline: bool,
    /// Mirror URL of one suite, winning over --mirror and the profile
    /// (repeatable), e.g. `--suite-mirror bookworm-security=URL`.
    #[arg(long, value_name = "SUITE=URL", value_parser = suite_setting)]
    suite_mirror: Vec<(String, String)>,
    /// Refuse a suite whose InRelease is older than AGE (`<n>d` or `<n>h`;
    /// repeatable), winning over the profile's `max_index_age`.
    #[arg(long, value_name = "SUITE=AGE", value_parser = suite_setting)]
    max_index_age: Vec<(String, String)>,
    /// Sign systemd-boot and the UKI for Secure Boot with this PEM private
    /// key (unencrypted), winning over `image.uefi.secure_boot` [needs
    /// --secure-boot-cert].
    #[arg(long, value_name = "FILE", requires = "secure_boot_cert")]
    secure_boot_key: Option<PathBuf>,
    /// The PEM certificate of --secure-boot-key (the one the servers' db holds).
    #[arg(long, value_name = "FILE", requires = "secure_boot_key")]
    secure_boot_cert: Option<PathBuf>,
    /// Secrets file (mode 0600) [default: the cluster's store,
    /// $XDG_CONFIG_HOME/applbuild/secrets/<cluster>.toml]; missing secrets
    /// are added with random values.
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
}

/// Splits `SUITE=VALUE`.
fn suite_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(suite, value)| !suite.is_empty() && !value.is_empty())
        .map(|(suite, value)| (suite.to_string(), value.to_string()))
        .ok_or_else(|| format!("expected SUITE=VALUE, got {text:?}"))
}

/// The per-suite settings given on the command line.
fn suite_overrides(args: &BuildArgs) -> pipeline::SuiteOverrides {
    pipeline::SuiteOverrides {
        mirrors: args.suite_mirror.iter().cloned().collect(),
        max_index_age: args.max_index_age.iter().cloned().collect(),
    }
}

/// `applbuild update`: re-resolves each profile and prints the changes.
fn run_update(
    project: &Project,
    profiles: &[String],
    args: &BuildArgs,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode> {
    let locked = applbuild::lockfile::Lockfile::load(&project.lockfile())?;
    let names = if !profiles.is_empty() {
        profiles.to_vec()
    } else if let Some(lock) = locked.filter(|lock| !lock.profile_names().is_empty()) {
        lock.profile_names()
    } else {
        profile::list(&project.profiles_dir())?
    };
    let options = build_options(project, args, json);
    let overrides = suite_overrides(args);
    let mut reports = Vec::new();
    for name in &names {
        let report = applbuild::update::update(project, name, &options, &overrides, dry_run)
            .with_context(|| format!("updating profile `{name}`"))?;
        if !json {
            let verb = if dry_run { "would change" } else { "changed" };
            println!("{name}: {} package(s) {verb}", report.changes.len());
            for change in &report.changes {
                println!("  {change}");
            }
        }
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(ExitCode::SUCCESS)
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
    // Looked for only by the commands that need it: flashing an image
    // path, or with --out, works anywhere.
    let project = || -> Result<Project> {
        Ok(match &cli.project {
            Some(dir) => Project::at(dir),
            None => Project::find(&std::env::current_dir()?)?,
        })
    };
    match cli.command {
        Command::Build {
            profiles,
            test,
            build,
            json,
        } => build_profiles(&project()?, &profiles, &build, test, json),
        Command::Update {
            profiles,
            dry_run,
            build,
            json,
        } => run_update(&project()?, &profiles, &build, dry_run, json),
        Command::Sources {
            profiles,
            build,
            json,
        } => fetch_sources(&project()?, &profiles, &build, json),
        Command::List { json } => list_profiles(&project()?, json),
        Command::Show {
            profile,
            build,
            no_packages,
            json,
        } => show_profile(&project()?, &profile, &build, no_packages, json),
        Command::Boot {
            profile,
            boot,
            build,
        } => boot_profile(&project()?, &profile, &build, &boot.into()),
        Command::Test { args } => run_acceptance_suite(&project()?, &args),
        Command::Flash {
            image,
            device,
            out,
            yes,
            json,
        } => {
            let request = FlashRequest {
                image: &image,
                device: &device,
                out: out.as_deref(),
                yes,
                json,
            };
            flash_image(&request, project)
        }
        Command::Secrets {
            action:
                SecretsAction::Init {
                    secrets,
                    fresh,
                    json,
                },
        } => init_secrets(&project()?, secrets.as_deref(), fresh, json),
        Command::Clean {
            out,
            cache_dir,
            cache,
        } => {
            let out = match out {
                Some(dir) => dir,
                None => project()?.root().join("out"),
            };
            clean(
                &out,
                cache.then(|| cache_dir.unwrap_or_else(pipeline::default_cache_dir)),
            )
        }
    }
}

/// `applbuild clean`: the output folder, and the cache when given.
fn clean(out: &Path, cache: Option<PathBuf>) -> Result<ExitCode> {
    remove_dir(out)?;
    if let Some(cache) = cache {
        remove_dir(&cache)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `applbuild secrets init`.
fn init_secrets(
    project: &Project,
    file: Option<&Path>,
    fresh: bool,
    json: bool,
) -> Result<ExitCode> {
    let reports = applbuild::secrets::init(project, file, fresh)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else if reports.is_empty() {
        println!("no profile refers to a secret");
    } else {
        for report in &reports {
            print!("{}", applbuild::secrets::describe(report));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn build_profiles(
    project: &Project,
    profiles: &[String],
    build: &BuildArgs,
    test_build: bool,
    json: bool,
) -> Result<ExitCode> {
    let options = BuildOptions {
        test_build,
        ..build_options(project, build, json)
    };
    let overrides = suite_overrides(build);
    let mut reports = Vec::new();
    for name in profiles {
        let report = pipeline::build_with_suites(project, name, &options, &overrides)
            .with_context(|| format!("building profile `{name}`"))?;
        if !json {
            print_build(&report);
        }
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `applbuild sources`: each profile's source packages, then a summary.
fn fetch_sources(
    project: &Project,
    profiles: &[String],
    build: &BuildArgs,
    json: bool,
) -> Result<ExitCode> {
    let options = build_options(project, build, json);
    let overrides = suite_overrides(build);
    let mut reports = Vec::new();
    for name in profiles {
        let report = applbuild::sources::fetch_sources(project, name, &options, &overrides)
            .with_context(|| format!("fetching the sources of profile `{name}`"))?;
        if !json {
            println!(
                "{}: {} source packages, {} files, {:.1} MiB ({} downloaded, {} from cache)",
                report.profile,
                report.sources.len(),
                report.files,
                report.bytes as f64 / 1048576.0,
                report.downloaded,
                report.files - report.downloaded,
            );
            println!("  {}", report.out_dir.display());
            for change in &report.lock_changes {
                println!("  lock: {change}");
            }
        }
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn list_profiles(project: &Project, json: bool) -> Result<ExitCode> {
    let names = profile::list(&project.profiles_dir())?;
    let mut rows = Vec::new();
    for name in &names {
        let loaded = profile::load(&project.profiles_dir(), name)?;
        rows.push(serde_json::json!({
            "name": name,
            "extends": loaded.files.len() > 1,
            "description": loaded.profile.description.clone().unwrap_or_default(),
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for row in rows {
            println!(
                "{:<12} {}",
                row["name"].as_str().unwrap_or(""),
                row["description"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show_profile(
    project: &Project,
    name: &str,
    build: &BuildArgs,
    no_packages: bool,
    json: bool,
) -> Result<ExitCode> {
    let loaded = profile::load(&project.profiles_dir(), name)?;
    // Secrets show as `<secret NAME>`: the store's values are never printed.
    let merged = profile::redacted(&loaded.merged);
    let packages = if no_packages {
        None
    } else {
        Some(pipeline::resolve(
            project,
            &loaded,
            &build_options(project, build, json),
        )?)
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "profile": name,
                "files": loaded.files,
                "merged": merged,
                "packages": packages,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let files: Vec<String> = loaded
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    println!("# profile {name} (from {})", files.join(", "));
    println!("{}", toml::to_string_pretty(&merged)?);
    if let Some(resolved) = packages {
        println!(
            "# {} packages, {} KiB installed",
            resolved.packages.len(),
            resolved.installed_kib
        );
        for package in &resolved.packages {
            println!("{:<40} {}", package.name, package.version);
        }
        println!(
            "# the test build (build --test) adds {} packages",
            resolved.test_build_packages.len()
        );
        for package in &resolved.test_build_packages {
            println!("{:<40} {}", package.name, package.version);
        }
        for change in &resolved.lock_changes {
            println!("# lock: {change}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How `applbuild boot` runs the image.
struct BootOptions {
    check: bool,
    accel: AccelChoice,
    timeout: Option<u64>,
    json: bool,
    from: boot::BootFrom,
}

fn boot_profile(
    project: &Project,
    name: &str,
    build: &BuildArgs,
    boot_options: &BootOptions,
) -> Result<ExitCode> {
    let json = boot_options.json;
    let options = BuildOptions {
        test_build: true,
        ..build_options(project, build, json)
    };
    let loaded = profile::load(&project.profiles_dir(), name)?;
    let image_dir = options.out_dir.join(name).join(test_build::DIR);
    // Keys given on the command line are not among the inputs the digest
    // covers, so their image is always built again.
    let secrets = pipeline::secrets_store(&loaded, &options)?;
    if options.secure_boot.is_some()
        || !pipeline::is_up_to_date(
            project,
            &loaded,
            &secrets,
            &options.out_dir.join(name),
            true,
        )
    {
        if !json {
            eprintln!("applbuild: {name}: image missing, stale or to be signed: building first");
        }
        let report = pipeline::build(project, name, &options)?;
        if !json {
            print_build(&report);
        }
    }
    let run_dir = image_dir.join(boot_options.from.run_dir_name());
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let serial_log = run_dir.join("serial.log");
    // An interrupted boot stops QEMU (its log stays) and exits non-zero.
    process::stop_children_on_signals(process::STOP_GRACE, move |signal| {
        eprintln!(
            "applbuild: {signal}: QEMU stopped; serial log (with --check): {}",
            serial_log.display()
        );
    });
    let accel = boot_options
        .accel
        .resolve(&image_dir.join("vmlinuz"), &run_dir);
    let mut spec = boot::vm_spec_from(
        &loaded,
        &image_dir,
        &run_dir,
        accel,
        &boot::hub_backends(&loaded),
        boot_options.from,
    )?;
    if !boot_options.check {
        // A disk image's command line is its UKI's; only a kernel boot
        // can be given the rescue shell here.
        if let qemu::BootSource::Kernel { cmdline, .. } = &mut spec.boot {
            cmdline.push_str(" applbuild.shell=1");
        }
        return boot_interactive(spec);
    }
    let ready_timeout = Duration::from_secs(
        boot_options
            .timeout
            .unwrap_or(60 * u64::from(accel.timeout_scale())),
    );
    let report = boot::check(&loaded, spec, &run_dir, ready_timeout)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_boot(&report);
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn build_options(project: &Project, args: &BuildArgs, json: bool) -> BuildOptions {
    BuildOptions {
        out_dir: args
            .out
            .clone()
            .unwrap_or_else(|| project.root().join("out")),
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(pipeline::default_cache_dir),
        mirror: args.mirror.clone(),
        keyring: args.keyring.clone(),
        locked: args.locked,
        offline: args.offline,
        reporter: if json {
            Reporter::hidden()
        } else {
            Reporter::for_terminal()
        },
        apt_root: PathBuf::from("/"),
        secure_boot: args
            .secure_boot_key
            .clone()
            .zip(args.secure_boot_cert.clone())
            .map(|(key, cert)| profile::SecureBootKeys { key, cert }),
        test_build: false,
        secrets: args.secrets.clone(),
    }
}

fn boot_interactive(mut spec: qemu::VmSpec) -> Result<ExitCode> {
    eprintln!(
        "applbuild: serial console follows; Ctrl-a x quits QEMU, Ctrl-a c toggles its monitor"
    );
    spec.serial = qemu::Serial::Terminal;
    let status = applbuild_vm::runtime::block_on(async {
        let mut child = machine::qemu_command(&spec).kill_on_drop(true).spawn()?;
        if let Some(pid) = child.id() {
            process::register(pid);
        }
        child.wait().await
    })
    .with_context(|| format!("starting {}", qemu::QEMU_BINARY))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The arguments of `applbuild flash`.
struct FlashRequest<'a> {
    image: &'a str,
    device: &'a Path,
    out: Option<&'a Path>,
    yes: bool,
    json: bool,
}

/// `applbuild flash`: checks, shows the target, asks, writes, verifies.
fn flash_image(
    request: &FlashRequest,
    project: impl FnOnce() -> Result<Project>,
) -> Result<ExitCode> {
    let source = if request.image.contains('/') || request.image.ends_with(".img") {
        FlashSource::for_image(Path::new(request.image))?
    } else {
        let out = match request.out {
            Some(dir) => dir.to_path_buf(),
            None => project()?.root().join("out"),
        };
        FlashSource::for_profile(&out, request.image)?
    };
    let bmap = source.read_bmap()?;
    let target = Target::open(request.device)?;
    target.check_fits(bmap.image_size)?;
    eprintln!(
        "image  {}: {}, {} in {} mapped range(s)",
        source.image.display(),
        flash::human_size(bmap.image_size),
        flash::human_size(flash::mapped_bytes(&bmap)),
        bmap.ranges.len()
    );
    eprint!("device {}", target.describe());
    flash::confirm(&target.path, request.yes)?;
    let reporter = if request.json {
        Reporter::hidden()
    } else {
        Reporter::for_terminal()
    };
    let report = flash::flash(&source, &bmap, &target, &reporter).with_context(|| {
        format!(
            "flashing {} onto {}",
            source.image.display(),
            target.path.display()
        )
    })?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    if request.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: wrote {} in {} range(s) and verified each against the bmap{}",
            report.device.display(),
            flash::human_size(report.bytes_written),
            report.ranges_verified,
            if report.backup_gpt_moved {
                "; backup GPT moved to the end of the disk"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The suite lives in its own crate (it drives this one's library), so it
/// is a separate program, like cargo's external subcommands.
fn run_acceptance_suite(project: &Project, args: &[std::ffi::OsString]) -> Result<ExitCode> {
    const SUITE: &str = "applbuild-test";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(SUITE)))
        .filter(|path| path.is_file());
    let program = beside.map_or_else(|| PathBuf::from(SUITE), PathBuf::from);
    let mut command = std::process::Command::new(&program);
    command.args(args).current_dir(project.root());
    let mut child = process::supervise(&mut command).spawn().with_context(|| {
        format!(
            "cannot run {}: build it with `cargo build --release -p qemu-tests`",
            program.display()
        )
    })?;
    // On SIGINT or SIGTERM the suite gets SIGTERM and time to stop its VMs
    // (each with its own grace) and keep its logs; then this exits non-zero.
    process::register(child.id());
    process::stop_children_on_signals(4 * process::STOP_GRACE, |signal| {
        eprintln!("applbuild: {signal}: the acceptance suite was stopped");
    });
    let status = child.wait().context("waiting for the acceptance suite")?;
    process::unregister(child.id());
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            eprintln!("removed {}", dir.display());
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => bail!("cannot remove {}: {error}", dir.display()),
    }
}

fn print_build(report: &BuildReport) {
    println!(
        "{}: {} packages, rootfs {:.1} MiB -> initrd {:.1} MiB, vmlinuz {:.1} MiB in {:.1} s ({} downloaded, {} from cache)",
        report.profile,
        report.packages,
        report.rootfs_bytes as f64 / 1048576.0,
        report.initrd_bytes as f64 / 1048576.0,
        report.kernel_bytes as f64 / 1048576.0,
        report.seconds.total,
        report.downloaded,
        report.packages - report.downloaded,
    );
    println!("  {}", report.out_dir.display());
    if let Some(bytes) = report.disk_bytes {
        println!("  disk.img {:.1} MiB", bytes as f64 / 1048576.0);
    }
    if let Some(bytes) = report.uefi_image_bytes {
        println!(
            "  {}.img (UEFI disk, with .bmap and .qcow2) {:.1} MiB, written in {:.1} s",
            report.profile,
            bytes as f64 / 1048576.0,
            report.seconds.uefi
        );
    }
    println!(
        "  {} of {} packages unpacked from the unpack cache",
        report.unpacked_from_cache, report.packages
    );
    for softdep in &report.unresolved_softdeps {
        println!("  unresolved module soft dependency: {softdep}");
    }
    for change in &report.lock_changes {
        println!("  lock: {change}");
    }
    if !report.newer_versions.is_empty() {
        let security: Vec<String> = report
            .newer_versions
            .iter()
            .filter(|newer| newer.suite.ends_with("-security"))
            .map(|newer| format!("{} {} -> {}", newer.name, newer.current, newer.newest))
            .collect();
        println!(
            "  {} locked package(s) have newer versions ({} from a security suite{}); run `applbuild update`",
            report.newer_versions.len(),
            security.len(),
            if security.is_empty() {
                String::new()
            } else {
                format!(": {}", security.join(", "))
            }
        );
    }
}

fn print_boot(report: &BootReport) {
    println!(
        "{}: ready after {:.1} s under {:?} (guest uptime {})",
        report.profile,
        report.boot_to_ready_seconds,
        report.accel,
        report
            .guest_uptime_seconds
            .map_or("?".into(), |s| format!("{s:.1} s")),
    );
    if !report.phases.is_empty() {
        println!("  where the time went (guest uptime, s):");
    }
    for phase in &report.phases {
        println!(
            "    {:>6.2} – {:>5.2}  {:>5.2} s  {}",
            phase.start_seconds,
            phase.end_seconds,
            phase.seconds(),
            phase.name
        );
    }
    for check in &report.checks {
        println!(
            "  [{}] {} ({:.1} s)",
            if check.passed { "pass" } else { "FAIL" },
            check.name,
            check.seconds
        );
        if !check.passed {
            for line in check.detail.lines() {
                println!("         {line}");
            }
        }
    }
    println!("  serial log: {}", report.serial_log.display());
    println!(
        "{}",
        if report.passed {
            "all checks passed"
        } else {
            "some checks FAILED"
        }
    );
}
