//! # The two-cluster site (issue 8 item 3; seed 000 figures 9-11, seed 002
//! figures 13-14)
//!
//! Seed 000's deployment: an inner haven cluster in the intranet, an outer
//! one in the DMZ beside the VPN gateway, an outside with NATed access
//! networks and an inside access network. Each cluster is one
//! [`Cluster`] (three Raft nodes with durable logs and the data plane on,
//! an l2 dispatcher pair that is its home prefix's gateway), built by the
//! same code as the rack's one cluster, placed twice.
//!
//! ```text
//!  OUTSIDE   mn ─ nat1 ─┐  mn ─ nat2 ─┤  ofleet ─ onat ─┤  ocn ─ inet
//!  DMZ       switch dmz 203.0.113.64/26: inet, gw, odisp-a/b, onode-1..3
//!            (OUTER VIP 203.0.113.100, vrid 8, home prefix 198.18.128.0/20)
//!  INTRANET  switch intra 198.18.100.0/24: gw, irtr, idisp-a/b, cn,
//!            inode-1..3 (INNER VIP 198.18.100.100, vrid 7, 198.18.16.0/20)
//!  INSIDE    mn ─ irtr (198.18.102.0/24), ifleet ─ irtr (198.18.103.0/24)
//! ```
//!
//! The address plan ([`plan`]) is a contract with the dual-client rig
//! (`crate::e2e`): `inet` has no route into the intranet, so a direct inner
//! registration from outside gets ICMP network unreachable (seed 004
//! § 3.4's domain detection relies on it). The site starts nothing in `mn`
//! or `gw` (the rig starts strongSwan and the dual mobile node there), and
//! its fleets only on [`Site::start_fleets`]:
//!
//! * the inner fleet in `ifleet`: fixed home addresses from 198.18.16.10
//!   (RFC 5944 § 3.6), registering directly with the inner VIP from its
//!   co-located care-of addresses. No NAT on that path, so the mobile
//!   nodes set the UDP Tunnel Request's F bit (RFC 3519 § 3.1): the home
//!   agent then tunnels in UDP anyway, which is what mnsim's user-space
//!   data plane speaks (it has no IP-in-IP);
//! * the outer fleet in `ofleet` behind the `onat` masquerade: NAIs, home
//!   addresses from the pool (RFC 2794), UDP tunnelling because of the NAT;
//! * stream mobile nodes per realm, as in the rack; the inner realm's data
//!   goes to `cn`, the outer realm's to `ocn`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fleet::RealmSpec;
use crate::rack::{
    Bed, CN_PORT, Cluster, ClusterLayout, Correspondent, FleetPlace, FleetRun, Fleets, LayoutRealm,
    MAX_WIDE, Plan, RackError, RackOptions, check_rates, checked, gap_floor, inner_realm, io_err,
    outer_realm,
};
use crate::topo::{Lab, Topology};

/// The site's address plan: a contract with the dual-client rig
/// (`crate::e2e`), which builds on these names and values.
pub mod plan {
    use std::net::Ipv4Addr;

    /// `mn`'s address behind `nat1` (its first access network).
    pub const MN_NAT1: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 2);
    /// `nat1`'s inside address, `mn`'s default gateway at start.
    pub const NAT1_INSIDE: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 1);
    /// `mn`'s address behind `nat2` (not configured by the site).
    pub const MN_NAT2: Ipv4Addr = Ipv4Addr::new(198, 19, 11, 2);
    /// `nat2`'s inside address.
    pub const NAT2_INSIDE: Ipv4Addr = Ipv4Addr::new(198, 19, 11, 1);
    /// `mn`'s inside address, behind `irtr` (not configured by the site).
    pub const MN_INSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 102, 2);
    /// `irtr` on the inside access network.
    pub const INSIDE_GW: Ipv4Addr = Ipv4Addr::new(198, 18, 102, 1);
    /// The inner cluster's VIP (on the intranet segment; VRRP vrid 7).
    pub const INNER_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 100);
    /// The inner home prefix.
    pub const INNER_PREFIX: &str = "198.18.16.0/20";
    /// The dual mobile node's inner home address.
    pub const INNER_HOA: Ipv4Addr = Ipv4Addr::new(198, 18, 16, 5);
    /// Its SPI with the inner cluster.
    pub const INNER_SPI: u32 = 1000;
    /// Its MN-HA key with the inner cluster: a 16-octet lab constant.
    pub const DUAL_INNER_KEY: &[u8] = b"site-dual-inner!";
    /// The outer cluster's VIP (on the DMZ segment; VRRP vrid 8).
    pub const OUTER_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
    /// The outer home prefix.
    pub const OUTER_PREFIX: &str = "198.18.128.0/20";
    /// The dual mobile node's fixed outer home address (outside the pool).
    pub const OUTER_HOA: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 5);
    /// Its SPI with the outer cluster.
    pub const OUTER_SPI: u32 = 2000;
    /// Its MN-HA key with the outer cluster: a 16-octet lab constant.
    pub const DUAL_OUTER_KEY: &[u8] = b"site-dual-outer!";
    /// The intranet correspondent (inner fleet data, the dual MN's streams).
    pub const CN: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
    /// The outside correspondent (outer fleet data).
    pub const OCN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 18);
    /// The VPN gateway's public (DMZ) address.
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
    /// The VPN gateway's intranet address.
    pub const GATEWAY_INTRANET: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
    /// The VPN's tunnel inner address pool.
    pub const TIA_POOL: &str = "198.18.200.0/24";
    /// The VPN's traffic selector: the intranet.
    pub const INTRANET_TS: &str = "198.18.100.0/24";
}

/// `inet` on the DMZ segment: the DMZ hosts' default gateway.
const INET_DMZ: &str = "203.0.113.65";
/// `irtr` on the intranet.
const IRTR: &str = "198.18.100.2";
/// The inside access networks behind `irtr` (mn's and ifleet's).
const INSIDE_NETS: &str = "198.18.102.0/23";
/// The inner fleet's two LAN addresses (the second is where it moves).
const IFLEET_LAN: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 18, 103, 2),
    Ipv4Addr::new(198, 18, 103, 3),
];
/// The outer fleet's, behind `onat`.
const OFLEET_LAN: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 19, 12, 2), Ipv4Addr::new(198, 19, 12, 3)];
/// The index of the inner cluster in [`Site::clusters`], of its
/// correspondent in [`Site::correspondents`].
pub const INNER: usize = 0;
/// The outer cluster's.
pub const OUTER: usize = 1;

/// The site's size and timing.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    /// The fleets and timings, as the rack takes them: `inner`, `outer`,
    /// `streams` (per realm), lifetimes, rates, retransmission timeouts,
    /// `advert_interval_ms`, `timelines` and `expire` (the lab watchdog).
    /// The site always has /20 home prefixes and runs in namespaces, so
    /// `wide` and `loopback` are ignored.
    pub load: RackOptions,
}

impl Default for SiteOptions {
    /// A small site for the dual-client tests: no fleet mobile nodes,
    /// adverts every 100 ms, a 10-minute watchdog.
    fn default() -> Self {
        Self {
            load: RackOptions {
                inner: 0,
                outer: 0,
                streams: 0,
                wide: true,
                advert_interval_ms: 100,
                expire: Some(Duration::from_secs(600)),
                ..RackOptions::default()
            },
        }
    }
}

/// A running site. Dropping it stops the fleets and the correspondents,
/// SIGKILLs every process and removes the namespaces.
pub struct Site {
    /// The inner ([`INNER`]) and the outer ([`OUTER`]) cluster.
    pub clusters: Vec<Cluster>,
    /// `cn` ([`INNER`]) and `ocn` ([`OUTER`]).
    pub correspondents: Vec<Correspondent>,
    fleets: Fleets,
    opts: SiteOptions,
    lab: Option<Lab>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("clusters", &self.clusters)
            .finish_non_exhaustive()
    }
}

impl Site {
    /// Builds the site: namespaces, both clusters (a leader elected in
    /// each, the dispatchers forwarding to all nodes, one VIP owner per
    /// cluster) and both correspondents. The fleets are not started.
    ///
    /// # Errors
    /// Not root, a bad option, a process or a wait.
    pub fn start(opts: &SiteOptions) -> Result<Site, RackError> {
        let o = &opts.load;
        if o.inner + o.streams > MAX_WIDE || o.outer + o.streams > MAX_WIDE {
            return Err(RackError::Options(format!(
                "each realm holds at most {MAX_WIDE} mobile nodes (streams included)"
            )));
        }
        check_rates(o)?;
        let dir = tempfile::Builder::new()
            .prefix("hv-site-")
            .tempdir()
            .map_err(io_err("tempdir"))?;
        // Built (if need be) before the lab exists: its watchdog clock
        // starts with it.
        crate::supervisor::workspace_binary("haven-ha-node", "ha-node")?;
        crate::supervisor::workspace_binary("haven-dispatcher", "dispatcher")?;
        let lab = topology(o.expire)?;
        let wide = Plan::new(true);
        let mut clusters = Vec::new();
        for layout in layouts(o, &wide) {
            clusters.push(Cluster::start(&lab, &layout, dir.path())?);
        }
        clusters[INNER].expected = o.inner + o.streams;
        clusters[OUTER].expected = o.outer + o.streams;
        let floor = gap_floor(o);
        let mut correspondents = Vec::new();
        for (host, addr) in [("cn", plan::CN), ("ocn", plan::OCN)] {
            let ns = lab
                .ns_name(host)
                .ok_or_else(|| RackError::Options(format!("no host {host}")))?;
            correspondents.push(Correspondent::start(
                ns,
                SocketAddrV4::new(addr, CN_PORT),
                floor,
            )?);
        }
        let site = Site {
            clusters,
            correspondents,
            fleets: Fleets::default(),
            opts: opts.clone(),
            lab: Some(lab),
            dir,
        };
        // Both clusters started before either is waited for: their
        // elections overlap.
        for c in &site.clusters {
            c.await_ready()?;
        }
        Ok(site)
    }

    /// The lab: its hosts, namespaces and links (for the dual-client rig).
    ///
    /// # Panics
    /// Never: the lab lives until the site is dropped.
    pub fn lab(&self) -> &Lab {
        self.lab
            .as_ref()
            .expect("the lab lives as long as the site")
    }

    /// The directory holding configs, Raft logs and timelines.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The inner cluster.
    pub fn inner(&self) -> &Cluster {
        &self.clusters[INNER]
    }

    /// The outer cluster.
    pub fn outer(&self) -> &Cluster {
        &self.clusters[OUTER]
    }

    /// Starts the fleets of `opts` (normally the site's own options:
    /// the nodes hold SAs for that many mobile nodes): the inner fleet and
    /// its stream mobile nodes in `ifleet`, the outer ones in `ofleet`.
    /// They run until [`Site::stop_fleet_runs`].
    ///
    /// # Errors
    /// A bad option or a thread.
    pub fn start_fleets(&mut self, opts: &RackOptions) -> Result<(), RackError> {
        let ns = |h: &str| self.lab().ns_name(h).map(str::to_owned);
        let base = Plan::new(true).inner_base;
        let places = [
            // Registering directly from the inside access network: no NAT,
            // so the F bit (module docs).
            FleetPlace {
                force_udp_tunnel: true,
                ..FleetPlace::inner(
                    SocketAddrV4::new(plan::INNER_VIP, 434),
                    ns("ifleet"),
                    &IFLEET_LAN,
                    base,
                    opts,
                    Some(SocketAddrV4::new(plan::CN, CN_PORT)),
                )
            },
            FleetPlace::outer(
                SocketAddrV4::new(plan::OUTER_VIP, 434),
                ns("ofleet"),
                &OFLEET_LAN,
                opts,
                Some(SocketAddrV4::new(plan::OCN, CN_PORT)),
            ),
        ];
        self.fleets.start(&places, opts, self.dir.path())
    }

    /// The options it was started with.
    pub fn options(&self) -> &SiteOptions {
        &self.opts
    }

    /// The fleets that ended on their own (an error: fleets run until
    /// stopped).
    pub fn fleets_ended(&self) -> Vec<String> {
        self.fleets.ended()
    }

    /// Stops the fleets (without deregistering) and returns each run.
    pub fn stop_fleet_runs(&mut self) -> Vec<FleetRun> {
        self.fleets.stop_runs()
    }

    /// Where each component's Prometheus endpoint answers on loopback.
    pub fn endpoints(&self) -> Vec<(String, String)> {
        self.clusters.iter().flat_map(Cluster::endpoints).collect()
    }

    /// Every component's log file.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.clusters.iter().flat_map(Cluster::logs).collect()
    }

    /// The last lines of a component's log (`inode-2`, `odisp-a/outer`).
    pub fn log_tail(&self, name: &str, lines: usize) -> Option<String> {
        self.clusters.iter().find_map(|c| c.log_tail(name, lines))
    }
}

impl Bed for Site {
    fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    fn cluster_lab(&mut self, k: usize) -> (&mut Cluster, Option<&Lab>) {
        (&mut self.clusters[k], self.lab.as_ref())
    }

    fn correspondent(&self, k: usize) -> Option<&Correspondent> {
        self.correspondents.get(k)
    }

    fn start_fleets(&mut self, opts: &RackOptions) -> Result<(), RackError> {
        Site::start_fleets(self, opts)
    }

    fn stop_fleet_runs(&mut self) -> Vec<FleetRun> {
        Site::stop_fleet_runs(self)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // Fleets first (their sockets live in the fleet namespaces), then
        // the correspondents and processes, last the namespaces.
        let _ = self.fleets.stop_runs();
        for c in self.correspondents.drain(..) {
            c.stop();
        }
        self.clusters.clear();
        self.lab.take();
    }
}

/// The two clusters: the same [`ClusterLayout`] shape placed on the
/// intranet and on the DMZ, one realm each. Both realms carry the dual
/// mobile node's SA (fixed home address, its own SPI and key) beside the
/// fleets'.
fn layouts(o: &RackOptions, wide: &Plan) -> [ClusterLayout; 2] {
    let inner = RealmSpec {
        home_prefix: plan::INNER_PREFIX.into(),
        ..inner_realm(wide, plan::INNER_VIP, 434, o.inner + o.streams)
    }
    .with_home_address_sas(plan::INNER_HOA, 1, plan::INNER_SPI, plan::DUAL_INNER_KEY);
    let outer = RealmSpec {
        home_prefix: plan::OUTER_PREFIX.into(),
        ..outer_realm(wide, plan::OUTER_VIP, 434, o.outer, o.streams)
    }
    .with_home_address_sas(plan::OUTER_HOA, 1, plan::OUTER_SPI, plan::DUAL_OUTER_KEY);
    let hosts = |prefix: &str, net: [u8; 3], first: u8| -> Vec<(String, Ipv4Addr)> {
        (0..3u8)
            .map(|i| {
                (
                    format!("{prefix}node-{}", i + 1),
                    Ipv4Addr::new(net[0], net[1], net[2], first + i),
                )
            })
            .collect()
    };
    let pair = |prefix: &str, net: [u8; 3], first: u8| {
        [
            (
                format!("{prefix}disp-a"),
                Ipv4Addr::new(net[0], net[1], net[2], first),
            ),
            (
                format!("{prefix}disp-b"),
                Ipv4Addr::new(net[0], net[1], net[2], first + 1),
            ),
        ]
    };
    let realm = |spec: RealmSpec, vrid: u8| LayoutRealm {
        spec,
        vrid,
        health_port: 4341,
        metrics_port: 9435,
    };
    [
        ClusterLayout {
            name: "inner".into(),
            switch: "intra".into(),
            nodes: hosts("i", [198, 18, 100], 11),
            dispatchers: pair("i", [198, 18, 100], 3),
            realms: vec![realm(inner, 7)],
            advert_interval_ms: o.advert_interval_ms,
        },
        ClusterLayout {
            name: "outer".into(),
            switch: "dmz".into(),
            nodes: hosts("o", [203, 0, 113], 71),
            dispatchers: pair("o", [203, 0, 113], 67),
            realms: vec![realm(outer, 8)],
            advert_interval_ms: o.advert_interval_ms,
        },
    ]
}

/// The namespaces of the module docs, addressed and routed as [`plan`]
/// says.
fn topology(expire: Option<Duration>) -> Result<Lab, RackError> {
    let mut t = Topology::builder();
    for h in [
        "mn", "nat1", "nat2", "inet", "ofleet", "onat", "ocn", "gw", "irtr", "ifleet", "cn",
        "idisp-a", "idisp-b", "odisp-a", "odisp-b",
    ] {
        t = t.host(h);
    }
    t = t
        // Outside: three NATed access networks and the outer correspondent.
        .link(("mn", "198.19.10.2/24"), ("nat1", "198.19.10.1/24"))
        .link(("mn", "198.19.11.2/24"), ("nat2", "198.19.11.1/24"))
        .link(("nat1", "203.0.113.2/30"), ("inet", "203.0.113.1/30"))
        .link(("nat2", "203.0.113.6/30"), ("inet", "203.0.113.5/30"))
        .link(("ofleet", "198.19.12.2/24"), ("onat", "198.19.12.1/24"))
        .link(("onat", "203.0.113.14/30"), ("inet", "203.0.113.13/30"))
        .link(("ocn", "203.0.113.18/30"), ("inet", "203.0.113.17/30"))
        // Inside access networks behind irtr.
        .link(("mn", "198.18.102.2/24"), ("irtr", "198.18.102.1/24"))
        .link(("ifleet", "198.18.103.2/24"), ("irtr", "198.18.103.1/24"))
        .route("mn", "default", "198.19.10.1")
        .route("nat1", "default", "203.0.113.1")
        .route("nat2", "default", "203.0.113.5")
        .route("onat", "default", "203.0.113.13")
        .route("ofleet", "default", "198.19.12.1")
        .route("ocn", "default", "203.0.113.17")
        .route("ifleet", "default", "198.18.103.1")
        .masquerade("nat1", "inet")
        .masquerade("nat2", "inet")
        .masquerade("onat", "inet")
        // The outer home prefix via the outer VIP; no route into the
        // intranet and no default (seed 004 § 3.4).
        .route("inet", plan::OUTER_PREFIX, "203.0.113.100")
        .route("gw", "default", INET_DMZ)
        .route("gw", INSIDE_NETS, IRTR)
        .route("gw", plan::INNER_PREFIX, "198.18.100.100")
        .route("irtr", "default", "198.18.100.1")
        .route("irtr", plan::INNER_PREFIX, "198.18.100.100")
        .route("cn", "default", "198.18.100.1")
        .route("cn", INSIDE_NETS, IRTR)
        .route("cn", plan::INNER_PREFIX, "198.18.100.100");
    for r in ["nat1", "nat2", "onat", "inet", "gw", "irtr"] {
        t = t.router(r);
    }
    for d in ["odisp-a", "odisp-b"] {
        t = t.route(d, "default", INET_DMZ);
    }
    for d in ["idisp-a", "idisp-b"] {
        t = t
            .route(d, "default", "198.18.100.1")
            .route(d, INSIDE_NETS, IRTR);
    }
    // The nodes: the VIP on lo (arp_ignore: the dispatcher answers ARP for
    // it, DSR), forwarding on (decapsulated packets, the TUN routes).
    for (prefix, vip) in [("i", plan::INNER_VIP), ("o", plan::OUTER_VIP)] {
        for i in 1..=3 {
            let n = format!("{prefix}node-{i}");
            t = t
                .host(&n)
                .loopback_addr(&n, &format!("{vip}/32"))
                .dsr(&n)
                .router(&n);
            t = if prefix == "i" {
                t.route(&n, "default", "198.18.100.1")
                    .route(&n, INSIDE_NETS, IRTR)
            } else {
                t.route(&n, "default", INET_DMZ)
            };
        }
    }
    let dmz: Vec<(String, String)> = [
        ("inet", 65u8),
        ("gw", 66),
        ("odisp-a", 67),
        ("odisp-b", 68),
        ("onode-1", 71),
        ("onode-2", 72),
        ("onode-3", 73),
    ]
    .into_iter()
    .map(|(h, a)| (h.to_owned(), format!("203.0.113.{a}/26")))
    .collect();
    let intra: Vec<(String, String)> = [
        ("gw", 1u8),
        ("irtr", 2),
        ("idisp-a", 3),
        ("idisp-b", 4),
        ("cn", 10),
        ("inode-1", 11),
        ("inode-2", 12),
        ("inode-3", 13),
    ]
    .into_iter()
    .map(|(h, a)| (h.to_owned(), format!("198.18.100.{a}/24")))
    .collect();
    t = t
        .switch("dmz", dmz.iter().map(|(h, a)| (h.as_str(), a.as_str())))
        .switch("intra", intra.iter().map(|(h, a)| (h.as_str(), a.as_str())));
    if let Some(e) = expire {
        t = t.expire_after(e);
    }
    let lab = t.build()?;
    let iface = |host: &str, peer: &str| -> Result<String, RackError> {
        lab.iface(host, peer)
            .map(str::to_owned)
            .ok_or_else(|| RackError::Options(format!("{host} is not linked to {peer}")))
    };
    // A gateway dispatcher refuses to start while its kernel would forward
    // the same packets (a namespace may inherit forwarding=1).
    for (host, switch) in [
        ("idisp-a", "intra"),
        ("idisp-b", "intra"),
        ("odisp-a", "dmz"),
        ("odisp-b", "dmz"),
    ] {
        let key = format!("net.ipv4.conf.{}.forwarding=0", iface(host, switch)?);
        checked(&lab, host, &["sysctl", "-qw", &key])?;
    }
    // The dual mobile node's nat2 and inside legs stay unaddressed until it
    // moves there (the rig's business).
    for peer in ["nat2", "irtr"] {
        let dev = iface("mn", peer)?;
        checked(&lab, "mn", &["ip", "-4", "addr", "flush", "dev", &dev])?;
    }
    // The fleets' second LAN addresses: where their mobile nodes move to.
    for (host, peer, addr) in [
        ("ifleet", "irtr", IFLEET_LAN[1]),
        ("ofleet", "onat", OFLEET_LAN[1]),
    ] {
        let dev = iface(host, peer)?;
        let cidr = format!("{addr}/24");
        checked(&lab, host, &["ip", "addr", "add", &cidr, "dev", &dev])?;
    }
    Ok(lab)
}
