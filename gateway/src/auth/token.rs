//! Validation of one access token of an Entra ID app (the admin app or the end-user app) (a JWT): RS256 only, the key named by the header's
//! `kid`, issuer, audience (the client id or `api://{client id}`), and lifetime (`exp` required,
//! `nbf` honoured, [`LEEWAY`] of clock skew). The claims of a valid token are returned as they are.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::AuthError;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY: u64 = 60;

/// The header fields needed before the key is known: the key id.
pub fn key_id(token: &str) -> Result<String, AuthError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| AuthError::Invalid(format!("the bearer token is not a JWT: {e}")))?;
    if header.alg != Algorithm::RS256 {
        return Err(AuthError::Invalid(format!(
            "tokens must be signed with RS256, not {:?}",
            header.alg
        )));
    }
    header
        .kid
        .ok_or_else(|| AuthError::Invalid("the token names no signing key (`kid`)".into()))
}

/// Checks signature, issuer, audience and lifetime; returns the claims.
pub fn validate(
    token: &str,
    key: &DecodingKey,
    issuer: &str,
    client_id: &str,
) -> Result<Map<String, Value>, AuthError> {
    let mut v = Validation::new(Algorithm::RS256);
    v.leeway = LEEWAY;
    v.validate_nbf = true;
    v.set_issuer(&[issuer]);
    v.set_audience(&[client_id.to_owned(), format!("api://{client_id}")]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    jsonwebtoken::decode::<Map<String, Value>>(token, key, &v)
        .map(|d| d.claims)
        .map_err(|e| {
            AuthError::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".into(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (`nbf`)".into(),
                ErrorKind::InvalidSignature => "the token's signature is not valid".into(),
                ErrorKind::InvalidIssuer => format!("the token was not issued by `{issuer}`"),
                ErrorKind::InvalidAudience => {
                    format!("the token is not for the app `{client_id}`")
                }
                ErrorKind::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
                _ => format!("the token is not valid: {e}"),
            })
        })
}
