//! The service table: the one contract between the build and the image's
//! init scripts. The rules both sides share are defined here once: how a
//! service name becomes a shell-safe id, where a service's readiness marker
//! lies, the line printed once every service is ready. The build writes them
//! into `/etc/applbuild/services`, which `supervise` and `announce-ready`
//! read; the init templates get the same entries in their context.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::profile::{LoadedProfile, Profile, Service, ServiceKind};
use applbuild_rootfs::templates::{Renderer, TemplateError};
use applbuild_secrets::Store;

/// The first word of the line the image's init prints once every service is ready.
pub const READY_MARKER: &str = "APPLBUILD-READY";

/// The first word of the console line `APPLBUILD-FAILED NAME: REASON` that
/// the image's `supervise` prints when a service fails to start (a probe
/// that gave up, a oneshot that failed, a dependency that never came).
pub const FAILED_MARKER: &str = "APPLBUILD-FAILED";

/// The folder where a service's marker file appears while it is ready.
pub const READY_DIR: &str = "/run/applbuild/ready";

/// Name of the service the build adds when the guest agent is enabled.
pub const GUEST_AGENT_SERVICE: &str = "guest-agent";

/// The shell-safe id of a service: its name with `-` and `.` made `_`.
/// The id names the service's shell functions and its readiness marker.
pub fn service_id(name: &str) -> String {
    name.replace(['-', '.'], "_")
}

/// Whether `name` can be a service name: letters, digits, `-`, `.` and `_`,
/// so that its id is a shell identifier fragment.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// The marker file of service `name`, present while it is ready.
pub fn ready_marker(name: &str) -> String {
    format!("{READY_DIR}/{}", service_id(name))
}

/// The services init runs for `profile`: its own, one per VM it declares,
/// plus the guest agent's in a test build.
pub fn profile_services(profile: &Profile) -> BTreeMap<String, Service> {
    let mut services = profile.services.clone();
    services.extend(crate::vms::services(profile));
    if profile.test_build {
        services.insert(
            GUEST_AGENT_SERVICE.into(),
            Service {
                command: "/usr/lib/applbuild/guest-agent".into(),
                kind: ServiceKind::Daemon,
                ready: Some("pidof qemu-ga".into()),
                post_start: Vec::new(),
                after: Vec::new(),
            },
        );
    }
    services
}

/// One service as the init templates and the table see it, its shell
/// snippets rendered.
#[derive(Debug, Serialize)]
pub struct ServiceEntry {
    /// Name as the profile spells it.
    pub name: String,
    /// Shell-safe id ([`service_id`]).
    pub id: String,
    /// Daemon or oneshot.
    pub kind: ServiceKind,
    /// Command line.
    pub command: String,
    /// Readiness probe (one line), if any.
    pub ready: Option<String>,
    /// Steps run after each start once ready.
    pub post_start: Vec<String>,
    /// Ids of the services that must be ready first.
    pub after: Vec<String>,
}

/// Renders the services of `loaded` with `renderer` (the profile as
/// context); template names in errors are `services.NAME.FIELD`.
pub fn render_entries(
    loaded: &LoadedProfile,
    renderer: &Renderer,
) -> Result<Vec<ServiceEntry>, TemplateError> {
    let mut entries = Vec::new();
    for (name, service) in &profile_services(&loaded.profile) {
        let key = |field: &str| format!("services.{name}.{field}");
        let ready = service
            .ready
            .as_ref()
            .map(|ready| renderer.render(&key("ready"), ready))
            .transpose()?;
        if let Some(probe) = &ready
            && probe.trim().contains('\n')
        {
            return Err(TemplateError {
                name: key("ready"),
                line: String::new(),
                message: "the readiness probe renders to more than one line; \
                          it must be one line of the service table"
                    .into(),
            });
        }
        entries.push(ServiceEntry {
            name: name.clone(),
            id: service_id(name),
            kind: service.kind,
            command: renderer.render(&key("command"), &service.command)?,
            ready: ready.map(|probe| probe.trim().to_string()),
            post_start: service
                .post_start
                .iter()
                .map(|step| renderer.render(&key("post_start"), step))
                .collect::<Result<_, _>>()?,
            after: service.after.iter().map(|name| service_id(name)).collect(),
        });
    }
    Ok(entries)
}

/// The text of `/etc/applbuild/services` for `profile`: settings lines,
/// then one `service` line per entry.
pub fn table(profile: &str, entries: &[ServiceEntry]) -> String {
    let mut text = format!(
        "# Written by applbuild for profile {profile}; read by /usr/lib/applbuild/supervise\n\
         # and announce-ready.\n\
         # ready-dir DIR: a ready service's marker is DIR/ID.\n\
         # ready-line TEXT: printed (with uptime=SECONDS) once every service is ready.\n\
         # service ID KIND AFTER NAME PROBE: AFTER is a comma-separated list of ids\n\
         # or `-`; PROBE, the rest of the line, succeeds once the service is ready.\n\
         ready-dir {READY_DIR}\n\
         ready-line {READY_MARKER} profile={profile}\n"
    );
    for entry in entries {
        let after = if entry.after.is_empty() {
            "-".to_string()
        } else {
            entry.after.join(",")
        };
        text.push_str(&format!(
            "service {} {} {after} {} {}\n",
            entry.id,
            entry.kind,
            entry.name,
            entry.ready.as_deref().unwrap_or("true")
        ));
    }
    text
}

/// The template context: the merged profile with its secrets' values from
/// `secrets` (where the profile says `secret = { name = "N" }`), plus a
/// `build` table with what the build computed (kernel release, module load
/// order, the services and the text of their table, the guest filter's
/// plan or null).
pub fn template_context(
    loaded: &LoadedProfile,
    kernel_release: &str,
    modules: &[String],
    secrets: &Store,
) -> Result<serde_json::Value, TemplateError> {
    let mut context = crate::boot::check_context(loaded);
    for (pointer, secret) in loaded.profile.secret_refs() {
        let value = secrets.get(&secret.name).ok_or_else(|| TemplateError {
            name: pointer.trim_start_matches('/').replace('/', "."),
            line: String::new(),
            message: format!(
                "secret `{}` is not in {}",
                secret.name,
                secrets.path().display()
            ),
        })?;
        if let Some(slot) = context.pointer_mut(&pointer) {
            *slot = serde_json::Value::String(value.to_string());
        }
    }
    let entries = render_entries(loaded, &Renderer::new(&context))?;
    context["build"] = serde_json::json!({
        "profile": loaded.name,
        "kernel_release": kernel_release,
        "modules": modules,
        "service_table": table(&loaded.name, &entries),
        "services": entries,
        "guest_isolation": crate::guest_isolation::filter_plan(&loaded.profile),
    });
    Ok(context)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use super::*;
    use crate::profile;

    fn project() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn loaded(name: &str) -> LoadedProfile {
        profile::load(&project().join("profiles"), name).unwrap()
    }

    /// A store (never written) with a random value for each secret of `loaded`.
    pub(crate) fn store_for(loaded: &LoadedProfile) -> Store {
        let mut store = Store::empty(Path::new("test-secrets.toml"));
        store.add_missing(loaded.profile.secret_names());
        store
    }

    /// The overlay template `path` of the project rendered for `loaded`.
    pub(crate) fn render_overlay(loaded: &LoadedProfile, store: &Store, path: &str) -> String {
        let context = template_context(loaded, "6.1.0-test-amd64", &[], store).unwrap();
        let path = project().join("rootfs-overlay").join(path);
        let source = std::fs::read_to_string(&path).unwrap();
        Renderer::new(&context)
            .render(path.to_str().unwrap(), &source)
            .unwrap()
    }

    #[test]
    fn the_target_asks_for_chap_on_discovery_and_login_and_answers_mutual_chap() {
        let storage = loaded("storage");
        let store = store_for(&storage);
        let text = render_overlay(
            &storage,
            &store,
            "storage/usr/lib/applbuild/tgt-configure.j2",
        );
        let chap = store.get("iscsi-chap").unwrap();
        let mutual = store.get("iscsi-chap-mutual").unwrap();
        let tgtadm = "tgtadm --lld iscsi";
        for line in [
            format!("\n{tgtadm} --mode account --op new --user uranus --password {chap}\n"),
            format!("\n{tgtadm} --mode account --op new --user neptune --password {mutual}\n"),
            format!("\n{tgtadm} --mode account --op bind --user uranus\n"),
            format!("\n{tgtadm} --mode account --op bind --user neptune --outgoing\n"),
            format!(
                "\n{tgtadm} --mode target --op new --tid 1 -T iqn.2012-09.com.ibm:neptune.target\n"
            ),
            format!(
                "\n{tgtadm} --mode logicalunit --op new --tid 1 --lun 1 -b /dev/disk/by-id/virtio-lun1\n"
            ),
            format!(
                "\n{tgtadm} --mode logicalunit --op update --tid 1 --lun 1 --params scsi_id=a9b1000000000001\n"
            ),
            format!("\n{tgtadm} --mode account --op bind --tid 1 --user uranus\n"),
            format!("\n{tgtadm} --mode account --op bind --tid 1 --user neptune --outgoing\n"),
            format!("\n{tgtadm} --mode target --op bind --tid 1 -Q iqn.2012-09.com.ibm:uranus\n"),
        ] {
            assert!(text.contains(&line), "{line:?} not in\n{text}");
        }
        // The name ACL alone: binding the address ACL `ALL` beside it would
        // let any initiator name in (S13).
        assert!(!text.contains("-I ALL"), "{text}");
        assert!(
            !crate::boot::check_context(&storage)
                .to_string()
                .contains(chap)
        );
    }

    #[test]
    fn a_target_without_an_acl_is_open_to_every_initiator_that_passes_chap() {
        let mut storage = loaded("storage");
        let target = storage.profile.target.as_mut().unwrap();
        target.allowed_initiators.clear();
        target.discovery_auth = false;
        let store = store_for(&storage);
        let text = render_overlay(
            &storage,
            &store,
            "storage/usr/lib/applbuild/tgt-configure.j2",
        );
        assert!(
            text.contains("\ntgtadm --lld iscsi --mode target --op bind --tid 1 -I ALL\n"),
            "{text}"
        );
        assert!(!text.contains("-Q "), "{text}");
        assert!(!text.contains("--op bind --user uranus\n"), "{text}");
    }

    #[test]
    fn the_initiator_sends_chap_on_discovery_and_login_and_checks_the_target() {
        let hypervisor = loaded("hypervisor");
        let store = store_for(&hypervisor);
        let text = render_overlay(&hypervisor, &store, "hypervisor/etc/iscsi/iscsid.conf.j2");
        let chap = store.get("iscsi-chap").unwrap();
        let mutual = store.get("iscsi-chap-mutual").unwrap();
        for prefix in ["node.session", "discovery.sendtargets"] {
            for line in [
                format!("{prefix}.auth.authmethod = CHAP\n"),
                format!("{prefix}.auth.username = uranus\n"),
                format!("{prefix}.auth.password = {chap}\n"),
                format!("{prefix}.auth.username_in = neptune\n"),
                format!("{prefix}.auth.password_in = {mutual}\n"),
            ] {
                assert!(text.contains(&line), "{line:?} not in\n{text}");
            }
        }
    }

    #[test]
    fn a_secret_missing_from_the_store_is_an_error_naming_it() {
        let storage = loaded("storage");
        let store = Store::empty(Path::new("empty.toml"));
        let error = template_context(&storage, "6.1.0-test-amd64", &[], &store).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("secret `iscsi-chap` is not in empty.toml"),
            "{error}"
        );
    }

    #[test]
    fn ids_and_markers_follow_one_rule() {
        assert_eq!(service_id("udev-coldplug"), "udev_coldplug");
        assert_eq!(service_id("a.b_c"), "a_b_c");
        assert_eq!(
            ready_marker("iscsi-sessions"),
            "/run/applbuild/ready/iscsi_sessions"
        );
        assert!(is_valid_name("udev-coldplug.2"));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a$b"));
        assert!(!is_valid_name(""));
    }

    #[test]
    fn table_lists_ids_dependencies_and_probes() {
        let storage = loaded("storage");
        let renderer = Renderer::new(&crate::boot::check_context(&storage));
        let entries = render_entries(&storage, &renderer).unwrap();
        let text = table("storage", &entries);
        assert!(
            text.contains("\nready-dir /run/applbuild/ready\n"),
            "{text}"
        );
        assert!(
            text.contains("\nready-line APPLBUILD-READY profile=storage\n"),
            "{text}"
        );
        assert!(
            text.contains("\nservice udev_coldplug oneshot udevd udev-coldplug true\n"),
            "{text}"
        );
        assert!(!text.contains("guest_agent"), "{text}");
        let test_build = storage.for_test_build();
        let test_entries = render_entries(&test_build, &renderer).unwrap();
        let test_text = table("storage", &test_entries);
        assert!(
            test_text.contains("\nservice guest_agent daemon - guest-agent pidof qemu-ga\n"),
            "{test_text}"
        );
        let tgtd = text
            .lines()
            .find(|line| line.starts_with("service tgtd "))
            .expect("tgtd in the table");
        assert!(
            tgtd.starts_with("service tgtd daemon udev_coldplug tgtd tgtadm "),
            "{tgtd}"
        );
    }

    #[test]
    fn a_probe_of_two_lines_is_refused() {
        let mut storage = loaded("storage");
        storage.profile.services.get_mut("tgtd").unwrap().ready = Some("true\ntrue".into());
        let renderer = Renderer::new(&crate::boot::check_context(&storage));
        let error = render_entries(&storage, &renderer).unwrap_err();
        assert_eq!(error.name, "services.tgtd.ready");
    }

    /// Whether a rendered overlay file is a shell script shellcheck can read.
    fn is_shell(text: &str) -> bool {
        text.starts_with("#!/bin/busybox sh") || text.contains("# shellcheck shell=")
    }

    /// The rendered `*.j2` shell files of the overlay layers of `name`,
    /// with their template paths. Plain shell files are checked by
    /// `scripts/test`; these become shell only once rendered.
    fn rendered_shell_templates(name: &str) -> Vec<(PathBuf, String)> {
        let loaded = loaded(name);
        let store = store_for(&loaded);
        let context = template_context(
            &loaded,
            "6.1.0-test-amd64",
            &loaded.profile.kernel.modules,
            &store,
        )
        .unwrap();
        let renderer = Renderer::new(&context);
        let mut rendered = Vec::new();
        for layer in ["common", name] {
            let root = project().join("rootfs-overlay").join(layer);
            let mut pending = vec![root];
            while let Some(dir) = pending.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for path in entries.map(|entry| entry.unwrap().path()) {
                    if path.is_dir() {
                        pending.push(path);
                    } else if path.extension().is_some_and(|ext| ext == "j2") {
                        let source = std::fs::read_to_string(&path).unwrap();
                        let text = renderer
                            .render(&path.display().to_string(), &source)
                            .unwrap();
                        if is_shell(&text) {
                            rendered.push((path, text));
                        }
                    }
                }
            }
        }
        rendered
    }

    /// What shellcheck finds in a dash script, if anything.
    pub(crate) fn shellcheck(text: &str) -> Option<String> {
        let mut child = Command::new("shellcheck")
            .args(["--shell=dash", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("shellcheck runs (scripts/host-setup installs it)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        (!output.status.success()).then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    #[test]
    fn nics_named_by_driver_or_pci_path_call_name_nic_with_them() {
        let mut loaded = loaded("hypervisor");
        let interfaces = &mut loaded.profile.network.interfaces;
        interfaces[0].mac = None;
        interfaces[0].driver = Some("igb".into());
        interfaces[1].mac = None;
        interfaces[1].pci_path = Some("pci-0000:03:00.0".into());
        let context =
            template_context(&loaded, "6.1.0-test-amd64", &[], &store_for(&loaded)).unwrap();
        let path = project().join("rootfs-overlay/common/usr/lib/applbuild/rcS.j2");
        let source = std::fs::read_to_string(&path).unwrap();
        let text = Renderer::new(&context).render("rcS.j2", &source).unwrap();
        assert_eq!(shellcheck(&text), None);
        assert!(
            text.contains("/usr/lib/applbuild/name-nic eth0 driver igb $named\n"),
            "{text}"
        );
        assert!(
            text.contains("/usr/lib/applbuild/name-nic eth1 pci_path pci-0000:03:00.0 $named\n"),
            "{text}"
        );
    }

    #[test]
    fn rendered_init_scripts_pass_shellcheck() {
        let mut checked = 0;
        for name in ["storage", "hypervisor", "guest"] {
            for (path, text) in rendered_shell_templates(name) {
                let findings = shellcheck(&text);
                assert!(
                    findings.is_none(),
                    "{} rendered for {name}:\n{}",
                    path.display(),
                    findings.unwrap_or_default()
                );
                checked += 1;
            }
        }
        // rcS and services for each profile, iscsi-sessions for the hypervisor.
        assert!(checked >= 7, "only {checked} rendered scripts found");
    }

    /// A temporary root for running the real `supervise` under `dash`: a
    /// service table, the services' shell functions and a console file.
    struct SuperviseRoot {
        dir: tempfile::TempDir,
    }

    impl SuperviseRoot {
        /// `services` are `(id, kind, after, probe, command)`.
        fn new(services: &[(&str, &str, &str, &str, &str)]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ready = dir.path().join("ready");
            let mut table = format!("ready-dir {}\nready-line x\n", ready.display());
            let mut functions = String::new();
            for (id, kind, after, probe, command) in services {
                table.push_str(&format!("service {id} {kind} {after} {id} {probe}\n"));
                functions.push_str(&format!(
                    "svc_{id}_command() {{\n{command}\n}}\nsvc_{id}_post_start() {{\ntrue\n}}\n"
                ));
            }
            std::fs::write(dir.path().join("table"), table).unwrap();
            std::fs::write(dir.path().join("functions"), functions).unwrap();
            std::fs::write(dir.path().join("console"), "").unwrap();
            Self { dir }
        }

        fn ready_dir(&self) -> PathBuf {
            self.dir.path().join("ready")
        }

        /// Starts `supervise ID` with one-second timeouts and backoff.
        fn start(&self, id: &str) -> std::process::Child {
            let script = project().join("rootfs-overlay/common/usr/lib/applbuild/supervise");
            Command::new("dash")
                .arg(script)
                .arg(id)
                .env("APPLBUILD_PATH", std::env::var("PATH").unwrap())
                .env("APPLBUILD_SERVICES", self.dir.path().join("table"))
                .env("APPLBUILD_FUNCTIONS", self.dir.path().join("functions"))
                .env("APPLBUILD_CONSOLE", self.dir.path().join("console"))
                .env("APPLBUILD_READY_TIMEOUT", "1")
                .env("APPLBUILD_AFTER_TIMEOUT", "1")
                .env("APPLBUILD_BACKOFF_LIMIT", "1")
                .spawn()
                .expect("dash runs (scripts/host-setup installs it)")
        }

        /// The console once a line starting with `prefix` is on it (the
        /// test fails after 15 s without one).
        fn console_after(&self, prefix: &str) -> String {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            loop {
                let text = std::fs::read_to_string(self.dir.path().join("console")).unwrap();
                if text.lines().any(|line| line.starts_with(prefix)) {
                    return text;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no line `{prefix}` on the console:\n{text}"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }

        /// Runs `supervise ID` to its end and returns the console.
        fn run(&self, id: &str) -> String {
            let status = self.start(id).wait().unwrap();
            assert!(status.success(), "supervise {id}: {status}");
            std::fs::read_to_string(self.dir.path().join("console")).unwrap()
        }
    }

    fn failed_lines(console: &str) -> Vec<&str> {
        console
            .lines()
            .filter(|line| line.starts_with(FAILED_MARKER))
            .collect()
    }

    #[test]
    fn supervise_marks_a_daemon_ready_once_its_probe_passes() {
        let root = SuperviseRoot::new(&[("d", "daemon", "-", "true", "sleep 1")]);
        let mut child = root.start("d");
        let console = root.console_after("applbuild: [");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !root.ready_dir().join("d").exists() {
            assert!(std::time::Instant::now() < deadline, "{console}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(child.wait().unwrap().success());
        let console = std::fs::read_to_string(root.dir.path().join("console")).unwrap();
        assert!(failed_lines(&console).is_empty(), "{console}");
        assert!(console.contains("d: ready"), "{console}");
    }

    #[test]
    fn supervise_says_a_probe_gave_up_and_does_not_mark_ready() {
        let root = SuperviseRoot::new(&[("slow", "daemon", "-", "false", "sleep 30")]);
        let console = root.run("slow");
        assert_eq!(
            failed_lines(&console),
            ["APPLBUILD-FAILED slow: not ready after 1 s (probe: false)"],
            "{console}"
        );
        assert!(!root.ready_dir().join("slow").exists());
        assert!(root.ready_dir().join("slow.failed").exists());
        assert!(console.contains("slow: restarting in 1 s"), "{console}");
    }

    #[test]
    fn supervise_says_a_daemon_died_before_it_was_ready() {
        let root = SuperviseRoot::new(&[("dies", "daemon", "-", "false", "return 7")]);
        let console = root.run("dies");
        assert_eq!(
            failed_lines(&console),
            ["APPLBUILD-FAILED dies: exited with status 7 before it was ready"],
            "{console}"
        );
    }

    #[test]
    fn a_oneshot_that_exits_is_said_to_have_failed() {
        // A bare `exit` in a command ends the command, not the supervisor.
        let root = SuperviseRoot::new(&[("once", "oneshot", "-", "true", "exit 4")]);
        let console = root.run("once");
        assert_eq!(
            failed_lines(&console),
            ["APPLBUILD-FAILED once: exited with status 4"],
            "{console}"
        );
    }

    #[test]
    fn supervise_says_a_post_start_step_failed() {
        let root = SuperviseRoot::new(&[("p", "daemon", "-", "true", "sleep 30")]);
        let functions = root.dir.path().join("functions");
        let mut text = std::fs::read_to_string(&functions).unwrap();
        text.push_str("svc_p_post_start() {\nfalse\n}\n");
        std::fs::write(&functions, text).unwrap();
        let console = root.run("p");
        assert_eq!(
            failed_lines(&console),
            ["APPLBUILD-FAILED p: a post-start step failed"],
            "{console}"
        );
        assert!(!root.ready_dir().join("p").exists());
    }

    #[test]
    fn supervise_backs_off_longer_after_each_failed_start() {
        let root = SuperviseRoot::new(&[("dies", "daemon", "-", "false", "false")]);
        std::fs::create_dir_all(root.ready_dir()).unwrap();
        std::fs::write(root.ready_dir().join("dies.restarts"), "3\n").unwrap();
        // With a limit of 1 s the delay stays 1 s; the count still grows.
        let console = root.run("dies");
        assert!(console.contains("dies: restarting in 1 s"), "{console}");
        let restarts = std::fs::read_to_string(root.ready_dir().join("dies.restarts")).unwrap();
        assert_eq!(restarts.trim(), "4", "{console}");
    }

    #[test]
    fn supervise_says_a_oneshot_failed() {
        let root = SuperviseRoot::new(&[("job", "oneshot", "-", "true", "sh -c 'exit 3'")]);
        let console = root.run("job");
        assert_eq!(
            failed_lines(&console),
            ["APPLBUILD-FAILED job: exited with status 3"],
            "{console}"
        );
        assert!(!root.ready_dir().join("job").exists());
    }

    #[test]
    fn supervise_says_a_dependency_never_came() {
        let root = SuperviseRoot::new(&[
            ("first", "daemon", "-", "false", "sleep 30"),
            ("second", "oneshot", "first", "true", "true"),
        ]);
        let mut child = root.start("second");
        let console = root.console_after(FAILED_MARKER);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            failed_lines(&console),
            ["APPLBUILD-FAILED second: first, which it comes after, is not ready after 1 s"],
            "{console}"
        );
        assert!(!console.contains("second: starting"), "{console}");
    }

    #[test]
    fn supervise_says_a_dependency_failed_and_starts_once_it_recovers() {
        let root = SuperviseRoot::new(&[
            ("first", "daemon", "-", "false", "sleep 30"),
            ("second", "oneshot", "first", "true", "true"),
        ]);
        std::fs::create_dir_all(root.ready_dir()).unwrap();
        std::fs::write(root.ready_dir().join("first.failed"), "").unwrap();
        let mut child = root.start("second");
        let console = root.console_after(FAILED_MARKER);
        assert_eq!(
            failed_lines(&console),
            ["APPLBUILD-FAILED second: first, which it comes after, failed"],
            "{console}"
        );
        std::fs::write(root.ready_dir().join("first"), "").unwrap();
        assert!(child.wait().unwrap().success());
        assert!(root.ready_dir().join("second").exists());
    }

    /// Runs `name-nic ARGS` over a fake `/sys/class/net` holding `ens3`
    /// (address `52:54:00:00:00:01`, driver `igb`, PCI slot
    /// `0000:03:00.0`) and `ens4` (`52:54:00:00:00:02`, `igb`,
    /// `0000:04:00.0`), with an `ip` that logs its arguments; returns the
    /// exit status, the `ip` log and the console.
    fn name_nic(args: &[&str]) -> (bool, String, String) {
        let dir = tempfile::tempdir().unwrap();
        for (nic, mac, slot) in [
            ("ens3", "52:54:00:00:00:01", "0000:03:00.0"),
            ("ens4", "52:54:00:00:00:02", "0000:04:00.0"),
        ] {
            let device = dir.path().join("sys/devices/pci0000:00").join(slot);
            std::fs::create_dir_all(&device).unwrap();
            std::os::unix::fs::symlink("../../../bus/pci/drivers/igb", device.join("driver"))
                .unwrap();
            let class = dir.path().join("sys/class/net").join(nic);
            std::fs::create_dir_all(&class).unwrap();
            std::fs::write(class.join("address"), format!("{mac}\n")).unwrap();
            std::os::unix::fs::symlink(&device, class.join("device")).unwrap();
        }
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let ip = bin.join("ip");
        let log = dir.path().join("ip.log");
        std::fs::write(
            &ip,
            format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&ip, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let console = dir.path().join("console");
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let status = Command::new("dash")
            .arg(project().join("rootfs-overlay/common/usr/lib/applbuild/name-nic"))
            .args(args)
            .env("APPLBUILD_PATH", path)
            .env("APPLBUILD_SYS", dir.path().join("sys"))
            .env("APPLBUILD_CONSOLE", &console)
            .status()
            .unwrap();
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        (status.success(), read(&log), read(&console))
    }

    #[test]
    fn name_nic_renames_the_nic_by_mac_driver_or_pci_path() {
        for (args, expected) in [
            (
                &["eth0", "mac", "52:54:00:00:00:02"][..],
                "link set dev ens4 name eth0\n",
            ),
            (
                &["eth0", "driver", "igb"][..],
                "link set dev ens3 name eth0\n",
            ),
            // An earlier interface is named ens3 (the first igb NIC): the second NIC is taken.
            (
                &["eth1", "driver", "igb", "eth0", "ens3"][..],
                "link set dev ens4 name eth1\n",
            ),
            (
                &["eth1", "pci_path", "pci-0000:03:00.0"][..],
                "link set dev ens3 name eth1\n",
            ),
            (&["ens3", "mac", "52:54:00:00:00:01"][..], ""),
        ] {
            let (success, ip, console) = name_nic(args);
            assert!(success, "{args:?}: {console}");
            assert_eq!(ip, expected, "{args:?}");
            assert_eq!(console, "", "{args:?}");
        }
    }

    #[test]
    fn a_missing_nic_is_a_failure_line_not_a_hang() {
        let (success, ip, console) = name_nic(&["eth1", "mac", "52:54:00:00:00:09"]);
        assert!(!success);
        assert_eq!(ip, "");
        assert_eq!(
            failed_lines(&console),
            [
                "APPLBUILD-FAILED network: no NIC with mac 52:54:00:00:00:09 for eth1 (present: 52:54:00:00:00:01 52:54:00:00:00:02)"
            ],
            "{console}"
        );
        let (success, _, console) = name_nic(&["eth2", "driver", "ixgbe"]);
        assert!(!success);
        assert_eq!(
            failed_lines(&console),
            ["APPLBUILD-FAILED network: no NIC with driver ixgbe for eth2 (present: igb igb)"],
            "{console}"
        );
    }
}
