//! The real `dispatcher` binary with `[health] key_file`, on loopback (no
//! root): fake nodes advertise with the right key, a wrong key, no trailer,
//! or by replaying one captured valid advert. Only the first comes (and
//! stays) Up; the others are counted as unauthenticated or replayed, and the
//! replaying one goes Down after its Master_Down_Interval although its
//! "adverts" keep arriving (docs/security.md). Also: a key file others can
//! read makes `--check-config` exit 64.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use haven_cluster_tests::supervisor::free_port;
use haven_proto::advert_auth::AuthAdvertRepr;
use haven_proto::vrrp::VrrpRepr;

const BIN: &str = env!("CARGO_BIN_EXE_dispatcher");
// Test-only key, generated per run.
fn test_key() -> Vec<u8> {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut k = b"test-only-key:".to_vec();
    k.extend_from_slice(&t.to_be_bytes());
    k
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn advert() -> VrrpRepr {
    VrrpRepr {
        vrid: 1,
        priority: 100,
        // 100 ms: Master_Down_Interval ≈ 361 ms [RFC 5798 § 6.1].
        max_advert_int_cs: 10,
        addresses: vec![],
    }
}

#[test]
fn only_authentic_fresh_adverts_bring_nodes_up() {
    let key = test_key();
    let mut wrong = key.clone();
    wrong[0] ^= 1;
    let health = free_port();
    let metrics = free_port();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("advert.key");
    std::fs::write(&key_path, hex(&key)).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Node 1 honest, 2 wrong key, 3 no trailer, 4 replays one valid advert.
    let addrs: Vec<Ipv4Addr> = (2..=5).map(|h| Ipv4Addr::new(127, 0, 0, h)).collect();
    let mut cfg = format!(
        "[dispatcher]\nvip = \"127.0.0.1\"\nport = {}\nmode = \"encap\"\nmanage_vip = false\n\
         address = \"127.0.0.1\"\nencap_port = {}\n\n\
         [health]\nlisten_port = {health}\nrise = 1\nkey_file = \"advert.key\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n",
        free_port(),
        free_port(),
    );
    for (i, a) in addrs.iter().enumerate() {
        cfg.push_str(&format!(
            "[[node]]\nid = {}\naddress = \"{a}\"\nencap_port = {}\n\n",
            i + 1,
            free_port()
        ));
    }
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
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, health);
    let socks: Vec<UdpSocket> = addrs
        .iter()
        .map(|a| UdpSocket::bind((*a, 0)).unwrap())
        .collect();
    let dst = Ipv4Addr::LOCALHOST;
    let auth = |src: Ipv4Addr, seq: u64, k: &[u8]| {
        AuthAdvertRepr {
            advert: advert(),
            sequence: seq,
        }
        .to_bytes(src, dst, k)
        .unwrap()
    };
    // Node 4 advertises honestly until it is Up; its last advert is then
    // "captured" and replayed from then on.
    let mut captured = Vec::new();
    let mut seq = 1u64;
    let mut round = |replaying: bool| {
        seq += 1;
        let _ = socks[0].send_to(&auth(addrs[0], seq, &key), to);
        let _ = socks[1].send_to(&auth(addrs[1], seq, &wrong), to);
        let _ = socks[2].send_to(&advert().to_bytes(addrs[2], dst).unwrap(), to);
        if !replaying {
            captured = auth(addrs[3], seq, &key);
        }
        let _ = socks[3].send_to(&captured, to);
    };
    let up = |t: &str, n: u32| metric(t, &format!("haven_dispatcher_node_up{{node=\"{n}\"}}"));

    // Phase 1: everyone advertises every 50 ms until nodes 1 and 4 show Up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        round(false);
        let t = scrape(metrics);
        if up(&t, 1) == Some(1.0) && up(&t, 4) == Some(1.0) {
            break t;
        }
        assert!(Instant::now() < deadline, "nodes 1 and 4 not Up:\n{t}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        up(&text, 2),
        Some(0.0),
        "wrong key must not bring node 2 up"
    );
    assert_eq!(
        up(&text, 3),
        Some(0.0),
        "a bare advert must not bring node 3 up"
    );

    // Phase 2: node 4's last advert is replayed every round: refused, so
    // node 4 goes Down while node 1 stays Up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        round(true);
        let t = scrape(metrics);
        let replayed = metric(&t, "haven_dispatcher_adverts_total{result=\"replayed\"}");
        if up(&t, 4) == Some(0.0) && replayed.unwrap_or(0.0) >= 3.0 {
            break t;
        }
        assert!(Instant::now() < deadline, "replayed node 4 still Up:\n{t}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(up(&text, 1), Some(1.0), "the honest node stays Up");
    assert_eq!(up(&text, 2), Some(0.0));
    assert_eq!(up(&text, 3), Some(0.0));
    let unauth = metric(
        &text,
        "haven_dispatcher_adverts_total{result=\"unauthenticated\"}",
    );
    assert!(
        unauth.unwrap_or(0.0) >= 4.0,
        "wrong-key and bare adverts counted: {unauth:?}"
    );
    let accepted = metric(&text, "haven_dispatcher_adverts_total{result=\"accepted\"}");
    assert!(accepted.unwrap_or(0.0) >= 3.0, "accepted: {accepted:?}");
}

#[test]
fn readable_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("advert.key");
    std::fs::write(&key_path, hex(&test_key())).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.path().join("d.toml");
    std::fs::write(
        &path,
        "[dispatcher]\nvip = \"127.0.0.1\"\nmode = \"encap\"\nmanage_vip = false\n\
         address = \"127.0.0.1\"\n\n[health]\nkey_file = \"advert.key\"\n\n\
         [[node]]\nid = 1\naddress = \"127.0.0.2\"\n",
    )
    .unwrap();
    let st = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&st.stderr).contains("0644"));
    // chmod 0600: accepted.
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let st = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(
        st.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
