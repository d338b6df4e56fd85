//! The `dispatcher` daemon: `dispatcher --config FILE` runs it,
//! `--check-config` validates the file and exits (64 on a bad one,
//! EX_USAGE, STYLE.md §2). SIGTERM or SIGINT stops it gracefully: the VRRP
//! Master sends priority 0 and gives the VIP up first [RFC 5798 § 6.4.3].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use haven_dispatcher::config::Config;
use haven_dispatcher::driver;

/// The haven UDP source-port dispatcher (DESIGN.md §5).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The TOML configuration (see ops/dispatcher.example.toml).
    #[arg(long, short, env = "HAVEN_DISPATCHER_CONFIG")]
    config: PathBuf,
    /// Validate the configuration and exit (0 valid, 64 invalid).
    #[arg(long)]
    check_config: bool,
}

const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dispatcher: {}: {e}", cli.config.display());
            return ExitCode::from(EX_USAGE);
        }
    };
    if cli.check_config {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dispatcher: tokio runtime: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    match rt.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    if config.metrics.enabled {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(config.metrics.listen)
            .install()?;
        metrics::gauge!("haven_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    }
    tracing::info!(
        vip = %config.vip(),
        mode = ?config.dispatcher.mode,
        nodes = config.nodes.len(),
        "dispatcher starting"
    );
    let running = driver::start(config)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    tokio::task::spawn_blocking(move || running.shutdown()).await?;
    tracing::info!("dispatcher stopped");
    Ok(())
}
