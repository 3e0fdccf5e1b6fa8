//! Activation, the OAuth 2.0 authorization-code flow with PKCE (RFC 7636, S256) that an end user
//! runs once through the gateway (`/activate`, see `api::activate`): the gateway, a confidential
//! web client of the end-user app (`Data.SpsAzureApp`), sends the browser to
//! `{authority}/{tenant}/oauth2/v2.0/authorize` with a one-shot `state`, a `nonce` and a code
//! challenge; the callback takes them back (unknown, reused or older than [`STATE_TTL`]:
//! refused), redeems the code at the token endpoint with the
//! verifier (and the client secret when one is configured), and gets an ID token, whose
//! signature, issuer, audience and nonce `Authenticator::id_token` checks, and a refresh token
//! (scope `offline_access`), which the caller seals ([`super::sealed`]) and stores. The same
//! token endpoint refreshes it ([`refresh`]), as the nightly task does (`super::refresh`).
//!
//! No server keeps the pending sign-in: the `state` itself carries the verifier, the nonce,
//! the redirect URI and the start time, sealed ([`super::sealed`], AES-256-GCM under a key
//! derived from `secret_key`), so behind a load balancer the callback may reach any server of
//! the cluster (they share `secret_key`) and no session affinity is needed. The verifier stays
//! secret inside the seal; a forged or altered state does not open. Each server remembers the
//! states it took until they expire, so a state is used once per server; replayed on another
//! server it still fails at the identity provider, which redeems a code once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use super::http::HttpClient;
use super::keys::Tenant;
use crate::config::AzureApp;

/// How long a started sign-in may take before its `state` is refused.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// Used states remembered at most (the oldest are dropped first): `/activate` needs no
/// credentials, so nothing it leads to may grow without bound.
const MAX_USED: usize = 10_000;
/// The associated data of a sealed state (a sealed refresh token does not open as one).
const STATE_AAD: &[u8] = b"activation state";
/// What the gateway asks for: the ID token (`openid profile`) and a refresh token.
pub const SCOPE: &str = "openid profile offline_access";

/// What a started sign-in keeps for its callback, sealed into its `state`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// The PKCE code verifier.
    #[serde(rename = "v")]
    pub verifier: String,
    /// The `nonce` the ID token must carry.
    #[serde(rename = "n")]
    pub nonce: String,
    /// The redirect URI sent (the code is redeemed with the same one).
    #[serde(rename = "r")]
    pub redirect_uri: String,
    /// When it started, in seconds since the Unix epoch (servers' clocks agree closely enough
    /// for a 10-minute limit).
    #[serde(rename = "t")]
    started: u64,
}

/// Starts sign-ins and takes their callbacks back: the key that seals their states and the
/// states this server has taken.
pub struct PendingSignIns {
    key: super::sealed::TokenKey,
    used: Mutex<HashMap<String, Instant>>,
    rng: SystemRandom,
}

impl Default for PendingSignIns {
    /// A key of this process alone: only this server completes its sign-ins.
    fn default() -> Self {
        let mut secret = [0u8; 32];
        // Without randomness `begin` fails too, and says so.
        let _ = SystemRandom::new().fill(&mut secret);
        PendingSignIns::new(&secret)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    /// Sign-ins whose states are sealed under a key derived from `secret_key`: every server
    /// with the same `secret_key` completes them.
    pub fn new(secret_key: &[u8; 32]) -> Self {
        PendingSignIns {
            key: super::sealed::TokenKey::for_sign_ins(secret_key),
            used: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        }
    }

    /// Starts a sign-in: the URL to send the browser to (`login_hint` pre-fills the account).
    pub fn begin(
        &self,
        app: &AzureApp,
        redirect_uri: &str,
        login_hint: Option<&str>,
    ) -> Result<String, String> {
        let pending = Pending {
            verifier: random_token(&self.rng)?,
            nonce: random_token(&self.rng)?,
            redirect_uri: redirect_uri.to_owned(),
            started: unix_now(),
        };
        let json = serde_json::to_string(&pending)
            .map_err(|e| format!("cannot encode the sign-in: {e}"))?;
        let state = self
            .key
            .seal_with(STATE_AAD, &json)
            .map_err(|e| format!("cannot seal the sign-in: {e}"))?;
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
        Ok(format!("{}?{query}", authorize_url(app)))
    }

    /// Takes the sign-in of `state` (once on this server): `None` when it does not open with
    /// this key (made up, altered, another cluster's), is older than [`STATE_TTL`] or was
    /// taken here before.
    pub fn take(&self, state: &str) -> Option<Pending> {
        let json = self.key.open_with(STATE_AAD, state).ok()?;
        let pending: Pending = serde_json::from_str(&json).ok()?;
        let age = unix_now().checked_sub(pending.started)?;
        if age >= STATE_TTL.as_secs() {
            return None;
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        used.retain(|_, at| now.duration_since(*at) < STATE_TTL);
        if used.contains_key(state) {
            return None;
        }
        if used.len() >= MAX_USED
            && let Some(oldest) = used
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
        {
            used.remove(&oldest);
        }
        used.insert(state.to_owned(), now);
        Some(pending)
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

    /// The state of a sign-in started on one server opens on another with the same
    /// `secret_key` (no session affinity), never with another key, and not once too old.
    #[test]
    fn a_sign_in_completes_on_any_server_of_the_cluster() {
        let (a, b) = (PendingSignIns::new(&[3; 32]), PendingSignIns::new(&[3; 32]));
        let state_of = |url: &str| {
            let q: HashMap<String, String> =
                serde_urlencoded::from_str(url.split_once('?').map(|x| x.1).unwrap_or(""))
                    .expect("query");
            q["state"].clone()
        };
        let state = state_of(&a.begin(&app(), "http://gw/cb", None).expect("begin"));
        assert!(
            PendingSignIns::new(&[4; 32]).take(&state).is_none(),
            "another key"
        );
        let p = b.take(&state).expect("taken on b");
        assert_eq!(p.redirect_uri, "http://gw/cb");
        assert!(b.take(&state).is_none(), "used twice on b");
        // Too old: sealed as the key would, started 11 minutes ago.
        let old = Pending {
            started: unix_now() - 660,
            ..p
        };
        let old = a
            .key
            .seal_with(STATE_AAD, &serde_json::to_string(&old).expect("json"))
            .expect("seal");
        assert!(a.take(&old).is_none(), "expired");
        // A refresh token sealed for an account is no state.
        let token = super::super::sealed::TokenKey::for_sign_ins(&[3; 32])
            .seal(uuid::Uuid::nil(), "{}")
            .expect("seal");
        assert!(a.take(&token).is_none());
    }
}
