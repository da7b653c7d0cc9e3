//! Boots the test builds of the real storage and hypervisor images (each
//! image plus the test channel, `build --test`) in QEMU and runs their
//! profiles' health checks: `applbuild boot <profile> --check --json`.
//! The images are built first (from the host's Debian mirror) when missing
//! or stale, into `target/applbuild-images/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;
use serde_json::Value;

/// The workspace root (the folder with `profiles/`).
fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The secrets file `scripts/test` builds the images of
/// `target/applbuild-images` with (created here when missing).
fn test_secrets() -> PathBuf {
    workspace().join("target/test-secrets.toml")
}

/// Whether QEMU can run here; in CI (`CI=true`) a missing QEMU fails the test.
fn qemu_present() -> bool {
    let present = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if !present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "qemu-system-x86_64 is missing: run scripts/host-setup"
        );
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (scripts/host-setup installs it)");
    }
    present
}

/// Runs `boot --check` for `profile` and returns its JSON report.
fn boot_check(profile: &str) -> Value {
    boot_check_with(profile, &[])
}

/// [`boot_check`] with more arguments (`--disk`).
fn boot_check_with(profile: &str, extra: &[&str]) -> Value {
    let out = workspace().join("target/applbuild-images");
    let output = Command::cargo_bin("applbuild")
        .unwrap()
        .current_dir(workspace())
        .args(["boot", profile, "--check", "--json", "--out"])
        .arg(&out)
        .arg("--secrets")
        .arg(test_secrets())
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON report; status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        )
    });
    assert!(
        output.status.success(),
        "boot --check {profile} failed:\n{stdout}\n{stderr}"
    );
    report
}

/// Asserts the report's checks all passed and returns their names.
fn passed_checks(report: &Value) -> Vec<String> {
    assert_eq!(report["passed"], Value::Bool(true), "{report:#}");
    let checks = report["checks"].as_array().expect("checks array");
    for check in checks {
        assert_eq!(check["passed"], Value::Bool(true), "{check:#}");
    }
    assert!(report["boot_to_ready_seconds"].as_f64().unwrap() > 0.0);
    checks
        .iter()
        .map(|check| check["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn storage_image_boots_and_serves_its_target_on_both_portals() {
    if !qemu_present() {
        return;
    }
    let report = boot_check("storage");
    let names = passed_checks(&report);
    assert!(names.iter().any(|name| name.contains("LUN 1")), "{names:?}");
    assert!(
        names.iter().any(|name| name.contains("both portals")),
        "{names:?}"
    );
    assert_boot_accounted_for(&report, &["sysinit", "modules", "udev-coldplug", "tgtd"]);
    let run_dir = workspace().join("target/applbuild-images/storage/test/run");
    let unpacked = std::fs::read_dir(&run_dir)
        .unwrap()
        .flatten()
        .any(|entry| entry.file_name().to_string_lossy().starts_with("vmlinux-"));
    assert!(unpacked, "no PVH kernel unpacked in {}", run_dir.display());
}

/// The report's boot breakdown names `steps` and its rows span the whole
/// time from QEMU's start to the ready line, without a hole.
fn assert_boot_accounted_for(report: &Value, steps: &[&str]) {
    let phases = report["phases"].as_array().expect("a phases list");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    for step in steps {
        assert!(names.contains(step), "no {step} in {names:?}");
    }
    let seconds = |phase: &Value, key: &str| phase[key].as_f64().unwrap();
    let mut covered = 0.0f64;
    for phase in &phases[1..] {
        assert!(
            seconds(phase, "start_seconds") <= covered + 0.051,
            "a hole before {phase}"
        );
        covered = covered.max(seconds(phase, "end_seconds"));
    }
    let uptime = report["guest_uptime_seconds"].as_f64().unwrap();
    assert!(
        covered >= uptime - 0.051,
        "rows end at {covered}, ready at {uptime}"
    );
    let before = -seconds(&phases[0], "start_seconds");
    let total = report["boot_to_ready_seconds"].as_f64().unwrap();
    assert!(
        (before + uptime - total).abs() < 0.01,
        "{before} + {uptime} != {total}"
    );
}

#[test]
fn hypervisor_image_boots_with_daemons_bridge_and_bound_ifaces() {
    if !qemu_present() {
        return;
    }
    let names = passed_checks(&boot_check("hypervisor"));
    assert!(
        names.iter().any(|name| name.contains("multipathd")),
        "{names:?}"
    );
    assert!(names.iter().any(|name| name.contains("br0")), "{names:?}");
    assert!(names.iter().any(|name| name.contains("bound")), "{names:?}");
}

/// The flashed bytes boot too: OVMF starts systemd-boot from the ESP,
/// systemd-boot the UKI, and the node reaches the same ready state and
/// passes the same checks as with QEMU loading the kernel itself.
#[test]
fn storage_disk_image_boots_through_uefi_firmware() {
    if !qemu_present() || !ovmf_present() {
        return;
    }
    let names = passed_checks(&boot_check_with("storage", &["--disk"]));
    assert!(names.iter().any(|name| name.contains("LUN 1")), "{names:?}");
}

#[test]
fn hypervisor_disk_image_boots_through_uefi_firmware() {
    if !qemu_present() || !ovmf_present() {
        return;
    }
    let names = passed_checks(&boot_check_with("hypervisor", &["--disk"]));
    assert!(
        names.iter().any(|name| name.contains("multipathd")),
        "{names:?}"
    );
}

/// Debian's `ovmf` on the host; in CI a missing one fails the test.
fn ovmf_present() -> bool {
    let present = std::path::Path::new(OVMF_VARS_SNAKEOIL).is_file();
    if !present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{OVMF_VARS_SNAKEOIL} is missing: run scripts/host-setup (Debian package ovmf)"
        );
        eprintln!("SKIPPED: Debian's ovmf is not installed (scripts/host-setup installs it)");
    }
    present
}

const OVMF_VARS_SNAKEOIL: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

/// The snakeoil key without its passphrase (`snakeoil`, README.Debian),
/// written into `dir`.
fn snakeoil_key(dir: &Path) -> PathBuf {
    let key = dir.join("snakeoil.key");
    let status = Command::new("openssl")
        .args([
            "pkey",
            "-passin",
            "pass:snakeoil",
            "-in",
            SNAKEOIL_KEY,
            "-out",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success(), "openssl could not read the snakeoil key");
    key
}

/// `applbuild boot <profile> --check --json --disk --secure-boot` into
/// `out`, with `extra` arguments.
fn secure_boot_check(
    profile: &str,
    out: &Path,
    extra: &[&std::ffi::OsStr],
) -> std::process::Output {
    Command::cargo_bin("applbuild")
        .unwrap()
        .current_dir(workspace())
        .args([
            "boot",
            profile,
            "--check",
            "--json",
            "--disk",
            "--secure-boot",
        ])
        .arg("--out")
        .arg(out)
        .arg("--secrets")
        .arg(test_secrets())
        .args(extra)
        .output()
        .unwrap()
}

/// Secure Boot enforced, with Debian's snakeoil keys enrolled: `profile`'s
/// image signed with the snakeoil key boots to ready and passes its checks.
fn signed_image_boots_with_secure_boot(profile: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = snakeoil_key(dir.path());
    let signed = secure_boot_check(
        profile,
        &dir.path().join("out"),
        &[
            "--secure-boot-key".as_ref(),
            key.as_os_str(),
            "--secure-boot-cert".as_ref(),
            SNAKEOIL_CERT.as_ref(),
        ],
    );
    let stdout = String::from_utf8_lossy(&signed.stdout);
    let stderr = String::from_utf8_lossy(&signed.stderr);
    assert!(signed.status.success(), "signed image:\n{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    passed_checks(&report);
}

/// The signed storage image boots under Secure Boot; the unsigned one is
/// refused by the firmware.
#[test]
fn signed_storage_image_boots_with_secure_boot_and_unsigned_is_refused() {
    if !qemu_present() || !ovmf_present() {
        return;
    }
    signed_image_boots_with_secure_boot("storage");
    let images = workspace().join("target/applbuild-images");
    let unsigned = secure_boot_check("storage", &images, &["--timeout".as_ref(), "60".as_ref()]);
    assert!(
        !unsigned.status.success(),
        "an unsigned image booted under Secure Boot"
    );
    let serial =
        std::fs::read_to_string(images.join("storage/test/run-secure-boot/serial.log")).unwrap();
    assert!(serial.contains("Access Denied"), "{serial}");
    assert!(!serial.contains("APPLBUILD-READY"), "{serial}");
}

#[test]
fn signed_hypervisor_image_boots_with_secure_boot() {
    if !qemu_present() || !ovmf_present() {
        return;
    }
    signed_image_boots_with_secure_boot("hypervisor");
}

/// Copies the project's profiles, overlay and lock file into a temporary
/// project, adding `profiles/<name>.toml` with `text` and giving it the
/// overlay of `parent` (overlays are chosen by profile name, not by
/// `extends`).
fn project_with_profile(name: &str, parent: &str, text: &str) -> tempfile::TempDir {
    let project = tempfile::tempdir().unwrap();
    for dir in ["profiles", "rootfs-overlay"] {
        let status = Command::new("cp")
            .arg("-r")
            .arg(workspace().join(dir))
            .arg(project.path())
            .status()
            .unwrap();
        assert!(status.success(), "copying {dir}");
    }
    std::fs::copy(
        workspace().join("applbuild.lock"),
        project.path().join("applbuild.lock"),
    )
    .unwrap();
    std::fs::write(project.path().join(format!("profiles/{name}.toml")), text).unwrap();
    let overlay = project.path().join("rootfs-overlay");
    let status = Command::new("cp")
        .arg("-r")
        .arg(overlay.join(parent))
        .arg(overlay.join(name))
        .status()
        .unwrap();
    assert!(status.success(), "copying the {parent} overlay");
    project
}

#[test]
fn a_service_that_fails_ends_the_boot_check_with_its_failure_line() {
    if !qemu_present() {
        return;
    }
    let project = project_with_profile(
        "doomed",
        "storage",
        "extends = \"storage\"\n\n[services.doomed]\nkind = \"oneshot\"\ncommand = \"sh -c 'exit 4'\"\n",
    );
    let started = std::time::Instant::now();
    let output = Command::cargo_bin("applbuild")
        .unwrap()
        .arg("--project")
        .arg(project.path())
        .args(["boot", "doomed", "--check", "--out"])
        .arg(project.path().join("out"))
        .arg("--secrets")
        .arg(project.path().join("secrets.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "boot --check passed:\n{stderr}");
    assert!(
        stderr.contains("APPLBUILD-FAILED doomed: exited with status 4"),
        "{stderr}"
    );
    // The check stops at the failure line instead of waiting out the
    // ready timeout (minutes under TCG).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(150),
        "took {:?}",
        started.elapsed()
    );
}
