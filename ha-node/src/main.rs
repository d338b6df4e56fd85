//! `ha-node`: the haven home agent daemon.
//!
//! ```text
//! ha-node --config /etc/haven/ha-node.toml
//! ha-node --config FILE --check-config     # validate and exit
//! ```
//! Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 64 (EX_USAGE) for a
//! configuration that does not load or validate, 1 for a runtime failure
//! (e.g. an address that cannot be bound).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use haven_ha_node::config::Config;
use tracing_subscriber::EnvFilter;

/// BSD sysexits' EX_USAGE, as linkerd2-proxy uses for bad configuration.
const EX_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "ha-node", version, about = "haven Mobile IPv4 home agent node")]
struct Cli {
    /// The TOML configuration (see ops/ha-node.example.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Load and validate the configuration, print a summary, and exit.
    #[arg(long)]
    check_config: bool,
}

/// glibc's mmap threshold for the daemon (bytes): allocations at least
/// this large get their own mapping, returned to the kernel when freed.
/// glibc's default is the same 128 KiB but *dynamic*: each free of a mapped
/// chunk larger than the threshold raises it to that chunk's size (up to
/// 32 MiB) and the heap's trim threshold to twice that. After the first
/// snapshot (3.4 MB at 100 000 bindings), grown hash-table shard or large
/// raft-engine batch, every later one comes from the heap, and the freed
/// ones stay there as the process's high water. Fixing the threshold (any
/// `mallopt` of it turns the dynamic adjustment off) measured, 100 000
/// bindings, three interleaved rounds: raft member RSS growth 455–723 →
/// 238–257 B per binding (`bench-registration`, `bench-snapshot`); one node
/// and a joiner unchanged (172–177, 240–254); registration rates within the
/// shared machine's noise. An operator's own `MALLOC_MMAP_THRESHOLD_` (or a
/// `GLIBC_TUNABLES` naming it) wins. `MALLOC_ARENA_MAX=1` alone gave
/// 406–479 B and `=2` 523–630 B, so the arena count is left to glibc (and
/// to `MALLOC_ARENA_MAX`).
const MMAP_THRESHOLD: usize = 128 * 1024;

/// The allocator settings above, before the runtime starts its threads.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let operator_set = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
            || std::env::var_os("GLIBC_TUNABLES")
                .is_some_and(|t| t.to_string_lossy().contains("mmap_threshold"));
        if !operator_set {
            let v = libc::c_int::try_from(MMAP_THRESHOLD).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt takes plain integers and only sets glibc's
            // own parameters (under its lock); no pointers are involved.
            if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, v) } != 1 {
                tracing::warn!(MMAP_THRESHOLD, "mallopt(M_MMAP_THRESHOLD) refused");
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ha-node: {}: {e}", cli.config.display());
            return ExitCode::from(EX_USAGE);
        }
    };
    if cli.check_config {
        let dispatch = match &config.dispatch {
            Some(d) => format!(
                ", dispatch {:?} to {}",
                d.mode,
                d.advertise_to
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            None => String::new(),
        };
        println!(
            "{}: ok (node {}, {} realm(s): {})",
            cli.config.display(),
            config.node.id,
            config.realm.len(),
            config
                .realm
                .iter()
                .map(|r| format!("{} {}:{}", r.name, r.vip, r.port))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // A second line, so the first stays what scripts already match.
        println!("replication: {}{dispatch}", config.cluster.mode.as_str());
        return ExitCode::SUCCESS;
    }

    tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ha-node")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ha-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(haven_ha_node::server::run(
        config,
        haven_ha_node::server::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ha-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}
