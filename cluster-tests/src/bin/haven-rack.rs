//! `haven-rack`: a whole haven installation on this machine, in one command
//! (issue 10 item 1; the rack itself is [`haven_cluster_tests::rack`]).
//!
//! As root: two dispatchers (VRRP pairs, l2 direct server return), three
//! `ha-node`s in raft mode, an inner and an outer realm, and a few hundred
//! simulated mobile nodes behind a real nftables NAT that register,
//! re-register, move and send data through their RFC 3519 tunnels to a
//! correspondent node that echoes it back (the dispatchers are the home
//! prefixes' gateway), some in both realms. Without root: the loopback
//! variant (three raft nodes, one encap-mode dispatcher, the inner realm, no
//! data plane).
//!
//! A live view (refreshed every second) shows the nodes, the dispatchers,
//! registrations per second, data-plane packets per second in and out of
//! each node and the failovers seen. Keys: `k` kill the
//! busiest node, `l` kill the raft leader, `d` kill the active dispatcher,
//! `r` restart everything killed, `q` quit. The same as flags for scripts:
//! `--duration`, `--kill-node-after`, `--kill-dispatcher-after`,
//! `--restart-after`; `--plain` prints line-oriented events
//! (`event healed bindings=320 on 3/3 nodes …`) instead of the view.
//! `--site` runs the two-cluster site instead (`haven_cluster_tests::site`:
//! an inner cluster in the intranet, an outer one in the DMZ), its lines
//! prefixed with the cluster (`[outer] event healed …`), the scheduled
//! faults hitting both clusters.
//!
//! ```text
//! cargo run -p haven-cluster-tests --bin haven-rack -- [--duration S] [--plain] …
//! ```

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use haven_cluster_tests::mnsim::Report;
use haven_cluster_tests::rack::{Mode, Monitor, Rack, RackOptions, Sample};
use haven_cluster_tests::site::{Site, SiteOptions};
use haven_cluster_tests::topo;

#[derive(Debug, Parser)]
#[command(
    name = "haven-rack",
    about = "Run a local haven rack (dispatchers, raft nodes, simulated mobile nodes)"
)]
struct Cli {
    /// Mobile nodes of the inner realm (fixed home addresses, at most 240).
    #[arg(long, alias = "mobile-nodes", default_value_t = 200)]
    inner: usize,
    /// Mobile nodes of the outer realm (NAI, dynamic home addresses, at
    /// most 241); each is also an inner client (a dual client).
    #[arg(long, default_value_t = 120)]
    outer: usize,
    /// Registration lifetime the mobile nodes request (s); they
    /// re-register at 80 % of it.
    #[arg(long, default_value_t = 10)]
    lifetime: u16,
    /// Each mobile node moves (new care-of address) this long after it
    /// started (s).
    #[arg(long, default_value_t = 5.0)]
    move_after: f64,
    /// Spread the mobile nodes' start over this many seconds (s); their
    /// re-registrations and moves are spread the same way.
    #[arg(long, default_value_t = 4.0)]
    start_over: f64,
    /// Stop after this many seconds (counted from the fleets' start), or
    /// up to 30 s later while a fault's heal is still awaited (`event
    /// overtime …`). Default: until `q` or Ctrl-C on a terminal, 30 s
    /// otherwise.
    #[arg(long, alias = "seconds")]
    duration: Option<f64>,
    /// SIGKILL the raft leader this many seconds in (and once every mobile
    /// node has registered).
    #[arg(long)]
    kill_node_after: Option<f64>,
    /// SIGKILL the active dispatcher this many seconds in (and once every
    /// mobile node has registered).
    #[arg(long)]
    kill_dispatcher_after: Option<f64>,
    /// Restart everything killed this many seconds in.
    #[arg(long)]
    restart_after: Option<f64>,
    /// Line-oriented output (events and one status line per second)
    /// instead of the live view.
    #[arg(long)]
    plain: bool,
    /// Run on loopback even as root.
    #[arg(long)]
    loopback: bool,
    /// Data packets per second each mobile node sends to the correspondent
    /// through its tunnel (namespace rack; 0: none).
    #[arg(long, default_value_t = 2.0)]
    data_rate: f64,
    /// The two-cluster site instead of the rack (root): an inner cluster
    /// in the intranet, an outer one in the DMZ, one fleet per realm
    /// (`--inner`/`--outer` up to 4000 each), line-oriented output per
    /// cluster.
    #[arg(long)]
    site: bool,
}

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
    let r = run(&cli);
    // The terminal is restored by then (the guard in `run` dropped).
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("haven-rack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Puts a terminal stdin into non-canonical, no-echo mode (signals stay on:
/// Ctrl-C still tears down) and restores it on drop.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enable() -> Self {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed termios they fill.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return RawMode(None);
            }
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restoring the attributes read in `enable`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

/// Reads keys from stdin: single keys on a terminal, the first character
/// of each line otherwise. The thread ends at EOF.
fn keys(tty: bool) -> mpsc::Receiver<char> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        if tty {
            let mut b = [0u8; 1];
            let mut lock = stdin.lock();
            while let Ok(1) = lock.read(&mut b) {
                if tx.send(char::from(b[0])).is_err() {
                    return;
                }
            }
        } else {
            for line in stdin.lock().lines().map_while(Result::ok) {
                if let Some(c) = line.trim().chars().next() {
                    if tx.send(c).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn secs(s: Option<f64>) -> anyhow::Result<Option<Duration>> {
    s.map(|v| {
        Duration::try_from_secs_f64(v).context("a time must be a non-negative number of seconds")
    })
    .transpose()
}

struct Out {
    plain: bool,
    events: VecDeque<String>,
    t0: Instant,
}

impl Out {
    fn event(&mut self, line: impl Into<String>) {
        let line = line.into();
        let stamped = format!("[{:6.1}s] {line}", self.t0.elapsed().as_secs_f64());
        if self.plain {
            println!("{line}");
        }
        self.events.push_back(stamped);
        while self.events.len() > 10 {
            self.events.pop_front();
        }
    }
}

/// How long a bounded run goes on past `--duration` while a fault's heal
/// is still awaited: a scheduled fault near the end is judged on its heal,
/// not cut off by the clock (a loaded machine restarts processes slowly).
const OVERTIME: Duration = Duration::from_secs(30);

/// The end of a bounded run: at `--duration` if every monitor is settled,
/// else when they are or [`OVERTIME`] later.
#[derive(Debug, Default)]
struct Overtime {
    announced: bool,
}

impl Overtime {
    fn over(
        &mut self,
        duration: Option<Duration>,
        t: Duration,
        monitors: &[&Monitor],
        out: &mut Out,
    ) -> bool {
        let Some(d) = duration.filter(|d| t >= *d) else {
            return false;
        };
        let awaiting: Vec<String> = monitors.iter().flat_map(|m| m.awaiting()).collect();
        if awaiting.is_empty() || t >= d + OVERTIME {
            if !awaiting.is_empty() {
                out.event(format!(
                    "event overtime ended after {:.0}s still awaiting: {}",
                    OVERTIME.as_secs_f64(),
                    awaiting.join("; ")
                ));
            }
            return true;
        }
        if !self.announced {
            self.announced = true;
            out.event(format!("event overtime awaiting: {}", awaiting.join("; ")));
        }
        false
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let stdin_tty = std::io::stdin().is_terminal();
    let plain = cli.plain || !std::io::stdout().is_terminal();
    let duration = match secs(cli.duration)? {
        Some(d) => Some(d),
        None if stdin_tty => None,
        None => Some(Duration::from_secs(30)),
    };
    let kill_node_at = secs(cli.kill_node_after)?;
    let kill_disp_at = secs(cli.kill_dispatcher_after)?;
    let restart_at = secs(cli.restart_after)?;
    let opts = RackOptions {
        inner: cli.inner,
        outer: cli.outer,
        lifetime: cli.lifetime,
        move_after: Duration::try_from_secs_f64(cli.move_after)
            .context("--move-after must be a non-negative number")?,
        rate: if cli.start_over > 0.0 {
            cli.inner.max(cli.outer) as f64 / cli.start_over
        } else {
            0.0
        },
        loopback: cli.loopback,
        data_rate: cli.data_rate,
        // The watchdog outlives a bounded run by a margin for start-up and
        // teardown.
        expire: duration.map(|d| d + Duration::from_secs(180)),
        ..RackOptions::default()
    };
    if cli.site {
        anyhow::ensure!(topo::is_root(), "--site needs root (network namespaces)");
        return run_site(cli, opts, duration);
    }
    if !topo::is_root() {
        println!(
            "haven-rack: not root, so no network namespaces: running the loopback variant \
             (3 raft nodes, 1 encap-mode dispatcher, the inner realm only, no data plane: \
             its TUN devices need root)"
        );
    } else if cli.loopback {
        println!("haven-rack: --loopback: running the loopback variant");
    } else {
        println!(
            "haven-rack: building the rack in network namespaces (2 dispatchers, 3 raft nodes, \
             nftables NAT; a first run builds ha-node and the dispatcher)…"
        );
    }
    let t_build = Instant::now();
    let mut rack = Rack::start(&opts).context("starting the rack")?;
    println!(
        "event rack up mode={} in {:.1}s",
        match rack.mode {
            Mode::Namespaces => "namespaces",
            Mode::Loopback => "loopback",
        },
        t_build.elapsed().as_secs_f64()
    );
    println!("Prometheus endpoints (loopback):");
    for (name, url) in rack.endpoints() {
        println!("  {name:<14} {url}");
    }
    for ns in rack.namespaces() {
        println!("  netns {ns}");
    }
    println!("configs and raft logs: {}", rack.dir().display());
    for (name, log) in rack.logs() {
        println!("  log {name:<14} {}", log.display());
    }
    let dual = if rack.mode == Mode::Namespaces {
        opts.inner.min(opts.outer)
    } else {
        0
    };
    let sizes: Vec<String> = rack
        .fleet_sizes
        .iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    println!(
        "event fleets starting {} dual={dual} lifetime={}s move_after={:.1}s",
        sizes.join(" "),
        opts.lifetime,
        opts.move_after.as_secs_f64()
    );
    rack.start_fleets(&opts).context("starting the fleets")?;

    let _raw = (stdin_tty && !cli.plain).then(RawMode::enable);
    let keys = keys(stdin_tty && !cli.plain);
    let mut out = Out {
        plain,
        events: VecDeque::new(),
        t0: Instant::now(),
    };
    let mut monitor = Monitor::new(rack.expected);
    let (mut kill_node_at, mut kill_disp_at, mut restart_at) =
        (kill_node_at, kill_disp_at, restart_at);
    let mut last: Option<Sample> = None;
    let mut next_tick = Instant::now();
    let mut quit = false;
    let mut flowing = false;
    let mut overtime = Overtime::default();
    while !quit && !STOP.load(Ordering::SeqCst) {
        let t = out.t0.elapsed();
        if overtime.over(duration, t, &[&monitor], &mut out) {
            break;
        }
        // Keys and scheduled actions, between samples.
        let wait = next_tick.saturating_duration_since(Instant::now());
        let key = keys.recv_timeout(wait.min(Duration::from_millis(200))).ok();
        let mut action = key;
        // Scheduled kills wait until every mobile node registered: a kill
        // is meant to hit a settled rack, however slow the machine.
        let settled = monitor.registered();
        if kill_node_at.is_some_and(|at| t >= at && settled) {
            kill_node_at = None;
            action = Some('l');
        } else if kill_disp_at.is_some_and(|at| t >= at && settled) {
            kill_disp_at = None;
            action = Some('d');
        } else if restart_at.is_some_and(|at| t >= at) {
            restart_at = None;
            action = Some('r');
        }
        if let Some(a) = action {
            let sample = match &last {
                Some(s) => s.clone(),
                None => rack.sample(),
            };
            match a {
                'q' | 'Q' => quit = true,
                'k' | 'l' => {
                    let target = if a == 'l' {
                        sample.leader()
                    } else {
                        monitor
                            .packet_rate
                            .iter()
                            .filter(|(id, _)| sample.nodes.iter().any(|n| n.id == **id && n.up))
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .map(|(id, _)| *id)
                            .or_else(|| sample.nodes.iter().rev().find(|n| n.up).map(|n| n.id))
                    };
                    let running = rack.cluster.nodes.iter().filter(|n| !n.killed).count();
                    match target {
                        _ if running <= 2 => out.event(
                            "event refused: killing another node would lose the raft majority",
                        ),
                        None => out.event("event refused: no node to kill (no leader yet?)"),
                        Some(id) => match rack.kill_node(id) {
                            Ok(name) => {
                                let why = if a == 'l' {
                                    "the leader"
                                } else {
                                    "the busiest"
                                };
                                out.event(format!("event {name} killed ({why}, SIGKILL)"));
                                monitor.node_killed();
                            }
                            Err(e) => out.event(format!("event error killing node-{id}: {e}")),
                        },
                    }
                }
                'd' => match rack.kill_active_dispatcher(&sample) {
                    Ok(host) => {
                        out.event(format!("event dispatcher {host} killed (active, SIGKILL)"));
                        if rack.mode == Mode::Loopback {
                            out.event(
                                "event note: loopback has no backup dispatcher; registrations \
                                 stall until r",
                            );
                        } else {
                            monitor.dispatcher_killed();
                        }
                    }
                    Err(e) => out.event(format!("event refused: {e}")),
                },
                'r' | 'R' => {
                    let nodes: Vec<u64> = rack
                        .cluster
                        .nodes
                        .iter()
                        .filter(|n| n.killed)
                        .map(|n| n.id)
                        .collect();
                    let dispatchers = rack.cluster.dispatchers.iter().any(|d| d.killed);
                    if !rack.anything_killed() {
                        out.event("event nothing to restart");
                    } else {
                        match rack.restart_killed() {
                            Ok(names) => {
                                out.event(format!("event restarted {}", names.join(",")));
                                if dispatchers {
                                    monitor.dispatchers_restarted(rack.vip_preferred());
                                }
                                if !nodes.is_empty() {
                                    if let Some(e) = monitor.nodes_restarted(nodes) {
                                        out.event(e);
                                    }
                                }
                            }
                            Err(e) => out.event(format!("event error restarting: {e}")),
                        }
                    }
                }
                _ => {}
            }
        }
        if Instant::now() < next_tick {
            continue;
        }
        next_tick = Instant::now() + Duration::from_secs(1);
        let ended = rack.fleets_ended();
        if !ended.is_empty() {
            out.event(format!("event fleet {} ended early", ended.join(",")));
            break;
        }
        let sample = rack.sample();
        for e in monitor.observe(&sample) {
            out.event(e);
        }
        // Data seen both ways on the nodes: into them from the mobile nodes
        // (decapsulated) and out of them to the mobile nodes (echoes).
        if !flowing && monitor.dp_in_total >= 100.0 && monitor.dp_out_total >= 100.0 {
            flowing = true;
            out.event(format!(
                "event dataplane flowing in={:.0} out={:.0}",
                monitor.dp_in_total, monitor.dp_out_total
            ));
        }
        if plain {
            println!("{}", status_line(&out, &monitor, &sample));
        } else {
            let mut screen = String::from("\x1b[H\x1b[2J");
            screen.push_str(&view(&rack, &out, &monitor, &sample, duration));
            print!("{screen}");
        }
        let _ = std::io::stdout().flush();
        last = Some(sample);
    }
    if !plain {
        println!();
    }
    if STOP.load(Ordering::SeqCst) {
        println!("event interrupted: tearing down");
    }
    let reports = rack.stop_fleets();
    let gave_up = print_fleets(&reports);
    if let Some(c) = &rack.correspondent {
        let snap = c.snapshot();
        let sent: u64 = reports
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .map(|r| r.summary.data_sent)
            .sum();
        let back: u64 = reports
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .map(|r| r.summary.tunnel_data_received)
            .sum();
        println!(
            "event data sent={sent} at_cn={} flows={} echoed={} back_at_mns={back}",
            snap.received,
            snap.flows.len(),
            snap.echoed
        );
    }
    println!(
        "event done accepted={} denied={} leader_changes={} vip_changes={} heals={} settled={} \
         dp_in={:.0} dp_out={:.0}",
        monitor.accepted_total,
        monitor.denied_total,
        monitor.leader_changes,
        monitor.vip_changes,
        monitor.heals,
        monitor.settled(),
        monitor.dp_in_total,
        monitor.dp_out_total
    );
    drop(rack);
    println!("event torn down");
    verdict(&reports, gave_up)
}

/// A fleet that failed fails the run; mobile nodes that gave up are noted.
fn verdict(reports: &[(String, Result<Report, String>)], gave_up: u64) -> anyhow::Result<()> {
    if let Some((realm, Err(e))) = reports.iter().find(|(_, r)| r.is_err()) {
        anyhow::bail!("fleet {realm}: {e}");
    }
    if gave_up > 0 {
        println!("note: {gave_up} mobile nodes gave up a registration");
    }
    Ok(())
}

/// Prints each fleet's mnsim summary and its `event fleet …` line;
/// returns how many mobile nodes gave up a registration.
fn print_fleets(reports: &[(String, Result<Report, String>)]) -> u64 {
    println!("mobile nodes (mnsim), per realm:");
    let mut gave_up = 0;
    for (realm, r) in reports {
        match r {
            Ok(rep) => {
                gave_up += rep.summary.gave_up;
                println!("[{realm}]\n{}", rep.summary.table());
                let unregistered = rep.mns.iter().filter(|m| m.acknowledged.is_none()).count();
                println!(
                    "event fleet {realm} registered={} of {} moves={} gave_up={} never_registered={unregistered}",
                    rep.summary.registered,
                    rep.summary.count,
                    rep.summary.moves,
                    rep.summary.gave_up
                );
            }
            Err(e) => println!("event fleet {realm} error: {e}"),
        }
    }
    gave_up
}

/// `--site`: the two-cluster site of `haven_cluster_tests::site` with its
/// fleets, one status line per cluster per second (`[inner] status …`) and
/// its events (`[outer] event …`). `--kill-node-after` kills the Raft
/// leader of both clusters, `--kill-dispatcher-after` both active
/// dispatcher hosts, `--restart-after` restarts everything; `q` quits.
fn run_site(cli: &Cli, opts: RackOptions, duration: Option<Duration>) -> anyhow::Result<()> {
    println!(
        "haven-rack: building the two-cluster site in network namespaces (inner cluster in the \
         intranet, outer cluster in the DMZ, 3 raft nodes and 2 dispatchers each)…"
    );
    let t_build = Instant::now();
    let load = RackOptions { wide: true, ..opts };
    let mut site = Site::start(&SiteOptions { load: load.clone() }).context("starting the site")?;
    println!("event site up in {:.1}s", t_build.elapsed().as_secs_f64());
    for (name, url) in site.endpoints() {
        println!("  {name:<14} {url}");
    }
    println!("configs and raft logs: {}", site.dir().display());
    site.start_fleets(&load).context("starting the fleets")?;
    let keys = keys(false);
    let mut out = Out {
        plain: true,
        events: VecDeque::new(),
        t0: Instant::now(),
    };
    let mut monitors: Vec<Monitor> = site
        .clusters
        .iter()
        .map(|c| Monitor::new(c.expected))
        .collect();
    let mut kill_node_at = secs(cli.kill_node_after)?;
    let mut kill_disp_at = secs(cli.kill_dispatcher_after)?;
    let mut restart_at = secs(cli.restart_after)?;
    let mut last: Vec<Sample> = Vec::new();
    let mut next_tick = Instant::now();
    let mut overtime = Overtime::default();
    while !STOP.load(Ordering::SeqCst) {
        let t = out.t0.elapsed();
        let watched: Vec<&Monitor> = monitors.iter().collect();
        if overtime.over(duration, t, &watched, &mut out) {
            break;
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        if keys.recv_timeout(wait.min(Duration::from_millis(200))) == Ok('q') {
            break;
        }
        // Scheduled faults wait until every mobile node registered, as in
        // the rack; each hits both clusters.
        let settled = !last.is_empty() && monitors.iter().all(Monitor::registered);
        let fire = |at: &mut Option<Duration>, need: bool| {
            let due = at.is_some_and(|a| t >= a && (settled || !need));
            if due {
                *at = None;
            }
            due
        };
        let (kill_node, kill_disp, restart) = (
            fire(&mut kill_node_at, true),
            fire(&mut kill_disp_at, true),
            fire(&mut restart_at, false),
        );
        for (k, c) in site.clusters.iter_mut().enumerate() {
            let (m, s) = (&mut monitors[k], last.get(k));
            let name = c.name.clone();
            let r = match (kill_node, kill_disp, restart, s) {
                (true, _, _, Some(s)) => s.leader().map(|l| {
                    m.node_killed();
                    c.kill_node(l)
                        .map(|n| format!("{n} killed (the leader, SIGKILL)"))
                }),
                (_, true, _, Some(s)) => Some(c.kill_active_dispatcher(s).map(|h| {
                    m.dispatcher_killed();
                    format!("dispatcher {h} killed (active, SIGKILL)")
                })),
                (_, _, true, _) if c.anything_killed() => {
                    let nodes: Vec<u64> =
                        c.nodes.iter().filter(|n| n.killed).map(|n| n.id).collect();
                    if !nodes.is_empty() {
                        let _ = m.nodes_restarted(nodes);
                    }
                    if c.dispatchers.iter().any(|d| d.killed) {
                        m.dispatchers_restarted(c.vip_preferred());
                    }
                    Some(
                        c.restart_killed()
                            .map(|n| format!("restarted {}", n.join(","))),
                    )
                }
                _ => None,
            };
            match r {
                Some(Ok(line)) => out.event(format!("[{name}] event {line}")),
                Some(Err(e)) => out.event(format!("[{name}] event error: {e}")),
                None => {}
            }
        }
        if Instant::now() < next_tick {
            continue;
        }
        next_tick = Instant::now() + Duration::from_secs(1);
        let ended = site.fleets_ended();
        if !ended.is_empty() {
            out.event(format!("event fleet {} ended early", ended.join(",")));
            break;
        }
        last = site.clusters.iter_mut().map(|c| c.sample()).collect();
        for (k, s) in last.iter().enumerate() {
            for e in monitors[k].observe(s) {
                out.event(format!("[{}] {e}", s.cluster));
            }
            println!("[{}] {}", s.cluster, status_line(&out, &monitors[k], s));
        }
        let _ = std::io::stdout().flush();
    }
    let reports: Vec<(String, Result<Report, String>)> = site
        .stop_fleet_runs()
        .into_iter()
        .map(|r| (r.name, r.report))
        .collect();
    let gave_up = print_fleets(&reports);
    for (c, m) in site.correspondents.iter().zip(&monitors) {
        let snap = c.snapshot();
        println!(
            "event data at {} received={} flows={} echoed={} accepted={} leader_changes={} heals={}",
            c.addr,
            snap.received,
            snap.flows.len(),
            snap.echoed,
            m.accepted_total,
            m.leader_changes,
            m.heals
        );
    }
    drop(site);
    println!("event torn down");
    verdict(&reports, gave_up)
}

fn status_line(out: &Out, m: &Monitor, s: &Sample) -> String {
    let nodes: Vec<String> = s
        .nodes
        .iter()
        .map(|n| {
            if n.up {
                format!(
                    "node-{}:{}:t{}:b{}",
                    n.id,
                    if n.is_leader { "L" } else { "F" },
                    n.term,
                    n.total_bindings()
                )
            } else {
                format!("node-{}:down", n.id)
            }
        })
        .collect();
    let mut realms: Vec<&str> = s.dispatchers.iter().map(|d| d.realm.as_str()).collect();
    realms.dedup();
    let vips: Vec<String> = realms
        .iter()
        .map(|r| format!("{r}:{}", s.vip_owner(r).unwrap_or_else(|| "-".into())))
        .collect();
    let dp: Vec<String> = m
        .dp_rate
        .iter()
        .map(|(id, (i, o))| format!("node-{id}:{i:.0}/{o:.0}"))
        .collect();
    format!(
        "status t={:.0} leader={} {} reg/s={:.0} denied/s={:.0} vip={} dp_in/out/s={}",
        out.t0.elapsed().as_secs_f64(),
        s.leader()
            .map_or_else(|| "-".to_owned(), |l| format!("node-{l}")),
        nodes.join(" "),
        m.accepted_rate,
        m.denied_rate,
        vips.join(","),
        if dp.is_empty() {
            "-".to_owned()
        } else {
            dp.join(",")
        }
    )
}

fn view(rack: &Rack, out: &Out, m: &Monitor, s: &Sample, duration: Option<Duration>) -> String {
    let mut v = String::new();
    let t = out.t0.elapsed().as_secs_f64();
    let until = duration.map_or_else(String::new, |d| format!(" of {:.0}s", d.as_secs_f64()));
    let _ = writeln!(
        v,
        "haven-rack ({}) — {t:.0}s{until}   keys: k kill busiest node  l kill leader  d kill active dispatcher  r restart  q quit",
        match rack.mode {
            Mode::Namespaces => "namespaces",
            Mode::Loopback => "loopback",
        }
    );
    let _ = writeln!(v);
    let realms: Vec<String> = rack.fleet_sizes.iter().map(|(r, _)| r.clone()).collect();
    let mut hdr = format!(
        "{:<8} {:<6} {:<9} {:>5} {:>8}",
        "node", "state", "raft", "term", "applied"
    );
    for r in &realms {
        let _ = write!(hdr, " {:>8}", format!("b:{r}"));
    }
    let _ = writeln!(hdr, " {:>8} {:>8} {:>8}", "pkts/s", "dp in/s", "dp out/s");
    v.push_str(&hdr);
    for n in &s.nodes {
        let state = if n.up {
            "up"
        } else if n.running {
            "start"
        } else {
            "DOWN"
        };
        let role = if !n.up {
            "-".to_owned()
        } else if n.is_leader {
            "LEADER".to_owned()
        } else {
            "follower".to_owned()
        };
        let mut line = format!(
            "{:<8} {state:<6} {role:<9} {:>5} {:>8}",
            format!("node-{}", n.id),
            n.term,
            n.applied
        );
        for r in &realms {
            let _ = write!(line, " {:>8}", n.bindings.get(r).copied().unwrap_or(0));
        }
        let (din, dout) = m.dp_rate.get(&n.id).copied().unwrap_or_default();
        let _ = writeln!(
            line,
            " {:>8.0} {din:>8.0} {dout:>8.0}",
            m.packet_rate.get(&n.id).copied().unwrap_or(0.0)
        );
        v.push_str(&line);
    }
    let _ = writeln!(
        v,
        "leader: {}   expected bindings per node: {}",
        s.leader()
            .map_or_else(|| "none".to_owned(), |l| format!("node-{l}")),
        m.expected
    );
    let _ = writeln!(v);
    let _ = writeln!(
        v,
        "{:<14} {:<8} {:<7} {:<6} packets per node",
        "dispatcher", "state", "vrrp", "VIP"
    );
    for d in &s.dispatchers {
        let state = if d.up {
            "up"
        } else if d.running {
            "start"
        } else {
            "DOWN"
        };
        let vrrp = match d.vrrp {
            Some(2) => "master",
            Some(1) => "backup",
            Some(0) => "init",
            Some(_) => "?",
            None => "-",
        };
        let pk: Vec<String> = d
            .packets
            .iter()
            .map(|(n, p)| {
                let up = d.node_up.get(n).copied().unwrap_or(false);
                format!("node-{n}:{p:.0}{}", if up { "" } else { "(down)" })
            })
            .collect();
        let _ = writeln!(
            v,
            "{:<14} {state:<8} {vrrp:<7} {:<6} {}",
            d.name(),
            if d.active { "owns" } else { "" },
            pk.join(" ")
        );
    }
    let _ = writeln!(v);
    let _ = writeln!(
        v,
        "registrations/s: {:.0} accepted, {:.0} denied   total: {:.0} accepted, {:.0} denied",
        m.accepted_rate, m.denied_rate, m.accepted_total, m.denied_total
    );
    let _ = writeln!(
        v,
        "failovers seen: {} raft leader changes, {} VIP takeovers, {} heals",
        m.leader_changes, m.vip_changes, m.heals
    );
    match &rack.correspondent {
        Some(c) => {
            let snap = c.snapshot();
            let (din, dout) = m
                .dp_rate
                .values()
                .fold((0.0, 0.0), |(a, b), (i, o)| (a + i, b + o));
            let _ = writeln!(
                v,
                "data plane: {din:.0} pkt/s in from mobile nodes, {dout:.0} pkt/s out to them; \
                 correspondent {}: {} received from {} home addresses, {} echoed",
                c.addr,
                snap.received,
                snap.flows.len(),
                snap.echoed
            );
        }
        None => {
            let _ = writeln!(
                v,
                "data plane: off in the loopback rack (TUN devices need root)"
            );
        }
    }
    let _ = writeln!(v);
    let _ = writeln!(v, "events:");
    for e in &out.events {
        let _ = writeln!(v, "  {e}");
    }
    v
}
