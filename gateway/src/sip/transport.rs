//! The socket side of SIP: UDP sockets and TCP/TLS connections. Receive tasks read bytes, frame
//! and parse them (in parallel with the core), stamp `received`/`rport` (RFC 3261 §18.2.1,
//! RFC 3581), answer what cannot be parsed statelessly, and pass messages to the core task.
//! Connections announce themselves to the core, which sends on them through a bounded queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use csps_sip::headers::Via;
use csps_sip::{FlowId, Frame, Message, ParseError, Remote, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;

/// Flow ids at or above this mark a UDP socket (its index in the socket list) rather than a connection.
pub const UDP_FLOW_BASE: u64 = 1 << 62;

/// What receive tasks tell the core task.
#[derive(Debug)]
pub enum Inbound {
    /// A parsed message.
    Message {
        /// Where it came from.
        from: Remote,
        /// The local address it arrived on.
        local: SocketAddr,
        /// The message, with `received`/`rport` already set on requests (boxed: the queue holds
        /// thousands, and flow events are small).
        msg: Box<Message>,
    },
    /// A stream connection was accepted.
    FlowOpened {
        /// Its id.
        id: FlowId,
        /// The peer.
        remote: Remote,
        /// Our end of it.
        local: SocketAddr,
        /// Sends bytes on it.
        tx: mpsc::Sender<Bytes>,
    },
    /// A stream connection closed.
    FlowClosed {
        /// Its id.
        id: FlowId,
    },
}

/// Shared by every receive task.
#[derive(Clone)]
pub struct TransportCtx {
    /// Where parsed messages go.
    pub inbound: mpsc::Sender<Inbound>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Host name for Warning headers.
    pub server_name: Arc<str>,
    /// Becomes true when the server drains: receive tasks then refuse new requests with 503.
    pub draining: watch::Receiver<bool>,
    /// Source of connection ids.
    pub next_flow: Arc<AtomicU64>,
}

/// Sets `received` and `rport` on the top Via of a request as RFC 3261 §18.2.1 and RFC 3581 say.
pub fn stamp_via(msg: &mut Message, from: SocketAddr) {
    let Message::Request(req) = msg else { return };
    let Some(first) = req.headers.get("Via") else {
        return;
    };
    // The first line may hold several comma-separated Vias; only the first value is stamped.
    let list: Vec<&str> = csps_sip::message::split_list(first).collect();
    let Some((top, rest)) = list.split_first() else {
        return;
    };
    let Ok(mut via) = Via::parse(top) else { return };
    let ip = from.ip().to_string();
    let host = via
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let mut changed = false;
    if host != ip {
        via.set_param("received", Some(ip.clone()));
        changed = true;
    }
    if via.param("rport").is_some() {
        via.set_param("rport", Some(from.port().to_string()));
        if host == ip {
            via.set_param("received", Some(ip));
        }
        changed = true;
    }
    if changed && rest.is_empty() && req.headers.count("Via") == 1 {
        // The common case, one Via line holding one value: replaced in place.
        req.headers.set("Via", via.to_string());
    } else if changed {
        let mut value = via.to_string();
        for r in rest {
            value.push_str(", ");
            value.push_str(r);
        }
        // Replace only the first Via line, keeping the others in place.
        let mut headers = csps_sip::Headers::new();
        let mut done = false;
        for h in req.headers.iter() {
            if !done && h.name == "Via" {
                headers.push("Via", value.clone());
                done = true;
            } else {
                headers.push(&h.name, h.value.clone());
            }
        }
        req.headers = headers;
    }
}

/// The checks a UAS makes before dispatching (`validate::check_request`: mandatory headers,
/// Via, From/To, CSeq, Require against what is implemented), made here in the receive task so
/// the core task — the gateway's one serial stage — does not spend its time on them: every
/// request reaching the core passed them. Calls implement session timers and reliable
/// provisionals; registration no option.
pub fn precheck(req: &csps_sip::Request) -> Result<(), csps_sip::Rejection> {
    let supported = if req.method == csps_sip::Method::Register {
        &[][..]
    } else {
        crate::calls::b2bua::SUPPORTED_OPTIONS
    };
    csps_sip::validate::check_request(req, supported)
}

/// Gives a stateless final answer the To tag a UAS adds (RFC 3261 §8.2.6.2).
fn add_to_tag(resp: &mut csps_sip::Response) {
    if let Some(to) = resp.headers.get("To")
        && let Ok(mut na) = csps_sip::headers::NameAddr::parse(to)
        && na.tag().is_none()
    {
        na.set_param("tag", Some(format!("{:016x}", rand::random::<u64>())));
        resp.headers.set("To", na.to_string());
    }
}

/// Builds the stateless answer to a request that failed to parse, when it can be answered.
pub fn reject_unparsable(err: &ParseError, server_name: &str) -> Option<Vec<u8>> {
    let req = err.request.as_deref()?;
    refusal(req, err.status, &err.reason, server_name)
}

/// A stateless answer with `status` and a Warning saying why, in wire form; none for an ACK,
/// which is never answered (RFC 3261 §17.2.1: a UA that cannot use an ACK drops it).
fn refusal(req: &csps_sip::Request, status: u16, why: &str, server_name: &str) -> Option<Vec<u8>> {
    if req.method == csps_sip::Method::Ack {
        return None;
    }
    let mut resp = req.response(status, csps_sip::message::reason_phrase(status));
    resp.headers.push(
        "Warning",
        csps_sip::validate::warning_value(server_name, why),
    );
    let mut out = Vec::with_capacity(512);
    resp.encode(&mut out);
    Some(out)
}

/// What became of one message from the wire.
pub(super) enum Ingested {
    /// Parsed and checked: for the core (boxed, as the core's queue holds it).
    Message(Box<Message>),
    /// A request answered (or an ACK dropped) here: malformed, or refused while draining.
    Answered,
    /// Nothing usable: counted, answered where it could be.
    Garbage,
}

/// Parses bytes from one remote, counting and answering failures. Says what to pass on.
pub(super) fn ingest(
    ctx: &TransportCtx,
    bytes: &[u8],
    from: Remote,
    reply: &mut dyn FnMut(Vec<u8>),
) -> Ingested {
    match csps_sip::parse(bytes) {
        Ok(parsed) => {
            let mut msg = parsed.message;
            if let Message::Request(req) = &msg
                && *ctx.draining.borrow()
                && req.method != csps_sip::Method::Ack
            {
                let mut resp = req.response(503, "Service Unavailable");
                resp.headers.push("Retry-After", "30");
                let mut out = Vec::with_capacity(256);
                resp.encode(&mut out);
                ctx.metrics.response_sent(503);
                reply(out);
                return Ingested::Answered;
            }
            stamp_via(&mut msg, from.addr);
            if let Message::Request(req) = &msg
                && let Err(rej) = precheck(req)
            {
                ctx.metrics.request_received(req.method.as_str());
                // RFC 3261 §17.2.1: an ACK is never answered; one that cannot be used is dropped.
                if req.method == csps_sip::Method::Ack {
                    tracing::debug!(from = %from.addr, "dropped a malformed ACK: {}", rej.warning);
                    ctx.metrics.drop_msg("malformed_ack");
                    return Ingested::Answered;
                }
                tracing::debug!(from = %from.addr, status = rej.status, "request refused: {}", rej.warning);
                let mut resp = rej.to_response_from(req, &ctx.server_name);
                add_to_tag(&mut resp);
                let mut out = Vec::with_capacity(512);
                resp.encode(&mut out);
                ctx.metrics.response_sent(rej.status);
                reply(out);
                return Ingested::Answered;
            }
            Ingested::Message(Box::new(msg))
        }
        Err(err) => {
            match reject_unparsable(&err, &ctx.server_name) {
                Some(out) => {
                    tracing::debug!(from = %from.addr, reason = %err.reason, "answered an unparsable request");
                    ctx.metrics.response_sent(err.status);
                    reply(out);
                }
                None => {
                    tracing::debug!(from = %from.addr, reason = %err.reason, "dropped an unparsable message");
                    ctx.metrics.drop_msg("unparsable");
                }
            }
            Ingested::Garbage
        }
    }
}

/// Datagrams a UDP receive task reads in a row before it yields to the scheduler.
const UDP_BURST: u32 = 64;

/// Reads one UDP socket until the process ends.
pub async fn run_udp(ctx: TransportCtx, socket: Arc<UdpSocket>, index: u64) {
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("UDP socket has no local address: {e}");
            return;
        }
    };
    let flow = Some(FlowId(UDP_FLOW_BASE + index));
    let mut buf = vec![0u8; 65_536];
    // Datagrams read since the last yield: the socket is drained without a trip through the
    // reactor per datagram, but the task still yields now and then so it cannot starve others.
    let mut burst = 0u32;
    loop {
        let (n, from) = match socket.try_recv_from(&mut buf) {
            Ok(x) => {
                burst += 1;
                if burst >= UDP_BURST {
                    burst = 0;
                    tokio::task::yield_now().await;
                }
                x
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                burst = 0;
                if let Err(e) = socket.readable().await {
                    tracing::debug!("UDP socket {local} not readable: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
            Err(e) => {
                // ICMP errors surface here on some systems; they are not fatal for the socket.
                tracing::debug!("UDP receive on {local}: {e}");
                continue;
            }
        };
        let data = &buf[..n];
        if data.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
            continue; // keep-alive datagram
        }
        if n > csps_sip::message::MAX_MESSAGE_SIZE {
            ctx.metrics.drop_msg("too_large");
            continue;
        }
        let remote = Remote {
            transport: Transport::Udp,
            addr: from,
            flow,
        };
        let sock = socket.clone();
        let msg = ingest(&ctx, data, remote, &mut |out| {
            let _ = sock.try_send_to(&out, from);
        });
        if let Ingested::Message(msg) = msg
            && ctx
                .inbound
                .try_send(Inbound::Message {
                    from: remote,
                    local,
                    msg,
                })
                .is_err()
        {
            ctx.metrics.drop_msg("core_busy");
        }
    }
}

/// The next accepted TCP connection (no Nagle: SIP messages go out whole), its peer and our
/// end; failures (out of file descriptors and the like) are logged and waited out, not spun on.
pub(super) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(peer);
                return (stream, peer, local);
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts TCP connections (plain, or TLS when `tls` is set) until the process ends.
pub async fn run_tcp_listener(
    ctx: TransportCtx,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, peer, local) = accept(&listener).await;
        let ctx = ctx.clone();
        match &tls {
            None => {
                tokio::spawn(run_connection(ctx, stream, peer, local, Transport::Tcp));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => run_connection(ctx, s, peer, local, Transport::Tls).await,
                        Ok(Err(e)) => tracing::info!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// How long a partial message may sit without progress before the connection is closed (RFC 4475 clerr).
const PARTIAL_TIMEOUT: Duration = Duration::from_secs(32);
/// Consecutive unparsable messages after which a connection is closed.
pub(super) const GARBAGE_LIMIT: u32 = 3;

/// Serves one accepted stream connection under a new flow id.
pub async fn run_connection<S>(
    ctx: TransportCtx,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    transport: Transport,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let id = ctx.new_flow();
    serve_connection(ctx, id, stream, peer, local, transport, None).await
}

impl TransportCtx {
    /// A flow id no connection used before.
    pub fn new_flow(&self) -> FlowId {
        FlowId(self.next_flow.fetch_add(1, Ordering::Relaxed))
    }
}

/// Serves one stream connection as flow `id` (the trunk driver opens its own and needs the id to
/// send on it, and `opened` to learn when the core knows it): frames messages, answers CRLF
/// pings, writes what the core sends.
pub async fn serve_connection<S>(
    ctx: TransportCtx,
    id: FlowId,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    transport: Transport,
    opened: Option<tokio::sync::oneshot::Sender<()>>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let remote = Remote {
        transport,
        addr: peer,
        flow: Some(id),
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    if ctx
        .inbound
        .send(Inbound::FlowOpened {
            id,
            remote,
            local,
            tx: tx.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    if let Some(o) = opened {
        let _ = o.send(());
    }
    ctx.metrics.connections.inc();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = BytesMut::with_capacity(8192);
    let mut garbage = 0u32;
    'read: loop {
        let read = if buf.is_empty() {
            rd.read_buf(&mut buf).await
        } else {
            match tokio::time::timeout(PARTIAL_TIMEOUT, rd.read_buf(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!(%peer, "closing a connection stuck in a partial message");
                    ctx.metrics.drop_msg("partial_timeout");
                    break;
                }
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match csps_sip::frame(&buf) {
                Frame::Incomplete => break,
                Frame::KeepAlive(n) => {
                    if n == 4 {
                        let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                    }
                    buf.advance(n);
                }
                Frame::Invalid(why) => {
                    tracing::debug!(%peer, "closing a connection that cannot be framed: {why}");
                    ctx.metrics.drop_msg("unframable");
                    // Answer what can be answered before closing (RFC 4475 ncl, mcl01).
                    if let Some(end) = find_head_end(&buf) {
                        let out = match csps_sip::parse(&buf[..end]) {
                            Err(e) => reject_unparsable(&e, &ctx.server_name),
                            Ok(p) => match p.message {
                                Message::Request(req) => refusal(&req, 400, why, &ctx.server_name),
                                Message::Response(_) => None,
                            },
                        };
                        if let Some(out) = out {
                            let _ = tx.try_send(Bytes::from(out));
                        }
                    }
                    break 'read;
                }
                Frame::Message(n) => {
                    let frame = buf.split_to(n);
                    let mut sent = None;
                    let msg = ingest(&ctx, &frame, remote, &mut |out| sent = Some(out));
                    if let Some(out) = sent {
                        let _ = tx.try_send(Bytes::from(out));
                    }
                    match msg {
                        Ingested::Answered => garbage = 0,
                        Ingested::Message(msg) => {
                            garbage = 0;
                            if ctx
                                .inbound
                                .send(Inbound::Message {
                                    from: remote,
                                    local,
                                    msg,
                                })
                                .await
                                .is_err()
                            {
                                break 'read;
                            }
                        }
                        Ingested::Garbage => {
                            garbage += 1;
                            if garbage >= GARBAGE_LIMIT {
                                tracing::info!(%peer, "closing a connection that keeps sending garbage");
                                break 'read;
                            }
                        }
                    }
                }
            }
        }
    }
    drop(tx);
    let _ = ctx.inbound.send(Inbound::FlowClosed { id }).await;
    ctx.metrics.connections.dec();
    // Let queued answers (a 400 before closing) go out, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}
