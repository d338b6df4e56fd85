//! The Raft log, hard state and snapshot: in memory, or durable in tikv's
//! `raft-engine`.
//!
//! [`RaftStore`] implements `raft::Storage` for the `RawNode` and offers the
//! writes the ready loop needs ([`persist`](RaftStore::persist),
//! [`set_commit`](RaftStore::set_commit), …). It keeps the whole live log
//! (everything after the last snapshot) in memory; the durable flavour
//! writes every change through to a `raft-engine` instance first, synced
//! (except a change of the commit index alone, volatile in Raft), and reads
//! it all back in [`RaftStore::open`]. The log stays
//! small because the node snapshots the state machine every few thousand
//! entries and compacts it ([DESIGN.md § 4]), so the memory copy is cheap
//! and reads never touch the disk.
//!
//! The in-memory flavour ([`RaftStore::in_memory`]) is what the
//! deterministic simulation uses as a node's "disk": it survives a
//! simulated crash (the node's volatile state is dropped, the store kept).
//!
//! # On-disk layout
//!
//! Two raft-engine raft groups: `META` holds key/values (`hs` the
//! `HardState`, `cs` the `ConfState`, `snap_meta` the last snapshot's
//! `SnapshotMetadata`, `boots` a big-endian boot counter), `LOG` the
//! entries. A received snapshot replaces the whole log: `LOG` is cleaned in
//! the same synced batch that records the snapshot, so a restart never sees
//! a stale tail behind a newer snapshot.
//!
//! The snapshot's state-machine bytes are a file of their own beside
//! raft-engine's, `snapshot-<term>-<index>.bin`, written (temporary file,
//! fsync, rename, fsync of the directory) *before* the batch that records
//! `snap_meta`, so the metadata never names a file that is not there; a
//! file no metadata names (a crash between the two, or an older snapshot)
//! is removed at [`RaftStore::open`]. They used to be the `snap_data`
//! key/value, but raft-engine keeps every key/value's value in its memtable:
//! the table's encoding (34 B per binding, `bench-snapshot`) was resident
//! twice, in raft-engine and in this store, and every snapshot cloned it
//! twice more (the batch and its encoding), and raft-engine's log carried a
//! copy per snapshot until purged. Now the durable store holds only the
//! metadata and reads the file when raft sends a snapshot (rare: a joining
//! or lagging member). Measured at 100 000 bindings (with `main.rs`'s fixed
//! mmap threshold): raft member RSS growth 238–257 → 177–203 B per binding,
//! a joiner's 240–242 → 171–183, the leader's directory 23.4 → 11.5 MB.
//! `open` moves an older store's `snap_data` to its file.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use raft_engine::{Engine, LogBatch, MessageExt};

const META: u64 = 1;
const LOG: u64 = 2;
const KEY_HS: &[u8] = b"hs";
const KEY_CS: &[u8] = b"cs";
const KEY_SNAP_META: &[u8] = b"snap_meta";
/// An older layout's snapshot bytes (read by `open`, deleted by the next
/// snapshot; see the module docs).
const KEY_SNAP_DATA: &[u8] = b"snap_data";
const KEY_BOOTS: &[u8] = b"boots";
/// Snapshot data files: `snapshot-<term>-<index>.bin` (see the module docs).
const SNAP_FILE_PREFIX: &str = "snapshot-";
const SNAP_FILE_SUFFIX: &str = ".bin";

/// Storage failures. The daemon treats them as fatal: a node that cannot
/// persist its log must not vote or acknowledge anything.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The raft-engine failed (I/O, corruption).
    #[error("raft-engine: {0}")]
    Engine(#[from] raft_engine::Error),
    /// What is on disk is inconsistent (a hole in the log, bad counter).
    #[error("corrupt raft storage: {0}")]
    Corrupt(&'static str),
    /// The snapshot data file could not be written or read.
    #[error("raft snapshot file {path}: {source}")]
    SnapshotFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// The node's Raft storage (see the module docs).
pub struct RaftStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot (metadata index 0 = none yet). In the durable
    /// flavour its data is empty except as loaded by `open` (for the
    /// node's restore at start) until the next snapshot replaces it: the
    /// bytes are in `dir`'s snapshot file.
    snapshot: Snapshot,
    /// The log after `snapshot`'s index, contiguous.
    entries: Vec<Entry>,
    boots: u64,
    engine: Option<Engine>,
    /// The durable store's directory (raft-engine's files and the snapshot
    /// file).
    dir: Option<PathBuf>,
    /// Raft asked for a snapshot that the stored one cannot serve (it
    /// predates the peer's membership): the node takes a fresh one.
    snapshot_wanted: AtomicBool,
}

impl std::fmt::Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore")
            .field("hard_state", &self.hard_state)
            .field("conf_state", &self.conf_state)
            .field("snapshot_index", &self.snapshot.get_metadata().index)
            .field("entries", &self.entries.len())
            .field("boots", &self.boots)
            .field("durable", &self.engine.is_some())
            .finish()
    }
}

impl RaftStore {
    /// An empty, volatile store (tests and the simulation).
    pub fn in_memory() -> Self {
        Self {
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot: Snapshot::default(),
            entries: Vec::new(),
            boots: 0,
            engine: None,
            dir: None,
            snapshot_wanted: AtomicBool::new(false),
        }
    }

    /// Opens (or creates) the durable store in `dir` and loads it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let cfg = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let engine = Engine::open(cfg)?;
        let hard_state = engine
            .get_message::<HardState>(META, KEY_HS)?
            .unwrap_or_default();
        let conf_state = engine
            .get_message::<ConfState>(META, KEY_CS)?
            .unwrap_or_default();
        let mut snapshot = Snapshot::default();
        if let Some(meta) = engine.get_message::<SnapshotMetadata>(META, KEY_SNAP_META)? {
            let path = snapshot_path(dir, &meta);
            snapshot.data = match std::fs::read(&path) {
                Ok(d) => d.into(),
                // A store written before snapshot files: the key/value.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => engine
                    .get(META, KEY_SNAP_DATA)
                    .ok_or(StoreError::Corrupt("snapshot data missing"))?
                    .into(),
                Err(source) => return Err(StoreError::SnapshotFile { path, source }),
            };
            snapshot.set_metadata(meta);
        }
        let meta = snapshot.get_metadata();
        if meta.index > 0 && !snapshot_path(dir, meta).exists() {
            // The older layout: move the bytes to their file (then drop
            // the key/value, which raft-engine would keep resident).
            write_snapshot_file(dir, meta, &snapshot.data)?;
            let mut b = LogBatch::default();
            b.delete(META, KEY_SNAP_DATA.to_vec());
            engine.write(&mut b, true)?;
        }
        remove_stale_snapshot_files(dir, meta);
        let boots = match engine.get(META, KEY_BOOTS) {
            None => 0,
            Some(b) => u64::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("boot counter"))?,
            ),
        };
        let mut entries = Vec::new();
        if let (Some(first), Some(last)) = (engine.first_index(LOG), engine.last_index(LOG)) {
            engine.fetch_entries_to::<EntryExt>(LOG, first, last + 1, None, &mut entries)?;
        }
        let snap_index = snapshot.get_metadata().index;
        entries.retain(|e| e.index > snap_index);
        if let Some(e) = entries.first() {
            if e.index != snap_index + 1 {
                return Err(StoreError::Corrupt("hole between snapshot and log"));
            }
        }
        Ok(Self {
            hard_state,
            conf_state,
            snapshot,
            entries,
            boots,
            engine: Some(engine),
            dir: Some(dir.to_path_buf()),
            snapshot_wanted: AtomicBool::new(false),
        })
    }

    /// Whether this store writes to disk.
    pub fn is_durable(&self) -> bool {
        self.engine.is_some()
    }

    /// The persisted hard state (term, vote, commit).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The persisted membership.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The latest snapshot (index 0 = none).
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The number of entries held after the snapshot.
    pub fn log_len(&self) -> usize {
        self.entries.len()
    }

    fn write(&self, batch: &mut LogBatch) -> Result<(), StoreError> {
        // Synced: an acknowledged vote or entry must survive a power cut
        // (Raft's persistence rule).
        self.write_synced(batch, true)
    }

    /// `sync = false` only for what Raft may lose: the commit index is
    /// volatile state [Raft § 5, figure 2], recomputed from the leader
    /// after a restart. The write still reaches the file (a killed process
    /// keeps it); a later synced write, or raft-engine's sync when it
    /// rotates files, makes it durable, and no hole can open before it.
    fn write_synced(&self, batch: &mut LogBatch, sync: bool) -> Result<(), StoreError> {
        if let Some(e) = &self.engine {
            if !batch.is_empty() {
                e.write(batch, sync)?;
            }
        }
        Ok(())
    }

    /// Counts a boot and returns the new count: a per-boot nonce that is
    /// unique across restarts of this store (it tags proposals, so an entry
    /// proposed before a restart never matches a request made after it).
    pub fn next_boot(&mut self) -> Result<u64, StoreError> {
        let boots = self.boots.wrapping_add(1);
        let mut b = LogBatch::default();
        b.put(META, KEY_BOOTS.to_vec(), boots.to_be_bytes().to_vec())?;
        self.write(&mut b)?;
        self.boots = boots;
        Ok(boots)
    }

    /// Records the initial membership of a new cluster (no-op when the
    /// store already has one or any state).
    pub fn bootstrap(&mut self, voters: &[u64]) -> Result<(), StoreError> {
        let fresh = self.conf_state == ConfState::default()
            && self.hard_state == HardState::default()
            && self.entries.is_empty()
            && self.snapshot.get_metadata().index == 0;
        if !fresh || voters.is_empty() {
            return Ok(());
        }
        let cs = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        self.set_conf_state(cs)
    }

    /// Persists one Ready in one batch: a received snapshot (which
    /// replaces the log), new entries (a conflicting tail is overwritten)
    /// and the hard state. Synced unless only the commit index moved.
    pub fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), StoreError> {
        let mut b = LogBatch::default();
        let mut new_hs = hs.cloned().unwrap_or_else(|| self.hard_state.clone());
        if let Some(s) = snapshot {
            let meta = s.get_metadata();
            new_hs.term = new_hs.term.max(meta.term);
            new_hs.commit = new_hs.commit.max(meta.index);
            b.add_command(LOG, raft_engine::Command::Clean);
            self.stage_snapshot_data(meta, &s.data, &mut b)?;
            b.put_message(META, KEY_SNAP_META.to_vec(), meta)?;
            b.put_message(META, KEY_CS.to_vec(), meta.get_conf_state())?;
        }
        if let Some(first) = entries.first() {
            let snap_index = snapshot
                .map(|s| s.get_metadata().index)
                .unwrap_or(self.snapshot.get_metadata().index);
            if first.index <= snap_index {
                return Err(StoreError::Corrupt("append overwrites the snapshot"));
            }
            let last = if snapshot.is_some() {
                snap_index
            } else {
                self.last()
            };
            if first.index > last + 1 {
                return Err(StoreError::Corrupt("append leaves a hole"));
            }
            b.add_entries::<EntryExt>(LOG, entries)?;
        }
        if snapshot.is_some() || hs.is_some() {
            b.put_message(META, KEY_HS.to_vec(), &new_hs)?;
        }
        // A Ready that only moves the commit index (a leader counting
        // acknowledgements, a follower told of a commit) is the most common
        // one under load: it needs no fsync of its own (see `write_synced`).
        // Entries, a snapshot, a new term or vote do.
        let sync = snapshot.is_some()
            || !entries.is_empty()
            || new_hs.term != self.hard_state.term
            || new_hs.vote != self.hard_state.vote;
        self.write_synced(&mut b, sync)?;
        if let Some(s) = snapshot {
            self.set_snapshot(s.clone());
            self.conf_state = s.get_metadata().get_conf_state().clone();
            self.entries.clear();
        }
        if let Some(first) = entries.first() {
            // The log is sorted by index: a binary search, not a scan of
            // up to `snapshot_every` entries on every Ready.
            let keep = self.entries.partition_point(|e| e.index < first.index);
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
        self.hard_state = new_hs;
        Ok(())
    }

    /// Persists a new commit index (from a `LightReady`).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StoreError> {
        if commit == self.hard_state.commit {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        let mut b = LogBatch::default();
        b.put_message(META, KEY_HS.to_vec(), &hs)?;
        // Volatile state: see `write_synced`. A snapshot re-records it in
        // its synced batch, so the disk never holds a snapshot beyond it.
        self.write_synced(&mut b, false)?;
        self.hard_state = hs;
        Ok(())
    }

    /// Persists the membership after a configuration change is applied.
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), StoreError> {
        let mut b = LogBatch::default();
        b.put_message(META, KEY_CS.to_vec(), &cs)?;
        self.write(&mut b)?;
        self.conf_state = cs;
        Ok(())
    }

    /// Records a snapshot of the state machine taken at `index` (≤ the
    /// applied index) and drops the log up to it.
    pub fn compact_to_snapshot(&mut self, index: u64, data: Vec<u8>) -> Result<(), StoreError> {
        let snap_index = self.snapshot.get_metadata().index;
        if index <= snap_index {
            return Ok(());
        }
        if index > self.hard_state.commit {
            return Err(StoreError::Corrupt("snapshot beyond the commit index"));
        }
        let term = self
            .entries
            .iter()
            .find(|e| e.index == index)
            .map(|e| e.term)
            .ok_or(StoreError::Corrupt("snapshot index not in the log"))?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        {
            let m = snap.mut_metadata();
            m.index = index;
            m.term = term;
            m.set_conf_state(self.conf_state.clone());
        }
        let mut b = LogBatch::default();
        self.stage_snapshot_data(snap.get_metadata(), &snap.data, &mut b)?;
        b.put_message(META, KEY_SNAP_META.to_vec(), snap.get_metadata())?;
        // The commit index may have been written unsynced: record it again
        // here, so a restart never sees `applied` (the snapshot's index)
        // beyond `commit`.
        b.put_message(META, KEY_HS.to_vec(), &self.hard_state)?;
        b.add_command(LOG, raft_engine::Command::Compact { index: index + 1 });
        self.write(&mut b)?;
        self.entries.retain(|e| e.index > index);
        self.set_snapshot(snap);
        if let Some(e) = &self.engine {
            // Lets raft-engine recycle files the compaction emptied.
            e.purge_expired_files()?;
        }
        Ok(())
    }

    /// Drops the snapshot bytes `open` loaded (the durable store reads
    /// them from their file when raft sends a snapshot). For the node,
    /// once it has restored its state machine from
    /// [`snapshot_ref`](Self::snapshot_ref): otherwise they stay resident
    /// until the next snapshot (34 B per binding, see the module docs).
    pub fn release_snapshot_data(&mut self) {
        if self.dir.is_some() {
            self.snapshot.data = Default::default();
        }
    }

    /// Before a batch that records snapshot `meta`: the durable store
    /// writes `data` to its file (synced, see the module docs) and drops
    /// an older layout's key/value in the batch; the in-memory store keeps
    /// the bytes in `snapshot` alone.
    fn stage_snapshot_data(
        &self,
        meta: &SnapshotMetadata,
        data: &[u8],
        b: &mut LogBatch,
    ) -> Result<(), StoreError> {
        if let Some(dir) = &self.dir {
            write_snapshot_file(dir, meta, data)?;
            b.delete(META, KEY_SNAP_DATA.to_vec());
        }
        Ok(())
    }

    /// Records `snap` as the latest snapshot once its batch is written: the
    /// durable store keeps the metadata alone and removes older files.
    fn set_snapshot(&mut self, mut snap: Snapshot) {
        let Some(dir) = &self.dir else {
            self.snapshot = snap;
            return;
        };
        snap.data = Default::default();
        remove_stale_snapshot_files(dir, snap.get_metadata());
        self.snapshot = snap;
        // No `malloc_trim` here: with `main.rs`'s fixed mmap threshold the
        // snapshot's large buffers are their own mappings, unmapped when
        // freed; a trim after each snapshot measured no further gain
        // (members 178–229 B per binding with it, 177–187 without, 100 000
        // bindings) for ≈ 1 ms (up to 4.4 ms) holding the arenas' locks.
    }

    /// Whether raft wanted a snapshot the store could not serve (clears
    /// the flag).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    fn snap_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snap_index(), |e| e.index)
    }
}

impl Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.snap_index() + 1;
        let lo = usize::try_from(low - offset).unwrap_or(usize::MAX);
        let hi = usize::try_from(high - offset).unwrap_or(usize::MAX);
        let mut ents = self
            .entries
            .get(lo..hi)
            .ok_or(raft::Error::Store(StorageError::Unavailable))?
            .to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snapshot.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < snap.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let i = usize::try_from(idx - snap.index - 1).unwrap_or(usize::MAX);
        self.entries
            .get(i)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let cs = self.snapshot.get_metadata().get_conf_state();
        let knows_peer = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
            .any(|&id| id == to);
        // A peer missing from the snapshot's membership would refuse it
        // (raft-rs `restore`): have the node take a newer one, raft retries.
        if self.snap_index() < request_index || self.snap_index() == 0 || !knows_peer {
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = self.snapshot.clone();
        if let Some(dir) = &self.dir {
            let path = snapshot_path(dir, snap.get_metadata());
            match std::fs::read(&path) {
                Ok(d) => snap.data = d.into(),
                Err(e) => {
                    // Not fatal here (raft-rs panics on any other error):
                    // raft asks again later; the operator sees the log.
                    tracing::error!(path = %path.display(), error = %e, "cannot read the raft snapshot file");
                    return Err(raft::Error::Store(
                        StorageError::SnapshotTemporarilyUnavailable,
                    ));
                }
            }
        }
        Ok(snap)
    }
}

/// The data file of snapshot `meta` in `dir`.
fn snapshot_path(dir: &Path, meta: &SnapshotMetadata) -> PathBuf {
    dir.join(format!(
        "{SNAP_FILE_PREFIX}{}-{}{SNAP_FILE_SUFFIX}",
        meta.term, meta.index
    ))
}

/// Writes snapshot `meta`'s data file durably: a temporary file, synced,
/// renamed into place, and the directory synced (so the rename survives a
/// power cut before raft-engine's batch names the file).
fn write_snapshot_file(dir: &Path, meta: &SnapshotMetadata, data: &[u8]) -> Result<(), StoreError> {
    let path = snapshot_path(dir, meta);
    let tmp = path.with_extension("tmp");
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    })();
    res.map_err(|source| StoreError::SnapshotFile { path, source })
}

/// Removes every snapshot data file (and temporary file) in `dir` but
/// `keep`'s: older snapshots, and one written just before a crash that
/// raft-engine never recorded. A failure only leaves a file behind.
fn remove_stale_snapshot_files(dir: &Path, keep: &SnapshotMetadata) {
    let keep = (keep.index > 0)
        .then(|| snapshot_path(dir, keep).file_name().map(ToOwned::to_owned))
        .flatten();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else {
            continue;
        };
        let ours = n.starts_with(SNAP_FILE_PREFIX)
            && (n.ends_with(SNAP_FILE_SUFFIX) || n.ends_with(".tmp"));
        if ours && keep.as_deref() != Some(name.as_os_str()) {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(file = n, error = %err, "cannot remove a stale raft snapshot file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![u8::try_from(index % 256).unwrap_or(0)].into(),
            ..Default::default()
        }
    }

    fn exercise(s: &mut RaftStore) {
        s.bootstrap(&[1, 2, 3]).expect("bootstrap");
        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 0,
            ..Default::default()
        };
        let ents: Vec<_> = (1..=5).map(|i| entry(i, 1)).collect();
        s.persist(None, &ents, Some(&hs)).expect("append");
        // A conflicting tail from a new leader replaces entries 4..
        // [Raft § 5.3].
        s.persist(None, &[entry(4, 2)], None).expect("overwrite");
        assert_eq!(s.last_index().expect("last"), 4);
        assert_eq!(s.term(4).expect("term"), 2);
        s.set_commit(3).expect("commit");
        s.compact_to_snapshot(2, b"state@2".to_vec()).expect("snap");
        assert_eq!(s.first_index().expect("first"), 3);
        assert_eq!(s.term(2).expect("term"), 1);
        assert!(matches!(
            s.entries(1, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(
            s.entries(3, 5, None, GetEntriesContext::empty(false))
                .expect("entries")
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(3, 1), (4, 2)]
        );
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(SNAP_FILE_PREFIX))
            .collect();
        v.sort();
        v
    }

    fn engine_snap_data(s: &RaftStore) -> Option<Vec<u8>> {
        s.engine.as_ref().and_then(|e| e.get(META, KEY_SNAP_DATA))
    }

    #[test]
    fn durable_snapshot_data_lives_in_one_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = RaftStore::open(dir.path()).expect("open");
            exercise(&mut s);
            // Resident: the metadata alone, in this store and in
            // raft-engine's memtable (see the module docs).
            assert!(s.snapshot_ref().data.is_empty());
            assert_eq!(engine_snap_data(&s), None);
            assert_eq!(snapshot_files(dir.path()), vec!["snapshot-1-2.bin"]);
            // What raft sends a peer is read back from the file.
            let snap = Storage::snapshot(&s, 0, 2).expect("snapshot");
            assert_eq!(snap.data.as_ref(), b"state@2");
            assert_eq!(snap.get_metadata().index, 2);
            // The next snapshot replaces the file.
            s.compact_to_snapshot(3, b"state@3".to_vec())
                .expect("snap 3");
            assert_eq!(snapshot_files(dir.path()), vec!["snapshot-1-3.bin"]);
        }
        // A crash between writing a file and the batch naming it leaves a
        // file (or a torn temporary) nothing names: open removes them.
        std::fs::write(dir.path().join("snapshot-7-70.bin"), b"stray").expect("stray");
        std::fs::write(dir.path().join("snapshot-7-71.tmp"), b"torn").expect("torn");
        let s = RaftStore::open(dir.path()).expect("reopen");
        assert_eq!(s.snapshot_ref().get_metadata().index, 3);
        assert_eq!(s.snapshot_ref().data.as_ref(), b"state@3");
        assert_eq!(snapshot_files(dir.path()), vec!["snapshot-1-3.bin"]);
        // A missing file is an error, not an empty state machine.
        drop(s);
        std::fs::remove_file(dir.path().join("snapshot-1-3.bin")).expect("rm");
        assert!(RaftStore::open(dir.path()).is_err());
    }

    #[test]
    fn durable_store_moves_an_older_snapshot_key_value_to_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            // The layout before snapshot files: the bytes a key/value.
            let engine = Engine::open(raft_engine::Config {
                dir: dir.path().to_string_lossy().into_owned(),
                ..Default::default()
            })
            .expect("engine");
            let mut meta = SnapshotMetadata {
                index: 5,
                term: 2,
                ..Default::default()
            };
            meta.mut_conf_state().voters = vec![1];
            let hs = HardState {
                term: 2,
                commit: 5,
                ..Default::default()
            };
            let mut b = LogBatch::default();
            b.put_message(META, KEY_SNAP_META.to_vec(), &meta)
                .expect("meta");
            b.put(META, KEY_SNAP_DATA.to_vec(), b"state@5".to_vec())
                .expect("data");
            b.put_message(META, KEY_HS.to_vec(), &hs).expect("hs");
            engine.write(&mut b, true).expect("write");
        }
        let s = RaftStore::open(dir.path()).expect("open the older layout");
        assert_eq!(s.snapshot_ref().data.as_ref(), b"state@5");
        assert_eq!(engine_snap_data(&s), None);
        assert_eq!(snapshot_files(dir.path()), vec!["snapshot-2-5.bin"]);
        drop(s);
        let s = RaftStore::open(dir.path()).expect("reopen");
        assert_eq!(s.snapshot_ref().data.as_ref(), b"state@5");
        assert_eq!(s.first_index().expect("first"), 6);
    }

    #[test]
    fn memory_store_semantics() {
        let mut s = RaftStore::in_memory();
        exercise(&mut s);
        assert_eq!(s.next_boot().expect("boot"), 1);
        assert_eq!(s.next_boot().expect("boot"), 2);
    }

    #[test]
    fn durable_store_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = RaftStore::open(dir.path()).expect("open");
            exercise(&mut s);
            assert_eq!(s.next_boot().expect("boot"), 1);
        }
        let mut s = RaftStore::open(dir.path()).expect("reopen");
        assert_eq!(s.hard_state().term, 2);
        assert_eq!(s.hard_state().commit, 3);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(s.snapshot_ref().get_metadata().index, 2);
        assert_eq!(s.snapshot_ref().data.as_ref(), b"state@2");
        assert_eq!(s.first_index().expect("first"), 3);
        assert_eq!(s.last_index().expect("last"), 4);
        assert_eq!(s.term(4).expect("term"), 2);
        assert_eq!(s.next_boot().expect("boot"), 2);
        // A received snapshot replaces the whole log, on disk too.
        let mut snap = Snapshot {
            data: b"state@9".to_vec().into(),
            ..Default::default()
        };
        snap.mut_metadata().index = 9;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3, 4];
        s.persist(Some(&snap), &[], None).expect("snapshot");
        s.persist(None, &[entry(10, 3)], None)
            .expect("append after");
        drop(s);
        let s = RaftStore::open(dir.path()).expect("reopen");
        assert_eq!(s.first_index().expect("first"), 10);
        assert_eq!(s.last_index().expect("last"), 10);
        assert_eq!(s.hard_state().commit, 9);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3, 4]);
        assert_eq!(s.term(9).expect("term"), 3);
    }
}
