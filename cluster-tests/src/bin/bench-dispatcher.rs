//! The dispatcher forwarding benchmark (DESIGN.md §9: "≥ 0.8 × the kernel's
//! own IP forwarding rate over the same hop, same sender, one run").
//!
//! ```text
//!  snd 198.18.10.2 ── 198.18.10.1 mid 198.18.11.1 ── 198.18.11.2 rcv (VIP 192.0.2.1 on lo)
//! ```
//!
//! (a) kernel: `snd` sends to `rcv`'s own address, `mid` forwards;
//! (b) dispatcher: `snd` sends to VIP:434, which `mid` holds; the real
//!     `dispatcher` binary (l2 mode, release build) on `mid` rebuilds each
//!     datagram and sends it to `rcv`'s MAC through AF_PACKET.
//! Same sender threads, same receiver socket type, same hop. Each figure is
//! datagrams *received* by `rcv` per second over a fixed window, at 64 and
//! 512 octets of UDP payload. Prints a table with the ratio and appends JSON
//! lines to `target/bench-results/dispatcher.jsonl`. Needs root.
//!
//! `bench-dispatcher [--seconds S] [--senders N]` (defaults 3 s, cores − 1 senders, at most 4).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use haven_cluster_tests::bench::{Recorder, release_binary};
use haven_cluster_tests::supervisor::{Process, Spec, wait_for};
use haven_cluster_tests::topo::{Lab, Topology, in_netns};
use haven_proto::vrrp::VrrpRepr;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const RCV: Ipv4Addr = Ipv4Addr::new(198, 18, 11, 2);
const MID_RCV: Ipv4Addr = Ipv4Addr::new(198, 18, 11, 1);
const SINK_PORT: u16 = 9000;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Counts datagrams arriving on `bind` in `ns` until `stop`.
fn sink(ns: String, bind: SocketAddrV4, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let _ = in_netns(&ns, move || {
        let s = UdpSocket::bind(bind)?;
        let sz: libc::c_int = 16 << 20;
        // SAFETY: SO_RCVBUF takes an int; pointer and length describe `sz`,
        // and the fd is the live socket `s`. A deep queue keeps the sink
        // from dropping bursts, which would blur the comparison.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const sz).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if s.recv(&mut buf).is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok::<(), std::io::Error>(())
    });
}

/// `senders` threads in `ns` blasting `len`-octet datagrams at `dst` from
/// distinct source ports for `secs`; returns datagrams `rcv` counted in the
/// window, per second.
fn measure(lab: &Lab, dst: SocketAddrV4, len: usize, senders: u64, secs: u64) -> f64 {
    let snd = lab.ns_name("snd").unwrap_or_default().to_owned();
    let rcv = lab.ns_name("rcv").unwrap_or_default().to_owned();
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sink_t = {
        let (c, s, ns) = (Arc::clone(&count), Arc::clone(&stop), rcv);
        let bind = SocketAddrV4::new(*dst.ip(), dst.port());
        std::thread::spawn(move || sink(ns, bind, c, s))
    };
    let go = Arc::new(AtomicBool::new(true));
    let threads: Vec<_> = (0..senders)
        .map(|_| {
            let (ns, go) = (snd.clone(), Arc::clone(&go));
            std::thread::spawn(move || {
                let _ = in_netns(&ns, move || {
                    let payload = vec![0x5au8; len];
                    let socks: Vec<UdpSocket> = (0..8)
                        .filter_map(|_| {
                            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
                            s.connect(dst).ok()?;
                            Some(s)
                        })
                        .collect();
                    while go.load(Ordering::Relaxed) {
                        for s in &socks {
                            for _ in 0..16 {
                                let _ = s.send(&payload);
                            }
                        }
                    }
                });
            })
        })
        .collect();
    // Warm-up (ARP, caches), then the window.
    std::thread::sleep(Duration::from_millis(500));
    let c0 = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = count.load(Ordering::Relaxed);
    let el = t0.elapsed().as_secs_f64();
    go.store(false, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sink_t.join();
    (c1 - c0) as f64 / el
}

fn main() -> anyhow::Result<()> {
    let secs = arg("--seconds", 3).clamp(1, 15);
    // One core is left for the dispatcher (or the kernel's forwarding work).
    let cores_default = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let senders = arg("--senders", cores_default.saturating_sub(1).clamp(1, 4)).clamp(1, 8);
    let started = Instant::now();
    let bin = release_binary("haven-dispatcher", "dispatcher")?;
    let mut rec = Recorder::open("dispatcher")?;
    let lab = Topology::builder()
        .host("snd")
        .host("mid")
        .host("rcv")
        .link(("snd", "198.18.10.2/24"), ("mid", "198.18.10.1/24"))
        .link(("mid", "198.18.11.1/24"), ("rcv", "198.18.11.2/24"))
        .route("snd", "default", "198.18.10.1")
        .route("rcv", "default", "198.18.11.1")
        .loopback_addr("rcv", "192.0.2.1/32")
        .dsr("rcv")
        .router("mid")
        .expire_after(Duration::from_secs(110))
        .build()?;
    let mid_if = lab.iface("mid", "rcv").unwrap_or("e1").to_owned();
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("bench-dispatcher.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dispatcher]\nvip = \"{VIP}\"\nmode = \"l2\"\ninterface = \"{mid_if}\"\n\
             address = \"{MID_RCV}\"\n\n[health]\nrise = 1\n\n[metrics]\nenabled = false\n\n\
             [[node]]\nid = 1\naddress = \"{RCV}\"\n"
        ),
    )?;
    let mid_ns = lab.ns_name("mid").unwrap_or_default().to_owned();
    let rcv_ns = lab.ns_name("rcv").unwrap_or_default().to_owned();
    let mut disp = Process::spawn(
        "dispatcher",
        Spec::new(&bin)
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn"),
        Some(&mid_ns),
    )?;
    // The "node" advertises from rcv, as ha-node's advertiser would.
    let adv_stop = Arc::new(AtomicBool::new(false));
    let adv = {
        let (ns, stop) = (rcv_ns.clone(), Arc::clone(&adv_stop));
        std::thread::spawn(move || {
            let _ = in_netns(&ns, move || {
                let s = UdpSocket::bind((RCV, 0))?;
                let a = VrrpRepr {
                    vrid: 1,
                    priority: 100,
                    max_advert_int_cs: 10,
                    addresses: vec![],
                };
                let b = a.to_bytes(RCV, MID_RCV).map_err(std::io::Error::other)?;
                while !stop.load(Ordering::Relaxed) {
                    let _ = s.send_to(&b, (MID_RCV, 4341));
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok::<(), std::io::Error>(())
            });
        })
    };
    // Ready when a datagram to the VIP reaches rcv (node Up, MAC resolved).
    let vip = SocketAddrV4::new(VIP, 434);
    wait_for("the dispatcher to forward", Duration::from_secs(20), || {
        measure(&lab, vip, 64, 1, 1) > 0.0
    })?;
    let kernel_dst = SocketAddrV4::new(RCV, SINK_PORT);
    let cores = rec.cores();
    let mut rows = Vec::new();
    for len in [64usize, 512] {
        let k = measure(&lab, kernel_dst, len, senders, secs);
        let d = measure(&lab, vip, len, senders, secs);
        rows.push((len, k, d));
    }
    adv_stop.store(true, Ordering::Relaxed);
    let _ = adv.join();
    let _ = disp.signal(libc::SIGTERM);
    let _ = disp.wait_exit(Duration::from_secs(5));
    drop(lab);

    println!(
        "dispatcher forwarding benchmark ({senders} sender threads, {secs} s windows, {cores} cores)"
    );
    println!(
        "{:>8} {:>16} {:>16} {:>8}",
        "payload", "kernel pps", "dispatcher pps", "ratio"
    );
    for (len, k, d) in &rows {
        let ratio = if *k > 0.0 { d / k } else { 0.0 };
        println!("{len:>7}B {k:>16.0} {d:>16.0} {ratio:>8.3}");
        for (figure, value, unit) in [
            (format!("kernel_forward_pps_{len}b"), *k, "packets/s"),
            (format!("dispatcher_forward_pps_{len}b"), *d, "packets/s"),
            (format!("dispatcher_to_kernel_ratio_{len}b"), ratio, "ratio"),
        ] {
            rec.figure(
                &figure,
                value,
                unit,
                serde_json::json!({ "payload_octets": len, "senders": senders }),
            )?;
        }
    }
    println!(
        "total {:.1} s; results appended to {}",
        started.elapsed().as_secs_f64(),
        rec.path().display()
    );
    Ok(())
}
