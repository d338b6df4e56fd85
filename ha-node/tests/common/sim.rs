//! What the deterministic replication simulations (`pair_sim.rs`,
//! `raft_sim.rs`; STYLE.md § 5) share: the seeded generator behind every
//! schedule, the state machine each replica starts from, and the
//! registration they propose.

use std::net::Ipv4Addr;
use std::time::Duration;

use haven_ha_node::binding::{CareOf, Encap};
use haven_ha_node::command::{Command, RealmParams, StateMachine};
use haven_ha_node::config::RealmId;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// An empty state machine with one realm (no pool, one binding per home
/// address).
pub fn machine() -> StateMachine {
    StateMachine::new(vec![RealmParams {
        pool: None,
        max_bindings: 1,
    }])
}

/// `Register` of `home_address` in realm 0 with Identification `n`: one
/// care-of address, a 600 s lifetime, never expired during a schedule.
pub fn register(home_address: Ipv4Addr, n: u32) -> Command {
    Command::Register {
        realm: RealmId(0),
        home_address,
        nai: None,
        care_of: CareOf {
            coa: Ipv4Addr::new(203, 0, 113, 1),
            registered_at: Duration::from_secs(1_000),
            lifetime: 600,
            encap: Encap::IpInIp,
            reverse_tunnel: false,
        },
        identification: u64::from(n),
        validated_against: None,
        simultaneous: false,
    }
}
