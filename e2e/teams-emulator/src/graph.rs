//! The Microsoft Graph face: group membership of users from the table given on the command line
//! (`--groups FILE`, `--member OID=GROUP`): `POST /v1.0/users/{id}/checkMemberGroups`
//! (`{"groupIds":[…]}` → the subset the user is in) and `POST /v1.0/users/{id}/getMemberGroups`
//! (`{"securityEnabledOnly":…}` → all of them). Callers need an app token this emulator issued
//! (`token` face), as Graph needs one from Entra; errors have Graph's `{"error":{"code","message"}}`
//! shape.
//!
//! Presence, as Graph serves it to an app with `Presence.ReadWrite.All`:
//! `POST /v1.0/users/{id}/presence/setPresence`
//! (`{"sessionId","availability","activity","expirationDuration"?}` → 200; 400 for a missing
//! `sessionId`, one that is not the calling app's id, a pair Graph refuses — it takes
//! Available/Available, Busy/InACall, Busy/InAConferenceCall, Away/Away,
//! DoNotDisturb/Presenting — or an expiration outside PT5M..PT4H),
//! `POST /v1.0/users/{id}/presence/clearPresence` (`{"sessionId"}` → 200) and
//! `GET /v1.0/users/{id}/presence` (the newest session that has not expired, else Offline); for
//! presence any `{id}` (object id or UPN, case-insensitive) is a user. Users with their numbers:
//! `GET /v1.0/users/{id}` serves the users tests added to the directory (`POST /test/users`,
//! see `token`). Test facility: `POST /test/graph/throttle` `{"count","retry_after"}` answers the next
//! `count` presence requests 429 with that `Retry-After`, as Graph throttles; `POST
//! /test/graph/hold` `{"count"}` holds the next `count` `clearPresence` requests (checked, not
//! yet in effect) until `POST /test/graph/release`, as a slow Graph whose clear lands after
//! requests that came later.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Shared;
use crate::token::now;

/// Most group ids `checkMemberGroups` accepts in one call (Graph's limit).
const MAX_GROUP_IDS: usize = 20;

/// Graph's error answer `{"error":{"code","message"}}`.
struct GraphError(StatusCode, &'static str, String);

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let GraphError(status, code, message) = self;
        (
            status,
            Json(json!({"error": {"code": code, "message": message, "innerError": {}}})),
        )
            .into_response()
    }
}

fn graph_error(status: StatusCode, code: &'static str, message: &str) -> GraphError {
    GraphError(status, code, message.to_owned())
}

/// Checks the caller's app token: signed by this emulator, not expired, an app token; its claims.
fn authorise(s: &Shared, headers: &HeaderMap) -> Result<Value, GraphError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token is empty.",
            )
        })?;
    let invalid = || {
        graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience or signature.",
        )
    };
    let claims = s.signing.verify(token).ok_or_else(invalid)?;
    let expired = claims["exp"].as_i64().is_none_or(|e| e < now());
    if expired {
        return Err(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        ));
    }
    if claims["idtyp"] != "app" || claims["iss"] != json!(s.issuer()) {
        return Err(invalid());
    }
    Ok(claims)
}

/// Graph's 404 for the user `id`.
fn not_found(id: &str) -> GraphError {
    graph_error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

/// The groups of user `id`, or Graph's 404.
fn groups_of<'a>(s: &'a Shared, id: &str) -> Result<&'a [String], GraphError> {
    s.members
        .get(&id.to_ascii_lowercase())
        .map(Vec::as_slice)
        .ok_or_else(|| not_found(id))
}

fn collection(s: &Shared, value: Vec<String>) -> Response {
    Json(json!({
        "@odata.context": format!("{}/v1.0/$metadata#Collection(Edm.String)", s.base),
        "value": value,
    }))
    .into_response()
}

/// `POST /v1.0/users/{id}/checkMemberGroups`.
pub async fn check_member_groups(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    if let Err(r) = authorise(&s, &headers) {
        return r.into_response();
    }
    let bad = || {
        graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "Invalid request: `groupIds` must be an array of 1 to 20 group ids.",
        )
        .into_response()
    };
    let Some(Json(body)) = body else {
        return bad();
    };
    let Some(asked) = body["groupIds"].as_array() else {
        return bad();
    };
    if asked.is_empty() || asked.len() > MAX_GROUP_IDS {
        return bad();
    }
    let groups = match groups_of(&s, &id) {
        Ok(g) => g,
        Err(r) => return r.into_response(),
    };
    let hits = asked
        .iter()
        .filter_map(Value::as_str)
        .filter(|a| groups.iter().any(|g| g.eq_ignore_ascii_case(a)))
        .map(str::to_owned)
        .collect();
    collection(&s, hits)
}

/// `POST /v1.0/users/{id}/getMemberGroups`.
pub async fn get_member_groups(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    if let Err(r) = authorise(&s, &headers) {
        return r.into_response();
    }
    if body.is_none_or(|Json(b)| !b["securityEnabledOnly"].is_boolean()) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "Invalid request: `securityEnabledOnly` (boolean) is required.",
        )
        .into_response();
    }
    match groups_of(&s, &id) {
        Ok(g) => collection(&s, g.to_vec()),
        Err(r) => r.into_response(),
    }
}

/// `GET /v1.0/users/{id}` (object id or UPN): a user of the directory (`POST /test/users`)
/// with their phone numbers, or Graph's 404.
pub async fn get_user(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorise(&s, &headers) {
        return r.into_response();
    }
    match crate::token::find_user(&id) {
        Some(u) => Json(json!({
            "@odata.context": format!("{}/v1.0/$metadata#users/$entity", s.base),
            "id": u.oid,
            "userPrincipalName": u.upn,
            "displayName": u.name,
            "businessPhones": u.phone.into_iter().collect::<Vec<_>>(),
            "mobilePhone": null,
        }))
        .into_response(),
        None => not_found(&id).into_response(),
    }
}

/// The availability/activity pairs `setPresence` accepts.
const PRESENCE_PAIRS: [(&str, &str); 5] = [
    ("Available", "Available"),
    ("Busy", "InACall"),
    ("Busy", "InAConferenceCall"),
    ("Away", "Away"),
    ("DoNotDisturb", "Presenting"),
];
/// `expirationDuration` when none is given, and its bounds (seconds).
const DEFAULT_EXPIRATION: i64 = 300;
const MIN_EXPIRATION: i64 = 300;
const MAX_EXPIRATION: i64 = 4 * 3600;

/// One app's presence session for a user.
#[derive(Clone, Debug)]
struct Session {
    availability: String,
    activity: String,
    /// Seconds since the epoch.
    expires: i64,
    /// Order of setting, to find the newest.
    seq: u64,
}

/// Presence sessions by user id (lower case), then session id.
#[derive(Default)]
struct Sessions {
    users: HashMap<String, HashMap<String, Session>>,
    /// The last `Session::seq` given.
    seq: u64,
}

/// Users' presence sessions, and the throttling a test asked for.
#[derive(Default)]
pub struct PresenceBook {
    sessions: Mutex<Sessions>,
    /// (requests still to answer 429, `Retry-After` seconds).
    throttle: Mutex<(u32, u64)>,
    /// `clearPresence` requests still to hold, and how many are held now.
    hold: Mutex<(u32, u32)>,
    /// Wakes the held `clearPresence` requests.
    release: tokio::sync::Notify,
}

/// Longest a held `clearPresence` waits for `POST /test/graph/release`.
const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(20);

impl PresenceBook {
    fn throttled(&self) -> Option<u64> {
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        if t.0 == 0 {
            return None;
        }
        t.0 -= 1;
        Some(t.1)
    }

    /// Waits, when a test asked to hold this `clearPresence`, until it is released (at most
    /// [`MAX_HOLD`]): a slow Graph, whose clear lands after requests that came later.
    async fn held(&self) {
        let released = self.release.notified();
        tokio::pin!(released);
        // Registered as a waiter before it counts as held, so a release never misses it.
        released.as_mut().enable();
        {
            let mut h = self.hold.lock().unwrap_or_else(|p| p.into_inner());
            if h.0 == 0 {
                return;
            }
            h.0 -= 1;
            h.1 += 1;
        }
        let _ = tokio::time::timeout(MAX_HOLD, released).await;
        let mut h = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        h.1 -= 1;
    }
}

/// An ISO 8601 duration of hours, minutes and seconds (`PT5M`, `PT1H30M`, `PT90S`), in seconds.
fn iso_seconds(d: &str) -> Option<i64> {
    let mut rest = d.strip_prefix("PT")?;
    if rest.is_empty() {
        return None;
    }
    let mut total = 0i64;
    while !rest.is_empty() {
        let n_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: i64 = rest.get(..n_len)?.parse().ok()?;
        let unit = rest.as_bytes().get(n_len)?;
        total = total.checked_add(n.checked_mul(match unit {
            b'H' => 3600,
            b'M' => 60,
            b'S' => 1,
            _ => return None,
        })?)?;
        rest = &rest[n_len + 1..];
    }
    Some(total)
}

fn bad_request(message: &str) -> GraphError {
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// Why a presence request is refused: a Graph error, or throttling (`Retry-After` seconds).
enum Refusal {
    Graph(GraphError),
    Throttled(u64),
}

impl From<GraphError> for Refusal {
    fn from(e: GraphError) -> Self {
        Refusal::Graph(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Graph(e) => e.into_response(),
            Refusal::Throttled(after) => {
                let mut r = graph_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "Too many requests.",
                )
                .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(after));
                r
            }
        }
    }
}

/// The checks every presence request shares: the app token with `Presence.ReadWrite.All`, and
/// the throttling a test asked for. The caller's app id.
fn presence_caller(s: &Shared, headers: &HeaderMap) -> Result<String, Refusal> {
    let claims = authorise(s, headers)?;
    let allowed = claims["roles"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r == "Presence.ReadWrite.All"));
    if !allowed {
        return Err(graph_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Insufficient privileges to complete the operation.",
        )
        .into());
    }
    if let Some(after) = s.presence.throttled() {
        return Err(Refusal::Throttled(after));
    }
    Ok(claims["appid"].as_str().unwrap_or_default().to_owned())
}

/// The body's `sessionId`, which must be the calling app's id.
fn session_id(body: &Value, app: &str) -> Result<String, GraphError> {
    match body["sessionId"].as_str() {
        None | Some("") => Err(bad_request("Required property 'sessionId' is missing.")),
        Some(id) if !id.eq_ignore_ascii_case(app) => Err(bad_request(
            "The sessionId must be the application id of the caller.",
        )),
        Some(id) => Ok(id.to_ascii_lowercase()),
    }
}

/// What both presence requests check first: the caller ([`presence_caller`]) and the body's
/// `sessionId` ([`session_id`]); the body and the session id.
fn presence_request(
    s: &Shared,
    headers: &HeaderMap,
    body: Option<Json<Value>>,
) -> Result<(Value, String), Refusal> {
    let app = presence_caller(s, headers)?;
    let body = body.map(|Json(b)| b).unwrap_or(Value::Null);
    let session = session_id(&body, &app)?;
    Ok((body, session))
}

/// `POST /v1.0/users/{id}/presence/setPresence`.
pub async fn set_presence(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let (body, session) = match presence_request(&s, &headers, body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let (Some(availability), Some(activity)) =
        (body["availability"].as_str(), body["activity"].as_str())
    else {
        return bad_request("Required properties 'availability' and 'activity' are missing.")
            .into_response();
    };
    if !PRESENCE_PAIRS.contains(&(availability, activity)) {
        return bad_request(&format!(
            "The availability '{availability}' and activity '{activity}' are not a supported combination."
        ))
        .into_response();
    }
    let secs = match &body["expirationDuration"] {
        Value::Null => DEFAULT_EXPIRATION,
        Value::String(d) => match iso_seconds(d) {
            Some(n) if (MIN_EXPIRATION..=MAX_EXPIRATION).contains(&n) => n,
            _ => {
                return bad_request(
                    "The expirationDuration must be an ISO 8601 duration from PT5M to PT4H.",
                )
                .into_response();
            }
        },
        _ => return bad_request("The expirationDuration must be a string.").into_response(),
    };
    let mut book = s
        .presence
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    book.seq += 1;
    let seq = book.seq;
    book.users
        .entry(id.to_ascii_lowercase())
        .or_default()
        .insert(
            session,
            Session {
                availability: availability.to_owned(),
                activity: activity.to_owned(),
                expires: now() + secs,
                seq,
            },
        );
    StatusCode::OK.into_response()
}

/// `POST /v1.0/users/{id}/presence/clearPresence`.
pub async fn clear_presence(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let (_, session) = match presence_request(&s, &headers, body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    s.presence.held().await;
    let mut book = s
        .presence
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(user) = book.users.get_mut(&id.to_ascii_lowercase()) {
        user.remove(&session);
    }
    StatusCode::OK.into_response()
}

/// `GET /v1.0/users/{id}/presence`.
pub async fn get_presence(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorise(&s, &headers) {
        return r.into_response();
    }
    let now = now();
    let book = s
        .presence
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let newest = book
        .users
        .get(&id.to_ascii_lowercase())
        .into_iter()
        .flat_map(HashMap::values)
        .filter(|s| s.expires > now)
        .max_by_key(|s| s.seq);
    let (availability, activity) = newest.map_or(("Offline", "Offline"), |s| {
        (s.availability.as_str(), s.activity.as_str())
    });
    Json(json!({
        "@odata.context": format!("{}/v1.0/$metadata#users('{id}')/presence/$entity", s.base),
        "id": id,
        "availability": availability,
        "activity": activity,
        "statusMessage": null,
    }))
    .into_response()
}

/// `POST /test/graph/throttle` `{"count","retry_after"}`.
pub async fn throttle(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    let count = body["count"].as_u64().and_then(|c| u32::try_from(c).ok());
    let after = body["retry_after"].as_u64();
    let (Some(count), Some(after)) = (count, after) else {
        return (
            StatusCode::BAD_REQUEST,
            "`count` and `retry_after` (numbers) are required",
        )
            .into_response();
    };
    *s.presence
        .throttle
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = (count, after);
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /test/graph/hold` `{"count"}`: the next `count` `clearPresence` requests wait, once
/// checked, until `POST /test/graph/release` (or 20 s) before they take effect.
pub async fn hold(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    let Some(count) = body["count"].as_u64().and_then(|c| u32::try_from(c).ok()) else {
        return (StatusCode::BAD_REQUEST, "`count` (a number) is required").into_response();
    };
    s.presence.hold.lock().unwrap_or_else(|p| p.into_inner()).0 = count;
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /test/graph/release`: lets the held `clearPresence` requests take effect;
/// `{"released"}` says how many were held.
pub async fn release(State(s): State<Shared>) -> Response {
    let held = s.presence.hold.lock().unwrap_or_else(|p| p.into_inner()).1;
    s.presence.release.notify_waiters();
    Json(json!({ "released": held })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_durations() {
        assert_eq!(iso_seconds("PT5M"), Some(300));
        assert_eq!(iso_seconds("PT1H30M"), Some(5400));
        assert_eq!(iso_seconds("PT90S"), Some(90));
        assert_eq!(iso_seconds("PT"), None);
        assert_eq!(iso_seconds("P1D"), None);
        assert_eq!(iso_seconds("PT5"), None);
        assert_eq!(iso_seconds("PTxM"), None);
    }
}
