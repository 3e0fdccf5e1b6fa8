//! The Microsoft Graph face: group membership of users from the table given on the command line
//! (`--groups FILE`, `--member OID=GROUP`): `POST /v1.0/users/{id}/checkMemberGroups`
//! (`{"groupIds":[…]}` → the subset the user is in) and `POST /v1.0/users/{id}/getMemberGroups`
//! (`{"securityEnabledOnly":…}` → all of them). Callers need an app token this emulator issued
//! (`token` face), as Graph needs one from Entra; errors have Graph's `{"error":{"code","message"}}`
//! shape. Presence (`setPresence`/`clearPresence`) and users join here for the Teams leg.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Shared;
use crate::token::now;

/// Most group ids `checkMemberGroups` accepts in one call (Graph's limit).
const MAX_GROUP_IDS: usize = 20;

/// Graph's error answer `{"error":{"code","message"}}`.
struct GraphError(StatusCode, &'static str, String);

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let GraphError(status, code, message) = self;
        (
            status,
            Json(json!({"error": {"code": code, "message": message, "innerError": {}}})),
        )
            .into_response()
    }
}

fn graph_error(status: StatusCode, code: &'static str, message: &str) -> GraphError {
    GraphError(status, code, message.to_owned())
}

/// Checks the caller's app token: signed by this emulator, not expired, an app token.
fn authorise(s: &Shared, headers: &HeaderMap) -> Result<(), GraphError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token is empty.",
            )
        })?;
    let invalid = || {
        graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience or signature.",
        )
    };
    let claims = s.signing.verify(token).ok_or_else(invalid)?;
    let expired = claims["exp"].as_i64().is_none_or(|e| e < now());
    if expired {
        return Err(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        ));
    }
    if claims["idtyp"] != "app" || claims["iss"] != json!(s.issuer()) {
        return Err(invalid());
    }
    Ok(())
}

/// The groups of user `id`, or Graph's 404.
fn groups_of<'a>(s: &'a Shared, id: &str) -> Result<&'a [String], GraphError> {
    s.members
        .get(&id.to_ascii_lowercase())
        .map(Vec::as_slice)
        .ok_or_else(|| {
            graph_error(
                StatusCode::NOT_FOUND,
                "Request_ResourceNotFound",
                &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
            )
        })
}

fn collection(s: &Shared, value: Vec<String>) -> Response {
    Json(json!({
        "@odata.context": format!("{}/v1.0/$metadata#Collection(Edm.String)", s.base),
        "value": value,
    }))
    .into_response()
}

/// `POST /v1.0/users/{id}/checkMemberGroups`.
pub async fn check_member_groups(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    if let Err(r) = authorise(&s, &headers) {
        return r.into_response();
    }
    let bad = || {
        graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "Invalid request: `groupIds` must be an array of 1 to 20 group ids.",
        )
        .into_response()
    };
    let Some(Json(body)) = body else {
        return bad();
    };
    let Some(asked) = body["groupIds"].as_array() else {
        return bad();
    };
    if asked.is_empty() || asked.len() > MAX_GROUP_IDS {
        return bad();
    }
    let groups = match groups_of(&s, &id) {
        Ok(g) => g,
        Err(r) => return r.into_response(),
    };
    let hits = asked
        .iter()
        .filter_map(Value::as_str)
        .filter(|a| groups.iter().any(|g| g.eq_ignore_ascii_case(a)))
        .map(str::to_owned)
        .collect();
    collection(&s, hits)
}

/// `POST /v1.0/users/{id}/getMemberGroups`.
pub async fn get_member_groups(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    if let Err(r) = authorise(&s, &headers) {
        return r.into_response();
    }
    if body.is_none_or(|Json(b)| !b["securityEnabledOnly"].is_boolean()) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "Invalid request: `securityEnabledOnly` (boolean) is required.",
        )
        .into_response();
    }
    match groups_of(&s, &id) {
        Ok(g) => collection(&s, g.to_vec()),
        Err(r) => r.into_response(),
    }
}
