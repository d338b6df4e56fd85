//! The real `dispatcher` binary in encap mode on loopback, no root needed:
//! two fake nodes advertise health (VRRPv3-format, unicast UDP) and answer
//! encapsulated datagrams; mobile-node sockets must get every reply from
//! VIP:port, the flows must spread over both nodes, and when one node falls
//! silent all flows must move to the other (DESIGN.md §5). Also: a bad
//! configuration makes `--check-config` exit 64.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haven_cluster_tests::supervisor::free_port;
use haven_proto::dispatch::{DispatchPacket, DispatchRepr, Kind};
use haven_proto::vrrp::VrrpRepr;

const BIN: &str = env!("CARGO_BIN_EXE_dispatcher");
const MNS: usize = 40;

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("v6"),
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct FakeNode {
    addr: Ipv4Addr,
    encap: UdpSocket,
    advert: UdpSocket,
}

impl FakeNode {
    fn new(addr: Ipv4Addr) -> Self {
        let encap = UdpSocket::bind((addr, 0)).unwrap();
        encap.set_nonblocking(true).unwrap();
        let advert = UdpSocket::bind((addr, 0)).unwrap();
        Self {
            addr,
            encap,
            advert,
        }
    }

    fn advertise(&self, to: SocketAddrV4) {
        let a = VrrpRepr {
            vrid: 1,
            priority: 100,
            max_advert_int_cs: 10,
            addresses: vec![],
        };
        let b = a.to_bytes(self.addr, *to.ip()).unwrap();
        self.advert.send_to(&b, to).unwrap();
    }

    /// Answers every queued frame with "reply:" + payload; returns the
    /// mobile nodes it saw. Asserts the header is what the dispatcher must
    /// write.
    fn serve(&self, vip: SocketAddrV4) -> Vec<SocketAddrV4> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.encap.recv_from(&mut buf) {
            let p = DispatchPacket::new_checked(&buf[..n]).expect("header");
            let r = DispatchRepr::parse(&p).expect("valid header");
            assert_eq!(r.kind, Kind::ToNode);
            assert_eq!(r.dst, vip);
            let mut reply = b"reply:".to_vec();
            reply.extend_from_slice(p.payload());
            let f = DispatchRepr {
                kind: Kind::ToClient,
                src: vip,
                dst: r.src,
            }
            .to_bytes(&reply)
            .unwrap();
            self.encap.send_to(&f, from).unwrap();
            seen.push(r.src);
        }
        seen
    }
}

fn scrape(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn encap_mode_spreads_answers_from_the_vip_and_fails_over() {
    let vip = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port());
    let health = free_port();
    let encap_port = free_port();
    let metrics = free_port();
    let nodes = [
        FakeNode::new(Ipv4Addr::new(127, 0, 0, 2)),
        FakeNode::new(Ipv4Addr::new(127, 0, 0, 3)),
    ];
    let mut cfg = format!(
        "[dispatcher]\nvip = \"127.0.0.1\"\nport = {}\nmode = \"encap\"\nmanage_vip = false\n\
         address = \"127.0.0.1\"\nencap_port = {encap_port}\n\n\
         [health]\nlisten_port = {health}\nrise = 1\n\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n",
        vip.port()
    );
    for (i, n) in nodes.iter().enumerate() {
        cfg.push_str(&format!(
            "[[node]]\nid = {}\naddress = \"{}\"\nencap_port = {}\n\n",
            i + 1,
            n.addr,
            n.encap.local_addr().unwrap().port()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.toml");
    std::fs::write(&path, &cfg).unwrap();
    let _d = Kill(
        Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let health_to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, health);
    let mns: Vec<UdpSocket> = (0..MNS)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();

    // Round until every mobile node got its reply, with `alive` nodes
    // advertising; returns which node answered each mobile node.
    let round = |alive: &[bool], bound: Duration| -> Vec<Option<usize>> {
        let deadline = Instant::now() + bound;
        let mut answered: Vec<Option<usize>> = vec![None; MNS];
        let mut last_by: Vec<Option<usize>> = vec![None; MNS];
        while answered.iter().any(Option::is_none) && Instant::now() < deadline {
            for (n, a) in nodes.iter().zip(alive) {
                if *a {
                    n.advertise(health_to);
                }
            }
            for (i, s) in mns.iter().enumerate() {
                if answered[i].is_none() {
                    let _ = s.send_to(format!("req-{i}").as_bytes(), vip);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
            for (k, n) in nodes.iter().enumerate() {
                for src in n.serve(vip) {
                    if let Some(i) = mns.iter().position(|s| v4(s.local_addr().unwrap()) == src) {
                        last_by[i] = Some(k);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
            for (i, s) in mns.iter().enumerate() {
                let mut buf = [0u8; 64];
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    assert_eq!(v4(from), vip, "every reply comes from the VIP");
                    assert_eq!(&buf[..n], format!("reply:req-{i}").as_bytes());
                    answered[i] = last_by[i];
                }
            }
        }
        answered
    };

    let first = round(&[true, true], Duration::from_secs(10));
    assert!(first.iter().all(Option::is_some), "all answered: {first:?}");
    let on = |r: &[Option<usize>], k| r.iter().filter(|x| **x == Some(k)).count();
    assert!(
        on(&first, 0) >= 5 && on(&first, 1) >= 5,
        "spread over both nodes: {} / {}",
        on(&first, 0),
        on(&first, 1)
    );
    // Node 2 falls silent (interval 100 ms: down after ~361 ms): its flows
    // move to node 1, node 1's stay.
    let t0 = Instant::now();
    let moved = loop {
        let r = round(&[true, false], Duration::from_secs(2));
        if r.iter().all(|x| *x == Some(0)) {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no failover: {r:?}");
    };
    for (a, b) in first.iter().zip(&moved) {
        if *a == Some(0) {
            assert_eq!(*b, Some(0), "a surviving node's flows do not move");
        }
    }
    let text = scrape(metrics);
    assert!(
        text.contains("haven_dispatcher_packets_total{node=\"1\",path=\"udp\"}"),
        "{text}"
    );
}

#[test]
fn check_config_exits_64_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[dispatcher]\nvip = \"192.0.2.1\"\naddress = \"198.18.0.2\"\n",
    )
    .unwrap();
    let st = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&st.stderr).contains("node"));
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[dispatcher]\nvip = \"127.0.0.1\"\nmode = \"encap\"\nmanage_vip = false\n\
         address = \"127.0.0.1\"\n[[node]]\nid = 1\naddress = \"127.0.0.2\"\n",
    )
    .unwrap();
    let st = Command::new(BIN)
        .arg("--config")
        .arg(&good)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(0));
}
