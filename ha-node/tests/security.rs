//! Security of the cluster's and the admin API's gRPC (issue 11, items 1,
//! 2 and 4; docs/security.md): real `ha-node` daemons on loopback with
//! certificates made at test time (rcgen), strangers that try to join or
//! inject raft messages, and admin calls with and without credentials.
//!
//! Waits are conditions with bounds; every daemon is SIGKILLed when its
//! [`Process`] drops.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use haven_cluster_tests::fleet::{ClusterSpec, NodeSpec, RealmSpec, TlsSpec};
use haven_cluster_tests::mnsim::{self, HomeMode, SimConfig};
use haven_cluster_tests::supervisor::{Process, await_metric, free_port, scrape, wait_for};
use haven_proto::grpc;
use protobuf::Message as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

mod common;
use common::node::{self, BOUND, Timeouts, check_config, loopback};

const KEY: &[u8] = b"security-test-key";
const SPI: u32 = 256;
const EX_USAGE: i32 = 64;
const HOME_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 40, 0);

// ------------------------------------------------------------------ PKI ----

/// A test CA that writes its certificate and issues leaf certificates as
/// PEM files (keys mode 0600, as the node demands).
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("haven test CA {name}"));
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).expect("write ca");
        Pki {
            ca,
            dir: dir.to_owned(),
            name: name.to_owned(),
        }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A leaf for DNS name `san`, verified against `trust` (a CA file).
    fn issue(&self, san: &str, trust: &Path) -> TlsSpec {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![san.to_owned()])
            .expect("params")
            .signed_by(&key, &self.ca)
            .expect("sign");
        let base = self.dir.join(format!("{}-{san}", self.name));
        let (cert_path, key_path) = (base.with_extension("pem"), base.with_extension("key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        TlsSpec {
            ca: trust.to_owned(),
            cert: cert_path,
            key: key_path,
        }
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read pem")
}

// -------------------------------------------------------------- daemons ----

/// The node, ready (its log tail is printed if it does not start).
fn start(spec: &NodeSpec, dir: &Path) -> Process {
    node::start(spec, dir, "info,raft=warn")
}

/// A raft node `id` with VIP `127.0.0.(vip_base + id)`.
fn raft_spec(
    id: u64,
    vip_base: u8,
    listen: SocketAddr,
    peers: Vec<(u64, SocketAddr)>,
    tls: TlsSpec,
    dir: &Path,
) -> (NodeSpec, SocketAddrV4) {
    let vip = Ipv4Addr::new(127, 0, 0, vip_base + id as u8);
    let port = free_port();
    let data_dir = dir.join(format!("raft-{id}"));
    let spec = NodeSpec::new(id, loopback(free_port()), loopback(free_port()))
        .realm(
            RealmSpec {
                port,
                ..RealmSpec::new("lab", vip, "198.18.0.0/16")
            }
            .with_home_address_sas(HOME_BASE, 32, SPI, KEY),
        )
        .cluster(ClusterSpec {
            tls: Some(tls),
            ..ClusterSpec::raft("lab", listen, &data_dir, peers)
        });
    (spec, SocketAddrV4::new(vip, port))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// What the admin calls of these tests may take.
const ADMIN: Timeouts = Timeouts {
    connect: Duration::from_millis(500),
    call: Duration::from_secs(10),
};

fn status(spec: &NodeSpec) -> Option<grpc::StatusReply> {
    node::status_in(spec, None, ADMIN)
}

/// The sum of every sample of `name` whose labels include `labels`.
fn metric_sum(spec: &NodeSpec, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Ok(text) = scrape(&spec.metrics_url(), None) else {
        return 0.0;
    };
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ------------------------------------------------------- raft over TLS ----

/// Sends one raft message (`from` → `to`, a vote request in a high term)
/// to `addr` over mutual TLS with `identity`; returns the RPC's result.
fn inject(
    addr: SocketAddr,
    ca: &Path,
    identity: &TlsSpec,
    server_name: &str,
    from: u64,
    to: u64,
) -> Result<(), String> {
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgRequestVote);
    m.from = from;
    m.to = to;
    m.term = 1_000;
    let bytes = m.write_to_bytes().map_err(|e| e.to_string())?;
    block_on(async move {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)))
            .identity(tonic::transport::Identity::from_pem(
                read(&identity.cert),
                read(&identity.key),
            ))
            .domain_name(server_name);
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut c = grpc::raft_transport_client::RaftTransportClient::new(ch);
        let batch = grpc::RaftBatch {
            cluster_id: "lab".into(),
            from,
            to,
            messages: vec![bytes],
        };
        c.send(tokio_stream::iter(vec![batch]))
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })
}

#[test]
fn tls_cluster_elects_replicates_and_refuses_strangers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "lab");
    let other = Pki::new(dir.path(), "other");
    let ca = pki.ca_path();

    // Three members, each with its own certificate.
    let listen: Vec<SocketAddr> = (0..3).map(|_| loopback(free_port())).collect();
    let peers: Vec<(u64, SocketAddr)> = (1..=3).zip(listen.iter().copied()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let tls = pki.issue(&format!("node-{id}.haven"), &ca);
        let (spec, vip) = raft_spec(
            id,
            160,
            listen[id as usize - 1],
            peers.clone(),
            tls,
            dir.path(),
        );
        let proc = start(&spec, dir.path());
        nodes.push((spec, vip, proc));
    }

    // It elects a leader over mutual TLS ...
    let mut leader = 0;
    wait_for("a leader all three agree on", BOUND, || {
        let seen: Vec<u64> = nodes
            .iter()
            .map(|(s, _, _)| status(s).map_or(0, |s| s.leader_id))
            .collect();
        leader = seen[0];
        leader != 0 && seen.iter().all(|l| *l == leader)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", nodes[0].2.log_tail(30)));

    // ... and replicates: registrations through the leader reach every
    // member's table.
    let (lspec, lvip, _) = &nodes[leader as usize - 1];
    let mut sim = SimConfig::new(*lvip, KEY.to_vec());
    sim.count = 20;
    sim.rate = 0.0;
    sim.home = HomeMode::Static { base: HOME_BASE };
    sim.spi = SPI;
    sim.deregister = false;
    let report = mnsim::run(&sim).expect("mnsim");
    assert_eq!(report.summary.registered, 20, "{}", report.summary.table());
    for (spec, _, _) in &nodes {
        wait_for(
            &format!("node {} holds 20 bindings", spec.id),
            BOUND,
            || status(spec).is_some_and(|s| s.realms.first().is_some_and(|r| r.bindings == 20)),
        )
        .expect("replicated");
    }
    let before = status(lspec).expect("leader status");

    let target = nodes[0].0.cluster.as_ref().expect("cluster").listen;
    let target_spec = &nodes[0].0;

    // A stranger with a certificate from another CA: the handshake is
    // refused before any raft message is read.
    let foreign = other.issue("node-2.haven", &ca);
    let r = inject(target, &ca, &foreign, "node-1.haven", 2, 1);
    assert!(r.is_err(), "a foreign certificate was accepted");
    await_metric(
        &target_spec.metrics_url(),
        None,
        "haven_tls_handshake_failures_total",
        &[("listener", "cluster"), ("reason", "unknown_ca")],
        |v| v >= 1.0,
        BOUND,
    )
    .expect("the refused handshake is counted");

    // A valid certificate of a non-member: refused by identity.
    let outsider = pki.issue("node-9.haven", &ca);
    let r = inject(target, &ca, &outsider, "node-1.haven", 9, 1);
    assert!(
        r.as_ref().is_err_and(|e| e.contains("PermissionDenied")),
        "{r:?}"
    );
    assert!(
        metric_sum(
            target_spec,
            "haven_raft_peer_refusals_total",
            &[("reason", "not_member")]
        ) >= 1.0
    );
    // The same certificate claiming to be member 2: refused by identity.
    let r = inject(target, &ca, &outsider, "node-1.haven", 2, 1);
    assert!(
        r.as_ref().is_err_and(|e| e.contains("PermissionDenied")),
        "{r:?}"
    );
    assert!(
        metric_sum(
            target_spec,
            "haven_raft_peer_refusals_total",
            &[("reason", "identity")]
        ) >= 1.0
    );

    // A whole daemon with a foreign certificate, configured as a fourth
    // founding voter, campaigns and is refused by every member.
    let rogue_listen = loopback(free_port());
    let mut rogue_peers = peers.clone();
    rogue_peers.push((4, rogue_listen));
    let (rogue_spec, _) = raft_spec(
        4,
        160,
        rogue_listen,
        rogue_peers,
        other.issue("node-4.haven", &other.ca_path()),
        dir.path(),
    );
    let _rogue = start(&rogue_spec, dir.path());
    for (spec, _, _) in &nodes {
        wait_for(
            &format!("node {} refuses the rogue's handshakes", spec.id),
            BOUND,
            || {
                metric_sum(
                    spec,
                    "haven_tls_handshake_failures_total",
                    &[("listener", "cluster")],
                ) >= if spec.id == 1 { 2.0 } else { 1.0 }
            },
        )
        .expect("rogue refused");
    }
    let rogue_status = status(&rogue_spec).expect("rogue status");
    assert_eq!(rogue_status.leader_id, 0, "the rogue found no leader");

    // The cluster did not notice: same term, same leader, same members,
    // still three voters.
    for (spec, _, _) in &nodes {
        let s = status(spec).expect("status");
        assert_eq!(s.term, before.term, "node {}: term moved", spec.id);
        assert_eq!(s.leader_id, leader, "node {}", spec.id);
        assert_eq!(s.members, vec![1, 2, 3], "node {}", spec.id);
    }
}

// ------------------------------------------------------------ admin API ----

fn local_spec() -> NodeSpec {
    NodeSpec::new(1, loopback(free_port()), loopback(free_port())).realm(
        RealmSpec {
            port: free_port(),
            ..RealmSpec::new("lab", Ipv4Addr::new(127, 0, 0, 170), "198.18.0.0/16")
        }
        .with_home_address_sas(HOME_BASE, 1, SPI, KEY),
    )
}

fn write_secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

fn code<T>(r: Result<T, tonic::Status>) -> Result<(), tonic::Code> {
    r.map(|_| ()).map_err(|s| s.code())
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("metadata"),
        );
    }
    r
}

#[test]
fn admin_tokens_separate_read_from_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = local_spec();
    spec.admin_token_file = Some(write_secret(dir.path(), "admin.token", "write-secret-1\n"));
    spec.admin_read_token_file = Some(write_secret(dir.path(), "read.token", "read-secret-2"));
    let _node = start(&spec, dir.path());

    let codes = node::admin(&spec, ADMIN, |mut c| async move {
        let drain = |t: Option<&str>| with_token(grpc::DrainRequest { drain: true }, t);
        Ok((
            code(c.status(with_token(grpc::StatusRequest {}, None)).await),
            code(c.drain(drain(None)).await),
            code(c.drain(drain(Some("wrong"))).await),
            code(
                c.status(with_token(grpc::StatusRequest {}, Some("read-secret-2")))
                    .await,
            ),
            code(
                c.list_bindings(with_token(
                    grpc::ListBindingsRequest::default(),
                    Some("read-secret-2"),
                ))
                .await,
            ),
            code(c.drain(drain(Some("read-secret-2"))).await),
            code(
                c.remove_binding(with_token(
                    grpc::RemoveBindingRequest {
                        realm: "lab".into(),
                        home_address: HOME_BASE.to_string(),
                    },
                    Some("read-secret-2"),
                ))
                .await,
            ),
            code(c.drain(drain(Some("write-secret-1"))).await),
        ))
    })
    .expect("connect");
    use tonic::Code::{PermissionDenied, Unauthenticated};
    assert_eq!(codes.0, Err(Unauthenticated), "status without a token");
    assert_eq!(codes.1, Err(Unauthenticated), "drain without a token");
    assert_eq!(codes.2, Err(Unauthenticated), "drain with a wrong token");
    assert_eq!(codes.3, Ok(()), "status with the read token");
    assert_eq!(codes.4, Ok(()), "list with the read token");
    assert_eq!(codes.5, Err(PermissionDenied), "drain with the read token");
    assert_eq!(codes.6, Err(PermissionDenied), "remove with the read token");
    assert_eq!(codes.7, Ok(()), "drain with the write token");
    assert!(status(&spec).is_none(), "no token, no status");
    assert!(
        metric_sum(
            &spec,
            "haven_admin_refusals_total",
            &[("reason", "read_only")]
        ) >= 2.0
    );

    // havenctl with --token-file (and without).
    let ctl = |token: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_havenctl"));
        c.arg("--admin").arg(spec.admin.to_string());
        if let Some(t) = token {
            c.arg("--token-file").arg(t);
        }
        c.args(["--json", "status"]).output().expect("havenctl")
    };
    let out = ctl(Some(&dir.path().join("read.token")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["draining"], true, "the write token's drain took effect");
    // The mutating subcommands: drain --undo with the write token, refused
    // with the read token; membership needs raft mode.
    let ctl_args = |token: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_havenctl"))
            .arg("--admin")
            .arg(spec.admin.to_string())
            .arg("--token-file")
            .arg(dir.path().join(token))
            .arg("--json")
            .args(args)
            .output()
            .expect("havenctl")
    };
    let out = ctl_args("read.token", &["drain", "--undo"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"));
    let out = ctl_args("admin.token", &["drain", "--undo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["draining"], false);
    let out = ctl_args("admin.token", &["members", "add", "4", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"));
    let out = ctl(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn admin_tls_requires_a_client_certificate_from_its_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "admin");
    let other = Pki::new(dir.path(), "other");
    let ca = pki.ca_path();
    let mut spec = local_spec();
    spec.admin_tls = Some(pki.issue("localhost", &ca));
    let _node = start(&spec, dir.path());

    let ctl = |client: &TlsSpec| {
        Command::new(env!("CARGO_BIN_EXE_havenctl"))
            .arg("--admin")
            .arg(format!("localhost:{}", spec.admin.port()))
            .arg("--ca")
            .arg(&ca)
            .arg("--cert")
            .arg(&client.cert)
            .arg("--key")
            .arg(&client.key)
            .args(["--json", "status"])
            .output()
            .expect("havenctl")
    };
    let good = pki.issue("operator.haven", &ca);
    let out = ctl(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["node_id"], 1);

    let bad = other.issue("operator.haven", &ca);
    let out = ctl(&bad);
    assert!(
        !out.status.success(),
        "a foreign client certificate was accepted"
    );
    await_metric(
        &spec.metrics_url(),
        None,
        "haven_tls_handshake_failures_total",
        &[("listener", "admin"), ("reason", "unknown_ca")],
        |v| v >= 1.0,
        BOUND,
    )
    .expect("refusal counted");
    // Plaintext gets nothing either.
    assert!(status(&spec).is_none());
}

// ------------------------------------------------- configuration checks ----

#[test]
fn unprotected_remote_admin_and_readable_secrets_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A non-loopback admin listener with no authentication.
    let mut spec = local_spec();
    spec.admin = "192.0.2.1:4340".parse().expect("addr");
    let path = spec.write(dir.path()).expect("write");
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(EX_USAGE));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");

    // The same with a token file: accepted ...
    let token = write_secret(dir.path(), "t", "s3cret-token-value");
    spec.admin_token_file = Some(token.clone());
    let path = spec.write(dir.path()).expect("write");
    let out = check_config(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... unless others may read it; the error never shows the token.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(EX_USAGE));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mode 0644"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    // A TLS key readable by the group.
    let pki = Pki::new(dir.path(), "k");
    let tls = pki.issue("node-1.haven", &pki.ca_path());
    std::fs::set_permissions(&tls.key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let mut spec = local_spec();
    spec.admin_tls = Some(tls);
    let path = spec.write(dir.path()).expect("write");
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(EX_USAGE));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode 0640"));
}
