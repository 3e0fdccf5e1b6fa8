//! SIP on the wire: listeners and connections (`transport`; WebSocket ones in `websocket`), the
//! TLS certificate (`tls`), the core task that drives the sans-IO transaction layer and
//! registrar (`core`), the account view it authenticates against (`accounts`) and the
//! group-commit writer for registrations (`writer`).

pub mod accounts;
pub mod core;
pub mod listen;
pub mod tls;
pub mod transport;
pub mod websocket;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use csps_sip::Transport;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::{mpsc, watch};

pub use listen::ListenSpec;

use self::accounts::AccountCache;
use self::core::{CoreCommand, CoreParts};
use self::transport::TransportCtx;
use crate::config::LiveConfig;
use crate::metrics::Metrics;
use crate::store::{RegistrationFilter, Store};

/// What starting SIP needs.
pub struct SipOptions {
    /// Listeners to open.
    pub listen: Vec<ListenSpec>,
    /// `<data-dir>/certs`.
    pub certs_dir: PathBuf,
    /// Secret for digest nonces.
    pub secret: [u8; 32],
    /// The policy engine (admission, routing, quirks); `None`: built-in rules only.
    pub policies: Option<Arc<crate::policy::PolicyEngine>>,
    /// The live feed bindings and calls are published on.
    pub events: crate::events::Events,
    /// Where ended calls' records go (`None`: kept in memory only).
    pub archive: Option<crate::calls::archive::Archive>,
    /// The name server that locates the Teams trunk's proxies (`None`: the system's).
    pub dns_server: Option<std::net::SocketAddr>,
}

/// A running SIP side.
pub struct SipHandle {
    /// Commands to the core task.
    pub commands: mpsc::Sender<CoreCommand>,
    /// Set to true to refuse new requests with 503.
    pub draining: watch::Sender<bool>,
    /// The addresses actually bound (port 0 resolved).
    pub bound: Vec<ListenSpec>,
    /// The running calls (for the API).
    pub calls: crate::calls::Directory,
    /// User state changes (busy while in a call).
    pub user_states: tokio::sync::broadcast::Sender<crate::calls::UserState>,
    /// The Teams trunk's state (for `GET /api/trunk`).
    pub trunk: watch::Receiver<crate::trunk::driver::TrunkView>,
    /// The end users' web phones, whose lines reach the core as in-process flows.
    pub webphones: crate::webphone::WebPhones,
}

/// Why SIP could not start.
#[derive(Debug, thiserror::Error)]
pub enum SipStartError {
    /// A listener could not be bound.
    #[error("cannot listen on {spec}: {source}")]
    Bind {
        /// The listener.
        spec: ListenSpec,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be read.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// No TLS certificate.
    #[error("TLS: {0}")]
    Tls(#[from] tls::CertError),
}

fn bind_err(spec: ListenSpec) -> impl FnOnce(std::io::Error) -> SipStartError {
    move |source| SipStartError::Bind { spec, source }
}

/// Binds every listener, restores this server's registrations and starts the core.
pub async fn start(
    opts: SipOptions,
    store: Arc<dyn Store>,
    config: &LiveConfig,
    metrics: Arc<Metrics>,
) -> Result<SipHandle, SipStartError> {
    let server_name = config.server().to_owned();
    let (inbound_tx, inbound_rx) = mpsc::channel(16_384);
    let (draining_tx, draining_rx) = watch::channel(false);
    let ctx = TransportCtx {
        inbound: inbound_tx,
        metrics: metrics.clone(),
        server_name: Arc::from(server_name.as_str()),
        draining: draining_rx,
        next_flow: Arc::new(AtomicU64::new(1)),
    };
    let mut udp = Vec::new();
    let mut bound = Vec::new();
    let mut tls_resolver: Option<Arc<tls::CertResolver>> = None;
    let mut udp_tasks = Vec::new();
    for spec in &opts.listen {
        match spec.transport {
            Transport::Udp => {
                let sock = bind_udp(*spec).map_err(bind_err(*spec))?;
                let addr = sock.local_addr().map_err(bind_err(*spec))?;
                let sock = Arc::new(sock);
                let index = udp.len() as u64;
                udp.push(sock.clone());
                udp_tasks.push((sock, index));
                bound.push(ListenSpec { addr, ..*spec });
            }
            // TCP, TLS, WS and WSS: stream listeners.
            _ => {
                let listener = bind_tcp(*spec).map_err(bind_err(*spec))?;
                let addr = listener.local_addr().map_err(bind_err(*spec))?;
                let acceptor = if matches!(spec.transport, Transport::Tls | Transport::Wss) {
                    let resolver = match &tls_resolver {
                        Some(r) => r.clone(),
                        None => {
                            let thumb = config.settings().certificate_thumbprint.clone();
                            let (key, tp) =
                                tls::load_certificate(&opts.certs_dir, &thumb, &server_name)?;
                            tracing::info!(thumbprint = %tp, "TLS certificate loaded");
                            let r = Arc::new(tls::CertResolver::new(key));
                            tls_resolver = Some(r.clone());
                            r
                        }
                    };
                    Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                        resolver,
                    )))
                } else {
                    None
                };
                if matches!(spec.transport, Transport::Ws | Transport::Wss) {
                    tokio::spawn(websocket::run_ws_listener(ctx.clone(), listener, acceptor));
                } else {
                    tokio::spawn(transport::run_tcp_listener(ctx.clone(), listener, acceptor));
                }
                bound.push(ListenSpec { addr, ..*spec });
            }
        }
        tracing::info!(listener = %bound.last().map(|b| b.to_string()).unwrap_or_default(), "SIP listening");
    }
    // Pick up a new certificate when the configuration names another one.
    if let Some(resolver) = tls_resolver {
        let mut rx = config.subscribe();
        let dir = opts.certs_dir.clone();
        let name = server_name.clone();
        tokio::spawn(async move {
            let mut current = rx.borrow_and_update().certificate_thumbprint.clone();
            while rx.changed().await.is_ok() {
                let want = rx.borrow_and_update().certificate_thumbprint.clone();
                if want == current {
                    continue;
                }
                current = want.clone();
                match tls::load_certificate(&dir, &want, &name) {
                    Ok((key, tp)) => {
                        resolver.set(key);
                        tracing::info!(thumbprint = %tp, "TLS certificate replaced");
                    }
                    Err(e) => tracing::error!("keeping the old TLS certificate: {e}"),
                }
            }
        });
    }

    let accounts = AccountCache::load(store.as_ref()).await?;
    let bindings = store
        .list_registrations(
            &RegistrationFilter {
                server: Some(server_name.clone()),
                aor: None,
            },
            chrono::Utc::now(),
        )
        .await?;
    let (writer_tx, writer_rx) = mpsc::channel(8192);
    let (done_tx, done_rx) = mpsc::channel(1024);
    tokio::spawn(writer::run(
        server_name.clone(),
        store.clone(),
        metrics.clone(),
        opts.events.clone(),
        writer_rx,
        done_tx,
    ));
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (call_tx, call_rx) = mpsc::channel(4096);
    let mut directory = crate::calls::Directory::new(metrics.calls.clone());
    if let Some(archive) = opts.archive.clone() {
        directory = directory.archived_to(archive);
    }
    directory.publish_to(opts.events.clone());
    let (user_states, _) = tokio::sync::broadcast::channel(256);
    let (paths_tx, paths_rx) = watch::channel(crate::trunk::Paths::default());
    let switch = crate::calls::Switch::new(
        server_name.clone(),
        config.subscribe(),
        call_tx,
        directory.clone(),
        user_states.clone(),
        opts.policies.clone(),
        paths_rx,
    )
    .with_music(crate::media::moh::watch(config.subscribe()));
    let trunk = crate::trunk::driver::spawn(crate::trunk::driver::DriverParts {
        paths: paths_tx,
        ctx: ctx.clone(),
        core: cmd_tx.clone(),
        settings: config.subscribe(),
        certs_dir: opts.certs_dir.clone(),
        server_name: server_name.clone(),
        dns_server: opts.dns_server,
    });
    tokio::spawn(core::run(CoreParts {
        server_name,
        secret: opts.secret,
        policies: opts.policies,
        udp,
        inbound: inbound_rx,
        commands: cmd_rx,
        settings: config.subscribe(),
        accounts,
        bindings,
        writer: writer_tx,
        committed: done_rx,
        metrics,
        calls: (switch, call_rx),
        user_states: (user_states.subscribe(), directory.clone()),
    }));
    // A web phone's line claims to arrive on the first listener, on loopback when it listens
    // on every address (the core then offers the relay's loopback side to the bridge).
    let sip_local = bound
        .first()
        .map(|b| {
            let mut a = b.addr;
            if a.ip().is_unspecified() {
                a.set_ip(if a.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            a
        })
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 5060)));
    let webphones = crate::webphone::WebPhones::new(ctx.clone(), sip_local, config.subscribe());
    for (sock, index) in udp_tasks {
        tokio::spawn(transport::run_udp(ctx.clone(), sock, index));
    }
    Ok(SipHandle {
        commands: cmd_tx,
        draining: draining_tx,
        bound,
        calls: directory,
        user_states,
        trunk,
        webphones,
    })
}

/// Rebuilds the account view after a change of users and hands it to the core.
pub async fn refresh_accounts(store: &dyn Store, commands: &mpsc::Sender<CoreCommand>) {
    match AccountCache::load(store).await {
        Ok(a) => {
            let _ = commands.send(CoreCommand::Accounts(a)).await;
        }
        Err(e) => tracing::error!("cannot reload accounts: {e}"),
    }
}

/// Receive buffer asked for on UDP sockets: a REGISTER flood of ~20k datagrams/s must survive a
/// few milliseconds in which the receive task is not scheduled (the kernel's 208 KiB default
/// holds only ~100 datagrams, as each costs a 2 KiB+ skb).
const UDP_RCVBUF: usize = 8 << 20;
/// Send buffer asked for on UDP sockets (answers leave in bursts after a group commit).
const UDP_SNDBUF: usize = 4 << 20;

fn bind_udp(spec: ListenSpec) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(
        Domain::for_address(spec.addr),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // As servers do; the kernel caps the request at net.core.rmem_max / wmem_max (an operator
    // raises those for more), and a refusal leaves the default rather than failing the listener.
    if let Err(e) = sock.set_recv_buffer_size(UDP_RCVBUF) {
        tracing::debug!("SO_RCVBUF on {}: {e}", spec.addr);
    }
    if let Err(e) = sock.set_send_buffer_size(UDP_SNDBUF) {
        tracing::debug!("SO_SNDBUF on {}: {e}", spec.addr);
    }
    sock.bind(&spec.addr.into())?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

fn bind_tcp(spec: ListenSpec) -> std::io::Result<TcpListener> {
    let sock = if spec.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(spec.addr)?;
    sock.listen(1024)
}
