//! Activation through the gateway (the server-side OAuth flow of `auth::activation`), as HTML
//! pages for the end user's browser, not JSON: `GET /activate` sends the browser to Entra ID's
//! sign-in (302), `GET /activate/callback` takes it back, checks the sign-in, binds the Teams
//! identity (tenant, object id, UPN and the E.164 number Graph reports) to every SIP account
//! with that UPN, marks them activated, stores the user's refresh token sealed, and sends the
//! browser on to `/me` (303). Every refusal — an unknown, reused or expired `state`, an error
//! from the identity provider (refused consent), a code the token endpoint refuses (reused), an
//! ID token that does not validate (tampered, wrong nonce), no account with the UPN — is a page
//! saying what happened, and nothing is stored. Also `POST /api/token-refresh`, the admin's
//! "refresh every user's token now".
//!
//! The redirect URI is `Data.SpsAzureApp.RedirectUri` (`https://<public name>/activate/callback`,
//! registered as a Web redirect URI of the app), or, when that is empty, `http://<Host>/activate/
//! callback` from the request (for a gateway reached directly, as in tests).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use super::ApiState;
use super::config::{Actor, audit};
use super::problem::Problem;
use crate::auth::activation::{self, GrantError};
use crate::auth::refresh::RefreshSummary;
use crate::auth::user_principal;
use crate::store::TeamsIdentity;

/// The callback's path on the gateway.
pub const CALLBACK: &str = "/activate/callback";

/// An HTML page with `status`, never cached, never framed.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>{t}</title>\
         <h1 id=\"title\">{t}</h1><p id=\"message\">{m}</p>\
         <p><a href=\"/activate\">Activate again</a> · <a href=\"/me\">My account</a></p></html>",
        t = escape(title),
        m = escape(text)
    );
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    no_store(h);
    r
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// A refusal page: activation did not happen.
fn refused(status: StatusCode, text: &str) -> Response {
    page(status, "Activation failed", text)
}

/// `text` with HTML's special characters escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn redirect(status: StatusCode, to: &str) -> Response {
    match HeaderValue::try_from(to) {
        Ok(v) => {
            let mut r = status.into_response();
            r.headers_mut().insert(header::LOCATION, v);
            no_store(r.headers_mut());
            r
        }
        Err(_) => refused(StatusCode::INTERNAL_SERVER_ERROR, "bad redirect target"),
    }
}

/// The redirect URI: the configured one, else this request's `http://<Host>` + [`CALLBACK`].
fn redirect_uri(configured: &str, headers: &HeaderMap) -> Option<String> {
    if !configured.is_empty() {
        return Some(configured.to_owned());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| format!("http://{host}{CALLBACK}"))
}

/// `GET /activate[?login_hint=upn]`: starts the sign-in (302 to the authority).
pub async fn start(
    State(state): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let app = state.config.settings().sps_app.clone();
    if app.tenant.is_empty() || app.client_id.is_empty() {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "Activation is not configured yet: an admin must set Data.SpsAzureApp.Tenant and ClientId. Nothing was activated.",
        );
    }
    if state.activation.key.is_none() {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "Activation is not available on this server (no secret_key to protect tokens). Nothing was activated.",
        );
    }
    let Some(uri) = redirect_uri(&app.redirect_uri, &headers) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "The request names no host; set Data.SpsAzureApp.RedirectUri. Nothing was activated.",
        );
    };
    let hint = q.get("login_hint").map(String::as_str);
    match state.activation.pending.begin(&app, &uri, hint) {
        Ok(url) => redirect(StatusCode::FOUND, &url),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// `GET /activate/callback?code&state` (or `?error&error_description&state`).
pub async fn callback(
    State(state): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    // The state first: a callback this server did not start (or already finished) ends here.
    let Some(pending) = get("state").and_then(|s| state.activation.pending.take(s)) else {
        tracing::warn!("activation callback with an unknown, used or expired state");
        return refused(
            StatusCode::BAD_REQUEST,
            "This sign-in is not valid here: it is unknown, already used, or expired. \
             Nothing was activated; start again.",
        );
    };
    if let Some(error) = get("error") {
        let why = get("error_description").unwrap_or("");
        tracing::info!(error, why, "activation refused at the identity provider");
        let text = if error == "access_denied" {
            format!(
                "The sign-in was declined (consent refused): nothing was activated. ({error}: {why})"
            )
        } else {
            format!(
                "The identity provider refused the sign-in: {error}: {why}. Nothing was activated."
            )
        };
        return refused(StatusCode::BAD_REQUEST, &text);
    }
    let Some(code) = get("code") else {
        return refused(
            StatusCode::BAD_REQUEST,
            "The callback has no code. Nothing was activated.",
        );
    };
    match finish(&state, code, &pending).await {
        Ok(n) => redirect(StatusCode::SEE_OTHER, &format!("/me?activated={n}")),
        Err((status, text)) => {
            tracing::warn!(%status, "activation failed: {text}");
            refused(status, &text)
        }
    }
}

/// Redeems the code, validates the ID token, binds and stores; the number of accounts activated.
async fn finish(
    state: &ApiState,
    code: &str,
    pending: &activation::Pending,
) -> Result<usize, (StatusCode, String)> {
    let settings = state.config.settings();
    let app = &settings.sps_app;
    let key = state.activation.key.as_ref().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "no secret_key to protect tokens".to_owned(),
    ))?;
    let granted = activation::redeem_code(state.auth.http(), app, code, pending)
        .await
        .map_err(|e| match e {
            GrantError::Refused { .. } => (
                StatusCode::BAD_REQUEST,
                format!("The sign-in's code was refused ({e}). Nothing was activated; start again."),
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                format!("The identity provider could not be reached ({e}). Nothing was activated; try again."),
            ),
        })?;
    let id_token = granted.id_token.ok_or((
        StatusCode::BAD_GATEWAY,
        "The identity provider sent no ID token. Nothing was activated.".to_owned(),
    ))?;
    let claims = state
        .auth
        .id_token(&id_token, app, &pending.nonce)
        .await
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("The sign-in's ID token was refused: {e}. Nothing was activated."),
            )
        })?;
    let refresh_token = granted.refresh_token.ok_or((
        StatusCode::BAD_GATEWAY,
        "The identity provider sent no refresh token (offline_access not granted). Nothing was activated."
            .to_owned(),
    ))?;
    let claim = |c: &str| {
        claims
            .get(c)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let upn = user_principal(&claims).ok_or((
        StatusCode::BAD_REQUEST,
        "The ID token names no user (no upn or preferred_username). Nothing was activated."
            .to_owned(),
    ))?;
    let (tenant, oid) = (claim("tid"), claim("oid"));
    if oid.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "The ID token has no object id (oid). Nothing was activated.".to_owned(),
        ));
    }
    // The Teams number, from Graph as the admin app; without it the accounts keep theirs.
    let number = match state
        .auth
        .graph()
        .user_number(&settings.admin_app, &oid)
        .await
    {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(%upn, "activation: no number from Graph, keeping the account's: {e}");
            None
        }
    };
    let problem = |p: Problem| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "The store failed: {}. Try again.",
                p.detail.unwrap_or_default()
            ),
        )
    };
    let _writing = state.config_writes.lock().await;
    let accounts = super::me::accounts_of(state, &upn).await.map_err(problem)?;
    if accounts.is_empty() {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "No SIP account has the UPN {upn}; ask an admin to create one with it. Nothing was activated."
            ),
        ));
    }
    let now = Utc::now();
    let actor = Actor(upn.clone());
    let n = accounts.len();
    for mut user in accounts {
        let sealed = key.seal(user.id, &refresh_token).map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e}. Nothing more was activated."),
            )
        })?;
        let before = json!({"activated": user.activated, "phone_number": user.phone_number});
        user.activated = true;
        if number.is_some() {
            user.phone_number = number.clone();
        }
        user.teams.identity = Some(TeamsIdentity {
            tenant: tenant.clone(),
            oid: oid.clone(),
            upn: upn.clone(),
            phone_number: number.clone(),
            activated_at: now,
        });
        user.teams.refresh_token = Some(sealed);
        user.teams.refreshed_at = Some(now);
        user.teams.needs_reactivation = None;
        let user = state
            .store
            .update_user(user)
            .await
            .map_err(|e| problem(e.into()))?;
        audit(
            state,
            &actor,
            "user.activate",
            &format!("user/{}", user.id),
            Some(before),
            Some(json!({"activated": true, "phone_number": user.phone_number, "oid": oid, "tenant": tenant})),
        )
        .await;
    }
    state.note_users_changed();
    tracing::info!(%upn, accounts = n, "activated for Teams");
    Ok(n)
}

/// `POST /api/token-refresh`: refreshes every activated user's refresh token now.
#[utoipa::path(post, path = "/api/token-refresh", tag = "users",
    responses(
        (status = 200, description = "What the run did, per account: tokens refreshed, \
            refreshes that failed for now (retried by the nightly task), and users the identity \
            provider refused (now `needs_reactivation`)", body = RefreshSummary,
            example = json!({"refreshed": 2, "failed": 0, "needs_reactivation": 1})),
        (status = 401, response = super::openapi::Unauthorized),
    ))]
pub async fn refresh_now(State(state): State<ApiState>) -> Json<RefreshSummary> {
    // Without the task (a router built without `serve`'s secret_key) nothing sealed can exist.
    match state.activation.refresher.as_ref() {
        Some(r) => Json(r.run(None).await),
        None => Json(RefreshSummary::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_uri() {
        let mut h = HeaderMap::new();
        assert_eq!(redirect_uri("", &h), None);
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(
            redirect_uri("", &h).as_deref(),
            Some("http://127.0.0.1:8080/activate/callback")
        );
        assert_eq!(
            redirect_uri("https://gw.example/activate/callback", &h).as_deref(),
            Some("https://gw.example/activate/callback")
        );
        h.insert(header::HOST, HeaderValue::from_static("evil/\"x"));
        assert_eq!(redirect_uri("", &h), None);
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
