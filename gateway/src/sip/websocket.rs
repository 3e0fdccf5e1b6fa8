//! SIP over WebSocket (RFC 7118): the `ws:` and `wss:` listeners. A WebSocket connection is a
//! flow like a TCP one (requests to a phone registered over it go back on it, RFC 7118 §5), but
//! framed by WebSocket instead of Content-Length: each message carries one SIP message, sent
//! as text (binary when it is not UTF-8). The opening handshake must offer the `sip`
//! subprotocol (§4), which the answer then names; other clients get HTTP 400. A message of only
//! CRLFs is a keep-alive: `\r\n\r\n` gets `\r\n` back, as SIP.js and RFC 5626 expect. The
//! gateway Pings each flow every 30 s and closes one whose peer sent nothing for 90 s.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use csps_sip::{Remote, Transport};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::transport::{GARBAGE_LIMIT, Inbound, Ingested, TransportCtx, accept, ingest};

/// Longest a client may take for the TLS and WebSocket handshakes together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the gateway keeps a WebSocket flow alive and notices a dead one: a Ping every
/// `ping_every` (NATs and proxies drop idle connections; every WebSocket peer answers with a
/// Pong by itself, RFC 6455 §5.5.2), and the flow closes when no frame at all came from the
/// peer for `dead_after` (a browser or phone gone without a close, its connection half-open).
#[derive(Clone, Copy, Debug)]
struct Keepalive {
    ping_every: Duration,
    dead_after: Duration,
}

/// A Ping every 30 s; three unanswered, the flow is closed.
const KEEPALIVE: Keepalive = Keepalive {
    ping_every: Duration::from_secs(30),
    dead_after: Duration::from_secs(90),
};

/// Accepts WebSocket connections (`wss` when `tls` is set) until the process ends.
pub async fn run_ws_listener(
    ctx: TransportCtx,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, peer, local) = accept(&listener).await;
        let ctx = ctx.clone();
        match &tls {
            None => {
                let handshake = upgrade(stream);
                tokio::spawn(accepted(ctx, handshake, peer, local, Transport::Ws));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let handshakes = async move {
                    let stream = acceptor
                        .accept(stream)
                        .await
                        .map_err(|e| format!("TLS handshake failed: {e}"))?;
                    upgrade(stream).await
                };
                tokio::spawn(accepted(ctx, handshakes, peer, local, Transport::Wss));
            }
        }
    }
}

/// Serves the connection once `handshakes` succeed within [`HANDSHAKE_TIMEOUT`].
async fn accepted<S>(
    ctx: TransportCtx,
    handshakes: impl Future<Output = Result<WebSocketStream<S>, String>>,
    peer: SocketAddr,
    local: SocketAddr,
    transport: Transport,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshakes).await {
        Ok(Ok(ws)) => serve(ctx, ws, (peer, local, transport), KEEPALIVE).await,
        Ok(Err(why)) => tracing::info!(%peer, "WebSocket connection refused: {why}"),
        Err(_) => tracing::info!(%peer, "WebSocket handshake timed out"),
    }
}

/// The WebSocket handshake on `stream`, with messages bounded by the SIP maximum.
async fn upgrade<S>(stream: S) -> Result<WebSocketStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limit = csps_sip::message::MAX_MESSAGE_SIZE;
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    tokio_tungstenite::accept_hdr_async_with_config(stream, sip_subprotocol, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake failed: {e}"))
}

/// Accepts a handshake that offers the `sip` subprotocol and names it in the answer (RFC 7118
/// §4); refuses others with 400. (The callback's signature is tungstenite's.)
#[allow(clippy::result_large_err)]
fn sip_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("sip"));
    if !offered {
        let mut refusal = ErrorResponse::new(Some(
            "SIP over WebSocket needs the subprotocol `sip` (RFC 7118)".into(),
        ));
        *refusal.status_mut() = StatusCode::BAD_REQUEST;
        return Err(refusal);
    }
    resp.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("sip"),
    );
    Ok(resp)
}

/// One SIP message (or a keep-alive answer) as a WebSocket message: text when it is UTF-8.
fn ws_message(bytes: Bytes) -> Message {
    // A clone of `Bytes` shares the buffer: nothing is copied either way.
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(bytes),
    }
}

/// Serves one WebSocket connection from `peer` to `local` as a new flow until either side
/// closes it or the peer falls silent ([`Keepalive`]).
async fn serve<S>(
    ctx: TransportCtx,
    ws: WebSocketStream<S>,
    (peer, local, transport): (SocketAddr, SocketAddr, Transport),
    keepalive: Keepalive,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let id = ctx.new_flow();
    let remote = Remote {
        transport,
        addr: peer,
        flow: Some(id),
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    let opened = Inbound::FlowOpened {
        id,
        remote,
        local,
        tx: tx.clone(),
    };
    if ctx.inbound.send(opened).await.is_err() {
        return;
    }
    ctx.metrics.connections.inc();
    tracing::debug!(%peer, %transport, "WebSocket flow opened");
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(keepalive.ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        loop {
            let frame = tokio::select! {
                bytes = rx.recv() => match bytes {
                    Some(bytes) => ws_message(bytes),
                    None => break,
                },
                _ = ping.tick() => Message::Ping(Bytes::new()),
            };
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut garbage = 0u32;
    loop {
        let next = match tokio::time::timeout(keepalive.dead_after, stream.next()).await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(_) => {
                tracing::info!(%peer, "closing a WebSocket flow whose peer answers no Ping");
                break;
            }
        };
        let data = match next {
            Ok(Message::Text(text)) => Bytes::from(text),
            Ok(Message::Binary(bytes)) => bytes,
            Ok(Message::Close(_)) => break,
            // Pings are answered by the WebSocket layer; pongs and raw frames carry no SIP.
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(%peer, "closing a WebSocket flow: {e}");
                if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                    ctx.metrics.drop_msg("too_large");
                }
                break;
            }
        };
        if data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            if data.as_ref() == b"\r\n\r\n" {
                let _ = tx.try_send(Bytes::from_static(b"\r\n"));
            }
            continue;
        }
        let mut answer = None;
        match ingest(&ctx, &data, remote, &mut |out| answer = Some(out)) {
            Ingested::Answered => garbage = 0,
            Ingested::Message(msg) => {
                garbage = 0;
                let msg = Inbound::Message {
                    from: remote,
                    local,
                    msg,
                };
                if ctx.inbound.send(msg).await.is_err() {
                    break;
                }
            }
            Ingested::Garbage => {
                garbage += 1;
                if garbage >= GARBAGE_LIMIT {
                    tracing::info!(%peer, "closing a WebSocket flow that keeps sending garbage");
                    if let Some(out) = answer.take() {
                        let _ = tx.try_send(Bytes::from(out));
                    }
                    break;
                }
            }
        }
        if let Some(out) = answer {
            let _ = tx.try_send(Bytes::from(out));
        }
    }
    drop(tx);
    let _ = ctx.inbound.send(Inbound::FlowClosed { id }).await;
    ctx.metrics.connections.dec();
    // Let queued answers go out, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(protocols: Option<&str>) -> Request {
        let mut r = Request::builder().uri("/");
        if let Some(p) = protocols {
            r = r.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        r.body(()).unwrap_or_default()
    }

    #[test]
    fn the_sip_subprotocol_is_required_and_named_in_the_answer() {
        for offered in ["sip", "SIP", "xmpp, sip", "sip,foo"] {
            let resp = sip_subprotocol(&handshake(Some(offered)), Response::default())
                .unwrap_or_else(|e| panic!("{offered}: refused {e:?}"));
            assert_eq!(
                resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL),
                Some(&HeaderValue::from_static("sip")),
                "{offered}"
            );
        }
        for offered in [None, Some("xmpp"), Some("sips")] {
            let refused = sip_subprotocol(&handshake(offered), Response::default());
            let status = refused.err().map(|e| e.status());
            assert_eq!(status, Some(StatusCode::BAD_REQUEST), "{offered:?}");
        }
    }

    /// The gateway Pings an idle flow; a peer that answers (its WebSocket layer Pongs as it
    /// reads) keeps the flow, one that falls silent is closed after `dead_after` and the core
    /// hears the flow close.
    #[tokio::test]
    async fn an_idle_flow_is_pinged_and_a_silent_peer_closed() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU64;
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (inbound, mut events) = mpsc::channel(16);
        let (_draining_tx, draining) = tokio::sync::watch::channel(false);
        let ctx = TransportCtx {
            inbound,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            server_name: Arc::from("test"),
            draining,
            next_flow: Arc::new(AtomicU64::new(1)),
        };
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let addr: SocketAddr = "127.0.0.1:5062".parse().expect("addr");
        let keepalive = Keepalive {
            ping_every: Duration::from_millis(50),
            dead_after: Duration::from_millis(1000),
        };
        tokio::spawn(serve(ctx, server, (addr, addr, Transport::Ws), keepalive));
        assert!(matches!(
            events.recv().await,
            Some(Inbound::FlowOpened { .. })
        ));
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut pings = 0;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until, client.next()).await {
            pings += usize::from(matches!(frame, Message::Ping(_)));
        }
        assert!(pings >= 10, "{pings} pings in 1.5 s");
        assert!(
            events.try_recv().is_err(),
            "an answering peer keeps its flow"
        );
        let closed = tokio::time::timeout(Duration::from_secs(4), events.recv()).await;
        assert!(
            matches!(closed, Ok(Some(Inbound::FlowClosed { .. }))),
            "a silent peer's flow is closed: {closed:?}"
        );
    }

    #[test]
    fn utf8_goes_out_as_text_and_the_rest_as_binary() {
        let sip = Bytes::from_static(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n");
        assert!(matches!(ws_message(sip), Message::Text(t) if t.as_str().starts_with("OPTIONS")));
        let bin = Bytes::from_static(b"MESSAGE \xff\xfe");
        assert!(matches!(ws_message(bin), Message::Binary(_)));
    }
}
