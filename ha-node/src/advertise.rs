//! Health advertisements to the dispatchers (DESIGN.md §5).
//!
//! Every interval the node sends each configured dispatcher a VRRPv3-format
//! advertisement [RFC 5798 § 5.2] by unicast UDP: priority = the node's
//! capacity, 0 = draining, Max Adver Int = the interval. The dispatcher
//! (`haven_dispatcher::health`) takes a node that falls silent for its
//! Master_Down_Interval (3 × interval + skew) out of its Maglev table, so a
//! SIGKILLed node is steered around within about three intervals, and a
//! draining node at once. The checksum covers the pseudo-header (this
//! node's address, the dispatcher's address, protocol 112) exactly as VRRP
//! over IP would [RFC 5798 § 5.2.8], so the dispatcher parses it with
//! [`VrrpRepr::parse`] unchanged.
//!
//! The advert comes from the node's *unique* address (`source`, the socket
//! is bound to it): the dispatcher maps the source address to the node id.
//! On stop, one last advert with priority 0 moves the node's mobile nodes
//! to the survivors before it goes (graceful drain), instead of after
//! Master_Down_Interval.
//!
//! With `key_file` every advert carries the HMAC-SHA256 trailer and a
//! 64-bit sequence of [`haven_proto::advert_auth`] (the layout of the pair's
//! own authenticated adverts), and the dispatchers with the same key refuse
//! any advert without it or not newer than the last (docs/security.md). The
//! sequence is the wall clock in microseconds since the Unix epoch, or the
//! last one + 1 if that is not larger, so a restarted node continues above
//! what it sent before (as long as its clock does not step back further
//! than its downtime).
//!
//! ## Withdrawals
//! When the Raft transport reports a peer refused after its stream ended
//! ([`crate::raft::PeerRefused`]: its process is gone), the advertiser
//! sends every dispatcher a withdrawal of that peer
//! ([`haven_proto::withdraw`]) at once, and again at each of the next
//! [`WITHDRAW_REPEATS`] ticks because UDP can be lost, at most once per
//! interval; the transport reports each loss once, so the withdrawals stay
//! within a few intervals of the death (by the time the peer restarts, the
//! dispatchers' own timeout has long agreed with them). Withdrawals go to
//! the same `advertise_to` list as adverts (both dispatchers of a pair),
//! with the same key and from the same rising sequence. The peer is named
//! by the address the dispatchers know it by (`[[node]] address`, the
//! peer's `[dispatch] source`): its `[[cluster.peer]] dispatch_source`
//! where the Raft network is not the dispatch segment, else the host of
//! its Raft address (`[[cluster.peer]] address`), which is right where a
//! node's Raft listener and its advert source share its unique address. A
//! name the dispatchers do not know (a member added at run time whose Raft
//! and dispatch addresses differ) is ignored there, and the advert timeout
//! applies as before (docs/dispatcher.md).
//!
//! The `[dispatch]` section of the node configuration ([`DispatchConfig`])
//! holds these settings and the encap-mode listener ([`crate::ingress`]).

#[cfg(feature = "daemon")]
use std::net::SocketAddr;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use haven_proto::advert_auth::AuthAdvertRepr;
use haven_proto::vrrp::VrrpRepr;
use haven_proto::withdraw::WithdrawRepr;
use serde::Deserialize;
#[cfg(feature = "daemon")]
use tokio::sync::{broadcast, watch};

/// Withdrawals of a peer sent at the ticks after the first (module docs).
pub const WITHDRAW_REPEATS: u32 = 3;

/// How the dispatchers reach this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DispatchMode {
    /// Layer-2 direct server return: datagrams arrive on the ordinary VIP
    /// socket with the mobile node's own source (VIP on `lo`, `arp_ignore`).
    #[default]
    L2,
    /// The `haven_proto::dispatch` header over UDP to `encap_listen`.
    Encap,
}

/// `[dispatch]` in the node's configuration.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// The dispatchers' advert listeners, e.g. `["198.18.0.2:4341"]`.
    pub advertise_to: Vec<SocketAddrV4>,
    /// This node's unique address on the rack segment (advert source; the
    /// dispatchers know the node by it).
    pub source: Ipv4Addr,
    /// Advertisement interval in milliseconds, 10–40950, a multiple of 10
    /// (default 1000) [RFC 5798 § 5.2.7: centiseconds, 12 bits].
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u32,
    /// Capacity advertised, 1–255 (default 100); 0 is reserved for draining.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// VRID written into adverts (default 1; the dispatcher ignores it).
    #[serde(default = "default_vrid")]
    pub vrid: u8,
    /// `"l2"` (default) or `"encap"`.
    #[serde(default)]
    pub mode: DispatchMode,
    /// encap mode: where frames from the dispatcher arrive (default
    /// `source:4342`).
    pub encap_listen: Option<SocketAddrV4>,
    /// A file with the HMAC-SHA256 key shared with the dispatchers'
    /// `[health] key_file`: hex (whitespace trimmed) or, if not hex, the raw
    /// octets; at least 16 octets; mode 0600 or stricter; relative to the
    /// configuration file. Absent: plain RFC 5798 adverts.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The key read from `key_file` ([`DispatchConfig::load_key`]).
    #[serde(skip)]
    pub key: Option<Box<[u8]>>,
    /// `bind_vip`: also bind each realm's VIP:port. Default: true in l2
    /// mode (the VIP socket is how datagrams arrive), false in encap mode,
    /// where everything arrives on `encap_listen` and leaves as `ToClient`
    /// frames; a node on the dispatcher's host must then stay off VIP:434,
    /// or the kernel hands the dispatcher's datagrams to the node's socket
    /// (the one bound last). true in encap mode only for mobile nodes that
    /// reach the node's VIP directly as well.
    #[serde(default)]
    pub bind_vip: Option<bool>,
}

// By hand so the key never reaches a log.
impl std::fmt::Debug for DispatchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatchConfig")
            .field("advertise_to", &self.advertise_to)
            .field("source", &self.source)
            .field("interval_ms", &self.interval_ms)
            .field("priority", &self.priority)
            .field("vrid", &self.vrid)
            .field("mode", &self.mode)
            .field("encap_listen", &self.encap_listen)
            .field("key_file", &self.key_file)
            .field("key", &self.key.as_ref().map(|k| k.len()))
            .field("bind_vip", &self.bind_vip)
            .finish()
    }
}

/// Shortest advert key accepted (as for the SA keys).
pub const MIN_KEY_LEN: usize = 16;

fn default_interval_ms() -> u32 {
    1000
}
fn default_priority() -> u8 {
    100
}
fn default_vrid() -> u8 {
    1
}

/// A `[dispatch]` section [`DispatchConfig::validate`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchConfigError {
    /// No dispatcher to advertise to.
    #[error("[dispatch] advertise_to must list at least one dispatcher")]
    NoTargets,
    /// Out of the 12-bit centisecond field, or not whole centiseconds.
    #[error("[dispatch] interval_ms {0} must be 10-40950 and a multiple of 10")]
    Interval(u32),
    /// Priority 0 means draining; it is not a capacity.
    #[error("[dispatch] priority must be 1-255")]
    Priority,
    /// The source must be a unicast address the dispatchers can map.
    #[error("[dispatch] source {0} must be a unicast address")]
    Source(Ipv4Addr),
    /// The key file cannot be read.
    #[error("[dispatch] key_file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file is accessible by group or others.
    #[error(
        "[dispatch] key_file {path} has mode {mode:04o}; it must not be accessible by group or others (chmod 0600)"
    )]
    KeyFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Fewer than [`MIN_KEY_LEN`] octets.
    #[error("[dispatch] key_file {path}: key of {len} octets, at least {MIN_KEY_LEN} needed")]
    KeyTooShort {
        /// The file.
        path: PathBuf,
        /// The key's length.
        len: usize,
    },
}

impl DispatchConfig {
    /// Whether the daemon binds the realms' VIP:ports (`bind_vip` or its
    /// mode's default).
    pub fn binds_vip(&self) -> bool {
        self.bind_vip.unwrap_or(self.mode == DispatchMode::L2)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), DispatchConfigError> {
        if self.advertise_to.is_empty() {
            return Err(DispatchConfigError::NoTargets);
        }
        if !(10..=40950).contains(&self.interval_ms) || self.interval_ms % 10 != 0 {
            return Err(DispatchConfigError::Interval(self.interval_ms));
        }
        if self.priority == 0 {
            return Err(DispatchConfigError::Priority);
        }
        if self.source.is_unspecified() || self.source.is_multicast() || self.source.is_broadcast()
        {
            return Err(DispatchConfigError::Source(self.source));
        }
        Ok(())
    }

    /// Reads `key_file` (relative to `base`, the configuration file's
    /// directory) into `key`; nothing without a `key_file`. A file group or
    /// others can access is refused; the contents are hex if they are an
    /// even number of hex digits (whitespace trimmed), else raw octets.
    pub fn load_key(&mut self, base: &Path) -> Result<(), DispatchConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let Some(f) = &self.key_file else {
            return Ok(());
        };
        let path = base.join(f);
        let io = |e: std::io::Error| DispatchConfigError::KeyFile {
            path: path.clone(),
            reason: e.to_string(),
        };
        let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(DispatchConfigError::KeyFileMode { path, mode });
        }
        let raw = std::fs::read(&path).map_err(io)?;
        let key = hex::decode(raw.trim_ascii()).unwrap_or(raw);
        if key.len() < MIN_KEY_LEN {
            return Err(DispatchConfigError::KeyTooShort {
                path,
                len: key.len(),
            });
        }
        self.key = Some(key.into_boxed_slice());
        Ok(())
    }

    /// The interval as a [`Duration`].
    pub fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval_ms))
    }

    /// The encap listener (`encap_listen`, else `source:4342`).
    pub fn encap_listen(&self) -> SocketAddrV4 {
        self.encap_listen
            .unwrap_or(SocketAddrV4::new(self.source, 4342))
    }

    /// The advertisement for the current drain state [RFC 5798 § 5.2].
    pub fn advert(&self, draining: bool) -> VrrpRepr {
        VrrpRepr {
            vrid: self.vrid,
            priority: if draining { 0 } else { self.priority },
            // Validated: ≤ 4095 centiseconds.
            max_advert_int_cs: u16::try_from(self.interval_ms / 10).unwrap_or(0x0fff),
            addresses: Vec::new(),
        }
    }
}

/// The next advert sequence: the wall clock in microseconds, or `last` + 1
/// if the clock has not moved past it (module docs).
pub fn next_sequence(last: u64, now: std::time::SystemTime) -> u64 {
    let wall = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    wall.max(last.saturating_add(1))
}

/// The advert bytes to `dst`: plain, or with the trailer for `sequence`.
pub fn advert_bytes(
    config: &DispatchConfig,
    draining: bool,
    sequence: u64,
    dst: Ipv4Addr,
) -> haven_proto::Result<Vec<u8>> {
    let advert = config.advert(draining);
    match &config.key {
        Some(key) => AuthAdvertRepr { advert, sequence }.to_bytes(config.source, dst, key),
        None => advert.to_bytes(config.source, dst),
    }
}

/// The withdrawal of `subject` to `dst`: plain, or with the trailer for
/// `sequence` (the advert sequence space).
pub fn withdrawal_bytes(
    config: &DispatchConfig,
    subject: Ipv4Addr,
    sequence: u64,
    dst: Ipv4Addr,
) -> haven_proto::Result<Vec<u8>> {
    WithdrawRepr {
        vrid: config.vrid,
        subject,
        sequence,
    }
    .to_bytes(config.source, dst, config.key.as_deref())
}

/// Sends one withdrawal of `subject` to every dispatcher, as
/// [`send_all`] does adverts.
#[cfg(feature = "daemon")]
async fn withdraw_all(
    sock: &tokio::net::UdpSocket,
    config: &DispatchConfig,
    subject: Ipv4Addr,
    sequence: &mut u64,
) {
    let round = Round {
        what: "withdrawal",
        metric: crate::telemetry::DISPATCH_WITHDRAWALS,
    };
    round
        .send(sock, config, sequence, |seq, dst| {
            withdrawal_bytes(config, subject, seq, dst)
        })
        .await;
}

/// The Raft transport's refusal reports, and what the peers are called at
/// the dispatchers where that is not the host of their Raft address.
#[cfg(feature = "daemon")]
#[derive(Debug)]
pub struct Refusals {
    /// [`crate::raft::Transport::refusals`].
    pub rx: broadcast::Receiver<crate::raft::PeerRefused>,
    /// Peer id → its `[dispatch] source` (`[[cluster.peer]]
    /// dispatch_source`).
    pub names: std::collections::HashMap<u64, Ipv4Addr>,
}

/// Peers being withdrawn: repeats left and the last send (module docs).
#[cfg(feature = "daemon")]
#[derive(Debug, Default)]
struct Withdrawing {
    /// Peer id → its name at the dispatchers, where configured.
    names: std::collections::HashMap<u64, Ipv4Addr>,
    peers: std::collections::BTreeMap<Ipv4Addr, (u32, Option<tokio::time::Instant>)>,
    /// Peers with neither an IPv4 Raft host nor a `dispatch_source`
    /// (warned once each).
    unnamed: std::collections::BTreeSet<u64>,
}

#[cfg(feature = "daemon")]
impl Withdrawing {
    /// A refusal report: the subject to withdraw now, if not withdrawn
    /// within the last half interval (then only its repeats restart).
    fn on_refused(
        &mut self,
        r: crate::raft::PeerRefused,
        me: Ipv4Addr,
        interval: Duration,
        now: tokio::time::Instant,
    ) -> Option<Ipv4Addr> {
        let Some(host) = self.names.get(&r.peer).copied().or(r.host) else {
            if self.unnamed.insert(r.peer) {
                tracing::warn!(
                    peer = r.peer,
                    "raft peer refused, but its address has no IPv4 host and it has no dispatch_source to withdraw it by at the dispatchers"
                );
            }
            return None;
        };
        if host == me {
            return None;
        }
        let e = self.peers.entry(host).or_insert((0, None));
        e.0 = WITHDRAW_REPEATS;
        match e.1 {
            Some(last) if now.saturating_duration_since(last) < interval / 2 => None,
            _ => {
                if e.1.is_none() {
                    tracing::info!(peer = r.peer, %host, "raft peer refused after its stream ended: withdrawing it at the dispatchers");
                }
                e.1 = Some(now);
                Some(host)
            }
        }
    }

    /// At a tick: the subjects to withdraw again (at most once per
    /// interval each); finished ones are forgotten.
    fn due(&mut self, interval: Duration, now: tokio::time::Instant) -> Vec<Ipv4Addr> {
        let mut out = Vec::new();
        self.peers.retain(|&host, (left, last)| {
            if *left == 0 {
                return false;
            }
            if last.is_none_or(|l| now.saturating_duration_since(l) >= interval / 2) {
                *left -= 1;
                *last = Some(now);
                out.push(host);
            }
            true
        });
        out
    }
}

/// Sends one advert to every dispatcher; failures are logged and counted
/// (a dispatcher that is down must not stop the others hearing us).
#[cfg(feature = "daemon")]
async fn send_all(
    sock: &tokio::net::UdpSocket,
    config: &DispatchConfig,
    draining: bool,
    sequence: &mut u64,
) {
    let round = Round {
        what: "advert",
        metric: "haven_dispatch_adverts_total",
    };
    round
        .send(sock, config, sequence, |seq, dst| {
            advert_bytes(config, draining, seq, dst)
        })
        .await;
}

/// One message to every dispatcher under one new sequence: adverts and
/// withdrawals share the sequence space and the counting.
#[cfg(feature = "daemon")]
struct Round {
    /// For the debug log.
    what: &'static str,
    /// Counted by `result` ("sent", "error").
    metric: &'static str,
}

#[cfg(feature = "daemon")]
impl Round {
    async fn send(
        &self,
        sock: &tokio::net::UdpSocket,
        config: &DispatchConfig,
        sequence: &mut u64,
        bytes: impl Fn(u64, Ipv4Addr) -> haven_proto::Result<Vec<u8>>,
    ) {
        // One sequence per round: each dispatcher checks its own, and the
        // HMAC covers the destination, so one cannot be replayed to another.
        *sequence = next_sequence(*sequence, std::time::SystemTime::now());
        for dst in &config.advertise_to {
            let sent = match bytes(*sequence, *dst.ip()) {
                Ok(b) => sock.send_to(&b, SocketAddr::V4(*dst)).await.map(drop),
                Err(e) => Err(std::io::Error::other(e)),
            };
            let result = if let Err(e) = sent {
                tracing::debug!(%dst, "{}: {e}", self.what);
                "error"
            } else {
                "sent"
            };
            metrics::counter!(self.metric, "result" => result).increment(1);
        }
    }
}

/// Advertises until `stop` turns true, then sends one priority-0 advert.
///
/// `draining` true makes the adverts priority 0 (the dispatchers move this
/// node's mobile nodes away at once); a change is advertised immediately.
/// `refusals` (raft mode: [`crate::raft::Transport::refusals`]) turns
/// peers refused after their stream ended into withdrawals (module docs).
///
/// # Errors
/// Binding the socket to `config.source`, or reading `key_file` if the
/// configuration did not load it (relative to the working directory).
#[cfg(feature = "daemon")]
pub async fn run(
    mut config: DispatchConfig,
    mut draining: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    refusals: Option<Refusals>,
) -> std::io::Result<()> {
    if config.key.is_none() {
        config
            .load_key(Path::new(""))
            .map_err(std::io::Error::other)?;
    }
    let mut sequence = 0;
    let sock = tokio::net::UdpSocket::bind(SocketAddrV4::new(config.source, 0)).await?;
    let mut tick = tokio::time::interval(config.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_open = true;
    let (mut refusals, names) =
        refusals.map_or((None, Default::default()), |r| (Some(r.rx), r.names));
    let mut withdrawing = Withdrawing {
        names,
        ..Withdrawing::default()
    };
    let interval = config.interval();
    loop {
        // Decide first, act after: the select's futures (and the watch
        // guards they return) are gone before anything is awaited.
        let mut withdraw = Vec::new();
        let send_now = tokio::select! {
            _ = tick.tick() => {
                withdraw = withdrawing.due(interval, tokio::time::Instant::now());
                true
            }
            r = crate::raft::next_refusal(&mut refusals) => {
                let now = tokio::time::Instant::now();
                withdraw.extend(withdrawing.on_refused(r, config.source, interval, now));
                false
            }
            changed = draining.changed(), if drain_open => {
                if changed.is_err() {
                    // The drain flag's owner is gone: keep the last value.
                    drain_open = false;
                    false
                } else {
                    tick.reset();
                    true
                }
            }
            res = stop.wait_for(|s| *s) => {
                let _ = res.map(drop);
                break;
            }
        };
        for subject in withdraw {
            withdraw_all(&sock, &config, subject, &mut sequence).await;
        }
        if send_now {
            let d = *draining.borrow_and_update();
            send_all(&sock, &config, d, &mut sequence).await;
        }
    }
    send_all(&sock, &config, true, &mut sequence).await;
    Ok(())
}

#[cfg(all(test, feature = "daemon"))]
mod tests {
    use super::*;
    use haven_proto::vrrp::VrrpPacket;
    use hex_literal::hex;

    fn config(to: SocketAddrV4) -> DispatchConfig {
        DispatchConfig {
            advertise_to: vec![to],
            source: Ipv4Addr::LOCALHOST,
            interval_ms: 50,
            priority: 100,
            vrid: 1,
            mode: DispatchMode::L2,
            encap_listen: None,
            key_file: None,
            key: None,
            bind_vip: None,
        }
    }

    #[test]
    fn parses_and_validates() {
        let c: DispatchConfig = toml::from_str(
            "advertise_to = [\"198.18.0.2:4341\", \"198.18.0.3:4341\"]\nsource = \"198.18.0.11\"\n",
        )
        .expect("parse");
        assert_eq!(c.interval_ms, 1000);
        assert_eq!(c.priority, 100);
        assert_eq!(c.mode, DispatchMode::L2);
        assert_eq!(c.encap_listen(), "198.18.0.11:4342".parse().unwrap());
        assert_eq!(c.validate(), Ok(()));
        let bad = DispatchConfig {
            interval_ms: 15,
            ..c.clone()
        };
        assert_eq!(bad.validate(), Err(DispatchConfigError::Interval(15)));
        let bad = DispatchConfig {
            priority: 0,
            ..c.clone()
        };
        assert_eq!(bad.validate(), Err(DispatchConfigError::Priority));
        let bad = DispatchConfig {
            advertise_to: vec![],
            ..c
        };
        assert_eq!(bad.validate(), Err(DispatchConfigError::NoTargets));
    }

    // Independently computed with python3 (RFC 1071 over the pseudo-header
    // 198.18.0.11, 198.18.0.2, 0, 112, length 8, then 31 01 64 00 00 64 00 00):
    // checksum 0xddef.
    #[test]
    fn advert_bytes() {
        let mut c = config("198.18.0.2:4341".parse().unwrap());
        c.source = Ipv4Addr::new(198, 18, 0, 11);
        c.interval_ms = 1000;
        let b = c
            .advert(false)
            .to_bytes(c.source, Ipv4Addr::new(198, 18, 0, 2))
            .unwrap();
        assert_eq!(b, hex!("310164000064ddef").to_vec());
        let d = c.advert(true);
        assert_eq!(d.priority, 0);
    }

    #[test]
    fn key_file_hex_raw_mode_and_length() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        let mut c = config("198.18.0.2:4341".parse().unwrap());
        assert_eq!(c.load_key(dir.path()), Ok(()));
        assert_eq!(c.key, None);
        c.key_file = Some("k".into());
        std::fs::write(&f, "00112233445566778899aabbccddeeff\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            c.load_key(dir.path()),
            Err(DispatchConfigError::KeyFileMode { mode: 0o640, .. })
        ));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        c.load_key(dir.path()).unwrap();
        assert_eq!(
            c.key.as_deref(),
            Some(&hex!("00112233445566778899aabbccddeeff")[..])
        );
        assert!(!format!("{c:?}").contains("0011"), "Debug hides the key");
        // Not hex: the raw octets, untrimmed.
        std::fs::write(&f, b"raw key, not hex!\n").unwrap();
        c.load_key(dir.path()).unwrap();
        assert_eq!(c.key.as_deref(), Some(&b"raw key, not hex!\n"[..]));
        std::fs::write(&f, "0011").unwrap();
        assert!(matches!(
            c.load_key(dir.path()),
            Err(DispatchConfigError::KeyTooShort { len: 2, .. })
        ));
    }

    #[test]
    fn sequence_follows_the_clock_and_never_repeats() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(next_sequence(0, t), 1_700_000_000_000_000);
        // A restarted node (last = 0) at a later time continues above.
        assert!(next_sequence(0, t + Duration::from_secs(1)) > next_sequence(0, t));
        // The same or an earlier clock reading: last + 1.
        let s = next_sequence(0, t);
        assert_eq!(next_sequence(s, t), s + 1);
        assert_eq!(next_sequence(s, t - Duration::from_secs(5)), s + 1);
    }

    #[tokio::test]
    async fn keyed_adverts_carry_the_trailer_with_rising_sequences() {
        use haven_proto::advert_auth::AuthAdvertRepr;
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(to) = rx.local_addr().unwrap() else {
            panic!("v4")
        };
        let key = b"test-only-advert-key".to_vec();
        let c = DispatchConfig {
            key: Some(key.clone().into_boxed_slice()),
            ..config(to)
        };
        let (_drain_tx, drain_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(c, drain_rx, stop_rx, None));
        let mut last = 0;
        let mut buf = [0u8; 128];
        for _ in 0..3 {
            let (n, _) = rx.recv_from(&mut buf).await.unwrap();
            let a = AuthAdvertRepr::parse(&buf[..n], Ipv4Addr::LOCALHOST, *to.ip(), &key)
                .expect("authenticated");
            assert_eq!(a.advert.priority, 100);
            assert!(a.sequence > last, "{} after {last}", a.sequence);
            last = a.sequence;
            assert!(
                AuthAdvertRepr::parse(
                    &buf[..n],
                    Ipv4Addr::LOCALHOST,
                    *to.ip(),
                    b"other-key-16-oct"
                )
                .is_err()
            );
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_refused_peer_is_withdrawn_at_once_then_a_bounded_number_of_times() {
        use crate::raft::PeerRefused;
        use haven_proto::advert_auth::AuthAdvertRepr;
        use haven_proto::withdraw::is_withdrawal;
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(to) = rx.local_addr().unwrap() else {
            panic!("v4")
        };
        let key = b"test-only-advert-key".to_vec();
        let c = DispatchConfig {
            key: Some(key.clone().into_boxed_slice()),
            ..config(to)
        };
        let (refused_tx, refused_rx) = broadcast::channel(8);
        let (_drain_tx, drain_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let refusals = Refusals {
            rx: refused_rx,
            names: Default::default(),
        };
        let task = tokio::spawn(run(c, drain_rx, stop_rx, Some(refusals)));
        let mut buf = [0u8; 128];
        let (n, _) = rx.recv_from(&mut buf).await.unwrap();
        let mut last = AuthAdvertRepr::parse(&buf[..n], Ipv4Addr::LOCALHOST, *to.ip(), &key)
            .expect("the first advert")
            .sequence;
        let peer = Ipv4Addr::new(127, 0, 0, 12);
        // This node itself, and a peer without an IPv4 host: nothing sent.
        for r in [
            PeerRefused {
                peer: 1,
                host: Some(Ipv4Addr::LOCALHOST),
            },
            PeerRefused {
                peer: 3,
                host: None,
            },
            PeerRefused {
                peer: 2,
                host: Some(peer),
            },
        ] {
            refused_tx.send(r).unwrap();
        }
        let (mut withdrawals, mut adverts_after) = (0u32, 0u32);
        // At 50 ms a tick, WITHDRAW_REPEATS + 4 adverts after the first
        // withdrawal are well past the last repeat.
        while adverts_after < WITHDRAW_REPEATS + 4 {
            let (n, _) = rx.recv_from(&mut buf).await.unwrap();
            let b = &buf[..n];
            let seq = if is_withdrawal(b) {
                let w = WithdrawRepr::parse(b, Ipv4Addr::LOCALHOST, *to.ip(), Some(&key))
                    .expect("authenticated like the adverts");
                assert_eq!(w.subject, peer);
                withdrawals += 1;
                w.sequence
            } else {
                if withdrawals > 0 {
                    adverts_after += 1;
                }
                AuthAdvertRepr::parse(b, Ipv4Addr::LOCALHOST, *to.ip(), &key)
                    .expect("advert")
                    .sequence
            };
            assert!(seq > last, "one rising sequence: {seq} after {last}");
            last = seq;
        }
        assert_eq!(withdrawals, 1 + WITHDRAW_REPEATS);
        stop_tx.send(true).unwrap();
        task.await.unwrap().unwrap();
    }

    // A peer is named as the dispatchers know it: its dispatch_source where
    // its Raft address is elsewhere, else its Raft host; never this node.
    #[test]
    fn a_refused_peer_is_named_by_its_dispatch_source_else_its_raft_host() {
        use crate::raft::PeerRefused;
        let me = Ipv4Addr::new(127, 0, 0, 11);
        let mut w = Withdrawing {
            names: [(2, Ipv4Addr::new(127, 0, 0, 12)), (3, me)].into(),
            ..Withdrawing::default()
        };
        let now = tokio::time::Instant::now();
        let i = Duration::from_millis(100);
        let refused = |peer, host| PeerRefused { peer, host };
        let raft_net = |last| Some(Ipv4Addr::new(127, 0, 1, last));
        assert_eq!(
            w.on_refused(refused(2, raft_net(12)), me, i, now),
            Some(Ipv4Addr::new(127, 0, 0, 12))
        );
        assert_eq!(
            w.on_refused(refused(4, raft_net(14)), me, i, now),
            raft_net(14)
        );
        assert_eq!(w.on_refused(refused(3, raft_net(11)), me, i, now), None);
        assert_eq!(w.on_refused(refused(5, None), me, i, now), None);
    }

    #[tokio::test]
    async fn advertises_drains_and_stops_with_priority_zero() {
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(to) = rx.local_addr().unwrap() else {
            panic!("v4")
        };
        let (drain_tx, drain_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(config(to), drain_rx, stop_rx, None));
        async fn next(rx: &tokio::net::UdpSocket, to: SocketAddrV4) -> VrrpRepr {
            let mut buf = [0u8; 64];
            let (n, from) = rx.recv_from(&mut buf).await.unwrap();
            let SocketAddr::V4(from) = from else {
                panic!("v4")
            };
            let p = VrrpPacket::new_checked(&buf[..n]).unwrap();
            VrrpRepr::parse(&p, *from.ip(), *to.ip()).unwrap()
        }
        let a = next(&rx, to).await;
        assert_eq!((a.priority, a.max_advert_int_cs), (100, 5));
        drain_tx.send(true).unwrap();
        // The change is advertised without waiting for the tick.
        let mut saw_drain = false;
        for _ in 0..3 {
            if next(&rx, to).await.priority == 0 {
                saw_drain = true;
                break;
            }
        }
        assert!(saw_drain);
        drain_tx.send(false).unwrap();
        let mut back = false;
        for _ in 0..3 {
            if next(&rx, to).await.priority == 100 {
                back = true;
                break;
            }
        }
        assert!(back);
        stop_tx.send(true).unwrap();
        task.await.unwrap().unwrap();
        // Whatever was queued, the last advert is priority 0.
        let mut buf = [0u8; 64];
        let mut last = None;
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(20), rx.recv_from(&mut buf)).await
        {
            let p = VrrpPacket::new_checked(&buf[..n]).unwrap();
            last = Some(VrrpRepr::parse(&p, Ipv4Addr::LOCALHOST, *to.ip()).unwrap());
        }
        assert_eq!(last.map(|a| a.priority), Some(0));
    }
}
