//! Who may call `/api/*` until Azure sign-in arrives (the access-control issue replaces this):
//! (a) local requests — loopback peer, a Host header naming a loopback address, no proxy headers
//! (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) and no foreign `Origin` — so neither a local reverse
//! proxy nor DNS rebinding nor a cross-site page opens the API; (b) the break-glass bearer token
//! from `<data-dir>/admin-token`, from a loopback peer. Everything else gets 401.

use std::net::{IpAddr, SocketAddr};

use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::problem::Problem;

/// Headers a proxy adds; their presence means the request was relayed, so it is not local.
const PROXY_HEADERS: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// Middleware on every protected route: lets the request through or answers 401.
pub async fn guard(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    match check(&state, &req) {
        Ok(()) => next.run(req).await,
        Err(p) => p.into_response(),
    }
}

/// The peer address, from `ConnectInfo` (the real server) or `MockConnectInfo` (tests).
pub fn peer(req: &Request) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| ext.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0))
}

/// Decides access for one request.
fn check(state: &ApiState, req: &Request) -> Result<(), Problem> {
    let Some(peer) = peer(req) else {
        return Err(Problem::unauthorized("the peer address is unknown"));
    };
    if !is_loopback(peer.ip()) {
        return Err(Problem::unauthorized(
            "authentication required: this API answers remote requests only with credentials",
        ));
    }
    let headers = req.headers();
    if let Some(token) = bearer(headers) {
        return if ct_eq(token.as_bytes(), state.admin_token.as_bytes()) {
            Ok(())
        } else {
            Err(Problem::unauthorized("invalid bearer token"))
        };
    }
    if PROXY_HEADERS.iter().any(|h| headers.contains_key(*h)) {
        return Err(Problem::unauthorized(
            "a proxied request needs credentials (Forwarded/X-Forwarded-For present)",
        ));
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let host = host.or_else(|| req.uri().authority().map(|a| a.as_str()));
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
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"", b""));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
