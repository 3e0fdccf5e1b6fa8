//! The token refresh task (cSPS 0.3.3): an Entra ID refresh token left unused expires after 90
//! days of inactivity, so every night at `Data.SpsAzureApp.TokenRefreshHour` o'clock (UTC, plus
//! up to [`JITTER`]) each activated user's refresh token is redeemed for a new one, which
//! replaces it (sealed) in the store. At start-up the tokens not refreshed for [`STALE`] (they
//! missed a night, so they are the closest to expiry) are refreshed at once.
//!
//! Outcomes, per account (counted in `csps_token_refreshes_total{outcome}`): `refreshed`;
//! `needs_reactivation` when the identity provider answers `invalid_grant` (revoked, expired,
//! password changed: the account keeps its activation, but shows `needs_reactivation` with
//! Entra's reason until the user activates again); `failed` for anything else (network, 5xx, a
//! token sealed under another `secret_key`, a refused client) — never marking the user, retried
//! after [`RETRY`].
//!
//! One refresh per Teams user: accounts sharing a UPN share the token (refreshed once, the new
//! one stored in each). In a cluster every server runs the task; a scheduled run skips the users
//! refreshed within [`RECENT`] (by another server, which wrote `refreshed_at`), and the jitter
//! spreads the servers' runs, so in practice one server refreshes a given user. Two servers
//! refreshing the same user at once is harmless: Entra keeps earlier refresh tokens valid when it
//! issues a new one, and either write leaves a good token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rand::Rng;
use serde::Serialize;

use super::activation::{self, GrantError};
use super::http::HttpClient;
use super::sealed::TokenKey;
use crate::config::LiveConfig;
use crate::metrics::OutcomeLabel;
use crate::store::{Store, User};

/// Largest random delay after the configured hour.
pub const JITTER: Duration = Duration::from_secs(30 * 60);
/// Age of the last refresh above which the start-up run refreshes a token.
pub const STALE: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// A scheduled run skips users refreshed more recently than this (by another server).
pub const RECENT: chrono::TimeDelta = chrono::TimeDelta::hours(12);
/// Wait before retrying after a run with failures.
pub const RETRY: Duration = Duration::from_secs(30 * 60);
/// Wait after start-up before the start-up run (the server settles first).
const STARTUP_DELAY: Duration = Duration::from_secs(5);

/// What one run did, per account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RefreshSummary {
    /// Accounts whose refresh token was replaced by a new one.
    pub refreshed: u32,
    /// Accounts whose refresh failed for now (retried later; the user is not marked).
    pub failed: u32,
    /// Accounts whose token the identity provider refused: marked `needs_reactivation`.
    pub needs_reactivation: u32,
}

/// Runs refreshes; cheap to clone.
#[derive(Clone)]
pub struct Refresher {
    store: Arc<dyn Store>,
    config: LiveConfig,
    http: HttpClient,
    key: Arc<TokenKey>,
    counts: Family<OutcomeLabel, Counter>,
    /// One run at a time in this process (the nightly one and `POST /api/token-refresh`).
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Refresher {
    /// A refresher over the store, the live configuration (the end-user app), `http` for the
    /// token endpoint and `key` for the sealed tokens, counting into `counts`.
    pub fn new(
        store: Arc<dyn Store>,
        config: LiveConfig,
        http: HttpClient,
        key: Arc<TokenKey>,
        counts: Family<OutcomeLabel, Counter>,
    ) -> Self {
        Refresher {
            store,
            config,
            http,
            key,
            counts,
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Starts the schedule: the start-up run, then every night.
    pub fn spawn(self) {
        tokio::spawn(async move {
            tokio::time::sleep(STARTUP_DELAY).await;
            let s = self.run(Some(STALE)).await;
            if s != RefreshSummary::default() {
                tracing::info!(?s, "start-up token refresh");
            }
            let mut settings = self.config.subscribe();
            let mut retry = s.failed > 0;
            loop {
                let wait = if retry {
                    RETRY
                } else {
                    let hour = settings.borrow_and_update().token_refresh_hour;
                    until_hour(Utc::now(), hour) + rand::rng().random_range(Duration::ZERO..JITTER)
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // A new hour applies at once (the wait is computed again).
                    changed = settings.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                }
                let s = self.run(Some(RECENT)).await;
                tracing::info!(?s, "nightly token refresh");
                retry = s.failed > 0;
            }
        });
    }

    /// Refreshes the token of every activated user not marked `needs_reactivation` — with
    /// `skip_newer`, only those last refreshed longer ago than that.
    pub async fn run(&self, skip_newer: Option<chrono::TimeDelta>) -> RefreshSummary {
        let _one = self.running.lock().await;
        let mut summary = RefreshSummary::default();
        let app = self.config.settings().sps_app.clone();
        if app.tenant.is_empty() || app.client_id.is_empty() {
            return summary;
        }
        let users = match self.store.list_users().await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!("token refresh: cannot list the users: {e}");
                return summary;
            }
        };
        let now = Utc::now();
        // Accounts by Teams user (UPN, case-insensitive): one refresh each.
        let mut by_upn: BTreeMap<String, Vec<User>> = BTreeMap::new();
        for u in users {
            let t = &u.teams;
            let due = skip_newer.is_none_or(|d| t.refreshed_at.is_none_or(|at| now - at > d));
            if let (Some(id), Some(_), None, true) =
                (&t.identity, &t.refresh_token, &t.needs_reactivation, due)
            {
                by_upn.entry(id.upn.to_lowercase()).or_default().push(u);
            }
        }
        for (upn, accounts) in by_upn {
            let outcome = self.refresh_user(&app, &upn, &accounts).await;
            let n = u32::try_from(accounts.len()).unwrap_or(u32::MAX);
            let slot = match outcome {
                Outcome::Refreshed => &mut summary.refreshed,
                Outcome::Failed => &mut summary.failed,
                Outcome::NeedsReactivation => &mut summary.needs_reactivation,
            };
            *slot = slot.saturating_add(n);
            self.counts
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.label().into(),
                })
                .inc_by(u64::from(n));
        }
        summary
    }

    async fn refresh_user(
        &self,
        app: &crate::config::AzureApp,
        upn: &str,
        accounts: &[User],
    ) -> Outcome {
        // The token as any of the accounts holds it (all hold the same one after a refresh).
        let Some(token) = accounts.iter().find_map(|u| {
            let sealed = u.teams.refresh_token.as_deref()?;
            self.key.open(u.id, sealed).ok()
        }) else {
            tracing::warn!(
                %upn,
                "token refresh: the stored refresh token does not open with this server's \
                 secret_key (servers of a cluster must share it)"
            );
            return Outcome::Failed;
        };
        match activation::refresh(&self.http, app, &token).await {
            Ok(granted) => {
                let new = granted.refresh_token.unwrap_or(token);
                let mut ok = true;
                for a in accounts {
                    ok &= self
                        .write(a, |u, key| {
                            u.teams.refresh_token = Some(key.seal(u.id, &new).ok()?);
                            u.teams.refreshed_at = Some(Utc::now());
                            Some(())
                        })
                        .await;
                }
                if ok {
                    tracing::debug!(%upn, "refresh token refreshed");
                    Outcome::Refreshed
                } else {
                    Outcome::Failed
                }
            }
            Err(e) if e.is_invalid_grant() => {
                tracing::warn!(%upn, "token refresh refused, the user must activate again: {e}");
                let reason = e.to_string();
                for a in accounts {
                    self.write(a, |u, _| {
                        u.teams.needs_reactivation = Some(reason.clone());
                        Some(())
                    })
                    .await;
                }
                Outcome::NeedsReactivation
            }
            Err(e) => {
                let what = match e {
                    GrantError::Refused { .. } => "refused (check Data.SpsAzureApp)",
                    _ => "failed; retried later",
                };
                tracing::warn!(%upn, "token refresh {what}: {e}");
                Outcome::Failed
            }
        }
    }

    /// Reads the account again (the run's list may be old), changes it with `change` and writes
    /// it; false when that failed (logged).
    async fn write(
        &self,
        account: &User,
        change: impl Fn(&mut User, &TokenKey) -> Option<()>,
    ) -> bool {
        let mut u = match self.store.get_user(account.id).await {
            Ok(Some(u)) => u,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(user = %account.id, "token refresh: cannot read the account: {e}");
                return false;
            }
        };
        if change(&mut u, &self.key).is_none() {
            return false;
        }
        match self.store.update_user(u).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(user = %account.id, "token refresh: cannot store the account: {e}");
                false
            }
        }
    }
}

enum Outcome {
    Refreshed,
    Failed,
    NeedsReactivation,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Refreshed => "refreshed",
            Outcome::Failed => "failed",
            Outcome::NeedsReactivation => "needs_reactivation",
        }
    }
}

/// How long from `now` until the next `hour`:00 UTC (tomorrow's when it has passed today).
pub fn until_hour(now: DateTime<Utc>, hour: u32) -> Duration {
    let today = now
        .date_naive()
        .and_hms_opt(hour.min(23), 0, 0)
        .map(|t| t.and_utc());
    let next = match today {
        Some(t) if t > now => t,
        Some(t) => t + chrono::TimeDelta::days(1),
        None => now + chrono::TimeDelta::days(1),
    };
    (next - now).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};

    #[test]
    fn the_next_run_is_at_the_hour() {
        let at = |h, m| {
            Utc.with_ymd_and_hms(2026, 11, 27, h, m, 0)
                .single()
                .expect("time")
        };
        assert_eq!(until_hour(at(1, 30), 3), Duration::from_secs(90 * 60));
        assert_eq!(until_hour(at(3, 0), 3), Duration::from_secs(24 * 3600));
        assert_eq!(until_hour(at(23, 0), 3), Duration::from_secs(4 * 3600));
        assert_eq!(until_hour(at(23, 0), 0), Duration::from_secs(3600));
        assert_eq!(at(0, 0).hour(), 0);
    }
}
