//! The Direct Routing SIP face: three SIP proxies over TLS, like sip, sip2 and sip3.pstnhub.
//! microsoft.com, each on its own loopback port with a certificate from the emulator's own test
//! CA (generated at start with rcgen). Like Direct Routing, the proxies want mutual TLS: a client
//! must present a certificate the CA issued — the CA plays the public CA the real service
//! trusts, and issues the SBC's certificate for `--sip-fqdn` too. `GET /test/sip` hands out the
//! CA's PEM (for the gateway to trust) and the SBC's certificate and key (for the gateway to
//! present). A test stops or restarts a proxy with `POST /test/sip/{n}/stop|start` (n = 1..3);
//! a stopped proxy closes its listener and every open connection, as a dead proxy would.
//! `POST /test/sip/{n}/options` makes proxy n send an OPTIONS ping on each of its open
//! connections, as Direct Routing pings the SBC.
//!
//! It refuses what Direct Routing refuses: an OPTIONS or INVITE whose Contact does not hold the
//! gateway's FQDN (`--sip-fqdn`) gets 403. A good OPTIONS gets 200. Messages are shaped after
//! real DR traffic (upper-case header names, Microsoft's `Server`). Every message received is
//! recorded in the request log as `{"face":"sip","proxy":n,"method","contact","status",
//! "cseq","message"}`. Calls (an INVITE with the FQDN in Contact, and calls in) are in
//! [`crate::calls`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use csps_sip::headers::NameAddr;
use csps_sip::{Frame, Message, Method, Request, SipHeaders, frame, parse};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::Shared;

/// Proxies served, named as Microsoft's.
pub const NAMES: [&str; 3] = [
    "sip.pstnhub.microsoft.com",
    "sip2.pstnhub.microsoft.com",
    "sip3.pstnhub.microsoft.com",
];
/// The largest message accepted on a connection before it is closed.
const MAX_MESSAGE: usize = 64 * 1024;
/// What the emulator's proxies call themselves, after the real `Server` header.
pub const SERVER: &str = "Microsoft.PSTNHub.SIPProxy v.2024.2.6.5 i.EMULATOR.1 (teams-emulator)";

/// One proxy: its fixed address and, while it runs, the task that serves it and a way to write
/// on each of its open connections.
struct Proxy {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
    conns: Vec<mpsc::Sender<Vec<u8>>>,
}

/// The SIP face's state.
pub struct SipFace {
    /// The gateway FQDN that must appear in Contact.
    pub fqdn: String,
    /// The calls, both ways.
    pub calls: crate::calls::Calls,
    /// PEM of the test CA that issued the proxies' certificates.
    ca_pem: String,
    /// PEM of the SBC's certificate (SAN: the FQDN) and key, issued by the test CA.
    sbc_pem: String,
    /// SHA-1 thumbprint of the SBC's certificate (upper-case hex, as the gateway names it).
    sbc_thumbprint: String,
    acceptor: TlsAcceptor,
    proxies: Mutex<Vec<Proxy>>,
}

/// What [`certificates`] makes.
struct Certificates {
    ca_pem: String,
    sbc_pem: String,
    sbc_thumbprint: String,
    acceptor: TlsAcceptor,
}

/// Makes the CA, the proxies' certificate (SANs: the three names, `localhost`, 127.0.0.1) and
/// the SBC's (SAN: `fqdn`); the proxies require a client certificate from the CA.
fn certificates(fqdn: &str) -> Result<Certificates, String> {
    let err = |e: rcgen::Error| format!("test CA: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "teams-emulator test CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let mut sans: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
    sans.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
    let key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::new(sans).map_err(err)?;
    leaf.distinguished_name.push(DnType::CommonName, NAMES[0]);
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
    let sbc_key = KeyPair::generate().map_err(err)?;
    let mut sbc = CertificateParams::new(vec![fqdn.to_owned()]).map_err(err)?;
    sbc.distinguished_name.push(DnType::CommonName, fqdn);
    let sbc_cert = sbc.signed_by(&sbc_key, &ca_cert, &ca_key).map_err(err)?;
    let chain = vec![
        CertificateDer::from(cert.der().to_vec()),
        CertificateDer::from(ca_cert.der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_cert.der().to_vec()))
        .map_err(|e| format!("test CA as a root: {e}"))?;
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .map_err(|e| format!("proxy certificate: {e}"))?;
    Ok(Certificates {
        ca_pem: ca_cert.pem(),
        sbc_pem: format!(
            "{}{}{}",
            sbc_cert.pem(),
            ca_cert.pem(),
            sbc_key.serialize_pem()
        ),
        sbc_thumbprint: ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            sbc_cert.der(),
        )
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}

impl SipFace {
    /// Binds the three proxies on loopback ports (`base` port 0: any free ones) without serving yet.
    pub async fn bind(
        fqdn: String,
        base: SocketAddr,
    ) -> Result<(SipFace, Vec<TcpListener>), String> {
        let Certificates {
            ca_pem,
            sbc_pem,
            sbc_thumbprint,
            acceptor,
        } = certificates(&fqdn)?;
        let mut listeners = Vec::new();
        let mut proxies = Vec::new();
        for i in 0..NAMES.len() {
            let mut at = base;
            if base.port() != 0 {
                at.set_port(base.port() + i as u16);
            }
            let l = TcpListener::bind(at)
                .await
                .map_err(|e| format!("SIP proxy {}: cannot listen on {at}: {e}", i + 1))?;
            let addr = l
                .local_addr()
                .map_err(|e| format!("SIP proxy address: {e}"))?;
            proxies.push(Proxy {
                addr,
                task: None,
                conns: Vec::new(),
            });
            listeners.push(l);
        }
        let face = SipFace {
            fqdn,
            calls: crate::calls::Calls::default(),
            ca_pem,
            sbc_pem,
            sbc_thumbprint,
            acceptor,
            proxies: Mutex::new(proxies),
        };
        Ok((face, listeners))
    }

    /// The proxies' addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.lock().iter().map(|p| p.addr).collect()
    }

    /// An open connection of proxy `i` (0-based), the newest.
    pub fn connection(&self, i: usize) -> Option<mpsc::Sender<Vec<u8>>> {
        let mut proxies = self.lock();
        let p = proxies.get_mut(i)?;
        p.conns.retain(|c| !c.is_closed());
        p.conns.last().cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Proxy>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts serving proxy `i` (0-based) on `listener`.
pub fn serve(state: &Shared, i: usize, listener: TcpListener) {
    let Some(face) = &state.sip else { return };
    let task = tokio::spawn(accept_loop(state.clone(), i, listener));
    if let Some(p) = face.lock().get_mut(i)
        && let Some(old) = p.task.replace(task)
    {
        old.abort();
    }
}

async fn accept_loop(state: Shared, i: usize, listener: TcpListener) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let Some(face) = &state.sip else { return };
        let acceptor = face.acceptor.clone();
        let state = state.clone();
        // Connections live in this task's JoinSet: aborting the proxy drops them all.
        conns.spawn(async move {
            match acceptor.accept(tcp).await {
                Ok(tls) => connection(state, i, tls).await,
                Err(e) => state.log.push(json!({
                    "face": "sip", "proxy": i + 1, "peer": peer.to_string(),
                    "tls_error": e.to_string(),
                })),
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn connection<S>(state: Shared, i: usize, mut tls: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(face) = &state.sip else { return };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    if let Some(p) = face.lock().get_mut(i) {
        p.conns.retain(|c| !c.is_closed());
        p.conns.push(tx.clone());
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match frame(&buf) {
            Frame::Message(n) => {
                let bytes: Vec<u8> = buf.drain(..n).collect();
                if let Some(answer) = handle(&state, i, &bytes, &tx).await
                    && tls.write_all(&answer).await.is_err()
                {
                    return;
                }
                continue;
            }
            Frame::KeepAlive(n) => {
                buf.drain(..n);
                // A ping (CRLFCRLF) gets its pong (RFC 5626 §4.4.1).
                if n == 4 && tls.write_all(b"\r\n").await.is_err() {
                    return;
                }
                continue;
            }
            Frame::Incomplete if buf.len() < MAX_MESSAGE => {}
            Frame::Incomplete | Frame::Invalid(_) => return,
        }
        tokio::select! {
            read = tls.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
            Some(out) = rx.recv() => {
                if tls.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// True when the request's Contact host is the gateway's FQDN.
fn contact_has_fqdn(req: &Request, fqdn: &str) -> bool {
    req.headers
        .get("Contact")
        .and_then(|c| NameAddr::parse(c).ok())
        .is_some_and(|na| na.uri.host.eq_ignore_ascii_case(fqdn))
}

/// Records one message and returns the answer to send, if any.
async fn handle(
    state: &Shared,
    i: usize,
    bytes: &[u8],
    conn: &mpsc::Sender<Vec<u8>>,
) -> Option<Vec<u8>> {
    let face = state.sip.as_ref()?;
    let text = String::from_utf8_lossy(bytes).into_owned();
    let mut entry = json!({"face": "sip", "proxy": i + 1, "message": text});
    let answer = match parse(bytes).map(|p| p.message) {
        Ok(Message::Request(req)) => {
            entry["method"] = Value::from(req.method.as_str());
            entry["contact"] = req.headers.get("Contact").map_or(Value::Null, Value::from);
            entry["call_id"] = req.call_id().map_or(Value::Null, Value::from);
            if let Some(answer) = crate::calls::in_dialog(state, i, &req) {
                entry["status"] = answer
                    .as_deref()
                    .and_then(status_of)
                    .map_or(Value::Null, Value::from);
                state.log.push(entry);
                return answer;
            }
            let (status, reason) = match req.method {
                Method::Options | Method::Invite if !contact_has_fqdn(&req, &face.fqdn) => {
                    (403, "Forbidden")
                }
                Method::Invite => {
                    let answer = crate::calls::invite(state, i, &req, conn).await;
                    entry["status"] = answer_status(&answer).map_or(Value::Null, Value::from);
                    state.log.push(entry);
                    return Some(answer);
                }
                Method::Options => (200, "OK"),
                Method::Ack => {
                    state.log.push(entry);
                    return None;
                }
                _ => (501, "Not Implemented"),
            };
            entry["status"] = Value::from(status);
            Some(answer(&req, status, reason, i))
        }
        Ok(Message::Response(resp)) => {
            entry["status"] = Value::from(resp.status);
            entry["cseq"] = resp.headers.get("CSeq").map_or(Value::Null, Value::from);
            entry["contact"] = resp.headers.get("Contact").map_or(Value::Null, Value::from);
            entry["call_id"] = resp.call_id().map_or(Value::Null, Value::from);
            crate::calls::on_response(state, &resp).await;
            None
        }
        Err(e) => {
            entry["error"] = Value::from(e.to_string());
            None
        }
    };
    state.log.push(entry);
    answer
}

/// The status of the first response in `bytes`.
fn status_of(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|b| *b == b'\r').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The status of the last response in `bytes` (several answers written at once).
fn answer_status(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    let at = text.rfind("SIP/2.0 ")?;
    status_of(&bytes[at..])
}

/// A response in Direct Routing's shape: upper-case header names, Microsoft's Server and Allow.
fn answer(req: &Request, status: u16, reason: &str, i: usize) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    let tag = format!("emu{}{}", i + 1, req.call_id().map_or(0, str::len));
    for (name, upper) in [
        ("From", "FROM"),
        ("To", "TO"),
        ("CSeq", "CSEQ"),
        ("Call-ID", "CALL-ID"),
    ] {
        if let Some(v) = req.headers.get(name) {
            if name == "To" && !v.contains(";tag=") {
                out.push_str(&format!("{upper}: {v};tag={tag}\r\n"));
            } else {
                out.push_str(&format!("{upper}: {v}\r\n"));
            }
        }
    }
    for v in req.headers.get_all("Via") {
        out.push_str(&format!("VIA: {v}\r\n"));
    }
    if status == 403 {
        out.push_str("WARNING: 399 pstnhub \"Contact does not hold the SBC FQDN\"\r\n");
    }
    out.push_str(&format!(
        "CONTENT-LENGTH: 0\r\nALLOW: INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY\r\nSERVER: {SERVER}\r\n\r\n"
    ));
    out.into_bytes()
}

/// `GET /test/sip`: the CA's PEM, the FQDN required in Contact, and each proxy's address and state.
pub async fn status(State(s): State<Shared>) -> (StatusCode, Json<Value>) {
    let Some(face) = &s.sip else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no SIP face (--sip-fqdn)"})),
        );
    };
    let proxies: Vec<Value> = face
        .lock()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({"n": i + 1, "name": NAMES[i], "addr": p.addr.to_string(),
                   "up": p.task.as_ref().is_some_and(|t| !t.is_finished())})
        })
        .collect();
    (
        StatusCode::OK,
        Json(
            json!({"fqdn": face.fqdn, "ca_pem": face.ca_pem, "sbc_pem": face.sbc_pem,
                    "sbc_thumbprint": face.sbc_thumbprint,
                    "proxies": proxies}),
        ),
    )
}

/// An OPTIONS ping from proxy `i` to the SBC, as Direct Routing sends them (upper-case header
/// names, the proxy's FQDN in Via and Contact).
fn options_ping(fqdn: &str, i: usize, n: u64) -> Vec<u8> {
    let proxy = NAMES[i];
    format!(
        "OPTIONS sip:{fqdn}:5061;transport=tls SIP/2.0\r\n\
         VIA: SIP/2.0/TLS {proxy}:5061;branch=z9hG4bKemu{i}{n}\r\n\
         MAX-FORWARDS: 70\r\n\
         FROM: <sip:{proxy}:5061>;tag=emuping{i}{n}\r\n\
         TO: <sip:{fqdn}>\r\n\
         CALL-ID: emu-options-{i}-{n}\r\n\
         CSEQ: {n} OPTIONS\r\n\
         CONTACT: <sip:{proxy}:5061;transport=tls>\r\n\
         USER-AGENT: {SERVER}\r\n\
         CONTENT-LENGTH: 0\r\n\r\n"
    )
    .into_bytes()
}

/// `POST /test/sip/{n}/options`: proxy n sends an OPTIONS on each open connection; the answers
/// land in the request log. Answers how many were sent.
pub async fn ping(State(s): State<Shared>, Path(n): Path<usize>) -> (StatusCode, Json<Value>) {
    let Some(face) = &s.sip else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "no SIP face"})));
    };
    let i = n.wrapping_sub(1);
    let conns = match face.lock().get_mut(i) {
        Some(p) => {
            p.conns.retain(|c| !c.is_closed());
            p.conns.clone()
        }
        None => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "no such proxy"})),
            );
        }
    };
    let seq = PINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for c in conns {
        if c.send(options_ping(&face.fqdn, i, seq)).await.is_ok() {
            sent += 1;
        }
    }
    (StatusCode::OK, Json(json!({"sent": sent})))
}

/// Numbers the emulator's OPTIONS pings.
static PINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// `POST /test/sip/{n}/stop`: closes proxy n's listener and connections.
pub async fn stop(State(s): State<Shared>, Path(n): Path<usize>) -> StatusCode {
    let Some(face) = &s.sip else {
        return StatusCode::NOT_FOUND;
    };
    match face.lock().get_mut(n.wrapping_sub(1)) {
        Some(p) => {
            if let Some(t) = p.task.take() {
                t.abort();
            }
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

/// `POST /test/sip/{n}/start`: listens again on proxy n's address.
pub async fn start(State(s): State<Shared>, Path(n): Path<usize>) -> (StatusCode, String) {
    let Some(face) = &s.sip else {
        return (StatusCode::NOT_FOUND, "no SIP face".into());
    };
    let Some(addr) = face.addrs().get(n.wrapping_sub(1)).copied() else {
        return (StatusCode::NOT_FOUND, format!("no proxy {n}"));
    };
    if face.lock()[n - 1]
        .task
        .as_ref()
        .is_some_and(|t| !t.is_finished())
    {
        return (StatusCode::NO_CONTENT, String::new());
    }
    match TcpListener::bind(addr).await {
        Ok(l) => {
            serve(&s, n - 1, l);
            (StatusCode::NO_CONTENT, String::new())
        }
        Err(e) => (
            StatusCode::CONFLICT,
            format!("cannot listen on {addr}: {e}"),
        ),
    }
}
