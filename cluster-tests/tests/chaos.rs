//! Chaos under continuous load in both clusters of the site (issue 8 item
//! 4, bullets 2–3; DESIGN.md § 9; `haven_cluster_tests::site`): an inner
//! cluster in the intranet and an outer one in the DMZ, each three Raft
//! nodes with the data plane on behind an l2 dispatcher pair, a thousand
//! mnsim mobile nodes per realm (the inner fleet registering directly from
//! the inside access network, the outer one behind a NAT) registering,
//! moving and re-registering with 5 s lifetimes, plus twelve stream mobile
//! nodes per realm sending 20 packets/s each through their RFC 3519
//! tunnels to the realm's correspondent. Needs root.
//!
//! One scenario, every event applied to both clusters at once (victims
//! chosen per cluster by the seeded generator): kill a follower, restart,
//! kill the leader, restart, random kills (a random node SIGKILLed every
//! 2 s for three rounds, then restarted), partition a follower, heal it,
//! kill the active dispatcher host, restart it (VRRP preemption gives the
//! VIP back).
//!
//! Beside the fleets, the full dual mobile node (`haven_cluster_tests::e2e`,
//! seed 000 mode, outside behind `nat1`: its VPN over the outer binding,
//! its inner binding on the tunnel inner address) with the correspondent's
//! TCP connection and UDP stream to its inner home address: after every
//! event the connection must be alive and both streams flowing again, and
//! the longest silence of each is reported (skipped, said so, without
//! strongSwan).
//!
//! After each event (`haven_cluster_tests::chaos::Chaos::run`), per
//! cluster: every acknowledged binding of its realm on every live node,
//! every mobile node registered, exactly one VIP owner; the registration
//! gap (mnsim timelines) and the data gap (at its correspondent) are
//! printed against DESIGN.md § 9's targets and bounded here by what a
//! failover that happened looks like (a missed target is reported, not
//! failed: the dispatchers' down interval alone is close to 300 ms).

use std::time::{Duration, Instant};

use haven_cluster_tests::chaos::{Chaos, ChaosEvent};
use haven_cluster_tests::dual::Variant;
use haven_cluster_tests::e2e::{DualRig, RigOptions, Streams};
use haven_cluster_tests::rack::RackOptions;
use haven_cluster_tests::site::SiteOptions;
use haven_cluster_tests::supervisor::workspace_binary;
use haven_cluster_tests::{topo, vpn};

/// One wait on the dual mobile node's rig or streams.
const BOUND: Duration = Duration::from_secs(15);

/// The load: a thousand mobile nodes per realm, twelve streams each.
fn options() -> SiteOptions {
    SiteOptions {
        load: RackOptions {
            inner: 1000,
            outer: 1000,
            lifetime: 5,
            move_after: Duration::from_millis(1500),
            // A run's mobile nodes start over about a second and move 1.5 s
            // after their start: registrations keep coming across each
            // fault.
            rate: 1000.0,
            data_rate: 0.0,
            streams: 12,
            stream_rate: 20.0,
            wide: true,
            initial_timeout: Duration::from_millis(100),
            max_timeout: Duration::from_millis(400),
            // The site's 100 ms (361 ms down interval): the 300 ms follower
            // target of DESIGN.md § 9 is reported missed, but twelve
            // processes under this load on two cores miss 50 ms adverts
            // (180 ms down interval) often enough to flap healthy nodes.
            advert_interval_ms: 100,
            expire: Some(Duration::from_secs(300)),
            ..RackOptions::default()
        },
    }
}

#[test]
fn chaos_in_both_clusters_under_load() {
    if topo::skip_without_root() {
        return;
    }
    workspace_binary("haven-ha-node", "ha-node").expect("build ha-node");
    workspace_binary("haven-ha-node", "havenctl").expect("build havenctl");
    workspace_binary("haven-dispatcher", "dispatcher").expect("build dispatcher");
    let name = "chaos_site";
    let seed = 0x4841_5645_4e03;
    let events = [
        ChaosEvent::KillFollower,
        ChaosEvent::RestartKilled,
        ChaosEvent::KillLeader,
        ChaosEvent::RestartKilled,
        ChaosEvent::RandomKills,
        ChaosEvent::Partition,
        ChaosEvent::HealPartition,
        ChaosEvent::KillDispatcher,
        ChaosEvent::RestartKilled,
    ];
    let t0 = Instant::now();
    let mut chaos = Chaos::start_site(&options(), seed).expect("start the site");
    let mns: Vec<(String, usize)> = chaos
        .bed
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.expected))
        .collect();
    eprintln!(
        "{name}: site up in {:.1}s (seed {seed:#x}, mobile nodes {mns:?})",
        t0.elapsed().as_secs_f64()
    );
    // The full dual mobile node (seed 000 mode, outside behind nat1: the
    // VPN over its outer binding, the inner binding on the TIA) and the
    // correspondent's TCP connection and UDP stream to its inner home
    // address, through both clusters. Declared after `chaos`: dropped
    // before the site removes the namespaces.
    let dual = if std::path::Path::new(vpn::CHARON).exists() {
        let opts = RigOptions {
            dual_mn: Some(env!("CARGO_BIN_EXE_dual-mn").into()),
            udp_echo: Some(env!("CARGO_BIN_EXE_udp-echo").into()),
            ..RigOptions::site(Variant::Seed000)
        };
        let lab = chaos.bed.lab();
        let mut rig = DualRig::start_with(lab, &opts, chaos.bed.dir())
            .unwrap_or_else(|e| panic!("{name}: the dual rig: {e}"));
        let st = rig
            .wait_ready()
            .unwrap_or_else(|e| panic!("{name}: the dual mobile node: {e}\n{}", rig.logs()));
        let streams = Streams::start(lab).unwrap_or_else(|e| panic!("{name}: streams: {e}"));
        streams
            .wait_more("the dual mobile node's streams flowing", 20, BOUND)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!(
            "{name}: dual mobile node ready after {:.1}s: {st:?}",
            t0.elapsed().as_secs_f64()
        );
        Some((rig, streams))
    } else {
        eprintln!(
            "{name}: no dual mobile node: strongSwan is not installed (apt-get install -y {})",
            vpn::PACKAGES
        );
        None
    };
    let mut dual_gaps = Vec::new();
    for ev in events {
        match chaos.run(ev) {
            Ok(rs) => {
                for r in &rs {
                    eprintln!("{name}: {r}");
                }
                // The dual mobile node's TCP connection survived the event
                // in both clusters and both streams flow again.
                if let (Some((rig, streams)), Some(at)) = (&dual, rs.first().map(|r| r.at)) {
                    let what = format!("the dual mobile node's streams after {}", ev.name());
                    if let Err(e) = streams.wait_more(&what, 10, BOUND) {
                        panic!("{name}: {e}\n{}", rig.logs());
                    }
                    let (udp, tcp) = streams.gaps_after(at);
                    eprintln!(
                        "{name}: dual event={} udp_gap={:.0}ms tcp_gap={:.0}ms",
                        ev.name(),
                        udp.as_secs_f64() * 1e3,
                        tcp.as_secs_f64() * 1e3
                    );
                    dual_gaps.push((ev, udp, tcp));
                }
            }
            Err(e) => {
                eprintln!("{}", chaos.log_tails(15));
                panic!("{name}: {}: {e}", ev.name());
            }
        }
    }
    for r in &chaos.results {
        // A failover that happened: the registrations in flight got
        // through within a few retransmissions, the streams resumed.
        assert!(r.reg_gap_ms() < 5000.0, "{r}");
        assert!(r.data_gap.max < Duration::from_secs(5), "{r}");
        assert_eq!(r.data_gap.stalled, 0, "{r}");
        assert!(r.acked_checked > 0, "{r}");
        // A meaningful share was checked: bindings whose lifetime ran out
        // before the check (renewal in flight when the fleets stopped) are
        // skipped, and a round that ends in a renewal wave skips many.
        let expected = mns
            .iter()
            .find(|(c, _)| *c == r.cluster)
            .map_or(0, |(_, n)| *n);
        assert!(r.acked_per_node * 4 >= expected, "{r}");
    }
    // The faults hit something in each cluster: the leader's death (or a
    // random kill) interrupts some stream there.
    for (cluster, _) in &mns {
        let hits = chaos
            .results
            .iter()
            .filter(|r| r.cluster == *cluster)
            .filter(|r| {
                matches!(
                    r.event,
                    ChaosEvent::KillFollower
                        | ChaosEvent::KillLeader
                        | ChaosEvent::Partition
                        | ChaosEvent::RandomKills
                )
            })
            .filter(|r| r.data_gap.interrupted > 0)
            .count();
        assert!(
            hits > 0,
            "{cluster}: no stream was ever interrupted: did the faults hit anything?\n{}",
            chaos.table()
        );
    }
    for (ev, udp, tcp) in &dual_gaps {
        // DESIGN.md § 9 has no target for the nested path; a TCP connection
        // that lived through it within a few retransmissions.
        assert!(
            *udp < Duration::from_secs(5) && *tcp < Duration::from_secs(5),
            "dual mobile node after {}: udp {udp:?} tcp {tcp:?}",
            ev.name()
        );
    }
    if let Some((_, streams)) = &dual {
        streams
            .alive()
            .unwrap_or_else(|e| panic!("{name}: the dual mobile node: {e}"));
    }
    let dual_table: Vec<String> = dual_gaps
        .iter()
        .map(|(ev, u, t)| {
            format!(
                "dual    {:<16} udp_gap={:.0}ms tcp_gap={:.0}ms",
                ev.name(),
                u.as_secs_f64() * 1e3,
                t.as_secs_f64() * 1e3
            )
        })
        .collect();
    eprintln!(
        "{name}: {} events in {:.1}s\n{}\n{}",
        events.len(),
        t0.elapsed().as_secs_f64(),
        chaos.table(),
        dual_table.join("\n")
    );
}
