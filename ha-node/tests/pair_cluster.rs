//! Pair mode for real ([DESIGN.md § 4] "pair", § 9): two `ha-node`
//! processes on loopback, a primary and a secondary, mobile nodes
//! registering continuously while the primary is SIGKILLed.
//!
//! Node `i` serves the realm on its own VIP `127.0.0.(60+i)` and syncs from
//! `127.0.0.(70+i)`; the load's client sends every registration to the
//! node that reports `role = "primary"` in the admin Status (what the
//! dispatcher does by health: the secondary advertises priority 0). The
//! invariant is DESIGN.md § 9's first line: every registration a client saw
//! acknowledged is in the new primary's binding table (the acknowledged
//! care-of address, or a later one the client sent that may have
//! committed). The old primary comes back as secondary, receives the dump,
//! and both nodes list identical bindings with exactly one primary.
//!
//! Waits are conditions with bounds; every process is SIGKILLed when its
//! [`Process`] drops.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use haven_cluster_tests::fleet::{DispatchSpec, NodeSpec, PairSpec, RealmSpec};
use haven_cluster_tests::supervisor::{Process, await_metric, free_port, wait_for};
use haven_proto::grpc;
use haven_proto::sync::{SyncRepr, SyncType};
use haven_proto::vrrp::VrrpRepr;

mod common;
use common::load::{Load, LoadConfig, assert_acknowledged_present, await_identical};
use common::node::{self, BOUND, Timeouts, admin, bindings, loopback, scrape_metric};

const KEY: &[u8] = b"pair-cluster-key";
const SYNC_KEY: &[u8] = b"pair-sync-hmac-key-0123";
const SPI: u32 = 256;
const LOAD_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 0);
const LOAD: usize = 16;
/// Admin calls (Status, Drain) on loopback.
const ADMIN: Timeouts = Timeouts {
    connect: Duration::from_millis(300),
    call: Duration::from_secs(2),
};
/// `LOAD` mobile nodes registering back to back with a new care-of
/// address each time, to the current target; a registration without a
/// reply after 3 tries (0.3 + 0.6 + 0.6 s) is abandoned, and one still
/// outstanding when the target changes moves to the new target.
const LOAD_CONFIG: LoadConfig = LoadConfig {
    count: LOAD,
    base: LOAD_BASE,
    spi: SPI,
    key: KEY,
    initial_timeout: Duration::from_millis(300),
    max_timeout: Duration::from_millis(600),
    move_outstanding: true,
};
/// 100 ms adverts: Master_Down_Interval = 300 ms + Skew_Time
/// [RFC 5798 § 6.1] (22 ms at priority 200, 61 ms at 100).
const ADVERT_CS: u16 = 10;

struct Node {
    spec: NodeSpec,
    vip: SocketAddrV4,
    sync: SocketAddrV4,
    proc: Process,
}

/// Node `i` (1, 2): VIP `127.0.0.(base+i)`, sync address
/// `127.0.0.(base+10+i)`.
fn specs(base: u8) -> Vec<(NodeSpec, SocketAddrV4, SocketAddrV4)> {
    let sync: Vec<SocketAddrV4> = (1..=2u8)
        .map(|i| SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, base + 10 + i), free_port()))
        .collect();
    (1..=2u8)
        .map(|i| {
            let me = usize::from(i - 1);
            let vip = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, base + i), free_port());
            let mut spec =
                NodeSpec::new(u64::from(i), loopback(free_port()), loopback(free_port()))
                    .realm(
                        RealmSpec {
                            port: vip.port(),
                            ..RealmSpec::new("lab", *vip.ip(), "198.18.0.0/16")
                        }
                        .with_home_address_sas(LOAD_BASE, LOAD, SPI, KEY),
                    )
                    .pair(PairSpec {
                        priority: [200, 100][me],
                        advert_interval_cs: ADVERT_CS,
                        ..PairSpec::new(sync[me], sync[1 - me], SYNC_KEY)
                    });
            spec.max_commit_ms = Some(1000);
            (spec, vip, sync[me])
        })
        .collect()
}

/// Starts both nodes of [`specs`]`(base)`, each spec first passed through
/// `edit` with its sync address.
fn start_pair(
    base: u8,
    dir: &Path,
    edit: impl Fn(NodeSpec, SocketAddrV4) -> NodeSpec,
) -> Vec<Node> {
    specs(base)
        .into_iter()
        .map(|(spec, vip, sync)| {
            let spec = edit(spec, sync);
            let proc = node::start(&spec, dir, "info");
            Node {
                spec,
                vip,
                sync,
                proc,
            }
        })
        .collect()
}

fn status(spec: &NodeSpec) -> Option<grpc::StatusReply> {
    node::status_in(spec, None, ADMIN)
}

fn drain(spec: &NodeSpec, on: bool) -> Option<bool> {
    admin(spec, ADMIN, |mut c| async move {
        Ok(c.drain(grpc::DrainRequest { drain: on })
            .await?
            .into_inner()
            .draining)
    })
    .ok()
}

fn role(spec: &NodeSpec) -> String {
    status(spec).map(|s| s.role).unwrap_or_default()
}

/// The node with role "primary", once exactly one of `nodes` reports it.
fn await_single_primary(nodes: &[&Node]) -> u64 {
    let mut primary = 0;
    wait_for("exactly one primary", BOUND, || {
        let roles: Vec<String> = nodes.iter().map(|n| role(&n.spec)).collect();
        let p: Vec<u64> = nodes
            .iter()
            .zip(&roles)
            .filter(|(_, r)| r.as_str() == "primary")
            .map(|(n, _)| n.spec.id)
            .collect();
        primary = p.first().copied().unwrap_or(0);
        p.len() == 1 && roles.iter().all(|r| r == "primary" || r == "secondary")
    })
    .expect("one primary and one synced secondary");
    primary
}

// ----------------------------------------------------------- scenarios ----

#[test]
fn sigkill_primary_loses_no_acknowledged_binding_and_it_rejoins_as_secondary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = start_pair(60, dir.path(), |spec, _| spec);
    let st = status(&nodes[0].spec).expect("status");
    assert_eq!(st.mode, grpc::ReplicationMode::Pair as i32);

    let primary = await_single_primary(&[&nodes[0], &nodes[1]]);
    let (p, s) = if primary == 1 { (0, 1) } else { (1, 0) };
    let load = Load::start(LOAD_CONFIG, vec![(nodes[p].spec.id, nodes[p].vip)]);
    load.await_more(200, "acknowledgements from the primary");
    // Synchronous replication: the secondary acknowledged every one
    // before the primary applied it and replied.
    await_metric(
        &nodes[p].spec.metrics_url(),
        None,
        "haven_pair_synchronous_applies_total",
        &[],
        |v| v >= 200.0,
        BOUND,
    )
    .expect("the primary applies after the secondary's acks");
    assert_eq!(
        scrape_metric(&nodes[p].spec, "haven_pair_degraded_applies_total", &[]),
        0.0,
        "nothing applied alone while the secondary is up"
    );

    // A sync datagram without a valid HMAC, from the peer's own address:
    // refused and counted, nothing else changes.
    let before = scrape_metric(
        &nodes[s].spec,
        "haven_pair_refused_total",
        &[("reason", "auth")],
    );
    let forger = UdpSocket::bind(SocketAddrV4::new(*nodes[p].sync.ip(), 0)).expect("bind forger");
    let forged = SyncRepr {
        msg_type: SyncType::DataDumpRequest,
        vrid: 1,
        priority: 254,
        max_advert_int_cs: ADVERT_CS,
        addresses: vec![*nodes[s].vip.ip()],
        sequence: u64::MAX - 1,
        ack_sequence: 0,
        fragment_index: 0,
        more_fragments: false,
        blocks: Vec::new(),
    }
    .to_bytes(
        *nodes[p].sync.ip(),
        *nodes[s].sync.ip(),
        b"not-the-pair-key-at-all",
    )
    .expect("forge");
    // A bare RFC 5798 advert claiming priority 0 (would hasten a takeover).
    let bare = VrrpRepr {
        vrid: 1,
        priority: 0,
        max_advert_int_cs: ADVERT_CS,
        addresses: vec![],
    }
    .to_bytes(*nodes[p].sync.ip(), *nodes[s].sync.ip())
    .expect("advert");
    forger.send_to(&forged, nodes[s].sync).expect("send");
    forger.send_to(&bare, nodes[s].sync).expect("send");
    await_metric(
        &nodes[s].spec.metrics_url(),
        None,
        "haven_pair_refused_total",
        &[("reason", "auth")],
        |v| v >= before + 2.0,
        BOUND,
    )
    .expect("unauthenticated sync datagrams are counted");
    assert_eq!(role(&nodes[s].spec), "secondary");
    assert_eq!(role(&nodes[p].spec), "primary");

    // The primary dies.
    // The primary dies. The load pauses (no new registrations) so that the
    // survivor's table can be compared with exactly what the clients saw
    // acknowledged before the kill.
    let killed = Instant::now();
    nodes[p].proc.sigkill().expect("kill the primary");
    load.set_targets(Vec::new());
    wait_for("the secondary takes over", BOUND, || {
        role(&nodes[s].spec) == "primary"
    })
    .expect("takeover");
    let takeover = killed.elapsed();
    let acked_before = load.acks();
    let at_kill = load.snapshot();
    let survivor = bindings(&nodes[s].spec).expect("bindings of the new primary");
    let checked_at_kill = assert_acknowledged_present(&survivor, &at_kill);
    assert_eq!(
        checked_at_kill, LOAD,
        "every mobile node had an acknowledgement"
    );
    let resumed = Instant::now();
    load.set_targets(vec![(nodes[s].spec.id, nodes[s].vip)]);
    wait_for("an acknowledgement from the new primary", BOUND, || {
        load.first_ack_started_after(resumed).is_some()
    })
    .expect("the survivor serves");
    let gap = load.first_ack_started_after(resumed).expect("ack") - resumed;
    // Master_Down_Interval at 100 ms and priority 100 is 361 ms; allow for
    // the admin polling and a loaded machine.
    assert!(
        takeover < Duration::from_millis(2_000),
        "takeover took {takeover:?}"
    );
    println!(
        "pair: primary {} SIGKILLed after {acked_before} acknowledgements; node {} reported primary after {:.0} ms and holds all {checked_at_kill} mobile nodes' last acknowledged bindings; its first registration acknowledged {:.1} ms after the load resumed",
        nodes[p].spec.id,
        nodes[s].spec.id,
        takeover.as_secs_f64() * 1000.0,
        gap.as_secs_f64() * 1000.0
    );
    load.await_more(100, "acknowledgements from the new primary");

    // The old primary comes back: secondary, dump received, no split brain.
    nodes[p].proc.restart().expect("restart");
    await_metric(
        &nodes[p].spec.metrics_url(),
        None,
        "haven_pair_dumps_total",
        &[("direction", "received")],
        |v| v >= 1.0,
        BOUND,
    )
    .expect("the restarted node receives the dump");
    let now_primary = await_single_primary(&[&nodes[0], &nodes[1]]);
    assert_eq!(now_primary, nodes[s].spec.id, "no preemption");
    load.await_more(100, "acknowledgements with the pair whole again");

    let mns = load.finish();
    let table = await_identical("both nodes to list the same bindings", || {
        nodes.iter().map(|n| bindings(&n.spec)).collect()
    });
    let checked = assert_acknowledged_present(&table, &mns);
    assert_eq!(checked, LOAD, "every mobile node was acknowledged");
    assert_eq!(table.len(), LOAD);
    let roles: Vec<String> = nodes.iter().map(|n| role(&n.spec)).collect();
    assert_eq!(
        roles.iter().filter(|r| r.as_str() == "primary").count(),
        1,
        "{roles:?}"
    );
    println!(
        "pair: {checked} mobile nodes' last acknowledged bindings present on both nodes ({} bindings)",
        table.len()
    );
}

#[test]
fn bad_pair_config_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spec, _, _) = specs(80).remove(0);
    let key = format!("key_hex = \"{}\"", hex::encode(SYNC_KEY));
    let summary = node::assert_edits_refused(
        &spec,
        dir.path(),
        &[
            (
                "priority = 200",
                "priority = 255",
                "priority must be 1..=254",
            ),
            (
                &key,
                "key_hex = \"00112233\"",
                "key must be at least 16 octets",
            ),
            (
                "[cluster.pair]\npeer = ",
                "[cluster.pair]\n# peer = ",
                "peer",
            ),
            (
                "advert_interval_cs = 10\n",
                "advert_interval_cs = 0\n",
                "advert_interval_cs",
            ),
        ],
    );
    assert!(summary.contains("replication: pair"), "{summary}");
}

/// The dispatcher's view of a pair (DESIGN.md § 5, `pair/mod.rs`
/// "Dispatcher in pair mode"): a fake dispatcher socket receives both
/// nodes' health adverts; the primary advertises its capacity, the
/// secondary priority 0; `Drain` on the primary turns its adverts to 0 and
/// Status reports it; undrained, they come back.
#[test]
fn secondary_and_draining_nodes_advertise_priority_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (disp, disp_addr) = node::fake_dispatcher();
    let nodes = start_pair(100, dir.path(), |spec, sync| {
        spec.dispatch(DispatchSpec::l2(*sync.ip(), vec![disp_addr], 50))
    });
    let primary = await_single_primary(&[&nodes[0], &nodes[1]]);
    // Latest advertised priority by source address, after the condition.
    let mut latest: HashMap<Ipv4Addr, u8> = HashMap::new();
    let mut expect = |what: &str, want: &dyn Fn(&HashMap<Ipv4Addr, u8>) -> bool| {
        latest.clear();
        let mut buf = [0u8; 128];
        wait_for(what, BOUND, || {
            // Two fresh adverts from each node settle the latest value.
            for _ in 0..8 {
                if let Ok((n, SocketAddr::V4(from))) = disp.recv_from(&mut buf) {
                    let parsed = haven_proto::vrrp::VrrpPacket::new_checked(&buf[..n])
                        .and_then(|p| VrrpRepr::parse(&p, *from.ip(), *disp_addr.ip()));
                    if let Ok(a) = parsed {
                        latest.insert(*from.ip(), a.priority);
                    }
                }
            }
            want(&latest)
        })
        .expect(what);
    };
    let (p, s) = if primary == 1 { (0, 1) } else { (1, 0) };
    let (pip, sip) = (*nodes[p].sync.ip(), *nodes[s].sync.ip());
    expect("primary 100, secondary 0", &|l| {
        l.get(&pip) == Some(&100) && l.get(&sip) == Some(&0)
    });
    assert_eq!(drain(&nodes[p].spec, true), Some(true));
    assert!(status(&nodes[p].spec).expect("status").draining);
    expect("the drained primary advertises 0", &|l| {
        l.get(&pip) == Some(&0) && l.get(&sip) == Some(&0)
    });
    assert_eq!(drain(&nodes[p].spec, false), Some(false));
    assert!(!status(&nodes[p].spec).expect("status").draining);
    expect("undrained, the primary advertises 100 again", &|l| {
        l.get(&pip) == Some(&100)
    });

    // SIGTERM on the primary: a clean exit, its priority-0 pair advert lets
    // the secondary take over after Skew_Time instead of
    // Master_Down_Interval [RFC 5798 § 6.4.3], and its last health advert
    // is 0 too.
    let mut nodes = nodes;
    let stopped = Instant::now();
    nodes[p].proc.signal(libc::SIGTERM).expect("SIGTERM");
    let st = nodes[p].proc.wait_exit(BOUND).expect("exits");
    assert!(st.success(), "{st:?}");
    wait_for("the secondary takes over", BOUND, || {
        role(&nodes[s].spec) == "primary"
    })
    .expect("takeover after a graceful stop");
    let graceful = stopped.elapsed();
    let mut last = None;
    let mut buf = [0u8; 128];
    while let Ok((n, SocketAddr::V4(from))) = disp.recv_from(&mut buf) {
        if *from.ip() == pip {
            last = haven_proto::vrrp::VrrpPacket::new_checked(&buf[..n])
                .and_then(|pk| VrrpRepr::parse(&pk, pip, *disp_addr.ip()))
                .ok()
                .map(|a| a.priority);
        }
        if *from.ip() == sip && last.is_some() {
            break;
        }
    }
    assert_eq!(last, Some(0), "the stopped node's last health advert");
    println!(
        "pair: SIGTERM on the primary: the secondary reported primary after {:.0} ms",
        graceful.as_secs_f64() * 1000.0
    );
}
