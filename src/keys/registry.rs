//! The key registry: every key the gateway serves, by id, with a per-folder ordered index, an
//! operation index and the aliases. Lookups are O(1) and never touch the HSM; a lookup that
//! misses may ask for one immediate re-scan ([`KeyRegistry::lookup`]), so a key created through
//! another replica a moment ago is found at once rather than after the refresh interval.

use super::alias::AliasEntry;
use super::refresh::Rescan;
use super::{KeyEntry, KeySource, Operation};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};
use tokio::time::Instant;

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Arc<KeyEntry>>,
    /// Folder → key ids in id order: List pages through this with keyset pagination.
    by_folder: HashMap<String, BTreeSet<String>>,
    /// Operation id → key id, for the operation service.
    ops: HashMap<String, String>,
    /// Alias name → alias (`None`: deleted here) and the sequence number of the change that
    /// put it here, in name order.
    aliases: BTreeMap<String, (Option<AliasEntry>, u64)>,
}

impl Inner {
    fn unindex(&mut self, entry: &KeyEntry) {
        if let Some(ids) = self.by_folder.get_mut(&entry.folder_id) {
            ids.remove(&entry.id);
            if ids.is_empty() {
                self.by_folder.remove(&entry.folder_id);
            }
        }
        for op in &entry.operations {
            if self.ops.get(&op.id) == Some(&entry.id) {
                self.ops.remove(&op.id);
            }
        }
    }

    fn index(&mut self, entry: &KeyEntry) {
        self.by_folder
            .entry(entry.folder_id.clone())
            .or_default()
            .insert(entry.id.clone());
        for op in &entry.operations {
            self.ops.insert(op.id.clone(), entry.id.clone());
        }
    }
}

/// All keys, by id, with a per-folder ordered index and an operation index.
#[derive(Debug, Default)]
pub struct KeyRegistry {
    inner: RwLock<Inner>,
    /// Bumped on every insert; a scan that started before an insert must not undo it.
    seq: AtomicU64,
    /// Set when a refresher runs: misses then ask it for an immediate re-scan.
    rescan: OnceLock<Arc<Rescan>>,
}

impl KeyRegistry {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks a visible (not deleted) key up. O(1); never touches the HSM.
    pub fn get(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.read()
            .by_id
            .get(id)
            .filter(|e| e.is_visible())
            .cloned()
    }

    /// Looks any key up, deleted ones included.
    pub fn get_any(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.read().by_id.get(id).cloned()
    }

    /// Like [`KeyRegistry::get`]; on a miss, asks the refresher for one immediate re-scan of the
    /// token (shared with concurrent misses, rate-limited) and looks again. The wait ends at
    /// `deadline` or after a few seconds, whichever is first.
    pub async fn lookup(&self, id: &str, deadline: Option<Instant>) -> Option<Arc<KeyEntry>> {
        if let Some(entry) = self.get(id) {
            return Some(entry);
        }
        self.rescan_once(deadline).await;
        self.get(id)
    }

    /// Like [`KeyRegistry::get_any`], with a re-scan on a miss.
    pub async fn lookup_any(&self, id: &str, deadline: Option<Instant>) -> Option<Arc<KeyEntry>> {
        if let Some(entry) = self.get_any(id) {
            return Some(entry);
        }
        self.rescan_once(deadline).await;
        self.get_any(id)
    }

    /// The operation with `op_id` and its key (deleted keys included), re-scanning on a miss.
    pub async fn lookup_operation(
        &self,
        op_id: &str,
        deadline: Option<Instant>,
    ) -> Option<Operation> {
        if let Some(op) = self.operation(op_id) {
            return Some(op);
        }
        self.rescan_once(deadline).await;
        self.operation(op_id)
    }

    fn operation(&self, op_id: &str) -> Option<Operation> {
        self.operation_entry(op_id).map(|(op, _)| op)
    }

    /// The operation with `op_id` and the key it belongs to (deleted keys included), without a
    /// re-scan.
    pub fn operation_entry(&self, op_id: &str) -> Option<(Operation, Arc<KeyEntry>)> {
        let inner = self.read();
        let key_id = inner.ops.get(op_id)?;
        let entry = inner.by_id.get(key_id)?;
        let op = entry.operations.iter().find(|op| op.id == op_id)?.clone();
        Some((op, Arc::clone(entry)))
    }

    /// Asks the refresher for one immediate re-scan of the token (shared with concurrent
    /// requests, rate-limited) and waits for it, until `deadline` or a few seconds. Callers
    /// decide who may cause one (see [`crate::auth::authz`]).
    pub(crate) async fn rescan_once(&self, deadline: Option<Instant>) {
        if let Some(rescan) = self.rescan.get() {
            rescan.request_and_wait(deadline).await;
        }
    }

    pub(crate) fn set_rescan(&self, rescan: Arc<Rescan>) {
        let _ = self.rescan.set(rescan);
    }

    /// The current insert sequence number; entries inserted from now on have a larger stamp.
    pub(crate) fn stamp_now(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Adds or replaces a key.
    pub fn insert(&self, mut entry: KeyEntry) -> Arc<KeyEntry> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        // Stamped under the write lock, so stamps follow the order of inserts.
        entry.stamp = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(old) = inner.by_id.get(&entry.id).cloned() {
            inner.unindex(&old);
        }
        inner.index(&entry);
        let entry = Arc::new(entry);
        inner.by_id.insert(entry.id.clone(), Arc::clone(&entry));
        entry
    }

    /// Removes a key.
    pub fn remove(&self, id: &str) -> Option<Arc<KeyEntry>> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let old = inner.by_id.remove(id)?;
        inner.unindex(&old);
        Some(old)
    }

    /// Up to `limit` visible keys of `folder_id` with ids greater than `after`, in id order, and
    /// whether more follow. Keyset pagination: keys created meanwhile never shift a page.
    pub fn page(
        &self,
        folder_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Arc<KeyEntry>>, bool) {
        self.page_where(folder_id, after, limit, |_| true)
    }

    /// Like [`KeyRegistry::page`], counting only the keys `keep` accepts.
    pub fn page_where(
        &self,
        folder_id: &str,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&KeyEntry) -> bool,
    ) -> (Vec<Arc<KeyEntry>>, bool) {
        use std::ops::Bound;
        let inner = self.read();
        let Some(ids) = inner.by_folder.get(folder_id) else {
            return (Vec::new(), false);
        };
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_string()));
        let mut visible = ids
            .range::<String, _>((start, Bound::Unbounded))
            .filter_map(|id| inner.by_id.get(id))
            .filter(|e| e.is_visible() && keep(e));
        let page: Vec<_> = visible.by_ref().take(limit).cloned().collect();
        let more = visible.next().is_some();
        (page, more)
    }

    /// Every visible key, sorted by id.
    pub fn all(&self) -> Vec<Arc<KeyEntry>> {
        let mut keys: Vec<_> = self
            .read()
            .by_id
            .values()
            .filter(|e| e.is_visible())
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        keys
    }

    /// Every key created through the API, deleted ones included.
    pub(crate) fn api_keys(&self) -> Vec<Arc<KeyEntry>> {
        self.read()
            .by_id
            .values()
            .filter(|e| e.source == KeySource::Api)
            .cloned()
            .collect()
    }

    /// The alias `name`.
    pub fn alias(&self, name: &str) -> Option<AliasEntry> {
        self.read().aliases.get(name).and_then(|(a, _)| a.clone())
    }

    /// Every alias, in name order.
    pub fn aliases(&self) -> Vec<AliasEntry> {
        self.read()
            .aliases
            .values()
            .filter_map(|(a, _)| a.clone())
            .collect()
    }

    /// The aliases pointing at `key_id`, in name order.
    pub fn aliases_of(&self, key_id: &str) -> Vec<AliasEntry> {
        self.read()
            .aliases
            .values()
            .filter_map(|(a, _)| a.clone())
            .filter(|a| a.key_id == key_id)
            .collect()
    }

    /// Replaces the aliases with what a scan that began at `stamp` read, except those this
    /// replica changed after the scan began.
    pub(crate) fn set_aliases(&self, scanned: BTreeMap<String, AliasEntry>, stamp: u64) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner
            .aliases
            .retain(|name, (_, at)| *at > stamp || scanned.contains_key(name));
        for (name, alias) in scanned {
            match inner.aliases.get(&name) {
                Some((_, at)) if *at > stamp => {}
                _ => {
                    inner.aliases.insert(name, (Some(alias), 0));
                }
            }
        }
    }

    /// Adds, repoints (`Some`) or removes (`None`) one alias after this replica changed it.
    pub(crate) fn set_alias(&self, name: &str, alias: Option<AliasEntry>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let at = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        inner.aliases.insert(name.to_string(), (alias, at));
    }

    /// Every key, deleted and being-created ones included, sorted by id.
    pub fn all_any(&self) -> Vec<Arc<KeyEntry>> {
        let mut keys: Vec<_> = self.read().by_id.values().cloned().collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        keys
    }

    /// Number of keys, deleted ones included.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// True when no key is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
