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
//!   [RFC 2003 § 5.1, RFC 1191].
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
    /// `"havtun"`. At most 13 characters (IFNAMSIZ).
    pub tun_name: String,
    /// MTU of the path to care-of addresses (outer packets), octets.
    /// Default 1500. The TUN device gets this minus the largest tunnel
    /// overhead (32, UDP), so the kernel fragments or refuses before us.
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

    /// Appends a packet of at most `len` octets written by `f`, which
    /// returns the length written (`None`: nothing is queued).
    fn push_with(&mut self, dest: Dest, len: usize, f: impl FnOnce(&mut [u8]) -> Option<usize>) {
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        let written = self.buf.get_mut(start..).and_then(f);
        match written {
            Some(n) if n <= len => {
                self.buf.truncate(start + n);
                self.items.push((dest, start..start + n));
            }
            _ => self.buf.truncate(start),
        }
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
    /// Larger than the tunnel MTU (with DF: an ICMP error was sent).
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
}

/// A decision for one care-of address of a binding.
enum Plan {
    IpIp(Ipv4Addr),
    Udp(SocketAddrV4),
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
        }
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
                let copy = if pkt.len() + overhead > mtu {
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
                    let ident = self.next_ident();
                    out.push_with(Dest::Raw(coa), IPIP_OVERHEAD + pkt.len(), |b| {
                        let (outer, inner) = b.split_at_mut_checked(IPV4_HEADER_LEN)?;
                        Ipv4Repr {
                            src: realm.vip,
                            dst: coa,
                            protocol: protocol::IPIP,
                            ttl: OUTER_TTL,
                            tos: p.tos(),
                            df,
                            ident,
                            payload_len: pkt.len(),
                        }
                        .emit(&mut Ipv4Packet::new_unchecked(outer))
                        .ok()?;
                        copy_decremented(inner, pkt)?;
                        Some(b.len())
                    });
                    inc(&st.forward_ipip);
                    sent += 1;
                }
                Plan::Udp(nat) => {
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
                    });
                    inc(&st.forward_udp);
                    sent += 1;
                }
                Plan::TooBig(left) => too_big = Some(too_big.map_or(left, |m: usize| m.min(left))),
            }
        }
        if let Some(left) = too_big {
            // [RFC 2003 § 5.1]: with DF, tell the source the MTU the tunnel
            // leaves; without it, the packet cannot be sent whole (the raw
            // socket does not fragment) and the TUN MTU should have stopped
            // it earlier.
            if df {
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
            }
            st.drop(DropReason::Mtu);
            if sent == 0 {
                return Err(DropReason::Mtu);
            }
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
