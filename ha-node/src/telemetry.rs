//! Logs and metrics for the daemon.
//!
//! The engine exposes plain counters and events (STYLE.md §7); this module
//! names them once, with units and help text, and serves them to Prometheus
//! through `metrics-exporter-prometheus`. Metric names follow
//! `haven_<subsystem>_<what>_<unit>`.

use std::net::SocketAddr;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Registrations by realm, reply code and result ("accepted"/"denied").
pub const REGISTRATIONS: &str = "haven_registrations_total";
/// Time from a request's arrival to its reply leaving (commit included).
pub const REGISTRATION_DURATION: &str = "haven_registration_duration_seconds";
/// Datagrams dropped without a reply, by reason.
pub const REGISTRATION_DROPS: &str = "haven_registration_drops_total";
/// Bindings (home addresses with at least one care-of address) per realm.
pub const BINDINGS: &str = "haven_bindings";
/// Care-of bindings that ran out of lifetime.
pub const EXPIRIES: &str = "haven_binding_expiries_total";
/// Bindings removed through the admin API.
pub const REMOVALS: &str = "haven_binding_removals_total";
/// Free addresses left in a realm's dynamic pool.
pub const POOL_FREE: &str = "haven_pool_free_addresses";
/// Always 1, labelled with the version.
pub const BUILD_INFO: &str = "haven_build_info";

/// Raft: current term.
pub const RAFT_TERM: &str = "haven_raft_term";
/// Raft: the leader this node knows (0 = none).
pub const RAFT_LEADER_ID: &str = "haven_raft_leader_id";
/// Raft: 1 on the leader, 0 elsewhere.
pub const RAFT_IS_LEADER: &str = "haven_raft_is_leader";
/// Raft: 1 while this node is a voter of the group (0 before it was added
/// and after it was removed: it then answers no registration).
pub const RAFT_MEMBER: &str = "haven_raft_member";
/// Raft: commit index.
pub const RAFT_COMMIT_INDEX: &str = "haven_raft_commit_index";
/// Raft: applied index.
pub const RAFT_APPLIED_INDEX: &str = "haven_raft_applied_index";
/// Raft: proposals accepted by raft.
pub const RAFT_PROPOSALS: &str = "haven_raft_proposals_total";
/// Raft: proposals refused (no leader, transfer in progress).
pub const RAFT_PROPOSAL_DROPS: &str = "haven_raft_proposal_drops_total";
/// Raft: times the known leader changed.
pub const RAFT_LEADER_CHANGES: &str = "haven_raft_leader_changes_total";
/// Raft: snapshot messages sent to followers.
pub const RAFT_SNAPSHOTS_SENT: &str = "haven_raft_snapshots_sent_total";
/// Raft: snapshots received and installed.
pub const RAFT_SNAPSHOTS_RECEIVED: &str = "haven_raft_snapshots_received_total";
/// Raft: state-machine snapshots taken here (log compactions).
pub const RAFT_SNAPSHOTS_TAKEN: &str = "haven_raft_snapshots_taken_total";
/// Raft: elections started at once because the leader's process was found
/// gone (`raft/node.rs`, "Leader death").
pub const RAFT_FAST_ELECTIONS: &str = "haven_raft_fast_elections_total";
/// Raft: messages the transport could not deliver, by peer.
pub const RAFT_UNREACHABLE: &str = "haven_raft_unreachable_total";
/// 1 while the outbound Raft stream to a peer is connected.
pub const RAFT_PEER_CONNECTED: &str = "haven_raft_peer_connected";
/// Reconnects to a peer refused (ECONNREFUSED) after its stream ended: its
/// process is gone (`raft/transport.rs`), by peer.
pub const RAFT_PEER_CONNECT_REFUSED: &str = "haven_raft_peer_connect_refused_total";
/// Peer-death withdrawals sent to the dispatchers, by result
/// (`advertise.rs`).
pub const DISPATCH_WITHDRAWALS: &str = "haven_dispatch_withdrawals_total";
/// Pool addresses assigned to a NAI that had one remembered, by realm and
/// result ("kept": its last address given back; "taken": another one).
pub const POOL_AFFINITY: &str = "haven_pool_affinity_total";
/// Time to persist and restore a received snapshot.
pub const RAFT_SNAPSHOT_INSTALL: &str = "haven_raft_snapshot_install_seconds";
/// Size of received snapshots.
pub const RAFT_SNAPSHOT_BYTES: &str = "haven_raft_snapshot_bytes";
/// Raft transport streams refused after the TLS handshake, by reason
/// (`no_certificate`, `identity`, `not_member`, `cluster_id`,
/// `addressing`).
pub const RAFT_PEER_REFUSALS: &str = "haven_raft_peer_refusals_total";
/// TLS handshakes refused, by listener (`cluster`, `admin`) and reason
/// (`unknown_ca`, `bad_certificate`, `no_certificate`, `protocol`, `io`,
/// `timeout`).
pub const TLS_HANDSHAKE_FAILURES: &str = "haven_tls_handshake_failures_total";
/// Admin calls refused, by reason (`unauthenticated`, `read_only`).
pub const ADMIN_REFUSALS: &str = "haven_admin_refusals_total";
/// Failing registration requests charged to the flood limiter.
pub const LIMITER_CHARGED: &str = "haven_registration_limiter_charged_total";
/// Sources the flood limiter tracks now.
pub const LIMITER_SOURCES: &str = "haven_registration_limiter_sources";

/// Starts the Prometheus endpoint on `listen` (`GET /metrics`) and
/// describes every metric the node emits. Must run inside a tokio runtime.
/// Readiness is signalled separately by [`mark_ready`].
pub fn install(listen: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        // Registration latency spans sub-millisecond (local commit) to the
        // commit timeout (seconds) when a quorum is slow.
        .set_buckets_for_metric(
            Matcher::Full(REGISTRATION_DURATION.to_string()),
            &[
                0.000_25, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )?
        .install()?;
    describe();
    Ok(())
}

/// Publishes `haven_build_info`: the node's readiness signal. Call it once
/// every socket is bound and the log is open.
pub fn mark_ready() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

fn describe() {
    describe_counter!(
        REGISTRATIONS,
        Unit::Count,
        "Registration replies sent, by realm, code and result"
    );
    describe_histogram!(
        REGISTRATION_DURATION,
        Unit::Seconds,
        "Time from request arrival to reply, including the replicated commit"
    );
    describe_counter!(
        REGISTRATION_DROPS,
        Unit::Count,
        "Datagrams on the registration port dropped without a reply, by reason"
    );
    describe_gauge!(BINDINGS, Unit::Count, "Home addresses with a binding");
    describe_counter!(EXPIRIES, Unit::Count, "Care-of bindings expired");
    describe_counter!(REMOVALS, Unit::Count, "Bindings removed by an operator");
    describe_gauge!(POOL_FREE, Unit::Count, "Free addresses in the dynamic pool");
    describe_gauge!(BUILD_INFO, "haven build information");
    describe_gauge!(RAFT_TERM, Unit::Count, "Raft term");
    describe_gauge!(
        RAFT_PEER_CONNECTED,
        "1 while the outbound Raft stream to the peer is connected"
    );
    describe_counter!(
        RAFT_PEER_CONNECT_REFUSED,
        Unit::Count,
        "Reconnects to a peer refused after its stream ended (its process is gone), by peer"
    );
    describe_counter!(
        DISPATCH_WITHDRAWALS,
        Unit::Count,
        "Peer-death withdrawals sent to the dispatchers, by result"
    );
    describe_counter!(
        POOL_AFFINITY,
        Unit::Count,
        "Pool addresses assigned to a NAI that had one remembered, by realm and result \
         (kept: its last address given back; taken: another one assigned)"
    );
    describe_histogram!(
        RAFT_SNAPSHOT_INSTALL,
        Unit::Seconds,
        "Time to persist and restore a received Raft snapshot"
    );
    describe_histogram!(
        RAFT_SNAPSHOT_BYTES,
        Unit::Bytes,
        "Size of received Raft snapshots"
    );
    describe_gauge!(RAFT_LEADER_ID, "Raft leader known to this node (0 = none)");
    describe_gauge!(RAFT_IS_LEADER, "1 when this node is the Raft leader");
    describe_gauge!(RAFT_MEMBER, "1 when this node is a voter of the Raft group");
    describe_gauge!(RAFT_COMMIT_INDEX, Unit::Count, "Raft commit index");
    describe_gauge!(RAFT_APPLIED_INDEX, Unit::Count, "Raft applied index");
    describe_counter!(RAFT_PROPOSALS, Unit::Count, "Proposals accepted by Raft");
    describe_counter!(
        RAFT_PROPOSAL_DROPS,
        Unit::Count,
        "Proposals Raft refused (no leader): the request got no reply"
    );
    describe_counter!(
        RAFT_LEADER_CHANGES,
        Unit::Count,
        "Times the Raft leader known to this node changed"
    );
    describe_counter!(RAFT_SNAPSHOTS_SENT, Unit::Count, "Raft snapshots sent");
    describe_counter!(
        RAFT_SNAPSHOTS_RECEIVED,
        Unit::Count,
        "Raft snapshots received and installed"
    );
    describe_counter!(
        RAFT_SNAPSHOTS_TAKEN,
        Unit::Count,
        "Binding-table snapshots taken (Raft log compactions)"
    );
    describe_counter!(
        RAFT_FAST_ELECTIONS,
        Unit::Count,
        "Raft elections this node started at once because its leader's process was gone"
    );
    describe_counter!(
        RAFT_PEER_REFUSALS,
        Unit::Count,
        "Raft transport streams refused after the TLS handshake, by reason"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        Unit::Count,
        "TLS handshakes refused, by listener and reason"
    );
    describe_counter!(
        ADMIN_REFUSALS,
        Unit::Count,
        "Admin API calls refused, by reason"
    );
    describe_counter!(
        LIMITER_CHARGED,
        Unit::Count,
        "Failing registration requests charged to the flood limiter"
    );
    describe_gauge!(
        LIMITER_SOURCES,
        Unit::Count,
        "Sources tracked by the registration flood limiter"
    );
    describe_counter!(
        RAFT_UNREACHABLE,
        Unit::Count,
        "Raft messages the transport could not deliver, by peer"
    );
}
