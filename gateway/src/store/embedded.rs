//! The embedded store: one redb file, `<data-dir>/csps.redb`, for a single server.
//!
//! Why redb: pure Rust (no C toolchain, unlike SQLite, whose SQL layer we would not use either),
//! ACID with copy-on-write B-trees, crash-safe with one fsync per commit, a single file, and
//! maintained (sled, the other pure-Rust candidate, is not). Every call runs its redb work on
//! tokio's blocking pool, so the runtime threads never wait for the disk.
//!
//! Tables:
//! - `users`: id (`u128`) → the [`User`] as JSON;
//! - `user_names`: `lower(username)@lower(domain)` → id, the unique index;
//! - `registrations`: `aor \0 binding` → the [`Registration`] as JSON, so one AoR is a key range;
//! - `config`: entry name (`*` or a server) → the entry as JSON;
//! - `policies`: kind → the [`PolicyMeta`] as JSON, `policy_wasm`: kind → the component's bytes
//!   (apart, so listing never reads megabytes);
//! - `call_records`: (`ended_at` in nanoseconds since the epoch, `record_id`) → the [`EndedCall`]
//!   as JSON, so the history is a reverse range scan and the retention sweep a forward one;
//! - `busy_marks`: `lower(upn) \0 server` → until when (nanoseconds since the epoch), so one
//!   user's marks are one key range; lapsed ones are removed when a server unmarks the user
//!   (one server uses this store, but the backend is complete).
//!
//! Registrations are the hot path: the SIP driver group-commits REGISTERs, and one
//! [`Store::write_registrations`] call is one write transaction with one fsync.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use uuid::Uuid;

use super::{
    AuditEntry, CallRecordQuery, ConfigEntry, EndedCall, PolicyMeta, PolicyRecord, Registration,
    RegistrationFilter, Removal, Store, StoreError, User, nanos,
};

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "csps.redb";

/// redb's own page cache. Kept small: redb reads the file with `pread`, so its pages stay in the
/// kernel's page cache anyway and a miss costs a system call on the store's blocking thread, not
/// a disk read; 16 MiB had been 1.6 KiB of resident memory per registration at 10,000 accounts.
/// A batch of 1,024 registrations dirties well under 1 MiB.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

const USERS: TableDefinition<u128, &[u8]> = TableDefinition::new("users");
const USER_NAMES: TableDefinition<&str, u128> = TableDefinition::new("user_names");
const REGISTRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");
const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
/// Audit log: key = (nanoseconds since the epoch, sequence), so keys sort by time.
const AUDIT: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("audit");
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
const POLICY_WASM: TableDefinition<&str, &[u8]> = TableDefinition::new("policy_wasm");
/// Ended calls: key = (`ended_at` in nanoseconds since the epoch, `record_id`).
const CALL_RECORDS: TableDefinition<(i64, u128), &[u8]> = TableDefinition::new("call_records");
/// Busy marks: key = `lower(upn) \0 server`, value = until when (nanoseconds since the epoch).
const BUSY_MARKS: TableDefinition<&str, i64> = TableDefinition::new("busy_marks");

/// The embedded backend of [`Store`], over one redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) `<dir>/csps.redb`, creating `dir` and the tables when missing.
    ///
    /// Blocking: call it at start-up or from `spawn_blocking` (see [`EmbeddedStore::open_async`]).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        {
            txn.open_table(USERS)?;
            txn.open_table(USER_NAMES)?;
            txn.open_table(REGISTRATIONS)?;
            txn.open_table(CONFIG)?;
            txn.open_table(AUDIT)?;
            txn.open_table(POLICIES)?;
            txn.open_table(POLICY_WASM)?;
            txn.open_table(CALL_RECORDS)?;
            txn.open_table(BUSY_MARKS)?;
        }
        txn.commit()?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    /// [`EmbeddedStore::open`] on the blocking pool.
    pub async fn open_async(dir: &Path) -> Result<Self, StoreError> {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Number of stored bindings, expired ones included (for metrics and tests).
    pub async fn registration_count(&self) -> Result<u64, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(REGISTRATIONS)?.len()?)
        })
        .await
    }

    /// Removes bindings that expired at or before `now`; returns how many.
    pub async fn purge_expired(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            let purged = {
                let mut t = txn.open_table(REGISTRATIONS)?;
                let mut expired = Vec::new();
                for row in t.iter()? {
                    let (k, v) = row?;
                    let r: Registration = decode(v.value())?;
                    if r.expires_at <= now {
                        expired.push(k.value().to_owned());
                    }
                }
                for k in &expired {
                    t.remove(k.as_str())?;
                }
                expired.len()
            };
            txn.commit()?;
            Ok(purged)
        })
        .await
    }

    /// Runs `f` against the database on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

/// A write transaction that is durable (fsynced) when `commit` returns.
fn write_txn(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    Ok(txn)
}

/// Key of the unique username index.
fn name_key(username: &str, domain: &str) -> String {
    format!("{}@{}", username.to_lowercase(), domain.to_lowercase())
}

/// Key of a binding (`aor \0 binding`) or a busy mark (`upn \0 server`), so the rows of one
/// AoR or user are one key range ([`key_range`]).
fn pair_key(first: &str, second: &str) -> String {
    let mut k = String::with_capacity(first.len() + 1 + second.len());
    k.push_str(first);
    k.push('\0');
    k.push_str(second);
    k
}

/// `first \0` .. `first \x01`: exactly the [`pair_key`]s under `first`.
fn key_range(first: &str) -> (String, String) {
    let mut hi = first.to_owned();
    hi.push('\u{1}');
    (pair_key(first, ""), hi)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(format!("encoding a record: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Backend(format!("corrupt record: {e}")))
}

macro_rules! backend_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Backend(e.to_string())
            }
        }
    )*};
}
backend_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_user(&self, user: User) -> Result<User, StoreError> {
        let bytes = encode(&user)?;
        let key = name_key(&user.username, &user.domain);
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            {
                let mut names = txn.open_table(USER_NAMES)?;
                if names.get(key.as_str())?.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "username `{}` already exists in domain `{}`",
                        user.username, user.domain
                    )));
                }
                let mut users = txn.open_table(USERS)?;
                if users.get(user.id.as_u128())?.is_some() {
                    return Err(StoreError::Conflict(format!("user id {} exists", user.id)));
                }
                names.insert(key.as_str(), user.id.as_u128())?;
                users.insert(user.id.as_u128(), bytes.as_slice())?;
            }
            txn.commit()?;
            Ok(user)
        })
        .await
    }

    async fn get_user(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let users = txn.open_table(USERS)?;
            let found = users.get(id.as_u128())?;
            found.map(|v| decode(v.value())).transpose()
        })
        .await
    }

    async fn find_user(&self, username: &str, domain: &str) -> Result<Option<User>, StoreError> {
        let key = name_key(username, domain);
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let names = txn.open_table(USER_NAMES)?;
            let Some(id) = names.get(key.as_str())?.map(|g| g.value()) else {
                return Ok(None);
            };
            let users = txn.open_table(USERS)?;
            let found = users.get(id)?;
            found.map(|v| decode(v.value())).transpose()
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            let users = txn.open_table(USERS)?;
            let mut out: Vec<User> = Vec::with_capacity(usize::try_from(users.len()?).unwrap_or(0));
            for row in users.iter()? {
                let (_, v) = row?;
                out.push(decode(v.value())?);
            }
            out.sort_by(|a, b| {
                (a.domain.to_lowercase(), a.username.to_lowercase())
                    .cmp(&(b.domain.to_lowercase(), b.username.to_lowercase()))
            });
            Ok(out)
        })
        .await
    }

    async fn update_user(&self, user: User) -> Result<User, StoreError> {
        let bytes = encode(&user)?;
        let new_key = name_key(&user.username, &user.domain);
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            {
                let mut users = txn.open_table(USERS)?;
                let old: User = match users.get(user.id.as_u128())? {
                    Some(v) => decode(v.value())?,
                    None => return Err(StoreError::NotFound),
                };
                let old_key = name_key(&old.username, &old.domain);
                let mut names = txn.open_table(USER_NAMES)?;
                if old_key != new_key {
                    let taken = names.get(new_key.as_str())?.map(|g| g.value());
                    if taken.is_some_and(|id| id != user.id.as_u128()) {
                        return Err(StoreError::Conflict(format!(
                            "username `{}` already exists in domain `{}`",
                            user.username, user.domain
                        )));
                    }
                    names.remove(old_key.as_str())?;
                }
                names.insert(new_key.as_str(), user.id.as_u128())?;
                users.insert(user.id.as_u128(), bytes.as_slice())?;
            }
            txn.commit()?;
            Ok(user)
        })
        .await
    }

    async fn delete_user(&self, id: Uuid) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            {
                let mut users = txn.open_table(USERS)?;
                let old: User = match users.remove(id.as_u128())? {
                    Some(v) => decode(v.value())?,
                    None => return Err(StoreError::NotFound),
                };
                let mut names = txn.open_table(USER_NAMES)?;
                let key = name_key(&old.username, &old.domain);
                let owner = names.get(key.as_str())?.map(|g| g.value());
                if owner == Some(id.as_u128()) {
                    names.remove(key.as_str())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn write_registrations(
        &self,
        upserts: &[Registration],
        removals: &[Removal],
    ) -> Result<(), StoreError> {
        if upserts.is_empty() && removals.is_empty() {
            return Ok(());
        }
        // Encode on the calling task; the blocking task only touches the B-tree.
        let puts = upserts
            .iter()
            .map(|r| Ok((pair_key(&r.aor, &r.binding), encode(r)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let dels: Vec<(String, String)> = removals
            .iter()
            .map(|k| (pair_key(&k.key.aor, &k.key.binding), k.server.clone()))
            .collect();
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            {
                let mut t = txn.open_table(REGISTRATIONS)?;
                for (k, server) in &dels {
                    // Only while this server still holds it (see `Removal`).
                    let held = match t.get(k.as_str())? {
                        Some(v) => decode::<Registration>(v.value())?.server == *server,
                        None => false,
                    };
                    if held {
                        t.remove(k.as_str())?;
                    }
                }
                for (k, v) in &puts {
                    t.insert(k.as_str(), v.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn list_registrations(
        &self,
        filter: &RegistrationFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Registration>, StoreError> {
        let filter = filter.clone();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(REGISTRATIONS)?;
            let mut out = Vec::new();
            let mut keep = |v: &[u8]| -> Result<(), StoreError> {
                let r: Registration = decode(v)?;
                let server_ok = filter.server.as_deref().is_none_or(|s| r.server == s);
                let aor_ok = filter.aor.as_deref().is_none_or(|a| r.aor == a);
                if r.expires_at > now && server_ok && aor_ok {
                    out.push(r);
                }
                Ok(())
            };
            match &filter.aor {
                Some(aor) => {
                    let (lo, hi) = key_range(aor);
                    for row in t.range(lo.as_str()..hi.as_str())? {
                        keep(row?.1.value())?;
                    }
                }
                None => {
                    for row in t.iter()? {
                        keep(row?.1.value())?;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn get_config(&self, name: &str) -> Result<Option<ConfigEntry>, StoreError> {
        let name = name.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(CONFIG)?;
            let found = t.get(name.as_str())?;
            found.map(|v| decode(v.value())).transpose()
        })
        .await
    }

    async fn put_config(&self, name: &str, entry: &ConfigEntry) -> Result<(), StoreError> {
        let name = name.to_owned();
        let bytes = encode(entry)?;
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            txn.open_table(CONFIG)?
                .insert(name.as_str(), bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn list_config(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(CONFIG)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                out.push(row?.0.value().to_owned());
            }
            Ok(out)
        })
        .await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let nanos = entry.at.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let bytes = encode(entry)?;
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            {
                let mut t = txn.open_table(AUDIT)?;
                // Entries of the same nanosecond get the next free sequence number.
                let seq = match t.range((nanos, 0)..=(nanos, u64::MAX))?.next_back() {
                    Some(row) => row?.0.value().1 + 1,
                    None => 0,
                };
                t.insert((nanos, seq), bytes.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(AUDIT)?;
            let mut out = Vec::new();
            for row in t.iter()?.rev().take(limit) {
                out.push(decode(row?.1.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn get_policy(&self, kind: &str) -> Result<Option<PolicyRecord>, StoreError> {
        let kind = kind.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let Some(meta) = txn.open_table(POLICIES)?.get(kind.as_str())? else {
                return Ok(None);
            };
            let meta: PolicyMeta = decode(meta.value())?;
            let wasm = txn
                .open_table(POLICY_WASM)?
                .get(kind.as_str())?
                .map(|w| w.value().to_vec())
                .ok_or_else(|| StoreError::Backend(format!("policy {kind}: bytes missing")))?;
            Ok(Some(PolicyRecord { meta, wasm }))
        })
        .await
    }

    async fn put_policy(&self, record: &PolicyRecord) -> Result<(), StoreError> {
        let meta = encode(&record.meta)?;
        let kind = record.meta.kind.clone();
        let wasm = record.wasm.clone();
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            txn.open_table(POLICY_WASM)?
                .insert(kind.as_str(), wasm.as_slice())?;
            txn.open_table(POLICIES)?
                .insert(kind.as_str(), meta.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn delete_policy(&self, kind: &str) -> Result<(), StoreError> {
        let kind = kind.to_owned();
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            let found = txn.open_table(POLICIES)?.remove(kind.as_str())?.is_some();
            txn.open_table(POLICY_WASM)?.remove(kind.as_str())?;
            if !found {
                return Err(StoreError::NotFound);
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn list_policies(&self) -> Result<Vec<PolicyMeta>, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            let mut out = Vec::new();
            for row in txn.open_table(POLICIES)?.iter()? {
                out.push(decode(row?.1.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn put_call_records(&self, records: &[EndedCall]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let rows = records
            .iter()
            .map(|r| Ok(((nanos(r.ended_at), r.record_id.as_u128()), encode(r)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            {
                let mut t = txn.open_table(CALL_RECORDS)?;
                for (k, v) in &rows {
                    t.insert(*k, v.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn list_call_records(
        &self,
        query: &CallRecordQuery,
    ) -> Result<Vec<EndedCall>, StoreError> {
        let query = query.clone();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(CALL_RECORDS)?;
            // Keys below (before, 0) ended strictly before `before`; from (since, 0) on at or
            // after `since`.
            let lo = (query.since.map_or(i64::MIN, nanos), 0_u128);
            let hi = (query.before.map_or(i64::MAX, nanos), 0_u128);
            let mut out = Vec::new();
            if lo >= hi || query.limit == 0 {
                return Ok(out);
            }
            let mut skip = query.offset;
            for row in t.range(lo..hi)?.rev() {
                let r: EndedCall = decode(row?.1.value())?;
                if !query.matches(&r) {
                    continue;
                }
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                out.push(r);
                if out.len() >= query.limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn purge_call_records(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let cut = (nanos(ended_before), 0_u128);
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            let mut purged = 0;
            {
                let mut t = txn.open_table(CALL_RECORDS)?;
                t.retain_in(..cut, |_, _| {
                    purged += 1;
                    false
                })?;
            }
            txn.commit()?;
            Ok(purged)
        })
        .await
    }

    async fn mark_busy(
        &self,
        upn: &str,
        server: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let key = pair_key(&upn.to_lowercase(), server);
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            txn.open_table(BUSY_MARKS)?
                .insert(key.as_str(), nanos(until))?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn unmark_busy(
        &self,
        upn: &str,
        server: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let (lo, hi) = key_range(&upn.to_lowercase());
        let server = server.to_owned();
        let now = nanos(now);
        self.blocking(move |db| {
            let txn = write_txn(db)?;
            let mut others = Vec::new();
            {
                let mut t = txn.open_table(BUSY_MARKS)?;
                // One transaction: this server's mark and the lapsed ones go, the rest is read.
                t.retain_in(lo.as_str()..hi.as_str(), |key, until| {
                    let holder = key.get(lo.len()..).unwrap_or_default();
                    let live = until > now && holder != server;
                    if live {
                        others.push(holder.to_owned());
                    }
                    live
                })?;
            }
            txn.commit()?;
            others.sort();
            Ok(others)
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every commit is already `Durability::Immediate`.
        Ok(())
    }
}
