//! Guests kept off the SAN (`[network.guest_isolation]`, docs/security.md#guests-kept-off-the-san):
//! what the `filter` mode's nftables ruleset is made from. The build puts
//! a [`FilterPlan`] into the template context as `build.guest_isolation`,
//! and `rootfs-overlay/hypervisor/etc/nftables.conf.j2` writes the ruleset
//! from it.

use std::net::IpAddr;

use serde::Serialize;

use crate::profile::{GuestIsolationMode, Profile};

/// The nftables table the `filter` mode loads (`nft list table bridge NAME`).
pub const FILTER_TABLE: &str = "applbuild_guests";

/// The values the `filter` ruleset is rendered from. Addresses are split by
/// family, as nftables sets hold one family each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FilterPlan {
    /// The nftables table's name ([`FILTER_TABLE`]).
    pub table: String,
    /// The bridge ports that are not guest ports: the node's interfaces
    /// with a `bridge` (`eth0`).
    pub uplinks: Vec<String>,
    /// IPv4 addresses of the initiator's portals.
    pub portals_v4: Vec<String>,
    /// IPv6 addresses of the initiator's portals.
    pub portals_v6: Vec<String>,
    /// The node's own IPv4 addresses (bridges and interfaces).
    pub node_v4: Vec<String>,
    /// The node's own IPv6 addresses.
    pub node_v6: Vec<String>,
}

/// The plan of `profile`'s filter, if its guest isolation mode is `filter`.
pub fn filter_plan(profile: &Profile) -> Option<FilterPlan> {
    let isolation = profile.network.guest_isolation.as_ref()?;
    if isolation.mode != GuestIsolationMode::Filter {
        return None;
    }
    let network = &profile.network;
    let portals = profile
        .initiator
        .iter()
        .flat_map(|initiator| &initiator.portals)
        .filter_map(|portal| portal.rsplit_once(':').map(|(address, _)| address));
    let own = network
        .bridges
        .iter()
        .filter_map(|bridge| bridge.address.as_deref())
        .chain(
            network
                .interfaces
                .iter()
                .filter_map(|interface| interface.address.as_deref()),
        )
        .map(|address| address.split('/').next().unwrap_or(address));
    let (portals_v4, portals_v6) = by_family(portals);
    let (node_v4, node_v6) = by_family(own);
    Some(FilterPlan {
        table: FILTER_TABLE.into(),
        uplinks: network
            .interfaces
            .iter()
            .filter(|interface| interface.bridge.is_some())
            .map(|interface| interface.name.clone())
            .collect(),
        portals_v4,
        portals_v6,
        node_v4,
        node_v6,
    })
}

/// The addresses that parse, IPv4 ones first, each once, in order.
fn by_family<'a>(addresses: impl Iterator<Item = &'a str>) -> (Vec<String>, Vec<String>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for address in addresses.filter_map(|text| text.parse::<IpAddr>().ok()) {
        let list = if address.is_ipv4() { &mut v4 } else { &mut v6 };
        let text = address.to_string();
        if !list.contains(&text) {
            list.push(text);
        }
    }
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;
    use crate::profile;
    use crate::services::tests::{render_overlay, store_for};

    fn project() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn hypervisor() -> profile::LoadedProfile {
        profile::load(&project().join("profiles"), "hypervisor").unwrap()
    }

    /// `etc/nftables.conf` of the hypervisor overlay, rendered for `loaded`.
    fn rendered(loaded: &profile::LoadedProfile) -> String {
        render_overlay(
            loaded,
            &store_for(loaded),
            "hypervisor/etc/nftables.conf.j2",
        )
    }

    #[test]
    fn the_hypervisor_plan_has_its_uplink_portals_and_addresses() {
        let plan = filter_plan(&hypervisor().profile).unwrap();
        assert_eq!(plan.table, FILTER_TABLE);
        assert_eq!(plan.uplinks, ["eth0"]);
        assert_eq!(plan.portals_v4, ["192.0.2.10", "198.51.100.10"]);
        assert_eq!(plan.node_v4, ["192.0.2.20", "198.51.100.20"]);
        assert!(plan.portals_v6.is_empty() && plan.node_v6.is_empty());
        let storage = profile::load(&project().join("profiles"), "storage").unwrap();
        assert_eq!(filter_plan(&storage.profile), None);
    }

    #[test]
    fn addresses_split_by_family_once_each() {
        let (v4, v6) = by_family(["192.0.2.1", "2001:db8::1", "192.0.2.1", "x"].into_iter());
        assert_eq!(v4, ["192.0.2.1"]);
        assert_eq!(v6, ["2001:db8::1"]);
    }

    #[test]
    fn the_rendered_ruleset_drops_guests_to_the_portals_and_the_node() {
        let text = rendered(&hypervisor());
        for line in [
            "table bridge applbuild_guests {",
            "elements = { \"eth0\" }",
            "elements = { 192.0.2.10, 198.51.100.10 }",
            "elements = { 192.0.2.20, 198.51.100.20 }",
            "type filter hook forward priority filter; policy accept;",
            "type filter hook input priority filter; policy accept;",
            "iifname @uplinks accept",
            "ct state established,related accept",
            "ip daddr @portals_v4 counter drop",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
        assert!(!text.contains("elements = { }"), "{text}");
    }

    #[test]
    fn an_ipv6_portal_goes_into_the_ipv6_set() {
        let mut loaded = hypervisor();
        let initiator = loaded.profile.initiator.as_mut().unwrap();
        initiator.portals.push("2001:db8::10:3260".into());
        let text = rendered(&loaded);
        assert!(text.contains("elements = { 2001:db8::10 }"), "{text}");
        assert_eq!(nft_findings(&text), Vec::<String>::new());
    }

    /// What `nft -c` (in a user and network namespace of its own, so it
    /// needs no root and touches nothing) says about `text`, less what only
    /// the host's kernel lacks: a kernel without bridge connection tracking
    /// (`nf_conntrack_bridge`) refuses every `ct` rule with "Could not
    /// process rule", which the image's Debian kernel has (its boot check
    /// lists the loaded table). Missing `nft`: fails under CI=true, else
    /// nothing is checked.
    fn nft_findings(text: &str) -> Vec<String> {
        if Command::new("nft").arg("--version").output().is_err() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "missing nft: run scripts/host-setup (nftables)"
            );
            eprintln!("SKIPPED: missing nft (scripts/host-setup installs nftables)");
            return Vec::new();
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nftables.conf");
        std::fs::write(&file, text).unwrap();
        let output = Command::new("unshare")
            .args(["--user", "--map-root-user", "--net", "nft", "-c", "-f"])
            .arg(&file)
            .output()
            .expect("unshare runs (util-linux)");
        if output.status.success() {
            return Vec::new();
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let errors: Vec<usize> = (0..lines.len())
            .filter(|&index| lines[index].contains("Error:"))
            .collect();
        if errors.is_empty() {
            return vec![stderr.into_owned()];
        }
        let kernel_lacks_bridge_ct = |index: usize| {
            lines[index].contains("Could not process rule")
                && lines
                    .get(index + 1)
                    .is_some_and(|rule| rule.trim_start().starts_with("ct "))
        };
        let findings: Vec<String> = errors
            .into_iter()
            .filter(|&index| !kernel_lacks_bridge_ct(index))
            .map(|index| lines[index].to_string())
            .collect();
        if findings.is_empty() {
            eprintln!("NOTE: this kernel has no bridge connection tracking; nft checked the rest");
        }
        findings
    }

    #[test]
    fn nft_accepts_the_rendered_ruleset() {
        let text = rendered(&hypervisor());
        assert_eq!(nft_findings(&text), Vec::<String>::new(), "{text}");
    }
}
