//! `GET /api/trunk`: the Teams Direct Routing trunk as this server's driver sees it (each proxy
//! up or down, connected, the last OPTIONS answer and its round-trip time). The driver owns the
//! state; this only reads its published view.

use axum::Json;
use axum::extract::State;

use super::ApiState;
use crate::trunk::driver::TrunkView;

/// `GET /api/trunk`.
#[utoipa::path(get, path = "/api/trunk", tag = "trunk",
    responses((status = 200, description = "The trunk's proxies in failover order; `fqdn` is null when no trunk is configured",
        body = TrunkView)))]
pub async fn get(State(state): State<ApiState>) -> Json<TrunkView> {
    Json(state.trunk.borrow().clone())
}
