//! `/api/users`: SIP accounts. Passwords become HA1s (MD5 and SHA-256, realm = the user's domain)
//! on the way in and are never stored; neither passwords nor HA1s are ever returned.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use csps_sip::digest::{Algorithm, ha1};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::ApiState;
use super::config::{Actor, audit};
use super::openapi::{Conflict, NotFound, Unprocessable, UnsupportedMediaType};
use super::problem::{FieldError, JsonBody, PathParam, Problem, from_value, parse_json};
use crate::store::{Ha1, HashAlgorithm, NewUser, TeamsIdentity, User, UserPatch};

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;
/// Longest password accepted.
pub const MAX_PASSWORD: usize = 256;
/// Longest username accepted.
pub const MAX_USERNAME: usize = 128;

/// A user as the API shows it: everything but secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "username": "alice",
    "domain": "csps.local", "display_name": "Alice", "upn": "alice@contoso.com",
    "phone_number": "+14255550100", "enabled": true, "activated": true, "created_at": "2026-11-26T09:00:00Z",
    "teams": {"tenant": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "oid": "0b4f7d8e-1234-4abc-9def-00112233aabb", "upn": "alice@contoso.com",
        "phone_number": "+14255550100", "activated_at": "2026-11-26T09:05:00Z"},
    "token_refreshed_at": "2026-11-27T03:12:00Z", "needs_reactivation": false,
    "reactivation_reason": null}))]
pub struct UserView {
    /// Opaque id.
    pub id: Uuid,
    /// SIP username.
    pub username: String,
    /// SIP domain (and digest realm).
    pub domain: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Teams UPN.
    pub upn: Option<String>,
    /// E.164 number.
    pub phone_number: Option<String>,
    /// Whether the account may register.
    pub enabled: bool,
    /// Whether the account is activated for Teams (calls to and from the trunk need it).
    #[serde(default)]
    pub activated: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The Teams identity the user's activation bound (`null` before one): tenant, object id,
    /// UPN, the number Graph reported, when.
    #[serde(default)]
    pub teams: Option<TeamsIdentity>,
    /// When the user's refresh token was obtained or last refreshed (the token itself is never
    /// shown); `null` without one.
    #[serde(default)]
    pub token_refreshed_at: Option<DateTime<Utc>>,
    /// The identity provider refused the refresh token: the user must activate again.
    #[serde(default)]
    pub needs_reactivation: bool,
    /// Why (the identity provider's answer), while `needs_reactivation`.
    #[serde(default)]
    pub reactivation_reason: Option<String>,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id,
            username: u.username.clone(),
            domain: u.domain.clone(),
            display_name: u.display_name.clone(),
            upn: u.upn.clone(),
            phone_number: u.phone_number.clone(),
            enabled: u.enabled,
            activated: u.activated,
            created_at: u.created_at,
            teams: u.teams.identity.clone(),
            token_refreshed_at: u.teams.refreshed_at,
            needs_reactivation: u.teams.needs_reactivation.is_some(),
            reactivation_reason: u.teams.needs_reactivation.clone(),
        }
    }
}

/// The HA1s of an account: MD5 and SHA-256 for realm = domain.
pub fn ha1s(username: &str, domain: &str, password: &str) -> Vec<Ha1> {
    [
        (Algorithm::Md5, HashAlgorithm::Md5),
        (Algorithm::Sha256, HashAlgorithm::Sha256),
    ]
    .into_iter()
    .map(|(alg, algorithm)| Ha1 {
        realm: domain.to_owned(),
        algorithm,
        hash: ha1(alg, username, domain, password),
    })
    .collect()
}

/// Characters a SIP user part may hold unescaped (RFC 3261 §25.1 `user`).
fn user_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c)
}

/// Checks a username; `%HH` escapes are allowed.
pub fn check_username(u: &str) -> Result<(), String> {
    if u.is_empty() {
        return Err("must not be empty".into());
    }
    if u.len() > MAX_USERNAME {
        return Err(format!("must be at most {MAX_USERNAME} characters"));
    }
    let b = u.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = char::from(b[i]);
        if c == '%' {
            let ok = b
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !ok {
                return Err("`%` must start an escape such as %20".into());
            }
            i += 3;
            continue;
        }
        if !b[i].is_ascii() || !user_char(c) {
            return Err(format!(
                "`{}` is not allowed in a SIP user part (letters, digits and -_.!~*'()&=+$,;?/ are)",
                u[i..].chars().next().unwrap_or(c)
            ));
        }
        i += 1;
    }
    Ok(())
}

/// Checks a SIP domain: a host name or an IP address literal.
pub fn check_domain(d: &str) -> Result<(), String> {
    if d.is_empty() {
        return Err("must not be empty".into());
    }
    if d.len() > 253 {
        return Err("must be at most 253 characters".into());
    }
    if d.parse::<std::net::IpAddr>().is_ok()
        || d.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok())
    {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if d.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("`{d}` is not a valid host name"))
    }
}

/// Checks a password's length.
pub fn check_password(p: &str) -> Result<(), String> {
    let n = p.chars().count();
    if n < MIN_PASSWORD {
        Err(format!("must be at least {MIN_PASSWORD} characters"))
    } else if n > MAX_PASSWORD {
        Err(format!("must be at most {MAX_PASSWORD} characters"))
    } else {
        Ok(())
    }
}

/// Checks an E.164 number: `+`, then 2 to 15 digits, not starting with 0.
pub fn check_e164(n: &str) -> Result<(), String> {
    let digits = n.strip_prefix('+').unwrap_or("");
    let ok = (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err("must be an E.164 number such as +14255550100".into())
    }
}

/// Checks a Teams UPN (`name@tenant`).
fn check_upn(u: &str) -> Result<(), String> {
    let ok = u.len() <= 256
        && u.split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('@'))
        && !u.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err("must be a user principal name such as alice@contoso.com".into())
    }
}

/// Checks a display name.
fn check_display_name(d: &str) -> Result<(), String> {
    if d.chars().count() > 256 {
        Err("must be at most 256 characters".into())
    } else if d.chars().any(char::is_control) {
        Err("must not contain control characters".into())
    } else {
        Ok(())
    }
}

/// Runs `check` on `value` and records a failure at `path`.
fn check(
    errors: &mut Vec<FieldError>,
    path: &str,
    value: &str,
    check: fn(&str) -> Result<(), String>,
) {
    if let Err(m) = check(value) {
        errors.push(FieldError::new(path, m));
    }
}

/// Runs the checks of the optional fields.
fn check_optional(
    errors: &mut Vec<FieldError>,
    display_name: Option<&str>,
    upn: Option<&str>,
    phone_number: Option<&str>,
) {
    if let Some(d) = display_name {
        check(errors, "display_name", d, check_display_name);
    }
    if let Some(u) = upn {
        check(errors, "upn", u, check_upn);
    }
    if let Some(n) = phone_number {
        check(errors, "phone_number", n, check_e164);
    }
}

/// The `{id}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct UserId {
    /// The user's id (a UUID; anything else is not found).
    #[param(example = "7c9e6679-7425-40de-944b-e07fc1f90ae7")]
    id: Uuid,
}

/// Parses a user id from the path; a malformed id is simply not found.
fn user_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::not_found(format!("no user with id `{raw}`")))
}

/// `GET /api/users`.
#[utoipa::path(get, path = "/api/users", tag = "users",
    responses((status = 200, description = "Every user", body = [UserView])))]
pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<UserView>>, Problem> {
    let users = state.store.list_users().await?;
    Ok(Json(users.iter().map(UserView::from).collect()))
}

/// `POST /api/users` → 201 with the user.
#[utoipa::path(post, path = "/api/users", tag = "users", request_body = NewUser,
    responses(
        (status = 201, description = "Created; never the password or HA1s", body = UserView),
        (status = 409, response = Conflict),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ))]
pub async fn create(
    State(state): State<ApiState>,
    actor: Actor,
    JsonBody(body): JsonBody<NewUser>,
) -> Result<Response, Problem> {
    let username = body.username.trim().to_owned();
    let domain = match body.domain.as_deref().map(str::trim) {
        Some(d) => d.to_owned(),
        None => state.config.settings().default_sip_domain.clone(),
    };
    let mut errors = Vec::new();
    check(&mut errors, "username", &username, check_username);
    check(&mut errors, "domain", &domain, check_domain);
    check(&mut errors, "password", &body.password, check_password);
    check_optional(
        &mut errors,
        body.display_name.as_deref(),
        body.upn.as_deref(),
        body.phone_number.as_deref(),
    );
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let user = User {
        id: Uuid::new_v4(),
        ha1: ha1s(&username, &domain, &body.password),
        username,
        domain,
        display_name: body.display_name,
        upn: body.upn,
        phone_number: body.phone_number,
        enabled: true,
        activated: false,
        created_at: Utc::now(),
        teams: Default::default(),
    };
    let user = state.store.create_user(user).await?;
    state.note_users_changed();
    let view = UserView::from(&user);
    audit(
        &state,
        &actor,
        "user.create",
        &format!("user/{}", user.id),
        None,
        Some(audit_view(&view, true)),
    )
    .await;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /api/users/{id}`.
#[utoipa::path(get, path = "/api/users/{id}", tag = "users", params(UserId),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 404, response = NotFound),
    ))]
pub async fn get(
    State(state): State<ApiState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<UserView>, Problem> {
    let id = user_id(&id)?;
    match state.store.get_user(id).await? {
        Some(u) => Ok(Json(UserView::from(&u))),
        None => Err(Problem::not_found(format!("no user with id `{id}`"))),
    }
}

/// `PATCH /api/users/{id}` (JSON merge patch). Changing the username or domain needs the
/// password too, because the HA1s cover both.
#[utoipa::path(patch, path = "/api/users/{id}", tag = "users", params(UserId),
    request_body(content = UserPatch, content_type = "application/merge-patch+json",
        description = "JSON merge patch (`application/json` is accepted too)"),
    responses(
        (status = 200, description = "The changed user", body = UserView),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ))]
pub async fn patch(
    State(state): State<ApiState>,
    actor: Actor,
    PathParam(id): PathParam<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<UserView>, Problem> {
    let id = user_id(&id)?;
    let JsonBody(value) = json_body(&headers, &body)?;
    let Value::Object(map) = &value else {
        return Err(Problem::invalid("", "a merge patch must be a JSON object"));
    };
    let mut errors = Vec::new();
    for key in ["username", "domain", "password", "enabled", "activated"] {
        if map.get(key).is_some_and(Value::is_null) {
            errors.push(FieldError::new(key, "cannot be cleared"));
        }
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let p: UserPatch = from_value(value)?;
    let Some(mut user) = state.store.get_user(id).await? else {
        return Err(Problem::not_found(format!("no user with id `{id}`")));
    };
    let username = p.username.as_deref().map(str::trim);
    let domain = p.domain.as_deref().map(str::trim);
    if let Some(u) = username {
        check(&mut errors, "username", u, check_username);
    }
    if let Some(d) = domain {
        check(&mut errors, "domain", d, check_domain);
    }
    if let Some(pw) = &p.password {
        check(&mut errors, "password", pw, check_password);
    }
    let renamed =
        username.is_some_and(|u| u != user.username) || domain.is_some_and(|d| d != user.domain);
    if renamed && p.password.is_none() {
        errors.push(FieldError::new(
            "password",
            "a new username or domain needs the password too (the digest hashes cover them)",
        ));
    }
    check_optional(
        &mut errors,
        p.display_name.as_ref().and_then(Option::as_deref),
        p.upn.as_ref().and_then(Option::as_deref),
        p.phone_number.as_ref().and_then(Option::as_deref),
    );
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let before = UserView::from(&user);
    if let Some(u) = username {
        user.username = u.to_owned();
    }
    if let Some(d) = domain {
        user.domain = d.to_owned();
    }
    if let Some(pw) = &p.password {
        user.ha1 = ha1s(&user.username, &user.domain, pw);
    }
    if let Some(v) = p.display_name {
        user.display_name = v;
    }
    if let Some(v) = p.upn {
        user.upn = v;
    }
    if let Some(v) = p.phone_number {
        user.phone_number = v;
    }
    if let Some(v) = p.enabled {
        user.enabled = v;
    }
    if let Some(v) = p.activated {
        user.activated = v;
        if !v {
            // Deactivated: the binding and the user's refresh token go too.
            user.teams = Default::default();
        }
    }
    let user = state.store.update_user(user).await?;
    state.note_users_changed();
    let view = UserView::from(&user);
    audit(
        &state,
        &actor,
        "user.patch",
        &format!("user/{}", user.id),
        Some(audit_view(&before, false)),
        Some(audit_view(&view, p.password.is_some())),
    )
    .await;
    Ok(Json(view))
}

/// A user as the audit log keeps it: the view, plus `"password":"***"` when one was set.
fn audit_view(view: &UserView, password_set: bool) -> Value {
    let mut v = serde_json::to_value(view).unwrap_or(Value::Null);
    if password_set && let Some(o) = v.as_object_mut() {
        o.insert("password".to_owned(), Value::from("***"));
    }
    v
}

/// Checks the content type and parses a body into a JSON value.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<JsonBody<Value>, Problem> {
    if !super::problem::is_json(headers) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as `Content-Type: application/merge-patch+json` or `application/json`",
        ));
    }
    parse_json(body).map(JsonBody)
}

/// `DELETE /api/users/{id}` → 204.
#[utoipa::path(delete, path = "/api/users/{id}", tag = "users", params(UserId),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, response = NotFound),
    ))]
pub async fn delete(
    State(state): State<ApiState>,
    actor: Actor,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, Problem> {
    let id = user_id(&id)?;
    let before = state.store.get_user(id).await?;
    match state.store.delete_user(id).await {
        Ok(()) => {
            state.note_users_changed();
            let old = before.map(|u| audit_view(&UserView::from(&u), false));
            audit(
                &state,
                &actor,
                "user.delete",
                &format!("user/{id}"),
                old,
                None,
            )
            .await;
            Ok(StatusCode::NO_CONTENT)
        }
        Err(crate::store::StoreError::NotFound) => {
            Err(Problem::not_found(format!("no user with id `{id}`")))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["alice", "a.b-c_d", "+4930123", "a%20b", "x!~*'()&=+$,;?/"] {
            assert_eq!(check_username(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "a@b", "a:b", "<a>", "a%2", "a%zz", "ä", "a\"b"] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn e164() {
        assert!(check_e164("+14255550100").is_ok());
        for bad in [
            "14255550100",
            "+0123",
            "+1",
            "+1234567890123456",
            "+1 425",
            "",
        ] {
            assert!(check_e164(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains() {
        for ok in [
            "example.com",
            "sip-1.example.com",
            "10.0.0.1",
            "[::1]",
            "localhost",
        ] {
            assert_eq!(check_domain(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a..b", "-a.com", "a_b.com", "a b", "x@y"] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }
}
