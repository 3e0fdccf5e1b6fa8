//! `/api/config/…`: the configuration entries (`*`, the global template, and one per server) as
//! whole entries and leaf by leaf, the list of servers and of leaf paths; `/api/audit`, the log of
//! admin changes; and the one write path every configuration change goes through ([`write`]).
//!
//! Semantics (cSPS): writing a server's entry changes that server only. Writing `*` sets the
//! value on the global entry **and on every server entry**, overriding whatever a server had for
//! that leaf. There is no transaction (FerretDB v1 has none): every server entry is written first,
//! each with up to 3 attempts, and the global entry last, only when all servers took the change.
//! Every write sets absolute values, so repeating a request is harmless; a partial failure is a
//! 503 naming the entries not updated, and the same request can simply be sent again.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ApiState;
use super::openapi::{
    ConfigEntry as EntrySchema, LeafValue, MethodNotAllowed, NotFound, Unprocessable,
    UnsupportedMediaType,
};
use super::problem::{FieldError, JsonBody, PathParam, Problem, QueryParams};
use crate::config::model::{self, GROUPS, LEAVES, Leaf};
use crate::config::{GLOBAL, leaf, set_leaf};
use crate::store::{AuditEntry, ConfigEntry, StoreError};

/// Attempts per entry write.
const ATTEMPTS: u32 = 3;
/// Default and largest `limit` of `GET /api/audit`.
const AUDIT_DEFAULT: usize = 100;
const AUDIT_MAX: usize = 1000;

/// Who makes a change, for the audit log: the access guard (`access::guard`) puts it into the
/// request's extensions (the signed-in user's UPN, `admin-token` or `localhost`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Every route that changes something is behind the guard; `unknown` would mean a route
        // outside it, and is then visible in the log rather than a made-up name.
        Ok(parts
            .extensions
            .get::<Actor>()
            .cloned()
            .unwrap_or_else(|| Actor("unknown".to_owned())))
    }
}

/// The `{server}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct Server {
    /// `*` (the global entry) or a server name `[a-z0-9-]{1,63}` (not `servers`, `paths`).
    #[param(pattern = r"^(\*|[a-z0-9-]{1,63})$", example = "*")]
    server: String,
}

/// The `{server}` and `{leaf}` path parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ServerLeaf {
    /// `*` (the global entry) or a server name `[a-z0-9-]{1,63}` (not `servers`, `paths`).
    #[param(pattern = r"^(\*|[a-z0-9-]{1,63})$", example = "*")]
    server: String,
    /// Dotted leaf path (`GET /api/config/paths` lists them).
    #[param(example = "Data.SipConfig.DefaultSipDomain")]
    leaf: String,
}

/// True for `*` and for names of the form `[a-z0-9-]{1,63}` that are not reserved.
pub fn valid_entry_name(name: &str) -> bool {
    name == GLOBAL
        || (!name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && name != "servers"
            && name != "paths")
}

/// Reads an entry, 404 when it does not exist (or the name cannot be one).
pub async fn read_entry(state: &ApiState, server: &str) -> Result<ConfigEntry, Problem> {
    let missing = || Problem::not_found(format!("no configuration entry `{server}`"));
    if !valid_entry_name(server) {
        return Err(missing());
    }
    let found = retry(|| state.store.get_config(server)).await?;
    found.ok_or_else(missing)
}

/// The leaf at `path`, 404 when the model has none.
fn find_leaf(path: &str) -> Result<&'static Leaf, Problem> {
    model::find(path).ok_or_else(|| {
        Problem::not_found(format!(
            "no configuration leaf `{path}`; GET /api/config/paths lists them"
        ))
    })
}

/// Runs a store operation up to [`ATTEMPTS`] times while the backend fails.
async fn retry<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(StoreError::Backend(e)) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, "store operation failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// Appends an audit entry (retried; a failure is logged, never answered: the change is done).
pub async fn audit(
    state: &ApiState,
    actor: &Actor,
    action: &str,
    target: &str,
    old: Option<Value>,
    new: Option<Value>,
) {
    let entry = AuditEntry {
        at: Utc::now(),
        actor: actor.0.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        old,
        new,
    };
    if let Err(e) = retry(|| state.store.append_audit(&entry)).await {
        tracing::error!(action, target, "the audit log lost an entry: {e}");
    }
    // Every admin change is audited here, so here it reaches the live feed too.
    let name = match action.split('.').next() {
        Some("config") => "config.changed",
        Some("user") => "user.changed",
        Some("policy") => "policy.changed",
        _ => "admin.changed",
    };
    state.events.publish(name, || {
        serde_json::json!({ "action": entry.action, "target": entry.target, "actor": entry.actor })
    });
}

/// One leaf assignment (the value already checked and normalised).
pub type Set = (&'static Leaf, Value);

/// `stored` with `sets` applied (keys the model does not know are kept).
fn apply(stored: &ConfigEntry, sets: &[Set]) -> ConfigEntry {
    let mut e = if stored.is_object() {
        stored.clone()
    } else {
        Value::Object(Map::new())
    };
    for (l, v) in sets {
        set_leaf(&mut e, l.path, v.clone());
    }
    e
}

/// The cross-field errors of `entry`, reported at `focus` when it is one of the pair, else at
/// both paths; `prefix` names the entry for a global write.
fn cross_errors(entry: &ConfigEntry, focus: Option<&str>, prefix: &str) -> Vec<FieldError> {
    let mut out = Vec::new();
    for e in model::cross_field(&model::effective(entry)) {
        let msg = format!("{prefix}{}", e.message);
        match focus {
            Some(f) if f == e.lower || f == e.upper => out.push(FieldError::new(f, msg)),
            _ => {
                out.push(FieldError::new(e.lower, msg.clone()));
                out.push(FieldError::new(e.upper, msg));
            }
        }
    }
    out
}

/// Writes one entry (retried) and audits the leaves whose effective value changed.
async fn put_entry_audited(
    state: &ApiState,
    actor: &Actor,
    action: &str,
    name: &str,
    old: &ConfigEntry,
    new: &ConfigEntry,
) -> Result<(), StoreError> {
    retry(|| state.store.put_config(name, new)).await?;
    for l in LEAVES {
        let (a, b) = (model::value_of(old, l), model::value_of(new, l));
        if a != b {
            let target = format!("{name}/{}", l.path);
            audit(
                state,
                actor,
                action,
                &target,
                Some(l.masked(a)),
                Some(l.masked(b)),
            )
            .await;
        }
    }
    Ok(())
}

/// The one configuration write path. Applies `own` to `server`'s entry; for `*`, first applies
/// `propagate` to every server entry (each retried), then writes the global entry. All entries
/// are checked (cross-field rules) before anything is written: 422 then. A partial failure is a
/// 503 naming the entries not updated. The running server reloads its settings afterwards.
/// Callers hold `state.config_writes`.
pub async fn write(
    state: &ApiState,
    actor: &Actor,
    action: &str,
    server: &str,
    own: &[Set],
    propagate: &[Set],
    focus: Option<&str>,
) -> Result<(), Problem> {
    let stored = read_entry(state, server).await?;
    let new_own = apply(&stored, own);
    let mut errors = cross_errors(&new_own, focus, "");
    let mut plans = Vec::new();
    if server == GLOBAL && !propagate.is_empty() {
        let mut names = retry(|| state.store.list_config()).await?;
        names.retain(|n| n != GLOBAL);
        names.sort();
        for name in names {
            let Some(old) = retry(|| state.store.get_config(&name)).await? else {
                continue;
            };
            let new = apply(&old, propagate);
            errors.extend(cross_errors(&new, focus, &format!("on server `{name}`: ")));
            plans.push((name, old, new));
        }
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let mut failed = Vec::new();
    for (name, old, new) in &plans {
        if old == new {
            continue;
        }
        if let Err(e) = put_entry_audited(state, actor, action, name, old, new).await {
            tracing::error!(entry = %name, "configuration write failed: {e}");
            failed.push(name.clone());
        }
    }
    let result = if !failed.is_empty() {
        // The global entry is written last, only when every server took the change, so
        // repeating the request repeats the whole change.
        failed.push(GLOBAL.to_owned());
        Err(failed)
    } else {
        match put_entry_audited(state, actor, action, server, &stored, &new_own).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(entry = %server, "configuration write failed: {e}");
                Err(vec![server.to_owned()])
            }
        }
    };
    if let Err(e) = state.config.reload().await {
        tracing::warn!("configuration written but not reloaded: {e}");
    }
    result.map_err(|names| {
        Problem::unavailable(format!(
            "the store failed; entries not updated: {}; the request is idempotent, send it again",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// `GET /api/config/servers` → the server entries' names (not `*`), sorted.
#[utoipa::path(get, path = "/api/config/servers", tag = "config",
    responses((status = 200, description = "Server entries (not `*`), sorted", body = [String],
        example = json!(["a", "b"]))))]
pub async fn servers(State(state): State<ApiState>) -> Result<Json<Vec<String>>, Problem> {
    let mut names = retry(|| state.store.list_config()).await?;
    names.retain(|n| n != GLOBAL);
    names.sort();
    Ok(Json(names))
}

/// One row of `GET /api/config/paths`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"path": "Data.System.MinRtpPort", "type": "integer", "default": 20000,
    "secret": false, "minimum": 1024, "maximum": 65535,
    "description": "lowest UDP port for RTP/SRTP media"}))]
pub struct PathInfo {
    /// Dotted path.
    pub path: &'static str,
    /// JSON type (`integer`, `boolean`, `string`, `array`).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Default value (the leaf's type).
    pub default: Value,
    /// Never returned by GET.
    pub secret: bool,
    /// Allowed values (enums and arrays of enums).
    #[serde(rename = "enum", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub values: Option<&'static [&'static str]>,
    /// Smallest value (integers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum: Option<i64>,
    /// Largest value (integers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum: Option<i64>,
    /// What it means.
    pub description: &'static str,
}

/// `GET /api/config/paths` → `[{"path","type","default",…}]`, every leaf of the model.
#[utoipa::path(get, path = "/api/config/paths", tag = "config",
    responses((status = 200, description = "Every leaf of the model", body = [PathInfo])))]
pub async fn paths() -> Json<Vec<PathInfo>> {
    use model::{Item, Kind};
    Json(
        LEAVES
            .iter()
            .map(|l| {
                let (minimum, maximum) = match l.kind {
                    Kind::Integer { min, max } => (Some(min), Some(max)),
                    _ => (None, None),
                };
                let values = match l.kind {
                    Kind::Enum(v) | Kind::Array(Item::OneOf(v)) => Some(v),
                    _ => None,
                };
                PathInfo {
                    path: l.path,
                    kind: l.json_type(),
                    default: l.default.value(),
                    secret: l.secret,
                    values,
                    minimum,
                    maximum,
                    description: l.meaning,
                }
            })
            .collect(),
    )
}

/// `GET /api/config/{server}` → `{"Data":{…}}`, defaults filled in, secrets `null`.
#[utoipa::path(get, path = "/api/config/{server}", tag = "config", params(Server),
    responses(
        (status = 200, description = "The entry, defaults filled in, secrets `null`",
            body = EntrySchema),
        (status = 404, response = NotFound),
        (status = 405, response = MethodNotAllowed),
    ))]
pub async fn get_entry(
    State(state): State<ApiState>,
    PathParam(server): PathParam<String>,
) -> Result<Json<Value>, Problem> {
    Ok(Json(model::shown(&read_entry(&state, &server).await?)))
}

/// Checks a whole entry: unknown keys, every leaf's value, absent leaves at their default, an
/// absent or `null` secret kept. Returns the assignments.
fn parse_entry(body: &Value) -> Result<Vec<Set>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(top) = body.as_object() else {
        return Err(vec![FieldError::new(
            "",
            "an entry must be a JSON object `{\"Data\":{…}}`",
        )]);
    };
    for (k, v) in top {
        if k != "Data" {
            errors.push(FieldError::new(k.clone(), "unknown key"));
            continue;
        }
        let Some(groups) = v.as_object() else {
            errors.push(FieldError::new("Data", "must be an object"));
            continue;
        };
        for (g, gv) in groups {
            let path = format!("Data.{g}");
            if !GROUPS.contains(&g.as_str()) {
                errors.push(FieldError::new(
                    path,
                    format!("unknown group; the groups are {}", GROUPS.join(", ")),
                ));
                continue;
            }
            let Some(keys) = gv.as_object() else {
                errors.push(FieldError::new(path, "must be an object"));
                continue;
            };
            for k in keys.keys() {
                let p = format!("{path}.{k}");
                if model::find(&p).is_none() {
                    errors.push(FieldError::new(p, "unknown key"));
                }
            }
        }
    }
    let mut sets = Vec::new();
    for l in LEAVES {
        match leaf(body, l.path) {
            None | Some(Value::Null) if l.secret => {}
            None => sets.push((l, l.default.value())),
            Some(v) => match l.check(v) {
                Ok(v) => sets.push((l, v)),
                Err(m) => errors.push(FieldError::new(l.path, m)),
            },
        }
    }
    if errors.is_empty() {
        Ok(sets)
    } else {
        Err(errors)
    }
}

/// `PUT /api/config/{server}` with a whole entry → the entry as GET shows it. Absent leaves take
/// their default; an absent or `null` secret keeps the stored one. For `*`, the leaves whose
/// value differs from the global entry's are also set on every server entry.
#[utoipa::path(put, path = "/api/config/{server}", tag = "config", params(Server),
    request_body(content = EntrySchema, description = "The whole entry"),
    responses(
        (status = 200, description = "The entry as GET shows it", body = EntrySchema),
        (status = 404, response = NotFound),
        (status = 405, response = MethodNotAllowed),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ))]
pub async fn put_entry(
    State(state): State<ApiState>,
    actor: Actor,
    PathParam(server): PathParam<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, Problem> {
    let _writing = state.config_writes.lock().await;
    let stored = read_entry(&state, &server).await?;
    let sets = parse_entry(&body).map_err(Problem::validation)?;
    let propagate: Vec<Set> = if server == GLOBAL {
        sets.iter()
            .filter(|(l, v)| model::value_of(&stored, l) != *v)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    write(
        &state,
        &actor,
        "config.put",
        &server,
        &sets,
        &propagate,
        None,
    )
    .await?;
    Ok(Json(model::shown(&read_entry(&state, &server).await?)))
}

/// `GET /api/config/{server}/{leaf}` → the bare value (`null` for a secret).
#[utoipa::path(get, path = "/api/config/{server}/{leaf}", tag = "config", params(ServerLeaf),
    responses(
        (status = 200, description = "The bare value (`null` for a secret)",
            body = LeafValue),
        (status = 404, response = NotFound),
    ))]
pub async fn get_leaf(
    State(state): State<ApiState>,
    PathParam((server, path)): PathParam<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let entry = read_entry(&state, &server).await?;
    let l = find_leaf(&path)?;
    Ok(Json(l.shown(model::value_of(&entry, l))))
}

/// `PUT /api/config/{server}/{leaf}` with a bare JSON value → the value as GET shows it. For
/// `*`, the global entry and every server entry get it. `null` for a secret keeps it.
#[utoipa::path(put, path = "/api/config/{server}/{leaf}", tag = "config", params(ServerLeaf),
    request_body(content = LeafValue, description = "The bare JSON value of the leaf"),
    responses(
        (status = 200, description = "The value as GET shows it", body = LeafValue),
        (status = 404, response = NotFound),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ))]
pub async fn put_leaf(
    State(state): State<ApiState>,
    actor: Actor,
    PathParam((server, path)): PathParam<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, Problem> {
    let _writing = state.config_writes.lock().await;
    read_entry(&state, &server).await?;
    let l = find_leaf(&path)?;
    if !(l.secret && body.is_null()) {
        let v = l.check(&body).map_err(|m| Problem::invalid(l.path, m))?;
        let sets = [(l, v)];
        write(
            &state,
            &actor,
            "config.put-leaf",
            &server,
            &sets,
            &sets,
            Some(l.path),
        )
        .await?;
    }
    let entry = read_entry(&state, &server).await?;
    Ok(Json(l.shown(model::value_of(&entry, l))))
}

/// `GET /api/audit` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// How many entries (default 100, at most 1000).
    #[param(minimum = 0, example = 20)]
    pub limit: Option<usize>,
}

/// `GET /api/audit?limit=N` → the newest N admin changes, newest first.
#[utoipa::path(get, path = "/api/audit", tag = "config", params(AuditQuery),
    responses((status = 200, description = "Newest first (secrets `***`)", body = [AuditEntry])))]
pub async fn audit_list(
    State(state): State<ApiState>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, Problem> {
    let limit = q.limit.unwrap_or(AUDIT_DEFAULT).min(AUDIT_MAX);
    Ok(Json(retry(|| state.store.list_audit(limit)).await?))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use chrono::{DateTime, Utc};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::config::LiveConfig;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{Registration, RegistrationFilter, Removal, Store, User};

    /// The embedded store, with `put_config` failing for chosen entries (attempts counted).
    struct Flaky {
        inner: EmbeddedStore,
        failing: Mutex<HashMap<String, u32>>,
    }

    impl Flaky {
        fn fail(&self, name: &str, on: bool) {
            let mut f = self.failing.lock().expect("lock");
            if on {
                f.insert(name.to_owned(), 0);
            } else {
                f.remove(name);
            }
        }

        fn attempts(&self, name: &str) -> u32 {
            self.failing
                .lock()
                .expect("lock")
                .get(name)
                .copied()
                .unwrap_or(0)
        }
    }

    #[async_trait]
    impl Store for Flaky {
        async fn create_user(&self, user: User) -> Result<User, StoreError> {
            self.inner.create_user(user).await
        }
        async fn get_user(&self, id: Uuid) -> Result<Option<User>, StoreError> {
            self.inner.get_user(id).await
        }
        async fn find_user(&self, u: &str, d: &str) -> Result<Option<User>, StoreError> {
            self.inner.find_user(u, d).await
        }
        async fn list_users(&self) -> Result<Vec<User>, StoreError> {
            self.inner.list_users().await
        }
        async fn update_user(&self, user: User) -> Result<User, StoreError> {
            self.inner.update_user(user).await
        }
        async fn delete_user(&self, id: Uuid) -> Result<(), StoreError> {
            self.inner.delete_user(id).await
        }
        async fn write_registrations(
            &self,
            upserts: &[Registration],
            removals: &[Removal],
        ) -> Result<(), StoreError> {
            self.inner.write_registrations(upserts, removals).await
        }
        async fn list_registrations(
            &self,
            filter: &RegistrationFilter,
            now: DateTime<Utc>,
        ) -> Result<Vec<Registration>, StoreError> {
            self.inner.list_registrations(filter, now).await
        }
        async fn get_config(&self, name: &str) -> Result<Option<ConfigEntry>, StoreError> {
            self.inner.get_config(name).await
        }
        async fn put_config(&self, name: &str, entry: &ConfigEntry) -> Result<(), StoreError> {
            if let Some(n) = self.failing.lock().expect("lock").get_mut(name) {
                *n += 1;
                return Err(StoreError::Backend("injected failure".into()));
            }
            self.inner.put_config(name, entry).await
        }
        async fn list_config(&self) -> Result<Vec<String>, StoreError> {
            self.inner.list_config().await
        }
        async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
            self.inner.append_audit(entry).await
        }
        async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
            self.inner.list_audit(limit).await
        }
        async fn flush(&self) -> Result<(), StoreError> {
            self.inner.flush().await
        }
    }

    #[tokio::test]
    async fn partial_global_write_is_503_and_a_retry_completes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flaky = Arc::new(Flaky {
            inner: EmbeddedStore::open_async(dir.path()).await.expect("store"),
            failing: Mutex::new(HashMap::new()),
        });
        let store: Arc<dyn Store> = flaky.clone();
        let config = LiveConfig::open(store.clone(), "a").await.expect("a");
        LiveConfig::open(store.clone(), "b").await.expect("b");
        let state = ApiState::new(store.clone(), config.clone(), "token");
        let actor = Actor("localhost".into());
        let l = model::find("Data.SipConfig.Use8KHz").expect("leaf");
        let sets = [(l, json!(true))];
        let value = |name: &'static str| {
            let store = store.clone();
            async move {
                let e = store.get_config(name).await.expect("get").expect("entry");
                model::value_of(&e, l)
            }
        };

        flaky.fail("b", true);
        let err = write(&state, &actor, "test", GLOBAL, &sets, &sets, None)
            .await
            .expect_err("partial failure");
        assert_eq!(err.status, 503);
        let detail = err.detail.clone().unwrap_or_default();
        assert!(detail.contains("`b`") && detail.contains("`*`"), "{detail}");
        assert!(!detail.contains("`a`"), "{detail}");
        assert_eq!(flaky.attempts("b"), ATTEMPTS);
        assert_eq!(value("a").await, json!(true));
        assert_eq!(value("b").await, json!(false));
        assert_eq!(value("*").await, json!(false));
        assert!(config.settings().use_8khz, "server a reloaded");

        flaky.fail("b", false);
        write(&state, &actor, "test", GLOBAL, &sets, &sets, None)
            .await
            .expect("the same request again completes the change");
        for name in ["a", "b", "*"] {
            assert_eq!(value(name).await, json!(true), "{name}");
        }
    }

    #[test]
    fn entry_names() {
        for ok in ["*", "a", "srv-01", &"x".repeat(63)] {
            assert!(valid_entry_name(ok), "{ok}");
        }
        for bad in ["", "servers", "paths", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!valid_entry_name(bad), "{bad}");
        }
    }
}
