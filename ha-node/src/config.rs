//! The node's configuration file (TOML) and its validation.
//!
//! Every field has a documented default (`#[serde(default)]`) and unknown
//! fields are refused (`deny_unknown_fields`) so a typo never silently falls
//! back to a default. [`Config::validate`] checks everything that parsing
//! cannot (in the manner of raft-rs `Config::validate`): each failure is one
//! precise [`ConfigError`] naming the realm and the offending value. The
//! daemon exits 64 (EX_USAGE) on any of them.
//!
//! Realms ([DESIGN.md § 7]) appear in file order; their position is the
//! [`RealmId`] carried by replicated commands, so every replica of a cluster
//! must list the same realms in the same order.
//!
//! Keys are never printed: [`Key`]'s `Debug` shows only its length. A realm
//! may keep its security associations in a separate `keys_file` which must
//! not be readable by group or others (mode 0600 or stricter).

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use haven_proto::mip::auth::Algorithm;
use serde::Deserialize;

/// Index of a realm in the configuration's `[[realm]]` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealmId(pub u16);

/// Lowest SPI usable for a mobility security association: 0–255 are
/// reserved [RFC 5944 § 5.1, § 1.6 "Security Parameter Index"].
pub const MIN_SPI: u32 = 256;
/// Shortest key accepted: RFC 5944 § 5.1 requires support for 128-bit keys,
/// and anything shorter is too weak to protect registrations.
pub const MIN_KEY_LEN: usize = 16;
/// Largest dynamic pool (a /8).
pub const MAX_POOL_SIZE: u32 = 1 << 24;
/// Longest NAI: the MN-NAI extension length is one octet [RFC 2794 § 2].
pub const MAX_NAI_LEN: usize = 255;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[node]`
    pub node: NodeConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
    /// `[registration]`
    pub registration: RegistrationConfig,
    /// `[[realm]]`, in file order (position = [`RealmId`]).
    pub realm: Vec<RealmConfig>,
    /// `[cluster]`: replication (default: local, no replication).
    pub cluster: ClusterConfig,
    /// `[dataplane]`: the user-space data plane (default off;
    /// [`crate::dataplane::DataplaneConfig`]).
    pub dataplane: crate::dataplane::DataplaneConfig,
    /// `[dispatch]`: health advertisements to the dispatchers and the
    /// encap-mode listener (DESIGN.md § 5); absent: no dispatcher.
    pub dispatch: Option<crate::advertise::DispatchConfig>,
}

/// `[cluster] mode`: how bindings are replicated ([DESIGN.md § 4]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// One node, no replication: every proposal commits at once (default).
    #[default]
    Local,
    /// A Raft group of 3 or more voters over a durable `raft-engine` log.
    Raft,
    /// Two nodes, primary and secondary: data dump at boot, data forward
    /// per registration, VRRP-style advertisements ([`crate::pair`]).
    Pair,
}

impl ClusterMode {
    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClusterMode::Local => "local",
            ClusterMode::Raft => "raft",
            ClusterMode::Pair => "pair",
        }
    }
}

/// `[cluster]`: the Raft group this node belongs to. Every field but
/// `mode` is ignored in local mode. This node's Raft id is `[node] id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `"local"` (default) or `"raft"`.
    pub mode: ClusterMode,
    /// Names the cluster; the transport refuses batches carrying another
    /// (two clusters sharing a backend network by mistake). Required in
    /// raft mode.
    pub cluster_id: String,
    /// The Raft transport's gRPC listener. Required in raft mode.
    pub listen: Option<SocketAddr>,
    /// The directory of the durable Raft log (`raft-engine`). Required in
    /// raft mode; created if missing.
    pub data_dir: Option<PathBuf>,
    /// Length of one Raft tick, milliseconds. Default 50.
    pub tick_ms: u32,
    /// Ticks without a leader before an election (raft randomises it in
    /// `[election_ticks, 2 × election_ticks)`). Default 10.
    pub election_ticks: usize,
    /// Ticks between the leader's heartbeats; less than `election_ticks`.
    /// Default 2.
    pub heartbeat_ticks: usize,
    /// Applied entries between state-machine snapshots (log compaction; a
    /// follower that fell behind the compacted log gets the snapshot).
    /// Default 10000.
    pub snapshot_every: u64,
    /// Start with an empty log and wait to be added by `AddMember` on the
    /// leader, instead of founding the cluster with `peer` as its voters.
    /// Default false.
    pub join: bool,
    /// `[[cluster.peer]]`: every voter of a new cluster, this node included
    /// (with `join`, the members to expect messages from).
    pub peer: Vec<PeerConfig>,
    /// `[cluster.pair]`: pair mode's settings (`listen` above is this
    /// node's unique sync address). Ignored in other modes.
    pub pair: PairSection,
    /// `[cluster.tls]`: mutual TLS for the Raft transport (raft mode).
    /// Absent: plaintext gRPC, for a trusted backend network only (the
    /// node warns at start; docs/security.md).
    pub tls: Option<TlsFiles>,
}

/// PEM files of one TLS endpoint: `ca` verifies the other side, `cert`
/// (with its chain) and `key` identify this one. Relative paths are
/// resolved against the config file's directory; `key` must not be
/// readable by group or others. [`Config::load`] reads them into
/// [`TlsFiles::material`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificate(s) the other side's certificate must chain to.
    pub ca: PathBuf,
    /// This node's certificate chain.
    pub cert: PathBuf,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key: PathBuf,
    /// The files' contents, filled by [`Config::load`].
    #[serde(skip)]
    pub material: Option<TlsMaterial>,
}

/// The PEM contents of a [`TlsFiles`]. `Debug` hides the key.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// CA certificate(s), PEM.
    pub ca: Vec<u8>,
    /// Certificate chain, PEM.
    pub cert: Vec<u8>,
    /// Private key, PEM.
    pub key: Key,
}

impl TlsFiles {
    fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            *p = base.join(&*p);
        }
    }

    fn load(&mut self) -> Result<(), ConfigError> {
        check_private(&self.key)?;
        self.material = Some(TlsMaterial {
            ca: read_bytes(&self.ca)?,
            cert: read_bytes(&self.cert)?,
            key: Key::new(read_bytes(&self.key)?),
        });
        Ok(())
    }
}

/// `[cluster.pair]`: the pair replicator's settings ([`crate::pair`]; its
/// module docs describe the protocol). Defaults in parentheses.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairSection {
    /// The peer's unique sync address (`[cluster] listen` on the other
    /// node). Required.
    pub peer: Option<std::net::SocketAddrV4>,
    /// Virtual router id of the virtual home agent (1).
    pub vrid: u8,
    /// VRRP priority 1..=254 (100); higher wins a dual-primary tie. No
    /// preemption [RFC 5798 § 6.4].
    pub priority: u8,
    /// Advertisement interval, centiseconds 1..=4095 (100: RFC 5798's
    /// default; Master_Down_Interval ≈ 3.6 s) [RFC 5798 § 5.2.7].
    pub advert_interval_cs: u16,
    /// HMAC-SHA256 key shared by both nodes, hex, at least 16 octets.
    /// Required, here or as `key_file`.
    pub key_hex: Key,
    /// The same key in a file (relative to the configuration file's
    /// directory; mode 0600; hex, whitespace trimmed, or else raw octets), so
    /// that the configuration itself holds no secret. Not with `key_hex`.
    pub key_file: Option<PathBuf>,
    /// Re-send unacknowledged forwards after this many ms (20).
    pub forward_retransmit_ms: u32,
    /// Go on alone (degraded) after a forward stayed unacknowledged this
    /// long, ms; 0 = Master_Down_Interval (0).
    pub forward_timeout_ms: u32,
    /// Largest dump/forward message, octets (1400).
    pub max_datagram: usize,
    /// Entries kept for a lagging secondary (65536).
    pub max_log: usize,
}

impl Default for PairSection {
    fn default() -> Self {
        Self {
            peer: None,
            vrid: 1,
            priority: 100,
            advert_interval_cs: 100,
            key_hex: Key::default(),
            key_file: None,
            forward_retransmit_ms: 20,
            forward_timeout_ms: 0,
            max_datagram: 1400,
            max_log: 65536,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            mode: ClusterMode::Local,
            cluster_id: String::new(),
            listen: None,
            data_dir: None,
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: 10_000,
            join: false,
            peer: Vec::new(),
            pair: PairSection::default(),
            tls: None,
        }
    }
}

/// `[[cluster.peer]]`: one member of the Raft group.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    /// Its `[node] id`.
    pub id: u64,
    /// `host:port` of its `[cluster] listen`.
    pub address: String,
    /// Its `[dispatch] source`, the address the dispatchers know it by
    /// (their `[[node]] address`): what this node's withdrawals name when
    /// the peer's process dies. Default: the IPv4 host of `address`; set
    /// it where the Raft network is not the dispatch segment.
    pub dispatch_source: Option<Ipv4Addr>,
}

impl ClusterConfig {
    /// The peers as the transport wants them (id → `host:port`).
    pub fn peer_map(&self) -> std::collections::HashMap<u64, String> {
        self.peer
            .iter()
            .map(|p| (p.id, p.address.clone()))
            .collect()
    }

    /// Peer id → `dispatch_source`, for the peers that set one.
    pub fn dispatch_sources(&self) -> std::collections::HashMap<u64, Ipv4Addr> {
        self.peer
            .iter()
            .filter_map(|p| p.dispatch_source.map(|a| (p.id, a)))
            .collect()
    }

    /// The tick length.
    pub fn tick(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.tick_ms))
    }
}

/// `[node]`: this node's identity in the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Cluster-unique node id; 0 is invalid (raft-rs reserves it). Default 1.
    pub id: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { id: 1 }
    }
}

/// `[admin]`: the admin gRPC listener and who may use it
/// (docs/security.md). On loopback nothing is required; any other listen
/// address needs `tls` (a client certificate from `tls.ca`) or
/// `token_file` (a bearer token), else the node refuses to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Default `127.0.0.1:4340`.
    pub listen: SocketAddr,
    /// `[admin.tls]`: serve TLS with `cert`/`key` and require a client
    /// certificate signed by `ca` (full access).
    pub tls: Option<TlsFiles>,
    /// A file holding the bearer token of full (read and write) access:
    /// `authorization: Bearer <token>` metadata. Mode 0600 or stricter.
    pub token_file: Option<PathBuf>,
    /// A file holding a token that allows the read-only calls only
    /// (Status, ListBindings, GetBinding). Mode 0600 or stricter.
    pub read_token_file: Option<PathBuf>,
    /// The tokens' contents, filled by [`Config::load`].
    #[serde(skip)]
    pub tokens: AdminTokens,
}

/// The admin bearer tokens read from `token_file` / `read_token_file`
/// (surrounding whitespace trimmed). `Debug` hides them.
#[derive(Debug, Clone, Default)]
pub struct AdminTokens {
    /// Full access.
    pub write: Option<Key>,
    /// Read-only access.
    pub read: Option<Key>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 4340)),
            tls: None,
            token_file: None,
            read_token_file: None,
            tokens: AdminTokens::default(),
        }
    }
}

impl AdminConfig {
    /// Whether any authentication is configured.
    pub fn authenticated(&self) -> bool {
        self.tls.is_some() || self.token_file.is_some() || self.read_token_file.is_some()
    }
}

/// `[metrics]`: the Prometheus scrape listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Default `127.0.0.1:9434`.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9434)),
        }
    }
}

/// Replay protection style [RFC 5944 § 5.7].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayMode {
    /// Timestamps (mandatory to implement, the default) [RFC 5944 § 5.7.1].
    #[default]
    Timestamp,
    /// Nonces [RFC 5944 § 5.7.2].
    Nonce,
}

/// `[registration]`: registration processing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Accepted clock difference for timestamp identifications, seconds.
    /// Default 7 (RFC 5944 § 5.7.1 "e.g., 7 seconds").
    pub timestamp_tolerance_secs: u32,
    /// `"timestamp"` (default) or `"nonce"`.
    pub replay: ReplayMode,
    /// Longest time a registration may wait for its replicated command to be
    /// applied before the node gives up and sends no reply, milliseconds.
    /// Default 2000 (the MN retransmits after about a second, § 3.6.3).
    pub max_commit_ms: u32,
    /// `[registration.limits]`: token buckets on failing requests.
    pub limits: LimitsConfig,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            timestamp_tolerance_secs: 7,
            replay: ReplayMode::Timestamp,
            max_commit_ms: 2000,
            limits: LimitsConfig::default(),
        }
    }
}

/// `[registration.limits]`: flood resistance ([`crate::limiter`]). Every
/// request that fails (garbage, poorly formed, bad authenticator, replay,
/// any denial decided at reception) costs its source IP one token of its
/// bucket and one of the global bucket; accepted registrations cost
/// nothing. A source with an empty bucket is dropped before parsing;
/// while the global bucket is empty, every source with failures still
/// being paid off is dropped. Defaults in parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Whether the limiter runs (true).
    pub enabled: bool,
    /// Failures per second a source may keep up (5).
    pub per_source_rate: f64,
    /// Failures a source may make in a burst (20).
    pub per_source_burst: f64,
    /// Failures per second over all sources (1000).
    pub global_rate: f64,
    /// Global burst (2000).
    pub global_burst: f64,
    /// Sources tracked at once; the one that failed least recently is
    /// forgotten first (65536: about 4 MiB).
    pub max_sources: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_source_rate: 5.0,
            per_source_burst: 20.0,
            global_rate: 1000.0,
            global_burst: 2000.0,
            max_sources: 65536,
        }
    }
}

/// Reverse tunnelling policy of a realm [RFC 3024].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReverseTunnelPolicy {
    /// Granted when the MN sets the T bit (default).
    #[default]
    Optional,
    /// Requests without the T bit are refused [RFC 3024 § 4.3, code 138].
    Required,
    /// Requests with the T bit are refused [RFC 3024 § 4.3, code 137].
    Forbidden,
}

/// `[[realm]]`: one mobility system served by this cluster ([DESIGN.md § 7]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealmConfig {
    /// Realm name, unique, e.g. `"inner"` or `"outer"`. Required.
    pub name: String,
    /// The shared home agent address (the HA address in registrations). Required.
    pub vip: Ipv4Addr,
    /// Registration port. Default 434 [RFC 5944 § 3.1].
    pub port: u16,
    /// The home network, CIDR, e.g. `"198.51.100.0/24"`. Required.
    pub home_prefix: Option<Prefix>,
    /// Dynamic home address pool, `"first-last"`, inside `home_prefix`
    /// [RFC 2794]. Default: none (fixed home addresses only).
    pub pool: Option<PoolRange>,
    /// Longest lifetime granted, seconds. Default 1800.
    pub max_lifetime_secs: u16,
    /// `"optional"` (default), `"required"` or `"forbidden"`.
    pub reverse_tunnel: ReverseTunnelPolicy,
    /// Whether UDP tunnelling for NAT traversal is granted [RFC 3519].
    /// Default true.
    pub udp_tunnel: bool,
    /// NAT keepalive interval sent in the UDP Tunnel Reply, seconds.
    /// Default 110 (RFC 3519 § 3.1's suggested default).
    pub keepalive_interval_secs: u16,
    /// Most simultaneous care-of addresses per home address [RFC 5944 § 3.6.1.2].
    /// Default 1: simultaneous bindings not supported (the reply then says
    /// code 1, "accepted, simultaneous bindings unsupported").
    pub simultaneous_bindings: u8,
    /// Security associations written inline.
    pub sa: Vec<SaConfig>,
    /// A separate TOML file with more `[[sa]]` entries (mode 0600), relative
    /// to the config file. Default: none.
    pub keys_file: Option<PathBuf>,
}

impl Default for RealmConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            vip: Ipv4Addr::UNSPECIFIED,
            port: 434,
            home_prefix: None,
            pool: None,
            max_lifetime_secs: 1800,
            reverse_tunnel: ReverseTunnelPolicy::Optional,
            udp_tunnel: true,
            keepalive_interval_secs: 110,
            simultaneous_bindings: 1,
            sa: Vec::new(),
            keys_file: None,
        }
    }
}

/// Authenticator algorithm names as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlgorithmName {
    /// `"hmac-md5"` (default) [RFC 5944 § 3.5.1].
    #[default]
    HmacMd5,
    /// `"prefix-suffix-md5"` (legacy, RFC 2002).
    PrefixSuffixMd5,
}

impl From<AlgorithmName> for Algorithm {
    fn from(a: AlgorithmName) -> Self {
        match a {
            AlgorithmName::HmacMd5 => Algorithm::HmacMd5,
            AlgorithmName::PrefixSuffixMd5 => Algorithm::PrefixSuffixMd5,
        }
    }
}

/// `[[realm.sa]]`: one mobility security association [RFC 5944 § 1.6].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaConfig {
    /// The MN's fixed home address (exactly one of `home_address`, `nai`).
    pub home_address: Option<Ipv4Addr>,
    /// The MN's NAI [RFC 2794] (exactly one of `home_address`, `nai`).
    pub nai: Option<String>,
    /// Security Parameter Index, ≥ 256.
    pub spi: u32,
    /// `"hmac-md5"` (default) or `"prefix-suffix-md5"`.
    pub algorithm: AlgorithmName,
    /// The shared key, hex.
    pub key_hex: Key,
}

/// A secret key. `Debug` never shows the bytes; equality is constant-time
/// (docs/security.md).
#[derive(Clone, Default)]
pub struct Key(Box<[u8]>);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(&other.0)
    }
}

impl Eq for Key {}

impl Key {
    /// Wraps key bytes.
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        Self(bytes.into())
    }

    /// Whether `candidate` equals the key, in time that depends on the
    /// lengths only (a bearer token offered by a client).
    pub fn ct_eq(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.0.as_ref().ct_eq(candidate))
    }
    /// The key bytes (for the authenticator only).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} bytes>)", self.0.len())
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // The error must not echo the string: it is (almost) a key.
        hex::decode(s.trim())
            .map(|v| Key(v.into_boxed_slice()))
            .map_err(|_| serde::de::Error::custom("key_hex is not valid hex"))
    }
}

/// An IPv4 prefix, `"198.51.100.0/24"`; host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Prefix {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0–32.
    pub len: u8,
}

impl Prefix {
    fn mask(self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0)
    }
    /// Whether `a` is inside the prefix.
    pub fn contains(self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.addr)
    }
    /// The last (broadcast) address of the prefix.
    pub fn last(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
}

impl TryFrom<String> for Prefix {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 prefix like \"198.51.100.0/24\"");
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let len: u8 = l.trim().parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        let p = Prefix { addr, len };
        if u32::from(addr) & !p.mask() != 0 {
            return Err(format!("{s:?} has host bits set"));
        }
        Ok(p)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An inclusive address range, `"198.51.100.10-198.51.100.200"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PoolRange {
    /// First address.
    pub first: Ipv4Addr,
    /// Last address (inclusive).
    pub last: Ipv4Addr,
}

impl PoolRange {
    /// Whether `a` is in the range.
    pub fn contains(self, a: Ipv4Addr) -> bool {
        self.first <= a && a <= self.last
    }
}

impl TryFrom<String> for PoolRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a range like \"198.51.100.10-198.51.100.200\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        Ok(PoolRange {
            first: a.trim().parse().map_err(|_| bad())?,
            last: b.trim().parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for PoolRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The separate keys file: `[[sa]]` entries only.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct KeysFile {
    sa: Vec<SaConfig>,
}

/// A configuration error: what is wrong and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `[cluster.pair]` has both `key_hex` and `key_file`.
    #[error(
        "[cluster.pair] sets both key_hex and key_file; keep one (key_file keeps the secret out of the configuration)"
    )]
    PairKeyTwice,
    /// A `[dataplane]` setting the kernel or the tunnels would refuse.
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::DataplaneConfigError),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax or type error (the message names the line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A keys, TLS key or token file readable by group or others.
    #[error(
        "secret file {path} has mode {mode:04o}; it must not be accessible by group or others (chmod 0600)"
    )]
    KeysFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `[node] id = 0`.
    #[error("[node] id must be non-zero")]
    InvalidNodeId,
    /// Admin and metrics on one socket.
    #[error("[admin] listen and [metrics] listen are both {0}")]
    ListenConflict(SocketAddr),
    /// `timestamp_tolerance_secs = 0`.
    #[error("[registration] timestamp_tolerance_secs must be at least 1")]
    ZeroTolerance,
    /// `max_commit_ms = 0`.
    #[error("[registration] max_commit_ms must be at least 1")]
    ZeroCommitTime,
    /// No `[[realm]]`.
    #[error("no [[realm]] configured")]
    NoRealm,
    /// More realms than a [`RealmId`] can number.
    #[error("too many realms ({0}); at most 65535")]
    TooManyRealms(usize),
    /// Realm without a name.
    #[error("realm #{0} has no name")]
    MissingRealmName(usize),
    /// Two realms with one name.
    #[error("realm name {0:?} is used twice")]
    DuplicateRealmName(String),
    /// VIP missing or not a unicast address.
    #[error("realm {realm:?}: vip {vip} is not a unicast address")]
    InvalidVip {
        /// Realm name.
        realm: String,
        /// The value.
        vip: Ipv4Addr,
    },
    /// Two realms on one VIP.
    #[error("realm {realm:?}: vip {vip} is already the vip of realm {other:?}")]
    DuplicateVip {
        /// Realm name.
        realm: String,
        /// The value.
        vip: Ipv4Addr,
        /// The realm that has it first.
        other: String,
    },
    /// `port = 0`.
    #[error("realm {0:?}: port must be non-zero")]
    InvalidPort(String),
    /// `home_prefix` missing.
    #[error("realm {0:?}: home_prefix is required")]
    MissingHomePrefix(String),
    /// `pool` first > last.
    #[error("realm {realm:?}: pool {pool} is empty (first address after last)")]
    EmptyPool {
        /// Realm name.
        realm: String,
        /// The value.
        pool: PoolRange,
    },
    /// `pool` not inside `home_prefix` or touching its network/broadcast address.
    #[error(
        "realm {realm:?}: pool {pool} is not inside home_prefix {prefix} (excluding its network and broadcast addresses)"
    )]
    PoolOutsidePrefix {
        /// Realm name.
        realm: String,
        /// The pool.
        pool: PoolRange,
        /// The prefix.
        prefix: Prefix,
    },
    /// A pool larger than a /8 (its bitmap would be over 2 MB).
    #[error("realm {realm:?}: pool {pool} has more than 16777216 addresses")]
    PoolTooLarge {
        /// Realm name.
        realm: String,
        /// The pool.
        pool: PoolRange,
    },
    /// `max_lifetime_secs = 0`.
    #[error("realm {0:?}: max_lifetime_secs must be at least 1")]
    ZeroLifetime(String),
    /// `keepalive_interval_secs = 0`.
    #[error("realm {0:?}: keepalive_interval_secs must be at least 1")]
    ZeroKeepalive(String),
    /// `simultaneous_bindings = 0`.
    #[error("realm {0:?}: simultaneous_bindings must be at least 1")]
    ZeroSimultaneous(String),
    /// SA with both or neither of `home_address` and `nai`.
    #[error(
        "realm {realm:?}: security association #{index} must have exactly one of home_address or nai"
    )]
    SaIdentity {
        /// Realm name.
        realm: String,
        /// Position in the realm's SA list (inline first, then keys file).
        index: usize,
    },
    /// SPI in the reserved range.
    #[error(
        "realm {realm:?}: security association for {who}: spi {spi} is reserved (must be >= 256)"
    )]
    ReservedSpi {
        /// Realm name.
        realm: String,
        /// The MN.
        who: String,
        /// The value.
        spi: u32,
    },
    /// Same (MN, SPI) twice.
    #[error("realm {realm:?}: spi {spi} is defined twice for {who}")]
    DuplicateSpi {
        /// Realm name.
        realm: String,
        /// The MN.
        who: String,
        /// The value.
        spi: u32,
    },
    /// Key too short.
    #[error("realm {realm:?}: key for {who} spi {spi} is {len} bytes; at least 16 are required")]
    ShortKey {
        /// Realm name.
        realm: String,
        /// The MN.
        who: String,
        /// The SPI.
        spi: u32,
        /// The key length.
        len: usize,
    },
    /// Fixed home address outside the prefix.
    #[error("realm {realm:?}: home_address {addr} is outside home_prefix {prefix}")]
    HomeAddressOutsidePrefix {
        /// Realm name.
        realm: String,
        /// The value.
        addr: Ipv4Addr,
        /// The prefix.
        prefix: Prefix,
    },
    /// Fixed home address inside the dynamic pool.
    #[error("realm {realm:?}: home_address {addr} is inside the dynamic pool {pool}")]
    HomeAddressInPool {
        /// Realm name.
        realm: String,
        /// The value.
        addr: Ipv4Addr,
        /// The pool.
        pool: PoolRange,
    },
    /// Empty or oversized NAI.
    #[error("realm {realm:?}: nai {nai:?} must be 1 to 255 bytes")]
    InvalidNai {
        /// Realm name.
        realm: String,
        /// The value.
        nai: String,
    },
    /// A setting raft mode cannot do without.
    #[error("[cluster] mode = \"raft\" needs {0}")]
    ClusterMissing(&'static str),
    /// `tick_ms = 0`.
    #[error("[cluster] tick_ms must be at least 1")]
    ZeroTick,
    /// Election and heartbeat ticks that raft refuses.
    #[error(
        "[cluster] heartbeat_ticks ({heartbeat}) must be at least 1 and less than election_ticks ({election})"
    )]
    RaftTicks {
        /// `election_ticks`.
        election: usize,
        /// `heartbeat_ticks`.
        heartbeat: usize,
    },
    /// `snapshot_every = 0`.
    #[error("[cluster] snapshot_every must be at least 1")]
    ZeroSnapshotEvery,
    /// The cluster listener on the admin or metrics socket.
    #[error("[cluster] listen {0} is also the [admin] or [metrics] listener")]
    ClusterListenConflict(SocketAddr),
    /// A non-loopback admin listener without authentication.
    #[error(
        "[admin] listen {0} is not a loopback address: set [admin.tls] (client certificates) or [admin] token_file"
    )]
    AdminUnprotected(SocketAddr),
    /// A TLS file that does not hold what it should.
    #[error("{what}: {message}")]
    Tls {
        /// Which setting.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An empty token file.
    #[error("token file {0} is empty")]
    EmptyToken(PathBuf),
    /// A `[registration.limits]` value out of range.
    #[error("[registration.limits] {0}")]
    Limits(&'static str),
    /// `[[cluster.peer]] id = 0`.
    #[error("[[cluster.peer]] #{0}: id must be non-zero")]
    InvalidPeerId(usize),
    /// Two peers with one id.
    #[error("[[cluster.peer]] id {0} is listed twice")]
    DuplicatePeerId(u64),
    /// A peer address that is not `host:port`.
    #[error("[[cluster.peer]] id {id}: address {address:?} is not host:port with a non-zero port")]
    InvalidPeerAddress {
        /// The peer.
        id: u64,
        /// The value.
        address: String,
    },
    /// A `dispatch_source` that is not a unicast address.
    #[error("[[cluster.peer]] id {id}: dispatch_source {address} is not a unicast address")]
    InvalidDispatchSource {
        /// The peer.
        id: u64,
        /// The value.
        address: Ipv4Addr,
    },
    /// Two peers with one `dispatch_source`.
    #[error("[[cluster.peer]] ids {first} and {second} share the dispatch_source {address}")]
    DuplicateDispatchSource {
        /// The first peer.
        first: u64,
        /// The second.
        second: u64,
        /// The value.
        address: Ipv4Addr,
    },
    /// This node's own `[[cluster.peer]] dispatch_source` is not its
    /// `[dispatch] source`.
    #[error(
        "[[cluster.peer]] for this node lists dispatch_source {listed}, but its [dispatch] source is {actual}"
    )]
    SelfDispatchSource {
        /// The `dispatch_source` listed.
        listed: Ipv4Addr,
        /// `[dispatch] source`.
        actual: Ipv4Addr,
    },
    /// Two peers on one address.
    #[error("[[cluster.peer]] ids {first} and {second} share the address {address:?}")]
    DuplicatePeerAddress {
        /// The first peer.
        first: u64,
        /// The second.
        second: u64,
        /// The value.
        address: String,
    },
    /// A founding node missing from its own voter list.
    #[error("[[cluster.peer]] must list this node ([node] id = {0}) unless [cluster] join = true")]
    SelfNotPeer(u64),
    /// A setting pair mode cannot do without.
    #[error("[cluster] mode = \"pair\" needs {0}")]
    PairMissing(&'static str),
    /// A pair setting the replicator refuses.
    #[error("[cluster.pair]: {0}")]
    Pair(#[from] crate::pair::PairConfigError),
    /// A `[dispatch]` setting out of range.
    #[error(transparent)]
    Dispatch(#[from] crate::advertise::DispatchConfigError),
    /// `bind_vip = false` in l2 mode: the node would receive nothing.
    #[error(
        "[dispatch] bind_vip = false needs mode = \"encap\" (in l2 mode the VIP socket is the only way in)"
    )]
    DispatchBindVip,
}

impl Config {
    /// Parses a configuration from TOML text (no keys files are read, no
    /// validation is done).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })
    }

    /// Reads `path`, merges every realm's `keys_file` (relative paths are
    /// resolved against the config file's directory) and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        // Secrets first: a key file others can read is refused before
        // anything else is looked at (docs/security.md).
        if let Some(t) = &mut cfg.cluster.tls {
            t.resolve(base);
            t.load()?;
        }
        if let Some(t) = &mut cfg.admin.tls {
            t.resolve(base);
            t.load()?;
        }
        if let Some(f) = &cfg.admin.token_file {
            cfg.admin.tokens.write = Some(read_token(&base.join(f))?);
        }
        if let Some(f) = &cfg.admin.read_token_file {
            cfg.admin.tokens.read = Some(read_token(&base.join(f))?);
        }
        if let Some(d) = &mut cfg.dispatch {
            d.load_key(base)?;
        }
        if let Some(f) = &cfg.cluster.pair.key_file {
            if !cfg.cluster.pair.key_hex.as_bytes().is_empty() {
                return Err(ConfigError::PairKeyTwice);
            }
            let path = base.join(f);
            check_private(&path)?;
            let raw = read_bytes(&path)?;
            cfg.cluster.pair.key_hex = Key::new(hex::decode(raw.trim_ascii()).unwrap_or(raw));
        }
        for realm in &mut cfg.realm {
            if let Some(kf) = &realm.keys_file {
                let kp = base.join(kf);
                check_private(&kp)?;
                let keys: KeysFile =
                    toml::from_str(&read(&kp)?).map_err(|e| ConfigError::Parse {
                        path: kp.clone(),
                        message: e.to_string(),
                    })?;
                realm.sa.extend(keys.sa);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The id of the realm called `name`.
    pub fn realm_id(&self, name: &str) -> Option<RealmId> {
        let i = self.realm.iter().position(|r| r.name == name)?;
        u16::try_from(i).ok().map(RealmId)
    }

    /// The realm with id `id`.
    pub fn realm(&self, id: RealmId) -> Option<&RealmConfig> {
        self.realm.get(usize::from(id.0))
    }

    /// Checks everything parsing cannot; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.id == 0 {
            return Err(ConfigError::InvalidNodeId);
        }
        self.dataplane.validate(&self.realm)?;
        if self.admin.listen == self.metrics.listen {
            return Err(ConfigError::ListenConflict(self.admin.listen));
        }
        if self.registration.timestamp_tolerance_secs == 0 {
            return Err(ConfigError::ZeroTolerance);
        }
        if self.registration.max_commit_ms == 0 {
            return Err(ConfigError::ZeroCommitTime);
        }
        if !self.admin.listen.ip().is_loopback() && !self.admin.authenticated() {
            return Err(ConfigError::AdminUnprotected(self.admin.listen));
        }
        let l = &self.registration.limits;
        if l.enabled {
            let positive = |v: f64| v.is_finite() && v > 0.0;
            if !positive(l.per_source_rate) || !positive(l.global_rate) {
                return Err(ConfigError::Limits("rates must be positive"));
            }
            let at_least_one = |v: f64| v.is_finite() && v >= 1.0;
            if !at_least_one(l.per_source_burst) || !at_least_one(l.global_burst) {
                return Err(ConfigError::Limits("bursts must be at least 1"));
            }
            if l.max_sources == 0 {
                return Err(ConfigError::Limits("max_sources must be at least 1"));
            }
        }
        if self.realm.is_empty() {
            return Err(ConfigError::NoRealm);
        }
        if self.realm.len() > usize::from(u16::MAX) {
            return Err(ConfigError::TooManyRealms(self.realm.len()));
        }
        let mut names = HashSet::new();
        for (i, r) in self.realm.iter().enumerate() {
            if r.name.is_empty() {
                return Err(ConfigError::MissingRealmName(i));
            }
            if !names.insert(r.name.as_str()) {
                return Err(ConfigError::DuplicateRealmName(r.name.clone()));
            }
            if let Some(other) = self.realm[..i].iter().find(|o| o.vip == r.vip) {
                return Err(ConfigError::DuplicateVip {
                    realm: r.name.clone(),
                    vip: r.vip,
                    other: other.name.clone(),
                });
            }
            r.validate()?;
        }
        match self.cluster.mode {
            ClusterMode::Raft => self.validate_cluster()?,
            ClusterMode::Pair => {
                self.pair_config(0)?;
            }
            ClusterMode::Local => {}
        }
        if let Some(d) = &self.dispatch {
            d.validate()?;
            if !d.binds_vip() && d.mode == crate::advertise::DispatchMode::L2 {
                return Err(ConfigError::DispatchBindVip);
            }
        }
        Ok(())
    }

    /// The pair replicator's configuration (`[cluster] listen` and
    /// `[cluster.pair]`, the realms' VIPs), validated; `initial_sequence`
    /// as [`crate::pair::PairConfig::initial_sequence`] wants it.
    pub fn pair_config(
        &self,
        initial_sequence: u64,
    ) -> Result<crate::pair::PairConfig, ConfigError> {
        let c = &self.cluster;
        let p = &c.pair;
        let local = match c.listen {
            Some(SocketAddr::V4(a)) if a.port() != 0 && !a.ip().is_unspecified() => a,
            Some(_) => {
                return Err(ConfigError::PairMissing(
                    "a listen address that is a unicast IPv4 address with a port",
                ));
            }
            None => return Err(ConfigError::PairMissing("a listen address")),
        };
        if SocketAddr::V4(local) == self.admin.listen
            || SocketAddr::V4(local) == self.metrics.listen
        {
            return Err(ConfigError::ClusterListenConflict(SocketAddr::V4(local)));
        }
        let peer = p
            .peer
            .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
            .ok_or(ConfigError::PairMissing("[cluster.pair] peer (ip:port)"))?;
        if p.forward_retransmit_ms == 0 {
            return Err(ConfigError::Pair(crate::pair::PairConfigError::Retransmit));
        }
        let cfg = crate::pair::PairConfig {
            local,
            peer,
            vrid: p.vrid,
            priority: p.priority,
            advert_interval_cs: p.advert_interval_cs,
            key: p.key_hex.as_bytes().to_vec(),
            vips: self.realm.iter().map(|r| r.vip).collect(),
            retransmit: std::time::Duration::from_millis(u64::from(p.forward_retransmit_ms)),
            forward_timeout: (p.forward_timeout_ms != 0)
                .then(|| std::time::Duration::from_millis(u64::from(p.forward_timeout_ms))),
            max_datagram: p.max_datagram,
            max_log: p.max_log,
            initial_sequence,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.cluster_id.is_empty() {
            return Err(ConfigError::ClusterMissing("a cluster_id"));
        }
        let listen = c
            .listen
            .ok_or(ConfigError::ClusterMissing("a listen address"))?;
        if c.data_dir.as_ref().is_none_or(|d| d.as_os_str().is_empty()) {
            return Err(ConfigError::ClusterMissing("a data_dir"));
        }
        if listen == self.admin.listen || listen == self.metrics.listen {
            return Err(ConfigError::ClusterListenConflict(listen));
        }
        if c.tick_ms == 0 {
            return Err(ConfigError::ZeroTick);
        }
        // raft-rs `Config::validate`: heartbeat > 0, election > heartbeat.
        if c.heartbeat_ticks == 0 || c.election_ticks <= c.heartbeat_ticks {
            return Err(ConfigError::RaftTicks {
                election: c.election_ticks,
                heartbeat: c.heartbeat_ticks,
            });
        }
        if c.snapshot_every == 0 {
            return Err(ConfigError::ZeroSnapshotEvery);
        }
        if c.peer.is_empty() {
            return Err(ConfigError::ClusterMissing("at least one [[cluster.peer]]"));
        }
        for (i, p) in c.peer.iter().enumerate() {
            if p.id == 0 {
                return Err(ConfigError::InvalidPeerId(i));
            }
            if !valid_host_port(&p.address) {
                return Err(ConfigError::InvalidPeerAddress {
                    id: p.id,
                    address: p.address.clone(),
                });
            }
            if let Some(o) = c.peer[..i].iter().find(|o| o.id == p.id) {
                return Err(ConfigError::DuplicatePeerId(o.id));
            }
            if let Some(o) = c.peer[..i].iter().find(|o| o.address == p.address) {
                return Err(ConfigError::DuplicatePeerAddress {
                    first: o.id,
                    second: p.id,
                    address: p.address.clone(),
                });
            }
            if let Some(a) = p.dispatch_source {
                // A node's unique unicast address on the dispatch segment:
                // a withdrawal naming anything else takes the wrong node
                // out, or none.
                if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
                    return Err(ConfigError::InvalidDispatchSource {
                        id: p.id,
                        address: a,
                    });
                }
                if let Some(o) = c.peer[..i].iter().find(|o| o.dispatch_source == Some(a)) {
                    return Err(ConfigError::DuplicateDispatchSource {
                        first: o.id,
                        second: p.id,
                        address: a,
                    });
                }
                if p.id == self.node.id
                    && let Some(d) = &self.dispatch
                    && d.source != a
                {
                    return Err(ConfigError::SelfDispatchSource {
                        listed: a,
                        actual: d.source,
                    });
                }
            }
        }
        if !c.join && !c.peer.iter().any(|p| p.id == self.node.id) {
            return Err(ConfigError::SelfNotPeer(self.node.id));
        }
        Ok(())
    }
}

/// `host:port` with a non-empty host and a non-zero port (`[v6]:port` too).
pub fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return true;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.');
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

impl RealmConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let name = || self.name.clone();
        let v = self.vip;
        // Loopback VIPs are allowed: single-host lab runs and unprivileged
        // tests serve a realm on 127.0.0.x.
        if v.is_unspecified() || v.is_broadcast() || v.is_multicast() {
            return Err(ConfigError::InvalidVip {
                realm: name(),
                vip: v,
            });
        }
        if self.port == 0 {
            return Err(ConfigError::InvalidPort(name()));
        }
        let prefix = self
            .home_prefix
            .ok_or_else(|| ConfigError::MissingHomePrefix(name()))?;
        if let Some(pool) = self.pool {
            if pool.first > pool.last {
                return Err(ConfigError::EmptyPool {
                    realm: name(),
                    pool,
                });
            }
            // The network and broadcast addresses of the home network are
            // never home addresses (only /31 and /32 have none).
            let inside = prefix.contains(pool.first)
                && prefix.contains(pool.last)
                && (prefix.len >= 31 || (pool.first != prefix.addr && pool.last != prefix.last()));
            if !inside {
                return Err(ConfigError::PoolOutsidePrefix {
                    realm: name(),
                    pool,
                    prefix,
                });
            }
            if u32::from(pool.last) - u32::from(pool.first) >= MAX_POOL_SIZE {
                return Err(ConfigError::PoolTooLarge {
                    realm: name(),
                    pool,
                });
            }
        }
        if self.max_lifetime_secs == 0 {
            return Err(ConfigError::ZeroLifetime(name()));
        }
        if self.keepalive_interval_secs == 0 {
            return Err(ConfigError::ZeroKeepalive(name()));
        }
        if self.simultaneous_bindings == 0 {
            return Err(ConfigError::ZeroSimultaneous(name()));
        }
        let mut seen = HashSet::new();
        for (index, sa) in self.sa.iter().enumerate() {
            let who = match (&sa.home_address, &sa.nai) {
                (Some(a), None) => {
                    if !prefix.contains(*a) {
                        return Err(ConfigError::HomeAddressOutsidePrefix {
                            realm: name(),
                            addr: *a,
                            prefix,
                        });
                    }
                    if let Some(pool) = self.pool.filter(|p| p.contains(*a)) {
                        return Err(ConfigError::HomeAddressInPool {
                            realm: name(),
                            addr: *a,
                            pool,
                        });
                    }
                    a.to_string()
                }
                (None, Some(n)) => {
                    if n.is_empty() || n.len() > MAX_NAI_LEN {
                        return Err(ConfigError::InvalidNai {
                            realm: name(),
                            nai: n.clone(),
                        });
                    }
                    format!("nai {n:?}")
                }
                _ => {
                    return Err(ConfigError::SaIdentity {
                        realm: name(),
                        index,
                    });
                }
            };
            if sa.spi < MIN_SPI {
                return Err(ConfigError::ReservedSpi {
                    realm: name(),
                    who,
                    spi: sa.spi,
                });
            }
            if sa.key_hex.as_bytes().len() < MIN_KEY_LEN {
                return Err(ConfigError::ShortKey {
                    realm: name(),
                    who,
                    spi: sa.spi,
                    len: sa.key_hex.as_bytes().len(),
                });
            }
            if !seen.insert((who.clone(), sa.spi)) {
                return Err(ConfigError::DuplicateSpi {
                    realm: name(),
                    who,
                    spi: sa.spi,
                });
            }
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads a bearer token file (private, non-empty, whitespace trimmed).
fn read_token(path: &Path) -> Result<Key, ConfigError> {
    check_private(path)?;
    let bytes = read_bytes(path)?;
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(ConfigError::EmptyToken(path.to_owned()));
    }
    Ok(Key::new(token.to_vec()))
}

/// Refuses a keys file that group or others may access.
fn check_private(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::KeysFileMode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff";

    fn base() -> Config {
        Config::from_toml_str(&format!(
            r#"
            [[realm]]
            name = "inner"
            vip = "192.0.2.1"
            home_prefix = "198.51.100.0/24"
            pool = "198.51.100.10-198.51.100.200"
            [[realm.sa]]
            home_address = "198.51.100.5"
            spi = 256
            key_hex = "{KEY}"
            [[realm.sa]]
            nai = "mn1@example.net"
            spi = 300
            algorithm = "prefix-suffix-md5"
            key_hex = "{KEY}"
            "#
        ))
        .expect("base parses")
    }

    #[test]
    fn defaults() {
        let c = base();
        c.validate().expect("valid");
        assert_eq!(c.node.id, 1);
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:4340");
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9434");
        assert_eq!(c.registration.timestamp_tolerance_secs, 7);
        assert_eq!(c.registration.replay, ReplayMode::Timestamp);
        assert_eq!(c.registration.max_commit_ms, 2000);
        let r = &c.realm[0];
        assert_eq!(r.port, 434);
        assert_eq!(r.max_lifetime_secs, 1800);
        assert_eq!(r.keepalive_interval_secs, 110);
        assert_eq!(r.simultaneous_bindings, 1);
        assert!(r.udp_tunnel);
        assert_eq!(r.reverse_tunnel, ReverseTunnelPolicy::Optional);
        assert_eq!(r.sa[0].algorithm, AlgorithmName::HmacMd5);
        assert_eq!(
            Algorithm::from(r.sa[1].algorithm),
            Algorithm::PrefixSuffixMd5
        );
        assert_eq!(c.realm_id("inner"), Some(RealmId(0)));
        assert_eq!(c.realm_id("outer"), None);
    }

    #[test]
    fn key_debug_hides_bytes() {
        let c = base();
        let s = format!("{c:?}");
        assert!(s.contains("Key(<16 bytes>)"));
        assert!(!s.contains("0, 17, 34") && !s.contains("aabb"), "{s}");
    }

    #[test]
    fn unknown_field_refused() {
        let e = Config::from_toml_str("[node]\nid = 2\nidd = 3\n").unwrap_err();
        assert!(e.to_string().contains("idd"), "{e}");
    }

    #[test]
    fn bad_syntax_values() {
        for (text, needle) in [
            (
                "[[realm]]\nhome_prefix = \"198.51.100.1/24\"\n",
                "host bits",
            ),
            (
                "[[realm]]\nhome_prefix = \"198.51.100.0/33\"\n",
                "not an IPv4 prefix",
            ),
            ("[[realm]]\npool = \"198.51.100.1\"\n", "not a range"),
            ("[[realm]]\nreverse_tunnel = \"sometimes\"\n", "sometimes"),
            ("[registration]\nreplay = \"clock\"\n", "clock"),
            (
                "[[realm]]\n[[realm.sa]]\nkey_hex = \"zz\"\n",
                "not valid hex",
            ),
        ] {
            let e = Config::from_toml_str(text).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    fn err(f: impl FnOnce(&mut Config)) -> ConfigError {
        let mut c = base();
        f(&mut c);
        c.validate().expect_err("must be invalid")
    }

    fn sa(f: impl FnOnce(&mut SaConfig)) -> ConfigError {
        err(|c| f(&mut c.realm[0].sa[0]))
    }

    #[test]
    fn every_validation_error() {
        use ConfigError as E;
        assert!(matches!(err(|c| c.node.id = 0), E::InvalidNodeId));
        assert!(matches!(
            err(|c| c.metrics.listen = c.admin.listen),
            E::ListenConflict(_)
        ));
        assert!(matches!(
            err(|c| c.registration.timestamp_tolerance_secs = 0),
            E::ZeroTolerance
        ));
        assert!(matches!(
            err(|c| c.registration.max_commit_ms = 0),
            E::ZeroCommitTime
        ));
        assert!(matches!(err(|c| c.realm.clear()), E::NoRealm));
        assert!(matches!(
            err(|c| c.realm[0].name.clear()),
            E::MissingRealmName(0)
        ));
        let dup = |c: &mut Config| {
            let mut r = c.realm[0].clone();
            r.vip = Ipv4Addr::new(203, 0, 113, 1);
            c.realm.push(r);
        };
        assert!(matches!(err(dup), E::DuplicateRealmName(n) if n == "inner"));
        let dup_vip = |c: &mut Config| {
            let mut r = c.realm[0].clone();
            r.name = "outer".into();
            c.realm.push(r);
        };
        assert!(
            matches!(err(dup_vip), E::DuplicateVip { realm, other, .. } if realm == "outer" && other == "inner")
        );
        for vip in [[0, 0, 0, 0], [255, 255, 255, 255], [224, 0, 0, 1]] {
            assert!(matches!(
                err(|c| c.realm[0].vip = Ipv4Addr::from(vip)),
                E::InvalidVip { .. }
            ));
        }
        // Loopback VIPs serve lab runs and unprivileged tests.
        let mut lo = base();
        lo.realm[0].vip = Ipv4Addr::new(127, 0, 0, 11);
        lo.validate().expect("a loopback VIP is valid");
        assert!(matches!(err(|c| c.realm[0].port = 0), E::InvalidPort(_)));
        assert!(matches!(
            err(|c| c.realm[0].home_prefix = None),
            E::MissingHomePrefix(_)
        ));
        let range = |a: [u8; 4], b: [u8; 4]| PoolRange {
            first: a.into(),
            last: b.into(),
        };
        assert!(matches!(
            err(|c| c.realm[0].pool = Some(range([198, 51, 100, 20], [198, 51, 100, 10]))),
            E::EmptyPool { .. }
        ));
        for (a, b) in [
            ([198, 51, 100, 10], [198, 51, 101, 10]),
            ([198, 51, 99, 10], [198, 51, 100, 10]),
            ([198, 51, 100, 0], [198, 51, 100, 10]),
            ([198, 51, 100, 10], [198, 51, 100, 255]),
        ] {
            assert!(matches!(
                err(|c| c.realm[0].pool = Some(range(a, b))),
                E::PoolOutsidePrefix { .. }
            ));
        }
        let huge = |c: &mut Config| {
            c.realm[0].home_prefix = Some(Prefix {
                addr: Ipv4Addr::UNSPECIFIED,
                len: 0,
            });
            c.realm[0].pool = Some(range([1, 0, 0, 0], [2, 0, 0, 0]));
        };
        assert!(matches!(err(huge), E::PoolTooLarge { .. }));
        assert!(matches!(
            err(|c| c.realm[0].max_lifetime_secs = 0),
            E::ZeroLifetime(_)
        ));
        assert!(matches!(
            err(|c| c.realm[0].keepalive_interval_secs = 0),
            E::ZeroKeepalive(_)
        ));
        assert!(matches!(
            err(|c| c.realm[0].simultaneous_bindings = 0),
            E::ZeroSimultaneous(_)
        ));
        assert!(matches!(
            sa(|s| s.nai = Some("x@example.net".into())),
            E::SaIdentity { index: 0, .. }
        ));
        assert!(matches!(
            sa(|s| s.home_address = None),
            E::SaIdentity { index: 0, .. }
        ));
        assert!(matches!(
            sa(|s| s.spi = 255),
            E::ReservedSpi { spi: 255, .. }
        ));
        assert!(matches!(
            sa(|s| s.key_hex = Key::new(vec![1; 15])),
            E::ShortKey { len: 15, .. }
        ));
        assert!(matches!(
            sa(|s| s.home_address = Some(Ipv4Addr::new(198, 51, 101, 5))),
            E::HomeAddressOutsidePrefix { .. }
        ));
        assert!(matches!(
            sa(|s| s.home_address = Some(Ipv4Addr::new(198, 51, 100, 10))),
            E::HomeAddressInPool { .. }
        ));
        assert!(matches!(
            err(|c| c.realm[0].sa[1].nai = Some(String::new())),
            E::InvalidNai { .. }
        ));
        assert!(matches!(
            err(|c| c.realm[0].sa[1].nai = Some("a".repeat(256))),
            E::InvalidNai { .. }
        ));
        let dup_spi = |c: &mut Config| {
            let s = c.realm[0].sa[0].clone();
            c.realm[0].sa.push(s);
        };
        assert!(matches!(err(dup_spi), E::DuplicateSpi { spi: 256, .. }));
        // Same SPI for two different MNs is fine: SPIs are per MN.
        let mut c = base();
        c.realm[0].sa[1].spi = 256;
        c.validate().expect("SPI reuse across MNs is valid");
    }

    #[test]
    fn error_messages_are_precise() {
        let e = sa(|s| s.spi = 7);
        assert_eq!(
            e.to_string(),
            "realm \"inner\": security association for 198.51.100.5: spi 7 is reserved (must be >= 256)"
        );
    }

    #[test]
    fn example_file_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/ha-node.example.toml");
        let c = Config::load(&path).expect("example config is valid");
        assert_eq!(c.realm.len(), 2);
        let inner = c.realm(c.realm_id("inner").expect("inner")).expect("inner");
        assert_eq!(inner.vip, Ipv4Addr::new(192, 0, 2, 1));
        assert!(inner.pool.is_none());
        let outer = c.realm(c.realm_id("outer").expect("outer")).expect("outer");
        assert_eq!(outer.vip, Ipv4Addr::new(203, 0, 113, 1));
        assert!(outer.pool.is_some());
        assert!(outer.sa.iter().any(|s| s.nai.is_some()));
    }

    #[test]
    fn keys_file_mode_enforced_and_merged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("inner.keys.toml");
        std::fs::write(
            &keys,
            format!("[[sa]]\nhome_address = \"198.51.100.6\"\nspi = 1000\nkey_hex = \"{KEY}\"\n"),
        )
        .expect("write keys");
        let cfg = dir.path().join("ha-node.toml");
        std::fs::write(
            &cfg,
            "[[realm]]\nname = \"inner\"\nvip = \"192.0.2.1\"\nhome_prefix = \"198.51.100.0/24\"\nkeys_file = \"inner.keys.toml\"\n",
        )
        .expect("write config");
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Config::load(&cfg).unwrap_err();
        assert!(
            matches!(e, ConfigError::KeysFileMode { mode: 0o644, .. }),
            "{e}"
        );
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = Config::load(&cfg).expect("loads");
        assert_eq!(c.realm[0].sa.len(), 1);
        assert_eq!(c.realm[0].sa[0].spi, 1000);
        assert_eq!(c.realm[0].sa[0].key_hex.as_bytes().len(), 16);
    }

    fn raft() -> Config {
        let mut c = base();
        let extra = Config::from_toml_str(
            r#"
            [cluster]
            mode = "raft"
            cluster_id = "lab"
            listen = "127.0.0.1:7401"
            data_dir = "/var/lib/haven/raft"
            [[cluster.peer]]
            id = 1
            address = "127.0.0.1:7401"
            [[cluster.peer]]
            id = 2
            address = "node-2.example.net:7401"
            [[cluster.peer]]
            id = 3
            address = "[::1]:7401"
            "#,
        )
        .expect("cluster parses");
        c.cluster = extra.cluster;
        c
    }

    #[test]
    fn cluster_defaults_and_valid_raft() {
        let c = base();
        assert_eq!(c.cluster.mode, ClusterMode::Local);
        assert_eq!(c.cluster.tick_ms, 50);
        assert_eq!(c.cluster.election_ticks, 10);
        assert_eq!(c.cluster.heartbeat_ticks, 2);
        assert_eq!(c.cluster.snapshot_every, 10_000);
        assert!(!c.cluster.join);
        let r = raft();
        r.validate().expect("valid raft config");
        assert_eq!(r.cluster.peer_map().len(), 3);
        assert_eq!(r.cluster.tick(), std::time::Duration::from_millis(50));
        let e = Config::from_toml_str("[cluster]\nmode = \"paxos\"\n").unwrap_err();
        assert!(e.to_string().contains("paxos"), "{e}");
        // Local mode ignores the raft settings entirely.
        let mut l = raft();
        l.cluster.mode = ClusterMode::Local;
        l.cluster.peer.clear();
        l.validate().expect("local ignores [cluster]");
    }

    #[test]
    fn every_cluster_validation_error() {
        use ConfigError as E;
        let err = |f: &dyn Fn(&mut Config)| {
            let mut c = raft();
            f(&mut c);
            c.validate().expect_err("must be invalid")
        };
        assert!(matches!(
            err(&|c| c.cluster.cluster_id.clear()),
            E::ClusterMissing("a cluster_id")
        ));
        assert!(matches!(
            err(&|c| c.cluster.listen = None),
            E::ClusterMissing("a listen address")
        ));
        assert!(matches!(
            err(&|c| c.cluster.data_dir = None),
            E::ClusterMissing("a data_dir")
        ));
        assert!(matches!(
            err(&|c| c.cluster.listen = Some(c.admin.listen)),
            E::ClusterListenConflict(_)
        ));
        assert!(matches!(err(&|c| c.cluster.tick_ms = 0), E::ZeroTick));
        assert!(matches!(
            err(&|c| c.cluster.heartbeat_ticks = 0),
            E::RaftTicks { heartbeat: 0, .. }
        ));
        assert!(matches!(
            err(&|c| c.cluster.election_ticks = 2),
            E::RaftTicks {
                election: 2,
                heartbeat: 2
            }
        ));
        assert!(matches!(
            err(&|c| c.cluster.snapshot_every = 0),
            E::ZeroSnapshotEvery
        ));
        assert!(matches!(
            err(&|c| c.cluster.peer.clear()),
            E::ClusterMissing(_)
        ));
        assert!(matches!(
            err(&|c| c.cluster.peer[1].id = 0),
            E::InvalidPeerId(1)
        ));
        assert!(matches!(
            err(&|c| c.cluster.peer[2].id = 1),
            E::DuplicatePeerId(1)
        ));
        for bad in ["", "127.0.0.1", "127.0.0.1:0", ":7401", "host:x", "a b:1"] {
            assert!(
                matches!(
                    err(&|c| c.cluster.peer[1].address = bad.into()),
                    E::InvalidPeerAddress { id: 2, .. }
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            err(&|c| c.cluster.peer[2].address = c.cluster.peer[0].address.clone()),
            E::DuplicatePeerAddress {
                first: 1,
                second: 3,
                ..
            }
        ));
        assert!(matches!(err(&|c| c.node.id = 4), E::SelfNotPeer(4)));
        // A joining node need not list itself.
        let mut j = raft();
        j.node.id = 4;
        j.cluster.join = true;
        j.validate().expect("join without self");
        assert_eq!(
            err(&|c| c.node.id = 4).to_string(),
            "[[cluster.peer]] must list this node ([node] id = 4) unless [cluster] join = true"
        );
        for bad in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 18),
        ] {
            assert!(matches!(
                err(&|c| c.cluster.peer[1].dispatch_source = Some(bad)),
                E::InvalidDispatchSource { id: 2, address } if address == bad
            ));
        }
        let a = Ipv4Addr::new(198, 18, 0, 12);
        assert!(matches!(
            err(&|c| {
                c.cluster.peer[0].dispatch_source = Some(a);
                c.cluster.peer[2].dispatch_source = Some(a);
            }),
            E::DuplicateDispatchSource {
                first: 1,
                second: 3,
                ..
            }
        ));
        let with_dispatch = |c: &mut Config| {
            c.dispatch = Config::from_toml_str(
                "[dispatch]\nadvertise_to = [\"198.18.0.2:4341\"]\nsource = \"198.18.0.11\"\n",
            )
            .expect("parses")
            .dispatch;
        };
        assert_eq!(
            err(&|c| {
                with_dispatch(c);
                c.cluster.peer[0].dispatch_source = Some(a);
            })
            .to_string(),
            "[[cluster.peer]] for this node lists dispatch_source 198.18.0.12, \
             but its [dispatch] source is 198.18.0.11"
        );
        let mut ok = raft();
        with_dispatch(&mut ok);
        ok.cluster.peer[0].dispatch_source = Some(Ipv4Addr::new(198, 18, 0, 11));
        ok.cluster.peer[1].dispatch_source = Some(a);
        ok.validate()
            .expect("distinct dispatch sources, this node's its own");
        assert_eq!(
            ok.cluster.dispatch_sources(),
            [(1, Ipv4Addr::new(198, 18, 0, 11)), (2, a)].into()
        );
    }

    #[test]
    fn example_cluster_section_validates_in_raft_mode() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/ha-node.example.toml");
        let mut c = Config::load(&path).expect("example config is valid");
        assert_eq!(c.cluster.mode, ClusterMode::Local);
        c.cluster.mode = ClusterMode::Raft;
        c.validate()
            .expect("the documented raft settings are valid");
        assert_eq!(c.cluster.peer.len(), 3);
    }

    #[test]
    fn example_pair_section_validates_in_pair_mode() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/ha-node.example.toml");
        let mut c = Config::load(&path).expect("example config is valid");
        c.cluster.mode = ClusterMode::Pair;
        c.cluster.listen = Some("198.18.0.11:4342".parse().unwrap());
        c.validate()
            .expect("the documented pair settings are valid");
        let p = c.pair_config(1).expect("pair config");
        assert_eq!(p.peer, "198.18.0.12:4342".parse().unwrap());
        assert_eq!(p.vips.len(), 2);
    }

    #[test]
    fn pair_section_parses_validates_and_refuses() {
        use ConfigError as E;
        let mut c = base();
        let extra = Config::from_toml_str(
            r#"
            [cluster]
            mode = "pair"
            listen = "198.18.0.11:4342"
            [cluster.pair]
            peer = "198.18.0.12:4342"
            priority = 200
            advert_interval_cs = 10
            key_hex = "000102030405060708090a0b0c0d0e0f"
            forward_timeout_ms = 500
            [dispatch]
            advertise_to = ["198.18.0.2:4341"]
            source = "198.18.0.11"
            "#,
        )
        .expect("pair parses");
        c.cluster = extra.cluster;
        c.dispatch = extra.dispatch;
        c.validate().expect("valid pair config");
        let p = c.pair_config(7).expect("pair config");
        assert_eq!(p.local, "198.18.0.11:4342".parse().unwrap());
        assert_eq!(p.peer, "198.18.0.12:4342".parse().unwrap());
        assert_eq!((p.vrid, p.priority, p.advert_interval_cs), (1, 200, 10));
        assert_eq!(p.vips, vec![Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(p.retransmit, std::time::Duration::from_millis(20));
        assert_eq!(
            p.forward_timeout,
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            (p.max_datagram, p.max_log, p.initial_sequence),
            (1400, 65536, 7)
        );
        let err = |f: &dyn Fn(&mut Config)| {
            let mut b = c.clone();
            f(&mut b);
            b.validate().expect_err("must be invalid")
        };
        assert!(matches!(
            err(&|c| c.cluster.listen = None),
            E::PairMissing("a listen address")
        ));
        assert!(matches!(
            err(&|c| c.cluster.listen = Some("[::1]:4342".parse().unwrap())),
            E::PairMissing(_)
        ));
        assert!(matches!(
            err(&|c| c.cluster.pair.peer = None),
            E::PairMissing(_)
        ));
        assert!(matches!(
            err(&|c| c.cluster.pair.key_hex = Key::new(vec![1; 15])),
            E::Pair(crate::pair::PairConfigError::Key(15))
        ));
        assert!(matches!(
            err(&|c| c.cluster.pair.priority = 255),
            E::Pair(crate::pair::PairConfigError::Priority(255))
        ));
        assert!(matches!(
            err(&|c| c.cluster.pair.advert_interval_cs = 0),
            E::Pair(crate::pair::PairConfigError::Interval(0))
        ));
        assert!(matches!(
            err(&|c| c.cluster.pair.forward_retransmit_ms = 0),
            E::Pair(crate::pair::PairConfigError::Retransmit)
        ));
        assert!(matches!(
            err(&|c| c.cluster.pair.peer = Some("198.18.0.11:4343".parse().unwrap())),
            E::Pair(crate::pair::PairConfigError::SamePeer)
        ));
        assert!(matches!(
            err(&|c| c.cluster.listen = Some(c.admin.listen)),
            E::PairMissing(_) | E::ClusterListenConflict(_)
        ));
        assert!(matches!(
            err(&|c| if let Some(d) = c.dispatch.as_mut() {
                d.interval_ms = 5;
            }),
            E::Dispatch(crate::advertise::DispatchConfigError::Interval(5))
        ));
        // Local mode ignores [cluster.pair].
        let mut l = c.clone();
        l.cluster.mode = ClusterMode::Local;
        l.cluster.pair.peer = None;
        l.validate().expect("local ignores the pair settings");
        assert_eq!(ClusterMode::Pair.as_str(), "pair");
    }

    #[test]
    fn prefix_math() {
        let p = Prefix::try_from("198.18.0.0/15".to_string()).expect("prefix");
        assert!(p.contains(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!p.contains(Ipv4Addr::new(198, 20, 0, 0)));
        assert_eq!(p.last(), Ipv4Addr::new(198, 19, 255, 255));
        let all = Prefix::try_from("0.0.0.0/0".to_string()).expect("prefix");
        assert!(all.contains(Ipv4Addr::new(203, 0, 113, 9)));
    }

    #[test]
    fn a_remote_admin_listener_needs_authentication() {
        let mut c = base();
        c.admin.listen = "192.0.2.9:4340".parse().expect("addr");
        assert!(matches!(
            c.validate(),
            Err(ConfigError::AdminUnprotected(_))
        ));
        c.admin.token_file = Some("admin.token".into());
        c.validate().expect("a token file protects it");
        c.admin.token_file = None;
        c.admin.tls = Some(TlsFiles::default());
        c.validate().expect("client certificates protect it");
        // Loopback needs nothing.
        base().validate().expect("loopback");
    }

    #[test]
    fn limits_are_checked() {
        let mut c = base();
        assert_eq!(c.registration.limits, LimitsConfig::default());
        c.registration.limits.per_source_rate = 0.0;
        assert!(matches!(c.validate(), Err(ConfigError::Limits(_))));
        c.registration.limits = LimitsConfig {
            global_burst: 0.5,
            ..LimitsConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Limits(_))));
        c.registration.limits.enabled = false;
        c.validate().expect("off: not checked");
    }

    #[test]
    fn secrets_stay_hidden_and_compare_in_constant_time() {
        let m = TlsMaterial {
            ca: b"ca".to_vec(),
            cert: b"cert".to_vec(),
            key: Key::new(b"-----BEGIN PRIVATE KEY-----secret".to_vec()),
        };
        let shown = format!("{m:?}");
        assert!(!shown.contains("secret"), "{shown}");
        let tokens = AdminTokens {
            write: Some(Key::new(b"tok".to_vec())),
            read: None,
        };
        assert!(!format!("{tokens:?}").contains("tok\""));
        let k = Key::new(b"token".to_vec());
        assert!(k.ct_eq(b"token"));
        assert!(!k.ct_eq(b"token2"));
        assert!(!k.ct_eq(b"tokeN"));
        assert_eq!(k, Key::new(b"token".to_vec()));
        assert_ne!(k, Key::new(b"other".to_vec()));
    }

    #[test]
    fn secret_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("admin.token");
        std::fs::write(&token, "  s3cret\n").expect("write");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let cfg = dir.path().join("node.toml");
        std::fs::write(
            &cfg,
            "[admin]\ntoken_file = \"admin.token\"\n[[realm]]\nname = \"a\"\nvip = \"192.0.2.1\"\nhome_prefix = \"198.51.100.0/24\"\n",
        )
        .expect("write");
        let c = Config::load(&cfg).expect("loads");
        assert!(
            c.admin
                .tokens
                .write
                .as_ref()
                .is_some_and(|t| t.ct_eq(b"s3cret"))
        );
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o604)).expect("chmod");
        let e = Config::load(&cfg).expect_err("world-readable");
        assert!(
            matches!(e, ConfigError::KeysFileMode { mode: 0o604, .. }),
            "{e}"
        );
        assert!(!e.to_string().contains("s3cret"));
    }

    #[test]
    fn pair_key_from_a_private_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("pair.key");
        std::fs::write(&key, format!("{KEY}\n")).expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let node = |extra: &str| {
            let cfg = dir.path().join("node.toml");
            std::fs::write(
                &cfg,
                format!(
                    "[cluster]\nmode = \"pair\"\nlisten = \"198.18.0.11:4343\"\n\
                     [cluster.pair]\npeer = \"198.18.0.12:4343\"\nkey_file = \"pair.key\"\n{extra}\
                     [[realm]]\nname = \"a\"\nvip = \"192.0.2.1\"\nhome_prefix = \"198.51.100.0/24\"\n"
                ),
            )
            .expect("write");
            Config::load(&cfg)
        };
        let c = node("").expect("loads");
        assert_eq!(c.cluster.pair.key_hex.as_bytes(), hex::decode(KEY).unwrap());
        assert!(matches!(
            node(&format!("key_hex = \"{KEY}\"\n")),
            Err(ConfigError::PairKeyTwice)
        ));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(matches!(
            node(""),
            Err(ConfigError::KeysFileMode { mode: 0o640, .. })
        ));
    }

    #[test]
    fn dispatch_bind_vip_defaults_by_mode() {
        let parse = |extra: &str| {
            Config::from_toml_str(&format!(
                "[dispatch]\nadvertise_to = [\"198.18.0.2:4341\"]\nsource = \"198.18.0.11\"\n{extra}"
            ))
        };
        let d = |extra: &str| parse(extra).expect("parses").dispatch.expect("[dispatch]");
        assert!(d("").binds_vip(), "l2: the VIP socket is the way in");
        assert!(!d("mode = \"encap\"").binds_vip(), "encap: no VIP socket");
        assert!(d("mode = \"encap\"\nbind_vip = true").binds_vip());
        assert_eq!(d("mode = \"encap\"").interval_ms, 1000);
        // The rest of the section still refuses unknown keys and bad types.
        assert!(parse("bind_vip = 1").is_err());
        assert!(parse("bind_vips = true").is_err());
        let mut c = base();
        c.dispatch = Some(d("bind_vip = false"));
        assert!(matches!(c.validate(), Err(ConfigError::DispatchBindVip)));
        c.dispatch = Some(d("mode = \"encap\"\nbind_vip = false"));
        c.validate().expect("encap without a VIP socket");
    }
}
