//! One web phone's SIP line, sans-IO: a user agent of one account with one call at a time, as a
//! desk phone is. It registers the account's AoR (the gateway's own registrar then forks calls to
//! it beside the desk phones), places and answers calls, and follows hold and media changes. It
//! speaks over a reliable in-process flow, so it keeps no retransmission timers (RFC 3261 §17.1.1.2:
//! Timer A is for unreliable transports); it answers the gateway's digest challenges with the
//! account's stored HA1, as the account's own phone would with its password.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use csps_sip::dialog::{Dialog, cancel};
use csps_sip::digest::{Algorithm, DigestParams, authorization};
use csps_sip::headers::NameAddr;
use csps_sip::sdp::{Codec, Direction, Sdp};
use csps_sip::transaction::ack_for;
use csps_sip::{Headers, Message, Method, Request, Response, SipHeaders, Uri};
use serde::Serialize;

use crate::store::{Ha1, HashAlgorithm};

/// How long a registration asks for; refreshed at half of what the registrar grants.
const REGISTER_EXPIRES: u32 = 300;
/// How long to wait before registering again after a refusal.
const REGISTER_RETRY: Duration = Duration::from_secs(30);
/// An outgoing call with no final answer by then is given up (the gateway answers long before).
const INVITE_GIVE_UP: Duration = Duration::from_secs(200);
/// The RTP payload type the line offers Opus with (the browser side is Opus only).
const OPUS_PT: u8 = 111;

/// Where the line's call stands, as the web page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PhoneState {
    /// The browser's media is not connected yet.
    Connecting,
    /// Ready: registered, no call.
    Idle,
    /// An outgoing call, no answer yet.
    Calling,
    /// An outgoing call, the far end rings.
    Ringing,
    /// A call rings in.
    Incoming,
    /// In a call.
    InCall,
    /// In a call the web phone holds.
    Held,
    /// The phone was stopped.
    Closed,
}

/// What the line says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineView {
    /// The call state.
    pub state: PhoneState,
    /// The other party of the current call.
    pub peer: Option<String>,
    /// How the last call ended.
    pub ended: Option<String>,
}

/// Where the call's media goes, for the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaPath {
    /// The gateway's RTP address for this leg.
    pub remote: SocketAddr,
    /// The payload type Opus has in this call.
    pub pt: u8,
    /// Whether the line sends (the far end did not hold the call or make it `inactive`).
    pub send: bool,
}

/// Why a user's command was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The phone is in another state.
    #[error("{0}")]
    NotNow(&'static str),
    /// The number or address cannot be called.
    #[error("cannot call {0:?}: give a user name, a number or a sip: address")]
    BadTarget(String),
}

/// What the line is configured with.
#[derive(Clone, Debug)]
pub struct LineConfig {
    /// The account's user name.
    pub username: String,
    /// The account's domain (its AoR is `sip:username@domain`).
    pub domain: String,
    /// Shown to the called party.
    pub display_name: Option<String>,
    /// The account's HA1 values (what answers a challenge).
    pub ha1: Vec<Ha1>,
    /// The line's own address as the gateway sees it (Via, Contact).
    pub local: SocketAddr,
    /// Where the line receives RTP from the gateway (its SDP).
    pub media: SocketAddr,
    /// `+sip.instance` (RFC 5626), so a re-registration replaces its own binding.
    pub instance: String,
}

#[derive(Debug)]
enum CallState {
    /// We sent the INVITE (kept in [`Call::invite`]); the far end may ring; we may have cancelled.
    Calling { ringing: bool, cancelled: bool },
    /// An INVITE rings in (kept to answer it).
    Incoming { invite: Box<Request> },
    /// Confirmed.
    Up,
}

#[derive(Debug)]
struct Call {
    state: CallState,
    call_id: String,
    /// Our INVITE (outgoing calls), for CANCEL, ACK of a failure and the authenticated retry.
    invite: Option<Request>,
    dialog: Option<Dialog>,
    peer: String,
    media: Option<MediaPath>,
    /// The direction the far end's last SDP asked for (sendonly or inactive: it holds us).
    their_direction: Direction,
    /// The web phone holds the call (its re-INVITE offered sendonly).
    held: bool,
    /// Our re-INVITE (hold or resume) still without a final answer.
    reinvite: Option<Request>,
    since: Instant,
    auth_tries: u8,
}

impl Call {
    /// A call in `state` since `now`, before any media or hold.
    fn new(
        state: CallState,
        call_id: String,
        invite: Option<Request>,
        dialog: Option<Dialog>,
        peer: String,
        now: Instant,
    ) -> Call {
        Call {
            state,
            call_id,
            invite,
            dialog,
            peer,
            media: None,
            their_direction: Direction::SendRecv,
            held: false,
            reinvite: None,
            since: now,
            auth_tries: 0,
        }
    }
}

/// The SIP user agent of one web phone.
#[derive(Debug)]
pub struct Line {
    cfg: LineConfig,
    reg_call_id: String,
    reg_seq: u32,
    reg_tries: u8,
    registered: bool,
    /// When to (re-)register; `None` while a REGISTER is out or after unregistering.
    register_at: Option<Instant>,
    connected: bool,
    closed: bool,
    /// Closed, and the REGISTER that removes the binding is out.
    unregistering: bool,
    call: Option<Call>,
    ended: Option<String>,
    sdp_session: u64,
    sdp_version: u64,
    out: Vec<Message>,
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn algorithm(a: HashAlgorithm) -> Algorithm {
    match a {
        HashAlgorithm::Md5 => Algorithm::Md5,
        HashAlgorithm::Sha256 => Algorithm::Sha256,
    }
}

impl Line {
    /// A line not yet registered (it registers once the browser's media connects).
    pub fn new(cfg: LineConfig) -> Line {
        Line {
            cfg,
            reg_call_id: format!("{}@webphone", random_token()),
            reg_seq: 0,
            reg_tries: 0,
            registered: false,
            register_at: None,
            connected: false,
            closed: false,
            unregistering: false,
            call: None,
            ended: None,
            sdp_session: rand::random::<u32>().into(),
            sdp_version: 1,
            out: Vec::new(),
        }
    }

    /// The account's address of record.
    pub fn aor(&self) -> String {
        csps_sip::registrar::aor(&self.cfg.username, &self.cfg.domain)
    }

    /// What the page shows.
    pub fn view(&self) -> LineView {
        let state = match &self.call {
            _ if self.closed => PhoneState::Closed,
            None if !self.connected || !self.registered => PhoneState::Connecting,
            None => PhoneState::Idle,
            Some(c) => match c.state {
                CallState::Calling { ringing: false, .. } => PhoneState::Calling,
                CallState::Calling { ringing: true, .. } => PhoneState::Ringing,
                CallState::Incoming { .. } => PhoneState::Incoming,
                CallState::Up if c.held => PhoneState::Held,
                CallState::Up => PhoneState::InCall,
            },
        };
        LineView {
            state,
            peer: self.call.as_ref().map(|c| c.peer.clone()),
            ended: self.ended.clone(),
        }
    }

    /// Where media goes now (`None`: no call with media).
    pub fn media(&self) -> Option<MediaPath> {
        let c = self.call.as_ref()?;
        let mut m = c.media?;
        // Holding, the phone sends nothing (the held party hears the gateway's music, if any).
        m.send &= !c.held;
        m.send &= matches!(c.their_direction, Direction::SendRecv | Direction::RecvOnly);
        Some(m)
    }

    /// The messages to hand to the gateway's core.
    pub fn drain_output(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.out)
    }

    /// The browser's media is up: register.
    pub fn connected(&mut self, now: Instant) {
        if !self.connected && !self.closed {
            self.connected = true;
            self.register_at = Some(now);
            self.on_timeout(now);
        }
    }

    /// Stops the phone: ends its call and removes its registration.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        let _ = self.hang_up();
        self.closed = true;
        self.register_at = None;
        if self.connected {
            self.reg_tries = 0;
            self.unregistering = true;
            self.send_register(0, None);
        }
    }

    /// True once the phone is closed and its registration is gone (or was never made, or the
    /// registrar refused to remove it: it then lapses at its expiry).
    pub fn finished(&self) -> bool {
        self.closed && !self.unregistering
    }

    /// When `on_timeout` wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let give_up = self.call.as_ref().and_then(|c| match c.state {
            CallState::Calling { .. } => Some(c.since + INVITE_GIVE_UP),
            _ => None,
        });
        [self.register_at, give_up].into_iter().flatten().min()
    }

    /// Runs what is due at `now`.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.register_at.is_some_and(|t| t <= now) {
            self.register_at = None;
            self.reg_tries = 0;
            self.send_register(REGISTER_EXPIRES, None);
        }
        if let Some(c) = &self.call
            && matches!(c.state, CallState::Calling { .. })
            && now >= c.since + INVITE_GIVE_UP
        {
            let _ = self.hang_up();
            self.end_call("No answer");
        }
    }

    /// Places a call to `target`: a user name or number of the account's domain, or a SIP URI.
    pub fn call(&mut self, target: &str, now: Instant) -> Result<(), LineError> {
        if self.view().state != PhoneState::Idle {
            return Err(LineError::NotNow("the web phone is not idle"));
        }
        let target = target.trim();
        let uri = if target.starts_with("sip:") || target.starts_with("sips:") {
            Uri::parse(target).map_err(|_| LineError::BadTarget(target.to_owned()))?
        } else if !target.is_empty()
            && target
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-_.!~*'()".contains(c))
        {
            Uri::parse(&format!("sip:{target}@{}", self.cfg.domain))
                .map_err(|_| LineError::BadTarget(target.to_owned()))?
        } else {
            return Err(LineError::BadTarget(target.to_owned()));
        };
        let call_id = format!("{}@webphone", random_token());
        let mut h = Headers::new();
        h.push("Via", self.via());
        h.push("Max-Forwards", "70");
        h.push(
            "From",
            format!("{};tag={}", self.own_name_addr(), random_token()),
        );
        h.push("To", format!("<{uri}>"));
        h.push("Call-ID", call_id.clone());
        h.push("CSeq", "1 INVITE");
        h.push("Contact", self.contact());
        h.push("Allow", super::ALLOW);
        h.push("User-Agent", super::USER_AGENT);
        h.push("Content-Type", "application/sdp");
        let body = self.sdp(OPUS_PT, Direction::SendRecv);
        let invite = Request {
            method: Method::Invite,
            uri: uri.clone(),
            headers: h,
            body,
        };
        self.out.push(Message::Request(invite.clone()));
        self.ended = None;
        let calling = CallState::Calling {
            ringing: false,
            cancelled: false,
        };
        self.call = Some(Call::new(
            calling,
            call_id,
            Some(invite),
            None,
            uri.to_string(),
            now,
        ));
        Ok(())
    }

    /// Answers the call that rings in.
    pub fn answer(&mut self) -> Result<(), LineError> {
        let Some(Call {
            state: CallState::Incoming { invite },
            ..
        }) = &self.call
        else {
            return Err(LineError::NotNow("no call rings in"));
        };
        let offer = invite.body.clone();
        // An offerless INVITE: we offer in the 200 and the ACK answers.
        let body = match self.answer_to(&offer) {
            Some((body, media, direction)) => {
                if let Some(c) = self.call.as_mut() {
                    c.media = Some(media);
                    c.their_direction = direction;
                }
                body
            }
            None => self.sdp(OPUS_PT, Direction::SendRecv),
        };
        let contact = self.contact();
        let Some(call) = self.call.as_mut() else {
            return Err(LineError::NotNow("no call rings in"));
        };
        let CallState::Incoming { invite } = std::mem::replace(&mut call.state, CallState::Up)
        else {
            return Err(LineError::NotNow("no call rings in"));
        };
        let mut ok = invite.response(200, "OK");
        set_to_tag(&mut ok, call.dialog.as_ref().map(|d| d.local_tag.as_str()));
        ok.headers.push("Contact", contact);
        ok.headers.push("Allow", super::ALLOW);
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        self.out.push(Message::Response(ok));
        Ok(())
    }

    /// Holds the call (`on`) or resumes it, by a re-INVITE offering sendonly or sendrecv.
    pub fn hold(&mut self, on: bool) -> Result<(), LineError> {
        let via = self.via();
        let Some(call) = self.call.as_ref() else {
            return Err(LineError::NotNow("there is no call"));
        };
        if !matches!(call.state, CallState::Up) || call.dialog.is_none() {
            return Err(LineError::NotNow("the call is not answered"));
        }
        if call.reinvite.is_some() {
            return Err(LineError::NotNow("a hold or resume is still under way"));
        }
        if call.held == on {
            return Err(LineError::NotNow(if on {
                "the call is already held"
            } else {
                "the call is not held"
            }));
        }
        let pt = call.media.map(|m| m.pt).unwrap_or(OPUS_PT);
        let direction = if on {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        };
        let body = self.sdp(pt, direction);
        let Some(call) = self.call.as_mut() else {
            return Err(LineError::NotNow("there is no call"));
        };
        let Some(dialog) = call.dialog.as_mut() else {
            return Err(LineError::NotNow("the call is not answered"));
        };
        let mut req = dialog.request(Method::Invite, &via);
        req.headers.push("Allow", super::ALLOW);
        req.headers.push("Content-Type", "application/sdp");
        req.body = body;
        call.held = on;
        call.reinvite = Some(req.clone());
        self.out.push(Message::Request(req));
        Ok(())
    }

    /// Cancels an outgoing call, declines an incoming one, or ends the call.
    pub fn hang_up(&mut self) -> Result<(), LineError> {
        let via = self.via();
        let Some(call) = self.call.as_mut() else {
            return Err(LineError::NotNow("there is no call"));
        };
        match &mut call.state {
            CallState::Calling { cancelled, .. } => {
                if !*cancelled && let Some(inv) = &call.invite {
                    *cancelled = true;
                    self.out.push(Message::Request(cancel(inv, None)));
                }
            }
            CallState::Incoming { invite } => {
                let mut r = invite.response(603, "Decline");
                let tag = call.dialog.as_ref().map(|d| d.local_tag.clone());
                set_to_tag(&mut r, tag.as_deref());
                self.out.push(Message::Response(r));
                self.end_call("Declined");
            }
            CallState::Up => {
                if let Some(d) = call.dialog.as_mut() {
                    let bye = d.request(Method::Bye, &via);
                    self.out.push(Message::Request(bye));
                }
                self.end_call("Call ended");
            }
        }
        Ok(())
    }

    /// Takes a message from the gateway.
    pub fn on_message(&mut self, msg: Message, now: Instant) {
        match msg {
            Message::Request(r) => self.on_request(r, now),
            Message::Response(r) => self.on_response(r, now),
        }
    }

    fn on_request(&mut self, req: Request, now: Instant) {
        let same_call = self
            .call
            .as_ref()
            .is_some_and(|c| req.call_id() == Some(c.call_id.as_str()));
        match req.method {
            Method::Invite if !same_call => self.on_new_invite(req, now),
            Method::Invite | Method::Update => self.on_reoffer(req),
            Method::Ack => {
                // An offerless INVITE's answer comes in the ACK.
                if let Some(c) = self.call.as_mut()
                    && same_call
                    && c.media.is_none()
                    && let Some((media, direction)) = media_of(&req.body)
                {
                    c.media = Some(media);
                    c.their_direction = direction;
                }
            }
            Method::Bye if same_call => {
                self.reply(&req, 200, "OK");
                self.end_call("The other party hung up");
            }
            Method::Cancel if same_call => {
                self.reply(&req, 200, "OK");
                if let Some(Call {
                    state: CallState::Incoming { invite },
                    dialog,
                    ..
                }) = &self.call
                {
                    let mut r = invite.response(487, "Request Terminated");
                    set_to_tag(&mut r, dialog.as_ref().map(|d| d.local_tag.as_str()));
                    self.out.push(Message::Response(r));
                    self.end_call("Missed call");
                }
            }
            Method::Bye | Method::Cancel => {
                self.reply(&req, 481, "Call/Transaction Does Not Exist")
            }
            Method::Options | Method::Info | Method::Notify => self.reply(&req, 200, "OK"),
            _ => {
                let mut r = req.response(405, "Method Not Allowed");
                r.headers.push("Allow", super::ALLOW);
                self.out.push(Message::Response(r));
            }
        }
    }

    fn on_new_invite(&mut self, req: Request, now: Instant) {
        if self.view().state != PhoneState::Idle {
            self.reply(&req, 486, "Busy Here");
            return;
        }
        if !req.body.is_empty() && media_of(&req.body).is_none() {
            let mut r = req.response(488, "Not Acceptable Here");
            r.headers
                .push("Warning", "305 csps \"the web phone speaks Opus only\"");
            self.out.push(Message::Response(r));
            return;
        }
        let tag = random_token();
        let Some(dialog) = Dialog::uas(&req, &tag, &self.contact()) else {
            self.reply(&req, 400, "Bad Request");
            return;
        };
        let peer = req
            .from_hdr()
            .map(|f| match f.display {
                Some(d) if !d.is_empty() => format!("{d} <{}>", f.uri),
                _ => f.uri.to_string(),
            })
            .unwrap_or_default();
        let mut ringing = req.response(180, "Ringing");
        set_to_tag(&mut ringing, Some(&tag));
        ringing.headers.push("Contact", self.contact());
        self.out.push(Message::Response(ringing));
        self.ended = None;
        let call_id = dialog.call_id.clone();
        let incoming = CallState::Incoming {
            invite: Box::new(req),
        };
        self.call = Some(Call::new(incoming, call_id, None, Some(dialog), peer, now));
    }

    /// A re-INVITE or UPDATE in the call: answer the new offer (hold, resume, a new address).
    fn on_reoffer(&mut self, req: Request) {
        let Some(call) = self.call.as_mut() else {
            self.reply(&req, 481, "Call/Transaction Does Not Exist");
            return;
        };
        if let Some(d) = call.dialog.as_mut()
            && !d.accept_remote_seq(&req)
        {
            self.reply(&req, 500, "Server Internal Error");
            return;
        }
        if call.reinvite.is_some() {
            // Glare with our own hold or resume (RFC 3261 §14.2).
            self.reply(&req, 491, "Request Pending");
            return;
        }
        let (body, media) = if req.body.is_empty() {
            // Offerless: we offer, the ACK answers.
            (self.sdp(OPUS_PT, Direction::SendRecv), None)
        } else {
            match self.answer_to(&req.body) {
                Some((body, media, direction)) => (body, Some((media, direction))),
                None => {
                    self.reply(&req, 488, "Not Acceptable Here");
                    return;
                }
            }
        };
        let contact = self.contact();
        let Some(call) = self.call.as_mut() else {
            return;
        };
        match media {
            Some((m, d)) => {
                call.media = Some(m);
                call.their_direction = d;
            }
            None => call.media = None,
        }
        let mut ok = req.response(200, "OK");
        set_to_tag(&mut ok, call.dialog.as_ref().map(|d| d.local_tag.as_str()));
        ok.headers.push("Contact", contact);
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        self.out.push(Message::Response(ok));
    }

    fn on_response(&mut self, resp: Response, now: Instant) {
        let Some(cseq) = resp.cseq() else { return };
        if resp.call_id() == Some(self.reg_call_id.as_str()) && cseq.method == Method::Register {
            self.on_register_response(&resp, now);
            return;
        }
        let via = self.via();
        let Some(call) = self.call.as_mut() else {
            return;
        };
        if resp.call_id() != Some(call.call_id.as_str()) || cseq.method != Method::Invite {
            return;
        }
        if let Some(re) = call.reinvite.as_ref()
            && re.cseq().map(|c| c.seq) == Some(cseq.seq)
        {
            let re = re.clone();
            match resp.status {
                100..=199 => {}
                200..=299 => {
                    if let Some(d) = call.dialog.as_ref() {
                        self.out.push(Message::Request(d.ack(cseq.seq, &via)));
                    }
                    if let Some((m, d)) = media_of(&resp.body) {
                        call.media = Some(m);
                        call.their_direction = d;
                    }
                    call.reinvite = None;
                }
                _ => {
                    // Refused (491 glare, 488…): the call stays as it was.
                    self.out.push(Message::Request(ack_for(&re, &resp)));
                    call.held = !call.held;
                    call.reinvite = None;
                }
            }
            return;
        }
        let Some(invite) = call.invite.clone() else {
            return;
        };
        match resp.status {
            100 => {}
            101..=199 => {
                if let CallState::Calling { ringing, .. } = &mut call.state {
                    *ringing = true;
                }
            }
            200..=299 => {
                let cancelled = matches!(
                    call.state,
                    CallState::Calling {
                        cancelled: true,
                        ..
                    }
                );
                let first = call.dialog.is_none();
                let Some(mut dialog) = call.dialog.take().or_else(|| Dialog::uac(&invite, &resp))
                else {
                    return;
                };
                // The response's own CSeq: a retransmitted 200 of the INVITE is ACKed again.
                self.out.push(Message::Request(dialog.ack(cseq.seq, &via)));
                if first {
                    call.media = media_of(&resp.body).map(|(m, d)| {
                        call.their_direction = d;
                        m
                    });
                    call.state = CallState::Up;
                    if cancelled {
                        // The answer crossed our CANCEL: end the call it made.
                        let bye = dialog.request(Method::Bye, &via);
                        self.out.push(Message::Request(bye));
                        call.dialog = Some(dialog);
                        self.end_call("Cancelled");
                        return;
                    }
                }
                call.dialog = Some(dialog);
            }
            status => {
                // A failure: ACK it (same branch, the response's To), then retry with
                // credentials once when it was a challenge.
                self.out.push(Message::Request(ack_for(&invite, &resp)));
                let cancelled = matches!(
                    call.state,
                    CallState::Calling {
                        cancelled: true,
                        ..
                    }
                );
                if (status == 401 || status == 407) && call.auth_tries < 2 && !cancelled {
                    call.auth_tries += 1;
                    if let Some(retry) = self.authorized(&invite, &resp) {
                        if let Some(c) = self.call.as_mut() {
                            c.invite = Some(retry.clone());
                        }
                        self.out.push(Message::Request(retry));
                        return;
                    }
                }
                let reason = if cancelled {
                    "Cancelled".to_owned()
                } else if resp.reason.is_empty() {
                    format!("Failed ({status})")
                } else {
                    format!("{} ({status})", resp.reason)
                };
                self.end_call(&reason);
            }
        }
    }

    fn on_register_response(&mut self, resp: &Response, now: Instant) {
        match resp.status {
            100..=199 => {}
            200..=299 => {
                if self.closed {
                    self.registered = false;
                    self.unregistering = false;
                    return;
                }
                let granted = resp
                    .headers
                    .get("Expires")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .or_else(|| self.granted_expires(resp))
                    .unwrap_or(u64::from(REGISTER_EXPIRES));
                self.registered = true;
                self.register_at = Some(now + Duration::from_secs((granted / 2).max(5)));
            }
            401 | 407 if self.reg_tries < 2 => {
                self.reg_tries += 1;
                let expires = if self.closed { 0 } else { REGISTER_EXPIRES };
                self.send_register(expires, Some(resp));
            }
            status => {
                self.unregistering = false;
                if !self.closed {
                    tracing::warn!(aor = %self.aor(), status, "web phone registration refused");
                    self.registered = false;
                    self.register_at = Some(now + REGISTER_RETRY);
                }
            }
        }
    }

    /// The `expires` the registrar granted our own Contact, from its list of bindings.
    fn granted_expires(&self, resp: &Response) -> Option<u64> {
        let Some(Ok(csps_sip::headers::Contacts::List(list))) = resp.contacts() else {
            return None;
        };
        let ours = format!("sip:{}@{}", self.cfg.username, self.cfg.local);
        list.iter()
            .filter(|c| c.uri.to_string().starts_with(&ours))
            .find_map(|c| c.param("expires").flatten()?.trim().parse().ok())
    }

    fn send_register(&mut self, expires: u32, challenge: Option<&Response>) {
        self.reg_seq += 1;
        let aor = self.aor();
        let mut h = Headers::new();
        h.push("Via", self.via());
        h.push("Max-Forwards", "70");
        h.push("From", format!("<{aor}>;tag={}", random_token()));
        h.push("To", format!("<{aor}>"));
        h.push("Call-ID", self.reg_call_id.clone());
        h.push("CSeq", format!("{} REGISTER", self.reg_seq));
        h.push(
            "Contact",
            format!(
                "{};+sip.instance=\"<urn:uuid:{}>\"",
                self.contact(),
                self.cfg.instance
            ),
        );
        h.push("Expires", expires.to_string());
        h.push("User-Agent", super::USER_AGENT);
        let Ok(uri) = Uri::parse(&format!("sip:{}", self.cfg.domain)) else {
            return;
        };
        let mut req = Request {
            method: Method::Register,
            uri,
            headers: h,
            body: Bytes::new(),
        };
        if let Some(c) = challenge {
            match self.authorized(&req, c) {
                Some(r) => req = r,
                None => return,
            }
        }
        self.out.push(Message::Request(req));
    }

    /// `req` again with credentials for the challenge in `resp` (a new branch, the next CSeq for
    /// an INVITE), or `None` when the line has no HA1 for the challenge's realm and algorithm.
    fn authorized(&self, req: &Request, resp: &Response) -> Option<Request> {
        let (header, answer) = if resp.status == 407 {
            ("Proxy-Authenticate", "Proxy-Authorization")
        } else {
            ("WWW-Authenticate", "Authorization")
        };
        // Prefer SHA-256 when offered (RFC 8760 §2.4: the client picks the first it supports).
        let mut chosen = None;
        // Whole lines: a challenge is itself a comma-separated list.
        for v in resp.headers.get_all(header) {
            let Some(p) = DigestParams::parse(v) else {
                continue;
            };
            let alg = match p.algorithm {
                None => Algorithm::Md5,
                Some(t) => match Algorithm::from_token(t) {
                    Some(a) => a,
                    None => continue,
                },
            };
            let (Some(realm), Some(nonce)) = (p.realm, p.nonce) else {
                continue;
            };
            if !p
                .qop
                .is_some_and(|q| q.split(',').any(|t| t.trim() == "auth"))
            {
                continue;
            }
            let Some(ha1) = self
                .cfg
                .ha1
                .iter()
                .find(|h| h.realm == realm && algorithm(h.algorithm) == alg)
            else {
                continue;
            };
            chosen = Some((alg, realm.to_owned(), nonce.to_owned(), ha1.hash.clone()));
            break;
        }
        let Some((alg, realm, nonce, ha1)) = chosen else {
            tracing::warn!(aor = %self.aor(), "web phone: no stored HA1 answers the challenge");
            return None;
        };
        let mut out = req.clone();
        let uri = req.uri.to_string();
        let value = authorization(
            alg,
            &self.cfg.username,
            &realm,
            &ha1,
            &nonce,
            1,
            &random_token(),
            req.method.as_str(),
            &uri,
        );
        out.headers.set(answer, value);
        out.headers.set("Via", self.via());
        if req.method == Method::Invite
            && let Some(c) = req.cseq()
        {
            out.headers.set("CSeq", format!("{} INVITE", c.seq + 1));
        }
        Some(out)
    }

    fn end_call(&mut self, why: &str) {
        if self.call.take().is_some() {
            self.ended = Some(why.to_owned());
        }
    }

    fn reply(&mut self, req: &Request, status: u16, reason: &str) {
        let mut r = req.response(status, reason);
        let tag = self
            .call
            .as_ref()
            .and_then(|c| c.dialog.as_ref())
            .filter(|d| req.call_id() == Some(d.call_id.as_str()))
            .map(|d| d.local_tag.clone())
            .unwrap_or_else(random_token);
        set_to_tag(&mut r, Some(&tag));
        self.out.push(Message::Response(r));
    }

    fn via(&self) -> String {
        format!(
            "SIP/2.0/TCP {};branch=z9hG4bK{};rport",
            self.cfg.local,
            random_token()
        )
    }

    fn own_name_addr(&self) -> String {
        let aor = self.aor();
        match &self.cfg.display_name {
            Some(d) if !d.is_empty() => format!("\"{}\" <{aor}>", d.replace('"', "")),
            _ => format!("<{aor}>"),
        }
    }

    fn contact(&self) -> String {
        format!(
            "<sip:{}@{};transport=tcp>",
            self.cfg.username, self.cfg.local
        )
    }

    /// Our SDP with Opus at `pt` and `direction`.
    fn sdp(&mut self, pt: u8, direction: Direction) -> Bytes {
        self.sdp_version += 1;
        let ip = self.cfg.media.ip();
        let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
        Bytes::from(format!(
            "v=0\r\no=csps-webphone {} {} IN {family} {ip}\r\ns=csps web phone\r\nc=IN {family} {ip}\r\n\
             t=0 0\r\nm=audio {} RTP/AVP {pt}\r\na=rtpmap:{pt} opus/48000/2\r\n\
             a=fmtp:{pt} minptime=10;useinbandfec=1\r\na=ptime:20\r\na={}\r\n",
            self.sdp_session,
            self.sdp_version,
            self.cfg.media.port(),
            direction.as_str()
        ))
    }

    /// Our answer to an offer: Opus at the offer's payload type, the direction mirrored; `None`
    /// when the offer has no Opus over plain RTP.
    fn answer_to(&mut self, offer: &[u8]) -> Option<(Bytes, MediaPath, Direction)> {
        let (media, direction) = media_of(offer)?;
        let body = self.sdp(media.pt, direction.answer());
        Some((body, media, direction))
    }
}

/// The Opus media of an SDP body: where to send, at which payload type, and the direction the
/// body's writer asked for.
fn media_of(body: &[u8]) -> Option<(MediaPath, Direction)> {
    let sdp = Sdp::parse(body).ok()?;
    let i = sdp.audio_index()?;
    let m = sdp.media.get(i)?;
    if m.proto != "RTP/AVP" || m.port == 0 {
        return None;
    }
    let opus = m.codecs().find(|f| f.codec == Codec::Opus)?;
    let direction = m.direction(sdp.session_direction());
    let remote = sdp.rtp_addr(i)?;
    Some((
        MediaPath {
            remote,
            pt: opus.pt,
            send: true,
        },
        direction,
    ))
}

fn set_to_tag(resp: &mut Response, tag: Option<&str>) {
    let Some(tag) = tag else { return };
    if let Some(to) = resp.headers.get("To")
        && let Ok(mut na) = NameAddr::parse(to)
        && na.tag().is_none()
    {
        na.set_param("tag", Some(tag.to_owned()));
        resp.headers.set("To", na.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csps_sip::digest::{ha1, response_matches};

    const REALM: &str = "csps.local";

    fn line() -> Line {
        Line::new(LineConfig {
            username: "alice".into(),
            domain: REALM.into(),
            display_name: Some("Alice".into()),
            ha1: vec![Ha1 {
                realm: REALM.into(),
                algorithm: HashAlgorithm::Md5,
                hash: ha1(Algorithm::Md5, "alice", REALM, "alice-secret"),
            }],
            local: "127.0.0.1:20000".parse().expect("addr"),
            media: "127.0.0.1:20000".parse().expect("addr"),
            instance: "00000000-0000-4000-8000-000000000001".into(),
        })
    }

    fn one(l: &mut Line) -> Message {
        let mut out = l.drain_output();
        assert_eq!(out.len(), 1, "{out:#?}");
        out.remove(0)
    }

    fn request(m: Message) -> Request {
        match m {
            Message::Request(r) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn response(m: Message) -> Response {
        match m {
            Message::Response(r) => r,
            other => panic!("not a response: {other:?}"),
        }
    }

    fn reply(req: &Request, status: u16, headers: &[(&str, &str)], body: &str) -> Message {
        let mut r = req.response(status, "X");
        if status > 100 {
            set_to_tag(&mut r, Some("far"));
        }
        for (n, v) in headers {
            r.headers.push(n, *v);
        }
        r.body = Bytes::from(body.to_owned());
        Message::Response(r)
    }

    fn challenge(header: &str) -> (&str, String) {
        (
            header,
            format!("Digest realm=\"{REALM}\", nonce=\"n1\", qop=\"auth\", algorithm=MD5"),
        )
    }

    /// The credentials in `req` answer the challenge with alice's password.
    fn answers(req: &Request, header: &str) -> bool {
        let v = req.headers.get(header).expect("credentials");
        let p = DigestParams::parse(v).expect("digest");
        let h = ha1(Algorithm::Md5, "alice", REALM, "alice-secret");
        response_matches(
            Algorithm::Md5,
            &h,
            p.nonce.unwrap_or(""),
            p.nc.unwrap_or(""),
            p.cnonce.unwrap_or(""),
            "auth",
            req.method.as_str(),
            p.uri.unwrap_or(""),
            p.response.unwrap_or(""),
        )
    }

    fn registered() -> Line {
        let mut l = line();
        let now = Instant::now();
        assert_eq!(l.view().state, PhoneState::Connecting);
        l.connected(now);
        let reg = request(one(&mut l));
        assert_eq!(reg.method, Method::Register);
        let (h, v) = challenge("WWW-Authenticate");
        l.on_message(reply(&reg, 401, &[(h, &v)], ""), now);
        let again = request(one(&mut l));
        assert!(answers(&again, "Authorization"));
        assert!(
            again
                .headers
                .get("Contact")
                .is_some_and(|c| c.contains("+sip.instance"))
        );
        l.on_message(reply(&again, 200, &[("Expires", "300")], ""), now);
        assert_eq!(l.view().state, PhoneState::Idle);
        l
    }

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=audio 30000 RTP/AVP 9 96 0\r\na=rtpmap:96 opus/48000/2\r\na=sendrecv\r\n";

    fn invite_from_bob(body: &str) -> Request {
        let mut h = Headers::new();
        h.push("Via", "SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKgw1");
        h.push("From", "\"Bob\" <sip:bob@csps.local>;tag=b1");
        h.push("To", "<sip:alice@csps.local>");
        h.push("Call-ID", "call-1");
        h.push("CSeq", "10 INVITE");
        h.push("Contact", "<sip:gw@127.0.0.1:5060;transport=tcp>");
        Request {
            method: Method::Invite,
            uri: Uri::parse("sip:alice@127.0.0.1:20000;transport=tcp").expect("uri"),
            headers: h,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn registers_with_the_stored_ha1_and_refreshes_at_half_the_granted_time() {
        let mut l = registered();
        let now = Instant::now();
        let at = l.poll_timeout().expect("refresh");
        assert!(at > now + Duration::from_secs(140) && at <= now + Duration::from_secs(151));
        l.on_timeout(at);
        let refresh = request(one(&mut l));
        assert_eq!(refresh.method, Method::Register);
        assert_eq!(refresh.cseq().map(|c| c.seq), Some(3));
        // Closing unregisters, answering the challenge as registering did.
        l.on_message(reply(&refresh, 200, &[], ""), at);
        l.close();
        let unregister = request(one(&mut l));
        assert_eq!(unregister.headers.get("Expires"), Some("0"));
        assert_eq!(l.view().state, PhoneState::Closed);
        assert!(!l.finished());
        let (h, v) = challenge("WWW-Authenticate");
        l.on_message(reply(&unregister, 401, &[(h, &v)], ""), at);
        let again = request(one(&mut l));
        assert_eq!(again.headers.get("Expires"), Some("0"));
        assert!(answers(&again, "Authorization"));
        l.on_message(reply(&again, 200, &[], ""), at);
        assert!(l.finished());
    }

    #[test]
    fn an_incoming_call_rings_is_answered_in_opus_at_the_offers_type_and_ends_on_bye() {
        let mut l = registered();
        let now = Instant::now();
        l.on_message(Message::Request(invite_from_bob(OFFER)), now);
        let ringing = response(one(&mut l));
        assert_eq!(ringing.status, 180);
        let v = l.view();
        assert_eq!(v.state, PhoneState::Incoming);
        assert_eq!(v.peer.as_deref(), Some("Bob <sip:bob@csps.local>"));
        l.answer().expect("answer");
        let ok = response(one(&mut l));
        assert_eq!(ok.status, 200);
        assert_eq!(ok.to_tag(), ringing.to_tag());
        let answer = Sdp::parse(&ok.body).expect("sdp");
        let m = answer.audio().expect("audio");
        assert_eq!(m.formats, vec!["96"]);
        assert_eq!(m.port, 20000);
        assert_eq!(l.view().state, PhoneState::InCall);
        let path = l.media().expect("media");
        assert_eq!((path.remote.port(), path.pt, path.send), (30000, 96, true));

        // Held by the far end: the line answers recvonly and stops sending.
        let mut hold = invite_from_bob(&OFFER.replace("sendrecv", "sendonly"));
        hold.headers
            .set("To", ok.headers.get("To").unwrap_or_default());
        hold.headers.set("CSeq", "11 INVITE");
        l.on_message(Message::Request(hold), now);
        let ok = response(one(&mut l));
        assert!(String::from_utf8_lossy(&ok.body).contains("a=recvonly"));
        assert!(!l.media().expect("media").send);

        let mut bye = invite_from_bob("");
        bye.method = Method::Bye;
        bye.headers
            .set("To", ok.headers.get("To").unwrap_or_default());
        bye.headers.set("CSeq", "12 BYE");
        l.on_message(Message::Request(bye), now);
        assert_eq!(response(one(&mut l)).status, 200);
        let v = l.view();
        assert_eq!(
            (v.state, v.ended.as_deref()),
            (PhoneState::Idle, Some("The other party hung up"))
        );
    }

    #[test]
    fn a_second_call_gets_busy_and_an_offer_without_opus_is_refused() {
        let mut l = registered();
        let now = Instant::now();
        let no_opus = OFFER
            .replace(" 9 96 0", " 0")
            .replace("a=rtpmap:96 opus/48000/2\r\n", "");
        l.on_message(Message::Request(invite_from_bob(&no_opus)), now);
        assert_eq!(response(one(&mut l)).status, 488);
        l.on_message(Message::Request(invite_from_bob(OFFER)), now);
        assert_eq!(response(one(&mut l)).status, 180);
        let mut second = invite_from_bob(OFFER);
        second.headers.set("Call-ID", "call-2");
        l.on_message(Message::Request(second), now);
        assert_eq!(response(one(&mut l)).status, 486);
        // The caller gives up: 200 to the CANCEL, 487 to the INVITE.
        let mut c = invite_from_bob("");
        c.method = Method::Cancel;
        c.headers.set("CSeq", "10 CANCEL");
        l.on_message(Message::Request(c), now);
        let out = l.drain_output();
        let statuses: Vec<u16> = out.into_iter().map(|m| response(m).status).collect();
        assert_eq!(statuses, vec![200, 487]);
        assert_eq!(l.view().ended.as_deref(), Some("Missed call"));
    }

    #[test]
    fn an_outgoing_call_answers_the_proxy_challenge_then_acks_the_answer_and_hangs_up_with_bye() {
        let mut l = registered();
        let now = Instant::now();
        assert!(matches!(
            l.call("bob smith", now),
            Err(LineError::BadTarget(_))
        ));
        l.call("bob", now).expect("call");
        let invite = request(one(&mut l));
        assert_eq!(invite.uri.to_string(), "sip:bob@csps.local");
        assert_eq!(l.view().state, PhoneState::Calling);
        let (h, v) = challenge("Proxy-Authenticate");
        l.on_message(reply(&invite, 407, &[(h, &v)], ""), now);
        let mut out = l.drain_output().into_iter().map(request);
        let ack = out.next().expect("ack");
        let branch = |r: &Request| {
            r.top_via()
                .and_then(|v| v.param("branch").flatten().map(str::to_owned))
        };
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(branch(&ack), branch(&invite));
        let retry = out.next().expect("retry");
        assert!(answers(&retry, "Proxy-Authorization"));
        assert_eq!(retry.cseq().map(|c| c.seq), Some(2));
        l.on_message(reply(&retry, 180, &[], ""), now);
        assert_eq!(l.view().state, PhoneState::Ringing);
        let answer = OFFER.replace(" 9 96 0", " 96");
        l.on_message(
            reply(
                &retry,
                200,
                &[("Contact", "<sip:gw@127.0.0.1:5060;transport=tcp>")],
                &answer,
            ),
            now,
        );
        let ack = request(one(&mut l));
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.cseq().map(|c| c.seq), Some(2));
        assert_eq!(l.view().state, PhoneState::InCall);
        assert_eq!(l.media().map(|m| m.pt), Some(96));
        l.hang_up().expect("hang up");
        let bye = request(one(&mut l));
        assert_eq!(bye.method, Method::Bye);
        assert_eq!(bye.uri.to_string(), "sip:gw@127.0.0.1:5060;transport=tcp");
        assert_eq!(l.view().state, PhoneState::Idle);
    }

    #[test]
    fn holding_offers_sendonly_stops_sending_and_resuming_restores_both_ways() {
        let mut l = registered();
        let now = Instant::now();
        assert!(l.hold(true).is_err(), "no call to hold");
        l.on_message(Message::Request(invite_from_bob(OFFER)), now);
        let _ringing = one(&mut l);
        l.answer().expect("answer");
        let _ok = one(&mut l);
        l.hold(true).expect("hold");
        assert!(l.hold(false).is_err(), "one re-INVITE at a time");
        let re = request(one(&mut l));
        assert_eq!(
            (re.method.as_str(), re.cseq().map(|c| c.seq)),
            ("INVITE", Some(1))
        );
        assert_eq!(re.uri.to_string(), "sip:gw@127.0.0.1:5060;transport=tcp");
        assert!(String::from_utf8_lossy(&re.body).contains("a=sendonly"));
        assert!(String::from_utf8_lossy(&re.body).contains("a=rtpmap:96 opus"));
        assert_eq!(l.view().state, PhoneState::Held);
        assert!(!l.media().expect("media").send, "a held call sends nothing");
        let answer = OFFER
            .replace("sendrecv", "recvonly")
            .replace(" 9 96 0", " 96");
        let mut ok = re.response(200, "OK");
        ok.headers.set("To", "<sip:bob@csps.local>;tag=b1");
        ok.body = Bytes::from(answer);
        l.on_message(Message::Response(ok), now);
        let ack = request(one(&mut l));
        assert_eq!(
            (ack.method.as_str(), ack.cseq().map(|c| c.seq)),
            ("ACK", Some(1))
        );
        l.hold(false).expect("resume");
        let re = request(one(&mut l));
        assert!(String::from_utf8_lossy(&re.body).contains("a=sendrecv"));
        // Refused (glare): still held, and the refusal is ACKed.
        let mut busy = re.response(491, "Request Pending");
        busy.headers.set("To", "<sip:bob@csps.local>;tag=b1");
        l.on_message(Message::Response(busy), now);
        assert_eq!(request(one(&mut l)).method, Method::Ack);
        assert_eq!(l.view().state, PhoneState::Held);
        l.hold(false).expect("resume again");
        let re = request(one(&mut l));
        assert_eq!(re.cseq().map(|c| c.seq), Some(3));
        let mut ok = re.response(200, "OK");
        ok.headers.set("To", "<sip:bob@csps.local>;tag=b1");
        ok.body = Bytes::from(OFFER.replace(" 9 96 0", " 96"));
        l.on_message(Message::Response(ok), now);
        assert_eq!(request(one(&mut l)).method, Method::Ack);
        assert_eq!(l.view().state, PhoneState::InCall);
        assert!(l.media().expect("media").send);
    }

    #[test]
    fn cancelling_an_outgoing_call_sends_cancel_and_ends_on_487() {
        let mut l = registered();
        let now = Instant::now();
        l.call("sip:bob@csps.local", now).expect("call");
        let invite = request(one(&mut l));
        l.hang_up().expect("cancel");
        let cancel = request(one(&mut l));
        assert_eq!(cancel.method, Method::Cancel);
        l.on_message(reply(&invite, 487, &[], ""), now);
        assert_eq!(request(one(&mut l)).method, Method::Ack);
        assert_eq!(l.view().ended.as_deref(), Some("Cancelled"));
        assert_eq!(l.view().state, PhoneState::Idle);
    }
}
