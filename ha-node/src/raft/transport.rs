//! Raft messages between nodes over tonic (`RaftTransport` in
//! `proto/proto/haven.proto`).
//!
//! * **Server** ([`Transport::server`]): accepts each peer's long-lived
//!   client stream of `RaftBatch`es, refuses a batch for another cluster or
//!   another node, decodes each message (raft's own protobuf 2 codec) and
//!   pushes it to the driver's [`Inbound`] channel.
//! * **Clients**: one task per peer with an ordered, bounded outbound queue.
//!   [`Transport::send`] never blocks the driver: when the queue is full or
//!   the peer is down the message is dropped and the driver is told
//!   ([`Inbound::Unreachable`]), which is what raft expects of a lossy
//!   network. The task batches whatever is queued into one `RaftBatch` on
//!   one stream, finds a silent connection by HTTP/2 pings (0.5 s, 1 s
//!   timeout) and reconnects with exponential backoff (50 ms … 0.5 s).
//! * **Peer death**: when an established stream ends, the first reconnect
//!   is immediate. The first refused attempt after the loss (ECONNREFUSED:
//!   the peer's host answers but nothing listens on its port — a
//!   SIGKILLed process's kernel closed its sockets) is published as a
//!   [`PeerRefused`] ([`Transport::refusals`]), once per loss; every refused
//!   attempt until a connect succeeds is counted in
//!   `haven_raft_peer_connect_refused_total{peer}`. The advertiser turns
//!   that into a withdrawal at the dispatchers ([`crate::advertise`]), well
//!   before the peer's adverts time out there. A partition (timeouts,
//!   EHOSTUNREACH) or a TLS failure is never a refusal.
//!
//! With `[cluster.tls]` ([`crate::tls`]) both halves use mutual TLS: a
//! client verifies that the server holds the certificate of the peer it
//! dialled (`node-<id>.haven`, signed by the cluster CA), and the server
//! refuses a stream whose certificate does not name the batches' `from`,
//! or whose `from` is not a member this node knows (a configured peer or
//! one added by `AddMember`); every refusal is counted in
//! `haven_raft_peer_refusals_total{reason}`. Without it the transport is
//! plaintext and trusts the backend network (docs/security.md).
//!
//! Snapshots travel inline in a `MsgSnapshot` (the state machine's bytes
//! are small); the gRPC message limit is raised to [`MAX_MESSAGE`] for it.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use haven_proto::grpc::raft_transport_client::RaftTransportClient;
use haven_proto::grpc::raft_transport_server::{RaftTransport, RaftTransportServer};
use haven_proto::grpc::{RaftBatch, SendAck, SnapshotChunk};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsMaterial;

/// Largest gRPC message either side accepts (an inline snapshot of a large
/// binding table).
pub const MAX_MESSAGE: usize = 256 << 20;

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE: usize = 4096;

/// Largest batch the client assembles (bytes of encoded messages).
const BATCH_BYTES: usize = 4 << 20;

/// Peer id → `host:port` of its Raft transport.
pub type PeerMap = HashMap<u64, String>;

/// Refusal reports kept for a slow subscriber (a lagging one loses the
/// oldest; the next refusal, at most 0.5 s later, reports again).
const REFUSALS_QUEUE: usize = 64;

/// A peer's stream ended and a reconnect was refused: its process is most
/// likely gone (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRefused {
    /// The peer's node id.
    pub peer: u64,
    /// The IPv4 host of the address dialled (`[[cluster.peer]] address`
    /// or the `AddMember` address); `None` for a host name.
    pub host: Option<Ipv4Addr>,
}

/// The next report from `rx` (a [`Transport::refusals`] receiver), forever
/// pending once the channel closed or when there is none. A lagging
/// receiver skips what it lost: a loss is reported again on the next
/// refused reconnect (at most 0.5 s later), and the advert timeout and the
/// election timeout cover a lost one.
pub async fn next_refusal(rx: &mut Option<broadcast::Receiver<PeerRefused>>) -> PeerRefused {
    loop {
        let Some(r) = rx.as_mut() else {
            return std::future::pending().await;
        };
        match r.recv().await {
            Ok(refused) => return refused,
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => *rx = None,
        }
    }
}

/// What the transport hands to the driver.
#[derive(Debug)]
pub enum Inbound {
    /// A message for this node's `RaftReplicator::step`.
    Message(Box<Message>),
    /// A message to this peer was dropped: `report_unreachable(id)`.
    Unreachable(u64),
    /// A snapshot was handed to the peer's stream (`true`) or dropped:
    /// `report_snapshot(to, delivered)`.
    Snapshot {
        /// The peer.
        to: u64,
        /// Whether it left.
        delivered: bool,
    },
}

/// The node's Raft transport: per-peer clients plus the server half.
#[derive(Debug)]
pub struct Transport {
    id: u64,
    cluster_id: String,
    peers: HashMap<u64, mpsc::Sender<Message>>,
    inbound: mpsc::Sender<Inbound>,
    /// Mutual TLS material (`[cluster.tls]`); `None` = plaintext.
    tls: Option<Arc<TlsMaterial>>,
    /// The members the server half accepts streams from (TLS mode).
    members: Arc<RwLock<HashSet<u64>>>,
    /// Where the clients publish [`PeerRefused`].
    refused: broadcast::Sender<PeerRefused>,
}

impl Transport {
    /// A transport for node `id`; spawns one client task per peer (call
    /// inside a tokio runtime). Returns the receiver the driver reads.
    pub fn new(id: u64, cluster_id: &str, peers: &PeerMap) -> (Self, mpsc::Receiver<Inbound>) {
        Self::with_tls(id, cluster_id, peers, None)
    }

    /// As [`Transport::new`], with mutual TLS when `tls` is given.
    pub fn with_tls(
        id: u64,
        cluster_id: &str,
        peers: &PeerMap,
        tls: Option<TlsMaterial>,
    ) -> (Self, mpsc::Receiver<Inbound>) {
        let (inbound, rx) = mpsc::channel(PEER_QUEUE);
        let mut t = Self {
            id,
            cluster_id: cluster_id.to_owned(),
            peers: HashMap::new(),
            inbound,
            tls: tls.map(Arc::new),
            members: Arc::new(RwLock::new(HashSet::new())),
            refused: broadcast::channel(REFUSALS_QUEUE).0,
        };
        for (&peer, addr) in peers {
            t.add_peer(peer, addr);
        }
        (t, rx)
    }

    /// Starts (or restarts) the client for `peer` at `addr`.
    pub fn add_peer(&mut self, peer: u64, addr: &str) {
        if peer == self.id {
            return;
        }
        if let Ok(mut m) = self.members.write() {
            m.insert(peer);
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let client = PeerClient {
            from: self.id,
            to: peer,
            cluster_id: self.cluster_id.clone(),
            addr: match self.tls {
                Some(_) => format!("https://{addr}"),
                None => format!("http://{addr}"),
            },
            tls: self
                .tls
                .as_ref()
                .map(|m| crate::tls::client_config(m, &crate::tls::member_name(peer))),
            inbound: self.inbound.clone(),
            host: addr.parse::<SocketAddr>().ok().and_then(|a| match a {
                SocketAddr::V4(a) => Some(*a.ip()),
                SocketAddr::V6(_) => None,
            }),
            refused: self.refused.clone(),
        };
        tokio::spawn(client.run(rx));
        // Dropping a previous sender ends that peer's old task.
        self.peers.insert(peer, tx);
    }

    /// Stops sending to `peer`.
    pub fn remove_peer(&mut self, peer: u64) {
        self.peers.remove(&peer);
        if let Ok(mut m) = self.members.write() {
            m.remove(&peer);
        }
    }

    /// Queues `msg` for `to`; drops it (and tells the driver) when the peer
    /// is unknown or its queue is full. Never blocks.
    pub fn send(&self, to: u64, msg: Message) {
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let sent = self
            .peers
            .get(&to)
            .is_some_and(|tx| tx.try_send(msg).is_ok());
        if !sent {
            tracing::trace!(to, "raft message dropped");
            let _ = self.inbound.try_send(Inbound::Unreachable(to));
            if snapshot {
                let _ = self.inbound.try_send(Inbound::Snapshot {
                    to,
                    delivered: false,
                });
            }
        }
    }

    /// Reports of peers whose reconnect was refused after their stream
    /// ended (module docs), from now on.
    pub fn refusals(&self) -> broadcast::Receiver<PeerRefused> {
        self.refused.subscribe()
    }

    /// The gRPC service to serve on the cluster address.
    pub fn server(&self) -> RaftTransportServer<RaftService> {
        RaftTransportServer::new(RaftService {
            id: self.id,
            cluster_id: self.cluster_id.clone(),
            inbound: self.inbound.clone(),
            tls: self.tls.is_some(),
            members: self.members.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
    }
}

/// The server half (see the module docs).
#[derive(Debug, Clone)]
pub struct RaftService {
    id: u64,
    cluster_id: String,
    inbound: mpsc::Sender<Inbound>,
    /// Streams must come over mutual TLS with a member's certificate.
    tls: bool,
    members: Arc<RwLock<HashSet<u64>>>,
}

/// Counts a refused stream and builds its status.
fn refuse(reason: &'static str, status: tonic::Status) -> tonic::Status {
    tracing::warn!(reason, message = status.message(), "raft stream refused");
    metrics::counter!(crate::telemetry::RAFT_PEER_REFUSALS, "reason" => reason).increment(1);
    status
}

impl RaftService {
    fn check(&self, cluster_id: &str, to: u64) -> Result<(), tonic::Status> {
        if cluster_id != self.cluster_id {
            return Err(refuse(
                "cluster_id",
                tonic::Status::permission_denied("wrong cluster id"),
            ));
        }
        if to != self.id {
            return Err(refuse(
                "addressing",
                tonic::Status::invalid_argument("batch for another node"),
            ));
        }
        Ok(())
    }

    /// TLS mode: the stream's certificate must name `from`, a member.
    /// `verified` caches the `from` already checked on this stream.
    fn check_peer(
        &self,
        certs: Option<&[tokio_rustls::rustls::pki_types::CertificateDer<'static>]>,
        from: u64,
        verified: &mut Option<u64>,
    ) -> Result<(), tonic::Status> {
        if !self.tls || *verified == Some(from) {
            return Ok(());
        }
        let Some(certs) = certs else {
            return Err(refuse(
                "no_certificate",
                tonic::Status::unauthenticated("no client certificate"),
            ));
        };
        if !crate::tls::peer_is(certs, from) {
            return Err(refuse(
                "identity",
                tonic::Status::permission_denied(format!(
                    "the certificate does not name {}",
                    crate::tls::member_name(from)
                )),
            ));
        }
        let member = self.members.read().is_ok_and(|m| m.contains(&from));
        if !member {
            return Err(refuse(
                "not_member",
                tonic::Status::permission_denied(format!("node {from} is not a member")),
            ));
        }
        *verified = Some(from);
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn send(
        &self,
        request: tonic::Request<tonic::Streaming<RaftBatch>>,
    ) -> Result<tonic::Response<SendAck>, tonic::Status> {
        let certs = request.peer_certs();
        let mut verified = None;
        let mut stream = request.into_inner();
        let mut received = 0u64;
        while let Some(batch) = stream.message().await? {
            self.check(&batch.cluster_id, batch.to)?;
            self.check_peer(
                certs.as_deref().map(Vec::as_slice),
                batch.from,
                &mut verified,
            )?;
            for bytes in &batch.messages {
                let msg = match Message::parse_from_bytes(bytes) {
                    // The identity was checked for `batch.from`: every
                    // message must carry it.
                    Ok(m) if m.to == self.id && m.from == batch.from => m,
                    Ok(_) => {
                        return Err(refuse(
                            "addressing",
                            tonic::Status::invalid_argument("message addressing"),
                        ));
                    }
                    Err(_) => return Err(tonic::Status::invalid_argument("undecodable message")),
                };
                received += 1;
                // Backpressure: a slow driver slows the peer's stream, whose
                // own queue then drops.
                if self
                    .inbound
                    .send(Inbound::Message(Box::new(msg)))
                    .await
                    .is_err()
                {
                    return Err(tonic::Status::unavailable("node shutting down"));
                }
            }
        }
        Ok(tonic::Response::new(SendAck { received }))
    }

    async fn snapshot(
        &self,
        _request: tonic::Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<tonic::Response<SendAck>, tonic::Status> {
        // Snapshots travel inline in `Send` (see the module docs).
        Err(tonic::Status::unimplemented("snapshots are sent inline"))
    }
}

/// HTTP/2 ping interval and ack timeout on every peer stream.
const KEEPALIVE: Duration = Duration::from_millis(500);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Reconnect attempts back off to this: about an election timeout, so a
/// node whose partition healed is back within one election (a cluster has
/// a handful of peers; a connect attempt every half second costs nothing).
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// The first reconnect delay.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// Whether `e`, or an error it wraps, is a refused TCP connection
/// (ECONNREFUSED: the host answered with a reset, nothing listens).
fn connection_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        cur = err.source();
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
            // An io::Error wrapping another error reports the wrapped
            // one's source, not the wrapped one: look inside.
            if let Some(inner) = io.get_ref() {
                cur = Some(inner);
            }
        }
    }
    false
}

struct PeerClient {
    from: u64,
    to: u64,
    cluster_id: String,
    addr: String,
    /// Verifies the server is `node-<to>.haven` under the cluster CA.
    tls: Option<tonic::transport::ClientTlsConfig>,
    inbound: mpsc::Sender<Inbound>,
    /// The IPv4 host dialled (for [`PeerRefused`]).
    host: Option<Ipv4Addr>,
    refused: broadcast::Sender<PeerRefused>,
}

impl PeerClient {
    async fn run(self, mut rx: mpsc::Receiver<Message>) {
        let mut backoff = MIN_BACKOFF;
        // A stream was established and ended (every connect that succeeds
        // leads to one): a refusal now means the peer's process is gone,
        // where one before the first stream is a peer not started yet.
        let mut lost = false;
        // This loss was published already: once per loss, so that the
        // withdrawals it causes stay near the death (seconds later the peer
        // may be restarting; the dispatchers' timeout has long acted).
        let mut published = false;
        loop {
            let mut retry_now = false;
            match self.connect().await {
                Ok(client) => {
                    backoff = MIN_BACKOFF;
                    self.set_connected(true);
                    let since = tokio::time::Instant::now();
                    let open = self.stream(client, &mut rx).await.is_some();
                    self.set_connected(false);
                    if !open {
                        return;
                    }
                    lost = true;
                    published = false;
                    // Reconnect at once after a stream that had lived (a
                    // dead peer's port is closed now: the refusal is the
                    // news), with the backoff after one that failed at
                    // once (a peer refusing our calls must not make us spin).
                    retry_now = since.elapsed() >= MAX_BACKOFF;
                }
                Err(e) => {
                    self.set_connected(false);
                    if lost && connection_refused(&e) {
                        self.report_refused(!published);
                        published = true;
                    }
                    tracing::debug!(peer = self.to, error = %e, "raft peer connect failed");
                }
            }
            if retry_now {
                continue;
            }
            // Down: drop what is queued rather than deliver it stale.
            let deadline = tokio::time::sleep(backoff);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    m = rx.recv() => match m {
                        Some(m) => self.dropped(&m),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Counts a refused reconnect after a loss; the first of each loss is
    /// also published.
    fn report_refused(&self, publish: bool) {
        tracing::debug!(peer = self.to, host = ?self.host, "raft peer refused the reconnect");
        metrics::counter!(crate::telemetry::RAFT_PEER_CONNECT_REFUSED, "peer" => self.to.to_string()).increment(1);
        if publish {
            // No subscriber (no [dispatch] section): nobody to tell.
            let _ = self.refused.send(PeerRefused {
                peer: self.to,
                host: self.host,
            });
        }
    }

    /// Looked up at each change, not cached: the daemon installs its
    /// metrics recorder after the transport starts, and a handle taken before
    /// that would stay a no-op.
    fn set_connected(&self, up: bool) {
        metrics::gauge!(crate::telemetry::RAFT_PEER_CONNECTED, "peer" => self.to.to_string())
            .set(if up { 1.0 } else { 0.0 });
    }

    async fn connect(
        &self,
    ) -> Result<RaftTransportClient<tonic::transport::Channel>, tonic::transport::Error> {
        // HTTP/2 pings find a connection that went silent (a partition drops
        // packets, it sends no reset): without them the stream stays "up"
        // while TCP retransmits with a backoff of seconds, and a healed
        // partition is noticed only at TCP's next retry (5 s seen in the
        // chaos test). With them the call fails within about
        // KEEPALIVE + KEEPALIVE_TIMEOUT and the task reconnects.
        let mut ep = tonic::transport::Endpoint::from_shared(self.addr.clone())?
            .connect_timeout(Duration::from_millis(500))
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone())?;
        }
        let ch = ep.connect().await?;
        Ok(RaftTransportClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// Streams batches until the call fails (`Some`) or the transport
    /// drops this peer (`None`).
    async fn stream(
        &self,
        mut client: RaftTransportClient<tonic::transport::Channel>,
        rx: &mut mpsc::Receiver<Message>,
    ) -> Option<()> {
        let (tx, stream_rx) = mpsc::channel::<RaftBatch>(16);
        let call = tokio::spawn(async move { client.send(ReceiverStream::new(stream_rx)).await });
        tokio::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => {
                    tracing::debug!(peer = self.to, result = ?r.map(|r| r.map(|_| ())), "raft stream ended");
                    return Some(());
                }
                m = rx.recv() => {
                    let first = m?;
                    let (batch, snapshots) = self.batch(first, rx);
                    let delivered = tx.send(batch).await.is_ok();
                    for _ in 0..snapshots {
                        let _ = self.inbound.try_send(Inbound::Snapshot { to: self.to, delivered });
                    }
                    if !delivered {
                        return Some(());
                    }
                }
            }
        }
    }

    /// One batch of everything queued now (up to [`BATCH_BYTES`]), and one
    /// marker per snapshot in it.
    fn batch(&self, first: Message, rx: &mut mpsc::Receiver<Message>) -> (RaftBatch, usize) {
        let mut messages = Vec::new();
        let mut snaps = 0;
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                snaps += 1;
            }
            match m.write_to_bytes() {
                Ok(b) => {
                    bytes += b.len();
                    messages.push(b);
                }
                Err(e) => tracing::warn!(error = %e, "raft message does not encode"),
            }
            if bytes < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        (
            RaftBatch {
                cluster_id: self.cluster_id.clone(),
                from: self.from,
                to: self.to,
                messages,
            },
            snaps,
        )
    }

    fn dropped(&self, m: &Message) {
        let _ = self.inbound.try_send(Inbound::Unreachable(self.to));
        if m.get_msg_type() == MessageType::MsgSnapshot {
            let _ = self.inbound.try_send(Inbound::Snapshot {
                to: self.to,
                delivered: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::wrappers::TcpListenerStream;

    fn heartbeat(from: u64, to: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.term = term;
        m
    }

    #[tokio::test]
    async fn delivers_in_order_over_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (t2, mut rx2) = Transport::new(2, "lab", &PeerMap::new());
        let svc = t2.server();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let peers = PeerMap::from([(2, addr.to_string())]);
        let (t1, _rx1) = Transport::new(1, "lab", &peers);
        for term in 1..=50 {
            t1.send(2, heartbeat(1, 2, term));
        }
        let mut terms = Vec::new();
        while terms.len() < 50 {
            let got = tokio::time::timeout(Duration::from_secs(20), rx2.recv())
                .await
                .expect("delivered in time")
                .expect("open");
            if let Inbound::Message(m) = got {
                assert_eq!((m.from, m.to), (1, 2));
                terms.push(m.term);
            }
        }
        assert_eq!(terms, (1..=50).collect::<Vec<_>>(), "per-peer order kept");
    }

    #[tokio::test]
    async fn a_dead_peers_refused_reconnect_is_reported() {
        // Peer 2 runs in a runtime of its own, so that shutting it down
        // closes every socket it has, as the kernel does for a SIGKILLed
        // process: the listener and the accepted stream.
        let peer_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let mut rx2 = {
            let _in = peer_rt.enter();
            let (t2, rx2) = Transport::new(2, "lab", &PeerMap::new());
            let incoming = TcpListenerStream::new(
                tokio::net::TcpListener::from_std(listener).expect("listener"),
            );
            peer_rt.spawn(
                tonic::transport::Server::builder()
                    .add_service(t2.server())
                    .serve_with_incoming(incoming),
            );
            rx2
        };
        // Peer 3 never runs (port 1: nothing listens there): refused from
        // the first attempt, but it never had a stream, so never reported.
        let peers = PeerMap::from([(2, addr.to_string()), (3, "127.0.0.1:1".to_owned())]);
        let (t1, _rx1) = Transport::new(1, "lab", &peers);
        let mut refusals = t1.refusals();
        t1.send(2, heartbeat(1, 2, 1));
        let got = tokio::time::timeout(Duration::from_secs(20), rx2.recv())
            .await
            .expect("the stream is up in time");
        assert!(matches!(got, Some(Inbound::Message(_))));
        peer_rt.shutdown_background();
        let r = tokio::time::timeout(Duration::from_secs(20), refusals.recv())
            .await
            .expect("reported in time")
            .expect("open");
        assert_eq!(
            r,
            PeerRefused {
                peer: 2,
                host: Some(Ipv4Addr::LOCALHOST)
            }
        );
        // Once per loss (peer 2 keeps refusing), and never a peer that was
        // never up.
        assert!(
            refusals.try_recv().is_err(),
            "one report per loss, none for peer 3"
        );
    }

    #[test]
    fn only_a_refused_connection_counts_as_refused() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(connection_refused(&refused));
        // Wrapped, as hyper and tonic wrap it.
        let wrapped = std::io::Error::other(refused);
        assert!(connection_refused(&wrapped));
        for kind in [
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::HostUnreachable,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::InvalidData,
        ] {
            assert!(!connection_refused(&std::io::Error::from(kind)), "{kind:?}");
        }
    }

    #[tokio::test]
    async fn unknown_peer_is_reported_not_blocking() {
        let (t, mut rx) = Transport::new(1, "lab", &PeerMap::new());
        let mut m = heartbeat(1, 9, 1);
        m.set_msg_type(MessageType::MsgSnapshot);
        t.send(9, m);
        assert!(matches!(rx.recv().await, Some(Inbound::Unreachable(9))));
        assert!(matches!(
            rx.recv().await,
            Some(Inbound::Snapshot {
                to: 9,
                delivered: false
            })
        ));
    }

    #[test]
    fn server_refuses_other_cluster_and_node() {
        let (tx, _rx) = mpsc::channel(1);
        let s = RaftService {
            id: 2,
            cluster_id: "lab".into(),
            inbound: tx,
            tls: true,
            members: Arc::new(RwLock::new(HashSet::from([1]))),
        };
        let mut verified = None;
        assert_eq!(
            s.check_peer(None, 1, &mut verified).map_err(|e| e.code()),
            Err(tonic::Code::Unauthenticated),
            "TLS mode: no certificate, no stream"
        );
        assert!(s.check("lab", 2).is_ok());
        assert_eq!(
            s.check("other", 2).map_err(|e| e.code()),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            s.check("lab", 3).map_err(|e| e.code()),
            Err(tonic::Code::InvalidArgument)
        );
    }
}
