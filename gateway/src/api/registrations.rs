//! `GET /api/registrations[?server=&aor=]`: the live bindings of every server, from the store.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::problem::{Problem, QueryParams};
use crate::store::{Registration, RegistrationFilter};

/// One binding as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"aor": "sip:alice@csps.local",
    "contact": "<sip:alice@192.0.2.10:5060;transport=udp>", "server": "a", "transport": "udp",
    "source": "192.0.2.10:5060", "user_agent": "baresip v1.0.0",
    "expires_at": "2026-11-26T10:00:00Z", "instance_id": null}))]
pub struct RegistrationView {
    /// Address of record, `sip:user@domain`.
    pub aor: String,
    /// Contact as the phone sent it.
    pub contact: String,
    /// Server holding the phone's flow.
    pub server: String,
    /// `udp`, `tcp`, `tls` or `ws`.
    pub transport: String,
    /// Source address and port of the REGISTER.
    pub source: String,
    /// User-Agent header.
    pub user_agent: Option<String>,
    /// When the binding lapses.
    pub expires_at: DateTime<Utc>,
    /// `+sip.instance`, when sent.
    pub instance_id: Option<String>,
}

impl From<Registration> for RegistrationView {
    fn from(r: Registration) -> Self {
        RegistrationView {
            aor: r.aor,
            contact: r.contact,
            server: r.server,
            transport: r.transport,
            source: r.source,
            user_agent: r.user_agent,
            expires_at: r.expires_at,
            instance_id: r.instance_id,
        }
    }
}

/// Query of the listing.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only bindings held by this server.
    pub server: Option<String>,
    /// Only bindings of this AoR (`sip:` is assumed when no scheme is given).
    pub aor: Option<String>,
}

/// `GET /api/registrations`.
#[utoipa::path(get, path = "/api/registrations", tag = "registrations", params(ListQuery),
    responses((status = 200, description = "Live bindings, by AoR", body = [RegistrationView])))]
pub async fn list(
    State(state): State<ApiState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Vec<RegistrationView>>, Problem> {
    let filter = RegistrationFilter {
        server: q.server.filter(|s| !s.is_empty()),
        aor: q.aor.filter(|a| !a.is_empty()).map(|a| {
            let lower = a.to_ascii_lowercase();
            if lower.starts_with("sip:") || lower.starts_with("sips:") || lower.starts_with("tel:")
            {
                a
            } else {
                format!("sip:{a}")
            }
        }),
    };
    let mut regs = state.store.list_registrations(&filter, Utc::now()).await?;
    regs.sort_by(|a, b| (&a.aor, &a.binding).cmp(&(&b.aor, &b.binding)));
    Ok(Json(regs.into_iter().map(RegistrationView::from).collect()))
}
