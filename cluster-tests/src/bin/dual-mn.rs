//! `dual-mn`: the full dual mobile node of seed 000 (issue 8), one process
//! per mobile-node namespace. The design, the modes, domain detection, the
//! policy routing it installs and the status file are described in
//! [`haven_cluster_tests::dual`]; this is its I/O: two TUN adapters, three
//! UDP sockets (outer, inner direct, inner via the TIA), strongSwan driven
//! through `swanctl`, the namespace's default route polled for moves.
//!
//! Run it inside the mobile node's namespace, as root:
//!
//! ```text
//! DUAL_MN_INNER_KEY=hex [DUAL_MN_OUTER_KEY=hex] dual-mn --variant seed000 \
//!   --inner-ha 198.18.100.100 --inner-hoa 198.18.16.5 --inner-spi 1000 \
//!   --outer-ha 203.0.113.100 --outer-hoa 198.18.128.5 --outer-spi 2000 \
//!   --gateway 203.0.113.66 --swanctl-uri unix:///tmp/.../charon.vici \
//!   --strongswan-conf /tmp/.../strongswan.conf --status /tmp/.../status.json
//! ```

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use haven_cluster_tests::dual::{
    Action, DualConfig, DualCore, Mode, Path, Status, Variant, open_tun,
};
use haven_cluster_tests::mn::MnConfig;
use haven_cluster_tests::mnsim::unix_now;
use haven_proto::ip;
use haven_proto::udptun::{self, Kind};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VariantArg {
    /// Seed 000: outer Mobile IP, VPN over the outer home address.
    Seed000,
    /// Seed 004 'mc': no outer home agent, the VPN follows with MOBIKE.
    Mc,
}

/// The full dual Mobile IPv4 client (seed 000 figures 9–11).
#[derive(Debug, Parser)]
#[command(name = "dual-mn", version)]
struct Args {
    /// seed000 or mc.
    #[arg(long, value_enum)]
    variant: VariantArg,
    /// The inner home agent (port 434).
    #[arg(long)]
    inner_ha: Ipv4Addr,
    /// The inner home address (on the intranet adapter).
    #[arg(long)]
    inner_hoa: Ipv4Addr,
    /// SPI of the inner MN-HA security association.
    #[arg(long)]
    inner_spi: u32,
    /// The inner MN-HA key, hex (test-only keys, from the environment).
    #[arg(long, env = "DUAL_MN_INNER_KEY", hide_env_values = true)]
    inner_key: String,
    /// The outer home agent (seed 000).
    #[arg(long)]
    outer_ha: Option<Ipv4Addr>,
    /// The outer home address (on the mobility adapter).
    #[arg(long)]
    outer_hoa: Option<Ipv4Addr>,
    /// SPI of the outer MN-HA security association.
    #[arg(long, default_value_t = 0)]
    outer_spi: u32,
    /// The outer MN-HA key, hex.
    #[arg(long, env = "DUAL_MN_OUTER_KEY", hide_env_values = true)]
    outer_key: Option<String>,
    /// The VPN gateway (seed 000: routed into the mobility adapter).
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    /// charon's vici URI; without it the VPN is not driven.
    #[arg(long)]
    swanctl_uri: Option<String>,
    /// The strongswan.conf swanctl reads.
    #[arg(long)]
    strongswan_conf: Option<PathBuf>,
    /// The swanctl connection name.
    #[arg(long, default_value = "home")]
    vpn_conn: String,
    /// The swanctl CHILD_SA name.
    #[arg(long, default_value = "intranet")]
    vpn_child: String,
    /// The VPN's TUN device (kernel-libipsec).
    #[arg(long, default_value = "ipsec0")]
    vpn_dev: String,
    /// Where the JSON status goes.
    #[arg(long)]
    status: PathBuf,
    /// How long a direct inner registration may go unanswered, ms.
    #[arg(long, default_value_t = 1500)]
    probe_window_ms: u64,
    /// Requested registration lifetime, s.
    #[arg(long, default_value_t = 300)]
    lifetime: u16,
    /// MTU of the intranet adapter (small enough for three levels of
    /// encapsulation in a 1500-octet path).
    #[arg(long, default_value_t = 1200)]
    intra_mtu: u16,
    /// MTU of the mobility adapter.
    #[arg(long, default_value_t = 1400)]
    mob_mtu: u16,
}

const INTRA_DEV: &str = "intra0";
const MOB_DEV: &str = "mob0";
const INTRA_TABLE: &str = "101";
const MOB_TABLE: &str = "100";
/// How often the default route and the VPN's device are polled.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How often the status file is rewritten without a change.
const STATUS_EVERY: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dual-mn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_cmd(args: &[&str]) -> anyhow::Result<()> {
    sh("ip", args).map(drop)
}

fn sysctl_zero(path: &str) {
    // rp_filter would drop what comes out of the adapters (the reverse
    // path of a correspondent is the adapter only by policy rule).
    if let Err(e) = std::fs::write(path, "0") {
        eprintln!("dual-mn: {path}: {e}");
    }
}

/// One adapter: the TUN device, up, with the home address and its policy
/// routing table.
fn adapter(
    name: &str,
    mtu: u16,
    hoa: Ipv4Addr,
    table: &str,
    pref: &str,
) -> anyhow::Result<OwnedFd> {
    let fd = open_tun(name).with_context(|| format!("opening TUN {name}"))?;
    let mtu = mtu.to_string();
    let hoa_s = hoa.to_string();
    ip_cmd(&["link", "set", "dev", name, "mtu", &mtu, "up"])?;
    ip_cmd(&["addr", "add", &format!("{hoa}/32"), "dev", name])?;
    ip_cmd(&["route", "replace", "default", "dev", name, "table", table])?;
    ip_cmd(&["rule", "add", "from", &hoa_s, "lookup", table, "pref", pref])?;
    sysctl_zero(&format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"));
    Ok(fd)
}

/// The physical attachment: the default route's device and its first
/// IPv4 address.
fn attachment() -> Option<(String, Ipv4Addr)> {
    // The route and the address are two reads, not one snapshot: a move
    // (new address, default route replaced, old address deleted) can fall
    // between them, and the old device without its address would read as
    // a detachment that never happened. So the route is read again after
    // the address, and the pair kept only if the route did not move.
    for _ in 0..3 {
        let dev = default_dev()?;
        let addr = addrs_on(&dev).into_iter().next();
        if default_dev().as_deref() == Some(dev.as_str()) {
            return addr.map(|a| (dev, a));
        }
    }
    None
}

/// The device of the default route, if there is one.
fn default_dev() -> Option<String> {
    let routes = sh("ip", &["-4", "-o", "route", "show", "default"]).ok()?;
    routes.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        w.find(|t| *t == "dev")?;
        w.next().map(str::to_owned)
    })
}

fn addrs_on(dev: &str) -> Vec<Ipv4Addr> {
    sh("ip", &["-4", "-o", "addr", "show", "dev", dev])
        .map(|o| haven_cluster_tests::vpn::inet_addrs(&o))
        .unwrap_or_default()
}

fn set_int_opt(fd: &impl AsRawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: the option reads one c_int; `v` is one and outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const v).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The direct path's socket: bound to the physical address *and* device,
/// so neither charon's routing table nor anything else sends it into the
/// VPN; connected to the inner home agent with IP_RECVERR, so an ICMP
/// unreachable for it surfaces as an error (seed 000's ICMP conjecture).
fn direct_socket(dev: &str, addr: Ipv4Addr, ha: SocketAddrV4) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddrV4::new(addr, 0))?;
    let name = dev.as_bytes();
    // SAFETY: SO_BINDTODEVICE reads `len` bytes of a device name; `name`
    // is that many readable bytes.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    set_int_opt(&s, libc::IPPROTO_IP, libc::IP_RECVERR, 1)?;
    s.connect(ha)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// One ICMP error from a socket's error queue (`IP_RECVERR`, ip(7)).
#[derive(Debug, Clone, Copy)]
struct IcmpError {
    errno: u32,
    icmp_type: u8,
    code: u8,
    /// The router (or host) that sent it.
    offender: Option<Ipv4Addr>,
}

/// Drains the socket's error queue (`recvmsg(MSG_ERRQUEUE)`). Draining
/// matters beyond the evidence: while the queue holds an entry, poll(2)
/// reports POLLERR on the socket at once, every time (a busy loop).
fn drain_errqueue(s: &UdpSocket) -> Vec<IcmpError> {
    let mut out = Vec::new();
    // Bounded: the kernel caps the queue by the receive buffer anyway.
    for _ in 0..64 {
        let mut data = [0u8; 512];
        let mut control = [0u64; 64];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: msghdr is plain old data; all zeroes is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: `msg` points at live, exclusively borrowed buffers of
        // the lengths it states.
        let n = unsafe {
            libc::recvmsg(
                s.as_raw_fd(),
                &raw mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            break;
        }
        // SAFETY: the kernel filled `msg_control` with `msg_controllen`
        // octets of cmsgs; CMSG_FIRSTHDR/NXTHDR stay within them.
        let mut cm = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
        while !cm.is_null() {
            // SAFETY: `cm` is a cmsg header inside the control buffer.
            let h = unsafe { &*cm };
            if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_RECVERR {
                // SAFETY: an IP_RECVERR cmsg carries a sock_extended_err
                // followed by the offender's sockaddr_in (ip(7)); read
                // unaligned, the control buffer gives no alignment promise
                // for the data.
                let (ee, off) = unsafe {
                    let d = libc::CMSG_DATA(cm);
                    let ee: libc::sock_extended_err = std::ptr::read_unaligned(d.cast());
                    let off: libc::sockaddr_in = std::ptr::read_unaligned(
                        d.add(std::mem::size_of::<libc::sock_extended_err>()).cast(),
                    );
                    (ee, off)
                };
                if ee.ee_origin == libc::SO_EE_ORIGIN_ICMP {
                    out.push(IcmpError {
                        errno: ee.ee_errno,
                        icmp_type: ee.ee_type,
                        code: ee.ee_code,
                        offender: (off.sin_family == libc::AF_INET as libc::sa_family_t)
                            .then(|| Ipv4Addr::from(u32::from_be(off.sin_addr.s_addr))),
                    });
                }
            }
            // SAFETY: as above.
            cm = unsafe { libc::CMSG_NXTHDR(&raw const msg, cm) };
        }
    }
    out
}

fn key(hex_key: &str) -> anyhow::Result<Vec<u8>> {
    hex::decode(hex_key.trim()).context("a key is not hex")
}

/// Reads one packet from a non-blocking TUN descriptor.
fn tun_read(fd: &OwnedFd, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `buf` is writable for its length; read(2) writes at most that.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).ok().filter(|n| *n > 0)
}

fn tun_write(fd: &OwnedFd, pkt: &[u8]) {
    // SAFETY: `pkt` is readable for its length; write(2) only reads it.
    let _ = unsafe { libc::write(fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
}

/// What the driver asks of the VPN worker.
enum VpnCmd {
    Start,
    Stop,
}

/// The VPN worker's counters, read into the status file.
#[derive(Default)]
struct VpnStats {
    initiates: AtomicU64,
    failures: AtomicU64,
}

/// The first retry of a failed `swanctl --initiate`, doubled per failure up
/// to [`RETRY_MAX`]: the gateway may be briefly unreachable right after a
/// move (the outer binding being renewed, a NAT mapping new), and a VPN
/// that stays down leaves the node outside without its inner binding.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(4);

/// The VPN, driven through swanctl by a worker thread, in order (an IKE
/// exchange takes a round trip or two; the data plane must not wait). A
/// failed initiation is retried with a bounded backoff for as long as the
/// VPN is wanted (until the next Stop), unless charon holds the SA by then.
struct Vpn {
    tx: std::sync::mpsc::Sender<VpnCmd>,
    stats: Arc<VpnStats>,
}

struct VpnWorker {
    uri: String,
    conf: Option<PathBuf>,
    conn: String,
    child: String,
    stats: Arc<VpnStats>,
}

impl VpnWorker {
    /// Runs `swanctl ARGS`; whether it exited 0.
    fn swanctl(&self, args: &[&str]) -> (bool, String) {
        let mut c = Command::new("swanctl");
        c.args(args).args(["--uri", &self.uri]).stdin(Stdio::null());
        if let Some(conf) = &self.conf {
            c.env("STRONGSWAN_CONF", conf);
        }
        let t = Instant::now();
        match c.output() {
            Ok(o) => {
                if args.first() != Some(&"--list-sas") {
                    println!(
                        "vpn: swanctl {} -> {} in {:?}",
                        args.join(" "),
                        o.status,
                        t.elapsed()
                    );
                }
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                )
            }
            Err(e) => {
                println!("vpn: swanctl: {e}");
                (false, String::new())
            }
        }
    }

    fn initiate(&self) -> bool {
        self.stats.initiates.fetch_add(1, Ordering::Relaxed);
        let ok = self
            .swanctl(&[
                "--initiate",
                "--ike",
                &self.conn,
                "--child",
                &self.child,
                "--timeout",
                "10",
            ])
            .0;
        if !ok {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// The connection's IKE SA state as charon reports it, if any.
    fn sa_state(&self) -> Option<String> {
        let (ok, out) = self.swanctl(&["--list-sas", "--ike", &self.conn]);
        if !ok {
            return None;
        }
        haven_cluster_tests::vpn::parse_list_sas(&out)
            .into_iter()
            .find(|sa| sa.name == self.conn)
            .map(|sa| sa.state)
    }

    fn run(self, rx: std::sync::mpsc::Receiver<VpnCmd>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut wanted = false;
        let mut backoff = RETRY_FIRST;
        let mut retry_at: Option<Instant> = None;
        loop {
            let cmd = match retry_at {
                Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match cmd {
                Ok(VpnCmd::Start) => {
                    wanted = true;
                    backoff = RETRY_FIRST;
                    retry_at = None;
                    if !self.initiate() {
                        retry_at = Some(Instant::now() + backoff);
                    }
                }
                Ok(VpnCmd::Stop) => {
                    wanted = false;
                    retry_at = None;
                    // --force: do not wait for the gateway's answer (inside,
                    // the path to it is gone); the gateway's dead peer
                    // detection cleans up.
                    self.swanctl(&["--terminate", "--ike", &self.conn, "--force"]);
                }
                Err(RecvTimeoutError::Timeout) => {
                    retry_at = None;
                    if !wanted {
                        continue;
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                    match self.sa_state().as_deref() {
                        Some("ESTABLISHED") => {
                            println!("vpn: the IKE SA is up after all");
                        }
                        // charon is still at it: look again later.
                        Some("CONNECTING") => retry_at = Some(Instant::now() + backoff),
                        _ => {
                            println!("vpn: retrying the initiation");
                            if !self.initiate() {
                                retry_at = Some(Instant::now() + backoff);
                            }
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

impl Vpn {
    fn new(uri: String, conf: Option<PathBuf>, conn: String, child: String) -> Vpn {
        let (tx, rx) = std::sync::mpsc::channel::<VpnCmd>();
        let stats = Arc::new(VpnStats::default());
        let worker = VpnWorker {
            uri,
            conf,
            conn,
            child,
            stats: stats.clone(),
        };
        std::thread::spawn(move || worker.run(rx));
        Vpn { tx, stats }
    }

    fn start(&self) {
        let _ = self.tx.send(VpnCmd::Start);
    }

    fn stop(&self) {
        let _ = self.tx.send(VpnCmd::Stop);
    }
}

struct Node {
    core: DualCore,
    intra: OwnedFd,
    mob: Option<OwnedFd>,
    outer_sock: Option<UdpSocket>,
    direct_sock: Option<UdpSocket>,
    tia_sock: Option<UdpSocket>,
    status: Status,
    dirty: bool,
    last_keepalive: [Option<Duration>; 3],
    ka_seq: u16,
}

fn path_index(p: Path) -> usize {
    match p {
        Path::Outer => 0,
        Path::InnerDirect => 1,
        Path::InnerTia => 2,
    }
}

impl Node {
    fn sock(&self, p: Path) -> Option<&UdpSocket> {
        match p {
            Path::Outer => self.outer_sock.as_ref(),
            Path::InnerDirect => self.direct_sock.as_ref(),
            Path::InnerTia => self.tia_sock.as_ref(),
        }
    }

    /// Sends what the core queued; an unreachable error on the direct
    /// path is evidence for the decision.
    fn flush(&mut self, vpn: Option<&Vpn>) {
        let mut unreachable = false;
        while let Some(t) = self.core.poll_transmit() {
            let Some(s) = self.sock(t.path) else { continue };
            let r = if t.path == Path::InnerDirect {
                s.send(&t.bytes)
            } else {
                s.send_to(&t.bytes, t.dst)
            };
            if let Err(e) = r {
                if t.path == Path::InnerDirect && is_unreachable(&e) {
                    unreachable = true;
                }
            }
        }
        if unreachable {
            // The error came from the socket's pending error; its queue
            // entry (with the ICMP's origin) is read and logged too.
            self.on_direct_errors(vpn);
            self.core.direct_unreachable(unix_now());
            self.dirty = true;
            return self.flush(vpn);
        }
        while let Some(a) = self.core.poll_action() {
            self.dirty = true;
            match a {
                Action::StartVpn => match vpn {
                    Some(v) => v.start(),
                    None => println!("vpn: not driven (no --swanctl-uri)"),
                },
                Action::StopVpn => {
                    if let Some(v) = vpn {
                        v.stop();
                    }
                }
                Action::Decided { mode, after } => {
                    self.status.decisions += 1;
                    self.status.last_decision_ms = Some(after.as_millis() as u64);
                    println!(
                        "decided {mode:?} after {after:?} (phys {:?}, tia {:?})",
                        self.core.phys(),
                        self.core.tia()
                    );
                }
            }
        }
    }

    /// Adapter packets into the tunnel of the current path.
    fn on_adapter(&mut self, mobility: bool, buf: &mut [u8]) {
        loop {
            let fd = if mobility {
                match &self.mob {
                    Some(fd) => fd,
                    None => return,
                }
            } else {
                &self.intra
            };
            // The 4-octet tunnel data header goes in front of the packet
            // [RFC 3519 § 3.3]: type 4, next header 4 (IPv4 in IPv4).
            let Some(n) = tun_read(fd, &mut buf[udptun::HEADER_LEN..]) else {
                return;
            };
            let path = if mobility {
                self.core.mobility_path()
            } else {
                self.core.intranet_path()
            };
            let Some(path) = path else {
                self.status.held += 1;
                continue;
            };
            buf[..udptun::HEADER_LEN].copy_from_slice(&[
                udptun::TYPE_TUNNEL_DATA,
                ip::protocol::IPIP,
                0,
                0,
            ]);
            let ha = self.core.home_agent(path);
            let Some(s) = self.sock(path) else {
                self.status.held += 1;
                continue;
            };
            let msg = &buf[..udptun::HEADER_LEN + n];
            let _ = if path == Path::InnerDirect {
                s.send(msg)
            } else {
                s.send_to(msg, ha)
            };
            if mobility {
                self.status.mob_tx += 1;
            } else {
                self.status.intra_tx += 1;
            }
        }
    }

    /// Datagrams from a home agent on `path`.
    fn on_socket(&mut self, path: Path, buf: &mut [u8], vpn: Option<&Vpn>) {
        if path == Path::InnerDirect {
            self.on_direct_errors(vpn);
        }
        loop {
            let Some(s) = self.sock(path) else { return };
            let (n, from) = match s.recv_from(buf) {
                Ok((n, SocketAddr::V4(from))) => (n, from),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if path == Path::InnerDirect && is_unreachable(&e) {
                        println!("direct path: {e}");
                        self.core.direct_unreachable(unix_now());
                        self.dirty = true;
                        self.flush(vpn);
                        continue;
                    }
                    return;
                }
            };
            let msg = &buf[..n];
            match udptun::classify(msg) {
                Kind::RegistrationReply => {
                    if self.core.handle(unix_now(), path, from, msg) {
                        self.dirty = true;
                    }
                    self.flush(vpn);
                }
                Kind::TunnelData if from.ip() == self.core.home_agent(path).ip() => {
                    if let Ok(k) = udptun::parse_keepalive(msg) {
                        if !k.is_request {
                            continue;
                        }
                    }
                    let Some(inner) = msg.get(udptun::HEADER_LEN..) else {
                        continue;
                    };
                    if msg.get(1) != Some(&ip::protocol::IPIP) {
                        continue;
                    }
                    if path == Path::Outer {
                        if let Some(fd) = &self.mob {
                            tun_write(fd, inner);
                            self.status.mob_rx += 1;
                        }
                    } else {
                        tun_write(&self.intra, inner);
                        self.status.intra_rx += 1;
                    }
                }
                _ => {}
            }
        }
    }

    /// ICMP errors for the direct inner registration: a destination
    /// unreachable (seed 004 § 3.4: from outside, the internet has no
    /// route into the intranet) is evidence that the node is not inside.
    fn on_direct_errors(&mut self, vpn: Option<&Vpn>) {
        let Some(s) = &self.direct_sock else { return };
        let errs = drain_errqueue(s);
        let mut unreachable = false;
        for e in &errs {
            println!(
                "direct path: ICMP type {} code {} from {:?} ({})",
                e.icmp_type,
                e.code,
                e.offender,
                io::Error::from_raw_os_error(e.errno as i32)
            );
            self.status.direct_icmp += 1;
            unreachable |= no_route(e);
        }
        if unreachable {
            self.core.direct_unreachable(unix_now());
            self.dirty = true;
            self.flush(vpn);
        }
    }

    /// RFC 3519 § 3.3 keepalives on the paths in use, at the negotiated
    /// interval (they keep the NAT mapping open).
    fn keepalives(&mut self, now: Duration) {
        let mut paths = vec![];
        paths.extend(self.core.mobility_path());
        paths.extend(self.core.intranet_path());
        for p in paths {
            let Some(every) = self.core.keepalive(p) else {
                continue;
            };
            let i = path_index(p);
            match self.last_keepalive[i] {
                Some(t) if now < t + every => continue,
                None => {
                    // The registration itself just opened the mapping.
                    self.last_keepalive[i] = Some(now);
                    continue;
                }
                _ => {}
            }
            self.last_keepalive[i] = Some(now);
            let ha = self.core.home_agent(p);
            let mut b = [0u8; 64];
            self.ka_seq = self.ka_seq.wrapping_add(1);
            let Ok(n) = udptun::build_keepalive(
                &mut b,
                self.core.home_address(p),
                *ha.ip(),
                0x4d4e,
                self.ka_seq,
            ) else {
                continue;
            };
            if let Some(s) = self.sock(p) {
                let _ = if p == Path::InnerDirect {
                    s.send(&b[..n])
                } else {
                    s.send_to(&b[..n], ha)
                };
                self.status.keepalives += 1;
            }
        }
    }

    fn refresh_status(&mut self) {
        let s = &mut self.status;
        s.mode = match self.core.mode() {
            Mode::Undecided => "undecided",
            Mode::Inside => "inside",
            Mode::Outside => "outside",
        }
        .into();
        s.phys = self.core.phys();
        s.tia = self.core.tia();
        s.outer_coa = self.core.outer_binding();
        let ib = self.core.inner_binding();
        s.inner_path = ib.map(|b| b.0);
        s.inner_coa = ib.map(|b| b.1);
    }
}

/// Whether an ICMP error says the inner home agent has no path from here
/// (destination unreachable for the network or host, or administratively
/// prohibited: RFC 792, RFC 1812 § 5.2.7.1). Port, protocol unreachable
/// and fragmentation needed come from the far end or the path to it, so
/// they prove the intranet *reachable* (a home agent node down, say) and
/// are no evidence of being outside.
fn no_route(e: &IcmpError) -> bool {
    e.icmp_type == 3 && !matches!(e.code, 2..=4)
}

/// The errors a send or receive on the direct socket returns for a
/// pending ICMP error that [`no_route`] would accept.
fn is_unreachable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
    )
}

fn run(a: &Args) -> anyhow::Result<()> {
    let variant = match a.variant {
        VariantArg::Seed000 => Variant::Seed000,
        VariantArg::Mc => Variant::Mc,
    };
    let mut inner = MnConfig::new(
        a.inner_hoa,
        a.inner_ha,
        Ipv4Addr::UNSPECIFIED,
        a.inner_spi,
        key(&a.inner_key)?,
    );
    // Reverse tunnelling in UDP on every path (RFC 3024, RFC 3519; F bit:
    // the TIA and the inside address are not behind a NAT, but the node
    // tunnels the same way everywhere).
    inner.reverse_tunnel = true;
    inner.udp_tunnel = true;
    inner.force_udp_tunnel = true;
    inner.lifetime = a.lifetime;
    let outer = match variant {
        Variant::Seed000 => {
            let (Some(ha), Some(hoa), Some(k)) = (a.outer_ha, a.outer_hoa, a.outer_key.as_deref())
            else {
                bail!("seed000 needs --outer-ha, --outer-hoa and DUAL_MN_OUTER_KEY");
            };
            let mut o = MnConfig::new(hoa, ha, Ipv4Addr::UNSPECIFIED, a.outer_spi, key(k)?);
            o.reverse_tunnel = true;
            o.udp_tunnel = true;
            o.lifetime = a.lifetime;
            Some(o)
        }
        Variant::Mc => None,
    };
    let core = DualCore::new(DualConfig {
        variant,
        inner,
        outer: outer.clone(),
        probe_window: Duration::from_millis(a.probe_window_ms),
        retry_after: Duration::from_secs(2),
    })?;

    for p in ["all", "default"] {
        sysctl_zero(&format!("/proc/sys/net/ipv4/conf/{p}/rp_filter"));
    }
    let intra = adapter(INTRA_DEV, a.intra_mtu, a.inner_hoa, INTRA_TABLE, "50")?;
    let mob = match &outer {
        Some(o) => {
            let fd = adapter(MOB_DEV, a.mob_mtu, o.home_address, MOB_TABLE, "60")?;
            if let Some(gw) = a.gateway {
                // charon picks its source by route lookup: the outer home
                // address, so the VPN binds to it (seed 000 "VPN
                // transparency").
                ip_cmd(&[
                    "route",
                    "replace",
                    &format!("{gw}/32"),
                    "dev",
                    MOB_DEV,
                    "src",
                    &o.home_address.to_string(),
                ])?;
            }
            Some(fd)
        }
        None => None,
    };
    let outer_sock = match &outer {
        Some(_) => {
            let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
            s.set_nonblocking(true)?;
            Some(s)
        }
        None => None,
    };
    let vpn = a.swanctl_uri.as_ref().map(|uri| {
        Vpn::new(
            uri.clone(),
            a.strongswan_conf.clone(),
            a.vpn_conn.clone(),
            a.vpn_child.clone(),
        )
    });
    let mut node = Node {
        core,
        intra,
        mob,
        outer_sock,
        direct_sock: None,
        tia_sock: None,
        status: Status {
            variant: match variant {
                Variant::Seed000 => "seed000".into(),
                Variant::Mc => "mc".into(),
            },
            ..Status::default()
        },
        dirty: true,
        last_keepalive: [None; 3],
        ka_seq: 0,
    };
    println!(
        "dual-mn up: {variant:?}, adapters {INTRA_DEV}{}",
        if node.mob.is_some() { " mob0" } else { "" }
    );

    let mut attached: Option<(String, Ipv4Addr)> = None;
    let mut tia: Option<Ipv4Addr> = None;
    let mut next_poll = Instant::now();
    let mut next_status = Instant::now();
    let mut buf = vec![0u8; 65_536];
    loop {
        let now_i = Instant::now();
        if now_i >= next_poll {
            next_poll = now_i + POLL_EVERY;
            let att = attachment();
            if att != attached {
                println!("attachment {att:?} (was {attached:?})");
                node.direct_sock = match &att {
                    Some((dev, addr)) => {
                        match direct_socket(dev, *addr, node.core.home_agent(Path::InnerDirect)) {
                            Ok(s) => Some(s),
                            Err(e) => {
                                println!("direct socket on {dev}/{addr}: {e}");
                                None
                            }
                        }
                    }
                    None => None,
                };
                node.last_keepalive = [None; 3];
                node.core.attach(unix_now(), att.as_ref().map(|x| x.1));
                node.status.attaches += 1;
                node.status.phys_dev = att.as_ref().map(|x| x.0.clone());
                attached = att;
                node.dirty = true;
                node.flush(vpn.as_ref());
            }
            if vpn.is_some() {
                let t = addrs_on(&a.vpn_dev).into_iter().next();
                if t != tia {
                    println!("vpn: TIA {t:?} (was {tia:?})");
                    tia = t;
                    node.tia_sock = t.and_then(|t| {
                        let s = UdpSocket::bind(SocketAddrV4::new(t, 0)).ok()?;
                        s.set_nonblocking(true).ok()?;
                        Some(s)
                    });
                    match t {
                        Some(t) => node.core.vpn_up(unix_now(), t),
                        None => node.core.vpn_down(unix_now()),
                    }
                    node.dirty = true;
                    node.flush(vpn.as_ref());
                }
            }
        }
        let now = unix_now();
        if node.core.poll_timeout().is_some_and(|t| now >= t) {
            node.core.handle_timeout(now);
            node.dirty = true;
            node.flush(vpn.as_ref());
        }
        node.keepalives(now);
        if node.dirty || Instant::now() >= next_status {
            node.refresh_status();
            if let Some(v) = &vpn {
                node.status.vpn_initiates = v.stats.initiates.load(Ordering::Relaxed);
                node.status.vpn_initiate_failures = v.stats.failures.load(Ordering::Relaxed);
            }
            if let Err(e) = node.status.write(&a.status) {
                println!("status {}: {e}", a.status.display());
            }
            node.dirty = false;
            next_status = Instant::now() + STATUS_EVERY;
        }

        // Wait for packets, a timer, or the next poll.
        let mut wait = next_poll.saturating_duration_since(Instant::now());
        if let Some(t) = node.core.poll_timeout() {
            wait = wait.min(t.saturating_sub(unix_now()));
        }
        let mut fds: Vec<(libc::pollfd, u8)> = Vec::with_capacity(5);
        let mut add = |fd: i32, tag: u8| {
            fds.push((
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                tag,
            ));
        };
        add(node.intra.as_raw_fd(), 0);
        if let Some(m) = &node.mob {
            add(m.as_raw_fd(), 1);
        }
        if let Some(s) = &node.outer_sock {
            add(s.as_raw_fd(), 2);
        }
        if let Some(s) = &node.direct_sock {
            add(s.as_raw_fd(), 3);
        }
        if let Some(s) = &node.tia_sock {
            add(s.as_raw_fd(), 4);
        }
        let mut pfds: Vec<libc::pollfd> = fds.iter().map(|f| f.0).collect();
        let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: `pfds` is a live, exclusively borrowed array of pollfd of
        // the given length.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if rc <= 0 {
            continue;
        }
        for (p, (_, tag)) in pfds.iter().zip(&fds) {
            if p.revents == 0 {
                continue;
            }
            match tag {
                0 => node.on_adapter(false, &mut buf),
                1 => node.on_adapter(true, &mut buf),
                2 => node.on_socket(Path::Outer, &mut buf, vpn.as_ref()),
                3 => node.on_socket(Path::InnerDirect, &mut buf, vpn.as_ref()),
                _ => node.on_socket(Path::InnerTia, &mut buf, vpn.as_ref()),
            }
        }
    }
}
