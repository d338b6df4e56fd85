//! `havenctl`: the operator's view of a haven node, over its admin API.
//!
//! ```text
//! havenctl [--admin HOST:PORT] status
//! havenctl bindings list [--realm NAME] [--limit N]
//! havenctl bindings show REALM HOME_ADDRESS
//! havenctl bindings remove REALM HOME_ADDRESS
//! ```
//! Tables by default, `--json` for scripts. Exit codes: 0 ok, 1 the node
//! refused the call (e.g. not found), 69 (EX_UNAVAILABLE) the node cannot
//! be reached.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use haven_proto::grpc::{self, admin_client::AdminClient};
use serde_json::json;
use tonic::transport::Channel;

/// BSD sysexits' EX_UNAVAILABLE.
const EX_UNAVAILABLE: u8 = 69;

#[derive(Debug, Parser)]
#[command(
    name = "havenctl",
    version,
    about = "Inspect and manage a haven home agent node"
)]
struct Cli {
    /// The node's admin API address.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:4340",
        env = "HAVEN_ADMIN"
    )]
    admin: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Node identity, replication mode, realms and binding counts.
    Status,
    /// Mobility bindings.
    #[command(subcommand)]
    Bindings(BindingsCmd),
}

#[derive(Debug, Subcommand)]
enum BindingsCmd {
    /// List bindings (all of them, page by page).
    List {
        /// Only this realm.
        #[arg(long)]
        realm: Option<String>,
        /// Stop after this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// One binding in detail.
    Show { realm: String, home_address: String },
    /// Remove a binding (replicated like a deregistration).
    Remove { realm: String, home_address: String },
}

fn main() -> ExitCode {
    // A CLI's output is often piped into `head`; die quietly on a closed
    // pipe like any Unix tool instead of panicking in println!.
    // SAFETY: restoring the default disposition of one signal before any
    // thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("havenctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let url = format!("http://{}", cli.admin);
    let endpoint = match Channel::from_shared(url) {
        Ok(e) => e.connect_timeout(std::time::Duration::from_secs(3)),
        Err(e) => {
            eprintln!("havenctl: bad admin address {:?}: {e}", cli.admin);
            return ExitCode::from(64);
        }
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("havenctl: cannot reach the node at {}: {e}", cli.admin);
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let mut client = AdminClient::new(channel);
    let res = match cli.cmd {
        Cmd::Status => status(&mut client, cli.json).await,
        Cmd::Bindings(BindingsCmd::List { realm, limit }) => {
            list(&mut client, realm.unwrap_or_default(), limit, cli.json).await
        }
        Cmd::Bindings(BindingsCmd::Show {
            realm,
            home_address,
        }) => client
            .get_binding(grpc::GetBindingRequest {
                realm,
                home_address,
            })
            .await
            .map(|b| print_bindings(&[b.into_inner()], cli.json)),
        Cmd::Bindings(BindingsCmd::Remove {
            realm,
            home_address,
        }) => client
            .remove_binding(grpc::RemoveBindingRequest {
                realm: realm.clone(),
                home_address: home_address.clone(),
            })
            .await
            .map(|r| {
                let removed = r.into_inner().removed;
                if cli.json {
                    println!("{}", json!({ "removed": removed }));
                } else if removed {
                    println!("removed {home_address} from {realm}");
                } else {
                    println!("no binding for {home_address} in {realm}");
                }
            }),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(status) if status.code() == tonic::Code::Unavailable => {
            eprintln!("havenctl: node unavailable: {}", status.message());
            ExitCode::from(EX_UNAVAILABLE)
        }
        Err(status) => {
            eprintln!("havenctl: {:?}: {}", status.code(), status.message());
            ExitCode::FAILURE
        }
    }
}

async fn status(client: &mut AdminClient<Channel>, as_json: bool) -> Result<(), tonic::Status> {
    let s = client.status(grpc::StatusRequest {}).await?.into_inner();
    if as_json {
        let realms: Vec<_> = s
            .realms
            .iter()
            .map(|r| json!({"name": r.name, "vip": r.vip, "bindings": r.bindings, "pool_free": r.pool_free}))
            .collect();
        println!(
            "{}",
            json!({
                "node_id": s.node_id, "version": s.version, "mode": s.mode().as_str_name(),
                "role": s.role, "draining": s.draining, "uptime_seconds": s.uptime_seconds,
                "term": s.term, "leader_id": s.leader_id, "commit_index": s.commit_index,
                "applied_index": s.applied_index, "members": s.members, "realms": realms,
            })
        );
        return Ok(());
    }
    println!("node       {}  (haven {})", s.node_id, s.version);
    println!("mode       {}  role {}", s.mode().as_str_name(), s.role);
    println!("uptime     {} s", s.uptime_seconds);
    println!("applied    {}", s.applied_index);
    println!();
    println!(
        "{:<12} {:<16} {:>10} {:>10}",
        "REALM", "VIP", "BINDINGS", "POOL FREE"
    );
    for r in &s.realms {
        println!(
            "{:<12} {:<16} {:>10} {:>10}",
            r.name, r.vip, r.bindings, r.pool_free
        );
    }
    Ok(())
}

async fn list(
    client: &mut AdminClient<Channel>,
    realm: String,
    limit: Option<usize>,
    as_json: bool,
) -> Result<(), tonic::Status> {
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let page = client
            .list_bindings(grpc::ListBindingsRequest {
                realm: realm.clone(),
                after: after.clone(),
                limit: 1000,
            })
            .await?
            .into_inner();
        all.extend(page.bindings);
        if page.next.is_empty() || limit.is_some_and(|l| all.len() >= l) {
            break;
        }
        after = page.next;
    }
    if let Some(l) = limit {
        all.truncate(l);
    }
    print_bindings(&all, as_json);
    Ok(())
}

fn print_bindings(bindings: &[grpc::Binding], as_json: bool) {
    if as_json {
        let rows: Vec<_> = bindings
            .iter()
            .map(|b| {
                json!({
                    "realm": b.realm, "home_address": b.home_address, "nai": b.nai,
                    "last_identification": b.last_identification,
                    "care_of": b.care_of.iter().map(|c| json!({
                        "care_of_address": c.care_of_address, "remaining": c.remaining,
                        "granted": c.granted, "encapsulation": c.encapsulation,
                        "nat_mapping": c.nat_mapping, "reverse_tunnel": c.reverse_tunnel,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!(
        "{:<8} {:<16} {:<16} {:>6} {:<9} {:<22} NAI",
        "REALM", "HOME ADDRESS", "CARE-OF", "LEFT", "ENCAP", "NAT MAPPING"
    );
    for b in bindings {
        for c in &b.care_of {
            println!(
                "{:<8} {:<16} {:<16} {:>6} {:<9} {:<22} {}",
                b.realm,
                b.home_address,
                c.care_of_address,
                c.remaining,
                c.encapsulation,
                c.nat_mapping,
                b.nai
            );
        }
    }
}
