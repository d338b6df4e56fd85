//! The real `ha-node` as the tests meet it: started on loopback or inside a
//! namespace, ready once it publishes `haven_build_info` (the daemon sets it
//! last, when every listener is bound: `ha-node/src/server.rs`), asked
//! through its admin API and `havenctl`, and its `--check-config`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use haven_cluster_tests::fleet::NodeSpec;
use haven_cluster_tests::supervisor::{Process, Spec, SupError, await_metric, metric, scrape};
use haven_cluster_tests::topo::in_netns;
use haven_proto::grpc::{self, admin_client::AdminClient};

/// Longest wait for a daemon to start or stop, and for a condition of the
/// cluster to settle.
pub const BOUND: Duration = Duration::from_secs(20);

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `ha-node --config CONFIG` as process `name` with `RUST_LOG=log`, inside
/// namespace `ns` when given; does not wait for it.
pub fn spawn(name: &str, config: &Path, log: &str, ns: Option<&str>) -> Process {
    Process::spawn(
        name,
        Spec::new(env!("CARGO_BIN_EXE_ha-node"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", log),
        ns,
    )
    .expect("spawn ha-node")
}

/// Waits within [`BOUND`] for the node's readiness metric.
///
/// # Errors
/// When the node does not publish it in time.
pub fn await_ready(spec: &NodeSpec, ns: Option<&str>) -> Result<f64, SupError> {
    await_metric(
        &spec.metrics_url(),
        ns,
        "haven_build_info",
        &[],
        |v| v == 1.0,
        BOUND,
    )
}

/// Writes `spec`'s config to `dir`, starts `ha-node-<id>` on it and waits
/// until it is ready.
pub fn start(spec: &NodeSpec, dir: &Path, log: &str) -> Process {
    let config = spec.write(dir).expect("write the config");
    let p = spawn(&format!("ha-node-{}", spec.id), &config, log, None);
    await_ready(spec, None).expect("node starts");
    p
}

/// A loopback socket standing in for the dispatcher (the nodes' health
/// adverts arrive here), with a 200 ms read timeout.
pub fn fake_dispatcher() -> (UdpSocket, SocketAddrV4) {
    let disp = UdpSocket::bind("127.0.0.1:0").expect("bind the fake dispatcher");
    disp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let SocketAddr::V4(addr) = disp.local_addr().expect("addr") else {
        panic!("v4")
    };
    (disp, addr)
}

/// `name{labels}` on the node's metrics endpoint; 0 when absent or down.
pub fn scrape_metric(spec: &NodeSpec, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(&spec.metrics_url(), None)
        .ok()
        .and_then(|t| metric(&t, name, labels))
        .unwrap_or(0.0)
}

// ------------------------------------------------------------ admin API ---

/// How long one admin call may take: to connect, and in all.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub call: Duration,
}

/// Runs `f` against the node's admin API on a fresh connection.
///
/// # Errors
/// The transport's or the call's failure, as text.
pub fn admin<T, F>(
    spec: &NodeSpec,
    t: Timeouts,
    f: impl FnOnce(AdminClient<tonic::transport::Channel>) -> F,
) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", spec.admin))
            .map_err(|e| e.to_string())?
            .connect_timeout(t.connect)
            .timeout(t.call)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        f(AdminClient::new(ch))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })
}

/// Status of a node (whose admin API listens inside namespace `ns`, when
/// given); `None` when it cannot be asked.
pub fn status_in(spec: &NodeSpec, ns: Option<&str>, t: Timeouts) -> Option<grpc::StatusReply> {
    let call = || {
        admin(spec, t, |mut c| async move {
            Ok(c.status(grpc::StatusRequest {}).await?.into_inner())
        })
        .ok()
    };
    match ns {
        Some(ns) => in_netns(ns, call).ok().flatten(),
        None => call(),
    }
}

// ------------------------------------------------------------- havenctl ---

/// `havenctl --admin ADMIN --json ARGS` (inside namespace `ns` when given).
pub fn havenctl_in(admin: SocketAddr, ns: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_havenctl")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_havenctl")),
    };
    cmd.arg("--admin")
        .arg(admin.to_string())
        .arg("--json")
        .args(args)
        .output()
        .expect("run havenctl")
}

/// `havenctl --admin ADMIN --json ARGS`.
pub fn havenctl(admin: SocketAddr, args: &[&str]) -> Output {
    havenctl_in(admin, None, args)
}

/// A node's binding table: home address → (first) care-of address.
pub type Table = HashMap<Ipv4Addr, Ipv4Addr>;

/// `havenctl bindings list --json` (inside namespace `ns` when given).
/// `None` when havenctl fails: callers poll within a bound.
pub fn bindings_in(spec: &NodeSpec, ns: Option<&str>) -> Option<Table> {
    let out = havenctl_in(spec.admin, ns, &["bindings", "list"]);
    if !out.status.success() {
        eprintln!("havenctl: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let rows = v
        .as_array()?
        .iter()
        .filter_map(|b| {
            let hoa = b["home_address"].as_str()?.parse().ok()?;
            let coa = b["care_of"][0]["care_of_address"].as_str()?.parse().ok()?;
            Some((hoa, coa))
        })
        .collect();
    Some(rows)
}

/// [`bindings_in`] on loopback.
pub fn bindings(spec: &NodeSpec) -> Option<Table> {
    bindings_in(spec, None)
}

// --------------------------------------------------------- check-config ---

/// `ha-node --config PATH --check-config`.
pub fn check_config(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ha-node"))
        .arg("--config")
        .arg(path)
        .arg("--check-config")
        .output()
        .expect("run ha-node")
}

/// `spec`'s config passes `--check-config`; each `(from, to, needle)` edit
/// of it (`from` must occur) is refused with exit 64 (EX_USAGE) and an error
/// containing `needle`. Returns the accepted run's stdout (its summary).
pub fn assert_edits_refused(spec: &NodeSpec, dir: &Path, edits: &[(&str, &str, &str)]) -> String {
    let good = spec.write(dir).expect("write");
    let ok = check_config(&good);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = std::fs::read_to_string(&good).expect("read");
    for (from, to, needle) in edits {
        assert!(text.contains(from), "{from:?} in {text}");
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, text.replacen(from, to, 1)).expect("write");
        let out = check_config(&bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{to}: {err}");
        assert!(err.contains(needle), "{to}: {err}");
    }
    String::from_utf8_lossy(&ok.stdout).into_owned()
}
