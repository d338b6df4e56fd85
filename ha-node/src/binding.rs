//! The binding table: home address → care-of address(es) [RFC 5944 § 3.8.2].
//!
//! Every node holds every binding ([DESIGN.md § 4, § 6]). The table is a
//! [`DashMap`] keyed by `(realm, home address)` so the data plane and the
//! admin API read it concurrently while the single writer — the
//! [`StateMachine`](crate::command::StateMachine), applying replicated
//! commands in log order — changes it. Readers get a [`BindingTable`] through
//! an `Arc` (see [`StateMachine::reader`](crate::command::StateMachine::reader));
//! its mutating methods are crate-private, so nothing but `apply` can change
//! a binding.
//!
//! Beside the bindings the table keeps:
//! * a NAI index `(realm, NAI) → home address`, for MNs identified by their
//!   NAI [RFC 2794] (dynamic home addresses, HoA 0.0.0.0 in the request);
//! * the *replay memory*: the last accepted Identification of an MN whose
//!   binding is gone (deregistered, expired, removed) [RFC 5944 § 5.7]. It is
//!   keyed by the MN's identity (its NAI if it had one, else its home
//!   address), so a replayed request sent to any node after failover is still
//!   refused (code 133). An entry leaves this memory when the MN registers
//!   again (the binding then carries the identification). Entries exist only
//!   for MNs that once registered with a valid authenticator, i.e. for
//!   configured security associations, so the memory is bounded by the
//!   subscriber count; each entry costs a key and a 16-byte [`Remembered`]
//!   value (no eviction: forgetting would re-open a replay).
//!
//!   For a NAI the value also keeps the home address the binding had, so the
//!   state machine can give a lapsed MN that asks with HoA 0.0.0.0 its old
//!   address back while it is still free ([`BindingTable::last_home_address`];
//!   docs/decisions.md, "NAI address affinity").
//!
//! [`ExpirySchedule`] orders care-of addresses by expiry time; it is
//! writer-side state owned by the state machine, which the engine reads
//! through a borrow the driver lends it (`Engine::handle_timeout`); the data
//! plane and admin readers never need it.
//! Times are `Duration`s since the Unix epoch supplied in the commands: the
//! table never reads a clock.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Deref;
use std::time::Duration;

use dashmap::DashMap;

use crate::config::RealmId;

/// A Network Access Identifier [RFC 2794, RFC 4282]: 1 to 255 bytes (the
/// MN-NAI extension length is one octet), compared exactly.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nai(Box<str>);

impl Nai {
    /// Longest NAI [RFC 2794 § 2].
    pub const MAX_LEN: usize = 255;

    /// `None` when `s` is empty or longer than 255 bytes.
    pub fn new(s: &str) -> Option<Nai> {
        (!s.is_empty() && s.len() <= Self::MAX_LEN).then(|| Nai(s.into()))
    }

    /// The NAI text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Nai {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Nai {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::borrow::Borrow<str> for Nai {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// How packets reach a care-of address [DESIGN.md § 6].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// IP in IP [RFC 2003].
    IpInIp,
    /// UDP tunnelling through a NAT [RFC 3519]; `nat` is the mapping the
    /// registration came from (source address and port).
    Udp {
        /// The MN's public address and port as seen by the home agent.
        nat: SocketAddrV4,
    },
}

/// One care-of address of a binding [RFC 5944 § 3.8.2].
///
/// The expiry is not stored: it is always `registered_at + lifetime`
/// ([`expires_at`](Self::expires_at)), which keeps the struct at 32 bytes
/// (binding memory, [DESIGN.md § 9]) and makes an inconsistent pair
/// impossible. A lifetime of 0xffff is 65535 seconds here, not "infinity"
/// [RFC 5944 § 3.3]: haven grants at most the realm's `max_lifetime_secs`
/// and every binding is soft state that ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CareOf {
    /// The care-of address.
    pub coa: Ipv4Addr,
    /// When the registration was accepted (the engine's `now`, since the
    /// Unix epoch).
    pub registered_at: Duration,
    /// The lifetime granted, seconds [RFC 5944 § 3.4].
    pub lifetime: u16,
    /// Tunnel type.
    pub encap: Encap,
    /// Reverse tunnelling granted [RFC 3024].
    pub reverse_tunnel: bool,
}

impl CareOf {
    /// When this care-of address expires: `registered_at + lifetime`.
    pub fn expires_at(&self) -> Duration {
        self.registered_at
            .saturating_add(Duration::from_secs(u64::from(self.lifetime)))
    }
}

/// The care-of addresses of one binding: never empty; one is stored inline
/// (the common case: simultaneous bindings are off by default), more spill
/// to a boxed slice (a thin enough pointer that the enum stays 32 bytes,
/// where a `Vec` arm would make it 40).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CareOfList {
    /// Exactly one.
    One(CareOf),
    /// Two or more, in registration order.
    Many(Box<[CareOf]>),
}

impl CareOfList {
    /// The addresses as a slice.
    pub fn as_slice(&self) -> &[CareOf] {
        match self {
            CareOfList::One(c) => std::slice::from_ref(c),
            CareOfList::Many(v) => v,
        }
    }

    /// The address `coa`, if present.
    pub fn find(&self, coa: Ipv4Addr) -> Option<&CareOf> {
        self.as_slice().iter().find(|c| c.coa == coa)
    }

    /// Replaces the entry for `c.coa`, or appends `c`.
    pub(crate) fn upsert(&mut self, c: CareOf) {
        match self {
            CareOfList::One(o) if o.coa == c.coa => *o = c,
            CareOfList::Many(v) if v.iter().any(|x| x.coa == c.coa) => {
                v.iter_mut().filter(|x| x.coa == c.coa).for_each(|x| *x = c);
            }
            _ => {
                let mut v = self.as_slice().to_vec();
                v.push(c);
                *self = CareOfList::Many(v.into_boxed_slice());
            }
        }
    }

    /// Removes `coa`; returns the rest (`None` when nothing is left).
    pub(crate) fn without(&self, coa: Ipv4Addr) -> Option<CareOfList> {
        let rest: Vec<CareOf> = self
            .as_slice()
            .iter()
            .filter(|c| c.coa != coa)
            .copied()
            .collect();
        CareOfList::from_vec(rest)
    }

    /// `None` for an empty vector.
    pub(crate) fn from_vec(mut v: Vec<CareOf>) -> Option<CareOfList> {
        match v.len() {
            0 => None,
            1 => v.pop().map(CareOfList::One),
            _ => Some(CareOfList::Many(v.into_boxed_slice())),
        }
    }
}

impl Deref for CareOfList {
    type Target = [CareOf];
    fn deref(&self) -> &[CareOf] {
        self.as_slice()
    }
}

/// A binding: one home address and its care-of address(es).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingEntry {
    /// The MN's NAI, when it registered with one [RFC 2794].
    pub nai: Option<Nai>,
    /// The care-of addresses (never empty).
    pub care_of: CareOfList,
    /// The last accepted Identification [RFC 5944 § 5.7].
    pub last_identification: u64,
}

/// Key of the binding table.
pub type BindingKey = (RealmId, Ipv4Addr);

/// Who a mobile node is, for replay memory and subscriber look-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MnId<'a> {
    /// By its fixed home address.
    HomeAddress(Ipv4Addr),
    /// By its NAI [RFC 2794].
    Nai(&'a str),
}

/// Owned [`MnId`], the key of the replay memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// By fixed home address.
    HomeAddress(Ipv4Addr),
    /// By NAI.
    Nai(Nai),
}

impl Identity {
    /// The identity a binding's MN is remembered by: its NAI if it has one.
    pub fn of(home_address: Ipv4Addr, nai: Option<&Nai>) -> Identity {
        match nai {
            Some(n) => Identity::Nai(n.clone()),
            None => Identity::HomeAddress(home_address),
        }
    }
}

/// What the replay memory keeps for a mobile node whose binding is gone.
///
/// 16 bytes (it was the bare `u64`): the map slot of a replay entry grows
/// from 32 to 40 bytes, for every lapsed MN, none for a live binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// The last accepted Identification [RFC 5944 § 5.7].
    pub identification: u64,
    /// For a NAI: the home address its last binding had (never 0.0.0.0);
    /// `None` for an MN known by its home address (the key says it), and
    /// for a NAI whose only accepted request bound nothing.
    pub home_address: Option<Ipv4Addr>,
}

/// The shared binding table (read side public, write side crate-private).
#[derive(Debug, Default)]
pub struct BindingTable {
    bindings: DashMap<BindingKey, BindingEntry>,
    /// NAI index: hash of (realm, NAI) → binding key. Storing a hash instead
    /// of a second copy of every NAI saves ~50 bytes per NAI binding; a hit
    /// is confirmed against the binding's own NAI.
    by_nai: DashMap<u64, BindingKey>,
    /// NAIs whose hash slot in `by_nai` is taken by another NAI (rare).
    nai_overflow: DashMap<(RealmId, Nai), Ipv4Addr>,
    nai_hasher: RandomState,
    /// Tests: every NAI hashes alike, to exercise the overflow map.
    #[cfg(test)]
    force_collisions: bool,
    replay: DashMap<(RealmId, Identity), Remembered>,
}

impl BindingTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of bindings (home addresses) in all realms.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether there is no binding.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// Number of bindings in `realm` (a full scan: for metrics, not hot paths).
    pub fn count(&self, realm: RealmId) -> usize {
        self.bindings.iter().filter(|e| e.key().0 == realm).count()
    }

    /// A copy of the binding of `home_address`.
    pub fn get(&self, realm: RealmId, home_address: Ipv4Addr) -> Option<BindingEntry> {
        self.bindings
            .get(&(realm, home_address))
            .map(|e| e.value().clone())
    }

    /// Runs `f` on the binding of `home_address` without copying it (the
    /// data plane's look-up). Do not call back into the table from `f`.
    pub fn with<R>(
        &self,
        realm: RealmId,
        home_address: Ipv4Addr,
        f: impl FnOnce(&BindingEntry) -> R,
    ) -> Option<R> {
        self.bindings
            .get(&(realm, home_address))
            .map(|e| f(e.value()))
    }

    /// The home address bound to `nai`.
    pub fn home_address_of(&self, realm: RealmId, nai: &str) -> Option<Ipv4Addr> {
        let slot = self
            .by_nai
            .get(&self.nai_hash(realm, nai))
            .map(|e| *e.value());
        if let Some((r, a)) = slot
            && r == realm
            && self.has_nai(realm, a, nai)
        {
            return Some(a);
        }
        if self.nai_overflow.is_empty() {
            return None;
        }
        let key = (realm, Nai::new(nai)?);
        self.nai_overflow.get(&key).map(|e| *e.value())
    }

    fn nai_hash(&self, realm: RealmId, nai: &str) -> u64 {
        #[cfg(test)]
        if self.force_collisions {
            return 0;
        }
        self.nai_hasher.hash_one((realm, nai))
    }

    fn has_nai(&self, realm: RealmId, home_address: Ipv4Addr, nai: &str) -> bool {
        self.with(realm, home_address, |e| e.nai.as_deref() == Some(nai))
            .unwrap_or(false)
    }

    fn index_nai(&self, realm: RealmId, nai: &Nai, home_address: Ipv4Addr) {
        let h = self.nai_hash(realm, nai);
        let occupant = self.by_nai.get(&h).map(|e| *e.value());
        match occupant {
            // Taken by another live NAI (a hash collision): use the overflow map.
            Some((r, a))
                if (r, a) != (realm, home_address)
                    && self
                        .with(r, a, |e| {
                            e.nai.as_ref().is_some_and(|n| self.nai_hash(r, n) == h)
                        })
                        .unwrap_or(false) =>
            {
                self.nai_overflow.insert((realm, nai.clone()), home_address);
            }
            _ => {
                self.by_nai.insert(h, (realm, home_address));
            }
        }
    }

    /// The last accepted Identification of `mn`, from its binding or, once
    /// the binding is gone, from the replay memory [RFC 5944 § 5.7].
    pub fn last_identification(&self, realm: RealmId, mn: MnId<'_>) -> Option<u64> {
        let (hoa, identity) = match mn {
            MnId::HomeAddress(a) => (Some(a), Identity::HomeAddress(a)),
            MnId::Nai(n) => {
                let nai = Nai::new(n)?;
                (self.home_address_of(realm, n), Identity::Nai(nai))
            }
        };
        if let Some(id) = hoa.and_then(|a| self.with(realm, a, |e| e.last_identification)) {
            return Some(id);
        }
        self.replay
            .get(&(realm, identity))
            .map(|e| e.value().identification)
    }

    /// The home address `nai`'s last binding had, once that binding is gone
    /// (expired, deregistered, removed) and the NAI holds none: the address
    /// the state machine offers it first when it asks again with HoA
    /// 0.0.0.0 (address affinity). `None` while the NAI is bound (its
    /// binding says where) or when nothing is remembered.
    pub fn last_home_address(&self, realm: RealmId, nai: &Nai) -> Option<Ipv4Addr> {
        self.replay
            .get(&(realm, Identity::Nai(nai.clone())))
            .and_then(|e| e.value().home_address)
    }

    /// The last accepted Identification of the mobile node a request names
    /// by `home_address` (0.0.0.0: none) and, when it authenticated by NAI,
    /// `nai`: the newest, in serial-number order [RFC 5944 § 5.7], of what
    /// the home address and the NAI remember (a binding with a NAI is
    /// remembered by the NAI once it is gone).
    ///
    /// One function for both sides of the compare-and-set on replay state:
    /// the engine validates a request against it (the nonce it expects is
    /// derived from it) and records the value in the command; the state
    /// machine recomputes it from the command's own fields at apply time
    /// ([`crate::command::Refusal::Stale`]).
    pub fn mn_last_identification(
        &self,
        realm: RealmId,
        home_address: Ipv4Addr,
        nai: Option<&Nai>,
    ) -> Option<u64> {
        let by_home = (nai.is_none() || !home_address.is_unspecified())
            .then(|| self.last_identification(realm, MnId::HomeAddress(home_address)))
            .flatten();
        let by_nai = nai.and_then(|n| self.last_identification(realm, MnId::Nai(n.as_str())));
        match (by_home, by_nai) {
            (Some(a), Some(b)) => Some(if (b.wrapping_sub(a) as i64) > 0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// One page of bindings sorted by `(realm, home address)`, strictly after
    /// `after`, at most `limit`, optionally of one realm only. Each page is
    /// one scan of the table (O(n log limit)): fine for an admin API, not for
    /// packet paths.
    pub fn page(
        &self,
        realm: Option<RealmId>,
        after: Option<BindingKey>,
        limit: usize,
    ) -> Vec<(BindingKey, BindingEntry)> {
        if limit == 0 {
            return Vec::new();
        }
        // Keep the `limit` smallest keys above the cursor in a max-heap.
        let mut heap = std::collections::BinaryHeap::with_capacity(limit + 1);
        for e in self.bindings.iter() {
            let k = *e.key();
            if realm.is_some_and(|r| r != k.0) || after.is_some_and(|a| k <= a) {
                continue;
            }
            if heap.len() < limit {
                heap.push(k);
            } else if heap.peek().is_some_and(|top| k < *top) {
                heap.pop();
                heap.push(k);
            }
        }
        let keys = heap.into_sorted_vec();
        keys.into_iter()
            .filter_map(|k| self.bindings.get(&k).map(|e| (k, e.value().clone())))
            .collect()
    }

    /// Visits every binding in no particular order, without copying it
    /// (snapshots: `StateMachine::snapshot` encodes each in place and
    /// orders the encodings by key). Holds each shard's read lock while
    /// visiting it: `f` must not touch the table.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&BindingKey, &BindingEntry)) {
        for e in self.bindings.iter() {
            f(e.key(), e.value());
        }
    }

    /// The replay memory, sorted (snapshots).
    pub(crate) fn sorted_replay(&self) -> Vec<((RealmId, Identity), Remembered)> {
        let mut v: Vec<_> = self
            .replay
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Inserts or replaces a binding, keeping the NAI index in step, and
    /// clears the MN's replay memory (the binding now carries it).
    pub(crate) fn put(&self, realm: RealmId, home_address: Ipv4Addr, entry: BindingEntry) {
        self.replay
            .remove(&(realm, Identity::of(home_address, entry.nai.as_ref())));
        let old_nai = self
            .bindings
            .get(&(realm, home_address))
            .and_then(|e| e.value().nai.clone());
        if old_nai.is_some() && old_nai != entry.nai {
            self.drop_index(realm, home_address, old_nai.as_ref());
        }
        let nai = entry.nai.clone();
        self.bindings.insert((realm, home_address), entry);
        // Indexed after the insert: a collision check reads the bindings.
        if let Some(n) = &nai {
            self.index_nai(realm, n, home_address);
        }
    }

    /// Removes a binding and remembers its last identification and, for a
    /// NAI, its home address.
    pub(crate) fn remove(&self, realm: RealmId, home_address: Ipv4Addr) -> Option<BindingEntry> {
        let (_, old) = self.bindings.remove(&(realm, home_address))?;
        self.drop_index(realm, home_address, old.nai.as_ref());
        let remembered = Remembered {
            identification: old.last_identification,
            home_address: old
                .nai
                .as_ref()
                .and(Some(home_address))
                .filter(|a| !a.is_unspecified()),
        };
        self.replay.insert(
            (realm, Identity::of(home_address, old.nai.as_ref())),
            remembered,
        );
        Some(old)
    }

    /// Records an identification in the replay memory, keeping the home
    /// address remembered for the MN, if any.
    pub(crate) fn remember(&self, realm: RealmId, who: Identity, identification: u64) {
        self.replay
            .entry((realm, who))
            .and_modify(|r| r.identification = identification)
            .or_insert(Remembered {
                identification,
                home_address: None,
            });
    }

    /// Puts a replay-memory entry back as it was (snapshot restore).
    pub(crate) fn restore_remembered(&self, realm: RealmId, who: Identity, r: Remembered) {
        self.replay.insert((realm, who), r);
    }

    fn drop_index(&self, realm: RealmId, home_address: Ipv4Addr, nai: Option<&Nai>) {
        if let Some(n) = nai {
            let h = self.nai_hash(realm, n);
            self.by_nai
                .remove_if(&h, |_, k| *k == (realm, home_address));
            if !self.nai_overflow.is_empty() {
                self.nai_overflow
                    .remove_if(&(realm, n.clone()), |_, a| *a == home_address);
            }
        }
    }

    /// Empties everything (snapshot restore).
    pub(crate) fn clear(&self) {
        self.bindings.clear();
        self.by_nai.clear();
        self.nai_overflow.clear();
        self.replay.clear();
    }
}

/// A care-of address due to expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expiry {
    /// When (since the Unix epoch).
    pub expires_at: Duration,
    /// Realm.
    pub realm: RealmId,
    /// Home address.
    pub home_address: Ipv4Addr,
    /// Care-of address.
    pub coa: Ipv4Addr,
}

/// Care-of addresses ordered by expiry time (then realm, HoA, CoA, so the
/// order is total and identical on every replica).
///
/// Stored as a packed tuple (24 bytes instead of the 32 of [`Expiry`]);
/// the tuple order is the same as `Expiry`'s derived order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpirySchedule {
    set: BTreeSet<(u64, u32, u16, u32, u32)>,
}

fn pack(e: &Expiry) -> (u64, u32, u16, u32, u32) {
    (
        e.expires_at.as_secs(),
        e.expires_at.subsec_nanos(),
        e.realm.0,
        u32::from(e.home_address),
        u32::from(e.coa),
    )
}

fn unpack(&(s, n, r, h, c): &(u64, u32, u16, u32, u32)) -> Expiry {
    Expiry {
        expires_at: Duration::new(s, n),
        realm: RealmId(r),
        home_address: Ipv4Addr::from(h),
        coa: Ipv4Addr::from(c),
    }
}

impl ExpirySchedule {
    /// Adds an entry.
    pub fn insert(&mut self, e: Expiry) {
        self.set.insert(pack(&e));
    }

    /// Removes an entry; false if absent.
    pub fn remove(&mut self, e: &Expiry) -> bool {
        self.set.remove(&pack(e))
    }

    /// Every entry, earliest first.
    pub fn iter(&self) -> impl Iterator<Item = Expiry> + '_ {
        self.set.iter().map(unpack)
    }

    /// The earliest expiry time, for the driver's timer.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.set.first().map(|e| unpack(e).expires_at)
    }

    /// Every entry with `expires_at <= now`, earliest first. They stay in
    /// the schedule until an `Expire` command for them is applied.
    pub fn expired(&self, now: Duration) -> Vec<Expiry> {
        self.set
            .iter()
            .map(unpack)
            .take_while(|e| e.expires_at <= now)
            .collect()
    }

    /// Number of scheduled care-of addresses.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Empties the schedule.
    pub fn clear(&mut self) {
        self.set.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: RealmId = RealmId(0);

    fn coa(last: u8, expires: u64) -> CareOf {
        CareOf {
            coa: Ipv4Addr::new(198, 18, 0, last),
            registered_at: Duration::from_secs(expires.saturating_sub(100)),
            lifetime: 100.min(expires as u16),
            encap: Encap::IpInIp,
            reverse_tunnel: false,
        }
    }

    fn hoa(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, last)
    }

    fn entry(nai: Option<&str>, c: CareOf, id: u64) -> BindingEntry {
        BindingEntry {
            nai: nai.and_then(Nai::new),
            care_of: CareOfList::One(c),
            last_identification: id,
        }
    }

    #[test]
    fn lookup_by_hoa_and_nai_and_replay_memory() {
        let t = BindingTable::new();
        t.put(R, hoa(7), entry(Some("mn@example.net"), coa(1, 1000), 42));
        t.put(R, hoa(8), entry(None, coa(2, 1000), 43));
        assert_eq!(t.len(), 2);
        assert_eq!(t.home_address_of(R, "mn@example.net"), Some(hoa(7)));
        assert_eq!(t.home_address_of(RealmId(1), "mn@example.net"), None);
        assert_eq!(t.with(R, hoa(8), |e| e.care_of[0].coa), Some(coa(2, 1).coa));
        assert_eq!(
            t.last_identification(R, MnId::Nai("mn@example.net")),
            Some(42)
        );
        let old = t.remove(R, hoa(7)).expect("present");
        assert_eq!(old.last_identification, 42);
        assert_eq!(t.home_address_of(R, "mn@example.net"), None);
        // Reference: RFC 5944 § 5.7 — the identification outlives the binding.
        assert_eq!(
            t.last_identification(R, MnId::Nai("mn@example.net")),
            Some(42)
        );
        assert_eq!(t.last_identification(R, MnId::HomeAddress(hoa(7))), None);
        t.remove(R, hoa(8));
        assert_eq!(
            t.last_identification(R, MnId::HomeAddress(hoa(8))),
            Some(43)
        );
        // Registering again clears the memory: the binding carries it.
        t.put(R, hoa(8), entry(None, coa(2, 1000), 50));
        assert_eq!(t.sorted_replay().len(), 1);
        assert_eq!(
            t.last_identification(R, MnId::HomeAddress(hoa(8))),
            Some(50)
        );
    }

    #[test]
    fn replay_memory_keeps_a_nai_s_last_home_address() {
        let t = BindingTable::new();
        let nai = Nai::new("mn@example.net").expect("valid");
        t.put(R, hoa(7), entry(Some("mn@example.net"), coa(1, 1000), 42));
        assert_eq!(t.last_home_address(R, &nai), None, "bound: not remembered");
        t.remove(R, hoa(7));
        assert_eq!(t.last_home_address(R, &nai), Some(hoa(7)));
        assert_eq!(t.last_home_address(RealmId(1), &nai), None);
        // A later identification (a deregistration with nothing bound)
        // keeps the address.
        t.remember(R, Identity::Nai(nai.clone()), 43);
        assert_eq!(t.last_home_address(R, &nai), Some(hoa(7)));
        assert_eq!(t.last_identification(R, MnId::Nai(&nai)), Some(43));
        // Fixed home addresses: the key is the address, nothing more kept.
        t.put(R, hoa(8), entry(None, coa(2, 1000), 1));
        t.remove(R, hoa(8));
        assert_eq!(
            t.sorted_replay(),
            vec![
                (
                    (R, Identity::HomeAddress(hoa(8))),
                    Remembered {
                        identification: 1,
                        home_address: None
                    }
                ),
                (
                    (R, Identity::Nai(nai.clone())),
                    Remembered {
                        identification: 43,
                        home_address: Some(hoa(7))
                    }
                ),
            ]
        );
        // Bound again: the binding carries both.
        t.put(R, hoa(9), entry(Some("mn@example.net"), coa(1, 1000), 44));
        assert_eq!(t.last_home_address(R, &nai), None);
        assert_eq!(t.sorted_replay().len(), 1);
        // A NAI never bound: the identification alone.
        let other = Nai::new("other@example.net").expect("valid");
        t.remember(R, Identity::Nai(other.clone()), 5);
        assert_eq!(t.last_home_address(R, &other), None);
        assert_eq!(size_of::<Remembered>(), 16);
    }

    #[test]
    fn nai_index_survives_hash_collisions() {
        let t = BindingTable {
            force_collisions: true,
            ..BindingTable::default()
        };
        t.put(R, hoa(1), entry(Some("a@example.net"), coa(1, 1000), 1));
        t.put(R, hoa(2), entry(Some("b@example.net"), coa(2, 1000), 1));
        t.put(
            RealmId(1),
            hoa(3),
            entry(Some("a@example.net"), coa(3, 1000), 1),
        );
        assert_eq!(t.home_address_of(R, "a@example.net"), Some(hoa(1)));
        assert_eq!(t.home_address_of(R, "b@example.net"), Some(hoa(2)));
        assert_eq!(t.home_address_of(RealmId(1), "a@example.net"), Some(hoa(3)));
        assert_eq!(t.home_address_of(R, "c@example.net"), None);
        t.remove(R, hoa(1));
        assert_eq!(t.home_address_of(R, "a@example.net"), None);
        assert_eq!(t.home_address_of(R, "b@example.net"), Some(hoa(2)));
        t.remove(R, hoa(2));
        assert_eq!(t.home_address_of(R, "b@example.net"), None);
        assert_eq!(t.home_address_of(RealmId(1), "a@example.net"), Some(hoa(3)));
        // The freed slot is reused.
        t.put(R, hoa(4), entry(Some("d@example.net"), coa(4, 1000), 1));
        assert_eq!(t.home_address_of(R, "d@example.net"), Some(hoa(4)));
    }

    #[test]
    fn replacing_keeps_nai_index() {
        let t = BindingTable::new();
        t.put(R, hoa(7), entry(Some("a@example.net"), coa(1, 1000), 1));
        t.put(R, hoa(7), entry(Some("a@example.net"), coa(2, 1000), 2));
        assert_eq!(t.home_address_of(R, "a@example.net"), Some(hoa(7)));
        t.put(R, hoa(7), entry(Some("b@example.net"), coa(2, 1000), 3));
        assert_eq!(t.home_address_of(R, "a@example.net"), None);
        assert_eq!(t.home_address_of(R, "b@example.net"), Some(hoa(7)));
    }

    #[test]
    fn paging_sorted_with_cursor() {
        let t = BindingTable::new();
        for i in [9u8, 3, 5, 1, 7, 2] {
            t.put(R, hoa(i), entry(None, coa(i, 1000), 0));
        }
        t.put(RealmId(1), hoa(4), entry(None, coa(4, 1000), 0));
        let keys =
            |v: Vec<(BindingKey, BindingEntry)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(t.page(None, None, 3)),
            vec![(R, hoa(1)), (R, hoa(2)), (R, hoa(3))]
        );
        assert_eq!(
            keys(t.page(None, Some((R, hoa(3))), 3)),
            vec![(R, hoa(5)), (R, hoa(7)), (R, hoa(9))]
        );
        assert_eq!(
            keys(t.page(None, Some((R, hoa(9))), 3)),
            vec![(RealmId(1), hoa(4))]
        );
        assert_eq!(
            keys(t.page(Some(RealmId(1)), None, 10)),
            vec![(RealmId(1), hoa(4))]
        );
        assert!(t.page(None, None, 0).is_empty());
        assert_eq!(t.count(R), 6);
    }

    #[test]
    fn expiry_ordering() {
        let mut s = ExpirySchedule::default();
        let e = |t: u64, h: u8, c: u8| Expiry {
            expires_at: Duration::from_secs(t),
            realm: R,
            home_address: hoa(h),
            coa: Ipv4Addr::new(198, 18, 0, c),
        };
        s.insert(e(300, 1, 1));
        s.insert(e(100, 9, 1));
        s.insert(e(200, 2, 1));
        s.insert(e(100, 3, 1));
        assert_eq!(s.next_expiry(), Some(Duration::from_secs(100)));
        assert_eq!(s.expired(Duration::from_secs(99)), vec![]);
        assert_eq!(
            s.expired(Duration::from_secs(200)),
            vec![e(100, 3, 1), e(100, 9, 1), e(200, 2, 1)]
        );
        assert!(s.remove(&e(100, 3, 1)));
        assert!(!s.remove(&e(100, 3, 1)));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn care_of_list_ops() {
        let mut l = CareOfList::One(coa(1, 1000));
        l.upsert(coa(1, 2000));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].expires_at(), Duration::from_secs(2000));
        l.upsert(coa(2, 1000));
        assert_eq!(l.len(), 2);
        let rest = l.without(coa(1, 0).coa).expect("one left");
        assert_eq!(rest, CareOfList::One(coa(2, 1000)));
        assert!(rest.without(coa(2, 0).coa).is_none());
        assert!(Nai::new("").is_none());
        assert!(Nai::new(&"x".repeat(256)).is_none());
        assert!(Nai::new(&"x".repeat(255)).is_some());
    }
}
