//! The full dual mobile node end to end on the two-cluster site (issue 8;
//! seed 000 figures 7, 9–11, 14–15; seed 004 § 3.4 and 'mc' mode). Needs
//! root and strongSwan (see `haven_cluster_tests::vpn`); the capture needs
//! dumpcap/tshark.
//!
//! The site (`haven_cluster_tests::site`, address plan `site::plan`): the
//! inner cluster (dispatcher pair, three nodes) in the intranet with the
//! correspondent `cn`, the outer cluster and the strongSwan gateway in the
//! DMZ, two NATed outside access networks and the inside access network
//! behind `irtr`. The rig (`haven_cluster_tests::e2e`): the real VPN, the
//! `dual-mn` binary in the mobile node's namespace, the correspondent
//! holding a TCP connection and a UDP stream to the inner home address.
//!
//! * `seed000_moves_keep_tcp_and_udp`: outside(NAT1) → outside(NAT2) →
//!   inside → outside(NAT1); the same TCP connection carries bytes after
//!   every move, the gap per move (TCP and UDP) is printed and bounded; in
//!   the first outside phase a capture on the mobile node shows the three
//!   levels of encapsulation.
//! * `mc_mode_moves_with_mobike`: no outer home agent; the VPN follows the
//!   physical address with MOBIKE, the inner binding stays on the TIA;
//!   outside(NAT1) → outside(NAT2) → outside(NAT1). The gateway starts with
//!   another pre-shared key: dual-mn's first `swanctl --initiate` fails
//!   (counted in its status), the node stays undecided, and once the
//!   gateway has the right key a retry (bounded backoff) brings it up.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use haven_cluster_tests::dual::Variant;
use haven_cluster_tests::e2e::{
    Access, DualRig, E2eError, MoveResult, RigOptions, Streams, move_table,
};
use haven_cluster_tests::site::{Site, SiteOptions, plan};
use haven_cluster_tests::topo::{self, leftovers};
use haven_cluster_tests::vpn::{self, Capture};

/// One wait on a daemon or a decision.
const BOUND: Duration = Duration::from_secs(15);
/// The loose bound on a move's gap (issue 8 reports it; DESIGN.md § 9 has
/// no target for cross-boundary moves).
const MAX_GAP: Duration = Duration::from_secs(5);

/// The site and the rig on it (field order: the rig's processes go
/// before the site's, which removes the namespaces).
struct Bed {
    rig: DualRig,
    site: Site,
}

fn bed(variant: Variant, gateway_wrong_key: bool) -> Bed {
    let t = Instant::now();
    let site = Site::start(&SiteOptions::default()).unwrap_or_else(|e| panic!("site: {e}"));
    println!("site up in {:?}", t.elapsed());
    let opts = RigOptions {
        dual_mn: Some(env!("CARGO_BIN_EXE_dual-mn").into()),
        udp_echo: Some(env!("CARGO_BIN_EXE_udp-echo").into()),
        gateway_wrong_key,
        ..RigOptions::site(variant)
    };
    let rig = DualRig::start_with(site.lab(), &opts, site.dir()).unwrap_or_else(|e| panic!("{e}"));
    Bed { rig, site }
}

fn prerequisites() -> bool {
    if topo::skip_without_root() {
        return false;
    }
    if !std::path::Path::new(vpn::CHARON).exists() {
        println!(
            "SKIP: strongSwan is not installed (apt-get install -y {})",
            vpn::PACKAGES
        );
        return false;
    }
    true
}

fn ok<T>(r: Result<T, E2eError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Prints the move table and dual-mn's account, then checks the gaps and
/// the decisions: each one well inside the probe window (outside: the
/// ICMP network unreachable from `inet` for the direct registration, one
/// per outside attachment; inside: the direct registration's reply).
fn report(rig: &DualRig, moves: &[MoveResult], outside_attaches: u64) {
    println!("dual-mn:\n{}", rig.mn_summary());
    println!("dual-mn CPU time: {:?}", rig.mn_cpu());
    print!("{}", move_table(moves));
    let st = rig.status();
    assert_eq!(
        st.direct_icmp, outside_attaches,
        "one ICMP unreachable per outside attachment: {st:?}"
    );
    let window = rig.options().probe_window_ms;
    for m in moves {
        assert!(
            m.decided_ms.is_some_and(|d| d < window / 2),
            "{}: decided after {:?} ms (window {window} ms)",
            m.name,
            m.decided_ms
        );
    }
    for m in moves {
        assert!(
            m.udp < MAX_GAP && m.tcp < MAX_GAP,
            "{}: gap UDP {:?} TCP {:?}",
            m.name,
            m.udp,
            m.tcp
        );
    }
}

#[test]
fn seed000_moves_keep_tcp_and_udp() {
    if !prerequisites() {
        return;
    }
    let started = Instant::now();
    let mut bed = bed(Variant::Seed000, false);
    let prefix = bed.site.lab().prefix().to_owned();
    let rig = &mut bed.rig;
    let st = ok(rig.wait_ready());
    println!("outside after {:?}: {st:?}", started.elapsed());
    let tia = st.tia.expect("TIA");
    let sa = ok(rig.ike_sa()).expect("IKE SA up");
    assert_eq!(
        sa.local.map(|l| *l.ip()),
        Some(rig.options().outer_hoa),
        "the VPN runs from the outer home address"
    );

    let e_nat1 = rig.iface(Access::Nat1).to_owned();
    let mut capture = Capture::available().then(|| {
        Capture::start(
            "dual",
            rig.mn_netns(),
            &[&e_nat1, "mob0", vpn::TUN_DEV, "intra0"],
        )
        .expect("capture")
    });
    let s = ok(Streams::start(bed.site.lab()));
    ok(s.wait_more("the streams flowing outside (NAT1)", 50, BOUND));
    match capture.as_mut() {
        Some(c) => check_layers(c, &e_nat1, plan::MN_NAT1, tia, rig.options()),
        None => println!("capture skipped: dumpcap/tshark not installed"),
    }

    let mut moves = vec![];
    for to in [Access::Nat2, Access::Inside, Access::Nat1] {
        let m = ok(rig.step(to, &s));
        println!("{}: {:?}", m.name, m.status);
        moves.push(m);
    }
    let seen = ok(s.finish());
    assert!(seen.tcp_connected);
    assert_eq!(seen.tcp_error, None, "the TCP connection survived");
    println!(
        "TCP: one connection, {} octets echoed; UDP: {} echoes",
        seen.tcp_bytes,
        seen.udp.len()
    );
    let st = rig.status();
    assert_eq!(st.attaches, 4, "{st:?}");
    assert_eq!(st.decisions, 4, "one decision per attachment: {st:?}");
    report(rig, &moves, 3);
    drop(bed);
    assert!(leftovers(&prefix).is_empty(), "{:?}", leftovers(&prefix));
    println!("total {:?}", started.elapsed());
}

#[test]
fn mc_mode_moves_with_mobike() {
    if !prerequisites() {
        return;
    }
    let started = Instant::now();
    let mut bed = bed(Variant::Mc, true);
    let prefix = bed.site.lab().prefix().to_owned();
    let rig = &mut bed.rig;
    // The gateway holds another key: the initiation fails and is retried;
    // meanwhile the node stays undecided (no TIA, no normal traffic).
    let st = ok(rig.wait("a failed VPN initiation", |s| s.vpn_initiate_failures >= 1));
    assert_ne!(st.mode, "outside", "outside without the VPN: {st:?}");
    assert_eq!(st.tia, None);
    ok(rig.fix_gateway());
    let st = ok(rig.wait_ready());
    assert!(
        st.vpn_initiates > st.vpn_initiate_failures && st.vpn_initiate_failures >= 1,
        "retried after the failure: {st:?}"
    );
    println!(
        "VPN up after {} initiations ({} failed), {:?}",
        st.vpn_initiates,
        st.vpn_initiate_failures,
        started.elapsed()
    );
    assert!(st.tia.is_some(), "TIA");
    assert_eq!(st.outer_coa, None, "no outer home agent in 'mc' mode");
    let s = ok(Streams::start(bed.site.lab()));
    ok(s.wait_more("the streams flowing (NAT1)", 50, BOUND));
    let mut moves = vec![];
    for to in [Access::Nat2, Access::Nat1] {
        moves.push(ok(rig.step(to, &s)));
    }
    let seen = ok(s.finish());
    assert_eq!(seen.tcp_error, None, "the TCP connection survived");
    report(rig, &moves, 3);
    drop(bed);
    assert!(leftovers(&prefix).is_empty(), "{:?}", leftovers(&prefix));
    println!("total {:?}", started.elapsed());
}

/// Seed 000 figures 14–15 as the capture shows them. On the physical
/// interface: RFC 3519 tunnel data to the outer home agent's port 434
/// whose inner packet is ESP in UDP 4500 from the outer home address to
/// the VPN gateway (RFC 3948); on `mob0` that ESP in UDP; on `ipsec0` (what
/// ESP carries, decrypted) RFC 3519 tunnel data from the TIA to the inner
/// home agent whose inner packet is the application's, from the inner
/// home address to the correspondent; on `intra0` the application's packet.
fn check_layers(c: &mut Capture, phys: &str, phys_addr: Ipv4Addr, tia: Ipv4Addr, o: &RigOptions) {
    let rows = c
        .stop_and_read(
            40,
            &[
                "-T",
                "fields",
                "-E",
                "separator=|",
                "-e",
                "frame.interface_name",
                "-e",
                "frame.len",
                "-e",
                "ip.src",
                "-e",
                "ip.dst",
                "-e",
                "udp.dstport",
                "-e",
                "frame.protocols",
                "-e",
                "udp.payload",
            ],
        )
        .expect("read the capture");
    let rows: Vec<Vec<String>> = rows
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect();
    let field = |r: &Vec<String>, i: usize| r.get(i).cloned().unwrap_or_default();
    // Nested headers give one value per level ("outer,inner"): the
    // outermost is what the interface carries.
    let first = |r: &Vec<String>, i: usize| {
        r.get(i)
            .and_then(|v| v.split(',').next())
            .unwrap_or_default()
            .to_owned()
    };
    // One line per packet, the payload cut short for the note.
    let mut excerpt = String::new();
    // Two packets each way per interface: outbound ones leave from one of
    // the node's four addresses (seed 000 figure 13).
    let ours = [
        phys_addr.to_string(),
        o.outer_hoa.to_string(),
        tia.to_string(),
        o.inner_hoa.to_string(),
    ];
    let mut shown = std::collections::HashMap::<(String, bool), usize>::new();
    for r in &rows {
        let out = ours.contains(&first(r, 2));
        let n = shown.entry((field(r, 0), out)).or_default();
        if *n < 2 && !field(r, 4).is_empty() {
            *n += 1;
            let p = field(r, 6);
            excerpt.push_str(&format!(
                "{}|{}|{}|{}|{}|{}|{}\n",
                field(r, 0),
                field(r, 1),
                field(r, 2),
                field(r, 3),
                field(r, 4),
                field(r, 5),
                &p[..p.len().min(64)]
            ));
        }
    }
    println!("capture excerpt (interface|len|src|dst|udp dst|layers|udp payload...):\n{excerpt}");
    let hex_of = |r: &Vec<String>| hex::decode(first(r, 6).replace(':', "")).unwrap_or_default();
    let on =
        |dev: &str| -> Vec<&Vec<String>> { rows.iter().filter(|r| field(r, 0) == dev).collect() };
    let ip4 = |b: &[u8], at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);

    // Level 1 + 2 in one packet on the physical interface.
    let outer_ha = o.outer_ha.to_string();
    let three = on(phys)
        .into_iter()
        .filter(|r| first(r, 3) == outer_ha && first(r, 4) == "434")
        .filter(|r| {
            let p = hex_of(r);
            // tunnel data header, IPv4 header, UDP header, ESP SPI.
            p.len() >= 4 + 20 + 8 + 4
                && p[0] == 4
                && p[1] == 4
                && p[4] >> 4 == 4
                && p[4 + 9] == 17
                && ip4(&p, 4 + 12) == o.outer_hoa
                && ip4(&p, 4 + 16) == o.gateway
                && u16::from_be_bytes([p[26], p[27]]) == 4500
                && p[32..36] != [0, 0, 0, 0]
        })
        .count();
    assert!(
        three >= 10,
        "RFC 3519 tunnel data carrying ESP in UDP on {phys}: {three}"
    );
    let esp_on_mob = on("mob0")
        .into_iter()
        .filter(|r| first(r, 2) == o.outer_hoa.to_string() && field(r, 5).contains("esp"))
        .count();
    assert!(esp_on_mob >= 10, "ESP in UDP on mob0: {esp_on_mob}");
    // Level 3 inside ESP, and the application's packet in it.
    let inner = on(vpn::TUN_DEV)
        .into_iter()
        .filter(|r| {
            first(r, 2) == tia.to_string()
                && first(r, 3) == o.inner_ha.to_string()
                && first(r, 4) == "434"
        })
        .filter(|r| {
            let p = hex_of(r);
            p.len() >= 24
                && p[0] == 4
                && p[1] == 4
                && ip4(&p, 4 + 12) == o.inner_hoa
                && ip4(&p, 4 + 16) == o.cn
        })
        .count();
    assert!(
        inner >= 10,
        "RFC 3519 tunnel data from the TIA carrying the application on ipsec0: {inner}"
    );
    let app = on("intra0")
        .into_iter()
        .filter(|r| first(r, 2) == o.inner_hoa.to_string() && first(r, 3) == o.cn.to_string())
        .count();
    assert!(app >= 10, "the application's packets on intra0: {app}");
    // Nothing of the intranet in clear on the physical interface.
    assert!(
        on(phys)
            .into_iter()
            .all(|r| first(r, 3) != o.inner_ha.to_string() && first(r, 3) != o.gateway.to_string()),
        "inner traffic beside the tunnels on {phys}"
    );
}
