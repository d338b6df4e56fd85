//! # The dual mobile node end to end on a lab (issue 8)
//!
//! The rig of `tests/dual_client.rs`, as a library so the chaos scenarios
//! run the same full mobile node and the same correspondent streams while
//! they kill nodes and dispatchers:
//!
//! * [`DualRig`]: on a lab with the two-cluster site's host names
//!   (`crate::site`: `mn`, `nat1`, `nat2`, `irtr`, `gw`, `cn`, ...), the
//!   strongSwan gateway in `gw` (its public leg only, `interfaces_use`), the
//!   strongSwan client, the `dual-mn` binary and the application's UDP echo
//!   in `mn`, with the addresses, SPIs and keys of the site plan
//!   ([`RigOptions::site`]). [`DualRig::move_to`] moves the node between
//!   the access networks ([`Access`]) the way an interface change does (new
//!   address, default route, old address last); [`DualRig::step`] moves,
//!   waits for the expected mode and for both streams to resume, and
//!   measures the gaps ([`MoveResult`]).
//! * [`Streams`]: the correspondent (`cn`) sends a UDP datagram every 10 ms
//!   to the echo on the inner home address and holds one TCP connection to
//!   it, writing 8-octet counters every 10 ms and checking the echoed stream
//!   octet for octet; every arrival is timestamped, so the gap of any event
//!   is [`Streams::gaps_after`].
//!
//! Every wait is bounded ([`RigOptions::bound`]); a failed wait returns
//! [`E2eError::Wait`] with the node's status and the tails of the dual-mn
//! and charon logs, so a failing test shows why.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::dual::{Path, Status, Variant};
use crate::supervisor::{Process, Spec, SupError, wait_for, workspace_binary};
use crate::topo::{Lab, TopoError, in_netns};
use crate::vpn::{self, ClientConfig, GatewayConfig, IkeSa, VpnClient, VpnError, VpnGateway};

use crate::site::plan;

/// UDP port of the application's echo on the inner home address.
pub const UDP_PORT: u16 = 7777;
/// TCP port of the application's echo on the inner home address.
pub const TCP_PORT: u16 = 7000;
/// Replies wanted on both streams after a move before its gap is measured.
pub const RESUMED: usize = 30;

/// What the rig and the streams fail with.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// The lab (a command in a namespace).
    #[error(transparent)]
    Topo(#[from] TopoError),
    /// Starting or waiting on a process.
    #[error(transparent)]
    Sup(#[from] SupError),
    /// strongSwan.
    #[error(transparent)]
    Vpn(#[from] VpnError),
    /// A host or interface the rig needs is not in the lab.
    #[error("the lab has no {0}")]
    Lab(String),
    /// A command in a namespace of the lab failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A bounded wait on the rig ended without its condition.
    #[error("timed out after {bound:?} waiting for {what}\nstatus: {status}\n{logs}")]
    Wait {
        /// The condition.
        what: String,
        /// The bound.
        bound: Duration,
        /// The node's last status.
        status: String,
        /// Log tails (dual-mn, the client's charon).
        logs: String,
    },
    /// The correspondent's streams: a connection error, corruption, a
    /// bounded wait for replies that did not come, a thread that died.
    #[error("streams: {0}")]
    Stream(String),
    /// Writing the rig's files.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The mobile node's access networks (the site plan: two NATed outside
/// networks and the inside access network behind `irtr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Outside behind `nat1` (the node's start).
    Nat1,
    /// Outside behind `nat2`.
    Nat2,
    /// Inside, behind `irtr`.
    Inside,
}

impl Access {
    /// The host at the other end of the node's leg.
    pub fn peer(self) -> &'static str {
        match self {
            Access::Nat1 => "nat1",
            Access::Nat2 => "nat2",
            Access::Inside => "irtr",
        }
    }

    /// The node's address on it.
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Access::Nat1 => plan::MN_NAT1,
            Access::Nat2 => plan::MN_NAT2,
            Access::Inside => plan::MN_INSIDE,
        }
    }

    /// Its default gateway.
    pub fn gateway(self) -> Ipv4Addr {
        match self {
            Access::Nat1 => plan::NAT1_INSIDE,
            Access::Nat2 => plan::NAT2_INSIDE,
            Access::Inside => plan::INSIDE_GW,
        }
    }

    fn cidr(self) -> String {
        format!("{}/24", self.addr())
    }

    /// Whether it is outside the security boundary.
    pub fn outside(self) -> bool {
        self != Access::Inside
    }

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Access::Nat1 => "outside NAT1",
            Access::Nat2 => "outside NAT2",
            Access::Inside => "inside",
        }
    }
}

/// What the rig runs with. [`RigOptions::site`] is the two-cluster site's
/// plan; the fields let a test point the rig at another lab.
#[derive(Debug, Clone)]
pub struct RigOptions {
    /// Seed 000 or 'mc'.
    pub variant: Variant,
    /// The inner home agent (the inner cluster's VIP).
    pub inner_ha: Ipv4Addr,
    /// The inner home address.
    pub inner_hoa: Ipv4Addr,
    /// SPI of the inner MN-HA security association.
    pub inner_spi: u32,
    /// Its key (the home agents hold the same).
    pub inner_key: Vec<u8>,
    /// The outer home agent (seed 000).
    pub outer_ha: Ipv4Addr,
    /// The outer home address.
    pub outer_hoa: Ipv4Addr,
    /// SPI of the outer MN-HA security association.
    pub outer_spi: u32,
    /// Its key.
    pub outer_key: Vec<u8>,
    /// The correspondent node (for capture checks).
    pub cn: Ipv4Addr,
    /// The VPN gateway's public address.
    pub gateway: Ipv4Addr,
    /// The host or switch `gw`'s public leg points at (charon uses only
    /// that interface, so MOBIKE never offers the intranet address).
    pub gateway_public_peer: String,
    /// The VPN's traffic selector (the intranet).
    pub traffic_selector: String,
    /// The TIA pool.
    pub tia_pool: String,
    /// The bound of each wait on the rig.
    pub bound: Duration,
    /// The direct inner registration's window, ms (dual-mn's
    /// `--probe-window-ms`).
    pub probe_window_ms: u64,
    /// A test of the node's retries: the gateway starts with another
    /// pre-shared key than the client's, so every initiation fails
    /// (AUTHENTICATION_FAILED) until [`DualRig::fix_gateway`] loads the
    /// right one. Default false.
    pub gateway_wrong_key: bool,
    /// Routers whose ICMP rate limit the rig lifts (`net.ipv4.icmp_ratelimit
    /// = 0` in their namespaces; default `inet`). The direct inner
    /// registration from outside is answered by `inet`'s network
    /// unreachable (no route into the intranet), which decides "outside"
    /// at once (seed 000's ICMP conjecture). Linux limits those per
    /// destination host, and `ip_error` (the no-route path) and
    /// `icmp_send` each take a token from the same per-host bucket (burst
    /// 5-6 s, one token a second), so behind one NAT address a third or
    /// fourth move within seconds got no ICMP (`IcmpOutRateLimitHost`
    /// counts them in inet; the mobile node's `IcmpInMsgs` stays flat) and
    /// fell back to the probe window. A real router limits too (RFC 1812
    /// § 4.3.2.8), so the window stays; the lab wants the decision
    /// deterministic. `ip_error`'s own limit (burst 5, then 1/s) remains.
    pub icmp_unlimited: Vec<String>,
    /// The `dual-mn` binary (default: the workspace's).
    pub dual_mn: Option<PathBuf>,
    /// The `udp-echo` binary (default: the workspace's).
    pub udp_echo: Option<PathBuf>,
}

impl RigOptions {
    /// The two-cluster site's plan (`crate::site::plan`).
    pub fn site(variant: Variant) -> RigOptions {
        RigOptions {
            variant,
            inner_ha: plan::INNER_VIP,
            inner_hoa: plan::INNER_HOA,
            inner_spi: plan::INNER_SPI,
            inner_key: plan::DUAL_INNER_KEY.to_vec(),
            outer_ha: plan::OUTER_VIP,
            outer_hoa: plan::OUTER_HOA,
            outer_spi: plan::OUTER_SPI,
            outer_key: plan::DUAL_OUTER_KEY.to_vec(),
            cn: plan::CN,
            gateway: plan::GATEWAY,
            gateway_public_peer: "dmz".into(),
            traffic_selector: plan::INTRANET_TS.into(),
            tia_pool: plan::TIA_POOL.into(),
            bound: Duration::from_secs(15),
            probe_window_ms: 1500,
            gateway_wrong_key: false,
            icmp_unlimited: vec!["inet".into()],
            dual_mn: None,
            udp_echo: None,
        }
    }
}

/// One move as measured by [`DualRig::step`].
#[derive(Debug, Clone)]
pub struct MoveResult {
    /// "outside NAT1 -> outside NAT2" and the like.
    pub name: String,
    /// dual-mn's domain decision after the address change (ms).
    pub decided_ms: Option<u64>,
    /// The longest silence of the UDP stream from the move on.
    pub udp: Duration,
    /// The longest silence of the TCP stream from the move on.
    pub tcp: Duration,
    /// The node's status once the move was complete.
    pub status: Status,
}

/// The full dual mobile node, its VPN and the application's echo, on a lab.
/// Dropping it stops them (SIGKILL); the lab stays.
#[derive(Debug)]
pub struct DualRig {
    // Field order: the processes go first (the client's charon before the
    // gateway's).
    mn: Process,
    echo: Process,
    client: VpnClient,
    gateway: VpnGateway,
    /// The gateway's configuration with the client's key.
    gateway_cfg: GatewayConfig,
    status: PathBuf,
    mn_ns: String,
    /// The node's interfaces, by access network.
    ifaces: BTreeMap<&'static str, String>,
    at: Access,
    opts: RigOptions,
}

fn lab_iface(lab: &Lab, host: &str, peer: &str) -> Result<String, E2eError> {
    lab.iface(host, peer)
        .map(str::to_owned)
        .ok_or_else(|| E2eError::Lab(format!("interface {host}->{peer}")))
}

fn lab_ns(lab: &Lab, host: &str) -> Result<String, E2eError> {
    lab.ns_name(host)
        .map(str::to_owned)
        .ok_or_else(|| E2eError::Lab(format!("host {host}")))
}

/// Whether `s` shows the node settled on `a` (variant `v`): the physical
/// address, the mode, and the bindings that mode needs (seed 000 outside:
/// the outer binding on the physical address and the inner one on the TIA;
/// 'mc' outside: no outer binding, the inner one on the TIA; inside: the
/// inner binding on the physical address).
pub fn settled(v: Variant, a: Access, s: &Status) -> bool {
    let tia_binding =
        s.inner_path == Some(Path::InnerTia) && s.tia.is_some() && s.inner_coa == s.tia;
    s.phys == Some(a.addr())
        && match (a.outside(), v) {
            (false, _) => {
                s.mode == "inside"
                    && s.inner_path == Some(Path::InnerDirect)
                    && s.inner_coa == Some(a.addr())
            }
            (true, Variant::Seed000) => {
                s.mode == "outside" && s.outer_coa == Some(a.addr()) && tia_binding
            }
            (true, Variant::Mc) => s.mode == "outside" && s.outer_coa.is_none() && tia_binding,
        }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl DualRig {
    /// Starts the rig on `lab` with the site plan ([`RigOptions::site`]);
    /// the node is on NAT1 (the site leaves its other legs without
    /// addresses). The status file goes into `dir`. Returns once dual-mn
    /// is up (see [`DualRig::wait_ready`] for the first decision).
    ///
    /// # Errors
    /// A missing host or interface, strongSwan not starting, a binary
    /// that cannot be built or spawned.
    pub fn start(lab: &Lab, variant: Variant, dir: &FsPath) -> Result<DualRig, E2eError> {
        Self::start_with(lab, &RigOptions::site(variant), dir)
    }

    /// [`DualRig::start`] with explicit options.
    ///
    /// # Errors
    /// As [`DualRig::start`].
    pub fn start_with(lab: &Lab, opts: &RigOptions, dir: &FsPath) -> Result<DualRig, E2eError> {
        let mn_ns = lab_ns(lab, "mn")?;
        let gw_ns = lab_ns(lab, "gw")?;
        let mut ifaces = BTreeMap::new();
        for a in [Access::Nat1, Access::Nat2, Access::Inside] {
            ifaces.insert(a.peer(), lab_iface(lab, "mn", a.peer())?);
        }
        let dual_mn = match &opts.dual_mn {
            Some(p) => p.clone(),
            None => workspace_binary("haven-cluster-tests", "dual-mn")?,
        };
        let udp_echo = match &opts.udp_echo {
            Some(p) => p.clone(),
            None => workspace_binary("haven-cluster-tests", "udp-echo")?,
        };

        for host in &opts.icmp_unlimited {
            let out = lab.exec(host, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])?;
            if !out.status.success() {
                return Err(E2eError::Command {
                    cmd: format!("sysctl net.ipv4.icmp_ratelimit=0 in {host}"),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
        // A fresh pre-shared key per rig (test-only, never stored).
        let psk = vpn::test_psk()?;
        let mut gcfg = GatewayConfig::lab(&psk);
        if opts.gateway_wrong_key {
            gcfg.psk_hex = vpn::test_psk()?;
        }
        gcfg.local_addr = opts.gateway;
        gcfg.interface = Some(lab_iface(lab, "gw", &opts.gateway_public_peer)?);
        gcfg.local_ts = opts.traffic_selector.clone();
        gcfg.pool = opts.tia_pool.clone();
        // The node re-connects with a new IKE SA after an inside phase:
        // the stale one (and its TIA lease) goes at once.
        gcfg.unique = Some("replace".into());
        let gateway = VpnGateway::start(&gw_ns, &gcfg)?;
        gcfg.psk_hex = psk.clone();

        let mut ccfg = ClientConfig::lab(&psk);
        ccfg.gateway = opts.gateway;
        ccfg.remote_ts = opts.traffic_selector.clone();
        let use_ifaces = match opts.variant {
            // The VPN lives on the mobility adapter (outer home address);
            // no NAT stands in front of it, so ESP in UDP is forced
            // (kernel-libipsec does ESP in UDP only).
            Variant::Seed000 => {
                ccfg.encap = true;
                "mob0".to_owned()
            }
            // 'mc': the VPN on the outside legs; MOBIKE follows moves.
            Variant::Mc => format!("{},{}", ifaces["nat1"], ifaces["nat2"]),
        };
        let client = VpnClient::start_on(&mn_ns, &ccfg, Some(&use_ifaces))?;

        let status = dir.join("dual-status.json");
        // A status file of an earlier rig in the same directory must not
        // count as this one's.
        let _ = std::fs::remove_file(&status);
        let mut spec = Spec::new(dual_mn)
            .args(["--inner-ha", &opts.inner_ha.to_string()])
            .args(["--inner-hoa", &opts.inner_hoa.to_string()])
            .args(["--inner-spi", &opts.inner_spi.to_string()])
            .args(["--swanctl-uri", &client.charon().vici_uri()])
            .args(["--probe-window-ms", &opts.probe_window_ms.to_string()])
            .arg("--strongswan-conf")
            .arg(client.charon().conf_path())
            .arg("--status")
            .arg(&status)
            .env("DUAL_MN_INNER_KEY", hex::encode(&opts.inner_key));
        spec = match opts.variant {
            Variant::Seed000 => spec
                .args(["--variant", "seed000"])
                .args(["--outer-ha", &opts.outer_ha.to_string()])
                .args(["--outer-hoa", &opts.outer_hoa.to_string()])
                .args(["--outer-spi", &opts.outer_spi.to_string()])
                .args(["--gateway", &opts.gateway.to_string()])
                .env("DUAL_MN_OUTER_KEY", hex::encode(&opts.outer_key)),
            Variant::Mc => spec.args(["--variant", "mc"]),
        };
        let mut mn = Process::spawn("dual-mn", spec, Some(&mn_ns))?;
        let up = wait_for("dual-mn's status file", opts.bound, || {
            Status::read(&status).is_some() || !mn.is_running()
        });
        if up.is_err() || !mn.is_running() {
            return Err(E2eError::Wait {
                what: "dual-mn up".into(),
                bound: opts.bound,
                status: "-".into(),
                logs: format!("dual-mn log:\n{}", mn.log_tail(40)),
            });
        }
        // The application: a UDP echo on the inner home address (the
        // intranet adapter holds it now).
        let echo = Process::spawn(
            "udp-echo-mn",
            Spec::new(udp_echo)
                .arg("serve")
                .arg(SocketAddrV4::new(opts.inner_hoa, UDP_PORT).to_string()),
            Some(&mn_ns),
        )?;
        Ok(DualRig {
            mn,
            echo,
            client,
            gateway,
            gateway_cfg: gcfg,
            status,
            mn_ns,
            ifaces,
            at: Access::Nat1,
            opts: opts.clone(),
        })
    }

    /// The options it runs with.
    pub fn options(&self) -> &RigOptions {
        &self.opts
    }

    /// Where the node is attached now.
    pub fn access(&self) -> Access {
        self.at
    }

    /// The node's interface towards an access network.
    pub fn iface(&self, a: Access) -> &str {
        self.ifaces.get(a.peer()).map_or("", String::as_str)
    }

    /// The mobile node's namespace.
    pub fn mn_netns(&self) -> &str {
        &self.mn_ns
    }

    /// dual-mn's last status (the default while none was written).
    pub fn status(&self) -> Status {
        Status::read(&self.status).unwrap_or_default()
    }

    /// The tails of dual-mn's, the echo's and both charons' logs.
    pub fn logs(&self) -> String {
        format!(
            "dual-mn log:\n{}\nudp-echo log:\n{}\nclient charon log:\n{}\ngateway charon log:\n{}",
            self.mn.log_tail(40),
            self.echo.log_tail(5),
            tail(&self.client.charon().log(), 30),
            tail(&self.gateway.charon().log(), 15),
        )
    }

    /// dual-mn's own account of the run: attachments, decisions, VPN calls.
    pub fn mn_summary(&self) -> String {
        self.mn
            .log()
            .lines()
            .filter(|l| {
                ["attachment", "decided", "vpn:", "direct path"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (bounded) until the status satisfies `pred`; returns it.
    ///
    /// # Errors
    /// [`E2eError::Wait`] with the status and the logs' tails.
    pub fn wait(&mut self, what: &str, pred: impl Fn(&Status) -> bool) -> Result<Status, E2eError> {
        let bound = self.opts.bound;
        let mut dead = false;
        let r = wait_for(what, bound, || {
            dead = !self.mn.is_running();
            dead || pred(&self.status())
        });
        if r.is_err() || dead {
            return Err(E2eError::Wait {
                what: if dead {
                    format!("{what} (dual-mn exited)")
                } else {
                    what.to_owned()
                },
                bound,
                status: format!("{:?}", self.status()),
                logs: self.logs(),
            });
        }
        Ok(self.status())
    }

    /// What the status must show once the node is settled on `a`.
    pub fn settled_on(&self, a: Access, s: &Status) -> bool {
        settled(self.opts.variant, a, s)
    }

    /// Waits for the first decision: settled on the access network the node
    /// starts on (NAT1: outside, the inner binding on the TIA).
    ///
    /// # Errors
    /// [`E2eError::Wait`].
    pub fn wait_ready(&mut self) -> Result<Status, E2eError> {
        let (a, v) = (self.at, self.opts.variant);
        self.wait(&format!("settled on {}", a.name()), |s| settled(v, a, s))
    }

    fn ip(&self, args: &[&str]) -> Result<(), E2eError> {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.mn_ns])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| E2eError::Io {
                what: format!("ip {args:?}"),
                source,
            })?;
        if !out.status.success() {
            return Err(E2eError::Command {
                cmd: format!("ip {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Moves the node to `to`: the new address and default route first,
    /// the old address last (as a real interface change does; charon's
    /// MOBIKE needs an address to move to before the old one goes).
    ///
    /// # Errors
    /// An `ip` command failing.
    pub fn move_to(&mut self, to: Access) -> Result<(), E2eError> {
        if to == self.at {
            return Ok(());
        }
        let from = self.at;
        let (e_new, e_old) = (self.iface(to).to_owned(), self.iface(from).to_owned());
        self.ip(&["addr", "add", &to.cidr(), "dev", &e_new])?;
        self.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &to.gateway().to_string(),
        ])?;
        self.ip(&["addr", "del", &from.cidr(), "dev", &e_old])?;
        self.at = to;
        Ok(())
    }

    /// One measured move: [`move_to`](Self::move_to), then (bounded) the
    /// node settled on `to` after a new attachment ('mc': the IKE SA moved
    /// there too, the TIA unchanged), then [`RESUMED`] replies on both
    /// streams; the gaps are measured from the move.
    ///
    /// # Errors
    /// [`E2eError::Wait`] / [`E2eError::Stream`].
    pub fn step(&mut self, to: Access, streams: &Streams) -> Result<MoveResult, E2eError> {
        let name = format!("{} -> {}", self.at.name(), to.name());
        let before = self.status();
        let t = Instant::now();
        self.move_to(to)?;
        let v = self.opts.variant;
        let bound = self.opts.bound;
        let last = self.wait(&name, |s| s.attaches > before.attaches && settled(v, to, s))?;
        if self.opts.variant == Variant::Mc {
            // MOBIKE moved the SA; the TIA, and so the inner binding, stayed.
            self.client.wait_local_addr(to.addr(), bound)?;
            if before.tia.is_some() && last.tia != before.tia {
                return Err(E2eError::Stream(format!(
                    "{name}: the TIA changed from {:?} to {:?} (MOBIKE keeps it)",
                    before.tia, last.tia
                )));
            }
        }
        streams.wait_more(&name, RESUMED, bound)?;
        let (udp, tcp) = streams.gaps_after(t);
        Ok(MoveResult {
            name,
            decided_ms: last.last_decision_ms,
            udp,
            tcp,
            status: last,
        })
    }

    /// Loads the client's key into the gateway (after
    /// [`RigOptions::gateway_wrong_key`]).
    ///
    /// # Errors
    /// swanctl failing.
    pub fn fix_gateway(&self) -> Result<(), E2eError> {
        Ok(self.gateway.reload(&self.gateway_cfg)?)
    }

    /// The client's established IKE SA.
    ///
    /// # Errors
    /// swanctl failing.
    pub fn ike_sa(&self) -> Result<Option<IkeSa>, E2eError> {
        Ok(self.client.established()?)
    }

    /// The VPN client.
    pub fn client(&self) -> &VpnClient {
        &self.client
    }

    /// The VPN gateway.
    pub fn gateway(&self) -> &VpnGateway {
        &self.gateway
    }

    /// CPU time dual-mn has used so far (user + system, from
    /// `/proc/PID/stat`); `None` when it is not running. A node waiting on
    /// poll(2) uses little; a descriptor that stays ready (an undrained
    /// socket error queue) shows here as a busy loop.
    pub fn mn_cpu(&self) -> Option<Duration> {
        let pid = self.mn.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name: state is field 3,
        // utime 14 and stime 15 (proc(5)).
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
        Some(Duration::from_millis(ticks * 1000 / hz))
    }

    /// The dual-mn process (to SIGKILL it, read its log).
    pub fn mn_process(&mut self) -> &mut Process {
        &mut self.mn
    }
}

/// What came back on the correspondent's streams, and when.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Each UDP echo's arrival.
    pub udp: Vec<Instant>,
    /// Each TCP read's arrival.
    pub tcp: Vec<Instant>,
    /// Octets echoed and checked on the TCP connection.
    pub tcp_bytes: u64,
    /// The first TCP error (connect, write, read, EOF, corruption).
    pub tcp_error: Option<String>,
    /// Whether the TCP connection was established.
    pub tcp_connected: bool,
    /// An error of the UDP stream's socket.
    pub udp_error: Option<String>,
    /// An error of the mobile node's TCP server.
    pub server_error: Option<String>,
}

/// The correspondent's UDP stream and TCP connection to the inner home
/// address (threads in `cn` and the TCP echo server in `mn`).
#[derive(Debug)]
pub struct Streams {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn lock(m: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long the TCP connect may take.
const CONNECT_BOUND: Duration = Duration::from_secs(15);

impl Streams {
    /// Starts both streams from `cn` to the site's inner home address.
    ///
    /// # Errors
    /// A missing host, or the TCP server not listening.
    pub fn start(lab: &Lab) -> Result<Streams, E2eError> {
        Self::start_to(lab, plan::INNER_HOA)
    }

    /// Both streams from `cn` to `hoa` (the echo of [`DualRig`] and a TCP
    /// echo server this starts in `mn`).
    ///
    /// # Errors
    /// As [`Streams::start`].
    pub fn start_to(lab: &Lab, hoa: Ipv4Addr) -> Result<Streams, E2eError> {
        let cn_ns = lab_ns(lab, "cn")?;
        let mn_ns = lab_ns(lab, "mn")?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut s = Streams {
            seen: seen.clone(),
            stop: stop.clone(),
            threads: vec![],
        };
        // The server first: the correspondent connects to it.
        let ready = Arc::new(AtomicBool::new(false));
        s.threads.push(tcp_server(
            mn_ns,
            hoa,
            ready.clone(),
            stop.clone(),
            seen.clone(),
        ));
        let up = wait_for("the TCP server listening", CONNECT_BOUND, || {
            ready.load(Ordering::SeqCst) || lock(&seen).server_error.is_some()
        });
        if let Some(e) = lock(&seen).server_error.clone() {
            return Err(E2eError::Stream(format!("TCP server: {e}")));
        }
        up?;
        s.threads
            .push(udp_client(cn_ns.clone(), hoa, stop.clone(), seen.clone()));
        s.threads.push(tcp_client(cn_ns, hoa, stop, seen));
        Ok(s)
    }

    /// Replies so far (UDP, TCP).
    pub fn counts(&self) -> (usize, usize) {
        let s = lock(&self.seen);
        (s.udp.len(), s.tcp.len())
    }

    /// A copy of what was seen so far.
    pub fn snapshot(&self) -> Seen {
        lock(&self.seen).clone()
    }

    /// Whether the TCP connection is still sound (non-consuming): `Err`
    /// once it failed (error, EOF, corruption) or a stream thread died.
    ///
    /// # Errors
    /// The first failure.
    pub fn alive(&self) -> Result<(), String> {
        let s = lock(&self.seen);
        if let Some(e) = &s.tcp_error {
            return Err(format!("TCP: {e}"));
        }
        if let Some(e) = &s.server_error {
            return Err(format!("TCP server: {e}"));
        }
        if let Some(e) = &s.udp_error {
            return Err(format!("UDP: {e}"));
        }
        drop(s);
        if self.threads.iter().any(JoinHandle::is_finished) && !self.stop.load(Ordering::Relaxed) {
            return Err("a stream thread ended".into());
        }
        Ok(())
    }

    /// Waits (within `bound`) for `n` more replies on both streams.
    ///
    /// # Errors
    /// [`E2eError::Stream`] on a timeout or a broken connection.
    pub fn wait_more(&self, what: &str, n: usize, bound: Duration) -> Result<(), E2eError> {
        let (u0, t0) = self.counts();
        let r = wait_for(what, bound, || {
            let (u, t) = self.counts();
            (u >= u0 + n && t >= t0 + n) || self.alive().is_err()
        });
        self.alive()
            .map_err(|e| E2eError::Stream(format!("{what}: {e}")))?;
        if r.is_err() {
            let s = lock(&self.seen);
            return Err(E2eError::Stream(format!(
                "{what}: not {n} more replies within {bound:?} (udp {} -> {}, tcp {} -> {}, {} octets)",
                u0,
                s.udp.len(),
                t0,
                s.tcp.len(),
                s.tcp_bytes
            )));
        }
        Ok(())
    }

    /// The longest silence on each stream after `from` (UDP, TCP),
    /// counting up to the last arrival.
    pub fn gaps_after(&self, from: Instant) -> (Duration, Duration) {
        let s = lock(&self.seen);
        let gap = |v: &[Instant]| {
            let mut last = from;
            let mut g = Duration::ZERO;
            for &t in v.iter().filter(|t| **t >= from) {
                g = g.max(t - last);
                last = t;
            }
            g
        };
        (gap(&s.udp), gap(&s.tcp))
    }

    /// Stops the streams and returns what was seen.
    ///
    /// # Errors
    /// [`E2eError::Stream`] if a thread panicked.
    pub fn finish(mut self) -> Result<Seen, E2eError> {
        self.stop.store(true, Ordering::Relaxed);
        let mut panicked = false;
        for t in self.threads.drain(..) {
            panicked |= t.join().is_err();
        }
        if panicked {
            return Err(E2eError::Stream("a stream thread panicked".into()));
        }
        Ok(lock(&self.seen).clone())
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn set_error(seen: &Mutex<Seen>, which: fn(&mut Seen) -> &mut Option<String>, e: String) {
    let mut s = lock(seen);
    let slot = which(&mut s);
    if slot.is_none() {
        *slot = Some(e);
    }
}

/// A read that found nothing within its timeout (not an error).
fn read_timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Records how one end of the TCP connection finished (run in namespace
/// `ns`) in `which`. At the end both sides stop at their own pace: the
/// other side's close after `stop` is no failure.
fn tcp_end(
    r: std::io::Result<Result<(), String>>,
    stopped: &AtomicBool,
    seen: &Mutex<Seen>,
    which: fn(&mut Seen) -> &mut Option<String>,
    ns: &str,
) {
    match r {
        Ok(Ok(())) => {}
        Ok(Err(_)) if stopped.load(Ordering::Relaxed) => {}
        Ok(Err(e)) => set_error(seen, which, e),
        Err(e) => set_error(seen, which, format!("enter {ns}: {e}")),
    }
}

/// The mobile node's TCP echo server on the inner home address: one
/// connection, never re-accepted (a second connection would hide a broken
/// first one).
fn tcp_server(
    mn_ns: String,
    hoa: Ipv4Addr,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let seen2 = seen.clone();
        let stopped = stop.clone();
        let r = in_netns(&mn_ns, move || -> Result<(), String> {
            let l = TcpListener::bind(SocketAddrV4::new(hoa, TCP_PORT))
                .map_err(|e| format!("listen on {hoa}:{TCP_PORT}: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            ready.store(true, Ordering::SeqCst);
            let mut conn = loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                match l.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Accept readiness, not a timed wait on a result.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            conn.set_nonblocking(false).map_err(|e| e.to_string())?;
            conn.set_read_timeout(Some(Duration::from_millis(20)))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                match conn.read(&mut buf) {
                    Ok(0) => return Err("the correspondent closed".into()),
                    Ok(n) => conn
                        .write_all(&buf[..n])
                        .map_err(|e| format!("write: {e}"))?,
                    Err(e) if read_timed_out(&e) => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            Ok(())
        });
        tcp_end(r, &stopped, &seen2, |s| &mut s.server_error, "mn");
    })
}

/// The correspondent's UDP stream: a datagram every 10 ms to the echo,
/// each echo ("from ...") timestamped.
fn udp_client(
    cn_ns: String,
    hoa: Ipv4Addr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let seen2 = seen.clone();
        let r = in_netns(&cn_ns, move || -> Result<(), String> {
            let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_millis(10)))
                .map_err(|e| e.to_string())?;
            let dst = SocketAddrV4::new(hoa, UDP_PORT);
            let mut buf = [0u8; 2048];
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A send error (no route for a moment) is a gap, not an end.
                let _ = s.send_to(format!("udp {seq}").as_bytes(), dst);
                seq += 1;
                while let Ok((n, _)) = s.recv_from(&mut buf) {
                    if buf[..n].starts_with(b"from ") {
                        lock(&seen).udp.push(Instant::now());
                    }
                }
            }
            Ok(())
        });
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => set_error(&seen2, |s| &mut s.udp_error, e),
            Err(e) => set_error(&seen2, |s| &mut s.udp_error, format!("enter cn: {e}")),
        }
    })
}

/// The correspondent's TCP connection: 8-octet counters every 10 ms, the
/// echoed stream checked octet for octet.
fn tcp_client(
    cn_ns: String,
    hoa: Ipv4Addr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let seen2 = seen.clone();
        let stopped = stop.clone();
        let r = in_netns(&cn_ns, move || -> Result<(), String> {
            let dst = SocketAddrV4::new(hoa, TCP_PORT);
            let mut c = TcpStream::connect_timeout(&dst.into(), CONNECT_BOUND)
                .map_err(|e| format!("connect {dst}: {e}"))?;
            lock(&seen).tcp_connected = true;
            c.set_read_timeout(Some(Duration::from_millis(10)))
                .map_err(|e| e.to_string())?;
            let mut sent = 0u64;
            let mut want = 0u64;
            let mut buf = [0u8; 4096];
            let mut pending: Vec<u8> = vec![];
            while !stop.load(Ordering::Relaxed) {
                c.write_all(&sent.to_be_bytes())
                    .map_err(|e| format!("write: {e}"))?;
                sent += 1;
                match c.read(&mut buf) {
                    Ok(0) => return Err("EOF".into()),
                    Ok(n) => {
                        pending.extend_from_slice(&buf[..n]);
                        let whole = pending.len() / 8 * 8;
                        for ch in pending[..whole].chunks_exact(8) {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(ch);
                            let v = u64::from_be_bytes(b);
                            if v != want {
                                return Err(format!("stream corrupt: got {v}, want {want}"));
                            }
                            want += 1;
                        }
                        pending.drain(..whole);
                        let mut s = lock(&seen);
                        s.tcp.push(Instant::now());
                        s.tcp_bytes += n as u64;
                    }
                    Err(e) if read_timed_out(&e) => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            Ok(())
        });
        tcp_end(r, &stopped, &seen2, |s| &mut s.tcp_error, "cn");
    })
}

/// Prints a move table (decision, UDP gap, TCP gap per move).
pub fn move_table(moves: &[MoveResult]) -> String {
    let mut s =
        String::from("move                            | decided after | UDP gap      | TCP gap\n");
    for m in moves {
        s.push_str(&format!(
            "{:<31} | {:>10} ms | {:>12?} | {:?}\n",
            m.name,
            m.decided_ms.map_or("-".into(), |d| d.to_string()),
            m.udp,
            m.tcp
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIA: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);

    fn outside(a: Access, outer: Option<Ipv4Addr>) -> Status {
        Status {
            mode: "outside".into(),
            phys: Some(a.addr()),
            tia: Some(TIA),
            outer_coa: outer,
            inner_path: Some(Path::InnerTia),
            inner_coa: Some(TIA),
            ..Status::default()
        }
    }

    #[test]
    fn settled_needs_every_binding_of_the_mode() {
        let s = outside(Access::Nat2, Some(plan::MN_NAT2));
        assert!(settled(Variant::Seed000, Access::Nat2, &s));
        // Not where it was asked to go, or the outer binding still on the
        // old address.
        assert!(!settled(Variant::Seed000, Access::Nat1, &s));
        let stale = outside(Access::Nat2, Some(plan::MN_NAT1));
        assert!(!settled(Variant::Seed000, Access::Nat2, &stale));
        // 'mc' has no outer binding at all.
        assert!(!settled(Variant::Mc, Access::Nat2, &s));
        assert!(settled(
            Variant::Mc,
            Access::Nat2,
            &outside(Access::Nat2, None)
        ));
        // The inner binding on something else than the TIA.
        let mut odd = outside(Access::Nat2, None);
        odd.inner_coa = Some(plan::MN_NAT2);
        assert!(!settled(Variant::Mc, Access::Nat2, &odd));
        let inside = Status {
            mode: "inside".into(),
            phys: Some(plan::MN_INSIDE),
            inner_path: Some(Path::InnerDirect),
            inner_coa: Some(plan::MN_INSIDE),
            ..Status::default()
        };
        for v in [Variant::Seed000, Variant::Mc] {
            assert!(settled(v, Access::Inside, &inside));
            assert!(!settled(v, Access::Nat1, &inside));
        }
        assert!(!settled(
            Variant::Seed000,
            Access::Inside,
            &Status::default()
        ));
    }

    #[test]
    fn access_networks_follow_the_site_plan() {
        assert_eq!(Access::Nat1.cidr(), "198.19.10.2/24");
        assert_eq!(Access::Nat2.gateway(), plan::NAT2_INSIDE);
        assert_eq!(Access::Inside.peer(), "irtr");
        assert!(!Access::Inside.outside() && Access::Nat2.outside());
    }

    #[test]
    fn move_table_has_a_row_per_move() {
        let m = MoveResult {
            name: "outside NAT1 -> inside".into(),
            decided_ms: Some(12),
            udp: Duration::from_millis(80),
            tcp: Duration::from_millis(210),
            status: Status::default(),
        };
        let t = move_table(&[
            m.clone(),
            MoveResult {
                decided_ms: None,
                ..m
            },
        ]);
        assert_eq!(t.lines().count(), 3);
        assert!(t.lines().nth(1).is_some_and(|l| l.contains("12 ms")));
        assert!(t.lines().nth(2).is_some_and(|l| l.contains(" - ms")));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 3), "");
    }
}
