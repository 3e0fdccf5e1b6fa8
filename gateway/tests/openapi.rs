//! The OpenAPI document and the Swagger UI, driven in-process over an embedded store: the document
//! is a well-formed OpenAPI 3.1 document whose every `$ref` resolves, it lists exactly the routes
//! the router serves (paths and methods, compared both ways), and the Swagger UI and document are
//! local-only unless `Data.System.SwaggerRemote` is on.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use csps::api::openapi::{DOC_PATH, document, documented_operations};
use csps::api::{ApiState, router};
use csps::config::LiveConfig;
use csps::store::Store;
use csps::store::embedded::EmbeddedStore;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "test-admin-token-openapi";
/// Operations served outside `api::router` (by `serve`), documented all the same.
const SERVED_ELSEWHERE: &[&str] = &["/healthz", "/metrics"];
/// Routes that are HTML pages for the end user's browser (the activation sign-in), not API.
const BROWSER_PAGES: &[&str] = &["/activate", "/activate/callback"];

async fn app() -> (Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open_async(dir.path()).await.expect("store"));
    let config = LiveConfig::open(Arc::clone(&store), "a")
        .await
        .expect("config");
    // The policy routes answer 503 without an engine; the document's routes all run here.
    let metrics = Arc::new(csps::metrics::Metrics::new());
    let engine = csps::policy::PolicyEngine::new(metrics, csps::policy::Limits::default())
        .expect("policy engine");
    let state = ApiState::new(store, config, TOKEN).with_policies(Arc::new(engine));
    (router(state), dir)
}

/// A request from `peer` with Host `host` and the extra headers.
fn req(
    method: Method,
    uri: &str,
    peer: [u8; 4],
    host: &str,
    extra: &[(&str, &str)],
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, host)
        .extension(ConnectInfo(SocketAddr::from((peer, 40000))));
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).expect("request")
}

async fn send(app: &Router, r: Request<Body>) -> (StatusCode, String, Vec<u8>) {
    let resp = app.clone().oneshot(r).await.expect("infallible");
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut body = resp.into_body();
    if ct.starts_with("text/event-stream") {
        // `GET /api/events` never ends by itself: read its first event (`ready`), then hang up.
        let mut first = Vec::new();
        while !first.windows(2).any(|w| w == b"\n\n") {
            let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
                .await
                .expect("the event stream's first event within 10 s")
                .expect("the event stream ended before its first event")
                .expect("infallible");
            if let Ok(data) = frame.into_data() {
                first.extend_from_slice(&data);
            }
        }
        return (status, ct, first);
    }
    let body = body.collect().await.expect("body").to_bytes();
    (status, ct, body.to_vec())
}

/// Every `"$ref"` string anywhere in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(s)) => out.push(s),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn document_is_openapi_3_1_and_every_ref_resolves() {
    let doc = document();
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
    // utoipa's typed model parses every part back (paths, schemas, responses).
    use utoipa::openapi::{PathItem, RefOr, Response, schema::Schema};
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if let Err(e) = serde_json::from_value::<PathItem>(item.clone()) {
            panic!("path {path} is no OpenAPI path item: {e}\n{item:#}");
        }
    }
    // A schema without `type` (any JSON value, e.g. the audit log's `old`/`new`) is valid
    // JSON Schema that utoipa writes but cannot read back, so those are only checked as objects.
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        let typed = schema
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(|props| {
                props
                    .values()
                    .all(|p| p.get("type").is_some() || p.get("$ref").is_some())
            });
        if typed && let Err(e) = serde_json::from_value::<RefOr<Schema>>(schema.clone()) {
            panic!("schema {name} is no OpenAPI schema: {e}\n{schema:#}");
        }
        assert!(schema.is_object(), "schema {name}");
    }
    for (name, r) in doc["components"]["responses"]
        .as_object()
        .expect("responses")
    {
        if let Err(e) = serde_json::from_value::<RefOr<Response>>(r.clone()) {
            panic!("response {name} is no OpenAPI response: {e}\n{r:#}");
        }
    }
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let schemes = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(schemes["type"], "http");
    assert_eq!(schemes["scheme"], "bearer");

    let mut all = Vec::new();
    refs(doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }

    for (method, path) in documented_operations() {
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path} documents no success"
        );
        // Every `{param}` of the template is declared as a path parameter.
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str())
            .collect();
        let used: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(declared, used, "{method} {path} path parameters");
        // Outside the guard: no credentials asked. Inside: 401, and 403 unless any signed-in
        // caller passes (the guard's own rule for the path).
        let open =
            ["/api/version", "/api/auth/config", "/healthz", "/metrics"].contains(&path.as_str());
        if !open {
            let documented =
                |code: &str| responses.get(code).is_some_and(|r| r["$ref"].is_string());
            assert!(documented("401"), "{method} {path} lacks 401");
            // `/api/me/…` takes any valid end-user token: no 403 either.
            let signed_in = matches!(
                csps::api::access::rule(path.as_str()),
                csps::api::access::Rule::SignedIn | csps::api::access::Rule::EndUser
            );
            assert_eq!(
                documented("403"),
                !signed_in,
                "{method} {path}: 403 documented only where a signed-in non-admin is refused"
            );
        }
    }
    // The problem type carries the validation errors' shape.
    let problem = &doc["components"]["schemas"]["Problem"]["properties"];
    assert!(problem["errors"].is_object() && problem["status"].is_object());
    let field = &doc["components"]["schemas"]["FieldError"]["properties"];
    assert!(field["path"].is_object() && field["message"].is_object());
    // The configuration entry's schema comes from the leaf model.
    let leaf = &doc["components"]["schemas"]["ConfigEntry"]["properties"]["Data"]["properties"]["System"]
        ["properties"]["MinRtpPort"];
    assert_eq!(leaf["minimum"], 1024);
    assert_eq!(leaf["default"], 20000);
}

/// The route paths an axum router knows, from its `Debug` output (axum has no public list).
fn router_paths(app: &Router) -> BTreeSet<String> {
    let dbg = format!("{app:?}");
    let mut out = BTreeSet::new();
    for piece in dbg.split('"').skip(1).step_by(2) {
        // Route paths, not the fallback's catch-all (`/`, `/{*__private__axum_fallback}`).
        if piece.starts_with('/') && !piece.contains("__private__") && piece != "/" {
            out.insert(piece.to_owned());
        }
    }
    out
}

/// A concrete URI for a path template.
fn concrete(path: &str) -> String {
    path.replace("{id}", "7c9e6679-7425-40de-944b-e07fc1f90ae7")
        .replace("{server}", "a")
        .replace("{leaf}", "Data.System.SwaggerRemote")
        .replace("{*rest}", "index.html")
}

#[tokio::test]
async fn document_lists_exactly_the_routes_of_the_router() {
    let (app, _dir) = app().await;
    let paths = router_paths(&app);
    for known in [
        "/api/users/{id}",
        "/api/config/{server}/trusted-ips",
        DOC_PATH,
    ] {
        assert!(paths.contains(known), "router paths {paths:?} lack {known}");
    }
    let auth = format!("Bearer {TOKEN}");
    let mut routed = BTreeSet::new();
    for path in paths
        .iter()
        .filter(|p| !p.starts_with("/swagger") && !BROWSER_PAGES.contains(&p.as_str()))
    {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let r = req(
                method.clone(),
                &concrete(path),
                [127, 0, 0, 1],
                "127.0.0.1:8080",
                &[("authorization", &auth)],
            );
            let (status, _, body) = send(&app, r).await;
            let fallback = status == StatusCode::NOT_FOUND
                && String::from_utf8_lossy(&body).contains("no resource at");
            assert!(
                !fallback,
                "{method} {path} fell through to the 404 fallback"
            );
            assert!(status.as_u16() < 500, "{method} {path} answered {status}");
            if status != StatusCode::METHOD_NOT_ALLOWED {
                routed.insert((method.to_string(), path.clone()));
            }
        }
    }
    let documented: BTreeSet<(String, String)> = documented_operations()
        .into_iter()
        .filter(|(_, p)| !SERVED_ELSEWHERE.contains(&p.as_str()))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the document: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
}

#[tokio::test]
async fn swagger_ui_and_document_are_local_only_unless_swagger_remote() {
    let (app, _dir) = app().await;
    let local = |uri: &str, extra: &[(&str, &str)]| {
        req(Method::GET, uri, [127, 0, 0, 1], "localhost:8080", extra)
    };
    let remote = |uri: &str| req(Method::GET, uri, [192, 0, 2, 7], "gw.example.com", &[]);

    let (s, ct, body) = send(&app, local("/swagger/", &[])).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(
        String::from_utf8_lossy(&body).contains("swagger"),
        "the vendored UI"
    );
    let (s, _, _) = send(&app, local("/swagger/swagger-initializer.js", &[])).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = send(&app, local(DOC_PATH, &[])).await;
    assert_eq!(s, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(&doc, document());

    // Not local: a remote peer, a proxy header, a foreign Host.
    for r in [
        remote("/swagger/"),
        local("/swagger/", &[("x-forwarded-for", "198.51.100.1")]),
        local("/swagger/", &[("forwarded", "for=198.51.100.1")]),
        req(
            Method::GET,
            "/swagger/",
            [127, 0, 0, 1],
            "evil.example:8080",
            &[],
        ),
    ] {
        let (s, ct, _) = send(&app, r).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(ct, "application/problem+json");
    }
    let (s, _, _) = send(&app, remote(DOC_PATH)).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the document falls back to the API guard"
    );

    // SwaggerRemote on (a local configuration write, applied at once).
    let mut on = local("/api/config/a/Data.System.SwaggerRemote", &[]);
    *on.method_mut() = Method::PUT;
    on.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("ct"),
    );
    *on.body_mut() = Body::from("true");
    let (s, _, _) = send(&app, on).await;
    assert_eq!(s, StatusCode::OK);
    for uri in ["/swagger/", DOC_PATH] {
        let (s, _, _) = send(&app, remote(uri)).await;
        assert_eq!(s, StatusCode::OK, "{uri} with SwaggerRemote on");
    }
    // The rest of the API stays closed to the remote peer.
    let (s, _, _) = send(&app, remote("/api/users")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
