//! The `Store`: everything csps keeps — users (SIP accounts with HA1s), registrations (one document
//! per binding), configuration entries, the audit log, policy modules, ended calls' records,
//! busy marks (which server keeps a Teams user Busy) — behind one async trait, so the embedded backend (default,
//! one server) and MongoDB (several servers) are interchangeable without changing callers.

pub mod embedded;
pub mod model;
pub mod mongo;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use model::{
    AuditEntry, BindingKey, CallRecordQuery, ConfigEntry, EndedCall, Ha1, HashAlgorithm, LegMedia,
    NewUser, PolicyMeta, PolicyRecord, Registration, Removal, TeamsIdentity, TeamsLink, User,
    UserPatch,
};

/// Nanoseconds since the epoch, saturated (chrono's range is wider than an `i64` of them): the
/// order of call records in both backends.
pub(crate) fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A unique key (username per domain) is already taken.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The record does not exist.
    #[error("not found")]
    NotFound,
    /// The backend failed (I/O, corruption, connection); the operation may be retried.
    #[error("store backend: {0}")]
    Backend(String),
}

/// Filter for listing registrations.
#[derive(Clone, Debug, Default)]
pub struct RegistrationFilter {
    /// Only bindings hosted by this server.
    pub server: Option<String>,
    /// Only bindings of this AoR.
    pub aor: Option<String>,
}

/// Change counters of what other servers may change under a running one: each write of a
/// configuration entry bumps `config`, each write of a user bumps `users`. A server that polls
/// compares two of them instead of reading everything again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revisions {
    /// Bumped by every `put_config`.
    pub config: i64,
    /// Bumped by every create, update and delete of a user.
    pub users: i64,
}

/// What a pushed change notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeTopic {
    /// A configuration entry changed.
    Config,
    /// A user was created, changed or deleted.
    Users,
}

/// Persistent state of csps. Every method is durable when it returns `Ok`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a user; `Conflict` when the username is taken in that domain.
    async fn create_user(&self, user: User) -> Result<User, StoreError>;
    /// One user by id.
    async fn get_user(&self, id: Uuid) -> Result<Option<User>, StoreError>;
    /// One user by username and domain (both compared case-insensitively).
    async fn find_user(&self, username: &str, domain: &str) -> Result<Option<User>, StoreError>;
    /// All users.
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Replaces a user record (same id); `Conflict` if the new username is taken.
    async fn update_user(&self, user: User) -> Result<User, StoreError>;
    /// Deletes a user; `NotFound` if absent.
    async fn delete_user(&self, id: Uuid) -> Result<(), StoreError>;

    /// Inserts or replaces bindings (keyed by [`BindingKey`]) and removes others still held by
    /// the removing server, in one durable write.
    async fn write_registrations(
        &self,
        upserts: &[Registration],
        removals: &[Removal],
    ) -> Result<(), StoreError>;
    /// Bindings not expired at `now`, matching `filter`.
    async fn list_registrations(
        &self,
        filter: &RegistrationFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Registration>, StoreError>;

    /// A configuration entry (`*` or a server name) as stored JSON.
    async fn get_config(&self, name: &str) -> Result<Option<ConfigEntry>, StoreError>;
    /// Writes a configuration entry.
    async fn put_config(&self, name: &str, entry: &ConfigEntry) -> Result<(), StoreError>;
    /// Names of all configuration entries.
    async fn list_config(&self) -> Result<Vec<String>, StoreError>;

    /// Appends one entry to the audit log (who changed what, old and new value, when).
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The newest `limit` audit entries, newest first.
    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// The stored policy module of `kind` (`routing`, `admission`, `quirks`), bytes included.
    /// (Default: a store without policies; both real backends implement all four methods.)
    async fn get_policy(&self, kind: &str) -> Result<Option<PolicyRecord>, StoreError> {
        let _ = kind;
        Ok(None)
    }
    /// Stores a policy module, replacing the one of its kind.
    async fn put_policy(&self, record: &PolicyRecord) -> Result<(), StoreError> {
        let _ = record;
        Err(StoreError::Backend(
            "this store keeps no policy modules".into(),
        ))
    }
    /// Removes the policy module of `kind`; `NotFound` when there is none.
    async fn delete_policy(&self, kind: &str) -> Result<(), StoreError> {
        let _ = kind;
        Err(StoreError::NotFound)
    }
    /// The stored policy modules' descriptions (no bytes), ordered by kind.
    async fn list_policies(&self) -> Result<Vec<PolicyMeta>, StoreError> {
        Ok(Vec::new())
    }

    /// Stores ended calls' records (keyed by `record_id`; writing one again replaces it), in one
    /// durable write. (Default: a store without call records; both real backends implement
    /// the three call record methods.)
    async fn put_call_records(&self, records: &[EndedCall]) -> Result<(), StoreError> {
        let _ = records;
        Err(StoreError::Backend(
            "this store keeps no call records".into(),
        ))
    }
    /// The records matching `query` (every server's), latest `ended_at` first; records that
    /// ended at the same instant are ordered by `record_id`, descending.
    async fn list_call_records(
        &self,
        query: &CallRecordQuery,
    ) -> Result<Vec<EndedCall>, StoreError> {
        let _ = query;
        Ok(Vec::new())
    }
    /// Deletes the records of calls that ended strictly before `ended_before` (every server's);
    /// returns how many.
    async fn purge_call_records(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let _ = ended_before;
        Ok(0)
    }

    /// Marks the Teams user `upn` busy because of calls on `server`, until `until` (replacing
    /// that server's earlier mark): the busy presence of a cluster, so that a server whose last
    /// call for the user ends leaves the presence to another server still in a call with them
    /// (see `presence`). `upn` is compared case-insensitively. (Default: a store without marks,
    /// where every server clears what it set; both real backends implement both methods.)
    async fn mark_busy(
        &self,
        upn: &str,
        server: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _ = (upn, server, until);
        Ok(())
    }
    /// Removes `server`'s busy mark of `upn` (and marks of it lapsed at `now`), THEN reads the
    /// others: the servers whose mark of `upn` is still live at `now`, sorted. Removing before
    /// reading is what makes two servers whose last calls end at once safe: at least the later
    /// one finds no mark and clears the presence.
    async fn unmark_busy(
        &self,
        upn: &str,
        server: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let _ = (upn, server, now);
        Ok(Vec::new())
    }

    /// Makes every earlier write durable (a no-op where each write already is).
    async fn flush(&self) -> Result<(), StoreError>;

    /// The change counters, for servers that poll; `None` where only one server uses the store
    /// (the embedded one), so there is nothing to watch.
    async fn revisions(&self) -> Result<Option<Revisions>, StoreError> {
        Ok(None)
    }

    /// Pushed change notifications (MongoDB change streams) where the backend offers them: the
    /// receiver yields one topic per change and closes when the feed breaks. `None` where the
    /// backend has none (the embedded store; FerretDB v1, a standalone mongod): poll
    /// [`revisions`](Store::revisions) instead.
    async fn change_feed(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<ChangeTopic>>, StoreError> {
        Ok(None)
    }
}
