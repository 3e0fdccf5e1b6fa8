//! `GET /api/debug/claims` (cSPS 0.3.1): the caller as the access layer saw it — who (the audit
//! name), whether an admin, how authenticated, and the validated claims of the token (`null` for
//! the break-glass token). Any signed-in user of the admin app may ask, to see why they are (not)
//! an admin; the token is not echoed.

use axum::Json;
use axum::extract::Extension;

use super::problem::Problem;
use crate::auth::Identity;

/// The caller's identity and claims.
#[utoipa::path(get, path = "/api/debug/claims", tag = "system",
    responses(
        (status = 200, description = "The caller as the access layer saw it, with the token's \
            validated claims (`null` for the break-glass token)", body = Identity),
        (status = 401, response = super::openapi::Unauthorized),
    ))]
pub async fn claims(id: Option<Extension<Identity>>) -> Result<Json<Identity>, Problem> {
    id.map(|Extension(id)| Json(id))
        .ok_or_else(|| Problem::unauthorized("no authenticated caller"))
}
