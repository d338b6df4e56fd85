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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use haven_cluster_tests::fleet::{DispatchSpec, NodeSpec, PairSpec, RealmSpec};
use haven_cluster_tests::mn::{Event, MnConfig, MobileNode};
use haven_cluster_tests::mnsim::unix_now;
use haven_cluster_tests::supervisor::{
    Process, Spec, await_metric, free_port, metric, scrape, wait_for,
};
use haven_proto::grpc::{self, admin_client::AdminClient};
use haven_proto::sync::{SyncRepr, SyncType};
use haven_proto::vrrp::VrrpRepr;

const KEY: &[u8] = b"pair-cluster-key";
const SYNC_KEY: &[u8] = b"pair-sync-hmac-key-0123";
const SPI: u32 = 256;
const LOAD_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 0);
const LOAD: usize = 16;
const BOUND: Duration = Duration::from_secs(20);
/// 100 ms adverts: Master_Down_Interval = 300 ms + Skew_Time
/// [RFC 5798 § 6.1] (22 ms at priority 200, 61 ms at 100).
const ADVERT_CS: u16 = 10;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

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

fn spawn(spec: &NodeSpec, dir: &Path) -> Process {
    let config = spec.write(dir).expect("write the config");
    let p = Process::spawn(
        &format!("ha-node-{}", spec.id),
        Spec::new(env!("CARGO_BIN_EXE_ha-node"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info"),
        None,
    )
    .expect("spawn ha-node");
    await_metric(
        &spec.metrics_url(),
        None,
        "haven_build_info",
        &[],
        |v| v == 1.0,
        BOUND,
    )
    .expect("node starts");
    p
}

fn status(spec: &NodeSpec) -> Option<grpc::StatusReply> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", spec.admin))
            .ok()?
            .connect_timeout(Duration::from_millis(300))
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .ok()?;
        AdminClient::new(ch)
            .status(grpc::StatusRequest {})
            .await
            .ok()
            .map(tonic::Response::into_inner)
    })
}

fn drain(spec: &NodeSpec, on: bool) -> Option<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", spec.admin))
            .ok()?
            .connect()
            .await
            .ok()?;
        AdminClient::new(ch)
            .drain(grpc::DrainRequest { drain: on })
            .await
            .ok()
            .map(|r| r.into_inner().draining)
    })
}

fn role(spec: &NodeSpec) -> String {
    status(spec).map(|s| s.role).unwrap_or_default()
}

/// `havenctl bindings list --json`: home address → care-of address.
fn bindings(spec: &NodeSpec) -> Option<HashMap<Ipv4Addr, Ipv4Addr>> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_havenctl"))
        .arg("--admin")
        .arg(spec.admin.to_string())
        .args(["--json", "bindings", "list"])
        .output()
        .expect("run havenctl");
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|b| {
                let hoa = b["home_address"].as_str()?.parse().ok()?;
                let coa = b["care_of"][0]["care_of_address"].as_str()?.parse().ok()?;
                Some((hoa, coa))
            })
            .collect(),
    )
}

fn scrape_metric(spec: &NodeSpec, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(&spec.metrics_url(), None)
        .ok()
        .and_then(|t| metric(&t, name, labels))
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------- load ----

#[derive(Debug, Default)]
struct Seen {
    /// (acknowledged at, by node, registration started at).
    acks: Vec<(Instant, u64, Instant)>,
    /// Each mobile node now: (last acknowledged care-of address, care-of
    /// addresses sent since, unacknowledged).
    now: HashMap<Ipv4Addr, (Option<Ipv4Addr>, Vec<Ipv4Addr>)>,
}

#[derive(Debug, Clone)]
struct MnEnd {
    hoa: Ipv4Addr,
    acked: Option<Ipv4Addr>,
    later: Vec<Ipv4Addr>,
}

struct Load {
    stop: Arc<AtomicBool>,
    target: Arc<Mutex<Option<(u64, SocketAddrV4)>>>,
    seen: Arc<Mutex<Seen>>,
    handle: Option<JoinHandle<Vec<MnEnd>>>,
}

impl Load {
    fn start(target: (u64, SocketAddrV4)) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let target = Arc::new(Mutex::new(Some(target)));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, t, v) = (stop.clone(), target.clone(), seen.clone());
        let handle = std::thread::spawn(move || run_load(&s, &t, &v));
        Load {
            stop,
            target,
            seen,
            handle: Some(handle),
        }
    }

    fn set_target(&self, t: Option<(u64, SocketAddrV4)>) {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    /// What every mobile node saw so far.
    fn snapshot(&self) -> Vec<MnEnd> {
        let s = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        s.now
            .iter()
            .map(|(hoa, (acked, later))| MnEnd {
                hoa: *hoa,
                acked: *acked,
                later: later.clone(),
            })
            .collect()
    }

    fn acks(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .acks
            .len()
    }

    fn first_ack_started_after(&self, t: Instant) -> Option<Instant> {
        let s = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        s.acks
            .iter()
            .filter(|(_, _, started)| *started > t)
            .map(|(at, _, _)| *at)
            .min()
    }

    fn await_more(&self, n: usize, what: &str) {
        let from = self.acks();
        wait_for(what, BOUND, || self.acks() >= from + n).expect(what);
    }

    fn finish(mut self) -> Vec<MnEnd> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("load thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct LoadMn {
    hoa: Ipv4Addr,
    sock: UdpSocket,
    core: Option<(MobileNode, u64, Instant)>,
    seq: u32,
    acked: Option<Ipv4Addr>,
    later: Vec<Ipv4Addr>,
}

/// `LOAD` mobile nodes registering back to back with a new care-of
/// address each time, to the current target; a registration without a
/// reply after 3 tries (0.3 + 0.6 + 0.6 s) is abandoned and the next one
/// goes to the then current target.
fn run_load(
    stop: &AtomicBool,
    target: &Mutex<Option<(u64, SocketAddrV4)>>,
    seen: &Mutex<Seen>,
) -> Vec<MnEnd> {
    let mut mns: Vec<LoadMn> = (0..LOAD)
        .map(|i| {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            sock.set_nonblocking(true).expect("nonblocking");
            LoadMn {
                hoa: Ipv4Addr::from(u32::from(LOAD_BASE) + i as u32),
                sock,
                core: None,
                seq: 0,
                acked: None,
                later: Vec::new(),
            }
        })
        .collect();
    let mut buf = [0u8; 2048];
    let mut drain_until: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && drain_until.is_none() {
            drain_until = Some(Instant::now() + Duration::from_secs(3));
        }
        if drain_until.is_some_and(|d| Instant::now() >= d)
            || (stopping && mns.iter().all(|m| m.core.is_none()))
        {
            break;
        }
        let now = unix_now();
        let mut busy = false;
        let current = *target.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, m) in mns.iter_mut().enumerate() {
            // Behind the dispatcher a retransmission reaches whichever node
            // is primary now; here the client moves its outstanding
            // registration to the new target (its care-of address stays in
            // `later`: it may have committed before the old primary died).
            if !stopping
                && let (Some((node, _)), Some((_, busy_with, _))) = (current, &m.core)
                && *busy_with != node
            {
                m.core = None;
            }
            if m.core.is_none() && !stopping {
                let Some((node, vip)) = current else {
                    continue;
                };
                m.seq += 1;
                let coa = Ipv4Addr::new(198, 19, i as u8, (m.seq % 250 + 1) as u8);
                let mut c = MnConfig::new(m.hoa, *vip.ip(), coa, SPI, KEY);
                c.home_agent_port = vip.port();
                c.initial_timeout = Duration::from_millis(300);
                c.max_timeout = Duration::from_millis(600);
                c.max_attempts = 3;
                let mut core = MobileNode::new(c);
                core.register(now);
                m.later.push(coa);
                m.core = Some((core, node, Instant::now()));
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .now
                    .insert(m.hoa, (m.acked, m.later.clone()));
            }
            let Some((core, node, began)) = m.core.as_mut() else {
                continue;
            };
            while let Ok((n, from)) = m.sock.recv_from(&mut buf) {
                busy = true;
                if let SocketAddr::V4(from) = from {
                    let _ = core.handle(now, from, &buf[..n]);
                }
            }
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            while let Some((dst, bytes)) = core.poll_transmit() {
                let _ = m.sock.send_to(&bytes, dst);
            }
            let mut done = false;
            while let Some(ev) = core.poll_event() {
                match ev {
                    Event::Accepted { .. } => {
                        m.acked = Some(core.care_of_address());
                        m.later.clear();
                        let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
                        s.acks.push((Instant::now(), *node, *began));
                        s.now.insert(m.hoa, (m.acked, Vec::new()));
                        done = true;
                    }
                    Event::GaveUp | Event::Denied { .. } => done = true,
                    _ => {}
                }
            }
            if done {
                m.core = None;
            }
        }
        if !busy {
            // Pacing of the generator's own poll loop, not a wait for a
            // condition of the system under test.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    mns.into_iter()
        .map(|m| MnEnd {
            hoa: m.hoa,
            acked: m.acked,
            later: m.later,
        })
        .collect()
}

/// Every acknowledged registration is in `table`; returns how many were
/// checked.
fn assert_acknowledged_present(table: &HashMap<Ipv4Addr, Ipv4Addr>, mns: &[MnEnd]) -> usize {
    let mut checked = 0;
    for m in mns {
        let Some(a) = m.acked else { continue };
        checked += 1;
        let got = table.get(&m.hoa).copied();
        assert!(
            got == Some(a) || got.is_some_and(|g| m.later.contains(&g)),
            "acknowledged {} -> {a} lost: the node holds {got:?} (later attempts {:?})",
            m.hoa,
            m.later
        );
    }
    checked
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
    let mut nodes: Vec<Node> = specs(60)
        .into_iter()
        .map(|(spec, vip, sync)| {
            let proc = spawn(&spec, dir.path());
            Node {
                spec,
                vip,
                sync,
                proc,
            }
        })
        .collect();
    let st = status(&nodes[0].spec).expect("status");
    assert_eq!(st.mode, grpc::ReplicationMode::Pair as i32);

    let primary = await_single_primary(&[&nodes[0], &nodes[1]]);
    let (p, s) = if primary == 1 { (0, 1) } else { (1, 0) };
    let load = Load::start((nodes[p].spec.id, nodes[p].vip));
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
    load.set_target(None);
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
    load.set_target(Some((nodes[s].spec.id, nodes[s].vip)));
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
    let mut table = HashMap::new();
    wait_for("both nodes to list the same bindings", BOUND, || {
        match (bindings(&nodes[0].spec), bindings(&nodes[1].spec)) {
            (Some(a), Some(b)) if a == b => {
                table = a;
                true
            }
            _ => false,
        }
    })
    .expect("identical bindings");
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
    let good = spec.write(dir.path()).expect("write");
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_ha-node"))
        .arg("--config")
        .arg(&good)
        .arg("--check-config")
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("replication: pair"),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let text = std::fs::read_to_string(&good).expect("read");
    for (from, to, needle) in [
        (
            "priority = 200",
            "priority = 255",
            "priority must be 1..=254",
        ),
        (
            &format!("key_hex = \"{}\"", hex::encode(SYNC_KEY)) as &str,
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
    ] {
        assert!(text.contains(from), "{from:?} in {text}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text.replacen(from, to, 1)).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ha-node"))
            .arg("--config")
            .arg(&bad)
            .arg("--check-config")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{to}: {err}");
        assert!(err.contains(needle), "{to}: {err}");
    }
}

/// The dispatcher's view of a pair (DESIGN.md § 5, `pair/mod.rs`
/// "Dispatcher in pair mode"): a fake dispatcher socket receives both
/// nodes' health adverts; the primary advertises its capacity, the
/// secondary priority 0; `Drain` on the primary turns its adverts to 0 and
/// Status reports it; undrained, they come back.
#[test]
fn secondary_and_draining_nodes_advertise_priority_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disp = UdpSocket::bind("127.0.0.1:0").expect("bind the fake dispatcher");
    disp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let SocketAddr::V4(disp_addr) = disp.local_addr().expect("addr") else {
        panic!("v4")
    };
    let nodes: Vec<Node> = specs(100)
        .into_iter()
        .map(|(spec, vip, sync)| {
            let spec = spec.dispatch(DispatchSpec::l2(*sync.ip(), vec![disp_addr], 50));
            let proc = spawn(&spec, dir.path());
            Node {
                spec,
                vip,
                sync,
                proc,
            }
        })
        .collect();
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
