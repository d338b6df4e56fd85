//! Pair mode in the daemon ([DESIGN.md § 4] "pair", seed 002 fig. 13): the
//! thin driver around the sans-IO [`PairReplicator`].
//!
//! * one UDP socket on `[cluster] listen` (this node's unique address) for
//!   the sync messages; a receive task hands each datagram to the driver;
//! * the driver ([`crate::server`]) steps datagrams and timeouts into the
//!   replicator, proposes through the [`Replicator`] seam, and after every
//!   pump calls [`PairNode::flush`]: transmits go out, and a role change flips
//!   expiry proposals (only the primary proposes `Expire`) and the
//!   dispatcher health priority (the secondary advertises 0, so the
//!   dispatcher steers every registration to the primary);
//! * metrics `haven_pair_*` from [`PairReplicator::stats`], once a second.
//!
//! [`Replicator`]: crate::replicate::Replicator

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use metrics::{Unit, describe_counter, describe_gauge};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::command::StateMachine;
use crate::config::Config;
use crate::engine::Engine;
use crate::pair::{PairReplicator, PairStats, Role};

/// 1 while this node is the pair's primary, 0 as secondary.
pub const PAIR_ROLE: &str = "haven_pair_role";
/// 1 while this node holds a complete copy (a primary always does).
pub const PAIR_SYNCED: &str = "haven_pair_synced";
/// 1 while this primary applies without the secondary's acknowledgement.
pub const PAIR_DEGRADED: &str = "haven_pair_degraded";
/// Data Forward messages sent (first transmissions).
pub const PAIR_FORWARDS: &str = "haven_pair_forwards_total";
/// Data Forward retransmissions.
pub const PAIR_FORWARD_RETRANSMITS: &str = "haven_pair_forward_retransmits_total";
/// Forward-to-acknowledgement latency: `stat="mean"` and `stat="max"`.
pub const PAIR_FORWARD_LATENCY: &str = "haven_pair_forward_latency_seconds";
/// Commands applied after the secondary acknowledged them.
pub const PAIR_SYNC_APPLIES: &str = "haven_pair_synchronous_applies_total";
/// Commands applied by a primary alone (secondary silent or lagging).
pub const PAIR_DEGRADED_APPLIES: &str = "haven_pair_degraded_applies_total";
/// Data dumps, `direction="sent"|"received"`.
pub const PAIR_DUMPS: &str = "haven_pair_dumps_total";
/// Sync datagrams refused, `reason="auth"|"replay"|"malformed"`.
pub const PAIR_REFUSED: &str = "haven_pair_refused_total";
/// Times this node became primary.
pub const PAIR_TAKEOVERS: &str = "haven_pair_takeovers_total";
/// Times this node stepped down from primary (dual-primary resolution).
pub const PAIR_STEP_DOWNS: &str = "haven_pair_step_downs_total";

/// The wall clock the engine uses (time since the Unix epoch); the pair
/// runs on the same clock so one `now` serves both.
fn wall_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// One sync datagram: source and UDP payload.
pub type Datagram = (SocketAddrV4, Vec<u8>);

/// The replicator with its socket.
pub struct PairNode {
    pair: PairReplicator,
    sock: Arc<UdpSocket>,
    /// Whether this node can serve registrations (primary), for the
    /// dispatcher health advert.
    serving: watch::Sender<bool>,
}

/// The receive side: datagrams from the sync socket.
pub struct PairInput {
    rx: mpsc::Receiver<Datagram>,
}

impl PairInput {
    /// The next datagram (pending forever once the socket task ended).
    pub async fn next(&mut self) -> Datagram {
        match self.rx.recv().await {
            Some(d) => d,
            None => std::future::pending().await,
        }
    }

    /// A datagram already queued, without waiting.
    ///
    /// # Errors
    /// Nothing queued (or the socket task ended).
    pub fn try_next(&mut self) -> Result<Datagram, mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }
}

/// Binds the sync socket and builds the replicator (an unsynced secondary
/// that asks the peer for a dump at once). `serving` follows the role.
///
/// # Errors
/// An invalid `[cluster.pair]` (already refused by `Config::validate`), or
/// the bind failed.
pub async fn start(
    config: &Config,
    state: StateMachine,
    serving: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(PairNode, PairInput)> {
    let now = wall_now();
    // Each boot's first sequence number exceeds every earlier boot's (µs
    // since the epoch × 1024), so the peer's replay window accepts it.
    let initial = u64::try_from(now.as_micros())
        .unwrap_or(u64::MAX >> 10)
        .saturating_mul(1024);
    let cfg = config.pair_config(initial)?;
    let sock = Arc::new(
        UdpSocket::bind(cfg.local)
            .await
            .with_context(|| format!("[cluster] listen (pair sync) on {}", cfg.local))?,
    );
    info!(local = %cfg.local, peer = %cfg.peer, priority = cfg.priority,
        interval_cs = cfg.advert_interval_cs, "pair sync listening");
    let pair = PairReplicator::new(cfg, state, now);
    let (tx, rx) = mpsc::channel::<Datagram>(4096);
    let rsock = Arc::clone(&sock);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                r = rsock.recv_from(&mut buf) => match r {
                    Ok((n, SocketAddr::V4(from))) => {
                        let bytes = buf.get(..n).unwrap_or_default().to_vec();
                        if tx.send((from, bytes)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // ICMP port unreachable from a dead peer lands here.
                    Err(e) => debug!(error = %e, "pair sync receive error"),
                }
            }
        }
    });
    describe();
    serving.send_replace(false);
    Ok((
        PairNode {
            pair,
            sock,
            serving,
        },
        PairInput { rx },
    ))
}

fn describe() {
    describe_gauge!(PAIR_ROLE, "1 on the pair's primary, 0 on the secondary");
    describe_gauge!(PAIR_SYNCED, "1 while this node holds a complete copy");
    describe_gauge!(PAIR_DEGRADED, "1 while the primary applies alone");
    describe_counter!(PAIR_FORWARDS, "Data Forward messages sent");
    describe_counter!(PAIR_FORWARD_RETRANSMITS, "Data Forward retransmissions");
    describe_gauge!(
        PAIR_FORWARD_LATENCY,
        Unit::Seconds,
        "forward to acknowledgement latency (stat=mean|max)"
    );
    describe_counter!(PAIR_SYNC_APPLIES, "commands applied after the peer's ack");
    describe_counter!(
        PAIR_DEGRADED_APPLIES,
        "commands applied by the primary alone"
    );
    describe_counter!(PAIR_DUMPS, "data dumps sent and received");
    describe_counter!(
        PAIR_REFUSED,
        "sync datagrams refused (auth, replay, malformed)"
    );
    describe_counter!(PAIR_TAKEOVERS, "times this node became primary");
    describe_counter!(PAIR_STEP_DOWNS, "times this node stepped down");
}

impl PairNode {
    /// The replicator (the driver proposes and polls applied entries).
    pub fn replicator(&mut self) -> &mut PairReplicator {
        &mut self.pair
    }

    /// Read-only view.
    pub fn replica(&self) -> &PairReplicator {
        &self.pair
    }

    /// A datagram from the sync socket.
    pub fn input(&mut self, (src, bytes): Datagram) {
        self.pair.handle_datagram(wall_now(), src, &bytes);
    }

    /// When the driver must call [`Self::handle_timeout`] (wall clock).
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.pair.poll_timeout()
    }

    /// Advances the replicator's clock (before proposing, too: `propose`
    /// stamps entries with the last `now`).
    pub fn handle_timeout(&mut self) {
        self.pair.handle_timeout(wall_now());
    }

    /// After every pump: sends the sync messages and follows dumps and
    /// role changes in the engine.
    pub async fn flush(&mut self, engine: &mut Engine) {
        if self.pair.take_restored() {
            // A dump replaced the whole table without `Applied` entries; the
            // engine reads the state machine's expiry schedule, so there is
            // nothing to rebuild.
            info!("pair state restored from the primary's dump");
        }
        if self.pair.take_role_change() {
            let primary = self.pair.role() == Role::Primary;
            info!(role = self.pair.role().as_str(), "pair role changed");
            // Only the primary proposes expiries; the secondary mirrors
            // them from the forwards.
            engine.set_propose_expiries(primary);
            self.serving.send_replace(primary);
        }
        self.send_all().await;
    }

    async fn send_all(&mut self) {
        while let Some((to, bytes)) = self.pair.poll_transmit() {
            if let Err(e) = self.sock.send_to(&bytes, SocketAddr::V4(to)).await {
                // The peer is down or unreachable: advertisements go on.
                debug!(error = %e, %to, "pair sync send failed");
            }
        }
    }

    /// Graceful stop [RFC 5798 § 6.4.3]: a primary's priority-0 advert lets
    /// the secondary take over after Skew_Time.
    pub async fn shutdown(&mut self) {
        self.pair.shutdown();
        self.send_all().await;
    }

    /// Whether registrations are answered here (the primary).
    pub fn serving(&self) -> bool {
        self.pair.role() == Role::Primary
    }

    /// The role for the admin API.
    pub fn role(&self) -> &'static str {
        self.pair.role().as_str()
    }

    /// The `haven_pair_*` metrics from the replicator's counters.
    pub fn publish_metrics(&self) {
        publish(&self.pair.stats());
    }
}

fn publish(s: &PairStats) {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    metrics::gauge!(PAIR_ROLE).set(flag(s.role == Role::Primary));
    metrics::gauge!(PAIR_SYNCED).set(flag(s.synced));
    metrics::gauge!(PAIR_DEGRADED).set(flag(s.degraded));
    metrics::counter!(PAIR_FORWARDS).absolute(s.forwards_sent);
    metrics::counter!(PAIR_FORWARD_RETRANSMITS).absolute(s.forward_retransmits);
    metrics::counter!(PAIR_SYNC_APPLIES).absolute(s.synchronous_applies);
    metrics::counter!(PAIR_DEGRADED_APPLIES).absolute(s.degraded_applies);
    metrics::counter!(PAIR_DUMPS, "direction" => "sent").absolute(s.dumps_sent);
    metrics::counter!(PAIR_DUMPS, "direction" => "received").absolute(s.dumps_received);
    metrics::counter!(PAIR_REFUSED, "reason" => "auth").absolute(s.auth_failures);
    metrics::counter!(PAIR_REFUSED, "reason" => "replay").absolute(s.replays);
    metrics::counter!(PAIR_REFUSED, "reason" => "malformed").absolute(s.malformed);
    metrics::counter!(PAIR_TAKEOVERS).absolute(s.takeovers);
    metrics::counter!(PAIR_STEP_DOWNS).absolute(s.step_downs);
    let mean = if s.synchronous_applies == 0 {
        0.0
    } else {
        s.forward_latency_total.as_secs_f64() / s.synchronous_applies as f64
    };
    metrics::gauge!(PAIR_FORWARD_LATENCY, "stat" => "mean").set(mean);
    metrics::gauge!(PAIR_FORWARD_LATENCY, "stat" => "max").set(s.forward_latency_max.as_secs_f64());
}
