//! Home-agent nodes for tests, written once: a node's configuration as a
//! value ([`NodeSpec`]), rendered to the TOML that `ha-node` reads, and
//! [`start_node`], which starts the real binary (in a namespace or on
//! loopback) and waits until its metrics endpoint answers.
//!
//! Every integration test, scenario and the `haven-rack` demo build their
//! nodes through here, so a configuration change is made in one place.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::supervisor::{Process, Spec, SupError, await_metric, workspace_binary};

/// Who a security association belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaOwner {
    /// A mobile node with a fixed home address.
    HomeAddress(Ipv4Addr),
    /// A mobile node identified by its NAI (RFC 2794).
    Nai(String),
}

/// One mobility security association.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sa {
    pub owner: SaOwner,
    pub spi: u32,
    /// "hmac-md5" or "prefix-suffix-md5".
    pub algorithm: &'static str,
    pub key: Vec<u8>,
}

/// One realm of a node.
#[derive(Debug, Clone)]
pub struct RealmSpec {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub home_prefix: String,
    /// A dynamic pool, "first-last".
    pub pool: Option<String>,
    pub max_lifetime_secs: u16,
    /// "optional", "required" or "forbidden".
    pub reverse_tunnel: &'static str,
    pub udp_tunnel: bool,
    pub keepalive_interval_secs: u16,
    pub simultaneous_bindings: u8,
    pub sas: Vec<Sa>,
}

impl RealmSpec {
    /// A realm with the defaults of `ops/ha-node.example.toml`.
    pub fn new(name: &str, vip: Ipv4Addr, home_prefix: &str) -> Self {
        Self {
            name: name.to_owned(),
            vip,
            port: 434,
            home_prefix: home_prefix.to_owned(),
            pool: None,
            max_lifetime_secs: 1800,
            reverse_tunnel: "optional",
            udp_tunnel: true,
            keepalive_interval_secs: 110,
            simultaneous_bindings: 1,
            sas: Vec::new(),
        }
    }

    /// SAs for `count` NAIs made from `pattern` (`{i}` = 0, 1, ...), all
    /// with the same SPI and key, as `mnsim --nai` uses them.
    pub fn with_nai_sas(mut self, pattern: &str, count: usize, spi: u32, key: &[u8]) -> Self {
        self.sas.extend((0..count).map(|i| Sa {
            owner: SaOwner::Nai(pattern.replace("{i}", &i.to_string())),
            spi,
            algorithm: "hmac-md5",
            key: key.to_vec(),
        }));
        self
    }

    /// SAs for `count` fixed home addresses from `base` on (`base + i`), as
    /// `mnsim --home-base` uses them.
    pub fn with_home_address_sas(
        mut self,
        base: Ipv4Addr,
        count: usize,
        spi: u32,
        key: &[u8],
    ) -> Self {
        let base = u32::from(base);
        self.sas.extend((0..count as u32).map(|i| Sa {
            owner: SaOwner::HomeAddress(Ipv4Addr::from(base + i)),
            spi,
            algorithm: "hmac-md5",
            key: key.to_vec(),
        }));
        self
    }
}

/// PEM files of one TLS endpoint (`[cluster.tls]`, `[admin.tls]`;
/// docs/security.md).
#[derive(Debug, Clone)]
pub struct TlsSpec {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsSpec {
    fn toml(&self, table: &str) -> String {
        let path = |p: &Path| toml_string(&p.display().to_string());
        format!(
            "[{table}]\nca = {}\ncert = {}\nkey = {}\n\n",
            path(&self.ca),
            path(&self.cert),
            path(&self.key)
        )
    }
}

/// The `[cluster]` section of a node in raft mode (DESIGN.md § 4).
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub cluster_id: String,
    /// The Raft transport listener.
    pub listen: SocketAddr,
    /// The durable Raft log.
    pub data_dir: PathBuf,
    pub tick_ms: u32,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub snapshot_every: u64,
    /// Start empty and wait for `AddMember`.
    pub join: bool,
    /// Every founding voter, this node included: (id, transport address).
    pub peers: Vec<(u64, SocketAddr)>,
    /// `[[cluster.peer]] dispatch_source` of the peers that set one.
    pub dispatch_sources: Vec<(u64, Ipv4Addr)>,
    /// `[cluster.tls]`: mutual TLS for the Raft transport.
    pub tls: Option<TlsSpec>,
}

impl ClusterSpec {
    /// A raft member with `ops/ha-node.example.toml`'s timing defaults.
    pub fn raft(
        cluster_id: &str,
        listen: SocketAddr,
        data_dir: &Path,
        peers: Vec<(u64, SocketAddr)>,
    ) -> Self {
        Self {
            cluster_id: cluster_id.to_owned(),
            listen,
            data_dir: data_dir.to_owned(),
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: 10_000,
            join: false,
            peers,
            dispatch_sources: Vec::new(),
            tls: None,
        }
    }
}

/// The `[cluster]` section of a node in pair mode (DESIGN.md § 4 "pair";
/// `ha-node/src/pair/mod.rs`).
#[derive(Debug, Clone)]
pub struct PairSpec {
    /// This node's unique sync address (`[cluster] listen`).
    pub listen: SocketAddrV4,
    /// The other node's.
    pub peer: SocketAddrV4,
    pub vrid: u8,
    pub priority: u8,
    pub advert_interval_cs: u16,
    /// The HMAC-SHA256 key both nodes share.
    pub key: Vec<u8>,
    pub forward_retransmit_ms: u32,
    /// 0 = Master_Down_Interval.
    pub forward_timeout_ms: u32,
}

impl PairSpec {
    /// A pair member with `ops/ha-node.example.toml`'s defaults.
    pub fn new(listen: SocketAddrV4, peer: SocketAddrV4, key: &[u8]) -> Self {
        Self {
            listen,
            peer,
            vrid: 1,
            priority: 100,
            advert_interval_cs: 100,
            key: key.to_vec(),
            forward_retransmit_ms: 20,
            forward_timeout_ms: 0,
        }
    }
}

/// The `[dispatch]` section: health adverts to the dispatchers (DESIGN.md
/// § 5, `ha-node/src/advertise.rs`).
#[derive(Debug, Clone)]
pub struct DispatchSpec {
    /// The dispatchers' advert listeners.
    pub advertise_to: Vec<SocketAddrV4>,
    /// This node's unique address (advert source).
    pub source: Ipv4Addr,
    pub interval_ms: u32,
    pub priority: u8,
    /// "l2" or "encap".
    pub mode: &'static str,
    /// encap mode: the frame listener (`None`: `source:4342`).
    pub encap_listen: Option<SocketAddrV4>,
}

impl DispatchSpec {
    /// l2 adverts from `source` to `advertise_to` every `interval_ms`.
    pub fn l2(source: Ipv4Addr, advertise_to: Vec<SocketAddrV4>, interval_ms: u32) -> Self {
        Self {
            advertise_to,
            source,
            interval_ms,
            priority: 100,
            mode: "l2",
            encap_listen: None,
        }
    }
}

/// The `[dataplane]` section: the user-space data plane on a TUN device per
/// realm, routes for each home prefix into it (DESIGN.md § 6;
/// `ha-node/src/dataplane/mod.rs`). Needs CAP_NET_ADMIN, so namespace runs
/// only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneSpec {
    /// TUN name prefix; realm `i` gets `<tun_name><i>`.
    pub tun_name: String,
    /// MTU of the path to care-of addresses.
    pub tunnel_mtu: u16,
    /// ICMP Host Unreachable for home addresses without a binding.
    pub icmp_unreachable: bool,
}

impl Default for DataplaneSpec {
    /// `ha-node`'s defaults (`havtun`, 1500, ICMP on).
    fn default() -> Self {
        Self {
            tun_name: "havtun".to_owned(),
            tunnel_mtu: 1500,
            icmp_unreachable: true,
        }
    }
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A whole node configuration.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    /// "timestamp" or "nonce".
    pub replay: &'static str,
    pub timestamp_tolerance_secs: u32,
    /// `[registration] max_commit_ms`; `None`: the node's default.
    pub max_commit_ms: Option<u32>,
    pub realms: Vec<RealmSpec>,
    /// `[cluster]` in raft mode; `None`: local mode (one node).
    pub cluster: Option<ClusterSpec>,
    /// `[cluster]` in pair mode (takes precedence over `cluster`).
    pub pair: Option<PairSpec>,
    /// `[dispatch]`; `None`: no dispatcher adverts.
    pub dispatch: Option<DispatchSpec>,
    /// `[admin.tls]`: client certificates for the admin API.
    pub admin_tls: Option<TlsSpec>,
    /// `[admin] token_file` (full access) and `read_token_file`.
    pub admin_token_file: Option<PathBuf>,
    pub admin_read_token_file: Option<PathBuf>,
    /// `[dataplane]`; `None`: registrations only (the node's default).
    pub dataplane: Option<DataplaneSpec>,
}

impl NodeSpec {
    /// Node `id` with its admin and metrics listeners.
    pub fn new(id: u64, admin: SocketAddr, metrics: SocketAddr) -> Self {
        Self {
            id,
            admin,
            metrics,
            replay: "timestamp",
            timestamp_tolerance_secs: 7,
            max_commit_ms: None,
            realms: Vec::new(),
            cluster: None,
            pair: None,
            dispatch: None,
            admin_tls: None,
            admin_token_file: None,
            admin_read_token_file: None,
            dataplane: None,
        }
    }

    /// Runs the data plane.
    pub fn dataplane(mut self, dataplane: DataplaneSpec) -> Self {
        self.dataplane = Some(dataplane);
        self
    }

    /// Runs the node in pair mode.
    pub fn pair(mut self, pair: PairSpec) -> Self {
        self.pair = Some(pair);
        self
    }

    /// Advertises health to dispatchers.
    pub fn dispatch(mut self, dispatch: DispatchSpec) -> Self {
        self.dispatch = Some(dispatch);
        self
    }

    /// Runs the node in raft mode.
    pub fn cluster(mut self, cluster: ClusterSpec) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Adds a realm.
    pub fn realm(mut self, realm: RealmSpec) -> Self {
        self.realms.push(realm);
        self
    }

    /// The URL of the node's metrics endpoint.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }

    /// The configuration as `ha-node` reads it.
    pub fn toml(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "[node]\nid = {}\n", self.id);
        let _ = writeln!(t, "[admin]\nlisten = \"{}\"", self.admin);
        for (k, f) in [
            ("token_file", &self.admin_token_file),
            ("read_token_file", &self.admin_read_token_file),
        ] {
            if let Some(f) = f {
                let _ = writeln!(t, "{k} = {}", toml_string(&f.display().to_string()));
            }
        }
        t.push('\n');
        if let Some(tls) = &self.admin_tls {
            t.push_str(&tls.toml("admin.tls"));
        }
        let _ = writeln!(t, "[metrics]\nlisten = \"{}\"\n", self.metrics);
        let _ = writeln!(
            t,
            "[registration]\nreplay = \"{}\"\ntimestamp_tolerance_secs = {}\n",
            self.replay, self.timestamp_tolerance_secs
        );
        if let Some(ms) = self.max_commit_ms {
            let _ = writeln!(t, "max_commit_ms = {ms}\n");
        }
        if let Some(p) = &self.pair {
            let _ = writeln!(t, "[cluster]\nmode = \"pair\"\nlisten = \"{}\"\n", p.listen);
            let _ = writeln!(t, "[cluster.pair]\npeer = \"{}\"", p.peer);
            let _ = writeln!(t, "vrid = {}\npriority = {}", p.vrid, p.priority);
            let _ = writeln!(t, "advert_interval_cs = {}", p.advert_interval_cs);
            let _ = writeln!(t, "key_hex = \"{}\"", hex::encode(&p.key));
            let _ = writeln!(t, "forward_retransmit_ms = {}", p.forward_retransmit_ms);
            let _ = writeln!(t, "forward_timeout_ms = {}\n", p.forward_timeout_ms);
        } else if let Some(c) = &self.cluster {
            let _ = writeln!(t, "[cluster]\nmode = \"raft\"");
            let _ = writeln!(t, "cluster_id = {}", toml_string(&c.cluster_id));
            let _ = writeln!(t, "listen = \"{}\"", c.listen);
            let dir = c.data_dir.display().to_string();
            let _ = writeln!(t, "data_dir = {}", toml_string(&dir));
            let _ = writeln!(t, "tick_ms = {}", c.tick_ms);
            let _ = writeln!(t, "election_ticks = {}", c.election_ticks);
            let _ = writeln!(t, "heartbeat_ticks = {}", c.heartbeat_ticks);
            let _ = writeln!(t, "snapshot_every = {}", c.snapshot_every);
            let _ = writeln!(t, "join = {}\n", c.join);
            for (id, addr) in &c.peers {
                let _ = writeln!(t, "[[cluster.peer]]\nid = {id}\naddress = \"{addr}\"");
                if let Some((_, a)) = c.dispatch_sources.iter().find(|(p, _)| p == id) {
                    let _ = writeln!(t, "dispatch_source = \"{a}\"");
                }
                t.push('\n');
            }
            if let Some(tls) = &c.tls {
                t.push_str(&tls.toml("cluster.tls"));
            }
        }
        if let Some(d) = &self.dispatch {
            let to: Vec<String> = d.advertise_to.iter().map(|a| format!("\"{a}\"")).collect();
            let _ = writeln!(t, "[dispatch]\nadvertise_to = [{}]", to.join(", "));
            let _ = writeln!(t, "source = \"{}\"", d.source);
            let _ = writeln!(t, "interval_ms = {}", d.interval_ms);
            let _ = writeln!(t, "priority = {}", d.priority);
            let _ = writeln!(t, "mode = \"{}\"", d.mode);
            if let Some(l) = d.encap_listen {
                let _ = writeln!(t, "encap_listen = \"{l}\"");
            }
            t.push('\n');
        }
        if let Some(d) = &self.dataplane {
            let _ = writeln!(t, "[dataplane]\nenabled = true");
            let _ = writeln!(t, "tun_name = {}", toml_string(&d.tun_name));
            let _ = writeln!(t, "tunnel_mtu = {}", d.tunnel_mtu);
            let _ = writeln!(t, "icmp_unreachable = {}\n", d.icmp_unreachable);
        }
        for r in &self.realms {
            let _ = writeln!(t, "[[realm]]");
            let _ = writeln!(t, "name = \"{}\"", r.name);
            let _ = writeln!(t, "vip = \"{}\"", r.vip);
            let _ = writeln!(t, "port = {}", r.port);
            let _ = writeln!(t, "home_prefix = \"{}\"", r.home_prefix);
            if let Some(p) = &r.pool {
                let _ = writeln!(t, "pool = \"{p}\"");
            }
            let _ = writeln!(t, "max_lifetime_secs = {}", r.max_lifetime_secs);
            let _ = writeln!(t, "reverse_tunnel = \"{}\"", r.reverse_tunnel);
            let _ = writeln!(t, "udp_tunnel = {}", r.udp_tunnel);
            let _ = writeln!(t, "keepalive_interval_secs = {}", r.keepalive_interval_secs);
            let _ = writeln!(t, "simultaneous_bindings = {}\n", r.simultaneous_bindings);
            for sa in &r.sas {
                let _ = writeln!(t, "[[realm.sa]]");
                match &sa.owner {
                    SaOwner::HomeAddress(a) => {
                        let _ = writeln!(t, "home_address = \"{a}\"");
                    }
                    SaOwner::Nai(n) => {
                        let _ = writeln!(t, "nai = \"{n}\"");
                    }
                }
                let _ = writeln!(t, "spi = {}", sa.spi);
                let _ = writeln!(t, "algorithm = \"{}\"", sa.algorithm);
                let _ = writeln!(t, "key_hex = \"{}\"\n", hex::encode(&sa.key));
            }
        }
        t
    }

    /// Writes the configuration to `dir/node-<id>.toml`.
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join(format!("node-{}.toml", self.id));
        std::fs::write(&path, self.toml())?;
        Ok(path)
    }
}

/// Starts the real `ha-node` with `spec` (inside `netns` when given) and
/// waits until its metrics endpoint reports `haven_build_info`: by then every
/// realm socket is bound and the admin API listens.
pub fn start_node(spec: &NodeSpec, dir: &Path, netns: Option<&str>) -> Result<Process, SupError> {
    let bin = workspace_binary("haven-ha-node", "ha-node")?;
    let config = spec.write(dir).map_err(|source| SupError::Io {
        what: format!("writing the config of node {}", spec.id),
        source,
    })?;
    let proc = Process::spawn(
        &format!("ha-node-{}", spec.id),
        Spec::new(bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info"),
        netns,
    )?;
    await_metric(
        &spec.metrics_url(),
        netns,
        "haven_build_info",
        &[],
        |v| v == 1.0,
        Duration::from_secs(20),
    )?;
    Ok(proc)
}

/// Runs `havenctl` against `spec`'s admin API (inside `netns` when given)
/// with `args` plus `--json`, and parses its output.
pub fn havenctl_json(
    spec: &NodeSpec,
    netns: Option<&str>,
    args: &[&str],
) -> Result<serde_json::Value, SupError> {
    let bin = workspace_binary("haven-ha-node", "havenctl")?;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&bin);
            c
        }
        None => std::process::Command::new(&bin),
    };
    cmd.arg("--admin")
        .arg(spec.admin.to_string())
        .arg("--json")
        .args(args);
    let out = cmd.output().map_err(|source| SupError::Io {
        what: "running havenctl".into(),
        source,
    })?;
    if !out.status.success() {
        return Err(SupError::Io {
            what: format!(
                "havenctl {args:?} exited {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ),
            source: std::io::Error::other("havenctl failed"),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|e| SupError::Io {
        what: format!("parsing havenctl output: {e}"),
        source: std::io::Error::other("bad json"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_ha_node_reads() {
        let spec =
            NodeSpec::new(
                3,
                "127.0.0.1:4340".parse().unwrap(),
                "127.0.0.1:9434".parse().unwrap(),
            )
            .realm(
                RealmSpec::new("outer", Ipv4Addr::new(192, 0, 2, 1), "198.51.100.0/24")
                    .with_nai_sas("mn{i}@example.net", 2, 300, b"0123456789abcdef"),
            );
        let t = spec.toml();
        assert!(t.contains("id = 3"));
        assert!(t.contains("nai = \"mn1@example.net\""));
        assert!(t.contains("key_hex = \"30313233343536373839616263646566\""));
        assert_eq!(t.matches("[[realm.sa]]").count(), 2);
        assert!(!t.contains("[cluster]"), "local mode by default");
        assert!(!t.contains("[dispatch]"));
        assert!(!t.contains("[dataplane]"), "registrations only by default");
    }

    #[test]
    fn renders_the_dataplane_section() {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let t = NodeSpec::new(1, a(4340), a(9434))
            .dataplane(DataplaneSpec {
                tunnel_mtu: 1400,
                ..DataplaneSpec::default()
            })
            .toml();
        assert!(
            t.contains(
                "[dataplane]\nenabled = true\ntun_name = \"havtun\"\ntunnel_mtu = 1400\nicmp_unreachable = true\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn renders_the_pair_and_dispatch_sections() {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let v4 = |s: &str| s.parse::<SocketAddrV4>().unwrap();
        let spec = NodeSpec::new(1, a(4340), a(9434))
            .pair(PairSpec {
                priority: 200,
                ..PairSpec::new(v4("127.0.0.1:7401"), v4("127.0.0.2:7401"), b"k")
            })
            .dispatch(DispatchSpec::l2(
                Ipv4Addr::new(198, 18, 0, 11),
                vec![v4("198.18.0.2:4341"), v4("198.18.0.3:4341")],
                100,
            ));
        let t = spec.toml();
        assert!(
            t.contains("[cluster]\nmode = \"pair\"\nlisten = \"127.0.0.1:7401\"\n"),
            "{t}"
        );
        assert!(
            t.contains("[cluster.pair]\npeer = \"127.0.0.2:7401\"\nvrid = 1\npriority = 200\n"),
            "{t}"
        );
        assert!(t.contains("key_hex = \"6b\""), "{t}");
        assert!(
            t.contains(
                "[dispatch]\nadvertise_to = [\"198.18.0.2:4341\", \"198.18.0.3:4341\"]\nsource = \"198.18.0.11\"\ninterval_ms = 100\n"
            ),
            "{t}"
        );
        assert!(t.contains("mode = \"l2\"\n"), "{t}");
    }

    #[test]
    fn renders_the_cluster_section() {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut spec = NodeSpec::new(2, a(4340), a(9434)).cluster(ClusterSpec {
            snapshot_every: 50,
            join: true,
            dispatch_sources: vec![(2, Ipv4Addr::new(127, 0, 0, 12))],
            ..ClusterSpec::raft(
                "lab",
                a(7402),
                Path::new(r#"/tmp/raft "2"\x"#),
                vec![(1, a(7401)), (2, a(7402))],
            )
        });
        spec.max_commit_ms = Some(700);
        let t = spec.toml();
        assert!(t.contains("max_commit_ms = 700\n"), "{t}");
        assert!(
            t.contains("[cluster]\nmode = \"raft\"\ncluster_id = \"lab\"\n"),
            "{t}"
        );
        assert!(t.contains("listen = \"127.0.0.1:7402\""), "{t}");
        assert!(t.contains(r#"data_dir = "/tmp/raft \"2\"\\x""#), "{t}");
        assert!(t.contains("snapshot_every = 50\njoin = true\n"), "{t}");
        assert!(t.contains("[[cluster.peer]]\nid = 1\naddress = \"127.0.0.1:7401\"\n\n"));
        assert!(t.contains(
            "[[cluster.peer]]\nid = 2\naddress = \"127.0.0.1:7402\"\ndispatch_source = \"127.0.0.12\"\n"
        ));
        assert_eq!(t.matches("[[cluster.peer]]").count(), 2);
    }
}
