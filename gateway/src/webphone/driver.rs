//! The task of one web phone: it owns the str0m session and the browser's UDP socket, the SIP
//! line and its in-process flow to the core, and the bridge's RTP socket towards the call's relay,
//! and turns what arrives on each into input for the others. The phone ends when the page stops
//! it, when ICE loses the browser, or when the core closes the flow.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use csps_sip::{FlowId, Remote, Transport};
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::bridge::Bridge;
use super::line::{Line, LineConfig, LineView, PhoneState};
use super::{Command, WebPhoneError, WebPhoneView};
use crate::sip::transport::{Inbound, TransportCtx};
use crate::store::User;

/// A phone whose browser never connects is given up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped phone waits for its unregistration to be answered.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// The one crypto provider of every web phone (DTLS certificates, SRTP).
fn crypto() -> Arc<str0m::config::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<str0m::config::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(str0m::crypto::from_feature_flags()))
        .clone()
}

/// What a phone is made of.
pub(super) struct PhoneParts<'a> {
    pub id: String,
    pub account: User,
    pub offer: &'a str,
    pub browser: std::net::UdpSocket,
    pub bridge: (std::net::UdpSocket, std::net::UdpSocket),
    pub ctx: TransportCtx,
    pub sip_local: SocketAddr,
}

/// One running web phone.
pub(super) struct Phone {
    id: String,
    aor: String,
    rtc: Rtc,
    answer: String,
    browser: UdpSocket,
    browser_local: SocketAddr,
    relay: UdpSocket,
    /// Bound so the relay's RTCP to the bridge is not refused; nothing is read from it.
    _relay_rtcp: std::net::UdpSocket,
    line: Line,
    bridge: Bridge,
    /// The packet to the relay being written (reused: one per browser frame).
    packet: Vec<u8>,
    flow: Remote,
    flow_rx: mpsc::Receiver<Bytes>,
    ctx: TransportCtx,
    sip_local: SocketAddr,
    view: watch::Sender<WebPhoneView>,
    mid: Option<Mid>,
    opus: Option<Pt>,
    started: Instant,
    connected: bool,
    /// Set when the phone stops: it then runs on only until its line has unregistered.
    closing: Option<Instant>,
    done: bool,
}

impl Phone {
    /// Answers the browser's offer and binds the line's flow; `run` then drives it.
    pub fn new(p: PhoneParts<'_>) -> Result<Phone, WebPhoneError> {
        let offer = SdpOffer::from_sdp_string(p.offer)
            .map_err(|e| WebPhoneError::BadOffer(e.to_string()))?;
        let now = Instant::now();
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(crypto())
            .set_ice_lite(true)
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        let browser_local = p.browser.local_addr()?;
        let candidate = Candidate::host(browser_local, "udp")
            .map_err(|e| WebPhoneError::BadOffer(format!("host candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| WebPhoneError::BadOffer(e.to_string()))?;
        let answer = answer.to_sdp_string();
        if !answer.contains("opus/48000") {
            return Err(WebPhoneError::BadOffer(
                "no audio with Opus in the offer".into(),
            ));
        }
        p.browser.set_nonblocking(true)?;
        let browser = UdpSocket::from_std(p.browser)?;
        let (relay, relay_rtcp) = p.bridge;
        let media = relay.local_addr()?;
        let relay = UdpSocket::from_std(relay)?;
        // The flow's far end, the line's own address as the core sees it, is the bridge's: its
        // port is unique on this host, so two phones never share an address.
        let local = media;
        let flow_id = FlowId(
            p.ctx
                .next_flow
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let (flow_tx, flow_rx) = mpsc::channel(64);
        let flow = Remote {
            transport: Transport::Tcp,
            addr: local,
            flow: Some(flow_id),
        };
        p.ctx
            .inbound
            .try_send(Inbound::FlowOpened {
                id: flow_id,
                remote: flow,
                local: p.sip_local,
                tx: flow_tx,
            })
            .map_err(|_| std::io::Error::other("the SIP core is busy"))?;
        let line = Line::new(LineConfig {
            username: p.account.username.clone(),
            domain: p.account.domain.clone(),
            display_name: p.account.display_name.clone(),
            ha1: p.account.ha1.clone(),
            local,
            media,
            instance: uuid::Uuid::new_v4().to_string(),
        });
        let aor = line.aor();
        let (view, _) = watch::channel(WebPhoneView {
            id: p.id.clone(),
            aor: aor.clone(),
            state: PhoneState::Connecting,
            peer: None,
            ended: None,
        });
        Ok(Phone {
            id: p.id,
            aor,
            rtc,
            answer,
            browser,
            browser_local,
            relay,
            _relay_rtcp: relay_rtcp,
            line,
            bridge: Bridge::new(),
            packet: Vec::with_capacity(1500),
            flow,
            flow_rx,
            ctx: p.ctx,
            sip_local: p.sip_local,
            view,
            mid: None,
            opus: None,
            started: now,
            connected: false,
            closing: None,
            done: false,
        })
    }

    /// The SDP answer for the browser.
    pub fn answer_sdp(&self) -> &str {
        &self.answer
    }

    /// The phone's state, watched.
    pub fn view_rx(&self) -> watch::Receiver<WebPhoneView> {
        self.view.subscribe()
    }

    /// Drives the phone until it ends.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut from_browser = vec![0u8; 2048];
        let mut from_relay = vec![0u8; 2048];
        loop {
            let rtc_at = self.drain_rtc().await;
            self.flush_line().await;
            let now = Instant::now();
            if let Some(since) = self.closing
                && (self.line.finished() || now >= since + UNREGISTER_TIMEOUT)
            {
                self.done = true;
            }
            if self.done {
                break;
            }
            let mut wake = rtc_at;
            if let Some(since) = self.closing {
                wake = wake.min(since + UNREGISTER_TIMEOUT);
            }
            if let Some(t) = self.line.poll_timeout() {
                wake = wake.min(t);
            }
            if !self.connected {
                wake = wake.min(self.started + CONNECT_TIMEOUT);
            }
            let sleep = wake.saturating_duration_since(now);
            tokio::select! {
                r = self.browser.recv_from(&mut from_browser) => match r {
                    Ok((n, source)) => self.on_browser_datagram(&from_browser[..n], source),
                    Err(e) => tracing::debug!(phone = %self.id, "browser socket: {e}"),
                },
                r = self.relay.recv_from(&mut from_relay) => match r {
                    Ok((n, _)) => self.on_relay_packet(n, &from_relay),
                    Err(e) => tracing::debug!(phone = %self.id, "bridge socket: {e}"),
                },
                m = self.flow_rx.recv() => match m {
                    Some(bytes) => self.on_sip(&bytes),
                    None => {
                        tracing::info!(phone = %self.id, "the SIP core closed the web phone's flow");
                        self.done = true;
                    }
                },
                c = commands.recv() => self.on_command(c),
                _ = tokio::time::sleep(sleep) => {
                    let now = Instant::now();
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                        tracing::debug!(phone = %self.id, "str0m: {e}");
                    }
                    self.line.on_timeout(now);
                    if !self.connected && now >= self.started + CONNECT_TIMEOUT {
                        tracing::info!(phone = %self.id, "the browser's media never connected");
                        self.close();
                    }
                }
            }
        }
        // The last words (an unregister, a BYE) are out; tell the core the flow is gone.
        self.publish();
        let _ = self
            .ctx
            .inbound
            .send(Inbound::FlowClosed {
                id: self.flow.flow.unwrap_or(FlowId(0)),
            })
            .await;
    }

    fn close(&mut self) {
        if self.closing.is_none() {
            self.line.close();
            self.rtc.disconnect();
            self.closing = Some(Instant::now());
        }
    }

    fn on_command(&mut self, c: Option<Command>) {
        let now = Instant::now();
        let (result, done) = match c {
            None | Some(Command::Close) => {
                self.close();
                return;
            }
            Some(Command::Call(to, done)) => (self.line.call(&to, now), done),
            Some(Command::Answer(done)) => (self.line.answer(), done),
            Some(Command::HangUp(done)) => (self.line.hang_up(), done),
            Some(Command::Hold(on, done)) => (self.line.hold(on), done),
        };
        // The state the caller reads back must include this command's effect.
        self.publish();
        let _ = done.send(result.map_err(|e| e.to_string()));
    }

    fn on_browser_datagram(&mut self, data: &[u8], source: SocketAddr) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.browser_local,
                contents,
            },
        );
        if self.rtc.accepts(&input)
            && let Err(e) = self.rtc.handle_input(input)
        {
            tracing::debug!(phone = %self.id, "str0m refused a datagram: {e}");
        }
    }

    fn on_relay_packet(&mut self, n: usize, buf: &[u8]) {
        let (Some(mid), Some(opus), Some(path)) = (self.mid, self.opus, self.line.media()) else {
            return;
        };
        let Some((time, frame)) = self.bridge.from_relay(path.pt, &buf[..n]) else {
            return;
        };
        let Some(writer) = self.rtc.writer(mid) else {
            return;
        };
        let rtp_time = MediaTime::new(time, Frequency::FORTY_EIGHT_KHZ);
        if let Err(e) = writer.write(opus, Instant::now(), rtp_time, frame) {
            tracing::debug!(phone = %self.id, "str0m write: {e}");
        }
    }

    fn on_sip(&mut self, bytes: &[u8]) {
        match csps_sip::parse(bytes) {
            Ok(parsed) => self.line.on_message(parsed.message, Instant::now()),
            Err(e) => tracing::warn!(phone = %self.id, "unreadable SIP from the core: {e:?}"),
        }
    }

    /// Runs str0m until it waits; returns when it wants its next timeout.
    async fn drain_rtc(&mut self) -> Instant {
        loop {
            let out = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::info!(phone = %self.id, "web phone media failed: {e}");
                    self.close();
                    return Instant::now() + Duration::from_secs(1);
                }
            };
            match out {
                Output::Timeout(t) => return t,
                Output::Transmit(t) => {
                    if let Err(e) = self.browser.send_to(&t.contents, t.destination).await {
                        tracing::debug!(phone = %self.id, "to the browser: {e}");
                    }
                }
                Output::Event(e) => self.on_rtc_event(e),
            }
        }
    }

    fn on_rtc_event(&mut self, e: Event) {
        match e {
            Event::Connected => {
                tracing::info!(phone = %self.id, aor = %self.aor, "web phone media connected");
                self.connected = true;
                self.line.connected(Instant::now());
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                tracing::info!(phone = %self.id, "web phone lost its browser");
                self.close();
            }
            Event::MediaAdded(m) if m.kind == MediaKind::Audio => {
                self.mid = Some(m.mid);
                self.opus = self.rtc.writer(m.mid).and_then(|w| {
                    w.payload_params()
                        .find(|p| p.spec().codec == Codec::Opus)
                        .map(|p| p.pt())
                });
            }
            Event::MediaData(d) => {
                let Some(path) = self.line.media().filter(|p| p.send) else {
                    return;
                };
                self.packet.clear();
                self.bridge.to_relay(
                    path.pt,
                    d.time.numer(),
                    d.audio_start_of_talk_spurt,
                    &d.data,
                    &mut self.packet,
                );
                if let Err(e) = self.relay.try_send_to(&self.packet, path.remote) {
                    tracing::debug!(phone = %self.id, "to the relay: {e}");
                }
            }
            _ => {}
        }
    }

    /// Hands the line's messages to the core and publishes its state.
    async fn flush_line(&mut self) {
        for msg in self.line.drain_output() {
            // The core takes only requests that passed the receive tasks' checks.
            if let csps_sip::Message::Request(req) = &msg
                && let Err(rej) = crate::sip::transport::precheck(req)
            {
                tracing::warn!(phone = %self.id, "the line made a malformed request: {}", rej.warning);
                continue;
            }
            let inbound = Inbound::Message {
                from: self.flow,
                local: self.sip_local,
                msg: Box::new(msg),
            };
            if self.ctx.inbound.send(inbound).await.is_err() {
                self.done = true;
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let LineView { state, peer, ended } = self.line.view();
        self.view.send_if_modified(|v| {
            let changed = v.state != state || v.peer != peer || v.ended != ended;
            v.state = state;
            v.peer = peer;
            v.ended = ended;
            changed
        });
    }
}
