//! S6: the guest VM on the multipath disk, and the helper the later
//! scenarios use to make sure it runs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::{Ctx, must, wait_all_paths_up};
use crate::guest::{self, Guest, GuestAccel};
use crate::waits::wait_for;

/// Installs the guest image onto the map with the node's `applbuild-vm
/// install`, checks the copy against the image's manifest, and waits for
/// the node to start the VM; records the timings.
fn install_and_boot(ctx: &mut Ctx) -> Result<()> {
    ctx.cluster.guest = None;
    let alias = ctx.facts.alias.clone();
    let console_from = guest::console_len(&mut ctx.cluster.hypervisor)?;
    let installed = guest::install(&mut ctx.cluster.hypervisor, &alias)?;
    ctx.timing("install_s", installed.seconds);
    let (image_sha256, _) = image_sha256(ctx)?;
    ensure!(
        installed.sha256 == image_sha256,
        "the map holds {} after the install, the guest image is {image_sha256}",
        installed.sha256
    );
    let scale = ctx.cluster.scale();
    let loaded = ctx.cluster.guest_profile.clone();
    let guest = Guest::wait_started(&mut ctx.cluster.hypervisor, &loaded, console_from, scale)?;
    ctx.timing("guest_boot_to_ready_s", guest.boot_to_ready_s);
    ctx.timing(
        "guest_kvm",
        if guest.accel == GuestAccel::Kvm {
            1.0
        } else {
            0.0
        },
    );
    ctx.notes.push(format!(
        "guest runs under {:?} inside the hypervisor node",
        guest.accel
    ));
    ctx.cluster.guest = Some(guest);
    Ok(())
}

/// Makes sure the guest VM runs and answers (S7–S12 need it), installing
/// and booting it as S6 does when it does not.
pub fn ensure_guest(ctx: &mut Ctx) -> Result<()> {
    if ctx.cluster.guest.is_some() && ctx.cluster.guest_sh("true").is_ok() {
        return Ok(());
    }
    install_and_boot(ctx).context("starting the guest VM (as S6 does)")
}

/// S6: the guest's UEFI disk image is installed onto `/dev/mapper/<alias>`
/// with `applbuild-vm install`; the node starts its VM `guest` by itself
/// (hypervisor.toml's [[vms]]), OVMF boots the map, the VM's NIC is on br0;
/// the guest sees the LUN as its disk and reaches both nodes over the
/// bridge.
pub fn s6_vm_on_multipath_disk(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let timeout = ctx.secs(60);
    wait_all_paths_up(ctx, started, timeout)?;
    install_and_boot(ctx)?;

    // The node runs it as the profile says: its service, its QMP socket.
    let listed = must(
        &mut ctx.cluster.hypervisor,
        &format!(
            "applbuild-vm list; test -S {}/qmp.sock && echo qmp-socket",
            guest::RUN_DIR
        ),
    )?;
    ctx.keep("applbuild-vm list", &listed);
    ensure!(
        listed
            .lines()
            .any(|line| line.starts_with(guest::GUEST) && line.contains(" running ")),
        "the node does not list its VM as running:\n{listed}"
    );
    ensure!(listed.contains("qmp-socket"), "no QMP socket:\n{listed}");
    let booted = ctx
        .cluster
        .guest_sh("test -d /sys/firmware/efi && echo uefi")?;
    ensure!(
        booted.contains("uefi"),
        "the guest did not boot through UEFI: {booted}"
    );

    // The guest's disk is the whole LUN, its data partition is there.
    let disk = ctx.cluster.guest_sh(&format!(
        "cat /sys/block/vda/size; test -b /dev/vda{} && echo data-partition",
        guest::DATA_PARTITION
    ))?;
    ctx.keep("guest disk", &disk);
    let sectors: u64 = disk
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .context("no size of the guest's vda")?;
    ensure!(
        sectors * 512 == ctx.facts.disk_bytes,
        "the guest's vda has {} bytes, the LUN {}",
        sectors * 512,
        ctx.facts.disk_bytes
    );
    ensure!(
        disk.contains("data-partition"),
        "no /dev/vda{} in the guest",
        guest::DATA_PARTITION
    );

    check_guest_network(ctx)
}

/// The guest's NIC is a port of br0; both nodes reach it, and the guest
/// filter keeps it off the portal (S15 proves the filter in full).
fn check_guest_network(ctx: &mut Ctx) -> Result<()> {
    let ports = must(&mut ctx.cluster.hypervisor, "ip -o link show master br0")?;
    ensure!(
        ports.contains(" vm0n0"),
        "the guest's tap is not on br0:\n{ports}"
    );
    let guest_ip = ctx.cluster.guest.as_ref().expect("booted").ip.clone();
    let started = Instant::now();
    let timeout = ctx.secs(30);
    let storage = &mut ctx.cluster.storage;
    let reached = wait_for(timeout, Duration::from_millis(500), || {
        storage
            .exec(
                &format!("ping -c 1 -W 2 {guest_ip}"),
                Duration::from_secs(10),
            )
            .ok()
            .filter(|output| output.success())
    });
    ensure!(
        reached.is_some(),
        "the storage node never reached the guest {guest_ip}"
    );
    ctx.timing("first_ping_s", started.elapsed().as_secs_f64());
    let pings = must(
        &mut ctx.cluster.hypervisor,
        &format!("ping -c 2 -W 2 {guest_ip}"),
    )?;
    ctx.keep("the hypervisor pings the guest", &pings);
    let portal = ctx.facts.portals[0].clone();
    let (address, port) = portal
        .rsplit_once(':')
        .context("a portal is ADDRESS:PORT")?;
    // BusyBox nc has no -z: with stdin at its end it exits 1 when the
    // connect fails ("timed out" after -w: the filter dropped the SYN).
    let connect = ctx.cluster.guest_exec(
        &format!("nc -w 3 {address} {port} </dev/null 2>&1"),
        Duration::from_secs(20),
    )?;
    ctx.keep("the guest connects to the portal", &connect.stdout);
    ensure!(
        connect.exit_code == 1 && connect.stdout.contains("timed out"),
        "the guest's connect to the portal {address}:{port} did not time out ({}): {}",
        connect.exit_code,
        connect.stdout
    );
    Ok(())
}

/// The guest disk image's SHA256 and size, from its manifest.
fn image_sha256(ctx: &Ctx) -> Result<(String, u64)> {
    let manifest = ctx.cluster.images.join(guest::GUEST);
    let manifest = applbuild_image::manifest::Manifest::read(&manifest)
        .with_context(|| format!("no manifest in {}", manifest.display()))?;
    let file = format!("{}.img", guest::GUEST);
    let artifact = manifest
        .artifacts
        .iter()
        .find(|artifact| artifact.file == file)
        .with_context(|| format!("the guest manifest lists no {file}"))?;
    Ok((artifact.sha256.clone(), artifact.size))
}

/// S17: the VM's QEMU is killed; the node starts it again by itself (its
/// restart policy, `on-failure`), counts the restart, and the guest answers.
pub fn s17_vm_restarted(ctx: &mut Ctx) -> Result<()> {
    ensure_guest(ctx)?;
    let old_pid = ctx.cluster.guest.as_ref().expect("ensured").qemu_pid;
    let before = guest::status(&mut ctx.cluster.hypervisor)?.restarts;
    let console_from = guest::console_len(&mut ctx.cluster.hypervisor)?;
    must(&mut ctx.cluster.hypervisor, &format!("kill -9 {old_pid}"))?;
    ctx.cluster.guest = None;
    let started = Instant::now();
    let scale = ctx.cluster.scale();
    let loaded = ctx.cluster.guest_profile.clone();
    let guest = Guest::wait_started(&mut ctx.cluster.hypervisor, &loaded, console_from, scale)
        .context("the VM after its QEMU was killed")?;
    ctx.timing("kill_to_guest_ready_s", started.elapsed().as_secs_f64());
    let new_pid = guest.qemu_pid;
    ctx.cluster.guest = Some(guest);
    ensure!(
        new_pid != old_pid,
        "the VM still runs in the killed QEMU {old_pid}"
    );
    let after = guest::status(&mut ctx.cluster.hypervisor)?.restarts;
    ensure!(
        after == before + 1,
        "the node counts {after} restarts after one kill, {before} before"
    );
    let listed = must(&mut ctx.cluster.hypervisor, "applbuild-vm list")?;
    ctx.keep("applbuild-vm list after the restart", &listed);
    Ok(())
}
