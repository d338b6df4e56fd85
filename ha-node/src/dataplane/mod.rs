//! The data plane's sans-IO core: forward and reverse tunnelling decisions
//! ([DESIGN.md § 6]).
//!
//! The home network side of every realm is a TUN device whose routes cover
//! the realm's home prefix; packets a correspondent sends to a home address
//! come out of it and go to [`DataPlane::forward`]. Every node holds every
//! binding, so any node forwards for any mobile node:
//!
//! * `Encap::IpInIp` → an outer IPv4 header (protocol 4) from the VIP to the
//!   care-of address [RFC 2003 § 3]: TTL 64, TOS and DF copied from the inner
//!   header [RFC 2003 § 3.1]; the inner TTL is decremented, and a packet
//!   whose TTL would reach 0 is dropped with an ICMP Time Exceeded
//!   [RFC 2003 § 3.1, RFC 792];
//! * `Encap::Udp { nat }` → a UDP datagram from VIP:434 to the NAT mapping
//!   holding the tunnel data message (type 4, next header 4) and the inner
//!   packet [RFC 3519 § 3.3];
//! * simultaneous bindings: one copy to each live care-of address
//!   [RFC 5944 § 3.6.1.2]; expired care-of addresses are skipped;
//! * no live binding → ICMP Host Unreachable (when enabled; rate-limited) and
//!   a drop; DF set and the encapsulated packet larger than the tunnel MTU →
//!   ICMP Fragmentation Needed with the MTU the tunnel leaves
//!   [RFC 2003 § 5.1, RFC 1191];
//! * DF clear and the encapsulated packet larger than the tunnel MTU → the
//!   *outer* datagram is fragmented (see "Fragmentation" below).
//!
//! # Fragmentation
//!
//! [RFC 2003 § 3.1] copies DF from the inner header, so a packet whose
//! source allowed fragmentation may be fragmented inside the tunnel, and
//! [RFC 2003 § 5.1] lets the encapsulator fragment the encapsulated
//! datagram; the decapsulator (the mobile node's IP layer) reassembles
//! [RFC 4459 § 3.1]. RFC 3519 data is an ordinary UDP datagram, which IP
//! fragments the same way. haven fragments here, in the sans-IO core, and
//! not by asking the kernel to:
//!
//! * the raw socket writes the outer header itself (`IP_HDRINCL`, for the
//!   VIP as source and the copied TOS and DF), and Linux refuses such a
//!   packet above the device MTU with `EMSGSIZE` instead of fragmenting
//!   it; letting the kernel write the header would need one socket per
//!   (DF, TOS) and a bind to the VIP;
//! * the realm's UDP socket (`net::Endpoint`, `quinn-udp`) runs with
//!   `IP_PMTUDISC_PROBE`, DF on every datagram and never fragmented, which
//!   registration replies want; changing that socket for tunnel data
//!   would change it for them too;
//! * here the rule is one function with byte-vector tests, the same on
//!   every kernel, and the fragment size is the configured tunnel MTU.
//!
//! So an oversize non-DF packet leaves as outer IPv4 fragments (DF clear,
//! MF on all but the last, offsets in 8-octet units [RFC 791 § 3.2]) from
//! the VIP through the raw socket: IP in IP as protocol 4, UDP tunnelling as
//! the complete UDP datagram VIP:434 → NAT mapping (checksum over the whole
//! datagram), cut into fragments. Behind a dispatcher in encap mode
//! ([`DataPlane::udp_via_dispatcher`]) UDP tunnel data must leave from the
//! dispatcher's VIP socket, so the datagram goes whole in a `ToClient` frame
//! and the dispatcher's IP layer fragments it. All fragments of one datagram
//! share an Identification from the node's counter; the dispatcher's Maglev
//! lookup on the destination home address sends one home address's traffic
//! through one node, so the counters of different nodes do not mix in one
//! reassembly.
//!
//! The TUN device's MTU is 65535 for this reason: the kernel must hand the
//! core whole packets (an MTU below the tunnel's would make the kernel
//! answer DF packets with its own, smaller, one-size MTU from the node's
//! address, and fragment the others *inner*), and the core knows each
//! binding's overhead (20 for IP in IP, 32 for UDP).
//!
//! The reverse direction ([`DataPlane::reverse_ipip`],
//! [`DataPlane::reverse_udp`]) decapsulates what mobile nodes tunnel to the
//! VIP [RFC 3024] and hands the inner packet to the TUN device. The inner
//! source must be a home address of the realm whose binding has a live
//! care-of address (IP in IP) or NAT mapping (UDP) equal to the outer source;
//! anything else is dropped and counted as `spoofed`: the home agent must not
//! let anyone inject packets with a home address as source. The T bit is
//! not required: RFC 3519 data from a mobile node always comes through the
//! tunnel, and the binding check is what protects the home network.
//!
//! RFC 3519 keepalives (an ICMP Echo Request in the tunnel from the home
//! address to the VIP) are answered with [`udptun::build_keepalive_reply`],
//! only for a bound mapping. They refresh nothing in the replicated state:
//! the NAT mapping is refreshed by the request's mere passage through the
//! NAT, the binding's lifetime only by registration [RFC 3519 § 3.9], and a
//! keepalive per mobile node every 110 s must not become a replicated write.
//!
//! Everything here works on `&self` (atomic counters, the binding table's
//! concurrent map), so the TUN, raw-socket and UDP tasks share one
//! `Arc<DataPlane>`. Output goes into a reusable [`Outputs`] arena: no
//! allocation per packet once it has grown to the working size.

// The drivers need the daemon's dependencies (tokio, libc, socket2); the
// sans-IO core and its configuration do not, so `config` and the fuzz
// build (no `daemon` feature) link it too.
#[cfg(feature = "daemon")]
pub mod raw;
#[cfg(feature = "daemon")]
pub mod run;
#[cfg(feature = "daemon")]
pub mod tun;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haven_proto::ip::{self, IPV4_HEADER_LEN, Ipv4Packet, Ipv4Repr, UDP_HEADER_LEN, protocol};
use haven_proto::udptun::{self, NextHeader, TunnelDataPacket, TunnelDataRepr};
use serde::Deserialize;

use crate::binding::{BindingTable, CareOf, Encap};
use crate::config::{Prefix, RealmConfig, RealmId};

/// `[dataplane]`: the user-space data plane (default off).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataplaneConfig {
    /// Run the data plane. Default false: registrations only.
    pub enabled: bool,
    /// TUN device name prefix; realm `i` gets `<tun_name><i>`. Default
    /// `"havtun"`. Every resulting name must fit IFNAMSIZ less its NUL (15
    /// octets) and hold no '/', whitespace or control character
    /// ([`DataplaneConfig::validate`]).
    pub tun_name: String,
    /// MTU of the path to care-of addresses (outer packets), octets.
    /// Default 1500; at least [`MIN_TUNNEL_MTU`]. Encapsulated packets above
    /// it are refused with ICMP Fragmentation Needed (DF set) or sent as
    /// outer fragments (DF clear); see the module docs.
    pub tunnel_mtu: u16,
    /// Answer packets for home addresses without a binding with ICMP Host
    /// Unreachable. Default true.
    pub icmp_unreachable: bool,
    /// Most ICMP errors sent per second (all kinds together) [RFC 1812
    /// § 4.3.2.8]. Default 100; 0 disables ICMP errors.
    pub icmp_errors_per_sec: u32,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            tun_name: "havtun".to_owned(),
            tunnel_mtu: 1500,
            icmp_unreachable: true,
            icmp_errors_per_sec: 100,
        }
    }
}

/// Longest network device name: IFNAMSIZ (16 on Linux) less the NUL.
pub const MAX_TUN_NAME_LEN: usize = 15;
/// Smallest `tunnel_mtu`: every IPv4 link carries 576 octets [RFC 791 § 3.1,
/// RFC 1122 § 3.3.3].
pub const MIN_TUNNEL_MTU: u16 = 576;

/// A `[dataplane]` setting the daemon cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneConfigError {
    /// The device name is empty.
    #[error("[dataplane] tun_name must not be empty")]
    EmptyTunName,
    /// The device name (prefix plus realm index) is too long.
    #[error(
        "[dataplane] tun_name: device name {name:?} is {len} octets; Linux allows at most {max} (IFNAMSIZ - 1)"
    )]
    TunNameTooLong {
        /// The whole device name.
        name: String,
        /// Its length in octets.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character a device name must not hold.
    #[error(
        "[dataplane] tun_name {name:?} contains {ch:?}; device names take no '/', ':', whitespace or control characters"
    )]
    TunNameChar {
        /// The whole device name.
        name: String,
        /// The offending character.
        ch: char,
    },
    /// `.` and `..` name directories under /sys/class/net.
    #[error("[dataplane] tun_name {0:?} is not a usable device name")]
    TunNameReserved(String),
    /// `tunnel_mtu` below the IPv4 minimum.
    #[error("[dataplane] tunnel_mtu {0} is below the IPv4 minimum of 576")]
    TunnelMtuTooSmall(u16),
}

/// Checks one network device name as the kernel's `dev_valid_name` would:
/// 1 to 15 octets, not `.` or `..`, no '/', ':' (alias syntax), whitespace
/// or control character. TUNSETIFF fails late and obscurely (or, for a name
/// over 15 octets, the name would be cut), so the daemon refuses it at
/// configuration time.
///
/// # Errors
/// The first rule the name breaks.
pub fn validate_tun_name(name: &str) -> Result<(), DataplaneConfigError> {
    if name.is_empty() {
        return Err(DataplaneConfigError::EmptyTunName);
    }
    if name.len() > MAX_TUN_NAME_LEN {
        return Err(DataplaneConfigError::TunNameTooLong {
            name: name.to_owned(),
            len: name.len(),
            max: MAX_TUN_NAME_LEN,
        });
    }
    if name == "." || name == ".." {
        return Err(DataplaneConfigError::TunNameReserved(name.to_owned()));
    }
    if let Some(ch) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(DataplaneConfigError::TunNameChar {
            name: name.to_owned(),
            ch,
        });
    }
    Ok(())
}

impl DataplaneConfig {
    /// The device name of realm `index`: `<tun_name><index>`.
    pub fn tun_device(&self, index: u16) -> String {
        format!("{}{}", self.tun_name, index)
    }

    /// Validates the section against the realms it will serve: every
    /// realm with a home prefix gets a TUN device, whose name
    /// ([`DataplaneConfig::tun_device`]) must be valid
    /// ([`validate_tun_name`]); `tunnel_mtu` must be at least 576. Checked
    /// even when `enabled` is false, so turning the data plane on later
    /// does not uncover an old mistake.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self, realms: &[RealmConfig]) -> Result<(), DataplaneConfigError> {
        // The prefix alone first: its error names what the operator wrote.
        validate_tun_name(&self.tun_name)?;
        for plane in RealmPlane::from_config(realms) {
            validate_tun_name(&self.tun_device(plane.id.0))?;
        }
        if self.tunnel_mtu < MIN_TUNNEL_MTU {
            return Err(DataplaneConfigError::TunnelMtuTooSmall(self.tunnel_mtu));
        }
        Ok(())
    }
}

/// Overhead of IP in IP: one IPv4 header [RFC 2003 § 3].
pub const IPIP_OVERHEAD: usize = IPV4_HEADER_LEN;
/// Overhead of UDP tunnelling: IPv4, UDP and the tunnel data header
/// [RFC 3519 § 3.3].
pub const UDP_OVERHEAD: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN + udptun::HEADER_LEN;
/// TTL of outer headers and of ICMP errors.
pub const OUTER_TTL: u8 = 64;

/// What the data plane needs of a realm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealmPlane {
    /// Position in the configuration.
    pub id: RealmId,
    /// The VIP: outer source of forwarded packets, outer destination of
    /// reverse-tunnelled ones.
    pub vip: Ipv4Addr,
    /// The registration port (UDP tunnel data uses it too [RFC 3519 § 3.3]).
    pub port: u16,
    /// The home prefix.
    pub prefix: Prefix,
}

impl RealmPlane {
    /// The realms of a configuration that have a home prefix.
    pub fn from_config(realms: &[RealmConfig]) -> Vec<RealmPlane> {
        realms
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                Some(RealmPlane {
                    id: RealmId(u16::try_from(i).ok()?),
                    vip: r.vip,
                    port: r.port,
                    prefix: r.home_prefix?,
                })
            })
            .collect()
    }
}

/// Where an output packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Into the realm's TUN device (a complete IPv4 packet, to the home
    /// network).
    Tun(RealmId),
    /// Out of the raw IPv4 socket (a complete IPv4 packet with its header:
    /// IP in IP, or an ICMP error) to this address.
    Raw(Ipv4Addr),
    /// Out of the realm's UDP socket: the UDP payload, from `src` (VIP:434)
    /// to `dst` (the NAT mapping).
    Udp {
        /// The realm whose socket sends it.
        realm: RealmId,
        /// VIP and port.
        src: SocketAddrV4,
        /// The mobile node's mapping.
        dst: SocketAddrV4,
    },
}

/// A reusable arena of output packets.
#[derive(Debug, Default)]
pub struct Outputs {
    buf: Vec<u8>,
    items: Vec<(Dest, Range<usize>)>,
    /// A whole outer payload before it is cut into fragments.
    scratch: Vec<u8>,
}

impl Outputs {
    /// An empty arena.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the packets and keeps the memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }

    /// How many packets are queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The packets, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Dest, &[u8])> + '_ {
        self.items
            .iter()
            .filter_map(|(d, r)| Some((*d, self.buf.get(r.clone())?)))
    }

    /// The packets for the raw socket ([`Dest::Raw`]), in order, with
    /// their destinations.
    pub fn raw_packets(&self) -> RawPackets<'_> {
        RawPackets { out: self, next: 0 }
    }

    /// Appends a packet of at most `len` octets written by `f`, which
    /// returns the length written (`None`: nothing is queued). Returns
    /// whether a packet was queued.
    fn push_with(
        &mut self,
        dest: Dest,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> bool {
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        let written = self.buf.get_mut(start..).and_then(f);
        match written {
            Some(n) if n <= len => {
                self.buf.truncate(start + n);
                self.items.push((dest, start..start + n));
                true
            }
            _ => {
                self.buf.truncate(start);
                false
            }
        }
    }

    /// Where the arena ends now, for [`Outputs::rewind`].
    fn mark(&self) -> (usize, usize) {
        (self.buf.len(), self.items.len())
    }

    /// Forgets what was queued after `mark`.
    fn rewind(&mut self, (buf, items): (usize, usize)) {
        self.buf.truncate(buf);
        self.items.truncate(items);
    }
}

/// The iterator of [`Outputs::raw_packets`] (a named type, not a closure
/// chain, so the sending task's future stays `Send` across `.await`).
#[derive(Debug)]
pub struct RawPackets<'a> {
    out: &'a Outputs,
    next: usize,
}

impl<'a> Iterator for RawPackets<'a> {
    type Item = (Ipv4Addr, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while let Some((dest, range)) = self.out.items.get(self.next) {
            self.next += 1;
            if let Dest::Raw(a) = dest
                && let Some(b) = self.out.buf.get(range.clone())
            {
                return Some((*a, b));
            }
        }
        None
    }
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No live binding for the destination home address (or the address is
    /// in no realm's home prefix).
    NoBinding,
    /// Reverse direction: the inner source is not a home address bound to
    /// the outer source.
    Spoofed,
    /// Not a well-formed IPv4 packet or tunnel message.
    Malformed,
    /// Larger than the tunnel MTU with DF set (an ICMP error was sent),
    /// or too large to fragment (over 65535 octets encapsulated).
    Mtu,
    /// The inner TTL ran out [RFC 2003 § 3.1].
    Ttl,
}

impl DropReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoBinding => "no_binding",
            DropReason::Spoofed => "spoofed",
            DropReason::Malformed => "malformed",
            DropReason::Mtu => "mtu",
            DropReason::Ttl => "ttl",
        }
    }
}

/// What a reverse-direction packet was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reversed {
    /// Decapsulated; the inner packet is queued for the TUN device.
    Delivered,
    /// An RFC 3519 keepalive; the reply is queued.
    Keepalive,
}

/// The data plane's counters (monotonic).
#[derive(Debug, Default)]
pub struct Stats {
    forward_ipip: AtomicU64,
    forward_udp: AtomicU64,
    forward_fragmented: AtomicU64,
    reverse_ipip: AtomicU64,
    reverse_udp: AtomicU64,
    keepalives: AtomicU64,
    icmp_sent: AtomicU64,
    icmp_rate_limited: AtomicU64,
    drop_no_binding: AtomicU64,
    drop_spoofed: AtomicU64,
    drop_malformed: AtomicU64,
    drop_mtu: AtomicU64,
    drop_ttl: AtomicU64,
}

/// A copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Packets sent IP in IP to care-of addresses (copies).
    pub forward_ipip: u64,
    /// Packets sent UDP-tunnelled to NAT mappings (copies).
    pub forward_udp: u64,
    /// Of the copies above, those sent as outer fragments (DF clear,
    /// larger than the tunnel MTU [RFC 2003 § 5.1]).
    pub forward_fragmented: u64,
    /// IP-in-IP packets decapsulated to the home network.
    pub reverse_ipip: u64,
    /// UDP tunnel data decapsulated to the home network.
    pub reverse_udp: u64,
    /// Keepalives answered.
    pub keepalives: u64,
    /// ICMP errors sent.
    pub icmp_sent: u64,
    /// ICMP errors suppressed by the rate limit.
    pub icmp_rate_limited: u64,
    /// Drops: no binding.
    pub drop_no_binding: u64,
    /// Drops: spoofed inner source.
    pub drop_spoofed: u64,
    /// Drops: malformed.
    pub drop_malformed: u64,
    /// Drops: too big.
    pub drop_mtu: u64,
    /// Drops: TTL exceeded.
    pub drop_ttl: u64,
}

impl StatsSnapshot {
    /// Drops of one reason.
    pub fn drops(&self, r: DropReason) -> u64 {
        match r {
            DropReason::NoBinding => self.drop_no_binding,
            DropReason::Spoofed => self.drop_spoofed,
            DropReason::Malformed => self.drop_malformed,
            DropReason::Mtu => self.drop_mtu,
            DropReason::Ttl => self.drop_ttl,
        }
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// The current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            forward_ipip: g(&self.forward_ipip),
            forward_udp: g(&self.forward_udp),
            forward_fragmented: g(&self.forward_fragmented),
            reverse_ipip: g(&self.reverse_ipip),
            reverse_udp: g(&self.reverse_udp),
            keepalives: g(&self.keepalives),
            icmp_sent: g(&self.icmp_sent),
            icmp_rate_limited: g(&self.icmp_rate_limited),
            drop_no_binding: g(&self.drop_no_binding),
            drop_spoofed: g(&self.drop_spoofed),
            drop_malformed: g(&self.drop_malformed),
            drop_mtu: g(&self.drop_mtu),
            drop_ttl: g(&self.drop_ttl),
        }
    }

    fn drop(&self, r: DropReason) -> DropReason {
        inc(match r {
            DropReason::NoBinding => &self.drop_no_binding,
            DropReason::Spoofed => &self.drop_spoofed,
            DropReason::Malformed => &self.drop_malformed,
            DropReason::Mtu => &self.drop_mtu,
            DropReason::Ttl => &self.drop_ttl,
        });
        r
    }
}

/// A token bucket for ICMP errors, on the caller's clock.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Duration,
}

/// The IPv4 flags and fragment offset field [RFC 791 § 3.1].
const FLAGS_OFFSET: Range<usize> = 6..8;
/// More Fragments, in that field.
const FLAG_MF: u16 = 0x2000;

const ICMP_UNREACHABLE: u8 = 3;
const ICMP_CODE_HOST_UNREACHABLE: u8 = 1;
const ICMP_CODE_FRAG_NEEDED: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_HEADER_LEN: usize = 8;
/// Octets of the offending datagram's payload an ICMP error quotes
/// [RFC 792].
const ICMP_QUOTE: usize = 8;

/// The data plane core. See the module documentation.
#[derive(Debug)]
pub struct DataPlane {
    realms: Vec<RealmPlane>,
    table: Arc<BindingTable>,
    cfg: DataplaneConfig,
    stats: Stats,
    ident: AtomicU32,
    bucket: Mutex<Bucket>,
    /// Encap mode: UDP tunnel data leaves through the dispatcher, whole.
    udp_via_dispatcher: bool,
}

/// A decision for one care-of address of a binding.
enum Plan {
    IpIp(Ipv4Addr),
    Udp(SocketAddrV4),
    /// DF set and too big: the MTU the tunnel leaves.
    TooBig(usize),
}

impl DataPlane {
    /// A data plane for `realms`, reading `table`.
    pub fn new(realms: Vec<RealmPlane>, table: Arc<BindingTable>, cfg: DataplaneConfig) -> Self {
        let burst = f64::from(cfg.icmp_errors_per_sec.max(1));
        Self {
            realms,
            table,
            cfg,
            stats: Stats::default(),
            ident: AtomicU32::new(1),
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: Duration::ZERO,
            }),
            udp_via_dispatcher: false,
        }
    }

    /// Behind a dispatcher in encap mode (DESIGN.md § 5) UDP tunnel data
    /// leaves in `ToClient` frames, so the dispatcher re-emits it from
    /// VIP:434: an oversize non-DF packet then goes whole and the
    /// dispatcher's IP layer fragments the datagram, instead of the core
    /// fragmenting it for the raw socket (the fragments would leave from
    /// this node, where the mobile node's NAT has no mapping for them).
    pub fn udp_via_dispatcher(mut self, yes: bool) -> Self {
        self.udp_via_dispatcher = yes;
        self
    }

    /// The realms served.
    pub fn realms(&self) -> &[RealmPlane] {
        &self.realms
    }

    /// The configuration.
    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    fn next_ident(&self) -> u16 {
        // Identification only has to be unique per (src, dst, protocol)
        // for the time a fragment can live [RFC 791, RFC 6864]: a wrapping
        // counter does.
        (self.ident.fetch_add(1, Ordering::Relaxed) & 0xffff) as u16
    }

    fn realm_of_home(&self, a: Ipv4Addr) -> Option<&RealmPlane> {
        self.realms.iter().find(|r| r.prefix.contains(a))
    }

    /// Forwards a packet read from a TUN device (to a home address) to the
    /// care-of address(es) of its binding. Returns the number of copies
    /// queued in `out`, or why it was dropped (an ICMP error may still be
    /// queued).
    pub fn forward(
        &self,
        now: Duration,
        packet: &[u8],
        out: &mut Outputs,
    ) -> Result<usize, DropReason> {
        let st = &self.stats;
        let Ok(p) = Ipv4Packet::new_checked(packet) else {
            return Err(st.drop(DropReason::Malformed));
        };
        if p.version() != 4 {
            return Err(st.drop(DropReason::Malformed));
        }
        // Link-layer padding after Total Length is not part of the packet.
        let Some(pkt) = packet.get(..usize::from(p.total_len())) else {
            return Err(st.drop(DropReason::Malformed));
        };
        let dst = p.dst_addr();
        let Some(realm) = self.realm_of_home(dst).copied() else {
            return Err(st.drop(DropReason::NoBinding));
        };
        // [RFC 2003 § 3.1]: the encapsulator decrements the inner TTL as
        // any router does; at zero the packet is discarded with an ICMP
        // Time Exceeded to the source.
        if p.ttl() <= 1 {
            self.icmp_error(now, realm.vip, ICMP_TIME_EXCEEDED, 0, 0, pkt, out);
            return Err(st.drop(DropReason::Ttl));
        }
        let mtu = usize::from(self.cfg.tunnel_mtu);
        let df = p.dont_frag();
        let mut copies: [Option<Plan>; 8] = Default::default();
        let mut n = 0usize;
        let found = self.table.with(realm.id, dst, |e| {
            for c in e.care_of.iter().filter(|c| live(c, now)) {
                let (overhead, copy) = match c.encap {
                    Encap::IpInIp => (IPIP_OVERHEAD, Plan::IpIp(c.coa)),
                    Encap::Udp { nat } => (UDP_OVERHEAD, Plan::Udp(nat)),
                };
                // [RFC 2003 § 5.1]: only DF stops an oversize packet; without
                // it the outer datagram is fragmented below.
                let copy = if df && pkt.len() + overhead > mtu {
                    Plan::TooBig(mtu.saturating_sub(overhead))
                } else {
                    copy
                };
                if let Some(slot) = copies.get_mut(n) {
                    *slot = Some(copy);
                    n += 1;
                }
            }
        });
        if found.is_none() || n == 0 {
            if self.cfg.icmp_unreachable {
                self.icmp_error(
                    now,
                    realm.vip,
                    ICMP_UNREACHABLE,
                    ICMP_CODE_HOST_UNREACHABLE,
                    0,
                    pkt,
                    out,
                );
            }
            return Err(st.drop(DropReason::NoBinding));
        }
        let mut sent = 0;
        let mut too_big = None;
        for copy in copies.iter().flatten() {
            match *copy {
                Plan::IpIp(coa) => {
                    let outer = Ipv4Repr {
                        src: realm.vip,
                        dst: coa,
                        protocol: protocol::IPIP,
                        ttl: OUTER_TTL,
                        tos: p.tos(),
                        df,
                        ident: self.next_ident(),
                        payload_len: pkt.len(),
                    };
                    let fits = IPIP_OVERHEAD + pkt.len() <= mtu;
                    let queued = if fits {
                        out.push_with(Dest::Raw(coa), IPIP_OVERHEAD + pkt.len(), |b| {
                            let (h, inner) = b.split_at_mut_checked(IPV4_HEADER_LEN)?;
                            outer.emit(&mut Ipv4Packet::new_unchecked(h)).ok()?;
                            copy_decremented(inner, pkt)?;
                            Some(b.len())
                        })
                    } else {
                        self.push_fragments(out, outer, mtu, |b| copy_decremented(b, pkt))
                    };
                    if queued {
                        inc(&st.forward_ipip);
                        if !fits {
                            inc(&st.forward_fragmented);
                        }
                        sent += 1;
                    } else {
                        st.drop(DropReason::Mtu);
                    }
                }
                Plan::Udp(nat) => {
                    let fits = UDP_OVERHEAD + pkt.len() <= mtu;
                    let queued = if fits || self.udp_via_dispatcher {
                        let dest = Dest::Udp {
                            realm: realm.id,
                            src: SocketAddrV4::new(realm.vip, realm.port),
                            dst: nat,
                        };
                        out.push_with(dest, udptun::HEADER_LEN + pkt.len(), |b| {
                            let (h, inner) = b.split_at_mut_checked(udptun::HEADER_LEN)?;
                            TunnelDataPacket::new_unchecked(h).set_header(NextHeader::IpIp);
                            copy_decremented(inner, pkt)?;
                            Some(b.len())
                        })
                    } else {
                        // The UDP datagram VIP:434 → mapping, cut into IP
                        // fragments (module docs, "Fragmentation").
                        let udp_len = UDP_HEADER_LEN + udptun::HEADER_LEN + pkt.len();
                        let outer = Ipv4Repr {
                            src: realm.vip,
                            dst: *nat.ip(),
                            protocol: protocol::UDP,
                            ttl: OUTER_TTL,
                            tos: p.tos(),
                            df: false,
                            ident: self.next_ident(),
                            payload_len: udp_len,
                        };
                        self.push_fragments(out, outer, mtu, |b| {
                            let len = u16::try_from(udp_len).ok()?;
                            let mut u = ip::UdpPacket::new_unchecked(&mut *b);
                            u.set_src_port(realm.port);
                            u.set_dst_port(nat.port());
                            u.set_len(len);
                            let (h, inner) =
                                u.payload_mut().split_at_mut_checked(udptun::HEADER_LEN)?;
                            TunnelDataPacket::new_unchecked(h).set_header(NextHeader::IpIp);
                            copy_decremented(inner, pkt)?;
                            ip::UdpPacket::new_unchecked(b).fill_checksum(realm.vip, *nat.ip());
                            Some(())
                        })
                    };
                    if queued {
                        inc(&st.forward_udp);
                        // Behind a dispatcher its IP layer fragments.
                        if !fits {
                            inc(&st.forward_fragmented);
                        }
                        sent += 1;
                    } else {
                        st.drop(DropReason::Mtu);
                    }
                }
                Plan::TooBig(left) => too_big = Some(too_big.map_or(left, |m: usize| m.min(left))),
            }
        }
        if let Some(left) = too_big {
            // [RFC 2003 § 5.1, RFC 1191 § 4]: DF set (only DF makes a
            // `TooBig`): tell the source the MTU the tunnel leaves.
            let mtu = u16::try_from(left).unwrap_or(u16::MAX);
            self.icmp_error(
                now,
                realm.vip,
                ICMP_UNREACHABLE,
                ICMP_CODE_FRAG_NEEDED,
                mtu,
                pkt,
                out,
            );
            st.drop(DropReason::Mtu);
            if sent == 0 {
                return Err(DropReason::Mtu);
            }
        }
        if sent == 0 {
            return Err(DropReason::Mtu);
        }
        Ok(sent)
    }

    /// Handles an IP-in-IP packet (the whole outer IPv4 packet, as a raw
    /// socket delivers it) tunnelled to a VIP [RFC 2003, RFC 3024].
    pub fn reverse_ipip(
        &self,
        now: Duration,
        packet: &[u8],
        out: &mut Outputs,
    ) -> Result<Reversed, DropReason> {
        let st = &self.stats;
        let outer = Ipv4Packet::new_checked(packet).map_err(|_| st.drop(DropReason::Malformed))?;
        let repr = Ipv4Repr::parse(&outer).map_err(|_| st.drop(DropReason::Malformed))?;
        if repr.protocol != protocol::IPIP || !self.realms.iter().any(|r| r.vip == repr.dst) {
            return Err(st.drop(DropReason::Malformed));
        }
        let (realm, inner) = self.inner_checked(repr.dst, outer.payload())?;
        let ok = self
            .table
            .with(realm, inner.src_addr(), |e| {
                e.care_of
                    .iter()
                    .any(|c| live(c, now) && c.encap == Encap::IpInIp && c.coa == repr.src)
            })
            .unwrap_or(false);
        if !ok {
            return Err(st.drop(DropReason::Spoofed));
        }
        let bytes = inner.into_inner();
        out.push_with(Dest::Tun(realm), bytes.len(), |b| {
            b.copy_from_slice(bytes);
            Some(b.len())
        });
        inc(&st.reverse_ipip);
        Ok(Reversed::Delivered)
    }

    /// Handles RFC 3519 tunnel data received on a realm's UDP socket: `src`
    /// is the sender as seen (the NAT mapping), `dst` the VIP and port it
    /// was sent to, `payload` the UDP payload (first octet 4).
    pub fn reverse_udp(
        &self,
        now: Duration,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
        out: &mut Outputs,
    ) -> Result<Reversed, DropReason> {
        let st = &self.stats;
        let msg = TunnelDataPacket::new_checked(payload)
            .ok()
            .and_then(|p| TunnelDataRepr::parse(&p).ok())
            .ok_or_else(|| st.drop(DropReason::Malformed))?;
        if msg.next_header != NextHeader::IpIp {
            return Err(st.drop(DropReason::Malformed));
        }
        let (realm, inner) = self.inner_checked(*dst.ip(), msg.payload)?;
        let hoa = inner.src_addr();
        let bound = self
            .table
            .with(realm, hoa, |e| {
                e.care_of
                    .iter()
                    .any(|c| live(c, now) && c.encap == Encap::Udp { nat: src })
            })
            .unwrap_or(false);
        if !bound {
            return Err(st.drop(DropReason::Spoofed));
        }
        // A keepalive: an echo request to the VIP itself [RFC 3519 § 3.9].
        if inner.protocol() == protocol::ICMP && inner.dst_addr() == *dst.ip() {
            let Ok(req) = udptun::parse_keepalive(payload) else {
                return Err(st.drop(DropReason::Malformed));
            };
            if !req.is_request {
                return Err(st.drop(DropReason::Malformed));
            }
            let dest = Dest::Udp {
                realm,
                src: dst,
                dst: src,
            };
            out.push_with(dest, req.buffer_len(), |b| {
                udptun::build_keepalive_reply(b, &req).ok()
            });
            inc(&st.keepalives);
            return Ok(Reversed::Keepalive);
        }
        let bytes = inner.into_inner();
        out.push_with(Dest::Tun(realm), bytes.len(), |b| {
            b.copy_from_slice(bytes);
            Some(b.len())
        });
        inc(&st.reverse_udp);
        Ok(Reversed::Delivered)
    }

    /// Validates a decapsulated inner packet sent to `vip`: IPv4, lengths
    /// consistent, source inside the home prefix of a realm at that VIP.
    /// Returns the realm and the inner packet trimmed to its Total Length.
    fn inner_checked<'a>(
        &self,
        vip: Ipv4Addr,
        bytes: &'a [u8],
    ) -> Result<(RealmId, Ipv4Packet<&'a [u8]>), DropReason> {
        let st = &self.stats;
        let p = Ipv4Packet::new_checked(bytes).map_err(|_| st.drop(DropReason::Malformed))?;
        if p.version() != 4 || !p.verify_checksum() {
            return Err(st.drop(DropReason::Malformed));
        }
        let trimmed = bytes
            .get(..usize::from(p.total_len()))
            .ok_or_else(|| st.drop(DropReason::Malformed))?;
        let src = p.src_addr();
        let realm = self
            .realms
            .iter()
            .find(|r| r.vip == vip && r.prefix.contains(src))
            .ok_or_else(|| st.drop(DropReason::Spoofed))?;
        Ok((realm.id, Ipv4Packet::new_unchecked(trimmed)))
    }

    /// Queues the datagram `outer` (its header fields; `payload_len` octets
    /// of payload written by `fill`) as IPv4 fragments of at most `mtu`
    /// octets to the raw socket [RFC 791 § 2.3, § 3.2]: each carries a
    /// copy of the header with DF clear, MF on all but the last, and a
    /// multiple of 8 payload octets but the last. All or nothing: returns
    /// false (and queues none) when the datagram cannot be fragmented (over
    /// 65535 octets, an MTU below 28).
    fn push_fragments(
        &self,
        out: &mut Outputs,
        outer: Ipv4Repr,
        mtu: usize,
        fill: impl FnOnce(&mut [u8]) -> Option<()>,
    ) -> bool {
        let per = mtu.saturating_sub(IPV4_HEADER_LEN) & !7;
        if per == 0 || IPV4_HEADER_LEN + outer.payload_len > usize::from(u16::MAX) {
            return false;
        }
        // The whole payload is written once into the arena's scratch
        // buffer (kept between packets), then copied piece by piece.
        let mut whole = std::mem::take(&mut out.scratch);
        whole.clear();
        whole.resize(outer.payload_len, 0);
        let mark = out.mark();
        let mut ok = fill(&mut whole).is_some();
        let last = whole.len().div_ceil(per).saturating_sub(1);
        for (i, piece) in whole.chunks(per).enumerate() {
            if !ok {
                break;
            }
            // i * per < 65535, so the offset fits its 13 bits.
            let Ok(units) = u16::try_from(i * per / 8) else {
                ok = false;
                break;
            };
            let flags = if i < last { FLAG_MF | units } else { units };
            ok = out.push_with(Dest::Raw(outer.dst), IPV4_HEADER_LEN + piece.len(), |b| {
                let (h, data) = b.split_at_mut_checked(IPV4_HEADER_LEN)?;
                Ipv4Repr {
                    df: false,
                    payload_len: piece.len(),
                    ..outer
                }
                .emit(&mut Ipv4Packet::new_unchecked(&mut *h))
                .ok()?;
                // Ipv4Repr writes unfragmented headers only: set flags and
                // offset here and checksum again.
                h.get_mut(FLAGS_OFFSET)?
                    .copy_from_slice(&flags.to_be_bytes());
                Ipv4Packet::new_unchecked(h).fill_checksum();
                data.copy_from_slice(piece);
                Some(b.len())
            });
        }
        out.scratch = whole;
        if !ok {
            out.rewind(mark);
        }
        ok
    }

    /// Queues an ICMP error about `orig` to its source, from `vip`, unless
    /// RFC 1122 § 3.2.2 forbids one (about an ICMP error, a non-first
    /// fragment, a non-unicast source) or the rate limit says no.
    #[allow(clippy::too_many_arguments)]
    fn icmp_error(
        &self,
        now: Duration,
        vip: Ipv4Addr,
        ty: u8,
        code: u8,
        next_hop_mtu: u16,
        orig: &[u8],
        out: &mut Outputs,
    ) {
        let p = Ipv4Packet::new_unchecked(orig);
        let src = p.src_addr();
        let hl = p.header_len();
        if p.frag_offset() != 0
            || src.is_unspecified()
            || src.is_broadcast()
            || src.is_multicast()
            || src.is_loopback()
        {
            return;
        }
        if p.protocol() == protocol::ICMP {
            // Only echo (0, 8) and other queries may be answered with an
            // error; never an error about an error.
            let t = orig.get(hl).copied().unwrap_or(0);
            if matches!(t, 3 | 4 | 5 | 11 | 12) {
                return;
            }
        }
        if !self.take_token(now) {
            inc(&self.stats.icmp_rate_limited);
            return;
        }
        let quote = orig.get(..hl + ICMP_QUOTE).unwrap_or(orig);
        let icmp_len = ICMP_HEADER_LEN + quote.len();
        let ident = self.next_ident();
        out.push_with(Dest::Raw(src), IPV4_HEADER_LEN + icmp_len, |b| {
            let (h, icmp) = b.split_at_mut_checked(IPV4_HEADER_LEN)?;
            Ipv4Repr {
                src: vip,
                dst: src,
                protocol: protocol::ICMP,
                ttl: OUTER_TTL,
                tos: 0,
                df: false,
                ident,
                payload_len: icmp_len,
            }
            .emit(&mut Ipv4Packet::new_unchecked(h))
            .ok()?;
            let (ih, data) = icmp.split_at_mut_checked(ICMP_HEADER_LEN)?;
            let [mh, ml] = next_hop_mtu.to_be_bytes();
            // [RFC 1191 § 4]: the next-hop MTU sits in the low 16 bits of
            // the otherwise unused word.
            ih.copy_from_slice(&[ty, code, 0, 0, 0, 0, mh, ml]);
            data.copy_from_slice(quote);
            let c = ip::checksum::checksum(icmp);
            icmp.get_mut(2..4)?.copy_from_slice(&c.to_be_bytes());
            Some(b.len())
        });
        inc(&self.stats.icmp_sent);
    }

    fn take_token(&self, now: Duration) -> bool {
        let rate = f64::from(self.cfg.icmp_errors_per_sec);
        if rate <= 0.0 {
            return false;
        }
        let Ok(mut b) = self.bucket.lock() else {
            return false;
        };
        let elapsed = now.saturating_sub(b.last).as_secs_f64();
        b.last = b.last.max(now);
        b.tokens = (b.tokens + elapsed * rate).min(rate.max(1.0));
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether a care-of address is still bound at `now`.
fn live(c: &CareOf, now: Duration) -> bool {
    c.expires_at() > now
}

/// Copies `pkt` into `dst` (same length) with its TTL decremented and its
/// header checksum recomputed.
fn copy_decremented(dst: &mut [u8], pkt: &[u8]) -> Option<()> {
    if dst.len() != pkt.len() {
        return None;
    }
    dst.copy_from_slice(pkt);
    let mut p = Ipv4Packet::new_unchecked(dst);
    let ttl = p.ttl().saturating_sub(1);
    p.set_ttl(ttl);
    p.fill_checksum();
    Some(())
}

#[cfg(test)]
mod tests;
