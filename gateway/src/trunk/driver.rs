//! The tokio side of the trunk, kept thin: it opens one TLS connection per proxy (mutual TLS:
//! the gateway presents its SIP certificate, as Direct Routing requires, and trusts
//! `Data.SipConfig.TeamsCaFile` or the web PKI roots), hands each to the SIP core as a flow (so
//! requests from Teams on it reach the transaction layer like any other), asks the core to send
//! the keep-alives [`Trunk`] builds, and passes answers, timeouts and closed connections back to
//! it. It publishes what `GET /api/trunk` shows and rebuilds everything when the trunk's leaves
//! or the certificate change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use csps_sip::{FlowId, Remote, Transport};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_rustls::TlsConnector;

use super::{Tokens, Trunk};
use crate::config::{Settings, TrunkSettings};
use crate::sip::core::CoreCommand;
use crate::sip::tls;
use crate::sip::transport::{Inbound, TransportCtx, serve_connection};

/// How long a TCP connect plus TLS handshake to a proxy may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The trunk as `GET /api/trunk` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"fqdn": "sbc1.contoso.com", "current": "sip.pstnhub.microsoft.com:5061",
    "proxies": [{"target": "sip.pstnhub.microsoft.com:5061", "up": true, "connected": true,
    "last_status": 200, "rtt_ms": 12.5, "last_options_at": "2026-11-26T10:00:00Z"}]}))]
pub struct TrunkView {
    /// `Data.SipConfig.SbcFqdn`; `null` when no trunk is configured.
    pub fqdn: Option<String>,
    /// The proxy that takes new calls (the first one up), if any.
    pub current: Option<String>,
    /// Every configured proxy, in failover order.
    pub proxies: Vec<ProxyView>,
}

/// One proxy's state.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ProxyView {
    /// `host:port` as configured.
    pub target: String,
    /// False after an OPTIONS went unanswered or the connection failed, until one is answered.
    pub up: bool,
    /// A TLS connection to it is open.
    pub connected: bool,
    /// Status of the last answer to an OPTIONS.
    pub last_status: Option<u16>,
    /// Round-trip time of the last answered OPTIONS, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// When the last OPTIONS was sent.
    pub last_options_at: Option<DateTime<Utc>>,
}

/// What the SIP core reports about the driver's requests.
#[derive(Debug)]
pub enum CoreAnswer {
    /// A response arrived.
    Answered {
        /// The configuration generation the request was sent in.
        generation: u64,
        /// The proxy's index.
        proxy: usize,
        /// Its status.
        status: u16,
    },
    /// The transaction timed out (or could not be started).
    Timeout {
        /// The configuration generation the request was sent in.
        generation: u64,
        /// The proxy's index.
        proxy: usize,
    },
}

/// What the driver needs.
pub struct DriverParts {
    /// The SIP transport context (to register connections as flows).
    pub ctx: TransportCtx,
    /// The SIP core.
    pub core: mpsc::Sender<CoreCommand>,
    /// Live settings.
    pub settings: watch::Receiver<Arc<Settings>>,
    /// `<data-dir>/certs` (the gateway's certificate, presented to the proxies).
    pub certs_dir: PathBuf,
    /// This server's name (for a self-signed certificate).
    pub server_name: String,
    /// Where the calls learn which proxy takes new calls and which flows are the trunk's.
    pub paths: watch::Sender<super::Paths>,
}

/// Starts the driver; the receiver always holds the current view.
pub fn spawn(parts: DriverParts) -> watch::Receiver<TrunkView> {
    let (view_tx, view_rx) = watch::channel(TrunkView::default());
    tokio::spawn(run(parts, view_tx));
    view_rx
}

/// Hands the gateway's certificate to the proxies' certificate requests.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The TLS client for the proxies: TLS 1.2+, the configured CAs (else the web PKI roots), the
/// gateway's certificate for mutual TLS.
fn connector(
    cfg: &TrunkSettings,
    thumbprint: &str,
    certs_dir: &std::path::Path,
    server_name: &str,
) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    if cfg.ca_file.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        let certs = CertificateDer::pem_file_iter(&cfg.ca_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("TeamsCaFile {}: {e}", cfg.ca_file))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "TeamsCaFile {}: no usable CA certificate",
                cfg.ca_file
            ));
        }
    }
    let (key, _) = tls::load_certificate(certs_dir, thumbprint, server_name)
        .map_err(|e| format!("the gateway's certificate: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(ClientCert(key)));
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `host` and port of a `host:port` target (brackets of an IPv6 literal removed).
fn split_target(target: &str) -> Option<(&str, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok()?))
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Resolves `target`, connects and completes the TLS handshake (the proxy's certificate must
/// name its host).
async fn connect(
    target: String,
    tls: TlsConnector,
) -> Result<(TlsStream, SocketAddr, SocketAddr), String> {
    let (host, port) = split_target(&target).ok_or("not host:port")?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
    let attempt = async {
        let mut last = format!("{host} resolves to no address");
        let addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let local = tcp.local_addr().map_err(|e| e.to_string())?;
                    let stream = tls
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS with {addr}: {e}"))?;
                    return Ok((stream, addr, local));
                }
                Err(e) => last = format!("connecting to {addr}: {e}"),
            }
        }
        Err(last)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()))?
}

/// What connection tasks report.
enum LinkEvent {
    /// The connection failed (resolution, TCP, TLS).
    Failed(u64, usize, String),
    /// The connection is registered with the core as flow `id`.
    Opened(u64, usize, FlowId, SocketAddr),
    /// The connection closed.
    Closed(u64, usize, FlowId),
}

/// One proxy's connection.
enum Link {
    Idle,
    Connecting(AbortHandle),
    Open {
        id: FlowId,
        addr: SocketAddr,
        task: AbortHandle,
    },
}

impl Link {
    /// Stops the connection task; the core forgets an open flow.
    fn close(&mut self, ctx: &TransportCtx) {
        match std::mem::replace(self, Link::Idle) {
            Link::Idle => {}
            Link::Connecting(task) => task.abort(),
            Link::Open { id, task, .. } => {
                task.abort();
                let _ = ctx.inbound.try_send(Inbound::FlowClosed { id });
            }
        }
    }
}

struct Driver {
    parts: DriverParts,
    cfg: TrunkSettings,
    thumbprint: String,
    generation: u64,
    trunk: Option<Trunk>,
    tls: Option<TlsConnector>,
    links: Vec<Link>,
    events: mpsc::Sender<LinkEvent>,
    view: watch::Sender<TrunkView>,
}

async fn run(parts: DriverParts, view: watch::Sender<TrunkView>) {
    let (events, mut event_rx) = mpsc::channel(64);
    let (answers, mut answer_rx) = mpsc::channel(64);
    if parts
        .core
        .send(CoreCommand::TrunkAnswers(answers))
        .await
        .is_err()
    {
        return;
    }
    let mut settings = parts.settings.clone();
    let mut d = Driver {
        parts,
        cfg: TrunkSettings::default(),
        thumbprint: String::new(),
        generation: 0,
        trunk: None,
        tls: None,
        links: Vec::new(),
        events,
        view,
    };
    let first = settings.borrow_and_update().clone();
    d.configure(&first);
    loop {
        let wake = d.trunk.as_ref().and_then(Trunk::poll_timeout);
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = settings.changed() => {
                if changed.is_err() {
                    break;
                }
                let s = settings.borrow_and_update().clone();
                d.configure(&s);
            }
            Some(ev) = event_rx.recv() => d.on_link(ev),
            Some(a) = answer_rx.recv() => d.on_answer(a),
            () = sleep => d.on_timer().await,
        }
        d.publish();
    }
}

impl Driver {
    /// Applies the trunk's leaves: when they (or the certificate) changed, closes every
    /// connection and starts over with the new proxy list.
    fn configure(&mut self, s: &Settings) {
        if s.trunk == self.cfg && s.certificate_thumbprint == self.thumbprint && self.generation > 0
        {
            return;
        }
        for link in &mut self.links {
            link.close(&self.parts.ctx);
        }
        self.links.clear();
        self.generation += 1;
        self.cfg = s.trunk.clone();
        self.thumbprint = s.certificate_thumbprint.clone();
        self.trunk = None;
        self.tls = None;
        if self.cfg.fqdn.is_empty() || self.cfg.proxies.is_empty() {
            tracing::info!("no Teams trunk configured (Data.SipConfig.SbcFqdn)");
            self.publish();
            return;
        }
        match connector(
            &self.cfg,
            &self.thumbprint,
            &self.parts.certs_dir,
            &self.parts.server_name,
        ) {
            Ok(c) => self.tls = Some(c),
            Err(e) => tracing::error!("Teams trunk not started: {e}"),
        }
        let interval = Duration::from_secs(u64::from(self.cfg.options_interval.max(1)));
        self.trunk = Some(Trunk::new(
            &self.cfg.fqdn,
            &self.cfg.proxies,
            interval,
            Instant::now(),
        ));
        self.links = self.cfg.proxies.iter().map(|_| Link::Idle).collect();
        tracing::info!(fqdn = %self.cfg.fqdn, proxies = ?self.cfg.proxies, "Teams trunk configured");
        self.publish();
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        let Some(trunk) = &mut self.trunk else { return };
        for i in trunk.due(now) {
            match &self.links[i] {
                Link::Open { id, addr, .. } => {
                    let to = Remote {
                        transport: Transport::Tls,
                        addr: *addr,
                        flow: Some(*id),
                    };
                    let Some(req) = trunk.options(i, now, &tokens()) else {
                        continue;
                    };
                    let cmd = CoreCommand::TrunkSend {
                        generation: self.generation,
                        proxy: i,
                        to,
                        req: Box::new(req),
                    };
                    if self.parts.core.send(cmd).await.is_err() {
                        return;
                    }
                }
                Link::Connecting(_) => trunk.deferred(i, now),
                Link::Idle => {
                    trunk.deferred(i, now);
                    let Some(tls) = self.tls.clone() else {
                        trunk.unreachable(i);
                        continue;
                    };
                    let task = tokio::spawn(open(
                        self.parts.ctx.clone(),
                        self.events.clone(),
                        self.generation,
                        i,
                        self.cfg.proxies[i].clone(),
                        tls,
                    ));
                    self.links[i] = Link::Connecting(task.abort_handle());
                }
            }
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        let (generation, i) = match &ev {
            LinkEvent::Failed(g, i, _)
            | LinkEvent::Opened(g, i, ..)
            | LinkEvent::Closed(g, i, _) => (*g, *i),
        };
        if generation != self.generation || i >= self.links.len() {
            return;
        }
        let Some(trunk) = &mut self.trunk else { return };
        let target = &self.cfg.proxies[i];
        match ev {
            LinkEvent::Failed(_, _, why) => {
                tracing::warn!(proxy = %target, "Teams trunk proxy unreachable: {why}");
                self.links[i] = Link::Idle;
                trunk.unreachable(i);
            }
            LinkEvent::Opened(_, _, id, addr) => {
                let Link::Connecting(task) = &self.links[i] else {
                    return;
                };
                tracing::info!(proxy = %target, %addr, "Teams trunk proxy connected");
                self.links[i] = Link::Open {
                    id,
                    addr,
                    task: task.clone(),
                };
                trunk.connected(i, Instant::now());
            }
            LinkEvent::Closed(_, _, id) => {
                if matches!(self.links[i], Link::Open { id: open, .. } if open == id) {
                    tracing::warn!(proxy = %target, "Teams trunk proxy closed the connection");
                    self.links[i] = Link::Idle;
                    trunk.unreachable(i);
                }
            }
        }
    }

    fn on_answer(&mut self, a: CoreAnswer) {
        let Some(trunk) = &mut self.trunk else { return };
        match a {
            CoreAnswer::Answered {
                generation,
                proxy,
                status,
            } if generation == self.generation => {
                let was = trunk.proxies().get(proxy).is_some_and(|p| p.up);
                trunk.answered(proxy, status, Instant::now());
                if !was {
                    tracing::info!(proxy = %self.cfg.proxies[proxy], status, "Teams trunk proxy up");
                }
            }
            CoreAnswer::Timeout { generation, proxy } if generation == self.generation => {
                tracing::warn!(proxy = %self.cfg.proxies[proxy], "Teams trunk proxy did not answer OPTIONS");
                trunk.unreachable(proxy);
            }
            _ => {}
        }
    }

    fn publish(&self) {
        self.publish_paths();
        let now = Instant::now();
        let wall = Utc::now();
        let view = match &self.trunk {
            None => TrunkView::default(),
            Some(t) => TrunkView {
                fqdn: Some(self.cfg.fqdn.clone()),
                current: t.current().map(|i| t.proxies()[i].target.clone()),
                proxies: t
                    .proxies()
                    .iter()
                    .zip(&self.links)
                    .map(|(p, l)| ProxyView {
                        target: p.target.clone(),
                        up: p.up,
                        connected: matches!(l, Link::Open { .. }),
                        last_status: p.last_status,
                        rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                        last_options_at: p.last_options.and_then(|t| {
                            let ago = chrono::Duration::from_std(now.saturating_duration_since(t));
                            ago.ok().map(|a| wall - a)
                        }),
                    })
                    .collect(),
            },
        };
        self.view.send_if_modified(|cur| {
            if *cur != view {
                *cur = view;
                true
            } else {
                false
            }
        });
    }
}

impl Driver {
    /// The calls' view: each proxy's host, connection and state.
    fn publish_paths(&self) {
        let paths = match &self.trunk {
            None => super::Paths::default(),
            Some(t) => super::Paths {
                fqdn: self.cfg.fqdn.clone(),
                proxies: t
                    .proxies()
                    .iter()
                    .zip(&self.links)
                    .map(|(p, l)| super::Path {
                        host: split_target(&p.target)
                            .map_or(p.target.clone(), |(h, _)| h.to_owned()),
                        flow: match l {
                            Link::Open { id, addr, .. } => Some(Remote {
                                transport: Transport::Tls,
                                addr: *addr,
                                flow: Some(*id),
                            }),
                            _ => None,
                        },
                        up: p.up,
                    })
                    .collect(),
            },
        };
        self.parts.paths.send_if_modified(|cur| {
            if *cur != paths {
                *cur = paths;
                true
            } else {
                false
            }
        });
    }
}

/// Random tokens for one request.
fn tokens() -> Tokens {
    Tokens {
        branch: format!("{:016x}", rand::random::<u64>()),
        tag: format!("{:016x}", rand::random::<u64>()),
        call_id: format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        ),
    }
}

/// Connects to proxy `i` and serves the connection as a SIP flow until it closes, reporting
/// each step to the driver.
async fn open(
    ctx: TransportCtx,
    events: mpsc::Sender<LinkEvent>,
    generation: u64,
    i: usize,
    target: String,
    tls: TlsConnector,
) {
    let (stream, peer, local) = match connect(target, tls).await {
        Ok(x) => x,
        Err(e) => {
            let _ = events.send(LinkEvent::Failed(generation, i, e)).await;
            return;
        }
    };
    let id = ctx.new_flow();
    let (opened_tx, opened_rx) = oneshot::channel();
    let serve = serve_connection(
        ctx,
        id,
        stream,
        peer,
        local,
        Transport::Tls,
        Some(opened_tx),
    );
    let notify = async {
        if opened_rx.await.is_ok() {
            let _ = events
                .send(LinkEvent::Opened(generation, i, id, peer))
                .await;
        }
    };
    tokio::join!(serve, notify);
    let _ = events.send(LinkEvent::Closed(generation, i, id)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_host_and_port() {
        assert_eq!(
            split_target("sip.pstnhub.microsoft.com:5061"),
            Some(("sip.pstnhub.microsoft.com", 5061))
        );
        assert_eq!(split_target("[::1]:5061"), Some(("::1", 5061)));
        assert_eq!(split_target("nohost"), None);
        assert_eq!(split_target("h:x"), None);
    }
}
