//! The operations files (issue 10, items 3-4) checked with the tools that
//! read them and against the real daemons:
//!
//! * `ops/prometheus/`: `promtool check config`, `promtool check rules`,
//!   `promtool test rules` (every alert fires on one set of series and stays
//!   silent on another, see `haven.rules.test.yml`);
//! * `ops/grafana/haven.json`: parsed, every panel with a unique id, a grid
//!   position that overlaps no other, the `${datasource}` variable and
//!   targets whose PromQL `promtool` accepts;
//! * `ops/systemd/`: `systemd-analyze verify` (with the real binaries as
//!   ExecStart) and the capability sets; `ops/sysctl.d/`: every key exists
//!   in this kernel;
//! * every `haven_*` name in the rules, their tests and the dashboard is one
//!   that a real `ha-node` (Raft pair of voters, pair mode) or a real
//!   `dispatcher` on loopback exports, after the events that create
//!   counters with labels (registrations accepted, denied, expired; a
//!   dropped datagram; an unreachable Raft peer). The few names that need
//!   root (a TUN device, a raw VRRP socket) are checked by the root test in
//!   a network namespace;
//! * every `haven_*` name those daemons export is in the metrics reference
//!   of `docs/operations.md`;
//! * every example configuration `ops/*.toml` passes its daemon's
//!   `--check-config`, with the key files it names generated next to it
//!   (and fails when one of them is readable by others); it uses only the
//!   documentation and benchmarking address ranges; the per-deployment
//!   examples write no key inline; and every key the examples show or the
//!   configuration structs deserialize is in `docs/configuration.md`.
//!
//! `promtool` is Debian's `prometheus` package (`scripts/test.sh` installs
//! it); without it these tests fail and say so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use haven_cluster_tests::fleet::{
    ClusterSpec, DispatchSpec, NodeSpec, PairSpec, RealmSpec, start_node,
};
use haven_cluster_tests::mnsim::{self, HomeMode, SimConfig};
use haven_cluster_tests::supervisor::{
    Process, Spec, await_metric, free_port, metric, scrape, wait_for, workspace_binary,
};
use haven_cluster_tests::topo::{self, Topology};

const BOUND: Duration = Duration::from_secs(20);
const KEY: &[u8] = b"ops-test MN-HA key";
const SPI: u32 = 256;
const HOA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);

/// Names that only a root test can bring to life: the data plane needs a
/// TUN device (CAP_NET_ADMIN), VRRP transitions a raw IP protocol 112
/// socket (CAP_NET_RAW). `metric_names_used_are_exported` leaves them to
/// `root_only_metric_names_are_exported`, which requires each of them.
const ROOT_ONLY: &[&str] = &[
    "haven_dataplane_packets_total",
    "haven_dataplane_drops_total",
    "haven_dataplane_icmp_errors_total",
    "haven_dispatcher_vrrp_transitions_total",
];

/// The alerts issue 10 asks for (item 3), by the name the rules give them.
const REQUIRED_ALERTS: &[&str] = &[
    "HavenNodeDown",
    "HavenRaftNoLeader",
    "HavenRaftProposalDrops",
    "HavenRegistrationDenialRateHigh",
    "HavenBindingsDroppingSharply",
    "HavenDispatcherNoHealthyNode",
    "HavenVipOwnerFlapping",
    "HavenVipNoOwner",
    "HavenVipTwoOwners",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn ops(rel: &str) -> PathBuf {
    repo().join("ops").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `promtool args` in `dir` and fails the test with its output unless
/// it succeeds.
fn promtool(args: &[&str], dir: &Path) -> String {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: `apt-get install -y --no-install-recommends prometheus` \
             (Debian's package ships /usr/bin/promtool; scripts/test.sh installs it)"
        ),
        Err(e) => panic!("running promtool: {e}"),
    };
    let t = text(&out);
    assert!(out.status.success(), "promtool {args:?} failed:\n{t}");
    t
}

/// Every `haven_…` metric name in `text` (identifier characters after the
/// prefix; a name inside a longer identifier is not one).
fn haven_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while let Some(off) = text[i..].find("haven_") {
        let start = i + off;
        let mut end = start + "haven_".len();
        while end < b.len() && ident(b[end]) {
            end += 1;
        }
        // `haven_*` in prose is not a name.
        if (start == 0 || !ident(b[start - 1])) && end > start + "haven_".len() {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// Metric names with samples in a Prometheus text exposition, plus the
/// base name of histograms and summaries (`x` for `x_bucket`/`x_sum`).
fn exported_names(expo: &str) -> BTreeSet<String> {
    let mut types = BTreeMap::new();
    let mut names = BTreeSet::new();
    for line in expo.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            if let (Some(n), Some(t)) = (w.next(), w.next()) {
                types.insert(n.to_owned(), t.to_owned());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    let bases: Vec<String> = names
        .iter()
        .filter_map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .filter(|b| {
                    types
                        .get(*b)
                        .is_some_and(|t| t == "histogram" || t == "summary")
                })
                .map(str::to_owned)
        })
        .collect();
    names.extend(bases);
    names
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(&ops("grafana/haven.json"))).expect("haven.json is JSON")
}

/// Every PromQL expression of the dashboard (targets and variable queries).
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    v.extend(
        d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["definition"].as_str().map(str::to_owned)),
    );
    v
}

/// Every name the rules, their unit tests and the dashboard use, with the
/// file that uses it.
fn used_names() -> BTreeMap<String, &'static str> {
    let mut used = BTreeMap::new();
    for (file, names) in [
        (
            "ops/prometheus/haven.rules.yml",
            haven_names(&read(&ops("prometheus/haven.rules.yml"))),
        ),
        (
            "ops/prometheus/haven.rules.test.yml",
            haven_names(&read(&ops("prometheus/haven.rules.test.yml"))),
        ),
        (
            "ops/grafana/haven.json",
            haven_names(&dashboard_exprs(&dashboard()).join("\n")),
        ),
    ] {
        for n in names {
            used.entry(n).or_insert(file);
        }
    }
    used
}

/// A label matcher of a selector: metric, label, operator, value.
type Matcher = (String, String, String, String);

/// The label matchers of every `haven_…{…}` selector in `text`.
fn selectors(text: &str) -> Vec<Matcher> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("haven_") {
        let after = &rest[start..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..end];
        rest = &after[end..];
        let Some(body) = rest.strip_prefix('{') else {
            continue;
        };
        // Up to the closing brace outside quotes; matchers split at commas
        // outside quotes.
        let (mut quoted, mut escaped, mut close) = (false, false, None);
        let mut parts = vec![String::new()];
        for (i, c) in body.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    close = Some(i);
                    break;
                }
                ',' if !quoted => {
                    parts.push(String::new());
                    continue;
                }
                _ => {}
            }
            if let Some(p) = parts.last_mut() {
                p.push(c);
            }
        }
        let Some(close) = close else { break };
        rest = &body[close..];
        for m in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let Some(op_at) = m.find(['=', '!']) else {
                continue;
            };
            let key = m[..op_at].trim();
            let tail = &m[op_at..];
            let op = ["=~", "!~", "!=", "="]
                .into_iter()
                .find(|o| tail.starts_with(o))
                .unwrap_or("=");
            let value = tail[op.len()..].trim().trim_matches('"');
            out.push((
                name.to_owned(),
                key.to_owned(),
                op.to_owned(),
                value.to_owned(),
            ));
        }
    }
    out
}

/// Label names and values per metric name in a text exposition.
fn exported_labels(expo: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in expo.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, _)) = rest.rsplit_once('}') else {
            continue;
        };
        let entry = out.entry(name.to_owned()).or_default();
        for kv in labels.split("\",") {
            if let Some((k, v)) = kv.split_once("=\"") {
                entry
                    .entry(k.trim_start_matches(',').to_owned())
                    .or_default()
                    .insert(v.trim_end_matches('"').to_owned());
            }
        }
    }
    out
}

/// Labels Prometheus adds to every target (prometheus.yml), not the
/// daemons.
const TARGET_LABELS: &[&str] = &["job", "instance", "cluster"];

/// Exported names that the metrics reference in docs/operations.md does
/// not list (a histogram's or summary's series count as its base name).
fn undocumented(exported: &BTreeSet<String>) -> Vec<String> {
    let docs = read(&repo().join("docs/operations.md"));
    let listed = haven_names(&docs);
    exported
        .iter()
        .filter(|n| n.starts_with("haven_") && !listed.contains(*n))
        .filter(|n| {
            !["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| n.strip_suffix(s))
                .any(|b| listed.contains(b) && exported.contains(b))
        })
        .cloned()
        .collect()
}

#[test]
fn promtool_checks_config_rules_and_their_tests() {
    let dir = ops("prometheus");
    let out = promtool(&["check", "config", "prometheus.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["check", "rules", "haven.rules.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", "haven.rules.test.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert exists, and its unit test covers it both ways: an
    // evaluation that expects it and one that expects silence.
    let rules = read(&dir.join("haven.rules.yml"));
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    for a in REQUIRED_ALERTS {
        assert!(alerts.contains(a), "alert {a} missing from haven.rules.yml");
    }
    let tests = read(&dir.join("haven.rules.test.yml"));
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut cases: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(name) = l.strip_prefix("alertname: ") {
            let next = lines[i + 1..]
                .iter()
                .find(|l| !l.is_empty() && !l.starts_with('#'));
            let e = cases.entry(name.trim()).or_default();
            match next {
                Some(&"exp_alerts: []") => e.1 += 1,
                Some(&"exp_alerts:") => e.0 += 1,
                other => panic!("alertname {name}: unexpected {other:?}"),
            }
        }
    }
    for a in &alerts {
        let (fire, silent) = cases.get(a).copied().unwrap_or_default();
        assert!(
            fire > 0 && silent > 0,
            "alert {a}: {fire} firing and {silent} silent test cases (need both)"
        );
    }
}

#[test]
fn dashboard_is_structurally_sane_and_its_promql_parses() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars: BTreeMap<&str, &str> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["type"].as_str()?)))
        .collect();
    assert_eq!(vars.get("datasource"), Some(&"datasource"), "{vars:?}");
    assert_eq!(vars.get("cluster"), Some(&"query"), "{vars:?}");

    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(u64, [u64; 4])> = Vec::new();
    let known = ["row", "timeseries", "stat", "state-timeline"];
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let ty = p["type"].as_str().expect("panel type");
        assert!(known.contains(&ty), "panel {id}: type {ty}");
        assert!(
            p["title"].as_str().is_some_and(|t| !t.is_empty()),
            "panel {id}: title"
        );
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("panel {id}: gridPos.{k}"))
        });
        assert!(w > 0 && h > 0 && x + w <= 24, "panel {id}: gridPos {g}");
        for (other, [ox, oy, ow, oh]) in &boxes {
            let apart = x + w <= *ox || ox + ow <= x || y + h <= *oy || oy + oh <= y;
            assert!(apart, "panels {id} and {other} overlap");
        }
        boxes.push((id, [x, y, w, h]));
        if ty == "row" {
            assert!(p.get("targets").is_none(), "row {id} with targets");
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"].as_str(),
            Some("${datasource}"),
            "panel {id}: datasource"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            let r = t["refId"].as_str().expect("refId");
            assert!(refs.insert(r), "panel {id}: refId {r} twice");
            assert_eq!(t["datasource"]["uid"].as_str(), Some("${datasource}"));
            let e = t["expr"].as_str().expect("expr");
            assert!(
                e.contains("$cluster"),
                "panel {id}/{r}: not filtered by $cluster: {e}"
            );
        }
    }

    // The PromQL of every target, as recording rules, through promtool's
    // parser (Grafana's variables replaced by what they expand to).
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs(&d).iter().enumerate() {
        // A variable query `label_values(selector, label)`: the selector.
        let e = match e
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
        {
            Some((selector, _)) => selector,
            None => e.as_str(),
        };
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$cluster", "c");
        let quoted = serde_json::to_string(&e).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard_expr_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("dash.rules.yml"), rules).expect("write");
    promtool(&["check", "rules", "dash.rules.yml"], dir.path());
}

#[test]
fn sysctl_files_name_real_keys() {
    for f in ["90-haven-node.conf", "90-haven-dispatcher.conf"] {
        let text = read(&ops(&format!("sysctl.d/{f}")));
        let mut n = 0;
        for l in text.lines().map(str::trim) {
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{f}: {l}"));
            let (k, v) = (k.trim(), v.trim());
            let path = Path::new("/proc/sys").join(k.replace('.', "/"));
            assert!(path.exists(), "{f}: {k} is not a sysctl of this kernel");
            assert!(v.parse::<u64>().is_ok(), "{f}: {k} = {v}");
            n += 1;
        }
        assert!(n >= 4, "{f}: {n} settings");
    }
    let node = read(&ops("sysctl.d/90-haven-node.conf"));
    for want in [
        "net.ipv4.conf.all.arp_ignore = 1",
        "net.ipv4.conf.all.arp_announce = 2",
        "net.ipv4.conf.all.rp_filter = 0",
        "net.ipv4.ip_forward = 1",
    ] {
        assert!(node.contains(want), "90-haven-node.conf lacks {want}");
    }
}

/// `systemd-analyze verify` of both units, ExecStart pointing at the built
/// binaries (verify checks that the command exists), and the capabilities
/// each daemon needs — no more.
#[test]
fn systemd_units_verify_and_limit_capabilities() {
    let units = [
        (
            "ha-node.service",
            "haven-ha-node",
            "ha-node",
            "CAP_NET_BIND_SERVICE CAP_NET_ADMIN CAP_NET_RAW",
        ),
        (
            "dispatcher.service",
            "haven-dispatcher",
            "dispatcher",
            "CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_NET_ADMIN",
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for (unit, package, bin, caps) in units {
        let text = read(&ops(&format!("systemd/{unit}")));
        for want in [
            format!("CapabilityBoundingSet={caps}\n"),
            format!("AmbientCapabilities={caps}\n"),
            "Restart=always\n".to_owned(),
            "NoNewPrivileges=yes\n".to_owned(),
            "ProtectSystem=strict\n".to_owned(),
            "ProtectHome=yes\n".to_owned(),
            "PrivateTmp=yes\n".to_owned(),
            "LimitNOFILE=".to_owned(),
            // No sd_notify in either daemon: Type=notify would time out.
            "Type=exec\n".to_owned(),
        ] {
            assert!(text.contains(&want), "{unit} lacks {want:?}");
        }
        let caps_lines = text
            .lines()
            .filter(|l| {
                l.starts_with("CapabilityBoundingSet=") || l.starts_with("AmbientCapabilities=")
            })
            .count();
        assert_eq!(caps_lines, 2, "{unit}: one bounding and one ambient set");
        let exe = workspace_binary(package, bin).expect("build the daemon");
        let local = text.replace(&format!("/usr/local/bin/{bin}"), &exe.display().to_string());
        let p = dir.path().join(unit);
        std::fs::write(&p, local).expect("write unit");
        paths.push(p);
    }
    match Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("systemd-analyze not installed: unit syntax not verified");
        }
        Err(e) => panic!("running systemd-analyze: {e}"),
        Ok(o) => {
            // verify reports unknown or malformed settings as warnings on
            // stderr with exit 0: any output is a failure.
            let t = text(&o);
            assert!(
                o.status.success() && t.trim().is_empty(),
                "systemd-analyze verify:\n{t}"
            );
        }
    }
}

fn lo(p: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, p))
}

fn realm(vip: SocketAddrV4) -> RealmSpec {
    RealmSpec {
        port: vip.port(),
        pool: Some("198.51.100.100-198.51.100.200".to_owned()),
        ..RealmSpec::new("outer", *vip.ip(), "198.51.100.0/24")
    }
    .with_home_address_sas(HOA, 8, SPI, KEY)
}

fn dispatcher_toml(
    vip: SocketAddrV4,
    address: Ipv4Addr,
    health: u16,
    metrics: u16,
    nodes: &[Ipv4Addr],
    vrrp_peer: Option<Ipv4Addr>,
) -> String {
    let mut t = format!(
        "[dispatcher]\nvip = \"{}\"\nport = {}\nmode = \"encap\"\nmanage_vip = false\n\
         address = \"{address}\"\nencap_port = {}\n\n[health]\nlisten_port = {health}\nrise = 1\n\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n",
        vip.ip(),
        vip.port(),
        free_port(),
    );
    for (i, n) in nodes.iter().enumerate() {
        t.push_str(&format!(
            "[[node]]\nid = {}\naddress = \"{n}\"\nencap_port = {}\n\n",
            i + 1,
            free_port()
        ));
    }
    if let Some(peer) = vrrp_peer {
        t.push_str(&format!(
            "[vrrp]\nvrid = 1\npriority = 100\ninterval_cs = 10\npeer = \"{peer}\"\n"
        ));
    }
    t
}

fn spawn_dispatcher(toml: &str, dir: &Path, metrics: u16, netns: Option<&str>) -> Process {
    let path = dir.join("dispatcher.toml");
    std::fs::write(&path, toml).expect("write the dispatcher config");
    let bin = workspace_binary("haven-dispatcher", "dispatcher").expect("build dispatcher");
    let p = Process::spawn(
        "dispatcher",
        Spec::new(bin)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info"),
        netns,
    )
    .expect("spawn dispatcher");
    await_metric(
        &format!("http://127.0.0.1:{metrics}/metrics"),
        netns,
        "haven_build_info",
        &[],
        |v| v == 1.0,
        BOUND,
    )
    .expect("dispatcher starts");
    p
}

fn sim(vip: SocketAddrV4, key: &[u8], base: Ipv4Addr, count: usize) -> SimConfig {
    let mut c = SimConfig::new(vip, key.to_vec());
    c.count = count;
    c.spi = SPI;
    c.home = HomeMode::Static { base };
    c.initial_timeout = Duration::from_millis(300);
    c.max_attempts = 4;
    c
}

#[test]
fn metric_names_used_are_exported() {
    let used = used_names();
    assert!(used.len() >= 20, "{used:?}");
    let dir = tempfile::tempdir().expect("tempdir");

    // The dispatcher (encap mode: no privileges) that nodes 1 and 2
    // advertise to.
    let node_src = [Ipv4Addr::new(127, 0, 0, 151), Ipv4Addr::new(127, 0, 0, 152)];
    let health = free_port();
    let d_metrics = free_port();
    let d_vip = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 154), free_port());
    let _disp = spawn_dispatcher(
        &dispatcher_toml(d_vip, *d_vip.ip(), health, d_metrics, &node_src, None),
        dir.path(),
        d_metrics,
        None,
    );
    let d_url = format!("http://127.0.0.1:{d_metrics}/metrics");

    // Raft: voters 1 and 2 run, voter 3 never starts (a quorum of two that
    // cannot reach its third peer: haven_raft_unreachable_total).
    let raft: Vec<SocketAddr> = (0..3).map(|_| lo(free_port())).collect();
    let peers: Vec<(u64, SocketAddr)> = (1..=3).zip(raft.iter().copied()).collect();
    let specs: Vec<(NodeSpec, SocketAddrV4)> = (1..=2u64)
        .map(|id| {
            let vip = SocketAddrV4::new(node_src[id as usize - 1], free_port());
            let data = dir.path().join(format!("raft-{id}"));
            let spec = NodeSpec::new(id, lo(free_port()), lo(free_port()))
                .realm(realm(vip))
                .cluster(ClusterSpec::raft(
                    "ops",
                    raft[id as usize - 1],
                    &data,
                    peers.clone(),
                ))
                .dispatch(DispatchSpec::l2(
                    *vip.ip(),
                    // The dispatcher's own address: the advert checksum
                    // covers it (pseudo-header, RFC 5798 § 5.2.8).
                    vec![SocketAddrV4::new(*d_vip.ip(), health)],
                    100,
                ));
            (spec, vip)
        })
        .collect();
    let _nodes: Vec<Process> = specs
        .iter()
        .map(|(s, _)| start_node(s, dir.path(), None).expect("start ha-node"))
        .collect();

    // Pair mode: a lone node whose peer never answers becomes primary after
    // Master_Down_Interval (0.36 s at 10 cs) and publishes haven_pair_*.
    let pair_vip = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 153), free_port());
    let pair_spec = NodeSpec::new(7, lo(free_port()), lo(free_port()))
        .realm(realm(pair_vip))
        .pair(PairSpec {
            advert_interval_cs: 10,
            ..PairSpec::new(
                // Two addresses: a peer on the node's own address is refused.
                SocketAddrV4::new(*pair_vip.ip(), free_port()),
                SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 155), free_port()),
                b"ops-test pair key 0123",
            )
        });
    let _pair = start_node(&pair_spec, dir.path(), None).expect("start the pair node");
    await_metric(
        &pair_spec.metrics_url(),
        None,
        "haven_pair_role",
        &[],
        |v| v == 1.0,
        BOUND,
    )
    .expect("the lone pair node becomes primary");

    // A leader, and the events that create labelled counters there.
    let mut leader = None;
    wait_for("a Raft leader", BOUND, || {
        leader = specs.iter().find(|(s, _)| {
            scrape(&s.metrics_url(), None)
                .ok()
                .and_then(|t| metric(&t, "haven_raft_is_leader", &[]))
                == Some(1.0)
        });
        leader.is_some()
    })
    .expect("leader elected");
    let (lspec, vip) = leader.expect("leader");
    let url = lspec.metrics_url();

    let r = mnsim::run(&sim(*vip, KEY, HOA, 3)).expect("mnsim");
    assert_eq!(r.summary.accepted, 3, "{}", r.summary.table());
    // One binding with a 1 s lifetime, left to expire.
    let mut c = sim(*vip, KEY, Ipv4Addr::from(u32::from(HOA) + 5), 1);
    c.lifetime = 1;
    c.deregister = false;
    let r = mnsim::run(&c).expect("mnsim");
    assert_eq!(r.summary.accepted, 1, "{}", r.summary.table());
    // A wrong key: 131, unsigned (the MN discards it and gives up).
    let mut c = sim(*vip, b"not the key", HOA, 1);
    c.max_attempts = 1;
    let _ = mnsim::run(&c).expect("mnsim");
    // Not a registration request: dropped.
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.send_to(&[99, 0, 0, 0], *vip).expect("send");

    for (name, labels) in [
        ("haven_registrations_total", vec![("result", "accepted")]),
        ("haven_registrations_total", vec![("code", "131")]),
        ("haven_registration_drops_total", vec![]),
        ("haven_binding_expiries_total", vec![]),
        ("haven_raft_unreachable_total", vec![]),
    ] {
        await_metric(&url, None, name, &labels, |v| v >= 1.0, BOUND)
            .unwrap_or_else(|e| panic!("{name}{labels:?} on the leader: {e}"));
    }
    for node in ["1", "2"] {
        await_metric(
            &d_url,
            None,
            "haven_dispatcher_node_up",
            &[("node", node)],
            |v| v == 1.0,
            BOUND,
        )
        .unwrap_or_else(|e| panic!("the dispatcher sees node {node} Up: {e}"));
    }

    let mut exported = BTreeSet::new();
    let mut labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for u in [url.clone(), pair_spec.metrics_url(), d_url.clone()]
        .into_iter()
        .chain(specs.iter().map(|(s, _)| s.metrics_url()))
    {
        let expo = scrape(&u, None).expect("scrape");
        exported.extend(exported_names(&expo));
        for (n, ls) in exported_labels(&expo) {
            let e = labels.entry(n).or_default();
            for (k, vs) in ls {
                e.entry(k).or_default().extend(vs);
            }
        }
    }
    // Every label a selector names is one the metric carries; an exact
    // `label="value"` in the rules and the dashboard names a value seen
    // (the unit tests' series use made-up values: only their label names
    // are checked).
    let mut wrong = Vec::new();
    let rules = read(&ops("prometheus/haven.rules.yml"));
    let dash = dashboard_exprs(&dashboard()).join("\n");
    let tests = read(&ops("prometheus/haven.rules.test.yml"));
    for (text, values) in [(&rules, true), (&dash, true), (&tests, false)] {
        for (name, key, op, value) in selectors(text) {
            if TARGET_LABELS.contains(&key.as_str()) || ROOT_ONLY.contains(&name.as_str()) {
                continue;
            }
            let seen = labels.get(&name).and_then(|l| l.get(&key));
            match seen {
                None => wrong.push(format!("{name}{{{key}{op}\"{value}\"}}: no label {key}")),
                Some(vs) if values && op == "=" && !vs.contains(&value) => {
                    wrong.push(format!("{name}{{{key}=\"{value}\"}}: seen only {vs:?}"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "selectors that match nothing real: {wrong:#?}"
    );
    let missing: Vec<String> = used
        .iter()
        .filter(|(n, _)| !ROOT_ONLY.contains(&n.as_str()) && !exported.contains(*n))
        .map(|(n, f)| format!("{n} (used in {f})"))
        .collect();
    assert!(
        missing.is_empty(),
        "used but not exported by the daemons: {missing:#?}\nexported: {exported:#?}"
    );
    for n in ROOT_ONLY {
        assert!(used.contains_key(*n), "{n} in ROOT_ONLY but used nowhere");
    }
    let undoc = undocumented(&exported);
    assert!(
        undoc.is_empty(),
        "exported but missing from the metrics reference in docs/operations.md: {undoc:#?}"
    );
}

#[test]
fn root_only_metric_names_are_exported() {
    if topo::skip_without_root() {
        return;
    }
    let lab = Topology::builder()
        .host("ops")
        .expire_after(Duration::from_secs(120))
        .build()
        .expect("build the namespace");
    let ns = lab.ns_name("ops").expect("ns").to_owned();
    let dir = tempfile::tempdir().expect("tempdir");

    // A node with the data plane (TUN device, raw IP-in-IP socket).
    let vip = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 434);
    let spec = NodeSpec::new(1, lo(4340), lo(9434)).realm(realm(vip));
    let config = dir.path().join("node-1.toml");
    let toml = format!("{}\n[dataplane]\nenabled = true\n", spec.toml());
    std::fs::write(&config, toml).expect("write");
    let bin = workspace_binary("haven-ha-node", "ha-node").expect("ha-node binary");
    let _node = Process::spawn(
        "ha-node-dataplane",
        Spec::new(bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info"),
        Some(&ns),
    )
    .expect("spawn ha-node");
    let url = spec.metrics_url();
    await_metric(
        &url,
        Some(&ns),
        "haven_dataplane_packets_total",
        &[],
        |_| true,
        BOUND,
    )
    .expect("data plane metrics");

    // A dispatcher with VRRP whose peer never answers: Master.
    let d_vip = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 4434);
    let toml = dispatcher_toml(
        d_vip,
        Ipv4Addr::LOCALHOST,
        4341,
        9435,
        &[Ipv4Addr::new(127, 0, 0, 2)],
        Some(Ipv4Addr::new(127, 0, 0, 250)),
    );
    let _disp = spawn_dispatcher(&toml, dir.path(), 9435, Some(&ns));
    let d_url = "http://127.0.0.1:9435/metrics";
    await_metric(
        d_url,
        Some(&ns),
        "haven_dispatcher_vrrp_transitions_total",
        &[("to", "master")],
        |v| v >= 1.0,
        BOUND,
    )
    .expect("the lone dispatcher becomes VRRP Master");

    let mut exported = exported_names(&scrape(&url, Some(&ns)).expect("scrape node"));
    exported.extend(exported_names(
        &scrape(d_url, Some(&ns)).expect("scrape dispatcher"),
    ));
    for n in ROOT_ONLY {
        assert!(exported.contains(*n), "{n} not exported: {exported:#?}");
    }
    let undoc = undocumented(&exported);
    assert!(
        undoc.is_empty(),
        "exported but missing from the metrics reference in docs/operations.md: {undoc:#?}"
    );
}

#[test]
fn name_extraction_and_exposition_parsing() {
    let n = haven_names("rate(haven_a_total[5m]) / x_haven_b + haven_c{x=\"haven_d\"} haven_*");
    assert_eq!(
        n.into_iter().collect::<Vec<_>>(),
        ["haven_a_total", "haven_c", "haven_d"]
    );
    let e = exported_names(
        "# TYPE haven_h histogram\nhaven_h_bucket{le=\"1\"} 1\nhaven_h_sum 1\nhaven_h_count 1\n\
         # TYPE haven_c counter\nhaven_c{a=\"b\"} 3\nhaven_g 1\nhaven_x_count 2\n",
    );
    for want in [
        "haven_h",
        "haven_h_bucket",
        "haven_c",
        "haven_g",
        "haven_x_count",
    ] {
        assert!(e.contains(want), "{want}: {e:?}");
    }
    assert!(!e.contains("haven_x"), "a _count without a histogram TYPE");
    let m =
        selectors("rate(haven_a{x=\"1\", y!~\"a,}b\"}[5m]) haven_b haven_c{z=~\"q\"} {haven_d}");
    let m: Vec<String> = m
        .iter()
        .map(|(n, k, o, v)| format!("{n} {k}{o}{v}"))
        .collect();
    assert_eq!(m, ["haven_a x=1", "haven_a y!~a,}b", "haven_c z=~q"]);
    let l = exported_labels("# x\nhaven_a{k=\"v\",j=\"w\"} 1\nhaven_a{k=\"u\"} 2\nhaven_b 3\n");
    assert_eq!(l["haven_a"]["k"].len(), 2);
    assert!(l["haven_a"]["j"].contains("w"));
    assert!(!l.contains_key("haven_b"));
}

// ------------------------------------------- example configurations ----

/// One line of an example TOML file as the checks below see it.
#[derive(Debug, Clone, PartialEq)]
enum TomlLine {
    /// `[name]` or `[[name]]` (`commented`: written after a `#`).
    Section { name: String, commented: bool },
    /// `key = value` in `section` (the value with any trailing comment cut).
    Key {
        section: String,
        key: String,
        value: String,
        commented: bool,
    },
}

/// A TOML key: letters, digits, `_`, `-`.
fn toml_ident(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// The value of `key = value` up to a trailing comment, if it looks like a
/// TOML value (a string, an array, a boolean or a number): prose such as
/// `# Master_Down_Interval = 3 x interval` is not a commented-out key.
fn toml_value(v: &str) -> Option<String> {
    let v = v.trim();
    if let Some(rest) = v.strip_prefix('"') {
        let end = rest.find('"')?;
        let after = rest[end + 1..].trim();
        return (after.is_empty() || after.starts_with('#')).then(|| v[..end + 2].to_owned());
    }
    if v.starts_with('[') {
        let end = v.rfind(']')?;
        let after = v[end + 1..].trim();
        return (after.is_empty() || after.starts_with('#')).then(|| v[..=end].to_owned());
    }
    let token = v.split_whitespace().next()?;
    let after = v[token.len()..].trim();
    let scalar = token == "true" || token == "false" || token.parse::<f64>().is_ok();
    (scalar && (after.is_empty() || after.starts_with('#'))).then(|| token.to_owned())
}

/// Sections and keys of an example file, commented-out ones included (the
/// examples show optional settings as `# key = value`).
fn toml_lines(text: &str) -> Vec<TomlLine> {
    let mut out = Vec::new();
    let mut section = String::new();
    for raw in text.lines() {
        let mut line = raw.trim();
        let mut commented = false;
        while let Some(rest) = line.strip_prefix('#') {
            commented = true;
            line = rest.trim();
        }
        let header = line
            .split('#')
            .next()
            .unwrap_or("")
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if line.starts_with('[')
            && !header.is_empty()
            && header.split('.').all(toml_ident)
            && line.split('#').next().unwrap_or("").trim().ends_with(']')
        {
            section = header.to_owned();
            out.push(TomlLine::Section {
                name: section.clone(),
                commented,
            });
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let key = k.trim();
        if !toml_ident(key) {
            continue;
        }
        if let Some(value) = toml_value(v) {
            out.push(TomlLine::Key {
                section: section.clone(),
                key: key.to_owned(),
                value,
                commented,
            });
        }
    }
    out
}

/// The top-level `ops/*.toml` files: the daemons' example configurations.
fn example_configs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("ops"))
        .expect("read ops/")
        .map(|e| e.expect("ops/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// Hex of `n` random octets (the test's own throw-away keys).
fn random_hex(n: usize) -> String {
    use std::io::Read as _;
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    hex::encode(b)
}

/// The first usable address of `prefix` ("a.b.c.d/len") plus `offset`.
fn host_in(prefix: &str, offset: u32) -> Ipv4Addr {
    let (a, _) = prefix.split_once('/').expect("a prefix");
    let a: Ipv4Addr = a.parse().expect("a prefix address");
    Ipv4Addr::from(u32::from(a) + offset)
}

/// Writes, next to a copy of an example in `dir`, every secret file it
/// names (uncommented `keys_file`, `key_file`, `token_file`,
/// `read_token_file`, and the `ca`/`cert`/`key` of a `.tls` section), with
/// keys made now, mode 0600. Returns the files written, and whether each
/// is secret (a CA or a certificate is not: no mode is required of it).
fn write_secret_files(example: &Path, lines: &[TomlLine], dir: &Path) -> Vec<(PathBuf, bool)> {
    let mut written = Vec::new();
    // A realm's keys file holds SAs its validation accepts: an NAI for a
    // pool realm, a fixed home address inside the prefix otherwise.
    let mut realm: BTreeMap<String, String> = BTreeMap::new();
    let mut write = |rel: &str, content: String, secret: bool| {
        assert!(
            Path::new(rel).is_relative(),
            "{}: {rel} must be relative to the config file, so the example checks anywhere",
            example.display()
        );
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write secret file");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        written.push((p, secret));
    };
    for l in lines {
        match l {
            TomlLine::Section {
                name,
                commented: false,
            } if name == "realm" => realm.clear(),
            TomlLine::Key {
                section,
                key,
                value,
                commented: false,
            } => {
                let rel = value.trim_matches('"');
                if section == "realm" {
                    realm.insert(key.clone(), rel.to_owned());
                }
                match (section.as_str(), key.as_str()) {
                    ("realm", "keys_file") => {
                        let who = if realm.contains_key("pool") {
                            "nai = \"check-config@example.net\"".to_owned()
                        } else {
                            let prefix = realm.get("home_prefix").expect("home_prefix first");
                            format!("home_address = \"{}\"", host_in(prefix, 10))
                        };
                        write(
                            rel,
                            format!(
                                "[[sa]]\n{who}\nspi = 256\nalgorithm = \"hmac-md5\"\nkey_hex = \"{}\"\n",
                                random_hex(16)
                            ),
                            true,
                        );
                    }
                    (_, "key_file" | "token_file" | "read_token_file") => {
                        write(rel, format!("{}\n", random_hex(32)), true);
                    }
                    // `--check-config` reads the PEM files (and checks the
                    // key's mode) but leaves parsing them to the TLS stack
                    // at start; ha-node/tests/security.rs runs real ones.
                    (s, k @ ("ca" | "cert" | "key")) if s.ends_with(".tls") => {
                        write(
                            rel,
                            format!(
                                "-----BEGIN TEST PLACEHOLDER-----\n{}\n-----END TEST PLACEHOLDER-----\n",
                                random_hex(24)
                            ),
                            k == "key",
                        );
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    written
}

/// `--check-config` of `bin` on `config`.
fn check_config(package: &str, bin: &str, config: &Path) -> Output {
    let exe = workspace_binary(package, bin).expect("build the daemon");
    Command::new(exe)
        .arg("--config")
        .arg(config)
        .arg("--check-config")
        .output()
        .expect("run --check-config")
}

/// Every example configuration in `ops/` passes its daemon's
/// `--check-config` (exit 0) as shipped, with the secret files it names
/// made by the test next to it; the per-deployment examples are what their
/// names say (replication mode, l2 dispatch); and a secret file others can
/// read makes the check fail (exit 64), so the files named are really read.
#[test]
fn every_example_config_passes_check_config() {
    let files = example_configs();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for want in [
        "dispatcher.example.toml",
        "ha-node.example.toml",
        "ha-node.inner.example.toml",
        "ha-node.outer.example.toml",
        "ha-node.pair.example.toml",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "ops/{want} missing: {names:?}"
        );
    }
    for (path, name) in files.iter().zip(&names) {
        let (package, bin) = if name.starts_with("ha-node") {
            ("haven-ha-node", "ha-node")
        } else if name.starts_with("dispatcher") {
            ("haven-dispatcher", "dispatcher")
        } else {
            panic!("ops/{name}: not a ha-node or dispatcher configuration");
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join(name);
        std::fs::copy(path, &copy).expect("copy the example");
        let lines = toml_lines(&read(path));
        let secrets = write_secret_files(path, &lines, dir.path());
        let out = check_config(package, bin, &copy);
        let t = text(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "ops/{name} --check-config:\n{t}"
        );
        assert!(t.contains(": ok"), "ops/{name}: {t}");
        let replication = match name.as_str() {
            "ha-node.example.toml" => Some("replication: local"),
            "ha-node.inner.example.toml" | "ha-node.outer.example.toml" => {
                Some("replication: raft, dispatch L2 to ")
            }
            "ha-node.pair.example.toml" => Some("replication: pair, dispatch L2 to "),
            _ => None,
        };
        if let Some(r) = replication {
            assert!(t.contains(r), "ops/{name}: want {r:?} in\n{t}");
        }
        if name.contains(".inner.") || name.contains(".outer.") || name.contains(".pair.") {
            assert!(
                secrets.len() >= 2,
                "ops/{name}: a deployment example keeps its keys in files: {secrets:?}"
            );
        }
        // Control: each secret file readable by others must be refused.
        for (first, _) in secrets.iter().filter(|(_, secret)| *secret) {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(first, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let out = check_config(package, bin, &copy);
            let t = text(&out);
            assert_eq!(
                out.status.code(),
                Some(64),
                "ops/{name} with {} mode 0644 must be refused:\n{t}",
                first.display()
            );
            assert!(t.contains("0644"), "ops/{name}: {t}");
            std::fs::set_permissions(first, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }
}

/// Whether `a` may appear in the tree (rule: documentation and benchmarking
/// ranges, loopback, the wildcard, and the VRRP group 224.0.0.18).
fn allowed_address(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_loopback()
        || a.is_unspecified()
        || a == Ipv4Addr::new(224, 0, 0, 18)
        || matches!(o, [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _])
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
}

/// Every dotted-quad IPv4 address in `text`.
fn ipv4_literals(text: &str) -> Vec<Ipv4Addr> {
    let b = text.as_bytes();
    let part = |c: u8| c.is_ascii_digit() || c == b'.';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && (part(b[i - 1]) || b[i - 1].is_ascii_alphabetic())) {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < b.len() && part(b[end]) {
            end += 1;
        }
        let s = text[i..end].trim_end_matches('.');
        if s.split('.').count() == 4 {
            if let Ok(a) = s.parse::<Ipv4Addr>() {
                out.push(a);
            }
        }
        i = end;
    }
    out
}

/// The example configurations use only the documentation and benchmarking
/// ranges, and the per-deployment ones write no key: every key is a file
/// reference.
#[test]
fn example_configs_hold_no_keys_and_only_documentation_addresses() {
    assert_eq!(
        ipv4_literals("a 192.0.2.1:434, 198.51.100.7/24 v1.2.3 1.2.3.4.5 x198.18.0.1 203.0.113.9."),
        [
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(198, 51, 100, 7),
            Ipv4Addr::new(203, 0, 113, 9)
        ]
    );
    assert!(!allowed_address(Ipv4Addr::new(10, 0, 0, 1)));
    assert!(!allowed_address(Ipv4Addr::new(198, 20, 0, 1)));
    for path in example_configs() {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = read(&path);
        let addrs = ipv4_literals(&text);
        assert!(addrs.len() >= 3, "ops/{name}: {addrs:?}");
        let bad: Vec<_> = addrs.iter().filter(|a| !allowed_address(**a)).collect();
        assert!(
            bad.is_empty(),
            "ops/{name} uses addresses outside the allowed ranges: {bad:?}"
        );
        if !(name.contains(".inner.") || name.contains(".outer.") || name.contains(".pair.")) {
            continue;
        }
        for l in toml_lines(&text) {
            if let TomlLine::Key {
                section,
                key,
                commented: false,
                ..
            } = l
            {
                assert!(
                    key != "key_hex",
                    "ops/{name}: [{section}] {key} written inline; use a file"
                );
            }
        }
    }
}

/// Every section and key the example files show, and every field of the
/// configuration structs the daemons deserialize, is named in
/// docs/configuration.md.
#[test]
fn configuration_reference_names_every_key() {
    let doc = read(&repo().join("docs/configuration.md"));
    let named = |s: &str| doc.contains(&format!("`{s}`"));
    let mut missing = BTreeSet::new();
    for path in example_configs() {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let lines = toml_lines(&read(&path));
        assert!(lines.len() >= 10, "ops/{name}: {lines:?}");
        for l in lines {
            match l {
                TomlLine::Section { name: s, .. } => {
                    if !(named(&format!("[{s}]")) || named(&format!("[[{s}]]"))) {
                        missing.insert(format!("ops/{name}: section [{s}]"));
                    }
                }
                TomlLine::Key { section, key, .. } => {
                    if !named(&key) {
                        missing.insert(format!("ops/{name}: [{section}] {key}"));
                    }
                }
            }
        }
    }
    let sources = [
        "ha-node/src/config.rs",
        "ha-node/src/advertise.rs",
        "ha-node/src/dataplane/mod.rs",
        "dispatcher/src/config.rs",
    ];
    let mut fields = 0;
    for src in sources {
        for f in deserialized_fields(&read(&repo().join(src))) {
            fields += 1;
            // A table field is named by its section: `[[realm.sa]]`.
            if !(named(&f) || doc.contains(&format!(".{f}]")) || doc.contains(&format!("[{f}]"))) {
                missing.insert(format!("{src}: field {f}"));
            }
        }
    }
    assert!(fields >= 80, "found only {fields} configuration fields");
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:#?}"
    );
}

/// The TOML names of the fields of every `pub struct` deriving
/// `Deserialize` in `src` (not `#[serde(skip)]`; `rename` honoured; structs
/// deserialized through `try_from` a string have no fields of their own).
fn deserialized_fields(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut derive = false;
    let mut via_string = false;
    let mut in_struct = false;
    let mut skip = false;
    let mut rename: Option<String> = None;
    for line in src.lines().map(str::trim) {
        if line.starts_with("#[derive(") {
            derive = line.contains("Deserialize");
            via_string = false;
            continue;
        }
        if line.starts_with("#[serde(") {
            if !in_struct {
                via_string |= line.contains("try_from");
                continue;
            }
            skip |= line.contains("skip");
            if let Some(r) = line.split("rename = \"").nth(1) {
                rename = r.split('"').next().map(str::to_owned);
            }
            continue;
        }
        if line.starts_with("pub struct ") && line.ends_with('{') {
            in_struct = derive && !via_string;
            derive = false;
            continue;
        }
        // Any other item ends the attributes seen so far.
        if [
            "pub enum ",
            "enum ",
            "struct ",
            "pub struct ",
            "impl",
            "fn ",
            "pub fn ",
        ]
        .iter()
        .any(|p| line.starts_with(p))
        {
            derive = false;
            via_string = false;
        }
        if in_struct && line == "}" {
            in_struct = false;
            continue;
        }
        if in_struct {
            if let Some(rest) = line.strip_prefix("pub ") {
                if let Some((name, _)) = rest.split_once(':') {
                    if !skip && toml_ident(name) {
                        out.push(rename.take().unwrap_or_else(|| name.to_owned()));
                    }
                    skip = false;
                    rename = None;
                }
            }
        }
    }
    out
}

#[test]
fn example_file_scanner_reads_sections_keys_and_struct_fields() {
    let l = toml_lines(
        "[a]\nx = 1 # c\n# y = \"v\"\n# Master_Down_Interval = 3 x interval\n\
         # # z = [\"q\"]\n# [a.tls]\n# ca = \"f\"\n# [\"198.19.0.0/16\"] for\n[[b]]\nw = true\n",
    );
    let keys: Vec<String> = l
        .iter()
        .filter_map(|t| match t {
            TomlLine::Key {
                section,
                key,
                commented,
                ..
            } => Some(format!(
                "{section}.{key}{}",
                if *commented { "#" } else { "" }
            )),
            TomlLine::Section { .. } => None,
        })
        .collect();
    assert_eq!(keys, ["a.x", "a.y#", "a.z#", "a.tls.ca#", "b.w"]);
    let f = deserialized_fields(
        "#[derive(Debug, Deserialize)]\n#[serde(default)]\npub struct A {\n    /// d\n    pub a: u8,\n\
         #[serde(skip)]\n    pub b: u8,\n    #[serde(default, rename = \"node\")]\n    pub nodes: u8,\n}\n\
         #[derive(Deserialize)]\n#[serde(try_from = \"String\")]\npub struct P {\n    pub addr: u8,\n}\n\
         #[derive(Debug)]\npub struct Q {\n    pub q: u8,\n}\n",
    );
    assert_eq!(f, ["a", "node"]);
}

/// A `[[bin]]` with `test = false` is not built as a test harness by the
/// suite's `cargo test --all-targets` (a compile and link saved per
/// binary), so a `#[test]` in it would silently never run.
#[test]
fn binaries_without_a_test_harness_have_no_tests() {
    let mut checked = 0;
    for krate in ["ha-node", "dispatcher", "cluster-tests"] {
        let manifest = read(&repo().join(krate).join("Cargo.toml"));
        for entry in manifest.split("[[bin]]").skip(1) {
            let entry = entry.split("\n[").next().unwrap_or_default();
            let field = |key: &str| {
                entry.lines().find_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
                })
            };
            if field("test").as_deref() != Some("false") {
                continue;
            }
            let path = field("path").expect("[[bin]] with test = false names its path");
            let source = read(&repo().join(krate).join(&path));
            assert!(
                !source.contains("#[test]"),
                "{krate}/{path} has #[test]s but test = false in {krate}/Cargo.toml: they never run"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} binaries checked");
}
