//! `GET /api/version`: what is running — version, commit, build date, key components. Open to all.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::ApiState;

/// Versions of key components, as locked in `Cargo.lock` (update with the lock file).
const COMPONENTS: &[(&str, &str)] = &[
    ("axum", "0.8.9"),
    ("redb", "2.6.4"),
    ("rustls", "0.23.46"),
    ("tokio", "1.54.1"),
];

/// The body of `GET /api/version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"version": "0.1.0", "git_commit": "aa41a98", "build_date":
    "2026-11-26T09:00:00Z", "rustc": "rustc 1.95.0", "components": {"axum": "0.8.9"}}))]
pub struct VersionInfo {
    /// Version of csps.
    pub version: String,
    /// Git commit the binary was built from (`unknown` outside a checkout).
    pub git_commit: String,
    /// Build time, RFC 3339.
    pub build_date: String,
    /// The compiler, when the build recorded it (`CSPS_RUSTC_VERSION`).
    pub rustc: Option<String>,
    /// Component name → version.
    pub components: BTreeMap<String, String>,
}

impl VersionInfo {
    /// The running binary's version information.
    pub fn current() -> Self {
        VersionInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            git_commit: env!("CSPS_GIT_COMMIT").to_owned(),
            build_date: env!("CSPS_BUILD_DATE").to_owned(),
            rustc: option_env!("CSPS_RUSTC_VERSION").map(str::to_owned),
            components: COMPONENTS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

impl Default for VersionInfo {
    fn default() -> Self {
        VersionInfo::current()
    }
}

/// `GET /api/version`.
#[utoipa::path(get, path = "/api/version", tag = "system",
    responses((status = 200, description = "What is running", body = VersionInfo)))]
pub async fn get(State(state): State<ApiState>) -> Json<VersionInfo> {
    Json(state.version.clone())
}
