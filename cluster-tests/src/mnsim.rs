//! # mnsim: thousands of lightweight mobile nodes from one process
//!
//! DESIGN.md §8 ("lightweight" mobile nodes) and §9 (registration
//! throughput, failover gap from the MN's view): this module drives many
//! [`MobileNode`] cores against a home agent (or a dispatcher's VIP) and
//! records what each one saw.
//!
//! Shape:
//! * every mobile node owns a UDP socket with its own source port, because
//!   the dispatcher hashes on (source IP, source port) and RFC 3519 data must
//!   leave from the port the registration used [RFC 3519 § 3.3];
//! * one thread runs everything: an `epoll` set over all sockets (readiness
//!   per socket, so a wake-up costs O(ready), not O(mobile nodes)) and a
//!   timer heap holding each core's [`MobileNode::poll_timeout`], start
//!   times (a configured rate with seeded jitter), keepalives
//!   [RFC 3519 § 3.9], data packets and moves;
//! * a run is bounded: by [`SimConfig::duration`], or, without one, by every
//!   mobile node having settled its registration (and its move); then every
//!   registered mobile node deregisters (lifetime 0);
//! * output: a JSON-lines timeline (one object per event), an optional pcap
//!   of what was sent and received (UDP payloads wrapped in IPv4/UDP headers
//!   by [`haven_proto::ip`]), and a [`Summary`].
//!
//! [`DataSink`] is the other end of the data streams: a correspondent node
//! that receives the inner UDP packets after the home agent decapsulated
//! them, and records per-flow loss and the largest gap between arrivals
//! (the failover gap of DESIGN.md §9, seen on the data path).

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haven_proto::ip;
use haven_proto::mip::auth::Algorithm;
use haven_proto::pcap::PcapWriter;
use haven_proto::udptun::{self, Kind};
use serde::Serialize;

use crate::mn::{Event, MnConfig, MobileNode, ReplayMode, SplitMix64, State};

/// How mobile nodes get their home addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeMode {
    /// Fixed home addresses: mobile node `i` has `base + i`.
    Static {
        /// The first home address.
        base: Ipv4Addr,
    },
    /// Dynamic allocation from the home agent's pool [RFC 2794]: home
    /// address 0.0.0.0 and an MN-NAI made from `pattern`, where `{i}` is
    /// replaced by the mobile node's index.
    Nai {
        /// E.g. `mn{i}@example.com`.
        pattern: String,
    },
}

/// The data stream each mobile node sends once UDP tunnelling is up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataConfig {
    /// The correspondent node (inner destination; a [`DataSink`]).
    pub correspondent: SocketAddrV4,
    /// Packets per second per mobile node.
    pub rate: f64,
    /// Inner UDP payload size (at least [`DATA_HEADER_LEN`]).
    pub payload_len: usize,
    /// The id of mobile node 0 in the payloads (mobile node *i* sends
    /// `first_id + i`): fleets sharing a correspondent use disjoint ranges,
    /// so it tells their flows apart by mobile node, not by home address
    /// (an NAI mobile node whose binding lapsed may come back from another
    /// pool address, RFC 2794).
    pub first_id: u32,
}

/// A simulation run's configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The home agent (the VIP) and its port.
    pub home_agent: SocketAddrV4,
    /// Number of mobile nodes.
    pub count: usize,
    /// Mobile nodes started per second (0 or less: all at once).
    pub rate: f64,
    /// Start-time jitter as a fraction of the start interval (0..=1).
    pub jitter: f64,
    /// Seed of the jitter and of nonces.
    pub seed: u64,
    /// Home addresses.
    pub home: HomeMode,
    /// MN-HA SPI (the same for all mobile nodes).
    pub spi: u32,
    /// MN-HA key.
    pub key: Vec<u8>,
    /// Authenticator algorithm.
    pub algorithm: Algorithm,
    /// Requested lifetime (s).
    pub lifetime: u16,
    /// T flag.
    pub reverse_tunnel: bool,
    /// S flag.
    pub simultaneous: bool,
    /// D flag (co-located care-of address).
    pub colocated: bool,
    /// Send a UDP Tunnel Request [RFC 3519 § 3.1].
    pub udp_tunnel: bool,
    /// Its F bit.
    pub force_udp_tunnel: bool,
    /// Timestamps or nonces.
    pub replay: ReplayMode,
    /// First retransmission timeout.
    pub initial_timeout: Duration,
    /// Retransmission timeout cap.
    pub max_timeout: Duration,
    /// Transmissions before giving up.
    pub max_attempts: u32,
    /// Local addresses; mobile node `i` binds `bind[i % len]` (port 0) and
    /// uses it as its care-of address.
    pub bind: Vec<Ipv4Addr>,
    /// Each mobile node moves this long after its start: a new socket on
    /// the next bind address (a new source port at least), re-registered.
    pub move_after: Option<Duration>,
    /// Run this long, then deregister; `None`: until everything settled.
    pub duration: Option<Duration>,
    /// Deregister every registered mobile node at the end.
    pub deregister: bool,
    /// Data streams.
    pub data: Option<DataConfig>,
    /// JSON-lines timeline file.
    pub timeline: Option<PathBuf>,
    /// pcap file of everything sent and received.
    pub pcap: Option<PathBuf>,
}

impl SimConfig {
    /// Defaults: 1 mobile node, 100/s with 10 % jitter, home addresses from
    /// 198.18.0.1, SPI 256, HMAC-MD5, lifetime 300 s, bound to 127.0.0.1,
    /// RFC 5944 § 3.6.3 timers (1 s doubling to 32 s, 5 tries).
    pub fn new(home_agent: SocketAddrV4, key: impl Into<Vec<u8>>) -> Self {
        SimConfig {
            home_agent,
            count: 1,
            rate: 100.0,
            jitter: 0.1,
            seed: 1,
            home: HomeMode::Static {
                base: Ipv4Addr::new(198, 18, 0, 1),
            },
            spi: 256,
            key: key.into(),
            algorithm: Algorithm::HmacMd5,
            lifetime: 300,
            reverse_tunnel: false,
            simultaneous: false,
            colocated: true,
            udp_tunnel: false,
            force_udp_tunnel: false,
            replay: ReplayMode::Timestamp,
            initial_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(32),
            max_attempts: 5,
            bind: vec![Ipv4Addr::LOCALHOST],
            move_after: None,
            duration: None,
            deregister: true,
            data: None,
            timeline: None,
            pcap: None,
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// A sentence naming the bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: &str| Err(ConfigError(s.to_owned()));
        if self.count == 0 {
            return bad("count must be at least 1");
        }
        if self.bind.is_empty() {
            return bad("at least one bind address is needed");
        }
        if self.lifetime == 0 {
            return bad("lifetime 0 is a deregistration; request at least 1 s");
        }
        if self.max_attempts == 0 {
            return bad("max attempts must be at least 1");
        }
        if self.initial_timeout.is_zero() {
            return bad("initial timeout must be positive");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("jitter must lie in 0..=1");
        }
        if !self.rate.is_finite() {
            return bad("rate must be finite");
        }
        match &self.home {
            HomeMode::Static { base } => {
                let last = u64::from(u32::from(*base)) + self.count as u64 - 1;
                if last > u64::from(u32::MAX) {
                    return bad("static home addresses overflow the address space");
                }
            }
            HomeMode::Nai { pattern } => {
                if pattern.is_empty() || pattern.len() > 200 {
                    return bad("the NAI pattern must be 1..=200 bytes");
                }
            }
        }
        if let Some(d) = &self.data {
            if !(d.rate.is_finite() && d.rate > 0.0) {
                return bad("data rate must be positive");
            }
            if d.payload_len < DATA_HEADER_LEN || d.payload_len > 1400 {
                return bad("data payload size must lie in 24..=1400");
            }
            if !self.udp_tunnel {
                return bad("data streams need UDP tunnelling (--udp-tunnel)");
            }
        }
        Ok(())
    }

    fn mn_config(&self, i: usize, coa: Ipv4Addr) -> MnConfig {
        let (hoa, nai) = match &self.home {
            HomeMode::Static { base } => (
                Ipv4Addr::from(u32::from(*base).wrapping_add(i as u32)),
                None,
            ),
            HomeMode::Nai { pattern } => (
                Ipv4Addr::UNSPECIFIED,
                Some(pattern.replace("{i}", &i.to_string()).into_bytes()),
            ),
        };
        let mut c = MnConfig::new(hoa, *self.home_agent.ip(), coa, self.spi, self.key.clone());
        c.nai = nai;
        c.home_agent_port = self.home_agent.port();
        c.algorithm = self.algorithm;
        c.lifetime = self.lifetime;
        c.reverse_tunnel = self.reverse_tunnel;
        c.simultaneous = self.simultaneous;
        c.colocated = self.colocated;
        c.udp_tunnel = self.udp_tunnel;
        c.force_udp_tunnel = self.force_udp_tunnel;
        c.replay = self.replay;
        c.initial_timeout = self.initial_timeout;
        c.max_timeout = self.max_timeout;
        c.max_attempts = self.max_attempts;
        c.nonce_seed = self.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        c
    }

    fn bind_for(&self, i: usize) -> Ipv4Addr {
        let n = self.bind.len().max(1);
        self.bind.get(i % n).copied().unwrap_or(Ipv4Addr::LOCALHOST)
    }
}

/// A configuration that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mnsim configuration: {0}")]
pub struct ConfigError(pub String);

/// What a run can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket, epoll or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SimError {
    let what = what.into();
    move |source| SimError::Io { what, source }
}

/// Registration latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// The counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Mobile nodes simulated.
    pub count: usize,
    /// Mobile nodes with at least one accepted registration.
    pub registered: u64,
    /// Accepted registrations, re-registrations and moves included.
    pub accepted: u64,
    /// Denials by reply code.
    pub denied: BTreeMap<u8, u64>,
    /// All denials.
    pub denied_total: u64,
    /// Registrations given up (no valid reply after every try).
    pub gave_up: u64,
    /// Requests sent, retransmissions included.
    pub sent: u64,
    /// Retransmissions (attempt > 1).
    pub retransmissions: u64,
    /// Accepted deregistrations.
    pub deregistered: u64,
    /// Moves made.
    pub moves: u64,
    /// RFC 3519 keepalives sent.
    pub keepalives_sent: u64,
    /// Keepalive echo replies received.
    pub keepalive_replies: u64,
    /// Tunnelled data packets sent.
    pub data_sent: u64,
    /// Tunnel data received from the home agent (other than keepalives).
    pub tunnel_data_received: u64,
    /// Datagrams the cores discarded (bad authenticator, wrong id...).
    pub discarded: u64,
    /// Sends the kernel refused.
    pub send_errors: u64,
    /// Events written to the timeline (one line each).
    pub events: u64,
    /// Latency of accepted registrations, first transmission to reply.
    pub latency_ms: Latency,
    /// Accepted registrations per second, first request to last acceptance.
    pub reg_per_sec: f64,
    /// Wall time of the run (s).
    pub elapsed_s: f64,
}

impl Summary {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| s.push_str(&format!("{k:<24} {v}\n"));
        row("mobile nodes", self.count.to_string());
        row("registered", self.registered.to_string());
        row("accepted (total)", self.accepted.to_string());
        row("denied", self.denied_total.to_string());
        for (code, n) in &self.denied {
            row(&format!("  code {code}"), n.to_string());
        }
        row("gave up", self.gave_up.to_string());
        row("requests sent", self.sent.to_string());
        row("retransmissions", self.retransmissions.to_string());
        row("deregistered", self.deregistered.to_string());
        row("moves", self.moves.to_string());
        row(
            "keepalives sent/replied",
            format!("{}/{}", self.keepalives_sent, self.keepalive_replies),
        );
        row("data packets sent", self.data_sent.to_string());
        row("discarded replies", self.discarded.to_string());
        row("send errors", self.send_errors.to_string());
        let l = &self.latency_ms;
        row(
            "latency ms p50/p99/p999",
            format!("{:.2}/{:.2}/{:.2} (max {:.2})", l.p50, l.p99, l.p999, l.max),
        );
        row("registrations/s", format!("{:.1}", self.reg_per_sec));
        row("elapsed s", format!("{:.3}", self.elapsed_s));
        s
    }
}

/// One mobile node's state at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MnOutcome {
    /// Index.
    pub mn: usize,
    /// The last socket address it used (its registration source).
    pub source: SocketAddrV4,
    /// Home address (allocated one in NAI mode; 0.0.0.0 if none).
    pub home_address: Ipv4Addr,
    /// The care-of address last registered.
    pub care_of_address: Ipv4Addr,
    /// Accepted registrations.
    pub accepted: u32,
    /// The binding the home agent acknowledged last, before the
    /// end-of-run deregistration: (home address, care-of address).
    pub acknowledged: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The last reply code received.
    pub last_code: Option<u8>,
    /// Whether the deregistration at the end was accepted.
    pub deregistered: bool,
}

/// A run's result.
#[derive(Debug, Clone)]
pub struct Report {
    /// The counts.
    pub summary: Summary,
    /// Per mobile node.
    pub mns: Vec<MnOutcome>,
}

/// The wall clock as the cores want it.
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Raises the soft limit of open files towards `want` (at most the hard
/// limit); returns the soft limit now in force.
pub fn raise_fd_limit(want: u64) -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if r.rlim_cur >= want as libc::rlim_t {
        return Ok(r.rlim_cur);
    }
    r.rlim_cur = (want as libc::rlim_t).min(r.rlim_max);
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r.rlim_cur)
}

/// A level-triggered epoll set; the token is the mobile node's index.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both fds are open; ev lives across the call. A closed fd
        // leaves the set by itself, so there is no matching remove.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: the kernel writes at most `max` entries into `events`.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Start,
    Core,
    Keepalive,
    Data,
    Move,
}

/// A timer heap entry (min-heap through `Reverse` ordering below).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Duration,
    mn: usize,
    kind: TimerKind,
}

#[derive(Debug)]
struct SimMn {
    core: MobileNode,
    sock: Option<UdpSocket>,
    local: SocketAddrV4,
    armed: Option<Duration>,
    busy: bool,
    started: bool,
    moved: bool,
    ka_armed: bool,
    data_armed: bool,
    ka_seq: u16,
    data_seq: u64,
    keepalive: Option<Duration>,
    accepted: u32,
    acknowledged: Option<(Ipv4Addr, Ipv4Addr)>,
    last_code: Option<u8>,
    deregistered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Deregistering,
}

/// Bytes at the start of every data payload: magic "HVD1", mobile node
/// index u32, sequence u64, send time in ns since the Unix epoch u64.
pub const DATA_HEADER_LEN: usize = 24;
const DATA_MAGIC: &[u8; 4] = b"HVD1";
/// Inner UDP source port of data packets.
pub const DATA_SRC_PORT: u16 = 4343;

/// Builds a data payload (see [`DATA_HEADER_LEN`]) padded to `len`.
pub fn data_payload(mn: u32, seq: u64, sent: Duration, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(DATA_HEADER_LEN));
    p.extend_from_slice(DATA_MAGIC);
    p.extend_from_slice(&mn.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    let ns = u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX);
    p.extend_from_slice(&ns.to_be_bytes());
    p.resize(len.max(DATA_HEADER_LEN), 0);
    p
}

/// Parses a data payload: (mobile node, sequence, send time).
pub fn parse_data_payload(p: &[u8]) -> Option<(u32, u64, Duration)> {
    let (magic, rest) = p.split_first_chunk::<4>()?;
    if magic != DATA_MAGIC {
        return None;
    }
    let (mn, rest) = rest.split_first_chunk::<4>()?;
    let (seq, rest) = rest.split_first_chunk::<8>()?;
    let (ns, _) = rest.split_first_chunk::<8>()?;
    Some((
        u32::from_be_bytes(*mn),
        u64::from_be_bytes(*seq),
        Duration::from_nanos(u64::from_be_bytes(*ns)),
    ))
}

#[derive(Serialize)]
struct TimelineLine {
    t: f64,
    mn: usize,
    event: &'static str,
    code: Option<u8>,
    latency_ms: Option<f64>,
    attempt: Option<u32>,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    stop: &'a AtomicBool,
    ep: Epoll,
    mns: Vec<SimMn>,
    heap: BinaryHeap<std::cmp::Reverse<Timer>>,
    t0: Duration,
    summary: Summary,
    latencies: Vec<Duration>,
    first_sent: Option<Duration>,
    last_accept: Option<Duration>,
    busy: usize,
    started: usize,
    moved: usize,
    timeline: Option<BufWriter<File>>,
    pcap: Option<PcapWriter<BufWriter<File>>>,
    buf: Vec<u8>,
}

impl Sim<'_> {
    fn push(&mut self, at: Duration, mn: usize, kind: TimerKind) {
        self.heap.push(std::cmp::Reverse(Timer { at, mn, kind }));
    }

    fn open_socket(&self, i: usize, addr: Ipv4Addr) -> Result<(UdpSocket, SocketAddrV4), SimError> {
        let s = UdpSocket::bind(SocketAddrV4::new(addr, 0))
            .map_err(io_err(format!("bind {addr}:0 for mobile node {i}")))?;
        s.set_nonblocking(true).map_err(io_err("set_nonblocking"))?;
        let local = match s.local_addr().map_err(io_err("local_addr"))? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => SocketAddrV4::new(addr, 0),
        };
        self.ep
            .add(s.as_raw_fd(), i as u64)
            .map_err(io_err("epoll_ctl"))?;
        Ok((s, local))
    }

    fn capture(&mut self, now: Duration, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        let Some(w) = self.pcap.as_mut() else { return };
        let mut frame = vec![0u8; ip::ipv4_udp_len(payload.len())];
        let n = ip::write_ipv4_udp(&mut frame, src, dst, payload);
        if let Some(f) = frame.get(..n).filter(|f| !f.is_empty()) {
            // A capture that cannot be written is not worth stopping a run.
            let _ = w.write_packet(now, f);
        }
    }

    fn send(&mut self, now: Duration, i: usize, dst: SocketAddrV4, payload: &[u8]) -> bool {
        let Some(m) = self.mns.get(i) else {
            return false;
        };
        let Some(sock) = m.sock.as_ref() else {
            return false;
        };
        let local = m.local;
        match sock.send_to(payload, dst) {
            Ok(_) => {
                self.capture(now, local, dst, payload);
                true
            }
            Err(e) => {
                tracing::debug!(mn = i, %dst, "send: {e}");
                self.summary.send_errors += 1;
                false
            }
        }
    }

    fn record(
        &mut self,
        now: Duration,
        i: usize,
        event: &'static str,
        code: Option<u8>,
        latency: Option<Duration>,
        attempt: Option<u32>,
    ) {
        self.summary.events += 1;
        let Some(w) = self.timeline.as_mut() else {
            return;
        };
        let line = TimelineLine {
            t: now.saturating_sub(self.t0).as_secs_f64(),
            mn: i,
            event,
            code,
            latency_ms: latency.map(|l| l.as_secs_f64() * 1e3),
            attempt,
        };
        if let Ok(s) = serde_json::to_string(&line) {
            let _ = writeln!(w, "{s}");
        }
    }

    /// Flushes a core's transmits and events and re-arms its timer.
    fn service(&mut self, now: Duration, i: usize) {
        loop {
            let Some(m) = self.mns.get_mut(i) else { return };
            let Some((dst, bytes)) = m.core.poll_transmit() else {
                break;
            };
            self.send(now, i, dst, &bytes);
        }
        loop {
            let Some(m) = self.mns.get_mut(i) else { return };
            let Some(ev) = m.core.poll_event() else { break };
            self.on_event(now, i, ev);
        }
        let Some(m) = self.mns.get_mut(i) else { return };
        let busy = m.core.state() == State::Registering;
        if busy != m.busy {
            m.busy = busy;
            if busy {
                self.busy += 1;
            } else {
                self.busy = self.busy.saturating_sub(1);
            }
        }
        let next = m.core.poll_timeout();
        if next.is_some() && next != m.armed {
            m.armed = next;
            if let Some(at) = next {
                self.push(at, i, TimerKind::Core);
            }
        }
    }

    fn on_event(&mut self, now: Duration, i: usize, ev: Event) {
        match ev {
            Event::Sent { attempt, .. } => {
                self.summary.sent += 1;
                if attempt > 1 {
                    self.summary.retransmissions += 1;
                }
                self.first_sent.get_or_insert(now);
                self.record(now, i, "sent", None, None, Some(attempt));
            }
            Event::Accepted {
                code,
                latency,
                udp_tunnel,
                home_address,
                ..
            } => {
                self.summary.accepted += 1;
                self.latencies.push(latency);
                self.last_accept = Some(now);
                let mut arm_ka = None;
                let mut arm_data = false;
                if let Some(m) = self.mns.get_mut(i) {
                    if m.accepted == 0 {
                        self.summary.registered += 1;
                    }
                    m.accepted += 1;
                    m.last_code = Some(u8::from(code));
                    m.acknowledged = Some((home_address, m.core.care_of_address()));
                    m.keepalive = udp_tunnel.filter(|k| !k.is_zero());
                    if let Some(k) = m.keepalive.filter(|_| !m.ka_armed) {
                        m.ka_armed = true;
                        arm_ka = Some(k);
                    }
                    if udp_tunnel.is_some() && self.cfg.data.is_some() && !m.data_armed {
                        m.data_armed = true;
                        arm_data = true;
                    }
                }
                if let Some(k) = arm_ka {
                    self.push(now + k, i, TimerKind::Keepalive);
                }
                if arm_data {
                    self.push(now, i, TimerKind::Data);
                }
                self.record(
                    now,
                    i,
                    "accepted",
                    Some(u8::from(code)),
                    Some(latency),
                    None,
                );
            }
            Event::Denied { code } => {
                let c = u8::from(code);
                *self.summary.denied.entry(c).or_default() += 1;
                self.summary.denied_total += 1;
                if let Some(m) = self.mns.get_mut(i) {
                    m.last_code = Some(c);
                }
                self.record(now, i, "denied", Some(c), None, None);
            }
            Event::GaveUp => {
                self.summary.gave_up += 1;
                self.record(now, i, "gave_up", None, None, None);
            }
            Event::Deregistered => {
                self.summary.deregistered += 1;
                if let Some(m) = self.mns.get_mut(i) {
                    m.deregistered = true;
                    m.last_code = Some(0);
                }
                self.record(now, i, "deregistered", Some(0), None, None);
            }
        }
    }

    fn on_timer(&mut self, now: Duration, t: Timer, phase: Phase) -> Result<(), SimError> {
        let i = t.mn;
        match t.kind {
            TimerKind::Start => {
                if phase != Phase::Running {
                    return Ok(());
                }
                let addr = self.cfg.bind_for(i);
                let (s, local) = self.open_socket(i, addr)?;
                let Some(m) = self.mns.get_mut(i) else {
                    return Ok(());
                };
                m.sock = Some(s);
                m.local = local;
                m.started = true;
                m.core.register(now);
                self.started += 1;
                if let Some(after) = self.cfg.move_after {
                    self.push(now + after, i, TimerKind::Move);
                }
                self.service(now, i);
            }
            TimerKind::Core => {
                let Some(m) = self.mns.get_mut(i) else {
                    return Ok(());
                };
                if m.armed != Some(t.at) {
                    return Ok(()); // superseded
                }
                m.armed = None;
                if phase == Phase::Deregistering && m.core.state() == State::Registered {
                    // No re-registration once the run is winding down.
                    return Ok(());
                }
                m.core.handle_timeout(now);
                self.service(now, i);
            }
            TimerKind::Move => {
                self.moved += 1;
                if phase != Phase::Running {
                    return Ok(());
                }
                let n = self.cfg.bind.len().max(1);
                let addr = self.cfg.bind_for((i + 1) % n);
                let (s, local) = self.open_socket(i, addr)?;
                let Some(m) = self.mns.get_mut(i) else {
                    return Ok(());
                };
                // Dropping the old socket closes it, and the kernel takes it
                // out of the epoll set.
                m.sock = Some(s);
                m.local = local;
                m.moved = true;
                m.core.move_to(now, addr);
                self.summary.moves += 1;
                self.record(now, i, "moved", None, None, None);
                self.service(now, i);
            }
            TimerKind::Keepalive => {
                let Some(m) = self.mns.get_mut(i) else {
                    return Ok(());
                };
                m.ka_armed = false;
                let Some(k) = m.keepalive.filter(|_| m.core.state() != State::Idle) else {
                    return Ok(());
                };
                if phase != Phase::Running {
                    return Ok(());
                }
                m.ka_seq = m.ka_seq.wrapping_add(1);
                let (hoa, seq) = (m.core.home_address(), m.ka_seq);
                m.ka_armed = true;
                let mut buf = [0u8; 64];
                let ha = *self.cfg.home_agent.ip();
                // [RFC 3519 § 3.9]: an ICMP echo from the home address to
                // the home agent through the tunnel.
                if let Ok(n) = udptun::build_keepalive(&mut buf, hoa, ha, i as u16, seq) {
                    if let Some(p) = buf.get(..n) {
                        if self.send(now, i, self.cfg.home_agent, p) {
                            self.summary.keepalives_sent += 1;
                        }
                    }
                }
                self.push(now + k, i, TimerKind::Keepalive);
            }
            TimerKind::Data => {
                let Some(d) = self.cfg.data else {
                    return Ok(());
                };
                let Some(m) = self.mns.get_mut(i) else {
                    return Ok(());
                };
                m.data_armed = false;
                if phase != Phase::Running || m.core.binding().and_then(|b| b.udp_tunnel).is_none()
                {
                    return Ok(());
                }
                m.data_armed = true;
                let seq = m.data_seq;
                m.data_seq += 1;
                let hoa = m.core.home_address();
                let id = d.first_id.wrapping_add(i as u32);
                let payload = data_payload(id, seq, now, d.payload_len);
                // [RFC 3519 § 3.3]: tunnel data header, next header 4, then
                // the inner IPv4/UDP packet from the home address.
                let mut msg = vec![0u8; udptun::HEADER_LEN + ip::ipv4_udp_len(payload.len())];
                if let Some((h, inner)) = msg.split_first_chunk_mut::<{ udptun::HEADER_LEN }>() {
                    *h = [udptun::TYPE_TUNNEL_DATA, ip::protocol::IPIP, 0, 0];
                    ip::write_ipv4_udp(
                        inner,
                        SocketAddrV4::new(hoa, DATA_SRC_PORT),
                        d.correspondent,
                        &payload,
                    );
                }
                if self.send(now, i, self.cfg.home_agent, &msg) {
                    self.summary.data_sent += 1;
                }
                self.push(
                    now + Duration::from_secs_f64(1.0 / d.rate),
                    i,
                    TimerKind::Data,
                );
            }
        }
        Ok(())
    }

    fn on_readable(&mut self, i: usize) {
        loop {
            let Some(m) = self.mns.get(i) else { return };
            let Some(sock) = m.sock.as_ref() else { return };
            let local = m.local;
            let (n, from) = match sock.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ECONNREFUSED from an ICMP port unreachable and the like:
                // the retransmission timer deals with it.
                Err(_) => continue,
            };
            let SocketAddr::V4(from) = from else { continue };
            let now = unix_now();
            let data = self.buf.get(..n).unwrap_or_default().to_vec();
            self.capture(now, from, local, &data);
            match udptun::classify(&data) {
                Kind::RegistrationReply => {
                    let Some(m) = self.mns.get_mut(i) else { return };
                    if let Err(d) = m.core.handle(now, from, &data) {
                        tracing::debug!(mn = i, "reply discarded: {d}");
                        self.summary.discarded += 1;
                    }
                    self.service(now, i);
                }
                Kind::TunnelData => match udptun::parse_keepalive(&data) {
                    Ok(k) if !k.is_request => self.summary.keepalive_replies += 1,
                    _ => self.summary.tunnel_data_received += 1,
                },
                _ => self.summary.discarded += 1,
            }
        }
    }

    fn run(mut self) -> Result<Report, SimError> {
        let mut rng = SplitMix64::new(self.cfg.seed);
        let interval = if self.cfg.rate > 0.0 {
            1.0 / self.cfg.rate
        } else {
            0.0
        };
        for i in 0..self.cfg.count {
            let jitter = (rng.next_f64() - 0.5) * self.cfg.jitter * interval;
            let off = (i as f64 * interval + jitter).max(0.0);
            self.push(self.t0 + Duration::from_secs_f64(off), i, TimerKind::Start);
        }
        let end = self.cfg.duration.map(|d| self.t0 + d);
        let mut phase = Phase::Running;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 512];
        loop {
            let now = unix_now();
            while let Some(std::cmp::Reverse(t)) = self.heap.peek().copied() {
                if t.at > now {
                    break;
                }
                self.heap.pop();
                self.on_timer(now, t, phase)?;
            }
            if phase == Phase::Running {
                let all_settled = self.started == self.cfg.count
                    && self.busy == 0
                    && (self.cfg.move_after.is_none() || self.moved == self.cfg.count);
                let over = match end {
                    Some(e) => now >= e,
                    None => all_settled,
                };
                if over || self.stop.load(Ordering::Relaxed) {
                    phase = Phase::Deregistering;
                    if self.cfg.deregister {
                        for i in 0..self.mns.len() {
                            let Some(m) = self.mns.get_mut(i) else {
                                continue;
                            };
                            if m.core.binding().is_some() || m.core.state() == State::Registering {
                                m.core.deregister(now);
                                self.service(now, i);
                            }
                        }
                    }
                }
            }
            if phase == Phase::Deregistering && (self.busy == 0 || !self.cfg.deregister) {
                break;
            }
            let wait = self
                .heap
                .peek()
                .map(|t| t.0.at.saturating_sub(now))
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            let ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(100);
            let n = self
                .ep
                .wait(&mut events, ms)
                .map_err(io_err("epoll_wait"))?;
            for ev in events.get(..n).unwrap_or_default() {
                let token = ev.u64;
                self.on_readable(token as usize);
            }
        }
        self.finish()
    }

    fn finish(mut self) -> Result<Report, SimError> {
        let now = unix_now();
        if let Some(w) = self.timeline.as_mut() {
            w.flush().map_err(io_err("flush timeline"))?;
        }
        if let Some(w) = self.pcap.as_mut() {
            w.flush().map_err(io_err("flush pcap"))?;
        }
        self.latencies.sort_unstable();
        let pct = |q: f64| -> f64 {
            if self.latencies.is_empty() {
                return 0.0;
            }
            let idx = ((self.latencies.len() as f64 * q).ceil() as usize)
                .clamp(1, self.latencies.len())
                - 1;
            self.latencies
                .get(idx)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        self.summary.latency_ms = Latency {
            p50: pct(0.5),
            p99: pct(0.99),
            p999: pct(0.999),
            max: pct(1.0),
        };
        if let (Some(a), Some(b)) = (self.first_sent, self.last_accept) {
            let span = b.saturating_sub(a).as_secs_f64();
            if span > 0.0 {
                self.summary.reg_per_sec = self.summary.accepted as f64 / span;
            }
        }
        self.summary.elapsed_s = now.saturating_sub(self.t0).as_secs_f64();
        let mns = self
            .mns
            .iter()
            .enumerate()
            .map(|(i, m)| MnOutcome {
                mn: i,
                source: m.local,
                home_address: m.core.home_address(),
                care_of_address: m.core.care_of_address(),
                accepted: m.accepted,
                acknowledged: m.acknowledged,
                last_code: m.last_code,
                deregistered: m.deregistered,
            })
            .collect();
        Ok(Report {
            summary: self.summary,
            mns,
        })
    }
}

/// Runs a simulation to its end (see the module docs). Blocking: call it
/// from a thread (or `spawn_blocking`), not from an async task.
///
/// # Errors
/// A bad configuration, or a socket/file operation that failed.
pub fn run(cfg: &SimConfig) -> Result<Report, SimError> {
    run_with_stop(cfg, &AtomicBool::new(false))
}

/// As [`run`]; setting `stop` ends the run early (with deregistration).
///
/// # Errors
/// As [`run`].
pub fn run_with_stop(cfg: &SimConfig, stop: &AtomicBool) -> Result<Report, SimError> {
    cfg.validate()?;
    // One socket per mobile node, plus files and epoll.
    let want = cfg.count as u64 + 64;
    if let Err(e) = raise_fd_limit(want) {
        tracing::warn!("cannot raise the open-file limit to {want}: {e}");
    }
    let timeline = match &cfg.timeline {
        Some(p) => Some(BufWriter::new(
            File::create(p).map_err(io_err(format!("create {}", p.display())))?,
        )),
        None => None,
    };
    let pcap = match &cfg.pcap {
        Some(p) => {
            let f = File::create(p).map_err(io_err(format!("create {}", p.display())))?;
            Some(PcapWriter::new(BufWriter::new(f)).map_err(io_err("pcap header"))?)
        }
        None => None,
    };
    let mns = (0..cfg.count)
        .map(|i| {
            let addr = cfg.bind_for(i);
            SimMn {
                core: MobileNode::new(cfg.mn_config(i, addr)),
                sock: None,
                local: SocketAddrV4::new(addr, 0),
                armed: None,
                busy: false,
                started: false,
                moved: false,
                ka_armed: false,
                data_armed: false,
                ka_seq: 0,
                data_seq: 0,
                keepalive: None,
                accepted: 0,
                acknowledged: None,
                last_code: None,
                deregistered: false,
            }
        })
        .collect();
    let sim = Sim {
        cfg,
        stop,
        ep: Epoll::new().map_err(io_err("epoll_create1"))?,
        mns,
        heap: BinaryHeap::with_capacity(cfg.count * 2),
        t0: unix_now(),
        summary: Summary {
            count: cfg.count,
            ..Summary::default()
        },
        latencies: Vec::new(),
        first_sent: None,
        last_accept: None,
        busy: 0,
        started: 0,
        moved: 0,
        timeline,
        pcap,
        buf: vec![0u8; 65_536],
    };
    sim.run()
}

/// One data flow as a [`DataSink`] saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlowStats {
    /// The mobile node index carried in the payload.
    pub mn: u32,
    /// The address the datagrams came from (the home address when the
    /// home agent delivers the inner packet unchanged).
    pub source: Option<Ipv4Addr>,
    /// Packets received (duplicates included).
    pub received: u64,
    /// Highest sequence number seen.
    pub highest_seq: u64,
    /// Sequence numbers never seen up to the highest one.
    pub lost: u64,
    /// Largest time between two consecutive arrivals.
    pub max_gap: Duration,
    /// Largest one-way delay (sender and sink clocks must agree).
    pub max_delay: Duration,
    #[serde(skip)]
    last_arrival: Duration,
}

/// The correspondent node's receiver of mnsim data streams: plain UDP
/// datagrams whose payload is [`data_payload`]. The counting is sans-IO
/// ([`DataSink::record`]); [`DataSink::spawn`] runs it on a socket.
#[derive(Debug, Clone, Default)]
pub struct DataSink {
    flows: HashMap<u32, FlowStats>,
    /// Datagrams that were not data payloads.
    pub foreign: u64,
}

impl DataSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one datagram received at `now` from `src`; false when it is
    /// not a data payload.
    pub fn record(&mut self, now: Duration, src: SocketAddrV4, payload: &[u8]) -> bool {
        let Some((mn, seq, sent)) = parse_data_payload(payload) else {
            self.foreign += 1;
            return false;
        };
        let f = self.flows.entry(mn).or_insert_with(|| FlowStats {
            mn,
            ..FlowStats::default()
        });
        f.source = Some(*src.ip());
        if f.received > 0 {
            f.max_gap = f.max_gap.max(now.saturating_sub(f.last_arrival));
        }
        f.last_arrival = now;
        f.received += 1;
        f.highest_seq = f.highest_seq.max(seq);
        f.lost = (f.highest_seq + 1).saturating_sub(f.received);
        f.max_delay = f.max_delay.max(now.saturating_sub(sent));
        true
    }

    /// Every flow, by mobile node index.
    pub fn flows(&self) -> Vec<FlowStats> {
        let mut v: Vec<_> = self.flows.values().copied().collect();
        v.sort_by_key(|f| f.mn);
        v
    }

    /// Receives on `bind` in a thread until the handle is stopped.
    ///
    /// # Errors
    /// Binding the socket.
    pub fn spawn(bind: SocketAddrV4) -> io::Result<SinkHandle> {
        let sock = UdpSocket::bind(bind)?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let local = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let sink = Arc::new(Mutex::new(DataSink::new()));
        let (stop2, sink2) = (Arc::clone(&stop), Arc::clone(&sink));
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let record = |datagram: &[u8], src: SocketAddr| {
                if let SocketAddr::V4(src) = src {
                    let mut sink = sink2.lock().unwrap_or_else(PoisonError::into_inner);
                    sink.record(unix_now(), src, datagram);
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, src)) = sock.recv_from(&mut buf) {
                    record(buf.get(..n).unwrap_or_default(), src);
                }
            }
            // What arrived before the stop is counted too: datagrams still
            // queued in the socket were delivered, only not read yet (a
            // stop between two reads once left four of them uncounted).
            if sock.set_nonblocking(true).is_ok() {
                while let Ok((n, src)) = sock.recv_from(&mut buf) {
                    record(buf.get(..n).unwrap_or_default(), src);
                }
            }
        });
        Ok(SinkHandle {
            local,
            stop,
            sink,
            thread,
        })
    }
}

/// A running [`DataSink`].
#[derive(Debug)]
pub struct SinkHandle {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    sink: Arc<Mutex<DataSink>>,
    thread: std::thread::JoinHandle<()>,
}

impl SinkHandle {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Packets of flow `mn` counted so far, for tests that wait until the
    /// correspondent has them rather than until a sender says they left.
    pub fn received(&self, mn: u32) -> u64 {
        let sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        sink.flows.get(&mn).map_or(0, |f| f.received)
    }

    /// Stops it and returns what it counted, including every datagram
    /// already queued on its socket.
    pub fn stop(self) -> DataSink {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        std::mem::take(&mut *self.sink.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_payload_roundtrip() {
        let t = Duration::new(1_700_000_000, 123_456_789);
        let p = data_payload(7, 42, t, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(&p[..4], b"HVD1");
        assert_eq!(parse_data_payload(&p), Some((7, 42, t)));
        assert_eq!(parse_data_payload(&p[..20]), None);
        assert_eq!(parse_data_payload(b"XXXX0000000000000000000000"), None);
    }

    // A stop counts what was already delivered: the home agent's forwarded
    // count and the sink's received count are compared after it.
    #[test]
    fn stopped_sink_counts_every_queued_datagram() {
        let sink = DataSink::spawn(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let now = unix_now();
        for seq in 0..200 {
            tx.send_to(&data_payload(1, seq, now, 64), sink.local_addr())
                .unwrap();
        }
        let flows = sink.stop().flows();
        assert_eq!(flows.iter().map(|f| f.received).sum::<u64>(), 200);
    }

    #[test]
    fn sink_counts_loss_and_gap() {
        let mut s = DataSink::new();
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), DATA_SRC_PORT);
        let t = Duration::from_secs(1_700_000_000);
        for (seq, at_ms) in [(0u64, 0u64), (1, 10), (2, 20), (5, 320), (6, 330)] {
            let now = t + Duration::from_millis(at_ms);
            assert!(s.record(now, src, &data_payload(3, seq, now, 24)));
        }
        assert!(!s.record(t, src, b"not data"));
        let f = s.flows();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].received, 5);
        assert_eq!(f[0].highest_seq, 6);
        assert_eq!(f[0].lost, 2);
        assert_eq!(f[0].max_gap, Duration::from_millis(300));
        assert_eq!(s.foreign, 1);
    }

    #[test]
    fn validate_rejects() {
        let ha = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 434);
        let mut c = SimConfig::new(ha, "k");
        assert!(c.validate().is_ok());
        c.count = 0;
        assert!(c.validate().is_err());
        c.count = 10;
        c.home = HomeMode::Static {
            base: Ipv4Addr::new(255, 255, 255, 250),
        };
        assert!(c.validate().is_err());
        c.home = HomeMode::Nai {
            pattern: "mn{i}@example.com".into(),
        };
        assert!(c.validate().is_ok());
        assert_eq!(
            c.mn_config(12, Ipv4Addr::LOCALHOST).nai.as_deref(),
            Some(&b"mn12@example.com"[..])
        );
        c.data = Some(DataConfig {
            correspondent: ha,
            rate: 10.0,
            payload_len: 64,
            first_id: 0,
        });
        assert!(c.validate().is_err(), "data without UDP tunnelling");
        c.udp_tunnel = true;
        assert!(c.validate().is_ok());
    }
}
