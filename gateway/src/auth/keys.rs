//! The signing keys of the admin app's tenant: the OpenID discovery document
//! (`{authority}/{tenant}/v2.0/.well-known/openid-configuration`, which names the issuer —
//! `{authority}/{tenant id}/v2.0` — and the JWKS, `{authority}/{tenant}/discovery/v2.0/keys`)
//! and the RSA keys in it, cached per authority and tenant.
//!
//! Keys are fetched on first use, again after [`MAX_AGE`], and again when a token names a key id
//! the cache lacks (Entra rotates keys), but for one authority never more often than every
//! [`MIN_REFETCH`], so tokens with made-up key ids cannot turn the gateway into a load generator.
//! Readers take a snapshot without waiting; one fetch at a time runs (single flight).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use serde_json::Value;

use super::AuthError;
use super::http::HttpClient;

/// Keys older than this are fetched again.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Shortest time between two fetches for the same authority and tenant.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);

/// Where the keys of one tenant come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tenant {
    /// The authority without a trailing `/` (`https://login.microsoftonline.com`).
    pub authority: String,
    /// Tenant id or domain.
    pub tenant: String,
}

impl Tenant {
    /// The tenant `tenant` of `authority`.
    pub fn new(authority: &str, tenant: &str) -> Self {
        Tenant {
            authority: authority.trim_end_matches('/').to_owned(),
            tenant: tenant.to_owned(),
        }
    }

    /// `{authority}/{tenant}/v2.0/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            self.authority, self.tenant
        )
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant)
    }
}

/// The keys of one tenant as last fetched.
pub struct KeySet {
    /// The issuer its tokens carry (`iss`).
    pub issuer: String,
    keys: HashMap<String, DecodingKey>,
    fetched: Instant,
}

impl KeySet {
    /// The key with id `kid`.
    pub fn get(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid)
    }
}

struct Cached {
    tenant: Tenant,
    set: Option<Arc<KeySet>>,
    last_attempt: Instant,
}

/// The cache (only the configured tenant's keys are kept; a new tenant replaces them).
pub struct KeyCache {
    http: HttpClient,
    current: RwLock<Option<Cached>>,
    fetching: tokio::sync::Mutex<()>,
}

/// What the cache says about a tenant before any fetch.
enum Snapshot {
    Fresh(Arc<KeySet>),
    /// Stale or missing `kid`; the set (if any) and whether a fetch is allowed now.
    Refetch(Option<Arc<KeySet>>, bool),
}

impl KeyCache {
    /// An empty cache fetching through `http`.
    pub fn new(http: HttpClient) -> Self {
        KeyCache {
            http,
            current: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn snapshot(&self, tenant: &Tenant, kid: &str) -> Snapshot {
        let now = Instant::now();
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref().filter(|c| c.tenant == *tenant) {
            None => Snapshot::Refetch(None, true),
            Some(c) => {
                let may = now.duration_since(c.last_attempt) >= MIN_REFETCH;
                match &c.set {
                    Some(s) if s.get(kid).is_some() && now.duration_since(s.fetched) < MAX_AGE => {
                        Snapshot::Fresh(s.clone())
                    }
                    set => Snapshot::Refetch(set.clone(), may),
                }
            }
        }
    }

    /// The key set of `tenant` that holds `kid`, fetching when needed and allowed. A set without
    /// `kid` is returned when no fetch is allowed now (the caller then rejects the token).
    pub async fn keys_for(&self, tenant: &Tenant, kid: &str) -> Result<Arc<KeySet>, AuthError> {
        match self.snapshot(tenant, kid) {
            Snapshot::Fresh(s) => return Ok(s),
            Snapshot::Refetch(Some(s), false) => return Ok(s),
            Snapshot::Refetch(None, false) => {
                return Err(AuthError::Unavailable(format!(
                    "the signing keys of tenant `{}` could not be fetched; retrying shortly",
                    tenant.tenant
                )));
            }
            Snapshot::Refetch(_, true) => {}
        }
        let _one = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        match self.snapshot(tenant, kid) {
            Snapshot::Fresh(s) | Snapshot::Refetch(Some(s), false) => return Ok(s),
            Snapshot::Refetch(None, false) => {
                return Err(AuthError::Unavailable(format!(
                    "the signing keys of tenant `{}` could not be fetched; retrying shortly",
                    tenant.tenant
                )));
            }
            Snapshot::Refetch(_, true) => {}
        }
        let fetched = self.fetch(tenant).await;
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        let previous = guard
            .take()
            .filter(|c| c.tenant == *tenant)
            .and_then(|c| c.set);
        let (set, result) = match fetched {
            Ok(set) => {
                let set = Arc::new(set);
                (Some(set.clone()), Ok(set))
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant.tenant, "fetching the signing keys failed: {e}");
                // Keep serving the previous keys while the endpoint is unreachable.
                match previous.clone() {
                    Some(p) => (Some(p.clone()), Ok(p)),
                    None => (None, Err(e)),
                }
            }
        };
        *guard = Some(Cached {
            tenant: tenant.clone(),
            set,
            last_attempt: Instant::now(),
        });
        result
    }

    async fn fetch(&self, tenant: &Tenant) -> Result<KeySet, AuthError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            AuthError::Unavailable(format!("{what} of tenant `{}`: {e}", tenant.tenant))
        };
        let url = tenant.discovery_url();
        let doc = self
            .http
            .get_json(&url)
            .await
            .map_err(|e| unavailable("the discovery document", &e))?;
        if !doc.status.is_success() {
            return Err(unavailable(
                "the discovery document",
                &format!("{url} answered {}", doc.status),
            ));
        }
        let (issuer, jwks_uri) = discovery(&doc.body, &tenant.authority)
            .map_err(|e| unavailable("the discovery document", &e))?;
        let jwks = self
            .http
            .get_json(&jwks_uri)
            .await
            .map_err(|e| unavailable("the signing keys", &e))?;
        if !jwks.status.is_success() {
            return Err(unavailable(
                "the signing keys",
                &format!("{jwks_uri} answered {}", jwks.status),
            ));
        }
        let keys = rsa_keys(&jwks.body);
        if keys.is_empty() {
            return Err(unavailable("the signing keys", &"no RSA signing key"));
        }
        tracing::info!(tenant = %tenant.tenant, %issuer, keys = keys.len(), "admin app signing keys fetched");
        Ok(KeySet {
            issuer,
            keys,
            fetched: Instant::now(),
        })
    }
}

/// The issuer and JWKS URL of a discovery document. The JWKS must be served from the
/// authority's own origin, and the issuer must name one tenant (multi-tenant endpoints such as
/// `common` have `{tenantid}` there, which a single-tenant admin app cannot accept).
pub fn discovery(doc: &Value, authority: &str) -> Result<(String, String), String> {
    let issuer = doc["issuer"].as_str().ok_or("no `issuer`")?;
    let jwks_uri = doc["jwks_uri"].as_str().ok_or("no `jwks_uri`")?;
    if issuer.contains('{') {
        return Err(format!(
            "issuer `{issuer}` is a template: configure a tenant id or domain, not a multi-tenant endpoint"
        ));
    }
    let origin = |u: &str| {
        let (scheme, rest) = u.split_once("://")?;
        Some(format!(
            "{scheme}://{}",
            rest.split(['/', '?', '#']).next()?.to_ascii_lowercase()
        ))
    };
    if origin(jwks_uri).is_none() || origin(jwks_uri) != origin(authority) {
        return Err(format!(
            "jwks_uri `{jwks_uri}` is not on the authority `{authority}`"
        ));
    }
    Ok((issuer.to_owned(), jwks_uri.to_owned()))
}

/// The RSA signature keys of a JWKS by key id; other keys (and malformed ones) are skipped.
pub fn rsa_keys(jwks: &Value) -> HashMap<String, DecodingKey> {
    let mut out = HashMap::new();
    for k in jwks["keys"].as_array().into_iter().flatten() {
        let s = |f: &str| k[f].as_str();
        if s("kty") != Some("RSA") || s("use").is_some_and(|u| u != "sig") {
            continue;
        }
        if s("alg").is_some_and(|a| a != "RS256") {
            continue;
        }
        let (Some(kid), Some(n), Some(e)) = (s("kid"), s("n"), s("e")) else {
            continue;
        };
        match DecodingKey::from_rsa_components(n, e) {
            Ok(key) => {
                out.insert(kid.to_owned(), key);
            }
            Err(err) => tracing::warn!(kid, "skipping a malformed signing key: {err}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn discovery_checks_issuer_and_origin() {
        let a = "https://login.microsoftonline.com";
        let doc = json!({
            "issuer": "https://login.microsoftonline.com/t1/v2.0",
            "jwks_uri": "https://login.microsoftonline.com/t1/discovery/v2.0/keys",
        });
        assert_eq!(
            discovery(&doc, a),
            Ok((
                "https://login.microsoftonline.com/t1/v2.0".into(),
                "https://login.microsoftonline.com/t1/discovery/v2.0/keys".into()
            ))
        );
        let foreign = json!({"issuer": "x", "jwks_uri": "https://evil.example/keys"});
        assert!(discovery(&foreign, a).is_err());
        let common = json!({
            "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
            "jwks_uri": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
        });
        assert!(discovery(&common, a).is_err());
        assert!(discovery(&json!({}), a).is_err());
    }

    #[test]
    fn only_rsa_signature_keys() {
        let jwks = json!({"keys": [
            {"kty": "RSA", "use": "sig", "kid": "a", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "use": "enc", "kid": "b", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "kid": "c", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "d", "n": "sXch"},
            {"kty": "RSA", "kid": "e", "n": "sXch", "e": "AQAB", "alg": "RS512"},
            "junk",
        ]});
        let keys = rsa_keys(&jwks);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["a"]);
        assert!(rsa_keys(&json!({"keys": 3})).is_empty());
    }
}
