//! S13 (CHAP and the initiator ACL) and S14 (the hypervisor reboots, logs
//! in again and starts its VM by itself).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::{Ctx, ensure_all_sessions, io, must, wait_all_paths_up, with_args};
use crate::guest::{self, Guest};

/// An IQN outside the storage node's ACL.
const FOREIGN_IQN: &str = "iqn.2012-09.com.example:intruder";

/// Creates a throw-away iface and its node record, with updates.
const LOGIN_SETUP: &str = include_str!("../../scripts/scenario-login-setup.sh");

/// Logs out and removes what [`LOGIN_SETUP`] made.
const LOGIN_CLEANUP: &str = include_str!("../../scripts/scenario-login-cleanup.sh");

/// Tries one login through a throw-away iface bound to br0, with `setup`
/// applied to its iface and node record; returns iscsiadm's exit code and
/// output. The iface and its records are removed afterwards.
fn try_login(
    ctx: &mut Ctx,
    iface: &str,
    iface_updates: &[(&str, &str)],
    node_updates: &[(&str, &str)],
) -> Result<(i32, String)> {
    let target = ctx.facts.target.clone();
    let portal = ctx.facts.portals[0].clone();
    let record = [target.as_str(), portal.as_str(), iface];
    let mut setup_args = record.to_vec();
    for (kind, updates) in [("iface", iface_updates), ("node", node_updates)] {
        for (key, value) in updates {
            setup_args.extend([kind, key, value]);
        }
    }
    let setup = ctx.cluster.hypervisor.exec(
        &with_args(LOGIN_SETUP, &setup_args),
        Duration::from_secs(30),
    )?;
    let login = if setup.success() {
        Some(ctx.cluster.hypervisor.exec(
            &format!("iscsiadm -m node -T {target} -p {portal} -I {iface} --login 2>&1"),
            Duration::from_secs(60),
        )?)
    } else {
        None
    };
    // Whatever happened: log out (should there be a session) and clean up.
    let _ = ctx
        .cluster
        .hypervisor
        .exec(&with_args(LOGIN_CLEANUP, &record), Duration::from_secs(30));
    match login {
        Some(output) => Ok((output.exit_code, output.stdout)),
        None => bail!(
            "setting up iface {iface} failed ({}): {}{}",
            setup.exit_code,
            setup.stdout,
            setup.stderr
        ),
    }
}

/// The CHAP credentials of S13's logins: user names from the storage
/// profile, secrets from the store the images were built with.
struct Credentials {
    username: String,
    secret: String,
    mutual_username: String,
    mutual_secret: String,
}

impl Credentials {
    /// The node-record settings of a login with these credentials, the
    /// target's secret replaced by `mutual_secret` when given.
    fn node_updates<'a>(&'a self, mutual_secret: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
        vec![
            ("node.session.auth.authmethod", "CHAP"),
            ("node.session.auth.username", &self.username),
            ("node.session.auth.password", &self.secret),
            ("node.session.auth.username_in", &self.mutual_username),
            (
                "node.session.auth.password_in",
                mutual_secret.unwrap_or(&self.mutual_secret),
            ),
        ]
    }
}

/// Reads S13's credentials off the storage profile and the secrets store.
fn credentials(ctx: &Ctx, target: &applbuild::profile::Target) -> Result<Credentials> {
    let chap = target
        .chap
        .as_ref()
        .context("storage profile has no [target.chap]: access control is not configured")?;
    let mutual = target
        .mutual_chap
        .as_ref()
        .context("storage profile has no [target.mutual_chap]: mutual CHAP is not configured")?;
    let secrets = &ctx.cluster.secrets;
    let value = |name: &str| {
        secrets
            .get(name)
            .map(String::from)
            .with_context(|| format!("secret `{name}` is not in {}", secrets.path().display()))
    };
    Ok(Credentials {
        username: chap.username.clone(),
        secret: value(&chap.secret.name)?,
        mutual_username: mutual.username.clone(),
        mutual_secret: value(&mutual.secret.name)?,
    })
}

/// S13: with CHAP, mutual CHAP and an initiator ACL on the target, the
/// profile's initiator is logged in (with CHAP), a login with the store's
/// secrets succeeds, while a foreign IQN, a wrong secret and a target
/// answering with a wrong mutual secret are refused.
pub fn s13_access_control(ctx: &mut Ctx) -> Result<()> {
    let target_profile = ctx
        .cluster
        .storage
        .loaded
        .profile
        .target
        .clone()
        .context("no [target]")?;
    let credentials = credentials(ctx, &target_profile)?;
    ensure!(
        !target_profile.allowed_initiators.is_empty(),
        "storage profile has no allowed_initiators"
    );
    let shown = must(
        &mut ctx.cluster.storage,
        "tgtadm --lld iscsi --op show --mode target",
    )?;
    ctx.keep("tgtadm show target", &shown);
    for username in [&credentials.username, &credentials.mutual_username] {
        ensure!(
            shown.contains(username.as_str()),
            "tgtd has no CHAP account {username}:\n{shown}"
        );
    }
    for name in &target_profile.allowed_initiators {
        ensure!(shown.contains(name), "tgtd's ACL lacks {name}:\n{shown}");
    }
    check_chap_login(ctx, &credentials.username)?;
    check_store_login(ctx, &credentials)?;
    check_refused_logins(ctx, &credentials)
}

/// A throw-away node record with the store's secrets (both directions)
/// logs in: the images were built with that store.
fn check_store_login(ctx: &mut Ctx, credentials: &Credentials) -> Result<()> {
    let (code, output) = try_login(ctx, "istore", &[], &credentials.node_updates(None))?;
    ctx.keep("login with the store's secrets", &output);
    ensure!(
        code == 0,
        "a login with the secrets of {} failed ({code}):\n{output}",
        ctx.cluster.secrets.path().display()
    );
    Ok(())
}

/// The profile's initiator is logged in on every path, with CHAP as
/// `username`.
fn check_chap_login(ctx: &mut Ctx, username: &str) -> Result<()> {
    let started = Instant::now();
    let timeout = ctx.secs(60);
    wait_all_paths_up(ctx, started, timeout)?;
    ensure_all_sessions(ctx)?;
    let target = ctx.facts.target.clone();
    let (iface, _) = ctx.facts.ifaces[0].clone();
    let record = must(
        &mut ctx.cluster.hypervisor,
        &format!(
            "iscsiadm -m node -T {target} -p {} -I {iface} | grep -E '^node.session.auth.(authmethod|username) '",
            ctx.facts.portals[0]
        ),
    )?;
    ensure!(
        record.contains("= CHAP") && record.contains(username),
        "the node record does not use CHAP:\n{record}"
    );
    Ok(())
}

/// A foreign initiator name, a wrong secret and a target answering with a
/// wrong mutual secret are refused, and the sessions stay as they were.
fn check_refused_logins(ctx: &mut Ctx, credentials: &Credentials) -> Result<()> {
    // An initiator name outside the ACL, with the right secret.
    let started = Instant::now();
    let (code, output) = try_login(
        ctx,
        "iforeign",
        &[("iface.initiatorname", FOREIGN_IQN)],
        &[],
    )?;
    ctx.keep("login as a foreign IQN", &output);
    ctx.timing("foreign_refused_s", started.elapsed().as_secs_f64());
    ensure!(code != 0, "a login as {FOREIGN_IQN} succeeded:\n{output}");
    // The profile's initiator name with a wrong secret.
    let started = Instant::now();
    let (code, output) = try_login(
        ctx,
        "iwrong",
        &[],
        &[
            ("node.session.auth.authmethod", "CHAP"),
            ("node.session.auth.username", &credentials.username),
            ("node.session.auth.password", "not-the-secret1"),
        ],
    )?;
    ctx.keep("login with a wrong secret", &output);
    ctx.timing("wrong_secret_refused_s", started.elapsed().as_secs_f64());
    ensure!(
        code != 0,
        "a login with a wrong secret succeeded:\n{output}"
    );
    // The target's answer checked against another mutual secret: the
    // initiator must refuse a target it cannot authenticate.
    let started = Instant::now();
    let wrong_mutual = credentials.node_updates(Some("not-the-mutual-secret1"));
    let (code, output) = try_login(ctx, "imutual", &[], &wrong_mutual)?;
    ctx.keep("login expecting a wrong mutual secret", &output);
    ctx.timing("wrong_mutual_refused_s", started.elapsed().as_secs_f64());
    ensure!(
        code != 0,
        "a target with the wrong mutual secret was accepted:\n{output}"
    );
    ensure_all_sessions(ctx).context("after the refused logins")
}

/// The seed of the stream S14 leaves on the guest's data partition.
const REBOOT_SEED: u64 = 14;

/// S14: the hypervisor is power-cycled (its shutdown powers the VM down
/// through ACPI; then a new QEMU process with the same NICs) and comes back
/// with its sessions and the aliased map, and starts its VM again, with no
/// step from outside; the VM's data partition holds what it wrote before.
pub fn s14_reboot(ctx: &mut Ctx) -> Result<()> {
    let stream = io::pattern(ctx, REBOOT_SEED)?;
    let device = io::guest_data_device();
    ctx.cluster.guest_sh(&format!(
        "dd if={} of={device} bs=1M oflag=direct conv=fsync 2>&1",
        stream.file
    ))?;
    // The VM goes down with its host: its console is no longer read.
    ctx.cluster.guest = None;
    let timeout = ctx.secs(90);
    let started = Instant::now();
    let ready = ctx.cluster.hypervisor.power_cycle(timeout)?;
    ctx.timing("reboot_to_ready_s", ready);
    let shutdown = &ctx.cluster.hypervisor.previous_console;
    let powered_down = format!("vm {}: powered down", guest::GUEST);
    ensure!(
        shutdown.contains(&powered_down),
        "the node's shutdown did not power its VM down (no `{powered_down}` on its console):\n{}",
        tail(shutdown, 20)
    );
    let timeout = ctx.secs(90);
    let paths = wait_all_paths_up(ctx, started, timeout)?;
    ctx.timing("reboot_to_paths_s", paths);
    ensure_all_sessions(ctx).context("after the reboot")?;
    let maps = must(
        &mut ctx.cluster.hypervisor,
        r#"multipathd show maps raw format "%n %N""#,
    )?;
    ensure!(
        maps.lines()
            .any(|l| l.split_whitespace().next() == Some(ctx.facts.alias.as_str())),
        "no map {} after the reboot:\n{maps}",
        ctx.facts.alias
    );
    vm_started_again(ctx, started, &stream.sha256)
}

/// After the reboot the node starts the VM by itself (its console log
/// starts empty with the node's /run) and the data partition verifies.
fn vm_started_again(ctx: &mut Ctx, since: Instant, sha256: &str) -> Result<()> {
    let scale = ctx.cluster.scale();
    let loaded = ctx.cluster.guest_profile.clone();
    let guest = Guest::wait_started(&mut ctx.cluster.hypervisor, &loaded, 0, scale)
        .context("the VM after the node's reboot")?;
    ctx.timing("reboot_to_guest_ready_s", since.elapsed().as_secs_f64());
    ctx.cluster.guest = Some(guest);
    let device = io::guest_data_device();
    let read = ctx.cluster.guest_sh(&format!(
        "dd if={device} bs=1M count={} iflag=direct 2>/dev/null | sha256sum",
        io::PATTERN_MIB
    ))?;
    ensure!(
        read.split_whitespace().next() == Some(sha256),
        "after the reboot the guest's {device} reads {read}, it wrote {sha256} before"
    );
    Ok(())
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
