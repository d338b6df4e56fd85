//! Chaos under continuous load (issue 8 item 4, bullets 2–3; DESIGN.md § 9),
//! on the rack (`haven_cluster_tests::rack`): two dispatcher pairs, three
//! Raft nodes with the data plane on, a correspondent, and about two
//! thousand mnsim mobile nodes in both realms (wide /20 home prefixes)
//! registering, moving and re-registering with 5 s lifetimes, plus stream
//! mobile nodes sending 20 packets/s each through their RFC 3519 tunnels.
//! Needs root.
//!
//! * `chaos_node_kills_under_load`: SIGKILL a (seeded) random follower,
//!   restart it, SIGKILL the Raft leader, restart it;
//! * `chaos_partition_and_dispatcher_under_load`: cut a follower off with
//!   nftables inside its namespace, heal it, SIGKILL the active dispatcher
//!   host, restart it (VRRP preemption gives the VIPs back).
//!
//! After each event (`haven_cluster_tests::chaos::Chaos::run`): every
//! acknowledged binding on every live node, every mobile node registered,
//! exactly one VIP owner per realm; the registration gap (mnsim timelines)
//! and the data gap (at the correspondent) are printed against DESIGN.md
//! § 9's targets and bounded here by what a failover that happened looks
//! like (a missed target is reported, not failed: the dispatchers' 361 ms
//! down interval alone exceeds 300 ms).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use haven_cluster_tests::chaos::{Chaos, ChaosEvent};
use haven_cluster_tests::rack::RackOptions;
use haven_cluster_tests::supervisor::workspace_binary;
use haven_cluster_tests::topo;

/// The load: a few thousand mobile nodes over both realms.
fn options() -> RackOptions {
    RackOptions {
        inner: 1000,
        outer: 1000,
        lifetime: 5,
        move_after: Duration::from_millis(1500),
        // A run's mobile nodes start over about two seconds and move 1.5 s
        // after their start: registrations keep coming across each fault.
        rate: 1000.0,
        data_rate: 0.0,
        streams: 12,
        stream_rate: 20.0,
        wide: true,
        initial_timeout: Duration::from_millis(100),
        max_timeout: Duration::from_millis(400),
        // Down after 3 × 50 ms plus skew (about 180 ms): the 300 ms
        // follower target of DESIGN.md § 9 is out of reach with the
        // default 100 ms (361 ms down interval).
        advert_interval_ms: 50,
        expire: Some(Duration::from_secs(240)),
        ..RackOptions::default()
    }
}

/// One rack of a few thousand mobile nodes at a time: two at once on two
/// cores measure the machine, not the failover.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scenario(name: &str, seed: u64, events: &[ChaosEvent]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    workspace_binary("haven-ha-node", "ha-node").expect("build ha-node");
    workspace_binary("haven-ha-node", "havenctl").expect("build havenctl");
    workspace_binary("haven-dispatcher", "dispatcher").expect("build dispatcher");
    let t0 = Instant::now();
    let mut chaos = Chaos::start(&options(), seed).expect("start the rack");
    eprintln!(
        "{name}: rack up in {:.1}s (seed {seed}, {} mobile nodes)",
        t0.elapsed().as_secs_f64(),
        chaos.rack.expected
    );
    for ev in events {
        match chaos.run(*ev) {
            Ok(r) => eprintln!("{name}: {r}"),
            Err(e) => {
                for (n, _) in chaos.rack.logs() {
                    if let Some(t) = chaos.rack.log_tail(&n, 15) {
                        eprintln!("--- {n}\n{t}");
                    }
                }
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
        assert!(r.acked_per_node * 4 >= chaos.rack.expected, "{r}");
    }
    let hits = chaos
        .results
        .iter()
        .filter(|r| {
            matches!(
                r.event,
                ChaosEvent::KillFollower | ChaosEvent::KillLeader | ChaosEvent::Partition
            )
        })
        .filter(|r| r.data_gap.interrupted > 0)
        .count();
    assert!(
        hits > 0 || !events.contains(&ChaosEvent::KillLeader),
        "no stream was ever interrupted: did the faults hit anything?\n{}",
        chaos.table()
    );
    eprintln!(
        "{name}: {} events in {:.1}s\n{}",
        chaos.results.len(),
        t0.elapsed().as_secs_f64(),
        chaos.table()
    );
}

#[test]
fn chaos_node_kills_under_load() {
    if topo::skip_without_root() {
        return;
    }
    scenario(
        "chaos_node_kills",
        0x4841_5645_4e01,
        &[
            ChaosEvent::KillFollower,
            ChaosEvent::RestartKilled,
            ChaosEvent::KillLeader,
            ChaosEvent::RestartKilled,
        ],
    );
}

#[test]
fn chaos_partition_and_dispatcher_under_load() {
    if topo::skip_without_root() {
        return;
    }
    scenario(
        "chaos_partition_dispatcher",
        0x4841_5645_4e02,
        &[
            ChaosEvent::Partition,
            ChaosEvent::HealPartition,
            ChaosEvent::KillDispatcher,
            ChaosEvent::RestartKilled,
        ],
    );
}
