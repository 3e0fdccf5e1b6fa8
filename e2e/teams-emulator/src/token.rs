//! The Entra ID face: the OpenID discovery document
//! (`GET /{tenant}/v2.0/.well-known/openid-configuration`), the JWKS
//! (`GET /{tenant}/discovery/v2.0/keys`) and the token endpoint for an app's client credentials
//! (`POST /{tenant}/oauth2/v2.0/token`), shaped as Entra answers them (issuer
//! `{base}/{tenant}/v2.0`, `AADSTS…` error descriptions). Also the test facility
//! `POST /test/mint`, which signs user tokens for tests (never part of Microsoft's API).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// `POST /{tenant}/oauth2/v2.0/token` (client credentials only).
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
    if get("grant_type") != "client_credentials" {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    let client_id = get("client_id");
    match s.clients.get(client_id) {
        None => {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                &format!(
                    "AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
                ),
            );
        }
        Some(secret) if secret != get("client_secret") => {
            return aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided.",
            );
        }
        Some(_) => {}
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
