//! `GET /api/calls` (the running calls of this server: legs, codecs, duration, packet counters)
//! and `DELETE /api/calls/{id}` (hang up). Each call task answers for itself; nothing here holds
//! call state.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::ApiState;
use super::openapi::NotFound;
use super::problem::{PathParam, Problem};
use crate::calls::CallInfo;

/// `GET /api/calls`.
#[utoipa::path(get, path = "/api/calls", tag = "calls",
    responses((status = 200, description = "The running calls of this server", body = [CallInfo])))]
pub async fn list(State(state): State<ApiState>) -> Json<Vec<CallInfo>> {
    Json(state.calls.list().await)
}

/// `DELETE /api/calls/{id}`: 204 once the call task was told to hang up, 404 when there is none.
#[utoipa::path(delete, path = "/api/calls/{id}", tag = "calls",
    params(("id" = String, Path, description = "The call's number (`id` of `GET /api/calls`)",
        example = "1")),
    responses(
        (status = 204, description = "The call task was told to hang up"),
        (status = 404, response = NotFound),
    ))]
pub async fn hang_up(
    State(state): State<ApiState>,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, Problem> {
    let Ok(no) = id.parse::<u64>() else {
        return Err(Problem::not_found(format!("no call `{id}`")));
    };
    if state.calls.hang_up(no).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no call `{id}`")))
    }
}
