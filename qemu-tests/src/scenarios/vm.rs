//! S6: the guest VM on the multipath disk, and the helper the later
//! scenarios use to make sure it runs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::{Ctx, must, wait_all_paths_up};
use crate::guest::{self, Guest, GuestAccel};
use crate::waits::wait_for;

/// Installs the guest image on the map and boots it; records the timings.
fn install_and_boot(ctx: &mut Ctx) -> Result<()> {
    ctx.cluster.guest = None;
    guest::stop(&mut ctx.cluster.hypervisor)?;
    let alias = ctx.facts.alias.clone();
    let install = guest::install(&mut ctx.cluster.hypervisor, &alias)?;
    ctx.timing("install_s", install);
    let scale = ctx.cluster.scale();
    let loaded = ctx.cluster.guest_profile.clone();
    let guest = Guest::boot(&mut ctx.cluster.hypervisor, &loaded, &alias, scale)?;
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

/// S6: the guest image is written onto `/dev/mapper/<alias>`, QEMU in the
/// hypervisor node boots it from the map's partitions with the whole map as
/// its disk and its NIC on br0; the guest sees the LUN as its disk and
/// reaches both nodes over the bridge.
pub fn s6_vm_on_multipath_disk(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let timeout = ctx.secs(60);
    wait_all_paths_up(ctx, started, timeout)?;
    install_and_boot(ctx)?;
    let alias = ctx.facts.alias.clone();

    // Installed on the map: partition 1 holds the guest's kernel.
    let expected = kernel_sha256(ctx)?;
    let on_map = must(
        &mut ctx.cluster.hypervisor,
        &format!(
            "head -c {} {} | sha256sum",
            expected.1,
            guest::map_partition(&alias, 1)
        ),
    )?;
    ensure!(
        on_map.starts_with(&expected.0),
        "partition 1 of the map does not hold the guest's kernel: {on_map}"
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
        ports.contains(" vm0"),
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

/// The guest kernel's SHA256 and size, from its image's manifest.
fn kernel_sha256(ctx: &Ctx) -> Result<(String, u64)> {
    let manifest = ctx.cluster.images.join(guest::GUEST);
    let manifest = applbuild_image::manifest::Manifest::read(&manifest)
        .with_context(|| format!("no manifest in {}", manifest.display()))?;
    let artifact = manifest
        .artifacts
        .iter()
        .find(|artifact| artifact.file == "vmlinuz")
        .context("the guest manifest lists no vmlinuz")?;
    Ok((artifact.sha256.clone(), artifact.size))
}
