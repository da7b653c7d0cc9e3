//! S1–S5: the cluster as the article builds it by hand, checked on the
//! booted images (which do every step at boot, from their profiles).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};

use super::{Ctx, must, session_count, wait_all_paths_up, with_args};
use crate::waits::wait_for;

/// S1: tgtd serves the target with LUN 1 backed by the raw virtual disk,
/// on both portals (and with the profile's access control).
pub fn s1_storage_up(ctx: &mut Ctx) -> Result<()> {
    let target = ctx
        .cluster
        .storage
        .loaded
        .profile
        .target
        .clone()
        .expect("checked by Facts");
    let lun = &target.luns[0];
    let storage = &mut ctx.cluster.storage;
    let shown = must(storage, "tgtadm --lld iscsi --op show --mode target")?;
    ctx.keep("tgtadm show target", &shown);
    for expected in [
        format!("Target 1: {}", target.iqn),
        format!("LUN: {}", lun.lun),
        format!("Backing store path: {}", lun.backing_store),
        "Backing store type: rdwr".to_string(),
    ] {
        ensure!(
            shown.contains(&expected),
            "missing `{expected}` in:\n{shown}"
        );
    }
    if let Some(chap) = &target.chap {
        ensure!(
            shown.contains(&format!("Account information:\n        {}", chap.username))
                || shown.contains(&chap.username),
            "CHAP account {} not bound:\n{shown}",
            chap.username
        );
    }
    for name in &target.allowed_initiators {
        ensure!(shown.contains(name), "ACL lacks {name}:\n{shown}");
    }
    let size: u64 = must(
        &mut ctx.cluster.storage,
        &format!("blockdev --getsize64 {}", lun.backing_store),
    )?
    .trim()
    .parse()?;
    ensure!(
        size == ctx.facts.disk_bytes,
        "backing store is {size} bytes, the profile's disk {}",
        ctx.facts.disk_bytes
    );
    let raw = must(
        &mut ctx.cluster.storage,
        &format!("readlink -f {}", lun.backing_store),
    )?;
    ensure!(
        raw.trim().starts_with("/dev/vd"),
        "backing store is {raw}, not a virtio disk"
    );
    let portals = must(
        &mut ctx.cluster.storage,
        "tgtadm --lld iscsi --op show --mode portal",
    )?;
    for portal in &ctx.facts.portals.clone() {
        ensure!(
            portals.contains(&format!("Portal: {portal},1")),
            "tgtd does not listen on {portal}:\n{portals}"
        );
    }
    ctx.timing("lun_mib", (size >> 20) as f64);
    Ok(())
}

/// Parses `iscsiadm -m node -P 1` into (portal, iface) pairs of `target`.
pub fn node_records(text: &str, target: &str) -> BTreeSet<(String, String)> {
    let mut records = BTreeSet::new();
    let mut in_target = false;
    let mut portal = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("Target: ") {
            in_target = name.trim() == target;
        } else if let Some(p) = line.strip_prefix("Portal: ") {
            portal = p.split(',').next().unwrap_or(p).trim().to_string();
        } else if let Some(iface) = line.strip_prefix("Iface Name: ")
            && in_target
        {
            records.insert((portal.clone(), iface.trim().to_string()));
        }
    }
    records
}

/// S2: SendTargets discovery through each portal with both ifaces gives
/// portals × ifaces node records.
pub fn s2_discovery(ctx: &mut Ctx) -> Result<()> {
    let ifaces: String = ctx
        .facts
        .ifaces
        .iter()
        .map(|(name, _)| format!(" -I {name}"))
        .collect();
    let started = Instant::now();
    for portal in ctx.facts.portals.clone() {
        let output = must(
            &mut ctx.cluster.hypervisor,
            &format!("iscsiadm -m discovery -t sendtargets -p {portal}{ifaces}"),
        )?;
        ctx.keep(&format!("discovery through {portal}"), &output);
        ensure!(
            output.contains(&ctx.facts.target),
            "discovery through {portal} did not return {}:\n{output}",
            ctx.facts.target
        );
    }
    ctx.timing("discovery_s", started.elapsed().as_secs_f64());
    let listing = must(&mut ctx.cluster.hypervisor, "iscsiadm -m node -P 1")?;
    ctx.keep("iscsiadm -m node -P 1", &listing);
    let records = node_records(&listing, &ctx.facts.target);
    let expected: BTreeSet<(String, String)> = ctx
        .facts
        .portals
        .iter()
        .flat_map(|portal| {
            ctx.facts
                .ifaces
                .iter()
                .map(move |(iface, _)| (portal.clone(), iface.clone()))
        })
        .collect();
    ensure!(
        records == expected,
        "node records {records:?}, expected {expected:?}"
    );
    ctx.timing("node_records", records.len() as f64);
    Ok(())
}

/// The WWID of each SCSI disk: `scsi_id` when present, else sysfs.
const DISK_WWIDS: &str = include_str!("../../scripts/scenario-disk-wwids.sh");

/// S3: the sessions are logged in (the image does it at boot): one per
/// (portal, iface), and as many SCSI disks, all with the profile's WWID.
pub fn s3_login(ctx: &mut Ctx) -> Result<()> {
    let expected = ctx.facts.paths();
    let target = ctx.facts.target.clone();
    let started = Instant::now();
    let timeout = ctx.secs(60);
    let node = &mut ctx.cluster.hypervisor;
    let sessions = wait_for(timeout, Duration::from_millis(500), || {
        session_count(node, &target).ok().filter(|n| *n == expected)
    });
    let listing = must(node, "iscsiadm -m session 2>&1 || true")?;
    ctx.keep("iscsiadm -m session", &listing);
    if sessions.is_none() {
        bail!("not {expected} sessions within {timeout:?}:\n{listing}");
    }
    ctx.timing("sessions_wait_s", started.elapsed().as_secs_f64());
    ctx.timing("sessions", expected as f64);
    let wwid = ctx.facts.wwid.clone();
    let node = &mut ctx.cluster.hypervisor;
    let disks = wait_for(timeout, Duration::from_millis(500), || {
        let text = must(node, DISK_WWIDS).ok()?;
        let matching = text
            .lines()
            .filter(|line| line.split_whitespace().nth(1) == Some(wwid.as_str()))
            .count();
        (matching == expected).then_some(text)
    });
    let Some(disks) = disks else {
        let text = must(&mut ctx.cluster.hypervisor, DISK_WWIDS)?;
        bail!("expected {expected} SCSI disks with WWID {wwid}, found:\n{text}");
    };
    ctx.keep("disks", &disks);
    let others: Vec<&str> = disks
        .lines()
        .filter(|line| line.split_whitespace().nth(1) != Some(wwid.as_str()))
        .collect();
    ensure!(others.is_empty(), "unexpected SCSI disks: {others:?}");
    for line in disks.lines() {
        let sectors: u64 = line
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        ensure!(
            sectors * 512 == ctx.facts.disk_bytes,
            "disk {line} is not {} bytes",
            ctx.facts.disk_bytes
        );
    }
    Ok(())
}

/// S4: one map named by the alias, with every path active/ready and the
/// backing store's size.
pub fn s4_multipath(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let timeout = ctx.secs(60);
    let seconds = wait_all_paths_up(ctx, started, timeout)?;
    ctx.timing("paths_wait_s", seconds);
    let hypervisor = &mut ctx.cluster.hypervisor;
    let maps = must(
        hypervisor,
        r#"multipathd show maps raw format "%n %w %N %S""#,
    )?;
    let topology = must(hypervisor, "multipath -ll 2>&1")?;
    ctx.keep("multipath -ll", &topology);
    let lines: Vec<&str> = maps.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "expected one map, got:\n{maps}");
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    ensure!(
        fields.len() >= 3
            && fields[0] == ctx.facts.alias
            && fields[1] == ctx.facts.wwid
            && fields[2] == ctx.facts.paths().to_string(),
        "map is `{}`, expected `{} {} {} …`",
        lines[0],
        ctx.facts.alias,
        ctx.facts.wwid,
        ctx.facts.paths()
    );
    let size: u64 = must(
        &mut ctx.cluster.hypervisor,
        &format!("blockdev --getsize64 /dev/mapper/{}", ctx.facts.alias),
    )?
    .trim()
    .parse()?;
    ensure!(
        size == ctx.facts.disk_bytes,
        "/dev/mapper/{} is {size} bytes, the backing store {}",
        ctx.facts.alias,
        ctx.facts.disk_bytes
    );
    ctx.timing("map_paths", ctx.facts.paths() as f64);
    Ok(())
}

/// The stand-in for a guest NIC on br0: a veth pair whose far end sits in a
/// network namespace with its own address on the bridge's subnet.
pub const VM_NS: &str = "vm1";
/// The "guest" address in [`VM_NS`].
pub const VM_IP: &str = "192.0.2.31";

/// Creates the namespace and its veth port on br0 unless they exist.
const VM_NIC: &str = include_str!("../../scripts/scenario-vm-nic.sh");

/// Makes sure [`VM_NS`] and its NIC on br0 exist.
pub fn ensure_vm_nic(ctx: &mut Ctx) -> Result<()> {
    let command = with_args(VM_NIC, &[VM_NS, &format!("{VM_IP}/24")]);
    must(&mut ctx.cluster.hypervisor, &command)?;
    Ok(())
}

/// S5: br0 holds eth0 and the node's address; the storage node and the
/// hypervisor reach a VM NIC on br0.
pub fn s5_bridge(ctx: &mut Ctx) -> Result<()> {
    let hypervisor = &mut ctx.cluster.hypervisor;
    let ports = must(hypervisor, "ip -o link show master br0")?;
    ensure!(
        ports.contains(" eth0:"),
        "eth0 is not a port of br0:\n{ports}"
    );
    let address = must(hypervisor, "ip -o -4 addr show dev br0")?;
    ensure!(
        address.contains(&format!("{}/24", ctx.facts.hypervisor_bridge_ip)),
        "br0 lacks {}:\n{address}",
        ctx.facts.hypervisor_bridge_ip
    );
    ensure_vm_nic(ctx)?;
    let started = Instant::now();
    let timeout = ctx.secs(30);
    let storage = &mut ctx.cluster.storage;
    // The first ping may wait for ARP: poll until one gets through. The
    // storage node and the hypervisor ping the VM NIC: from a guest port,
    // the guest filter drops what goes to them (S15).
    let reached = wait_for(timeout, Duration::from_millis(200), || {
        storage
            .exec(&format!("ping -c 1 -W 2 {VM_IP}"), Duration::from_secs(10))
            .ok()
            .filter(|o| o.success())
    });
    ensure!(
        reached.is_some(),
        "the storage node never reached the VM NIC ({VM_IP})"
    );
    ctx.timing("first_ping_s", started.elapsed().as_secs_f64());
    let to_vm = must(&mut ctx.cluster.storage, &format!("ping -c 3 -W 2 {VM_IP}"))?;
    ctx.keep("pings from the storage node", &to_vm);
    let from_node = must(
        &mut ctx.cluster.hypervisor,
        &format!("ping -c 2 -W 2 {VM_IP}"),
    )?;
    ctx.keep("pings from the hypervisor", &from_node);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_records_pair_portals_and_ifaces() {
        let text = "Target: iqn.t\n\tPortal: 192.0.2.10:3260,1\n\t\tIface Name: ibr0\n\t\tIface Name: ieth1\n\tPortal: 198.51.100.10:3260,1\n\t\tIface Name: ibr0\nTarget: iqn.other\n\tPortal: 10.0.0.1:3260,1\n\t\tIface Name: default\n";
        let records = node_records(text, "iqn.t");
        assert_eq!(records.len(), 3);
        assert!(records.contains(&("198.51.100.10:3260".into(), "ibr0".into())));
    }
}
