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
