//! S15: guests kept off the SAN. A guest NIC on br0 (the veth stand-in of
//! S5, and a second one) reaches neither portal nor the hypervisor node,
//! while the node itself keeps its paths and the guests reach each other.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use base64::Engine;

use super::basic::{VM_IP, VM_NS, ensure_vm_nic};
use super::{Ctx, ensure_all_sessions, must, wait_all_paths_up, with_args};

/// The second guest NIC's namespace: the guest the first one must reach.
const PEER_NS: &str = "vm2";
/// Its address.
const PEER_IP: &str = "192.0.2.32";
/// The nftables table of `network.guest_isolation.mode = "filter"`.
const FILTER_TABLE: &str = applbuild::guest_isolation::FILTER_TABLE;
/// The first byte of an iSCSI Login Response PDU (opcode 0x23).
const LOGIN_RESPONSE: &str = "23";

/// Creates a namespace with a veth port on br0 unless it exists.
const VM_NIC: &str = include_str!("../../scripts/scenario-vm-nic.sh");

/// TCP connects, iSCSI login requests and pings from a namespace.
const REACH: &str = include_str!("../../scripts/scenario-guest-reach.sh");

/// The first PDU of a login as `initiator` to `target`: a Login Request in
/// the security negotiation stage offering CHAP (RFC 7143 11.12), with an
/// ISID of its own, so it can never reinstate one of the node's sessions.
fn login_request(initiator: &str, target: &str) -> Vec<u8> {
    let mut data = Vec::new();
    for pair in [
        format!("InitiatorName={initiator}"),
        "SessionType=Normal".to_string(),
        format!("TargetName={target}"),
        "AuthMethod=CHAP".to_string(),
    ] {
        data.extend(pair.as_bytes());
        data.push(0);
    }
    let length = u32::try_from(data.len()).expect("a short data segment");
    data.resize(data.len().next_multiple_of(4), 0);
    let mut pdu = vec![0u8; 48];
    pdu[0] = 0x43; // immediate, Login Request
    pdu[1] = 0x81; // transit, security negotiation -> operational
    pdu[5..8].copy_from_slice(&length.to_be_bytes()[1..]);
    pdu[8..14].copy_from_slice(&[0x80, 0x00, 0x5a, 0x15, 0x00, 0x01]); // ISID, random format
    pdu.extend(data);
    pdu
}

/// One line of [`REACH`]'s output.
#[derive(Debug, PartialEq, Eq)]
enum Reach {
    /// `tcp PORTAL open|closed`.
    Tcp(String, bool),
    /// `login PORTAL answer=XX`: the first byte of the answer, if any.
    Login(String, String),
    /// `ping ADDRESS up|down`.
    Ping(String, bool),
}

/// Parses [`REACH`]'s output.
fn parse_reach(text: &str) -> Vec<Reach> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["tcp", portal, state] => Some(Reach::Tcp(portal.to_string(), *state == "open")),
                ["login", portal, answer] => Some(Reach::Login(
                    portal.to_string(),
                    answer.strip_prefix("answer=")?.to_string(),
                )),
                ["ping", address, state] => Some(Reach::Ping(address.to_string(), *state == "up")),
                _ => None,
            }
        })
        .collect()
}

/// The packets the filter's "a guest to a portal" rules dropped, from
/// `nft list chain bridge TABLE forward`.
fn portal_drops(chain: &str) -> u64 {
    chain
        .lines()
        .filter(|line| line.contains("daddr @portals_v"))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|word| *word == "packets")?;
            words.next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Runs [`REACH`] from `ns` (`-`: the node) against every portal and
/// `addresses`; keeps and parses its output.
fn reach(ctx: &mut Ctx, ns: &str, pdu: &str, addresses: &[String]) -> Result<Vec<Reach>> {
    let mut args = vec![ns, pdu];
    args.extend(ctx.facts.portals.iter().map(String::as_str));
    args.push("--");
    args.extend(addresses.iter().map(String::as_str));
    let output = ctx
        .cluster
        .hypervisor
        .exec(&with_args(REACH, &args), Duration::from_secs(120))?;
    ctx.keep(&format!("what {ns} reaches"), &output.stdout);
    Ok(parse_reach(&output.stdout))
}

/// The drops counted by the filter's portal rules now.
fn drops_now(ctx: &mut Ctx) -> Result<u64> {
    let chain = must(
        &mut ctx.cluster.hypervisor,
        &format!("nft list chain bridge {FILTER_TABLE} forward"),
    )?;
    ctx.keep("the filter's forward chain", &chain);
    Ok(portal_drops(&chain))
}

/// S15: from a guest port of br0, TCP to every portal fails and an iSCSI
/// login request with the node's IQN gets no answer (from the node itself
/// it does), the node's addresses do not answer, the filter counted the
/// drops and tgtd saw no connection; the node and the storage node still
/// reach the guest, the guests reach each other, and the 4 paths stay up.
pub fn s15_guests_off_the_san(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let timeout = ctx.secs(90);
    wait_all_paths_up(ctx, started, timeout)?;
    ensure_vm_nic(ctx)?;
    // A guest may route anything onto its link: the portal on SAN-B's
    // subnet and the node's SAN-B address are then asked for by ARP on br0.
    must(
        &mut ctx.cluster.hypervisor,
        &format!("ip -n {VM_NS} route replace default dev {VM_NS}-guest"),
    )?;
    must(
        &mut ctx.cluster.hypervisor,
        &with_args(VM_NIC, &[PEER_NS, &format!("{PEER_IP}/24")]),
    )?;
    let initiator = ctx
        .cluster
        .hypervisor
        .loaded
        .profile
        .initiator
        .as_ref()
        .context("hypervisor profile has no [initiator]")?
        .name
        .clone();
    let pdu = base64::engine::general_purpose::STANDARD
        .encode(login_request(&initiator, &ctx.facts.target));
    let from_node = reach(ctx, "-", &pdu, &[])?;
    for line in &from_node {
        match line {
            Reach::Tcp(portal, open) => ensure!(*open, "the node cannot connect to {portal}"),
            Reach::Login(portal, answer) => ensure!(
                answer == LOGIN_RESPONSE,
                "{portal} did not answer the node's login request (first byte `{answer}`)"
            ),
            Reach::Ping(..) => {}
        }
    }
    let before = drops_now(ctx)?;
    check_guest_is_kept_off(ctx, &pdu)?;
    let after = drops_now(ctx)?;
    ensure!(
        after > before,
        "the filter's portal rules counted no drop ({before} before, {after} after)"
    );
    ctx.timing("portal_drops", (after - before) as f64);
    check_guest_is_reached(ctx)
}

/// From [`VM_NS`]: both portals closed and silent, the node's addresses
/// down, the peer guest up; tgtd lists no connection from the guest.
fn check_guest_is_kept_off(ctx: &mut Ctx, pdu: &str) -> Result<()> {
    let mut node_addresses: Vec<String> = Vec::new();
    let network = &ctx.cluster.hypervisor.loaded.profile.network;
    for address in network
        .bridges
        .iter()
        .filter_map(|bridge| bridge.address.as_deref())
        .chain(
            network
                .interfaces
                .iter()
                .filter_map(|i| i.address.as_deref()),
        )
    {
        node_addresses.push(address.split('/').next().unwrap_or(address).to_string());
    }
    let mut addresses = node_addresses.clone();
    addresses.push(PEER_IP.to_string());
    let from_guest = reach(ctx, VM_NS, pdu, &addresses)?;
    ensure!(
        from_guest.len() == 2 * ctx.facts.portals.len() + addresses.len(),
        "unexpected output from the guest port: {from_guest:?}"
    );
    for line in &from_guest {
        match line {
            Reach::Tcp(portal, open) => ensure!(!*open, "a guest port connected to {portal}"),
            Reach::Login(portal, answer) => ensure!(
                answer.is_empty(),
                "{portal} answered a guest port's login request (first byte {answer})"
            ),
            Reach::Ping(address, up) if address == PEER_IP => {
                ensure!(
                    *up,
                    "the guest port does not reach the other guest {PEER_IP}"
                )
            }
            Reach::Ping(address, up) => ensure!(!*up, "a guest port reaches the node at {address}"),
        }
    }
    let shown = must(
        &mut ctx.cluster.storage,
        "tgtadm --lld iscsi --op show --mode target",
    )?;
    ensure!(
        !shown.contains(&format!("IP Address: {VM_IP}")),
        "tgtd has a connection from the guest port {VM_IP}:\n{shown}"
    );
    Ok(())
}

/// The node and the storage node reach the guest port (their replies
/// pass), and the node's sessions are all there.
fn check_guest_is_reached(ctx: &mut Ctx) -> Result<()> {
    let from_node = must(
        &mut ctx.cluster.hypervisor,
        &format!("ping -c 2 -W 2 {VM_IP}"),
    )?;
    ctx.keep("the node pings the guest port", &from_node);
    let from_storage = must(&mut ctx.cluster.storage, &format!("ping -c 2 -W 2 {VM_IP}"))?;
    ctx.keep("the storage node pings the guest port", &from_storage);
    let started = Instant::now();
    let timeout = ctx.secs(30);
    wait_all_paths_up(ctx, started, timeout)?;
    ensure_all_sessions(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_request_is_a_padded_pdu_offering_chap() {
        let pdu = login_request(
            "iqn.2012-09.com.ibm:uranus",
            "iqn.2012-09.com.ibm:neptune.target",
        );
        assert_eq!(pdu.len() % 4, 0);
        assert_eq!(&pdu[..2], &[0x43, 0x81]);
        let length = usize::from(pdu[6]) << 8 | usize::from(pdu[7]);
        let data = &pdu[48..48 + length];
        assert!(data.ends_with(b"AuthMethod=CHAP\0"));
        assert!(data.starts_with(b"InitiatorName=iqn.2012-09.com.ibm:uranus\0"));
        assert!(pdu[48 + length..].iter().all(|byte| *byte == 0));
    }

    #[test]
    fn reach_lines_and_drop_counters_parse() {
        let text = "tcp 192.0.2.10:3260 closed\nlogin 192.0.2.10:3260 answer=\nlogin 198.51.100.10:3260 answer=23\nping 192.0.2.32 up\nnoise\n";
        assert_eq!(
            parse_reach(text),
            [
                Reach::Tcp("192.0.2.10:3260".into(), false),
                Reach::Login("192.0.2.10:3260".into(), String::new()),
                Reach::Login("198.51.100.10:3260".into(), "23".into()),
                Reach::Ping("192.0.2.32".into(), true),
            ]
        );
        let chain = "\t\tip daddr @portals_v4 counter packets 7 bytes 420 drop comment \"a guest to a portal\"\n\t\tip6 daddr @portals_v6 counter packets 1 bytes 80 drop\n\t\tip daddr @node_v4 counter packets 9 bytes 1 drop\n";
        assert_eq!(portal_drops(chain), 8);
    }
}
