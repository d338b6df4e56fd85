//! The first end-to-end scenario (issue "Test bed", item 4): a router, one
//! real `ha-node`, a correspondent node, and 100 mobile nodes behind a real
//! nftables NAT. The mobile nodes register with UDP tunnelling (RFC 3519)
//! and dynamic home addresses (RFC 2794) and keep their bindings; the test
//! asserts that every registration the simulator saw acknowledged is visible
//! through the node's admin API, with the NAT's public mapping, and that the
//! node's counters agree with the simulator's. Needs root.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use haven_cluster_tests::fleet::{NodeSpec, RealmSpec, havenctl_json, start_node};
use haven_cluster_tests::mnsim::{self, HomeMode, SimConfig};
use haven_cluster_tests::supervisor::{await_metric, metric, scrape};
use haven_cluster_tests::topo::{self, in_netns, leftovers, racks};

const MNS: usize = 100;
const KEY: &[u8] = b"scenario-nat-key";

#[test]
fn hundred_mobile_nodes_behind_a_nat_register_and_stay_visible() {
    if topo::skip_without_root() {
        return;
    }
    let lab = racks::nat_scenario(1)
        .expire_after(Duration::from_secs(120))
        .build()
        .expect("build the lab");
    let prefix = lab.prefix().to_owned();
    let node_ns = lab.ns_name("node-1").expect("node-1").to_owned();
    let mn_ns = lab.ns_name("mn").expect("mn").to_owned();

    // The node's loopback is its own (namespace), so the admin and metrics
    // listeners use the usual local addresses.
    let spec = NodeSpec::new(
        1,
        "127.0.0.1:4340".parse().unwrap(),
        "127.0.0.1:9434".parse().unwrap(),
    )
    .realm(
        RealmSpec {
            pool: Some("198.51.100.10-198.51.100.250".into()),
            ..RealmSpec::new("outer", racks::plan::VIP, "198.51.100.0/24")
        }
        .with_nai_sas("mn{i}@example.net", MNS, 1000, KEY),
    );
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&spec, dir.path(), Some(&node_ns)).expect("start ha-node");

    let mut sim = SimConfig::new(SocketAddrV4::new(racks::plan::VIP, 434), KEY.to_vec());
    sim.count = MNS;
    sim.rate = 500.0;
    sim.home = HomeMode::Nai {
        pattern: "mn{i}@example.net".into(),
    };
    sim.spi = 1000;
    sim.udp_tunnel = true;
    sim.bind = vec![racks::plan::MN];
    // Keep the bindings: the assertions below look at them.
    sim.deregister = false;
    let report = in_netns(&mn_ns, || mnsim::run(&sim))
        .expect("enter the mobile nodes' namespace")
        .expect("mnsim run");
    let s = &report.summary;
    assert_eq!(s.registered, MNS as u64, "{}", s.table());
    assert_eq!(s.gave_up, 0, "{}", s.table());

    // The node saw every registration from the NAT's public address.
    let listed = havenctl_json(&spec, Some(&node_ns), &["bindings", "list"]).expect("havenctl");
    let listed: HashMap<Ipv4Addr, serde_json::Value> = listed
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|b| {
            (
                b["home_address"].as_str().unwrap().parse().unwrap(),
                b.clone(),
            )
        })
        .collect();
    assert_eq!(listed.len(), MNS);
    for mn in &report.mns {
        let (hoa, _coa) = mn.acknowledged.expect("every MN acknowledged");
        let b = listed
            .get(&hoa)
            .unwrap_or_else(|| panic!("acknowledged {hoa} not listed"));
        assert_eq!(b["nai"], format!("mn{}@example.net", mn.mn));
        let care_of = &b["care_of"][0];
        assert_eq!(care_of["encapsulation"], "udp");
        let mapping: SocketAddrV4 = care_of["nat_mapping"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            *mapping.ip(),
            racks::plan::NAT_PUBLIC,
            "the binding records the NAT's public mapping"
        );
    }

    // The node's own counters agree with what the mobile nodes saw.
    let url = spec.metrics_url();
    await_metric(
        &url,
        Some(&node_ns),
        "haven_bindings",
        &[("realm", "outer")],
        |v| v == MNS as f64,
        Duration::from_secs(5),
    )
    .expect("haven_bindings reaches 100");
    let text = scrape(&url, Some(&node_ns)).unwrap();
    let accepted = metric(
        &text,
        "haven_registrations_total",
        &[("realm", "outer"), ("code", "0"), ("result", "accepted")],
    )
    .unwrap_or(0.0);
    assert_eq!(accepted, s.accepted as f64, "{}", s.table());

    drop(node);
    drop(lab);
    assert!(
        leftovers(&prefix).is_empty(),
        "namespaces left: {:?}",
        leftovers(&prefix)
    );
}
