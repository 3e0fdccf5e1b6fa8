//! The web phone: a WebRTC softphone in the user's browser whose server side is str0m in the
//! gateway. Each web phone is one browser peer connection (audio, Opus) and one SIP [`line`]:
//! while its media is connected it is a registered device of the user's account, so calls to the
//! account ring it beside the desk phones (forking) and its calls are the account's calls, with
//! everything the call core does (routing, policies, transcoding, records).
//!
//! The line reaches the SIP core over an in-process flow, as a TCP connection would: the core
//! sees a stream flow and answers on it, and a call to the AoR goes back over it as to any phone
//! on a connection. Its media leaves the call's relay as plain RTP on loopback to the [`bridge`],
//! which hands Opus frames to str0m (ICE-lite, DTLS-SRTP towards the browser) and back. The
//! [`driver`] is the task that owns one phone: its str0m session, its line and their sockets.
//! [`WebPhones`] is the registry the API starts, commands and stops phones through.

pub mod bridge;
mod driver;
pub mod line;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::Settings;
use crate::media::PortPool;
use crate::sip::transport::TransportCtx;
use crate::store::User;
pub use line::PhoneState;

/// The User-Agent and Server value of web phones (what the registrations list shows).
pub const USER_AGENT: &str = "csps web phone";
/// Methods a web phone's line accepts.
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, NOTIFY";

/// What the page sees of a web phone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "b1946ac92492d234", "aor": "sip:alice@csps.local",
    "state": "in-call", "peer": "sip:bob@csps.local", "ended": null}))]
pub struct WebPhoneView {
    /// The phone's id.
    pub id: String,
    /// The account it is a device of.
    pub aor: String,
    /// Where its call stands.
    pub state: PhoneState,
    /// The other party of the current call.
    pub peer: Option<String>,
    /// How the last call ended (kept until the next call).
    pub ended: Option<String>,
}

/// A started web phone: the browser's answer and the phone's first state.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Started {
    /// The phone's state.
    #[serde(flatten)]
    pub view: WebPhoneView,
    /// The SDP answer for the browser's `setRemoteDescription`.
    pub sdp: String,
}

/// What the page asks of a running web phone.
#[derive(Debug)]
pub enum Command {
    /// Call a user name, number or SIP URI.
    Call(String, tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Answer the call that rings in.
    Answer(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Hold (`true`) or resume (`false`) the call.
    Hold(bool, tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Cancel, decline or end the call.
    HangUp(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Stop the phone (unregister, end its call).
    Close,
}

/// Why a web phone could not be started or commanded.
#[derive(Debug, thiserror::Error)]
pub enum WebPhoneError {
    /// The SIP side did not hand the registry its parts (an API-only test server).
    #[error("web phones are not available on this server")]
    Unavailable,
    /// The browser's offer is not one the web phone can answer.
    #[error("the browser's offer cannot be answered: {0}")]
    BadOffer(String),
    /// No such phone (or not the caller's).
    #[error("no such web phone")]
    NotFound,
    /// The phone refused the command in its state.
    #[error("{0}")]
    Conflict(String),
    /// Sockets could not be bound.
    #[error("no media port for the web phone: {0}")]
    Ports(#[from] std::io::Error),
}

struct Entry {
    /// The UPN of the user who started it (only they command it).
    owner: String,
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<WebPhoneView>,
}

struct Parts {
    ctx: TransportCtx,
    /// The SIP listener address the line's flow claims to arrive on (Via, Record-Route).
    sip_local: SocketAddr,
    settings: watch::Receiver<Arc<Settings>>,
    ports: PortPool,
    phones: Mutex<HashMap<String, Entry>>,
}

/// The web phones of this server.
#[derive(Clone, Default)]
pub struct WebPhones {
    parts: Option<Arc<Parts>>,
}

impl WebPhones {
    /// Web phones whose lines reach the core through `ctx` as if they arrived on `sip_local`.
    pub fn new(
        ctx: TransportCtx,
        sip_local: SocketAddr,
        settings: watch::Receiver<Arc<Settings>>,
    ) -> WebPhones {
        WebPhones {
            parts: Some(Arc::new(Parts {
                ctx,
                sip_local,
                settings,
                ports: PortPool::new(),
                phones: Mutex::new(HashMap::new()),
            })),
        }
    }

    fn parts(&self) -> Result<&Arc<Parts>, WebPhoneError> {
        self.parts.as_ref().ok_or(WebPhoneError::Unavailable)
    }

    /// Starts a web phone for `account`, owned by `owner`, answering the browser's `offer`; its
    /// media is offered on `browser_ip`'s side (the local address the browser reached us on).
    pub fn start(
        &self,
        owner: &str,
        account: &User,
        offer: &str,
        browser_ip: IpAddr,
    ) -> Result<Started, WebPhoneError> {
        let parts = self.parts()?.clone();
        let id = format!("{:016x}", rand::random::<u64>());
        let settings = parts.settings.borrow().clone();
        let (min, max) = (settings.min_rtp_port, settings.max_rtp_port);
        let ice_ip = crate::media::local_ip_towards(browser_ip).unwrap_or(browser_ip);
        let (browser_sock, _) = parts.ports.bind_pair(ice_ip, min, max)?;
        let loopback: IpAddr = if parts.sip_local.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        };
        let bridge_socks = parts.ports.bind_pair(loopback, min, max)?;
        let (commands, command_rx) = mpsc::channel(8);
        let phone = driver::Phone::new(driver::PhoneParts {
            id: id.clone(),
            account: account.clone(),
            offer,
            browser: browser_sock,
            bridge: bridge_socks,
            ctx: parts.ctx.clone(),
            sip_local: parts.sip_local,
        })?;
        let view = phone.view_rx();
        let sdp = phone.answer_sdp().to_owned();
        let first = view.borrow().clone();
        parts
            .phones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.clone(),
                Entry {
                    owner: owner.to_owned(),
                    commands,
                    view,
                },
            );
        let done = parts.clone();
        let done_id = id.clone();
        tokio::spawn(async move {
            phone.run(command_rx).await;
            done.phones
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&done_id);
            tracing::info!(phone = %done_id, "web phone stopped");
        });
        tracing::info!(phone = %id, aor = %first.aor, "web phone started");
        Ok(Started { view: first, sdp })
    }

    fn entry<T>(
        &self,
        owner: &str,
        id: &str,
        f: impl FnOnce(&Entry) -> T,
    ) -> Result<T, WebPhoneError> {
        let parts = self.parts()?;
        let phones = parts.phones.lock().unwrap_or_else(|p| p.into_inner());
        match phones.get(id) {
            Some(e) if e.owner.eq_ignore_ascii_case(owner) => Ok(f(e)),
            _ => Err(WebPhoneError::NotFound),
        }
    }

    /// The phone's state, watched (for the event stream).
    pub fn watch(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<watch::Receiver<WebPhoneView>, WebPhoneError> {
        self.entry(owner, id, |e| e.view.clone())
    }

    /// Runs a command that answers, then returns the state after it.
    pub async fn command(
        &self,
        owner: &str,
        id: &str,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> Command,
    ) -> Result<WebPhoneView, WebPhoneError> {
        let (tx, mut view) = self.entry(owner, id, |e| (e.commands.clone(), e.view.clone()))?;
        let (done, answer) = tokio::sync::oneshot::channel();
        tx.send(make(done))
            .await
            .map_err(|_| WebPhoneError::NotFound)?;
        match answer.await {
            Ok(Ok(())) => Ok(view.borrow_and_update().clone()),
            Ok(Err(why)) => Err(WebPhoneError::Conflict(why)),
            Err(_) => Err(WebPhoneError::NotFound),
        }
    }

    /// Stops the phone.
    pub async fn stop(&self, owner: &str, id: &str) -> Result<(), WebPhoneError> {
        let tx = self.entry(owner, id, |e| e.commands.clone())?;
        let _ = tx.send(Command::Close).await;
        Ok(())
    }
}
