//! Busy presence (cSPS: "only Busy (in a call)"): while any device of an activated user is in
//! an answered call, Teams shows the user Busy/InACall. [`sessions`] is the sans-IO core (calls
//! per user, what to ask Graph, renewal, backoff); this module is its tokio driver.
//!
//! The driver follows the call core's user states (`SipHandle::user_states`, a broadcast: a call
//! task's send never waits, so presence never holds up call setup or teardown), finds each busy
//! user's Teams identity in the store (the UPN of an activated account; Graph takes
//! `/users/{upn}` for `/users/{id}`), and calls Graph off the call path, one task per request:
//! `POST {GraphUrl}/v1.0/users/{upn}/presence/setPresence`
//! `{"sessionId":<client id>,"availability":"Busy","activity":"InACall","expirationDuration":"PT5M"}`
//! when the first call is answered, again every 4 minutes while the user stays busy (Graph
//! drops an application's session when its expiration passes), and
//! `POST …/presence/clearPresence` `{"sessionId"}` when the last call ends. Failures are retried
//! with exponential backoff (1 s doubling to 60 s; a 429's or 503's `Retry-After` wins), logged
//! and counted in `csps_presence_failures_total`.
//!
//! Which app registration: `Data.AdminAzureApp`. Setting another user's presence needs an
//! application permission (`Presence.ReadWrite.All`) used with the client-credentials grant,
//! and the admin app is the one whose client credentials, authority and Graph URL
//! (`Data.AdminAzureApp.GraphUrl`) the gateway already uses for Graph (group membership): one
//! app token serves both. The end-user app (`Data.SpsAzureApp`) signs users in with delegated
//! rights and has no Graph URL. The presence session id is the admin app's client id, as Graph
//! expects of an application's session. Presence is off, with one log line saying so, while the
//! admin app's tenant, client id or client secret is missing; a change of them applies without
//! a restart.
//!
//! A cluster shares one Graph session per user (the app's), so servers must not clear each
//! other's Busy. Each server keeps a busy mark per Teams user in the shared store
//! ([`Store::mark_busy`]: collection/table `busy_marks`), written before each `setPresence`
//! and expiring with it (5 minutes after, so a crashed server's mark lapses when the presence
//! it set does). When this server's last call for a user ends it removes its own mark and then
//! reads the others' ([`Store::unmark_busy`]); while another server's mark is live it skips the
//! `clearPresence` and logs `kept Busy`, leaving the presence to that server, which renews it
//! and clears it after its own last call. After each clear it reads the marks once more, for a
//! clear that landed after another server's set ([`set_again_if_busy_elsewhere`]). A store
//! that fails or does not answer within [`MARK_TIMEOUT`] never holds presence up: the mark is
//! skipped, the clear is made.
//!
//! For tests only, the hidden `--test-presence-renew-secs` (`CSPS_TEST_PRESENCE_RENEW_SECS`)
//! shortens the renewal interval (the expiration asked of Graph stays 5 minutes).

pub mod sessions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::auth::graph::Graph;
use crate::auth::http::HttpClient;
use crate::calls::{LineState, UserState};
use crate::config::{AzureApp, Settings};
use crate::metrics::{Metrics, ReasonLabel};
use crate::store::Store;
use sessions::{Action, Input, Outcome, Output, Request, Sessions, Timing};

/// Longest wait for the store when looking up a user's Teams identity.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the store when writing or removing a busy mark (short: a shutdown has 5 s
/// for every unmark and clear).
pub const MARK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the presence driver needs.
pub struct PresenceParts {
    /// The call core's user states.
    pub states: broadcast::Receiver<UserState>,
    /// Where accounts (activation, UPN) are read.
    pub store: Arc<dyn Store>,
    /// The live settings (`Data.AdminAzureApp.*`).
    pub settings: watch::Receiver<Arc<Settings>>,
    /// Where failures are counted.
    pub metrics: Arc<Metrics>,
    /// A shorter renewal interval than 4 minutes (tests only).
    pub renew: Option<Duration>,
    /// The running calls: who is in an answered call, when user states were lost.
    pub calls: crate::calls::Directory,
    /// This server's name, the holder of its busy marks.
    pub server: String,
}

/// The running presence driver.
pub struct Presence {
    stop: mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Presence {
    /// The gateway stops: clears every user shown Busy because of this server's calls (they
    /// end with it; Teams would otherwise show Busy until the expiration) unless another
    /// server still has them in a call, waiting at most `within` for the store and Graph.
    pub async fn stop(self, within: Duration) {
        let _ = self.stop.send(()).await;
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("Teams presence: not every user was cleared within {within:?}");
        }
    }
}

/// Starts the presence driver; it runs until the user-state channel closes or
/// [`Presence::stop`].
pub fn spawn(parts: PresenceParts) -> Presence {
    let mut timing = Timing::default();
    if let Some(renew) = parts.renew.filter(|r| !r.is_zero()) {
        timing.renew = renew.min(timing.renew);
        tracing::warn!(?renew, "Teams presence is renewed early (a test setting)");
    }
    let (stop, stop_rx) = mpsc::channel(1);
    Presence {
        stop,
        task: tokio::spawn(run(parts, timing, stop_rx)),
    }
}

/// Every (AoR, call) pair of a phone's user in an answered call (as the call tasks publish
/// them on the bus), for [`Input::Resync`].
fn busy_pairs(calls: &[crate::calls::CallInfo]) -> Vec<(String, u64)> {
    calls
        .iter()
        .filter(|c| c.answered_at.is_some())
        .flat_map(|c| {
            c.legs
                .iter()
                .filter(|l| l.kind == crate::calls::LegKind::Phone)
                .map(|l| (l.party.clone(), c.id))
        })
        .collect()
}

/// True when `app` has what the client-credentials grant needs.
fn configured(app: &AzureApp) -> bool {
    !app.tenant.is_empty() && !app.client_id.is_empty() && !app.client_secret.expose().is_empty()
}

fn log_switch(on: bool) {
    if on {
        tracing::info!(
            "Teams presence is on: Busy while in a call, through Graph as the admin app"
        );
    } else {
        tracing::info!(
            "Teams presence is off: Data.AdminAzureApp.Tenant, ClientId and ClientSecret are \
             needed for Graph"
        );
    }
}

/// What the lookup and request tasks share.
struct Env {
    graph: Arc<Graph>,
    http: HttpClient,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    done: mpsc::Sender<Input>,
    server: String,
}

async fn run(mut p: PresenceParts, timing: Timing, mut stop: mpsc::Receiver<()>) {
    let mut core = Sessions::new(timing);
    let (done_tx, mut done_rx) = mpsc::channel::<Input>(1024);
    let http = HttpClient::new();
    let env = Arc::new(Env {
        graph: Arc::new(Graph::new(http.clone())),
        http,
        store: p.store.clone(),
        metrics: p.metrics.clone(),
        done: done_tx,
        server: p.server.clone(),
    });
    let mut on = configured(&p.settings.borrow_and_update().admin_app);
    log_switch(on);
    let mut settings_open = true;
    let mut stopping = false;
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    loop {
        while let Some(o) = core.poll_output() {
            let app = p.settings.borrow().admin_app.clone();
            dispatch(&env, app, o);
        }
        if stopping && core.is_empty() {
            break;
        }
        let next = core.poll_timeout();
        if let Some(t) = next {
            sleep.as_mut().reset(t.into());
        }
        tokio::select! {
            ev = p.states.recv() => match ev {
                Ok(UserState { aor, state, call, .. }) => {
                    // Only answered calls make a user Busy: ringing is for busy-lamp fields.
                    let busy = match state {
                        LineState::Busy => true,
                        LineState::Idle => false,
                        _ => continue,
                    };
                    // Off: nobody becomes busy, but the users already busy are still cleared.
                    if busy && !on {
                        continue;
                    }
                    core.handle(Instant::now(), Input::UserState { aor, busy, call });
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "Teams presence fell behind the calls' user states; resyncing from the running calls");
                    failed(&p.metrics, "lagged");
                    if !core.resyncing() {
                        core.handle(Instant::now(), Input::Lagged);
                        let (calls, done) = (p.calls.clone(), env.done.clone());
                        tokio::spawn(async move {
                            let busy = busy_pairs(&calls.list().await);
                            let _ = done.send(Input::Resync { busy }).await;
                        });
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            Some(()) = stop.recv(), if !stopping => {
                stopping = true;
                core.handle(Instant::now(), Input::Shutdown);
            }
            Some(input) = done_rx.recv() => core.handle(Instant::now(), input),
            () = &mut sleep, if next.is_some() => core.handle_timeout(Instant::now()),
            changed = p.settings.changed(), if settings_open => {
                if changed.is_err() {
                    settings_open = false;
                    continue;
                }
                let now_on = configured(&p.settings.borrow_and_update().admin_app);
                if now_on != on {
                    on = now_on;
                    log_switch(on);
                }
            }
        }
    }
}

fn failed(metrics: &Metrics, reason: &str) {
    metrics
        .presence_failures
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
}

/// Runs a lookup or a request in its own task; its answer comes back on `env.done`.
fn dispatch(env: &Arc<Env>, app: AzureApp, output: Output) {
    let env = env.clone();
    match output {
        Output::Lookup { aor } => {
            tokio::spawn(async move {
                let upn = lookup(env.store.as_ref(), &aor).await;
                let _ = env.done.send(Input::Identity { aor, upn }).await;
            });
        }
        Output::Request(r) => {
            tokio::spawn(async move {
                let outcome = request(&env, &app, &r).await;
                let _ = env.done.send(Input::Result { id: r.id, outcome }).await;
            });
        }
    }
}

/// The UPN of the account `aor` (`sip:user@domain`) when it is activated and has one.
async fn lookup(store: &dyn Store, aor: &str) -> Option<String> {
    let bare = aor
        .strip_prefix("sips:")
        .or_else(|| aor.strip_prefix("sip:"))
        .unwrap_or(aor);
    let (user, domain) = bare.rsplit_once('@')?;
    match tokio::time::timeout(LOOKUP_TIMEOUT, store.find_user(user, domain)).await {
        Ok(Ok(Some(u))) if u.activated => u.upn.filter(|u| !u.trim().is_empty()),
        Ok(Ok(_)) => None,
        Ok(Err(e)) => {
            tracing::warn!(%aor, "Teams presence: cannot read the account: {e}");
            None
        }
        Err(_) => {
            tracing::warn!(%aor, "Teams presence: the store did not answer the account lookup");
            None
        }
    }
}

/// `expirationDuration` as ISO 8601 (`PT5M`).
fn iso_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(60) {
        format!("PT{}M", s / 60)
    } else {
        format!("PT{s}S")
    }
}

/// A UPN as one URL path segment (letters, digits, `-._~@` kept; the rest percent-encoded).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// This server's busy mark of `upn`, until `expiration` from now (before its `setPresence`, so
/// a server ending its last call for the user meanwhile sees it). A failure is logged: the
/// presence is set all the same.
async fn mark(env: &Env, upn: &str, expiration: Duration) {
    let until = chrono::Utc::now()
        + chrono::Duration::from_std(expiration).unwrap_or(chrono::Duration::minutes(5));
    match tokio::time::timeout(MARK_TIMEOUT, env.store.mark_busy(upn, &env.server, until)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%upn, "Teams presence: cannot write the busy mark: {e}");
            failed(&env.metrics, "store");
        }
        Err(_) => {
            tracing::warn!(%upn, "Teams presence: the store did not answer the busy mark");
            failed(&env.metrics, "store");
        }
    }
}

/// Removes this server's busy mark of `upn`, THEN reads the other servers' (the store does
/// both in this order): `BusyElsewhere` while one is live. In that order, two servers whose
/// last calls for the user end at once cannot both see the other's mark and both skip the
/// clear: whichever reads last finds no mark and clears (two clears are harmless). A store
/// failure answers `Done`, so the clear is made: a user wrongly shown available until the other
/// server's renewal is better than one shown Busy for good.
async fn unmark(env: &Env, upn: &str) -> Outcome {
    match others_marking(env, upn, "remove the busy mark (clearing)").await {
        Some(others) if !others.is_empty() => {
            tracing::info!(
                %upn,
                servers = ?others,
                "Teams presence: kept Busy, the user is in a call on another server"
            );
            Outcome::BusyElsewhere
        }
        _ => Outcome::Done,
    }
}

/// Removes this server's busy mark of `upn` (if any) and reads the servers whose marks are
/// live; `None` when the store fails or does not answer in time (logged and counted as
/// `what` failing).
async fn others_marking(env: &Env, upn: &str, what: &str) -> Option<Vec<String>> {
    let unmarked = env.store.unmark_busy(upn, &env.server, chrono::Utc::now());
    match tokio::time::timeout(MARK_TIMEOUT, unmarked).await {
        Ok(Ok(others)) => Some(others),
        Ok(Err(e)) => {
            tracing::warn!(%upn, "Teams presence: cannot {what}: {e}");
            failed(&env.metrics, "store");
            None
        }
        Err(_) => {
            tracing::warn!(%upn, "Teams presence: the store did not answer in time to {what}");
            failed(&env.metrics, "store");
            None
        }
    }
}

/// The Graph verb and body of `setPresence` or `clearPresence` for `r`, as the app
/// `client_id`; `None` for what is not a Graph request.
fn body(client_id: &str, r: &Request) -> Option<(&'static str, Value)> {
    Some(match r.action {
        Action::Unmark => return None,
        Action::Clear => ("clearPresence", json!({ "sessionId": client_id })),
        Action::SetBusy => ("setPresence", busy_body(client_id, r.expiration)),
    })
}

/// The `setPresence` body: Busy/InACall in the app's session for `expiration`.
fn busy_body(client_id: &str, expiration: Duration) -> Value {
    json!({
        "sessionId": client_id,
        "availability": "Busy",
        "activity": "InACall",
        "expirationDuration": iso_duration(expiration),
    })
}

/// What a Graph answer means for the core.
fn outcome_of(status: StatusCode, retry_after: Option<Duration>) -> Outcome {
    match status {
        s if s.is_success() => Outcome::Done,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
            Outcome::Retry { after: retry_after }
        }
        s if s.is_server_error() => Outcome::Retry { after: retry_after },
        _ => Outcome::Refused,
    }
}

/// Makes one request: an unmark in the store, or a Graph request (with a fresh app token once
/// if Graph refuses the cached one), a `setPresence` after this server's busy mark.
async fn request(env: &Env, app: &AzureApp, r: &Request) -> Outcome {
    let upn = &r.upn;
    // Unmarked also while presence is off: a mark left behind would keep other servers from
    // clearing for up to 5 minutes.
    if r.action == Action::Unmark {
        return unmark(env, upn).await;
    }
    if !configured(app) {
        return Outcome::Refused;
    }
    let Some((verb, body)) = body(&app.client_id, r) else {
        return Outcome::Done;
    };
    if r.action == Action::SetBusy {
        mark(env, upn, r.expiration).await;
    }
    let outcome = graph_post(env, app, upn, verb, &body).await;
    if r.action == Action::Clear && outcome == Outcome::Done {
        set_again_if_busy_elsewhere(env, app, r).await;
    }
    outcome
}

/// After this server cleared `r.upn`: another server may have marked the user and set Busy
/// between this server's unmark (which found no live mark) and the clear's landing, which then
/// wiped that fresh Busy. A server writes its mark before its `setPresence` starts, so a set
/// that could have landed before this clear has its mark in the store by now: read the marks
/// again and, while another server's is live, set Busy once more (without a mark of this
/// server: the other one renews it and clears after its own last call). Without this the user
/// would show available until the other server's next renewal, up to 4 minutes.
async fn set_again_if_busy_elsewhere(env: &Env, app: &AzureApp, r: &Request) {
    let upn = &r.upn;
    let Some(others) = others_marking(env, upn, "read the busy marks after the clear").await else {
        return;
    };
    if others.is_empty() {
        return;
    }
    tracing::info!(
        %upn,
        servers = ?others,
        "Teams presence: the user went Busy on another server during the clear; set Busy again"
    );
    let body = busy_body(&app.client_id, r.expiration);
    // A failure is logged and counted by graph_post; the other server's renewal mends it.
    graph_post(env, app, upn, "setPresence", &body).await;
}

/// One Graph presence request `verb` with `body` for `upn`, with a fresh app token once if
/// Graph refuses the cached one; failures are logged and counted.
async fn graph_post(env: &Env, app: &AzureApp, upn: &str, verb: &str, body: &Value) -> Outcome {
    let url = format!(
        "{}/v1.0/users/{}/presence/{verb}",
        app.graph_url.trim_end_matches('/'),
        path_segment(upn)
    );
    for renew in [false, true] {
        let token = match env.graph.token_for(app, renew).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%upn, "Teams presence: {verb}: no app token: {e}");
                failed(&env.metrics, "token");
                return Outcome::Retry { after: None };
            }
        };
        let answer = match env.http.post_json(&url, &token, body).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%upn, "Teams presence: {verb}: {e}");
                failed(&env.metrics, "unavailable");
                return Outcome::Retry { after: None };
            }
        };
        if answer.status == StatusCode::UNAUTHORIZED && !renew {
            continue;
        }
        let outcome = outcome_of(answer.status, answer.retry_after);
        match &outcome {
            Outcome::Done => tracing::debug!(%upn, "Teams presence: {verb} done"),
            other => {
                let reason = match (answer.status, other) {
                    (StatusCode::TOO_MANY_REQUESTS, _) => "throttled",
                    (_, Outcome::Refused) => "refused",
                    _ => "unavailable",
                };
                tracing::warn!(
                    %upn,
                    status = answer.status.as_u16(),
                    retry_after = ?answer.retry_after,
                    "Teams presence: Graph answered {verb} with {}: {}",
                    answer.status,
                    answer.body["error"]["message"].as_str().unwrap_or("no error message")
                );
                failed(&env.metrics, reason);
            }
        }
        return outcome;
    }
    Outcome::Retry { after: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_bodies() {
        let r = Request {
            id: 1,
            aor: "sip:alice@csps.local".into(),
            upn: "alice@contoso.com".into(),
            action: Action::SetBusy,
            expiration: Duration::from_secs(300),
        };
        let (verb, b) = body("app-id", &r).expect("a Graph request");
        assert_eq!(verb, "setPresence");
        assert_eq!(
            b,
            json!({"sessionId": "app-id", "availability": "Busy", "activity": "InACall",
                   "expirationDuration": "PT5M"})
        );
        let r = Request {
            action: Action::Clear,
            ..r
        };
        assert_eq!(
            body("app-id", &r),
            Some(("clearPresence", json!({"sessionId": "app-id"})))
        );
        let r = Request {
            action: Action::Unmark,
            ..r
        };
        assert_eq!(body("app-id", &r), None, "the store's, not Graph's");
        assert_eq!(iso_duration(Duration::from_secs(90)), "PT90S");
    }

    #[test]
    fn upn_in_the_path() {
        assert_eq!(path_segment("alice@contoso.com"), "alice@contoso.com");
        assert_eq!(path_segment("o'neil/../x@c.com"), "o%27neil%2F..%2Fx@c.com");
    }

    #[test]
    fn answers() {
        let s = Some(Duration::from_secs(3));
        assert_eq!(outcome_of(StatusCode::OK, None), Outcome::Done);
        assert_eq!(
            outcome_of(StatusCode::TOO_MANY_REQUESTS, s),
            Outcome::Retry { after: s }
        );
        assert_eq!(
            outcome_of(StatusCode::SERVICE_UNAVAILABLE, None),
            Outcome::Retry { after: None }
        );
        assert_eq!(outcome_of(StatusCode::NOT_FOUND, None), Outcome::Refused);
        assert_eq!(outcome_of(StatusCode::BAD_REQUEST, None), Outcome::Refused);
    }

    #[test]
    fn only_complete_credentials_turn_it_on() {
        let mut app = AzureApp {
            tenant: "t".into(),
            client_id: "c".into(),
            ..AzureApp::default()
        };
        assert!(!configured(&app));
        app.client_secret = crate::config::Secret("s".into());
        assert!(configured(&app));
    }
}
