//! The replication seam between the registration engine and the log.
//!
//! The engine (sans-IO) turns an accepted request into a [`Command`] and
//! hands it to a [`Replicator`] with a [`RequestId`] of its choosing; it
//! sends the Registration Reply only when the command comes back out of
//! [`Replicator::poll_applied`] — i.e. after it was committed *and* applied
//! on this node ([DESIGN.md § 4]: "the reply leaves only after the entry is
//! applied on the node that received the request").
//!
//! The shape follows raft-rs's `RawNode`: `propose` only queues; nothing
//! happens behind the caller's back; results are pulled. A Raft or pair
//! implementation adds its own `tick`/`step`/ready handling for the driver
//! (transport and storage stay in the daemon), and its `poll_applied` also
//! yields the commands proposed by *other* nodes, with `request: None`, so
//! the engine can follow every state change (e.g. to update metrics). No
//! clock is read here: timeouts for proposals that never commit are the
//! engine's (`[registration] max_commit_ms`).
//!
//! Read access: the [`StateMachine`] keeps its binding table behind an
//! `Arc<BindingTable>` (interior `DashMap`). [`Replicator::reader`] hands
//! out clones of that `Arc` to the data plane and the admin API; they read
//! concurrently while only the replicator, through `apply`, writes.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::binding::BindingTable;
use crate::command::{ApplyResult, Command, StateMachine};

/// The engine's tag for a proposal, returned with its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Why a proposal was not accepted for replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node cannot commit now (minority side of a partition, no
    /// leader, draining): the engine must not reply [DESIGN.md § 4].
    #[error("replication unavailable")]
    Unavailable,
}

/// One applied log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The proposer's id when this node proposed it, `None` otherwise.
    pub request: Option<RequestId>,
    /// The command.
    pub command: Command,
    /// What applying it did (identical on every replica).
    pub result: ApplyResult,
}

/// A replication mode (local, Raft, pair), as seen by the engine.
pub trait Replicator {
    /// Queues `cmd` for replication. Its [`Applied`] comes out of
    /// [`poll_applied`](Self::poll_applied) once it is committed and applied
    /// here; a proposal may also be lost (leader change), which
    /// [`poll_lost`](Self::poll_lost) reports where the mode can tell, and
    /// the engine's commit timeout catches otherwise.
    fn propose(&mut self, id: RequestId, cmd: Command) -> Result<(), ProposeError>;

    /// The next applied entry, in log order; `None` when there is none yet.
    fn poll_applied(&mut self) -> Option<Applied>;

    /// The next proposal this replicator knows is lost (Raft: proposed
    /// under a leader or term that is gone), for
    /// `Engine::proposal_failed`: its mobile node is free to retransmit at
    /// once. It may still be applied later (then with its `request`, which
    /// the engine no longer answers). Default: none known.
    fn poll_lost(&mut self) -> Option<RequestId> {
        None
    }

    /// The state machine (expiry schedule, pool usage, binding table).
    fn state(&self) -> &StateMachine;

    /// A shared read handle on the binding table.
    fn reader(&self) -> Arc<BindingTable> {
        self.state().reader()
    }
}

/// Single node, no replication: every proposal is committed and applied at
/// once (tests, lab runs, a one-node appliance).
#[derive(Debug)]
pub struct LocalReplicator {
    state: StateMachine,
    applied: VecDeque<Applied>,
}

impl LocalReplicator {
    /// Wraps a state machine.
    pub fn new(state: StateMachine) -> Self {
        Self {
            state,
            applied: VecDeque::new(),
        }
    }

    /// Gives the state machine back.
    pub fn into_state(self) -> StateMachine {
        self.state
    }
}

impl Replicator for LocalReplicator {
    fn propose(&mut self, id: RequestId, cmd: Command) -> Result<(), ProposeError> {
        let result = self.state.apply(&cmd);
        self.applied.push_back(Applied {
            request: Some(id),
            command: cmd,
            result,
        });
        Ok(())
    }

    fn poll_applied(&mut self) -> Option<Applied> {
        self.applied.pop_front()
    }

    fn state(&self) -> &StateMachine {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::{CareOf, Encap};
    use crate::command::RealmParams;
    use crate::config::RealmId;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    #[test]
    fn local_applies_in_order_and_shares_reads() {
        let mut r = LocalReplicator::new(StateMachine::new(vec![RealmParams {
            pool: None,
            max_bindings: 1,
        }]));
        let reader = r.reader();
        let hoa = Ipv4Addr::new(198, 51, 100, 5);
        let cmd = Command::Register {
            realm: RealmId(0),
            home_address: hoa,
            nai: None,
            care_of: CareOf {
                coa: Ipv4Addr::new(198, 18, 0, 1),
                registered_at: Duration::from_secs(100),
                lifetime: 60,
                encap: Encap::IpInIp,
                reverse_tunnel: false,
            },
            identification: 1,
            validated_against: None,
            simultaneous: false,
        };
        assert_eq!(r.poll_applied(), None);
        r.propose(RequestId(7), cmd.clone())
            .expect("local never refuses");
        r.propose(
            RequestId(8),
            Command::AdminRemove {
                realm: RealmId(0),
                home_address: hoa,
            },
        )
        .expect("local never refuses");
        let a = r.poll_applied().expect("first");
        assert_eq!(a.request, Some(RequestId(7)));
        assert_eq!(a.command, cmd);
        assert!(
            matches!(a.result, ApplyResult::Registered { home_address, .. } if home_address == hoa)
        );
        let b = r.poll_applied().expect("second");
        assert_eq!(b.request, Some(RequestId(8)));
        assert_eq!(b.result, ApplyResult::AdminRemoved { existed: true });
        assert_eq!(r.poll_applied(), None);
        assert!(reader.is_empty(), "reader sees the applied state");
        assert_eq!(r.state().applied_count(), 2);
    }
}
