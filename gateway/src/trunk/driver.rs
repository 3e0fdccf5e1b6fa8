//! The tokio side of the trunk, kept thin: it locates the proxies (RFC 3263 through
//! [`hickory_resolver`], see [`super::dns`]), opens one TLS connection per proxy (mutual TLS: the
//! gateway presents its SIP certificate, as Direct Routing requires, and trusts
//! `Data.SipConfig.TeamsCaFile` or the web PKI roots), hands each to the SIP core as a flow (so
//! requests from Teams on it reach the transaction layer like any other), asks the core to send
//! the keep-alives [`Trunk`] builds, and passes answers, timeouts and closed connections back to
//! it. It publishes what `GET /api/trunk` shows and rebuilds everything when the trunk's leaves
//! or the certificate change.
//!
//! **Why hickory-resolver.** The system resolver (`getaddrinfo`) answers only A/AAAA; RFC 3263
//! needs NAPTR and SRV and their TTLs. hickory is the maintained pure-Rust DNS stack (used by
//! reqwest, mongodb, linkerd), reads `/etc/resolv.conf` and the hosts file like libc, caches by
//! TTL, and builds with only its tokio runtime and system configuration (no DNSSEC, DoH or QUIC).
//! `--dns-server` points it at one name server instead.
//!
//! A domain's proxies are located again when the smallest TTL of its NAPTR and SRV answers has
//! run out (at least [`MIN_REFRESH`] apart); an unchanged set of targets keeps its order and its
//! connections, a changed one keeps the connections of the targets that stay. A domain that names
//! nothing is one proxy shown down with the reason, tried again every [`RETRY_UNRESOLVED`]; a
//! failed refresh keeps the proxies found before.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use csps_sip::{FlowId, Remote, Transport};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_rustls::TlsConnector;

use super::dns::{self, Entry, Naptr, Srv};
use super::{Tokens, Trunk};
use crate::config::{Settings, TrunkSettings};
use crate::sip::core::CoreCommand;
use crate::sip::tls;
use crate::sip::transport::{Inbound, TransportCtx, serve_connection};

/// How long a TCP connect plus TLS handshake to a proxy (with its A/AAAA lookup) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long locating a domain's proxies (NAPTR, SRV, A/AAAA) may take.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(15);
/// The shortest time between two locations of a domain, whatever its TTLs (a zero TTL would
/// otherwise ask the name server at every keep-alive).
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// How soon a domain that named no proxy is asked again.
pub const RETRY_UNRESOLVED: Duration = Duration::from_secs(30);

/// The trunk as `GET /api/trunk` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"fqdn": "sbc1.contoso.com", "current": "sip.pstnhub.microsoft.com:5061",
    "proxies": [{"target": "sip.pstnhub.microsoft.com:5061", "entry": "pstnhub.microsoft.com",
    "up": true, "connected": true, "last_status": 200, "rtt_ms": 12.5,
    "last_options_at": "2026-11-26T10:00:00Z", "error": null}]}))]
pub struct TrunkView {
    /// `Data.SipConfig.SbcFqdn`; `null` when no trunk is configured.
    pub fqdn: Option<String>,
    /// The proxy that takes new calls (the first one up), if any.
    pub current: Option<String>,
    /// Every proxy (configured, or located by DNS), in failover order.
    pub proxies: Vec<ProxyView>,
}

/// One proxy's state.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ProxyView {
    /// `host:port` as configured or located (an SRV target and its port); the configured entry
    /// itself while its domain names no proxy.
    pub target: String,
    /// The `Data.SipConfig.TeamsProxies` entry it comes from.
    pub entry: String,
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
    /// Why it is down (DNS named nothing, the connection failed or closed, no answer), if it is.
    pub error: Option<String>,
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
    /// The name server to ask (`--dns-server`); `None`: the system's (`/etc/resolv.conf`).
    pub dns_server: Option<SocketAddr>,
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

/// Accepts a certificate that names any of `names` (the configured domain, or an SRV target
/// inside it: see [`dns::tls_names`]); chain, validity and signatures as web PKI checks them.
#[derive(Debug)]
struct AnyOfNames {
    webpki: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AnyOfNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut first = None;
        for name in &self.names {
            match self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                name,
                ocsp_response,
                now,
            ) {
                Ok(ok) => return Ok(ok),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or_else(|| rustls::Error::General("no name to verify".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The TLS client side for the proxies: TLS 1.2+, the configured CAs (else the web PKI roots),
/// the gateway's certificate for mutual TLS; one client configuration per proxy, for its names.
#[derive(Clone)]
struct TlsClient {
    provider: Arc<rustls::crypto::CryptoProvider>,
    webpki: Arc<WebPkiServerVerifier>,
    cert: Arc<ClientCert>,
}

impl TlsClient {
    fn new(
        cfg: &TrunkSettings,
        thumbprint: &str,
        certs_dir: &std::path::Path,
        server_name: &str,
    ) -> Result<TlsClient, String> {
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
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("TLS verifier: {e}"))?;
        Ok(TlsClient {
            provider,
            webpki,
            cert: Arc::new(ClientCert(key)),
        })
    }

    /// A connector accepting a certificate for any of `names`, and the SNI (the first name).
    fn for_names(&self, names: &[String]) -> Result<(TlsConnector, ServerName<'static>), String> {
        let names: Vec<ServerName<'static>> = names
            .iter()
            .map(|n| ServerName::try_from(n.clone()).map_err(|e| format!("{n}: {e}")))
            .collect::<Result<_, _>>()?;
        let sni = names.first().cloned().ok_or("no TLS name")?;
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyOfNames {
                webpki: self.webpki.clone(),
                names,
            }))
            .with_client_cert_resolver(self.cert.clone());
        Ok((TlsConnector::from(Arc::new(config)), sni))
    }
}

/// The resolver: one name server (`--dns-server`), else the system's configuration.
fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let builder = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("the system's DNS configuration: {e}"))?,
    };
    builder.build().map_err(|e| format!("DNS resolver: {e}"))
}

/// One proxy to connect to, as configured or located (or the reason there is none).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Located {
    /// The configured entry it comes from.
    entry: String,
    /// Its host name or IP literal (an SRV target for a domain).
    host: String,
    /// Its port.
    port: u16,
    /// The names its certificate may carry (the first is the SNI).
    names: Vec<String>,
    /// Set when this stands for an entry that names no proxy (yet): why.
    problem: Option<String>,
}

impl Located {
    /// `host:port` (an IPv6 literal bracketed), or the entry when there is no proxy.
    fn target(&self) -> String {
        if self.problem.is_some() {
            self.entry.clone()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn host(entry: &str, host: &str, port: u16) -> Located {
        Located {
            entry: entry.to_owned(),
            host: host.to_owned(),
            port,
            names: vec![host.to_owned()],
            problem: None,
        }
    }

    fn problem(entry: &str, why: String) -> Located {
        Located {
            entry: entry.to_owned(),
            host: entry.to_owned(),
            port: 0,
            names: Vec::new(),
            problem: Some(why),
        }
    }
}

/// The A/AAAA addresses of `host` (no lookup for an IP literal), through the resolver when there
/// is one, else the system's.
async fn addresses(
    resolver: Option<&TokioResolver>,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match resolver {
        Some(r) => match r.lookup_ip(host).await {
            Ok(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(format!("resolving {host}: {e}")),
        },
        None => tokio::net::lookup_host((host, port))
            .await
            .map(Iterator::collect)
            .map_err(|e| format!("resolving {host}: {e}")),
    }
}

/// Locates the proxies of `domain` (RFC 3263 §4.1–4.2 for TLS): its `SIPS+D2T` NAPTR records'
/// SRV names, else `_sips._tcp.<domain>`; the SRV targets in RFC 2782 order; else the domain on
/// 5061. `Ok` holds `(host, port)` in order and when to ask again.
async fn locate(r: &TokioResolver, domain: &str) -> Result<(Vec<(String, u16)>, Instant), String> {
    let fqdn = format!("{domain}.");
    let mut until = Instant::now() + Duration::from_secs(24 * 3600);
    let mut failures = Vec::new();
    let mut names = Vec::new();
    match r.lookup(fqdn.as_str(), RecordType::NAPTR).await {
        Ok(found) => {
            let records = answers(&found, |data| match data {
                RData::NAPTR(n) => Some(Naptr {
                    order: n.order,
                    preference: n.preference,
                    flags: String::from_utf8_lossy(&n.flags).into_owned(),
                    service: String::from_utf8_lossy(&n.services).into_owned(),
                    replacement: n.replacement.to_ascii(),
                }),
                _ => None,
            });
            names = dns::sips_srv_names(&records);
            if !names.is_empty() {
                until = until.min(found.valid_until());
            }
        }
        Err(e) if e.is_no_records_found() => {}
        Err(e) => failures.push(format!("NAPTR: {e}")),
    }
    if names.is_empty() {
        names.push(format!("_sips._tcp.{domain}"));
    }
    // An SRV name whose only record has target `.`: the service is decidedly not offered there
    // (RFC 2782), so the domain itself is not tried either (RFC 3263 §4.2 falls back to A/AAAA
    // only when no SRV record exists).
    let mut not_offered = Vec::new();
    for name in &names {
        match r.lookup(format!("{name}."), RecordType::SRV).await {
            Ok(found) => {
                let records = answers(&found, |data| match data {
                    RData::SRV(s) => Some(Srv {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: s.target.to_ascii().trim_end_matches('.').to_owned(),
                    }),
                    _ => None,
                });
                let found_any = !records.is_empty();
                let ordered = dns::order_srv(records, |total| rand::random_range(0..=total));
                if found_any && ordered.is_empty() {
                    not_offered.push(name.as_str());
                }
                if !ordered.is_empty() {
                    let until = until.min(found.valid_until());
                    return Ok((
                        ordered.into_iter().map(|s| (s.target, s.port)).collect(),
                        until,
                    ));
                }
            }
            Err(e) if e.is_no_records_found() => {}
            Err(e) => failures.push(format!("SRV {name}: {e}")),
        }
    }
    if !not_offered.is_empty() {
        return Err(format!(
            "{domain}: DNS says the service is not offered (SRV target \".\" at {})",
            not_offered.join(", ")
        ));
    }
    match r.lookup_ip(fqdn.as_str()).await {
        Ok(ips) if ips.iter().next().is_some() => {
            Ok((vec![(domain.to_owned(), dns::SIPS_PORT)], ips.valid_until()))
        }
        Ok(_) => Err(no_records(domain, &failures)),
        Err(e) if e.is_no_records_found() => Err(no_records(domain, &failures)),
        Err(e) => {
            failures.push(format!("A/AAAA: {e}"));
            Err(format!("{domain}: DNS failed ({})", failures.join("; ")))
        }
    }
}

/// The answers of `found` that `read` takes (a CNAME on the way is passed over).
fn answers<T>(
    found: &hickory_resolver::lookup::Lookup,
    read: impl Fn(&RData) -> Option<T>,
) -> Vec<T> {
    found
        .answers()
        .iter()
        .filter_map(|r| read(&r.data))
        .collect()
}

fn no_records(domain: &str, failures: &[String]) -> String {
    let mut why = format!(
        "{domain}: DNS names no proxy (no NAPTR SIPS+D2T, SRV _sips._tcp, A or AAAA record)"
    );
    if !failures.is_empty() {
        why.push_str(&format!(" ({})", failures.join("; ")));
    }
    why
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Resolves the proxy's host, connects and completes the TLS handshake (the proxy's certificate
/// must carry one of its names).
async fn connect(
    at: Located,
    tls: TlsClient,
    resolver: Option<Arc<TokioResolver>>,
) -> Result<(TlsStream, SocketAddr, SocketAddr), String> {
    let (connector, sni) = tls.for_names(&at.names)?;
    let host = at.host.as_str();
    let attempt = async {
        let mut last = format!("{host} resolves to no address");
        for addr in addresses(resolver.as_deref(), host, at.port).await? {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let local = tcp.local_addr().map_err(|e| e.to_string())?;
                    let stream = connector
                        .connect(sni.clone(), tcp)
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

/// What connection and DNS tasks report.
enum LinkEvent {
    /// Connection `serial` failed (resolution, TCP, TLS).
    Failed(u64, String),
    /// Connection `serial` is registered with the core as flow `id`.
    Opened(u64, FlowId, SocketAddr),
    /// Connection `serial` closed.
    Closed(u64, FlowId),
    /// Entry `entry` of configuration `generation` was located.
    Located {
        generation: u64,
        entry: usize,
        result: Result<(Vec<(String, u16)>, Instant), String>,
    },
}

/// One proxy's connection; `serial` tells its task's reports apart after the list changed.
enum Link {
    Idle,
    Connecting {
        serial: u64,
        task: AbortHandle,
    },
    Open {
        serial: u64,
        id: FlowId,
        addr: SocketAddr,
        task: AbortHandle,
    },
}

impl Link {
    fn serial(&self) -> Option<u64> {
        match self {
            Link::Idle => None,
            Link::Connecting { serial, .. } | Link::Open { serial, .. } => Some(*serial),
        }
    }

    /// Stops the connection task; the core forgets an open flow.
    fn close(&mut self, ctx: &TransportCtx) {
        match std::mem::replace(self, Link::Idle) {
            Link::Idle => {}
            Link::Connecting { task, .. } => task.abort(),
            Link::Open { id, task, .. } => {
                task.abort();
                let _ = ctx.inbound.try_send(Inbound::FlowClosed { id });
            }
        }
    }
}

/// One proxy of the trunk's list (parallel to [`Trunk::proxies`]).
struct Slot {
    at: Located,
    link: Link,
    /// Why it went down last.
    error: Option<String>,
}

/// One configured entry and the proxies it stands for now.
struct EntryState {
    text: String,
    /// `Some` for a domain: located by DNS.
    domain: Option<String>,
    proxies: Vec<Located>,
    /// When to locate the domain again.
    refresh: Option<Instant>,
    resolving: bool,
}

struct Driver {
    parts: DriverParts,
    cfg: TrunkSettings,
    thumbprint: String,
    /// Bumped by every new configuration and every new proxy list (answers carry it).
    generation: u64,
    /// Bumped by every new configuration (DNS results carry it).
    config_generation: u64,
    serial: u64,
    trunk: Option<Trunk>,
    tls: Option<TlsClient>,
    resolver: Option<Arc<TokioResolver>>,
    entries: Vec<EntryState>,
    slots: Vec<Slot>,
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
    let resolver = match resolver(parts.dns_server) {
        Ok(r) => Some(Arc::new(r)),
        Err(e) => {
            tracing::error!("no DNS resolver for the Teams trunk (domains cannot be located): {e}");
            None
        }
    };
    let mut settings = parts.settings.clone();
    let mut d = Driver {
        parts,
        cfg: TrunkSettings::default(),
        thumbprint: String::new(),
        generation: 0,
        config_generation: 0,
        serial: 0,
        trunk: None,
        tls: None,
        resolver,
        entries: Vec::new(),
        slots: Vec::new(),
        events,
        view,
    };
    let first = settings.borrow_and_update().clone();
    d.configure(&first);
    loop {
        let refresh = d.entries.iter().filter_map(|e| e.refresh).min();
        let wake = d.trunk.as_ref().and_then(Trunk::poll_timeout);
        let wake = match (wake, refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
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
    /// connection and starts over with the new proxy list (domains are located anew).
    fn configure(&mut self, s: &Settings) {
        if s.trunk == self.cfg && s.certificate_thumbprint == self.thumbprint && self.generation > 0
        {
            return;
        }
        for slot in &mut self.slots {
            slot.link.close(&self.parts.ctx);
        }
        self.slots.clear();
        self.entries.clear();
        self.generation += 1;
        self.config_generation += 1;
        self.cfg = s.trunk.clone();
        self.thumbprint = s.certificate_thumbprint.clone();
        self.trunk = None;
        self.tls = None;
        if self.cfg.fqdn.is_empty() || self.cfg.proxies.is_empty() {
            tracing::info!("no Teams trunk configured (Data.SipConfig.SbcFqdn)");
            self.publish();
            return;
        }
        match TlsClient::new(
            &self.cfg,
            &self.thumbprint,
            &self.parts.certs_dir,
            &self.parts.server_name,
        ) {
            Ok(c) => self.tls = Some(c),
            Err(e) => tracing::error!("Teams trunk not started: {e}"),
        }
        let interval = Duration::from_secs(u64::from(self.cfg.options_interval.max(1)));
        let now = Instant::now();
        self.trunk = Some(Trunk::new(&self.cfg.fqdn, &[], interval, now));
        self.entries = self
            .cfg
            .proxies
            .iter()
            .map(|text| {
                let (domain, proxies) = match Entry::parse(text) {
                    Some(Entry::Host { host, port }) => {
                        (None, vec![Located::host(text, &host, port)])
                    }
                    Some(Entry::Domain(d)) => (
                        Some(d),
                        vec![Located::problem(text, "locating its proxies by DNS".into())],
                    ),
                    None => (
                        None,
                        vec![Located::problem(text, format!("`{text}` is not a proxy"))],
                    ),
                };
                EntryState {
                    text: text.clone(),
                    refresh: domain.as_ref().map(|_| now),
                    domain,
                    proxies,
                    resolving: false,
                }
            })
            .collect();
        self.relist();
        self.locate_due(now);
        tracing::info!(fqdn = %self.cfg.fqdn, proxies = ?self.cfg.proxies, "Teams trunk configured");
        self.publish();
    }

    /// Starts locating the domains whose time has come.
    fn locate_due(&mut self, now: Instant) {
        for (i, e) in self.entries.iter_mut().enumerate() {
            let (Some(domain), Some(at)) = (&e.domain, e.refresh) else {
                continue;
            };
            if e.resolving || at > now {
                continue;
            }
            e.resolving = true;
            e.refresh = None;
            let events = self.events.clone();
            let generation = self.config_generation;
            let resolver = self.resolver.clone();
            let domain = domain.clone();
            tokio::spawn(async move {
                let result = match resolver {
                    None => Err(format!("{domain}: no DNS resolver")),
                    Some(r) => tokio::time::timeout(LOCATE_TIMEOUT, locate(&r, &domain))
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!(
                                "{domain}: DNS gave no answer within {}s",
                                LOCATE_TIMEOUT.as_secs()
                            ))
                        }),
                };
                let _ = events
                    .send(LinkEvent::Located {
                        generation,
                        entry: i,
                        result,
                    })
                    .await;
            });
        }
    }

    /// A domain was located: its proxies take its place in the list (an unchanged set keeps its
    /// order; a failure keeps proxies found before).
    fn on_located(&mut self, i: usize, result: Result<(Vec<(String, u16)>, Instant), String>) {
        let now = Instant::now();
        let Some(e) = self.entries.get_mut(i) else {
            return;
        };
        e.resolving = false;
        let domain = e.domain.clone().unwrap_or_default();
        match result {
            Ok((found, until)) => {
                e.refresh = Some(until.max(now + MIN_REFRESH));
                let located: Vec<Located> = found
                    .iter()
                    .map(|(host, port)| Located {
                        names: dns::tls_names(&domain, host),
                        ..Located::host(&e.text, host, *port)
                    })
                    .collect();
                let key = |l: &[Located]| {
                    let mut k: Vec<String> = l.iter().map(Located::target).collect();
                    k.sort();
                    k
                };
                let same = e.proxies.iter().all(|p| p.problem.is_none())
                    && key(&e.proxies) == key(&located);
                if same {
                    return;
                }
                tracing::info!(entry = %e.text, proxies = ?found, "Teams trunk proxies located by DNS");
                e.proxies = located;
            }
            Err(why) => {
                e.refresh = Some(now + RETRY_UNRESOLVED);
                if e.proxies.iter().all(|p| p.problem.is_none()) {
                    tracing::warn!(entry = %e.text, "locating the Teams trunk proxies again failed, keeping the ones found before: {why}");
                    return;
                }
                tracing::error!(entry = %e.text, "Teams trunk proxy not found: {why}");
                e.proxies = vec![Located::problem(&e.text, why)];
            }
        }
        self.relist();
    }

    /// Rebuilds the proxy list from the entries: a proxy that stays keeps its connection and
    /// keep-alive state; one that went is closed.
    fn relist(&mut self) {
        let Some(trunk) = &mut self.trunk else { return };
        let now = Instant::now();
        let mut old: Vec<Option<Slot>> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(Some)
            .collect();
        let mut order = Vec::new();
        for at in self.entries.iter().flat_map(|e| e.proxies.iter()) {
            let kept = old
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.at == *at));
            let slot = kept.and_then(|j| old[j].take());
            order.push((at.target(), kept));
            self.slots.push(slot.unwrap_or_else(|| Slot {
                at: at.clone(),
                link: Link::Idle,
                error: at.problem.clone(),
            }));
        }
        for slot in old.iter_mut().flatten() {
            slot.link.close(&self.parts.ctx);
        }
        trunk.reshape(&order, now);
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.at.problem.is_some() {
                trunk.unreachable(i);
            }
        }
        // Indices changed: answers to keep-alives sent before are dropped.
        self.generation += 1;
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        self.locate_due(now);
        let Some(trunk) = &mut self.trunk else { return };
        for i in trunk.due(now) {
            let Some(slot) = self.slots.get_mut(i) else {
                continue;
            };
            match &slot.link {
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
                Link::Connecting { .. } => trunk.deferred(i, now),
                Link::Idle => {
                    trunk.deferred(i, now);
                    if slot.at.problem.is_some() {
                        continue;
                    }
                    let Some(tls) = self.tls.clone() else {
                        slot.error = Some("no TLS client (see the log at configuration)".into());
                        trunk.unreachable(i);
                        continue;
                    };
                    self.serial += 1;
                    let task = tokio::spawn(open(
                        self.parts.ctx.clone(),
                        self.events.clone(),
                        self.serial,
                        slot.at.clone(),
                        tls,
                        self.resolver.clone(),
                    ));
                    slot.link = Link::Connecting {
                        serial: self.serial,
                        task: task.abort_handle(),
                    };
                }
            }
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        let serial = match ev {
            LinkEvent::Located {
                generation,
                entry,
                result,
            } => {
                if generation == self.config_generation {
                    self.on_located(entry, result);
                }
                return;
            }
            LinkEvent::Failed(s, _) | LinkEvent::Opened(s, ..) | LinkEvent::Closed(s, _) => s,
        };
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.link.serial() == Some(serial))
        else {
            return;
        };
        let Some(trunk) = &mut self.trunk else { return };
        let slot = &mut self.slots[i];
        let target = slot.at.target();
        match ev {
            LinkEvent::Failed(_, why) => {
                tracing::warn!(proxy = %target, "Teams trunk proxy unreachable: {why}");
                slot.link = Link::Idle;
                slot.error = Some(why);
                trunk.unreachable(i);
            }
            LinkEvent::Opened(_, id, addr) => {
                let Link::Connecting { task, .. } = &slot.link else {
                    return;
                };
                tracing::info!(proxy = %target, %addr, "Teams trunk proxy connected");
                slot.link = Link::Open {
                    serial,
                    id,
                    addr,
                    task: task.clone(),
                };
                trunk.connected(i, Instant::now());
            }
            LinkEvent::Closed(_, id) => {
                if matches!(slot.link, Link::Open { id: open, .. } if open == id) {
                    tracing::warn!(proxy = %target, "Teams trunk proxy closed the connection");
                    slot.link = Link::Idle;
                    slot.error = Some("the connection closed".into());
                    trunk.unreachable(i);
                }
            }
            LinkEvent::Located { .. } => {}
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
                if let Some(slot) = self.slots.get_mut(proxy) {
                    slot.error = None;
                    if !was {
                        tracing::info!(proxy = %slot.at.target(), status, "Teams trunk proxy up");
                    }
                }
            }
            CoreAnswer::Timeout { generation, proxy } if generation == self.generation => {
                if let Some(slot) = self.slots.get_mut(proxy) {
                    tracing::warn!(proxy = %slot.at.target(), "Teams trunk proxy did not answer OPTIONS");
                    slot.error = Some("no answer to OPTIONS".into());
                }
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
                    .zip(&self.slots)
                    .map(|(p, s)| ProxyView {
                        target: p.target.clone(),
                        entry: s.at.entry.clone(),
                        up: p.up,
                        connected: matches!(s.link, Link::Open { .. }),
                        last_status: p.last_status,
                        rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                        last_options_at: p.last_options.and_then(|t| {
                            let ago = chrono::Duration::from_std(now.saturating_duration_since(t));
                            ago.ok().map(|a| wall - a)
                        }),
                        error: if p.up { None } else { s.error.clone() },
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
                    .zip(&self.slots)
                    .map(|(p, s)| super::Path {
                        host: s.at.host.clone(),
                        flow: match s.link {
                            Link::Open { id, addr, .. } => Some(Remote {
                                transport: Transport::Tls,
                                addr,
                                flow: Some(id),
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

/// Connects to the proxy `at` and serves the connection as a SIP flow until it closes,
/// reporting each step to the driver under `serial`.
async fn open(
    ctx: TransportCtx,
    events: mpsc::Sender<LinkEvent>,
    serial: u64,
    at: Located,
    tls: TlsClient,
    resolver: Option<Arc<TokioResolver>>,
) {
    let (stream, peer, local) = match connect(at, tls, resolver).await {
        Ok(x) => x,
        Err(e) => {
            let _ = events.send(LinkEvent::Failed(serial, e)).await;
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
            let _ = events.send(LinkEvent::Opened(serial, id, peer)).await;
        }
    };
    tokio::join!(serve, notify);
    let _ = events.send(LinkEvent::Closed(serial, id)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_located_proxy_is_named_by_host_and_port_and_a_problem_by_its_entry() {
        assert_eq!(
            Located::host("x", "sip.pstnhub.microsoft.com", 5061).target(),
            "sip.pstnhub.microsoft.com:5061"
        );
        assert_eq!(Located::host("x", "::1", 5061).target(), "[::1]:5061");
        assert_eq!(
            Located::problem("absent.test", "no records".into()).target(),
            "absent.test"
        );
    }
}
