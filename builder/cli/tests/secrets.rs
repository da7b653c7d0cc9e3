//! `applbuild secrets init` and the redaction of `applbuild show`, on the
//! project's own profiles (read only; the store goes to a temporary folder).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The project folder of this repository.
fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `applbuild --project <this repository>` with its config folder in `config`.
fn applbuild(config: &Path) -> Command {
    let mut command = Command::cargo_bin("applbuild").unwrap();
    command
        .arg("--project")
        .arg(project())
        .env("XDG_CONFIG_HOME", config)
        .env_remove("HOME");
    command
}

fn stdout(command: &mut Command) -> String {
    let output = command.assert().success().get_output().clone();
    String::from_utf8(output.stdout).unwrap()
}

/// The `name = "value"` pairs of a secrets file.
fn values(path: &Path) -> toml::Table {
    toml::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn secrets_init_writes_a_private_file_and_lists_names_never_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("test-secrets.toml");
    let printed = stdout(
        applbuild(dir.path())
            .args(["secrets", "init", "--secrets"])
            .arg(&file),
    );
    assert_eq!(mode(&file), 0o600);
    let first = values(&file);
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        [
            "console-root-password",
            "iscsi-chap",
            "iscsi-chap-mutual",
            "ssh-host-key"
        ]
    );
    assert!(printed.contains(&file.display().to_string()), "{printed}");
    for (name, value) in &first {
        let value = value.as_str().unwrap();
        assert_eq!(value.len(), 24);
        assert!(printed.contains(name.as_str()), "{printed}");
        assert!(!printed.contains(value), "a value was printed:\n{printed}");
    }
    assert!(printed.contains("new random value"), "{printed}");

    // Again: the values stay. With --fresh: every value is new.
    let again = stdout(
        applbuild(dir.path())
            .args(["secrets", "init", "--json", "--secrets"])
            .arg(&file),
    );
    let report: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(report[0]["added"], serde_json::json!([]));
    assert_eq!(values(&file), first);
    applbuild(dir.path())
        .args(["secrets", "init", "--fresh", "--secrets"])
        .arg(&file)
        .assert()
        .success();
    let fresh = values(&file);
    assert_ne!(fresh["iscsi-chap"], first["iscsi-chap"]);
    assert_ne!(fresh["iscsi-chap-mutual"], first["iscsi-chap-mutual"]);
}

#[test]
fn the_default_store_is_the_clusters_file_under_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    applbuild(dir.path())
        .args(["secrets", "init"])
        .assert()
        .success();
    let file = dir.path().join("applbuild/secrets/default.toml");
    assert_eq!(mode(&file), 0o600);

    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let output = applbuild(dir.path())
        .args(["secrets", "init"])
        .assert()
        .failure()
        .get_output()
        .clone();
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(
        error.contains(&format!("chmod 600 {}", file.display())),
        "{error}"
    );
}

#[test]
fn show_prints_secret_names_never_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    applbuild(dir.path())
        .args(["secrets", "init", "--secrets"])
        .arg(&file)
        .assert()
        .success();
    let secrets = values(&file);
    for json in [false, true] {
        let mut command = applbuild(dir.path());
        command
            .args(["show", "storage", "--no-packages", "--secrets"])
            .arg(&file);
        if json {
            command.arg("--json");
        }
        let shown = stdout(&mut command);
        assert!(shown.contains("<secret iscsi-chap>"), "{shown}");
        assert!(shown.contains("<secret iscsi-chap-mutual>"), "{shown}");
        for value in secrets.values() {
            assert!(!shown.contains(value.as_str().unwrap()), "{shown}");
        }
    }
}
