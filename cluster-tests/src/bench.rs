//! What every benchmark program shares (DESIGN.md § 9): release builds of
//! the daemons under test, JSON-lines output under `target/bench-results/`
//! with the command line, git revision and core count, and percentiles.
//!
//! Benchmarks are programs, not timed tests: they print a readable table
//! and append one JSON object per figure, so figures from different runs
//! and machines can be compared later without parsing tables.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::mn::{Event, MnConfig, MobileNode, State};
use crate::mnsim::unix_now;

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

/// The release build of `bin` from `package`, built now if needed: a debug
/// build would measure the compiler, not haven. `HAVEN_<BIN>_BIN` (upper
/// case, `-` as `_`) names a prebuilt binary instead.
///
/// # Errors
/// When cargo fails or the binary is not where cargo puts it.
pub fn release_binary(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let var = format!("HAVEN_{}_BIN", bin.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-q", "--release", "-p", package, "--bin", bin])
        .current_dir(workspace())
        .status()?;
    anyhow::ensure!(st.success(), "cargo build --release -p {package} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    let path = target.join("release").join(bin);
    anyhow::ensure!(path.exists(), "{} not built", path.display());
    Ok(path)
}

/// Appends figures to `target/bench-results/<name>.jsonl`.
#[derive(Debug)]
pub struct Recorder {
    out: File,
    path: PathBuf,
    command: String,
    git_rev: String,
    cores: usize,
}

impl Recorder {
    /// Opens (creates) the results file of benchmark `name`.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(name: &str) -> io::Result<Self> {
        let dir = workspace().join("target").join("bench-results");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.jsonl"));
        let out = OpenOptions::new().create(true).append(true).open(&path)?;
        let git_rev = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(workspace())
            .stderr(Stdio::null())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Ok(Self {
            out,
            path,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            git_rev,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// The machine's core count, as recorded.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Where the figures go.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// One figure; `extra` is merged into the object (an object, or null).
    ///
    /// # Errors
    /// When the line cannot be written.
    pub fn figure(
        &mut self,
        figure: &str,
        value: f64,
        unit: &str,
        extra: serde_json::Value,
    ) -> io::Result<()> {
        let mut line = serde_json::json!({
            "figure": figure,
            "value": value,
            "unit": unit,
            "command": self.command,
            "git_rev": self.git_rev,
            "cores": self.cores,
        });
        if let (Some(o), serde_json::Value::Object(e)) = (line.as_object_mut(), extra) {
            o.extend(e);
        }
        writeln!(self.out, "{line}")
    }
}

/// The `q`-quantile (0..=1) of `sorted` (ascending), nearest rank; zero for
/// an empty slice.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
        .unwrap_or_default()
}

/// Resident set size of process `pid` in bytes (`VmRSS`), if readable.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The anonymous part of [`rss_bytes`] (`RssAnon`: heap, stacks,
/// anonymous mappings, i.e. what the allocator holds; `VmRSS` adds the
/// mapped files, the binary itself, and shared memory).
pub fn rss_anon_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "RssAnon:")
}

/// A `kB` field of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The log filter the benchmarks give their `ha-node`s (`RUST_LOG`):
/// `warn`, or `HAVEN_BENCH_NODE_LOG` (e.g. `warn,haven_ha_node::raft=debug`
/// while investigating a run).
pub fn node_log_level() -> String {
    std::env::var("HAVEN_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".to_owned())
}

/// A closed-loop registration load: mobile-node cores over a few shared
/// sockets with `window` requests in flight, spread round-robin over
/// `targets` (as the dispatcher spreads them). Replies are matched to their
/// mobile node by the home address field (RFC 5944 § 3.4: octets 4..8 of a
/// Registration Reply), so mobile node `i` must have home address
/// `home_base + i`.
#[derive(Debug)]
pub struct ClosedLoop {
    mns: Vec<MobileNode>,
    socks: Vec<UdpSocket>,
    home_base: u32,
    /// Requests in flight.
    pub window: usize,
}

/// What one pass of a [`ClosedLoop`] saw.
#[derive(Debug, Default)]
pub struct LoopPhase {
    /// Wall time of the pass.
    pub wall: Duration,
    /// Latency of every accepted registration (unsorted).
    pub latencies: Vec<Duration>,
    /// Denied registrations.
    pub denied: usize,
    /// Registrations given up after the last retransmission.
    pub gave_up: usize,
    /// Retransmissions.
    pub retransmits: usize,
}

impl LoopPhase {
    /// Accepted registrations per second of wall time.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

impl ClosedLoop {
    /// `count` mobile nodes with home addresses `home_base + i`, one SA
    /// (`spi`, `key`), lifetime `lifetime` s, co-located care-of address
    /// `care_of`, sending from `sockets` sockets bound to `care_of` (in the
    /// network namespace of the calling thread).
    ///
    /// # Errors
    /// When a socket cannot be bound.
    pub fn new(
        targets: &[SocketAddrV4],
        home_base: Ipv4Addr,
        count: usize,
        sockets: usize,
        (spi, key): (u32, &[u8]),
        lifetime: u16,
        care_of: Ipv4Addr,
    ) -> io::Result<Self> {
        let base = u32::from(home_base);
        let mns = (0..count)
            .filter_map(|i| {
                let t = targets.get(i % targets.len().max(1))?;
                let mut c = MnConfig::new(
                    Ipv4Addr::from(base.wrapping_add(i as u32)),
                    *t.ip(),
                    care_of,
                    spi,
                    key,
                );
                c.home_agent_port = t.port();
                c.lifetime = lifetime;
                c.max_attempts = 8;
                Some(MobileNode::new(c))
            })
            .collect();
        let socks = (0..sockets.max(1))
            .map(|_| {
                let s = UdpSocket::bind((care_of, 0))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            mns,
            socks,
            home_base: base,
            window: 256,
        })
    }

    fn flush(&mut self, i: usize, ph: &mut LoopPhase, inflight: &mut usize) {
        let Some(mn) = self.mns.get_mut(i) else {
            return;
        };
        while let Some((to, bytes)) = mn.poll_transmit() {
            if let Some(s) = self.socks.get(i % self.socks.len()) {
                // A full socket buffer is a loss the retransmission covers.
                let _ = s.send_to(&bytes, to);
            }
        }
        while let Some(ev) = mn.poll_event() {
            match ev {
                Event::Sent { attempt, .. } if attempt > 1 => ph.retransmits += 1,
                Event::Accepted { latency, .. } => {
                    ph.latencies.push(latency);
                    *inflight = inflight.saturating_sub(1);
                }
                Event::Denied { .. } => {
                    ph.denied += 1;
                    *inflight = inflight.saturating_sub(1);
                }
                Event::GaveUp => {
                    ph.gave_up += 1;
                    *inflight = inflight.saturating_sub(1);
                }
                _ => {}
            }
        }
    }

    /// Every mobile node (re-)registers once; returns what was seen.
    pub fn phase(&mut self) -> LoopPhase {
        let mut ph = LoopPhase::default();
        let total = self.mns.len();
        let (mut next, mut inflight) = (0usize, 0usize);
        let mut waiting: Vec<usize> = Vec::with_capacity(self.window);
        let mut buf = vec![0u8; 2048];
        let mut fds: Vec<libc::pollfd> = self
            .socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let started = Instant::now();
        let mut last_scan = Instant::now();
        while next < total || inflight > 0 {
            while inflight < self.window && next < total {
                if let Some(mn) = self.mns.get_mut(next) {
                    mn.register(unix_now());
                }
                inflight += 1;
                waiting.push(next);
                self.flush(next, &mut ph, &mut inflight);
                next += 1;
            }
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 5) };
            if n > 0 {
                for k in 0..self.socks.len() {
                    if fds.get(k).is_none_or(|f| f.revents == 0) {
                        continue;
                    }
                    while let Some(Ok((len, from))) =
                        self.socks.get(k).map(|s| s.recv_from(&mut buf))
                    {
                        let (Some(hoa), SocketAddr::V4(from)) = (buf.get(4..8), from) else {
                            continue;
                        };
                        let hoa = u32::from_be_bytes([hoa[0], hoa[1], hoa[2], hoa[3]]);
                        let i = hoa.wrapping_sub(self.home_base) as usize;
                        let Some(mn) = self.mns.get_mut(i) else {
                            continue;
                        };
                        let _ = mn.handle(unix_now(), from, buf.get(..len).unwrap_or_default());
                        self.flush(i, &mut ph, &mut inflight);
                    }
                }
            }
            if last_scan.elapsed() >= Duration::from_millis(50) {
                last_scan = Instant::now();
                let now = unix_now();
                let mut still = Vec::with_capacity(waiting.len());
                for i in waiting.drain(..) {
                    let Some(mn) = self.mns.get_mut(i) else {
                        continue;
                    };
                    if mn.poll_timeout().is_some_and(|t| t <= now) {
                        mn.handle_timeout(now);
                    }
                    let before = inflight;
                    self.flush(i, &mut ph, &mut inflight);
                    if inflight == before
                        && self
                            .mns
                            .get(i)
                            .is_some_and(|m| m.state() == State::Registering)
                    {
                        still.push(i);
                    }
                }
                waiting = still;
            }
        }
        ph.wall = started.elapsed();
        ph
    }
}

/// A cluster behind one release dispatcher in network namespaces (root),
/// shared by the benchmarks that need the dispatcher hop:
///
/// ```text
///  mn 203.0.113.2 ── rtr ──rack 198.18.0.0/24── disp 198.18.0.2 (l2 DSR, VIP 192.0.2.1)
///              cn ──┘                        └─ node-1..n 198.18.0.11.. (VIP on lo)
/// ```
///
/// `cn` is 198.18.1.2; with the data plane on, `rtr` routes the home
/// prefix via the VIP, so packets decapsulated by a node, from home
/// addresses, pass its reverse-path filter. Nodes run in raft mode (durable logs) when there are more than
/// one, else in local mode; their admin API is 127.0.0.1:4340 and metrics
/// 127.0.0.1:9434 inside their namespace, the dispatcher's metrics
/// 127.0.0.1:9435 inside its own. Every process is SIGKILLed and the
/// namespaces removed on drop.
pub mod lab {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::path::PathBuf;
    use std::time::Duration;

    use anyhow::Context as _;

    use super::release_binary;
    use crate::fleet::{ClusterSpec, DispatchSpec, NodeSpec, RealmSpec};
    use crate::supervisor::{Process, Spec, await_metric, metric, scrape, wait_for};
    use crate::topo::{Lab, Topology, racks};

    /// The realm's VIP.
    pub const VIP: Ipv4Addr = racks::plan::VIP;
    /// The dispatcher's rack address.
    pub const DISP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    /// The mobile nodes' host address (co-located care-of address):
    /// outside 198.18.0.0/15, so that no home address equals it (a
    /// registration with care-of address = home address is a return home,
    /// RFC 5944 § 3.6.1.2).
    pub const MN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    /// The correspondent host.
    pub const CN: Ipv4Addr = racks::plan::CN;
    /// Node metrics, inside a node's namespace.
    pub const NODE_METRICS: &str = "http://127.0.0.1:9434/metrics";
    /// Dispatcher metrics, inside its namespace.
    pub const DISP_METRICS: &str = "http://127.0.0.1:9435/metrics";
    const BOUND: Duration = Duration::from_secs(30);

    /// What to build.
    #[derive(Debug, Clone)]
    pub struct LabOptions {
        /// Nodes (1: local mode; more: raft).
        pub nodes: u8,
        /// The realm's home prefix (with the data plane: clear of the lab's
        /// 198.18.0.0/24 and 198.18.1.0/24, since it is routed; without,
        /// only registrations carry it).
        pub home_prefix: String,
        /// First home address with an SA, and how many.
        pub home_base: Ipv4Addr,
        /// SAs (home addresses `home_base + i`).
        pub homes: usize,
        /// MN-HA SPI and key of every SA.
        pub spi: u32,
        /// MN-HA key.
        pub key: Vec<u8>,
        /// `[dataplane] enabled`.
        pub dataplane: bool,
        /// The realm's maximum lifetime (s).
        pub max_lifetime_secs: u16,
        /// Lab watchdog.
        pub expire: Duration,
    }

    /// The running lab.
    pub struct DispatchedLab {
        /// The namespaces.
        pub lab: Lab,
        /// `ha-node` processes, node `i` at index `i - 1`.
        pub nodes: Vec<Process>,
        /// Their namespaces.
        pub node_ns: Vec<String>,
        /// Their specs.
        pub specs: Vec<NodeSpec>,
        /// The dispatcher.
        pub disp: Process,
        /// Its namespace.
        pub disp_ns: String,
        /// The release `havenctl`.
        pub ctl: PathBuf,
        _dir: tempfile::TempDir,
    }

    fn sh(lab: &Lab, host: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = lab.exec(host, args.iter().copied())?;
        anyhow::ensure!(out.status.success(), "{host}: {args:?}: {out:?}");
        Ok(())
    }

    impl DispatchedLab {
        /// Builds the namespaces and starts the nodes and the dispatcher;
        /// returns when the dispatcher reports every node up (and, in raft
        /// mode, the nodes agree on a leader).
        ///
        /// # Errors
        /// A namespace, process or wait that failed.
        pub fn start(o: &LabOptions) -> anyhow::Result<Self> {
            let count = o.nodes.max(1);
            let mut t = Topology::builder()
                .host("mn")
                .host("rtr")
                .host("cn")
                .host("disp")
                .link(("mn", "203.0.113.2/24"), ("rtr", "203.0.113.1/24"))
                .link(("rtr", "198.18.1.1/24"), ("cn", "198.18.1.2/24"))
                .route("mn", "default", "203.0.113.1")
                .route("cn", "default", "198.18.1.1")
                .route("disp", "default", "198.18.0.1")
                .router("rtr")
                .expire_after(o.expire);
            for i in 1..=count {
                let n = racks::node_name(i);
                t = t
                    .host(&n)
                    .loopback_addr(&n, "192.0.2.1/32")
                    .dsr(&n)
                    // The node routes the home prefix into its TUN device.
                    .router(&n)
                    .route(&n, "default", "198.18.0.1");
            }
            let members: Vec<(String, String)> = [
                ("rtr".to_owned(), "198.18.0.1/24".to_owned()),
                ("disp".to_owned(), format!("{DISP}/24")),
            ]
            .into_iter()
            .chain(
                (1..=count).map(|i| (racks::node_name(i), format!("{}/24", racks::node_addr(i)))),
            )
            .collect();
            t = t.switch(
                "rack",
                members.iter().map(|(h, a)| (h.as_str(), a.as_str())),
            );
            let lab = t.build()?;
            let rtr_if = lab.iface("rtr", "rack").context("rtr on rack")?.to_owned();
            // The VIP is on the segment (the dispatcher answers its ARP).
            sh(
                &lab,
                "rtr",
                &["ip", "route", "replace", "192.0.2.1/32", "dev", &rtr_if],
            )?;
            if o.dataplane {
                // Decapsulated packets come from home addresses: their
                // prefix lies behind the VIP for rtr's reverse-path filter.
                sh(
                    &lab,
                    "rtr",
                    &["ip", "route", "replace", &o.home_prefix, "via", "192.0.2.1"],
                )?;
            }
            let disp_if = lab
                .iface("disp", "rack")
                .context("disp on rack")?
                .to_owned();

            let dir = tempfile::tempdir()?;
            let ha_node = release_binary("haven-ha-node", "ha-node")?;
            let ctl = release_binary("haven-ha-node", "havenctl")?;
            let raft = |i: u8| SocketAddr::from((racks::node_addr(i), 7400));
            let peers: Vec<(u64, SocketAddr)> =
                (1..=count).map(|i| (u64::from(i), raft(i))).collect();
            let (mut nodes, mut node_ns, mut specs) = (Vec::new(), Vec::new(), Vec::new());
            for i in 1..=count {
                let ns = lab
                    .ns_name(&racks::node_name(i))
                    .context("node ns")?
                    .to_owned();
                let data: PathBuf = dir.path().join(format!("raft-{i}"));
                let mut spec = NodeSpec::new(
                    u64::from(i),
                    "127.0.0.1:4340".parse()?,
                    "127.0.0.1:9434".parse()?,
                )
                .realm(
                    RealmSpec {
                        max_lifetime_secs: o.max_lifetime_secs,
                        ..RealmSpec::new("bench", VIP, &o.home_prefix)
                    }
                    .with_home_address_sas(o.home_base, o.homes, o.spi, &o.key),
                )
                .dispatch(DispatchSpec::l2(
                    racks::node_addr(i),
                    vec![SocketAddrV4::new(DISP, 4341)],
                    100,
                ));
                if count > 1 {
                    spec = spec.cluster(ClusterSpec::raft("bench", raft(i), &data, peers.clone()));
                }
                let config = dir.path().join(format!("node-{i}.toml"));
                let mut toml = spec.toml();
                if o.dataplane {
                    toml.push_str("\n[dataplane]\nenabled = true\n");
                }
                std::fs::write(&config, toml)?;
                let p = Process::spawn(
                    &format!("ha-node-{i}"),
                    Spec::new(&ha_node)
                        .arg("--config")
                        .arg(&config)
                        .env("RUST_LOG", "warn"),
                    Some(&ns),
                )?;
                nodes.push(p);
                node_ns.push(ns);
                specs.push(spec);
            }
            for ns in &node_ns {
                await_metric(
                    NODE_METRICS,
                    Some(ns),
                    "haven_build_info",
                    &[],
                    |v| v == 1.0,
                    BOUND,
                )
                .with_context(|| format!("ha-node in {ns} did not start"))?;
            }
            let mut cfg = format!(
                "[dispatcher]\nvip = \"{VIP}\"\nmode = \"l2\"\ninterface = \"{disp_if}\"\n\
                 address = \"{DISP}\"\n\n[health]\nrise = 1\n\n\
                 [metrics]\nlisten = \"127.0.0.1:9435\"\n\n"
            );
            for i in 1..=count {
                cfg.push_str(&format!(
                    "[[node]]\nid = {i}\naddress = \"{}\"\n\n",
                    racks::node_addr(i)
                ));
            }
            let cfg_path = dir.path().join("disp.toml");
            std::fs::write(&cfg_path, cfg)?;
            let disp_ns = lab.ns_name("disp").context("disp ns")?.to_owned();
            let disp = Process::spawn(
                "dispatcher",
                Spec::new(release_binary("haven-dispatcher", "dispatcher")?)
                    .arg("--config")
                    .arg(&cfg_path)
                    .env("RUST_LOG", "warn"),
                Some(&disp_ns),
            )?;
            let me = Self {
                lab,
                nodes,
                node_ns,
                specs,
                disp,
                disp_ns,
                ctl,
                _dir: dir,
            };
            for i in 1..=count {
                me.await_up_on_dispatcher(i)?;
            }
            if count > 1 {
                let all: Vec<u8> = (1..=count).collect();
                me.await_leader(&all)?;
            }
            Ok(me)
        }

        /// The namespace of lab host `host` (`mn`, `cn`, …).
        pub fn ns(&self, host: &str) -> anyhow::Result<String> {
            Ok(self.lab.ns_name(host).context("no such host")?.to_owned())
        }

        /// Metric `name` (no labels) on node `i`.
        pub fn node_metric(&self, i: u8, name: &str) -> Option<f64> {
            let ns = self.node_ns.get(usize::from(i).checked_sub(1)?)?;
            scrape(NODE_METRICS, Some(ns))
                .ok()
                .and_then(|t| metric(&t, name, &[]))
        }

        /// Node `i`'s accepted registrations.
        pub fn accepted(&self, i: u8) -> f64 {
            usize::from(i)
                .checked_sub(1)
                .and_then(|k| self.node_ns.get(k))
                .and_then(|ns| scrape(NODE_METRICS, Some(ns)).ok())
                .and_then(|t| metric(&t, "haven_registrations_total", &[("result", "accepted")]))
                .unwrap_or(0.0)
        }

        /// Node `i`'s binding count.
        pub fn bindings_count(&self, i: u8) -> f64 {
            usize::from(i)
                .checked_sub(1)
                .and_then(|k| self.node_ns.get(k))
                .and_then(|ns| scrape(NODE_METRICS, Some(ns)).ok())
                .and_then(|t| metric(&t, "haven_bindings", &[("realm", "bench")]))
                .unwrap_or(0.0)
        }

        /// Waits until the dispatcher reports node `i` `up` (1) or down (0).
        ///
        /// # Errors
        /// Not within the bound.
        pub fn await_on_dispatcher(&self, i: u8, up: bool) -> anyhow::Result<()> {
            let want = if up { 1.0 } else { 0.0 };
            await_metric(
                DISP_METRICS,
                Some(&self.disp_ns),
                "haven_dispatcher_node_up",
                &[("node", &i.to_string())],
                |v| v == want,
                BOUND,
            )
            .with_context(|| {
                format!(
                    "node {i} not {} on the dispatcher",
                    if up { "up" } else { "down" }
                )
            })?;
            Ok(())
        }

        /// Waits until the dispatcher reports node `i` up.
        ///
        /// # Errors
        /// Not within the bound.
        pub fn await_up_on_dispatcher(&self, i: u8) -> anyhow::Result<()> {
            self.await_on_dispatcher(i, true)
        }

        /// The raft leader every node in `ids` agrees on.
        ///
        /// # Errors
        /// No agreement within the bound.
        pub fn await_leader(&self, ids: &[u8]) -> anyhow::Result<u8> {
            let mut leader = 0u8;
            wait_for("a leader the nodes agree on", BOUND, || {
                let seen: Vec<u8> = ids
                    .iter()
                    .map(|i| self.node_metric(*i, "haven_raft_leader_id").unwrap_or(0.0) as u8)
                    .collect();
                leader = seen.first().copied().unwrap_or(0);
                leader != 0 && seen.iter().all(|l| *l == leader) && ids.contains(&leader)
            })?;
            Ok(leader)
        }

        /// Home address → care-of address on node `i` (`havenctl bindings
        /// list`).
        ///
        /// # Errors
        /// When havenctl fails or prints something else.
        pub fn bindings(&self, i: u8) -> anyhow::Result<HashMap<Ipv4Addr, Ipv4Addr>> {
            let idx = usize::from(i)
                .checked_sub(1)
                .context("node ids start at 1")?;
            let ns = self.node_ns.get(idx).context("ns")?;
            let spec = self.specs.get(idx).context("spec")?;
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(&self.ctl)
                .arg("--admin")
                .arg(spec.admin.to_string())
                .args(["--json", "bindings", "list"])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "havenctl on node {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            Ok(v.as_array()
                .map(|rows| {
                    rows.iter()
                        .filter_map(|b| {
                            let hoa = b["home_address"].as_str()?.parse().ok()?;
                            let coa = b["care_of"][0]["care_of_address"].as_str()?.parse().ok()?;
                            Some((hoa, coa))
                        })
                        .collect()
                })
                .unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
