//! The home agent data plane benchmark (issue "Data plane", item 4).
//!
//! The lab of `tests/dataplane.rs` (nat_scenario(1) plus `mn2` on `inet`),
//! one `ha-node` with the data plane on and a mobile node on `mn2`
//! registered with IP in IP (HoA 198.51.100.11, CoA 198.18.2.2):
//!
//! * forward, data plane: `cn` → HoA; `rtr` routes the home prefix to
//!   node-1, whose TUN → IP in IP → `rtr` → `inet` → `mn2` (raw socket);
//! * forward, kernel: `cn` → 198.18.3.2 (an address of `mn2`), which `rtr`
//!   (policy route by input interface) sends to node-1, whose kernel
//!   forwards it back to `rtr` → `inet` → `mn2`: the same hops;
//! * reverse, data plane: `mn2` → IP in IP to the VIP → node-1 decapsulates
//!   → TUN → kernel → `rtr` → `cn`;
//! * reverse, kernel: `mn2` → 198.18.4.2 (an address of `cn`) through node-1
//!   the same way.
//!
//! Each figure is packets received per second over a fixed window, at 64 and
//! 1400 octets of (inner) IPv4 packet. Prints a table with the ratio and
//! appends JSON lines to `target/bench-results/dataplane.jsonl`. Needs root.
//!
//! `bench-dataplane [--seconds S]` (default 3). The node binary is the
//! release build unless `HAVEN_NODE_BIN` names another.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use haven_cluster_tests::fleet::{NodeSpec, RealmSpec};
use haven_cluster_tests::mn::{Event, MnConfig, MobileNode};
use haven_cluster_tests::mnsim::unix_now;
use haven_cluster_tests::supervisor::{Process, Spec, await_metric, wait_for};
use haven_cluster_tests::topo::{Lab, in_netns, racks};
use haven_proto::ip;
use haven_proto::udptun::{self, Kind};

const KEY: &[u8] = b"dataplane-bench-key";
const SPI: u32 = 1000;
const HOA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const MN2: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const MN2_KERNEL: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
const CN_KERNEL: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 2);
const PORT: u16 = 9000;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

fn node_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("HAVEN_NODE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "haven-ha-node",
            "--bin",
            "ha-node",
        ])
        .current_dir(workspace())
        .status()?;
    anyhow::ensure!(st.success(), "cargo build --release -p haven-ha-node");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    Ok(target.join("release").join("ha-node"))
}

fn set_rcvbuf(fd: i32) {
    let sz: libc::c_int = 16 << 20;
    // SAFETY: SO_RCVBUFFORCE takes an int; pointer and length describe `sz`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const sz).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// A raw protocol-4 socket in the calling thread's namespace.
fn raw_ipip() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ip::protocol::IPIP),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn timeout(fd: i32) {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: SO_RCVTIMEO reads one timeval that outlives the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

#[derive(Clone, Copy)]
enum Sink {
    Udp(SocketAddrV4),
    Ipip,
}

#[derive(Clone, Copy)]
enum Source {
    Udp(SocketAddrV4),
    /// The inner packet from the HoA to cn:9000 as IP in IP to the VIP.
    Ipip,
}

fn sink(ns: String, how: Sink, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let _ = in_netns(&ns, move || {
        let fd: OwnedFd = match how {
            Sink::Udp(a) => OwnedFd::from(UdpSocket::bind(a)?),
            Sink::Ipip => raw_ipip()?,
        };
        set_rcvbuf(fd.as_raw_fd());
        timeout(fd.as_raw_fd());
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok::<(), std::io::Error>(())
    });
}

fn send_loop(how: Source, len: usize, go: &AtomicBool) -> std::io::Result<()> {
    match how {
        Source::Udp(dst) => {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(dst)?;
            let payload = vec![0x5a; len - ip::ipv4_udp_len(0)];
            while go.load(Ordering::Relaxed) {
                let _ = s.send(&payload);
            }
        }
        Source::Ipip => {
            let fd = raw_ipip()?;
            let payload = vec![0x5a; len - ip::ipv4_udp_len(0)];
            let mut inner = vec![0u8; len];
            ip::write_ipv4_udp(
                &mut inner,
                SocketAddrV4::new(HOA, 4343),
                SocketAddrV4::new(racks::plan::CN, PORT),
                &payload,
            );
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(racks::plan::VIP).to_be(),
                },
                sin_zero: [0; 8],
            };
            while go.load(Ordering::Relaxed) {
                // SAFETY: `inner` readable; `sa` a sockaddr_in of that size.
                unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        inner.as_ptr().cast(),
                        inner.len(),
                        0,
                        (&raw const sa).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
            }
        }
    }
    Ok(())
}

/// One sender thread in `from` for `secs`; packets per second `to` counted.
fn measure(
    lab: &Lab,
    from: &str,
    how: Source,
    to: &str,
    sink_how: Sink,
    len: usize,
    secs: u64,
) -> f64 {
    let snd = lab.ns_name(from).unwrap_or_default().to_owned();
    let rcv = lab.ns_name(to).unwrap_or_default().to_owned();
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sink_t = {
        let (c, s) = (Arc::clone(&count), Arc::clone(&stop));
        std::thread::spawn(move || sink(rcv, sink_how, c, s))
    };
    std::thread::sleep(Duration::from_millis(100));
    let go = Arc::new(AtomicBool::new(true));
    let sender = {
        let go = Arc::clone(&go);
        std::thread::spawn(move || {
            let _ = in_netns(&snd, || send_loop(how, len, &go));
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let c0 = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = count.load(Ordering::Relaxed);
    let el = t0.elapsed().as_secs_f64();
    go.store(false, Ordering::Relaxed);
    let _ = sender.join();
    stop.store(true, Ordering::Relaxed);
    let _ = sink_t.join();
    (c1 - c0) as f64 / el
}

fn register(ns: &str) -> anyhow::Result<()> {
    let sock = in_netns(ns, || UdpSocket::bind(SocketAddrV4::new(MN2, 0)))??;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut cfg = MnConfig::new(HOA, racks::plan::VIP, MN2, SPI, KEY);
    cfg.reverse_tunnel = true;
    cfg.lifetime = 1800;
    let mut core = MobileNode::new(cfg);
    core.register(unix_now());
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(15) {
        while let Some((dst, b)) = core.poll_transmit() {
            sock.send_to(&b, dst)?;
        }
        while let Some(ev) = core.poll_event() {
            match ev {
                Event::Accepted { .. } => return Ok(()),
                Event::Denied { code } => anyhow::bail!("registration denied: {code:?}"),
                Event::GaveUp => anyhow::bail!("registration gave up"),
                _ => {}
            }
        }
        match sock.recv_from(&mut buf) {
            Ok((n, SocketAddr::V4(from)))
                if udptun::classify(&buf[..n]) == Kind::RegistrationReply =>
            {
                let _ = core.handle(unix_now(), from, &buf[..n]);
            }
            Ok(_) => {}
            Err(_) => core.handle_timeout(unix_now()),
        }
    }
    anyhow::bail!("no registration reply")
}

fn main() -> anyhow::Result<()> {
    let secs = arg("--seconds", 3).clamp(1, 15);
    let started = Instant::now();
    let bin = node_bin()?;
    let node = racks::node_addr(1).to_string();
    let lab = racks::nat_scenario(1)
        .host("mn2")
        .link(("inet", "198.18.2.1/24"), ("mn2", "198.18.2.2/24"))
        .route("mn2", "default", "198.18.2.1")
        .route("rtr", "198.51.100.0/24", &node)
        .route("inet", "198.18.3.0/24", "198.18.2.2")
        .route("rtr", "198.18.4.0/24", "198.18.1.2")
        .loopback_addr("mn2", "198.18.3.2/32")
        .loopback_addr("cn", "198.18.4.2/32")
        .router("node-1")
        .expire_after(Duration::from_secs(150))
        .build()?;
    // The kernel baseline's hairpin: what enters rtr from cn for
    // 198.18.3.0/24, or from inet for 198.18.4.0/24, goes to node-1 first.
    let from_cn = lab.iface("rtr", "cn").unwrap_or_default().to_owned();
    let from_inet = lab.iface("rtr", "inet").unwrap_or_default().to_owned();
    for cmd in [
        vec![
            "ip",
            "route",
            "add",
            "198.18.3.0/24",
            "via",
            &node,
            "table",
            "100",
        ],
        vec![
            "ip",
            "route",
            "add",
            "198.18.4.0/24",
            "via",
            &node,
            "table",
            "100",
        ],
        vec![
            "ip",
            "rule",
            "add",
            "iif",
            &from_cn,
            "to",
            "198.18.3.0/24",
            "lookup",
            "100",
        ],
        vec![
            "ip",
            "rule",
            "add",
            "iif",
            &from_inet,
            "to",
            "198.18.4.0/24",
            "lookup",
            "100",
        ],
    ] {
        lab.exec("rtr", cmd)?;
    }
    let spec = NodeSpec::new(1, "127.0.0.1:4340".parse()?, "127.0.0.1:9434".parse()?).realm(
        RealmSpec::new("home", racks::plan::VIP, "198.51.100.0/24")
            .with_home_address_sas(HOA, 1, SPI, KEY),
    );
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node-1.toml");
    std::fs::write(
        &config,
        format!("{}\n[dataplane]\nenabled = true\n", spec.toml()),
    )?;
    let node_ns = lab.ns_name("node-1").unwrap_or_default().to_owned();
    let mut proc = Process::spawn(
        "ha-node-1",
        Spec::new(&bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn"),
        Some(&node_ns),
    )?;
    await_metric(
        &spec.metrics_url(),
        Some(&node_ns),
        "haven_build_info",
        &[],
        |v| v == 1.0,
        Duration::from_secs(20),
    )?;
    register(lab.ns_name("mn2").unwrap_or_default())?;
    wait_for("the data plane to forward", Duration::from_secs(10), || {
        measure(
            &lab,
            "cn",
            Source::Udp(SocketAddrV4::new(HOA, PORT)),
            "mn2",
            Sink::Ipip,
            64,
            1,
        ) > 0.0
    })?;

    let rev = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace())
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cmdline = std::env::args().collect::<Vec<_>>().join(" ");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    for len in [64usize, 1400] {
        let fk = measure(
            &lab,
            "cn",
            Source::Udp(SocketAddrV4::new(MN2_KERNEL, PORT)),
            "mn2",
            Sink::Udp(SocketAddrV4::new(MN2_KERNEL, PORT)),
            len,
            secs,
        );
        let fd = measure(
            &lab,
            "cn",
            Source::Udp(SocketAddrV4::new(HOA, PORT)),
            "mn2",
            Sink::Ipip,
            len,
            secs,
        );
        let rk = measure(
            &lab,
            "mn2",
            Source::Udp(SocketAddrV4::new(CN_KERNEL, PORT)),
            "cn",
            Sink::Udp(SocketAddrV4::new(CN_KERNEL, PORT)),
            len,
            secs,
        );
        let rd = measure(
            &lab,
            "mn2",
            Source::Ipip,
            "cn",
            Sink::Udp(SocketAddrV4::new(racks::plan::CN, PORT)),
            len,
            secs,
        );
        rows.push((len, "forward", fk, fd));
        rows.push((len, "reverse", rk, rd));
    }
    let _ = proc.signal(libc::SIGTERM);
    let _ = proc.wait_exit(Duration::from_secs(5));
    drop(lab);

    println!(
        "data plane benchmark (1 sender thread, {secs} s windows, {cores} cores, {})",
        bin.display()
    );
    println!(
        "{:>6} {:>8} {:>14} {:>14} {:>8}",
        "packet", "dir", "kernel pps", "dataplane pps", "ratio"
    );
    let dir = workspace().join("target").join("bench-results");
    std::fs::create_dir_all(&dir)?;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("dataplane.jsonl"))?;
    for (len, d, k, v) in &rows {
        let ratio = if *k > 0.0 { v / k } else { 0.0 };
        println!("{len:>5}B {d:>8} {k:>14.0} {v:>14.0} {ratio:>8.3}");
        for (figure, value, unit) in [
            (format!("kernel_{d}_pps_{len}b"), *k, "packets/s"),
            (format!("dataplane_{d}_pps_{len}b"), *v, "packets/s"),
            (
                format!("dataplane_{d}_to_kernel_ratio_{len}b"),
                ratio,
                "ratio",
            ),
        ] {
            let line = serde_json::json!({
                "figure": figure,
                "value": value,
                "unit": unit,
                "command": cmdline,
                "git_rev": rev,
                "cores": cores,
                "packet_octets": len,
                "node_binary": bin.display().to_string(),
            });
            writeln!(out, "{line}")?;
        }
    }
    println!(
        "total {:.1} s; results appended to target/bench-results/dataplane.jsonl",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
