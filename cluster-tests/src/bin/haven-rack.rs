//! `haven-rack`: haven's main job on an embedded default, in one command.
//!
//! As root it builds a small rack in network namespaces (DESIGN.md §8):
//! simulated mobile nodes behind a real nftables NAT, an internet hop, a
//! router, a home-agent node holding the VIP on its loopback, and a
//! correspondent node. It starts the real `ha-node`, lets `mnsim` register
//! the mobile nodes through the NAT with UDP tunnelling (RFC 3519) and
//! dynamic home addresses (RFC 2794), shows the node's metrics live, then
//! prints the fleet's summary and the node's status, and removes everything.
//! Without root it runs the same node and fleet on loopback.
//!
//! ```text
//! cargo run -p haven-cluster-tests --bin haven-rack -- [--mobile-nodes N] [--seconds S]
//! ```

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use haven_cluster_tests::fleet::{NodeSpec, RealmSpec, havenctl_json, start_node};
use haven_cluster_tests::mnsim::{self, HomeMode, SimConfig};
use haven_cluster_tests::supervisor::{free_port, metric, scrape};
use haven_cluster_tests::topo::{self, in_netns, racks};

/// The demo's shared MN-HA key: a lab value, never a deployment's.
const KEY: &[u8] = b"haven-rack-demo!";
const SPI: u32 = 1000;
const NAI: &str = "mn{i}@rack.example";

#[derive(Debug, Parser)]
#[command(
    name = "haven-rack",
    about = "Run a local haven rack with simulated mobile nodes"
)]
struct Cli {
    /// Simulated mobile nodes.
    #[arg(long, default_value_t = 200)]
    mobile_nodes: usize,
    /// How long the mobile nodes stay registered before deregistering.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Mobile nodes started per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Run on loopback even as root.
    #[arg(long)]
    loopback: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("haven-rack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let rack = topo::is_root() && !cli.loopback;
    let dir = tempfile::tempdir()?;
    let (lab, vip, port, bind, node_ns, mn_ns) = if rack {
        println!("building the rack (network namespaces, nftables NAT)…");
        let lab = racks::nat_scenario(1)
            .expire_after(Duration::from_secs(cli.seconds + 300))
            .build()
            .context("building the rack")?;
        let node_ns = lab.ns_name("node-1").map(str::to_owned);
        let mn_ns = lab.ns_name("mn").map(str::to_owned);
        (
            Some(lab),
            racks::plan::VIP,
            434,
            racks::plan::MN,
            node_ns,
            mn_ns,
        )
    } else {
        println!("not root (or --loopback): running on loopback");
        let port = free_port();
        (
            None,
            Ipv4Addr::LOCALHOST,
            port,
            Ipv4Addr::LOCALHOST,
            None,
            None,
        )
    };
    let (admin, metrics) = if rack {
        ("127.0.0.1:4340".parse()?, "127.0.0.1:9434".parse()?)
    } else {
        (
            format!("127.0.0.1:{}", free_port()).parse()?,
            format!("127.0.0.1:{}", free_port()).parse()?,
        )
    };
    let spec = NodeSpec::new(1, admin, metrics).realm(
        RealmSpec {
            port,
            pool: Some("198.51.100.10-198.51.100.250".into()),
            ..RealmSpec::new("outer", vip, "198.51.100.0/24")
        }
        .with_nai_sas(NAI, cli.mobile_nodes.min(240), SPI, KEY),
    );
    if cli.mobile_nodes > 240 {
        anyhow::bail!("the demo's pool holds 240 home addresses; use --mobile-nodes 240 or fewer");
    }
    let node = start_node(&spec, dir.path(), node_ns.as_deref()).context("starting ha-node")?;
    println!(
        "ha-node up: VIP {vip}:{port}, admin {admin}, metrics {}",
        spec.metrics_url()
    );

    let mut sim = SimConfig::new(SocketAddrV4::new(vip, port), KEY.to_vec());
    sim.count = cli.mobile_nodes;
    sim.rate = cli.rate;
    sim.home = HomeMode::Nai {
        pattern: NAI.into(),
    };
    sim.spi = SPI;
    sim.udp_tunnel = true;
    sim.bind = vec![bind];
    sim.duration = Some(Duration::from_secs(cli.seconds));
    let done = Arc::new(AtomicBool::new(false));
    let fleet = {
        let done = done.clone();
        let mn_ns = mn_ns.clone();
        std::thread::spawn(move || {
            let r = match &mn_ns {
                Some(ns) => in_netns(ns, || mnsim::run(&sim)).map_err(anyhow::Error::from),
                None => Ok(mnsim::run(&sim)),
            };
            done.store(true, Ordering::SeqCst);
            r
        })
    };

    println!();
    println!(
        "{:>5}  {:>9}  {:>9}  {:>7}  {:>7}",
        "t(s)", "bindings", "accepted", "denied", "dropped"
    );
    let start = Instant::now();
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(1));
        if let Ok(text) = scrape(&spec.metrics_url(), node_ns.as_deref()) {
            let bindings = metric(&text, "haven_bindings", &[("realm", "outer")]).unwrap_or(0.0);
            let accepted = sum(&text, "haven_registrations_total", "result=\"accepted\"");
            let denied = sum(&text, "haven_registrations_total", "result=\"denied\"");
            let dropped = sum(&text, "haven_registration_drops_total", "");
            println!(
                "{:>5}  {bindings:>9}  {accepted:>9}  {denied:>7}  {dropped:>7}",
                start.elapsed().as_secs()
            );
        }
    }
    let report = fleet
        .join()
        .map_err(|_| anyhow::anyhow!("the fleet thread panicked"))??
        .context("mnsim")?;
    println!();
    println!("mobile nodes (mnsim):");
    println!("{}", report.summary.table());
    let status =
        havenctl_json(&spec, node_ns.as_deref(), &["status"]).context("havenctl status")?;
    println!("node status (havenctl --json status):");
    println!("{}", serde_json::to_string_pretty(&status)?);
    drop(node);
    drop(lab);
    if report.summary.gave_up > 0 {
        anyhow::bail!("{} mobile nodes gave up", report.summary.gave_up);
    }
    println!("rack removed; done.");
    Ok(())
}

/// Sums every sample of `name` whose label set contains `needle`.
fn sum(text: &str, name: &str, needle: &str) -> f64 {
    let total: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(needle)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // An empty f64 sum is -0.0; show it as 0.
    total + 0.0
}
