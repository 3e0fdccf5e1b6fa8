//! `GET /api/calls` (the running calls of this server: legs, codecs, duration, packet counters),
//! `DELETE /api/calls/{id}` (hang up), `GET /api/calls/{id}/messages` (the SIP messages of a
//! running or recent call, for the ladder diagram) and `GET /api/calls/history` (the records of
//! the recent ended calls). Each call task answers for itself, the call directory keeps the
//! recent ended ones; nothing here holds call state.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::ApiState;
use super::openapi::NotFound;
use super::problem::{PathParam, Problem};
use crate::calls::{CallInfo, CallRecord, SipMessage};

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

/// `GET /api/calls/{id}/messages`.
#[utoipa::path(get, path = "/api/calls/{id}/messages", tag = "calls",
    params(("id" = String, Path, description = "The call's number (`id` of `GET /api/calls` or \
        of `GET /api/calls/history`)", example = "1")),
    responses(
        (status = 200, description = "The SIP messages of the call's legs in the order the \
            gateway received or sent them (at most 200 per call; the oldest ended calls are \
            forgotten first)", body = [SipMessage]),
        (status = 404, response = NotFound),
    ))]
pub async fn messages(
    State(state): State<ApiState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Vec<SipMessage>>, Problem> {
    let found = match id.parse::<u64>() {
        Ok(no) => state.calls.messages(no).await,
        Err(_) => None,
    };
    found
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no call `{id}` running or kept")))
}

/// `GET /api/calls/history`.
#[utoipa::path(get, path = "/api/calls/history", tag = "calls",
    responses((status = 200, description = "The records of the recent ended calls of this \
        server, newest first (the last 1000 at most)", body = [CallRecord])))]
pub async fn history(State(state): State<ApiState>) -> Json<Vec<CallRecord>> {
    Json(state.calls.history())
}
