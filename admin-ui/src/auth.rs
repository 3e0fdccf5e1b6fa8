//! Sign-in with an Azure app — the admin app for the console, the end-user app for the
//! self-service page (`/me`): OAuth 2.0 authorization code with PKCE from the browser (a
//! "single-page application" redirect URI, no client secret). The gateway tells the authority,
//! tenant and client id (`GET /api/auth/config`); the endpoints come from the tenant's OpenID
//! discovery document; the access token (audience: that app) is then the API's bearer token.
//! Both come back to `/callback`; what the sign-in started from says where the token goes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, Request, RequestInit, Response};

/// An app as the gateway describes it (`GET /api/auth/config`: `admin` or `user`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AppInfo {
    /// Entra ID authority (`https://login.microsoftonline.com`).
    pub authority: String,
    /// Tenant id or domain (empty: not configured).
    pub tenant: String,
    /// Application (client) id (empty: not configured).
    pub client_id: String,
}

impl AppInfo {
    /// Whether sign-in can start.
    pub fn configured(&self) -> bool {
        !self.tenant.is_empty() && !self.client_id.is_empty()
    }

    fn discovery_url(&self) -> String {
        format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            self.authority.trim_end_matches('/'),
            self.tenant
        )
    }

    /// The scope asking for an access token whose audience is the app itself.
    fn scope(&self) -> String {
        format!("openid profile {}/.default", self.client_id)
    }
}

/// What the sign-in remembers across the redirect (session storage).
const PENDING_KEY: &str = "csps.signin";

/// The callback path the admin app must list as a SPA redirect URI (`{origin}/callback`).
pub const CALLBACK: &str = "/callback";

fn redirect_uri() -> String {
    let origin = web_sys::window()
        .and_then(|w| w.location().origin().ok())
        .unwrap_or_default();
    format!("{origin}{CALLBACK}")
}

fn random_b64(len: usize) -> Result<String, String> {
    let crypto = web_sys::window()
        .and_then(|w| w.crypto().ok())
        .ok_or("this browser has no crypto API")?;
    let mut bytes = vec![0u8; len];
    crypto
        .get_random_values_with_u8_array(&mut bytes)
        .map_err(|_| "random bytes are not available")?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

async fn sha256_b64(text: &str) -> Result<String, String> {
    let subtle = web_sys::window()
        .and_then(|w| w.crypto().ok())
        .ok_or("this browser has no crypto API")?
        .subtle();
    let data = js_sys::Uint8Array::from(text.as_bytes());
    let promise = subtle
        .digest_with_str_and_buffer_source("SHA-256", &data)
        .map_err(|_| "SHA-256 is not available (the console needs https or localhost)")?;
    let digest = JsFuture::from(promise)
        .await
        .map_err(|_| "SHA-256 failed")?;
    Ok(URL_SAFE_NO_PAD.encode(js_sys::Uint8Array::new(&digest).to_vec()))
}

async fn fetch_json(url: &str, form: Option<String>) -> Result<Value, String> {
    let window = web_sys::window().ok_or("no window")?;
    let init = RequestInit::new();
    if let Some(form) = form {
        init.set_method("POST");
        let headers = Headers::new().map_err(|_| "headers")?;
        let _ = headers.set("Content-Type", "application/x-www-form-urlencoded");
        init.set_headers(&headers);
        init.set_body(&wasm_bindgen::JsValue::from_str(&form));
    }
    let request =
        Request::new_with_str_and_init(url, &init).map_err(|_| format!("bad URL {url}"))?;
    let response: Response = JsFuture::from(window.fetch_with_request(&request))
        .await
        .map_err(|_| {
            format!("{url} did not answer (is the authority reachable from this browser?)")
        })?
        .dyn_into()
        .map_err(|_| "not a response")?;
    let text = JsFuture::from(response.text().map_err(|_| "no body")?)
        .await
        .ok()
        .and_then(|t| t.as_string())
        .unwrap_or_default();
    let json: Value = serde_json::from_str(&text)
        .map_err(|_| format!("{url} answered {} without JSON", response.status()))?;
    if !response.ok() {
        let why = json
            .get("error_description")
            .or_else(|| json.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        return Err(format!("{url} answered {}: {why}", response.status()));
    }
    Ok(json)
}

fn session() -> Result<web_sys::Storage, String> {
    web_sys::window()
        .and_then(|w| w.session_storage().ok().flatten())
        .ok_or_else(|| "session storage is not available".to_owned())
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::api::encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Starts the sign-in: remembers a PKCE verifier, state and the page to return to (`/` for the
/// console, `/me` for the self-service page), then leaves for the authority.
pub async fn start(app: &AppInfo, return_to: &str) -> Result<(), String> {
    let discovery = fetch_json(&app.discovery_url(), None).await?;
    let endpoint = |k: &str| {
        discovery
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("the discovery document has no {k}"))
    };
    let (authorize, token) = (
        endpoint("authorization_endpoint")?,
        endpoint("token_endpoint")?,
    );
    let verifier = random_b64(32)?;
    let state = random_b64(16)?;
    let challenge = sha256_b64(&verifier).await?;
    let pending = serde_json::json!({
        "verifier": verifier, "state": state, "token_endpoint": token, "client_id": app.client_id,
        "return_to": return_to,
    });
    session()?
        .set_item(PENDING_KEY, &pending.to_string())
        .map_err(|_| "cannot remember the sign-in")?;
    let redirect = redirect_uri();
    let scope = app.scope();
    let query = form(&[
        ("client_id", &app.client_id),
        ("response_type", "code"),
        ("redirect_uri", &redirect),
        ("scope", &scope),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("state", &state),
        ("response_mode", "query"),
    ]);
    let sep = if authorize.contains('?') { '&' } else { '?' };
    web_sys::window()
        .ok_or("no window")?
        .location()
        .assign(&format!("{authorize}{sep}{query}"))
        .map_err(|_| "cannot leave for the authority".to_owned())
}

/// A finished sign-in.
pub struct SignedIn {
    /// The access token.
    pub token: String,
    /// The page the sign-in started from (`/` or `/me`).
    pub return_to: String,
}

/// Finishes the sign-in on `/callback?code=…&state=…`: the access token, or why not.
pub async fn finish(search: &str) -> Result<SignedIn, String> {
    let params = web_sys::UrlSearchParams::new_with_str(search).map_err(|_| "bad callback URL")?;
    if let Some(err) = params.get("error") {
        let why = params.get("error_description").unwrap_or_default();
        return Err(format!("the sign-in was refused: {err} {why}"));
    }
    let code = params.get("code").ok_or("the callback has no code")?;
    let storage = session()?;
    let pending: Value = storage
        .get_item(PENDING_KEY)
        .ok()
        .flatten()
        .and_then(|p| serde_json::from_str(&p).ok())
        .ok_or("no sign-in was started in this tab")?;
    let _ = storage.remove_item(PENDING_KEY);
    let field = |k: &str| {
        pending
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    if params.get("state").as_deref() != Some(field("state").as_str()) {
        return Err("the callback's state does not match the sign-in (start again)".into());
    }
    let redirect = redirect_uri();
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", &redirect),
        ("client_id", &field("client_id")),
        ("code_verifier", &field("verifier")),
    ]);
    let answer = fetch_json(&field("token_endpoint"), Some(body)).await?;
    let token = answer
        .get("access_token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or("the token endpoint returned no access token")?;
    let return_to = match field("return_to") {
        r if r == crate::me::PATH => r,
        _ => "/".to_owned(),
    };
    Ok(SignedIn { token, return_to })
}
