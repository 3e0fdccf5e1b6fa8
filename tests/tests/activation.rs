//! Activation and the token refresh task (issue 5 items 3 and 5), against the real `csps` and the
//! real `teams-emulator` standing in for Entra ID (authorization-code flow with PKCE, refresh
//! tokens, ID tokens) and Graph (the user's number). The browser is played by following the
//! redirects by hand: `/activate` → the emulator's `authorize` (which signs the test user in
//! without a page) → `/activate/callback` → `/me`.
//!
//! - The flow end to end: the account is activated, the Teams identity and the number Graph
//!   reports are bound, and the refresh token is stored sealed (the gateway's store files never
//!   hold it in clear).
//! - Bad input: a made-up or reused `state`, a reused code, a tampered ID token (forged
//!   signature, wrong nonce, wrong audience) and a refused consent each end on an error page,
//!   and nothing is stored.
//! - The refresh task: one run refreshes every user (the emulator saw one refresh grant per
//!   user, and the new tokens are the ones stored); a network error fails the run without
//!   marking anyone; a revoked token marks its user `needs_reactivation` and the other stays
//!   fine.

use std::net::SocketAddr;
use std::path::Path;

use csps_tests::emulator::{EmulatorOptions, TeamsEmulator};
use csps_tests::{Gateway, GatewayOptions, http, metric_sum};
use serde_json::{Value, json};

const TENANT: &str = "5a1e7c1d-0000-4000-8000-0000000000a7";
/// The end-user app (a web app with a secret).
const SPS_CLIENT: &str = "c11e0001-0000-4000-8000-0000000000a7";
const SPS_SECRET: &str = "activation-client-secret";
/// The admin app, which reads the user's number from Graph.
const ADMIN_CLIENT: &str = "c11e0001-0000-4000-8000-0000000000a8";
const ADMIN_SECRET: &str = "admin-client-secret";

/// (SIP user, UPN, the number Graph reports).
const USERS: [(&str, &str, &str); 4] = [
    ("alice", "alice@contoso.test", "+14255550101"),
    ("bob", "bob@contoso.test", "+14255550102"),
    ("erin", "erin@contoso.test", "+14255550105"),
    ("frank", "frank@contoso.test", "+14255550106"),
];

struct World {
    emu: TeamsEmulator,
    gw: Gateway,
    /// SIP user → account id.
    ids: std::collections::HashMap<&'static str, String>,
}

fn world() -> Option<World> {
    world_with(GatewayOptions::default())
}

/// The emulated tenant with its users, and a gateway started with `opts` (see [`configure`]).
fn world_with(opts: GatewayOptions) -> Option<World> {
    let emu = TeamsEmulator::start_or_skip(&EmulatorOptions {
        tenant: TENANT.into(),
        clients: vec![
            (SPS_CLIENT.into(), SPS_SECRET.into()),
            (ADMIN_CLIENT.into(), ADMIN_SECRET.into()),
        ],
        ..EmulatorOptions::default()
    })?;
    for (_, upn, phone) in USERS {
        emu_post(
            &emu,
            "/test/users",
            &json!({"upn": upn, "phone": phone}),
            201,
        );
    }
    let gw = match Gateway::start_with(opts) {
        Ok(gw) => gw,
        Err(e) => {
            csps_tests::skip(&e);
            return None;
        }
    };
    let ids = configure(&gw, &emu);
    Some(World { emu, gw, ids })
}

/// Points `gw`'s end-user and admin apps at the emulator and creates the accounts of [`USERS`]:
/// SIP user → account id.
fn configure(gw: &Gateway, emu: &TeamsEmulator) -> std::collections::HashMap<&'static str, String> {
    let base = emu.base_url();
    for (leaf, value) in [
        ("SpsAzureApp.Tenant", TENANT),
        ("SpsAzureApp.ClientId", SPS_CLIENT),
        ("SpsAzureApp.ClientSecret", SPS_SECRET),
        ("SpsAzureApp.Authority", base.as_str()),
        ("AdminAzureApp.Tenant", TENANT),
        ("AdminAzureApp.ClientId", ADMIN_CLIENT),
        ("AdminAzureApp.ClientSecret", ADMIN_SECRET),
        ("AdminAzureApp.Authority", base.as_str()),
        ("AdminAzureApp.GraphUrl", base.as_str()),
    ] {
        gw.set_global(leaf, json!(value));
    }
    let mut ids = std::collections::HashMap::new();
    for (user, upn, _) in USERS {
        let r = gw.api(
            "POST",
            "/api/users",
            Some(&json!({"username": user, "password": format!("{user}-secret-1"), "upn": upn})),
        );
        assert_eq!(r.status, 201, "{user}: {}", r.body);
        ids.insert(user, r.json()["id"].as_str().unwrap_or_default().to_owned());
    }
    ids
}

fn emu_post(emu: &TeamsEmulator, path: &str, body: &Value, status: u16) {
    let r = http::request(emu.addr, "POST", path, None, Some(&body.to_string()))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    assert_eq!(r.status, status, "POST {path}: {}", r.body);
}

/// `http://127.0.0.1:port/path?query` → (address, path and query); a relative target stays on
/// `from`.
fn split_url(url: &str, from: SocketAddr) -> (SocketAddr, String) {
    match url.strip_prefix("http://") {
        Some(rest) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let addr = host
                .parse()
                .unwrap_or_else(|_| panic!("not a loopback address: {url}"));
            (addr, path.to_owned())
        }
        None => (from, url.to_owned()),
    }
}

/// GETs `path` on `addr` and follows redirects (at most 6) while they stay off `/me`: every
/// answer, in order.
fn follow(addr: SocketAddr, path: &str) -> Vec<http::Response> {
    let (mut addr, mut path) = (addr, path.to_owned());
    let mut out = Vec::new();
    for _ in 0..6 {
        let r = http::request(addr, "GET", &path, None, None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let next = (300..400)
            .contains(&r.status)
            .then(|| r.header("location").map(str::to_owned))
            .flatten();
        out.push(r);
        match next {
            Some(to) if !to.starts_with("/me") => (addr, path) = split_url(&to, addr),
            _ => break,
        }
    }
    out
}

/// Starts an activation (for `login_hint` when given) and stops at the callback URL the
/// emulator sent the browser to: (the gateway's callback path and query).
fn callback_url(w: &World, login_hint: Option<&str>) -> String {
    let start = match login_hint {
        Some(h) => format!("/activate?login_hint={}", http::encode_query(h)),
        None => "/activate".to_owned(),
    };
    let r = http::request(w.gw.http, "GET", &start, None, None).expect("GET /activate");
    assert_eq!(r.status, 302, "GET /activate: {}", r.body);
    let to = r.header("location").unwrap_or_default().to_owned();
    assert!(
        to.starts_with(&format!(
            "{}/{TENANT}/oauth2/v2.0/authorize?",
            w.emu.base_url()
        )),
        "{to}"
    );
    for p in [
        "response_type=code",
        "code_challenge_method=S256",
        "offline_access",
        "nonce=",
    ] {
        assert!(to.contains(p), "{p} missing in {to}");
    }
    let (addr, path) = split_url(&to, w.gw.http);
    let r = http::request(addr, "GET", &path, None, None).expect("authorize");
    assert_eq!(r.status, 302, "authorize: {}", r.body);
    let back = r.header("location").unwrap_or_default();
    let (addr, path) = split_url(back, w.gw.http);
    assert_eq!(addr.port(), w.gw.http.port(), "{back}");
    assert!(path.starts_with("/activate/callback?"), "{back}");
    path
}

/// The callback's answer.
fn deliver(w: &World, callback: &str) -> http::Response {
    http::request(w.gw.http, "GET", callback, None, None).expect("callback")
}

/// An error page: HTML with the status, saying `says`.
fn assert_error_page(r: &http::Response, status: u16, says: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    assert!(r.body.contains("Activation failed"), "{}", r.body);
    assert!(r.body.contains(says), "expected `{says}` in {}", r.body);
    assert!(
        r.body.contains("Nothing was activated") || r.body.contains("nothing was activated"),
        "{}",
        r.body
    );
}

/// The account of `user` as `GET /api/users/{id}` shows it.
fn account(w: &World, user: &str) -> Value {
    let r =
        w.gw.api("GET", &format!("/api/users/{}", w.ids[user]), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Asserts `user` has nothing of an activation.
fn assert_untouched(w: &World, user: &str) {
    let a = account(w, user);
    assert_eq!(a["activated"], false, "{a}");
    assert_eq!(a["teams"], Value::Null, "{a}");
    assert_eq!(a["token_refreshed_at"], Value::Null, "{a}");
}

/// Every byte of every file under `dir`.
fn files_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The refresh tokens the gateway sent to the token endpoint, oldest first.
fn refresh_grants(emu: &TeamsEmulator) -> Vec<String> {
    emu.requests_to("/oauth2/v2.0/token")
        .into_iter()
        .filter(|r| r["body"]["grant_type"] == "refresh_token")
        .filter_map(|r| r["body"]["refresh_token"].as_str().map(str::to_owned))
        .collect()
}

fn refresh_now(gw: &Gateway) -> Value {
    let r = gw.api("POST", "/api/token-refresh", None);
    assert_eq!(r.status, 200, "POST /api/token-refresh: {}", r.body);
    r.json()
}

fn activate(w: &World, upn: &str) {
    let cb = callback_url(w, Some(upn));
    let r = deliver(w, &cb);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("/me?activated=1"),
        "{:?}",
        r.headers
    );
}

/// The flow end to end, then the refresh task over two users, a network error and a revocation.
#[test]
fn activation_binds_the_teams_identity_and_the_refresh_task_keeps_tokens_fresh() {
    let Some(w) = world() else { return };
    // Before: not activated; GET /activate follows through to /me.
    assert_untouched(&w, "alice");
    let hops = follow(w.gw.http, "/activate?login_hint=alice%40contoso.test");
    let last = hops.last().expect("an answer");
    assert_eq!(
        hops.len(),
        3,
        "{:?}",
        hops.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(last.status, 303, "{}", last.body);
    assert_eq!(last.header("location"), Some("/me?activated=1"));

    let a = account(&w, "alice");
    assert_eq!(a["activated"], true, "{a}");
    assert_eq!(a["phone_number"], "+14255550101", "{a}");
    assert_eq!(a["teams"]["tenant"], TENANT, "{a}");
    assert_eq!(a["teams"]["upn"], "alice@contoso.test", "{a}");
    assert_eq!(a["teams"]["phone_number"], "+14255550101", "{a}");
    assert_eq!(a["teams"]["oid"].as_str().map(str::len), Some(36), "{a}");
    assert!(a["token_refreshed_at"].is_string(), "{a}");
    assert_eq!(a["needs_reactivation"], false, "{a}");
    assert!(
        a.get("refresh_token").is_none() && !a.to_string().contains("0.AR-"),
        "{a}"
    );
    // The audit log has it under the user's name.
    let audit = w.gw.api("GET", "/api/audit?limit=5", None).json();
    assert!(
        audit.as_array().is_some_and(|l| l
            .iter()
            .any(|e| e["action"] == "user.activate" && e["actor"] == "alice@contoso.test")),
        "{audit}"
    );
    // The emulator saw the code redeemed with the verifier and the app's secret.
    let grants = w.emu.requests_to("/oauth2/v2.0/token");
    let code = grants
        .iter()
        .find(|r| r["body"]["grant_type"] == "authorization_code")
        .unwrap_or_else(|| panic!("no code grant: {grants:?}"));
    assert_eq!(
        code["body"]["code_verifier"].as_str().map(str::len),
        Some(43),
        "{code}"
    );
    assert_eq!(code["body"]["client_secret"], "***", "{code}");

    // bob too; short-lived refresh tokens from now on.
    emu_post(
        &w.emu,
        "/test/token-lifetime",
        &json!({"refresh_secs": 120}),
        204,
    );
    activate(&w, "bob@contoso.test");
    w.emu.clear_requests();

    // One run refreshes both: one refresh grant per user, the new tokens stored.
    let s = refresh_now(&w.gw);
    assert_eq!(
        s,
        json!({"refreshed": 2, "failed": 0, "needs_reactivation": 0})
    );
    let first = refresh_grants(&w.emu);
    assert_eq!(first.len(), 2, "{first:?}");
    w.emu.clear_requests();
    let s = refresh_now(&w.gw);
    assert_eq!(s["refreshed"], 2, "{s}");
    let second = refresh_grants(&w.emu);
    assert_eq!(second.len(), 2, "{second:?}");
    for t in &second {
        assert!(!first.contains(t), "the rotated token was not stored: {t}");
    }
    // Sealed at rest: no refresh token, old or current, is in the store's files in clear.
    let stored = files_under(w.gw.data_dir.path());
    assert!(!stored.is_empty());
    for t in first.iter().chain(&second) {
        assert!(
            !contains(&stored, t),
            "a refresh token in clear in the store"
        );
    }

    // The identity provider unreachable: the run fails, nobody is marked.
    let dead = format!("http://127.0.0.1:{}", csps_tests::free_port());
    w.gw.set_global("SpsAzureApp.Authority", json!(dead));
    let s = refresh_now(&w.gw);
    assert_eq!(
        s,
        json!({"refreshed": 0, "failed": 2, "needs_reactivation": 0})
    );
    assert_eq!(account(&w, "alice")["needs_reactivation"], false);
    w.gw.set_global("SpsAzureApp.Authority", json!(w.emu.base_url()));

    // bob's token revoked: the next run marks bob, alice stays fine.
    emu_post(
        &w.emu,
        "/test/revoke",
        &json!({"upn": "bob@contoso.test"}),
        204,
    );
    let s = refresh_now(&w.gw);
    assert_eq!(
        s,
        json!({"refreshed": 1, "failed": 0, "needs_reactivation": 1})
    );
    let b = account(&w, "bob");
    assert_eq!(b["needs_reactivation"], true, "{b}");
    assert!(
        b["reactivation_reason"]
            .as_str()
            .is_some_and(|r| r.contains("AADSTS50173")),
        "{b}"
    );
    assert_eq!(b["activated"], true, "{b}");
    assert_eq!(account(&w, "alice")["needs_reactivation"], false);
    // Marked users are not asked again.
    assert_eq!(refresh_now(&w.gw)["needs_reactivation"], 0);
    let metrics = http::request(w.gw.http, "GET", "/metrics", None, None).expect("metrics");
    let count = |o: &str| {
        metric_sum(
            &metrics.body,
            "csps_token_refreshes_total",
            &[("outcome", o)],
        )
    };
    assert_eq!(count("needs_reactivation"), Some(1.0), "{}", metrics.body);
    assert_eq!(count("failed"), Some(2.0), "{}", metrics.body);
    assert_eq!(count("refreshed"), Some(6.0), "{}", metrics.body);

    // Activating again clears the mark; deactivating deletes the binding and the token.
    activate(&w, "bob@contoso.test");
    assert_eq!(account(&w, "bob")["needs_reactivation"], false);
    let r = w.gw.api(
        "PATCH",
        &format!("/api/users/{}", w.ids["bob"]),
        Some(&json!({"activated": false})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_untouched(&w, "bob");
}

/// Behind a load balancer the callback may reach another server than `/activate` did: with
/// the same `secret_key` (`CSPS_SECRET_KEY`) that server completes the sign-in (the state
/// carries it, sealed); a server with another key refuses it with the error page. (Each server
/// here has its own embedded store with the same accounts, so whose store the binding went to
/// shows which server completed it.)
#[test]
fn a_sign_in_started_on_one_server_completes_on_another_with_the_same_key() {
    const KEY: &str = "1oJKe4aQ0_2vq8cWmX3y5Z7b9dFhTjLnPrRtVxXzBdE";
    let mut shared = GatewayOptions::default();
    shared.env.push(("CSPS_SECRET_KEY".into(), KEY.into()));
    let Some(w) = world_with(shared.clone()) else {
        return;
    };
    let other = Gateway::start_with(shared).unwrap_or_else(|e| panic!("second server: {e}"));
    let other_ids = configure(&other, &w.emu);
    let stranger = Gateway::start_with(GatewayOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    configure(&stranger, &w.emu);

    let cb = callback_url(&w, Some("alice@contoso.test"));
    let r = http::request(stranger.http, "GET", &cb, None, None).expect("callback");
    assert_error_page(&r, 400, "unknown, already used, or expired");
    let r = http::request(other.http, "GET", &cb, None, None).expect("callback");
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/me?activated=1"));
    let r = other.api("GET", &format!("/api/users/{}", other_ids["alice"]), None);
    let alice = r.json();
    assert_eq!(alice["activated"], true, "{alice}");
    assert_eq!(alice["teams"]["upn"], "alice@contoso.test", "{alice}");
    assert_untouched(&w, "alice");
    // Used once on that server.
    let r = http::request(other.http, "GET", &cb, None, None).expect("callback");
    assert_error_page(&r, 400, "unknown, already used, or expired");
}

/// Every refusal ends on an error page with nothing stored.
#[test]
fn bad_callbacks_are_refused_and_store_nothing() {
    let Some(w) = world() else { return };

    // A state the gateway never issued.
    let r = deliver(&w, "/activate/callback?code=abc&state=made-up");
    assert_error_page(&r, 400, "unknown, already used, or expired");
    let r = deliver(&w, "/activate/callback?code=abc");
    assert_error_page(&r, 400, "unknown, already used, or expired");

    // A refused consent.
    emu_post(
        &w.emu,
        "/test/signin-as",
        &json!({"upn": "erin@contoso.test", "consent": false}),
        204,
    );
    let cb = callback_url(&w, None);
    assert!(cb.contains("error=access_denied"), "{cb}");
    assert_error_page(&deliver(&w, &cb), 400, "declined");
    assert_untouched(&w, "erin");

    // Tampered ID tokens: a forged signature, another nonce, another audience.
    for (how, says) in [
        ("forged", "signature"),
        ("nonce", "nonce"),
        ("audience", "not for the app"),
    ] {
        emu_post(&w.emu, "/test/tamper-id-token", &json!({"how": how}), 204);
        let r = deliver(&w, &callback_url(&w, Some("erin@contoso.test")));
        assert_error_page(&r, 400, says);
        assert_untouched(&w, "erin");
    }

    // A state used twice: the second is refused (the first activates).
    let cb = callback_url(&w, Some("frank@contoso.test"));
    let second_flow = callback_url(&w, Some("frank@contoso.test"));
    assert_eq!(deliver(&w, &cb).status, 303);
    assert_error_page(&deliver(&w, &cb), 400, "unknown, already used, or expired");
    // A code used twice (with a fresh state): refused at the token endpoint.
    let r = w.gw.api(
        "PATCH",
        &format!("/api/users/{}", w.ids["frank"]),
        Some(&json!({"activated": false})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let code_of = |cb: &str| {
        cb.split(['?', '&'])
            .find_map(|p| p.strip_prefix("code="))
            .unwrap_or_default()
            .to_owned()
    };
    let replayed = second_flow.replace(&code_of(&second_flow), &code_of(&cb));
    assert_ne!(replayed, second_flow);
    assert_error_page(&deliver(&w, &replayed), 400, "AADSTS54005");
    assert_untouched(&w, "frank");

    // A user without a SIP account: nothing to activate.
    emu_post(
        &w.emu,
        "/test/users",
        &json!({"upn": "gina@contoso.test"}),
        201,
    );
    let r = deliver(&w, &callback_url(&w, Some("gina@contoso.test")));
    assert_error_page(&r, 404, "No SIP account");

    // Not configured: a page, no redirect.
    w.gw.set_global("SpsAzureApp.ClientId", json!(""));
    let r = http::request(w.gw.http, "GET", "/activate", None, None).expect("GET /activate");
    assert_error_page(&r, 503, "not configured");
    for user in ["alice", "bob", "erin", "frank"] {
        assert_untouched(&w, user);
    }
}
