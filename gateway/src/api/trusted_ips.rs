//! `/api/config/{server}/trusted-ips`: the `Data.SipConfig.TrustedIps` leaf as a list resource.
//! A change to `*` (the global entry) is written to the global entry and to every server entry
//! (cSPS semantics: a global write overrides the servers' values of that leaf); a change to one
//! server writes only its entry. The running server reloads its settings after every write.
//! Both go through the configuration write path of [`super::config`] (retried, audited).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::ApiState;
use super::config::Server;
use super::config::{self, Actor, read_entry};
use super::openapi::{NotFound, Unprocessable, UnsupportedMediaType};
use super::problem::{JsonBody, PathParam, Problem, QueryParams};
use crate::config::{leaf, parse_cidr};
use crate::store::ConfigEntry;

/// Dotted path of the leaf.
pub const LEAF: &str = "Data.SipConfig.TrustedIps";

/// `POST` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"cidr": "192.168.10.0/24"}))]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    /// Address or CIDR range.
    pub cidr: String,
}

/// `DELETE` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Address or CIDR range to remove (required).
    #[param(required = true, example = "192.168.10.0/24")]
    pub cidr: Option<String>,
}

pub use super::config::valid_entry_name;

/// The leaf's values as stored (strings only).
fn ranges(entry: &ConfigEntry) -> Vec<String> {
    match leaf(entry, LEAF) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// True when a stored value denotes the same range as `net`.
fn same(stored: &str, net: &ipnet::IpNet) -> bool {
    parse_cidr(stored).is_ok_and(|n| n == *net)
}

/// Writes `list` through the shared configuration write path (global: every server entry, then
/// `*`; audited; reloaded).
async fn write(
    state: &ApiState,
    actor: &Actor,
    action: &str,
    server: &str,
    list: &[String],
) -> Result<(), Problem> {
    let Some(l) = crate::config::model::find(LEAF) else {
        return Err(Problem::not_found(format!(
            "no configuration leaf `{LEAF}`"
        )));
    };
    let sets = [(l, Value::from(list.to_vec()))];
    config::write(state, actor, action, server, &sets, &sets, Some(LEAF)).await
}

/// `GET /api/config/{server}/trusted-ips` → `["10.0.0.0/8"]`.
#[utoipa::path(get, path = "/api/config/{server}/trusted-ips", tag = "config", params(Server),
    responses(
        (status = 200, description = "The trusted ranges (`Data.SipConfig.TrustedIps`)",
            body = [String], example = json!(["10.0.0.0/8"])),
        (status = 404, response = NotFound),
    ))]
pub async fn list(
    State(state): State<ApiState>,
    PathParam(server): PathParam<String>,
) -> Result<Json<Vec<String>>, Problem> {
    Ok(Json(ranges(&read_entry(&state, &server).await?)))
}

/// `POST /api/config/{server}/trusted-ips` `{"cidr":"…"}` → 201 with the new list; adding a
/// range that is already there changes nothing.
#[utoipa::path(post, path = "/api/config/{server}/trusted-ips", tag = "config", params(Server),
    request_body = AddBody,
    responses(
        (status = 201, description = "Added (or already there); the new list", body = [String]),
        (status = 404, response = NotFound),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ))]
pub async fn add(
    State(state): State<ApiState>,
    actor: Actor,
    PathParam(server): PathParam<String>,
    JsonBody(body): JsonBody<AddBody>,
) -> Result<Response, Problem> {
    let net = parse_cidr(&body.cidr).map_err(|m| Problem::invalid("cidr", m))?;
    let _writing = state.config_writes.lock().await;
    let own = read_entry(&state, &server).await?;
    let mut list = ranges(&own);
    if !list.iter().any(|s| same(s, &net)) {
        list.push(net.to_string());
    }
    write(&state, &actor, "trusted-ips.add", &server, &list).await?;
    Ok((StatusCode::CREATED, Json(list)).into_response())
}

/// `DELETE /api/config/{server}/trusted-ips?cidr=…` → 204, 404 when the range is not listed.
#[utoipa::path(delete, path = "/api/config/{server}/trusted-ips", tag = "config",
    params(Server, DeleteQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
    ))]
pub async fn remove(
    State(state): State<ApiState>,
    actor: Actor,
    PathParam(server): PathParam<String>,
    QueryParams(q): QueryParams<DeleteQuery>,
) -> Result<StatusCode, Problem> {
    let Some(raw) = q.cidr.filter(|c| !c.trim().is_empty()) else {
        return Err(Problem::invalid(
            "cidr",
            "the `cidr` query parameter is required",
        ));
    };
    let net = parse_cidr(&raw).map_err(|m| Problem::invalid("cidr", m))?;
    let _writing = state.config_writes.lock().await;
    let own = read_entry(&state, &server).await?;
    let list = ranges(&own);
    let kept: Vec<String> = list.iter().filter(|s| !same(s, &net)).cloned().collect();
    if kept.len() == list.len() {
        return Err(Problem::not_found(format!(
            "`{net}` is not a trusted range of `{server}`"
        )));
    }
    write(&state, &actor, "trusted-ips.remove", &server, &kept).await?;
    Ok(StatusCode::NO_CONTENT)
}
