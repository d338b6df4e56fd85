//! The daemon around the sans-IO cores (mini-redis's `server::run` shape).
//!
//! * one [`net::Endpoint`] per realm (VIP:434), each with a receive task
//!   that hands batches of datagrams to the driver (not in encap mode
//!   unless `[dispatch] bind_vip`: there the dispatcher holds VIP:434);
//! * the **driver** task owns the [`Engine`] and the [`Replicator`]: it feeds
//!   datagrams and applied entries to the engine, moves proposals to the
//!   replicator, sends replies, fires timers, and turns engine events into
//!   metrics. One owner, no locks on the registration path;
//! * the admin gRPC service reads the shared binding table directly and asks
//!   the driver for changes (removals, membership) over a channel;
//! * in raft mode ([`crate::cluster`]) the driver also owns the Raft replica:
//!   it ticks it, steps the transport's messages into it, persists and
//!   applies after every pump (a storage failure stops the daemon with an
//!   error), and serves the Raft transport's gRPC on `[cluster] listen`;
//! * in pair mode ([`crate::pairmode`]) the driver owns the pair
//!   replicator: sync datagrams and its timer step it, and after every pump
//!   its messages go out and role changes reach the engine;
//! * with `[dispatch]` the node advertises its health to the dispatchers
//!   ([`crate::advertise`]): priority 0 while draining (admin `Drain`) or
//!   while it cannot serve (raft: not a member or no known leader; pair:
//!   secondary). In encap mode the dispatcher's frames arrive on the
//!   [`crate::ingress`] listener and join the batches, and every reply
//!   goes back through a dispatcher: the one that delivered the request
//!   when the driver still knows it ([`Arrivals`]), else the one that
//!   forwarded for the reply's realm VIP last;
//! * shutdown: SIGTERM/SIGINT stop the receive tasks and the admin server,
//!   then the driver finishes what is queued and exits (a pair primary
//!   first sends its priority-0 advertisement [RFC 5798 § 6.4.3]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use haven_proto::grpc;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::advertise::{self, DispatchMode};
use crate::binding::{BindingEntry, BindingTable, Encap};
use crate::cluster::{self, AdminError, RaftInput, RaftNode};
use crate::command::StateMachine;
use crate::config::{ClusterMode, Config, RealmId};
use crate::engine::{Engine, EngineConfig, Event, Handled};
use crate::ingress::{Egress, Ingress};
use crate::limiter::Limiter;

/// `haven_ready`: 1 while this node advertises itself able to serve
/// (non-zero priority to the dispatchers, `Driver::pump`), 0 otherwise.
const READY: &str = "haven_ready";

/// The flood limiter, shared by the receive tasks (which drop limited
/// sources before queueing) and the driver (which charges failures).
/// Locked for a batch at a time, never across an await.
type SharedLimiter = Arc<std::sync::Mutex<Limiter>>;

fn lock(l: &SharedLimiter) -> std::sync::MutexGuard<'_, Limiter> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a datagram from `src` may be queued for the driver: tunnel data
/// (type 4, the data plane's [RFC 3519 § 3.3]) always; anything else unless
/// the limiter drops its source (counted).
fn admit(limiter: Option<&mut Limiter>, now: Duration, src: SocketAddrV4, bytes: &[u8]) -> bool {
    let Some(l) = limiter else { return true };
    if bytes.first() == Some(&haven_proto::udptun::TYPE_TUNNEL_DATA) {
        return true;
    }
    match l.check(now, *src.ip()) {
        Ok(()) => true,
        Err(drop) => {
            metrics::counter!(telemetry::REGISTRATION_DROPS, "realm" => "",
                "reason" => drop.as_str())
            .increment(1);
            false
        }
    }
}
use crate::net::{Endpoint, RecvBuffers};
use crate::pairmode::{self, PairInput, PairNode};
use crate::replicate::{LocalReplicator, Replicator};
use crate::subscriber::StaticSubscribers;
use crate::telemetry;

/// The wall clock as the engine wants it: time since the Unix epoch (it is
/// compared with the NTP timestamps mobile nodes put in their requests).
fn wall_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A batch of datagrams from one endpoint: (source, destination VIP:port,
/// payload), and the dispatcher that forwarded it in encap mode (`None`:
/// straight to a VIP socket).
struct Batch {
    datagrams: Vec<(SocketAddrV4, SocketAddrV4, Vec<u8>)>,
    via: Option<SocketAddrV4>,
}

/// Requests from the admin API to the driver.
enum AdminOp {
    Remove {
        realm: RealmId,
        home_address: Ipv4Addr,
        done: oneshot::Sender<bool>,
    },
    AddMember {
        id: u64,
        address: String,
        done: oneshot::Sender<Result<Vec<u64>, AdminError>>,
    },
    RemoveMember {
        id: u64,
        done: oneshot::Sender<Result<Vec<u64>, AdminError>>,
    },
    TransferLeader {
        to: u64,
        done: oneshot::Sender<Result<u64, AdminError>>,
    },
}

/// What the driver publishes for the admin Status call.
#[derive(Debug, Clone, Default)]
struct Published {
    applied: u64,
    /// Free addresses in each realm's dynamic pool, by realm index.
    pool_free: Vec<u64>,
    /// Raft mode: term, leader, indexes, members, role.
    raft: Option<cluster::Published>,
    /// Pair mode: the role and applied log index.
    pair: Option<PairPublished>,
}

/// The pair part of the admin Status reply.
#[derive(Debug, Clone, Default)]
struct PairPublished {
    role: &'static str,
    applied_index: u64,
    synced: bool,
}

/// The replication mode the driver runs.
enum Repl {
    Local(LocalReplicator),
    Raft(Box<RaftNode>),
    Pair(Box<PairNode>),
}

impl Repl {
    fn get(&mut self) -> &mut dyn Replicator {
        match self {
            Repl::Local(l) => l,
            Repl::Raft(r) => r.replicator(),
            Repl::Pair(p) => p.replicator(),
        }
    }

    fn state(&self) -> &StateMachine {
        match self {
            Repl::Local(l) => l.state(),
            Repl::Raft(r) => r.replica().state(),
            Repl::Pair(p) => p.replica().state(),
        }
    }

    /// Whether datagrams go to the engine (a Raft node outside the group
    /// answers nothing; a pair secondary leaves them to the primary).
    fn serving(&self) -> bool {
        match self {
            Repl::Local(_) => true,
            Repl::Raft(r) => r.serving(),
            Repl::Pair(p) => p.serving(),
        }
    }

    /// The drop reason when [`Self::serving`] is false.
    fn not_serving_reason(&self) -> &'static str {
        match self {
            Repl::Pair(_) => "not_primary",
            _ => "not_member",
        }
    }
}

/// Awaits the pair's sync datagrams, forever pending in other modes.
async fn pair_input(input: &mut Option<PairInput>) -> pairmode::Datagram {
    match input {
        Some(i) => i.next().await,
        None => std::future::pending().await,
    }
}

/// Awaits the Raft inputs, forever pending in local mode.
async fn raft_input(input: &mut Option<RaftInput>) -> cluster::Input {
    match input {
        Some(i) => i.next().await,
        None => std::future::pending().await,
    }
}

/// Runs the node until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // The recorder (and its listener) first, so that nothing recorded during
    // start-up is lost; readiness is `haven_build_info`, set last below.
    telemetry::install(config.metrics.listen)
        .with_context(|| format!("metrics listener on {}", config.metrics.listen))?;

    let state = StateMachine::from_config(&config);
    let table = state.reader();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Whether this node can serve registrations (dispatcher health): the
    // driver updates it after every pump. A Raft node starts as not ready
    // (no leader known, nothing replayed), so its first advert is
    // priority 0; a pair node's follows its role as before.
    let ready_at_start = config.cluster.mode != ClusterMode::Raft;
    let (serve_tx, serve_rx) = watch::channel(ready_at_start);
    metrics::gauge!(READY).set(if ready_at_start { 1.0 } else { 0.0 });
    // Raft: the store is opened and the state machine restored from its
    // snapshot before the engine starts reading it; peers refused after
    // their stream ended go to the advertiser (withdrawals at the
    // dispatchers, `advertise.rs`).
    let mut refusals = None;
    let (replicator, raft_in, raft_service, pair_in) = match config.cluster.mode {
        ClusterMode::Local => (Repl::Local(LocalReplicator::new(state)), None, None, None),
        ClusterMode::Raft => {
            let started = cluster::start(&config, state).await?;
            refusals = Some(started.refusals);
            (
                Repl::Raft(Box::new(started.node)),
                Some(started.input),
                Some(started.service),
                None,
            )
        }
        ClusterMode::Pair => {
            let (node, input) =
                pairmode::start(&config, state, serve_tx.clone(), stop_rx.clone()).await?;
            (Repl::Pair(Box::new(node)), None, None, Some(input))
        }
    };
    let subscribers = Arc::new(StaticSubscribers::from_config(&config));
    let mut engine = Engine::new(
        EngineConfig::from_config(&config),
        &config.realm,
        subscribers,
        table.clone(),
    );
    match &replicator {
        // Only the leader proposes expiries; the pump follows changes.
        Repl::Raft(r) => engine.set_propose_expiries(r.replica().is_leader()),
        // A pair node boots as secondary; `PairNode::flush` follows.
        Repl::Pair(p) => engine.set_propose_expiries(p.serving()),
        Repl::Local(_) => {}
    }

    // Bind every realm before announcing readiness: a bad VIP fails start-up.
    // Not in encap mode (unless `bind_vip`): everything arrives on the
    // encap listener and leaves as `ToClient` frames, and on the
    // dispatcher's host a VIP:434 socket of ours would take the
    // dispatcher's datagrams (the kernel delivers to the one bound last).
    let bind_vip = config
        .dispatch
        .as_ref()
        .is_none_or(crate::advertise::DispatchConfig::binds_vip);
    let mut endpoints: HashMap<SocketAddrV4, Arc<Endpoint>> = HashMap::new();
    for realm in config.realm.iter().filter(|_| bind_vip) {
        let addr = SocketAddrV4::new(realm.vip, realm.port);
        let ep =
            Endpoint::bind(addr).with_context(|| format!("realm {}: bind {addr}", realm.name))?;
        info!(realm = %realm.name, %addr, "listening for registrations");
        endpoints.insert(addr, Arc::new(ep));
    }

    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(1024);
    let (admin_tx, admin_rx) = mpsc::channel::<AdminOp>(64);
    // Status tells the mode from the first call on; the driver fills in
    // the rest after its first pump.
    let (pub_tx, pub_rx) = watch::channel(Published {
        pair: (config.cluster.mode == ClusterMode::Pair).then_some(PairPublished {
            role: "secondary",
            applied_index: 0,
            synced: false,
        }),
        ..Published::default()
    });
    let (drain_tx, drain_rx) = watch::channel(false);

    // The dispatcher side: encap listener (its frames join the batches)
    // and the health advertiser.
    let limiter: Option<SharedLimiter> = config.registration.limits.enabled.then(|| {
        Arc::new(std::sync::Mutex::new(Limiter::new(
            config.registration.limits,
            wall_now(),
        )))
    });
    let mut egress = None;
    let mut side_tasks = Vec::new();
    if let Some(d) = &config.dispatch {
        if d.mode == DispatchMode::Encap {
            let listen = d.encap_listen();
            let vips = config
                .realm
                .iter()
                .map(|r| SocketAddrV4::new(r.vip, r.port));
            let (ingress, eg) = Ingress::bind(listen, vips)
                .await
                .with_context(|| format!("[dispatch] encap_listen on {listen}"))?;
            info!(addr = %listen, "dispatcher encap listener");
            egress = Some(eg);
            side_tasks.push(tokio::spawn(receive_encap(
                ingress,
                batch_tx.clone(),
                stop_rx.clone(),
                limiter.clone(),
            )));
        }
        let (adv_tx, adv_rx) = watch::channel(true);
        side_tasks.push(tokio::spawn(advert_priority(
            drain_rx.clone(),
            serve_rx,
            adv_tx,
            stop_rx.clone(),
        )));
        let (d, stop) = (d.clone(), stop_rx.clone());
        let names = config.cluster.dispatch_sources();
        info!(to = ?d.advertise_to, source = %d.source, "advertising health to the dispatchers");
        side_tasks.push(tokio::spawn(async move {
            let refusals = refusals.map(|rx| advertise::Refusals { rx, names });
            if let Err(e) = advertise::run(d, adv_rx, stop, refusals).await {
                warn!(error = %e, "health advertiser stopped");
            }
        }));
    }

    // The data plane [DESIGN.md § 6]: TUN devices for the home prefixes,
    // the raw IP-in-IP socket and their tasks (`[dataplane] enabled`).
    // After the encap listener: in encap mode UDP tunnel data leaves
    // through the dispatcher, as replies do (`egress`).
    let dataplane = if config.dataplane.enabled {
        let dp = crate::dataplane::run::start(
            &config.dataplane,
            &config.realm,
            table.clone(),
            &endpoints,
            egress.clone(),
            stop_rx.clone(),
        )
        .context("data plane (needs CAP_NET_ADMIN and CAP_NET_RAW)")?;
        Some(dp)
    } else {
        None
    };

    let mut receivers = Vec::new();
    for ep in endpoints.values() {
        receivers.push(tokio::spawn(receive(
            ep.clone(),
            batch_tx.clone(),
            stop_rx.clone(),
            limiter.clone(),
        )));
    }
    drop(batch_tx);

    let admin = AdminService {
        auth: AdminAuth::from_config(&config.admin),
        config: Arc::new(config.clone()),
        table: table.clone(),
        ops: admin_tx,
        published: pub_rx,
        started,
        drain: drain_tx,
    };
    let admin_listen = config.admin.listen;
    let admin_listener = tokio::net::TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("admin listener on {admin_listen}"))?;
    info!(
        addr = %admin_listen,
        tls = config.admin.tls.is_some(),
        tokens = config.admin.tokens.write.is_some() || config.admin.tokens.read.is_some(),
        "admin API listening"
    );
    let mut admin_stop = stop_rx.clone();
    let admin_shutdown = async move {
        let _ = admin_stop.wait_for(|s| *s).await;
    };
    let admin_router = tonic::transport::Server::builder()
        .add_service(grpc::admin_server::AdminServer::new(admin));
    let admin_task = match config.admin.tls.as_ref() {
        Some(t) => {
            let m = t
                .material
                .as_ref()
                .context("[admin.tls] files were not loaded")?;
            let tls = crate::tls::server_config(m).context("[admin.tls]")?;
            tokio::spawn(admin_router.serve_with_incoming_shutdown(
                crate::tls::incoming(admin_listener, tls, "admin"),
                admin_shutdown,
            ))
        }
        None => tokio::spawn(admin_router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(admin_listener),
            admin_shutdown,
        )),
    };

    let raft_task = match (raft_service, config.cluster.listen) {
        (Some(service), Some(listen)) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("[cluster] listen on {listen}"))?;
            let tls = config.cluster.tls.as_ref();
            info!(addr = %listen, tls = tls.is_some(), "raft transport listening");
            let router = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(service);
            // No graceful shutdown: peers hold their streams open for as
            // long as they live, so the task is aborted once the driver is
            // done (a peer then sees a reset and reconnects elsewhere).
            match tls {
                Some(t) => {
                    let m = t
                        .material
                        .as_ref()
                        .context("[cluster.tls] files were not loaded")?;
                    let tls = crate::tls::server_config(m).context("[cluster.tls]")?;
                    Some(tokio::spawn(router.serve_with_incoming(
                        crate::tls::incoming(listener, tls, "cluster"),
                    )))
                }
                None => Some(tokio::spawn(router.serve_with_incoming(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                ))),
            }
        }
        _ => None,
    };

    // `haven_build_info` last: its presence means the log is open and every
    // listener is bound (supervisors and tests wait on it).
    telemetry::mark_ready();

    let names: HashMap<RealmId, String> = config
        .realm
        .iter()
        .enumerate()
        .map(|(i, r)| (RealmId(i as u16), r.name.clone()))
        .collect();
    let mut driver = tokio::spawn(drive(
        Driver {
            engine,
            replicator,
            endpoints,
            table,
            names,
            published: pub_tx,
            serve: serve_tx,
            egress,
            arrivals: Arrivals::default(),
            dataplane: dataplane.as_ref().map(|d| d.udp.clone()),
            limiter,
        },
        batch_rx,
        admin_rx,
        raft_in,
        pair_in,
    ));

    let early = tokio::select! {
        () = shutdown => None,
        r = &mut driver => Some(r),
    };
    if let Some(r) = early {
        // The driver only ends by itself on a fatal error (the Raft log
        // cannot be written): stop serving and exit non-zero.
        let _ = stop_tx.send(true);
        r.context("driver task")??;
        anyhow::bail!("the driver stopped unexpectedly");
    }
    info!("shutting down");
    let _ = stop_tx.send(true);
    for r in receivers {
        let _ = r.await;
    }
    for t in dataplane.into_iter().flat_map(|d| d.tasks) {
        let _ = t.await;
    }
    // The encap receiver holds a batch sender too; the advertiser sends
    // its last priority-0 advert on the stop signal.
    for t in side_tasks {
        let _ = t.await;
    }
    // The receive tasks held the batch senders: the driver drains what is
    // queued, then sees the channel close and returns.
    driver.await.context("driver task")??;
    admin_task.await.context("admin task")??;
    if let Some(t) = raft_task {
        t.abort();
        match t.await {
            Ok(r) => r.context("raft transport")?,
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(e).context("raft transport task"),
        }
    }
    info!("stopped");
    Ok(())
}

/// Receives batches of datagrams from one endpoint until told to stop.
/// A limited source is dropped here, before its datagram is copied and
/// queued, so a flood does not queue valid requests behind it.
async fn receive(
    ep: Arc<Endpoint>,
    tx: mpsc::Sender<Batch>,
    mut stop: watch::Receiver<bool>,
    limiter: Option<SharedLimiter>,
) {
    let mut bufs = RecvBuffers::default();
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            res = ep.recv(&mut bufs) => match res {
                Ok(_) => {
                    let datagrams: Vec<_> = {
                        let mut l = limiter.as_ref().map(lock);
                        let now = wall_now();
                        bufs.datagrams()
                            .filter(|(r, bytes)| admit(l.as_deref_mut(), now, r.src, bytes))
                            .map(|(r, bytes)| (r.src, r.dst, bytes.to_vec()))
                            .collect()
                    };
                    if datagrams.is_empty() {
                        continue;
                    }
                    if tx.send(Batch { datagrams, via: None }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux;
                    // they are not fatal for a datagram socket.
                    debug!(error = %e, "receive error");
                    metrics::counter!(telemetry::REGISTRATION_DROPS, "reason" => "socket_error")
                        .increment(1);
                }
            }
        }
    }
}

/// Receives the dispatcher's encap frames (DESIGN.md § 5) and hands them to
/// the driver as if the VIP socket had received them.
async fn receive_encap(
    mut ingress: Ingress,
    tx: mpsc::Sender<Batch>,
    mut stop: watch::Receiver<bool>,
    limiter: Option<SharedLimiter>,
) {
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            res = ingress.recv() => match res {
                Ok(d) => {
                    // The frame header carries the mobile node's address:
                    // the limiter judges it, not the dispatcher's.
                    let admitted = {
                        let mut l = limiter.as_ref().map(lock);
                        admit(l.as_deref_mut(), wall_now(), d.src, &d.payload)
                    };
                    if !admitted {
                        continue;
                    }
                    let datagrams = vec![(d.src, d.dst, d.payload)];
                    let via = Some(d.dispatcher);
                    if tx.send(Batch { datagrams, via }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    debug!(error = %e, "encap receive error");
                    metrics::counter!(telemetry::REGISTRATION_DROPS, "reason" => "socket_error")
                        .increment(1);
                }
            }
        }
    }
}

/// The advertiser's "priority 0" flag: draining (admin `Drain`) or unable
/// to serve (raft: outside the group or no leader; pair: secondary), so
/// the dispatchers steer new mobile nodes elsewhere (DESIGN.md § 5).
async fn advert_priority(
    mut drain: watch::Receiver<bool>,
    mut serve: watch::Receiver<bool>,
    out: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let zero = *drain.borrow_and_update() || !*serve.borrow_and_update();
        out.send_if_modified(|v| std::mem::replace(v, zero) != zero);
        // The senders live as long as the driver and the admin server,
        // which shut down after this task is awaited: stop on the signal.
        tokio::select! {
            r = drain.changed() => if r.is_err() { return },
            r = serve.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

struct Driver {
    engine: Engine,
    replicator: Repl,
    endpoints: HashMap<SocketAddrV4, Arc<Endpoint>>,
    table: Arc<BindingTable>,
    names: HashMap<RealmId, String>,
    published: watch::Sender<Published>,
    /// Whether this node can serve (dispatcher health priority).
    serve: watch::Sender<bool>,
    /// Encap mode: every reply goes back through a dispatcher.
    egress: Option<Egress>,
    /// Encap mode: where recent requests came in, so replies follow them.
    arrivals: Arrivals,
    /// RFC 3519 tunnel data goes to the data plane, when it runs.
    dataplane: Option<crate::dataplane::run::UdpIngress>,
    /// Flood resistance (`[registration.limits]`, [`crate::limiter`]).
    limiter: Option<SharedLimiter>,
}

/// How long [`Arrivals`] remembers a request (between one and two of these):
/// far longer than a reply waits for its commit (`[registration]
/// max_commit_ms`); a reply later than that goes through the realm's
/// latest dispatcher instead.
const ARRIVALS_KEEP: Duration = Duration::from_secs(5);

/// Encap mode: how each recent registration message came in, by (realm
/// VIP:port, mobile node): through which dispatcher (`Some`), or straight
/// to a VIP socket (`None`, with `[dispatch] bind_vip`). Its reply leaves
/// the same way, so two dispatchers forwarding for one realm at once (a
/// VRRP takeover in progress) each get back their own mobile nodes'
/// replies. Two generations swapped every [`ARRIVALS_KEEP`]: bounded by
/// the request rate, no per-entry timers.
#[derive(Debug, Default)]
struct Arrivals {
    current: HashMap<(SocketAddrV4, SocketAddrV4), Option<SocketAddrV4>>,
    previous: HashMap<(SocketAddrV4, SocketAddrV4), Option<SocketAddrV4>>,
    rotated: Option<Instant>,
}

impl Arrivals {
    fn record(&mut self, vip: SocketAddrV4, mn: SocketAddrV4, via: Option<SocketAddrV4>) {
        self.current.insert((vip, mn), via);
    }

    /// How the last request from `mn` to `vip` came in, if remembered.
    fn get(&self, vip: SocketAddrV4, mn: SocketAddrV4) -> Option<Option<SocketAddrV4>> {
        let k = (vip, mn);
        self.current
            .get(&k)
            .or_else(|| self.previous.get(&k))
            .copied()
    }

    /// Drops the older generation once per [`ARRIVALS_KEEP`].
    fn rotate(&mut self, now: Instant) {
        match self.rotated {
            Some(t) if now.duration_since(t) < ARRIVALS_KEEP => {}
            _ => {
                self.previous = std::mem::take(&mut self.current);
                self.rotated = Some(now);
            }
        }
    }
}

/// Pending admin removals, answered when their proposal is applied.
type PendingRemovals = HashMap<(RealmId, Ipv4Addr), Vec<oneshot::Sender<bool>>>;

async fn drive(
    mut d: Driver,
    mut batches: mpsc::Receiver<Batch>,
    mut admin: mpsc::Receiver<AdminOp>,
    mut raft_in: Option<RaftInput>,
    mut pair_in: Option<PairInput>,
) -> anyhow::Result<()> {
    let mut removals: PendingRemovals = HashMap::new();
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let timer = d
            .engine
            .poll_timeout(d.replicator.state().expiry_schedule())
            .map(|at| {
                let wait = at.saturating_sub(wall_now());
                tokio::time::Instant::now() + wait
            });
        let pair_timer = match &d.replicator {
            Repl::Pair(p) => p.poll_timeout().map(|at| {
                let wait = at.saturating_sub(wall_now());
                tokio::time::Instant::now() + wait
            }),
            _ => None,
        };
        tokio::select! {
            batch = batches.recv() => {
                let Some(batch) = batch else { break };
                let now = wall_now();
                d.handle_batch(now, &batch);
                // More may be queued: take what is ready without waiting so
                // one pass through the replicator serves them all.
                while let Ok(more) = batches.try_recv() {
                    d.handle_batch(now, &more);
                }
            }
            input = raft_input(&mut raft_in) => {
                if let Repl::Raft(r) = &mut d.replicator {
                    r.input(input);
                    // Step what else is queued (bounded) before one pump:
                    // one Ready, one synced write for the whole burst.
                    for _ in 0..crate::raft::transport::PEER_QUEUE {
                        let Some(more) = raft_in.as_mut().and_then(RaftInput::try_next) else {
                            break;
                        };
                        r.input(more);
                    }
                }
            }
            datagram = pair_input(&mut pair_in) => {
                if let Repl::Pair(p) = &mut d.replicator {
                    p.input(datagram);
                    // Take what else is queued before one pump.
                    while let Some(Ok(more)) = pair_in.as_mut().map(PairInput::try_next) {
                        p.input(more);
                    }
                }
            }
            _ = async {
                match pair_timer {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Repl::Pair(p) = &mut d.replicator {
                    p.handle_timeout();
                }
            }
            op = admin.recv(), if !admin.is_closed() => {
                if let Some(op) = op {
                    d.admin(op, &mut removals);
                }
            }
            _ = async {
                match timer {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                d.engine
                    .handle_timeout(wall_now(), d.replicator.state().expiry_schedule());
            }
            _ = gauges.tick() => {
                d.update_gauges();
                d.arrivals.rotate(Instant::now());
                match &mut d.replicator {
                    Repl::Raft(r) => r.publish_metrics(),
                    Repl::Pair(p) => p.publish_metrics(),
                    Repl::Local(_) => {}
                }
                continue;
            }
        }
        d.pump(&mut removals).await?;
    }
    // Finish what the last batches produced.
    d.pump(&mut removals).await?;
    if let Repl::Pair(p) = &mut d.replicator {
        p.shutdown().await;
        p.publish_metrics();
    }
    Ok(())
}

impl Driver {
    /// Feeds one batch of datagrams to the engine, or drops it when this
    /// node is not a member of its Raft group (before `AddMember`, after
    /// `RemoveMember`): it must not answer what it cannot commit.
    fn handle_batch(&mut self, now: Duration, batch: &Batch) {
        if !self.replicator.serving() {
            metrics::counter!(telemetry::REGISTRATION_DROPS, "realm" => "",
                "reason" => self.replicator.not_serving_reason())
            .increment(batch.datagrams.len() as u64);
            return;
        }
        for (src, dst, bytes) in &batch.datagrams {
            // Tunnel data (type 4) shares VIP:434 with registrations
            // [RFC 3519 § 3.3]; it is the data plane's, not the engine's.
            if let Some(dp) = &self.dataplane
                && dp.offer(*src, *dst, bytes)
            {
                continue;
            }
            if self.egress.is_some() {
                self.arrivals.record(*dst, *src, batch.via);
            }
            // Locked per datagram, briefly: the receive tasks check too.
            let Some(limiter) = &self.limiter else {
                self.engine.handle(now, *src, *dst, bytes);
                continue;
            };
            // A source (or, in a distributed flood, every source with
            // failures on record) past its budget is dropped before any
            // parsing or HMAC work. Checked again here: the receive task's
            // check did not see the failures charged since.
            let checked = lock(limiter).check(now, *src.ip());
            if let Err(drop) = checked {
                metrics::counter!(telemetry::REGISTRATION_DROPS, "realm" => "",
                    "reason" => drop.as_str())
                .increment(1);
                continue;
            }
            // Charged: whatever the engine refused at reception (dropped
            // or denied). Not charged: a proposal (an authenticated,
            // acceptable request) or `Busy` (a retransmission of one).
            if self.engine.handle(now, *src, *dst, bytes) == Handled::Refused {
                lock(limiter).charge(now, *src.ip());
                metrics::counter!(telemetry::LIMITER_CHARGED).increment(1);
            }
        }
    }

    /// An admin request that needs the driver.
    fn admin(&mut self, op: AdminOp, removals: &mut PendingRemovals) {
        let raft = match &mut self.replicator {
            Repl::Raft(r) => Some(r),
            Repl::Local(_) | Repl::Pair(_) => None,
        };
        match (op, raft) {
            (
                AdminOp::Remove {
                    realm,
                    home_address,
                    done,
                },
                _,
            ) => {
                self.engine.remove_binding(realm, home_address);
                removals
                    .entry((realm, home_address))
                    .or_default()
                    .push(done);
            }
            (AdminOp::AddMember { id, address, done }, Some(r)) => r.add_member(id, &address, done),
            (AdminOp::RemoveMember { id, done }, Some(r)) => r.remove_member(id, done),
            (AdminOp::TransferLeader { to, done }, Some(r)) => r.transfer_leader(to, done),
            // The admin service refuses these in local mode before asking.
            (AdminOp::AddMember { done, .. } | AdminOp::RemoveMember { done, .. }, None) => {
                let _ = done.send(Err(AdminError::Invalid("not in raft mode".into())));
            }
            (AdminOp::TransferLeader { done, .. }, None) => {
                let _ = done.send(Err(AdminError::Invalid("not in raft mode".into())));
            }
        }
    }

    /// Moves work between the engine and the replicator until both are
    /// quiet, then sends the replies and records the events. In raft mode
    /// every round persists and applies what raft has ready; an error there
    /// is fatal (returned).
    async fn pump(&mut self, removals: &mut PendingRemovals) -> anyhow::Result<()> {
        if let Repl::Pair(p) = &mut self.replicator {
            // `propose` stamps entries with the pair's last `now`.
            p.handle_timeout();
        }
        loop {
            let mut progressed = false;
            while let Some((id, cmd)) = self.engine.poll_proposal() {
                progressed = true;
                if self.replicator.get().propose(id, cmd).is_err() {
                    // Never acknowledged: the MN retransmits [DESIGN.md § 4].
                    self.engine.proposal_failed(id);
                }
            }
            if let Repl::Raft(r) = &mut self.replicator
                && let Err(e) = r.ready()
            {
                tracing::error!(error = %e, "raft storage failed; this node stops");
                return Err(anyhow::Error::new(e).context("raft log"));
            }
            // Lost with a leader: free their mobile nodes now, not after
            // `max_commit_ms` (the MN's retransmission is not `Busy`).
            while let Some(id) = self.replicator.get().poll_lost() {
                self.engine.proposal_failed(id);
            }
            let now = wall_now();
            while let Some(applied) = self.replicator.get().poll_applied() {
                progressed = true;
                self.engine.handle_applied(now, &applied);
                // Counted on every replica, like the expiries: the
                // address chosen at apply is the same everywhere.
                if let crate::command::ApplyResult::Registered {
                    affinity: Some(a), ..
                } = applied.result
                {
                    metrics::counter!(telemetry::POOL_AFFINITY,
                        "realm" => self.realm_name(applied.command.realm()),
                        "result" => a.label())
                    .increment(1);
                }
                if let crate::command::Command::AdminRemove {
                    realm,
                    home_address,
                } = &applied.command
                    && let Some(waiters) = removals.remove(&(*realm, *home_address))
                {
                    let existed = matches!(
                        applied.result,
                        crate::command::ApplyResult::AdminRemoved { existed: true }
                    );
                    for w in waiters {
                        let _ = w.send(existed);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        match &mut self.replicator {
            Repl::Raft(r) => r.flush(&mut self.engine),
            Repl::Pair(p) => p.flush(&mut self.engine).await,
            Repl::Local(_) => {}
        }
        while let Some(t) = self.engine.poll_transmit() {
            if let Some(eg) = &self.egress {
                // Encap mode: the VIP is the dispatcher's; it sends the
                // payload from VIP:434 to the mobile node. Back the way the
                // request came; else through the realm's latest dispatcher.
                let res = match self.arrivals.get(t.src, t.dst) {
                    Some(Some(via)) => Some(eg.send_via(via, t.src, t.dst, &t.payload).await),
                    Some(None) => None,
                    None => Some(eg.send(t.src, t.dst, &t.payload).await),
                };
                match res {
                    Some(Ok(())) => continue,
                    Some(Err(e)) => {
                        debug!(error = %e, dst = %t.dst, "encap send failed");
                        metrics::counter!(telemetry::REGISTRATION_DROPS, "reason" => "send_error")
                            .increment(1);
                        continue;
                    }
                    // It reached a VIP socket itself (`bind_vip`).
                    None => {}
                }
            }
            let Some(ep) = self.endpoints.get(&t.src) else {
                warn!(src = %t.src, "reply from an address no endpoint holds");
                continue;
            };
            if let Err(e) = ep.send(t.dst, IpAddr::V4(*t.src.ip()), &t.payload).await {
                debug!(error = %e, dst = %t.dst, "send failed");
                metrics::counter!(telemetry::REGISTRATION_DROPS, "reason" => "send_error")
                    .increment(1);
            }
        }
        while let Some(ev) = self.engine.poll_event() {
            self.record(ev);
        }
        let state = self.replicator.state();
        let raft = match &self.replicator {
            Repl::Raft(r) => Some(r.published()),
            Repl::Local(_) | Repl::Pair(_) => None,
        };
        let pair = match &self.replicator {
            Repl::Pair(p) => {
                let s = p.replica().stats();
                Some(PairPublished {
                    role: p.role(),
                    applied_index: s.applied_index,
                    synced: s.synced,
                })
            }
            _ => None,
        };
        // Dispatcher health: a node that cannot acknowledge advertises 0 —
        // in raft mode also while it has no leader or has not caught up
        // with the commit index (a restarted node: `ready_to_serve`).
        let can_serve = match &self.replicator {
            Repl::Raft(r) => r.serving() && r.replica().ready_to_serve(),
            r => r.serving(),
        };
        if self
            .serve
            .send_if_modified(|v| std::mem::replace(v, can_serve) != can_serve)
        {
            metrics::gauge!(READY).set(if can_serve { 1.0 } else { 0.0 });
        }
        self.published.send_modify(|p| {
            p.applied = state.applied_count();
            p.pool_free = (0..self.names.len())
                .map(|i| {
                    state
                        .pool_usage(RealmId(i as u16))
                        .map_or(0, |(used, size)| size.saturating_sub(u64::from(used)))
                })
                .collect();
            p.raft = raft;
            p.pair = pair;
        });
        Ok(())
    }

    fn realm_name(&self, realm: RealmId) -> String {
        self.names.get(&realm).cloned().unwrap_or_default()
    }

    fn record(&self, ev: Event) {
        match ev {
            Event::Replied {
                realm,
                code,
                latency,
            } => {
                let realm = self.realm_name(realm);
                let result = if code <= 1 { "accepted" } else { "denied" };
                metrics::counter!(telemetry::REGISTRATIONS,
                    "realm" => realm.clone(), "code" => code.to_string(), "result" => result)
                .increment(1);
                metrics::histogram!(telemetry::REGISTRATION_DURATION, "realm" => realm)
                    .record(latency.as_secs_f64());
            }
            Event::Dropped { realm, reason } => {
                let realm = realm.map(|r| self.realm_name(r)).unwrap_or_default();
                metrics::counter!(telemetry::REGISTRATION_DROPS,
                    "realm" => realm, "reason" => reason.as_str())
                .increment(1);
            }
            Event::Expired { realm, .. } => {
                metrics::counter!(telemetry::EXPIRIES, "realm" => self.realm_name(realm))
                    .increment(1);
            }
            Event::Removed { realm, .. } => {
                metrics::counter!(telemetry::REMOVALS, "realm" => self.realm_name(realm))
                    .increment(1);
            }
        }
    }

    /// Per-realm gauges: a table scan, so once a second, off the packet path.
    fn update_gauges(&self) {
        // Also here: in pair mode the role task moves `serve` itself.
        metrics::gauge!(READY).set(if *self.serve.borrow() { 1.0 } else { 0.0 });
        if let Some(l) = &self.limiter {
            let sources = lock(l).sources();
            metrics::gauge!(telemetry::LIMITER_SOURCES).set(sources as f64);
        }
        for (id, name) in &self.names {
            metrics::gauge!(telemetry::BINDINGS, "realm" => name.clone())
                .set(self.table.count(*id) as f64);
            if let Some((allocated, size)) = self.replicator.state().pool_usage(*id) {
                metrics::gauge!(telemetry::POOL_FREE, "realm" => name.clone())
                    .set(size.saturating_sub(u64::from(allocated)) as f64);
            }
        }
    }
}

// ------------------------------------------------------------ admin API ----

/// Who may call the admin API (docs/security.md): `[admin.tls]` client
/// certificates (checked in the handshake) have full access; otherwise,
/// when tokens are configured, `authorization: Bearer <token>` must match
/// the write token (full access) or the read token (Status, ListBindings,
/// GetBinding only). With neither (loopback only) every call is allowed.
#[derive(Debug, Clone, Default)]
struct AdminAuth {
    tls: bool,
    tokens: crate::config::AdminTokens,
}

impl AdminAuth {
    fn from_config(c: &crate::config::AdminConfig) -> Self {
        Self {
            tls: c.tls.is_some(),
            tokens: c.tokens.clone(),
        }
    }

    /// Allows or refuses one call; `write` = a mutating call.
    #[allow(clippy::result_large_err)]
    fn check<T>(&self, req: &Request<T>, write: bool) -> Result<(), Status> {
        if self.tls {
            // The handshake required a certificate from [admin.tls] ca.
            return if req.peer_certs().is_some_and(|c| !c.is_empty()) {
                Ok(())
            } else {
                Err(admin_refusal(
                    "unauthenticated",
                    Status::unauthenticated("a client certificate is required"),
                ))
            };
        }
        let (write_token, read_token) = (&self.tokens.write, &self.tokens.read);
        if write_token.is_none() && read_token.is_none() {
            return Ok(());
        }
        let offered = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(offered) = offered else {
            return Err(admin_refusal(
                "unauthenticated",
                Status::unauthenticated("authorization: Bearer <token> is required"),
            ));
        };
        // Both comparisons run, each in constant time.
        let is_write = write_token
            .as_ref()
            .is_some_and(|t| t.ct_eq(offered.as_bytes()));
        let is_read = read_token
            .as_ref()
            .is_some_and(|t| t.ct_eq(offered.as_bytes()));
        match (is_write, is_read, write) {
            (true, _, _) | (false, true, false) => Ok(()),
            (false, true, true) => Err(admin_refusal(
                "read_only",
                Status::permission_denied("this token allows read-only calls"),
            )),
            (false, false, _) => Err(admin_refusal(
                "unauthenticated",
                Status::unauthenticated("unknown token"),
            )),
        }
    }
}

fn admin_refusal(reason: &'static str, status: Status) -> Status {
    metrics::counter!(telemetry::ADMIN_REFUSALS, "reason" => reason).increment(1);
    status
}

struct AdminService {
    auth: AdminAuth,
    config: Arc<Config>,
    table: Arc<BindingTable>,
    ops: mpsc::Sender<AdminOp>,
    published: watch::Receiver<Published>,
    started: Instant,
    /// Set by `Drain`: the health adverts go to priority 0.
    drain: watch::Sender<bool>,
}

impl AdminService {
    /// Validates a (realm name, home address) pair from a request.
    #[allow(clippy::result_large_err)]
    fn key(&self, realm: &str, home_address: &str) -> Result<(RealmId, Ipv4Addr), Status> {
        let id = self
            .config
            .realm_id(realm)
            .ok_or_else(|| Status::not_found(format!("no realm named {realm:?}")))?;
        let hoa = home_address
            .parse()
            .map_err(|_| Status::invalid_argument(format!("bad home address {home_address:?}")))?;
        Ok((id, hoa))
    }

    fn binding(
        &self,
        realm: RealmId,
        home_address: Ipv4Addr,
        entry: &BindingEntry,
    ) -> grpc::Binding {
        let now = wall_now();
        grpc::Binding {
            realm: self
                .config
                .realm(realm)
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            home_address: home_address.to_string(),
            nai: entry
                .nai
                .as_ref()
                .map(|n| n.as_str().to_string())
                .unwrap_or_default(),
            care_of: entry
                .care_of
                .as_slice()
                .iter()
                .map(|c| grpc::CareOf {
                    care_of_address: c.coa.to_string(),
                    remaining: c.expires_at().saturating_sub(now).as_secs() as u32,
                    granted: u32::from(c.lifetime),
                    encapsulation: match c.encap {
                        Encap::IpInIp => "ip-in-ip".into(),
                        Encap::Udp { .. } => "udp".into(),
                    },
                    nat_mapping: match c.encap {
                        Encap::Udp { nat } => nat.to_string(),
                        Encap::IpInIp => String::new(),
                    },
                    reverse_tunnel: c.reverse_tunnel,
                })
                .collect(),
            last_identification: entry.last_identification,
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl grpc::admin_server::Admin for AdminService {
    async fn status(&self, req: Request<grpc::StatusRequest>) -> Reply<grpc::StatusReply> {
        self.auth.check(&req, false)?;
        let published = self.published.borrow().clone();
        let realms = self
            .config
            .realm
            .iter()
            .enumerate()
            .map(|(i, r)| grpc::RealmStatus {
                name: r.name.clone(),
                vip: r.vip.to_string(),
                bindings: self.table.count(RealmId(i as u16)) as u64,
                pool_free: published.pool_free.get(i).copied().unwrap_or(0),
            })
            .collect();
        let reply = grpc::StatusReply {
            node_id: self.config.node.id,
            version: env!("CARGO_PKG_VERSION").into(),
            mode: grpc::ReplicationMode::Local as i32,
            draining: *self.drain.borrow(),
            uptime_seconds: self.started.elapsed().as_secs(),
            realms,
            applied_index: published.applied,
            commit_index: published.applied,
            members: vec![self.config.node.id],
            role: "standalone".into(),
            ..Default::default()
        };
        let reply = match published.raft {
            Some(r) => grpc::StatusReply {
                mode: grpc::ReplicationMode::Raft as i32,
                term: r.term,
                leader_id: r.leader,
                commit_index: r.commit,
                applied_index: r.applied,
                members: r.members,
                role: r.role,
                ..reply
            },
            None => reply,
        };
        let reply = match published.pair {
            Some(p) => grpc::StatusReply {
                mode: grpc::ReplicationMode::Pair as i32,
                applied_index: p.applied_index,
                commit_index: p.applied_index,
                // "primary", "secondary" (with a complete copy) or
                // "secondary-syncing" (waiting for its dump).
                role: if p.role == "secondary" && !p.synced {
                    "secondary-syncing".into()
                } else {
                    p.role.into()
                },
                ..reply
            },
            None => reply,
        };
        Ok(Response::new(reply))
    }

    async fn list_bindings(
        &self,
        req: Request<grpc::ListBindingsRequest>,
    ) -> Reply<grpc::ListBindingsReply> {
        self.auth.check(&req, false)?;
        let req = req.into_inner();
        let realm = if req.realm.is_empty() {
            None
        } else {
            Some(
                self.config
                    .realm_id(&req.realm)
                    .ok_or_else(|| Status::not_found(format!("no realm named {:?}", req.realm)))?,
            )
        };
        let after = if req.after.is_empty() {
            None
        } else {
            // The cursor is "realm/address" so paging works across realms.
            let (r, a) = req
                .after
                .split_once('/')
                .ok_or_else(|| Status::invalid_argument("cursor must be realm/address"))?;
            Some(self.key(r, a)?)
        };
        let limit = match req.limit {
            0 => 1000,
            n => n.min(10_000) as usize,
        };
        let page = self.table.page(realm, after, limit);
        let next = if page.len() == limit {
            page.last()
                .and_then(|((r, a), _)| self.config.realm(*r).map(|rc| format!("{}/{a}", rc.name)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let bindings = page
            .iter()
            .map(|((r, a), e)| self.binding(*r, *a, e))
            .collect();
        Ok(Response::new(grpc::ListBindingsReply { bindings, next }))
    }

    async fn get_binding(&self, req: Request<grpc::GetBindingRequest>) -> Reply<grpc::Binding> {
        self.auth.check(&req, false)?;
        let req = req.into_inner();
        let (realm, hoa) = self.key(&req.realm, &req.home_address)?;
        let entry = self
            .table
            .get(realm, hoa)
            .ok_or_else(|| Status::not_found(format!("no binding for {hoa} in {}", req.realm)))?;
        Ok(Response::new(self.binding(realm, hoa, &entry)))
    }

    async fn remove_binding(
        &self,
        req: Request<grpc::RemoveBindingRequest>,
    ) -> Reply<grpc::RemoveBindingReply> {
        self.auth.check(&req, true)?;
        let req = req.into_inner();
        let (realm, home_address) = self.key(&req.realm, &req.home_address)?;
        let (done, wait) = oneshot::channel();
        self.ops
            .send(AdminOp::Remove {
                realm,
                home_address,
                done,
            })
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        // The removal is replicated like any registration; a bound keeps a
        // caller from hanging on a node that cannot commit.
        let removed = tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .map_err(|_| Status::deadline_exceeded("removal not committed within 5 s"))?
            .map_err(|_| Status::unavailable("removal was dropped"))?;
        Ok(Response::new(grpc::RemoveBindingReply { removed }))
    }

    /// Priority-0 health adverts (DESIGN.md § 5): the dispatchers assign
    /// no new mobile nodes here; `drain = false` undoes it. Without
    /// `[dispatch]` only the flag in Status changes.
    async fn drain(&self, req: Request<grpc::DrainRequest>) -> Reply<grpc::DrainReply> {
        self.auth.check(&req, true)?;
        let on = req.into_inner().drain;
        self.drain.send_replace(on);
        info!(draining = on, "drain requested");
        Ok(Response::new(grpc::DrainReply { draining: on }))
    }

    async fn transfer_leadership(
        &self,
        req: Request<grpc::TransferLeadershipRequest>,
    ) -> Reply<grpc::TransferLeadershipReply> {
        self.auth.check(&req, true)?;
        self.require_raft()?;
        let to = req.into_inner().to;
        let leader_id = self
            .ask(|done| AdminOp::TransferLeader { to, done })
            .await?;
        Ok(Response::new(grpc::TransferLeadershipReply { leader_id }))
    }

    async fn add_member(&self, req: Request<grpc::AddMemberRequest>) -> Reply<grpc::MemberReply> {
        self.auth.check(&req, true)?;
        self.require_raft()?;
        let req = req.into_inner();
        if !valid_peer_address(&req.address) {
            return Err(Status::invalid_argument(format!(
                "address {:?} is not host:port",
                req.address
            )));
        }
        let members = self
            .ask(|done| AdminOp::AddMember {
                id: req.node_id,
                address: req.address.clone(),
                done,
            })
            .await?;
        Ok(Response::new(grpc::MemberReply { members }))
    }

    async fn remove_member(
        &self,
        req: Request<grpc::RemoveMemberRequest>,
    ) -> Reply<grpc::MemberReply> {
        self.auth.check(&req, true)?;
        self.require_raft()?;
        let id = req.into_inner().node_id;
        let members = self.ask(|done| AdminOp::RemoveMember { id, done }).await?;
        Ok(Response::new(grpc::MemberReply { members }))
    }
}

impl AdminService {
    #[allow(clippy::result_large_err)]
    fn require_raft(&self) -> Result<(), Status> {
        if self.config.cluster.mode == ClusterMode::Raft {
            Ok(())
        } else {
            Err(Status::failed_precondition(
                "this node runs standalone; leadership and membership need [cluster] mode = \"raft\"",
            ))
        }
    }

    /// Sends a membership or leadership request to the driver and waits
    /// (bounded) until the group reached the asked state.
    async fn ask<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, AdminError>>) -> AdminOp,
    ) -> Result<T, Status> {
        let (done, wait) = oneshot::channel();
        self.ops
            .send(op(done))
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        match tokio::time::timeout(cluster::ADMIN_WAIT, wait).await {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "not applied within {:?}",
                cluster::ADMIN_WAIT
            ))),
            Ok(Err(_)) => Err(Status::unavailable("the request was dropped")),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e @ AdminError::NotLeader { .. }))) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Ok(Ok(Err(e @ AdminError::Invalid(_)))) => Err(Status::invalid_argument(e.to_string())),
            Ok(Ok(Err(e @ AdminError::Unavailable))) => Err(Status::unavailable(e.to_string())),
        }
    }
}

/// `host:port` as `[[cluster.peer]] address` accepts it.
fn valid_peer_address(s: &str) -> bool {
    crate::config::valid_host_port(s)
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_follow_the_request_and_age_out() {
        let vip: SocketAddrV4 = "192.0.2.1:434".parse().unwrap();
        let mn: SocketAddrV4 = "203.0.113.2:40000".parse().unwrap();
        let (a, b): (SocketAddrV4, SocketAddrV4) = (
            "198.18.0.2:4343".parse().unwrap(),
            "198.18.0.3:4343".parse().unwrap(),
        );
        let t0 = Instant::now();
        let mut arr = Arrivals::default();
        arr.rotate(t0);
        assert_eq!(arr.get(vip, mn), None);
        arr.record(vip, mn, Some(a));
        assert_eq!(arr.get(vip, mn), Some(Some(a)));
        // Another realm or mobile node is another key.
        assert_eq!(arr.get("203.0.113.1:434".parse().unwrap(), mn), None);
        // The latest arrival wins: a direct one (`bind_vip`) too.
        arr.record(vip, mn, Some(b));
        assert_eq!(arr.get(vip, mn), Some(Some(b)));
        arr.record(vip, mn, None);
        assert_eq!(arr.get(vip, mn), Some(None));
        arr.record(vip, mn, Some(a));
        // Kept for at least one period, gone after two.
        arr.rotate(t0 + ARRIVALS_KEEP / 2);
        assert_eq!(arr.get(vip, mn), Some(Some(a)));
        arr.rotate(t0 + ARRIVALS_KEEP);
        assert_eq!(arr.get(vip, mn), Some(Some(a)));
        arr.rotate(t0 + ARRIVALS_KEEP * 2);
        assert_eq!(arr.get(vip, mn), None);
    }
}
