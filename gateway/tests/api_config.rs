//! The configuration REST API driven in-process (`tower::ServiceExt::oneshot`) over an embedded
//! store in a temporary directory, from a loopback peer (`MockConnectInfo`): servers and paths,
//! whole entries and leaves, global versus server writes, validation, secrets, the audit log and
//! the live reload.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use csps::api::{ApiState, router};
use csps::config::{LEAVES, LiveConfig, SrtpMode, leaf};
use csps::store::Store;
use csps::store::embedded::EmbeddedStore;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "test-admin-token-0123456789";

struct Harness {
    app: Router,
    store: Arc<dyn Store>,
    config: LiveConfig,
    _dir: tempfile::TempDir,
}

/// Servers `a` (this one) and `b` sharing one store.
async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open_async(dir.path())
            .await
            .expect("open store"),
    );
    let config = LiveConfig::open(Arc::clone(&store), "a")
        .await
        .expect("live config");
    LiveConfig::open(Arc::clone(&store), "b")
        .await
        .expect("second server");
    let state = ApiState::new(Arc::clone(&store), config.clone(), TOKEN);
    let app = router(state).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    Harness {
        app,
        store,
        config,
        _dir: dir,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        &self.body
    }

    fn problem(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(ct, "application/problem+json");
        assert_eq!(self.body["status"], json!(status.as_u16()));
        &self.body
    }

    fn error_paths(&self) -> Vec<String> {
        let b = self.problem(StatusCode::UNPROCESSABLE_ENTITY);
        b["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| {
                assert!(e["message"].is_string(), "{e}");
                e["path"].as_str().expect("path").to_owned()
            })
            .collect()
    }
}

impl Harness {
    async fn call(&self, method: Method, uri: &str, body: Option<&Value>, bearer: bool) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "127.0.0.1:8080");
        // Only the config APIs answer local requests without credentials.
        if bearer || !uri.starts_with("/api/config/") {
            b = b.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        }
        .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
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

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None, false).await
    }

    async fn put(&self, uri: &str, body: &Value) -> Reply {
        self.call(Method::PUT, uri, Some(body), false).await
    }

    async fn leaf(&self, server: &str, path: &str) -> Value {
        self.get(&format!("/api/config/{server}/{path}"))
            .await
            .ok()
            .clone()
    }

    async fn stored(&self, server: &str, path: &str) -> Option<Value> {
        let e = self
            .store
            .get_config(server)
            .await
            .expect("get")
            .expect("entry");
        leaf(&e, path).cloned()
    }
}

#[tokio::test]
async fn servers_and_paths() {
    let h = harness().await;
    assert_eq!(*h.get("/api/config/servers").await.ok(), json!(["a", "b"]));
    let paths = h.get("/api/config/paths").await.ok().clone();
    let rows = paths.as_array().expect("array");
    assert_eq!(rows.len(), LEAVES.len());
    for l in LEAVES {
        let row = rows
            .iter()
            .find(|r| r["path"] == json!(l.path))
            .unwrap_or_else(|| panic!("{} missing", l.path));
        assert_eq!(row["type"], json!(l.json_type()));
        assert_eq!(row["default"], l.default.value());
    }
    for p in [
        "Data.System.MinRtpPort",
        "Data.System.MaxRtpPort",
        "Data.System.SwaggerRemote",
        "Data.System.CallRecordDays",
        "Data.SpsAzureApp.Tenant",
        "Data.SpsAzureApp.ClientId",
        "Data.SpsAzureApp.ClientSecret",
        "Data.SpsAzureApp.RedirectUri",
        "Data.SpsAzureApp.Authority",
        "Data.AdminAzureApp.Tenant",
        "Data.AdminAzureApp.ClientId",
        "Data.AdminAzureApp.ClientSecret",
        "Data.AdminAzureApp.AdminGroupId",
        "Data.AdminAzureApp.Authority",
        "Data.SipConfig.DefaultSipDomain",
        "Data.SipConfig.Use8KHz",
        "Data.SipConfig.CertificateThumbPrint",
        "Data.SipConfig.Srtp",
        "Data.SipConfig.TrustedIps",
        "Data.SipConfig.AuthFailureLimit",
        "Data.SipConfig.MinExpires",
        "Data.SipConfig.MaxExpires",
        "Data.SipConfig.NatExpires",
        "Data.SipConfig.DigestAlgorithms",
        "Data.SipConfig.EmergencyNumbers",
    ] {
        assert!(rows.iter().any(|r| r["path"] == json!(p)), "{p}");
    }
    let srtp = rows
        .iter()
        .find(|r| r["path"] == json!("Data.SipConfig.Srtp"))
        .expect("srtp");
    assert_eq!(srtp["enum"], json!(["Disabled", "Supported", "Required"]));
}

#[tokio::test]
async fn whole_entry_get_has_defaults_and_null_secrets() {
    let h = harness().await;
    // An entry stored without most leaves (an older version) still shows every leaf.
    h.store
        .put_config(
            "b",
            &json!({"Data": {"SpsAzureApp": {"ClientSecret": "s3cret-value"}}}),
        )
        .await
        .expect("put");
    for server in ["a", "b", "*", "%2A"] {
        let e = h.get(&format!("/api/config/{server}")).await.ok().clone();
        assert_eq!(e["Data"]["System"]["MinRtpPort"], json!(20000), "{server}");
        assert_eq!(e["Data"]["System"]["MaxRtpPort"], json!(30000));
        assert_eq!(e["Data"]["System"]["SwaggerRemote"], json!(false));
        assert_eq!(e["Data"]["System"]["CallRecordDays"], json!(30));
        assert_eq!(
            e["Data"]["SpsAzureApp"]["Authority"],
            json!("https://login.microsoftonline.com")
        );
        assert_eq!(e["Data"]["SipConfig"]["Srtp"], json!("Disabled"));
        assert_eq!(e["Data"]["SipConfig"]["Use8KHz"], json!(false));
        assert_eq!(
            e["Data"]["SipConfig"]["EmergencyNumbers"],
            json!(["112", "911", "999"])
        );
        assert_eq!(e["Data"]["SipConfig"]["DigestAlgorithms"], json!(["MD5"]));
        assert_eq!(e["Data"]["SpsAzureApp"]["ClientSecret"], Value::Null);
        assert_eq!(e["Data"]["AdminAzureApp"]["ClientSecret"], Value::Null);
        assert!(!e.to_string().contains("s3cret"));
    }
    assert_eq!(
        h.leaf("b", "Data.SpsAzureApp.ClientSecret").await,
        Value::Null
    );
}

fn full_entry() -> Value {
    json!({"Data": {
        "System": {"MinRtpPort": 40000, "MaxRtpPort": 40100, "SwaggerRemote": true, "CallRecordDays": 7},
        "SpsAzureApp": {
            "Tenant": "contoso.onmicrosoft.com",
            "ClientId": "11111111-2222-3333-4444-555555555555",
            "ClientSecret": "sps-s3cret",
            "RedirectUri": "https://csps.contoso.com/auth",
            "Authority": "https://login.microsoftonline.com"
        },
        "AdminAzureApp": {
            "Tenant": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "ClientId": "11111111-2222-3333-4444-666666666666",
            "ClientSecret": "admin-s3cret",
            "AdminGroupId": "11111111-2222-3333-4444-777777777777",
            "Authority": "https://login.microsoftonline.com"
        },
        "SipConfig": {
            "DefaultSipDomain": "sip.contoso.com",
            "Use8KHz": true,
            "CertificateThumbPrint": "aabbccddeeff00112233445566778899aabbccdd",
            "Srtp": "Required",
            "TrustedIps": ["10.0.0.0/8"],
            "AuthFailureLimit": 3,
            "MinExpires": 120,
            "MaxExpires": 1800,
            "NatExpires": 60,
            "DigestAlgorithms": ["SHA-256", "MD5"],
            "EmergencyNumbers": ["112"]
        }
    }})
}

#[tokio::test]
async fn put_whole_entry_validates_and_keeps_secrets() {
    let h = harness().await;
    let r = h.put("/api/config/a", &full_entry()).await;
    let shown = r.ok().clone();
    assert_eq!(shown["Data"]["SipConfig"]["Srtp"], json!("Required"));
    assert_eq!(
        shown["Data"]["SipConfig"]["CertificateThumbPrint"],
        json!("AABBCCDDEEFF00112233445566778899AABBCCDD")
    );
    assert_eq!(shown["Data"]["SpsAzureApp"]["ClientSecret"], Value::Null);
    assert!(!shown.to_string().contains("s3cret"));
    assert_eq!(
        h.stored("a", "Data.SpsAzureApp.ClientSecret").await,
        Some(json!("sps-s3cret"))
    );
    // The server write stays local.
    assert_eq!(h.leaf("b", "Data.SipConfig.Srtp").await, json!("Disabled"));
    assert_eq!(h.leaf("*", "Data.SipConfig.Srtp").await, json!("Disabled"));

    // GET-modify-PUT: the null secrets keep the stored ones.
    let mut again = h.get("/api/config/a").await.ok().clone();
    again["Data"]["System"]["CallRecordDays"] = json!(9);
    h.put("/api/config/a", &again).await.ok();
    assert_eq!(
        h.stored("a", "Data.SpsAzureApp.ClientSecret").await,
        Some(json!("sps-s3cret"))
    );
    assert_eq!(
        h.stored("a", "Data.AdminAzureApp.ClientSecret").await,
        Some(json!("admin-s3cret"))
    );
    assert_eq!(h.leaf("a", "Data.System.CallRecordDays").await, json!(9));

    // Bad values: 422 naming each path; nothing is written.
    let mut bad = full_entry();
    bad["Data"]["System"]["MinRtpPort"] = json!(80);
    bad["Data"]["SipConfig"]["Srtp"] = json!("Sometimes");
    bad["Data"]["SipConfig"]["TrustedIps"] = json!(["10.0.0.0/8", "not-a-range"]);
    bad["Data"]["SipConfig"]["DigestAlgorithms"] = json!([]);
    bad["Data"]["SipConfig"]["Use8KHz"] = json!("yes");
    bad["Data"]["SpsAzureApp"]["RedirectUri"] = json!("ftp://x");
    bad["Data"]["SipConfig"]["Bogus"] = json!(1);
    bad["Data"]["Nope"] = json!({});
    bad["Extra"] = json!(1);
    let mut paths = h.put("/api/config/a", &bad).await.error_paths();
    paths.sort();
    assert_eq!(
        paths,
        [
            "Data.Nope",
            "Data.SipConfig.Bogus",
            "Data.SipConfig.DigestAlgorithms",
            "Data.SipConfig.Srtp",
            "Data.SipConfig.TrustedIps",
            "Data.SipConfig.Use8KHz",
            "Data.SpsAzureApp.RedirectUri",
            "Data.System.MinRtpPort",
            "Extra",
        ]
    );
    assert_eq!(h.leaf("a", "Data.System.CallRecordDays").await, json!(9));

    // Cross-field rules: MinRtpPort < MaxRtpPort, MinExpires <= MaxExpires.
    let mut cross = full_entry();
    cross["Data"]["System"]["MinRtpPort"] = json!(40100);
    cross["Data"]["SipConfig"]["MinExpires"] = json!(1801);
    let mut paths = h.put("/api/config/a", &cross).await.error_paths();
    paths.sort();
    assert_eq!(
        paths,
        [
            "Data.SipConfig.MaxExpires",
            "Data.SipConfig.MinExpires",
            "Data.System.MaxRtpPort",
            "Data.System.MinRtpPort",
        ]
    );
    cross["Data"]["SipConfig"]["MinExpires"] = json!(1800);
    cross["Data"]["System"]["MinRtpPort"] = json!(40099);
    h.put("/api/config/a", &cross).await.ok();

    // Not an object; unknown server; reserved names.
    assert_eq!(
        h.put("/api/config/a", &json!([1])).await.error_paths(),
        [""]
    );
    h.put("/api/config/zz", &full_entry())
        .await
        .problem(StatusCode::NOT_FOUND);
    h.get("/api/config/zz").await.problem(StatusCode::NOT_FOUND);
    h.get("/api/config/UPPER")
        .await
        .problem(StatusCode::NOT_FOUND);
    h.put("/api/config/servers", &full_entry())
        .await
        .problem(StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn leaf_get_put_for_each_type() {
    let h = harness().await;
    let cases = [
        ("Data.System.MinRtpPort", json!(21000), json!(21000)),
        ("Data.System.SwaggerRemote", json!(true), json!(true)),
        (
            "Data.SipConfig.DefaultSipDomain",
            json!("SIP.Example.com"),
            json!("sip.example.com"),
        ),
        (
            "Data.SipConfig.Srtp",
            json!("supported"),
            json!("Supported"),
        ),
        (
            "Data.SipConfig.TrustedIps",
            json!(["10.1.2.3/8", "2001:db8::1"]),
            json!(["10.0.0.0/8", "2001:db8::1/128"]),
        ),
        (
            "Data.SipConfig.DigestAlgorithms",
            json!(["SHA-256", "MD5"]),
            json!(["SHA-256", "MD5"]),
        ),
        (
            "Data.SipConfig.EmergencyNumbers",
            json!(["112", "+4930110"]),
            json!(["112", "+4930110"]),
        ),
        (
            "Data.AdminAzureApp.AdminGroupId",
            json!("11111111-2222-3333-4444-777777777777"),
            json!("11111111-2222-3333-4444-777777777777"),
        ),
        ("Data.SipConfig.CertificateThumbPrint", json!(""), json!("")),
    ];
    for (path, value, normalised) in cases {
        let uri = format!("/api/config/a/{path}");
        assert_eq!(*h.put(&uri, &value).await.ok(), normalised, "{path}");
        assert_eq!(h.leaf("a", path).await, normalised, "{path}");
        assert_eq!(h.stored("a", path).await, Some(normalised), "{path}");
    }
    // Bad values: 422 at the leaf's path.
    for (path, value) in [
        ("Data.System.MinRtpPort", json!(70000)),
        ("Data.System.MinRtpPort", json!("21000")),
        ("Data.System.SwaggerRemote", json!(1)),
        ("Data.SipConfig.DefaultSipDomain", json!("bad domain")),
        ("Data.SipConfig.Srtp", json!("Maybe")),
        ("Data.SipConfig.TrustedIps", json!("10.0.0.0/8")),
        ("Data.SipConfig.TrustedIps", json!(["10.0.0.0/33"])),
        ("Data.SipConfig.DigestAlgorithms", json!(["SHA-512"])),
        ("Data.SipConfig.CertificateThumbPrint", json!("abc")),
        ("Data.SipConfig.MinExpires", Value::Null),
        ("Data.SpsAzureApp.Authority", json!("login")),
        // Cross-field, against the stored MaxRtpPort (30000).
        ("Data.System.MinRtpPort", json!(30000)),
    ] {
        let uri = format!("/api/config/a/{path}");
        assert_eq!(
            h.put(&uri, &value).await.error_paths(),
            [path],
            "{path} {value}"
        );
    }
    // Secrets: written, never shown; null keeps.
    let uri = "/api/config/a/Data.SpsAzureApp.ClientSecret";
    assert_eq!(*h.put(uri, &json!("top-s3cret")).await.ok(), Value::Null);
    assert_eq!(
        h.leaf("a", "Data.SpsAzureApp.ClientSecret").await,
        Value::Null
    );
    h.put(uri, &Value::Null).await.ok();
    assert_eq!(
        h.stored("a", "Data.SpsAzureApp.ClientSecret").await,
        Some(json!("top-s3cret"))
    );
    // Unknown leaf or server: 404.
    h.get("/api/config/a/Data.System.Nope")
        .await
        .problem(StatusCode::NOT_FOUND);
    h.put("/api/config/a/Data.System.Nope", &json!(1))
        .await
        .problem(StatusCode::NOT_FOUND);
    h.get("/api/config/zz/Data.System.MinRtpPort")
        .await
        .problem(StatusCode::NOT_FOUND);
    h.put("/api/config/zz/Data.System.MinRtpPort", &json!(21000))
        .await
        .problem(StatusCode::NOT_FOUND);
    // A body that is not JSON.
    let r = h
        .app
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::PUT)
                .uri("/api/config/a/Data.System.MinRtpPort")
                .header(header::HOST, "localhost")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{"))
                .expect("req"),
        )
        .await
        .expect("infallible");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn global_write_reaches_every_server_and_server_write_stays_local() {
    let h = harness().await;
    // A server override first.
    h.put("/api/config/b/Data.SipConfig.Srtp", &json!("Required"))
        .await
        .ok();
    assert_eq!(h.leaf("a", "Data.SipConfig.Srtp").await, json!("Disabled"));
    assert_eq!(h.leaf("*", "Data.SipConfig.Srtp").await, json!("Disabled"));
    // A global leaf write overrides it everywhere.
    h.put("/api/config/*/Data.SipConfig.Srtp", &json!("Supported"))
        .await
        .ok();
    for s in ["*", "a", "b"] {
        assert_eq!(
            h.leaf(s, "Data.SipConfig.Srtp").await,
            json!("Supported"),
            "{s}"
        );
    }
    assert_eq!(h.config.settings().srtp, SrtpMode::Supported);

    // A global whole-entry write propagates the leaves it changes and leaves the others alone.
    h.put("/api/config/b/Data.System.CallRecordDays", &json!(90))
        .await
        .ok();
    let mut global = h.get("/api/config/*").await.ok().clone();
    global["Data"]["SipConfig"]["DefaultSipDomain"] = json!("global.example.com");
    h.put("/api/config/*", &global).await.ok();
    for s in ["*", "a", "b"] {
        assert_eq!(
            h.leaf(s, "Data.SipConfig.DefaultSipDomain").await,
            json!("global.example.com"),
            "{s}"
        );
    }
    assert_eq!(h.leaf("b", "Data.System.CallRecordDays").await, json!(90));
    assert_eq!(h.leaf("a", "Data.System.CallRecordDays").await, json!(30));

    // A global write that breaks a server's cross-field rule is refused before any write.
    h.put("/api/config/b/Data.System.MaxRtpPort", &json!(25000))
        .await
        .ok();
    let r = h
        .put("/api/config/*/Data.System.MinRtpPort", &json!(26000))
        .await;
    assert_eq!(r.error_paths(), ["Data.System.MinRtpPort"]);
    assert!(r.body.to_string().contains("`b`"), "{}", r.body);
    for s in ["*", "a", "b"] {
        assert_eq!(
            h.leaf(s, "Data.System.MinRtpPort").await,
            json!(20000),
            "{s}"
        );
    }
    // The trusted-ips resource shares the path and the semantics.
    h.call(
        Method::POST,
        "/api/config/*/trusted-ips",
        Some(&json!({"cidr": "192.0.2.0/24"})),
        false,
    )
    .await;
    for s in ["*", "a", "b"] {
        assert_eq!(
            h.leaf(s, "Data.SipConfig.TrustedIps").await,
            json!(["192.0.2.0/24"]),
            "{s}"
        );
    }
}

#[tokio::test]
async fn live_reload_after_writes() {
    let h = harness().await;
    let mut rx = h.config.subscribe();
    rx.borrow_and_update();
    h.put(
        "/api/config/a/Data.SipConfig.TrustedIps",
        &json!(["10.0.0.0/8", "2001:db8::/32"]),
    )
    .await
    .ok();
    assert!(rx.has_changed().expect("sender alive"));
    let s = h.config.settings();
    let ips: Vec<String> = s.trusted_ips.iter().map(|n| n.to_string()).collect();
    assert_eq!(ips, ["10.0.0.0/8", "2001:db8::/32"]);
    // Another server's write does not touch this server's settings.
    h.put("/api/config/b/Data.SipConfig.Use8KHz", &json!(true))
        .await
        .ok();
    assert!(!h.config.settings().use_8khz);
    // A whole-entry write is applied at once.
    h.put("/api/config/a", &full_entry()).await.ok();
    let s = h.config.settings();
    assert!(s.use_8khz);
    assert_eq!(s.srtp, SrtpMode::Required);
    assert_eq!((s.min_rtp_port, s.max_rtp_port), (40000, 40100));
    assert_eq!(s.digest_algorithms, ["SHA-256", "MD5"]);
    assert_eq!(s.emergency_numbers, ["112"]);
    assert_eq!(s.default_sip_domain, "sip.contoso.com");
    assert_eq!(s.admin_app.client_secret.expose(), "admin-s3cret");
    assert!(!format!("{s:?}").contains("admin-s3cret"));
}

#[tokio::test]
async fn audit_log_records_changes_with_masked_secrets() {
    let h = harness().await;
    h.put("/api/config/a/Data.System.MinRtpPort", &json!(21000))
        .await
        .ok();
    h.call(
        Method::PUT,
        "/api/config/a/Data.AdminAzureApp.ClientSecret",
        Some(&json!("very-s3cret")),
        true,
    )
    .await
    .ok();
    h.put("/api/config/*/Data.SipConfig.Use8KHz", &json!(true))
        .await
        .ok();
    let created = h
        .call(
            Method::POST,
            "/api/users",
            Some(&json!({"username": "alice", "password": "alice-pass-1"})),
            false,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let patched = h
        .call(
            Method::PATCH,
            &format!("/api/users/{id}"),
            Some(&json!({"display_name": "Alice", "password": "new-pass-123"})),
            false,
        )
        .await;
    patched.ok();
    let del = h
        .call(Method::DELETE, &format!("/api/users/{id}"), None, true)
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    h.call(
        Method::POST,
        "/api/config/a/trusted-ips",
        Some(&json!({"cidr": "10.0.0.0/8"})),
        false,
    )
    .await;
    h.call(
        Method::DELETE,
        "/api/config/a/trusted-ips?cidr=10.0.0.0/8",
        None,
        false,
    )
    .await;

    let log = h.get("/api/audit").await.ok().clone();
    let rows = log.as_array().expect("array");
    let text = log.to_string();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        !text.contains("alice-pass") && !text.contains("new-pass"),
        "{text}"
    );
    let find = |action: &str, target: &str| {
        rows.iter()
            .find(|r| r["action"] == json!(action) && r["target"] == json!(target))
            .unwrap_or_else(|| panic!("no {action} {target} in {text}"))
            .clone()
    };
    let r = find("config.put-leaf", "a/Data.System.MinRtpPort");
    assert_eq!(
        (r["old"].clone(), r["new"].clone()),
        (json!(20000), json!(21000))
    );
    assert_eq!(r["actor"], json!("localhost"));
    assert!(r["at"].is_string());
    let r = find("config.put-leaf", "a/Data.AdminAzureApp.ClientSecret");
    assert_eq!(
        (r["old"].clone(), r["new"].clone()),
        (json!(""), json!("***"))
    );
    assert_eq!(r["actor"], json!("admin-token"));
    for s in ["*", "a", "b"] {
        let r = find("config.put-leaf", &format!("{s}/Data.SipConfig.Use8KHz"));
        assert_eq!(
            (r["old"].clone(), r["new"].clone()),
            (json!(false), json!(true))
        );
    }
    let r = find("user.create", &format!("user/{id}"));
    assert_eq!(r["new"]["username"], json!("alice"));
    assert_eq!(r["new"]["password"], json!("***"));
    let r = find("user.patch", &format!("user/{id}"));
    assert_eq!(r["old"]["display_name"], Value::Null);
    assert_eq!(r["new"]["display_name"], json!("Alice"));
    let r = find("user.delete", &format!("user/{id}"));
    assert_eq!(r["old"]["username"], json!("alice"));
    assert_eq!(r["actor"], json!("admin-token"));
    let r = find("trusted-ips.add", "a/Data.SipConfig.TrustedIps");
    assert_eq!(r["new"], json!(["10.0.0.0/8"]));
    let r = find("trusted-ips.remove", "a/Data.SipConfig.TrustedIps");
    assert_eq!(r["new"], json!([]));
    // Newest first, and limited.
    assert_eq!(rows[0]["action"], json!("trusted-ips.remove"));
    let two = h.get("/api/audit?limit=2").await.ok().clone();
    assert_eq!(two.as_array().map(Vec::len), Some(2));
    h.get("/api/audit?limit=x")
        .await
        .problem(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn remote_requests_are_refused() {
    let h = harness().await;
    let app = router(ApiState::new(Arc::clone(&h.store), h.config.clone(), TOKEN))
        .layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40000))));
    for uri in [
        "/api/config/servers",
        "/api/config/paths",
        "/api/config/a",
        "/api/config/a/Data.System.MinRtpPort",
        "/api/audit",
    ] {
        let r = app
            .clone()
            .oneshot(
                Request::builder()
                    .uri(uri)
                    .header(header::HOST, "127.0.0.1:8080")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("infallible");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{uri}");
    }
}
