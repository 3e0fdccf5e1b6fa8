//! Group membership from Microsoft Graph, for tokens that carry the groups overage instead of
//! the `groups` claim (a user in more groups than a token holds): `POST
//! {graph}/v1.0/users/{oid}/checkMemberGroups` with the admin group's id, authorised by the admin
//! app's own token from the client-credentials grant (`{authority}/{tenant}/oauth2/v2.0/token`,
//! scope `{graph}/.default`; the app needs `GroupMember.Read.All`).
//!
//! The app token is kept until a minute before it expires; an answer (member or not) is kept for
//! [`MEMBERSHIP_TTL`], so a burst of admin requests costs one Graph call.
//!
//! Why not `azure_identity` for the app token: for one form POST it would bring `azure_core` and
//! its HTTP pipeline (a second HTTP client stack, its own retry and TLS feature set) into a
//! binary that already has everything the grant needs; the request here is the documented
//! client-credentials call, against the configured authority (`Data.AdminAzureApp.Authority`,
//! which also lets tests point it at the Teams emulator).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AuthError;
use super::http::{HttpClient, JsonAnswer};
use super::keys::Tenant;
use crate::config::AzureApp;

/// How long a membership answer is reused.
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(300);
/// The app token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// Membership answers kept at most (expired ones are dropped first).
const MAX_ANSWERS: usize = 10_000;

/// Who asks Graph: the app (tenant, client id, Graph URL); a change of any starts afresh.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AppKey {
    tenant: Tenant,
    client_id: String,
    graph_url: String,
}

impl AppKey {
    fn of(app: &AzureApp) -> Self {
        AppKey {
            tenant: Tenant::new(&app.authority, &app.tenant),
            client_id: app.client_id.clone(),
            graph_url: app.graph_url.trim_end_matches('/').to_owned(),
        }
    }
}

/// Membership answers: (app, user object id, group id) → (member, when asked).
type Answers = HashMap<(AppKey, String, String), (bool, Instant)>;

struct AppToken {
    key: AppKey,
    token: String,
    expires: Instant,
}

/// Graph membership checks with the app token and answers cached.
pub struct Graph {
    http: HttpClient,
    token: tokio::sync::Mutex<Option<AppToken>>,
    answers: Mutex<Answers>,
}

impl Graph {
    /// A Graph client over `http`.
    pub fn new(http: HttpClient) -> Self {
        Graph {
            http,
            token: tokio::sync::Mutex::new(None),
            answers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the user with object id `oid` is a member (transitively) of `app.admin_group_id`.
    pub async fn is_member(&self, app: &AzureApp, oid: &str) -> Result<bool, AuthError> {
        if !is_object_id(oid) {
            return Err(AuthError::Invalid(
                "the token's `oid` is not an object id".into(),
            ));
        }
        let key = AppKey::of(app);
        let group = app.admin_group_id.to_ascii_lowercase();
        let answer_key = (key.clone(), oid.to_ascii_lowercase(), group.clone());
        let now = Instant::now();
        if let Some(&(member, at)) = self.lock_answers().get(&answer_key)
            && now.duration_since(at) < MEMBERSHIP_TTL
        {
            return Ok(member);
        }
        let member = self.check_member_groups(app, &key, oid, &group).await?;
        let mut answers = self.lock_answers();
        if answers.len() >= MAX_ANSWERS {
            answers.retain(|_, (_, at)| now.duration_since(*at) < MEMBERSHIP_TTL);
            if answers.len() >= MAX_ANSWERS {
                answers.clear();
            }
        }
        answers.insert(answer_key, (member, Instant::now()));
        Ok(member)
    }

    fn lock_answers(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn check_member_groups(
        &self,
        app: &AzureApp,
        key: &AppKey,
        oid: &str,
        group: &str,
    ) -> Result<bool, AuthError> {
        let url = format!("{}/v1.0/users/{oid}/checkMemberGroups", key.graph_url);
        let body = json!({ "groupIds": [group] });
        let answer = self
            .ask(app, key, "checkMemberGroups", &url, Some(&body))
            .await?;
        match answer.status {
            s if s.is_success() => Ok(answer.body["value"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|g| g.eq_ignore_ascii_case(group))),
            // The user is not in this tenant: not an admin.
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(AuthError::Unavailable(format!(
                "Graph checkMemberGroups answered {s}: {}",
                graph_error(&answer.body)
            ))),
        }
    }

    /// `GET url` (`body` `None`) or `POST url` with `body`, as the app: a 401 (the app token
    /// revoked or expired early) gets a new token and one more try; any other answer is the
    /// caller's to judge.
    async fn ask(
        &self,
        app: &AzureApp,
        key: &AppKey,
        what: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<JsonAnswer, AuthError> {
        for attempt in 0..2 {
            let token = self.app_token(app, key).await?;
            let answer = match body {
                Some(b) => self.http.post_json(url, &token, b).await,
                None => self.http.get_json_bearer(url, &token).await,
            }
            .map_err(|e| AuthError::Unavailable(format!("Graph {what}: {e}")))?;
            if answer.status == StatusCode::UNAUTHORIZED && attempt == 0 {
                *self.token.lock().await = None;
                continue;
            }
            return Ok(answer);
        }
        Err(AuthError::Unavailable(
            "Graph refused the app token twice".into(),
        ))
    }

    /// `app`'s client-credentials token for Graph (for other Graph calls of the gateway, such
    /// as presence), cached as for the membership checks; `renew` drops the cached one first
    /// (after Graph answered 401 to it).
    pub async fn token_for(&self, app: &AzureApp, renew: bool) -> Result<String, AuthError> {
        if renew {
            *self.token.lock().await = None;
        }
        self.app_token(app, &AppKey::of(app)).await
    }

    /// The app's client-credentials token for Graph, fetched when missing or about to expire.
    async fn app_token(&self, app: &AzureApp, key: &AppKey) -> Result<String, AuthError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && t.key == *key
            && Instant::now() + TOKEN_MARGIN < t.expires
        {
            return Ok(t.token.clone());
        }
        if app.client_secret.expose().is_empty() {
            return Err(AuthError::Unavailable(
                "Graph cannot be asked: \
                 Data.AdminAzureApp.ClientSecret is not set"
                    .into(),
            ));
        }
        let scope = format!("{}/.default", key.graph_url);
        let answer = self
            .http
            .post_form(
                &key.tenant.token_url(),
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &app.client_id),
                    ("client_secret", app.client_secret.expose()),
                    ("scope", &scope),
                ],
            )
            .await
            .map_err(|e| AuthError::Unavailable(format!("the app token for Graph: {e}")))?;
        let token = answer.body["access_token"].as_str();
        let (true, Some(token)) = (answer.status.is_success(), token) else {
            return Err(AuthError::Unavailable(format!(
                "the token endpoint refused the app's client credentials ({}): {}",
                answer.status,
                answer.body["error_description"]
                    .as_str()
                    .or(answer.body["error"].as_str())
                    .unwrap_or("no error description")
            )));
        };
        // `expires_in` is a number (Entra sends seconds; some proxies turn it into a string).
        let secs = answer.body["expires_in"]
            .as_u64()
            .or_else(|| answer.body["expires_in"].as_str()?.parse().ok())
            .unwrap_or(300);
        *cached = Some(AppToken {
            key: key.clone(),
            token: token.to_owned(),
            expires: Instant::now() + Duration::from_secs(secs),
        });
        Ok(token.to_owned())
    }
}

impl Graph {
    /// The E.164 number Graph reports for the user `oid` (`businessPhones`, else `mobilePhone`,
    /// spaces and dashes removed), asked as `app` (the admin app, which holds the Graph rights):
    /// `None` when Graph lists no number in E.164 form.
    pub async fn user_number(
        &self,
        app: &AzureApp,
        oid: &str,
    ) -> Result<Option<String>, AuthError> {
        if !is_object_id(oid) {
            return Err(AuthError::Invalid("`oid` is not an object id".into()));
        }
        let key = AppKey::of(app);
        let url = format!(
            "{}/v1.0/users/{oid}?$select=id,userPrincipalName,businessPhones,mobilePhone",
            key.graph_url
        );
        let answer = self.ask(app, &key, "user", &url, None).await?;
        if !answer.status.is_success() {
            return Err(AuthError::Unavailable(format!(
                "Graph user answered {}: {}",
                answer.status,
                graph_error(&answer.body)
            )));
        }
        let b = &answer.body;
        let phones = b["businessPhones"].as_array().into_iter().flatten();
        Ok(phones
            .chain(std::iter::once(&b["mobilePhone"]))
            .filter_map(Value::as_str)
            .find_map(e164))
    }
}

/// A phone number as E.164 (`+` and 8 to 15 digits) once spaces, dashes, dots and brackets are
/// taken out; `None` for anything else.
pub fn e164(s: &str) -> Option<String> {
    let n: String = s
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = n.strip_prefix('+')?;
    ((8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())).then_some(n)
}

/// Graph's `{"error":{"code","message"}}`, as text.
fn graph_error(body: &Value) -> String {
    let e = &body["error"];
    match (e["code"].as_str(), e["message"].as_str()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_owned(),
        _ => "no error body".into(),
    }
}

/// A directory object id: a GUID (hex digits and dashes), safe in a URL path.
pub fn is_object_id(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids() {
        assert!(is_object_id("0b4f7d8e-1234-4abc-9def-00112233aabb"));
        assert!(!is_object_id("0b4f7d8e-1234-4abc-9def-00112233aab"));
        assert!(!is_object_id("../../me/memberOf?x=0000000000000000000"));
        assert!(!is_object_id("0b4f7d8e+1234-4abc-9def-00112233aabb"));
    }

    #[test]
    fn numbers_as_e164() {
        assert_eq!(e164("+1 425-555-0100").as_deref(), Some("+14255550100"));
        assert_eq!(e164("+49 (30) 1234.567").as_deref(), Some("+49301234567"));
        assert_eq!(e164("425 555 0100"), None);
        assert_eq!(e164("+1 425 CALL ME"), None);
        assert_eq!(e164("+123"), None);
    }

    #[test]
    fn graph_errors_are_readable() {
        let b = json!({"error": {"code": "Authorization_RequestDenied", "message": "no"}});
        assert_eq!(graph_error(&b), "Authorization_RequestDenied: no");
        assert_eq!(graph_error(&Value::Null), "no error body");
    }
}
