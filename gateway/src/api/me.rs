//! `/api/me/…`: the end user's self-service, for a user signed in with the end-user app
//! (`Data.SpsAzureApp`; `access` lets only such a token through). The user is the UPN the token
//! names (`upn`, else `preferred_username`); their SIP accounts are the users whose `upn` is that
//! (case-insensitive; usually one). `GET /api/me` shows those accounts without secrets, whether
//! each is activated for Teams, and its devices (the live registrations of its AoR on every
//! server). Activation is the server-side sign-in at `/activate` (`api::activate`), which also
//! obtains the refresh token the gateway keeps; there is no `POST /api/me/activation` (a bearer
//! token the page obtained itself carries no refresh token, so it cannot activate).
//! `DELETE /api/me/activation` deactivates the accounts and deletes the stored token. Nothing
//! here reads or writes another user's account.

use axum::Json;
use axum::extract::{Extension, State};
use chrono::Utc;
use serde::Serialize;
use serde_json::json;

use super::ApiState;
use super::config::{Actor, audit};
use super::openapi::{NotFound, Unauthorized};
use super::problem::Problem;
use super::registrations::RegistrationView;
use super::users::UserView;
use crate::auth::Identity;
use crate::store::{RegistrationFilter, User};

/// The signed-in end user and their SIP accounts.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"upn": "alice@contoso.com", "name": "Alice", "accounts": [{
    "id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "username": "alice", "domain": "csps.local",
    "display_name": "Alice", "upn": "alice@contoso.com", "phone_number": "+14255550100",
    "enabled": true, "activated": true, "created_at": "2026-11-26T09:00:00Z", "registered": true,
    "devices": [{"aor": "sip:alice@csps.local", "contact": "<sip:alice@192.0.2.10:5060>",
        "server": "a", "transport": "udp", "source": "192.0.2.10:5060",
        "user_agent": "Yealink SIP-T54W", "expires_at": "2026-11-26T10:00:00Z",
        "instance_id": null}]}]}))]
pub struct Me {
    /// The UPN the token names (what the user's SIP accounts carry in `upn`).
    pub upn: String,
    /// The token's `name` claim, when it has one.
    pub name: Option<String>,
    /// The SIP accounts whose `upn` is this user's (empty: an admin has not created one yet).
    pub accounts: Vec<MyAccount>,
}

/// One of the user's SIP accounts with its devices.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct MyAccount {
    /// The account, without secrets (`activated`: activated for Teams).
    #[serde(flatten)]
    pub user: UserView,
    /// Whether at least one device is registered now.
    pub registered: bool,
    /// The account's devices: the live registrations of `sip:username@domain` on every server.
    pub devices: Vec<RegistrationView>,
}

/// The caller as `access` established it (always present behind the guard).
pub(super) fn caller(id: Option<Extension<Identity>>) -> Result<Identity, Problem> {
    id.map(|Extension(id)| id)
        .ok_or_else(|| Problem::unauthorized("no signed-in end user"))
}

/// The accounts of `upn`.
pub(super) async fn accounts_of(state: &ApiState, upn: &str) -> Result<Vec<User>, Problem> {
    let mut mine: Vec<User> = state
        .store
        .list_users()
        .await?
        .into_iter()
        .filter(|u| {
            u.upn
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(upn))
        })
        .collect();
    mine.sort_by(|a, b| (&a.domain, &a.username).cmp(&(&b.domain, &b.username)));
    Ok(mine)
}

/// What `GET /api/me` shows for `id` and their `accounts`.
async fn me(state: &ApiState, id: &Identity, accounts: Vec<User>) -> Result<Me, Problem> {
    let now = Utc::now();
    let mut out = Vec::with_capacity(accounts.len());
    for user in accounts {
        let filter = RegistrationFilter {
            server: None,
            aor: Some(format!("sip:{}@{}", user.username, user.domain)),
        };
        let mut regs = state.store.list_registrations(&filter, now).await?;
        regs.sort_by(|a, b| (&a.server, &a.binding).cmp(&(&b.server, &b.binding)));
        let devices: Vec<RegistrationView> = regs.into_iter().map(RegistrationView::from).collect();
        out.push(MyAccount {
            user: UserView::from(&user),
            registered: !devices.is_empty(),
            devices,
        });
    }
    let name = id
        .claims
        .as_ref()
        .and_then(|c| c.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    Ok(Me {
        upn: id.actor.clone(),
        name,
        accounts: out,
    })
}

/// `GET /api/me`.
#[utoipa::path(get, path = "/api/me", tag = "me",
    responses(
        (status = 200, description = "The signed-in end user: their SIP accounts (no secrets), \
            whether each is activated for Teams, and their devices", body = Me),
        (status = 401, response = Unauthorized),
    ))]
pub async fn get(
    State(state): State<ApiState>,
    id: Option<Extension<Identity>>,
) -> Result<Json<Me>, Problem> {
    let id = caller(id)?;
    let accounts = accounts_of(&state, &id.actor).await?;
    Ok(Json(me(&state, &id, accounts).await?))
}

/// Deactivates every account of the caller, deleting the Teams binding and the stored refresh
/// token; audited under the caller's UPN.
async fn deactivate_all(state: &ApiState, id: &Identity, actor: &Actor) -> Result<Me, Problem> {
    let activated = false;
    let _writing = state.config_writes.lock().await;
    let accounts = accounts_of(state, &id.actor).await?;
    if accounts.is_empty() {
        return Err(Problem::not_found(format!(
            "no SIP account has the UPN `{}`; ask an admin to create one with it",
            id.actor
        )));
    }
    let mut changed = Vec::with_capacity(accounts.len());
    for mut user in accounts {
        let before = user.activated;
        if before != activated || user.teams != Default::default() {
            user.activated = activated;
            user.teams = Default::default();
            user = state.store.update_user(user).await?;
        }
        audit(
            state,
            actor,
            "user.deactivate",
            &format!("user/{}", user.id),
            Some(json!({ "activated": before })),
            Some(json!({ "activated": activated })),
        )
        .await;
        changed.push(user);
    }
    state.note_users_changed();
    me(state, id, changed).await
}

/// `DELETE /api/me/activation`: deactivates the caller's accounts for Teams.
#[utoipa::path(delete, path = "/api/me/activation", tag = "me",
    responses(
        (status = 200, description = "Every SIP account with the caller's UPN is no longer \
            activated for Teams; the Teams binding and the stored refresh token are deleted", body = Me),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    ))]
pub async fn deactivate(
    State(state): State<ApiState>,
    id: Option<Extension<Identity>>,
    actor: Actor,
) -> Result<Json<Me>, Problem> {
    let id = caller(id)?;
    Ok(Json(deactivate_all(&state, &id, &actor).await?))
}
