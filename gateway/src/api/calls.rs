//! `GET /api/calls` (the running calls of this server: legs, codecs, duration, packet counters)
//! and `DELETE /api/calls/{id}` (hang up). Each call task answers for itself; nothing here holds
//! call state.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::ApiState;
use super::problem::Problem;
use crate::calls::CallInfo;

/// `GET /api/calls`.
pub async fn list(State(state): State<ApiState>) -> Json<Vec<CallInfo>> {
    Json(state.calls.list().await)
}

/// `DELETE /api/calls/{id}`: 204 once the call task was told to hang up, 404 when there is none.
pub async fn hang_up(
    State(state): State<ApiState>,
    Path(id): Path<String>,
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
