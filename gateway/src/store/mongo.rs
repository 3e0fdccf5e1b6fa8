//! The MongoDB backend: several csps servers share users, registrations, configuration and the
//! audit log through one MongoDB (or a server speaking its protocol, such as FerretDB).
//!
//! # Driver and features
//! The official `mongodb` driver 3.x with `default-features = false` and only:
//! - `compat-3-3-0` (the driver refuses to build without it) and `bson-3` (the current BSON crate);
//! - `rustls-tls`, which is rustls with the **ring** provider — the workspace's only provider, so no
//!   aws-lc-rs is built. `tls=true` in the URI uses it, with the webpki roots (plus `tlsCAFile`).
//!
//! Left out on purpose: `dns-resolver` (it pulls the hickory resolver for `mongodb+srv://` seed
//! lists — list the hosts in a `mongodb://` URI instead; [`MongoStore::connect`] says so when given
//! an SRV URI), compression, in-use encryption, AWS/GSSAPI/OIDC authentication (SCRAM works).
//!
//! # Collections
//! - `users`: `_id` = the user id (UUID string), the [`User`] fields, plus `username_key` and
//!   `domain_key` (lower-cased) under a unique index, so usernames are unique per domain regardless
//!   of case.
//! - `registrations`: one document per binding, `_id` = AoR + `"\0"` + binding. A phone that moves
//!   to another server replaces the same document (its `server` changes), never adds a second.
//!   `expires_at` is a BSON date (milliseconds; `expires_ns` keeps the sub-millisecond part so a
//!   binding reads back exactly as written) under a TTL index (`expireAfterSeconds: 0`).
//! - `config`: `_id` = entry name (`*` or a server name), the entry's top-level fields beside it
//!   (`{"_id": "*", "Data": {…}}`).
//! - `audit`: one document per change, `at` a BSON date; listed newest first.
//! - `leases`: who runs the fallback purge (below).
//! - `revisions`: `{_id: "config"|"users", n}`, bumped (`$inc`) after every write of a
//!   configuration entry or a user, so running servers that poll read two tiny documents instead
//!   of everything ([`Store::revisions`]).
//! - `policies`: `_id` = the kind, the [`PolicyMeta`] fields beside it and `wasm`, the component
//!   as BSON binary (documents stay under the 16 MiB limit: uploads are capped at 8 MiB).
//! - `call_records`: one document per ended call of every server, `_id` = its `record_id`
//!   (UUID string), the [`EndedCall`] fields, the times as BSON dates (`*_ns` beside each keeps
//!   the sub-millisecond part) and `ended_key`, `ended_at` in nanoseconds since the epoch (an
//!   Int64, indexed with `_id`), which orders the history and bounds its pages and the
//!   retention sweep exactly. No TTL index: the retention (`Data.System.CallRecordDays`) can
//!   change at run time and FerretDB v1 does not expire documents, so the servers sweep
//!   ([`Store::purge_call_records`]).
//! - `busy_marks`: one document per (Teams user, server) whose calls keep the user Busy,
//!   `_id` = lower-cased UPN + `"\0"` + server, with `user` (indexed), `server` and
//!   `expires_at` (a BSON date, 5 minutes after the server's last `setPresence`). Reads ignore
//!   lapsed marks. No TTL index: FerretDB v1 would not act on it, the `_id` bounds the
//!   collection to one mark per user and server anyway, and a server unmarking a user removes
//!   that user's lapsed marks (a crashed server's) in the same delete, so they do not linger.
//!
//! # Change notifications
//! [`Store::change_feed`] opens a change stream on `config` and `users` where the server offers
//! one (a MongoDB replica set or sharded cluster); it also sees writes made by hand. FerretDB v1
//! and a standalone mongod refuse `$changeStream`: the feed is `None` and servers poll the
//! revisions (see `config::propagate`).
//!
//! # Expiry
//! Every registration query filters on `expires_at > now`. The database removes lapsed bindings
//! through the TTL index where it has one; FerretDB v1 refuses TTL indexes (NotImplemented) or keeps
//! the option without acting on it. [`MongoStore::ttl_index`] tells which; without it one server —
//! the holder of the `purge-expired` lease ([`MongoStore::try_lease`]) — calls
//! [`MongoStore::purge_expired`] hourly with `now - 1 day` (see `serve`), so nothing piles up.
//!
//! # Writes
//! Writes ask for `w: "majority", j: true` where the server honours it (MongoDB); servers that
//! cannot (FerretDB v1 writes synchronously to SQLite and rejects nothing but does not implement
//! write concerns) get their default. Registrations go as one unordered bulk `update` (upserts) and
//! one unordered bulk `delete` (removals) — no transactions, which FerretDB v1 lacks; each binding
//! is an independent, idempotent write. Duplicate keys (11000, and FerretDB v1's InternalError
//! "UNIQUE constraint failed" on updates) are [`StoreError::Conflict`].

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, DatabaseOptions, IndexOptions, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{
    AuditEntry, CallRecordQuery, ChangeTopic, ConfigEntry, EndedCall, PolicyMeta, PolicyRecord,
    Registration, RegistrationFilter, Removal, Revisions, Store, StoreError, User, nanos,
};

/// Database used when neither the caller nor the URI path names one.
pub const DEFAULT_DATABASE: &str = "csps";
/// Server selection timeout when the URI sets none (`serverSelectionTimeoutMS`).
pub const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout when the URI sets none (`connectTimeoutMS`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const USERS: &str = "users";
const REGISTRATIONS: &str = "registrations";
const CONFIG: &str = "config";
const AUDIT: &str = "audit";
const LEASES: &str = "leases";
const POLICIES: &str = "policies";
const REVISIONS: &str = "revisions";
const CALL_RECORDS: &str = "call_records";
const BUSY_MARKS: &str = "busy_marks";
/// Writes per bulk command (well under every server's `maxWriteBatchSize`).
const BULK_CHUNK: usize = 1000;

const DUPLICATE_KEY: i32 = 11000;
const NOT_IMPLEMENTED: i32 = 238;
const INDEX_OPTIONS_CONFLICT: i32 = 85;
const INDEX_KEY_SPECS_CONFLICT: i32 = 86;

/// The MongoDB store. Cheap to clone (the driver's client is a shared pool).
#[derive(Clone, Debug)]
pub struct MongoStore {
    db: Database,
    users: Collection<Document>,
    registrations: Collection<Document>,
    config: Collection<Document>,
    audit: Collection<Document>,
    leases: Collection<Document>,
    revisions: Collection<Document>,
    call_records: Collection<Document>,
    busy_marks: Collection<Document>,
    /// `writeConcern` added to raw bulk commands (`None`: the server's default).
    write_concern: Option<Document>,
    ttl_index: bool,
    server: String,
}

impl MongoStore {
    /// Connects to `uri`, checks that the server answers (bounded by the server selection timeout,
    /// 10 s unless the URI sets `serverSelectionTimeoutMS`) and creates the indexes. The database is
    /// `db_name`, else the URI's path (`mongodb://host/<db>`), else `csps`.
    pub async fn connect(uri: &str, db_name: Option<&str>) -> Result<Self, StoreError> {
        if uri.trim_start().starts_with("mongodb+srv://") {
            return Err(StoreError::Backend(
                "mongodb+srv:// URIs need a DNS SRV resolver, which this build leaves out; \
                 list the hosts instead: mongodb://host1,host2,host3/?replicaSet=…"
                    .into(),
            ));
        }
        let mut opts = ClientOptions::parse(uri)
            .await
            .map_err(|e| StoreError::Backend(format!("invalid MongoDB URI: {e}")))?;
        opts.server_selection_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        opts.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
        opts.app_name.get_or_insert_with(|| "csps".to_owned());
        let name = db_name
            .map(str::to_owned)
            .or_else(|| opts.default_database.clone())
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
        // Hosts only: the URI may carry a password.
        let hosts = opts
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let server = format!("{hosts}/{name}");
        let client = Client::with_options(opts)
            .map_err(|e| StoreError::Backend(format!("MongoDB client for {server}: {e}")))?;
        let build = client
            .database(&name)
            .run_command(doc! { "buildInfo": 1 })
            .await
            .map_err(|e| StoreError::Backend(format!("cannot reach MongoDB at {server}: {e}")))?;
        let ferretdb_v1 = build
            .get_str("ferretdbVersion")
            .is_ok_and(|v| v.trim_start_matches('v').starts_with("1."));
        // MongoDB honours majority + journal; FerretDB v1 does not implement write concerns (each
        // write is a committed SQLite transaction before it answers), so it gets its default.
        let wc = (!ferretdb_v1).then(|| {
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build()
        });
        let write_concern = wc.as_ref().map(|_| doc! { "w": "majority", "j": true });
        let db = client
            .database_with_options(&name, DatabaseOptions::builder().write_concern(wc).build());
        let coll = |n: &str| db.collection::<Document>(n);
        let mut store = MongoStore {
            users: coll(USERS),
            registrations: coll(REGISTRATIONS),
            config: coll(CONFIG),
            audit: coll(AUDIT),
            leases: coll(LEASES),
            revisions: coll(REVISIONS),
            call_records: coll(CALL_RECORDS),
            busy_marks: coll(BUSY_MARKS),
            db,
            write_concern,
            ttl_index: false,
            server,
        };
        store.create_indexes(ferretdb_v1).await?;
        Ok(store)
    }

    /// `host:port,…/database` (no credentials), for logs.
    pub fn describe(&self) -> &str {
        &self.server
    }

    /// The database name.
    pub fn database_name(&self) -> &str {
        self.db.name()
    }

    /// True when the database expires registrations itself (a working TTL index); false on
    /// servers without TTL support (FerretDB v1), where one server must call
    /// [`purge_expired`](Self::purge_expired) periodically.
    pub fn ttl_index(&self) -> bool {
        self.ttl_index
    }

    async fn create_indexes(&mut self, ferretdb_v1: bool) -> Result<(), StoreError> {
        let users = IndexModel::builder()
            .keys(doc! { "username_key": 1, "domain_key": 1 })
            .options(
                IndexOptions::builder()
                    .name("username_domain".to_owned())
                    .unique(true)
                    .build(),
            )
            .build();
        self.users
            .create_index(users)
            .await
            .map_err(|e| backend("creating the users index", e))?;
        for key in ["aor", "server"] {
            plain_index(&self.registrations, key, doc! { key: 1 }).await?;
        }
        plain_index(&self.audit, "at", doc! { "at": -1 }).await?;
        plain_index(
            &self.call_records,
            "ended",
            doc! { "ended_key": -1, "_id": -1 },
        )
        .await?;
        plain_index(&self.busy_marks, "user", doc! { "user": 1 }).await?;

        // TTL on expires_at; fall back to a plain index where the server refuses the option.
        let ttl = IndexModel::builder()
            .keys(doc! { "expires_at": 1 })
            .options(
                IndexOptions::builder()
                    .name("expires_at".to_owned())
                    .expire_after(Duration::ZERO)
                    .build(),
            )
            .build();
        match self.registrations.create_index(ttl).await {
            Ok(_) => {}
            Err(e) => match error_code(&e) {
                // NotImplemented, or any refusal of the option: a plain index, purge instead.
                Some(NOT_IMPLEMENTED) | Some(2) | Some(67) | Some(197) => {
                    tracing::info!(
                        "the MongoDB server refuses TTL indexes ({e}); lapsed registrations are \
                         purged by one server instead"
                    );
                    plain_index(&self.registrations, "expires_at", doc! { "expires_at": 1 })
                        .await?;
                }
                // An existing expires_at index with other options (made before): keep it.
                Some(INDEX_OPTIONS_CONFLICT) | Some(INDEX_KEY_SPECS_CONFLICT) => {}
                _ => return Err(backend("creating the expires_at TTL index", e)),
            },
        }
        // Believe what the server lists, not what it accepted.
        let mut listed = false;
        let mut cursor = self
            .registrations
            .list_indexes()
            .await
            .map_err(|e| backend("listing indexes", e))?;
        while cursor
            .advance()
            .await
            .map_err(|e| backend("listing indexes", e))?
        {
            let index = cursor
                .deserialize_current()
                .map_err(|e| backend("listing indexes", e))?;
            if index.keys.get("expires_at").is_some()
                && index.keys.len() == 1
                && index
                    .options
                    .as_ref()
                    .and_then(|o| o.expire_after)
                    .is_some()
            {
                listed = true;
            }
        }
        self.ttl_index = listed && !ferretdb_v1;
        Ok(())
    }

    /// Deletes registrations that lapsed before `before` (the caller passes `now - 1 day`);
    /// returns how many. Only needed where [`ttl_index`](Self::ttl_index) is false.
    pub async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        // Strictly before the millisecond of `before`: never removes a binding alive at `before`.
        let r = self
            .registrations
            .delete_many(doc! { "expires_at": { "$lt": bson_date(before).0 } })
            .await
            .map_err(map_err)?;
        Ok(r.deleted_count)
    }

    /// Takes or renews the lease `name` for `holder` until `now + hold`; true when `holder` has
    /// it. A lease whose holder stops renewing it passes to another server once it has run out.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        hold: chrono::Duration,
    ) -> Result<bool, StoreError> {
        let filter = doc! {
            "_id": name,
            "$or": [ { "holder": holder }, { "until": { "$lte": bson_date(now).0 } } ],
        };
        let update = doc! { "$set": { "holder": holder, "until": bson_date(now + hold).0 } };
        match self.leases.update_one(filter, update).upsert(true).await {
            Ok(_) => Ok(true),
            // Held by someone else: the upsert collides with the existing _id.
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Bumps a change counter after a write. A failure is logged, not returned: the write itself
    /// succeeded, and polling servers also reload everything periodically.
    async fn bump(&self, topic: &str) {
        if let Err(e) = self
            .revisions
            .update_one(doc! { "_id": topic }, doc! { "$inc": { "n": 1_i64 } })
            .upsert(true)
            .await
        {
            tracing::warn!(
                "bumping the {topic} revision failed (other servers see the change at their next full reload): {e}"
            );
        }
    }

    /// Runs one raw write command (`update`/`delete` with a statement array) and checks its
    /// per-statement errors.
    async fn bulk(&self, mut cmd: Document) -> Result<(), StoreError> {
        if let Some(wc) = &self.write_concern {
            cmd.insert("writeConcern", wc.clone());
        }
        let reply = self.db.run_command(cmd).await.map_err(map_err)?;
        if let Ok(errors) = reply.get_array("writeErrors") {
            let mut first = None;
            for e in errors {
                let Some(e) = e.as_document() else { continue };
                let code = e.get_i32("code").unwrap_or(0);
                let msg = e.get_str("errmsg").unwrap_or("").to_owned();
                if code == DUPLICATE_KEY || (code == 1 && msg.contains("UNIQUE constraint failed"))
                {
                    return Err(StoreError::Conflict(msg));
                }
                first.get_or_insert(format!("write error {code}: {msg}"));
            }
            if let Some(msg) = first {
                return Err(StoreError::Backend(msg));
            }
        }
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(StoreError::Backend(format!(
                "write concern: {}",
                wce.get_str("errmsg").unwrap_or("unsatisfied")
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn create_user(&self, user: User) -> Result<User, StoreError> {
        let d = user_doc(&user)?;
        match self.users.insert_one(d).await {
            Ok(_) => {
                self.bump(USERS).await;
                Ok(user)
            }
            Err(e) if is_duplicate(&e) => Err(StoreError::Conflict(format!(
                "username {} is taken in {}",
                user.username, user.domain
            ))),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn get_user(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        let d = self
            .users
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        d.map(user_from_doc).transpose()
    }

    async fn find_user(&self, username: &str, domain: &str) -> Result<Option<User>, StoreError> {
        let d = self
            .users
            .find_one(doc! {
                "username_key": username.to_lowercase(),
                "domain_key": domain.to_lowercase(),
            })
            .await
            .map_err(map_err)?;
        d.map(user_from_doc).transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let mut users = Vec::new();
        let mut cursor = self.users.find(doc! {}).await.map_err(map_err)?;
        while cursor.advance().await.map_err(map_err)? {
            let d = cursor.deserialize_current().map_err(map_err)?;
            users.push(user_from_doc(d)?);
        }
        // The embedded store's order: domain, then username, case-insensitively.
        users.sort_by_cached_key(|u| (u.domain.to_lowercase(), u.username.to_lowercase()));
        Ok(users)
    }

    async fn update_user(&self, user: User) -> Result<User, StoreError> {
        let d = user_doc(&user)?;
        match self
            .users
            .replace_one(doc! { "_id": user.id.to_string() }, d)
            .await
        {
            Ok(r) if r.matched_count == 0 => Err(StoreError::NotFound),
            Ok(_) => {
                self.bump(USERS).await;
                Ok(user)
            }
            Err(e) if is_duplicate(&e) => Err(StoreError::Conflict(format!(
                "username {} is taken in {}",
                user.username, user.domain
            ))),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn delete_user(&self, id: Uuid) -> Result<(), StoreError> {
        let r = self
            .users
            .delete_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        if r.deleted_count == 0 {
            return Err(StoreError::NotFound);
        }
        self.bump(USERS).await;
        Ok(())
    }

    async fn write_registrations(
        &self,
        upserts: &[Registration],
        removals: &[Removal],
    ) -> Result<(), StoreError> {
        for chunk in upserts.chunks(BULK_CHUNK) {
            let mut updates = Vec::with_capacity(chunk.len());
            for r in chunk {
                updates.push(Bson::Document(doc! {
                    "q": { "_id": binding_id(&r.aor, &r.binding) },
                    "u": registration_doc(r)?,
                    "upsert": true,
                }));
            }
            self.bulk(doc! { "update": REGISTRATIONS, "updates": updates, "ordered": false })
                .await?;
        }
        for chunk in removals.chunks(BULK_CHUNK) {
            let deletes: Vec<Bson> = chunk
                .iter()
                .map(|k| {
                    Bson::Document(doc! {
                        "q": { "_id": binding_id(&k.key.aor, &k.key.binding), "server": k.server.as_str() },
                        "limit": 1,
                    })
                })
                .collect();
            self.bulk(doc! { "delete": REGISTRATIONS, "deletes": deletes, "ordered": false })
                .await?;
        }
        Ok(())
    }

    async fn list_registrations(
        &self,
        filter: &RegistrationFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Registration>, StoreError> {
        // The server compares milliseconds (`>=` the millisecond of `now`); the exact
        // `expires_at > now` is checked here on the full-precision value.
        let mut q = doc! { "expires_at": { "$gte": bson_date(now).0 } };
        if let Some(server) = &filter.server {
            q.insert("server", server.as_str());
        }
        if let Some(aor) = &filter.aor {
            q.insert("aor", aor.as_str());
        }
        let mut out = Vec::new();
        let mut cursor = self.registrations.find(q).await.map_err(map_err)?;
        while cursor.advance().await.map_err(map_err)? {
            let d = cursor.deserialize_current().map_err(map_err)?;
            let r = registration_from_doc(d)?;
            if r.expires_at > now {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn get_config(&self, name: &str) -> Result<Option<ConfigEntry>, StoreError> {
        let d = self
            .config
            .find_one(doc! { "_id": name })
            .await
            .map_err(map_err)?;
        d.map(|mut d| {
            d.remove("_id");
            from_bson::<ConfigEntry>(Bson::Document(d))
        })
        .transpose()
    }

    async fn put_config(&self, name: &str, entry: &ConfigEntry) -> Result<(), StoreError> {
        let mut d = match to_bson(entry)? {
            Bson::Document(d) if !d.contains_key("_id") => d,
            _ => {
                return Err(StoreError::Backend(format!(
                    "configuration entry {name}: must be a JSON object without an _id key"
                )));
            }
        };
        d.insert("_id", name);
        self.config
            .replace_one(doc! { "_id": name }, d)
            .upsert(true)
            .await
            .map_err(map_err)?;
        self.bump(CONFIG).await;
        Ok(())
    }

    async fn list_config(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let mut cursor = self
            .config
            .find(doc! {})
            .projection(doc! { "_id": 1 })
            .await
            .map_err(map_err)?;
        while cursor.advance().await.map_err(map_err)? {
            let d = cursor.deserialize_current().map_err(map_err)?;
            let name = d
                .get_str("_id")
                .map_err(|e| StoreError::Backend(format!("config entry without a name: {e}")))?;
            names.push(name.to_owned());
        }
        names.sort();
        Ok(names)
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut d = json_doc(entry)?;
        let (at, at_ns) = bson_date(entry.at);
        d.insert("at", at);
        d.insert("at_ns", at_ns);
        self.audit.insert_one(d).await.map_err(map_err)?;
        Ok(())
    }

    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new()); // a MongoDB limit of 0 means "no limit"
        }
        let mut out = Vec::new();
        let mut cursor = self
            .audit
            .find(doc! {})
            .sort(doc! { "at": -1, "at_ns": -1, "_id": -1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(map_err)?;
        while cursor.advance().await.map_err(map_err)? {
            let mut d = cursor.deserialize_current().map_err(map_err)?;
            d.remove("_id");
            let at = take_date(&mut d, "at", "at_ns")?;
            let mut v = from_bson::<serde_json::Value>(Bson::Document(d))?;
            if let Some(o) = v.as_object_mut() {
                o.insert("at".into(), json_time(at)?);
            }
            out.push(from_json(v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn get_policy(&self, kind: &str) -> Result<Option<PolicyRecord>, StoreError> {
        let found = self
            .db
            .collection::<Document>(POLICIES)
            .find_one(doc! { "_id": kind })
            .await
            .map_err(map_err)?;
        let Some(mut d) = found else {
            return Ok(None);
        };
        let wasm = match d.remove("wasm") {
            Some(Bson::Binary(b)) => b.bytes,
            other => {
                return Err(StoreError::Backend(format!(
                    "policy {kind}: stored bytes are not binary: {:?}",
                    other.map(|b| b.element_type())
                )));
            }
        };
        Ok(Some(PolicyRecord {
            meta: policy_meta_from_doc(d)?,
            wasm,
        }))
    }

    async fn put_policy(&self, record: &PolicyRecord) -> Result<(), StoreError> {
        let kind = record.meta.kind.as_str();
        let mut d = json_doc(&record.meta)?;
        d.insert("_id", kind);
        d.insert(
            "wasm",
            Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: record.wasm.clone(),
            }),
        );
        self.db
            .collection::<Document>(POLICIES)
            .replace_one(doc! { "_id": kind }, d)
            .upsert(true)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn delete_policy(&self, kind: &str) -> Result<(), StoreError> {
        let r = self
            .db
            .collection::<Document>(POLICIES)
            .delete_one(doc! { "_id": kind })
            .await
            .map_err(map_err)?;
        if r.deleted_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn list_policies(&self) -> Result<Vec<PolicyMeta>, StoreError> {
        let mut out = Vec::new();
        let mut cursor = self
            .db
            .collection::<Document>(POLICIES)
            .find(doc! {})
            .projection(doc! { "wasm": 0 })
            .await
            .map_err(map_err)?;
        while cursor.advance().await.map_err(map_err)? {
            let mut d = cursor.deserialize_current().map_err(map_err)?;
            d.remove("wasm");
            out.push(policy_meta_from_doc(d)?);
        }
        out.sort_by(|a, b| a.kind.cmp(&b.kind));
        Ok(out)
    }

    async fn put_call_records(&self, records: &[EndedCall]) -> Result<(), StoreError> {
        for chunk in records.chunks(BULK_CHUNK) {
            let mut updates = Vec::with_capacity(chunk.len());
            for r in chunk {
                updates.push(Bson::Document(doc! {
                    "q": { "_id": r.record_id.to_string() },
                    "u": call_record_doc(r)?,
                    "upsert": true,
                }));
            }
            self.bulk(doc! { "update": CALL_RECORDS, "updates": updates, "ordered": false })
                .await?;
        }
        Ok(())
    }

    async fn list_call_records(
        &self,
        query: &CallRecordQuery,
    ) -> Result<Vec<EndedCall>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new()); // a MongoDB limit of 0 means "no limit"
        }
        let mut key = Document::new();
        if let Some(b) = query.before {
            key.insert("$lt", nanos(b));
        }
        if let Some(s) = query.since {
            key.insert("$gte", nanos(s));
        }
        let mut q = Document::new();
        if !key.is_empty() {
            q.insert("ended_key", key);
        }
        if let Some(u) = query.user.as_deref().filter(|u| !u.is_empty()) {
            if u.contains('\0') {
                return Ok(Vec::new()); // no caller or callee from SIP holds a NUL
            }
            let re = doc! { "$regex": regex_literal(u), "$options": "i" };
            q.insert(
                "$or",
                vec![
                    Bson::Document(doc! { "caller": re.clone() }),
                    Bson::Document(doc! { "callee": re }),
                ],
            );
        }
        let mut out = Vec::new();
        let mut cursor = self
            .call_records
            .find(q)
            .sort(doc! { "ended_key": -1, "_id": -1 })
            .skip(u64::try_from(query.offset).unwrap_or(u64::MAX))
            .limit(i64::try_from(query.limit).unwrap_or(i64::MAX))
            .await
            .map_err(map_err)?;
        while cursor.advance().await.map_err(map_err)? {
            let d = cursor.deserialize_current().map_err(map_err)?;
            out.push(call_record_from_doc(d)?);
            if out.len() >= query.limit {
                break;
            }
        }
        Ok(out)
    }

    async fn purge_call_records(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let r = self
            .call_records
            .delete_many(doc! { "ended_key": { "$lt": nanos(ended_before) } })
            .await
            .map_err(map_err)?;
        Ok(r.deleted_count)
    }

    async fn mark_busy(
        &self,
        upn: &str,
        server: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let user = upn.to_lowercase();
        self.busy_marks
            .replace_one(
                doc! { "_id": binding_id(&user, server) },
                doc! { "user": &user, "server": server, "expires_at": bson_date(until).0 },
            )
            .upsert(true)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn unmark_busy(
        &self,
        upn: &str,
        server: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let user = upn.to_lowercase();
        let now = bson_date(now).0;
        // This server's mark and the lapsed ones first; only then read who else is left.
        self.busy_marks
            .delete_many(doc! {
                "user": &user,
                "$or": [ { "server": server }, { "expires_at": { "$lte": now } } ],
            })
            .await
            .map_err(map_err)?;
        let mut others = Vec::new();
        let mut cursor = self
            .busy_marks
            .find(doc! { "user": &user, "expires_at": { "$gt": now } })
            .await
            .map_err(map_err)?;
        while cursor.advance().await.map_err(map_err)? {
            let d = cursor.deserialize_current().map_err(map_err)?;
            match d.get_str("server") {
                Ok(s) if s != server => others.push(s.to_owned()),
                _ => {}
            }
        }
        others.sort();
        Ok(others)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write was acknowledged with the strongest write concern the server offers.
        Ok(())
    }

    async fn revisions(&self) -> Result<Option<Revisions>, StoreError> {
        let mut r = Revisions::default();
        let mut cursor = self.revisions.find(doc! {}).await.map_err(map_err)?;
        while cursor.advance().await.map_err(map_err)? {
            let d = cursor.deserialize_current().map_err(map_err)?;
            let n = match d.get("n") {
                Some(Bson::Int64(n)) => *n,
                Some(Bson::Int32(n)) => i64::from(*n),
                _ => 0,
            };
            match d.get_str("_id") {
                Ok(CONFIG) => r.config = n,
                Ok(USERS) => r.users = n,
                _ => {}
            }
        }
        Ok(Some(r))
    }

    async fn change_feed(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<ChangeTopic>>, StoreError> {
        let opened = self
            .db
            .watch()
            .pipeline([doc! { "$match": { "ns.coll": { "$in": [CONFIG, USERS] } } }])
            .await;
        let mut stream = match opened {
            Ok(s) => s,
            // FerretDB v1 (no $changeStream stage) and a standalone mongod (change streams need
            // a replica set) refuse it with a command error: the caller polls instead.
            Err(e) => match e.kind.as_ref() {
                ErrorKind::Command(c) => {
                    tracing::info!(
                        code = c.code,
                        "no change streams on this server ({}); polling for changes",
                        c.message
                    );
                    return Ok(None);
                }
                _ => return Err(map_err(e)),
            },
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match stream.next_if_any().await {
                    Ok(Some(ev)) => {
                        let topic = match ev.ns.and_then(|ns| ns.coll).as_deref() {
                            Some(USERS) => ChangeTopic::Users,
                            _ => ChangeTopic::Config,
                        };
                        if tx.send(topic).await.is_err() {
                            return; // nobody listens any more
                        }
                    }
                    Ok(None) if stream.is_alive() => {}
                    Ok(None) => {
                        tracing::warn!("the change stream ended; polling for changes");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("the change stream failed ({e}); polling for changes");
                        return;
                    }
                }
            }
        });
        Ok(Some(rx))
    }
}

/// Creates the index `name` on `keys` of `coll` (neither unique nor TTL).
async fn plain_index(
    coll: &Collection<Document>,
    name: &str,
    keys: Document,
) -> Result<(), StoreError> {
    let m = IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().name(name.to_owned()).build())
        .build();
    coll.create_index(m)
        .await
        .map_err(|e| backend(&format!("creating the index {name} of {}", coll.name()), e))?;
    Ok(())
}

/// `_id` of a binding (AoR, NUL, binding: neither contains a NUL, both come from SIP text) or
/// of a busy mark (UPN, NUL, server).
fn binding_id(aor: &str, binding: &str) -> String {
    format!("{aor}\0{binding}")
}

/// A BSON date (milliseconds, floored) and the nanoseconds below it.
fn bson_date(t: DateTime<Utc>) -> (bson::DateTime, i32) {
    let ms = t.timestamp_millis();
    let sub = t.timestamp_subsec_nanos() % 1_000_000;
    (
        bson::DateTime::from_millis(ms),
        i32::try_from(sub).unwrap_or(0),
    )
}

/// Removes a BSON date and its nanosecond field from `d` and rebuilds the exact time.
fn take_date(d: &mut Document, field: &str, ns_field: &str) -> Result<DateTime<Utc>, StoreError> {
    let ms = match d.remove(field) {
        Some(Bson::DateTime(t)) => t.timestamp_millis(),
        other => {
            return Err(StoreError::Backend(format!(
                "stored {field} is not a date: {other:?}"
            )));
        }
    };
    let ns = match d.remove(ns_field) {
        Some(Bson::Int32(n)) => i64::from(n),
        Some(Bson::Int64(n)) => n,
        _ => 0,
    };
    DateTime::<Utc>::from_timestamp_millis(ms)
        .and_then(|t| t.checked_add_signed(chrono::Duration::nanoseconds(ns)))
        .ok_or_else(|| StoreError::Backend(format!("stored {field} out of range")))
}

fn json_time(t: DateTime<Utc>) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(t).map_err(|e| StoreError::Backend(format!("encoding a time: {e}")))
}

fn user_doc(user: &User) -> Result<Document, StoreError> {
    let mut d = json_doc(user)?;
    d.insert("_id", user.id.to_string());
    d.insert("username_key", user.username.to_lowercase());
    d.insert("domain_key", user.domain.to_lowercase());
    Ok(d)
}

fn user_from_doc(mut d: Document) -> Result<User, StoreError> {
    d.remove("_id");
    d.remove("username_key");
    d.remove("domain_key");
    from_json(from_bson::<serde_json::Value>(Bson::Document(d))?)
}

fn policy_meta_from_doc(mut d: Document) -> Result<PolicyMeta, StoreError> {
    d.remove("_id");
    from_json(from_bson::<serde_json::Value>(Bson::Document(d))?)
}

fn registration_doc(r: &Registration) -> Result<Document, StoreError> {
    let mut d = json_doc(r)?;
    d.insert("_id", binding_id(&r.aor, &r.binding));
    let (at, ns) = bson_date(r.expires_at);
    d.insert("expires_at", at);
    d.insert("expires_ns", ns);
    Ok(d)
}

fn registration_from_doc(mut d: Document) -> Result<Registration, StoreError> {
    d.remove("_id");
    let expires_at = take_date(&mut d, "expires_at", "expires_ns")?;
    let mut v = from_bson::<serde_json::Value>(Bson::Document(d))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("expires_at".into(), json_time(expires_at)?);
    }
    from_json(v)
}

/// `text` as a regular expression matching itself: ASCII punctuation escaped, which both
/// MongoDB's PCRE and FerretDB's Go regexp read as the literal character.
fn regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Time fields of a call record stored as BSON dates (with their `*_ns` part).
const CALL_TIMES: [(&str, &str); 3] = [
    ("started_at", "started_ns"),
    ("answered_at", "answered_ns"),
    ("ended_at", "ended_ns"),
];

fn call_record_doc(r: &EndedCall) -> Result<Document, StoreError> {
    let mut d = json_doc(r)?;
    d.remove("record_id");
    d.insert("_id", r.record_id.to_string());
    for ((field, ns_field), t) in
        CALL_TIMES
            .iter()
            .zip([Some(r.started_at), r.answered_at, Some(r.ended_at)])
    {
        if let Some(t) = t {
            let (at, ns) = bson_date(t);
            d.insert(*field, at);
            d.insert(*ns_field, ns);
        }
    }
    d.insert("ended_key", nanos(r.ended_at));
    Ok(d)
}

fn call_record_from_doc(mut d: Document) -> Result<EndedCall, StoreError> {
    let id = match d.remove("_id") {
        Some(Bson::String(s)) => s,
        other => {
            return Err(StoreError::Backend(format!(
                "call record with a bad _id: {other:?}"
            )));
        }
    };
    d.remove("ended_key");
    let mut times = Vec::with_capacity(CALL_TIMES.len());
    for (field, ns_field) in CALL_TIMES {
        let t = match d.get(field) {
            Some(Bson::DateTime(_)) => Some(take_date(&mut d, field, ns_field)?),
            _ => {
                d.remove(ns_field);
                None
            }
        };
        times.push((field, t));
    }
    let mut v = from_bson::<serde_json::Value>(Bson::Document(d))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("record_id".into(), serde_json::Value::String(id));
        for (field, t) in times {
            let t = t.map(json_time).transpose()?;
            o.insert(field.into(), t.unwrap_or(serde_json::Value::Null));
        }
    }
    from_json(v)
}

/// A record as a BSON document, through JSON (UUIDs and times as their JSON strings).
fn json_doc<T: Serialize>(value: &T) -> Result<Document, StoreError> {
    let v = serde_json::to_value(value)
        .map_err(|e| StoreError::Backend(format!("encoding a record: {e}")))?;
    match to_bson(&v)? {
        Bson::Document(d) => Ok(d),
        other => Err(StoreError::Backend(format!(
            "a record must encode as a document, not {other:?}"
        ))),
    }
}

fn to_bson(v: &serde_json::Value) -> Result<Bson, StoreError> {
    bson::serialize_to_bson(v).map_err(|e| StoreError::Backend(format!("encoding BSON: {e}")))
}

fn from_bson<T: DeserializeOwned>(b: Bson) -> Result<T, StoreError> {
    bson::deserialize_from_bson(b)
        .map_err(|e| StoreError::Backend(format!("decoding a stored document: {e}")))
}

fn from_json<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, StoreError> {
    serde_json::from_value(v)
        .map_err(|e| StoreError::Backend(format!("decoding a stored record: {e}")))
}

/// The server's error code, from a command error or a single write error.
fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

/// A unique index refused the write: 11000, or FerretDB v1's answer to an update that collides
/// (InternalError carrying SQLite's "UNIQUE constraint failed").
fn is_duplicate(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => {
            c.code == DUPLICATE_KEY
                || (c.code == 1 && c.message.contains("UNIQUE constraint failed"))
        }
        _ => error_code(e) == Some(DUPLICATE_KEY),
    }
}

fn map_err(e: mongodb::error::Error) -> StoreError {
    if is_duplicate(&e) {
        StoreError::Conflict(e.to_string())
    } else {
        StoreError::Backend(format!("MongoDB: {e}"))
    }
}

fn backend(what: &str, e: mongodb::error::Error) -> StoreError {
    StoreError::Backend(format!("MongoDB, {what}: {e}"))
}
