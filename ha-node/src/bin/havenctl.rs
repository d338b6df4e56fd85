//! `havenctl`: the operator's view of a haven node, over its admin API.
//!
//! ```text
//! havenctl [--admin HOST:PORT] status
//! havenctl bindings list [--realm NAME] [--limit N]
//! havenctl bindings show REALM HOME_ADDRESS|NAI
//! havenctl bindings remove REALM HOME_ADDRESS
//! havenctl drain [--undo]
//! havenctl leader transfer NODE_ID
//! havenctl members add NODE_ID HOST:PORT
//! havenctl members remove NODE_ID
//! ```
//! A node whose admin API is protected (docs/security.md) takes
//! `--token-file FILE` (a bearer token) or `--ca/--cert/--key` (mutual
//! TLS; `--server-name` is the name in the node's certificate, by default
//! the host of `--admin`); each also from the environment
//! (`HAVEN_TOKEN_FILE`, `HAVEN_CA`, `HAVEN_CERT`, `HAVEN_KEY`).
//!
//! Tables by default, `--json` for scripts. Exit codes: 0 ok, 1 the node
//! refused the call (e.g. not found), 69 (EX_UNAVAILABLE) the node cannot
//! be reached.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use haven_proto::grpc::{self, admin_client::AdminClient};
use serde_json::json;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>` to every call (when a token file
/// was given).
#[derive(Clone)]
struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = AdminClient<InterceptedService<Channel, Auth>>;

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
    /// A file holding the admin bearer token (`[admin] token_file` or
    /// `read_token_file` on the node).
    #[arg(long, global = true, env = "HAVEN_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// TLS: the CA that signed the node's admin certificate (PEM).
    #[arg(long, global = true, env = "HAVEN_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// TLS: this client's certificate (PEM), signed by `[admin.tls] ca`.
    #[arg(long, global = true, env = "HAVEN_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// TLS: this client's private key (PEM).
    #[arg(long, global = true, env = "HAVEN_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// TLS: the name in the node's certificate (default: the host of
    /// `--admin`).
    #[arg(long, global = true, value_name = "NAME")]
    server_name: Option<String>,
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
    /// Stop taking new mobile nodes (health adverts at priority 0).
    Drain {
        /// Take new mobile nodes again.
        #[arg(long)]
        undo: bool,
    },
    /// Raft leadership.
    #[command(subcommand)]
    Leader(LeaderCmd),
    /// Raft membership (call on every member, the leader last).
    #[command(subcommand)]
    Members(MembersCmd),
}

#[derive(Debug, Subcommand)]
enum LeaderCmd {
    /// Hand leadership to voter NODE_ID (call on the leader).
    Transfer { node_id: u64 },
}

#[derive(Debug, Subcommand)]
enum MembersCmd {
    /// Add a voter: its id and the host:port of its [cluster] listen.
    Add { node_id: u64, address: String },
    /// Remove a voter.
    Remove { node_id: u64 },
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
    /// One binding in detail, by home address or by NAI.
    Show {
        realm: String,
        /// A home address, or an MN's NAI (RFC 2794).
        #[arg(value_name = "HOME_ADDRESS|NAI")]
        binding: String,
    },
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

fn read(what: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// The endpoint and the token interceptor from the command line.
fn connection(cli: &Cli) -> Result<(tonic::transport::Endpoint, Auth), String> {
    let tls = match (&cli.ca, &cli.cert, &cli.key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => {
            let host = cli
                .admin
                .rsplit_once(':')
                .map_or(cli.admin.as_str(), |(h, _)| h)
                .trim_matches(['[', ']']);
            let name = cli.server_name.clone().unwrap_or_else(|| host.to_owned());
            Some(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(read("--ca", ca)?))
                    .identity(tonic::transport::Identity::from_pem(
                        read("--cert", cert)?,
                        read("--key", key)?,
                    ))
                    .domain_name(name),
            )
        }
        _ => return Err("--ca, --cert and --key go together".into()),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{}", cli.admin))
        .map_err(|e| format!("bad admin address {:?}: {e}", cli.admin))?
        .connect_timeout(std::time::Duration::from_secs(3));
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    let token = match &cli.token_file {
        Some(f) => {
            let bytes = read("--token-file", f)?;
            let token = String::from_utf8_lossy(&bytes).trim().to_owned();
            // Never echo the token itself in an error.
            let v = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| format!("--token-file {}: not a valid token", f.display()))?;
            Some(v)
        }
        None => None,
    };
    Ok((endpoint, Auth(token)))
}

async fn run(cli: Cli) -> ExitCode {
    let (endpoint, auth) = match connection(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("havenctl: {e}");
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
    let mut client = AdminClient::with_interceptor(channel, auth);
    let res = match cli.cmd {
        Cmd::Status => status(&mut client, cli.json).await,
        Cmd::Bindings(BindingsCmd::List { realm, limit }) => {
            list(&mut client, realm.unwrap_or_default(), limit, cli.json).await
        }
        Cmd::Bindings(BindingsCmd::Show { realm, binding }) => {
            show(&mut client, realm, binding, cli.json).await
        }
        Cmd::Drain { undo } => client
            .drain(grpc::DrainRequest { drain: !undo })
            .await
            .map(|r| {
                let draining = r.into_inner().draining;
                if cli.json {
                    println!("{}", json!({ "draining": draining }));
                } else if draining {
                    println!("draining: new mobile nodes go elsewhere");
                } else {
                    println!("not draining");
                }
            }),
        Cmd::Leader(LeaderCmd::Transfer { node_id }) => client
            .transfer_leadership(grpc::TransferLeadershipRequest { to: node_id })
            .await
            .map(|r| {
                let leader = r.into_inner().leader_id;
                if cli.json {
                    println!("{}", json!({ "leader_id": leader }));
                } else {
                    println!("leader is now node {leader}");
                }
            }),
        Cmd::Members(m) => {
            let reply = match m {
                MembersCmd::Add { node_id, address } => {
                    client
                        .add_member(grpc::AddMemberRequest { node_id, address })
                        .await
                }
                MembersCmd::Remove { node_id } => {
                    client
                        .remove_member(grpc::RemoveMemberRequest { node_id })
                        .await
                }
            };
            reply.map(|r| {
                let members = r.into_inner().members;
                if cli.json {
                    println!("{}", json!({ "members": members }));
                } else {
                    let list: Vec<String> = members.iter().map(u64::to_string).collect();
                    println!("members: {}", list.join(" "));
                }
            })
        }
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

async fn status(client: &mut Client, as_json: bool) -> Result<(), tonic::Status> {
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

/// `bindings show`: by home address (one call), or by NAI (the realm's
/// bindings, page by page, until one carries it).
async fn show(
    client: &mut Client,
    realm: String,
    key: String,
    as_json: bool,
) -> Result<(), tonic::Status> {
    if key.parse::<std::net::Ipv4Addr>().is_ok() {
        let b = client
            .get_binding(grpc::GetBindingRequest {
                realm,
                home_address: key,
            })
            .await?
            .into_inner();
        print_bindings(&[b], as_json);
        return Ok(());
    }
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
        if let Some(b) = page.bindings.into_iter().find(|b| b.nai == key) {
            print_bindings(&[b], as_json);
            return Ok(());
        }
        if page.next.is_empty() {
            return Err(tonic::Status::not_found(format!(
                "no binding for NAI {key:?} in {realm}"
            )));
        }
        after = page.next;
    }
}

async fn list(
    client: &mut Client,
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
