//! Calls: the B2BUA. The SIP core hands every dialog-creating INVITE to [`Switch::on_invite`],
//! which authenticates the caller, routes the call ([`route`], where a WASM routing policy
//! decides when one is loaded), and spawns one task per call. That task owns the call's sans-IO state
//! machine ([`b2bua::Call`]) and its media relay; it talks to the core only through messages:
//! [`CallEvent`]s in (requests, responses, timeouts routed by Call-ID and transaction), and
//! [`CallAction`]s out (answers and requests the core's transaction layer sends). The switch keeps
//! the routing entries and drops them when a call reports [`CallAction::Ended`].
//!
//! A leg is a registered phone (a web phone is one too, over an in-process flow) or the Teams
//! trunk ([`teams`]), each a [`leg::LegKind`] behind the same call task; a call to the conference
//! URI goes to a room instead ([`conference`]).

pub mod archive;
pub mod b2bua;
pub mod codecs;
pub mod conference;
pub mod leg;
pub mod record;
pub mod rel1xx;
pub mod sdes;
mod task;
pub mod teams;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use csps_sip::registrar::{Accounts, Registrar};
use csps_sip::transaction::{Transactions, TxnKey};
use csps_sip::{Remote, Request, Response, SipHeaders};
use rand::RngCore;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::Settings;
use crate::media::PortPool;
use crate::policy::hooks::{CallQuirks, Device};
use crate::policy::{Pinned, PolicyEngine, PolicyKind, Route as PolicyRoute, RouteRequest, rules};
use crate::sip::accounts::AccountCache;

pub use leg::{CallInfo, DialogIds, LegInfo, LegKind, LineState, UserState};
pub use record::{CallRecord, SipMessage};

use crate::metrics::CallMetrics;

/// Methods accepted inside a call's dialogs.
pub const ALLOW_IN_DIALOG: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, PRACK";

/// Identifies a call on this server.
pub type CallNo = u64;

/// What the core passes to a call task.
#[derive(Debug)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // moved once through the call's channel, never stored
pub enum CallEvent {
    /// A message or timeout for the call's state machine.
    Sip(b2bua::Input),
    /// Report the call's state for the API.
    Snapshot(tokio::sync::oneshot::Sender<CallInfo>),
    /// Report the SIP messages kept so far.
    Messages(tokio::sync::oneshot::Sender<Vec<SipMessage>>),
    /// A phone joins a conference room, or a call's leg is moved into one (only a room task
    /// gets it).
    Join(Box<conference::Arrival>),
}

/// A call started, was answered or ended: for the console's event stream.
#[derive(Clone, Debug, Serialize)]
pub struct CallNotice {
    /// `started`, `answered` or `ended`.
    pub event: &'static str,
    /// The call's record as of that moment.
    pub call: CallRecord,
    /// For `ended`, the record as the store keeps it (with `server` and `record_id`), when
    /// the calls are archived.
    pub stored: Option<crate::store::EndedCall>,
}

/// What a call task asks of the core.
#[derive(Debug)]
#[non_exhaustive]
pub enum CallAction {
    /// Answer a server transaction.
    Respond(TxnKey, Response),
    /// Start a client transaction.
    Send {
        /// The call's tag for it.
        tag: u32,
        /// Destination.
        to: Remote,
        /// The request.
        req: Request,
    },
    /// Send outside a transaction.
    Stateless(Remote, Request),
    /// A call's leg goes to a conference room (the other party referred it there).
    ToRoom(Box<b2bua::Handover>),
    /// A room's word on a leg moved in from call `call` (its dialog's Call-ID `call_id`).
    RoomOutcome {
        /// The call the leg came from.
        call: CallNo,
        /// The leg's Call-ID.
        call_id: String,
        /// Joined, or why not.
        outcome: b2bua::RoomOutcome,
    },
    /// The call is over.
    Ended,
}

/// Handles to the calls for the REST API: call number to the running task's event channel (only
/// the switch writes it, when a call starts and ends, so it is never touched on the packet
/// path), the recent ended calls (their SIP messages), the calls' metrics and their notices, and
/// the archive that stores ended calls' records.
#[derive(Clone)]
pub struct Directory {
    running: Arc<Mutex<HashMap<CallNo, mpsc::Sender<CallEvent>>>>,
    /// The confirmed legs of each answered call, as its task last published them: where an
    /// attended transfer's Replaces is looked up (a REFER is rare, so a scan is fine).
    dialogs: Arc<Mutex<HashMap<CallNo, Vec<b2bua::LegDialog>>>>,
    history: Arc<record::History>,
    metrics: CallMetrics,
    notices: broadcast::Sender<CallNotice>,
    archive: Option<archive::Archive>,
}

impl Default for Directory {
    fn default() -> Self {
        Directory::new(CallMetrics::default())
    }
}

impl Directory {
    /// An empty directory counting into `metrics`.
    pub fn new(metrics: CallMetrics) -> Directory {
        Directory {
            running: Arc::default(),
            dialogs: Arc::default(),
            history: Arc::default(),
            metrics,
            notices: broadcast::channel(256).0,
            archive: None,
        }
    }

    /// This directory, storing every ended call's record through `archive`.
    pub fn archived_to(mut self, archive: archive::Archive) -> Directory {
        self.archive = Some(archive);
        self
    }

    /// Calls starting, answered and ending (for `GET /api/events`).
    pub fn subscribe(&self) -> broadcast::Receiver<CallNotice> {
        self.notices.subscribe()
    }

    /// Carries the calls' notices onto the live event feed as `call.started`, `call.answered`
    /// and `call.ended`, with the call's record; ends when the directory is gone.
    pub fn publish_to(&self, events: crate::events::Events) {
        let mut notices = self.subscribe();
        tokio::spawn(async move {
            loop {
                match notices.recv().await {
                    Ok(n) => {
                        let name = match n.event {
                            "started" => "call.started",
                            "answered" => "call.answered",
                            "ended" => "call.ended",
                            other => {
                                tracing::debug!(event = other, "a call notice the feed ignores");
                                continue;
                            }
                        };
                        events.publish(name, || {
                            match &n.stored {
                                Some(stored) => serde_json::to_value(stored),
                                None => serde_json::to_value(&n.call),
                            }
                            .unwrap_or(serde_json::Value::Null)
                        });
                    }
                    // The listeners missed these too: tell them to reload, as for their own lag.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        events.publish("lagged", || serde_json::json!({ "missed": n }));
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// The SIP messages of call `id`, running (asked of its task) or recently ended; `None`
    /// when the call is unknown or no longer kept.
    pub async fn messages(&self, id: CallNo) -> Option<Vec<SipMessage>> {
        let tx = self.running.lock().ok().and_then(|m| m.get(&id).cloned());
        if let Some(tx) = tx {
            let (otx, orx) = tokio::sync::oneshot::channel();
            if tx.send(CallEvent::Messages(otx)).await.is_ok()
                && let Ok(Ok(m)) =
                    tokio::time::timeout(std::time::Duration::from_secs(1), orx).await
            {
                return Some(m);
            }
            // The task ended meanwhile: its messages are in the history now.
        }
        self.history.messages(id)
    }

    fn notify(&self, event: &'static str, call: &CallRecord) {
        self.send_notice(CallNotice {
            event,
            call: call.clone(),
            stored: None,
        });
    }

    fn send_notice(&self, notice: CallNotice) {
        // Nobody listening is fine.
        let _ = self.notices.send(notice);
    }

    /// Call `no`'s confirmed legs changed (answered, transferred).
    pub(crate) fn set_dialogs(&self, no: CallNo, legs: Vec<b2bua::LegDialog>) {
        if let Ok(mut m) = self.dialogs.lock() {
            m.insert(no, legs);
        }
    }

    /// The confirmed leg of call `no` whose device holds dialog `call_id` with tag
    /// `device_tag`: who sent an in-dialog request.
    fn leg(&self, no: CallNo, call_id: &str, device_tag: &str) -> Option<b2bua::LegDialog> {
        let m = self.dialogs.lock().ok()?;
        m.get(&no)?
            .iter()
            .find(|l| l.call_id == call_id && l.device_tag == device_tag)
            .cloned()
    }

    /// The call other than `except` with a confirmed leg whose dialog `r` names, that leg and
    /// the call's other leg (if it has one a device holds).
    fn replaced(
        &self,
        r: &csps_sip::replaces::Replaces,
        except: CallNo,
    ) -> Option<(CallNo, b2bua::LegDialog, Option<b2bua::LegDialog>)> {
        let m = self.dialogs.lock().ok()?;
        m.iter()
            .filter(|(no, _)| **no != except)
            .find_map(|(no, legs)| {
                let i = legs
                    .iter()
                    .position(|l| r.names(&l.call_id, &l.gateway_tag, &l.device_tag))?;
                let other = legs.iter().enumerate().find(|(j, _)| *j != i);
                Some((*no, legs[i].clone(), other.map(|(_, l)| l.clone())))
            })
    }

    /// A call task's record at its start.
    pub(crate) fn started(&self, call: &CallRecord) {
        self.notify("started", call);
    }

    /// The call was answered.
    pub(crate) fn answered(&self, call: &CallRecord) {
        self.metrics.setups.inc();
        self.notify("answered", call);
    }

    /// The caller got its first ringing, early media or answer `secs` after its INVITE.
    pub(crate) fn post_dial_delay(&self, secs: f64) {
        self.metrics.post_dial_delay.observe(secs);
    }

    /// A call ended: its record goes to the store (through the archive, never waiting), its
    /// record and messages to the in-memory history, its numbers to the metrics.
    pub(crate) fn ended(&self, call: CallRecord, log: record::MessageLog) {
        for leg in &call.media {
            self.metrics.rtp_packets.inc_by(leg.rtp_packets);
            self.metrics.rtp_lost.inc_by(leg.rtp_lost);
            if let Some(j) = leg.jitter_max_ms {
                self.metrics.rtp_jitter_max.observe(j);
            }
        }
        match (call.answered_at, call.status) {
            (Some(_), _) => self.metrics.talk_time.observe(call.talk_secs as f64),
            (None, Some(s)) => self.metrics.failed(s),
            (None, None) => {}
        }
        match self
            .archive
            .as_ref()
            .and_then(|a| Some((a, a.stored(&call)?)))
        {
            // `call.ended` once the record is in the store: a console that reloads the history
            // on it finds the call there.
            Some((archive, stored)) => {
                let notices = self.notices.clone();
                let notice = CallNotice {
                    event: "ended",
                    call: call.clone(),
                    stored: Some(stored.clone()),
                };
                archive.keep_then(
                    stored,
                    Some(Box::new(move || {
                        let _ = notices.send(notice);
                    })),
                );
            }
            None => self.send_notice(CallNotice {
                event: "ended",
                call: call.clone(),
                stored: None,
            }),
        }
        self.history.push(call, log);
    }

    /// An INVITE refused before a call task existed (no route, no device, no port).
    pub(crate) fn refused(&self, status: u16) {
        self.metrics.attempts.inc();
        self.metrics.failed(status);
    }
    /// Every running call's state, asked of each call task (a task that does not answer within
    /// a second is left out).
    pub async fn list(&self) -> Vec<CallInfo> {
        let senders: Vec<_> = match self.running.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::new();
        for tx in senders {
            let (otx, orx) = tokio::sync::oneshot::channel();
            if tx.send(CallEvent::Snapshot(otx)).await.is_err() {
                continue;
            }
            if let Ok(Ok(info)) = tokio::time::timeout(std::time::Duration::from_secs(1), orx).await
            {
                out.push(info);
            }
        }
        out.sort_by_key(|c| c.started_at);
        out
    }

    /// Hangs up call `id`; false when there is no such call.
    pub async fn hang_up(&self, id: CallNo) -> bool {
        let tx = match self.running.lock() {
            Ok(m) => m.get(&id).cloned(),
            Err(_) => None,
        };
        match tx {
            Some(tx) => tx.send(CallEvent::Sip(b2bua::Input::Hangup)).await.is_ok(),
            None => false,
        }
    }

    fn insert(&self, id: CallNo, tx: mpsc::Sender<CallEvent>) {
        if let Ok(mut m) = self.running.lock() {
            m.insert(id, tx);
            self.metrics.attempts.inc();
            self.metrics.active.set(m.len() as i64);
        }
    }

    fn remove(&self, id: CallNo) {
        if let Ok(mut m) = self.running.lock() {
            m.remove(&id);
            self.metrics.active.set(m.len() as i64);
        }
        if let Ok(mut m) = self.dialogs.lock() {
            m.remove(&id);
        }
    }
}

/// Where a call goes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// A local user: ring their registered devices.
    Local {
        /// Username.
        user: String,
        /// Domain.
        domain: String,
    },
    /// Out through the Teams trunk to this E.164 number (403 for an account not activated).
    Teams(String),
    /// To a local user's web phones only (480 when none runs).
    WebUser(String),
    /// An emergency number with no local target: out through the Teams trunk, whoever calls
    /// (503 when no trunk proxy is up).
    EmergencyUnrouted,
    /// Refused with this status and reason (the built-in 404/484, or a routing policy's answer).
    Reject {
        /// SIP status, 400–699.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// One routing question: who calls what.
#[derive(Clone, Copy, Debug)]
pub struct RouteQuery<'a> {
    /// What was dialled: the Request-URI's user part (percent-decoded).
    pub dialled: &'a str,
    /// The authenticated caller (username, domain); `None` only for an unchallenged emergency
    /// call.
    pub caller: Option<(&'a str, &'a str)>,
    /// The domain local users are looked up in.
    pub domain: &'a str,
    /// The calling device's User-Agent.
    pub device: Option<&'a str>,
    /// Whether `dialled` is a configured emergency number.
    pub emergency: bool,
}

/// The routing decision for a call. Emergency numbers first, by the built-in rule (a local
/// account of that name, else 503 until the trunk exists) and before any policy; then the
/// routing policy pinned for the call (`pinned`; the built-in rule when there is no engine or
/// module). A Teams route to the number of a local account stays local (as dialling that number
/// does), and a local route to an account that does not exist is 404.
pub fn route(
    q: &RouteQuery<'_>,
    accounts: &AccountCache,
    policies: Option<&PolicyEngine>,
    pinned: &Pinned,
) -> Route {
    let local = |user: &str, domain: &str| {
        accounts
            .lookup(user, domain)
            .is_some()
            .then(|| Route::Local {
                user: user.to_owned(),
                domain: domain.to_owned(),
            })
    };
    let by_number = |number: &str| accounts.by_number(number).and_then(|(u, d)| local(u, d));
    if q.emergency {
        return local(q.dialled, q.domain).unwrap_or(Route::EmergencyUnrouted);
    }
    let local_match = if accounts.lookup(q.dialled, q.domain).is_some() {
        Some(q.dialled.to_owned())
    } else {
        accounts
            .by_number(&rules::dial_string(q.dialled))
            .filter(|(_, d)| d.eq_ignore_ascii_case(q.domain))
            .map(|(u, _)| u.to_owned())
    };
    let (user, caller_domain) = q.caller.unwrap_or(("", q.domain));
    let mut attributes = Vec::new();
    if let Some(name) = accounts.display_name(user, caller_domain) {
        attributes.push(("display_name".to_owned(), name.to_owned()));
    }
    let req = RouteRequest {
        caller: rules::Caller {
            user: user.to_owned(),
            domain: caller_domain.to_owned(),
            phone_number: accounts
                .phone_number(user, caller_domain)
                .map(str::to_owned),
            device: q.device.map(str::to_owned),
            attributes,
        },
        dialled: q.dialled.to_owned(),
        local_match,
    };
    let decided = match policies {
        Some(engine) => engine.route_with(pinned, &req).value,
        None => rules::route(&req),
    };
    match decided {
        PolicyRoute::LocalUser(u) => local(&u, q.domain).unwrap_or(Route::Reject {
            code: 404,
            reason: "Not Found".into(),
        }),
        PolicyRoute::Teams(n) => by_number(&n).unwrap_or(Route::Teams(n)),
        PolicyRoute::WebUser(u) => Route::WebUser(u),
        PolicyRoute::Reject { code, reason } => Route::Reject { code, reason },
        // The engine's own emergency check, should its list be newer than the settings here.
        PolicyRoute::Emergency(_) => local(q.dialled, q.domain).unwrap_or(Route::EmergencyUnrouted),
        _ => Route::Reject {
            code: 404,
            reason: "Not Found".into(),
        },
    }
}

/// The account (username, domain) of a party as a call asserts it (`"Name" <sip:user@domain>`).
fn account_of(party: &str) -> Option<(String, String)> {
    let uri = csps_sip::headers::NameAddr::parse(party).ok()?.uri;
    Some((uri.user?, uri.host))
}

/// What the switch borrows from the core for one INVITE.
pub struct InviteCx<'a> {
    /// The transaction layer (to answer).
    pub txns: &'a mut Transactions,
    /// The registrar (authentication and bindings).
    pub registrar: &'a mut Registrar,
    /// The accounts.
    pub accounts: &'a AccountCache,
    /// Randomness.
    pub rng: &'a mut rand::rngs::StdRng,
    /// The gateway's address on the caller's flow.
    pub local: SocketAddr,
    /// Resolves the gateway's address on a registered device's flow.
    pub local_of: &'a dyn Fn(&Remote) -> SocketAddr,
}

/// The core's side of calls: routing entries by Call-ID and client transaction.
pub struct Switch {
    server_name: String,
    settings: watch::Receiver<Arc<Settings>>,
    actions: mpsc::Sender<(CallNo, CallAction)>,
    calls: HashMap<CallNo, mpsc::Sender<CallEvent>>,
    by_call_id: HashMap<String, CallNo>,
    /// Every Call-ID of a call: the caller's, the callee side's, each transfer's.
    call_ids: HashMap<CallNo, Vec<String>>,
    clients: HashMap<TxnKey, (CallNo, u32)>,
    /// INVITEs with Replaces handed to a call and not yet answered finally, with their own
    /// Call-ID: a refusal frees that Call-ID again, so the phone can retry with it.
    replacing: HashMap<TxnKey, (CallNo, String)>,
    next: CallNo,
    ports: Arc<PortPool>,
    directory: Directory,
    states: broadcast::Sender<UserState>,
    policies: Option<Arc<PolicyEngine>>,
    trunk: watch::Receiver<crate::trunk::Paths>,
    /// The music on hold (`None`: off), kept current by [`crate::media::moh::watch`].
    music: watch::Receiver<Option<Arc<crate::media::moh::Music>>>,
    /// Running conference rooms by name.
    rooms: HashMap<String, CallNo>,
}

/// Where a new call's B side goes, once decided.
struct Plan {
    /// The caller as the B side sees it (From and P-Asserted-Identity).
    caller_id: String,
    /// The To value of the B side.
    callee: String,
    /// The parties for the record and the user-state bus, and what each leg is.
    caller_party: Option<String>,
    callee_party: String,
    kinds: [LegKind; 2],
    targets: Vec<b2bua::Target>,
    a_sbc: Option<b2bua::Sbc>,
}

/// After routing: a local plan, or a number for the trunk.
enum Next {
    Local(Plan),
    Teams(String),
}

impl Switch {
    /// A switch; call tasks send their actions on `actions`.
    pub fn new(
        server_name: String,
        settings: watch::Receiver<Arc<Settings>>,
        actions: mpsc::Sender<(CallNo, CallAction)>,
        directory: Directory,
        states: broadcast::Sender<UserState>,
        policies: Option<Arc<PolicyEngine>>,
        trunk: watch::Receiver<crate::trunk::Paths>,
    ) -> Switch {
        Switch {
            server_name,
            settings,
            actions,
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            call_ids: HashMap::new(),
            clients: HashMap::new(),
            replacing: HashMap::new(),
            next: 1,
            ports: Arc::new(PortPool::new()),
            directory,
            states,
            policies,
            trunk,
            music: watch::channel(None).1,
            rooms: HashMap::new(),
        }
    }

    /// Plays `music` to held parties (see [`crate::media::moh`]); without it nothing is played.
    pub fn with_music(
        mut self,
        music: watch::Receiver<Option<Arc<crate::media::moh::Music>>>,
    ) -> Switch {
        self.music = music;
        self
    }

    /// Number of running calls.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// True when no call runs.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// True when `req` belongs to a running call (by Call-ID).
    pub fn owns(&self, req: &Request) -> bool {
        req.call_id()
            .is_some_and(|c| self.by_call_id.contains_key(c))
    }

    fn send(&mut self, no: CallNo, ev: b2bua::Input) {
        if let Some(tx) = self.calls.get(&no)
            && tx.try_send(CallEvent::Sip(ev)).is_err()
        {
            tracing::warn!(call = no, "call task busy; event dropped");
        }
    }

    fn by_req(&self, req: &Request) -> Option<CallNo> {
        req.call_id().and_then(|c| self.by_call_id.get(c)).copied()
    }

    /// A request inside a running call's dialog (BYE, re-INVITE, INFO, …).
    pub fn on_in_dialog(&mut self, key: TxnKey, from: Remote, req: Request) {
        if let Some(no) = self.by_req(&req) {
            self.send(no, b2bua::Input::Request { key, from, req });
        }
    }

    /// A REFER inside a running call (blind transfer, RFC 3515): the Refer-To is resolved here,
    /// where the accounts and bindings are, and the call gets the devices to ring with a new
    /// Call-ID for the transfer's leg.
    pub fn on_refer(&mut self, cx: InviteCx<'_>, key: TxnKey, from: Remote, req: Request) {
        let Some(no) = self.by_req(&req) else { return };
        if let Some(room) = self.referred_room(&req, from) {
            let input = if self.rooms.values().any(|n| *n == no) {
                let why = "a room does not refer its participants into a room";
                b2bua::Input::Refer {
                    key,
                    from,
                    req,
                    target: Box::new(Err(b2bua::ReferRefusal::Unsupported(why.into()))),
                }
            } else {
                b2bua::Input::ReferToRoom {
                    key,
                    from,
                    req,
                    room,
                }
            };
            return self.send(no, input);
        }
        if let Some((consult, keep, room)) = self.bridged_transfer(&req, no, from) {
            tracing::info!(room = %room.name, consultation = consult, "attended transfer to a party no INVITE with Replaces reaches: bridged in a private room");
            let pull = b2bua::Input::PullToRoom {
                room: room.clone(),
                keep,
            };
            self.send(consult, pull);
            let input = b2bua::Input::ReferToRoom {
                key,
                from,
                req,
                room,
            };
            return self.send(no, input);
        }
        let call_id = format!(
            "{:016x}{:016x}@{}",
            cx.rng.next_u64(),
            cx.rng.next_u64(),
            self.server_name
        );
        let target = self.transfer_target(&cx, &req, from, call_id);
        if let Ok(t) = &target {
            self.by_call_id.insert(t.call_id.clone(), no);
            if let Some(ids) = self.call_ids.get_mut(&no) {
                ids.push(t.call_id.clone());
            }
        }
        self.send(
            no,
            b2bua::Input::Refer {
                key,
                from,
                req,
                target: Box::new(target),
            },
        );
    }

    /// The conference room a phone's REFER names in its Refer-To (the URI a dial-in to which
    /// would join that room); `None` for anything else, a REFER from the trunk (it goes back
    /// through the trunk) and a Refer-To with Replaces included.
    fn referred_room(&self, req: &Request, from: Remote) -> Option<b2bua::RoomRef> {
        let uri = csps_sip::headers::NameAddr::parse(req.headers.get("Refer-To")?)
            .ok()?
            .uri;
        if self.trunk.borrow().is_trunk(&from)
            || !matches!(csps_sip::replaces::Replaces::in_uri(&uri), Ok(None))
        {
            return None;
        }
        let user = self.settings.borrow().conference_user.clone();
        let name = conference::room_of(&dialled(&uri)?, &user)?;
        Some(b2bua::RoomRef {
            name,
            host: uri.host,
        })
    }

    /// An attended transfer (RFC 5589 §7: a Refer-To with Replaces naming the referrer's own
    /// dialog of its consultation call, another call on this server) whose consultation party
    /// is no device of this gateway (a Teams party, a web phone), which an INVITE with Replaces
    /// cannot reach: the gateway bridges the transferee and that party in a private room
    /// instead, named `transfer+<call>` (no room a phone can dial: dial-in names have no `+`).
    /// The consultation call, the referrer's dialog there (the gateway's tag) and the room;
    /// `None` for anything else (a REFER from Teams or in a room, a consultation party that is
    /// a device, someone else's dialog), which the usual transfer handles.
    fn bridged_transfer(
        &self,
        req: &Request,
        no: CallNo,
        from: Remote,
    ) -> Option<(CallNo, String, b2bua::RoomRef)> {
        if self.trunk.borrow().is_trunk(&from) || self.rooms.values().any(|n| *n == no) {
            return None;
        }
        let uri = csps_sip::headers::NameAddr::parse(req.headers.get("Refer-To")?)
            .ok()?
            .uri;
        let r = csps_sip::replaces::Replaces::in_uri(&uri).ok()??;
        let (consult, named, other) = self.directory.replaced(&r, no)?;
        if other.is_some() {
            return None;
        }
        let referrer = self
            .directory
            .leg(no, req.call_id()?, req.from_hdr()?.tag()?)?;
        if b2bua::party_aor(&referrer.party) != b2bua::party_aor(&named.party) {
            return None;
        }
        let room = b2bua::RoomRef {
            name: format!("{}{no}", conference::BRIDGE_PREFIX),
            host: uri.host,
        };
        Some((consult, named.gateway_tag, room))
    }

    /// Where a REFER's Refer-To leads: the registered devices of a local user, or, with a
    /// Replaces (attended transfer), the other party of the referrer's consultation call; for
    /// a REFER from Teams, the Refer-To itself through the trunk ([`teams::referred`]); for a
    /// phone's REFER to a number routed to Teams, a call through the trunk made as the
    /// transferor's ([`Switch::trunk_transfer_target`]).
    fn transfer_target(
        &self,
        cx: &InviteCx<'_>,
        req: &Request,
        from: Remote,
        call_id: String,
    ) -> Result<b2bua::TransferTarget, b2bua::ReferRefusal> {
        let refer_to = req
            .headers
            .get("Refer-To")
            .ok_or_else(|| b2bua::ReferRefusal::Bad("no Refer-To header".into()))?;
        let uri = csps_sip::headers::NameAddr::parse(refer_to)
            .map_err(|e| b2bua::ReferRefusal::Bad(format!("bad Refer-To: {e}")))?
            .uri;
        let paths = self.trunk.borrow().clone();
        if paths.is_trunk(&from) {
            let r = teams::referred(&uri, from, &paths).map_err(|r| match r.status {
                400 => b2bua::ReferRefusal::Bad(r.warning),
                s => b2bua::ReferRefusal::Failed(s),
            })?;
            let local = (cx.local_of)(&r.to);
            let local = concrete_local(local, r.to.addr.ip()).unwrap_or(local);
            tracing::info!(to = %r.uri, "transfer by Teams through the trunk");
            return Ok(b2bua::TransferTarget {
                to: format!("<{}>", r.uri),
                party: r.uri.aor(),
                targets: vec![b2bua::Target {
                    to: r.to,
                    uri: r.uri,
                    local,
                    sbc: Some(r.sbc),
                }],
                call_id,
                replaces: None,
                referrer: None,
                asserted: None,
            });
        }
        let replaces = csps_sip::replaces::Replaces::in_uri(&uri)
            .map_err(|e| b2bua::ReferRefusal::Bad(e.to_string()))?;
        if let Some(r) = replaces {
            return self.attended_target(req, r, call_id);
        }
        let dialled = dialled(&uri)
            .ok_or_else(|| b2bua::ReferRefusal::Bad("Refer-To names no user".into()))?;
        let settings = self.settings.borrow().clone();
        let emergency = rules::is_emergency(&dialled, &settings.emergency_numbers);
        // The transferor: the phone whose dialog the REFER came in (a dialog's own tag is the
        // From tag of the requests its device sends).
        let transferor = self.by_req(req).and_then(|no| {
            let from = req.from_hdr()?;
            self.directory.leg(no, req.call_id()?, from.tag()?)
        });
        let account = transferor.as_ref().and_then(|l| account_of(&l.party));
        let query = RouteQuery {
            dialled: &dialled,
            caller: account.as_ref().map(|(u, d)| (u.as_str(), d.as_str())),
            domain: &uri.host,
            device: None,
            emergency,
        };
        let (user, domain) = match route(&query, cx.accounts, None, &Pinned::builtin()) {
            Route::Local { user, domain } => (user, domain),
            Route::Reject { code, .. } => return Err(b2bua::ReferRefusal::Failed(code)),
            Route::Teams(number) => {
                let by = transferor.map(|l| l.party);
                return self.trunk_transfer_target(cx, (&number, emergency), by, account, call_id);
            }
            Route::EmergencyUnrouted => {
                let number = rules::dial_string(&dialled);
                let by = transferor.map(|l| l.party);
                return self.trunk_transfer_target(cx, (&number, true), by, account, call_id);
            }
            Route::WebUser(_) => return Err(b2bua::ReferRefusal::Failed(501)),
        };
        let mut devices = Vec::new();
        let targets = self.devices(cx, &user, &domain, Reach::Devices, &mut devices);
        if targets.is_empty() {
            return Err(b2bua::ReferRefusal::Failed(480));
        }
        let aor = csps_sip::registrar::aor(&user, &domain);
        Ok(b2bua::TransferTarget {
            targets,
            to: format!("<{aor}>"),
            party: aor,
            call_id,
            replaces: None,
            referrer: None,
            asserted: None,
        })
    }

    /// A phone's transfer to `number` through the Teams trunk. For Teams the new call is the
    /// transferor's: Direct Routing knows the gateway's users by their numbers, so it goes out
    /// as a call the transferor's account makes ([`teams::outgoing`]: only an activated
    /// account, 403 otherwise, except for an emergency number), with the transferor's number
    /// asserted in From, P-Asserted-Identity and Referred-By; only that phone (`party`, of
    /// `account`) may make it.
    fn trunk_transfer_target(
        &self,
        cx: &InviteCx<'_>,
        (number, emergency): (&str, bool),
        party: Option<String>,
        account: Option<(String, String)>,
        call_id: String,
    ) -> Result<b2bua::TransferTarget, b2bua::ReferRefusal> {
        let paths = self.trunk.borrow().clone();
        let caller = account.as_ref().map(|(u, d)| (u.as_str(), d.as_str()));
        let out = teams::outgoing(number, caller, emergency, cx.accounts, &paths).map_err(|r| {
            tracing::info!(%number, status = r.status, "transfer to Teams refused: {}", r.warning);
            b2bua::ReferRefusal::Failed(r.status)
        })?;
        let local = (cx.local_of)(&out.to);
        let local = concrete_local(local, out.to.addr.ip()).unwrap_or(local);
        tracing::info!(%number, proxy = %out.uri.host, "transfer by a phone through the trunk");
        Ok(b2bua::TransferTarget {
            party: format!("sip:{number}@{}", out.uri.host),
            to: out.callee,
            targets: vec![b2bua::Target {
                to: out.to,
                uri: out.uri,
                local,
                sbc: Some(out.sbc),
            }],
            call_id,
            replaces: None,
            referrer: party.as_deref().map(b2bua::party_aor),
            asserted: Some(out.caller),
        })
    }

    /// Attended transfer (RFC 5589 §7): the Refer-To's Replaces names the referrer's dialog in
    /// its consultation call, another call on this server; the transfer goes to that call's
    /// other device, whose own dialog with the gateway the new INVITE replaces (the gateway is
    /// a B2BUA: the referrer's dialog is not the target's). Only the referrer's own dialog can
    /// be named: the call checks that the referrer is the party of the leg it names.
    fn attended_target(
        &self,
        req: &Request,
        r: csps_sip::replaces::Replaces,
        call_id: String,
    ) -> Result<b2bua::TransferTarget, b2bua::ReferRefusal> {
        let Some(no) = self.by_req(req) else {
            return Err(b2bua::ReferRefusal::Failed(481));
        };
        // A Replaces that names no dialog here: the NOTIFY says 481 (RFC 3891 §3).
        let (_, named, other) = self
            .directory
            .replaced(&r, no)
            .ok_or(b2bua::ReferRefusal::Failed(481))?;
        let other = other.ok_or_else(|| {
            b2bua::ReferRefusal::Unsupported(
                "the consultation call's other party is not a device of this gateway".into(),
            )
        })?;
        let aor = b2bua::party_aor(&other.party);
        let referrer = b2bua::party_aor(&named.party);
        Ok(b2bua::TransferTarget {
            referrer: Some(referrer),
            to: other.party.clone(),
            party: aor,
            call_id,
            // As the target holds the dialog: its own tag is the to-tag.
            replaces: Some(csps_sip::replaces::Replaces {
                call_id: other.call_id.clone(),
                to_tag: other.device_tag.clone(),
                from_tag: other.gateway_tag.clone(),
                early_only: false,
            }),
            targets: vec![other.target],
            asserted: None,
        })
    }

    /// An ACK the transaction layer did not absorb (ACK to a 2xx).
    pub fn on_ack(&mut self, req: Request) {
        if let Some(no) = self.by_req(&req) {
            self.send(no, b2bua::Input::Ack(req));
        }
    }

    /// A CANCEL of a caller's INVITE.
    pub fn on_cancel(&mut self, req: Request) {
        if let Some(no) = self.by_req(&req) {
            self.send(no, b2bua::Input::Cancel(req));
        }
    }

    /// A response to one of the calls' client transactions; false when it is not a call's.
    pub fn on_response(&mut self, key: TxnKey, resp: Response) -> bool {
        let Some(&(no, tag)) = self.clients.get(&key) else {
            return false;
        };
        self.send(no, b2bua::Input::Response { tag, resp });
        true
    }

    /// A client transaction of a call timed out.
    pub fn on_timeout(&mut self, key: TxnKey) {
        if let Some(&(no, tag)) = self.clients.get(&key) {
            self.send(no, b2bua::Input::Timeout { tag });
        }
    }

    /// A transaction ended: forget its routing entry.
    pub fn on_terminated(&mut self, key: TxnKey) {
        self.clients.remove(&key);
    }

    /// Carries out one call task's action on the transaction layer.
    pub fn apply(&mut self, txns: &mut Transactions, no: CallNo, action: CallAction) {
        let now = Instant::now();
        match action {
            CallAction::Respond(key, resp) => {
                if resp.status >= 200
                    && let Some((_, call_id)) = self.replacing.remove(&key)
                    && resp.status >= 300
                {
                    self.forget_call_id(no, &call_id);
                }
                if let Err(e) = txns.respond(now, &key, resp) {
                    tracing::debug!(call = no, %key, "answer not sent: {e}");
                }
            }
            CallAction::Send { tag, to, req } => match txns.send_request(now, to, req) {
                Ok(key) => {
                    self.clients.insert(key, (no, tag));
                }
                Err(e) => {
                    tracing::debug!(call = no, "request not sent: {e}");
                    self.send(no, b2bua::Input::Timeout { tag });
                }
            },
            CallAction::Stateless(to, req) => {
                txns.send_stateless(to, csps_sip::Message::Request(req));
            }
            CallAction::ToRoom(leg) => self.move_to_room(no, *leg),
            CallAction::RoomOutcome {
                call,
                call_id,
                outcome,
            } => self.room_outcome(no, call, call_id, outcome),
            CallAction::Ended => {
                self.calls.remove(&no);
                self.rooms.retain(|_, n| *n != no);
                self.replacing.retain(|_, (n, _)| *n != no);
                self.directory.remove(no);
                if let Some(ids) = self.call_ids.remove(&no) {
                    for id in ids {
                        self.by_call_id.remove(&id);
                    }
                }
                self.clients.retain(|_, (n, _)| *n != no);
            }
        }
    }

    /// A new INVITE (no To tag) from `from`: authenticate, route, and start the call; or answer
    /// it with the refusal.
    pub fn on_invite(&mut self, cx: InviteCx<'_>, key: TxnKey, from: Remote, req: Request) {
        let now = Instant::now();
        let settings = self.settings.borrow().clone();
        // The To tag of a refusal (drawn up front: the closure below cannot borrow the RNG).
        let to_tag = cx.rng.next_u64();
        let respond =
            |txns: &mut Transactions, status: u16, reason: &str, warning: Option<&str>| {
                let mut r = req.response(status, reason);
                if let Some(to) = req.headers.get("To") {
                    r.headers.set("To", format!("{to};tag={to_tag:016x}"));
                }
                if let Some(w) = warning {
                    r.headers.push(
                        "Warning",
                        csps_sip::validate::warning_value(&self.server_name, w),
                    );
                }
                if status != 482 {
                    // A loop is not a call attempt; everything else refused here is.
                    self.directory.refused(status);
                }
                if let Err(e) = txns.respond(now, &key, r) {
                    tracing::debug!(%key, "cannot answer INVITE: {e}");
                }
            };
        let refuse = |txns: &mut Transactions, status: u16, warning: Option<&str>| {
            respond(
                txns,
                status,
                csps_sip::message::reason_phrase(status),
                warning,
            );
        };
        if self.owns(&req) {
            // Same Call-ID as a running call but no To tag: a merged or looped request.
            refuse(cx.txns, 482, None);
            return;
        }
        let dialled = dialled(&req.uri).unwrap_or_default();
        let emergency = rules::is_emergency(&dialled, &settings.emergency_numbers);
        let paths = self.trunk.borrow().clone();
        // The caller's device, then each device of the callee, for the quirks.
        let mut devices = vec![(from.addr, Device::new(req.headers.get("User-Agent")))];
        let mut routing = Pinned::builtin();
        let plan = if paths.is_trunk(&from) {
            // From Teams: the proxy proved who it is with its certificate; no digest challenge.
            match teams::incoming(&req, &dialled, cx.accounts, &paths.fqdn) {
                Ok(inc) => {
                    let targets =
                        self.devices(&cx, &inc.user, &inc.domain, Reach::Devices, &mut devices);
                    Plan {
                        caller_id: inc.caller,
                        callee: format!("<{}>", csps_sip::registrar::aor(&inc.user, &inc.domain)),
                        caller_party: Some(inc.party),
                        callee_party: csps_sip::registrar::aor(&inc.user, &inc.domain),
                        kinds: [LegKind::Teams, LegKind::Phone],
                        targets,
                        a_sbc: Some(inc.sbc),
                    }
                }
                Err(r) => {
                    tracing::info!(number = %dialled, status = r.status, "call from Teams refused: {}", r.warning);
                    refuse(cx.txns, r.status, Some(&r.warning));
                    return;
                }
            }
        } else {
            let caller =
                match cx
                    .registrar
                    .authorize(SystemTime::now(), &req, from, cx.accounts, cx.rng)
                {
                    Ok(c) => Some(c),
                    // "Always routed, whatever else fails": an emergency call is not challenged.
                    Err(_) if emergency => None,
                    Err(resp) => {
                        if let Err(e) = cx.txns.respond(now, &key, resp) {
                            tracing::debug!(%key, "cannot answer INVITE: {e}");
                        }
                        return;
                    }
                };
            if let Some((user, domain)) = caller.as_ref()
                && req.headers.get("Replaces").is_some()
            {
                // RFC 3891: the Replaces, not the Request-URI, says where this INVITE goes.
                let values: Vec<&str> = req.headers.values("Replaces").collect();
                let named = match values.as_slice() {
                    [one] => csps_sip::replaces::Replaces::parse(one).map_err(|e| e.to_string()),
                    _ => Err("more than one Replaces header".to_owned()),
                };
                let replaces = match named {
                    Ok(r) => r,
                    Err(why) => return refuse(cx.txns, 400, Some(&why)),
                };
                let Some(&no) = self.by_call_id.get(&replaces.call_id) else {
                    return refuse(
                        cx.txns,
                        481,
                        Some("the Replaces names no dialog of this gateway"),
                    );
                };
                if self.rooms.values().any(|n| *n == no) {
                    let why = "the Replaces names a conference participant's dialog (dial the conference instead)";
                    return refuse(cx.txns, 501, Some(why));
                }
                let Some(call_id) = req.call_id().map(str::to_owned) else {
                    return refuse(cx.txns, 400, None);
                };
                let party = asserted(cx.accounts, user, domain);
                let local = concrete_local(cx.local, from.addr.ip()).unwrap_or(cx.local);
                let replacement = b2bua::Replacement {
                    key,
                    from,
                    local,
                    req: req.clone(),
                    replaces,
                    party,
                };
                let event = CallEvent::Sip(b2bua::Input::Replace(Box::new(replacement)));
                let ended = Some((481, "the call named by the Replaces ended"));
                let refused = match self.calls.get(&no) {
                    Some(tx) => match tx.try_send(event) {
                        Ok(()) => None,
                        Err(mpsc::error::TrySendError::Full(_)) => Some((503, "the call is busy")),
                        Err(mpsc::error::TrySendError::Closed(_)) => ended,
                    },
                    None => ended,
                };
                match refused {
                    None => {
                        self.by_call_id.insert(call_id.clone(), no);
                        if let Some(ids) = self.call_ids.get_mut(&no) {
                            ids.push(call_id.clone());
                        }
                        self.replacing.insert(key, (no, call_id));
                    }
                    Some((status, why)) => refuse(cx.txns, status, Some(why)),
                }
                return;
            }
            if let Some((user, domain)) = caller.as_ref()
                && let Some(room) = conference::room_of(&dialled, &settings.conference_user)
            {
                let party = csps_sip::registrar::aor(user, domain);
                let local = concrete_local(cx.local, from.addr.ip()).unwrap_or(cx.local);
                let join = conference::Join {
                    key,
                    from,
                    local,
                    invite: req,
                    party,
                    media: self.room_media(&settings),
                };
                if let Err(a) = self.enter_room(room, &settings, conference::Arrival::Join(join))
                    && let conference::Arrival::Join(j) = *a
                {
                    let mut r = j.invite.response(503, "Service Unavailable");
                    r.headers.push("Retry-After", "1");
                    self.directory.refused(503);
                    if let Err(e) = cx.txns.respond(now, &j.key, r) {
                        tracing::debug!(key = %j.key, "cannot answer INVITE: {e}");
                    }
                }
                return;
            }
            let domain = caller
                .as_ref()
                .map(|c| c.1.clone())
                .unwrap_or_else(|| settings.default_sip_domain.clone());
            // The call keeps the routing and quirks modules it began with.
            if let Some(e) = self.policies.as_ref() {
                routing = e.pin(PolicyKind::Routing);
            }
            let query = RouteQuery {
                dialled: &dialled,
                caller: caller.as_ref().map(|(u, d)| (u.as_str(), d.as_str())),
                domain: &domain,
                device: req.headers.get("User-Agent"),
                emergency,
            };
            let caller_ref = caller.as_ref().map(|(u, d)| (u.as_str(), d.as_str()));
            let caller_party = caller.as_ref().map(|(u, d)| csps_sip::registrar::aor(u, d));
            let next = match route(&query, cx.accounts, self.policies.as_deref(), &routing) {
                Route::Local { user, domain } => Next::Local(self.local_plan(
                    &cx,
                    (&user, &domain),
                    Reach::Devices,
                    caller_ref,
                    &mut devices,
                )),
                Route::EmergencyUnrouted => Next::Teams(rules::dial_string(&dialled)),
                Route::Teams(number) => Next::Teams(number),
                Route::WebUser(user) => {
                    let plan = self.local_plan(
                        &cx,
                        (&user, &domain),
                        Reach::WebPhones,
                        caller_ref,
                        &mut devices,
                    );
                    if plan.targets.is_empty() {
                        let why =
                            format!("routed to web user {user}, who has no web phone running");
                        refuse(cx.txns, 480, Some(&why));
                        return;
                    }
                    Next::Local(plan)
                }
                Route::Reject { code, reason } => {
                    respond(cx.txns, code, &reason, None);
                    return;
                }
            };
            match next {
                Next::Local(plan) => plan,
                Next::Teams(number) => {
                    match teams::outgoing(&number, caller_ref, emergency, cx.accounts, &paths) {
                        Ok(out) => {
                            let local = (cx.local_of)(&out.to);
                            let local = concrete_local(local, out.to.addr.ip()).unwrap_or(local);
                            tracing::info!(%number, proxy = %out.uri.host, emergency, "call out through the Teams trunk");
                            devices.push((out.to.addr, Device::new(None)));
                            Plan {
                                caller_id: out.caller,
                                callee: out.callee,
                                caller_party,
                                callee_party: format!("sip:{number}@{}", out.uri.host),
                                kinds: [LegKind::Phone, LegKind::Teams],
                                targets: vec![b2bua::Target {
                                    to: out.to,
                                    uri: out.uri,
                                    local,
                                    sbc: Some(out.sbc),
                                }],
                                a_sbc: None,
                            }
                        }
                        Err(r) => {
                            if emergency {
                                tracing::warn!(number = %dialled, "emergency call with no route: {}", r.warning);
                            } else {
                                tracing::info!(%number, status = r.status, "call to Teams refused: {}", r.warning);
                            }
                            refuse(cx.txns, r.status, Some(&r.warning));
                            return;
                        }
                    }
                }
            }
        };
        let Plan {
            caller_id,
            callee,
            caller_party,
            callee_party,
            kinds,
            targets,
            a_sbc,
        } = plan;
        if targets.is_empty() {
            refuse(cx.txns, 480, Some("the callee has no registered device"));
            return;
        }
        let local = concrete_local(cx.local, from.addr.ip()).unwrap_or(cx.local);
        let media = match task::bind_media(
            &self.ports,
            local.ip(),
            targets[0].local.ip(),
            settings.min_rtp_port,
            settings.max_rtp_port,
        ) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("no media ports: {e}");
                refuse(cx.txns, 503, Some("no free media port"));
                return;
            }
        };
        let b_call_id = format!(
            "{:016x}{:016x}@{}",
            cx.rng.next_u64(),
            cx.rng.next_u64(),
            self.server_name
        );
        let Some(a_call_id) = req.call_id().map(str::to_owned) else {
            refuse(cx.txns, 400, None);
            return;
        };
        let no = self.next;
        self.next += 1;
        let (tx, rx) = mpsc::channel(256);
        self.calls.insert(no, tx.clone());
        self.directory.insert(no, tx);
        self.by_call_id.insert(a_call_id.clone(), no);
        self.by_call_id.insert(b_call_id.clone(), no);
        self.call_ids.insert(no, vec![a_call_id, b_call_id.clone()]);
        // Fixed for the call's life, so its hold offers and its music agree.
        let music = self.music.borrow().clone();
        let setup = b2bua::Setup {
            key,
            from,
            local,
            invite: req,
            caller: caller_id,
            caller_party: caller_party.clone(),
            callee,
            targets,
            b_call_id,
            relay_a: SocketAddr::new(local.ip(), 0),
            relay_b: SocketAddr::new(local.ip(), 0),
            agent: self.server_name.clone(),
            a_sbc,
            srtp: sdes::SrtpPolicy {
                mode: settings.srtp,
                plain_keys: settings.srtp_over_plain,
            },
            music_on_hold: music.is_some(),
            narrowband: settings.use_8khz,
        };
        tokio::spawn(task::run(task::CallTask {
            no,
            setup,
            media,
            events: rx,
            actions: self.actions.clone(),
            states: self.states.clone(),
            caller: caller_party,
            callee: callee_party,
            kinds,
            emergency,
            routing_policy: routing.version(),
            quirks: self
                .policies
                .clone()
                .map(|engine| (CallQuirks::pin(engine), devices)),
            directory: self.directory.clone(),
            music,
        }));
    }
}

impl Switch {
    /// Hands `arrival` to room `room`, starting the room when it does not run; the room's
    /// number, or the arrival back when the room is too busy to take it. The arrival's dialog
    /// is routed to the room from now on.
    fn enter_room(
        &mut self,
        room: String,
        settings: &Settings,
        arrival: conference::Arrival,
    ) -> Result<CallNo, Box<conference::Arrival>> {
        let Some(call_id) = arrival.call_id().map(str::to_owned) else {
            return Err(Box::new(arrival));
        };
        let mut arrival = Box::new(arrival);
        if let Some(&no) = self.rooms.get(&room)
            && let Some(tx) = self.calls.get(&no)
        {
            match tx.try_send(CallEvent::Join(arrival)) {
                Ok(()) => {
                    self.by_call_id.insert(call_id.clone(), no);
                    if let Some(ids) = self.call_ids.get_mut(&no) {
                        ids.push(call_id);
                    }
                    return Ok(no);
                }
                Err(mpsc::error::TrySendError::Full(CallEvent::Join(a))) => return Err(a),
                // The room ended and its `Ended` is still queued: a new room takes over.
                Err(mpsc::error::TrySendError::Closed(CallEvent::Join(a))) => arrival = a,
                Err(_) => return Ok(no),
            }
        }
        let no = self.next;
        self.next += 1;
        let (tx, rx) = mpsc::channel(256);
        self.calls.insert(no, tx.clone());
        self.directory.insert(no, tx);
        self.by_call_id.insert(call_id.clone(), no);
        self.call_ids.insert(no, vec![call_id]);
        self.rooms.insert(room.clone(), no);
        tokio::spawn(conference::run(conference::RoomTask {
            no,
            room,
            user: settings.conference_user.clone(),
            first: *arrival,
            events: rx,
            actions: self.actions.clone(),
            states: self.states.clone(),
            directory: self.directory.clone(),
            agent: self.server_name.clone(),
        }));
        Ok(no)
    }

    /// What a room's participant arriving now gets its media from.
    fn room_media(&self, settings: &Settings) -> conference::RoomMedia {
        conference::RoomMedia {
            ports: self.ports.clone(),
            rtp_range: (settings.min_rtp_port, settings.max_rtp_port),
            srtp: sdes::SrtpPolicy {
                mode: settings.srtp,
                plain_keys: settings.srtp_over_plain,
            },
        }
    }

    /// Call `call` hands its leg to a room: the room re-INVITEs it, and the leg's requests go
    /// to the room meanwhile; a room too busy to take it is a 503 for the call.
    fn move_to_room(&mut self, call: CallNo, leg: b2bua::Handover) {
        let settings = self.settings.borrow().clone();
        let call_id = leg.dialog.call_id.clone();
        let room = leg.room.name.clone();
        let arrival = conference::Arrival::Move(conference::Move {
            call,
            leg,
            media: self.room_media(&settings),
        });
        match self.enter_room(room, &settings, arrival) {
            Ok(_) => {
                if let Some(ids) = self.call_ids.get_mut(&call) {
                    ids.retain(|c| *c != call_id);
                }
            }
            Err(a) => {
                let local_seq = match *a {
                    conference::Arrival::Move(m) => m.leg.dialog.local_seq,
                    conference::Arrival::Join(_) => 0,
                };
                let outcome = b2bua::RoomOutcome::Failed {
                    status: 503,
                    local_seq,
                    gone: false,
                };
                self.send(call, b2bua::Input::RoomOutcome(outcome));
            }
        }
    }

    /// Call `no` no longer uses `call_id`: requests with it are new requests again.
    fn forget_call_id(&mut self, no: CallNo, call_id: &str) {
        if let Some(ids) = self.call_ids.get_mut(&no) {
            ids.retain(|c| c != call_id);
        }
        if self.by_call_id.get(call_id) == Some(&no) {
            self.by_call_id.remove(call_id);
        }
    }

    /// Room `room` says how the move of call `call`'s leg (dialog `call_id`) ended: a leg that
    /// is not in the room and whose dialog goes on is routed to its call again.
    fn room_outcome(
        &mut self,
        room: CallNo,
        call: CallNo,
        call_id: String,
        outcome: b2bua::RoomOutcome,
    ) {
        if let b2bua::RoomOutcome::Failed { gone, .. } = outcome {
            if let Some(ids) = self.call_ids.get_mut(&room) {
                ids.retain(|c| *c != call_id);
            }
            match self.call_ids.get_mut(&call) {
                Some(ids) if !gone => {
                    ids.push(call_id.clone());
                    self.by_call_id.insert(call_id, call);
                }
                _ => {
                    self.by_call_id.remove(&call_id);
                }
            }
        }
        self.send(call, b2bua::Input::RoomOutcome(outcome));
    }

    /// The registered devices of `user@domain` as call targets (noted in `devices` for the
    /// quirks).
    /// The plan of a call to the local account `user@domain`, ringing what `reach` says.
    fn local_plan(
        &self,
        cx: &InviteCx<'_>,
        (user, domain): (&str, &str),
        reach: Reach,
        caller: Option<(&str, &str)>,
        devices: &mut Vec<(SocketAddr, Device)>,
    ) -> Plan {
        let aor = csps_sip::registrar::aor(user, domain);
        let targets = self.devices(cx, user, domain, reach, devices);
        let caller_id = match caller {
            Some((u, d)) => asserted(cx.accounts, u, d),
            None => "<sip:anonymous@anonymous.invalid>".to_owned(),
        };
        Plan {
            caller_id,
            callee: format!("<{aor}>"),
            caller_party: caller.map(|(u, d)| csps_sip::registrar::aor(u, d)),
            callee_party: aor,
            kinds: [LegKind::Phone, LegKind::Phone],
            targets,
            a_sbc: None,
        }
    }

    fn devices(
        &self,
        cx: &InviteCx<'_>,
        user: &str,
        domain: &str,
        reach: Reach,
        devices: &mut Vec<(SocketAddr, Device)>,
    ) -> Vec<b2bua::Target> {
        let aor = csps_sip::registrar::aor(user, domain);
        cx.registrar
            .lookup(&aor)
            .into_iter()
            .filter(|b| {
                reach == Reach::Devices
                    || b.user_agent.as_deref() == Some(crate::webphone::USER_AGENT)
            })
            .filter_map(|b| {
                let uri = csps_sip::headers::NameAddr::parse(&b.contact).ok()?.uri;
                let local = concrete_local((cx.local_of)(&b.source), b.source.addr.ip())?;
                devices.push((b.source.addr, Device::new(b.user_agent.as_deref())));
                Some(b2bua::Target {
                    to: b.source,
                    uri,
                    local,
                    sbc: None,
                })
            })
            .collect()
    }
}

/// Which of a local account's registered devices a call rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// Every device (desk phones and web phones).
    Devices,
    /// Only its web phones (a routing policy's `web-user`).
    WebPhones,
}

/// What a Request-URI or Refer-To dials: its user part, percent-decoded.
fn dialled(uri: &csps_sip::Uri) -> Option<String> {
    uri.user
        .as_deref()
        .map(|u| csps_sip::registrar::percent_decode(u).into_owned())
}

/// The gateway's address `local` (its socket's or connection's) as written into Via, Contact
/// and SDP towards `peer`: a wildcard listener's unspecified IP becomes the one the kernel would
/// use towards the peer; `None` when it has none.
fn concrete_local(mut local: SocketAddr, peer: std::net::IpAddr) -> Option<SocketAddr> {
    if local.ip().is_unspecified() {
        local.set_ip(crate::media::local_ip_towards(peer)?);
    }
    Some(local)
}

/// A local user as the gateway asserts it: `"Name" <sip:user@domain>`, or `<sip:user@domain>`
/// without a display name.
fn asserted(accounts: &AccountCache, user: &str, domain: &str) -> String {
    let uri = csps_sip::registrar::aor(user, domain);
    match accounts.display_name(user, domain) {
        Some(n) => format!("{} <{uri}>", quote(n)),
        None => format!("<{uri}>"),
    }
}

fn quote(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| !matches!(c, '"' | '\\' | '\r' | '\n'))
        .collect();
    format!("\"{clean}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use csps_sip::replaces::Replaces;

    fn leg(call_id: &str, gw: &str, dev: &str, party: &str) -> b2bua::LegDialog {
        let to: SocketAddr = "192.0.2.7:5060".parse().expect("addr");
        b2bua::LegDialog {
            call_id: call_id.into(),
            gateway_tag: gw.into(),
            device_tag: dev.into(),
            target: b2bua::Target {
                to: Remote {
                    transport: csps_sip::Transport::Udp,
                    addr: to,
                    flow: None,
                },
                uri: csps_sip::Uri::parse("sip:carol@192.0.2.7").expect("uri"),
                local: "192.0.2.1:5060".parse().expect("addr"),
                sbc: None,
            },
            party: party.into(),
        }
    }

    /// A Replaces finds the named leg of another call (tags in either order) and that call's
    /// other leg; the referrer's own call, a wrong tag or a one-legged call give no target.
    #[test]
    fn replaces_names_a_leg_of_another_call() {
        let d = Directory::default();
        d.set_dialogs(
            1,
            vec![
                leg("a1", "g1", "d1", "<sip:alice@x>"),
                leg("b1", "g2", "d2", "<sip:bob@x>"),
            ],
        );
        d.set_dialogs(
            2,
            vec![
                leg("consult", "g3", "bob-tag", "\"Bob\" <sip:bob@x>"),
                leg("b2", "g4", "carol-tag", "<sip:carol@x>"),
            ],
        );
        let r = |s: &str| Replaces::parse(s).expect("replaces");
        let (no, named, other) = d
            .replaced(&r("consult;to-tag=g3;from-tag=bob-tag"), 1)
            .expect("found");
        assert_eq!((no, named.party.as_str()), (2, "\"Bob\" <sip:bob@x>"));
        assert_eq!(other.expect("other leg").device_tag, "carol-tag");
        assert!(
            d.replaced(&r("consult;to-tag=bob-tag;from-tag=g3"), 1)
                .is_some()
        );
        assert!(d.replaced(&r("consult;to-tag=g3;from-tag=x"), 1).is_none());
        assert!(
            d.replaced(&r("consult;to-tag=g3;from-tag=bob-tag"), 2)
                .is_none()
        );
        d.set_dialogs(2, vec![leg("consult", "g3", "bob-tag", "<sip:bob@x>")]);
        let (_, _, other) = d
            .replaced(&r("consult;to-tag=g3;from-tag=bob-tag"), 1)
            .expect("found");
        assert!(other.is_none(), "a Teams leg is not published");
        d.remove(2);
        assert!(
            d.replaced(&r("consult;to-tag=g3;from-tag=bob-tag"), 1)
                .is_none()
        );
    }
}
