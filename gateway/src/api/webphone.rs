//! `/api/me/webphone/…`: the signed-in end user's web phones ([`crate::webphone`]). A page posts
//! its browser's complete SDP offer (no trickle ICE) for one of the user's accounts and gets the
//! answer; the phone then registers as a device of that account once its media connects. Its
//! state is read, or followed as server-sent events, and it is commanded to call, answer and
//! hang up. Only the user who started a phone sees or commands it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde::Deserialize;

use super::ApiState;
use super::openapi::{NotFound, Unauthorized};
use super::problem::Problem;
use crate::auth::Identity;
use crate::webphone::{Command, Started, WebPhoneError, WebPhoneView};
use csps_sip::registrar::aor;

/// How often an idle event stream sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What `POST /api/me/webphone` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"aor": "sip:alice@csps.local", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n…"}))]
pub struct StartWebPhone {
    /// Which of the user's accounts the phone is a device of (`sip:username@domain`).
    pub aor: String,
    /// The browser's complete SDP offer (after ICE gathering).
    pub sdp: String,
}

/// What `POST /api/me/webphone/{id}/call` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"to": "bob"}))]
pub struct CallTo {
    /// A user name or number of the account's domain, or a `sip:` URI.
    pub to: String,
}

fn problem(e: WebPhoneError) -> Problem {
    match e {
        WebPhoneError::Unavailable => Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        WebPhoneError::BadOffer(_) => Problem::bad_request(e.to_string()),
        WebPhoneError::NotFound => Problem::not_found(e.to_string()),
        WebPhoneError::Conflict(_) => Problem::conflict(e.to_string()),
        WebPhoneError::Ports(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The signed-in user's UPN (as `GET /api/me` names them).
fn owner(id: Option<Extension<Identity>>) -> Result<String, Problem> {
    Ok(super::me::caller(id)?.actor)
}

/// `POST /api/me/webphone`.
#[utoipa::path(post, path = "/api/me/webphone", tag = "me", request_body = StartWebPhone,
    responses(
        (status = 201, description = "The web phone runs: `sdp` is the answer for the browser; \
            the phone registers once its media connects", body = Started),
        (status = 400, description = "The offer cannot be answered", body = Problem),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    ))]
pub async fn start(
    State(state): State<ApiState>,
    id: Option<Extension<Identity>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<StartWebPhone>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Started>), Problem> {
    let owner = owner(id)?;
    let Json(body) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    let account = super::me::accounts_of(&state, &owner)
        .await?
        .into_iter()
        .find(|u| aor(&u.username, &u.domain).eq_ignore_ascii_case(&body.aor))
        .ok_or_else(|| Problem::not_found(format!("{} is not one of your accounts", body.aor)))?;
    if !account.enabled {
        return Err(Problem::conflict(format!("{} is disabled", body.aor)));
    }
    let started = state
        .webphones
        .start(&owner, &account, &body.sdp, peer.ip())
        .map_err(problem)?;
    Ok((StatusCode::CREATED, Json(started)))
}

/// `GET /api/me/webphone/{id}`.
#[utoipa::path(get, path = "/api/me/webphone/{id}", tag = "me",
    params(("id" = String, Path, description = "The web phone")),
    responses(
        (status = 200, description = "The phone's state", body = WebPhoneView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    ))]
pub async fn get(
    State(state): State<ApiState>,
    id: Option<Extension<Identity>>,
    Path(phone): Path<String>,
) -> Result<Json<WebPhoneView>, Problem> {
    let owner = owner(id)?;
    let view = state.webphones.watch(&owner, &phone).map_err(problem)?;
    let current = view.borrow().clone();
    Ok(Json(current))
}

/// `GET /api/me/webphone/{id}/events`.
#[utoipa::path(get, path = "/api/me/webphone/{id}/events", tag = "me",
    params(("id" = String, Path, description = "The web phone")),
    description = "Server-sent events: `data:` with the phone's state as `GET` answers it, \
        first the current one, then one per change; the stream ends when the phone stops.",
    responses(
        (status = 200, description = "The event stream", body = String,
            content_type = "text/event-stream"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    ))]
pub async fn events(
    State(state): State<ApiState>,
    id: Option<Extension<Identity>>,
    Path(phone): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let owner = owner(id)?;
    let mut view = state.webphones.watch(&owner, &phone).map_err(problem)?;
    view.mark_changed();
    let events = stream::unfold(view, |mut view| async move {
        view.changed().await.ok()?;
        let data = serde_json::to_string(&*view.borrow_and_update()).ok()?;
        Some((Ok(SseEvent::default().data(data)), view))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

async fn command(
    state: &ApiState,
    owner: &str,
    phone: &str,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> Command,
) -> Result<(StatusCode, Json<WebPhoneView>), Problem> {
    let view = state
        .webphones
        .command(owner, phone, make)
        .await
        .map_err(problem)?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// `POST /api/me/webphone/{id}/call`.
#[utoipa::path(post, path = "/api/me/webphone/{id}/call", tag = "me", request_body = CallTo,
    params(("id" = String, Path, description = "The web phone")),
    responses(
        (status = 202, description = "The call is placed", body = WebPhoneView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, description = "The phone is not idle, or the target cannot be called",
            body = Problem),
    ))]
pub async fn call(
    State(state): State<ApiState>,
    id: Option<Extension<Identity>>,
    Path(phone): Path<String>,
    body: Result<Json<CallTo>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<WebPhoneView>), Problem> {
    let owner = owner(id)?;
    let Json(body) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    command(&state, &owner, &phone, |done| Command::Call(body.to, done)).await
}

/// `POST /api/me/webphone/{id}/answer`.
#[utoipa::path(post, path = "/api/me/webphone/{id}/answer", tag = "me",
    params(("id" = String, Path, description = "The web phone")),
    responses(
        (status = 202, description = "The call is answered", body = WebPhoneView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, description = "No call rings in", body = Problem),
    ))]
pub async fn answer(
    State(state): State<ApiState>,
    id: Option<Extension<Identity>>,
    Path(phone): Path<String>,
) -> Result<(StatusCode, Json<WebPhoneView>), Problem> {
    let owner = owner(id)?;
    command(&state, &owner, &phone, Command::Answer).await
}

/// `POST /api/me/webphone/{id}/hangup`.
#[utoipa::path(post, path = "/api/me/webphone/{id}/hangup", tag = "me",
    params(("id" = String, Path, description = "The web phone")),
    responses(
        (status = 202, description = "The call is cancelled, declined or ended", body = WebPhoneView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, description = "There is no call", body = Problem),
    ))]
pub async fn hang_up(
    State(state): State<ApiState>,
    id: Option<Extension<Identity>>,
    Path(phone): Path<String>,
) -> Result<(StatusCode, Json<WebPhoneView>), Problem> {
    let owner = owner(id)?;
    command(&state, &owner, &phone, Command::HangUp).await
}

/// `POST /api/me/webphone/{id}/hold`.
#[utoipa::path(post, path = "/api/me/webphone/{id}/hold", tag = "me",
    params(("id" = String, Path, description = "The web phone")),
    responses(
        (status = 202, description = "The call is being held (a re-INVITE offering sendonly; \
            the phone sends no audio while held)", body = WebPhoneView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, description = "No answered call, already held, or a hold or resume \
            under way", body = Problem),
    ))]
pub async fn hold(
    State(state): State<ApiState>,
    id: Option<Extension<Identity>>,
    Path(phone): Path<String>,
) -> Result<(StatusCode, Json<WebPhoneView>), Problem> {
    let owner = owner(id)?;
    command(&state, &owner, &phone, |done| Command::Hold(true, done)).await
}

/// `POST /api/me/webphone/{id}/resume`.
#[utoipa::path(post, path = "/api/me/webphone/{id}/resume", tag = "me",
    params(("id" = String, Path, description = "The web phone")),
    responses(
        (status = 202, description = "The held call is being resumed", body = WebPhoneView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, description = "The call is not held", body = Problem),
    ))]
pub async fn resume(
    State(state): State<ApiState>,
    id: Option<Extension<Identity>>,
    Path(phone): Path<String>,
) -> Result<(StatusCode, Json<WebPhoneView>), Problem> {
    let owner = owner(id)?;
    command(&state, &owner, &phone, |done| Command::Hold(false, done)).await
}

/// `DELETE /api/me/webphone/{id}`.
#[utoipa::path(delete, path = "/api/me/webphone/{id}", tag = "me",
    params(("id" = String, Path, description = "The web phone")),
    responses(
        (status = 204, description = "The phone stops: it ends its call and unregisters"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    ))]
pub async fn stop(
    State(state): State<ApiState>,
    id: Option<Extension<Identity>>,
    Path(phone): Path<String>,
) -> Result<StatusCode, Problem> {
    let owner = owner(id)?;
    state
        .webphones
        .stop(&owner, &phone)
        .await
        .map_err(problem)?;
    Ok(StatusCode::NO_CONTENT)
}
