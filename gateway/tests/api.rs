//! The REST API driven in-process (`tower::ServiceExt::oneshot`, no sockets) over an embedded
//! store in a temporary directory: users, trusted IPs, registrations, access rules, error bodies,
//! the call history with its archive (writer queue) and retention sweep.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use chrono::{Duration, Utc};
use csps::api::{ApiState, router};
use csps::calls::CallRecord;
use csps::calls::archive::{Archive, spawn_sweeper, sweep};
use csps::calls::b2bua::EndReason;
use csps::config::LiveConfig;
use csps::store::embedded::EmbeddedStore;
use csps::store::{CallRecordQuery, EndedCall, HashAlgorithm, Registration, Store};
use csps_sip::digest::{Algorithm, ha1};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

const TOKEN: &str = "test-admin-token-0123456789";
const SERVER: &str = "s1";

struct Harness {
    app: Router,
    store: Arc<dyn Store>,
    config: LiveConfig,
    users_changed: tokio::sync::watch::Receiver<u64>,
    _dir: tempfile::TempDir,
}

/// The router under test.
fn app(state: ApiState) -> Router {
    router(state)
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open_async(dir.path())
            .await
            .expect("open store"),
    );
    let config = LiveConfig::open(Arc::clone(&store), SERVER)
        .await
        .expect("live config");
    // A second server sharing the store.
    let global = store
        .get_config("*")
        .await
        .expect("get")
        .expect("global entry");
    store.put_config("s2", &global).await.expect("put s2");
    let state = ApiState::new(Arc::clone(&store), config.clone(), TOKEN);
    let users_changed = state.users_changed.subscribe();
    Harness {
        app: app(state),
        store,
        config,
        users_changed,
        _dir: dir,
    }
}

/// A request from a loopback peer with a loopback Host; with the break-glass token except for
/// the config APIs (which answer such local requests without credentials).
fn local(method: Method, uri: &str) -> axum::http::request::Builder {
    let b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "127.0.0.1:8080")
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    if uri.starts_with("/api/config/") {
        b
    } else {
        b.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
    }
}

fn json_req(method: Method, uri: &str, body: &Value) -> Request<Body> {
    local(method, uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn empty(method: Method, uri: &str) -> Request<Body> {
    local(method, uri).body(Body::empty()).expect("request")
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts an `application/problem+json` answer with `status`.
    fn problem(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.content_type(), "application/problem+json");
        assert_eq!(self.body["status"], json!(status.as_u16()));
        assert!(self.body["title"].is_string());
        assert!(self.body["type"].is_string());
        self
    }

    /// The `path`s of a 422's `errors`.
    fn error_paths(&self) -> Vec<String> {
        self.problem(StatusCode::UNPROCESSABLE_ENTITY);
        self.body["errors"]
            .as_array()
            .expect("errors array")
            .iter()
            .map(|e| {
                assert!(e["message"].is_string());
                e["path"].as_str().expect("path").to_owned()
            })
            .collect()
    }
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn assert_no_secrets(v: &Value) {
    let s = v.to_string();
    assert!(!s.contains("password"), "{s}");
    assert!(!s.contains("ha1"), "{s}");
    assert!(!s.contains("s3cret-pass"), "{s}");
}

#[tokio::test]
async fn users_create_list_get_patch_delete() {
    let mut h = harness().await;
    let created = send(
        &h.app,
        json_req(
            Method::POST,
            "/api/users",
            &json!({"username": "alice", "password": "s3cret-pass", "display_name": "Alice",
                    "phone_number": "+14255550100"}),
        ),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_no_secrets(&created.body);
    assert!(h.users_changed.has_changed().expect("sender alive"));
    h.users_changed.borrow_and_update();
    let id = created.body["id"].as_str().expect("id").to_owned();
    assert_eq!(created.body["username"], "alice");
    assert_eq!(created.body["domain"], "csps.local");
    assert_eq!(created.body["display_name"], "Alice");
    assert_eq!(created.body["phone_number"], "+14255550100");
    assert_eq!(created.body["enabled"], true);
    assert!(
        created.body["created_at"]
            .as_str()
            .is_some_and(|t| { chrono::DateTime::parse_from_rfc3339(t).is_ok() })
    );

    // HA1s for realm = default domain, both algorithms; no password stored.
    let uid = Uuid::parse_str(&id).expect("uuid");
    let stored = h.store.get_user(uid).await.expect("get").expect("stored");
    assert_eq!(stored.ha1.len(), 2);
    for x in &stored.ha1 {
        assert_eq!(x.realm, "csps.local");
        let alg = match x.algorithm {
            HashAlgorithm::Md5 => Algorithm::Md5,
            HashAlgorithm::Sha256 => Algorithm::Sha256,
        };
        assert_eq!(x.hash, ha1(alg, "alice", "csps.local", "s3cret-pass"));
    }
    assert!(
        !serde_json::to_string(&stored)
            .expect("json")
            .contains("s3cret-pass")
    );

    // Duplicate, case-insensitively: 409.
    send(
        &h.app,
        json_req(
            Method::POST,
            "/api/users",
            &json!({"username": "ALICE", "password": "another-pass", "domain": "CSPS.local"}),
        ),
    )
    .await
    .problem(StatusCode::CONFLICT);

    // Another domain is fine.
    let bob = send(
        &h.app,
        json_req(
            Method::POST,
            "/api/users",
            &json!({"username": "bob", "password": "s3cret-pass", "domain": "sip.example.com"}),
        ),
    )
    .await;
    assert_eq!(bob.status, StatusCode::CREATED);
    let bob_id = bob.body["id"].as_str().expect("id").to_owned();
    let bob_user = h
        .store
        .get_user(Uuid::parse_str(&bob_id).expect("uuid"))
        .await
        .expect("get")
        .expect("bob");
    assert!(bob_user.ha1.iter().all(|x| x.realm == "sip.example.com"));

    let list = send(&h.app, empty(Method::GET, "/api/users")).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body.as_array().map(Vec::len), Some(2));
    assert_no_secrets(&list.body);

    let got = send(&h.app, empty(Method::GET, &format!("/api/users/{id}"))).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, created.body);

    // Merge patch: null clears, absent keeps, a new password recomputes the HA1s.
    let patched = send(
        &h.app,
        local(Method::PATCH, &format!("/api/users/{id}"))
            .header(header::CONTENT_TYPE, "application/merge-patch+json")
            .body(Body::from(
                json!({"display_name": null, "upn": "alice@contoso.com",
                       "password": "new-password-1", "enabled": false})
                .to_string(),
            ))
            .expect("request"),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_no_secrets(&patched.body);
    assert_eq!(patched.body["display_name"], Value::Null);
    assert_eq!(patched.body["upn"], "alice@contoso.com");
    assert_eq!(patched.body["phone_number"], "+14255550100");
    assert_eq!(patched.body["enabled"], false);
    let stored = h.store.get_user(uid).await.expect("get").expect("stored");
    let md5 = stored
        .ha1
        .iter()
        .find(|x| x.algorithm == HashAlgorithm::Md5)
        .expect("md5");
    assert_eq!(
        md5.hash,
        ha1(Algorithm::Md5, "alice", "csps.local", "new-password-1")
    );

    // Renaming needs the password (the HA1s cover the username); with it, it works.
    let paths = send(
        &h.app,
        json_req(
            Method::PATCH,
            &format!("/api/users/{id}"),
            &json!({"username": "alicia"}),
        ),
    )
    .await
    .error_paths();
    assert_eq!(paths, ["password"]);
    let renamed = send(
        &h.app,
        json_req(
            Method::PATCH,
            &format!("/api/users/{id}"),
            &json!({"username": "alicia", "password": "new-password-2"}),
        ),
    )
    .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.body);
    let stored = h.store.get_user(uid).await.expect("get").expect("stored");
    assert!(
        stored
            .ha1
            .iter()
            .any(|x| x.hash == ha1(Algorithm::Sha256, "alicia", "csps.local", "new-password-2"))
    );

    // Bad patches: unknown field, null for a required field, invalid values, not an object.
    let paths = send(
        &h.app,
        json_req(
            Method::PATCH,
            &format!("/api/users/{id}"),
            &json!({"id": "x"}),
        ),
    )
    .await
    .error_paths();
    assert_eq!(paths.len(), 1);
    let paths = send(
        &h.app,
        json_req(
            Method::PATCH,
            &format!("/api/users/{id}"),
            &json!({"username": null, "enabled": null, "activated": null}),
        ),
    )
    .await
    .error_paths();
    assert_eq!(paths, ["username", "enabled", "activated"]);
    let paths = send(
        &h.app,
        json_req(
            Method::PATCH,
            &format!("/api/users/{id}"),
            &json!({"phone_number": "0800", "password": "short"}),
        ),
    )
    .await
    .error_paths();
    assert_eq!(paths, ["password", "phone_number"]);
    send(
        &h.app,
        json_req(Method::PATCH, &format!("/api/users/{id}"), &json!([1, 2])),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY);
    // A rename onto a taken name (other case) conflicts.
    send(
        &h.app,
        json_req(
            Method::PATCH,
            &format!("/api/users/{bob_id}"),
            &json!({"username": "ALICIA", "domain": "csps.local", "password": "whatever-1"}),
        ),
    )
    .await
    .problem(StatusCode::CONFLICT);

    // Delete: 204, then 404.
    h.users_changed.borrow_and_update();
    let del = send(&h.app, empty(Method::DELETE, &format!("/api/users/{id}"))).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert!(h.users_changed.has_changed().expect("sender alive"));
    send(&h.app, empty(Method::GET, &format!("/api/users/{id}")))
        .await
        .problem(StatusCode::NOT_FOUND);
    send(&h.app, empty(Method::DELETE, &format!("/api/users/{id}")))
        .await
        .problem(StatusCode::NOT_FOUND);
    send(
        &h.app,
        json_req(
            Method::PATCH,
            &format!("/api/users/{id}"),
            &json!({"enabled": true}),
        ),
    )
    .await
    .problem(StatusCode::NOT_FOUND);
    send(&h.app, empty(Method::GET, "/api/users/not-a-uuid"))
        .await
        .problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn user_validation_is_422_with_paths() {
    let h = harness().await;
    let cases = [
        (
            json!({"username": "", "password": "s3cret-pass"}),
            vec!["username"],
        ),
        (
            json!({"username": "a b", "password": "s3cret-pass"}),
            vec!["username"],
        ),
        (
            json!({"username": "a@b", "password": "s3cret-pass"}),
            vec!["username"],
        ),
        (
            json!({"username": "alice", "password": "short"}),
            vec!["password"],
        ),
        (
            json!({"username": "alice", "password": "s3cret-pass", "phone_number": "12345"}),
            vec!["phone_number"],
        ),
        (
            json!({"username": "alice", "password": "s3cret-pass", "domain": "bad domain"}),
            vec!["domain"],
        ),
        (
            json!({"username": "alice", "password": "s3cret-pass", "upn": "nobody"}),
            vec!["upn"],
        ),
        (
            json!({"username": "", "password": "x", "phone_number": "+0"}),
            vec!["username", "password", "phone_number"],
        ),
        // Wrong shapes: the path of the failing field.
        (
            json!({"username": 5, "password": "s3cret-pass"}),
            vec!["username"],
        ),
        (json!({"username": "alice"}), vec![""]),
        (
            json!({"username": "alice", "password": "s3cret-pass", "admin": true}),
            vec!["admin"],
        ),
    ];
    for (body, want) in cases {
        let r = send(&h.app, json_req(Method::POST, "/api/users", &body)).await;
        assert_eq!(r.error_paths(), want, "{body}");
    }
    let list = send(&h.app, empty(Method::GET, "/api/users")).await;
    assert_eq!(list.body, json!([]));
}

#[tokio::test]
async fn malformed_bodies_are_problems() {
    let h = harness().await;
    let raw = |ct: Option<&str>, body: &'static str| {
        let mut b = local(Method::POST, "/api/users");
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Body::from(body)).expect("request")
    };
    send(&h.app, raw(Some("application/json"), "{\"username\": "))
        .await
        .problem(StatusCode::BAD_REQUEST);
    send(&h.app, raw(Some("application/json"), "not json"))
        .await
        .problem(StatusCode::BAD_REQUEST);
    send(&h.app, raw(Some("application/json"), ""))
        .await
        .problem(StatusCode::BAD_REQUEST);
    send(&h.app, raw(Some("application/json"), "{} trailing"))
        .await
        .problem(StatusCode::BAD_REQUEST);
    send(&h.app, raw(Some("application/json"), "[]"))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    // No JSON content type (a cross-site form post): 415.
    send(&h.app, raw(None, "{}"))
        .await
        .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    send(&h.app, raw(Some("text/plain"), "{}"))
        .await
        .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let patch = local(Method::PATCH, &format!("/api/users/{}", Uuid::new_v4()))
        .header(header::CONTENT_TYPE, "application/merge-patch+json")
        .body(Body::from("{oops"))
        .expect("request");
    send(&h.app, patch).await.problem(StatusCode::BAD_REQUEST);
    let post = local(Method::POST, "/api/config/s1/trusted-ips")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"cidr\": 10}"))
        .expect("request");
    assert_eq!(send(&h.app, post).await.error_paths(), ["cidr"]);
    // Unknown paths and methods are problems too.
    send(&h.app, empty(Method::GET, "/api/nothing-here"))
        .await
        .problem(StatusCode::NOT_FOUND);
    send(&h.app, empty(Method::PUT, "/api/users"))
        .await
        .problem(StatusCode::METHOD_NOT_ALLOWED);
}

async fn trusted(h: &Harness, server: &str) -> Vec<String> {
    let r = send(
        &h.app,
        empty(Method::GET, &format!("/api/config/{server}/trusted-ips")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    serde_json::from_value(r.body).expect("array of strings")
}

#[tokio::test]
async fn trusted_ips_per_server_and_global() {
    let h = harness().await;
    assert!(trusted(&h, "s1").await.is_empty());

    // A server change touches that server's entry only, and the running server applies it.
    let r = send(
        &h.app,
        json_req(
            Method::POST,
            "/api/config/s1/trusted-ips",
            &json!({"cidr": "10.1.2.3/8"}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body, json!(["10.0.0.0/8"]));
    assert_eq!(trusted(&h, "s1").await, ["10.0.0.0/8"]);
    assert!(trusted(&h, "s2").await.is_empty());
    assert!(trusted(&h, "*").await.is_empty());
    assert_eq!(
        h.config.settings().trusted_ips,
        vec!["10.0.0.0/8".parse::<ipnet::IpNet>().expect("net")]
    );

    // Idempotent; a single address becomes /32.
    let again = send(
        &h.app,
        json_req(
            Method::POST,
            "/api/config/s1/trusted-ips",
            &json!({"cidr": "10.0.0.0/8"}),
        ),
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED);
    send(
        &h.app,
        json_req(
            Method::POST,
            "/api/config/s1/trusted-ips",
            &json!({"cidr": "192.0.2.7"}),
        ),
    )
    .await;
    assert_eq!(trusted(&h, "s1").await, ["10.0.0.0/8", "192.0.2.7/32"]);

    // Invalid ranges: 422 on `cidr`.
    for bad in ["10.0.0.0/33", "nonsense", ""] {
        let r = send(
            &h.app,
            json_req(
                Method::POST,
                "/api/config/s1/trusted-ips",
                &json!({"cidr": bad}),
            ),
        )
        .await;
        assert_eq!(r.error_paths(), ["cidr"], "{bad}");
    }

    // Delete: 204, then 404; the query is required and validated.
    let del = send(
        &h.app,
        empty(Method::DELETE, "/api/config/s1/trusted-ips?cidr=192.0.2.7"),
    )
    .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    send(
        &h.app,
        empty(
            Method::DELETE,
            "/api/config/s1/trusted-ips?cidr=192.0.2.7%2F32",
        ),
    )
    .await
    .problem(StatusCode::NOT_FOUND);
    send(&h.app, empty(Method::DELETE, "/api/config/s1/trusted-ips"))
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    send(
        &h.app,
        empty(Method::DELETE, "/api/config/s1/trusted-ips?cidr=x"),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(trusted(&h, "s1").await, ["10.0.0.0/8"]);

    // A global change writes the global entry and overrides every server's value.
    let r = send(
        &h.app,
        json_req(
            Method::POST,
            "/api/config/*/trusted-ips",
            &json!({"cidr": "2001:db8::/32"}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for server in ["*", "s1", "s2"] {
        assert_eq!(trusted(&h, server).await, ["2001:db8::/32"], "{server}");
    }
    assert_eq!(
        h.config.settings().trusted_ips,
        vec!["2001:db8::/32".parse::<ipnet::IpNet>().expect("net")]
    );
    // The other leaves of a server entry are left alone.
    let s2 = h.store.get_config("s2").await.expect("get").expect("s2");
    assert_eq!(s2["Data"]["SipConfig"]["DefaultSipDomain"], "csps.local");

    // `%2A` is `*` too; a global delete clears every server's value.
    let del = send(
        &h.app,
        empty(
            Method::DELETE,
            "/api/config/%2A/trusted-ips?cidr=2001:db8::%2F32",
        ),
    )
    .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    for server in ["*", "s1", "s2"] {
        assert!(trusted(&h, server).await.is_empty(), "{server}");
    }
    assert!(h.config.settings().trusted_ips.is_empty());

    // Unknown or invalid entry names: 404.
    for server in ["nope", "UPPER", "servers"] {
        send(
            &h.app,
            empty(Method::GET, &format!("/api/config/{server}/trusted-ips")),
        )
        .await
        .problem(StatusCode::NOT_FOUND);
        send(
            &h.app,
            json_req(
                Method::POST,
                &format!("/api/config/{server}/trusted-ips"),
                &json!({"cidr": "10.0.0.0/8"}),
            ),
        )
        .await
        .problem(StatusCode::NOT_FOUND);
    }
}

fn reg(aor: &str, binding: &str, server: &str, expires_in: i64) -> Registration {
    Registration {
        aor: aor.to_owned(),
        binding: binding.to_owned(),
        contact: format!("<sip:{binding}@192.0.2.10:5060>"),
        server: server.to_owned(),
        transport: "udp".to_owned(),
        source: "192.0.2.10:5060".to_owned(),
        local: "192.0.2.1:5060".to_owned(),
        user_agent: Some("Yealink SIP-T46U".to_owned()),
        expires_at: Utc::now() + Duration::seconds(expires_in),
        instance_id: Some("<urn:uuid:00000000-0000-0000-0000-000000000001>".to_owned()),
        reg_id: Some(1),
        call_id: "c1".to_owned(),
        cseq: 1,
        q: None,
        nat: true,
    }
}

#[tokio::test]
async fn registrations_listing_filters_and_expiry() {
    let h = harness().await;
    h.store
        .write_registrations(
            &[
                reg("sip:alice@example.com", "b1", "s1", 600),
                reg("sip:alice@example.com", "b2", "s2", 600),
                reg("sip:bob@example.com", "b3", "s1", 600),
                reg("sip:carol@example.com", "b4", "s1", -5),
            ],
            &[],
        )
        .await
        .expect("write");

    let all = send(&h.app, empty(Method::GET, "/api/registrations")).await;
    assert_eq!(all.status, StatusCode::OK);
    let items = all.body.as_array().expect("bare array");
    assert_eq!(items.len(), 3, "expired bindings are not listed");
    let mut keys: Vec<&str> = items[0]
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "aor",
            "contact",
            "expires_at",
            "instance_id",
            "server",
            "source",
            "transport",
            "user_agent"
        ]
    );
    assert!(
        items[0]["expires_at"]
            .as_str()
            .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
    );

    let s2 = send(&h.app, empty(Method::GET, "/api/registrations?server=s2")).await;
    assert_eq!(s2.body.as_array().map(Vec::len), Some(1));
    assert_eq!(s2.body[0]["contact"], "<sip:b2@192.0.2.10:5060>");

    let alice = send(
        &h.app,
        empty(
            Method::GET,
            "/api/registrations?aor=sip%3Aalice%40example.com",
        ),
    )
    .await;
    assert_eq!(alice.body.as_array().map(Vec::len), Some(2));
    // Without a scheme, `sip:` is assumed.
    let alice_s1 = send(
        &h.app,
        empty(
            Method::GET,
            "/api/registrations?aor=alice@example.com&server=s1",
        ),
    )
    .await;
    assert_eq!(alice_s1.body.as_array().map(Vec::len), Some(1));
    let carol = send(
        &h.app,
        empty(Method::GET, "/api/registrations?aor=sip:carol@example.com"),
    )
    .await;
    assert_eq!(carol.body, json!([]));
}

#[tokio::test]
async fn access_rules() {
    let h = harness().await;
    let from = |peer: SocketAddr, host: Option<&str>| {
        let mut b = Request::builder()
            .method(Method::GET)
            .uri("/api/config/servers")
            .extension(ConnectInfo(peer));
        if let Some(host) = host {
            b = b.header(header::HOST, host);
        }
        b
    };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 40000));
    let remote = SocketAddr::from(([192, 0, 2, 1], 40000));
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 40000));

    let ok = |r: Reply| assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let denied = |r: Reply| {
        r.problem(StatusCode::UNAUTHORIZED);
        assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    };

    // Local: loopback peer and loopback Host.
    for host in [
        "127.0.0.1:8080",
        "localhost",
        "localhost:8080",
        "[::1]:8080",
        "127.0.0.2",
    ] {
        ok(send(
            &h.app,
            from(loopback, Some(host)).body(Body::empty()).expect("req"),
        )
        .await);
    }
    ok(send(
        &h.app,
        from(v6, Some("[::1]:8080"))
            .body(Body::empty())
            .expect("req"),
    )
    .await);

    // Other APIs need credentials even from loopback.
    for uri in ["/api/users", "/api/registrations", "/api/audit"] {
        denied(
            send(
                &h.app,
                Request::builder()
                    .uri(uri)
                    .header(header::HOST, "127.0.0.1:8080")
                    .extension(ConnectInfo(loopback))
                    .body(Body::empty())
                    .expect("req"),
            )
            .await,
        );
    }
    // A bearer token that is not the break-glass one is a token of the admin app, which is not
    // configured here: 401, even for a config API from loopback.
    denied(
        send(
            &h.app,
            from(loopback, Some("127.0.0.1:8080"))
                .header(
                    header::AUTHORIZATION,
                    "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
                )
                .body(Body::empty())
                .expect("req"),
        )
        .await,
    );

    // Remote peer, even with a loopback Host.
    denied(
        send(
            &h.app,
            from(remote, Some("127.0.0.1:8080"))
                .body(Body::empty())
                .expect("req"),
        )
        .await,
    );
    // Loopback peer but relayed by a proxy.
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
    ] {
        denied(
            send(
                &h.app,
                from(loopback, Some("127.0.0.1:8080"))
                    .header(name, value)
                    .body(Body::empty())
                    .expect("req"),
            )
            .await,
        );
    }
    // DNS rebinding: a loopback peer with a foreign Host; or no Host at all.
    for host in [
        Some("evil.example:8080"),
        Some("127.0.0.1.evil.example"),
        None,
    ] {
        denied(
            send(
                &h.app,
                from(loopback, host).body(Body::empty()).expect("req"),
            )
            .await,
        );
    }
    // A cross-site page.
    denied(
        send(
            &h.app,
            from(loopback, Some("127.0.0.1:8080"))
                .header(header::ORIGIN, "https://evil.example")
                .body(Body::empty())
                .expect("req"),
        )
        .await,
    );
    ok(send(
        &h.app,
        from(loopback, Some("127.0.0.1:8080"))
            .header(header::ORIGIN, "http://127.0.0.1:8080")
            .body(Body::empty())
            .expect("req"),
    )
    .await);
    // No peer address known: refused.
    denied(
        send(
            &h.app,
            Request::builder()
                .uri("/api/config/servers")
                .header(header::HOST, "127.0.0.1")
                .body(Body::empty())
                .expect("req"),
        )
        .await,
    );

    // The bearer token works from loopback, whatever the Host or proxy headers.
    let bearer = format!("Bearer {TOKEN}");
    ok(send(
        &h.app,
        from(loopback, Some("gateway.example.com"))
            .header(header::AUTHORIZATION, &bearer)
            .header("x-forwarded-for", "203.0.113.9")
            .body(Body::empty())
            .expect("req"),
    )
    .await);
    // ... but not from a remote peer, and a wrong token is refused even locally.
    denied(
        send(
            &h.app,
            from(remote, Some("gateway.example.com"))
                .header(header::AUTHORIZATION, &bearer)
                .body(Body::empty())
                .expect("req"),
        )
        .await,
    );
    denied(
        send(
            &h.app,
            from(loopback, Some("127.0.0.1:8080"))
                .header(header::AUTHORIZATION, "Bearer wrong-token")
                .body(Body::empty())
                .expect("req"),
        )
        .await,
    );

    // Every protected route is guarded (the write ones before any body is read).
    for (method, uri) in [
        (Method::POST, "/api/users"),
        (Method::GET, "/api/registrations"),
        (Method::GET, "/api/config/s1/trusted-ips"),
        (Method::POST, "/api/config/*/trusted-ips"),
        (Method::DELETE, "/api/config/s1/trusted-ips?cidr=10.0.0.0/8"),
    ] {
        let r = send(
            &h.app,
            Request::builder()
                .method(method)
                .uri(uri)
                .header(header::HOST, "127.0.0.1:8080")
                .header(header::CONTENT_TYPE, "application/json")
                .extension(ConnectInfo(remote))
                .body(Body::from("{}"))
                .expect("req"),
        )
        .await;
        denied(r);
    }

    // `GET /api/version` is open to everyone.
    let v = send(
        &h.app,
        Request::builder()
            .uri("/api/version")
            .header(header::HOST, "gateway.example.com")
            .extension(ConnectInfo(remote))
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(v.status, StatusCode::OK);
    assert_eq!(v.body["version"], env!("CARGO_PKG_VERSION"));
    assert!(v.body["git_commit"].is_string());
    assert!(v.body["build_date"].is_string());
    assert!(v.body["components"]["redb"].is_string());
    assert!(v.body["components"]["axum"].is_string());
}

#[tokio::test]
async fn mock_connect_info_layer_is_honoured() {
    let h = harness().await;
    let app = h
        .app
        .clone()
        .layer(axum::extract::connect_info::MockConnectInfo(
            SocketAddr::from(([127, 0, 0, 1], 1)),
        ));
    let r = send(
        &app,
        Request::builder()
            .uri("/api/config/servers")
            .header(header::HOST, "localhost:8080")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

/// `/api/me/…` is the end user's (a token of `Data.SpsAzureApp`, checked end to end with real
/// tokens in `tests/tests/access.rs`): without a token, with the break-glass token (nobody's) or
/// with a token while the end-user app is not configured, it answers 401 and changes nothing.
#[tokio::test]
async fn me_needs_an_end_user_token() {
    let h = harness().await;
    let r = send(
        &h.app,
        json_req(
            Method::POST,
            "/api/users",
            &json!({"username": "erin", "password": "erin-secret-1", "upn": "erin@contoso.test"}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    let denied = |r: Reply, why: &str| {
        r.problem(StatusCode::UNAUTHORIZED);
        assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
        let detail = r.body["detail"].as_str().unwrap_or("");
        assert!(detail.contains(why), "{detail}");
    };
    for (method, uri) in [
        (Method::GET, "/api/me"),
        (Method::DELETE, "/api/me/activation"),
    ] {
        let bare = |m: Method| {
            Request::builder()
                .method(m)
                .uri(uri)
                .header(header::HOST, "127.0.0.1:8080")
                .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
        };
        denied(
            send(
                &h.app,
                bare(method.clone()).body(Body::empty()).expect("req"),
            )
            .await,
            "needs a bearer token of the end-user app",
        );
        denied(
            send(&h.app, empty(method.clone(), uri)).await,
            "break-glass",
        );
        denied(
            send(
                &h.app,
                bare(method.clone())
                    .header(header::AUTHORIZATION, "Bearer eyJhbGciOiJSUzI1NiJ9.e30.x")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await,
            "Data.SpsAzureApp",
        );
    }
    let r = send(&h.app, empty(Method::GET, &format!("/api/users/{id}"))).await;
    assert_eq!(r.body["activated"], false, "{}", r.body);
}

/// An ended call of `server`, `caller` → `callee`, that ended `ago` before now.
fn ended(server: &str, id: u64, caller: &str, callee: &str, ago: Duration) -> EndedCall {
    let ended_at = Utc::now() - ago;
    EndedCall {
        record_id: Uuid::new_v4(),
        server: server.to_owned(),
        id,
        call_id: format!("{server}-{id}@192.0.2.10"),
        caller: caller.to_owned(),
        callee: callee.to_owned(),
        started_at: ended_at - Duration::seconds(20),
        answered_at: Some(ended_at - Duration::seconds(15)),
        ended_at,
        talk_secs: 15,
        status: Some(200),
        end_reason: Some("caller_hung_up".to_owned()),
        emergency: false,
        messages: 14,
        messages_dropped: 0,
        media: Vec::new(),
    }
}

/// The `server`/`id` pairs of a history page, in order.
fn calls_of(page: &Value) -> Vec<String> {
    page.as_array()
        .expect("bare array")
        .iter()
        .map(|c| format!("{}{}", c["server"].as_str().unwrap_or("?"), c["id"]))
        .collect()
}

/// `GET /api/calls/history` reads the store: every server's records, latest end first, in the
/// stored shape; `limit`/`offset`/`before` page without gaps, `since` and `user` filter, and
/// bad parameters are 400 problems.
#[tokio::test]
async fn call_history_pages_and_filters_the_stored_records() {
    let h = harness().await;
    let m = Duration::minutes;
    let calls = [
        ended("s1", 1, "sip:alice@csps.local", "sip:bob@csps.local", m(50)),
        ended("s2", 1, "sip:bob@csps.local", "sip:carol@csps.local", m(40)),
        ended(
            "s1",
            2,
            "sip:carol@csps.local",
            "sip:Alice@csps.local",
            m(30),
        ),
        ended(
            "s2",
            2,
            "sip:dave@csps.local",
            "sip:+15551230000@csps.local",
            m(20),
        ),
        ended("s1", 3, "sip:erin@csps.local", "sip:bob@csps.local", m(10)),
    ];
    h.store.put_call_records(&calls).await.expect("put");
    let get = |uri: String| {
        let app = h.app.clone();
        async move { send(&app, empty(Method::GET, &uri)).await }
    };
    let all = get("/api/calls/history".into()).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(calls_of(&all.body), ["s13", "s22", "s12", "s21", "s11"]);
    assert_eq!(all.body[4], serde_json::to_value(&calls[0]).expect("json"));
    assert_eq!(all.body[0]["record_id"], calls[4].record_id.to_string());

    // Pages: by offset, and by the cursor (the last one's ended_at).
    let p1 = get("/api/calls/history?limit=2".into()).await;
    assert_eq!(calls_of(&p1.body), ["s13", "s22"]);
    let p2 = get("/api/calls/history?limit=2&offset=2".into()).await;
    assert_eq!(calls_of(&p2.body), ["s12", "s21"]);
    let cursor = p1.body[1]["ended_at"].as_str().expect("ended_at");
    let p2c = get(format!("/api/calls/history?limit=2&before={cursor}")).await;
    assert_eq!(p2c.status, StatusCode::OK, "{}", p2c.body);
    assert_eq!(
        p2c.body, p2.body,
        "the cursor and the offset give the same page"
    );
    // Filters.
    let since = (calls[2].ended_at).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let recent = get(format!("/api/calls/history?since={since}")).await;
    assert_eq!(calls_of(&recent.body), ["s13", "s22", "s12"]);
    let alice = get("/api/calls/history?user=ALICE".into()).await;
    assert_eq!(calls_of(&alice.body), ["s12", "s11"]);
    let number = get("/api/calls/history?user=%2B1555".into()).await;
    assert_eq!(calls_of(&number.body), ["s22"]);
    let nobody = get("/api/calls/history?user=mallory".into()).await;
    assert_eq!(nobody.body, json!([]));

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "offset=100001",
        "offset=-3",
        "before=yesterday",
        "since=2026-13-01T00:00:00Z",
        &format!("user={}", "x".repeat(257)),
    ] {
        get(format!("/api/calls/history?{bad}"))
            .await
            .problem(StatusCode::BAD_REQUEST);
    }
    // The largest page is allowed.
    let max = get("/api/calls/history?limit=1000&offset=100000".into()).await;
    assert_eq!(max.status, StatusCode::OK);
    assert_eq!(max.body, json!([]));
}

/// The archive: ended calls reach the store without the caller ever waiting (`keep` is a
/// `try_send`); a full queue drops and counts, and the writer stores the rest with this
/// server's name and a fresh record id. Runs on one thread, so the writer cannot drain the
/// queue between the `keep`s.
#[tokio::test]
async fn ended_calls_are_archived_and_a_full_queue_drops_and_counts() {
    let h = harness().await;
    let metrics = csps::metrics::CallMetrics::default();
    let archive = Archive::with_queue(Arc::clone(&h.store), SERVER, metrics.clone(), 2);
    let call = |id: u64, ended_at| CallRecord {
        id,
        call_id: format!("c{id}"),
        caller: "sip:alice@csps.local".into(),
        callee: "sip:bob@csps.local".into(),
        started_at: Utc::now() - Duration::seconds(5),
        answered_at: None,
        ended_at,
        talk_secs: 0,
        status: Some(487),
        end_reason: Some(EndReason::Cancelled),
        emergency: false,
        messages: 6,
        messages_dropped: 0,
        media: Vec::new(),
    };
    assert!(archive.stored(&call(9, None)).is_none(), "a running call");
    let stored: Vec<EndedCall> = (1..=3)
        .map(|id| archive.stored(&call(id, Some(Utc::now()))).expect("ended"))
        .collect();
    assert_eq!(stored[0].server, SERVER);
    assert_eq!(stored[0].end_reason.as_deref(), Some("cancelled"));
    assert_ne!(stored[0].record_id, stored[1].record_id);
    assert!(archive.keep(stored[0].clone()));
    assert!(archive.keep(stored[1].clone()));
    assert!(!archive.keep(stored[2].clone()), "the queue of 2 is full");
    assert_eq!(metrics.records_dropped.get(), 1);
    assert!(archive.flush(std::time::Duration::from_secs(10)).await);
    let listed = h
        .store
        .list_call_records(&CallRecordQuery::default())
        .await
        .expect("list");
    let mut ids: Vec<u64> = listed.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    assert_eq!(metrics.records_written.get(), 2);
    // Room again.
    assert!(archive.keep(stored[2].clone()));
    assert!(archive.flush(std::time::Duration::from_secs(10)).await);
    assert_eq!(metrics.records_written.get(), 3);
    assert_eq!(metrics.records_failed.get(), 0);
}

/// Retention: the sweep runs at start with `Data.System.CallRecordDays` (30 by default) and
/// again as soon as the leaf changes through the API, without a restart; records are written
/// with old end times through the store API (nobody waits for days).
#[tokio::test]
async fn call_records_older_than_call_record_days_are_swept() {
    let h = harness().await;
    let metrics = csps::metrics::CallMetrics::default();
    let d = Duration::days;
    let calls = [
        ended("s1", 1, "sip:a@x", "sip:b@x", d(40)),
        ended("s2", 2, "sip:a@x", "sip:b@x", d(10)),
        ended("s1", 3, "sip:a@x", "sip:b@x", Duration::hours(1)),
    ];
    h.store.put_call_records(&calls).await.expect("put");
    assert_eq!(h.config.settings().call_record_days, 30);
    let sweeper = spawn_sweeper(Arc::clone(&h.store), h.config.subscribe(), metrics.clone());
    let ids = || async {
        let mut ids: Vec<u64> = h
            .store
            .list_call_records(&CallRecordQuery::default())
            .await
            .expect("list")
            .iter()
            .map(|c| c.id)
            .collect();
        ids.sort_unstable();
        ids
    };
    let until = |want: Vec<u64>| async move {
        for _ in 0..200 {
            if ids().await == want {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        false
    };
    // The sweeper counts a sweep once the store has deleted: the count may trail the list.
    let counted = |n: u64| {
        let metrics = metrics.clone();
        async move {
            for _ in 0..200 {
                if metrics.records_swept.get() == n {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            false
        }
    };
    assert!(until(vec![2, 3]).await, "swept at start: {:?}", ids().await);
    assert!(counted(1).await, "swept {}", metrics.records_swept.get());
    let put = send(
        &h.app,
        json_req(
            Method::PUT,
            "/api/config/*/Data.System.CallRecordDays",
            &json!(5),
        ),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert!(
        until(vec![3]).await,
        "swept after the change: {:?}",
        ids().await
    );
    assert!(counted(2).await, "swept {}", metrics.records_swept.get());
    // 0 is not a number of days (1–3650): refused, nothing else is swept.
    let zero = send(
        &h.app,
        json_req(
            Method::PUT,
            "/api/config/*/Data.System.CallRecordDays",
            &json!(0),
        ),
    )
    .await;
    zero.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(ids().await, [3]);
    // The direct sweep with a simulated clock: 5 days on, the last one goes too.
    let later = Utc::now() + d(5);
    assert_eq!(sweep(h.store.as_ref(), 5, later).await.expect("sweep"), 1);
    assert!(ids().await.is_empty());
    sweeper.abort();
}
