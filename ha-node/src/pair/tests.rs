//! Unit tests for the pair replicator: configuration, election, the
//! synchronous forward/ack rule, dumps and authentication.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::*;
use crate::binding::{CareOf, Encap};
use crate::command::{Command, RealmParams, StateMachine};
use crate::config::RealmId;
use crate::replicate::{ProposeError, Replicator, RequestId};

const A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 4342);
const B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 12), 4342);

fn cfg(local: SocketAddrV4, peer: SocketAddrV4, priority: u8) -> PairConfig {
    PairConfig {
        local,
        peer,
        vrid: 1,
        priority,
        advert_interval_cs: 100,
        key: b"pair-unit-test-key-000".to_vec(),
        vips: vec![Ipv4Addr::new(198, 18, 0, 100)],
        retransmit: Duration::from_millis(20),
        forward_timeout: None,
        max_datagram: 1400,
        max_log: 64,
        initial_sequence: 1 << 40,
    }
}

fn machine() -> StateMachine {
    StateMachine::new(vec![RealmParams {
        pool: None,
        max_bindings: 1,
    }])
}

fn register(n: u32) -> Command {
    Command::Register {
        realm: RealmId(0),
        home_address: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n),
        nai: None,
        care_of: CareOf {
            coa: Ipv4Addr::new(203, 0, 113, 1),
            registered_at: Duration::from_secs(1),
            lifetime: 600,
            encap: Encap::IpInIp,
            reverse_tunnel: false,
        },
        identification: u64::from(n),
        validated_against: None,
        simultaneous: false,
    }
}

/// Delivers everything queued, both ways, until quiet.
fn exchange(a: &mut PairReplicator, b: &mut PairReplicator, now: Duration) {
    for _ in 0..100 {
        let mut any = false;
        while let Some((to, m)) = a.poll_transmit() {
            assert_eq!(to, B);
            b.handle_datagram(now, A, &m);
            any = true;
        }
        while let Some((to, m)) = b.poll_transmit() {
            assert_eq!(to, A);
            a.handle_datagram(now, B, &m);
            any = true;
        }
        if !any {
            return;
        }
    }
    panic!("no quiescence");
}

#[test]
fn config_validation() {
    assert_eq!(cfg(A, B, 100).validate(), Ok(()));
    assert_eq!(
        cfg(A, B, 255).validate(),
        Err(PairConfigError::Priority(255))
    );
    assert_eq!(cfg(A, B, 0).validate(), Err(PairConfigError::Priority(0)));
    assert_eq!(cfg(A, A, 100).validate(), Err(PairConfigError::SamePeer));
    let mut c = cfg(A, B, 100);
    c.key = b"short".to_vec();
    assert_eq!(c.validate(), Err(PairConfigError::Key(5)));
    c = cfg(A, B, 100);
    c.advert_interval_cs = 0x1000;
    assert_eq!(c.validate(), Err(PairConfigError::Interval(0x1000)));
    c = cfg(A, B, 100);
    c.max_datagram = 100;
    assert_eq!(c.validate(), Err(PairConfigError::Datagram(100)));
    assert!(!format!("{c:?}").contains("pair-unit-test-key"));
}

#[test]
fn rfc5798_timers() {
    // [RFC 5798 § 6.1]: 1 s interval, priority 100: skew = 156/256 s.
    let i = centiseconds(100);
    assert_eq!(skew_time(100, i), Duration::from_micros(609_375));
    assert_eq!(
        master_down_interval(100, i),
        Duration::from_micros(3_609_375)
    );
    assert_eq!(skew_time(255, i), Duration::from_nanos(3_906_250));
}

#[test]
fn election_dump_and_synchronous_forward() {
    let t0 = Duration::from_secs(10);
    let mut a = PairReplicator::new(cfg(A, B, 200), machine(), t0);
    let mut b = PairReplicator::new(cfg(B, A, 100), machine(), t0);
    exchange(&mut a, &mut b, t0);
    assert_eq!((a.role(), b.role()), (Role::Secondary, Role::Secondary));
    // The higher priority's Master_Down_Interval ends first.
    let t1 = t0 + a.master_down_interval();
    assert!(t1 < t0 + b.master_down_interval());
    a.handle_timeout(t1);
    b.handle_timeout(t1);
    assert_eq!(a.role(), Role::Primary);
    assert!(a.take_role_change());
    exchange(&mut a, &mut b, t1);
    assert_eq!(b.role(), Role::Secondary);
    assert!(b.is_synced(), "dump answered");
    assert!(b.take_restored());
    assert_eq!(
        b.propose(RequestId(1), register(1)),
        Err(ProposeError::Unavailable)
    );

    // Synchronous: nothing applied on the primary before the ack.
    a.propose(RequestId(7), register(7))
        .expect("primary accepts");
    assert_eq!(a.poll_applied(), None);
    assert_eq!(a.uncommitted(), 1);
    let (_, fwd) = a.poll_transmit().expect("a forward");
    b.handle_datagram(t1, A, &fwd);
    let on_b = b.poll_applied_detail().expect("secondary applies");
    assert_eq!(on_b.0.request, None);
    assert_eq!(a.poll_applied(), None, "still waiting for the ack");
    exchange(&mut a, &mut b, t1);
    let (applied, how) = a.poll_applied_detail().expect("applied after ack");
    assert_eq!(applied.request, Some(RequestId(7)));
    assert_eq!(how, Replication::Synchronous);
    assert_eq!(a.state().snapshot(), b.state().snapshot());
    assert_eq!(a.stats().synchronous_applies, 1);

    // A forward that arrives twice is applied once.
    a.propose(RequestId(8), register(8))
        .expect("primary accepts");
    let (_, fwd) = a.poll_transmit().expect("a forward");
    b.handle_datagram(t1, A, &fwd);
    b.handle_datagram(t1, A, &fwd);
    assert_eq!(b.stats().replays, 1);
    exchange(&mut a, &mut b, t1);
    assert_eq!(a.state().snapshot(), b.state().snapshot());
}

#[test]
fn silent_secondary_means_degraded_and_silent_primary_means_takeover() {
    let t0 = Duration::from_secs(10);
    let mut a = PairReplicator::new(cfg(A, B, 200), machine(), t0);
    let mut b = PairReplicator::new(cfg(B, A, 100), machine(), t0);
    let t1 = t0 + a.master_down_interval();
    a.handle_timeout(t1);
    exchange(&mut a, &mut b, t1);
    a.propose(RequestId(1), register(1))
        .expect("primary accepts");
    // The secondary hears nothing from here on.
    while a.poll_transmit().is_some() {}
    let t2 = t1 + a.master_down_interval();
    a.handle_timeout(t2);
    let (applied, how) = a.poll_applied_detail().expect("applied alone");
    assert_eq!(applied.request, Some(RequestId(1)));
    assert_eq!(how, Replication::Degraded);
    assert!(a.is_degraded());
    assert_eq!(a.stats().degraded_applies, 1);
    // And the secondary, hearing no advertisement, takes over.
    b.handle_timeout(t1 + b.master_down_interval());
    assert_eq!(b.role(), Role::Primary);
    assert_eq!(b.stats().takeovers, 1);
}

#[test]
fn unauthenticated_datagrams_are_dropped_and_counted() {
    let t0 = Duration::from_secs(10);
    let mut a = PairReplicator::new(cfg(A, B, 200), machine(), t0);
    let mut b = PairReplicator::new(cfg(B, A, 100), machine(), t0);
    // A genuine advert from b under another key.
    let mut other = cfg(B, A, 254);
    other.key = b"some-other-key-entirely".to_vec();
    let mut forger = PairReplicator::new(other, machine(), t0);
    let (_, adv) = forger.poll_transmit().expect("advert");
    a.handle_datagram(t0, B, &adv);
    assert_eq!(a.stats().auth_failures, 1);
    assert_eq!(a.stats().adverts_received, 0);
    // A bare RFC 5798 advert carries no trailer.
    let bare = haven_proto::vrrp::VrrpRepr {
        vrid: 1,
        priority: 254,
        max_advert_int_cs: 100,
        addresses: vec![],
    }
    .to_bytes(*B.ip(), *A.ip())
    .expect("advert");
    a.handle_datagram(t0, B, &bare);
    assert_eq!(a.stats().auth_failures, 2);
    // From the wrong source address: dropped before anything else.
    let (_, good) = b.poll_transmit().expect("advert");
    let stranger = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 99), 4342);
    a.handle_datagram(t0, stranger, &good);
    assert_eq!(a.stats().malformed, 1);
    a.handle_datagram(t0, B, &good);
    assert_eq!(a.stats().adverts_received, 1);
    a.handle_datagram(t0, B, &good);
    assert_eq!(a.stats().replays, 1);
}
