//! The REST API under `/api` (axum): users, registrations, configuration entries and leaves,
//! trusted IPs, the audit log, running calls, policy modules, the caller's claims and the
//! version, the end user's own accounts and activation (`/api/me`), the live event stream (`/api/events`), its OpenAPI document (`/api/openapi.json`)
//! and Swagger UI (`/swagger`), with `application/problem+json` errors and the access rules of
//! [`access`]; and the web console's files on every other path ([`console`]). [`router`] builds
//! the whole tree from an [`ApiState`]; `serve` mounts it and owns `/healthz` and `/metrics`.

pub mod access;
pub mod activate;
pub mod calls;
pub mod config;
pub mod console;
pub mod debug;
pub mod events;
pub mod me;
pub mod openapi;
pub mod policies;
pub mod problem;
pub mod registrations;
pub mod trunk;
pub mod trusted_ips;
pub mod users;
pub mod version;
pub mod webphone;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::LiveConfig;
use crate::store::Store;
pub use problem::{FieldError, Problem};
pub use version::VersionInfo;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The store (users, registrations, configuration).
    pub store: Arc<dyn Store>,
    /// The running server's configuration; reloaded after every configuration write.
    pub config: LiveConfig,
    /// The break-glass token (`<data-dir>/admin-token`), accepted as a bearer token from loopback.
    pub admin_token: Arc<str>,
    /// Validates admin-app tokens (keys, Graph membership; caches shared by clones).
    pub auth: crate::auth::Authenticator,
    /// What `GET /api/version` answers.
    pub version: VersionInfo,
    /// Serialises this process' read-modify-write of configuration entries.
    pub config_writes: Arc<tokio::sync::Mutex<()>>,
    /// Bumped after every change of users, so the SIP side rebuilds its account view.
    pub users_changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// The running calls (empty until the SIP side hands its directory over).
    pub calls: crate::calls::Directory,
    /// The WASM policy engine (`None`: `/api/policies` answers 503).
    pub policies: Option<Arc<crate::policy::PolicyEngine>>,
    /// The Teams trunk's published state (no trunk until the SIP side hands its view over).
    pub trunk: tokio::sync::watch::Receiver<crate::trunk::driver::TrunkView>,
    /// The live feed `GET /api/events` streams (shared with the SIP side, which publishes).
    pub events: crate::events::Events,
    /// Where the web console's files are (none: `/` says how to build it).
    pub console: console::ConsoleFiles,
    /// The end users' web phones (unavailable until the SIP side hands its registry over).
    pub webphones: crate::webphone::WebPhones,
    /// Activation: the pending sign-ins, the refresh tokens' key and the refresh task.
    pub activation: Activation,
}

/// What activation needs besides the store and the configuration.
#[derive(Clone, Default)]
pub struct Activation {
    /// Starts sign-ins and takes their callbacks back (with `secret_key`: on any server).
    pub pending: Arc<crate::auth::activation::PendingSignIns>,
    /// Seals refresh tokens (`None` until `serve` hands the local `secret_key` over: activation
    /// then answers 503).
    pub key: Option<Arc<crate::auth::sealed::TokenKey>>,
    /// The token refresh task (`POST /api/token-refresh`).
    pub refresher: Option<crate::auth::refresh::Refresher>,
}

impl ApiState {
    /// State over `store` and `config`, accepting `admin_token` as the bearer token.
    pub fn new(
        store: Arc<dyn Store>,
        config: LiveConfig,
        admin_token: impl Into<Arc<str>>,
    ) -> Self {
        ApiState {
            store,
            config,
            admin_token: admin_token.into(),
            auth: crate::auth::Authenticator::new(),
            version: VersionInfo::current(),
            config_writes: Arc::new(tokio::sync::Mutex::new(())),
            users_changed: Arc::new(tokio::sync::watch::channel(0).0),
            calls: crate::calls::Directory::default(),
            policies: None,
            trunk: tokio::sync::watch::channel(Default::default()).1,
            events: crate::events::Events::new(),
            console: console::ConsoleFiles::default(),
            webphones: crate::webphone::WebPhones::default(),
            activation: Activation::default(),
        }
    }

    /// The same state with `engine` serving `/api/policies`.
    pub fn with_policies(mut self, engine: Arc<crate::policy::PolicyEngine>) -> Self {
        self.policies = Some(engine);
        self
    }

    /// Tells whoever watches `users_changed` that users were created, changed or deleted.
    pub fn note_users_changed(&self) {
        self.users_changed.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// The `/api` routes; unknown `/api` paths answer a 404 problem, wrong methods a 405 problem.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/api/users", get(users::list).post(users::create))
        .route(
            "/api/users/{id}",
            get(users::get).patch(users::patch).delete(users::delete),
        )
        .route("/api/registrations", get(registrations::list))
        .route("/api/events", get(events::stream))
        .route("/api/calls", get(calls::list))
        .route("/api/trunk", get(trunk::get))
        .route("/api/calls/{id}", axum::routing::delete(calls::hang_up))
        .route("/api/calls/history", get(calls::history))
        .route("/api/calls/{id}/messages", get(calls::messages))
        .route("/api/config/servers", get(config::servers))
        .route("/api/config/paths", get(config::paths))
        .route(
            "/api/config/{server}",
            get(config::get_entry).put(config::put_entry),
        )
        .route(
            "/api/config/{server}/{leaf}",
            get(config::get_leaf).put(config::put_leaf),
        )
        .route("/api/audit", get(config::audit_list))
        .route("/api/debug/claims", get(debug::claims))
        .route("/api/me", get(me::get))
        .route(
            "/api/token-refresh",
            axum::routing::post(activate::refresh_now),
        )
        .route("/api/me/activation", axum::routing::delete(me::deactivate))
        .route("/api/me/webphone", axum::routing::post(webphone::start))
        .route(
            "/api/me/webphone/{id}",
            get(webphone::get).delete(webphone::stop),
        )
        .route("/api/me/webphone/{id}/events", get(webphone::events))
        .route(
            "/api/me/webphone/{id}/call",
            axum::routing::post(webphone::call),
        )
        .route(
            "/api/me/webphone/{id}/answer",
            axum::routing::post(webphone::answer),
        )
        .route(
            "/api/me/webphone/{id}/hangup",
            axum::routing::post(webphone::hang_up),
        )
        .route(
            "/api/me/webphone/{id}/hold",
            axum::routing::post(webphone::hold),
        )
        .route(
            "/api/me/webphone/{id}/resume",
            axum::routing::post(webphone::resume),
        )
        .route(
            "/api/config/{server}/trusted-ips",
            get(trusted_ips::list)
                .post(trusted_ips::add)
                .delete(trusted_ips::remove),
        )
        .route("/api/policies", get(policies::list))
        .route(
            "/api/policies/{kind}",
            get(policies::get)
                .put(policies::put)
                .delete(policies::delete),
        )
        .route(
            "/api/policies/{kind}/disable",
            axum::routing::post(policies::disable),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), access::guard));
    Router::new()
        .route("/api/version", get(version::get))
        .route("/api/auth/config", get(console::auth_config))
        .route("/activate", get(activate::start))
        .route(activate::CALLBACK, get(activate::callback))
        .merge(protected)
        .merge(openapi::routes(state.clone()))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(fallback)
        .with_state(state)
}

/// Unknown `/api` paths are a 404 problem; every other path is the web console's.
async fn fallback(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        return Problem::not_found(format!("no resource at `{path}`")).into_response();
    }
    console::serve(&state.console, &method, path, &headers).await
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this resource does not support the method",
    )
}
