//! Who may call what under `/api` (DESIGN "Access"). [`guard`] runs before every protected
//! route, puts the caller's [`Identity`] and audit [`Actor`] into the request's extensions, or
//! answers with a problem:
//!
//! - a bearer token equal to the break-glass token (`<data-dir>/admin-token`) is an admin from a
//!   loopback peer, and 401 from anywhere else;
//! - any other bearer token must be a valid token of the admin Azure app (`crate::auth`): invalid
//!   or expired is 401, a signed-in user outside the admin group 403 (on [`Rule::SignedIn`]
//!   routes any signed-in user passes); a request with a token is judged by the token alone;
//! - `/api/me/…` ([`Rule::EndUser`]) takes only a valid token of the end-user app
//!   (`Data.SpsAzureApp`): the caller is the user its `upn` names. An admin-app token passes only
//!   when it is valid for the end-user app too (the same app registration serves both); the
//!   break-glass token is nobody's and gets 401 there;
//! - without a token, only the config APIs answer, and only local requests: a loopback peer, a
//!   Host header naming a loopback address, no proxy headers (`Forwarded`, `X-Forwarded-*`,
//!   `X-Real-IP`) and no foreign `Origin` — so neither a local reverse proxy nor DNS rebinding
//!   nor a cross-site page opens them. Everything else is 401 with `WWW-Authenticate: Bearer`.
//!
//! `/healthz`, `/metrics`, `/api/version`, `/api/auth/config` and the console's files are outside
//! the guard.

use std::net::{IpAddr, SocketAddr};

use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::config::Actor;
use super::problem::Problem;
use crate::auth::{AuthError, Identity};

/// Headers a proxy adds; their presence means the request was relayed, so it is not local.
const PROXY_HEADERS: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// An admin; or, without credentials, a local request (the config APIs).
    AdminOrLocal,
    /// An admin: a member of the admin group, or the break-glass token from localhost.
    Admin,
    /// Any valid token of the admin app (admin or not), or the break-glass token.
    SignedIn,
    /// A valid token of the end-user app (`/api/me/…`): the signed-in user, for their own data.
    EndUser,
}

/// The rule of a path: `/api/config/...` are the config APIs; `/api/debug/claims` shows any
/// signed-in caller their own claims; everything else needs an admin.
pub fn rule(path: &str) -> Rule {
    if path == "/api/config" || path.starts_with("/api/config/") {
        Rule::AdminOrLocal
    } else if path == "/api/debug/claims" {
        Rule::SignedIn
    } else if path == "/api/me" || path.starts_with("/api/me/") {
        Rule::EndUser
    } else {
        Rule::Admin
    }
}

/// Middleware on every protected route: lets the request through with its [`Identity`] and
/// [`Actor`] in the extensions, or answers 401/403/503.
pub async fn guard(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    match check(&state, &parts).await {
        Ok(id) => {
            parts.extensions.insert(Actor(id.actor.clone()));
            parts.extensions.insert(id);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(p) => p.into_response(),
    }
}

/// The peer address, from `ConnectInfo` (the real server) or `MockConnectInfo` (tests).
pub fn peer(parts: &Parts) -> Option<SocketAddr> {
    let ext = &parts.extensions;
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| ext.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0))
}

/// Decides access for one request.
async fn check(state: &ApiState, parts: &Parts) -> Result<Identity, Problem> {
    let rule = rule(parts.uri.path());
    let Some(peer) = peer(parts) else {
        return Err(Problem::unauthorized("the peer address is unknown"));
    };
    let loopback_peer = is_loopback(peer.ip());
    let headers = &parts.headers;
    if rule == Rule::EndUser {
        return end_user(state, headers).await;
    }
    if let Some(token) = bearer(headers) {
        if ct_eq(token.as_bytes(), state.admin_token.as_bytes()) {
            return if loopback_peer {
                Ok(Identity::admin_token())
            } else {
                Err(Problem::unauthorized(
                    "the break-glass admin token is accepted from localhost only",
                ))
            };
        }
        let app = state.config.settings().admin_app.clone();
        let id = state
            .auth
            .authenticate(token, &app)
            .await
            .map_err(refused)?;
        if id.admin || rule == Rule::SignedIn {
            return Ok(id);
        }
        tracing::info!(actor = %id.actor, path = parts.uri.path(), "signed-in non-admin refused");
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "signed in, but not a member of the admin group (Data.AdminAzureApp.AdminGroupId)",
        ));
    }
    if rule != Rule::AdminOrLocal {
        return Err(Problem::unauthorized(
            "sign in: this API needs a bearer token of the admin app",
        ));
    }
    if !loopback_peer {
        return Err(Problem::unauthorized(
            "authentication required: this API answers remote requests only with credentials",
        ));
    }
    local_unauthenticated(parts)?;
    Ok(Identity::localhost())
}

/// The answer to a token that was not accepted: 503 when it could not be judged now, else 401.
fn refused(e: AuthError) -> Problem {
    match e {
        AuthError::Unavailable(m) => {
            tracing::warn!("cannot judge a token now: {m}");
            Problem::unavailable(format!("the token cannot be checked now: {m}"))
        }
        e => Problem::unauthorized(e.to_string()),
    }
}

/// Decides access to `/api/me/…`: a valid token of the end-user app, nothing else.
async fn end_user(state: &ApiState, headers: &HeaderMap) -> Result<Identity, Problem> {
    let Some(token) = bearer(headers) else {
        return Err(Problem::unauthorized(
            "sign in: /api/me needs a bearer token of the end-user app (Data.SpsAzureApp)",
        ));
    };
    if ct_eq(token.as_bytes(), state.admin_token.as_bytes()) {
        return Err(Problem::unauthorized(
            "the break-glass admin token is not an end user; /api/me needs a token of the \
             end-user app (Data.SpsAzureApp)",
        ));
    }
    let app = state.config.settings().sps_app.clone();
    state
        .auth
        .authenticate_end_user(token, &app)
        .await
        .map_err(refused)
}

/// The Host, proxy-header and Origin rules for an unauthenticated request from a loopback peer
/// (also what makes a request local for the Swagger UI, `openapi`).
pub fn local_unauthenticated(parts: &Parts) -> Result<(), Problem> {
    let headers = &parts.headers;
    if PROXY_HEADERS.iter().any(|h| headers.contains_key(*h)) {
        return Err(Problem::unauthorized(
            "a proxied request needs credentials (Forwarded/X-Forwarded-For present)",
        ));
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let host = host.or_else(|| parts.uri.authority().map(|a| a.as_str()));
    if !host.is_some_and(is_loopback_host) {
        return Err(Problem::unauthorized(
            "unauthenticated requests are accepted only for a loopback Host",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let local = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://").map(|(_, rest)| rest))
            .is_some_and(is_loopback_host);
        if !local {
            return Err(Problem::unauthorized(
                "unauthenticated requests from a foreign origin are refused",
            ));
        }
    }
    Ok(())
}

/// The token of `Authorization: Bearer <token>`, if that is the scheme.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares without an early exit, so timing does not reveal the token.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.is_empty() || b.is_empty() || a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Loopback, including IPv4-mapped IPv6 (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// True when a Host value (`localhost`, `127.0.0.1:8080`, `[::1]:8080`) names a loopback address.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        match rest.split_once(']') {
            Some((addr, tail)) if tail.is_empty() || valid_port(tail) => addr,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if valid_port(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        }
    };
    if name.eq_ignore_ascii_case("localhost") || name.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// `:<digits>` with a port number.
fn valid_port(tail: &str) -> bool {
    tail.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "example.com",
            "127.0.0.1.nip.io",
            "localhost.evil.com:8080",
            "10.0.0.1:8080",
            "[::2]:80",
            "[::1]x",
            "127.0.0.1:notaport",
            "::1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn rules_by_path() {
        assert_eq!(rule("/api/config/servers"), Rule::AdminOrLocal);
        assert_eq!(rule("/api/config/*/trusted-ips"), Rule::AdminOrLocal);
        assert_eq!(rule("/api/configx"), Rule::Admin);
        assert_eq!(rule("/api/users"), Rule::Admin);
        assert_eq!(rule("/api/audit"), Rule::Admin);
        assert_eq!(rule("/api/policies/routing"), Rule::Admin);
        assert_eq!(rule("/api/debug/claims"), Rule::SignedIn);
        assert_eq!(rule("/api/me"), Rule::EndUser);
        assert_eq!(rule("/api/me/activation"), Rule::EndUser);
        assert_eq!(rule("/api/meta"), Rule::Admin);
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"", b""));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
