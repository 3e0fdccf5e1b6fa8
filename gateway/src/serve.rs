//! `csps serve`: resolves the settings (flag > environment > local file > store), opens the store,
//! starts SIP and HTTP, and on SIGTERM/SIGINT drains: new requests get 503 with Retry-After, open
//! transactions are answered, the store is flushed, then the process exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::{Args, ValueEnum};

use crate::config::LiveConfig;
use crate::config::local::{self, LocalFile};
use crate::metrics::Metrics;
use crate::sip::{self, ListenSpec, SipOptions};
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `csps serve`; each has a `CSPS_*` environment twin.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Local file (default `<data-dir>/csps.toml`).
    #[arg(long, env = "CSPS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (embedded store, certificates, admin token).
    #[arg(long, env = "CSPS_DATA_DIR", default_value = "./csps-data")]
    pub data_dir: PathBuf,
    /// This server's name (`[a-z0-9-]{1,63}`; default: the short host name).
    #[arg(long, env = "CSPS_SERVER_NAME")]
    pub server_name: Option<String>,
    /// MongoDB connection string (absent: the embedded store).
    #[arg(long, env = "CSPS_MONGODB_URI")]
    pub mongodb_uri: Option<String>,
    /// SIP listener, repeatable (`udp:127.0.0.1:5060`, `tcp:[::1]:5060`, `tls:0.0.0.0:5061`);
    /// replaces the default UDP and TCP on port 5060.
    #[arg(long = "sip-listen", env = "CSPS_SIP_LISTEN", value_delimiter = ',')]
    pub sip_listen: Vec<ListenSpec>,
    /// HTTP listener for the API, the console and /metrics.
    #[arg(long, env = "CSPS_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "CSPS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Create the demo account (printed once) on an empty store.
    #[arg(long, env = "CSPS_DEMO")]
    pub demo: bool,
    /// Folder of the built web console (`index.html` and its files), served at `/`; default:
    /// `admin-ui/dist` under the working directory, else `admin-ui` beside the executable.
    #[arg(long, env = "CSPS_UI_DIR")]
    pub ui_dir: Option<PathBuf>,
    /// DNS server (`ADDR:PORT`) that locates the Teams trunk's proxies (NAPTR, SRV, A/AAAA);
    /// default: the system's (`/etc/resolv.conf`).
    #[arg(long, env = "CSPS_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
    /// For tests only: renew Teams presence every this many seconds (not every 4 minutes).
    #[arg(long, env = "CSPS_TEST_PRESENCE_RENEW_SECS", hide = true)]
    pub test_presence_renew_secs: Option<u64>,
}

/// A start-up or shutdown failure, with what to do about it in the message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServeError(String);

impl ServeError {
    fn new(what: impl std::fmt::Display) -> Self {
        ServeError(what.to_string())
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CSPS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// State of the HTTP side that is not the REST API's.
#[derive(Clone)]
pub(crate) struct HttpState {
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
}

/// `GET /healthz`: `ok`, or 503 while draining.
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses(
        (status = 200, description = "Serving", body = String, content_type = "text/plain",
            example = "ok\n"),
        (status = 503, description = "Draining (`Retry-After`)", body = String,
            content_type = "text/plain"),
    ))]
pub(crate) async fn healthz(State(s): State<HttpState>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "30")],
            "draining\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

/// `GET /metrics`: Prometheus/OpenMetrics text, to loopback peers.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "The metrics", body = String,
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 403, response = crate::api::openapi::Forbidden),
    ))]
pub(crate) async fn metrics_page(
    State(s): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    // Loopback by default (DESIGN): scraping from elsewhere goes through a local agent or proxy.
    if !peer.ip().is_loopback() {
        return crate::api::Problem::new(
            StatusCode::FORBIDDEN,
            "metrics are served to loopback only",
        )
        .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// How often lapsed registrations are purged where the database does not expire them itself.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// Opens the store: MongoDB when `mongodb_uri` is set (database from the URI path, default
/// `csps`), else the embedded store in `data_dir`. Starts the hourly purge of lapsed registrations
/// where the store has no TTL index: always for the embedded store; for MongoDB only when the
/// server refuses TTL indexes (FerretDB v1), and then only on the server holding the purge lease,
/// removing documents expired for more than a day.
async fn open_store(
    mongodb_uri: Option<&str>,
    data_dir: &std::path::Path,
    server_name: &str,
) -> Result<Arc<dyn Store>, ServeError> {
    if let Some(uri) = mongodb_uri {
        let mongo = crate::store::mongo::MongoStore::connect(uri, None)
            .await
            .map_err(|e| ServeError::new(format!("cannot open the MongoDB store: {e}")))?;
        tracing::info!(
            store = "mongodb",
            at = mongo.describe(),
            ttl_index = mongo.ttl_index(),
            "store: MongoDB"
        );
        if !mongo.ttl_index() {
            let purge = mongo.clone();
            let me = server_name.to_owned();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PURGE_INTERVAL);
                loop {
                    tick.tick().await;
                    let now = chrono::Utc::now();
                    // One server purges: the lease holder (renewed every hour, held for two).
                    match purge
                        .try_lease("purge-expired", &me, now, chrono::Duration::hours(2))
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::warn!("taking the purge lease failed: {e}");
                            continue;
                        }
                    }
                    match purge.purge_expired(now - chrono::Duration::days(1)).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(purged = n, "removed lapsed registrations"),
                        Err(e) => tracing::warn!("purging lapsed registrations failed: {e}"),
                    }
                }
            });
        }
        return Ok(Arc::new(mongo));
    }
    let embedded = Arc::new(EmbeddedStore::open(data_dir).map_err(|e| {
        ServeError::new(format!(
            "cannot open the embedded store in {}: {e}",
            data_dir.display()
        ))
    })?);
    tracing::info!(store = "embedded", at = %data_dir.display(), "store: embedded");
    // The embedded store has no TTL index: purge lapsed registrations hourly so nothing piles up
    // (every read filters on expiry anyway).
    let purge = embedded.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PURGE_INTERVAL);
        loop {
            tick.tick().await;
            match purge.purge_expired(chrono::Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "removed lapsed registrations from the store"),
                Err(e) => tracing::warn!("purging lapsed registrations failed: {e}"),
            }
        }
    });
    Ok(embedded)
}

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> Result<(), ServeError> {
    init_logging(args.log_format);
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        ServeError::new(format!(
            "cannot create data dir {}: {e}",
            args.data_dir.display()
        ))
    })?;
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| args.data_dir.join("csps.toml"));
    let mut file = LocalFile::load(&config_path).map_err(ServeError::new)?;
    // An old-format file is checked before anything is written (a bad value stops here).
    let old_values = crate::config::upgrade::parse(&file).map_err(|e| {
        ServeError::new(format!(
            "{}: cannot upgrade the old-format file: {e}",
            config_path.display()
        ))
    })?;
    let server_name = args
        .server_name
        .clone()
        .or_else(|| file.server_name.clone())
        .unwrap_or_else(local::default_server_name);
    local::validate_server_name(&server_name).map_err(ServeError::new)?;
    let mongodb_uri = args
        .mongodb_uri
        .clone()
        .or_else(|| file.mongodb_uri.clone());
    let admin_token = local::ensure_admin_token(&args.data_dir).map_err(ServeError::new)?;
    raise_nofile_limit();

    let store = open_store(mongodb_uri.as_deref(), &args.data_dir, &server_name).await?;
    if let Some(old) = &old_values {
        crate::config::upgrade::apply(store.as_ref(), &server_name, old, &config_path, &file)
            .await
            .map_err(ServeError::new)?;
        file.legacy_data = None;
    }
    // After the upgrade: saving a new key must not drop old-format tables not yet copied.
    let env_key = match std::env::var(local::SECRET_KEY_ENV) {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(ServeError::new(format!(
                "${}: secret_key is not base64url",
                local::SECRET_KEY_ENV
            )));
        }
    };
    let secret =
        local::secret_key(&mut file, &config_path, env_key.as_deref()).map_err(ServeError::new)?;
    let config = LiveConfig::open(store.clone(), &server_name)
        .await
        .map_err(|e| ServeError::new(format!("cannot read the configuration: {e}")))?;
    let listen = if args.sip_listen.is_empty() {
        sip::listen::default_listeners()
    } else {
        args.sip_listen.clone()
    };
    if args.demo {
        crate::demo::ensure_demo_account(store.as_ref(), &config, &args.data_dir, &listen)
            .await
            .map_err(ServeError::new)?;
    }

    let metrics = Arc::new(Metrics::new());
    // Before SIP: the registrar and the calls ask the policies from the first message on.
    let policies = start_policies(&store, &config, &metrics, mongodb_uri.is_some()).await;
    let events = crate::events::Events::new().counted_by(metrics.event_listeners.clone());
    // Ended calls' records go to the store; the sweep keeps them `CallRecordDays` days.
    let archive =
        crate::calls::archive::Archive::start(store.clone(), &server_name, metrics.calls.clone());
    crate::calls::archive::spawn_sweeper(store.clone(), config.subscribe(), metrics.calls.clone());
    let sip = sip::start(
        SipOptions {
            listen,
            certs_dir: args.data_dir.join("certs"),
            secret,
            policies: policies.clone(),
            events: events.clone(),
            archive: Some(archive.clone()),
            dns_server: args.dns_server,
        },
        store.clone(),
        &config,
        metrics.clone(),
    )
    .await
    .map_err(ServeError::new)?;

    // Teams Busy presence follows the calls' user states, off the call path.
    let presence = crate::presence::spawn(crate::presence::PresenceParts {
        states: sip.user_states.subscribe(),
        store: store.clone(),
        settings: config.subscribe(),
        metrics: metrics.clone(),
        renew: args.test_presence_renew_secs.map(Duration::from_secs),
        calls: sip.calls.clone(),
        server: server_name.clone(),
    });

    let draining = Arc::new(AtomicBool::new(false));
    let http_state = HttpState {
        metrics: metrics.clone(),
        draining: draining.clone(),
    };
    let mut api_state = crate::api::ApiState::new(store.clone(), config.clone(), admin_token);
    if let Some(engine) = policies {
        api_state = api_state.with_policies(engine);
    }
    // Activation: refresh tokens sealed with the local secret_key, refreshed every night.
    let token_key = Arc::new(crate::auth::sealed::TokenKey::new(&secret));
    let refresher = crate::auth::refresh::Refresher::new(
        store.clone(),
        config.clone(),
        api_state.auth.http().clone(),
        token_key.clone(),
        metrics.token_refreshes.clone(),
    );
    refresher.clone().spawn();
    api_state.activation.key = Some(token_key);
    // Sign-in states sealed with the same secret_key: any server of a cluster completes them.
    api_state.activation.pending = Arc::new(crate::auth::activation::PendingSignIns::new(&secret));
    api_state.activation.refresher = Some(refresher);
    api_state.calls = sip.calls.clone();
    api_state.trunk = sip.trunk.clone();
    api_state.webphones = sip.webphones.clone();
    api_state.events = events.clone();
    api_state.console = crate::api::console::ConsoleFiles::new(match &args.ui_dir {
        Some(dir) => vec![dir.clone()],
        None => crate::api::console::ConsoleFiles::default_dirs(),
    });
    // Users changed through the API: rebuild the registrar's account view off the packet path.
    let mut users_changed = api_state.users_changed.subscribe();
    let (reload_store, reload_cmds) = (store.clone(), sip.commands.clone());
    tokio::spawn(async move {
        while users_changed.changed().await.is_ok() {
            users_changed.borrow_and_update();
            sip::refresh_accounts(reload_store.as_ref(), &reload_cmds).await;
        }
    });
    // Changes made by other servers (or in the database): reload the view and the accounts.
    let users_state = api_state.clone();
    crate::config::propagate::spawn(store.clone(), config.clone(), move || {
        users_state.note_users_changed()
    })
    .await;
    let api = crate::api::router(api_state);
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .with_state(http_state)
        .merge(api);
    let listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .map_err(|e| {
            ServeError::new(format!(
                "cannot listen on {} for HTTP: {e}",
                args.http_listen
            ))
        })?;
    tracing::info!(http = %args.http_listen, server = %server_name, "csps is ready");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        });
        if let Err(e) = serve.await {
            tracing::error!("HTTP server failed: {e}");
        }
    });

    wait_for_signal().await;
    tracing::info!("draining: new requests get 503, open transactions are answered");
    draining.store(true, Ordering::Relaxed);
    let _ = sip.draining.send(true);
    events.close();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    if sip
        .commands
        .send(sip::core::CoreCommand::Drain(done_tx))
        .await
        .is_ok()
        && tokio::time::timeout(Duration::from_secs(32), done_rx)
            .await
            .is_err()
    {
        tracing::warn!("transactions still open after 32 s; stopping anyway");
    }
    // The calls end with the process: Teams must not go on showing their users Busy.
    presence.stop(Duration::from_secs(5)).await;
    if !archive.flush(Duration::from_secs(10)).await {
        tracing::warn!("call records still queued after 10 s; stopping anyway");
    }
    if let Err(e) = store.flush().await {
        tracing::error!("flushing the store failed: {e}");
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    tracing::info!("stopped");
    Ok(())
}

/// How often a server of a cluster looks for policy modules uploaded through another server.
const POLICY_POLL: Duration = Duration::from_secs(10);

/// Starts the policy engine: loads the stored modules, follows the emergency numbers of the live
/// configuration and, on a shared (MongoDB) store, polls it for modules uploaded elsewhere.
/// `None` (built-in rules only, logged) when the engine cannot start.
async fn start_policies(
    store: &Arc<dyn Store>,
    config: &LiveConfig,
    metrics: &Arc<Metrics>,
    shared_store: bool,
) -> Option<Arc<crate::policy::PolicyEngine>> {
    use crate::policy::{Limits, PolicyEngine};
    let engine = match PolicyEngine::new(metrics.clone(), Limits::default()) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            tracing::error!("policies are off (built-in rules only): {e}");
            return None;
        }
    };
    engine.set_emergency_numbers(config.settings().emergency_numbers.clone());
    engine.sync_with_store(store.as_ref()).await;
    let mut settings = config.subscribe();
    let follower = engine.clone();
    tokio::spawn(async move {
        while settings.changed().await.is_ok() {
            let numbers = settings.borrow_and_update().emergency_numbers.clone();
            follower.set_emergency_numbers(numbers);
        }
    });
    if shared_store {
        let (poller, store) = (engine.clone(), store.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLICY_POLL);
            loop {
                tick.tick().await;
                poller.sync_with_store(store.as_ref()).await;
            }
        });
    }
    Some(engine)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Raises the soft open-file limit to the hard limit, as servers do (many TCP phones, one fd each).
fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}
