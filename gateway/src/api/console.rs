//! The web console (`admin-ui/`, built into `admin-ui/dist` by `admin-ui/build`): its files at
//! `/` and every other non-API path — a path without a file extension is one of the app's own
//! pages and gets `index.html` — with the gzip copy the build leaves beside each file for clients
//! that accept gzip; and `GET /api/auth/config`, what the console needs before anyone signed in
//! (the authority, tenant and client id of the admin app and of the end-user app, all public in
//! any sign-in page anyway).
//! Without a built console, `/` answers a short page saying how to build it.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use super::problem::Problem;

/// Where the console's files are looked for, first match (holding `index.html`) wins.
#[derive(Clone, Debug, Default)]
pub struct ConsoleFiles {
    dirs: Arc<[PathBuf]>,
}

impl ConsoleFiles {
    /// Files from the first of `dirs` that holds an `index.html` (looked up per request, so a
    /// console built after the start is served at once).
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        ConsoleFiles { dirs: dirs.into() }
    }

    /// The folders tried without `--ui-dir`: `admin-ui/dist` under the working directory (the
    /// repository, as `e2e/run` starts it), then `admin-ui` beside the executable (an install).
    pub fn default_dirs() -> Vec<PathBuf> {
        let mut dirs = vec![PathBuf::from("admin-ui/dist")];
        if let Some(exe_dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            dirs.push(exe_dir.join("admin-ui"));
        }
        dirs
    }

    fn root(&self) -> Option<&Path> {
        self.dirs
            .iter()
            .map(PathBuf::as_path)
            .find(|d| d.join("index.html").is_file())
    }
}

/// The page `/` answers when no console is built.
const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\">\
<title>csps: console not built</title><h1>The csps console is not built</h1>\
<p>Build it with <code>admin-ui/build</code> in the repository (<code>e2e/run</code> does), \
then reload; or start <code>csps serve</code> with <code>--ui-dir</code> (<code>CSPS_UI_DIR</code>) \
naming the folder that holds its <code>index.html</code>.</p>\
<p>The REST API is at <a href=\"/api/openapi.json\">/api/openapi.json</a>.</p></html>\n";

/// The content type of a console file, by extension.
fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Whether the client takes gzip (`Accept-Encoding`, a `q=0` refuses it).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// Whether a file name carries Trunk's content hash (`name-0123456789abcdef.ext`, and the
/// wasm-bindgen module `name-0123456789abcdef_bg.wasm`; Trunk writes the 64-bit hash in hex
/// without leading zeros, so it may be shorter than 16 digits): such a file never changes, so
/// browsers may keep it for good.
fn content_hashed(path: &Path) -> bool {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let stem = stem.strip_suffix("_bg").unwrap_or(stem);
    stem.rsplit_once('-').is_some_and(|(_, hash)| {
        (12..=16).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The relative file path a request path names, or `None` when it tries to leave the folder.
fn relative(path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| rel.to_path_buf())
}

/// Answers a non-API `GET` or `HEAD` with a console file (see the module doc).
pub async fn serve(
    files: &ConsoleFiles,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "the console's files are read with GET",
        )
        .into_response();
    }
    let Some(root) = files.root() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            NOT_BUILT,
        )
            .into_response();
    };
    let Some(rel) = relative(path) else {
        return Problem::not_found(format!("no file at `{path}`")).into_response();
    };
    let mut file = root.join(&rel);
    if rel.as_os_str().is_empty() || !file.is_file() {
        // One of the app's pages (`/config`), not a missing asset (`/app.js`), gets index.html.
        if rel.extension().is_some() {
            return Problem::not_found(format!("no file at `{path}`")).into_response();
        }
        file = root.join("index.html");
    }
    let gz = {
        let mut name = file.clone().into_os_string();
        name.push(".gz");
        PathBuf::from(name)
    };
    let gzip = accepts_gzip(headers) && gz.is_file();
    let body = match tokio::fs::read(if gzip { &gz } else { &file }).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(file = %file.display(), "cannot read a console file: {e}");
            return Problem::not_found(format!("no file at `{path}`")).into_response();
        }
    };
    let cache = if content_hashed(&file) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut resp = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(body))
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&file)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The sign-in callback's URL holds an authorization code: never send it on as a referrer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

/// The admin app as the console needs it to start a sign-in.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignInApp {
    /// Entra ID authority (`https://login.microsoftonline.com`).
    pub authority: String,
    /// Tenant id or domain; empty while not configured.
    pub tenant: String,
    /// Application (client) id; empty while not configured.
    pub client_id: String,
}

/// `GET /api/auth/config`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuthConfig {
    /// The admin app (`Data.AdminAzureApp`).
    pub admin: SignInApp,
    /// The end-user app (`Data.SpsAzureApp`), for the self-service page (`/me`).
    pub user: SignInApp,
}

impl SignInApp {
    fn of(app: &crate::config::AzureApp) -> Self {
        SignInApp {
            authority: app.authority.trim_end_matches('/').to_owned(),
            tenant: app.tenant.clone(),
            client_id: app.client_id.clone(),
        }
    }
}

/// `GET /api/auth/config`: where the console signs admins in (no authentication; nothing secret).
#[utoipa::path(get, path = "/api/auth/config", tag = "system",
    responses((status = 200, description = "The public sign-in settings of the admin app and \
        of the end-user app",
        body = AuthConfig, example = json!({"admin": {"authority": "https://login.microsoftonline.com",
            "tenant": "contoso.onmicrosoft.com", "client_id": "00000000-0000-0000-0000-000000000000"},
            "user": {"authority": "https://login.microsoftonline.com",
            "tenant": "contoso.onmicrosoft.com", "client_id": "11111111-1111-1111-1111-111111111111"}}))))]
pub async fn auth_config(State(state): State<ApiState>) -> Json<AuthConfig> {
    let settings = state.config.settings();
    Json(AuthConfig {
        admin: SignInApp::of(&settings.admin_app),
        user: SignInApp::of(&settings.sps_app),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(files: &ConsoleFiles, path: &str, gzip: bool) -> Response {
        let mut h = HeaderMap::new();
        if gzip {
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("br, gzip;q=0.8"),
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(serve(files, &Method::GET, path, &h))
    }

    fn header_of(r: &Response, h: header::HeaderName) -> String {
        r.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }

    #[test]
    fn files_types_gzip_and_the_page_fallback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("index.html"), "<p>app</p>").expect("write");
        std::fs::write(d.join("app-0123456789abcdef_bg.wasm"), b"\0asm").expect("write");
        std::fs::write(d.join("app-0123456789abcdef.wasm"), b"\0asm").expect("write");
        std::fs::write(d.join("app-0123456789abcdef.wasm.gz"), b"gz").expect("write");
        let files = ConsoleFiles::new(vec![d.join("missing"), d.to_path_buf()]);

        let r = get(&files, "/app-0123456789abcdef.wasm", true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header_of(&r, header::CONTENT_TYPE), "application/wasm");
        assert_eq!(header_of(&r, header::CONTENT_ENCODING), "gzip");
        assert!(header_of(&r, header::CACHE_CONTROL).contains("immutable"));
        let r = get(&files, "/app-0123456789abcdef.wasm", false);
        assert_eq!(header_of(&r, header::CONTENT_ENCODING), "");
        // What Trunk names the wasm module, and a hash with a leading zero left out.
        std::fs::write(d.join("app-37059fab980b401.js"), b"js").expect("write");
        for file in ["/app-0123456789abcdef_bg.wasm", "/app-37059fab980b401.js"] {
            let r = get(&files, file, false);
            assert_eq!(r.status(), StatusCode::OK, "{file}");
            assert!(
                header_of(&r, header::CACHE_CONTROL).contains("immutable"),
                "{file}"
            );
        }

        for page in ["/", "/config", "/registrations/x"] {
            let r = get(&files, page, true);
            assert_eq!(r.status(), StatusCode::OK, "{page}");
            assert_eq!(
                header_of(&r, header::CONTENT_TYPE),
                "text/html; charset=utf-8"
            );
            assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-cache");
        }
        assert_eq!(
            get(&files, "/missing.js", true).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&files, "/../etc/passwd", true).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&files, "/a/../../x", true).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn without_a_build_the_page_says_how_to_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ConsoleFiles::new(vec![dir.path().to_path_buf()]);
        let r = get(&files, "/", false);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            header_of(&r, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
    }

    #[test]
    fn gzip_acceptance() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            accepts_gzip(&h)
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("GZIP;q=0.5"));
        assert!(!with("gzip;q=0"));
        assert!(!with("br"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
