//! The `ha-node` binary as an operator meets it (issue "Home agent node",
//! Done-when list): `--check-config` and its exit codes, start-up failures,
//! the admin API through `havenctl`, and a clean stop on SIGTERM/SIGINT.
//!
//! Every daemon listens on loopback with ports from `free_port()`; waits are
//! conditions with bounds, and every spawned daemon is killed when its
//! [`Process`] drops.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use haven_cluster_tests::fleet::{NodeSpec, RealmSpec};
use haven_cluster_tests::mnsim::{self, HomeMode, SimConfig};
use haven_cluster_tests::supervisor::{Process, await_metric, free_port, wait_for};

mod common;
use common::node::{self, BOUND, check_config, havenctl, loopback};

const KEY: &[u8] = b"daemon-test-key!";
const HOA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 5);
/// BSD sysexits' EX_USAGE: a configuration that does not load or validate.
const EX_USAGE: i32 = 64;
/// BSD sysexits' EX_UNAVAILABLE: `havenctl` cannot reach the node.
const EX_UNAVAILABLE: i32 = 69;

/// A one-realm node on loopback, every port free.
fn spec(vip: Ipv4Addr) -> NodeSpec {
    NodeSpec::new(1, loopback(free_port()), loopback(free_port())).realm(
        RealmSpec {
            port: free_port(),
            ..RealmSpec::new("inner", vip, "198.51.100.0/24")
        }
        .with_home_address_sas(HOA, 1, 256, KEY),
    )
}

/// Writes `text` as a config file in `dir`.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

/// Starts the daemon for `spec`; does not wait for it.
fn spawn(spec: &NodeSpec, dir: &Path) -> Process {
    let config = spec.write(dir).expect("write the config");
    node::spawn("ha-node", &config, "info", None)
}

/// Starts the daemon and waits for its metrics endpoint.
fn start(spec: &NodeSpec, dir: &Path) -> Process {
    let p = spawn(spec, dir);
    node::await_ready(spec, None).expect("ha-node serves metrics");
    p
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "havenctl failed: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("havenctl prints JSON")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ------------------------------------------------------ --check-config ----

/// The shipped example validates as it is (its `keys_file` lines are
/// commented out, so it stands alone) and the summary names its realms.
#[test]
fn example_config_checks_ok() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/ha-node.example.toml");
    let out = check_config(&example);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("ok (node 1, 2 realm(s): inner 192.0.2.1:434, outer 203.0.113.1:434)"),
        "{summary}"
    );
}

/// A config made by the test lab validates, and `--check-config` does not
/// start anything (it returns at once, with nothing bound).
#[test]
fn generated_config_checks_ok() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(Ipv4Addr::new(127, 0, 0, 20));
    let out = check_config(&s.write(dir.path()).unwrap());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (node 1, 1 realm(s): inner 127.0.0.20:")
    );
}

/// Every way a config can be wrong exits 64 (EX_USAGE) with a message that
/// names the problem.
#[test]
fn bad_configs_exit_64_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = spec(Ipv4Addr::new(127, 0, 0, 21)).toml();
    let pool = |p: &str| {
        good.replace(
            "max_lifetime_secs",
            &format!("pool = \"{p}\"\nmax_lifetime_secs"),
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "syntax",
            good.replace("[admin]", "[admin"),
            "TOML parse error",
        ),
        (
            "unknown-field",
            good.replace("[node]\n", "[node]\ncolour = \"blue\"\n"),
            "unknown field `colour`",
        ),
        // [RFC 5944 § 3.5.1]: SPIs 0–255 are reserved.
        (
            "spi",
            good.replace("spi = 256", "spi = 255"),
            "spi 255 is reserved",
        ),
        (
            "pool-outside",
            pool("198.51.101.10-198.51.101.20"),
            "is not inside home_prefix 198.51.100.0/24",
        ),
        (
            "pool-network-address",
            pool("198.51.100.0-198.51.100.20"),
            "is not inside home_prefix",
        ),
        (
            "pool-empty",
            pool("198.51.100.20-198.51.100.10"),
            "is empty",
        ),
        (
            "short-key",
            good.replace(&hex::encode(KEY), "00112233"),
            "at least 16 are required",
        ),
        (
            "node-id",
            good.replace("id = 1", "id = 0"),
            "id must be non-zero",
        ),
        (
            "hoa-outside",
            good.replace(
                "home_address = \"198.51.100.5\"",
                "home_address = \"192.0.2.5\"",
            ),
            "is outside home_prefix",
        ),
    ];
    for (name, text, reason) in cases {
        assert_ne!(text, good, "case {name} changed nothing");
        let out = check_config(&write(dir.path(), &format!("{name}.toml"), &text));
        assert_eq!(
            out.status.code(),
            Some(EX_USAGE),
            "case {name}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(reason),
            "case {name}: {}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "case {name} printed a summary");
    }
    let out = check_config(&dir.path().join("absent.toml"));
    assert_eq!(out.status.code(), Some(EX_USAGE));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    // Without --check-config the daemon refuses the same way.
    let bad = write(
        dir.path(),
        "run.toml",
        &good.replace("spi = 256", "spi = 1"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ha-node"))
        .arg("--config")
        .arg(bad)
        .output()
        .expect("run ha-node");
    assert_eq!(out.status.code(), Some(EX_USAGE), "{}", stderr(&out));
}

// ------------------------------------------------------------ start-up ----

/// The daemon for `s` exits 1 at start-up, its log naming `what` and the
/// address "in use".
fn assert_start_fails_in_use(s: &NodeSpec, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(s, dir.path());
    let st = p.wait_exit(BOUND).expect("ha-node exits");
    assert_eq!(st.code(), Some(1), "{}", p.log());
    let log = p.log();
    assert!(log.contains(what), "{log}");
    assert!(log.contains("in use"), "{log}");
}

/// An admin address someone else holds: the daemon exits non-zero at once
/// and says which listener failed.
#[test]
fn taken_admin_address_fails_start_up() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("listener");
    let mut s = spec(Ipv4Addr::new(127, 0, 0, 22));
    s.admin = taken.local_addr().unwrap();
    assert_start_fails_in_use(&s, &format!("admin listener on {}", s.admin));
}

/// A realm port held by another UDP socket (bound without SO_REUSEADDR,
/// so the daemon's SO_REUSEADDR does not share it): start-up fails and
/// names the realm. (A VIP that is not local does bind: the daemon sets
/// IP_FREEBIND for VIPs that move between nodes.)
#[test]
fn taken_realm_port_fails_start_up() {
    let vip = Ipv4Addr::new(127, 0, 0, 26);
    let taken = std::net::UdpSocket::bind((vip, 0)).expect("udp socket");
    let mut s = spec(vip);
    s.realms[0].port = taken.local_addr().unwrap().port();
    assert_start_fails_in_use(&s, &format!("realm inner: bind {vip}:{}", s.realms[0].port));
}

// ----------------------------------------------------------- admin API ----

#[test]
fn havenctl_status_and_unreachable_node() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(Ipv4Addr::new(127, 0, 0, 23));
    let _node = start(&s, dir.path());
    let st = json(&havenctl(s.admin, &["status"]));
    assert_eq!(st["node_id"], 1);
    assert_eq!(st["role"], "standalone");
    assert_eq!(st["realms"][0]["name"], "inner");
    assert_eq!(st["realms"][0]["vip"], "127.0.0.23");
    assert_eq!(st["realms"][0]["bindings"], 0);
    // The table form too.
    let out = Command::new(env!("CARGO_BIN_EXE_havenctl"))
        .arg("--admin")
        .arg(s.admin.to_string())
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.23"));

    // Nobody listens on a fresh free port.
    let dead = loopback(free_port());
    let out = havenctl(dead, &["status"]);
    assert_eq!(out.status.code(), Some(EX_UNAVAILABLE), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot reach the node"),
        "{}",
        stderr(&out)
    );
}

/// `RemoveBinding` (havenctl bindings remove) is replicated like a
/// deregistration [RFC 5944 § 3.8.2]: the binding is gone afterwards, and
/// removing it again reports that nothing was there.
#[test]
fn havenctl_removes_a_binding() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(Ipv4Addr::new(127, 0, 0, 24));
    let _node = start(&s, dir.path());
    let r = &s.realms[0];
    let mut sim = SimConfig::new(SocketAddrV4::new(r.vip, r.port), KEY.to_vec());
    sim.home = HomeMode::Static { base: HOA };
    sim.deregister = false;
    let report = mnsim::run(&sim).expect("mnsim");
    assert_eq!(report.summary.registered, 1, "{}", report.summary.table());

    let hoa = HOA.to_string();
    let shown = json(&havenctl(s.admin, &["bindings", "show", "inner", &hoa]));
    assert_eq!(shown[0]["home_address"], hoa);

    let removed = json(&havenctl(s.admin, &["bindings", "remove", "inner", &hoa]));
    assert_eq!(removed["removed"], true);
    let out = havenctl(s.admin, &["bindings", "show", "inner", &hoa]);
    assert_eq!(out.status.code(), Some(1), "the binding is gone");
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));
    assert_eq!(
        json(&havenctl(s.admin, &["bindings", "list"])),
        serde_json::json!([])
    );
    let again = json(&havenctl(s.admin, &["bindings", "remove", "inner", &hoa]));
    assert_eq!(again["removed"], false);
    await_metric(
        &s.metrics_url(),
        None,
        "haven_binding_removals_total",
        &[("realm", "inner")],
        |v| v == 1.0,
        BOUND,
    )
    .expect("one removal counted");
    // Unknown realm and bad address are refused, not unreachable.
    let out = havenctl(s.admin, &["bindings", "remove", "nowhere", &hoa]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = havenctl(s.admin, &["bindings", "show", "inner", "not-an-address"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

// ------------------------------------------------------------ shutdown ----

/// SIGTERM and SIGINT stop the node cleanly: exit 0, "stopped" logged,
/// the admin API gone.
#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(Ipv4Addr::new(127, 0, 0, 25));
        let mut node = start(&s, dir.path());
        json(&havenctl(s.admin, &["status"]));
        node.signal(sig).expect("signal");
        let st = node.wait_exit(BOUND).expect("ha-node exits");
        assert_eq!(st.code(), Some(0), "{name}: {}", node.log());
        wait_for("the log to say stopped", BOUND, || {
            node.log().contains("stopped")
        })
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", node.log()));
        let out = havenctl(s.admin, &["status"]);
        assert_eq!(out.status.code(), Some(EX_UNAVAILABLE), "{name}");
    }
}
