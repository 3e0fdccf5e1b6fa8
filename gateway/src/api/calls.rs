//! `GET /api/calls` (the running calls of this server: legs, codecs, duration, packet counters),
//! `DELETE /api/calls/{id}` (hang up), `GET /api/calls/{id}/messages` (the SIP messages of a
//! running or recent call of this server, for the ladder diagram) and `GET /api/calls/history`
//! (the stored records of every server's ended calls, paged and filtered). Each call task answers
//! for itself, the call directory keeps the recent ended ones' messages, the store their records;
//! nothing here holds call state.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::ApiState;
use super::openapi::NotFound;
use super::problem::{PathParam, Problem, QueryParams};
use crate::calls::{CallInfo, SipMessage};
use crate::store::{CallRecordQuery, EndedCall};

/// Records per page of the history unless `limit` says otherwise.
pub const HISTORY_DEFAULT: u64 = 100;
/// The most records one page of the history holds.
pub const HISTORY_MAX: u64 = 1000;
/// The largest `offset` (page deeper with `before`).
pub const HISTORY_MAX_OFFSET: u64 = 100_000;
/// The longest `user` filter, in characters.
pub const USER_FILTER_MAX: usize = 256;

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

/// `GET /api/calls/history` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Records per page (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000, example = 50)]
    pub limit: Option<u64>,
    /// Skip this many matching records first (at most 100000; page deeper with `before`).
    #[param(minimum = 0, maximum = 100000, example = 0)]
    pub offset: Option<u64>,
    /// Only calls that ended strictly before this time (RFC 3339). To page, pass the
    /// `ended_at` of the last record of the previous page.
    #[param(example = "2026-03-01T10:00:00.123456789Z")]
    pub before: Option<DateTime<Utc>>,
    /// Only calls that ended at or after this time (RFC 3339).
    #[param(example = "2026-03-01T00:00:00Z")]
    pub since: Option<DateTime<Utc>>,
    /// Only calls whose caller or callee contains this text (case-insensitive), e.g. a
    /// username or a number.
    #[param(max_length = 256, example = "alice")]
    pub user: Option<String>,
}

impl HistoryQuery {
    /// The store query, or a 400 naming what is out of range.
    fn to_query(&self) -> Result<CallRecordQuery, Problem> {
        let limit = self.limit.unwrap_or(HISTORY_DEFAULT);
        if !(1..=HISTORY_MAX).contains(&limit) {
            return Err(Problem::bad_request(format!(
                "limit must be 1–{HISTORY_MAX}, not {limit}"
            )));
        }
        let offset = self.offset.unwrap_or(0);
        if offset > HISTORY_MAX_OFFSET {
            return Err(Problem::bad_request(format!(
                "offset must be at most {HISTORY_MAX_OFFSET} (page with `before` instead)"
            )));
        }
        let user = self.user.clone().filter(|u| !u.is_empty());
        if user
            .as_deref()
            .is_some_and(|u| u.chars().count() > USER_FILTER_MAX)
        {
            return Err(Problem::bad_request(format!(
                "user must be at most {USER_FILTER_MAX} characters"
            )));
        }
        Ok(CallRecordQuery {
            // Both bounded above: the casts cannot truncate.
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            offset: usize::try_from(offset).unwrap_or(usize::MAX),
            before: self.before,
            since: self.since,
            user,
        })
    }
}

/// `GET /api/calls/history`.
#[utoipa::path(get, path = "/api/calls/history", tag = "calls", params(HistoryQuery),
    responses((status = 200, description = "The stored records of ended calls of every server \
        sharing the store, latest end first (kept `Data.System.CallRecordDays` days)",
        body = [EndedCall])))]
pub async fn history(
    State(state): State<ApiState>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> Result<Json<Vec<EndedCall>>, Problem> {
    let query = q.to_query()?;
    Ok(Json(state.store.list_call_records(&query).await?))
}
