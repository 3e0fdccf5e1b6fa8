//! Activation, the OAuth 2.0 authorization-code flow with PKCE (RFC 7636, S256) that an end user
//! runs once through the gateway (`/activate`, see `api::activate`): the gateway, a confidential
//! web client of the end-user app (`Data.SpsAzureApp`), sends the browser to
//! `{authority}/{tenant}/oauth2/v2.0/authorize` with a one-shot `state`, a `nonce` and a code
//! challenge, kept here (in this server's memory) for [`STATE_TTL`]; the callback takes them back
//! (unknown, reused or expired: refused), redeems the code at the token endpoint with the
//! verifier (and the client secret when one is configured), and gets an ID token, whose
//! signature, issuer, audience and nonce `Authenticator::id_token` checks, and a refresh token
//! (scope `offline_access`), which the caller seals ([`super::sealed`]) and stores. The same
//! token endpoint refreshes it ([`refresh`]), as the nightly task does (`super::refresh`).
//!
//! The pending sign-ins live in the memory of the server that started them: behind a load
//! balancer, `/activate` and its callback must reach the same server (session affinity), as
//! the callback arrives seconds later from the same browser.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use super::http::HttpClient;
use super::keys::Tenant;
use crate::config::AzureApp;

/// How long a started sign-in may take before its `state` is refused.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// Sign-ins pending at most (the oldest are dropped first): `/activate` needs no credentials.
const MAX_PENDING: usize = 10_000;
/// What the gateway asks for: the ID token (`openid profile`) and a refresh token.
pub const SCOPE: &str = "openid profile offline_access";

/// What a started sign-in keeps for its callback.
#[derive(Debug)]
pub struct Pending {
    /// The PKCE code verifier.
    pub verifier: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The redirect URI sent (the code is redeemed with the same one).
    pub redirect_uri: String,
    started: Instant,
}

/// The sign-ins started on this server, by `state`.
pub struct PendingSignIns {
    pending: Mutex<HashMap<String, Pending>>,
    rng: SystemRandom,
}

impl Default for PendingSignIns {
    fn default() -> Self {
        PendingSignIns {
            pending: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        }
    }
}

/// 32 random bytes, base64url: a `state`, a `nonce` or a code verifier (43 characters).
fn random_token(rng: &SystemRandom) -> Result<String, String> {
    let mut b = [0u8; 32];
    rng.fill(&mut b)
        .map_err(|_| "the system's random number generator failed".to_owned())?;
    Ok(B64.encode(b))
}

/// The S256 code challenge of `verifier`.
pub fn challenge(verifier: &str) -> String {
    B64.encode(Sha256::digest(verifier.as_bytes()))
}

/// `{authority}/{tenant}/oauth2/v2.0/authorize`.
pub fn authorize_url(app: &AzureApp) -> String {
    let t = Tenant::new(&app.authority, &app.tenant);
    format!("{}/{}/oauth2/v2.0/authorize", t.authority, t.tenant)
}

impl PendingSignIns {
    /// Starts a sign-in: the URL to send the browser to (`login_hint` pre-fills the account).
    pub fn begin(
        &self,
        app: &AzureApp,
        redirect_uri: &str,
        login_hint: Option<&str>,
    ) -> Result<String, String> {
        let state = random_token(&self.rng)?;
        let pending = Pending {
            verifier: random_token(&self.rng)?,
            nonce: random_token(&self.rng)?,
            redirect_uri: redirect_uri.to_owned(),
            started: Instant::now(),
        };
        let mut query = vec![
            ("client_id", app.client_id.as_str()),
            ("response_type", "code"),
            ("redirect_uri", redirect_uri),
            ("response_mode", "query"),
            ("scope", SCOPE),
            ("state", state.as_str()),
            ("nonce", pending.nonce.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let code_challenge = challenge(&pending.verifier);
        query.push(("code_challenge", &code_challenge));
        if let Some(h) = login_hint.filter(|h| !h.is_empty()) {
            query.push(("login_hint", h));
        }
        let query = serde_urlencoded::to_string(&query)
            .map_err(|e| format!("cannot encode the sign-in request: {e}"))?;
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, p| now.duration_since(p.started) < STATE_TTL);
        if map.len() >= MAX_PENDING
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(state, pending);
        Ok(format!("{}?{query}", authorize_url(app)))
    }

    /// Takes the sign-in of `state` (once): `None` when unknown, already used or expired.
    pub fn take(&self, state: &str) -> Option<Pending> {
        self.lock()
            .remove(state)
            .filter(|p| p.started.elapsed() < STATE_TTL)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the token endpoint granted.
#[derive(Debug)]
pub struct Granted {
    /// The ID token (the code grant with `openid`).
    pub id_token: Option<String>,
    /// The (new) refresh token.
    pub refresh_token: Option<String>,
}

/// Why the token endpoint gave no tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The identity provider refused (`invalid_grant`: the code or refresh token is no longer
    /// good; others: the app's configuration).
    #[error("{error}: {description}")]
    Refused {
        /// OAuth error code (`invalid_grant`, `invalid_client`, …).
        error: String,
        /// Its description (Entra: `AADSTS…: …`).
        description: String,
    },
    /// No answer, or not one to act on (network, 5xx): try again later.
    #[error("{0}")]
    Unavailable(String),
}

impl GrantError {
    /// True when the grant itself is no longer good (the user must sign in again).
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, GrantError::Refused { error, .. } if error == "invalid_grant")
    }
}

/// Redeems an authorization code with its PKCE verifier.
pub async fn redeem_code(
    http: &HttpClient,
    app: &AzureApp,
    code: &str,
    pending: &Pending,
) -> Result<Granted, GrantError> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", pending.redirect_uri.as_str()),
        ("code_verifier", pending.verifier.as_str()),
        ("scope", SCOPE),
    ];
    token_request(http, app, &form).await
}

/// Redeems a refresh token for a new one (Entra rotates it on every use).
pub async fn refresh(
    http: &HttpClient,
    app: &AzureApp,
    refresh_token: &str,
) -> Result<Granted, GrantError> {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("scope", SCOPE),
    ];
    token_request(http, app, &form).await
}

/// `POST {authority}/{tenant}/oauth2/v2.0/token` with `form`, the client id, and the client
/// secret when one is configured.
async fn token_request(
    http: &HttpClient,
    app: &AzureApp,
    form: &[(&str, &str)],
) -> Result<Granted, GrantError> {
    let mut form = form.to_vec();
    form.push(("client_id", app.client_id.as_str()));
    if !app.client_secret.expose().is_empty() {
        form.push(("client_secret", app.client_secret.expose()));
    }
    let url = Tenant::new(&app.authority, &app.tenant).token_url();
    let answer = http
        .post_form(&url, &form)
        .await
        .map_err(|e| GrantError::Unavailable(format!("the token endpoint: {e}")))?;
    let text = |k: &str| answer.body[k].as_str().map(str::to_owned);
    if answer.status.is_success() {
        return Ok(Granted {
            id_token: text("id_token"),
            refresh_token: text("refresh_token"),
        });
    }
    match text("error") {
        Some(error) if answer.status.is_client_error() => Err(GrantError::Refused {
            error,
            description: text("error_description").unwrap_or_default(),
        }),
        _ => Err(GrantError::Unavailable(format!(
            "the token endpoint answered {}",
            answer.status
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AzureApp {
        AzureApp {
            tenant: "t1".into(),
            client_id: "c1".into(),
            authority: "https://login.example/".into(),
            ..AzureApp::default()
        }
    }

    #[test]
    fn rfc7636_appendix_b_challenge() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn a_state_is_taken_once() {
        let p = PendingSignIns::default();
        let url = p
            .begin(&app(), "http://gw/activate/callback", Some("a@x"))
            .expect("begin");
        assert!(
            url.starts_with("https://login.example/t1/oauth2/v2.0/authorize?client_id=c1&"),
            "{url}"
        );
        assert!(url.contains("code_challenge_method=S256"), "{url}");
        assert!(url.contains("scope=openid+profile+offline_access"), "{url}");
        assert!(url.contains("login_hint=a%40x"), "{url}");
        let query: HashMap<String, String> =
            serde_urlencoded::from_str(url.split_once('?').map(|x| x.1).unwrap_or(""))
                .expect("query");
        let state = &query["state"];
        let pending = p.take(state).expect("pending");
        assert_eq!(challenge(&pending.verifier), query["code_challenge"]);
        assert_eq!(pending.nonce, query["nonce"]);
        assert!(p.take(state).is_none(), "used twice");
        assert!(p.take("made-up").is_none());
    }
}
