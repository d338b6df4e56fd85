//! The RFC 5798 (VRRPv3) state machine by which the dispatcher pair owns the
//! VIP.
//!
//! Two dispatchers hold the home-agent address (DESIGN.md §5; seed 002, where
//! VRRP advertisements tell the secondary that the primary died). The Master
//! holds the VIP and sends an advertisement every Advertisement_Interval; the
//! Backup takes over when it hears nothing for Master_Down_Interval, adding
//! the VIP and sending a gratuitous ARP. Because both dispatchers compute the
//! same Maglev table, a takeover moves no mobile node to another home agent.
//!
//! Sans-IO like the rest of the crate: the driver parses received
//! advertisements with [`haven_proto::vrrp::VrrpRepr::parse`] (checksum, TTL
//! 255 and version checked there and by the socket layer [RFC 5798 § 7.1]),
//! feeds them to [`Vrrp::handle_advert`], calls [`Vrrp::handle_timeout`] at
//! [`Vrrp::poll_timeout`], and carries out [`Vrrp::poll_action`]'s actions.
//!
//! Timing is RFC 5798's, kept in [`Duration`]s rather than whole centiseconds
//! so the skew of close priorities does not round to the same value:
//! Skew_Time = ((256 − Priority) × Master_Adver_Interval) / 256 and
//! Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time
//! [RFC 5798 § 6.1].

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use haven_proto::vrrp::{PRIORITY_OWNER, PRIORITY_STOP, VrrpRepr};

/// Default Advertisement_Interval: 100 centiseconds [RFC 5798 § 6.1].
pub const DEFAULT_ADVERT_INTERVAL_CS: u16 = 100;
/// Largest Max Adver Int the 12-bit field holds [RFC 5798 § 5.2.7].
pub const MAX_ADVERT_INTERVAL_CS: u16 = 0x0fff;

/// A centisecond count as a [`Duration`].
pub fn centiseconds(cs: u16) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

/// Skew_Time = ((256 − Priority) × Master_Adver_Interval) / 256
/// [RFC 5798 § 6.1]: higher priorities wait less.
pub fn skew_time(priority: u8, master_adver_interval: Duration) -> Duration {
    master_adver_interval * (256 - u32::from(priority)) / 256
}

/// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time
/// [RFC 5798 § 6.1].
pub fn master_down_interval(priority: u8, master_adver_interval: Duration) -> Duration {
    master_adver_interval * 3 + skew_time(priority, master_adver_interval)
}

/// Configuration of one virtual router [RFC 5798 § 6.1].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpConfig {
    /// VRID, 1–255.
    pub vrid: u8,
    /// Priority, 1–255; 255 only on the address owner [RFC 5798 § 6.1].
    pub priority: u8,
    /// Advertisement_Interval in centiseconds, 1–4095 (default 100).
    pub advert_interval_cs: u16,
    /// Preempt_Mode: a higher-priority Backup takes over from a lower-priority
    /// Master (default true) [RFC 5798 § 6.1].
    pub preempt: bool,
    /// This router's primary address: the advert source and the tie-break.
    pub primary_ip: Ipv4Addr,
    /// The virtual addresses (the VIP).
    pub addresses: Vec<Ipv4Addr>,
}

impl VrrpConfig {
    /// A configuration with the RFC's defaults for interval and preemption.
    pub fn new(vrid: u8, priority: u8, primary_ip: Ipv4Addr, addresses: Vec<Ipv4Addr>) -> Self {
        Self {
            vrid,
            priority,
            advert_interval_cs: DEFAULT_ADVERT_INTERVAL_CS,
            preempt: true,
            primary_ip,
            addresses,
        }
    }

    /// Checks the ranges of [RFC 5798 § 5.2].
    pub fn validate(&self) -> Result<(), VrrpConfigError> {
        if self.vrid == 0 {
            return Err(VrrpConfigError::Vrid);
        }
        if self.priority == PRIORITY_STOP {
            return Err(VrrpConfigError::Priority);
        }
        if self.advert_interval_cs == 0 || self.advert_interval_cs > MAX_ADVERT_INTERVAL_CS {
            return Err(VrrpConfigError::Interval(self.advert_interval_cs));
        }
        if self.addresses.is_empty() || self.addresses.len() > 255 {
            return Err(VrrpConfigError::Addresses(self.addresses.len()));
        }
        Ok(())
    }
}

/// A configuration [`VrrpConfig::validate`] rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VrrpConfigError {
    /// VRID 0 is not a virtual router [RFC 5798 § 5.2.3].
    #[error("VRID must be 1-255")]
    Vrid,
    /// Priority 0 is reserved for "stopping" [RFC 5798 § 5.2.4].
    #[error("priority must be 1-255")]
    Priority,
    /// Out of the 12-bit field, or zero.
    #[error("advertisement interval {0} cs outside 1-4095")]
    Interval(u16),
    /// Between 1 and 255 virtual addresses.
    #[error("{0} virtual addresses; need 1-255")]
    Addresses(usize),
}

/// An advertisement [`Vrrp::handle_advert`] did not act on (counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// For another virtual router [RFC 5798 § 7.1].
    #[error("advert for VRID {0}")]
    OtherVrid(u8),
    /// Our own advert, looped back by multicast.
    #[error("own advert")]
    Own,
    /// Max Adver Int 0 would make Master_Down_Interval 0.
    #[error("advert with interval 0")]
    ZeroInterval,
    /// The router is in Initialize (not started or shut down).
    #[error("not running")]
    NotRunning,
}

/// The states of [RFC 5798 § 6.4].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpState {
    /// Waiting for Startup [RFC 5798 § 6.4.1].
    Initialize,
    /// Monitoring the Master [RFC 5798 § 6.4.2].
    Backup,
    /// Holding the VIP [RFC 5798 § 6.4.3].
    Master,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this advertisement from `primary_ip` to 224.0.0.18, TTL 255
    /// [RFC 5798 § 5.1.1].
    SendAdvert(VrrpRepr),
    /// Became Master: add the VIP, send a gratuitous ARP for each virtual
    /// address [RFC 5798 § 6.4.1, § 6.4.2], start forwarding.
    BecomeMaster,
    /// Became Backup after being Master: remove the VIP, stop forwarding
    /// [RFC 5798 § 6.4.3].
    BecomeBackup,
    /// Still Master, but another router claimed the VIP meanwhile (its
    /// lower-priority advertisement reached us): announce the VIP again
    /// with gratuitous ARPs, no address change. See [`Vrrp::handle_advert`].
    Reassert,
    /// Shut down into Initialize: remove the VIP if held.
    Stopped,
}

/// Counters for the daemon's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VrrpStats {
    /// Advertisements emitted (including priority 0).
    pub adverts_sent: u64,
    /// Advertisements acted on.
    pub adverts_received: u64,
    /// Advertisements ignored ([`Ignored`]).
    pub adverts_ignored: u64,
    /// Received priority-0 advertisements.
    pub priority_zero_received: u64,
    /// Received adverts whose address list differs from ours (processed; a
    /// misconfiguration to alert on [RFC 5798 § 7.1]).
    pub address_mismatch: u64,
    /// Transitions to Master.
    pub became_master: u64,
    /// Transitions Master → Backup.
    pub became_backup: u64,
    /// Lower-priority advertisements received as Master, each answered by
    /// [`Action::Reassert`].
    pub reasserted: u64,
}

/// One VRRPv3 virtual router (module docs).
#[derive(Debug, Clone)]
pub struct Vrrp {
    config: VrrpConfig,
    state: VrrpState,
    master_adver_interval: Duration,
    adver_timer: Option<Instant>,
    master_down_timer: Option<Instant>,
    actions: VecDeque<Action>,
    stats: VrrpStats,
}

impl Vrrp {
    /// A router in Initialize; call [`Vrrp::startup`] to run it.
    pub fn new(config: VrrpConfig) -> Result<Self, VrrpConfigError> {
        config.validate()?;
        Ok(Self {
            master_adver_interval: centiseconds(config.advert_interval_cs),
            config,
            state: VrrpState::Initialize,
            adver_timer: None,
            master_down_timer: None,
            actions: VecDeque::new(),
            stats: VrrpStats::default(),
        })
    }

    /// The Startup event [RFC 5798 § 6.4.1]. The owner (priority 255) becomes
    /// Master at once; others become Backup and wait Master_Down_Interval.
    pub fn startup(&mut self, now: Instant) {
        if self.state != VrrpState::Initialize {
            return;
        }
        if self.config.priority == PRIORITY_OWNER {
            self.become_master(now);
        } else {
            self.master_adver_interval = self.advert_interval();
            self.master_down_timer = Some(now + self.master_down_interval());
            self.state = VrrpState::Backup;
        }
    }

    /// The Shutdown event [RFC 5798 § 6.4.2, § 6.4.3]: a Master sends one
    /// advertisement with priority 0 so the Backup takes over after only
    /// Skew_Time; either way the router returns to Initialize.
    pub fn shutdown(&mut self) {
        match self.state {
            VrrpState::Initialize => return,
            VrrpState::Backup => {
                self.master_down_timer = None;
            }
            VrrpState::Master => {
                self.adver_timer = None;
                let mut advert = self.advert();
                advert.priority = PRIORITY_STOP;
                self.send(advert);
            }
        }
        self.state = VrrpState::Initialize;
        self.actions.push_back(Action::Stopped);
    }

    /// A received advertisement from `src_ip` (its IP source, already
    /// checksum-verified) [RFC 5798 § 6.4.2, § 6.4.3].
    pub fn handle_advert(
        &mut self,
        now: Instant,
        src_ip: Ipv4Addr,
        advert: &VrrpRepr,
    ) -> Result<(), Ignored> {
        let ignored = self.check(src_ip, advert);
        if let Err(e) = ignored {
            self.stats.adverts_ignored += 1;
            return Err(e);
        }
        self.stats.adverts_received += 1;
        if advert.addresses != self.config.addresses {
            self.stats.address_mismatch += 1;
        }
        if advert.priority == PRIORITY_STOP {
            self.stats.priority_zero_received += 1;
        }
        match self.state {
            VrrpState::Initialize => {}
            VrrpState::Backup => {
                if advert.priority == PRIORITY_STOP {
                    // [RFC 5798 § 6.4.2]: the Master is leaving; take over
                    // after Skew_Time only, highest-priority Backup first.
                    self.master_down_timer = Some(now + self.skew_time());
                } else if !self.config.preempt || advert.priority >= self.config.priority {
                    // [RFC 5798 § 6.4.2]: accept this Master and learn its
                    // interval.
                    self.learn_master(now, advert);
                }
                // Otherwise (preempting, lower-priority Master): discard, so
                // Master_Down_Timer fires and we take over.
            }
            VrrpState::Master => {
                if advert.priority == PRIORITY_STOP {
                    // [RFC 5798 § 6.4.3]: answer at once so the Backups'
                    // Skew_Time timers are reset and no one takes over.
                    let a = self.advert();
                    self.send(a);
                    self.adver_timer = Some(now + self.advert_interval());
                } else if advert.priority > self.config.priority
                    || (advert.priority == self.config.priority && src_ip > self.config.primary_ip)
                {
                    // [RFC 5798 § 6.4.3]: a better Master exists (higher
                    // priority, or equal priority and higher primary address).
                    self.adver_timer = None;
                    self.learn_master(now, advert);
                    self.state = VrrpState::Backup;
                    self.stats.became_backup += 1;
                    self.actions.push_back(Action::BecomeBackup);
                } else {
                    // RFC 5798 § 6.4.3 says discard, and the state stays
                    // right: the other router steps down when it hears us.
                    // But a lower-priority router only advertises as Master
                    // after it took the VIP over (we were silent past its
                    // Master_Down_Interval: a stall of this host), and its
                    // takeover sent gratuitous ARPs: the segment's ARP caches
                    // point the VIP at it, and once it is Backup again it
                    // drops everything sent there. Advertise at once (so it
                    // steps down sooner) and announce the VIP again, as
                    // keepalived does (`vrrp_garp_lower_prio_repeat`).
                    let a = self.advert();
                    self.send(a);
                    self.adver_timer = Some(now + self.advert_interval());
                    self.stats.reasserted += 1;
                    self.actions.push_back(Action::Reassert);
                }
            }
        }
        Ok(())
    }

    fn check(&self, src_ip: Ipv4Addr, advert: &VrrpRepr) -> Result<(), Ignored> {
        if self.state == VrrpState::Initialize {
            return Err(Ignored::NotRunning);
        }
        if advert.vrid != self.config.vrid {
            return Err(Ignored::OtherVrid(advert.vrid));
        }
        if src_ip == self.config.primary_ip {
            return Err(Ignored::Own);
        }
        if advert.max_advert_int_cs == 0 {
            return Err(Ignored::ZeroInterval);
        }
        Ok(())
    }

    /// Sets Master_Adver_Interval from the advert, recomputes Skew_Time and
    /// Master_Down_Interval, and resets Master_Down_Timer [RFC 5798 § 6.4.2].
    fn learn_master(&mut self, now: Instant, advert: &VrrpRepr) {
        self.master_adver_interval = centiseconds(advert.max_advert_int_cs);
        self.master_down_timer = Some(now + self.master_down_interval());
    }

    /// Runs the timers due at `now` [RFC 5798 § 6.4.2, § 6.4.3].
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            VrrpState::Initialize => {}
            VrrpState::Backup => {
                if self.master_down_timer.is_some_and(|t| t <= now) {
                    self.become_master(now);
                }
            }
            VrrpState::Master => {
                if self.adver_timer.is_some_and(|t| t <= now) {
                    let a = self.advert();
                    self.send(a);
                    self.adver_timer = Some(now + self.advert_interval());
                }
            }
        }
    }

    /// [RFC 5798 § 6.4.1, § 6.4.2]: send an advertisement, broadcast a
    /// gratuitous ARP, start Adver_Timer, become Master.
    fn become_master(&mut self, now: Instant) {
        self.master_down_timer = None;
        let a = self.advert();
        self.send(a);
        self.actions.push_back(Action::BecomeMaster);
        self.adver_timer = Some(now + self.advert_interval());
        self.state = VrrpState::Master;
        self.stats.became_master += 1;
    }

    fn send(&mut self, advert: VrrpRepr) {
        self.stats.adverts_sent += 1;
        self.actions.push_back(Action::SendAdvert(advert));
    }

    /// Our advertisement [RFC 5798 § 5.2].
    fn advert(&self) -> VrrpRepr {
        VrrpRepr {
            vrid: self.config.vrid,
            priority: self.config.priority,
            max_advert_int_cs: self.config.advert_interval_cs,
            addresses: self.config.addresses.clone(),
        }
    }

    /// When [`Vrrp::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            VrrpState::Initialize => None,
            VrrpState::Backup => self.master_down_timer,
            VrrpState::Master => self.adver_timer,
        }
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Current state.
    pub const fn state(&self) -> VrrpState {
        self.state
    }

    /// Whether this router holds the VIP.
    pub fn is_master(&self) -> bool {
        self.state == VrrpState::Master
    }

    /// The configuration.
    pub const fn config(&self) -> &VrrpConfig {
        &self.config
    }

    /// Counters.
    pub const fn stats(&self) -> VrrpStats {
        self.stats
    }

    /// Advertisement_Interval.
    pub fn advert_interval(&self) -> Duration {
        centiseconds(self.config.advert_interval_cs)
    }

    /// Master_Adver_Interval, as learned from the Master.
    pub const fn master_adver_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// Skew_Time for our priority [RFC 5798 § 6.1].
    pub fn skew_time(&self) -> Duration {
        skew_time(self.config.priority, self.master_adver_interval)
    }

    /// Master_Down_Interval for our priority [RFC 5798 § 6.1].
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(self.config.priority, self.master_adver_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_proto::vrrp::{MULTICAST_ADDR, VrrpPacket};

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const IP_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
    const IP_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
    const LATENCY: Duration = Duration::from_millis(1);

    fn cfg(priority: u8, ip: Ipv4Addr) -> VrrpConfig {
        VrrpConfig::new(7, priority, ip, vec![VIP])
    }

    /// A virtual LAN of VRRP routers: virtual clock, 1 ms latency, adverts
    /// carried as bytes through haven-proto's emit/parse, and a loss
    /// function deciding per (sender, receiver) whether a copy is dropped.
    struct Lan {
        t0: Instant,
        now: Instant,
        routers: Vec<Vrrp>,
        running: Vec<bool>,
        inflight: Vec<(Instant, usize, Ipv4Addr, Vec<u8>)>,
        /// (time, router, became master?) for every transition.
        log: Vec<(Instant, usize, VrrpState)>,
        /// When each router last received an advert.
        last_rx: Vec<Option<Instant>>,
        loss: Box<dyn FnMut(usize, usize) -> bool>,
        /// [`Action::Reassert`]s seen.
        reasserts: usize,
    }

    impl Lan {
        fn new(configs: Vec<VrrpConfig>) -> Self {
            let t0 = Instant::now();
            let n = configs.len();
            Self {
                t0,
                now: t0,
                routers: configs
                    .into_iter()
                    .map(|c| Vrrp::new(c).expect("valid"))
                    .collect(),
                running: vec![false; n],
                inflight: Vec::new(),
                log: Vec::new(),
                last_rx: vec![None; n],
                loss: Box::new(|_, _| false),
                reasserts: 0,
            }
        }

        fn at(&self, secs: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(secs)
        }

        fn start(&mut self, i: usize) {
            self.running[i] = true;
            self.routers[i].startup(self.now);
            self.drain(i);
        }

        fn shutdown(&mut self, i: usize) {
            self.routers[i].shutdown();
            self.drain(i);
            self.running[i] = false;
        }

        /// Power loss: no priority-0 advert.
        fn kill(&mut self, i: usize) {
            self.running[i] = false;
            self.routers[i] = Vrrp::new(self.routers[i].config().clone()).expect("valid");
            self.log.push((self.now, i, VrrpState::Initialize));
        }

        fn drain(&mut self, i: usize) {
            while let Some(a) = self.routers[i].poll_action() {
                match a {
                    Action::SendAdvert(repr) => {
                        let src = self.routers[i].config().primary_ip;
                        let bytes = repr.to_bytes(src, MULTICAST_ADDR).expect("emit");
                        for j in 0..self.routers.len() {
                            if j != i && !(self.loss)(i, j) {
                                self.inflight
                                    .push((self.now + LATENCY, j, src, bytes.clone()));
                            }
                        }
                    }
                    Action::BecomeMaster => self.log.push((self.now, i, VrrpState::Master)),
                    Action::BecomeBackup => self.log.push((self.now, i, VrrpState::Backup)),
                    Action::Stopped => self.log.push((self.now, i, VrrpState::Initialize)),
                    Action::Reassert => self.reasserts += 1,
                }
            }
        }

        fn masters(&self) -> usize {
            self.routers.iter().filter(|r| r.is_master()).count()
        }

        /// Runs events in time order up to `until`, calling `check` after each.
        fn run(&mut self, until: Instant, mut check: impl FnMut(&Self)) {
            loop {
                let msg = self.inflight.iter().map(|m| m.0).min();
                let timer = (0..self.routers.len())
                    .filter(|&i| self.running[i])
                    .filter_map(|i| self.routers[i].poll_timeout())
                    .min();
                let next = match (msg, timer) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => match a.or(b) {
                        Some(t) => t,
                        None => break,
                    },
                };
                if next > until {
                    break;
                }
                self.now = next;
                if msg == Some(next) {
                    let k = self.inflight.iter().position(|m| m.0 == next).expect("msg");
                    let (_, to, src, bytes) = self.inflight.remove(k);
                    if self.running[to] {
                        self.last_rx[to] = Some(self.now);
                        let p = VrrpPacket::new_checked(&bytes[..]).expect("len");
                        let repr = VrrpRepr::parse(&p, src, MULTICAST_ADDR).expect("parse");
                        let _ = self.routers[to].handle_advert(self.now, src, &repr);
                        self.drain(to);
                    }
                } else {
                    for i in 0..self.routers.len() {
                        if self.running[i] && self.routers[i].poll_timeout() == Some(next) {
                            self.routers[i].handle_timeout(next);
                            self.drain(i);
                        }
                    }
                }
                check(self);
            }
            self.now = until;
        }

        fn first_master_after(&self, i: usize, t: Instant) -> Option<Instant> {
            self.log
                .iter()
                .find(|(at, r, s)| *at >= t && *r == i && *s == VrrpState::Master)
                .map(|e| e.0)
        }
    }

    #[test]
    fn timing_formulas() {
        // Reference: RFC 5798 § 6.1, with the default 1 s interval.
        let i = centiseconds(100);
        assert_eq!(skew_time(100, i), Duration::from_micros(609_375));
        assert_eq!(
            master_down_interval(100, i),
            Duration::from_micros(3_609_375)
        );
        assert_eq!(skew_time(255, i), Duration::from_nanos(3_906_250));
        assert_eq!(master_down_interval(0, i), Duration::from_secs(4));
    }

    #[test]
    fn config_validation() {
        assert_eq!(
            Vrrp::new(cfg(0, IP_A)).err(),
            Some(VrrpConfigError::Priority)
        );
        let mut c = cfg(100, IP_A);
        c.vrid = 0;
        assert_eq!(c.validate(), Err(VrrpConfigError::Vrid));
        let mut c = cfg(100, IP_A);
        c.advert_interval_cs = 4096;
        assert_eq!(c.validate(), Err(VrrpConfigError::Interval(4096)));
        let mut c = cfg(100, IP_A);
        c.addresses.clear();
        assert_eq!(c.validate(), Err(VrrpConfigError::Addresses(0)));
    }

    /// Reference: RFC 5798 § 6.4.1 — the owner (priority 255) becomes Master
    /// on Startup, sending an advert first; others become Backup.
    #[test]
    fn startup_owner_and_backup() {
        let t0 = Instant::now();
        let mut owner = Vrrp::new(cfg(255, IP_A)).expect("valid");
        owner.startup(t0);
        assert_eq!(owner.state(), VrrpState::Master);
        assert!(matches!(
            owner.poll_action(),
            Some(Action::SendAdvert(VrrpRepr { priority: 255, .. }))
        ));
        assert_eq!(owner.poll_action(), Some(Action::BecomeMaster));
        assert_eq!(owner.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        let mut b = Vrrp::new(cfg(100, IP_B)).expect("valid");
        b.startup(t0);
        assert_eq!(b.state(), VrrpState::Backup);
        assert_eq!(b.poll_action(), None);
        assert_eq!(
            b.poll_timeout(),
            Some(t0 + Duration::from_micros(3_609_375))
        );
        // Reference: § 6.4.2 — the Backup ignores nothing from a Master, and
        // a Backup's Shutdown sends nothing.
        b.shutdown();
        assert_eq!(b.poll_action(), Some(Action::Stopped));
        assert_eq!(b.poll_action(), None);
        assert_eq!(b.state(), VrrpState::Initialize);
        assert_eq!(b.poll_timeout(), None);
    }

    /// Reference: RFC 5798 § 6.4.2 — a Backup whose Master_Down_Timer fires
    /// becomes Master; § 6.4.3 — the Master advertises every interval.
    #[test]
    fn master_dies_backup_takes_over_within_master_down_interval() {
        let mut lan = Lan::new(vec![cfg(200, IP_A), cfg(100, IP_B)]);
        lan.start(0);
        lan.start(1);
        lan.run(lan.at(10.0), |_| {});
        assert!(lan.routers[0].is_master());
        assert_eq!(lan.routers[1].state(), VrrpState::Backup);
        let mdi_b = lan.routers[1].master_down_interval();
        let died = lan.now;
        lan.kill(0);
        let last_heard = lan.last_rx[1].expect("B heard A");
        lan.run(lan.at(20.0), |_| {});
        let took = lan.first_master_after(1, died).expect("B took over");
        // B's Master_Down_Timer runs from the last advert it heard.
        assert_eq!(took, last_heard + mdi_b);
        assert!(took - died <= mdi_b, "took {:?} > {:?}", took - died, mdi_b);
        assert!(lan.routers[1].is_master());
    }

    /// Reference: RFC 5798 § 6.4.2 (Preempt_Mode true) — a higher-priority
    /// Backup discards a lower-priority Master's adverts and takes over;
    /// § 6.4.3 — that Master then hears a higher priority and becomes Backup.
    #[test]
    fn higher_priority_preempts_when_preempt_is_on() {
        let mut lan = Lan::new(vec![cfg(100, IP_A), cfg(200, IP_B)]);
        lan.start(0);
        lan.run(lan.at(5.0), |_| {});
        assert!(lan.routers[0].is_master());
        let joined = lan.now;
        lan.start(1);
        lan.run(lan.at(15.0), |_| {});
        let took = lan.first_master_after(1, joined).expect("B preempted");
        assert!(took - joined <= lan.routers[1].master_down_interval());
        assert_eq!(lan.routers[0].state(), VrrpState::Backup);
        assert!(lan.log.iter().any(|e| e.1 == 0 && e.2 == VrrpState::Backup));
        assert_eq!(lan.masters(), 1);
    }

    /// Reference: RFC 5798 § 6.4.2 (Preempt_Mode false) — the Backup accepts
    /// any Master's adverts and never preempts.
    #[test]
    fn higher_priority_does_not_preempt_when_preempt_is_off() {
        let mut b = cfg(200, IP_B);
        b.preempt = false;
        let mut lan = Lan::new(vec![cfg(100, IP_A), b]);
        lan.start(0);
        lan.run(lan.at(5.0), |_| {});
        lan.start(1);
        lan.run(lan.at(60.0), |l| assert_eq!(l.masters(), 1));
        assert!(lan.routers[0].is_master());
        assert_eq!(lan.routers[1].state(), VrrpState::Backup);
    }

    /// Reference: RFC 5798 § 6.4.3 (Shutdown: send priority 0) and § 6.4.2
    /// (priority 0 received: Master_Down_Timer = Skew_Time).
    #[test]
    fn priority_zero_gives_fast_takeover() {
        let mut lan = Lan::new(vec![cfg(200, IP_A), cfg(100, IP_B)]);
        lan.start(0);
        lan.start(1);
        lan.run(lan.at(10.5), |_| {});
        assert!(lan.routers[0].is_master());
        let stop = lan.now;
        lan.shutdown(0);
        lan.run(lan.at(20.0), |_| {});
        let took = lan.first_master_after(1, stop).expect("B took over");
        let skew = lan.routers[1].skew_time();
        assert_eq!(took - stop, LATENCY + skew);
        assert!(took - stop < lan.routers[1].master_down_interval() / 5);
        assert_eq!(lan.routers[1].stats().priority_zero_received, 1);
    }

    /// Reference: RFC 5798 § 6.4.3 — a Master receiving priority 0 sends an
    /// advert at once (so Backups do not take over after Skew_Time).
    #[test]
    fn master_answers_priority_zero() {
        let t0 = Instant::now();
        let mut m = Vrrp::new(cfg(255, IP_A)).expect("valid");
        m.startup(t0);
        while m.poll_action().is_some() {}
        let stop = VrrpRepr {
            vrid: 7,
            priority: 0,
            max_advert_int_cs: 100,
            addresses: vec![VIP],
        };
        let t = t0 + Duration::from_millis(300);
        m.handle_advert(t, IP_B, &stop).expect("processed");
        assert!(matches!(m.poll_action(), Some(Action::SendAdvert(_))));
        assert_eq!(m.poll_timeout(), Some(t + Duration::from_secs(1)));
        assert!(m.is_master());
    }

    /// A Master that hears a lower-priority advertisement stays Master (RFC
    /// 5798 § 6.4.3), and re-announces the VIP: that router took the VIP over
    /// while we were silent, and its gratuitous ARPs point the segment's
    /// caches at it (module docs of the driver; the rack saw the VIP black-
    /// holed after a 400 ms stall of the Master's host).
    #[test]
    fn master_reasserts_on_a_lower_priority_advert() {
        let t0 = Instant::now();
        let mut m = Vrrp::new(cfg(255, IP_A)).expect("valid");
        m.startup(t0);
        while m.poll_action().is_some() {}
        let lower = VrrpRepr {
            vrid: 7,
            priority: 100,
            max_advert_int_cs: 100,
            addresses: vec![VIP],
        };
        let t = t0 + Duration::from_millis(300);
        m.handle_advert(t, IP_B, &lower).expect("processed");
        assert!(matches!(
            m.poll_action(),
            Some(Action::SendAdvert(VrrpRepr { priority: 255, .. }))
        ));
        assert_eq!(m.poll_action(), Some(Action::Reassert));
        assert_eq!(m.poll_action(), None);
        assert_eq!(m.poll_timeout(), Some(t + Duration::from_secs(1)));
        assert!(m.is_master());
        assert_eq!(m.stats().reasserted, 1);
    }

    /// A stalled Master (silent past the Backup's Master_Down_Interval, then
    /// back): the Backup takes over, the Master re-asserts on its first
    /// advertisement, the Backup steps down; one Master at the end.
    #[test]
    fn a_stalled_master_reasserts_and_the_backup_steps_down() {
        let mut lan = Lan::new(vec![cfg(200, IP_A), cfg(100, IP_B)]);
        lan.start(0);
        lan.start(1);
        lan.run(lan.at(10.0), |_| {});
        assert!(lan.routers[0].is_master());
        // A stalls for 5 s: nothing it would send leaves. What B sends
        // meanwhile reaches A (a stalled host reads its socket's queue when
        // it resumes).
        let (from, to) = (lan.at(10.0), lan.at(15.0));
        let clock = std::rc::Rc::new(std::cell::Cell::new(lan.now));
        let c = clock.clone();
        lan.loss = Box::new(move |a, _| a == 0 && c.get() >= from && c.get() < to);
        while lan.now < lan.at(20.0) {
            let next = lan.now + Duration::from_millis(50);
            lan.run(next, |_| {});
            clock.set(lan.now);
        }
        assert!(lan.first_master_after(1, from).is_some(), "B took over");
        assert!(lan.reasserts >= 1, "A re-announced the VIP");
        assert!(lan.routers[0].is_master());
        assert_eq!(lan.routers[1].state(), VrrpState::Backup);
        assert_eq!(lan.masters(), 1);
    }

    /// Reference: RFC 5798 § 6.4.3 — equal priority: the sender with the
    /// higher primary IP address wins.
    #[test]
    fn equal_priority_higher_ip_wins() {
        let mut lan = Lan::new(vec![cfg(100, IP_B), cfg(100, IP_A)]);
        lan.start(0);
        lan.start(1);
        // Same priority, same start: both timers fire together, both become
        // Master, and the adverts settle it.
        lan.run(lan.at(10.0), |_| {});
        assert!(lan.log.iter().filter(|e| e.2 == VrrpState::Master).count() >= 2);
        assert!(lan.routers[0].is_master(), "192.0.2.12 > 192.0.2.11");
        assert_eq!(lan.routers[1].state(), VrrpState::Backup);
        lan.run(lan.at(60.0), |l| assert_eq!(l.masters(), 1));
    }

    #[test]
    fn ignored_adverts() {
        let t0 = Instant::now();
        let mut b = Vrrp::new(cfg(100, IP_A)).expect("valid");
        let a = VrrpRepr {
            vrid: 7,
            priority: 200,
            max_advert_int_cs: 100,
            addresses: vec![VIP],
        };
        assert_eq!(b.handle_advert(t0, IP_B, &a), Err(Ignored::NotRunning));
        b.startup(t0);
        let other = VrrpRepr {
            vrid: 8,
            ..a.clone()
        };
        assert_eq!(
            b.handle_advert(t0, IP_B, &other),
            Err(Ignored::OtherVrid(8))
        );
        assert_eq!(b.handle_advert(t0, IP_A, &a), Err(Ignored::Own));
        let zero = VrrpRepr {
            max_advert_int_cs: 0,
            ..a.clone()
        };
        assert_eq!(b.handle_advert(t0, IP_B, &zero), Err(Ignored::ZeroInterval));
        let deadline = b.poll_timeout();
        assert_eq!(
            deadline,
            Some(t0 + Duration::from_micros(3_609_375)),
            "unchanged"
        );
        // A Master advertising 2 s is learnt [RFC 5798 § 6.4.2].
        let slow = VrrpRepr {
            max_advert_int_cs: 200,
            addresses: vec![],
            ..a
        };
        let t = t0 + Duration::from_secs(1);
        b.handle_advert(t, IP_B, &slow).expect("ok");
        assert_eq!(b.master_adver_interval(), Duration::from_secs(2));
        assert_eq!(b.poll_timeout(), Some(t + Duration::from_micros(7_218_750)));
        assert_eq!(b.stats().address_mismatch, 1);
        assert_eq!(b.stats().adverts_ignored, 4);
    }

    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Exactly one Master at every instant under seeded random loss of up
    /// to two consecutive adverts per link (fewer than the three intervals
    /// of Master_Down_Interval), through preemption, shutdown and restart.
    #[test]
    fn exactly_one_master_under_bounded_loss() {
        for seed in 1..=20u64 {
            let mut lan = Lan::new(vec![cfg(200, IP_A), cfg(100, IP_B)]);
            lan.start(0);
            lan.start(1);
            lan.run(lan.at(5.0), |_| {});
            assert_eq!(lan.masters(), 1, "seed {seed}: converged");
            let mut rng = seed;
            let mut run_of_losses = [[0u32; 2]; 2];
            lan.loss = Box::new(move |from, to| {
                let lose = splitmix(&mut rng) % 100 < 40 && run_of_losses[from][to] < 2;
                run_of_losses[from][to] = if lose { run_of_losses[from][to] + 1 } else { 0 };
                lose
            });
            lan.run(lan.at(300.0), |l| {
                assert_eq!(l.masters(), 1, "seed {seed} at {:?}", l.now - l.t0)
            });
            assert!(
                lan.routers[0].is_master(),
                "seed {seed}: the higher priority holds"
            );
        }
    }

    /// Under unbounded seeded loss two Masters can coexist briefly (VRRP
    /// cannot prevent that), but there is never a moment without one after
    /// the first election, and once loss stops exactly one — the
    /// higher-priority router — remains.
    #[test]
    fn heavy_loss_never_leaves_the_vip_unowned_and_reconverges() {
        let mut seeds_with_dual_master = 0;
        for seed in 1..=20u64 {
            let mut lan = Lan::new(vec![cfg(200, IP_A), cfg(100, IP_B)]);
            let mut rng = seed.wrapping_mul(0x1234_5678_9abc_def1);
            lan.loss = Box::new(move |_, _| splitmix(&mut rng) % 100 < 50);
            lan.start(0);
            lan.start(1);
            let mut elected = false;
            let mut dual = false;
            lan.run(lan.at(300.0), |l| {
                elected |= l.masters() > 0;
                dual |= l.masters() > 1;
                if elected {
                    assert!(
                        l.masters() >= 1,
                        "seed {seed}: VIP unowned at {:?}",
                        l.now - l.t0
                    );
                }
            });
            assert!(elected);
            seeds_with_dual_master += u32::from(dual);
            lan.loss = Box::new(|_, _| false);
            let quiet = lan.now;
            lan.run(lan.at(310.0), |_| {});
            assert_eq!(lan.masters(), 1, "seed {seed}");
            assert!(lan.routers[0].is_master());
            lan.run(lan.at(400.0), |l| assert_eq!(l.masters(), 1));
            assert!(lan.log.iter().all(|e| e.0 < quiet + Duration::from_secs(3)
                || e.2 != VrrpState::Master
                || e.1 == 0));
        }
        // The loss really produced split-brain episodes to recover from.
        assert!(seeds_with_dual_master > 0);
    }
}
