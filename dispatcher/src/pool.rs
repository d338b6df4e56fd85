//! The node pool: health and the Maglev table kept in step.
//!
//! This is what the dispatcher's packet path consults (DESIGN.md §5, §6):
//! node advertisements go in ([`NodePool::on_advert`]), timeouts run at
//! [`NodePool::poll_timeout`], and every lookup answers from a table built
//! over the nodes that are Up. If no node is Up but some are Draining, the
//! table falls back to the draining ones: a node that asked for no new flows
//! is still better than dropping every mobile node on the floor.

use std::net::Ipv4Addr;
use std::time::Instant;

use haven_proto::vrrp::VrrpRepr;

use crate::NodeId;
use crate::health::{
    DEFAULT_RISE, HealthError, HealthEvent, HealthTracker, NodeState, WithdrawOutcome,
};
use crate::maglev::{DEFAULT_TABLE_SIZE, MaglevError, MaglevTable, NodeSpec};

/// The pool's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Maglev table size, a prime (default 65537).
    pub table_size: u32,
    /// The configured nodes.
    pub nodes: Vec<NodeSpec>,
    /// Consecutive adverts that bring a Down node back (default 3).
    pub rise: u32,
}

impl PoolConfig {
    /// Defaults for the given nodes.
    pub fn new(nodes: Vec<NodeSpec>) -> Self {
        Self {
            table_size: DEFAULT_TABLE_SIZE,
            nodes,
            rise: DEFAULT_RISE,
        }
    }
}

/// Health plus table (module docs).
#[derive(Debug, Clone)]
pub struct NodePool {
    health: HealthTracker,
    table: MaglevTable,
}

impl NodePool {
    /// Every node starts Unknown, so the table is empty until adverts arrive.
    pub fn new(config: PoolConfig) -> Result<Self, MaglevError> {
        let mut table = MaglevTable::new(config.table_size, config.nodes.iter().copied())?;
        table.set_active([]);
        let health = HealthTracker::new(table.nodes(), config.rise);
        Ok(Self { health, table })
    }

    /// An advertisement from `node` (the driver maps its source address to
    /// the id). The table follows at once.
    pub fn on_advert(
        &mut self,
        now: Instant,
        node: NodeId,
        advert: &VrrpRepr,
    ) -> Result<(), HealthError> {
        self.health.on_vrrp(now, node, advert)?;
        self.sync();
        Ok(())
    }

    /// A peer's withdrawal of `subject`, reported by `by` (authenticated by
    /// the caller, [`crate::health::AdvertAuth::check_withdrawal`]); an
    /// accepted one takes the subject out of the table now.
    ///
    /// # Errors
    /// `by` is not a configured node.
    pub fn on_withdrawal(
        &mut self,
        now: Instant,
        by: NodeId,
        subject: NodeId,
    ) -> Result<WithdrawOutcome, HealthError> {
        let outcome = self.health.on_withdrawal(now, by, subject)?;
        self.sync();
        Ok(outcome)
    }

    /// Runs health timeouts at `now`, updates the table, and returns the
    /// transitions since the last call (to log and count).
    pub fn poll(&mut self, now: Instant) -> Vec<HealthEvent> {
        let events = self.health.poll(now);
        self.sync();
        events
    }

    /// When [`NodePool::poll`] must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.health.poll_timeout()
    }

    fn sync(&mut self) {
        let up: Vec<NodeId> = self.health.nodes_in(NodeState::Up).collect();
        if up.is_empty() {
            self.table
                .set_active(self.health.nodes_in(NodeState::Draining));
        } else {
            self.table.set_active(up);
        }
    }

    /// The node for a UDP datagram from `src_ip:src_port` to VIP:434.
    pub fn lookup_flow(&self, src_ip: Ipv4Addr, src_port: u16) -> Option<NodeId> {
        self.table.lookup_flow(src_ip, src_port)
    }

    /// The node for IP-in-IP from `ip`, or correspondent traffic to home
    /// address `ip`.
    pub fn lookup_addr(&self, ip: Ipv4Addr) -> Option<NodeId> {
        self.table.lookup_addr(ip)
    }

    /// The table.
    pub const fn table(&self) -> &MaglevTable {
        &self.table
    }

    /// The health view.
    pub const fn health(&self) -> &HealthTracker {
        &self.health
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn advert(priority: u8) -> VrrpRepr {
        VrrpRepr {
            vrid: 1,
            priority,
            max_advert_int_cs: 100,
            addresses: vec![],
        }
    }

    #[test]
    fn table_follows_health() {
        let nodes = (1..=3).map(|i| NodeSpec::new(NodeId(i))).collect();
        let mut p = NodePool::new(PoolConfig::new(nodes)).expect("pool");
        let t0 = Instant::now();
        let mn = Ipv4Addr::new(203, 0, 113, 50);
        assert_eq!(p.lookup_flow(mn, 1234), None, "no node heard yet");
        for i in 1..=3 {
            p.on_advert(t0, NodeId(i), &advert(100)).expect("ok");
        }
        assert_eq!(p.poll(t0).len(), 3);
        assert_eq!(p.table().active_nodes().count(), 3);
        // Node 3 drains, node 2 dies: only node 1 is left.
        let s = Duration::from_secs(1);
        for k in 1..=5u32 {
            p.on_advert(t0 + s * k, NodeId(1), &advert(100))
                .expect("ok");
            p.on_advert(t0 + s * k, NodeId(3), &advert(0)).expect("ok");
        }
        let evs = p.poll(t0 + s * 5);
        assert!(evs.contains(&HealthEvent::NodeDown {
            node: NodeId(2),
            reason: crate::Reason::Silent {
                silent_for: s * 5,
                down_interval: Duration::from_micros(3_609_375)
            }
        }));
        for port in 0..200 {
            assert_eq!(p.lookup_flow(mn, port), Some(NodeId(1)));
        }
        // Node 1 dies too: the draining node is the fallback.
        p.poll(t0 + s * 10);
        assert_eq!(p.health().state(NodeId(1)), Some(NodeState::Down));
        assert_eq!(p.lookup_addr(mn), None, "node 3 silent too");
        p.on_advert(t0 + s * 10, NodeId(3), &advert(0)).expect("ok");
        p.on_advert(t0 + s * 11, NodeId(3), &advert(0)).expect("ok");
        p.on_advert(t0 + s * 12, NodeId(3), &advert(0)).expect("ok");
        assert_eq!(p.lookup_addr(mn), Some(NodeId(3)));
        assert!(p.table().rebuilds() >= 4);
    }

    #[test]
    fn a_withdrawal_takes_the_node_out_of_the_table_at_once() {
        let nodes = (1..=3).map(|i| NodeSpec::new(NodeId(i))).collect();
        let mut p = NodePool::new(PoolConfig::new(nodes)).expect("pool");
        let t0 = Instant::now();
        for i in 1..=3 {
            p.on_advert(t0, NodeId(i), &advert(100)).expect("ok");
        }
        p.poll(t0);
        let mn = Ipv4Addr::new(203, 0, 113, 50);
        let port = (0..1000)
            .find(|port| p.lookup_flow(mn, *port) == Some(NodeId(2)))
            .expect("some flow on node 2");
        // Well inside node 2's down interval: only the withdrawal moves it.
        let at = t0 + Duration::from_millis(10);
        assert_eq!(
            p.on_withdrawal(at, NodeId(1), NodeId(2)),
            Ok(WithdrawOutcome::Accepted)
        );
        assert_eq!(p.health().state(NodeId(2)), Some(NodeState::Down));
        assert!(p.table().active_nodes().all(|n| n != NodeId(2)));
        assert_ne!(p.lookup_flow(mn, port), Some(NodeId(2)));
        // An unconfigured reporter changes nothing.
        assert_eq!(
            p.on_withdrawal(at, NodeId(9), NodeId(3)),
            Err(HealthError::UnknownNode(NodeId(9)))
        );
        assert_eq!(p.health().state(NodeId(3)), Some(NodeState::Up));
    }
}
