//! The dispatcher's encapsulating mode, node side, with the real daemon
//! (DESIGN.md § 5, `ha-node/src/ingress.rs`): a fake dispatcher on loopback
//! wraps a mobile node's Registration Request in a `ToNode` frame to the
//! node's `[dispatch] encap_listen`; the node answers with a `ToClient`
//! frame back to that dispatcher (not from its VIP socket), which the mobile
//! node accepts. The node also advertises its health to the same socket.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use haven_cluster_tests::fleet::{DispatchSpec, NodeSpec, RealmSpec};
use haven_cluster_tests::mn::{Event, MnConfig, MobileNode};
use haven_cluster_tests::mnsim::unix_now;
use haven_cluster_tests::supervisor::{Process, Spec, await_metric, free_port};
use haven_proto::dispatch::{DispatchPacket, DispatchRepr, Kind};

const KEY: &[u8] = b"dispatch-encap-key";
const HOA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const BOUND: Duration = Duration::from_secs(20);

#[test]
fn encap_frames_in_replies_back_through_the_dispatcher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disp = UdpSocket::bind("127.0.0.1:0").expect("bind the fake dispatcher");
    disp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let SocketAddr::V4(disp_addr) = disp.local_addr().expect("addr") else {
        panic!("v4")
    };
    let vip = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 121), free_port());
    let encap = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 122), free_port());
    let lo = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let spec = NodeSpec::new(1, lo(free_port()), lo(free_port()))
        .realm(
            RealmSpec {
                port: vip.port(),
                ..RealmSpec::new("lab", *vip.ip(), "198.51.100.0/24")
            }
            .with_home_address_sas(HOA, 1, 256, KEY),
        )
        .dispatch(DispatchSpec {
            mode: "encap",
            encap_listen: Some(encap),
            ..DispatchSpec::l2(*encap.ip(), vec![disp_addr], 50)
        });
    let config = spec.write(dir.path()).expect("write");
    let _node = Process::spawn(
        "ha-node-encap",
        Spec::new(env!("CARGO_BIN_EXE_ha-node"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info"),
        None,
    )
    .expect("spawn");
    await_metric(
        &spec.metrics_url(),
        None,
        "haven_build_info",
        &[],
        |v| v == 1.0,
        BOUND,
    )
    .expect("node starts");

    // The mobile node as the dispatcher sees it (after a NAT).
    let mn_addr: SocketAddrV4 = "203.0.113.2:40000".parse().expect("addr");
    let mut cfg = MnConfig::new(HOA, *vip.ip(), Ipv4Addr::new(203, 0, 113, 2), 256, KEY);
    cfg.home_agent_port = vip.port();
    let mut mn = MobileNode::new(cfg);
    mn.register(unix_now());
    let deadline = Instant::now() + BOUND;
    let mut accepted = false;
    let mut adverts = 0;
    let mut buf = [0u8; 4096];
    while !accepted && Instant::now() < deadline {
        let now = unix_now();
        if mn.poll_timeout().is_some_and(|t| t <= now) {
            mn.handle_timeout(now);
        }
        while let Some((dst, bytes)) = mn.poll_transmit() {
            assert_eq!(dst, vip);
            let frame = DispatchRepr {
                kind: Kind::ToNode,
                src: mn_addr,
                dst,
            }
            .to_bytes(&bytes)
            .expect("frame");
            disp.send_to(&frame, encap).expect("send");
        }
        let Ok((n, SocketAddr::V4(from))) = disp.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(from.ip(), encap.ip(), "only the node sends here");
        if from != encap {
            // The health advert, from the advertiser's own socket.
            adverts += 1;
            continue;
        }
        let p = DispatchPacket::new_checked(&buf[..n]).expect("a frame");
        let r = DispatchRepr::parse(&p).expect("a well-formed frame");
        assert_eq!((r.kind, r.src, r.dst), (Kind::ToClient, vip, mn_addr));
        let _ = mn.handle(unix_now(), r.src, p.payload());
        while let Some(ev) = mn.poll_event() {
            if matches!(ev, Event::Accepted { .. }) {
                accepted = true;
            }
        }
    }
    assert!(
        accepted,
        "the registration was accepted through the dispatcher"
    );
    assert!(adverts > 0, "the node advertised its health");
}
