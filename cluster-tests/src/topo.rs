//! # Network-namespace topologies for the test lab
//!
//! DESIGN.md §8: the end-to-end tests run real daemons on real kernel
//! routing, behind a real kernel NAT, and break the network with real
//! faults. This module builds that network declaratively: hosts are network
//! namespaces, links are veth pairs, a switch is a Linux bridge living in a
//! namespace of its own, and faults are nftables tables or links set down.
//!
//! ```no_run
//! # use haven_cluster_tests::topo::Topology;
//! let lab = Topology::builder()
//!     .host("a")
//!     .host("rtr")
//!     .host("b")
//!     .link(("a", "198.18.0.2/24"), ("rtr", "198.18.0.1/24"))
//!     .link(("rtr", "198.18.1.1/24"), ("b", "198.18.1.2/24"))
//!     .route("a", "default", "198.18.0.1")
//!     .route("b", "default", "198.18.1.1")
//!     .router("rtr")
//!     .build()?;
//! let out = lab.exec("a", ["ip", "route"])?;
//! # Ok::<(), haven_cluster_tests::topo::TopoError>(())
//! ```
//!
//! Safety rails, because these tests run as root on shared machines:
//! * every address must lie in 198.18.0.0/15, 192.0.2.0/24, 198.51.100.0/24,
//!   203.0.113.0/24 or 127.0.0.0/8; anything else is refused by
//!   [`TopologyBuilder::build`] before a single namespace exists;
//! * namespaces are named `hv-<pid>-<n>-<host>`, so parallel test processes
//!   never collide and [`sweep_stale`] can find what a crashed run left;
//! * the [`Lab`] tears everything down on `Drop` (which also runs when a test
//!   panics) and, with [`TopologyBuilder::expire_after`], from a watchdog
//!   thread even if the test hangs.
//!
//! Interface names stay under the kernel's 15-character limit by being named
//! by index: link *i* is `e<i>` on both of its ends (the ends live in
//! different namespaces), switch *j* is `s<j>` on each member and `p<k>` for
//! member *k* on the bridge side, the bridge itself is `br0`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Everything that can go wrong building or driving a lab.
///
/// `Debug` prints the message too, so a test's `.expect("build")` tells the
/// reader what to do (e.g. run as root) rather than just `NotRoot`.
#[derive(thiserror::Error)]
pub enum TopoError {
    /// Namespaces, veths and nftables need CAP_NET_ADMIN.
    #[error(
        "the network-namespace test lab needs root (euid 0); run the tests as root, \
         e.g. `sudo -E cargo test -p haven-cluster-tests`, or set \
         HAVEN_SKIP_ROOT_TESTS=1 to skip them"
    )]
    NotRoot,
    /// An address outside the ranges the project may use (DESIGN.md §8).
    #[error(
        "address {0} is not allowed: use only 198.18.0.0/15, 192.0.2.0/24, \
         198.51.100.0/24, 203.0.113.0/24 or loopback"
    )]
    Disallowed(String),
    /// Not an `a.b.c.d/len` (or `a.b.c.d` where a plain address is wanted).
    #[error("malformed address {0:?}")]
    BadAddress(String),
    /// A host, link or switch name that the topology does not contain.
    #[error("unknown host, switch or link: {0}")]
    Unknown(String),
    /// The same host or switch declared twice, or a link to itself.
    #[error("invalid topology: {0}")]
    Invalid(String),
    /// An `ip`/`nft`/`sysctl` invocation failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Spawning a command failed.
    #[error("i/o error running {cmd}: {source}")]
    Io {
        /// The command line.
        cmd: String,
        /// The error.
        source: io::Error,
    },
}

impl std::fmt::Debug for TopoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// The ranges any lab address must fall in (DESIGN.md §8): the benchmarking
/// range [RFC 2544], the three documentation ranges [RFC 5737], loopback.
const ALLOWED: [(Ipv4Addr, u8); 5] = [
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
];

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// Whether the prefix `addr/len` lies wholly inside one allowed range.
fn prefix_allowed(addr: Ipv4Addr, len: u8) -> bool {
    ALLOWED.iter().any(|&(net, net_len)| {
        len >= net_len && (u32::from(addr) & mask(net_len)) == u32::from(net)
    })
}

/// Parses `a.b.c.d/len` and checks it against the allowed ranges.
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), TopoError> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| TopoError::BadAddress(s.to_owned()))?;
    let addr: Ipv4Addr = a.parse().map_err(|_| TopoError::BadAddress(s.to_owned()))?;
    let len: u8 = l.parse().map_err(|_| TopoError::BadAddress(s.to_owned()))?;
    if len > 32 {
        return Err(TopoError::BadAddress(s.to_owned()));
    }
    if !prefix_allowed(addr, len) {
        return Err(TopoError::Disallowed(s.to_owned()));
    }
    Ok((addr, len))
}

/// Parses a plain address (a gateway) and checks it.
fn parse_addr(s: &str) -> Result<Ipv4Addr, TopoError> {
    let addr: Ipv4Addr = s.parse().map_err(|_| TopoError::BadAddress(s.to_owned()))?;
    if !prefix_allowed(addr, 32) {
        return Err(TopoError::Disallowed(s.to_owned()));
    }
    Ok(addr)
}

/// Whether this process runs with euid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For the top of every root-only test: `if skip_without_root() { return; }`.
///
/// Returns true (after printing "skipped: needs root") only when not root
/// and `HAVEN_SKIP_ROOT_TESTS=1`; otherwise the test goes on and fails with
/// [`TopoError::NotRoot`], so a missing root never passes silently.
pub fn skip_without_root() -> bool {
    if is_root() {
        return false;
    }
    if std::env::var("HAVEN_SKIP_ROOT_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: needs root");
        return true;
    }
    false
}

#[derive(Debug, Clone)]
struct LinkSpec {
    a: String,
    a_addr: String,
    b: String,
    b_addr: String,
}

#[derive(Debug, Clone)]
struct SwitchSpec {
    name: String,
    members: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preset {
    Router,
    Dsr,
}

/// A declarative description of a lab; see [`Topology::builder`].
#[derive(Debug, Default, Clone)]
pub struct TopologyBuilder {
    hosts: Vec<String>,
    links: Vec<LinkSpec>,
    switches: Vec<SwitchSpec>,
    loopbacks: Vec<(String, String)>,
    routes: Vec<(String, String, Vec<String>)>,
    sysctls: Vec<(String, String, String)>,
    presets: Vec<(String, Preset)>,
    masquerades: Vec<(String, String)>,
    expire: Option<Duration>,
}

/// Entry point: `Topology::builder()`.
#[derive(Debug)]
pub struct Topology;

impl Topology {
    /// An empty topology.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }
}

impl TopologyBuilder {
    /// Adds a host (a network namespace with `lo` up).
    pub fn host(mut self, name: &str) -> Self {
        self.hosts.push(name.to_owned());
        self
    }

    /// A veth pair between two hosts, each end with its `a.b.c.d/len`.
    pub fn link(mut self, a: (&str, &str), b: (&str, &str)) -> Self {
        self.links.push(LinkSpec {
            a: a.0.to_owned(),
            a_addr: a.1.to_owned(),
            b: b.0.to_owned(),
            b_addr: b.1.to_owned(),
        });
        self
    }

    /// A broadcast segment: a bridge in its own namespace (named like a
    /// host, so switch and host names share one space) with one veth per
    /// member `(host, "a.b.c.d/len")`.
    pub fn switch<'a>(
        mut self,
        name: &str,
        members: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        self.switches.push(SwitchSpec {
            name: name.to_owned(),
            members: members
                .into_iter()
                .map(|(h, a)| (h.to_owned(), a.to_owned()))
                .collect(),
        });
        self
    }

    /// An address on the host's `lo` (a VIP for direct server return).
    pub fn loopback_addr(mut self, host: &str, cidr: &str) -> Self {
        self.loopbacks.push((host.to_owned(), cidr.to_owned()));
        self
    }

    /// A route `dst` (`a.b.c.d/len` or `default`) via one gateway.
    pub fn route(mut self, host: &str, dst: &str, via: &str) -> Self {
        self.routes
            .push((host.to_owned(), dst.to_owned(), vec![via.to_owned()]));
        self
    }

    /// An ECMP route: `nexthop via A nexthop via B ...`.
    pub fn ecmp_route(mut self, host: &str, dst: &str, vias: &[&str]) -> Self {
        self.routes.push((
            host.to_owned(),
            dst.to_owned(),
            vias.iter().map(|v| (*v).to_owned()).collect(),
        ));
        self
    }

    /// `sysctl -w key=value` inside the host's namespace.
    pub fn sysctl(mut self, host: &str, key: &str, value: &str) -> Self {
        self.sysctls
            .push((host.to_owned(), key.to_owned(), value.to_owned()));
        self
    }

    /// Preset: `ip_forward=1` and `rp_filter=0` everywhere (asymmetric paths
    /// through dispatchers and ECMP must not be dropped as spoofed).
    pub fn router(mut self, host: &str) -> Self {
        self.presets.push((host.to_owned(), Preset::Router));
        self
    }

    /// Preset for a direct-server-return node holding a VIP on `lo`:
    /// `arp_ignore=1`, `arp_announce=2` (never answer or announce the VIP on
    /// the segment, or the node would steal the dispatcher's traffic) and
    /// `rp_filter=0`, on all/default and every interface.
    pub fn dsr(mut self, host: &str) -> Self {
        self.presets.push((host.to_owned(), Preset::Dsr));
        self
    }

    /// A real nftables `nat` table masquerading what leaves `out`: the name
    /// of a peer host (the link to it), of a switch the host is on, or a
    /// literal interface name.
    pub fn masquerade(mut self, host: &str, out: &str) -> Self {
        self.masquerades.push((host.to_owned(), out.to_owned()));
        self
    }

    /// A watchdog tearing the lab down after `after` even if the test hangs.
    pub fn expire_after(mut self, after: Duration) -> Self {
        self.expire = Some(after);
        self
    }

    /// Checks every name and address, then creates the lab.
    ///
    /// Nothing is created unless the whole description is valid and the
    /// process is root.
    pub fn build(self) -> Result<Lab, TopoError> {
        let plan = self.validate()?;
        if !is_root() {
            return Err(TopoError::NotRoot);
        }
        Lab::create(self, plan)
    }

    fn validate(&self) -> Result<Plan, TopoError> {
        let mut names = BTreeSet::new();
        for n in self
            .hosts
            .iter()
            .chain(self.switches.iter().map(|s| &s.name))
        {
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(TopoError::Invalid(format!("bad name {n:?}")));
            }
            if !names.insert(n.clone()) {
                return Err(TopoError::Invalid(format!("{n} declared twice")));
            }
        }
        let host = |h: &str| -> Result<(), TopoError> {
            if self.hosts.iter().any(|x| x == h) {
                Ok(())
            } else {
                Err(TopoError::Unknown(h.to_owned()))
            }
        };
        let mut plan = Plan {
            routes: self.routes.clone(),
            ..Plan::default()
        };
        for (i, l) in self.links.iter().enumerate() {
            host(&l.a)?;
            host(&l.b)?;
            if l.a == l.b {
                return Err(TopoError::Invalid(format!("link from {} to itself", l.a)));
            }
            let ifname = format!("e{i}");
            for (h, peer, a) in [(&l.a, &l.b, &l.a_addr), (&l.b, &l.a, &l.b_addr)] {
                let (addr, len) = parse_cidr(a)?;
                plan.ifaces.push(Iface {
                    host: h.clone(),
                    peer: peer.clone(),
                    name: ifname.clone(),
                    far: ifname.clone(),
                    addr,
                    len,
                });
            }
        }
        for (j, s) in self.switches.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for (k, (h, a)) in s.members.iter().enumerate() {
                host(h)?;
                if !seen.insert(h) {
                    return Err(TopoError::Invalid(format!(
                        "{h} twice on switch {}",
                        s.name
                    )));
                }
                let (addr, len) = parse_cidr(a)?;
                plan.ifaces.push(Iface {
                    host: h.clone(),
                    peer: s.name.clone(),
                    name: format!("s{j}"),
                    far: format!("p{k}"),
                    addr,
                    len,
                });
            }
        }
        for (h, a) in &self.loopbacks {
            host(h)?;
            parse_cidr(a)?;
        }
        for (h, dst, vias) in &self.routes {
            host(h)?;
            if dst != "default" {
                parse_cidr(dst)?;
            }
            if vias.is_empty() {
                return Err(TopoError::Invalid(format!(
                    "route {dst} on {h} without gateway"
                )));
            }
            for v in vias {
                parse_addr(v)?;
            }
        }
        for (h, k, v) in &self.sysctls {
            host(h)?;
            let ok = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-/ ".contains(c))
            };
            if !ok(k) || !ok(v) {
                return Err(TopoError::Invalid(format!("bad sysctl {k}={v}")));
            }
        }
        for (h, _) in &self.presets {
            host(h)?;
        }
        for (h, out) in &self.masquerades {
            host(h)?;
            if out.is_empty() || out.len() > 15 || out.contains('"') {
                return Err(TopoError::Invalid(format!("bad interface {out:?}")));
            }
        }
        Ok(plan)
    }
}

#[derive(Debug, Clone)]
struct Iface {
    host: String,
    /// The peer host of a link, or the switch name.
    peer: String,
    name: String,
    /// The name of the other end: the same `e<i>` for a link, `p<k>` (in
    /// the switch's namespace) for a switch port.
    far: String,
    addr: Ipv4Addr,
    len: u8,
}

#[derive(Debug, Default, Clone)]
struct Plan {
    ifaces: Vec<Iface>,
    /// `(host, dst, gateways)`, kept to restore them on [`Lab::link_up`].
    routes: Vec<(String, String, Vec<String>)>,
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The namespaces of a lab and whether they are already gone; shared with
/// the watchdog thread so whichever runs first tears down and the other
/// does nothing.
#[derive(Debug, Default)]
struct Shared {
    namespaces: Vec<String>,
    torn_down: bool,
    dropped: bool,
}

/// A running topology. Dropping it kills every process left in its
/// namespaces and deletes them (veths and bridges vanish with them).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    ns: BTreeMap<String, String>,
    plan: Plan,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    watchdog: Option<JoinHandle<()>>,
}

impl Lab {
    fn create(spec: TopologyBuilder, plan: Plan) -> Result<Lab, TopoError> {
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("hv-{}-{}-", std::process::id(), n);
        let ns: BTreeMap<String, String> = spec
            .hosts
            .iter()
            .chain(spec.switches.iter().map(|s| &s.name))
            .map(|h| (h.clone(), format!("{prefix}{h}")))
            .collect();
        let mut lab = Lab {
            prefix,
            ns,
            plan,
            shared: Arc::new((Mutex::new(Shared::default()), Condvar::new())),
            watchdog: None,
        };
        if let Some(after) = spec.expire {
            lab.start_watchdog(after);
        }
        // From here on any error returns early and `lab`'s Drop removes
        // whatever was already made.
        lab.populate(&spec)?;
        Ok(lab)
    }

    fn start_watchdog(&mut self, after: Duration) {
        let shared = Arc::clone(&self.shared);
        let prefix = self.prefix.clone();
        self.watchdog = Some(std::thread::spawn(move || {
            let (lock, cv) = &*shared;
            let deadline = Instant::now() + after;
            let mut st = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while !st.dropped {
                let now = Instant::now();
                if now >= deadline {
                    if !st.torn_down {
                        eprintln!("lab {prefix}*: expired after {after:?}, tearing it down");
                        teardown(&st.namespaces);
                        st.torn_down = true;
                    }
                    return;
                }
                st = cv
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }));
    }

    fn populate(&mut self, spec: &TopologyBuilder) -> Result<(), TopoError> {
        for ns in self.ns.values() {
            {
                let mut st = self.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
                if st.torn_down {
                    return Err(TopoError::Invalid("lab expired while building".into()));
                }
                st.namespaces.push(ns.clone());
            }
            run(Command::new("ip").args(["netns", "add", ns]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        // all/default first, so interfaces created afterwards inherit them.
        for (h, p) in &spec.presets {
            for scope in ["all", "default"] {
                self.apply_preset(h, *p, scope)?;
            }
        }
        for (h, k, v) in &spec.sysctls {
            self.sysctl_w(h, k, v)?;
        }
        for (i, l) in spec.links.iter().enumerate() {
            let name = format!("e{i}");
            let (na, nb) = (self.ns_of(&l.a)?, self.ns_of(&l.b)?);
            run(Command::new("ip").args([
                "link", "add", &name, "netns", na, "type", "veth", "peer", "name", &name, "netns",
                nb,
            ]))?;
        }
        for (j, s) in spec.switches.iter().enumerate() {
            let sw = self.ns_of(&s.name)?.to_owned();
            run(Command::new("ip").args(["-n", &sw, "link", "add", "br0", "type", "bridge"]))?;
            run(Command::new("ip").args(["-n", &sw, "link", "set", "br0", "up"]))?;
            for (k, (h, _)) in s.members.iter().enumerate() {
                let port = format!("p{k}");
                let member = format!("s{j}");
                let nh = self.ns_of(h)?.to_owned();
                run(Command::new("ip").args([
                    "link", "add", &port, "netns", &sw, "type", "veth", "peer", "name", &member,
                    "netns", &nh,
                ]))?;
                run(Command::new("ip").args(["-n", &sw, "link", "set", &port, "master", "br0"]))?;
                run(Command::new("ip").args(["-n", &sw, "link", "set", &port, "up"]))?;
            }
        }
        for ifc in self.plan.ifaces.clone() {
            let ns = self.ns_of(&ifc.host)?.to_owned();
            let cidr = format!("{}/{}", ifc.addr, ifc.len);
            run(Command::new("ip").args(["-n", &ns, "addr", "add", &cidr, "dev", &ifc.name]))?;
            run(Command::new("ip").args(["-n", &ns, "link", "set", &ifc.name, "up"]))?;
        }
        for (h, cidr) in &spec.loopbacks {
            let ns = self.ns_of(h)?;
            run(Command::new("ip").args(["-n", ns, "addr", "add", cidr, "dev", "lo"]))?;
        }
        for (h, p) in &spec.presets {
            let ifaces: Vec<String> = std::iter::once("lo".to_owned())
                .chain(self.ifaces_of(h).map(|i| i.name.clone()))
                .collect();
            for i in ifaces {
                self.apply_preset(h, *p, &i)?;
            }
        }
        for (h, dst, vias) in &spec.routes {
            self.add_route(h, dst, vias)?;
        }
        for (h, out) in &spec.masquerades {
            let dev = self
                .iface(h, out)
                .map_or_else(|| out.clone(), str::to_owned);
            let rules = format!(
                "table ip hv_nat {{}}\ndelete table ip hv_nat\n\
                 table ip hv_nat {{\n  chain post {{\n    \
                 type nat hook postrouting priority srcnat; policy accept;\n    \
                 oifname \"{dev}\" masquerade\n  }}\n}}\n"
            );
            self.nft(h, &rules)?;
        }
        Ok(())
    }

    fn add_route(&self, host: &str, dst: &str, vias: &[String]) -> Result<(), TopoError> {
        let ns = self.ns_of(host)?;
        let mut args: Vec<&str> = vec!["-n", ns, "route", "replace", dst];
        if let [one] = vias {
            args.extend(["via", one]);
        } else {
            for v in vias {
                args.extend(["nexthop", "via", v]);
            }
        }
        run(Command::new("ip").args(args)).map(drop)
    }

    fn apply_preset(&self, host: &str, p: Preset, scope: &str) -> Result<(), TopoError> {
        let c = |k: &str| format!("net.ipv4.conf.{scope}.{k}");
        match p {
            Preset::Router => {
                if scope == "all" {
                    self.sysctl_w(host, "net.ipv4.ip_forward", "1")?;
                }
                self.sysctl_w(host, &c("rp_filter"), "0")
            }
            Preset::Dsr => {
                self.sysctl_w(host, &c("arp_ignore"), "1")?;
                self.sysctl_w(host, &c("arp_announce"), "2")?;
                self.sysctl_w(host, &c("rp_filter"), "0")
            }
        }
    }

    fn sysctl_w(&self, host: &str, key: &str, value: &str) -> Result<(), TopoError> {
        let ns = self.ns_of(host)?;
        run(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]))
        .map(drop)
    }

    fn nft(&self, host: &str, rules: &str) -> Result<(), TopoError> {
        let ns = self.ns_of(host)?;
        run_stdin(
            Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]),
            rules.as_bytes(),
        )
        .map(drop)
    }

    fn ns_of(&self, host: &str) -> Result<&str, TopoError> {
        self.ns_name(host)
            .ok_or_else(|| TopoError::Unknown(host.to_owned()))
    }

    fn ifaces_of<'a, 'h>(&'a self, host: &'h str) -> impl Iterator<Item = &'a Iface> + use<'a, 'h> {
        self.plan.ifaces.iter().filter(move |i| i.host == host)
    }

    /// The run prefix shared by all of this lab's namespaces (`hv-<pid>-<n>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace of a host or switch.
    pub fn ns_name(&self, host: &str) -> Option<&str> {
        self.ns.get(host).map(String::as_str)
    }

    /// The host's first interface address (in declaration order: links,
    /// then switches).
    pub fn addr(&self, host: &str) -> Option<Ipv4Addr> {
        self.ifaces_of(host).next().map(|i| i.addr)
    }

    /// The host's address on the link to `peer` (a host or a switch).
    pub fn addr_on(&self, host: &str, peer: &str) -> Option<Ipv4Addr> {
        self.ifaces_of(host)
            .find(|i| i.peer == peer)
            .map(|i| i.addr)
    }

    /// The host's interface name towards `peer` (a host or a switch).
    pub fn iface(&self, host: &str, peer: &str) -> Option<&str> {
        self.ifaces_of(host)
            .find(|i| i.peer == peer)
            .map(|i| i.name.as_str())
    }

    /// Runs a command in the host's namespace to completion. A non-zero
    /// exit is not an error here: callers inspect `Output::status`.
    pub fn exec<I, S>(&self, host: &str, cmd: I) -> Result<Output, TopoError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(host, cmd)?;
        let line = format!("{c:?}");
        c.output()
            .map_err(|source| TopoError::Io { cmd: line, source })
    }

    /// Starts a command in the host's namespace (`ip netns exec NS ...`,
    /// which execs, so the child's pid is the program's own).
    pub fn spawn<I, S>(&self, host: &str, cmd: I) -> Result<Child, TopoError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(host, cmd)?;
        let line = format!("{c:?}");
        c.spawn()
            .map_err(|source| TopoError::Io { cmd: line, source })
    }

    /// The `Command` that `exec`/`spawn` would run, for callers that want to
    /// set stdio or environment themselves.
    pub fn command<I, S>(&self, host: &str, cmd: I) -> Result<Command, TopoError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let ns = self.ns_of(host)?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(cmd);
        Ok(c)
    }

    /// Runs `f` on a fresh thread that has entered the host's namespace
    /// (sockets it opens live there), and returns its result.
    pub fn in_host<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let ns = self
            .ns_name(host)
            .ok_or_else(|| io::Error::other(format!("unknown host {host}")))?;
        in_netns(ns, f)
    }

    /// Cuts the host off: an nftables table dropping everything in, out and
    /// through it except loopback traffic.
    pub fn partition(&self, host: &str) -> Result<(), TopoError> {
        self.nft(
            host,
            "table inet hv_partition {}\ndelete table inet hv_partition\n\
             table inet hv_partition {\n\
             chain inbound { type filter hook input priority -300; policy drop; iif \"lo\" accept; }\n\
             chain outbound { type filter hook output priority -300; policy drop; oif \"lo\" accept; }\n\
             chain forwarding { type filter hook forward priority -300; policy drop; }\n}\n",
        )
    }

    /// Undoes [`Lab::partition`].
    pub fn heal(&self, host: &str) -> Result<(), TopoError> {
        self.nft(
            host,
            "table inet hv_partition {}\ndelete table inet hv_partition\n",
        )
    }

    /// Drops `pct` percent of the packets arriving at the host (received or
    /// forwarded), chosen at random per packet; 0 removes the rule.
    pub fn drop_percent(&self, host: &str, pct: u8) -> Result<(), TopoError> {
        let mut rules = String::from("table inet hv_loss {}\ndelete table inet hv_loss\n");
        if pct > 0 {
            // numgen yields 0..=99; "< 100" is out of its range for nft.
            let rule = if pct >= 100 {
                "drop".to_owned()
            } else {
                format!("numgen random mod 100 < {pct} drop")
            };
            rules.push_str(&format!(
                "table inet hv_loss {{\n chain pre {{ type filter hook prerouting priority -300; \
                 policy accept; iif \"lo\" accept; {rule}; }}\n}}\n"
            ));
        }
        self.nft(host, &rules)
    }

    /// Sets both ends of the link between `a` and `b` (a host or a switch)
    /// down.
    pub fn link_down(&self, a: &str, b: &str) -> Result<(), TopoError> {
        self.set_link(a, b, "down")
    }

    /// Sets both ends of the link between `a` and `b` up again, and puts
    /// back the declared routes of both hosts: the kernel deletes IPv4
    /// routes through a device when it goes down.
    pub fn link_up(&self, a: &str, b: &str) -> Result<(), TopoError> {
        self.set_link(a, b, "up")?;
        for (h, dst, vias) in &self.plan.routes {
            if h == a || h == b {
                // A route through another link that is still down cannot
                // be installed yet; that link's own link_up restores it.
                let _ = self.add_route(h, dst, vias);
            }
        }
        Ok(())
    }

    fn set_link(&self, a: &str, b: &str, state: &str) -> Result<(), TopoError> {
        let ifc = self
            .plan
            .ifaces
            .iter()
            .find(|i| (i.host == a && i.peer == b) || (i.host == b && i.peer == a))
            .ok_or_else(|| TopoError::Unknown(format!("link {a}-{b}")))?;
        let (ns, pns) = (self.ns_of(&ifc.host)?, self.ns_of(&ifc.peer)?);
        run(Command::new("ip").args(["-n", ns, "link", "set", &ifc.name, state]))?;
        run(Command::new("ip").args(["-n", pns, "link", "set", &ifc.far, state])).map(drop)
    }

    /// Tears the lab down now (what `Drop` does).
    pub fn teardown(&self) {
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if !st.torn_down {
            teardown(&st.namespaces);
            st.torn_down = true;
        }
        cv.notify_all();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        {
            let mut st = self.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
            st.dropped = true;
        }
        self.teardown();
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
    }
}

/// Kills every process in the namespaces, then deletes them.
fn teardown(namespaces: &[String]) {
    for ns in namespaces {
        kill_ns_pids(ns);
    }
    for ns in namespaces {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}

fn ns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs what runs in `ns` and waits (bounded) until nothing does, so
/// the namespace really goes when its name is deleted.
fn kill_ns_pids(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = ns_pids(ns);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for p in pids {
            // SAFETY: kill(2) with a pid and a valid signal number.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every namespace whose name starts with `prefix`.
pub fn leftovers(prefix: &str) -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(prefix))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes `hv-<pid>-*` namespaces whose creating process is dead (left by
/// a run that was SIGKILLed or aborted); returns their names.
pub fn sweep_stale() -> Vec<String> {
    let stale: Vec<String> = leftovers("hv-")
        .into_iter()
        .filter(|n| {
            let pid = n
                .strip_prefix("hv-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok());
            match pid {
                // SAFETY: signal 0 only checks that the pid exists.
                Some(p) if p > 0 => {
                    let alive = unsafe { libc::kill(p, 0) } == 0
                        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
                    !alive
                }
                _ => false,
            }
        })
        .collect();
    teardown(&stale);
    stale
}

/// Runs `f` on a fresh thread inside the named namespace (`/run/netns/NS`).
///
/// `setns(2)` changes only the calling thread, and that thread ends with the
/// closure, so the test's own threads never move.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = File::open(format!("/run/netns/{ns}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: a valid namespace fd; only this thread is affected.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("closure panicked inside the namespace"))?
    })
}

fn command_line(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn check(c: &Command, out: io::Result<Output>) -> Result<Output, TopoError> {
    let cmd = command_line(c);
    let out = out.map_err(|source| TopoError::Io {
        cmd: cmd.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(TopoError::Command {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn run(c: &mut Command) -> Result<Output, TopoError> {
    let out = c.stdin(Stdio::null()).output();
    check(c, out)
}

fn run_stdin(c: &mut Command, input: &[u8]) -> Result<Output, TopoError> {
    let out = (|| {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input)?;
        }
        child.wait_with_output()
    })();
    check(c, out)
}

/// Ready-made topologies from DESIGN.md §8.
pub mod racks {
    use super::TopologyBuilder;
    use std::net::Ipv4Addr;

    /// The address plan of [`nat_scenario`]:
    ///
    /// ```text
    ///  mn 198.19.0.2 ── 198.19.0.1 nat 203.0.113.2 ── 203.0.113.1 inet
    ///    inet 198.18.254.1 ── 198.18.254.2 rtr
    ///    rtr 198.18.0.1 ── rack switch ── node-i 198.18.0.(10+i)  (VIP 192.0.2.1/32 on lo)
    ///    rtr 198.18.1.1 ── 198.18.1.2 cn
    /// ```
    ///
    /// The mobile node's LAN (198.19.0.0/24) is private to `nat`: nothing
    /// outside routes to it, so replies only come back through the NAT's
    /// public address, as on a real access network.
    pub mod plan {
        use std::net::Ipv4Addr;
        /// The mobile node on its LAN.
        pub const MN: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
        /// The NAT's inside address (the MN's default gateway).
        pub const NAT_INSIDE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
        /// The NAT's public address: the source the cluster sees.
        pub const NAT_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
        /// `inet` on the NAT's side.
        pub const INET_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
        /// `inet` towards `rtr`.
        pub const INET_CORE: Ipv4Addr = Ipv4Addr::new(198, 18, 254, 1);
        /// `rtr` towards `inet`.
        pub const RTR_CORE: Ipv4Addr = Ipv4Addr::new(198, 18, 254, 2);
        /// `rtr` on the rack segment 198.18.0.0/24.
        pub const RTR_RACK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
        /// `rtr` towards `cn`.
        pub const RTR_CN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
        /// The correspondent node.
        pub const CN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
        /// The home agent VIP, on every node's `lo`.
        pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    }

    /// `node-i`'s address on the rack segment (i from 1): 198.18.0.(10+i).
    pub fn node_addr(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 10u8.saturating_add(i))
    }

    /// `node-i`'s host name.
    pub fn node_name(i: u8) -> String {
        format!("node-{i}")
    }

    /// `mn` behind `nat` (masquerading to 203.0.113.2), `inet`, `rtr`,
    /// `nodes` hosts `node-1..` on the rack (DSR, VIP on `lo`, ECMP route to
    /// the VIP on `rtr`), and `cn`; see [`plan`]. Returns the builder so a
    /// test can add to it before `build()`. `nodes` is clamped to 1..=200.
    pub fn nat_scenario(nodes: u8) -> TopologyBuilder {
        let nodes = nodes.clamp(1, 200);
        let mut t = super::Topology::builder()
            .host("mn")
            .host("nat")
            .host("inet")
            .host("rtr")
            .host("cn")
            .link(("mn", "198.19.0.2/24"), ("nat", "198.19.0.1/24"))
            .link(("nat", "203.0.113.2/24"), ("inet", "203.0.113.1/24"))
            .link(("inet", "198.18.254.1/24"), ("rtr", "198.18.254.2/24"))
            .link(("rtr", "198.18.1.1/24"), ("cn", "198.18.1.2/24"))
            .route("mn", "default", "198.19.0.1")
            .route("nat", "default", "203.0.113.1")
            .route("inet", "198.18.0.0/16", "198.18.254.2")
            .route("inet", "192.0.2.0/24", "198.18.254.2")
            .route("rtr", "default", "198.18.254.1")
            .route("cn", "default", "198.18.1.1")
            .router("nat")
            .router("inet")
            .router("rtr")
            .masquerade("nat", "inet");
        let names: Vec<String> = (1..=nodes).map(node_name).collect();
        let addrs: Vec<String> = (1..=nodes)
            .map(|i| format!("{}/24", node_addr(i)))
            .collect();
        let gws: Vec<String> = (1..=nodes).map(|i| node_addr(i).to_string()).collect();
        for n in &names {
            t = t
                .host(n)
                .loopback_addr(n, "192.0.2.1/32")
                .dsr(n)
                .route(n, "default", "198.18.0.1");
        }
        let members = std::iter::once(("rtr", "198.18.0.1/24")).chain(
            names
                .iter()
                .zip(&addrs)
                .map(|(n, a)| (n.as_str(), a.as_str())),
        );
        t = t.switch("rack", members);
        let gw_refs: Vec<&str> = gws.iter().map(String::as_str).collect();
        t.ecmp_route("rtr", "192.0.2.1/32", &gw_refs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_ranges() {
        assert!(parse_cidr("198.18.0.1/24").is_ok());
        assert!(parse_cidr("198.19.255.254/32").is_ok());
        assert!(parse_cidr("192.0.2.1/32").is_ok());
        assert!(parse_cidr("198.51.100.0/24").is_ok());
        assert!(parse_cidr("203.0.113.7/24").is_ok());
        assert!(parse_cidr("127.0.0.1/8").is_ok());
        // A prefix wider than its range leaks outside it.
        assert!(matches!(
            parse_cidr("198.18.0.0/14"),
            Err(TopoError::Disallowed(_))
        ));
        assert!(matches!(
            parse_cidr("198.20.0.1/24"),
            Err(TopoError::Disallowed(_))
        ));
        assert!(matches!(
            parse_cidr("100.64.0.1/24"),
            Err(TopoError::Disallowed(_))
        ));
        assert!(matches!(
            parse_cidr("169.254.1.1/24"),
            Err(TopoError::Disallowed(_))
        ));
        assert!(matches!(
            parse_cidr("198.18.0.1"),
            Err(TopoError::BadAddress(_))
        ));
        assert!(matches!(
            parse_cidr("198.18.0.1/33"),
            Err(TopoError::BadAddress(_))
        ));
        assert!(matches!(
            parse_addr("100.64.0.1"),
            Err(TopoError::Disallowed(_))
        ));
    }

    #[test]
    fn validation_catches_names() {
        let e = Topology::builder()
            .host("a")
            .link(("a", "198.18.0.1/24"), ("b", "198.18.0.2/24"))
            .validate();
        assert!(matches!(e, Err(TopoError::Unknown(h)) if h == "b"));
        let e = Topology::builder().host("a").host("a").validate();
        assert!(matches!(e, Err(TopoError::Invalid(_))));
        let e = Topology::builder()
            .host("a")
            .route("a", "default", "169.254.1.1")
            .validate();
        assert!(matches!(e, Err(TopoError::Disallowed(_))));
    }

    #[test]
    fn nat_scenario_is_valid() {
        let plan = racks::nat_scenario(3).validate();
        assert!(plan.is_ok(), "{plan:?}");
        assert_eq!(racks::node_addr(2), Ipv4Addr::new(198, 18, 0, 12));
    }

    #[test]
    fn not_root_message_says_how() {
        let m = TopoError::NotRoot.to_string();
        assert!(m.contains("root") && m.contains("sudo -E cargo test"));
    }
}
