//! # The full dual mobile node of seed 000 (issue 8)
//!
//! One mobile node in its own network namespace with the two virtual
//! adapters of seed 000 figures 9–11, run by the `dual-mn` binary:
//!
//! * the *mobility adapter* (`mob0`, a TUN device) holds the outer home
//!   address. The outer client registers it with the outer home agent using
//!   the physical address as co-located care-of address, behind a real NAT,
//!   with the UDP Tunnel Request [RFC 3519 § 3.1]; what the kernel routes
//!   into the adapter (the VPN's ESP in UDP, which is bound to the outer home
//!   address) leaves as RFC 3519 tunnel data to the home agent's port 434
//!   [RFC 3519 § 3.3], and tunnel data from the home agent is written back
//!   into the adapter;
//! * the *intranet adapter* (`intra0`) holds the inner home address, which
//!   never changes: applications bind to it. The inner client registers it
//!   with the inner home agent and reverse-tunnels [RFC 3024] the adapter's
//!   packets to it the same way, in UDP [RFC 3519].
//!
//! ## Modes (seed 000 figures 7, 9–11; seed 004 § 3)
//!
//! * [`Variant::Seed000`], *outside*: outer client on; strongSwan's IKE SA
//!   runs from the outer home address (routed into the mobility adapter);
//!   the inner client registers the VPN's tunnel inner address (TIA, on
//!   `ipsec0`) as care-of address. A packet from an application leaves the
//!   physical interface in three levels of encapsulation (figures 14–15):
//!   RFC 3519 UDP to the outer home agent, ESP in UDP [RFC 3948] to the VPN
//!   gateway, RFC 3519 UDP to the inner home agent, the application's packet.
//! * *inside* (figure 11): VPN and outer client off; the inner client
//!   registers the physical address directly.
//! * [`Variant::Mc`] (seed 004 'mc' mode): no outer home agent; the VPN runs
//!   over the physical address and follows it with MOBIKE [RFC 4555]; the
//!   inner client uses the TIA.
//!
//! ## Domain detection (seed 004 § 3.4, seed 000 "domain detection")
//!
//! On start and after every change of the physical address the node sends,
//! in parallel, a registration to the inner home agent *without* the VPN
//! (a socket bound to the physical interface) and — seed 000 — the outer
//! registration (seed 004: the VPN's MOBIKE update, which charon does by
//! itself). An accepted direct inner registration means inside: only there
//! is the inner home agent reachable, and the reply's MN-HA authenticator is
//! the evidence seed 000 asks for. Outside is decided when the direct
//! attempt has failed — no reply within [`DualConfig::probe_window`], or an
//! ICMP error for it (seed 000's "information in control messages like
//! ICMP" conjecture, confirmed by the outer registration) — and the outer
//! registration was accepted (seed 004: the VPN is up). While undecided no
//! normal traffic leaves either adapter (counted as `held`). The decision
//! logic is [`DualCore`], sans-IO like [`crate::mn`]: the unit tests below
//! run it on a virtual clock.
//!
//! ## Moves
//!
//! `dual-mn` polls the namespace's default route every 50 ms (`ip -4 route
//! show default`, then the first address on its device): a new (device,
//! address) pair is a move, and detection starts again. Tests move the node
//! the way vpn.rs does: new address, then the default route, then the old
//! address goes.
//!
//! ## Policy routing in the mobile node's namespace (set by `dual-mn`)
//!
//! ```text
//! pref 50: from INNER_HOA lookup 101   table 101: default dev intra0
//! pref 60: from OUTER_HOA lookup 100   table 100: default dev mob0   (seed 000)
//! main:    GATEWAY/32 dev mob0 src OUTER_HOA                         (seed 000)
//! pref 220: charon's table (intranet traffic selector dev ipsec0 src TIA)
//! ```
//!
//! so applications on the inner home address use the intranet adapter, and
//! charon's IKE and ESP-in-UDP from the outer home address use the mobility
//! adapter. The direct inner registration uses `SO_BINDTODEVICE` on the
//! physical interface so it never enters the VPN.
//!
//! ## Status (for tests)
//!
//! `dual-mn --status FILE` rewrites FILE (write + rename) with a JSON
//! [`Status`] on every change and every 200 ms: mode, registrations,
//! adapters' packet counts. Tests wait on it with bounds; no sleeps.
//!
//! ## Where it runs
//!
//! On the two-cluster site (`crate::site`, addresses in `site::plan`),
//! driven by `crate::e2e::DualRig`: the node starts behind `nat1`
//! (198.19.10.2), moves to `nat2` (198.19.11.2) and to the inside access
//! network behind `irtr` (198.18.102.2); the inner home agent is the inner
//! cluster's VIP 198.18.100.100 (inner HoA 198.18.16.5, SPI 1000), the outer
//! one the outer cluster's VIP 203.0.113.100 (outer HoA 198.18.128.5, SPI
//! 2000), the VPN gateway 203.0.113.66 with the TIA pool 198.18.200.0/24 and
//! the traffic selector 198.18.100.0/24 (the intranet segment, where the
//! inner VIP is: the VPN only ever carries the inner client's RFC 3519
//! tunnel between the TIA and that VIP).
//!
//! ## Domain detection on the wire: the ICMP shortcut and its rate limit
//!
//! Outside, `inet` has no route into the intranet and answers the direct
//! registration with ICMP network unreachable; `dual-mn` reads it from the
//! direct socket's error queue (`IP_RECVERR`, `MSG_ERRQUEUE`: the type,
//! code and the router that sent it, counted as `direct_icmp` and logged).
//! Linux rate-limits those per destination host, and its no-route path
//! (`ip_error`) and `icmp_send` each take a token from the same per-host
//! bucket, so behind one NAT address only a few arrive within seconds
//! (`IcmpOutRateLimitHost` grows in `inet`, the node's `IcmpInMsgs` stays
//! flat): that was the "one move in three" miss. The node then decides at
//! the end of the probe window, as on a real network, where routers limit
//! too (RFC 1812 § 4.3.2.8); the lab rig lifts `inet`'s limit for
//! deterministic decisions (`e2e::RigOptions::icmp_unlimited`).
//!
//! ## On the wire (seed 000 figures 14–15)
//!
//! Captured by `tests/dual_client.rs` on the site, the mobile node outside
//! behind NAT1 (`tshark -T fields`: interface|length|src|dst|udp dst|layers|
//! UDP payload, nested headers comma-separated outermost first; one packet
//! each way per interface):
//!
//! ```text
//! e0|202|198.19.10.2,198.18.128.5|203.0.113.100,203.0.113.66|434,4500|eth:ethertype:ip:udp:mip:ip:udp:udpencap:esp|04040000 4500009c ...
//! e0|202|203.0.113.100,203.0.113.66|198.19.10.2,198.18.128.5|39138,4500|eth:ethertype:ip:udp:mip:ip:udp:udpencap:esp|04040000 4500009c ...
//! mob0|156|198.18.128.5|203.0.113.66|4500|raw:ip:udp:udpencap:esp|eddbe391 00000002 ...
//! mob0|156|203.0.113.66|198.18.128.5|4500|raw:ip:udp:udpencap:esp|ef2f6743 00000002 ...
//! ipsec0|92|198.18.200.1,198.18.16.5|198.18.100.100,198.18.100.10|434|raw:ip:udp:mip:ip:tcp|04040000 4500003c ...
//! ipsec0|92|198.18.100.100,198.18.100.10|198.18.200.1,198.18.16.5|37576|raw:ip:udp:mip:ip:tcp|04040000 4500003c ...
//! intra0|33|198.18.100.10|198.18.16.5|7777|raw:ip:udp:data|75647020 30 ("udp 0")
//! intra0|58|198.18.16.5|198.18.100.10|51480|raw:ip:udp:data|66726f6d ... ("from ...")
//! ```
//!
//! The physical interface carries RFC 3519 tunnel data (`04 04 00 00`:
//! type 4, next header IPv4) from the physical address to the outer home
//! agent's port 434 whose inner packet is ESP in UDP 4500 from the outer
//! home address to the VPN gateway; `ipsec0` shows what that ESP carries:
//! RFC 3519 tunnel data from the TIA to the inner home agent whose inner
//! packet is the application's, from the inner home address to the
//! correspondent; `intra0` shows the application's packet alone.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mn::{Event, MnConfig, MobileNode};

/// Which architecture the node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Seed 000: outer Mobile IP, VPN over the outer home address, inner
    /// Mobile IP over the TIA.
    Seed000,
    /// Seed 004 'mc': the VPN over the physical address with MOBIKE, inner
    /// Mobile IP over the TIA.
    Mc,
}

/// Where the node believes it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Detecting: no normal traffic.
    Undecided,
    /// Inside the security boundary: inner Mobile IP directly.
    Inside,
    /// Outside: the VPN between the two mobility systems.
    Outside,
}

/// The three ways registrations and tunnel data leave the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// To the outer home agent from the physical address.
    Outer,
    /// To the inner home agent from the physical address, never through
    /// the VPN (the socket is bound to the physical device).
    InnerDirect,
    /// To the inner home agent from the TIA (through the VPN).
    InnerTia,
}

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The socket to send it from.
    pub path: Path,
    /// The home agent's address and port.
    pub dst: SocketAddrV4,
    /// The registration message.
    pub bytes: Vec<u8>,
}

/// What the driver must do besides sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Bring the VPN up (seed 000: over the outer home address).
    StartVpn,
    /// Take the VPN down (inside).
    StopVpn,
    /// Detection ended.
    Decided {
        /// The mode chosen.
        mode: Mode,
        /// From the address change to the decision.
        after: Duration,
    },
}

/// The dual client's configuration.
#[derive(Debug, Clone)]
pub struct DualConfig {
    /// Seed 000 or 'mc'.
    pub variant: Variant,
    /// The inner client (its care-of address is set at run time).
    pub inner: MnConfig,
    /// The outer client; required for [`Variant::Seed000`].
    pub outer: Option<MnConfig>,
    /// How long a direct inner registration may stay unanswered before the
    /// node concludes it is not inside (seed 004 § 3.4: configurable).
    pub probe_window: Duration,
    /// When no domain answered at all, detection starts over after this.
    pub retry_after: Duration,
}

/// Progress of one detection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Idle,
    Trying,
    Accepted,
    Failed,
}

/// The sans-IO dual client: three registration cores (outer, inner direct,
/// inner via the TIA) and the domain decision.
#[derive(Debug)]
pub struct DualCore {
    cfg: DualConfig,
    mode: Mode,
    phys: Option<Ipv4Addr>,
    tia: Option<Ipv4Addr>,
    attached_at: Duration,
    probe_deadline: Option<Duration>,
    retry_at: Option<Duration>,
    direct: MobileNode,
    direct_state: Attempt,
    via_tia: MobileNode,
    outer: Option<MobileNode>,
    outer_state: Attempt,
    vpn_wanted: bool,
    transmits: VecDeque<Transmit>,
    actions: VecDeque<Action>,
}

/// Errors of the dual client's configuration and I/O helpers.
#[derive(Debug, thiserror::Error)]
pub enum DualError {
    /// Seed 000 without an outer client.
    #[error("seed 000 mode needs an outer client configuration")]
    NoOuter,
    /// A system call or command failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn with_coa(cfg: &MnConfig, coa: Ipv4Addr) -> MnConfig {
    let mut c = cfg.clone();
    c.care_of_address = coa;
    c
}

impl DualCore {
    /// A dual client; nothing happens until [`attach`](Self::attach).
    ///
    /// # Errors
    /// [`DualError::NoOuter`] for seed 000 without an outer configuration.
    pub fn new(cfg: DualConfig) -> Result<Self, DualError> {
        if cfg.variant == Variant::Seed000 && cfg.outer.is_none() {
            return Err(DualError::NoOuter);
        }
        let outer = match cfg.variant {
            Variant::Seed000 => cfg.outer.clone().map(MobileNode::new),
            Variant::Mc => None,
        };
        Ok(DualCore {
            direct: MobileNode::new(cfg.inner.clone()),
            via_tia: MobileNode::new(cfg.inner.clone()),
            outer,
            cfg,
            mode: Mode::Undecided,
            phys: None,
            tia: None,
            attached_at: Duration::ZERO,
            probe_deadline: None,
            retry_at: None,
            direct_state: Attempt::Idle,
            outer_state: Attempt::Idle,
            vpn_wanted: false,
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DualConfig {
        &self.cfg
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The physical (care-of) address in use.
    pub fn phys(&self) -> Option<Ipv4Addr> {
        self.phys
    }

    /// The TIA the VPN holds.
    pub fn tia(&self) -> Option<Ipv4Addr> {
        self.tia
    }

    /// The outer client's binding's care-of address, when registered.
    pub fn outer_binding(&self) -> Option<Ipv4Addr> {
        self.outer
            .as_ref()
            .and_then(|o| o.binding())
            .map(|b| b.care_of_address)
    }

    /// The inner binding in use and its care-of address.
    pub fn inner_binding(&self) -> Option<(Path, Ipv4Addr)> {
        match self.mode {
            Mode::Inside => self
                .direct
                .binding()
                .map(|b| (Path::InnerDirect, b.care_of_address)),
            Mode::Outside => self
                .via_tia
                .binding()
                .map(|b| (Path::InnerTia, b.care_of_address)),
            Mode::Undecided => None,
        }
    }

    /// Where the intranet adapter's packets go now (`None`: held).
    pub fn intranet_path(&self) -> Option<Path> {
        match self.mode {
            Mode::Inside => self.direct.binding().map(|_| Path::InnerDirect),
            Mode::Outside if self.tia.is_some() => self.via_tia.binding().map(|_| Path::InnerTia),
            _ => None,
        }
    }

    /// Where the mobility adapter's packets go now (`None`: held).
    pub fn mobility_path(&self) -> Option<Path> {
        (self.mode == Mode::Outside && self.outer_binding().is_some()).then_some(Path::Outer)
    }

    /// The home agent of a path (where its tunnel data goes).
    pub fn home_agent(&self, path: Path) -> SocketAddrV4 {
        let c = match path {
            Path::Outer => self.cfg.outer.as_ref().unwrap_or(&self.cfg.inner),
            Path::InnerDirect | Path::InnerTia => &self.cfg.inner,
        };
        SocketAddrV4::new(c.home_agent, c.home_agent_port)
    }

    /// The home address registered on a path.
    pub fn home_address(&self, path: Path) -> Ipv4Addr {
        match path {
            Path::Outer => self
                .outer
                .as_ref()
                .map_or(Ipv4Addr::UNSPECIFIED, MobileNode::home_address),
            Path::InnerDirect | Path::InnerTia => self.cfg.inner.home_address,
        }
    }

    /// The negotiated RFC 3519 keepalive interval of a path's binding.
    pub fn keepalive(&self, path: Path) -> Option<Duration> {
        let core = match path {
            Path::Outer => self.outer.as_ref()?,
            Path::InnerDirect => &self.direct,
            Path::InnerTia => &self.via_tia,
        };
        core.binding()?.udp_tunnel
    }

    /// The physical address changed (or appeared: start-up; `None`: the
    /// node lost it). Detection starts over (seed 004 § 3.4).
    pub fn attach(&mut self, now: Duration, phys: Option<Ipv4Addr>) {
        self.phys = phys;
        self.mode = Mode::Undecided;
        self.attached_at = now;
        self.retry_at = None;
        self.probe_deadline = None;
        self.direct_state = Attempt::Idle;
        self.outer_state = Attempt::Idle;
        let Some(phys) = phys else {
            return;
        };
        // A fresh core: a late reply to an attempt from an earlier address
        // must not count as evidence for this one.
        self.direct = MobileNode::new(with_coa(&self.cfg.inner, phys));
        self.direct.register(now);
        self.direct_state = Attempt::Trying;
        self.probe_deadline = Some(now + self.cfg.probe_window);
        if let Some(o) = self.outer.as_mut() {
            o.move_to(now, phys);
            self.outer_state = Attempt::Trying;
        }
        if self.cfg.variant == Variant::Mc && self.tia.is_none() && !self.vpn_wanted {
            // Seed 004 § 3.4.2 step 1: the VPN in parallel with the direct
            // registration.
            self.vpn_wanted = true;
            self.actions.push_back(Action::StartVpn);
        }
        self.drain(now);
    }

    /// The VPN holds `tia` (`ipsec0` has it and the SA is up).
    pub fn vpn_up(&mut self, now: Duration, tia: Ipv4Addr) {
        if self.tia != Some(tia) {
            self.tia = Some(tia);
            self.via_tia = MobileNode::new(with_coa(&self.cfg.inner, tia));
            if self.mode == Mode::Outside {
                self.via_tia.register(now);
            }
        }
        self.drain(now);
    }

    /// The VPN lost its TIA.
    pub fn vpn_down(&mut self, now: Duration) {
        if self.tia.take().is_some() {
            self.via_tia = MobileNode::new(self.cfg.inner.clone());
            if self.mode == Mode::Outside {
                self.vpn_wanted = true;
                self.actions.push_back(Action::StartVpn);
            }
        }
        self.drain(now);
    }

    /// A datagram from a home agent on `path`. Returns whether a core took
    /// it (a registration reply that verified).
    pub fn handle(&mut self, now: Duration, path: Path, from: SocketAddrV4, bytes: &[u8]) -> bool {
        let ok = match path {
            Path::Outer => self
                .outer
                .as_mut()
                .is_some_and(|o| o.handle(now, from, bytes).is_ok()),
            Path::InnerDirect => self.direct.handle(now, from, bytes).is_ok(),
            Path::InnerTia => self.via_tia.handle(now, from, bytes).is_ok(),
        };
        self.drain(now);
        ok
    }

    /// The direct path reported an ICMP error (host or network
    /// unreachable): the inner home agent is not reachable from here.
    pub fn direct_unreachable(&mut self, now: Duration) {
        if self.direct_state == Attempt::Trying {
            self.direct_state = Attempt::Failed;
        }
        self.drain(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn poll_timeout(&self) -> Option<Duration> {
        [
            self.direct.poll_timeout(),
            self.via_tia.poll_timeout(),
            self.outer.as_ref().and_then(MobileNode::poll_timeout),
            self.probe_deadline,
            self.retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires due timers.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.direct.handle_timeout(now);
        self.via_tia.handle_timeout(now);
        if let Some(o) = self.outer.as_mut() {
            o.handle_timeout(now);
        }
        if self.probe_deadline.is_some_and(|d| now >= d) {
            self.probe_deadline = None;
            if self.direct_state == Attempt::Trying {
                self.direct_state = Attempt::Failed;
            }
        }
        if self.retry_at.is_some_and(|d| now >= d) {
            let phys = self.phys;
            self.attach(now, phys);
            return;
        }
        self.drain(now);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Collects the cores' output, then decides.
    fn drain(&mut self, now: Duration) {
        while let Some((dst, bytes)) = self.direct.poll_transmit() {
            self.transmits.push_back(Transmit {
                path: Path::InnerDirect,
                dst,
                bytes,
            });
        }
        while let Some(ev) = self.direct.poll_event() {
            match ev {
                Event::Accepted { .. } if self.direct_state == Attempt::Trying => {
                    self.direct_state = Attempt::Accepted;
                }
                // A denial is authenticated, but it is no registration: the
                // node cannot work inside with it (conservative).
                Event::Denied { .. } | Event::GaveUp if self.direct_state == Attempt::Trying => {
                    self.direct_state = Attempt::Failed;
                }
                Event::GaveUp if self.mode == Mode::Inside => {
                    // Lost the inner home agent while inside: detect again.
                    self.retry_at = Some(now);
                }
                _ => {}
            }
        }
        while let Some((dst, bytes)) = self.via_tia.poll_transmit() {
            self.transmits.push_back(Transmit {
                path: Path::InnerTia,
                dst,
                bytes,
            });
        }
        while self.via_tia.poll_event().is_some() {}
        if let Some(o) = self.outer.as_mut() {
            while let Some((dst, bytes)) = o.poll_transmit() {
                self.transmits.push_back(Transmit {
                    path: Path::Outer,
                    dst,
                    bytes,
                });
            }
            while let Some(ev) = o.poll_event() {
                match ev {
                    Event::Accepted { .. } => self.outer_state = Attempt::Accepted,
                    Event::Denied { .. } | Event::GaveUp => {
                        self.outer_state = Attempt::Failed;
                        if self.mode == Mode::Outside {
                            self.retry_at = Some(now);
                        }
                    }
                    Event::Deregistered => self.outer_state = Attempt::Idle,
                    Event::Sent { .. } => {}
                }
            }
        }
        self.decide(now);
    }

    fn decide(&mut self, now: Duration) {
        if self.mode != Mode::Undecided || self.phys.is_none() {
            return;
        }
        if self.direct_state == Attempt::Accepted {
            self.set_mode(now, Mode::Inside);
            // Seed 000 figure 11: VPN and outer client off inside.
            if self.vpn_wanted || self.tia.is_some() {
                self.vpn_wanted = false;
                self.actions.push_back(Action::StopVpn);
            }
            if let Some(o) = self.outer.as_mut() {
                if o.binding().is_some() || self.outer_state != Attempt::Idle {
                    o.deregister(now);
                }
            }
            // The direct binding replaced the TIA binding at the home agent.
            self.via_tia = MobileNode::new(self.cfg.inner.clone());
            self.tia = None;
            self.drain(now);
            return;
        }
        if self.direct_state != Attempt::Failed {
            return;
        }
        let outside_ready = match self.cfg.variant {
            Variant::Seed000 => self.outer_state == Attempt::Accepted,
            Variant::Mc => self.tia.is_some(),
        };
        if outside_ready {
            self.set_mode(now, Mode::Outside);
            // Stop the direct attempt's retransmissions.
            self.direct = MobileNode::new(self.cfg.inner.clone());
            match self.tia {
                None if !self.vpn_wanted => {
                    self.vpn_wanted = true;
                    self.actions.push_back(Action::StartVpn);
                }
                Some(_) if self.via_tia.binding().is_none() => self.via_tia.register(now),
                _ => {}
            }
            self.drain(now);
        } else if self.cfg.variant == Variant::Seed000 && self.outer_state == Attempt::Failed {
            // Neither domain answered: try again later.
            self.retry_at = Some(now + self.cfg.retry_after);
        }
    }

    fn set_mode(&mut self, now: Duration, mode: Mode) {
        self.mode = mode;
        self.probe_deadline = None;
        self.actions.push_back(Action::Decided {
            mode,
            after: now.saturating_sub(self.attached_at),
        });
    }
}

/// What `dual-mn` writes to its status file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// "seed000" or "mc".
    pub variant: String,
    /// "undecided", "inside" or "outside".
    pub mode: String,
    /// The physical device and address in use.
    pub phys_dev: Option<String>,
    /// The physical address (the care-of address outside the VPN).
    pub phys: Option<Ipv4Addr>,
    /// The VPN's TIA.
    pub tia: Option<Ipv4Addr>,
    /// Address changes seen (including the first).
    pub attaches: u64,
    /// Decisions taken.
    pub decisions: u64,
    /// The last decision's delay after its address change, ms.
    pub last_decision_ms: Option<u64>,
    /// The outer binding's care-of address, when registered.
    pub outer_coa: Option<Ipv4Addr>,
    /// The inner binding's path ("inner_direct"/"inner_tia"), if any.
    pub inner_path: Option<Path>,
    /// The inner binding's care-of address.
    pub inner_coa: Option<Ipv4Addr>,
    /// Packets read from the mobility adapter and tunnelled.
    pub mob_tx: u64,
    /// Packets from the outer home agent written into the mobility adapter.
    pub mob_rx: u64,
    /// Packets read from the intranet adapter and tunnelled.
    pub intra_tx: u64,
    /// Packets from the inner home agent written into the intranet adapter.
    pub intra_rx: u64,
    /// Adapter packets dropped while undecided or without a binding.
    pub held: u64,
    /// Keepalives sent [RFC 3519 § 3.3].
    pub keepalives: u64,
    /// ICMP errors for the direct inner registration (destination
    /// unreachable), read from the socket's error queue (`IP_RECVERR`).
    pub direct_icmp: u64,
    /// `swanctl --initiate` runs (the first per StartVpn and the retries).
    pub vpn_initiates: u64,
    /// `swanctl --initiate` runs that failed (each is retried with a
    /// bounded backoff while the VPN is wanted).
    pub vpn_initiate_failures: u64,
}

impl Status {
    /// Reads a status file (`None` while it does not exist or is torn).
    pub fn read(path: &std::path::Path) -> Option<Status> {
        let s = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&s).ok()
    }

    /// Writes it atomically (a temporary file renamed over the old one).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, path: &std::path::Path) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(io::Error::other)?)?;
        std::fs::rename(tmp, path)
    }
}

/// Opens `/dev/net/tun` and attaches it to a new TUN device `name` with
/// `IFF_TUN | IFF_NO_PI` (bare IPv4 packets), non-blocking: the workspace's
/// `haven-tun`, the same code as ha-node's `dataplane::tun`.
///
/// # Errors
/// A bad name, or the kernel refusing (no CAP_NET_ADMIN).
pub use haven_tun::open as open_tun;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::plan;
    use haven_proto::mip::ReplyCode;
    use haven_proto::mip::auth::Algorithm;
    use haven_proto::mip::ext::{
        AuthKind, Extension, ExtensionType, MessageBuilder, TunnelReplyCode, UdpTunnelReply,
        parse_request,
    };
    use haven_proto::mip::registration::ReplyRepr;

    const KEY: &[u8] = b"inner";
    const OKEY: &[u8] = b"outer";
    const T0: Duration = Duration::from_secs(1_735_689_600);
    const NAT1: Ipv4Addr = plan::MN_NAT1;
    const INSIDE: Ipv4Addr = plan::MN_INSIDE;
    const TIA: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);

    fn cfg(variant: Variant) -> DualConfig {
        let mut inner = MnConfig::new(
            plan::INNER_HOA,
            plan::INNER_VIP,
            Ipv4Addr::UNSPECIFIED,
            1,
            KEY,
        );
        inner.udp_tunnel = true;
        inner.force_udp_tunnel = true;
        inner.reverse_tunnel = true;
        let outer = MnConfig::new(
            plan::OUTER_HOA,
            plan::OUTER_VIP,
            Ipv4Addr::UNSPECIFIED,
            2,
            OKEY,
        );
        DualConfig {
            variant,
            inner,
            outer: (variant == Variant::Seed000).then_some(outer),
            probe_window: Duration::from_millis(1500),
            retry_after: Duration::from_secs(2),
        }
    }

    /// The home agent's accepting reply to `req`, signed with `key`.
    fn accept(req: &[u8], key: &[u8], spi: u32) -> Vec<u8> {
        let r = parse_request(req).unwrap();
        let repr = ReplyRepr {
            code: ReplyCode::Accepted,
            lifetime: r.fixed.lifetime,
            home_address: r.fixed.home_address,
            home_agent: r.fixed.home_agent,
            identification: r.fixed.identification,
        };
        let mut b = MessageBuilder::reply(&repr);
        if r.covered(ExtensionType::UdpTunnelRequest).is_some() {
            b.push(&Extension::UdpTunnelReply(UdpTunnelReply {
                code: TunnelReplyCode::Accepted,
                force: false,
                keepalive_interval: 110,
            }))
            .unwrap();
        }
        b.sign(AuthKind::MnHa, spi, Algorithm::HmacMd5, key);
        b.finish()
    }

    fn sends(c: &mut DualCore) -> Vec<Transmit> {
        std::iter::from_fn(|| c.poll_transmit()).collect()
    }

    fn actions(c: &mut DualCore) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    /// Answers every transmit on the paths `reachable` (the home agents
    /// reachable from where the node is), as the home agents would.
    fn answer(c: &mut DualCore, now: Duration, tx: &[Transmit], reachable: &[Path]) {
        for t in tx.iter().filter(|t| reachable.contains(&t.path)) {
            let (key, spi) = match t.path {
                Path::Outer => (OKEY, 2),
                _ => (KEY, 1),
            };
            let r = accept(&t.bytes, key, spi);
            assert!(c.handle(now, t.path, t.dst, &r), "{:?} reply taken", t.path);
        }
    }

    fn coa(t: &Transmit) -> Ipv4Addr {
        parse_request(&t.bytes).unwrap().fixed.care_of_address
    }

    #[test]
    fn seed000_outside_inside_outside() {
        let mut c = DualCore::new(cfg(Variant::Seed000)).unwrap();
        let mut now = T0;
        c.attach(now, Some(NAT1));
        let tx = sends(&mut c);
        // Both registrations in parallel, both from the physical address.
        let paths: Vec<_> = tx.iter().map(|t| t.path).collect();
        assert_eq!(paths, [Path::InnerDirect, Path::Outer]);
        assert!(tx.iter().all(|t| coa(t) == NAT1));
        assert_eq!(c.mode(), Mode::Undecided);
        // Outside: only the outer home agent answers. Still undecided until
        // the direct attempt fails: no traffic meanwhile.
        now += Duration::from_millis(20);
        answer(&mut c, now, &tx, &[Path::Outer]);
        assert_eq!(c.mode(), Mode::Undecided);
        assert_eq!(c.mobility_path(), None);
        assert_eq!(c.intranet_path(), None);
        // The direct attempt retransmits at 1 s, then the window closes.
        now = T0 + Duration::from_secs(1);
        c.handle_timeout(now);
        assert_eq!(sends(&mut c).len(), 1);
        assert_eq!(c.poll_timeout(), Some(T0 + Duration::from_millis(1500)));
        now = T0 + Duration::from_millis(1500);
        c.handle_timeout(now);
        assert_eq!(c.mode(), Mode::Outside);
        assert_eq!(
            actions(&mut c),
            [
                Action::Decided {
                    mode: Mode::Outside,
                    after: Duration::from_millis(1500)
                },
                Action::StartVpn
            ]
        );
        // The VPN runs over the outer home address: the mobility adapter
        // forwards, the intranet adapter waits for the TIA binding.
        assert_eq!(c.mobility_path(), Some(Path::Outer));
        assert_eq!(c.intranet_path(), None);
        c.vpn_up(now, TIA);
        let tx = sends(&mut c);
        assert_eq!(tx.len(), 1);
        assert_eq!((tx[0].path, coa(&tx[0])), (Path::InnerTia, TIA));
        answer(&mut c, now, &tx, &[Path::InnerTia]);
        assert_eq!(c.intranet_path(), Some(Path::InnerTia));
        assert_eq!(c.inner_binding(), Some((Path::InnerTia, TIA)));

        // Inside: the direct registration is accepted at once.
        now += Duration::from_secs(5);
        c.attach(now, Some(INSIDE));
        let tx = sends(&mut c);
        // (The outer home agent is not reachable from inside in the lab;
        // had it answered after the inner one, the reply would be moot.)
        answer(&mut c, now, &tx, &[Path::InnerDirect]);
        assert_eq!(c.mode(), Mode::Inside);
        assert_eq!(c.intranet_path(), Some(Path::InnerDirect));
        assert_eq!(c.mobility_path(), None);
        assert_eq!(c.inner_binding(), Some((Path::InnerDirect, INSIDE)));
        assert_eq!(
            actions(&mut c),
            [
                Action::Decided {
                    mode: Mode::Inside,
                    after: Duration::ZERO
                },
                Action::StopVpn
            ]
        );
        // ...and the outer client deregisters.
        let tx = sends(&mut c);
        assert_eq!(tx.len(), 1);
        assert_eq!(tx[0].path, Path::Outer);
        assert_eq!(parse_request(&tx[0].bytes).unwrap().fixed.lifetime, 0);
        answer(&mut c, now, &tx, &[Path::Outer]);
        assert_eq!(c.outer_binding(), None);
        c.vpn_down(now);
        assert!(actions(&mut c).is_empty(), "no VPN restart inside");

        // Outside again; this time the ICMP error decides quickly.
        now += Duration::from_secs(5);
        c.attach(now, Some(NAT1));
        let tx = sends(&mut c);
        answer(&mut c, now, &tx, &[Path::Outer]);
        now += Duration::from_millis(3);
        c.direct_unreachable(now);
        assert_eq!(c.mode(), Mode::Outside);
        assert!(matches!(
            actions(&mut c)[..],
            [
                Action::Decided {
                    mode: Mode::Outside,
                    ..
                },
                Action::StartVpn
            ]
        ));
        // The direct attempt is abandoned: no more retransmissions of it.
        c.handle_timeout(now + Duration::from_secs(1));
        assert!(sends(&mut c).iter().all(|t| t.path != Path::InnerDirect));
    }

    #[test]
    fn seed000_move_outside_keeps_vpn_and_inner_binding() {
        let mut c = DualCore::new(cfg(Variant::Seed000)).unwrap();
        let now = T0;
        c.attach(now, Some(NAT1));
        let tx = sends(&mut c);
        answer(&mut c, now, &tx, &[Path::Outer]);
        c.direct_unreachable(now);
        c.vpn_up(now, TIA);
        let tx = sends(&mut c);
        answer(&mut c, now, &tx, &[Path::InnerTia]);
        actions(&mut c);
        let nat2 = plan::MN_NAT2;
        let now = now + Duration::from_secs(3);
        c.attach(now, Some(nat2));
        // Held while undecided.
        assert_eq!(c.intranet_path(), None);
        let tx = sends(&mut c);
        assert_eq!(tx.len(), 2);
        answer(&mut c, now, &tx, &[Path::Outer]);
        c.direct_unreachable(now);
        assert_eq!(c.mode(), Mode::Outside);
        assert_eq!(c.outer_binding(), Some(nat2));
        // No new VPN, no new inner registration: the TIA binding holds.
        assert_eq!(
            actions(&mut c),
            [Action::Decided {
                mode: Mode::Outside,
                after: Duration::ZERO
            }]
        );
        assert!(sends(&mut c).is_empty());
        assert_eq!(c.intranet_path(), Some(Path::InnerTia));
    }

    #[test]
    fn no_answer_retries_detection() {
        let mut c = DualCore::new(cfg(Variant::Seed000)).unwrap();
        let mut now = T0;
        c.attach(now, Some(NAT1));
        // Nobody answers: the outer client gives up after its 5 tries
        // (1+2+4+8 s), the window closed long before; detection restarts.
        let mut restarted = false;
        for _ in 0..200 {
            sends(&mut c);
            let Some(t) = c.poll_timeout() else { break };
            now = t;
            c.handle_timeout(now);
            assert_eq!(c.mode(), Mode::Undecided);
            if sends(&mut c)
                .iter()
                .filter(|t| t.path == Path::InnerDirect)
                .count()
                == 1
                && now > T0 + Duration::from_secs(15)
            {
                restarted = true;
                break;
            }
        }
        assert!(restarted, "detection started again");
        assert!(actions(&mut c).is_empty());
    }

    #[test]
    fn mc_mode_needs_the_vpn_not_an_outer_agent() {
        assert!(matches!(
            DualCore::new(DualConfig {
                outer: None,
                ..cfg(Variant::Seed000)
            }),
            Err(DualError::NoOuter)
        ));
        let mut c = DualCore::new(cfg(Variant::Mc)).unwrap();
        let now = T0;
        c.attach(now, Some(NAT1));
        // The VPN starts with the direct attempt (seed 004 § 3.4.2).
        assert_eq!(actions(&mut c), [Action::StartVpn]);
        let tx = sends(&mut c);
        assert_eq!(tx.len(), 1);
        assert_eq!(tx[0].path, Path::InnerDirect);
        c.direct_unreachable(now);
        // Direct failed, but no VPN yet: undecided.
        assert_eq!(c.mode(), Mode::Undecided);
        let now = now + Duration::from_millis(300);
        c.vpn_up(now, TIA);
        assert_eq!(c.mode(), Mode::Outside);
        let tx = sends(&mut c);
        assert_eq!((tx[0].path, coa(&tx[0])), (Path::InnerTia, TIA));
        answer(&mut c, now, &tx, &[Path::InnerTia]);
        assert_eq!(c.intranet_path(), Some(Path::InnerTia));
        assert_eq!(c.mobility_path(), None);
        assert!(matches!(
            actions(&mut c)[..],
            [Action::Decided {
                mode: Mode::Outside,
                ..
            }]
        ));
        // A MOBIKE move: the TIA stays, so does the binding.
        let now = now + Duration::from_secs(2);
        c.attach(now, Some(plan::MN_NAT2));
        assert!(actions(&mut c).is_empty(), "the VPN is up already");
        sends(&mut c);
        c.handle_timeout(now + Duration::from_millis(1500));
        assert_eq!(c.mode(), Mode::Outside);
        assert!(sends(&mut c).iter().all(|t| t.path != Path::InnerTia));
        assert_eq!(c.intranet_path(), Some(Path::InnerTia));
    }

    #[test]
    fn status_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status.json");
        assert_eq!(Status::read(&p), None);
        let s = Status {
            mode: "outside".into(),
            inner_path: Some(Path::InnerTia),
            tia: Some(TIA),
            intra_rx: 7,
            ..Status::default()
        };
        s.write(&p).unwrap();
        assert_eq!(Status::read(&p), Some(s));
    }
}
