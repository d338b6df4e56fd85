//! The lab itself, tested on real namespaces (needs root; with
//! `HAVEN_SKIP_ROOT_TESTS=1` and no root these tests print "skipped: needs
//! root" and pass). Reachability is checked with the `udp-echo` helper.
//! Reference: DESIGN.md §8.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use haven_cluster_tests::supervisor::{Process, Spec, wait_for};
use haven_cluster_tests::topo::racks::{self, plan};
use haven_cluster_tests::topo::{Lab, TopoError, Topology, leftovers, skip_without_root};

const ECHO: &str = env!("CARGO_BIN_EXE_udp-echo");
const BOUND: Duration = Duration::from_secs(10);
const PORT: u16 = 7000;

/// One datagram from `host` to `to`; the echo server's reply, if any came
/// within 300 ms.
fn send(lab: &Lab, host: &str, to: SocketAddr) -> Option<String> {
    let out = lab
        .exec(host, [ECHO, "send", &to.to_string(), "ping", "300"])
        .expect("exec udp-echo");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Waits until `host` gets a reply from `to` and returns it.
fn reach(lab: &Lab, host: &str, to: SocketAddr) -> String {
    let mut reply = None;
    wait_for(&format!("{host} to reach {to}"), BOUND, || {
        reply = send(lab, host, to);
        reply.is_some()
    })
    .expect("reachable");
    reply.unwrap_or_default()
}

fn echo_server(lab: &Lab, host: &str, bind: Ipv4Addr) -> Process {
    Process::spawn(
        &format!("echo-{host}"),
        Spec::new(ECHO).args(["serve", &SocketAddr::from((bind, PORT)).to_string()]),
        lab.ns_name(host),
    )
    .expect("spawn udp-echo")
}

fn three_hosts() -> Lab {
    Topology::builder()
        .host("a")
        .host("rtr")
        .host("b")
        .link(("a", "198.18.0.2/24"), ("rtr", "198.18.0.1/24"))
        .link(("rtr", "198.18.1.1/24"), ("b", "198.18.1.2/24"))
        .route("a", "default", "198.18.0.1")
        .route("b", "default", "198.18.1.1")
        .router("rtr")
        .expire_after(Duration::from_secs(120))
        .build()
        .expect("build a-rtr-b")
}

fn sysctl(lab: &Lab, host: &str, key: &str) -> String {
    let out = lab.exec(host, ["sysctl", "-n", key]).expect("sysctl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn routes_through_the_router() {
    if skip_without_root() {
        return;
    }
    let lab = three_hosts();
    let b = lab.addr("b").expect("b has an address");
    assert_eq!(b, Ipv4Addr::new(198, 18, 1, 2));
    assert_eq!(sysctl(&lab, "rtr", "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(&lab, "rtr", "net.ipv4.conf.all.rp_filter"), "0");
    let _srv = echo_server(&lab, "b", b);
    let reply = reach(&lab, "a", (b, PORT).into());
    // b saw a's own address: routed, not translated.
    assert!(reply.starts_with("from 198.18.0.2:"), "{reply}");
    // The path really goes through rtr's forwarding.
    let off = lab.exec("rtr", ["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    assert!(off.is_ok_and(|o| o.status.success()));
    assert_eq!(send(&lab, "a", (b, PORT).into()), None);
}

#[test]
fn masquerade_partition_and_heal() {
    if skip_without_root() {
        return;
    }
    let lab = racks::nat_scenario(2)
        .expire_after(Duration::from_secs(120))
        .build()
        .expect("build nat scenario");
    assert_eq!(lab.addr("mn"), Some(plan::MN));
    assert_eq!(lab.addr_on("nat", "inet"), Some(plan::NAT_PUBLIC));
    let _srv = echo_server(&lab, "cn", plan::CN);
    let cn: SocketAddr = (plan::CN, PORT).into();
    let reply = reach(&lab, "mn", cn);
    // The correspondent sees the NAT's public address, never the MN's.
    assert!(reply.starts_with("from 203.0.113.2:"), "{reply}");
    let nft = lab
        .exec("nat", ["nft", "list", "table", "ip", "hv_nat"])
        .expect("nft");
    assert!(String::from_utf8_lossy(&nft.stdout).contains("masquerade"));

    lab.partition("nat").expect("partition");
    assert_eq!(send(&lab, "mn", cn), None, "partitioned NAT still forwards");
    lab.heal("nat").expect("heal");
    let reply = reach(&lab, "mn", cn);
    assert!(reply.starts_with("from 203.0.113.2:"), "{reply}");

    // The VIP on the nodes' loopback, reached through rtr's ECMP route.
    assert_eq!(sysctl(&lab, "node-1", "net.ipv4.conf.all.arp_ignore"), "1");
    assert_eq!(sysctl(&lab, "node-2", "net.ipv4.conf.s0.arp_announce"), "2");
    let _n1 = echo_server(&lab, "node-1", plan::VIP);
    let _n2 = echo_server(&lab, "node-2", plan::VIP);
    let reply = reach(&lab, "cn", (plan::VIP, PORT).into());
    assert!(reply.starts_with("from 198.18.1.2:"), "{reply}");
}

#[test]
fn link_down_and_up() {
    if skip_without_root() {
        return;
    }
    let lab = three_hosts();
    let b: SocketAddr = (Ipv4Addr::new(198, 18, 1, 2), PORT).into();
    let _srv = echo_server(&lab, "b", Ipv4Addr::new(198, 18, 1, 2));
    reach(&lab, "a", b);
    lab.link_down("rtr", "b").expect("down");
    assert_eq!(send(&lab, "a", b), None, "reply over a downed link");
    lab.link_up("b", "rtr").expect("up");
    reach(&lab, "a", b);
}

#[test]
fn drop_percent_all_then_none() {
    if skip_without_root() {
        return;
    }
    let lab = three_hosts();
    let b: SocketAddr = (Ipv4Addr::new(198, 18, 1, 2), PORT).into();
    let _srv = echo_server(&lab, "b", Ipv4Addr::new(198, 18, 1, 2));
    reach(&lab, "a", b);
    lab.drop_percent("rtr", 100).expect("loss");
    assert_eq!(send(&lab, "a", b), None, "100% loss let a packet through");
    lab.drop_percent("rtr", 0).expect("no loss");
    reach(&lab, "a", b);
}

#[test]
fn disallowed_address_refused_before_anything_exists() {
    // No root needed: validation comes first.
    for bad in ["100.64.0.1/24", "169.254.1.1/24"] {
        let r = Topology::builder()
            .host("refusedx")
            .host("refusedy")
            .link(("refusedx", "198.18.0.1/24"), ("refusedy", bad))
            .build();
        assert!(
            matches!(&r, Err(TopoError::Disallowed(a)) if a == bad),
            "{r:?}"
        );
    }
    let left: Vec<String> = leftovers("hv-")
        .into_iter()
        .filter(|n| n.ends_with("-refusedx") || n.ends_with("-refusedy"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn drop_removes_namespaces_and_processes() {
    if skip_without_root() {
        return;
    }
    let lab = three_hosts();
    let prefix = lab.prefix().to_owned();
    assert_eq!(leftovers(&prefix).len(), 3);
    let mut child = lab.spawn("b", ["sleep", "600"]).expect("spawn sleep");
    drop(lab);
    assert!(!netns_list().contains(&prefix), "{}", netns_list());
    assert!(leftovers(&prefix).is_empty());
    wait_for("the lab's process to die", BOUND, || {
        child.try_wait().is_ok_and(|s| s.is_some())
    })
    .expect("process killed by teardown");
}

#[test]
fn panicking_test_still_cleans_up() {
    if skip_without_root() {
        return;
    }
    let prefix = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(|| {
        let lab = three_hosts();
        *prefix.lock().unwrap_or_else(|e| e.into_inner()) = lab.prefix().to_owned();
        panic!("deliberate failure inside a lab");
    });
    assert!(r.is_err());
    let prefix = prefix.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(prefix.starts_with("hv-"), "{prefix}");
    assert!(leftovers(&prefix).is_empty());
    assert!(!netns_list().contains(&prefix));
}

#[test]
fn watchdog_tears_down_a_hung_lab() {
    if skip_without_root() {
        return;
    }
    let lab = Topology::builder()
        .host("w")
        .expire_after(Duration::from_millis(200))
        .build()
        .expect("build");
    let prefix = lab.prefix().to_owned();
    assert_eq!(leftovers(&prefix).len(), 1);
    // The lab is still alive here (as in a hung test), yet it goes away.
    wait_for("the watchdog", BOUND, || leftovers(&prefix).is_empty()).expect("expired");
    drop(lab);
}

#[test]
fn sweep_removes_namespaces_of_dead_runs() {
    if skip_without_root() {
        return;
    }
    // A pid that certainly existed and is dead now: a reaped child.
    let mut c = Command::new("true").spawn().expect("true");
    let pid = c.id();
    c.wait().expect("wait");
    let name = format!("hv-{pid}-0-stale");
    let ok = Command::new("ip").args(["netns", "add", &name]).status();
    assert!(ok.is_ok_and(|s| s.success()));
    let swept = haven_cluster_tests::topo::sweep_stale();
    assert!(swept.contains(&name), "{swept:?}");
    assert!(leftovers(&name).is_empty());
    // Our own labs are alive and must survive a sweep.
    if let Ok(lab) = Topology::builder().host("keep").build() {
        haven_cluster_tests::topo::sweep_stale();
        assert_eq!(leftovers(lab.prefix()).len(), 1);
    }
}
