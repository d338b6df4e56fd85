//! The dispatcher's TOML configuration and its validation.
//!
//! Every setting has a documented default (`#[serde(default)]`), unknown keys
//! are refused so a typo is not silently ignored, and [`Config::validate`]
//! returns a precise error; the binary exits 64 (EX_USAGE) on any of them
//! (STYLE.md §2, §7). `ops/dispatcher.example.toml` shows every key.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::NodeId;
use crate::health::AdvertKey;
use crate::maglev::{DEFAULT_TABLE_SIZE, NodeSpec, is_prime};
use crate::pool::PoolConfig;
use crate::vrrp::{VrrpConfig, VrrpConfigError};

/// How datagrams reach the nodes (DESIGN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Layer-2 direct server return: the rebuilt IPv4/UDP frame goes to the
    /// node's MAC through an AF_PACKET socket; the node answers the mobile
    /// node itself from the VIP. Needs CAP_NET_RAW and a shared segment.
    L2,
    /// The `haven_proto::dispatch` header over UDP to the node's unique
    /// address; replies come back and leave from VIP:434 here.
    Encap,
}

/// A 48-bit Ethernet address written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The broadcast address.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Packs the address into the low 48 bits of a `u64` (0 = unknown).
    pub fn to_u64(self) -> u64 {
        let [a, b, c, d, e, f] = self.0;
        u64::from_be_bytes([0, 0, a, b, c, d, e, f])
    }

    /// Inverse of [`Mac::to_u64`].
    pub fn from_u64(v: u64) -> Mac {
        let [_, _, a, b, c, d, e, f] = v.to_be_bytes();
        Mac([a, b, c, d, e, f])
    }
}

impl std::str::FromStr for Mac {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in &mut out {
            let p = parts
                .next()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| ConfigError::Mac(s.to_owned()))?;
            *o = u8::from_str_radix(p, 16).map_err(|_| ConfigError::Mac(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(ConfigError::Mac(s.to_owned()));
        }
        Ok(Mac(out))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[dispatcher]`.
    pub dispatcher: DispatcherSection,
    /// `[[node]]`, one per home-agent node.
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeEntry>,
    /// `[health]`.
    #[serde(default)]
    pub health: HealthSection,
    /// `[vrrp]`; absent: this dispatcher runs alone and is always active.
    pub vrrp: Option<VrrpSection>,
    /// `[metrics]`.
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// `[dispatcher]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherSection {
    /// The home-agent address mobile nodes register with.
    pub vip: Ipv4Addr,
    /// Its UDP port (default 434 [RFC 5944 § 3.1]).
    #[serde(default = "default_port")]
    pub port: u16,
    /// `"l2"` (default) or `"encap"`.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// The rack interface: AF_PACKET output in l2 mode, where the VIP is
    /// added on takeover and gratuitous ARP is sent. Required in l2 mode
    /// and with `manage_vip`.
    pub interface: Option<String>,
    /// This dispatcher's own address on the rack segment: VRRP source and
    /// tie-break, the address node adverts are sent to, the source of encap
    /// frames.
    pub address: Ipv4Addr,
    /// Add the VIP to `interface` while active and remove it otherwise
    /// (default true). Off for loopback runs where the VIP is local anyway.
    #[serde(default = "yes")]
    pub manage_vip: bool,
    /// Forwarding threads, each with its own SO_REUSEPORT socket (default 1).
    #[serde(default = "one")]
    pub workers: usize,
    /// Local UDP port encap frames leave from and replies return to
    /// (default 4342).
    #[serde(default = "default_encap_port")]
    pub encap_port: u16,
    /// Maglev table size, a prime (default 65537). Both dispatchers of a
    /// pair must agree.
    #[serde(default = "default_table_size")]
    pub table_size: u32,
    /// The realms' home prefixes this dispatcher pair is the rack's gateway
    /// for (DESIGN.md §6; default empty = off): correspondent traffic to a
    /// home address arrives here (the router's route for the prefix points
    /// at the VIP) and goes to the node chosen by the destination address.
    /// l2 mode only.
    #[serde(default)]
    pub home_prefixes: Vec<Prefix>,
    /// Gratuitous ARPs sent on takeover (default 3, at least 1)
    /// [RFC 5798 § 6.4.1]: repeats cover a lost first one.
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    /// Time between them in milliseconds (default 100).
    #[serde(default = "default_garp_interval_ms")]
    pub garp_interval_ms: u32,
}

/// An IPv4 prefix written `a.b.c.d/len`, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// The prefix length, 1–32.
    pub len: u8,
}

impl Prefix {
    /// The netmask as a host-order `u32`.
    pub fn mask(self) -> u32 {
        match self.len {
            0 => 0,
            l => u32::MAX << (32 - u32::from(l.min(32))),
        }
    }

    /// The network address as a host-order `u32`.
    pub fn net(self) -> u32 {
        u32::from(self.addr) & self.mask()
    }

    /// Whether `ip` is inside.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.net()
    }
}

impl std::str::FromStr for Prefix {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::Prefix(s.to_owned());
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        // /0 would capture every packet the router sends us, registrations
        // included.
        if !(1..=32).contains(&len) {
            return Err(bad());
        }
        let p = Prefix { addr, len };
        if p.net() != u32::from(addr) {
            return Err(bad());
        }
        Ok(p)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// At most this many home prefixes: the receive filter is one classic BPF
/// program of 3 instructions per prefix, and its jumps are 8-bit.
pub const MAX_HOME_PREFIXES: usize = 32;

/// `[[node]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node's stable id (hashed by Maglev; same on both dispatchers).
    pub id: u32,
    /// The node's unique address on the rack segment: its adverts come from
    /// it, encap frames go to it, its MAC is resolved for it.
    pub address: Ipv4Addr,
    /// The node's MAC (l2); absent: resolved from the neighbour table.
    pub mac: Option<Mac>,
    /// Relative capacity for the Maglev table (default 1).
    #[serde(default = "one_u32")]
    pub weight: u32,
    /// The node's encap listener port (default 4342).
    #[serde(default = "default_encap_port")]
    pub encap_port: u16,
}

/// `[health]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// UDP port node adverts arrive on (default 4341).
    pub listen_port: u16,
    /// Consecutive adverts that bring a Down node back (default 3).
    pub rise: u32,
    /// A file with the HMAC-SHA256 key the nodes' `[dispatch] key_file`
    /// holds (docs/security.md): hex (whitespace trimmed) or, if not hex,
    /// the raw octets; at least 16 octets; mode 0600 or stricter. Relative
    /// to the configuration file's directory. Set: adverts without a valid
    /// trailer or with an old sequence are refused. Absent: plain RFC 5798
    /// adverts are accepted, as without authentication.
    pub key_file: Option<PathBuf>,
    /// The key read from `key_file` by [`Config::load`] / [`Config::parse`].
    #[serde(skip)]
    pub key: Option<AdvertKey>,
}

impl Default for HealthSection {
    fn default() -> Self {
        Self {
            listen_port: 4341,
            rise: crate::health::DEFAULT_RISE,
            key_file: None,
            key: None,
        }
    }
}

/// Shortest advert key accepted (the node's MIN_KEY_LEN for SA keys).
pub const MIN_ADVERT_KEY_LEN: usize = 16;

/// Reads an advert key file: private (no group or other bits), hex if the
/// trimmed contents are an even number of hex digits, else the raw octets.
pub fn read_key_file(path: &Path) -> Result<AdvertKey, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(err)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::KeyFileMode {
            path: path.display().to_string(),
            mode,
        });
    }
    let raw = std::fs::read(path).map_err(err)?;
    let key = decode_hex(raw.trim_ascii()).unwrap_or(raw);
    if key.len() < MIN_ADVERT_KEY_LEN {
        return Err(ConfigError::KeyTooShort {
            path: path.display().to_string(),
            len: key.len(),
        });
    }
    Ok(AdvertKey::new(key))
}

fn decode_hex(s: &[u8]) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() % 2 != 0 {
        return None;
    }
    s.chunks_exact(2)
        .map(|c| {
            let d = |x: u8| char::from(x).to_digit(16);
            Some(u8::try_from(d(c[0])? * 16 + d(c[1])?).unwrap_or(0))
        })
        .collect()
}

/// `[vrrp]` [RFC 5798 § 6.1].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpSection {
    /// VRID, 1–255 (default 1).
    #[serde(default = "one_u8")]
    pub vrid: u8,
    /// Priority, 1–254 (255 = owner; default 100).
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Advertisement_Interval in centiseconds (default 100).
    #[serde(default = "default_interval_cs")]
    pub interval_cs: u16,
    /// Preempt_Mode (default true).
    #[serde(default = "yes")]
    pub preempt: bool,
    /// The other dispatcher: adverts go to it by unicast. Absent: to the
    /// VRRP group 224.0.0.18 on `interface` [RFC 5798 § 5.1.1.2].
    pub peer: Option<Ipv4Addr>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Prometheus listener (default 127.0.0.1:9435); absent key keeps the
    /// default, `enabled = false` turns it off.
    pub listen: SocketAddr,
    /// Serve metrics (default true).
    pub enabled: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9435)),
            enabled: true,
        }
    }
}

fn default_port() -> u16 {
    434
}
fn default_mode() -> Mode {
    Mode::L2
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn one_u32() -> u32 {
    1
}
fn one_u8() -> u8 {
    1
}
fn default_encap_port() -> u16 {
    4342
}
fn default_garp_count() -> u32 {
    3
}
fn default_garp_interval_ms() -> u32 {
    100
}
fn default_table_size() -> u32 {
    DEFAULT_TABLE_SIZE
}
fn default_priority() -> u8 {
    haven_proto::vrrp::PRIORITY_DEFAULT
}
fn default_interval_cs() -> u16 {
    crate::vrrp::DEFAULT_ADVERT_INTERVAL_CS
}

/// What [`Config::load`] and [`Config::validate`] refuse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key of the wrong type or unknown.
    #[error("parsing the configuration: {0}")]
    Parse(String),
    /// A MAC address that is not `aa:bb:cc:dd:ee:ff`.
    #[error("bad MAC address {0:?}")]
    Mac(String),
    /// No `[[node]]`.
    #[error("at least one [[node]] is required")]
    NoNodes,
    /// Two nodes with one id or one address.
    #[error("duplicate node {0}")]
    DuplicateNode(String),
    /// A node weight of 0.
    #[error("node {0}: weight must be at least 1")]
    ZeroWeight(u32),
    /// l2 mode or `manage_vip` without an interface.
    #[error("[dispatcher] interface is required in l2 mode and with manage_vip")]
    NoInterface,
    /// An interface name the kernel cannot have.
    #[error("bad interface name {0:?}")]
    BadInterface(String),
    /// Not a prime in range.
    #[error("table_size {0} must be a prime between 2 and 2^24")]
    TableSize(u32),
    /// `workers` 0 or absurd.
    #[error("workers must be 1-64, got {0}")]
    Workers(usize),
    /// Port 0 where a fixed port is needed.
    #[error("{0} must not be 0")]
    ZeroPort(&'static str),
    /// `[health] rise` 0.
    #[error("[health] rise must be at least 1")]
    Rise,
    /// The VRRP section fails RFC 5798's ranges.
    #[error("[vrrp]: {0}")]
    Vrrp(#[from] VrrpConfigError),
    /// Not `a.b.c.d/len` with len 1-32 and host bits zero.
    #[error("bad home prefix {0:?}: want a.b.c.d/len, len 1-32, host bits zero")]
    Prefix(String),
    /// Too many home prefixes for the receive filter.
    #[error("at most {MAX_HOME_PREFIXES} home_prefixes")]
    TooManyPrefixes,
    /// An address the dispatcher must receive itself lies in a home prefix.
    #[error("{what} {addr} lies inside home prefix {prefix}")]
    AddressInPrefix {
        /// Which address.
        what: &'static str,
        /// The address.
        addr: Ipv4Addr,
        /// The prefix.
        prefix: Prefix,
    },
    /// Home-prefix forwarding carries whole IP packets by MAC; encap has no
    /// frame kind for them (yet).
    #[error("home_prefixes need mode = \"l2\" (encap carries only VIP:434 datagrams)")]
    PrefixesNeedL2,
    /// `garp_count` 0 or absurd, `garp_interval_ms` 0.
    #[error("garp_count must be 1-10 and garp_interval_ms 1-10000")]
    Garp,
    /// `[health] key_file` readable by group or others.
    #[error(
        "[health] key_file {path} has mode {mode:04o}; it must not be accessible by group or others (chmod 0600)"
    )]
    KeyFileMode {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// `[health] key_file` shorter than [`MIN_ADVERT_KEY_LEN`].
    #[error("[health] key_file {path}: key of {len} octets, at least {MIN_ADVERT_KEY_LEN} needed")]
    KeyTooShort {
        /// The file.
        path: String,
        /// The key's length.
        len: usize,
    },
    /// VRRP priority 255 is for the address owner; a dispatcher pair has none.
    #[error("[vrrp] priority 255 is reserved for the address owner; use 1-254")]
    OwnerPriority,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_in(&text, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses and validates a configuration text (a relative `key_file` is
    /// relative to the working directory).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_in(text, Path::new("."))
    }

    /// Parses, reads the advert key file (relative to `base`), validates.
    fn parse_in(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        // The secret first: a key file others can read is refused before
        // anything else is looked at (docs/security.md).
        if let Some(f) = &c.health.key_file {
            c.health.key = Some(read_key_file(&base.join(f))?);
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks everything a running dispatcher would trip over later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.dispatcher;
        if self.nodes.is_empty() {
            return Err(ConfigError::NoNodes);
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut addrs = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if !ids.insert(n.id) {
                return Err(ConfigError::DuplicateNode(format!("id {}", n.id)));
            }
            if !addrs.insert(n.address) {
                return Err(ConfigError::DuplicateNode(format!("address {}", n.address)));
            }
            if n.weight == 0 {
                return Err(ConfigError::ZeroWeight(n.id));
            }
            if d.mode == Mode::Encap && n.encap_port == 0 {
                return Err(ConfigError::ZeroPort("[[node]] encap_port"));
            }
        }
        if d.mode == Mode::L2 || d.manage_vip {
            match &d.interface {
                None => return Err(ConfigError::NoInterface),
                Some(i) if i.is_empty() || i.len() > 15 || i.contains(['/', ' ', '\0']) => {
                    return Err(ConfigError::BadInterface(i.clone()));
                }
                Some(_) => {}
            }
        }
        if !(2..=crate::maglev::MAX_TABLE_SIZE).contains(&d.table_size) || !is_prime(d.table_size) {
            return Err(ConfigError::TableSize(d.table_size));
        }
        if !(1..=64).contains(&d.workers) {
            return Err(ConfigError::Workers(d.workers));
        }
        if d.port == 0 {
            return Err(ConfigError::ZeroPort("[dispatcher] port"));
        }
        if d.mode == Mode::Encap && d.encap_port == 0 {
            return Err(ConfigError::ZeroPort("[dispatcher] encap_port"));
        }
        if d.home_prefixes.len() > MAX_HOME_PREFIXES {
            return Err(ConfigError::TooManyPrefixes);
        }
        if !d.home_prefixes.is_empty() && d.mode != Mode::L2 {
            return Err(ConfigError::PrefixesNeedL2);
        }
        let own = [("vip", d.vip), ("address", d.address)]
            .into_iter()
            .chain(self.nodes.iter().map(|n| ("[[node]] address", n.address)));
        for (what, addr) in own {
            if let Some(&prefix) = d.home_prefixes.iter().find(|p| p.contains(addr)) {
                return Err(ConfigError::AddressInPrefix { what, addr, prefix });
            }
        }
        if !(1..=10).contains(&d.garp_count) || !(1..=10_000).contains(&d.garp_interval_ms) {
            return Err(ConfigError::Garp);
        }
        if self.health.listen_port == 0 {
            return Err(ConfigError::ZeroPort("[health] listen_port"));
        }
        if self.health.rise == 0 {
            return Err(ConfigError::Rise);
        }
        if let Some(v) = self.vrrp_config() {
            if v.priority == haven_proto::vrrp::PRIORITY_OWNER {
                return Err(ConfigError::OwnerPriority);
            }
            v.validate()?;
        }
        Ok(())
    }

    /// The node pool's configuration.
    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            table_size: self.dispatcher.table_size,
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeSpec::weighted(NodeId(n.id), n.weight))
                .collect(),
            rise: self.health.rise,
        }
    }

    /// The VRRP router's configuration, if `[vrrp]` is present.
    pub fn vrrp_config(&self) -> Option<VrrpConfig> {
        self.vrrp.as_ref().map(|v| VrrpConfig {
            vrid: v.vrid,
            priority: v.priority,
            advert_interval_cs: v.interval_cs,
            preempt: v.preempt,
            primary_ip: self.dispatcher.address,
            addresses: vec![self.dispatcher.vip],
        })
    }

    /// VIP and port.
    pub fn vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.dispatcher.vip, self.dispatcher.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [dispatcher]
        vip = "192.0.2.1"
        mode = "l2"
        interface = "s0"
        address = "198.18.0.2"

        [[node]]
        id = 1
        address = "198.18.0.11"
        mac = "02:00:5e:00:01:0b"

        [[node]]
        id = 2
        address = "198.18.0.12"
        weight = 2

        [vrrp]
        vrid = 7
        priority = 150
        peer = "198.18.0.3"

        [metrics]
        listen = "127.0.0.1:9500"
    "#;

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.dispatcher.port, 434);
        assert_eq!(c.dispatcher.workers, 1);
        assert!(c.dispatcher.manage_vip);
        assert_eq!(c.health.listen_port, 4341);
        assert_eq!(c.health.rise, 3);
        assert_eq!(c.nodes[0].mac, Some(Mac([0x02, 0, 0x5e, 0, 1, 0x0b])));
        assert_eq!(c.nodes[1].mac, None);
        assert_eq!(c.nodes[1].weight, 2);
        let v = c.vrrp_config().expect("vrrp");
        assert_eq!(v.vrid, 7);
        assert_eq!(v.advert_interval_cs, 100);
        assert!(v.preempt);
        assert_eq!(v.primary_ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(v.addresses, vec![Ipv4Addr::new(192, 0, 2, 1)]);
        let p = c.pool_config();
        assert_eq!(p.nodes.len(), 2);
        assert_eq!(p.table_size, 65537);
        assert_eq!(c.metrics.listen, "127.0.0.1:9500".parse().unwrap());
    }

    fn bad(edit: impl Fn(String) -> String) -> ConfigError {
        Config::parse(&edit(GOOD.to_owned())).expect_err("must be refused")
    }

    #[test]
    fn refusals_are_precise() {
        assert!(matches!(
            bad(|s| s.replace("02:00:5e:00:01:0b", "02:00:5e:00:01")),
            ConfigError::Parse(m) if m.contains("MAC")
        ));
        assert!(matches!(
            bad(|s| s.replace("id = 2", "id = 1")),
            ConfigError::DuplicateNode(_)
        ));
        assert!(matches!(
            bad(|s| s.replace("198.18.0.12", "198.18.0.11")),
            ConfigError::DuplicateNode(_)
        ));
        assert!(matches!(
            bad(|s| s.replace("weight = 2", "weight = 0")),
            ConfigError::ZeroWeight(2)
        ));
        assert!(matches!(
            bad(|s| s.replace("interface = \"s0\"", "")),
            ConfigError::NoInterface
        ));
        assert!(matches!(
            bad(|s| s.replace("priority = 150", "priority = 255")),
            ConfigError::OwnerPriority
        ));
        assert!(matches!(
            bad(|s| s.replace("vrid = 7", "vrid = 0")),
            ConfigError::Vrrp(VrrpConfigError::Vrid)
        ));
        assert!(matches!(
            bad(|s| s.replace("mode = \"l2\"", "mode = \"l2\"\ntable_size = 65536")),
            ConfigError::TableSize(65536)
        ));
        assert!(matches!(
            bad(|s| s.replace("mode = \"l2\"", "mode = \"l3\"")),
            ConfigError::Parse(_)
        ));
        assert!(matches!(
            bad(|s| s.replace("[metrics]", "[metrics]\nbogus = 1")),
            ConfigError::Parse(m) if m.contains("bogus")
        ));
        let no_nodes = "[dispatcher]\nvip = \"192.0.2.1\"\nmode = \"encap\"\nmanage_vip = false\naddress = \"127.0.0.1\"\n";
        assert!(matches!(Config::parse(no_nodes), Err(ConfigError::NoNodes)));
    }

    #[test]
    fn encap_on_loopback_needs_no_interface() {
        let t = "[dispatcher]\nvip = \"127.0.0.1\"\nport = 4434\nmode = \"encap\"\n\
                 manage_vip = false\naddress = \"127.0.0.1\"\n\
                 [[node]]\nid = 1\naddress = \"127.0.0.2\"\n";
        let c = Config::parse(t).expect("valid");
        assert!(c.vrrp.is_none());
        assert_eq!(c.nodes[0].encap_port, 4342);
    }

    #[test]
    fn home_prefixes() {
        let c = Config::parse(GOOD).expect("valid");
        assert!(c.dispatcher.home_prefixes.is_empty(), "off by default");
        assert_eq!(
            (c.dispatcher.garp_count, c.dispatcher.garp_interval_ms),
            (3, 100)
        );
        let with = |p: &str| {
            GOOD.replace(
                "mode = \"l2\"",
                &format!("mode = \"l2\"\nhome_prefixes = [{p}]"),
            )
        };
        let c = Config::parse(&with("\"198.51.100.0/24\", \"203.0.113.128/25\"")).expect("valid");
        let p = &c.dispatcher.home_prefixes;
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].to_string(), "203.0.113.128/25");
        assert!(p[0].contains(Ipv4Addr::new(198, 51, 100, 77)));
        assert!(!p[0].contains(Ipv4Addr::new(198, 51, 101, 1)));
        assert!(p[1].contains(Ipv4Addr::new(203, 0, 113, 200)));
        assert!(!p[1].contains(Ipv4Addr::new(203, 0, 113, 2)));
        let host: Prefix = "198.51.100.9/32".parse().unwrap();
        assert!(host.contains(Ipv4Addr::new(198, 51, 100, 9)));
        assert!(!host.contains(Ipv4Addr::new(198, 51, 100, 8)));
        for bad in [
            "198.51.100.1/24",
            "198.51.100.0/33",
            "0.0.0.0/0",
            "198.51.100.0",
            "x/8",
        ] {
            assert!(
                matches!(Config::parse(&with(&format!("\"{bad}\""))), Err(ConfigError::Parse(m)) if m.contains("home prefix")),
                "{bad}"
            );
        }
        assert!(matches!(
            Config::parse(&with("\"198.18.0.0/24\"")),
            Err(ConfigError::AddressInPrefix {
                what: "address",
                ..
            })
        ));
        assert!(matches!(
            Config::parse(&with("\"192.0.2.0/24\"")),
            Err(ConfigError::AddressInPrefix { what: "vip", .. })
        ));
        let encap = "[dispatcher]\nvip = \"127.0.0.1\"\nmode = \"encap\"\nmanage_vip = false\n\
                     address = \"127.0.0.1\"\nhome_prefixes = [\"198.51.100.0/24\"]\n\
                     [[node]]\nid = 1\naddress = \"127.0.0.2\"\n";
        assert!(matches!(
            Config::parse(encap),
            Err(ConfigError::PrefixesNeedL2)
        ));
        assert!(matches!(
            Config::parse(&GOOD.replace("mode = \"l2\"", "mode = \"l2\"\ngarp_count = 0")),
            Err(ConfigError::Garp)
        ));
        let many: Vec<String> = (0..33).map(|i| format!("\"198.51.100.{i}/32\"")).collect();
        assert!(matches!(
            Config::parse(&with(&many.join(","))),
            Err(ConfigError::TooManyPrefixes)
        ));
    }

    #[test]
    fn the_example_file_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/dispatcher.example.toml");
        let c = Config::load(&p).expect("ops/dispatcher.example.toml");
        assert!(c.dispatcher.home_prefixes.is_empty());
        assert_eq!(c.dispatcher.garp_count, 3);
    }

    #[test]
    fn mac_roundtrip() {
        let m: Mac = "aa:bb:cc:dd:ee:0f".parse().unwrap();
        assert_eq!(m.to_string(), "aa:bb:cc:dd:ee:0f");
        assert_eq!(Mac::from_u64(m.to_u64()), m);
        assert!("aa:bb:cc:dd:ee:0f:11".parse::<Mac>().is_err());
        assert!("aa:bb:cc:dd:ee:zz".parse::<Mac>().is_err());
    }
}
