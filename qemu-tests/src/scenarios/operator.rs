//! S16: operator access. From the hypervisor node, `dbclient` logs in as
//! root to both nodes with the test harness's key, each node's host key
//! pinned to the one derived from the secrets store; a key that is not
//! authorized is refused; a guest port on br0 cannot reach the node's SSH;
//! root's console password on both nodes is the one in the store.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use applbuild::profile::Profile;
use applbuild_secrets::ssh::{KeyPurpose, SshKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::basic::{VM_NS, ensure_vm_nic};
use super::{Ctx, with_args};

/// Logs in to each address with a key and a wrong key.
const SSH: &str = include_str!("../../scripts/scenario-ssh.sh");

/// Whether a password is root's console password on a node.
const CONSOLE_PASSWORD: &str = include_str!("../../scripts/scenario-console-password.sh");

/// One node to log in to.
struct SshNode {
    address: String,
    hostname: String,
    known_host: String,
}

/// What [`SSH`] says about one address.
#[derive(Debug, Default, PartialEq, Eq)]
struct LoginOutcome {
    /// The host name the login printed, or why it failed.
    login: Option<Result<String, String>>,
    /// Whether the wrong key was refused.
    wrong_key_refused: Option<bool>,
}

/// Parses [`SSH`]'s lines for `address`.
fn outcome(text: &str, address: &str) -> LoginOutcome {
    let mut outcome = LoginOutcome::default();
    for line in text.lines() {
        let mut words = line.splitn(4, ' ');
        let (Some(kind), Some(at), Some(state)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if at != address {
            continue;
        }
        let rest = words.next().unwrap_or_default().to_string();
        match (kind, state) {
            ("login", "ok") => outcome.login = Some(Ok(rest)),
            ("login", _) => outcome.login = Some(Err(format!("{state} {rest}"))),
            ("wrong-key", state) => outcome.wrong_key_refused = Some(state == "refused"),
            _ => {}
        }
    }
    outcome
}

/// The node at `address` with `profile`'s host name and host key.
fn ssh_node(ctx: &Ctx, profile: &Profile, address: &str) -> Result<SshNode> {
    let key = applbuild::ssh::host_key(profile, &ctx.cluster.secrets)
        .context("a node profile without [ssh], or its host key secret is not in the store")?;
    // dbclient reads a known_hosts line to its end as the key: no comment.
    Ok(SshNode {
        address: address.to_string(),
        hostname: profile.hostname.clone().unwrap_or_default(),
        known_host: format!("{address} {}", key.public_line("")),
    })
}

/// The test harness's key and a key no node authorizes, derived from the
/// host key secret of `profile`.
fn client_keys(ctx: &Ctx, profile: &Profile) -> Result<(SshKey, SshKey)> {
    let ssh = profile.ssh.as_ref().context("no [ssh] in the profile")?;
    let name = &ssh.host_key_secret.name;
    let value = ctx.cluster.secrets.get(name).with_context(|| {
        format!(
            "secret `{name}` is not in {}",
            ctx.cluster.secrets.path().display()
        )
    })?;
    let harness = applbuild::ssh::test_harness_key(value);
    let stranger = SshKey::derive(value, KeyPurpose::TestHarnessClient, "a stranger");
    Ok((harness, stranger))
}

/// S16: both nodes let the harness in over SSH with their pinned host
/// keys, refuse a stranger's key, and a guest port cannot reach SSH.
pub fn s16_operator_access(ctx: &mut Ctx) -> Result<()> {
    let storage = ctx.cluster.storage.loaded.profile.clone();
    let hypervisor = ctx.cluster.hypervisor.loaded.profile.clone();
    let storage_address = ctx.facts.portals[0]
        .rsplit_once(':')
        .context("a portal is ADDRESS:PORT")?
        .0
        .to_string();
    let nodes = [
        ssh_node(ctx, &storage, &storage_address)?,
        ssh_node(ctx, &hypervisor, &ctx.facts.hypervisor_bridge_ip)?,
    ];
    let (harness, stranger) = client_keys(ctx, &hypervisor)?;
    let known_hosts: String = nodes
        .iter()
        .map(|n| format!("{}\n", n.known_host))
        .collect();
    let mut args = vec![
        STANDARD.encode(harness.dropbear_private_key()),
        STANDARD.encode(stranger.dropbear_private_key()),
        STANDARD.encode(known_hosts),
    ];
    args.extend(nodes.iter().map(|node| node.address.clone()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = ctx
        .cluster
        .hypervisor
        .exec(&with_args(SSH, &args), Duration::from_secs(300))?;
    ctx.keep("dbclient logins", &output.stdout);
    for node in &nodes {
        let seen = outcome(&output.stdout, &node.address);
        let address = &node.address;
        match seen.login {
            Some(Ok(name)) => ensure!(
                name == node.hostname,
                "the login to {address} ran on `{name}`, not {}",
                node.hostname
            ),
            Some(Err(why)) => anyhow::bail!("the harness could not log in to {address}: {why}"),
            None => anyhow::bail!("no login line for {address}:\n{}", output.stdout),
        }
        ensure!(
            seen.wrong_key_refused == Some(true),
            "{address} let in a key it does not authorize:\n{}",
            output.stdout
        );
    }
    check_guest_cannot_reach_ssh(ctx)?;
    check_console_passwords(ctx)
}

/// On both nodes, root's console password is the store's and a wrong one
/// is not.
fn check_console_passwords(ctx: &mut Ctx) -> Result<()> {
    let profile = &ctx.cluster.storage.loaded.profile;
    let console = profile
        .console
        .as_ref()
        .context("no [console] in the profile")?;
    let name = &console.root_password_secret.name;
    let password = ctx
        .cluster
        .secrets
        .get(name)
        .with_context(|| format!("secret `{name}` is not in the store"))?
        .to_string();
    let wrong = format!("{password}-wrong");
    for node in [&mut ctx.cluster.storage, &mut ctx.cluster.hypervisor] {
        for (candidate, expected) in [(&password, "match"), (&wrong, "mismatch")] {
            let said = node.sh(&with_args(CONSOLE_PASSWORD, &[candidate]))?;
            ensure!(
                said.trim() == expected,
                "{}: the console password check said `{}`, expected {expected}",
                node.name,
                said.trim()
            );
        }
    }
    Ok(())
}

/// From netns `vm1` on br0, TCP to the node's SSH port fails.
fn check_guest_cannot_reach_ssh(ctx: &mut Ctx) -> Result<()> {
    ensure_vm_nic(ctx)?;
    let port = ctx
        .cluster
        .hypervisor
        .loaded
        .profile
        .ssh
        .as_ref()
        .map_or(22, |s| s.port);
    let address = ctx.facts.hypervisor_bridge_ip.clone();
    // BusyBox nc exits 1 when the connect fails or times out (-w).
    let output = ctx.cluster.hypervisor.exec(
        &format!("ip netns exec {VM_NS} timeout 10 nc -w 3 {address} {port} </dev/null 2>&1"),
        Duration::from_secs(30),
    )?;
    ctx.keep("a guest port connects to the node's SSH", &output.stdout);
    ensure!(
        output.exit_code == 1 && !output.stdout.contains("SSH-"),
        "a guest port reached the node's SSH at {address}:{port} ({}): {}",
        output.exit_code,
        output.stdout
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_lines_parse_per_address() {
        let text = "login 192.0.2.10 ok neptune\nwrong-key 192.0.2.10 refused\nlogin 192.0.2.20 failed 255: Host key mismatch\nwrong-key 192.0.2.20 accepted\n";
        assert_eq!(
            outcome(text, "192.0.2.10"),
            LoginOutcome {
                login: Some(Ok("neptune".into())),
                wrong_key_refused: Some(true),
            }
        );
        assert_eq!(
            outcome(text, "192.0.2.20"),
            LoginOutcome {
                login: Some(Err("failed 255: Host key mismatch".into())),
                wrong_key_refused: Some(false),
            }
        );
        assert_eq!(outcome(text, "192.0.2.30"), LoginOutcome::default());
    }
}
