//! # The one-command rack (`haven-rack`, issue 10 item 1)
//!
//! A whole haven installation on this machine, built from the lab's parts:
//!
//! ```text
//!  mn 198.19.0.2/.3 ── nat (nftables masquerade) ── inet ── rtr ──rack switch 198.18.0.0/24──
//!     disp-a 198.18.0.2, disp-b 198.18.0.3: one dispatcher process per realm VIP each,
//!         VRRP pairs (vrid 7: inner 192.0.2.1, vrid 8: outer 192.0.2.2), l2 DSR
//!     node-1..3 198.18.0.11-13: ha-node in raft mode, both VIPs on lo (arp_ignore),
//!         [dataplane] on (a TUN per realm, the home prefixes routed into it)
//!  cn 198.18.1.2 ── rtr: the correspondent node; rtr routes each home prefix
//!         via its realm's VIP, so the dispatchers are the home prefixes' gateway
//! ```
//!
//! * realm `inner`: fixed home addresses 198.51.100.10.. (RFC 5944 § 3.6);
//! * realm `outer`: dynamic home addresses from 198.18.128.10-250 by NAI
//!   (RFC 2794);
//! * [`RackOptions::wide`]: /20 home prefixes instead (198.18.16.0/20 and
//!   198.18.128.0/20) for a few thousand mobile nodes per realm;
//! * one mnsim fleet per realm in `mn`, behind the NAT, with UDP tunnelling
//!   (RFC 3519). Mobile node *i* of the outer fleet is the same client as
//!   mobile node *i* of the inner fleet (same LAN address, same key): the
//!   first `min(inner, outer)` clients are dual clients, registered in both
//!   realms. Every mobile node re-registers at 80 % of its lifetime and
//!   moves once (a new care-of address, the other LAN address);
//! * data plane (namespace rack): every mobile node sends
//!   [`RackOptions::data_rate`] packets/s to the correspondent through its
//!   RFC 3519 tunnel (VIP:434 → dispatcher → a node, decapsulated and routed
//!   to `cn`); the [`Correspondent`] echoes each one back to the home
//!   address (→ rtr → the dispatcher's gateway path → a node's TUN → the
//!   tunnel to the MN's NAT mapping) and records per-flow arrival gaps.
//!   [`RackOptions::streams`] adds mobile nodes per realm that send faster
//!   ([`RackOptions::stream_rate`]), for gap measurements.
//!
//! A dispatcher serves one VIP:port, so each realm has its own dispatcher
//! pair (two processes on each dispatcher host) and each node advertises its
//! health to all four.
//!
//! The per-cluster part (nodes, dispatchers, their metrics proxies, faults,
//! samples) is [`Cluster`], built on the hosts a [`ClusterLayout`] names in
//! a [`Lab`] built elsewhere: the rack is one of them serving both realms,
//! the two-cluster site ([`crate::site`]) places it twice. Both are a
//! [`Bed`] for [`crate::chaos`], and share the fleet code (`FleetPlace`).
//!
//! Without root, [`Rack::start`] builds the loopback variant: the three raft
//! nodes and one encap-mode dispatcher on 127.0.0.x, and the inner fleet
//! only, with no data plane (see [`Mode::Loopback`] for why).
//!
//! [`Monitor`] turns the periodic [`Sample`]s into the events a person or a
//! test watches for (`event healed bindings=… on 3/3 nodes`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fleet::{
    ClusterSpec, DataplaneSpec, DispatchSpec, NodeSpec, RealmSpec, havenctl_json, start_node,
};
use crate::mnsim::{self, DataConfig, HomeMode, Report, SimConfig, parse_data_payload, unix_now};
use crate::supervisor::{Process, Spec, SupError, await_metric, free_port, wait_for};
use crate::topo::{self, Lab, TopoError, Topology, in_netns};

/// The rack's shared MN-HA key: a lab value, never a deployment's.
const KEY: &[u8] = b"haven-rack-demo!";
const SPI: u32 = 1000;
const OUTER_NAI: &str = "mn{i}@outer.rack.example";
/// The NAIs of the outer realm's stream mobile nodes.
const STREAM_NAI: &str = "st{i}@outer.rack.example";
/// The inner realm's home addresses run from .10 to .249.
pub const MAX_INNER: usize = 240;
/// The outer pool 198.18.128.10-250.
pub const MAX_OUTER: usize = 241;
/// [`RackOptions::wide`]: home addresses per realm (198.18.16.10 up to
/// 198.18.31.250; the outer pool 198.18.128.10-198.18.143.250).
pub const MAX_WIDE: usize = 4000;
/// The correspondent node (`cn`), on its own link to `rtr`.
pub const CN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The correspondent's UDP port (echo and gap recorder).
pub const CN_PORT: u16 = 9000;
const VIP_INNER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const VIP_OUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const DISP: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3)];
const DISP_HOSTS: [&str; 2] = ["disp-a", "disp-b"];
const MN_LAN: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 19, 0, 2), Ipv4Addr::new(198, 19, 0, 3)];
const RAFT_PORT: u16 = 7400;

/// The realms' address plan (default or [`RackOptions::wide`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) inner_prefix: &'static str,
    pub(crate) inner_base: Ipv4Addr,
    pub(crate) outer_prefix: &'static str,
    pub(crate) outer_pool: &'static str,
    pub(crate) max_inner: usize,
    pub(crate) max_outer: usize,
}

impl Plan {
    pub(crate) fn new(wide: bool) -> Self {
        if wide {
            Plan {
                inner_prefix: "198.18.16.0/20",
                inner_base: Ipv4Addr::new(198, 18, 16, 10),
                outer_prefix: "198.18.128.0/20",
                outer_pool: "198.18.128.10-198.18.143.250",
                max_inner: MAX_WIDE,
                max_outer: MAX_WIDE,
            }
        } else {
            Plan {
                inner_prefix: "198.51.100.0/24",
                inner_base: Ipv4Addr::new(198, 51, 100, 10),
                outer_prefix: "198.18.128.0/24",
                outer_pool: "198.18.128.10-198.18.128.250",
                max_inner: MAX_INNER,
                max_outer: MAX_OUTER,
            }
        }
    }
}
const BOUND: Duration = Duration::from_secs(20);

/// What can go wrong building or driving the rack.
#[derive(Debug, thiserror::Error)]
pub enum RackError {
    /// The namespaces.
    #[error("building the rack's network: {0:?}")]
    Topo(#[from] TopoError),
    /// A process or a wait.
    #[error(transparent)]
    Sup(#[from] SupError),
    /// A file or socket.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A bad option.
    #[error("{0}")]
    Options(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RackError {
    let what = what.into();
    move |source| RackError::Io { what, source }
}

/// Where the rack runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Network namespaces (root): the full rack of the module docs.
    Namespaces,
    /// Loopback, no privileges: three raft nodes, one encap-mode dispatcher
    /// for the inner realm, the inner fleet. Only one dispatcher and one
    /// realm, because an encap-mode node sends every reply back to the
    /// dispatcher that forwarded to it last (whatever the realm). No data
    /// plane: its TUN devices and routes need CAP_NET_ADMIN.
    Loopback,
}

/// The rack's size and timing.
#[derive(Debug, Clone)]
pub struct RackOptions {
    /// Mobile nodes of the inner realm (fixed home addresses).
    pub inner: usize,
    /// Mobile nodes of the outer realm (NAI, dynamic addresses); the first
    /// `min(inner, outer)` are the inner fleet's clients too.
    pub outer: usize,
    /// Requested registration lifetime (s); re-registration at 80 %.
    pub lifetime: u16,
    /// Each mobile node moves this long after its start.
    pub move_after: Duration,
    /// Mobile nodes started per second, per fleet.
    pub rate: f64,
    /// Loopback even as root.
    pub loopback: bool,
    /// Lab watchdog: tear the namespaces down after this even if the
    /// process hangs.
    pub expire: Option<Duration>,
    /// Data packets per second each mobile node sends to the correspondent
    /// through its RFC 3519 tunnel (namespace rack; 0: none).
    pub data_rate: f64,
    /// Extra mobile nodes per realm that send [`Self::stream_rate`]
    /// packets/s (namespace rack; they register and move like the others).
    pub streams: usize,
    /// Packets per second of each stream mobile node.
    pub stream_rate: f64,
    /// /20 home prefixes: up to [`MAX_WIDE`] mobile nodes per realm.
    pub wide: bool,
    /// The mobile nodes' first retransmission timeout and its cap
    /// (RFC 5944 § 3.6.3 lets the MN choose).
    pub initial_timeout: Duration,
    /// Retransmission timeout cap.
    pub max_timeout: Duration,
    /// Node health adverts to the dispatchers every this many ms (a node
    /// silent for 3 of them plus skew leaves the Maglev table).
    pub advert_interval_ms: u32,
    /// Each fleet run writes an mnsim JSON-lines timeline into the rack's
    /// directory ([`FleetRun::timeline`]).
    pub timelines: bool,
}

impl Default for RackOptions {
    fn default() -> Self {
        Self {
            inner: 200,
            outer: 120,
            lifetime: 10,
            move_after: Duration::from_secs(5),
            rate: 50.0,
            loopback: false,
            expire: None,
            data_rate: 2.0,
            streams: 0,
            stream_rate: 20.0,
            wide: false,
            initial_timeout: Duration::from_millis(400),
            max_timeout: Duration::from_secs(2),
            advert_interval_ms: 100,
            timelines: false,
        }
    }
}

/// One `ha-node`.
#[derive(Debug)]
pub struct RackNode {
    /// Raft id 1..=3 (in its cluster: every cluster counts from 1).
    pub id: u64,
    /// Its host (`node-2`, `inode-2`, …): also its name.
    pub host: String,
    spec: NodeSpec,
    proc: Process,
    ns: Option<String>,
    /// The metrics endpoint, reachable from this process (a proxy into the
    /// namespace in a namespace rack).
    pub metrics: SocketAddr,
    /// SIGKILLed by us and not restarted yet.
    pub killed: bool,
    /// Cut off by [`Cluster::partition_node`] and not healed yet.
    pub partitioned: bool,
}

impl RackNode {
    /// Its host's name (`node-<id>` in the rack).
    pub fn name(&self) -> String {
        self.host.clone()
    }
}

/// One dispatcher process (one realm's VIP on one dispatcher host).
#[derive(Debug)]
pub struct RackDispatcher {
    /// `disp-a` or `disp-b` (loopback: `disp`).
    pub host: String,
    /// The realm whose VIP it serves.
    pub realm: String,
    proc: Process,
    /// The metrics endpoint, reachable from this process.
    pub metrics: SocketAddr,
    /// SIGKILLed by us and not restarted yet.
    pub killed: bool,
}

impl RackDispatcher {
    /// `disp-a/inner`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.host, self.realm)
    }
}

// ------------------------------------------------------------ cluster ----

/// One realm a cluster serves: its node-side configuration and the
/// dispatcher pair in front of its VIP.
#[derive(Debug, Clone)]
pub struct LayoutRealm {
    /// The realm as every node of the cluster serves it (name, VIP, port,
    /// home prefix, pool, SAs).
    pub spec: RealmSpec,
    /// The dispatcher pair's VRRP virtual router id (RFC 5798 § 5.2.3).
    pub vrid: u8,
    /// The dispatchers' health-advert listener port for this realm.
    pub health_port: u16,
    /// The dispatchers' metrics port (127.0.0.1 inside their namespace).
    pub metrics_port: u16,
}

/// Where a cluster goes in a [`Lab`] someone else built: its hosts, their
/// addresses on the cluster's switch, and the realms it serves. The rack
/// is one of these serving both realms; the site two, one per realm.
#[derive(Debug, Clone)]
pub struct ClusterLayout {
    /// The Raft cluster id, its directory's and samples' name.
    pub name: String,
    /// The switch its nodes and dispatchers share (the l2 DSR segment).
    pub switch: String,
    /// Node hosts and their addresses; node *i* (from 0) is Raft id *i+1*.
    pub nodes: Vec<(String, Ipv4Addr)>,
    /// The dispatcher pair's hosts and addresses: the first is the VRRP
    /// preferred one (priority 200, preempting), the second its Backup.
    pub dispatchers: [(String, Ipv4Addr); 2],
    /// The realms, each with its own dispatcher process on both hosts (a
    /// dispatcher serves one VIP:port).
    pub realms: Vec<LayoutRealm>,
    /// Node health adverts every this many ms.
    pub advert_interval_ms: u32,
}

/// One haven cluster: three Raft `ha-node`s and a dispatcher pair per
/// realm (DESIGN.md § 4-5), built by [`Cluster::start`] on the hosts of a
/// [`ClusterLayout`]. Dropping it SIGKILLs its processes.
#[derive(Debug)]
pub struct Cluster {
    /// Its name ([`ClusterLayout::name`]).
    pub name: String,
    /// The nodes, by id order.
    pub nodes: Vec<RackNode>,
    /// The dispatchers.
    pub dispatchers: Vec<RackDispatcher>,
    /// Bindings every node holds once all mobile nodes registered.
    pub expected: usize,
    realms: Vec<String>,
    preferred: Option<String>,
    proxies: Vec<Proxy>,
}

impl Cluster {
    /// Starts the cluster's processes on `lab` (configs and Raft logs
    /// under `dir/<name>`); [`Cluster::await_ready`] waits for them.
    ///
    /// # Errors
    /// A host of the layout is missing, a file or a process.
    pub fn start(lab: &Lab, layout: &ClusterLayout, dir: &Path) -> Result<Cluster, RackError> {
        let ns = |h: &str| -> Result<String, RackError> {
            lab.ns_name(h)
                .map(str::to_owned)
                .ok_or_else(|| RackError::Options(format!("no host {h}")))
        };
        let dir = dir.join(&layout.name);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let bin = crate::supervisor::workspace_binary("haven-dispatcher", "dispatcher")?;
        let peers: Vec<(u64, SocketAddr)> = (1u64..)
            .zip(&layout.nodes)
            .map(|(id, (_, a))| (id, SocketAddr::from((*a, RAFT_PORT))))
            .collect();
        // Each node advertises its health to every dispatcher process of
        // every realm (DESIGN.md § 5).
        let adverts: Vec<SocketAddrV4> = layout
            .realms
            .iter()
            .flat_map(|r| {
                layout
                    .dispatchers
                    .iter()
                    .map(|(_, d)| SocketAddrV4::new(*d, r.health_port))
            })
            .collect();
        let mut proxies = Vec::new();
        let mut nodes = Vec::new();
        for ((host, me), (id, raft)) in layout.nodes.iter().zip(&peers) {
            let data = dir.join(format!("raft-{id}"));
            let mut spec = NodeSpec::new(*id, local(4340), local(9434))
                .cluster(ClusterSpec::raft(&layout.name, *raft, &data, peers.clone()))
                .dispatch(DispatchSpec::l2(
                    *me,
                    adverts.clone(),
                    layout.advert_interval_ms,
                ))
                .dataplane(DataplaneSpec::default());
            for r in &layout.realms {
                spec = spec.realm(r.spec.clone());
            }
            let n = ns(host)?;
            let proc = start_node(&spec, &dir, Some(&n))?;
            let proxy = Proxy::start(&n, spec.metrics)?;
            nodes.push(RackNode {
                id: *id,
                host: host.clone(),
                metrics: proxy.addr,
                spec,
                proc,
                ns: Some(n),
                killed: false,
                partitioned: false,
            });
            proxies.push(proxy);
        }
        let mut dispatchers = Vec::new();
        for r in &layout.realms {
            let (realm, vip, prefix) = (&r.spec.name, r.spec.vip, &r.spec.home_prefix);
            for (k, (host, addr)) in layout.dispatchers.iter().enumerate() {
                let dev = lab.iface(host, &layout.switch).ok_or_else(|| {
                    RackError::Options(format!("{host} is not on {}", layout.switch))
                })?;
                // The home prefix's gateway (DESIGN.md § 6): the router in
                // front routes it via the VIP, the VRRP Master hands each
                // packet to the node Maglev picks for its destination.
                let mut cfg = format!(
                    "[dispatcher]\nvip = \"{vip}\"\nport = {}\nmode = \"l2\"\ninterface = \"{dev}\"\n\
                     address = \"{addr}\"\nhome_prefixes = [\"{prefix}\"]\n\n\
                     [health]\nlisten_port = {}\nrise = 1\n\n\
                     [vrrp]\nvrid = {}\npriority = {}\ninterval_cs = 10\npeer = \"{}\"\n\n\
                     [metrics]\nlisten = \"127.0.0.1:{}\"\n\n",
                    r.spec.port,
                    r.health_port,
                    r.vrid,
                    [200, 100][k],
                    layout.dispatchers[1 - k].1,
                    r.metrics_port,
                );
                for (id, (_, a)) in (1u64..).zip(&layout.nodes) {
                    cfg.push_str(&format!("[[node]]\nid = {id}\naddress = \"{a}\"\n\n"));
                }
                let path = dir.join(format!("{host}-{realm}.toml"));
                std::fs::write(&path, cfg)
                    .map_err(io_err(format!("writing {}", path.display())))?;
                let n = ns(host)?;
                let proc = Process::spawn(
                    &format!("{host}-{realm}"),
                    Spec::new(&bin)
                        .arg("--config")
                        .arg(&path)
                        .env("RUST_LOG", "info"),
                    Some(&n),
                )?;
                let proxy = Proxy::start(&n, local(r.metrics_port))?;
                dispatchers.push(RackDispatcher {
                    host: host.clone(),
                    realm: realm.clone(),
                    proc,
                    metrics: proxy.addr,
                    killed: false,
                });
                proxies.push(proxy);
            }
        }
        Ok(Cluster {
            name: layout.name.clone(),
            nodes,
            dispatchers,
            expected: 0,
            realms: layout.realms.iter().map(|r| r.spec.name.clone()).collect(),
            preferred: Some(layout.dispatchers[0].0.clone()),
            proxies,
        })
    }

    /// Every node agrees on a leader; every dispatcher reports all nodes
    /// up and each realm has one active dispatcher.
    ///
    /// # Errors
    /// A wait ran out.
    pub fn await_ready(&self) -> Result<(), RackError> {
        let c = &self.name;
        wait_for(
            &format!("{c}: a raft leader all nodes agree on"),
            BOUND,
            || {
                let leaders: Vec<f64> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        http_metrics(n.metrics)
                            .ok()
                            .and_then(|t| sum(&t, "haven_raft_leader_id", &[]))
                            .unwrap_or(0.0)
                    })
                    .collect();
                leaders[0] > 0.0 && leaders.iter().all(|l| *l == leaders[0])
            },
        )?;
        for d in &self.dispatchers {
            for n in &self.nodes {
                let id = n.id.to_string();
                await_metric(
                    &format!("http://{}/metrics", d.metrics),
                    None,
                    "haven_dispatcher_node_up",
                    &[("node", &id)],
                    |v| v == 1.0,
                    BOUND,
                )?;
            }
        }
        for realm in &self.realms {
            wait_for(
                &format!("{c}: an active dispatcher for {realm}"),
                BOUND,
                || {
                    self.dispatchers
                        .iter()
                        .filter(|d| d.realm == *realm)
                        .filter(|d| {
                            http_metrics(d.metrics)
                                .ok()
                                .and_then(|t| sum(&t, "haven_dispatcher_active", &[]))
                                == Some(1.0)
                        })
                        .count()
                        == 1
                },
            )?;
        }
        Ok(())
    }

    /// The realms it serves.
    pub fn realms(&self) -> &[String] {
        &self.realms
    }

    /// Where each component's Prometheus endpoint answers on loopback.
    pub fn endpoints(&self) -> Vec<(String, String)> {
        let nodes = self
            .nodes
            .iter()
            .map(|n| (n.name(), format!("http://{}/metrics", n.metrics)));
        let disps = self
            .dispatchers
            .iter()
            .map(|d| (d.name(), format!("http://{}/metrics", d.metrics)));
        nodes.chain(disps).collect()
    }

    /// Scrapes every component once.
    pub fn sample(&mut self) -> Sample {
        let nodes = self
            .nodes
            .iter_mut()
            .map(|n| {
                let running = n.proc.is_running();
                let text = if running {
                    http_metrics(n.metrics).ok()
                } else {
                    None
                };
                NodeSample::from_metrics(n.id, running, text.as_deref())
            })
            .collect();
        let dispatchers = self
            .dispatchers
            .iter_mut()
            .map(|d| {
                let running = d.proc.is_running();
                let text = if running {
                    http_metrics(d.metrics).ok()
                } else {
                    None
                };
                DispSample::from_metrics(&d.host, &d.realm, running, text.as_deref())
            })
            .collect();
        Sample {
            at: Instant::now(),
            cluster: self.name.clone(),
            nodes,
            dispatchers,
        }
    }

    /// SIGKILLs node `id` and reaps it; returns its name.
    ///
    /// # Errors
    /// No such node, or it does not die.
    pub fn kill_node(&mut self, id: u64) -> Result<String, RackError> {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| RackError::Options(format!("no node {id}")))?;
        n.proc.sigkill()?;
        n.proc.wait_exit(Duration::from_secs(5))?;
        n.killed = true;
        Ok(n.name())
    }

    /// SIGKILLs every dispatcher process on the host that holds the first
    /// realm's VIP (VRRP Master; loopback: the one dispatcher). Returns its
    /// host.
    ///
    /// # Errors
    /// No active dispatcher in `sample`, or it does not die.
    pub fn kill_active_dispatcher(&mut self, sample: &Sample) -> Result<String, RackError> {
        let first = self.realms.first().cloned().unwrap_or_default();
        let host = sample
            .dispatchers
            .iter()
            .find(|d| d.realm == first && d.active)
            .map(|d| d.host.clone())
            .ok_or_else(|| RackError::Options(format!("{}: no active dispatcher", self.name)))?;
        for d in self.dispatchers.iter_mut().filter(|d| d.host == host) {
            d.proc.sigkill()?;
            d.proc.wait_exit(Duration::from_secs(5))?;
            d.killed = true;
        }
        Ok(host)
    }

    /// Restarts everything killed: nodes first (each waits until its
    /// metrics answer), then dispatchers. Returns the names restarted.
    ///
    /// # Errors
    /// A process does not come back.
    pub fn restart_killed(&mut self) -> Result<Vec<String>, RackError> {
        let mut out = Vec::new();
        for n in self.nodes.iter_mut().filter(|n| n.killed) {
            n.proc.restart()?;
            await_metric(
                &n.spec.metrics_url(),
                n.ns.as_deref(),
                "haven_build_info",
                &[],
                |v| v == 1.0,
                BOUND,
            )?;
            n.killed = false;
            out.push(n.name());
        }
        for d in self.dispatchers.iter_mut().filter(|d| d.killed) {
            d.proc.restart()?;
            d.killed = false;
            out.push(d.name());
        }
        Ok(out)
    }

    /// Whether anything is killed and not restarted.
    pub fn anything_killed(&self) -> bool {
        self.nodes.iter().any(|n| n.killed) || self.dispatchers.iter().any(|d| d.killed)
    }

    /// Cuts node `id` off the network (an nftables table dropping all but
    /// loopback inside its namespace, [`Lab::partition`]).
    ///
    /// # Errors
    /// No such node, or nftables.
    pub fn partition_node(&mut self, lab: &Lab, id: u64) -> Result<String, RackError> {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| RackError::Options(format!("no node {id}")))?;
        lab.partition(&n.host)?;
        n.partitioned = true;
        Ok(n.name())
    }

    /// Undoes [`Cluster::partition_node`].
    ///
    /// # Errors
    /// No such node, or nftables.
    pub fn heal_node(&mut self, lab: &Lab, id: u64) -> Result<String, RackError> {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| RackError::Options(format!("no node {id}")))?;
        lab.heal(&n.host)?;
        n.partitioned = false;
        Ok(n.name())
    }

    /// Runs `havenctl --json ARGS` against node `id`'s admin API (inside
    /// its namespace when it has one).
    ///
    /// # Errors
    /// No such node, or havenctl failed.
    pub fn havenctl(&self, id: u64, args: &[&str]) -> Result<serde_json::Value, RackError> {
        let n = self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| RackError::Options(format!("no node {id}")))?;
        Ok(havenctl_json(&n.spec, n.ns.as_deref(), args)?)
    }

    /// The dispatcher host that holds every VIP when both run (the higher
    /// VRRP priority, which preempts; none for the loopback rack).
    pub fn vip_preferred(&self) -> Option<String> {
        self.preferred.clone()
    }

    /// The ids of the nodes that run and are not partitioned.
    pub fn live_nodes(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| !n.killed && !n.partitioned)
            .map(|n| n.id)
            .collect()
    }

    /// The last lines of a component's log (for error reports).
    pub fn log_tail(&self, name: &str, lines: usize) -> Option<String> {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .map(|n| n.proc.log_tail(lines))
            .or_else(|| {
                self.dispatchers
                    .iter()
                    .find(|d| d.name() == name)
                    .map(|d| d.proc.log_tail(lines))
            })
    }

    /// Every component's log file.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        let n = self
            .nodes
            .iter()
            .map(|n| (n.name(), n.proc.log_path().to_owned()));
        let d = self
            .dispatchers
            .iter()
            .map(|d| (d.name(), d.proc.log_path().to_owned()));
        n.chain(d).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The processes before the proxies into their namespaces.
        self.dispatchers.clear();
        self.nodes.clear();
        self.proxies.clear();
    }
}

// ------------------------------------------------------------- fleets ----

struct Fleet {
    /// `inner`, `outer`, `inner-streams`, `outer-streams`.
    name: String,
    realm: String,
    started: Duration,
    timeline: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Report, String>>>,
}

/// One fleet's run, stopped ([`Rack::stop_fleet_runs`]).
#[derive(Debug)]
pub struct FleetRun {
    /// `inner`, `outer`, `inner-streams` or `outer-streams`.
    pub name: String,
    /// The realm its mobile nodes register in.
    pub realm: String,
    /// Unix time just before the run started: a timeline's `t` is counted
    /// from a moment a few ms after this.
    pub started: Duration,
    /// Its JSON-lines timeline ([`RackOptions::timelines`]).
    pub timeline: Option<PathBuf>,
    /// The requested lifetime (s).
    pub lifetime: u16,
    /// What it reported (acknowledged bindings per mobile node).
    pub report: Result<Report, String>,
}

/// Where one realm's fleets run and register: the rack's `mn` for both
/// realms, the site's `ifleet` and `ofleet`.
#[derive(Debug, Clone)]
pub(crate) struct FleetPlace {
    /// The realm.
    pub realm: String,
    /// Its VIP:port.
    pub vip: SocketAddrV4,
    /// The namespace the threads enter (`None`: loopback).
    pub ns: Option<String>,
    /// The mobile nodes' LAN addresses (the second one is where they move).
    pub bind: Vec<Ipv4Addr>,
    /// The main fleet's home addresses (`count` from `opts`).
    pub home: HomeMode,
    /// Mobile nodes in the main fleet.
    pub count: usize,
    /// The stream mobile nodes' home addresses.
    pub stream_home: HomeMode,
    /// Stream mobile nodes.
    pub streams: usize,
    /// The correspondent its data goes to (`None`: no data plane).
    pub correspondent: Option<SocketAddrV4>,
    /// Set the UDP Tunnel Request's F bit (RFC 3519 § 3.1): without a NAT
    /// in the path the home agent would otherwise answer with IP-in-IP,
    /// which mnsim's user-space data plane does not speak.
    pub force_udp_tunnel: bool,
}

impl FleetPlace {
    /// The inner realm's fleets: fixed home addresses from `base` (the
    /// stream mobile nodes after the main fleet's), RFC 5944 § 3.6.
    pub(crate) fn inner(
        vip: SocketAddrV4,
        ns: Option<String>,
        bind: &[Ipv4Addr],
        base: Ipv4Addr,
        opts: &RackOptions,
        correspondent: Option<SocketAddrV4>,
    ) -> Self {
        FleetPlace {
            realm: "inner".into(),
            vip,
            ns,
            bind: bind.to_vec(),
            home: HomeMode::Static { base },
            count: opts.inner,
            stream_home: HomeMode::Static {
                base: Ipv4Addr::from(u32::from(base) + opts.inner as u32),
            },
            streams: opts.streams,
            correspondent,
            force_udp_tunnel: false,
        }
    }

    /// The outer realm's fleets: home addresses from the pool by NAI
    /// (RFC 2794).
    pub(crate) fn outer(
        vip: SocketAddrV4,
        ns: Option<String>,
        bind: &[Ipv4Addr],
        opts: &RackOptions,
        correspondent: Option<SocketAddrV4>,
    ) -> Self {
        FleetPlace {
            realm: "outer".into(),
            vip,
            ns,
            bind: bind.to_vec(),
            home: HomeMode::Nai {
                pattern: OUTER_NAI.into(),
            },
            count: opts.outer,
            stream_home: HomeMode::Nai {
                pattern: STREAM_NAI.into(),
            },
            streams: opts.streams,
            correspondent,
            force_udp_tunnel: false,
        }
    }
}

/// The mnsim fleets of a rack or a site: threads, each running one fleet
/// in its namespace until stopped.
#[derive(Default)]
pub(crate) struct Fleets {
    fleets: Vec<Fleet>,
    runs: u32,
    lifetime: u16,
}

impl Fleets {
    /// Starts, for each of `places` (index `k`), its main fleet and its
    /// stream fleet (`<realm>-streams`); timelines go to `dir` when
    /// [`RackOptions::timelines`].
    pub(crate) fn start(
        &mut self,
        places: &[FleetPlace],
        opts: &RackOptions,
        dir: &Path,
    ) -> Result<(), RackError> {
        self.runs += 1;
        let run = self.runs;
        for (k, p) in places.iter().enumerate() {
            // (name, count, home addresses, data rate, rate of starts)
            let mut kinds = Vec::new();
            if p.count > 0 {
                kinds.push((
                    p.realm.clone(),
                    p.count,
                    p.home.clone(),
                    opts.data_rate,
                    opts.rate,
                ));
            }
            if p.streams > 0 && p.correspondent.is_some() {
                // Spread like the main fleet, over the same time.
                let rate = if p.count > 0 && opts.rate > 0.0 {
                    opts.rate * p.streams as f64 / p.count as f64
                } else {
                    opts.rate
                };
                kinds.push((
                    format!("{}-streams", p.realm),
                    p.streams,
                    p.stream_home.clone(),
                    opts.stream_rate,
                    rate,
                ));
            }
            for (j, (name, count, home, data_rate, rate)) in kinds.into_iter().enumerate() {
                let mut sim = SimConfig::new(p.vip, KEY.to_vec());
                sim.count = count;
                sim.rate = rate;
                sim.seed = (k * 2 + j) as u64 + 1 + u64::from(run) * 16;
                sim.home = home;
                sim.spi = SPI;
                sim.udp_tunnel = true;
                sim.force_udp_tunnel = p.force_udp_tunnel;
                sim.bind = p.bind.clone();
                sim.lifetime = opts.lifetime;
                sim.move_after = Some(opts.move_after);
                // Until stopped: the fleet's own end would deregister early.
                sim.duration = Some(Duration::from_secs(7 * 24 * 3600));
                sim.deregister = false;
                sim.initial_timeout = opts.initial_timeout;
                sim.max_timeout = opts.max_timeout;
                // Long enough to ride out a leader election or a dispatcher
                // takeover (RFC 5944 § 3.6.3 lets the MN choose).
                sim.max_attempts = 20;
                if let Some(cn) = p.correspondent.filter(|_| data_rate > 0.0) {
                    sim.data = Some(DataConfig {
                        correspondent: cn,
                        rate: data_rate,
                        payload_len: 64,
                        // Disjoint per fleet: the correspondent keys flows
                        // by it ([`CnFlow::id`]).
                        first_id: ((k * 2 + j) as u32) << 20,
                    });
                }
                let timeline = opts
                    .timelines
                    .then(|| dir.join(format!("timeline-{name}-{run}.jsonl")));
                sim.timeline = timeline.clone();
                sim.validate()
                    .map_err(|e| RackError::Options(format!("fleet {name}: {e}")))?;
                let stop = Arc::new(AtomicBool::new(false));
                let started = unix_now();
                let handle = {
                    let (stop, ns) = (stop.clone(), p.ns.clone());
                    std::thread::Builder::new()
                        .name(format!("fleet-{name}"))
                        .spawn(move || {
                            let run =
                                || mnsim::run_with_stop(&sim, &stop).map_err(|e| e.to_string());
                            match &ns {
                                Some(ns) => in_netns(ns, run).map_err(|e| e.to_string())?,
                                None => run(),
                            }
                        })
                        .map_err(io_err("spawning a fleet thread"))?
                };
                self.fleets.push(Fleet {
                    name,
                    realm: p.realm.clone(),
                    started,
                    timeline,
                    stop,
                    handle: Some(handle),
                });
            }
        }
        self.lifetime = opts.lifetime;
        Ok(())
    }

    /// The fleets that ended on their own.
    pub(crate) fn ended(&self) -> Vec<String> {
        self.fleets
            .iter()
            .filter(|f| f.handle.as_ref().is_none_or(JoinHandle::is_finished))
            .map(|f| f.name.clone())
            .collect()
    }

    /// Stops every fleet (without deregistering) and returns its run.
    pub(crate) fn stop_runs(&mut self) -> Vec<FleetRun> {
        for f in &self.fleets {
            f.stop.store(true, Ordering::SeqCst);
        }
        let lifetime = self.lifetime;
        self.fleets
            .drain(..)
            .map(|mut f| {
                let report = f.handle.take().map_or_else(
                    || Err("not running".to_owned()),
                    |h| {
                        h.join()
                            .unwrap_or_else(|_| Err("the fleet thread panicked".into()))
                    },
                );
                FleetRun {
                    name: f.name,
                    realm: f.realm,
                    started: f.started,
                    timeline: f.timeline,
                    lifetime,
                    report,
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------- bed ----

/// A test bed of clusters, each with its fleets and correspondent: the
/// rack (one cluster serving both realms) or the site (one per realm,
/// [`crate::site`]). [`crate::chaos::Chaos`] runs on either.
pub trait Bed {
    /// The clusters, in a fixed order.
    fn clusters(&self) -> &[Cluster];
    /// Cluster `k` and the lab it runs in (`None`: loopback), borrowed
    /// together so a fault can be applied through the lab.
    fn cluster_lab(&mut self, k: usize) -> (&mut Cluster, Option<&Lab>);
    /// The correspondent receiving cluster `k`'s data, if any.
    fn correspondent(&self, k: usize) -> Option<&Correspondent>;
    /// Starts every fleet ([`Rack::start_fleets`]).
    ///
    /// # Errors
    /// A bad option, a thread.
    fn start_fleets(&mut self, opts: &RackOptions) -> Result<(), RackError>;
    /// Stops every fleet and returns its run ([`Rack::stop_fleet_runs`]).
    fn stop_fleet_runs(&mut self) -> Vec<FleetRun>;
}

impl Bed for Rack {
    fn clusters(&self) -> &[Cluster] {
        std::slice::from_ref(&self.cluster)
    }

    fn cluster_lab(&mut self, _k: usize) -> (&mut Cluster, Option<&Lab>) {
        (&mut self.cluster, self.lab.as_ref())
    }

    fn correspondent(&self, _k: usize) -> Option<&Correspondent> {
        self.correspondent.as_ref()
    }

    fn start_fleets(&mut self, opts: &RackOptions) -> Result<(), RackError> {
        Rack::start_fleets(self, opts)
    }

    fn stop_fleet_runs(&mut self) -> Vec<FleetRun> {
        Rack::stop_fleet_runs(self)
    }
}

// --------------------------------------------------------------- rack ----

/// A running rack: one [`Cluster`] serving both realms, its fleets and
/// correspondent. Dropping it stops the fleets, SIGKILLs every process
/// and removes the namespaces.
pub struct Rack {
    /// Where it runs.
    pub mode: Mode,
    /// The one cluster.
    pub cluster: Cluster,
    fleets: Fleets,
    /// Bindings every node holds once all mobile nodes registered.
    pub expected: usize,
    /// Mobile nodes per realm (stream mobile nodes included).
    pub fleet_sizes: Vec<(String, usize)>,
    /// The correspondent node (namespace rack).
    pub correspondent: Option<Correspondent>,
    plan: Plan,
    lab: Option<Lab>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Rack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rack")
            .field("mode", &self.mode)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Rack {
    /// Builds and starts the rack: namespaces if root and not
    /// `opts.loopback`, loopback otherwise. Returns once every node is up,
    /// a raft leader is elected and the dispatchers forward to all nodes;
    /// the fleets are started by [`Rack::start_fleets`].
    pub fn start(opts: &RackOptions) -> Result<Rack, RackError> {
        let plan = Plan::new(opts.wide);
        if opts.inner == 0 || opts.inner + opts.streams > plan.max_inner {
            return Err(RackError::Options(format!(
                "the inner realm holds 1-{} mobile nodes (streams included)",
                plan.max_inner
            )));
        }
        if opts.outer + opts.streams > plan.max_outer {
            return Err(RackError::Options(format!(
                "the outer pool holds {} home addresses (streams included)",
                plan.max_outer
            )));
        }
        check_rates(opts)?;
        if topo::is_root() && !opts.loopback {
            Self::start_namespaces(opts)
        } else {
            Self::start_loopback(opts)
        }
    }

    /// The rack's one cluster: both realms behind `disp-a`/`disp-b`
    /// (vrid 7 inner, vrid 8 outer), nodes `node-1..3`.
    fn layout(opts: &RackOptions, plan: &Plan) -> ClusterLayout {
        ClusterLayout {
            name: "rack".into(),
            switch: "rack".into(),
            nodes: (1..=3u8)
                .map(|i| (format!("node-{i}"), topo::racks::node_addr(i)))
                .collect(),
            dispatchers: [
                (DISP_HOSTS[0].to_owned(), DISP[0]),
                (DISP_HOSTS[1].to_owned(), DISP[1]),
            ],
            realms: vec![
                LayoutRealm {
                    spec: inner_realm(plan, VIP_INNER, 434, opts.inner + opts.streams),
                    vrid: 7,
                    health_port: 4341,
                    metrics_port: 9435,
                },
                LayoutRealm {
                    spec: outer_realm(plan, VIP_OUTER, 434, opts.outer, opts.streams),
                    vrid: 8,
                    health_port: 4343,
                    metrics_port: 9436,
                },
            ],
            advert_interval_ms: opts.advert_interval_ms,
        }
    }

    fn start_namespaces(opts: &RackOptions) -> Result<Rack, RackError> {
        let dir = tempfile::Builder::new()
            .prefix("hv-rack-")
            .tempdir()
            .map_err(io_err("tempdir"))?;
        // Built (if need be) before the lab exists: its watchdog clock
        // starts with it, and a first build takes minutes.
        crate::supervisor::workspace_binary("haven-ha-node", "ha-node")?;
        crate::supervisor::workspace_binary("haven-dispatcher", "dispatcher")?;
        let plan = Plan::new(opts.wide);
        let lab = topology(opts.expire, &plan)?;
        let mut cluster = Cluster::start(&lab, &Self::layout(opts, &plan), dir.path())?;
        cluster.expected = opts.inner + opts.outer + 2 * opts.streams;
        let cn_ns = lab
            .ns_name("cn")
            .map(str::to_owned)
            .ok_or_else(|| RackError::Options("no host cn".into()))?;
        let correspondent =
            Correspondent::start(&cn_ns, SocketAddrV4::new(CN, CN_PORT), gap_floor(opts))?;
        let rack = Rack {
            mode: Mode::Namespaces,
            expected: cluster.expected,
            cluster,
            fleets: Fleets::default(),
            fleet_sizes: vec![
                ("inner".into(), opts.inner + opts.streams),
                ("outer".into(), opts.outer + opts.streams),
            ],
            correspondent: Some(correspondent),
            plan,
            lab: Some(lab),
            dir,
        };
        rack.cluster.await_ready()?;
        Ok(rack)
    }

    fn start_loopback(opts: &RackOptions) -> Result<Rack, RackError> {
        let dir = tempfile::Builder::new()
            .prefix("hv-rack-")
            .tempdir()
            .map_err(io_err("tempdir"))?;
        let vip_port = free_port();
        let health = free_port();
        let disp_encap = free_port();
        let disp_metrics = free_port();
        let listen: Vec<SocketAddr> = (0..3).map(|_| local(free_port())).collect();
        let peers: Vec<(u64, SocketAddr)> = (1..=3u64).zip(listen.iter().copied()).collect();
        let mut nodes = Vec::new();
        let mut node_entries = String::new();
        for i in 1..=3u8 {
            let id = u64::from(i);
            let me = Ipv4Addr::new(127, 0, 0, 10 + i);
            let encap = SocketAddrV4::new(me, free_port());
            let data = dir.path().join(format!("raft-{i}"));
            let spec = NodeSpec::new(id, local(free_port()), local(free_port()))
                .realm(inner_realm(
                    &Plan::new(opts.wide),
                    Ipv4Addr::LOCALHOST,
                    vip_port,
                    opts.inner,
                ))
                // Raft on 127.0.0.1, adverts from 127.0.0.1x: each peer's
                // dispatch_source names it in withdrawals (docs/dispatcher.md).
                .cluster(ClusterSpec {
                    dispatch_sources: (1..=3u8)
                        .map(|j| (u64::from(j), Ipv4Addr::new(127, 0, 0, 10 + j)))
                        .collect(),
                    ..ClusterSpec::raft("rack", listen[usize::from(i - 1)], &data, peers.clone())
                })
                .dispatch(DispatchSpec {
                    mode: "encap",
                    encap_listen: Some(encap),
                    ..DispatchSpec::l2(
                        me,
                        vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, health)],
                        100,
                    )
                });
            let proc = start_node(&spec, dir.path(), None)?;
            node_entries.push_str(&format!(
                "[[node]]\nid = {i}\naddress = \"{me}\"\nencap_port = {}\n\n",
                encap.port()
            ));
            nodes.push(RackNode {
                id,
                host: format!("node-{i}"),
                metrics: spec.metrics,
                spec,
                proc,
                ns: None,
                killed: false,
                partitioned: false,
            });
        }
        let cfg = format!(
            "[dispatcher]\nvip = \"127.0.0.1\"\nport = {vip_port}\nmode = \"encap\"\n\
             manage_vip = false\naddress = \"127.0.0.1\"\nencap_port = {disp_encap}\n\n\
             [health]\nlisten_port = {health}\nrise = 1\n\n\
             [metrics]\nlisten = \"127.0.0.1:{disp_metrics}\"\n\n{node_entries}"
        );
        let path = dir.path().join("disp.toml");
        std::fs::write(&path, cfg).map_err(io_err(format!("writing {}", path.display())))?;
        let bin = crate::supervisor::workspace_binary("haven-dispatcher", "dispatcher")?;
        // Encap-mode nodes do not bind VIP:port (`[dispatch] bind_vip`
        // defaults to false there), so the dispatcher's socket is the only
        // one on it whatever the start order.
        let proc = Process::spawn(
            "disp-inner",
            Spec::new(&bin)
                .arg("--config")
                .arg(&path)
                .env("RUST_LOG", "info"),
            None,
        )?;
        let cluster = Cluster {
            name: "rack".into(),
            nodes,
            dispatchers: vec![RackDispatcher {
                host: "disp".into(),
                realm: "inner".into(),
                proc,
                metrics: local(disp_metrics),
                killed: false,
            }],
            expected: opts.inner,
            realms: vec!["inner".into()],
            preferred: None,
            proxies: Vec::new(),
        };
        let rack = Rack {
            mode: Mode::Loopback,
            expected: cluster.expected,
            cluster,
            fleets: Fleets::default(),
            fleet_sizes: vec![("inner".into(), opts.inner)],
            correspondent: None,
            plan: Plan::new(opts.wide),
            lab: None,
            dir,
        };
        rack.cluster.await_ready()?;
        Ok(rack)
    }

    /// The lab (namespace rack).
    pub fn lab(&self) -> Option<&Lab> {
        self.lab.as_ref()
    }

    /// Starts one mnsim fleet per realm, plus one of stream mobile nodes
    /// per realm when [`RackOptions::streams`] (threads; in the `mn`
    /// namespace in a namespace rack). They run until [`Rack::stop_fleets`]
    /// or [`Rack::stop_fleet_runs`]; the rack can start them again after
    /// that (new sockets, the same home addresses and NAIs).
    pub fn start_fleets(&mut self, opts: &RackOptions) -> Result<(), RackError> {
        let places: Vec<FleetPlace> = match self.mode {
            Mode::Namespaces => {
                let ns = self
                    .lab
                    .as_ref()
                    .and_then(|l| l.ns_name("mn"))
                    .map(str::to_owned);
                let cn = Some(SocketAddrV4::new(CN, CN_PORT));
                vec![
                    FleetPlace::inner(
                        SocketAddrV4::new(VIP_INNER, 434),
                        ns.clone(),
                        &MN_LAN,
                        self.plan.inner_base,
                        opts,
                        cn,
                    ),
                    FleetPlace::outer(SocketAddrV4::new(VIP_OUTER, 434), ns, &MN_LAN, opts, cn),
                ]
            }
            // The data plane runs in the namespace rack only.
            Mode::Loopback => {
                let vip = SocketAddrV4::new(
                    Ipv4Addr::LOCALHOST,
                    self.cluster.nodes[0].spec.realms[0].port,
                );
                let bind = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 5)];
                vec![FleetPlace {
                    streams: 0,
                    ..FleetPlace::inner(vip, None, &bind, self.plan.inner_base, opts, None)
                }]
            }
        };
        self.fleets.start(&places, opts, self.dir.path())
    }

    /// The fleets that ended on their own (an error: fleets run until
    /// stopped).
    pub fn fleets_ended(&self) -> Vec<String> {
        self.fleets.ended()
    }

    /// Stops the fleets and returns each one's report, by fleet name.
    pub fn stop_fleets(&mut self) -> Vec<(String, Result<Report, String>)> {
        self.stop_fleet_runs()
            .into_iter()
            .map(|r| (r.name, r.report))
            .collect()
    }

    /// Stops the fleets (without deregistering: every binding they were
    /// acknowledged stays) and returns each one's run.
    pub fn stop_fleet_runs(&mut self) -> Vec<FleetRun> {
        self.fleets.stop_runs()
    }

    /// Where each component's Prometheus endpoint answers on loopback.
    pub fn endpoints(&self) -> Vec<(String, String)> {
        self.cluster.endpoints()
    }

    /// The namespace of each host (namespace rack).
    pub fn namespaces(&self) -> Vec<String> {
        let Some(lab) = &self.lab else {
            return Vec::new();
        };
        ["mn", "nat", "inet", "rtr", "cn", "disp-a", "disp-b"]
            .into_iter()
            .map(str::to_owned)
            .chain((1..=3).map(|i| format!("node-{i}")))
            .filter_map(|h| lab.ns_name(&h).map(|ns| format!("{h}={ns}")))
            .collect()
    }

    /// The directory holding configs and raft logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Scrapes every component once.
    pub fn sample(&mut self) -> Sample {
        self.cluster.sample()
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill_node(&mut self, id: u64) -> Result<String, RackError> {
        self.cluster.kill_node(id)
    }

    /// SIGKILLs every dispatcher process on the host that holds the inner
    /// VIP (VRRP Master; loopback: the one dispatcher). Returns its host.
    pub fn kill_active_dispatcher(&mut self, sample: &Sample) -> Result<String, RackError> {
        self.cluster.kill_active_dispatcher(sample)
    }

    /// Restarts everything killed: nodes first (each waits until its
    /// metrics answer), then dispatchers. Returns the names restarted.
    pub fn restart_killed(&mut self) -> Result<Vec<String>, RackError> {
        self.cluster.restart_killed()
    }

    /// Whether anything is killed and not restarted.
    pub fn anything_killed(&self) -> bool {
        self.cluster.anything_killed()
    }

    /// Cuts node `id` off the network ([`Cluster::partition_node`];
    /// namespace rack).
    pub fn partition_node(&mut self, id: u64) -> Result<String, RackError> {
        let lab = self
            .lab
            .as_ref()
            .ok_or_else(|| RackError::Options("partitions need the namespace rack".into()))?;
        self.cluster.partition_node(lab, id)
    }

    /// Undoes [`Rack::partition_node`].
    pub fn heal_node(&mut self, id: u64) -> Result<String, RackError> {
        let lab = self
            .lab
            .as_ref()
            .ok_or_else(|| RackError::Options("partitions need the namespace rack".into()))?;
        self.cluster.heal_node(lab, id)
    }

    /// Runs `havenctl --json ARGS` against node `id`'s admin API (inside
    /// its namespace in a namespace rack).
    pub fn havenctl(&self, id: u64, args: &[&str]) -> Result<serde_json::Value, RackError> {
        self.cluster.havenctl(id, args)
    }

    /// The dispatcher host that holds every VIP when both run (the higher
    /// VRRP priority, which preempts; namespace rack).
    pub fn vip_preferred(&self) -> Option<String> {
        self.cluster.vip_preferred()
    }

    /// The ids of the nodes that run and are not partitioned.
    pub fn live_nodes(&self) -> Vec<u64> {
        self.cluster.live_nodes()
    }

    /// The last lines of a component's log (for error reports).
    pub fn log_tail(&self, name: &str, lines: usize) -> Option<String> {
        self.cluster.log_tail(name, lines)
    }

    /// Every component's log file.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.cluster.logs()
    }
}

impl Drop for Rack {
    fn drop(&mut self) {
        // Fleets first (they hold sockets in `mn`), then the processes and
        // their proxies, and last the namespaces.
        let _ = self.stop_fleets();
        if let Some(c) = self.correspondent.take() {
            c.stop();
        }
        self.cluster.dispatchers.clear();
        self.cluster.nodes.clear();
        self.cluster.proxies.clear();
        self.lab.take();
    }
}

/// Rates must be finite, the stream rate positive.
pub(crate) fn check_rates(opts: &RackOptions) -> Result<(), RackError> {
    let rates_ok = opts.data_rate.is_finite()
        && opts.data_rate >= 0.0
        && opts.stream_rate.is_finite()
        && opts.stream_rate > 0.0;
    if rates_ok {
        Ok(())
    } else {
        Err(RackError::Options(
            "data rates must be finite, the stream rate positive".into(),
        ))
    }
}

pub(crate) fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

pub(crate) fn inner_realm(plan: &Plan, vip: Ipv4Addr, port: u16, count: usize) -> RealmSpec {
    RealmSpec {
        port,
        ..RealmSpec::new("inner", vip, plan.inner_prefix)
    }
    .with_home_address_sas(plan.inner_base, count, SPI, KEY)
}

pub(crate) fn outer_realm(
    plan: &Plan,
    vip: Ipv4Addr,
    port: u16,
    count: usize,
    streams: usize,
) -> RealmSpec {
    RealmSpec {
        port,
        pool: Some(plan.outer_pool.into()),
        ..RealmSpec::new("outer", vip, plan.outer_prefix)
    }
    .with_nai_sas(OUTER_NAI, count, SPI, KEY)
    .with_nai_sas(STREAM_NAI, streams, SPI, KEY)
}

/// The shortest arrival gap the correspondent records: three intervals of
/// the slowest stream, at least 100 ms.
pub(crate) fn gap_floor(opts: &RackOptions) -> Duration {
    let rates = [
        (opts.data_rate > 0.0).then_some(opts.data_rate),
        (opts.streams > 0).then_some(opts.stream_rate),
    ];
    let slowest = rates.into_iter().flatten().fold(f64::INFINITY, f64::min);
    let floor = if slowest.is_finite() {
        3.0 / slowest
    } else {
        1.0
    };
    Duration::from_secs_f64(floor.max(0.1))
}

/// The namespace rack of the module docs (the shape of
/// `tests/dispatcher_rack.rs`, with a second VIP and a second LAN address).
fn topology(expire: Option<Duration>, plan: &Plan) -> Result<Lab, RackError> {
    let mut t = Topology::builder()
        .host("mn")
        .host("nat")
        .host("inet")
        .host("rtr")
        .host("cn")
        .host("disp-a")
        .host("disp-b")
        .link(("mn", "198.19.0.2/24"), ("nat", "198.19.0.1/24"))
        .link(("nat", "203.0.113.2/24"), ("inet", "203.0.113.1/24"))
        .link(("inet", "198.18.254.1/24"), ("rtr", "198.18.254.2/24"))
        .link(("rtr", "198.18.1.1/24"), ("cn", "198.18.1.2/24"))
        .route("mn", "default", "198.19.0.1")
        .route("nat", "default", "203.0.113.1")
        .route("inet", "198.18.0.0/16", "198.18.254.2")
        .route("inet", "192.0.2.0/24", "198.18.254.2")
        .route("inet", "198.51.100.0/24", "198.18.254.2")
        .route("rtr", "default", "198.18.254.1")
        .route("cn", "default", "198.18.1.1")
        .route("disp-a", "default", "198.18.0.1")
        .route("disp-b", "default", "198.18.0.1")
        .router("nat")
        .router("inet")
        .router("rtr")
        .masquerade("nat", "inet");
    if let Some(e) = expire {
        t = t.expire_after(e);
    }
    for i in 1..=3u8 {
        let n = format!("node-{i}");
        t = t
            .host(&n)
            .loopback_addr(&n, &format!("{VIP_INNER}/32"))
            .loopback_addr(&n, &format!("{VIP_OUTER}/32"))
            .dsr(&n)
            // The node routes decapsulated packets on and home-prefix
            // packets into its TUN devices.
            .router(&n)
            .route(&n, "default", "198.18.0.1");
    }
    let addrs: Vec<(String, String)> = std::iter::once(("rtr".to_owned(), "198.18.0.1/24".into()))
        .chain(
            DISP_HOSTS
                .iter()
                .zip(DISP)
                .map(|(h, a)| ((*h).to_owned(), format!("{a}/24"))),
        )
        .chain((1..=3u8).map(|i| {
            (
                format!("node-{i}"),
                format!("{}/24", topo::racks::node_addr(i)),
            )
        }))
        .collect();
    t = t.switch("rack", addrs.iter().map(|(h, a)| (h.as_str(), a.as_str())));
    let lab = t.build()?;
    // The VIPs are on the segment: rtr ARPs for them and the VRRP Master
    // of each answers.
    let dev = lab
        .iface("rtr", "rack")
        .ok_or_else(|| RackError::Options("rtr is not on the rack".into()))?
        .to_owned();
    for vip in [VIP_INNER, VIP_OUTER] {
        let dst = format!("{vip}/32");
        lab.exec("rtr", ["ip", "route", "replace", &dst, "dev", &dev])?;
    }
    // Each home prefix goes via its realm's VIP: the VRRP Master's MAC, the
    // gateway of DESIGN.md § 6.
    for (prefix, vip) in [
        (plan.inner_prefix, VIP_INNER),
        (plan.outer_prefix, VIP_OUTER),
    ] {
        let via = vip.to_string();
        checked(
            &lab,
            "rtr",
            &["ip", "route", "replace", prefix, "via", &via],
        )?;
    }
    // A gateway dispatcher refuses to start while its kernel would forward
    // the same packets (a namespace may inherit forwarding=1).
    for host in DISP_HOSTS {
        let dev = lab
            .iface(host, "rack")
            .ok_or_else(|| RackError::Options(format!("{host} is not on the rack")))?
            .to_owned();
        let key = format!("net.ipv4.conf.{dev}.forwarding=0");
        checked(&lab, host, &["sysctl", "-qw", &key])?;
    }
    // The mobile nodes' second LAN address: where they move to.
    let mn_dev = lab
        .iface("mn", "nat")
        .ok_or_else(|| RackError::Options("mn is not linked to nat".into()))?
        .to_owned();
    let second = format!("{}/24", MN_LAN[1]);
    lab.exec("mn", ["ip", "addr", "add", &second, "dev", &mn_dev])?;
    Ok(lab)
}

/// Runs `args` in `host`'s namespace; an exit status other than 0 is an
/// error naming the command and its stderr.
pub(crate) fn checked(lab: &Lab, host: &str, args: &[&str]) -> Result<(), RackError> {
    let out = lab.exec(host, args.iter().copied())?;
    if out.status.success() {
        return Ok(());
    }
    Err(RackError::Options(format!(
        "{host}: {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

// ------------------------------------------------------------ metrics ----

/// `GET /metrics` over HTTP/1.0 from `addr`, bounded to about 2 s.
pub fn http_metrics(addr: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("no HTTP header"))?;
    let code = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || code != Some("200") {
        return Err(io::Error::other(format!(
            "HTTP {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(body.to_owned())
}

/// The sum of every sample named `name` whose labels include all of
/// `labels`; `None` if there is none.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let (lbl, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((lbl, v)) => (lbl, v),
                None => continue,
            },
            None => ("", rest),
        };
        if !labels
            .iter()
            .all(|(k, v)| lbl.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            continue;
        }
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        total = Some(total.unwrap_or(0.0) + v);
    }
    total
}

/// Per-label sums: `label value → sum` over the samples of `name`.
fn by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let key = format!("{label}=\"");
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((lbl, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if let Some(val) = lbl
            .split(',')
            .find_map(|kv| kv.strip_prefix(key.as_str()))
            .and_then(|v| v.strip_suffix('"'))
        {
            *out.entry(val.to_owned()).or_insert(0.0) += v;
        }
    }
    out
}

/// One node at one instant.
#[derive(Debug, Clone, Default)]
pub struct NodeSample {
    /// Raft id.
    pub id: u64,
    /// The process runs.
    pub running: bool,
    /// Its metrics answered.
    pub up: bool,
    /// Raft.
    pub is_leader: bool,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Raft term.
    pub term: u64,
    /// Raft applied and commit index.
    pub applied: u64,
    /// Commit index.
    pub commit: u64,
    /// Bindings per realm.
    pub bindings: BTreeMap<String, u64>,
    /// Registrations accepted / denied since the process started.
    pub accepted: f64,
    /// Denied.
    pub denied: f64,
    /// Data-plane packets brought home from mobile nodes (reverse
    /// tunnelled, decapsulated and sent on) since the process started.
    pub dp_in: f64,
    /// Data-plane packets tunnelled to mobile nodes (forward).
    pub dp_out: f64,
}

impl NodeSample {
    fn from_metrics(id: u64, running: bool, text: Option<&str>) -> Self {
        let Some(t) = text else {
            return Self {
                id,
                running,
                ..Self::default()
            };
        };
        let g = |n: &str| sum(t, n, &[]).unwrap_or(0.0) as u64;
        Self {
            id,
            running,
            up: true,
            is_leader: g("haven_raft_is_leader") == 1,
            leader: g("haven_raft_leader_id"),
            term: g("haven_raft_term"),
            applied: g("haven_raft_applied_index"),
            commit: g("haven_raft_commit_index"),
            bindings: by_label(t, "haven_bindings", "realm")
                .into_iter()
                .map(|(k, v)| (k, v as u64))
                .collect(),
            accepted: sum(t, "haven_registrations_total", &[("result", "accepted")]).unwrap_or(0.0),
            denied: sum(t, "haven_registrations_total", &[("result", "denied")]).unwrap_or(0.0),
            dp_in: sum(
                t,
                "haven_dataplane_packets_total",
                &[("direction", "reverse")],
            )
            .unwrap_or(0.0),
            dp_out: sum(
                t,
                "haven_dataplane_packets_total",
                &[("direction", "forward")],
            )
            .unwrap_or(0.0),
        }
    }

    /// Bindings over all realms.
    pub fn total_bindings(&self) -> u64 {
        self.bindings.values().sum()
    }
}

/// One dispatcher process at one instant.
#[derive(Debug, Clone, Default)]
pub struct DispSample {
    /// Its host.
    pub host: String,
    /// Its realm.
    pub realm: String,
    /// The process runs.
    pub running: bool,
    /// Its metrics answered.
    pub up: bool,
    /// VRRP state: 0 Initialize, 1 Backup, 2 Master (no VRRP: absent).
    pub vrrp: Option<u8>,
    /// Forwarding (holds the VIP).
    pub active: bool,
    /// Datagrams forwarded per node id.
    pub packets: BTreeMap<String, f64>,
    /// Node up per node id.
    pub node_up: BTreeMap<String, bool>,
}

impl DispSample {
    fn from_metrics(host: &str, realm: &str, running: bool, text: Option<&str>) -> Self {
        let base = Self {
            host: host.to_owned(),
            realm: realm.to_owned(),
            running,
            ..Self::default()
        };
        let Some(t) = text else { return base };
        Self {
            up: true,
            vrrp: sum(t, "haven_dispatcher_vrrp_state", &[]).map(|v| v as u8),
            active: sum(t, "haven_dispatcher_active", &[]) == Some(1.0),
            packets: by_label(t, "haven_dispatcher_packets_total", "node"),
            node_up: by_label(t, "haven_dispatcher_node_up", "node")
                .into_iter()
                .map(|(k, v)| (k, v == 1.0))
                .collect(),
            ..base
        }
    }

    /// `disp-a/inner`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.host, self.realm)
    }
}

/// Everything at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When.
    pub at: Instant,
    /// The cluster sampled ([`Cluster::name`]): node ids repeat across a
    /// site's clusters.
    pub cluster: String,
    /// Nodes by id order.
    pub nodes: Vec<NodeSample>,
    /// Dispatchers.
    pub dispatchers: Vec<DispSample>,
}

impl Sample {
    /// The leader every answering node agrees on, if any (and it answers).
    pub fn leader(&self) -> Option<u64> {
        let up: Vec<&NodeSample> = self.nodes.iter().filter(|n| n.up).collect();
        let l = up.first()?.leader;
        (l != 0 && up.iter().all(|n| n.leader == l) && up.iter().any(|n| n.id == l && n.is_leader))
            .then_some(l)
    }

    /// Packets forwarded to each node over all dispatchers.
    pub fn packets_per_node(&self) -> BTreeMap<u64, f64> {
        let mut out = BTreeMap::new();
        for d in &self.dispatchers {
            for (n, p) in &d.packets {
                if let Ok(id) = n.parse::<u64>() {
                    *out.entry(id).or_insert(0.0) += p;
                }
            }
        }
        out
    }

    /// Every host whose dispatcher for `realm` says it holds the VIP
    /// (exactly one when the pair is healthy).
    pub fn vip_owners(&self, realm: &str) -> Vec<String> {
        self.dispatchers
            .iter()
            .filter(|d| d.realm == realm && d.active)
            .map(|d| d.host.clone())
            .collect()
    }

    /// The host holding `realm`'s VIP.
    pub fn vip_owner(&self, realm: &str) -> Option<String> {
        self.dispatchers
            .iter()
            .find(|d| d.realm == realm && d.active)
            .map(|d| d.host.clone())
    }
}

// ------------------------------------------------------------ monitor ----

/// What the rack is waiting to see after an action.
#[derive(Debug, Clone)]
enum Pending {
    /// After a node kill: every live node holds every binding, agrees on a
    /// live leader, and registrations were accepted since.
    HealAfterKill {
        since: Instant,
        accepted_before: f64,
    },
    /// After a restart: every node up with every binding and the restarted
    /// ones caught up with the leader's commit index.
    CatchUp { since: Instant, nodes: Vec<u64> },
    /// After a dispatcher kill: each realm has an active dispatcher again
    /// and registrations were accepted since.
    Takeover {
        since: Instant,
        accepted_before: f64,
    },
    /// After a dispatcher restart: every realm's VIP is back with `host`
    /// alone (the preferred dispatcher preempts, RFC 5798 § 6.4.2), and
    /// the restarted dispatcher answers.
    VipBack { since: Instant, host: String },
}

impl Pending {
    /// What is awaited, for an operator's line.
    fn what(&self) -> String {
        match self {
            Self::HealAfterKill { .. } => "the node kill's heal".into(),
            Self::CatchUp { nodes, .. } => format!("restarted nodes catching up ({nodes:?})"),
            Self::Takeover { .. } => "the dispatcher takeover".into(),
            Self::VipBack { host, .. } => format!("the VIPs back on {host}"),
        }
    }
}

/// Turns samples into events and rates.
#[derive(Debug, Default)]
pub struct Monitor {
    prev: Option<Sample>,
    pending: Vec<Pending>,
    registered: bool,
    last_leader: Option<u64>,
    /// Accepted registrations summed over processes' lifetimes (restarts
    /// reset a node's counters; deltas are summed instead).
    pub accepted_total: f64,
    /// Denied, the same way.
    pub denied_total: f64,
    /// Registrations per second over the last interval.
    pub accepted_rate: f64,
    /// Denied per second.
    pub denied_rate: f64,
    /// Packets per second per node through the dispatchers.
    pub packet_rate: BTreeMap<u64, f64>,
    /// Data-plane packets per second per node: (in from mobile nodes, out
    /// to mobile nodes).
    pub dp_rate: BTreeMap<u64, (f64, f64)>,
    /// Data-plane packets in (from mobile nodes) over processes' lifetimes.
    pub dp_in_total: f64,
    /// Data-plane packets out (to mobile nodes), the same way.
    pub dp_out_total: f64,
    /// Raft leader changes seen.
    pub leader_changes: u64,
    /// VIP owner changes seen.
    pub vip_changes: u64,
    /// Heals seen (after a node kill, a restart or a dispatcher kill).
    pub heals: u64,
    /// Bindings expected per node.
    pub expected: u64,
}

impl Monitor {
    /// A monitor expecting `expected` bindings on every node.
    pub fn new(expected: usize) -> Self {
        Self {
            expected: expected as u64,
            ..Self::default()
        }
    }

    /// A node was killed.
    pub fn node_killed(&mut self) {
        self.pending
            .retain(|p| !matches!(p, Pending::HealAfterKill { .. }));
        self.pending.push(Pending::HealAfterKill {
            since: Instant::now(),
            accepted_before: self.accepted_total,
        });
    }

    /// Nodes were restarted.
    /// Returns an event line if a node kill had not healed yet.
    pub fn nodes_restarted(&mut self, nodes: Vec<u64>) -> Option<String> {
        let unhealed = self
            .pending
            .iter()
            .any(|p| matches!(p, Pending::HealAfterKill { .. }));
        self.pending
            .retain(|p| !matches!(p, Pending::HealAfterKill { .. }));
        self.pending.push(Pending::CatchUp {
            since: Instant::now(),
            nodes,
        });
        unhealed.then(|| "event unhealed: the node kill had not healed before the restart".into())
    }

    /// The active dispatcher was killed.
    pub fn dispatcher_killed(&mut self) {
        self.pending.push(Pending::Takeover {
            since: Instant::now(),
            accepted_before: self.accepted_total,
        });
    }

    /// Dispatchers were restarted; `preferred` (the higher VRRP priority,
    /// [`Cluster::vip_preferred`]) is expected to take every VIP back.
    pub fn dispatchers_restarted(&mut self, preferred: Option<String>) {
        if let Some(host) = preferred {
            self.pending.push(Pending::VipBack {
                since: Instant::now(),
                host,
            });
        }
    }

    /// What the monitor still waits to see (empty once settled).
    pub fn awaiting(&self) -> Vec<String> {
        let mut out: Vec<String> = self.pending.iter().map(Pending::what).collect();
        if !self.registered {
            out.push("every mobile node registered".into());
        }
        out
    }

    /// Whether every mobile node has been seen registered (on every node).
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// Whether every action's heal has been seen.
    pub fn settled(&self) -> bool {
        self.pending.is_empty() && self.registered
    }

    /// Takes in a new sample; returns the event lines it caused.
    pub fn observe(&mut self, s: &Sample) -> Vec<String> {
        let mut ev = Vec::new();
        if let Some(p) = self.prev.take() {
            let dt = s.at.duration_since(p.at).as_secs_f64().max(1e-3);
            let (mut acc, mut den) = (0.0, 0.0);
            self.dp_rate.clear();
            for n in &s.nodes {
                let Some(o) = p.nodes.iter().find(|o| o.id == n.id) else {
                    continue;
                };
                let (din, dout) = if n.up && o.up {
                    acc += (n.accepted - o.accepted).max(0.0);
                    den += (n.denied - o.denied).max(0.0);
                    ((n.dp_in - o.dp_in).max(0.0), (n.dp_out - o.dp_out).max(0.0))
                } else if n.up {
                    // Restarted: everything it counted is new.
                    acc += n.accepted;
                    den += n.denied;
                    (n.dp_in, n.dp_out)
                } else {
                    (0.0, 0.0)
                };
                self.dp_in_total += din;
                self.dp_out_total += dout;
                self.dp_rate.insert(n.id, (din / dt, dout / dt));
            }
            self.accepted_total += acc;
            self.denied_total += den;
            self.accepted_rate = acc / dt;
            self.denied_rate = den / dt;
            let (now, before) = (s.packets_per_node(), p.packets_per_node());
            self.packet_rate = now
                .iter()
                .map(|(id, v)| {
                    (
                        *id,
                        (v - before.get(id).copied().unwrap_or(0.0)).max(0.0) / dt,
                    )
                })
                .collect();
            for n in &s.nodes {
                let o = p.nodes.iter().find(|o| o.id == n.id);
                if n.up && o.is_some_and(|o| !o.up) {
                    ev.push(format!("event node-{} up", n.id));
                }
                if !n.up && o.is_some_and(|o| o.up) {
                    ev.push(format!("event node-{} down", n.id));
                }
            }
            if let Some(b) = s.leader().filter(|b| self.last_leader != Some(*b)) {
                let term = s.nodes.iter().map(|n| n.term).max().unwrap_or(0);
                match self.last_leader {
                    Some(a) => {
                        self.leader_changes += 1;
                        ev.push(format!("event leader node-{b} term={term} (was node-{a})"));
                    }
                    None => ev.push(format!("event leader node-{b} term={term}")),
                }
            }
            let mut realms: Vec<&str> = s.dispatchers.iter().map(|d| d.realm.as_str()).collect();
            realms.dedup();
            for realm in realms {
                let (a, b) = (p.vip_owner(realm), s.vip_owner(realm));
                if a != b {
                    if let Some(b) = &b {
                        if a.is_some() {
                            self.vip_changes += 1;
                        }
                        ev.push(format!("event vip {realm} owner {b}"));
                    }
                }
            }
            for d in s.dispatchers.iter().filter(|d| d.active) {
                let Some(o) = p
                    .dispatchers
                    .iter()
                    .find(|o| o.name() == d.name() && o.active)
                else {
                    continue;
                };
                for (node, up) in &d.node_up {
                    if o.node_up.get(node).is_some_and(|was| was != up) {
                        let state = if *up { "up" } else { "down" };
                        ev.push(format!("event {} sees node-{node} {state}", d.name()));
                    }
                }
            }
        }
        if let Some(l) = s.leader() {
            self.last_leader = Some(l);
        }
        let live: Vec<&NodeSample> = s.nodes.iter().filter(|n| n.running).collect();
        let full = |n: &&NodeSample| n.up && n.total_bindings() == self.expected;
        let all_full = !live.is_empty() && live.iter().all(full);
        let leader_ok = s.leader().is_some();
        if !self.registered && all_full && leader_ok && s.nodes.iter().all(|n| n.running) {
            self.registered = true;
            ev.push(format!(
                "event registered bindings={} on {}/{} nodes",
                self.expected,
                live.len(),
                s.nodes.len()
            ));
        }
        let accepted_total = self.accepted_total;
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let done = match &p {
                Pending::HealAfterKill {
                    since,
                    accepted_before,
                } => (all_full && leader_ok && accepted_total > *accepted_before).then(|| {
                    format!(
                        "event healed bindings={} on {}/{} live nodes after {:.1}s",
                        self.expected,
                        live.len(),
                        live.len(),
                        since.elapsed().as_secs_f64()
                    )
                }),
                Pending::CatchUp { since, nodes } => {
                    let commit = s
                        .leader()
                        .and_then(|l| s.nodes.iter().find(|n| n.id == l))
                        .map_or(u64::MAX, |l| l.commit);
                    let caught = nodes.iter().all(|id| {
                        s.nodes
                            .iter()
                            .find(|n| n.id == *id)
                            .is_some_and(|n| n.up && n.applied + 2 >= commit)
                    });
                    let everyone = s.nodes.iter().all(|n| n.running);
                    (everyone && all_full && leader_ok && caught).then(|| {
                        let names: Vec<String> =
                            nodes.iter().map(|id| format!("node-{id}")).collect();
                        format!(
                            "event healed bindings={} on {}/{} nodes after {:.1}s (caught up: {})",
                            self.expected,
                            live.len(),
                            s.nodes.len(),
                            since.elapsed().as_secs_f64(),
                            if names.is_empty() {
                                "-".to_owned()
                            } else {
                                names.join(",")
                            }
                        )
                    })
                }
                Pending::Takeover {
                    since,
                    accepted_before,
                } => {
                    let mut realms: Vec<&str> =
                        s.dispatchers.iter().map(|d| d.realm.as_str()).collect();
                    realms.dedup();
                    let owned = realms.iter().all(|r| s.vip_owner(r).is_some());
                    (owned && all_full && accepted_total > *accepted_before).then(|| {
                        format!(
                            "event healed dispatcher takeover, bindings={} on {}/{} nodes after {:.1}s",
                            self.expected,
                            live.len(),
                            s.nodes.len(),
                            since.elapsed().as_secs_f64()
                        )
                    })
                }
                Pending::VipBack { since, host } => {
                    let mut realms: Vec<&str> =
                        s.dispatchers.iter().map(|d| d.realm.as_str()).collect();
                    realms.dedup();
                    let back = realms.iter().all(|r| s.vip_owners(r) == [host.as_str()]);
                    let answering = s
                        .dispatchers
                        .iter()
                        .filter(|d| d.host == *host)
                        .all(|d| d.up);
                    (back && answering).then(|| {
                        format!(
                            "event healed vip back on {host} after {:.1}s",
                            since.elapsed().as_secs_f64()
                        )
                    })
                }
            };
            match done {
                Some(line) => {
                    self.heals += 1;
                    ev.push(line);
                }
                None => keep.push(p),
            }
        }
        self.pending = keep;
        self.prev = Some(s.clone());
        ev
    }
}

// ------------------------------------------------------- correspondent ----

/// A flow's interruption at the correspondent: nothing from `flow` between
/// `from` and `from + len` (recorded when the next packet arrives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrivalGap {
    /// The flow: the mobile node's id in its data payloads ([`CnFlow::id`]).
    pub flow: u32,
    /// The arrival before the gap.
    pub from: Instant,
    /// Until the arrival after it.
    pub len: Duration,
}

/// One flow at the correspondent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CnFlow {
    /// The mobile node's id in its data payloads
    /// ([`crate::mnsim::DataConfig::first_id`]).
    pub id: u32,
    /// The home address it came from last.
    pub source: Ipv4Addr,
    /// Data packets received.
    pub received: u64,
    /// The last arrival.
    pub last: Instant,
}

/// What the correspondent has seen so far.
#[derive(Debug, Clone, Default)]
pub struct CnSnapshot {
    /// Data packets received (mnsim payloads).
    pub received: u64,
    /// Echoes sent back to the home addresses.
    pub echoed: u64,
    /// Datagrams that were not mnsim data.
    pub foreign: u64,
    /// Per flow, by home address.
    pub flows: Vec<CnFlow>,
    /// Every gap longer than the correspondent's floor, in arrival order.
    pub gaps: Vec<ArrivalGap>,
}

#[derive(Debug, Default)]
struct CnState {
    /// By the payload's mobile-node id: (last source, received, last).
    flows: BTreeMap<u32, (Ipv4Addr, u64, Instant)>,
    gaps: Vec<ArrivalGap>,
    received: u64,
    echoed: u64,
    foreign: u64,
}

/// At most this many gaps are kept (a bound on memory, not a figure).
const MAX_GAPS: usize = 200_000;

/// The correspondent node `cn`: a UDP socket on [`CN`]:[`CN_PORT`] that
/// receives the mobile nodes' data after a node decapsulated it, records
/// per-flow arrival gaps (the data-plane failover gap of DESIGN.md § 9)
/// and echoes every packet back to the home address it came from, so the
/// return path crosses the dispatchers' gateway and the nodes' TUN devices
/// (DESIGN.md § 6).
#[derive(Debug)]
pub struct Correspondent {
    /// Where it listens (inside `cn`).
    pub addr: SocketAddrV4,
    /// Gaps shorter than this are not recorded.
    pub gap_floor: Duration,
    state: Arc<std::sync::Mutex<CnState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Correspondent {
    /// Starts the correspondent on `addr` inside namespace `ns`; arrival
    /// gaps shorter than `gap_floor` are not recorded.
    ///
    /// # Errors
    /// The namespace or the socket.
    pub fn start(ns: &str, addr: SocketAddrV4, gap_floor: Duration) -> Result<Self, RackError> {
        // A socket stays in the namespace it was made in.
        let sock = in_netns(ns, || std::net::UdpSocket::bind(addr))
            .map_err(io_err("entering the cn namespace"))?
            .map_err(io_err(format!("binding the correspondent on {addr}")))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(io_err("set_read_timeout"))?;
        let state = Arc::new(std::sync::Mutex::new(CnState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("correspondent".into())
                .spawn(move || {
                    let mut buf = vec![0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, SocketAddr::V4(src))) = sock.recv_from(&mut buf) else {
                            continue;
                        };
                        let now = Instant::now();
                        let payload = buf.get(..n).unwrap_or_default();
                        let id = parse_data_payload(payload).map(|(mn, _, _)| mn);
                        {
                            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                            let Some(flow) = id else {
                                st.foreign += 1;
                                continue;
                            };
                            st.received += 1;
                            // A flow is a mobile node, not a home address: an
                            // NAI mobile node whose binding lapsed may come
                            // back from another pool address (RFC 2794).
                            let prev = st.flows.insert(flow, (*src.ip(), 0, now));
                            let (_, count, last) = prev.unwrap_or((*src.ip(), 0, now));
                            st.flows.insert(flow, (*src.ip(), count + 1, now));
                            let len = now.saturating_duration_since(last);
                            if prev.is_some() && len > gap_floor && st.gaps.len() < MAX_GAPS {
                                st.gaps.push(ArrivalGap {
                                    flow,
                                    from: last,
                                    len,
                                });
                            }
                        }
                        // The echo goes to the home address: through rtr, the
                        // dispatcher's gateway path and a node's tunnel.
                        if sock.send_to(payload, src).is_ok() {
                            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                            st.echoed += 1;
                        }
                    }
                })
                .map_err(io_err("spawning the correspondent"))?
        };
        Ok(Correspondent {
            addr,
            gap_floor,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// What it has seen so far.
    pub fn snapshot(&self) -> CnSnapshot {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        CnSnapshot {
            received: st.received,
            echoed: st.echoed,
            foreign: st.foreign,
            flows: st
                .flows
                .iter()
                .map(|(id, (source, received, last))| CnFlow {
                    id: *id,
                    source: *source,
                    received: *received,
                    last: *last,
                })
                .collect(),
            gaps: st.gaps.clone(),
        }
    }

    /// Stops the receiver.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Correspondent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// -------------------------------------------------------------- proxy ----

/// A TCP listener on 127.0.0.1 (this namespace) that forwards every
/// connection to `target` inside namespace `ns`: each component's metrics
/// endpoint becomes reachable from the host's loopback.
#[derive(Debug)]
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(ns: &str, target: SocketAddr) -> Result<Proxy, RackError> {
        let l = TcpListener::bind(local(0)).map_err(io_err("binding a metrics proxy"))?;
        l.set_nonblocking(true).map_err(io_err("set_nonblocking"))?;
        let addr = l.local_addr().map_err(io_err("local_addr"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ns = ns.to_owned();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("metrics-proxy".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((c, _)) => {
                                let ns = ns.clone();
                                std::thread::spawn(move || forward(c, &ns, target));
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                })
                .map_err(io_err("spawning a metrics proxy"))?
        };
        Ok(Proxy {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies one connection both ways; the upstream socket is created inside
/// the namespace (a socket stays in the namespace it was made in).
fn forward(client: TcpStream, ns: &str, target: SocketAddr) {
    let Ok(Ok(up)) = in_netns(ns, || {
        TcpStream::connect_timeout(&target, Duration::from_millis(500))
    }) else {
        return;
    };
    let _ = client.set_nonblocking(false);
    for s in [&client, &up] {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    }
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || {
        let _ = io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let (mut u, mut c) = (up, client);
    let _ = io::copy(&mut u, &mut c);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "# TYPE x counter\n\
haven_registrations_total{realm=\"inner\",code=\"0\",result=\"accepted\"} 10\n\
haven_registrations_total{realm=\"outer\",code=\"0\",result=\"accepted\"} 5\n\
haven_registrations_total{realm=\"outer\",code=\"131\",result=\"denied\"} 2\n\
haven_bindings{realm=\"inner\"} 7\n\
haven_bindings{realm=\"outer\"} 3\n\
haven_raft_is_leader 1\nhaven_raft_leader_id 2\nhaven_raft_term 4\n\
haven_raft_applied_index 40\nhaven_raft_commit_index 41\n";

    #[test]
    fn node_sample_from_metrics() {
        let n = NodeSample::from_metrics(2, true, Some(NODE));
        assert!(n.up && n.is_leader);
        assert_eq!((n.leader, n.term, n.applied, n.commit), (2, 4, 40, 41));
        assert_eq!(n.total_bindings(), 10);
        assert_eq!(n.bindings.get("outer"), Some(&3));
        assert_eq!((n.accepted, n.denied), (15.0, 2.0));
        assert_eq!(sum(NODE, "haven_raft_term_x", &[]), None);
        let down = NodeSample::from_metrics(3, false, None);
        assert!(!down.up && !down.running);
    }

    fn sample(nodes: &[(u64, bool, u64, f64)], leader: u64) -> Sample {
        Sample {
            at: Instant::now(),
            cluster: "rack".into(),
            nodes: nodes
                .iter()
                .map(|&(id, up, b, acc)| NodeSample {
                    id,
                    running: up,
                    up,
                    is_leader: id == leader,
                    leader,
                    term: 2,
                    applied: 10,
                    commit: 10,
                    bindings: [("inner".to_owned(), b)].into(),
                    accepted: acc,
                    denied: 0.0,
                    dp_in: 0.0,
                    dp_out: 0.0,
                })
                .collect(),
            dispatchers: Vec::new(),
        }
    }

    #[test]
    fn monitor_sees_registration_kill_heal_and_catch_up() {
        let mut m = Monitor::new(5);
        assert!(
            m.observe(&sample(&[(1, true, 0, 0.0), (2, true, 0, 0.0)], 1))
                .is_empty()
        );
        let ev = m.observe(&sample(&[(1, true, 5, 5.0), (2, true, 5, 0.0)], 1));
        assert!(
            ev.iter()
                .any(|e| e.starts_with("event registered bindings=5 on 2/2")),
            "{ev:?}"
        );
        m.node_killed();
        // Node 1 (the leader) is gone: no leader yet, no heal.
        let ev = m.observe(&sample(&[(1, false, 0, 0.0), (2, true, 5, 0.0)], 0));
        assert!(ev.iter().any(|e| e == "event node-1 down"), "{ev:?}");
        assert!(!ev.iter().any(|e| e.contains("healed")));
        let ev = m.observe(&sample(&[(1, false, 0, 0.0), (2, true, 5, 3.0)], 2));
        assert!(
            ev.iter().any(|e| e.starts_with("event leader node-2")),
            "{ev:?}"
        );
        assert!(
            ev.iter()
                .any(|e| e.starts_with("event healed bindings=5 on 1/1 live nodes")),
            "{ev:?}"
        );
        assert_eq!(m.nodes_restarted(vec![1]), None);
        // Restarted but still empty: not healed.
        let ev = m.observe(&sample(&[(1, true, 2, 0.0), (2, true, 5, 3.0)], 2));
        assert!(!ev.iter().any(|e| e.contains("healed")), "{ev:?}");
        let ev = m.observe(&sample(&[(1, true, 5, 0.0), (2, true, 5, 4.0)], 2));
        assert!(
            ev.iter()
                .any(|e| e.starts_with("event healed bindings=5 on 2/2 nodes")
                    && e.contains("caught up: node-1")),
            "{ev:?}"
        );
        assert!(m.settled());
        assert_eq!(m.accepted_total, 9.0);
    }
}
