#![no_main]
//! Arbitrary bytes into `Engine::handle` on an engine with one realm and
//! its security associations: it never panics, every reply it emits parses,
//! and no bytes without a valid MN-HA authenticator ever produce a proposal
//! (RFC 5944 § 3.8.2.1 (a)). A second pass re-signs the input in place with
//! the known key, with `now` taken from its Identification so the
//! timestamp check passes, and drives the accepted ones through a local
//! replicator, the state machine, the reply and the expiry timer.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use haven_ha_node::command::StateMachine;
use haven_ha_node::config::Config;
use haven_ha_node::engine::{Engine, EngineConfig};
use haven_ha_node::replicate::{LocalReplicator, Replicator};
use haven_ha_node::subscriber::StaticSubscribers;
use haven_proto::mip::auth::{self, Algorithm};
use haven_proto::mip::ext::{parse_reply, parse_request};
use haven_proto::mip::ident::Identification;

const KEY: [u8; 16] = *b"haven-fuzz-key-0";
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn config() -> &'static (Config, Arc<StaticSubscribers>) {
    static CFG: OnceLock<(Config, Arc<StaticSubscribers>)> = OnceLock::new();
    CFG.get_or_init(|| {
        let c = Config::from_toml_str(
            r#"
            [[realm]]
            name = "fuzz"
            vip = "192.0.2.1"
            home_prefix = "198.51.100.0/24"
            pool = "198.51.100.10-198.51.100.20"
            simultaneous_bindings = 2
            [[realm.sa]]
            home_address = "198.51.100.5"
            spi = 256
            key_hex = "686176656e2d66757a7a2d6b65792d30"
            [[realm.sa]]
            nai = "mn@example.net"
            spi = 256
            key_hex = "686176656e2d66757a7a2d6b65792d30"
            "#,
        )
        .expect("fuzz config parses");
        c.validate().expect("fuzz config is valid");
        let s = Arc::new(StaticSubscribers::from_config(&c));
        (c, s)
    })
}

fn authentic(bytes: &[u8]) -> bool {
    parse_request(bytes).is_ok()
        && matches!(auth::find_mn_ha(bytes), Ok(Some(at)) if at.verify(Algorithm::HmacMd5, &KEY, bytes).is_ok())
}

fn now_of(bytes: &[u8]) -> Duration {
    let id = bytes
        .get(16..24)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes);
    Identification(id).to_unix()
}

fn drive(bytes: &[u8], check_unsigned: bool) {
    let (cfg, subs) = config();
    let mut repl = LocalReplicator::new(StateMachine::from_config(cfg));
    let mut e = Engine::new(
        EngineConfig::from_config(cfg),
        &cfg.realm,
        subs.clone(),
        repl.reader(),
    );
    let now = now_of(bytes);
    let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 9), 40_000);
    e.handle(now, src, SocketAddrV4::new(VIP, 434), bytes);
    if check_unsigned && !authentic(bytes) {
        assert!(
            e.poll_proposal().is_none(),
            "a proposal from unauthenticated bytes"
        );
    }
    // Twice: a retransmission of the same bytes after the first was applied.
    for round in 0..2 {
        while let Some((id, cmd)) = e.poll_proposal() {
            repl.propose(id, cmd).expect("local never refuses");
            while let Some(a) = repl.poll_applied() {
                e.handle_applied(now, &a);
            }
        }
        while let Some(t) = e.poll_transmit() {
            assert!(parse_reply(&t.payload).is_ok(), "unparsable reply");
            assert_eq!(t.dst, src);
        }
        while e.poll_event().is_some() {}
        if round == 0 {
            e.handle(now, src, SocketAddrV4::new(VIP, 434), bytes);
        }
    }
    let later = now + Duration::from_secs(70_000);
    e.handle_timeout(later, repl.state().expiry_schedule());
    while let Some((id, cmd)) = e.poll_proposal() {
        repl.propose(id, cmd).expect("local never refuses");
        while let Some(a) = repl.poll_applied() {
            e.handle_applied(later, &a);
        }
    }
    let _ = e.poll_timeout(repl.state().expiry_schedule());
    let _ = e.stats();
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    drive(data, true);
    if let Ok(Some(at)) = auth::find_mn_ha(data) {
        let mut signed = data.to_vec();
        if auth::sign_in_place(Algorithm::HmacMd5, &KEY, &mut signed, &at).is_ok() {
            drive(&signed, false);
        }
    }
});
