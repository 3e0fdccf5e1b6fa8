//! Sign-in: who a bearer token of the admin Azure app (`Data.AdminAzureApp.*`) belongs to and
//! whether that user is an admin; and who an end user signed in with the end-user app
//! (`Data.SpsAzureApp.*`) is, by the UPN their SIP accounts carry. Owns the tenant's signing-key cache ([`keys`]), token
//! validation ([`token`]), the Graph membership check for tokens with the groups overage
//! ([`graph`]) and the HTTPS client they share ([`http`]). The settings are read from the live
//! configuration on every call, so a new tenant, client id or admin group applies without a
//! restart. `api::access` decides which routes need what; this module only answers "who is it".
//! It also owns the end user's activation ([`activation`]: the authorization-code flow with
//! PKCE; [`sealed`]: the refresh token sealed at rest; [`refresh`]: the nightly refresh task).

pub mod activation;
pub mod graph;
pub mod http;
pub mod keys;
pub mod refresh;
pub mod sealed;
pub mod token;

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::AzureApp;
use graph::Graph;
use http::HttpClient;
use keys::{KeyCache, Tenant};

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The app (`Data.AdminAzureApp` or `Data.SpsAzureApp`) is not configured (tenant or
    /// client id empty).
    #[error("Azure sign-in is not configured ({0}.Tenant and ClientId)")]
    NotConfigured(&'static str),
    /// The token is not valid (malformed, bad signature, wrong issuer or audience, expired).
    #[error("{0}")]
    Invalid(String),
    /// The token could not be judged now (keys or Graph unreachable); try again.
    #[error("{0}")]
    Unavailable(String),
}

/// How a caller was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Via {
    /// A valid token of the admin app.
    Token,
    /// The break-glass token from `<data-dir>/admin-token`, from localhost.
    AdminToken,
    /// No credentials, from localhost (config APIs only).
    Localhost,
    /// A valid token of the end-user app (`/api/me` only).
    EndUser,
}

/// The caller of a request, as the access layer established it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Identity {
    /// Who, for the audit log: the UPN (or object id) of a token, `admin-token` or `localhost`.
    pub actor: String,
    /// Whether the caller may use every API.
    pub admin: bool,
    /// How the caller was authenticated.
    pub via: Via,
    /// The validated claims of the token (`None` without one).
    #[schema(value_type = Option<Object>)]
    pub claims: Option<Map<String, Value>>,
}

impl Identity {
    /// The break-glass token's caller.
    pub fn admin_token() -> Self {
        Identity {
            actor: "admin-token".into(),
            admin: true,
            via: Via::AdminToken,
            claims: None,
        }
    }

    /// An unauthenticated local caller of a config API.
    pub fn localhost() -> Self {
        Identity {
            actor: "localhost".into(),
            admin: false,
            via: Via::Localhost,
            claims: None,
        }
    }
}

/// Validates admin-app tokens and decides admin membership. Cheap to clone (shared caches).
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<KeyCache>,
    graph: Arc<Graph>,
    http: HttpClient,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new()
    }
}

impl Authenticator {
    /// An authenticator with empty caches.
    pub fn new() -> Self {
        let http = HttpClient::new();
        Authenticator {
            keys: Arc::new(KeyCache::new(http.clone())),
            graph: Arc::new(Graph::new(http.clone())),
            http,
        }
    }

    /// Validates `token` for `app` and tells who it is and whether they are an admin: a member of
    /// `app.admin_group_id` by the `groups` claim or, when the token has the groups overage
    /// instead, by Graph.
    pub async fn authenticate(&self, token: &str, app: &AzureApp) -> Result<Identity, AuthError> {
        let claims = self.claims(token, app, "Data.AdminAzureApp").await?;
        let actor = actor(&claims);
        let admin = match groups(&claims, &app.admin_group_id) {
            _ if app.admin_group_id.is_empty() => false,
            Groups::Member => true,
            Groups::NotMember => false,
            Groups::Overage => {
                let oid = claims.get("oid").and_then(Value::as_str).ok_or_else(|| {
                    AuthError::Invalid("the token has the groups overage but no `oid`".into())
                })?;
                self.graph.is_member(app, oid).await?
            }
        };
        Ok(Identity {
            actor,
            admin,
            via: Via::Token,
            claims: Some(claims),
        })
    }
}

impl Authenticator {
    /// Validates `token` for the end-user app `app` (`Data.SpsAzureApp`): the caller is the user
    /// the token's `upn` (else `preferred_username`) names, never an admin.
    pub async fn authenticate_end_user(
        &self,
        token: &str,
        app: &AzureApp,
    ) -> Result<Identity, AuthError> {
        let claims = self.claims(token, app, "Data.SpsAzureApp").await?;
        let upn = user_principal(&claims).ok_or_else(|| {
            AuthError::Invalid("the token names no user (no `upn` or `preferred_username`)".into())
        })?;
        Ok(Identity {
            actor: upn,
            admin: false,
            via: Via::EndUser,
            claims: Some(claims),
        })
    }

    /// Validates the ID token of an activation for the end-user app `app`: signature (the
    /// tenant's keys), issuer, audience (the client id), lifetime, and the `nonce` the sign-in
    /// was started with; the claims.
    pub async fn id_token(
        &self,
        token: &str,
        app: &AzureApp,
        nonce: &str,
    ) -> Result<Map<String, Value>, AuthError> {
        let claims = self.claims(token, app, "Data.SpsAzureApp").await?;
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(AuthError::Invalid(
                "the ID token's `nonce` is not the sign-in's".into(),
            ));
        }
        Ok(claims)
    }

    /// The HTTPS client shared with the key cache and Graph.
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// The Graph client (the admin app's token, membership and user lookups).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The validated claims of `token` for `app` (`leaves` names the app's configuration).
    async fn claims(
        &self,
        token: &str,
        app: &AzureApp,
        leaves: &'static str,
    ) -> Result<Map<String, Value>, AuthError> {
        if app.tenant.is_empty() || app.client_id.is_empty() {
            return Err(AuthError::NotConfigured(leaves));
        }
        let kid = token::key_id(token)?;
        let tenant = Tenant::new(&app.authority, &app.tenant);
        let set = self.keys.keys_for(&tenant, &kid).await?;
        let key = set.get(&kid).ok_or_else(|| {
            AuthError::Invalid(format!(
                "the token's signing key `{kid}` is not the tenant's"
            ))
        })?;
        token::validate(token, key, &set.issuer, &app.client_id)
    }
}

/// The user principal name a token names: `upn`, else `preferred_username` (v2.0 tokens of
/// guests and of some tenants carry only the latter).
pub fn user_principal(claims: &Map<String, Value>) -> Option<String> {
    ["upn", "preferred_username"]
        .iter()
        .find_map(|c| claims.get(*c).and_then(Value::as_str))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The audit name of a token's user: UPN, else preferred username, else object id, else subject.
fn actor(claims: &Map<String, Value>) -> String {
    ["upn", "preferred_username", "oid", "sub"]
        .iter()
        .find_map(|c| claims.get(*c).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

/// What a token says about membership of one group.
#[derive(Debug, PartialEq, Eq)]
enum Groups {
    Member,
    NotMember,
    /// The token does not list the user's groups (too many); ask Graph.
    Overage,
}

/// Reads the `groups` claim, or the overage indicators Entra puts in its place: `hasgroups: true`
/// (implicit flow) or `_claim_names.groups` pointing into `_claim_sources`.
fn groups(claims: &Map<String, Value>, group: &str) -> Groups {
    if let Some(list) = claims.get("groups").and_then(Value::as_array) {
        let member = list
            .iter()
            .filter_map(Value::as_str)
            .any(|g| g.eq_ignore_ascii_case(group));
        return if member {
            Groups::Member
        } else {
            Groups::NotMember
        };
    }
    let has_groups = claims.get("hasgroups").and_then(Value::as_bool) == Some(true);
    let claim_names = claims
        .get("_claim_names")
        .is_some_and(|n| n.get("groups").is_some());
    if has_groups || claim_names || claims.contains_key("_claim_sources") {
        Groups::Overage
    } else {
        Groups::NotMember
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn group_claim_and_overage() {
        let g = "11111111-2222-3333-4444-555555555555";
        let c = map(json!({"groups": ["x", g.to_uppercase()]}));
        assert_eq!(groups(&c, g), Groups::Member);
        assert_eq!(groups(&map(json!({"groups": ["x"]})), g), Groups::NotMember);
        assert_eq!(groups(&map(json!({})), g), Groups::NotMember);
        assert_eq!(groups(&map(json!({"hasgroups": true})), g), Groups::Overage);
        assert_eq!(
            groups(&map(json!({"hasgroups": false})), g),
            Groups::NotMember
        );
        let overage = json!({
            "_claim_names": {"groups": "src1"},
            "_claim_sources": {"src1": {"endpoint": "https://graph.windows.net/t/users/u/getMemberObjects"}},
        });
        assert_eq!(groups(&map(overage), g), Groups::Overage);
    }

    #[test]
    fn actor_prefers_upn() {
        let c = map(json!({"upn": "a@x", "oid": "o", "preferred_username": "p"}));
        assert_eq!(actor(&c), "a@x");
        assert_eq!(actor(&map(json!({"oid": "o", "sub": "s"}))), "o");
        assert_eq!(actor(&map(json!({}))), "unknown");
    }
}
