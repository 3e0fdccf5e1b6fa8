//! The Entra ID face: the OpenID discovery document
//! (`GET /{tenant}/v2.0/.well-known/openid-configuration`), the JWKS
//! (`GET /{tenant}/discovery/v2.0/keys`) and the token endpoint for an app's client credentials
//! (`POST /{tenant}/oauth2/v2.0/token`), shaped as Entra answers them (issuer
//! `{base}/{tenant}/v2.0`, `AADSTS…` error descriptions). Also the test facility
//! `POST /test/mint`, which signs user tokens for tests (never part of Microsoft's API).
//!
//! Users' sign-in, as Entra serves a web app's authorization-code flow: `GET /{tenant}/oauth2/
//! v2.0/authorize` signs a test user in without a page (the `login_hint`, else the user of
//! `POST /test/signin-as`) and redirects to the app's `redirect_uri` with a one-time code (or
//! with `error=access_denied` when that user refuses consent); the token endpoint's
//! `authorization_code` grant (PKCE S256 checked, a code redeemed once: again is AADSTS54005)
//! and `refresh_token` grant (a new refresh token every time; earlier ones stay valid, as in
//! Entra, until they expire or are revoked) issue Entra-shaped ID tokens (`tid`, `oid`, `upn`,
//! `nonce`). Test facilities: `POST /test/users` `{"upn","oid"?,"phone"?,"name"?}` adds a user
//! to the directory (Graph's `GET /v1.0/users/{id}` serves it), `POST /test/signin-as`
//! `{"upn","consent"?}`, `POST /test/revoke` `{"upn"}` (that user's refresh tokens are then
//! refused with AADSTS50173), `POST /test/token-lifetime` `{"refresh_secs"}` (refresh tokens
//! issued later expire after that: AADSTS700082), `POST /test/tamper-id-token`
//! `{"how":"forged"|"nonce"|"audience"}` (the next ID token is spoilt so). This directory is process-wide: one emulator
//! per process.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{Uri, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SecureRandom;

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Shared;

/// Lifetime of issued app tokens, in seconds (Entra: about an hour).
const APP_TOKEN_SECS: i64 = 3599;

/// The object id of the app's service principal in issued app tokens.
const APP_OBJECT_ID: &str = "00000000-0000-0000-0000-0000000000a1";

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Entra's error answer (`{"error","error_description",…}`).
fn aad_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({
            "error": error,
            "error_description": description,
            "error_codes": [aadsts_code(description)],
            "timestamp": "",
            "trace_id": "00000000-0000-0000-0000-000000000000",
        })),
    )
        .into_response()
}

/// The number of an `AADSTS<n>: …` description.
fn aadsts_code(description: &str) -> u32 {
    description
        .strip_prefix("AADSTS")
        .and_then(|r| r.split(':').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn unknown_tenant(tenant: &str) -> Response {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_tenant",
        &format!("AADSTS90002: Tenant '{tenant}' not found."),
    )
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub async fn discovery(State(s): State<Shared>, Path(tenant): Path<String>) -> Response {
    if !s.knows_tenant(&tenant) {
        return unknown_tenant(&tenant);
    }
    let t = &s.tenant;
    let b = &s.base;
    Json(json!({
        "issuer": s.issuer(),
        "authorization_endpoint": format!("{b}/{t}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{b}/{t}/oauth2/v2.0/token"),
        "jwks_uri": format!("{b}/{t}/discovery/v2.0/keys"),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "tenant_region_scope": "EU",
    }))
    .into_response()
}

/// `GET /{tenant}/discovery/v2.0/keys`.
pub async fn jwks(State(s): State<Shared>, Path(tenant): Path<String>) -> Response {
    if !s.knows_tenant(&tenant) {
        return unknown_tenant(&tenant);
    }
    Json(json!({ "keys": [s.signing.jwk()] })).into_response()
}

/// Entra's refusal of an unknown app or a wrong client secret; `None` for a good client.
fn refuse_client(s: &Shared, client_id: &str, secret: &str) -> Option<Response> {
    match s.clients.get(client_id) {
        None => Some(aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
            ),
        )),
        Some(known) if known != secret => Some(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        )),
        Some(_) => None,
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`: client credentials, and users' `authorization_code` and
/// `refresh_token` grants.
pub async fn token(
    State(s): State<Shared>,
    Path(tenant): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    if !s.knows_tenant(&tenant) {
        return unknown_tenant(&tenant);
    }
    let Ok(Form(form)) = form else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
        );
    };
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    match get("grant_type") {
        "authorization_code" | "refresh_token" => return user_grant(&s, &form),
        _ => {}
    }
    if get("grant_type") != "client_credentials" {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    let client_id = get("client_id");
    if let Some(refused) = refuse_client(&s, client_id, get("client_secret")) {
        return refused;
    }
    let Some(resource) = get("scope").strip_suffix("/.default") else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
        );
    };
    let now = now();
    let claims = json!({
        "aud": resource,
        "iss": s.issuer(),
        "iat": now,
        "nbf": now,
        "exp": now + APP_TOKEN_SECS,
        "appid": client_id,
        "azp": client_id,
        "idtyp": "app",
        "oid": APP_OBJECT_ID,
        "roles": ["GroupMember.Read.All", "Presence.ReadWrite.All"],
        "tid": s.tenant,
        "ver": "2.0",
    });
    match s.signing.sign(&claims) {
        Ok(t) => Json(json!({
            "token_type": "Bearer",
            "expires_in": APP_TOKEN_SECS,
            "ext_expires_in": APP_TOKEN_SECS,
            "access_token": t,
        }))
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// `POST /test/mint` `{"claims":{…},"key":"signing"|"rogue"}` → `{"token"}`: a user token for
/// tests. Missing `iss`, `tid`, `ver`, `iat`, `nbf` and `exp` are filled in (an hour of
/// lifetime; with a given `exp`, `iat`/`nbf` are an hour before it). `"key":"rogue"` signs with
/// the `--rogue-key` under the real key's `kid`: a forged token.
pub async fn mint(State(s): State<Shared>, Json(req): Json<Value>) -> Response {
    let mut claims = match req.get("claims") {
        Some(Value::Object(c)) => c.clone(),
        None => Default::default(),
        Some(_) => return (StatusCode::BAD_REQUEST, "`claims` must be an object").into_response(),
    };
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .unwrap_or(now() + 3600);
    for (k, v) in [
        ("iss", json!(s.issuer())),
        ("tid", json!(s.tenant)),
        ("ver", json!("2.0")),
        ("iat", json!(exp - 3600)),
        ("nbf", json!(exp - 3600)),
        ("exp", json!(exp)),
    ] {
        claims.entry(k).or_insert(v);
    }
    let key = match req.get("key").and_then(Value::as_str) {
        None | Some("signing") => &s.signing,
        Some("rogue") => match &s.rogue {
            Some(r) => r,
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    "start with --rogue-key to mint forged tokens",
                )
                    .into_response();
            }
        },
        Some(other) => {
            return (StatusCode::BAD_REQUEST, format!("unknown key `{other}`")).into_response();
        }
    };
    match key.sign(&Value::Object(claims)) {
        Ok(t) => Json(json!({ "token": t })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// Lifetime of issued ID and user access tokens, in seconds.
const USER_TOKEN_SECS: i64 = 3600;
/// Lifetime of an authorization code, in seconds (Entra: 10 minutes).
const CODE_SECS: i64 = 600;
/// Refresh token lifetime by default (Entra: 90 days of inactivity).
const REFRESH_SECS: i64 = 90 * 24 * 3600;

/// A user of the emulated directory.
#[derive(Clone, Debug)]
pub struct DirUser {
    /// User principal name.
    pub upn: String,
    /// Object id.
    pub oid: String,
    /// Business phone (E.164), when they have one.
    pub phone: Option<String>,
    /// Display name.
    pub name: String,
}

/// An issued authorization code.
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    upn: String,
    scope: String,
    expires: i64,
    redeemed: bool,
}

/// An issued refresh token.
struct Refresh {
    client_id: String,
    upn: String,
    scope: String,
    issued: i64,
    expires: i64,
}

/// The directory and the sign-in state.
#[derive(Default)]
struct Directory {
    /// By lower-case UPN.
    users: HashMap<String, DirUser>,
    /// The user `authorize` signs in without a `login_hint`, and whether they consent.
    signed_in: Option<(String, bool)>,
    codes: HashMap<String, Code>,
    refresh: HashMap<String, Refresh>,
    /// Lower-case UPNs whose refresh tokens were revoked.
    revoked: std::collections::HashSet<String>,
    /// Lifetime of refresh tokens issued from now on (`None`: [`REFRESH_SECS`]).
    refresh_secs: Option<i64>,
    /// How to spoil the next ID token (`forged`, `nonce`, `audience`), once.
    tamper: Option<String>,
}

static DIRECTORY: LazyLock<Mutex<Directory>> = LazyLock::new(Default::default);

fn directory() -> std::sync::MutexGuard<'static, Directory> {
    DIRECTORY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The directory's user whose object id or UPN is `id` (case-insensitive).
pub fn find_user(id: &str) -> Option<DirUser> {
    let d = directory();
    d.users
        .get(&id.to_lowercase())
        .or_else(|| d.users.values().find(|u| u.oid.eq_ignore_ascii_case(id)))
        .cloned()
}

/// 32 random bytes, base64url.
fn random() -> String {
    let mut b = [0u8; 32];
    // A failing system RNG leaves zeros: acceptable for a test emulator on loopback.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    B64.encode(b)
}

/// An object id made from a UPN (stable, GUID-shaped).
fn oid_for(upn: &str) -> String {
    let h = ring::digest::digest(&ring::digest::SHA256, upn.to_lowercase().as_bytes());
    let x: String = h.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// `POST /test/users` `{"upn","oid"?,"phone"?,"name"?}` → 201 `{"upn","oid"}`.
pub async fn add_user(Json(body): Json<Value>) -> Response {
    let Some(upn) = body["upn"].as_str().filter(|u| u.contains('@')) else {
        return (StatusCode::BAD_REQUEST, "`upn` (name@domain) is required").into_response();
    };
    let user = DirUser {
        upn: upn.to_owned(),
        oid: body["oid"]
            .as_str()
            .map_or_else(|| oid_for(upn), str::to_owned),
        phone: body["phone"].as_str().map(str::to_owned),
        name: body["name"].as_str().unwrap_or(upn).to_owned(),
    };
    let answer = json!({"upn": user.upn, "oid": user.oid});
    directory().users.insert(upn.to_lowercase(), user);
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// `POST /test/signin-as` `{"upn","consent"?}`: who `authorize` signs in without a hint.
pub async fn signin_as(Json(body): Json<Value>) -> Response {
    let Some(upn) = body["upn"].as_str() else {
        return (StatusCode::BAD_REQUEST, "`upn` is required").into_response();
    };
    let consent = body["consent"].as_bool().unwrap_or(true);
    directory().signed_in = Some((upn.to_lowercase(), consent));
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /test/revoke` `{"upn"}`: that user's refresh tokens are refused from now on.
pub async fn revoke(Json(body): Json<Value>) -> Response {
    let Some(upn) = body["upn"].as_str() else {
        return (StatusCode::BAD_REQUEST, "`upn` is required").into_response();
    };
    directory().revoked.insert(upn.to_lowercase());
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /test/token-lifetime` `{"refresh_secs"}`: lifetime of refresh tokens issued later.
pub async fn token_lifetime(Json(body): Json<Value>) -> Response {
    let Some(secs) = body["refresh_secs"].as_i64().filter(|s| *s > 0) else {
        return (StatusCode::BAD_REQUEST, "`refresh_secs` (> 0) is required").into_response();
    };
    directory().refresh_secs = Some(secs);
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /test/tamper-id-token` `{"how":"forged"|"nonce"|"audience"}`: the next ID token is
/// signed with the rogue key, carries another nonce, or names another audience.
pub async fn tamper_id_token(Json(body): Json<Value>) -> Response {
    match body["how"].as_str() {
        Some(h @ ("forged" | "nonce" | "audience")) => {
            directory().tamper = Some(h.to_owned());
            StatusCode::NO_CONTENT.into_response()
        }
        _ => (StatusCode::BAD_REQUEST, "`how`: forged, nonce or audience").into_response(),
    }
}

/// A redirect to `redirect_uri` with `params` added to its query.
fn back_to(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let query = serde_urlencoded::to_string(params).unwrap_or_default();
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let to = format!("{redirect_uri}{sep}{query}");
    match header::HeaderValue::try_from(to) {
        Ok(v) => (StatusCode::FOUND, [(header::LOCATION, v)]).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response(),
    }
}

/// `GET /{tenant}/oauth2/v2.0/authorize`: signs the test user in, no page.
pub async fn authorize(State(s): State<Shared>, Path(tenant): Path<String>, uri: Uri) -> Response {
    if !s.knows_tenant(&tenant) {
        return unknown_tenant(&tenant);
    }
    let q: HashMap<String, String> =
        serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let client_id = get("client_id");
    if !s.clients.contains_key(client_id) {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
            ),
        );
    }
    let redirect_uri = get("redirect_uri");
    if !(redirect_uri.starts_with("http://") || redirect_uri.starts_with("https://")) {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS50011: The redirect URI specified in the request does not match the redirect URIs configured for the application.",
        );
    }
    let state = get("state");
    let fail = |error: &str, description: &str| {
        back_to(
            redirect_uri,
            &[
                ("error", error),
                ("error_description", description),
                ("state", state),
            ],
        )
    };
    if get("response_type") != "code" {
        return fail(
            "unsupported_response_type",
            "AADSTS700054: response_type 'id_token' is not enabled for the application.",
        );
    }
    if get("code_challenge_method") != "S256" || get("code_challenge").len() != 43 {
        return fail(
            "invalid_request",
            "AADSTS501491: Invalid size of Code_Challenge parameter.",
        );
    }
    let mut d = directory();
    let (upn, consent) = match q.get("login_hint") {
        Some(h) => (h.to_lowercase(), true),
        None => match &d.signed_in {
            Some(who) => who.clone(),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    "no test user signed in (login_hint or POST /test/signin-as)",
                )
                    .into_response();
            }
        },
    };
    if !d.users.contains_key(&upn) {
        drop(d);
        return fail(
            "invalid_request",
            &format!("AADSTS50034: The user account {upn} does not exist in the directory."),
        );
    }
    if !consent {
        drop(d);
        return fail(
            "access_denied",
            "AADSTS65004: User declined to consent to access the app.",
        );
    }
    let code = random();
    d.codes.insert(
        code.clone(),
        Code {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            challenge: get("code_challenge").to_owned(),
            nonce: q.get("nonce").cloned(),
            upn,
            scope: get("scope").to_owned(),
            expires: now() + CODE_SECS,
            redeemed: false,
        },
    );
    drop(d);
    back_to(
        redirect_uri,
        &[
            ("code", code.as_str()),
            ("state", state),
            ("session_state", "00000000-0000-0000-0000-000000000000"),
        ],
    )
}

fn invalid_grant(description: &str) -> Response {
    aad_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

/// The `authorization_code` and `refresh_token` grants of a user.
fn user_grant(s: &Shared, form: &HashMap<String, String>) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let client_id = get("client_id");
    if let Some(refused) = refuse_client(s, client_id, get("client_secret")) {
        return refused;
    }
    let now = now();
    let mut d = directory();
    let (upn, scope, nonce) = if get("grant_type") == "authorization_code" {
        let Some(code) = d.codes.get_mut(get("code")) else {
            return invalid_grant(
                "AADSTS70000: The provided value for the 'code' parameter is not valid.",
            );
        };
        if code.redeemed {
            return invalid_grant(
                "AADSTS54005: OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            );
        }
        if code.expires < now {
            return invalid_grant(
                "AADSTS70008: The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
            );
        }
        if code.client_id != client_id {
            return invalid_grant(
                "AADSTS70000: The provided value for the 'code' parameter is not valid. The code was issued to another application.",
            );
        }
        if code.redirect_uri != get("redirect_uri") {
            return invalid_grant(
                "AADSTS500112: The reply address does not match the reply address provided when requesting Authorization code.",
            );
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, get("code_verifier").as_bytes());
        if B64.encode(digest) != code.challenge {
            return invalid_grant(
                "AADSTS501481: The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            );
        }
        code.redeemed = true;
        (code.upn.clone(), code.scope.clone(), code.nonce.clone())
    } else {
        let Some(rt) = d.refresh.get(get("refresh_token")) else {
            return invalid_grant(
                "AADSTS9002313: Invalid request. Request is malformed or invalid.",
            );
        };
        if rt.client_id != client_id {
            return invalid_grant(
                "AADSTS700025: Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
            );
        }
        if d.revoked.contains(&rt.upn) {
            return invalid_grant(
                "AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.",
            );
        }
        if rt.expires < now {
            return invalid_grant(&format!(
                "AADSTS700082: The refresh token has expired due to inactivity. The token was issued on {} and was inactive for {} seconds.",
                rt.issued,
                now - rt.issued
            ));
        }
        (rt.upn.clone(), rt.scope.clone(), None)
    };
    let Some(user) = d.users.get(&upn).cloned() else {
        return invalid_grant("AADSTS50034: The user account does not exist in the directory.");
    };
    let mut answer = json!({
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": USER_TOKEN_SECS,
        "ext_expires_in": USER_TOKEN_SECS,
    });
    let base = json!({
        "iss": s.issuer(),
        "iat": now,
        "nbf": now,
        "exp": now + USER_TOKEN_SECS,
        "tid": s.tenant,
        "oid": user.oid,
        "sub": format!("sub-{}", user.oid),
        "upn": user.upn,
        "preferred_username": user.upn,
        "name": user.name,
        "ver": "2.0",
    });
    let mut access = base.clone();
    access["aud"] = json!("00000003-0000-0000-c000-000000000000");
    access["scp"] = json!("openid profile offline_access User.Read");
    access["azp"] = json!(client_id);
    match s.signing.sign(&access) {
        Ok(t) => answer["access_token"] = json!(t),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.contains(&"openid") {
        let mut id = base;
        id["aud"] = json!(client_id);
        if let Some(n) = nonce {
            id["nonce"] = json!(n);
        }
        let tamper = d.tamper.take();
        let mut key = &s.signing;
        match tamper.as_deref() {
            Some("forged") => key = s.rogue.as_ref().unwrap_or(&s.signing),
            Some("nonce") => id["nonce"] = json!("not-the-sign-in-nonce"),
            Some("audience") => id["aud"] = json!("00000000-0000-0000-0000-00000000bad0"),
            _ => {}
        }
        match key.sign(&id) {
            Ok(t) => answer["id_token"] = json!(t),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        }
    }
    if scopes.contains(&"offline_access") {
        let rt = format!("0.AR-{}", random());
        let life = d.refresh_secs.unwrap_or(REFRESH_SECS);
        d.refresh.insert(
            rt.clone(),
            Refresh {
                client_id: client_id.to_owned(),
                upn: upn.clone(),
                scope,
                issued: now,
                expires: now + life,
            },
        );
        answer["refresh_token"] = json!(rt);
    }
    Json(answer).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_from_upns_are_guids() {
        let o = oid_for("Alice@Contoso.test");
        assert_eq!(o, oid_for("alice@contoso.test"));
        assert_eq!(o.len(), 36);
        assert_eq!(o.matches('-').count(), 4);
    }
}
