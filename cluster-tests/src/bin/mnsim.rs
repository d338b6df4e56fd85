//! `mnsim`: the lightweight mobile-node simulator and registration load
//! generator (DESIGN.md §8, §9). The engine is
//! [`haven_cluster_tests::mnsim`]; this is its command line.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use haven_cluster_tests::mn::ReplayMode;
use haven_cluster_tests::mnsim::{self, DataConfig, HomeMode, SimConfig};
use haven_proto::mip::auth::Algorithm;

/// Exit code for a bad command line or configuration (EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Alg {
    /// HMAC-MD5 (RFC 5944 § 3.5.1), the default.
    HmacMd5,
    /// Legacy keyed MD5, prefix+suffix mode (RFC 2002).
    PrefixSuffixMd5,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Replay {
    /// NTP timestamps (RFC 5944 § 5.7.1).
    Timestamp,
    /// Nonces (RFC 5944 § 5.7.2).
    Nonce,
}

/// Simulates many Mobile IPv4 mobile nodes registering with a home agent.
///
/// Every mobile node has its own UDP socket (its own source port, as the
/// dispatcher hashes on it). They start at --rate per second with seeded
/// jitter, register (RFC 5944) with MN-HA authentication, retransmit with
/// exponential backoff, re-register at 80 % of the granted lifetime and
/// deregister at the end of the run.
///
/// Modes:
///   * fixed home addresses: --home-base A (mobile node i has A + i);
///   * pool mode (dynamic home addresses, RFC 2794): --nai 'mn{i}@example.com'
///     sends home address 0.0.0.0 and an MN-NAI per mobile node;
///   * NAT traversal: --udp-tunnel asks for RFC 3519 UDP tunnelling
///     (encapsulation 4); keepalives then run at the granted interval;
///   * data: --data-to CN:PORT sends tunnelled UDP from the home address to
///     the correspondent (needs --udp-tunnel);
///   * mobility: --move-after SECS gives every mobile node a new socket
///     (next --bind address, new port) and re-registers it.
///
/// The run ends after --duration, or without it once every mobile node has
/// settled its registration (and move). Output: a summary table (or --json),
/// optionally a JSON-lines --timeline and a --pcap capture.
#[derive(Debug, Parser)]
#[command(name = "mnsim", version, verbatim_doc_comment)]
struct Args {
    /// Home agent address (the VIP) with port.
    #[arg(long, default_value = "127.0.0.1:434")]
    ha: SocketAddrV4,
    /// Number of mobile nodes.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Mobile nodes started per second (0: all at once).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Start jitter, as a fraction of the start interval (0..=1).
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// Seed of the jitter and of nonces.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// First home address of fixed-address mode (mobile node i gets base+i).
    #[arg(long, default_value = "198.18.0.1", conflicts_with = "nai")]
    home_base: Ipv4Addr,
    /// Pool mode: NAI pattern, `{i}` replaced by the index; home address 0.0.0.0.
    #[arg(long)]
    nai: Option<String>,
    /// MN-HA Security Parameter Index.
    #[arg(long, default_value_t = 256)]
    spi: u32,
    /// MN-HA key as text.
    #[arg(long, conflicts_with = "key_hex")]
    key: Option<String>,
    /// MN-HA key in hexadecimal.
    #[arg(long)]
    key_hex: Option<String>,
    /// Authenticator algorithm.
    #[arg(long, value_enum, default_value = "hmac-md5")]
    algorithm: Alg,
    /// Requested lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    lifetime: u16,
    /// Set the T flag (reverse tunnelling, RFC 3024).
    #[arg(long)]
    reverse_tunnel: bool,
    /// Set the S flag (simultaneous bindings).
    #[arg(long)]
    simultaneous: bool,
    /// Clear the D flag (care-of address not co-located).
    #[arg(long)]
    no_colocated: bool,
    /// Send a UDP Tunnel Request (RFC 3519 § 3.1, encapsulation 4).
    #[arg(long)]
    udp_tunnel: bool,
    /// Set the F bit of the UDP Tunnel Request (force tunnelling).
    #[arg(long, requires = "udp_tunnel")]
    force_udp_tunnel: bool,
    /// Identification style.
    #[arg(long, value_enum, default_value = "timestamp")]
    replay: Replay,
    /// First retransmission timeout in ms (RFC 5944 § 3.6.3: at least 1000).
    #[arg(long, default_value_t = 1000)]
    initial_timeout_ms: u64,
    /// Retransmission timeout cap in ms.
    #[arg(long, default_value_t = 32000)]
    max_timeout_ms: u64,
    /// Transmissions of a request before giving up.
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
    /// Local (care-of) address to bind; repeat or comma-separate for several
    /// (mobile node i uses the (i mod n)-th).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    bind: Vec<Ipv4Addr>,
    /// Every mobile node moves (new socket, re-registration) SECS after its start.
    #[arg(long, value_name = "SECS")]
    move_after: Option<f64>,
    /// Run this many seconds, then deregister.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Do not deregister at the end.
    #[arg(long)]
    no_deregister: bool,
    /// Correspondent node for tunnelled data streams.
    #[arg(long, value_name = "ADDR:PORT", requires = "udp_tunnel")]
    data_to: Option<SocketAddrV4>,
    /// Data packets per second per mobile node.
    #[arg(long, default_value_t = 10.0)]
    data_rate: f64,
    /// Inner UDP payload bytes per data packet (24..=1400).
    #[arg(long, default_value_t = 64)]
    data_size: usize,
    /// Write a JSON-lines timeline: one {t, mn, event, code, latency_ms, attempt} per event.
    #[arg(long, value_name = "FILE")]
    timeline: Option<PathBuf>,
    /// Write a pcap (LINKTYPE_RAW) of every datagram sent and received.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn secs(v: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|e| format!("--{what}: {e}"))
}

fn config(a: &Args) -> Result<SimConfig, String> {
    let key = match (&a.key, &a.key_hex) {
        (Some(k), None) => k.as_bytes().to_vec(),
        (None, Some(h)) => hex::decode(h).map_err(|e| format!("--key-hex: {e}"))?,
        _ => return Err("one of --key or --key-hex is required".into()),
    };
    let mut c = SimConfig::new(a.ha, key);
    c.count = a.count;
    c.rate = a.rate;
    c.jitter = a.jitter;
    c.seed = a.seed;
    c.home = match &a.nai {
        Some(p) => HomeMode::Nai { pattern: p.clone() },
        None => HomeMode::Static { base: a.home_base },
    };
    c.spi = a.spi;
    c.algorithm = match a.algorithm {
        Alg::HmacMd5 => Algorithm::HmacMd5,
        Alg::PrefixSuffixMd5 => Algorithm::PrefixSuffixMd5,
    };
    c.lifetime = a.lifetime;
    c.reverse_tunnel = a.reverse_tunnel;
    c.simultaneous = a.simultaneous;
    c.colocated = !a.no_colocated;
    c.udp_tunnel = a.udp_tunnel;
    c.force_udp_tunnel = a.force_udp_tunnel;
    c.replay = match a.replay {
        Replay::Timestamp => ReplayMode::Timestamp,
        Replay::Nonce => ReplayMode::Nonce,
    };
    c.initial_timeout = Duration::from_millis(a.initial_timeout_ms);
    c.max_timeout = Duration::from_millis(a.max_timeout_ms);
    c.max_attempts = a.max_attempts;
    c.bind = a.bind.clone();
    c.move_after = a.move_after.map(|v| secs(v, "move-after")).transpose()?;
    c.duration = a.duration.map(|v| secs(v, "duration")).transpose()?;
    c.deregister = !a.no_deregister;
    c.data = a.data_to.map(|correspondent| DataConfig {
        correspondent,
        rate: a.data_rate,
        payload_len: a.data_size,
        first_id: 0,
    });
    c.timeline = a.timeline.clone();
    c.pcap = a.pcap.clone();
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mnsim: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    match mnsim::run(&cfg) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report.summary) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("mnsim: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.summary.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mnsim: {e}");
            ExitCode::FAILURE
        }
    }
}
