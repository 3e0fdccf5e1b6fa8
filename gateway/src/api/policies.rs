//! `/api/policies`: the WASM policy modules of this server — list and show (kind, version,
//! hash, load time, counters, why switched off), upload (`PUT`, `application/wasm`), remove
//! (`DELETE`, back to the built-in rule) and switch off (`POST …/disable`). An upload is checked
//! against its world and compiled before it is stored, so the store only ever holds modules that
//! load; it is then stored (every server of a cluster loads it) and takes over new decisions on
//! this server at once.

use std::sync::Arc;

use axum::Json;
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;

use super::ApiState;
use super::config::{self, Actor};
use super::openapi::{Conflict, NotFound, NotWasm, PayloadTooLarge, Unprocessable};
use super::problem::{PathParam, Problem};
use crate::policy::{PolicyEngine, PolicyError, PolicyKind, PolicyStatus, hash};
use crate::store::{PolicyMeta, PolicyRecord};

/// Largest component accepted (MongoDB documents stay below their 16 MiB limit).
pub const MAX_WASM: usize = 8 << 20;

fn engine(state: &ApiState) -> Result<&Arc<PolicyEngine>, Problem> {
    state
        .policies
        .as_ref()
        .ok_or_else(|| Problem::unavailable("the policy engine is not running on this server"))
}

fn kind(name: &str) -> Result<PolicyKind, Problem> {
    PolicyKind::parse(name).ok_or_else(|| {
        Problem::not_found(format!(
            "no policy kind `{name}`; the kinds are routing, admission, quirks"
        ))
    })
}

/// The `{kind}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct Kind {
    /// `routing`, `admission` or `quirks` (anything else is not found).
    #[param(example = "routing")]
    kind: String,
}

/// `GET /api/policies` → one entry per kind.
#[utoipa::path(get, path = "/api/policies", tag = "policies",
    responses((status = 200, description = "Each kind: the module in use (or the built-in rule) \
        and its counters", body = [PolicyStatus])))]
pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<PolicyStatus>>, Problem> {
    let engine = engine(&state)?;
    Ok(Json(
        PolicyKind::ALL
            .into_iter()
            .map(|k| engine.status(k))
            .collect(),
    ))
}

/// `GET /api/policies/{kind}`.
#[utoipa::path(get, path = "/api/policies/{kind}", tag = "policies", params(Kind),
    responses(
        (status = 200, description = "The module in use (or the built-in rule)", body = PolicyStatus),
        (status = 404, response = NotFound),
    ))]
pub async fn get(
    State(state): State<ApiState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<PolicyStatus>, Problem> {
    let kind = kind(&name)?;
    Ok(Json(engine(&state)?.status(kind)))
}

/// `PUT /api/policies/{kind}` with the component as the body (`application/wasm`).
#[utoipa::path(put, path = "/api/policies/{kind}", tag = "policies", params(Kind),
    request_body(content = Vec<u8>, content_type = "application/wasm",
        description = "A WebAssembly component implementing the kind's world of `wit/policy.wit` \
            (built for `wasm32-wasip2`), at most 8 MiB"),
    responses(
        (status = 200, description = "Checked, compiled, stored; it decides from now on for new \
            calls and registrations", body = PolicyStatus),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = NotWasm),
        (status = 422, response = Unprocessable),
    ))]
pub async fn put(
    State(state): State<ApiState>,
    PathParam(name): PathParam<String>,
    actor: Actor,
    req: Request,
) -> Result<Response, Problem> {
    let kind = kind(&name)?;
    let engine = engine(&state)?.clone();
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if !matches!(
        media.as_deref(),
        Some("application/wasm" | "application/octet-stream")
    ) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "upload the component as application/wasm",
        ));
    }
    let wasm = to_bytes(req.into_body(), MAX_WASM).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a policy component may have at most {MAX_WASM} bytes"),
        )
    })?;
    let wasm = wasm.to_vec();
    let checked = {
        let (engine, wasm) = (engine.clone(), wasm.clone());
        tokio::task::spawn_blocking(move || engine.prepare(kind, &wasm))
            .await
            .map_err(|e| Problem::unavailable(format!("compiling the component failed: {e}")))?
    };
    let prepared = match checked {
        Ok(p) => p,
        Err(PolicyError::Invalid(why)) => return Err(Problem::invalid("body", why)),
        Err(e) => return Err(Problem::unavailable(e.to_string())),
    };

    // One read-modify-write of the stored record at a time on this server.
    let _writing = state.config_writes.lock().await;
    let previous = state.store.get_policy(kind.as_str()).await?;
    let meta = PolicyMeta {
        kind: kind.as_str().to_owned(),
        version: previous.as_ref().map_or(1, |p| p.meta.version + 1),
        hash: hash(&wasm),
        size: wasm.len() as u64,
        uploaded_at: Utc::now(),
        uploaded_by: actor.0.clone(),
        disabled: None,
    };
    let record = PolicyRecord {
        meta: meta.clone(),
        wasm,
    };
    state.store.put_policy(&record).await?;
    engine
        .install(meta.clone(), prepared)
        .map_err(|e| Problem::unavailable(e.to_string()))?;
    config::audit(
        &state,
        &actor,
        "policy.put",
        kind.as_str(),
        previous.map(|p| json!({"version": p.meta.version, "hash": p.meta.hash})),
        Some(json!({"version": meta.version, "hash": meta.hash, "size": meta.size})),
    )
    .await;
    Ok(Json(engine.status(kind)).into_response())
}

/// `DELETE /api/policies/{kind}`: back to the built-in rule (204 also when none was loaded).
#[utoipa::path(delete, path = "/api/policies/{kind}", tag = "policies", params(Kind),
    responses(
        (status = 204, description = "The built-in rule decides from now on"),
        (status = 404, response = NotFound),
    ))]
pub async fn delete(
    State(state): State<ApiState>,
    PathParam(name): PathParam<String>,
    actor: Actor,
) -> Result<StatusCode, Problem> {
    let kind = kind(&name)?;
    let engine = engine(&state)?;
    let _writing = state.config_writes.lock().await;
    let previous = state.store.get_policy(kind.as_str()).await?;
    if previous.is_some() {
        match state.store.delete_policy(kind.as_str()).await {
            Ok(()) | Err(crate::store::StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    engine.remove(kind);
    if let Some(p) = previous {
        config::audit(
            &state,
            &actor,
            "policy.delete",
            kind.as_str(),
            Some(json!({"version": p.meta.version, "hash": p.meta.hash})),
            None,
        )
        .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/policies/{kind}/disable`: switches the module off (kept in the store, so every
/// server and every restart honours it) until a new upload; 409 when there is none.
#[utoipa::path(post, path = "/api/policies/{kind}/disable", tag = "policies", params(Kind),
    responses(
        (status = 200, description = "Switched off; the built-in rule decides", body = PolicyStatus),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    ))]
pub async fn disable(
    State(state): State<ApiState>,
    PathParam(name): PathParam<String>,
    actor: Actor,
) -> Result<Json<PolicyStatus>, Problem> {
    let kind = kind(&name)?;
    let engine = engine(&state)?;
    let _writing = state.config_writes.lock().await;
    let Some(mut record) = state.store.get_policy(kind.as_str()).await? else {
        return Err(Problem::conflict(format!(
            "no {} policy module is loaded; the built-in rule is in use",
            kind.as_str()
        )));
    };
    let reason = format!(
        "switched off by {} at {}",
        actor.0,
        Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    record.meta.disabled = Some(reason.clone());
    state.store.put_policy(&record).await?;
    engine.disable(kind, &reason);
    config::audit(
        &state,
        &actor,
        "policy.disable",
        kind.as_str(),
        None,
        Some(json!({"version": record.meta.version, "reason": reason})),
    )
    .await;
    Ok(Json(engine.status(kind)))
}
